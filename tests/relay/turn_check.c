/*
 * turn_check.c: drives the TURN client (src/turn_client.h) against a real
 * coturn that test_turn_coturn.py starts on loopback. One scenario per run:
 *   tcp      TCP allocation; a peer connects to the relayed address
 *            (ConnectionAttempt, ConnectionBind); 1 MiB each way, by SHA-256
 *   connect  TCP allocation; the client Connects to a listening peer
 *   udp      UDP allocation; 1,000 datagrams each way through the relay
 *   verify   as tcp, but first the key proof (src/verify.h) runs end to end
 *            over the relayed stream, then the 1 MiB each way
 *   impostor as verify, with the peer holding another key than the one
 *            "the broker vouched for": the relay side refuses it
 *   down | wrong-secret | expired | quota | no-tcp-relay
 *            the fault named; prints the error and checks its cause, that
 *            it came, and that no descriptor is left open afterwards
 * Usage: turn_check SCENARIO SERVER_IP:PORT SECRET_FILE
 * Prints "ok ..." lines and "PASS"; exits 1 on any failed check.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <uv.h>

#include "addr.h"
#include "identity.h"
#include "verify.h"
#include "turn.h"
#include "turn_client.h"

#define MIB (1024 * 1024)
#define NDGRAMS 1000

static int failures;

static void check(int cond, const char *what, const char *detail)
{
    printf("%s %s%s%s\n", cond ? "ok  " : "FAIL", what, detail && *detail ? ": " : "",
           detail ? detail : "");
    if (!cond)
        failures++;
    fflush(stdout);
}

/* Open sockets (OpenSSL's random device and the like are not ours to count). */
static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[300], target[64];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t l = readlink(path, target, sizeof target - 1);
        if (l > 0) {
            target[l] = 0;
            n += strncmp(target, "socket:", 7) == 0;
        }
    }
    closedir(d);
    return n;
}

/* ---- data: a deterministic stream per seed, checked by SHA-256 ---- */

static void fill(uint8_t *buf, size_t len, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (uint8_t)x;
    }
}

