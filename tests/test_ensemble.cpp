// Tests of asyppo::ensemble_stats (E3-E4) against the plain reference in support/reference.hpp.
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

// Tolerances: the library reads T into double, accumulates in double and rounds once to T, so
// the result differs from the double reference (same widened inputs) by the final rounding only:
// 2^-24 relative for float (we allow 1e-6), a few ulps for double (we allow 1e-12).
template <class T>
double tol() {
  return sizeof(T) == 4 ? 1e-6 : 1e-12;
}

template <class T>
void run_random(int K, int B, int Tn, bool use_mask, std_kind kind, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  const auto V = ref::as<T>(ref::random_vec(rng, static_cast<std::size_t>(K) * n, -2.0, 3.0));
  ref::bytes m = use_mask ? ref::random_mask(rng, B, Tn) : ref::bytes{};
  std::vector<T> mean(n, T(7)), sd(n, T(7)), lo(n, T(7)), hi(n, T(7));
  ensemble_outputs<T> out{{mean.data(), B, Tn}, {sd.data(), B, Tn}, {lo.data(), B, Tn}, {hi.data(), B, Tn}};
  mask_view mv = use_mask ? mask_view(m.data(), B, Tn) : mask_view{};
  ensemble_stats(cpu_backend(2), critic_view<const T>(V.data(), K, B, Tn), mv, out, kind);
  const auto r = ref::ensemble(ref::widen(V), K, B, Tn, m, kind == std_kind::unbiased);
  require_close(mean, r.mean, "mean", tol<T>());
  require_close(sd, r.std, "std", tol<T>());
  require_close(lo, r.min, "min", tol<T>());
  require_close(hi, r.max, "max", tol<T>());
}

}  // namespace

TEMPLATE_TEST_CASE("ensemble_stats matches the reference on random inputs", "[ensemble]", float, double) {
  std::uint64_t seed = 11;
  for (int K : {1, 2, 3, 5, 8})
    for (bool use_mask : {false, true})
      for (auto kind : {std_kind::population, std_kind::unbiased}) {
        INFO("K=" << K << " mask=" << use_mask << " unbiased=" << (kind == std_kind::unbiased));
        run_random<TestType>(K, 7, 33, use_mask, kind, seed++);
      }
}

TEST_CASE("ensemble_stats hand-checked example (method-spec worked example)", "[ensemble]") {
  // V[0], V[1] of method-spec (b): V-bar and population sigma are given there.
  const std::vector<double> V = {0.2, 0.4, 0.5, 0.7, 0.1, 0.3, 0.2, 0.0,   // critic 0
                                 0.4, 0.4, 0.9, 0.5, 0.1, 0.5, 0.3, 0.0};  // critic 1
  const std::vector<std::uint8_t> m = {1, 1, 1, 1, 1, 1, 1, 0};
  std::vector<double> mean(8, 9), sd(8, 9), sdu(8, 9), lo(8, 9), hi(8, 9);
  ensemble_stats(cpu_backend(), critic_view<const double>(V.data(), 2, 2, 4), mask_view(m.data(), 2, 4),
                 ensemble_outputs<double>{{mean.data(), 2, 4}, {sd.data(), 2, 4}, {lo.data(), 2, 4}, {hi.data(), 2, 4}});
  ensemble_stats(cpu_backend(), critic_view<const double>(V.data(), 2, 2, 4), mask_view(m.data(), 2, 4),
                 ensemble_outputs<double>{{}, {sdu.data(), 2, 4}, {}, {}}, std_kind::unbiased);
  const double want_mean[8] = {0.3, 0.4, 0.7, 0.6, 0.1, 0.4, 0.25, 0};
  const double want_sd[8] = {0.1, 0.0, 0.2, 0.1, 0.0, 0.1, 0.05, 0};
  for (int i = 0; i < 8; ++i) {
    CHECK(mean[i] == Approx(want_mean[i]).margin(1e-15));
    CHECK(sd[i] == Approx(want_sd[i]).margin(1e-15));
    // K = 2: unbiased std = |V1 - V2| / sqrt(2) = sqrt(2) * population std.
    CHECK(sdu[i] == Approx(want_sd[i] * std::sqrt(2.0)).margin(1e-15));
    CHECK(lo[i] == (m[i] ? std::min(V[i], V[8 + i]) : 0.0));
    CHECK(hi[i] == (m[i] ? std::max(V[i], V[8 + i]) : 0.0));
  }
}

