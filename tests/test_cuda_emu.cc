/* test_cuda_emu — the CUDA emulator (tests/emu/cuda_emu.h) that the kernel tests stand on.
 *
 * bf16 rounding against hand-worked bit patterns; a wmma GEMM in every layout against a double
 * loop on the same bf16 inputs; a shared-memory reduction; warp shuffles; every (block, thread)
 * of a 3-D launch running once; mma.sync m16n8k16 by the PTX ISA's fragment table; ldmatrix .x4
 * (plain and .trans) by the ISA's table, and as mma's fragments; cp.async copies made at their
 * wait, not before; and the preconditions aborting in a child process.
 * Exit 0 pass, 1 fail. */
#include <atomic>
#include <chrono>
#include <memory>

#include "cuda_emu.h"
#include "emu_check.h"

using namespace nvcuda;

static float float_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

template <class T> static T *alloc_aligned(size_t n)
{
    T *p = (T *)aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(99);
    }
    return p;
}

/* ---- bf16 rounding --------------------------------------------------------------------------- */
static void test_bf16(void)
{
    static const struct {
        uint32_t in;
        uint16_t want;
        const char *why;
    } cases[] = {
        {0x3f800000, 0x3f80, "1.0 is exact"},
        {0x3f808000, 0x3f80, "1.00390625, a tie, rounds down to even"},
        {0x3f818000, 0x3f82, "1.01171875, a tie, rounds up to even 1.015625"},
        {0x3f808001, 0x3f81, "just above a tie rounds up"},
        {0x3f80ffff, 0x3f81, "just below the next tie rounds down"},
        {0xc0200000, 0xc020, "-2.5 is exact"},
        {0x80000000, 0x8000, "-0 keeps its sign"},
        {0x7f7f7fff, 0x7f7f, "just below a tie at the top stays finite"},
        {0x7f7fffff, 0x7f80, "FLT_MAX rounds up to infinity"},
        {0x7f800000, 0x7f80, "infinity"},
        {0xff800000, 0xff80, "-infinity"},
        {0x00018000, 0x0002, "a subnormal tie rounds up to even"},
        {0x00008000, 0x0000, "the smallest subnormal tie rounds down to zero"},
        {0x7fc00001, 0x7fff, "a quiet NaN becomes the canonical NaN"},
        {0xffa00000, 0x7fff, "a signalling negative NaN becomes the canonical NaN"},
    };
    int bad = 0;
    for (const auto &c : cases) {
        float f = float_from_bits(c.in);
        uint16_t rn = __float2bfloat16_rn(f).bits, plain = __float2bfloat16(f).bits;
        float back = __bfloat162float(__nv_bfloat16{c.want});
        bool back_ok = isnan(f) ? isnan(back) : back == float_from_bits((uint32_t)c.want << 16);
        if (rn != c.want || plain != c.want || !back_ok) {
            verdict(false, "bf16 of 0x%08x (%s): got 0x%04x/0x%04x, want 0x%04x", c.in, c.why, rn,
                    plain, c.want);
            bad++;
        }
    }
    if (!bad)
        verdict(true, "bf16 rounding and widening: %zu hand-worked cases",
                sizeof cases / sizeof cases[0]);
    verdict(__bfloat162float(__float2bfloat16(1.01171875f)) == 1.015625f &&
                __bfloat162float(__float2bfloat16(1.00390625f)) == 1.0f,
            "bf16 ties to even on float literals (1.01171875 -> 1.015625, 1.00390625 -> 1.0)");
}

