/*
 * fuzz_turn_msg.c: libFuzzer target for what the TURN client reads from a
 * server: turn_read() with and without a key, then turn_auth_challenge() on
 * what it accepts. Checks that pointers stay inside the input, strings stay
 * terminated and a challenge never leaves half-updated credentials.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <netinet/in.h>

#include "fuzz_check.h"
#include "turn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_msg(const turn_msg *t, const uint8_t *data, size_t size)
{
    FUZZ_CHECK(memchr(t->reason, 0, sizeof t->reason) != NULL);
    if (t->data)
        FUZZ_CHECK(t->data >= data && t->data + t->data_len <= data + size);
    if (t->realm)
        FUZZ_CHECK((const uint8_t *)t->realm >= data &&
                   (const uint8_t *)t->realm + t->realm_len <= data + size);
    if (t->nonce)
        FUZZ_CHECK((const uint8_t *)t->nonce >= data &&
                   (const uint8_t *)t->nonce + t->nonce_len <= data + size);
    if (t->has_relayed)
        FUZZ_CHECK(t->relayed.ss_family == AF_INET || t->relayed.ss_family == AF_INET6);
    if (t->has_peer)
        FUZZ_CHECK(t->peer.ss_family == AF_INET || t->peer.ss_family == AF_INET6);
    if (t->cls == STUN_ERROR)
        FUZZ_CHECK(t->code >= 300 && t->code <= 699);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    turn_auth fresh, keyed;
    FUZZ_CHECK(turn_auth_init(&fresh, "1700000000:fuzz", "pw") == 0);
    keyed = fresh;
    keyed.have_key = true;
    strcpy(keyed.realm, "ntcp.test");
    strcpy(keyed.nonce, "abc");
    FUZZ_CHECK(stun_long_term_key(keyed.user, strlen(keyed.user), "ntcp.test", 9, "pw", 2,
                                  keyed.key) == 0);

    turn_msg t;
    if (turn_read(&t, data, size, &fresh) == 0) {
        check_msg(&t, data, size);
        FUZZ_CHECK(!t.integrity); /* no key, nothing verified */
        turn_auth a = fresh;
        int rc = turn_auth_challenge(&a, &t);
        if (rc == 0) {
            FUZZ_CHECK(a.have_key && a.nonce[0] && a.realm[0]);
            FUZZ_CHECK(strlen(a.nonce) < sizeof a.nonce && strlen(a.realm) < sizeof a.realm);
        } else {
            FUZZ_CHECK(!a.have_key);
        }
    }
    if (turn_read(&t, data, size, &keyed) == 0) {
        check_msg(&t, data, size);
        turn_auth a = keyed;
        int rc = turn_auth_challenge(&a, &t);
        FUZZ_CHECK(rc == 0 || rc == NTCP_EINVAL || rc == NTCP_EREFUSED || rc == NTCP_EPROTO);
        FUZZ_CHECK(memchr(a.nonce, 0, sizeof a.nonce) && memchr(a.realm, 0, sizeof a.realm));
    }
    return 0;
}
