// Kernels of the CUDA backend, compiled at run time by NVRTC with the model's
// shape as constants: HIDDEN, HEADS, HEAD_DIM, and IN_FP16 or IN_BF16 when
// GEMM inputs are fp16 or bf16 (activations that feed a GEMM are written as
// `in_t`; the residual stream, GEMM outputs and all reductions stay fp32).

#if defined(IN_FP16) || defined(IN_BF16)
typedef unsigned short in_t;
#if defined(BATCHMILL_EMULATED)
// The tests' CPU emulation of CUDA (crates/embed/cuda-emu) has no PTX; its
// conversions round to nearest even, as cvt.rn does.
#ifdef IN_FP16
__device__ __forceinline__ in_t to_in(float f) { return emu_f32_to_f16(f); }
#else
__device__ __forceinline__ in_t to_in(float f) { return emu_f32_to_bf16(f); }
#endif
#else
#ifdef IN_FP16
#define TO_IN "cvt.rn.f16.f32 %0, %1;"
#else
#define TO_IN "cvt.rn.bf16.f32 %0, %1;"
#endif
__device__ __forceinline__ in_t to_in(float f) {
    unsigned short h;
    asm(TO_IN : "=h"(h) : "f"(f));
    return h;
}
#endif
#else
typedef float in_t;
__device__ __forceinline__ in_t to_in(float f) { return f; }
#endif

#define PER_LANE ((HIDDEN + 31) / 32)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Layer norm of the row a warp holds in v (lane's elements lane + 32k),
// written to x (fp32) and xin (GEMM input).
__device__ __forceinline__ void norm_store(float* v, const float* gamma, const float* beta, float eps,
                                           float* x, in_t* xin, int lane) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < PER_LANE; ++k) {
        int c = lane + 32 * k;
        if (c < HIDDEN) s += v[k];
    }
    float mean = warp_sum(s) / HIDDEN;
    float q = 0.f;
#pragma unroll
    for (int k = 0; k < PER_LANE; ++k) {
        int c = lane + 32 * k;
        if (c < HIDDEN) { float d = v[k] - mean; q += d * d; }
    }
    float inv = rsqrtf(warp_sum(q) / HIDDEN + eps);
#pragma unroll
    for (int k = 0; k < PER_LANE; ++k) {
        int c = lane + 32 * k;
        if (c < HIDDEN) {
            float y = (v[k] - mean) * inv * gamma[c] + beta[c];
            x[c] = y;
            xin[c] = to_in(y);
        }
    }
}

// One warp per token: word + position + token type 0, then layer norm.
extern "C" __global__ void embed(const unsigned* ids, const unsigned* pos, int rows, const float* word,
                                 const float* position, const float* type0, const float* gamma,
                                 const float* beta, float eps, float* x, in_t* xin) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* w = word + (size_t)ids[row] * HIDDEN;
    const float* p = position + (size_t)pos[row] * HIDDEN;
    float v[PER_LANE];
#pragma unroll
    for (int k = 0; k < PER_LANE; ++k) {
        int c = lane + 32 * k;
        v[k] = c < HIDDEN ? w[c] + p[c] + type0[c] : 0.f;
    }
    norm_store(v, gamma, beta, eps, x + (size_t)row * HIDDEN, xin + (size_t)row * HIDDEN, lane);
}

// One warp per row: x = layer_norm(x + y + bias).
extern "C" __global__ void residual_norm(float* x, const float* y, const float* bias, const float* gamma,
                                         const float* beta, float eps, int rows, in_t* xin) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    float* xr = x + (size_t)row * HIDDEN;
    const float* yr = y + (size_t)row * HIDDEN;
    float v[PER_LANE];
#pragma unroll
    for (int k = 0; k < PER_LANE; ++k) {
        int c = lane + 32 * k;
        v[k] = c < HIDDEN ? xr[c] + yr[c] + bias[c] : 0.f;
    }
    norm_store(v, gamma, beta, eps, xr, xin + (size_t)row * HIDDEN, lane);
}

