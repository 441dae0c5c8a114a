/* test_cuda_ops — every CUDA op against its CPU twin (the specification) on fresh random
 * inputs. Both backends get the same inputs; outputs and accumulated gradients are compared
 * by normalized error: fp32 ops tightly, dense products within bf16 bounds (and tightly again
 * with PESC_CUDA_MATH=fp32). Attention runs on every path (PESC_CUDA_ATTENTION): fused
 * tightly, gemm tightly in fp32 (its layouts) and within tf32 and bf16 bounds, flash within
 * bf16 bounds. Exit 77 without a usable GPU. On the CPU emulator (tests/gpu/emu.sh) the
 * attention shapes of T ~ 2000 are left out unless PESC_TEST_LONG is set. */
#include <stdlib.h>
#include <string.h>

#include "gpu_test.h"
#include "moe_rows.h"

static pesc_backend *cpu, *gpu;

/* One tensor on both backends with the same contents; the CPU copy is host memory. */
typedef struct twin {
    void *c, *g;
    size_t bytes;
} twin;

static twin twin_alloc(size_t bytes)
{
    pesc_error err;
    twin t = {backend_alloc(cpu, bytes, &err), NULL, bytes};
    if (!t.c || !(t.g = backend_alloc(gpu, bytes, &err)))
        gpu_test_die(&err);
    return t;
}

static void twin_sync(twin t) { backend_upload(gpu, t.g, t.c, t.bytes); }

static twin twin_random(size_t n, double scale)
{
    twin t = twin_alloc(n * sizeof(float));
    float *x = t.c;
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((2.0 * gpu_test_uniform() - 1.0) * scale);
    twin_sync(t);
    return t;
}

static twin twin_ints(size_t n, int lo, int hi)
{
    twin t = twin_alloc(n * sizeof(int32_t));
    int32_t *x = t.c;
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (int32_t)(gpu_test_uniform() * (hi - lo + 1)) % (hi - lo + 1);
    twin_sync(t);
    return t;
}

static void twin_free(twin t)
{
    backend_free(cpu, t.c);
    backend_free(gpu, t.g);
}

#define F(t) ((float *)(t).c)
#define G(t) ((float *)(t).g)
#define FI(t) ((int32_t *)(t).c)
#define GI(t) ((int32_t *)(t).g)

static void compare(const char *what, twin t, double tol)
{
    size_t n = t.bytes / sizeof(float);
    float *got = malloc(t.bytes);
    backend_download(gpu, got, t.g, t.bytes);
    double e = gpu_test_error(got, F(t), n);
    char bound[48];
    snprintf(bound, sizeof bound, "normalized error, tolerance %.0e", tol);
    gpu_test_verdict(e <= tol && isfinite(e), what, e, bound);
    free(got);
}

/* bf16 math keeps the adapters' rows (gathered, pre, act) in bf16, in the first half of their
 * buffers: widened here, exactly, to compare with the CPU's floats. */
static int saved_in_bf16(void) { return strstr(backend_device(gpu), "rows in bf16") != NULL; }

/* The adapters' rows as the GPU lays them out (backend_adapter_starts): expert e's i-th pair
 * on row pesc_adapter_row(starts, block, e, i), the other rows up to starts[E] zeros. */
typedef struct rows_layout {
    const int *offsets, *starts;
    int E, block;
} rows_layout;

/* The adapters' tests of a phase in each kind of layout: perm's order, packed (no block), all
 * in a block, a block and rows after it. */
enum { PERM_ORDER, PACKED, BLOCK_ONLY, BLOCK_AND_REST };
static int layouts_seen[4];

/* The CPU's rows of width floats (perm's order) in the GPU's layout: starts[E] rows. */
static float *laid_out(const float *rows, rows_layout L, int width)
{
    float *out = calloc((size_t)L.starts[L.E] * width + 1, sizeof *out);
    for (int e = 0; e < L.E; e++)
        for (int i = 0; i < L.offsets[e + 1] - L.offsets[e]; i++)
            memcpy(out + (size_t)pesc_adapter_row(L.starts, L.block, e, i) * width,
                   rows + (size_t)(L.offsets[e] + i) * width, width * sizeof *out);
    return out;
}

/* A saved row buffer of the adapters against the CPU's rows, in the GPU's layout (the pad
 * rows must be zeros) and format (bf16 widened, exactly). */
static void compare_rows(const char *what, twin t, rows_layout L, int width, double tol)
{
    size_t n = (size_t)L.starts[L.E] * width;
    float *want = laid_out(F(t), L, width), *got = malloc(t.bytes);
    if (saved_in_bf16()) {
        uint16_t *bits = malloc(n * sizeof *bits + 2);
        backend_download(gpu, bits, t.g, n * sizeof *bits);
        for (size_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)bits[i] << 16;
            memcpy(&got[i], &u, sizeof u);
        }
        free(bits);
    } else {
        backend_download(gpu, got, t.g, n * sizeof *got);
    }
    double e = gpu_test_error(got, want, n);
    char bound[64];
    snprintf(bound, sizeof bound, "normalized error%s, tolerance %.0e",
             saved_in_bf16() ? " in bf16" : "", tol);
    gpu_test_verdict(e <= tol && isfinite(e), what, e, bound);
    free(want);
    free(got);
}

/* The CPU's rows on the GPU too, in its layout and format (bf16: rounded to nearest even, as
 * the device rounds). */
static void sync_rows(twin t, rows_layout L, int width)
{
    size_t n = (size_t)L.starts[L.E] * width;
    float *rows = laid_out(F(t), L, width);
    if (saved_in_bf16()) {
        uint16_t *bits = malloc(n * sizeof *bits + 2);
        for (size_t i = 0; i < n; i++) {
            float rounded = gpu_test_bf16(rows[i]);
            uint32_t u;
            memcpy(&u, &rounded, sizeof u);
            bits[i] = (uint16_t)(u >> 16);
        }
        backend_upload(gpu, t.g, bits, n * sizeof *bits);
        free(bits);
    } else {
        backend_upload(gpu, t.g, rows, n * sizeof *rows);
    }
    free(rows);
}

static void compare_ints(const char *what, twin t)
{
    size_t n = t.bytes / sizeof(int32_t), wrong = 0;
    int32_t *got = malloc(t.bytes);
    backend_download(gpu, got, t.g, t.bytes);
    for (size_t i = 0; i < n; i++)
        wrong += got[i] != FI(t)[i];
    gpu_test_verdict(wrong == 0, what, (double)wrong, "entries that differ");
    free(got);
}

/* The CUDA backend of a later phase (PESC_CUDA_MATH, PESC_CUDA_ATTENTION as set now). The first
 * phase found a usable GPU, so failing to start now is an error, not a skip: a device fault in
 * an earlier phase leaves the process's CUDA context unusable, and exit 77 would hide it. */
static void gpu_again(void)
{
    pesc_error err;
    if (!(gpu = backend_new("cuda", &err)))
        gpu_test_die(&err);
    printf("device: %s\n", backend_device(gpu));
}

/* Ends a phase: the backend's first failure, if any (a cuBLAS or CUDA error there otherwise
 * shows only as the zeros the later downloads gave), then the backend goes. */
static void gpu_finish(void)
{
    pesc_error err;
    if (backend_check(gpu, &err) != 0) {
        printf("FAIL %s\n", err.msg);
        gpu_test_failures++;
    }
    backend_delete(gpu);
}

/* On the emulator, whose cuBLAS groups what cuBLAS documents (fp32 operands in 32F and TF32,
 * bf16 operands with bf16 results), the experts' products of bf16 math group in bf16, on bf16
 * rows; fast-bf16's, of fp32 operands, in tf32 instead of running one an expert. */
static void check_grouped(const char *math)
{
    int bf16 = strcmp(math, "bf16") == 0;
    if (gpu_test_emulated)
        gpu_test_verdict(strstr(backend_device(gpu), bf16 ? "products (adapters grouped)"
                                                          : "(adapters grouped in tf32)") &&
                         saved_in_bf16() == bf16,
                         bf16 ? "the experts' products grouped in bf16, on bf16 rows"
                              : "the experts' products grouped in tf32, on fp32 rows", 0.0,
                         "device line");
}

/* PESC_CUDA_EXPERTS=mma: the device line says the experts' products run on the mma kernels; on
 * a GPU it may instead say why not (an older device, an mma that disagrees with the layout). */
static void check_experts_mma(void)
{
    const char *device = backend_device(gpu);
    int on = strstr(device, "(adapters grouped, mma kernels)") != NULL;
    /* refused only for a reason the device line gives: a GPU before sm_80, or one whose mma
     * disagrees with the layout */
    int why = strstr(device, "; cublas: mma kernels need sm_80") ||
              strstr(device, "; cublas: the device's mma disagreed");
    gpu_test_verdict(on || (!gpu_test_emulated && why),
                     on ? "the experts' products on the mma kernels"
                        : "the experts' mma kernels refused, the device line says why", 0.0,
                     "device line");
}

/* ---- dense products ---------------------------------------------------------------------- */

static void test_matmul(int N, int C, int OC, double tol, const char *tag)
{
    char name[96];
    twin x = twin_random((size_t)N * C, 1.0), w = twin_random((size_t)OC * C, 0.5);
    twin bias = twin_random(OC, 1.0), out = twin_random((size_t)N * OC, 1.0);
    twin dout = twin_random((size_t)N * OC, 1.0), dx = twin_random((size_t)N * C, 1.0);
    twin dw = twin_random((size_t)OC * C, 1.0), db = twin_random(OC, 1.0);
    matmul_forward(cpu, F(out), F(x), F(w), F(bias), N, C, OC);
    matmul_forward(gpu, G(out), G(x), G(w), G(bias), N, C, OC);
    snprintf(name, sizeof name, "%s matmul_forward %dx%d @ %dx%d + bias", tag, N, C, OC, C);
    compare(name, out, tol);
    matmul_backward(cpu, F(dx), F(dw), F(db), F(dout), F(x), F(w), N, C, OC);
    matmul_backward(gpu, G(dx), G(dw), G(db), G(dout), G(x), G(w), N, C, OC);
    snprintf(name, sizeof name, "%s matmul_backward dinp (accumulated)", tag);
    compare(name, dx, tol);
    snprintf(name, sizeof name, "%s matmul_backward dweight (accumulated)", tag);
    compare(name, dw, tol);
    snprintf(name, sizeof name, "%s matmul_backward dbias (accumulated)", tag);
    compare(name, db, 1e-5);
    twin_free(x); twin_free(w); twin_free(bias); twin_free(out);
    twin_free(dout); twin_free(dx); twin_free(dw); twin_free(db);
}

/* ---- bf16 math's operand copies ------------------------------------------------------------ */

/* out = inp W^T on both backends */
static void both_matmul(twin out, twin inp, twin w, int N, int C, int OC, size_t skip_rows)
{
    size_t at = skip_rows * (size_t)C;
    matmul_forward(cpu, F(out), F(inp) + at, F(w), NULL, N, C, OC);
    matmul_forward(gpu, G(out), G(inp) + at, G(w), NULL, N, C, OC);
}

/* The bf16 copies that products keep, or that RMSNorm and SwiGLU write, serve only while their
 * source holds: each stretch below rewrites a source between two products that read it (by a
 * product, by another op, by an upload), and a copy kept across it would give the old values.
 * Also a product reading rows inside a kept copy, and SwiGLU's two gradient copies at once. */
