/* cuda_emu.h — runs CUDA kernel source, written in a small subset, as host C++.
 *
 * The GPU is rarely there when make check runs, so a kernel header compiled with
 * -DPESC_CUDA_EMU includes this file instead of <cuda_bf16.h>, <cuda_fp16.h> and <mma.h>, and a
 * test calls the kernel through emu_launch (g++ -std=c++17):
 *
 *     emu_launch(dim3(n_blocks), dim3(128), shared_bytes, [&] { my_kernel(out, in, n); });
 *
 * Every block of the grid runs in turn (x fastest, then y, then z). Its blockDim.x*y*z threads
 * are fibers on the calling thread, each with a stack of its own: one runs until it reaches
 * __syncthreads, __syncwarp or a shuffle, then the next, and a barrier opens once every thread
 * still running has reached it. The order is fixed, so a run is repeatable; it alternates in
 * direction, so a thread reading what another writes without a barrier between them reads it
 * too early one way or the other.
 *
 * What a kernel must respect here (all of it is also right on a GPU):
 *   - warp-collective calls (__syncwarp, __shfl_*_sync, wmma::*_sync) are made by every lane of
 *     the warp, in the same order, with the full mask 0xffffffff (anything else aborts);
 *   - a thread that returns early drops out of __syncthreads and __syncwarp (as on current GPUs),
 *     but its warp must not shuffle with it afterwards; simplest is not to return early;
 *   - a barrier that some thread never reaches aborts, naming it, instead of hanging;
 *   - each lane of a wmma fragment holds the whole tile (num_elements = 256 for 16x16), so a
 *     kernel may touch x[] only uniformly (scale every element, fill); every lane must make the
 *     same wmma calls with the same arguments and fragments (checked: a lane that differs
 *     aborts, and mma_sync's product is computed once a warp); store_matrix_sync is
 *     written by lane 0 alone and adds no barrier, so a kernel reading the stored tile from other
 *     lanes needs the __syncwarp it needs on a GPU (here a missing one shows as lanes reading
 *     before lane 0 has run);
 *   - one emu_launch at a time per process; static __shared__ arrays are one object shared by
 *     every block (blocks run one after another), not poisoned between blocks;
 *   - dynamic shared memory has 256 guard bytes on each side, checked as each block ends: a
 *     kernel writing outside it aborts;
 *   - a cp.async copy (emu_cp_async) is made when its thread waits for its group, not before,
 *     and a thread that ends with copies it never waited for aborts: a kernel reading a tile
 *     before the wait, or another thread's part of it before the barrier after the waits, reads
 *     the old bytes;
 *   - a thread's stack is 256 KiB;
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
#include <functional>
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


struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
inline constexpr int warpSize = 32;
using std::max;
using std::min;
/* CUDA's device math that the C library lacks */
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

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

/* ---- float4 and uint4; their loads and stores check the alignment (a GPU faults) ---------- */
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w)
{
    return uint4{x, y, z, w};
}

/* ---- half: IEEE binary16, rounded to nearest even, with subnormals; too large is infinite ---- */
struct __half {
    uint16_t bits;
};

inline __half __float2half_rn(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t sign = (u >> 16) & 0x8000u, mag = u & 0x7fffffffu;
    __half h;
    if (mag > 0x7f800000u) {
        h.bits = 0x7fff; /* NaN */
        return h;
    }
    if (mag >= 0x477ff000u) { /* 65520 and up round to infinity */
        h.bits = (uint16_t)(sign | 0x7c00u);
        return h;
    }
    if (mag < 0x38800000u) { /* below 2^-14: a subnormal, in units of 2^-24 */
        float a;
        memcpy(&a, &mag, sizeof a);
        h.bits = (uint16_t)(sign | (uint32_t)nearbyintf(a * 16777216.0f)); /* ties to even */
        return h;
    }
    uint32_t r = mag - 0x38000000u; /* the exponent rebased from 127 to 15, in place */
    r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
    h.bits = (uint16_t)(sign | r);
    return h;
}

inline __half __float2half(float f) { return __float2half_rn(f); }

