// Tests of asyppo::uncertainty_masks (E10, E11, D2-D4) and uncertainty_masks_to (S4) against a
// full-sort reference. Masks and counts are exact, so every comparison here is ==. Tie rule (header):
// one total order by (sigma, flat index); I^A = 0 on its first floor(kN) tokens, I^H = 0 on its last
// floor(hN).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "reference.hpp"
#include "round_trip_backend.hpp"

using namespace asyppo;

namespace {

struct mask_run {
  ref::bytes adv, ent;
  mask_counts counts;
};

// Masks filled with 77 (untouched entries show) and the options of one call.
mask_run blank_run(int B, int Tn) {
  mask_run r;
  r.adv.assign(static_cast<std::size_t>(B) * Tn, 77);
  r.ent.assign(static_cast<std::size_t>(B) * Tn, 77);
  return r;
}
mask_options options(double k, double h, mask_scope scope) {
  mask_options o;
  o.adv_fraction = k;
  o.entropy_fraction = h;
  o.scope = scope;
  return o;
}

template <class T>
mask_run run(const std::vector<T>& sigma, const ref::bytes& m, int B, int Tn, double k, double h, mask_scope scope,
             int threads = 1) {
  mask_run r = blank_run(B, Tn);
  const mask_options o = options(k, h, scope);
  r.counts = uncertainty_masks(cpu_backend(threads), token_view<const T>(sigma.data(), B, Tn), mask_view(m.data(), B, Tn),
                               mask_out(r.adv.data(), B, Tn), mask_out(r.ent.data(), B, Tn), o);
  return r;
}

// uncertainty_masks_to on the CPU backend posing as a device (its device paths, counted): the counts
// land in "device memory" and no call may wait for the device.
template <class T>
mask_run run_to(const std::vector<T>& sigma, const ref::bytes& m, int B, int Tn, double k, double h, mask_scope scope,
                int threads = 1, bool host_path = false) {
  mask_run r = blank_run(B, Tn);
  mask_options o = options(k, h, scope);
  o.check_finite = false;
  const token_view<const T> sv(sigma.data(), B, Tn);
  if (host_path) {  // a host-memory backend takes uncertainty_masks' path
    uncertainty_masks_to(cpu_backend(threads), sv, mask_view(m.data(), B, Tn), mask_out(r.adv.data(), B, Tn),
                         mask_out(r.ent.data(), B, Tn), &r.counts, o);
    return r;
  }
  const asyppo_test::round_trip_backend be(threads);
  uncertainty_masks_to(be, sv, mask_view(m.data(), B, Tn), mask_out(r.adv.data(), B, Tn), mask_out(r.ent.data(), B, Tn),
                       &r.counts, o);
  REQUIRE(be.round_trips() == 0);
  return r;
}

bool same_double(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

// First index where two masks differ (or -1), for readable failures.
long first_diff(const ref::bytes& a, const ref::bytes& b) {
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return static_cast<long>(i);
  return -1;
}

template <class T>
void check(const std::vector<T>& sigma, const ref::bytes& m, int B, int Tn, double k, double h, mask_scope scope,
           int threads = 1) {
  const auto got = run(sigma, m, B, Tn, k, h, scope, threads);
  const auto want = ref::masks(ref::widen(sigma), m, B, Tn, k, h, scope == mask_scope::sequence);
  INFO("B=" << B << " T=" << Tn << " k=" << k << " h=" << h << " per_row=" << (scope == mask_scope::sequence)
            << " threads=" << threads);
  REQUIRE(got.counts.valid == want.valid);
  REQUIRE(got.counts.adv_masked == want.adv_masked);
  REQUIRE(got.counts.entropy_masked == want.ent_masked);
  INFO("first adv diff " << first_diff(got.adv, want.adv) << ", first entropy diff " << first_diff(got.ent, want.ent));
  REQUIRE(got.adv == want.adv);
  REQUIRE(got.ent == want.ent);
  // Exact counts of zeros among valid tokens; invalid tokens are 0 in both masks.
  std::int64_t za = 0, ze = 0;
  for (std::size_t i = 0; i < m.size(); ++i) {
    if (!m[i]) continue;
    za += got.adv[i] == 0;
    ze += got.ent[i] == 0;
  }
  REQUIRE(za == want.adv_masked);
  REQUIRE(ze == want.ent_masked);
  // uncertainty_masks_to, its resident selection (a device backend) and its host path: the same masks,
  // counts and thresholds.
  for (bool host_path : {false, true}) {
    const auto dev = run_to(sigma, m, B, Tn, k, h, scope, threads, host_path);
    REQUIRE(dev.adv == got.adv);
    REQUIRE(dev.ent == got.ent);
    REQUIRE(dev.counts.valid == got.counts.valid);
    REQUIRE(dev.counts.adv_masked == got.counts.adv_masked);
    REQUIRE(dev.counts.entropy_masked == got.counts.entropy_masked);
    REQUIRE(same_double(dev.counts.adv_threshold, got.counts.adv_threshold));
    REQUIRE(same_double(dev.counts.entropy_threshold, got.counts.entropy_threshold));
  }
  if (scope == mask_scope::batch) {
    // Thresholds: largest masked sigma / smallest filtered sigma (NaN when nothing is masked).
    double amax = -std::numeric_limits<double>::infinity(), emin = std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < m.size(); ++i) {
      if (m[i] && !want.adv[i]) amax = std::max(amax, static_cast<double>(sigma[i]));
      if (m[i] && !want.ent[i]) emin = std::min(emin, static_cast<double>(sigma[i]));
    }
    if (want.adv_masked > 0) REQUIRE(got.counts.adv_threshold == amax);
    else REQUIRE(std::isnan(got.counts.adv_threshold));
    if (want.ent_masked > 0) REQUIRE(got.counts.entropy_threshold == emin);
    else REQUIRE(std::isnan(got.counts.entropy_threshold));
  }
}

template <class T>
std::vector<T> tied_sigma(std::mt19937_64& rng, std::size_t n, int distinct) {
  std::uniform_int_distribution<int> d(0, distinct - 1);
  std::vector<T> s(n);
  for (auto& x : s) x = static_cast<T>(0.05 * d(rng));
  return s;
}

}  // namespace

