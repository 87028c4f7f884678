#!/usr/bin/python3
"""discover_lab.py: runs `ntcp discover --json` in the lab's client hosts,
behind each NAT personality, and checks that the report names exactly the
behaviour the personality promises (docs/lab.md), for UDP and TCP, IPv4 and
IPv6, each SYN answer, hairpinning on and off, with 1% loss and 25 ms delay,
and the UDP mapping lifetime. Exits 77 (skipped) when not root."""

import argparse
import json
import os
import subprocess
import sys
import time

# Each lab runs two personalities (sites a and b) with the same knobs.
# Together they cover every filtering personality with every SYN answer.
LABS = [
    dict(a="none", b="fw", syn="drop"),
    dict(a="full-cone", b="restricted-cone", syn="rst", hairpin="off"),
    dict(a="port-restricted", b="symmetric-seq", syn="icmp", delta=2, lifetime="a"),
    dict(a="symmetric-random", b="fw", syn="rst"),
    dict(a="restricted-cone", b="port-restricted", syn="drop"),
    dict(a="symmetric-seq", b="symmetric-random", syn="drop"),
    dict(a="fw", b="restricted-cone", syn="icmp"),
    dict(a="port-restricted", b="symmetric-seq", syn="rst"),
    dict(a="symmetric-random", b="full-cone", syn="icmp"),
    # A slow, lossy internet: the answer must still be exact.
    dict(a="port-restricted", b="symmetric-seq", syn="rst", delay=25, loss=1),
]

FILTERED = {"fw", "restricted-cone", "port-restricted", "symmetric-seq", "symmetric-random"}


def expected_v4(pers, knobs):
    """What `ntcp discover` must say behind personality pers (IPv4)."""
    syn = knobs["syn"]
    hair = "no" if knobs.get("hairpin") == "off" else "yes"
    if pers == "none":
        e = dict(reach="open", mapping="endpoint-independent", filtering="none", ports="preserved",
                 hairpin="yes", classic="open", ntcp02="None")
        return e, dict(e, syn="accepted")
    if pers == "fw":
        e = dict(reach="firewall", mapping="endpoint-independent",
                 filtering="address-and-port-dependent", ports="preserved", hairpin="yes",
                 classic="firewall", ntcp02="None")
        return e, dict(e, syn=syn)
    e = dict(reach="nat", hairpin=hair)
    if pers == "full-cone":
        e.update(mapping="endpoint-independent", filtering="endpoint-independent",
                 ports="preserved", classic="full cone", ntcp02="Independent")
        return e, dict(e, syn="accepted")
    if pers == "restricted-cone":
        e.update(mapping="endpoint-independent", filtering="address-dependent", ports="preserved",
                 classic="restricted cone", ntcp02="Independent")
    elif pers == "port-restricted":
        e.update(mapping="endpoint-independent", filtering="address-and-port-dependent",
                 ports="preserved", classic="port-restricted cone", ntcp02="Independent")
    elif pers == "symmetric-seq":
        e.update(mapping="address-and-port-dependent", filtering="address-and-port-dependent",
                 ports="sequential", delta=knobs.get("delta", 1), classic="symmetric",
                 ntcp02="AddressPortDependent")
    elif pers == "symmetric-random":
        e.update(mapping="address-and-port-dependent", filtering="address-and-port-dependent",
                 ports="random", classic="symmetric", ntcp02="SessionDependent")
    return e, dict(e, syn=syn)


def expected_v6(pers, knobs):
    """IPv6 is routed, never translated: `none` is open, every other
    personality puts a stateful firewall in front of the site (docs/lab.md)."""
    if pers == "none":
        return expected_v4("none", knobs)
    return expected_v4("fw", knobs)


