/* cuda_runtime_emu.h — the host side of the CUDA runtime, emulated on the CPU, for the CUDA
 * backend compiled as C++ with -DPESC_CUDA_EMU (the kernels run through cuda_emu.h).
 *
 * Exactly the calls the backend makes, with CUDA's names, values and error codes. Work runs
 * as it is issued, unless PESC_EMU_DEFER=1: then kernels, copies, memsets, products and event
 * records wait in one queue, in issue order, until the host waits for them (a stream, an event,
 * the device, a copy to pageable memory, cudaFree), as a GPU runs behind its host. A host that
 * reads a result before waiting for it reads what was there before (or, for a copy into
 * page-locked memory, 0xFF bytes: NaN); one that rewrites page-locked memory a pending copy
 * still has to read aborts, naming the buffer. Kernels take their arguments as launched. And
 * device memory is closed to the host while the device is not running: host code that reads
 * or writes it (which a GPU faults on) aborts, naming the block.
 * What the emulator adds to help a test find bugs a GPU would hide or report late:
 *   - PESC_EMU_SHARED_KB KiB of opt-in shared memory a block (default 227, sm_90's; 99 is an
 *     sm_86/sm_89 card's, 163 an A100's), so a test can see a kernel refused for it;
 *   - PESC_EMU_SM, the compute capability the devices report (default 90);
 *   - PESC_EMU_DEVICES devices (default 1, at most 8), "CUDA emulator (CPU)", sm_90, 16 GiB
 *     together; the current device is per host thread, a stream belongs to the device current
 *     when it was made, and a kernel launched into another device's stream is refused, as on a
 *     GPU (cuBLAS, in cublas_emu.h, aborts on a handle used on another device); cudaMalloc
 *     gives host memory filled with 0xFF bytes (NaN as fp32 and bf16), and fails like the
 *     device when the 16 GiB are taken;
 *   - the device side of every copy and memset must lie inside one live cudaMalloc block
 *     (cudaErrorInvalidValue otherwise, which a GPU would report as a fault, or not at all);
 *   - every block has 256-byte red zones before and after it, checked after every launch and
 *     at cudaFree: a kernel writing outside its buffer aborts, naming the block;
 *   - emu_launch_checked refuses a launch the GPU would refuse (block size, empty grid, dynamic
 *     shared memory above the kernel's limit) with the error cudaGetLastError then returns.
 *
 * As in CUDA, every call that fails also leaves its error for cudaGetLastError, per host
 * thread. The state that CUDA keeps per process (allocations, streams, events, kernel
 * attributes) lives in one object behind a mutex: the emulated device, like the real one, is
 * global. Not emulated: static __shared__ arrays count nothing towards the shared limit; no
 * asynchronous errors (a kernel that faults crashes the process). */
#ifndef PESC_CUDA_RUNTIME_EMU_H
#define PESC_CUDA_RUNTIME_EMU_H

#include "cuda_emu.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

/* ---- errors ---------------------------------------------------------------------------------- */
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorLaunchFailure = 719,
};
typedef cudaError_t cudaError;

inline const char *cudaGetErrorString(cudaError_t error)
{
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver:
        return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unrecognized error code";
}

namespace emu_detail {

inline thread_local cudaError_t last_error = cudaSuccess;

/* Every runtime call returns through here: a failure is also the thread's last error. */
inline cudaError_t status(cudaError_t error)
{
    if (error != cudaSuccess)
        last_error = error;
    return error;
}

} /* namespace emu_detail */

/* The last error of this thread since the last call, cleared. */
inline cudaError_t cudaGetLastError()
{
    cudaError_t error = emu_detail::last_error;
    emu_detail::last_error = cudaSuccess;
    return error;
}

inline cudaError_t cudaPeekAtLastError() { return emu_detail::last_error; }

/* For a launcher that finds a launch failed in its own way. */
inline void emu_set_launch_error(cudaError_t error) { emu_detail::status(error); }

/* ---- the device's state ---------------------------------------------------------------------- */
struct CUstream_st {
    unsigned flags;
    int device;                     /* current when it was made: its kernels run there */
};
typedef CUstream_st *cudaStream_t;

