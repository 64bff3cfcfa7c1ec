// Tests of the outcome-reward baselines (peer-semantics 2.3): GRPO, Dr.GRPO, RLOO, REINFORCE++,
// REINFORCE++-baseline and sequence_scores, against support/reference.hpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "check.hpp"
#include "reference.hpp"
#include "round_trip_backend.hpp"

using namespace asyppo;
using i64 = std::int64_t;

namespace {

// Tolerances: the library computes in double (Welford per group, two-pass whitening) and rounds
// once to T; the reference uses long-double two-pass moments on the same widened inputs. For
// double, group statistics agree to ~1e-15 relative and a division by (sd + eps) with sd >= ~1e-2
// on these inputs keeps that below 1e-12. Float adds the final rounding (6e-8): we allow 1e-6.
template <class T>
double tol() {
  return sizeof(T) == 4 ? 1e-6 : 1e-12;
}

struct batch {
  int B, Tn;
  std::vector<i64> ids;
  ref::vec scores;
  ref::bytes m;
};

// Non-contiguous groups of random sizes (including singletons), labels shuffled over the batch.
batch random_batch(std::uint64_t seed, int B, int Tn, int labels) {
  std::mt19937_64 rng(seed);
  batch x{B, Tn, {}, {}, {}};
  std::uniform_int_distribution<int> pick(0, labels - 1);
  for (int b = 0; b < B; ++b) x.ids.push_back(static_cast<i64>(pick(rng)) * 1000003 - 500);
  // Binary-ish and continuous scores mixed.
  std::uniform_real_distribution<double> u(0, 1);
  for (int b = 0; b < B; ++b) x.scores.push_back(b % 3 == 0 ? (u(rng) < 0.5 ? 0.0 : 1.0) : u(rng) * 4 - 1);
  x.m = ref::random_mask(rng, B, Tn);
  return x;
}

// call(backend, options, advantages, sequence) on the CPU backend, checked against want; then on the CPU
// backend posing as a device backend (one process: the group slots, no group count read on the host;
// checks off: no round trip at all), which must give the same bits.
template <class T, class Options, class Call>
void check_both_paths(const batch& x, Options o, const ref::vec& want, Call call) {
  std::vector<T> adv(static_cast<std::size_t>(x.B) * x.Tn, T(5)), seq(static_cast<std::size_t>(x.B), T(5));
  call(cpu_backend(2), o, adv, seq);
  require_close(seq, want, "sequence", tol<T>());
  require_close(adv, ref::broadcast(want, x.m, x.B, x.Tn), "advantages", tol<T>());
  std::vector<T> adv2(adv.size(), T(5)), seq2(seq.size(), T(5));
  o.check_finite = false;
  const asyppo_test::round_trip_backend be(3);
  call(be, o, adv2, seq2);
  CHECK(be.round_trips() == 0);
  REQUIRE(adv2 == adv);
  REQUIRE(seq2 == seq);
}

template <class T>
void check_grpo(const batch& x, const grpo_options& o) {
  const auto s = ref::as<T>(x.scores);
  const auto want = ref::outcome_sequence(ref::widen(s), x.ids, o.norm_by_std ? ref::outcome::grpo : ref::outcome::dr_grpo,
                                          o.eps, o.std == std_kind::unbiased, o.singleton == singleton_rule::zero);
  check_both_paths<T>(x, o, want, [&](const auto& be, const grpo_options& oo, std::vector<T>& adv, std::vector<T>& seq) {
    grpo_advantages(be, seq_view<const T>(s.data(), x.B), seq_view<const i64>(x.ids.data(), x.B),
                    mask_view(x.m.data(), x.B, x.Tn), outcome_outputs<T>{{adv.data(), x.B, x.Tn}, {seq.data(), x.B}}, oo);
  });
}

template <class T>
void check_rloo(const batch& x, const rloo_options& o) {
  const auto s = ref::as<T>(x.scores);
  const auto want = ref::outcome_sequence(ref::widen(s), x.ids, ref::outcome::rloo, 0, false, o.singleton == singleton_rule::zero);
  check_both_paths<T>(x, o, want, [&](const auto& be, const rloo_options& oo, std::vector<T>& adv, std::vector<T>& seq) {
    rloo_advantages(be, seq_view<const T>(s.data(), x.B), seq_view<const i64>(x.ids.data(), x.B),
                    mask_view(x.m.data(), x.B, x.Tn), outcome_outputs<T>{{adv.data(), x.B, x.Tn}, {seq.data(), x.B}}, oo);
  });
}

}  // namespace

