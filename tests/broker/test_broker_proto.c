/*
 * test_broker_proto.c: the broker protocol's codec helpers (names, the
 * signed transcript, peer info and CONNECT-GO round trips, the 700 error)
 * and identity keys (made once, mode 0600, refused when others can read).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker_proto.h"
#include "identity.h"
#include "ntcp.h"

static void test_names(void **state)
{
    (void)state;
    assert_true(broker_name_valid("alice", 5));
    assert_true(broker_name_valid("bob@example.org", 15));
    assert_true(broker_name_valid("a_b+c-d.e", 9));
    assert_false(broker_name_valid("", 0));
    assert_false(broker_name_valid(".hidden", 7));
    assert_false(broker_name_valid("-x", 2));
    assert_false(broker_name_valid("with space", 10));
    assert_false(broker_name_valid("new\nline", 8));
    char longname[66];
    memset(longname, 'a', sizeof longname);
    assert_true(broker_name_valid(longname, 64));
    assert_false(broker_name_valid(longname, 65));
}

static void test_transcript(void **state)
{
    (void)state;
    uint8_t chal[32], key[32], out[BROKER_TRANSCRIPT_MAX];
    for (int i = 0; i < 32; i++) {
        chal[i] = (uint8_t)i;
        key[i] = (uint8_t)(0xA0 + i);
    }
    int n = broker_transcript(out, sizeof out, "brk", 3, chal, "bob", 3, key);
    assert_int_equal(n, 22 + 2 + 3 + 32 + 1 + 3 + 32);
    assert_memory_equal(out, "NTCP-BROKER-REGISTER-1", 22);
    assert_int_equal(out[22], 0);
    assert_int_equal(out[23], 3);
    assert_memory_equal(out + 24, "brk", 3);
    assert_memory_equal(out + 27, chal, 32);
    assert_int_equal(out[59], 3);
    assert_memory_equal(out + 60, "bob", 3);
    assert_memory_equal(out + 63, key, 32);
    /* Every field is bound: another name gives another transcript. */
    uint8_t out2[BROKER_TRANSCRIPT_MAX];
    int n2 = broker_transcript(out2, sizeof out2, "brk", 3, chal, "bob2", 4, key);
    assert_int_equal(n2, n + 1);
    assert_int_equal(broker_transcript(out, 10, "brk", 3, chal, "bob", 3, key), NTCP_ENOSPC);
    assert_int_equal(broker_transcript(out, sizeof out, "", 0, chal, "bob", 3, key), NTCP_EINVAL);
    assert_int_equal(broker_transcript(out, sizeof out, "b", 1, chal, "b b", 3, key), NTCP_EINVAL);
}

static void sa4(struct sockaddr_storage *ss, const char *ip, int port)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &sin->sin_addr);
}