struct CUevent_st {
    bool recorded;                  /* its record has run */
    std::chrono::steady_clock::time_point when;
    unsigned long long order;       /* its record's place in the queue (0: never recorded) */
};
typedef CUevent_st *cudaEvent_t;

namespace emu_detail {

/* The device's memory: 16 GiB, or PESC_EMU_MEMORY_KB KiB to stand for a smaller GPU. */
inline size_t device_total_bytes()
{
    static const size_t total = [] {
        const char *s = getenv("PESC_EMU_MEMORY_KB");
        long long kb = s && *s ? atoll(s) : 0;
        return kb > 0 ? (size_t)kb << 10 : (size_t)16 << 30;
    }();
    return total;
}
/* The devices' compute capability: sm_90, or PESC_EMU_SM (30 to 120, e.g. 75) to stand for
 * another GPU, so a test can see what the backend does before sm_80. */
inline int device_sm()
{
    const char *s = getenv("PESC_EMU_SM");
    int sm = s && *s ? atoi(s) : 90;
    return sm >= 30 && sm <= 120 ? sm : 90;
}
constexpr size_t default_shared_bytes = 48 * 1024;
/* The opt-in maximum of dynamic shared memory per block: sm_90's 227 KiB, or PESC_EMU_SHARED_KB
 * (48 to 227) KiB to stand for a smaller device. */
inline size_t max_shared_bytes()
{
    const char *s = getenv("PESC_EMU_SHARED_KB");
    long kb = s && *s ? atol(s) : 227;
    return (size_t)(kb < 48 ? 48 : kb > 227 ? 227 : kb) * 1024;
}
/* Bytes before and after every cudaMalloc block, filled with red_byte and checked after every
 * launch and at cudaFree: a kernel (or copy) that writes outside its buffer is named at once,
 * where on a GPU it would overwrite a neighbour or fault later. */
constexpr size_t red_zone = 256;
constexpr unsigned char red_byte = 0xA5;

struct device_state {
    std::mutex mutex;
    std::map<uintptr_t, size_t> blocks; /* cudaMalloc's live blocks: start -> bytes */
    std::map<uintptr_t, size_t> host_blocks; /* cudaMallocHost's: start -> bytes */
    /* PESC_EMU_DEFER's queue: work issued and not yet run, the count issued and the count run
     * (the queue's places), and the page-locked ranges pending copies will read. */
    std::deque<std::function<void()>> queue;
    unsigned long long issued = 0, done = 0;
    unsigned long long waits = 0;   /* the host's waits that found work to wait for */
    std::multimap<uintptr_t, size_t> pending_reads;
    std::mutex running;             /* held while device memory is open: queued work runs, a
                                     * cudaFree checks red zones, a direct launch */
    bool open = false;              /* deferred: cudaMalloc's blocks readable (the device's turn) */
    size_t allocated = 0, peak = 0; /* bytes in live blocks, and their most at once */
    unsigned long long launches = 0; /* kernels launched */
    std::set<cudaStream_t> streams;
    std::set<cudaEvent_t> events;
    std::map<const void *, size_t> shared_limits; /* kernel -> dynamic shared bytes allowed */
    /* At exit, the file PESC_EMU_REPORT names gets the peak, the launches and (deferred) the
     * host's waits, a line each ("peak_bytes N", "launches N", "host_waits N"): a test's
     * measure of what a run needed, against what it estimated, of the work two ways of a run
     * launched, and of how often the host stalled for the device. */
    ~device_state()
    {
        const char *path = getenv("PESC_EMU_REPORT");
        if (FILE *f = path && *path ? fopen(path, "w") : nullptr) {
            fprintf(f, "peak_bytes %zu\nlaunches %llu\nhost_waits %llu\n", peak, launches,
                    waits);
            fclose(f);
        }
    }
};

inline device_state &device()
{
    static device_state state;
    return state;
}

/* Whether [p, p + bytes) lies inside one of blocks (start -> bytes). */
inline bool in_one_of(const std::map<uintptr_t, size_t> &blocks, const void *p, size_t bytes)
{
    auto after = blocks.upper_bound((uintptr_t)p);
    if (after == blocks.begin())
        return false;
    auto block = std::prev(after);
    size_t offset = (uintptr_t)p - block->first;
    return offset <= block->second && bytes <= block->second - offset;
}

/* Whether [p, p + bytes) lies inside one live cudaMalloc block; the caller holds the mutex. */
inline bool in_block_locked(const device_state &state, const void *p, size_t bytes)
{
    return in_one_of(state.blocks, p, bytes);
}

/* A cudaMalloc block of `bytes` is mapped with its red zones, in whole pages, from p - red_zone. */
inline size_t mapped_bytes(size_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), whole = red_zone + (bytes + 255) / 256 * 256 +
                                                         red_zone;
    return (whole + page - 1) / page * page;
}

