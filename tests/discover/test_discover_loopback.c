/*
 * test_discover_loopback.c: ntcp_discover_start() against ntcp-stuntd run
 * in-process on 127.0.0.1 and 127.0.0.2: with no NAT in between, every part
 * of the profile is known and says "open". Also: a server that does not
 * answer is reported unreachable quickly, and the next server in the list
 * is tried.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "discover.h"
#include "ntcp.h"
#include "server/stuntd.h"

typedef struct run {
    bool done;
    int status;
    ntcp_nat_profile_t profile;
    ntcp_stuntd *server;
} run;

static void on_done(ntcp_t *ctx, int status, const ntcp_nat_profile_t *p, void *user)
{
    run *r = user;
    (void)ctx;
    r->done = true;
    r->status = status;
    r->profile = *p;
    if (r->server)
        ntcp_stuntd_stop(r->server);
    r->server = NULL;
}

/* default_cb: the server's default connect-back limits (otherwise none). */
static ntcp_stuntd *start_server_cb(uv_loop_t *loop, char *addr, size_t addrlen, bool default_cb)
{
    ntcp_stuntd_config cfg;
    ntcp_stuntd_config_init(&cfg);
    assert_int_equal(ntcp_stuntd_config_set_addr(&cfg, false, "127.0.0.1:0"), 0);
    assert_int_equal(ntcp_stuntd_config_set_addr(&cfg, true, "127.0.0.2:0"), 0);
    cfg.udp_rate = 0;
    if (!default_cb)
        cfg.cb_rate = 0;
    cfg.log_level = NTCP_LOG_WARN;
    ntcp_stuntd *s = NULL;
    char err[256] = "";
    int rc = ntcp_stuntd_start(loop, &cfg, &s, err, sizeof err);
    if (rc != 0)
        fail_msg("server: %s", err);
    struct sockaddr_storage p, a;
    assert_int_equal(ntcp_stuntd_addrs(s, NTCP_STUNTD_V4, &p, &a), 0);
    snprintf(addr, addrlen, "127.0.0.1:%u", ntohs(((struct sockaddr_in *)&p)->sin_port));
    return s;
}

static ntcp_stuntd *start_server(uv_loop_t *loop, char *addr, size_t addrlen)
{
    return start_server_cb(loop, addr, addrlen, false);
}

static void check_open(const ntcp_nat_behaviour_t *b, bool tcp)
{
    print_message("%s: reach=%s mapping=%s filtering=%s ports=%s hairpin=%s syn=%s why=%s\n",
                  tcp ? "tcp" : "udp", ntcp_reach_name(b->reach), ntcp_dep_name(b->mapping),
                  ntcp_dep_name(b->filtering), ntcp_ports_name(b->ports),
                  ntcp_tristate_name(b->hairpin), ntcp_syn_name(b->syn), b->why);
    assert_int_equal(b->reach, NTCP_REACH_OPEN);
    assert_int_equal(b->mapping, NTCP_DEP_ENDPOINT_INDEPENDENT);
    assert_int_equal(b->filtering, NTCP_DEP_NONE);
    assert_int_equal(b->ports, NTCP_PORTS_PRESERVED);
    assert_int_equal(b->hairpin, NTCP_YES);
    assert_string_equal(ntcp_classic_name(b), "open");
    if (tcp)
        assert_int_equal(b->syn, NTCP_SYN_ACCEPTED);
    struct sockaddr_in *m = (struct sockaddr_in *)&b->mapped;
    assert_int_equal(m->sin_family, AF_INET);
    assert_int_equal(ntohl(m->sin_addr.s_addr), 0x7f000001);
}

static void test_open_loopback(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    run r = {0};
    char addr[64];
    r.server = start_server(&loop, addr, sizeof addr);
    const char *servers[] = {addr};
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    cfg.stun_servers = servers;
    cfg.n_stun_servers = 1;
    ntcp_t *ctx;
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_int_equal(ntcp_discover_start(ctx, &loop,
                                         NTCP_DISCOVER_UDP | NTCP_DISCOVER_TCP | NTCP_DISCOVER_IPV4,
                                         10000, on_done, &r),
                     0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(r.done);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.profile.server, addr);
    check_open(&r.profile.udp4, false);
    check_open(&r.profile.tcp4, true);
    assert_true(r.profile.rtt_ms >= 1);
    assert_int_equal(uv_loop_close(&loop), 0); /* every handle closed */
    ntcp_free(ctx);
}