/* ---- half rounding --------------------------------------------------------------------------- */
static void test_half(void)
{
    static const struct {
        uint32_t in;
        uint16_t want;
        const char *why;
    } cases[] = {
        {0x3f800000, 0x3c00, "1.0 is exact"},
        {0x3f801000, 0x3c00, "1 + 2^-11, a tie, rounds down to even"},
        {0x3f803000, 0x3c02, "1 + 3 2^-11, a tie, rounds up to even"},
        {0xc0200000, 0xc100, "-2.5 is exact"},
        {0x80000000, 0x8000, "-0 keeps its sign"},
        {0x477fe000, 0x7bff, "65504, the largest half, is exact"},
        {0x477fefff, 0x7bff, "just below 65520 stays finite"},
        {0x477ff000, 0x7c00, "65520, a tie at the top, rounds to infinity"},
        {0x7f800000, 0x7c00, "infinity"},
        {0xff800000, 0xfc00, "-infinity"},
        {0x38800000, 0x0400, "2^-14, the smallest normal"},
        {0x387fe000, 0x0400, "just below it, a tie, rounds up to the smallest normal"},
        {0x33800000, 0x0001, "2^-24, the smallest subnormal"},
        {0x33000000, 0x0000, "2^-25, a tie, rounds down to zero"},
        {0x33400000, 0x0001, "1.5 2^-25 rounds up"},
        {0x33c00000, 0x0002, "1.5 2^-24, a tie, rounds up to even"},
        {0x322bcc77, 0x0000, "1e-8 is zero"},
        {0x7fc00001, 0x7fff, "a NaN becomes the canonical NaN"},
    };
    int bad = 0;
    for (const auto &c : cases) {
        float f = float_from_bits(c.in);
        uint16_t rn = __float2half_rn(f).bits, plain = __float2half(f).bits;
        float back = __half2float(__half{rn});
        bool back_ok = isnan(f) ? isnan(back) : back == f || __float2half_rn(back).bits == rn;
        if (rn != c.want || plain != c.want || !back_ok) {
            verdict(false, "half of 0x%08x (%s): got 0x%04x/0x%04x, want 0x%04x", c.in, c.why, rn,
                    plain, c.want);
            bad++;
        }
    }
    if (!bad)
        verdict(true, "half rounding and widening: %zu hand-worked cases",
                sizeof cases / sizeof cases[0]);
    verdict(__half2float(__half{0x0001}) == ldexpf(1.0f, -24) &&
                __half2float(__half{0x7bff}) == 65504.0f && __half2float(__half{0x3555}) ==
                0.333251953125f,
            "half widening: 2^-24, 65504, 0x3555 = 0.333251953125");
}

/* ---- wmma GEMM ------------------------------------------------------------------------------- */
enum { GEMM_M = 64, GEMM_N = 48, GEMM_K = 32 };

static bool is_row_major(wmma::row_major) { return true; }
static bool is_row_major(wmma::col_major) { return false; }

/* c (GEMM_M, GEMM_N) row-major = 0.5 * (a @ b + c); a (GEMM_M, GEMM_K) and b (GEMM_K, GEMM_N)
 * in the layouts given. Two warps per block, each owns one 16x16 tile of c, which goes in and
 * out through shared memory in c_layout: lane 0's store and the other lanes' reads are ordered
 * by __syncwarp, as a real kernel needs. */
static __nv_bfloat16 element(float x, __nv_bfloat16) { return __float2bfloat16(x); }
static __half element(float x, __half) { return __float2half_rn(x); }
static const char *element_name(__nv_bfloat16) { return "bf16"; }
static const char *element_name(__half) { return "half"; }

template <class T, class LayoutA, class LayoutB> static __global__ void
gemm_kernel(float *c, const T *a, const T *b, wmma::layout_t c_layout)
{
    PESC_DYNAMIC_SHARED(smem);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int tile_row = (blockIdx.y * 2 + warp) * 16, tile_col = blockIdx.x * 16;
    const bool c_rows = c_layout == wmma::mem_row_major;
    float *stage = (float *)smem + warp * 16 * 16; /* (16, 16) in c_layout */

    for (int e = lane; e < 256; e += 32)
        stage[emu_detail::tile_offset(e / 16, e % 16, 16, c_rows)] =
            c[(tile_row + e / 16) * GEMM_N + tile_col + e % 16];
    __syncwarp();
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::load_matrix_sync(acc, stage, 16, c_layout);

    for (int k0 = 0; k0 < GEMM_K; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> a_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> b_frag;
        if (is_row_major(LayoutA()))
            wmma::load_matrix_sync(a_frag, a + tile_row * GEMM_K + k0, GEMM_K);
        else
            wmma::load_matrix_sync(a_frag, a + k0 * GEMM_M + tile_row, GEMM_M);
        if (is_row_major(LayoutB()))
            wmma::load_matrix_sync(b_frag, b + k0 * GEMM_N + tile_col, GEMM_N);
        else
            wmma::load_matrix_sync(b_frag, b + tile_col * GEMM_K + k0, GEMM_K);
        wmma::mma_sync(acc, a_frag, b_frag, acc);
    }
    for (int i = 0; i < acc.num_elements; i++)
        acc.x[i] *= 0.5f;

    __syncwarp(); /* every lane has loaded the stage before lane 0 overwrites it */
    wmma::store_matrix_sync(stage, acc, 16, c_layout);
    __syncwarp();
    for (int e = lane; e < 256; e += 32)
        c[(tile_row + e / 16) * GEMM_N + tile_col + e % 16] =
            stage[emu_detail::tile_offset(e / 16, e % 16, 16, c_rows)];
}

