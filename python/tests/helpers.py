"""helpers.py: what the Python binding's tests and test programs share,
with no import of ntcp (lab_python.py runs where libntcp is not loaded)."""

import hashlib
import socket
import threading
import time


def payload(name, size):
    """size bytes that depend on name: blocks of SHA-256 in counter mode."""
    out, i = bytearray(), 0
    while len(out) < size:
        out += hashlib.sha256(b"%s:%d" % (name.encode(), i)).digest()
        i += 1
    return bytes(out[:size])


def exchange(sock, data, timeout=60):
    """Sends data and half-closes while a thread reads the other side's to
    its end; closes sock; returns what was read."""
    got = bytearray()

    def reader():
        while True:
            b = sock.recv(65536)
            if not b:
                return
            got.extend(b)
    t = threading.Thread(target=reader)
    t.start()
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    t.join(timeout)
    sock.close()
    return bytes(got)


def wait_text(path, text, proc, seconds=30):
    """Polls a process's output file until it holds text (True), or the
    process ends or the deadline passes (False)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with open(path) as f:
            if text in f.read():
                return True
        if proc.poll() is not None:
            break
        time.sleep(0.05)  # between looks at the file, not a wait for an event
    with open(path) as f:
        return text in f.read()
