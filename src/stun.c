/*
 * stun.c: STUN message parsing and building (RFC 8489, RFC 5780, RFC 3489
 * compatibility) and the stream framer for STUN over TCP. No I/O, no
 * allocation: everything works on the caller's buffers.
 */
#include "stun.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#define FINGERPRINT_XOR 0x5354554eu

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* RFC 8489 5: the method's 12 bits are split around the two class bits:
 * M11..M7 C1 M6..M4 C0 M3..M0. */
static uint16_t type_encode(uint16_t method, uint8_t cls)
{
    return (uint16_t)((method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) |
                      ((cls & 1) << 4) | ((cls & 2) << 7));
}

static void type_decode(uint16_t type, uint16_t *method, uint8_t *cls)
{
    *method = (uint16_t)((type & 0x000F) | ((type >> 1) & 0x0070) | ((type >> 2) & 0x0F80));
    *cls = (uint8_t)(((type >> 4) & 1) | ((type >> 7) & 2));
}

static bool is_addr_attr(uint16_t type)
{
    switch (type) {
    case STUN_ATTR_MAPPED_ADDRESS:
    case STUN_ATTR_RESPONSE_ADDRESS:
    case STUN_ATTR_SOURCE_ADDRESS:
    case STUN_ATTR_CHANGED_ADDRESS:
    case STUN_ATTR_REFLECTED_FROM:
    case STUN_ATTR_XOR_MAPPED_ADDRESS:
    case STUN_ATTR_ALTERNATE_SERVER:
    case STUN_ATTR_RESPONSE_ORIGIN:
    case STUN_ATTR_OTHER_ADDRESS:
    case TURN_ATTR_XOR_PEER_ADDRESS:
    case TURN_ATTR_XOR_RELAYED_ADDRESS:
        return true;
    }
    return false;
}

static bool is_xor_attr(uint16_t type)
{
    return type == STUN_ATTR_XOR_MAPPED_ADDRESS || type == TURN_ATTR_XOR_PEER_ADDRESS ||
           type == TURN_ATTR_XOR_RELAYED_ADDRESS;
}

/* Attributes whose value this codec checks; a comprehension-required type not
 * in this list is "unknown" (RFC 8489 14: the server answers 420). */
static bool is_known(uint16_t type)
{
    if (is_addr_attr(type))
        return true;
    switch (type) {
    case STUN_ATTR_USERNAME:
    case STUN_ATTR_PASSWORD:
    case STUN_ATTR_MESSAGE_INTEGRITY:
    case STUN_ATTR_ERROR_CODE:
    case STUN_ATTR_UNKNOWN_ATTRIBUTES:
    case STUN_ATTR_REALM:
    case STUN_ATTR_NONCE:
    case STUN_ATTR_MESSAGE_INTEGRITY_SHA256:
    case STUN_ATTR_PASSWORD_ALGORITHM:
    case STUN_ATTR_USERHASH:
    case STUN_ATTR_PASSWORD_ALGORITHMS:
    case STUN_ATTR_ALTERNATE_DOMAIN:
    case STUN_ATTR_SOFTWARE:
    case STUN_ATTR_FINGERPRINT:
    case STUN_ATTR_CHANGE_REQUEST:
    case STUN_ATTR_PADDING:
    case STUN_ATTR_RESPONSE_PORT:
    case STUN_ATTR_PRIORITY:
    case STUN_ATTR_USE_CANDIDATE:
    case STUN_ATTR_ICE_CONTROLLED:
    case STUN_ATTR_ICE_CONTROLLING:
    case STUNT_ATTR_TIMEOUT:
    case STUNT_ATTR_CONNECT_RESULT:
    case TURN_ATTR_CHANNEL_NUMBER:
    case TURN_ATTR_LIFETIME:
    case TURN_ATTR_DATA:
    case TURN_ATTR_REQUESTED_ADDRESS_FAMILY:
    case TURN_ATTR_EVEN_PORT:
    case TURN_ATTR_REQUESTED_TRANSPORT:
    case TURN_ATTR_DONT_FRAGMENT:
    case TURN_ATTR_RESERVATION_TOKEN:
    case TURN_ATTR_CONNECTION_ID:
        return true;
    }
    return false;
}

