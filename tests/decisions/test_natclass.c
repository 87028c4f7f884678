/*
 * test_natclass.c: NAT classification, table-driven. Each row is what the
 * probes would see behind one NAT personality; the expected behaviour is the
 * one the personality's name promises.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <string.h>

#include "natclass.h"

static struct sockaddr_storage v4(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    inet_pton(AF_INET, ip, &sin->sin_addr);
    return ss;
}

typedef struct row {
    const char *name;
    bool tcp;
    uint16_t local_port;
    const char *public_ip; /* NULL: no NAT (mapped = local) */
    uint16_t m[3];         /* mapped ports towards the 3 endpoints, 0 = no answer */
    ntcp_tristate_t both, port;
    int syn_outcome;
    uint16_t seq[4]; /* mapped ports of successive new mappings; 0 ends */
    /* expected */
    ntcp_reach_t reach;
    ntcp_nat_dep_t mapping, filtering;
    ntcp_port_alloc_t ports;
    int delta;
    ntcp_syn_answer_t syn;
    const char *classic, *legacy;
} row;

#define Y NTCP_YES
#define N NTCP_NO
#define U NTCP_UNKNOWN
#define EI NTCP_DEP_ENDPOINT_INDEPENDENT
#define AD NTCP_DEP_ADDRESS
#define APD NTCP_DEP_ADDRESS_PORT

static const row rows[] = {
    {"open host, udp", false, 4000, NULL, {4000, 4000, 4000}, Y, Y, -1, {4000, 4000, 4000},
     NTCP_REACH_OPEN, EI, NTCP_DEP_NONE, NTCP_PORTS_PRESERVED, 0, NTCP_SYN_UNKNOWN, "open", "None"},
    {"firewall, tcp, rst", true, 4000, NULL, {4000, 4000, 4000}, N, N, 1, {4000, 4000, 4000},
     NTCP_REACH_FIREWALL, EI, APD, NTCP_PORTS_PRESERVED, 0, NTCP_SYN_RST, "firewall", "None"},
    {"full cone, udp", false, 4000, "203.0.113.5", {4000, 4000, 4000}, Y, Y, -1, {4000, 4001, 4002},
     NTCP_REACH_NAT, EI, EI, NTCP_PORTS_SEQUENTIAL, 1, NTCP_SYN_UNKNOWN, "full cone", "Independent"},
    {"restricted cone, tcp, icmp", true, 4000, "203.0.113.5", {4000, 4000, 4000}, N, Y, 2,
     {4000, 4000, 4000}, NTCP_REACH_NAT, EI, AD, NTCP_PORTS_PRESERVED, 0, NTCP_SYN_ICMP,
     "restricted cone", "Independent"},
    {"port-restricted, tcp, drop", true, 4000, "203.0.113.5", {4000, 4000, 4000}, N, N, 3,
     {4000, 4000, 4000}, NTCP_REACH_NAT, EI, APD, NTCP_PORTS_PRESERVED, 0, NTCP_SYN_DROPPED,
     "port-restricted cone", "Independent"},
    {"symmetric-seq delta 2, udp", false, 4000, "203.0.113.5", {1024, 1026, 1028}, N, N, -1,
     {1024, 1026, 1028, 1030}, NTCP_REACH_NAT, APD, APD, NTCP_PORTS_SEQUENTIAL, 2, NTCP_SYN_UNKNOWN,
     "symmetric", "AddressPortDependent"},
    {"symmetric-random, tcp, rst", true, 4000, "203.0.113.5", {31000, 2077, 50321}, N, N, 1,
     {31000, 2077, 50321, 9000}, NTCP_REACH_NAT, APD, APD, NTCP_PORTS_RANDOM, 0, NTCP_SYN_RST,
     "symmetric", "SessionDependent"},
    {"address-dependent mapping", false, 4000, "203.0.113.5", {5000, 5001, 5001}, N, N, -1, {0},
     NTCP_REACH_NAT, AD, APD, NTCP_PORTS_UNKNOWN, 0, NTCP_SYN_UNKNOWN, "symmetric",
     "AddressDependent"},
    {"udp blocked", false, 4000, NULL, {0, 0, 0}, U, U, -1, {0}, NTCP_REACH_BLOCKED,
     NTCP_DEP_UNKNOWN, NTCP_DEP_UNKNOWN, NTCP_PORTS_UNKNOWN, 0, NTCP_SYN_UNKNOWN, "blocked", "unknown"},
    {"no alternate answers", false, 4000, "203.0.113.5", {4000, 0, 0}, U, U, -1, {0},
     NTCP_REACH_NAT, NTCP_DEP_UNKNOWN, NTCP_DEP_UNKNOWN, NTCP_PORTS_UNKNOWN, 0, NTCP_SYN_UNKNOWN,
     "unknown", "unknown"},
};

