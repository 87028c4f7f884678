/*
 * test_tls.c: the TLS memory-BIO layer (src/tls.c) with no sockets: a client
 * and a server pass ciphertext to each other by hand, in any split. Pins,
 * CA and name checks, refusals and their messages, KeyUpdate, close_notify,
 * garbage, and server contexts that do not load.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "ntcp.h"
#include "tls.h"
#include "tls_certs.h"

typedef struct fx {
    char dir[64];
    tls_files files;
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    strcpy(f->dir, "/tmp/ntcp-tls-test-XXXXXX");
    if (!f || !mkdtemp(f->dir) || !tls_files_make(&f->files, f->dir))
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

/* One end's plaintext and its last result. */
typedef struct end {
    ntcp_tls *t;
    uint8_t got[8192];
    size_t len;
    int rc; /* last negative result of ntcp_tls_read, or 0 */
} end;

/* Moves what `from` has to send into `to`, chunk bytes at a time, reading
 * after each chunk (so that records arrive split). Returns bytes moved. */
static size_t move(end *from, end *to, size_t chunk)
{
    uint8_t buf[32768];
    size_t total = 0, n;
    while ((n = ntcp_tls_take(from->t, buf, sizeof buf)) > 0) {
        total += n;
        for (size_t off = 0; off < n; off += chunk) {
            size_t k = n - off < chunk ? n - off : chunk;
            assert_int_equal(ntcp_tls_feed(to->t, buf + off, k), 0);
            int rc;
            while ((rc = ntcp_tls_read(to->t, to->got + to->len, sizeof to->got - to->len)) > 0)
                to->len += (size_t)rc;
            if (rc < 0) {
                to->rc = rc;
                return total;
            }
        }
    }
    return total;
}

/* Both directions until nothing moves. */
static void pump(end *c, end *s, size_t chunk)
{
    /* The client speaks first: its read makes the ClientHello. */
    int rc = ntcp_tls_read(c->t, c->got + c->len, sizeof c->got - c->len);
    if (rc < 0)
        c->rc = rc;
    else
        c->len += (size_t)rc;
    for (int i = 0; i < 20; i++) {
        size_t moved = move(c, s, chunk) + move(s, c, chunk);
        if (moved == 0)
            break;
    }
}

typedef struct pair {
    SSL_CTX *sctx, *cctx;
    end c, s;
} pair;

static void pair_open(pair *p, const char *cert, const char *key, const ntcp_tls_verify *v,
                      const char *host)
{
    memset(p, 0, sizeof *p);
    char err[320];
    p->sctx = ntcp_tls_server_ctx(cert, key, err, sizeof err);
    assert_non_null(p->sctx);
    p->cctx = ntcp_tls_client_ctx(v, err, sizeof err);
    assert_non_null(p->cctx);
    p->s.t = ntcp_tls_new(p->sctx, true, NULL, NULL);
    p->c.t = ntcp_tls_new(p->cctx, false, host, v);
    assert_non_null(p->s.t);
    assert_non_null(p->c.t);
}

static void pair_close(pair *p)
{
    ntcp_tls_free(p->c.t);
    ntcp_tls_free(p->s.t);
    SSL_CTX_free(p->cctx);
    SSL_CTX_free(p->sctx);
}

