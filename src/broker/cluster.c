/*
 * cluster.c: the broker as one node of a cluster that shares its state in
 * Redis (ntcp-brokerd --cluster redis://HOST:PORT[/DB], docs/cluster.md):
 * registrations as keys whose TTL is the expiry, first-use name bindings,
 * lookups of peers on other nodes, and connects between nodes over pub/sub.
 * hiredis's libuv adapter runs it on the broker's loop, without threads.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "addr.h"
#include "broker_int.h"
#include "ntcp.h"
#include "session.h"

/* Cluster-only attributes, in the broker's comprehension-required range
 * (never sent to peers: a peer that got one would answer 420). */
#define CL_ATTR_NODE 0x4E38   /* the sending node's id, 16 hex digits */
#define CL_ATTR_REF 0x4E39    /* 8 bytes: the requester's node's number for a connect */
#define CL_ATTR_TARGET 0x4E3A /* the target's name */
#define CL_ATTR_DELAY 0x4E3B  /* u32 us: the sending node's half round trip to Redis */
#define CL_ATTR_SERIAL 0x4E3C /* 8 bytes: a registration on its node */

#define TICK_MS 250
#define PING_MS 1000
/* hiredis's libuv adapter ignores a poll error (a refused connect, a reset
 * connection): the context then waits forever. A context not ready this
 * long after it began is dropped and made again; so is one whose PING, or
 * our own heartbeat on the subscription, is not back after STALL_MS (long:
 * a PING waits behind every command queued before it, thousands in a
 * registration storm). */
#define STUCK_MS 2000
#define STALL_MS 10000
#define HEARTBEAT "ntcp-heartbeat"
#define PREFIX_LEN 32 /* record: node id (16 hex) + serial (16 hex) + message */

typedef struct cluster cluster;

enum { CTX_CMD = 0, CTX_SUB = 1 };

/* A remote requester's data, kept for the target's GO. */
struct cl_remote {
    broker_peer_info info;
    uint8_t profile[BROKER_PROFILE_MAX];
};

struct cluster {
    ntcp_broker *b;
    char ip[64];
    int port, db;
    char node[17];
    char chan[40];
    redisAsyncContext *ctx[2];
    bool open[2];      /* a context exists (counted in b->open_handles) */
    bool ready[2];     /* connected; the command one has its db, the other subscribed */
    bool was_up;
    bool logged_down;
    uv_timer_t timer;
    uint64_t started_ms[2]; /* when the context began connecting */
    uint64_t ping_sent_us, last_ping_ms;
    uint64_t heard_ms;      /* our own heartbeat last came back on the subscription */
    uint32_t rtt_us;   /* smoothed round trip to Redis (PING) */
    uint64_t next_ref;
};

/* ---- small helpers ---- */

static uint64_t now_us(void)
{
    return uv_hrtime() / 1000;
}

static void put_u64(uint8_t out[8], uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)v;
}

static uint64_t get_u64(const uint8_t in[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | in[i];
    return v;
}

/* n lowercase hex digits, as node ids and serials are written. */
static bool hex_digits(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!v[i] || !strchr("0123456789abcdef", v[i]))
            return false;
    return true;
}

/* The sending node's id in a message from another node (a NUL or any other
 * byte would name no node, or worse the "" of an end on this one). */
static bool get_node(const stun_msg *m, char node[17])
{
    const char *v;
    size_t len;
    if (stun_get_string(m, CL_ATTR_NODE, &v, &len) < 0 || len != 16 || !hex_digits(v, 16))
        return false;
    memcpy(node, v, 16);
    node[16] = '\0';
    return true;
}

bool cluster_up(const ntcp_broker *b)
{
    return b->cl && b->cl->ready[CTX_CMD] && b->cl->ready[CTX_SUB];
}

uint64_t cluster_rtt_us(const ntcp_broker *b)
{
    return b->cl ? b->cl->rtt_us : 0;
}

/* A command on the command connection; false when Redis is not there (the
 * callback is then not called). */
static bool command(cluster *c, redisCallbackFn *fn, void *priv, int argc, const char **argv,
                    const size_t *lens)
{
    if (!c->ready[CTX_CMD])
        return false;
    return redisAsyncCommandArgv(c->ctx[CTX_CMD], fn, priv, argc, argv, lens) == REDIS_OK;
}

static int reg_key(char *out, size_t cap, const char *name)
{
    return snprintf(out, cap, "ntcp:reg:%s", name);
}

static void publish(cluster *c, const char *node, const uint8_t *msg, size_t len,
                    redisCallbackFn *fn, void *priv)
{
    char chan[40];
    snprintf(chan, sizeof chan, "ntcp:node:%s", node);
    const char *argv[3] = {"PUBLISH", chan, (const char *)msg};
    size_t lens[3] = {7, strlen(chan), len};
    if (!command(c, fn, priv, 3, argv, lens))
        free(priv);
}

/* ---- the registration record ---- */

/* node id + serial + a LOOKUP answer of the peer: what another node serves. */
static int record(cluster *c, bsession *s, const char *name, const uint8_t key[BROKER_KEY_SIZE],
                  uint8_t *out, size_t cap)
{
    char prefix[PREFIX_LEN + 1];
    snprintf(prefix, sizeof prefix, "%s%016llx", c->node, (unsigned long long)s->serial);
    memcpy(out, prefix, PREFIX_LEN);
    uint8_t tid[STUN_TID_SIZE] = {0};
    stun_builder sb;
    broker_peer_info info;
    session_info(s, &info);
    /* Before registration completes the session has no binding yet. */
    snprintf(info.name, sizeof info.name, "%s", name);
    memcpy(info.public_key, key, BROKER_KEY_SIZE);
    info.has_public_key = true;
    stun_build_init(&sb, out + PREFIX_LEN, cap - PREFIX_LEN, BROKER_LOOKUP, STUN_SUCCESS, tid, false);
    broker_build_peer_info(&sb, &info);
    int n = stun_build_finish(&sb, NULL);
    return n > 0 ? n + PREFIX_LEN : n;
}

