/*
 * fuzz_broker_proto.c: libFuzzer target for the broker protocol's checks and
 * getters on top of stun_parse(): whatever validates must decode within the
 * message and within the protocol's limits, and peer information rebuilt
 * with the builder must decode to the same content.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "broker_proto.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same_sa(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    broker_addr x, y;
    broker_addr_from_sa(&x, (const struct sockaddr *)a);
    broker_addr_from_sa(&y, (const struct sockaddr *)b);
    return memcmp(&x, &y, sizeof x) == 0;
}

/* A message rebuilt from parsed values, parsed back: it must be well formed
 * and carry nothing a broker would not know. */
static void reparse(stun_builder *sb, stun_msg *m2)
{
    int n = stun_build_finish(sb, NULL);
    FUZZ_CHECK(n > 0);
    FUZZ_CHECK(stun_parse(m2, sb->buf, (size_t)n) == 0);
    uint16_t unknown[STUN_MAX_UNKNOWN];
    size_t nu;
    FUZZ_CHECK(broker_validate(m2, unknown, STUN_MAX_UNKNOWN, &nu) == 0 && nu == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    stun_msg m;
    if (stun_parse(&m, data, size) < 0)
        return 0;
    uint16_t unknown[STUN_MAX_UNKNOWN];
    size_t nunknown = 0;
    if (broker_validate(&m, unknown, STUN_MAX_UNKNOWN, &nunknown) < 0)
        return 0;
    FUZZ_CHECK(nunknown <= m.nunknown);
    for (size_t i = 0; i < nunknown; i++)
        FUZZ_CHECK(unknown[i] < BROKER_ATTR_NAME || unknown[i] > BROKER_ATTR_SPOOF);

    char name[BROKER_NAME_MAX + 1];
    if (broker_get_name(&m, name) == 0)
        FUZZ_CHECK(broker_name_valid(name, strlen(name)));
    int code;
    const char *reason;
    size_t rlen;
    if (broker_get_error(&m, &code, &reason, &rlen) == 0)
        FUZZ_CHECK(code >= 300 && code <= 999 && reason >= (const char *)m.buf &&
                   reason + rlen <= (const char *)m.buf + m.len);

    broker_peer_info p;
    if (broker_parse_peer_info(&m, &p) == 0) {
        FUZZ_CHECK(p.nprivate <= BROKER_MAX_PRIVATE);
        FUZZ_CHECK(p.transport <= BROKER_TRANSPORT_UDP);
        FUZZ_CHECK(p.profile_len <= BROKER_PROFILE_MAX);
        if (p.profile_len)
            FUZZ_CHECK(p.profile >= m.buf && p.profile + p.profile_len <= m.buf + m.len);
        /* Round trip through the builder. */
        uint8_t buf[BROKER_MAX_MESSAGE * 2];
        stun_builder sb;
        stun_build_init(&sb, buf, sizeof buf, BROKER_LOOKUP, STUN_SUCCESS, m.tid, false);
        broker_build_peer_info(&sb, &p);
        stun_msg m2;
        reparse(&sb, &m2);
        broker_peer_info q;
        FUZZ_CHECK(broker_parse_peer_info(&m2, &q) == 0);
        FUZZ_CHECK(strcmp(p.name, q.name) == 0);
        FUZZ_CHECK(p.has_public_key == q.has_public_key);
        FUZZ_CHECK(!p.has_public_key || memcmp(p.public_key, q.public_key, 32) == 0);
        FUZZ_CHECK(same_sa(&p.public_addr, &q.public_addr));
        FUZZ_CHECK(same_sa(&p.public_udp, &q.public_udp));
        FUZZ_CHECK(p.nprivate == q.nprivate);
        for (size_t i = 0; i < p.nprivate; i++)
            FUZZ_CHECK(same_sa(&p.private_addr[i], &q.private_addr[i]));
        FUZZ_CHECK(p.profile_len == q.profile_len);
        FUZZ_CHECK(p.profile_len == 0 || memcmp(p.profile, q.profile, p.profile_len) == 0);
    }
    /* RELAY-ADDR: what a broker forwards (to a peer, or to another node of
     * its cluster) is rebuilt from this; it must decode to the same. */
    broker_relay_addr ra;
    if (broker_parse_relay_addr(&m, &ra) == 0) {
        size_t wl = strnlen(ra.why, sizeof ra.why);
        FUZZ_CHECK(wl <= BROKER_RELAY_WHY_MAX);
        for (size_t i = 0; i < wl; i++)
            FUZZ_CHECK(ra.why[i] >= 0x20 && ra.why[i] < 0x7f);
        FUZZ_CHECK(ra.relayed.ss_family == 0 || ra.relayed.ss_family == AF_INET ||
                   ra.relayed.ss_family == AF_INET6);
        uint8_t buf[512];
        stun_builder sb;
        stun_build_init(&sb, buf, sizeof buf, BROKER_RELAY_ADDR, STUN_INDICATION, m.tid, false);
        broker_build_relay_addr(&sb, &ra);
        stun_msg m2;
        reparse(&sb, &m2);
        broker_relay_addr rb;
        FUZZ_CHECK(broker_parse_relay_addr(&m2, &rb) == 0);
        FUZZ_CHECK(memcmp(ra.nonce, rb.nonce, BROKER_NONCE_SIZE) == 0);
        FUZZ_CHECK(same_sa(&ra.relayed, &rb.relayed));
        FUZZ_CHECK(ra.relayed.ss_family || strcmp(ra.why, rb.why) == 0);
    }
    broker_go g;
    if (broker_parse_go(&m, &g) == 0) {
        FUZZ_CHECK(g.role <= BROKER_ROLE_TARGET);
        FUZZ_CHECK(g.peer.has_public_key);
        FUZZ_CHECK(g.transport <= BROKER_TRANSPORT_UDP && g.peer.transport == 0);
        /* The relay's credentials: all or none, terminated, within bounds. */
        if (g.turn_server.ss_family) {
            FUZZ_CHECK(g.turn_server.ss_family == AF_INET || g.turn_server.ss_family == AF_INET6);
            size_t ul = strnlen(g.turn_user, sizeof g.turn_user);
            size_t pl = strnlen(g.turn_pass, sizeof g.turn_pass);
            FUZZ_CHECK(ul >= 1 && ul <= BROKER_TURN_USER_MAX && pl >= 1 && pl <= BROKER_TURN_PASS_MAX);
        } else {
            FUZZ_CHECK(g.turn_user[0] == 0 && g.turn_pass[0] == 0);
        }
    }
    return 0;
}