/* Checks the value of a known attribute; unknown ones pass. */
static int check_value(uint16_t type, const uint8_t *v, uint16_t len)
{
    if (is_addr_attr(type)) {
        if (len < 4)
            return NTCP_EBADATTR;
        if (v[1] == 0x01)
            return len == 8 ? 0 : NTCP_EBADATTR;
        if (v[1] == 0x02)
            return len == 20 ? 0 : NTCP_EBADATTR;
        return NTCP_EFAMILY;
    }
    switch (type) {
    case STUN_ATTR_CHANGE_REQUEST:
    case STUN_ATTR_RESPONSE_PORT:
    case STUN_ATTR_FINGERPRINT:
    case STUN_ATTR_PRIORITY:
    case STUNT_ATTR_TIMEOUT:
    case TURN_ATTR_CHANNEL_NUMBER:
    case TURN_ATTR_LIFETIME:
    case TURN_ATTR_REQUESTED_TRANSPORT:
    case TURN_ATTR_REQUESTED_ADDRESS_FAMILY:
    case TURN_ATTR_CONNECTION_ID:
        return len == 4 ? 0 : NTCP_EBADATTR;
    case TURN_ATTR_RESERVATION_TOKEN:
        return len == 8 ? 0 : NTCP_EBADATTR;
    case TURN_ATTR_EVEN_PORT:
        return len == 1 ? 0 : NTCP_EBADATTR;
    case STUN_ATTR_USE_CANDIDATE:
    case TURN_ATTR_DONT_FRAGMENT:
        return len == 0 ? 0 : NTCP_EBADATTR;
    case STUN_ATTR_ICE_CONTROLLED:
    case STUN_ATTR_ICE_CONTROLLING:
        return len == 8 ? 0 : NTCP_EBADATTR;
    case STUNT_ATTR_CONNECT_RESULT:
        return len == 8 ? 0 : NTCP_EBADATTR;
    case STUN_ATTR_MESSAGE_INTEGRITY:
        return len == 20 ? 0 : NTCP_EBADATTR;
    case STUN_ATTR_MESSAGE_INTEGRITY_SHA256:
        /* RFC 8489 14.6: truncation to no fewer than 16 bytes, a multiple of 4. */
        return (len >= 16 && len <= 32 && len % 4 == 0) ? 0 : NTCP_EBADATTR;
    case STUN_ATTR_USERHASH:
        return len == 32 ? 0 : NTCP_EBADATTR;
    case STUN_ATTR_ERROR_CODE: {
        if (len < 4)
            return NTCP_EBADATTR;
        int cls = v[2] & 0x07, num = v[3];
        if (cls < 3 || cls > 6 || num > 99)
            return NTCP_EBADATTR;
        return 0;
    }
    case STUN_ATTR_UNKNOWN_ATTRIBUTES:
        return len % 2 == 0 ? 0 : NTCP_EBADATTR;
    case STUN_ATTR_USERNAME:
        return len <= 513 ? 0 : NTCP_EBADATTR;
    case STUN_ATTR_REALM:
    case STUN_ATTR_NONCE:
    case STUN_ATTR_SOFTWARE:
        return len <= 763 ? 0 : NTCP_EBADATTR;
    case STUN_ATTR_PASSWORD_ALGORITHM:
        return len >= 4 && (size_t)rd16(v + 2) + 4 <= len ? 0 : NTCP_EBADATTR;
    }
    return 0;
}

bool stun_looks_like(const uint8_t *buf, size_t len)
{
    if (len < STUN_HEADER_SIZE || (buf[0] & 0xC0) != 0)
        return false;
    return rd16(buf + 2) % 4 == 0;
}

static void add_unknown(stun_msg *m, uint16_t type)
{
    for (size_t i = 0; i < m->nunknown; i++)
        if (m->unknown[i] == type)
            return;
    if (m->nunknown < STUN_MAX_UNKNOWN)
        m->unknown[m->nunknown++] = type;
}

