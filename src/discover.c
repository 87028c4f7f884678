/*
 * discover.c: NAT behaviour discovery. RFC 5780's tests over UDP, the same
 * over TCP plus ntcp-stuntd's connect-back (docs/protocol.md), for IPv4 and
 * IPv6, all started at once on a libuv loop; ntcp_classify() turns what was
 * seen into each behaviour.
 *
 * Probe sockets and what each may talk to (filtering tests must come from a
 * port that has only ever sent to the server's primary address, or the NAT
 * would let the "unsolicited" answers in):
 *   UDP  map   -> primary, then alternate IP, alternate IP+port, own mapping
 *        filt  -> primary only: plain, CHANGE-REQUEST ip+port, port
 *        seq*  -> primary (fresh ports, for the port allocation pattern)
 *   TCP  lp    -> primary, then alternate IP, alternate IP+port; listens too
 *        lq0-2 -> primary only: Binding and connect-backs (lq0, lq1 at once,
 *                 all three in later rounds); each listens
 *        seq*  -> primary; hair -> own mapping of lp
 *
 * On a lossy link silence proves little: every probe that must be answered
 * counts the link's loss (link_loss()), and a filtering test settles on
 * "filtered" only after as many silent tries as that loss asks for
 * (ntcp_silence_needed()); what cannot get there is unknown.
 */
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "context.h"
#include "discover.h"
#include "natclass.h"
#include "sock_linux.h"
#include "stun.h"

#define TICK_MS 10
#define NSEQ 3
/* Sends of one UDP request remembered (their times): a negative test has
 * as many as the loss on the link asks for, paced a round trip apart. */
#define NSENDS 48
/* No answer at all from a server for this long: try the next one. */
#define UNREACHABLE_MS 2000

typedef struct disc disc;
typedef struct fam fam;

/* Mapping lifetime: idle times tested in parallel, one socket each (s). */
#define NLT 6
static const unsigned lt_idle_s[NLT] = {5, 10, 20, 40, 80, 160};

enum {
    U_MAP0, U_MAP1, U_MAP2, U_HAIR, U_FPLAIN, U_FBOTH, U_FPORT, U_SEQ0,
    U_LT0 = U_SEQ0 + NSEQ, /* a Binding from each lifetime socket */
    U_LTP0 = U_LT0 + NLT,  /* later, RESPONSE-PORT aimed at that mapping */
    U_COUNT = U_LTP0 + NLT
};
enum { US_MAP, US_FILT, US_SEQ0, US_LT0 = US_SEQ0 + NSEQ, US_COUNT = US_LT0 + NLT };
/* TCP: two filtering connections start with the rest (their connect-backs
 * are the first round), a third waits for a second round, which a lossy
 * link may need. FILT0, FILT1, SEQ0 and SEQ1 are the port pattern's new
 * mappings after MAP0. */
#define NFILT 3
enum { T_MAP0, T_MAP1, T_MAP2, T_FILT0, T_FILT1, T_FILT2, T_SEQ0, T_SEQ1, T_HAIR, T_COUNT };
enum { TL_P, TL_Q0, TL_COUNT = TL_Q0 + NFILT };
/* Requests on one TCP connection: the Binding, then connect-backs, two per
 * round (from the other address and port, from the other port). */
#define R_BIND 0
#define NWRITES 4 /* the first requests, then up to three more rounds */
#define R_MAX (1 + 2 * NWRITES)
/* Connect-backs of one variant per family at most: ntcp-stuntd's default
 * burst per client address is 10 (docs/protocol.md). */
#define CB_MAX 5
enum { V_BOTH, V_PORT, V_COUNT };

typedef struct usock {
    uv_udp_t h;
    fam *f;
    bool open;
    uint16_t port;
} usock;

typedef struct utxn {
    fam *f;
    usock *s;  /* sends */
    usock *rx; /* receives the answer (s, except for lifetime probes) */
    bool started, done, answered;
    bool replied;     /* any answer, an error response too */
    bool rtt_rto;     /* the RTO has been set from the measured round trip */
    uint64_t answered_at;
    uint8_t tid[STUN_TID_SIZE];
    struct sockaddr_storage dst;
    uint8_t msg[64];
    size_t len;
    uint64_t next_send, deadline, rto, sent_at;
    unsigned nsent, nsent_ans; /* sends so far; sends when the answer came */
    uint64_t sends[NSENDS];    /* when each was sent */
    struct sockaddr_storage mapped; /* from the answer */
    bool got_mapped;
} utxn;

/* One request on a TCP connection. */
typedef struct treq {
    uint8_t tid[STUN_TID_SIZE];
    int variant;         /* V_BOTH, V_PORT; -1 for the Binding */
    uint32_t timeout_ms; /* the connect-back's STUNT-TIMEOUT */
    uint64_t deadline;   /* its answer is given up after this */
    bool over;           /* answered, or given up */
    bool answered;
} treq;

typedef struct tconn {
    uv_tcp_t h;
    uv_connect_t creq;
    fam *f;
    int kind;
    bool open, started, connected, failed, done;
    uint64_t started_at, connected_at, ended_at, bind_at, deadline;
    uint16_t lport;
    stun_framer fr;
    uint8_t rbuf[1024];
    uint8_t wbuf[NWRITES][192]; /* the first requests, then one per round */
    uv_write_t wreq[NWRITES];
    int nwrites;
    treq req[R_MAX];
    int nreq;
    struct sockaddr_storage mapped;
    bool got_mapped;
} tconn;

/* What the connect-backs of one variant have shown. */
typedef struct tvar {
    bool through;     /* one got through: YES */
    int refused;      /* STUNT_REFUSED or STUNT_ICMP came back (-1: none): NO */
    unsigned silent;  /* the server's SYNs that met silence */
    unsigned pending; /* requests without an answer yet */
    unsigned asked;   /* requests sent */
} tvar;

typedef struct tlisten {
    uv_tcp_t h;
    fam *f;
    bool open;
    uint16_t port;
    int accepted;
} tlisten;

struct fam {
    disc *d;
    int af;
    bool on_udp, on_tcp;
    uv_getaddrinfo_t gai; /* the server's name, looked up on the thread pool */
    bool resolving;       /* gai is under way */
    struct sockaddr_storage primary, other, local_ip;
    bool have_other;
    /* UDP */
    usock us[US_COUNT];
    utxn ut[U_COUNT];
    /* TCP */
    tconn tc[T_COUNT];
    tlisten tl[TL_COUNT];
    tvar cb[V_COUNT];
    bool filt_settled; /* no connect-back runs or is wanted, for now */
    unsigned cb_lost, cb_tries; /* loss seen by connect-backs that came back */
    unsigned cb_unanswered;     /* connect-backs whose answer never came */
    ntcp_tristate_t t_hair;
    uint64_t hair_deadline;
    char udp_why[96], tcp_why[96];
};

struct disc {
    ntcp_t *ctx;
    uv_loop_t *loop;
    uv_timer_t tick;
    unsigned flags; /* what the caller asked for */
    int server_idx;
    uint64_t t0, deadline, server_t0;
    uint32_t rtt_ms; /* smallest seen, 0 = none yet */
    bool any_answer, finished;
    int handles;   /* open libuv handles and lookups; everything is freed at zero */
    unsigned resolving;  /* the current server's lookups under way */
    uint16_t port;       /* the current server's port */
    struct sockaddr_storage *server4; /* ntcp_discover_start_addr()'s, or NULL */
    fam *fams[2];  /* IPv4, IPv6, of the current server */
    fam **retired; /* the probes of servers that did not answer, still closing */
    size_t nretired;
    uint8_t rbuf[2048]; /* UDP receive buffer, shared: reads are synchronous */
    ntcp_nat_profile_t profile;
    ntcp_discover_cb cb;
    void *user;
};

static uint64_t now_ms(disc *d)
{
    uv_update_time(d->loop);
    return uv_now(d->loop);
}

static void disc_free(disc *d)
{
    for (int i = 0; i < 2; i++)
        free(d->fams[i]);
    for (size_t i = 0; i < d->nretired; i++)
        free(d->retired[i]);
    free(d->retired);
    free(d);
}

/* Every handle's data leads to the disc: usock, tconn, tlisten via their fam. */
static void handle_closed(disc *d)
{
    if (--d->handles == 0 && d->finished)
        disc_free(d);
}

static void on_udp_closed(uv_handle_t *h)
{
    handle_closed(((usock *)h->data)->f->d);
}

static void on_tconn_closed(uv_handle_t *h)
{
    handle_closed(((tconn *)h->data)->f->d);
}

