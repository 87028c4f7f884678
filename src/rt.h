/*
 * rt.h: the context's runtime, shared by its files. Internal.
 *
 * The runtime is one thread with a libuv loop, started by the first call that
 * needs it. Bring-up: discovery (TCP and UDP over IPv4, when STUN servers are
 * configured), then the broker session (src/session.c) with the profile blob
 * and the private addresses. Each connection, at either end, is a `conn`:
 * the initiator asks the broker (CONNECT), both ends get a CONNECT-GO, make
 * the plan (src/plan.c) from both profiles and run it (src/engine.c); the
 * engine's verified socket is handed to the caller.
 *
 * Threads. Callers queue requests under rt->mu and wake the loop with a
 * uv_async; blocking callers then wait on rt->cv for their request's `done`.
 * Everything else in struct ntcp_rt is the loop thread's alone, except the
 * fields marked (mu). Every public call counts itself in rt->users while it
 * uses the runtime (rt_enter/rt_leave), so that ntcp_stop() or ntcp_free()
 * from another thread waits for it to leave before freeing.
 *
 * Files. api.c is the callers' side (the public functions, the request
 * queue, rt_enter/rt_leave, the thread's start and stop) and, on the loop,
 * the requests' dispatch, the stop and the tick; rt_bringup.c brings the
 * context up (discovery, the profile blob, the broker session and its
 * callbacks); rt_conn.c runs the connections; rt_udp_keepalive.c keeps the
 * handed-over UDP paths alive. Who writes which field of struct ntcp_rt
 * (others may read it, on the loop thread):
 *   (mu) rq_head/rq_tail    callers append (submit), on_wake takes: api.c
 *   (mu) aq_head/aq_tail    rt_deliver_incoming appends, ntcp_accept and
 *                           handle take: api.c
 *   (mu) stopping, stopped, users                                   api.c
 *   (mu) listening          handle (api.c), registered (rt_bringup.c)
 *   (mu) prof, prof_status  rt_bringup.c (get_rt starts it NTCP_ENOTREADY);
 *                           ntcp_get_profile reads
 *   loop, wake, tick, mux, debug, acb_head/acb_tail                 api.c
 *   phase                   rt_bringup.c; api.c at the stop (P_IDLE)
 *   name                    handle (api.c), before rt_bring_up()
 *   key, s                  rt_bringup.c; api.c frees them at the stop
 *   blob, blen, me, priv, npriv, reg_err, silent_rounds      rt_bringup.c
 *   stun_addr, sampling, sample_again     rt_bringup.c (the sampler's
 *                           callbacks); api.c cancels a sample at the stop
 *   waiting                 api.c (handle, tick), rt_bringup.c (registered,
 *                           rt_fail_waiting), rt_conn.c (held connects)
 *   conns                   rt_conn.c, and on_go (rt_bringup.c) for a
 *                           target; api.c's tick and stop end them
 *   kas                     rt_udp_keepalive.c
 *   relays, bridges         rt_conn.c at a hand-over; api.c at the stop
 * A struct conn is rt_conn.c's; the tick and the stop (api.c) cancel its
 * engine, punch or relay (cancel_err) and end the ones that wait.
 */
#ifndef NTCP_RT_H
#define NTCP_RT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/evp.h>
#include <uv.h>

#include "broker_proto.h"
#include "context.h"
#include "engine.h"
#include "ntcp.h"
#include "plan.h"
#include "portmux.h"
#include "relay.h"
#include "session.h"
#include "udp_plan.h"
#include "udp_punch.h"
#include "verify.h"

enum req_kind { R_LISTEN, R_CONNECT, R_ACCEPT_CB, R_UDP_CLOSE };

typedef struct req req;
struct req {
    req *next;
    int kind;
    char name[BROKER_NAME_MAX + 1]; /* R_LISTEN: the name; R_CONNECT: the peer */
    ntcp_transport_t transport;
    uint64_t t0;       /* uv_hrtime() / 1e6 at the call */
    uint64_t deadline; /* on the same clock */
    ntcp_conn_cb conn_cb;
    ntcp_listen_cb listen_cb;
    void *user;
    /* A blocking caller's request lives on its stack: done, status and info
     * are written under rt->mu and the caller is woken. */
    bool blocking;
    bool done;
    int status; /* fd or error */
    ntcp_conn_info_t info;
};