static void test_go_roundtrip(void **state)
{
    (void)state;
    broker_peer_info p;
    memset(&p, 0, sizeof p);
    strcpy(p.name, "carol");
    for (int i = 0; i < 32; i++)
        p.public_key[i] = (uint8_t)(i * 7);
    p.has_public_key = true;
    sa4(&p.public_addr, "198.51.100.7", 40000);
    sa4(&p.public_udp, "198.51.100.7", 40001);
    p.nprivate = 2;
    sa4(&p.private_addr[0], "192.168.1.10", 5000);
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&p.private_addr[1];
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(5001);
    inet_pton(AF_INET6, "fd00::10", &s6->sin6_addr);
    const uint8_t profile[] = "nat=eim-apdf;delta=1";
    p.profile = profile;
    p.profile_len = sizeof profile;

    uint8_t buf[BROKER_MAX_MESSAGE], tid[STUN_TID_SIZE], nonce[32];
    memset(nonce, 0x5A, sizeof nonce);
    assert_int_equal(stun_new_tid(tid), 0);
    stun_builder sb;
    stun_build_init(&sb, buf, sizeof buf, BROKER_GO, STUN_INDICATION, tid, false);
    broker_build_peer_info(&sb, &p);
    stun_build_attr(&sb, BROKER_ATTR_SESSION_NONCE, nonce, sizeof nonce);
    stun_build_u32(&sb, BROKER_ATTR_START_DELAY, 37);
    stun_build_u32(&sb, BROKER_ATTR_ROLE, BROKER_ROLE_TARGET);
    stun_build_u32(&sb, BROKER_ATTR_RTT, 1234);
    int n = stun_build_finish(&sb, NULL);
    assert_true(n > 0);

    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)n), 0);
    uint16_t unknown[16];
    size_t nunknown = 99;
    assert_int_equal(broker_validate(&m, unknown, 16, &nunknown), 0);
    assert_int_equal(nunknown, 0);
    broker_go g;
    assert_int_equal(broker_parse_go(&m, &g), 0);
    assert_string_equal(g.peer.name, "carol");
    assert_memory_equal(g.peer.public_key, p.public_key, 32);
    assert_memory_equal(&g.peer.public_addr, &p.public_addr, sizeof(struct sockaddr_in));
    assert_memory_equal(&g.peer.public_udp, &p.public_udp, sizeof(struct sockaddr_in));
    assert_int_equal(g.peer.nprivate, 2);
    assert_memory_equal(&g.peer.private_addr[0], &p.private_addr[0], sizeof(struct sockaddr_in));
    assert_memory_equal(&g.peer.private_addr[1], &p.private_addr[1], sizeof(struct sockaddr_in6));
    assert_int_equal(g.peer.profile_len, sizeof profile);
    assert_memory_equal(g.peer.profile, profile, sizeof profile);
    assert_memory_equal(g.nonce, nonce, 32);
    assert_int_equal(g.start_delay_ms, 37);
    assert_int_equal(g.role, BROKER_ROLE_TARGET);
    assert_int_equal(g.rtt_us, 1234);
    assert_int_equal(g.transport, BROKER_TRANSPORT_TCP); /* absent: TCP */

    /* TRANSPORT: UDP in a GO and an OFFER; a value this version does not
     * know validates (the broker answers it) but does not parse. */
    for (uint32_t tv = 0; tv < 3; tv++) {
        stun_build_init(&sb, buf, sizeof buf, BROKER_GO, STUN_INDICATION, tid, false);
        broker_build_peer_info(&sb, &p);
        stun_build_attr(&sb, BROKER_ATTR_SESSION_NONCE, nonce, sizeof nonce);
        stun_build_u32(&sb, BROKER_ATTR_START_DELAY, 37);
        stun_build_u32(&sb, BROKER_ATTR_ROLE, BROKER_ROLE_TARGET);
        stun_build_u32(&sb, BROKER_ATTR_TRANSPORT, tv);
        n = stun_build_finish(&sb, NULL);
        assert_true(n > 0);
        assert_int_equal(stun_parse(&m, buf, (size_t)n), 0);
        assert_int_equal(broker_validate(&m, unknown, 16, &nunknown), 0);
        assert_int_equal(nunknown, 0);
        broker_peer_info pi;
        if (tv <= BROKER_TRANSPORT_UDP) {
            assert_int_equal(broker_parse_go(&m, &g), 0);
            assert_int_equal(g.transport, tv);
            assert_int_equal(g.peer.transport, 0);
            assert_int_equal(broker_parse_peer_info(&m, &pi), 0);
            assert_int_equal(pi.transport, tv);
        } else {
            assert_int_equal(broker_parse_go(&m, &g), NTCP_EBADATTR);
            assert_int_equal(broker_parse_peer_info(&m, &pi), NTCP_EBADATTR);
        }
    }
    /* A TRANSPORT of the wrong length is a bad attribute. */
    stun_build_init(&sb, buf, sizeof buf, BROKER_CONNECT, STUN_REQUEST, tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, "carol", 5);
    stun_build_attr(&sb, BROKER_ATTR_TRANSPORT, "\0\1", 2);
    n = stun_build_finish(&sb, NULL);
    assert_int_equal(stun_parse(&m, buf, (size_t)n), 0);
    assert_int_equal(broker_validate(&m, unknown, 16, &nunknown), NTCP_EBADATTR);
}

/* The relay's credentials in a CONNECT-GO (docs/broker-protocol.md 5.2):
 * all three parse into broker_go; a set missing one is ignored; a username
 * with a space or an over-long password does not validate. */
