/* cpu_ops — see cpu_ops.h. Accumulations that decide accuracy (norms, softmax sums, the
 * log-sum-exp) run in double so that the CPU backend stays a trustworthy reference. */
#include "config.h"

#include "cpu/cpu_ops.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* C (1, N) = alpha op(A) (1, K) op(B) + beta C as a matrix-vector product over columns lo..hi:
 * a product of one row (a generated token's) through sgemm packed all of B first, most of
 * its time. */
static void gemv_part(int trans_a, int trans_b, int lo, int hi, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C)
{
    int inc = trans_a ? lda : 1;
    if (trans_b)   /* op(B) = B^T, B (N, K): C^T = B a */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, hi - lo, K, alpha, B + (size_t)lo * ldb, ldb,
                    A, inc, beta, C + lo, 1);
    else           /* B (K, N): C = a^T B */
        cblas_sgemv(CblasRowMajor, CblasTrans, K, hi - lo, alpha, B + lo, ldb, A, inc, beta,
                    C + lo, 1);
}

/* OpenBLAS runs single-threaded (cpu_backend.c sets it) and the work is split here instead:
 * one thread pool for everything, no OpenBLAS threads spinning against OpenMP ones. */
void cpu_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M == 1 && N > 0 && K > 0) {
        int threads = 1;
#ifdef _OPENMP
        if (!omp_in_parallel() && (double)N * K >= (double)(1 << 18))
            threads = omp_get_max_threads();
#endif
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int part = 0; part < threads; part++) {
            int lo = (int)((long)N * part / threads), hi = (int)((long)N * (part + 1) / threads);
            if (hi > lo)
                gemv_part(trans_a, trans_b, lo, hi, K, alpha, A, lda, B, ldb, beta, C);
        }
        return;
    }
    enum CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
    enum CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
    int threads = 1;
#ifdef _OPENMP
    if (!omp_in_parallel())
        threads = omp_get_max_threads();
#endif
    if (threads == 1 || (double)M * N * K < (double)(1 << 18)) {
        cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* split the longer of M and N into one panel per thread */
    int split_m = M >= N;
    int len = split_m ? M : N;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int part = 0; part < threads; part++) {
        int lo = (int)((long)len * part / threads), hi = (int)((long)len * (part + 1) / threads);
        if (hi <= lo)
            continue;
        if (split_m)
            cblas_sgemm(CblasRowMajor, ta, tb, hi - lo, N, K, alpha,
                        A + (size_t)lo * (trans_a ? 1 : (size_t)lda), lda, B, ldb, beta,
                        C + (size_t)lo * ldc, ldc);
        else
            cblas_sgemm(CblasRowMajor, ta, tb, M, hi - lo, K, alpha, A, lda,
                        B + (size_t)lo * (trans_b ? (size_t)ldb : 1), ldb, beta, C + lo, ldc);
    }
}

void cpu_embedding_forward(void *ctx, float *out, const int32_t *tokens, const float *table, int N, int C)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, table + (size_t)tokens[n] * C, (size_t)C * sizeof(float));
}

void cpu_matmul_forward(void *ctx, float *out, const float *inp, const float *weight, const float *bias,
                        int N, int C, int OC)
{
    (void)ctx;
    /* most of the time is spent here */
    cpu_gemm(0, 1, N, OC, C, 1.0f, inp, C, weight, C,
                0.0f, out, OC);
    if (!bias)
        return;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *row = out + (size_t)n * OC;
        for (int o = 0; o < OC; o++)
            row[o] += bias[o];
    }
}

/* The sum of a row's squares, in double, in vector lanes. */
static CPU_WIDE double rmsnorm_sumsq_row(const float *x, int C)
{
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; c++)
        ss += (double)x[c] * x[c];
    return ss;
}

void cpu_rmsnorm_forward(void *ctx, float *out, float *rstd, const float *inp, const float *weight,
                         float offset, int N, int C, float eps)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float r = (float)(1.0 / sqrt(rmsnorm_sumsq_row(x, C) / C + (double)eps));
        float *y = out + (size_t)n * C;
        for (int c = 0; c < C; c++)
            y[c] = (offset + weight[c]) * (x[c] * r);
        if (rstd)
            rstd[n] = r;
    }
}

/* cos and sin (times scale, and direction for sin) of position p's angles: cs[0..half) and
 * cs[half..2 half) */