typedef struct queued {
    struct queued *next;
    int fd;
    ntcp_conn_info_t info;
} queued;

enum phase { P_IDLE, P_DISCOVER, P_REGISTERING, P_REGISTERED };

typedef struct conn conn;

typedef struct ntcp_rt {
    ntcp_t *ctx;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* (mu) */
    req *rq_head, *rq_tail; /* new requests, for the loop */
    queued *aq_head, *aq_tail;
    bool stopping, stopped;
    bool listening;
    unsigned users;
    int prof_status;
    ntcp_nat_profile_t prof;

    /* the loop thread's */
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t tick;
    int phase;
    char name[BROKER_NAME_MAX + 1];
    EVP_PKEY *key;
    ntcp_session *s;
    uint8_t blob[PLAN_BLOB_MAX];
    int blen;
    plan_profile me;
    req *waiting;                   /* listens and connects waiting for the registration */
    req *acb_head, *acb_tail;       /* ntcp_accept_async() callbacks */
    conn *conns;
    int reg_err;                    /* the last registration refusal (NTCP_EREFUSED), or 0 */
    unsigned silent_rounds;         /* broker rounds lost to timeouts since the last registration */
    uint32_t accept_sent;           /* the ACCEPT-ALL the session carries (rt_accept_all_sync) */
    bool in_run_held, run_again;    /* rt_run_held() under way, and asked again meanwhile */
    bool shutting;                  /* (ctx->rt_mu) one ntcp_rt_shutdown() owns the end */
    bool debug;                     /* $NTCP_DEBUG: plans and results on stderr */
    struct sockaddr_storage priv[BROKER_MAX_PRIVATE]; /* as registered (port 0: the session's) */
    size_t npriv;
    struct sockaddr_storage stun_addr; /* the STUN server that answered discovery */
    struct ntcp_port_sampler *sampling; /* a port sample in flight (discover.h), or NULL */
    bool sample_again;                 /* a connection ended during it */
    struct ka_entry *kas;              /* keepalives of the UDP paths handed over */
    ntcp_relay *relays;                /* relay.c: allocations kept for handed-over sockets */
    ntcp_relay_bridge *bridges;        /* relay_udp.c: bridges kept for handed-over UDP paths */
    ntcp_portmux *mux;                 /* the session port's shared listener (portmux.h) */
    udp_punch_hub hub;                 /* the UDP punches on the session's UDP socket */
} ntcp_rt;

struct conn {
    conn *next;
    ntcp_rt *rt;
    req *r; /* the initiator's request; NULL at the target */
    bool going, finished;
    uint64_t t0;
    ntcp_engine *e;
    udp_puncher *p; /* UDP: the punch under way */
    udp_plan upl;
    uint64_t retry_at; /* UDP initiator: ask the broker again then (peer's mapping unknown) */
    unsigned asks;
    plan pl;
    ntcp_conn_info_t info;
    int cancel_err; /* why the engine was cancelled (NTCP_ETIMEDOUT, NTCP_ECLOSED) */
    uint8_t nonce[BROKER_NONCE_SIZE]; /* the CONNECT-GO's: RAW-ISN messages name it */
    /* The relay of last resort (relay.h, docs/relay.md), beside the engine. */
    ntcp_relay *relay;
    bool relay_allocator;
    bool relay_ready;              /* relay_res holds a verified socket while the engine ends */
    ntcp_relay_result relay_res;
    char relay_why[160];           /* why the relay failed, for the detail */
    /* UDP through the relay (relay_udp.c): the target's bridge; the
     * requester's relayed address from RELAY-ADDR; the proof's parameters
     * kept from the CONNECT-GO for the relay's punch. */
    ntcp_relay_bridge *bridge;
    bool urelay_on;                /* the broker offers a relay and the policy allows it */
    bool urelay;                   /* the punch under way (or awaited) is the relay's */
    bool urelay_wait;              /* waiting for the address (requester) or the bridge (target) */
    bool urelay_now;               /* the target's punch was stopped: the peer is on the relay */
    uint64_t urelay_deadline;      /* the target's wait */
    struct sockaddr_storage urelayed, uturn;
    int urelay_state;              /* requester: 0 unknown, 1 address known, -1 none */
    char urelay_why[208];
    bool yielded;                  /* UDP: gave the pair's one direct path to another connection */
    char yield_why[200];
    ntcp_verify_params uvp;
    char upeer[BROKER_NAME_MAX + 1];
};

