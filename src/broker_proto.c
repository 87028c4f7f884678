/*
 * broker_proto.c: builds and checks the broker protocol's attributes on top of
 * the STUN codec (docs/broker-protocol.md). No I/O, no allocation: the broker
 * and the peer session share it, so both sides agree on every length.
 */
#include "broker_proto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

static uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

bool broker_name_valid(const char *s, size_t len)
{
    if (!s || len == 0 || len > BROKER_NAME_MAX)
        return false;
    if (s[0] == '.' || s[0] == '-')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '@' || c == '+' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

static bool is_broker_attr(uint16_t t)
{
    return t >= BROKER_ATTR_NAME && t <= BROKER_ATTR_TURN_PASSWORD;
}

/* The codec already bounds-checks every attribute; here the values. */
static int check_attr(uint16_t type, const uint8_t *v, uint16_t len)
{
    switch (type) {
    case BROKER_ATTR_NAME:
        return broker_name_valid((const char *)v, len) ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_PUBLIC_KEY:
        return len == BROKER_KEY_SIZE ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_CHALLENGE:
        return len == BROKER_CHALLENGE_SIZE ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_SIGNATURE:
        return len == BROKER_SIG_SIZE ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_BROKER_ID:
        return len >= 1 && len <= BROKER_ID_MAX ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_TURN_USERNAME:
    case BROKER_ATTR_TURN_PASSWORD: {
        size_t max = type == BROKER_ATTR_TURN_USERNAME ? BROKER_TURN_USER_MAX : BROKER_TURN_PASS_MAX;
        if (len < 1 || len > max)
            return NTCP_EBADATTR;
        for (size_t i = 0; i < len; i++)
            if (v[i] <= 0x20 || v[i] >= 0x7f) /* printable, so it copies as a string */
                return NTCP_EBADATTR;
        return 0;
    }
    case BROKER_ATTR_PUBLIC_ADDR:
    case BROKER_ATTR_PUBLIC_UDP:
    case BROKER_ATTR_PRIVATE_ADDR:
    case BROKER_ATTR_TURN_SERVER:
        if (len < 4)
            return NTCP_EBADATTR;
        if (v[1] == 0x01)
            return len == 8 ? 0 : NTCP_EBADATTR;
        if (v[1] == 0x02)
            return len == 20 ? 0 : NTCP_EBADATTR;
        return NTCP_EFAMILY;
    case BROKER_ATTR_PROFILE:
        return len <= BROKER_PROFILE_MAX ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_SESSION_NONCE:
        return len == BROKER_NONCE_SIZE ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_UDP_KEY:
        return len == BROKER_UDP_KEY_SIZE ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_EXPIRY:
    case BROKER_ATTR_START_DELAY:
    case BROKER_ATTR_ROLE:
    case BROKER_ATTR_RTT:
    case BROKER_ATTR_TIMEOUT:
    case BROKER_ATTR_DETAIL:
    case BROKER_ATTR_VERSION:
    case BROKER_ATTR_ISN:
    case BROKER_ATTR_SPOOF:
        return len == 4 ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_TICKET:
        return len >= 1 && len <= BROKER_TICKET_MAX ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_RESUME_KEY:
        return len == BROKER_RESUME_KEY_SIZE ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_PROOF:
        return len == BROKER_PROOF_SIZE ? 0 : NTCP_EBADATTR;
    case BROKER_ATTR_TRANSPORT:
        /* Any value validates: a broker answers a transport it does not
         * offer with 400 and keeps the session, so a later version can add
         * one without ending older peers' sessions. */
        return len == 4 ? 0 : NTCP_EBADATTR;
    }
    return 0;
}

int broker_validate(const stun_msg *m, uint16_t *unknown, size_t max, size_t *nunknown)
{
    size_t nprivate = 0;
    *nunknown = 0;
    for (size_t i = 0; i < m->nattrs; i++) {
        const stun_attr *a = &m->attrs[i];
        if (!is_broker_attr(a->type))
            continue;
        int rc = check_attr(a->type, stun_attr_value(m, a), a->len);
        if (rc < 0)
            return rc;
        if (a->type == BROKER_ATTR_PRIVATE_ADDR && ++nprivate > BROKER_MAX_PRIVATE)
            return NTCP_ERANGE;
    }
    /* The codec's unknown list holds our types too: drop them. */
    for (size_t i = 0; i < m->nunknown; i++) {
        if (is_broker_attr(m->unknown[i]))
            continue;
        if (*nunknown < max)
            unknown[(*nunknown)++] = m->unknown[i];
    }
    return 0;
}

int broker_get_name(const stun_msg *m, char out[BROKER_NAME_MAX + 1])
{
    const stun_attr *a = stun_find(m, BROKER_ATTR_NAME);
    if (!a)
        return NTCP_ENOTFOUND;
    if (!broker_name_valid((const char *)stun_attr_value(m, a), a->len))
        return NTCP_EBADATTR;
    memcpy(out, stun_attr_value(m, a), a->len);
    out[a->len] = '\0';
    return 0;
}

int broker_get_fixed(const stun_msg *m, uint16_t type, void *out, size_t len)
{
    const stun_attr *a = stun_find(m, type);
    if (!a)
        return NTCP_ENOTFOUND;
    if (a->len != len)
        return NTCP_EBADATTR;
    memcpy(out, stun_attr_value(m, a), len);
    return 0;
}

int broker_attr_addr(const stun_msg *m, const stun_attr *a, struct sockaddr_storage *out)
{
    const uint8_t *v = stun_attr_value(m, a);
    memset(out, 0, sizeof *out);
    if (a->len < 4)
        return NTCP_EBADATTR;
    uint16_t port = (uint16_t)((v[2] << 8) | v[3]);
    if (v[1] == 0x01 && a->len == 8) {
        struct sockaddr_in *sin = (struct sockaddr_in *)out;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        memcpy(&sin->sin_addr, v + 4, 4);
        return 0;
    }
    if (v[1] == 0x02 && a->len == 20) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        memcpy(&sin6->sin6_addr, v + 4, 16);
        return 0;
    }
    return NTCP_EFAMILY;
}

