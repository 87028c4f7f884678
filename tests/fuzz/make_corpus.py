#!/usr/bin/env python3
# make_corpus.py: writes the seed corpora in corpus/<target>/ (committed; run
# again only to change them). Messages are encoded here, independently of
# the codec under test: the RFC 5769 vectors, RFC 3489 and RFC 5780 messages,
# the STUNT connect-back, malformed cases, and TCP streams of several messages.
import hashlib
import hmac
import os
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
COOKIE = bytes.fromhex("2112a442")


def h(s):
    return bytes.fromhex("".join(s.split()))


RFC5769 = {
    "rfc5769_request": h("""
        00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
        00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
        00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
        00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
        80 28 00 04 e5 7a 3b cf"""),
    "rfc5769_ipv4_response": h("""
        01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
        00 20 00 08 00 01 a1 47 e1 12 a6 43
        00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
        80 28 00 04 c0 7d 4c 96"""),
    "rfc5769_ipv6_response": h("""
        01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
        00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
        00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
        80 28 00 04 c8 fb 0b 4c"""),
    "rfc5769_longterm_request": h("""
        00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
        00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
        00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
        00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
        00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66"""),
}


def msgtype(method, cls):
    return ((method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
            | ((cls & 1) << 4) | ((cls & 2) << 7))


def attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


class Msg:
    def __init__(self, method, cls, tid):
        self.hdr = struct.pack("!H", msgtype(method, cls))
        self.tid = tid
        self.body = b""

    def add(self, t, v):
        self.body += attr(t, v)
        return self

    def raw(self):
        return self.hdr + struct.pack("!H", len(self.body)) + self.tid + self.body

    def integrity(self, key, sha256=False):
        n = 32 if sha256 else 20
        # the HMAC covers the header with the length up to the end of itself
        hdr = self.hdr + struct.pack("!H", len(self.body) + 4 + n) + self.tid
        mac = hmac.new(key, hdr + self.body, hashlib.sha256 if sha256 else hashlib.sha1).digest()
        return self.add(0x001C if sha256 else 0x0008, mac)

    def fingerprint(self):
        hdr = self.hdr + struct.pack("!H", len(self.body) + 8) + self.tid
        crc = (zlib.crc32(hdr + self.body) ^ 0x5354554E) & 0xFFFFFFFF
        return self.add(0x8028, struct.pack("!I", crc))


def tid(n):
    return COOKIE + bytes((n * 17 + i * 31) & 0xFF for i in range(12))


def addr4(ip, port, xor=False, t=None):
    b = bytes(int(x) for x in ip.split("."))
    if xor:
        port ^= 0x2112
        b = bytes(x ^ y for x, y in zip(b, COOKIE))
    return struct.pack("!BBH", 0, 1, port) + b


def addr6(words, port):
    return struct.pack("!BBH", 0, 2, port) + b"".join(struct.pack("!H", w) for w in words)


def parse_seeds():
    s = dict(RFC5769)
    tid3489 = bytes(range(0x40, 0x50))
    s["rfc3489_request"] = Msg(1, 0, tid3489).raw()
    s["rfc3489_change_request"] = Msg(1, 0, tid3489).add(0x0003, h("00000006")).raw()
    s["rfc3489_response"] = (Msg(1, 2, tid3489)
                             .add(0x0001, addr4("198.51.100.7", 40000))
                             .add(0x0004, addr4("192.0.2.10", 3478))
                             .add(0x0005, addr4("192.0.2.11", 3479)).raw())
    s["rfc5780_request"] = (Msg(1, 0, tid(1)).add(0x0003, h("00000002"))
                            .add(0x0027, h("beef0000")).add(0x0026, b"x" * 13)
                            .fingerprint().raw())
    s["rfc5780_response"] = (Msg(1, 2, tid(2))
                             .add(0x0020, addr4("203.0.113.5", 50000, xor=True))
                             .add(0x0001, addr4("203.0.113.5", 50000))
                             .add(0x802B, addr4("192.0.2.1", 3478))
                             .add(0x802C, addr6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2], 3479))
                             .add(0x8022, b"ntcp-stuntd 0.1.0").fingerprint().raw())
    s["error_420_unknown"] = (Msg(1, 3, tid(3)).add(0x0009, h("00000414") + b"Unknown Attribute")
                              .add(0x000A, h("0024 7f31 0777")).raw())
    s["error_300_alternate"] = (Msg(1, 3, tid(4)).add(0x0009, h("00000300") + b"Try Alternate")
                                .add(0x8023, addr4("192.0.2.99", 3478))
                                .add(0x0014, b"ntcp.example").add(0x0015, b"nonce-nonce").raw())
    s["integrity_sha256"] = (Msg(1, 0, tid(5)).add(0x0006, b"alice")
                             .integrity(b"fuzz-key-0123456789")
                             .integrity(b"fuzz-key-0123456789", sha256=True).fingerprint().raw())
    s["unknown_attrs"] = (Msg(1, 0, tid(6)).add(0x7F31, b"abc").add(0xC0FF, b"zz")
                          .add(0x0031, b"").raw())
    s["stunt_connect_back"] = (Msg(0x0E01, 0, tid(7)).add(0x4E01, struct.pack("!I", 2000))
                               .add(0x0003, h("00000004")).fingerprint().raw())
    s["stunt_connect_result"] = (Msg(0x0E01, 2, tid(8))
                                 .add(0x4E02, struct.pack("!BBBBI", 2, 3, 13, 0, 250))
                                 .fingerprint().raw())
    # malformed
    v4 = RFC5769["rfc5769_ipv4_response"]
    s["bad_truncated_header"] = v4[:19]
    s["bad_length_past_end"] = v4[:2] + struct.pack("!H", 0x40) + v4[4:]
    s["bad_length_not_mult4"] = Msg(1, 0, tid(9)).raw()[:2] + b"\0\x02" + tid(9) + b"\x80\x22"
    s["bad_attr_past_end"] = Msg(1, 0, tid(10)).raw()[:2] + b"\0\x08" + tid(10) + h("80220010") + b"abcd"
    s["bad_padding"] = Msg(1, 0, tid(11)).raw()[:2] + b"\0\x09" + tid(11) + h("80220005") + b"abcde"
    s["bad_family"] = Msg(1, 2, tid(12)).add(0x0020, h("0003a147e112a643")).raw()
    s["bad_fingerprint"] = v4[:-1] + bytes([v4[-1] ^ 1])
    s["bad_error_class"] = Msg(1, 3, tid(13)).add(0x0009, h("00000700") + b"Oops").raw()
    return s


