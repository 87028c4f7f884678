"""ntcp: plain TCP (and UDP) connections between hosts behind NATs, from
Python, over the installed C library libntcp (docs/python.md).

    import ntcp
    with ntcp.Context(broker="broker.example.net:3479", name="alice",
                      stun_servers=["stun.example.net"]) as ctx:
        sock, info = ctx.connect("bob")     # a connected socket.socket
        sock.sendall(b"hello")

Blocking calls release the GIL (ctypes does), so they may run in threads;
ntcp.open_connection() and ntcp.start_server() are their asyncio forms, and
ntcp.twisted.NatConnectivity is NTCP 0.2's Twisted interface."""

import builtins
import ctypes
import dataclasses
import socket as _socket
import struct

from . import _lib

__all__ = ["Context", "ConnInfo", "NtcpError", "NoPeerError", "RefusedError",
           "UnreachableError", "TimeoutError", "ConfigError", "ClosedError", "NotReadyError",
           "IntegrityError", "version", "open_connection", "start_server", "Server"]

# The NTCP_E* names of include/ntcp.h; values are stable, new ones appended.
ERROR_NAMES = {
    -1: "NTCP_EINVAL", -2: "NTCP_ENOMEM", -3: "NTCP_ENOSPC", -4: "NTCP_ETRUNCATED",
    -5: "NTCP_EMALFORMED", -6: "NTCP_EBADATTR", -7: "NTCP_EPADDING", -8: "NTCP_EFAMILY",
    -9: "NTCP_EINTEGRITY", -10: "NTCP_EFINGERPRINT", -11: "NTCP_ENOTFOUND",
    -12: "NTCP_ENOTSTUN", -13: "NTCP_ETIMEDOUT", -14: "NTCP_ESYS", -15: "NTCP_EUNREACHABLE",
    -16: "NTCP_ERANGE", -17: "NTCP_EPROTO", -18: "NTCP_ECONFIG", -19: "NTCP_ECLOSED",
    -20: "NTCP_ENOPEER", -21: "NTCP_EREFUSED", -22: "NTCP_ENOTREADY", -23: "NTCP_ETLS",
    -24: "NTCP_ECERT",
}


class NtcpError(Exception):
    """A libntcp error: code (negative NTCP_E* value), name ("NTCP_ENOPEER"),
    reason (ntcp_strerror()'s text), detail (what the connection report
    said, or "")."""

    def __init__(self, code, detail=""):
        self.code = code
        self.name = ERROR_NAMES.get(code, "NTCP_E%d" % -code)
        self.reason = _lib.strerror(code).decode()
        self.detail = detail
        msg = "%s: %s" % (self.name, self.reason)
        super().__init__(msg + (" (%s)" % detail if detail else ""))


class NoPeerError(NtcpError):
    """NTCP_ENOPEER: the broker knows no peer of that name."""


class RefusedError(NtcpError):
    """NTCP_EREFUSED: the peer's policy or the broker refused."""


class UnreachableError(NtcpError):
    """NTCP_EUNREACHABLE: no method traverses the NATs, or every attempt failed."""


class TimeoutError(NtcpError, builtins.TimeoutError):  # noqa: A001 (ntcp.TimeoutError)
    """NTCP_ETIMEDOUT; also a builtins.TimeoutError."""


class ConfigError(NtcpError):
    """NTCP_ECONFIG: no broker or name, or an invalid configuration."""


class ClosedError(NtcpError):
    """NTCP_ECLOSED: the context was closed."""


class NotReadyError(NtcpError):
    """NTCP_ENOTREADY: accept() before listen()."""


class IntegrityError(NtcpError):
    """NTCP_EINTEGRITY: something answered but could not prove the peer's key."""


_ERROR_CLASSES = {-20: NoPeerError, -21: RefusedError, -15: UnreachableError, -13: TimeoutError,
                  -18: ConfigError, -19: ClosedError, -22: NotReadyError, -9: IntegrityError}


def error(code, detail=""):
    """The exception for a negative NTCP_E* code."""
    return _ERROR_CLASSES.get(code, NtcpError)(code, detail)


def version():
    """The library's version string, e.g. "0.1.0"."""
    return _lib.version().decode()


def _check_version():
    major = int(version().split(".")[0])
    if major != _lib.SOVERSION:
        raise ImportError("ntcp: libntcp %s does not match this binding (major %d)"
                          % (version(), _lib.SOVERSION))


