/*
 * broker.c: the connection broker's sessions and messages: registration by
 * challenge and Ed25519 signature, refresh, lookup, connect coordination with
 * start delays from each end's round trip, UDP keepalives, reaping and limits.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "broker_int.h"
#include "identity.h"
#include "ntcp.h"
#include "session.h"
#include "sock_linux.h"
#include "tls.h"

#define TICK_MS 100

void broker_logf(ntcp_broker *b, int level, const char *fmt, ...)
{
    if (!b->log || level > b->log_level)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    b->log(b->log_user, level, msg);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* ---- activity lists: each session is on one, oldest activity first ---- */

static void list_unlink(bsession *s)
{
    ntcp_broker *b = s->b;
    bsession **head = s->state == S_REGISTERED ? &b->reg_head : &b->new_head;
    bsession **tail = s->state == S_REGISTERED ? &b->reg_tail : &b->new_tail;
    if (s->prev)
        s->prev->next = s->next;
    else if (*head == s)
        *head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else if (*tail == s)
        *tail = s->prev;
    s->prev = s->next = NULL;
}

static void list_append(bsession *s)
{
    ntcp_broker *b = s->b;
    bsession **head = s->state == S_REGISTERED ? &b->reg_head : &b->new_head;
    bsession **tail = s->state == S_REGISTERED ? &b->reg_tail : &b->new_tail;
    s->prev = *tail;
    s->next = NULL;
    if (*tail)
        (*tail)->next = s;
    else
        *head = s;
    *tail = s;
}

static void touch(bsession *s)
{
    s->last_ms = uv_now(s->b->loop);
    list_unlink(s);
    list_append(s);
}

static void set_state(bsession *s, uint8_t state)
{
    list_unlink(s);
    s->state = state;
    list_append(s);
}

/* ---- output ---- */

static void maybe_free(ntcp_broker *b);

static void session_free(bsession *s)
{
    ntcp_broker *b = s->b;
    free(s->in);
    free(s->out);
    free(s->extra);
    if (s->tls) {
        ntcp_tls_free(s->tls);
        b->st.tls_sessions--;
    }
    free(s);
    b->st.sessions--;
    if (b->stopping)
        maybe_free(b);
}

/* A cluster request that names s holds it: its memory stays until the
 * answer, which finds it dead and drops. */
static void on_session_closed(uv_handle_t *h)
{
    bsession *s = h->data;
    if (s->refs) {
        s->dead = 1;
        return;
    }
    session_free(s);
}

void session_unref(bsession *s)
{
    if (--s->refs == 0 && s->dead)
        session_free(s);
}

static void hard_close(bsession *s)
{
    list_unlink(s); /* a flushing session waits on the list (see session_close) */
    if (s->busy)
        return; /* a signature check holds a pointer to it: verify_done closes it */
    if (!uv_is_closing((uv_handle_t *)&s->tcp))
        uv_close((uv_handle_t *)&s->tcp, on_session_closed);
}

static void start_write(bsession *s);

static void on_written(uv_write_t *req, int status)
{
    bsession *s = req->data;
    outbuf *o = s->out;
    if (uv_is_closing((uv_handle_t *)&s->tcp))
        return;
    if (status < 0) {
        session_close(s, false);
        return;
    }
    memmove(o->data, o->data + o->wlen, o->len - o->wlen);
    o->len -= o->wlen;
    o->wlen = 0;
    if (o->len > 0) {
        start_write(s);
        return;
    }
    free(o);
    s->out = NULL;
    if (s->state == S_CLOSING)
        hard_close(s);
}

static void start_write(bsession *s)
{
    outbuf *o = s->out;
    uv_buf_t buf = uv_buf_init((char *)o->data, o->len);
    o->wlen = o->len;
    o->req.data = s;
    if (uv_write(&o->req, (uv_stream_t *)&s->tcp, &buf, 1, on_written) < 0) {
        o->wlen = 0;
        session_close(s, false);
    }
}

/* Sends bytes: straight to the socket when it takes them (the usual case,
 * no copy), else into the session's output buffer. A peer that does not
 * read is closed once OUTBUF_CAP is full. */
static void send_raw(bsession *s, const uint8_t *msg, size_t len)
{
    if (uv_is_closing((uv_handle_t *)&s->tcp))
        return;
    size_t done = 0;
    if (!s->out) {
        uv_buf_t buf = uv_buf_init((char *)msg, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&s->tcp, &buf, 1);
        if (n == (int)len)
            return;
        if (n < 0 && n != UV_EAGAIN) {
            session_close(s, false);
            return;
        }
        done = n > 0 ? (size_t)n : 0;
        s->out = malloc(sizeof(outbuf) + OUTBUF_CAP);
        if (!s->out) {
            session_close(s, false);
            return;
        }
        s->out->len = s->out->wlen = 0;
    }
    outbuf *o = s->out;
    if (len - done > OUTBUF_CAP - o->len) {
        broker_logf(s->b, NTCP_LOG_DEBUG, "closing a session that does not read");
        session_close(s, false);
        return;
    }
    memcpy(o->data + o->len, msg + done, len - done);
    o->len += (uint32_t)(len - done);
    if (o->wlen == 0)
        start_write(s);
}

/* Sends the TLS records waiting in the session's memory BIO: a handshake
 * flight, an alert, close_notify, a KeyUpdate answer, encrypted messages. */
static void flush_tls(bsession *s)
{
    uint8_t buf[4096];
    size_t n;
    while (!uv_is_closing((uv_handle_t *)&s->tcp) && (n = ntcp_tls_take(s->tls, buf, sizeof buf)) > 0)
        send_raw(s, buf, n);
}

/* Sends a whole message, encrypted on a TLS session. */
static void send_msg(bsession *s, const uint8_t *msg, size_t len);

void broker_send(bsession *s, const uint8_t *msg, size_t len)
{
    send_msg(s, msg, len);
}

static void send_msg(bsession *s, const uint8_t *msg, size_t len)
{
    if (!s->tls) {
        send_raw(s, msg, len);
        return;
    }
    if (uv_is_closing((uv_handle_t *)&s->tcp))
        return;
    if (ntcp_tls_write(s->tls, msg, len) < 0) {
        session_close(s, false);
        return;
    }
    flush_tls(s);
}

/* ---- closing ---- */

void pending_free(ntcp_broker *b, pending *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        b->pend_head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        b->pend_tail = p->prev;
    if (p->req)
        p->req->npending--;
    if (p->tgt)
        p->tgt->npending--;
    free(p->remote);
    p->remote = NULL;
    b->st.pending--;
    if (b->npend_free < 4096 && !b->stopping) {
        p->next = b->pend_free;
        b->pend_free = p;
        b->npend_free++;
    } else {
        free(p);
    }
}

/* A connect that ends without a GO: the entry goes first (a failed send can
 * close the requester and with it entries: callers walking the list start
 * again), then the requester, when it is here, hears why. */
void pending_fail(ntcp_broker *b, pending *p, int code, const char *reason)
{
    bsession *req = p->req;
    uint8_t tid[STUN_TID_SIZE];
    memcpy(tid, p->req_tid, sizeof tid);
    pending_free(b, p);
    b->st.connects_failed++;
    if (req)
        answer_error(req, BROKER_CONNECT, tid, code, reason);
}

/* flush: send what is queued first (after an error response). */
void session_close(bsession *s, bool flush)
{
    ntcp_broker *b = s->b;
    if (s->state == S_CLOSING) {
        if (!flush)
            hard_close(s);
        return;
    }
    list_unlink(s);
    if (s->state == S_REGISTERED && s->bind && s->bind->live == s)
        cluster_forget(s); /* before bind goes: it names the record */
    if (s->bind && s->bind->live == s)
        s->bind->live = NULL;
    if (s->state == S_REGISTERED)
        b->st.peers--;
    s->bind = NULL;
    s->state = S_CLOSING;
    rdv_forget(b, s);
    pending *p = s->npending ? b->pend_head : NULL;
    while (p) {
        if (p->tgt == s) {
            /* The target vanished: tell the requester now, not at the
             * timeout (through the cluster when it is on another node);
             * the walk restarts (see pending_fail). */
            if (!p->req)
                cluster_answer(b, p, BROKER_ERR_GONE, NULL);
            pending_fail(b, p, BROKER_ERR_GONE, "Peer gone");
            p = b->pend_head;
        } else if (p->req == s) {
            pending *next = p->next;
            pending_free(b, p);
            p = next;
        } else {
            p = p->next;
        }
    }
    if (s->tls && flush) {
        /* An orderly end: close_notify after what is queued, so that the
         * peer can tell it from a cut connection (RFC 8446 6.1). */
        ntcp_tls_shutdown(s->tls);
        flush_tls(s);
    }
    uv_read_stop((uv_stream_t *)&s->tcp);
    if (!flush || !s->out) {
        hard_close(s);
        return;
    }
    /* Flushing to a peer that may never read: it waits on the unregistered
     * list, so the reaper closes it after the handshake time at the latest. */
    s->last_ms = uv_now(b->loop);
    list_append(s);
}

