/*
 * verify.h: the key proof on a freshly connected TCP socket (docs/verify.md).
 * Before a punched socket is handed to the application, both ends prove on
 * it that they hold the Ed25519 keys the broker vouched for in CONNECT-GO,
 * bound to the session nonce, both names and keys, the signer's role and
 * fresh randomness. Version 2, half a round trip: each end sends its whole
 * flight (HELLO and PROOF) the moment the connection is up, signing what it
 * can build alone, and is done when the peer's flight has arrived and
 * checked out.
 *
 *   initiator (requester)                      responder (target)
 *     | HELLO  VERSION ROLE SESSION-ID NAME KEY RANDOM |
 *     | PROOF  SIGNATURE (over the signer's transcript) |
 *     |------------------------------------------------>|  (both at once,
 *     |<------------------------------------------------|   at t = 0)
 *     done at t = RTT/2                     done at t = RTT/2
 *
 * Three layers, each usable alone:
 *   - the codec: build and parse the messages, the transcript (pure);
 *   - the core: the state machine of one end, no I/O and no clock, fed with
 *     the bytes read and drained of the bytes to write (tests and fuzzing
 *     drive it directly);
 *   - the driver: the core on an already-connected socket on a libuv loop
 *     (uv_poll: the descriptor stays the caller's to hand on), with a
 *     deadline; and a blocking wrapper with a private loop.
 *
 * The core reads exactly one message at a time (header, then body), so it
 * never takes bytes that follow the peer's PROOF: data the peer sends right
 * after its proof stays in the socket for the application, and the verified
 * descriptor is handed over with its stream intact.
 *
 * Internal to libntcp; the traversal engine calls it after an attempt wins.
 */
#ifndef NTCP_VERIFY_H
#define NTCP_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <uv.h>

#include "broker_proto.h"
#include "identity.h"
#include "stun.h"

/* Version 2 only: an end that announces less is refused (docs/verify.md 7). */
#define VERIFY_PROTO_VERSION 2

/* Methods (private range 0x0E20-0x0E2F), all indications. */
#define VERIFY_HELLO 0x0E20  /* each end, first thing on the socket */
#define VERIFY_PROOF 0x0E21  /* each end, right after its HELLO, without waiting */
#define VERIFY_REFUSE 0x0E22 /* ERROR-CODE: why. Understood, never sent by version 2
                                (its PROOF is always out first: docs/verify.md 4) */

/* Attributes (comprehension-required range, 0x4E40-0x4E4F). */
#define VERIFY_ATTR_VERSION 0x4E40    /* u32: the highest version the sender speaks (>= 2) */
#define VERIFY_ATTR_ROLE 0x4E41       /* u32: the sender's role, enum broker_role */
#define VERIFY_ATTR_SESSION_ID 0x4E42 /* 16 bytes: SHA-256("NTCP-VERIFY-SESSION-1" || nonce)[0..16) */
#define VERIFY_ATTR_NAME 0x4E43       /* the sender's name, broker_name_valid() */
#define VERIFY_ATTR_PUBLIC_KEY 0x4E44 /* the sender's Ed25519 public key, 32 bytes */
#define VERIFY_ATTR_RANDOM 0x4E45     /* 32 fresh random bytes, per connection */
#define VERIFY_ATTR_SIGNATURE 0x4E46  /* Ed25519 signature of the sender's transcript, 64 bytes */

#define VERIFY_SESSION_ID_SIZE 16
#define VERIFY_RANDOM_SIZE 32
#define VERIFY_BINDING_SIZE 32
/* No verify message may be larger (a HELLO is under 200 bytes): a header
 * announcing more is refused at once, before its body is read. */
#define VERIFY_MAX_MESSAGE 512
#define VERIFY_DEFAULT_TIMEOUT_MS 5000

/* REFUSE codes (ERROR-CODE): what a received REFUSE may say. */
#define VERIFY_ERR_BAD_MESSAGE 400   /* not STUN, malformed, wrong method or order, bad version */
#define VERIFY_ERR_WRONG_PEER 403    /* NAME or PUBLIC-KEY is not what the broker vouched for */
#define VERIFY_ERR_WRONG_SESSION 404 /* SESSION-ID is not ours */
#define VERIFY_ERR_ROLE 409          /* same role as ours, or our own RANDOM (self-connect, reflection) */
#define VERIFY_ERR_UNKNOWN_ATTR 420