inline void protect_block(uintptr_t p, size_t bytes, bool open)
{
    if (mprotect((unsigned char *)p - red_zone, mapped_bytes(bytes),
                 open ? PROT_READ | PROT_WRITE : PROT_NONE) != 0)
        fail("mprotect of a %zu-byte cudaMalloc block at %p failed", bytes, (void *)p);
}

/* Aborts, naming the block and `after`, when something wrote into a red zone of a live block;
 * the caller holds the mutex. */
inline void check_red_zones_locked(const device_state &state, const char *after)
{
    for (const auto &block : state.blocks) {
        const unsigned char *p = (const unsigned char *)block.first;
        size_t bytes = block.second, rounded = (bytes + 255) / 256 * 256;
        /* the farthest byte written, for the message */
        for (size_t i = red_zone; i > 0; i--)
            if (p[-(long)i] != red_byte)
                fail("%s: something wrote up to %zu bytes before the start of a %zu-byte "
                     "cudaMalloc block at %p", after, i, bytes, (const void *)p);
        for (size_t i = rounded + red_zone; i > bytes; i--)
            if (p[i - 1] != red_byte)
                fail("%s: something wrote up to %zu bytes past the end of a %zu-byte cudaMalloc "
                     "block at %p", after, i - bytes, bytes, (const void *)p);
    }
}

/* Device memory for a copy, memset or cuBLAS operand: an empty range is always fine. */
inline bool is_device_range(const void *p, size_t bytes)
{
    if (bytes == 0)
        return true;
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    return in_block_locked(state, p, bytes);
}

/* PESC_EMU_DEVICES (1 to 8, default 1) devices, all alike; the current one is per host
 * thread, as in CUDA, so a thread that never set it works on device 0. */
inline int device_count()
{
    const char *s = getenv("PESC_EMU_DEVICES");
    int n = s && *s ? atoi(s) : 1;
    return n < 1 ? 1 : n > 8 ? 8 : n;
}
inline thread_local int current_device = 0;

inline bool is_stream(cudaStream_t stream)
{
    if (!stream) /* the legacy default stream */
        return true;
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    return state.streams.count(stream) != 0;
}

inline bool is_event(cudaEvent_t event)
{
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    return event && state.events.count(event) != 0;
}

/* Whether [p, p + bytes) lies inside one cudaMallocHost block. */
inline bool is_page_locked(const void *p, size_t bytes)
{
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    return in_one_of(state.host_blocks, p, bytes);
}

/* SIGSEGV in deferred mode: a fault inside a closed cudaMalloc block is the host touching
 * device memory, named before the abort; any other goes on as it would have. */
inline void on_fault(int sig, siginfo_t *info, void *)
{
    uintptr_t at = (uintptr_t)info->si_addr;
    for (const auto &block : device().blocks)   /* no lock: the process ends either way */
        if (at >= block.first - red_zone && at < block.first + block.second + red_zone) {
            char line[256];
            int n = snprintf(line, sizeof line, "cuda_emu: the host touched device memory at %p, "
                             "in a %zu-byte cudaMalloc block at %p: a GPU faults there (copy "
                             "it to the host, or work on it in a kernel)\n", (void *)at,
                             block.second, (void *)block.first);
            if (write(2, line, (size_t)n) < 0)
                _exit(134);
            abort();
        }
    signal(sig, SIG_DFL);   /* the fault repeats, unhandled */
}

