/* cpu_backward — backward passes of the dense ops (see backend.h for what each accumulates
 * and what it overwrites). Gradients of products go through CBLAS; row-wise work is split
 * with OpenMP so that no two threads write the same element. */
#include "config.h"

#include "cpu/cpu_ops.h"
#include "dropout_hash.h"
#include "util.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void cpu_embedding_backward(void *ctx, float *dtable, const float *dout, const int32_t *tokens,
                            int N, int C)
{
    (void)ctx;
    /* columns per thread: a token repeated in the batch never races with itself */
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += 16) {
        int c1 = c0 + 16 < C ? c0 + 16 : C;
        for (int n = 0; n < N; n++) {
            float *row = dtable + (size_t)tokens[n] * C;
            const float *d = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++)
                row[c] += d[c];
        }
    }
}

void cpu_matmul_backward(void *ctx, float *dinp, float *dweight, float *dbias, const float *dout,
                         const float *inp, const float *weight, int N, int C, int OC)
{
    (void)ctx;
    if (dinp)
        cpu_gemm(0, 0, N, C, OC, 1.0f, dout, OC, weight,
                    C, 1.0f, dinp, C);
    if (dweight)
        cpu_gemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C,
                    1.0f, dweight, C);
    if (!dbias)
        return;
#pragma omp parallel for schedule(static)
    for (int o = 0; o < OC; o++) {
        double s = 0.0;
        for (int n = 0; n < N; n++)
            s += dout[(size_t)n * OC + o];
        dbias[o] += (float)s;
    }
}

/* One row of RMSNorm's backward: dx += r w dy - r^3 / C x sum(w dy x) with w = offset +
 * weight, and part += dy x r (when not NULL). The sum in double, in vector lanes. */
static CPU_WIDE void rmsnorm_grad_row(float *dx, double *part, const float *dy, const float *x,
                                      const float *weight, float offset, double r, int C)
{
    double dot = 0.0;
#pragma omp simd reduction(+ : dot)
    for (int c = 0; c < C; c++)
        dot += (double)(offset + weight[c]) * dy[c] * x[c];
    double k = r * r * r * dot / C;
#pragma omp simd
    for (int c = 0; c < C; c++)
        dx[c] += (float)(r * (offset + weight[c]) * dy[c] - k * x[c]);
    if (part)
#pragma omp simd
        for (int c = 0; c < C; c++)
            part[c] += (double)dy[c] * x[c] * r;
}

/* Rows a block of RMSNorm's backward: the weight's gradient is summed a block at a time, then
 * the blocks in order, so the sums do not depend on the number of threads. */
#define RMSNORM_BLOCK 64

void cpu_rmsnorm_backward(void *ctx, float *dinp, float *dweight, const float *dout,
                          const float *inp, const float *weight, float offset, const float *rstd,
                          int N, int C)
{
    (void)ctx;
    /* y = w * x * r with r = (mean(x^2) + eps)^-1/2:
     * dx = r * w * dy - r^3 / C * x * sum(w * dy * x);  dw = sum over rows of dy * x * r */
    int blocks = (N + RMSNORM_BLOCK - 1) / RMSNORM_BLOCK;
    double *partial = dweight ? xmalloc((size_t)blocks * C * sizeof *partial) : NULL;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int block = 0; block < blocks; block++) {
            double *part = partial ? partial + (size_t)block * C : NULL;
            if (part)
                memset(part, 0, (size_t)C * sizeof *part);
            int end = (block + 1) * RMSNORM_BLOCK < N ? (block + 1) * RMSNORM_BLOCK : N;
            for (int n = block * RMSNORM_BLOCK; n < end; n++)
                rmsnorm_grad_row(dinp + (size_t)n * C, part, dout + (size_t)n * C,
                                 inp + (size_t)n * C, weight, offset, rstd[n], C);
        }
        if (partial) {
#pragma omp for schedule(static)
            for (int c = 0; c < C; c++) {
                double sum = 0.0;
                for (int block = 0; block < blocks; block++)
                    sum += partial[(size_t)block * C + c];
                dweight[c] += (float)sum;
            }
        }
    }
    free(partial);
}