/* Parses a record as read from Redis: node id and the peer's data (profile
 * pointing into rec). Anything malformed is refused, whoever wrote it. */
static int parse_record(const char *rec, size_t len, char node[17], stun_msg *m, broker_peer_info *p)
{
    if (len < PREFIX_LEN + STUN_HEADER_SIZE || !hex_digits(rec, PREFIX_LEN))
        return NTCP_EINVAL;
    memcpy(node, rec, 16);
    node[16] = '\0';
    uint16_t unknown[STUN_MAX_UNKNOWN];
    size_t nunknown;
    if (stun_parse(m, (const uint8_t *)rec + PREFIX_LEN, len - PREFIX_LEN) < 0 || m->rfc3489 ||
        broker_validate(m, unknown, STUN_MAX_UNKNOWN, &nunknown) < 0 ||
        broker_parse_peer_info(m, p) < 0 || !p->has_public_key)
        return NTCP_EINVAL;
    return 0;
}

/* Rewrites the record (its data changed, or Redis came back). */
void cluster_publish(bsession *s, bool took_over)
{
    ntcp_broker *b = s->b;
    cluster *c = b->cl;
    (void)took_over;
    if (!c || !s->bind || !cluster_up(b))
        return; /* written again when Redis is back (republish) */
    uint8_t val[PREFIX_LEN + BROKER_MAX_MESSAGE];
    int n = record(c, s, s->bind->name, s->bind->key, val, sizeof val);
    if (n < 0)
        return;
    char key[96], px[24];
    reg_key(key, sizeof key, s->bind->name);
    snprintf(px, sizeof px, "%llu", (unsigned long long)b->expiry_s * 1000);
    const char *argv[5] = {"SET", key, (const char *)val, "PX", px};
    size_t lens[5] = {3, strlen(key), (size_t)n, 2, strlen(px)};
    command(c, NULL, NULL, 5, argv, lens);
}

/* A registration replaced the record old (a reply): the node that holds
 * that older session of the name is told to end it. The newest wins,
 * across nodes as on one. */
static void tell_replaced(cluster *c, const redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_STRING || reply->len < PREFIX_LEN)
        return;
    char node[17], serial[17];
    memcpy(node, reply->str, 16);
    node[16] = '\0';
    memcpy(serial, reply->str + 16, 16);
    serial[16] = '\0';
    if (strcmp(node, c->node) == 0)
        return; /* a session here, already replaced locally */
    stun_msg m;
    broker_peer_info p;
    char n2[17];
    if (parse_record(reply->str, reply->len, n2, &m, &p) < 0)
        return;
    uint8_t buf[256], tid[STUN_TID_SIZE], ser[8];
    stun_new_tid(tid);
    put_u64(ser, strtoull(serial, NULL, 16));
    stun_builder sb;
    stun_build_init(&sb, buf, sizeof buf, BROKER_UNREGISTER, STUN_INDICATION, tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, p.name, strlen(p.name));
    stun_build_attr(&sb, CL_ATTR_SERIAL, ser, sizeof ser);
    stun_build_attr(&sb, CL_ATTR_NODE, c->node, 16);
    int len = stun_build_finish(&sb, NULL);
    if (len > 0)
        publish(c, node, buf, (size_t)len, NULL, NULL);
}

void cluster_touch(bsession *s)
{
    ntcp_broker *b = s->b;
    if (!b->cl || !s->bind || !cluster_up(b))
        return;
    char key[96], px[24];
    reg_key(key, sizeof key, s->bind->name);
    snprintf(px, sizeof px, "%llu", (unsigned long long)b->expiry_s * 1000);
    const char *argv[3] = {"PEXPIRE", key, px};
    size_t lens[3] = {7, strlen(key), strlen(px)};
    command(b->cl, NULL, NULL, 3, argv, lens);
}

/* Removes the record only while it is still this session's: a newer
 * registration, here or elsewhere, has replaced the prefix. */
static const char forget_script[] =
    "local v = redis.call('GET', KEYS[1]) "
    "if v and string.sub(v, 1, 32) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
    "return 0";

void cluster_forget(bsession *s)
{
    ntcp_broker *b = s->b;
    cluster *c = b->cl;
    if (!c || !s->bind || !cluster_up(b))
        return;
    char key[96], prefix[PREFIX_LEN + 1];
    reg_key(key, sizeof key, s->bind->name);
    snprintf(prefix, sizeof prefix, "%s%016llx", c->node, (unsigned long long)s->serial);
    const char *argv[5] = {"EVAL", forget_script, "1", key, prefix};
    size_t lens[5] = {4, strlen(forget_script), 1, strlen(key), PREFIX_LEN};
    command(c, NULL, NULL, 5, argv, lens);
}

/* ---- first-use bindings ---- */

/* One step, atomic: the name's key (set by the first registration anywhere
 * in the cluster; not checked with authorized keys, ARGV[4] = "0"), then
 * the registration record with the expiry as TTL. Returns {1, the record
 * replaced or false} or {0} when the name is bound to another key. The
 * peer is told it is registered only after this: by then every node can
 * find it. */
static const char bind_script[] =
    "if ARGV[4] == '1' then "
    "  local v = redis.call('GET', KEYS[1]) "
    "  if v == false then redis.call('SET', KEYS[1], ARGV[1]) "
    "  elseif v ~= ARGV[1] then return {0} end "
    "end "
    "local old = redis.call('GET', KEYS[2]) "
    "redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) "
    "return {1, old}";

typedef struct bind_req {
    bsession *s;
    uint8_t tid[STUN_TID_SIZE];
    uint8_t key[BROKER_KEY_SIZE];
    char name[BROKER_NAME_MAX + 1];
    bool republish; /* a live registration checked again after an outage */
} bind_req;

