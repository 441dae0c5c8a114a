/* cpu_moe — PESC routing and the expert adapters on the CPU.
 *
 * The shared FFN output h is computed once per token elsewhere; here each expert's adapter
 * runs as two matrix products over just the (token, slot) pairs routed to it:
 * gather -> GEMM -> GELU -> GEMM -> weighted scatter-add. Nothing is computed for experts a
 * token did not pick. */
#include "cpu/cpu_ops.h"
#include "backend.h"
#include "dropout_hash.h"
#include "moe_route.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <string.h>

#define MAX_EXPERTS 256

void cpu_moe_route_forward(void *ctx, int32_t *topk_idx, float *topk_w, float *probs, float *lse,
                           const float *logits, const int32_t *sources, int N, int E, int K)
{
    (void)ctx;
    assert(K >= 1 && K <= E && E <= MAX_EXPERTS);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        int32_t *idx = topk_idx + (size_t)n * K;
        float *w = topk_w + (size_t)n * K, *p = probs + (size_t)n * E;
        if (sources && sources[n] < 0)
            pesc_route_none(idx, w, p, lse + n, E, K);
        else
            pesc_route_token(idx, w, p, lse + n, logits + (size_t)n * E, E, K);
    }
}

void cpu_moe_route_backward(void *ctx, float *dlogits, const float *dtopk_w,
                            const int32_t *topk_idx, const float *topk_w, const float *probs,
                            const float *lse, const float *aux_grad, float z_scale, int N, int E,
                            int K)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        pesc_route_token_backward(dlogits + (size_t)n * E, dtopk_w + (size_t)n * K,
                                  topk_idx + (size_t)n * K, topk_w + (size_t)n * K,
                                  probs + (size_t)n * E, lse[n], aux_grad, z_scale, E, K);
}

/* One pass over the pairs and one over the tokens, in order (each sum adds in token order),
 * then a counting sort. Padding's pairs (expert -1) go nowhere; its probabilities and lse,
 * 0, add nothing. */
void cpu_moe_group(void *ctx, int32_t *perm, double *stats, const int32_t *topk_idx,
                   const float *topk_w, const float *probs, const float *lse,
                   const int32_t *sources, int N, int E, int K, int S)
{
    (void)ctx;
    assert(E >= 1 && E <= MAX_EXPERTS && K >= 1 && N >= 1);
    memset(stats, 0, MOE_STATS(E, K, S) * sizeof *stats);
    double *count = stats, *first = stats + E, *gate = stats + 2 * E, *prob = stats + 3 * E;
    double *by_source = stats + 4 * E + 2 + K;
    size_t NK = (size_t)N * K;
    for (size_t p = 0; p < NK; p++) {
        int e = topk_idx[p], src = sources ? sources[p / K] : -1;
        if (e < 0)
            continue;
        count[e] += 1.0;
        first[e] += p % K == 0;
        gate[e] += topk_w[p];
        if (src >= 0 && src < S)
            by_source[(size_t)src * E + e] += 1.0;
    }
    double entropy = 0.0, z = 0.0;
    for (int n = 0; n < N; n++) {
        for (int e = 0; e < E; e++) {
            double p = probs[(size_t)n * E + e];
            prob[e] += p;
            entropy -= p > 0 ? p * log(p) : 0.0;
        }
        z += (double)lse[n] * lse[n];
    }
    stats[4 * E] = entropy;
    stats[4 * E + 1] = z;
    for (int j = 0; j < K; j++)
        stats[4 * E + 2 + j] = topk_idx[(size_t)(N - 1) * K + j];
    size_t fill[MAX_EXPERTS];
    for (int e = 0, at = 0; e < E; at += (int)count[e], e++)
        fill[e] = (size_t)at;
    for (size_t p = 0; p < NK; p++)
        if (topk_idx[p] >= 0)
            perm[fill[topk_idx[p]]++] = (int32_t)p;
}

static double gelu(double x) { return 0.5 * x * (1.0 + erf(x * M_SQRT1_2)); }

static double gelu_grad(double x)
{
    return 0.5 * (1.0 + erf(x * M_SQRT1_2)) + x * exp(-0.5 * x * x) * 0.3989422804014327;
}

