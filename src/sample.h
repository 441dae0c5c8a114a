/* sample — picking the next token from logits: greedy, temperature, top-k, top-p, with an RNG
 * of its own (so sampling mid-training never disturbs the training RNG).
 * Must not: know about models or tokenizers. */
#ifndef PESC_SAMPLE_H
#define PESC_SAMPLE_H

#include <stdint.h>

typedef struct sampler {
    float temperature;           /* 0 = greedy */
    int top_k;                   /* 0 = off */
    float top_p;                 /* 1 = off */
    uint64_t rng;
    /* scratch, grown on demand */
    float *probs;
    int *order;
    uint64_t *keys;              /* (2 capacity): top-k and top-p's sort */
    int capacity;
} sampler;

void sampler_init(sampler *s, float temperature, int top_k, float top_p, uint64_t seed);
void sampler_free(sampler *s);
/* Next token from logits (V). Ties in greedy mode go to the lower id. -1 when the largest
 * logit is not finite (all NaN, or an infinity): a model that overflows, found at no cost by
 * the max every mode takes; the caller fails (model_fail_logits) rather than pick at random. */
int sampler_next(sampler *s, const float *logits, int V);

#endif
