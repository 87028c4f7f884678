#!/usr/bin/python3
# test_ntcp_cli.py: the ntcp command line without a real server: usage and exit
# codes, then `ntcp stun` against small scripted peers on loopback that check
# the request on the wire (cookie, attributes, retransmissions) and answer
# with chosen responses (success, error, wrong transaction, silence).
import os
import socket
import struct
import threading

from interop import IP1, args, check, finish, free_port, ntcp_json, run

a = args()
N = a.ntcp
COOKIE = 0x2112A442

# ---- usage and exit codes ----
rc, out, _ = run([N, "--help"])
check(rc == 0 and "stun" in out and "Exit codes" in out, "--help: exit 0, names the verb and exit codes")
rc, out, _ = run([N, "--version"])
check(rc == 0 and out.startswith("ntcp ") and out.split()[1][0].isdigit(), "--version: ntcp X.Y.Z")
rc, out, _ = run([N, "help", "stun"])
check(rc == 0 and "--connect-back" in out and "--rfc3489" in out, "help stun: the stun options")
rc, out, _ = run([N, "stun", "--help"])
check(rc == 0 and "SERVER[:PORT]" in out, "stun --help: exit 0")
for argv, what in (([], "no verb"), (["frobnicate"], "unknown verb"), (["help", "nope"], "help of an unknown verb"),
                   (["stun"], "stun without a server"), (["stun", "--bogus", "x"], "unknown option"),
                   (["stun", "--change", "sideways", "x"], "bad --change"),
                   (["stun", "127.0.0.1:0"], "port 0"), (["stun", "127.0.0.1:99999"], "port too big"),
                   (["stun", "[::1"], "unclosed bracket"), (["stun", "a", "b"], "two servers"),
                   (["stun", "--timeout", "-5", "x"], "negative timeout"),
                   (["stun", "--rfc3489", "--connect-back", "port", "x"], "--rfc3489 with --connect-back"),
                   (["stun", "--cb-timeout", "100", "x"], "--cb-timeout without --connect-back"),
                   (["stun", "--local", "nonsense", "127.0.0.1"], "bad --local")):
    rc, _, err = run([N] + argv)
    check(rc == 1 and err.strip() != "", "usage error (%s): exit 1 with a message" % what, str(rc))


# ---- a scripted UDP peer ----
def attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def xor_addr(ip, port, tid16=b""):
    """XOR-MAPPED-ADDRESS value; IPv6 is XORed with the cookie and the 96-bit id."""
    if ":" in ip:
        raw = socket.inet_pton(socket.AF_INET6, ip)
        key = tid16[:16]
        return struct.pack("!BBH", 0, 2, port ^ (COOKIE >> 16)) + bytes(x ^ y for x, y in zip(raw, key))
    return struct.pack("!BBH", 0, 1, port ^ (COOKIE >> 16)) + struct.pack(
        "!I", struct.unpack("!I", socket.inet_aton(ip))[0] ^ COOKIE)


def plain_addr(ip, port):
    return struct.pack("!BBH", 0, 1, port) + socket.inet_aton(ip)


def message(mtype, tid16, attrs=b""):
    return struct.pack("!HH", mtype, len(attrs)) + tid16 + attrs


def parse_attrs(data):
    out, i = [], 20
    while i + 4 <= len(data):
        t, n = struct.unpack("!HH", data[i:i + 4])
        out.append((t, data[i + 4:i + 4 + n]))
        i += 4 + n + (-n % 4)
    return out


class Peer:
    """Receives requests on a UDP socket and answers with answer(req, src)
    (None: stay silent). Keeps every request it saw."""

    def __init__(self, answer, family=socket.AF_INET, host=IP1):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.requests = []
        self.stop = False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.stop:
            try:
                data, src = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            self.requests.append(data)
            resp = self.answer(data, src)
            if resp:
                self.sock.sendto(resp, src)

    def close(self):
        self.stop = True
        self.t.join()
        self.sock.close()


def ok_answer(data, src):
    return message(0x0101, data[4:20], attr(0x0020, xor_addr(src[0], src[1], data[4:20])) +
                   attr(0x8022, b"scripted \"peer\""))


# Success: the mapped address comes back; the request was a Binding request
# with the cookie and the options' attributes.
p = Peer(ok_answer)
L = free_port()
rc, j = ntcp_json(N, "--timeout", "3000", "--local", "%s:%d" % (IP1, L), "--change", "both", "--response-port", "4242",
                  "--fingerprint", "%s:%d" % (IP1, p.port))
p.close()
check(rc == 0 and j.get("mapped") == "%s:%d" % (IP1, L), "scripted success: exit 0, mapped is our port",
      "%s %s" % (rc, j.get("mapped")))
check(j.get("software") == "scripted \"peer\"", "JSON string escaping of SOFTWARE", repr(j.get("software")))
req = p.requests[0] if p.requests else b"\0" * 20
typ, ln, cookie = struct.unpack("!HHI", req[:8])
check(typ == 0x0001 and cookie == COOKIE and ln == len(req) - 20, "request: Binding, magic cookie, length")
at = parse_attrs(req)
types = [t for t, _ in at]
check((0x0003, b"\0\0\0\x06") in at, "request: CHANGE-REQUEST ip+port", str(at))
check((0x0027, struct.pack("!HH", 4242, 0)) in at, "request: RESPONSE-PORT 4242", str(at))
check(types and types[-1] == 0x8028, "request: FINGERPRINT last", str(types))