TEST_CASE("masks: method-spec worked example and hand-checked ties", "[masks]") {
  // sigma of method-spec (b); (1,3) is padding.
  const std::vector<double> s = {0.1, 0.0, 0.2, 0.1, 0.0, 0.1, 0.05, 0.0};
  const ref::bytes m = {1, 1, 1, 1, 1, 1, 1, 0};
  auto r = run(s, m, 2, 4, 0.2, 0.2, mask_scope::batch);
  CHECK(r.adv == ref::bytes{1, 0, 1, 1, 1, 1, 1, 0});
  CHECK(r.ent == ref::bytes{1, 1, 0, 1, 1, 1, 1, 0});
  CHECK(r.counts.adv_threshold == 0.0);
  CHECK(r.counts.entropy_threshold == 0.2);
  // k = h = 0.5: n_k = n_h = 3. Total order (sigma, flat): (0,1)=0 (1,0)=0 (1,2)=.05 (0,0)=.1 (0,3)=.1
  // (1,1)=.1 (0,2)=.2. First 3 -> I^A = 0; last 3 -> (1,1), (0,3), (0,2) get I^H = 0 (the .1 tie is
  // split: the entropy filter takes the larger flat indices, so the sets do not overlap).
  r = run(s, m, 2, 4, 0.5, 0.5, mask_scope::batch);
  CHECK(r.adv == ref::bytes{1, 0, 1, 1, 0, 1, 0, 0});
  CHECK(r.ent == ref::bytes{1, 1, 0, 0, 1, 0, 1, 0});
  // All sigma tied (K = 1): I^A takes the smallest flat indices, I^H the largest.
  const std::vector<double> z(8, 0.0);
  const ref::bytes m2 = {0, 1, 1, 1, 1, 0, 1, 1};  // N = 6
  r = run(z, m2, 2, 4, 0.5, 0.34, mask_scope::batch);  // n_k = 3, n_h = floor(2.04) = 2
  CHECK(r.adv == ref::bytes{0, 0, 0, 0, 1, 0, 1, 1});
  CHECK(r.ent == ref::bytes{0, 1, 1, 1, 1, 0, 0, 0});
  // Per sequence: row 0 has 3 valid (n_k = 1, n_h = 1), row 1 has 3 valid.
  r = run(z, m2, 2, 4, 0.5, 0.34, mask_scope::sequence);
  CHECK(r.adv == ref::bytes{0, 0, 1, 1, 0, 0, 1, 1});
  CHECK(r.ent == ref::bytes{0, 1, 1, 0, 1, 0, 1, 0});
  CHECK(r.counts.valid == 6);
  CHECK(r.counts.adv_masked == 2);
  CHECK(r.counts.entropy_masked == 2);
}