static void on_tlisten_closed(uv_handle_t *h)
{
    handle_closed(((tlisten *)h->data)->f->d);
}

static void on_timer_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void close_handle(uv_handle_t *h, bool *open, uv_close_cb cb)
{
    if (*open && !uv_is_closing(h)) {
        *open = false;
        uv_close(h, cb);
    }
}

static void note_rtt(disc *d, uint64_t sent_at)
{
    uint64_t rtt = now_ms(d) - sent_at;
    if (rtt == 0)
        rtt = 1;
    if (d->rtt_ms == 0 || rtt < d->rtt_ms)
        d->rtt_ms = (uint32_t)rtt;
    d->any_answer = true;
}

/* How long to wait before concluding that something did not come: long
 * enough for several retransmissions at the measured round trip. */
static uint64_t neg_wait(disc *d)
{
    uint64_t w = 6ull * (d->rtt_ms ? d->rtt_ms : 100);
    return w < 500 ? 500 : w;
}

static uint64_t initial_rto(disc *d)
{
    /* RFC 8489 6.2.1: 500 ms unless the round trip is known (RFC 6298 form). */
    if (!d->rtt_ms)
        return 500;
    uint64_t rto = 3ull * d->rtt_ms;
    return rto < 100 ? 100 : rto;
}

/* The time a request's answer is given before the request counts as met
 * by silence: a round trip and as much again, or 500 ms before any round
 * trip was measured. */
static uint64_t answer_window(disc *d)
{
    return d->rtt_ms ? 2ull * d->rtt_ms + 50 : 500;
}

/* The pace of a negative test's requests: one answer window apart (loss on
 * real links comes in bursts), 100 ms at the least. */
static uint64_t neg_pace(disc *d)
{
    uint64_t p = d->rtt_ms ? answer_window(d) : 150;
    return p < 100 ? 100 : p;
}

static uint64_t capped(disc *d, uint64_t w)
{
    uint64_t dl = now_ms(d) + w;
    return dl < d->deadline ? dl : d->deadline;
}

/* When to give up on a UDP answer that should come: 2.5 s, or ten round
 * trips on a slower path; the RTO follows the round trip once it is known,
 * so that is five sends or more. */
static uint64_t udp_pos_deadline(disc *d)
{
    uint64_t w = 10ull * d->rtt_ms;
    return capped(d, w < 2500 ? 2500 : w);
}

/* The kernel sends a SYN again after 1 s, 3 s, 7 s, ... (RFC 6298 2.1 and
 * 5.5: an initial RTO of 1 s, doubled at each retransmission); this holds
 * for our connects and for the server's connect-backs. */
static const uint32_t syn_rexmit_ms[] = {1000, 3000, 7000, 15000};
#define NREXMIT (sizeof syn_rexmit_ms / sizeof syn_rexmit_ms[0])

/* When to give up on a TCP connection that should be answered: its third
 * SYN (3 s) and the answer. */
static uint64_t tcp_pos_deadline(disc *d)
{
    return capped(d, 3000 + 4ull * (d->rtt_ms ? d->rtt_ms : 100) + 200);
}

/* SYNs sent in the first `ms` of a connect, retransmissions included. */
static unsigned syns_by(uint64_t ms)
{
    unsigned n = 1;
    for (size_t i = 0; i < NREXMIT; i++)
        n += syn_rexmit_ms[i] <= ms;
    return n;
}

/* What a timer of the server's kernel or of ours may be late by. */
#define SYN_SLACK_MS 50

/* The server's SYNs in a connect-back of timeout_ms whose answer had the
 * time to come back before the server gave up. */
static unsigned syn_tries(uint32_t timeout_ms, uint32_t rtt_ms)
{
    if (rtt_ms + SYN_SLACK_MS > timeout_ms)
        return 0;
    unsigned n = 1;
    for (size_t i = 0; i < NREXMIT; i++)
        n += syn_rexmit_ms[i] + rtt_ms + SYN_SLACK_MS <= timeout_ms;
    return n;
}

static void any_addr(int af, uint16_t port, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    out->ss_family = (sa_family_t)af;
    ntcp_sa_set_port(out, port);
    if (af == AF_INET6)
        ((struct sockaddr_in6 *)out)->sin6_addr = in6addr_any;
}

/* ---------------------------------------------------------------- UDP */

static void udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    disc *d = ((usock *)h->data)->f->d;
    (void)hint;
    *buf = uv_buf_init((char *)d->rbuf, sizeof d->rbuf);
}

static void utxn_send(utxn *t)
{
    disc *d = t->f->d;
    uv_buf_t b = uv_buf_init((char *)t->msg, (unsigned)t->len);
    uint64_t now = now_ms(d);
    if (t->sent_at == 0)
        t->sent_at = now;
    (void)uv_udp_try_send(&t->s->h, &b, 1, (const struct sockaddr *)&t->dst);
    if (t->nsent < NSENDS)
        t->sends[t->nsent] = now;
    t->nsent++;
    t->next_send = now + t->rto;
    t->rto *= 2;
}

/* The tests whose silence means something (filtering), not loss. */
static bool udp_negative(int kind)
{
    return kind == U_FBOTH || kind == U_FPORT;
}

/* Requests that must be answered: their sends measure the link's loss. */
static bool udp_positive(int kind)
{
    return kind != U_HAIR && !udp_negative(kind) && kind < U_LTP0;
}

/* Sends of t that have had their answer window, all met by silence. */
static unsigned utxn_silent(utxn *t, uint64_t now)
{
    if (!t->started || t->replied)
        return 0;
    uint64_t w = answer_window(t->f->d);
    unsigned n = 0;
    for (unsigned i = 0; i < t->nsent && i < NSENDS; i++)
        n += t->sends[i] + w <= now;
    return n;
}

static void utxn_start_ex(fam *f, int kind, usock *s, const struct sockaddr_storage *dst,
                          uint32_t change, uint16_t response_port, uint64_t deadline)
{
    disc *d = f->d;
    utxn *t = &f->ut[kind];
    memset(t, 0, sizeof *t);
    t->f = f;
    t->s = t->rx = s;
    t->started = true;
    t->dst = *dst;
    stun_new_tid(t->tid);
    stun_builder b;
    stun_build_init(&b, t->msg, sizeof t->msg, STUN_BINDING, STUN_REQUEST, t->tid, false);
    if (change)
        stun_build_change_request(&b, change);
    if (response_port)
        stun_build_u32(&b, STUN_ATTR_RESPONSE_PORT, (uint32_t)response_port << 16);
    int n = stun_build_finish(&b, NULL);
    if (n < 0) {
        t->done = true;
        return;
    }
    t->len = (size_t)n;
    t->rto = initial_rto(d);
    t->deadline = deadline;
    utxn_send(t);
}

static void utxn_start(fam *f, int kind, usock *s, const struct sockaddr_storage *dst,
                       uint32_t change, uint64_t deadline)
{
    utxn_start_ex(f, kind, s, dst, change, 0, deadline);
}

static void udp_after_map0(fam *f);

static void on_udp_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *from,
                        unsigned flags)
{
    usock *s = h->data;
    fam *f = s->f;
    (void)flags;
    if (nread <= 0 || !from || f->d->finished)
        return;
    stun_msg m;
    if (stun_parse(&m, (const uint8_t *)buf->base, (size_t)nread) < 0)
        return;
    for (int k = 0; k < U_COUNT; k++) {
        utxn *t = &f->ut[k];
        if (!t->started || t->done || t->rx != s || memcmp(t->tid, m.tid, STUN_TID_SIZE))
            continue;
        if (k == U_HAIR) {
            /* Our own request, come back through the NAT. */
            if (m.cls == STUN_REQUEST) {
                t->done = t->answered = true;
            }
            return;
        }
        if (m.cls != STUN_SUCCESS && m.cls != STUN_ERROR)
            return;
        if (k < U_LTP0)
            note_rtt(f->d, t->sent_at);
        t->done = t->replied = true;
        t->nsent_ans = t->nsent;
        if (m.cls == STUN_ERROR)
            return;
        t->answered = true;
        t->answered_at = now_ms(f->d);
        if (stun_get_addr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &t->mapped) == 0 ||
            stun_get_addr(&m, STUN_ATTR_MAPPED_ADDRESS, &t->mapped) == 0)
            t->got_mapped = true;
        if (k == U_MAP0) {
            if (stun_get_addr(&m, STUN_ATTR_OTHER_ADDRESS, &f->other) == 0 ||
                stun_get_addr(&m, STUN_ATTR_CHANGED_ADDRESS, &f->other) == 0)
                f->have_other = f->other.ss_family == f->af;
            udp_after_map0(f);
        }
        return;
    }
}

