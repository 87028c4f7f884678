/*
 * test_stun.c: unit tests of the STUN codec (src/stun.h): the RFC 5769 test
 * vectors both ways, a table of malformed messages and their errors, RFC 3489
 * and RFC 5780 attributes, builder sizing, and the TCP stream framer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "ntcp.h"
#include "stun.h"

/* ---- helpers ------------------------------------------------------------ */

/* Buffers that end right before an inaccessible page: any read or write
 * past their end faults, in every build, even from inside zlib or OpenSSL
 * (which the sanitizers do not instrument). */
static struct {
    uint8_t *p;
    uint8_t *base;
    size_t maplen;
} live[16];

static uint8_t *guarded_alloc(size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t data = (n + page - 1) / page * page;
    uint8_t *base = mmap(NULL, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(base != MAP_FAILED);
    assert_int_equal(mprotect(base + data, page, PROT_NONE), 0);
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++) {
        if (!live[i].base) {
            live[i].base = base;
            live[i].maplen = data + page;
            live[i].p = base + data - n;
            return live[i].p;
        }
    }
    fail_msg("too many guarded buffers");
    return NULL;
}

static void release(uint8_t *p)
{
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++) {
        if (live[i].base && live[i].p == p) {
            munmap(live[i].base, live[i].maplen);
            live[i].base = NULL;
            return;
        }
    }
    fail_msg("release of an unknown buffer");
}

/* After each test, even a failed one (cmocka leaves it by longjmp). */
static int release_all(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++) {
        if (live[i].base) {
            munmap(live[i].base, live[i].maplen);
            live[i].base = NULL;
        }
    }
    return 0;
}

/* Every input is parsed from an exactly sized copy, so that any read past
 * the end shows. */
static uint8_t *dup_exact(const uint8_t *p, size_t n)
{
    uint8_t *q = guarded_alloc(n);
    if (n)
        memcpy(q, p, n);
    return q;
}

/* Parses a heap copy of p; *copy must be freed by the caller after m is used. */
static int parse_copy(stun_msg *m, const uint8_t *p, size_t n, uint8_t **copy)
{
    *copy = dup_exact(p, n);
    memset(m, 0xEE, sizeof *m); /* nothing may depend on m's prior content */
    return stun_parse(m, *copy, n);
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static void check_addr(const struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
    char got[INET6_ADDRSTRLEN] = "";
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, got, sizeof got);
        assert_string_equal(got, ip);
        assert_int_equal(ntohs(sin->sin_port), port);
    } else {
        assert_int_equal(ss->ss_family, AF_INET6);
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, got, sizeof got);
        assert_string_equal(got, ip);
        assert_int_equal(ntohs(sin6->sin6_port), port);
    }
}

static void make_addr(struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
    memset(ss, 0, sizeof *ss);
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        assert_int_equal(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1);
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
    }
}

static void check_string(const stun_msg *m, uint16_t type, const char *want)
{
    const char *s = NULL;
    size_t len = 0;
    assert_int_equal(stun_get_string(m, type, &s, &len), 0);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(s, want, len);
    /* the pointer is into the parsed buffer */
    assert_true((const uint8_t *)s >= m->buf && (const uint8_t *)s + len <= m->buf + m->len);
}

/* Small deterministic generator for split positions and chunk sizes. */
static uint32_t rng_next(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* ---- RFC 5769 test vectors ---------------------------------------------- */

static const uint8_t COOKIE_TID[STUN_TID_SIZE] = {
    0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
};
static const char SHORT_TERM_PASS[] = "VOkJxbRl1RmTxUk/WvJxBt";

/* 2.1 Sample Request */
static const uint8_t RFC5769_REQUEST[] = {
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
    0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
    0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
    0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
    0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
    0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
    0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
    0x7a, 0x3b, 0xcf,
};

/* 2.2 Sample IPv4 Response */
static const uint8_t RFC5769_IPV4[] = {
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
    0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
    0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
    0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
    0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
    0x04, 0xc0, 0x7d, 0x4c, 0x96,
};

/* 2.3 Sample IPv6 Response */
static const uint8_t RFC5769_IPV6[] = {
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
    0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
    0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
    0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
    0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
    0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
    0x0b, 0x4c,
};

/* 2.4 Sample Request with Long-Term Authentication */
static const uint8_t RFC5769_LONGTERM[] = {
    0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72,
    0xc0, 0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88,
    0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00,
    0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36,
    0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73,
    0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72,
    0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02,
    0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
};
static const uint8_t LONGTERM_TID[STUN_TID_SIZE] = {
    0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e,
};
/* "\u30de\u30c8\u30ea\u30c3\u30af\u30b9" in UTF-8 */
static const char LT_USER[] = "\xe3\x83\x9e\xe3\x83\x88\xe3\x83\xaa\xe3\x83\x83\xe3\x82\xaf\xe3\x82\xb9";
static const char LT_REALM[] = "example.org";
static const char LT_PASS[] = "TheMatrIX"; /* after SASLprep */
static const char LT_NONCE[] = "f//499k954d6OL34oL9FSTvy64sA";
/* MD5("<user>:example.org:TheMatrIX"), computed independently */
static const uint8_t LT_KEY[16] = {0xe8, 0xca, 0x7a, 0xd5, 0x9d, 0x5e, 0xb0, 0x51,
                                   0x8e, 0x31, 0x29, 0x11, 0xd2, 0xda, 0xb2, 0xa9};

static void test_rfc5769_request_parse(void **state)
{
    (void)state;
    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, RFC5769_REQUEST, sizeof RFC5769_REQUEST, &buf), 0);
    assert_int_equal(m.len, sizeof RFC5769_REQUEST);
    assert_ptr_equal(m.buf, buf);
    assert_int_equal(m.method, STUN_BINDING);
    assert_int_equal(m.cls, STUN_REQUEST);
    assert_false(m.rfc3489);
    assert_memory_equal(m.tid, COOKIE_TID, STUN_TID_SIZE);
    assert_int_equal(m.nattrs, 6);
    static const uint16_t types[] = {STUN_ATTR_SOFTWARE, STUN_ATTR_PRIORITY, STUN_ATTR_ICE_CONTROLLED,
                                     STUN_ATTR_USERNAME,
                                     STUN_ATTR_MESSAGE_INTEGRITY, STUN_ATTR_FINGERPRINT};
    static const uint16_t lens[] = {16, 4, 8, 9, 20, 4};
    static const uint16_t offs[] = {20, 40, 48, 60, 76, 100};
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(m.attrs[i].type, types[i]);
        assert_int_equal(m.attrs[i].len, lens[i]);
        assert_int_equal(m.attrs[i].off, offs[i]);
    }
    assert_int_equal(m.integrity, 4);
    assert_int_equal(m.integrity_sha256, -1);
    assert_int_equal(m.fingerprint, 5);
    check_string(&m, STUN_ATTR_SOFTWARE, "STUN test client");
    check_string(&m, STUN_ATTR_USERNAME, "evtj:h6vY");
    uint32_t prio = 0;
    assert_int_equal(stun_get_u32(&m, STUN_ATTR_PRIORITY, &prio), 0);
    assert_int_equal(prio, 0x6e0001ffu);
    const stun_attr *ice = stun_find(&m, STUN_ATTR_ICE_CONTROLLED);
    assert_non_null(ice);
    assert_memory_equal(stun_attr_value(&m, ice), "\x93\x2f\xf9\xb1\x51\x26\x3b\x36", 8);
    /* PRIORITY is comprehension-required, and known (ICE attributes are). */
    assert_int_equal(m.nunknown, 0);
    /* Absent attributes. */
    struct sockaddr_storage ss;
    assert_null(stun_find(&m, STUN_ATTR_REALM));
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &ss), NTCP_ENOTFOUND);
    const char *s;
    size_t n;
    assert_int_equal(stun_get_string(&m, STUN_ATTR_NONCE, &s, &n), NTCP_ENOTFOUND);

    const uint8_t *key = (const uint8_t *)SHORT_TERM_PASS;
    assert_int_equal(stun_check_integrity(&m, key, strlen(SHORT_TERM_PASS), false), 0);
    assert_int_equal(stun_check_integrity(&m, (const uint8_t *)"VOkJxbRl1RmTxUk/WvJxBu", 22, false),
                     NTCP_EINTEGRITY);
    assert_int_equal(stun_check_integrity(&m, key, 21, false), NTCP_EINTEGRITY);
    assert_int_equal(stun_check_integrity(&m, key, strlen(SHORT_TERM_PASS), true), NTCP_ENOTFOUND);
    /* FINGERPRINT covers everything before it. */
    assert_int_equal(stun_fingerprint(buf, sizeof RFC5769_REQUEST - 8), 0xe57a3bcfu);
    release(buf);
}

static void test_rfc5769_request_build(void **state)
{
    (void)state;
    uint8_t out[256];
    memset(out, 0x55, sizeof out);
    stun_builder b;
    stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_REQUEST, COOKIE_TID, false);
    b.pad_byte = 0x20;
    stun_build_string(&b, STUN_ATTR_SOFTWARE, "STUN test client");
    stun_build_u32(&b, STUN_ATTR_PRIORITY, 0x6e0001ff);
    stun_build_attr(&b, STUN_ATTR_ICE_CONTROLLED, "\x93\x2f\xf9\xb1\x51\x26\x3b\x36", 8);
    stun_build_string(&b, STUN_ATTR_USERNAME, "evtj:h6vY");
    stun_build_integrity(&b, (const uint8_t *)SHORT_TERM_PASS, strlen(SHORT_TERM_PASS));
    stun_build_fingerprint(&b);
    size_t need = 0;
    int n = stun_build_finish(&b, &need);
    assert_int_equal(n, sizeof RFC5769_REQUEST);
    assert_memory_equal(out, RFC5769_REQUEST, sizeof RFC5769_REQUEST);
    assert_int_equal(out[sizeof RFC5769_REQUEST], 0x55); /* nothing written after */
}

