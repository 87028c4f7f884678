/*
 * free_port.h: a free loopback port for the C tests that bind one (header
 * only: each test program has its own copy of the state).
 */
#ifndef NTCP_TEST_FREE_PORT_H
#define NTCP_TEST_FREE_PORT_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* A TCP port of 127.0.0.1 nobody uses right now (bound, then released:
 * the tests bind it again at once, often with SO_REUSEPORT), and never one
 * this program was given before: ports chosen one at a time may repeat,
 * and two ends bound with SO_REUSEPORT on one port would pass for two.
 * Aborts when no socket can be bound. */
static inline uint16_t free_port(void)
{
    static uint16_t given[256];
    static size_t n_given;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t sl = sizeof sin;
        if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
            getsockname(fd, (struct sockaddr *)&sin, &sl) < 0)
            abort();
        close(fd);
        uint16_t p = ntohs(sin.sin_port);
        bool seen = false;
        for (size_t i = 0; i < n_given && i < 256 && !seen; i++)
            seen = given[i] == p;
        if (!seen) {
            given[n_given++ % 256] = p;
            return p;
        }
    }
}

#endif