void cpu_rope_backward(void *ctx, float *dinp, const float *dout, const int32_t *pos,
                       const float *inv_freq, int N, int H, int D, int R, float scale)
{
    (void)ctx;
    cpu_rope_rotate(dinp, dout, pos, inv_freq, N, H, D, R, scale, -1.0f);
}

/* One query row of attention's backward: scores s (n) become probabilities p = e^(s scale -
 * lse) inside [lo, hi] (0 outside), and dp, the gradient of p, becomes dS = p (dp - delta)
 * scale; with cap > 0, p = e^(y - lse) of the capped y = cap tanh(s scale / cap), and dS also
 * takes y's slope, 1 - (y / cap)^2. */
static CPU_WIDE void scores_grad_row(float *s, float *dp, int n, int lo, int hi, float scale,
                                     float cap, float lse, float delta)
{
    if (cap > 0.0f) {
#pragma omp simd
        for (int j = 0; j < n; j++) {
            float y = cpu_softcap(s[j] * scale, cap), slope = 1.0f - (y / cap) * (y / cap);
            float e = cpu_expf(y - lse), prob = j >= lo && j <= hi ? e : 0.0f;
            s[j] = prob;
            dp[j] = prob * (dp[j] - delta) * scale * slope;
        }
        return;
    }
#pragma omp simd
    for (int j = 0; j < n; j++) {
        float e = cpu_expf(s[j] * scale - lse), prob = j >= lo && j <= hi ? e : 0.0f;
        s[j] = prob;
        dp[j] = prob * (dp[j] - delta) * scale;
    }
}

/* One (sequence, kv head) group: the query heads sharing it write only their own dq rows and
 * this group's dk, dv, so groups run in parallel without locks. Per block of query rows the
 * probabilities are recomputed from the saved log-sum-exp (nothing T x T is stored), and the
 * five products are GEMMs. */
static void attention_backward_group(float *dq, float *dk, float *dv, const float *dout,
                                     const float *q, const float *k, const float *v,
                                     const float *out, const float *lse, int T, int group,
                                     int q_stride, int kv_stride, int D, int window, float cap,
                                     const int32_t *seg, float *p, float *dp)
{
    float scale = 1.0f / sqrtf((float)D);
    for (int t = 0; t < T; t++) {
        memset(dk + (size_t)t * kv_stride, 0, (size_t)D * sizeof *dk);
        memset(dv + (size_t)t * kv_stride, 0, (size_t)D * sizeof *dv);
    }
    for (int h = 0; h < group; h++) {
        const float *qh = q + (size_t)h * D, *doh = dout + (size_t)h * D, *oh = out + (size_t)h * D;
        float *dqh = dq + (size_t)h * D;
        const float *lse_h = lse + (size_t)h * T;
        for (int t0 = 0; t0 < T; t0 += CPU_ATTENTION_BLOCK) {
            int rows = T - t0 < CPU_ATTENTION_BLOCK ? T - t0 : CPU_ATTENTION_BLOCK;
            int key0 = cpu_first_key(t0, window, seg);
            int keys = t0 + rows - key0;
            const float *qb = qh + (size_t)t0 * q_stride, *dob = doh + (size_t)t0 * q_stride;
            const float *kv0 = k + (size_t)key0 * kv_stride, *vv0 = v + (size_t)key0 * kv_stride;
            cpu_gemm(0, 1, rows, keys, D, 1.0f, qb, q_stride, kv0, kv_stride, 0.0f, p, keys);
            cpu_gemm(0, 1, rows, keys, D, 1.0f, dob, q_stride, vv0, kv_stride, 0.0f, dp, keys);
            for (int i = 0; i < rows; i++) {
                int t = t0 + i;
                int lo = cpu_first_key(t, window, seg) - key0;
                int hi = t - key0;
                const float *o_row = oh + (size_t)t * q_stride, *do_row = dob + (size_t)i * q_stride;
                float delta = 0.0f;
                for (int d = 0; d < D; d++)
                    delta += do_row[d] * o_row[d];
                scores_grad_row(p + (size_t)i * keys, dp + (size_t)i * keys, keys, lo, hi, scale,
                                cap, lse_h[t], delta);
            }
            /* dQ = dS K;  dK += dS^T Q;  dV += P^T dO */
            cpu_gemm(0, 0, rows, D, keys, 1.0f, dp, keys, kv0, kv_stride, 0.0f,
                     dqh + (size_t)t0 * q_stride, q_stride);
            cpu_gemm(1, 0, keys, D, rows, 1.0f, dp, keys, qb, q_stride, 1.0f,
                     dk + (size_t)key0 * kv_stride, kv_stride);
            cpu_gemm(1, 0, keys, D, rows, 1.0f, p, keys, dob, q_stride, 1.0f,
                     dv + (size_t)key0 * kv_stride, kv_stride);
        }
    }
}

