#!/usr/bin/python3
"""peer.py: one ntcp peer in one of the Python binding's three styles
(sync: Context.accept/connect; asyncio: start_server/open_connection;
twisted: NatConnectivity.listenTCP/connectTCP), used by the tests on
loopback and in the lab. Each end sends BYTES of data derived from its own
name, half-closes, reads the other's data to the end, and prints one JSON
line: the SHA-256 of what it sent and of what it received, the method and
the peer. The test compares the hashes across the two ends.

  peer.py --style S --listen NAME --broker B [--stun S]
  peer.py --style S --connect PEER --name NAME --broker B [--stun S]

Keys are made in the current directory (NAME.key). A listener prints
"registered" on its own line once the broker has its name."""

import argparse
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ntcp  # noqa: E402
from helpers import exchange, payload  # noqa: E402


def report(name, sent, received, info):
    print(json.dumps({"name": name, "sent": hashlib.sha256(sent).hexdigest(),
                      "received": hashlib.sha256(received).hexdigest(),
                      "received_bytes": len(received), "method": info.method,
                      "peer": info.peer, "transport": info.transport}), flush=True)


def context(a, name):
    return ntcp.Context(broker=a.broker, name=name, key_file=name + ".key",
                        stun_servers=[a.stun] if a.stun else [])


def run_sync(a, me, data):
    with context(a, me) as ctx:
        if a.listen:
            ctx.listen(timeout=30)
            print("registered", flush=True)
            sock, info = ctx.accept(timeout=a.timeout)
        else:
            sock, info = ctx.connect(a.connect, timeout=a.timeout)
        got = exchange(sock, data)
        report(me, data, got, info)


def run_asyncio(a, me, data):
    import asyncio

    async def exchange(reader, writer):
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        got = await reader.read()
        writer.close()
        await writer.wait_closed()
        report(me, data, got, writer.ntcp_info)

    async def main():
        with context(a, me) as ctx:
            if a.listen:
                done = asyncio.get_running_loop().create_future()

                async def cb(reader, writer):
                    await exchange(reader, writer)
                    done.set_result(None)
                srv = await ntcp.start_server(ctx, me, cb)
                print("registered", flush=True)
                await asyncio.wait_for(done, a.timeout)
                srv.close()
                await srv.wait_closed()
            else:
                reader, writer = await ntcp.open_connection(ctx, a.connect, timeout=a.timeout)
                await exchange(reader, writer)
    asyncio.run(main())


def run_twisted(a, me, data):
    from twisted.internet import defer, interfaces, protocol, task
    from zope.interface import implementer
    import ntcp.twisted

    @implementer(interfaces.IHalfCloseableProtocol)
    class Exchange(protocol.Protocol):
        def connectionMade(self):
            self.got = bytearray()
            self.transport.write(data)
            self.transport.loseWriteConnection()

        def dataReceived(self, b):
            self.got.extend(b)

        def readConnectionLost(self):
            self.transport.loseConnection()

        def writeConnectionLost(self):
            pass

        def connectionLost(self, reason):
            report(me, data, bytes(self.got), self.ntcpInfo)
            self.factory.done.callback(None)

    class Factory(protocol.ClientFactory):
        protocol = Exchange

        def __init__(self):
            self.done = defer.Deferred()

    @defer.inlineCallbacks
    def main(reactor):
        f = Factory()
        nat = ntcp.twisted.NatConnectivity(reactor, f, broker=a.broker, name=me,
                                           key_file=me + ".key",
                                           stun_servers=[a.stun] if a.stun else [])
        if a.listen:
            yield nat.listenTCP(me)
            print("registered", flush=True)
        else:
            yield nat.connectTCP(a.connect)
        yield f.done.addTimeout(a.timeout, reactor)
        yield nat.close()
    task.react(main)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--style", choices=("sync", "asyncio", "twisted"), required=True)
    p.add_argument("--listen", metavar="NAME")
    p.add_argument("--connect", metavar="PEER")
    p.add_argument("--name")
    p.add_argument("--broker", required=True)
    p.add_argument("--stun")
    p.add_argument("--bytes", type=int, default=1 << 20)
    p.add_argument("--timeout", type=float, default=60)
    a = p.parse_args()
    if bool(a.listen) == bool(a.connect) or (a.connect and not a.name):
        p.error("--listen NAME, or --connect PEER --name NAME")
    me = a.listen or a.name
    data = payload(me, a.bytes)
    {"sync": run_sync, "asyncio": run_asyncio, "twisted": run_twisted}[a.style](a, me, data)


if __name__ == "__main__":
    main()
