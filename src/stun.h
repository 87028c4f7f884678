/*
 * stun.h: the STUN message codec (RFC 8489, RFC 5780, RFC 3489 compatibility)
 * and ntcp's STUNT extensions. Pure functions over caller buffers: no I/O, no
 * allocation, no clock. Internal to libntcp; the servers and the client use it.
 *
 *     0                   1                   2                   3
 *     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |0 0|     STUN Message Type     |         Message Length        |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                         Magic Cookie                          |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                     Transaction ID (96 bits)                  |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * An RFC 3489 message has no magic cookie: its transaction id is the 128 bits
 * from byte 4. We keep all 16 bytes in stun_msg.tid either way, so a response
 * echoes them unchanged.
 */
#ifndef NTCP_STUN_H
#define NTCP_STUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "addr.h"
#include "ntcp.h"

#define STUN_HEADER_SIZE 20
#define STUN_MAGIC_COOKIE 0x2112A442u
#define STUN_TID_SIZE 16       /* cookie + 96-bit id, or RFC 3489's 128-bit id */
#define STUN_MAX_ATTRS 40      /* attributes indexed per message; more is an error */
#define STUN_MAX_UNKNOWN 16    /* unknown comprehension-required types remembered */
#define STUN_MAX_MESSAGE 65555 /* 20-byte header + 16-bit length */

/* Message classes (the C1 C0 bits). */
enum stun_class {
    STUN_REQUEST = 0,
    STUN_INDICATION = 1,
    STUN_SUCCESS = 2,
    STUN_ERROR = 3,
};

/* Methods. */
#define STUN_BINDING 0x001
/* TURN (RFC 8656) and TURN over TCP relays (RFC 6062). src/turn.h builds
 * and reads these messages. */
#define TURN_ALLOCATE 0x003
#define TURN_REFRESH 0x004
#define TURN_SEND 0x006
#define TURN_DATA 0x007
#define TURN_CREATE_PERMISSION 0x008
#define TURN_CHANNEL_BIND 0x009
#define TURN_CONNECT 0x00A
#define TURN_CONNECTION_BIND 0x00B
#define TURN_CONNECTION_ATTEMPT 0x00C
/* ntcp STUNT extension (docs/protocol.md): over TCP, ask the server to open a
 * new TCP connection back to the request's source address. */
#define STUNT_CONNECT_BACK 0x0E01