inline float __half2float(__half h)
{
    uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16, e = (h.bits >> 10) & 0x1fu,
             m = h.bits & 0x3ffu;
    float f;
    if (e == 0) {
        f = ldexpf((float)m, -24);
        return sign ? -f : f;
    }
    uint32_t u = sign | (e == 31 ? 0x7f800000u | (m << 13) : ((e + 112) << 23) | (m << 13));
    memcpy(&f, &u, sizeof f);
    return f;
}

inline float __uint_as_float(unsigned u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }

/* ---- the launch: fibers, barriers, per-block state ------------------------------------------ */
/* Each CUDA thread of a block is a fiber, a stack of its own, all run by the calling thread:
 * one runs until it reaches a barrier (or ends), then the next. A barrier passes once every
 * thread still running has reached it. Switching fibers costs nanoseconds where waking threads
 * cost tens of microseconds, and the kernels here meet a barrier every few instructions. */
namespace emu_detail {

/* Every lane of a warp usually fails at once: the first to get here speaks. */
[[noreturn]] __attribute__((format(printf, 1, 2))) inline void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cuda_emu: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* -DPESC_EMU_UCONTEXT takes the portable path below on x86-64 too (to test it) */
#if defined(__x86_64__) && !defined(PESC_EMU_UCONTEXT)
/* Saves the callee-saved registers on the running stack, stores its pointer in *from, and
 * resumes the stack at `to` (System V x86-64). */
extern "C" void emu_switch_x64(void **from, void *to);
__asm__(".text\n"
        ".weak emu_switch_x64\n"
        ".type emu_switch_x64, @function\n"
        "emu_switch_x64:\n"
        "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n"
        "    pushq %r13\n    pushq %r14\n    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n    popq %r14\n    popq %r13\n"
        "    popq %r12\n    popq %rbx\n    popq %rbp\n"
        "    ret\n"
        ".size emu_switch_x64, .-emu_switch_x64\n");
struct context {
    void *sp = nullptr;
};
inline void context_switch(context &from, context &to) { emu_switch_x64(&from.sp, to.sp); }
/* A fresh context that starts entry() on the stack [base, base + size). */
inline void context_make(context &c, unsigned char *base, size_t size, void (*entry)())
{
    uintptr_t top = ((uintptr_t)(base + size)) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = nullptr;            /* entry's return address: it never returns */
    *--sp = (void *)entry;      /* where emu_switch_x64's ret goes */
    for (int i = 0; i < 6; i++)
        *--sp = nullptr;        /* rbp rbx r12 r13 r14 r15 */
    c.sp = sp;
}
#else
} /* namespace emu_detail */
#include <ucontext.h>
namespace emu_detail {
struct context {
    ucontext_t uc;
};
inline void context_switch(context &from, context &to) { swapcontext(&from.uc, &to.uc); }
inline void context_make(context &c, unsigned char *base, size_t size, void (*entry)())
{
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = base;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

enum wait_kind { RUNNING, AT_SYNCTHREADS, AT_SYNCWARP };

/* An asynchronous copy (cp.async) not yet made: the emulator makes it when the thread waits for
 * its group, so a read before the wait (or, for another thread's copy, before the barrier after
 * its wait) sees the old bytes. */
struct async_copy {
    void *dst;
    const void *src;
    unsigned bytes, valid;   /* valid < bytes: the rest is zeros */
    unsigned group;          /* committed groups before it */
};

struct fiber {
    context ctx;
    std::vector<async_copy> copies;   /* its cp.async copies not yet waited for */
    unsigned groups = 0;              /* commit_group calls so far */
    unsigned tid = 0, lane = 0, warp = 0, shuffle_round = 0, mma_round = 0, ldmatrix_round = 0;
    bool done = false;
    wait_kind waiting = RUNNING;
    unsigned long generation = 0;   /* of the barrier it waits at */
    const char *barrier_name = "";
    unsigned long wmma_calls = 0;   /* its wmma::*_sync calls so far in this block */
};

/* What the first lane of a warp to make its n-th wmma call recorded: the others must make the
 * same call (a wmma call is the warp's, with one set of arguments), and mma_sync's product,
 * computed once, is theirs too. */
enum wmma_kind { WMMA_LOAD, WMMA_STORE, WMMA_MMA };
struct wmma_record {
    unsigned long call = ~0ul;
    wmma_kind kind;
    const void *ptr;
    unsigned ldm;
    uint64_t hash;                  /* of the fragments it took */
    float product[256];             /* mma_sync's D */
};
constexpr unsigned wmma_log_size = 1024;   /* calls one lane may run ahead of the others */

struct warp_state {
    unsigned live = 0, arrived = 0;
    unsigned long generation = 0;
    uint64_t slots[2][32]; /* shuffle values; two sets so a round's writes miss the last's reads */
    uint32_t mma_slots[2][32][6]; /* mma m16n8k16 operands, a lane's A then B, two sets as well */
    uint32_t ldmatrix_slots[2][32][4]; /* ldmatrix: the 16-byte row each lane pointed at */
    wmma_record *wmma_log = nullptr;   /* (wmma_log_size), the n-th call at n % size */
};

struct launch_state {
    dim3 grid, block;
    unsigned threads;
    size_t shared_bytes;
    unsigned char *shared;          /* (shared_bytes) the running block's dynamic shared memory */
    const std::function<void()> *body;
    std::vector<fiber> fibers;
    std::vector<warp_state> warps;
    unsigned live = 0, arrived = 0; /* the block's threads still running, and at __syncthreads */
    unsigned long generation = 0;
    context scheduler;
    fiber *running = nullptr;
};

struct thread_state {
    launch_state *launch = nullptr;
};
inline thread_local thread_state self;

inline launch_state &current(const char *what)
{
    if (!self.launch || !self.launch->running)
        fail("%s called outside a kernel run by emu_launch", what);
    return *self.launch;
}

inline void check_full_mask(unsigned mask, const char *what)
{
    if (mask != 0xffffffffu)
        fail("%s: mask 0x%08x; the emulator runs whole warps only (mask 0xffffffff)", what, mask);
}

/* Stacks for the fibers, kept from launch to launch, each with a guard page below it so that a
 * kernel overflowing its stack faults instead of writing over another's. */
struct stacks {
    static constexpr size_t size = 256 * 1024, page = 4096;
    unsigned char *base = nullptr;
    unsigned count = 0;
    unsigned char *get(unsigned i) { return base + i * (size + page) + page; }
};
} /* namespace emu_detail */
#include <sys/mman.h>
namespace emu_detail {
inline stacks &stack_pool(unsigned threads)
{
    static stacks pool;
    if (pool.count >= threads)
        return pool;
    if (pool.base)
        munmap(pool.base, pool.count * (stacks::size + stacks::page));
    size_t bytes = threads * (stacks::size + stacks::page);
    void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        fail("no memory for the stacks of %u threads", threads);
    pool.base = (unsigned char *)p, pool.count = threads;
    for (unsigned i = 0; i < threads; i++)
        mprotect(pool.base + i * (stacks::size + stacks::page), stacks::page, PROT_NONE);
    return pool;
}

/* Back to the scheduler; returns when this fiber runs again. */
inline void yield_to_scheduler()
{
    launch_state &l = *self.launch;
    fiber *f = l.running;
    context_switch(f->ctx, l.scheduler);
}

inline void fiber_entry()
{
    launch_state &l = *self.launch;
    (*l.body)();
    fiber *f = l.running;
    if (!f->copies.empty())
        fail("thread %u of block (%u,%u,%u) ended with %zu cp.async copies it never waited for",
             f->tid, blockIdx.x, blockIdx.y, blockIdx.z, f->copies.size());
    f->done = true;
    /* leaving: a barrier the rest already wait at may now be complete */
    l.live--;
    warp_state &w = l.warps[f->warp];
    w.live--;
    if (l.arrived > 0 && l.arrived == l.live)
        l.arrived = 0, l.generation++;
    if (w.arrived > 0 && w.arrived == w.live)
        w.arrived = 0, w.generation++;
    context_switch(f->ctx, l.scheduler);
    fail("a finished thread was resumed");
}

inline bool runnable(const launch_state &l, const fiber &f)
{
    if (f.done)
        return false;
    if (f.waiting == AT_SYNCTHREADS)
        return f.generation != l.generation;
    if (f.waiting == AT_SYNCWARP)
        return f.generation != l.warps[f.warp].generation;
    return true;
}

/* Bytes before and after a block's dynamic shared memory, checked when the block ends: a kernel
 * writing outside the shared memory it launched with is named at once. */
constexpr size_t shared_guard = 256;
constexpr unsigned char guard_byte = 0xA5;

inline void check_shared_guards(const launch_state &l)
{
    for (size_t i = 0; i < shared_guard; i++) {
        if (l.shared[-1 - (long)i] != guard_byte)
            fail("a kernel wrote %zu bytes before its dynamic shared memory (%zu bytes) in block "
                 "(%u,%u,%u)", i + 1, l.shared_bytes, blockIdx.x, blockIdx.y, blockIdx.z);
        if (l.shared[l.shared_bytes + i] != guard_byte)
            fail("a kernel wrote %zu bytes past its dynamic shared memory (%zu bytes) in block "
                 "(%u,%u,%u)", i + 1, l.shared_bytes, blockIdx.x, blockIdx.y, blockIdx.z);
    }
}

/* One block: every fiber from the start of the kernel until all have ended. */
inline void run_block(launch_state &l, stacks &pool)
{
    memset(l.shared, 0xff, l.shared_bytes);
    l.live = l.threads, l.arrived = 0;
    for (unsigned w = 0; w < l.warps.size(); w++) {
        l.warps[w].live = std::min(32u, l.threads - w * 32), l.warps[w].arrived = 0;
        for (unsigned i = 0; i < wmma_log_size; i++)
            l.warps[w].wmma_log[i].call = ~0ul;
    }
    for (unsigned t = 0; t < l.threads; t++) {
        fiber &f = l.fibers[t];
        f.tid = t, f.lane = t % 32, f.warp = t / 32, f.shuffle_round = 0, f.mma_round = 0;
        f.ldmatrix_round = 0;
        f.done = false, f.waiting = RUNNING, f.wmma_calls = 0;
        f.copies.clear(), f.groups = 0;
        context_make(f.ctx, pool.get(t), stacks::size, fiber_entry);
    }
    const dim3 block = l.block;
    /* passes alternate in direction, so that a thread reading what another writes without the
     * barrier between them reads it too early in one pass or the other */
    bool forward = false;
    for (unsigned finished = 0; finished < l.threads; forward = !forward) {
        bool progress = false;
        for (unsigned i = 0; i < l.threads; i++) {
            unsigned t = forward ? i : l.threads - 1 - i;
            fiber &f = l.fibers[t];
            if (!runnable(l, f))
                continue;
            f.waiting = RUNNING;
            threadIdx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
            l.running = &f;
            context_switch(l.scheduler, f.ctx);
            l.running = nullptr;
            progress = true;
            finished += f.done;
        }
        if (!progress) {
            const fiber *stuck = nullptr;
            for (const fiber &f : l.fibers)
                if (!f.done)
                    stuck = &f;
            fail("%s: threads of block (%u,%u,%u) wait there for ever; did one skip it?",
                 stuck ? stuck->barrier_name : "a barrier", blockIdx.x, blockIdx.y, blockIdx.z);
        }
    }
    check_shared_guards(l);
}

/* The running fiber waits at its block's (or warp's) barrier until every thread still running
 * has arrived. */
inline void arrive_and_wait(wait_kind kind, const char *name)
{
    launch_state &l = current(name);
    fiber *f = l.running;
    unsigned *arrived, live;
    unsigned long *generation;
    if (kind == AT_SYNCTHREADS) {
        arrived = &l.arrived, live = l.live, generation = &l.generation;
    } else {
        warp_state &w = l.warps[f->warp];
        arrived = &w.arrived, live = w.live, generation = &w.generation;
    }
    f->waiting = kind, f->generation = *generation, f->barrier_name = name;
    if (++*arrived == live) {
        *arrived = 0, ++*generation;   /* the last one in: all pass, this one too */
        f->waiting = RUNNING;
        return;
    }
    yield_to_scheduler();
}

template <class T> inline T shuffle(unsigned mask, T value, int src_lane, const char *what)
{
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                  "shuffle a value of 8 bytes or less");
    check_full_mask(mask, what);
    launch_state &l = current(what);
    fiber *f = l.running;
    uint64_t *slots = l.warps[f->warp].slots[f->shuffle_round++ & 1];
    memcpy(&slots[f->lane], &value, sizeof value);
    arrive_and_wait(AT_SYNCWARP, what);
    if (src_lane >= 0 && src_lane < 32) /* out of range: CUDA returns the caller's own value */
        memcpy(&value, &slots[src_lane], sizeof value);
    return value;
}

inline unsigned lane() { return current("a lane's index").running->lane; }

/* The warps' wmma logs, kept from launch to launch. */
inline wmma_record *wmma_logs(unsigned warps)
{
    static std::vector<wmma_record> logs;
    if (logs.size() < (size_t)warps * wmma_log_size)
        logs.resize((size_t)warps * wmma_log_size);
    return logs.data();
}

inline uint64_t hash_words(uint64_t h, const void *p, size_t bytes)
{
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
    }
    return h;
}

