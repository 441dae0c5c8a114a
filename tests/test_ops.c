/* test_ops — every CPU backend op against a naive double-precision loop on fresh random inputs.
 *
 * Inputs are new each run (the seed is printed, and PESC_TEST_SEED repeats a run); the
 * comparison is by normalized error ||got - want|| / ||want||. Exit 0 pass, 1 fail. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "cpu/cpu_ops.h"

static uint64_t rng_state;
static int failures;

static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static void fill(float *x, size_t n, double scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((2.0 * uniform() - 1.0) * scale);
}

static void check(const char *what, const float *got, const double *want, size_t n, double tol)
{
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        diff += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        norm += want[i] * want[i];
    }
    double err = sqrt(diff) / (sqrt(norm) + 1e-30);
    int ok = err <= tol && isfinite(err);
    printf("%-4s %-44s normalized error %.2e (tolerance %.0e)\n", ok ? "ok" : "FAIL", what, err,
           tol);
    failures += !ok;
}

/* Each test allocates on the backend (host memory on the CPU backend, so the pointers are
 * readable here) and frees what it allocated. */
static float *alloc_floats(pesc_backend *b, size_t n)
{
    pesc_error err;
    float *p = backend_alloc(b, n * sizeof(float), &err);
    if (!p) {
        fprintf(stderr, "%s\n", err.msg);
        exit(99);
    }
    return p;
}

static void test_matmul(pesc_backend *b, int N, int C, int OC, int with_bias)
{
    float *x = alloc_floats(b, (size_t)N * C), *w = alloc_floats(b, (size_t)OC * C);
    float *bias = alloc_floats(b, (size_t)OC), *out = alloc_floats(b, (size_t)N * OC);
    double *want = malloc((size_t)N * OC * sizeof *want);
    fill(x, (size_t)N * C, 1.0);
    fill(w, (size_t)OC * C, 0.5);
    fill(bias, (size_t)OC, 1.0);
    matmul_forward(b, out, x, w, with_bias ? bias : NULL, N, C, OC);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = with_bias ? bias[o] : 0.0;
            for (int c = 0; c < C; c++)
                s += (double)x[(size_t)n * C + c] * w[(size_t)o * C + c];
            want[(size_t)n * OC + o] = s;
        }
    char name[80];
    snprintf(name, sizeof name, "matmul_forward %dx%d @ %dx%d%s", N, C, OC, C,
             with_bias ? " + bias" : "");
    check(name, out, want, (size_t)N * OC, 1e-6);
    free(want);
    backend_free(b, x); backend_free(b, w); backend_free(b, bias); backend_free(b, out);
}

/* cpu_gemm of one row (a generated token's products, run as matrix-vector products) in every
 * transposition, against double sums: C (1, N) = 0.5 op(A) op(B) + 0.25 C, N x K past the
 * size that splits across threads */
static void test_gemm_row(void)
{
    enum { N = 700, K = 400 };
    float *a = malloc((size_t)K * 3 * sizeof *a), *bm = malloc((size_t)N * K * sizeof *bm);
    float *c = malloc(N * sizeof *c);
    double *want = malloc(N * sizeof *want);
    fill(a, (size_t)K * 3, 1.0);
    fill(bm, (size_t)N * K, 1.0);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = ta ? 3 : K;   /* op(A) = A^T: A (K, 1) in a column of a (K, 3) */
            for (int n = 0; n < N; n++) {
                c[n] = (float)n / N;
                double sum = 0.0;
                for (int k = 0; k < K; k++)
                    sum += (double)a[ta ? (size_t)k * lda : (size_t)k] *
                           bm[tb ? (size_t)n * K + k : (size_t)k * N + n];
                want[n] = 0.5 * sum + 0.25 * c[n];
            }
            cpu_gemm(ta, tb, 1, N, K, 0.5f, a, lda, bm, tb ? K : N, 0.25f, c, N);
            char name[64];
            snprintf(name, sizeof name, "cpu_gemm of one row, trans %d %d", ta, tb);
            check(name, c, want, N, 1e-6);
        }
    free(a); free(bm); free(c); free(want);
}

static void test_embedding(pesc_backend *b, int N, int V, int C)
{
    float *table = alloc_floats(b, (size_t)V * C), *out = alloc_floats(b, (size_t)N * C);
    int32_t *tokens = (int32_t *)alloc_floats(b, (size_t)N);
    double *want = malloc((size_t)N * C * sizeof *want);
    fill(table, (size_t)V * C, 1.0);
    for (int n = 0; n < N; n++)
        tokens[n] = (int32_t)(uniform() * V) % V;
    embedding_forward(b, out, tokens, table, N, C);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            want[(size_t)n * C + c] = table[(size_t)tokens[n] * C + c];
    check("embedding_forward", out, want, (size_t)N * C, 0.0);
    free(want);
    backend_free(b, table); backend_free(b, out); backend_free(b, tokens);
}