/* The transcript each end signs (docs/verify.md 2), version 2: only what
 * the signer knows before the peer has said anything, so that its PROOF can
 * leave with its HELLO.
 *   "NTCP-VERIFY-2"                  13 ASCII bytes
 *   u8 signer's role                 0 requester, 1 target
 *   u32 signer's VERSION             as announced in its HELLO
 *   SESSION-NONCE                    32
 *   signer's RANDOM                  32
 *   u8 len || requester's NAME
 *   requester's PUBLIC-KEY           32
 *   u8 len || target's NAME
 *   target's PUBLIC-KEY              32
 * The binding is computed once both flights are in, over both of them:
 *   SHA-256("NTCP-VERIFY-BINDING-2" || u32 requester's VERSION ||
 *           u32 target's VERSION || SESSION-NONCE || requester's RANDOM ||
 *           target's RANDOM || u8 len || requester's NAME ||
 *           requester's PUBLIC-KEY || u8 len || target's NAME ||
 *           target's PUBLIC-KEY)
 * equal at both ends after success, distinct for every connection. */
#define VERIFY_TRANSCRIPT_LABEL "NTCP-VERIFY-2"
#define VERIFY_BINDING_LABEL "NTCP-VERIFY-BINDING-2"
#define VERIFY_TRANSCRIPT_MAX \
    (13 + 1 + 4 + BROKER_NONCE_SIZE + VERIFY_RANDOM_SIZE + 2 * (1 + BROKER_NAME_MAX + BROKER_KEY_SIZE))

/* One end's view of a connection attempt, as CONNECT-GO gave it. */
typedef struct ntcp_verify_params {
    EVP_PKEY *key;    /* our Ed25519 identity; borrowed, must outlive the verify */
    const char *name; /* our registered name; copied */
    const char *peer_name;                  /* CONNECT-GO's NAME; copied */
    uint8_t peer_key[BROKER_KEY_SIZE];      /* CONNECT-GO's PUBLIC-KEY */
    uint8_t nonce[BROKER_NONCE_SIZE];       /* CONNECT-GO's SESSION-NONCE */
    uint32_t role;                          /* ours, CONNECT-GO's ROLE (enum broker_role) */
    uint32_t timeout_ms;                    /* the whole proof; 0: VERIFY_DEFAULT_TIMEOUT_MS */
} ntcp_verify_params;

/* Fills peer_name (pointing into go: go must outlive the start call),
 * peer_key, nonce and role from a CONNECT-GO; key, name and timeout_ms are
 * left for the caller. NTCP_EINVAL when go has no public key. */
int ntcp_verify_params_from_go(ntcp_verify_params *p, const broker_go *go);

/* ---- Codec (pure) ---- */

/* A parsed verify message; pointers point into the parsed buffer. */
typedef struct ntcp_verify_msg {
    uint16_t method; /* VERIFY_HELLO, VERIFY_PROOF or VERIFY_REFUSE */
    /* HELLO */
    uint32_t version, role;
    const uint8_t *session_id, *public_key, *random;
    const char *name;
    size_t name_len;
    /* PROOF */
    const uint8_t *signature;
    /* REFUSE */
    int code;
    const char *reason;
    size_t reason_len;
} ntcp_verify_msg;

/* Parses one whole message of exactly len bytes (at most
 * VERIFY_MAX_MESSAGE): a STUN indication with the magic cookie, one of the
 * three methods, each attribute of its method present exactly once with a
 * valid value, no other comprehension-required attribute (those are listed
 * in *unknown_type, the first one, when the result is NTCP_EBADATTR and
 * *unknown_type is nonzero). Comprehension-optional ones are ignored.
 * Returns 0, NTCP_ERANGE (too long), NTCP_ENOTSTUN, NTCP_EPROTO (wrong class,
 * method, no cookie) or a stun_parse() error / NTCP_EBADATTR. */
int ntcp_verify_parse(ntcp_verify_msg *out, const uint8_t *buf, size_t len, uint16_t *unknown_type);

/* SHA-256("NTCP-VERIFY-SESSION-1" || nonce), first 16 bytes. */
int ntcp_verify_session_id(const uint8_t nonce[BROKER_NONCE_SIZE],
                           uint8_t out[VERIFY_SESSION_ID_SIZE]);