static void test_go_turn(void **state)
{
    (void)state;
    broker_peer_info p;
    memset(&p, 0, sizeof p);
    strcpy(p.name, "bob");
    p.has_public_key = true;
    sa4(&p.public_addr, "192.0.2.33", 4000);
    uint8_t buf[BROKER_MAX_MESSAGE], tid[STUN_TID_SIZE], nonce[32] = {0};
    assert_int_equal(stun_new_tid(tid), 0);
    struct sockaddr_storage turn;
    sa4(&turn, "203.0.113.20", 3478);
    broker_addr ta;
    broker_addr_from_sa(&ta, (struct sockaddr *)&turn);
    for (int variant = 0; variant < 4; variant++) {
        stun_builder sb;
        stun_build_init(&sb, buf, sizeof buf, BROKER_GO, STUN_INDICATION, tid, false);
        broker_build_peer_info(&sb, &p);
        stun_build_attr(&sb, BROKER_ATTR_SESSION_NONCE, nonce, sizeof nonce);
        stun_build_u32(&sb, BROKER_ATTR_START_DELAY, 5);
        stun_build_u32(&sb, BROKER_ATTR_ROLE, BROKER_ROLE_REQUESTER);
        broker_build_baddr(&sb, BROKER_ATTR_TURN_SERVER, &ta);
        const char *user = variant == 2 ? "1700000000 bob" : "1700000000:bob";
        stun_build_attr(&sb, BROKER_ATTR_TURN_USERNAME, user, strlen(user));
        if (variant != 1) {
            char pass[80];
            memset(pass, 'A', sizeof pass);
            size_t pl = variant == 3 ? BROKER_TURN_PASS_MAX + 1 : 28;
            stun_build_attr(&sb, BROKER_ATTR_TURN_PASSWORD, pass, pl);
        }
        int n = stun_build_finish(&sb, NULL);
        assert_true(n > 0);
        stun_msg m;
        assert_int_equal(stun_parse(&m, buf, (size_t)n), 0);
        uint16_t unknown[16];
        size_t nunknown;
        int rc = broker_validate(&m, unknown, 16, &nunknown);
        if (variant >= 2) {
            assert_int_equal(rc, NTCP_EBADATTR);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(nunknown, 0);
        broker_go g;
        assert_int_equal(broker_parse_go(&m, &g), 0);
        if (variant == 0) {
            assert_int_equal(g.turn_server.ss_family, AF_INET);
            assert_memory_equal(&g.turn_server, &turn, sizeof(struct sockaddr_in));
            assert_string_equal(g.turn_user, "1700000000:bob");
            assert_int_equal(strlen(g.turn_pass), 28);
        } else {
            assert_int_equal(g.turn_server.ss_family, 0); /* half a set: no relay */
            assert_string_equal(g.turn_user, "");
        }
    }
}

/* RELAY-ADDR: an address, or why there is none (only printable bytes, at
 * most 200, whatever came); without a nonce it is nothing. */
static void test_relay_addr(void **state)
{
    (void)state;
    uint8_t buf[1024], tid[STUN_TID_SIZE];
    assert_int_equal(stun_new_tid(tid), 0);
    broker_relay_addr ra, got;
    memset(&ra, 0x5a, sizeof ra.nonce);
    memset(&ra.relayed, 0, sizeof ra.relayed);
    sa4(&ra.relayed, "203.0.113.20", 50000);
    ra.why[0] = 0;
    for (int variant = 0; variant < 3; variant++) {
        stun_builder sb;
        stun_build_init(&sb, buf, sizeof buf, BROKER_RELAY_ADDR, STUN_INDICATION, tid, false);
        if (variant == 0) {
            broker_build_relay_addr(&sb, &ra);
        } else {
            if (variant == 1)
                stun_build_attr(&sb, BROKER_ATTR_SESSION_NONCE, ra.nonce, BROKER_NONCE_SIZE);
            char why[300];
            memset(why, 'x', sizeof why);
            memcpy(why, "no\n relay\x01", 10);
            why[sizeof why - 1] = 0;
            stun_build_error(&sb, 503, why);
        }
        int n = stun_build_finish(&sb, NULL);
        assert_true(n > 0);
        stun_msg m;
        assert_int_equal(stun_parse(&m, buf, (size_t)n), 0);
        int rc = broker_parse_relay_addr(&m, &got);
        if (variant == 2) {
            assert_int_equal(rc, NTCP_ENOTFOUND);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_memory_equal(got.nonce, ra.nonce, BROKER_NONCE_SIZE);
        if (variant == 0) {
            assert_memory_equal(&got.relayed, &ra.relayed, sizeof(struct sockaddr_in));
            assert_string_equal(got.why, "");
        } else {
            assert_int_equal(got.relayed.ss_family, 0);
            assert_int_equal(strlen(got.why), BROKER_RELAY_WHY_MAX);
            assert_memory_equal(got.why, "no relayxxx", 11);
        }
    }
}

static void test_validate_rejects(void **state)
{
    (void)state;
    uint8_t buf[512], tid[STUN_TID_SIZE];
    stun_new_tid(tid);
    stun_builder sb;
    stun_msg m;
    uint16_t unknown[16];
    size_t nu;
    /* A 31-byte key. */
    stun_build_init(&sb, buf, sizeof buf, BROKER_REGISTER, STUN_REQUEST, tid, false);
    uint8_t shortkey[31] = {0};
    stun_build_attr(&sb, BROKER_ATTR_PUBLIC_KEY, shortkey, sizeof shortkey);
    int n = stun_build_finish(&sb, NULL);
    assert_int_equal(stun_parse(&m, buf, (size_t)n), 0);
    assert_int_equal(broker_validate(&m, unknown, 16, &nu), NTCP_EBADATTR);
    /* A bad name. */
    stun_build_init(&sb, buf, sizeof buf, BROKER_REGISTER, STUN_REQUEST, tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, "a b", 3);
    n = stun_build_finish(&sb, NULL);
    assert_int_equal(stun_parse(&m, buf, (size_t)n), 0);
    assert_int_equal(broker_validate(&m, unknown, 16, &nu), NTCP_EBADATTR);
    /* Nine private addresses. */
    struct sockaddr_storage ss;
    sa4(&ss, "10.0.0.1", 1);
    stun_build_init(&sb, buf, sizeof buf, BROKER_REGISTER, STUN_REQUEST, tid, false);
    for (int i = 0; i < 9; i++)
        stun_build_addr(&sb, BROKER_ATTR_PRIVATE_ADDR, (struct sockaddr *)&ss);
    n = stun_build_finish(&sb, NULL);
    assert_int_equal(stun_parse(&m, buf, (size_t)n), 0);
    assert_int_equal(broker_validate(&m, unknown, 16, &nu), NTCP_ERANGE);
    /* An unknown comprehension-required attribute is listed, ours are not. */
    stun_build_init(&sb, buf, sizeof buf, BROKER_REGISTER, STUN_REQUEST, tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, "ok", 2);
    stun_build_attr(&sb, 0x4E3E, "x", 1);
    n = stun_build_finish(&sb, NULL);
    assert_int_equal(stun_parse(&m, buf, (size_t)n), 0);
    assert_int_equal(broker_validate(&m, unknown, 16, &nu), 0);
    assert_int_equal(nu, 1);
    assert_int_equal(unknown[0], 0x4E3E);
}

static void test_error_700(void **state)
{
    (void)state;
    uint8_t buf[256], tid[STUN_TID_SIZE];
    stun_new_tid(tid);
    stun_builder sb;
    stun_build_init(&sb, buf, sizeof buf, BROKER_LOOKUP, STUN_ERROR, tid, false);
    broker_build_error(&sb, BROKER_ERR_UNKNOWN_USER, "Unknown user");
    int n = stun_build_finish(&sb, NULL);
    assert_true(n > 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)n), 0);
    int code;
    const char *reason;
    size_t rlen;
    /* Plain STUN sees 404; the broker protocol sees 700. */
    assert_int_equal(stun_get_error(&m, &code, NULL, NULL), 0);
    assert_int_equal(code, 404);
    assert_int_equal(broker_get_error(&m, &code, &reason, &rlen), 0);
    assert_int_equal(code, 700);
    assert_int_equal(rlen, 12);
    assert_memory_equal(reason, "Unknown user", 12);
}

