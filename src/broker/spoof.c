/*
 * spoof.c: the broker's part in STUNT#1 and NATBlaster (issues 5 and 6):
 * remembers each TCP connect it coordinated for a while, relays the RAW-ISN
 * indications between its two ends, and, with the spoofing service on
 * (ntcp-brokerd --spoof, CAP_NET_RAW), sends each end the SYN-ACK its NAT
 * and kernel wait for, spoofed from the other end's external address.
 * docs/broker-protocol.md 5.1 says what is checked and why.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "addr.h"
#include "broker_int.h"
#include "ntcp.h"
#include "raw.h"

#define RDV_SLOTS 1024
#define RDV_LIFE_MS 30000
/* SYN-ACKs spoofed per connect (each end's ISN may change a few times
 * while its low-TTL SYNs are ended by ICMP errors), and per second for the
 * whole broker. */
#define RDV_MAX_SPOOFS 32
#define SPOOF_RATE 200.0
#define SPOOF_BURST 400.0

typedef struct rdv_end {
    bsession *s;
    char node[17]; /* cluster: the node this end is registered at ("" here) */
    struct sockaddr_storage ext;
    uint32_t isn;
    bool have, spoof;
} rdv_end;

struct rdv {
    uint8_t nonce[BROKER_NONCE_SIZE];
    uint64_t expires_ms; /* 0: free */
    rdv_end e[2];        /* requester, target */
    unsigned spoofs;
};

int spoof_init(ntcp_broker *b, bool spoof)
{
    b->rdv = calloc(RDV_SLOTS, sizeof *b->rdv);
    if (!b->rdv)
        return NTCP_ENOMEM;
    b->spoof_fd = -1;
    if (spoof) {
        /* Opened here, at start-up: the only privileged step (CAP_NET_RAW). */
        int fd = raw_send_open();
        if (fd < 0) {
            char why[160];
            raw_check(why, sizeof why);
            broker_logf(b, NTCP_LOG_ERROR, "--spoof: %s", why);
            errno = -fd;
            return NTCP_ESYS;
        }
        b->spoof_fd = fd;
        b->spoof_tokens = SPOOF_BURST;
        b->spoof_ms = uv_now(b->loop);
    }
    return 0;
}

void spoof_free(ntcp_broker *b)
{
    free(b->rdv);
    b->rdv = NULL;
    if (b->spoof_fd >= 0)
        close(b->spoof_fd);
    b->spoof_fd = -1;
}

bool spoof_enabled(const ntcp_broker *b)
{
    return b->spoof_fd >= 0;
}

void rdv_add(ntcp_broker *b, bsession *req, bsession *tgt, const uint8_t nonce[BROKER_NONCE_SIZE])
{
    if (!b->rdv)
        return;
    uint64_t now = uv_now(b->loop);
    /* A free or expired slot, else the one that expires first. */
    struct rdv *best = &b->rdv[0];
    for (size_t i = 0; i < RDV_SLOTS; i++) {
        struct rdv *r = &b->rdv[i];
        if (r->expires_ms <= now) {
            best = r;
            break;
        }
        if (r->expires_ms < best->expires_ms)
            best = r;
    }
    memset(best, 0, sizeof *best);
    memcpy(best->nonce, nonce, BROKER_NONCE_SIZE);
    best->expires_ms = now + RDV_LIFE_MS;
    best->e[0].s = req;
    best->e[1].s = tgt;
}

/* A connect across two nodes of a cluster: one end here (me: 0 requester,
 * 1 target), the other at node. */
void rdv_add_remote(ntcp_broker *b, bsession *s, int me, const char *node,
                    const uint8_t nonce[BROKER_NONCE_SIZE])
{
    rdv_add(b, me == 0 ? s : NULL, me == 1 ? s : NULL, nonce);
    for (size_t i = 0; i < RDV_SLOTS && b->rdv; i++)
        if (b->rdv[i].e[me].s == s && !memcmp(b->rdv[i].nonce, nonce, BROKER_NONCE_SIZE)) {
            snprintf(b->rdv[i].e[!me].node, sizeof b->rdv[i].e[!me].node, "%s", node);
            return;
        }
}