template <class T, class LayoutA, class LayoutB> static void test_gemm(wmma::layout_t c_layout)
{
    const bool a_rows = is_row_major(LayoutA()), b_rows = is_row_major(LayoutB());
    T *a = alloc_aligned<T>(GEMM_M * GEMM_K);
    T *b = alloc_aligned<T>(GEMM_K * GEMM_N);
    float *c = alloc_aligned<float>(GEMM_M * GEMM_N);
    std::vector<double> a_value(GEMM_M * GEMM_K), b_value(GEMM_K * GEMM_N), want(GEMM_M * GEMM_N);
    for (int i = 0; i < GEMM_M; i++)
        for (int k = 0; k < GEMM_K; k++) {
            T h = element((float)(2.0 * uniform() - 1.0), T());
            a[emu_detail::tile_offset(i, k, a_rows ? GEMM_K : GEMM_M, a_rows)] = h;
            a_value[i * GEMM_K + k] = wmma::emu_float(h);
        }
    for (int k = 0; k < GEMM_K; k++)
        for (int j = 0; j < GEMM_N; j++) {
            T h = element((float)(2.0 * uniform() - 1.0), T());
            b[emu_detail::tile_offset(k, j, b_rows ? GEMM_N : GEMM_K, b_rows)] = h;
            b_value[k * GEMM_N + j] = wmma::emu_float(h);
        }
    for (int i = 0; i < GEMM_M * GEMM_N; i++)
        c[i] = (float)(2.0 * uniform() - 1.0);
    for (int i = 0; i < GEMM_M; i++)
        for (int j = 0; j < GEMM_N; j++) {
            double sum = c[i * GEMM_N + j];
            for (int k = 0; k < GEMM_K; k++)
                sum += a_value[i * GEMM_K + k] * b_value[k * GEMM_N + j];
            want[i * GEMM_N + j] = 0.5 * sum;
        }

    emu_launch(dim3(GEMM_N / 16, GEMM_M / 32), dim3(64), 2 * 16 * 16 * sizeof(float),
               [&] { gemm_kernel<T, LayoutA, LayoutB>(c, a, b, c_layout); });

    double diff = 0.0, norm = 0.0;
    for (int i = 0; i < GEMM_M * GEMM_N; i++) {
        diff += (c[i] - want[i]) * (c[i] - want[i]);
        norm += want[i] * want[i];
    }
    double err = sqrt(diff / norm);
    verdict(err <= 1e-6 && isfinite(err),
            "wmma %s %dx%d = %dx%d (%s) @ %dx%d (%s) + c (%s): normalized error %.1e",
            element_name(T()), GEMM_M, GEMM_N, GEMM_M, GEMM_K, a_rows ? "row" : "col", GEMM_K,
            GEMM_N, b_rows ? "row" : "col", c_layout == wmma::mem_row_major ? "row" : "col", err);
    free(a);
    free(b);
    free(c);
}

/* ---- shared memory and __syncthreads --------------------------------------------------------- */
/* sums[blockIdx.x] = the sum of the block's blockDim.x values of x, by a tree in shared memory.
 * fresh[thread] = its shared slot read 0xFF bytes (poisoned) at a 128-byte aligned address. */
static __global__ void block_sum_kernel(float *sums, int *fresh, const float *x)
{
    PESC_DYNAMIC_SHARED(smem);
    float *partial = (float *)smem; /* (blockDim.x) */
    const unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    uint32_t before;
    memcpy(&before, &partial[t], sizeof before);
    fresh[i] = before == 0xffffffffu && (uintptr_t)smem % 128 == 0 && isnan(partial[t]);
    partial[t] = x[i];
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride)
            partial[t] += partial[t + stride];
        __syncthreads();
    }
    if (t == 0)
        sums[blockIdx.x] = partial[0];
}

/* Threads from 48 on return at once (warps 2 and 3 whole, half of warp 1); the rest still meet
 * at __syncthreads and __syncwarp. sums[blockIdx.x] = 0 + 1 + ... + 47. */
