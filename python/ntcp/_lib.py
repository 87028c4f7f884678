"""_lib.py: the ctypes binding of libntcp.so: the library found and loaded,
the structs of include/ntcp.h laid out as C lays them out, and the function
prototypes. Nothing here is for users; ntcp/__init__.py is the API.

The library is libntcp.so.0 (the SONAME this binding's layouts were written
for), found by the dynamic loader (LD_LIBRARY_PATH, ld.so.cache, the system
directories), or the file named by $NTCP_LIBRARY."""

import ctypes
import os

# The SONAME major this binding matches; a library with another one has
# other structs or functions.
SOVERSION = 0


def _load():
    path = os.environ.get("NTCP_LIBRARY")
    names = [path] if path else ["libntcp.so.%d" % SOVERSION]
    last = None
    for name in names:
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            last = e
    raise ImportError("ntcp: cannot load libntcp (%s); install it, or set NTCP_LIBRARY "
                      "to the path of libntcp.so.%d" % (last, SOVERSION))


lib = _load()

c_int, c_uint, c_size_t, c_char_p, c_void_p = (ctypes.c_int, ctypes.c_uint, ctypes.c_size_t,
                                                ctypes.c_char_p, ctypes.c_void_p)


class sockaddr_storage(ctypes.Structure):
    # Linux: sa_family_t, padding, an unsigned long for alignment: 128 bytes.
    _fields_ = [("ss_family", ctypes.c_ushort),
                ("data", ctypes.c_ubyte * 118),
                ("_align", ctypes.c_ulong)]


class nat_behaviour(ctypes.Structure):
    _fields_ = [("reach", c_int), ("mapping", c_int), ("filtering", c_int), ("ports", c_int),
                ("delta", c_int), ("hairpin", c_int), ("syn", c_int), ("lifetime_s", c_int),
                ("local", sockaddr_storage), ("mapped", sockaddr_storage),
                ("why", ctypes.c_char * 256)]


class nat_profile(ctypes.Structure):
    _fields_ = [("size", c_size_t), ("flags", c_uint), ("server", ctypes.c_char * 256),
                ("udp4", nat_behaviour), ("tcp4", nat_behaviour),
                ("udp6", nat_behaviour), ("tcp6", nat_behaviour),
                ("elapsed_ms", ctypes.c_uint32), ("rtt_ms", ctypes.c_uint32)]


class config(ctypes.Structure):
    _fields_ = [("size", c_size_t), ("stun_servers", ctypes.POINTER(c_char_p)),
                ("n_stun_servers", c_size_t), ("broker", c_char_p), ("name", c_char_p),
                ("key_file", c_char_p), ("broker_tls", c_int), ("broker_ca", c_char_p),
                ("broker_pin", c_char_p), ("broker_tls_insecure", c_int), ("relay", c_int),
                ("methods", c_char_p)]


class conn_info(ctypes.Structure):
    _fields_ = [("size", c_size_t), ("transport", c_int), ("peer", ctypes.c_char * 65),
                ("initiator", c_int), ("method", ctypes.c_char * 16),
                ("local", sockaddr_storage), ("remote", sockaddr_storage),
                ("public_addr", sockaddr_storage), ("peer_public", sockaddr_storage),
                ("broker_ms", ctypes.c_int64), ("start_ms", ctypes.c_int64),
                ("connected_ms", ctypes.c_int64), ("verified_ms", ctypes.c_int64),
                ("rtt_ms", ctypes.c_uint32), ("attempts", c_uint),
                ("detail", ctypes.c_char * 256)]


def _proto(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


ctx_p = c_void_p
beh_p = ctypes.POINTER(nat_behaviour)

config_init = _proto("ntcp_config_init", None, ctypes.POINTER(config))
new = _proto("ntcp_new", c_int, ctypes.POINTER(config), ctypes.POINTER(ctx_p))
new_from_file = _proto("ntcp_new_from_file", c_int, c_char_p, ctypes.POINTER(ctx_p))
add_stun_server = _proto("ntcp_add_stun_server", c_int, ctx_p, c_char_p)
free = _proto("ntcp_free", None, ctx_p)
stop = _proto("ntcp_stop", None, ctx_p)
get_broker = _proto("ntcp_get_broker", c_char_p, ctx_p)
get_name = _proto("ntcp_get_name", c_char_p, ctx_p)
get_key_file = _proto("ntcp_get_key_file", c_char_p, ctx_p)
get_relay = _proto("ntcp_get_relay", c_int, ctx_p)
get_methods = _proto("ntcp_get_methods", c_char_p, ctx_p)
get_stun_server = _proto("ntcp_get_stun_server", c_char_p, ctx_p, c_size_t)
discover_ex = _proto("ntcp_discover_ex", c_int, ctx_p, c_uint, ctypes.POINTER(nat_profile), c_int)
get_profile = _proto("ntcp_get_profile", c_int, ctx_p, ctypes.POINTER(nat_profile))
listen = _proto("ntcp_listen", c_int, ctx_p, c_char_p, c_int)
accept = _proto("ntcp_accept", c_int, ctx_p, ctypes.POINTER(conn_info), c_int)
connect = _proto("ntcp_connect", c_int, ctx_p, c_char_p, ctypes.POINTER(conn_info), c_int)
udp_punch = _proto("ntcp_udp_punch", c_int, ctx_p, c_char_p, ctypes.POINTER(conn_info), c_int)
udp_close = _proto("ntcp_udp_close", c_int, ctx_p, c_int)
udp_is_control = _proto("ntcp_udp_is_control", c_int, c_char_p, c_size_t)
strerror = _proto("ntcp_strerror", c_char_p, c_int)
version = _proto("ntcp_version", c_char_p)
reach_name = _proto("ntcp_reach_name", c_char_p, c_int)
dep_name = _proto("ntcp_dep_name", c_char_p, c_int)
ports_name = _proto("ntcp_ports_name", c_char_p, c_int)
syn_name = _proto("ntcp_syn_name", c_char_p, c_int)
tristate_name = _proto("ntcp_tristate_name", c_char_p, c_int)
classic_name = _proto("ntcp_classic_name", c_char_p, beh_p)
legacy_type = _proto("ntcp_legacy_type", c_int, beh_p)
legacy_name = _proto("ntcp_legacy_name", c_char_p, c_int)
policy_fn = ctypes.CFUNCTYPE(c_int, ctx_p, c_char_p, c_int, c_void_p)
set_policy = _proto("ntcp_set_policy", c_int, ctx_p, policy_fn, c_void_p)

# The NTCP_DISCOVER_* flags.
DISCOVER_UDP, DISCOVER_TCP, DISCOVER_IPV4, DISCOVER_IPV6, DISCOVER_LIFETIME = 1, 2, 4, 8, 16
