/*
 * session.h: a peer's session with the connection broker, on a libuv loop.
 * It registers a name (proving its Ed25519 key), keeps the registration and
 * the NAT mappings alive, registers again after the broker restarts or the
 * network changes, hands incoming connect offers to a policy callback, and
 * asks the broker to connect to a name. Internal to libntcp: the traversal
 * engine drives it. Protocol: docs/broker-protocol.md.
 */
#ifndef NTCP_SESSION_H
#define NTCP_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/evp.h>
#include <uv.h>

#include "broker_proto.h"

typedef struct ntcp_session ntcp_session;

enum ntcp_session_state {
    NTCP_SESSION_IDLE = 0,       /* waiting to (re)connect after a backoff */
    NTCP_SESSION_CONNECTING = 1, /* TCP connect or registration in progress */
    NTCP_SESSION_REGISTERED = 2,
    NTCP_SESSION_CLOSED = 3,     /* ntcp_session_close() was called */
};

/* An incoming offer: return true to accept the connect, false to refuse it.
 * from (and its profile) is valid during the call only. */
typedef bool (*ntcp_session_offer_fn)(ntcp_session *s, const broker_peer_info *from, void *user);
/* The target side's CONNECT-GO, after an accepted offer. go is valid during
 * the call only. */
typedef void (*ntcp_session_go_fn)(ntcp_session *s, const broker_go *go, void *user);
/* Every state change. err is 0, or why the session was lost or refused
 * (NTCP_E*); code is the broker's error code when it refused (403 not
 * authorized or bad signature, 409 name bound to another key or replaced by
 * a newer session with our key, 438 stale challenge...). The session keeps
 * retrying with backoff in every case; the application may close it. */
typedef void (*ntcp_session_state_fn)(ntcp_session *s, int state, int err, int code, void *user);
/* A RAW-ISN relayed by the broker (STUNT#1, NATBlaster): the other end of
 * the connect with this nonce sent the ISN of its low-TTL SYN, sent from
 * ext (its external address). Valid during the call only. */
typedef void (*ntcp_session_raw_isn_fn)(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                                        const struct sockaddr_storage *ext, uint32_t isn, void *user);

/* A RELAY-ADDR relayed by the broker (docs/relay.md): the other end of the
 * connect with this nonce has a TURN allocation at relayed (ss_family 0:
 * it offers no relay, and why says why, or ""). Valid during the call only. */
typedef void (*ntcp_session_relay_addr_fn)(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                                           const struct sockaddr_storage *relayed, const char *why,
                                           void *user);

typedef struct ntcp_session_config {
    /* The broker (required): "host:port", or a list of them separated by
     * commas or spaces ("a:3490, b:3490"); a host is an address or a DNS
     * name, resolved on the loop's thread pool (uv_getaddrinfo), each of
     * its addresses a candidate. The session starts at a random candidate
     * (peers spread over a cluster's nodes), moves to the next one at once
     * when the one it uses is lost or fails, and resolves the names again
     * after a round in which every candidate failed. */
    const char *broker;
    const char *broker_udp;  /* "IP:PORT" for UDP keepalives, or NULL */
    bool udp_at_broker;      /* UDP keepalives to the address and port of the
                              * broker in use (ntcp-brokerd's default);
                              * instead of broker_udp */
    const char *name;        /* the name to register (required) */
    EVP_PKEY *key;           /* Ed25519 identity, borrowed: must outlive the session */
    const char *broker_id;   /* the broker identity we expect; NULL: the one it presents */
    /* copied; up to BROKER_MAX_PRIVATE. A port of 0 is sent as the session's
     * local TCP port (where same-LAN peers connect). */
    const struct sockaddr_storage *private_addrs;
    size_t nprivate;
    const uint8_t *profile;  /* NAT profile blob, copied; up to BROKER_PROFILE_MAX */
    size_t profile_len;
    uint32_t accept_all;     /* BROKER_ACCEPT_*: see ntcp_session_set_accept_all() */
    uint32_t refresh_ms;     /* 0: a third of the broker's expiry */
    uint32_t backoff_min_ms; /* first reconnect delay; 100 */
    uint32_t backoff_max_ms; /* 5000, and never more than the refresh period */
    uint32_t request_timeout_ms; /* an unanswered REGISTER/REFRESH ends the session; 5000 */
    ntcp_session_offer_fn on_offer; /* NULL: accept every offer */
    ntcp_session_go_fn on_go;
    ntcp_session_state_fn on_state;
    ntcp_session_raw_isn_fn on_raw_isn; /* NULL: RAW-ISN indications are ignored */
    ntcp_session_relay_addr_fn on_relay_addr; /* NULL: RELAY-ADDR indications are ignored */
    void *user;
    /* TLS 1.3 to the broker (docs/broker-protocol.md 1), when tls is set. The
     * broker's certificate is checked against tls_ca_file (PEM trust
     * anchors; NULL and no pin: the system's) and tls_host (a DNS name, also
     * sent as SNI; NULL: the broker's IP address), or against tls_pin
     * ("sha256/BASE64" of its SubjectPublicKeyInfo, several separated by
     * commas; a pin alone accepts a self-signed certificate), or both.
     * tls_insecure checks nothing and is never implied. A refused
     * certificate ends the attempt with NTCP_ECERT, any other TLS failure
     * with NTCP_ETLS; ntcp_session_tls_error() says why. Strings are copied. */
    bool tls;
    bool tls_insecure;
    const char *tls_ca_file;
    const char *tls_host;
    const char *tls_pin;
} ntcp_session_config;

