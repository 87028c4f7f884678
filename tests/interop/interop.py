# interop.py: shared helpers for the interop tests: free loopback ports,
# servers started and stopped by PID (killed with the test if it dies), STUN
# readiness probes that poll with a deadline, and the checks' bookkeeping.
import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

SKIP = 77
IP1, IP2 = "127.0.0.1", "127.0.0.2"

_failures = []
_servers = []


def log(*a):
    print(*a, flush=True)


def skip(reason):
    log("SKIP: " + reason)
    sys.exit(SKIP)


def check(cond, what, detail=""):
    """Records one assertion; the test fails at the end if any failed."""
    if cond:
        log("ok   " + what)
    else:
        log("FAIL " + what + (": " + detail if detail else ""))
        _failures.append(what)
    return cond


def finish():
    if _failures:
        log("%d check(s) failed: %s" % (len(_failures), "; ".join(_failures)))
        sys.exit(1)
    log("all checks passed")
    sys.exit(0)


def args(need_ntcp=True, need_stuntd=False, tools=()):
    """Parses --ntcp/--stuntd and skips when something needed is missing."""
    p = argparse.ArgumentParser()
    p.add_argument("--ntcp", default=os.environ.get("NTCP_BIN", ""))
    p.add_argument("--stuntd", default=os.environ.get("NTCP_STUNTD_BIN", ""))
    a = p.parse_args()
    if need_ntcp and not (a.ntcp and os.access(a.ntcp, os.X_OK)):
        skip("the ntcp program is not built (%r)" % a.ntcp)
    if need_stuntd and not (a.stuntd and os.access(a.stuntd, os.X_OK)):
        skip("the ntcp-stuntd program is not built (%r)" % a.stuntd)
    for t in tools:
        if not shutil.which(t):
            skip("%s is not installed" % t)
    # A second loopback address is needed for RFC 5780 / RFC 3489 tests.
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((IP2, 0))
        s.close()
    except OSError as e:
        skip("cannot bind %s: %s" % (IP2, e))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    return a


def _port_free(host, port):
    socks = []
    try:
        for typ in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, typ)
            socks.append(s)
            s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_ports(count=2, hosts=(IP1, IP2)):
    """A base port P such that P..P+count-1 are free for UDP and TCP on every
    host. Found by asking the kernel for a port, then checking the others."""
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((IP1, 0))
        base = s.getsockname()[1]
        s.close()
        if base + count > 65535:
            continue
        if all(_port_free(h, base + i) for h in hosts for i in range(count)):
            return base
    raise RuntimeError("no free ports")


def free_port(host=IP1):
    return free_ports(1, (host,))


def _die_with_parent():
    # PR_SET_PDEATHSIG = 1: the server gets SIGTERM if this test is killed.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


class Server:
    """A server process started by the test, logged to a file, stopped by PID."""

    def __init__(self, name, argv, workdir):
        self.name = name
        self.argv = argv
        self.logpath = os.path.join(workdir, name + ".out")
        self.logf = open(self.logpath, "wb")
        log("start %s: %s" % (name, " ".join(argv)))
        self.proc = subprocess.Popen(argv, stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=workdir,
                                     preexec_fn=_die_with_parent)
        _servers.append(self)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.logf.close()

    def output(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def stop_all(show_logs=False):
    for s in reversed(_servers):
        s.stop()
        if show_logs:
            out = s.output()
            log("---- %s output (last 40 lines) ----" % s.name)
            log("\n".join(out.splitlines()[-40:]))
    _servers.clear()


class Workdir:
    """A temp dir; on exit stops the servers (showing their logs when the test
    failed) and removes the dir."""

    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="ntcp-interop-")
        return self.path

    def __exit__(self, et, ev, tb):
        failed = et is not None and not (et is SystemExit and ev.code in (0, None, SKIP))
        stop_all(show_logs=failed or bool(_failures))
        shutil.rmtree(self.path, ignore_errors=True)
        return False


# ---- STUN probes (just enough to see that a server answers) ----

def _binding_request(padding=0):
    tid = os.urandom(12)
    attrs = b""
    if padding:  # RFC 5780 PADDING (0x0026), as turnutils' -P and -f send
        attrs = struct.pack("!HH", 0x0026, padding) + b"\0" * (padding + (-padding % 4))
    return struct.pack("!HHI", 0x0001, len(attrs), 0x2112A442) + tid + attrs, tid


def _is_answer(data, tid):
    return len(data) >= 20 and data[8:20] == tid and struct.unpack("!H", data[:2])[0] in (0x0101, 0x0111)


def probe_udp(host, port, timeout=0.2, padding=0):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        req, tid = _binding_request(padding)
        s.settimeout(timeout)
        try:
            s.sendto(req, (host, port))
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                data, _ = s.recvfrom(2048)
                if _is_answer(data, tid):
                    return True
        except OSError:
            return False
    return False


