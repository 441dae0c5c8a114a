/* cpu_ops — see cpu_ops.h. Accumulations that decide accuracy (norms, softmax sums, the
 * log-sum-exp) run in double so that the CPU backend stays a trustworthy reference. */
#include "cpu/cpu_ops.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <string.h>

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
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C,
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

void cpu_rmsnorm_forward(void *ctx, float *out, float *rstd, const float *inp, const float *weight, int N,
                         int C, float eps)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++)
            ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / C + (double)eps));
        float *y = out + (size_t)n * C;
        for (int c = 0; c < C; c++)
            y[c] = weight[c] * (x[c] * r);
        if (rstd)
            rstd[n] = r;
    }
}

void cpu_rope_forward(void *ctx, float *out, const float *inp, const int32_t *pos, const float *inv_freq,
                      int N, int H, int D)
{
    (void)ctx;
    int half = D / 2;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < half; i++) {
            double angle = (double)pos[n] * inv_freq[i];
            float c = (float)cos(angle), s = (float)sin(angle);
            for (int h = 0; h < H; h++) {
                const float *x = inp + ((size_t)n * H + h) * D;
                float *y = out + ((size_t)n * H + h) * D;
                float x1 = x[i], x2 = x[i + half];
                y[i] = x1 * c - x2 * s;
                y[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

/* One query row against its keys with an online softmax: no score buffer, one pass, the
 * running sums in double. */
static void attention_row(float *out, float *lse, const float *q, const float *k, const float *v,
                          int first, int last, int kv_stride, int D, double scale)
{
    double acc[CPU_MAX_HEAD_DIM] = {0};
    double m = -INFINITY, l = 0.0;
    for (int s = first; s <= last; s++) {
        const float *ks = k + (size_t)s * kv_stride;
        double dot = 0.0;
        for (int d = 0; d < D; d++)
            dot += (double)q[d] * ks[d];
        double score = dot * scale;
        if (score > m) {
            double correction = exp(m - score);
            l *= correction;
            for (int d = 0; d < D; d++)
                acc[d] *= correction;
            m = score;
        }
        double p = exp(score - m);
        l += p;
        const float *vs = v + (size_t)s * kv_stride;
        for (int d = 0; d < D; d++)
            acc[d] += p * vs[d];
    }
    for (int d = 0; d < D; d++)
        out[d] = (float)(acc[d] / l);
    if (lse)
        *lse = (float)(m + log(l));
}

void cpu_attention_forward(void *ctx, float *out, float *lse, const float *q, const float *k,
                           const float *v, int B, int T, int Hq, int Hkv, int D, int window)
{
    (void)ctx;
    assert(D <= CPU_MAX_HEAD_DIM && Hq % Hkv == 0);
    int group = Hq / Hkv;
    double scale = 1.0 / sqrt((double)D);
    int q_stride = Hq * D, kv_stride = Hkv * D;
#pragma omp parallel for collapse(3) schedule(dynamic, 16)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++)
            for (int t = 0; t < T; t++) {
                size_t row = (size_t)b * T + t;
                int first = window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
                const float *kb = k + (size_t)b * T * kv_stride + (size_t)(h / group) * D;
                const float *vb = v + (size_t)b * T * kv_stride + (size_t)(h / group) * D;
                attention_row(out + row * q_stride + (size_t)h * D,
                              lse ? lse + ((size_t)b * Hq + h) * T + t : NULL,
                              q + row * q_stride + (size_t)h * D, kb, vb, first, t, kv_stride, D,
                              scale);
            }
}

void cpu_swiglu_forward(void *ctx, float *out, const float *gate, const float *up, size_t n)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void cpu_residual_forward(void *ctx, float *out, const float *x, const float *y, size_t n)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = x[i] + y[i];
}

void cpu_crossentropy_forward(void *ctx, float *losses, const float *logits, const int32_t *targets, int N,
                              int V)
{
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) {
            losses[n] = 0.0f;
            continue;
        }
        const float *row = logits + (size_t)n * V;
        float m = row[0];
        for (int i = 1; i < V; i++)
            m = row[i] > m ? row[i] : m;
        double sum = 0.0;
        for (int i = 0; i < V; i++)
            sum += exp((double)row[i] - m);
        losses[n] = (float)(log(sum) + m - row[targets[n]]);
    }
}
