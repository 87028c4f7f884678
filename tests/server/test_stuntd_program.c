/*
 * test_stuntd_program.c: the ntcp-stuntd program itself (path in argv[1]):
 * "cli" checks options, messages and exit codes and the [stunt] config file;
 * "privdrop" (root only, exit 77 otherwise) starts it as root with --user
 * nobody and checks /proc/PID/status and that connect-back still works.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static const char *prog;
static pid_t live_child; /* killed by the teardown if a test fails midway */

static int kill_child(void **state)
{
    (void)state;
    if (live_child > 0) {
        kill(live_child, SIGKILL);
        waitpid(live_child, NULL, 0);
        live_child = 0;
    }
    return 0;
}

typedef struct child {
    pid_t pid;
    int out, err;      /* pipes from its stdout and stderr */
    char text[8192];   /* stderr read so far */
    size_t len;
} child;

static void spawn(child *c, const char *const *args)
{
    int po[2], pe[2];
    assert_int_equal(pipe(po), 0);
    assert_int_equal(pipe(pe), 0);
    memset(c, 0, sizeof(*c));
    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        char *argv[32];
        int n = 0;
        argv[n++] = (char *)prog;
        for (; args[n - 1] && n < 31; n++)
            argv[n] = (char *)args[n - 1];
        argv[n] = NULL;
        execv(prog, argv);
        _exit(127);
    }
    live_child = c->pid;
    close(po[1]);
    close(pe[1]);
    c->out = po[0];
    c->err = pe[0];
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads the child's stderr until it contains want (true) or EOF/deadline. */
static bool read_until(child *c, const char *want, int timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        if (want && strstr(c->text, want))
            return true;
        int left = (int)(deadline - mono_ms());
        if (left <= 0 || !wait_readable(c->err, left))
            return false;
        ssize_t n = read(c->err, c->text + c->len, sizeof(c->text) - 1 - c->len);
        if (n <= 0)
            return false;
        c->len += (size_t)n;
        c->text[c->len] = '\0';
    }
}

/* Waits for the child to exit (its stderr reaches EOF first); returns the
 * exit status. */
