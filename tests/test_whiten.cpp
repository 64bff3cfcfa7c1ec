// Tests of asyppo::masked_whiten and compute_masked_moments (peer-semantics 2.6).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "check.hpp"
#include "reference.hpp"

using namespace asyppo;

namespace {

// Tolerances: the library uses two-pass double moments and rounds the output once to T; the
// reference uses long double. Whitened values are O(1..10), so for double 1e-12 relative to
// max(1, |ref|) covers the double summation error over <= 1e5 terms; float adds the final
// rounding (6e-8): 1e-6.
template <class T>
double tol() {
  return sizeof(T) == 4 ? 1e-6 : 1e-12;
}

template <class T>
masked_moments run(const std::vector<T>& x, const ref::bytes& m, int B, int Tn, std::vector<T>& out,
                   const whiten_options& o, int threads = 1) {
  out.assign(x.size(), T(-77));
  return masked_whiten(cpu_backend(threads), token_view<const T>(x.data(), B, Tn), mask_view(m.data(), B, Tn),
                       token_view<T>(out.data(), B, Tn), o);
}

}  // namespace

TEMPLATE_TEST_CASE("masked_whiten vs reference: biased/unbiased, eps add/floor, shift_mean, raw", "[whiten]", float,
                   double) {
  std::uint64_t seed = 1;
  for (auto shape : {std::pair{1, 1}, std::pair{3, 17}, std::pair{40, 130}, std::pair{9, 2000}}) {
    const int B = shape.first, Tn = shape.second;
    std::mt19937_64 rng(seed++);
    const auto x = ref::as<TestType>(ref::random_vec(rng, static_cast<std::size_t>(B) * Tn, -3, 5));
    const auto m = ref::random_mask(rng, B, Tn);
    for (bool unbiased : {true, false})
      for (bool floor_mode : {false, true})
        for (bool shift : {true, false})
          for (bool raw : {false, true})
            for (double eps : {1e-8, 0.0, 0.5}) {
              whiten_options o;
              o.unbiased = unbiased;
              o.eps_placement = floor_mode ? eps_mode::floor : eps_mode::add;
              o.shift_mean = shift;
              o.padding = raw ? padding_mode::raw : padding_mode::zero;
              o.eps = eps;
              std::vector<TestType> out;
              const auto mo = run(x, m, B, Tn, out, o, 1 + static_cast<int>(seed % 3));
              const auto w = ref::whiten(ref::widen(x), m, unbiased, eps, floor_mode, shift, raw);
              INFO("B=" << B << " T=" << Tn << " unbiased=" << unbiased << " floor=" << floor_mode << " shift=" << shift
                        << " raw=" << raw << " eps=" << eps);
              REQUIRE(mo.count == w.count);
              REQUIRE(mo.mean == Approx(w.mean).epsilon(1e-12).margin(1e-14));
              REQUIRE(mo.var == Approx(w.var).epsilon(1e-12).margin(1e-14));
              require_close(out, w.out, "out", tol<TestType>());
            }
  }
}

TEST_CASE("masked_whiten invariants with eps = 0: mean 0, unit variance, padding 0", "[whiten]") {
  std::mt19937_64 rng(12);
  const int B = 31, Tn = 77;
  const auto x = ref::random_vec(rng, B * Tn, -10, 3);
  const auto m = ref::random_mask(rng, B, Tn);
  for (bool unbiased : {true, false}) {
    whiten_options o;
    o.eps = 0;
    o.unbiased = unbiased;
    std::vector<double> out;
    run(x, m, B, Tn, out, o);
    double n = 0, s = 0, q = 0;
    for (int i = 0; i < B * Tn; ++i) {
      if (!m[i]) {
        REQUIRE(out[i] == 0.0);
        continue;
      }
      n += 1;
      s += out[i];
    }
    for (int i = 0; i < B * Tn; ++i)
      if (m[i]) q += (out[i] - s / n) * (out[i] - s / n);
    CHECK(std::abs(s / n) < 1e-13);
    CHECK(q / (unbiased ? n - 1 : n) == Approx(1.0).epsilon(1e-12));
  }
}

