/*
 * verify.c: the key proof on a freshly punched TCP socket (docs/verify.md):
 * the HELLO/PROOF codec, one end's I/O-free state machine, and its driver on
 * a libuv loop, so that only a socket whose peer proved its key is handed on.
 */
#include "verify.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "ntcp.h"

/* The SESSION-ID's derivation did not change in version 2: its label
 * keeps its number (a version-1 peer then fails on VERSION, which says more
 * than "not our session"). */
#define SESSION_LABEL "NTCP-VERIFY-SESSION-1"
#define BINDING_LABEL VERIFY_BINDING_LABEL
#define LABEL_LEN (sizeof VERIFY_TRANSCRIPT_LABEL - 1)
#define BINDING_LABEL_LEN (sizeof BINDING_LABEL - 1)

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

int ntcp_verify_params_from_go(ntcp_verify_params *p, const broker_go *go)
{
    if (!p || !go || !go->peer.has_public_key)
        return NTCP_EINVAL;
    p->peer_name = go->peer.name;
    memcpy(p->peer_key, go->peer.public_key, BROKER_KEY_SIZE);
    memcpy(p->nonce, go->nonce, BROKER_NONCE_SIZE);
    p->role = go->role;
    return 0;
}

/* ---- codec ---- */

/* The attributes each method must carry, each exactly once. */
static const uint16_t HELLO_ATTRS[] = {VERIFY_ATTR_VERSION, VERIFY_ATTR_ROLE,
                                       VERIFY_ATTR_SESSION_ID, VERIFY_ATTR_NAME,
                                       VERIFY_ATTR_PUBLIC_KEY, VERIFY_ATTR_RANDOM};
static const uint16_t PROOF_ATTRS[] = {VERIFY_ATTR_SIGNATURE};
static const uint16_t REFUSE_ATTRS[] = {STUN_ATTR_ERROR_CODE};

static int attr_index(const uint16_t *set, size_t n, uint16_t type)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] == type)
            return (int)i;
    return -1;
}

