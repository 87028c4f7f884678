# relay_common.py: what the relay's end-to-end tests share (test_relay_cli.py
# on loopback, relay_lab.py in the lab): feeding a peer's stdin from a
# thread, the size of an output so far, the last JSON status line of a log.
import json
import os
import threading


def feed(proc, data):
    """Writes data to proc's stdin from a thread; the caller closes stdin
    later (a relayed connection carries no half-close, docs/relay.md)."""
    def run():
        try:
            proc.stdin.write(data)
            proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def last_json(path):
    """The last line of path that starts with '{', parsed; {} when none."""
    try:
        with open(path, errors="replace") as f:
            lines = [l for l in f if l.startswith("{")]
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def relay_port_range(count=50, host="127.0.0.1"):
    """A base port P such that P..P+count-1 are free (TCP and UDP) for
    coturn's relayed addresses (--min-port/--max-port). Looked for below the
    kernel's ephemeral range (32768 and up by default), where only explicit
    binds live: after many tests loopback is full of ephemeral ports in
    TIME_WAIT, and count free ones in a row are rare there."""
    import random

    from interop import _port_free  # the caller has tests/interop on its path

    for _ in range(500):
        base = random.randrange(20000, 32000 - count)
        if all(_port_free(host, base + i) for i in range(count)):
            return base
    raise RuntimeError("no free range of %d ports" % count)


def run_pair(listen, connect, to_a, to_b, f, wait=30, data=True):
    """One exchange between `ntcp listen` (bob) and `ntcp connect` (alice):
    listen(stdout, stderr) and connect(stdout, stderr) start them, stdin a
    pipe. alice sends to_b first; once bob has it all, bob sends to_a (one
    direction at a time: coturn's TCP relay may lose data when both are
    saturated at once, docs/relay.md "Limits"). Each keeps its stdin open
    until both outputs are complete (a relayed TCP connection carries no
    half-close), then both close. alice is started again while she exits
    3 (bob not registered yet). f names the files aout, aerr, bout, berr.
    Returns (alice's exit code, bob's), None for one that had to be killed."""
    import subprocess
    import time

    lst = listen(open(f["bout"], "wb"), open(f["berr"], "wb"))
    con, rc, lrc = None, None, None
    fed_bob = False
    end = time.monotonic() + wait
    try:
        while time.monotonic() < end:
            con = connect(open(f["aout"], "wb"), open(f["aerr"], "wb"))
            feed(con, to_b)
            while con.poll() is None and time.monotonic() < end:
                if not fed_bob and size(f["bout"]) >= len(to_b):
                    feed(lst, to_a)  # alice's data is all there: bob's turn
                    fed_bob = True
                if data and size(f["aout"]) >= len(to_a) and size(f["bout"]) >= len(to_b):
                    break
                time.sleep(0.02)  # polling the outputs with a deadline
            if con.poll() != 3:
                break
        for p in (con, lst):
            try:
                p.stdin.close()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            rc = con.wait(timeout=40)
        except subprocess.TimeoutExpired:
            rc = None
        if rc == 0:
            try:
                lrc = lst.wait(timeout=20)
            except subprocess.TimeoutExpired:
                lrc = None
    finally:
        for p in (con, lst):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    return rc, lrc
