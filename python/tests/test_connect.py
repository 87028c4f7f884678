"""test_connect.py: the binding against a real ntcp-brokerd and ntcp-stuntd
on loopback: discovery's dict equals `ntcp discover --json`; connections in
each style (sync, asyncio, Twisted) carry 1 MiB each way, checked by hash;
UDP punching; a refusing policy; an unknown peer."""

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest

import ntcp
from conftest import program
from helpers import exchange, wait_text

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer.py")
MiB = 1 << 20


def ctx_for(broker, name, **kw):
    return ntcp.Context(broker=broker, name=name, key_file=name + ".key", **kw)


def test_discover_matches_the_cli(stuntd, workdir):
    cli = program("NTCP_CLI")
    with ntcp.Context(stun_servers=[stuntd]) as ctx:
        mine = ctx.discover(timeout=10, ipv6=False)
    out = subprocess.run([cli, "discover", "--server", stuntd, "-4", "--json"],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, NTCP_CONFIG=os.devnull))
    theirs = json.loads(out.stdout)
    assert mine["status"] == "complete" and mine["server"] == theirs["server"]
    assert mine.keys() == theirs.keys()
    for part in ("udp4", "tcp4", "udp6", "tcp6"):
        assert mine[part].keys() == theirs[part].keys(), part
        if not mine[part]["probed"]:
            continue
        for k in ("reach", "mapping", "filtering", "ports", "hairpin", "syn", "classic", "ntcp02"):
            assert mine[part][k] == theirs[part][k], (part, k)
        assert mine[part]["mapped"].startswith("127.0.0.1:")
    assert mine["tcp4"]["reach"] == "open" and mine["udp4"]["reach"] == "open"
    assert not mine["udp6"]["probed"]


def test_sync_connect_accept(broker, workdir):
    a_data, b_data = os.urandom(MiB), os.urandom(MiB)
    with ctx_for(broker, "bob") as bob, ctx_for(broker, "alice") as alice:
        bob.listen(timeout=30)
        result = {}

        def serve():
            sock, info = bob.accept(timeout=60)
            result["info"] = info
            result["got"] = exchange(sock, b_data)
        t = threading.Thread(target=serve)
        t.start()
        sock, info = alice.connect("bob", timeout=30)
        assert sock.type == ntcp._socket.SOCK_STREAM
        got = exchange(sock, a_data)
        t.join(60)
    assert hashlib.sha256(got).digest() == hashlib.sha256(b_data).digest()
    assert hashlib.sha256(result["got"]).digest() == hashlib.sha256(a_data).digest()
    assert info.peer == "bob" and info.initiator and info.transport == "tcp"
    assert info.method and info.remote is not None and info.verified_ms >= info.connected_ms >= 0
    assert result["info"].peer == "alice" and not result["info"].initiator


def test_unknown_peer_and_refusal(broker, workdir):
    with ctx_for(broker, "bob") as bob, ctx_for(broker, "mallory") as mallory:
        bob.set_policy(lambda peer, transport: peer != "mallory")
        bob.listen(timeout=30)
        with pytest.raises(ntcp.NoPeerError) as e:
            mallory.connect("nobody", timeout=20)
        assert e.value.name == "NTCP_ENOPEER"
        with pytest.raises(ntcp.RefusedError) as e:
            mallory.connect("bob", timeout=20)
        assert e.value.name == "NTCP_EREFUSED" and e.value.reason


def test_udp_punch(broker, workdir):
    with ctx_for(broker, "bob") as bob, ctx_for(broker, "alice") as alice:
        bob.listen(timeout=30)
        got = {}

        def serve():
            sock, info = bob.accept(timeout=60)
            got["info"] = info
            sock.settimeout(20)
            while True:
                d = sock.recv(2048)
                if not ntcp.is_control(d):
                    break
            sock.send(d[::-1])
            bob.udp_close(sock)
        t = threading.Thread(target=serve)
        t.start()
        sock, info = alice.udp_punch("bob", timeout=30)
        assert sock.type == ntcp._socket.SOCK_DGRAM and info.transport == "udp"
        sock.send(b"datagram from alice")
        sock.settimeout(20)
        while True:
            d = sock.recv(2048)
            if not ntcp.is_control(d):
                break
        t.join(30)
        alice.udp_close(sock)
    assert d == b"datagram from alice"[::-1]
    assert got["info"].transport == "udp" and got["info"].peer == "alice"