static void test_operand_copies(double tol)
{
    enum { N = 70, C = 96, OC = 80, K2 = 72 };
    twin x = twin_random((size_t)N * C, 1.0), z = twin_random((size_t)N * K2, 1.0);
    twin w1 = twin_random((size_t)OC * C, 0.5), w2 = twin_random((size_t)C * K2, 0.5);
    twin nw = twin_random(C, 1.0), rstd = twin_random(N, 1.0);
    twin y = twin_random((size_t)N * OC, 1.0), y2 = twin_random((size_t)N * OC, 1.0);
    twin a = twin_random((size_t)N * C, 2.0), b = twin_random((size_t)N * C, 1.0);
    twin act = twin_random((size_t)N * C, 1.0), da = twin_random((size_t)N * C, 1.0);
    twin db = twin_random((size_t)N * C, 1.0);
    rmsnorm_forward(cpu, F(act), F(rstd), F(x), F(nw), 0.0f, N, C, 1e-5f);
    rmsnorm_forward(gpu, G(act), G(rstd), G(x), G(nw), 0.0f, N, C, 1e-5f);
    both_matmul(y, act, w1, N, C, OC, 0);
    both_matmul(y2, act, w1, N - 9, C, OC, 9);
    compare("copies: a product on RMSNorm's output", y, tol);
    compare("copies: a product on rows inside it", y2, tol);
    both_matmul(y, x, w1, N, C, OC, 0);
    both_matmul(x, z, w2, N, K2, C, 0);   /* a product writes over x */
    both_matmul(y, x, w1, N, C, OC, 0);
    compare("copies: a product after another wrote its input", y, tol);
    swiglu_forward(cpu, F(act), F(a), F(b), (size_t)N * C);
    swiglu_forward(gpu, G(act), G(a), G(b), (size_t)N * C);
    vector_scale(cpu, F(act), -2.0f, (size_t)N * C);
    vector_scale(gpu, G(act), -2.0f, (size_t)N * C);
    both_matmul(y, act, w1, N, C, OC, 0);
    compare("copies: a product after an op rewrote SwiGLU's output", y, tol);
    both_matmul(y, x, w1, N, C, OC, 0);
    for (size_t i = 0; i < (size_t)N * C; i++)
        F(x)[i] = -F(x)[i];
    twin_sync(x);   /* an upload over x */
    both_matmul(y, x, w1, N, C, OC, 0);
    compare("copies: a product after an upload over its input", y, tol);
    swiglu_backward(cpu, F(da), F(db), F(b), F(a), F(x), (size_t)N * C);
    swiglu_backward(gpu, G(da), G(db), G(b), G(a), G(x), (size_t)N * C);
    both_matmul(y, da, w1, N, C, OC, 0);
    both_matmul(y2, db, w1, N, C, OC, 0);
    compare("copies: a product on SwiGLU's dgate", y, tol);
    compare("copies: a product on SwiGLU's dup", y2, tol);
    /* ops that write one range keep the copies of others: RMSNorm's backward writes dx's
     * copy, RoPE's backward (in place) its output's, over a copy of what was there; a
     * vector_zero over a copy's source drops it, and the copies of the rest stay */
    twin pos = twin_ints(N, 0, 4000), freq = twin_alloc((size_t)C / 4 * sizeof(float));
    for (int i = 0; i < C / 4; i++)
        F(freq)[i] = (float)pow(10000.0, -4.0 * i / C);
    twin_sync(freq);
    rmsnorm_backward(cpu, F(da), NULL, F(x), F(a), F(nw), 0.0f, F(rstd), N, C);
    rmsnorm_backward(gpu, G(da), NULL, G(x), G(a), G(nw), 0.0f, G(rstd), N, C);
    both_matmul(y, da, w1, N, C, OC, 0);
    compare("copies: a product on RMSNorm's dx", y, tol);
    both_matmul(y, act, w1, N, C, OC, 0);   /* act's copy, kept beside dx's */
    rope_backward(cpu, F(act), F(act), FI(pos), F(freq), N, 2, C / 2, C / 2, 1.0f);
    rope_backward(gpu, G(act), G(act), GI(pos), G(freq), N, 2, C / 2, C / 2, 1.0f);
    rope_backward(cpu, F(db), F(db), FI(pos), F(freq), N, 2, C / 2, C / 2, 1.0f);
    rope_backward(gpu, G(db), G(db), GI(pos), G(freq), N, 2, C / 2, C / 2, 1.0f);
    both_matmul(y, act, w1, N, C, OC, 0);
    both_matmul(y2, db, w1, N, C, OC, 0);
    compare("copies: a product on RoPE's backward, written over a copy", y, tol);
    compare("copies: ... and on the next one's", y2, tol);
    both_matmul(y, da, w1, N, C, OC, 0);
    compare("copies: ... and on RMSNorm's dx after them", y, tol);
    vector_zero(cpu, F(act), (size_t)N * C);
    vector_zero(gpu, G(act), (size_t)N * C);
    both_matmul(y, act, w1, N, C, OC, 0);
    compare("copies: a product after a vector_zero over its input", y, 0.0);
    twin_free(pos); twin_free(freq);
    twin_free(x); twin_free(z); twin_free(w1); twin_free(w2); twin_free(nw); twin_free(rstd);
    twin_free(y); twin_free(y2); twin_free(a); twin_free(b); twin_free(act); twin_free(da);
    twin_free(db);
}

/* ---- the trainables' bf16 values (backend_trainables) ----------------------------------- */

/* In bf16 math a product reads a trainable weight's bf16 values as the last update wrote them,
 * or an upload or a copy over them (which convert what they write); an update of part of
 * them makes them stale until the next whole one. */
static void test_trainables(double tol)
{
    enum { N = 50, C = 96, OC = 80 };
    size_t n = (size_t)OC * C;
    twin x = twin_random((size_t)N * C, 1.0), w = twin_random(n, 0.5);
    twin y = twin_random((size_t)N * OC, 1.0), g = twin_random(n, 1.0);
    twin m = twin_alloc(n * sizeof(float)), v = twin_alloc(n * sizeof(float));
    vector_zero(cpu, F(m), n), vector_zero(cpu, F(v), n);
    vector_zero(gpu, G(m), n), vector_zero(gpu, G(v), n);
    backend_trainables(gpu, G(w), n);
    both_matmul(y, x, w, N, C, OC, 0);
    compare("trainables: a product on them", y, tol);
    for (int step = 1; step <= 2; step++) {
        adamw_update(cpu, F(w), F(g), 1.0f, F(m), F(v), NULL, n, 0.05f, 0.9f, 0.999f, 1e-8f,
                     0.0f, step);
        adamw_update(gpu, G(w), G(g), 1.0f, G(m), G(v), NULL, n, 0.05f, 0.9f, 0.999f, 1e-8f,
                     0.0f, step);
    }
    both_matmul(y, x, w, N, C, OC, 0);
    compare("trainables: a product after two updates", y, tol);
    for (size_t i = 0; i < n; i += 3)
        F(w)[i] = -F(w)[i];
    twin_sync(w);
    both_matmul(y, x, w, N, C, OC, 0);
    compare("trainables: a product after an upload over them", y, tol);
    size_t half = n / 2 + 1;   /* the last rows and a part of one */
    for (size_t i = n - half; i < n; i++)
        F(w)[i] *= 1.5f;
    backend_upload(gpu, G(w) + (n - half), F(w) + (n - half), half * sizeof(float));
    backend_copy(gpu, G(w), G(x), 3 * sizeof(float));   /* a copy over the first three */
    memcpy(F(w), F(x), 3 * sizeof(float));
    both_matmul(y, x, w, N, C, OC, 0);
    compare("trainables: ... after an upload and a copy over parts", y, tol);
    adamw_update(cpu, F(w), F(g), 1.0f, F(m), F(v), NULL, n, 0.05f, 0.9f, 0.999f, 1e-8f, 0.0f, 3);
    adamw_update(gpu, G(w), G(g), 1.0f, G(m), G(v), NULL, n, 0.05f, 0.9f, 0.999f, 1e-8f, 0.0f, 3);
    adamw_update(cpu, F(w), F(g), 2.0f, F(m), F(v), NULL, n / 2, 0.5f, 0.9f, 0.999f, 1e-8f, 0.0f,
                 4);
    adamw_update(gpu, G(w), G(g), 2.0f, G(m), G(v), NULL, n / 2, 0.5f, 0.9f, 0.999f, 1e-8f, 0.0f,
                 4);
    both_matmul(y, x, w, N, C, OC, 0);
    compare("trainables: a product after an update of part of them", y, tol);
    backend_trainables(gpu, NULL, 0);
    twin_free(x); twin_free(w); twin_free(y); twin_free(g); twin_free(m); twin_free(v);
}

/* ---- activations in the backend's format (backend_alloc_compact) -------------------------- */

/* n floats of compact memory on both backends, random values of the given scale that both
 * hold exactly (bf16 values where the GPU keeps bf16). */
static twin twin_compact(size_t n, double scale)
{
    pesc_error err;
    twin t = {backend_alloc_compact(cpu, n, &err), NULL, n * sizeof(float)};
    if (!t.c || !(t.g = backend_alloc_compact(gpu, n, &err)))
        gpu_test_die(&err);
    for (size_t i = 0; i < n; i++)
        F(t)[i] = gpu_test_bf16((float)((2.0 * gpu_test_uniform() - 1.0) * scale));
    twin_sync(t);
    return t;
}

/* The FFN's pass on compact memory, as the model runs it: the norm into it, products onto it
 * and from it (wide ones in the math's format, narrow ones in fp32 through widened values),
 * SwiGLU both ways,
 * LoRA's axpy into it, the deferred zero, copies both ways; and in bf16 math, half the
 * device memory. tol: a product's (each compact result is rounded once more). */
static void test_compact(double tol)
{
    enum { N = 40, C = 96, W = 72, R = 4, BIG = 1 << 22 };
    int bf16 = backend_activation_bytes(gpu) == 2;
    pesc_error err;
    double before = gpu_test_device_used(gpu);
    float *big = backend_alloc_compact(gpu, BIG, &err);
    double taken = gpu_test_device_used(gpu) - before;
    if (!big)
        gpu_test_die(&err);
    if (bf16)
        gpu_test_verdict(taken > 0 && taken < 0.6 * BIG * sizeof(float),
                         "compact: bf16 alone on the device", taken / (BIG * sizeof(float)),
                         "device bytes / fp32's, < 0.6");
    backend_free(gpu, big);
    size_t nf = (size_t)N * W;
    twin x = twin_random((size_t)N * C, 1.0), norm = twin_random(C, 1.0);
    twin xn = twin_compact((size_t)N * C, 1.0), wg = twin_random((size_t)W * C, 0.2);
    twin wu = twin_random((size_t)W * C, 0.2), wd = twin_random((size_t)C * W, 0.2);
    twin la = twin_random((size_t)R * W, 0.5), t = twin_random((size_t)N * R, 1.0);
    twin dh = twin_random((size_t)N * C, 1.0), h = twin_random((size_t)N * C, 1.0);
    twin dwd = twin_random((size_t)C * W, 1.0), dla = twin_random((size_t)R * W, 1.0);
    twin delta = twin_random(nf, 0.1), plain = twin_random(nf, 1.0);
    twin gate = twin_compact(nf, 1.0), up = twin_compact(nf, 1.0), act = twin_compact(nf, 1.0);
    twin dact = twin_compact(nf, 1.0), dgate = twin_compact(nf, 1.0), dup = twin_compact(nf, 1.0);
    rmsnorm_forward(cpu, F(xn), NULL, F(x), F(norm), 0.0f, N, C, 1e-5f);
    rmsnorm_forward(gpu, G(xn), NULL, G(x), G(norm), 0.0f, N, C, 1e-5f);
    compare("compact: rmsnorm_forward", xn, tol);
    both_matmul(gate, xn, wg, N, C, W, 0);
    compare("compact: a product from it onto it", gate, tol);
    both_matmul(up, xn, wu, N, C, W, 0);
    vector_axpy(cpu, F(gate), F(delta), 1.0f, nf);
    vector_axpy(gpu, G(gate), G(delta), 1.0f, nf);
    compare("compact: vector_axpy into it", gate, tol);
    swiglu_forward(cpu, F(act), F(gate), F(up), nf);
    swiglu_forward(gpu, G(act), G(gate), G(up), nf);
    compare("compact: swiglu_forward", act, tol);
    both_matmul(h, act, wd, N, W, C, 0);
    compare("compact: a product from it", h, tol);
    both_matmul(t, act, la, N, W, R, 0);
    compare("compact: a narrow product from it", t, tol);
    vector_zero(cpu, F(dact), nf);
    vector_zero(gpu, G(dact), nf);
    matmul_backward(cpu, F(dact), F(dwd), NULL, F(dh), F(act), F(wd), N, W, C);
    matmul_backward(gpu, G(dact), G(dwd), NULL, G(dh), G(act), G(wd), N, W, C);
    compare("compact: a weight's gradient from it", dwd, tol);
    /* (a download of dact here would leave its fp32 values where the next product makes
     * them: not compared until after it) */
    /* the same upstream gradient on both: t differs by the narrow product's own rounding
     * (about 6e-3 in bf16, as act does), and a gradient of two such inputs sat at the
     * tolerance (1.02e-2 for one seed); compared here is the product's own rounding */
    twin_sync(t);
    matmul_backward(cpu, F(dact), F(dla), NULL, F(t), F(act), F(la), N, W, R);
    matmul_backward(gpu, G(dact), G(dla), NULL, G(t), G(act), G(la), N, W, R);
    compare("compact: a product onto its zeroing, a narrow one adds", dact, tol);
    compare("compact: ... a narrow weight's gradient from it", dla, tol);
    swiglu_backward(cpu, F(dgate), F(dup), F(dact), F(gate), F(up), nf);
    swiglu_backward(gpu, G(dgate), G(dup), G(dact), G(gate), G(up), nf);
    compare("compact: swiglu_backward dgate", dgate, tol);
    compare("compact: swiglu_backward dup", dup, tol);
    /* the copies from the same values on both (bf16 ones): only the copies' own rounding is
     * left to judge (72 values where two products' and SwiGLU's roundings compound would
     * scatter past tol now and then) */
    for (size_t i = 0; i < nf; i++)
        F(dup)[i] = gpu_test_bf16(F(dup)[i]);
    twin_sync(dup);
    vector_zero(cpu, F(dup), nf - W);   /* all but the last row, settled by the copy */
    vector_zero(gpu, G(dup), nf - W);
    backend_copy(cpu, F(plain), F(dup), nf * sizeof(float));
    backend_copy(gpu, G(plain), G(dup), nf * sizeof(float));
    compare("compact: zeroed, then copied out", plain, 1e-7);
    vector_scale(cpu, F(plain), 3.0f, nf);
    vector_scale(gpu, G(plain), 3.0f, nf);
    backend_copy(cpu, F(dgate), F(plain), nf * sizeof(float));
    backend_copy(gpu, G(dgate), G(plain), nf * sizeof(float));
    compare("compact: copied in", dgate, 4e-3);   /* one bf16 rounding: below 2^-8 each */
    twin_free(x); twin_free(norm); twin_free(xn); twin_free(wg); twin_free(wu); twin_free(wd);
    twin_free(la); twin_free(t);
    twin_free(dh); twin_free(h); twin_free(dwd); twin_free(dla); twin_free(delta);
    twin_free(plain); twin_free(gate); twin_free(up); twin_free(act); twin_free(dact);
    twin_free(dgate); twin_free(dup);
}