/* ---- building answers ---- */

void answer_error(bsession *s, uint16_t method, const uint8_t tid[STUN_TID_SIZE], int code,
                  const char *reason)
{
    uint8_t buf[256];
    stun_builder sb;
    stun_build_init(&sb, buf, sizeof buf, method, STUN_ERROR, tid, false);
    broker_build_error(&sb, code, reason);
    int n = stun_build_finish(&sb, NULL);
    if (n > 0)
        send_msg(s, buf, (size_t)n);
}

/* An error for a message the session should not have sent: the session ends. */
static void fail_session(bsession *s, uint16_t method, const uint8_t *tid, int code,
                         const char *reason)
{
    ntcp_broker *b = s->b;
    char addr[64];
    struct sockaddr_storage ss;
    broker_addr_to_sa(&s->pub, &ss);
    broker_logf(b, NTCP_LOG_DEBUG, "session %s: %d %s; closed",
                ntcp_addr_str((struct sockaddr *)&ss, addr, sizeof addr), code, reason);
    b->st.bad_sessions++;
    if (tid) {
        answer_error(s, method, tid, code, reason);
    } else {
        /* No header to answer to: an error with a zero transaction id. */
        uint8_t zero[STUN_TID_SIZE] = {0};
        uint32_t cookie = STUN_MAGIC_COOKIE;
        zero[0] = (uint8_t)(cookie >> 24);
        zero[1] = (uint8_t)(cookie >> 16);
        zero[2] = (uint8_t)(cookie >> 8);
        zero[3] = (uint8_t)cookie;
        answer_error(s, method, zero, code, reason);
    }
    session_close(s, true);
}

void session_info(const bsession *s, broker_peer_info *p)
{
    memset(p, 0, sizeof *p);
    if (s->bind) {
        memcpy(p->name, s->bind->name, s->bind->namelen + 1u);
        memcpy(p->public_key, s->bind->key, BROKER_KEY_SIZE);
        p->has_public_key = true;
    }
    broker_addr_to_sa(&s->pub, &p->public_addr);
    broker_addr_to_sa(&s->udp, &p->public_udp);
    const broker_addr *pa = (const broker_addr *)s->extra;
    for (size_t i = 0; i < s->nprivate; i++)
        broker_addr_to_sa(&pa[i], &p->private_addr[p->nprivate++]);
    if (s->profile_len) {
        p->profile = s->extra + s->nprivate * sizeof(broker_addr);
        p->profile_len = s->profile_len;
    }
}

/* Keeps the private addresses and profile a peer reports, in one exact-size
 * block: most peers report little, so nothing is reserved for the maximum. */
static int store_extra(bsession *s, const stun_msg *m)
{
    size_t np = 0, plen = 0;
    const stun_attr *prof = stun_find(m, BROKER_ATTR_PROFILE);
    for (size_t i = 0; i < m->nattrs; i++)
        if (m->attrs[i].type == BROKER_ATTR_PRIVATE_ADDR)
            np++;
    if (np == 0 && !prof)
        return 0;
    if (prof)
        plen = prof->len;
    size_t need = np * sizeof(broker_addr) + plen;
    uint8_t *x = need ? malloc(need) : NULL;
    if (need && !x)
        return NTCP_ENOMEM;
    broker_addr *pa = (broker_addr *)x;
    size_t k = 0;
    for (size_t i = 0; i < m->nattrs; i++) {
        if (m->attrs[i].type != BROKER_ATTR_PRIVATE_ADDR)
            continue;
        struct sockaddr_storage ss;
        if (broker_attr_addr(m, &m->attrs[i], &ss) == 0)
            broker_addr_from_sa(&pa[k++], (struct sockaddr *)&ss);
    }
    if (plen)
        memcpy(x + k * sizeof(broker_addr), stun_attr_value(m, prof), plen);
    free(s->extra);
    s->extra = x;
    s->nprivate = (uint8_t)k;
    s->profile_len = (uint16_t)plen;
    return 0;
}

/* ACCEPT-ALL from a REGISTER (absent: none) or a REFRESH that carries the
 * peer's own info (absent there: unchanged, an older peer). */
static void store_accept(bsession *s, const stun_msg *m, bool registering)
{
    uint32_t v = 0;
    if (stun_get_u32(m, BROKER_ATTR_ACCEPT_ALL, &v) == 0)
        s->accept_all = (uint8_t)(v & (BROKER_ACCEPT_TCP | BROKER_ACCEPT_UDP));
    else if (registering)
        s->accept_all = 0;
}

static void rtt_sample(bsession *s, uint64_t us)
{
    if (us > 60000000)
        return;
    /* RFC 6298 smoothing (alpha 1/8): one slow answer does not skew it. */
    s->rtt_us = s->rtt_us ? (uint32_t)((7 * (uint64_t)s->rtt_us + us) / 8) : (uint32_t)(us ? us : 1);
}

/* The round trip to a peer, from which its CONNECT-GO's trip is judged:
 * the kernel's smallest sample, the path's own delay. Both ends of a connect
 * must be judged alike, and the other measures are not: the smoothed RTT
 * carries the peer's delayed ACKs, and our registration sample the peer's
 * own work (its signature) at that moment. In the lab an idle listener's
 * came out about 5 ms above its requester's on the same path, so the broker
 * held the requester back 2-3 ms too long and the ends' start skew was that
 * large (docs/traversal.md, "The RST pairs across delays"). Without the
 * kernel's measure (nothing acknowledged yet, another platform): ours. */
uint32_t session_rtt(bsession *s)
{
    uv_os_fd_t fd;
    uint32_t srtt = 0, min_rtt = 0;
    if (uv_fileno((uv_handle_t *)&s->tcp, &fd) == 0 && ntcp_sock_tcp_rtt(fd, &srtt, &min_rtt))
        return min_rtt ? min_rtt : srtt;
    return s->rtt_us;
}

/* ---- requests ---- */

/* An answer to m: same method and transaction id. */
static void begin(stun_builder *sb, uint8_t *buf, size_t cap, const stun_msg *m, uint8_t cls)
{
    stun_build_init(sb, buf, cap, m->method, cls, m->tid, false);
}

static void finish_send(bsession *s, stun_builder *sb)
{
    int n = stun_build_finish(sb, NULL);
    if (n > 0)
        send_msg(s, sb->buf, (size_t)n);
    else
        broker_logf(s->b, NTCP_LOG_ERROR, "cannot build an answer: %s", ntcp_strerror(n));
}

/* Tells a registered peer its registration ended (replaced by a newer
 * session with its key, or its key left the authorized keys), so that it
 * does not fight for the name, then closes the session. */
void notify_ended(bsession *s, int code, const char *reason)
{
    uint8_t buf[128], tid[STUN_TID_SIZE];
    stun_builder sb;
    stun_new_tid(tid);
    stun_build_init(&sb, buf, sizeof buf, BROKER_UNREGISTER, STUN_INDICATION, tid, false);
    stun_build_u32(&sb, BROKER_ATTR_DETAIL, (uint32_t)code);
    stun_build_string(&sb, STUN_ATTR_SOFTWARE, reason);
    int n = stun_build_finish(&sb, NULL);
    if (n > 0)
        send_msg(s, buf, (size_t)n);
    session_close(s, true);
}

static void verify_work(uv_work_t *req);
static void verify_done(uv_work_t *req, int status);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static const char *frame_error(int rc)
{
    return rc == NTCP_ERANGE ? "Message too large" : rc == NTCP_ETLS ? "TLS on a plain port" : "Not STUN";
}

/* A 401 with a fresh challenge, good for one REGISTER (signed, or with a
 * ticket) on this session only. */
static void send_challenge(bsession *s, const stun_msg *m, const char *reason)
{
    ntcp_broker *b = s->b;
    uint8_t buf[512];
    stun_builder sb;
    if (RAND_bytes(s->challenge, sizeof s->challenge) != 1) {
        answer_error(s, m->method, m->tid, BROKER_ERR_SERVER, "No randomness");
        return;
    }
    s->state = S_CHALLENGED; /* same activity list as S_NEW */
    s->challenge_us = uv_hrtime() / 1000;
    begin(&sb, buf, sizeof buf, m, STUN_ERROR);
    stun_build_error(&sb, BROKER_ERR_UNAUTHORIZED, reason);
    stun_build_attr(&sb, BROKER_ATTR_CHALLENGE, s->challenge, sizeof s->challenge);
    stun_build_attr(&sb, BROKER_ATTR_BROKER_ID, b->broker_id, b->broker_id_len);
    stun_build_u32(&sb, BROKER_ATTR_VERSION, BROKER_PROTO_VERSION);
    finish_send(s, &sb);
}

static bool finish_register(bsession *s, const vjob *j);
static void resume_reading(bsession *s);

/* A REGISTER with a ticket and its PROOF over this session's challenge:
 * registered without a signature check when the ticket is one of ours,
 * unexpired, for this name and key (and this address, when issued on a
 * plain session) and the proof holds; else a new challenge to sign. */