static void sha256(const uint8_t *p, size_t n, uint8_t out[32])
{
    unsigned len = 0;
    EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

typedef struct writer {
    int fd;
    const uint8_t *p;
    size_t n;
    int err;
} writer;

static void *write_all(void *arg)
{
    writer *w = arg;
    size_t off = 0;
    while (off < w->n) {
        ssize_t r = send(w->fd, w->p + off, w->n - off, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            w->err = errno ? errno : EIO;
            return NULL;
        }
        off += (size_t)r;
    }
    return NULL;
}

/* Sends 1 MiB of seed `mine` and reads 1 MiB that must be seed `theirs`,
 * one direction after the other (the relay side sends first): coturn's TCP
 * relay loses data now and then when both directions are saturated at
 * once (docs/relay.md, "Limits"), and this test is about the client, not
 * about coturn's buffering. Blocking, with a 20 s receive timeout. Returns
 * 1 when the hash matches. */
static int exchange(int fd, uint32_t mine, uint32_t theirs, bool send_first)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    uint8_t *out = malloc(MIB), *in = malloc(MIB), *want = malloc(MIB);
    if (!out || !in || !want)
        abort();
    fill(out, MIB, mine);
    fill(want, MIB, theirs);
    writer w = {.fd = fd, .p = out, .n = MIB};
    if (send_first)
        write_all(&w);
    size_t got = 0;
    while (got < MIB) {
        ssize_t r = recv(fd, in + got, MIB - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (!send_first)
        write_all(&w);
    uint8_t h1[32], h2[32];
    sha256(in, got, h1);
    sha256(want, MIB, h2);
    int ok = got == MIB && w.err == 0 && memcmp(h1, h2, 32) == 0;
    if (!ok) /* which side, and how far it got */
        printf("exchange (seed %u): received %zu of %d bytes, last errno %d, writer errno %d, hash %s\n",
               (unsigned)mine, got, MIB, errno, w.err, memcmp(h1, h2, 32) ? "differs" : "matches");
    free(out);
    free(in);
    free(want);
    return ok;
}

/* ---- the scenarios' shared state ---- */

typedef struct run {
    const char *scenario;
    uv_loop_t *loop;
    turn_client *c;
    uv_async_t done_async;
    struct sockaddr_storage relayed;
    struct sockaddr_in peer_addr; /* connect: the listener; others: 127.0.0.1 */
    int listen_fd;
    pthread_t peer_thread;
    pthread_barrier_t both_read;
    bool peer_started;
    int peer_ok;
    int relay_ok;
    /* udp */
    int udp_fd;
    atomic_int echoed;
    /* fault runs */
    int err, code;
    char why[256];
    bool got_error, got_alloc;
    uint64_t t0, t_event;
    /* verify, impostor: alice holds the allocation (target), bob connects
     * to it (requester); bob_claimed is the key alice expects for bob. */
    EVP_PKEY *alice, *bob, *bob_claimed;
    uint8_t nonce[BROKER_NONCE_SIZE];
    int relay_verify, peer_verify;
    uint8_t relay_binding[VERIFY_BINDING_SIZE], peer_binding[VERIFY_BINDING_SIZE];
} run;

static bool with_proof(const run *r)
{
    return !strcmp(r->scenario, "verify") || !strcmp(r->scenario, "impostor");
}

/* The key proof on fd as one end; returns its error, fd closed on failure. */
static int prove(run *r, int fd, bool relay_side, uint8_t binding[VERIFY_BINDING_SIZE])
{
    ntcp_verify_params p = {0};
    EVP_PKEY *other = relay_side ? r->bob_claimed : r->alice;
    p.key = relay_side ? r->alice : r->bob;
    p.name = relay_side ? "alice" : "bob";
    p.peer_name = relay_side ? "bob" : "alice";
    ntcp_identity_public(other, p.peer_key);
    memcpy(p.nonce, r->nonce, sizeof p.nonce);
    p.role = relay_side ? BROKER_ROLE_TARGET : BROKER_ROLE_REQUESTER;
    p.timeout_ms = 5000;
    ntcp_verify_result vr;
    int rc = ntcp_verify_fd(fd, &p, &vr);
    printf("%s side: key proof %s%s%s\n", relay_side ? "relay" : "peer", rc ? ntcp_strerror(rc) : "ok",
           rc ? ": " : "", rc && vr.why ? vr.why : "");
    if (rc == 0)
        memcpy(binding, vr.binding, VERIFY_BINDING_SIZE);
    return rc;
}

/* quota: a second client with the same user as the first. */
static turn_client *second;
static uv_timer_t watchdog;
static bool watchdog_fired;

static void finish(run *r)
{
    if (r->c) {
        turn_client_close(r->c);
        r->c = NULL;
    }
    if (second) {
        turn_client_close(second);
        second = NULL;
    }
    if (!uv_is_closing((uv_handle_t *)&r->done_async))
        uv_close((uv_handle_t *)&r->done_async, NULL);
    if (!uv_is_closing((uv_handle_t *)&watchdog))
        uv_close((uv_handle_t *)&watchdog, NULL);
}

/* Only against a hang of the scenario itself; the client has its own timeouts. */
static void on_watchdog(uv_timer_t *t)
{
    watchdog_fired = true;
    finish(t->data);
}

/* The peer's half on its connected socket: the proof first (verify,
 * impostor), then 1 MiB each way; closes fd once both ends have read all
 * (coturn drops what it still buffers when either side closes). */
static void peer_session(run *r, int fd)
{
    bool open_fd = true;
    if (with_proof(r)) {
        r->peer_verify = prove(r, fd, false, r->peer_binding);
        open_fd = r->peer_verify == 0; /* a failed proof closed it */
        if (open_fd && !strcmp(r->scenario, "verify"))
            r->peer_ok = exchange(fd, 2, 1, false);
    } else {
        r->peer_ok = exchange(fd, 2, 1, false);
    }
    pthread_barrier_wait(&r->both_read);
    if (open_fd)
        close(fd);
}

static void *tcp_peer(void *arg)
{
    run *r = arg;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, (struct sockaddr *)&r->relayed, ntcp_sa_len(&r->relayed)) < 0) {
        perror("peer connect to the relayed address");
        close(fd);
        return NULL;
    }
    peer_session(r, fd);
    return NULL;
}