void cpu_attention_backward(void *ctx, float *dq, float *dk, float *dv, const float *dout,
                            const float *q, const float *k, const float *v, const float *out,
                            const float *lse, int B, int T, int Hq, int Hkv, int D, int window,
                            float softcap, const int32_t *seg_start)
{
    (void)ctx;
    assert(D <= CPU_MAX_HEAD_DIM && Hq % Hkv == 0);
    int group = Hq / Hkv, q_stride = Hq * D, kv_stride = Hkv * D;
#pragma omp parallel
    {
        float *p = malloc((size_t)CPU_ATTENTION_BLOCK * T * sizeof *p);
        float *dp = malloc((size_t)CPU_ATTENTION_BLOCK * T * sizeof *dp);
        assert(p && dp);
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int b = 0; b < B; b++)
            for (int g = 0; g < Hkv; g++) {
                size_t q_off = (size_t)b * T * q_stride + (size_t)g * group * D;
                size_t kv_off = (size_t)b * T * kv_stride + (size_t)g * D;
                attention_backward_group(dq + q_off, dk + kv_off, dv + kv_off, dout + q_off,
                                         q + q_off, k + kv_off, v + kv_off, out + q_off,
                                         lse + ((size_t)b * Hq + (size_t)g * group) * T, T, group,
                                         q_stride, kv_stride, D, window, softcap,
                                         seg_start ? seg_start + (size_t)b * T : NULL, p, dp);
            }
        free(p);
        free(dp);
    }
}

static CPU_WIDE void swiglu_grad_span(float *dgate, float *dup, const float *dout,
                                      const float *gate, const float *up, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], sig = 1.0f / (1.0f + cpu_expf(-g)), d = dout[i];
        dup[i] = d * g * sig;
        dgate[i] = d * up[i] * sig * (1.0f + g * (1.0f - sig));
    }
}

/* A GLU's backward over n values, a span of CPU_SPAN at a time across the threads */
typedef void glu_grad_span_fn(float *dgate, float *dup, const float *dout, const float *gate,
                              const float *up, size_t n);

static void glu_backward(glu_grad_span_fn *span, float *dgate, float *dup, const float *dout,
                         const float *gate, const float *up, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t at = 0; at < n; at += CPU_SPAN)
        span(dgate + at, dup + at, dout + at, gate + at, up + at,
             n - at < CPU_SPAN ? n - at : CPU_SPAN);
}

void cpu_swiglu_backward(void *ctx, float *dgate, float *dup, const float *dout,
                         const float *gate, const float *up, size_t n)
{
    (void)ctx;
    glu_backward(swiglu_grad_span, dgate, dup, dout, gate, up, n);
}

/* d/dg of g s, s = sigmoid(2u), u = sqrt(2/pi) (g + 0.044715 g^3): s + g s (1 - s) 2u' */
static CPU_WIDE void geglu_grad_span(float *dgate, float *dup, const float *dout,
                                     const float *gate, const float *up, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], g2 = g * g, d = dout[i];
        float s = 1.0f / (1.0f + cpu_expf(-CPU_GELU_TANH_2C * (g + 0.044715f * g2 * g)));
        float du2 = CPU_GELU_TANH_2C * (1.0f + 3.0f * 0.044715f * g2);
        dup[i] = d * g * s;
        dgate[i] = d * up[i] * (s + g * s * (1.0f - s) * du2);
    }
}

void cpu_geglu_backward(void *ctx, float *dgate, float *dup, const float *dout,
                        const float *gate, const float *up, size_t n)
{
    (void)ctx;
    glu_backward(geglu_grad_span, dgate, dup, dout, gate, up, n);
}

