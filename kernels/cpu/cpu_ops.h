/* cpu_ops — the float32 CPU ops: the specification every other backend is compared with.
 * Same names and argument order as backend.h with the `cpu_` prefix of their backend; ctx is
 * the backend context (unused by most ops). Products go through CBLAS (OpenBLAS); the rest is
 * split across cores with OpenMP. */
#ifndef PESC_CPU_OPS_H
#define PESC_CPU_OPS_H

#include <stddef.h>
#include <math.h>
#include <stdint.h>

/* Attention's backward keeps one query row's accumulator on the stack. */
#define CPU_MAX_HEAD_DIM 512
/* Query rows per attention block (forward and backward). */
#define CPU_ATTENTION_BLOCK 64

/* The first key a query at row position t may see: its own document's start (seg, row-local,
 * may be NULL) and the sliding window's. Non-decreasing in t, so a block of queries sees one
 * contiguous run of keys. */
static inline int cpu_first_key(int t, int window, const int32_t *seg)
{
    int lo = window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
    return seg && seg[t] > lo ? seg[t] : lo;
}

/* 2 sqrt(2/pi): GELU's tanh approximation is g sigmoid(CPU_GELU_TANH_2C (g + 0.044715 g^3)) */
#define CPU_GELU_TANH_2C 1.5957691216057308f

/* e^x within 1.5 ulp (test_ops checks every 97th float; expf is within 0.5), in straight-line
 * code: a `#pragma omp simd` loop over it runs 4, 8 or 16 at a time where expf is a call an
 * element (the softmaxes, SiLU). Cephes' reduction and polynomial: x = n ln 2 + r, |r| <= ln 2
 * / 2, e^r by a degree-7 polynomial, 2^n made in the exponent bits in two halves so that n from
 * -150 to 128 needs no special case; NaN stays NaN, past ln(FLT_MAX) is infinity. Its
 * comparisons if-convert only without -ftrapping-math (configure.ac). */
static inline float cpu_expf(float x)
{
    float c = x > 88.7228394f ? 88.7228394f : x;
    c = c < -104.0f ? -104.0f : c;
    union { float f; uint32_t u; } t = {c * 1.44269504088896341f + 12582912.0f}, s1, s2;
    float n = t.f - 12582912.0f;   /* 1.5 * 2^23 added and taken away: n rounded */
    float r = c - n * 0.693359375f - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = 1.0f + r + r * r * p;
    uint32_t k = t.u - 0x4B400000u, k1 = (uint32_t)((int32_t)k >> 1);   /* n, n / 2 */
    s1.u = (k1 + 127u) << 23;
    s2.u = (k - k1 + 127u) << 23;
    float y = p * s1.f * s2.f;
    return x > 88.7228394f ? INFINITY : y;
}

/* e^(-x^2 / 2) within about 3 ulp for |x| <= 20: x^2 / 2 = h^2 / 2 + (x - h)(x + h) / 2 with
 * h = x to 12 bits, so h^2 is exact and the rounding left is in the small part. */
static inline __attribute__((always_inline)) float cpu_gauss(float x, float extra)
{
    union { float f; uint32_t u; } h = {x};
    h.u &= 0xFFFFF000u;
    return cpu_expf(-0.5f * h.f * h.f) * cpu_expf(extra - 0.5f * (x - h.f) * (x + h.f));
}

/* The normal distribution's CDF, Phi(x) = (1 + erf(x / sqrt 2)) / 2, within 2e-7 relative
 * above 1e-30 (test_ops), in straight-line code as cpu_expf: from erfc(z), z = |x| / sqrt 2,
 * by Numerical Recipes' Chebyshev fit t e^(-z^2 + P(t)), t = 1 / (1 + z / 2) (within 1.2e-7 of
 * erfc for every z >= 0), as 1 - erfc / 2 or erfc / 2, so the left tail keeps its relative
 * accuracy. GELU(x) = x Phi(x). Inlined always (the loops over these vectorise only so). */
static inline __attribute__((always_inline)) float cpu_normal_cdf(float x)
{
    float a = fabsf(x);
    a = a > 20.0f ? 20.0f : a;   /* Phi is 1 or 0 in float long before; NaN stays NaN */
    float t = 1.0f / (1.0f + 0.353553391f * a);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float half_erfc = 0.5f * t * cpu_gauss(a, p);
    return x >= 0.0f ? 1.0f - half_erfc : half_erfc;
}

/* GELU'(x) = Phi(x) + x phi(x), phi the normal density. */
static inline __attribute__((always_inline)) float cpu_gelu_grad(float x)
{
    float a = fabsf(x);
    return cpu_normal_cdf(x) + x * 0.398942280f * cpu_gauss(a > 20.0f ? 20.0f : a, 0.0f);
}

/* tanh(x) within 2 ulp (1.5 seen: test_ops), in straight-line code as cpu_expf: Cephes' odd
 * polynomial for |x| < 0.625, past it (1 - t) / (1 + t) with t = e^(-2|x|) <= 0.29, which
 * has no cancellation to lose to, and x's sign. */
static inline __attribute__((always_inline)) float cpu_tanhf(float x)
{
    float z = x * x, a = fabsf(x);
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    float t = cpu_expf(-2.0f * a), e = copysignf((1.0f - t) / (1.0f + t), x);
    return a < 0.625f ? x + x * z * p : e;
}

/* Gemma 2's softcapping: cap tanh(x / cap) (cap > 0). */
static inline __attribute__((always_inline)) float cpu_softcap(float x, float cap)
{
    return cap * cpu_tanhf(x / cap);
}