int stun_parse(stun_msg *m, const uint8_t *buf, size_t len)
{
    memset(m, 0, offsetof(stun_msg, attrs));
    m->nunknown = 0;
    m->integrity = m->integrity_sha256 = m->fingerprint = -1;
    if (!buf || len < STUN_HEADER_SIZE)
        return NTCP_ETRUNCATED;
    if (buf[0] & 0xC0)
        return NTCP_ENOTSTUN;

    size_t mlen = rd16(buf + 2);
    m->buf = buf;
    m->len = len;
    type_decode(rd16(buf), &m->method, &m->cls);
    m->rfc3489 = rd32(buf + 4) != STUN_MAGIC_COOKIE;
    memcpy(m->tid, buf + 4, STUN_TID_SIZE);

    if (STUN_HEADER_SIZE + mlen > len)
        return NTCP_ETRUNCATED;
    if (STUN_HEADER_SIZE + mlen < len)
        return NTCP_EMALFORMED;

    size_t end = STUN_HEADER_SIZE + mlen;
    size_t off = STUN_HEADER_SIZE;
    bool after_mi = false, after_mi256 = false;
    while (off < end) {
        if (off + 4 > end)
            return mlen % 4 ? NTCP_EMALFORMED : NTCP_EBADATTR;
        uint16_t type = rd16(buf + off);
        uint16_t alen = rd16(buf + off + 2);
        if (off + 4 + alen > end)
            return NTCP_EBADATTR;
        size_t padded = ((size_t)alen + 3) & ~(size_t)3;
        if (off + 4 + padded > end)
            return NTCP_EPADDING;
        if (m->fingerprint >= 0)
            return NTCP_EFINGERPRINT; /* something follows FINGERPRINT */

        /* RFC 8489 14.5/14.6: only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
         * may follow MESSAGE-INTEGRITY; anything else there is ignored. */
        bool ignore = false;
        if (after_mi256)
            ignore = type != STUN_ATTR_FINGERPRINT;
        else if (after_mi)
            ignore = type != STUN_ATTR_FINGERPRINT && type != STUN_ATTR_MESSAGE_INTEGRITY_SHA256;

        if (!ignore) {
            int rc = check_value(type, buf + off + 4, alen);
            if (rc < 0)
                return rc;
            if (m->nattrs >= STUN_MAX_ATTRS)
                return NTCP_ERANGE;
            int idx = (int)m->nattrs;
            m->attrs[m->nattrs++] = (stun_attr){type, alen, (uint32_t)off};
            if (type == STUN_ATTR_MESSAGE_INTEGRITY && m->integrity < 0) {
                m->integrity = idx;
                after_mi = true;
            } else if (type == STUN_ATTR_MESSAGE_INTEGRITY_SHA256 && m->integrity_sha256 < 0) {
                m->integrity_sha256 = idx;
                after_mi256 = true;
            } else if (type == STUN_ATTR_FINGERPRINT) {
                uint32_t want = rd32(buf + off + 4);
                if (stun_fingerprint(buf, off) != want)
                    return NTCP_EFINGERPRINT;
                m->fingerprint = idx;
            } else if (type < 0x8000 && !is_known(type)) {
                add_unknown(m, type);
            }
        }
        off += 4 + padded;
    }
    if (mlen % 4)
        return NTCP_EMALFORMED;
    return 0;
}

const stun_attr *stun_find(const stun_msg *m, uint16_t type)
{
    for (size_t i = 0; i < m->nattrs; i++)
        if (m->attrs[i].type == type)
            return &m->attrs[i];
    return NULL;
}

/* The 16 bytes an IPv6 XOR address is XORed with: cookie and transaction id. */
static void xor_key(const uint8_t tid[STUN_TID_SIZE], uint8_t key[16])
{
    memcpy(key, tid, 16);
    wr32(key, STUN_MAGIC_COOKIE);
}

int stun_get_addr(const stun_msg *m, uint16_t type, struct sockaddr_storage *out)
{
    const stun_attr *a = stun_find(m, type);
    if (!a)
        return NTCP_ENOTFOUND;
    if (!is_addr_attr(type))
        return NTCP_EINVAL;
    const uint8_t *v = stun_attr_value(m, a);
    bool x = is_xor_attr(type);
    uint8_t key[16];
    xor_key(m->tid, key);
    uint16_t port = rd16(v + 2);
    if (x)
        port ^= (uint16_t)(STUN_MAGIC_COOKIE >> 16);
    memset(out, 0, sizeof *out);
    if (v[1] == 0x01 && a->len == 8) {
        struct sockaddr_in *sin = (struct sockaddr_in *)out;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        uint8_t ip[4];
        for (int i = 0; i < 4; i++)
            ip[i] = (uint8_t)(v[4 + i] ^ (x ? key[i] : 0));
        memcpy(&sin->sin_addr, ip, 4);
        return 0;
    }
    if (v[1] == 0x02 && a->len == 20) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        uint8_t ip[16];
        for (int i = 0; i < 16; i++)
            ip[i] = (uint8_t)(v[4 + i] ^ (x ? key[i] : 0));
        memcpy(&sin6->sin6_addr, ip, 16);
        return 0;
    }
    return NTCP_EFAMILY;
}