/* The running lane's next wmma call: *first when no lane of its warp has made it yet (then the
 * record is this lane's to fill); otherwise the other lane's record, which must match. */
inline wmma_record &wmma_call(const char *what, wmma_kind kind, const void *ptr, unsigned ldm,
                              uint64_t hash, bool *first)
{
    launch_state &l = current(what);
    fiber *f = l.running;
    unsigned long call = f->wmma_calls++;
    wmma_record &r = l.warps[f->warp].wmma_log[call % wmma_log_size];
    *first = r.call != call;
    if (*first) {
        r.call = call, r.kind = kind, r.ptr = ptr, r.ldm = ldm, r.hash = hash;
    } else if (r.kind != kind || r.ptr != ptr || r.ldm != ldm || r.hash != hash) {
        fail("%s: lane %u of warp %u in block (%u,%u,%u) made wmma call %lu with other "
             "arguments or fragments than a lane before it (a wmma call is the whole warp's, "
             "with one set of arguments)", what, f->lane, f->warp, blockIdx.x, blockIdx.y,
             blockIdx.z, call);
    }
    return r;
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

inline void check_16(const char *what, const void *p)
{
    if ((uintptr_t)p % 16)
        fail("a %s at %p, which is not 16-byte aligned", what, p);
}

inline float4 load_float4(const float *p)
{
    check_16("float4 load", p);
    float4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

inline uint4 load_16(const void *p)
{
    check_16("16-byte load", p);
    uint4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

inline void store_16(void *p, uint4 v)
{
    check_16("16-byte store", p);
    memcpy(p, &v, sizeof v);
}

inline void store_float4(float *p, float4 v)
{
    check_16("float4 store", p);
    memcpy(p, &v, sizeof v);
}

inline uint32_t load_4(const void *p)
{
    if ((uintptr_t)p % 4)
        fail("a 4-byte load at %p, which is not 4-byte aligned", p);
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

inline void store_4(void *p, uint32_t v)
{
    if ((uintptr_t)p % 4)
        fail("a 4-byte store at %p, which is not 4-byte aligned", p);
    memcpy(p, &v, sizeof v);
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
    using emu_detail::shared_guard;
    size_t rounded = (shared_bytes + 127) / 128 * 128;
    unsigned char *shared_base =
        (unsigned char *)aligned_alloc(128, shared_guard + rounded + shared_guard);
    if (!shared_base)
        fail("out of memory for %zu bytes of shared memory", shared_bytes);
    launch.shared = shared_base + shared_guard;
    memset(shared_base, emu_detail::guard_byte, shared_guard + rounded + shared_guard);
    launch.body = &body;
    launch.fibers.resize(threads);
    launch.warps.resize((threads + 31) / 32);
    emu_detail::wmma_record *logs = emu_detail::wmma_logs((unsigned)launch.warps.size());
    for (size_t w = 0; w < launch.warps.size(); w++)
        launch.warps[w].wmma_log = logs + w * emu_detail::wmma_log_size;
    emu_detail::stacks &pool = emu_detail::stack_pool(launch.threads);
    emu_detail::self.launch = &launch;
    blockDim = block, gridDim = grid;
    unsigned long n_blocks = (unsigned long)grid.x * grid.y * grid.z;
    for (unsigned long b = 0; b < n_blocks; b++) {
        blockIdx = dim3(b % grid.x, b / grid.x % grid.y, b / ((unsigned long)grid.x * grid.y));
        emu_detail::run_block(launch, pool);
    }
    emu_detail::self = emu_detail::thread_state();
    free(shared_base);
}

/* In CUDA: extern __shared__ __align__(128) unsigned char name[]. */
#ifndef PESC_DYNAMIC_SHARED
#define PESC_DYNAMIC_SHARED(name)                                                                  \
    unsigned char *const name = emu_detail::current("PESC_DYNAMIC_SHARED").shared
#endif

/* ---- barriers and warp exchange -------------------------------------------------------------- */
inline void __syncthreads()
{
    emu_detail::arrive_and_wait(emu_detail::AT_SYNCTHREADS, "__syncthreads");
}

inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    emu_detail::check_full_mask(mask, "__syncwarp");
    emu_detail::arrive_and_wait(emu_detail::AT_SYNCWARP, "__syncwarp");
}

inline void __threadfence_block() {}
inline void __threadfence() {}

template <class T> inline T __shfl_sync(unsigned mask, T value, int src_lane)
{
    return emu_detail::shuffle(mask, value, src_lane & 31, "__shfl_sync");
}

template <class T> inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask)
{
    return emu_detail::shuffle(mask, value, (int)emu_detail::lane() ^ lane_mask,
                               "__shfl_xor_sync");
}

template <class T> inline T __shfl_down_sync(unsigned mask, T value, unsigned delta)
{
    return emu_detail::shuffle(mask, value, (int)(emu_detail::lane() + delta), "__shfl_down_sync");
}

template <class T> inline T __shfl_up_sync(unsigned mask, T value, unsigned delta)
{
    return emu_detail::shuffle(mask, value, (int)emu_detail::lane() - (int)delta,
                               "__shfl_up_sync");
}

/* ---- cp.async: asynchronous global-to-shared copies ------------------------------------------
 * Not CUDA's names (kernels reach them through their own wrappers, inline PTX on a GPU):
 * emu_cp_async(dst, src, bytes, valid) is cp.async.cg.shared.global with a source size of
 * `valid` bytes (0 or `bytes`: zeros for a row past the end), emu_cp_async_commit the
 * commit_group, emu_cp_async_wait(n) the wait_group n: every copy of the thread's groups but
 * its n newest is made then, not before. Addresses are checked as a GPU would fault. */
inline void emu_cp_async(void *dst, const void *src, unsigned bytes, unsigned valid)
{
    emu_detail::launch_state &l = emu_detail::current("cp.async");
    if (bytes != 4 && bytes != 8 && bytes != 16)
        emu_detail::fail("cp.async of %u bytes: 4, 8 or 16", bytes);
    if ((uintptr_t)dst % bytes || (valid && (uintptr_t)src % bytes))
        emu_detail::fail("cp.async of %u bytes from %p to %p: both must be %u-byte aligned", bytes,
                         src, dst, bytes);
    unsigned char *d = (unsigned char *)dst;
    if (d < l.shared || d + bytes > l.shared + l.shared_bytes)
        emu_detail::fail("cp.async to %p, outside the block's dynamic shared memory", dst);
    if (valid != 0 && valid != bytes)
        emu_detail::fail("cp.async with %u of %u bytes valid: 0 or all", valid, bytes);
    emu_detail::fiber *f = l.running;
    f->copies.push_back({dst, src, bytes, valid, f->groups});
}

inline void emu_cp_async_commit()
{
    emu_detail::current("cp.async.commit_group").running->groups++;
}

inline void emu_cp_async_wait(unsigned newest_pending)
{
    emu_detail::fiber *f = emu_detail::current("cp.async.wait_group").running;
    /* the groups numbered below groups - newest_pending are complete; uncommitted copies
     * belong to the next group, so they wait too (as on a GPU, where they would not be done) */
    unsigned done_below = f->groups >= newest_pending ? f->groups - newest_pending : 0;
    std::vector<emu_detail::async_copy> left;
    for (const emu_detail::async_copy &c : f->copies) {
        if (c.group >= done_below) {
            left.push_back(c);
            continue;
        }
        if (c.valid)
            memcpy(c.dst, c.src, c.bytes);
        else
            memset(c.dst, 0, c.bytes);
    }
    f->copies.swap(left);
}

/* ---- mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 --------------------------
 * Not CUDA's name: kernels reach it through their own wrapper, which is inline PTX on a GPU.
 * c (+)= A B for the warp's A (16 x 16) and B (16 x 8), every lane holding its part of each in
 * the PTX ISA's fragment layout (lane l, g = l / 4, t = l % 4; two 2-byte values a register, the
 * lower-indexed one in the low half):
 *   a[0]: A[g][2t, 2t+1]   a[1]: A[g+8][2t, 2t+1]
 *   a[2]: A[g][2t+8, 2t+9]   a[3]: A[g+8][2t+8, 2t+9]
 *   b[0]: B[2t, 2t+1][g]   b[1]: B[2t+8, 2t+9][g]
 *   c[0], c[1]: C[g][2t, 2t+1]                        c[2], c[3]: C[g+8][2t, 2t+1]
 * A warp-collective call: every lane gives its registers, then each computes its own four. */
template <class T>
inline void emu_mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                  "mma m16n8k16: half or bf16 operands");
    const char *what = "mma.sync m16n8k16";
    emu_detail::launch_state &l = emu_detail::current(what);
    emu_detail::fiber *f = l.running;
    uint32_t(*slots)[6] = l.warps[f->warp].mma_slots[f->mma_round++ & 1];
    memcpy(slots[f->lane], a, 4 * sizeof *a);
    memcpy(slots[f->lane] + 4, b, 2 * sizeof *b);
    emu_detail::arrive_and_wait(emu_detail::AT_SYNCWARP, what);
    auto value = [](uint32_t word, int high) {
        T x;
        x.bits = (uint16_t)(high ? word >> 16 : word & 0xffffu);
        if constexpr (std::is_same<T, __half>::value)
            return __half2float(x);
        else
            return __bfloat162float(x);
    };
    unsigned g = f->lane / 4, t = f->lane % 4;
    for (int e = 0; e < 4; e++) {
        int row = (int)g + 8 * (e / 2), col = 2 * (int)t + e % 2;
        float sum = 0.0f;
        for (int k = 0; k < 16; k++) {
            /* A[row][k]: lane 4 (row % 8) + (k % 8) / 2, register (row >= 8) + 2 (k >= 8);
             * B[k][col]: lane 4 col + (k % 8) / 2, register 4 + (k >= 8) */
            uint32_t aw = slots[4 * (row % 8) + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)];
            uint32_t bw = slots[4 * col + (k % 8) / 2][4 + (k >= 8)];
            sum += value(aw, k % 2) * value(bw, k % 2);
        }
        c[e] += sum;
    }
}

