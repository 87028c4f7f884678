/*
 * turn_creds.c: the broker's TURN credentials (docs/relay.md). With
 * --turn-server and --turn-secret-file the broker mints, for each end of
 * each connect, time-limited TURN REST credentials (coturn's
 * use-auth-secret) under the end's own name and puts them with the server's
 * address in its CONNECT-GO: peers never hold the shared secret nor a
 * long-term TURN password.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "addr.h"
#include "broker_int.h"
#include "turn.h"

/* The secret file: its first line, without the line end. */
static int read_secret(const char *path, char *out, size_t cap, size_t *len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NTCP_ECONFIG;
    size_t n = fread(out, 1, cap - 1, f);
    bool more = !feof(f) && fgetc(f) != EOF;
    fclose(f);
    out[n] = 0;
    out[strcspn(out, "\r\n")] = 0;
    *len = strlen(out);
    /* A longer first line would be silently cut: refuse it instead. */
    if (*len == 0 || (more && *len == n))
        return NTCP_ECONFIG;
    return 0;
}

int broker_turn_init(ntcp_broker *b, const char *server, const char *secret_file, uint32_t ttl_s)
{
    b->turn.enabled = false;
    if (!server && !secret_file)
        return 0;
    if (!server || !secret_file)
        return NTCP_ECONFIG; /* one without the other is a mistake */
    if (ntcp_parse_addr(server, 3478, &b->turn.server) < 0) {
        broker_logf(b, NTCP_LOG_ERROR, "--turn-server %s: not IP:PORT", server);
        return NTCP_ECONFIG;
    }
    if (read_secret(secret_file, b->turn.secret, sizeof b->turn.secret, &b->turn.secret_len) < 0) {
        broker_logf(b, NTCP_LOG_ERROR, "--turn-secret-file %s: unreadable, empty or too long",
                    secret_file);
        return NTCP_ECONFIG;
    }
    b->turn.ttl_s = ttl_s ? ttl_s : 86400;
    b->turn.enabled = true;
    return 0;
}

void broker_turn_free(ntcp_broker *b)
{
    OPENSSL_cleanse(b->turn.secret, sizeof b->turn.secret);
}

void broker_turn_build(ntcp_broker *b, stun_builder *sb, const char *name)
{
    if (!b->turn.enabled || !name || !*name)
        return;
    char user[BROKER_TURN_USER_MAX + 1], pass[BROKER_TURN_PASS_MAX + 1];
    uint64_t expiry = (uint64_t)time(NULL) + b->turn.ttl_s;
    if (turn_rest_credentials(b->turn.secret, b->turn.secret_len, name, expiry, user, sizeof user,
                              pass, sizeof pass) < 0)
        return;
    broker_addr a;
    broker_addr_from_sa(&a, (const struct sockaddr *)&b->turn.server);
    broker_build_baddr(sb, BROKER_ATTR_TURN_SERVER, &a);
    stun_build_string(sb, BROKER_ATTR_TURN_USERNAME, user);
    stun_build_string(sb, BROKER_ATTR_TURN_PASSWORD, pass);
    OPENSSL_cleanse(pass, sizeof pass);
}

/* Cluster: the TURN server this node offers, in a connect's messages to
 * the other end's node (docs/cluster.md). Only the server's address
 * crosses: each node mints its own end's credentials. */
void broker_turn_build_server(ntcp_broker *b, stun_builder *sb)
{
    if (!b->turn.enabled)
        return;
    broker_addr a;
    broker_addr_from_sa(&a, (const struct sockaddr *)&b->turn.server);
    broker_build_baddr(sb, BROKER_ATTR_TURN_SERVER, &a);
}

bool broker_turn_agrees(const ntcp_broker *b, const stun_msg *m)
{
    struct sockaddr_storage other;
    return b->turn.enabled && broker_get_addr(m, BROKER_ATTR_TURN_SERVER, &other) == 0 &&
           ntcp_sockaddr_equal((const struct sockaddr *)&other,
                               (const struct sockaddr *)&b->turn.server);
}

void relay_addr_send(bsession *to, const broker_relay_addr *ra)
{
    uint8_t buf[384], tid[STUN_TID_SIZE];
    stun_builder sb;
    stun_new_tid(tid);
    stun_build_init(&sb, buf, sizeof buf, BROKER_RELAY_ADDR, STUN_INDICATION, tid, false);
    broker_build_relay_addr(&sb, ra);
    int n = stun_build_finish(&sb, NULL);
    if (n > 0)
        broker_send(to, buf, (size_t)n);
}

void do_relay_addr(bsession *s, const stun_msg *m)
{
    ntcp_broker *b = s->b;
    broker_relay_addr ra;
    if (broker_parse_relay_addr(m, &ra) < 0) {
        broker_logf(b, NTCP_LOG_DEBUG, "RELAY-ADDR without nonce: dropped");
        return;
    }
    bsession *other;
    const char *node;
    if (!rdv_other(b, s, ra.nonce, &other, &node)) {
        broker_logf(b, NTCP_LOG_DEBUG, "RELAY-ADDR for no connect of this session: dropped");
        return;
    }
    /* Forwarded, re-encoded: the nonce, and the relayed address when the
     * end has one, else why it has none. The address is the TURN server's,
     * not the end's own: nothing to check it against. An other end at
     * another node of the cluster gets it through that node. */
    if (other)
        relay_addr_send(other, &ra);
    else
        cluster_relay_addr(b, node, &ra);
}