static void test_rmsnorm(pesc_backend *b, int N, int C, float eps, float offset)
{
    float *x = alloc_floats(b, (size_t)N * C), *w = alloc_floats(b, (size_t)C);
    float *out = alloc_floats(b, (size_t)N * C), *rstd = alloc_floats(b, (size_t)N);
    double *want = malloc((size_t)N * C * sizeof *want), *want_rstd = malloc(N * sizeof(double));
    fill(x, (size_t)N * C, 3.0);
    fill(w, (size_t)C, 2.0);
    rmsnorm_forward(b, out, rstd, x, w, offset, N, C, eps);
    for (int n = 0; n < N; n++) {
        double ss = 0.0;
        for (int c = 0; c < C; c++)
            ss += (double)x[(size_t)n * C + c] * x[(size_t)n * C + c];
        double r = 1.0 / sqrt(ss / C + eps);
        want_rstd[n] = r;
        for (int c = 0; c < C; c++)
            want[(size_t)n * C + c] = ((double)offset + w[c]) * x[(size_t)n * C + c] * r;
    }
    check("rmsnorm_forward", out, want, (size_t)N * C, 1e-6);
    check("rmsnorm_forward rstd", rstd, want_rstd, (size_t)N, 1e-6);
    free(want); free(want_rstd);
    backend_free(b, x); backend_free(b, w); backend_free(b, out); backend_free(b, rstd);
}

/* R of each head's D values rotated (R < D: a partial rotary, the rest passing through), cos
 * and sin times scale (longrope's attention factor); at random positions up to 4096, or, with
 * rows, at positions 0..N/rows-1 in each of rows rows (a batch: the CPU turns repeated
 * positions from a table) */
static void test_rope(pesc_backend *b, int N, int H, int D, int R, float scale, int rows)
{
    size_t n = (size_t)N * H * D;
    float *x = alloc_floats(b, n), *out = alloc_floats(b, n), *freq = alloc_floats(b, R / 2);
    int32_t *pos = (int32_t *)alloc_floats(b, (size_t)N);
    double *want = malloc(n * sizeof *want);
    fill(x, n, 1.0);
    for (int i = 0; i < R / 2; i++)
        freq[i] = (float)pow(10000.0, -2.0 * i / R);
    for (int t = 0; t < N; t++)
        pos[t] = rows ? t % (N / rows) : (int32_t)(uniform() * 4096);
    rope_forward(b, out, x, pos, freq, N, H, D, R, scale);
    for (int t = 0; t < N; t++)
        for (int h = 0; h < H; h++)
            for (int d = 0; d < D; d++) {
                /* rotate_half: (-x2, x1); out = x*cos + rotate_half(x)*sin */
                const float *row = x + ((size_t)t * H + h) * D;
                int i = d % (R / 2);
                double angle = (double)pos[t] * freq[i];
                double rotated = d < R / 2 ? -row[d + R / 2] : row[d - R / 2];
                want[((size_t)t * H + h) * D + d] =
                    d < R ? scale * (row[d] * cos(angle) + rotated * sin(angle)) : row[d];
            }
    char name[80];
    snprintf(name, sizeof name, "rope_forward%s%s", R < D ? ", partial" : "",
             rows ? ", a batch's positions" : "");
    check(name, out, want, n, 1e-6);
    rope_forward(b, x, x, pos, freq, N, H, D, R, scale);   /* in place, as the model uses it */
    snprintf(name + strlen(name), sizeof name - strlen(name), ", in place");
    check(name, x, want, n, 1e-6);
    free(want);
    backend_free(b, x); backend_free(b, out); backend_free(b, freq); backend_free(b, pos);
}

/* Gemma 2's softcapping, cap tanh(y / cap), where cap > 0 */
static double capped(double y, float cap)
{
    return cap > 0.0f ? cap * tanh(y / cap) : y;
}

/* Naive attention with an explicit score vector and a separate softmax pass. */
/* packed: rows hold documents starting every 5 tokens (seg_start), attention stays inside;
 * cap > 0: scores capped (Gemma 2's cap tanh(s / cap)). */