static void rope_angles(float *cs, int32_t p, const float *inv_freq, int half, float scale,
                        float direction)
{
    for (int i = 0; i < half; i++) {
        double angle = (double)p * inv_freq[i];
        cs[i] = scale * (float)cos(angle);
        cs[half + i] = scale * direction * (float)sin(angle);
    }
}

/* One head's first 2 half values turned by cs (in place or not: each i touches i and i + half
 * alone). */
static CPU_WIDE void rope_turn_head(float *y, const float *x, const float *cs, int half)
{
    const float *c = cs, *s = cs + half;
#pragma omp simd
    for (int i = 0; i < half; i++) {
        float x1 = x[i], x2 = x[i + half];
        y[i] = x1 * c[i] - x2 * s[i];
        y[i + half] = x2 * c[i] + x1 * s[i];
    }
}

/* direction +1 rotates (forward), -1 rotates back (backward: the transpose of a rotation).
 * out may be inp. */
void cpu_rope_rotate(float *out, const float *inp, const int32_t *pos, const float *inv_freq,
                     int N, int H, int D, int R, float scale, float direction)
{
    int half = R / 2;
    /* A batch's rows repeat their positions: where they do, each position's angles are made
     * once into a table (the sines and cosines were most of RoPE's time). */
    if (N <= 0)
        return;
    int32_t low = pos[0], top = pos[0];
    for (int n = 1; n < N; n++) {
        low = pos[n] < low ? pos[n] : low;
        top = pos[n] > top ? pos[n] : top;
    }
    int tabled = half > 0 && low >= 0 && top < N / 2;   /* (no table: each token its own) */
    float *table = tabled ? malloc(((size_t)top + 1) * R * sizeof *table) : NULL;
#pragma omp parallel
    {
        if (table) {
#pragma omp for schedule(static)
            for (int32_t p = 0; p <= top; p++)
                rope_angles(table + (size_t)p * R, p, inv_freq, half, scale, direction);
        }
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            float own[CPU_MAX_HEAD_DIM];
            const float *cs = table ? table + (size_t)pos[n] * R : own;
            if (!table)
                rope_angles(own, pos[n], inv_freq, half, scale, direction);
            for (int h = 0; h < H; h++) {
                const float *x = inp + ((size_t)n * H + h) * D;
                float *y = out + ((size_t)n * H + h) * D;
                rope_turn_head(y, x, cs, half);
                if (out != inp && R < D)   /* the values past R pass through */
                    memcpy(y + R, x + R, (size_t)(D - R) * sizeof *y);
            }
        }
    }
    free(table);
}

void cpu_rope_forward(void *ctx, float *out, const float *inp, const int32_t *pos,
                      const float *inv_freq, int N, int H, int D, int R, float scale)
{
    (void)ctx;
    cpu_rope_rotate(out, inp, pos, inv_freq, N, H, D, R, scale, 1.0f);
}

/* Attention runs per (sequence, head) on blocks of CPU_ATTENTION_BLOCK query rows: scores for a
 * block against the keys it can see are one GEMM, the softmax is row-wise, the output one more
 * GEMM. Causality also cuts the work: a block never touches keys after its last row. */


/* Softmax of row[lo..hi] * scale in place (capped first where cap > 0), 0 elsewhere in
 * [0, n); its log-sum-exp. */
static CPU_WIDE float softmax_row(float *row, int n, int lo, int hi, float scale, float cap)
{
    if (cap > 0.0f) {
#pragma omp simd
        for (int j = lo; j <= hi; j++)
            row[j] = cpu_softcap(row[j] * scale, cap);
        scale = 1.0f;
    }
    float m = -INFINITY;
    for (int j = lo; j <= hi; j++)
        m = row[j] * scale > m ? row[j] * scale : m;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        float e = cpu_expf(row[j] * scale - m), p = j >= lo && j <= hi ? e : 0.0f;
        row[j] = p;
        sum += p;
    }
    float inv = (float)(1.0 / sum);
#pragma omp simd
    for (int j = lo; j <= hi; j++)
        row[j] *= inv;
    return m + (float)log(sum);
}

/* Softmax of scores (rows, keys) in place, masking keys outside [cpu_first_key(t), t]; writes
 * each row's log-sum-exp (of the scaled, and capped, scores). */
