/* cpu_moe — PESC routing and the expert adapters on the CPU.
 *
 * The shared FFN output h is computed once per token elsewhere; here each expert's adapter
 * runs as two matrix products over just the (token, slot) pairs routed to it:
 * gather -> GEMM -> GELU -> GEMM, then each token adds its experts' weighted outputs (in the
 * grouped order, so by expert). Nothing is computed for experts a token did not pick. */
#include "config.h"

#include "cpu/cpu_ops.h"
#include "backend.h"
#include "dropout_hash.h"
#include "moe_route.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

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

/* act = GELU(pre) over n values (the exact GELU, x Phi(x), vectorised: cpu_normal_cdf) */
static CPU_WIDE void adapter_gelu_span(float *act, const float *pre, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        act[i] = pre[i] * cpu_normal_cdf(pre[i]);
}

/* One routed row of the backward: returns p . act (the gate weight's gradient over scale)
 * and makes p d pre = w p GELU'(pre). */
static CPU_WIDE double adapter_gate_row(float *p, const float *act, const float *pre, int R,
                                        float w)
{
    double dw = 0.0;
#pragma omp simd reduction(+ : dw)
    for (int r = 0; r < R; r++) {
        dw += (double)p[r] * act[r];
        p[r] = w * p[r] * cpu_gelu_grad(pre[r]);
    }
    return dw;
}

/* The adapters' work, in pieces the OpenMP threads take one at a time: an expert's products
 * are too small (a few hundred rows by the adapter's width) for two threads to share well, so
 * each piece is one thread's whole, and the pieces of every expert run side by side. */
typedef struct adapter_piece {
    int e, lo, hi;   /* expert e's rows lo..hi of the grouped order, or its columns lo..hi */
} adapter_piece;

static int piece_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Pieces of rows adapter_row_pieces may make for routed rows in E groups. */
static size_t adapter_row_room(int E, int routed) { return (size_t)E + routed / 32 + 1; }

/* Every expert's group in blocks of rows: about four blocks a thread, 32 to 256 rows each
 * (adapter_row_room of them at most). */
static int adapter_row_pieces(adapter_piece *pieces, const int *offsets, int E)
{
    int rows = offsets[E] / (4 * piece_threads());
    rows = rows < 32 ? 32 : rows > 256 ? 256 : rows;
    int count = 0;
    for (int e = 0; e < E; e++)
        for (int lo = offsets[e]; lo < offsets[e + 1]; lo += rows)
            pieces[count++] = (adapter_piece){e, lo, lo + rows < offsets[e + 1] ? lo + rows
                                                                                : offsets[e + 1]};
    return count;
}

/* Each expert with rows, its C columns in blocks of 16 or more: about four blocks a thread in
 * all. pieces has room for E * C / 16 + E. */
static int adapter_column_pieces(adapter_piece *pieces, const int *offsets, int E, int C)
{
    int per_expert = (4 * piece_threads() + E - 1) / E;
    int width = (C + per_expert - 1) / per_expert;
    width = width < 16 ? 16 : (width + 15) / 16 * 16;
    int count = 0;
    for (int e = 0; e < E; e++)
        if (offsets[e + 1] > offsets[e])
            for (int lo = 0; lo < C; lo += width)
                pieces[count++] = (adapter_piece){e, lo, lo + width < C ? lo + width : C};
    return count;
}

/* at[pair] = the pair's row in the grouped order, or -1 (padding: in no group). */
static void adapter_rows_of_pairs(int *at, const int32_t *perm, int pairs, int routed)
{
#pragma omp for schedule(static)
    for (int p = 0; p < pairs; p++)
        at[p] = -1;
#pragma omp for schedule(static)
    for (int i = 0; i < routed; i++)
        at[perm[i]] = i;
}

/* A token's routed rows in the grouped order, ascending (so by expert, as the groups are):
 * the order their contributions are added in. Returns how many (at most K). */