static void udp_after_map0(fam *f)
{
    disc *d = f->d;
    if (f->have_other) {
        struct sockaddr_storage alt_ip = f->other;
        ntcp_sa_set_port(&alt_ip, ntcp_sa_port(&f->primary));
        utxn_start(f, U_MAP1, &f->us[US_MAP], &alt_ip, 0, udp_pos_deadline(d));
        utxn_start(f, U_MAP2, &f->us[US_MAP], &f->other, 0, udp_pos_deadline(d));
    } else {
        snprintf(f->udp_why, sizeof f->udp_why, "the server gave no OTHER-ADDRESS");
    }
    utxn *m0 = &f->ut[U_MAP0];
    if (m0->got_mapped) {
        uint64_t dl = now_ms(d) + neg_wait(d);
        utxn_start(f, U_HAIR, &f->us[US_MAP], &m0->mapped, 0, dl < d->deadline ? dl : d->deadline);
        f->ut[U_HAIR].rto = 100;
    }
}

static int usock_open(fam *f, usock *s)
{
    disc *d = f->d;
    s->f = f;
    if (uv_udp_init_ex(d->loop, &s->h, (unsigned)f->af) < 0)
        return NTCP_ESYS;
    s->h.data = s;
    s->open = true;
    d->handles++;
    struct sockaddr_storage any;
    any_addr(f->af, 0, &any);
    if (uv_udp_bind(&s->h, (const struct sockaddr *)&any, f->af == AF_INET6 ? UV_UDP_IPV6ONLY : 0) < 0)
        return NTCP_ESYS;
    struct sockaddr_storage local;
    int len = sizeof local;
    if (uv_udp_getsockname(&s->h, (struct sockaddr *)&local, &len) < 0)
        return NTCP_ESYS;
    s->port = ntcp_sa_port(&local);
    return uv_udp_recv_start(&s->h, udp_alloc, on_udp_recv) < 0 ? NTCP_ESYS : 0;
}

static void udp_start(fam *f)
{
    disc *d = f->d;
    for (int i = 0; i < US_LT0; i++) {
        if (usock_open(f, &f->us[i]) < 0) {
            snprintf(f->udp_why, sizeof f->udp_why, "cannot open a UDP socket");
            f->on_udp = false;
            return;
        }
    }
    /* New mappings first, in a known order, for the port allocation pattern. */
    uint64_t dl = udp_pos_deadline(d);
    utxn_start(f, U_MAP0, &f->us[US_MAP], &f->primary, 0, dl);
    utxn_start(f, U_FPLAIN, &f->us[US_FILT], &f->primary, 0, dl);
    for (int i = 0; i < NSEQ; i++)
        utxn_start(f, U_SEQ0 + i, &f->us[US_SEQ0 + i], &f->primary, 0, dl);
    /* Negative tests send steadily until their silence is conclusive
     * (udp_neg_settled): a lost answer must not read as "filtered". */
    utxn_start(f, U_FBOTH, &f->us[US_FILT], &f->primary, STUN_CHANGE_IP | STUN_CHANGE_PORT,
               d->deadline);
    utxn_start(f, U_FPORT, &f->us[US_FILT], &f->primary, STUN_CHANGE_PORT, d->deadline);
    f->ut[U_FBOTH].next_send = f->ut[U_FPORT].next_send = now_ms(d) + neg_pace(d);
    if (d->flags & NTCP_DISCOVER_LIFETIME) {
        for (int i = 0; i < NLT; i++) {
            if (usock_open(f, &f->us[US_LT0 + i]) < 0)
                break;
            utxn_start(f, U_LT0 + i, &f->us[US_LT0 + i], &f->primary, 0, dl);
        }
    }
}

/* Lifetime: once mapping i has been idle lt_idle_s[i], ask the server (from
 * another socket, through the same NAT) to answer to that mapping's port:
 * the answer arrives only if the mapping is still there (RFC 5780 4.6). */
/* Once a mapping has expired after some idle time, longer ones need no test. */
static bool lifetime_expired_before(fam *f, int i)
{
    for (int j = 0; j < i; j++)
        if (f->ut[U_LTP0 + j].done && !f->ut[U_LTP0 + j].answered)
            return true;
    return false;
}

static void lifetime_tick(fam *f, uint64_t now)
{
    disc *d = f->d;
    for (int i = 0; i < NLT; i++) {
        if (lifetime_expired_before(f, i))
            break;
        utxn *lt = &f->ut[U_LT0 + i], *p = &f->ut[U_LTP0 + i];
        if (!lt->answered || !lt->got_mapped || p->started)
            continue;
        if (now < lt->answered_at + 1000ull * lt_idle_s[i])
            continue;
        uint64_t dl = now + neg_wait(d);
        utxn_start_ex(f, U_LTP0 + i, &f->us[US_SEQ0], &f->primary, 0, ntcp_sa_port(&lt->mapped),
                      dl < d->deadline ? dl : d->deadline);
        p->rx = &f->us[US_LT0 + i];
        p->rto = 150;
    }
}

static bool lifetime_pending(fam *f)
{
    for (int i = 0; i < NLT && !lifetime_expired_before(f, i); i++)
        if (f->ut[U_LT0 + i].answered && f->ut[U_LT0 + i].got_mapped && !f->ut[U_LTP0 + i].started)
            return true;
    return false;
}

static void link_loss(disc *d, unsigned *lost, unsigned *tries);
static bool udp_neg_settled(fam *f, utxn *t, uint64_t now);

/* Everything answered or given up; a filtering test need only be settled:
 * it goes on sending while the rest runs, so that its silence keeps up
 * with the loss that the rest may still show. */
static bool udp_done(fam *f, uint64_t now)
{
    if (!f->on_udp)
        return true;
    for (int k = 0; k < U_COUNT; k++)
        if (f->ut[k].started && !f->ut[k].done &&
            !(udp_negative(k) && udp_neg_settled(f, &f->ut[k], now)))
            return false;
    return !lifetime_pending(f);
}

/* A filtering test has nothing more to learn: answered, its control (the
 * plain request on the same port) failed, or all its sends are spent. From
 * the other port, as soon as the other address and port answered: the
 * filtering is then endpoint-independent whatever it says. */
static bool udp_neg_over(fam *f, utxn *t, uint64_t now)
{
    utxn *plain = &f->ut[U_FPLAIN];
    return t->replied || (t == &f->ut[U_FPORT] && f->ut[U_FBOTH].answered) ||
           (plain->done && !plain->answered) ||
           (t->nsent >= NSENDS && t->sends[NSENDS - 1] + answer_window(f->d) <= now);
}

/* A filtering test is settled when it is over, or when the plain request
 * was answered a negative wait ago and enough of the test's sends met
 * silence for the loss seen on the link so far (ntcp_silence_needed()). */
static bool udp_neg_settled(fam *f, utxn *t, uint64_t now)
{
    disc *d = f->d;
    utxn *plain = &f->ut[U_FPLAIN];
    if (t->done || udp_neg_over(f, t, now))
        return true;
    if (!plain->answered || now < plain->answered_at + neg_wait(d))
        return false;
    unsigned lost, tries;
    link_loss(d, &lost, &tries);
    unsigned need = ntcp_silence_needed(lost, tries);
    return need == UINT_MAX || utxn_silent(t, now) >= need;
}

static void udp_tick(fam *f, uint64_t now)
{
    disc *d = f->d;
    lifetime_tick(f, now);
    for (int k = 0; k < U_COUNT; k++) {
        utxn *t = &f->ut[k];
        if (!t->started || t->done)
            continue;
        if (now >= t->deadline || (udp_negative(k) && udp_neg_over(f, t, now))) {
            t->done = true;
            continue;
        }
        if (udp_positive(k) && !t->rtt_rto && d->rtt_ms) {
            /* The round trip is known now: retransmit on its RTO. */
            uint64_t rto = initial_rto(d), last = t->sends[(t->nsent - 1) % NSENDS];
            t->rtt_rto = true;
            if (t->nsent <= NSENDS && last + rto < t->next_send) {
                t->next_send = last + rto;
                t->rto = 2 * rto;
            }
        }
        if (now >= t->next_send) {
            if (k == U_HAIR || k >= U_LTP0)
                t->rto = t->rto > 300 ? 300 : t->rto; /* keep probing steadily */
            utxn_send(t);
            if (udp_negative(k))
                t->next_send = now + neg_pace(d);
        }
    }
}

