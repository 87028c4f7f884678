#!/usr/bin/python3
"""raw_lab.py: STUNT#1 and NATBlaster in the lab (issue 6). For each case it
brings a lab up (prefix starting with r), starts ntcp-stuntd and
ntcp-brokerd (with --spoof for STUNT#1) on `server`, and runs
tests/engine/e2e.c in hosts a and b with --raw-only METHOD: their plans keep
only the raw attempt, so the connection can only come from it. A case passes
when both ends verified a connection by that method and carried 1 MiB each
way (SHA-256 checked). With --pcap DIR it also records each NAT's wan side.
Exits 77 (skipped) when not root or when e2e was built without NTCP_RAW."""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "engine"))
from e2e_lab import BROKER, STUN, Lab, stop, wait_stun  # noqa: E402

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
        common = ["--stun", STUN, "--broker", BROKER, "--timeout-ms", str(args.timeout_ms),
                  "--raw-only", method]
        pb = lab.spawn("b", [args.e2e, "--name", "bob", "--wait"] + common, subprocess.PIPE,
                       open(logs + "-b.err", "w"))
        pa = lab.spawn("a", [args.e2e, "--name", "alice", "--peer", "bob"] + common, subprocess.PIPE,
                       open(logs + "-a.err", "w"))
        procs += [pa, pb]
        outs = {}
        for k, p in (("a", pa), ("b", pb)):
            try:
                out, _ = p.communicate(timeout=args.timeout_ms / 1000 + 30)
            except subprocess.TimeoutExpired:
                stop(p)
                out = ""
            lines = [x for x in (out or "").splitlines() if x.startswith("{")]
            outs[k] = json.loads(lines[-1]) if lines else None
        ra, rb = outs["a"], outs["b"]
        row["res_a"], row["res_b"] = ra, rb
        if ra is None or rb is None:
            row["result"] = "FAIL (no JSON)"
        elif expect == "fail":
            ea = ra.get("engine") or {}
            why = json.dumps(ea.get("attempts"))
            good = not ra["ok"] and not rb["ok"] and ra["ms"] < args.timeout_ms
            row["result"] = ("PASS failed as expected in %d ms: %s" % (ra["ms"], why)) if good else \
                "FAIL expected a failure, got a=%s b=%s" % (ra["method"], rb["method"])
        else:
            good = ra["ok"] and rb["ok"] and ra["method"] == method and rb["method"] == method and \
                ra["transfer"] == "sha256-ok" and rb["transfer"] == "sha256-ok"
            ea, eb = ra.get("engine") or {}, rb.get("engine") or {}
            row["result"] = ("PASS %s %d/%d ms" % (method, ra["ms"], rb["ms"])) if good else \
                "FAIL a=%s/%s b=%s/%s %s" % (ra["method"], ea.get("reason") or ra.get("error"),
                                             rb["method"], eb.get("reason") or rb.get("error"),
                                             json.dumps(ea.get("attempts")))
    except Exception as e:  # noqa: BLE001 - a lab error is this case's failure
        row["result"] = "ERROR %s" % e
    finally:
        for p in reversed(procs):
            stop(p)
        subprocess.run([args.lab, "down", "--prefix", prefix], capture_output=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    for o in ("lab", "e2e", "stuntd", "brokerd", "ntcp"):
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
