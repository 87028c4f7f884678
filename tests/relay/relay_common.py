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
    import socket

    def free(port):
        socks = []
        try:
            for typ in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(socket.AF_INET, typ)
                socks.append(s)
                s.bind((host, port))
            return True
        except OSError:
            return False
        finally:
            for s in socks:
                s.close()

    for _ in range(500):
        base = random.randrange(20000, 32000 - count)
        if all(free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free range of %d ports" % count)
