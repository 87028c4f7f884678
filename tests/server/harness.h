/*
 * harness.h: helpers for the ntcp-stuntd tests: run the server in-process on
 * its own loop thread, and small blocking STUN clients that poll with a
 * deadline (tests never sleep to wait).
 */
#ifndef NTCP_TEST_HARNESS_H
#define NTCP_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "stun.h"
#include "stuntd.h"

typedef struct harness {
    uv_loop_t loop;
    uv_thread_t th;
    uv_async_t stop;
    ntcp_stuntd *s;
    struct sockaddr_storage addr[2][2]; /* [ip][port], as the server bound them */
} harness;

/* A config for tests: the given IPs with port 0, no rate limits, quiet logs
 * (NTCP_TEST_DEBUG=1 in the environment for debug logs). */
void test_config(ntcp_stuntd_config *cfg, const char *ip1, const char *ip2);
/* Starts the server on a loop thread; returns 0 or the start error. */
int harness_start(harness *h, const ntcp_stuntd_config *cfg);
/* Stops it, joins the thread, and returns uv_loop_close()'s result (0 when
 * every handle was closed). */
int harness_stop(harness *h);

bool sa_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b);
bool sa_same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b);
uint16_t sa_port_of(const struct sockaddr_storage *a);
void sa_make(struct sockaddr_storage *out, const char *ip, uint16_t port);

/* A UDP socket bound to ip:0. */
int udp_socket(const char *ip);
/* Waits up to timeout_ms for a datagram; returns its length or -1. */
int udp_recv(int fd, uint8_t *buf, size_t cap, int timeout_ms, struct sockaddr_storage *from);
int udp_send(int fd, const void *buf, size_t len, const struct sockaddr_storage *to);

/* Request options for build_request(). */
typedef struct req_opts {
    uint16_t method;    /* 0 = Binding */
    uint8_t cls;        /* class, STUN_REQUEST by default (0) */
    bool rfc3489;
    bool fingerprint;
    uint32_t change;    /* CHANGE-REQUEST flags, with has_change */
    bool has_change;
    uint16_t response_port;
    uint16_t unknown_attr; /* an attribute to add, with a 4-byte value */
    uint32_t timeout_ms;   /* STUNT-TIMEOUT when nonzero */
} req_opts;
/* Builds a request with a fresh transaction id (copied to tid). */
size_t build_request(uint8_t *buf, size_t cap, const req_opts *o, uint8_t tid[STUN_TID_SIZE]);

/* A TCP connection to dst, optionally from a given local address with
 * SO_REUSEADDR|SO_REUSEPORT; blocking, TCP_NODELAY. Returns fd or -1. */
int tcp_connect(const struct sockaddr_storage *dst, const struct sockaddr_storage *from, bool reuse);
/* A listener with SO_REUSEADDR|SO_REUSEPORT on addr. */
int tcp_listen_reuse(const struct sockaddr_storage *addr);
/* Reads one whole STUN message within timeout_ms: its length, 0 on EOF, -1
 * on timeout or error. */
int tcp_read_msg(int fd, uint8_t *buf, size_t cap, int timeout_ms);
int write_all(int fd, const void *buf, size_t len);
/* Waits until fd is readable (or closed) within timeout_ms: 1, or 0. */
int wait_readable(int fd, int timeout_ms);

#endif