int ntcp_verify_parse(ntcp_verify_msg *out, const uint8_t *buf, size_t len, uint16_t *unknown_type)
{
    if (unknown_type)
        *unknown_type = 0;
    memset(out, 0, sizeof *out);
    if (len > VERIFY_MAX_MESSAGE)
        return NTCP_ERANGE;
    stun_msg m;
    int rc = stun_parse(&m, buf, len);
    if (rc < 0)
        return rc;
    /* RFC 3489 messages have no place here: both ends are ntcp. */
    if (m.rfc3489 || m.cls != STUN_INDICATION)
        return NTCP_EPROTO;
    const uint16_t *set;
    size_t nset;
    switch (m.method) {
    case VERIFY_HELLO: set = HELLO_ATTRS; nset = sizeof HELLO_ATTRS / sizeof *HELLO_ATTRS; break;
    case VERIFY_PROOF: set = PROOF_ATTRS; nset = 1; break;
    case VERIFY_REFUSE: set = REFUSE_ATTRS; nset = 1; break;
    default: return NTCP_EPROTO;
    }
    out->method = m.method;
    /* Each required attribute once; a duplicate is refused rather than
     * resolved, so that two readers of one message cannot disagree. */
    const stun_attr *found[6] = {0};
    for (size_t i = 0; i < m.nattrs; i++) {
        const stun_attr *a = &m.attrs[i];
        int k = attr_index(set, nset, a->type);
        if (k < 0) {
            if (a->type < 0x8000) {
                if (unknown_type)
                    *unknown_type = a->type;
                return NTCP_EBADATTR;
            }
            continue; /* comprehension-optional: SOFTWARE, FINGERPRINT, ... */
        }
        if (found[k])
            return NTCP_EBADATTR;
        found[k] = a;
    }
    for (size_t k = 0; k < nset; k++)
        if (!found[k])
            return NTCP_EBADATTR;

    if (m.method == VERIFY_HELLO) {
        const stun_attr *ver = found[0], *role = found[1], *sid = found[2], *name = found[3],
                        *key = found[4], *rnd = found[5];
        if (ver->len != 4 || role->len != 4 || sid->len != VERIFY_SESSION_ID_SIZE ||
            key->len != BROKER_KEY_SIZE || rnd->len != VERIFY_RANDOM_SIZE)
            return NTCP_EBADATTR;
        out->version = rd32(stun_attr_value(&m, ver));
        out->role = rd32(stun_attr_value(&m, role));
        if (out->version == 0 || out->role > BROKER_ROLE_TARGET)
            return NTCP_EBADATTR;
        out->name = (const char *)stun_attr_value(&m, name);
        out->name_len = name->len;
        if (!broker_name_valid(out->name, out->name_len))
            return NTCP_EBADATTR;
        out->session_id = stun_attr_value(&m, sid);
        out->public_key = stun_attr_value(&m, key);
        out->random = stun_attr_value(&m, rnd);
    } else if (m.method == VERIFY_PROOF) {
        if (found[0]->len != NTCP_ED25519_SIG)
            return NTCP_EBADATTR;
        out->signature = stun_attr_value(&m, found[0]);
    } else {
        rc = stun_get_error(&m, &out->code, &out->reason, &out->reason_len);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int ntcp_verify_session_id(const uint8_t nonce[BROKER_NONCE_SIZE],
                           uint8_t out[VERIFY_SESSION_ID_SIZE])
{
    uint8_t in[sizeof SESSION_LABEL - 1 + BROKER_NONCE_SIZE], md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    memcpy(in, SESSION_LABEL, sizeof SESSION_LABEL - 1);
    memcpy(in + sizeof SESSION_LABEL - 1, nonce, BROKER_NONCE_SIZE);
    if (EVP_Digest(in, sizeof in, md, &mdlen, EVP_sha256(), NULL) != 1)
        return NTCP_ENOMEM;
    memcpy(out, md, VERIFY_SESSION_ID_SIZE);
    return 0;
}

/* u8 len || name || key, for both ends in role order: no two (name, key)
 * sequences encode alike. */
static uint8_t *put_identities(uint8_t *p, const char *req_name, size_t rl,
                               const uint8_t req_key[BROKER_KEY_SIZE], const char *tgt_name,
                               size_t tl, const uint8_t tgt_key[BROKER_KEY_SIZE])
{
    *p++ = (uint8_t)rl;
    memcpy(p, req_name, rl);
    p += rl;
    memcpy(p, req_key, BROKER_KEY_SIZE);
    p += BROKER_KEY_SIZE;
    *p++ = (uint8_t)tl;
    memcpy(p, tgt_name, tl);
    p += tl;
    memcpy(p, tgt_key, BROKER_KEY_SIZE);
    return p + BROKER_KEY_SIZE;
}

static bool names_valid(const char *req_name, const char *tgt_name, size_t *rl, size_t *tl)
{
    if (!req_name || !tgt_name)
        return false;
    *rl = strlen(req_name);
    *tl = strlen(tgt_name);
    return broker_name_valid(req_name, *rl) && broker_name_valid(tgt_name, *tl);
}

int ntcp_verify_transcript(uint8_t *out, size_t cap, uint32_t signer_role,
                           uint32_t signer_version, const uint8_t nonce[BROKER_NONCE_SIZE],
                           const uint8_t signer_random[VERIFY_RANDOM_SIZE], const char *req_name,
                           const uint8_t req_key[BROKER_KEY_SIZE], const char *tgt_name,
                           const uint8_t tgt_key[BROKER_KEY_SIZE])
{
    size_t rl, tl;
    if (signer_role > BROKER_ROLE_TARGET || !names_valid(req_name, tgt_name, &rl, &tl))
        return NTCP_EINVAL;
    size_t need = LABEL_LEN + 1 + 4 + BROKER_NONCE_SIZE + VERIFY_RANDOM_SIZE + 1 + rl +
                  BROKER_KEY_SIZE + 1 + tl + BROKER_KEY_SIZE;
    if (need > cap)
        return NTCP_ENOSPC;
    uint8_t *p = out;
    memcpy(p, VERIFY_TRANSCRIPT_LABEL, LABEL_LEN);
    p += LABEL_LEN;
    /* The role: a signature cannot be passed off as the other end's, nor
     * reflected to its maker even when both ends share a key. */
    *p++ = (uint8_t)signer_role;
    /* The version as announced: a HELLO rewritten to announce less breaks
     * the signature of the end that sent it. */
    wr32(p, signer_version);
    p += 4;
    memcpy(p, nonce, BROKER_NONCE_SIZE);
    p += BROKER_NONCE_SIZE;
    memcpy(p, signer_random, VERIFY_RANDOM_SIZE);
    p += VERIFY_RANDOM_SIZE;
    p = put_identities(p, req_name, rl, req_key, tgt_name, tl, tgt_key);
    return (int)(p - out);
}

int ntcp_verify_binding(uint8_t out[VERIFY_BINDING_SIZE], uint32_t req_version,
                        uint32_t tgt_version, const uint8_t nonce[BROKER_NONCE_SIZE],
                        const uint8_t req_random[VERIFY_RANDOM_SIZE],
                        const uint8_t tgt_random[VERIFY_RANDOM_SIZE], const char *req_name,
                        const uint8_t req_key[BROKER_KEY_SIZE], const char *tgt_name,
                        const uint8_t tgt_key[BROKER_KEY_SIZE])
{
    size_t rl, tl;
    if (!names_valid(req_name, tgt_name, &rl, &tl))
        return NTCP_EINVAL;
    uint8_t in[BINDING_LABEL_LEN + 8 + BROKER_NONCE_SIZE + 2 * VERIFY_RANDOM_SIZE +
               2 * (1 + BROKER_NAME_MAX + BROKER_KEY_SIZE)];
    uint8_t *p = in, md[EVP_MAX_MD_SIZE];
    memcpy(p, BINDING_LABEL, BINDING_LABEL_LEN);
    p += BINDING_LABEL_LEN;
    wr32(p, req_version);
    wr32(p + 4, tgt_version);
    p += 8;
    memcpy(p, nonce, BROKER_NONCE_SIZE);
    p += BROKER_NONCE_SIZE;
    memcpy(p, req_random, VERIFY_RANDOM_SIZE);
    p += VERIFY_RANDOM_SIZE;
    memcpy(p, tgt_random, VERIFY_RANDOM_SIZE);
    p += VERIFY_RANDOM_SIZE;
    p = put_identities(p, req_name, rl, req_key, tgt_name, tl, tgt_key);
    unsigned mdlen = 0;
    if (EVP_Digest(in, (size_t)(p - in), md, &mdlen, EVP_sha256(), NULL) != 1)
        return NTCP_ENOMEM;
    memcpy(out, md, VERIFY_BINDING_SIZE);
    return 0;
}

static int finish_build(stun_builder *b)
{
    return stun_build_finish(b, NULL);
}

int ntcp_verify_build_hello(uint8_t *buf, size_t cap, uint32_t role,
                            const uint8_t session_id[VERIFY_SESSION_ID_SIZE], const char *name,
                            const uint8_t key[BROKER_KEY_SIZE],
                            const uint8_t random[VERIFY_RANDOM_SIZE])
{
    uint8_t tid[STUN_TID_SIZE];
    if (stun_new_tid(tid) < 0)
        return NTCP_ESYS;
    stun_builder b;
    stun_build_init(&b, buf, cap, VERIFY_HELLO, STUN_INDICATION, tid, false);
    stun_build_u32(&b, VERIFY_ATTR_VERSION, VERIFY_PROTO_VERSION);
    stun_build_u32(&b, VERIFY_ATTR_ROLE, role);
    stun_build_attr(&b, VERIFY_ATTR_SESSION_ID, session_id, VERIFY_SESSION_ID_SIZE);
    stun_build_attr(&b, VERIFY_ATTR_NAME, name, strlen(name));
    stun_build_attr(&b, VERIFY_ATTR_PUBLIC_KEY, key, BROKER_KEY_SIZE);
    stun_build_attr(&b, VERIFY_ATTR_RANDOM, random, VERIFY_RANDOM_SIZE);
    return finish_build(&b);
}

int ntcp_verify_build_proof(uint8_t *buf, size_t cap, const uint8_t sig[NTCP_ED25519_SIG])
{
    uint8_t tid[STUN_TID_SIZE];
    if (stun_new_tid(tid) < 0)
        return NTCP_ESYS;
    stun_builder b;
    stun_build_init(&b, buf, cap, VERIFY_PROOF, STUN_INDICATION, tid, false);
    stun_build_attr(&b, VERIFY_ATTR_SIGNATURE, sig, NTCP_ED25519_SIG);
    return finish_build(&b);
}

int ntcp_verify_build_refuse(uint8_t *buf, size_t cap, int code, const char *reason)
{
    uint8_t tid[STUN_TID_SIZE];
    if (stun_new_tid(tid) < 0)
        return NTCP_ESYS;
    stun_builder b;
    stun_build_init(&b, buf, cap, VERIFY_REFUSE, STUN_INDICATION, tid, false);
    stun_build_error(&b, code, reason);
    return finish_build(&b);
}

/* ---- core ---- */

static void queue(ntcp_verify_core *c, int n)
{
    if (n > 0)
        c->out_len += (size_t)n;
}

/* A failed core sends nothing more. Version 2 never sends a REFUSE: our
 * whole flight went out first, and the peer reads exactly a HELLO and a
 * PROOF, so anything after them is either never read (the peer failed too)
 * or reaches the peer's application as data (the peer is done). What is
 * still queued of our own flight is dropped: no proof for a peer we refused. */
void ntcp_verify_core_fail(ntcp_verify_core *c, int err, const char *why)
{
    if (c->state == VERIFY_DONE || c->state == VERIFY_FAILED)
        return;
    c->state = VERIFY_FAILED;
    c->err = err;
    c->why = why;
    c->out_off = c->out_len = 0;
}

static int refuse(ntcp_verify_core *c, int err, const char *why)
{
    ntcp_verify_core_fail(c, err, why);
    return c->state;
}

/* The transcript of the end of role `signer`, as we know its inputs. */
static int transcript(const ntcp_verify_core *c, uint32_t signer, uint32_t version,
                      const uint8_t random[VERIFY_RANDOM_SIZE], uint8_t *out, size_t cap)
{
    bool req = c->role == BROKER_ROLE_REQUESTER;
    return ntcp_verify_transcript(out, cap, signer, version, c->nonce, random,
                                  req ? c->name : c->peer_name, req ? c->pub : c->peer_key,
                                  req ? c->peer_name : c->name, req ? c->peer_key : c->pub);
}

int ntcp_verify_core_init(ntcp_verify_core *c, const ntcp_verify_params *p,
                          const uint8_t random[VERIFY_RANDOM_SIZE])
{
    memset(c, 0, sizeof *c);
    c->why = "";
    if (!p || !p->key || !p->name || !p->peer_name || p->role > BROKER_ROLE_TARGET)
        return NTCP_EINVAL;
    size_t nl = strlen(p->name), pl = strlen(p->peer_name);
    if (!broker_name_valid(p->name, nl) || !broker_name_valid(p->peer_name, pl))
        return NTCP_EINVAL;
    if (ntcp_identity_public(p->key, c->pub) < 0)
        return NTCP_EINVAL;
    c->key = p->key;
    c->role = p->role;
    memcpy(c->name, p->name, nl + 1);
    memcpy(c->peer_name, p->peer_name, pl + 1);
    memcpy(c->peer_key, p->peer_key, BROKER_KEY_SIZE);
    memcpy(c->nonce, p->nonce, BROKER_NONCE_SIZE);
    if (ntcp_verify_session_id(c->nonce, c->session_id) < 0)
        return NTCP_ENOMEM;
    if (random)
        memcpy(c->random, random, VERIFY_RANDOM_SIZE);
    else if (RAND_bytes(c->random, VERIFY_RANDOM_SIZE) != 1)
        return NTCP_ESYS;
    int n = ntcp_verify_build_hello(c->out, sizeof c->out, c->role, c->session_id, c->name,
                                    c->pub, c->random);
    if (n < 0)
        return n;
    queue(c, n);
    /* Everything our transcript holds is known before the peer says a
     * word: the PROOF leaves with the HELLO. */
    uint8_t t[VERIFY_TRANSCRIPT_MAX], sig[NTCP_ED25519_SIG];
    n = transcript(c, c->role, VERIFY_PROTO_VERSION, c->random, t, sizeof t);
    if (n < 0)
        return n;
    if (ntcp_identity_sign(c->key, t, (size_t)n, sig) < 0)
        return NTCP_ENOMEM;
    n = ntcp_verify_build_proof(c->out + c->out_len, sizeof c->out - c->out_len, sig);
    if (n < 0)
        return n;
    queue(c, n);
    c->state = VERIFY_WAIT_HELLO;
    return 0;
}

size_t ntcp_verify_core_want(const ntcp_verify_core *c)
{
    if (c->state != VERIFY_WAIT_HELLO && c->state != VERIFY_WAIT_PROOF)
        return 0;
    if (c->in_len < STUN_HEADER_SIZE)
        return STUN_HEADER_SIZE - c->in_len;
    /* The header was checked when it completed: the total fits in[]. */
    return STUN_HEADER_SIZE + rd16(c->in + 2) - c->in_len;
}

static int on_hello(ntcp_verify_core *c, const ntcp_verify_msg *m)
{
    if (m->role == c->role)
        return refuse(c, NTCP_EPROTO, "peer claims our role");
    /* Our own HELLO coming back: a TCP self-connect, or a reflector. */
    if (CRYPTO_memcmp(m->random, c->random, VERIFY_RANDOM_SIZE) == 0)
        return refuse(c, NTCP_EPROTO, "our own HELLO came back");
    /* A version-1 end would sign a transcript with our RANDOM in it, after
     * ours: there is nothing both could check (docs/verify.md 7). */
    if (m->version < VERIFY_PROTO_VERSION)
        return refuse(c, NTCP_EPROTO, "the peer speaks only version 1");
    if (CRYPTO_memcmp(m->session_id, c->session_id, VERIFY_SESSION_ID_SIZE) != 0)
        return refuse(c, NTCP_EINTEGRITY, "not our session");
    if (m->name_len != strlen(c->peer_name) || memcmp(m->name, c->peer_name, m->name_len) != 0)
        return refuse(c, NTCP_EINTEGRITY, "not the peer's name");
    if (CRYPTO_memcmp(m->public_key, c->peer_key, BROKER_KEY_SIZE) != 0)
        return refuse(c, NTCP_EINTEGRITY, "not the key the broker vouched for");
    /* A later peer announces more and still sends a version-2 flight; what
     * it announced is in its transcript. */
    c->peer_version = m->version;
    memcpy(c->peer_random, m->random, VERIFY_RANDOM_SIZE);
    c->state = VERIFY_WAIT_PROOF;
    return c->state;
}

static int on_proof(ntcp_verify_core *c, const ntcp_verify_msg *m)
{
    /* The peer's transcript, rebuilt from its HELLO: its role, VERSION and
     * RANDOM; the nonce, names and keys from our CONNECT-GO. The key that
     * checks it is CONNECT-GO's (the HELLO's was only compared). */
    uint32_t peer_role = c->role == BROKER_ROLE_REQUESTER ? BROKER_ROLE_TARGET
                                                          : BROKER_ROLE_REQUESTER;
    uint8_t t[VERIFY_TRANSCRIPT_MAX];
    int n = transcript(c, peer_role, c->peer_version, c->peer_random, t, sizeof t);
    if (n < 0)
        return refuse(c, n, "cannot build the transcript");
    if (ntcp_identity_verify(c->peer_key, t, (size_t)n, m->signature) != 0)
        return refuse(c, NTCP_EINTEGRITY, "the peer's signature does not verify");
    bool req = c->role == BROKER_ROLE_REQUESTER;
    int rc = ntcp_verify_binding(c->binding, req ? VERIFY_PROTO_VERSION : c->peer_version,
                                 req ? c->peer_version : VERIFY_PROTO_VERSION, c->nonce,
                                 req ? c->random : c->peer_random, req ? c->peer_random : c->random,
                                 req ? c->name : c->peer_name, req ? c->pub : c->peer_key,
                                 req ? c->peer_name : c->name, req ? c->peer_key : c->pub);
    if (rc < 0)
        return refuse(c, rc, "cannot hash");
    c->state = VERIFY_DONE;
    return c->state;
}

static int on_message(ntcp_verify_core *c)
{
    ntcp_verify_msg m;
    uint16_t unknown = 0;
    int rc = ntcp_verify_parse(&m, c->in, c->in_len, &unknown);
    c->in_len = 0;
    if (rc < 0)
        return refuse(c, NTCP_EPROTO, unknown ? "unknown attribute" : "malformed message");
    if (m.method == VERIFY_REFUSE) {
        ntcp_verify_core_fail(c, NTCP_EPROTO, "the peer refused");
        c->peer_code = m.code;
        return c->state;
    }
    if (c->state == VERIFY_WAIT_HELLO) {
        if (m.method != VERIFY_HELLO)
            return refuse(c, NTCP_EPROTO, "expected HELLO");
        return on_hello(c, &m);
    }
    if (m.method != VERIFY_PROOF)
        return refuse(c, NTCP_EPROTO, "expected PROOF");
    return on_proof(c, &m);
}

int ntcp_verify_core_input(ntcp_verify_core *c, const uint8_t *data, size_t len)
{
    while (len > 0 && (c->state == VERIFY_WAIT_HELLO || c->state == VERIFY_WAIT_PROOF)) {
        size_t take = ntcp_verify_core_want(c);
        if (take > len)
            take = len;
        memcpy(c->in + c->in_len, data, take);
        c->in_len += take;
        data += take;
        len -= take;
        if (c->in_len == STUN_HEADER_SIZE) {
            /* Judge the header before waiting for a body: garbage and
             * oversize are refused at once, not after a timeout. */
            if (!stun_looks_like(c->in, STUN_HEADER_SIZE))
                return refuse(c, NTCP_EPROTO, "not STUN");
            if (rd32(c->in + 4) != STUN_MAGIC_COOKIE)
                return refuse(c, NTCP_EPROTO, "no magic cookie");
            if (STUN_HEADER_SIZE + (size_t)rd16(c->in + 2) > VERIFY_MAX_MESSAGE)
                return refuse(c, NTCP_EPROTO, "message too long");
        }
        if (c->in_len >= STUN_HEADER_SIZE && ntcp_verify_core_want(c) == 0)
            on_message(c);
    }
    return c->state;
}

/* Everything queued, for a stream: the driver sends the flight in one go. */
static void pending(const ntcp_verify_core *c, const uint8_t **p, size_t *len)
{
    *p = c->out + c->out_off;
    *len = c->out_len - c->out_off;
}

void ntcp_verify_core_output(const ntcp_verify_core *c, const uint8_t **p, size_t *len)
{
    /* Up to the end of the message under way: messages follow each other
     * from out[0], each framed by its header's length. */
    size_t end = 0;
    while (end < c->out_len && end <= c->out_off)
        end += STUN_HEADER_SIZE + rd16(c->out + end + 2);
    if (end > c->out_len)
        end = c->out_len; /* never: only whole messages are queued */
    *p = c->out + c->out_off;
    *len = end > c->out_off ? end - c->out_off : 0;
}

void ntcp_verify_core_sent(ntcp_verify_core *c, size_t n)
{
    if (n > c->out_len - c->out_off)
        n = c->out_len - c->out_off;
    c->out_off += n;
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
}

/* ---- driver ---- */

struct ntcp_verify {
    uv_loop_t *loop;
    uv_poll_t poll;
    uv_timer_t timer;
    int fd;
    int fd_flags;  /* file status flags to restore on success */
    int handles;   /* open handles; the callback runs when the last closes */
    int events;    /* what the poll handle waits for now */
    bool finishing;
    ntcp_verify_cb cb;
    void *user;
    uint64_t started;
    int sys_errno;
    ntcp_verify_result res;
    ntcp_verify_core core;
};

static void on_closed(uv_handle_t *h)
{
    ntcp_verify *v = h->data;
    if (--v->handles > 0)
        return;
    v->cb(v, &v->res, v->user);
    free(v);
}

/* Sends what the core has queued, as far as the socket takes it now. */
static void flush(ntcp_verify *v)
{
    const uint8_t *p;
    size_t len;
    pending(&v->core, &p, &len);
    while (len > 0) {
        ssize_t n = send(v->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            ntcp_verify_core_sent(&v->core, (size_t)n);
            pending(&v->core, &p, &len);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN) {
                ntcp_verify_core_fail(&v->core, NTCP_ECLOSED, "the peer closed");
            } else {
                v->sys_errno = errno;
                ntcp_verify_core_fail(&v->core, NTCP_ESYS, "send failed");
            }
            /* Nothing more can go out. */
            ntcp_verify_core_sent(&v->core, len);
            return;
        }
    }
}

/* Reads at most what the core wants: never a byte past the peer's PROOF. */
static void drain(ntcp_verify *v)
{
    uint8_t buf[VERIFY_MAX_MESSAGE];
    size_t want;
    while ((want = ntcp_verify_core_want(&v->core)) > 0) {
        ssize_t n = recv(v->fd, buf, want, MSG_DONTWAIT);
        if (n > 0) {
            ntcp_verify_core_input(&v->core, buf, (size_t)n);
        } else if (n == 0) {
            ntcp_verify_core_fail(&v->core, NTCP_ECLOSED, "the peer closed");
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else if (errno == ECONNRESET || errno == ENOTCONN || errno == EPIPE) {
            ntcp_verify_core_fail(&v->core, NTCP_ECLOSED, "the peer reset the connection");
        } else {
            v->sys_errno = errno;
            ntcp_verify_core_fail(&v->core, NTCP_ESYS, "recv failed");
        }
    }
}

static void finish(ntcp_verify *v)
{
    if (v->finishing)
        return;
    v->finishing = true;
    ntcp_verify_core *c = &v->core;
    uv_poll_stop(&v->poll);
    uv_timer_stop(&v->timer);
    ntcp_verify_result *r = &v->res;
    r->err = c->state == VERIFY_DONE ? 0 : c->err;
    r->peer_code = c->peer_code;
    r->sys_errno = v->sys_errno;
    r->why = c->why;
    r->elapsed_ms = uv_now(v->loop) - v->started;
    if (r->err == 0) {
        memcpy(r->binding, c->binding, VERIFY_BINDING_SIZE);
        fcntl(v->fd, F_SETFL, v->fd_flags);
        r->fd = v->fd;
    } else {
        /* Nothing is sent after a failure (no REFUSE in version 2). Unread
         * input makes close() send a reset, which can destroy our flight
         * before the peer has read it: discard what has arrived (bounded),
         * so the peer sees a plain close. */
        uint8_t sink[4096];
        ssize_t n = recv(v->fd, sink, sizeof sink, MSG_DONTWAIT);
        (void)n;
        close(v->fd);
        r->fd = -1;
    }
    v->fd = -1;
    uv_close((uv_handle_t *)&v->poll, on_closed);
    uv_close((uv_handle_t *)&v->timer, on_closed);
}

static void on_poll(uv_poll_t *h, int status, int events);

/* After any progress: done, failed, or wait for what is needed next. */
static void step(ntcp_verify *v)
{
    ntcp_verify_core *c = &v->core;
    const uint8_t *p;
    size_t left;
    pending(c, &p, &left);
    if (c->state == VERIFY_FAILED || (c->state == VERIFY_DONE && left == 0)) {
        finish(v);
        return;
    }
    /* Once DONE we only finish sending our flight (a socket that took less
     * than 300 bytes at once); bytes after the peer's proof are the
     * application's, so we stop watching for input. */
    int events = (c->state == VERIFY_DONE ? 0 : UV_READABLE) | (left ? UV_WRITABLE : 0);
    if (events != v->events) {
        v->events = events;
        if (uv_poll_start(&v->poll, events, on_poll) < 0) {
            v->sys_errno = EBADF;
            ntcp_verify_core_fail(c, NTCP_ESYS, "cannot poll the socket");
            finish(v);
        }
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    ntcp_verify *v = h->data;
    if (v->finishing)
        return;
    if (status < 0) {
        /* libuv reports a socket error (a reset: POLLERR) as UV_EBADF. What
         * the peer sent before it (its flight, a REFUSE) is still readable. */
        drain(v);
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(v->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            err = errno;
        if (err == ECONNRESET || err == EPIPE || err == ENOTCONN || err == 0) {
            ntcp_verify_core_fail(&v->core, NTCP_ECLOSED, "the peer reset the connection");
        } else {
            v->sys_errno = err;
            ntcp_verify_core_fail(&v->core, NTCP_ESYS, "socket error");
        }
    } else {
        /* Our flight first: it never waits for the peer's. */
        if (events & UV_WRITABLE)
            flush(v);
        if (events & UV_READABLE)
            drain(v);
    }
    step(v);
}

static void on_timeout(uv_timer_t *t)
{
    ntcp_verify *v = t->data;
    ntcp_verify_core_fail(&v->core, NTCP_ETIMEDOUT, "timed out");
    step(v);
}

int ntcp_verify_start(uv_loop_t *loop, int fd, const ntcp_verify_params *p, ntcp_verify_cb cb,
                      void *user, ntcp_verify **out)
{
    if (out)
        *out = NULL;
    if (!loop || fd < 0 || !p || !cb)
        return NTCP_EINVAL;
    ntcp_verify *v = calloc(1, sizeof *v);
    if (!v)
        return NTCP_ENOMEM;
    int rc = ntcp_verify_core_init(&v->core, p, NULL);
    if (rc < 0) {
        free(v);
        return rc;
    }
    v->fd_flags = fcntl(fd, F_GETFL);
    if (v->fd_flags < 0 || fcntl(fd, F_SETFL, v->fd_flags | O_NONBLOCK) < 0) {
        free(v);
        return NTCP_ESYS;
    }
    if (uv_poll_init_socket(loop, &v->poll, fd) < 0) {
        fcntl(fd, F_SETFL, v->fd_flags);
        free(v);
        return NTCP_ESYS;
    }
    v->loop = loop;
    v->fd = fd;
    v->cb = cb;
    v->user = user;
    v->handles = 2;
    v->poll.data = v;
    v->timer.data = v;
    v->res.fd = -1;
    uv_timer_init(loop, &v->timer);
    uv_update_time(loop);
    v->started = uv_now(loop);
    uv_timer_start(&v->timer, on_timeout, p->timeout_ms ? p->timeout_ms : VERIFY_DEFAULT_TIMEOUT_MS,
                   0);
    v->events = UV_READABLE | UV_WRITABLE;
    if (uv_poll_start(&v->poll, v->events, on_poll) < 0) {
        /* The callback still comes, from the loop, with the socket closed:
         * the caller gave it to us once this call returned 0. */
        v->sys_errno = EBADF;
        ntcp_verify_core_fail(&v->core, NTCP_ESYS, "cannot poll the socket");
        finish(v);
    }
    if (out)
        *out = v;
    return 0;
}

void ntcp_verify_cancel(ntcp_verify *v)
{
    if (!v || v->finishing)
        return;
    ntcp_verify_core_fail(&v->core, NTCP_ECLOSED, "cancelled");
    finish(v);
}

static void blocking_done(ntcp_verify *v, const ntcp_verify_result *r, void *user)
{
    (void)v;
    *(ntcp_verify_result *)user = *r;
}

int ntcp_verify_fd(int fd, const ntcp_verify_params *p, ntcp_verify_result *r)
{
    ntcp_verify_result res;
    memset(&res, 0, sizeof res);
    res.fd = -1;
    res.why = "";
    uv_loop_t loop;
    if (uv_loop_init(&loop) < 0)
        return NTCP_ENOMEM;
    int rc = ntcp_verify_start(&loop, fd, p, blocking_done, &res, NULL);
    if (rc == 0) {
        uv_run(&loop, UV_RUN_DEFAULT);
        rc = res.err;
    } else {
        res.err = rc;
        res.fd = fd; /* untouched: the caller's still */
        res.why = "invalid arguments";
    }
    uv_loop_close(&loop);
    if (r)
        *r = res;
    return rc;
}
