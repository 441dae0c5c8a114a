/* gpu_test — what the GPU tests share: fresh random inputs (the seed is printed; PESC_TEST_SEED
 * repeats a run), the CUDA backend or a skip (exit 77) where no GPU is usable, and comparison
 * by normalized error. Verdict through the exit status: 0 pass, 1 fail, 77 skipped, 99 error. */
#ifndef PESC_GPU_TEST_H
#define PESC_GPU_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"

static uint64_t gpu_test_rng;
static int gpu_test_failures;
/* The backend is the CPU emulator's (tests/gpu/emu.sh): slow, so the longest shapes stay out */
static int gpu_test_emulated;

static inline void gpu_test_seed(void)
{
    const char *s = getenv("PESC_TEST_SEED");
    gpu_test_rng = s && *s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) * 2654435761u;
    if (!gpu_test_rng)
        gpu_test_rng = 1;
    printf("seed %llu (PESC_TEST_SEED repeats it)\n", (unsigned long long)gpu_test_rng);
}

static inline double gpu_test_uniform(void)
{
    gpu_test_rng ^= gpu_test_rng << 13;
    gpu_test_rng ^= gpu_test_rng >> 7;
    gpu_test_rng ^= gpu_test_rng << 17;
    return (double)(gpu_test_rng >> 11) / 9007199254740992.0;
}

/* The CUDA backend, or exit 77 with the reason when there is no usable GPU. */
static inline pesc_backend *gpu_test_cuda_or_skip(void)
{
    pesc_error err;
    pesc_backend *b = backend_new("cuda", &err);
    if (!b) {
        printf("SKIP: %s\n", err.msg);
        exit(77);
    }
    printf("device: %s\n", backend_device(b));
    gpu_test_emulated = strstr(backend_device(b), "emulator") != NULL;
    return b;
}

static inline void gpu_test_die(const pesc_error *err)
{
    fprintf(stderr, "error: %s\n", err->msg);
    exit(99);
}

/* Normalized error ||got - want|| / ||want||. */
static inline double gpu_test_error(const float *got, const float *want, size_t n)
{
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        diff += d * d;
        norm += (double)want[i] * want[i];
    }
    return sqrt(diff) / (sqrt(norm) + 1e-30);
}

/* x rounded to bf16, to nearest even, as the device rounds. */
static inline float gpu_test_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The device's used memory (0 where it cannot be read). */
static inline double gpu_test_device_used(pesc_backend *b)
{
    backend_memory mem;
    return backend_memory_info(b, &mem) == 0 ? (double)mem.used : 0.0;
}

static inline void gpu_test_verdict(int ok, const char *what, double value, const char *bound)
{
    printf("%-4s %-52s %.3e (%s)\n", ok ? "ok" : "FAIL", what, value, bound);
    gpu_test_failures += !ok;
}

#endif
