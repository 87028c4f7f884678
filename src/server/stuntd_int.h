/*
 * stuntd_int.h: the server's internal state, shared by its files (stuntd.c:
 * setup, message handling and UDP; tcp.c: TCP connections; connect_back.c:
 * the STUNT connect-back test; config.c; privdrop.c). Not installed.
 */
#ifndef NTCP_STUNTD_INT_H
#define NTCP_STUNTD_INT_H

#include <netinet/in.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <uv.h>

#include "ratelimit.h"
#include "stun.h"
#include "stuntd.h"

#define UDP_BATCH 64     /* datagrams per recvmmsg/sendmmsg */
#define UDP_ROUNDS 8     /* batches per poll callback before yielding to others */
#define UDP_MAX_IN 2048  /* larger datagrams are not STUN requests we answer */
#define RESP_MAX 512     /* our largest response is about 250 bytes */
#define CONN_IN 16384    /* TCP read buffer: also the largest message accepted */
#define CONN_OUT 32768   /* TCP responses waiting to be written */
#define CB_PER_CONN 4    /* connect-backs in flight on one control connection */
#define CB_DEFAULT_TIMEOUT_MS 2000
#define CB_MIN_TIMEOUT_MS 100
#define CB_LINGER_MS 5000 /* wait this long for the client to close first */
#define SOFTWARE_NAME "ntcp-stuntd " NTCP_VERSION_STRING

typedef struct ntcp_stuntd ntcp_stuntd;
typedef struct stuntd_conn stuntd_conn;
typedef struct stuntd_cb stuntd_cb;

/* One bound socket: family fam, address index ip (0 primary, 1 alternate),
 * port index port (0 primary, 1 alternate). */
typedef struct stuntd_sock {
    ntcp_stuntd *s;
    int fam, ip, port;
    bool tcp;
    int fd;
    uv_poll_t poll;
    bool poll_init;
} stuntd_sock;

typedef struct stuntd_family {
    bool on;
    struct sockaddr_storage addr[2][2]; /* [ip][port] */
    stuntd_sock udp[2][2];
    stuntd_sock tcp[2][2];
} stuntd_family;

struct stuntd_conn {
    ntcp_stuntd *s;
    stuntd_sock *l; /* the listener it came in on */
    int fd;
    uv_poll_t poll;
    uv_timer_t timer;
    int handles; /* handles still to be closed */
    bool closing;
    int poll_events;
    uint64_t last_ms;
    struct sockaddr_storage peer;
    stun_framer fr;
    size_t out_start, out_end;
    unsigned ncb;
    stuntd_conn *prev, *next;
    uint8_t in[CONN_IN];
    uint8_t out[CONN_OUT];
};

struct stuntd_cb {
    ntcp_stuntd *s;
    stuntd_conn *conn; /* NULL once the control connection has gone */
    int fd;
    uv_poll_t poll;
    uv_timer_t timer;
    bool poll_init;
    int handles;
    bool closing;
    int state; /* CB_CONNECTING, CB_LINGER */
    uint8_t tid[STUN_TID_SIZE];
    bool rfc3489, fingerprint;
    struct sockaddr_storage local, target;
    uint64_t start_ns;
    stuntd_cb *prev, *next;
};

struct ntcp_stuntd {
    uv_loop_t *loop;
    ntcp_stuntd_config cfg;
    char prefix[48];
    stuntd_family fam[NTCP_STUNTD_NFAM];
    ratelimit udp_rl, cb_rl;
    ntcp_stuntd_stats st;
    stuntd_conn *conns;
    stuntd_cb *cbs;
    int handles; /* open handles of the server itself, conns and cbs included */
    bool stopping;
    /* UDP batch buffers, reused for every batch: no allocation per packet. */
    struct mmsghdr rmsg[UDP_BATCH];
    struct iovec riov[UDP_BATCH];
    struct sockaddr_storage rsrc[UDP_BATCH];
    struct mmsghdr smsg[UDP_BATCH];
    struct iovec siov[UDP_BATCH];
    struct sockaddr_storage sdst[UDP_BATCH];
    uint8_t sout[UDP_BATCH];  /* sending socket: ip*2+port */
    size_t slen[UDP_BATCH];
    uint8_t rbuf[UDP_BATCH][UDP_MAX_IN];
    uint8_t sbuf[UDP_BATCH][RESP_MAX];
};

/* What to do with one request. */
enum { ACT_NONE = 0, ACT_REPLY = 1, ACT_CONNECT_BACK = 2 };

typedef struct stuntd_reply {
    int oip, oport;  /* socket to answer from (UDP CHANGE-REQUEST) */
    uint16_t dport;  /* RESPONSE-PORT, or 0 for the source port */
    size_t len;      /* response length in the output buffer */
} stuntd_reply;

void stuntd_log(const ntcp_stuntd *s, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define SLOG(s, lvl, ...)                                                                \
    do {                                                                                 \
        if ((s)->cfg.log_level >= (lvl))                                                 \
            stuntd_log((s), (lvl), __VA_ARGS__);                                         \
    } while (0)

/* Decides what to answer to one message (pkt, n) received on socket sk from
 * src. Writes the response (if any) into out; m is filled in for the caller
 * (connect-back). Returns ACT_*. */
int stuntd_handle(ntcp_stuntd *s, const stuntd_sock *sk, const struct sockaddr *src,
                  const uint8_t *pkt, size_t n, uint8_t *out, size_t cap, stuntd_reply *r,
                  stun_msg *m);
/* An error response to m into out: returns its length or 0. */
size_t stuntd_build_error(const stun_msg *m, int code, const char *reason, uint8_t *out,
                          size_t cap);
socklen_t stuntd_salen(const struct sockaddr *sa);
void stuntd_handle_closed(ntcp_stuntd *s);

/* tcp.c */
void stuntd_tcp_accept_cb(uv_poll_t *h, int status, int events);
void stuntd_conn_close(stuntd_conn *c);
/* Appends a response to the connection's output and writes what it can. */
void stuntd_conn_send(stuntd_conn *c, const uint8_t *msg, size_t len);

/* connect_back.c: starts the test for request m on connection c; answers
 * on c itself (now or later). */
void stuntd_cb_start(stuntd_conn *c, const stun_msg *m);
/* The control connection is closing: cancel c's connect-backs. */
void stuntd_cb_detach(stuntd_conn *c);
void stuntd_cb_close(stuntd_cb *cb, bool rst);

#endif