static void test_attention(pesc_backend *b, int B, int T, int Hq, int Hkv, int D, int window,
                           int packed, float cap)
{
    int32_t *seg = packed ? (int32_t *)alloc_floats(b, (size_t)B * T) : NULL;
    for (int i = 0; packed && i < B * T; i++)
        seg[i] = (i % T) / 5 * 5;
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    float *q = alloc_floats(b, nq), *k = alloc_floats(b, nkv), *v = alloc_floats(b, nkv);
    float *out = alloc_floats(b, nq), *lse = alloc_floats(b, (size_t)B * Hq * T);
    double *want = calloc(nq, sizeof *want), *want_lse = malloc((size_t)B * Hq * T * sizeof(double));
    double *scores = malloc((size_t)T * sizeof *scores);
    fill(q, nq, 2.0);
    fill(k, nkv, 2.0);
    fill(v, nkv, 1.0);
    attention_forward(b, out, lse, q, k, v, B, T, Hq, Hkv, D, window, cap, seg);
    for (int bb = 0; bb < B; bb++)
        for (int h = 0; h < Hq; h++)
            for (int t = 0; t < T; t++) {
                int kvh = h / (Hq / Hkv);
                const float *qr = q + (((size_t)bb * T + t) * Hq + h) * D;
                double m = -INFINITY, sum = 0.0;
                for (int s = 0; s < T; s++) {
                    int visible = s <= t && (window <= 0 || t - s < window) &&
                                  (!seg || s >= seg[(size_t)bb * T + t]);
                    scores[s] = -INFINITY;
                    if (!visible)
                        continue;
                    const float *kr = k + (((size_t)bb * T + s) * Hkv + kvh) * D;
                    double dot = 0.0;
                    for (int d = 0; d < D; d++)
                        dot += (double)qr[d] * kr[d];
                    scores[s] = capped(dot / sqrt((double)D), cap);
                    m = scores[s] > m ? scores[s] : m;
                }
                for (int s = 0; s < T; s++)
                    sum += scores[s] == -INFINITY ? 0.0 : exp(scores[s] - m);
                double *o = want + (((size_t)bb * T + t) * Hq + h) * D;
                for (int s = 0; s < T; s++) {
                    if (scores[s] == -INFINITY)
                        continue;
                    double p = exp(scores[s] - m) / sum;
                    const float *vr = v + (((size_t)bb * T + s) * Hkv + kvh) * D;
                    for (int d = 0; d < D; d++)
                        o[d] += p * vr[d];
                }
                want_lse[((size_t)bb * Hq + h) * T + t] = m + log(sum);
            }
    char name[96];
    snprintf(name, sizeof name, "attention_forward B%d T%d Hq%d Hkv%d D%d window %d%s%s", B, T,
             Hq, Hkv, D, window, packed ? " packed" : "", cap > 0.0f ? " softcap" : "");
    check(name, out, want, nq, 1e-6);
    check("attention_forward lse", lse, want_lse, (size_t)B * Hq * T, 1e-6);
    free(want); free(want_lse); free(scores);
    backend_free(b, q); backend_free(b, k); backend_free(b, v);
    backend_free(b, out); backend_free(b, lse); backend_free(b, seg);
}

/* One new token of each of n sequences in slots of a cache (attention_step_forward): its key
 * and value land in its slot's row past[i], and its query attends to rows 0 .. past[i] there,
 * as double loops over the slot find (slots out of order, one of them left alone). */