static void test_rfc5769_ipv4_parse(void **state)
{
    (void)state;
    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, RFC5769_IPV4, sizeof RFC5769_IPV4, &buf), 0);
    assert_int_equal(m.method, STUN_BINDING);
    assert_int_equal(m.cls, STUN_SUCCESS);
    assert_false(m.rfc3489);
    assert_memory_equal(m.tid, COOKIE_TID, STUN_TID_SIZE);
    assert_int_equal(m.nattrs, 4);
    assert_int_equal(m.nunknown, 0);
    assert_int_equal(m.integrity, 2);
    assert_int_equal(m.fingerprint, 3);
    check_string(&m, STUN_ATTR_SOFTWARE, "test vector");
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &ss), 0);
    check_addr(&ss, "192.0.2.1", 32853);
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_MAPPED_ADDRESS, &ss), NTCP_ENOTFOUND);
    assert_int_equal(stun_check_integrity(&m, (const uint8_t *)SHORT_TERM_PASS, 22, false), 0);
    assert_int_equal(stun_check_integrity(&m, (const uint8_t *)"wrong", 5, false), NTCP_EINTEGRITY);
    assert_int_equal(stun_fingerprint(buf, sizeof RFC5769_IPV4 - 8), 0xc07d4c96u);
    release(buf);
}

static void test_rfc5769_ipv4_build(void **state)
{
    (void)state;
    uint8_t out[256];
    stun_builder b;
    struct sockaddr_storage ss;
    make_addr(&ss, "192.0.2.1", 32853);
    stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_SUCCESS, COOKIE_TID, false);
    b.pad_byte = 0x20;
    stun_build_string(&b, STUN_ATTR_SOFTWARE, "test vector");
    stun_build_addr(&b, STUN_ATTR_XOR_MAPPED_ADDRESS, (const struct sockaddr *)&ss);
    stun_build_integrity(&b, (const uint8_t *)SHORT_TERM_PASS, strlen(SHORT_TERM_PASS));
    stun_build_fingerprint(&b);
    assert_int_equal(stun_build_finish(&b, NULL), sizeof RFC5769_IPV4);
    assert_memory_equal(out, RFC5769_IPV4, sizeof RFC5769_IPV4);
}

static void test_rfc5769_ipv6_parse(void **state)
{
    (void)state;
    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, RFC5769_IPV6, sizeof RFC5769_IPV6, &buf), 0);
    assert_int_equal(m.method, STUN_BINDING);
    assert_int_equal(m.cls, STUN_SUCCESS);
    assert_memory_equal(m.tid, COOKIE_TID, STUN_TID_SIZE);
    assert_int_equal(m.nattrs, 4);
    check_string(&m, STUN_ATTR_SOFTWARE, "test vector");
    struct sockaddr_storage ss;
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &ss), 0);
    check_addr(&ss, "2001:db8:1234:5678:11:2233:4455:6677", 32853);
    assert_int_equal(stun_check_integrity(&m, (const uint8_t *)SHORT_TERM_PASS, 22, false), 0);
    assert_int_equal(stun_check_integrity(&m, (const uint8_t *)"VOkJxbRl1RmTxUk/WvJxB", 21, false),
                     NTCP_EINTEGRITY);
    assert_int_equal(stun_fingerprint(buf, sizeof RFC5769_IPV6 - 8), 0xc8fb0b4cu);
    release(buf);
}

static void test_rfc5769_ipv6_build(void **state)
{
    (void)state;
    uint8_t out[256];
    stun_builder b;
    struct sockaddr_storage ss;
    make_addr(&ss, "2001:db8:1234:5678:11:2233:4455:6677", 32853);
    stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_SUCCESS, COOKIE_TID, false);
    b.pad_byte = 0x20;
    stun_build_string(&b, STUN_ATTR_SOFTWARE, "test vector");
    stun_build_addr(&b, STUN_ATTR_XOR_MAPPED_ADDRESS, (const struct sockaddr *)&ss);
    stun_build_integrity(&b, (const uint8_t *)SHORT_TERM_PASS, strlen(SHORT_TERM_PASS));
    stun_build_fingerprint(&b);
    assert_int_equal(stun_build_finish(&b, NULL), sizeof RFC5769_IPV6);
    assert_memory_equal(out, RFC5769_IPV6, sizeof RFC5769_IPV6);
}

static void test_rfc5769_longterm_key(void **state)
{
    (void)state;
    uint8_t key[16];
    memset(key, 0, sizeof key);
    assert_int_equal(stun_long_term_key(LT_USER, strlen(LT_USER), LT_REALM, strlen(LT_REALM), LT_PASS,
                                        strlen(LT_PASS), key),
                     0);
    assert_memory_equal(key, LT_KEY, 16);
}

static void test_rfc5769_longterm_parse(void **state)
{
    (void)state;
    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, RFC5769_LONGTERM, sizeof RFC5769_LONGTERM, &buf), 0);
    assert_int_equal(m.method, STUN_BINDING);
    assert_int_equal(m.cls, STUN_REQUEST);
    assert_memory_equal(m.tid, LONGTERM_TID, STUN_TID_SIZE);
    assert_int_equal(m.nattrs, 4);
    assert_int_equal(m.nunknown, 0);
    assert_int_equal(m.integrity, 3);
    assert_int_equal(m.fingerprint, -1);
    check_string(&m, STUN_ATTR_USERNAME, LT_USER);
    check_string(&m, STUN_ATTR_NONCE, LT_NONCE);
    check_string(&m, STUN_ATTR_REALM, LT_REALM);

    uint8_t key[16];
    const char *u, *r;
    size_t ul, rl;
    /* The key from the attributes as received equals the one from the
     * configured strings. */
    assert_int_equal(stun_get_string(&m, STUN_ATTR_USERNAME, &u, &ul), 0);
    assert_int_equal(stun_get_string(&m, STUN_ATTR_REALM, &r, &rl), 0);
    assert_int_equal(stun_long_term_key(u, ul, r, rl, LT_PASS, strlen(LT_PASS), key), 0);
    assert_memory_equal(key, LT_KEY, 16);
    assert_int_equal(stun_check_integrity(&m, key, 16, false), 0);
    /* The password before SASLprep gives another key. */
    assert_int_equal(stun_long_term_key(u, ul, r, rl, "TheMatrix", 9, key), 0);
    assert_int_equal(stun_check_integrity(&m, key, 16, false), NTCP_EINTEGRITY);
    /* Short-term use of the long-term password is wrong too. */
    assert_int_equal(stun_check_integrity(&m, (const uint8_t *)LT_PASS, 9, false), NTCP_EINTEGRITY);
    release(buf);
}

static void test_rfc5769_longterm_build(void **state)
{
    (void)state;
    uint8_t out[256];
    stun_builder b;
    stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_REQUEST, LONGTERM_TID, false);
    /* this vector pads with zeros: keep the default pad byte */
    stun_build_string(&b, STUN_ATTR_USERNAME, LT_USER);
    stun_build_string(&b, STUN_ATTR_NONCE, LT_NONCE);
    stun_build_string(&b, STUN_ATTR_REALM, LT_REALM);
    stun_build_integrity(&b, LT_KEY, 16);
    assert_int_equal(stun_build_finish(&b, NULL), sizeof RFC5769_LONGTERM);
    assert_memory_equal(out, RFC5769_LONGTERM, sizeof RFC5769_LONGTERM);
}

/* RFC 8489 14.5: attributes after MESSAGE-INTEGRITY (other than
 * MESSAGE-INTEGRITY-SHA256 and FINGERPRINT) are ignored, and the integrity
 * still verifies since it covers the message up to itself. */
static void test_attrs_after_integrity_ignored(void **state)
{
    (void)state;
    uint8_t msg[sizeof RFC5769_LONGTERM + 8];
    memcpy(msg, RFC5769_LONGTERM, sizeof RFC5769_LONGTERM);
    memcpy(msg + sizeof RFC5769_LONGTERM, "\x80\x22\x00\x04" "evil", 8);
    put16(msg + 2, (uint16_t)(sizeof msg - 20));
    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, msg, sizeof msg, &buf), 0);
    assert_null(stun_find(&m, STUN_ATTR_SOFTWARE));
    assert_int_equal(stun_check_integrity(&m, LT_KEY, 16, false), 0);
    release(buf);
}

/* ---- MESSAGE-INTEGRITY-SHA256 ------------------------------------------- */

