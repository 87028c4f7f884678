/*
 * broker_proto.h: the ntcp broker protocol (docs/broker-protocol.md, version
 * 1) on the STUN message format: method and attribute numbers, limits, the
 * registration transcript, and helpers that build and parse the broker's
 * messages. Pure functions over caller buffers, like stun.h: no I/O, no
 * allocation, no clock. Used by the broker (src/broker/) and the peer session
 * (src/session.c).
 */
#ifndef NTCP_BROKER_PROTO_H
#define NTCP_BROKER_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "stun.h"

#define BROKER_PROTO_VERSION 1

/* Methods, in the private range 0x0E10-0x0E1F (0x0E01 is STUNT connect-back).
 * All travel on the peer's TCP session except KEEPALIVE (UDP). */
#define BROKER_REGISTER 0x0E10   /* request: peer -> broker */
#define BROKER_REFRESH 0x0E11    /* request: peer -> broker */
#define BROKER_LOOKUP 0x0E12     /* request: peer -> broker */
#define BROKER_CONNECT 0x0E13    /* request: requester -> broker; the success
                                  * response is the requester's CONNECT-GO */
#define BROKER_OFFER 0x0E14      /* request: broker -> target; success = accept */
#define BROKER_GO 0x0E15         /* indication: broker -> target (CONNECT-GO) */
#define BROKER_UNREGISTER 0x0E16 /* request: peer -> broker */
#define BROKER_KEEPALIVE 0x0E17  /* request over UDP: peer -> broker */
#define BROKER_RAW_ISN 0x0E18    /* indication: peer -> broker -> the other end of
                                  * a connect (STUNT#1, NATBlaster; section 5.1) */
#define BROKER_RELAY_ADDR 0x0E19 /* indication: peer -> broker -> the other end of a
                                  * connect: the relayed address (section 5.2) */

/* Attributes, comprehension-required range 0x4E10-0x4E3F. */
#define BROKER_ATTR_NAME 0x4E10          /* UTF-8 subset, 1..64 bytes, see broker_name_valid */
#define BROKER_ATTR_PUBLIC_KEY 0x4E11    /* Ed25519 public key, 32 bytes */
#define BROKER_ATTR_CHALLENGE 0x4E12     /* 32 random bytes from the broker */
#define BROKER_ATTR_SIGNATURE 0x4E13     /* Ed25519 signature, 64 bytes */
#define BROKER_ATTR_BROKER_ID 0x4E14     /* the broker's identity string, 1..128 bytes */
#define BROKER_ATTR_PUBLIC_ADDR 0x4E15   /* address format of MAPPED-ADDRESS (no XOR) */
#define BROKER_ATTR_PUBLIC_UDP 0x4E16    /* idem: the UDP mapping seen by the broker */
#define BROKER_ATTR_PRIVATE_ADDR 0x4E17  /* idem, repeated up to BROKER_MAX_PRIVATE times */
#define BROKER_ATTR_PROFILE 0x4E18       /* opaque NAT profile, 0..BROKER_PROFILE_MAX bytes */
#define BROKER_ATTR_EXPIRY 0x4E19        /* u32 seconds */
#define BROKER_ATTR_SESSION_NONCE 0x4E1A /* 32 bytes, same on both ends of a connect */
#define BROKER_ATTR_START_DELAY 0x4E1B   /* u32 ms from receipt until the SYN leaves */
#define BROKER_ATTR_UDP_KEY 0x4E1C       /* 16 bytes: HMAC key of KEEPALIVE */
#define BROKER_ATTR_ROLE 0x4E1D          /* u32: 0 requester, 1 target */
#define BROKER_ATTR_RTT 0x4E1E           /* u32 microseconds, the broker's measure */
#define BROKER_ATTR_TIMEOUT 0x4E1F       /* u32 ms the requester waits for a connect */
#define BROKER_ATTR_DETAIL 0x4E20        /* u32 detailed error code (700 ...) */
#define BROKER_ATTR_VERSION 0x4E21       /* u32 protocol version */
#define BROKER_ATTR_TRANSPORT 0x4E22     /* u32: what the connect is for, enum broker_transport;
                                          * absent = TCP (CONNECT, OFFER, CONNECT-GO) */
#define BROKER_ATTR_ISN 0x4E23           /* u32: the initial sequence number of a SYN */
#define BROKER_ATTR_SPOOF 0x4E24         /* u32: RAW-ISN: 1 = spoof the SYN-ACKs (STUNT#1);
                                          * REGISTER success: 1 = this broker spoofs */
#define BROKER_ATTR_TICKET 0x4E25        /* opaque resumption ticket, 1..BROKER_TICKET_MAX bytes */
#define BROKER_ATTR_RESUME_KEY 0x4E26    /* 32 bytes: the ticket's secret, REGISTER success only */
#define BROKER_ATTR_PROOF 0x4E27         /* 32 bytes: HMAC-SHA256 under the resume key */
/* The relay of last resort (docs/relay.md): in both CONNECT-GOs when the
 * broker has a TURN server. The credentials are this end's own, minted for
 * this connect (TURN REST: "expiry:name", base64(HMAC-SHA1(secret, user))). */
#define BROKER_ATTR_TURN_SERVER 0x4E28   /* address (MAPPED-ADDRESS format, no XOR); in
                                          * RELAY-ADDR: the relayed address */
#define BROKER_ATTR_TURN_USERNAME 0x4E29 /* 1..BROKER_TURN_USER_MAX bytes */
#define BROKER_ATTR_TURN_PASSWORD 0x4E2A /* 1..BROKER_TURN_PASS_MAX bytes */
/* REGISTER and REFRESH (with the private addresses and profile): u32, the
 * transports whose connects this peer accepts from anyone, so that the
 * broker sends both CONNECT-GOs at once instead of asking with an OFFER
 * (a round trip less). Comprehension-optional: a broker that does not know
 * it goes on offering (docs/broker-protocol.md 4.3). */
#define BROKER_ATTR_ACCEPT_ALL 0xCE10
#define BROKER_ACCEPT_TCP 1u
#define BROKER_ACCEPT_UDP 2u

#define BROKER_NAME_MAX 64
#define BROKER_ID_MAX 128
#define BROKER_KEY_SIZE 32
#define BROKER_SIG_SIZE 64
#define BROKER_CHALLENGE_SIZE 32
#define BROKER_NONCE_SIZE 32
#define BROKER_UDP_KEY_SIZE 16
#define BROKER_MAX_PRIVATE 8
#define BROKER_TICKET_MAX 256
#define BROKER_RESUME_KEY_SIZE 32
#define BROKER_PROOF_SIZE 32
#define BROKER_PROFILE_MAX 256
#define BROKER_TURN_USER_MAX 128
#define BROKER_TURN_PASS_MAX 64
/* No broker message may be larger: a longer one is refused and the session
 * closed, so a peer cannot make the broker buffer much. */
#define BROKER_MAX_MESSAGE 2048

enum broker_role { BROKER_ROLE_REQUESTER = 0, BROKER_ROLE_TARGET = 1 };
/* The transport a connect asks for (BROKER_ATTR_TRANSPORT). */
enum broker_transport { BROKER_TRANSPORT_TCP = 0, BROKER_TRANSPORT_UDP = 1 };

/* Error codes on the wire (ERROR-CODE), docs/broker-protocol.md. */
#define BROKER_ERR_BAD_REQUEST 400
#define BROKER_ERR_UNAUTHORIZED 401  /* carries CHALLENGE and BROKER-ID */
#define BROKER_ERR_FORBIDDEN 403     /* bad signature, or not in authorized keys */
#define BROKER_ERR_NOT_FOUND 404     /* with DETAIL 700: unknown user */
#define BROKER_ERR_TIMEOUT 408       /* the target did not answer in time */
#define BROKER_ERR_CONFLICT 409      /* the name is bound to another key */
#define BROKER_ERR_GONE 410          /* the target's session ended during a connect */
#define BROKER_ERR_UNKNOWN_ATTR 420
#define BROKER_ERR_RATE_LIMITED 429
#define BROKER_ERR_STALE 438         /* challenge missing, used or replayed */
#define BROKER_ERR_SERVER 500
#define BROKER_ERR_NO_UDP 501        /* a UDP connect at a broker with no UDP port */
#define BROKER_ERR_FULL 503
#define BROKER_ERR_DECLINED 603      /* the target refused the connect */
/* NTCP 0.2's code for an unknown peer. ERROR-CODE cannot carry 700 (RFC 8489
 * allows 300..699), so it travels as 404 plus DETAIL 700; broker_get_error()
 * returns 700. */
#define BROKER_ERR_UNKNOWN_USER 700

/* A compact address as the broker stores it (20 bytes, no padding games). */
typedef struct broker_addr {
    uint8_t family; /* 0 = none, 4 or 6 */
    uint8_t pad;
    uint16_t port;  /* host order */
    uint8_t ip[16];
} broker_addr;

/* What one end learns about the other (LOOKUP answer, CONNECT-GO). profile
 * points into the parsed message buffer. */
typedef struct broker_peer_info {
    char name[BROKER_NAME_MAX + 1];
    uint8_t public_key[BROKER_KEY_SIZE];
    bool has_public_key;
    struct sockaddr_storage public_addr; /* ss_family 0 when absent */
    struct sockaddr_storage public_udp;  /* ss_family 0 when absent */
    size_t nprivate;
    struct sockaddr_storage private_addr[BROKER_MAX_PRIVATE];
    const uint8_t *profile;
    size_t profile_len;
    /* OFFER only: the transport the requester asked for (enum
     * broker_transport); 0 (TCP) when the attribute is absent. */
    uint32_t transport;
} broker_peer_info;

/* CONNECT-GO: the peer's data plus the session's timing. */
typedef struct broker_go {
    broker_peer_info peer;
    uint8_t nonce[BROKER_NONCE_SIZE];
    uint32_t start_delay_ms; /* from receipt of this message */
    uint32_t role;           /* enum broker_role */
    uint32_t rtt_us;         /* the broker's measure of this end's round trip */
    uint32_t transport;      /* enum broker_transport: what to punch (TCP when absent) */
    /* The relay (docs/relay.md): turn_server.ss_family 0 when the broker
     * offers none; then the strings are empty. NUL-terminated copies. */
    struct sockaddr_storage turn_server;
    char turn_user[BROKER_TURN_USER_MAX + 1];
    char turn_pass[BROKER_TURN_PASS_MAX + 1];
} broker_go;

/* Names: 1..64 bytes of [A-Za-z0-9._@+-], not starting with '.' or '-'. */
bool broker_name_valid(const char *s, size_t len);

/* Checks every broker attribute of a parsed message (lengths, address
 * families, name syntax, counts) and lists the comprehension-required types
 * that neither the codec nor this protocol knows into unknown[] (up to max).
 * Returns 0 or NTCP_EBADATTR / NTCP_EFAMILY / NTCP_ERANGE. */
int broker_validate(const stun_msg *m, uint16_t *unknown, size_t max, size_t *nunknown);

/* Getters; the message must have passed broker_validate(). */
int broker_get_name(const stun_msg *m, char out[BROKER_NAME_MAX + 1]);
/* An attribute of exactly len bytes copied to out. NTCP_ENOTFOUND/EBADATTR. */
int broker_get_fixed(const stun_msg *m, uint16_t type, void *out, size_t len);
/* Decodes one address attribute (PUBLIC-ADDR, PUBLIC-UDP, PRIVATE-ADDR). */
int broker_attr_addr(const stun_msg *m, const stun_attr *a, struct sockaddr_storage *out);
int broker_get_addr(const stun_msg *m, uint16_t type, struct sockaddr_storage *out);
/* The error code of an error response: ERROR-CODE, or DETAIL when present
 * (so 700 for an unknown user). reason/reason_len may be NULL. */
int broker_get_error(const stun_msg *m, int *code, const char **reason, size_t *reason_len);

/* broker_addr <-> sockaddr. */
void broker_addr_from_sa(broker_addr *a, const struct sockaddr *sa);
void broker_addr_to_sa(const broker_addr *a, struct sockaddr_storage *out);
/* Encodes an address attribute from a compact address (nothing if family 0). */
void broker_build_baddr(stun_builder *b, uint16_t type, const broker_addr *a);

/* ERROR-CODE, plus DETAIL when code is above 699 (then ERROR-CODE says 404
 * for 700 and 400 for anything else). */
void broker_build_error(stun_builder *b, int code, const char *reason);

/* Peer information and CONNECT-GO, as attributes of a message being built /
 * from a parsed one. */
void broker_build_peer_info(stun_builder *b, const broker_peer_info *p);
int broker_parse_peer_info(const stun_msg *m, broker_peer_info *p);
int broker_parse_go(const stun_msg *m, broker_go *g);

/* RELAY-ADDR (docs/broker-protocol.md 5.2): the target's relayed address
 * for the other end of the connect its nonce names, or, family 0, why it
 * has none. One parser and one builder for the peer, the broker and the
 * broker's other nodes, so that what is forwarded is always re-encoded from
 * checked values. */
#define BROKER_RELAY_WHY_MAX 200
typedef struct broker_relay_addr {
    uint8_t nonce[BROKER_NONCE_SIZE];
    struct sockaddr_storage relayed;      /* ss_family 0: no relay, see why */
    char why[BROKER_RELAY_WHY_MAX + 1];   /* printable ASCII only (it ends up in
                                           * logs and in the application's detail) */
} broker_relay_addr;
/* NTCP_ENOTFOUND / NTCP_EBADATTR without a nonce; an address that does not
 * decode counts as none. */
int broker_parse_relay_addr(const stun_msg *m, broker_relay_addr *r);
/* The nonce, then the address, or ERROR-CODE 503 and why. */
void broker_build_relay_addr(stun_builder *b, const broker_relay_addr *r);

/* The registration transcript a peer signs (docs/broker-protocol.md 4):
 *   "NTCP-BROKER-REGISTER-1" || u16 len || broker_id || challenge (32)
 *   || u8 len || name || public key (32)
 * Returns its length (<= BROKER_TRANSCRIPT_MAX) or NTCP_EINVAL. */
#define BROKER_TRANSCRIPT_LABEL "NTCP-BROKER-REGISTER-1"
#define BROKER_TRANSCRIPT_MAX (22 + 2 + BROKER_ID_MAX + BROKER_CHALLENGE_SIZE + 1 + BROKER_NAME_MAX + BROKER_KEY_SIZE)
int broker_transcript(uint8_t *out, size_t cap, const char *broker_id, size_t idlen,
                      const uint8_t challenge[BROKER_CHALLENGE_SIZE], const char *name,
                      size_t namelen, const uint8_t key[BROKER_KEY_SIZE]);

/* A resumption's PROOF (docs/broker-protocol.md 4.1): HMAC-SHA256 keyed with
 * the ticket's resume key over "NTCP-BROKER-RESUME-1" || the transcript
 * above (same broker id, challenge, name and key). Returns 0 or
 * NTCP_EINVAL. */
#define BROKER_RESUME_LABEL "NTCP-BROKER-RESUME-1"
int broker_resume_proof(uint8_t out[BROKER_PROOF_SIZE],
                        const uint8_t resume_key[BROKER_RESUME_KEY_SIZE], const char *broker_id,
                        size_t idlen, const uint8_t challenge[BROKER_CHALLENGE_SIZE],
                        const char *name, size_t namelen, const uint8_t key[BROKER_KEY_SIZE]);

#endif /* NTCP_BROKER_PROTO_H */