_check_version()


def _addr(ss):
    """A sockaddr_storage as socket's (host, port), or None."""
    raw = bytes(ctypes.string_at(ctypes.addressof(ss), ctypes.sizeof(ss)))
    if ss.ss_family == _socket.AF_INET:
        return (_socket.inet_ntop(_socket.AF_INET, raw[4:8]), struct.unpack("!H", raw[2:4])[0])
    if ss.ss_family == _socket.AF_INET6:
        return (_socket.inet_ntop(_socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0])
    return None


def _addr_str(ss):
    a = _addr(ss)
    if a is None:
        return ""
    return ("[%s]:%d" if ss.ss_family == _socket.AF_INET6 else "%s:%d") % a


@dataclasses.dataclass
class ConnInfo:
    """How a connection was made (ntcp_conn_info_t). Addresses are
    (host, port) tuples or None; times are milliseconds, -1 when the step
    did not happen."""
    transport: str = "tcp"
    peer: str = ""
    initiator: bool = False
    method: str = ""
    local: tuple = None
    remote: tuple = None
    public_addr: tuple = None
    peer_public: tuple = None
    broker_ms: int = -1
    start_ms: int = -1
    connected_ms: int = -1
    verified_ms: int = -1
    rtt_ms: int = 0
    attempts: int = 0
    detail: str = ""

    @classmethod
    def _from_c(cls, ci):
        return cls(transport="udp" if ci.transport == 1 else "tcp",
                   peer=ci.peer.decode(errors="replace"), initiator=bool(ci.initiator),
                   method=ci.method.decode(errors="replace"), local=_addr(ci.local),
                   remote=_addr(ci.remote), public_addr=_addr(ci.public_addr),
                   peer_public=_addr(ci.peer_public), broker_ms=ci.broker_ms,
                   start_ms=ci.start_ms, connected_ms=ci.connected_ms,
                   verified_ms=ci.verified_ms, rtt_ms=ci.rtt_ms, attempts=ci.attempts,
                   detail=ci.detail.decode(errors="replace"))


def _behaviour(b, probed, tcp):
    """One part of the profile, as docs/discover.md's JSON schema has it."""
    why = b.why.decode(errors="replace")
    if not probed:
        return {"probed": False, "why": why}
    bp = ctypes.byref(b)
    return {
        "probed": True,
        "reach": _lib.reach_name(b.reach).decode(),
        "mapping": _lib.dep_name(b.mapping).decode(),
        "filtering": _lib.dep_name(b.filtering).decode(),
        "ports": _lib.ports_name(b.ports).decode(),
        "delta": b.delta,
        "hairpin": _lib.tristate_name(b.hairpin).decode(),
        "syn": _lib.syn_name(b.syn).decode() if tcp else None,
        "lifetime_s": b.lifetime_s,
        "classic": _lib.classic_name(bp).decode(),
        "ntcp02": _lib.legacy_name(_lib.legacy_type(bp)).decode(),
        "local": _addr_str(b.local),
        "mapped": _addr_str(b.mapped),
        "why": why,
    }


def _profile_dict(p, status):
    v4, v6 = p.flags & _lib.DISCOVER_IPV4, p.flags & _lib.DISCOVER_IPV6
    udp, tcp = p.flags & _lib.DISCOVER_UDP, p.flags & _lib.DISCOVER_TCP
    return {
        "version": 1,
        "status": "complete" if status == 0 else "partial" if status == -17 else "unreachable",
        "server": p.server.decode(errors="replace"),
        "elapsed_ms": p.elapsed_ms,
        "rtt_ms": p.rtt_ms,
        "udp4": _behaviour(p.udp4, bool(v4 and udp), False),
        "tcp4": _behaviour(p.tcp4, bool(v4 and tcp), True),
        "udp6": _behaviour(p.udp6, bool(v6 and udp), False),
        "tcp6": _behaviour(p.tcp6, bool(v6 and tcp), True),
    }


def _ms(timeout, default_none):
    """Seconds (float) to the library's milliseconds; None -> default_none."""
    if timeout is None:
        return default_none
    if timeout <= 0:
        return 0
    return max(1, int(timeout * 1000))  # a short timeout stays a timeout, not 0