static void test_integrity_sha256(void **state)
{
    (void)state;
    uint8_t key[32];
    for (size_t i = 0; i < sizeof key; i++)
        key[i] = (uint8_t)(i * 7 + 1);
    uint8_t tid[STUN_TID_SIZE];
    assert_int_equal(stun_new_tid(tid), 0);
    assert_memory_equal(tid, "\x21\x12\xa4\x42", 4);

    for (int with_sha1 = 0; with_sha1 < 2; with_sha1++) {
        for (int with_fp = 0; with_fp < 2; with_fp++) {
            uint8_t out[256];
            stun_builder b;
            stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_REQUEST, tid, false);
            stun_build_string(&b, STUN_ATTR_USERNAME, "alice");
            stun_build_string(&b, STUN_ATTR_SOFTWARE, "ntcp test");
            if (with_sha1)
                stun_build_integrity(&b, key, sizeof key);
            stun_build_integrity_sha256(&b, key, sizeof key);
            if (with_fp)
                stun_build_fingerprint(&b);
            int n = stun_build_finish(&b, NULL);
            assert_true(n > 0);
            size_t len = (size_t)n;
            assert_int_equal(len, 20 + 12 + 16 + (with_sha1 ? 24 : 0) + 36 + (with_fp ? 8 : 0));

            stun_msg m;
            uint8_t *buf;
            assert_int_equal(parse_copy(&m, out, len, &buf), 0);
            assert_true(m.integrity_sha256 >= 0);
            assert_int_equal(m.attrs[m.integrity_sha256].type, STUN_ATTR_MESSAGE_INTEGRITY_SHA256);
            assert_int_equal(m.attrs[m.integrity_sha256].len, 32);
            assert_int_equal(stun_check_integrity(&m, key, sizeof key, true), 0);
            assert_int_equal(stun_check_integrity(&m, key, sizeof key, false),
                             with_sha1 ? 0 : NTCP_ENOTFOUND);
            assert_int_equal(stun_check_integrity(&m, key, sizeof key - 1, true), NTCP_EINTEGRITY);
            release(buf);

            if (with_fp)
                continue;
            /* Tamper with each byte of USERNAME's value and of the HMAC itself. */
            size_t spots[] = {24, 26, len - 1, len - 32};
            for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
                uint8_t bad[256];
                memcpy(bad, out, len);
                bad[spots[i]] ^= 0x01;
                assert_int_equal(parse_copy(&m, bad, len, &buf), 0);
                assert_int_equal(stun_check_integrity(&m, key, sizeof key, true), NTCP_EINTEGRITY);
                release(buf);
            }
        }
    }
}

/* RFC 8489 14.6: MESSAGE-INTEGRITY-SHA256 may be truncated to 16 bytes or
 * more (a multiple of 4); the check compares what is there. The truncated
 * HMAC is computed here with OpenSSL, independently of the builder. */
static void test_integrity_sha256_truncated(void **state)
{
    (void)state;
    static const uint8_t key[] = "truncation key";
    for (size_t tlen = 16; tlen <= 32; tlen += 4) {
        uint8_t msg[128];
        stun_builder b;
        stun_build_init(&b, msg, sizeof msg, STUN_BINDING, STUN_REQUEST, COOKIE_TID, false);
        stun_build_string(&b, STUN_ATTR_USERNAME, "bob");
        int n = stun_build_finish(&b, NULL);
        assert_int_equal(n, 28);
        size_t len = (size_t)n;
        put16(msg + len, STUN_ATTR_MESSAGE_INTEGRITY_SHA256);
        put16(msg + len + 2, (uint16_t)tlen);
        put16(msg + 2, (uint16_t)(len + 4 + tlen - 20));
        uint8_t mac[EVP_MAX_MD_SIZE];
        unsigned int maclen = 0;
        assert_non_null(HMAC(EVP_sha256(), key, sizeof key - 1, msg, len, mac, &maclen));
        assert_int_equal(maclen, 32);
        memcpy(msg + len + 4, mac, tlen);
        len += 4 + tlen;

        stun_msg m;
        uint8_t *buf;
        assert_int_equal(parse_copy(&m, msg, len, &buf), 0);
        assert_true(m.integrity_sha256 >= 0);
        assert_int_equal(m.attrs[m.integrity_sha256].len, tlen);
        assert_int_equal(stun_check_integrity(&m, key, sizeof key - 1, true), 0);
        release(buf);
        msg[len - 1] ^= 0x80;
        assert_int_equal(parse_copy(&m, msg, len, &buf), 0);
        assert_int_equal(stun_check_integrity(&m, key, sizeof key - 1, true), NTCP_EINTEGRITY);
        release(buf);
    }
}

/* ---- malformed messages ------------------------------------------------- */

struct bad_case {
    const char *name;
    uint8_t bytes[200];
    size_t len;
    int want;
};

/* Writes a cookie header with the given length field and body. */
static size_t mk(uint8_t *out, uint16_t type, uint16_t hdr_len, const uint8_t *body, size_t blen)
{
    put16(out, type);
    put16(out + 2, hdr_len);
    memcpy(out + 4, COOKIE_TID, STUN_TID_SIZE);
    memcpy(out + 20, body, blen);
    return 20 + blen;
}

/* A Binding request whose length field is the body's length. */
#define MKB(c, body)                                                                               \
    ((c)->len = mk((c)->bytes, 0x0001, sizeof(body) - 1, (const uint8_t *)(body), sizeof(body) - 1))

