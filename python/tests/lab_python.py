#!/usr/bin/python3
"""lab_python.py: the Python binding between real NATs in the lab (root).
Site a behind a port-restricted cone NAT, site b behind a symmetric NAT
with sequential ports, both answering unsolicited SYNs with RST, 10 ms
one-way; ntcp-stuntd and ntcp-brokerd on the lab's server host. For each of
the binding's three styles (sync, asyncio, Twisted) a listener in b and a
connector in a (tests/peer.py) exchange 1 MiB each way, compared by SHA-256;
then one pair of mixed styles. Exits 77 (skipped) when not root.

usage: lab_python.py --lab NTCP-LAB --stuntd PATH --brokerd PATH --library LIBNTCP.SO"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from helpers import wait_text  # noqa: E402
PEER = os.path.join(HERE, "peer.py")
PY = "/usr/bin/python3"


class Lab:
    def __init__(self, a):
        self.a = a
        self.procs = []
        self.prefix = None
        self.dir = tempfile.mkdtemp(prefix="ntcp-py-lab-")
        self.env = dict(os.environ, NTCP_LIBRARY=a.library, PYTHONDONTWRITEBYTECODE="1",
                        HOME=self.dir, XDG_CONFIG_HOME=os.path.join(self.dir, "cfg"))

    def cmd(self, host, argv):
        return [self.a.lab, "exec", "--prefix", self.prefix, host, "--", *argv]

    def bg(self, host, argv, name):
        out = os.path.join(self.dir, name + ".out")
        with open(out, "w") as f:
            p = subprocess.Popen(self.cmd(host, argv), stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=self.dir, env=self.env)
        self.procs.append(p)
        return p, out

    def up(self):
        r = subprocess.run([self.a.lab, "up", "--a", "port-restricted", "--b", "symmetric-seq",
                            "--delta", "2", "--syn", "rst", "--delay", "10", "--prefix", "lpy"],
                           capture_output=True, text=True, check=True)
        self.prefix = r.stdout.strip().splitlines()[-1]
        st, st_out = self.bg("server", [self.a.stuntd, "--primary", "203.0.113.10:3478",
                                        "--alternate", "203.0.113.11:3479", "--udp-rate", "0",
                                        "--cb-rate", "0"], "stuntd")
        br, br_out = self.bg("server", [self.a.brokerd, "--listen", "203.0.113.10:3490",
                                        "--udp", "203.0.113.10:3490", "--stats", "0"], "brokerd")
        if not (wait_text(st_out, "listening on", st, 20)
                and wait_text(br_out, "listening on 203.0.113.10:3490", br, 20)):
            raise RuntimeError("servers did not start: %s %s" % (open(st_out).read(),
                                                                 open(br_out).read()))

    def down(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []
        if self.prefix:
            subprocess.run([self.a.lab, "down", "--prefix", self.prefix], capture_output=True)
            self.prefix = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def pair(self, listen_style, connect_style, bob, alice):
        common = ["--broker", "server:3490", "--stun", "server:3478", "--timeout", "60"]
        lp, lout = self.bg("b", [PY, PEER, "--style", listen_style, "--listen", bob, *common],
                           bob)
        if not wait_text(lout, "registered", lp, 60):
            return None, None, "listener did not register: " + open(lout).read()[-800:]
        r = subprocess.run(self.cmd("a", [PY, PEER, "--style", connect_style, "--connect", bob,
                                          "--name", alice, *common]),
                           capture_output=True, text=True, env=self.env, cwd=self.dir,
                           timeout=120)
        try:
            lp.wait(60)
        except subprocess.TimeoutExpired:
            pass

        def last_json(text):
            lines = [l for l in text.splitlines() if l.startswith("{")]
            return json.loads(lines[-1]) if lines else None
        ra, rb = last_json(r.stdout), last_json(open(lout).read())
        why = "" if ra and rb else ("connector: %s %s | listener: %s" % (
            r.stdout[-600:], r.stderr[-600:], open(lout).read()[-600:]))
        return ra, rb, why


def main():
    ap = argparse.ArgumentParser()
    for opt in ("--lab", "--stuntd", "--brokerd", "--library"):
        ap.add_argument(opt, required=True)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIP: the lab needs root (network namespaces)")
        return 77
    if not os.path.exists(a.library):
        print("SKIP: libntcp.so was not built (%s)" % a.library)
        return 77
    failures, checks = [], 0
    lab = Lab(a)
    try:
        lab.up()
        cases = [("sync", "sync"), ("asyncio", "asyncio"), ("twisted", "twisted"),
                 ("twisted", "sync")]
        for i, (ls, cs) in enumerate(cases):
            print("== %s listener (b, symmetric-seq) <- %s connector (a, port-restricted)"
                  % (ls, cs), flush=True)
            ra, rb, why = lab.pair(ls, cs, "bob%d" % i, "alice%d" % i)
            for cond, what in (
                    (ra is not None and rb is not None, "both ends report (%s)" % why),
                    (ra and rb and ra["received"] == rb["sent"], "alice got bob's 1 MiB (SHA-256)"),
                    (ra and rb and rb["received"] == ra["sent"], "bob got alice's 1 MiB (SHA-256)"),
                    (ra and ra["received_bytes"] == 1 << 20, "alice got 1 MiB"),
                    (ra and ra["method"] in ("predict", "p2pnat", "stunt2", "reversal"),
                     "a traversal method won (%s)" % (ra and ra["method"]))):
                checks += 1
                print("  %s %s" % ("ok:" if cond else "FAILED:", what), flush=True)
                if not cond:
                    failures.append("%s/%s: %s" % (ls, cs, what))
    finally:
        lab.down()
    if failures:
        print("FAIL: %d of %d checks failed" % (len(failures), checks))
        return 1
    print("PASS: %d checks" % checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
