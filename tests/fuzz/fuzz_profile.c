/*
 * fuzz_profile.c: libFuzzer target for the profile blob (src/plan.h,
 * docs/traversal.md "The profile blob"), which a peer sends us through the
 * broker. The input is decoded as a blob: a refused blob leaves the output
 * zeroed; an accepted one has every field in its documented range,
 * re-encodes (it is all in range by then) to a blob that decodes to the same
 * profile, and that blob is canonical: it encodes again to the same bytes.
 * The same bytes are also read as a profile with any values, in range or
 * not: what the encoder accepts, the decoder accepts (what we send, the peer
 * takes), and gives back but for the documented losses (rtt_ms capped at
 * 65535, lifetime in 4 s steps up to 1020 s). Seeds
 * (tests/fuzz/make_profile_corpus.py): real profiles and refused variants.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_check.h"
#include "plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The fields that travel (plan.h: local, mapped and why never do). */
static bool same_profile(const plan_profile *a, const plan_profile *b)
{
    if (a->raw != b->raw || a->rtt_ms != b->rtt_ms || a->nat_hops != b->nat_hops)
        return false;
    for (int k = 0; k < PLAN_NBEHAVIOUR; k++) {
        const ntcp_nat_behaviour_t *x = &a->b[k], *y = &b->b[k];
        if (a->has[k] != b->has[k] || a->seq_port[k] != b->seq_port[k] || x->reach != y->reach ||
            x->mapping != y->mapping || x->filtering != y->filtering || x->ports != y->ports ||
            x->delta != y->delta || x->hairpin != y->hairpin || x->syn != y->syn ||
            x->lifetime_s != y->lifetime_s)
            return false;
    }
    return true;
}

static bool all_zero(const void *p, size_t n)
{
    const uint8_t *q = p;
    for (size_t i = 0; i < n; i++)
        if (q[i])
            return false;
    return true;
}

/* The documented ranges of a decoded profile. */
static void check_ranges(const plan_profile *p)
{
    FUZZ_CHECK(p->rtt_ms <= 65535);
    for (int k = 0; k < PLAN_NBEHAVIOUR; k++) {
        const ntcp_nat_behaviour_t *b = &p->b[k];
        if (!p->has[k]) {
            FUZZ_CHECK(all_zero(b, sizeof *b) && p->seq_port[k] == 0);
            continue;
        }
        FUZZ_CHECK((unsigned)b->reach <= NTCP_REACH_NAT);
        /* "none" is a filtering value only. */
        FUZZ_CHECK((unsigned)b->mapping <= NTCP_DEP_ADDRESS_PORT && b->mapping != NTCP_DEP_NONE);
        FUZZ_CHECK((unsigned)b->filtering <= NTCP_DEP_ADDRESS_PORT);
        FUZZ_CHECK((unsigned)b->ports <= NTCP_PORTS_RANDOM);
        FUZZ_CHECK((unsigned)b->hairpin <= NTCP_YES);
        FUZZ_CHECK((unsigned)b->syn <= NTCP_SYN_ICMP);
        FUZZ_CHECK(b->delta >= INT16_MIN && b->delta <= INT16_MAX);
        FUZZ_CHECK(b->delta == 0 || b->ports == NTCP_PORTS_SEQUENTIAL);
        FUZZ_CHECK(b->lifetime_s >= 0 && b->lifetime_s <= 1020 && b->lifetime_s % 4 == 0);
        FUZZ_CHECK(b->local.ss_family == 0 && b->mapped.ss_family == 0 && b->why[0] == 0);
    }
}