/* The next live connect with this nonce from slot *i on, or NULL. */
static struct rdv *rdv_next(ntcp_broker *b, const uint8_t nonce[BROKER_NONCE_SIZE], size_t *i)
{
    uint64_t now = uv_now(b->loop);
    while (b->rdv && *i < RDV_SLOTS) {
        struct rdv *x = &b->rdv[(*i)++];
        if (x->expires_ms > now && memcmp(x->nonce, nonce, BROKER_NONCE_SIZE) == 0)
            return x;
    }
    return NULL;
}

/* The live connect `nonce` that session s is an end of (*me: which end). */
static struct rdv *rdv_of(ntcp_broker *b, const bsession *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                          int *me)
{
    size_t i = 0;
    for (struct rdv *x; (x = rdv_next(b, nonce, &i)) != NULL;)
        for (int k = 0; k < 2; k++)
            if (x->e[k].s == s) {
                *me = k;
                return x;
            }
    return NULL;
}

/* The live connect `nonce` across nodes whose other end is registered at
 * node and whose end here is still there (*near: which end). A message from
 * another node reaches only that end: the nonce and the node must both be
 * the ones this node remembered at the CONNECT-GO. */
static struct rdv *rdv_at(ntcp_broker *b, const char *node, const uint8_t nonce[BROKER_NONCE_SIZE],
                          int *near)
{
    size_t i = 0;
    for (struct rdv *r; node[0] && (r = rdv_next(b, nonce, &i)) != NULL;)
        for (int k = 0; k < 2; k++)
            if (r->e[k].s && strcmp(r->e[!k].node, node) == 0) {
                *near = k;
                return r;
            }
    return NULL;
}

bool rdv_other(ntcp_broker *b, const bsession *s, const uint8_t nonce[BROKER_NONCE_SIZE],
               bsession **other, const char **node)
{
    int me;
    struct rdv *r = rdv_of(b, s, nonce, &me);
    *other = r ? r->e[!me].s : NULL;
    *node = r && r->e[!me].node[0] ? r->e[!me].node : NULL;
    return *other || *node;
}

bsession *rdv_remote_end(ntcp_broker *b, const char *node, const uint8_t nonce[BROKER_NONCE_SIZE])
{
    int near;
    struct rdv *r = rdv_at(b, node, nonce, &near);
    return r ? r->e[near].s : NULL;
}

void rdv_forget(ntcp_broker *b, bsession *s)
{
    if (!b->rdv)
        return;
    for (size_t i = 0; i < RDV_SLOTS; i++)
        for (int k = 0; k < 2; k++)
            if (b->rdv[i].e[k].s == s)
                b->rdv[i].e[k].s = NULL;
}

static bool spoof_token(ntcp_broker *b)
{
    uint64_t now = uv_now(b->loop);
    b->spoof_tokens += (double)(now - b->spoof_ms) * SPOOF_RATE / 1000.0;
    if (b->spoof_tokens > SPOOF_BURST)
        b->spoof_tokens = SPOOF_BURST;
    b->spoof_ms = now;
    if (b->spoof_tokens < 1.0)
        return false;
    b->spoof_tokens -= 1.0;
    return true;
}

/* To end `to`, as if from end `from`: the SYN-ACK answering to's SYN. */
static void spoof_one(ntcp_broker *b, struct rdv *r, const rdv_end *from, const rdv_end *to)
{
    if (r->spoofs >= RDV_MAX_SPOOFS || !spoof_token(b)) {
        b->st.rate_limited++;
        return;
    }
    raw_segment seg;
    memset(&seg, 0, sizeof seg);
    seg.src = from->ext;
    seg.dst = to->ext;
    seg.seq = from->isn;
    seg.ack = to->isn + 1;
    seg.flags = RAW_TCP_SYN | RAW_TCP_ACK;
    seg.window = 65535;
    seg.mss = 1400;
    int rc = raw_send_tcp(b->spoof_fd, &seg);
    r->spoofs++;
    if (rc < 0)
        broker_logf(b, NTCP_LOG_WARN, "spoofed SYN-ACK not sent: %s", strerror(-rc));
    else
        b->st.spoofed++;
}

