// asyppo/backend/cuda/cublas.cuh: cuBLAS for the CUDA backend: statuses as asyppo::error, the
// handle that a cuda_backend and its copies share, and the dense pattern of backend/dense.hpp.
//
//   C_i = op_a(A_i) op_b(B_i) + beta C_i  (column-major, strided batched)
// is cublas{S,D}gemmStridedBatched_64 (64-bit sizes, so token counts beyond 2^31 are fine) on the
// backend's stream, alpha = 1, host pointer mode. float runs in the handle's math mode: a handle
// this header creates keeps cuBLAS's default (no TF32 unless NVIDIA_TF32_OVERRIDE asks for it);
// a caller's handle keeps whatever the caller set. cuBLAS results are bit-identical run to run on
// one GPU model with one toolkit version (cuBLAS's own guarantee, for a single stream); they differ
// from the CPU's double accumulation by float rounding (documented per algorithm).
// Only valid under nvcc; link asyppo::cuda (CUDA::cublas).
#pragma once

#include "asyppo/backend/cuda/error.cuh"

#include <cublas_v2.h>

#include <mutex>
#include <type_traits>

#include "asyppo/backend/dense.hpp"

namespace asyppo::cuda_detail {

/// Throws asyppo::error naming `call` when status is not CUBLAS_STATUS_SUCCESS.
inline void check_blas(cublasStatus_t status, const char* call) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  detail::fail(backend_name, call, cublasGetStatusName(status), " (", static_cast<int>(status),
               "): ", cublasGetStatusString(status));
}

inline cublasOperation_t to_cublas(blas_op op) { return op == blas_op::transpose ? CUBLAS_OP_T : CUBLAS_OP_N; }

}  // namespace asyppo::cuda_detail

/// Checks a cuBLAS status; the error names the call as written.
#define ASYPPO_CUBLAS_CHECK(call) ::asyppo::cuda_detail::check_blas((call), #call)

namespace asyppo {

/// The cuBLAS handle of a cuda_backend: the caller's (not owned), or created by the first GEMM
/// (cublasCreate costs milliseconds and device memory, so a backend that never multiplies never
/// pays) and destroyed with the last copy of the backend. Thread-safe creation.
class cublas_handle {
 public:
  cublas_handle() = default;
  explicit cublas_handle(cublasHandle_t external) : handle_(external), owned_(false) {}
  cublas_handle(const cublas_handle&) = delete;
  cublas_handle& operator=(const cublas_handle&) = delete;
  ~cublas_handle() {
    if (owned_ && handle_) (void)cublasDestroy(handle_);
  }
  /// The handle, created on the current device at the first call.
  cublasHandle_t get() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!handle_) ASYPPO_CUBLAS_CHECK(cublasCreate(&handle_));
    return handle_;
  }

 private:
  std::mutex mutex_;
  cublasHandle_t handle_ = nullptr;
  bool owned_ = true;
};

namespace cuda_detail {

/// The dense pattern on `stream` through `handle` (see the file comment).
template <class T>
void gemm_strided_batched(cublasHandle_t handle, cudaStream_t stream, gemm_shape s, gemm_operand<T> a,
                          gemm_operand<T> b, double beta, gemm_output<T> c) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "gemm: float or double");
  if (s.m <= 0 || s.n <= 0 || s.batch <= 0) return;
  ASYPPO_CUBLAS_CHECK(cublasSetStream(handle, stream));
  ASYPPO_CUBLAS_CHECK(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST));
  const T one = 1, bt = static_cast<T>(beta);
  if constexpr (std::is_same_v<T, float>)
    ASYPPO_CUBLAS_CHECK(cublasSgemmStridedBatched_64(handle, to_cublas(a.op), to_cublas(b.op), s.m, s.n, s.k, &one,
                                                     a.data, a.ld, a.stride, b.data, b.ld, b.stride, &bt, c.data,
                                                     c.ld, c.stride, s.batch));
  else
    ASYPPO_CUBLAS_CHECK(cublasDgemmStridedBatched_64(handle, to_cublas(a.op), to_cublas(b.op), s.m, s.n, s.k, &one,
                                                     a.data, a.ld, a.stride, b.data, b.ld, b.stride, &bt, c.data,
                                                     c.ld, c.stride, s.batch));
}

}  // namespace cuda_detail

}  // namespace asyppo