static size_t build_bad_cases(struct bad_case *cs)
{
    struct bad_case *c = cs;

    c->name = "empty";
    c->len = 0;
    c->want = NTCP_ETRUNCATED;
    c++;

    c->name = "header cut at 19 bytes";
    memcpy(c->bytes, RFC5769_IPV4, 19);
    c->len = 19;
    c->want = NTCP_ETRUNCATED;
    c++;

    c->name = "header cut at 1 byte";
    memcpy(c->bytes, RFC5769_IPV4, 1);
    c->len = 1;
    c->want = NTCP_ETRUNCATED;
    c++;

    c->name = "length field 4 more than the buffer";
    memcpy(c->bytes, RFC5769_IPV4, sizeof RFC5769_IPV4);
    put16(c->bytes + 2, 0x40);
    c->len = sizeof RFC5769_IPV4;
    c->want = NTCP_ETRUNCATED;
    c++;

    c->name = "message cut inside its last attribute";
    memcpy(c->bytes, RFC5769_IPV4, sizeof RFC5769_IPV4 - 2);
    c->len = sizeof RFC5769_IPV4 - 2;
    c->want = NTCP_ETRUNCATED;
    c++;

    c->name = "bytes after the message";
    memcpy(c->bytes, RFC5769_IPV4, sizeof RFC5769_IPV4);
    memset(c->bytes + sizeof RFC5769_IPV4, 0, 4);
    c->len = sizeof RFC5769_IPV4 + 4;
    c->want = NTCP_EMALFORMED;
    c++;

    c->name = "top bit set";
    memcpy(c->bytes, RFC5769_IPV4, sizeof RFC5769_IPV4);
    c->bytes[0] |= 0x80;
    c->len = sizeof RFC5769_IPV4;
    c->want = NTCP_ENOTSTUN;
    c++;

    c->name = "top two bits set";
    memcpy(c->bytes, RFC5769_IPV4, sizeof RFC5769_IPV4);
    c->bytes[0] |= 0xC0;
    c->len = sizeof RFC5769_IPV4;
    c->want = NTCP_ENOTSTUN;
    c++;

    c->name = "second bit set (RTP/RTCP range)";
    MKB(c, "");
    c->bytes[0] = 0x40;
    c->want = NTCP_ENOTSTUN;
    c++;

    /* No whole attribute header to blame: the length is. */
    c->name = "length not a multiple of 4 (2)";
    MKB(c, "\x80\x22");
    c->want = NTCP_EMALFORMED;
    c++;

    c->name = "length not a multiple of 4 (3), after a good attribute";
    MKB(c, "\x80\x22\x00\x04" "abcd" "\x80\x22\x00");
    c->want = NTCP_EMALFORMED;
    c++;

    c->name = "attribute value runs past the message";
    MKB(c, "\x80\x22\x00\x10" "abcd");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "attribute value runs past the message by 1";
    MKB(c, "\x80\x22\x00\x05" "abcd");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "last attribute unpadded (padding past the end)";
    MKB(c, "\x80\x22\x00\x05" "abcde");
    c->want = NTCP_EPADDING;
    c++;

    c->name = "unpadded attribute followed by another";
    MKB(c, "\x80\x22\x00\x05" "abcde" "\x80\x22\x00\x03" "xyz");
    c->want = NTCP_EBADATTR; /* padding eats the next header: garbage length */
    c++;

    c->name = "XOR-MAPPED-ADDRESS family 3";
    MKB(c, "\x00\x20\x00\x08\x00\x03\xa1\x47\xe1\x12\xa6\x43");
    c->want = NTCP_EFAMILY;
    c++;

    c->name = "MAPPED-ADDRESS family 0";
    MKB(c, "\x00\x01\x00\x08\x00\x00\x04\xd2\x7f\x00\x00\x01");
    c->want = NTCP_EFAMILY;
    c++;

    c->name = "OTHER-ADDRESS family 0x81";
    MKB(c, "\x80\x2c\x00\x08\x00\x81\x04\xd2\x7f\x00\x00\x01");
    c->want = NTCP_EFAMILY;
    c++;

    c->name = "XOR-MAPPED-ADDRESS IPv4 with 20-byte value";
    MKB(c, "\x00\x20\x00\x14\x00\x01\xa1\x47\xe1\x12\xa6\x43"
           "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "XOR-MAPPED-ADDRESS IPv6 with 8-byte value";
    MKB(c, "\x00\x20\x00\x08\x00\x02\xa1\x47\xe1\x12\xa6\x43");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "MAPPED-ADDRESS with 4-byte value";
    MKB(c, "\x00\x01\x00\x04\x00\x01\x04\xd2");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "FINGERPRINT wrong";
    memcpy(c->bytes, RFC5769_IPV4, sizeof RFC5769_IPV4);
    c->bytes[sizeof RFC5769_IPV4 - 1] ^= 0x01;
    c->len = sizeof RFC5769_IPV4;
    c->want = NTCP_EFINGERPRINT;
    c++;

    c->name = "FINGERPRINT over a tampered body";
    memcpy(c->bytes, RFC5769_IPV4, sizeof RFC5769_IPV4);
    c->bytes[25] ^= 0x01; /* in SOFTWARE */
    c->len = sizeof RFC5769_IPV4;
    c->want = NTCP_EFINGERPRINT;
    c++;

    c->name = "FINGERPRINT not last (its value wrong too)";
    memcpy(c->bytes, RFC5769_IPV4, sizeof RFC5769_IPV4);
    memcpy(c->bytes + sizeof RFC5769_IPV4, "\x80\x22\x00\x04" "more", 8);
    c->len = sizeof RFC5769_IPV4 + 8;
    put16(c->bytes + 2, (uint16_t)(c->len - 20));
    c->want = NTCP_EFINGERPRINT;
    c++;

    /* The same with a FINGERPRINT value that is right for the bytes before
     * it (the header's length counting the attribute after it): only its
     * place is wrong. */
    c->name = "FINGERPRINT not last (its value right)";
    memcpy(c->bytes, c[-1].bytes, c[-1].len);
    c->len = c[-1].len;
    {
        uint32_t fp = stun_fingerprint(c->bytes, sizeof RFC5769_IPV4 - 8);
        uint8_t *v = c->bytes + sizeof RFC5769_IPV4 - 4;
        v[0] = (uint8_t)(fp >> 24), v[1] = (uint8_t)(fp >> 16), v[2] = (uint8_t)(fp >> 8), v[3] = (uint8_t)fp;
    }
    c->want = NTCP_EFINGERPRINT;
    c++;

    c->name = "FINGERPRINT with 8-byte value";
    MKB(c, "\x80\x28\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "MESSAGE-INTEGRITY with 19-byte value";
    MKB(c, "\x00\x08\x00\x13" "0123456789abcdefghi" "\x00");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "MESSAGE-INTEGRITY-SHA256 with 12-byte value";
    MKB(c, "\x00\x1c\x00\x0c" "0123456789ab");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "ERROR-CODE class 7";
    MKB(c, "\x00\x09\x00\x08\x00\x00\x07\x00" "Oops");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "ERROR-CODE class 2 (code 200)";
    MKB(c, "\x00\x09\x00\x08\x00\x00\x02\x00" "Oops");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "ERROR-CODE number 100";
    MKB(c, "\x00\x09\x00\x08\x00\x00\x04\x64" "Oops");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "ERROR-CODE 3 bytes";
    MKB(c, "\x00\x09\x00\x03\x00\x00\x04\x00");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "CHANGE-REQUEST 2 bytes";
    MKB(c, "\x00\x03\x00\x02\x00\x06\x00\x00");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "RESPONSE-PORT 2 bytes";
    MKB(c, "\x00\x27\x00\x02\x12\x34\x00\x00");
    c->want = NTCP_EBADATTR;
    c++;

    c->name = "UNKNOWN-ATTRIBUTES odd length";
    MKB(c, "\x00\x0a\x00\x03\x00\x24\x00\x00");
    c->want = NTCP_EBADATTR;
    c++;

    /* More attributes than STUN_MAX_ATTRS: 41 SOFTWARE "a". */
    c->name = "41 attributes";
    /* the body does not fit c->bytes: the test appends it */
    c->len = mk(c->bytes, 0x0001, 41 * 8, (const uint8_t *)"", 0);
    c->want = NTCP_ERANGE;
    c++;

    return (size_t)(c - cs);
}

static void test_malformed_table(void **state)
{
    (void)state;
    static struct bad_case cases[64];
    size_t n = build_bad_cases(cases);
    assert_true(n <= 64);
    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *bytes = cases[i].bytes;
        size_t len = cases[i].len;
        uint8_t big[20 + 41 * 8];
        if (cases[i].want == NTCP_ERANGE) {
            memcpy(big, cases[i].bytes, 20);
            for (int k = 0; k < 41; k++)
                memcpy(big + 20 + 8 * k, "\x80\x22\x00\x01" "a\0\0\0", 8);
            bytes = big;
            len = sizeof big;
        }
        stun_msg m;
        uint8_t *buf;
        int rc = parse_copy(&m, bytes, len, &buf);
        if (rc != cases[i].want) {
            print_message("case '%s': want %d (%s), got %d (%s)\n", cases[i].name, cases[i].want,
                          ntcp_strerror(cases[i].want), rc, ntcp_strerror(rc));
            failures++;
        } else if (len >= 20 && rc != NTCP_ENOTSTUN && rc != NTCP_ETRUNCATED) {
            /* The header is readable: a server must be able to answer 400 to
             * the right transaction. */
            if (m.len == 0 || memcmp(m.tid, bytes + 4, STUN_TID_SIZE) != 0 ||
                m.method != (get16(bytes) & 0x000F) + ((get16(bytes) >> 1) & 0x0070) +
                                ((get16(bytes) >> 2) & 0x0F80)) {
                print_message("case '%s': header fields not filled in on error\n", cases[i].name);
                failures++;
            }
        }
        release(buf);
        /* stun_looks_like never reads past its len either. */
        uint8_t *copy = dup_exact(bytes, len);
        (void)stun_looks_like(copy, len);
        release(copy);
    }
    assert_int_equal(failures, 0);
}

/* Integrity: stun_parse accepts, stun_check_integrity refuses. */
static void test_integrity_tampered(void **state)
{
    (void)state;
    /* Every byte of the long-term vector before MESSAGE-INTEGRITY's value is
     * covered by the HMAC (it has no FINGERPRINT). Flip one bit in each that
     * leaves the message parseable. */
    int tried = 0;
    for (size_t i = 0; i < sizeof RFC5769_LONGTERM; i++) {
        uint8_t bad[sizeof RFC5769_LONGTERM];
        memcpy(bad, RFC5769_LONGTERM, sizeof bad);
        bad[i] ^= 0x01;
        stun_msg m;
        uint8_t *buf;
        int rc = parse_copy(&m, bad, sizeof bad, &buf);
        if (rc == 0) {
            tried++;
            /* a flip in MESSAGE-INTEGRITY's type may leave no integrity */
            int want = m.integrity < 0 ? NTCP_ENOTFOUND : NTCP_EINTEGRITY;
            int got = stun_check_integrity(&m, LT_KEY, 16, false);
            if (got != want)
                fail_msg("byte %zu flipped: want %d, got %d", i, want, got);
        }
        release(buf);
    }
    /* At least the value bytes of USERNAME, NONCE, REALM and the HMAC. */
    assert_true(tried >= 18 + 28 + 11 + 20);
}

/* ---- RFC 3489 ----------------------------------------------------------- */

static void test_rfc3489_request(void **state)
{
    (void)state;
    /* A classic binding request: no cookie, 128-bit transaction id. */
    static const uint8_t req[] = {0x00, 0x01, 0x00, 0x08, 0x5a, 0x3c, 0x11, 0x90, 0x01, 0x02,
                                  0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c,
                                  0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x06};
    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, req, sizeof req, &buf), 0);
    assert_true(m.rfc3489);
    assert_int_equal(m.method, STUN_BINDING);
    assert_int_equal(m.cls, STUN_REQUEST);
    assert_memory_equal(m.tid, req + 4, 16);
    uint32_t flags = 0;
    assert_int_equal(stun_get_change_request(&m, &flags), 0);
    assert_int_equal(flags, STUN_CHANGE_IP | STUN_CHANGE_PORT);
    release(buf);

    /* The bare 20-byte form, as Debian's stun-client sends it first. */
    assert_int_equal(parse_copy(&m, req, 20, &buf), NTCP_ETRUNCATED); /* header says 8 more */
    release(buf);
    uint8_t bare[20];
    memcpy(bare, req, 20);
    put16(bare + 2, 0);
    assert_int_equal(parse_copy(&m, bare, 20, &buf), 0);
    assert_true(m.rfc3489);
    assert_int_equal(m.nattrs, 0);
    assert_memory_equal(m.tid, bare + 4, 16);
    release(buf);
}