static __global__ void early_return_kernel(int *sums)
{
    PESC_DYNAMIC_SHARED(smem);
    int *value = (int *)smem;
    const unsigned t = threadIdx.x;
    if (t >= 48)
        return;
    value[t] = (int)t;
    __syncwarp();
    __syncthreads();
    if (t == 0) {
        int sum = 0;
        for (int j = 0; j < 48; j++)
            sum += value[j];
        sums[blockIdx.x] = sum;
    }
}

static void test_block_reduction(void)
{
    enum { BLOCKS = 5, THREADS = 128 };
    std::vector<float> x(BLOCKS * THREADS), sums(BLOCKS, -1.0f);
    std::vector<int> fresh(BLOCKS * THREADS, 0);
    for (size_t i = 0; i < x.size(); i++)
        x[i] = (float)(int)(1000.0 * uniform());
    emu_launch(dim3(BLOCKS), dim3(THREADS), THREADS * sizeof(float),
               [&] { block_sum_kernel(sums.data(), fresh.data(), x.data()); });
    int wrong = 0, stale = 0;
    for (int blk = 0; blk < BLOCKS; blk++) {
        double want = 0.0;
        for (int t = 0; t < THREADS; t++)
            want += x[blk * THREADS + t];
        wrong += sums[blk] != (float)want;
    }
    for (int f : fresh)
        stale += !f;
    verdict(!wrong, "__syncthreads tree reduction over %d blocks of %d threads: %d wrong sums",
            BLOCKS, THREADS, wrong);
    verdict(
        !stale,
        "every block's shared memory starts 128-byte aligned and poisoned (NaN): %d stale reads",
        stale);

    std::vector<int> early(3, -1);
    emu_launch(dim3(3), dim3(128), 128 * sizeof(int), [&] { early_return_kernel(early.data()); });
    verdict(early[0] == 1128 && early[1] == 1128 && early[2] == 1128,
            "threads that return early drop out of __syncthreads and __syncwarp (sums %d %d %d, "
            "want 1128)",
            early[0], early[1], early[2]);
}

/* ---- warp shuffles --------------------------------------------------------------------------- */
enum { SHUFFLE_ROUNDS = 40 };

/* For each round r, xor_float[r][i] and xor_int[r][i] = the warp's sum of (id + r) by butterfly;
 * broadcast[i] = lane 5's id * 3; down[i] / up[i] = the next / previous lane's id (own at the
 * warp's ends). */
static __global__ void shuffle_kernel(float *xor_float, int *xor_int, int *broadcast, int *down,
                                      int *up, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    for (int r = 0; r < SHUFFLE_ROUNDS; r++) {
        float v = (float)(i + r);
        int iv = i + r;
        for (int lane_mask = 16; lane_mask > 0; lane_mask /= 2) {
            v += __shfl_xor_sync(0xffffffffu, v, lane_mask);
            iv += __shfl_xor_sync(0xffffffffu, iv, lane_mask);
        }
        xor_float[r * n + i] = v;
        xor_int[r * n + i] = iv;
    }
    broadcast[i] = __shfl_sync(0xffffffffu, i * 3, 5);
    down[i] = __shfl_down_sync(0xffffffffu, i, 1);
    up[i] = __shfl_up_sync(0xffffffffu, i, 1);
}

static void test_shuffles(void)
{
    enum { BLOCKS = 2, THREADS = 128, N = BLOCKS * THREADS };
    std::vector<float> xor_float(SHUFFLE_ROUNDS * N);
    std::vector<int> xor_int(SHUFFLE_ROUNDS * N), broadcast(N), down(N), up(N);
    emu_launch(dim3(BLOCKS), dim3(THREADS), 0, [&] {
        shuffle_kernel(xor_float.data(), xor_int.data(), broadcast.data(), down.data(), up.data(),
                       N);
    });
    int wrong_xor = 0, wrong_other = 0;
    for (int i = 0; i < N; i++) {
        const int base = i / 32 * 32, lane = i % 32;
        for (int r = 0; r < SHUFFLE_ROUNDS; r++) {
            const int want = 32 * (base + r) + 31 * 32 / 2;
            wrong_xor += xor_float[r * N + i] != (float)want || xor_int[r * N + i] != want;
        }
        wrong_other += broadcast[i] != (base + 5) * 3;
        wrong_other += down[i] != (lane == 31 ? i : i + 1);
        wrong_other += up[i] != (lane == 0 ? i : i - 1);
    }
    verdict(!wrong_xor, "__shfl_xor_sync butterfly sums, float and int, %d rounds: %d wrong",
            SHUFFLE_ROUNDS, wrong_xor);
    verdict(!wrong_other, "__shfl_sync broadcast, __shfl_down_sync, __shfl_up_sync: %d wrong",
            wrong_other);
}

