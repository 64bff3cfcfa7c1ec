// tests/support/gemm_backend.hpp: the CPU backend plus a plain reference implementation of the
// optional dense pattern (backend/dense.hpp), so that an algorithm's mapping of its products onto
// BLAS's column-major strided batched GEMM (operands, transposes, leading dimensions, batch strides,
// beta) runs and is checked without cuBLAS. Each output element is a double sum over the inner
// dimension in order, rounded once. It records the calls (to tell the GEMM path from the patterns)
// and checks BLAS's argument rules (ld >= rows), failing the test on a violation.
#pragma once

#include <catch2/catch.hpp>

#include <vector>

#include "asyppo/backend/cpu.hpp"
#include "asyppo/backend/dense.hpp"

namespace asyppo_test {

class gemm_backend : public asyppo::cpu_backend {
 public:
  using index_t = asyppo::index_t;
  explicit gemm_backend(int threads = 1) : cpu_backend(threads) {}

  template <class T>
  void gemm(asyppo::gemm_shape s, asyppo::gemm_operand<T> a, asyppo::gemm_operand<T> b, double beta,
            asyppo::gemm_output<T> c) const {
    ++*calls_;
    using asyppo::blas_op;
    // op(A) is m x k: stored k x m when transposed. op(B) is k x n: stored n x k when transposed.
    const index_t a_rows = a.op == blas_op::transpose ? s.k : s.m;
    const index_t b_rows = b.op == blas_op::transpose ? s.n : s.k;
    REQUIRE(a.ld >= std::max<index_t>(1, a_rows));
    REQUIRE(b.ld >= std::max<index_t>(1, b_rows));
    REQUIRE(c.ld >= std::max<index_t>(1, s.m));
    for (index_t i = 0; i < s.batch; ++i) {
      const T* A = a.data + i * a.stride;
      const T* B = b.data + i * b.stride;
      T* C = c.data + i * c.stride;
      for (index_t col = 0; col < s.n; ++col)
        for (index_t row = 0; row < s.m; ++row) {
          double acc = 0;
          for (index_t j = 0; j < s.k; ++j) {
            const T x = a.op == blas_op::transpose ? A[j + row * a.ld] : A[row + j * a.ld];
            const T y = b.op == blas_op::transpose ? B[col + j * b.ld] : B[j + col * b.ld];
            acc += static_cast<double>(x) * static_cast<double>(y);
          }
          T& out = C[row + col * c.ld];
          out = static_cast<T>(beta == 0 ? acc : acc + beta * static_cast<double>(out));
        }
    }
  }

  int calls() const { return *calls_; }

 private:
  std::shared_ptr<int> calls_ = std::make_shared<int>(0);
};

}  // namespace asyppo_test