/* The root cause goes first: the consequences the classifier listed follow. */
static void prepend_why(ntcp_nat_behaviour_t *b, const char *cause)
{
    char rest[sizeof b->why];
    size_t cap = sizeof b->why - 1, rl = strlen(b->why), n = strlen(cause);
    memcpy(rest, b->why, rl + 1);
    if (n > cap)
        n = cap;
    memcpy(b->why, cause, n);
    if (rl && n + 2 < cap) {
        memcpy(b->why + n, "; ", 2);
        n += 2;
        size_t k = rl < cap - n ? rl : cap - n;
        memcpy(b->why + n, rest, k);
        n += k;
    }
    b->why[n] = '\0';
}

static void append_why(ntcp_nat_behaviour_t *b, const char *text)
{
    size_t l = strlen(b->why);
    snprintf(b->why + l, sizeof b->why - l, "%s%s", l ? "; " : "", text);
}

/* The longest idle time after which every shorter one also still worked. */
static void lifetime_observe(fam *f, ntcp_nat_behaviour_t *b)
{
    int alive = 0;
    bool complete = true;
    for (int i = 0; i < NLT; i++) {
        utxn *p = &f->ut[U_LTP0 + i];
        if (!p->started) {
            complete = lifetime_expired_before(f, i);
            break;
        }
        if (!p->answered)
            break;
        alive = (int)lt_idle_s[i];
    }
    b->lifetime_s = alive;
    char text[96];
    if (!complete)
        append_why(b, "lifetime: the timeout ended the test (it needs about 3 minutes)");
    else if (alive == 0) {
        snprintf(text, sizeof text, "lifetime: the mapping expired within %u s", lt_idle_s[0]);
        append_why(b, text);
    }
}

static void udp_observe(fam *f, ntcp_nat_obs *o, ntcp_nat_behaviour_t *b)
{
    uint64_t now = now_ms(f->d);
    ntcp_nat_obs_init(o, false);
    o->local = f->local_ip;
    ntcp_sa_set_port(&o->local, f->us[US_MAP].port);
    static const int map_kinds[3] = {U_MAP0, U_MAP1, U_MAP2};
    for (int i = 0; i < 3; i++) {
        utxn *t = &f->ut[map_kinds[i]];
        o->got[i] = t->answered && t->got_mapped;
        if (o->got[i])
            o->mapped[i] = t->mapped;
    }
    /* Silence counts only where the plain request on that port came back. */
    bool plain = f->ut[U_FPLAIN].answered;
    o->from_other_both = f->ut[U_FBOTH].answered ? NTCP_YES : NTCP_UNKNOWN;
    o->from_other_port = f->ut[U_FPORT].answered ? NTCP_YES : NTCP_UNKNOWN;
    o->silent_both = plain ? utxn_silent(&f->ut[U_FBOTH], now) : 0;
    o->silent_port = plain ? utxn_silent(&f->ut[U_FPORT], now) : 0;
    link_loss(f->d, &o->lost, &o->tries);
    /* Mappings made in the first burst, in the order they were made. */
    static const int seq_kinds[2 + NSEQ] = {U_MAP0, U_FPLAIN, U_SEQ0, U_SEQ0 + 1, U_SEQ0 + 2};
    static const int seq_socks[2 + NSEQ] = {US_MAP, US_FILT, US_SEQ0, US_SEQ0 + 1, US_SEQ0 + 2};
    for (int i = 0; i < 2 + NSEQ; i++) {
        utxn *t = &f->ut[seq_kinds[i]];
        if (!t->got_mapped)
            continue;
        if (!o->got_other && i > 0) {
            o->got_other = true;
            o->other_local = f->local_ip;
            ntcp_sa_set_port(&o->other_local, f->us[seq_socks[i]].port);
            o->other_mapped = t->mapped;
        }
        o->seq_local[o->nseq] = f->us[seq_socks[i]].port;
        o->seq_mapped[o->nseq] = ntcp_sa_port(&t->mapped);
        o->seq_pos[o->nseq] = (uint8_t)i;
        o->seq_first[o->nseq] = t->nsent_ans == 1;
        o->nseq++;
    }
    if (o->got[0])
        o->hairpin = f->ut[U_HAIR].answered ? NTCP_YES : NTCP_NO;
    ntcp_classify(o, b);
    if ((f->d->flags & NTCP_DISCOVER_LIFETIME) && b->reach == NTCP_REACH_NAT)
        lifetime_observe(f, b);
    b->local = o->local;
    if (o->got[0])
        b->mapped = o->mapped[0];
    if (f->udp_why[0] && b->mapping == NTCP_DEP_UNKNOWN)
        prepend_why(b, f->udp_why);
}

/* ---------------------------------------------------------------- TCP */

static void tcp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    tconn *c = h->data;
    uint8_t *p;
    size_t avail;
    (void)hint;
    stun_framer_space(&c->fr, &p, &avail);
    *buf = uv_buf_init((char *)p, (unsigned)avail);
}

static bool is_filt(int kind)
{
    return kind >= T_FILT0 && kind < T_FILT0 + NFILT;
}

/* Request r on c will get no answer any more (given up, or c closed). */
static void treq_over(tconn *c, treq *r)
{
    if (r->over)
        return;
    r->over = true;
    if (r->variant >= 0) {
        c->f->cb[r->variant].pending--;
        c->f->cb_unanswered++;
    }
}

static void tconn_finish(tconn *c)
{
    if (!c->done)
        c->ended_at = now_ms(c->f->d);
    c->done = true;
    for (int i = 0; i < c->nreq; i++)
        treq_over(c, &c->req[i]);
    close_handle((uv_handle_t *)&c->h, &c->open, on_tconn_closed);
}

static void tcp_after_map0(fam *f);

static void cb_result(fam *f, treq *r, const stun_msg *m)
{
    tvar *v = &f->cb[r->variant];
    stunt_connect_result res;
    v->pending--;
    if (m->cls != STUN_SUCCESS || stunt_get_connect_result(m, &res) < 0 ||
        res.outcome == STUNT_LOCAL) {
        if (!f->tcp_why[0])
            snprintf(f->tcp_why, sizeof f->tcp_why,
                     "the server did not run the connect-back test (not ntcp-stuntd?)");
        return;
    }
    if (res.outcome == STUNT_TIMEOUT) {
        v->silent += syn_tries(r->timeout_ms, f->d->rtt_ms);
        return;
    }
    if (res.outcome == STUNT_CONNECTED)
        v->through = true;
    else if (v->refused < 0)
        v->refused = res.outcome; /* an RST or an ICMP error: the NAT said no */
    /* SYNs of the server's that went unanswered before this one came back. */
    unsigned k = syns_by(res.elapsed_ms) - 1;
    f->cb_tries += k + 1;
    f->cb_lost += k;
}

static void tconn_on_message(tconn *c, const stun_msg *m)
{
    fam *f = c->f;
    for (int i = 0; i < c->nreq; i++) {
        treq *r = &c->req[i];
        if (r->over || memcmp(r->tid, m->tid, STUN_TID_SIZE))
            continue;
        if (m->cls != STUN_SUCCESS && m->cls != STUN_ERROR)
            return;
        r->over = r->answered = true;
        if (r->variant >= 0) {
            cb_result(f, r, m);
            break;
        }
        note_rtt(f->d, c->bind_at);
        if (m->cls == STUN_SUCCESS) {
            if (stun_get_addr(m, STUN_ATTR_XOR_MAPPED_ADDRESS, &c->mapped) == 0 ||
                stun_get_addr(m, STUN_ATTR_MAPPED_ADDRESS, &c->mapped) == 0)
                c->got_mapped = true;
            if (c->kind == T_MAP0) {
                if (stun_get_addr(m, STUN_ATTR_OTHER_ADDRESS, &f->other) == 0)
                    f->have_other = f->other.ss_family == f->af;
                tcp_after_map0(f);
            }
        }
        break;
    }
    /* A filtering connection stays open for more rounds (tcp_filter_tick)
     * until discovery ends; the others are done with their answer. */
    if (!is_filt(c->kind) && c->nreq && c->req[R_BIND].over)
        tconn_finish(c);
}

static void on_tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    tconn *c = s->data;
    (void)buf;
    if (nread < 0) {
        tconn_finish(c);
        return;
    }
    stun_framer_commit(&c->fr, (size_t)nread);
    const uint8_t *msg;
    size_t len;
    int rc;
    while (!c->done && (rc = stun_framer_next(&c->fr, &msg, &len)) == 1) {
        stun_msg m;
        if (stun_parse(&m, msg, len) == 0)
            tconn_on_message(c, &m);
    }
}

