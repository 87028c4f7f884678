/*
 * test_turn.c: unit tests of the TURN message layer (src/turn.h): requests
 * with and without long-term credentials, the 401/438 challenge and its
 * refusals, responses and indications read back (XOR-RELAYED-ADDRESS,
 * CONNECTION-ID, DATA), bad TURN attributes, and the TURN REST credentials
 * against a vector computed outside the code (Python's hmac module).
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

#include "ntcp.h"
#include "stun.h"
#include "turn.h"

static struct sockaddr_in v4(const char *ip, uint16_t port)
{
    struct sockaddr_in s = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &s.sin_addr);
    return s;
}

/* A server's error response with REALM and NONCE, built with the codec's
 * generic builder (not turn_build). */
static size_t error_response(uint8_t *buf, size_t cap, const uint8_t *tid, int code,
                             const char *realm, const char *nonce)
{
    stun_builder b;
    stun_build_init(&b, buf, cap, TURN_ALLOCATE, STUN_ERROR, tid, false);
    stun_build_error(&b, code, "because");
    if (realm)
        stun_build_string(&b, STUN_ATTR_REALM, realm);
    if (nonce)
        stun_build_string(&b, STUN_ATTR_NONCE, nonce);
    stun_build_fingerprint(&b);
    int n = stun_build_finish(&b, NULL);
    assert_true(n > 0);
    return (size_t)n;
}

static void test_allocate_unauthenticated(void **state)
{
    (void)state;
    uint8_t tid[STUN_TID_SIZE], buf[512];
    assert_int_equal(stun_new_tid(tid), 0);
    turn_req r = {.method = TURN_ALLOCATE, .cls = STUN_REQUEST, .transport = TURN_TRANSPORT_TCP,
                  .has_lifetime = true, .lifetime = 600};
    int n = turn_build(buf, sizeof buf, &r, NULL, tid);
    assert_true(n > 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)n), 0);
    assert_int_equal(m.method, TURN_ALLOCATE);
    assert_int_equal(m.cls, STUN_REQUEST);
    assert_int_equal(m.nunknown, 0);
    const stun_attr *a = stun_find(&m, TURN_ATTR_REQUESTED_TRANSPORT);
    assert_non_null(a);
    assert_int_equal(a->len, 4);
    assert_int_equal(stun_attr_value(&m, a)[0], 6);
    uint32_t life = 0;
    assert_int_equal(stun_get_u32(&m, TURN_ATTR_LIFETIME, &life), 0);
    assert_int_equal(life, 600);
    assert_true(m.fingerprint >= 0);
    assert_true(m.integrity < 0);
    assert_null(stun_find(&m, STUN_ATTR_USERNAME));
}

