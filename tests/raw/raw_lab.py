#!/usr/bin/python3
"""raw_lab.py: STUNT#1 and NATBlaster in the lab (issue 6). For each case it
brings a lab up (prefix starting with r), starts ntcp-stuntd and
ntcp-brokerd (with --spoof for STUNT#1) on `server`, and runs
tests/many's ntcp_many (the public API: ntcp_listen/ntcp_accept in host b,
ntcp_connect in host a, as root so that raw sockets are allowed) with
`--methods METHOD` (ntcp_config_t.methods) at both ends: their plans keep
only that method's attempts, so the connection can only come from it. A case
passes when both ends verified a connection by that method, their attempt
lists name it the winner, and 1 MiB crossed each way (echoed, SHA-256
checked). With --pcap DIR it also records each NAT's wan side. Exits 77
(skipped) when not root or when built without NTCP_RAW."""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "engine"))
from e2e_lab import BROKER, STUN, Lab, many_pair, many_result, stop, wait_stun  # noqa: E402

# (name, NAT a, NAT b, SYN answer, method, expect, NATs accept their own
# address from the LAN). Port-restricted NATs answering an unsolicited SYN
# with RST: the pair where the unprivileged methods race.
#
# NATBlaster's SYN-ACK leaves its host with the NAT's own public address as
# source (docs/traversal.md, "The raw methods"): a default Linux NAT drops
# it as a martian (accept_local=0), so in the default lab NATBlaster fails,
# and that failure is checked too; with accept_local=1 on the NATs' LAN side
# it connects.
CASES = [
    ("stunt1", "port-restricted", "port-restricted", "rst", "stunt1", "ok", False),
    ("stunt1-icmp", "restricted-cone", "port-restricted", "icmp", "stunt1", "ok", False),
    ("natblaster", "port-restricted", "port-restricted", "rst", "natblaster", "ok", True),
    ("natblaster-drop", "port-restricted", "restricted-cone", "drop", "natblaster", "ok", True),
    ("natblaster-martian", "port-restricted", "port-restricted", "rst", "natblaster", "fail", False),
]


def one(i, case, args):
    name, na, nb, syn, method, expect, accept_local = case
    prefix = "%s%d%d" % (args.prefix, os.getpid() % 1000, i)
    lab = Lab(args.lab, prefix)
    logs = "/tmp/%s" % prefix
    procs = []
    row = dict(case=name, method=method, prefix=prefix)
    try:
        lab.cmd("up", "--prefix", prefix, "--quiet", "--a", na, "--b", nb, "--syn", syn, "--seed", "7")
        if accept_local:
            for r in ("nat-a", "nat-b"):
                lab.cmd("exec", r, "--", "sysctl", "-qw", "net.ipv4.conf.lan.accept_local=1")
        slog = open(logs + "-servers.log", "w")
        procs.append(lab.spawn("server", [args.stuntd, "--primary", STUN, "--alternate", "203.0.113.11:3479",
                                          "--udp-rate", "0", "--cb-rate", "0"], slog, slog))
        bro = [args.brokerd, "--listen", BROKER, "--verbose", "--stats", "1"]
        if method == "stunt1":
            bro.append("--spoof")
        procs.append(lab.spawn("server", bro, slog, slog))
        if args.pcap:
            for r in ("nat-a", "nat-b"):
                procs.append(lab.spawn(r, ["tcpdump", "-n", "-U", "-i", "wan", "-w",
                                           "%s/%s-%s-%s.pcap" % (args.pcap, prefix, name, r), "tcp"],
                                       subprocess.DEVNULL, subprocess.DEVNULL))
        if not wait_stun(lab, args.ntcp):
            raise RuntimeError("ntcp-stuntd did not answer in the lab")
        limit_ms = args.timeout_ms + 15000  # the call's timeout covers discovery and registration
        common = ["--stun", STUN, "--broker", BROKER, "--timeout", str(limit_ms),
                  "--methods", method]
        pa, pb, f, wall_s = many_pair(lab, args.many, "a", "b", logs, common, 1 << 20, limit_ms,
                                      expect == "ok")
        procs += [pa, pb]
        wall_ms = int(wall_s * 1000)
        ra, rb = many_result(f["aout"]), many_result(f["bout"])
        row["res_a"], row["res_b"] = ra, rb
        if expect == "fail":
            why = (ra or {}).get("detail", "")
            served = rb is not None and rb.get("ok")
            good = ra is not None and not ra["ok"] and not served and pa.returncode == 2 and \
                wall_ms < limit_ms
            row["result"] = ("PASS failed as expected in %d ms: %s" % (wall_ms, why)) if good else \
                "FAIL expected a failure, got a=%s b=%s" % ((ra or {}).get("method"),
                                                            (rb or {}).get("method"))
        elif ra is None or rb is None:
            row["result"] = "FAIL (no JSON from %s)" % ("a" if ra is None else "b")
        else:
            won = [a for a in ra.get("attempt_list", []) if a["outcome"] == "won"]
            good = ra["ok"] and rb["ok"] and ra["method"] == method and rb["method"] == method and \
                ra["echo_ok"] and rb["echo_ok"] and len(won) == 1 and won[0]["method"] == method
            row["result"] = ("PASS %s %d/%d ms" % (method, ra["verified_ms"], rb["verified_ms"])) \
                if good else "FAIL a=%s/%s b=%s/%s (echo %s/%s) %s" % (
                    ra["method"], ra.get("detail"), rb["method"], rb.get("detail"),
                    ra["echo_why"] or "ok", rb["echo_why"] or "ok",
                    json.dumps(ra.get("attempt_list")))
    except Exception as e:  # noqa: BLE001 - a lab error is this case's failure
        row["result"] = "ERROR %s" % e
    finally:
        for p in reversed(procs):
            stop(p)
        subprocess.run([args.lab, "down", "--prefix", prefix], capture_output=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    for o in ("lab", "many", "stuntd", "brokerd", "ntcp"):
        ap.add_argument("--" + o, required=True)
    ap.add_argument("--timeout-ms", type=int, default=15000)
    ap.add_argument("--case", action="append", default=[], help="a case by name (repeatable)")
    ap.add_argument("--prefix", default="r", help="start of the labs' prefixes (default r)")
    ap.add_argument("--pcap", help="write tcpdump captures of both NATs' wan sides here")
    ap.add_argument("--raw-built", default="ON", help="the NTCP_RAW option of the build")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("skipped: the lab and raw sockets need root")
        return 77
    if args.raw_built.upper() not in ("ON", "1", "TRUE", "YES"):
        print("skipped: built without NTCP_RAW")
        return 77
    cases = [c for c in CASES if not args.case or c[0] in args.case]
    if not cases:
        print("no such case (one of: %s)" % " ".join(c[0] for c in CASES), file=sys.stderr)
        return 2
    bad = 0
    for i, c in enumerate(cases):
        row = one(i, c, args)
        print("%-18s %s" % (c[0], row["result"]), flush=True)
        if not row["result"].startswith("PASS"):
            bad += 1
            print("  logs /tmp/%s-*" % row["prefix"])
    print("%d/%d cases as expected" % (len(cases) - bad, len(cases)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
