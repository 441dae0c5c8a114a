/* cuda_emu.h — runs CUDA kernel source, written in a small subset, as host C++ on real threads.
 *
 * The GPU is rarely there when make check runs, so a kernel header compiled with
 * -DPESC_CUDA_EMU includes this file instead of <cuda_bf16.h> and <mma.h>, and a test calls the
 * kernel through emu_launch (g++ -std=c++17 -pthread):
 *
 *     emu_launch(dim3(n_blocks), dim3(128), shared_bytes, [&] { my_kernel(out, in, n); });
 *
 * Every block of the grid runs in turn (x fastest, then y, then z) on blockDim.x*y*z threads
 * that run at once; __syncthreads, __syncwarp and the shuffles are blocking barriers (mutex and
 * condition variable, no spinning), so a block of 128 threads runs on two cores.
 *
 * What a kernel must respect here (all of it is also right on a GPU):
 *   - warp-collective calls (__syncwarp, __shfl_*_sync, wmma::*_sync) are made by every lane of
 *     the warp, in the same order, with the full mask 0xffffffff (anything else aborts);
 *   - a thread that returns early drops out of __syncthreads and __syncwarp (as on current GPUs),
 *     but its warp must not shuffle with it afterwards; simplest is not to return early;
 *   - a barrier left waiting for PESC_EMU_HANG_SECONDS (60) aborts, naming the barrier, instead of
 *     hanging make check: some thread skipped a barrier the others reached;
 *   - each lane of a wmma fragment holds the whole tile (num_elements = 256 for 16x16), so a
 *     kernel may touch x[] only uniformly (scale every element, fill); store_matrix_sync is
 *     written by lane 0 alone and adds no barrier, so a kernel reading the stored tile from other
 *     lanes needs the __syncwarp it needs on a GPU;
 *   - one emu_launch at a time per process; static __shared__ arrays are one object shared by
 *     every block (blocks run one after another), not poisoned between blocks;
 *   - min and max are std::min and std::max: both arguments must have the same type. */
#ifndef PESC_CUDA_EMU_H
#define PESC_CUDA_EMU_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

/* ---- qualifiers and built-ins ---------------------------------------------------------------- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline /* CUDA's implies inline too: a header may define functions */
#define __launch_bounds__(...)
#define __restrict__
#define __align__(n) alignas(n)
#define __shared__ static /* one object for all threads; fine while blocks run one at a time */

#ifndef PESC_EMU_HANG_SECONDS
#define PESC_EMU_HANG_SECONDS 60
#endif

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
inline constexpr int warpSize = 32;
using std::max;
using std::min;

/* ---- bfloat16: the top half of an fp32, rounded to nearest even ------------------------------ */
struct __nv_bfloat16 {
    uint16_t bits;
};

inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        h.bits = 0x7fff; /* the canonical NaN, as CUDA returns for any NaN */
    else
        h.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return h;
}

inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