static void test_rfc3489_response(void **state)
{
    (void)state;
    uint8_t tid[16];
    for (int i = 0; i < 16; i++)
        tid[i] = (uint8_t)(0xF0 - i);
    struct sockaddr_storage mapped, source, changed, got;
    make_addr(&mapped, "198.51.100.7", 40000);
    make_addr(&source, "192.0.2.10", 3478);
    make_addr(&changed, "192.0.2.11", 3479);
    uint8_t out[128];
    stun_builder b;
    stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_SUCCESS, tid, true);
    stun_build_addr(&b, STUN_ATTR_MAPPED_ADDRESS, (const struct sockaddr *)&mapped);
    stun_build_addr(&b, STUN_ATTR_SOURCE_ADDRESS, (const struct sockaddr *)&source);
    stun_build_addr(&b, STUN_ATTR_CHANGED_ADDRESS, (const struct sockaddr *)&changed);
    int n = stun_build_finish(&b, NULL);
    assert_int_equal(n, 20 + 3 * 12);
    assert_int_equal(get16(out), 0x0101);
    assert_int_equal(get16(out + 2), 36);
    assert_memory_equal(out + 4, tid, 16);
    /* MAPPED-ADDRESS is not XORed: family 1, port, address in clear. */
    assert_memory_equal(out + 20, "\x00\x01\x00\x08\x00\x01\x9c\x40\xc6\x33\x64\x07", 12);

    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, out, (size_t)n, &buf), 0);
    assert_true(m.rfc3489);
    assert_int_equal(m.cls, STUN_SUCCESS);
    assert_memory_equal(m.tid, tid, 16);
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_MAPPED_ADDRESS, &got), 0);
    check_addr(&got, "198.51.100.7", 40000);
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_SOURCE_ADDRESS, &got), 0);
    check_addr(&got, "192.0.2.10", 3478);
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_CHANGED_ADDRESS, &got), 0);
    check_addr(&got, "192.0.2.11", 3479);
    release(buf);
}

/* ---- RFC 5780 and the other attributes ---------------------------------- */

static void test_rfc5780_roundtrip(void **state)
{
    (void)state;
    uint8_t tid[STUN_TID_SIZE];
    assert_int_equal(stun_new_tid(tid), 0);
    struct sockaddr_storage origin, other, got;
    make_addr(&origin, "203.0.113.1", 3478);
    make_addr(&other, "2001:db8::2", 3479);
    static const uint8_t pad[13] = "padding-bytes";
    uint8_t out[512];
    stun_builder b;
    stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_REQUEST, tid, false);
    stun_build_change_request(&b, STUN_CHANGE_IP | STUN_CHANGE_PORT);
    stun_build_attr(&b, STUN_ATTR_RESPONSE_PORT, "\xbe\xef\x00\x00", 4);
    stun_build_addr(&b, STUN_ATTR_RESPONSE_ORIGIN, (const struct sockaddr *)&origin);
    stun_build_addr(&b, STUN_ATTR_OTHER_ADDRESS, (const struct sockaddr *)&other);
    stun_build_attr(&b, STUN_ATTR_PADDING, pad, sizeof pad);
    stun_build_fingerprint(&b);
    int n = stun_build_finish(&b, NULL);
    assert_int_equal(n, 20 + 8 + 8 + 12 + 24 + 20 + 8);
    /* CHANGE-REQUEST's wire form */
    assert_memory_equal(out + 20, "\x00\x03\x00\x04\x00\x00\x00\x06", 8);

    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, out, (size_t)n, &buf), 0);
    assert_int_equal(m.nattrs, 6);
    assert_int_equal(m.nunknown, 0);
    uint32_t flags = 0;
    assert_int_equal(stun_get_change_request(&m, &flags), 0);
    assert_int_equal(flags, STUN_CHANGE_IP | STUN_CHANGE_PORT);
    uint16_t port = 0;
    assert_int_equal(stun_get_response_port(&m, &port), 0);
    assert_int_equal(port, 0xbeef);
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_RESPONSE_ORIGIN, &got), 0);
    check_addr(&got, "203.0.113.1", 3478);
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_OTHER_ADDRESS, &got), 0);
    check_addr(&got, "2001:db8::2", 3479);
    const stun_attr *a = stun_find(&m, STUN_ATTR_PADDING);
    assert_non_null(a);
    assert_int_equal(a->len, sizeof pad);
    assert_memory_equal(stun_attr_value(&m, a), pad, sizeof pad);
    release(buf);

    /* Each flag alone, and none. */
    static const uint32_t fl[] = {0, STUN_CHANGE_IP, STUN_CHANGE_PORT};
    for (size_t i = 0; i < 3; i++) {
        stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_REQUEST, tid, false);
        stun_build_change_request(&b, fl[i]);
        n = stun_build_finish(&b, NULL);
        assert_int_equal(n, 28);
        assert_int_equal(parse_copy(&m, out, (size_t)n, &buf), 0);
        assert_int_equal(stun_get_change_request(&m, &flags), 0);
        assert_int_equal(flags, fl[i]);
        assert_int_equal(stun_get_response_port(&m, &port), NTCP_ENOTFOUND);
        release(buf);
    }
}

static void test_error_unknown_roundtrip(void **state)
{
    (void)state;
    static const struct {
        int code;
        const char *reason;
    } errs[] = {{300, "Try Alternate"}, {400, "Bad Request"}, {420, "Unknown Attribute"},
                {438, "Stale Nonce"},   {500, "Server Error"}, {699, ""}};
    static const uint16_t unk[] = {0x0024, 0x7f31, 0x0777};
    uint8_t tid[STUN_TID_SIZE];
    assert_int_equal(stun_new_tid(tid), 0);
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
        uint8_t out[256];
        stun_builder b;
        stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_ERROR, tid, false);
        stun_build_error(&b, errs[i].code, errs[i].reason);
        stun_build_unknown(&b, unk, 3);
        int n = stun_build_finish(&b, NULL);
        size_t rl = strlen(errs[i].reason);
        assert_int_equal(n, 20 + 4 + ((4 + rl + 3) & ~(size_t)3) + 4 + 8);
        /* ERROR-CODE's wire form: class in byte 6, number in byte 7 */
        assert_int_equal(out[24 + 2], errs[i].code / 100);
        assert_int_equal(out[24 + 3], errs[i].code % 100);

        stun_msg m;
        uint8_t *buf;
        assert_int_equal(parse_copy(&m, out, (size_t)n, &buf), 0);
        assert_int_equal(m.cls, STUN_ERROR);
        int code = 0;
        const char *reason = NULL;
        size_t reason_len = 99;
        assert_int_equal(stun_get_error(&m, &code, &reason, &reason_len), 0);
        assert_int_equal(code, errs[i].code);
        assert_int_equal(reason_len, rl);
        if (rl)
            assert_memory_equal(reason, errs[i].reason, rl);
        uint16_t types[8];
        size_t nt = 0;
        assert_int_equal(stun_get_unknown(&m, types, 8, &nt), 0);
        assert_int_equal(nt, 3);
        assert_memory_equal(types, unk, sizeof unk);
        /* A smaller array is not overrun. */
        uint16_t two[3] = {0, 0, 0xABCD};
        nt = 0;
        int rc = stun_get_unknown(&m, two, 2, &nt);
        assert_true(rc == 0 || rc == NTCP_ENOSPC);
        assert_int_equal(nt, 2); /* the count of types stored, never more than max */
        assert_int_equal(two[0], unk[0]);
        assert_int_equal(two[1], unk[1]);
        assert_int_equal(two[2], 0xABCD);
        release(buf);
    }
    /* A code outside 300..699 is a build error, not a message. */
    uint8_t out[128];
    stun_builder b;
    stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_ERROR, tid, false);
    stun_build_error(&b, 200, "OK");
    int rc = stun_build_finish(&b, NULL);
    assert_true(rc < 0);
    assert_int_not_equal(rc, NTCP_ENOSPC);
}

static void test_unknown_attributes_listed(void **state)
{
    (void)state;
    uint8_t tid[STUN_TID_SIZE];
    assert_int_equal(stun_new_tid(tid), 0);
    uint8_t out[256];
    stun_builder b;
    stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_REQUEST, tid, false);
    stun_build_attr(&b, 0x7f31, "abc", 3);    /* comprehension-required, unknown */
    stun_build_attr(&b, 0xc0ff, "zz", 2);     /* optional, unknown */
    stun_build_string(&b, STUN_ATTR_SOFTWARE, "x");
    stun_build_attr(&b, 0x0031, "", 0);      /* required, unknown, empty */
    stun_build_attr(&b, 0x8fff, "q", 1);      /* optional */
    stun_build_fingerprint(&b);
    int n = stun_build_finish(&b, NULL);
    assert_true(n > 0);
    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, out, (size_t)n, &buf), 0);
    assert_int_equal(m.nattrs, 6);
    assert_int_equal(m.nunknown, 2);
    assert_int_equal(m.unknown[0], 0x7f31);
    assert_int_equal(m.unknown[1], 0x0031);
    /* Unknown attributes are still indexed, with their values. */
    const stun_attr *a = stun_find(&m, 0xc0ff);
    assert_non_null(a);
    assert_int_equal(a->len, 2);
    assert_memory_equal(stun_attr_value(&m, a), "zz", 2);
    release(buf);
}

