"""conftest.py: fixtures of the Python binding's tests: the programs under
test (from the environment the ctest registration sets: NTCP_BROKERD,
NTCP_STUNTD, NTCP_CLI, NTCP_INCLUDE, NTCP_LIBRARY), an ntcp-brokerd and an
ntcp-stuntd on loopback, started per test on free ports and stopped by PID
(the helpers of tests/interop/interop.py)."""

import os
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "interop"))
import interop  # noqa: E402


def program(var):
    path = os.environ.get(var, "")
    if not (path and os.access(path, os.X_OK)):
        pytest.skip("%s is not set to a built program (%r)" % (var, path))
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temporary current directory (keys are made there); servers started
    in it are stopped at the end."""
    monkeypatch.chdir(tmp_path)
    yield str(tmp_path)
    interop.stop_all(show_logs=False)


@pytest.fixture
def broker(workdir):
    """An ntcp-brokerd on 127.0.0.1: its "HOST:PORT"."""
    binary = program("NTCP_BROKERD")
    for _ in range(5):
        port = interop.free_port()
        srv = interop.Server("ntcp-brokerd", [binary, "--listen", "127.0.0.1:%d" % port,
                                              "--udp", "127.0.0.1:%d" % port,
                                              "--state-dir", os.path.join(workdir, "state"),
                                              "--stats", "0"], workdir)
        end = time.monotonic() + 20
        while time.monotonic() < end and srv.alive():
            if "listening on 127.0.0.1:%d (TCP)" % port in srv.output():
                return "127.0.0.1:%d" % port
            time.sleep(0.05)  # polling its log, with a deadline
        srv.stop()
    pytest.fail("ntcp-brokerd did not start")


@pytest.fixture
def stuntd(workdir):
    """An ntcp-stuntd on 127.0.0.1 and 127.0.0.2: its primary "HOST:PORT"."""
    binary = program("NTCP_STUNTD")
    port = interop.free_ports(2)
    interop.start_stuntd(binary, workdir, port)
    return "127.0.0.1:%d" % port


def wait_line(proc_out_path, text, proc, seconds=30):
    """Polls a process's output file until it holds text (or it exits)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with open(proc_out_path) as f:
            if text in f.read():
                return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False