/* Discovery again and again from one address against a server with its
 * default connect-back limits (an application restarted, several on one
 * host): every TCP filtering test is answered each time, none refused
 * with 429 and read as unknown. */
static void test_default_cb_limits(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    char addr[64];
    ntcp_stuntd *server = start_server_cb(&loop, addr, sizeof addr, true);
    const char *servers[] = {addr};
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    cfg.stun_servers = servers;
    cfg.n_stun_servers = 1;
    ntcp_t *ctx;
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    for (int k = 0; k < 4; k++) {
        run r = {0};
        assert_int_equal(ntcp_discover_start(ctx, &loop, NTCP_DISCOVER_TCP | NTCP_DISCOVER_IPV4,
                                             10000, on_done, &r),
                         0);
        while (!r.done)
            uv_run(&loop, UV_RUN_ONCE);
        assert_int_equal(r.status, 0);
        check_open(&r.profile.tcp4, true);
    }
    ntcp_stuntd_stop(server);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    ntcp_free(ctx);
}

/* A dead server first in the list: it is given up on, and the live one is used. */
static void test_server_list(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    run r = {0};
    char addr[64];
    r.server = start_server(&loop, addr, sizeof addr);
    ntcp_t *ctx;
    assert_int_equal(ntcp_new(NULL, &ctx), 0);
    /* Port 9 (discard) on 127.0.0.3: nothing listens there. */
    assert_int_equal(ntcp_add_stun_server(ctx, "127.0.0.3:9"), 0);
    assert_int_equal(ntcp_add_stun_server(ctx, addr), 0);
    assert_int_equal(ntcp_discover_start(ctx, &loop, NTCP_DISCOVER_UDP | NTCP_DISCOVER_IPV4, 10000,
                                         on_done, &r),
                     0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(r.done);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.profile.server, addr);
    check_open(&r.profile.udp4, false);
    assert_int_equal(uv_loop_close(&loop), 0);
    ntcp_free(ctx);
}

/* No server at all: unreachable, within the give-up time, not the timeout. */
static void test_unreachable(void **state)
{
    (void)state;
    ntcp_t *ctx;
    assert_int_equal(ntcp_new(NULL, &ctx), 0);
    assert_int_equal(ntcp_add_stun_server(ctx, "127.0.0.3:9"), 0);
    ntcp_nat_profile_t p;
    uint64_t t0 = uv_hrtime();
    int rc = ntcp_discover_ex(ctx, NTCP_DISCOVER_UDP | NTCP_DISCOVER_TCP | NTCP_DISCOVER_IPV4, &p,
                              30000);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(rc, NTCP_EUNREACHABLE);
    assert_int_equal(p.udp4.reach, NTCP_REACH_BLOCKED);
    assert_true(strlen(p.udp4.why) > 0);
    /* Behaviour, not timing: it must not have waited for the 30 s timeout. */
    assert_true(ms < 25000);
    ntcp_free(ctx);
}

/* A server given by name (localhost, from /etc/hosts): looked up on the
 * thread pool, not on the loop, and probed where it points; the address
 * the probes used comes back for the runtime (ntcp_discover_start_addr). */
static void test_server_by_name(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    run r = {0};
    char addr[64], name[64];
    r.server = start_server(&loop, addr, sizeof addr);
    const char *port = strchr(addr, ':') + 1;
    snprintf(name, sizeof name, "localhost:%s", port);
    ntcp_t *ctx;
    assert_int_equal(ntcp_new(NULL, &ctx), 0);
    assert_int_equal(ntcp_add_stun_server(ctx, name), 0);
    struct sockaddr_storage server4;
    memset(&server4, 0x5a, sizeof server4);
    assert_int_equal(ntcp_discover_start_addr(ctx, &loop,
                                              NTCP_DISCOVER_UDP | NTCP_DISCOVER_TCP |
                                                  NTCP_DISCOVER_IPV4,
                                              10000, on_done, &r, &server4),
                     0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(r.done);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.profile.server, name);
    check_open(&r.profile.udp4, false);
    check_open(&r.profile.tcp4, true);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&server4;
    assert_int_equal(s4->sin_family, AF_INET);
    assert_int_equal(ntohl(s4->sin_addr.s_addr), 0x7f000001);
    assert_int_equal(ntohs(s4->sin_port), atoi(port));
    assert_int_equal(uv_loop_close(&loop), 0); /* the lookups, too, are over */
    ntcp_free(ctx);
}