class Lab:
    def __init__(self, tool, prefix):
        self.tool, self.prefix = tool, prefix
        self.env = dict(os.environ, NTCP_LAB_PREFIX=prefix)

    def cmd(self, *args, check=True, timeout=300):
        r = subprocess.run([self.tool] + list(args), env=self.env, text=True, capture_output=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("ntcp-lab %s: exit %d: %s" % (" ".join(args), r.returncode,
                                                              (r.stderr or r.stdout).strip()))
        return r

    def exec(self, host, argv, timeout=300):
        return subprocess.run([self.tool, "exec", host, "--"] + argv, env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def spawn(self, host, argv, log):
        return subprocess.Popen([self.tool, "exec", host, "--"] + argv, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)


def wait_server(lab, ntcp, deadline_s=10, addr="203.0.113.10:3478", host="relay"):
    """Polls the server with `ntcp stun` until it answers, with a deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        r = lab.exec(host, [ntcp, "stun", "--timeout", "500", addr], timeout=10)
        if r.returncode == 0:
            return True
    return False


def start_stuntd(lab, stuntd, log):
    """ntcp-stuntd on the lab's server, both families, no rate limits."""
    return lab.spawn("server", [stuntd, "--primary", "203.0.113.10:3478",
                                "--alternate", "203.0.113.11:3479",
                                "--primary", "[2001:db8::10]:3478",
                                "--alternate", "[2001:db8::11]:3479",
                                "--udp-rate", "0", "--cb-rate", "0"], log)


def stop_stuntd(server):
    if server:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def compare(where, got, want):
    bad = []
    if not got.get("probed"):
        return ["%s: not probed (%s)" % (where, got.get("why"))]
    for k, v in want.items():
        if got.get(k) != v:
            bad.append("%s: %s is %r, want %r" % (where, k, got.get(k), v))
    if bad and got.get("why"):
        bad.append("%s: why: %s" % (where, got["why"]))
    return bad


def run_lab(i, knobs, args, results):
    prefix = "%s%d%d" % (os.environ.get("NTCP_LAB_PREFIX_BASE", "ntd"), os.getpid() % 10000, i)
    lab = Lab(args.lab, prefix)
    up = ["up", "--prefix", prefix, "--quiet", "--a", knobs["a"], "--b", knobs["b"],
          "--syn", knobs["syn"], "--seed", "7"]
    for k in ("hairpin", "delta", "delay", "loss"):
        if k in knobs:
            up += ["--" + k, str(knobs[k])]
    desc = " ".join(up[4:])
    failures = []
    server = None
    log = open("/tmp/%s-stuntd.log" % prefix, "w")
    try:
        lab.cmd(*up)
        server = start_stuntd(lab, args.stuntd, log)
        if not wait_server(lab, args.ntcp):
            raise RuntimeError("ntcp-stuntd did not answer in the lab")
        for site in ("a", "b"):
            pers = knobs[site]
            for fam, server_addr, expect in (("-4", "203.0.113.10", expected_v4),
                                             ("-6", "[2001:db8::10]", expected_v6)):
                r = lab.exec(site, [args.ntcp, "discover", "--json", fam, "--server", server_addr])
                where = "%s (%s) %s" % (pers, site, "IPv4" if fam == "-4" else "IPv6")
                try:
                    rep = json.loads(r.stdout)
                except ValueError:
                    failures.append("%s: no JSON (exit %d): %s %s" % (where, r.returncode,
                                                                     r.stdout, r.stderr))
                    continue
                key = "4" if fam == "-4" else "6"
                want_udp, want_tcp = expect(pers, knobs)
                bad = compare(where + " UDP", rep["udp" + key], want_udp)
                bad += compare(where + " TCP", rep["tcp" + key], want_tcp)
                if r.returncode != 0:
                    bad.append("%s: exit %d, want 0" % (where, r.returncode))
                failures += bad
                results.append((desc, where, rep["udp" + key].get("classic"),
                                rep["tcp" + key].get("syn"), rep["elapsed_ms"],
                                "ok" if not bad else "FAIL"))
            if knobs.get("lifetime") == site:
                # Short UDP conntrack timeouts in the NAT make a 12 s mapping
                # lifetime: idle 10 s must survive, 20 s must not.
                lab.exec("nat-" + site, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_udp_timeout=12",
                                         "net.netfilter.nf_conntrack_udp_timeout_stream=12"])
                r = lab.exec(site, [args.ntcp, "discover", "--json", "-4", "--udp", "--lifetime",
                                    "--server", "203.0.113.10"], timeout=400)
                where = "%s (%s) lifetime" % (pers, site)
                try:
                    got = json.loads(r.stdout)["udp4"].get("lifetime_s")
                except (ValueError, KeyError):
                    got = None
                if got != 10:
                    failures.append("%s: lifetime_s is %r, want 10 (%s)" % (where, got, r.stdout.strip()))
                results.append((desc, where, "lifetime %r s" % got, "-", 0,
                                "ok" if got == 10 else "FAIL"))
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        failures.append("%s: %s" % (desc, e))
    finally:
        stop_stuntd(server)
        lab.cmd("down", check=False)
        log.close()
    if failures:
        with open(log.name) as f:
            sys.stdout.write("--- ntcp-stuntd log (%s):\n%s" % (desc, f.read()[-2000:]))
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lab", required=True)
    ap.add_argument("--ntcp", required=True)
    ap.add_argument("--stuntd", required=True)
    ap.add_argument("--only", type=int, action="append", help="run only lab number N (0-based)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("skipped: the lab needs root (network namespaces, nftables)")
        return 77
    results, failures = [], []
    for i, knobs in enumerate(LABS):
        if args.only and i not in args.only:
            continue
        failures += run_lab(i, knobs, args, results)
    print("%-62s %-36s %-22s %-9s %7s %s" % ("lab", "client", "UDP type", "TCP SYN", "ms", ""))
    for row in results:
        print("%-62s %-36s %-22s %-9s %7s %s" % row)
    for f in failures:
        print("FAIL " + f)
    ok = sum(1 for r in results if r[-1] == "ok")
    print("%d passed, %d failed" % (ok, len(results) - ok))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
