// An emulated cuBLAS (libcublas.so) for tests on machines without a GPU:
// handles, and cublasGemmEx for fp32, fp16 and bf16 inputs with fp32 output
// and fp32 accumulation, column-major as cuBLAS, on the CPU over the
// emulated driver's "device" memory (host memory).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

typedef int cublasStatus_t;
enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
typedef void* cublasHandle_t;

#define API extern "C" __attribute__((visibility("default")))

static int handle_token;

API cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
    *h = &handle_token;
    return CUBLAS_STATUS_SUCCESS;
}
API cublasStatus_t cublasDestroy_v2(cublasHandle_t) { return CUBLAS_STATUS_SUCCESS; }
API cublasStatus_t cublasSetStream_v2(cublasHandle_t, void*) { return CUBLAS_STATUS_SUCCESS; }
API cublasStatus_t cublasSetMathMode(cublasHandle_t, int) { return CUBLAS_STATUS_SUCCESS; }
API cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t, void*, size_t) { return CUBLAS_STATUS_SUCCESS; }
API const char* cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    default: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
}

namespace {

float load(const void* p, size_t i, int type) {
    if (type == CUDA_R_32F) return ((const float*)p)[i];
    if (type == CUDA_R_16F) return (float)((const _Float16*)p)[i];
    uint32_t bits = (uint32_t)((const uint16_t*)p)[i] << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

typedef float v8 __attribute__((vector_size(32)));

v8 load8(const float* p) {
    v8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// c[j·ldc + i] = alpha · Σp at[p·m + i] · b[j·k + p] + beta · c, for j in
// [j0, j1): four columns of c at a time, sixteen rows of them held in
// registers while p runs.
void columns(const float* at, const float* b, float* c, int m, int k, int ldc, float alpha, float beta, int j0, int j1) {
    auto put = [&](float* out, float v) { *out = alpha * v + (beta == 0.f ? 0.f : beta * *out); };
    for (int j = j0; j < j1; j += 4) {
        int w = std::min(4, j1 - j);
        // Past the last column, repeat it: those sums are not stored.
        const float* bj[4];
        for (int q = 0; q < 4; ++q) bj[q] = b + (size_t)(j + std::min(q, w - 1)) * k;
        int i = 0;
        for (; i + 16 <= m; i += 16) {
            v8 acc[4][2] = {};
            for (int p = 0; p < k; ++p) {
                v8 r0 = load8(at + (size_t)p * m + i), r1 = load8(at + (size_t)p * m + i + 8);
                for (int q = 0; q < 4; ++q) {
                    acc[q][0] += bj[q][p] * r0;
                    acc[q][1] += bj[q][p] * r1;
                }
            }
            for (int q = 0; q < w; ++q)
                for (int e = 0; e < 16; ++e) put(c + (size_t)(j + q) * ldc + i + e, acc[q][e / 8][e % 8]);
        }
        for (; i < m; ++i)
            for (int q = 0; q < w; ++q) {
                float sum = 0.f;
                for (int p = 0; p < k; ++p) sum += at[(size_t)p * m + i] * bj[q][p];
                put(c + (size_t)(j + q) * ldc + i, sum);
            }
    }
}

}  // namespace

// C (m×n, ldc) = alpha · op(A) (m×k) · op(B) (k×n) + beta · C, column-major.
API cublasStatus_t cublasGemmEx(cublasHandle_t, int transa, int transb, int m, int n, int k, const void* alpha,
                                const void* A, int atype, int lda, const void* B, int btype, int ldb,
                                const void* beta, void* C, int ctype, int ldc, int, int) {
    for (int t : {atype, btype})
        if (t != CUDA_R_32F && t != CUDA_R_16F && t != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (ctype != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m < 0 || n < 0 || k < 0 || ldc < std::max(1, m)) return CUBLAS_STATUS_INVALID_VALUE;
    if (lda < std::max(1, transa == CUBLAS_OP_N ? m : k) || ldb < std::max(1, transb == CUBLAS_OP_N ? k : n))
        return CUBLAS_STATUS_INVALID_VALUE;
    // at[p][i] = op(A)[i][p]; bt[j][p] = op(B)[p][j], both fp32.
    std::vector<float> at((size_t)k * m), bt((size_t)n * k);
    for (int p = 0; p < k; ++p)
        for (int i = 0; i < m; ++i)
            at[(size_t)p * m + i] =
                load(A, transa == CUBLAS_OP_N ? i + (size_t)p * lda : p + (size_t)i * lda, atype);
    for (int j = 0; j < n; ++j)
        for (int p = 0; p < k; ++p)
            bt[(size_t)j * k + p] = load(B, transb == CUBLAS_OP_N ? p + (size_t)j * ldb : j + (size_t)p * ldb, btype);
    float a = *(const float*)alpha, b = *(const float*)beta;
    int threads = (int)std::max(1u, std::thread::hardware_concurrency());
    // Columns per thread, a multiple of the four `columns` takes at a time.
    int per = ((n + threads - 1) / threads + 3) / 4 * 4;
    std::vector<std::thread> pool;
    for (int j0 = 0; j0 < n; j0 += per)
        pool.emplace_back(columns, at.data(), bt.data(), (float*)C, m, k, ldc, a, b, j0, std::min(n, j0 + per));
    for (auto& t : pool) t.join();
    return CUBLAS_STATUS_SUCCESS;
}
