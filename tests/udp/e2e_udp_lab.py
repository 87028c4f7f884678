#!/usr/bin/python3
"""e2e_udp_lab.py: the end-to-end UDP hole-punching test (issue 7). For every
pair of NAT personalities it brings a lab up (in parallel, each with its own
prefix), starts ntcp-stuntd and ntcp-brokerd --udp on `server`, runs
`ntcp listen --udp --json` in host b and `ntcp connect --udp --json` in host a
(ntcp_listen, ntcp_accept, ntcp_udp_punch: the path applications use), and
checks the result: a verified, connected UDP path that carried 1,000
datagrams each way, every one checked; or, for the pairs no method can
traverse, an honest failure naming the relay, within the timeout. Prints one
line per pair and the table of docs/udp.md. Exits 77 (skipped) when not root."""

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time

PERS = ["none", "fw", "full-cone", "restricted-cone", "port-restricted", "symmetric-seq",
        "symmetric-random"]

BROKER = "203.0.113.10:3480"
STUN = "203.0.113.10:3478"
TURN = "203.0.113.20:3478"  # coturn on the lab's relay host (ntcp-lab up --turn)

# The method each pair must use (docs/udp.md), None = physically impossible:
# a random mapping can be met only by an end whose own mapping is known.
OPEN = {"none", "full-cone"}


def expected(a, b):
    if "symmetric-random" in (a, b):
        other = b if a == "symmetric-random" else a
        if other in ("symmetric-random", "symmetric-seq"):
            return None
        if other in OPEN:
            return "direct"
        return "punch" if other == "restricted-cone" else "birthday"
    if a in OPEN or b in OPEN:
        return "direct"
    if "symmetric-seq" in (a, b):
        other = b if a == "symmetric-seq" else a
        return "punch" if other == "restricted-cone" else "predict"
    return "punch"


