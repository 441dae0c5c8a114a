// test_flash_emu — the CUDA flash-attention kernels, both sets (mma.sync,
// kernels/cuda/cuda_flash_mma.cuh, and wmma, kernels/cuda/cuda_flash.cuh), their real source,
// run on the CPU through tests/emu/cuda_emu.h and checked against the CPU backend's attention:
// forward (output, log-sum-exp) and backward (dq, dk, dv) on fresh random inputs, with grouped
// heads, sliding windows, packed documents, every head dimension the kernels take, and
// sequences that end inside a tile. Within bf16 bounds: the kernels' operands are half and
// bf16. Also the mma layout check's kernel against a product computed here.
// Outputs and converted operands start as NaN, so an entry the kernels never write fails
// (a transposed operand's padding too: P = 0 times NaN is NaN). No GPU needed.
#define PESC_CUDA_EMU 1
#include "cuda/cuda_flash_mma.cuh"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <vector>

extern "C" {
#include "gpu/gpu_test.h"
}

static pesc_backend *cpu;
static bool use_mma;   // the kernels under test: mma.sync, or wmma
// mma: the scores' q and k in bf16 (as where they are kept in bf16) instead of half
static bool bf16_scores;
// mma: dQ from the dS the dK/dV kernel stores (PESC_CUDA_FLASH_DQ=stored), which then runs first
static bool stored_ds;

static float *host_alloc(size_t n)
{
    pesc_error err;
    float *p = (float *)backend_alloc(cpu, n * sizeof(float), &err);
    if (!p)
        gpu_test_die(&err);
    return p;
}

static float *random_tensor(size_t n)
{
    float *x = host_alloc(n);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(2.0 * gpu_test_uniform() - 1.0);
    return x;
}

static void poison(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
}

static void compare(const char *what, const char *shape, const float *got, const float *want,
                    size_t n, double tol)
{
    char name[160], bound[48];
    snprintf(name, sizeof name, "%s %s", what, shape);
    snprintf(bound, sizeof bound, "normalized error, tolerance %.0e", tol);
    double e = gpu_test_error(got, want, n);
    gpu_test_verdict(e <= tol && std::isfinite(e), name, e, bound);
}

// x (n floats) as the kernels' operand type T, through their own conversion kernel; freed by
// the caller. Poisoned first, so an element the conversion misses shows.
template <class T> static T *converted(const float *x, size_t n)
{
    T *out = (T *)aligned_alloc(64, (n * sizeof(T) + 63) & ~(size_t)63);
    memset(out, 0xff, n * sizeof(T));
    emu_launch(dim3(3), dim3(64), 0, [&] { convert_kernel<T>(out, x, n, true); });
    return out;
}

static int tiles_of(int T) { return (T + FL_TILE - 1) / FL_TILE * FL_TILE; }

// x (B T, H, D) as T transposed to (B, H, D, tiles_of(T)), as the mma kernels take it
template <class T> static T *transposed(const float *x, int B, int T_len, int H, int D)
{
    int tp = tiles_of(T_len);
    size_t n = (size_t)B * H * D * tp;
    T *out = (T *)aligned_alloc(64, (n * sizeof(T) + 63) & ~(size_t)63);
    memset(out, 0xff, n * sizeof(T));
    emu_launch(dim3(tp / 32, H * D / 32, B), dim3(32, 8), 0,
               [&] { convert_transpose_kernel<T>(out, x, T_len, tp, H, D); });
    return out;
}