int stun_get_u32(const stun_msg *m, uint16_t type, uint32_t *out)
{
    const stun_attr *a = stun_find(m, type);
    if (!a)
        return NTCP_ENOTFOUND;
    if (a->len != 4)
        return NTCP_EBADATTR;
    *out = rd32(stun_attr_value(m, a));
    return 0;
}

int stun_get_change_request(const stun_msg *m, uint32_t *flags)
{
    return stun_get_u32(m, STUN_ATTR_CHANGE_REQUEST, flags);
}

int stun_get_response_port(const stun_msg *m, uint16_t *port)
{
    uint32_t v;
    int rc = stun_get_u32(m, STUN_ATTR_RESPONSE_PORT, &v);
    if (rc == 0)
        *port = (uint16_t)(v >> 16);
    return rc;
}

int stun_get_error(const stun_msg *m, int *code, const char **reason, size_t *reason_len)
{
    const stun_attr *a = stun_find(m, STUN_ATTR_ERROR_CODE);
    if (!a)
        return NTCP_ENOTFOUND;
    const uint8_t *v = stun_attr_value(m, a);
    *code = (v[2] & 0x07) * 100 + v[3];
    if (reason)
        *reason = (const char *)v + 4;
    if (reason_len)
        *reason_len = a->len - 4u;
    return 0;
}

int stun_get_string(const stun_msg *m, uint16_t type, const char **s, size_t *len)
{
    const stun_attr *a = stun_find(m, type);
    if (!a)
        return NTCP_ENOTFOUND;
    *s = (const char *)stun_attr_value(m, a);
    *len = a->len;
    return 0;
}

int stun_get_unknown(const stun_msg *m, uint16_t *types, size_t max, size_t *n)
{
    const stun_attr *a = stun_find(m, STUN_ATTR_UNKNOWN_ATTRIBUTES);
    if (!a)
        return NTCP_ENOTFOUND;
    const uint8_t *v = stun_attr_value(m, a);
    size_t count = a->len / 2, i;
    for (i = 0; i < count && i < max; i++)
        types[i] = rd16(v + 2 * i);
    *n = i;
    return 0;
}

int stunt_get_connect_result(const stun_msg *m, stunt_connect_result *r)
{
    const stun_attr *a = stun_find(m, STUNT_ATTR_CONNECT_RESULT);
    if (!a)
        return NTCP_ENOTFOUND;
    const uint8_t *v = stun_attr_value(m, a);
    r->outcome = v[0];
    r->icmp_type = v[1];
    r->icmp_code = v[2];
    r->reserved = v[3];
    r->elapsed_ms = rd32(v + 4);
    return r->outcome <= STUNT_LOCAL ? 0 : NTCP_EBADATTR;
}

int stun_long_term_key(const char *user, size_t ulen, const char *realm, size_t rlen,
                       const char *pass, size_t plen, uint8_t key[16])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return NTCP_ENOMEM;
    unsigned int outlen = 0;
    int ok = EVP_DigestInit_ex(ctx, EVP_md5(), NULL) && EVP_DigestUpdate(ctx, user, ulen) &&
             EVP_DigestUpdate(ctx, ":", 1) && EVP_DigestUpdate(ctx, realm, rlen) &&
             EVP_DigestUpdate(ctx, ":", 1) && EVP_DigestUpdate(ctx, pass, plen) &&
             EVP_DigestFinal_ex(ctx, key, &outlen) && outlen == 16;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : NTCP_EINVAL;
}

/* HMAC over the message's first `upto` bytes, with the header's length field
 * replaced by `fake_len` (RFC 8489 14.5: the length must count the integrity
 * attribute itself, and nothing after it). */