/* The transcript above, made by the end of signer_role that announced
 * signer_version and drew signer_random. Names must be valid broker names.
 * Returns its length or NTCP_EINVAL / NTCP_ENOSPC. */
int ntcp_verify_transcript(uint8_t *out, size_t cap, uint32_t signer_role,
                           uint32_t signer_version, const uint8_t nonce[BROKER_NONCE_SIZE],
                           const uint8_t signer_random[VERIFY_RANDOM_SIZE], const char *req_name,
                           const uint8_t req_key[BROKER_KEY_SIZE], const char *tgt_name,
                           const uint8_t tgt_key[BROKER_KEY_SIZE]);

/* The binding above, from both flights. Returns 0, NTCP_EINVAL (bad name)
 * or NTCP_ENOMEM. */
int ntcp_verify_binding(uint8_t out[VERIFY_BINDING_SIZE], uint32_t req_version,
                        uint32_t tgt_version, const uint8_t nonce[BROKER_NONCE_SIZE],
                        const uint8_t req_random[VERIFY_RANDOM_SIZE],
                        const uint8_t tgt_random[VERIFY_RANDOM_SIZE], const char *req_name,
                        const uint8_t req_key[BROKER_KEY_SIZE], const char *tgt_name,
                        const uint8_t tgt_key[BROKER_KEY_SIZE]);

/* Builders: the message into buf, returning its length or a stun build
 * error (NTCP_ENOSPC). name must be valid. */
int ntcp_verify_build_hello(uint8_t *buf, size_t cap, uint32_t role,
                            const uint8_t session_id[VERIFY_SESSION_ID_SIZE], const char *name,
                            const uint8_t key[BROKER_KEY_SIZE],
                            const uint8_t random[VERIFY_RANDOM_SIZE]);
int ntcp_verify_build_proof(uint8_t *buf, size_t cap, const uint8_t sig[NTCP_ED25519_SIG]);
int ntcp_verify_build_refuse(uint8_t *buf, size_t cap, int code, const char *reason);

/* ---- Core: one end's state machine, no I/O ---- */

/* Our own flight is queued by ntcp_verify_core_init(), whatever the state:
 * the states only follow the peer's flight. */
enum ntcp_verify_state {
    VERIFY_WAIT_HELLO = 0,
    VERIFY_WAIT_PROOF = 1,
    VERIFY_DONE = 2,   /* the peer's HELLO checked out and its proof verified */
    VERIFY_FAILED = 3, /* refused: see err and why; nothing more to send */
};

typedef struct ntcp_verify_core {
    int state;
    int err;          /* with VERIFY_FAILED: NTCP_E* */
    int peer_code;    /* the code of the peer's REFUSE, 0 when none came */
    const char *why;  /* static text for logs, "" when none */
    EVP_PKEY *key;
    uint32_t role;
    char name[BROKER_NAME_MAX + 1];
    char peer_name[BROKER_NAME_MAX + 1];
    uint8_t pub[BROKER_KEY_SIZE];
    uint8_t peer_key[BROKER_KEY_SIZE];
    uint8_t nonce[BROKER_NONCE_SIZE];
    uint8_t session_id[VERIFY_SESSION_ID_SIZE];
    uint32_t peer_version; /* as announced in its HELLO */
    uint8_t random[VERIFY_RANDOM_SIZE];
    uint8_t peer_random[VERIFY_RANDOM_SIZE];
    uint8_t binding[VERIFY_BINDING_SIZE]; /* with VERIFY_DONE */
    /* Input: the message being read (never more than one). */
    uint8_t in[VERIFY_MAX_MESSAGE];
    size_t in_len;
    /* Output: bytes to send, out[out_off..out_len). */
    uint8_t out[2 * VERIFY_MAX_MESSAGE];
    size_t out_off, out_len; /* out[0] always starts a message */
} ntcp_verify_core;

/* Checks p, draws our RANDOM (random NULL) or takes it (tests, fuzzing),
 * signs our transcript and queues our whole flight, HELLO then PROOF: it can
 * all go out at once. The core borrows p->key. Returns 0, NTCP_EINVAL (bad
 * name, key, role), NTCP_ESYS (no randomness) or NTCP_ENOMEM (cannot sign). */