static void test_attention_step(pesc_backend *b, int n, int Hq, int Hkv, int D, int window,
                                float cap)
{
    enum { SLOTS = 5, ROWS = 40 };
    int row = Hkv * D, slot_of[] = {3, 0, 4, 1}, past_of[] = {0, 17, 39, 6};
    size_t nq = (size_t)n * Hq * D, cache = (size_t)SLOTS * ROWS * row;
    float *q = alloc_floats(b, nq), *k = alloc_floats(b, (size_t)n * row);
    float *v = alloc_floats(b, (size_t)n * row), *out = alloc_floats(b, nq);
    float *kc = alloc_floats(b, cache), *vc = alloc_floats(b, cache);
    int32_t *slots = (int32_t *)alloc_floats(b, (size_t)n);
    int32_t *past = (int32_t *)alloc_floats(b, (size_t)n);
    double *want = calloc(nq, sizeof *want), *scores = malloc(ROWS * sizeof *scores);
    fill(q, nq, 2.0);
    fill(k, (size_t)n * row, 2.0);
    fill(v, (size_t)n * row, 1.0);
    fill(kc, cache, 2.0);
    fill(vc, cache, 1.0);
    for (int i = 0; i < n; i++) {
        slots[i] = slot_of[i];
        past[i] = past_of[i];
    }
    attention_step_forward(b, out, q, k, v, kc, vc, slots, past, n, ROWS, Hq, Hkv, D, window,
                           cap);
    int stored = 1;
    for (int i = 0; i < n; i++) {
        size_t at = ((size_t)slots[i] * ROWS + past[i]) * row;
        stored &= memcmp(kc + at, k + (size_t)i * row, (size_t)row * sizeof *k) == 0 &&
                  memcmp(vc + at, v + (size_t)i * row, (size_t)row * sizeof *v) == 0;
        for (int h = 0; h < Hq; h++) {
            const float *qr = q + ((size_t)i * Hq + h) * D;
            const float *ks = kc + (size_t)slots[i] * ROWS * row + (size_t)(h / (Hq / Hkv)) * D;
            const float *vs = vc + (ks - kc);
            double m = -INFINITY, sum = 0.0;
            for (int r = 0; r <= past[i]; r++) {
                scores[r] = -INFINITY;
                if (window > 0 && past[i] - r >= window)
                    continue;
                double dot = 0.0;
                for (int d = 0; d < D; d++)
                    dot += (double)qr[d] * ks[(size_t)r * row + d];
                scores[r] = capped(dot / sqrt((double)D), cap);
                m = scores[r] > m ? scores[r] : m;
            }
            for (int r = 0; r <= past[i]; r++)
                sum += scores[r] == -INFINITY ? 0.0 : exp(scores[r] - m);
            double *o = want + ((size_t)i * Hq + h) * D;
            for (int r = 0; r <= past[i]; r++)
                for (int d = 0; scores[r] != -INFINITY && d < D; d++)
                    o[d] += exp(scores[r] - m) / sum * vs[(size_t)r * row + d];
        }
    }
    char name[96];
    snprintf(name, sizeof name, "attention_step_forward n%d Hq%d Hkv%d D%d window %d%s", n, Hq,
             Hkv, D, window, cap > 0.0f ? " softcap" : "");
    check(name, out, want, nq, 1e-6);
    printf("%-4s %s: each key and value in its slot's row\n", stored ? "ok" : "FAIL", name);
    failures += !stored;
    free(want); free(scores);
    backend_free(b, q); backend_free(b, k); backend_free(b, v); backend_free(b, out);
    backend_free(b, kc); backend_free(b, vc); backend_free(b, slots); backend_free(b, past);
}

/* NEFTune's noise: within magnitude of what was there, mean 0 and variance magnitude^2 / 3 over
 * n draws; the same again from the seed, other draws from another */
static void test_add_uniform(pesc_backend *b, size_t n)
{
    float *x = alloc_floats(b, n), *y = alloc_floats(b, n), *z = alloc_floats(b, n);
    fill(x, n, 1.0);
    memcpy(y, x, n * sizeof *y);
    memcpy(z, x, n * sizeof *z);
    vector_add_uniform(b, y, n, 0.25f, 42);
    vector_add_uniform(b, z, n, 0.25f, 42);
    double sum = 0.0, sumsq = 0.0, worst = 0.0;
    int same = memcmp(y, z, n * sizeof *y) == 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)y[i] - x[i];
        sum += d;
        sumsq += d * d;
        worst = fmax(worst, fabs(d));
    }
    vector_add_uniform(b, z, n, 0.25f, 43);
    int other = memcmp(y, z, n * sizeof *y) != 0;
    double mean = sum / n, var = sumsq / n - mean * mean, want = 0.25 * 0.25 / 3;
    int ok = same && other && worst <= 0.25 + 1e-6 && fabs(mean) < 4 * 0.25 / sqrt(3.0 * n) &&
             fabs(var - want) < 0.05 * want;
    printf("%-4s vector_add_uniform: |noise| <= %.3f, mean %.1e, variance %.5f (want %.5f), "
           "a seed's draws again\n", ok ? "ok" : "FAIL", worst, mean, var, want);
    failures += !ok;
    backend_free(b, x); backend_free(b, y); backend_free(b, z);
}