static void on_bound(redisAsyncContext *ac, void *r, void *priv)
{
    (void)ac;
    bind_req *q = priv;
    redisReply *reply = r;
    bsession *s = q->s;
    redisReply *verdict = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1
                              ? reply->element[0]
                              : NULL;
    int code = !verdict || verdict->type != REDIS_REPLY_INTEGER ? BROKER_ERR_FULL
               : verdict->integer == 1                         ? 0
                                                               : BROKER_ERR_CONFLICT;
    if (code == 0 && reply->elements >= 2 && !q->republish && s->b->cl)
        tell_replaced(s->b->cl, reply->element[1]);
    if (q->republish) {
        broker_logf(s->b, NTCP_LOG_DEBUG, "cluster: %s written again: %s", q->name,
                    code == 0 ? "yes" : code == BROKER_ERR_CONFLICT ? "bound to another key" : "no answer");
        if (!s->dead && s->state == S_REGISTERED && code == BROKER_ERR_CONFLICT)
            notify_ended(s, BROKER_ERR_CONFLICT, "Name bound to another key");
    } else if (!s->dead) {
        register_verdict(s, q->name, q->key, q->tid, code);
    }
    session_unref(s);
    free(q);
}

static bool bind_name(bsession *s, const char *name, const uint8_t key[BROKER_KEY_SIZE],
                      const uint8_t *tid, bool republish)
{
    ntcp_broker *b = s->b;
    cluster *c = b->cl;
    if (!republish)
        s->serial = ++b->next_serial; /* the record names this registration */
    uint8_t val[PREFIX_LEN + BROKER_MAX_MESSAGE];
    int n = record(c, s, name, key, val, sizeof val);
    bind_req *q = n > 0 ? calloc(1, sizeof *q) : NULL;
    if (!q)
        return false;
    q->s = s;
    q->republish = republish;
    if (tid)
        memcpy(q->tid, tid, STUN_TID_SIZE);
    memcpy(q->key, key, BROKER_KEY_SIZE);
    snprintf(q->name, sizeof q->name, "%s", name);
    char bkey[96], rkey[96], px[24];
    snprintf(bkey, sizeof bkey, "ntcp:bind:%s", name);
    reg_key(rkey, sizeof rkey, name);
    snprintf(px, sizeof px, "%llu", (unsigned long long)b->expiry_s * 1000);
    const char *check = b->authorized_keys ? "0" : "1";
    const char *argv[9] = {"EVAL", bind_script, "2", bkey, rkey, (const char *)key,
                           (const char *)val, px, check};
    size_t lens[9] = {4, strlen(bind_script), 1, strlen(bkey), strlen(rkey), BROKER_KEY_SIZE,
                      (size_t)n, strlen(px), 1};
    if (!command(c, on_bound, q, 9, argv, lens)) {
        free(q);
        return false;
    }
    s->refs++;
    return true;
}

bool cluster_bind(bsession *s, const char *name, const uint8_t key[BROKER_KEY_SIZE],
                  const uint8_t tid[STUN_TID_SIZE])
{
    return cluster_up(s->b) && bind_name(s, name, key, tid, false);
}

/* ---- lookups and connects of peers on other nodes ---- */

typedef struct find_req {
    bsession *s;
    uint16_t method;
    uint8_t tid[STUN_TID_SIZE];
    uint32_t transport, timeout;
} find_req;

static void answer_unavailable(bsession *s, uint16_t method, const uint8_t *tid)
{
    answer_error(s, method, tid, BROKER_ERR_FULL, "Cluster state unavailable");
}

static void connect_remote(bsession *s, find_req *q, const char *node, const char *target);

static void on_found(redisAsyncContext *ac, void *r, void *priv)
{
    ntcp_broker *b = ac->data;
    find_req *q = priv;
    redisReply *reply = r;
    bsession *s = q->s;
    if (s->dead || s->state != S_REGISTERED || !b->cl) {
        session_unref(s);
        free(q);
        return;
    }
    char node[17];
    stun_msg m;
    broker_peer_info p;
    bool cl_ok = reply && reply->type != REDIS_REPLY_ERROR;
    bool found = reply && reply->type == REDIS_REPLY_STRING &&
                 parse_record(reply->str, (size_t)reply->len, node, &m, &p) == 0 &&
                 strcmp(node, b->cl->node) != 0; /* ours but not live: stale */
    if (!cl_ok) {
        answer_unavailable(s, q->method, q->tid);
    } else if (!found) {
        if (q->method == BROKER_CONNECT)
            b->st.connects_failed++;
        answer_error(s, q->method, q->tid, BROKER_ERR_UNKNOWN_USER, "Unknown user");
    } else if (q->method == BROKER_LOOKUP) {
        uint8_t buf[BROKER_MAX_MESSAGE];
        stun_builder sb;
        stun_build_init(&sb, buf, sizeof buf, BROKER_LOOKUP, STUN_SUCCESS, q->tid, false);
        broker_build_peer_info(&sb, &p); /* re-encoded from what was checked */
        int n = stun_build_finish(&sb, NULL);
        if (n > 0)
            broker_send(s, buf, (size_t)n);
    } else {
        connect_remote(s, q, node, p.name);
    }
    session_unref(s);
    free(q);
}

