/*
 * fuzz_verify.c: libFuzzer target for the key proof's message parser and for
 * one end's state machine (version 2) fed an arbitrary stream: no crash, no
 * read past the input, never more wanted than one message, nothing taken
 * after the PROOF that ends it, output one whole message at a time and
 * nothing sent after a failure. Seeds (tests/fuzz/make_verify_corpus.py)
 * carry bob's valid flight, signed with the fixed key, and its variants.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_check.h"
#include "verify.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Fixed keys, so that a seed can hold a HELLO that passes the identity
 * checks and takes the fuzzer on to the PROOF (make_verify_corpus.py has
 * the same). */
static const uint8_t ALICE_SEED[32] = "fuzz-alice-private-key-seed-0001";
static const uint8_t BOB_SEED[32] = "fuzz-bob-private-key-seed-000002";
static const uint8_t NONCE[32] = "fuzz-session-nonce-0123456789abc";

static bool inside(const uint8_t *buf, size_t len, const void *p, size_t n)
{
    const uint8_t *q = p;
    return q >= buf && q + n <= buf + len;
}

static void check_parse(const uint8_t *data, size_t size)
{
    ntcp_verify_msg m;
    uint16_t unknown;
    int rc = ntcp_verify_parse(&m, data, size, &unknown);
    if (rc != 0) {
        FUZZ_CHECK(rc < 0);
        return;
    }
    FUZZ_CHECK(size <= VERIFY_MAX_MESSAGE);
    if (m.method == VERIFY_HELLO) {
        FUZZ_CHECK(inside(data, size, m.session_id, VERIFY_SESSION_ID_SIZE));
        FUZZ_CHECK(inside(data, size, m.public_key, 32));
        FUZZ_CHECK(inside(data, size, m.random, 32));
        FUZZ_CHECK(inside(data, size, m.name, m.name_len));
        FUZZ_CHECK(m.role <= 1 && m.version >= 1);
        /* What we accept, we can rebuild, and it parses the same. */
        char name[BROKER_NAME_MAX + 1];
        memcpy(name, m.name, m.name_len);
        name[m.name_len] = 0;
        uint8_t out[VERIFY_MAX_MESSAGE];
        int n = ntcp_verify_build_hello(out, sizeof out, m.role, m.session_id, name, m.public_key,
                                        m.random);
        FUZZ_CHECK(n > 0);
        ntcp_verify_msg m2;
        FUZZ_CHECK(ntcp_verify_parse(&m2, out, (size_t)n, NULL) == 0);
        FUZZ_CHECK(m2.role == m.role && m2.name_len == m.name_len);
        FUZZ_CHECK(memcmp(m2.random, m.random, 32) == 0);
    } else if (m.method == VERIFY_PROOF) {
        FUZZ_CHECK(inside(data, size, m.signature, 64));
    } else {
        FUZZ_CHECK(m.method == VERIFY_REFUSE);
        FUZZ_CHECK(m.code >= 300 && m.code <= 699);
        FUZZ_CHECK(m.reason_len == 0 || inside(data, size, m.reason, m.reason_len));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_parse(data, size);

    EVP_PKEY *alice = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, ALICE_SEED, 32);
    EVP_PKEY *bob = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, BOB_SEED, 32);
    FUZZ_CHECK(alice && bob);
    ntcp_verify_params p;
    memset(&p, 0, sizeof p);
    p.key = alice;
    p.name = "alice";
    p.peer_name = "bob";
    FUZZ_CHECK(ntcp_identity_public(bob, p.peer_key) == 0);
    memcpy(p.nonce, NONCE, 32);
    p.role = BROKER_ROLE_REQUESTER;
    static ntcp_verify_core c;
    uint8_t rnd[32] = {0};
    FUZZ_CHECK(ntcp_verify_core_init(&c, &p, rnd) == 0);
    /* Our whole flight is queued at once, before any input: a HELLO, then
     * a PROOF, handed out one whole message at a time. */
    const uint8_t *out;
    size_t olen;
    for (int k = 0; k < 2; k++) {
        ntcp_verify_core_output(&c, &out, &olen);
        FUZZ_CHECK(olen >= 20 && olen == 20 + (size_t)((out[2] << 8) | out[3]));
        ntcp_verify_msg m;
        FUZZ_CHECK(ntcp_verify_parse(&m, out, olen, NULL) == 0);
        FUZZ_CHECK(m.method == (k == 0 ? VERIFY_HELLO : VERIFY_PROOF));
        if (k == 0 && size > 0 && (data[0] & 1)) {
            /* Sometimes keep the PROOF queued while the input comes. */
            ntcp_verify_core_sent(&c, olen);
            break;
        }
        ntcp_verify_core_sent(&c, olen);
    }
    /* The stream in pieces whose sizes come from the input itself, so that
     * the fuzzer explores splits too. */
    size_t off = 0;
    while (off < size && ntcp_verify_core_want(&c) > 0) {
        size_t want = ntcp_verify_core_want(&c);
        FUZZ_CHECK(want <= VERIFY_MAX_MESSAGE);
        size_t n = (size_t)(data[off] % 7) + 1;
        if (n > want)
            n = want;
        if (n > size - off)
            n = size - off;
        int st = ntcp_verify_core_input(&c, data + off, n);
        off += n;
        FUZZ_CHECK(st == c.state);
        ntcp_verify_core_output(&c, &out, &olen);
        FUZZ_CHECK(olen <= VERIFY_MAX_MESSAGE);
        /* Input never makes the core send more: a failure drops what was
         * left (no REFUSE, no proof for a refused peer). */
        if (st == VERIFY_FAILED)
            FUZZ_CHECK(olen == 0 && c.err < 0);
    }
    if (c.state == VERIFY_DONE) {
        /* Done means bob's signature over his own transcript verified
         * (the seeds hello_proof*): the core wants nothing more, and the
         * binding is the one of both flights. */
        FUZZ_CHECK(ntcp_verify_core_want(&c) == 0 && c.peer_version >= VERIFY_PROTO_VERSION);
        uint8_t bind[VERIFY_BINDING_SIZE];
        FUZZ_CHECK(ntcp_verify_binding(bind, VERIFY_PROTO_VERSION, c.peer_version, NONCE, rnd,
                                       c.peer_random, "alice", c.pub, "bob", p.peer_key) == 0);
        FUZZ_CHECK(memcmp(bind, c.binding, sizeof bind) == 0);
    }
    EVP_PKEY_free(alice);
    EVP_PKEY_free(bob);
    return 0;
}
