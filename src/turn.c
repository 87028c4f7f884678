/*
 * turn.c: TURN requests, responses and long-term credentials (RFC 8656,
 * RFC 6062) over the STUN codec, and the TURN REST credentials coturn
 * checks. No I/O, no allocation.
 */
#include "turn.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>

int turn_auth_init(turn_auth *a, const char *user, const char *pass)
{
    if (!a || !user || !pass)
        return NTCP_EINVAL;
    memset(a, 0, sizeof *a);
    size_t ul = strlen(user), pl = strlen(pass);
    if (ul == 0 || ul >= sizeof a->user || pl >= sizeof a->pass)
        return NTCP_EINVAL;
    memcpy(a->user, user, ul + 1);
    memcpy(a->pass, pass, pl + 1);
    return 0;
}

int turn_build(uint8_t *buf, size_t cap, const turn_req *req, const turn_auth *auth,
               const uint8_t tid[STUN_TID_SIZE])
{
    if (!req || !tid || (req->cls != STUN_REQUEST && req->cls != STUN_INDICATION))
        return NTCP_EINVAL;
    stun_builder b;
    stun_build_init(&b, buf, cap, req->method, req->cls, tid, false);
    if (req->transport) {
        uint8_t v[4] = {req->transport, 0, 0, 0}; /* protocol, 24 bits RFFU */
        stun_build_attr(&b, TURN_ATTR_REQUESTED_TRANSPORT, v, sizeof v);
    }
    if (req->has_lifetime)
        stun_build_u32(&b, TURN_ATTR_LIFETIME, req->lifetime);
    if (req->peer)
        stun_build_addr(&b, TURN_ATTR_XOR_PEER_ADDRESS, req->peer);
    if (req->has_connection_id)
        stun_build_u32(&b, TURN_ATTR_CONNECTION_ID, req->connection_id);
    if (req->data)
        stun_build_attr(&b, TURN_ATTR_DATA, req->data, req->data_len);
    /* Indications are never authenticated (RFC 8656 10.1: Send carries none). */
    if (auth && auth->have_key && req->cls == STUN_REQUEST) {
        stun_build_string(&b, STUN_ATTR_USERNAME, auth->user);
        stun_build_string(&b, STUN_ATTR_REALM, auth->realm);
        stun_build_string(&b, STUN_ATTR_NONCE, auth->nonce);
        stun_build_integrity(&b, auth->key, sizeof auth->key);
    }
    stun_build_fingerprint(&b);
    return stun_build_finish(&b, NULL);
}

static int get_opt_addr(const stun_msg *m, uint16_t type, struct sockaddr_storage *out, bool *has)
{
    int rc = stun_get_addr(m, type, out);
    if (rc == NTCP_ENOTFOUND)
        return 0;
    if (rc < 0)
        return rc;
    *has = true;
    return 0;
}

int turn_read(turn_msg *t, const uint8_t *buf, size_t len, const turn_auth *auth)
{
    /* stun_msg is large (its attribute index): one per call is fine. */
    stun_msg m;
    memset(t, 0, sizeof *t);
    int rc = stun_parse(&m, buf, len);
    if (rc < 0)
        return rc;
    t->method = m.method;
    t->cls = m.cls;
    memcpy(t->tid, m.tid, STUN_TID_SIZE);
    if (m.rfc3489)
        return NTCP_EPROTO; /* TURN needs the magic cookie */

    if (m.integrity >= 0 && auth && auth->have_key) {
        rc = stun_check_integrity(&m, auth->key, sizeof auth->key, false);
        if (rc < 0)
            return NTCP_EINTEGRITY;
        t->integrity = true;
    }
    if (m.cls == STUN_ERROR) {
        const char *r = NULL;
        size_t rl = 0;
        if (stun_get_error(&m, &t->code, &r, &rl) < 0)
            return NTCP_EPROTO; /* an error response must say which */
        size_t k = 0;
        for (size_t i = 0; i < rl && k + 1 < sizeof t->reason; i++)
            if (r[i] >= 0x20 && r[i] < 0x7f)
                t->reason[k++] = r[i];
        t->reason[k] = 0;
    }
    if ((rc = get_opt_addr(&m, TURN_ATTR_XOR_RELAYED_ADDRESS, &t->relayed, &t->has_relayed)) < 0 ||
        (rc = get_opt_addr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &t->mapped, &t->has_mapped)) < 0 ||
        (rc = get_opt_addr(&m, TURN_ATTR_XOR_PEER_ADDRESS, &t->peer, &t->has_peer)) < 0)
        return rc;
    if (stun_get_u32(&m, TURN_ATTR_LIFETIME, &t->lifetime) == 0)
        t->has_lifetime = true;
    if (stun_get_u32(&m, TURN_ATTR_CONNECTION_ID, &t->connection_id) == 0)
        t->has_connection_id = true;
    const stun_attr *d = stun_find(&m, TURN_ATTR_DATA);
    if (d) {
        t->data = stun_attr_value(&m, d);
        t->data_len = d->len;
    }
    if (stun_get_string(&m, STUN_ATTR_REALM, &t->realm, &t->realm_len) < 0)
        t->realm = NULL;
    if (stun_get_string(&m, STUN_ATTR_NONCE, &t->nonce, &t->nonce_len) < 0)
        t->nonce = NULL;
    return 0;
}