/* ---- mma.sync m16n8k16 ---------------------------------------------------------------------- */
/* Each lane builds its fragments by the PTX ISA's table, written out here element by element
 * (row/column of each register half), and stores its C the same way; the product of random small
 * integers (exact in half, bf16 and fp32) against the loop's. */
template <class T> static uint32_t pair_bits(const T *m, int ld, int r0, int c0, int dr, int dc)
{
    T lo = m[r0 * ld + c0], hi = m[(r0 + dr) * ld + c0 + dc];
    return (uint32_t)lo.bits | (uint32_t)hi.bits << 16;
}

template <class T> static __global__ void mma_kernel(float *c, const T *a, const T *b)
{
    int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    /* A 16 x 16 row-major: a0 a1 (row g, cols 2t, 2t+1), a2 a3 (row g + 8), a4 a5 (row g,
     * cols 2t + 8, 2t + 9), a6 a7 (row g + 8, cols 2t + 8, 2t + 9) */
    uint32_t af[4] = {pair_bits(a, 16, g, 2 * t, 0, 1), pair_bits(a, 16, g + 8, 2 * t, 0, 1),
                      pair_bits(a, 16, g, 2 * t + 8, 0, 1),
                      pair_bits(a, 16, g + 8, 2 * t + 8, 0, 1)};
    /* B 16 x 8 row-major here: b0 b1 (rows 2t, 2t+1 of column g), b2 b3 (rows 2t + 8, 2t + 9) */
    uint32_t bf[2] = {pair_bits(b, 8, 2 * t, g, 1, 0), pair_bits(b, 8, 2 * t + 8, g, 1, 0)};
    float acc[4] = {1.0f, 1.0f, 1.0f, 1.0f};   /* C = 1: the product adds to it */
    emu_mma_m16n8k16<T>(acc, af, bf);
    c[g * 8 + 2 * t] = acc[0], c[g * 8 + 2 * t + 1] = acc[1];
    c[(g + 8) * 8 + 2 * t] = acc[2], c[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

template <class T> static void test_mma(void)
{
    T a[16 * 16], b[16 * 8];
    int ai[16 * 16], bi[16 * 8];
    for (int i = 0; i < 16 * 16; i++)
        ai[i] = (int)(uniform() * 19) - 9, a[i] = element((float)ai[i], T());
    for (int i = 0; i < 16 * 8; i++)
        bi[i] = (int)(uniform() * 19) - 9, b[i] = element((float)bi[i], T());
    std::vector<float> c(16 * 8, NAN);
    emu_launch(dim3(1), dim3(32), 0, [&] { mma_kernel<T>(c.data(), a, b); });
    int wrong = 0;
    for (int r = 0; r < 16; r++)
        for (int j = 0; j < 8; j++) {
            int want = 1;
            for (int k = 0; k < 16; k++)
                want += ai[r * 16 + k] * bi[k * 8 + j];
            wrong += c[r * 8 + j] != (float)want;
        }
    verdict(!wrong, "mma m16n8k16 %s, fragments by the PTX ISA's table: %d of 128 wrong",
            element_name(T()), wrong);
}

/* ---- ldmatrix .x4 ---------------------------------------------------------------------------- */
/* A 32 x 8 matrix of distinct bf16 bit patterns (rows LD apart in shared memory): lane l points
 * at row l, so matrix i is rows 8i .. 8i + 7, and each lane's registers are checked against the
 * PTX ISA's table. Then the loads a GEMM makes: A (16 x 16, row-major) as an mma A fragment, and
 * B (16 x 16, k-major: row k holds 16 columns) through .trans as the B fragments of two 8-column
 * chunks; their products against the loop's. */
enum { LDM_LD = 24 };   /* a padded row: 48 bytes */

static __global__ void ldmatrix_kernel(int *wrong, float *c, const uint16_t *m,
                                       const __nv_bfloat16 *a, const __nv_bfloat16 *b)
{
    PESC_DYNAMIC_SHARED(smem);
    uint16_t *tile = (uint16_t *)smem;                                 /* (32, LDM_LD) */
    __nv_bfloat16 *as = (__nv_bfloat16 *)(smem + 32 * LDM_LD * 2);     /* (16, LDM_LD) */
    __nv_bfloat16 *bs = as + 16 * LDM_LD;                              /* (16, LDM_LD) */
    int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    for (int j = 0; j < 8; j++)
        tile[lane * LDM_LD + j] = m[lane * 8 + j];
    for (int j = 0; j < 16 && lane < 16; j++)
        as[lane * LDM_LD + j] = a[lane * 16 + j], bs[lane * LDM_LD + j] = b[lane * 16 + j];
    __syncwarp();
    uint32_t r[4], rt[4];
    emu_ldmatrix_x4(r, tile + lane * LDM_LD);
    emu_ldmatrix_x4_trans(rt, tile + lane * LDM_LD);
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        const uint16_t *mi = m + 8 * i * 8;   /* matrix i, rows of 8 */
        bad += r[i] != (mi[g * 8 + 2 * t] | (uint32_t)mi[g * 8 + 2 * t + 1] << 16);
        bad += rt[i] != (mi[2 * t * 8 + g] | (uint32_t)mi[(2 * t + 1) * 8 + g] << 16);
    }
    wrong[lane] = bad;
    /* A: lanes 0-15 rows 0-15 at column 0, lanes 16-31 the same rows at column 8;
     * B: matrix i = lane / 8 is rows 8 (i % 2) .. of columns 8 (i / 2) .. */
    uint32_t af[4], bf[4];
    emu_ldmatrix_x4(af, as + (lane % 16) * LDM_LD + (lane / 16) * 8);
    emu_ldmatrix_x4_trans(bf, bs + ((lane / 8) % 2 * 8 + lane % 8) * LDM_LD + (lane / 16) * 8);
    for (int n = 0; n < 2; n++) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        emu_mma_m16n8k16<__nv_bfloat16>(acc, af, bf + 2 * n);
        for (int e = 0; e < 4; e++)
            c[(g + 8 * (e / 2)) * 16 + 8 * n + 2 * t + e % 2] = acc[e];
    }
}