static void send_isn(bsession *to, const uint8_t nonce[BROKER_NONCE_SIZE],
                     const struct sockaddr_storage *ext, uint32_t isn)
{
    uint8_t buf[128], tid[STUN_TID_SIZE];
    stun_builder sb;
    stun_new_tid(tid);
    stun_build_init(&sb, buf, sizeof buf, BROKER_RAW_ISN, STUN_INDICATION, tid, false);
    stun_build_attr(&sb, BROKER_ATTR_SESSION_NONCE, nonce, BROKER_NONCE_SIZE);
    broker_addr ba;
    broker_addr_from_sa(&ba, (const struct sockaddr *)ext);
    broker_build_baddr(&sb, BROKER_ATTR_PUBLIC_ADDR, &ba);
    stun_build_u32(&sb, BROKER_ATTR_ISN, isn);
    int n = stun_build_finish(&sb, NULL);
    if (n > 0)
        broker_send(to, buf, (size_t)n);
}

/* A RAW-ISN of the end at node, relayed by that node (which checked its
 * address against its session): to our end of that connect, and, with
 * both ends asking for it, the SYN-ACK to our end only (the other node
 * sends its own end's). */
void rdv_remote_isn(ntcp_broker *b, const char *node, const uint8_t nonce[BROKER_NONCE_SIZE],
                    const struct sockaddr_storage *ext, uint32_t isn, bool spoof)
{
    int k;
    struct rdv *r = rdv_at(b, node, nonce, &k);
    if (!r)
        return;
    rdv_end *near = &r->e[k], *far = &r->e[!k];
    far->ext = *ext;
    far->isn = isn;
    far->have = true;
    far->spoof = spoof;
    send_isn(near->s, nonce, ext, isn);
    if (spoof_enabled(b) && near->spoof && near->have && far->spoof)
        spoof_one(b, r, far, near);
}

void do_raw_isn(bsession *s, const stun_msg *m)
{
    ntcp_broker *b = s->b;
    uint8_t nonce[BROKER_NONCE_SIZE];
    struct sockaddr_storage ext, pub;
    uint32_t isn, spoof = 0;
    if (!b->rdv || broker_get_fixed(m, BROKER_ATTR_SESSION_NONCE, nonce, sizeof nonce) < 0 ||
        broker_get_addr(m, BROKER_ATTR_PUBLIC_ADDR, &ext) < 0 ||
        stun_get_u32(m, BROKER_ATTR_ISN, &isn) < 0) {
        broker_logf(b, NTCP_LOG_DEBUG, "RAW-ISN without nonce, address or ISN: dropped");
        return;
    }
    stun_get_u32(m, BROKER_ATTR_SPOOF, &spoof);
    /* The address must be on the IP the broker sees this session from: an
     * end speaks for its own NAT only. */
    broker_addr_to_sa(&s->pub, &pub);
    if (ext.ss_family != AF_INET || !ntcp_sockaddr_same_ip((struct sockaddr *)&ext,
                                                           (struct sockaddr *)&pub)) {
        broker_logf(b, NTCP_LOG_DEBUG, "RAW-ISN for another address than the session's: dropped");
        return;
    }
    int me;
    struct rdv *r = rdv_of(b, s, nonce, &me);
    if (!r) {
        broker_logf(b, NTCP_LOG_DEBUG, "RAW-ISN for no connect of this session: dropped");
        return;
    }
    b->st.raw_isn++;
    rdv_end *mine = &r->e[me], *other = &r->e[!me];
    mine->ext = ext;
    mine->isn = isn;
    mine->have = true;
    mine->spoof = spoof == 1;
    if (other->s)
        send_isn(other->s, nonce, &ext, isn);
    else if (other->node[0])
        cluster_raw_isn(b, other->node, nonce, &ext, isn, mine->spoof);
    /* STUNT#1: both ends asked, both ISNs known: each gets the SYN-ACK of
     * the other, from the other's external address to its own. Only these
     * two addresses, each checked against its session's public IP (by
     * its own node, for an end at another node of a cluster, which sends
     * that end's SYN-ACK itself). */
    if (spoof_enabled(b) && mine->spoof && other->have && other->spoof) {
        spoof_one(b, r, other, mine);
        if (other->s)
            spoof_one(b, r, mine, other);
    }
}