static int token_rows(int *rows, const int *at, int token, int K)
{
    int count = 0;
    for (int k = 0; k < K; k++) {
        int row = at[(size_t)token * K + k];
        if (row < 0)
            continue;
        int i = count++;
        for (; i > 0 && rows[i - 1] > row; i--)
            rows[i] = rows[i - 1];
        rows[i] = row;
    }
    return count;
}

void cpu_moe_adapter_forward(void *ctx, float *y, const float *x, float *gathered, float *pre,
                             float *act, float *scratch, const float *h, float dropout,
                             uint64_t seed, const float *down, const float *up,
                             const int32_t *perm, const int *offsets, const float *topk_w, int N,
                             int K, int E, int C, int R, float scale)
{
    (void)ctx;
    assert(K <= MAX_EXPERTS);
    float keep = 1.0f / (1.0f - dropout);
    int routed = offsets[E];
    int *at = xmalloc((size_t)N * K * sizeof *at);
    adapter_piece *pieces = xmalloc(adapter_row_room(E, routed) * sizeof *pieces);
    int count = adapter_row_pieces(pieces, offsets, E);
#pragma omp parallel
    {
        adapter_rows_of_pairs(at, perm, N * K, routed);
        /* each block of rows: gather (through the dropout mask), pre = gathered @ D_e^T,
         * act = GELU(pre), out = act @ U_e^T */
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < count; i++) {
            int e = pieces[i].e, lo = pieces[i].lo, n = pieces[i].hi - lo;
            float *g = gathered + (size_t)lo * C, *a = pre + (size_t)lo * R;
            float *s = act + (size_t)lo * R, *o = scratch + (size_t)lo * C;
            for (int j = 0; j < n; j++) {
                const float *src = h + (size_t)(perm[lo + j] / K) * C;
                float *dst = g + (size_t)j * C;
                uint64_t mask_row = (uint64_t)(lo + j) * C;   /* the mask's row lo + j */
                for (int c = 0; c < C; c++)
                    dst[c] = dropout > 0
                                 ? src[c] * pesc_dropout_value(seed, mask_row + c, dropout, keep)
                                 : src[c];
            }
            cpu_gemm(0, 1, n, R, C, 1.0f, g, C, down + (size_t)e * R * C, C, 0.0f, a, R);
            adapter_gelu_span(s, a, (size_t)n * R);
            cpu_gemm(0, 1, n, C, R, 1.0f, s, R, up + (size_t)e * C * R, R, 0.0f, o, C);
        }
        /* y = x + h (h alone without x), then each routed row's weighted output, in grouped
         * order */
#pragma omp for schedule(static)
        for (int t = 0; t < N; t++) {
            int rows[MAX_EXPERTS];
            float *dst = y + (size_t)t * C;
            for (int c = 0; c < C; c++)
                dst[c] = (x ? x[(size_t)t * C + c] : 0.0f) + h[(size_t)t * C + c];
            for (int r = 0, n = token_rows(rows, at, t, K); r < n; r++) {
                float weight = scale * topk_w[perm[rows[r]]];
                const float *src = scratch + (size_t)rows[r] * C;
                for (int c = 0; c < C; c++)
                    dst[c] += weight * src[c];
            }
        }
    }
    free(pieces);
    free(at);
}