static void test_challenge_then_authenticated(void **state)
{
    (void)state;
    turn_auth au;
    assert_int_equal(turn_auth_init(&au, "1700000000:alice", "s3cret"), 0);
    uint8_t tid[STUN_TID_SIZE], buf[1024];
    assert_int_equal(stun_new_tid(tid), 0);
    size_t n = error_response(buf, sizeof buf, tid, 401, "ntcp.test", "n0nce-1");
    turn_msg t;
    assert_int_equal(turn_read(&t, buf, n, &au), 0);
    assert_int_equal(t.cls, STUN_ERROR);
    assert_int_equal(t.code, 401);
    assert_string_equal(t.reason, "because");
    assert_int_equal(turn_auth_challenge(&au, &t), 0);
    assert_true(au.have_key);
    assert_string_equal(au.realm, "ntcp.test");
    assert_string_equal(au.nonce, "n0nce-1");
    uint8_t key[16];
    assert_int_equal(stun_long_term_key("1700000000:alice", 16, "ntcp.test", 9, "s3cret", 6, key),
                     0);
    assert_memory_equal(au.key, key, 16);

    /* The retried request carries the credentials and verifies with the key. */
    struct sockaddr_in peer = v4("192.0.2.7", 4000);
    turn_req r = {.method = TURN_CREATE_PERMISSION, .cls = STUN_REQUEST,
                  .peer = (struct sockaddr *)&peer};
    int len = turn_build(buf, sizeof buf, &r, &au, tid);
    assert_true(len > 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)len), 0);
    const char *s;
    size_t sl;
    assert_int_equal(stun_get_string(&m, STUN_ATTR_USERNAME, &s, &sl), 0);
    assert_int_equal(sl, 16);
    assert_memory_equal(s, "1700000000:alice", 16);
    assert_int_equal(stun_get_string(&m, STUN_ATTR_NONCE, &s, &sl), 0);
    assert_memory_equal(s, "n0nce-1", 7);
    assert_int_equal(stun_check_integrity(&m, key, 16, false), 0);
    uint8_t wrong[16] = {0};
    assert_int_equal(stun_check_integrity(&m, wrong, 16, false), NTCP_EINTEGRITY);
    struct sockaddr_storage ss;
    assert_int_equal(stun_get_addr(&m, TURN_ATTR_XOR_PEER_ADDRESS, &ss), 0);
    assert_memory_equal(&((struct sockaddr_in *)&ss)->sin_addr, &peer.sin_addr, 4);
    assert_int_equal(((struct sockaddr_in *)&ss)->sin_port, peer.sin_port);
    /* The XOR really happened on the wire: the raw port differs. */
    const stun_attr *pa = stun_find(&m, TURN_ATTR_XOR_PEER_ADDRESS);
    const uint8_t *pv = stun_attr_value(&m, pa);
    assert_int_not_equal((pv[2] << 8) | pv[3], 4000);

    /* 438 with a new nonce: retry with it. */
    n = error_response(buf, sizeof buf, tid, 438, NULL, "n0nce-2");
    assert_int_equal(turn_read(&t, buf, n, &au), 0);
    assert_int_equal(turn_auth_challenge(&au, &t), 0);
    assert_string_equal(au.nonce, "n0nce-2");
    assert_string_equal(au.realm, "ntcp.test");

    /* A second 401 for the same realm: the password is refused, no loop. */
    n = error_response(buf, sizeof buf, tid, 401, "ntcp.test", "n0nce-3");
    assert_int_equal(turn_read(&t, buf, n, &au), 0);
    assert_int_equal(turn_auth_challenge(&au, &t), NTCP_EREFUSED);
    /* 441 Wrong Credentials: refused too. */
    n = error_response(buf, sizeof buf, tid, 441, NULL, NULL);
    assert_int_equal(turn_read(&t, buf, n, &au), 0);
    assert_int_equal(turn_auth_challenge(&au, &t), NTCP_EREFUSED);
    /* Not a challenge. */
    n = error_response(buf, sizeof buf, tid, 486, NULL, NULL);
    assert_int_equal(turn_read(&t, buf, n, &au), 0);
    assert_int_equal(turn_auth_challenge(&au, &t), NTCP_EINVAL);
    assert_string_equal(turn_error_name(486), "Allocation Quota Reached");
    /* A 401 with no nonce cannot be answered. */
    turn_auth fresh;
    assert_int_equal(turn_auth_init(&fresh, "u", "p"), 0);
    n = error_response(buf, sizeof buf, tid, 401, "ntcp.test", NULL);
    assert_int_equal(turn_read(&t, buf, n, &fresh), 0);
    assert_int_equal(turn_auth_challenge(&fresh, &t), NTCP_EPROTO);
    assert_false(fresh.have_key);
}