def stream_of(msgs, mode=0x50, seed=b"\x12\x34"):
    """A framer input: mode byte, two seed bytes, then the stream."""
    return bytes([mode]) + seed + b"".join(msgs)


def framer_seeds(p):
    msgs = [p["rfc5769_request"], p["rfc5769_ipv4_response"], p["rfc3489_request"],
            p["rfc5780_response"], p["rfc5769_longterm_request"], p["stunt_connect_result"]]
    s = {}
    s["stream_6_msgs_cap4096_chunks32"] = stream_of(msgs, 0x56)
    s["stream_6_msgs_cap128_space_bytewise"] = stream_of(msgs, 0x0B)
    s["stream_6_msgs_cap548_chunks512"] = stream_of(msgs, 0x94, b"\xa5\x5a")
    s["stream_partial_tail"] = stream_of(msgs[:3] + [msgs[3][:30]], 0x35)
    s["stream_junk_after_msg"] = stream_of([msgs[1], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], 0x26)
    s["stream_too_big"] = stream_of([msgs[2], msgs[0]], 0x12)  # 64-byte buffer
    s["stream_header_only_msgs"] = stream_of([p["rfc3489_request"]] * 8, 0x40)
    return s


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    p = parse_seeds()
    write("fuzz_stun_parse", p)
    write("fuzz_stun_framer", framer_seeds(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