/* ---- ldmatrix.sync.aligned.m8n8.x4{,.trans}.shared.b16 ----------------------------------------
 * Not CUDA's names: kernels reach them through their own wrapper, inline PTX on a GPU. Four 8 x 8
 * matrices of 2-byte values from shared memory, one register each: lane l gives the address of
 * row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned). Then lane l (g = l / 4, t = l % 4)
 * holds in r[i], lower-indexed value in the low half (PTX ISA, "Warp-level matrix load
 * instruction: ldmatrix"):
 *   plain:  matrix i's row g, columns 2t, 2t + 1   (the layout of an mma A or B fragment's pair)
 *   .trans: matrix i's rows 2t, 2t + 1 of column g (the matrix transposed as it loads)
 * A warp-collective call: every lane reads its row when it calls, then each assembles its own
 * four registers from the warp's rows. */
namespace emu_detail {
inline void ldmatrix_x4(uint32_t r[4], const void *row, bool trans)
{
    const char *what = trans ? "ldmatrix .x4 .trans" : "ldmatrix .x4";
    launch_state &l = current(what);
    fiber *f = l.running;
    const unsigned char *p = (const unsigned char *)row;
    if ((uintptr_t)p % 16)
        fail("%s: lane %u's row at %p is not 16-byte aligned", what, f->lane, row);
    if (p < l.shared || p + 16 > l.shared + l.shared_bytes)
        fail("%s: lane %u's row at %p is outside the block's dynamic shared memory", what,
             f->lane, row);
    uint32_t(*slots)[4] = l.warps[f->warp].ldmatrix_slots[f->ldmatrix_round++ & 1];
    memcpy(slots[f->lane], p, 16);
    arrive_and_wait(AT_SYNCWARP, what);
    unsigned g = f->lane / 4, t = f->lane % 4;
    auto half = [&](unsigned matrix, unsigned row_in, unsigned col) {
        return (slots[8 * matrix + row_in][col / 2] >> (16 * (col % 2))) & 0xffffu;
    };
    for (unsigned i = 0; i < 4; i++)
        r[i] = trans ? half(i, 2 * t, g) | half(i, 2 * t + 1, g) << 16
                     : half(i, g, 2 * t) | half(i, g, 2 * t + 1) << 16;
}
} /* namespace emu_detail */