TEST_CASE("masks: k = 0 and h = 0 mask nothing (no max(1, .) quirk)", "[masks]") {
  std::mt19937_64 rng(1);
  const int B = 5, Tn = 30;
  const auto s = ref::random_vec(rng, B * Tn, 0, 1);
  const auto m = ref::random_mask(rng, B, Tn);
  for (auto scope : {mask_scope::batch, mask_scope::sequence}) {
    const auto r = run(s, m, B, Tn, 0.0, 0.0, scope);
    CHECK(r.adv == m);
    CHECK(r.ent == m);
    CHECK(r.counts.adv_masked == 0);
    CHECK(r.counts.entropy_masked == 0);
    check(s, m, B, Tn, 0.0, 0.3, scope);
    check(s, m, B, Tn, 0.3, 0.0, scope);
  }
  // Fewer than 1/k valid tokens: floor(k N) = 0 masks nothing.
  const std::vector<double> s3 = {0.3, 0.1, 0.2};
  const auto r = run(s3, ref::bytes{1, 1, 1}, 1, 3, 0.2, 0.2, mask_scope::batch);
  CHECK(r.adv == ref::bytes{1, 1, 1});
  CHECK(r.ent == ref::bytes{1, 1, 1});
}

TEMPLATE_TEST_CASE("masks vs sort-based reference: ties, per-sequence scope, fractions", "[masks]", float, double) {
  std::mt19937_64 rng(99);
  for (int iter = 0; iter < 40; ++iter) {
    const int B = std::uniform_int_distribution<int>(1, 24)(rng);
    const int Tn = std::uniform_int_distribution<int>(1, 120)(rng);
    const auto m = ref::random_mask(rng, B, Tn);
    std::vector<TestType> s;
    if (iter % 4 == 0) s.assign(static_cast<std::size_t>(B) * Tn, TestType(0));  // K = 1: all zero
    else if (iter % 4 == 1) s = tied_sigma<TestType>(rng, static_cast<std::size_t>(B) * Tn, 2);
    else if (iter % 4 == 2) s = tied_sigma<TestType>(rng, static_cast<std::size_t>(B) * Tn, 5);
    else s = ref::as<TestType>(ref::random_vec(rng, static_cast<std::size_t>(B) * Tn, 0, 2));
    for (auto kh : {std::pair{0.2, 0.2}, std::pair{0.1, 0.3}, std::pair{0.5, 0.5}, std::pair{0.7, 0.6},
                    std::pair{0.999, 0.05}, std::pair{0.0, 0.9}})
      for (auto scope : {mask_scope::batch, mask_scope::sequence}) check(s, m, B, Tn, kh.first, kh.second, scope, 1 + iter % 3);
  }
}

TEMPLATE_TEST_CASE("masks: negative zero and zero are ties broken by flat index", "[masks]", float, double) {
  // sigma = -0 at even flat indices and +0 at odd ones, plus larger values. -0 == +0, so among
  // the zeros the smaller flat index is taken first, whatever the sign bit.
  const int B = 2, Tn = 6;
  std::vector<TestType> s(B * Tn);
  for (int i = 0; i < B * Tn; ++i) s[i] = i % 3 == 2 ? TestType(0.5) : (i % 2 ? TestType(0) : -TestType(0));
  const ref::bytes m(B * Tn, 1);
  // Zeros sit at flat indices 0,1,3,4,6,7,9,10 (signs alternating).
  const auto r = run(s, m, B, Tn, 0.25, 0.0, mask_scope::batch);  // n_k = 3
  CHECK(r.adv == ref::bytes{0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1});
  for (auto scope : {mask_scope::batch, mask_scope::sequence})
    for (double k : {0.1, 0.25, 0.4, 0.6}) check(s, m, B, Tn, k, 0.8, scope);
  // Only -0 and +0, in the opposite order (+0 first): the total order is flat order.
  std::vector<TestType> s2 = {TestType(0), -TestType(0), TestType(0), -TestType(0)};
  const auto r2 = run(s2, ref::bytes{1, 1, 1, 1}, 1, 4, 0.5, 0.5, mask_scope::batch);
  CHECK(r2.adv == ref::bytes{0, 0, 1, 1});
  CHECK(r2.ent == ref::bytes{1, 1, 0, 0});
}

TEMPLATE_TEST_CASE("masks: large random batches, bit-identical across thread counts", "[masks]", float, double) {
  std::mt19937_64 rng(2025);
  const int B = 64, Tn = 1024;
  const auto m = ref::random_mask(rng, B, Tn);
  for (int variant = 0; variant < 3; ++variant) {
    std::vector<TestType> s = variant == 0   ? ref::as<TestType>(ref::random_vec(rng, static_cast<std::size_t>(B) * Tn, 0, 1))
                              : variant == 1 ? tied_sigma<TestType>(rng, static_cast<std::size_t>(B) * Tn, 7)
                                             : std::vector<TestType>(static_cast<std::size_t>(B) * Tn, TestType(0.25));
    for (auto scope : {mask_scope::batch, mask_scope::sequence}) {
      check(s, m, B, Tn, 0.2, 0.2, scope, 1);
      const auto a = run(s, m, B, Tn, 0.2, 0.2, scope, 1);
      for (int threads = 2; threads <= 4; ++threads) {
        const auto b = run(s, m, B, Tn, 0.2, 0.2, scope, threads);
        REQUIRE(a.adv == b.adv);
        REQUIRE(a.ent == b.ent);
      }
    }
  }
}