/* Starts the session on loop (it connects at once). *out is owned by the
 * caller and released with ntcp_session_close(). Returns 0, NTCP_EINVAL,
 * NTCP_ECONFIG (the TLS CA file does not load) or NTCP_ENOMEM. */
int ntcp_session_start(uv_loop_t *loop, const ntcp_session_config *cfg, ntcp_session **out);

/* Stops: pending requests complete with NTCP_ECLOSED, then the session is
 * freed once its handles are closed (the loop must run). */
void ntcp_session_close(ntcp_session *s);

int ntcp_session_state(const ntcp_session *s);
/* The TCP (and UDP, once a keepalive was answered) address the broker sees. */
int ntcp_session_public_addr(const ntcp_session *s, struct sockaddr_storage *out);
int ntcp_session_public_udp(const ntcp_session *s, struct sockaddr_storage *out);
/* This end's address of the TCP connection to the broker (its socket sets
 * SO_REUSEADDR and SO_REUSEPORT, so traversal attempts may bind the same
 * port), and of the UDP keepalive socket. NTCP_ENOTFOUND while there is none. */
int ntcp_session_local_addr(const ntcp_session *s, struct sockaddr_storage *out);
int ntcp_session_local_udp(const ntcp_session *s, struct sockaddr_storage *out);
/* Why the last TLS attempt failed ("certificate pin mismatch",
 * "certificate verify failed: ...", "the broker speaks TLS", ...), or "". */
const char *ntcp_session_tls_error(const ntcp_session *s);
/* Replaces the profile blob (copied) and, when registered, sends it to the
 * broker at once in a REFRESH; the broker forwards it in the next
 * CONNECT-GOs. Returns 0 or NTCP_EINVAL. */
int ntcp_session_set_profile(ntcp_session *s, const uint8_t *profile, size_t len);
/* The transports (BROKER_ACCEPT_TCP, BROKER_ACCEPT_UDP) whose connects this
 * peer accepts from anyone without being asked (ACCEPT-ALL): the broker
 * then sends the CONNECT-GOs at once, without an OFFER, and on_offer is not
 * called for them. Sent with the REGISTER, and at once in a REFRESH when
 * registered and changed. Returns 0 or NTCP_EINVAL. */
int ntcp_session_set_accept_all(ntcp_session *s, uint32_t transports);
/* Sends a RAW-ISN indication for the connect with this nonce: the ISN of
 * our low-TTL SYN, sent from ext (our external address for it); spoof asks
 * the broker for STUNT#1's spoofed SYN-ACKs. Returns 0, NTCP_EUNREACHABLE
 * (not registered) or NTCP_EINVAL. */
int ntcp_session_send_raw_isn(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                              const struct sockaddr_storage *ext, uint32_t isn, bool spoof);
/* Sends a RELAY-ADDR indication for the connect with this nonce: our
 * relayed address, or (relayed NULL) that we offer none and why (may be
 * NULL; cut to 200 bytes). Returns 0, NTCP_EUNREACHABLE (not registered)
 * or NTCP_EINVAL. */
int ntcp_session_send_relay_addr(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                                 const struct sockaddr_storage *relayed, const char *why);
/* Whether the broker said, when this session registered, that it spoofs
 * STUNT#1's SYN-ACKs (SPOOF in the REGISTER answer). */
bool ntcp_session_broker_spoofs(const ntcp_session *s);

/* True when the last change to NTCP_SESSION_IDLE came at the end of a
 * round in which every candidate broker failed before registering
 * (refused, unreachable, silent, closed, not resolved): the application
 * may give up at once instead of waiting. ntcp_session_last_error() says
 * why, per broker ("127.0.0.1:3490: connection refused"). */
bool ntcp_session_round_failed(const ntcp_session *s);
const char *ntcp_session_last_error(const ntcp_session *s);
/* The broker address in use or last tried (family 0: none yet). */
int ntcp_session_broker_addr(const ntcp_session *s, struct sockaddr_storage *out);