/* ---- the gradients' zeroing kept pending (backend_gradients) ------------------------------- */

/* Three weight gradients in one region, with a gap: zeroed, the first written twice by
 * products (written, then added to), the second once, the third not, then read back: the
 * third and the gap exactly zero. Zeroed again with only the first written: the second is
 * zero again where the sum of squares reads it. OC 80: cuBLAS's weight gradients; 8: the
 * narrow kernels'. */
static void test_gradients(int OC, double tol)
{
    enum { N = 30, C = 72, GAP = 16 };
    char name[96];
    const char *tag = OC <= 16 ? " (narrow)" : "";
    size_t w = (size_t)OC * C, n = 3 * w + GAP;
    twin x = twin_random((size_t)N * C, 1.0), dy = twin_random((size_t)N * OC, 1.0);
    twin wt = twin_random(w, 0.5), g = twin_random(n, 1.0);
    float *ga = F(g), *gb = F(g) + w;
    float *da = G(g), *db = G(g) + w;
    backend_gradients(gpu, G(g), n);
    for (int round = 0; round < 2; round++) {
        vector_zero(cpu, F(g), n);
        vector_zero(gpu, G(g), n);
        for (int k = 0; k < 2 - round; k++) {   /* a's, twice in the first round */
            matmul_backward(cpu, NULL, ga, NULL, F(dy), F(x), F(wt), N, C, OC);
            matmul_backward(gpu, NULL, da, NULL, G(dy), G(x), G(wt), N, C, OC);
        }
        if (round == 0) {
            matmul_backward(cpu, NULL, gb, NULL, F(dy), F(x), F(wt), N, C, OC);
            matmul_backward(gpu, NULL, db, NULL, G(dy), G(x), G(wt), N, C, OC);
        }
        double want = vector_sumsq(cpu, F(g), n), got = vector_sumsq(gpu, G(g), n);
        snprintf(name, sizeof name, "%s%s", round ? "gradients: zeroed again, one written: "
                 "the sum of squares" : "gradients: the sum of squares", tag);
        gpu_test_verdict(fabs(got - want) <= 2 * tol * want, name, fabs(got - want) / want,
                         "relative");
    }
    /* round 2's state read back: a written once, the rest exactly zero */
    float *got = malloc(n * sizeof *got);
    backend_download(gpu, got, G(g), n * sizeof *got);
    size_t nonzero = 0;
    for (size_t i = w; i < n; i++)
        nonzero += got[i] != 0.0f;
    snprintf(name, sizeof name, "gradients: the unwritten ones exactly zero%s", tag);
    gpu_test_verdict(nonzero == 0, name, (double)nonzero, "nonzero entries");
    snprintf(name, sizeof name, "gradients: the written one%s", tag);
    compare(name, g, tol);
    backend_gradients(gpu, NULL, 0);
    free(got);
    twin_free(x); twin_free(dy); twin_free(wt); twin_free(g);
}

/* ---- downloads collected later (backend_download_start) ------------------------------------ */

/* dst gets what src held when the download started, though ops queued after it write src; a
 * second start collects the first; memory kept in bf16 downloads too. */
static void test_download_later(void)
{
    enum { N = 1000 };
    twin a = twin_random(N, 1.0), b = twin_random(N, 1.0), k = twin_compact(N, 1.0);
    float *got_a = malloc(N * sizeof *got_a), *got_b = malloc(N * sizeof *got_b);
    float *got_k = malloc(N * sizeof *got_k);
    backend_download_start(gpu, got_a, G(a), N * sizeof(float));
    vector_scale(gpu, G(a), -2.0f, N);   /* queued after the start */
    backend_download_start(gpu, got_b, G(b), N * sizeof(float));
    backend_download_wait(gpu);
    backend_download_start(gpu, got_k, G(k), N * sizeof(float));
    backend_download_wait(gpu);
    backend_download_wait(gpu);   /* nothing pending: nothing happens */
    double e = gpu_test_error(got_a, F(a), N) + gpu_test_error(got_b, F(b), N) +
               gpu_test_error(got_k, F(k), N);
    gpu_test_verdict(e == 0.0, "download_start: the values at the start, each collected", e,
                     "normalized error, exact");
    free(got_a); free(got_b); free(got_k);
    twin_free(a); twin_free(b); twin_free(k);
}

/* ---- vector_zero, deferred ----------------------------------------------------------------- */

/* The CUDA backend defers a vector_zero until the next op, and a product that adds into
 * exactly the zeroed range writes it instead. Each stretch ends the deferral another way: the
 * product onto it, a zeroing of another size, an op adding into it, a product reading it, a
 * download, and a check. */
/* OC 56: cuBLAS's products; 8: the narrow kernels' (cuda_narrow.cu), a router's */
static void test_deferred_zero(int OC, double tol)
{
    enum { N = 40, C = 48 };
    size_t nc = (size_t)N * C;
    char name[96];
    const char *tag = OC <= 16 ? " (narrow)" : "";
    twin x = twin_random(nc, 1.0), w = twin_random((size_t)OC * C, 0.5);
    twin dout = twin_random((size_t)N * OC, 1.0), dx = twin_random(nc, 1.0);
    twin dw = twin_random((size_t)OC * C, 1.0), y = twin_random((size_t)N * OC, 1.0);
    vector_zero(cpu, F(dx), nc);
    vector_zero(gpu, G(dx), nc);
    matmul_backward(cpu, F(dx), F(dw), NULL, F(dout), F(x), F(w), N, C, OC);
    matmul_backward(gpu, G(dx), G(dw), NULL, G(dout), G(x), G(w), N, C, OC);
    snprintf(name, sizeof name, "%s%s", "zero: a product onto it writes it", tag);
    compare(name, dx, tol);
    snprintf(name, sizeof name, "%s%s", "zero: ... the weight's gradient still adds", tag);
    compare(name, dw, tol);
    vector_zero(cpu, F(dx), nc - C);   /* all but the last row: the product adds */
    vector_zero(gpu, G(dx), nc - C);
    matmul_backward(cpu, F(dx), NULL, NULL, F(dout), F(x), F(w), N, C, OC);
    matmul_backward(gpu, G(dx), NULL, NULL, G(dout), G(x), G(w), N, C, OC);
    snprintf(name, sizeof name, "%s%s", "zero: of fewer floats, a product adds onto it", tag);
    compare(name, dx, tol);
    vector_zero(cpu, F(dx), nc);
    vector_zero(gpu, G(dx), nc);
    vector_axpy(cpu, F(dx), F(x), 2.0f, nc);
    vector_axpy(gpu, G(dx), G(x), 2.0f, nc);
    snprintf(name, sizeof name, "%s%s", "zero: an op adds into it", tag);
    compare(name, dx, 0.0);
    vector_zero(cpu, F(x), nc);
    vector_zero(gpu, G(x), nc);
    both_matmul(y, x, w, N, C, OC, 0);
    snprintf(name, sizeof name, "%s%s", "zero: a product reads it", tag);
    compare(name, y, 0.0);
    twin_sync(x);
    vector_zero(cpu, F(x), nc);
    vector_zero(gpu, G(x), nc);
    snprintf(name, sizeof name, "%s%s", "zero: downloaded", tag);
    compare(name, x, 0.0);
    vector_zero(cpu, F(dx), nc);
    vector_zero(gpu, G(dx), nc);
    pesc_error err;
    int checked = backend_check(gpu, &err);
    snprintf(name, sizeof name, "%s%s", "zero: after a check", tag);
    compare(name, dx, 0.0);
    snprintf(name, sizeof name, "zero: backend_check after it%s", tag);
    gpu_test_verdict(checked == 0, name, (double)checked, "rc");
    twin_free(x); twin_free(w); twin_free(dout); twin_free(dx); twin_free(dw); twin_free(y);
}

/* ---- row-wise and elementwise ops ---------------------------------------------------------- */

static void test_embedding(int N, int V, int C)
{
    twin tokens = twin_ints(N, 0, V / 4);   /* repeats, so the backward adds into shared rows */
    twin table = twin_random((size_t)V * C, 1.0), out = twin_random((size_t)N * C, 1.0);
    twin dout = twin_random((size_t)N * C, 1.0), dtable = twin_random((size_t)V * C, 1.0);
    embedding_forward(cpu, F(out), FI(tokens), F(table), N, C);
    embedding_forward(gpu, G(out), GI(tokens), G(table), N, C);
    compare("embedding_forward", out, 0.0);
    embedding_backward(cpu, F(dtable), F(dout), FI(tokens), N, C);
    embedding_backward(gpu, G(dtable), G(dout), GI(tokens), N, C);
    /* the CPU's order of additions, so the same floats */
    compare("embedding_backward (accumulated, repeated tokens)", dtable, 0.0);
    twin_free(tokens); twin_free(table); twin_free(out); twin_free(dout); twin_free(dtable);
}

