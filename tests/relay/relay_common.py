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