static void resume_register(bsession *s, const stun_msg *m, const char *name,
                            const uint8_t key[BROKER_KEY_SIZE], const uint8_t chal[BROKER_CHALLENGE_SIZE],
                            const uint8_t proof[BROKER_PROOF_SIZE], uint64_t rtt)
{
    ntcp_broker *b = s->b;
    const stun_attr *tk = stun_find(m, BROKER_ATTR_TICKET);
    ticket t;
    uint8_t want[BROKER_PROOF_SIZE];
    bool ok = b->has_ticket_key &&
              ticket_open(b->ticket_key, stun_attr_value(m, tk), tk->len, &t) == 0 &&
              strcmp(t.name, name) == 0 && CRYPTO_memcmp(t.key, key, BROKER_KEY_SIZE) == 0 &&
              t.expires > (uint64_t)time(NULL) &&
              (!t.ip_bound || (t.family == s->pub.family && memcmp(t.ip, s->pub.ip, 16) == 0)) &&
              broker_resume_proof(want, t.resume_key, b->broker_id, b->broker_id_len, chal, name,
                                  strlen(name), key) == 0 &&
              CRYPTO_memcmp(want, proof, sizeof want) == 0;
    OPENSSL_cleanse(&t, sizeof t);
    if (!ok) {
        b->st.tickets_refused++;
        send_challenge(s, m, "Ticket refused: sign the challenge");
        return;
    }
    b->st.resumptions++;
    vjob j;
    memset(&j, 0, sizeof j);
    j.s = s;
    j.ok = true;
    j.rtt_us = rtt;
    memcpy(j.tid, m->tid, STUN_TID_SIZE);
    memcpy(j.key, key, BROKER_KEY_SIZE);
    snprintf(j.name, sizeof j.name, "%s", name);
    if (finish_register(s, &j)) {
        /* The cluster's verdict comes later: read nothing meanwhile, as
         * during a signature check. */
        s->busy = 1;
        uv_read_stop((uv_stream_t *)&s->tcp);
    }
}

static void do_register(bsession *s, const stun_msg *m, const struct sockaddr *src)
{
    ntcp_broker *b = s->b;
    char name[BROKER_NAME_MAX + 1];
    uint8_t key[BROKER_KEY_SIZE], sig[BROKER_SIG_SIZE], chal[BROKER_CHALLENGE_SIZE];
    if (s->state == S_REGISTERED) {
        fail_session(s, m->method, m->tid, BROKER_ERR_BAD_REQUEST, "Already registered");
        return;
    }
    if (broker_get_name(m, name) < 0 ||
        broker_get_fixed(m, BROKER_ATTR_PUBLIC_KEY, key, sizeof key) < 0) {
        fail_session(s, m->method, m->tid, BROKER_ERR_BAD_REQUEST, "NAME and PUBLIC-KEY needed");
        return;
    }
    size_t namelen = strlen(name);
    int has_sig = broker_get_fixed(m, BROKER_ATTR_SIGNATURE, sig, sizeof sig);
    const stun_attr *tk = stun_find(m, BROKER_ATTR_TICKET);
    uint8_t proof[BROKER_PROOF_SIZE];
    bool resume = has_sig == NTCP_ENOTFOUND && tk &&
                  broker_get_fixed(m, BROKER_ATTR_PROOF, proof, sizeof proof) == 0;
    if (has_sig == NTCP_ENOTFOUND && !resume) {
        /* Step 1: a fresh challenge, good for one signed REGISTER on this
         * session only. */
        send_challenge(s, m, "Sign the challenge");
        return;
    }
    /* Step 2: the signed REGISTER. Signature checks cost CPU: limit them per
     * source address too. */
    if (!src_allow(b, src, uv_now(b->loop))) {
        b->st.rate_limited++;
        answer_error(s, m->method, m->tid, BROKER_ERR_RATE_LIMITED, "Rate limited");
        return;
    }
    bool fresh = s->state == S_CHALLENGED &&
                 broker_get_fixed(m, BROKER_ATTR_CHALLENGE, chal, sizeof chal) == 0 &&
                 CRYPTO_memcmp(chal, s->challenge, sizeof chal) == 0;
    if (!fresh) {
        /* A replay from another session, or the same challenge twice. */
        b->st.refused++;
        fail_session(s, m->method, m->tid, BROKER_ERR_STALE, "Stale challenge");
        return;
    }
    uint64_t rtt = uv_hrtime() / 1000 - s->challenge_us;
    s->state = S_NEW; /* the challenge is used up, whatever follows */
    OPENSSL_cleanse(s->challenge, sizeof s->challenge);

    /* Kept now: the message is gone by the time the signature is checked.
     * A refused session is closed, so nothing stale is ever served. */
    if (store_extra(s, m) < 0) {
        answer_error(s, m->method, m->tid, BROKER_ERR_SERVER, "Out of memory");
        return;
    }
    store_accept(s, m, true);
    if (resume) {
        resume_register(s, m, name, key, chal, proof, rtt);
        return;
    }
    vjob *j = b->vfree;
    if (j) {
        b->vfree = j->next_free;
        b->nvfree--;
    } else if (!(j = malloc(sizeof *j))) {
        answer_error(s, m->method, m->tid, BROKER_ERR_SERVER, "Out of memory");
        return;
    }
    j->s = s;
    j->rtt_us = rtt;
    j->ok = false;
    memcpy(j->tid, m->tid, STUN_TID_SIZE);
    memcpy(j->key, key, sizeof key);
    memcpy(j->sig, sig, sizeof sig);
    memcpy(j->name, name, namelen + 1);
    j->tl = broker_transcript(j->tr, sizeof j->tr, b->broker_id, b->broker_id_len, chal, name,
                              namelen, key);
    /* An Ed25519 verification costs ~0.1 ms: on the thread pool, so that a
     * storm of registrations (everyone back after a restart) neither stalls
     * refreshes and connects nor leaves the second core idle. The session
     * reads nothing more until the answer. */
    s->busy = 1;
    b->jobs++;
    uv_read_stop((uv_stream_t *)&s->tcp);
    j->req.data = j;
    if (uv_queue_work(b->loop, &j->req, verify_work, verify_done) < 0) {
        verify_work(&j->req);
        verify_done(&j->req, 0);
    }
}

static void verify_work(uv_work_t *req)
{
    vjob *j = req->data;
    j->ok = j->tl > 0 && ntcp_identity_verify(j->key, j->tr, (size_t)j->tl, j->sig) == 0;
}

static void vjob_recycle(ntcp_broker *b, vjob *j)
{
    if (b->nvfree < 1024) {
        j->next_free = b->vfree;
        b->vfree = j;
        b->nvfree++;
    } else {
        free(j);
    }
}

static void verify_done(uv_work_t *req, int status)
{
    vjob *j = req->data;
    bsession *s = j->s;
    ntcp_broker *b = s->b;
    s->busy = 0;
    b->jobs--;
    bool waits = false;
    if (status == 0 && s->state != S_CLOSING)
        waits = finish_register(s, j);
    vjob_recycle(b, j);
    if (waits) {
        s->busy = 1; /* the cluster's verdict comes later: still not reading */
        return;
    }
    resume_reading(s);
}

/* After a registration step that held the session (busy): closes what was
 * closed meanwhile, else reads again. */
static void resume_reading(bsession *s)
{
    if (s->state == S_CLOSING) {
        /* Closed (or reaped) while the check ran, or refused just now: the
         * close waited for the check. A refusal still being flushed is left
         * to on_written; the reaper ends it if the peer does not read. */
        bool waits_on_list = s->prev || s->b->new_head == s;
        if (!s->out || !waits_on_list)
            hard_close(s);
        return;
    }
    if (uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read) < 0)
        session_close(s, false);
}

static void complete_register(bsession *s, const char *name, const uint8_t key[BROKER_KEY_SIZE],
                              const uint8_t tid[STUN_TID_SIZE], bool cluster_bound);

/* The signature checked: the name's binding decides. Returns true when the
 * cluster's verdict is awaited (register_verdict() completes it). */
static bool finish_register(bsession *s, const vjob *j)
{
    ntcp_broker *b = s->b;
    if (!j->ok) {
        b->st.refused++;
        fail_session(s, BROKER_REGISTER, j->tid, BROKER_ERR_FORBIDDEN, "Bad signature");
        return false;
    }
    rtt_sample(s, j->rtt_us);
    if (b->authorized_keys) {
        binding *x = binding_find(b, j->name, strlen(j->name));
        if (!x || CRYPTO_memcmp(x->key, j->key, sizeof j->key) != 0) {
            b->st.refused++;
            fail_session(s, BROKER_REGISTER, j->tid, BROKER_ERR_FORBIDDEN, "Not authorized");
            return false;
        }
    }
    if (b->cl) {
        /* First use binds the name for the whole cluster, and the record
         * is written, before the peer hears it is registered. */
        if (cluster_bind(s, j->name, j->key, j->tid))
            return true;
        /* No Redis now: a registration no other node could see is refused,
         * at once and with the reason; the peer comes back later (or goes
         * to another node of its list). */
        b->st.refused++;
        fail_session(s, BROKER_REGISTER, j->tid, BROKER_ERR_FULL, "Cluster state unavailable");
        return false;
    }
    complete_register(s, j->name, j->key, j->tid, false);
    return false;
}