TEST_CASE("masks: strided views, single outputs, invalid tokens never read", "[masks]") {
  std::mt19937_64 rng(5);
  const int B = 7, Tn = 40;
  auto s = ref::random_vec(rng, static_cast<std::size_t>(B) * Tn, 0, 1);
  const auto m = ref::random_mask(rng, B, Tn);
  // NaN sigma on invalid tokens must not matter (D2: only m = 1 tokens are ranked).
  for (std::size_t i = 0; i < s.size(); ++i)
    if (!m[i]) s[i] = std::numeric_limits<double>::quiet_NaN();
  const auto want = ref::masks(s, m, B, Tn, 0.3, 0.25, false);
  // Transposed storage for sigma, mask and outputs.
  std::vector<double> st(s.size());
  ref::bytes mt(m.size());
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t) {
      st[static_cast<std::size_t>(t) * B + b] = s[static_cast<std::size_t>(b) * Tn + t];
      mt[static_cast<std::size_t>(t) * B + b] = m[static_cast<std::size_t>(b) * Tn + t];
    }
  ref::bytes at(m.size(), 9), et(m.size(), 9);
  mask_options o;
  o.adv_fraction = 0.3;
  o.entropy_fraction = 0.25;
  uncertainty_masks(cpu_backend(2), token_view<const double>::strided(st.data(), {B, Tn}, {1, B}),
                    mask_view::strided(mt.data(), {B, Tn}, {1, B}), mask_out::strided(at.data(), {B, Tn}, {1, B}),
                    mask_out::strided(et.data(), {B, Tn}, {1, B}), o);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t) {
      REQUIRE(at[static_cast<std::size_t>(t) * B + b] == want.adv[static_cast<std::size_t>(b) * Tn + t]);
      REQUIRE(et[static_cast<std::size_t>(t) * B + b] == want.ent[static_cast<std::size_t>(b) * Tn + t]);
    }
  // Only one output requested.
  ref::bytes a_only(m.size(), 9), e_only(m.size(), 9);
  uncertainty_masks(cpu_backend(), token_view<const double>(s.data(), B, Tn), mask_view(m.data(), B, Tn),
                    mask_out(a_only.data(), B, Tn), mask_out{}, o);
  uncertainty_masks(cpu_backend(), token_view<const double>(s.data(), B, Tn), mask_view(m.data(), B, Tn), mask_out{},
                    mask_out(e_only.data(), B, Tn), o);
  CHECK(a_only == want.adv);
  CHECK(e_only == want.ent);
}

TEST_CASE("masks: empty batch and all-masked rows", "[masks]") {
  std::vector<double> none;
  auto c = uncertainty_masks(cpu_backend(), token_view<const double>(none.data(), 0, 5), mask_view(nullptr, 0, 5),
                             mask_out(nullptr, 0, 5), mask_out(nullptr, 0, 5));
  CHECK(c.valid == 0);
  const std::vector<double> s(12, 0.3);
  const ref::bytes m(12, 0);
  for (auto scope : {mask_scope::batch, mask_scope::sequence}) {
    const auto r = run(s, m, 3, 4, 0.5, 0.5, scope);
    CHECK(r.adv == m);
    CHECK(r.ent == m);
    CHECK(r.counts.valid == 0);
    CHECK(r.counts.adv_masked == 0);
  }
}

TEST_CASE("masks: with all sigma equal the two masks never overlap while floor(kN) + floor(hN) <= N", "[masks]") {
  std::mt19937_64 rng(12);
  for (int iter = 0; iter < 20; ++iter) {
    const int B = 1 + iter % 5, Tn = 3 + 7 * iter;
    const auto m = ref::random_mask(rng, B, Tn);
    const std::vector<float> s(static_cast<std::size_t>(B) * Tn, 0.f);  // K = 1
    for (auto kh : {std::pair{0.2, 0.2}, std::pair{0.5, 0.45}, std::pair{0.3, 0.6}})
      for (auto scope : {mask_scope::batch, mask_scope::sequence}) {
        const auto r = run(s, m, B, Tn, kh.first, kh.second, scope, 2);
        for (std::size_t i = 0; i < m.size(); ++i)
          if (m[i]) REQUIRE((r.adv[i] == 1 || r.ent[i] == 1));
        check(s, m, B, Tn, kh.first, kh.second, scope);
      }
  }
}