/* Attributes: RFC 8489. */
#define STUN_ATTR_MAPPED_ADDRESS 0x0001
#define STUN_ATTR_USERNAME 0x0006
#define STUN_ATTR_MESSAGE_INTEGRITY 0x0008
#define STUN_ATTR_ERROR_CODE 0x0009
#define STUN_ATTR_UNKNOWN_ATTRIBUTES 0x000A
#define STUN_ATTR_REALM 0x0014
#define STUN_ATTR_NONCE 0x0015
#define STUN_ATTR_MESSAGE_INTEGRITY_SHA256 0x001C
#define STUN_ATTR_PASSWORD_ALGORITHM 0x001D
#define STUN_ATTR_USERHASH 0x001E
#define STUN_ATTR_XOR_MAPPED_ADDRESS 0x0020
#define STUN_ATTR_PASSWORD_ALGORITHMS 0x8002
#define STUN_ATTR_ALTERNATE_DOMAIN 0x8003
#define STUN_ATTR_SOFTWARE 0x8022
#define STUN_ATTR_ALTERNATE_SERVER 0x8023
#define STUN_ATTR_FINGERPRINT 0x8028
/* RFC 5780 (and RFC 3489's CHANGE-REQUEST, same type and format). */
#define STUN_ATTR_CHANGE_REQUEST 0x0003
#define STUN_ATTR_PADDING 0x0026
#define STUN_ATTR_RESPONSE_PORT 0x0027
#define STUN_ATTR_RESPONSE_ORIGIN 0x802B
#define STUN_ATTR_OTHER_ADDRESS 0x802C
/* ICE (RFC 8445), known so that they are not "unknown" to a server. */
#define STUN_ATTR_PRIORITY 0x0024
#define STUN_ATTR_USE_CANDIDATE 0x0025
#define STUN_ATTR_ICE_CONTROLLED 0x8029
#define STUN_ATTR_ICE_CONTROLLING 0x802A
/* TURN (RFC 8656, RFC 6062). */
#define TURN_ATTR_CHANNEL_NUMBER 0x000C
#define TURN_ATTR_LIFETIME 0x000D
#define TURN_ATTR_XOR_PEER_ADDRESS 0x0012
#define TURN_ATTR_DATA 0x0013
#define TURN_ATTR_XOR_RELAYED_ADDRESS 0x0016
#define TURN_ATTR_REQUESTED_ADDRESS_FAMILY 0x0017
#define TURN_ATTR_EVEN_PORT 0x0018
#define TURN_ATTR_REQUESTED_TRANSPORT 0x0019
#define TURN_ATTR_DONT_FRAGMENT 0x001A
#define TURN_ATTR_RESERVATION_TOKEN 0x0022
#define TURN_ATTR_CONNECTION_ID 0x002A
#define TURN_ATTR_ADDITIONAL_ADDRESS_FAMILY 0x8000
#define TURN_ATTR_ADDRESS_ERROR_CODE 0x8001
#define TURN_ATTR_ICMP 0x8004
/* RFC 3489 only. */
#define STUN_ATTR_RESPONSE_ADDRESS 0x0002
#define STUN_ATTR_SOURCE_ADDRESS 0x0004
#define STUN_ATTR_CHANGED_ADDRESS 0x0005
#define STUN_ATTR_PASSWORD 0x0007
#define STUN_ATTR_REFLECTED_FROM 0x000B
/* ntcp STUNT extensions (docs/protocol.md). */
#define STUNT_ATTR_TIMEOUT 0x4E01        /* u32, milliseconds */
#define STUNT_ATTR_CONNECT_RESULT 0x4E02 /* see struct stunt_connect_result */

/* CHANGE-REQUEST flags. */
#define STUN_CHANGE_IP 0x04
#define STUN_CHANGE_PORT 0x02

/* Outcome of a connect-back (STUNT_ATTR_CONNECT_RESULT, first byte). */
enum stunt_outcome {
    STUNT_CONNECTED = 0, /* the SYN-ACK came back: the NAT let it through */
    STUNT_REFUSED = 1,   /* a TCP RST came back */
    STUNT_ICMP = 2,      /* an ICMP error came back (type and code given) */
    STUNT_TIMEOUT = 3,   /* nothing came back in the requested time */
    STUNT_LOCAL = 4,     /* the server could not try (bind failed, ...) */
};

typedef struct stunt_connect_result {
    uint8_t outcome;   /* enum stunt_outcome */
    uint8_t icmp_type; /* with STUNT_ICMP */
    uint8_t icmp_code;
    uint8_t reserved;
    uint32_t elapsed_ms; /* time from connect() to the outcome */
} stunt_connect_result;

/* One attribute found by stun_parse(): value points into the parsed buffer. */
typedef struct stun_attr {
    uint16_t type;
    uint16_t len; /* value length, without padding */
    uint32_t off; /* offset of the attribute header (a message may exceed 64 KiB) */
} stun_attr;

/* A parsed message. All pointers point into the caller's buffer, which must
 * outlive the stun_msg. */
typedef struct stun_msg {
    const uint8_t *buf;
    size_t len; /* total length, header included */
    uint16_t method;
    uint8_t cls;     /* enum stun_class */
    bool rfc3489;    /* no magic cookie: an RFC 3489 client */
    uint8_t tid[STUN_TID_SIZE];
    size_t nattrs;
    stun_attr attrs[STUN_MAX_ATTRS];
    /* Comprehension-required attribute types (< 0x8000) this codec does not
     * know: a server answers 420 with them in UNKNOWN-ATTRIBUTES. */
    size_t nunknown;
    uint16_t unknown[STUN_MAX_UNKNOWN];
    /* Index in attrs[] of the integrity and fingerprint attributes, or -1. */
    int integrity, integrity_sha256, fingerprint;
} stun_msg;

/* Quick check that buf looks like a STUN message header (top two bits zero,
 * length a multiple of 4; the cookie is not required, for RFC 3489). */