static bool find(bsession *s, const stun_msg *m, const char *name, uint32_t transport, uint32_t timeout)
{
    ntcp_broker *b = s->b;
    if (!b->cl)
        return false;
    if (!cluster_up(b)) {
        answer_unavailable(s, m->method, m->tid);
        return true;
    }
    find_req *q = calloc(1, sizeof *q);
    if (!q) {
        answer_error(s, m->method, m->tid, BROKER_ERR_SERVER, "Out of memory");
        return true;
    }
    q->s = s;
    q->method = m->method;
    memcpy(q->tid, m->tid, STUN_TID_SIZE);
    q->transport = transport;
    q->timeout = timeout;
    char key[96];
    reg_key(key, sizeof key, name);
    const char *argv[2] = {"GET", key};
    size_t lens[2] = {3, strlen(key)};
    if (!command(b->cl, on_found, q, 2, argv, lens)) {
        free(q);
        answer_unavailable(s, m->method, m->tid);
        return true;
    }
    s->refs++;
    return true;
}

bool cluster_lookup(bsession *s, const stun_msg *m, const char *name)
{
    return find(s, m, name, 0, 0);
}

bool cluster_connect(bsession *s, const stun_msg *m, const char *name, uint32_t transport,
                     uint32_t timeout)
{
    if (find(s, m, name, transport, timeout))
        return true;
    answer_error(s, m->method, m->tid, BROKER_ERR_UNKNOWN_USER, "Unknown user");
    return false;
}

static pending *by_ref(ntcp_broker *b, uint64_t ref)
{
    for (pending *p = b->pend_head; p; p = p->next)
        if (p->req && !p->tgt && p->ref == ref)
            return p;
    return NULL;
}

/* The PUBLISH reached nobody: the target's node is gone (its records
 * outlive it until they expire). */
static void on_offer_published(redisAsyncContext *ac, void *r, void *priv)
{
    ntcp_broker *b = ac->data;
    uint64_t *ref = priv;
    redisReply *reply = r;
    pending *p = b->cl ? by_ref(b, *ref) : NULL;
    if (p && (!reply || reply->type != REDIS_REPLY_INTEGER || reply->integer == 0))
        pending_fail(b, p, BROKER_ERR_GONE, "Peer gone");
    free(ref);
}

static void connect_remote(bsession *s, find_req *q, const char *node, const char *target)
{
    ntcp_broker *b = s->b;
    cluster *c = b->cl;
    if (s->npending >= 64) {
        b->st.rate_limited++;
        answer_error(s, BROKER_CONNECT, q->tid, BROKER_ERR_RATE_LIMITED, "Too many connects pending");
        return;
    }
    pending *p = pending_new(b);
    uint64_t *ref = malloc(sizeof *ref);
    if (!p || !ref) {
        free(p);
        free(ref);
        answer_error(s, BROKER_CONNECT, q->tid, BROKER_ERR_SERVER, "Out of memory");
        return;
    }
    p->req = s;
    p->ref = *ref = ++c->next_ref;
    p->transport = q->transport;
    snprintf(p->node, sizeof p->node, "%s", node);
    memcpy(p->req_tid, q->tid, STUN_TID_SIZE);
    p->deadline_ms = uv_now(b->loop) + q->timeout;
    s->npending++;
    pending_link(b, p);

    uint8_t buf[BROKER_MAX_MESSAGE], tid[STUN_TID_SIZE], rb[8];
    stun_new_tid(tid);
    put_u64(rb, p->ref);
    stun_builder sb;
    broker_peer_info info;
    session_info(s, &info);
    stun_build_init(&sb, buf, sizeof buf, BROKER_OFFER, STUN_REQUEST, tid, false);
    broker_build_peer_info(&sb, &info);
    stun_build_u32(&sb, BROKER_ATTR_TIMEOUT, q->timeout);
    if (q->transport != BROKER_TRANSPORT_TCP)
        stun_build_u32(&sb, BROKER_ATTR_TRANSPORT, q->transport);
    stun_build_u32(&sb, BROKER_ATTR_RTT, session_rtt(s));
    stun_build_attr(&sb, CL_ATTR_TARGET, target, strlen(target));
    stun_build_attr(&sb, CL_ATTR_NODE, c->node, 16);
    stun_build_attr(&sb, CL_ATTR_REF, rb, sizeof rb);
    stun_build_u32(&sb, CL_ATTR_DELAY, c->rtt_us / 2);
    broker_turn_build_server(b, &sb); /* the relay, if the target's node has the same */
    int n = stun_build_finish(&sb, NULL);
    if (n < 0) {
        free(ref);
        return; /* times out as 408 */
    }
    publish(c, node, buf, (size_t)n, on_offer_published, ref);
}