/* A function whose loops gain from wider vectors (cpu_expf's) is built three times, for
 * x86-64-v4 (AVX-512), v3 (AVX2 and FMA) and the baseline, and the loader picks the one the
 * CPU runs (configure's HAVE_TARGET_CLONES; elsewhere one build). Give each a name no other
 * file uses, static or not: clang makes the loader's resolver of a static one global. */
#ifdef HAVE_TARGET_CLONES
#define CPU_WIDE __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CPU_WIDE
#endif
/* Elements an elementwise op hands a wide function at a time. */
#define CPU_SPAN 4096

/* RoPE (rotate-half) of the first R of N tokens' H heads of D (the rest passes through),
 * cos and sin times scale: by each position's angles (direction 1), or back (-1, the
 * backward). */
void cpu_rope_rotate(float *out, const float *inp, const int32_t *pos, const float *inv_freq,
                     int N, int H, int D, int R, float scale, float direction);

/* C (M, N) = alpha op(A) op(B) + beta C, row-major as CBLAS, split across the OpenMP threads
 * (single-threaded inside a parallel region). trans_a / trans_b: 0 or 1. */
void cpu_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

void cpu_embedding_forward(void *ctx, float *out, const int32_t *tokens, const float *table, int N, int C);
void cpu_matmul_forward(void *ctx, float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC);
void cpu_rmsnorm_forward(void *ctx, float *out, float *rstd, const float *inp, const float *weight, float offset, int N, int C, float eps);
void cpu_rope_forward(void *ctx, float *out, const float *inp, const int32_t *pos, const float *inv_freq, int N, int H, int D, int R, float scale);
void cpu_attention_forward(void *ctx, float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int Hq, int Hkv, int D, int window, float softcap, const int32_t *seg_start);
void cpu_attention_step_forward(void *ctx, float *out, const float *q, const float *k,
                                const float *v, float *k_cache, float *v_cache,
                                const int32_t *slots, const int32_t *past, int n, int slot_rows,
                                int Hq, int Hkv, int D, int window, float softcap);
void cpu_attention_cached_forward(void *ctx, float *out, const float *q, const float *k_cache,
                                  const float *v_cache, int n, int past, int Hq, int Hkv, int D,
                                  int window, float softcap);
void cpu_swiglu_forward(void *ctx, float *out, const float *gate, const float *up, size_t n);
void cpu_geglu_forward(void *ctx, float *out, const float *gate, const float *up, size_t n);
void cpu_residual_forward(void *ctx, float *out, const float *x, const float *y, size_t n);
void cpu_crossentropy_forward(void *ctx, float *losses, const float *logits, const int32_t *targets, int N, int V, float softcap);
void cpu_argmax_rows(void *ctx, int32_t *out, const float *x, int rows, int cols);
void cpu_moe_route_forward(void *ctx, int32_t *topk_idx, float *topk_w, float *probs, float *lse, const float *logits, const int32_t *sources, int N, int E, int K);
void cpu_moe_route_backward(void *ctx, float *dlogits, const float *dtopk_w, const int32_t *topk_idx, const float *topk_w, const float *probs, const float *lse, const float *aux_grad, float z_scale, int N, int E, int K);
void cpu_moe_group(void *ctx, int32_t *perm, double *stats, const int32_t *topk_idx, const float *topk_w, const float *probs, const float *lse, const int32_t *sources, int N, int E, int K, int S);
void cpu_moe_adapter_forward(void *ctx, float *y, const float *x, float *gathered, float *pre, float *act, float *scratch, const float *h, float dropout, uint64_t seed, const float *down, const float *up, const int32_t *perm, const int *offsets, const float *topk_w, int N, int K, int E, int C, int R, float scale);
void cpu_moe_adapter_backward(void *ctx, float *dh, float *ddown, float *dup, float *dtopk_w, float *scratch, float *scratch_r, const float *dy, const float *gathered, const float *pre, const float *act, float dropout, uint64_t seed, const float *down, const float *up, const int32_t *perm, const int *offsets, const float *topk_w, int N, int K, int E, int C, int R, float scale);
void cpu_embedding_backward(void *ctx, float *dtable, const float *dout, const int32_t *tokens, int N, int C);
void cpu_matmul_backward(void *ctx, float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight, int N, int C, int OC);
void cpu_rmsnorm_backward(void *ctx, float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, float offset, const float *rstd, int N, int C);
void cpu_rope_backward(void *ctx, float *dinp, const float *dout, const int32_t *pos, const float *inv_freq, int N, int H, int D, int R, float scale);
void cpu_attention_backward(void *ctx, float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v, const float *out, const float *lse, int B, int T, int Hq, int Hkv, int D, int window, float softcap, const int32_t *seg_start);
void cpu_swiglu_backward(void *ctx, float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
void cpu_geglu_backward(void *ctx, float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
void cpu_crossentropy_backward(void *ctx, float *dlogits, float *losses, const float *logits, const int32_t *targets, float scale, int N, int V, float softcap);
void cpu_vector_zero(void *ctx, float *x, size_t n);
void cpu_vector_axpy(void *ctx, float *y, const float *x, float alpha, size_t n);
void cpu_vector_scale(void *ctx, float *x, float alpha, size_t n);
void cpu_dropout_mask(void *ctx, float *mask, size_t n, float p, uint64_t seed);
void cpu_vector_add_uniform(void *ctx, float *x, size_t n, float magnitude, uint64_t seed);
double cpu_vector_sumsq(void *ctx, const float *x, size_t n);
void cpu_vector_sumsq_chunks(void *ctx, double *out, const float *x, size_t chunk, int n);
void cpu_adamw_update(void *ctx, float *params, const float *grads, float grad_scale, float *m, float *v, float *delta, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int step);

#endif
