#!/usr/bin/python3
"""soak_lab.py: the soak (issue 12). COUNT connections in a row (1,000 by
default) between two lab sites through the public API (ntcp_many --repeat:
ntcp_connect, ntcp_accept), each echoing 4 KiB checked by SHA-256 and closed
before the next, with the ASan build of ntcp_many (--many): no leak
(LeakSanitizer ends a leaking process with an error), every connection
verified, and no growth in descriptors or memory at either end after the
first tenth: the progress lines' counts are printed and compared.

ASan keeps freed memory in a quarantine before reusing it; it is set small
(ASAN_OPTIONS quarantine_size_mb) so that the resident size levels off
early and growth is visible. Exits 77 (skipped) when not root."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
import labproc  # noqa: E402

BROKER, STUN = labproc.BROKER, labproc.STUN
# Growth allowed in resident memory from the middle of the run to its end
# (kB): by then ASan's quarantine (4 MB here) is full and the allocator's
# arenas are made; 500 connections that each kept 4 KiB (one echo buffer)
# would add 2 MB.
RSS_SLACK_KB = 1536


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", required=True)
    ap.add_argument("--many", required=True, help="ntcp_many, preferably the ASan build's")
    ap.add_argument("--stuntd", required=True)
    ap.add_argument("--brokerd", required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--a", default="port-restricted")
    ap.add_argument("--b", default="full-cone")
    ap.add_argument("--delay", type=float, default=0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIP: the lab needs root (network namespaces)")
        return 77
    home = tempfile.mkdtemp(prefix="ntcp-soak-")
    env = dict(os.environ, HOME=home,
               ASAN_OPTIONS="detect_leaks=1:quarantine_size_mb=4:abort_on_error=0:exitcode=23",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    prefix, servers, failures = None, [], []

    def check(cond, what):
        print(("  ok: " if cond else "  FAILED: ") + what, flush=True)
        if not cond:
            failures.append(what)

    def ex(host, argv):
        return [args.lab, "exec", "--prefix", prefix, host, "--"] + argv

    try:
        up = [args.lab, "up", "--a", args.a, "--b", args.b, "--prefix", "sk"]
        if args.delay:
            up += ["--delay", str(args.delay)]
        prefix = subprocess.run(up, check=True, capture_output=True,
                                text=True).stdout.strip().splitlines()[-1]
        servers = labproc.start_servers(args.lab, prefix, args.stuntd, args.brokerd, env)
        n = args.count
        every = max(1, n // 10)
        common = ["--broker", BROKER, "--stun", STUN, "--timeout", "30000", "--repeat", str(n),
                  "--every", str(every)]
        print(f"== {n} connections in a row, {args.a} (a) -> {args.b} (b), {args.delay:g} ms",
              flush=True)
        outs = {h: open(os.path.join(home, h + ".out"), "w+") for h in ("a", "b")}
        errs = {h: open(os.path.join(home, h + ".err"), "w+") for h in ("a", "b")}
        pb = subprocess.Popen(ex("b", [args.many, "serve", "--id", "bob", "--key",
                                       os.path.join(home, "bob.key")] + common),
                              env=env, stdout=outs["b"], stderr=errs["b"], stdin=subprocess.DEVNULL)
        end = time.time() + 60
        while time.time() < end and "registered" not in open(outs["b"].name).read():
            time.sleep(0.05)  # polling the listener's first line with a deadline
        t0 = time.time()
        pa = subprocess.Popen(ex("a", [args.many, "connect", "--id", "alice", "--key",
                                       os.path.join(home, "alice.key"), "--bytes", "4096"] +
                                 common + ["bob"]),
                              env=env, stdout=outs["a"], stderr=errs["a"], stdin=subprocess.DEVNULL)
        limit = 60 + n * 3
        for p in (pa, pb):
            try:
                p.wait(max(5, limit - (time.time() - t0)))
            except subprocess.TimeoutExpired:
                labproc.stop(p)
        took = time.time() - t0
        print(f"    {n} connections in {took:.0f} s ({n / took:.1f} a second)")
        for host, p, role in (("a", pa, "connect"), ("b", pb, "serve")):
            lines = [json.loads(l) for l in open(outs[host].name) if l.startswith("{")]
            prog = [l for l in lines if "progress" in l]
            summ = [l for l in lines if "summary" in l]
            bad = [l for l in lines if "peer" in l]
            err = open(errs[host].name).read()
            leak = "LeakSanitizer" in err or "ERROR: AddressSanitizer" in err
            print(f"    {role}: " + ", ".join(f"{x['n']}: {x['fds']} fds {x['rss_kb']} kB"
                                              for x in prog))
            check(p.returncode == 0 and summ and summ[-1]["ok"] == n,
                  f"{role}: {n} of {n} connections verified and echoed (exit {p.returncode}, "
                  f"{summ[-1]['ok'] if summ else '?'} ok)")
            for b in bad[:3]:
                print(f"      {b.get('why')}: {b.get('info', {}).get('detail')}")
            check(not leak, f"{role}: no leak or memory error reported by ASan" +
                  ("" if not leak else ": " + err[err.find('ERROR'):][:400]))
            if len(prog) >= 2:
                mid = prog[(len(prog) - 1) // 2]
                check(prog[-1]["fds"] <= prog[0]["fds"],
                      f"{role}: descriptors do not grow ({prog[0]['fds']} after {prog[0]['n']}, "
                      f"{prog[-1]['fds']} after {prog[-1]['n']})")
                check(prog[-1]["rss_kb"] <= mid["rss_kb"] + RSS_SLACK_KB,
                      f"{role}: resident memory levels off ({mid['rss_kb']} kB after "
                      f"{mid['n']}, {prog[-1]['rss_kb']} kB after {prog[-1]['n']}; at most "
                      f"{RSS_SLACK_KB} kB more)")
            else:
                check(False, f"{role}: progress lines ({len(prog)})")
    finally:
        labproc.stop_all(servers)
        if prefix:
            subprocess.run([args.lab, "down", "--prefix", prefix], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    if failures:
        print(f"FAIL: {len(failures)} check(s) failed")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
