// An emulated CUDA driver (libcuda.so) for tests on machines without a GPU:
// the part of the driver API the CUDA backend calls through cudarc, run on
// the CPU. "Device" memory is host memory, every stream operation runs at
// once, and a kernel launch runs its blocks one after another, each GPU
// thread of a block as a fiber that yields to the others when it waits at
// __syncthreads, __syncwarp or a shuffle. Modules are shared
// objects the emulated NVRTC (nvrtc.cc) built from the CUDA source.
//
// It checks the backend's logic (buffers, offsets, launch shapes, kernel
// indexing, the GEMMs' layout) and its kernels' arithmetic; it says nothing
// of speed, of races between streams, or of how a real GPU rounds. Every
// allocation ends (to within 16 bytes) at a page that cannot be touched, so
// a kernel that reads or writes past the end of a buffer stops the process
// with a message naming the kernel.
#include <dlfcn.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "emu.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUstream;
typedef void* CUmodule;
typedef void* CUfunction;
typedef void* CUevent;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

#define API extern "C" __attribute__((visibility("default")))

// --- device and context ---

static thread_local CUcontext current_ctx;
static int primary_ctx_token;

API CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
API CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_VALUE;
    *d = 0;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, (size_t)len, "batchmill CUDA emulator on the CPU (tests only)");
    return CUDA_SUCCESS;
}
API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = (size_t)8 << 30;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    switch (attribute) {
    case 1: *v = 1024; break;  // max threads per block
    case 2: case 3: *v = 1024; break;
    case 4: *v = 64; break;
    case 5: *v = 2147483647; break;  // max grid x
    case 6: case 7: *v = 65535; break;
    case 8: *v = 49152; break;  // shared memory per block
    case 10: *v = 32; break;  // warp size
    case 16: *v = 1; break;  // multiprocessors
    case 75: *v = 9; break;  // compute capability 9.0, as an H100
    case 76: *v = 0; break;
    case 115: *v = 0; break;  // no memory pools: plain allocations
    default: *v = 0;
    }
    return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice) {
    *ctx = &primary_ctx_token;
    return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
API CUresult cuCtxGetCurrent(CUcontext* ctx) {
    *ctx = current_ctx;
    return CUDA_SUCCESS;
}
API CUresult cuCtxSetCurrent(CUcontext ctx) {
    current_ctx = ctx;
    return CUDA_SUCCESS;
}
API CUresult cuCtxSynchronize() { return CUDA_SUCCESS; }
struct ErrorText {
    CUresult code;
    const char* name;
    const char* text;
};

// The errors this driver returns; anything else reads as the last.
const ErrorText ERRORS[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "not a module the emulated NVRTC built"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "not supported by the emulated driver"},
};

static const ErrorText& error_text(CUresult e) {
    for (const ErrorText& t : ERRORS)
        if (t.code == e) return t;
    return ERRORS[sizeof ERRORS / sizeof ERRORS[0] - 1];
}

API CUresult cuGetErrorString(CUresult e, const char** s) {
    *s = error_text(e).text;
    return CUDA_SUCCESS;
}
API CUresult cuGetErrorName(CUresult e, const char** s) {
    *s = error_text(e).name;
    return CUDA_SUCCESS;
}

// --- streams and events: everything has already happened ---

static int stream_token;

API CUresult cuStreamCreate(CUstream* s, unsigned) {
    *s = &stream_token;
    return CUDA_SUCCESS;
}
API CUresult cuStreamCreateWithPriority(CUstream* s, unsigned flags, int) { return cuStreamCreate(s, flags); }
API CUresult cuStreamDestroy_v2(CUstream) { return CUDA_SUCCESS; }
API CUresult cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
API CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned) { return CUDA_SUCCESS; }

static double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}
API CUresult cuEventCreate(CUevent* e, unsigned) {
    *e = new double(0);
    return CUDA_SUCCESS;
}
API CUresult cuEventDestroy_v2(CUevent e) {
    delete (double*)e;
    return CUDA_SUCCESS;
}
API CUresult cuEventRecord(CUevent e, CUstream) {
    *(double*)e = now_ms();
    return CUDA_SUCCESS;
}
API CUresult cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
API CUresult cuEventQuery(CUevent) { return CUDA_SUCCESS; }
API CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    *ms = (float)(*(double*)b - *(double*)a);
    return CUDA_SUCCESS;
}
API CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }

// --- memory: device memory is host memory ---

// Allocations by start: the mapping each lies in, and its length. Never
// destroyed (nor is any other state here with a destructor): a thread may
// still be freeing device memory or launching while the process exits.
static std::mutex mappings_lock;
static auto& mappings = *new std::map<CUdeviceptr, std::pair<void*, size_t>>;