/* A success response as coturn sends it, integrity included. */
static void test_allocate_success_read(void **state)
{
    (void)state;
    turn_auth au;
    assert_int_equal(turn_auth_init(&au, "u", "p"), 0);
    uint8_t tid[STUN_TID_SIZE], buf[1024];
    assert_int_equal(stun_new_tid(tid), 0);
    size_t n = error_response(buf, sizeof buf, tid, 401, "r", "n");
    turn_msg t;
    assert_int_equal(turn_read(&t, buf, n, &au), 0);
    assert_int_equal(turn_auth_challenge(&au, &t), 0);

    struct sockaddr_in relayed = v4("203.0.113.5", 50000), mapped = v4("198.51.100.9", 61000);
    struct sockaddr_in6 r6 = {.sin6_family = AF_INET6, .sin6_port = htons(49999)};
    inet_pton(AF_INET6, "2001:db8::42", &r6.sin6_addr);
    stun_builder b;
    stun_build_init(&b, buf, sizeof buf, TURN_ALLOCATE, STUN_SUCCESS, tid, false);
    stun_build_addr(&b, TURN_ATTR_XOR_RELAYED_ADDRESS, (struct sockaddr *)&relayed);
    stun_build_addr(&b, STUN_ATTR_XOR_MAPPED_ADDRESS, (struct sockaddr *)&mapped);
    stun_build_u32(&b, TURN_ATTR_LIFETIME, 600);
    stun_build_integrity(&b, au.key, 16);
    stun_build_fingerprint(&b);
    int len = stun_build_finish(&b, NULL);
    assert_true(len > 0);
    assert_int_equal(turn_read(&t, buf, (size_t)len, &au), 0);
    assert_true(t.integrity);
    assert_true(t.has_relayed && t.has_mapped && t.has_lifetime);
    assert_int_equal(t.lifetime, 600);
    struct sockaddr_in *got = (struct sockaddr_in *)&t.relayed;
    assert_int_equal(got->sin_family, AF_INET);
    assert_int_equal(got->sin_port, relayed.sin_port);
    assert_memory_equal(&got->sin_addr, &relayed.sin_addr, 4);
    got = (struct sockaddr_in *)&t.mapped;
    assert_memory_equal(&got->sin_addr, &mapped.sin_addr, 4);

    /* The same with another key: the integrity check refuses it. */
    turn_auth other = au;
    other.key[0] ^= 1;
    assert_int_equal(turn_read(&t, buf, (size_t)len, &other), NTCP_EINTEGRITY);

    /* IPv6 relayed address. */
    stun_build_init(&b, buf, sizeof buf, TURN_ALLOCATE, STUN_SUCCESS, tid, false);
    stun_build_addr(&b, TURN_ATTR_XOR_RELAYED_ADDRESS, (struct sockaddr *)&r6);
    len = stun_build_finish(&b, NULL);
    assert_int_equal(turn_read(&t, buf, (size_t)len, NULL), 0);
    assert_int_equal(t.relayed.ss_family, AF_INET6);
    struct sockaddr_in6 *g6 = (struct sockaddr_in6 *)&t.relayed;
    assert_memory_equal(&g6->sin6_addr, &r6.sin6_addr, 16);
    assert_int_equal(g6->sin6_port, r6.sin6_port);
    assert_false(t.integrity);
}

/* RFC 6062: the ConnectionAttempt indication and the ConnectionBind request. */
static void test_connection_attempt_and_bind(void **state)
{
    (void)state;
    uint8_t tid[STUN_TID_SIZE], buf[512];
    assert_int_equal(stun_new_tid(tid), 0);
    struct sockaddr_in peer = v4("198.51.100.20", 1234);
    stun_builder b;
    stun_build_init(&b, buf, sizeof buf, TURN_CONNECTION_ATTEMPT, STUN_INDICATION, tid, false);
    stun_build_addr(&b, TURN_ATTR_XOR_PEER_ADDRESS, (struct sockaddr *)&peer);
    stun_build_u32(&b, TURN_ATTR_CONNECTION_ID, 0xdeadbeef);
    int len = stun_build_finish(&b, NULL);
    turn_msg t;
    assert_int_equal(turn_read(&t, buf, (size_t)len, NULL), 0);
    assert_int_equal(t.method, TURN_CONNECTION_ATTEMPT);
    assert_int_equal(t.cls, STUN_INDICATION);
    assert_true(t.has_connection_id && t.has_peer);
    assert_int_equal(t.connection_id, 0xdeadbeef);
    assert_int_equal(((struct sockaddr_in *)&t.peer)->sin_port, htons(1234));

    turn_req r = {.method = TURN_CONNECTION_BIND, .cls = STUN_REQUEST,
                  .has_connection_id = true, .connection_id = 0xdeadbeef};
    len = turn_build(buf, sizeof buf, &r, NULL, tid);
    assert_true(len > 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)len), 0);
    uint32_t id = 0;
    assert_int_equal(stun_get_u32(&m, TURN_ATTR_CONNECTION_ID, &id), 0);
    assert_int_equal(id, 0xdeadbeef);
    assert_string_equal(stun_method_name(m.method), "ConnectionBind");
}

/* Send indication out, Data indication in: DATA round trip, no credentials
 * on an indication even when a key is known. */
