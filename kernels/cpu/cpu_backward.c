/* cpu_backward — backward passes of the dense ops (see backend.h for what each accumulates
 * and what it overwrites). Gradients of products go through CBLAS; row-wise work is split
 * with OpenMP so that no two threads write the same element. */
#include "cpu/cpu_ops.h"

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
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight,
                    C, 1.0f, dinp, C);
    if (dweight)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C,
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

void cpu_rmsnorm_backward(void *ctx, float *dinp, float *dweight, const float *dout,
                          const float *inp, const float *weight, const float *rstd, int N, int C)
{
    (void)ctx;
    /* y = w * x * r with r = (mean(x^2) + eps)^-1/2:
     * dx = r * w * dy - r^3 / C * x * sum(w * dy * x) */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        double dot = 0.0, r = rstd[n];
        for (int c = 0; c < C; c++)
            dot += (double)weight[c] * dy[c] * x[c];
        double k = r * r * r * dot / C;
        float *dx = dinp + (size_t)n * C;
        for (int c = 0; c < C; c++)
            dx[c] += (float)(r * weight[c] * dy[c] - k * x[c]);
    }
    if (!dweight)
        return;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        double s = 0.0;
        for (int n = 0; n < N; n++)
            s += (double)dout[(size_t)n * C + c] * inp[(size_t)n * C + c] * rstd[n];
        dweight[c] += (float)s;
    }
}

void cpu_rope_backward(void *ctx, float *dinp, const float *dout, const int32_t *pos,
                       const float *inv_freq, int N, int H, int D)
{
    (void)ctx;
    int half = D / 2;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < half; i++) {
            double angle = (double)pos[n] * inv_freq[i];
            float c = (float)cos(angle), s = (float)sin(angle);
            for (int h = 0; h < H; h++) {
                const float *dy = dout + ((size_t)n * H + h) * D;
                float *dx = dinp + ((size_t)n * H + h) * D;
                float d1 = dy[i], d2 = dy[i + half];
                dx[i] = d1 * c + d2 * s;
                dx[i + half] = d2 * c - d1 * s;
            }
        }
    }
}

/* One (sequence, kv head) group: the query heads sharing it write only their own dq rows and
 * this group's dk, dv, so groups run in parallel without locks. Softmax probabilities are
 * recomputed from the saved log-sum-exp instead of being stored (T^2 per head). */
static void attention_backward_group(float *dq, float *dk, float *dv, const float *dout,
                                     const float *q, const float *k, const float *v,
                                     const float *out, const float *lse, int b, int g, int T,
                                     int Hq, int Hkv, int D, int window, double *dk_acc,
                                     double *dv_acc)
{
    int group = Hq / Hkv, q_stride = Hq * D, kv_stride = Hkv * D;
    double scale = 1.0 / sqrt((double)D);
    memset(dk_acc, 0, (size_t)T * D * sizeof *dk_acc);
    memset(dv_acc, 0, (size_t)T * D * sizeof *dv_acc);
    const float *kb = k + (size_t)b * T * kv_stride + (size_t)g * D;
    const float *vb = v + (size_t)b * T * kv_stride + (size_t)g * D;
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int t = 0; t < T; t++) {
            size_t row = ((size_t)b * T + t) * q_stride + (size_t)h * D;
            const float *qt = q + row, *dot_ = dout + row, *ot = out + row;
            double row_lse = lse[((size_t)b * Hq + h) * T + t], delta = 0.0;
            double dq_acc[CPU_MAX_HEAD_DIM] = {0};
            for (int d = 0; d < D; d++)
                delta += (double)dot_[d] * ot[d];
            int first = window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
            for (int s = first; s <= t; s++) {
                const float *ks = kb + (size_t)s * kv_stride, *vs = vb + (size_t)s * kv_stride;
                double score = 0.0, dp = 0.0;
                for (int d = 0; d < D; d++) {
                    score += (double)qt[d] * ks[d];
                    dp += (double)dot_[d] * vs[d];
                }
                double p = exp(score * scale - row_lse);
                double ds = p * (dp - delta) * scale;
                for (int d = 0; d < D; d++) {
                    dq_acc[d] += ds * ks[d];
                    dk_acc[(size_t)s * D + d] += ds * qt[d];
                    dv_acc[(size_t)s * D + d] += p * dot_[d];
                }
            }
            for (int d = 0; d < D; d++)
                dq[row + d] = (float)dq_acc[d];
        }
    }
    for (int s = 0; s < T; s++)
        for (int d = 0; d < D; d++) {
            size_t at = ((size_t)b * T + s) * kv_stride + (size_t)g * D + d;
            dk[at] = (float)dk_acc[(size_t)s * D + d];
            dv[at] = (float)dv_acc[(size_t)s * D + d];
        }
}

void cpu_attention_backward(void *ctx, float *dq, float *dk, float *dv, const float *dout,
                            const float *q, const float *k, const float *v, const float *out,
                            const float *lse, int B, int T, int Hq, int Hkv, int D, int window)
{
    (void)ctx;
    assert(D <= CPU_MAX_HEAD_DIM && Hq % Hkv == 0);
#pragma omp parallel
    {
        double *dk_acc = malloc((size_t)T * D * sizeof *dk_acc);
        double *dv_acc = malloc((size_t)T * D * sizeof *dv_acc);
        assert(dk_acc && dv_acc);
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int b = 0; b < B; b++)
            for (int g = 0; g < Hkv; g++)
                attention_backward_group(dq, dk, dv, dout, q, k, v, out, lse, b, g, T, Hq, Hkv,
                                         D, window, dk_acc, dv_acc);
        free(dk_acc);
        free(dv_acc);
    }
}

void cpu_swiglu_backward(void *ctx, float *dgate, float *dup, const float *dout,
                         const float *gate, const float *up, size_t n)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], sig = 1.0f / (1.0f + expf(-g)), d = dout[i];
        dup[i] = d * g * sig;
        dgate[i] = d * up[i] * sig * (1.0f + g * (1.0f - sig));
    }
}

void cpu_crossentropy_backward(void *ctx, float *dlogits, const float *logits,
                               const int32_t *targets, float scale, int N, int V)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * V;
        float *drow = dlogits + (size_t)n * V;
        if (targets[n] < 0) {
            memset(drow, 0, (size_t)V * sizeof *drow);
            continue;
        }
        float m = row[0];
        for (int i = 1; i < V; i++)
            m = row[i] > m ? row[i] : m;
        double sum = 0.0;
        for (int i = 0; i < V; i++)
            sum += exp((double)row[i] - m);
        double inv = 1.0 / sum;
        int target = targets[n];
        for (int i = 0; i < V; i++) {
            double p = exp((double)row[i] - m) * inv;
            drow[i] = (float)((p - (i == target)) * scale);
        }
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

void cpu_adamw_update(void *ctx, float *params, const float *grads, float *m, float *v, size_t n,
                      float lr, float beta1, float beta2, float eps, float weight_decay, int step)
{
    (void)ctx;
    double correction1 = 1.0 - pow(beta1, step), correction2 = 1.0 - pow(beta2, step);
    float step_size = (float)(lr / correction1);
    float sqrt_c2 = (float)sqrt(correction2);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i];
        params[i] *= 1.0f - lr * weight_decay;
        m[i] = beta1 * m[i] + (1.0f - beta1) * g;
        v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
        params[i] -= step_size * m[i] / (sqrtf(v[i]) / sqrt_c2 + eps);
    }
}
