/*
 * fuzz_stun_parse.c: libFuzzer target for stun_parse() and every getter on
 * what it accepts; each accepted message is rebuilt from its attributes with
 * the builder, and the rebuilt message must parse to the same content.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>

#include "fuzz_check.h"
#include "stun.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t KEY[] = "fuzz-key-0123456789";
#define KEYLEN (sizeof KEY - 1)

static const uint16_t ADDR_TYPES[] = {
    STUN_ATTR_MAPPED_ADDRESS,  STUN_ATTR_XOR_MAPPED_ADDRESS, STUN_ATTR_ALTERNATE_SERVER,
    STUN_ATTR_RESPONSE_ORIGIN, STUN_ATTR_OTHER_ADDRESS,      STUN_ATTR_SOURCE_ADDRESS,
    STUN_ATTR_CHANGED_ADDRESS, STUN_ATTR_RESPONSE_ADDRESS,   STUN_ATTR_REFLECTED_FROM,
};
static const uint16_t STRING_TYPES[] = {STUN_ATTR_USERNAME, STUN_ATTR_REALM, STUN_ATTR_NONCE,
                                        STUN_ATTR_SOFTWARE};

static bool inside(const stun_msg *m, const void *p, size_t len)
{
    const uint8_t *q = p;
    return q >= m->buf + STUN_HEADER_SIZE && q + len <= m->buf + m->len;
}

/* Calls every getter; checks what they return stays inside the message. */
static void exercise_getters(const stun_msg *m)
{
    struct sockaddr_storage ss;
    for (size_t i = 0; i < sizeof ADDR_TYPES / sizeof ADDR_TYPES[0]; i++) {
        int rc = stun_get_addr(m, ADDR_TYPES[i], &ss);
        FUZZ_CHECK(rc == 0 || rc == NTCP_ENOTFOUND || rc == NTCP_EFAMILY || rc == NTCP_EBADATTR);
        if (rc == 0)
            FUZZ_CHECK(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
        /* parse already checked every known address attribute */
        FUZZ_CHECK(rc == 0 || rc == NTCP_ENOTFOUND);
    }
    for (size_t i = 0; i < sizeof STRING_TYPES / sizeof STRING_TYPES[0]; i++) {
        const char *s = NULL;
        size_t len = 0;
        int rc = stun_get_string(m, STRING_TYPES[i], &s, &len);
        FUZZ_CHECK(rc == 0 || rc == NTCP_ENOTFOUND);
        if (rc == 0)
            FUZZ_CHECK(inside(m, s, len));
    }
    /* Every attribute present, through the generic getters. */
    for (size_t i = 0; i < m->nattrs; i++) {
        const stun_attr *a = &m->attrs[i];
        FUZZ_CHECK(a->off >= STUN_HEADER_SIZE && (size_t)a->off + 4 + a->len <= m->len);
        FUZZ_CHECK(stun_find(m, a->type) != NULL);
        uint32_t u = 0;
        int rc = stun_get_u32(m, a->type, &u);
        FUZZ_CHECK(rc == 0 || rc == NTCP_EBADATTR);
        const char *s = NULL;
        size_t len = 0;
        if (stun_get_string(m, a->type, &s, &len) == 0)
            FUZZ_CHECK(inside(m, s, len));
        (void)stun_get_addr(m, a->type, &ss);
    }
    uint32_t flags;
    (void)stun_get_change_request(m, &flags);
    uint16_t port;
    (void)stun_get_response_port(m, &port);
    int code = 0;
    const char *reason = NULL;
    size_t reason_len = 0;
    if (stun_get_error(m, &code, &reason, &reason_len) == 0) {
        FUZZ_CHECK(code >= 300 && code <= 699);
        FUZZ_CHECK(inside(m, reason, reason_len));
    }
    uint16_t types[STUN_MAX_UNKNOWN + 1];
    types[4] = 0xBEEF;
    size_t n = 99;
    if (stun_get_unknown(m, types, 4, &n) == 0)
        FUZZ_CHECK(n <= 4 && types[4] == 0xBEEF);
    stunt_connect_result r;
    (void)stunt_get_connect_result(m, &r);
    for (int sha = 0; sha < 2; sha++) {
        int rc = stun_check_integrity(m, KEY, KEYLEN, sha);
        FUZZ_CHECK(rc == 0 || rc == NTCP_ENOTFOUND || rc == NTCP_EINTEGRITY);
        FUZZ_CHECK((rc == NTCP_ENOTFOUND) == ((sha ? m->integrity_sha256 : m->integrity) < 0));
    }
    (void)stun_method_name(m->method);
    (void)stun_class_name(m->cls);
}

static bool is_trailer(const stun_msg *m, size_t i)
{
    return (int)i == m->integrity || (int)i == m->integrity_sha256 || (int)i == m->fingerprint;
}

/* Rebuilds m from its attributes (the trailers recomputed with KEY) and
 * checks that the result parses to the same message. */
static void rebuild(const stun_msg *m)
{
    static uint8_t out[STUN_MAX_MESSAGE + 64];
    stun_builder b;
    stun_build_init(&b, out, sizeof out, m->method, m->cls, m->tid, m->rfc3489);
    for (size_t i = 0; i < m->nattrs; i++)
        if (!is_trailer(m, i))
            stun_build_attr(&b, m->attrs[i].type, stun_attr_value(m, &m->attrs[i]), m->attrs[i].len);
    if (m->integrity >= 0)
        stun_build_integrity(&b, KEY, KEYLEN);
    if (m->integrity_sha256 >= 0)
        stun_build_integrity_sha256(&b, KEY, KEYLEN);
    if (m->fingerprint >= 0)
        stun_build_fingerprint(&b);
    size_t need = 0;
    int n = stun_build_finish(&b, &need);
    if (n == NTCP_ERANGE) {
        /* only a truncated MESSAGE-INTEGRITY-SHA256, rebuilt whole, can grow it */
        FUZZ_CHECK(m->integrity_sha256 >= 0 && m->len + 16 > STUN_MAX_MESSAGE);
        return;
    }
    FUZZ_CHECK(n > 0);
    FUZZ_CHECK((size_t)n == need);
    FUZZ_CHECK((size_t)n <= m->len + 16);

    /* Parse an exactly sized copy, so that an overread shows. */
    uint8_t *copy = malloc((size_t)n);
    FUZZ_CHECK(copy != NULL);
    memcpy(copy, out, (size_t)n);
    stun_msg m2;
    int rc = stun_parse(&m2, copy, (size_t)n);
    if (rc != 0)
        fprintf(stderr, "rebuilt message does not parse: %d (%s)\n", rc, ntcp_strerror(rc));
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(m2.method == m->method && m2.cls == m->cls && m2.rfc3489 == m->rfc3489);
    FUZZ_CHECK(memcmp(m2.tid, m->tid, STUN_TID_SIZE) == 0);
    FUZZ_CHECK(m2.nattrs == m->nattrs);
    FUZZ_CHECK((m2.integrity < 0) == (m->integrity < 0));
    FUZZ_CHECK((m2.integrity_sha256 < 0) == (m->integrity_sha256 < 0));
    FUZZ_CHECK((m2.fingerprint < 0) == (m->fingerprint < 0));
    size_t j = 0;
    for (size_t i = 0; i < m->nattrs; i++) {
        if (is_trailer(m, i))
            continue;
        while (j < m2.nattrs && is_trailer(&m2, j))
            j++;
        FUZZ_CHECK(j < m2.nattrs);
        FUZZ_CHECK(m2.attrs[j].type == m->attrs[i].type && m2.attrs[j].len == m->attrs[i].len);
        FUZZ_CHECK(memcmp(stun_attr_value(&m2, &m2.attrs[j]), stun_attr_value(m, &m->attrs[i]),
                          m->attrs[i].len) == 0);
        j++;
    }
    FUZZ_CHECK(m2.nunknown == m->nunknown);
    FUZZ_CHECK(memcmp(m2.unknown, m->unknown, m->nunknown * sizeof m->unknown[0]) == 0);
    if (m->integrity >= 0)
        FUZZ_CHECK(stun_check_integrity(&m2, KEY, KEYLEN, false) == 0);
    if (m->integrity_sha256 >= 0)
        FUZZ_CHECK(stun_check_integrity(&m2, KEY, KEYLEN, true) == 0);
    /* Same addresses, XOR undone with the same transaction id. */
    for (size_t i = 0; i < sizeof ADDR_TYPES / sizeof ADDR_TYPES[0]; i++) {
        struct sockaddr_storage a1, a2;
        int r1 = stun_get_addr(m, ADDR_TYPES[i], &a1), r2 = stun_get_addr(&m2, ADDR_TYPES[i], &a2);
        FUZZ_CHECK(r1 == r2);
        if (r1 == 0)
            FUZZ_CHECK(memcmp(&a1, &a2, sizeof a1) == 0);
    }
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    (void)stun_looks_like(data, size);
    stun_msg m;
    int rc = stun_parse(&m, data, size);
    if (rc != 0) {
        FUZZ_CHECK(rc == NTCP_ETRUNCATED || rc == NTCP_EMALFORMED || rc == NTCP_EBADATTR ||
                   rc == NTCP_EPADDING || rc == NTCP_EFAMILY || rc == NTCP_EFINGERPRINT ||
                   rc == NTCP_ENOTSTUN || rc == NTCP_ERANGE);
        return 0;
    }
    FUZZ_CHECK(stun_looks_like(data, size));
    FUZZ_CHECK(m.buf == data && m.len == size);
    FUZZ_CHECK(m.nattrs <= STUN_MAX_ATTRS && m.nunknown <= STUN_MAX_UNKNOWN);
    FUZZ_CHECK(m.integrity < (int)m.nattrs && m.integrity_sha256 < (int)m.nattrs);
    FUZZ_CHECK(m.fingerprint < 0 || m.fingerprint == (int)m.nattrs - 1);
    for (size_t i = 0; i < m.nunknown; i++)
        FUZZ_CHECK(m.unknown[i] < 0x8000);
    exercise_getters(&m);
    rebuild(&m);
    return 0;
}
