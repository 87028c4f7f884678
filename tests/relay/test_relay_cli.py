#!/usr/bin/python3
# test_relay_cli.py: the relay of last resort end to end through the CLI
# (`ntcp listen` / `ntcp connect`, hence the public API): coturn with TURN
# REST credentials and an ntcp-brokerd with --turn-server/--turn-secret-file,
# all on 127.0.0.1, each stopped by PID.
#   - connect --relay always: the connection goes through coturn, data both
#     ways intact, both --json lines say method "relay" and name the relay;
#   - the default (auto) on loopback: a direct method wins, no relay;
#   - faults through the whole stack: a broker holding the wrong secret, and
#     a TURN server that is down: the connect fails with the cause named;
#   - across the nodes of a broker cluster (with redis-server): bob at one
#     node, alice at another, --relay always, TCP and UDP through coturn.
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
from interop import IP1, Server, Workdir, check, finish, free_port, log, skip, wait_ready  # noqa: E402
import shutil  # noqa: E402

from relay_common import last_json, relay_port_range, run_pair  # noqa: E402

if len(sys.argv) != 3 or not all(os.access(p, os.X_OK) for p in sys.argv[1:]):
    skip("ntcp or ntcp-brokerd is not built")
if not shutil.which("turnserver"):
    skip("turnserver (coturn) is not installed")
ntcp, brokerd = sys.argv[1], sys.argv[2]


def start_turn(wd, secret):
    port = free_port()
    relay = relay_port_range(50)
    argv = ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "-L", IP1,
            "--listening-port", str(port), "--relay-ip", IP1, "--min-port", str(relay),
            "--max-port", str(relay + 49), "--use-auth-secret", "--static-auth-secret", secret,
            "--realm", "ntcp.test", "--allow-loopback-peers",
            "--log-file", os.path.join(wd, "turn.log"), "--simple-log",
            "--pidfile", os.path.join(wd, "turn.pid"), "--userdb", os.path.join(wd, "turn.db")]
    srv = Server("turnserver", argv, wd)
    wait_ready(srv, udp=[(IP1, port)], tcp=[(IP1, port)])
    return port


def start_broker(wd, name, turn_port, secret_file, cluster=None):
    """cluster: a Redis URL; the node is ready once it reaches Redis."""
    extra = ["--cluster", cluster] if cluster else []
    for _ in range(5):
        port = free_port()
        srv = Server(name, [brokerd, "--listen", "%s:%d" % (IP1, port), "--udp", "%s:%d" % (IP1, port),
                            "--stats", "0", "--turn-server", "%s:%d" % (IP1, turn_port),
                            "--turn-secret-file", secret_file] + extra, wd)
        end = time.monotonic() + 20
        while time.monotonic() < end and srv.alive():
            out = srv.output()
            if "listening on %s:%d (TCP)" % (IP1, port) in out and (not cluster or "reachable" in out):
                return "%s:%d" % (IP1, port)
            time.sleep(0.05)  # polling the log for readiness
        srv.stop()
    raise RuntimeError("ntcp-brokerd did not start")


def start_redis(wd):
    port = free_port()
    srv = Server("redis", [shutil.which("redis-server"), "--port", str(port), "--bind", IP1,
                           "--save", "", "--appendonly", "no"], wd)
    end = time.monotonic() + 15
    while "Ready to accept connections" not in srv.output():
        if not srv.alive() or time.monotonic() > end:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)  # polling the log for readiness
    return "redis://%s:%d" % (IP1, port)








def peer_env(wd):
    return dict(os.environ, HOME=os.path.join(wd, "home"), XDG_CONFIG_HOME=os.path.join(wd, "xdg"),
                NTCP_CONFIG=os.path.join(wd, "empty.conf"))


def exchange(wd, tag, broker, listen_opts, connect_opts, to_a, to_b, data):
    """broker: one for both, or (bob's, alice's)."""
    bob_broker, alice_broker = broker if isinstance(broker, tuple) else (broker, broker)
    env = peer_env(wd)
    f = {k: os.path.join(wd, tag + "." + k) for k in ("aout", "aerr", "bout", "berr")}

    def start(argv):
        return lambda out, err: subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                                 env=env)
    rc, lrc = run_pair(start([ntcp, "listen", "--id", "bob", "-b", bob_broker, "-t", "30000", "--json"]
                             + list(listen_opts)),
                       start([ntcp, "connect", "--id", "alice", "-b", alice_broker, "-t", "20000", "--json"]
                             + list(connect_opts) + ["bob"]),
                       to_a, to_b, f, data=data)
    for k in ("aerr", "berr"):
        log("---- %s %s ----\n%s" % (tag, k, open(f[k], errors="replace").read()[-1500:]))
    got_a, got_b = open(f["aout"], "rb").read(), open(f["bout"], "rb").read()
    return rc, lrc, last_json(f["aerr"]), last_json(f["berr"]), got_a, got_b


def pair(wd, tag, broker, connect_opts, listen_opts=(), data=True):
    """TCP: bob listens, alice connects; 200,000 and 150,000 random bytes.
    Returns (connect rc, listen rc, alice json, bob json, data ok)."""
    to_a = os.urandom(200000) if data else b""
    to_b = os.urandom(150000) if data else b""
    rc, lrc, a, b, got_a, got_b = exchange(wd, tag, broker, listen_opts, connect_opts, to_a, to_b, data)
    return rc, lrc, a, b, got_a == to_a and got_b == to_b