static int finish(child *c)
{
    read_until(c, NULL, 10000);
    int st = 0;
    assert_int_equal(waitpid(c->pid, &st, 0), c->pid);
    live_child = 0;
    close(c->out);
    close(c->err);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static int run(const char *const *args, child *c)
{
    spawn(c, args);
    return finish(c);
}

static void stdout_text(child *c, char *buf, size_t cap)
{
    ssize_t n = read(c->out, buf, cap - 1);
    buf[n > 0 ? n : 0] = '\0';
}

static void cli_help_version_usage(void **state)
{
    (void)state;
    child c;
    char out[8192];
    spawn(&c, (const char *const[]){"--help", NULL});
    assert_true(wait_readable(c.out, 5000));
    stdout_text(&c, out, sizeof(out));
    assert_int_equal(finish(&c), 0);
    assert_non_null(strstr(out, "--primary"));
    assert_non_null(strstr(out, "--udp-rate"));
    spawn(&c, (const char *const[]){"--version", NULL});
    assert_true(wait_readable(c.out, 5000));
    stdout_text(&c, out, sizeof(out));
    assert_int_equal(finish(&c), 0);
    assert_non_null(strstr(out, "ntcp-stuntd " NTCP_VERSION_STRING));

    assert_int_equal(run((const char *const[]){NULL}, &c), 2);
    assert_non_null(strstr(c.text, "no addresses"));
    assert_int_equal(run((const char *const[]){"--bogus", NULL}, &c), 2);
    assert_int_equal(run((const char *const[]){"--primary", "127.0.0.1:1", "--alternate",
                                               "127.0.0.1:2", NULL},
                         &c),
                     2);
    assert_non_null(strstr(c.text, "must differ"));
    assert_int_equal(run((const char *const[]){"--primary", "nonsense", NULL}, &c), 2);
    assert_int_equal(run((const char *const[]){"--udp-rate", "-5", NULL}, &c), 2);
    assert_int_equal(run((const char *const[]){"--config", "/nonexistent/ntcp.conf", NULL}, &c),
                     2);
    assert_non_null(strstr(c.text, "cannot open /nonexistent/ntcp.conf"));
}

static void cli_bind_errors(void **state)
{
    (void)state;
    child c;
    /* Not an address of this host. */
    assert_int_equal(run((const char *const[]){"--primary", "192.0.2.1:0", "--alternate",
                                               "198.51.100.1:0", NULL},
                         &c),
                     1);
    assert_non_null(strstr(c.text, "cannot bind UDP 192.0.2.1:"));
    /* Ports held by another server. */
    harness h;
    ntcp_stuntd_config cfg;
    test_config(&cfg, "127.0.0.1", "127.0.0.2");
    assert_int_equal(harness_start(&h, &cfg), 0);
    char p[64], a[64];
    snprintf(p, sizeof(p), "127.0.0.1:%u", sa_port_of(&h.addr[0][0]));
    snprintf(a, sizeof(a), "127.0.0.2:%u", sa_port_of(&h.addr[1][1]));
    assert_int_equal(run((const char *const[]){"--primary", p, "--alternate", a, NULL}, &c), 1);
    char want[160];
    snprintf(want, sizeof(want), "cannot bind UDP %s: Address already in use", p);
    assert_non_null(strstr(c.text, want));
    /* TCP alone too, although the listeners use SO_REUSEPORT. */
    assert_int_equal(run((const char *const[]){"--primary", p, "--alternate", a, "--no-udp", NULL},
                         &c),
                     1);
    snprintf(want, sizeof(want), "cannot bind TCP %s: Address already in use", p);
    assert_non_null(strstr(c.text, want));
    assert_int_equal(harness_stop(&h), 0);
}

/* Parses the two UDP ports of the startup line (primary first). */
static void ports_from_log(const char *text, const char *ip, uint16_t *pp, uint16_t *ap)
{
    char key[64];
    snprintf(key, sizeof(key), "udp %s:", ip);
    const char *x = strstr(text, key);
    assert_non_null(x);
    *pp = (uint16_t)atoi(x + strlen(key));
    x = strstr(x + 1, key);
    assert_non_null(x);
    *ap = (uint16_t)atoi(x + strlen(key));
}

static void binding_ok(const char *ip, uint16_t port)
{
    int fd = udp_socket("127.0.0.1");
    struct sockaddr_storage dst;
    sa_make(&dst, ip, port);
    uint8_t req[128], buf[512], tid[16];
    req_opts o = {0};
    size_t n = build_request(req, sizeof(req), &o, tid);
    assert_int_equal(udp_send(fd, req, n, &dst), 0);
    int got = udp_recv(fd, buf, sizeof(buf), 3000, NULL);
    assert_true(got > 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)got), 0);
    assert_int_equal(m.cls, STUN_SUCCESS);
    assert_memory_equal(m.tid, tid, 16);
    close(fd);
}

static void cli_config_file(void **state)
{
    (void)state;
    char path[] = "/tmp/ntcp-stuntd-conf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char text[] = "[stunt]\nstuntIp: 127.0.0.1\nstuntPort: 0\n"
                               "otherStuntIp = 127.0.0.2\notherStuntPort = 0\n";
    assert_int_equal(write(fd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
    close(fd);
    child c;
    spawn(&c, (const char *const[]){"--config", path, NULL});
    assert_true(read_until(&c, "listening on", 5000));
    uint16_t pp, ap;
    ports_from_log(c.text, "127.0.0.1", &pp, &ap);
    assert_int_not_equal(pp, ap);
    binding_ok("127.0.0.1", pp);
    binding_ok("127.0.0.2", ap);
    kill(c.pid, SIGTERM);
    assert_int_equal(finish(&c), 0);
    assert_non_null(strstr(c.text, "stopping"));
    unlink(path);
}

/* ---- privilege drop (root) --------------------------------------------------- */

static void status_ids(pid_t pid, const char *field, unsigned ids[4])
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    bool found = false;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, field, strlen(field)) == 0) {
            assert_int_equal(sscanf(line + strlen(field), "%u %u %u %u", &ids[0], &ids[1],
                                    &ids[2], &ids[3]),
                             4);
            found = true;
        }
    }
    fclose(f);
    assert_true(found);
}