static void test_ldmatrix(void)
{
    uint16_t m[32 * 8];
    for (int i = 0; i < 32 * 8; i++)
        m[i] = (uint16_t)(i * 37 + 11);
    __nv_bfloat16 a[16 * 16], b[16 * 16];
    int ai[16 * 16], bi[16 * 16];
    for (int i = 0; i < 16 * 16; i++) {
        ai[i] = (int)(uniform() * 19) - 9, a[i] = element((float)ai[i], __nv_bfloat16());
        bi[i] = (int)(uniform() * 19) - 9, b[i] = element((float)bi[i], __nv_bfloat16());
    }
    std::vector<int> wrong(32, 1);
    std::vector<float> c(16 * 16, NAN);
    emu_launch(dim3(1), dim3(32), (32 + 2 * 16) * LDM_LD * 2,
               [&] { ldmatrix_kernel(wrong.data(), c.data(), m, a, b); });
    int bad = 0, bad_product = 0;
    for (int l = 0; l < 32; l++)
        bad += wrong[l];
    for (int r = 0; r < 16; r++)
        for (int j = 0; j < 16; j++) {
            int want = 0;
            for (int k = 0; k < 16; k++)
                want += ai[r * 16 + k] * bi[k * 16 + j];
            bad_product += c[r * 16 + j] != (float)want;
        }
    verdict(!bad && !bad_product,
            "ldmatrix .x4 and .x4.trans by the PTX ISA's table (%d of 256 registers wrong), as "
            "mma's A and B fragments (%d of 256 products wrong)", bad, bad_product);
}

static void ldmatrix_misaligned(void)
{
    PESC_DYNAMIC_SHARED(smem);
    uint32_t r[4];
    emu_ldmatrix_x4(r, smem + 8);
}

/* ---- cp.async ------------------------------------------------------------------------------- */
/* Each thread copies 16 bytes of src (or zeros, for odd threads in the second group) into shared
 * memory that holds 0x5a: before its wait the bytes are the old ones, after it the new. */
static __global__ void cp_async_kernel(int *before, int *after_first, int *after_all,
                                       const uint8_t *src)
{
    PESC_DYNAMIC_SHARED(smem);
    int i = threadIdx.x;
    uint8_t *mine = smem + 32 * i;
    memset(mine, 0x5a, 32);
    emu_cp_async(mine, src + 16 * i, 16, 16);
    emu_cp_async_commit();
    emu_cp_async(mine + 16, src + 16 * i, 16, i % 2 ? 0 : 16);
    emu_cp_async_commit();
    before[i] = mine[0] == 0x5a && mine[16] == 0x5a;
    emu_cp_async_wait(1);   /* the first group only */
    after_first[i] = memcmp(mine, src + 16 * i, 16) == 0 && mine[16] == 0x5a;
    emu_cp_async_wait(0);
    uint8_t zeros[16] = {0};
    after_all[i] = memcmp(mine + 16, i % 2 ? zeros : src + 16 * i, 16) == 0;
}