inline float __bfloat162float(__nv_bfloat16 h)
{
    uint32_t u = (uint32_t)h.bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- the launch: barriers, per-block state, the threads -------------------------------------- */
namespace emu_detail {

/* Every lane of a warp usually fails at once: the first to get here speaks, the rest wait for
 * the abort. */
[[noreturn]] __attribute__((format(printf, 1, 2))) inline void fail(const char *fmt, ...)
{
    static std::mutex first;
    first.lock();
    va_list ap;
    va_start(ap, fmt);
    fputs("cuda_emu: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* A reusable barrier for `expected` threads; a thread that has finished the kernel leaves it,
 * so the rest are not kept waiting for it. */
class barrier {
  public:
    void reset(unsigned n) { expected = n, arrived = 0; }

    template <class OnRelease> void arrive_and_wait(const char *name, OnRelease on_release)
    {
        std::unique_lock<std::mutex> lock(mutex);
        unsigned long my_generation = generation;
        if (++arrived == expected) {
            on_release();
            release();
            return;
        }
        auto deadline =
            std::chrono::steady_clock::now() + std::chrono::seconds(PESC_EMU_HANG_SECONDS);
        while (generation == my_generation)
            if (ready.wait_until(lock, deadline) == std::cv_status::timeout &&
                generation == my_generation)
                fail("%s: %u of %u threads waited %d s in block (%u,%u,%u); did one skip it?",
                     name, arrived, expected, PESC_EMU_HANG_SECONDS, blockIdx.x, blockIdx.y,
                     blockIdx.z);
    }
    void arrive_and_wait(const char *name) { arrive_and_wait(name, [] {}); }

    void leave()
    {
        std::lock_guard<std::mutex> lock(mutex);
        if (--expected == arrived && arrived > 0)
            release();
    }

  private:
    void release() { arrived = 0, generation++, ready.notify_all(); }

    std::mutex mutex;
    std::condition_variable ready;
    unsigned expected = 0, arrived = 0;
    unsigned long generation = 0;
};

struct warp_state {
    barrier sync;
    uint64_t slots[2][32]; /* shuffle values; two sets so a round's writes miss the last's reads */
};

struct launch_state {
    dim3 grid, block;
    unsigned threads;
    size_t shared_bytes;
    unsigned char *shared; /* (shared_bytes) the running block's dynamic shared memory */
    const std::function<void()> *body;
    barrier block_sync, end_of_block;
    std::unique_ptr<warp_state[]> warps;
};

struct thread_state {
    launch_state *launch = nullptr;
    unsigned lane = 0, warp = 0, shuffle_round = 0;
};
inline thread_local thread_state self;

inline launch_state &current(const char *what)
{
    if (!self.launch)
        fail("%s called outside a kernel run by emu_launch", what);
    return *self.launch;
}

inline void check_full_mask(unsigned mask, const char *what)
{
    if (mask != 0xffffffffu)
        fail("%s: mask 0x%08x; the emulator runs whole warps only (mask 0xffffffff)", what, mask);
}

/* Fresh state for the next block; the 0xFF bytes read as NaN in fp32 and bf16, so a kernel that
 * reads shared memory it never wrote gets NaNs rather than plausible zeros. */
inline void prepare_block(launch_state &launch)
{
    launch.block_sync.reset(launch.threads);
    for (unsigned w = 0; w * 32 < launch.threads; w++)
        launch.warps[w].sync.reset(std::min(32u, launch.threads - w * 32));
    memset(launch.shared, 0xff, launch.shared_bytes);
}

inline void run_thread(launch_state &launch, unsigned tid)
{
    const dim3 grid = launch.grid, block = launch.block;
    self.launch = &launch, self.lane = tid % 32, self.warp = tid / 32;
    threadIdx = dim3(tid % block.x, tid / block.x % block.y, tid / (block.x * block.y));
    blockDim = block, gridDim = grid;
    unsigned long n_blocks = (unsigned long)grid.x * grid.y * grid.z;
    for (unsigned long b = 0; b < n_blocks; b++) {
        blockIdx = dim3(b % grid.x, b / grid.x % grid.y, b / ((unsigned long)grid.x * grid.y));
        self.shuffle_round = 0;
        (*launch.body)();
        launch.block_sync.leave();
        launch.warps[self.warp].sync.leave();
        launch.end_of_block.arrive_and_wait("end of block", [&] { prepare_block(launch); });
    }
    self = thread_state();
}

template <class T> inline T shuffle(unsigned mask, T value, int src_lane, const char *what)
{
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                  "shuffle a value of 8 bytes or less");
    check_full_mask(mask, what);
    warp_state &warp = current(what).warps[self.warp];
    uint64_t *slots = warp.slots[self.shuffle_round++ & 1];
    memcpy(&slots[self.lane], &value, sizeof value);
    warp.sync.arrive_and_wait(what);
    if (src_lane >= 0 && src_lane < 32) /* out of range: CUDA returns the caller's own value */
        memcpy(&value, &slots[src_lane], sizeof value);
    return value;
}

/* CUDA's preconditions for load_matrix_sync and store_matrix_sync. */
inline void check_matrix(const char *what, const void *ptr, unsigned ldm, size_t element_size)
{
    if ((uintptr_t)ptr % 32)
        fail("%s: pointer %p is not 32-byte aligned (wmma needs 256-bit alignment)", what, ptr);
    if (ldm * element_size % 16)
        fail("%s: ldm %u is not a multiple of %zu (16 bytes of %zu-byte elements)", what, ldm,
             16 / element_size, element_size);
}

/* Where row r, column c of a tile lies in memory. */
inline size_t tile_offset(int r, int c, unsigned ldm, bool row_major)
{
    return row_major ? (size_t)r * ldm + c : (size_t)c * ldm + r;
}

template <class T> struct same_type {
    typedef T type;
};

} /* namespace emu_detail */

/* Runs body on every thread of every block of grid; shared_bytes of dynamic shared memory per
 * block, 128-byte aligned, filled with 0xFF bytes. Returns when the whole grid has finished. */
inline void emu_launch(dim3 grid, dim3 block, size_t shared_bytes,
                       const std::function<void()> &body)
{
    using emu_detail::fail;
    unsigned long threads = (unsigned long)block.x * block.y * block.z;
    if (emu_detail::self.launch)
        fail("emu_launch called from inside a kernel");
    if (threads == 0 || threads > 1024 || block.z > 64)
        fail("block (%u,%u,%u) is outside CUDA's limits (1 to 1024 threads, z at most 64)", block.x,
             block.y, block.z);
    if ((unsigned long)grid.x * grid.y * grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        fail("grid (%u,%u,%u) is empty or outside CUDA's limits", grid.x, grid.y, grid.z);
    if (shared_bytes > 227 * 1024)
        fail("%zu bytes of dynamic shared memory; sm_90 allows at most 227 KiB per block",
             shared_bytes);

    emu_detail::launch_state launch;
    launch.grid = grid, launch.block = block, launch.threads = (unsigned)threads;
    launch.shared_bytes = shared_bytes;
    launch.shared = (unsigned char *)aligned_alloc(128, (shared_bytes + 127) / 128 * 128 + 128);
    if (!launch.shared)
        fail("out of memory for %zu bytes of shared memory", shared_bytes);
    launch.body = &body;
    launch.warps.reset(new emu_detail::warp_state[(threads + 31) / 32]);
    launch.end_of_block.reset(launch.threads);
    emu_detail::prepare_block(launch);

    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned tid = 0; tid < threads; tid++)
        pool.emplace_back(emu_detail::run_thread, std::ref(launch), tid);
    for (std::thread &t : pool)
        t.join();
    free(launch.shared);
}

/* In CUDA: extern __shared__ __align__(128) unsigned char name[]. */
#ifndef PESC_DYNAMIC_SHARED
#define PESC_DYNAMIC_SHARED(name)                                                                  \
    unsigned char *const name = emu_detail::current("PESC_DYNAMIC_SHARED").shared
#endif

/* ---- barriers and warp exchange -------------------------------------------------------------- */
inline void __syncthreads()
{
    emu_detail::current("__syncthreads").block_sync.arrive_and_wait("__syncthreads");
}

inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    emu_detail::check_full_mask(mask, "__syncwarp");
    emu_detail::current("__syncwarp")
        .warps[emu_detail::self.warp]
        .sync.arrive_and_wait("__syncwarp");
}

inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class T> inline T __shfl_sync(unsigned mask, T value, int src_lane)
{
    return emu_detail::shuffle(mask, value, src_lane & 31, "__shfl_sync");
}

template <class T> inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask)
{
    return emu_detail::shuffle(mask, value, (int)emu_detail::self.lane ^ lane_mask,
                               "__shfl_xor_sync");
}

