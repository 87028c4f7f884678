#!/usr/bin/env python3
# make_turn_corpus.py: writes the seed corpus of fuzz_turn_msg (committed; run
# again only to change it): TURN responses and indications as a server sends
# them, encoded here independently of the codec under test.
import hashlib
import hmac
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "fuzz_turn_msg")
COOKIE = 0x2112A442
TID = bytes(range(1, 13))


def mtype(method, cls):
    return (method & 0xF) | ((method & 0x70) << 1) | ((method & 0xF80) << 2) | ((cls & 1) << 4) | ((cls & 2) << 7)


def attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def xaddr(ip, port):
    b = bytes(int(x) for x in ip.split("."))
    ck = struct.pack("!I", COOKIE)
    return struct.pack("!BBH", 0, 1, port ^ (COOKIE >> 16)) + bytes(x ^ y for x, y in zip(b, ck))


def msg(method, cls, attrs, key=None, fp=True):
    body = b"".join(attrs)
    if key is not None:
        hdr = struct.pack("!HHI", mtype(method, cls), len(body) + 24, COOKIE) + TID
        body += attr(0x0008, hmac.new(key, hdr + body, hashlib.sha1).digest())
    if fp:
        hdr = struct.pack("!HHI", mtype(method, cls), len(body) + 8, COOKIE) + TID
        crc = (zlib.crc32(hdr + body) & 0xFFFFFFFF) ^ 0x5354554E
        body += attr(0x8028, struct.pack("!I", crc))
    return struct.pack("!HHI", mtype(method, cls), len(body), COOKIE) + TID + body


def err(code, reason=b"x"):
    return attr(0x0009, struct.pack("!HBB", 0, code // 100, code % 100) + reason)


key = hashlib.md5(b"1700000000:fuzz:ntcp.test:pw").digest()
seeds = {
    "alloc_401": msg(0x003, 3, [err(401, b"Unauthorized"), attr(0x0014, b"ntcp.test"), attr(0x0015, b"abc")]),
    "alloc_438": msg(0x003, 3, [err(438, b"Stale Nonce"), attr(0x0015, b"def")]),
    "alloc_486": msg(0x003, 3, [err(486, b"Allocation Quota Reached")], key),
    "alloc_ok": msg(0x003, 2, [attr(0x0016, xaddr("203.0.113.5", 50000)), attr(0x0020, xaddr("198.51.100.9", 61000)),
                               attr(0x000D, struct.pack("!I", 600))], key),
    "connect_ok": msg(0x00A, 2, [attr(0x002A, struct.pack("!I", 7))], key),
    "connection_attempt": msg(0x00C, 1, [attr(0x0012, xaddr("198.51.100.20", 1234)), attr(0x002A, struct.pack("!I", 9))]),
    "data_ind": msg(0x007, 1, [attr(0x0012, xaddr("198.51.100.20", 1234)), attr(0x0013, b"hello")]),
    "bind_447": msg(0x00B, 3, [err(447)], key),
    "bad_connid": msg(0x00C, 1, [attr(0x002A, b"\0\0\0")], fp=False),
}
os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