inline bool deferring()
{
    static const bool defer = [] {
        const char *s = getenv("PESC_EMU_DEFER");
        if (!s || strcmp(s, "1") != 0)
            return false;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGSEGV, &sa, nullptr);
        return true;
    }();
    return defer;
}

/* Deferred: opens cudaMalloc's blocks to the device's work, or closes them to the host; the
 * caller holds the mutex. Otherwise they stay open. */
inline void open_blocks_locked(device_state &state, bool open)
{
    if (!deferring() || state.open == open)
        return;
    for (const auto &block : state.blocks)
        protect_block(block.first, block.second, open);
    state.open = open;
}

/* Device work: run now, or (PESC_EMU_DEFER) queued; its place in the queue. */
inline unsigned long long issue(std::function<void()> work)
{
    device_state &state = device();
    if (!deferring()) {
        work();
        std::lock_guard<std::mutex> lock(state.mutex);
        return ++state.done;
    }
    std::lock_guard<std::mutex> lock(state.mutex);
    state.queue.push_back(std::move(work));
    return ++state.issued;
}

/* Runs queued work, in order, until the place `until` has run (everything by default): the
 * host waiting for the device, counted when there was work to wait for. */
inline void finish(unsigned long long until = ~0ull)
{
    device_state &state = device();
    std::lock_guard<std::mutex> running(state.running);
    for (bool waited = false;; waited = true) {
        std::function<void()> work;
        {
            std::lock_guard<std::mutex> lock(state.mutex);
            if (state.queue.empty() || state.done >= until) {
                state.waits += waited;
                open_blocks_locked(state, false);
                return;
            }
            open_blocks_locked(state, true);
            work = std::move(state.queue.front());
            state.queue.pop_front();
        }
        work();
        std::lock_guard<std::mutex> lock(state.mutex);
        state.done++;
    }
}

} /* namespace emu_detail */

/* ---- the device ------------------------------------------------------------------------------ */
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int warpSize;
    int maxThreadsPerBlock;
    int major, minor;
    int multiProcessorCount;
};

inline cudaError_t cudaGetDeviceCount(int *count)
{
    if (!count)
        return emu_detail::status(cudaErrorInvalidValue);
    *count = emu_detail::device_count();
    return cudaSuccess;
}

inline cudaError_t cudaSetDevice(int device)
{
    if (device < 0 || device >= emu_detail::device_count())
        return emu_detail::status(cudaErrorInvalidDevice);
    emu_detail::current_device = device;
    return cudaSuccess;
}

inline cudaError_t cudaGetDevice(int *device)
{
    if (!device)
        return emu_detail::status(cudaErrorInvalidValue);
    *device = emu_detail::current_device;
    return cudaSuccess;
}

inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device)
{
    if (!prop)
        return emu_detail::status(cudaErrorInvalidValue);
    if (device < 0 || device >= emu_detail::device_count())
        return emu_detail::status(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "CUDA emulator (CPU)");
    prop->totalGlobalMem = emu_detail::device_total_bytes();
    prop->sharedMemPerBlock = emu_detail::default_shared_bytes;
    prop->sharedMemPerBlockOptin = emu_detail::max_shared_bytes();
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->major = emu_detail::device_sm() / 10, prop->minor = emu_detail::device_sm() % 10;
    prop->multiProcessorCount = 4;
    return cudaSuccess;
}

inline cudaError_t cudaDeviceSynchronize()
{
    emu_detail::finish();
    return cudaSuccess;
}

/* ---- memory ---------------------------------------------------------------------------------- */
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

/* 256-byte aligned (as cudaMalloc promises), 0xFF bytes, so what a kernel reads before anything
 * wrote it is NaN rather than a plausible zero. Zero bytes give NULL, as in CUDA. */