static void test_elementwise(pesc_backend *b, size_t n)
{
    float *g = alloc_floats(b, n), *u = alloc_floats(b, n), *out = alloc_floats(b, n);
    double *want = malloc(n * sizeof *want);
    fill(g, n, 6.0);
    fill(u, n, 2.0);
    swiglu_forward(b, out, g, u, n);
    for (size_t i = 0; i < n; i++)
        want[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    check("swiglu_forward", out, want, n, 1e-6);
    geglu_forward(b, out, g, u, n);
    for (size_t i = 0; i < n; i++) {   /* GELU's tanh approximation, as PyTorch writes it */
        double x = g[i];
        want[i] = 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))) * u[i];
    }
    check("geglu_forward", out, want, n, 1e-6);
    residual_forward(b, out, g, u, n);
    for (size_t i = 0; i < n; i++)
        want[i] = (double)g[i] + u[i];
    check("residual_forward", out, want, n, 1e-7);
    /* sums of squares of consecutive chunks: each exactly vector_sumsq of its chunk */
    enum { CHUNKS = 7 };
    double sums[CHUNKS];
    size_t chunk = n / CHUNKS;
    vector_sumsq_chunks(b, sums, g, chunk, CHUNKS);   /* the CPU's memory is the host's */
    int same = 1;
    for (int i = 0; i < CHUNKS; i++)
        same &= sums[i] == vector_sumsq(b, g + (size_t)i * chunk, chunk) && sums[i] > 0.0;
    printf("%-4s vector_sumsq_chunks: each chunk's vector_sumsq\n", same ? "ok" : "FAIL");
    failures += !same;
    free(want);
    backend_free(b, g); backend_free(b, u); backend_free(b, out);
}

/* adamw_update over 3 steps against torch.optim.AdamW's formula in double; the update it
 * writes to delta is exactly before - after, and asking for it changes nothing else; a
 * step with a gradient scale (clipping) is the step on gradients scaled first. */
static void test_adamw(pesc_backend *b, size_t n)
{
    float *p = alloc_floats(b, n), *q = alloc_floats(b, n), *g = alloc_floats(b, n);
    float *m = alloc_floats(b, n), *v = alloc_floats(b, n), *m2 = alloc_floats(b, n);
    float *v2 = alloc_floats(b, n), *delta = alloc_floats(b, n), *before = alloc_floats(b, n);
    float *g2 = alloc_floats(b, n);
    double *want = malloc(n * sizeof *want), *wm = malloc(n * sizeof *wm);
    double *wv = malloc(n * sizeof *wv);
    fill(p, n, 1.0);
    memcpy(q, p, n * sizeof *q);
    vector_zero(b, m, n), vector_zero(b, v, n), vector_zero(b, m2, n), vector_zero(b, v2, n);
    for (size_t i = 0; i < n; i++)
        want[i] = p[i], wm[i] = wv[i] = 0.0;
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    int exact = 1, same = 1;
    for (int step = 1; step <= 3; step++) {
        fill(g, n, 1.0);
        float clip = step == 2 ? 0.3f : 1.0f;
        memcpy(g2, g, n * sizeof *g2);
        vector_scale(b, g2, clip, n);
        memcpy(before, p, n * sizeof *before);
        adamw_update(b, p, g, clip, m, v, delta, n, (float)lr, (float)b1, (float)b2, (float)eps,
                     (float)wd, step);
        adamw_update(b, q, g2, 1.0f, m2, v2, NULL, n, (float)lr, (float)b1, (float)b2,
                     (float)eps, (float)wd, step);
        for (size_t i = 0; i < n; i++) {
            exact &= delta[i] == before[i] - p[i];
            same &= p[i] == q[i] && m[i] == m2[i] && v[i] == v2[i];
            wm[i] = b1 * wm[i] + (1 - b1) * g2[i];
            wv[i] = b2 * wv[i] + (1 - b2) * (double)g2[i] * g2[i];
            double denom = sqrt(wv[i]) / sqrt(1 - pow(b2, step)) + eps;
            want[i] = want[i] * (1 - lr * wd) - lr / (1 - pow(b1, step)) * wm[i] / denom;
        }
    }
    check("adamw_update params (3 steps)", p, want, n, 1e-6);
    printf("%-4s adamw_update delta: before - after, exactly\n", exact ? "ok" : "FAIL");
    printf("%-4s adamw_update with delta and a gradient scale: the same params and moments as "
           "without delta on gradients scaled first\n", same ? "ok" : "FAIL");
    failures += !exact + !same;
    free(want); free(wm); free(wv);
    backend_free(b, p); backend_free(b, q); backend_free(b, g); backend_free(b, m);
    backend_free(b, v); backend_free(b, m2); backend_free(b, v2); backend_free(b, delta);
    backend_free(b, before); backend_free(b, g2);
}