static void test_identity(void **state)
{
    (void)state;
    char dir[] = "/tmp/ntcp-id-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/id.pem", dir);
    EVP_PKEY *k1, *k2;
    assert_int_equal(ntcp_identity_load(path, 0, &k1), NTCP_ENOTFOUND);
    assert_int_equal(ntcp_identity_load(path, 1, &k1), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(ntcp_identity_load(path, 1, &k2), 0);
    uint8_t p1[32], p2[32];
    assert_int_equal(ntcp_identity_public(k1, p1), 0);
    assert_int_equal(ntcp_identity_public(k2, p2), 0);
    assert_memory_equal(p1, p2, 32); /* made once, then reused */

    uint8_t sig[64];
    const uint8_t msg[] = "transcript";
    assert_int_equal(ntcp_identity_sign(k1, msg, sizeof msg, sig), 0);
    assert_int_equal(ntcp_identity_verify(p1, msg, sizeof msg, sig), 0);
    sig[5] ^= 1;
    assert_int_equal(ntcp_identity_verify(p1, msg, sizeof msg, sig), NTCP_EINTEGRITY);

    char b64[45];
    uint8_t back[32];
    ntcp_identity_pub_b64(p1, b64);
    assert_int_equal(strlen(b64), 44);
    assert_int_equal(ntcp_identity_pub_from_b64(b64, 44, back), 0);
    assert_memory_equal(back, p1, 32);
    assert_int_equal(ntcp_identity_pub_from_b64(b64, 43, back), NTCP_EINVAL);

    EVP_PKEY_free(k2);
    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(ntcp_identity_load(path, 1, &k2), NTCP_ECONFIG);
    EVP_PKEY_free(k1);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_transcript),
        cmocka_unit_test(test_go_roundtrip),
        cmocka_unit_test(test_go_turn),
        cmocka_unit_test(test_relay_addr),
        cmocka_unit_test(test_validate_rejects),
        cmocka_unit_test(test_error_700),
        cmocka_unit_test(test_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