/* offset 1: Gemma's norms, whose scale is 1 + weight */
static void test_rmsnorm(int N, int C, float offset)
{
    twin x = twin_random((size_t)N * C, 2.0), w = twin_random(C, 1.0);
    twin out = twin_random((size_t)N * C, 1.0), rstd = twin_random(N, 1.0);
    twin dout = twin_random((size_t)N * C, 1.0), dx = twin_random((size_t)N * C, 1.0);
    twin dw = twin_random(C, 1.0);
    const char *kind = offset ? " (1 + w)" : "";
    char what[96];
    rmsnorm_forward(cpu, F(out), F(rstd), F(x), F(w), offset, N, C, 1e-5f);
    rmsnorm_forward(gpu, G(out), G(rstd), G(x), G(w), offset, N, C, 1e-5f);
    snprintf(what, sizeof what, "rmsnorm_forward%s out", kind);
    compare(what, out, 1e-5);
    snprintf(what, sizeof what, "rmsnorm_forward%s rstd", kind);
    compare(what, rstd, 1e-5);
    rmsnorm_backward(cpu, F(dx), F(dw), F(dout), F(x), F(w), offset, F(rstd), N, C);
    rmsnorm_backward(gpu, G(dx), G(dw), G(dout), G(x), G(w), offset, G(rstd), N, C);
    snprintf(what, sizeof what, "rmsnorm_backward%s dinp (accumulated)", kind);
    compare(what, dx, 1e-5);
    snprintf(what, sizeof what, "rmsnorm_backward%s dweight (accumulated)", kind);
    compare(what, dw, 1e-5);
    twin_free(x); twin_free(w); twin_free(out); twin_free(rstd);
    twin_free(dout); twin_free(dx); twin_free(dw);
}

/* R of each head's D values rotated (R < D: a partial rotary), cos and sin times scale */
static void test_rope(int N, int H, int D, int R, float scale)
{
    twin pos = twin_ints(N, 0, 4000), freq = twin_alloc((size_t)R / 2 * sizeof(float));
    for (int i = 0; i < R / 2; i++)
        F(freq)[i] = (float)pow(10000.0, -2.0 * i / R);
    twin_sync(freq);
    twin x = twin_random((size_t)N * H * D, 1.0);
    char what[96];
    const char *part = R < D ? ", partial, scaled" : "";
    /* in place, as the model does */
    rope_forward(cpu, F(x), F(x), FI(pos), F(freq), N, H, D, R, scale);
    rope_forward(gpu, G(x), G(x), GI(pos), G(freq), N, H, D, R, scale);
    snprintf(what, sizeof what, "rope_forward (in place, positions to 4000%s)", part);
    compare(what, x, 1e-5);
    rope_backward(cpu, F(x), F(x), FI(pos), F(freq), N, H, D, R, scale);
    rope_backward(gpu, G(x), G(x), GI(pos), G(freq), N, H, D, R, scale);
    snprintf(what, sizeof what, "rope_backward (in place%s)", part);
    compare(what, x, 1e-5);
    /* in place on compact memory (q and k in bf16 math): read and written in bf16 */
    twin xc = twin_compact((size_t)N * H * D, 1.0);
    rope_forward(cpu, F(xc), F(xc), FI(pos), F(freq), N, H, D, R, scale);
    rope_forward(gpu, G(xc), G(xc), GI(pos), G(freq), N, H, D, R, scale);
    snprintf(what, sizeof what, "rope_forward (in place, compact%s)", part);
    compare(what, xc, 4e-3);
    for (size_t i = 0; i < (size_t)N * H * D; i++)   /* the backward from the same values */
        F(xc)[i] = gpu_test_bf16(F(xc)[i]);
    twin_sync(xc);
    rope_backward(cpu, F(xc), F(xc), FI(pos), F(freq), N, H, D, R, scale);
    rope_backward(gpu, G(xc), G(xc), GI(pos), G(freq), N, H, D, R, scale);
    snprintf(what, sizeof what, "rope_backward (in place, compact%s)", part);
    compare(what, xc, 4e-3);
    twin_free(pos); twin_free(freq); twin_free(x); twin_free(xc);
}

/* The 16-byte kernels against the scalar ones, bit for bit: each memory-bound op on tensors
 * that start 16-byte aligned (the 16-byte kernels) and on the same values one float further
 * on (unaligned: the scalar kernels), rows of C (a multiple of 8). */
static void test_vector_paths(int rows, int C)
{
    enum { A, B, D, OUT, DA, DB, M, V, W, INPUTS };
    size_t n = (size_t)rows * C, sizes[INPUTS];
    float *host[INPUTS], *dev[INPUTS];
    pesc_error err;
    for (int t = 0; t < INPUTS; t++) {
        sizes[t] = t == W ? (size_t)C : n;
        host[t] = malloc(sizes[t] * sizeof(float));
        for (size_t i = 0; i < sizes[t]; i++) {   /* v, AdamW's second moment, positive */
            double u = gpu_test_uniform();
            host[t][i] = (float)(t == V ? 0.5 * u + 0.01 : 2.0 * u - 1.0);
        }
        if (!(dev[t] = backend_alloc(gpu, (sizes[t] + 1) * sizeof(float), &err)))
            gpu_test_die(&err);
    }
    twin pos = twin_ints(rows, 0, 4000), freq = twin_alloc(32 * sizeof(float));
    twin rstd = twin_alloc(rows * sizeof(float));
    for (int i = 0; i < 32; i++)
        F(freq)[i] = (float)pow(10000.0, -2.0 * i / 64);
    twin_sync(freq);
    enum { KEPT = 14 };   /* the outputs kept below, n values each */
    float *got[2];
    size_t kept[2];
    for (int k = 0; k < 2; k++) {
        got[k] = malloc(KEPT * n * sizeof(float));
        float *p[INPUTS], *at = got[k];
        for (int t = 0; t < INPUTS; t++) {
            p[t] = dev[t] + k;
            backend_upload(gpu, p[t], host[t], sizes[t] * sizeof(float));
        }
#define KEEP(t) (backend_download(gpu, at, p[t], n * sizeof(float)), at += n)
        swiglu_forward(gpu, p[OUT], p[A], p[B], n), KEEP(OUT);
        swiglu_backward(gpu, p[DA], p[DB], p[D], p[A], p[B], n), KEEP(DA), KEEP(DB);
        geglu_forward(gpu, p[OUT], p[A], p[B], n), KEEP(OUT);
        geglu_backward(gpu, p[DA], p[DB], p[D], p[A], p[B], n), KEEP(DA), KEEP(DB);
        residual_forward(gpu, p[OUT], p[OUT], p[A], n), KEEP(OUT);
        vector_axpy(gpu, p[OUT], p[B], -0.75f, n), vector_scale(gpu, p[OUT], 1.5f, n), KEEP(OUT);
        rmsnorm_forward(gpu, p[OUT], G(rstd), p[A], p[W], 0.0f, rows, C, 1e-5f), KEEP(OUT);
        rmsnorm_backward(gpu, p[DA], NULL, p[D], p[A], p[W], 0.0f, G(rstd), rows, C), KEEP(DA);
        rope_forward(gpu, p[OUT], p[A], GI(pos), G(freq), rows, C / 64, 64, 64, 1.0f), KEEP(OUT);
        adamw_update(gpu, p[A], p[B], 1.0f, p[M], p[V], NULL, n, 0.05f, 0.9f, 0.999f, 1e-8f,
                     0.01f, 3);
        KEEP(A), KEEP(M), KEEP(V);
#undef KEEP
        kept[k] = (size_t)(at - got[k]);
    }
    size_t differ = 0;
    for (size_t i = 0; i < kept[0]; i++)
        differ += memcmp(&got[0][i], &got[1][i], sizeof(float)) != 0;
    gpu_test_verdict(differ == 0 && kept[0] == KEPT * n && kept[1] == KEPT * n,
                     "16-byte kernels = scalar kernels, bit for bit (aligned, unaligned)",
                     (double)differ, "values that differ, 10 ops");
    for (int t = 0; t < INPUTS; t++) {
        free(host[t]);
        backend_free(gpu, dev[t]);
    }
    free(got[0]);
    free(got[1]);
    twin_free(pos); twin_free(freq); twin_free(rstd);
}

static void test_elementwise(size_t n)
{
    twin a = twin_random(n, 4.0), b = twin_random(n, 2.0), out = twin_random(n, 1.0);
    twin d = twin_random(n, 1.0), da = twin_random(n, 1.0), db = twin_random(n, 1.0);
    /* the GLUs: Llama's SiLU, Gemma's GELU (tanh) */
    static const struct {
        const char *name;
        void (*forward)(pesc_backend *, float *, const float *, const float *, size_t);
        void (*backward)(pesc_backend *, float *, float *, const float *, const float *,
                         const float *, size_t);
    } glus[] = {{"swiglu", swiglu_forward, swiglu_backward},
                {"geglu", geglu_forward, geglu_backward}};
    for (size_t i = 0; i < sizeof glus / sizeof *glus; i++) {
        char what[64];
        glus[i].forward(cpu, F(out), F(a), F(b), n);
        glus[i].forward(gpu, G(out), G(a), G(b), n);
        snprintf(what, sizeof what, "%s_forward", glus[i].name);
        compare(what, out, 1e-6);
        glus[i].backward(cpu, F(da), F(db), F(d), F(a), F(b), n);
        glus[i].backward(gpu, G(da), G(db), G(d), G(a), G(b), n);
        snprintf(what, sizeof what, "%s_backward dgate", glus[i].name);
        compare(what, da, 1e-6);
        snprintf(what, sizeof what, "%s_backward dup", glus[i].name);
        compare(what, db, 1e-6);
    }
    residual_forward(cpu, F(out), F(out), F(a), n);
    residual_forward(gpu, G(out), G(out), G(a), n);
    compare("residual_forward (aliased)", out, 1e-7);
    vector_add_uniform(cpu, F(out), n, 0.3f, 77);
    vector_add_uniform(gpu, G(out), n, 0.3f, 77);
    compare("vector_add_uniform (the same draws)", out, 1e-7);
    vector_axpy(cpu, F(out), F(b), -0.75f, n);
    vector_axpy(gpu, G(out), G(b), -0.75f, n);
    compare("vector_axpy", out, 1e-7);
    vector_scale(cpu, F(out), 1.5f, n);
    vector_scale(gpu, G(out), 1.5f, n);
    compare("vector_scale", out, 1e-7);
    /* the sums of squares from the same values: the ops above may round apart by 1e-7, which
     * a chunk's sum keeps (1.5e-9 on an H200); summed in double both ways, they agree to
     * rounding in the order of the additions */
    twin_sync(out);
    double want = vector_sumsq(cpu, F(out), n), got = vector_sumsq(gpu, G(out), n);
    double rel = fabs(got - want) / want;
    gpu_test_verdict(rel < 1e-12, "vector_sumsq", rel, "relative error, tolerance 1e-12");
    /* per chunk: the GPU's own vector_sumsq exactly, the CPU's within rounding */
    enum { CHUNKS = 5 };
    double sums_gpu[CHUNKS], sums_cpu[CHUNKS], worst = 0.0;
    size_t chunk = n / CHUNKS;
    int same = 1;
    twin sums = twin_alloc(CHUNKS * sizeof(double));   /* the GPU's sums stay on the GPU */
    vector_sumsq_chunks(gpu, sums.g, G(out), chunk, CHUNKS);
    backend_download(gpu, sums_gpu, sums.g, sizeof sums_gpu);
    twin_free(sums);
    vector_sumsq_chunks(cpu, sums_cpu, F(out), chunk, CHUNKS);
    for (int i = 0; i < CHUNKS; i++) {
        same &= sums_gpu[i] == vector_sumsq(gpu, G(out) + (size_t)i * chunk, chunk);
        double r = fabs(sums_gpu[i] - sums_cpu[i]) / sums_cpu[i];
        worst = r > worst || !isfinite(r) ? r : worst;
    }
    gpu_test_verdict(same, "vector_sumsq_chunks = vector_sumsq per chunk", (double)!same,
                     "chunks that differ");
    gpu_test_verdict(worst < 1e-12, "vector_sumsq_chunks", worst,
                     "relative error, tolerance 1e-12");
    /* AdamW: params a, grads b, moments from d and |db| */
    for (size_t i = 0; i < n; i++)
        F(db)[i] = fabsf(F(db)[i]);
    twin_sync(db);
    twin delta = twin_random(n, 1.0);
    for (int step = 1; step <= 3; step++) {
        /* step 2 clips: the gradient times 0.3 */
        float clip = step == 2 ? 0.3f : 1.0f;
        adamw_update(cpu, F(a), F(b), clip, F(d), F(db), step == 3 ? F(delta) : NULL, n, 1e-2f,
                     0.9f, 0.999f, 1e-8f, 0.1f, step);
        adamw_update(gpu, G(a), G(b), clip, G(d), G(db), step == 3 ? G(delta) : NULL, n, 1e-2f,
                     0.9f, 0.999f, 1e-8f, 0.1f, step);
    }
    compare("adamw_update params (3 steps)", a, 1e-6);
    compare("adamw_update delta (before - after)", delta, 1e-5);
    twin_free(delta);
    compare("adamw_update m", d, 1e-6);
    compare("adamw_update v", db, 1e-6);
    dropout_mask(cpu, F(out), n, 0.1f, 12345);
    dropout_mask(gpu, G(out), n, 0.1f, 12345);
    compare("dropout_mask (bit for bit)", out, 0.0);
    vector_zero(cpu, F(out), n);
    vector_zero(gpu, G(out), n);
    float *got_zero = malloc(n * sizeof *got_zero);
    backend_download(gpu, got_zero, G(out), n * sizeof *got_zero);
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++)
        nonzero += got_zero[i] != 0.0f;
    gpu_test_verdict(nonzero == 0, "vector_zero", (double)nonzero, "nonzero entries");
    free(got_zero);
    twin_free(a); twin_free(b); twin_free(out); twin_free(d); twin_free(da); twin_free(db);
}