class Lab:
    def __init__(self, tool, prefix):
        self.tool, self.prefix = tool, prefix
        self.env = dict(os.environ, NTCP_LAB_PREFIX=prefix)

    def cmd(self, *args, timeout=120):
        r = subprocess.run([self.tool] + list(args), env=self.env, text=True, capture_output=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("ntcp-lab %s: exit %d: %s" % (" ".join(args), r.returncode,
                                                              (r.stderr or r.stdout).strip()))
        return r

    def run(self, host, argv, timeout):
        return subprocess.run([self.tool, "exec", host, "--"] + argv, env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def spawn(self, host, argv, out, err):
        return subprocess.Popen([self.tool, "exec", host, "--"] + argv, env=self.env,
                                stdout=out, stderr=err, text=True)


def stop(p):
    """Ends a process this script started, by its own PID."""
    if p and p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_stun(lab, ntcp, deadline_s=30):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if lab.run("relay", [ntcp, "stun", "--timeout", "500", STUN], timeout=10).returncode == 0:
            return True
    return False


def last_json(path):
    """The last status line a CLI wrote on its standard error, or None."""
    try:
        lines = [l for l in open(path, errors="replace") if l.startswith("{")]
    except OSError:
        return None
    for l in reversed(lines):
        try:
            j = json.loads(l)
        except ValueError:
            continue
        if "listening" not in j:
            return j
    return None


def one(i, a, b, args):
    """One pair through the path applications use: `ntcp listen --udp
    --json` (b, or a2) and `ntcp connect --udp --json` (a), i.e.
    ntcp_listen, ntcp_accept, ntcp_udp_punch; each sends --count numbered
    datagrams (one line each, paced by --interval as a real sender would)
    and must receive every one of the other's."""
    prefix = "%s%d" % (args.prefix, i)
    lab = Lab(args.lab, prefix)
    logs = "/tmp/%s" % prefix
    procs = []
    want = expected(a, b)
    if not want and args.relay:
        want = "relay"  # coturn on the lab's relay host, offered by the broker (docs/relay.md)
    row = dict(a=a, b=b, expect=want or "fail")
    try:
        up = ["up", "--prefix", prefix, "--quiet", "--a", a, "--b", b, "--seed", str(7 + i)]
        if args.same_nat:
            up += ["--scenario", "same-nat"]
        if args.loss:
            up += ["--loss", str(args.loss)]
        if args.delay:
            up += ["--delay", str(args.delay)]
        if args.relay:
            up += ["--turn"]
        lab.cmd(*up)
        slog = open(logs + "-servers.log", "w")
        procs.append(lab.spawn("server", [args.stuntd, "--primary", STUN,
                                          "--alternate", "203.0.113.11:3479",
                                          "--udp-rate", "0", "--cb-rate", "0"], slog, slog))
        relay = []
        if args.relay:
            with open("/run/ntcp-lab/%s.json" % prefix) as sf:
                relay = ["--turn-server", TURN, "--turn-secret-file", json.load(sf)["turn"]["secret_file"]]
        procs.append(lab.spawn("server", [args.brokerd, "--listen", BROKER, "--udp", BROKER] + relay,
                               slog, slog))
        if not wait_stun(lab, args.ntcp):
            raise RuntimeError("ntcp-stuntd did not answer in the lab")
        lines = {}
        for side in ("a", "b"):
            lines[side] = ["%s-%d-%s" % (side, k, os.urandom(6).hex()) for k in range(args.count)]
            with open("%s-%s.in" % (logs, side), "w") as f:
                f.write("".join(l + "\n" for l in lines[side]))
        limit_ms = args.timeout_ms + 15000  # discovery and registration come first
        common = ["--stun", STUN, "--broker", BROKER, "--timeout", str(limit_ms), "--json", "--udp",
                  "--interval", "2"]
        f = {side + k: "%s-%s.%s" % (logs, side, k) for side in ("a", "b") for k in ("in", "out", "err")}
        pb = spawn_io(lab, "a2" if args.same_nat else "b",
                      [args.ntcp, "listen", "--id", "bob", "--key", logs + "-bob.key"] + common,
                      f["bin"], f["bout"], f["berr"])
        procs.append(pb)
        end = time.monotonic() + 40
        while time.monotonic() < end and pb.poll() is None and \
                '"listening"' not in open(f["berr"], errors="replace").read():
            time.sleep(0.05)  # polling the listener's status line with a deadline
        t0 = time.monotonic()
        pa = spawn_io(lab, "a", [args.ntcp, "connect", "--id", "alice", "--key", logs + "-alice.key"] +
                      common + ["bob"], f["ain"], f["aout"], f["aerr"])
        procs.append(pa)
        try:
            pa.wait(limit_ms / 1000 + 40)
        except subprocess.TimeoutExpired:
            stop(pa)
        if want:
            try:
                pb.wait(20)
            except subprocess.TimeoutExpired:
                stop(pb)
        row["wall_s"] = round(time.monotonic() - t0, 1)
        ra, rb = last_json(f["aerr"]), last_json(f["berr"])
        row["res_a"], row["res_b"] = ra, rb
        if want and (ra is None or rb is None):
            row["result"] = "FAIL (no JSON from %s)" % ("a" if ra is None else "b")
        elif want:
            got_a = set(open(f["aout"], errors="replace").read().split())
            got_b = set(open(f["bout"], errors="replace").read().split())
            ra["received"] = len(got_a & set(lines["b"]))
            rb["received"] = len(got_b & set(lines["a"]))
            bad = len(got_a - set(lines["b"])) + len(got_b - set(lines["a"]))
            # Without loss every datagram must arrive; with --loss the punch
            # must still succeed and most of them arrive (none corrupted).
            need = args.count if not args.loss else int(args.count * (1 - args.loss / 100) * 0.8)
            good = ra["ok"] and rb["ok"] and ra.get("method") == rb.get("method") == want and \
                ra["transport"] == rb["transport"] == "udp" and \
                ra["received"] >= need and rb["received"] >= need and bad == 0
            if want == "relay":
                good = good and ra.get("relay") == rb.get("relay") == TURN
            ra["ms"], rb["ms"] = ra["verified_ms"], rb["verified_ms"]
            row["result"] = ("PASS %s %d/%d ms, %d+%d datagrams" % (
                ra["method"], ra["ms"], rb["ms"], ra["received"], rb["received"])) if good else \
                "FAIL a=%s/%s recv %s b=%s/%s recv %s, %d unknown" % (
                    ra.get("method"), ra.get("detail"), ra["received"], rb.get("method"),
                    rb.get("detail"), rb["received"], bad)
        else:
            reason = (ra or {}).get("detail", "")
            served = rb is not None and rb.get("ok")
            good = ra is not None and not ra["ok"] and not served and "relay" in reason and \
                row["wall_s"] * 1000 < limit_ms
            if ra is not None:
                ra["ms"] = int(row["wall_s"] * 1000)
            row["result"] = ("PASS failed as planned in %.1f s: %s" % (row["wall_s"], reason)) if good \
                else "FAIL expected an honest failure, got a=%s b=%s (%s)" % (
                    (ra or {}).get("method"), (rb or {}).get("method"), reason)
    except Exception as e:  # noqa: BLE001 - a lab error is one row's failure
        row["result"] = "ERROR %s" % e
    finally:
        for p in procs:
            stop(p)
        subprocess.run([args.lab, "down", "--prefix", prefix], capture_output=True)
    return row


def spawn_io(lab, host, argv, stdin_path, stdout_path, stderr_path):
    """A process in host with its standard input from a file and its output
    to files."""
    with open(stdin_path, "rb") as i, open(stdout_path, "wb") as o, open(stderr_path, "wb") as e:
        return subprocess.Popen([lab.tool, "exec", host, "--"] + argv, env=lab.env, stdin=i,
                                stdout=o, stderr=e)


def table(rows):
    """The docs/udp.md table: method (and punch ms) per pair."""
    cell = {}
    for r in rows:
        if r["result"].startswith("PASS"):
            if r["expect"] == "fail":
                v = "impossible (fails in %d ms)" % r["res_a"]["ms"]
            else:
                v = "%s (%d ms)" % (r["res_a"]["method"], r["res_a"]["ms"])
        else:
            v = "**%s**" % r["result"][:40]
        cell[(r["a"], r["b"])] = v
        cell.setdefault((r["b"], r["a"]), v)
    out = ["| A (requester) \\ B | " + " | ".join(PERS) + " |", "|---" * (len(PERS) + 1) + "|"]
    for a in PERS:
        out.append("| %s | " % a + " | ".join(cell.get((a, b), "") for b in PERS) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lab", required=True)
    ap.add_argument("--e2e", help="unused: kept for old command lines (the peers are `ntcp` now)")
    ap.add_argument("--stuntd", required=True)
    ap.add_argument("--brokerd", required=True)
    ap.add_argument("--ntcp", required=True)
    ap.add_argument("--timeout-ms", type=int, default=20000)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=7, help="labs up at once")
    ap.add_argument("--loss", type=int, default=0,
                    help="lab link loss percent (then most datagrams must arrive, not all)")
    ap.add_argument("--delay", type=int, default=0, help="lab one-way delay in ms")
    ap.add_argument("--same-nat", action="store_true",
                    help="both peers behind A's NAT (hosts a and a2; B's personality unused)")
    ap.add_argument("--prefix", default="nu%d" % (os.getpid() % 1000),
                    help="lab prefix base (each pair appends its number)")
    ap.add_argument("--pair", action="append", default=[],
                    help="A:B (repeatable); default every ordered pair of personalities (49)")
    ap.add_argument("--no-relay", dest="relay", action="store_false",
                    help="no coturn: the pairs no direct method can join must fail honestly "
                    "(default: they must connect through the lab's coturn)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("skipped: the lab needs root (network namespaces)")
        return 77
    if args.relay and not shutil.which("turnserver"):
        print("skipped: coturn's turnserver is not installed (scripts/install-deps.sh installs it; "
              "--no-relay runs without)")
        return 77
    if args.pair:
        pairs = [tuple(p.split(":")) for p in args.pair]
    else:
        # Every ordered pair (49): the requester's and the target's roles
        # differ (who probes first, who sprays in a birthday search).
        pairs = [(x, y) for x in PERS for y in PERS]
    t0 = time.monotonic()
    rows = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as ex:
        futs = {ex.submit(one, i, a, b, args): (a, b) for i, (a, b) in enumerate(pairs)}
        for f in concurrent.futures.as_completed(futs):
            row = f.result()
            rows.append(row)
            print("%-17s %-17s expect %-8s %s" % (row["a"], row["b"], row["expect"], row["result"]),
                  flush=True)
    rows.sort(key=lambda r: (PERS.index(r["a"]), PERS.index(r["b"])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(table(rows))
    bad = [r for r in rows if not r["result"].startswith("PASS")]
    print("%d/%d pairs as expected in %.0f s" % (len(rows) - len(bad), len(rows),
                                                 time.monotonic() - t0))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