int ntcp_verify_core_init(ntcp_verify_core *c, const ntcp_verify_params *p,
                          const uint8_t random[VERIFY_RANDOM_SIZE]);
/* How many bytes the core wants next: never more than the rest of the
 * current message, so a reader that reads at most this many never takes a
 * byte beyond the peer's PROOF. 0 once DONE or FAILED. */
size_t ntcp_verify_core_want(const ntcp_verify_core *c);
/* Feeds len bytes (at most ntcp_verify_core_want()). Returns the state
 * (VERIFY_DONE, VERIFY_FAILED, or a waiting state). */
int ntcp_verify_core_input(ntcp_verify_core *c, const uint8_t *data, size_t len);
/* Fails the core from outside (timeout, peer closed): keeps the first error.
 * A failed core has nothing more to send (what was still queued of our
 * flight is dropped: no proof for a peer we refused). */
void ntcp_verify_core_fail(ntcp_verify_core *c, int err, const char *why);
/* The bytes waiting to be sent, one whole message at a time (the rest of
 * the message under way, then the next one), so that a datagram transport
 * sends each message alone; and how many bytes went out. A stream transport
 * may send what it is given and ask again at once (the driver itself hands
 * the whole flight to one send()). */
void ntcp_verify_core_output(const ntcp_verify_core *c, const uint8_t **p, size_t *len);
void ntcp_verify_core_sent(ntcp_verify_core *c, size_t n);

/* ---- Driver: a socket on a libuv loop ---- */

typedef struct ntcp_verify ntcp_verify;

typedef struct ntcp_verify_result {
    /* 0, or why the peer was refused:
     *   NTCP_EINTEGRITY  not the peer the broker vouched for: its HELLO
     *                    names another peer, key or session, or its
     *                    signature does not verify under the key from
     *                    CONNECT-GO (an impostor, a replay);
     *   NTCP_EPROTO      garbage, oversize, wrong order, unknown attribute,
     *                    role conflict (self-connect, reflection), a peer
     *                    that speaks only version 1, or the peer's REFUSE
     *                    (peer_code says which: VERIFY_ERR_*);
     *   NTCP_ETIMEDOUT   not finished within timeout_ms;
     *   NTCP_ECLOSED     the peer closed or reset, or ntcp_verify_cancel();
     *   NTCP_ESYS        a socket call failed (errno in sys_errno). */
    int err;
    /* On success the verified socket, the caller's from now on, with its
     * original file status flags (blocking or not) restored and every byte
     * after the peer's PROOF still unread in it. After a failure -1: the
     * socket was closed (refused). */
    int fd;
    int peer_code;
    int sys_errno;
    const char *why; /* static text for logs */
    /* On success, the same at both ends when both succeed on the same
     * connection (an end does not wait for the peer's verdict). */
    uint8_t binding[VERIFY_BINDING_SIZE];
    uint64_t elapsed_ms;
} ntcp_verify_result;

/* r is valid during the call only. v is freed right after the callback. */
typedef void (*ntcp_verify_cb)(ntcp_verify *v, const ntcp_verify_result *r, void *user);

/* Starts the proof on fd, a connected stream socket. From here the verify
 * owns fd until the callback: on success it gives it back in r->fd, on any
 * failure it closes it. cb runs exactly once, from the loop, never from
 * inside this call; the loop must run. *out (may be NULL) is for
 * ntcp_verify_cancel() until the callback. Returns 0, or NTCP_EINVAL /
 * NTCP_ENOMEM / NTCP_ESYS without a callback, and fd is then untouched and
 * still the caller's. */
int ntcp_verify_start(uv_loop_t *loop, int fd, const ntcp_verify_params *p, ntcp_verify_cb cb,
                      void *user, ntcp_verify **out);

/* Stops: the callback follows with NTCP_ECLOSED and the socket closed. Not
 * to be called after the callback. */
void ntcp_verify_cancel(ntcp_verify *v);

/* Blocking form on a private loop: returns r->err; r (may be NULL) is filled
 * as for the callback. On failure fd is closed, as above. */
int ntcp_verify_fd(int fd, const ntcp_verify_params *p, ntcp_verify_result *r);

#endif /* NTCP_VERIFY_H */