/* argmax_rows: the CPU's picks exactly, over a vocabulary's rows: ties (the first of equals
 * counts, across threads and warps of the block), the largest last, NaN first and among the
 * values, a row all NaN, a row of -inf, a row with +inf (the last three -1: no finite
 * largest value). */
static void test_argmax_rows(int rows, int cols)
{
    twin x = twin_random((size_t)rows * cols, 6.0), out = twin_ints(rows, 0, 0);
    for (int r = 0; r < rows; r++) {
        float *row = F(x) + (size_t)r * cols;
        int a = (int)(gpu_test_uniform() * cols) % cols, c = (int)(gpu_test_uniform() * cols) % cols;
        switch (r % 7) {
        case 1: row[a] = row[c] = 9.0f; break;
        case 2: row[cols - 1] = 9.0f; break;
        case 3: row[0] = NAN; row[a] = NAN; row[c] = 9.0f; break;
        case 4: for (int i = 0; i < cols; i++) row[i] = NAN; break;
        case 5: for (int i = 0; i < cols; i++) row[i] = -INFINITY; break;
        case 6: row[a] = INFINITY; break;
        }
    }
    twin_sync(x);
    argmax_rows(cpu, FI(out), F(x), rows, cols);
    argmax_rows(gpu, GI(out), G(x), rows, cols);
    int32_t *got = malloc(out.bytes);
    backend_download(gpu, got, out.g, out.bytes);
    int wrong = 0;
    for (int r = 0; r < rows; r++)
        wrong += got[r] != FI(out)[r];
    char name[64];
    snprintf(name, sizeof name, "argmax_rows %d x %d", rows, cols);
    gpu_test_verdict(wrong == 0, name, wrong, "rows unlike the CPU's");
    free(got);
    twin_free(x); twin_free(out);
}

/* Logits of -inf (each thread's first values in row 0, all but one in row 1) add nothing to
 * the softmax; a NaN (row 2) makes its row's loss NaN, as on the CPU. */
static void test_crossentropy_edges(void)
{
    enum { N = 3, V = 3000 };
    twin logits = twin_random((size_t)N * V, 6.0), targets = twin_ints(N, 0, 1);
    twin dlogits = twin_random((size_t)N * V, 1.0), losses = twin_random(N, 1.0);
    float *l = F(logits);
    for (int i = 0; i < 1024; i++)   /* two a thread of 512 */
        l[i] = -INFINITY;
    for (int i = 0; i < V; i++)
        if (i != 7)
            l[V + i] = -INFINITY;
    l[2 * V + 1234] = NAN;
    FI(targets)[0] = 2000, FI(targets)[1] = 7, FI(targets)[2] = 5;
    twin_sync(logits); twin_sync(targets);
    crossentropy_backward(cpu, F(dlogits), F(losses), F(logits), FI(targets), 1.0f, N, V, 0.0f);
    crossentropy_backward(gpu, G(dlogits), G(losses), G(logits), GI(targets), 1.0f, N, V, 0.0f);
    float got[N], *d = malloc((size_t)N * V * sizeof *d);
    backend_download(gpu, got, losses.g, sizeof got);
    backend_download(gpu, d, dlogits.g, (size_t)N * V * sizeof *d);
    double worst = gpu_test_error(d, F(dlogits), 2 * (size_t)V);
    for (int n = 0; n < 2; n++)
        worst = fmax(worst, fabs(got[n] - F(losses)[n]) / (1.0 + fabs(F(losses)[n])));
    gpu_test_verdict(worst <= 1e-5, "crossentropy_backward: logits of -inf add nothing", worst,
                     "normalized error, tolerance 1e-05");
    gpu_test_verdict(isnan(got[2]) && isnan(F(losses)[2]), "crossentropy_backward: a NaN logit, "
                     "a NaN loss", got[2], "the GPU's loss");
    free(d);
    twin_free(logits); twin_free(targets); twin_free(dlogits); twin_free(losses);
}

/* cap > 0: Gemma 2's softcap of the logits */
static void test_crossentropy(int N, int V, float cap)
{
    twin logits = twin_random((size_t)N * V, 6.0), targets = twin_ints(N, 0, V - 1);
    for (int n = 0; n < N; n += 5)
        FI(targets)[n] = -100;
    twin_sync(targets);
    twin losses = twin_random(N, 1.0);
    crossentropy_forward(cpu, F(losses), F(logits), FI(targets), N, V, cap);
    crossentropy_forward(gpu, G(losses), G(logits), GI(targets), N, V, cap);
    const char *capped = cap > 0.0f ? ", softcap" : "";
    char name[96];
    snprintf(name, sizeof name, "crossentropy_forward (every 5th ignored)%s", capped);
    compare(name, losses, 1e-5);
    twin losses2 = twin_random(N, 1.0);
    enum { C = 96 };   /* for the head's product after the backward */
    twin head = twin_random((size_t)V * C, 0.5), x = twin_random((size_t)N * C, 1.0);
    twin dx = twin_random((size_t)N * C, 1.0);
    crossentropy_backward(cpu, F(logits), F(losses2), F(logits), FI(targets), 0.37f, N, V, cap);
    crossentropy_backward(gpu, G(logits), G(losses2), G(logits), GI(targets), 0.37f, N, V, cap);
    /* the head's product next reads the bf16 copy the backward wrote (bf16 math) */
    matmul_backward(cpu, F(dx), NULL, NULL, F(logits), F(x), F(head), N, C, V);
    matmul_backward(gpu, G(dx), NULL, NULL, G(logits), G(x), G(head), N, C, V);
    snprintf(name, sizeof name, "crossentropy_backward: the head's product after it%s", capped);
    compare(name, dx, 1e-2);
    snprintf(name, sizeof name, "crossentropy_backward dlogits (in place)%s", capped);
    compare(name, logits, 1e-5);
    snprintf(name, sizeof name, "crossentropy_backward losses%s", capped);
    compare(name, losses2, 1e-5);
    twin_free(head); twin_free(x); twin_free(dx);
    twin_free(logits); twin_free(targets); twin_free(losses); twin_free(losses2);
}

/* ---- attention --------------------------------------------------------------------------- */

/* Floats by which test_attention moves q off its allocation's start: 1 puts it off the 16-byte
 * alignment that the flash kernels' float4 loads need (the fused kernels take it instead). */
static int q_shift;

/* Whether test_attention puts q, k, v, the output and its gradient in compact memory (bf16
 * alone in bf16 math), as the model does: both sides then start from the same bf16 values, and
 * the forward's output is judged with a bf16 rounding's tolerance at least. */
static int att_compact;

/* Gemma 2's softcap of the scores in test_attention and test_attention_cached, or 0; 0.5 bites
 * on their random q and k (scores of about +-0.3) */
static float att_softcap;

static void test_attention(int B, int T, int Hq, int Hkv, int D, int window, int packed,
                           const char *path, double tol_fwd, double tol_bwd)
{
    int N = B * T;
    char name[128], shape[80];
    snprintf(shape, sizeof shape, "%s B%d T%d H%d/%d D%d%s%s%s%s%s", path, B, T, Hq, Hkv, D,
             window ? " window" : "", packed ? " packed" : "", q_shift ? " q unaligned" : "",
             att_compact ? " compact" : "", att_softcap > 0.0f ? " softcap" : "");
    size_t nq = (size_t)N * Hq * D;
    size_t nkv = (size_t)N * Hkv * D;
    twin q = att_compact ? twin_compact(nq + q_shift, 1.0) : twin_random(nq + q_shift, 1.0);
    twin k = att_compact ? twin_compact(nkv, 1.0) : twin_random(nkv, 1.0);
    twin v = att_compact ? twin_compact(nkv, 1.0) : twin_random(nkv, 1.0);
    twin out = att_compact ? twin_compact(nq, 1.0) : twin_random(nq, 1.0);
    twin lse = twin_random((size_t)N * Hq, 1.0);
    twin dout = att_compact ? twin_compact(nq, 1.0) : twin_random(nq, 1.0);
    twin dq = att_compact ? twin_compact(nq, 1.0) : twin_random(nq, 1.0);
    twin dk = att_compact ? twin_compact(nkv, 1.0) : twin_random(nkv, 1.0);
    twin dv = att_compact ? twin_compact(nkv, 1.0) : twin_random(nkv, 1.0);
    twin seg = twin_alloc((size_t)N * sizeof(int32_t));
    enum { PO = 72 };   /* a product on the output after the forward (bf16 math: its copy) */
    twin pw = twin_random((size_t)PO * Hq * D, 0.5), po = twin_alloc((size_t)N * PO * 4);
    for (int b = 0; b < B; b++)   /* documents of random length */
        for (int t = 0, start = 0; t < T; t++) {
            if (t > 0 && gpu_test_uniform() < 0.04)
                start = t;
            FI(seg)[b * T + t] = start;
        }
    twin_sync(seg);
    const int32_t *sc = packed ? FI(seg) : NULL, *sg = packed ? GI(seg) : NULL;
    attention_forward(cpu, F(out), F(lse), F(q) + q_shift, F(k), F(v), B, T, Hq, Hkv, D, window,
                      att_softcap, sc);
    attention_forward(gpu, G(out), G(lse), G(q) + q_shift, G(k), G(v), B, T, Hq, Hkv, D, window,
                      att_softcap, sg);
    matmul_forward(cpu, F(po), F(out), F(pw), NULL, N, Hq * D, PO);
    matmul_forward(gpu, G(po), G(out), G(pw), NULL, N, Hq * D, PO);
    snprintf(name, sizeof name, "attention_forward out %s", shape);
    compare(name, out, att_compact && tol_fwd < 4e-3 ? 4e-3 : tol_fwd);
    snprintf(name, sizeof name, "a product on attention_forward's out %s", shape);
    compare(name, po, tol_fwd > 1e-2 ? tol_fwd : 1e-2);
    snprintf(name, sizeof name, "attention_forward lse %s", shape);
    compare(name, lse, tol_fwd);
    /* the backward from the CPU's forward on both, so each op is judged on its own (values
     * that compact memory holds exactly) */
    for (size_t i = 0; att_compact && i < nq; i++)
        F(out)[i] = gpu_test_bf16(F(out)[i]);
    twin_sync(out);
    twin_sync(lse);
    attention_backward(cpu, F(dq), F(dk), F(dv), F(dout), F(q) + q_shift, F(k), F(v), F(out),
                       F(lse), B, T, Hq, Hkv, D, window, att_softcap, sc);
    attention_backward(gpu, G(dq), G(dk), G(dv), G(dout), G(q) + q_shift, G(k), G(v), G(out),
                       G(lse), B, T, Hq, Hkv, D, window, att_softcap, sg);
    /* compact gradients: one bf16 rounding more */
    double tol_grad = att_compact && tol_bwd < 4e-3 ? 4e-3 : tol_bwd;
    snprintf(name, sizeof name, "attention_backward dq %s", shape);
    compare(name, dq, tol_grad);
    snprintf(name, sizeof name, "attention_backward dk %s", shape);
    compare(name, dk, tol_grad);
    snprintf(name, sizeof name, "attention_backward dv %s", shape);
    compare(name, dv, tol_grad);
    twin_free(q); twin_free(k); twin_free(v); twin_free(out); twin_free(lse); twin_free(dout);
    twin_free(dq); twin_free(dk); twin_free(dv); twin_free(seg); twin_free(pw); twin_free(po);
}

