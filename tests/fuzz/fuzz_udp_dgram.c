/*
 * fuzz_udp_dgram.c: libFuzzer target for the UDP punch's datagram parser
 * (src/udp_punch.c, docs/udp.md): whatever parses stays inside the input,
 * has a known kind and role, and a PROBE or PICK rebuilt from what was
 * parsed parses back to the same.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_check.h"
#include "udp_punch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    udp_dgram d;
    int rc = udp_dgram_parse(data, size, &d);
    if (rc != 0) {
        FUZZ_CHECK(rc < 0);
        return 0;
    }
    FUZZ_CHECK(size >= 20 && size <= VERIFY_MAX_MESSAGE);
    if (d.kind == UDP_DG_VERIFY) {
        FUZZ_CHECK(d.v.method == VERIFY_HELLO || d.v.method == VERIFY_PROOF ||
                   d.v.method == VERIFY_REFUSE);
        return 0;
    }
    FUZZ_CHECK(d.kind == UDP_DG_PROBE || d.kind == UDP_DG_PICK);
    FUZZ_CHECK(d.role <= 1);
    FUZZ_CHECK(d.session_id >= data && d.session_id + VERIFY_SESSION_ID_SIZE <= data + size);
    uint8_t buf[128];
    int n = udp_dgram_build(buf, sizeof buf,
                            d.kind == UDP_DG_PROBE ? UDP_PUNCH_PROBE : UDP_PUNCH_PICK, d.role,
                            d.session_id);
    FUZZ_CHECK(n == UDP_PUNCH_PROBE_SIZE);
    udp_dgram e;
    FUZZ_CHECK(udp_dgram_parse(buf, (size_t)n, &e) == 0);
    FUZZ_CHECK(e.kind == d.kind && e.role == d.role &&
               memcmp(e.session_id, d.session_id, VERIFY_SESSION_ID_SIZE) == 0);
    return 0;
}