static void test_pins_parse(void **state)
{
    (void)state;
    uint8_t pins[4][NTCP_TLS_PIN_SIZE];
    const char *a = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    assert_int_equal(ntcp_tls_parse_pins(a, pins, 4), 1);
    /* SHA-256 of the empty string, a known value. */
    static const uint8_t empty[32] = {0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14,
                                      0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
                                      0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c,
                                      0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
    assert_memory_equal(pins[0], empty, 32);
    assert_int_equal(ntcp_tls_parse_pins("sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
                                         pins, 4), 1);
    assert_int_equal(ntcp_tls_parse_pins("sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=, "
                                         "SHA256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                                         pins, 4), 2);
    assert_memory_equal(pins[0], empty, 32);
    assert_int_equal(pins[1][0], 0);
    /* Base64 that starts with '/' is not curl's double slash. */
    assert_int_equal(ntcp_tls_parse_pins("sha256//w==AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", pins, 4),
                     NTCP_EINVAL);
    assert_int_equal(ntcp_tls_parse_pins("sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", pins, 4), 1);
    assert_int_equal(pins[0][0], 0xFC);
    assert_int_equal(ntcp_tls_parse_pins("sha256///AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", pins, 4), 1);
    assert_int_equal(pins[0][0], 0xFC);
    assert_int_equal(ntcp_tls_parse_pins("", pins, 4), NTCP_EINVAL);
    assert_int_equal(ntcp_tls_parse_pins("md5/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", pins, 4),
                     NTCP_EINVAL);
    assert_int_equal(ntcp_tls_parse_pins("sha256/47DEQpj8HBSa", pins, 4), NTCP_EINVAL);
    assert_int_equal(ntcp_tls_parse_pins("sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF!=", pins, 4),
                     NTCP_EINVAL);
    assert_int_equal(ntcp_tls_parse_pins(a, pins, 0), NTCP_ERANGE);
}

static void test_pin_handshake_split_records(void **state)
{
    fx *f = *state;
    uint8_t pin[1][NTCP_TLS_PIN_SIZE];
    assert_int_equal(ntcp_tls_parse_pins(f->files.self_pin, pin, 1), 1);
    ntcp_tls_verify v = {.pins = (const uint8_t(*)[NTCP_TLS_PIN_SIZE])pin, .npins = 1};
    /* Every byte in its own feed: records and the handshake arrive split. */
    pair p;
    pair_open(&p, f->files.self_cert, f->files.self_key, &v, "self.test");
    pump(&p.c, &p.s, 1);
    assert_int_equal(p.c.rc, 0);
    assert_int_equal(p.s.rc, 0);
    assert_true(ntcp_tls_established(p.c.t));
    assert_true(ntcp_tls_established(p.s.t));
    assert_string_equal(ntcp_tls_error(p.c.t), "");

    /* Data both ways, a big message coalesced with a small one. */
    uint8_t big[5000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7);
    assert_int_equal(ntcp_tls_write(p.c.t, big, sizeof big), 0);
    assert_int_equal(ntcp_tls_write(p.c.t, "tail", 4), 0);
    pump(&p.c, &p.s, 3);
    assert_int_equal(p.s.len, sizeof big + 4);
    assert_memory_equal(p.s.got, big, sizeof big);
    assert_memory_equal(p.s.got + sizeof big, "tail", 4);
    assert_int_equal(ntcp_tls_write(p.s.t, "pong", 4), 0);
    pump(&p.c, &p.s, 1000);
    assert_int_equal(p.c.len, 4);

    /* KeyUpdate asked by the client: the server answers by itself, and data
     * goes on both ways under the new keys. */
    assert_int_equal(ntcp_tls_key_update(p.c.t), 0);
    assert_true(ntcp_tls_pending(p.c.t) > 0);
    move(&p.c, &p.s, 1);
    assert_int_equal(p.s.rc, 0);
    assert_true(ntcp_tls_pending(p.s.t) > 0); /* its own KeyUpdate, unasked for data */
    assert_int_equal(ntcp_tls_write(p.c.t, "after", 5), 0);
    pump(&p.c, &p.s, 2);
    assert_int_equal(p.s.rc, 0);
    assert_int_equal(p.s.len, sizeof big + 4 + 5);
    assert_memory_equal(p.s.got + sizeof big + 4, "after", 5);
    assert_int_equal(ntcp_tls_key_update(p.s.t), 0);
    assert_int_equal(ntcp_tls_write(p.s.t, "again", 5), 0);
    pump(&p.c, &p.s, 7);
    assert_int_equal(p.c.rc, 0);
    assert_int_equal(p.c.len, 9);
    assert_memory_equal(p.c.got + 4, "again", 5);

    /* close_notify: the other end reads NTCP_ECLOSED, not an error. */
    ntcp_tls_shutdown(p.s.t);
    pump(&p.c, &p.s, 1);
    assert_int_equal(p.c.rc, NTCP_ECLOSED);
    assert_int_equal(ntcp_tls_write(p.c.t, "late", 4), NTCP_ETLS);
    pair_close(&p);
}

static void expect_refused(fx *f, const char *cert, const char *key, const ntcp_tls_verify *v,
                           const char *host, const char *why)
{
    (void)f;
    pair p;
    pair_open(&p, cert, key, v, host);
    pump(&p.c, &p.s, 512);
    assert_int_equal(p.c.rc, NTCP_ECERT);
    assert_false(ntcp_tls_established(p.c.t));
    assert_non_null(strstr(ntcp_tls_error(p.c.t), why));
    /* The client's alert ends the server's side too. */
    assert_int_equal(p.s.rc, NTCP_ETLS);
    assert_true(strlen(ntcp_tls_error(p.s.t)) > 0);
    pair_close(&p);
}

static void test_ca_name_and_pin_checks(void **state)
{
    fx *f = *state;
    tls_files *t = &f->files;
    /* CA and name, by DNS name and by IP address. */
    ntcp_tls_verify ca = {.ca_file = t->ca};
    const char *hosts[] = {"broker.test", "127.0.0.1", "::1"};
    for (size_t i = 0; i < 3; i++) {
        pair p;
        pair_open(&p, t->cert, t->key, &ca, hosts[i]);
        pump(&p.c, &p.s, 4096);
        assert_int_equal(p.c.rc, 0);
        assert_true(ntcp_tls_established(p.c.t));
        pair_close(&p);
    }
    expect_refused(f, t->cert, t->key, &ca, "other.test", "hostname mismatch");
    expect_refused(f, t->cert, t->key, &ca, "10.0.0.1", "IP address mismatch");
    ntcp_tls_verify other = {.ca_file = t->other_ca};
    expect_refused(f, t->cert, t->key, &other, "broker.test", "certificate verify failed");
    /* A self-signed certificate is not trusted by the CA... */
    expect_refused(f, t->self_cert, t->self_key, &ca, "self.test", "certificate verify failed");
    /* ...and a pin for another key refuses it whatever the chain. */
    uint8_t pins[2][NTCP_TLS_PIN_SIZE];
    assert_int_equal(ntcp_tls_parse_pins(t->pin, pins, 2), 1);
    ntcp_tls_verify wrong = {.pins = (const uint8_t(*)[NTCP_TLS_PIN_SIZE])pins, .npins = 1};
    expect_refused(f, t->self_cert, t->self_key, &wrong, NULL, "certificate pin mismatch");
    /* CA and pin together: both must hold. */
    ntcp_tls_verify both = {.ca_file = t->ca, .pins = (const uint8_t(*)[NTCP_TLS_PIN_SIZE])pins,
                            .npins = 1};
    pair p;
    pair_open(&p, t->cert, t->key, &both, "broker.test");
    pump(&p.c, &p.s, 4096);
    assert_int_equal(p.c.rc, 0);
    assert_true(ntcp_tls_established(p.c.t));
    pair_close(&p);
    assert_int_equal(ntcp_tls_parse_pins(t->self_pin, pins, 2), 1);
    expect_refused(f, t->cert, t->key, &both, "broker.test", "certificate pin mismatch");
    /* Rotation: either of two pins. */
    char two[160];
    snprintf(two, sizeof two, "%s,%s", t->self_pin, t->pin);
    assert_int_equal(ntcp_tls_parse_pins(two, pins, 2), 2);
    ntcp_tls_verify rot = {.pins = (const uint8_t(*)[NTCP_TLS_PIN_SIZE])pins, .npins = 2};
    pair_open(&p, t->cert, t->key, &rot, NULL);
    pump(&p.c, &p.s, 4096);
    assert_int_equal(p.c.rc, 0);
    pair_close(&p);
    /* Insecure: anything goes, but only when asked for. */
    ntcp_tls_verify none = {.insecure = true};
    pair_open(&p, t->self_cert, t->self_key, &none, "whatever.test");
    pump(&p.c, &p.s, 4096);
    assert_int_equal(p.c.rc, 0);
    assert_true(ntcp_tls_established(p.c.t));
    pair_close(&p);
}

static void test_garbage_and_plain(void **state)
{
    fx *f = *state;
    char err[320];
    SSL_CTX *sctx = ntcp_tls_server_ctx(f->files.cert, f->files.key, err, sizeof err);
    assert_non_null(sctx);
    uint8_t buf[64];
    /* A plain STUN header (a broker REGISTER) on a TLS port. */
    static const uint8_t stun[20] = {0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4,
                                     5, 6, 7, 8, 9, 10, 11, 12};
    ntcp_tls *s = ntcp_tls_new(sctx, true, NULL, NULL);
    assert_int_equal(ntcp_tls_feed(s, stun, sizeof stun), 0);
    assert_int_equal(ntcp_tls_read(s, buf, sizeof buf), NTCP_ETLS);
    assert_true(strlen(ntcp_tls_error(s)) > 0);
    /* A fatal protocol_version alert says what the port speaks. */
    static const uint8_t alert[7] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70};
    assert_int_equal(ntcp_tls_take(s, buf, sizeof buf), sizeof alert);
    assert_memory_equal(buf, alert, sizeof alert);
    /* Failed stays failed. */
    assert_int_equal(ntcp_tls_read(s, buf, sizeof buf), NTCP_ETLS);
    assert_int_equal(ntcp_tls_write(s, "x", 1), NTCP_ETLS);
    ntcp_tls_free(s);
    /* A record header announcing a handshake, then random bytes. */
    s = ntcp_tls_new(sctx, true, NULL, NULL);
    uint8_t junk[300] = {0x16, 0x03, 0x01, 0x01, 0x00};
    for (size_t i = 5; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 31 + 7);
    assert_int_equal(ntcp_tls_feed(s, junk, sizeof junk), 0);
    assert_int_equal(ntcp_tls_read(s, buf, sizeof buf), NTCP_ETLS);
    ntcp_tls_free(s);
    /* Half a record: nothing yet, no error (the caller's timer ends it). */
    s = ntcp_tls_new(sctx, true, NULL, NULL);
    assert_int_equal(ntcp_tls_feed(s, junk, 3), 0);
    assert_int_equal(ntcp_tls_read(s, buf, sizeof buf), 0);
    assert_false(ntcp_tls_established(s));
    ntcp_tls_free(s);
    SSL_CTX_free(sctx);
}

static void test_tls12_client_refused(void **state)
{
    fx *f = *state;
    ntcp_tls_verify v = {.insecure = true};
    pair p;
    pair_open(&p, f->files.cert, f->files.key, &v, NULL);
    /* A client that offers TLS 1.2 at most: the server is 1.3 only. */
    ntcp_tls_free(p.c.t);
    assert_int_equal(SSL_CTX_set_min_proto_version(p.cctx, TLS1_2_VERSION), 1);
    assert_int_equal(SSL_CTX_set_max_proto_version(p.cctx, TLS1_2_VERSION), 1);
    p.c.t = ntcp_tls_new(p.cctx, false, NULL, &v);
    pump(&p.c, &p.s, 4096);
    assert_int_equal(p.s.rc, NTCP_ETLS);
    assert_non_null(strstr(ntcp_tls_error(p.s.t), "unsupported protocol"));
    assert_int_equal(p.c.rc, NTCP_ETLS);
    assert_non_null(strstr(ntcp_tls_error(p.c.t), "protocol version"));
    pair_close(&p);
}

static void test_server_ctx_errors(void **state)
{
    fx *f = *state;
    char err[320];
    assert_null(ntcp_tls_server_ctx("/nonexistent/cert.pem", f->files.key, err, sizeof err));
    assert_non_null(strstr(err, "cannot load the certificate /nonexistent/cert.pem"));
    assert_null(ntcp_tls_server_ctx(f->files.cert, "/nonexistent/key.pem", err, sizeof err));
    assert_non_null(strstr(err, "cannot load the key"));
    /* A key that is not the certificate's. */
    assert_null(ntcp_tls_server_ctx(f->files.cert, f->files.self_key, err, sizeof err));
    assert_true(strlen(err) > 0);
    assert_null(ntcp_tls_server_ctx(f->files.cert, NULL, err, sizeof err));
    ntcp_tls_verify v = {.ca_file = "/nonexistent/ca.pem"};
    assert_null(ntcp_tls_client_ctx(&v, err, sizeof err));
    assert_non_null(strstr(err, "cannot load the CA file"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pins_parse),
        cmocka_unit_test_setup_teardown(test_pin_handshake_split_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_name_and_pin_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_and_plain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls12_client_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_ctx_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