static void test_alternate_realm_nonce_software(void **state)
{
    (void)state;
    uint8_t tid[STUN_TID_SIZE];
    assert_int_equal(stun_new_tid(tid), 0);
    struct sockaddr_storage alt, mapped, got;
    make_addr(&alt, "192.0.2.99", 3478);
    make_addr(&mapped, "::ffff:198.51.100.1", 65535);
    uint8_t out[256];
    stun_builder b;
    stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_ERROR, tid, false);
    stun_build_error(&b, 300, "Try Alternate");
    stun_build_addr(&b, STUN_ATTR_ALTERNATE_SERVER, (const struct sockaddr *)&alt);
    stun_build_addr(&b, STUN_ATTR_MAPPED_ADDRESS, (const struct sockaddr *)&mapped);
    stun_build_string(&b, STUN_ATTR_REALM, "ntcp.example");
    stun_build_string(&b, STUN_ATTR_NONCE, "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA");
    stun_build_string(&b, STUN_ATTR_SOFTWARE, "ntcp " NTCP_VERSION_STRING);
    stun_build_u32(&b, STUNT_ATTR_TIMEOUT, 2500);
    int n = stun_build_finish(&b, NULL);
    assert_true(n > 0);
    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, out, (size_t)n, &buf), 0);
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_ALTERNATE_SERVER, &got), 0);
    check_addr(&got, "192.0.2.99", 3478);
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_MAPPED_ADDRESS, &got), 0);
    check_addr(&got, "::ffff:198.51.100.1", 65535);
    check_string(&m, STUN_ATTR_REALM, "ntcp.example");
    check_string(&m, STUN_ATTR_NONCE, "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA");
    check_string(&m, STUN_ATTR_SOFTWARE, "ntcp " NTCP_VERSION_STRING);
    uint32_t t = 0;
    assert_int_equal(stun_get_u32(&m, STUNT_ATTR_TIMEOUT, &t), 0);
    assert_int_equal(t, 2500);
    assert_int_equal(m.nunknown, 0); /* the STUNT attributes are known */
    release(buf);
}

static void test_xor_addresses_roundtrip(void **state)
{
    (void)state;
    static const char *ips[] = {"0.0.0.0", "255.255.255.255", "10.1.2.3", "::", "::1",
                                "fe80::1:2:3:4", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"};
    static const uint16_t ports[] = {0, 1, 3478, 65535};
    uint8_t tid[STUN_TID_SIZE];
    for (size_t r = 0; r < 2; r++) {
        assert_int_equal(stun_new_tid(tid), 0);
        for (size_t i = 0; i < sizeof ips / sizeof ips[0]; i++) {
            for (size_t j = 0; j < 4; j++) {
                struct sockaddr_storage ss, got;
                make_addr(&ss, ips[i], ports[j]);
                uint8_t out[128];
                stun_builder b;
                stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_SUCCESS, tid, false);
                stun_build_addr(&b, STUN_ATTR_XOR_MAPPED_ADDRESS, (const struct sockaddr *)&ss);
                stun_build_addr(&b, STUN_ATTR_MAPPED_ADDRESS, (const struct sockaddr *)&ss);
                int n = stun_build_finish(&b, NULL);
                assert_true(n > 0);
                stun_msg m;
                uint8_t *buf;
                assert_int_equal(parse_copy(&m, out, (size_t)n, &buf), 0);
                memset(&got, 0xAA, sizeof got);
                assert_int_equal(stun_get_addr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &got), 0);
                check_addr(&got, ips[i], ports[j]);
                memset(&got, 0xAA, sizeof got);
                assert_int_equal(stun_get_addr(&m, STUN_ATTR_MAPPED_ADDRESS, &got), 0);
                check_addr(&got, ips[i], ports[j]);
                /* the XORed form differs from the clear one (cookie bits) */
                assert_memory_not_equal(out + 24, out + 24 + (out[25] == 1 ? 12 : 24), 4);
                release(buf);
            }
        }
    }
}

static void test_stunt_connect_result(void **state)
{
    (void)state;
    static const stunt_connect_result rs[] = {
        {STUNT_CONNECTED, 0, 0, 0, 12},
        {STUNT_REFUSED, 0, 0, 0, 1},
        {STUNT_ICMP, 3, 13, 0, 250},
        {STUNT_TIMEOUT, 0, 0, 0, 3000},
        {STUNT_LOCAL, 0, 0, 0, 0xFFFFFFFFu},
    };
    uint8_t tid[STUN_TID_SIZE];
    assert_int_equal(stun_new_tid(tid), 0);
    for (size_t i = 0; i < sizeof rs / sizeof rs[0]; i++) {
        uint8_t out[128];
        stun_builder b;
        stun_build_init(&b, out, sizeof out, STUNT_CONNECT_BACK, STUN_SUCCESS, tid, false);
        stunt_build_connect_result(&b, &rs[i]);
        stun_build_fingerprint(&b);
        int n = stun_build_finish(&b, NULL);
        assert_true(n > 0);
        stun_msg m;
        uint8_t *buf;
        assert_int_equal(parse_copy(&m, out, (size_t)n, &buf), 0);
        assert_int_equal(m.method, STUNT_CONNECT_BACK);
        assert_int_equal(m.cls, STUN_SUCCESS);
        assert_int_equal(m.nunknown, 0);
        stunt_connect_result r;
        memset(&r, 0x77, sizeof r);
        assert_int_equal(stunt_get_connect_result(&m, &r), 0);
        assert_int_equal(r.outcome, rs[i].outcome);
        assert_int_equal(r.icmp_type, rs[i].icmp_type);
        assert_int_equal(r.icmp_code, rs[i].icmp_code);
        assert_int_equal(r.elapsed_ms, rs[i].elapsed_ms);
        release(buf);
    }
    /* An outcome this codec does not know never reaches the caller as valid. */
    uint8_t out[64];
    stun_builder b;
    stun_build_init(&b, out, sizeof out, STUNT_CONNECT_BACK, STUN_SUCCESS, tid, false);
    stun_build_attr(&b, STUNT_ATTR_CONNECT_RESULT, "\x09\x00\x00\x00\x00\x00\x00\x05", 8);
    int n = stun_build_finish(&b, NULL);
    assert_int_equal(n, 32);
    stun_msg m;
    uint8_t *buf;
    int rc = parse_copy(&m, out, (size_t)n, &buf);
    if (rc == 0) {
        stunt_connect_result r;
        rc = stunt_get_connect_result(&m, &r);
    }
    assert_int_equal(rc, NTCP_EBADATTR);
    release(buf);
}

/* Every method and class survives the interleaved type field. */
static void test_method_class_bits(void **state)
{
    (void)state;
    static const uint16_t methods[] = {0x001, 0x003, 0x00F, 0x010, 0x080, 0xE01, 0xFFF};
    uint8_t tid[STUN_TID_SIZE];
    assert_int_equal(stun_new_tid(tid), 0);
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        for (uint8_t cls = 0; cls < 4; cls++) {
            uint8_t out[64];
            stun_builder b;
            stun_build_init(&b, out, sizeof out, methods[i], cls, tid, false);
            assert_int_equal(stun_build_finish(&b, NULL), 20);
            uint16_t t = get16(out);
            assert_int_equal(t & 0xC000, 0);
            assert_int_equal(((t >> 4) & 1) | ((t >> 7) & 2), cls);
            stun_msg m;
            uint8_t *buf;
            assert_int_equal(parse_copy(&m, out, 20, &buf), 0);
            assert_int_equal(m.method, methods[i]);
            assert_int_equal(m.cls, cls);
            assert_true(stun_looks_like(buf, 20));
            release(buf);
        }
    }
}

/* A message can be up to 65555 bytes, so an attribute can start past 65535:
 * its offset must not wrap (stun_attr.off). */
static void test_large_message_offsets(void **state)
{
    (void)state;
    enum { PAD = 65512 }; /* PADDING ends at 20 + 4 + PAD = 65536 */
    static uint8_t pad[PAD], out[STUN_MAX_MESSAGE];
    struct sockaddr_storage ss, got;
    make_addr(&ss, "192.0.2.77", 4242);
    stun_builder b;
    stun_build_init(&b, out, STUN_MAX_MESSAGE, STUN_BINDING, STUN_SUCCESS, COOKIE_TID, false);
    stun_build_attr(&b, STUN_ATTR_PADDING, pad, PAD);
    stun_build_addr(&b, STUN_ATTR_XOR_MAPPED_ADDRESS, (const struct sockaddr *)&ss);
    int n = stun_build_finish(&b, NULL);
    assert_int_equal(n, 20 + 4 + PAD + 12);
    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, out, (size_t)n, &buf), 0);
    assert_int_equal(m.nattrs, 2);
    const stun_attr *a = stun_find(&m, STUN_ATTR_XOR_MAPPED_ADDRESS);
    assert_non_null(a);
    assert_memory_equal(stun_attr_value(&m, a), out + 65536 + 4, 8);
    assert_int_equal(stun_get_addr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &got), 0);
    check_addr(&got, "192.0.2.77", 4242);
    release(buf);
}

/* What the builder accepts, the parser accepts: a string attribute over the
 * limits stun_parse() enforces (USERNAME 513 bytes; REALM, NONCE, SOFTWARE
 * 763 bytes, RFC 8489 14) is a build error, not an invalid message. */
static void test_builder_string_limits(void **state)
{
    (void)state;
    static const struct {
        uint16_t type;
        size_t max;
    } lim[] = {{STUN_ATTR_USERNAME, 513}, {STUN_ATTR_REALM, 763}, {STUN_ATTR_NONCE, 763},
               {STUN_ATTR_SOFTWARE, 763}};
    char s[1001];
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
        for (size_t len = lim[i].max - 1; len <= lim[i].max + 1; len++) {
            memset(s, 'x', len);
            s[len] = 0;
            uint8_t out[1100];
            stun_builder b;
            stun_build_init(&b, out, sizeof out, STUN_BINDING, STUN_REQUEST, COOKIE_TID, false);
            stun_build_string(&b, lim[i].type, s);
            int n = stun_build_finish(&b, NULL);
            if (len <= lim[i].max) {
                assert_true(n > 0);
            } else if (n > 0) {
                stun_msg m;
                uint8_t *buf;
                int rc = parse_copy(&m, out, (size_t)n, &buf);
                release(buf);
                if (rc != 0)
                    fail_msg("attribute 0x%04x of %zu bytes: built, but stun_parse says %d",
                             lim[i].type, len, rc);
            }
        }
    }
}