static void build_obs(const row *r, ntcp_nat_obs *o)
{
    ntcp_nat_obs_init(o, r->tcp);
    o->local = v4("192.168.1.10", r->local_port);
    if (!r->public_ip)
        o->local = v4("198.51.100.20", r->local_port);
    for (int i = 0; i < 3; i++) {
        o->got[i] = r->m[i] != 0;
        if (o->got[i])
            o->mapped[i] = r->public_ip ? v4(r->public_ip, r->m[i]) : v4("198.51.100.20", r->m[i]);
    }
    o->from_other_both = r->both;
    o->from_other_port = r->port;
    o->syn_outcome = r->syn_outcome;
    for (size_t i = 0; i < 4 && r->seq[i]; i++) {
        /* Fresh sockets get fresh local ports: a NAT that preserves ports maps
         * each to itself, which the rows express by repeating local_port. */
        uint16_t local = (uint16_t)(r->local_port + 10 * i);
        o->seq_local[i] = local;
        o->seq_mapped[i] = r->seq[i] == r->local_port ? local : r->seq[i];
        o->nseq++;
    }
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const row *r = &rows[i];
        ntcp_nat_obs o;
        ntcp_nat_behaviour_t b;
        build_obs(r, &o);
        ntcp_classify(&o, &b);
        print_message("%s: reach=%s mapping=%s filtering=%s ports=%s delta=%d syn=%s why=%s\n",
                      r->name, ntcp_reach_name(b.reach), ntcp_dep_name(b.mapping),
                      ntcp_dep_name(b.filtering), ntcp_ports_name(b.ports), b.delta,
                      ntcp_syn_name(b.syn), b.why);
        assert_int_equal(b.reach, r->reach);
        assert_int_equal(b.mapping, r->mapping);
        assert_int_equal(b.filtering, r->filtering);
        assert_int_equal(b.ports, r->ports);
        assert_int_equal(b.delta, r->delta);
        assert_int_equal(b.syn, r->syn);
        assert_string_equal(ntcp_classic_name(&b), r->classic);
        assert_string_equal(ntcp_legacy_name(ntcp_legacy_type(&b)), r->legacy);
    }
}

/* An unknown field always carries a reason. */
static void test_unknown_has_reason(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        ntcp_nat_obs o;
        ntcp_nat_behaviour_t b;
        build_obs(&rows[i], &o);
        ntcp_classify(&o, &b);
        bool unknown = b.reach == NTCP_REACH_UNKNOWN || b.reach == NTCP_REACH_BLOCKED ||
                       b.mapping == NTCP_DEP_UNKNOWN || b.filtering == NTCP_DEP_UNKNOWN ||
                       b.ports == NTCP_PORTS_UNKNOWN;
        if (unknown)
            assert_true(strlen(b.why) > 0);
    }
}

/* Sequential detection wraps around 65535 and refuses large jumps. */
static void test_port_wrap_and_jumps(void **state)
{
    (void)state;
    ntcp_nat_obs o;
    ntcp_nat_behaviour_t b;
    ntcp_nat_obs_init(&o, false);
    o.local = v4("192.168.1.10", 4000);
    for (int i = 0; i < 3; i++) {
        o.got[i] = true;
        o.mapped[i] = v4("203.0.113.5", (uint16_t)(65534 + i));
    }
    uint16_t ports[] = {65534, 65535, 0, 1};
    for (size_t i = 0; i < 4; i++) {
        o.seq_local[i] = (uint16_t)(4000 + i);
        o.seq_mapped[i] = ports[i];
    }
    o.nseq = 4;
    ntcp_classify(&o, &b);
    assert_int_equal(b.ports, NTCP_PORTS_SEQUENTIAL);
    assert_int_equal(b.delta, 1);

    uint16_t jumps[] = {1000, 2000, 3000};
    for (size_t i = 0; i < 3; i++)
        o.seq_mapped[i] = jumps[i];
    o.nseq = 3;
    ntcp_classify(&o, &b);
    assert_int_equal(b.ports, NTCP_PORTS_RANDOM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_unknown_has_reason),
        cmocka_unit_test(test_port_wrap_and_jumps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