static void block_softmax(float *scores, int ld, int t0, int rows, int key0, int keys, int window,
                          const int32_t *seg, float scale, float cap, float *lse_out)
{
    for (int i = 0; i < rows; i++) {
        int t = t0 + i, lo = cpu_first_key(t, window, seg) - key0, hi = t - key0;   /* [lo, hi] */
        float lse = softmax_row(scores + (size_t)i * ld, keys, lo, hi, scale, cap);
        if (lse_out)
            lse_out[i] = lse;
    }
}

/* T query rows at positions past .. past+T-1 against keys 0 .. past+T-1 (the keys before
 * `past` come from a KV cache when generating). */
static void attention_head(float *out, float *lse, const float *q, const float *k, const float *v,
                           int T, int past, int q_stride, int kv_stride, int D, int window,
                           float cap, const int32_t *seg, float *scores)
{
    float scale = 1.0f / sqrtf((float)D);
    for (int t0 = 0; t0 < T; t0 += CPU_ATTENTION_BLOCK) {
        int rows = T - t0 < CPU_ATTENTION_BLOCK ? T - t0 : CPU_ATTENTION_BLOCK;
        int p0 = past + t0, key0 = cpu_first_key(p0, window, seg), keys = p0 + rows - key0;
        /* scores (rows, keys) = Q_block K_visible^T */
        cpu_gemm(0, 1, rows, keys, D, 1.0f, q + (size_t)t0 * q_stride, q_stride,
                 k + (size_t)key0 * kv_stride, kv_stride, 0.0f, scores, keys);
        block_softmax(scores, keys, p0, rows, key0, keys, window, seg, scale, cap,
                      lse ? lse + t0 : NULL);
        cpu_gemm(0, 0, rows, D, keys, 1.0f, scores, keys, v + (size_t)key0 * kv_stride, kv_stride,
                 0.0f, out + (size_t)t0 * q_stride, q_stride);
    }
}

void cpu_attention_forward(void *ctx, float *out, float *lse, const float *q, const float *k,
                           const float *v, int B, int T, int Hq, int Hkv, int D, int window,
                           float softcap, const int32_t *seg_start)
{
    (void)ctx;
    assert(D <= CPU_MAX_HEAD_DIM && Hq % Hkv == 0);
    int group = Hq / Hkv, q_stride = Hq * D, kv_stride = Hkv * D;
#pragma omp parallel
    {
        float *scores = malloc((size_t)CPU_ATTENTION_BLOCK * T * sizeof *scores);
        assert(scores);
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < Hq; h++) {
                size_t q_off = (size_t)b * T * q_stride + (size_t)h * D;
                size_t kv_off = (size_t)b * T * kv_stride + (size_t)(h / group) * D;
                attention_head(out + q_off, lse ? lse + ((size_t)b * Hq + h) * T : NULL,
                               q + q_off, k + kv_off, v + kv_off, T, 0, q_stride, kv_stride, D,
                               window, softcap, seg_start ? seg_start + (size_t)b * T : NULL,
                               scores);
            }
        free(scores);
    }
}

void cpu_attention_cached_forward(void *ctx, float *out, const float *q, const float *k_cache,
                                  const float *v_cache, int n, int past, int Hq, int Hkv, int D,
                                  int window, float softcap)
{
    (void)ctx;
    assert(Hq % Hkv == 0);
    int group = Hq / Hkv, q_stride = Hq * D, kv_stride = Hkv * D;
#pragma omp parallel
    {
        float *scores = malloc((size_t)CPU_ATTENTION_BLOCK * (past + n) * sizeof *scores);
        assert(scores);
#pragma omp for schedule(dynamic, 1)
        for (int h = 0; h < Hq; h++)
            attention_head(out + (size_t)h * D, NULL, q + (size_t)h * D,
                           k_cache + (size_t)(h / group) * D, v_cache + (size_t)(h / group) * D, n,
                           past, q_stride, kv_stride, D, window, softcap, NULL, scores);
        free(scores);
    }
}

