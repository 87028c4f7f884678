#!/usr/bin/python3
# test_stunclient_stuntd.py: Debian's stun-client (`stun`, an RFC 3489 client)
# against ntcp-stuntd on 127.0.0.1:P / 127.0.0.2:P+1. With no NAT on loopback
# it must find what an open internet host gets: "Open", tests I, II, III
# passed, mapped address 127.0.0.1, changed address 127.0.0.2:P+1.
import re

from interop import IP1, IP2, Workdir, args, check, finish, free_ports, run, start_stuntd

a = args(need_ntcp=False, need_stuntd=True, tools=("stun",))

with Workdir() as wd:
    P = free_ports(2)
    start_stuntd(a.stuntd, wd, P)

    rc, out, err = run(["stun", "%s:%d" % (IP1, P), "-v"], timeout=60)
    text = out + err
    check(rc is not None, "stun finishes")
    check("Primary: Open" in text, "stun: Primary: Open")
    # stun-client exits with its "Return value": the NAT type (0 for Open) in
    # the upper bits, 0x01 when the port was preserved, as against coturn.
    m = re.search(r"Return value is 0x([0-9a-fA-F]+)", text)
    check(m is not None and int(m.group(1), 16) in (0, 1) and rc == int(m.group(1), 16),
          "stun: return value Open (0x0 or 0x1 = port preserved) and exit code agree",
          "%s %s" % (m and m.group(1), rc))
    for t in ("test I = 1", "test II = 1", "test III = 1", "test I(2) = 1", "is nat  = 0"):
        check(t in text, "stun -v: %s" % t)
    mapped = re.findall(r"MappedAddress = ([\d.]+):(\d+)", text)
    check(mapped and all(ip == IP1 for ip, _ in mapped), "stun -v: every MappedAddress is 127.0.0.1", str(mapped))
    pairs = re.findall(r"SourceAddress = ([\d.:]+)\s+ChangedAddress = ([\d.:]+)", text)
    check(len(pairs) >= 4, "stun -v: at least four responses", str(len(pairs)))
    # The answers came from the address the request asked for; CHANGED-ADDRESS
    # is relative to the address that received the request: the primary's is
    # the alternate (127.0.0.2:P+1), and test I(2), sent to 127.0.0.2:P, gets
    # 127.0.0.1:P+1 (coturn 4.6.1 answers 127.0.0.2:P+1 there).
    sources = {s for s, _ in pairs}
    check({"%s:%d" % (IP1, P), "%s:%d" % (IP2, P), "%s:%d" % (IP1, P + 1)} <= sources,
          "stun -v: answers from the primary, the changed IP and the changed port", str(sorted(sources)))
    check(("%s:%d" % (IP1, P), "%s:%d" % (IP2, P + 1)) in pairs,
          "stun -v: test I: SourceAddress primary, ChangedAddress 127.0.0.2:P+1", str(pairs))
    check(("%s:%d" % (IP2, P), "%s:%d" % (IP1, P + 1)) in pairs,
          "stun -v: test I(2) to 127.0.0.2:P: ChangedAddress 127.0.0.1:P+1", str(pairs))

finish()
