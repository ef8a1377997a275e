// The interface between the emulated driver (driver.cc) and a module of
// kernels compiled for the CPU (kernel.h, nvrtc.cc): the running GPU
// thread's indices, and the calls a kernel makes to wait for its block or
// its warp.
#pragma once

struct EmuDim {
    unsigned x, y, z;
};

struct EmuRuntime {
    // Of the GPU thread running now; the driver sets them before it resumes
    // each thread.
    EmuDim threadIdx, blockIdx, blockDim, gridDim;
    void (*sync_block)();
    void (*sync_warp)();
    // 32 floats the running thread's warp exchanges values through.
    float* (*warp_slots)();
};

// A module exports `emu_bind(EmuRuntime*)`, which the driver calls once it
// has loaded it, and `emu_entry_<kernel>(void** params)` for each kernel,
// which calls the kernel with its parameters as cuLaunchKernel passes them.
typedef void (*EmuBind)(EmuRuntime*);
typedef void (*EmuEntry)(void**);

// A module image, as the emulated NVRTC hands it out for a "cubin" and the
// emulated driver's cuModuleLoadData takes it: this header, then a shared
// object of `size` bytes.
struct EmuImageHeader {
    char magic[8];  // "BMEMUSO\0"
    unsigned long long size;
};