void cpu_attention_step_forward(void *ctx, float *out, const float *q, const float *k,
                                const float *v, float *k_cache, float *v_cache,
                                const int32_t *slots, const int32_t *past, int n, int slot_rows,
                                int Hq, int Hkv, int D, int window, float softcap)
{
    (void)ctx;
    assert(Hq % Hkv == 0);
    int group = Hq / Hkv, q_stride = Hq * D, kv_stride = Hkv * D, longest = 0;
    for (int i = 0; i < n; i++) {
        size_t at = ((size_t)slots[i] * slot_rows + past[i]) * kv_stride;
        memcpy(k_cache + at, k + (size_t)i * kv_stride, (size_t)kv_stride * sizeof *k);
        memcpy(v_cache + at, v + (size_t)i * kv_stride, (size_t)kv_stride * sizeof *v);
        longest = past[i] > longest ? past[i] : longest;
    }
#pragma omp parallel
    {
        float *scores = malloc((size_t)CPU_ATTENTION_BLOCK * (longest + 1) * sizeof *scores);
        assert(scores);
#pragma omp for schedule(dynamic, 1)
        for (int ih = 0; ih < n * Hq; ih++) {   /* (token, head) pairs */
            int i = ih / Hq, h = ih % Hq;
            size_t slot = (size_t)slots[i] * slot_rows * kv_stride + (size_t)(h / group) * D;
            attention_head(out + (size_t)i * q_stride + (size_t)h * D, NULL,
                           q + (size_t)i * q_stride + (size_t)h * D, k_cache + slot,
                           v_cache + slot, 1, past[i], q_stride, kv_stride, D, window, softcap,
                           NULL, scores);
        }
        free(scores);
    }
}

static CPU_WIDE void swiglu_span(float *out, const float *gate, const float *up, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + cpu_expf(-g)) * up[i];
    }
}

/* A GLU over n values, a span of CPU_SPAN at a time across the threads */
typedef void glu_span_fn(float *out, const float *gate, const float *up, size_t n);

static void glu_forward(glu_span_fn *span, float *out, const float *gate, const float *up,
                        size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t at = 0; at < n; at += CPU_SPAN)
        span(out + at, gate + at, up + at, n - at < CPU_SPAN ? n - at : CPU_SPAN);
}

void cpu_swiglu_forward(void *ctx, float *out, const float *gate, const float *up, size_t n)
{
    (void)ctx;
    glu_forward(swiglu_span, out, gate, up, n);
}

/* GELU's tanh approximation as g sigmoid(2u): 0.5 (1 + tanh u) = sigmoid(2u), with
 * u = sqrt(2/pi) (g + 0.044715 g^3) */
static CPU_WIDE void geglu_span(float *out, const float *gate, const float *up, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], u2 = CPU_GELU_TANH_2C * (g + 0.044715f * g * g * g);
        out[i] = g / (1.0f + cpu_expf(-u2)) * up[i];
    }
}

void cpu_geglu_forward(void *ctx, float *out, const float *gate, const float *up, size_t n)
{
    (void)ctx;
    glu_forward(geglu_span, out, gate, up, n);
}

void cpu_residual_forward(void *ctx, float *out, const float *x, const float *y, size_t n)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = x[i] + y[i];
}

/* The log-sum-exp of row (capped where cap > 0: the cap of its max is the capped values'):
 * float exponentials (cpu_expf, at most 1.27 ulp) of row - max, summed in double, as the
 * backward's softmax_scaled sums them. */
static CPU_WIDE double logsumexp_row(const float *row, int n, float cap)
{
    float m = row[0];
    for (int i = 1; i < n; i++)
        m = row[i] > m ? row[i] : m;
    double sum = 0.0;
    if (cap > 0.0f) {
        m = cpu_softcap(m, cap);
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < n; i++)
            sum += cpu_expf(cpu_softcap(row[i], cap) - m);
    } else {
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < n; i++)
            sum += cpu_expf(row[i] - m);
    }
    return log(sum) + m;
}

void cpu_argmax_rows(void *ctx, int32_t *out, const float *x, int rows, int cols)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *row = x + (size_t)r * cols;
        int best = -1;
        for (int i = 0; i < cols; i++)
            if (row[i] == row[i] && (best < 0 || row[i] > row[best]))
                best = i;
        out[r] = best >= 0 && isfinite(row[best]) ? best : -1;
    }
}

void cpu_crossentropy_forward(void *ctx, float *losses, const float *logits, const int32_t *targets, int N,
                              int V, float softcap)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * V;
        if (targets[n] < 0) {
            losses[n] = 0.0f;
            continue;
        }
        float target = row[targets[n]];
        target = softcap > 0.0f ? cpu_softcap(target, softcap) : target;
        losses[n] = (float)(logsumexp_row(row, V, softcap) - target);
    }
}
