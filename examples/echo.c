/*
 * echo.c: the smallest useful program on libntcp, a TCP echo service between
 * peers behind NATs.
 *
 *   echo serve   NAME BROKER [STUN]        registers NAME and echoes back
 *                                          whatever each peer sends
 *   echo connect NAME BROKER [STUN] PEER MESSAGE
 *                                          connects to PEER, sends MESSAGE,
 *                                          prints the echo and how it connected
 *
 * BROKER is the ntcp-brokerd's HOST:PORT; STUN (optional, "-" for none) an
 * ntcp-stuntd's HOST[:PORT] for NAT discovery. Keys are made in the current
 * directory as NAME.key. Built with the project (CMake target
 * `example-echo`, build/examples/echo).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ntcp.h>

static int serve(ntcp_t *ctx)
{
    int rc = ntcp_listen(ctx, NULL, 30000);
    if (rc < 0) {
        fprintf(stderr, "echo: cannot register: %s\n", ntcp_strerror(rc));
        return 1;
    }
    printf("registered as %s, waiting\n", ntcp_get_name(ctx));
    fflush(stdout);
    for (;;) {
        ntcp_conn_info_t info = {.size = sizeof info};
        int fd = ntcp_accept(ctx, &info, -1); /* blocks until a verified peer is here */
        if (fd < 0) {
            fprintf(stderr, "echo: accept: %s\n", ntcp_strerror(fd));
            return 1;
        }
        printf("%s connected (%s)\n", info.peer, info.method);
        fflush(stdout);
        char buf[4096];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            if (write(fd, buf, (size_t)n) != n)
                break;
        close(fd);
    }
}

static int client(ntcp_t *ctx, const char *peer, const char *msg)
{
    ntcp_conn_info_t info = {.size = sizeof info};
    int fd = ntcp_connect(ctx, peer, &info, 30000);
    if (fd < 0) {
        fprintf(stderr, "echo: no connection to %s: %s (%s)\n", peer, ntcp_strerror(fd),
                info.detail);
        return 1;
    }
    size_t len = strlen(msg);
    if (write(fd, msg, len) != (ssize_t)len) {
        close(fd);
        return 1;
    }
    shutdown(fd, SHUT_WR);
    char buf[4096];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof buf - 1 && (n = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    close(fd);
    printf("echo from %s: %s\n", peer, buf);
    printf("method %s, connected at %lld ms, verified at %lld ms\n", info.method,
           (long long)info.connected_ms, (long long)info.verified_ms);
    return got == len && memcmp(buf, msg, len) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    int is_serve = argc == 4 || argc == 5 ? !strcmp(argv[1], "serve") : 0;
    int is_connect = argc == 7 && !strcmp(argv[1], "connect");
    if (!is_serve && !is_connect) {
        fprintf(stderr, "usage: echo serve NAME BROKER [STUN]\n"
                        "       echo connect NAME BROKER STUN|- PEER MESSAGE\n");
        return 2;
    }
    const char *stun = argc >= 5 && strcmp(argv[4], "-") ? argv[4] : NULL;
    char key[300];
    snprintf(key, sizeof key, "%s.key", argv[2]);

    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    cfg.broker = argv[3];
    cfg.name = argv[2];
    cfg.key_file = key;
    cfg.stun_servers = &stun;
    cfg.n_stun_servers = stun ? 1 : 0;
    ntcp_t *ctx;
    int rc = ntcp_new(&cfg, &ctx);
    if (rc < 0) {
        fprintf(stderr, "echo: %s\n", ntcp_strerror(rc));
        return 2;
    }
    rc = is_serve ? serve(ctx) : client(ctx, argv[5], argv[6]);
    ntcp_free(ctx);
    return rc;
}