/* At the target's node: the answer to a remote requester's offer. */
void cluster_answer(ntcp_broker *b, pending *p, int code, bsession *t)
{
    cluster *c = b->cl;
    if (!c || !p->node[0])
        return;
    uint8_t buf[BROKER_MAX_MESSAGE], rb[8];
    put_u64(rb, p->ref);
    stun_builder sb;
    uint8_t tid[STUN_TID_SIZE];
    stun_new_tid(tid);
    if (code) {
        stun_build_init(&sb, buf, sizeof buf, BROKER_OFFER, STUN_ERROR, tid, false);
        broker_build_error(&sb, code, code == BROKER_ERR_DECLINED ? "Declined" : "Peer gone");
        stun_build_attr(&sb, CL_ATTR_REF, rb, sizeof rb);
        int n = stun_build_finish(&sb, NULL);
        if (n > 0)
            publish(c, p->node, buf, (size_t)n, NULL, NULL);
        return;
    }
    uint8_t nonce[BROKER_NONCE_SIZE];
    if (RAND_bytes(nonce, sizeof nonce) != 1)
        return; /* the requester times out */
    /* CONNECT-GO's timing across two nodes: the target's GO leaves now (T)
     * and arrives at T + rt/2; the requester's leaves its node when this
     * answer gets there, about d later (this node's half trip to Redis and
     * the requester's node's), and arrives at T + d + rr/2. Both start at
     * S, when the later of them has arrived, plus the margin. */
    uint32_t rt = session_rtt(t), rr = p->req_rtt_us;
    uint64_t d = (uint64_t)c->rtt_us / 2 + p->node_delay_us;
    uint64_t at_t = rt / 2, at_r = d + rr / 2;
    uint64_t s_us = (at_t > at_r ? at_t : at_r) +
                    (uint64_t)start_margin(b, rr > rt ? rr : rt) * 1000;
    uint32_t dt = (uint32_t)((s_us - at_t + 999) / 1000);
    uint32_t dr = (uint32_t)((s_us - at_r + 999) / 1000);

    broker_peer_info info;
    session_info(t, &info);
    stun_build_init(&sb, buf, sizeof buf, BROKER_OFFER, STUN_SUCCESS, tid, false);
    broker_build_peer_info(&sb, &info);
    stun_build_attr(&sb, BROKER_ATTR_SESSION_NONCE, nonce, sizeof nonce);
    stun_build_u32(&sb, BROKER_ATTR_START_DELAY, dr);
    stun_build_attr(&sb, CL_ATTR_REF, rb, sizeof rb);
    /* The relay: offered by both nodes (the same TURN server), each minting
     * its own end's credentials, or by neither. Our TURN-SERVER here tells
     * the requester's node that this GO carries them. */
    if (p->relay)
        broker_turn_build_server(b, &sb);
    int n = stun_build_finish(&sb, NULL);
    if (n > 0)
        publish(c, p->node, buf, (size_t)n, NULL, NULL);

    /* The target's GO, as for a requester here (the requester's data came
     * with the offer and is in the OFFER the target accepted; the GO
     * carries it again). */
    if (!p->remote)
        return;
    broker_peer_info ri = p->remote->info;
    ri.profile = ri.profile_len ? p->remote->profile : NULL;
    send_go(t, NULL, &ri, nonce, dt, rt, p->transport, p->relay);
    /* For RAW-ISN (TCP) and RELAY-ADDR (TCP, UDP) across the nodes; not
     * for a session a failed send just closed (it forgot its connects). */
    if (t->state == S_REGISTERED)
        rdv_add_remote(b, t, 1, p->node, nonce);
}

/* An end's indication for the other end of its connect, to that end's
 * node: begun here, the caller's attributes, then our node id, which the
 * other node checks against the connect it remembers. */
static void begin_for_end(stun_builder *sb, uint8_t *buf, size_t cap, uint16_t method)
{
    uint8_t tid[STUN_TID_SIZE];
    stun_new_tid(tid);
    stun_build_init(sb, buf, cap, method, STUN_INDICATION, tid, false);
}

static void publish_for_end(cluster *c, const char *node, stun_builder *sb)
{
    stun_build_attr(sb, CL_ATTR_NODE, c->node, 16);
    int n = stun_build_finish(sb, NULL);
    if (n > 0)
        publish(c, node, sb->buf, (size_t)n, NULL, NULL);
}

void cluster_raw_isn(ntcp_broker *b, const char *node, const uint8_t nonce[BROKER_NONCE_SIZE],
                     const struct sockaddr_storage *ext, uint32_t isn, bool spoof)
{
    cluster *c = b->cl;
    if (!c)
        return;
    uint8_t buf[256];
    stun_builder sb;
    begin_for_end(&sb, buf, sizeof buf, BROKER_RAW_ISN);
    stun_build_attr(&sb, BROKER_ATTR_SESSION_NONCE, nonce, BROKER_NONCE_SIZE);
    broker_addr ba;
    broker_addr_from_sa(&ba, (const struct sockaddr *)ext);
    broker_build_baddr(&sb, BROKER_ATTR_PUBLIC_ADDR, &ba);
    stun_build_u32(&sb, BROKER_ATTR_ISN, isn);
    if (spoof)
        stun_build_u32(&sb, BROKER_ATTR_SPOOF, 1);
    publish_for_end(c, node, &sb);
}

/* At the other end's node: its RAW-ISN. */
static void on_remote_raw_isn(ntcp_broker *b, const stun_msg *m)
{
    uint8_t nonce[BROKER_NONCE_SIZE];
    struct sockaddr_storage ext;
    uint32_t isn, spoof = 0;
    char from[17];
    if (broker_get_fixed(m, BROKER_ATTR_SESSION_NONCE, nonce, sizeof nonce) < 0 ||
        broker_get_addr(m, BROKER_ATTR_PUBLIC_ADDR, &ext) < 0 || ext.ss_family != AF_INET ||
        stun_get_u32(m, BROKER_ATTR_ISN, &isn) < 0 || !get_node(m, from))
        return;
    stun_get_u32(m, BROKER_ATTR_SPOOF, &spoof);
    rdv_remote_isn(b, from, nonce, &ext, isn, spoof == 1);
}

void cluster_relay_addr(ntcp_broker *b, const char *node, const broker_relay_addr *ra)
{
    cluster *c = b->cl;
    if (!c)
        return;
    uint8_t buf[384];
    stun_builder sb;
    begin_for_end(&sb, buf, sizeof buf, BROKER_RELAY_ADDR);
    broker_build_relay_addr(&sb, ra);
    publish_for_end(c, node, &sb);
}

/* At the other end's node: its RELAY-ADDR, which its node took from a
 * party to that connect. It goes to our end of the connect the nonce names,
 * and only when that connect's other end is at the sending node. */
static void on_remote_relay_addr(ntcp_broker *b, const stun_msg *m)
{
    broker_relay_addr ra;
    char from[17];
    if (broker_parse_relay_addr(m, &ra) < 0 || !get_node(m, from))
        return;
    bsession *to = rdv_remote_end(b, from, ra.nonce);
    if (to)
        relay_addr_send(to, &ra);
    else
        broker_logf(b, NTCP_LOG_DEBUG, "cluster: RELAY-ADDR for no connect here: dropped");
}

/* ---- messages from other nodes ---- */

