#!/usr/bin/env python3
# make_verify_corpus.py: writes the seed corpus of fuzz_verify (the key
# proof, docs/verify.md, version 2) in corpus/fuzz_verify/ (committed; run
# again only to change it). Messages, transcripts and signatures are made
# here, independently of src/verify.c (python3-cryptography for Ed25519), so
# the valid seeds also check the C transcript layout: tests/verify feeds
# hello_proof and hello_proof_early to a core and expects it done.
#
# The fuzz target plays alice (requester, RANDOM all zero) with the fixed
# keys below; the seeds are bob's side of the stream.
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "fuzz_verify")
COOKIE = bytes.fromhex("2112a442")

# Must match tests/fuzz/fuzz_verify.c.
ALICE_SEED = b"fuzz-alice-private-key-seed-0001"
BOB_SEED = b"fuzz-bob-private-key-seed-000002"
NONCE = b"fuzz-session-nonce-0123456789abc"

HELLO, PROOF, REFUSE = 0x0E20, 0x0E21, 0x0E22
A_VERSION, A_ROLE, A_SID, A_NAME, A_KEY, A_RANDOM, A_SIG = range(0x4E40, 0x4E47)
ERROR_CODE = 0x0009
INDICATION = 1
VERSION = 2


def sha256(b):
    h = hashes.Hash(hashes.SHA256())
    h.update(b)
    return h.finalize()


def msgtype(method, cls):
    return ((method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
            | ((cls & 1) << 4) | ((cls & 2) << 7))


def attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def msg(method, attrs, n):
    body = b"".join(attr(t, v) for t, v in attrs)
    tid = COOKIE + bytes((n * 29 + i * 7) & 0xFF for i in range(12))
    return struct.pack("!HH", msgtype(method, INDICATION), len(body)) + tid + body


def u32(v):
    return struct.pack("!I", v)


def pub(key):
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


ALICE = Ed25519PrivateKey.from_private_bytes(ALICE_SEED)
BOB = Ed25519PrivateKey.from_private_bytes(BOB_SEED)
SID = sha256(b"NTCP-VERIFY-SESSION-1" + NONCE)[:16]
BOB_RANDOM = bytes([0xB0]) * 32
ALICE_RANDOM = bytes(32)  # the fuzz target's


def hello(role, name, key, random, version=VERSION, sid=SID, extra=()):
    return msg(HELLO, [(A_VERSION, u32(version)), (A_ROLE, u32(role)), (A_SID, sid),
                       (A_NAME, name), (A_KEY, key), (A_RANDOM, random)] + list(extra), role + 1)


def transcript(role, version, nonce, random):
    """docs/verify.md 2: what the signer alone knows."""
    ident = b""
    for name, key in ((b"alice", pub(ALICE)), (b"bob", pub(BOB))):
        ident += bytes([len(name)]) + name + key
    return b"NTCP-VERIFY-2" + bytes([role]) + u32(version) + nonce + random + ident


def proof(sig, n=5):
    return msg(PROOF, [(A_SIG, sig)], n)


def bob_flight(version=VERSION, sign_version=None, nonce=NONCE, sid=SID, role=1):
    sv = version if sign_version is None else sign_version
    sig = BOB.sign(transcript(role, sv, nonce, BOB_RANDOM))
    return hello(role, b"bob", pub(BOB), BOB_RANDOM, version, sid) + proof(sig)


def seeds():
    s = {}
    good = bob_flight()
    h = hello(1, b"bob", pub(BOB), BOB_RANDOM)
    s["hello"] = h
    s["hello_proof"] = good
    s["hello_proof_early"] = good + b"EARLY!!"
    s["hello_badproof"] = good[:-1] + bytes([good[-1] ^ 0x01])
    s["hello_proof_later_version"] = bob_flight(version=3)
    s["hello_proof_downgraded"] = bob_flight(version=2, sign_version=3)
    s["hello_v1"] = bob_flight(version=1)
    s["hello_other_nonce"] = bob_flight(nonce=b"another-nonce-0123456789abcdef!!")
    s["hello_wrong_session"] = bob_flight(sid=bytes(16))
    s["hello_our_role"] = bob_flight(role=0)
    s["hello_wrong_key"] = (hello(1, b"bob", pub(ALICE), BOB_RANDOM)
                            + proof(ALICE.sign(transcript(1, VERSION, NONCE, BOB_RANDOM))))
    s["hello_wrong_name"] = hello(1, b"carol", pub(BOB), BOB_RANDOM) + good[len(h):]
    s["hello_unknown_attr"] = hello(1, b"bob", pub(BOB), BOB_RANDOM,
                                    extra=[(0x4E4F, u32(7))]) + good[len(h):]
    s["hello_optional_attr"] = hello(1, b"bob", pub(BOB), BOB_RANDOM,
                                     extra=[(0x8022, b"ntcp test")]) + good[len(h):]
    # Alice's own flight reflected, as is and with the role turned.
    own_sig = ALICE.sign(transcript(0, VERSION, NONCE, ALICE_RANDOM))
    s["reflected"] = hello(0, b"alice", pub(ALICE), ALICE_RANDOM) + proof(own_sig)
    s["reflected_role_turned"] = hello(1, b"alice", pub(ALICE), ALICE_RANDOM) + proof(own_sig)
    s["hello_hello"] = h + h
    s["proof_first"] = good[len(h):] + h
    s["refuse"] = msg(REFUSE, [(ERROR_CODE, struct.pack("!HBB", 0, 4, 3) + b"not you")], 9)
    s["garbage"] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    s["oversize_header"] = struct.pack("!HH", msgtype(HELLO, INDICATION), 4000) + COOKIE + bytes(12)
    s["truncated_flight"] = good[:-10]
    return s


def main():
    os.makedirs(OUT, exist_ok=True)
    s = seeds()
    for name in os.listdir(OUT):
        if name not in s:
            os.remove(os.path.join(OUT, name))
    for name, data in s.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
