// asyppo/backend/dense.hpp: the optional dense pattern (a BLAS GEMM) and its vocabulary.
//
// A backend may offer, besides the patterns of backend/patterns.hpp,
//   gemm(shape, a, b, beta, c)
// the strided batched matrix product of BLAS, in BLAS's column-major terms:
//   C_i = op_a(A_i) op_b(B_i) + beta C_i        for i = 0 .. shape.batch - 1,
// with op(X) = X or X^T, op_a(A_i) an m x k matrix, op_b(B_i) k x n, C_i m x n, X_i = X + i * stride,
// and element (r, c) of a stored (column-major) matrix at data[r + c * ld]. beta = 0 means C is
// not read (NaN in C does not propagate), as in BLAS. Leading dimensions satisfy BLAS's rules
// (ld >= max(1, rows of the stored matrix)); strides may be 0 (the same matrix for every i).
// The CUDA backend implements it with cuBLAS (backend/cuda/cublas.cuh). An algorithm that finds it
// (detail::has_gemm) maps its products onto it; every other backend (the CPU backend included)
// runs the algorithm's own pattern-based path, which is the readable reference for the mapping
// (core/critic_heads.hpp). Accumulation order inside a GEMM is the BLAS library's: results agree
// with the pattern path to rounding, not bit for bit.
#pragma once

#include "asyppo/config.hpp"

namespace asyppo {

enum class blas_op { none, transpose };

/// One operand of gemm: a batch of column-major matrices.
template <class T>
struct gemm_operand {
  const T* data = nullptr;
  index_t ld = 1;            ///< leading dimension (elements between columns)
  index_t stride = 0;        ///< elements between the matrices of consecutive batch entries
  blas_op op = blas_op::none;
};

/// The output of gemm.
template <class T>
struct gemm_output {
  T* data = nullptr;
  index_t ld = 1;
  index_t stride = 0;
};

/// m x n outputs, inner dimension k, batch entries.
struct gemm_shape {
  index_t m = 0, n = 0, k = 0, batch = 1;
};

namespace detail {

/// Whether Backend offers the dense pattern for element type T.
template <class Backend, class T>
inline constexpr bool has_gemm = requires(const Backend& be, gemm_operand<T> a, gemm_output<T> c) {
  be.gemm(gemm_shape{}, a, a, 0.0, c);
};

}  // namespace detail

}  // namespace asyppo