/* Milliseconds on the loop's monotonic clock (uv_hrtime()). */
static inline uint64_t rt_mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

/* ---- api.c: requests ---- */

/* A connection's info as "nothing known yet". */
void rt_info_init(ntcp_conn_info_t *i, const char *peer, bool initiator);
/* r ends with status (a descriptor or an error) and info (NULL: an empty
 * one): a blocking caller is woken, an asynchronous one's callback runs. */
void rt_req_complete(ntcp_rt *rt, req *r, int status, const ntcp_conn_info_t *info);
/* Takes r out of rt->waiting. */
void rt_unlink_waiting(ntcp_rt *rt, req *r);
/* An incoming verified connection: to an accept callback, or the queue. */
void rt_deliver_incoming(ntcp_rt *rt, int fd, const ntcp_conn_info_t *info);

/* ---- rt_bringup.c: discovery, the profile, the broker session ---- */

/* The first listen or connect: discovery (when STUN servers are
 * configured), then the broker session under rt->name. */
void rt_bring_up(ntcp_rt *rt);
/* Every request waiting for the registration ends with err and why. */
void rt_fail_waiting(ntcp_rt *rt, int err, const char *why);
/* A listen or connect once registered: the listen completes (the context
 * listens from now on), the connect starts or waits for its turn. */
void rt_req_registered(ntcp_rt *rt, req *r);
/* After a connection: the newest external port behind a sequential NAT,
 * to the broker (discover.h's sampler). */
void rt_resample(ntcp_rt *rt);

/* ---- rt_conn.c: connections ---- */

/* The CONNECT-GO of c (either end): the plan, then the engine or punch. */
void rt_conn_go(conn *c, const broker_go *g);
void rt_accept_all_sync(ntcp_rt *rt);
/* c ends with status (a descriptor or an error); frees c unless an engine,
 * punch or relay still runs, whose callback frees it. */
void rt_conn_finish(conn *c, int status);
/* Unlinks and frees c. */
void rt_conn_free(conn *c);
/* The broker's answer to c's CONNECT (ntcp_session_connect_ex()). */
void rt_conn_on_connect_answer(ntcp_session *s, int err, int code, const broker_go *g, void *arg);
/* A UDP relay step that could not start or timed out: c ends with err. */
void rt_conn_udp_relay_failed(conn *c, int err);
/* The session's RAW-ISN and RELAY-ADDR indications (user: the runtime),
 * to the connection their nonce names. */
void rt_conn_on_raw_isn(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                     const struct sockaddr_storage *ext, uint32_t isn, void *user);
void rt_conn_on_relay_addr(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                        const struct sockaddr_storage *relayed, const char *why, void *user);
/* A connect once registered: now, or held in rt->waiting while a
 * connection under way blocks it. */
void rt_connect_or_hold(ntcp_rt *rt, req *r);
/* Starts every held connect that nothing blocks any more, in order. */
void rt_run_held(ntcp_rt *rt);

/* ---- rt_udp_keepalive.c: the keepalives of handed-over UDP paths ---- */

/* Starts the keepalive of the UDP path fd, handed over now. */
void rt_keepalive_start(ntcp_rt *rt, int fd, const char *peer);
/* Whether a handed-over UDP path of this context to peer (its name) is
 * still open from local_port: it holds the 4-tuple of the two ends'
 * session sockets, whose datagrams the kernel gives it. */
bool rt_udp_path_open(ntcp_rt *rt, uint16_t local_port, const char *peer);
/* Stops the keepalive of a handed-over UDP path (if any) and closes fd. */
void rt_udp_close_fd(ntcp_rt *rt, int fd);
/* Stops every keepalive (the runtime stops); the descriptors stay open. */
void rt_keepalives_stop_all(ntcp_rt *rt);

#endif /* NTCP_RT_H */
