/*
 * e2e_common.h: what the lab's end-to-end programs (tests/engine/e2e.c,
 * tests/udp/e2e_udp.c) share: discovery and the profile blob each end
 * registers, a monotonic clock, and the loop's last handles closed.
 */
#ifndef NTCP_E2E_COMMON_H
#define NTCP_E2E_COMMON_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "ntcp.h"
#include "plan.h"

uint64_t e2e_mono_ms(void);

/* Discovers the NAT against stun (flags: NTCP_DISCOVER_*), then makes the
 * profile blob (raw: the raw-socket flag) and decodes it back into *me,
 * which is what the peer will see. Returns 0; 1 when discovery failed (a
 * JSON line {"name","ok":false,"stage":"discover","error"} is printed on
 * stdout, the programs' result); 2 on a local error (said on stderr). */
int e2e_profile(const char *prog, const char *name, const char *stun, unsigned flags, bool raw,
                ntcp_nat_profile_t *np, uint8_t blob[PLAN_BLOB_MAX], int *blen, plan_profile *me,
                uint64_t *discover_ms);

/* uv_walk() callback: closes every handle not closing yet. */
void e2e_close_handle(uv_handle_t *h, void *arg);

#endif
