/* backend_impl — what a backend fills in: a table of functions over a private context
 * (STYLE: ggml). Only backend.c and the backends themselves include this. */
#ifndef PESC_BACKEND_IMPL_H
#define PESC_BACKEND_IMPL_H

#include "backend.h"

/* A part of an op's time, for the profile (backend_profile_start): its label (static storage),
 * the device's time from the mark before it to its own (the op's start for the first), and the
 * host's over the same stretch. */
typedef struct backend_part {
    const char *label;
    double device_seconds, host_seconds;
} backend_part;

typedef struct backend_ops {
    const char *name;
    void (*free_context)(void *ctx);
    const char *(*device)(void *ctx);

    void *(*alloc)(void *ctx, size_t bytes);                 /* NULL when out of memory */
    void (*free)(void *ctx, void *p);
    void (*upload)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*download)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*synchronize)(void *ctx);                          /* optional */
    void (*copy)(void *ctx, void *dst, const void *src, size_t bytes);

    void (*embedding_forward)(void *ctx, float *out, const int32_t *tokens, const float *table, int N, int C);
    void (*matmul_forward)(void *ctx, float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC);
    void (*rmsnorm_forward)(void *ctx, float *out, float *rstd, const float *inp, const float *weight, float offset, int N, int C, float eps);
    void (*rope_forward)(void *ctx, float *out, const float *inp, const int32_t *pos, const float *inv_freq, int N, int H, int D, int R, float scale);
    void (*attention_forward)(void *ctx, float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int Hq, int Hkv, int D, int window, float softcap, const int32_t *seg_start);
    void (*attention_cached_forward)(void *ctx, float *out, const float *q, const float *k_cache, const float *v_cache, int n, int past, int Hq, int Hkv, int D, int window, float softcap);
    void (*attention_step_forward)(void *ctx, float *out, const float *q, const float *k, const float *v, float *k_cache, float *v_cache, const int32_t *slots, const int32_t *past, int n, int slot_rows, int Hq, int Hkv, int D, int window, float softcap);
    void (*swiglu_forward)(void *ctx, float *out, const float *gate, const float *up, size_t n);
    void (*geglu_forward)(void *ctx, float *out, const float *gate, const float *up, size_t n);
    void (*residual_forward)(void *ctx, float *out, const float *x, const float *y, size_t n);
    void (*crossentropy_forward)(void *ctx, float *losses, const float *logits, const int32_t *targets, int N, int V, float softcap);
    void (*argmax_rows)(void *ctx, int32_t *out, const float *x, int rows, int cols);
    void (*moe_route_forward)(void *ctx, int32_t *topk_idx, float *topk_w, float *probs, float *lse, const float *logits, const int32_t *sources, int N, int E, int K);
    void (*moe_group)(void *ctx, int32_t *perm, double *stats, const int32_t *topk_idx, const float *topk_w, const float *probs, const float *lse, const int32_t *sources, int N, int E, int K, int S);
    void (*moe_route_backward)(void *ctx, float *dlogits, const float *dtopk_w, const int32_t *topk_idx, const float *topk_w, const float *probs, const float *lse, const float *aux_grad, float z_scale, int N, int E, int K);
    void (*moe_adapter_forward)(void *ctx, float *y, const float *x, float *gathered, float *pre, float *act, float *scratch, const float *h, float dropout, uint64_t seed, const float *down, const float *up, const int32_t *perm, const int *offsets, const float *topk_w, int N, int K, int E, int C, int R, float scale);
    void (*moe_adapter_backward)(void *ctx, float *dh, float *ddown, float *dup, float *dtopk_w, float *scratch, float *scratch_r, const float *dy, const float *gathered, const float *pre, const float *act, float dropout, uint64_t seed, const float *down, const float *up, const int32_t *perm, const int *offsets, const float *topk_w, int N, int K, int E, int C, int R, float scale);
    void (*embedding_backward)(void *ctx, float *dtable, const float *dout, const int32_t *tokens, int N, int C);
    void (*matmul_backward)(void *ctx, float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight, int N, int C, int OC);
    void (*rmsnorm_backward)(void *ctx, float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, float offset, const float *rstd, int N, int C);
    void (*rope_backward)(void *ctx, float *dinp, const float *dout, const int32_t *pos, const float *inv_freq, int N, int H, int D, int R, float scale);
    void (*attention_backward)(void *ctx, float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v, const float *out, const float *lse, int B, int T, int Hq, int Hkv, int D, int window, float softcap, const int32_t *seg_start);
    void (*swiglu_backward)(void *ctx, float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
    void (*geglu_backward)(void *ctx, float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
    void (*crossentropy_backward)(void *ctx, float *dlogits, float *losses, const float *logits, const int32_t *targets, float scale, int N, int V, float softcap);
    void (*vector_zero)(void *ctx, float *x, size_t n);
    void (*vector_axpy)(void *ctx, float *y, const float *x, float alpha, size_t n);
    void (*vector_scale)(void *ctx, float *x, float alpha, size_t n);
    double (*vector_sumsq)(void *ctx, const float *x, size_t n);
    void (*vector_sumsq_chunks)(void *ctx, double *out, const float *x, size_t chunk, int n);
    void (*dropout_mask)(void *ctx, float *mask, size_t n, float p, uint64_t seed);
    void (*vector_add_uniform)(void *ctx, float *x, size_t n, float magnitude, uint64_t seed);
    void (*adamw_update)(void *ctx, float *params, const float *grads, float grad_scale, float *m, float *v, float *delta, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int step);
    void (*freeze)(void *ctx, const float *p, size_t n);       /* optional: backend_freeze */
    void (*trainables)(void *ctx, const float *p, size_t n);   /* optional: backend_trainables */
    void (*gradients)(void *ctx, const float *p, size_t n);    /* optional: backend_gradients */
    /* optional (backend.c answers for the host memory without it): see backend_memory_info */
    int (*memory)(void *ctx, backend_memory *out);
    /* optional: see backend_work_bytes */
    size_t (*work_bytes)(void *ctx, const backend_step_shape *s);
    /* optional (align 1, room 1 without it): the adapters' row layout, moe_rows.h's
     * settings (see backend_adapter_rows) */
    void (*adapter_layout)(void *ctx, int *align, double *room);
    /* optional (64 MiB without it): see backend_logit_bytes */
    size_t (*logit_bytes)(void *ctx);
    /* optional (4 without it): see backend_activation_bytes */
    size_t (*activation_bytes)(void *ctx);
    /* optional: 0, or -1 with the first failure since the backend started (see backend_check) */
    int (*check)(void *ctx, pesc_error *err);
    /* optional, together (download at the start without them): see backend_download_start */
    void (*download_start)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*download_wait)(void *ctx);
    /* optional: see backend_alloc_frozen */
    float *(*alloc_frozen)(void *ctx, size_t n);
    /* optional (alloc without it): see backend_alloc_compact; NULL when out of memory */
    float *(*alloc_compact)(void *ctx, size_t n);
    /* optional, together: while on, the ops that mark parts of their time keep them;
     * parts_take returns those of the last op (at most max; the device has finished it) and
     * forgets them */
    void (*parts_on)(void *ctx, int on);
    int (*parts_take)(void *ctx, backend_part *parts, int max);
} backend_ops;

struct backend_profile;   /* backend.c: the entries of a profile run (backend_profile_start) */

struct pesc_backend {
    const backend_ops *ops;
    void *context;
    struct backend_profile *profile;   /* NULL: not profiling */
    char gpu_passed_over[PESC_ERROR_MAX];   /* backend_gpu_passed_over */
};

/* Each backend's constructor: fills *ctx, or returns -1 with a message. */
int cpu_backend_init(const backend_ops **ops, void **ctx, pesc_error *err);

#endif
