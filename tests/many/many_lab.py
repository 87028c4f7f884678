#!/usr/bin/python3
"""many_lab.py: many connections at once on one context, through the public
API (ntcp_many: ntcp_listen, ntcp_accept, ntcp_connect_async), between real
NATs in the lab, 20 ms one-way between sites:

  - one listening context (site a, port-restricted) and PEERS peers (50 by
    default), each its own process with its own name, spread over five other
    sites with mixed personalities (fw, full-cone, none, symmetric-seq,
    restricted-cone); all register first, then all connect at the same
    moment, UDP_PEERS of them (10, two per site) by a UDP punch
    (ntcp_udp_punch_async), the rest over TCP: every one must be verified
    and carry 64 KiB each way, checked by SHA-256 over TCP and datagram by
    datagram over UDP (the listener echoes both). Ten processes behind one sequential NAT
    predicting their next ports at the same moment take each other's
    ports: the hub's predicted SYNs reach the wrong process, whose key
    proof refuses them ("not our session"). Those connections go through
    the TURN relay (coturn on the lab's relay host, as docs/relay.md), the
    rest directly; the methods are printed;
  - one context (site a) connecting to five listeners, one per site, at
    once over TCP, and another context (site a too) punching UDP to the same
    five at the same moment: all ten verified and echoed.

Prints per-site results, the methods used and the listener's descriptors
and memory. Exits 77 (skipped) when not root."""

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
import labproc  # noqa: E402

SITES = [("b", "fw"), ("c", "full-cone"), ("d", "none"), ("e", "symmetric-seq"),
         ("f", "restricted-cone")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", required=True)
    ap.add_argument("--many", required=True, help="the ntcp_many program")
    ap.add_argument("--stuntd", required=True)
    ap.add_argument("--brokerd", required=True)
    ap.add_argument("--peers", type=int, default=50)
    ap.add_argument("--udp-peers", type=int, default=10,
                    help="how many of the peers punch UDP (the last ones: two per site)")
    ap.add_argument("--delay", type=float, default=20)
    ap.add_argument("--syn", default="drop")
    ap.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIP: the lab needs root (network namespaces)")
        return 77
    if not shutil.which("turnserver"):
        print("SKIP: coturn's turnserver is not installed (scripts/install-deps.sh installs it)")
        return 77
    t = Tester(args)
    try:
        t.up()
        t.many_to_one()
        t.one_to_many()
    finally:
        if not args.keep:
            t.cleanup()
    if t.failures:
        print(f"FAIL: {len(t.failures)} check(s) failed:")
        for f in t.failures:
            print("  -", f)
        return 1
    print(f"PASS: {t.checks} checks")
    return 0


class Proc:
    """A process in a lab host whose stdout lines are collected as they come."""

    def __init__(self, argv, env):
        self.p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True)
        self.lines, self.err = [], []
        self.cv = threading.Condition()
        self.t = [threading.Thread(target=self._read, args=(self.p.stdout, self.lines), daemon=True),
                  threading.Thread(target=self._read, args=(self.p.stderr, self.err), daemon=True)]
        for th in self.t:
            th.start()

    def _read(self, f, into):
        for line in f:
            with self.cv:
                into.append(line.rstrip("\n"))
                self.cv.notify_all()

    def wait_line(self, text, timeout):
        end = time.time() + timeout
        with self.cv:
            while text not in self.lines and self.p.poll() is None:
                left = end - time.time()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.2))
            return text in self.lines

    def finish(self, timeout):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        for th in self.t:
            th.join(2)
        return self.p.returncode

    def results(self):
        out = []
        for line in self.lines:
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out