void cpu_moe_adapter_forward(void *ctx, float *y, const float *x, float *gathered, float *pre,
                             float *act, float *scratch, const float *h, float dropout,
                             uint64_t seed, const float *down, const float *up,
                             const int32_t *perm, const int *offsets, const float *topk_w, int N,
                             int K, int E, int C, int R, float scale)
{
    (void)ctx;
    float keep = 1.0f / (1.0f - dropout);
    /* the residual first, then each expert's outputs added to their tokens' rows */
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < (size_t)N * C; i++)
        y[i] = x[i] + h[i];
    for (int e = 0; e < E; e++) {
        int first = offsets[e], n = offsets[e + 1] - offsets[e];
        if (n == 0)
            continue;
        float *g = gathered + (size_t)first * C, *a = pre + (size_t)first * R;
        float *s = act + (size_t)first * R, *o = scratch + (size_t)first * C;
#pragma omp parallel for schedule(static)
        for (int j = 0; j < n; j++) {
            const float *src = h + (size_t)(perm[first + j] / K) * C;
            float *dst = g + (size_t)j * C;
            uint64_t at = (uint64_t)(first + j) * C;   /* the mask's row j */
            for (int c = 0; c < C; c++)
                dst[c] = dropout > 0 ? src[c] * pesc_dropout_value(seed, at + c, dropout, keep)
                                     : src[c];
        }
        /* pre (n, R) = gathered (n, C) @ D_e^T;  out (n, C) = GELU(pre) @ U_e^T */
        cpu_gemm(0, 1, n, R, C, 1.0f, g, C,
                    down + (size_t)e * R * C, C, 0.0f, a, R);
        /* erf is the costly part of an adapter this small: every thread takes a share */
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < (size_t)n * R; i++)
            s[i] = (float)gelu(a[i]);
        cpu_gemm(0, 1, n, C, R, 1.0f, s, R,
                    up + (size_t)e * C * R, R, 0.0f, o, C);
        /* an expert appears once per token, so the rows of one group never collide */
#pragma omp parallel for schedule(static)
        for (int j = 0; j < n; j++) {
            int pair = perm[first + j];
            float weight = scale * topk_w[pair];
            float *dst = y + (size_t)(pair / K) * C;
            const float *src = o + (size_t)j * C;
            for (int c = 0; c < C; c++)
                dst[c] += weight * src[c];
        }
    }
}

void cpu_moe_adapter_backward(void *ctx, float *dh, float *ddown, float *dup, float *dtopk_w,
                              float *scratch, float *scratch_r, const float *dy,
                              const float *gathered, const float *pre, const float *act,
                              float dropout, uint64_t seed, const float *down, const float *up,
                              const int32_t *perm, const int *offsets, const float *topk_w, int N,
                              int K, int E, int C, int R, float scale)
{
    (void)ctx;
    float keep = 1.0f / (1.0f - dropout);
    if (dh != dy)   /* the residual's part; the adapters' is added below */
        memcpy(dh, dy, (size_t)N * C * sizeof *dh);
    if (offsets[E] < N * K)   /* padding's slots, in no group */
        memset(dtopk_w, 0, (size_t)N * K * sizeof *dtopk_w);
    for (int e = 0; e < E; e++) {
        int first = offsets[e], n = offsets[e + 1] - offsets[e];
        if (n == 0)
            continue;
        const float *g = gathered + (size_t)first * C, *a = pre + (size_t)first * R;
        const float *s = act + (size_t)first * R;
        const float *D = down + (size_t)e * R * C, *U = up + (size_t)e * C * R;
        float *dyg = scratch + (size_t)first * C, *p = scratch_r + (size_t)first * R;
#pragma omp parallel for schedule(static)
        for (int j = 0; j < n; j++)
            memcpy(dyg + (size_t)j * C, dy + (size_t)(perm[first + j] / K) * C,
                   (size_t)C * sizeof *dyg);
        /* p (n, R) = dy_g @ U_e: the gate weight's gradient is scale * p . act, and the
         * adapter's hidden gradient is scale * w * p */
        cpu_gemm(0, 0, n, R, C, 1.0f, dyg, C, U, R, 0.0f,
                    p, R);
#pragma omp parallel for schedule(static)
        for (int j = 0; j < n; j++) {
            int pair = perm[first + j];
            float w = scale * topk_w[pair];
            float *pj = p + (size_t)j * R, *dyj = dyg + (size_t)j * C;
            const float *sj = s + (size_t)j * R, *aj = a + (size_t)j * R;
            double dw = 0.0;
            for (int r = 0; r < R; r++) {
                dw += (double)pj[r] * sj[r];
                pj[r] = (float)(w * pj[r] * gelu_grad(aj[r]));   /* now d pre */
            }
            dtopk_w[pair] = (float)(scale * dw);
            for (int c = 0; c < C; c++)
                dyj[c] *= w;                                    /* now d out */
        }
        if (dup)   /* dU_e (C, R) += dout^T @ act */
            cpu_gemm(1, 0, C, R, n, 1.0f, dyg, C, s, R,
                        1.0f, dup + (size_t)e * C * R, R);
        if (ddown) /* dD_e (R, C) += dpre^T @ gathered */
            cpu_gemm(1, 0, R, C, n, 1.0f, p, R, g, C, 1.0f,
                        ddown + (size_t)e * R * C, C);
        /* d gathered (n, C) = dpre @ D_e, scattered back through the dropout mask */
        cpu_gemm(0, 0, n, C, R, 1.0f, p, R, D, C, 0.0f,
                    dyg, C);
#pragma omp parallel for schedule(static)
        for (int j = 0; j < n; j++) {
            float *dst = dh + (size_t)(perm[first + j] / K) * C;
            const float *src = dyg + (size_t)j * C;
            uint64_t at = (uint64_t)(first + j) * C;
            for (int c = 0; c < C; c++)
                dst[c] += dropout > 0
                              ? src[c] * pesc_dropout_value(seed, at + c, dropout, keep)
                              : src[c];
        }
    }
}