API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t data = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
    void* m = mmap(nullptr, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    char* guard = (char*)m + data;
    if (mprotect(guard, page, PROT_NONE) != 0) {
        munmap(m, data + page);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    // The last byte that belongs to it is at most 15 bytes short of the guard.
    *p = ((CUdeviceptr)guard - bytes) & ~(CUdeviceptr)15;
    std::lock_guard<std::mutex> hold(mappings_lock);
    mappings[*p] = {m, data + page};
    return CUDA_SUCCESS;
}
API CUresult cuMemFree_v2(CUdeviceptr p) {
    std::lock_guard<std::mutex> hold(mappings_lock);
    auto at = mappings.find(p);
    if (at == mappings.end()) return CUDA_ERROR_INVALID_VALUE;
    munmap(at->second.first, at->second.second);
    mappings.erase(at);
    return CUDA_SUCCESS;
}
API CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    CUdeviceptr d;
    CUresult r = cuMemAlloc_v2(&d, bytes);
    *p = (void*)d;
    return r;
}
API CUresult cuMemFreeHost(void* p) { return cuMemFree_v2((CUdeviceptr)p); }
API CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
    *free = *total = (size_t)8 << 30;
    return CUDA_SUCCESS;
}
API CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream) {
    std::memset((void*)p, v, n);
    return CUDA_SUCCESS;
}
API CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { return cuMemsetD8Async(p, v, n, nullptr); }
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream) {
    std::memcpy((void*)dst, src, n);
    return CUDA_SUCCESS;
}
API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    return cuMemcpyHtoDAsync_v2(dst, src, n, nullptr);
}
API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream) {
    std::memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    return cuMemcpyDtoHAsync_v2(dst, src, n, nullptr);
}
API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) {
    std::memmove((void*)dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    return cuMemcpyDtoDAsync_v2(dst, src, n, nullptr);
}

// --- modules ---

struct Module {
    void* handle;
};

struct Function {
    EmuEntry entry;
    std::string name;
};

static EmuRuntime runtime;

API CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    const EmuImageHeader* h = (const EmuImageHeader*)image;
    if (std::memcmp(h->magic, "BMEMUSO", 8) != 0) return CUDA_ERROR_INVALID_IMAGE;
    char path[] = "/tmp/batchmill-cuda-emu-module-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return CUDA_ERROR_INVALID_VALUE;
    const char* bytes = (const char*)(h + 1);
    for (unsigned long long done = 0; done < h->size;) {
        ssize_t n = write(fd, bytes + done, h->size - done);
        if (n <= 0) {
            close(fd);
            unlink(path);
            return CUDA_ERROR_INVALID_VALUE;
        }
        done += (unsigned long long)n;
    }
    close(fd);
    void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    unlink(path);
    if (!handle) {
        std::fprintf(stderr, "cuda emulator: %s\n", dlerror());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    EmuBind bind = (EmuBind)dlsym(handle, "emu_bind");
    if (!bind) return CUDA_ERROR_INVALID_IMAGE;
    bind(&runtime);
    *m = new Module{handle};
    return CUDA_SUCCESS;
}
API CUresult cuModuleUnload(CUmodule m) {
    Module* mod = (Module*)m;
    dlclose(mod->handle);
    delete mod;
    return CUDA_SUCCESS;
}
API CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    std::string symbol = std::string("emu_entry_") + name;
    EmuEntry entry = (EmuEntry)dlsym(((Module*)m)->handle, symbol.c_str());
    if (!entry) return CUDA_ERROR_NOT_FOUND;
    *f = new Function{entry, name};
    return CUDA_SUCCESS;
}
API CUresult cuFuncGetAttribute(int* v, int, CUfunction) {
    *v = 0;
    return CUDA_SUCCESS;
}
API CUresult cuFuncSetAttribute(CUfunction, int, int) { return CUDA_SUCCESS; }

// --- launches: a block's threads are fibers ---

namespace {

constexpr size_t STACK = 256 * 1024;

void fiber_main();

// A fiber's saved context, and switching from the running one to another.
// On x86-64 a switch saves and restores the callee-saved registers and the
// stack pointer (ucontext's swapcontext also makes a system call to save
// the signal mask, which made it a third of the emulator's time).
#if defined(__x86_64__)
extern "C" void emu_switch(void** save_sp, void* to_sp);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

struct Context {
    void* sp;
};

Context scheduler;

void fiber_start();

void prepare(Context& c, char* stack) {
    void** sp = (void**)((uintptr_t)(stack + STACK) & ~(uintptr_t)15);
    *--sp = nullptr;  // where fiber_start would return to: it never does
    *--sp = (void*)fiber_start;
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp, rbx, r12 to r15
    c.sp = sp;
}

void switch_to(Context& from, Context& to) { emu_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc;
};

Context scheduler;

void prepare(Context& c, char* stack) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = STACK;
    c.uc.uc_link = &scheduler.uc;
    makecontext(&c.uc, fiber_main, 0);
}

void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Barrier {
    unsigned arrived = 0, generation = 0, live = 0;
};

