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
#include <limits.h>
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

/* How much silence is conclusive: three tries on a link that lost
 * nothing, more as the loss grows, never on a link that loses nearly all. */
static void test_silence_needed(void **state)
{
    (void)state;
    assert_int_equal(ntcp_silence_needed(0, 0), NTCP_SILENCE_MIN);
    assert_int_equal(ntcp_silence_needed(0, 40), NTCP_SILENCE_MIN);
    /* 1 lost of 30: q = 2/32, 0.0625^5 < 1e-5 < 0.0625^4. */
    assert_int_equal(ntcp_silence_needed(1, 30), 5);
    /* 10 lost of 30: q = 11/32, 0.34375^11 < 1e-5 < 0.34375^10. */
    assert_int_equal(ntcp_silence_needed(10, 30), 11);
    assert_int_equal(ntcp_silence_needed(30, 30), UINT_MAX);
    unsigned prev = 0;
    for (unsigned lost = 0; lost <= 25; lost++) {
        unsigned n = ntcp_silence_needed(lost, 50);
        assert_true(n >= prev);
        prev = n;
    }
}

/* Filtering over a lossy link: what was seen (an answer, a refusal) decides
 * at once; silence decides only when there was enough of it for the loss
 * the link showed, else the filtering is unknown with the reason. The NAT is
 * endpoint-independent (mapping) in every row. */
typedef struct lossrow {
    const char *name;
    bool tcp;
    ntcp_tristate_t both, port; /* seen: YES through, NO refused, U nothing */
    unsigned silent_both, silent_port, lost, tries;
    int syn_outcome;
    ntcp_nat_dep_t filtering;
    ntcp_syn_answer_t syn;
} lossrow;

#define UNK NTCP_DEP_UNKNOWN

static const lossrow loss_rows[] = {
    {"clean link, 3 silent tries each", true, U, U, 3, 3, 0, 30, -1, APD, NTCP_SYN_DROPPED},
    {"clean link, 2 silent tries", true, U, U, 2, 2, 0, 30, -1, UNK, NTCP_SYN_UNKNOWN},
    {"lossy link, 4 of 11 silent tries", true, U, U, 4, 4, 10, 30, -1, UNK, NTCP_SYN_UNKNOWN},
    {"lossy link, 11 silent tries each", true, U, U, 11, 11, 10, 30, -1, APD, NTCP_SYN_DROPPED},
    {"lossy link, refused, port silent enough", true, N, U, 0, 11, 10, 30, 1, APD, NTCP_SYN_RST},
    {"lossy link, refused, port silent too short", true, N, U, 0, 4, 10, 30, 2, UNK, NTCP_SYN_ICMP},
    {"lossy link, port through, both silent enough", true, U, Y, 11, 0, 10, 30, -1, AD,
     NTCP_SYN_DROPPED},
    {"lossy link, port through, both silent too short", true, U, Y, 4, 0, 10, 30, -1, UNK,
     NTCP_SYN_UNKNOWN},
    {"lossy link, both through, port never answered", true, Y, U, 0, 0, 10, 30, -1, EI,
     NTCP_SYN_ACCEPTED},
    {"link losing everything: never conclusive", true, U, U, 60, 60, 30, 30, -1, UNK,
     NTCP_SYN_UNKNOWN},
    {"udp, lossy link, silent enough", false, U, U, 11, 11, 10, 30, -1, APD, NTCP_SYN_UNKNOWN},
    {"udp, lossy link, port answered, both silent too short", false, U, Y, 5, 0, 10, 30, -1, UNK,
     NTCP_SYN_UNKNOWN},
};

static void eim_nat(ntcp_nat_obs *o, bool tcp)
{
    ntcp_nat_obs_init(o, tcp);
    o->local = v4("192.168.1.10", 4000);
    for (int i = 0; i < 3; i++) {
        o->got[i] = true;
        o->mapped[i] = v4("203.0.113.5", 4000);
    }
    for (size_t i = 0; i < 5; i++) {
        o->seq_local[i] = o->seq_mapped[i] = (uint16_t)(4000 + 10 * i);
        o->nseq++;
    }
}

static void test_filtering_under_loss(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof loss_rows / sizeof loss_rows[0]; i++) {
        const lossrow *r = &loss_rows[i];
        ntcp_nat_obs o;
        ntcp_nat_behaviour_t b;
        eim_nat(&o, r->tcp);
        o.from_other_both = r->both;
        o.from_other_port = r->port;
        o.silent_both = r->silent_both;
        o.silent_port = r->silent_port;
        o.lost = r->lost;
        o.tries = r->tries;
        o.syn_outcome = r->syn_outcome;
        ntcp_classify(&o, &b);
        print_message("%s: filtering=%s syn=%s why=%s\n", r->name, ntcp_dep_name(b.filtering),
                      ntcp_syn_name(b.syn), b.why);
        assert_int_equal(b.reach, NTCP_REACH_NAT);
        assert_int_equal(b.filtering, r->filtering);
        assert_int_equal(b.syn, r->syn);
        if (b.filtering == UNK || (r->tcp && b.syn == NTCP_SYN_UNKNOWN))
            assert_true(strlen(b.why) > 0);
        if (b.filtering == UNK)
            assert_string_equal(ntcp_classic_name(&b), "unknown");
    }
}