TEST_CASE("grpo: hand-checked group and verl singleton rule", "[outcome]") {
  // Group a = {1, 0, 1} (batch 0, 2, 4), group b = {0.5} (batch 1, singleton), group c = {2, 4} (batch 3, 5).
  const std::vector<double> s = {1, 0.5, 0, 2, 1, 4};
  const std::vector<i64> ids = {7, -3, 7, 100, 7, 100};
  const std::vector<std::uint8_t> m = {1, 1, 1, 1, 1, 1};
  std::vector<double> seq(6, 9);
  grpo_options o;  // unbiased std, eps 1e-6, verl singleton
  grpo_advantages(cpu_backend(), seq_view<const double>(s.data(), 6), seq_view<const i64>(ids.data(), 6),
                  mask_view(m.data(), 6, 1), outcome_outputs<double>{{}, {seq.data(), 6}}, o);
  // a: mean 2/3, unbiased sd = sqrt(((1/3)^2*2 + (2/3)^2)/2) = sqrt(1/3)
  const double sd_a = std::sqrt(1.0 / 3.0), sd_c = std::sqrt(2.0);
  CHECK(seq[0] == Approx((1 - 2.0 / 3) / (sd_a + 1e-6)).epsilon(1e-14));
  CHECK(seq[2] == Approx((0 - 2.0 / 3) / (sd_a + 1e-6)).epsilon(1e-14));
  CHECK(seq[1] == Approx(0.5 / (1 + 1e-6)).epsilon(1e-15));  // verl: mean 0, std 1
  CHECK(seq[3] == Approx(-1 / (sd_c + 1e-6)).epsilon(1e-14));
  CHECK(seq[5] == Approx(1 / (sd_c + 1e-6)).epsilon(1e-14));
  // Dr.GRPO: mean only; the singleton gets s.
  o.norm_by_std = false;
  grpo_advantages(cpu_backend(), seq_view<const double>(s.data(), 6), seq_view<const i64>(ids.data(), 6),
                  mask_view(m.data(), 6, 1), outcome_outputs<double>{{}, {seq.data(), 6}}, o);
  CHECK(seq[0] == Approx(1.0 / 3).epsilon(1e-14));
  CHECK(seq[1] == 0.5);
  CHECK(seq[3] == Approx(-1.0).epsilon(1e-14));
  // zero rule
  o.norm_by_std = true;
  o.singleton = singleton_rule::zero;
  grpo_advantages(cpu_backend(), seq_view<const double>(s.data(), 6), seq_view<const i64>(ids.data(), 6),
                  mask_view(m.data(), 6, 1), outcome_outputs<double>{{}, {seq.data(), 6}}, o);
  CHECK(seq[1] == 0.0);
}

