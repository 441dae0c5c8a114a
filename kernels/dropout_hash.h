/* dropout_hash — the counter-based draw both backends make dropout masks with, so a mask is
 * the same on every backend and can be drawn again (recomputation) from its seed alone:
 * element i of the mask of seed s is u(s, i), 24 bits of a splitmix64 mix of (s, i) as a float
 * in [0, 1); it is dropped when u < p. Integer arithmetic only, so CPU and GPU agree bit for
 * bit. Included by C and by CUDA (where it is a host and device function). */
#ifndef PESC_DROPOUT_HASH_H
#define PESC_DROPOUT_HASH_H

#include <stdint.h>

#include "host_device.h"

static inline PESC_HOST_DEVICE float pesc_dropout_uniform(uint64_t seed, uint64_t i)
{
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

/* Element i of the mask of seed s at rate p: 0 when dropped, else keep = 1 / (1 - p). */
static inline PESC_HOST_DEVICE float pesc_dropout_value(uint64_t seed, uint64_t i, float p,
                                                        float keep)
{
    return pesc_dropout_uniform(seed, i) < p ? 0.0f : keep;
}

#endif