/* Packed documents, sliding windows, grouped heads, head dimensions up to 256, and sequences
 * long enough that the gemm path cuts its score tiles at its default 128 MiB (T 2048 x 64
 * heads: 8 chunks of 256 query rows; 2 x 2000 x 64: 16 chunks of 128, the last of 80 rows,
 * each against the keys its window reaches). */
static void test_attention_shapes(const char *path, double tol_fwd, double tol_bwd)
{
    test_attention(2, 100, 4, 2, 32, 0, 0, path, tol_fwd, tol_bwd);
    test_attention(2, 130, 4, 1, 64, 0, 1, path, tol_fwd, tol_bwd);
    test_attention(1, 200, 2, 2, 80, 33, 0, path, tol_fwd, tol_bwd);
    test_attention(3, 64, 8, 2, 128, 17, 1, path, tol_fwd, tol_bwd);
    test_attention(1, 40, 2, 1, 256, 0, 0, path, tol_fwd, tol_bwd);
    att_softcap = 0.5f;   /* Gemma 2's: its head dimension and sliding layers */
    test_attention(1, 40, 2, 1, 256, 0, 0, path, tol_fwd, tol_bwd);
    test_attention(2, 100, 4, 2, 32, 9, 1, path, tol_fwd, tol_bwd);
    att_softcap = 0.0f;
    if (gpu_test_emulated && !getenv("PESC_TEST_LONG"))   /* long on the emulator */
        return;
    test_attention(1, 2048, 64, 8, 16, 0, 0, path, tol_fwd, tol_bwd);
    test_attention(2, 2000, 64, 8, 16, 300, 1, path, tol_fwd, tol_bwd);
}

/* Under a 64 KiB tile the gemm path must also split the (sequence, head)s: 2 x 8 heads of
 * T 300 go 3 at a time (the last alone), in 19 chunks of 16 query rows (the last of 12). */
static void test_attention_small_tiles(const char *path, double tol_fwd, double tol_bwd)
{
    test_attention(2, 300, 8, 2, 32, 0, 1, path, tol_fwd, tol_bwd);
    test_attention(2, 300, 8, 4, 16, 50, 1, path, tol_fwd, tol_bwd);
    test_attention(3, 64, 8, 2, 128, 17, 1, path, tol_fwd, tol_bwd);
}

/* The flash kernels' head dimensions (32, 64, 96, 128), TinyLlama's heads at its length, and a
 * long packed sequence with a window; bf16 operands. path: flash (the mma kernels) or
 * flash-wmma, as PESC_CUDA_ATTENTION is set. */
static void test_attention_flash(const char *path)
{
    const double fwd = 1e-2, bwd = 2e-2;
    test_attention(2, 100, 4, 2, 32, 0, 0, path, fwd, bwd);
    test_attention(2, 130, 4, 1, 64, 0, 1, path, fwd, bwd);
    test_attention(1, 200, 2, 2, 96, 33, 0, path, fwd, bwd);
    test_attention(3, 64, 8, 2, 128, 17, 1, path, fwd, bwd);
    test_attention(1, 40, 2, 1, 64, 0, 0, path, fwd, bwd);
    q_shift = 1;   /* not 16-byte aligned: the fused kernels run, fp32-exact */
    test_attention(1, 70, 2, 1, 64, 0, 1, path, 1e-5, 1e-5);
    q_shift = 0;
    att_softcap = 0.5f;   /* flash has no softcap: the fused kernels again */
    test_attention(1, 70, 2, 1, 64, 0, 1, path, 1e-5, 1e-4);
    att_softcap = 0.0f;
    if (gpu_test_emulated && !getenv("PESC_TEST_LONG"))
        return;
    test_attention(1, 2048, 32, 4, 64, 0, 0, path, fwd, bwd);
    test_attention(2, 2000, 8, 8, 128, 300, 1, path, fwd, bwd);
}

static void test_attention_cached(int n, int past, int Hq, int Hkv, int D, int window)
{
    int L = past + n;
    size_t nq = (size_t)n * Hq * D;
    twin q = att_compact ? twin_compact(nq, 1.0) : twin_random(nq, 1.0);
    twin kc = twin_random((size_t)L * Hkv * D, 1.0), vc = twin_random((size_t)L * Hkv * D, 1.0);
    twin out = att_compact ? twin_compact(nq, 1.0) : twin_random(nq, 1.0);
    attention_cached_forward(cpu, F(out), F(q), F(kc), F(vc), n, past, Hq, Hkv, D, window,
                             att_softcap);
    attention_cached_forward(gpu, G(out), G(q), G(kc), G(vc), n, past, Hq, Hkv, D, window,
                             att_softcap);
    char name[96];
    snprintf(name, sizeof name, "attention_cached_forward n%d past%d D%d%s%s%s", n, past, D,
             window ? " window" : "", att_compact ? " compact" : "",
             att_softcap > 0.0f ? " softcap" : "");
    compare(name, out, att_compact ? 4e-3 : 1e-5);
    twin_free(q); twin_free(kc); twin_free(vc); twin_free(out);
}

/* One new token of each of four sequences in slots of a cache, as batched generation steps:
 * slots out of order, one left alone, lengths from 1 to past 256 keys (the kernel's shared
 * chunk) up to a slot's last row; the outputs and both caches as the CPU's. */
static void test_attention_step(int Hq, int Hkv, int D, int window)
{
    enum { N = 4, SLOTS = 5, ROWS = 600 };
    int row = Hkv * D, slot_of[N] = {3, 0, 4, 1}, past_of[N] = {0, 300, ROWS - 1, 45};
    size_t nq = (size_t)N * Hq * D, cache = (size_t)SLOTS * ROWS * row;
    twin q = att_compact ? twin_compact(nq, 1.0) : twin_random(nq, 1.0);
    twin k = twin_random((size_t)N * row, 1.0), v = twin_random((size_t)N * row, 1.0);
    twin kc = twin_random(cache, 1.0), vc = twin_random(cache, 1.0);
    twin out = att_compact ? twin_compact(nq, 1.0) : twin_random(nq, 1.0);
    twin slots = twin_ints(N, 0, 0), past = twin_ints(N, 0, 0);
    memcpy(FI(slots), slot_of, sizeof slot_of);
    memcpy(FI(past), past_of, sizeof past_of);
    twin_sync(slots);
    twin_sync(past);
    attention_step_forward(cpu, F(out), F(q), F(k), F(v), F(kc), F(vc), FI(slots), FI(past), N,
                           ROWS, Hq, Hkv, D, window, att_softcap);
    attention_step_forward(gpu, G(out), G(q), G(k), G(v), G(kc), G(vc), GI(slots), GI(past), N,
                           ROWS, Hq, Hkv, D, window, att_softcap);
    char name[96];
    snprintf(name, sizeof name, "attention_step_forward Hq%d Hkv%d D%d%s%s%s", Hq, Hkv, D,
             window ? " window" : "", att_compact ? " compact" : "",
             att_softcap > 0.0f ? " softcap" : "");
    compare(name, out, att_compact ? 4e-3 : 1e-5);
    compare("attention_step_forward's key cache", kc, 0.0);
    compare("attention_step_forward's value cache", vc, 0.0);
    twin_free(q); twin_free(k); twin_free(v); twin_free(kc); twin_free(vc); twin_free(out);
    twin_free(slots); twin_free(past);
}

/* ---- routing and adapters ------------------------------------------------------------------ */

/* The adapters of one layer on the grouping perm, offsets (host), with gate weights w, against
 * the CPU: forward (with and without x; y within y_tol), backward, and a product on dh after
 * it. */
static void test_adapters(twin perm, const int *offsets, twin w, int N, int K, int E, int C, int R,
                          int with_dropout, double tol, double y_tol)
{
    int NK = N * K;
    /* the rows (the GPU's may be more: its layout of each expert's group) */
    size_t rows = backend_adapter_rows(gpu, (size_t)NK, E);
    int *starts = calloc((size_t)E + 1, sizeof *starts);
    int block = backend_adapter_starts(gpu, starts, offsets, E, (size_t)NK), same = 1;
    rows_layout L = {offsets, starts, E, block};
    for (int e = 0; e < E; e++)
        same &= starts[e + 1] == offsets[e + 1];
    layouts_seen[block == 0 ? (same ? PERM_ORDER : PACKED)
                 : starts[E] == starts[0] ? BLOCK_ONLY : BLOCK_AND_REST]++;
    twin h = twin_random((size_t)N * C, 1.0), down = twin_random((size_t)E * R * C, 0.2);
    twin up = twin_random((size_t)E * C * R, 0.2), y = twin_random((size_t)N * C, 1.0);
    twin x = twin_random((size_t)N * C, 1.0);
    twin gathered = twin_random(rows * C, 1.0), pre = twin_random(rows * R, 1.0);
    twin act = twin_random(rows * R, 1.0), scratch = twin_random(rows * C, 1.0);
    twin scratch_r = twin_random(rows * R, 1.0);
    /* dropout: the mask both draw from the seed where they apply it */
    float p = with_dropout ? 0.1f : 0.0f;
    uint64_t seed = (uint64_t)(gpu_test_uniform() * 4e9);
    moe_adapter_forward(cpu, F(y), F(x), F(gathered), F(pre), F(act), F(scratch), F(h), p,
                        seed, F(down), F(up), FI(perm), offsets, F(w), N, K, E, C, R, 0.25f);
    moe_adapter_forward(gpu, G(y), G(x), G(gathered), G(pre), G(act), G(scratch), G(h), p,
                        seed, G(down), G(up), GI(perm), offsets, G(w), N, K, E, C, R, 0.25f);
    compare(with_dropout ? "moe_adapter_forward y = x + h + adapters (dropout)"
                      : "moe_adapter_forward y = x + h + adapters", y, y_tol);
    /* in bf16, gathered is the input rounded: 2^-9 relative at most */
    compare_rows("moe_adapter_forward gathered", gathered, L, C, saved_in_bf16() ? 3e-3 : 1e-7);
    compare_rows("moe_adapter_forward pre", pre, L, R, tol);
    compare_rows("moe_adapter_forward act", act, L, R, tol);
    /* without x (Gemma's FFN output, normed before the residual sum): y = h + adapters */
    moe_adapter_forward(cpu, F(y), NULL, F(gathered), F(pre), F(act), F(scratch), F(h), p, seed,
                        F(down), F(up), FI(perm), offsets, F(w), N, K, E, C, R, 0.25f);
    moe_adapter_forward(gpu, G(y), NULL, G(gathered), G(pre), G(act), G(scratch), G(h), p, seed,
                        G(down), G(up), GI(perm), offsets, G(w), N, K, E, C, R, 0.25f);
    compare(with_dropout ? "moe_adapter_forward y = h + adapters (dropout)"
                      : "moe_adapter_forward y = h + adapters", y, y_tol);
    sync_rows(gathered, L, C); sync_rows(pre, L, R); sync_rows(act, L, R);
    twin dy = twin_random((size_t)N * C, 1.0), dh = twin_random((size_t)N * C, 1.0);
    twin ddown = twin_random((size_t)E * R * C, 1.0), dup = twin_random((size_t)E * C * R, 1.0);
    twin dtopk = twin_random(NK, 1.0);
    /* for a product on dh after the backward */
    twin pw = twin_random((size_t)C * C, 0.5), py = twin_alloc((size_t)N * C * sizeof(float));
    moe_adapter_backward(cpu, F(dh), F(ddown), F(dup), F(dtopk), F(scratch), F(scratch_r), F(dy),
                         F(gathered), F(pre), F(act), p, seed, F(down), F(up), FI(perm), offsets,
                         F(w), N, K, E, C, R, 0.25f);
    moe_adapter_backward(gpu, G(dh), G(ddown), G(dup), G(dtopk), G(scratch), G(scratch_r), G(dy),
                         G(gathered), G(pre), G(act), p, seed, G(down), G(up), GI(perm), offsets,
                         G(w), N, K, E, C, R, 0.25f);
    /* a product on dh next reads the bf16 copy the backward wrote (bf16 math) */
    matmul_forward(cpu, F(py), F(dh), F(pw), NULL, N, C, C);
    matmul_forward(gpu, G(py), G(dh), G(pw), NULL, N, C, C);
    compare("moe_adapter_backward: a product on dh after it", py, tol);
    twin_free(pw); twin_free(py);
    compare("moe_adapter_backward dh = dy + adapters' part", dh, tol);
    compare("moe_adapter_backward ddown (accumulated)", ddown, tol);
    compare("moe_adapter_backward dup (accumulated)", dup, tol);
    compare("moe_adapter_backward dtopk_w", dtopk, tol);
    /* ... and as the first write since the gradients' zeroing (backend_gradients): written,
     * not added (an expert without rows: zeros over what the memory held) */
    size_t nw = (size_t)E * R * C;
    twin g = twin_random(2 * nw, 1.0);
    backend_gradients(gpu, G(g), 2 * nw);
    vector_zero(cpu, F(g), 2 * nw);
    vector_zero(gpu, G(g), 2 * nw);
    moe_adapter_backward(cpu, F(dh), F(g), F(g) + nw, F(dtopk), F(scratch), F(scratch_r), F(dy),
                         F(gathered), F(pre), F(act), p, seed, F(down), F(up), FI(perm), offsets,
                         F(w), N, K, E, C, R, 0.25f);
    moe_adapter_backward(gpu, G(dh), G(g), G(g) + nw, G(dtopk), G(scratch), G(scratch_r), G(dy),
                         G(gathered), G(pre), G(act), p, seed, G(down), G(up), GI(perm), offsets,
                         G(w), N, K, E, C, R, 0.25f);
    compare("moe_adapter_backward ddown, dup: the first write since their zeroing", g, tol);
    backend_gradients(gpu, NULL, 0);
    twin_free(g);
    twin_free(h);
    twin_free(down); twin_free(up); twin_free(y); twin_free(x); twin_free(gathered);
    twin_free(pre); twin_free(act); twin_free(scratch); twin_free(scratch_r); twin_free(dy);
    twin_free(dh); twin_free(ddown); twin_free(dup); twin_free(dtopk);
    free(starts);
}

