"""test_binding.py: the binding itself, without servers: the structs laid
out as the C compiler lays them out, errors with their NTCP_E* names and
reasons, settings and configuration files (NTCP 0.2's keys too)."""

import ctypes
import os
import shutil
import subprocess

import pytest

import ntcp
from ntcp import _lib

STRUCTS = {
    "ntcp_config_t": _lib.config,
    "ntcp_nat_behaviour_t": _lib.nat_behaviour,
    "ntcp_nat_profile_t": _lib.nat_profile,
    "ntcp_conn_info_t": _lib.conn_info,
}

# Read or written only as far as their size member says (abi/ntcp.abignore).
GROWABLE = ("ntcp_config_t", "ntcp_conn_info_t")


def test_layouts_match_the_c_header(tmp_path):
    """Every field's offset and every struct's size, as a C program built
    against include/ntcp.h prints them, equal ctypes' (a struct that may
    grow may be longer in C)."""
    include = os.environ.get("NTCP_INCLUDE")
    if not include or not shutil.which("cc"):
        pytest.skip("needs cc and NTCP_INCLUDE (the directory of ntcp.h)")
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <ntcp.h>", "int main(void) {"]
    for cname, cls in STRUCTS.items():
        lines.append('printf("%s %%zu\\n", sizeof(%s));' % (cname, cname))
        for fname, _ in cls._fields_:
            if fname.startswith("_"):
                continue
            lines.append('printf("%s.%s %%zu\\n", offsetof(%s, %s));' % (cname, fname, cname, fname))
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-std=c17", "-I", include, "-o", str(exe), str(src)], check=True)
    c = dict(line.rsplit(" ", 1) for line in subprocess.run(
        [str(exe)], check=True, capture_output=True, text=True).stdout.splitlines())
    for cname, cls in STRUCTS.items():
        for fname, _ in cls._fields_:
            if not fname.startswith("_"):
                key = "%s.%s" % (cname, fname)
                assert int(c[key]) == getattr(cls, fname).offset, key
        # The structs whose size member the library honours may be longer in
        # C than in the binding (the header grew); the others may not.
        if cname in GROWABLE:
            assert int(c[cname]) >= ctypes.sizeof(cls), cname
        else:
            assert int(c[cname]) == ctypes.sizeof(cls), cname


def test_version():
    v = ntcp.version()
    assert v.split(".")[0] == str(_lib.SOVERSION) and len(v.split(".")) == 3


def test_errors_carry_name_and_reason():
    ctx = ntcp.Context()  # no broker, no name
    with pytest.raises(ntcp.ConfigError) as e:
        ctx.listen("alice", timeout=5)
    assert e.value.name == "NTCP_ECONFIG" and e.value.code == -18
    assert e.value.reason == _lib.strerror(-18).decode() and e.value.reason
    assert "NTCP_ECONFIG" in str(e.value)
    with pytest.raises(ntcp.NotReadyError) as e:
        ctx.accept(timeout=0)
    assert e.value.name == "NTCP_ENOTREADY"
    ctx.close()
    with pytest.raises(ntcp.ClosedError):
        ctx.listen("alice")
    assert issubclass(ntcp.TimeoutError, TimeoutError)
    assert ntcp.error(-999).name == "NTCP_E999"


def test_settings():
    with ntcp.Context(broker="127.0.0.1:3479", name="alice", key_file="/tmp/x.key",
                      stun_servers=["127.0.0.1:3478", "[2001:db8::1]:3478"]) as ctx:
        assert ctx.broker == "127.0.0.1:3479"
        assert ctx.name == "alice"
        assert ctx.key_file == "/tmp/x.key"
        assert ctx.stun_servers == ["127.0.0.1:3478", "[2001:db8::1]:3478"]
    with pytest.raises(TypeError):
        ntcp.Context(brokr="x")
    with ntcp.Context() as ctx:
        assert ctx.relay == "auto" and ctx.methods is None
    with ntcp.Context(relay="never", methods=["stunt2", "p2pnat"]) as ctx:
        assert ctx.relay == "never" and ctx.methods == "stunt2,p2pnat"
    with ntcp.Context(methods="birthday") as ctx:
        assert ctx.methods == "birthday"
    with pytest.raises(ntcp.ConfigError):
        ntcp.Context(methods="stunt2,teleport")
    with pytest.raises(ValueError):
        ntcp.Context(relay="sometimes")


def test_configuration_file_with_ntcp02_keys(tmp_path):
    conf = tmp_path / "p2pNetwork.conf"
    conf.write_text("[stun]\nWellKnownStunServer: 192.0.2.1:3478\n\n"
                    "[holePunch]\nConnectionBroker: 192.0.2.2:8888\n")
    with ntcp.Context(str(conf), stun_servers=["192.0.2.3"]) as ctx:
        assert ctx.broker == "192.0.2.2:8888"
        assert ctx.stun_servers == ["192.0.2.1:3478", "192.0.2.3"]
    bad = tmp_path / "missing.conf"
    with pytest.raises(ntcp.ConfigError):
        ntcp.Context(str(bad))


def test_is_control():
    assert ntcp.is_control(b"")  # a keepalive is an empty datagram
    assert not ntcp.is_control(b"application data")