template <int NCH>
static void run_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                        int B, int T, int Hq, int Hkv, int window, const int32_t *seg)
{
    const int D = NCH * 16;
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    __half *qh = converted<__half>(q, nq), *kh = converted<__half>(k, nkv);
    __half *vh = use_mma ? transposed<__half>(v, B, T, Hkv, D) : converted<__half>(v, nkv);
    int rows = use_mma ? flash_mma_rows(D) : FL_TILE;   // a block's query rows
    dim3 grid((T + rows - 1) / rows, Hq, B);
    float scale = 1.0f / sqrtf((float)D);
    __nv_bfloat16 *q16 = NULL, *k16 = NULL;
    if (use_mma && bf16_scores) {
        q16 = converted<__nv_bfloat16>(q, nq);
        k16 = converted<__nv_bfloat16>(k, nkv);
        emu_launch(grid, dim3(FL_THREADS), flash_mma_forward_shared(D), [&] {
            flash_mma_forward_kernel<NCH, __nv_bfloat16>(out, NULL, lse, q16, k16, vh, T,
                                                         tiles_of(T), Hq, Hkv, window, seg,
                                                         scale);
        });
    } else if (use_mma)
        emu_launch(grid, dim3(FL_THREADS), flash_mma_forward_shared(D), [&] {
            flash_mma_forward_kernel<NCH>(out, NULL, lse, qh, kh, vh, T, tiles_of(T), Hq, Hkv,
                                          window, seg, scale);
        });
    else
        emu_launch(grid, dim3(FL_THREADS), flash_forward_shared(D), [&] {
            flash_forward_kernel<NCH>(out, NULL, lse, qh, kh, vh, T, Hq, Hkv, window, seg, scale);
        });
    void *all[] = {qh, kh, vh, q16, k16};
    for (void *p : all)
        free(p);
}