int broker_get_addr(const stun_msg *m, uint16_t type, struct sockaddr_storage *out)
{
    const stun_attr *a = stun_find(m, type);
    if (!a)
        return NTCP_ENOTFOUND;
    return broker_attr_addr(m, a, out);
}

int broker_get_error(const stun_msg *m, int *code, const char **reason, size_t *reason_len)
{
    int rc = stun_get_error(m, code, reason, reason_len);
    if (rc < 0)
        return rc;
    uint32_t detail;
    if (stun_get_u32(m, BROKER_ATTR_DETAIL, &detail) == 0 && detail >= 700 && detail <= 999)
        *code = (int)detail;
    return 0;
}

void broker_addr_from_sa(broker_addr *a, const struct sockaddr *sa)
{
    memset(a, 0, sizeof *a);
    if (!sa)
        return;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        a->family = 4;
        a->port = ntohs(sin->sin_port);
        memcpy(a->ip, &sin->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        a->family = 6;
        a->port = ntohs(sin6->sin6_port);
        memcpy(a->ip, &sin6->sin6_addr, 16);
    }
}

void broker_addr_to_sa(const broker_addr *a, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    if (a->family == 4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)out;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(a->port);
        memcpy(&sin->sin_addr, a->ip, 4);
    } else if (a->family == 6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(a->port);
        memcpy(&sin6->sin6_addr, a->ip, 16);
    }
}

void broker_build_baddr(stun_builder *b, uint16_t type, const broker_addr *a)
{
    if (a->family == 0)
        return;
    struct sockaddr_storage ss;
    broker_addr_to_sa(a, &ss);
    stun_build_addr(b, type, (const struct sockaddr *)&ss);
}

void broker_build_error(stun_builder *b, int code, const char *reason)
{
    if (code >= 700) {
        stun_build_error(b, code == BROKER_ERR_UNKNOWN_USER ? 404 : 400, reason);
        stun_build_u32(b, BROKER_ATTR_DETAIL, (uint32_t)code);
    } else {
        stun_build_error(b, code, reason);
    }
}