/* A REALM or NONCE value we will send back: printable, no NUL, fits. */
static bool usable_string(const char *s, size_t len, size_t cap)
{
    if (!s || len == 0 || len >= cap)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] == 0)
            return false;
    return true;
}

int turn_auth_challenge(turn_auth *a, const turn_msg *t)
{
    if (t->cls != STUN_ERROR)
        return NTCP_EINVAL;
    if (t->code == TURN_ERR_WRONG_CREDENTIALS)
        return NTCP_EREFUSED;
    if (t->code != TURN_ERR_UNAUTHORIZED && t->code != TURN_ERR_STALE_NONCE)
        return NTCP_EINVAL;
    if (!usable_string(t->nonce, t->nonce_len, sizeof a->nonce))
        return NTCP_EPROTO;
    /* 438 may omit REALM (the realm stays); 401 must carry it. */
    bool has_realm = usable_string(t->realm, t->realm_len, sizeof a->realm);
    if (!has_realm && (t->code == TURN_ERR_UNAUTHORIZED || !a->have_key))
        return NTCP_EPROTO;
    bool same_realm = has_realm && a->have_key && strlen(a->realm) == t->realm_len &&
                      memcmp(a->realm, t->realm, t->realm_len) == 0;
    /* A 401 to a request that carried our integrity (we had a key for this
     * realm) means the server does not accept the password: do not loop. */
    if (t->code == TURN_ERR_UNAUTHORIZED && a->have_key && same_realm)
        return NTCP_EREFUSED;
    if (has_realm) {
        memcpy(a->realm, t->realm, t->realm_len);
        a->realm[t->realm_len] = 0;
    }
    memcpy(a->nonce, t->nonce, t->nonce_len);
    a->nonce[t->nonce_len] = 0;
    int rc = stun_long_term_key(a->user, strlen(a->user), a->realm, strlen(a->realm), a->pass,
                                strlen(a->pass), a->key);
    if (rc < 0)
        return rc;
    a->have_key = true;
    a->challenges++;
    return 0;
}

const char *turn_error_name(int code)
{
    switch (code) {
    case 300: return "Try Alternate";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 420: return "Unknown Attribute";
    case 437: return "Allocation Mismatch";
    case 438: return "Stale Nonce";
    case 440: return "Address Family not Supported";
    case 441: return "Wrong Credentials";
    case 442: return "Unsupported Transport Protocol";
    case 443: return "Peer Address Family Mismatch";
    case 446: return "Connection Already Exists";
    case 447: return "Connection Timeout or Failure";
    case 486: return "Allocation Quota Reached";
    case 500: return "Server Error";
    case 508: return "Insufficient Capacity";
    }
    return "error";
}

int turn_rest_credentials(const void *secret, size_t secret_len, const char *name,
                          uint64_t expiry, char *user, size_t user_cap, char *pass,
                          size_t pass_cap)
{
    if (!secret || secret_len == 0 || !name || !*name || !user || !pass)
        return NTCP_EINVAL;
    for (const char *p = name; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f || *p == ':')
            return NTCP_EINVAL;
    int n = snprintf(user, user_cap, "%llu:%s", (unsigned long long)expiry, name);
    if (n < 0 || (size_t)n >= user_cap || (size_t)n > 513)
        return NTCP_ENOSPC;
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha1(), secret, (int)secret_len, (const uint8_t *)user, (size_t)n, mac, &maclen))
        return NTCP_EINVAL;
    /* base64 of 20 bytes: 28 characters and the NUL. */
    if (pass_cap < 4 * ((maclen + 2) / 3) + 1)
        return NTCP_ENOSPC;
    EVP_EncodeBlock((unsigned char *)pass, mac, (int)maclen);
    return 0;
}

int turn_rest_expiry(const char *user, uint64_t *expiry)
{
    if (!user || !expiry)
        return NTCP_EINVAL;
    uint64_t v = 0;
    const char *p = user;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10)
            return NTCP_EINVAL;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (p == user || (*p != ':' && *p != 0))
        return NTCP_EINVAL;
    *expiry = v;
    return 0;
}