void cpu_moe_adapter_backward(void *ctx, float *dh, float *ddown, float *dup, float *dtopk_w,
                              float *scratch, float *scratch_r, const float *dy,
                              const float *gathered, const float *pre, const float *act,
                              float dropout, uint64_t seed, const float *down, const float *up,
                              const int32_t *perm, const int *offsets, const float *topk_w, int N,
                              int K, int E, int C, int R, float scale)
{
    (void)ctx;
    assert(K <= MAX_EXPERTS);
    float keep = 1.0f / (1.0f - dropout);
    int routed = offsets[E];
    int *at = xmalloc((size_t)N * K * sizeof *at);
    size_t room = adapter_row_room(E, routed), column_room = (size_t)E * C / 16 + E;
    adapter_piece *pieces = xmalloc((room + column_room) * sizeof *pieces);
    adapter_piece *columns = pieces + room;
    int count = adapter_row_pieces(pieces, offsets, E);
    int column_count = (dup || ddown) ? adapter_column_pieces(columns, offsets, E, C) : 0;
#pragma omp parallel
    {
        adapter_rows_of_pairs(at, perm, N * K, routed);
        /* each block of rows: dy_g = dy's rows, p = dy_g @ U_e; the gate weight's gradient is
         * scale * p . act, p becomes d pre = w p GELU'(pre) and dy_g d out = w dy_g, where
         * w = scale * gate */
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < count; i++) {
            int e = pieces[i].e, lo = pieces[i].lo, n = pieces[i].hi - lo;
            float *dyg = scratch + (size_t)lo * C, *p = scratch_r + (size_t)lo * R;
            for (int j = 0; j < n; j++)
                memcpy(dyg + (size_t)j * C, dy + (size_t)(perm[lo + j] / K) * C,
                       (size_t)C * sizeof *dyg);
            cpu_gemm(0, 0, n, R, C, 1.0f, dyg, C, up + (size_t)e * C * R, R, 0.0f, p, R);
            for (int j = 0; j < n; j++) {
                int pair = perm[lo + j];
                float w = scale * topk_w[pair];
                float *pj = p + (size_t)j * R, *dyj = dyg + (size_t)j * C;
                double dw = adapter_gate_row(pj, act + (size_t)(lo + j) * R,
                                             pre + (size_t)(lo + j) * R, R, w);
                dtopk_w[pair] = (float)(scale * dw);
                for (int c = 0; c < C; c++)
                    dyj[c] *= w;
            }
        }
        /* the weights' gradients, a block of C a piece: dU_e (C, R) += d out^T @ act and
         * dD_e (R, C) += d pre^T @ gathered, each over the expert's rows */
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < column_count; i++) {
            int e = columns[i].e, lo = columns[i].lo, w = columns[i].hi - lo;
            int first = offsets[e], n = offsets[e + 1] - first;
            if (dup)
                cpu_gemm(1, 0, w, R, n, 1.0f, scratch + (size_t)first * C + lo, C,
                         act + (size_t)first * R, R, 1.0f, dup + ((size_t)e * C + lo) * R, R);
            if (ddown)
                cpu_gemm(1, 0, R, w, n, 1.0f, scratch_r + (size_t)first * R, R,
                         gathered + (size_t)first * C + lo, C, 1.0f,
                         ddown + (size_t)e * R * C + lo, C);
        }
        /* d gathered (rows, C) = d pre @ D_e, over d out (no longer needed) */
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < count; i++) {
            int e = pieces[i].e, lo = pieces[i].lo, n = pieces[i].hi - lo;
            cpu_gemm(0, 0, n, C, R, 1.0f, scratch_r + (size_t)lo * R, R,
                     down + (size_t)e * R * C, C, 0.0f, scratch + (size_t)lo * C, C);
        }
        /* dh = dy (the residual's part), then each routed row's, back through the dropout
         * mask, in grouped order; padding's gate gradients are zero */
#pragma omp for schedule(static)
        for (int t = 0; t < N; t++) {
            int rows[MAX_EXPERTS];
            float *dst = dh + (size_t)t * C;
            if (dh != dy)
                memcpy(dst, dy + (size_t)t * C, (size_t)C * sizeof *dst);
            for (int k = 0; k < K; k++)
                if (at[(size_t)t * K + k] < 0)
                    dtopk_w[(size_t)t * K + k] = 0.0f;
            for (int r = 0, n = token_rows(rows, at, t, K); r < n; r++) {
                const float *src = scratch + (size_t)rows[r] * C;
                uint64_t mask_row = (uint64_t)rows[r] * C;
                for (int c = 0; c < C; c++)
                    dst[c] += dropout > 0 ? src[c] * pesc_dropout_value(seed, mask_row + c,
                                                                         dropout, keep)
                                          : src[c];
            }
        }
    }
    free(pieces);
    free(at);
}
