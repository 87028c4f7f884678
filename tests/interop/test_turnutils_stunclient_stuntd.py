#!/usr/bin/python3
# test_turnutils_stunclient_stuntd.py: coturn's turnutils_stunclient against
# ntcp-stuntd: the reflexive (mapped) address is 127.0.0.1, and with RFC 5780
# (-f) the response origin and other address are right on every socket it
# asks (coturn itself answers 127.0.0.2's OTHER-ADDRESS wrongly).
import re

from interop import IP1, probe_udp, IP2, Workdir, args, check, finish, free_ports, run, start_stuntd

a = args(need_ntcp=False, need_stuntd=True, tools=("turnutils_stunclient",))

with Workdir() as wd:
    P = free_ports(2)
    start_stuntd(a.stuntd, wd, P)
    # turnutils sends RFC 5780 PADDING of 1500 bytes (a 1532-byte datagram):
    # without an answer to it the tool waits for ever.
    check(probe_udp(IP1, P, timeout=1.0, padding=1500),
          "a Binding request with a 1500-byte PADDING (1532-byte datagram) is answered")
    A = {(0, 0): (IP1, P), (0, 1): (IP1, P + 1), (1, 0): (IP2, P), (1, 1): (IP2, P + 1)}

    for (i, p), (ip, port) in sorted(A.items()):
        want_other = "%s:%d" % A[1 - i, 1 - p]
        for f in ([], ["-f"]) if (i, p) == (0, 0) else (["-f"],):
            rc, out, err = run(["turnutils_stunclient"] + f + ["-p", str(port), ip], timeout=8)
            text = out + err
            tag = "turnutils_stunclient %s%s:%d" % ("-f " if f else "", ip, port)
            check(rc == 0, tag + ": exit 0 (killed = a request went unanswered)", str(rc))
            refl = re.findall(r"UDP reflexive addr: ([\d.]+):(\d+)", text)
            check(refl and all(r[0] == IP1 for r in refl), tag + ": reflexive address 127.0.0.1", str(refl))
            origins = re.findall(r"Response origin: : ([\d.]+:\d+)", text)
            check(origins and origins[0] == "%s:%d" % (ip, port), tag + ": first response origin is the server",
                  str(origins[:1]))
            # The three RFC 5780 responses: plain, change both, change both
            # from a second socket (with PADDING): the last two come from the
            # other address.
            blocks = re.split(r"RFC 5780 response \d+", text)[1:]
            check(len(blocks) == 3, tag + ": three RFC 5780 responses", str(len(blocks)))
            others = re.findall(r"Other addr: : ([\d.]+:\d+)", text)
            check(others and all(o == want_other for o in others), tag + ": OTHER-ADDRESS is " + want_other,
                  str(others))
            if len(blocks) >= 2:
                check("Response origin: : " + want_other in blocks[1], tag + ": change-request answered from " +
                      want_other)

finish()