/* Adds a request to c and writes it at out: a Binding (variant -1) or a
 * connect-back of that variant. Returns its length, 0 when c is full. */
static size_t tconn_request(tconn *c, int variant, uint32_t timeout_ms, uint8_t *out, size_t cap)
{
    disc *d = c->f->d;
    if (c->nreq == R_MAX)
        return 0;
    treq *r = &c->req[c->nreq];
    memset(r, 0, sizeof *r);
    r->variant = variant;
    r->timeout_ms = timeout_ms;
    stun_new_tid(r->tid);
    stun_builder b;
    stun_build_init(&b, out, cap, variant < 0 ? STUN_BINDING : STUNT_CONNECT_BACK, STUN_REQUEST,
                    r->tid, false);
    if (variant >= 0) {
        stun_build_change_request(&b, variant == V_BOTH ? STUN_CHANGE_IP | STUN_CHANGE_PORT
                                                        : STUN_CHANGE_PORT);
        stun_build_u32(&b, STUNT_ATTR_TIMEOUT, timeout_ms);
        /* The result comes when the server gives up, then crosses the
         * link; the request or the result may be retransmitted, after 3 s
         * on a connection whose SYN was (RFC 6298 5.7). */
        uint64_t dl = now_ms(d) + timeout_ms + 4ull * d->rtt_ms + 3000;
        r->deadline = dl < d->deadline ? dl : d->deadline;
    }
    int n = stun_build_finish(&b, NULL);
    if (n <= 0 || (size_t)n > cap)
        return 0;
    if (variant >= 0) {
        c->f->cb[variant].pending++;
        c->f->cb[variant].asked++;
    }
    c->nreq++;
    return (size_t)n;
}

/* Writes n bytes of c's next write buffer. */
static int tconn_write(tconn *c, size_t n)
{
    int i = c->nwrites++;
    uv_buf_t b = uv_buf_init((char *)c->wbuf[i], (unsigned)n);
    int w = uv_try_write((uv_stream_t *)&c->h, &b, 1);
    if (w >= 0 && (size_t)w < n) {
        b = uv_buf_init((char *)c->wbuf[i] + w, (unsigned)(n - (size_t)w));
        w = uv_write(&c->wreq[i], (uv_stream_t *)&c->h, &b, 1, NULL);
    } else if (w == UV_EAGAIN) {
        w = uv_write(&c->wreq[i], (uv_stream_t *)&c->h, &b, 1, NULL);
    }
    return w < 0 ? w : 0;
}

static void on_tcp_connect(uv_connect_t *req, int status)
{
    tconn *c = req->data;
    fam *f = c->f;
    disc *d = f->d;
    if (status < 0 || !c->open) {
        if (c->kind == T_HAIR && f->t_hair == NTCP_UNKNOWN)
            f->t_hair = NTCP_NO;
        /* Refused or unreachable: an answer, not a loss. */
        c->failed = status < 0 && status != UV_ECANCELED;
        tconn_finish(c);
        return;
    }
    c->connected = true;
    c->connected_at = now_ms(d);
    if (c->kind == T_HAIR)
        return; /* the verdict comes from our listener */
    note_rtt(d, c->started_at);
    c->bind_at = now_ms(d);
    size_t n = tconn_request(c, -1, 0, c->wbuf[0], sizeof c->wbuf[0]);
    if (c->kind == T_FILT0 || c->kind == T_FILT1) {
        /* The first round: a dropped SYN is only "dropped" once the server's
         * kernel would have retransmitted it (1 s), so that one lost packet
         * does not decide; whether two rounds of that are enough is for the
         * loss on the link to say (tcp_filter_tick). */
        uint32_t cb_ms = 1000 + 4 * d->rtt_ms + SYN_SLACK_MS;
        if (cb_ms > 3000)
            cb_ms = 3000;
        for (int v = 0; v < V_COUNT; v++)
            n += tconn_request(c, v, cb_ms, c->wbuf[0] + n, sizeof c->wbuf[0] - n);
    }
    if (tconn_write(c, n) < 0 || uv_read_start((uv_stream_t *)&c->h, tcp_alloc, on_tcp_read) < 0)
        tconn_finish(c);
}

/* Opens a TCP socket bound to local port lport (0: any) with SO_REUSEPORT,
 * so that several connections and a listener can share the port. */
static int tcp_socket(fam *f, uv_tcp_t *h, void *data, bool *open, uint16_t lport, uint16_t *bound)
{
    disc *d = f->d;
    if (uv_tcp_init_ex(d->loop, h, (unsigned)f->af) < 0)
        return NTCP_ESYS;
    h->data = data;
    *open = true;
    d->handles++;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)h, &fd) < 0 || ntcp_sock_reuse(fd, NTCP_SOCK_REUSEPORT) < 0)
        return NTCP_ESYS;
    struct sockaddr_storage any;
    any_addr(f->af, lport, &any);
    if (uv_tcp_bind(h, (const struct sockaddr *)&any, f->af == AF_INET6 ? UV_TCP_IPV6ONLY : 0) < 0)
        return NTCP_ESYS;
    struct sockaddr_storage local;
    int len = sizeof local;
    if (uv_tcp_getsockname(h, (struct sockaddr *)&local, &len) < 0)
        return NTCP_ESYS;
    *bound = ntcp_sa_port(&local);
    return 0;
}

static void tconn_start(fam *f, int kind, uint16_t lport, const struct sockaddr_storage *dst)
{
    disc *d = f->d;
    tconn *c = &f->tc[kind];
    memset(c, 0, sizeof *c);
    c->f = f;
    c->kind = kind;
    c->started = true;
    stun_framer_init(&c->fr, c->rbuf, sizeof c->rbuf);
    int rc = tcp_socket(f, &c->h, c, &c->open, lport, &c->lport);
    c->creq.data = c;
    c->started_at = now_ms(d);
    c->deadline = tcp_pos_deadline(d);
    if (rc < 0 || uv_tcp_connect(&c->creq, &c->h, (const struct sockaddr *)dst, on_tcp_connect) < 0)
        tconn_finish(c);
}

static void on_accepted_closed(uv_handle_t *h)
{
    disc *d = h->data;
    free(h);
    handle_closed(d);
}

static void on_listen(uv_stream_t *server, int status)
{
    tlisten *l = server->data;
    fam *f = l->f;
    disc *d = f->d;
    if (status < 0)
        return;
    uv_tcp_t *c = malloc(sizeof *c);
    if (!c || uv_tcp_init(d->loop, c) < 0) {
        free(c);
        return;
    }
    c->data = d;
    d->handles++;
    if (uv_accept(server, (uv_stream_t *)c) == 0) {
        l->accepted++;
        if (l == &f->tl[TL_P] && f->tc[T_HAIR].started) {
            f->t_hair = NTCP_YES;
            tconn_finish(&f->tc[T_HAIR]);
        }
    }
    uv_close((uv_handle_t *)c, on_accepted_closed);
}

static int tlisten_open(fam *f, tlisten *l)
{
    l->f = f;
    int rc = tcp_socket(f, &l->h, l, &l->open, 0, &l->port);
    if (rc < 0 || uv_listen((uv_stream_t *)&l->h, 16, on_listen) < 0)
        return NTCP_ESYS;
    return 0;
}

static void tcp_after_map0(fam *f)
{
    disc *d = f->d;
    tconn *m0 = &f->tc[T_MAP0];
    if (f->have_other) {
        struct sockaddr_storage alt_ip = f->other;
        ntcp_sa_set_port(&alt_ip, ntcp_sa_port(&f->primary));
        tconn_start(f, T_MAP1, f->tl[TL_P].port, &alt_ip);
        tconn_start(f, T_MAP2, f->tl[TL_P].port, &f->other);
    } else if (!f->tcp_why[0]) {
        snprintf(f->tcp_why, sizeof f->tcp_why, "the server gave no OTHER-ADDRESS");
    }
    if (m0->got_mapped) {
        f->hair_deadline = now_ms(d) + neg_wait(d);
        tconn_start(f, T_HAIR, 0, &m0->mapped);
        f->tc[T_HAIR].deadline = f->hair_deadline;
    }
}