TEST_CASE("rloo: hand-checked leave-one-out baseline and singleton rules", "[outcome]") {
  const std::vector<double> s = {1, 0.5, 0, 2, 1, 4};
  const std::vector<i64> ids = {7, -3, 7, 100, 7, 100};
  const std::vector<std::uint8_t> m = {1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0};  // T = 2
  std::vector<double> seq(6, 9), adv(12, 9);
  rloo_advantages(cpu_backend(), seq_view<const double>(s.data(), 6), seq_view<const i64>(ids.data(), 6),
                  mask_view(m.data(), 6, 2), outcome_outputs<double>{{adv.data(), 6, 2}, {seq.data(), 6}});
  // a = {1,0,1}: 1 - (0+1)/2 = .5, 0 - (1+1)/2 = -1, .5; c = {2,4}: 2-4 = -2, 4-2 = 2; singleton 0.5 -> 0.5 (verl loop).
  const std::vector<double> want = {0.5, 0.5, -1, -2, 0.5, 2};
  for (int b = 0; b < 6; ++b) {
    CHECK(seq[b] == Approx(want[b]).epsilon(1e-14));
    for (int t = 0; t < 2; ++t) CHECK(adv[b * 2 + t] == (m[b * 2 + t] ? Approx(want[b]).epsilon(1e-14) : Approx(0.0)));
  }
  rloo_options o;
  o.singleton = singleton_rule::zero;  // verl's vectorised RLOO
  rloo_advantages(cpu_backend(), seq_view<const double>(s.data(), 6), seq_view<const i64>(ids.data(), 6),
                  mask_view(m.data(), 6, 2), outcome_outputs<double>{{adv.data(), 6, 2}, {seq.data(), 6}}, o);
  CHECK(seq[1] == 0.0);
  CHECK(adv[2] == 0.0);
  CHECK(seq[0] == Approx(0.5));
}

TEMPLATE_TEST_CASE("grpo / Dr.GRPO / rloo vs reference on random non-contiguous groups", "[outcome]", float, double) {
  std::uint64_t seed = 40;
  for (int B : {1, 2, 17, 64, 200})
    for (int labels : {1, 3, 20, 300}) {
      const auto x = random_batch(seed++, B, 9, labels);
      INFO("B=" << B << " labels=" << labels);
      for (bool norm : {true, false})
        for (auto kind : {std_kind::unbiased, std_kind::population})
          for (auto single : {singleton_rule::verl, singleton_rule::zero})
            for (double eps : {1e-6, 0.1}) {
              grpo_options o;
              o.norm_by_std = norm;
              o.std = kind;
              o.singleton = single;
              o.eps = eps;
              check_grpo<TestType>(x, o);
            }
      for (auto single : {singleton_rule::verl, singleton_rule::zero}) {
        rloo_options o;
        o.singleton = single;
        check_rloo<TestType>(x, o);
      }
    }
}

TEST_CASE("grpo: identical scores like 0.35 give exactly 0 (no single-pass residue)", "[outcome]") {
  const std::vector<double> s = {0.35, 0.35, 0.35, 0.35, 0.4, 0.4, 0.4};
  const std::vector<i64> ids = {1, 1, 1, 1, 2, 2, 2};
  const std::vector<std::uint8_t> m(7, 1);
  std::vector<double> seq(7, 9);
  grpo_advantages(cpu_backend(), seq_view<const double>(s.data(), 7), seq_view<const i64>(ids.data(), 7),
                  mask_view(m.data(), 7, 1), outcome_outputs<double>{{}, {seq.data(), 7}});
  for (double a : seq) CHECK(a == 0.0);
  std::vector<float> sf(s.begin(), s.end()), seqf(7, 9.f);
  grpo_advantages(cpu_backend(), seq_view<const float>(sf.data(), 7), seq_view<const i64>(ids.data(), 7),
                  mask_view(m.data(), 7, 1), outcome_outputs<float>{{}, {seqf.data(), 7}});
  for (float a : seqf) CHECK(a == 0.f);
}

TEST_CASE("outcome: T = 0 writes the sequence output; strided outputs", "[outcome]") {
  const std::vector<double> s = {1, 2, 3, 4};
  const std::vector<i64> ids = {0, 1, 0, 1};
  std::vector<double> seq(8, 9);
  grpo_options o;
  o.norm_by_std = false;
  grpo_advantages(cpu_backend(), seq_view<const double>(s.data(), 4), seq_view<const i64>(ids.data(), 4),
                  mask_view(nullptr, 4, 0), outcome_outputs<double>{{nullptr, 4, 0}, seq_view<double>::strided(seq.data(), {4}, {2})}, o);
  CHECK(seq == std::vector<double>{-1, 9, -1, 9, 1, 9, 1, 9});
}

