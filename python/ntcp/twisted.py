"""twisted.py: NTCP 0.2's NatConnectivity on libntcp, for Twisted programs.
natDiscovery(), listenTCP(myUri, factory) and connectTCP(remoteUri,
factory) return Deferreds as they did in NTCP 0.2; the library's blocking
calls run in the reactor's thread pool and each connected socket is handed
to the reactor with adoptStreamConnection(), so the factory's protocols see
an ordinary TCP transport (docs/python.md, "Porting from NTCP 0.2")."""

import socket

from twisted.internet import defer, threads

import ntcp

# How long one accept() in the thread pool waits before it looks whether
# listening was stopped: the most stopListening() waits.
_ACCEPT_SLICE = 0.25


class _Capture:
    """A factory in front of the user's: the reactor builds the protocol
    through it, so that connectTCP's Deferred can fire with that protocol."""

    def __init__(self, factory):
        self.factory = factory
        self.protocol = None

    def buildProtocol(self, addr):
        self.protocol = self.factory.buildProtocol(addr)
        return self.protocol

    def __getattr__(self, name):
        return getattr(self.factory, name)


class NatListeningPort:
    """What listenTCP's Deferred fires with: stopListening() ends the
    accepting (a Deferred that fires once it has)."""

    def __init__(self, nat, uri, factory):
        self._nat, self.uri, self.factory = nat, uri, factory
        self._stopped = False
        self._done = defer.Deferred()

    def _loop(self, _=None):
        if self._stopped:
            self._done.callback(None)
            return
        d = self._nat._inThread(self._nat.context.accept, _ACCEPT_SLICE)
        d.addCallbacks(self._accepted, self._failed)

    def _accepted(self, result):
        sock, info = result
        if self._stopped or info.transport != "tcp":
            sock.close()
        else:
            self._nat._adopt(sock, info, self.factory)
        self._loop()

    def _failed(self, failure):
        if failure.check(ntcp.TimeoutError):
            self._loop()
        else:
            self._stopped = True
            self._done.callback(None)

    def stopListening(self):
        self._stopped = True
        return self._done


class NatConnectivity:
    """NTCP 0.2's interface. NatConnectivity(reactor, factory=None,
    context=None, config=None, **settings): an ntcp.Context is made from
    config (an INI file, NTCP 0.2's p2pNetwork.conf keys included) or
    settings (broker, name, stun_servers, ...) unless one is given.

    Attributes filled by natDiscovery(), as NTCP 0.2's NAT object had them:
    type (NTCP 0.2's name: None, Independent, AddressDependent,
    AddressPortDependent, SessionDependent), delta, publicIp, privateIp,
    publicAddr, privateAddr."""

    def __init__(self, reactor, factory=None, context=None, config=None, **settings):
        self.reactor = reactor
        self.factory = factory
        self._own = context is None
        self.context = context if context is not None else ntcp.Context(config, **settings)
        self.type = self.delta = self.publicIp = self.privateIp = None
        self.publicAddr = self.privateAddr = (None, None)
        self._ports = []

    def _inThread(self, fn, *args):
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def _adopt(self, sock, info, factory):
        capture = _Capture(factory)
        family = socket.AF_INET6 if sock.family == socket.AF_INET6 else socket.AF_INET
        try:
            # The reactor takes a duplicate of the descriptor; ours is closed.
            self.reactor.adoptStreamConnection(sock.fileno(), family, capture)
        finally:
            sock.close()
        if capture.protocol is not None:
            capture.protocol.ntcpInfo = info
        return capture.protocol

    def setFactory(self, factory):
        self.factory = factory

    def getFactory(self):
        return self.factory

    def natDiscovery(self, bloking=1):
        """Discovers the NAT; a Deferred that fires with the profile (the
        dict of Context.discover(), docs/discover.md). `bloking` is accepted
        for NTCP 0.2's callers: discovery never blocks the reactor."""
        d = self._inThread(self.context.discover)

        def found(profile):
            part = profile["tcp4"] if profile["tcp4"].get("probed") else profile["udp4"]
            if part.get("probed"):
                self.type = part["ntcp02"]
                self.delta = part["delta"]
                mapped = part["mapped"].rsplit(":", 1) if part["mapped"] else [None, None]
                local = part["local"].rsplit(":", 1) if part["local"] else [None, None]
                self.publicIp, self.privateIp = mapped[0], local[0]
                self.publicAddr = (mapped[0], int(mapped[1]) if mapped[1] else None)
                self.privateAddr = (local[0], int(local[1]) if local[1] else None)
            return profile
        return d.addCallback(found)

    def listenTCP(self, myUri, factory=None):
        """Registers myUri with the broker and adopts each verified incoming
        connection with factory (or the one given before). A Deferred that
        fires with a NatListeningPort once registered."""
        factory = factory or self.factory
        if factory is None:
            return defer.fail(ValueError("listenTCP needs a factory"))
        self.factory = factory
        d = self._inThread(self.context.listen, myUri)

        def registered(_):
            port = NatListeningPort(self, myUri, factory)
            self._ports.append(port)
            port._loop()
            return port
        return d.addCallback(registered)

    # NTCP 0.2's other name for registering.
    def registrationToCB(self, uri, factory=None):
        return self.listenTCP(uri, factory)

    def connectTCP(self, remoteUri=None, factory=None, localPort=0, remoteAddress=None,
                   timeout=30.0):
        """Opens a TCP connection to the peer registered as remoteUri and
        gives it to factory's protocol. A Deferred that fires with that
        protocol (its ntcpInfo attribute says how the connection was made),
        or fails with an ntcp.NtcpError. NTCP 0.2's localPort and
        remoteAddress are not supported: the library picks ports and finds
        addresses through the broker."""
        factory = factory or self.factory
        if factory is None:
            return defer.fail(ValueError("connectTCP needs a factory"))
        if localPort or remoteAddress is not None or remoteUri is None:
            return defer.fail(ValueError("connectTCP takes a remoteUri; localPort and "
                                         "remoteAddress are not supported"))
        d = self._inThread(self.context.connect, remoteUri, timeout)
        return d.addCallback(lambda r: self._adopt(r[0], r[1], factory))

    def close(self):
        """Stops listening; closes the context when this object made it.
        A Deferred."""
        ds = [p.stopListening() for p in self._ports]
        self._ports = []
        d = defer.DeferredList(ds)

        def done(_):
            if self._own:
                self.context.close()
        return d.addCallback(done)