static void test_moe(int N, int E, int K, int C, int R, int with_dropout, double tol)
{
    int NK = N * K;
    /* sources from -1, padding (routed nowhere, in no group), to S, one past the counted */
    const int S = 3;
    twin sources = twin_ints(N, -1, S);
    twin logits = twin_random((size_t)N * E, 3.0), idx = twin_alloc((size_t)NK * sizeof(int32_t));
    twin w = twin_random(NK, 1.0), probs = twin_random((size_t)N * E, 1.0);
    twin lse = twin_random(N, 1.0);
    moe_route_forward(cpu, FI(idx), F(w), F(probs), F(lse), F(logits), FI(sources), N, E, K);
    moe_route_forward(gpu, GI(idx), G(w), G(probs), G(lse), G(logits), GI(sources), N, E, K);
    compare_ints("moe_route_forward topk_idx", idx);
    compare("moe_route_forward topk_w", w, 1e-6);
    compare("moe_route_forward probs", probs, 1e-6);
    compare("moe_route_forward lse", lse, 1e-6);
    /* later ops read the CPU's routing on both */
    twin_sync(idx); twin_sync(w); twin_sync(probs); twin_sync(lse);
    twin dw = twin_random(NK, 1.0), aux = twin_random(E, 0.1);
    twin dlogits = twin_random((size_t)N * E, 1.0);
    moe_route_backward(cpu, F(dlogits), F(dw), FI(idx), F(w), F(probs), F(lse), F(aux), 0.01f, N,
                       E, K);
    moe_route_backward(gpu, G(dlogits), G(dw), GI(idx), G(w), G(probs), G(lse), G(aux), 0.01f, N,
                       E, K);
    compare("moe_route_backward dlogits", dlogits, 1e-5);

    /* the pairs grouped by expert, with the statistics, on both; the adapters then get the
     * CPU's grouping */
    size_t ns = MOE_STATS(E, K, S);
    twin stats = twin_alloc(ns * sizeof(double));
    twin perm = twin_ints(NK, -1, -1);   /* padding's places at the end stay -1 on both */
    moe_group(cpu, FI(perm), (double *)stats.c, FI(idx), F(w), F(probs), F(lse), FI(sources), N,
              E, K, S);
    moe_group(gpu, GI(perm), (double *)stats.g, GI(idx), G(w), G(probs), G(lse), GI(sources), N,
              E, K, S);
    compare_ints("moe_group perm", perm);
    double *got = malloc(ns * sizeof *got), worst = 0.0;
    backend_download(gpu, got, stats.g, ns * sizeof *got);
    for (size_t i = 0; i < ns; i++) {
        double want = ((double *)stats.c)[i];
        worst = fmax(worst, isfinite(got[i]) ? fabs(got[i] - want) / (fabs(want) + 1e-30)
                                             : INFINITY);
    }
    gpu_test_verdict(worst <= 1e-12, "moe_group stats", worst, "relative, <= 1e-12");
    free(got);
    int *offsets = calloc((size_t)E + 1, sizeof *offsets);
    for (int e = 0; e < E; e++)
        offsets[e + 1] = offsets[e] + (int)((double *)stats.c)[e];
    /* y = x + h + adapters, the adapters' part small beside x + h */
    test_adapters(perm, offsets, w, N, K, E, C, R, with_dropout, tol, 1e-4 + tol / 10);
    free(offsets);
    twin_free(sources);
    twin_free(stats);
    twin_free(logits); twin_free(idx); twin_free(w); twin_free(probs); twin_free(lse);
    twin_free(dw); twin_free(aux); twin_free(dlogits); twin_free(perm);
}

/* The experts' products over hand-made groups (perm, offsets: uneven, empty, a group of one
 * row), through the adapters' ops, whose outputs show each product: pre (gathered D_e^T) and
 * act directly, y (act U_e^T), dtopk_w and ddown (p = dy U_e), dh (p D_e). counts[e] rows for
 * expert e; N tokens of K slots, the slots past the groups' padding, in no group. */
static void test_expert_products(const int *counts, int E, int K, int C, int R, double tol)
{
    int pairs = 0;
    for (int e = 0; e < E; e++)
        pairs += counts[e];
    int N = (pairs + 3 + K - 1) / K, NK = N * K;   /* a few padding slots */
    int *offsets = calloc((size_t)E + 1, sizeof *offsets);
    for (int e = 0; e < E; e++)
        offsets[e + 1] = offsets[e] + counts[e];
    /* perm: the pairs in a shuffled order, -1 past the groups */
    twin perm = twin_alloc((size_t)NK * sizeof(int32_t)), w = twin_random(NK, 1.0);
    for (int j = 0; j < NK; j++)
        FI(perm)[j] = j;
    for (int j = NK - 1; j > 0; j--) {
        int i = (int)(gpu_test_uniform() * (j + 1)) % (j + 1), swap = FI(perm)[i];
        FI(perm)[i] = FI(perm)[j], FI(perm)[j] = swap;
    }
    for (int j = pairs; j < NK; j++)
        FI(perm)[j] = -1;
    twin_sync(perm);
    printf("experts' products: %d rows in %d groups, C %d, R %d\n", pairs, E, C, R);
    /* at C 2048 and R 512 the adapters' part of y, summed from bf16 rows, is as large as
     * x + h: y within tol (cuBLAS's grouped products too are 3e-3 off there) */
    test_adapters(perm, offsets, w, N, K, E, C, R, 0, tol, tol);
    free(offsets);
    twin_free(perm); twin_free(w);
}

/* Groups that cut the mma kernels' tiles every way: rows past a 128-row tile, a group of one
 * row, empty groups; N and K of 64, 512, 96 and 2048, and of 24 and 40, which end within a
 * 32-wide step of K. */
static void test_expert_shapes(double tol)
{
    static const int counts[] = {37, 0, 1, 130, 0, 19};
    test_expert_products(counts, 6, 2, 96, 64, tol);
    test_expert_products(counts, 6, 2, 2048, 512, tol);
    test_expert_products(counts, 6, 1, 96, 512, tol);
    test_expert_products(counts, 6, 1, 2048, 64, tol);
    test_expert_products(counts, 6, 2, 40, 24, tol);
}