static bool get_ref(const stun_msg *m, uint64_t *ref)
{
    uint8_t rb[8];
    if (broker_get_fixed(m, CL_ATTR_REF, rb, sizeof rb) < 0)
        return false;
    *ref = get_u64(rb);
    return true;
}

/* At the target's node: a remote requester's offer. */
static void on_remote_offer(ntcp_broker *b, const stun_msg *m)
{
    broker_peer_info from;
    const char *tname;
    size_t tlen;
    char node[17];
    uint64_t ref;
    uint32_t timeout = 0, rtt = 0, delay = 0, transport = BROKER_TRANSPORT_TCP;
    if (broker_parse_peer_info(m, &from) < 0 || !get_ref(m, &ref) ||
        stun_get_string(m, CL_ATTR_TARGET, &tname, &tlen) < 0 || !broker_name_valid(tname, tlen) ||
        !get_node(m, node) || stun_get_u32(m, BROKER_ATTR_TIMEOUT, &timeout) < 0)
        return;
    stun_get_u32(m, BROKER_ATTR_RTT, &rtt);
    stun_get_u32(m, CL_ATTR_DELAY, &delay);
    stun_get_u32(m, BROKER_ATTR_TRANSPORT, &transport);
    if (transport > BROKER_TRANSPORT_UDP || delay > 10000000 || rtt > 60000000)
        return;
    if (timeout == 0 || timeout > b->offer_timeout_ms)
        timeout = b->offer_timeout_ms;
    pending tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.ref = ref;
    memcpy(tmp.node, node, 16);
    binding *x = binding_find(b, tname, tlen);
    bsession *t = x ? x->live : NULL;
    if (!t || t->npending >= 64) {
        cluster_answer(b, &tmp, BROKER_ERR_GONE, NULL);
        return;
    }
    if (transport == BROKER_TRANSPORT_UDP && !b->has_udp) {
        cluster_answer(b, &tmp, BROKER_ERR_NO_UDP, NULL);
        return;
    }
    pending *p = pending_new(b);
    struct cl_remote *rem = malloc(sizeof *rem);
    if (!p || !rem) {
        free(p);
        free(rem);
        return;
    }
    *p = tmp;
    p->tgt = t;
    p->transport = transport;
    p->relay = broker_turn_agrees(b, m);
    p->req_rtt_us = rtt;
    p->node_delay_us = delay;
    rem->info = from;
    if (from.profile_len)
        memcpy(rem->profile, from.profile, from.profile_len);
    rem->info.profile = NULL;
    p->remote = rem;
    stun_new_tid(p->offer_tid);
    p->deadline_ms = uv_now(b->loop) + timeout;
    t->npending++;
    pending_link(b, p);
    send_offer(t, &from, p, timeout);
}

/* At the requester's node: the target's node answered. */
static void on_remote_answer(ntcp_broker *b, const stun_msg *m)
{
    uint64_t ref;
    if (!get_ref(m, &ref))
        return;
    pending *p = by_ref(b, ref);
    if (!p)
        return; /* timed out already */
    bsession *r = p->req;
    uint8_t tid[STUN_TID_SIZE];
    memcpy(tid, p->req_tid, sizeof tid);
    uint32_t transport = p->transport;
    if (m->cls == STUN_ERROR) {
        int code = 0;
        broker_get_error(m, &code, NULL, NULL);
        pending_fail(b, p,
                     code == BROKER_ERR_DECLINED || code == BROKER_ERR_NO_UDP ? code : BROKER_ERR_GONE,
                     code == BROKER_ERR_DECLINED ? "Declined"
                     : code == BROKER_ERR_NO_UDP ? "No UDP at the target's broker"
                                                 : "Peer gone");
        return;
    }
    broker_peer_info info;
    uint8_t nonce[BROKER_NONCE_SIZE];
    uint32_t delay;
    if (broker_parse_peer_info(m, &info) < 0 ||
        broker_get_fixed(m, BROKER_ATTR_SESSION_NONCE, nonce, sizeof nonce) < 0 ||
        stun_get_u32(m, BROKER_ATTR_START_DELAY, &delay) < 0 || delay > 60000)
        return;
    char node[17];
    memcpy(node, p->node, sizeof node);
    pending_free(b, p);
    /* The relay when the target's node gave its end one too (same server). */
    send_go(r, tid, &info, nonce, delay, session_rtt(r), transport, broker_turn_agrees(b, m));
    b->st.connects_ok++;
    if (r->state == S_REGISTERED)
        rdv_add_remote(b, r, 0, node, nonce); /* RAW-ISN, RELAY-ADDR across the nodes */
}

/* A newer registration of a name took over on another node. */
static void on_remote_ended(ntcp_broker *b, const stun_msg *m)
{
    char name[BROKER_NAME_MAX + 1];
    uint8_t sb[8];
    if (broker_get_name(m, name) < 0 || broker_get_fixed(m, CL_ATTR_SERIAL, sb, sizeof sb) < 0)
        return;
    binding *x = binding_find(b, name, strlen(name));
    bsession *s = x ? x->live : NULL;
    if (s && s->serial == get_u64(sb))
        notify_ended(s, BROKER_ERR_CONFLICT, "Replaced by a newer session");
}

static void check_up(cluster *c);

static void on_message(ntcp_broker *b, const char *data, size_t len)
{
    stun_msg m;
    uint16_t unknown[STUN_MAX_UNKNOWN];
    size_t nunknown;
    if (stun_parse(&m, (const uint8_t *)data, len) < 0 || m.rfc3489 ||
        broker_validate(&m, unknown, STUN_MAX_UNKNOWN, &nunknown) < 0) {
        broker_logf(b, NTCP_LOG_DEBUG, "cluster: a malformed message dropped");
        return;
    }
    if (m.method == BROKER_OFFER && m.cls == STUN_REQUEST)
        on_remote_offer(b, &m);
    else if (m.method == BROKER_OFFER && (m.cls == STUN_SUCCESS || m.cls == STUN_ERROR))
        on_remote_answer(b, &m);
    else if (m.method == BROKER_UNREGISTER && m.cls == STUN_INDICATION)
        on_remote_ended(b, &m);
    else if (m.method == BROKER_RAW_ISN && m.cls == STUN_INDICATION)
        on_remote_raw_isn(b, &m);
    else if (m.method == BROKER_RELAY_ADDR && m.cls == STUN_INDICATION)
        on_remote_relay_addr(b, &m);
}