// out = gelu(up + bias), BERT's exact (erf) GELU, as the next GEMM's input.
extern "C" __global__ void bias_gelu(const float* up, const float* bias, int cols, size_t n, in_t* out) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float y = up[i] + bias[i % cols];
        out[i] = to_in(0.5f * y * (1.f + erff(y * 0.70710678118654752f)));
    }
}

#define TILE 64

// Self-attention, one warp per (sequence, head): each lane owns queries
// lane, lane + 32, ...; keys and values stream through shared memory in
// tiles (bias added on load) with an online softmax, so no score matrix is
// stored and sequences of any length up to max_seq_length fit. qkv is
// [tokens, 3·HIDDEN] without bias; ctx gets [tokens, HIDDEN].
extern "C" __global__ void attention(const float* qkv, const float* bias, const unsigned* offsets, in_t* ctx) {
    __shared__ float ks[TILE][HEAD_DIM + 1];
    __shared__ float vs[TILE][HEAD_DIM + 1];
    int seq = blockIdx.x, head = blockIdx.y, lane = threadIdx.x;
    int start = offsets[seq], len = offsets[seq + 1] - start;
    const int stride = 3 * HIDDEN;
    const float scale = rsqrtf((float)HEAD_DIM);
    const float* qb = bias + head * HEAD_DIM;
    const float* kb = bias + HIDDEN + head * HEAD_DIM;
    const float* vb = bias + 2 * HIDDEN + head * HEAD_DIM;
    for (int base = 0; base < len; base += 32) {
        int i = base + lane;
        bool active = i < len;
        float q[HEAD_DIM], acc[HEAD_DIM];
        float m = -1e30f, l = 0.f;
        const float* qr = qkv + (size_t)(start + (active ? i : 0)) * stride + head * HEAD_DIM;
#pragma unroll
        for (int c = 0; c < HEAD_DIM; ++c) { q[c] = (qr[c] + qb[c]) * scale; acc[c] = 0.f; }
        for (int t0 = 0; t0 < len; t0 += TILE) {
            int n = min(TILE, len - t0);
            __syncwarp();
            for (int e = lane; e < n * HEAD_DIM; e += 32) {
                int j = e / HEAD_DIM, c = e % HEAD_DIM;
                const float* row = qkv + (size_t)(start + t0 + j) * stride;
                ks[j][c] = row[HIDDEN + head * HEAD_DIM + c] + kb[c];
                vs[j][c] = row[2 * HIDDEN + head * HEAD_DIM + c] + vb[c];
            }
            __syncwarp();
            for (int j = 0; j < n; ++j) {
                float s = 0.f;
#pragma unroll
                for (int c = 0; c < HEAD_DIM; ++c) s += q[c] * ks[j][c];
                float m2 = fmaxf(m, s);
                float corr = __expf(m - m2), p = __expf(s - m2);
                l = l * corr + p;
#pragma unroll
                for (int c = 0; c < HEAD_DIM; ++c) acc[c] = acc[c] * corr + p * vs[j][c];
                m = m2;
            }
        }
        if (active) {
            in_t* out = ctx + (size_t)(start + i) * HIDDEN + head * HEAD_DIM;
            float inv = 1.f / l;
#pragma unroll
            for (int c = 0; c < HEAD_DIM; ++c) out[c] = to_in(acc[c] * inv);
        }
    }
}

// Mean pooling and L2 normalisation, one block of HIDDEN threads per sequence.
extern "C" __global__ void pool(const float* x, const unsigned* offsets, float* out) {
    __shared__ float partial[32];
    int seq = blockIdx.x, c = threadIdx.x;
    int start = offsets[seq], end = offsets[seq + 1];
    float s = 0.f;
    if (c < HIDDEN)
        for (int t = start; t < end; ++t) s += x[(size_t)t * HIDDEN + c];
    s /= (float)max(end - start, 1);
    float q = warp_sum(c < HIDDEN ? s * s : 0.f);
    if (c % 32 == 0) partial[c / 32] = q;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < (int)(blockDim.x + 31) / 32; ++w) total += partial[w];
    if (c < HIDDEN) out[(size_t)seq * HIDDEN + c] = s / fmaxf(sqrtf(total), 1e-12f);
}