void register_verdict(bsession *s, const char *name, const uint8_t key[BROKER_KEY_SIZE],
                      const uint8_t tid[STUN_TID_SIZE], int code)
{
    ntcp_broker *b = s->b;
    s->busy = 0;
    if (s->state != S_CLOSING) {
        if (code == BROKER_ERR_CONFLICT) {
            b->st.refused++;
            fail_session(s, BROKER_REGISTER, tid, BROKER_ERR_CONFLICT, "Name bound to another key");
        } else if (code) {
            /* No cluster state: a registration no other node could see is
             * refused rather than accepted; the peer tries again later. */
            b->st.refused++;
            fail_session(s, BROKER_REGISTER, tid, BROKER_ERR_FULL, "Cluster state unavailable");
        } else {
            complete_register(s, name, key, tid, true);
        }
    }
    resume_reading(s);
}

static void complete_register(bsession *s, const char *name, const uint8_t key[BROKER_KEY_SIZE],
                              const uint8_t tid[STUN_TID_SIZE], bool cluster_bound)
{
    ntcp_broker *b = s->b;
    size_t namelen = strlen(name);
    binding *x = binding_find(b, name, namelen);
    if (b->authorized_keys && (!x || CRYPTO_memcmp(x->key, key, BROKER_KEY_SIZE) != 0)) {
        b->st.refused++;
        fail_session(s, BROKER_REGISTER, tid, BROKER_ERR_FORBIDDEN, "Not authorized");
        return;
    }
    if (x && cluster_bound && CRYPTO_memcmp(x->key, key, BROKER_KEY_SIZE) != 0) {
        /* Only after Redis lost its data and the name was bound anew: the
         * cluster's binding is the one that holds. */
        memcpy(x->key, key, BROKER_KEY_SIZE);
    }
    if (x && CRYPTO_memcmp(x->key, key, BROKER_KEY_SIZE) != 0) {
        b->st.refused++;
        fail_session(s, BROKER_REGISTER, tid, BROKER_ERR_CONFLICT, "Name bound to another key");
        return;
    }
    if (!x) {
        x = binding_add(b, name, namelen, key, 0);
        if (!x) {
            answer_error(s, BROKER_REGISTER, tid, BROKER_ERR_SERVER, "Out of memory");
            return;
        }
        if (!cluster_bound)
            keys_persist(b, x);
    }
    if (x->live && x->live != s) {
        /* The same key from a new session: the peer restarted or moved, and
         * its old session is dead or about to be. The newest wins. */
        bsession *old = x->live;
        old->bind = NULL;
        x->live = NULL;
        b->st.peers--;
        list_unlink(old);
        old->state = S_NEW;
        list_append(old);
        notify_ended(old, BROKER_ERR_CONFLICT, "Replaced by a newer session");
    }
    RAND_bytes(s->udp_key, sizeof s->udp_key);
    s->bind = x;
    x->live = s;
    if (!cluster_bound)
        s->serial = ++b->next_serial; /* in a cluster, given with the record */
    set_state(s, S_REGISTERED);
    b->st.peers++;
    b->st.registrations++;

    uint8_t buf[1024];
    stun_builder sb;
    struct sockaddr_storage pub;
    broker_addr_to_sa(&s->pub, &pub);
    stun_build_init(&sb, buf, sizeof buf, BROKER_REGISTER, STUN_SUCCESS, tid, false);
    if (b->has_ticket_key) {
        /* A ticket for the next registration, here or at another node of
         * the cluster: on a plain session bound to this address, since its
         * resume key crossed the network in the clear. */
        ticket t;
        uint8_t sealed[BROKER_TICKET_MAX];
        memset(&t, 0, sizeof t);
        t.expires = (uint64_t)time(NULL) + b->ticket_lifetime_s;
        t.ip_bound = !s->tls;
        t.family = s->pub.family;
        memcpy(t.ip, s->pub.ip, 16);
        memcpy(t.key, key, BROKER_KEY_SIZE);
        snprintf(t.name, sizeof t.name, "%s", name);
        int n = RAND_bytes(t.resume_key, sizeof t.resume_key) == 1
                    ? ticket_seal(b->ticket_key, &t, sealed, sizeof sealed)
                    : NTCP_ESYS;
        if (n > 0) {
            stun_build_attr(&sb, BROKER_ATTR_TICKET, sealed, (size_t)n);
            stun_build_attr(&sb, BROKER_ATTR_RESUME_KEY, t.resume_key, sizeof t.resume_key);
        }
        OPENSSL_cleanse(&t, sizeof t);
    }
    stun_build_addr(&sb, STUN_ATTR_XOR_MAPPED_ADDRESS, (struct sockaddr *)&pub);
    stun_build_u32(&sb, BROKER_ATTR_EXPIRY, b->expiry_s);
    stun_build_attr(&sb, BROKER_ATTR_UDP_KEY, s->udp_key, sizeof s->udp_key);
    stun_build_attr(&sb, BROKER_ATTR_BROKER_ID, b->broker_id, b->broker_id_len);
    stun_build_u32(&sb, BROKER_ATTR_VERSION, BROKER_PROTO_VERSION);
    if (spoof_enabled(b))
        stun_build_u32(&sb, BROKER_ATTR_SPOOF, 1);
    finish_send(s, &sb);
    broker_logf(b, NTCP_LOG_DEBUG, "registered %s", name);
}

static void do_refresh(bsession *s, const stun_msg *m)
{
    ntcp_broker *b = s->b;
    store_accept(s, m, false);
    if (stun_find(m, BROKER_ATTR_PRIVATE_ADDR) || stun_find(m, BROKER_ATTR_PROFILE)) {
        if (store_extra(s, m) < 0) {
            answer_error(s, m->method, m->tid, BROKER_ERR_SERVER, "Out of memory");
            return;
        }
        cluster_publish(s, false); /* the record other nodes serve changed */
    } else {
        cluster_touch(s);
    }
    uint8_t buf[256];
    stun_builder sb;
    struct sockaddr_storage ss;
    begin(&sb, buf, sizeof buf, m, STUN_SUCCESS);
    broker_addr_to_sa(&s->pub, &ss);
    stun_build_addr(&sb, STUN_ATTR_XOR_MAPPED_ADDRESS, (struct sockaddr *)&ss);
    broker_build_baddr(&sb, BROKER_ATTR_PUBLIC_UDP, &s->udp);
    stun_build_u32(&sb, BROKER_ATTR_EXPIRY, b->expiry_s);
    finish_send(s, &sb);
}

static bsession *find_live(ntcp_broker *b, const stun_msg *m, char name[BROKER_NAME_MAX + 1])
{
    if (broker_get_name(m, name) < 0)
        return NULL;
    binding *x = binding_find(b, name, strlen(name));
    return x ? x->live : NULL;
}

static void do_lookup(bsession *s, const stun_msg *m)
{
    ntcp_broker *b = s->b;
    char name[BROKER_NAME_MAX + 1];
    if (!stun_find(m, BROKER_ATTR_NAME)) {
        fail_session(s, m->method, m->tid, BROKER_ERR_BAD_REQUEST, "NAME needed");
        return;
    }
    bsession *t = find_live(b, m, name);
    if (!t && name[0] && cluster_lookup(s, m, name))
        return; /* another node may hold it: answered when Redis says */
    if (!t) {
        answer_error(s, m->method, m->tid, BROKER_ERR_UNKNOWN_USER, "Unknown user");
        return;
    }
    uint8_t buf[BROKER_MAX_MESSAGE];
    stun_builder sb;
    broker_peer_info info;
    session_info(t, &info);
    begin(&sb, buf, sizeof buf, m, STUN_SUCCESS);
    broker_build_peer_info(&sb, &info);
    finish_send(s, &sb);
}

/* Both CONNECT-GOs of an accepted connect, requester r and target t, both
 * on this node: the answer to r's CONNECT (req_tid) and the GO to t. */
static void go_both(bsession *r, bsession *t, const uint8_t req_tid[STUN_TID_SIZE],
                    uint32_t transport)
{
    ntcp_broker *b = r->b;
    uint8_t nonce[BROKER_NONCE_SIZE];
    if (RAND_bytes(nonce, sizeof nonce) != 1) {
        answer_error(r, BROKER_CONNECT, req_tid, BROKER_ERR_SERVER, "No randomness");
        return;
    }
    /* Both GOs leave now. Each arrives about half its round trip later; the
     * common start S is when the slower one has arrived, plus a margin. Each
     * end waits S minus its own arrival. */
    uint32_t rr = session_rtt(r), rt = session_rtt(t);
    uint32_t slow = rr > rt ? rr : rt;
    uint32_t margin = start_margin(b, slow);
    uint32_t dr = (uint32_t)((slow - rr) / 2 + 999) / 1000 + margin;
    uint32_t dt = (uint32_t)((slow - rt) / 2 + 999) / 1000 + margin;

    broker_peer_info info;
    session_info(t, &info);
    send_go(r, req_tid, &info, nonce, dr, rr, transport, true);
    if (r->state == S_CLOSING) {
        b->st.connects_failed++; /* the requester is gone: no GO for the target */
        return;
    }
    session_info(r, &info);
    send_go(t, NULL, &info, nonce, dt, rt, transport, true);
    b->st.connects_ok++;
    if (t->state == S_REGISTERED)
        rdv_add(b, r, t, nonce); /* for RAW-ISN (spoof.c; TCP) and RELAY-ADDR (TCP, UDP) */
}