static void on_sub(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    ntcp_broker *b = ac->data;
    redisReply *reply = r;
    cluster *c = b->cl;
    if (!c || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)
        return;
    redisReply *kind = reply->element[0], *payload = reply->element[2];
    if (kind->type != REDIS_REPLY_STRING)
        return;
    if (!strcmp(kind->str, "subscribe")) {
        c->ready[CTX_SUB] = true;
        c->heard_ms = uv_now(b->loop);
        check_up(c);
        return;
    }
    if (!strcmp(kind->str, "message") && payload->type == REDIS_REPLY_STRING) {
        c->heard_ms = uv_now(b->loop);
        if (payload->len == sizeof HEARTBEAT - 1 && !memcmp(payload->str, HEARTBEAT, payload->len))
            return;
        on_message(b, payload->str, (size_t)payload->len);
    }
}


/* Back after an outage (or Redis restarted empty): every registration here
 * is bound and written again, so that other nodes see them. */
static void republish(ntcp_broker *b)
{
    for (bsession *s = b->reg_head; s; s = s->next)
        if (s->state == S_REGISTERED && s->bind) {
            bind_name(s, s->bind->name, s->bind->key, NULL, true);
        }
}

/* The ticket key the nodes share: the first node to ask makes it. A Redis
 * that lost it (restarted without persistence) gets a new one, and tickets
 * sealed with the old one are refused (their peers sign again). */
static const char key_script[] =
    "redis.call('SET', KEYS[1], ARGV[1], 'NX') return redis.call('GET', KEYS[1])";

static void on_ticket_key(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    ntcp_broker *b = ac->data;
    redisReply *reply = r;
    if (b->cl && reply && reply->type == REDIS_REPLY_STRING && reply->len == TICKET_KEY_SIZE)
        broker_set_ticket_key(b, (const uint8_t *)reply->str);
}

static void fetch_ticket_key(cluster *c)
{
    uint8_t fresh[TICKET_KEY_SIZE];
    if (RAND_bytes(fresh, sizeof fresh) != 1)
        return;
    const char *argv[5] = {"EVAL", key_script, "1", "ntcp:ticket-key", (const char *)fresh};
    size_t lens[5] = {4, strlen(key_script), 1, strlen("ntcp:ticket-key"), sizeof fresh};
    command(c, on_ticket_key, NULL, 5, argv, lens);
    OPENSSL_cleanse(fresh, sizeof fresh);
}

static void check_up(cluster *c)
{
    ntcp_broker *b = c->b;
    if (cluster_up(b) && !c->was_up) {
        c->was_up = true;
        c->logged_down = false;
        broker_logf(b, NTCP_LOG_INFO, "cluster: Redis at %s:%d reachable, node %s", c->ip, c->port,
                    c->node);
        fetch_ticket_key(c);
        republish(b);
    }
}

static void went_down(cluster *c, int which, const char *why)
{
    ntcp_broker *b = c->b;
    c->ready[which] = false;
    if (which == CTX_CMD)
        c->ping_sent_us = 0;
    if (!c->logged_down && !b->stopping) {
        broker_logf(b, NTCP_LOG_ERROR,
                    "cluster: Redis at %s:%d unreachable (%s): new registrations refused until it "
                    "returns", c->ip, c->port, why);
        c->logged_down = true;
    }
    c->was_up = false;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    ntcp_broker *b = ac->data;
    cluster *c = b->cl;
    int which = ac == c->ctx[CTX_CMD] ? CTX_CMD : CTX_SUB;
    (void)status;
    c->ctx[which] = NULL;
    went_down(c, which, ac->errstr[0] ? ac->errstr : "connection closed");
    if (c->open[which]) {
        c->open[which] = false;
        b->open_handles--;
    }
}

static void on_selected(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    ntcp_broker *b = ac->data;
    redisReply *reply = r;
    if (!b->cl || !reply)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        broker_logf(b, NTCP_LOG_ERROR, "cluster: SELECT refused: %s", reply->str);
        return;
    }
    b->cl->ready[CTX_CMD] = true;
    check_up(b->cl);
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    ntcp_broker *b = ac->data;
    cluster *c = b->cl;
    int which = ac == c->ctx[CTX_CMD] ? CTX_CMD : CTX_SUB;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        c->ctx[which] = NULL;
        went_down(c, which, ac->errstr[0] ? ac->errstr : "cannot connect");
        if (c->open[which]) {
            c->open[which] = false;
            b->open_handles--;
        }
        return;
    }
    if (which == CTX_CMD) {
        char db[16];
        snprintf(db, sizeof db, "%d", c->db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, strlen(db)};
        redisAsyncCommandArgv(ac, on_selected, NULL, 2, argv, lens);
    } else {
        const char *argv[2] = {"SUBSCRIBE", c->chan};
        size_t lens[2] = {9, strlen(c->chan)};
        redisAsyncCommandArgv(ac, on_sub, NULL, 2, argv, lens);
    }
}