/* ---- builder sizing ----------------------------------------------------- */

static int build_big(uint8_t *out, size_t cap, size_t *need)
{
    struct sockaddr_storage a6, a4;
    make_addr(&a6, "2001:db8::7", 1234);
    make_addr(&a4, "192.0.2.7", 4321);
    static const uint16_t unk[] = {0x0024, 0x7777, 0x0031};
    stunt_connect_result r = {STUNT_ICMP, 3, 1, 0, 77};
    stun_builder b;
    stun_build_init(&b, out, cap, STUN_BINDING, STUN_ERROR, COOKIE_TID, false);
    stun_build_error(&b, 420, "Unknown Attribute");
    stun_build_unknown(&b, unk, 3);
    stun_build_addr(&b, STUN_ATTR_XOR_MAPPED_ADDRESS, (const struct sockaddr *)&a6);
    stun_build_addr(&b, STUN_ATTR_OTHER_ADDRESS, (const struct sockaddr *)&a4);
    stun_build_string(&b, STUN_ATTR_SOFTWARE, "a software name of some length");
    stun_build_change_request(&b, STUN_CHANGE_PORT);
    stunt_build_connect_result(&b, &r);
    stun_build_attr(&b, STUN_ATTR_PADDING, "", 0);
    stun_build_integrity(&b, LT_KEY, 16);
    stun_build_integrity_sha256(&b, LT_KEY, 16);
    stun_build_fingerprint(&b);
    return stun_build_finish(&b, need);
}

static void test_builder_nospc(void **state)
{
    (void)state;
    uint8_t full[1024];
    size_t need = 0;
    int n = build_big(full, sizeof full, &need);
    assert_true(n > 100);
    stun_msg m;
    uint8_t *buf;
    assert_int_equal(parse_copy(&m, full, (size_t)n, &buf), 0);
    assert_int_equal(stun_check_integrity(&m, LT_KEY, 16, false), 0);
    assert_int_equal(stun_check_integrity(&m, LT_KEY, 16, true), 0);
    release(buf);

    enum { GUARD = 64 };
    for (size_t cap = 0; cap <= (size_t)n; cap++) {
        static uint8_t zone[1024 + GUARD];
        uint8_t *out = zone;
        assert_true(cap + GUARD <= sizeof zone);
        memset(out, 0xA5, cap + GUARD);
        need = 0;
        int rc = build_big(out, cap, &need);
        if (cap < (size_t)n) {
            if (rc != NTCP_ENOSPC)
                fail_msg("cap %zu: want NTCP_ENOSPC, got %d", cap, rc);
            if (need != (size_t)n)
                fail_msg("cap %zu: need %zu, want %d", cap, need, n);
        } else {
            assert_int_equal(rc, n);
            assert_memory_equal(out, full, (size_t)n);
        }
        for (size_t i = cap; i < cap + GUARD; i++)
            if (out[i] != 0xA5)
                fail_msg("cap %zu: byte %zu written past the end", cap, i);
        /* and no read or write past cap either (the fingerprint's CRC and the
         * HMAC run in zlib and OpenSSL) */
        out = guarded_alloc(cap);
        assert_int_equal(build_big(out, cap, &need), cap < (size_t)n ? NTCP_ENOSPC : n);
        assert_int_equal(need, n);
        release(out);
    }
    /* need may be NULL */
    uint8_t small[10];
    assert_int_equal(build_big(small, sizeof small, NULL), NTCP_ENOSPC);
}

/* ---- the stream framer --------------------------------------------------- */

#define NSTREAM 6
struct stream {
    uint8_t bytes[4096];
    size_t len;
    size_t msg_off[NSTREAM], msg_len[NSTREAM];
};

static void make_stream(struct stream *s)
{
    s->len = 0;
    for (int i = 0; i < NSTREAM; i++) {
        uint8_t tid[STUN_TID_SIZE];
        assert_int_equal(stun_new_tid(tid), 0);
        if (i == 3)
            memset(tid, 0x33, 4); /* an RFC 3489 message among the others */
        stun_builder b;
        uint8_t *p = s->bytes + s->len;
        stun_build_init(&b, p, sizeof s->bytes - s->len, STUN_BINDING, (uint8_t)(i % 4), tid,
                        i == 3);
        if (i >= 1) {
            char sw[600];
            size_t l = (size_t)(i * i * 37 % 500) + (size_t)i;
            memset(sw, 'a' + i, l);
            sw[l] = 0;
            stun_build_string(&b, STUN_ATTR_SOFTWARE, sw);
        }
        if (i % 2 == 0)
            stun_build_fingerprint(&b);
        int n = stun_build_finish(&b, NULL);
        assert_true(n >= 20);
        s->msg_off[i] = s->len;
        s->msg_len[i] = (size_t)n;
        s->len += (size_t)n;
    }
}

/* Feeds s through a framer of cap bytes, in chunks given by the chunk
 * callback; checks every message comes out whole and in order. */
typedef size_t (*chunker)(size_t pos, size_t remaining, void *arg);

static void feed_stream(const struct stream *s, size_t cap, chunker next_chunk, void *arg,
                        bool use_space)
{
    uint8_t *storage = guarded_alloc(cap);
    stun_framer f;
    stun_framer_init(&f, storage, cap);
    size_t pos = 0, got = 0;
    int idle = 0;
    while (got < NSTREAM) {
        const uint8_t *msg;
        size_t mlen;
        int rc = stun_framer_next(&f, &msg, &mlen);
        assert_true(rc >= 0);
        if (rc == 1) {
            assert_int_equal(mlen, s->msg_len[got]);
            assert_memory_equal(msg, s->bytes + s->msg_off[got], mlen);
            assert_true(stun_looks_like(msg, mlen));
            got++;
            idle = 0;
            continue;
        }
        assert_true(pos < s->len); /* needs more, and there is more */
        size_t want = next_chunk(pos, s->len - pos, arg);
        if (want == 0)
            want = 1;
        if (want > s->len - pos)
            want = s->len - pos;
        size_t took;
        if (use_space) {
            uint8_t *p;
            size_t avail;
            stun_framer_space(&f, &p, &avail);
            took = want < avail ? want : avail;
            memcpy(p, s->bytes + pos, took);
            stun_framer_commit(&f, took);
        } else {
            took = stun_framer_write(&f, s->bytes + pos, want);
        }
        assert_true(took <= want);
        pos += took;
        if (took == 0)
            assert_true(++idle < 2); /* full but no message: stuck */
    }
    assert_int_equal(pos, s->len);
    assert_int_equal(stun_framer_pending(&f), 0);
    const uint8_t *msg;
    size_t mlen;
    assert_int_equal(stun_framer_next(&f, &msg, &mlen), 0);
    release(storage);
}

static size_t chunk_all(size_t pos, size_t remaining, void *arg)
{
    (void)pos, (void)arg;
    return remaining;
}
static size_t chunk_one(size_t pos, size_t remaining, void *arg)
{
    (void)pos, (void)remaining, (void)arg;
    return 1;
}
static size_t chunk_split(size_t pos, size_t remaining, void *arg)
{
    size_t at = *(size_t *)arg;
    return pos < at ? at - pos : remaining;
}
static size_t chunk_random(size_t pos, size_t remaining, void *arg)
{
    (void)pos;
    uint32_t r = rng_next(arg);
    size_t max = r & 0x100 ? 40 : 700;
    size_t n = (r >> 12) % max + 1;
    return n < remaining ? n : remaining;
}

static void test_framer_splits(void **state)
{
    (void)state;
    static struct stream stream;
    struct stream *s = &stream;
    make_stream(s);
    size_t biggest = 0;
    for (int i = 0; i < NSTREAM; i++)
        biggest = s->msg_len[i] > biggest ? s->msg_len[i] : biggest;
    /* a roomy buffer, one just big enough for the largest message, and odd
     * sizes (a partial header can then sit at the very end of the buffer) */
    size_t caps[] = {8192, biggest, biggest + 1, biggest + 3, 2 * biggest + 2};
    for (size_t c = 0; c < sizeof caps / sizeof caps[0]; c++) {
        for (int space = 0; space < 2; space++) {
            feed_stream(s, caps[c], chunk_all, NULL, space);
            feed_stream(s, caps[c], chunk_one, NULL, space);
            for (size_t at = 1; at < s->len; at++)
                feed_stream(s, caps[c], chunk_split, &at, space);
            for (uint32_t seed = 1; seed <= 200; seed++) {
                uint32_t st = seed * 2654435761u;
                feed_stream(s, caps[c], chunk_random, &st, space);
            }
        }
    }
}