static void do_connect(bsession *s, const stun_msg *m)
{
    ntcp_broker *b = s->b;
    char name[BROKER_NAME_MAX + 1];
    if (!stun_find(m, BROKER_ATTR_NAME)) {
        fail_session(s, m->method, m->tid, BROKER_ERR_BAD_REQUEST, "NAME needed");
        return;
    }
    bsession *t = find_live(b, m, name);
    if (!t && !(b->cl && name[0])) {
        b->st.connects_failed++;
        answer_error(s, m->method, m->tid, BROKER_ERR_UNKNOWN_USER, "Unknown user");
        return;
    }
    if (t == s) {
        answer_error(s, m->method, m->tid, BROKER_ERR_BAD_REQUEST, "Cannot connect to oneself");
        return;
    }
    if ((t && t->npending >= 64) || s->npending >= 64) {
        b->st.rate_limited++;
        answer_error(s, m->method, m->tid, BROKER_ERR_RATE_LIMITED, "Too many connects pending");
        return;
    }
    uint32_t transport = BROKER_TRANSPORT_TCP;
    if (stun_get_u32(m, BROKER_ATTR_TRANSPORT, &transport) == 0 && transport > BROKER_TRANSPORT_UDP) {
        /* A transport of a later version: refused, the session stays. */
        answer_error(s, m->method, m->tid, BROKER_ERR_BAD_REQUEST, "Unknown transport");
        return;
    }
    if (transport == BROKER_TRANSPORT_UDP && !b->has_udp) {
        /* No UDP port: no end's mapping can ever be learned, so a punch
         * could only wait and fail. Said at once, the session stays. */
        b->st.connects_failed++;
        answer_error(s, m->method, m->tid, BROKER_ERR_NO_UDP, "No UDP at this broker");
        return;
    }
    uint32_t timeout = b->offer_timeout_ms;
    uint32_t want;
    if (stun_get_u32(m, BROKER_ATTR_TIMEOUT, &want) == 0 && want > 0 && want < timeout)
        timeout = want;
    if (!t) {
        /* Not here: the node that holds it, if any, is asked via Redis. */
        cluster_connect(s, m, name, transport, timeout);
        return;
    }
    if (t->accept_all & (transport == BROKER_TRANSPORT_UDP ? BROKER_ACCEPT_UDP : BROKER_ACCEPT_TCP)) {
        /* The target accepts anyone's connects of this transport: no offer
         * to ask, both GOs leave now (a round trip less). */
        go_both(s, t, m->tid, transport);
        return;
    }
    pending *p = pending_new(b);
    if (!p) {
        answer_error(s, m->method, m->tid, BROKER_ERR_SERVER, "Out of memory");
        return;
    }
    p->req = s;
    p->tgt = t;
    p->transport = transport;
    s->npending++;
    t->npending++;
    memcpy(p->req_tid, m->tid, STUN_TID_SIZE);
    stun_new_tid(p->offer_tid);
    p->deadline_ms = uv_now(b->loop) + timeout;
    pending_link(b, p);
    broker_peer_info info;
    session_info(s, &info);
    send_offer(t, &info, p, timeout);
}

pending *pending_new(ntcp_broker *b)
{
    pending *p = b->pend_free;
    if (p) {
        b->pend_free = p->next;
        b->npend_free--;
        memset(p, 0, sizeof *p);
    } else {
        p = calloc(1, sizeof *p);
    }
    return p;
}

void pending_link(ntcp_broker *b, pending *p)
{
    p->prev = b->pend_tail;
    p->next = NULL;
    if (b->pend_tail)
        b->pend_tail->next = p;
    else
        b->pend_head = p;
    b->pend_tail = p;
    b->st.pending++;
}

void send_go(bsession *s, const uint8_t *req_tid, const broker_peer_info *other,
             const uint8_t nonce[BROKER_NONCE_SIZE], uint32_t delay_ms, uint32_t rtt_us,
             uint32_t transport, bool relay)
{
    uint8_t buf[BROKER_MAX_MESSAGE], tid[STUN_TID_SIZE];
    stun_builder sb;
    if (req_tid)
        memcpy(tid, req_tid, sizeof tid);
    else
        stun_new_tid(tid);
    stun_build_init(&sb, buf, sizeof buf, req_tid ? BROKER_CONNECT : BROKER_GO,
                    req_tid ? STUN_SUCCESS : STUN_INDICATION, tid, false);
    broker_build_peer_info(&sb, other);
    stun_build_attr(&sb, BROKER_ATTR_SESSION_NONCE, nonce, BROKER_NONCE_SIZE);
    stun_build_u32(&sb, BROKER_ATTR_START_DELAY, delay_ms);
    stun_build_u32(&sb, BROKER_ATTR_ROLE, req_tid ? BROKER_ROLE_REQUESTER : BROKER_ROLE_TARGET);
    stun_build_u32(&sb, BROKER_ATTR_RTT, rtt_us);
    if (transport != BROKER_TRANSPORT_TCP)
        stun_build_u32(&sb, BROKER_ATTR_TRANSPORT, transport);
    if (relay && s->bind)
        broker_turn_build(s->b, &sb, s->bind->name); /* turn_creds.c */
    finish_send(s, &sb);
}

/* The OFFER to a target here, for a requester here or on another node. */
void send_offer(bsession *t, const broker_peer_info *from, pending *p, uint32_t timeout)
{
    uint8_t buf[BROKER_MAX_MESSAGE];
    stun_builder sb;
    p->sent_us = uv_hrtime() / 1000;
    stun_build_init(&sb, buf, sizeof buf, BROKER_OFFER, STUN_REQUEST, p->offer_tid, false);
    broker_build_peer_info(&sb, from);
    stun_build_u32(&sb, BROKER_ATTR_TIMEOUT, timeout);
    if (p->transport != BROKER_TRANSPORT_TCP)
        stun_build_u32(&sb, BROKER_ATTR_TRANSPORT, p->transport);
    finish_send(t, &sb);
}

uint32_t start_margin(const ntcp_broker *b, uint32_t slow_us)
{
    /* The margin covers the jitter of the GOs' trips and of both ends'
     * processing: an eighth of the slower round trip, 2 to 20 ms, unless
     * configured. A SYN that leaves a little early costs nothing (its
     * mapping is there before the peer's SYN arrives, half a round trip
     * later); a margin wider than needed costs every connection its time. */
    uint32_t margin = b->start_margin_ms;
    if (!margin) {
        margin = slow_us / 8000;
        margin = margin < 2 ? 2 : margin > 20 ? 20 : margin;
    }
    return margin;
}

/* The target answered an offer: CONNECT-GO to both, or the refusal. */
static void do_offer_answer(bsession *t, const stun_msg *m)
{
    ntcp_broker *b = t->b;
    pending *p = b->pend_head;
    while (p && !(p->tgt == t && memcmp(p->offer_tid, m->tid, STUN_TID_SIZE) == 0))
        p = p->next;
    if (!p)
        return; /* late (after the timeout) or unknown: nothing to do */
    /* Done with the entry before sending anything: a failed send closes a
     * session, which frees the entries it is part of. */
    bsession *r = p->req;
    uint8_t req_tid[STUN_TID_SIZE];
    memcpy(req_tid, p->req_tid, sizeof req_tid);
    uint32_t transport = p->transport;
    rtt_sample(t, uv_hrtime() / 1000 - p->sent_us);
    if (!r) {
        /* The requester is on another node: the answer goes there. */
        cluster_answer(b, p, m->cls == STUN_ERROR ? BROKER_ERR_DECLINED : 0, t);
        if (m->cls == STUN_ERROR)
            b->st.connects_failed++;
        else
            b->st.connects_ok++;
        pending_free(b, p);
        return;
    }
    pending_free(b, p);
    if (m->cls == STUN_ERROR) {
        b->st.connects_failed++;
        answer_error(r, BROKER_CONNECT, req_tid, BROKER_ERR_DECLINED, "Declined");
        return;
    }
    go_both(r, t, req_tid, transport);
}

static void do_unregister(bsession *s, const stun_msg *m)
{
    uint8_t buf[64];
    stun_builder sb;
    begin(&sb, buf, sizeof buf, m, STUN_SUCCESS);
    finish_send(s, &sb);
    session_close(s, true);
}

static bool rate_ok(bsession *s)
{
    ntcp_broker *b = s->b;
    if (b->peer_rate < 0)
        return true;
    uint64_t now = uv_now(b->loop);
    s->tokens += (double)(now - s->tokens_ms) * b->peer_rate / 1000.0;
    if (s->tokens > b->peer_burst)
        s->tokens = b->peer_burst;
    s->tokens_ms = now;
    if (s->tokens < 1.0)
        return false;
    s->tokens -= 1.0;
    return true;
}