template <int NCH>
static void run_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                         const float *k, const float *v, const float *lse, const float *delta,
                         int B, int T, int Hq, int Hkv, int window, const int32_t *seg)
{
    const int D = NCH * 16;
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    __half *qh = converted<__half>(q, nq), *kh = converted<__half>(k, nkv);
    __nv_bfloat16 *vb = converted<__nv_bfloat16>(v, nkv);
    __nv_bfloat16 *dob = converted<__nv_bfloat16>(dout, nq);
    // wmma: q and k in bf16 too; mma: k and q in bf16, transposed (q's not read with bf16
    // scores: the dK/dV kernel takes q's rows)
    __nv_bfloat16 *qb = NULL, *kb = NULL, *kt = NULL, *qt = NULL;
    if (use_mma) {
        kt = transposed<__nv_bfloat16>(k, B, T, Hkv, D);
        qt = transposed<__nv_bfloat16>(q, B, T, Hq, D);
    } else {
        qb = converted<__nv_bfloat16>(q, nq);
        kb = converted<__nv_bfloat16>(k, nkv);
    }
    float scale = 1.0f / sqrtf((float)D);
    int rows = use_mma ? flash_mma_rows(D) : FL_TILE;   // a block's query rows, or keys
    dim3 grid((T + rows - 1) / rows, Hq, B);
    __nv_bfloat16 *q16 = NULL, *k16 = NULL, *ds = NULL;
    // poisoned: a pair the dK/dV kernel leaves unwritten shows; and a tile past the end,
    // which it must leave as it is
    size_t ds_n = use_mma && stored_ds ? (size_t)B * Hq * flash_ds_tiles(T) * FL_DS_TILE : 0;
    if (ds_n) {
        ds = (__nv_bfloat16 *)aligned_alloc(64, ((ds_n + FL_DS_TILE) * 2 + 63) & ~(size_t)63);
        memset(ds, 0xff, (ds_n + FL_DS_TILE) * 2);
    }
    if (use_mma && bf16_scores) {
        q16 = converted<__nv_bfloat16>(q, nq);
        k16 = converted<__nv_bfloat16>(k, nkv);
    }
    if (ds) {
        // made after dK and dV, below
    } else if (use_mma && bf16_scores) {
        emu_launch(grid, dim3(FL_THREADS), flash_mma_dq_shared(D), [&] {
            flash_mma_dq_kernel<NCH, __nv_bfloat16>(dq, NULL, dob, q16, k16, vb, NULL, lse, delta,
                                                    T, tiles_of(T), Hq, Hkv, window, seg, scale);
        });
    } else if (use_mma)
        emu_launch(grid, dim3(FL_THREADS), flash_mma_dq_shared(D), [&] {
            flash_mma_dq_kernel<NCH>(dq, NULL, dob, qh, kh, vb, kt, lse, delta, T, tiles_of(T), Hq,
                                     Hkv, window, seg, scale);
        });
    else
        emu_launch(grid, dim3(FL_THREADS), flash_dq_shared(D), [&] {
            flash_dq_kernel<NCH>(dq, NULL, dob, qh, kh, kb, vb, lse, delta, T, Hq, Hkv, window, seg,
                                 scale);
        });
    // each query head's part of dk and dv, then the groups' sums (groups of one: dk and dv)
    float *dk_part = dk, *dv_part = dv;
    if (Hq != Hkv) {
        dk_part = (float *)aligned_alloc(64, nq * sizeof(float));
        dv_part = (float *)aligned_alloc(64, nq * sizeof(float));
        poison(dk_part, nq);
        poison(dv_part, nq);
    }
    if (use_mma && bf16_scores)
        emu_launch(grid, dim3(FL_THREADS), flash_mma_dkdv_shared(D), [&] {
            auto dkdv = ds ? flash_mma_dkdv_kernel<NCH, __nv_bfloat16, true>
                           : flash_mma_dkdv_kernel<NCH, __nv_bfloat16>;
            dkdv(dk_part, dv_part, NULL, NULL, dob, q16, k16, vb, NULL, lse, delta, T,
                 tiles_of(T), Hq, Hkv, window, seg, scale, ds);
        });
    else if (use_mma)
        emu_launch(grid, dim3(FL_THREADS), flash_mma_dkdv_shared(D), [&] {
            auto dkdv = ds ? flash_mma_dkdv_kernel<NCH, __half, true> : flash_mma_dkdv_kernel<NCH>;
            dkdv(dk_part, dv_part, NULL, NULL, dob, qh, kh, vb, qt, lse, delta, T,
                 tiles_of(T), Hq, Hkv, window, seg, scale, ds);
        });
    else
        emu_launch(grid, dim3(FL_THREADS), flash_dkdv_shared(D), [&] {
            flash_dkdv_kernel<NCH>(dk_part, dv_part, NULL, NULL, dob, qh, qb, kh, vb, lse, delta, T,
                                   Hq, Hkv, window, seg, scale);
        });
    if (ds) {
        bool kept = true;
        for (size_t i = ds_n; i < ds_n + FL_DS_TILE; i++)
            kept = kept && __bfloat16_as_ushort(ds[i]) == 0xffff;
        gpu_test_verdict(kept, "flash (mma) dS stored within its tiles", kept ? 0.0 : 1.0,
                         "1 where the tile past them changed");
        emu_launch(grid, dim3(FL_THREADS), flash_mma_dq_ds_shared(D), [&] {
            flash_mma_dq_ds_kernel<NCH>(dq, NULL, ds, kt, T, tiles_of(T), Hq, Hkv, window, seg,
                                        scale);
        });
    }
    if (Hq != Hkv) {
        emu_launch(dim3(3), dim3(64), 0, [&] {
            flash_group_sum_kernel(dk, dv, NULL, NULL, dk_part, dv_part, (size_t)B * T, Hq, Hkv,
                                   D);
        });
        free(dk_part);
        free(dv_part);
    }
    void *all[] = {qh, kh, qb, kb, vb, dob, kt, qt, q16, k16, ds};
    for (void *p : all)
        free(p);
}

