/*
 * e2e_common.c: see e2e_common.h.
 */
#include "e2e_common.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

uint64_t e2e_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int e2e_profile(const char *prog, const char *name, const char *stun, unsigned flags, bool raw,
                ntcp_nat_profile_t *np, uint8_t blob[PLAN_BLOB_MAX], int *blen, plan_profile *me,
                uint64_t *discover_ms)
{
    uint64_t t0 = e2e_mono_ms();
    ntcp_config_t nc;
    ntcp_config_init(&nc);
    const char *servers[1] = {stun};
    nc.stun_servers = servers;
    nc.n_stun_servers = 1;
    ntcp_t *ctx = NULL;
    if (ntcp_new(&nc, &ctx) < 0) {
        fprintf(stderr, "%s: ntcp_new failed\n", prog);
        return 2;
    }
    memset(np, 0, sizeof *np);
    np->size = sizeof *np;
    int drc = ntcp_discover_ex(ctx, flags, np, 15000);
    ntcp_free(ctx);
    if (drc < 0 && drc != NTCP_EPROTO) {
        printf("{\"name\":\"%s\",\"ok\":false,\"stage\":\"discover\",\"error\":\"%s\"}\n", name,
               ntcp_strerror(drc));
        return 1;
    }
    *discover_ms = e2e_mono_ms() - t0;

    /* The profile blob, and what the peer will decode of it. */
    plan_profile pp;
    plan_profile_from_nat(&pp, np, raw, 0);
    *blen = plan_profile_encode(&pp, blob, PLAN_BLOB_MAX);
    if (*blen < 0 || plan_profile_decode(blob, (size_t)*blen, me) < 0) {
        fprintf(stderr, "%s: profile blob: %s\n", prog, ntcp_strerror(*blen));
        return 2;
    }
    return 0;
}

void e2e_close_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}