static void handle_message(bsession *s, const uint8_t *data, size_t len)
{
    ntcp_broker *b = s->b;
    stun_msg m;
    int rc = stun_parse(&m, data, len);
    if (rc < 0) {
        fail_session(s, m.len ? m.method : 0, m.len ? m.tid : NULL, BROKER_ERR_BAD_REQUEST,
                     "Malformed message");
        return;
    }
    if (m.rfc3489) {
        fail_session(s, m.method, m.tid, BROKER_ERR_BAD_REQUEST, "Magic cookie needed");
        return;
    }
    uint16_t unknown[STUN_MAX_UNKNOWN];
    size_t nunknown;
    rc = broker_validate(&m, unknown, STUN_MAX_UNKNOWN, &nunknown);
    if (rc < 0) {
        fail_session(s, m.method, m.tid, BROKER_ERR_BAD_REQUEST, "Bad attribute");
        return;
    }
    /* Answers to the broker's offers. */
    if (m.method == BROKER_OFFER && (m.cls == STUN_SUCCESS || m.cls == STUN_ERROR)) {
        if (s->state != S_REGISTERED) {
            fail_session(s, m.method, m.tid, BROKER_ERR_BAD_REQUEST, "Out of order");
            return;
        }
        touch(s);
        do_offer_answer(s, &m);
        return;
    }
    /* STUNT#1 / NATBlaster: an ISN for the other end of a connect. An
     * indication has no answer; one that does not fit is dropped. */
    if (m.method == BROKER_RAW_ISN && m.cls == STUN_INDICATION && s->state == S_REGISTERED) {
        touch(s);
        if (nunknown == 0 && rate_ok(s))
            do_raw_isn(s, &m);
        return;
    }
    /* The relay: one end's relayed address for the other (turn_creds.c). */
    if (m.method == BROKER_RELAY_ADDR && m.cls == STUN_INDICATION && s->state == S_REGISTERED) {
        touch(s);
        if (nunknown == 0 && rate_ok(s))
            do_relay_addr(s, &m);
        return;
    }
    if (m.cls != STUN_REQUEST) {
        fail_session(s, m.method, m.tid, BROKER_ERR_BAD_REQUEST, "Out of order");
        return;
    }
    b->st.requests++;
    if (nunknown) {
        uint8_t buf[128];
        stun_builder sb;
        begin(&sb, buf, sizeof buf, &m, STUN_ERROR);
        stun_build_error(&sb, BROKER_ERR_UNKNOWN_ATTR, "Unknown attribute");
        stun_build_unknown(&sb, unknown, nunknown);
        finish_send(s, &sb);
        return;
    }
    if (!rate_ok(s)) {
        b->st.rate_limited++;
        answer_error(s, m.method, m.tid, BROKER_ERR_RATE_LIMITED, "Rate limited");
        return;
    }
    if (m.method == BROKER_REGISTER) {
        struct sockaddr_storage src;
        broker_addr_to_sa(&s->pub, &src);
        do_register(s, &m, (struct sockaddr *)&src);
        return;
    }
    switch (m.method) {
    case BROKER_REFRESH:
    case BROKER_LOOKUP:
    case BROKER_CONNECT:
    case BROKER_UNREGISTER:
        if (s->state != S_REGISTERED) {
            fail_session(s, m.method, m.tid, BROKER_ERR_BAD_REQUEST, "Not registered");
            return;
        }
        touch(s);
        break;
    default:
        fail_session(s, m.method, m.tid, BROKER_ERR_BAD_REQUEST, "Unknown method");
        return;
    }
    switch (m.method) {
    case BROKER_REFRESH: do_refresh(s, &m); break;
    case BROKER_LOOKUP: do_lookup(s, &m); break;
    case BROKER_CONNECT: do_connect(s, &m); break;
    case BROKER_UNREGISTER: do_unregister(s, &m); break;
    }
}

/* ---- TCP input: whole messages straight from the shared read buffer; only
 * a message split across reads is copied, into a buffer held until it is
 * whole. ---- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    bsession *s = h->data;
    buf->base = (char *)s->b->rbuf;
    buf->len = sizeof s->b->rbuf;
}

/* Total length of the message starting at p (>= 4 bytes), or an error. */
static int frame_len(const uint8_t *p, size_t *total)
{
    if (p[0] == 0x16 && p[1] == 0x03)
        return NTCP_ETLS; /* a TLS ClientHello's record: this port is plain */
    if (p[0] & 0xC0)
        return NTCP_ENOTSTUN;
    size_t mlen = (size_t)((p[2] << 8) | p[3]);
    if (mlen % 4)
        return NTCP_ENOTSTUN;
    *total = STUN_HEADER_SIZE + mlen;
    return *total > BROKER_MAX_MESSAGE ? NTCP_ERANGE : 0;
}

/* Plaintext from the peer: straight from the socket, or decrypted. */
static void on_plain(bsession *s, const uint8_t *p, size_t n)
{
    while (n > 0 && s->state != S_CLOSING) {
        size_t total;
        if (s->busy) {
            /* A peer waits for the REGISTER answer before it says more. */
            fail_session(s, 0, NULL, BROKER_ERR_BAD_REQUEST, "Message before the REGISTER answer");
            return;
        }
        if (s->inlen > 0 || n < 4) {
            /* Completing (or starting) a split message. */
            if (!s->in && !(s->in = malloc(BROKER_MAX_MESSAGE))) {
                session_close(s, false);
                return;
            }
            size_t take = s->inlen < 4 ? 4 - s->inlen : 0;
            if (take > n)
                take = n;
            memcpy(s->in + s->inlen, p, take);
            s->inlen = (uint16_t)(s->inlen + take);
            p += take;
            n -= take;
            if (s->inlen < 4)
                break;
            int rc = frame_len(s->in, &total);
            if (rc < 0) {
                fail_session(s, 0, NULL, BROKER_ERR_BAD_REQUEST,
                             frame_error(rc));
                return;
            }
            take = total - s->inlen;
            if (take > n)
                take = n;
            memcpy(s->in + s->inlen, p, take);
            s->inlen = (uint16_t)(s->inlen + take);
            p += take;
            n -= take;
            if (s->inlen < total)
                break;
            handle_message(s, s->in, total);
            s->inlen = 0;
            if (s->state != S_CLOSING) {
                free(s->in);
                s->in = NULL;
            }
            continue;
        }
        int rc = frame_len(p, &total);
        if (rc < 0) {
            fail_session(s, 0, NULL, BROKER_ERR_BAD_REQUEST,
                         frame_error(rc));
            return;
        }
        if (total > n) {
            if (!s->in && !(s->in = malloc(BROKER_MAX_MESSAGE))) {
                session_close(s, false);
                return;
            }
            memcpy(s->in, p, n);
            s->inlen = (uint16_t)n;
            break;
        }
        handle_message(s, p, total);
        p += total;
        n -= total;
    }
}

/* Ciphertext from a TLS session: the handshake, then records, each split
 * or coalesced any way; their plaintext goes through on_plain. A client
 * that stalls in the handshake is reaped like a silent plain one (it is
 * not registered within the handshake time). */
static void on_tls(bsession *s, const uint8_t *p, size_t n)
{
    ntcp_broker *b = s->b;
    if (ntcp_tls_feed(s->tls, p, n) < 0) {
        session_close(s, false);
        return;
    }
    int rc = 0;
    while (s->state != S_CLOSING && (rc = ntcp_tls_read(s->tls, b->pbuf, sizeof b->pbuf)) > 0)
        on_plain(s, b->pbuf, (size_t)rc);
    if (s->state == S_CLOSING)
        return;
    flush_tls(s);
    if (rc == NTCP_ECLOSED) {
        session_close(s, true); /* close_notify: ours goes back, then the end */
    } else if (rc < 0) {
        char addr[64];
        struct sockaddr_storage ss;
        broker_addr_to_sa(&s->pub, &ss);
        broker_logf(b, NTCP_LOG_DEBUG, "session %s: %s; closed",
                    ntcp_addr_str((struct sockaddr *)&ss, addr, sizeof addr),
                    ntcp_tls_error(s->tls));
        b->st.tls_failed++;
        b->st.bad_sessions++;
        session_close(s, true); /* the alert, if OpenSSL made one, goes first */
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    bsession *s = stream->data;
    if (nread < 0) {
        session_close(s, false);
        return;
    }
    if (s->tls)
        on_tls(s, (const uint8_t *)buf->base, (size_t)nread);
    else
        on_plain(s, (const uint8_t *)buf->base, (size_t)nread);
}

static void on_connection(uv_stream_t *server, int status)
{
    ntcp_broker *b = server->data;
    if (status < 0)
        return;
    bsession *s = calloc(1, sizeof *s);
    if (!s)
        return; /* the connection waits in the backlog */
    s->b = b;
    if (uv_tcp_init(b->loop, &s->tcp) < 0) {
        free(s);
        return;
    }
    s->tcp.data = s;
    b->st.sessions++;
    if (uv_accept(server, (uv_stream_t *)&s->tcp) < 0) {
        uv_close((uv_handle_t *)&s->tcp, on_session_closed);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &len) < 0) {
        uv_close((uv_handle_t *)&s->tcp, on_session_closed);
        return;
    }
    broker_addr_from_sa(&s->pub, (struct sockaddr *)&ss);
    if (b->st.sessions > b->max_sessions || b->stopping) {
        uv_close((uv_handle_t *)&s->tcp, on_session_closed);
        return;
    }
    if (!src_allow(b, (struct sockaddr *)&ss, uv_now(b->loop))) {
        b->st.rate_limited++;
        uv_close((uv_handle_t *)&s->tcp, on_session_closed);
        return;
    }
    s->state = S_NEW;
    s->tokens = b->peer_burst;
    s->tokens_ms = s->last_ms = uv_now(b->loop);
    list_append(s);
    uv_tcp_nodelay(&s->tcp, 1);
    bool tls = server == (uv_stream_t *)&b->tls_listener ||
               (b->listen_tls && server == (uv_stream_t *)&b->listener);
    if (tls) {
        if (!(s->tls = ntcp_tls_new(b->tls_ctx, true, NULL, NULL))) {
            session_close(s, false);
            return;
        }
        b->st.tls_sessions++;
    }
    if (uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read) < 0)
        session_close(s, false);
}