/* The primary probe lost: another port's answer still tells NAT from no
 * NAT; the mapping and hairpin stay unknown, with the reason. Nothing
 * answered at all: blocked. */
static void test_primary_lost(void **state)
{
    (void)state;
    ntcp_nat_obs o;
    ntcp_nat_behaviour_t b;
    eim_nat(&o, false);
    o.from_other_both = o.from_other_port = N;
    o.got[0] = false;
    o.got_other = true;
    o.other_local = v4("192.168.1.10", 4010);
    o.other_mapped = v4("203.0.113.5", 4010);
    ntcp_classify(&o, &b);
    assert_int_equal(b.reach, NTCP_REACH_NAT);
    assert_int_equal(b.mapping, NTCP_DEP_UNKNOWN);
    assert_int_equal(b.filtering, APD);
    assert_int_equal(b.ports, NTCP_PORTS_PRESERVED);
    assert_true(strstr(b.why, "primary") != NULL);

    o.local = o.other_local = o.other_mapped = v4("198.51.100.20", 4010);
    ntcp_classify(&o, &b);
    assert_int_equal(b.reach, NTCP_REACH_FIREWALL);
    assert_int_equal(b.mapping, EI);

    o.got_other = false;
    ntcp_classify(&o, &b);
    assert_int_equal(b.reach, NTCP_REACH_BLOCKED);
}

/* The port pattern with lost probes: a gap keeps the line; a retransmitted
 * sample off the line of those answered at once makes it unknown (its
 * mapping may have been made late); those answered at once off any line
 * are random. */
static void test_ports_under_loss(void **state)
{
    (void)state;
    ntcp_nat_obs o;
    ntcp_nat_behaviour_t b;
    eim_nat(&o, false);
    o.nseq = 0;
    /* Places 0, 2, 3, 4 of a delta-2 NAT: place 1 was lost. */
    static const uint8_t gap_pos[] = {0, 2, 3, 4};
    for (size_t i = 0; i < 4; i++) {
        o.seq_local[i] = (uint16_t)(4000 + i);
        o.seq_mapped[i] = (uint16_t)(20000 + 2 * gap_pos[i]);
        o.seq_pos[i] = gap_pos[i];
        o.nseq++;
    }
    o.seq_first[1] = false; /* retransmitted, but on the line: still sequential */
    ntcp_classify(&o, &b);
    assert_int_equal(b.ports, NTCP_PORTS_SEQUENTIAL);
    assert_int_equal(b.delta, 2);

    /* The retransmitted one came out of its place. */
    o.seq_mapped[1] = 20010;
    ntcp_classify(&o, &b);
    assert_int_equal(b.ports, NTCP_PORTS_UNKNOWN);
    assert_true(strstr(b.why, "port allocation") != NULL);
    assert_string_equal(ntcp_legacy_name(ntcp_legacy_type(&b)), "Independent");

    /* Answered at once and off any line: random. */
    o.seq_mapped[2] = 31337;
    ntcp_classify(&o, &b);
    assert_int_equal(b.ports, NTCP_PORTS_RANDOM);

    /* Only one answered at once: too few to tell. */
    for (size_t i = 0; i < 4; i++)
        o.seq_first[i] = i == 0;
    ntcp_classify(&o, &b);
    assert_int_equal(b.ports, NTCP_PORTS_UNKNOWN);

    /* Symmetric: with the ports unknown, NTCP 0.2's name is unknown too
     * (AddressPortDependent and SessionDependent differ by the ports). */
    o.mapped[1] = v4("203.0.113.5", 4001);
    o.mapped[2] = v4("203.0.113.5", 4002);
    ntcp_classify(&o, &b);
    assert_int_equal(b.mapping, APD);
    assert_string_equal(ntcp_classic_name(&b), "symmetric");
    assert_string_equal(ntcp_legacy_name(ntcp_legacy_type(&b)), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_unknown_has_reason),
        cmocka_unit_test(test_port_wrap_and_jumps),
        cmocka_unit_test(test_silence_needed),
        cmocka_unit_test(test_filtering_under_loss),
        cmocka_unit_test(test_primary_lost),
        cmocka_unit_test(test_ports_under_loss),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