static void check_decode(const uint8_t *data, size_t size)
{
    plan_profile p;
    memset(&p, 0x5a, sizeof p);
    int rc = plan_profile_decode(data, size, &p);
    if (rc != 0) {
        FUZZ_CHECK(rc == NTCP_ETRUNCATED || rc == NTCP_EMALFORMED || rc == NTCP_EPROTO ||
                   rc == NTCP_ERANGE);
        FUZZ_CHECK(all_zero(&p, sizeof p)); /* never half set */
        return;
    }
    FUZZ_CHECK(size >= 8 && size <= PLAN_BLOB_MAX);
    check_ranges(&p);
    uint8_t again[PLAN_BLOB_MAX];
    int n = plan_profile_encode(&p, again, sizeof again);
    FUZZ_CHECK(n >= 8 && n <= PLAN_BLOB_MAX);
    FUZZ_CHECK(plan_profile_encode(&p, again, (size_t)n - 1) == NTCP_ENOSPC);
    plan_profile q;
    FUZZ_CHECK(plan_profile_decode(again, (size_t)n, &q) == 0);
    FUZZ_CHECK(same_profile(&p, &q));
    uint8_t third[PLAN_BLOB_MAX];
    FUZZ_CHECK(plan_profile_encode(&q, third, sizeof third) == n);
    FUZZ_CHECK(memcmp(third, again, (size_t)n) == 0);
}

/* Reads the input as the fields of a profile, one after the other (zeros
 * when it runs out), with values past every range reachable. */
typedef struct reader {
    const uint8_t *p;
    size_t left;
} reader;

static unsigned take(reader *r, int bytes)
{
    unsigned v = 0;
    for (int i = 0; i < bytes; i++) {
        v = v << 8 | (r->left ? *r->p : 0);
        if (r->left) {
            r->p++;
            r->left--;
        }
    }
    return v;
}

static void check_encode(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    plan_profile p;
    memset(&p, 0, sizeof p);
    unsigned flags = take(&r, 1);
    p.raw = flags & 1;
    p.rtt_ms = take(&r, 3);
    p.nat_hops = (uint8_t)take(&r, 1);
    for (int k = 0; k < PLAN_NBEHAVIOUR; k++) {
        p.has[k] = flags >> (1 + k) & 1;
        ntcp_nat_behaviour_t *b = &p.b[k];
        b->reach = (ntcp_reach_t)take(&r, 1);
        b->mapping = (ntcp_nat_dep_t)take(&r, 1);
        b->filtering = (ntcp_nat_dep_t)take(&r, 1);
        b->ports = (ntcp_port_alloc_t)take(&r, 1);
        b->hairpin = (ntcp_tristate_t)take(&r, 1);
        b->syn = (ntcp_syn_answer_t)take(&r, 1);
        b->delta = (int32_t)take(&r, 3) - 0x800000;   /* past int16 both ways */
        b->lifetime_s = (int32_t)take(&r, 2) - 0x100; /* a few negatives */
        p.seq_port[k] = (uint16_t)take(&r, 2);
    }
    uint8_t blob[PLAN_BLOB_MAX];
    int n = plan_profile_encode(&p, blob, sizeof blob);
    if (n < 0) {
        FUZZ_CHECK(n == NTCP_ERANGE);
        return;
    }
    FUZZ_CHECK(n >= 8 && n <= PLAN_BLOB_MAX);
    plan_profile q;
    FUZZ_CHECK(plan_profile_decode(blob, (size_t)n, &q) == 0);
    check_ranges(&q);
    /* What was sent comes back, but for the documented losses. */
    plan_profile want = p;
    want.rtt_ms = p.rtt_ms > 65535 ? 65535 : p.rtt_ms;
    for (int k = 0; k < PLAN_NBEHAVIOUR; k++) {
        if (!want.has[k]) {
            memset(&want.b[k], 0, sizeof want.b[k]);
            want.seq_port[k] = 0;
            continue;
        }
        int l = want.b[k].lifetime_s / 4;
        want.b[k].lifetime_s = (l > 255 ? 255 : l) * 4;
    }
    FUZZ_CHECK(same_profile(&want, &q));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_decode(data, size);
    check_encode(data, size);
    return 0;
}
