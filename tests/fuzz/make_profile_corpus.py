#!/usr/bin/env python3
# make_profile_corpus.py: writes the seed corpus of fuzz_profile (the profile
# blob, docs/traversal.md "The profile blob") in corpus/fuzz_profile/
# (committed; run again only to change it). The blobs are encoded here from
# the documented layout, not by src/plan.c; the valid ones are byte for byte
# what plan_profile_encode() gives for the same profiles (checked when they
# were made), so they are the blobs peers really send: cone and symmetric
# NATs, with and without UDP, IPv6, raw sockets, the newest port of minor 1.
# The refused variants take the fuzzer to each of the decoder's refusals.
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "fuzz_profile")

# include/ntcp.h's enum values.
R_BLOCKED, R_OPEN, R_FIREWALL, R_NAT = 1, 2, 3, 4
D_NONE, D_EI, D_AD, D_APD = 1, 2, 3, 4
P_PRESERVED, P_SEQUENTIAL, P_RANDOM = 1, 2, 3
UNKNOWN, NO, YES = 0, 1, 2
S_ACCEPTED, S_DROPPED, S_RST, S_ICMP = 1, 2, 3, 4
TCP4, UDP4, TCP6, UDP6 = range(4)

VERSION = 0x11  # major 1, minor 1


def record(kind, reach, mapping, filtering, ports, hairpin=UNKNOWN, syn=0, delta=0,
           lifetime_s=0, seq_port=0, extra=b""):
    body = bytes((reach, mapping, filtering, ports, hairpin, syn))
    body += struct.pack("!hB", delta, min(lifetime_s // 4, 255))
    if seq_port:
        body += struct.pack("!H", seq_port)
    body += extra
    return bytes((kind, len(body))) + body


def blob(records, rtt_ms=40, nat_hops=1, raw=False, version=VERSION, flags=None):
    head = b"NP" + bytes((version, (1 if raw else 0) if flags is None else flags))
    head += struct.pack("!HBB", min(rtt_ms, 65535), nat_hops, len(records))
    return head + b"".join(records)


def seeds():
    s = {}
    # Port-restricted cone (endpoint-independent mapping, port-preserving),
    # TCP and UDP over IPv4.
    cone = [record(TCP4, R_NAT, D_EI, D_APD, P_PRESERVED, NO, S_DROPPED),
            record(UDP4, R_NAT, D_EI, D_APD, P_PRESERVED, NO, lifetime_s=120)]
    s["cone"] = blob(cone)
    # Full cone with hairpinning, raw sockets usable.
    s["full_cone_raw"] = blob([record(TCP4, R_NAT, D_EI, D_EI, P_PRESERVED, YES, S_ACCEPTED),
                               record(UDP4, R_NAT, D_EI, D_EI, P_PRESERVED, YES, lifetime_s=300)],
                              rtt_ms=12, raw=True)
    # Symmetric with sequential ports (delta +1, -2), the newest port seen.
    s["symmetric_seq"] = blob([record(TCP4, R_NAT, D_APD, D_APD, P_SEQUENTIAL, NO, S_RST, delta=1,
                                      seq_port=40021),
                               record(UDP4, R_NAT, D_APD, D_APD, P_SEQUENTIAL, NO, delta=1,
                                      lifetime_s=60)],
                              rtt_ms=95, nat_hops=2)
    s["symmetric_seq_down"] = blob([record(TCP4, R_NAT, D_AD, D_APD, P_SEQUENTIAL, NO, S_ICMP,
                                           delta=-2)])
    # Symmetric with random ports, TCP only (UDP not probed or blocked).
    s["symmetric_random_tcp_only"] = blob([record(TCP4, R_NAT, D_APD, D_APD, P_RANDOM, NO,
                                                  S_DROPPED)], rtt_ms=230, nat_hops=3)
    s["udp_blocked"] = blob([record(TCP4, R_NAT, D_EI, D_AD, P_PRESERVED, NO, S_RST),
                             record(UDP4, R_BLOCKED, 0, 0, 0)])
    # A public address: open, and behind a firewall; IPv6 beside IPv4.
    s["open"] = blob([record(TCP4, R_OPEN, D_EI, D_NONE, P_PRESERVED, syn=S_ACCEPTED)], nat_hops=0)
    s["firewall_v6_raw"] = blob([record(TCP4, R_NAT, D_EI, D_APD, P_PRESERVED, NO, S_DROPPED),
                                 record(TCP6, R_FIREWALL, D_EI, D_APD, P_PRESERVED, syn=S_ICMP),
                                 record(UDP6, R_FIREWALL, D_EI, D_APD, P_PRESERVED,
                                        lifetime_s=1020)], raw=True)
    # All four behaviours, each with a newest port: the longest blob (60).
    s["all_four_seq"] = blob([record(k, R_NAT, D_APD, D_APD, P_SEQUENTIAL, NO, S_RST if k % 2 == 0
                                     else 0, delta=2, seq_port=50000 + k) for k in range(4)],
                             rtt_ms=65535, nat_hops=255, raw=True)
    s["empty"] = blob([])  # discovery found nothing usable

    # Refused, or accepted only as a later version's.
    c = s["cone"]
    s["truncated"] = c[:-1]
    s["head_only"] = c[:7]
    s["bad_magic"] = b"PN" + c[2:]
    s["major_2"] = c[:2] + b"\x21" + c[3:]
    s["minor_3_longer_record"] = blob([record(TCP4, R_NAT, D_EI, D_APD, P_PRESERVED, NO,
                                              S_DROPPED, seq_port=1234, extra=b"\xaa\xbb")],
                                      version=0x13)
    s["reserved_flag"] = blob(cone, flags=0x80)
    s["twice_tcp4"] = blob([cone[0], cone[0]])
    s["short_record"] = c[:8] + bytes((TCP4, 8)) + c[10:18]
    s["mapping_none"] = blob([record(TCP4, R_NAT, D_NONE, D_APD, P_PRESERVED)])
    s["delta_not_sequential"] = blob([record(TCP4, R_NAT, D_APD, D_APD, P_RANDOM, delta=3)])
    s["trailing_byte"] = c + b"\x00"
    s["too_long"] = s["all_four_seq"] + bytes(5)
    # fuzz_profile's first finding, read as a profile to encode (its
    # check_encode): TCP6 with a delta but no sequential ports, which the
    # encoder sent and the decoder refused.
    s["encode_delta_not_sequential"] = bytes.fromhex(
        "a90000000000000000000000000000000000000000000000000006000023"
        "0000000000000080090302040104")
    return s


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in seeds().items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