static void tcp_start(fam *f)
{
    for (int i = 0; i < TL_COUNT; i++) {
        if (tlisten_open(f, &f->tl[i]) < 0) {
            snprintf(f->tcp_why, sizeof f->tcp_why, "cannot open a TCP listener");
            f->on_tcp = false;
            return;
        }
    }
    for (int v = 0; v < V_COUNT; v++)
        f->cb[v].refused = -1;
    /* SYNs in a known order: lp, the first two filtering ports, then the
     * fresh ports; the third filtering port after the burst. */
    tconn_start(f, T_MAP0, f->tl[TL_P].port, &f->primary);
    tconn_start(f, T_FILT0, f->tl[TL_Q0].port, &f->primary);
    tconn_start(f, T_FILT1, f->tl[TL_Q0 + 1].port, &f->primary);
    tconn_start(f, T_SEQ0, 0, &f->primary);
    tconn_start(f, T_SEQ1, 0, &f->primary);
    tconn_start(f, T_FILT2, f->tl[TL_Q0 + 2].port, &f->primary);
}

/* Everything answered or given up; the filtering connections need only be
 * settled (they close with the rest). */
static bool tcp_done(fam *f)
{
    if (!f->on_tcp)
        return true;
    for (int k = 0; k < T_COUNT; k++)
        if (f->tc[k].started && !f->tc[k].done && !(is_filt(k) && f->filt_settled))
            return false;
    return true;
}

/* Whether variant v's silence needs more tries than it has. */
static bool cb_wants_more(fam *f, int v, unsigned need)
{
    tvar *t = &f->cb[v];
    /* Only silence asks for more: no answer at all from the server (not
     * ntcp-stuntd?) would not change with another round. */
    if (t->through || t->refused >= 0 || t->silent == 0 || need == UINT_MAX || t->silent >= need ||
        t->asked >= CB_MAX)
        return false;
    /* Through from the other address and port: filtering is
     * endpoint-independent, whatever the other port shows. */
    return !(v == V_PORT && f->cb[V_BOTH].through);
}

/* Whether c can carry another round: connected, and no connect-back of its
 * own still running at the server for all we know (one whose answer was
 * given up), since a new one would have the same addresses. */
static bool cb_conn_ready(tconn *c)
{
    if (!c->connected || c->done || c->nwrites >= NWRITES)
        return false;
    for (int r = 0; r < c->nreq; r++)
        if (c->req[r].variant >= 0 && !c->req[r].answered)
            return false;
    return true;
}

/* Another round: as many more connect-backs as the silence still needs, at
 * most one per variant and filtering connection. Each is as short as will
 * do: long enough for the server's kernel to send its SYN k times (at 0, 1
 * and 3 s), k from 1 to 3, the smallest that gives the tries needed over
 * the connections there are, or what time is left before the deadline.
 * Returns whether it sent any. */
static bool cb_round(fam *f, uint64_t now, unsigned need)
{
    disc *d = f->d;
    uint32_t rtt = d->rtt_ms ? d->rtt_ms : 100;
    uint64_t margin = 4ull * rtt + 300;
    unsigned nconn = 0, more[V_COUNT] = {0}, most = 0;
    bool ready[NFILT];
    for (int i = 0; i < NFILT; i++)
        nconn += ready[i] = cb_conn_ready(&f->tc[T_FILT0 + i]);
    for (int v = 0; v < V_COUNT; v++) {
        if (cb_wants_more(f, v, need))
            more[v] = need - f->cb[v].silent;
        most = more[v] > most ? more[v] : most;
    }
    if (nconn == 0 || most == 0)
        return false;
    static const uint32_t syn_at[3] = {0, 1000, 3000};
    unsigned k = 1;
    while (k < 3 && k * nconn < most)
        k++;
    uint64_t tk = syn_at[k - 1] + 2ull * rtt + 200;
    if (now + tk + margin > d->deadline)
        tk = d->deadline > now + margin ? d->deadline - now - margin : 0;
    unsigned per = syn_tries((uint32_t)tk, rtt);
    if (per == 0)
        return false;
    size_t len[NFILT] = {0};
    bool sent = false;
    for (int v = 0; v < V_COUNT; v++) {
        unsigned n = (more[v] + per - 1) / per;
        for (int i = 0; i < NFILT && n > 0 && f->cb[v].asked < CB_MAX; i++) {
            tconn *c = &f->tc[T_FILT0 + i];
            if (!ready[i])
                continue;
            size_t l = tconn_request(c, v, (uint32_t)tk, c->wbuf[c->nwrites] + len[i],
                                     sizeof c->wbuf[0] - len[i]);
            len[i] += l;
            n -= l > 0;
        }
    }
    for (int i = 0; i < NFILT; i++) {
        if (!len[i])
            continue;
        sent = true;
        if (tconn_write(&f->tc[T_FILT0 + i], len[i]) < 0)
            tconn_finish(&f->tc[T_FILT0 + i]);
    }
    return sent;
}

/* The connect-backs: answers given up at their deadline; once a round has
 * answered, another if the silence seen is not conclusive for the loss on
 * the link so far. Settled when none runs and none is wanted (or none can
 * be sent); the loss seen later may unsettle it. */
static void tcp_filter_tick(fam *f, uint64_t now)
{
    f->filt_settled = false;
    for (int i = 0; i < NFILT; i++) {
        tconn *c = &f->tc[T_FILT0 + i];
        if (!c->started || c->done)
            continue;
        if (!c->connected && i < 2)
            return; /* its first round is still to be sent */
        for (int r = 0; r < c->nreq; r++)
            if (c->req[r].variant >= 0 && !c->req[r].over && now >= c->req[r].deadline)
                treq_over(c, &c->req[r]);
    }
    if (f->cb[V_BOTH].pending || f->cb[V_PORT].pending)
        return;
    unsigned lost, tries;
    link_loss(f->d, &lost, &tries);
    if (cb_round(f, now, ntcp_silence_needed(lost, tries)))
        return;
    f->filt_settled = true;
}

static void tcp_tick(fam *f, uint64_t now)
{
    for (int k = 0; k < T_COUNT; k++) {
        tconn *c = &f->tc[k];
        if (!c->started || c->done || (is_filt(k) && c->connected))
            continue;
        if (now >= c->deadline) {
            if (k == T_HAIR && f->t_hair == NTCP_UNKNOWN)
                f->t_hair = NTCP_NO;
            tconn_finish(c);
        }
    }
    tcp_filter_tick(f, now);
}

/* Loss seen by one of our connects: every SYN that was sent again, or that
 * had its answer window without an answer. */
static void tconn_loss(tconn *c, uint64_t now, unsigned *lost, unsigned *tries)
{
    if (!c->started || c->failed || c->kind == T_HAIR)
        return;
    if (c->connected) {
        unsigned k = syns_by(c->connected_at - c->started_at) - 1;
        *tries += k + 1;
        *lost += k;
        return;
    }
    uint64_t elapsed = (c->done ? c->ended_at : now) - c->started_at, w = answer_window(c->f->d);
    unsigned n = elapsed >= w; /* the first SYN, at 0 */
    for (size_t i = 0; i < NREXMIT; i++)
        n += syn_rexmit_ms[i] + w <= elapsed;
    *tries += n;
    *lost += n;
}

/* What the link lost so far, over every family: of the requests, SYNs and
 * connect-backs that had to be answered (not the filtering tests, whose
 * silence is what is being judged), how many were not. */
static void link_loss(disc *d, unsigned *lost, unsigned *tries)
{
    uint64_t now = now_ms(d);
    *lost = *tries = 0;
    for (int i = 0; i < 2; i++) {
        fam *f = d->fams[i];
        if (!f)
            continue;
        for (int k = 0; k < U_COUNT; k++) {
            utxn *t = &f->ut[k];
            if (!t->started || !udp_positive(k))
                continue;
            unsigned lost_here = t->replied ? t->nsent_ans - 1 : utxn_silent(t, now);
            *tries += t->replied ? t->nsent_ans : lost_here;
            *lost += lost_here;
        }
        for (int k = 0; k < T_COUNT; k++)
            tconn_loss(&f->tc[k], now, lost, tries);
        *tries += f->cb_tries;
        *lost += f->cb_lost;
    }
}