TEMPLATE_TEST_CASE("reinforce++-baseline vs reference (group mean, broadcast, masked whitening)", "[outcome]", float,
                   double) {
  std::uint64_t seed = 300;
  for (int B : {1, 5, 40, 128})
    for (int labels : {1, 4, 50}) {
      const auto x = random_batch(seed++, B, 33, labels);
      const auto s = ref::as<TestType>(x.scores);
      for (auto single : {singleton_rule::verl, singleton_rule::zero})
        for (bool unbiased : {true, false}) {
          reinforce_options o;
          o.singleton = single;
          o.whiten.unbiased = unbiased;
          std::vector<TestType> adv(static_cast<std::size_t>(x.B) * x.Tn, TestType(5)), seq(static_cast<std::size_t>(x.B), TestType(5));
          reinforce_pp_baseline_advantages(cpu_backend(2), seq_view<const TestType>(s.data(), x.B),
                                           seq_view<const i64>(x.ids.data(), x.B), mask_view(x.m.data(), x.B, x.Tn),
                                           outcome_outputs<TestType>{{adv.data(), x.B, x.Tn}, {seq.data(), x.B}}, o);
          const auto a = ref::outcome_sequence(ref::widen(s), x.ids, ref::outcome::mean, 0, false, single == singleton_rule::zero);
          require_close(seq, a, "sequence (un-whitened)", tol<TestType>());
          // The library whitens the T-rounded token advantages: round the broadcast through T too.
          const auto tok = ref::widen(ref::as<TestType>(ref::broadcast(a, x.m, x.B, x.Tn)));
          const auto w = ref::whiten(tok, x.m, unbiased, 1e-8, false, true, false);
          INFO("B=" << B << " labels=" << labels);
          require_close(adv, w.out, "advantages", tol<TestType>());
          // The device path (one process: group slots, whitening through the device state): same bits,
          // no round trip with the checks off.
          std::vector<TestType> adv2(adv.size(), TestType(5)), seq2(seq.size(), TestType(5));
          o.whiten.check_finite = false;
          const asyppo_test::round_trip_backend be(2);
          reinforce_pp_baseline_advantages(be, seq_view<const TestType>(s.data(), x.B), seq_view<const i64>(x.ids.data(), x.B),
                                           mask_view(x.m.data(), x.B, x.Tn),
                                           outcome_outputs<TestType>{{adv2.data(), x.B, x.Tn}, {seq2.data(), x.B}}, o);
          CHECK(be.round_trips() == 0);
          REQUIRE(adv2 == adv);
          REQUIRE(seq2 == seq);
        }
    }
}

TEMPLATE_TEST_CASE("reinforce++ vs reference (discounted returns over valid tokens, holes, whitening)", "[outcome]",
                   float, double) {
  std::uint64_t seed = 900;
  for (double gamma : {1.0, 0.99, 0.5, 0.0})
    for (int B : {1, 8, 50}) {
      std::mt19937_64 rng(seed++);
      const int Tn = 70;
      const auto r = ref::as<TestType>(ref::random_vec(rng, static_cast<std::size_t>(B) * Tn, -1, 1));
      const auto m = ref::random_mask(rng, B, Tn);
      for (bool floor_mode : {false, true}) {
        reinforce_options o;
        o.gamma = gamma;
        o.whiten.eps_placement = floor_mode ? eps_mode::floor : eps_mode::add;
        std::vector<TestType> adv(static_cast<std::size_t>(B) * Tn, TestType(5));
        reinforce_pp_advantages(cpu_backend(3), token_view<const TestType>(r.data(), B, Tn), mask_view(m.data(), B, Tn),
                                token_view<TestType>(adv.data(), B, Tn), o);
        // The library rounds the returns to T before whitening them (in place): do the same.
        const auto G = ref::widen(ref::as<TestType>(ref::discounted_returns(ref::widen(r), m, B, Tn, gamma)));
        const auto w = ref::whiten(G, m, true, 1e-8, floor_mode, true, false);
        INFO("gamma=" << gamma << " B=" << B);
        require_close(adv, w.out, "advantages", tol<TestType>());
        std::vector<TestType> adv2(adv.size(), TestType(5));  // the device path: same bits, no round trip
        o.whiten.check_finite = false;
        const asyppo_test::round_trip_backend be(3);
        reinforce_pp_advantages(be, token_view<const TestType>(r.data(), B, Tn), mask_view(m.data(), B, Tn),
                                token_view<TestType>(adv2.data(), B, Tn), o);
        CHECK(be.round_trips() == 0);
        REQUIRE(adv2 == adv);
      }
    }
}