/* ---- UDP keepalives: USERNAME = name, MESSAGE-INTEGRITY keyed with the
 * UDP-KEY the broker gave at registration. Anything else is dropped: UDP
 * answers to forged sources would make the broker an amplifier. ---- */

static void on_udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    ntcp_broker *b = h->data;
    buf->base = (char *)b->ubuf;
    buf->len = sizeof b->ubuf;
}

static void on_udp(uv_udp_t *u, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *from,
                   unsigned flags)
{
    ntcp_broker *b = u->data;
    (void)flags;
    if (nread <= 0 || !from)
        return;
    stun_msg m;
    if (stun_parse(&m, (const uint8_t *)buf->base, (size_t)nread) < 0 || m.rfc3489 ||
        m.method != BROKER_KEEPALIVE || m.cls != STUN_REQUEST)
        return;
    const char *user;
    size_t ulen;
    if (stun_get_string(&m, STUN_ATTR_USERNAME, &user, &ulen) < 0 || !broker_name_valid(user, ulen))
        return;
    binding *x = binding_find(b, user, ulen);
    bsession *s = x ? x->live : NULL;
    if (!s || stun_check_integrity(&m, s->udp_key, sizeof s->udp_key, false) < 0) {
        broker_logf(b, NTCP_LOG_DEBUG, "UDP keepalive dropped: unknown name or bad integrity");
        return;
    }
    b->st.requests++;
    broker_addr old = s->udp;
    broker_addr_from_sa(&s->udp, from);
    if (memcmp(&old, &s->udp, sizeof old) != 0)
        cluster_publish(s, false); /* other nodes put it in CONNECT-GOs */
    uint8_t out[128];
    stun_builder sb;
    stun_build_init(&sb, out, sizeof out, BROKER_KEEPALIVE, STUN_SUCCESS, m.tid, false);
    stun_build_addr(&sb, STUN_ATTR_XOR_MAPPED_ADDRESS, from);
    stun_build_integrity(&sb, s->udp_key, sizeof s->udp_key);
    int n = stun_build_finish(&sb, NULL);
    if (n > 0) {
        uv_buf_t ob = uv_buf_init((char *)out, (unsigned)n);
        uv_udp_try_send(u, &ob, 1, from);
    }
}

/* ---- the clock: reaping and connect timeouts ---- */

static void on_tick(uv_timer_t *t)
{
    ntcp_broker *b = t->data;
    uint64_t now = uv_now(b->loop);
    while (b->new_head && b->new_head->last_ms + b->handshake_ms <= now) {
        b->st.reaped++;
        session_close(b->new_head, false);
    }
    uint64_t expiry = (uint64_t)b->expiry_s * 1000;
    while (b->reg_head && b->reg_head->last_ms + expiry <= now) {
        broker_logf(b, NTCP_LOG_DEBUG, "%s expired", b->reg_head->bind ? b->reg_head->bind->name : "?");
        b->st.reaped++;
        session_close(b->reg_head, false);
    }
    pending *p = b->pend_head;
    while (p) {
        if (p->deadline_ms > now) {
            p = p->next;
            continue;
        }
        /* A remote requester's node keeps its own deadline: nothing to say
         * to it. The walk restarts (see pending_fail). */
        pending_fail(b, p, BROKER_ERR_TIMEOUT, "Peer did not answer");
        p = b->pend_head;
    }
}

/* ---- start and stop ---- */

static void free_broker(ntcp_broker *b)
{
    OPENSSL_cleanse(b->ticket_key, sizeof b->ticket_key);
    while (b->vfree) {
        vjob *j = b->vfree;
        b->vfree = j->next_free;
        free(j);
    }
    while (b->pend_free) {
        pending *p = b->pend_free;
        b->pend_free = p->next;
        free(p);
    }
    bindings_free(b);
    free(b->src);
    free(b->authorized_keys);
    free(b->state_dir);
    free(b->broker_id);
    free(b->tls_cert);
    free(b->tls_key);
    SSL_CTX_free(b->tls_ctx);
    spoof_free(b);
    broker_turn_free(b);
    if (b->journal_fd >= 0)
        close(b->journal_fd);
    free(b);
}

/* libuv runs close callbacks in no promised order: the broker goes when
 * its own handles and every session are closed. */
static void maybe_free(ntcp_broker *b)
{
    if (b->open_handles > 0 || b->st.sessions > 0)
        return;
    void (*done)(void *) = b->done;
    void *arg = b->done_arg;
    free_broker(b);
    if (done)
        done(arg);
}

static void on_handle_closed(uv_handle_t *h)
{
    ntcp_broker *b = h->data;
    b->open_handles--;
    maybe_free(b);
}

void broker_set_ticket_key(ntcp_broker *b, const uint8_t key[TICKET_KEY_SIZE])
{
    memcpy(b->ticket_key, key, TICKET_KEY_SIZE);
    b->has_ticket_key = true;
}

void broker_handle_closed(ntcp_broker *b)
{
    if (b->stopping)
        maybe_free(b);
}

