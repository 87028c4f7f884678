/*
 * turn.h: the TURN message layer (RFC 8656, TCP relays RFC 6062) on top of
 * the STUN codec (stun.h): building requests with long-term credentials,
 * reading responses and indications into one flat struct, the 401/438
 * challenge, and the TURN REST credentials coturn checks with
 * `use-auth-secret` (username "expiry:name", password
 * base64(HMAC-SHA1(secret, username))). Pure functions over caller buffers:
 * no I/O, no allocation, no clock (the expiry is passed in). Internal to
 * libntcp; the TURN client (turn_client.h) and the broker use it.
 */
#ifndef NTCP_TURN_H
#define NTCP_TURN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "stun.h"

/* REQUESTED-TRANSPORT protocol numbers. */
#define TURN_TRANSPORT_UDP 17
#define TURN_TRANSPORT_TCP 6

/* Error codes a TURN server answers (RFC 8656 18, RFC 6062 6.3). */
#define TURN_ERR_FORBIDDEN 403
#define TURN_ERR_UNAUTHORIZED 401
#define TURN_ERR_MISMATCH 437
#define TURN_ERR_STALE_NONCE 438
#define TURN_ERR_WRONG_CREDENTIALS 441
#define TURN_ERR_UNSUPPORTED_TRANSPORT 442
#define TURN_ERR_CONNECTION_EXISTS 446
#define TURN_ERR_CONNECTION_FAILED 447
#define TURN_ERR_QUOTA 486
#define TURN_ERR_CAPACITY 508

/* Long-term credentials for one server. The strings are NUL-terminated
 * copies (no pointer into a message is kept). */
typedef struct turn_auth {
    char user[514];
    char pass[256];
    char realm[764];
    char nonce[764];
    uint8_t key[16];     /* MD5(user ":" realm ":" pass) once the realm is known */
    bool have_key;
    unsigned challenges; /* 401s taken; a second 401 with a key means wrong credentials */
} turn_auth;

/* Returns 0, or NTCP_EINVAL when user or pass is NULL or too long. */
int turn_auth_init(turn_auth *a, const char *user, const char *pass);

/* One request or indication to build. Fields left zero are not sent. */
typedef struct turn_req {
    uint16_t method;                /* TURN_ALLOCATE, ... */
    uint8_t cls;                    /* STUN_REQUEST or STUN_INDICATION */
    uint8_t transport;              /* REQUESTED-TRANSPORT; 0: none */
    bool has_lifetime;
    uint32_t lifetime;              /* LIFETIME, seconds (0 with has_lifetime: delete) */
    const struct sockaddr *peer;    /* XOR-PEER-ADDRESS; borrowed; NULL: none */
    bool has_connection_id;
    uint32_t connection_id;         /* CONNECTION-ID (RFC 6062) */
    const uint8_t *data;            /* DATA (Send indication); borrowed */
    size_t data_len;
} turn_req;

/* Builds req into buf with transaction id tid (stun_new_tid()). A request
 * carries USERNAME, REALM, NONCE and MESSAGE-INTEGRITY when auth (may be
 * NULL) has a key; every message ends with FINGERPRINT. Returns the length,
 * NTCP_ENOSPC, NTCP_EINVAL or NTCP_EBADATTR. */
int turn_build(uint8_t *buf, size_t cap, const turn_req *req, const turn_auth *auth,
               const uint8_t tid[STUN_TID_SIZE]);

/* A response or indication read by turn_read(). Pointers (data, realm,
 * nonce) point into the caller's buffer. */
typedef struct turn_msg {
    uint16_t method;
    uint8_t cls;
    uint8_t tid[STUN_TID_SIZE];
    int code;           /* ERROR-CODE of an error response (300..699), else 0 */
    char reason[128];   /* its reason phrase, printable ASCII only, NUL-terminated */
    bool has_relayed, has_mapped, has_peer;
    struct sockaddr_storage relayed; /* XOR-RELAYED-ADDRESS */
    struct sockaddr_storage mapped;  /* XOR-MAPPED-ADDRESS */
    struct sockaddr_storage peer;    /* XOR-PEER-ADDRESS */
    bool has_lifetime;
    uint32_t lifetime;
    bool has_connection_id;
    uint32_t connection_id;
    const uint8_t *data; /* DATA, NULL when absent */
    size_t data_len;
    const char *realm, *nonce; /* not NUL-terminated; NULL when absent */
    size_t realm_len, nonce_len;
    bool integrity;      /* MESSAGE-INTEGRITY present and verified with auth's key */
} turn_msg;

/* Parses one whole message. When auth has a key and the message carries
 * MESSAGE-INTEGRITY, it must verify (NTCP_EINTEGRITY otherwise). Returns 0
 * or a stun_parse() error; NTCP_EBADATTR for a TURN attribute of the wrong
 * size or family. */
int turn_read(turn_msg *t, const uint8_t *buf, size_t len, const turn_auth *auth);

/* After an error response: 401 or 438 with REALM and NONCE updates auth (a
 * new nonce, the key) and returns 0: send the request again. Returns
 * NTCP_EREFUSED when the credentials were refused (a 401 after a first
 * challenge already taken with the same realm, or 441), NTCP_EPROTO when a
 * 401/438 lacks REALM or NONCE or they are too long, NTCP_EINVAL for any
 * other code (not a challenge). */
int turn_auth_challenge(turn_auth *a, const turn_msg *t);

/* A short English name for a TURN/STUN error code ("Unauthorized",
 * "Allocation Quota Reached", ...); static, never NULL. */
const char *turn_error_name(int code);

/* TURN REST credentials (coturn's use-auth-secret): user = "<expiry>:<name>",
 * pass = base64(HMAC-SHA1(secret, user)). expiry is a Unix time in seconds.
 * name must be non-empty printable ASCII without ':'. Writes NUL-terminated
 * strings. Returns 0, NTCP_EINVAL or NTCP_ENOSPC. */
int turn_rest_credentials(const void *secret, size_t secret_len, const char *name,
                          uint64_t expiry, char *user, size_t user_cap, char *pass,
                          size_t pass_cap);

/* The expiry (Unix seconds) in a REST username, or NTCP_EINVAL when it has
 * none. */
int turn_rest_expiry(const char *user, uint64_t *expiry);

#endif /* NTCP_TURN_H */
