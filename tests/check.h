/* check.h — the C tests' checks. CHECK says nothing when COND holds and otherwise prints
 * "FAIL file:line: (COND) message"; REPORT prints every check, "ok message" or "FAIL
 * message". Both count the failures in `failures`, which main turns into its exit status. */
#ifndef PESC_TESTS_CHECK_H
#define PESC_TESTS_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            failures++;                                                                    \
            printf("FAIL %s:%d: (%s) ", __FILE__, __LINE__, #cond);                        \
            printf(__VA_ARGS__);                                                           \
            putchar('\n');                                                                 \
        }                                                                                  \
    } while (0)

#define REPORT(cond, ...)                                                                  \
    do {                                                                                   \
        int ok_ = (cond);                                                                  \
        printf("%-4s ", ok_ ? "ok" : "FAIL");                                              \
        printf(__VA_ARGS__);                                                               \
        putchar('\n');                                                                     \
        failures += !ok_;                                                                  \
    } while (0)

#endif