static int hmac_msg(const uint8_t *msg, size_t upto, uint16_t fake_len, const uint8_t *key,
                    size_t keylen, bool sha256, uint8_t *out, size_t *outlen)
{
    int rc = NTCP_EINVAL;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    if (!ctx)
        goto out;
    char digest[16];
    snprintf(digest, sizeof digest, "%s", sha256 ? "SHA256" : "SHA1");
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    uint8_t hdr[STUN_HEADER_SIZE];
    memcpy(hdr, msg, STUN_HEADER_SIZE);
    wr16(hdr + 2, fake_len);
    /* A zero-length key is legal for HMAC; OpenSSL wants a non-NULL pointer. */
    static const uint8_t empty = 0;
    if (EVP_MAC_init(ctx, keylen ? key : &empty, keylen, params) &&
        EVP_MAC_update(ctx, hdr, sizeof hdr) &&
        EVP_MAC_update(ctx, msg + STUN_HEADER_SIZE, upto - STUN_HEADER_SIZE) &&
        EVP_MAC_final(ctx, out, outlen, 32))
        rc = 0;
out:
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return rc;
}

int stun_check_integrity(const stun_msg *m, const uint8_t *key, size_t keylen, bool sha256)
{
    int idx = sha256 ? m->integrity_sha256 : m->integrity;
    if (idx < 0)
        return NTCP_ENOTFOUND;
    const stun_attr *a = &m->attrs[idx];
    uint8_t mac[32];
    size_t maclen = 0;
    uint16_t fake_len = (uint16_t)(a->off + 4 + a->len - STUN_HEADER_SIZE);
    if (hmac_msg(m->buf, a->off, fake_len, key, keylen, sha256, mac, &maclen) < 0)
        return NTCP_EINTEGRITY;
    if (maclen < a->len || CRYPTO_memcmp(mac, stun_attr_value(m, a), a->len) != 0)
        return NTCP_EINTEGRITY;
    return 0;
}

uint32_t stun_fingerprint(const uint8_t *buf, size_t len)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, buf, (uInt)len);
    return (uint32_t)crc ^ FINGERPRINT_XOR;
}

/* ---- building ---- */

static void put(stun_builder *b, size_t off, const void *data, size_t n)
{
    if (off + n <= b->cap && n)
        memcpy(b->buf + off, data, n);
}

static void set_length(stun_builder *b, size_t total)
{
    if (b->cap >= 4)
        wr16(b->buf + 2, (uint16_t)(total - STUN_HEADER_SIZE));
}

void stun_build_init(stun_builder *b, uint8_t *buf, size_t cap, uint16_t method, uint8_t cls,
                     const uint8_t tid[STUN_TID_SIZE], bool rfc3489)
{
    memset(b, 0, sizeof *b);
    b->buf = buf;
    b->cap = buf ? cap : 0;
    b->rfc3489 = rfc3489;
    b->len = STUN_HEADER_SIZE;
    if (method > 0x0FFF || cls > 3 || !tid) {
        b->err = NTCP_EINVAL;
        return;
    }
    uint8_t hdr[STUN_HEADER_SIZE];
    wr16(hdr, type_encode(method, cls));
    wr16(hdr + 2, 0);
    memcpy(hdr + 4, tid, STUN_TID_SIZE);
    if (!rfc3489)
        wr32(hdr + 4, STUN_MAGIC_COOKIE);
    memcpy(b->tid, hdr + 4, STUN_TID_SIZE);
    put(b, 0, hdr, sizeof hdr);
}

void stun_build_attr(stun_builder *b, uint16_t type, const void *value, size_t len)
{
    if (len > 0xFFFF || (len && !value)) {
        if (!b->err)
            b->err = NTCP_EINVAL;
        return;
    }
    size_t padded = (len + 3) & ~(size_t)3;
    if (b->len + 4 + padded > STUN_MAX_MESSAGE) {
        if (!b->err)
            b->err = NTCP_ERANGE;
        return;
    }
    uint8_t h[4];
    wr16(h, type);
    wr16(h + 2, (uint16_t)len);
    put(b, b->len, h, 4);
    put(b, b->len + 4, value, len);
    if (padded > len && b->len + 4 + padded <= b->cap)
        memset(b->buf + b->len + 4 + len, b->pad_byte, padded - len);
    b->len += 4 + padded;
    set_length(b, b->len);
}