inline void emu_ldmatrix_x4(uint32_t r[4], const void *row)
{
    emu_detail::ldmatrix_x4(r, row, false);
}

inline void emu_ldmatrix_x4_trans(uint32_t r[4], const void *row)
{
    emu_detail::ldmatrix_x4(r, row, true);
}

/* ---- wmma: bf16 or half m16n16k16 with fp32 accumulation ----------------------------------- */
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
            : (std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value) &&
                  (std::is_same<Layout, row_major>::value ||
                   std::is_same<Layout, col_major>::value),
        "cuda_emu has bf16 or half matrix_a/matrix_b (row_major or col_major) and float "
        "accumulators");
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
template <class Use, class T, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &f, const T *ptr, unsigned ldm)
{
    emu_detail::check_matrix("load_matrix_sync", ptr, ldm, sizeof *ptr);
    bool first;
    emu_detail::wmma_call("load_matrix_sync", emu_detail::WMMA_LOAD, ptr, ldm,
                          std::is_same<Layout, row_major>::value, &first);
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            f.x[r * f.cols + c] =
                ptr[emu_detail::tile_offset(r, c, ldm, std::is_same<Layout, row_major>::value)];
}

inline void load_matrix_sync(emu_accumulator &f, const float *ptr, unsigned ldm, layout_t layout)
{
    emu_detail::check_matrix("load_matrix_sync", ptr, ldm, sizeof *ptr);
    bool first;
    emu_detail::wmma_call("load_matrix_sync", emu_detail::WMMA_LOAD, ptr, ldm, layout, &first);
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            f.x[r * f.cols + c] = ptr[emu_detail::tile_offset(r, c, ldm, layout == mem_row_major)];
}