static void privdrop(void **state)
{
    (void)state;
    struct passwd *pw = getpwnam("nobody");
    assert_non_null(pw);
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    child c;
    spawn(&c, (const char *const[]){"--primary", "127.0.0.1:0", "--alternate", "127.0.0.2:0",
                                    "--user", "nobody", "--cb-rate", "0", NULL});
    assert_true(read_until(&c, "running as nobody", 5000));
    unsigned ids[4];
    status_ids(c.pid, "Uid:", ids);
    for (int i = 0; i < 4; i++)
        assert_int_equal(ids[i], uid);
    status_ids(c.pid, "Gid:", ids);
    for (int i = 0; i < 4; i++)
        assert_int_equal(ids[i], gid);
    uint16_t pp, ap;
    ports_from_log(c.text, "127.0.0.1", &pp, &ap);
    binding_ok("127.0.0.2", ap);

    /* Connect-back after the drop: its socket shares the listener's port,
     * which needs the same owner (the listeners were handed to nobody). */
    struct sockaddr_storage me, dst;
    sa_make(&me, "127.0.0.1", 0);
    sa_make(&dst, "127.0.0.1", pp);
    int ctl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ctl, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(ctl, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    assert_int_equal(bind(ctl, (struct sockaddr *)&me, sizeof(struct sockaddr_in)), 0);
    socklen_t ml = sizeof(me);
    getsockname(ctl, (struct sockaddr *)&me, &ml);
    int lfd = tcp_listen_reuse(&me);
    assert_true(lfd >= 0);
    assert_int_equal(connect(ctl, (struct sockaddr *)&dst, sizeof(struct sockaddr_in)), 0);
    uint8_t req[128], buf[512], tid[16];
    req_opts o = {.method = STUNT_CONNECT_BACK, .has_change = true, .change = STUN_CHANGE_PORT};
    size_t n = build_request(req, sizeof(req), &o, tid);
    assert_int_equal(write_all(ctl, req, n), 0);
    assert_true(wait_readable(lfd, 3000));
    int in = accept(lfd, NULL, NULL);
    assert_true(in >= 0);
    int got = tcp_read_msg(in, buf, sizeof(buf), 3000);
    assert_true(got > 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)got), 0);
    assert_memory_equal(m.tid, tid, 16);
    close(in);
    got = tcp_read_msg(ctl, buf, sizeof(buf), 3000);
    assert_true(got > 0);
    assert_int_equal(stun_parse(&m, buf, (size_t)got), 0);
    stunt_connect_result r;
    assert_int_equal(stunt_get_connect_result(&m, &r), 0);
    assert_int_equal(r.outcome, STUNT_CONNECTED);
    close(ctl);
    close(lfd);
    kill(c.pid, SIGTERM);
    assert_int_equal(finish(&c), 0);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s PATH-TO-ntcp-stuntd cli|privdrop\n", argv[0]);
        return 1;
    }
    prog = argv[1];
    if (strcmp(argv[2], "privdrop") == 0) {
        if (geteuid() != 0) {
            printf("SKIP: needs root (starts ntcp-stuntd as root with --user nobody)\n");
            return 77;
        }
        if (!getpwnam("nobody")) {
            printf("SKIP: no user nobody\n");
            return 77;
        }
        const struct CMUnitTest tests[] = {cmocka_unit_test_teardown(privdrop, kill_child)};
        return cmocka_run_group_tests_name("stuntd_privdrop", tests, NULL, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(cli_help_version_usage, kill_child),
        cmocka_unit_test_teardown(cli_bind_errors, kill_child),
        cmocka_unit_test_teardown(cli_config_file, kill_child),
    };
    return cmocka_run_group_tests_name("stuntd_program", tests, NULL, NULL);
}