/* out = softmax(y) * scale (out may be row), y = row, or where cap > 0 its capped values,
 * each then times y's slope 1 - (y / cap)^2; the log-sum-exp of y. */
static CPU_WIDE double softmax_scaled(float *out, const float *row, int n, float scale, float cap)
{
    float m = row[0];
    for (int i = 1; i < n; i++)
        m = row[i] > m ? row[i] : m;
    double sum = 0.0;
    if (cap > 0.0f) {
        m = cpu_softcap(m, cap);
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < n; i++) {
            float y = cpu_softcap(row[i], cap), e = cpu_expf(y - m);
            out[i] = e * (1.0f - (y / cap) * (y / cap));   /* the sum takes e alone */
            sum += e;
        }
    } else {
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < n; i++) {
            float e = cpu_expf(row[i] - m);
            out[i] = e;
            sum += e;
        }
    }
    float inv = (float)(1.0 / sum) * scale;
#pragma omp simd
    for (int i = 0; i < n; i++)
        out[i] *= inv;
    return log(sum) + m;
}

void cpu_crossentropy_backward(void *ctx, float *dlogits, float *losses, const float *logits,
                               const int32_t *targets, float scale, int N, int V, float softcap)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * V;
        float *drow = dlogits + (size_t)n * V;
        int target = targets[n];
        if (target < 0) {
            memset(drow, 0, (size_t)V * sizeof *drow);
            if (losses)
                losses[n] = 0.0f;
            continue;
        }
        float target_logit = row[target];   /* read before drow (may alias) overwrites it */
        double lse = softmax_scaled(drow, row, V, scale, softcap);
        float slope = 1.0f;
        if (softcap > 0.0f) {
            target_logit = cpu_softcap(target_logit, softcap);
            slope = 1.0f - (target_logit / softcap) * (target_logit / softcap);
        }
        drow[target] -= scale * slope;
        if (losses)
            losses[n] = (float)(lse - target_logit);
    }
}

/* ---- vectors and the optimizer ------------------------------------------------------------ */

void cpu_vector_zero(void *ctx, float *x, size_t n)
{
    (void)ctx;
    memset(x, 0, n * sizeof *x);
}

void cpu_vector_axpy(void *ctx, float *y, const float *x, float alpha, size_t n)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

void cpu_dropout_mask(void *ctx, float *mask, size_t n, float p, uint64_t seed)
{
    (void)ctx;
    float keep = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        mask[i] = pesc_dropout_value(seed, i, p, keep);
}

void cpu_vector_add_uniform(void *ctx, float *x, size_t n, float magnitude, uint64_t seed)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        x[i] += magnitude * (2.0f * pesc_dropout_uniform(seed, i) - 1.0f);
}

void cpu_vector_scale(void *ctx, float *x, float alpha, size_t n)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        x[i] *= alpha;
}

double cpu_vector_sumsq(void *ctx, const float *x, size_t n)
{
    (void)ctx;
    double s = 0.0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return s;
}

void cpu_vector_sumsq_chunks(void *ctx, double *out, const float *x, size_t chunk, int n)
{
    for (int i = 0; i < n; i++)   /* chunk by chunk: the very sums vector_sumsq gives */
        out[i] = cpu_vector_sumsq(ctx, x + (size_t)i * chunk, chunk);
}

void cpu_adamw_update(void *ctx, float *params, const float *grads, float grad_scale, float *m,
                      float *v, float *delta, size_t n, float lr, float beta1, float beta2,
                      float eps, float weight_decay, int step)
{
    (void)ctx;
    double correction1 = 1.0 - pow(beta1, step), correction2 = 1.0 - pow(beta2, step);
    float step_size = (float)(lr / correction1);
    float sqrt_c2 = (float)sqrt(correction2);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grad_scale == 1.0f ? grads[i] : grads[i] * grad_scale, before = params[i];
        params[i] *= 1.0f - lr * weight_decay;
        m[i] = beta1 * m[i] + (1.0f - beta1) * g;
        v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
        params[i] -= step_size * m[i] / (sqrtf(v[i]) / sqrt_c2 + eps);
        if (delta)
            delta[i] = before - params[i];
    }
}
