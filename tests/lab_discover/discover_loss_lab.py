#!/usr/bin/python3
"""discover_loss_lab.py: `ntcp discover --json` over a lossy, slow internet
(ntcp-lab --loss 5 and --loss 20, --delay 25), behind every NAT personality,
several runs each. Every field that discover_lab.py checks must be exactly
what the personality promises or "unknown" with a reason in `why`: a wrong
value fails the test, an unknown one does not. Prints how many fields came
out exact and unknown per personality and loss rate. Labs run in parallel
(--jobs). Exits 77 (skipped) when not root."""

import argparse
import concurrent.futures
import json
import os
import random
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from discover_lab import (Lab, expected_v4, expected_v6, start_stuntd, stop_stuntd,  # noqa: E402
                          wait_server)

# Each lab runs two personalities (sites a and b) with one SYN answer. Every
# personality at each loss rate; "drop" most often, since a dropped SYN and
# a lost one look alike.
LABS = []
for _loss in (5, 20):
    LABS += [
        dict(a="none", b="fw", syn="drop", loss=_loss),
        dict(a="full-cone", b="restricted-cone", syn="drop", loss=_loss),
        dict(a="port-restricted", b="symmetric-seq", syn="drop", delta=2, loss=_loss),
        dict(a="symmetric-random", b="restricted-cone", syn="rst" if _loss == 5 else "icmp",
             loss=_loss),
    ]

PARTS = (("udp4", expected_v4, 0), ("tcp4", expected_v4, 1),
         ("udp6", expected_v6, 0), ("tcp6", expected_v6, 1))


def judge(where, got, want):
    """(exact, unknown, failures) for one behaviour of one report: each
    wanted field is exact, or "unknown" with a reason, or wrong."""
    if not got.get("probed"):
        return 0, 0, ["%s: not probed (%s)" % (where, got.get("why"))]
    exact = unknown = 0
    bad = []
    for k, v in want.items():
        g = got.get(k)
        if g == v:
            exact += 1
        elif g == "unknown" or (k == "delta" and got.get("ports") == "unknown"):
            unknown += 1
            if not got.get("why"):
                bad.append("%s: %s is unknown without a reason" % (where, k))
        else:
            bad.append("%s: %s is %r, want %r (why: %s)" % (where, k, g, v, got.get("why")))
    return exact, unknown, bad