TEMPLATE_TEST_CASE("ensemble_stats with K = 1: std is 0 (unbiased too), min = max = mean = V", "[ensemble]", float,
                   double) {
  std::mt19937_64 rng(5);
  const int B = 4, Tn = 9;
  const auto V = ref::as<TestType>(ref::random_vec(rng, B * Tn, -5, 5));
  for (auto kind : {std_kind::population, std_kind::unbiased}) {
    std::vector<TestType> mean(B * Tn, 3), sd(B * Tn, 3), lo(B * Tn, 3), hi(B * Tn, 3);
    ensemble_stats(cpu_backend(), critic_view<const TestType>(V.data(), 1, B, Tn), mask_view{},
                   ensemble_outputs<TestType>{{mean.data(), B, Tn}, {sd.data(), B, Tn}, {lo.data(), B, Tn}, {hi.data(), B, Tn}},
                   kind);
    for (int i = 0; i < B * Tn; ++i) {
      REQUIRE(mean[i] == V[i]);
      REQUIRE(sd[i] == TestType(0));
      REQUIRE(!std::signbit(sd[i]));
      REQUIRE(lo[i] == V[i]);
      REQUIRE(hi[i] == V[i]);
    }
  }
}

TEST_CASE("ensemble_stats: the mask zeroes every output and masked values are never read", "[ensemble]") {
  const int K = 3, B = 3, Tn = 5;
  std::mt19937_64 rng(8);
  auto V = ref::random_vec(rng, K * B * Tn, -1, 1);
  std::vector<std::uint8_t> m(B * Tn, 1);
  for (int i : {0, 4, 7, 14}) {
    m[i] = 0;
    for (int k = 0; k < K; ++k) V[k * B * Tn + i] = std::nan("");  // must not leak into outputs
  }
  std::vector<double> mean(B * Tn, 5), sd(B * Tn, 5), lo(B * Tn, 5), hi(B * Tn, 5);
  ensemble_stats(cpu_backend(), critic_view<const double>(V.data(), K, B, Tn), mask_view(m.data(), B, Tn),
                 ensemble_outputs<double>{{mean.data(), B, Tn}, {sd.data(), B, Tn}, {lo.data(), B, Tn}, {hi.data(), B, Tn}});
  const auto r = ref::ensemble(V, K, B, Tn, m, false);
  for (int i = 0; i < B * Tn; ++i) {
    if (!m[i]) {
      REQUIRE(mean[i] == 0.0);
      REQUIRE(sd[i] == 0.0);
      REQUIRE(lo[i] == 0.0);
      REQUIRE(hi[i] == 0.0);
    } else {
      REQUIRE(mean[i] == Approx(r.mean[i]).epsilon(1e-14));
      REQUIRE(sd[i] == Approx(r.std[i]).epsilon(1e-12).margin(1e-15));
    }
  }
}

TEST_CASE("ensemble_stats: optional outputs may be skipped individually", "[ensemble]") {
  const int K = 2, B = 2, Tn = 3;
  const std::vector<double> V = {1, 2, 3, 4, 5, 6, 3, 2, 1, 0, -1, -2};
  std::vector<double> sd(B * Tn, -1);
  ensemble_stats(cpu_backend(), critic_view<const double>(V.data(), K, B, Tn), mask_view{},
                 ensemble_outputs<double>{{}, {sd.data(), B, Tn}, {}, {}});
  for (int i = 0; i < B * Tn; ++i) REQUIRE(sd[i] == Approx(std::abs(V[i] - V[6 + i]) / 2).margin(1e-15));
}

