/* backend_impl — what a backend fills in: a table of functions over a private context
 * (STYLE: ggml). Only backend.c and the backends themselves include this. */
#ifndef PESC_BACKEND_IMPL_H
#define PESC_BACKEND_IMPL_H

#include "backend.h"

typedef struct backend_ops {
    const char *name;
    void (*free_context)(void *ctx);
    const char *(*device)(void *ctx);

    void *(*alloc)(void *ctx, size_t bytes);                 /* NULL when out of memory */
    void (*free)(void *ctx, void *p);
    void (*upload)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*download)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*synchronize)(void *ctx);                          /* optional */

    void (*embedding_forward)(void *ctx, float *out, const int32_t *tokens, const float *table,
                              int N, int C);
    void (*matmul_forward)(void *ctx, float *out, const float *inp, const float *weight,
                           const float *bias, int N, int C, int OC);
    void (*rmsnorm_forward)(void *ctx, float *out, float *rstd, const float *inp,
                            const float *weight, int N, int C, float eps);
    void (*rope_forward)(void *ctx, float *out, const float *inp, const int32_t *pos,
                         const float *inv_freq, int N, int H, int D);
    void (*attention_forward)(void *ctx, float *out, float *lse, const float *q, const float *k,
                              const float *v, int B, int T, int Hq, int Hkv, int D, int window);
    void (*swiglu_forward)(void *ctx, float *out, const float *gate, const float *up, size_t n);
    void (*residual_forward)(void *ctx, float *out, const float *x, const float *y, size_t n);
    void (*crossentropy_forward)(void *ctx, float *losses, const float *logits,
                                 const int32_t *targets, int N, int V);
} backend_ops;

struct pesc_backend {
    const backend_ops *ops;
    void *context;
};

/* Each backend's constructor: fills *ctx, or returns -1 with a message. */
int cpu_backend_init(const backend_ops **ops, void **ctx, pesc_error *err);

#endif
