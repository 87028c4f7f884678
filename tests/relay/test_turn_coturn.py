#!/usr/bin/python3
# test_turn_coturn.py: the TURN client against coturn on loopback. Starts
# turnserver with TURN REST credentials (use-auth-secret, a secret file made
# here), user-quota 1, loopback peers allowed, its relay ports in a free
# range; a second one with TCP relaying disabled; runs turn_check for each
# scenario (TCP by ConnectionAttempt and by Connect, UDP, and the faults)
# and stops the servers by PID.
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
from interop import IP1, SKIP, Server, Workdir, check, finish, free_port, log, run, skip, wait_ready  # noqa: E402
import shutil  # noqa: E402

from relay_common import relay_port_range  # noqa: E402

if len(sys.argv) != 2 or not os.access(sys.argv[1], os.X_OK):
    skip("turn_check is not built")
if not shutil.which("turnserver"):
    skip("turnserver (coturn) is not installed")
turn_check = sys.argv[1]


def start_turn(wd, name, port, relay_base, secret, extra=()):
    argv = ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls",
            "-L", IP1, "--listening-port", str(port), "--relay-ip", IP1,
            "--min-port", str(relay_base), "--max-port", str(relay_base + 49),
            "--use-auth-secret", "--static-auth-secret", secret, "--realm", "ntcp.test",
            "--allow-loopback-peers", "--user-quota", "1",
            "--log-file", os.path.join(wd, name + ".log"), "--simple-log",
            "--pidfile", os.path.join(wd, name + ".pid"),
            "--userdb", os.path.join(wd, name + ".db")] + list(extra)
    srv = Server(name, argv, wd)
    wait_ready(srv, udp=[(IP1, port)], tcp=[(IP1, port)])
    return srv


with Workdir() as wd:
    secret = os.urandom(16).hex()
    secret_file = os.path.join(wd, "turn-secret")
    with open(secret_file, "w") as f:
        f.write(secret + "\n")
    P = free_port()
    relay = relay_port_range(50)
    start_turn(wd, "turnserver", P, relay, secret)
    P2 = free_port()
    relay2 = relay_port_range(50)
    while abs(relay2 - relay) < 50:  # the two servers' ranges apart
        relay2 = relay_port_range(50)
    start_turn(wd, "turnserver-notcp", P2, relay2, secret, ["--no-tcp-relay"])
    down = free_port()

    cases = [("tcp", P), ("connect", P), ("udp", P), ("verify", P), ("impostor", P), ("wrong-secret", P), ("expired", P),
             ("quota", P), ("no-tcp-relay", P2), ("down", down)]
    for scenario, port in cases:
        rc, out, _ = run([turn_check, scenario, "%s:%d" % (IP1, port), secret_file], timeout=90)
        check(rc == 0 and "PASS" in out, "turn_check %s" % scenario, "exit %s" % rc)
    finish()
