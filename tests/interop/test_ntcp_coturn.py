#!/usr/bin/python3
# test_ntcp_coturn.py: `ntcp stun` against coturn's turnserver (STUN only, on
# 127.0.0.1 and 127.0.0.2 with an alternate port) over UDP and TCP: the mapped
# address is our own bound socket, RFC 5780 attributes and tests, RFC 3489.
import socket

from interop import IP1, IP2, Workdir, args, check, finish, free_port, free_ports, ntcp_json, run, start_coturn

a = args(tools=("turnserver",))

with Workdir() as wd:
    P = free_ports(2)
    start_coturn(wd, P)
    srv = "%s:%d" % (IP1, P)
    other = "%s:%d" % (IP2, P + 1)

    # UDP: the mapped address is the local socket we bound.
    L = free_port()
    rc, j = ntcp_json(a.ntcp, "--local", "%s:%d" % (IP1, L), srv)
    check(rc == 0, "udp: exit 0", str(rc))
    check(j.get("status") == "ok", "udp: status ok", str(j.get("status")))
    check(j.get("transport") == "udp", "udp: transport udp")
    check(j.get("mapped") == "%s:%d" % (IP1, L), "udp: mapped address is our socket",
          str(j.get("mapped")))
    check(j.get("xor_mapped_address") == j.get("mapped"), "udp: mapped comes from XOR-MAPPED-ADDRESS")
    check(j.get("local") == "%s:%d" % (IP1, L), "udp: local address reported", str(j.get("local")))
    check(j.get("response_origin") == srv, "udp: RESPONSE-ORIGIN is the server",
          str(j.get("response_origin")))
    check(j.get("other_address") == other, "udp: OTHER-ADDRESS is the alternate IP and port",
          str(j.get("other_address")))
    check("oturn" in j.get("software", ""), "udp: SOFTWARE names coturn", str(j.get("software")))
    check(j.get("transmissions") == 1, "udp: one transmission on loopback")

    # The same over TCP.
    L = free_port()
    rc, j = ntcp_json(a.ntcp, "--tcp", "--local", "%s:%d" % (IP1, L), srv)
    check(rc == 0, "tcp: exit 0", str(rc))
    check(j.get("transport") == "tcp", "tcp: transport tcp")
    check(j.get("mapped") == "%s:%d" % (IP1, L), "tcp: mapped address is our socket",
          str(j.get("mapped")))
    check(j.get("local") == "%s:%d" % (IP1, L), "tcp: local address reported", str(j.get("local")))

    # An ephemeral port: mapped equals whatever the kernel gave us.
    rc, j = ntcp_json(a.ntcp, "--tcp", srv)
    check(rc == 0 and j.get("mapped") == j.get("local"), "tcp, ephemeral port: mapped == local",
          "%s vs %s" % (j.get("mapped"), j.get("local")))

    # FINGERPRINT in the request: coturn answers (with its own FINGERPRINT,
    # which the codec verifies while parsing).
    rc, j = ntcp_json(a.ntcp, "--fingerprint", srv)
    check(rc == 0 and j.get("mapped", "").startswith(IP1 + ":"), "udp --fingerprint: answered")

    # RFC 5780 CHANGE-REQUEST: the answer comes from the other IP and port.
    rc, j = ntcp_json(a.ntcp, "--change", "both", srv)
    check(rc == 0, "udp --change both: exit 0", str(rc))
    check(j.get("from") == other, "udp --change both: answer from the other address",
          str(j.get("from")))
    rc, j = ntcp_json(a.ntcp, "--change", "port", srv)
    check(j.get("from") == "%s:%d" % (IP1, P + 1), "udp --change port: answer from the other port",
          str(j.get("from")))
    rc, j = ntcp_json(a.ntcp, "--change", "ip", srv)
    check(j.get("from") == "%s:%d" % (IP2, P), "udp --change ip: answer from the other IP",
          str(j.get("from")))

    # RFC 5780 RESPONSE-PORT: the answer goes to another port of ours, so our
    # socket sees nothing: no answer (exit 2) in the time given; a socket we
    # hold on that port receives it.
    R = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    R.bind((IP1, 0))
    R.settimeout(5)
    rport = R.getsockname()[1]
    rc, j = ntcp_json(a.ntcp, "--response-port", str(rport), "--timeout", "700", srv)
    check(rc == 2 and j.get("status") == "timeout", "udp --response-port: nothing on our socket, exit 2",
          "%s %s" % (rc, j.get("status")))
    try:
        data, frm = R.recvfrom(2048)
        got = len(data) >= 20 and data[0:2] == b"\x01\x01"
    except OSError:
        got = False
    check(got, "udp --response-port: the Binding response reached port %d" % rport)
    R.close()

    # RFC 3489: a request without the magic cookie gets MAPPED-, SOURCE- and
    # CHANGED-ADDRESS.
    L = free_port()
    rc, j = ntcp_json(a.ntcp, "--rfc3489", "--local", "%s:%d" % (IP1, L), srv)
    check(rc == 0, "udp --rfc3489: exit 0", str(rc))
    check(j.get("mapped_address") == "%s:%d" % (IP1, L), "udp --rfc3489: MAPPED-ADDRESS is our socket",
          str(j.get("mapped_address")))
    check("xor_mapped_address" not in j, "udp --rfc3489: no XOR-MAPPED-ADDRESS taken")
    check(j.get("changed_address") == other, "udp --rfc3489: CHANGED-ADDRESS is the alternate",
          str(j.get("changed_address")))
    check("source_address" in j, "udp --rfc3489: SOURCE-ADDRESS present")

    # The text output names the same things.
    rc, out, _ = run([a.ntcp, "stun", srv])
    check(rc == 0 and "mapped address    127.0.0.1:" in out and "other address     " + other in out,
          "text output: mapped and other address")

    # A closed port: unreachable at once (ICMP), exit 2.
    C = free_port()
    rc, j = ntcp_json(a.ntcp, "--timeout", "3000", "%s:%d" % (IP1, C))
    check(rc == 2 and j.get("status") in ("unreachable", "timeout"), "udp to a closed port: exit 2",
          "%s %s" % (rc, j.get("status")))
    rc, j = ntcp_json(a.ntcp, "--tcp", "--timeout", "3000", "%s:%d" % (IP1, C))
    check(rc == 2 and j.get("status") == "unreachable", "tcp to a closed port: exit 2, unreachable",
          "%s %s" % (rc, j.get("status")))

finish()