static void test_send_data(void **state)
{
    (void)state;
    turn_auth au;
    assert_int_equal(turn_auth_init(&au, "u", "p"), 0);
    au.have_key = true;
    strcpy(au.realm, "r");
    strcpy(au.nonce, "n");
    uint8_t tid[STUN_TID_SIZE], buf[512];
    assert_int_equal(stun_new_tid(tid), 0);
    struct sockaddr_in peer = v4("192.0.2.1", 9);
    const uint8_t payload[5] = {1, 2, 3, 4, 5};
    turn_req r = {.method = TURN_SEND, .cls = STUN_INDICATION,
                  .peer = (struct sockaddr *)&peer, .data = payload, .data_len = 5};
    int len = turn_build(buf, sizeof buf, &r, &au, tid);
    assert_true(len > 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)len), 0);
    assert_true(m.integrity < 0);
    assert_null(stun_find(&m, STUN_ATTR_USERNAME));
    turn_msg t;
    assert_int_equal(turn_read(&t, buf, (size_t)len, &au), 0);
    assert_int_equal(t.data_len, 5);
    assert_memory_equal(t.data, payload, 5);
    /* Too small a buffer: ENOSPC, not an overflow. */
    assert_int_equal(turn_build(buf, 30, &r, &au, tid), NTCP_ENOSPC);
}

/* TURN attributes of the wrong size are refused by the parser. */
static void test_bad_turn_attrs(void **state)
{
    (void)state;
    static const struct {
        uint16_t type;
        uint16_t len;
    } cases[] = {
        {TURN_ATTR_CONNECTION_ID, 3}, {TURN_ATTR_LIFETIME, 8},
        {TURN_ATTR_REQUESTED_TRANSPORT, 2}, {TURN_ATTR_XOR_RELAYED_ADDRESS, 12},
        {TURN_ATTR_XOR_PEER_ADDRESS, 4}, {TURN_ATTR_EVEN_PORT, 4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t tid[STUN_TID_SIZE], buf[128], val[16];
        memset(val, 0, sizeof val);
        val[1] = 1; /* an IPv4 family for the address types */
        assert_int_equal(stun_new_tid(tid), 0);
        stun_builder b;
        stun_build_init(&b, buf, sizeof buf, TURN_ALLOCATE, STUN_SUCCESS, tid, false);
        stun_build_attr(&b, cases[i].type, val, cases[i].len);
        int len = stun_build_finish(&b, NULL);
        assert_true(len > 0);
        turn_msg t;
        assert_int_equal(turn_read(&t, buf, (size_t)len, NULL), NTCP_EBADATTR);
    }
    /* An error response with no ERROR-CODE is a protocol error. */
    uint8_t tid[STUN_TID_SIZE], buf[64];
    assert_int_equal(stun_new_tid(tid), 0);
    stun_builder b;
    stun_build_init(&b, buf, sizeof buf, TURN_ALLOCATE, STUN_ERROR, tid, false);
    int len = stun_build_finish(&b, NULL);
    turn_msg t;
    assert_int_equal(turn_read(&t, buf, (size_t)len, NULL), NTCP_EPROTO);
}

static void test_rest_credentials(void **state)
{
    (void)state;
    char user[64], pass[64];
    assert_int_equal(
        turn_rest_credentials("north", 5, "alice", 1700000000, user, sizeof user, pass, sizeof pass),
        0);
    assert_string_equal(user, "1700000000:alice");
    /* python3: base64(hmac.new(b'north', b'1700000000:alice', sha1).digest()) */
    assert_string_equal(pass, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
    uint64_t exp = 0;
    assert_int_equal(turn_rest_expiry(user, &exp), 0);
    assert_int_equal(exp, 1700000000);
    assert_int_equal(turn_rest_expiry("alice", &exp), NTCP_EINVAL);
    assert_int_equal(turn_rest_expiry("12x:alice", &exp), NTCP_EINVAL);
    assert_int_equal(turn_rest_credentials("north", 5, "a:b", 1, user, sizeof user, pass, sizeof pass),
                     NTCP_EINVAL);
    assert_int_equal(turn_rest_credentials("north", 5, "", 1, user, sizeof user, pass, sizeof pass),
                     NTCP_EINVAL);
    assert_int_equal(turn_rest_credentials("north", 5, "alice", 1, user, 4, pass, sizeof pass),
                     NTCP_ENOSPC);
    assert_int_equal(turn_rest_credentials("north", 5, "alice", 1, user, sizeof user, pass, 20),
                     NTCP_ENOSPC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allocate_unauthenticated),
        cmocka_unit_test(test_challenge_then_authenticated),
        cmocka_unit_test(test_allocate_success_read),
        cmocka_unit_test(test_connection_attempt_and_bind),
        cmocka_unit_test(test_send_data),
        cmocka_unit_test(test_bad_turn_attrs),
        cmocka_unit_test(test_rest_credentials),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