static void connect_ctx(cluster *c, int which)
{
    ntcp_broker *b = c->b;
    redisAsyncContext *ac = redisAsyncConnect(c->ip, c->port);
    if (!ac)
        return;
    if (ac->err) {
        went_down(c, which, ac->errstr);
        redisAsyncFree(ac);
        return;
    }
    ac->data = b;
    if (redisLibuvAttach(ac, b->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ctx[which] = ac;
    c->open[which] = true;
    c->started_ms[which] = uv_now(b->loop);
    b->open_handles++;
}

/* Drops a context that hangs (see STUCK_MS); the next tick makes another. */
static void reset_ctx(cluster *c, int which, const char *why)
{
    ntcp_broker *b = c->b;
    redisAsyncContext *ac = c->ctx[which];
    if (!ac)
        return;
    went_down(c, which, why);
    redisAsyncFree(ac); /* a connected one's on_disconnect runs in here */
    c->ctx[which] = NULL;
    c->ready[which] = false;
    if (c->open[which]) {
        c->open[which] = false;
        b->open_handles--;
    }
    if (which == CTX_CMD)
        c->ping_sent_us = 0;
}

static void on_pong(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    ntcp_broker *b = ac->data;
    cluster *c = b->cl;
    if (!c || c->ping_sent_us == 0)
        return;
    if (!r) {
        c->ping_sent_us = 0; /* the connection went: no sample */
        return;
    }
    uint64_t us = now_us() - c->ping_sent_us;
    c->ping_sent_us = 0;
    c->rtt_us = c->rtt_us ? (uint32_t)((7 * (uint64_t)c->rtt_us + us) / 8) : (uint32_t)(us ? us : 1);
}

static void on_timer(uv_timer_t *t)
{
    ntcp_broker *b = t->data;
    cluster *c = b->cl;
    uint64_t now = uv_now(b->loop);
    for (int i = 0; i < 2; i++)
        if (c->ctx[i] && !c->ready[i] && now - c->started_ms[i] >= STUCK_MS)
            reset_ctx(c, i, "no connection");
    if (c->ready[CTX_CMD] && c->ping_sent_us && now_us() - c->ping_sent_us >= STALL_MS * 1000)
        reset_ctx(c, CTX_CMD, "no answer to PING");
    if (c->ready[CTX_SUB] && c->ready[CTX_CMD] && now - c->heard_ms >= STALL_MS + PING_MS)
        reset_ctx(c, CTX_SUB, "the subscription went silent");
    for (int i = 0; i < 2; i++)
        if (!c->ctx[i])
            connect_ctx(c, i);
    if (c->ready[CTX_CMD] && c->ping_sent_us == 0 && now - c->last_ping_ms >= PING_MS) {
        const char *argv[1] = {"PING"};
        size_t lens[1] = {4};
        c->ping_sent_us = now_us();
        c->last_ping_ms = now;
        command(c, on_pong, NULL, 1, argv, lens);
        /* The heartbeat through our own channel proves the subscription. */
        publish(c, c->node, (const uint8_t *)HEARTBEAT, sizeof HEARTBEAT - 1, NULL, NULL);
    }
}

/* "redis://HOST:PORT[/DB]"; HOST resolved once, here (hiredis would resolve
 * it on the loop at each reconnection). */
static int parse_url(cluster *c, const char *url)
{
    if (strncmp(url, "redis://", 8) != 0)
        return NTCP_ECONFIG;
    char hp[300];
    const char *slash = strchr(url + 8, '/');
    size_t n = slash ? (size_t)(slash - (url + 8)) : strlen(url + 8);
    if (n == 0 || n >= sizeof hp)
        return NTCP_ECONFIG;
    memcpy(hp, url + 8, n);
    hp[n] = '\0';
    c->db = 0;
    if (slash) {
        char *end;
        long db = strtol(slash + 1, &end, 10);
        if (!slash[1] || *end || db < 0 || db > 1000000)
            return NTCP_ECONFIG;
        c->db = (int)db;
    }
    char host[256];
    uint16_t port;
    if (ntcp_split_host_port(hp, host, sizeof host, &port, 6379) < 0 || port == 0)
        return NTCP_ECONFIG;
    c->port = port;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return NTCP_ECONFIG;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    const void *a = ss.ss_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                                             : (const void *)&((struct sockaddr_in *)&ss)->sin_addr;
    if (!inet_ntop(ss.ss_family, a, c->ip, sizeof c->ip))
        return NTCP_ECONFIG;
    return 0;
}

int cluster_start(ntcp_broker *b, const char *url)
{
    cluster *c = calloc(1, sizeof *c);
    if (!c)
        return NTCP_ENOMEM;
    c->b = b;
    int rc = parse_url(c, url);
    if (rc < 0) {
        broker_logf(b, NTCP_LOG_ERROR, "--cluster %s: want redis://HOST:PORT[/DB]", url);
        free(c);
        return rc;
    }
    uint8_t id[8];
    if (RAND_bytes(id, sizeof id) != 1) {
        free(c);
        return NTCP_ESYS;
    }
    for (int i = 0; i < 8; i++)
        snprintf(c->node + 2 * i, 3, "%02x", id[i]);
    snprintf(c->chan, sizeof c->chan, "ntcp:node:%s", c->node);
    b->cl = c;
    uv_timer_init(b->loop, &c->timer);
    c->timer.data = b;
    b->open_handles++;
    uv_timer_start(&c->timer, on_timer, 0, TICK_MS);
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    ntcp_broker *b = h->data;
    b->open_handles--;
    free(b->cl);
    b->cl = NULL;
    broker_handle_closed(b);
}

void cluster_stop(ntcp_broker *b)
{
    cluster *c = b->cl;
    if (!c)
        return;
    for (int i = 0; i < 2; i++) {
        redisAsyncContext *ac = c->ctx[i];
        if (!ac)
            continue;
        /* Pending commands' callbacks run now with no reply; a connected
         * context's disconnect callback too (it clears open[i]). */
        redisAsyncFree(ac);
        c->ctx[i] = NULL;
        c->ready[i] = false;
        if (c->open[i]) {
            c->open[i] = false;
            b->open_handles--;
        }
    }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}