int ntcp_broker_start(uv_loop_t *loop, const ntcp_broker_config *cfg, ntcp_broker **out)
{
    *out = NULL;
    if (!loop || !cfg || !cfg->listen)
        return NTCP_EINVAL;
    struct sockaddr_storage tcp_addr, udp_addr;
    if (ntcp_parse_hostport(cfg->listen, &tcp_addr) < 0)
        return NTCP_ECONFIG;
    if (cfg->udp && ntcp_parse_hostport(cfg->udp, &udp_addr) < 0)
        return NTCP_ECONFIG;
    struct sockaddr_storage tls_addr;
    if (cfg->tls_listen && ntcp_parse_hostport(cfg->tls_listen, &tls_addr) < 0)
        return NTCP_ECONFIG;
    if (!cfg->tls_cert != !cfg->tls_key || (cfg->tls_listen && !cfg->tls_cert))
        return NTCP_ECONFIG; /* a certificate needs its key, a TLS port both */
    const char *id = cfg->broker_id ? cfg->broker_id : "ntcp-brokerd";
    if (strlen(id) == 0 || strlen(id) > BROKER_ID_MAX)
        return NTCP_ECONFIG;

    ntcp_broker *b = calloc(1, sizeof *b);
    if (!b)
        return NTCP_ENOMEM;
    b->loop = loop;
    b->journal_fd = -1;
    b->spoof_fd = -1;
    b->authorized_keys = dup_or_null(cfg->authorized_keys);
    b->state_dir = dup_or_null(cfg->state_dir);
    b->broker_id = strdup(id);
    b->broker_id_len = strlen(id);
    b->expiry_s = cfg->expiry_s ? cfg->expiry_s : 60;
    b->handshake_ms = cfg->handshake_ms ? cfg->handshake_ms : 10000;
    b->offer_timeout_ms = cfg->offer_timeout_ms ? cfg->offer_timeout_ms : 5000;
    b->start_margin_ms = cfg->start_margin_ms; /* 0: from the round trips */
    b->peer_rate = cfg->peer_rate ? cfg->peer_rate : 50;
    b->peer_burst = cfg->peer_burst ? cfg->peer_burst : 100;
    b->source_rate = cfg->source_rate ? cfg->source_rate : 100;
    b->source_burst = cfg->source_burst ? cfg->source_burst : 1000;
    b->max_sessions = cfg->max_sessions ? cfg->max_sessions : 1000000;
    b->log = cfg->log;
    b->log_user = cfg->log_user;
    b->ticket_lifetime_s = cfg->ticket_lifetime_s ? cfg->ticket_lifetime_s : 86400;
    if (cfg->ticket_key) {
        memcpy(b->ticket_key, cfg->ticket_key, TICKET_KEY_SIZE);
        b->has_ticket_key = true;
    } else if (!cfg->cluster) {
        /* This process's: tickets outlive a lost connection, not a restart. */
        b->has_ticket_key = RAND_bytes(b->ticket_key, TICKET_KEY_SIZE) == 1;
    }
    b->log_level = cfg->log ? (cfg->log_level ? cfg->log_level : NTCP_LOG_INFO) : -1;
    b->table_size = 1024;
    b->table = calloc(b->table_size, sizeof *b->table);
    int rc = NTCP_ENOMEM;
    if (!b->table || !b->broker_id || (cfg->authorized_keys && !b->authorized_keys) ||
        (cfg->state_dir && !b->state_dir))
        goto fail;
    if (b->source_rate > 0 && !(b->src = calloc(SRC_SETS * SRC_WAYS, sizeof *b->src)))
        goto fail;
    if ((rc = spoof_init(b, cfg->spoof)) < 0)
        goto fail;
    if ((rc = broker_turn_init(b, cfg->turn_server, cfg->turn_secret_file, cfg->turn_ttl_s)) < 0)
        goto fail;
    rc = NTCP_ENOMEM;
    if (RAND_bytes(b->hash_key, sizeof b->hash_key) != 1) {
        rc = NTCP_ESYS;
        goto fail;
    }
    /* With an authorized-keys file the file alone binds names; otherwise
     * the first registration does, remembered in the state dir. */
    if (b->authorized_keys) {
        if ((rc = keys_load_authorized(b, false)) < 0)
            goto fail;
    } else if (b->state_dir) {
        if ((rc = keys_load_state(b)) < 0) {
            broker_logf(b, NTCP_LOG_ERROR, "cannot use state dir %s", b->state_dir);
            goto fail;
        }
    }

    if (cfg->tls_cert) {
        char why[320];
        rc = NTCP_ENOMEM;
        if (!(b->tls_cert = strdup(cfg->tls_cert)) || !(b->tls_key = strdup(cfg->tls_key)))
            goto fail;
        if (!(b->tls_ctx = ntcp_tls_server_ctx(b->tls_cert, b->tls_key, why, sizeof why))) {
            broker_logf(b, NTCP_LOG_ERROR, "%s", why);
            rc = NTCP_ECONFIG;
            goto fail;
        }
        /* A certificate alone makes the one port TLS-only: whoever gives
         * one wants names and addresses kept private, not a plain port
         * left open beside it. A second port serves both, for migrations. */
        b->listen_tls = !cfg->tls_listen;
    }

    rc = NTCP_ESYS;
    if (uv_tcp_init(loop, &b->listener) < 0)
        goto fail;
    b->listener.data = b;
    b->open_handles++;
    int err = uv_tcp_bind(&b->listener, (struct sockaddr *)&tcp_addr, 0);
    if (err == 0)
        err = uv_listen((uv_stream_t *)&b->listener, 4096, on_connection);
    if (err == 0 && cfg->udp_on_listen) {
        /* The TCP port as bound (an ephemeral one when asked for port 0). */
        int len = sizeof udp_addr;
        err = uv_tcp_getsockname(&b->listener, (struct sockaddr *)&udp_addr, &len);
    }
    if (err == 0 && (cfg->udp || cfg->udp_on_listen)) {
        err = uv_udp_init(loop, &b->udp);
        if (err == 0) {
            b->udp.data = b;
            b->open_handles++;
            b->has_udp = true;
            err = uv_udp_bind(&b->udp, (struct sockaddr *)&udp_addr, 0);
            if (err == 0)
                err = uv_udp_recv_start(&b->udp, on_udp_alloc, on_udp);
        }
    }
    if (err == 0 && cfg->tls_listen) {
        err = uv_tcp_init(loop, &b->tls_listener);
        if (err == 0) {
            b->tls_listener.data = b;
            b->open_handles++;
            b->has_tls_listener = true;
            err = uv_tcp_bind(&b->tls_listener, (struct sockaddr *)&tls_addr, 0);
            if (err == 0)
                err = uv_listen((uv_stream_t *)&b->tls_listener, 4096, on_connection);
        }
    }
    if (err == 0) {
        err = uv_timer_init(loop, &b->timer);
        if (err == 0) {
            b->timer.data = b;
            b->open_handles++;
            b->has_timer = true;
            err = uv_timer_start(&b->timer, on_tick, TICK_MS, TICK_MS);
        }
    }
    if (err < 0) {
        broker_logf(b, NTCP_LOG_ERROR, "cannot listen: %s", uv_strerror(err));
        errno = -err;
        ntcp_broker_stop(b, NULL, NULL);
        return NTCP_ESYS;
    }
    if (cfg->cluster && (rc = cluster_start(b, cfg->cluster)) < 0) {
        ntcp_broker_stop(b, NULL, NULL);
        return rc;
    }
    char a[64], u[64] = "", t[80] = "";
    struct sockaddr_storage bound;
    if (ntcp_broker_tcp_addr(b, &bound) == 0)
        ntcp_addr_str((struct sockaddr *)&bound, a, sizeof a);
    else
        ntcp_addr_str((struct sockaddr *)&tcp_addr, a, sizeof a);
    if (b->has_udp && ntcp_broker_udp_addr(b, &bound) == 0)
        ntcp_addr_str((struct sockaddr *)&bound, u, sizeof u);
    if (b->has_tls_listener && ntcp_broker_tls_addr(b, &bound) == 0) {
        char ta[64];
        snprintf(t, sizeof t, ", %s (TLS)", ntcp_addr_str((struct sockaddr *)&bound, ta, sizeof ta));
    }
    broker_logf(b, NTCP_LOG_INFO, "listening on %s (%s)%s%s%s, id \"%s\", expiry %us%s", a,
                b->listen_tls ? "TLS" : "TCP", t, b->has_udp ? " and UDP " : "", u, b->broker_id,
                b->expiry_s, b->authorized_keys ? ", authorized keys only" : "");
    *out = b;
    return 0;
fail:
    free_broker(b);
    return rc;
}

int ntcp_broker_reload(ntcp_broker *b)
{
    int rc = b->authorized_keys ? keys_load_authorized(b, true) : 0;
    if (b->tls_ctx) {
        /* Sessions hold their own reference to the context they began with:
         * the old one goes when the last of them does. */
        char why[320];
        SSL_CTX *fresh = ntcp_tls_server_ctx(b->tls_cert, b->tls_key, why, sizeof why);
        if (fresh) {
            SSL_CTX_free(b->tls_ctx);
            b->tls_ctx = fresh;
            broker_logf(b, NTCP_LOG_INFO, "TLS certificate reloaded from %s", b->tls_cert);
        } else {
            broker_logf(b, NTCP_LOG_ERROR, "%s; the previous certificate stays", why);
            if (rc == 0)
                rc = NTCP_ECONFIG;
        }
    }
    return rc;
}

void ntcp_broker_get_stats(const ntcp_broker *b, ntcp_broker_stats *st)
{
    *st = b->st;
    st->cluster_up = cluster_up(b);
}

int ntcp_broker_tcp_addr(const ntcp_broker *b, struct sockaddr_storage *out)
{
    int len = sizeof *out;
    return uv_tcp_getsockname(&b->listener, (struct sockaddr *)out, &len) == 0 ? 0 : NTCP_ESYS;
}

int ntcp_broker_tls_addr(const ntcp_broker *b, struct sockaddr_storage *out)
{
    if (!b->tls_ctx)
        return NTCP_ENOTFOUND;
    const uv_tcp_t *l = b->has_tls_listener ? &b->tls_listener : &b->listener;
    int len = sizeof *out;
    return uv_tcp_getsockname(l, (struct sockaddr *)out, &len) == 0 ? 0 : NTCP_ESYS;
}

int ntcp_broker_udp_addr(const ntcp_broker *b, struct sockaddr_storage *out)
{
    if (!b->has_udp)
        return NTCP_ENOTFOUND;
    int len = sizeof *out;
    return uv_udp_getsockname(&b->udp, (struct sockaddr *)out, &len) == 0 ? 0 : NTCP_ESYS;
}

void ntcp_broker_stop(ntcp_broker *b, void (*done)(void *arg), void *arg)
{
    if (b->stopping)
        return;
    b->stopping = true;
    b->done = done;
    b->done_arg = arg;
    while (b->pend_head)
        pending_free(b, b->pend_head);
    while (b->new_head)
        session_close(b->new_head, false);
    while (b->reg_head)
        session_close(b->reg_head, false);
    cluster_stop(b);
    /* Sessions close on their own; the broker goes once its handles have. */
    uv_close((uv_handle_t *)&b->listener, on_handle_closed);
    if (b->has_tls_listener)
        uv_close((uv_handle_t *)&b->tls_listener, on_handle_closed);
    if (b->has_udp)
        uv_close((uv_handle_t *)&b->udp, on_handle_closed);
    if (b->has_timer)
        uv_close((uv_handle_t *)&b->timer, on_handle_closed);
}