/* Parses a broker list as ntcp_session_config.broker takes it: up to max
 * entries, each host (a name or address, NUL-terminated) and its port
 * (required, not 0). Returns the number of entries or NTCP_EINVAL. */
#define NTCP_SESSION_MAX_BROKERS 8
int ntcp_broker_list_parse(const char *list, char (*hosts)[256], uint16_t *ports, size_t max);

/* How many times the session has registered (1 after the first). */
unsigned ntcp_session_registrations(const ntcp_session *s);
/* How many of them proved themselves with a resumption ticket instead of a
 * signature (docs/broker-protocol.md 4.1). */
unsigned ntcp_session_resumed(const ntcp_session *s);

/* Result of a connect: err 0 and go, or err < 0 (go NULL):
 *   NTCP_ENOTFOUND  the broker does not know the name (code 700);
 *   NTCP_EPROTO     the broker or the target refused (code: 603 declined,
 *                   408 target silent, 410 target gone, 429, 400...);
 *   NTCP_ETIMEDOUT  no answer within the timeout;
 *   NTCP_ECLOSED    the session was lost or closed first;
 *   NTCP_EUNREACHABLE  not registered when asked.
 * go (and its profile) is valid during the call only. */
typedef void (*ntcp_session_connect_cb)(ntcp_session *s, int err, int code, const broker_go *go,
                                        void *arg);
typedef void (*ntcp_session_lookup_cb)(ntcp_session *s, int err, int code,
                                       const broker_peer_info *peer, void *arg);

/* Asks the broker to connect to name. cb runs exactly once (never from
 * inside this call). Returns 0, NTCP_EINVAL or NTCP_ENOMEM. */
int ntcp_session_connect(ntcp_session *s, const char *name, uint32_t timeout_ms,
                         ntcp_session_connect_cb cb, void *arg);
int ntcp_session_lookup(ntcp_session *s, const char *name, uint32_t timeout_ms,
                        ntcp_session_lookup_cb cb, void *arg);
/* The same with a transport (enum broker_transport): BROKER_TRANSPORT_UDP
 * asks the broker for a UDP connect (the CONNECT carries TRANSPORT; the
 * target's OFFER and both CONNECT-GOs say go->transport == UDP and carry
 * each end's PUBLIC-UDP). ntcp_session_connect() is the TCP form. NTCP_EINVAL
 * for a transport this version does not know. */
int ntcp_session_connect_ex(ntcp_session *s, const char *name, uint32_t transport,
                            uint32_t timeout_ms, ntcp_session_connect_cb cb, void *arg);

/* The UDP keepalive socket, shared with the UDP punches (src/udp_punch.h).
 * It is the socket whose NAT mapping the broker saw and put in the
 * CONNECT-GOs (PUBLIC-UDP), so every punch sends from it: a fresh socket
 * would have a mapping nobody knows. *fd is a duplicate of it, the
 * caller's to close; the session keeps its own, goes on with its
 * keepalives from it, and reads it: what is not the broker's answer to a
 * keepalive goes to the sink (ntcp_session_set_udp_sink()), which hands
 * each punch its datagrams.
 *
 * The socket has SO_REUSEPORT (set after its bind, never SO_REUSEADDR: only
 * this user's sockets may join it), so a punch binds a socket
 * of its own to the same address and port and connect()s it to the peer
 * once it has a path: Linux gives a connected UDP socket every datagram of
 * its exact 4-tuple, and the rest to the one unconnected socket of the
 * port, this one (docs/udp.md, "One socket, many punches").
 *
 * local and public_udp (may be NULL) get the socket's local address and
 * the mapping the broker reported for it (family 0 if none yet). Returns 0,
 * NTCP_ENOTFOUND (no UDP socket: broker_udp not configured) or NTCP_ESYS. */
int ntcp_session_share_udp(ntcp_session *s, int *fd, struct sockaddr_storage *local,
                           struct sockaddr_storage *public_udp);

/* Receives, on the session's loop, each datagram on the UDP keepalive
 * socket that is not the broker's: from, and len bytes at buf (valid during
 * the call; len is more than VERIFY_MAX_MESSAGE when the datagram was
 * longer). fn NULL: they are dropped (the default). */
typedef void (*ntcp_session_udp_sink)(void *user, const struct sockaddr_storage *from,
                                      const uint8_t *buf, size_t len);
void ntcp_session_set_udp_sink(ntcp_session *s, ntcp_session_udp_sink fn, void *user);

/* Parses "IP:PORT" or "[IPv6]:PORT" (numeric only). Returns 0 or NTCP_EINVAL. */
int ntcp_parse_hostport(const char *s, struct sockaddr_storage *out);

#endif
