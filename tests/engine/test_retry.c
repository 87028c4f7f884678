/*
 * test_retry.c: the engine's retry and re-punch rules (src/retry.c), as a
 * table: each row one situation and what must happen, with its reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "retry.h"

typedef struct row {
    const char *why;
    retry_in in;
    retry_action_t want;
    bool count;
} row;

#define PUNCH(...) {.role = PLAN_PUNCH, .local = PLAN_LOCAL_SESSION, __VA_ARGS__}
#define PUNCH1(...) PUNCH(.window = 1, __VA_ARGS__)
#define CONN(loc, ...) {.role = PLAN_CONNECT, .local = (loc), __VA_ARGS__}

static const row ROWS[] = {
    /* PUNCH, before the hold time */
    {"a punch's time exceeded: punch again at once (no SYN-SENT socket, no hole)",
     PUNCH1(.end = RETRY_END_TIME_EXCEEDED), RETRY_PUNCH_NOW, true},
    {"time exceeded from outside the site, hold not due yet: punch again",
     PUNCH1(.end = RETRY_END_TIME_EXCEEDED, .left_site = true), RETRY_PUNCH_NOW, true},
    {"time exceeded from inside the site, hold due: punch again (the TTL went up)",
     PUNCH1(.end = RETRY_END_TIME_EXCEEDED, .hold_due = true), RETRY_PUNCH_NOW, true},
    {"time exceeded from outside the site, hold due: hold the 4-tuple",
     PUNCH1(.end = RETRY_END_TIME_EXCEEDED, .left_site = true, .hold_due = true), RETRY_HOLD_NOW, true},
    {"port unreachable to a punch: the same SYN shortly",
     PUNCH1(.end = RETRY_END_ICMP), RETRY_SOON, true},
    {"a local error or timeout of a punch: shortly",
     PUNCH1(.end = RETRY_END_OTHER), RETRY_SOON, true},
    {"an RST to a punch: nothing now, the regular re-punch comes later",
     PUNCH1(.end = RETRY_END_RST), RETRY_NONE, false},
    /* PUNCH, the hold */
    {"an RST to the hold: the peer's NAT had no hole yet; punch again at once",
     PUNCH1(.end = RETRY_END_RST, .was_held = true), RETRY_UNHOLD_PUNCH_NOW, true},
    {"the hold's SYN ended by an ICMP error: the same SYN shortly",
     PUNCH1(.end = RETRY_END_ICMP, .was_held = true), RETRY_SOON, true},
    {"the hold's SYN timed out: shortly",
     PUNCH1(.end = RETRY_END_OTHER, .was_held = true, .hold_due = true), RETRY_SOON, true},
    /* PUNCH, bounds */
    {"the attempt is over: nothing",
     PUNCH1(.end = RETRY_END_TIME_EXCEEDED, .stopped = true), RETRY_NONE, false},
    {"a target past the 32 tracked: nothing",
     PUNCH1(.end = RETRY_END_TIME_EXCEEDED, .target = 32), RETRY_NONE, false},
    {"24 re-punches plus 4 for a window of 1: the 28th is the last",
     PUNCH1(.end = RETRY_END_TIME_EXCEEDED, .repunches = 27), RETRY_PUNCH_NOW, true},
    {"... and then no more",
     PUNCH1(.end = RETRY_END_TIME_EXCEEDED, .repunches = 28), RETRY_NONE, false},
    {"a window of 5 ports allows 4 more per port",
     PUNCH(.end = RETRY_END_ICMP, .repunches = 43, .window = 5), RETRY_SOON, true},
    {"... up to 44",
     PUNCH(.end = RETRY_END_ICMP, .repunches = 44, .window = 5), RETRY_NONE, false},
    /* CONNECT / SIMOPEN from the session port */
    {"session port refused by RST: connect again at once (else the peer's SYN meets our listener)",
     CONN(PLAN_LOCAL_SESSION, .end = RETRY_END_RST, .refusals = 1), RETRY_CONNECT_NOW, false},
    {"session port, ICMP error: at once too",
     CONN(PLAN_LOCAL_SESSION, .end = RETRY_END_ICMP, .refusals = 1), RETRY_CONNECT_NOW, false},
    {"session port, the 32nd refusal: after a round trip",
     CONN(PLAN_LOCAL_SESSION, .end = RETRY_END_RST, .refusals = 32), RETRY_AFTER_RTT, false},
    {"session port, the 64th refusal: no more",
     CONN(PLAN_LOCAL_SESSION, .end = RETRY_END_RST, .refusals = 64), RETRY_NONE, false},
    /* from a fresh port */
    {"fresh port, ICMP error: at once, same 4-tuple, same mapping",
     CONN(PLAN_LOCAL_FRESH, .end = RETRY_END_ICMP, .refusals = 1), RETRY_CONNECT_NOW, false},
    {"fresh port, time exceeded: at once too",
     CONN(PLAN_LOCAL_FRESH, .end = RETRY_END_TIME_EXCEEDED), RETRY_CONNECT_NOW, false},
    {"fresh port, RST: never (a new SYN would be a new mapping, the prediction moves)",
     CONN(PLAN_LOCAL_FRESH, .end = RETRY_END_RST, .refusals = 1), RETRY_NONE, false},
    {"fresh port, ICMP, 32 refusals: no more",
     CONN(PLAN_LOCAL_FRESH, .end = RETRY_END_ICMP, .refusals = 32), RETRY_NONE, false},
    /* from any port */
    {"any port, RST: after a round trip",
     CONN(PLAN_LOCAL_ANY, .end = RETRY_END_RST, .refusals = 1), RETRY_AFTER_RTT, false},
    {"any port, timeout: after a round trip",
     CONN(PLAN_LOCAL_ANY, .end = RETRY_END_OTHER), RETRY_AFTER_RTT, false},
    {"any port, stopped: nothing",
     CONN(PLAN_LOCAL_ANY, .end = RETRY_END_RST, .stopped = true), RETRY_NONE, false},
    {"any port, target 40: nothing",
     CONN(PLAN_LOCAL_ANY, .end = RETRY_END_RST, .target = 40), RETRY_NONE, false},
    /* the same rules for a simultaneous open */
    {"simopen from the session port, RST: at once",
     {.role = PLAN_SIMOPEN, .local = PLAN_LOCAL_SESSION, .end = RETRY_END_RST, .refusals = 3},
     RETRY_CONNECT_NOW, false},
    /* roles with their own machinery */
    {"spray: the birthday search's own rules",
     {.role = PLAN_SPRAY, .local = PLAN_LOCAL_ANY, .end = RETRY_END_TIME_EXCEEDED}, RETRY_NONE, false},
    {"guess: a miss is a miss",
     {.role = PLAN_GUESS, .local = PLAN_LOCAL_SESSION, .end = RETRY_END_RST}, RETRY_NONE, false},
    {"raw-syn: raw_attempt.c's",
     {.role = PLAN_RAW_SYN, .local = PLAN_LOCAL_SESSION, .end = RETRY_END_RST}, RETRY_NONE, false},
};

static void test_table(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t k = 0; k < sizeof ROWS / sizeof *ROWS; k++) {
        retry_out o = retry_decide(&ROWS[k].in);
        if (o.action != ROWS[k].want || o.count_repunch != ROWS[k].count) {
            fprintf(stderr, "row %zu (%s): got %s%s, want %s%s\n", k, ROWS[k].why,
                    retry_action_name(o.action), o.count_repunch ? " (counted)" : "",
                    retry_action_name(ROWS[k].want), ROWS[k].count ? " (counted)" : "");
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

static void test_names(void **state)
{
    (void)state;
    for (int a = RETRY_NONE; a <= RETRY_AFTER_RTT; a++)
        assert_string_not_equal(retry_action_name((retry_action_t)a), "?");
    assert_string_equal(retry_action_name((retry_action_t)99), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