_SETTINGS = ("stun_servers", "broker", "name", "key_file", "broker_tls", "broker_ca",
             "broker_pin", "broker_tls_insecure", "relay", "methods")
_RELAY = ("auto", "never", "always")  # ntcp_relay_policy_t's order


class Context:
    """An ntcp context (ntcp_t): its settings, its NAT discovery, its broker
    session and its connections.

    Context(config=None, **settings): config is the path of an INI file
    (docs/configuration.md; NTCP 0.2's p2pNetwork.conf keys are read too);
    settings are stun_servers (a list, or one string), broker
    ("host:port", "tls://host:port"), name, key_file, broker_tls,
    broker_ca, broker_pin, broker_tls_insecure, relay ("auto", "never",
    "always": docs/relay.md) and methods (the TCP methods plans may use, a
    list or a comma-separated string: docs/configuration.md). With a file, only
    stun_servers may be added to it. Close it with close() or a with block:
    blocked calls then raise ClosedError; sockets already returned stay open."""

    def __init__(self, config=None, **settings):
        unknown = set(settings) - set(_SETTINGS)
        if unknown:
            raise TypeError("unknown settings: " + ", ".join(sorted(unknown)))
        servers = settings.pop("stun_servers", None) or []
        if isinstance(servers, str):
            servers = [servers]
        self._policy_cb = None
        h = _lib.ctx_p()
        if config is not None:
            if settings:
                raise TypeError("with a configuration file, only stun_servers may be given")
            rc = _lib.new_from_file(str(config).encode(), ctypes.byref(h))
        else:
            # Zeroed, and sized as this binding knows it (not with
            # ntcp_config_init(), which would write a newer library's whole
            # struct): the library reads only what size covers.
            cfg = _lib.config()
            cfg.size = ctypes.sizeof(cfg)
            keep = {}  # the bytes objects must live until ntcp_new() copied them
            for k in ("broker", "name", "key_file", "broker_ca", "broker_pin"):
                if settings.get(k) is not None:
                    keep[k] = str(settings[k]).encode()
                    setattr(cfg, k, keep[k])
            for k in ("broker_tls", "broker_tls_insecure"):
                setattr(cfg, k, 1 if settings.get(k) else 0)
            relay = settings.get("relay") or "auto"
            if relay not in _RELAY:
                raise ValueError("relay must be one of %s: %r" % (", ".join(_RELAY), relay))
            cfg.relay = _RELAY.index(relay)
            methods = settings.get("methods")
            if methods is not None and not isinstance(methods, str):
                methods = ",".join(methods)
            if methods:
                keep["methods"] = methods.encode()
                cfg.methods = keep["methods"]
            rc = _lib.new(ctypes.byref(cfg), ctypes.byref(h))
        if rc < 0:
            raise error(rc)
        self._h = h
        for s in servers:
            rc = _lib.add_stun_server(self._h, str(s).encode())
            if rc < 0:
                self.close()
                raise error(rc, "stun server %r" % s)

    # -- life --
    def stop(self):
        """Stops the context's runtime (ntcp_stop): calls blocked in other
        threads raise the NTCP_ECLOSED error, later calls too; close() frees."""
        h = getattr(self, "_h", None)
        if h:
            _lib.stop(h)

    def close(self):
        """Stops the context's runtime and frees it (ntcp_stop, ntcp_free)."""
        h = getattr(self, "_h", None)
        if h:
            _lib.stop(h)  # other threads' calls return before the handle goes
        self._h = None
        if h:
            _lib.free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # at interpreter exit the binding may be gone already
            pass

    def _handle(self):
        if not self._h:
            raise ClosedError(-19)
        return self._h

    # -- settings --
    @property
    def broker(self):
        v = _lib.get_broker(self._handle())
        return v.decode() if v else None

    @property
    def name(self):
        v = _lib.get_name(self._handle())
        return v.decode() if v else None

    @property
    def key_file(self):
        v = _lib.get_key_file(self._handle())
        return v.decode() if v else None

    @property
    def relay(self):
        """"auto", "never" or "always" (ntcp_get_relay)."""
        return _RELAY[_lib.get_relay(self._handle())]

    @property
    def methods(self):
        """The TCP methods plans may use as set, or None for all (ntcp_get_methods)."""
        v = _lib.get_methods(self._handle())
        return v.decode() if v else None

    @property
    def stun_servers(self):
        out, i = [], 0
        while True:
            v = _lib.get_stun_server(self._handle(), i)
            if v is None:
                return out
            out.append(v.decode())
            i += 1

    def set_policy(self, fn):
        """fn(peer_name, transport) -> bool decides who may connect; called
        on the library's runtime thread for each offer. Set before listen()."""
        def trampoline(_ctx, peer, transport, _user):
            try:
                return 1 if fn(peer.decode(errors="replace"), "udp" if transport == 1 else "tcp") else 0
            except Exception:
                return 0
        self._policy_cb = _lib.policy_fn(trampoline)  # kept alive with the context
        rc = _lib.set_policy(self._handle(), self._policy_cb, None)
        if rc < 0:
            raise error(rc)

    # -- discovery --
    def discover(self, timeout=10.0, udp=True, tcp=True, ipv4=True, ipv6=True, lifetime=False):
        """NAT discovery against the context's STUN servers: the profile as a
        dict, as `ntcp discover --json` prints it (docs/discover.md), status
        "complete", "partial" or "unreachable". Other errors raise."""
        flags = ((_lib.DISCOVER_UDP if udp else 0) | (_lib.DISCOVER_TCP if tcp else 0)
                 | (_lib.DISCOVER_IPV4 if ipv4 else 0) | (_lib.DISCOVER_IPV6 if ipv6 else 0)
                 | (_lib.DISCOVER_LIFETIME if lifetime else 0))
        p = _lib.nat_profile()
        p.size = ctypes.sizeof(p)
        rc = _lib.discover_ex(self._handle(), flags, ctypes.byref(p), _ms(timeout, 10000))
        if rc < 0 and rc not in (-17, -15):
            raise error(rc)
        return _profile_dict(p, rc)

    def profile(self):
        """The profile the runtime discovered and registered, as discover()
        returns it, or None before there is one."""
        p = _lib.nat_profile()
        p.size = ctypes.sizeof(p)
        rc = _lib.get_profile(self._handle(), ctypes.byref(p))
        if rc == -22:
            return None
        return _profile_dict(p, rc)

    # -- connections --
    def listen(self, name=None, timeout=30.0):
        """Registers name (None: the context's) with the broker and accepts
        connections from then on."""
        rc = _lib.listen(self._handle(), name.encode() if name else None, _ms(timeout, 0))
        if rc < 0:
            raise error(rc)

    def _conn(self, fn, peer, timeout):
        ci = _lib.conn_info()
        ci.size = ctypes.sizeof(ci)
        fd = fn(self._handle(), peer.encode(), ctypes.byref(ci), _ms(timeout, 0))
        info = ConnInfo._from_c(ci)
        if fd < 0:
            raise error(fd, info.detail)
        return _socket.socket(fileno=fd), info

    def accept(self, timeout=None):
        """The next verified incoming connection: (socket.socket, ConnInfo).
        TCP, or UDP when the other end called udp_punch() (info.transport).
        timeout in seconds, None: wait for ever; TimeoutError after it."""
        ci = _lib.conn_info()
        ci.size = ctypes.sizeof(ci)
        fd = _lib.accept(self._handle(), ctypes.byref(ci), _ms(timeout, -1))
        if fd < 0:
            raise error(fd)
        return _socket.socket(fileno=fd), ConnInfo._from_c(ci)

    def connect(self, peer, timeout=30.0):
        """A TCP connection to the peer registered as `peer`:
        (socket.socket, ConnInfo)."""
        return self._conn(_lib.connect, peer, timeout)

    def udp_punch(self, peer, timeout=30.0):
        """A connected UDP socket to `peer`, punched through both NATs:
        (socket.socket, ConnInfo). Datagrams for which is_control() is true
        are ntcp's keepalives, to be ignored."""
        return self._conn(_lib.udp_punch, peer, timeout)

    def udp_close(self, sock):
        """Stops the library's keepalive of a punched UDP path at once and
        closes sock."""
        fd = sock.detach()
        rc = _lib.udp_close(self._handle(), fd)
        if rc < 0:
            raise error(rc)


def is_control(datagram):
    """True when a datagram received on a punched UDP socket is ntcp's own
    (a keepalive or a repeated handshake), not the peer application's."""
    return bool(_lib.udp_is_control(bytes(datagram), len(datagram)))


from .aio import open_connection, start_server, Server  # noqa: E402