TEMPLATE_TEST_CASE("ensemble_stats on strided (transposed, sliced) input and output views", "[ensemble]", float,
                   double) {
  // Storage [T, K, B+pad] (time-major, critics in the middle, padded batch): values(k, b, t) lives at
  // t * (K * P) + k * P + b. Outputs written transposed into [T, B] storage, with a column stride of 2.
  const int K = 3, B = 5, Tn = 7, P = B + 2;
  std::mt19937_64 rng(77);
  const auto storage = ref::as<TestType>(ref::random_vec(rng, static_cast<std::size_t>(Tn) * K * P, -3, 3));
  const auto cv = critic_view<const TestType>::strided(storage.data(), {K, B, Tn}, {P, 1, K * P});
  ref::vec packed(static_cast<std::size_t>(K) * B * Tn);
  for (int k = 0; k < K; ++k)
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < Tn; ++t) packed[(static_cast<std::size_t>(k) * B + b) * Tn + t] = storage[t * K * P + k * P + b];
  std::vector<std::uint8_t> mstore(static_cast<std::size_t>(Tn) * B, 1);  // [T, B]
  mstore[3] = mstore[12] = mstore[30] = 0;
  const auto mv = mask_view::strided(mstore.data(), {B, Tn}, {1, B});
  ref::bytes m(static_cast<std::size_t>(B) * Tn);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t) m[static_cast<std::size_t>(b) * Tn + t] = mstore[t * B + b];

  std::vector<TestType> mean_s(static_cast<std::size_t>(Tn) * B * 2, TestType(42)), sd_s(mean_s);
  const auto mean_v = token_view<TestType>::strided(mean_s.data(), {B, Tn}, {2, 2 * B});
  const auto sd_v = token_view<TestType>::strided(sd_s.data(), {B, Tn}, {2, 2 * B});
  ensemble_stats(cpu_backend(3), cv, mv, ensemble_outputs<TestType>{mean_v, sd_v, {}, {}});
  const auto r = ref::ensemble(packed, K, B, Tn, m, false);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t) {
      const std::size_t i = static_cast<std::size_t>(b) * Tn + t;
      REQUIRE(static_cast<double>(mean_v(b, t)) == Approx(r.mean[i]).epsilon(tol<TestType>()).margin(tol<TestType>()));
      REQUIRE(static_cast<double>(sd_v(b, t)) == Approx(r.std[i]).epsilon(tol<TestType>()).margin(tol<TestType>()));
    }
  // The gaps between output columns were not written.
  for (std::size_t i = 1; i < mean_s.size(); i += 2) {
    REQUIRE(mean_s[i] == TestType(42));
    REQUIRE(sd_s[i] == TestType(42));
  }
}

TEST_CASE("ensemble_stats: nearly equal critics far from 0 give an accurate std (two-pass)", "[ensemble]") {
  // Values 1e8 + {0, 1e-7 * j}: a one-pass E[x^2] - E[x]^2 would lose everything.
  const int K = 4, B = 1, Tn = 1;
  std::vector<double> V = {1e8, 1e8 + 0.125, 1e8 + 0.25, 1e8 + 0.375};  // exactly representable
  double sd = -1;
  ensemble_stats(cpu_backend(), critic_view<const double>(V.data(), K, B, Tn), mask_view{},
                 ensemble_outputs<double>{{}, {&sd, 1, 1}, {}, {}});
  // deviations +-0.1875, +-0.0625: var = (2*0.03515625 + 2*0.00390625)/4 = 0.01953125
  REQUIRE(sd == Approx(std::sqrt(0.01953125)).epsilon(1e-12));
}

TEST_CASE("ensemble_stats: empty batch is valid", "[ensemble]") {
  std::vector<double> V;
  ensemble_stats(cpu_backend(), critic_view<const double>(V.data(), 2, 0, 5), mask_view{},
                 ensemble_outputs<double>{{nullptr, 0, 5}, {}, {}, {}});
  ensemble_stats(cpu_backend(), critic_view<const double>(V.data(), 2, 3, 0), mask_view{},
                 ensemble_outputs<double>{{}, {}, {}, {}});
  SUCCEED();
}