TEST_CASE("masked_whiten raw mode writes the formula at padding (verl), zero mode writes 0", "[whiten]") {
  // x = [1, 2, 3, 100 (masked)], unbiased: mean 2, var 1, eps 0: valid -> -1, 0, 1; raw pad -> 98.
  const std::vector<double> x = {1, 2, 3, 100};
  const ref::bytes m = {1, 1, 1, 0};
  whiten_options o;
  o.eps = 0;
  std::vector<double> out;
  run(x, m, 1, 4, out, o);
  CHECK(out == std::vector<double>{-1, 0, 1, 0});
  o.padding = padding_mode::raw;
  run(x, m, 1, 4, out, o);
  CHECK(out == std::vector<double>{-1, 0, 1, 98});
  o.shift_mean = false;  // mean added back
  run(x, m, 1, 4, out, o);
  CHECK(out == std::vector<double>{1, 2, 3, 100});
  // OpenRLHF: biased variance with eps as a floor: var = 2/3 > 1e-8.
  o = whiten_options{};
  o.unbiased = false;
  o.eps_placement = eps_mode::floor;
  run(x, m, 1, 4, out, o);
  CHECK(out[0] == Approx(-1 / std::sqrt(2.0 / 3)).epsilon(1e-15));
  CHECK(out[2] == Approx(1 / std::sqrt(2.0 / 3)).epsilon(1e-15));
  CHECK(out[3] == 0.0);
}

TEST_CASE("masked_whiten eps add vs floor differ as documented", "[whiten]") {
  // Values {0, 0.2}: biased var = 0.01. eps = 0.04: add -> 1/sqrt(0.05), floor -> 1/sqrt(0.04).
  const std::vector<double> x = {0, 0.2};
  const ref::bytes m = {1, 1};
  whiten_options o;
  o.unbiased = false;
  o.eps = 0.04;
  std::vector<double> out;
  run(x, m, 1, 2, out, o);
  CHECK(out[1] == Approx(0.1 / std::sqrt(0.05)).epsilon(1e-14));
  o.eps_placement = eps_mode::floor;
  run(x, m, 1, 2, out, o);
  CHECK(out[1] == Approx(0.1 / std::sqrt(0.04)).epsilon(1e-14));
  o.eps = 0.001;  // below var: the floor is inactive
  run(x, m, 1, 2, out, o);
  CHECK(out[1] == Approx(1.0).epsilon(1e-14));
}

TEST_CASE("masked_whiten N = 0 and N = 1", "[whiten]") {
  const std::vector<double> x = {4, 5, 6};
  std::vector<double> out;
  // N = 0: zeros; raw: x unchanged.
  const ref::bytes none = {0, 0, 0};
  auto mo = run(x, none, 1, 3, out, whiten_options{});
  CHECK(mo.count == 0);
  CHECK(out == std::vector<double>{0, 0, 0});
  whiten_options raw;
  raw.padding = padding_mode::raw;
  run(x, none, 1, 3, out, raw);
  CHECK(out == x);
  // N = 1: unbiased variance defined as 0; the single value maps to exactly 0 (eps > 0 or eps = 0).
  const ref::bytes one = {0, 1, 0};
  for (double eps : {1e-8, 0.0})
    for (bool unbiased : {true, false}) {
      whiten_options o;
      o.eps = eps;
      o.unbiased = unbiased;
      mo = run(x, one, 1, 3, out, o);
      CHECK(mo.count == 1);
      CHECK(mo.mean == 5.0);
      CHECK(mo.var == 0.0);
      CHECK(out == std::vector<double>{0, 0, 0});
      o.shift_mean = false;
      run(x, one, 1, 3, out, o);
      CHECK(out == std::vector<double>{0, 5, 0});
    }
  // Empty tensors.
  std::vector<double> e;
  masked_whiten(cpu_backend(), token_view<const double>(e.data(), 0, 4), mask_view(nullptr, 0, 4),
                token_view<double>(e.data(), 0, 4));
  masked_whiten(cpu_backend(), token_view<const double>(e.data(), 4, 0), mask_view(nullptr, 4, 0),
                token_view<double>(e.data(), 4, 0));
}

TEMPLATE_TEST_CASE("masked_whiten: identical values like 0.35 give exactly 0 (no single-pass residue)", "[whiten]",
                   float, double) {
  // The mean of N copies of 0.35 computed as (sum)/N is not always 0.35 exactly (e.g. N = 3 in double);
  // a correct two-pass whitening must still give variance 0 and output exactly 0 at every valid token.
  for (int N : {2, 3, 6, 7, 10, 15, 100, 1001, 20000})
    for (double v : {0.35, 0.4, 0.1, 1.0 / 3.0}) {
      const std::vector<TestType> x(static_cast<std::size_t>(N), static_cast<TestType>(v));
      const ref::bytes m(static_cast<std::size_t>(N), 1);
      for (double eps : {1e-8, 0.0}) {
        whiten_options o;
        o.eps = eps;
        std::vector<TestType> out;
        const auto mo = run(x, m, 1, N, out, o, 2);
        INFO("N=" << N << " v=" << v << " eps=" << eps);
        CHECK(mo.var == 0.0);
        CHECK(mo.mean == static_cast<double>(static_cast<TestType>(v)));
        bool all_zero = true;
        for (auto y : out) all_zero = all_zero && y == TestType(0);
        CHECK(all_zero);
      }
    }
}