# RFC 3489: no cookie; MAPPED-ADDRESS answer.
def classic_answer(data, src):
    return message(0x0101, data[4:20], attr(0x0001, plain_addr(src[0], src[1])) +
                   attr(0x0004, plain_addr(IP1, 1)) + attr(0x0005, plain_addr("127.0.0.2", 2)))


p = Peer(classic_answer)
rc, j = ntcp_json(N, "--rfc3489", "--timeout", "3000", "%s:%d" % (IP1, p.port))
p.close()
req = p.requests[0] if p.requests else b"\0" * 20
check(struct.unpack("!I", req[4:8])[0] != COOKIE and len(req) == 20, "--rfc3489: request without the cookie")
check(rc == 0 and j.get("mapped_address", "").startswith(IP1 + ":") and
      j.get("source_address") == IP1 + ":1" and j.get("changed_address") == "127.0.0.2:2",
      "--rfc3489: MAPPED-, SOURCE-, CHANGED-ADDRESS printed", str(j))

# Retransmissions: a silent peer sees 3 requests (0, 500, 1500 ms) in 1700 ms,
# all the same transaction; exit 2.
p = Peer(lambda d, s: None)
rc, j = ntcp_json(N, "--timeout", "1700", "%s:%d" % (IP1, p.port))
p.close()
check(rc == 2 and j.get("status") == "timeout", "silent peer: exit 2, timeout", "%s %s" % (rc, j.get("status")))
check(len(p.requests) == 3 and len(set(p.requests)) == 1,
      "silent peer: 3 identical transmissions (RTO 500 ms doubling)", str(len(p.requests)))
p = Peer(lambda d, s: None)
rc, j = ntcp_json(N, "--rto", "100", "--rc", "3", "%s:%d" % (IP1, p.port))
p.close()
check(rc == 2 and len(p.requests) == 3, "--rto 100 --rc 3: 3 transmissions then give up (Rm * RTO)",
      str(len(p.requests)))

# A response to another transaction is ignored; the real one is taken.
def wrong_then_right(data, src):
    bad = bytearray(data[4:20])
    bad[-1] ^= 0xFF
    peer_sock.sendto(message(0x0101, bytes(bad), attr(0x0020, xor_addr("1.2.3.4", 5))), src)
    return ok_answer(data, src)


p = Peer(wrong_then_right)
peer_sock = p.sock
rc, j = ntcp_json(N, "--timeout", "3000", "%s:%d" % (IP1, p.port))
p.close()
check(rc == 0 and not j.get("mapped", "").startswith("1.2.3.4"), "wrong transaction id ignored",
      str(j.get("mapped")))

# Error response: exit 3, code and reason printed.
def error_answer(data, src):
    return message(0x0111, data[4:20], attr(0x0009, struct.pack("!HBB", 0, 4, 20) + b"Unknown Attribute") +
                   attr(0x000A, struct.pack("!HH", 0x7777, 0x7778)))


p = Peer(error_answer)
rc, j = ntcp_json(N, "--timeout", "3000", "%s:%d" % (IP1, p.port))
check(rc == 3 and j.get("status") == "error-response" and j.get("error_code") == 420 and
      j.get("error_reason") == "Unknown Attribute" and j.get("unknown_attributes") == [0x7777, 0x7778],
      "error response: exit 3, 420 with reason and UNKNOWN-ATTRIBUTES", str(j))
rc, out, _ = run([N, "stun", "--timeout", "3000", "%s:%d" % (IP1, p.port)])
p.close()
check(rc == 3 and "420 Unknown Attribute" in out, "error response in text: code and reason")

# A success response without a mapped address is a protocol error: exit 3.
p = Peer(lambda d, s: message(0x0101, d[4:20], attr(0x8022, b"x")))
rc, j = ntcp_json(N, "--timeout", "3000", "%s:%d" % (IP1, p.port))
p.close()
check(rc == 3 and j.get("status") == "protocol-error", "no mapped address: exit 3", str(rc))

# Host names resolve.
p = Peer(ok_answer)
rc, j = ntcp_json(N, "--timeout", "3000", "-4", "localhost:%d" % p.port)
p.close()
check(rc == 0 and j.get("server") == "%s:%d" % (IP1, p.port), "host name: localhost resolves",
      str(j.get("server")))

# IPv6 as [addr]:port, when the host has ::1.
try:
    p = Peer(ok_answer, socket.AF_INET6, "::1")
except OSError:
    p = None
    print("note: no ::1 here, IPv6 part not run")
if p:
    rc, j = ntcp_json(N, "--timeout", "3000", "[::1]:%d" % p.port)
    p.close()
    check(rc == 0 and j.get("server") == "[::1]:%d" % p.port and j.get("mapped", "").startswith("[::1]:"),
          "IPv6 [::1]:port", str(j))

finish()