bool stun_looks_like(const uint8_t *buf, size_t len);

/* Parse and validate one whole message of exactly len bytes. Checks the
 * header, every attribute's bounds and padding, the value of every attribute
 * this codec knows (address families, lengths), and FINGERPRINT when present
 * (it must be last and correct). Attributes after MESSAGE-INTEGRITY other than
 * MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are ignored (RFC 8489 14.5).
 * Integrity is not checked here: see stun_check_integrity().
 * Returns 0 or:
 *   NTCP_ETRUNCATED   len < 20, or the header's length runs past len;
 *   NTCP_ENOTSTUN     the top two bits of the first byte are not zero;
 *   NTCP_EMALFORMED   bytes follow the message, or its length is not a
 *                     multiple of 4 (when no attribute is to blame first);
 *   NTCP_EBADATTR     an attribute header or value runs past the message,
 *                     or a known attribute has an invalid length or value;
 *   NTCP_EPADDING     an attribute's value fits but its padding to 4 bytes
 *                     runs past the message;
 *   NTCP_EFAMILY      an address attribute's family is not 1 or 2;
 *   NTCP_EFINGERPRINT FINGERPRINT wrong or not the last attribute;
 *   NTCP_ERANGE       more than STUN_MAX_ATTRS attributes. On error the header fields of m may still be filled in (so a
 * server can answer 400 to the right transaction): m->len is nonzero then. */
int stun_parse(stun_msg *m, const uint8_t *buf, size_t len);

/* The first attribute of a type, or NULL. */
const stun_attr *stun_find(const stun_msg *m, uint16_t type);
static inline const uint8_t *stun_attr_value(const stun_msg *m, const stun_attr *a)
{
    return m->buf + a->off + 4;
}

/* Address attributes (MAPPED-, XOR-MAPPED-, XOR-PEER-, XOR-RELAYED-, RESPONSE-ORIGIN,
 * OTHER-, ALTERNATE-SERVER, SOURCE-, CHANGED-ADDRESS): decodes into out
 * (sockaddr_in or sockaddr_in6), undoing the XOR for XOR-* types.
 * Returns 0, NTCP_ENOTFOUND, NTCP_EFAMILY or NTCP_EBADATTR. */
int stun_get_addr(const stun_msg *m, uint16_t type, struct sockaddr_storage *out);
int stun_get_u32(const stun_msg *m, uint16_t type, uint32_t *out);
int stun_get_change_request(const stun_msg *m, uint32_t *flags);
/* RESPONSE-PORT: the port. */
int stun_get_response_port(const stun_msg *m, uint16_t *port);
/* ERROR-CODE: code 300..699 and the reason phrase (not NUL-terminated). */
int stun_get_error(const stun_msg *m, int *code, const char **reason, size_t *reason_len);
/* A string attribute (USERNAME, REALM, NONCE, SOFTWARE): pointer and length. */
int stun_get_string(const stun_msg *m, uint16_t type, const char **s, size_t *len);
/* UNKNOWN-ATTRIBUTES: up to max types into types; *n is the number stored. */
int stun_get_unknown(const stun_msg *m, uint16_t *types, size_t max, size_t *n);
int stunt_get_connect_result(const stun_msg *m, stunt_connect_result *r);

/* Keys. Short-term: the password itself (OpaqueString assumed already applied).
 * Long-term: MD5(username ":" realm ":" password), 16 bytes (RFC 8489 9.2.2). */
int stun_long_term_key(const char *user, size_t ulen, const char *realm, size_t rlen,
                       const char *pass, size_t plen, uint8_t key[16]);

/* Checks MESSAGE-INTEGRITY (HMAC-SHA1) or MESSAGE-INTEGRITY-SHA256 (when
 * sha256 is true) with key. Returns 0, NTCP_ENOTFOUND or NTCP_EINTEGRITY. */
int stun_check_integrity(const stun_msg *m, const uint8_t *key, size_t keylen, bool sha256);

/* The CRC-32 of RFC 8489 14.7, XORed with 0x5354554e. */
uint32_t stun_fingerprint(const uint8_t *buf, size_t len);