inline cudaError_t cudaMalloc(void **ptr, size_t bytes)
{
    using namespace emu_detail;
    if (!ptr)
        return status(cudaErrorInvalidValue);
    *ptr = nullptr;
    if (bytes == 0)
        return cudaSuccess;
    device_state &state = device();
    {
        std::lock_guard<std::mutex> lock(state.mutex);
        if (bytes > device_total_bytes() - state.allocated)
            return status(cudaErrorMemoryAllocation);
        state.allocated += bytes; /* claimed now, so two threads cannot both take the rest */
        state.peak = state.allocated > state.peak ? state.allocated : state.peak;
    }
    size_t rounded = (bytes + 255) / 256 * 256;
    void *mapped = mmap(nullptr, mapped_bytes(bytes), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    std::lock_guard<std::mutex> lock(state.mutex);
    if (mapped == MAP_FAILED) {
        state.allocated -= bytes;
        return status(cudaErrorMemoryAllocation);
    }
    unsigned char *base = (unsigned char *)mapped, *p = base + red_zone;
    memset(base, red_byte, red_zone);
    memset(p, 0xff, bytes);
    memset(p + bytes, red_byte, rounded - bytes + red_zone);
    state.blocks[(uintptr_t)p] = bytes;
    if (deferring() && !state.open)
        protect_block((uintptr_t)p, bytes, false);
    *ptr = p;
    return cudaSuccess;
}

template <class T> inline cudaError_t cudaMalloc(T **ptr, size_t bytes)
{
    return cudaMalloc(reinterpret_cast<void **>(ptr), bytes);
}

inline cudaError_t cudaFree(void *ptr)
{
    using namespace emu_detail;
    if (!ptr)
        return cudaSuccess;
    finish();   /* as CUDA, which waits for the device */
    device_state &state = device();
    std::lock_guard<std::mutex> running(state.running);   /* no work opens blocks meanwhile */
    std::lock_guard<std::mutex> lock(state.mutex);
    auto block = state.blocks.find((uintptr_t)ptr);
    if (block == state.blocks.end())
        return status(cudaErrorInvalidValue);
    open_blocks_locked(state, true);
    check_red_zones_locked(state, "cudaFree");
    size_t bytes = block->second;
    state.allocated -= bytes;
    state.blocks.erase(block);
    munmap((unsigned char *)ptr - red_zone, mapped_bytes(bytes));
    open_blocks_locked(state, false);
    return cudaSuccess;
}

/* Page-locked host memory: plain host memory here, filled with 0xFF bytes as cudaMalloc's */
inline cudaError_t cudaMallocHost(void **ptr, size_t bytes)
{
    using namespace emu_detail;
    if (!ptr)
        return status(cudaErrorInvalidValue);
    *ptr = bytes ? malloc(bytes) : nullptr;
    if (bytes && !*ptr)
        return status(cudaErrorMemoryAllocation);
    if (*ptr) {
        memset(*ptr, 0xff, bytes);
        device_state &state = device();
        std::lock_guard<std::mutex> lock(state.mutex);
        state.host_blocks[(uintptr_t)*ptr] = bytes;
    }
    return cudaSuccess;
}

inline cudaError_t cudaFreeHost(void *ptr)
{
    using namespace emu_detail;
    if (!ptr)
        return cudaSuccess;
    finish();
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    if (!state.host_blocks.erase((uintptr_t)ptr))
        return status(cudaErrorInvalidValue);
    free(ptr);
    return cudaSuccess;
}

inline cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    using namespace emu_detail;
    if (!free_bytes || !total_bytes)
        return status(cudaErrorInvalidValue);
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    *total_bytes = device_total_bytes();
    *free_bytes = device_total_bytes() - state.allocated;
    return cudaSuccess;
}