TEST_CASE("reinforce++: hand-checked discounted return with a hole", "[outcome]") {
  // m = [1,0,1,1,0], r = [1, 100, 2, 4, 100], gamma = 0.5: G3 = 4, G2 = 2 + .5*4 = 4, G0 = 1 + .5*4 = 3
  // (the masked token is transparent: no extra discount, its reward is dropped).
  // Whitening with eps = 0, unbiased: values {3,4,4}: mean 11/3, var = (4/9 + 1/9 + 1/9)/2 = 1/3.
  const std::vector<double> r = {1, 100, 2, 4, 100};
  const std::vector<std::uint8_t> m = {1, 0, 1, 1, 0};
  std::vector<double> adv(5, 7);
  reinforce_options o;
  o.gamma = 0.5;
  o.whiten.eps = 0;
  reinforce_pp_advantages(cpu_backend(), token_view<const double>(r.data(), 1, 5), mask_view(m.data(), 1, 5),
                          token_view<double>(adv.data(), 1, 5), o);
  const double sd = std::sqrt(1.0 / 3.0);
  CHECK(adv[0] == Approx((3 - 11.0 / 3) / sd).epsilon(1e-14));
  CHECK(adv[2] == Approx((4 - 11.0 / 3) / sd).epsilon(1e-14));
  CHECK(adv[3] == Approx((4 - 11.0 / 3) / sd).epsilon(1e-14));
  CHECK(adv[1] == 0.0);
  CHECK(adv[4] == 0.0);
}

TEMPLATE_TEST_CASE("sequence_scores sums every position of each row", "[outcome]", float, double) {
  std::mt19937_64 rng(5);
  const int B = 13, Tn = 41;
  const auto r = ref::as<TestType>(ref::random_vec(rng, B * Tn, -1, 1));
  // Strided rewards: a [B, 2T] buffer, every other column.
  std::vector<TestType> wide(static_cast<std::size_t>(B) * 2 * Tn, TestType(1000));
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t) wide[static_cast<std::size_t>(b) * 2 * Tn + 2 * t] = r[static_cast<std::size_t>(b) * Tn + t];
  std::vector<TestType> s(B, TestType(-1));
  sequence_scores(cpu_backend(2), token_view<const TestType>::strided(wide.data(), {B, Tn}, {2 * Tn, 2}),
                  seq_view<TestType>(s.data(), B));
  for (int b = 0; b < B; ++b) {
    double want = 0;
    for (int t = 0; t < Tn; ++t) want += static_cast<double>(r[static_cast<std::size_t>(b) * Tn + t]);
    CHECK(static_cast<double>(s[static_cast<std::size_t>(b)]) == Approx(want).margin(sizeof(TestType) == 4 ? 1e-5 : 1e-12));
  }
  // T = 0: scores are 0.
  std::vector<TestType> z(3, TestType(4));
  sequence_scores(cpu_backend(), token_view<const TestType>(nullptr, 3, 0), seq_view<TestType>(z.data(), 3));
  for (auto v : z) CHECK(v == TestType(0));
}

TEST_CASE("outcome: results independent of thread count and group layout order", "[outcome]") {
  const auto x = random_batch(77, 300, 5, 37);
  std::vector<double> first;
  for (int threads = 1; threads <= 4; ++threads) {
    std::vector<double> seq(300);
    grpo_advantages(cpu_backend(threads), seq_view<const double>(x.scores.data(), 300), seq_view<const i64>(x.ids.data(), 300),
                    mask_view(x.m.data(), 300, 5), outcome_outputs<double>{{}, {seq.data(), 300}});
    if (threads == 1) first = seq;
    else REQUIRE(seq == first);
  }
}