/* Building: writes into the caller's buffer. When it does not fit, the
 * builder keeps counting: stun_build_finish() then returns NTCP_ENOSPC and
 * the size needed. */
typedef struct stun_builder {
    uint8_t *buf;
    size_t cap;
    size_t len; /* bytes the message needs so far (may exceed cap) */
    bool rfc3489;
    uint8_t pad_byte; /* value of padding bytes; 0 by default (any is valid) */
    uint8_t tid[STUN_TID_SIZE];
    int err;          /* first error other than lack of space */
} stun_builder;

/* Starts a message. tid: 16 bytes as in stun_msg.tid; for an RFC 8489
 * message the first four must be the cookie (stun_new_tid() makes one), for
 * rfc3489 they are any bytes. */
void stun_build_init(stun_builder *b, uint8_t *buf, size_t cap, uint16_t method, uint8_t cls,
                     const uint8_t tid[STUN_TID_SIZE], bool rfc3489);
void stun_build_attr(stun_builder *b, uint16_t type, const void *value, size_t len);
/* Encodes an address attribute, XORing for XOR-* types. */
void stun_build_addr(stun_builder *b, uint16_t type, const struct sockaddr *sa);
void stun_build_u32(stun_builder *b, uint16_t type, uint32_t v);
/* A string attribute; one longer than RFC 8489 allows for its type (USERNAME
 * 513 bytes, REALM, NONCE, SOFTWARE 763) is an NTCP_EBADATTR build error. */
void stun_build_string(stun_builder *b, uint16_t type, const char *s);
void stun_build_error(stun_builder *b, int code, const char *reason);
void stun_build_unknown(stun_builder *b, const uint16_t *types, size_t n);
void stun_build_change_request(stun_builder *b, uint32_t flags);
void stunt_build_connect_result(stun_builder *b, const stunt_connect_result *r);
/* Integrity and fingerprint must come last, in this order. */
void stun_build_integrity(stun_builder *b, const uint8_t *key, size_t keylen);
void stun_build_integrity_sha256(stun_builder *b, const uint8_t *key, size_t keylen);
void stun_build_fingerprint(stun_builder *b);
/* Returns the message length (> 0), NTCP_ENOSPC with *need set to the size
 * required, or another error from the build calls. need may be NULL. */
int stun_build_finish(stun_builder *b, size_t *need);

/* A fresh RFC 8489 transaction id: cookie + 96 random bits (OpenSSL RAND). */
int stun_new_tid(uint8_t tid[STUN_TID_SIZE]);

/* The stream framer for STUN over TCP (RFC 8489 6.2.2): messages follow each
 * other with no separator; the length comes from the header. The framer
 * works on a caller-supplied buffer; the caller reads into stun_framer_space()
 * and commits with stun_framer_commit(), then takes whole messages with
 * stun_framer_next(), whatever the split or coalescing of the reads. */
typedef struct stun_framer {
    uint8_t *buf;
    size_t cap;
    size_t start; /* first unconsumed byte */
    size_t end;   /* one past the last byte read */
} stun_framer;

void stun_framer_init(stun_framer *f, uint8_t *storage, size_t cap);
/* Where to read next and how much fits (compacts the buffer when useful). */
void stun_framer_space(stun_framer *f, uint8_t **p, size_t *avail);
void stun_framer_commit(stun_framer *f, size_t n);
/* Copies up to len bytes in; returns the number taken. */
size_t stun_framer_write(stun_framer *f, const uint8_t *data, size_t len);
/* 1 and the next whole message (valid until the next framer call), 0 when
 * more bytes are needed, NTCP_ENOTSTUN when the stream is not STUN, or
 * NTCP_ERANGE when a message is larger than the buffer. */
int stun_framer_next(stun_framer *f, const uint8_t **msg, size_t *len);
/* Bytes held that are not yet a whole message. */
size_t stun_framer_pending(const stun_framer *f);

/* Names for logs: "Binding", "0x0e01", "Success Response" ... */
const char *stun_method_name(uint16_t method);
const char *stun_class_name(uint8_t cls);

#endif /* NTCP_STUN_H */