template <class T> inline T __shfl_down_sync(unsigned mask, T value, unsigned delta)
{
    return emu_detail::shuffle(mask, value, (int)(emu_detail::self.lane + delta),
                               "__shfl_down_sync");
}

template <class T> inline T __shfl_up_sync(unsigned mask, T value, unsigned delta)
{
    return emu_detail::shuffle(mask, value, (int)emu_detail::self.lane - (int)delta,
                               "__shfl_up_sync");
}

/* ---- wmma: bf16 m16n16k16 with fp32 accumulation --------------------------------------------- */
namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static constexpr bool is_accumulator = std::is_same<Use, accumulator>::value;
    static_assert(M == 16 && N == 16 && K == 16, "cuda_emu has the m16n16k16 shape only");
    static_assert(
        is_accumulator
            ? std::is_same<T, float>::value && std::is_void<Layout>::value
            : std::is_same<T, __nv_bfloat16>::value && (std::is_same<Layout, row_major>::value ||
                                                        std::is_same<Layout, col_major>::value),
        "cuda_emu has bf16 matrix_a/matrix_b (row_major or col_major) and float accumulators");
    static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
    static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
    static constexpr int num_elements = rows * cols;
    T x[num_elements]; /* the whole tile in every lane: row r, column c at x[r * cols + c] */
};

/* Not CUDA's: the one accumulator type, to keep the signatures below short. */
typedef fragment<accumulator, 16, 16, 16, float> emu_accumulator;

template <class Use, int M, int N, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout> &f,
                          const typename emu_detail::same_type<T>::type &value)
{
    for (int i = 0; i < f.num_elements; i++)
        f.x[i] = value;
}

/* matrix_a or matrix_b, laid out in memory as the fragment's Layout says. */
template <class Use, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout> &f,
                             const __nv_bfloat16 *ptr, unsigned ldm)
{
    emu_detail::check_matrix("load_matrix_sync", ptr, ldm, sizeof *ptr);
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            f.x[r * f.cols + c] =
                ptr[emu_detail::tile_offset(r, c, ldm, std::is_same<Layout, row_major>::value)];
}

inline void load_matrix_sync(emu_accumulator &f, const float *ptr, unsigned ldm, layout_t layout)
{
    emu_detail::check_matrix("load_matrix_sync", ptr, ldm, sizeof *ptr);
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            f.x[r * f.cols + c] = ptr[emu_detail::tile_offset(r, c, ldm, layout == mem_row_major)];
}

/* Written by lane 0 only, so the emulator races with nothing the kernel does not race with. */
inline void store_matrix_sync(float *ptr, const emu_accumulator &f, unsigned ldm, layout_t layout)
{
    emu_detail::check_matrix("store_matrix_sync", ptr, ldm, sizeof *ptr);
    if (emu_detail::self.lane != 0)
        return;
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            ptr[emu_detail::tile_offset(r, c, ldm, layout == mem_row_major)] = f.x[r * f.cols + c];
}

/* D = A B + C; the bf16 products are exact in fp32 and summed in fp32. d may be c. */
template <class LayoutA, class LayoutB> inline void
mma_sync(emu_accumulator &d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> &a,
         const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> &b, const emu_accumulator &c)
{
    float product[16 * 16];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float sum = 0.0f;
            for (int k = 0; k < 16; k++)
                sum += __bfloat162float(a.x[i * 16 + k]) * __bfloat162float(b.x[k * 16 + j]);
            product[i * 16 + j] = sum + c.x[i * 16 + j];
        }
    memcpy(d.x, product, sizeof product);
}

} /* namespace wmma */
} /* namespace nvcuda */

#endif /* PESC_CUDA_EMU_H */