int main(void)
{
    gpu_test_seed();
    setenv("PESC_CUDA_MATH", "bf16", 1);   /* the coarsest math first, the default */
    setenv("PESC_CUDA_ATTENTION", "fused", 1);
    gpu = gpu_test_cuda_or_skip();
    pesc_error err;
    cpu = backend_new("cpu", &err);
    if (!cpu)
        gpu_test_die(&err);

    /* bf16 operands: relative rounding 2^-9 per operand, fp32 accumulation */
    const double bf16_tol = 1e-2;
    test_matmul(300, 200, 150, bf16_tol, "bf16");
    test_matmul(1, 64, 4096, bf16_tol, "bf16");
    test_matmul(67, 93, 70, bf16_tol, "bf16");   /* operands of 4k + 3 and 4k + 2 floats */
    /* the narrow kernels (cuda_narrow.cu), fp32 arithmetic whatever the math: a router's 8
     * outputs, in a warp's 4 rows and past them; 3, 12 and 16 (their other instances); 6
     * outputs of rows not of 8s (cuBLAS, in fp32 too) */
    test_matmul(301, 200, 8, 1e-5, "bf16 narrow");
    test_matmul(7, 64, 3, 1e-5, "bf16 narrow");
    test_matmul(130, 520, 12, 1e-5, "bf16 narrow");
    test_matmul(64, 2048, 16, 1e-5, "bf16 narrow");
    test_matmul(33, 94, 6, 1e-5, "bf16 narrow");
    test_operand_copies(bf16_tol);
    test_deferred_zero(56, bf16_tol);
    test_deferred_zero(8, bf16_tol);
    test_trainables(bf16_tol);
    test_compact(bf16_tol);
    test_download_later();
    test_gradients(80, bf16_tol);
    test_gradients(8, bf16_tol);
    test_embedding(257, 1000, 96);
    test_rmsnorm(129, 1000, 0.0f);
    test_rmsnorm(129, 1000, 1.0f);
    /* the 16-byte kernels' other instances (2 and 4 units a thread; at 8192 the backward
     * stages 64 KiB), and rows not of 8s (the scalar kernels) */
    test_rmsnorm(17, 4096, 0.0f);
    test_rmsnorm(9, 8192, 0.0f);
    test_rmsnorm(33, 1001, 0.0f);
    test_rope(77, 6, 64, 64, 1.0f);
    test_rope(77, 6, 64, 48, 1.19f);   /* Phi-4-mini's 3/4, and its longrope's factor */
    test_rope(33, 2, 40, 20, 1.0f);    /* halves of 10: the scalar kernel */
    test_elementwise(100003);
    test_vector_paths(8, 1024);
    test_crossentropy(37, 32000, 0.0f);
    test_crossentropy(37, 32000, 3.0f);   /* Gemma 2's softcap, biting on logits of +-6 */
    test_crossentropy_edges();
    test_argmax_rows(37, 32000);
    test_argmax_rows(13, 5);   /* fewer values than a warp */
    test_attention_shapes("fused", 1e-5, 1e-4);   /* fp32 on the CUDA cores, whatever the math */
    test_attention_cached(1, 57, 4, 2, 64, 0);
    test_attention_cached(7, 90, 4, 2, 32, 20);
    test_attention_step(4, 2, 64, 0);
    test_attention_step(8, 1, 256, 100);   /* two of D's dimensions a thread */
    att_softcap = 0.5f;
    test_attention_cached(7, 90, 4, 2, 32, 20);
    test_attention_step(4, 2, 32, 20);
    att_softcap = 0.0f;
    /* the output and its gradient in bf16 alone, as the model keeps them in bf16 math */
    att_compact = 1;
    test_attention(2, 130, 4, 1, 64, 0, 1, "fused", 1e-5, 1e-4);
    test_attention_cached(7, 90, 4, 2, 32, 20);
    test_attention_step(4, 2, 32, 0);
    att_compact = 0;
    check_grouped("bf16");
    test_moe(300, 8, 2, 96, 16, 0, bf16_tol);
    test_moe(200, 4, 1, 64, 8, 1, bf16_tol);
    /* experts without tokens (40 for 64), twice: the second finds the first's gradients in
     * the op's work, as a layer finds the layer before's */
    for (int i = 0; i < 2; i++)
        test_moe(40, 64, 1, 64, 16, 0, bf16_tol);
    test_moe(60, 4, 2, 40, 4, 1, bf16_tol);  /* rows of 4: too narrow to group, one an expert */
    test_expert_shapes(bf16_tol);   /* cuBLAS's, for the mma kernels' below */
    gpu_finish();
    /* the weights' gradients grouped in bf16 too, then added to the fp32 ones
     * (PESC_CUDA_GROUPED=all; by default one product an expert straight into fp32) */
    setenv("PESC_CUDA_GROUPED", "all", 1);
    gpu_again();
    test_moe(300, 8, 2, 96, 16, 0, bf16_tol);
    for (int i = 0; i < 2; i++)
        test_moe(40, 64, 1, 64, 16, 0, bf16_tol);
    gpu_finish();
    unsetenv("PESC_CUDA_GROUPED");
    /* the experts' products, rows and weight gradients, on our own mma kernels
     * (PESC_CUDA_EXPERTS=mma): the bf16 phase's cases and shapes */
    setenv("PESC_CUDA_EXPERTS", "mma", 1);
    gpu_again();
    check_experts_mma();
    test_moe(300, 8, 2, 96, 16, 0, bf16_tol);
    test_moe(200, 4, 1, 64, 8, 1, bf16_tol);
    for (int i = 0; i < 2; i++)
        test_moe(40, 64, 1, 64, 16, 0, bf16_tol);
    test_moe(60, 4, 2, 40, 4, 1, bf16_tol);   /* R 4: not a multiple of 8, on cuBLAS */
    test_moe(50, 4, 2, 36, 12, 1, bf16_tol);   /* rows not of 8s: a value a thread */
    test_expert_shapes(bf16_tol);
    gpu_finish();
    unsetenv("PESC_CUDA_EXPERTS");
    /* the adapters' rows laid out by expert (moe_rows.h): on multiples of 16 rows; of 32 with
     * room 4; with no rounding and room 2. Hand-made groups make sure of each kind (balanced:
     * all in a block in all three; the uneven shapes, one of 130 rows in 187, a block of 16
     * and 50 and rows after it); 40 tokens of 64 experts, fewer slots than align an expert,
     * keep perm's order. */
    static const char *const layouts[][2] = {{"16", "1"}, {"32", "4"}, {"1", "2"}};
    static const int balanced[] = {40, 37, 33, 39};
    for (int i = 0; i < 3; i++) {
        setenv("PESC_CUDA_EXPERT_ALIGN", layouts[i][0], 1);
        setenv("PESC_CUDA_EXPERT_ROOM", layouts[i][1], 1);
        gpu_again();
        memset(layouts_seen, 0, sizeof layouts_seen);
        test_moe(300, 8, 2, 96, 16, 0, bf16_tol);
        test_moe(200, 4, 1, 64, 8, 1, bf16_tol);
        test_moe(40, 64, 1, 64, 16, 0, bf16_tol);
        test_moe(60, 4, 2, 40, 4, 1, bf16_tol);
        test_expert_products(balanced, 4, 1, 96, 64, bf16_tol);
        test_expert_shapes(bf16_tol);
        gpu_finish();
        char what[96];
        snprintf(what, sizeof what, "align %s, room %s: the layouts each test was meant to get",
                 layouts[i][0], layouts[i][1]);
        int ok = layouts_seen[BLOCK_ONLY] > 0 && (i == 1 || layouts_seen[BLOCK_AND_REST] > 0) &&
                 (i != 0 || layouts_seen[PERM_ORDER] > 0);
        gpu_test_verdict(ok, what, layouts_seen[BLOCK_AND_REST], "tests with a block and a rest");
    }
    /* ... with the weights' gradients grouped in bf16 (PESC_CUDA_GROUPED=all: batched in bf16
     * where alike, then added), and with the row products on the mma kernels */
    setenv("PESC_CUDA_EXPERT_ALIGN", "32", 1);
    setenv("PESC_CUDA_EXPERT_ROOM", "4", 1);
    setenv("PESC_CUDA_GROUPED", "all", 1);
    gpu_again();
    for (int i = 0; i < 2; i++)
        test_moe(300, 8, 2, 96, 16, 0, bf16_tol);
    test_expert_products(balanced, 4, 1, 96, 64, bf16_tol);
    gpu_finish();
    unsetenv("PESC_CUDA_GROUPED");
    setenv("PESC_CUDA_EXPERT_ALIGN", "16", 1);
    setenv("PESC_CUDA_EXPERTS", "mma", 1);
    gpu_again();
    test_moe(300, 8, 2, 96, 16, 0, bf16_tol);
    test_expert_products(balanced, 4, 1, 96, 64, bf16_tol);
    test_expert_shapes(bf16_tol);
    gpu_finish();
    unsetenv("PESC_CUDA_EXPERTS");
    unsetenv("PESC_CUDA_EXPERT_ALIGN");
    unsetenv("PESC_CUDA_EXPERT_ROOM");

    /* the same products in plain fp32 must match the CPU closely: layouts, not rounding */
    setenv("PESC_CUDA_MATH", "fp32", 1);
    setenv("PESC_CUDA_ATTENTION", "gemm", 1);
    gpu_again();
    test_matmul(300, 200, 150, 1e-5, "fp32");
    test_matmul(301, 200, 8, 1e-5, "fp32 narrow");
    test_compact(1e-5);   /* plain fp32 memory here */
    test_moe(300, 8, 2, 96, 16, 1, 1e-5);
    test_moe(50, 4, 2, 36, 12, 1, 1e-5);
    test_attention_shapes("gemm fp32", 1e-5, 1e-4);
    gpu_finish();
    /* fp32 rows in the layouts: one product an expert, or grouped, never batched */
    for (int i = 0; i < 2; i++) {
        setenv("PESC_CUDA_EXPERT_ALIGN", layouts[i][0], 1);
        setenv("PESC_CUDA_EXPERT_ROOM", layouts[i][1], 1);
        gpu_again();
        test_moe(300, 8, 2, 96, 16, 1, 1e-5);
        test_expert_products(balanced, 4, 1, 96, 64, 1e-5);
        gpu_finish();
    }
    unsetenv("PESC_CUDA_EXPERT_ALIGN");
    unsetenv("PESC_CUDA_EXPERT_ROOM");
    setenv("PESC_CUDA_ATTENTION_TILE", "65536", 1);
    gpu_again();
    test_attention_small_tiles("gemm fp32 64K tiles", 1e-5, 1e-4);
    unsetenv("PESC_CUDA_ATTENTION_TILE");
    setenv("PESC_CUDA_MATH", "tf32", 1);
    gpu_finish();
    gpu_again();
    test_matmul(300, 200, 150, 5e-3, "tf32");
    test_attention_shapes("gemm tf32", 5e-3, 1e-2);
    gpu_finish();
    setenv("PESC_CUDA_MATH", "bf16", 1);
    gpu_again();
    test_attention_shapes("gemm bf16", 2e-2, 3e-2);
    att_compact = 1;
    test_attention(2, 130, 4, 1, 64, 0, 1, "gemm bf16", 2e-2, 3e-2);
    att_compact = 0;
    gpu_finish();
    /* bf16 math's flash forward (mma) writes its output's bf16 copy for the product after, or
     * its bf16 values alone; the backward takes a gradient in bf16 alone as its operand */
    setenv("PESC_CUDA_ATTENTION", "flash", 1);
    gpu_again();
    test_attention(2, 130, 4, 1, 64, 0, 1, "flash bf16", 1e-2, 2e-2);
    att_compact = 1;
    test_attention(2, 130, 4, 1, 64, 0, 1, "flash bf16", 1e-2, 2e-2);
    test_attention(1, 200, 2, 2, 96, 33, 0, "flash bf16", 1e-2, 2e-2);
    att_compact = 0;
    gpu_finish();
    setenv("PESC_CUDA_ATTENTION", "flash-wmma", 1);
    gpu_again();
    att_compact = 1;
    test_attention(2, 130, 4, 1, 64, 0, 1, "flash-wmma bf16", 1e-2, 2e-2);
    att_compact = 0;
    gpu_finish();
    unsetenv("PESC_CUDA_ATTENTION");
    /* fp32 operands rounded to bf16 inside cuBLAS; flash attention in half and bf16, on the
     * mma kernels, then on the wmma ones */
    setenv("PESC_CUDA_MATH", "fast-bf16", 1);
    setenv("PESC_CUDA_ATTENTION", "flash", 1);
    gpu_again();
    test_matmul(300, 200, 150, bf16_tol, "fast-bf16");
    check_grouped("fast-bf16");
    test_moe(300, 8, 2, 96, 16, 1, bf16_tol);
    /* where flash runs at all (sm_80 on), its mma kernels: the device's products agreed with
     * their fragment layout at start (else it says so and runs the wmma kernels) */
    if (!strstr(backend_device(gpu), "flash needs"))
        gpu_test_verdict(strstr(backend_device(gpu), "flash (mma)") != NULL,
                         "flash attention on the mma kernels (layout check passed)", 0.0,
                         "device line: flash (mma)");
    test_attention_flash("flash");
    gpu_finish();
    setenv("PESC_CUDA_ATTENTION", "flash-wmma", 1);
    gpu_again();
    test_attention_flash("flash-wmma");
    gpu_finish();
    /* on the emulator, a device with an sm_86/sm_89 card's 99 KiB of shared memory a block:
     * each head dimension runs the flash kernels that fit (mma at 32 and 64), or the fused ones
     * (96, 128), instead of failing the launch */
    if (gpu_test_emulated) {
        setenv("PESC_CUDA_ATTENTION", "flash", 1);
        setenv("PESC_EMU_SHARED_KB", "99", 1);
        gpu_again();
        test_attention_flash("flash, 99 KiB");
        gpu_finish();
        unsetenv("PESC_EMU_SHARED_KB");
        /* a cuBLAS that refuses every grouped call: the adapters run one product an expert */
        setenv("PESC_CUDA_MATH", "tf32", 1);
        setenv("PESC_EMU_NO_GROUPED", "1", 1);
        gpu_again();
        gpu_test_verdict(strstr(backend_device(gpu), "adapters grouped") == NULL,
                         "grouping refused: one product an expert", 0.0,
                         "device line: nothing grouped");
        test_moe(300, 8, 2, 96, 16, 1, 5e-3);
        gpu_finish();
        /* ... in bf16 math: one bf16 product an expert, on bf16 rows still */
        setenv("PESC_CUDA_MATH", "bf16", 1);
        gpu_again();
        gpu_test_verdict(strstr(backend_device(gpu), "adapters grouped") == NULL &&
                         saved_in_bf16(), "grouping refused in bf16: one product an expert", 0.0,
                         "device line: nothing grouped, rows in bf16");
        test_moe(300, 8, 2, 96, 16, 1, bf16_tol);
        gpu_finish();
        unsetenv("PESC_EMU_NO_GROUPED");
    }
    backend_delete(cpu);
    printf("%d failure%s\n", gpu_test_failures, gpu_test_failures == 1 ? "" : "s");
    return gpu_test_failures ? 1 : 0;
}
