// Included before a CUDA source that the emulated NVRTC compiles for the
// CPU: what device code expects of CUDA (thread indices, __syncthreads,
// warp shuffles, the math intrinsics), mapped onto the emulated driver's
// runtime. Kernels see BATCHMILL_EMULATED defined.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "emu.h"

#define BATCHMILL_EMULATED 1
#define __global__
#define __device__
#define __forceinline__ inline
// Blocks run one after another, so a block's shared memory can be static.
#define __shared__ static

static EmuRuntime* emu_rt;
extern "C" void emu_bind(EmuRuntime* rt) { emu_rt = rt; }

#define threadIdx (emu_rt->threadIdx)
#define blockIdx (emu_rt->blockIdx)
#define blockDim (emu_rt->blockDim)
#define gridDim (emu_rt->gridDim)

inline void __syncthreads() { emu_rt->sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_rt->sync_warp(); }

inline unsigned emu_lane() {
    unsigned linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    return linear % 32;
}

// Every lane of the warp posts its value, waits for the others, reads its
// partner's, and waits again before the slots can be reused.
inline float __shfl_xor_sync(unsigned, float v, int mask) {
    float* slots = emu_rt->warp_slots();
    unsigned lane = emu_lane();
    slots[lane] = v;
    emu_rt->sync_warp();
    float other = slots[(lane ^ (unsigned)mask) % 32];
    emu_rt->sync_warp();
    return other;
}

using std::max;
using std::min;
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }

// fp32 to fp16 and bf16 bits, rounding to nearest even as cvt.rn does.
inline unsigned short emu_f32_to_f16(float f) {
    _Float16 h = (_Float16)f;
    unsigned short bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}
inline unsigned short emu_f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