def test_asyncio(broker, workdir):
    a_data, b_data = os.urandom(MiB), os.urandom(MiB)

    async def main():
        with ctx_for(broker, "bob") as bob, ctx_for(broker, "alice") as alice:
            received = asyncio.get_running_loop().create_future()

            async def handle(reader, writer):
                writer.write(b_data)
                await writer.drain()
                writer.write_eof()
                data = await reader.read()
                writer.close()
                received.set_result((data, writer.ntcp_info))
            async with await ntcp.start_server(bob, "bob", handle) as srv:
                assert srv.is_serving()
                reader, writer = await ntcp.open_connection(alice, "bob")
                writer.write(a_data)
                await writer.drain()
                writer.write_eof()
                got = await reader.read()
                writer.close()
                await writer.wait_closed()
                bob_got, bob_info = await asyncio.wait_for(received, 30)
            assert not srv.is_serving()
            return got, writer.ntcp_info, bob_got, bob_info
    got, info, bob_got, bob_info = asyncio.run(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(b_data).digest()
    assert hashlib.sha256(bob_got).digest() == hashlib.sha256(a_data).digest()
    assert info.peer == "bob" and bob_info.peer == "alice"


def run_pair(broker, workdir, listen_style, connect_style):
    """peer.py as listener bob and connector alice, each in a process of its
    own; returns both JSON reports."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    out_b = os.path.join(workdir, "bob-%s.out" % listen_style)
    with open(out_b, "w") as f:
        bob = subprocess.Popen([sys.executable, PEER, "--style", listen_style, "--listen", "bob",
                                "--broker", broker], stdout=f, stderr=subprocess.STDOUT,
                               cwd=workdir, env=env)
    try:
        assert wait_text(out_b, "registered", bob), open(out_b).read()
        alice = subprocess.run([sys.executable, PEER, "--style", connect_style, "--connect", "bob",
                                "--name", "alice", "--broker", broker], capture_output=True,
                               text=True, cwd=workdir, env=env, timeout=120)
        assert alice.returncode == 0, alice.stdout + alice.stderr
        bob.wait(60)
        assert bob.returncode == 0, open(out_b).read()
    finally:
        if bob.poll() is None:
            bob.kill()
            bob.wait()
    rb = json.loads([l for l in open(out_b).read().splitlines() if l.startswith("{")][-1])
    ra = json.loads([l for l in alice.stdout.splitlines() if l.startswith("{")][-1])
    return ra, rb


@pytest.mark.parametrize("listen_style,connect_style",
                         [("twisted", "twisted"), ("sync", "twisted"), ("twisted", "asyncio")])
def test_styles_in_processes(broker, workdir, listen_style, connect_style):
    pytest.importorskip("twisted")
    ra, rb = run_pair(broker, workdir, listen_style, connect_style)
    assert ra["received"] == rb["sent"] and rb["received"] == ra["sent"]
    assert ra["received_bytes"] == MiB and rb["received_bytes"] == MiB
    assert ra["peer"] == "bob" and rb["peer"] == "alice" and ra["method"]


TWISTED_SCRIPT = r"""
import json, sys
from twisted.internet import defer, protocol, task
import ntcp, ntcp.twisted

@defer.inlineCallbacks
def main(reactor):
    nat = ntcp.twisted.NatConnectivity(reactor, protocol.ClientFactory(), broker=sys.argv[1],
                                       name="carol", key_file="carol.key",
                                       stun_servers=[sys.argv[2]])
    profile = yield nat.natDiscovery()
    failure = None
    try:
        yield nat.connectTCP("nobody")
    except ntcp.NtcpError as e:
        failure = e.name
    refused = None
    try:
        yield nat.connectTCP("nobody", localPort=1234)
    except ValueError:
        refused = True
    yield nat.close()
    print(json.dumps({"status": profile["status"], "type": nat.type, "delta": nat.delta,
                      "publicIp": nat.publicIp, "publicAddr": nat.publicAddr,
                      "failure": failure, "refused": refused}))
task.react(main)
"""


def test_twisted_discovery_and_failure(broker, stuntd, workdir):
    """natDiscovery() fires with the profile and fills NTCP 0.2's attributes;
    connectTCP() to an unknown peer fails with NTCP_ENOPEER; NTCP 0.2's
    localPort is refused."""
    pytest.importorskip("twisted")
    r = subprocess.run([sys.executable, "-c", TWISTED_SCRIPT, broker, stuntd], cwd=workdir,
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(PEER), "..")))
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["status"] == "complete"
    assert out["type"] == "None" and out["delta"] == 0  # loopback: no NAT
    assert out["publicIp"] == "127.0.0.1" and out["publicAddr"][0] == "127.0.0.1"
    assert out["failure"] == "NTCP_ENOPEER" and out["refused"] is True
