#!/usr/bin/python3
# test_turnutils_natdiscovery_stuntd.py: coturn's turnutils_natdiscovery (RFC
# 5780 behaviour discovery) against ntcp-stuntd on loopback: with no NAT it
# must find endpoint-independent mapping and filtering, without an error.
import re

from interop import IP1, probe_udp, Workdir, args, check, finish, free_ports, run, start_stuntd

a = args(need_ntcp=False, need_stuntd=True, tools=("turnutils_natdiscovery",))

with Workdir() as wd:
    P = free_ports(2)
    start_stuntd(a.stuntd, wd, P)
    # turnutils sends RFC 5780 PADDING of 1500 bytes (a 1532-byte datagram):
    # without an answer to it the tool waits for ever.
    check(probe_udp(IP1, P, timeout=1.0, padding=1500),
          "a Binding request with a 1500-byte PADDING (1532-byte datagram) is answered")

    for extra, what in (([], ""), (["-P"], " with PADDING")):
        rc, out, err = run(["turnutils_natdiscovery", "-m", "-f"] + extra + ["-p", str(P), IP1], timeout=30)
        text = out + err
        tag = "natdiscovery -m -f%s" % what
        check(rc == 0, tag + ": exit 0", str(rc))
        check(re.search(r"error|fail", text, re.I) is None, tag + ": no error reported")
        check("Endpoint Independent Mapping" in text or "No NAT" in text,
              tag + ": mapping is endpoint-independent (no NAT)")
        check("Endpoint Independent Filtering" in text or "No NAT" in text,
              tag + ": filtering is endpoint-independent (no NAT)")
        refl = re.findall(r"UDP reflexive addr: ([\d.]+):(\d+)", text)
        local = re.findall(r"Local addr: : [\d.]+:(\d+)", text)
        check(refl and all(r[0] == IP1 for r in refl), tag + ": reflexive address 127.0.0.1", str(refl))
        check(refl and local and [r[1] for r in refl] == local, tag + ": reflexive port is the local port",
              "%s vs %s" % ([r[1] for r in refl], local))

finish()