def pair_udp(wd, tag, broker, connect_opts, n=300):
    """UDP (ntcp listen/connect --udp): n datagrams (lines) each way."""
    to_a = "".join("from-bob-%d\n" % k for k in range(n)).encode()
    to_b = "".join("from-alice-%d\n" % k for k in range(n)).encode()
    udp = ["--udp", "--interval", "2"]
    rc, _, a, b, got_a, got_b = exchange(wd, tag, broker, udp, udp + list(connect_opts), to_a, to_b, True)
    return rc, a, b, got_a == to_a and got_b == to_b, (len(got_a.splitlines()), len(got_b.splitlines()))


with Workdir() as wd:
    os.makedirs(os.path.join(wd, "home"))
    os.makedirs(os.path.join(wd, "xdg"))
    open(os.path.join(wd, "empty.conf"), "w").close()
    secret = os.urandom(16).hex()
    good, bad = os.path.join(wd, "secret"), os.path.join(wd, "wrong-secret")
    with open(good, "w") as f:
        f.write(secret + "\n")
    with open(bad, "w") as f:
        f.write("not-" + secret + "\n")
    tport = start_turn(wd, secret)
    relay = "%s:%d" % (IP1, tport)
    broker = start_broker(wd, "brokerd", tport, good)

    # 1. Forced relay: through coturn, data intact, method relay on both ends.
    rc, lrc, a, b, same = pair(wd, "always", broker, ["--relay", "always"])
    check(rc == 0 and lrc == 0, "relay always: connect and listen exit 0", "%s %s" % (rc, lrc))
    check(same, "relay always: data both ways intact")
    check(a.get("method") == "relay" and b.get("method") == "relay",
          "relay always: both --json lines say method relay", "%s / %s" % (a.get("method"), b.get("method")))
    check(a.get("relay") == relay and b.get("relay") == relay,
          "relay always: both name the relay %s" % relay, "%s / %s" % (a.get("relay"), b.get("relay")))
    check(a.get("remote") == b.get("local") or a.get("remote", "").startswith(IP1),
          "relay always: alice's remote is the relayed address", str(a.get("remote")))

    # 1b. UDP (ntcp_udp_punch) through the relay: the target's bridge.
    rc, a, b, same, counts = pair_udp(wd, "udp-always", broker, ["--relay", "always"])
    check(rc == 0, "udp relay always: connect exits 0", "%s: %s" % (rc, a.get("detail")))
    check(a.get("method") == "relay" and b.get("method") == "relay" and a.get("transport") == "udp",
          "udp relay always: both say relay (udp)", "%s / %s" % (a.get("method"), b.get("method")))
    check(a.get("relay") == relay and b.get("relay") == relay, "udp relay always: both name the relay",
          "%s / %s" % (a.get("relay"), b.get("relay")))
    check(same, "udp relay always: 300 datagrams each way, in order", "lines %s" % (counts,))

    # 2. Default (auto) on loopback: a direct method works, the relay is not used.
    rc, lrc, a, b, same = pair(wd, "auto", broker, [])
    check(rc == 0 and same, "auto: connected, data intact", str(rc))
    check(a.get("method") not in ("", None, "relay"), "auto: a direct method won, not the relay",
          str(a.get("method")))

    # 3. A broker with the wrong secret: coturn refuses its credentials.
    broker_bad = start_broker(wd, "brokerd-wrong", tport, bad)
    rc, lrc, a, b, same = pair(wd, "wrong", broker_bad, ["--relay", "always"], data=False)
    check(rc not in (0, 3) and a.get("ok") is False, "wrong secret: the connect fails", str(rc))
    check("wrong credentials" in a.get("detail", ""),
          "wrong secret: the cause is named at the requester", str(a.get("detail")))

    # 4. The TURN server is down.
    dead = free_port()
    broker_dead = start_broker(wd, "brokerd-dead", dead, good)
    rc, lrc, a, b, same = pair(wd, "down", broker_dead, ["--relay", "always"], data=False)
    check(rc not in (0, 3) and a.get("ok") is False, "relay down: the connect fails", str(rc))
    check("unreachable" in a.get("detail", "") and "%d" % dead in a.get("detail", ""),
          "relay down: the cause is named (the TURN server unreachable)", str(a.get("detail")))

    # 5. Across two nodes of a cluster, both given the same TURN server and
    #    secret: bob registered at one, alice at the other.
    if shutil.which("redis-server"):
        url = start_redis(wd)
        nodes = (start_broker(wd, "node-bob", tport, good, url), start_broker(wd, "node-alice", tport, good, url))
        rc, lrc, a, b, same = pair(wd, "cluster", nodes, ["--relay", "always"])
        check(rc == 0 and lrc == 0 and same, "cluster: connected across nodes, data both ways intact",
              "%s %s: %s" % (rc, lrc, a.get("detail")))
        check(a.get("method") == "relay" and b.get("method") == "relay" and a.get("relay") == relay,
              "cluster: both say relay and name it", "%s / %s" % (a.get("method"), b.get("method")))
        rc, a, b, same, counts = pair_udp(wd, "cluster-udp", nodes, ["--relay", "always"])
        check(rc == 0 and same, "cluster udp: connected across nodes, 300 datagrams each way",
              "%s: %s, lines %s" % (rc, a.get("detail"), counts))
        check(a.get("method") == "relay" and b.get("method") == "relay",
              "cluster udp: both say relay", "%s / %s" % (a.get("method"), b.get("method")))
    else:
        log("cluster: not tested (no redis-server)")
    finish()