template <int NCH>
static void test_shape(int B, int T, int Hq, int Hkv, int window, bool packed)
{
    const int D = NCH * 16;
    size_t N = (size_t)B * T, nq = N * Hq * D, nkv = N * Hkv * D, rows = N * Hq;
    char shape[96];
    snprintf(shape, sizeof shape, "%s B%d T%d H%d/%d D%d%s%s", use_mma ? "mma" : "wmma", B, T,
             Hq, Hkv, D, window ? " window" : "", packed ? " packed" : "");
    stored_ds = false;
    float *q = random_tensor(nq), *k = random_tensor(nkv), *v = random_tensor(nkv);
    float *dout = random_tensor(nq);
    float *out = host_alloc(nq), *lse = host_alloc(rows), *got = host_alloc(nq);
    float *got_lse = host_alloc(rows);
    std::vector<int32_t> seg(N);
    for (int b = 0; b < B; b++)   // documents of random length
        for (int t = 0, start = 0; t < T; t++) {
            if (t > 0 && gpu_test_uniform() < 0.04)
                start = t;
            seg[(size_t)b * T + t] = start;
        }
    const int32_t *sp = packed ? seg.data() : NULL;

    attention_forward(cpu, out, lse, q, k, v, B, T, Hq, Hkv, D, window, 0.0f, sp);
    poison(got, nq);
    poison(got_lse, rows);
    run_forward<NCH>(got, got_lse, q, k, v, B, T, Hq, Hkv, window, sp);
    compare("flash forward out", shape, got, out, nq, 1e-2);
    compare("flash forward lse", shape, got_lse, lse, rows, 1e-2);

    // the backward from the CPU's forward, so it is judged on its own
    float *dq = host_alloc(nq), *dk = host_alloc(nkv), *dv = host_alloc(nkv);
    float *gdq = host_alloc(nq), *gdk = host_alloc(nkv), *gdv = host_alloc(nkv);
    float *delta = host_alloc(rows);
    attention_backward(cpu, dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, D, window, 0.0f,
                       sp);
    for (size_t r = 0; r < rows; r++) {   // delta (B, Hq, T) = rowsum(dout * out)
        size_t bt = r / Hq, h = r % Hq, t = bt % T, b = bt / T;
        double s = 0.0;
        for (int d = 0; d < D; d++)
            s += (double)dout[r * D + d] * out[r * D + d];
        delta[(b * Hq + h) * T + t] = (float)s;
    }
    poison(gdq, nq);
    poison(gdk, nkv);
    poison(gdv, nkv);
    run_backward<NCH>(gdq, gdk, gdv, dout, q, k, v, lse, delta, B, T, Hq, Hkv, window, sp);
    compare("flash backward dq", shape, gdq, dq, nq, 2e-2);
    compare("flash backward dk", shape, gdk, dk, nkv, 2e-2);
    compare("flash backward dv", shape, gdv, dv, nkv, 2e-2);
    if (use_mma) {
        // dQ from the stored dS: against the CPU's as above, and against the dQ kernel's own
        // (the same bf16 dS); dK and dV unchanged
        float *sdq = host_alloc(nq), *sdk = host_alloc(nkv), *sdv = host_alloc(nkv);
        poison(sdq, nq);
        poison(sdk, nkv);
        poison(sdv, nkv);
        stored_ds = true;
        run_backward<NCH>(sdq, sdk, sdv, dout, q, k, v, lse, delta, B, T, Hq, Hkv, window, sp);
        stored_ds = false;
        compare("flash backward dq, dS stored", shape, sdq, dq, nq, 2e-2);
        // the emulator's products sum in the same order either way: the same bits
        double same_dq = 0.0, same = 0.0;
        for (size_t i = 0; i < nq; i++)
            same_dq = std::max(same_dq, sdq[i] == gdq[i] ? 0.0 : 1.0);
        for (size_t i = 0; i < nkv; i++)
            same = std::max(same, sdk[i] == gdk[i] && sdv[i] == gdv[i] ? 0.0 : 1.0);
        char name[160];
        snprintf(name, sizeof name, "flash backward dq, dS stored, the dQ kernel's %s", shape);
        gpu_test_verdict(same_dq == 0.0, name, same_dq, "1 where any value differs");
        snprintf(name, sizeof name, "flash backward dk, dv with dS stored: the same %s", shape);
        gpu_test_verdict(same == 0.0, name, same, "1 where any value differs");
        float *more[] = {sdq, sdk, sdv};
        for (float *p : more)
            backend_free(cpu, p);
    }

    float *all[] = {q, k, v, dout, out, lse, got, got_lse, dq, dk, dv, gdq, gdk, gdv, delta};
    for (float *p : all)
        backend_free(cpu, p);
}