struct Fiber {
    Context context;
    char* stack = nullptr;
    bool done = false;
    EmuDim index{};
};

auto& fibers = *new std::vector<Fiber>;
auto& warps = *new std::vector<Barrier>;
auto& slots = *new std::vector<float>;
Barrier block;
size_t running;
unsigned long long progress;
EmuEntry entry;
void** params;

void yield() { switch_to(fibers[running].context, scheduler); }

void release(Barrier& b) {
    b.arrived = 0;
    b.generation++;
}

void arrive(Barrier& b) {
    progress++;
    unsigned generation = b.generation;
    if (++b.arrived >= b.live) {
        release(b);
        return;
    }
    while (b.generation == generation) yield();
}

// A thread that has returned no longer holds up its warp or block.
void leave(Barrier& b) {
    b.live--;
    if (b.arrived > 0 && b.arrived >= b.live) release(b);
}

void sync_block() { arrive(block); }
void sync_warp() { arrive(warps[running / 32]); }
float* warp_slots() { return &slots[running / 32 * 32]; }

void fiber_main() {
    entry(params);
    fibers[running].done = true;
    progress++;
    leave(warps[running / 32]);
    leave(block);
}

#if defined(__x86_64__)
// The bottom of every fiber's stack: runs the thread, then hands back to the
// scheduler for good (it never resumes a finished fiber).
void fiber_start() {
    fiber_main();
    Context finished;
    switch_to(finished, scheduler);
    __builtin_unreachable();
}
#endif

// Runs one block to the end; false if its threads wait on each other forever.
bool run_block(EmuDim block_index, EmuDim dim) {
    size_t n = (size_t)dim.x * dim.y * dim.z;
    if (fibers.size() < n) fibers.resize(n);
    warps.assign((n + 31) / 32, Barrier{});
    slots.assign(warps.size() * 32, 0.f);
    block = Barrier{};
    block.live = (unsigned)n;
    for (size_t w = 0; w < warps.size(); ++w) warps[w].live = (unsigned)std::min<size_t>(32, n - 32 * w);
    for (size_t i = 0; i < n; ++i) {
        Fiber& f = fibers[i];
        if (!f.stack) f.stack = (char*)std::malloc(STACK);
        f.done = false;
        f.index = EmuDim{(unsigned)(i % dim.x), (unsigned)(i / dim.x % dim.y), (unsigned)(i / dim.x / dim.y)};
        prepare(f.context, f.stack);
    }
    runtime.blockIdx = block_index;
    size_t left = n;
    while (left > 0) {
        unsigned long long before = progress;
        for (size_t i = 0; i < n; ++i) {
            if (fibers[i].done) continue;
            running = i;
            runtime.threadIdx = fibers[i].index;
            switch_to(scheduler, fibers[i].context);
            if (fibers[i].done) left--;
        }
        if (left > 0 && progress == before) return false;
    }
    return true;
}

}  // namespace

static const char* launching;
// One launch at a time, from whichever thread: the fibers and the runtime
// the modules see are the process's.
static std::mutex launch_lock;

// A fault in a kernel is an access past the end of an allocation (or to
// memory that is not the device's at all): say which kernel, then die.
static void on_fault(int, siginfo_t* info, void*) {
    char message[512];
    int n = std::snprintf(message, sizeof message,
                          "cuda emulator: kernel %s touched %p, outside every device allocation's bounds\n",
                          launching, info->si_addr);
    if (n > 0) (void)!write(2, message, (size_t)std::min(n, (int)sizeof message - 1));
    _exit(134);
}

API CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                            unsigned bz, unsigned, CUstream, void** kernel_params, void** extra) {
    if (extra || !kernel_params || bx * by * bz == 0 || bx * by * bz > 1024 || gx * gy * gz == 0)
        return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> hold(launch_lock);
    Function* function = (Function*)f;
    entry = function->entry;
    launching = function->name.c_str();
    struct sigaction fault{}, before{};
    fault.sa_sigaction = on_fault;
    fault.sa_flags = SA_SIGINFO;
    sigemptyset(&fault.sa_mask);
    sigaction(SIGSEGV, &fault, &before);
    params = kernel_params;
    runtime.sync_block = sync_block;
    runtime.sync_warp = sync_warp;
    runtime.warp_slots = warp_slots;
    runtime.gridDim = EmuDim{gx, gy, gz};
    runtime.blockDim = EmuDim{bx, by, bz};
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x)
                if (!run_block(EmuDim{x, y, z}, EmuDim{bx, by, bz})) {
                    std::fprintf(stderr,
                                 "cuda emulator: block (%u, %u, %u) deadlocked: its threads wait at barriers "
                                 "that not all of them reach\n",
                                 x, y, z);
                    std::abort();
                }
    sigaction(SIGSEGV, &before, nullptr);
    return CUDA_SUCCESS;
}
