"""conftest.py: fixtures of the Python binding's tests: the programs under
test (from the environment the ctest registration sets: NTCP_BROKERD,
NTCP_STUNTD, NTCP_CLI, NTCP_INCLUDE, NTCP_LIBRARY), an ntcp-brokerd and an
ntcp-stuntd on loopback, started per test on free ports and stopped by PID
(the helpers of tests/interop/interop.py)."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
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
    return interop.start_brokerd(program("NTCP_BROKERD"), workdir)[1]


@pytest.fixture
def stuntd(workdir):
    """An ntcp-stuntd on 127.0.0.1 and 127.0.0.2: its primary "HOST:PORT"."""
    binary = program("NTCP_STUNTD")
    port = interop.free_ports(2)
    interop.start_stuntd(binary, workdir, port)
    return "127.0.0.1:%d" % port