/* Written by lane 0 only, so the emulator races with nothing the kernel does not race with. */
inline void store_matrix_sync(float *ptr, const emu_accumulator &f, unsigned ldm, layout_t layout)
{
    emu_detail::check_matrix("store_matrix_sync", ptr, ldm, sizeof *ptr);
    bool first;
    emu_detail::wmma_call("store_matrix_sync", emu_detail::WMMA_STORE, ptr, ldm,
                          emu_detail::hash_words(layout, f.x, sizeof f.x), &first);
    if (emu_detail::lane() != 0)
        return;
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            ptr[emu_detail::tile_offset(r, c, ldm, layout == mem_row_major)] = f.x[r * f.cols + c];
}

inline float emu_float(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float emu_float(__half x) { return __half2float(x); }

/* D = A B + C; the bf16 or half products are exact in fp32 and summed in fp32. d may be c. */
template <class T, class LayoutA, class LayoutB> inline void
mma_sync(emu_accumulator &d, const fragment<matrix_a, 16, 16, 16, T, LayoutA> &a,
         const fragment<matrix_b, 16, 16, 16, T, LayoutB> &b, const emu_accumulator &c)
{
    /* the warp's one product: the first lane computes it, the others check they gave the same
     * fragments and take it */
    uint64_t h = emu_detail::hash_words(0xcbf29ce484222325ull, a.x, sizeof a.x);
    h = emu_detail::hash_words(h, b.x, sizeof b.x);
    h = emu_detail::hash_words(h, c.x, sizeof c.x);
    bool first;
    emu_detail::wmma_record &r =
        emu_detail::wmma_call("mma_sync", emu_detail::WMMA_MMA, nullptr, 0, h, &first);
    if (!first) {
        memcpy(d.x, r.product, sizeof r.product);
        return;
    }
    float product[16 * 16];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float sum = 0.0f;
            for (int k = 0; k < 16; k++)
                sum += emu_float(a.x[i * 16 + k]) * emu_float(b.x[k * 16 + j]);
            product[i * 16 + j] = sum + c.x[i * 16 + j];
        }
    memcpy(d.x, product, sizeof product);
    memcpy(r.product, product, sizeof product);
}

} /* namespace wmma */
} /* namespace nvcuda */

#endif /* PESC_CUDA_EMU_H */
