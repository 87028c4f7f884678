#!/usr/bin/python3
"""cli_lab.py: `ntcp listen` and `ntcp connect`, the user's face of
ntcp_listen/ntcp_accept/ntcp_connect, between real NATs in the lab, with
ntcp-stuntd and ntcp-brokerd on the lab's server host:

  - the README's demo: port-restricted (a) and symmetric-seq (b), 25 ms
    one-way, both NATs answering RST: a message each way, exit codes 0, the
    --json status line names the peer and the method, and a second
    connection to the same listener (--keep-open) also connects (behind the
    sequential NAT the ports moved: the newest port is sampled);
  - two peers behind one NAT (scenario same-nat): connected by same-lan;
  - refused by the listener's --allow: exit 4 at once; unknown peer: exit 3;
  - UDP (--udp) through the demo's NATs: 300 datagrams each way;
  - symmetric-random against symmetric-random: no method can work, so
    `ntcp connect` fails within its timeout with exit 2 and a reason.

Exits 77 (skipped) when not root."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", required=True)
    ap.add_argument("--ntcp", required=True)
    ap.add_argument("--stuntd", required=True)
    ap.add_argument("--brokerd", required=True)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIP: the lab needs root (network namespaces)")
        return 77
    t = Tester(args)
    try:
        t.demo_pair()
        t.same_nat()
        t.impossible()
    finally:
        t.cleanup()
    if t.failures:
        print(f"FAIL: {len(t.failures)} check(s) failed:")
        for f in t.failures:
            print("  -", f)
        return 1
    print(f"PASS: {t.checks} checks")
    return 0


class Tester:
    def __init__(self, args):
        self.a = args
        self.failures = []
        self.checks = 0
        self.prefix = None
        self.procs = []
        self.home = tempfile.mkdtemp(prefix="ntcp-cli-lab-")

    def check(self, cond, what):
        self.checks += 1
        if not cond:
            self.failures.append(what)
            print("  FAILED:", what)
        else:
            print("  ok:", what)

    # ---- the lab and its servers ----
    def up(self, *knobs):
        out = subprocess.run([self.a.lab, "up", *knobs, "--prefix", "lc"], check=True,
                             capture_output=True, text=True)
        self.prefix = out.stdout.strip().splitlines()[-1]
        self.bg("server", [self.a.stuntd, "--primary", "203.0.113.10:3478", "--alternate",
                           "203.0.113.11:3479", "--udp-rate", "0", "--cb-rate", "0",
                           "--log-level", "error"])
        self.bg("server", [self.a.brokerd, "--listen", "203.0.113.10:3490", "--udp",
                           "203.0.113.10:3490", "--quiet"])
        time.sleep(0.5)

    def down(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []
        if self.prefix:
            subprocess.run([self.a.lab, "down", "--prefix", self.prefix], capture_output=True)
            self.prefix = None

    def cleanup(self):
        self.down()
        shutil.rmtree(self.home, ignore_errors=True)

    def cmd(self, host, argv):
        return [self.a.lab, "exec", "--prefix", self.prefix, host, "--", *argv]

    def env(self):
        return dict(os.environ, HOME=self.home, XDG_CONFIG_HOME=os.path.join(self.home, "cfg"))

    def bg(self, host, argv, **kw):
        p = subprocess.Popen(self.cmd(host, argv), env=self.env(), **kw)
        self.procs.append(p)
        return p

    def peer(self, verb, host, name, *extra):
        return [self.a.ntcp, verb, "--id", name, "--stun", "server", "--broker", "server:3490",
                *extra]

    def listen(self, host, name, *extra, stdin_text=""):
        """Starts `ntcp listen`; returns the process and its stderr file once registered."""
        err = tempfile.NamedTemporaryFile("w+", dir=self.home, delete=False)
        out = tempfile.NamedTemporaryFile("w+", dir=self.home, delete=False)
        p = self.bg(host, self.peer("listen", host, name, *extra), stdin=subprocess.PIPE,
                    stdout=out, stderr=err, text=True)
        # Its standard input ends after the text: the connection ends when
        # both directions have (as with nc).
        if stdin_text:
            p.stdin.write(stdin_text)
        p.stdin.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            if "listening as" in open(err.name).read() or p.poll() is not None:
                break
            time.sleep(0.1)
        return p, out.name, err.name

    def connect(self, host, name, target, text, *extra, timeout=60):
        t0 = time.time()
        r = subprocess.run(self.cmd(host, self.peer("connect", host, name, "--json", *extra) +
                                    [target]),
                           input=text, capture_output=True, text=True, env=self.env(),
                           timeout=timeout)
        status = None
        for line in r.stderr.splitlines():
            if line.startswith("{"):
                try:
                    status = json.loads(line)
                except ValueError:
                    pass
        return r, status, time.time() - t0

    # ---- the cases ----
    def demo_pair(self):
        print("== port-restricted (a) <-> symmetric-seq (b), syn rst, 25 ms")
        self.up("--a", "port-restricted", "--b", "symmetric-seq", "--delta", "2", "--syn", "rst",
                "--delay", "25")
        lp, lout, lerr = self.listen("b", "bob", "--keep-open", "--allow", "alice",
                                     stdin_text="hello alice\n")
        r, st, _ = self.connect("a", "alice", "bob", "hello bob\n")
        self.check(r.returncode == 0, f"ntcp connect exits 0 (got {r.returncode}: {r.stderr[-300:]})")
        self.check(r.stdout == "hello alice\n", f"alice received bob's line (got {r.stdout!r})")
        self.check(st is not None and st.get("ok") is True and st.get("peer") == "bob"
                   and st.get("role") == "initiator" and st.get("method") in
                   ("predict", "p2pnat", "stunt2"),
                   f"--json: ok, peer bob, a traversal method (got {st})")
        self.check(st is not None and 0 <= st["connected_ms"] <= st["verified_ms"],
                   "--json: connected_ms <= verified_ms")
        time.sleep(0.5)
        self.check("hello bob\n" in open(lout).read(), "bob received alice's line")
        self.check("connected from alice" in open(lerr).read(), "bob's log names alice")
        # A second connection to the same listener: bob's NAT has moved on.
        r2, st2, _ = self.connect("a", "alice", "bob", "again\n")
        self.check(r2.returncode == 0 and st2 and st2.get("ok"),
                   f"a second connection connects too (got {r2.returncode}, {st2})")
        # Refused by --allow, and an unknown name.
        r3, st3, el = self.connect("a", "mallory", "bob", "x\n")
        self.check(r3.returncode == 4, f"a peer bob does not --allow: exit 4 (got {r3.returncode})")
        self.check(el < 20, f"... at once ({el:.1f} s)")
        r4, _, _ = self.connect("a", "alice", "nobody", "x\n")
        self.check(r4.returncode == 3, f"an unknown peer: exit 3 (got {r4.returncode})")
        self.check(lp.poll() is None, "the --keep-open listener is still there")
        # UDP through the same NATs: 300 datagrams each way, one per line,
        # one every 2 ms (--interval) as a real sender would pace them: a
        # burst overflows the receiver's socket buffer, as on a real link.
        blines = "".join(f"from-bob-{k}\n" for k in range(300))
        alines = "".join(f"from-alice-{k}\n" for k in range(300))
        up, uout, uerr = self.listen("b", "bobu", "--udp", "--interval", "2", stdin_text=blines)
        r5, st5, _ = self.connect("a", "aliceu", "bobu", alines, "--udp", "--interval", "2")
        self.check(r5.returncode == 0 and st5 and st5.get("transport") == "udp"
                   and st5.get("ok"), f"ntcp connect --udp: connected (got {r5.returncode}, {st5})")
        got_a = r5.stdout.splitlines()
        missing = [l for l in blines.splitlines() if l not in set(got_a)]
        self.check(r5.stdout == blines, f"alice got bob's 300 datagrams in order "
                   f"({len(got_a)} lines; missing {missing[:3]}...)")
        try:
            up.wait(20)
        except subprocess.TimeoutExpired:
            pass
        got = open(uout).read()
        self.check(got == alines, f"bob got alice's 300 datagrams ({len(got.splitlines())} lines)")
        self.down()

    def same_nat(self):
        print("== two peers behind one port-restricted NAT (no hairpin)")
        self.up("--a", "port-restricted", "--b", "fw", "--syn", "drop", "--hairpin", "off",
                "--scenario", "same-nat")
        self.listen("a2", "carol", stdin_text="hi dave\n")
        r, st, _ = self.connect("a", "dave", "carol", "hi carol\n")
        self.check(r.returncode == 0 and r.stdout == "hi dave\n",
                   f"behind one NAT: connected, line received (got {r.returncode} {r.stdout!r})")
        self.check(st is not None and st.get("method") == "same-lan",
                   f"... by same-lan (got {st and st.get('method')})")
        self.check(st is not None and st.get("remote", "").startswith("10.0.1."),
                   f"... to the private address (got {st and st.get('remote')})")
        self.down()

    def impossible(self):
        print("== symmetric-random <-> symmetric-random: no method can work")
        self.up("--a", "symmetric-random", "--b", "symmetric-random", "--syn", "drop")
        self.listen("b", "erin")
        r, st, el = self.connect("a", "frank", "erin", "x\n", "--timeout", "15000")
        self.check(r.returncode == 2, f"exit 2, no connection (got {r.returncode})")
        self.check(el < 25, f"within the timeout ({el:.1f} s)")
        self.check(st is not None and st.get("ok") is False and len(st.get("detail", "")) > 10,
                   f"--json says why (got {st})")
        self.down()


if __name__ == "__main__":
    sys.exit(main())