void stun_build_addr(stun_builder *b, uint16_t type, const struct sockaddr *sa)
{
    uint8_t v[20];
    uint8_t key[16];
    bool x = is_xor_attr(type);
    xor_key(b->tid, key);
    if (!sa) {
        if (!b->err)
            b->err = NTCP_EINVAL;
        return;
    }
    v[0] = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        uint16_t port = ntohs(sin->sin_port);
        v[1] = 0x01;
        wr16(v + 2, x ? (uint16_t)(port ^ (STUN_MAGIC_COOKIE >> 16)) : port);
        memcpy(v + 4, &sin->sin_addr, 4);
        if (x)
            for (int i = 0; i < 4; i++)
                v[4 + i] ^= key[i];
        stun_build_attr(b, type, v, 8);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        uint16_t port = ntohs(sin6->sin6_port);
        v[1] = 0x02;
        wr16(v + 2, x ? (uint16_t)(port ^ (STUN_MAGIC_COOKIE >> 16)) : port);
        memcpy(v + 4, &sin6->sin6_addr, 16);
        if (x)
            for (int i = 0; i < 16; i++)
                v[4 + i] ^= key[i];
        stun_build_attr(b, type, v, 20);
    } else if (!b->err) {
        b->err = NTCP_EFAMILY;
    }
}

void stun_build_u32(stun_builder *b, uint16_t type, uint32_t v)
{
    uint8_t w[4];
    wr32(w, v);
    stun_build_attr(b, type, w, 4);
}

void stun_build_string(stun_builder *b, uint16_t type, const char *s)
{
    size_t len = s ? strlen(s) : 0;
    /* Never build what our own parser would refuse. */
    if (len > 0xFFFF || check_value(type, (const uint8_t *)s, (uint16_t)len) < 0) {
        if (!b->err)
            b->err = NTCP_EBADATTR;
        return;
    }
    stun_build_attr(b, type, s, len);
}

void stun_build_error(stun_builder *b, int code, const char *reason)
{
    if (code < 300 || code > 699) {
        if (!b->err)
            b->err = NTCP_EINVAL;
        return;
    }
    uint8_t v[4 + 763];
    size_t rlen = reason ? strlen(reason) : 0;
    if (rlen > 763)
        rlen = 763;
    v[0] = v[1] = 0;
    v[2] = (uint8_t)(code / 100);
    v[3] = (uint8_t)(code % 100);
    if (rlen)
        memcpy(v + 4, reason, rlen);
    stun_build_attr(b, STUN_ATTR_ERROR_CODE, v, 4 + rlen);
}

void stun_build_unknown(stun_builder *b, const uint16_t *types, size_t n)
{
    uint8_t v[2 * STUN_MAX_UNKNOWN];
    if (n > STUN_MAX_UNKNOWN)
        n = STUN_MAX_UNKNOWN;
    for (size_t i = 0; i < n; i++)
        wr16(v + 2 * i, types[i]);
    stun_build_attr(b, STUN_ATTR_UNKNOWN_ATTRIBUTES, v, 2 * n);
}

void stun_build_change_request(stun_builder *b, uint32_t flags)
{
    stun_build_u32(b, STUN_ATTR_CHANGE_REQUEST, flags & (STUN_CHANGE_IP | STUN_CHANGE_PORT));
}

void stunt_build_connect_result(stun_builder *b, const stunt_connect_result *r)
{
    uint8_t v[8] = {r->outcome, r->icmp_type, r->icmp_code, 0};
    wr32(v + 4, r->elapsed_ms);
    stun_build_attr(b, STUNT_ATTR_CONNECT_RESULT, v, sizeof v);
}

static void build_integrity(stun_builder *b, const uint8_t *key, size_t keylen, bool sha256)
{
    size_t maclen = sha256 ? 32 : 20;
    uint8_t mac[32] = {0};
    if (b->len + 4 + maclen <= b->cap && !b->err) {
        size_t outlen = 0;
        uint16_t fake = (uint16_t)(b->len + 4 + maclen - STUN_HEADER_SIZE);
        if (hmac_msg(b->buf, b->len, fake, key, keylen, sha256, mac, &outlen) < 0 ||
            outlen != maclen) {
            b->err = NTCP_EINVAL;
            return;
        }
    }
    stun_build_attr(b, sha256 ? STUN_ATTR_MESSAGE_INTEGRITY_SHA256 : STUN_ATTR_MESSAGE_INTEGRITY,
                    mac, maclen);
}

void stun_build_integrity(stun_builder *b, const uint8_t *key, size_t keylen)
{
    build_integrity(b, key, keylen, false);
}