static void tcp_observe(fam *f, ntcp_nat_obs *o, ntcp_nat_behaviour_t *b)
{
    ntcp_nat_obs_init(o, true);
    o->local = f->local_ip;
    ntcp_sa_set_port(&o->local, f->tl[TL_P].port);
    static const int map_kinds[3] = {T_MAP0, T_MAP1, T_MAP2};
    for (int i = 0; i < 3; i++) {
        tconn *c = &f->tc[map_kinds[i]];
        o->got[i] = c->got_mapped;
        if (o->got[i])
            o->mapped[i] = c->mapped;
    }
    tvar *vb = &f->cb[V_BOTH], *vp = &f->cb[V_PORT];
    o->from_other_both = vb->through ? NTCP_YES : vb->refused >= 0 ? NTCP_NO : NTCP_UNKNOWN;
    o->from_other_port = vp->through ? NTCP_YES : vp->refused >= 0 ? NTCP_NO : NTCP_UNKNOWN;
    o->silent_both = vb->silent;
    o->silent_port = vp->silent;
    o->syn_outcome = vb->refused;
    link_loss(f->d, &o->lost, &o->tries);
    /* The port pattern's new mappings, in the order of their SYNs. */
    static const int seq_kinds[] = {T_MAP0, T_FILT0, T_FILT1, T_SEQ0, T_SEQ1};
    for (size_t i = 0; i < sizeof seq_kinds / sizeof seq_kinds[0]; i++) {
        tconn *c = &f->tc[seq_kinds[i]];
        if (!c->got_mapped)
            continue;
        o->seq_local[o->nseq] = c->lport;
        o->seq_mapped[o->nseq] = ntcp_sa_port(&c->mapped);
        o->seq_pos[o->nseq] = (uint8_t)i;
        o->seq_first[o->nseq] = c->connected_at - c->started_at < syn_rexmit_ms[0];
        o->nseq++;
    }
    static const int other_kinds[] = {T_FILT0, T_FILT1, T_SEQ0, T_SEQ1, T_FILT2};
    for (size_t i = 0; i < sizeof other_kinds / sizeof other_kinds[0] && !o->got_other; i++) {
        tconn *c = &f->tc[other_kinds[i]];
        if (!c->got_mapped)
            continue;
        o->got_other = true;
        o->other_local = f->local_ip;
        ntcp_sa_set_port(&o->other_local, c->lport);
        o->other_mapped = c->mapped;
    }
    if (o->got[0])
        o->hairpin = f->t_hair == NTCP_YES ? NTCP_YES : NTCP_NO;
    if (f->cb_unanswered && !f->tcp_why[0])
        snprintf(f->tcp_why, sizeof f->tcp_why,
                 "the server did not answer %u connect-back requests (not ntcp-stuntd?)",
                 f->cb_unanswered);
    ntcp_classify(o, b);
    b->local = o->local;
    if (o->got[0])
        b->mapped = o->mapped[0];
    if (f->tcp_why[0] && (b->mapping == NTCP_DEP_UNKNOWN || b->filtering == NTCP_DEP_UNKNOWN))
        prepend_why(b, f->tcp_why);
    if ((f->d->flags & NTCP_DISCOVER_LIFETIME) && b->reach == NTCP_REACH_NAT)
        append_why(b, "lifetime: not measured over TCP (an established mapping must live "
                      "2 h 4 min at least, RFC 5382 REQ-5: hours to measure)");
}

/* ---------------------------------------------------------------- run */