static void test_cp_async(void)
{
    enum { THREADS = 64 };
    alignas(16) static uint8_t src[16 * THREADS];
    for (int i = 0; i < 16 * THREADS; i++)
        src[i] = (uint8_t)(i * 7 + 1);
    std::vector<int> before(THREADS), first(THREADS), all(THREADS);
    emu_launch(dim3(1), dim3(THREADS), 32 * THREADS,
               [&] { cp_async_kernel(before.data(), first.data(), all.data(), src); });
    int wrong_before = 0, wrong_first = 0, wrong_all = 0;
    for (int i = 0; i < THREADS; i++)
        wrong_before += !before[i], wrong_first += !first[i], wrong_all += !all[i];
    verdict(!wrong_before && !wrong_first && !wrong_all,
            "cp.async: copies made at their wait_group (%d read early, %d after the first "
            "group, %d after all, zero-fill included)",
            wrong_before, wrong_first, wrong_all);
}

static void cp_async_unwaited(void)
{
    PESC_DYNAMIC_SHARED(smem);
    alignas(16) static uint8_t src[16];
    emu_cp_async(smem, src, 16, 16);
    emu_cp_async_commit();
}

static void cp_async_outside_shared(void)
{
    alignas(16) static uint8_t src[16], dst[16];
    emu_cp_async(dst, src, 16, 16);
}

/* ---- a 3-D launch ---------------------------------------------------------------------------- */
/* hits[(block, thread)] counts the runs of each pair; mismatches counts threads that saw a
 * blockDim or gridDim other than the launch's. */
static __global__ void grid_kernel(std::atomic<int> *hits, std::atomic<int> *mismatches, dim3 grid,
                                   dim3 block)
{
    const unsigned block_id = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const unsigned thread_id = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    hits[block_id * blockDim.x * blockDim.y * blockDim.z + thread_id]++;
    if (blockDim.x != block.x || blockDim.y != block.y || blockDim.z != block.z ||
        gridDim.x != grid.x || gridDim.y != grid.y || gridDim.z != grid.z ||
        threadIdx.x >= block.x || threadIdx.y >= block.y || threadIdx.z >= block.z ||
        blockIdx.x >= grid.x || blockIdx.y >= grid.y || blockIdx.z >= grid.z)
        (*mismatches)++;
    __syncthreads();
}

static void test_grid_3d(dim3 grid, dim3 block)
{
    const unsigned n = grid.x * grid.y * grid.z * block.x * block.y * block.z;
    std::unique_ptr<std::atomic<int>[]> hits(new std::atomic<int>[n]());
    std::atomic<int> mismatches(0);
    emu_launch(grid, block, 0, [&] { grid_kernel(hits.get(), &mismatches, grid, block); });
    unsigned not_once = 0;
    for (unsigned i = 0; i < n; i++)
        not_once += hits[i] != 1;
    verdict(!not_once && !mismatches,
            "grid (%u,%u,%u) x block (%u,%u,%u): %u of %u (block, thread) pairs not run "
            "exactly once, %d wrong built-ins",
            grid.x, grid.y, grid.z, block.x, block.y, block.z, not_once, n, mismatches.load());
}

/* ---- preconditions that abort ---------------------------------------------------------------- */
static void misaligned_load(void)
{
    alignas(32) static __nv_bfloat16 tile[32 * 16];
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> f;
    wmma::load_matrix_sync(f, tile + 8, 32);
}

static void misaligned_float4(void)
{
    alignas(16) static float row[8];
    emu_detail::load_float4(row + 2);
}

static void odd_ldm_load(void)
{
    alignas(32) static __nv_bfloat16 tile[24 * 16];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> f;
    wmma::load_matrix_sync(f, tile, 20);
}

static void odd_ldm_store(void)
{
    alignas(32) static float tile[18 * 16];
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> f;
    wmma::fill_fragment(f, 0.0f);
    wmma::store_matrix_sync(tile, f, 18, wmma::mem_row_major);
}