static void test_framer_partial(void **state)
{
    (void)state;
    uint8_t storage[256];
    stun_framer f;
    stun_framer_init(&f, storage, sizeof storage);
    const uint8_t *msg;
    size_t mlen;
    assert_int_equal(stun_framer_next(&f, &msg, &mlen), 0);
    assert_int_equal(stun_framer_write(&f, RFC5769_IPV4, 10), 10);
    assert_int_equal(stun_framer_next(&f, &msg, &mlen), 0);
    assert_int_equal(stun_framer_pending(&f), 10);
    assert_int_equal(stun_framer_write(&f, RFC5769_IPV4 + 10, sizeof RFC5769_IPV4 - 11),
                     sizeof RFC5769_IPV4 - 11);
    assert_int_equal(stun_framer_next(&f, &msg, &mlen), 0);
    assert_int_equal(stun_framer_pending(&f), sizeof RFC5769_IPV4 - 1);
    /* last byte of the first message and the first 5 of the next */
    uint8_t tail[6];
    tail[0] = RFC5769_IPV4[sizeof RFC5769_IPV4 - 1];
    memcpy(tail + 1, RFC5769_REQUEST, 5);
    assert_int_equal(stun_framer_write(&f, tail, 6), 6);
    assert_int_equal(stun_framer_next(&f, &msg, &mlen), 1);
    assert_int_equal(mlen, sizeof RFC5769_IPV4);
    assert_memory_equal(msg, RFC5769_IPV4, mlen);
    assert_int_equal(stun_framer_next(&f, &msg, &mlen), 0);
    assert_int_equal(stun_framer_pending(&f), 5);
}

/* A buffer whose size is not a multiple of 4: after a message, the first
 * bytes of the next header sit at the very end and must be moved to make
 * room for the rest. */
static void test_framer_odd_cap(void **state)
{
    (void)state;
    uint8_t stream[5 * 20];
    for (int i = 0; i < 5; i++) {
        memcpy(stream + 20 * i, RFC5769_IPV4, 20);
        put16(stream + 20 * i + 2, 0);
        stream[20 * i + 19] = (uint8_t)i;
    }
    uint8_t *storage = guarded_alloc(23);
    stun_framer f;
    stun_framer_init(&f, storage, 23);
    size_t pos = 0, got = 0;
    int rounds = 0;
    while (got < 5) {
        assert_true(++rounds < 100);
        const uint8_t *msg;
        size_t mlen;
        int rc = stun_framer_next(&f, &msg, &mlen);
        assert_true(rc >= 0);
        if (rc == 1) {
            assert_int_equal(mlen, 20);
            assert_int_equal(msg[19], got);
            got++;
            continue;
        }
        size_t took = stun_framer_write(&f, stream + pos, sizeof stream - pos);
        assert_true(took > 0); /* else the stream stalls */
        pos += took;
    }
    release(storage);
}

static void test_framer_junk(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t len;
    } junk[] = {
        {"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n", 37}, /* 'G' = 0x47: second bit set */
        {"\x16\x03\x01\x01\x02\x01\x00\x01\xfe\x03\x03" "0123456789abcdef", 27}, /* TLS */
        {"\x80\x01\x00\x00\x21\x12\xa4\x42" "0123456789ab", 20},
        {"\x00\x01\x00\x03\x21\x12\xa4\x42" "0123456789ab" "abc", 23}, /* length % 4 */
    };
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        uint8_t storage[512];
        stun_framer f;
        stun_framer_init(&f, storage, sizeof storage);
        assert_int_equal(stun_framer_write(&f, (const uint8_t *)junk[i].s, junk[i].len), junk[i].len);
        const uint8_t *msg;
        size_t mlen;
        int rc = stun_framer_next(&f, &msg, &mlen);
        if (rc != NTCP_ENOTSTUN)
            fail_msg("junk %zu: want NTCP_ENOTSTUN, got %d", i, rc);
    }
    /* Junk after a good message: the good one comes out first. */
    uint8_t storage[512];
    stun_framer f;
    stun_framer_init(&f, storage, sizeof storage);
    stun_framer_write(&f, RFC5769_IPV4, sizeof RFC5769_IPV4);
    stun_framer_write(&f, (const uint8_t *)"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
    const uint8_t *msg;
    size_t mlen;
    assert_int_equal(stun_framer_next(&f, &msg, &mlen), 1);
    assert_int_equal(mlen, sizeof RFC5769_IPV4);
    assert_int_equal(stun_framer_next(&f, &msg, &mlen), NTCP_ENOTSTUN);
}

static void test_framer_too_big(void **state)
{
    (void)state;
    /* A 120-byte buffer; the request vector is 108 bytes, a 124-byte message
     * does not fit. */
    uint8_t storage[120];
    stun_framer f;
    stun_framer_init(&f, storage, sizeof storage);
    assert_int_equal(stun_framer_write(&f, RFC5769_REQUEST, sizeof RFC5769_REQUEST), sizeof RFC5769_REQUEST);
    const uint8_t *msg;
    size_t mlen;
    assert_int_equal(stun_framer_next(&f, &msg, &mlen), 1);
    uint8_t hdr[20];
    memcpy(hdr, RFC5769_IPV4, 20);
    put16(hdr + 2, 104);
    /* the consumed message's room is reused */
    assert_int_equal(stun_framer_write(&f, hdr, 20), 20);
    assert_int_equal(stun_framer_next(&f, &msg, &mlen), NTCP_ERANGE);

    /* The largest possible length field, in a moderately sized buffer. */
    stun_framer_init(&f, storage, sizeof storage);
    put16(hdr + 2, 0xFFFC);
    stun_framer_write(&f, hdr, 20);
    assert_int_equal(stun_framer_next(&f, &msg, &mlen), NTCP_ERANGE);
}

/* ---- small things -------------------------------------------------------- */

static void test_looks_like(void **state)
{
    (void)state;
    uint8_t *b = dup_exact(RFC5769_IPV4, sizeof RFC5769_IPV4);
    assert_true(stun_looks_like(b, sizeof RFC5769_IPV4));
    assert_true(stun_looks_like(b, 20));
    b[0] |= 0x80;
    assert_false(stun_looks_like(b, sizeof RFC5769_IPV4));
    b[0] &= 0x3F;
    b[3] |= 0x01;
    assert_false(stun_looks_like(b, sizeof RFC5769_IPV4));
    release(b);
    b = dup_exact(RFC5769_IPV4, 3);
    (void)stun_looks_like(b, 3); /* no overread */
    release(b);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(stun_method_name(STUN_BINDING), "Binding");
    assert_non_null(stun_method_name(0x0abc));
    assert_non_null(stun_method_name(STUNT_CONNECT_BACK));
    for (uint8_t c = 0; c < 4; c++)
        assert_non_null(stun_class_name(c));
    assert_string_not_equal(stun_class_name(STUN_REQUEST), stun_class_name(STUN_SUCCESS));
    char buf[64];
    struct sockaddr_storage ss;
    make_addr(&ss, "192.0.2.1", 32853);
    assert_string_equal(ntcp_addr_str((const struct sockaddr *)&ss, buf, sizeof buf), "192.0.2.1:32853");
    make_addr(&ss, "2001:db8::1", 3478);
    assert_string_equal(ntcp_addr_str((const struct sockaddr *)&ss, buf, sizeof buf), "[2001:db8::1]:3478");
    for (int e = 0; e >= NTCP_ECLOSED; e--)
        assert_string_not_equal(ntcp_strerror(e), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_rfc5769_request_parse, release_all),
        cmocka_unit_test_teardown(test_rfc5769_request_build, release_all),
        cmocka_unit_test_teardown(test_rfc5769_ipv4_parse, release_all),
        cmocka_unit_test_teardown(test_rfc5769_ipv4_build, release_all),
        cmocka_unit_test_teardown(test_rfc5769_ipv6_parse, release_all),
        cmocka_unit_test_teardown(test_rfc5769_ipv6_build, release_all),
        cmocka_unit_test_teardown(test_rfc5769_longterm_key, release_all),
        cmocka_unit_test_teardown(test_rfc5769_longterm_parse, release_all),
        cmocka_unit_test_teardown(test_rfc5769_longterm_build, release_all),
        cmocka_unit_test_teardown(test_attrs_after_integrity_ignored, release_all),
        cmocka_unit_test_teardown(test_integrity_sha256, release_all),
        cmocka_unit_test_teardown(test_integrity_sha256_truncated, release_all),
        cmocka_unit_test_teardown(test_malformed_table, release_all),
        cmocka_unit_test_teardown(test_integrity_tampered, release_all),
        cmocka_unit_test_teardown(test_rfc3489_request, release_all),
        cmocka_unit_test_teardown(test_rfc3489_response, release_all),
        cmocka_unit_test_teardown(test_rfc5780_roundtrip, release_all),
        cmocka_unit_test_teardown(test_error_unknown_roundtrip, release_all),
        cmocka_unit_test_teardown(test_unknown_attributes_listed, release_all),
        cmocka_unit_test_teardown(test_alternate_realm_nonce_software, release_all),
        cmocka_unit_test_teardown(test_xor_addresses_roundtrip, release_all),
        cmocka_unit_test_teardown(test_stunt_connect_result, release_all),
        cmocka_unit_test_teardown(test_method_class_bits, release_all),
        cmocka_unit_test_teardown(test_builder_nospc, release_all),
        cmocka_unit_test_teardown(test_large_message_offsets, release_all),
        cmocka_unit_test_teardown(test_builder_string_limits, release_all),
        cmocka_unit_test_teardown(test_framer_splits, release_all),
        cmocka_unit_test_teardown(test_framer_partial, release_all),
        cmocka_unit_test_teardown(test_framer_odd_cap, release_all),
        cmocka_unit_test_teardown(test_framer_junk, release_all),
        cmocka_unit_test_teardown(test_framer_too_big, release_all),
        cmocka_unit_test_teardown(test_looks_like, release_all),
        cmocka_unit_test_teardown(test_names, release_all),
    };
    return cmocka_run_group_tests_name("stun", tests, NULL, NULL);
}
