// asyppo/interop/eigen.hpp: views over Eigen objects and Eigen maps over views are zero-copy and
// address the same elements (row- and column-major, blocks, maps with strides), and an algorithm
// writing through a view of an Eigen matrix fills that matrix.
#include <catch2/catch.hpp>

#include <Eigen/Core>

#include <cstdint>

#include "asyppo/asyppo.hpp"
#include "asyppo/interop/eigen.hpp"

using namespace asyppo;

TEST_CASE("as_view over Eigen matrices, blocks and maps", "[eigen]") {
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> R(4, 6);
  Eigen::MatrixXd C(4, 6);  // column-major
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 6; ++j) R(i, j) = C(i, j) = 10 * i + j;
  const auto vr = as_view(R);
  const auto vc = as_view(C);
  auto blk = C.block(1, 2, 2, 3);
  const auto vb = as_view(blk);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 6; ++j) {
      CHECK(&vr(i, j) == &R(i, j));
      CHECK(&vc(i, j) == &C(i, j));
    }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) CHECK(&vb(i, j) == &C(1 + i, 2 + j));
  vb(1, 2) = -1;  // writable: the block of a non-const matrix
  CHECK(C(2, 4) == -1);
  const Eigen::MatrixXd& cc = C;
  const view<const double, 2> vcc = as_view(cc);
  CHECK(vcc(3, 5) == C(3, 5));
  // Back to Eigen: a map over a strided view (every other column of R).
  const view<double, 2> every_other = view<double, 2>::strided(R.data(), {4, 3}, {6, 2});
  auto M = as_eigen(every_other);
  CHECK(M.rows() == 4);
  CHECK(M.cols() == 3);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) CHECK(&M(i, j) == &R(i, 2 * j));
  const auto v = as_seq_view(C.col(1));
  for (int i = 0; i < 4; ++i) CHECK(&v(i) == &C(i, 1));
}

TEST_CASE("algorithms read and write Eigen matrices through the views", "[eigen]") {
  // GAE over a column-major Eigen matrix (a transposed layout for the library): K = 1.
  const int B = 3, T = 5;
  Eigen::MatrixXf V = Eigen::MatrixXf::Constant(B, T, 0.5f), r = Eigen::MatrixXf::Zero(B, T);
  Eigen::MatrixXf adv(B, T), ret(B, T);
  Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic> m = Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic>::Ones(B, T);
  for (int b = 0; b < B; ++b) r(b, T - 1) = static_cast<float>(b);
  const auto v2 = as_view(std::as_const(V));
  const critic_view<const float> values = critic_view<const float>::strided(v2.data, {1, B, T}, {0, v2.stride[0], v2.stride[1]});
  gae_options o;  // gamma = lambda = 1: A_t = sum of future rewards - V_t
  gae(cpu_backend{}, values, as_view(std::as_const(r)), as_view(std::as_const(m)), o, gae_outputs<float>{as_view(adv), as_view(ret)});
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      CHECK(adv(b, t) == Approx(static_cast<float>(b) - 0.5f));
      CHECK(ret(b, t) == Approx(static_cast<float>(b)));
    }
}