void broker_build_peer_info(stun_builder *b, const broker_peer_info *p)
{
    stun_build_attr(b, BROKER_ATTR_NAME, p->name, strlen(p->name));
    if (p->has_public_key)
        stun_build_attr(b, BROKER_ATTR_PUBLIC_KEY, p->public_key, BROKER_KEY_SIZE);
    if (p->public_addr.ss_family)
        stun_build_addr(b, BROKER_ATTR_PUBLIC_ADDR, (const struct sockaddr *)&p->public_addr);
    if (p->public_udp.ss_family)
        stun_build_addr(b, BROKER_ATTR_PUBLIC_UDP, (const struct sockaddr *)&p->public_udp);
    for (size_t i = 0; i < p->nprivate && i < BROKER_MAX_PRIVATE; i++)
        stun_build_addr(b, BROKER_ATTR_PRIVATE_ADDR, (const struct sockaddr *)&p->private_addr[i]);
    if (p->profile_len)
        stun_build_attr(b, BROKER_ATTR_PROFILE, p->profile, p->profile_len);
}

int broker_parse_peer_info(const stun_msg *m, broker_peer_info *p)
{
    memset(p, 0, sizeof *p);
    int rc = broker_get_name(m, p->name);
    if (rc < 0)
        return rc;
    rc = broker_get_fixed(m, BROKER_ATTR_PUBLIC_KEY, p->public_key, BROKER_KEY_SIZE);
    if (rc == 0)
        p->has_public_key = true;
    else if (rc != NTCP_ENOTFOUND)
        return rc;
    for (size_t i = 0; i < m->nattrs; i++) {
        const stun_attr *a = &m->attrs[i];
        switch (a->type) {
        case BROKER_ATTR_PUBLIC_ADDR:
            rc = broker_attr_addr(m, a, &p->public_addr);
            break;
        case BROKER_ATTR_PUBLIC_UDP:
            rc = broker_attr_addr(m, a, &p->public_udp);
            break;
        case BROKER_ATTR_PRIVATE_ADDR:
            if (p->nprivate >= BROKER_MAX_PRIVATE)
                return NTCP_ERANGE;
            rc = broker_attr_addr(m, a, &p->private_addr[p->nprivate++]);
            break;
        case BROKER_ATTR_PROFILE:
            p->profile = stun_attr_value(m, a);
            p->profile_len = a->len;
            rc = 0;
            break;
        case BROKER_ATTR_TRANSPORT:
            if (a->len != 4)
                return NTCP_EBADATTR;
            p->transport = rd32(stun_attr_value(m, a));
            rc = p->transport <= BROKER_TRANSPORT_UDP ? 0 : NTCP_EBADATTR;
            break;
        default:
            rc = 0;
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

int broker_parse_go(const stun_msg *m, broker_go *g)
{
    memset(g, 0, sizeof *g);
    int rc = broker_parse_peer_info(m, &g->peer);
    if (rc < 0)
        return rc;
    if (!g->peer.has_public_key)
        return NTCP_ENOTFOUND;
    rc = broker_get_fixed(m, BROKER_ATTR_SESSION_NONCE, g->nonce, BROKER_NONCE_SIZE);
    if (rc < 0)
        return rc;
    rc = stun_get_u32(m, BROKER_ATTR_START_DELAY, &g->start_delay_ms);
    if (rc < 0)
        return rc;
    rc = stun_get_u32(m, BROKER_ATTR_ROLE, &g->role);
    if (rc < 0)
        return rc;
    if (g->role > BROKER_ROLE_TARGET)
        return NTCP_EBADATTR;
    g->transport = g->peer.transport;
    g->peer.transport = 0;
    const stun_attr *a = stun_find(m, BROKER_ATTR_RTT);
    if (a && a->len == 4)
        g->rtt_us = rd32(stun_attr_value(m, a));
    /* The relay: all three or none (half a set is useless: ignored). */
    const stun_attr *u = stun_find(m, BROKER_ATTR_TURN_USERNAME);
    const stun_attr *pw = stun_find(m, BROKER_ATTR_TURN_PASSWORD);
    if (u && pw && u->len <= BROKER_TURN_USER_MAX && pw->len <= BROKER_TURN_PASS_MAX &&
        broker_get_addr(m, BROKER_ATTR_TURN_SERVER, &g->turn_server) == 0) {
        memcpy(g->turn_user, stun_attr_value(m, u), u->len);
        g->turn_user[u->len] = 0;
        memcpy(g->turn_pass, stun_attr_value(m, pw), pw->len);
        g->turn_pass[pw->len] = 0;
    } else {
        memset(&g->turn_server, 0, sizeof g->turn_server);
    }
    return 0;
}

int broker_parse_relay_addr(const stun_msg *m, broker_relay_addr *r)
{
    memset(r, 0, sizeof *r);
    int rc = broker_get_fixed(m, BROKER_ATTR_SESSION_NONCE, r->nonce, BROKER_NONCE_SIZE);
    if (rc < 0)
        return rc;
    if (broker_get_addr(m, BROKER_ATTR_TURN_SERVER, &r->relayed) < 0)
        memset(&r->relayed, 0, sizeof r->relayed);
    int code;
    const char *why;
    size_t len;
    if (stun_get_error(m, &code, &why, &len) == 0) {
        size_t k = 0;
        for (size_t i = 0; i < len && k < BROKER_RELAY_WHY_MAX; i++)
            if (why[i] >= 0x20 && why[i] < 0x7f)
                r->why[k++] = why[i];
        r->why[k] = 0;
    }
    return 0;
}

void broker_build_relay_addr(stun_builder *b, const broker_relay_addr *r)
{
    stun_build_attr(b, BROKER_ATTR_SESSION_NONCE, r->nonce, BROKER_NONCE_SIZE);
    if (r->relayed.ss_family == AF_INET || r->relayed.ss_family == AF_INET6) {
        stun_build_addr(b, BROKER_ATTR_TURN_SERVER, (const struct sockaddr *)&r->relayed);
    } else {
        stun_build_error(b, 503, r->why); /* no relay there, and why */
    }
}

int broker_transcript(uint8_t *out, size_t cap, const char *broker_id, size_t idlen,
                      const uint8_t challenge[BROKER_CHALLENGE_SIZE], const char *name,
                      size_t namelen, const uint8_t key[BROKER_KEY_SIZE])
{
    size_t label = sizeof BROKER_TRANSCRIPT_LABEL - 1;
    if (idlen == 0 || idlen > BROKER_ID_MAX || !broker_name_valid(name, namelen))
        return NTCP_EINVAL;
    size_t need = label + 2 + idlen + BROKER_CHALLENGE_SIZE + 1 + namelen + BROKER_KEY_SIZE;
    if (need > cap)
        return NTCP_ENOSPC;
    uint8_t *p = out;
    memcpy(p, BROKER_TRANSCRIPT_LABEL, label);
    p += label;
    *p++ = (uint8_t)(idlen >> 8);
    *p++ = (uint8_t)idlen;
    memcpy(p, broker_id, idlen);
    p += idlen;
    memcpy(p, challenge, BROKER_CHALLENGE_SIZE);
    p += BROKER_CHALLENGE_SIZE;
    *p++ = (uint8_t)namelen;
    memcpy(p, name, namelen);
    p += namelen;
    memcpy(p, key, BROKER_KEY_SIZE);
    p += BROKER_KEY_SIZE;
    return (int)(p - out);
}

int broker_resume_proof(uint8_t out[BROKER_PROOF_SIZE],
                        const uint8_t resume_key[BROKER_RESUME_KEY_SIZE], const char *broker_id,
                        size_t idlen, const uint8_t challenge[BROKER_CHALLENGE_SIZE],
                        const char *name, size_t namelen, const uint8_t key[BROKER_KEY_SIZE])
{
    uint8_t buf[sizeof BROKER_RESUME_LABEL - 1 + BROKER_TRANSCRIPT_MAX];
    size_t label = sizeof BROKER_RESUME_LABEL - 1;
    memcpy(buf, BROKER_RESUME_LABEL, label);
    int n = broker_transcript(buf + label, sizeof buf - label, broker_id, idlen, challenge, name,
                              namelen, key);
    if (n < 0)
        return NTCP_EINVAL;
    unsigned int olen = 0;
    if (!HMAC(EVP_sha256(), resume_key, BROKER_RESUME_KEY_SIZE, buf, label + (size_t)n, out, &olen) ||
        olen != BROKER_PROOF_SIZE)
        return NTCP_EINVAL;
    return 0;
}