// x rounded to bf16, and to 0 where that is below half's normal range: a bf16 value of
// magnitude under 2^-17 has bits that half's subnormals lack (uniform draws give one in about
// 130,000 values, enough to change an output's last bit now and then), and one in [2^-17,
// 2^-14) is exact but keeps the test to the normal range it means to check.
static float bf16_exact_in_half(float x)
{
    float b = gpu_test_bf16(x);
    return std::fabs(b) < 0x1p-14f ? 0.0f : b;
}

// With q and k bf16 values (as where the model keeps them in bf16), the mma kernels' scores
// from them in bf16 are those from their half conversions (each value exact in half): the
// forward's output and lse, and the backward's dq, dk and dv, the same bit for bit.
template <int NCH>
static void test_bf16_scores(int B, int T, int Hq, int Hkv, int window, bool packed)
{
    const int D = NCH * 16;
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D, rows = (size_t)B * T * Hq;
    char shape[96];
    snprintf(shape, sizeof shape, "B%d T%d H%d/%d D%d%s%s", B, T, Hq, Hkv, D,
             window ? " window" : "", packed ? " packed" : "");
    float *q = random_tensor(nq), *k = random_tensor(nkv), *v = random_tensor(nkv);
    float *dout = random_tensor(nq), *delta = random_tensor(rows);
    for (size_t i = 0; i < nq; i++)
        q[i] = bf16_exact_in_half(q[i]);
    for (size_t i = 0; i < nkv; i++)
        k[i] = bf16_exact_in_half(k[i]);
    std::vector<int32_t> seg((size_t)B * T);
    for (int b = 0; b < B; b++)
        for (int t = 0, start = 0; t < T; t++) {
            if (t > 0 && gpu_test_uniform() < 0.04)
                start = t;
            seg[(size_t)b * T + t] = start;
        }
    const int32_t *sp = packed ? seg.data() : NULL;
    // out, lse, dq, dk, dv: half scores, bf16 scores, bf16 scores with dQ from the stored dS
    float *got[3][5];
    size_t sizes[5] = {nq, rows, nq, nkv, nkv};
    use_mma = true;
    for (int i = 0; i < 3; i++) {
        bf16_scores = i >= 1;
        stored_ds = i == 2;
        for (int j = 0; j < 5; j++) {
            got[i][j] = host_alloc(sizes[j]);
            poison(got[i][j], sizes[j]);
        }
        run_forward<NCH>(got[i][0], got[i][1], q, k, v, B, T, Hq, Hkv, window, sp);
        // the backward from the half run's lse on both
        run_backward<NCH>(got[i][2], got[i][3], got[i][4], dout, q, k, v, got[0][1], delta, B,
                          T, Hq, Hkv, window, sp);
    }
    bf16_scores = stored_ds = false;
    const char *names[5] = {"out", "lse", "dq", "dk", "dv"};
    for (int i = 1; i < 3; i++)
        for (int j = 0; j < 5; j++) {
            char name[160];
            snprintf(name, sizeof name, "flash (mma) %s, bf16 scores%s against half's %s",
                     names[j], i == 2 ? " and the stored dS" : "", shape);
            bool same = memcmp(got[0][j], got[i][j], sizes[j] * sizeof(float)) == 0;
            double e = gpu_test_error(got[i][j], got[0][j], sizes[j]);
            gpu_test_verdict(same && std::isfinite(e), name, e, "the same bits");
        }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 5; j++)
            backend_free(cpu, got[i][j]);
    float *all[] = {q, k, v, dout, delta};
    for (float *p : all)
        backend_free(cpu, p);
}

// q past half's range (1e5 > 65504) saturates at 65504 in the scores' operands: the output
// stays finite, where an infinite score would have made NaN of its row.
static void test_saturation(void)
{
    const int B = 1, T = 64, H = 1, D = 64;
    size_t n = (size_t)B * T * H * D;
    float *q = random_tensor(n), *k = random_tensor(n), *v = random_tensor(n);
    float *out = host_alloc(n), *lse = host_alloc((size_t)B * H * T);
    for (int d = 0; d < D; d++)
        q[5 * D + d] = d % 2 ? 1e5f : -1e5f;
    poison(out, n);
    run_forward<4>(out, lse, q, k, v, B, T, H, H, 0, NULL);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += !std::isfinite(out[i]);
    for (int t = 0; t < T; t++)
        bad += !std::isfinite(lse[t]);
    gpu_test_verdict(bad == 0,
                     use_mma ? "flash forward (mma) with q of 1e5: non-finite outputs"
                             : "flash forward (wmma) with q of 1e5: non-finite outputs",
                     (double)bad, "none");
    float *all[] = {q, k, v, out, lse};
    for (float *p : all)
        backend_free(cpu, p);
}