namespace emu_detail {

/* A copy from host memory, issued: from pageable memory the bytes are taken now (CUDA stages
 * them before returning); from page-locked memory when the copy runs, and the host must not
 * have changed them by then. */
inline void issue_upload(void *dst, const void *src, size_t bytes)
{
    if (!deferring()) {
        issue([=] { memcpy(dst, src, bytes); });
        return;
    }
    std::shared_ptr<std::vector<unsigned char>> taken(
        new std::vector<unsigned char>((const unsigned char *)src,
                                       (const unsigned char *)src + bytes));
    if (!is_page_locked(src, bytes)) {
        issue([=] { memcpy(dst, taken->data(), bytes); });
        return;
    }
    device_state &state = device();
    std::multimap<uintptr_t, size_t>::iterator read;
    {
        std::lock_guard<std::mutex> lock(state.mutex);
        read = state.pending_reads.emplace((uintptr_t)src, bytes);
    }
    issue([=] {
        if (memcmp(src, taken->data(), bytes) != 0)
            fail("page-locked memory at %p (%zu bytes) changed between cudaMemcpyAsync from it "
                 "and the copy running: wait for the copy (an event or the stream) before "
                 "reusing the buffer", src, bytes);
        memcpy(dst, src, bytes);
        std::lock_guard<std::mutex> lock(device().mutex);
        device().pending_reads.erase(read);
    });
}

/* A copy into host memory, issued: into page-locked memory it lands when the copy runs, and
 * until then the bytes read 0xFF (unless a pending copy reads them); into pageable memory
 * CUDA returns only once it is done. */
inline void issue_download(void *dst, const void *src, size_t bytes)
{
    if (!deferring()) {
        issue([=] { memmove(dst, src, bytes); });
        return;
    }
    if (!is_page_locked(dst, bytes)) {
        finish(issue([=] { memmove(dst, src, bytes); }));
        return;
    }
    bool read = false;
    {
        device_state &state = device();
        std::lock_guard<std::mutex> lock(state.mutex);
        for (const auto &range : state.pending_reads)
            read |= range.first < (uintptr_t)dst + bytes &&
                    (uintptr_t)dst < range.first + range.second;
    }
    if (!read)
        memset(dst, 0xff, bytes);
    issue([=] { memmove(dst, src, bytes); });
}

} /* namespace emu_detail */

/* The kind says which side is device memory; cudaMemcpyDefault and HostToHost check nothing
 * and finish before returning. */
inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t stream = 0)
{
    using namespace emu_detail;
    if (!is_stream(stream))
        return status(cudaErrorInvalidResourceHandle);
    if ((unsigned)kind > cudaMemcpyDefault)
        return status(cudaErrorInvalidValue);
    if (bytes == 0)
        return cudaSuccess;
    bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    if (!dst || !src || (src_device && !is_device_range(src, bytes)) ||
        (dst_device && !is_device_range(dst, bytes)))
        return status(cudaErrorInvalidValue);
    if (kind == cudaMemcpyHostToDevice)
        issue_upload(dst, src, bytes);
    else if (kind == cudaMemcpyDeviceToHost)
        issue_download(dst, src, bytes);
    else if (kind == cudaMemcpyDeviceToDevice)
        issue([=] { memmove(dst, src, bytes); });
    else
        finish(issue([=] { memmove(dst, src, bytes); }));
    return cudaSuccess;
}

/* Returns when the copy is done (CUDA's cudaMemcpy may return before a device-to-device one
 * is; this one waits for it too). */
inline cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    cudaError_t rc = cudaMemcpyAsync(dst, src, bytes, kind, 0);
    if (rc == cudaSuccess)
        emu_detail::finish();
    return rc;
}

/* Rows of width bytes, pitch bytes apart, set to the low byte of value. */
inline cudaError_t cudaMemset2DAsync(void *ptr, size_t pitch, int value, size_t width,
                                     size_t height, cudaStream_t stream = 0)
{
    using namespace emu_detail;
    if (!is_stream(stream))
        return status(cudaErrorInvalidResourceHandle);
    if (width == 0 || height == 0)
        return cudaSuccess;
    if (width > pitch)
        return status(cudaErrorInvalidValue);
    if (!ptr || !is_device_range(ptr, (height - 1) * pitch + width))
        return status(cudaErrorInvalidValue);
    issue([=] {
        for (size_t row = 0; row < height; row++)
            memset((unsigned char *)ptr + row * pitch, value & 0xff, width);
    });
    return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream = 0)
{
    return cudaMemset2DAsync(ptr, bytes, value, bytes, 1, stream);
}

inline cudaError_t cudaMemset(void *ptr, int value, size_t bytes)
{
    return cudaMemsetAsync(ptr, value, bytes, 0);
}

/* ---- streams --------------------------------------------------------------------------------- */
enum { cudaStreamDefault = 0, cudaStreamNonBlocking = 1 };

inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags)
{
    using namespace emu_detail;
    if (!stream || flags > cudaStreamNonBlocking)
        return status(cudaErrorInvalidValue);
    *stream = new CUstream_st{flags, current_device};
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    state.streams.insert(*stream);
    return cudaSuccess;
}

inline cudaError_t cudaStreamCreate(cudaStream_t *stream)
{
    return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

inline cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    using namespace emu_detail;
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    if (!stream || !state.streams.erase(stream))
        return status(cudaErrorInvalidResourceHandle);
    delete stream;
    return cudaSuccess;
}

/* Waits for everything issued (one queue for every stream). */
inline cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    if (!emu_detail::is_stream(stream))
        return emu_detail::status(cudaErrorInvalidResourceHandle);
    emu_detail::finish();
    return cudaSuccess;
}

/* ---- events: the wall clock when their record runs ------------------------------------------- */
inline cudaError_t cudaEventCreate(cudaEvent_t *event)
{
    using namespace emu_detail;
    if (!event)
        return status(cudaErrorInvalidValue);
    *event = new CUevent_st{false, {}, 0};
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    state.events.insert(*event);
    return cudaSuccess;
}

enum { cudaEventDefault = 0, cudaEventBlockingSync = 1, cudaEventDisableTiming = 2 };
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags)
{
    if (flags > (cudaEventBlockingSync | cudaEventDisableTiming))
        return emu_detail::status(cudaErrorInvalidValue);
    return cudaEventCreate(event);
}

inline cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    using namespace emu_detail;
    if (is_event(event))
        finish(event->order);   /* its record, queued, writes to it */
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    if (!event || !state.events.erase(event))
        return status(cudaErrorInvalidResourceHandle);
    delete event;
    return cudaSuccess;
}

inline cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0)
{
    using namespace emu_detail;
    if (!is_event(event) || !is_stream(stream))
        return status(cudaErrorInvalidResourceHandle);
    event->recorded = false;
    event->order = issue([event] {
        event->when = std::chrono::steady_clock::now();
        event->recorded = true;
    });
    return cudaSuccess;
}

/* Waits for the work issued before the event's last record. */
inline cudaError_t cudaEventSynchronize(cudaEvent_t event)
{
    if (!emu_detail::is_event(event))
        return emu_detail::status(cudaErrorInvalidResourceHandle);
    emu_detail::finish(event->order);
    return cudaSuccess;
}

/* Milliseconds from start to stop; both must have been recorded, and their records run
 * (cudaErrorNotReady otherwise). */
inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t stop)
{
    using namespace emu_detail;
    if (!ms)
        return status(cudaErrorInvalidValue);
    if (!is_event(start) || !is_event(stop) || !start->order || !stop->order)
        return status(cudaErrorInvalidResourceHandle);
    if (!start->recorded || !stop->recorded)
        return status(cudaErrorNotReady);
    *ms = std::chrono::duration<float, std::milli>(stop->when - start->when).count();
    return cudaSuccess;
}

/* ---- kernel attributes and the checked launch ------------------------------------------------ */
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct cudaFuncAttributes {
    size_t sharedSizeBytes;
    int maxThreadsPerBlock;
    int maxDynamicSharedSizeBytes;
    int binaryVersion, ptxVersion;
};

/* A kernel is known by its address, as the launcher passes it to emu_launch_checked. */
inline cudaError_t cudaFuncSetAttribute(const void *kernel, cudaFuncAttribute attribute, int value)
{
    using namespace emu_detail;
    if (!kernel || attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
        (size_t)value > max_shared_bytes())
        return status(cudaErrorInvalidValue);
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    state.shared_limits[kernel] = (size_t)value;
    return cudaSuccess;
}

template <class T>
inline cudaError_t cudaFuncSetAttribute(T *kernel, cudaFuncAttribute attribute, int value)
{
    return cudaFuncSetAttribute((const void *)kernel, attribute, value);
}

namespace emu_detail {

inline size_t shared_limit(const void *kernel)
{
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    auto limit = state.shared_limits.find(kernel);
    return limit == state.shared_limits.end() ? default_shared_bytes : limit->second;
}

} /* namespace emu_detail */

