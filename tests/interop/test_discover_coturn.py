#!/usr/bin/python3
# test_discover_coturn.py: the UDP half of `ntcp discover` against coturn as
# an RFC 5780 server (STUN only, 127.0.0.1 and 127.0.0.2, alternate port):
# on loopback there is no NAT, and the report must say exactly that. The TCP
# half needs ntcp-stuntd's connect-back, which coturn does not have: asking
# for it must give a partial result that says why, not a guess.
import json

from interop import IP1, Workdir, args, check, finish, free_ports, run, start_coturn

a = args(tools=("turnserver",))

with Workdir() as wd:
    P = free_ports(2)
    start_coturn(wd, P)
    srv = "%s:%d" % (IP1, P)

    rc, out, _ = run([a.ntcp, "discover", "--json", "--udp", "-4", "--server", srv])
    check(rc == 0, "udp: exit 0 (complete)", str(rc))
    j = json.loads(out) if out.strip().startswith("{") else {}
    u = j.get("udp4", {})
    check(j.get("status") == "complete", "udp: status complete", str(j.get("status")))
    check(j.get("server") == srv, "udp: the server named", str(j.get("server")))
    for key, want in (("reach", "open"), ("mapping", "endpoint-independent"), ("filtering", "none"),
                      ("ports", "preserved"), ("hairpin", "yes"), ("classic", "open"),
                      ("ntcp02", "None")):
        check(u.get(key) == want, "udp: %s is %s" % (key, want), str(u.get(key)))
    check(u.get("mapped") == u.get("local") and u.get("mapped", "").startswith(IP1 + ":"),
          "udp: mapped address is the local one", "%s vs %s" % (u.get("mapped"), u.get("local")))
    check(not j.get("tcp4", {}).get("probed"), "udp only: TCP not probed")

    rc, out, _ = run([a.ntcp, "discover", "--json", "--tcp", "-4", "--server", srv])
    j = json.loads(out) if out.strip().startswith("{") else {}
    t = j.get("tcp4", {})
    check(rc == 3, "tcp against coturn: exit 3 (partial)", str(rc))
    check(t.get("mapping") == "endpoint-independent", "tcp: mapping still found over TCP Binding",
          str(t.get("mapping")))
    check(t.get("filtering") == "unknown" and "not ntcp-stuntd" in t.get("why", ""),
          "tcp: filtering unknown, and why names the connect-back", str(t))

finish()
