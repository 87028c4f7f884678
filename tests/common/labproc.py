"""labproc.py: what the lab tests of tests/many (and any other) share: the
lab's servers (ntcp-stuntd and ntcp-brokerd on the `server` host, with the
addresses every lab test uses) and ending the processes a test started, by
their own PID. Import with sys.path pointing at tests/common."""

import subprocess
import time

STUN = "203.0.113.10:3478"
STUN_ALT = "203.0.113.11:3479"
BROKER = "203.0.113.10:3490"
TURN = "203.0.113.20:3478"  # coturn on the relay host (ntcp-lab up --turn)


def stop(p, grace=5):
    """Ends one process this test started: TERM, then KILL after grace s."""
    if p is not None and p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def start_servers(lab, prefix, stuntd, brokerd, env, broker_args=(), turn_secret=None):
    """ntcp-stuntd and ntcp-brokerd (without rate limits: a test's many
    peers share a few addresses) on the lab's server host; the broker
    offers the lab's coturn when turn_secret (its secret file) is given.
    Returns the processes, once the broker's port answers (at most 10 s)."""
    ex = [lab, "exec", "--prefix", prefix, "server", "--"]
    procs = [subprocess.Popen(ex + [stuntd, "--primary", STUN, "--alternate", STUN_ALT,
                                    "--udp-rate", "0", "--cb-rate", "0", "--log-level", "error"],
                              env=env, stdin=subprocess.DEVNULL)]
    turn = ["--turn-server", TURN, "--turn-secret-file", turn_secret] if turn_secret else []
    procs.append(subprocess.Popen(ex + [brokerd, "--listen", BROKER, "--udp", BROKER,
                                        "--source-rate", "0", "--peer-rate", "0", "--quiet",
                                        *turn, *broker_args],
                                  env=env, stdin=subprocess.DEVNULL))
    host, port = BROKER.split(":")
    probe = ex + ["python3", "-c", "import socket,sys; socket.create_connection((%r, %s), 1)"
                  % (host, port)]
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if subprocess.run(probe, capture_output=True).returncode == 0:
            break
        time.sleep(0.05)  # polling the broker's port with a deadline
    return procs


def stop_all(procs):
    for p in procs:
        stop(p)