void stun_build_integrity_sha256(stun_builder *b, const uint8_t *key, size_t keylen)
{
    build_integrity(b, key, keylen, true);
}

void stun_build_fingerprint(stun_builder *b)
{
    uint8_t v[4] = {0};
    if (b->len + 8 <= b->cap) {
        set_length(b, b->len + 8);
        wr32(v, stun_fingerprint(b->buf, b->len));
    }
    stun_build_attr(b, STUN_ATTR_FINGERPRINT, v, 4);
}

int stun_build_finish(stun_builder *b, size_t *need)
{
    if (need)
        *need = b->len;
    if (b->err)
        return b->err;
    if (b->len > b->cap)
        return NTCP_ENOSPC;
    set_length(b, b->len);
    return (int)b->len;
}

int stun_new_tid(uint8_t tid[STUN_TID_SIZE])
{
    wr32(tid, STUN_MAGIC_COOKIE);
    return RAND_bytes(tid + 4, STUN_TID_SIZE - 4) == 1 ? 0 : NTCP_ESYS;
}

/* ---- the stream framer ---- */

void stun_framer_init(stun_framer *f, uint8_t *storage, size_t cap)
{
    f->buf = storage;
    f->cap = cap;
    f->start = f->end = 0;
}

void stun_framer_space(stun_framer *f, uint8_t **p, size_t *avail)
{
    if (f->start == f->end) {
        f->start = f->end = 0;
    } else if (f->start > 0 && (f->cap - f->end < STUN_HEADER_SIZE || f->start >= f->cap / 2)) {
        /* Move the partial message to the front so that it can complete. */
        memmove(f->buf, f->buf + f->start, f->end - f->start);
        f->end -= f->start;
        f->start = 0;
    }
    *p = f->buf + f->end;
    *avail = f->cap - f->end;
}

void stun_framer_commit(stun_framer *f, size_t n)
{
    if (n > f->cap - f->end)
        n = f->cap - f->end;
    f->end += n;
}

size_t stun_framer_write(stun_framer *f, const uint8_t *data, size_t len)
{
    uint8_t *p;
    size_t avail;
    stun_framer_space(f, &p, &avail);
    if (len > avail)
        len = avail;
    if (len)
        memcpy(p, data, len);
    f->end += len;
    return len;
}

int stun_framer_next(stun_framer *f, const uint8_t **msg, size_t *len)
{
    size_t avail = f->end - f->start;
    const uint8_t *p = f->buf + f->start;
    if (avail == 0)
        return 0;
    if (p[0] & 0xC0)
        return NTCP_ENOTSTUN;
    if (avail < 4)
        return 0;
    size_t mlen = rd16(p + 2);
    if (mlen % 4)
        return NTCP_ENOTSTUN;
    size_t total = STUN_HEADER_SIZE + mlen;
    if (total > f->cap)
        return NTCP_ERANGE;
    if (avail < total) {
        /* Make room now when the rest cannot fit behind what we hold. */
        if (f->start + total > f->cap) {
            memmove(f->buf, p, avail);
            f->start = 0;
            f->end = avail;
        }
        return 0;
    }
    *msg = p;
    *len = total;
    f->start += total;
    if (f->start == f->end)
        f->start = f->end = 0;
    return 1;
}

size_t stun_framer_pending(const stun_framer *f)
{
    return f->end - f->start;
}

/* ---- names ---- */

const char *stun_method_name(uint16_t method)
{
    switch (method) {
    case STUN_BINDING: return "Binding";
    case TURN_ALLOCATE: return "Allocate";
    case TURN_REFRESH: return "Refresh";
    case TURN_SEND: return "Send";
    case TURN_DATA: return "Data";
    case TURN_CREATE_PERMISSION: return "CreatePermission";
    case TURN_CHANNEL_BIND: return "ChannelBind";
    case TURN_CONNECT: return "Connect";
    case TURN_CONNECTION_BIND: return "ConnectionBind";
    case TURN_CONNECTION_ATTEMPT: return "ConnectionAttempt";
    case STUNT_CONNECT_BACK: return "ConnectBack";
    }
    return "unknown method";
}

const char *stun_class_name(uint8_t cls)
{
    switch (cls) {
    case STUN_REQUEST: return "Request";
    case STUN_INDICATION: return "Indication";
    case STUN_SUCCESS: return "Success Response";
    case STUN_ERROR: return "Error Response";
    }
    return "unknown class";
}