def probe_tcp(host, port, timeout=0.5):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((host, port))
            req, tid = _binding_request()
            s.sendall(req)
            data = b""
            end = time.monotonic() + timeout
            while time.monotonic() < end and len(data) < 20:
                chunk = s.recv(2048)
                if not chunk:
                    break
                data += chunk
            return _is_answer(data, tid)
    except OSError:
        return False


def wait_ready(server, udp=(), tcp=(), timeout=15.0):
    """Polls until every (host, port) answers a Binding request, the server
    dies, or the deadline passes."""
    end = time.monotonic() + timeout
    todo_u, todo_t = list(udp), list(tcp)
    while time.monotonic() < end:
        if not server.alive():
            log(server.output())
            raise RuntimeError("%s exited with %s" % (server.name, server.proc.returncode))
        todo_u = [a for a in todo_u if not probe_udp(*a)]
        todo_t = [a for a in todo_t if not probe_tcp(*a)]
        if not todo_u and not todo_t:
            return
        time.sleep(0.05)  # between probes, not a wait for an event
    log(server.output())
    raise RuntimeError("%s not answering on %s %s" % (server.name, todo_u, todo_t))


# ---- servers ----

def start_coturn(workdir, port, alt_port=None, extra=()):
    """coturn in STUN-only mode on 127.0.0.1 and 127.0.0.2 (RFC 5780 with the
    alternate port), no TLS, no CLI, its state in workdir."""
    alt_port = alt_port or port + 1
    argv = ["turnserver", "-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls",
            "-L", IP1, "-L", IP2, "--listening-port", str(port),
            "--alt-listening-port", str(alt_port),
            "--log-file", os.path.join(workdir, "turn.log"), "--simple-log",
            "--pidfile", os.path.join(workdir, "turn.pid"),
            "--userdb", os.path.join(workdir, "turndb"),
            "--max-allocate-timeout", "60"] + list(extra)
    srv = Server("turnserver", argv, workdir)
    wait_ready(srv, udp=[(IP1, port), (IP2, port)], tcp=[(IP1, port)])
    return srv


def start_stuntd(binary, workdir, port, extra=()):
    """ntcp-stuntd with primary 127.0.0.1:port and alternate 127.0.0.2:port+1."""
    argv = [binary, "--primary", "%s:%d" % (IP1, port), "--alternate", "%s:%d" % (IP2, port + 1)]
    argv += list(extra)
    srv = Server("ntcp-stuntd", argv, workdir)
    four = [(IP1, port), (IP1, port + 1), (IP2, port), (IP2, port + 1)]
    wait_ready(srv, udp=four, tcp=four)
    return srv


def wait_output(server, pattern, timeout=15.0):
    """Polls a server's output until the regular expression matches (True),
    the server dies or the deadline passes (False)."""
    import re
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if re.search(pattern, server.output(), re.M):
            return True
        if not server.alive():
            break
        time.sleep(0.05)  # between looks at the log, not a wait for an event
    return re.search(pattern, server.output(), re.M) is not None


def start_brokerd(binary, workdir, extra=()):
    """ntcp-brokerd on 127.0.0.1 (TCP and UDP on one free port, its state in
    workdir), once it logs that it listens: (server, "127.0.0.1:PORT")."""
    for _ in range(5):
        port = free_port()
        srv = Server("ntcp-brokerd", [binary, "--listen", "%s:%d" % (IP1, port),
                                      "--udp", "%s:%d" % (IP1, port),
                                      "--state-dir", os.path.join(workdir, "state"),
                                      "--stats", "0"] + list(extra), workdir)
        if wait_output(srv, r"listening on %s:%d \(TCP\)" % (IP1, port), 20):
            return srv, "%s:%d" % (IP1, port)
        srv.stop()
    raise RuntimeError("ntcp-brokerd did not start")


def run(argv, timeout=60):
    """Runs a client, logs its command line and output, returns (rc, stdout,
    stderr); rc is None when it had to be killed after timeout seconds."""
    log("$ " + " ".join(str(a) for a in argv))
    try:
        p = subprocess.run([str(a) for a in argv], capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        # subprocess has killed the client (by its PID); keep what it said.
        log("  (still running after %s s: killed)" % timeout)
        rc, out, err = None, e.stdout or b"", e.stderr or b""
    out = out.decode("utf-8", "replace")
    err = err.decode("utf-8", "replace")
    for line in out.splitlines():
        log("  | " + line)
    for line in err.splitlines():
        log("  ! " + line)
    log("  exit %s" % rc)
    return rc, out, err


def ntcp_json(ntcp, *opts, timeout=60):
    """Runs `ntcp stun --json ...`; returns (rc, parsed object or None)."""
    rc, out, _ = run([ntcp, "stun", "--json"] + list(opts), timeout=timeout)
    try:
        obj = json.loads(out)
    except ValueError:
        obj = None
    check(isinstance(obj, dict), "ntcp stun --json prints one JSON object", repr(out[:200]))
    return rc, obj or {}