// The layout check's kernel (cuda_attention.cu runs it on the device at start): its product of
// random small integers, exact in T, against the product computed here.
template <class T> static void test_probe(const char *name)
{
    T a[16 * 16], b[16 * 16];
    float ai[16 * 16], bi[16 * 16], d[FLASH_PROBE_BLOCKS * 16 * 8];
    for (int i = 0; i < 16 * 16; i++)
        ai[i] = (float)(int)(gpu_test_uniform() * 17 - 8), a[i] = operand_cvt<T>(ai[i]);
    for (int i = 0; i < 16 * 16; i++)
        bi[i] = (float)(int)(gpu_test_uniform() * 17 - 8), b[i] = operand_cvt<T>(bi[i]);
    poison(d, FLASH_PROBE_BLOCKS * 16 * 8);
    emu_launch(dim3(1), dim3(32), FLASH_PROBE_SHARED,
               [&] { flash_mma_probe_kernel<T>(d, a, b); });
    // blocks 0, 1 and 3: b's columns 0 .. 7; 2 and 4: 8 .. 15 (flash_mma_probe_kernel)
    double worst = 0.0;
    for (int blk = 0; blk < FLASH_PROBE_BLOCKS; blk++)
        for (int r = 0; r < 16; r++)
            for (int j = 0; j < 8; j++) {
                int c0 = blk == 2 || blk == 4 ? 8 : 0;
                float want = 0.0f;
                for (int k = 0; k < 16; k++)
                    want += ai[r * 16 + k] * bi[k * 16 + c0 + j];
                float x = d[128 * blk + r * 8 + j];
                double e = std::isfinite(x) ? fabs(x - want) : INFINITY;
                worst = e > worst ? e : worst;
            }
    gpu_test_verdict(worst == 0.0, name, worst, "largest difference, exactly 0");
}

int main(void)
{
    pesc_error err;
    gpu_test_seed();
    if (!(cpu = backend_new("cpu", &err)))
        gpu_test_die(&err);
    test_probe<__half>("mma layout check, half");
    test_probe<__nv_bfloat16>("mma layout check, bf16");
    // every head dimension; T inside a tile, on a tile's edge, across several; GQA groups of
    // 1, 2 and 4; windows shorter and longer than a tile; packed documents; tiles whole for
    // every row of a warp (the kernels skip the masks there: the last two shapes, the one
    // windowed); each kernel set
    for (int mma = 1; mma >= 0; mma--) {
        use_mma = mma;
        test_shape<2>(2, 100, 4, 2, 0, false);
        test_shape<4>(2, 130, 4, 1, 0, true);
        test_shape<6>(1, 200, 2, 2, 33, false);
        test_shape<8>(1, 150, 4, 2, 17, true);
        test_shape<4>(1, 40, 2, 1, 0, false);
        test_shape<4>(1, 64, 2, 2, 0, true);
        test_shape<2>(1, 260, 2, 1, 90, true);
        test_shape<4>(1, 200, 2, 1, 0, false);
        test_shape<8>(1, 220, 2, 1, 150, false);
        test_shape<4>(1, 200, 2, 1, 40, false);
        test_saturation();
    }
    test_bf16_scores<2>(1, 130, 2, 1, 0, true);
    test_bf16_scores<4>(2, 200, 4, 1, 0, false);
    test_bf16_scores<6>(1, 100, 2, 2, 20, false);
    test_bf16_scores<8>(1, 150, 4, 2, 40, true);
    backend_delete(cpu);
    printf("%s\n", gpu_test_failures ? "FAILED" : "all passed");
    return gpu_test_failures ? 1 : 0;
}