class Tester:
    def __init__(self, args):
        self.a = args
        self.failures = []
        self.checks = 0
        self.prefix = None
        self.servers = []
        self.home = tempfile.mkdtemp(prefix="ntcp-many-lab-")

    def check(self, cond, what):
        self.checks += 1
        print(("  ok: " if cond else "  FAILED: ") + what, flush=True)
        if not cond:
            self.failures.append(what)

    def cmd(self, host, argv):
        return [self.a.lab, "exec", "--prefix", self.prefix, host, "--", *argv]

    def env(self):
        return dict(os.environ, HOME=self.home)

    def up(self):
        knobs = ["--a", "port-restricted", "--b", SITES[0][1], "--syn", self.a.syn,
                 "--delay", str(self.a.delay), "--prefix", "mny"]
        for site, pers in SITES[1:]:
            knobs += ["--site", f"{site}={pers}"]
        out = subprocess.run([self.a.lab, "up", "--turn", *knobs], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError("ntcp-lab up: %s" % out.stderr.strip())
        self.prefix = out.stdout.strip().splitlines()[-1]
        st = json.loads(subprocess.run([self.a.lab, "status", "--prefix", self.prefix, "--json"],
                                       capture_output=True, text=True, check=True).stdout)
        print(f"== lab {self.prefix}: a=port-restricted, " +
              ", ".join(f"{s}={p}" for s, p in SITES) + f", {self.a.delay:g} ms, syn {self.a.syn}")
        self.servers = labproc.start_servers(self.a.lab, self.prefix, self.a.stuntd, self.a.brokerd,
                                             self.env(), turn_secret=st["turn"]["secret_file"])

    def cleanup(self):
        labproc.stop_all(self.servers)
        if self.prefix:
            subprocess.run([self.a.lab, "down", "--prefix", self.prefix], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)

    def many(self, host, verb, name, *extra, timeout=60):
        argv = [self.a.many, verb, "--id", name, "--broker", labproc.BROKER, "--stun", labproc.STUN, "--key", os.path.join(self.home, name + ".key"),
                "--timeout", str(timeout * 1000), *extra]
        return Proc(self.cmd(host, argv), self.env())

    def report(self, rows):
        by = collections.Counter((r.get("site"), r.get("method") or "-", r.get("ok")) for r in rows)
        for (site, method, ok), n in sorted(by.items(), key=str):
            print(f"    {site}: {n} x {method} {'ok' if ok else 'FAILED'}")
        for r in rows:
            if not r.get("ok"):
                print(f"    {r.get('peer')} ({r.get('site')}): status {r.get('status')}, "
                      f"{r.get('why')}: {r.get('info', {}).get('detail', '')}")

    def many_to_one(self):
        n = self.a.peers
        print(f"== {n} peers connect to one listener at once "
              f"({min(self.a.udp_peers, n)} of them by UDP)")
        hub = self.many("a", "serve", "hub", "--expect", str(n), timeout=90)
        self.check(hub.wait_line("registered", 30), "the listener registered")
        go = os.path.join(self.home, "go")
        clients = []
        nu = min(self.a.udp_peers, n)
        for i in range(n):
            site = SITES[i % len(SITES)][0]
            udp = ["--udp"] if i >= n - nu else []
            clients.append((site, self.many(site, "connect", f"p{i}", "--go", go, *udp, "hub",
                                            timeout=60)))
        registered = [c.wait_line("registered", 60) for _, c in clients]
        self.check(all(registered), f"all {n} peers registered first "
                   f"({sum(registered)} of {n})")
        t0 = time.time()
        open(go, "w").close()
        rows = []
        for site, c in clients:
            rc = c.finish(120)
            res = [r for r in c.results() if "peer" in r]
            for r in res:
                r["site"] = site
            if not res:
                res = [{"peer": "?", "site": site, "ok": False, "why": f"exit {rc}: " +
                        " | ".join(c.err[-3:])}]
            rows += res
        elapsed = time.time() - t0
        good = [r for r in rows if r.get("ok")]
        self.report(rows)
        ms = sorted(r["ms"] for r in good)
        if ms:
            print(f"    time to an echoed connection: median {ms[len(ms) // 2]} ms, "
                  f"max {ms[-1]} ms; all done in {elapsed:.1f} s")
        self.check(len(good) == n, f"all {n} peers verified and echoed 64 KiB "
                   f"({len(good)} of {n})")
        udp_ok = [r for r in good if r.get("info", {}).get("transport") == "udp"]
        self.check(len(udp_ok) == min(self.a.udp_peers, n),
                   f"{min(self.a.udp_peers, n)} of them over UDP ({len(udp_ok)})")
        hrc = hub.finish(60)
        served = [r for r in hub.results() if "peer" in r]
        summ = [r for r in hub.results() if "summary" in r]
        self.check(hrc == 0 and len(served) == n and all(r["ok"] for r in served),
                   f"the listener accepted and echoed {n} (exit {hrc}, {len(served)} lines)")
        names = {r["peer"] for r in served}
        self.check(names == {f"p{i}" for i in range(n)},
                   "each peer came once, under its own name")
        if summ:
            sm = summ[-1]
            print(f"    listener at the end: {sm['fds']} descriptors, {sm['rss_kb']} kB resident; "
                  f"peak {sm['peak_rss_kb']} kB, {sm['registered_rss_kb']} kB once registered")
            if good and ms:
                # bench/many: the figures of issue 12's speed section.
                per = (sm["peak_rss_kb"] - sm["registered_rss_kb"]) / n
                print(f"    BENCH connections/s (listener, {n} at once, {self.a.delay:g} ms): "
                      f"{n / (ms[-1] / 1000):.1f}  (all {n} echoed {ms[-1]} ms after the start)")
                print(f"    BENCH memory per connection in progress (listener): {per:.0f} kB "
                      f"(peak minus registered, over {n}; echo threads' stacks included)")

    def one_to_many(self):
        print(f"== one context connects to {len(SITES)} listeners at once")
        ls = []
        for site, _ in SITES:
            p = self.many(site, "serve", f"l-{site}", "--expect", "2", timeout=60)
            ls.append(p)
        self.check(all(p.wait_line("registered", 30) for p in ls), "the listeners registered")
        go = os.path.join(self.home, "go-multi")
        names = [f"l-{s}" for s, _ in SITES]
        cs = [(kind, self.many("a", "connect", name, "--go", go, *extra, *names, timeout=60))
              for kind, name, extra in (("tcp", "multi", []), ("udp", "multi-u", ["--udp"]))]
        self.check(all(c.wait_line("registered", 30) for _, c in cs), "both contexts registered")
        open(go, "w").close()
        for kind, c in cs:
            rc = c.finish(90)
            rows = [r for r in c.results() if "peer" in r]
            for r in rows:
                r["site"] = r["peer"][2:]
            print(f"  {kind}:")
            self.report(rows)
            self.check(rc == 0 and len(rows) == len(SITES) and all(r["ok"] for r in rows) and
                       all(r.get("info", {}).get("transport") == kind for r in rows),
                       f"{kind}: all {len(SITES)} connected and echoed (exit {rc}, "
                       f"{sum(1 for r in rows if r['ok'])} ok)")
            ms = sorted(r["ms"] for r in rows if r.get("ok"))
            if ms:
                print(f"    slowest of the {len(SITES)}: {ms[-1]} ms "
                      "(one at a time would add them up)")
        lrc = [p.finish(30) for p in ls]
        self.check(all(rc == 0 for rc in lrc), f"each listener echoed both (exits {lrc})")


if __name__ == "__main__":
    sys.exit(main())
