/*
 * fuzz_check.h: the assertion the fuzz targets use. It stays on in every
 * build type (NDEBUG or not) and aborts, which libFuzzer reports as a crash
 * and the corpus replay test as a failure.
 */
#ifndef NTCP_FUZZ_CHECK_H
#define NTCP_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif /* NTCP_FUZZ_CHECK_H */
