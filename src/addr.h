/*
 * addr.h: socket addresses as ntcp's programs and modules write and compare
 * them: "IP", "IP:PORT", "[IPv6]:PORT", a bare IPv6 address, and the few
 * sockaddr helpers everyone needs. One parser for the whole tree.
 */
#ifndef NTCP_ADDR_H
#define NTCP_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ntcp.h"

/* Splits "host[:port]", "[v6]:port", "[v6]" or a bare "v6" into a
 * NUL-terminated host (a name or a numeric address) and a port (0-65535;
 * default_port when absent). Returns 0 or NTCP_EINVAL. */
int ntcp_split_host_port(const char *s, char *host, size_t hostlen, uint16_t *port,
                         uint16_t default_port);

/* Parses a numeric address in the forms above into out (sockaddr_in or
 * sockaddr_in6). default_port < 0: the port must be given. Returns 0 or
 * NTCP_EINVAL (names are not resolved here). */
int ntcp_parse_addr(const char *s, int default_port, struct sockaddr_storage *out);

/* Steps through a list whose items are separated by commas, spaces or tabs
 * ("a:1, b:2"): returns the next item (*len bytes, not NUL-terminated) and
 * moves *p past it, or NULL at the end. */
const char *ntcp_list_next(const char **p, size_t *len);

/* Formats a sockaddr as "1.2.3.4:5" or "[::1]:5" into buf (64 bytes do). */
const char *ntcp_addr_str(const struct sockaddr *sa, char *buf, size_t len);

uint16_t ntcp_sa_port(const struct sockaddr_storage *ss);
void ntcp_sa_set_port(struct sockaddr_storage *ss, uint16_t port);
socklen_t ntcp_sa_len(const struct sockaddr_storage *ss);

/* True when a and b hold the same address and port. */
bool ntcp_sockaddr_equal(const struct sockaddr *a, const struct sockaddr *b);
/* True when a and b hold the same address (ports ignored). */
bool ntcp_sockaddr_same_ip(const struct sockaddr *a, const struct sockaddr *b);

#endif /* NTCP_ADDR_H */