TEST_CASE("masked_whiten in place (out == x)", "[whiten]") {
  std::mt19937_64 rng(4);
  const int B = 12, Tn = 50;
  const auto x0 = ref::random_vec(rng, B * Tn, -1, 2);
  const auto m = ref::random_mask(rng, B, Tn);
  for (bool raw : {false, true}) {
    whiten_options o;
    o.padding = raw ? padding_mode::raw : padding_mode::zero;
    auto x = x0;
    masked_whiten(cpu_backend(2), token_view<const double>(x.data(), B, Tn), mask_view(m.data(), B, Tn),
                  token_view<double>(x.data(), B, Tn), o);
    require_close(x, ref::whiten(x0, m, true, 1e-8, false, true, raw).out, "in place", tol<double>());
  }
}

TEST_CASE("masked_whiten: large offset data (1e6 + small noise) is accurate", "[whiten]") {
  std::mt19937_64 rng(8);
  const int B = 50, Tn = 400;
  std::normal_distribution<double> noise(0, 1e-3);
  std::vector<double> x(static_cast<std::size_t>(B) * Tn);
  for (auto& v : x) v = 1e6 + noise(rng);
  const auto m = ref::random_mask(rng, B, Tn);
  std::vector<double> out;
  whiten_options o;
  o.eps = 0;
  run(x, m, B, Tn, out, o, 3);
  const auto w = ref::whiten(x, m, true, 0, false, true, false);
  // x carries ~1e-10 absolute rounding (ulp of 1e6), i.e. 1e-7 of the noise scale; the
  // whitening itself must not add more than that (a one-pass variance would be off by O(1)).
  for (std::size_t i = 0; i < x.size(); ++i) REQUIRE(std::abs(out[i] - w.out[i]) <= 1e-6 * std::max(1.0, std::abs(w.out[i])));
  // float with offset 1e4 and noise of 1: the double accumulation keeps full float accuracy.
  std::vector<float> xf(x.size());
  std::normal_distribution<double> n1(0, 1);
  for (auto& v : xf) v = static_cast<float>(1e4 + n1(rng));
  std::vector<float> outf;
  run(xf, m, B, Tn, outf, o, 1);
  const auto wf = ref::whiten(ref::widen(xf), m, true, 0, false, true, false);
  for (std::size_t i = 0; i < xf.size(); ++i) REQUIRE(std::abs(outf[i] - wf.out[i]) <= 1e-6 * std::max(1.0, std::abs(wf.out[i])));
}

TEST_CASE("masked_whiten: strided views and bit-identical results across thread counts", "[whiten]") {
  std::mt19937_64 rng(21);
  const int B = 40, Tn = 900;  // 36000 elements: more than two reduce tiles
  const auto xs = ref::random_vec(rng, static_cast<std::size_t>(B) * Tn, -1, 1);  // stored [T,B]
  const auto mrow = ref::random_mask(rng, B, Tn);
  ref::bytes ms(mrow.size());
  ref::vec x(xs.size());
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t) {
      ms[static_cast<std::size_t>(t) * B + b] = mrow[static_cast<std::size_t>(b) * Tn + t];
      x[static_cast<std::size_t>(b) * Tn + t] = xs[static_cast<std::size_t>(t) * B + b];
    }
  const auto w = ref::whiten(x, mrow, true, 1e-8, false, true, false);
  std::vector<double> first;
  for (int threads = 1; threads <= 4; ++threads) {
    std::vector<double> out(xs.size(), 5);
    masked_whiten(cpu_backend(threads), token_view<const double>::strided(xs.data(), {B, Tn}, {1, B}),
                  mask_view::strided(ms.data(), {B, Tn}, {1, B}), token_view<double>::strided(out.data(), {B, Tn}, {1, B}));
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < Tn; ++t)
        REQUIRE(out[static_cast<std::size_t>(t) * B + b] ==
                Approx(w.out[static_cast<std::size_t>(b) * Tn + t]).epsilon(1e-12).margin(1e-12));
    if (threads == 1) first = out;
    else REQUIRE(out == first);
  }
}
