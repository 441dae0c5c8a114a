/* sample — see sample.h. */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void sampler_init(sampler *s, float temperature, int top_k, float top_p, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    s->temperature = temperature;
    s->top_k = top_k;
    s->top_p = top_p;
    s->rng = seed ? seed : 0x853c49e6748fea9bull;
}

void sampler_free(sampler *s)
{
    free(s->probs);
    free(s->order);
    free(s->keys);
    memset(s, 0, sizeof *s);
}

/* top-k and top-p keep the likeliest ids in this order: the largest probability first, ties
 * to the lower id. A probability's key: ascending keys are that order (a non-negative
 * float's bits order as its value). */
static uint64_t key_of(float p, int id)
{
    uint32_t bits;
    memcpy(&bits, &p, sizeof bits);
    return (uint64_t)(0x7fffffffu - bits) << 32 | (uint32_t)id;
}

/* keys[0, n) ascending: a radix sort a byte at a time through tmp (n more), a byte alike in
 * them all passed over. */
static void sort_keys(uint64_t *keys, uint64_t *tmp, int n)
{
    uint64_t *from = keys, *to = tmp;
    for (int shift = 0; shift < 64; shift += 8) {
        int count[257] = {0};
        for (int i = 0; i < n; i++)
            count[(from[i] >> shift & 0xff) + 1]++;
        if (count[(from[0] >> shift & 0xff) + 1] == n)
            continue;
        for (int d = 0; d < 256; d++)
            count[d + 1] += count[d];
        for (int i = 0; i < n; i++)
            to[count[from[i] >> shift & 0xff]++] = from[i];
        uint64_t *t = from;
        from = to;
        to = t;
    }
    if (from != keys)
        memcpy(keys, from, (size_t)n * sizeof *keys);
}

/* The ids of probability t and more, largest first (ties to the lower id), into s->order:
 * their count. */
static int sorted_above(sampler *s, int V, float t)
{
    int n = 0;
    for (int i = 0; i < V; i++)
        if (s->probs[i] >= t)
            s->keys[n++] = key_of(s->probs[i], i);
    if (n > 0)
        sort_keys(s->keys, s->keys + V, n);
    for (int i = 0; i < n; i++)
        s->order[i] = (int)(uint32_t)s->keys[i];
    return n;
}

/* A probability the kept ids all reach, when few do: the probabilities (the largest is 1)
 * are counted by powers of two, 2^-b up to 2^-b+1, and the first b whose ids, with those
 * above, number want or hold the mass top_p of sum gives 2^-b; 0 when that takes them all. */
static float threshold(const sampler *s, int V, int want, double sum)
{
    enum { POWERS = 64 };
    int count[POWERS + 1] = {0};
    double mass[POWERS + 1] = {0};
    for (int i = 0; i < V; i++) {
        uint32_t bits;
        memcpy(&bits, &s->probs[i], sizeof bits);
        int b = 127 - (int)(bits >> 23 & 0xff);   /* 1 and above: 0; under 2^-63, 0: POWERS */
        b = b < 0 ? 0 : b > POWERS ? POWERS : b;
        count[b]++;
        mass[b] += s->probs[i];
    }
    long ids = 0;
    double held = 0.0;
    for (int b = 0; b < POWERS; b++) {
        ids += count[b];
        held += mass[b];
        if (ids >= want || (s->top_p < 1.0f && held >= s->top_p * sum))
            return ldexpf(1.0f, -b);
    }
    return 0.0f;
}

int sampler_next(sampler *s, const float *logits, int V)
{
    int top = pesc_argmax(logits, V);   /* -1: no finite largest logit */
    if (s->temperature <= 0.0f || top < 0)
        return top;
    if (V > s->capacity) {
        s->probs = xrealloc(s->probs, (size_t)V * sizeof *s->probs);
        s->order = xrealloc(s->order, (size_t)V * sizeof *s->order);
        s->keys = xrealloc(s->keys, 2 * (size_t)V * sizeof *s->keys);
        s->capacity = V;
    }
    float m = logits[top];
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        s->probs[i] = expf((logits[i] - m) / s->temperature);
        sum += s->probs[i];
        s->order[i] = i;
    }
    int keep = V;
    if ((s->top_k > 0 && s->top_k < V) || s->top_p < 1.0f) {
        /* the kept ids are a prefix of them all in that order (key_of's): sorting those of
         * a threshold and more serves when they reach past the top k, or past the mass
         * top_p, summed as over the whole order; else (rounding) they are all sorted */
        int want = s->top_k > 0 && s->top_k < V ? s->top_k : V;
        for (float t = threshold(s, V, want, sum);; t = 0.0f) {
            int n = sorted_above(s, V, t), cut = 0;
            keep = want < n ? want : n;
            if (s->top_p < 1.0f) {
                double mass = 0.0;
                for (int i = 0; i < keep && !cut; i++) {
                    mass += s->probs[s->order[i]] / sum;
                    if (mass >= s->top_p) {
                        keep = i + 1;
                        cut = 1;
                    }
                }
            }
            if (cut || n >= want || t == 0.0f)
                break;
        }
        if (keep == 0)   /* none is a number: ruled out above (the largest has 1) */
            return top;
        sum = 0.0;
        for (int i = 0; i < keep; i++)
            sum += s->probs[s->order[i]];
    }
    double r = pesc_splitmix_uniform(&s->rng) * sum, acc = 0.0;
    for (int i = 0; i < keep; i++) {
        acc += s->probs[s->order[i]];
        if (r < acc)
            return s->order[i];
    }
    return s->order[keep - 1];
}