static void misaligned_store(void)
{
    alignas(32) static float tile[17 * 16];
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> f;
    wmma::fill_fragment(f, 0.0f);
    wmma::store_matrix_sync(tile + 4, f, 16, wmma::mem_col_major);
}

static void partial_mask(void) { __syncwarp(0x0000ffffu); }

/* Lane 5 loads another tile, or changes its fragment before the product: the warp's one call
 * would mix what the lanes hold. */
static void lane_loads_other_tile(void)
{
    alignas(32) static __nv_bfloat16 tiles[2][16 * 16];
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::load_matrix_sync(a, tiles[threadIdx.x == 5], 16);
}
static void lane_changes_fragment(void)
{
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::fill_fragment(a, __float2bfloat16(threadIdx.x == 5 ? 2.0f : 1.0f));
    wmma::fill_fragment(b, __float2bfloat16(1.0f));
    wmma::fill_fragment(c, 0.0f);
    wmma::mma_sync(c, a, b, c);
}

/* A kernel on one warp, for expect_abort. */
template <void (*kernel)(void)> static void on_one_warp(void)
{
    emu_launch(dim3(1), dim3(32), 0, [] { kernel(); });
}

int main(void)
{
    auto start = std::chrono::steady_clock::now();
    test_bf16();
    test_half();
    test_gemm<__nv_bfloat16, wmma::row_major, wmma::row_major>(wmma::mem_row_major);
    test_gemm<__nv_bfloat16, wmma::row_major, wmma::col_major>(wmma::mem_col_major);
    test_gemm<__nv_bfloat16, wmma::col_major, wmma::row_major>(wmma::mem_row_major);
    test_gemm<__nv_bfloat16, wmma::col_major, wmma::col_major>(wmma::mem_col_major);
    test_gemm<__nv_bfloat16, wmma::col_major, wmma::row_major>(wmma::mem_col_major);
    test_gemm<__half, wmma::row_major, wmma::col_major>(wmma::mem_row_major);
    test_gemm<__half, wmma::col_major, wmma::row_major>(wmma::mem_col_major);
    test_block_reduction();
    test_shuffles();
    test_mma<__half>();
    test_mma<__nv_bfloat16>();
    test_ldmatrix();
    test_cp_async();
    test_grid_3d(dim3(3, 2, 2), dim3(32, 2, 2));
    test_grid_3d(dim3(2, 3, 1), dim3(10, 3, 2));
    expect_abort("load_matrix_sync 16 bytes off a 32-byte boundary", on_one_warp<misaligned_load>,
                 "not 32-byte aligned");
    expect_abort("load_matrix_sync of bf16 with ldm 20", on_one_warp<odd_ldm_load>,
                 "ldm 20 is not a multiple of 8");
    expect_abort("store_matrix_sync of float with ldm 18", on_one_warp<odd_ldm_store>,
                 "ldm 18 is not a multiple of 4");
    expect_abort("store_matrix_sync 16 bytes off a 32-byte boundary", on_one_warp<misaligned_store>,
                 "not 32-byte aligned");
    expect_abort("__syncwarp with half a mask", on_one_warp<partial_mask>, "mask 0x0000ffff");
    expect_abort("a float4 load 8 bytes off a 16-byte boundary", on_one_warp<misaligned_float4>,
                 "float4 load at 0x");
    expect_abort("load_matrix_sync of another tile in one lane", on_one_warp<lane_loads_other_tile>,
                 "lane 5 of warp 0 in block (0,0,0) made wmma call 0 with other arguments");
    expect_abort("mma_sync with another fragment in one lane", on_one_warp<lane_changes_fragment>,
                 "mma_sync: lane 5 of warp 0");
    expect_abort("ldmatrix from a row 8 bytes off a 16-byte boundary", [] {
        emu_launch(dim3(1), dim3(32), 64, [] { ldmatrix_misaligned(); });
    }, "ldmatrix .x4: lane 31's row at");
    expect_abort("cp.async never waited for", [] {
        emu_launch(dim3(1), dim3(32), 16 * 32, [] { cp_async_unwaited(); });
    }, "cp.async copies it never waited for");
    expect_abort("cp.async to global memory", [] {
        emu_launch(dim3(1), dim3(32), 64, [] { cp_async_outside_shared(); });
    }, "outside the block's dynamic shared memory");
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    printf("test_cuda_emu: %d failures in %.2f s\n", failures, seconds);
    return failures ? 1 : 0;
}