/* The local address the kernel would use towards dst (no packet is sent). */
static int route_source(const struct sockaddr_storage *dst, struct sockaddr_storage *src)
{
    int fd = socket(dst->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NTCP_ESYS;
    socklen_t len = sizeof *src;
    int rc = connect(fd, (const struct sockaddr *)dst, ntcp_sa_len(dst)) == 0 &&
                     getsockname(fd, (struct sockaddr *)src, &len) == 0
                 ? 0
                 : NTCP_EUNREACHABLE;
    close(fd);
    return rc;
}

static void fam_close(fam *f)
{
    if (!f)
        return;
    for (int i = 0; i < US_COUNT; i++)
        close_handle((uv_handle_t *)&f->us[i].h, &f->us[i].open, on_udp_closed);
    for (int i = 0; i < T_COUNT; i++)
        close_handle((uv_handle_t *)&f->tc[i].h, &f->tc[i].open, on_tconn_closed);
    for (int i = 0; i < TL_COUNT; i++)
        close_handle((uv_handle_t *)&f->tl[i].h, &f->tl[i].open, on_tlisten_closed);
}

static void disc_prepare_server(disc *d);
static void fam_unresolved(fam *f, const char *why);

static void finish(disc *d)
{
    ntcp_nat_profile_t *p = &d->profile;
    bool tick_open = true;
    int status = 0;
    static const unsigned fam_flag[2] = {NTCP_DISCOVER_IPV4, NTCP_DISCOVER_IPV6};
    bool answered = false;
    for (int i = 0; i < 2; i++) {
        fam *f = d->fams[i];
        if (f && f->resolving) {
            /* The deadline came first: nothing was probed in this family.
             * The lookup ends (cancelled, if it has not started) in
             * on_resolved, which the disc waits for. */
            uv_cancel((uv_req_t *)&f->gai);
            char why[sizeof p->udp4.why];
            snprintf(why, sizeof why, "the lookup of %s did not finish in time",
                     d->ctx->stun_servers[d->server_idx]);
            fam_unresolved(f, why);
        }
    }
    for (int i = 0; i < 2; i++) {
        fam *f = d->fams[i];
        ntcp_nat_obs o;
        ntcp_nat_behaviour_t *ub = i == 0 ? &p->udp4 : &p->udp6;
        ntcp_nat_behaviour_t *tb = i == 0 ? &p->tcp4 : &p->tcp6;
        if (!(p->flags & fam_flag[i]) || !f)
            continue;
        if (f->on_udp) {
            udp_observe(f, &o, ub);
            answered = answered || ub->reach != NTCP_REACH_BLOCKED;
            if (ub->reach == NTCP_REACH_UNKNOWN || ub->mapping == NTCP_DEP_UNKNOWN ||
                ub->filtering == NTCP_DEP_UNKNOWN)
                status = NTCP_EPROTO;
        }
        if (f->on_tcp) {
            tcp_observe(f, &o, tb);
            answered = answered || tb->reach != NTCP_REACH_BLOCKED;
            if (tb->reach == NTCP_REACH_UNKNOWN || tb->mapping == NTCP_DEP_UNKNOWN ||
                tb->filtering == NTCP_DEP_UNKNOWN || tb->syn == NTCP_SYN_UNKNOWN)
                status = NTCP_EPROTO;
        }
    }
    if (!answered)
        status = NTCP_EUNREACHABLE;
    for (int i = 0; i < 2; i++)
        fam_close(d->fams[i]);
    if (status == NTCP_EUNREACHABLE && d->server_idx + 1 < (int)d->ctx->n_stun_servers &&
        now_ms(d) < d->deadline) {
        /* The next server in the list; handles of this try close meanwhile. */
        d->server_idx++;
        disc_prepare_server(d);
        return;
    }
    uint64_t now = now_ms(d);
    p->elapsed_ms = (uint32_t)(now - d->t0);
    p->rtt_ms = d->rtt_ms;
    if (!answered)
        p->server[0] = '\0';
    if (d->server4) {
        memset(d->server4, 0, sizeof *d->server4);
        if (answered && d->fams[0] && (p->flags & NTCP_DISCOVER_IPV4))
            *d->server4 = d->fams[0]->primary;
    }
    d->finished = true;
    uv_timer_stop(&d->tick);
    close_handle((uv_handle_t *)&d->tick, &tick_open, on_timer_closed);
    d->cb(d->ctx, status, p, d->user);
}

static void on_tick(uv_timer_t *t)
{
    disc *d = t->data;
    if (d->finished)
        return;
    uint64_t now = now_ms(d);
    if (d->resolving > 0) {
        /* The server's name is still being looked up: nothing to probe yet. */
        if (now >= d->deadline)
            finish(d);
        return;
    }
    bool all = true;
    bool gave_up = !d->any_answer && now - d->server_t0 >= UNREACHABLE_MS;
    for (int i = 0; i < 2; i++) {
        fam *f = d->fams[i];
        if (!f)
            continue;
        if (now >= d->deadline || gave_up) {
            /* Whatever is still open has had its time. */
            for (int k = 0; k < U_COUNT; k++)
                f->ut[k].done = true;
            for (int k = 0; k < T_COUNT; k++)
                if (f->tc[k].started && !f->tc[k].done)
                    tconn_finish(&f->tc[k]);
            continue;
        }
        if (f->on_udp)
            udp_tick(f, now);
        if (f->on_tcp)
            tcp_tick(f, now);
        all = all && udp_done(f, now) && tcp_done(f);
    }
    if (all || now >= d->deadline || gave_up)
        finish(d);
}

/* Family f of the current server will not be probed: says why. */
static void fam_unresolved(fam *f, const char *why)
{
    disc *d = f->d;
    ntcp_nat_profile_t *p = &d->profile;
    bool v6 = f->af == AF_INET6;
    ntcp_nat_behaviour_t *ub = v6 ? &p->udp6 : &p->udp4;
    ntcp_nat_behaviour_t *tb = v6 ? &p->tcp6 : &p->tcp4;
    snprintf(ub->why, sizeof ub->why, "%s", why);
    snprintf(tb->why, sizeof tb->why, "%s", why);
    p->flags &= ~(v6 ? NTCP_DISCOVER_IPV6 : NTCP_DISCOVER_IPV4);
}

/* The current server's address in f's family is sa (NULL: it has none):
 * the family is probed when there is a route to it. */
static void fam_set_server(fam *f, const struct sockaddr *sa, size_t salen)
{
    disc *d = f->d;
    const char *server = d->ctx->stun_servers[d->server_idx];
    const char *fname = f->af == AF_INET6 ? "IPv6" : "IPv4";
    char why[sizeof d->profile.udp4.why];
    if (!sa || sa->sa_family != f->af || salen > sizeof f->primary) {
        snprintf(why, sizeof why, "%s has no %s address", server, fname);
        fam_unresolved(f, why);
        return;
    }
    memset(&f->primary, 0, sizeof f->primary);
    memcpy(&f->primary, sa, salen);
    ntcp_sa_set_port(&f->primary, d->port);
    if (route_source(&f->primary, &f->local_ip) < 0) {
        snprintf(why, sizeof why, "no %s route to %s", fname, server);
        fam_unresolved(f, why);
        return;
    }
    f->on_udp = d->profile.flags & NTCP_DISCOVER_UDP;
    f->on_tcp = d->profile.flags & NTCP_DISCOVER_TCP;
}

/* Every address of the current server is known: the probes start, IPv4's
 * then IPv6's, each UDP first (its burst of new mappings must not
 * interleave with SYNs). The give-up time counts from here: a slow name
 * lookup is not a server that does not answer. */
static void start_probes(disc *d)
{
    d->server_t0 = now_ms(d);
    for (int i = 0; i < 2; i++) {
        fam *f = d->fams[i];
        if (f && f->on_udp)
            udp_start(f);
        if (f && f->on_tcp)
            tcp_start(f);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    fam *f = req->data;
    disc *d = f->d;
    f->resolving = false;
    /* Not when discovery has finished (the deadline came first) or moved on
     * to another server: then nothing waits for this answer. */
    if (!d->finished && d->fams[f->af == AF_INET6] == f) {
        bool ok = status == 0 && res;
        fam_set_server(f, ok ? res->ai_addr : NULL, ok ? res->ai_addrlen : 0);
        if (--d->resolving == 0)
            start_probes(d);
    }
    uv_freeaddrinfo(res);
    handle_closed(d);
}

/* Looks up the current server's address in f's family. A name goes to
 * libuv's thread pool (uv_getaddrinfo), so that a slow DNS never stalls the
 * loop, which may be the caller's (ntcp_discover_start()); a numeric address
 * needs no lookup. */
static void fam_resolve(fam *f, const char *host, const struct sockaddr_storage *numeric)
{
    disc *d = f->d;
    if (numeric) {
        fam_set_server(f, numeric->ss_family == f->af ? (const struct sockaddr *)numeric : NULL,
                       ntcp_sa_len(numeric));
        return;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = f->af;
    hints.ai_socktype = SOCK_DGRAM;
    f->gai.data = f;
    if (uv_getaddrinfo(d->loop, &f->gai, on_resolved, host, NULL, &hints) < 0) {
        fam_set_server(f, NULL, 0);
        return;
    }
    f->resolving = true;
    d->resolving++;
    d->handles++;
}

/* Sets up the probes against server number d->server_idx; they start once
 * its addresses are known (start_probes). */
static void disc_prepare_server(disc *d)
{
    static const int afs[2] = {AF_INET, AF_INET6};
    static const unsigned fam_flag[2] = {NTCP_DISCOVER_IPV4, NTCP_DISCOVER_IPV6};
    const char *server = d->ctx->stun_servers[d->server_idx];
    ntcp_nat_profile_t *p = &d->profile;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->flags = d->flags;
    snprintf(p->server, sizeof p->server, "%s", server);
    d->any_answer = false;
    d->rtt_ms = 0;
    d->resolving = 0;
    char host[256];
    bool host_ok = ntcp_split_host_port(server, host, sizeof host, &d->port, 3478) == 0;
    struct sockaddr_storage numeric;
    bool is_numeric = host_ok && ntcp_parse_addr(server, 3478, &numeric) == 0;
    for (int i = 0; i < 2; i++) {
        if (d->fams[i]) {
            /* Its handles may still be closing: keep it until the end. */
            fam **r = realloc(d->retired, (d->nretired + 1) * sizeof *r);
            if (!r)
                continue; /* leaves fams[i] in place: it is freed at the end */
            d->retired = r;
            r[d->nretired++] = d->fams[i];
            d->fams[i] = NULL;
        }
        if (!(p->flags & fam_flag[i]))
            continue;
        fam *f = d->fams[i] = calloc(1, sizeof *f);
        if (!f) {
            p->flags &= ~fam_flag[i];
            continue;
        }
        f->d = d;
        f->af = afs[i];
        if (host_ok)
            fam_resolve(f, host, is_numeric ? &numeric : NULL);
        else
            fam_set_server(f, NULL, 0);
    }
    if (d->resolving == 0)
        start_probes(d);
}

int ntcp_discover_start(ntcp_t *ctx, struct uv_loop_s *loop, unsigned flags, int timeout_ms,
                        ntcp_discover_cb cb, void *user_ptr)
{
    return ntcp_discover_start_addr(ctx, loop, flags, timeout_ms, cb, user_ptr, NULL);
}

int ntcp_discover_start_addr(ntcp_t *ctx, struct uv_loop_s *loop, unsigned flags, int timeout_ms,
                             ntcp_discover_cb cb, void *user_ptr, struct sockaddr_storage *server4)
{
    if (!ctx || !loop || !cb || timeout_ms <= 0)
        return NTCP_EINVAL;
    if (ctx->n_stun_servers == 0)
        return NTCP_ECONFIG;
    if (!(flags & (NTCP_DISCOVER_UDP | NTCP_DISCOVER_TCP)))
        flags |= NTCP_DISCOVER_UDP | NTCP_DISCOVER_TCP;
    if (!(flags & (NTCP_DISCOVER_IPV4 | NTCP_DISCOVER_IPV6)))
        flags |= NTCP_DISCOVER_IPV4 | NTCP_DISCOVER_IPV6;
    disc *d = calloc(1, sizeof *d);
    if (!d)
        return NTCP_ENOMEM;
    d->ctx = ctx;
    d->loop = loop;
    d->cb = cb;
    d->user = user_ptr;
    d->server4 = server4;
    d->flags = flags;
    d->t0 = now_ms(d);
    d->deadline = d->t0 + (uint64_t)timeout_ms;
    if (uv_timer_init(loop, &d->tick) < 0) {
        free(d);
        return NTCP_ESYS;
    }
    d->tick.data = d;
    d->handles++;
    disc_prepare_server(d);
    uv_timer_start(&d->tick, on_tick, TICK_MS, TICK_MS);
    return 0;
}

struct sync_result {
    bool done;
    int status;
    ntcp_nat_profile_t *profile;
};

static void on_sync_done(ntcp_t *ctx, int status, const ntcp_nat_profile_t *profile, void *user)
{
    struct sync_result *r = user;
    (void)ctx;
    r->done = true;
    r->status = status;
    *r->profile = *profile;
}

int ntcp_discover_ex(ntcp_t *ctx, unsigned flags, ntcp_nat_profile_t *profile, int timeout_ms)
{
    if (!profile)
        return NTCP_EINVAL;
    uv_loop_t loop;
    if (uv_loop_init(&loop) < 0)
        return NTCP_ESYS;
    struct sync_result r = {false, 0, profile};
    int rc = ntcp_discover_start(ctx, &loop, flags, timeout_ms, on_sync_done, &r);
    if (rc == 0) {
        uv_run(&loop, UV_RUN_DEFAULT);
        rc = r.done ? r.status : NTCP_ETIMEDOUT;
    }
    uv_loop_close(&loop);
    return rc;
}

int ntcp_discover(ntcp_t *ctx, ntcp_nat_profile_t *profile, int timeout_ms)
{
    return ntcp_discover_ex(ctx, NTCP_DISCOVER_ALL, profile, timeout_ms);
}