/* dropout_mask: zeros at rate p (within 5 standard deviations), every kept value exactly
 * 1/(1-p), the same seed the same mask, another seed another, neighbours independent (pairs of
 * zeros at rate p^2), and p = 0 keeps everything at 1. */
static void test_dropout(pesc_backend *b, size_t n, float p)
{
    float *m1 = alloc_floats(b, n), *m2 = alloc_floats(b, n), *m3 = alloc_floats(b, n);
    uint64_t seed = (uint64_t)(uniform() * 9007199254740992.0);
    dropout_mask(b, m1, n, p, seed);
    dropout_mask(b, m2, n, p, seed);
    dropout_mask(b, m3, n, p, seed + 1);
    float keep = 1.0f / (1.0f - p);
    size_t zeros = 0, pairs = 0, odd = 0, differ = 0;
    for (size_t i = 0; i < n; i++) {
        zeros += m1[i] == 0.0f;
        odd += m1[i] != 0.0f && m1[i] != keep;
        pairs += i > 0 && m1[i] == 0.0f && m1[i - 1] == 0.0f;
        differ += m1[i] != m3[i];
    }
    double rate = (double)zeros / n, pair_rate = (double)pairs / (n - 1);
    double sigma = sqrt(p * (1.0 - p) / n), pair_sigma = sqrt((double)p * p / n);
    int ok = fabs(rate - p) < 5 * sigma && fabs(pair_rate - (double)p * p) < 5 * pair_sigma + 1e-4 &&
             odd == 0 && memcmp(m1, m2, n * sizeof *m1) == 0 && differ > n / 20;
    dropout_mask(b, m2, n, 0.0f, seed);
    for (size_t i = 0; i < n; i++)
        ok = ok && m2[i] == 1.0f;
    printf("%-4s dropout_mask p %.2f: drop rate %.4f, zero pairs %.4f, reproducible\n",
           ok ? "ok" : "FAIL", p, rate, pair_rate);
    failures += !ok;
    backend_free(b, m1); backend_free(b, m2); backend_free(b, m3);
}

/* cap > 0: the logits capped first (Gemma 2's final_logit_softcapping) */
static void test_crossentropy(pesc_backend *b, int N, int V, float cap)
{
    float *logits = alloc_floats(b, (size_t)N * V), *losses = alloc_floats(b, (size_t)N);
    int32_t *targets = (int32_t *)alloc_floats(b, (size_t)N);
    double *want = malloc((size_t)N * sizeof *want);
    fill(logits, (size_t)N * V, 8.0);
    for (int n = 0; n < N; n++)
        targets[n] = n % 5 == 0 ? -100 : (int32_t)(uniform() * V) % V;
    crossentropy_forward(b, losses, logits, targets, N, V, cap);
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) {
            want[n] = 0.0;
            continue;
        }
        double sum = 0.0;
        for (int i = 0; i < V; i++)
            sum += exp(capped(logits[(size_t)n * V + i], cap));
        want[n] = log(sum) - capped(logits[(size_t)n * V + targets[n]], cap);
    }
    check(cap > 0.0f ? "crossentropy_forward (every 5th ignored), softcap"
                     : "crossentropy_forward (every 5th ignored)", losses, want, (size_t)N, 1e-6);
    free(want);
    backend_free(b, logits); backend_free(b, losses); backend_free(b, targets);
}

/* argmax_rows against a scan written here: rows of random values, rows whose largest value
 * comes twice (the first counts) or late in the row, a row with NaN first and among the
 * values; and -1 for a row all NaN, a row of -inf and a row with +inf among its values
 * (no finite largest: a model that overflows). */
static void test_argmax_rows(pesc_backend *b, int rows, int cols)
{
    float *x = alloc_floats(b, (size_t)rows * cols);
    int32_t *out = (int32_t *)alloc_floats(b, (size_t)rows);
    fill(x, (size_t)rows * cols, 4.0);
    for (int r = 0; r < rows; r++) {
        float *row = x + (size_t)r * cols;
        int a = (int)(uniform() * cols) % cols, c = (int)(uniform() * cols) % cols;
        switch (r % 7) {
        case 1: row[a] = row[c] = 9.0f; break;                 /* a tie */
        case 2: row[cols - 1] = 9.0f; break;                   /* the last */
        case 3: row[0] = NAN; row[a] = NAN; row[c] = 9.0f; break;
        case 4: for (int i = 0; i < cols; i++) row[i] = NAN; break;
        case 5: for (int i = 0; i < cols; i++) row[i] = -INFINITY; break;
        case 6: row[a] = INFINITY; break;
        }
    }
    argmax_rows(b, out, x, rows, cols);
    int wrong = 0;
    for (int r = 0; r < rows; r++) {
        const float *row = x + (size_t)r * cols;
        int best = -1;
        for (int i = 0; i < cols; i++)
            if (!isnan(row[i]) && (best < 0 || row[i] > row[best]))
                best = i;
        wrong += out[r] != (best >= 0 && isfinite(row[best]) ? best : -1);
    }
    printf("%-4s argmax_rows %d x %-32d %d of %d rows wrong\n", wrong ? "FAIL" : "ok", rows, cols,
           wrong, rows);
    failures += wrong > 0;
    backend_free(b, x); backend_free(b, out);
}

