/* sample — see sample.h. */
#define _GNU_SOURCE   /* qsort_r */
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
    memset(s, 0, sizeof *s);
}

static int by_probability(const void *a, const void *b, void *probs)
{
    const float *p = probs;
    float x = p[*(const int *)a], y = p[*(const int *)b];
    if (x != y)
        return x < y ? 1 : -1;
    return *(const int *)a - *(const int *)b;
}

int sampler_next(sampler *s, const float *logits, int V)
{
    if (s->temperature <= 0.0f)
        return pesc_argmax(logits, V);
    if (V > s->capacity) {
        s->probs = xrealloc(s->probs, (size_t)V * sizeof *s->probs);
        s->order = xrealloc(s->order, (size_t)V * sizeof *s->order);
        s->capacity = V;
    }
    float m = logits[pesc_argmax(logits, V)];
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        s->probs[i] = expf((logits[i] - m) / s->temperature);
        sum += s->probs[i];
        s->order[i] = i;
    }
    int keep = V;
    if ((s->top_k > 0 && s->top_k < V) || s->top_p < 1.0f) {
        qsort_r(s->order, (size_t)V, sizeof *s->order, by_probability, s->probs);
        if (s->top_k > 0 && s->top_k < keep)
            keep = s->top_k;
        if (s->top_p < 1.0f) {
            double mass = 0.0;
            for (int i = 0; i < keep; i++) {
                mass += s->probs[s->order[i]] / sum;
                if (mass >= s->top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
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