/* Every kernel is built for sm_90 here. */
template <class T> inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attributes,
                                                            T *kernel)
{
    if (!attributes || !kernel)
        return emu_detail::status(cudaErrorInvalidValue);
    memset(attributes, 0, sizeof *attributes);
    attributes->maxThreadsPerBlock = 1024;
    attributes->maxDynamicSharedSizeBytes = (int)emu_detail::shared_limit((const void *)kernel);
    attributes->binaryVersion = 90;
    attributes->ptxVersion = 90;
    return cudaSuccess;
}

namespace emu_detail {

/* The error CUDA gives a launch of this configuration, or cudaSuccess. */
inline cudaError_t launch_refusal(dim3 grid, dim3 block, size_t shared_bytes, const void *kernel)
{
    unsigned long threads = (unsigned long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64)
        return cudaErrorInvalidConfiguration;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
        grid.z > 65535)
        return cudaErrorInvalidConfiguration;
    if (shared_bytes > std::min(shared_limit(kernel), max_shared_bytes()))
        return cudaErrorInvalidValue;
    return cudaSuccess;
}

inline void run_kernel(dim3 grid, dim3 block, size_t shared_bytes,
                       const std::function<void()> &body)
{
    emu_launch(grid, block, shared_bytes, body);
    device_state &state = device();
    std::lock_guard<std::mutex> lock(state.mutex);
    check_red_zones_locked(state, "a kernel");
}

} /* namespace emu_detail */

/* emu_launch, but a configuration CUDA would refuse is refused the same way: the kernel does
 * not run, and the error is returned and left for cudaGetLastError. kernel (the address passed
 * to cudaFuncSetAttribute, or NULL) decides the shared-memory limit: 48 KiB unless raised.
 * Runs now, whatever PESC_EMU_DEFER says. */
inline cudaError_t emu_launch_checked(dim3 grid, dim3 block, size_t shared_bytes,
                                      const std::function<void()> &body, const void *kernel)
{
    using namespace emu_detail;
    cudaError_t refusal = launch_refusal(grid, block, shared_bytes, kernel);
    if (refusal != cudaSuccess)
        return status(refusal);
    device_state &state = device();
    std::lock_guard<std::mutex> running(state.running);
    bool open;
    {
        std::lock_guard<std::mutex> lock(state.mutex);
        open = state.open;
        open_blocks_locked(state, true);
    }
    run_kernel(grid, block, shared_bytes, body);
    std::lock_guard<std::mutex> lock(state.mutex);
    open_blocks_locked(state, open);
    return cudaSuccess;
}

/* A launch into a stream, as <<<grid, block, shared, stream>>>: refused as emu_launch_checked
 * refuses it, and a stream made on another device than the current one is refused
 * (cudaErrorInvalidResourceHandle), as CUDA refuses it, since the kernel would run on the
 * current device; then issued (see PESC_EMU_DEFER). */
inline cudaError_t emu_launch_on(cudaStream_t stream, dim3 grid, dim3 block, size_t shared_bytes,
                                 std::function<void()> body, const void *kernel)
{
    using namespace emu_detail;
    if (!is_stream(stream) || (stream && stream->device != current_device))
        return status(cudaErrorInvalidResourceHandle);
    {
        device_state &state = device();
        std::lock_guard<std::mutex> lock(state.mutex);
        state.launches++;
    }
    cudaError_t refusal = launch_refusal(grid, block, shared_bytes, kernel);
    if (refusal != cudaSuccess)
        return status(refusal);
    issue([=] { run_kernel(grid, block, shared_bytes, body); });
    return cudaSuccess;
}

/* A kernel call with its arguments taken now, as a launch takes them: emu_launch_on's body. */
template <class... P, class... A>
inline std::function<void()> emu_bind(void (*kernel)(P...), A &&...args)
{
    static_assert(sizeof...(P) == sizeof...(A), "a kernel launched with the wrong argument count");
    std::tuple<typename std::decay<P>::type...> values(std::forward<A>(args)...);
    return [kernel, values] { std::apply(kernel, values); };
}

#endif /* PESC_CUDA_RUNTIME_EMU_H */