/* ulps between a float and the C library's double-rounded value (the units of the result's
 * binade; below FLT_MIN, of the denormals) */
static double ulps(float got, double want)
{
    int e;
    frexp(want, &e);
    return fabs((double)got - want) / ldexp(1.0, (e < -125 ? -125 : e) - 24);
}

/* The float whose bit pattern is bits: the sweeps below take every 97th (about 44 million,
 * each sign and binade) */
static float float_of_bits(uint32_t bits)
{
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* cpu_expf(x) against e^x: the worst ulps so far, and a count of wrong infinities and NaNs */
static void expf_check(float x, double *worst, float *worst_x, long *wrong)
{
    float got = cpu_expf(x);
    double want = exp((double)x);
    if (isnan(x))
        *wrong += !isnan(got);
    else if (want > 3.4028234663852886e38)
        *wrong += !(isinf(got) && got > 0);
    else if (ulps(got, want) > *worst)
        *worst = ulps(got, want), *worst_x = x;
}

/* cpu_expf: every 97th float (about 44 million, each sign and binade) and the edges: within
 * 1.5 ulp of e^x, infinity past ln(FLT_MAX), NaN for NaN. */
static void test_expf(void)
{
    static const float edges[] = {0.0f, -0.0f, 1.0f, -1.0f, 88.7228394f, 88.72284f, 88.7f,
                                  -87.3365f, -87.34f, -103.9f, -103.97f, -104.0f, -200.0f,
                                  1e-30f, -1e-30f, INFINITY, -INFINITY, 1e30f, -1e30f, NAN};
    double worst = 0.0;
    float worst_x = 0.0f;
    long wrong = 0, count = 0;
    for (uint64_t u = 0; u < 1ull << 32; u += 97, count++) {
        float x = float_of_bits((uint32_t)u);
        expf_check(x, &worst, &worst_x, &wrong);
    }
    for (size_t i = 0; i < sizeof edges / sizeof *edges; i++, count++)
        expf_check(edges[i], &worst, &worst_x, &wrong);
    int ok = worst <= 1.5 && !wrong;
    printf("%-4s cpu_expf, %ld floats: worst %.2f ulp (at %.9g), %ld wrong infinities or NaNs\n",
           ok ? "ok" : "FAIL", count, worst, (double)worst_x, wrong);
    failures += !ok;
}

/* cpu_tanhf (Gemma 2's softcaps on the CPU): every 97th float against double tanh, within
 * 2 ulp; +-1 at the infinities, NaN for NaN. */
static void test_tanhf(void)
{
    double worst = 0.0;
    float worst_x = 0.0f;
    long count = 0, wrong = 0;
    for (uint64_t u = 0; u < 1ull << 32; u += 97, count++) {
        float x = float_of_bits((uint32_t)u);
        float got = cpu_tanhf(x);
        if (isnan(x) || isinf(x)) {
            wrong += isnan(x) ? !isnan(got) : got != (x > 0 ? 1.0f : -1.0f);
            continue;
        }
        double e = ulps(got, tanh((double)x));
        if (e > worst)
            worst = e, worst_x = x;
    }
    int ok = worst <= 2.0 && !wrong;
    printf("%-4s cpu_tanhf, %ld floats: worst %.2f ulp (at %.9g), %ld wrong at the infinities "
           "or NaN\n", ok ? "ok" : "FAIL", count, worst, (double)worst_x, wrong);
    failures += !ok;
}

/* cpu_normal_cdf and cpu_gelu_grad (the CPU adapters' GELU and its derivative): every 97th
 * float against double erfc and exp: Phi within 6e-7 relative where Phi(x) >= 1e-30 and within
 * 3e-7 everywhere, 0 and 1 at the infinities, NaN for NaN; GELU' within 4e-7. */
static void test_normal_cdf(void)
{
    double worst_rel = 0.0, worst_abs = 0.0, worst_grad = 0.0;
    float rel_x = 0.0f, grad_x = 0.0f;
    long count = 0, wrong = 0;
    for (uint64_t u = 0; u < 1ull << 32; u += 97, count++) {
        float x = float_of_bits((uint32_t)u);
        float got = cpu_normal_cdf(x);
        if (isnan(x) || isinf(x)) {
            wrong += isnan(x) ? !isnan(got) : got != (x > 0 ? 1.0f : 0.0f);
            continue;
        }
        double want = 0.5 * erfc(-(double)x / sqrt(2.0)), err = fabs(got - want);
        worst_abs = err > worst_abs ? err : worst_abs;
        if (want >= 1e-30 && err / want > worst_rel)
            worst_rel = err / want, rel_x = x;
        double grad = want + (double)x * exp(-0.5 * (double)x * x) / sqrt(2.0 * M_PI);
        double grad_err = fabs(cpu_gelu_grad(x) - grad);
        if (grad_err > worst_grad)
            worst_grad = grad_err, grad_x = x;
    }
    int ok = worst_rel <= 6e-7 && worst_abs <= 3e-7 && worst_grad <= 4e-7 && !wrong;
    printf("%-4s cpu_normal_cdf, %ld floats: worst %.2g relative (at %.9g), %.2g absolute, %ld "
           "wrong at the infinities or NaN; cpu_gelu_grad worst %.2g (at %.9g)\n",
           ok ? "ok" : "FAIL", count, worst_rel, (double)rel_x, worst_abs, wrong, worst_grad,
           (double)grad_x);
    failures += !ok;
}

int main(void)
{
    const char *seed_env = getenv("PESC_TEST_SEED");
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 10) : (uint64_t)time(NULL) ^ (uint64_t)clock();
    rng_state = seed ? seed : 88172645463325252ull;
    printf("seed %llu (PESC_TEST_SEED=%llu repeats this run)\n", (unsigned long long)seed,
           (unsigned long long)seed);
    pesc_error err;
    pesc_backend *b = backend_new("cpu", &err);
    if (!b) {
        fprintf(stderr, "%s\n", err.msg);
        return 99;
    }
    test_expf();
    test_normal_cdf();
    test_tanhf();
    test_matmul(b, 37, 64, 48, 0);
    test_matmul(b, 5, 130, 257, 1);
    test_matmul(b, 1, 400, 700, 1);   /* one row: matrix-vector products */
    test_gemm_row();
    test_embedding(b, 29, 50, 24);
    test_rmsnorm(b, 17, 96, 1e-5f, 0.0f);
    test_rmsnorm(b, 17, 96, 1e-5f, 1.0f);   /* Gemma's (1 + w) */
    test_rope(b, 13, 3, 32, 32, 1.0f, 0);
    test_rope(b, 13, 3, 32, 24, 1.19f, 0);   /* Phi-4-mini's 3/4, and its longrope's factor */
    test_rope(b, 24, 3, 32, 32, 1.0f, 4);
    test_rope(b, 24, 3, 32, 24, 1.19f, 3);
    test_attention(b, 2, 19, 4, 2, 16, 0, 0, 0.0f);
    test_attention(b, 1, 23, 6, 1, 8, 5, 0, 0.0f);
    test_attention(b, 3, 7, 2, 2, 64, 0, 0, 0.0f);
    test_attention(b, 2, 150, 2, 1, 16, 0, 0, 0.0f);   /* several query blocks */
    test_attention(b, 2, 90, 4, 2, 8, 0, 1, 0.0f);
    test_attention(b, 1, 37, 2, 2, 8, 3, 1, 0.0f);
    test_attention(b, 2, 150, 4, 2, 16, 0, 0, 1.5f);   /* Gemma 2's softcap, biting */
    test_attention(b, 2, 90, 4, 2, 8, 7, 1, 0.7f);
    test_attention_step(b, 4, 4, 2, 16, 0, 0.0f);
    test_attention_step(b, 3, 6, 1, 8, 5, 0.0f);
    test_attention_step(b, 4, 4, 2, 16, 9, 1.5f);
    test_elementwise(b, 10007);
    test_add_uniform(b, 100003);
    test_crossentropy(b, 21, 300, 0.0f);
    test_crossentropy(b, 21, 300, 3.0f);
    test_argmax_rows(b, 37, 1000);
    test_argmax_rows(b, 12, 7);
    test_adamw(b, 10007);
    test_dropout(b, 1000003, 0.1f);
    test_dropout(b, 100003, 0.5f);
    backend_delete(b);
    printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