static void *tcp_acceptor(void *arg)
{
    run *r = arg;
    struct timeval tv = {.tv_sec = 20};
    setsockopt(r->listen_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int fd = accept(r->listen_fd, NULL, NULL);
    if (fd < 0) {
        perror("accept from the relay");
        return NULL;
    }
    peer_session(r, fd);
    return NULL;
}

/* The UDP peer: datagram i goes out, its echo through the relay must come
 * back (sent again after a 1 s silence, at most 5 times). */
static void *udp_peer(void *arg)
{
    run *r = arg;
    struct timeval tv = {.tv_sec = 1};
    setsockopt(r->udp_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int ok = 0;
    for (int i = 0; i < NDGRAMS; i++) {
        uint8_t msg[200], back[300];
        fill(msg, sizeof msg, (uint32_t)i + 100);
        memcpy(msg, &i, sizeof i);
        int answered = 0;
        for (int t = 0; t < 5 && !answered; t++) {
            sendto(r->udp_fd, msg, sizeof msg, 0, (struct sockaddr *)&r->relayed,
                   ntcp_sa_len(&r->relayed));
            for (;;) {
                ssize_t n = recv(r->udp_fd, back, sizeof back, 0);
                if (n < 0)
                    break;
                /* the echo is the datagram with every byte inverted */
                if (n == (ssize_t)sizeof msg) {
                    int same = 1;
                    for (size_t k = 0; k < sizeof msg; k++)
                        same &= ((unsigned)back[k] ^ (unsigned)msg[k]) == 0xFFu;
                    if (same) {
                        answered = 1;
                        break;
                    }
                }
            }
        }
        ok += answered;
    }
    r->peer_ok = ok == NDGRAMS;
    printf("udp peer: %d of %d datagrams echoed through the relay\n", ok, NDGRAMS);
    uv_async_send(&r->done_async);
    return NULL;
}

static void on_done_async(uv_async_t *h)
{
    finish(h->data);
}

static void on_event(turn_client *c, const turn_event *ev, void *user)
{
    run *r = user;
    char ab[64];
    switch (ev->type) {
    case TURN_EV_ALLOCATED:
        r->got_alloc = true;
        r->relayed = ev->relayed;
        printf("allocated: relayed %s\n",
               ntcp_addr_str((const struct sockaddr *)&ev->relayed, ab, sizeof ab));
        if (!strcmp(r->scenario, "quota")) {
            /* the second allocation with the same user is the one refused */
            return;
        }
        if (turn_client_permit(c, (struct sockaddr *)&r->peer_addr) < 0) {
            check(0, "permit", "");
            finish(r);
        }
        return;
    case TURN_EV_PERMITTED:
        printf("permitted %s\n", ntcp_addr_str((const struct sockaddr *)&ev->peer, ab, sizeof ab));
        if (!strcmp(r->scenario, "tcp") || with_proof(r))
            r->peer_started = !pthread_create(&r->peer_thread, NULL, tcp_peer, r);
        else if (!strcmp(r->scenario, "connect")) {
            r->peer_started = !pthread_create(&r->peer_thread, NULL, tcp_acceptor, r);
            if (turn_client_connect(c, (struct sockaddr *)&r->peer_addr) < 0) {
                check(0, "turn_client_connect", "");
                finish(r);
            }
        } else if (!strcmp(r->scenario, "udp"))
            r->peer_started = !pthread_create(&r->peer_thread, NULL, udp_peer, r);
        return;
    case TURN_EV_CONNECTION:
        printf("connection from %s, fd %d\n",
               ntcp_addr_str((const struct sockaddr *)&ev->peer, ab, sizeof ab), ev->fd);
        int fd = ev->fd;
        if (with_proof(r)) {
            r->relay_verify = prove(r, fd, true, r->relay_binding);
            if (r->relay_verify == 0 && !strcmp(r->scenario, "verify"))
                r->relay_ok = exchange(fd, 1, 2, true);
            if (r->relay_verify != 0)
                fd = -1; /* closed by the proof */
        } else {
            r->relay_ok = exchange(fd, 1, 2, true);
        }
        /* The peer must have read everything before the allocation (and
         * with it the data connection) ends. */
        pthread_barrier_wait(&r->both_read);
        if (r->peer_started) {
            pthread_join(r->peer_thread, NULL);
            r->peer_started = false;
        }
        if (fd >= 0)
            close(fd);
        finish(r);
        return;
    case TURN_EV_DATA: {
        uint8_t back[300];
        size_t n = ev->len < sizeof back ? ev->len : sizeof back;
        for (size_t k = 0; k < n; k++)
            back[k] = (uint8_t)~ev->data[k];
        if (turn_client_send(c, (const struct sockaddr *)&ev->peer, back, n) == 0)
            atomic_fetch_add(&r->echoed, 1);
        return;
    }
    case TURN_EV_ERROR:
        r->got_error = true;
        r->err = ev->err;
        r->code = ev->code;
        r->t_event = uv_now(r->loop);
        snprintf(r->why, sizeof r->why, "%s", ev->why);
        printf("error %d (%s), code %d: %s\n", ev->err, ntcp_strerror(ev->err), ev->code, ev->why);
        finish(r);
        return;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SCENARIO SERVER SECRET_FILE\n", argv[0]);
        return 2;
    }
    run r = {.scenario = argv[1], .listen_fd = -1, .udp_fd = -1};
    char secret[256] = "";
    FILE *f = fopen(argv[3], "r");
    if (!f || !fgets(secret, sizeof secret, f)) {
        fprintf(stderr, "cannot read %s\n", argv[3]);
        return 2;
    }
    fclose(f);
    secret[strcspn(secret, "\r\n")] = 0;

    turn_client_config cfg = {.transport = TURN_TRANSPORT_TCP, .timeout_ms = 3000};
    if (ntcp_parse_addr(argv[2], -1, &cfg.server) < 0) {
        fprintf(stderr, "bad server address %s\n", argv[2]);
        return 2;
    }
    const char *sc = r.scenario;
    time_t now = time(NULL);
    uint64_t expiry = (uint64_t)now + 600;
    if (!strcmp(sc, "wrong-secret"))
        strcat(secret, "-not");
    if (!strcmp(sc, "expired"))
        expiry = (uint64_t)now - 3600;
    if (!strcmp(sc, "udp"))
        cfg.transport = TURN_TRANSPORT_UDP;
    char name[64], user[600], pass[64];
    snprintf(name, sizeof name, "check-%s-%d", sc, (int)getpid());
    if (turn_rest_credentials(secret, strlen(secret), name, expiry, user, sizeof user, pass,
                              sizeof pass) < 0)
        return 2;
    cfg.user = user;
    cfg.pass = pass;

    r.peer_addr.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &r.peer_addr.sin_addr);
    if (!strcmp(sc, "connect")) {
        r.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        socklen_t sl = sizeof r.peer_addr;
        if (bind(r.listen_fd, (struct sockaddr *)&r.peer_addr, sizeof r.peer_addr) < 0 ||
            listen(r.listen_fd, 4) < 0 ||
            getsockname(r.listen_fd, (struct sockaddr *)&r.peer_addr, &sl) < 0)
            return 2;
    }
    if (!strcmp(sc, "udp")) {
        r.udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (bind(r.udp_fd, (struct sockaddr *)&r.peer_addr, sizeof r.peer_addr) < 0)
            return 2;
    }

    uv_loop_t loop;
    pthread_barrier_init(&r.both_read, NULL, 2);
    if (with_proof(&r)) {
        if (ntcp_identity_generate(&r.alice) < 0 || ntcp_identity_generate(&r.bob) < 0)
            return 2;
        r.bob_claimed = r.bob;
        if (!strcmp(sc, "impostor") && ntcp_identity_generate(&r.bob_claimed) < 0)
            return 2;
        memset(r.nonce, 0x5a, sizeof r.nonce);
    }
    int fds_before = count_fds();
    uv_loop_init(&loop);
    r.loop = &loop;
    uv_async_init(&loop, &r.done_async, on_done_async);
    r.done_async.data = &r;
    r.t0 = uv_now(&loop);
    if (turn_client_start(&loop, &cfg, on_event, &r, &r.c) < 0)
        return 2;
    if (!strcmp(sc, "quota")) {
        /* the same user twice at once: coturn's user-quota 1 refuses one */
        if (turn_client_start(&loop, &cfg, on_event, &r, &second) < 0)
            return 2;
    }
    uv_timer_init(&loop, &watchdog);
    watchdog.data = &r;
    uv_timer_start(&watchdog, on_watchdog, 60000, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    check(!watchdog_fired, "the scenario ended by itself (no 60 s watchdog)", "");
    if (r.peer_started)
        pthread_join(r.peer_thread, NULL);
    int lrc = uv_loop_close(&loop);
    check(lrc == 0, "every libuv handle closed", lrc ? uv_strerror(lrc) : "");
    int fds_after = count_fds();
    if (r.listen_fd >= 0)
        close(r.listen_fd);
    if (r.udp_fd >= 0)
        close(r.udp_fd);
    char d[400];

    if (!strcmp(sc, "verify")) {
        check(r.relay_verify == 0 && r.peer_verify == 0, "key proof over the relay: both ends verified", "");
        check(!memcmp(r.relay_binding, r.peer_binding, VERIFY_BINDING_SIZE),
              "both ends computed the same binding", "");
        check(r.relay_ok && r.peer_ok, "then 1 MiB each way, SHA-256 matches", "");
    } else if (!strcmp(sc, "impostor")) {
        snprintf(d, sizeof d, "relay side: %s", ntcp_strerror(r.relay_verify));
        check(r.relay_verify == NTCP_EINTEGRITY, "a peer with another key is refused over the relay", d);
    } else if (!strcmp(sc, "tcp") || !strcmp(sc, "connect")) {
        check(r.got_alloc, "allocated a TCP relay", "");
        check(r.relay_ok, "relay side: 1 MiB from the peer, SHA-256 matches", "");
        check(r.peer_ok, "peer side: 1 MiB from the relay client, SHA-256 matches", "");
    } else if (!strcmp(sc, "udp")) {
        check(r.got_alloc, "allocated a UDP relay", "");
        snprintf(d, sizeof d, "%d echoed", atomic_load(&r.echoed));
        check(atomic_load(&r.echoed) >= NDGRAMS, "relay side: 1000 datagrams received and sent back",
              d);
        check(r.peer_ok, "peer side: every datagram's echo came back through the relay", "");
    } else {
        snprintf(d, sizeof d, "err %d code %d after %llu ms: %s", r.err, r.code,
                 (unsigned long long)(r.t_event - r.t0), r.why);
        check(r.got_error, "an error was reported", d);
        if (!strcmp(sc, "down"))
            check(r.err == NTCP_EUNREACHABLE && strstr(r.why, "unreachable"),
                  "relay down: unreachable, named", d);
        else if (!strcmp(sc, "wrong-secret"))
            check(r.err == NTCP_EREFUSED && strstr(r.why, "wrong credentials"),
                  "wrong secret: refused, credentials named", d);
        else if (!strcmp(sc, "expired"))
            check(r.err == NTCP_EREFUSED && strstr(r.why, "expired"),
                  "expired credentials: refused, expiry named", d);
        else if (!strcmp(sc, "quota"))
            check(r.err == NTCP_EREFUSED && r.code == 486 && strstr(r.why, "refused the TCP allocation"),
                  "second allocation: refused, 486 named", d);
        else if (!strcmp(sc, "no-tcp-relay"))
            check(r.err == NTCP_EREFUSED && r.code == 442 && strstr(r.why, "refused the TCP allocation"),
                  "TCP relay disabled: refused, 442 named", d);
        else
            check(0, "known scenario", sc);
    }
    snprintf(d, sizeof d, "%d before, %d after", fds_before, fds_after);
    check(fds_before == fds_after, "no descriptor left open", d);
    if (r.bob_claimed != r.bob)
        EVP_PKEY_free(r.bob_claimed);
    EVP_PKEY_free(r.alice);
    EVP_PKEY_free(r.bob);
    pthread_barrier_destroy(&r.both_read);
    printf("%s\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
