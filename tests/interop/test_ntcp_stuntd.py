#!/usr/bin/python3
# test_ntcp_stuntd.py: `ntcp stun` against ntcp-stuntd (primary 127.0.0.1:P,
# alternate 127.0.0.2:P+1): mapped address, RFC 5780 attributes on all four
# sockets, CHANGE-REQUEST, RESPONSE-PORT, RFC 3489, TCP, and the STUNT
# connect-back (connected and refused outcomes).
import socket

from interop import IP1, IP2, Workdir, args, check, finish, free_port, free_ports, ntcp_json, start_stuntd

a = args(need_stuntd=True)
T = ("--timeout", "5000")

with Workdir() as wd:
    P = free_ports(2)
    start_stuntd(a.stuntd, wd, P)
    A = {(0, 0): "%s:%d" % (IP1, P), (0, 1): "%s:%d" % (IP1, P + 1),
         (1, 0): "%s:%d" % (IP2, P), (1, 1): "%s:%d" % (IP2, P + 1)}
    srv = A[0, 0]

    # UDP and TCP: the mapped address is the socket we bound.
    for tr in ("udp", "tcp"):
        L = free_port()
        opts = (["--tcp"] if tr == "tcp" else []) + ["--local", "%s:%d" % (IP1, L)]
        rc, j = ntcp_json(a.ntcp, *T, *opts, srv)
        check(rc == 0 and j.get("status") == "ok", "%s: exit 0" % tr, str(rc))
        check(j.get("mapped") == "%s:%d" % (IP1, L), "%s: mapped address is our socket" % tr, str(j.get("mapped")))
        check(j.get("xor_mapped_address") == j.get("mapped_address") == j.get("mapped"),
              "%s: XOR-MAPPED-ADDRESS and MAPPED-ADDRESS agree" % tr)
        check(j.get("software", "").startswith("ntcp-stuntd"), "%s: SOFTWARE ntcp-stuntd" % tr, str(j.get("software")))

    # Every one of the four sockets: RESPONSE-ORIGIN is that socket and
    # OTHER-ADDRESS differs from it in both IP and port.
    for (i, p), addr in sorted(A.items()):
        for tr in ("udp", "tcp"):
            rc, j = ntcp_json(a.ntcp, *T, *(["--tcp"] if tr == "tcp" else []), addr)
            check(rc == 0 and j.get("response_origin") == addr, "%s %s: RESPONSE-ORIGIN is %s" % (tr, addr, addr),
                  str(j.get("response_origin")))
            check(j.get("other_address") == A[1 - i, 1 - p], "%s %s: OTHER-ADDRESS is %s" % (tr, addr, A[1 - i, 1 - p]),
                  str(j.get("other_address")))

    # CHANGE-REQUEST over UDP: the answer comes from the changed IP and/or port.
    for ch, want in (("ip", A[1, 0]), ("port", A[0, 1]), ("both", A[1, 1])):
        rc, j = ntcp_json(a.ntcp, *T, "--change", ch, srv)
        check(rc == 0 and j.get("from") == want and j.get("response_origin") == want,
              "udp --change %s: answered from %s" % (ch, want), "%s %s" % (j.get("from"), j.get("response_origin")))

    # FINGERPRINT: answered (the response's own FINGERPRINT is checked by the codec).
    rc, j = ntcp_json(a.ntcp, *T, "--fingerprint", srv)
    check(rc == 0 and j.get("mapped", "").startswith(IP1 + ":"), "udp --fingerprint: answered")

    # RESPONSE-PORT: the answer goes to that port of ours, not to our socket.
    R = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    R.bind((IP1, 0))
    R.settimeout(5)
    rc, j = ntcp_json(a.ntcp, "--timeout", "700", "--response-port", str(R.getsockname()[1]), srv)
    check(rc == 2, "udp --response-port: nothing on our own socket (exit 2)", str(rc))
    try:
        data, frm = R.recvfrom(2048)
        got = data[:2] == b"\x01\x01" and frm == (IP1, P)
    except OSError:
        got = False
    check(got, "udp --response-port: the Binding response reached the other port")
    R.close()

    # RFC 3489: MAPPED-, SOURCE- and CHANGED-ADDRESS; CHANGE-REQUEST too.
    L = free_port()
    rc, j = ntcp_json(a.ntcp, *T, "--rfc3489", "--local", "%s:%d" % (IP1, L), srv)
    check(rc == 0 and j.get("mapped_address") == "%s:%d" % (IP1, L), "--rfc3489: MAPPED-ADDRESS is our socket",
          str(j.get("mapped_address")))
    check(j.get("source_address") == srv, "--rfc3489: SOURCE-ADDRESS is the server", str(j.get("source_address")))
    check(j.get("changed_address") == A[1, 1], "--rfc3489: CHANGED-ADDRESS is the alternate", str(j.get("changed_address")))
    check("xor_mapped_address" not in j and "other_address" not in j, "--rfc3489: no RFC 5780 attributes taken")
    rc, j = ntcp_json(a.ntcp, *T, "--rfc3489", "--change", "both", srv)
    check(rc == 0 and j.get("from") == A[1, 1] and j.get("source_address") == A[1, 1],
          "--rfc3489 --change both: answered from the alternate", str(j.get("from")))

    # Connect-back: we listen on our control connection's port; the server
    # connects from another port / IP / both and sends a Binding indication
    # with our transaction id on the new connection.
    for ch, want in (("port", A[0, 1]), ("ip", A[1, 0]), ("both", A[1, 1])):
        rc, j = ntcp_json(a.ntcp, *T, "--connect-back", ch, "--cb-timeout", "3000", srv)
        cb = j.get("connect_back", {})
        check(rc == 0 and cb.get("outcome") == "connected", "connect-back %s: connected" % ch, str(cb))
        check(cb.get("accepted") is True and cb.get("accepted_from") == want,
              "connect-back %s: we accepted the connection from %s" % (ch, want), str(cb.get("accepted_from")))
        check(cb.get("indication") is True, "connect-back %s: the indication with our transaction id came" % ch)
    # Not listening: the SYN meets a closed port, the kernel answers RST.
    rc, j = ntcp_json(a.ntcp, *T, "--connect-back", "both", "--no-listen", srv)
    cb = j.get("connect_back", {})
    check(rc == 0 and cb.get("outcome") == "refused", "connect-back, not listening: refused", str(cb))
    check(cb.get("accepted") is False and cb.get("indication") is False, "connect-back, not listening: nothing accepted")

finish()