/* A name that does not resolve (".invalid" never does, RFC 6761): IPv4 is
 * not probed and says why, and no server answered. A resolver slow to say
 * so lets the deadline come first, which says that instead. */
static void test_unresolvable(void **state)
{
    (void)state;
    ntcp_t *ctx;
    assert_int_equal(ntcp_new(NULL, &ctx), 0);
    assert_int_equal(ntcp_add_stun_server(ctx, "no-such-host.invalid:3478"), 0);
    ntcp_nat_profile_t p;
    int rc = ntcp_discover_ex(ctx, NTCP_DISCOVER_UDP | NTCP_DISCOVER_TCP | NTCP_DISCOVER_IPV4, &p,
                              3000);
    assert_int_equal(rc, NTCP_EUNREACHABLE);
    assert_false(p.flags & NTCP_DISCOVER_IPV4);
    print_message("why: %s\n", p.udp4.why);
    assert_true(strcmp(p.udp4.why, "no-such-host.invalid:3478 has no IPv4 address") == 0 ||
                strcmp(p.udp4.why, "the lookup of no-such-host.invalid:3478 did not finish in "
                                   "time") == 0);
    assert_string_equal(p.tcp4.why, p.udp4.why);
    assert_string_equal(p.server, "");
    ntcp_free(ctx);
}

static void test_config_file(void **state)
{
    (void)state;
    char path[] = "/tmp/ntcp-conf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "; NTCP 0.2 style\n[stun]\nWellKnownStunServer: 192.0.2.1:3478\n"
                       "[discover]\nstun_server = [2001:db8::1]:3478, 198.51.100.7\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    ntcp_t *ctx;
    assert_int_equal(ntcp_new_from_file(path, &ctx), 0);
    assert_null(ntcp_get_broker(ctx));
    ntcp_free(ctx);

    /* NTCP 0.2's [holePunch] ConnectionBroker, and the peer's own keys in
     * [ntcp]; a `name` in another section belongs to someone else. */
    fd = open(path, O_WRONLY | O_TRUNC);
    const char *peer = "name = alice\nkey_file = /tmp/alice.key\n[holePunch]\n"
                       "ConnectionBroker: 198.51.100.9:8888\n[stunt]\nname = not-us\n";
    assert_int_equal(write(fd, peer, strlen(peer)), (ssize_t)strlen(peer));
    close(fd);
    assert_int_equal(ntcp_new_from_file(path, &ctx), 0);
    assert_string_equal(ntcp_get_broker(ctx), "198.51.100.9:8888");
    assert_string_equal(ntcp_get_name(ctx), "alice");
    assert_string_equal(ntcp_get_key_file(ctx), "/tmp/alice.key");
    ntcp_free(ctx);

    /* A broker needs its port. */
    fd = open(path, O_WRONLY | O_TRUNC);
    const char *noport = "[ntcp]\nbroker = 198.51.100.9\n";
    assert_int_equal(write(fd, noport, strlen(noport)), (ssize_t)strlen(noport));
    close(fd);
    assert_int_equal(ntcp_new_from_file(path, &ctx), NTCP_ECONFIG);

    /* The same from the struct. */
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    cfg.broker = "[2001:db8::9]:8888";
    cfg.name = "bob";
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_string_equal(ntcp_get_broker(ctx), "[2001:db8::9]:8888");
    assert_string_equal(ntcp_get_name(ctx), "bob");
    assert_null(ntcp_get_key_file(ctx));
    ntcp_free(ctx);
    cfg.broker = "[2001:db8::9]";
    assert_int_equal(ntcp_new(&cfg, &ctx), NTCP_EINVAL);
    assert_int_equal(ntcp_new_from_file("/nonexistent/ntcp.conf", &ctx), NTCP_ECONFIG);
    fd = open(path, O_WRONLY | O_TRUNC);
    const char *bad = "[discover]\nstun_server = 192.0.2.1:99999\n";
    assert_int_equal(write(fd, bad, strlen(bad)), (ssize_t)strlen(bad));
    close(fd);
    assert_int_equal(ntcp_new_from_file(path, &ctx), NTCP_ECONFIG);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_loopback),
        cmocka_unit_test(test_server_list),
        cmocka_unit_test(test_default_cb_limits),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_server_by_name),
        cmocka_unit_test(test_unresolvable),
        cmocka_unit_test(test_config_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
