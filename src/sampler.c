/*
 * sampler.c: the newest external port, behind a NAT with sequential ports
 * (discover.h). One TCP connection to the STUN server that answered
 * discovery, one Binding request: the port the server saw it from is the
 * newest mapping the NAT made. The runtime samples after each connection
 * (rt.h), so that both plans start from the newest port.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "addr.h"
#include "discover.h"
#include "ntcp.h"
#include "stun.h"

struct ntcp_port_sampler {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    uv_timer_t timer;
    uint8_t tid[STUN_TID_SIZE];
    uint8_t req[64];
    uint8_t rbuf[512];
    size_t rlen;
    int handles;
    bool ended;
    ntcp_port_sample_cb on_port;
    ntcp_port_sample_freed_cb on_freed;
    void *user;
};

typedef struct ntcp_port_sampler sampler;

static void sampler_closed(uv_handle_t *h)
{
    sampler *sp = h->data;
    if (--sp->handles > 0)
        return;
    ntcp_port_sample_freed_cb on_freed = sp->on_freed;
    void *user = sp->user;
    free(sp);
    if (on_freed)
        on_freed(user);
}

static void sampler_end(sampler *sp, uint16_t port)
{
    if (sp->ended)
        return;
    sp->ended = true;
    if (sp->on_port)
        sp->on_port(port, sp->user);
    uv_close((uv_handle_t *)&sp->tcp, sampler_closed);
    uv_close((uv_handle_t *)&sp->timer, sampler_closed);
}

static void sampler_timeout(uv_timer_t *t)
{
    sampler_end(t->data, 0);
}

static void sampler_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    sampler *sp = h->data;
    *b = uv_buf_init((char *)sp->rbuf + sp->rlen, (unsigned)(sizeof sp->rbuf - sp->rlen));
}

static void sampler_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    sampler *sp = st->data;
    if (n < 0) {
        sampler_end(sp, 0);
        return;
    }
    sp->rlen += (size_t)n;
    if (sp->rlen < 20)
        return;
    size_t want = 20 + ((size_t)sp->rbuf[2] << 8 | sp->rbuf[3]);
    if (want > sizeof sp->rbuf) {
        sampler_end(sp, 0);
        return;
    }
    if (sp->rlen < want)
        return;
    stun_msg m;
    struct sockaddr_storage mapped;
    uint16_t port = 0;
    if (stun_parse(&m, sp->rbuf, want) == 0 && m.cls == STUN_SUCCESS &&
        memcmp(m.tid, sp->tid, sizeof sp->tid) == 0 &&
        (stun_get_addr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &mapped) == 0 ||
         stun_get_addr(&m, STUN_ATTR_MAPPED_ADDRESS, &mapped) == 0))
        port = ntcp_sa_port(&mapped);
    sampler_end(sp, port);
}

static void sampler_written(uv_write_t *w, int status)
{
    sampler *sp = w->data;
    if (status < 0)
        sampler_end(sp, 0);
}

static void sampler_connected(uv_connect_t *c, int status)
{
    sampler *sp = c->data;
    if (sp->ended)
        return;
    if (status < 0 || uv_read_start((uv_stream_t *)&sp->tcp, sampler_alloc, sampler_read) < 0) {
        sampler_end(sp, 0);
        return;
    }
    stun_builder sb;
    stun_build_init(&sb, sp->req, sizeof sp->req, STUN_BINDING, STUN_REQUEST, sp->tid, false);
    int n = stun_build_finish(&sb, NULL);
    uv_buf_t b = uv_buf_init((char *)sp->req, (unsigned)(n > 0 ? n : 0));
    sp->wreq.data = sp;
    if (n <= 0 || uv_write(&sp->wreq, (uv_stream_t *)&sp->tcp, &b, 1, sampler_written) < 0)
        sampler_end(sp, 0);
}

int ntcp_port_sample_start(struct uv_loop_s *loop, const struct sockaddr_storage *server,
                           unsigned timeout_ms, ntcp_port_sample_cb on_port,
                           ntcp_port_sample_freed_cb on_freed, void *user,
                           ntcp_port_sampler **out)
{
    sampler *sp = calloc(1, sizeof *sp);
    if (!sp)
        return NTCP_ENOMEM;
    sp->on_port = on_port;
    sp->on_freed = on_freed;
    sp->user = user;
    stun_new_tid(sp->tid);
    uv_tcp_init(loop, &sp->tcp);
    uv_timer_init(loop, &sp->timer);
    sp->tcp.data = sp->timer.data = sp->creq.data = sp;
    sp->handles = 2;
    *out = sp;
    uv_timer_start(&sp->timer, sampler_timeout, timeout_ms, 0);
    if (uv_tcp_connect(&sp->creq, &sp->tcp, (const struct sockaddr *)server, sampler_connected) < 0)
        sampler_end(sp, 0);
    return 0;
}

void ntcp_port_sample_cancel(ntcp_port_sampler *sp)
{
    sampler_end(sp, 0);
}