def run_lab(i, knobs, args, tally, lock):
    prefix = "%s%03d%d" % (args.prefix, os.getpid() % 1000, i)
    lab = Lab(args.lab, prefix)
    seed = random.SystemRandom().randrange(1, 1 << 30)
    up = ["up", "--prefix", prefix, "--quiet", "--a", knobs["a"], "--b", knobs["b"],
          "--syn", knobs["syn"], "--delay", str(args.delay), "--loss", str(knobs["loss"]),
          "--seed", str(seed)]
    if "delta" in knobs:
        up += ["--delta", str(knobs["delta"])]
    desc = " ".join(up[4:])
    failures, lines = [], []
    server = None
    log = open("/tmp/%s-stuntd.log" % prefix, "w")
    try:
        lab.cmd(*up)
        server = start_stuntd(lab, args.stuntd, log)
        # Both families from both sites: the lossy link's neighbour discovery
        # (IPv6) takes its time after `up`, which no discovery should pay.
        for site in ("a", "b"):
            for addr in ("203.0.113.10:3478", "[2001:db8::10]:3478"):
                if not wait_server(lab, args.ntcp, 30, addr, site):
                    raise RuntimeError("ntcp-stuntd did not answer %s from %s" % (addr, site))
        for run in range(args.runs):
            # Both sites at once: separate NATs, one server.
            with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
                procs = {site: ex.submit(lab.exec, site, [args.ntcp, "discover", "--json",
                                                          "--server", "server"], 60)
                         for site in ("a", "b")}
            for site in ("a", "b"):
                pers = knobs[site]
                r = procs[site].result()
                key = (pers, knobs["loss"])
                where = "%s (%s) loss %d%% run %d" % (pers, site, knobs["loss"], run + 1)
                try:
                    rep = json.loads(r.stdout)
                except ValueError:
                    failures.append("%s: no JSON (exit %d): %s %s" % (where, r.returncode,
                                                                     r.stdout, r.stderr))
                    continue
                ex_n = un_n = 0
                nfail = len(failures)
                for part, expect, tcp in PARTS:
                    e, u, bad = judge("%s %s" % (where, part), rep[part],
                                      expect(pers, knobs)[tcp])
                    ex_n, un_n = ex_n + e, un_n + u
                    failures += bad
                    with lock:
                        t = tally.setdefault(key, [0, 0, 0, 0, [], 0])
                        t[0], t[1], t[2] = t[0] + e, t[1] + u, t[2] + len(bad)
                with lock:
                    t = tally.setdefault(key, [0, 0, 0, 0, [], 0])
                    t[3] += 1
                    t[5] += len(failures) > nfail
                    t[4].append(rep.get("elapsed_ms", 0))
                lines.append("%-62s %-40s %5d ms  exact %2d  unknown %2d" %
                             (desc, where, rep.get("elapsed_ms", 0), ex_n, un_n))
                if args.verbose:
                    for part, _, _ in PARTS:
                        if rep[part].get("why"):
                            lines.append("    %s: %s" % (part, rep[part]["why"]))
    except Exception as e:  # noqa: BLE001 - a lab that fails is a failure, the others go on
        failures.append("%s: %s" % (desc, e))
    finally:
        stop_stuntd(server)
        lab.cmd("down", check=False)
        log.close()
    with lock:
        sys.stdout.write("".join(l + "\n" for l in lines))
        sys.stdout.flush()
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lab", required=True)
    ap.add_argument("--ntcp", required=True)
    ap.add_argument("--stuntd", required=True)
    ap.add_argument("--runs", type=int, default=3, help="discoveries per site and lab (3)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("NTCP_DISC_JOBS", "4")),
                    help="labs at a time (4, or $NTCP_DISC_JOBS)")
    ap.add_argument("--delay", type=int, default=25, help="one-way delay, ms (25)")
    ap.add_argument("--loss", type=int, action="append",
                    help="only the labs of this loss rate (5, 20; repeatable)")
    ap.add_argument("--only", type=int, action="append", help="run only lab number N (0-based)")
    ap.add_argument("--prefix", default=os.environ.get("NTCP_LAB_PREFIX_BASE", "ndl"),
                    help="start of the labs' prefixes ($NTCP_LAB_PREFIX_BASE, else ndl)")
    ap.add_argument("--verbose", action="store_true", help="print each report's why")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("skipped: the lab needs root (network namespaces, nftables)")
        return 77
    labs = [(i, k) for i, k in enumerate(LABS)
            if (not args.only or i in args.only) and (not args.loss or k["loss"] in args.loss)]
    tally, lock = {}, threading.Lock()
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        for f in ex.map(lambda ik: run_lab(ik[0], ik[1], args, tally, lock), labs):
            failures += f
    print()
    print("%-18s %5s %5s %7s %7s %5s %9s" % ("personality", "loss", "runs", "exact", "unknown",
                                            "wrong", "worst ms"))
    order = ["none", "fw", "full-cone", "restricted-cone", "port-restricted", "symmetric-seq",
             "symmetric-random"]
    for key in sorted(tally, key=lambda k: (k[1], order.index(k[0]))):
        ex_n, un_n, bad_n, runs, ms, _ = tally[key]
        print("%-18s %4d%% %5d %7d %7d %5d %9d" % (key[0], key[1], runs, ex_n, un_n, bad_n,
                                                   max(ms) if ms else 0))
    for f in failures:
        print("FAIL " + f)
    total = sum(t[3] for t in tally.values())
    bad_runs = sum(t[5] for t in tally.values())
    # One discovery is one test: it passes when no field is wrong (a lab
    # that did not come up counts as one failure).
    failed = bad_runs if bad_runs else 1 if failures else 0
    print("%d passed, %d failed" % (total - bad_runs, failed))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
