// Tests of asyppo::gae (E5-E7, peer-semantics 2.2) against literal references of verl's and
// OpenRLHF's loops in support/reference.hpp, plus hand-checked examples.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "reference.hpp"

using namespace asyppo;

namespace {

// Tolerances. The library widens the T inputs to double, runs the whole recursion in double and
// rounds each output once to T; the reference runs the same recursion in double on the same
// widened inputs. For double the two differ only by the order of a few roundings per step
// (composition of affine maps vs the direct loop): relative 1e-10 of the magnitude is ample even
// for rows of 2048 tokens with gamma = lambda = 1 (errors grow ~linearly, ~2048 * 1e-16).
// For float the outputs additionally carry the final rounding to float (2^-24 ~ 6e-8 relative);
// on long rows the advantage is a sum of up to 2048 TD terms whose magnitude can exceed the result
// (cancellation), so we allow 1e-5 relative to max(1, |ref|) - still 100x below any real error
// (a wrong gamma/lambda power or a missed token is O(1e-2) or more on these inputs).
template <class T>
double tol() {
  return sizeof(T) == 4 ? 1e-5 : 1e-10;
}

template <class T>
void require_close(const std::vector<T>& got, const ref::vec& want, const char* what, int Tn) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    if (!(std::abs(g - want[i]) <= tol<T>() * std::max(1.0, std::abs(want[i])))) {
      FAIL(what << " mismatch at b=" << i / static_cast<std::size_t>(Tn) << " t=" << i % static_cast<std::size_t>(Tn)
                << ": got " << g << ", want " << want[i]);
    }
  }
}

struct gae_case {
  int K, B, Tn;
  double gamma, lambda_actor, lambda_critic;
  gae_mask_semantics semantics;
  padding_mode padding;
  double alpha = 0, lam_lo = 0, lam_hi = 1;
  std::uint64_t seed;
};

// Runs the library on random inputs and compares advantages, returns and std with the reference.
template <class T>
void check_case(const gae_case& c, int threads = 1) {
  INFO("K=" << c.K << " B=" << c.B << " T=" << c.Tn << " gamma=" << c.gamma << " la=" << c.lambda_actor
            << " lc=" << c.lambda_critic << " step=" << (c.semantics == gae_mask_semantics::step)
            << " raw=" << (c.padding == padding_mode::raw) << " alpha=" << c.alpha << " seed=" << c.seed);
  std::mt19937_64 rng(c.seed);
  const std::size_t n = static_cast<std::size_t>(c.B) * c.Tn;
  auto V = ref::random_vec(rng, static_cast<std::size_t>(c.K) * n, -1.0, 1.0);
  auto r = ref::random_vec(rng, n, -0.5, 0.5);  // dense rewards, also on masked tokens (must be ignored)
  const auto m = ref::random_mask(rng, c.B, c.Tn);
  // Zero padding never reads values or rewards at masked tokens: poison them with NaN there.
  if (c.padding == padding_mode::zero)
    for (std::size_t i = 0; i < n; ++i)
      if (!m[i]) {
        r[i] = std::numeric_limits<double>::quiet_NaN();
        for (int k = 0; k < c.K; ++k) V[static_cast<std::size_t>(k) * n + i] = std::numeric_limits<double>::quiet_NaN();
      }
  const auto Vt = ref::as<T>(V);
  const auto rt = ref::as<T>(r);
  V = ref::widen(Vt);
  r = ref::widen(rt);

  std::vector<T> adv(n, T(123)), ret(n, T(123)), sd(n, T(123));
  gae_options o;
  o.gamma = c.gamma;
  o.lambda_actor = c.lambda_actor;
  o.lambda_critic = c.lambda_critic;
  o.semantics = c.semantics;
  o.padding = c.padding;
  o.adaptive_lambda_alpha = c.alpha;
  o.adaptive_lambda_min = c.lam_lo;
  o.adaptive_lambda_max = c.lam_hi;
  gae(cpu_backend(threads), critic_view<const T>(Vt.data(), c.K, c.B, c.Tn), token_view<const T>(rt.data(), c.B, c.Tn),
      mask_view(m.data(), c.B, c.Tn), o,
      gae_outputs<T>{{adv.data(), c.B, c.Tn}, {ret.data(), c.B, c.Tn}, {sd.data(), c.B, c.Tn}});

  const auto ens = ref::ensemble(V, c.K, c.B, c.Tn, ref::bytes{}, false);  // mean at every position
  const auto ens_masked = ref::ensemble(V, c.K, c.B, c.Tn, m, false);
  const ref::vec la = c.alpha > 0 ? ref::adaptive_lambda(m, c.B, c.Tn, c.alpha, c.lam_lo, c.lam_hi)
                                  : ref::vec(static_cast<std::size_t>(c.B), c.lambda_actor);
  const ref::vec lc(static_cast<std::size_t>(c.B), c.lambda_critic);
  ref::gae_result A, R;
  if (c.semantics == gae_mask_semantics::skip) {
    A = ref::gae_verl(ens.mean, r, m, c.B, c.Tn, c.gamma, la);
    R = ref::gae_verl(ens.mean, r, m, c.B, c.Tn, c.gamma, lc);
  } else {
    A = ref::gae_openrlhf(ens.mean, r, m, c.B, c.Tn, c.gamma, la);
    R = ref::gae_openrlhf(ens.mean, r, m, c.B, c.Tn, c.gamma, lc);
  }
  if (c.padding == padding_mode::zero) {
    require_close(adv, ref::zero_masked(A.adv, m), "advantages", c.Tn);
    require_close(ret, ref::zero_masked(R.ret, m), "returns", c.Tn);
    for (std::size_t i = 0; i < n; ++i)
      if (!m[i]) REQUIRE((adv[i] == T(0) && ret[i] == T(0)));  // exactly 0, not NaN
  } else {
    require_close(adv, A.adv, "advantages (raw)", c.Tn);
    require_close(ret, R.ret, "returns (raw)", c.Tn);
  }
  require_close(sd, ens_masked.std, "std", c.Tn);
}

}  // namespace

TEST_CASE("gae: method-spec worked example (hand-checked A, R, sigma, masks)", "[gae]") {
  const std::vector<double> V = {0.2, 0.4, 0.5, 0.7, 0.1, 0.3, 0.2, 0.0,   // critic 0
                                 0.4, 0.4, 0.9, 0.5, 0.1, 0.5, 0.3, 0.0};  // critic 1
  const std::vector<double> r = {0, 0, 0, 1, 0, 0, 0, 0};                  // R = (1, 0) on the last valid token
  const std::vector<std::uint8_t> m = {1, 1, 1, 1, 1, 1, 1, 0};
  std::vector<double> A(8, 9), R(8, 9), S(8, 9);
  gae_options o;
  o.gamma = 1;
  o.lambda_actor = 0.95;
  o.lambda_critic = 1;
  gae(cpu_backend(), critic_view<const double>(V.data(), 2, 2, 4), token_view<const double>(r.data(), 2, 4),
      mask_view(m.data(), 2, 4), o, gae_outputs<double>{{A.data(), 2, 4}, {R.data(), 2, 4}, {S.data(), 2, 4}});
  // Hand computation: row 0, V-bar = [.3,.4,.7,.6]: A3 = 1 - .6 = .4; A2 = -.1 + .95*.4 = .28;
  // A1 = .3 + .95*.28 = .566; A0 = .1 + .95*.566 = .6377. Row 1, V-bar = [.1,.4,.25]: A2 = -.25;
  // A1 = -.15 + .95*(-.25) = -.3875; A0 = .3 + .95*(-.3875) = -.068125.
  const double wantA[8] = {0.6377, 0.566, 0.28, 0.4, -0.068125, -0.3875, -0.25, 0};
  const double wantR[8] = {1, 1, 1, 1, 0, 0, 0, 0};  // lambda_c = gamma = 1: the outcome reward
  const double wantS[8] = {0.1, 0.0, 0.2, 0.1, 0.0, 0.1, 0.05, 0};
  for (int i = 0; i < 8; ++i) {
    INFO(i);
    CHECK(A[i] == Approx(wantA[i]).margin(1e-12));
    CHECK(R[i] == Approx(wantR[i]).margin(1e-12));
    CHECK(S[i] == Approx(wantS[i]).margin(1e-12));
  }
  // Masks (k = h = 0.2): N = 7, n_k = n_h = 1. I^H filters only (0,2) (unique max 0.2); I^A masks one
  // of the tied sigma = 0 tokens (0,1) and (1,0): the smaller flat index, (0,1).
  std::vector<std::uint8_t> IA(8, 7), IH(8, 7);
  mask_options mo;
  mo.adv_fraction = 0.2;
  mo.entropy_fraction = 0.2;
  const auto counts = uncertainty_masks(cpu_backend(), token_view<const double>(S.data(), 2, 4), mask_view(m.data(), 2, 4),
                                        mask_out(IA.data(), 2, 4), mask_out(IH.data(), 2, 4), mo);
  CHECK(counts.valid == 7);
  CHECK(counts.adv_masked == 1);
  CHECK(counts.entropy_masked == 1);
  CHECK(IA == std::vector<std::uint8_t>{1, 0, 1, 1, 1, 1, 1, 0});
  CHECK(IH == std::vector<std::uint8_t>{1, 1, 0, 1, 1, 1, 1, 0});
}

TEST_CASE("gae: hand-checked observation holes, skip (verl) and step (OpenRLHF), raw and zero padding", "[gae]") {
  // One row, K = 1: m = [1,1,0,0,1,1], V = [.5,.4,9,9,.2,.1] (9 at the observation block), r = [0,0,5,0,0,1]
  // (a reward on a masked token), gamma = lambda = 0.5; row 2 is empty padding.
  const int Tn = 6;
  const std::vector<double> V = {0.5, 0.4, 9, 9, 0.2, 0.1, 3, 3, 3, 3, 3, 3};
  const std::vector<double> r = {0, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0};
  const std::vector<std::uint8_t> m = {1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0};
  auto run = [&](gae_mask_semantics sem, padding_mode pad, std::vector<double>& A, std::vector<double>& R) {
    gae_options o;
    o.gamma = 0.5;
    o.lambda_actor = 0.5;
    o.lambda_critic = 0.5;
    o.semantics = sem;
    o.padding = pad;
    A.assign(12, 77);
    R.assign(12, 77);
    gae(cpu_backend(), critic_view<const double>(V.data(), 1, 2, Tn), token_view<const double>(r.data(), 2, Tn),
        mask_view(m.data(), 2, Tn), o, gae_outputs<double>{{A.data(), 2, Tn}, {R.data(), 2, Tn}, {}});
  };
  std::vector<double> A, R;
  // skip: valid tokens 0,1,4,5. d5 = 1 - .1 = .9, A5 = .9; d4 = .05 - .2 = -.15, A4 = -.15 + .25*.9 = .075;
  // d1 = .1 - .4 = -.3, A1 = -.3 + .25*.075 = -.28125; d0 = .2 - .5 = -.3, A0 = -.3 + .25*A1 = -.3703125.
  run(gae_mask_semantics::skip, padding_mode::raw, A, R);
  const std::vector<double> skipA = {-0.3703125, -0.28125, 0.075, 0.075, 0.075, 0.9, 0, 0, 0, 0, 0, 0};
  // raw returns: A + V as given (masked V = 9 and 3 included, as verl's returns = advantages + values).
  const std::vector<double> skipR = {0.1296875, 0.11875, 9.075, 9.075, 0.275, 1.0, 3, 3, 3, 3, 3, 3};
  for (int i = 0; i < 12; ++i) {
    INFO("skip raw " << i);
    CHECK(A[i] == Approx(skipA[i]).margin(1e-14));
    CHECK(R[i] == Approx(skipR[i]).margin(1e-14));
  }
  // Observation tokens repeat the next action token's advantage exactly; trailing pads are exactly 0.
  CHECK(A[2] == A[4]);
  CHECK(A[3] == A[4]);
  for (int i = 6; i < 12; ++i) CHECK(A[i] == 0.0);
  run(gae_mask_semantics::skip, padding_mode::zero, A, R);
  for (int i = 0; i < 12; ++i) {
    CHECK(A[i] == Approx(m[i] ? skipA[i] : 0.0).margin(1e-14));
    CHECK(R[i] == Approx(m[i] ? skipR[i] : 0.0).margin(1e-14));
  }
  // step (OpenRLHF): V m = [.5,.4,0,0,.2,.1], r m = [0,0,0,0,0,1].
  // A5 = .9; A4 = .075; A3 = .5*.2 + .25*.075 = .11875; A2 = 0 + .25*.11875 = .0296875;
  // A1 = -.4 + .25*.0296875 = -.392578125; A0 = .2 - .5 + .25*A1 = -.39814453125. R = A + V m.
  run(gae_mask_semantics::step, padding_mode::raw, A, R);
  const std::vector<double> stepA = {-0.39814453125, -0.392578125, 0.0296875, 0.11875, 0.075, 0.9, 0, 0, 0, 0, 0, 0};
  const std::vector<double> stepR = {0.10185546875, 0.007421875, 0.0296875, 0.11875, 0.275, 1.0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < 12; ++i) {
    INFO("step raw " << i);
    CHECK(A[i] == Approx(stepA[i]).margin(1e-14));
    CHECK(R[i] == Approx(stepR[i]).margin(1e-14));
  }
  run(gae_mask_semantics::step, padding_mode::zero, A, R);
  for (int i = 0; i < 12; ++i) {
    CHECK(A[i] == Approx(m[i] ? stepA[i] : 0.0).margin(1e-14));
    CHECK(R[i] == Approx(m[i] ? stepR[i] : 0.0).margin(1e-14));
  }
}

TEST_CASE("gae: verl raw parity - observation holes carry the next action token's advantage", "[gae]") {
  // peer-semantics 4.3 input: B = 3, T = 6, gamma = 1, lambda = 0.95; masked values are 0 (critic-masked),
  // so raw returns at observation tokens equal the carried advantage.
  const int B = 3, Tn = 6;
  const std::vector<std::uint8_t> m = {1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  std::vector<double> r(B * Tn, 0.0);
  r[2] = 1;
  r[Tn + 5] = -1;
  r[2 * Tn + 5] = 0.5;
  std::mt19937_64 rng(3);
  auto V = ref::random_vec(rng, B * Tn, 0, 1);
  for (int i = 0; i < B * Tn; ++i)
    if (!m[i]) V[i] = 0;
  std::vector<double> A(B * Tn), R(B * Tn);
  gae_options o;
  o.lambda_actor = o.lambda_critic = 0.95;
  o.padding = padding_mode::raw;
  gae(cpu_backend(), critic_view<const double>(V.data(), 1, B, Tn), token_view<const double>(r.data(), B, Tn),
      mask_view(m.data(), B, Tn), o, gae_outputs<double>{{A.data(), B, Tn}, {R.data(), B, Tn}, {}});
  CHECK(A[Tn + 2] == A[Tn + 4]);
  CHECK(A[Tn + 3] == A[Tn + 4]);
  CHECK(R[Tn + 2] == A[Tn + 4]);
  CHECK(R[Tn + 3] == A[Tn + 4]);
  for (int t = 3; t < 6; ++t) CHECK(A[t] == 0.0);
  const auto want = ref::gae_verl(V, r, m, B, Tn, 1.0, ref::vec(B, 0.95));
  for (int i = 0; i < B * Tn; ++i) {
    CHECK(A[i] == Approx(want.adv[i]).margin(1e-13));
    CHECK(R[i] == Approx(want.ret[i]).margin(1e-13));
  }
}

TEST_CASE("gae: gamma = lambda_c = 1 gives returns equal to the reward-to-go over valid tokens", "[gae]") {
  std::mt19937_64 rng(99);
  const int K = 3, B = 9, Tn = 40;
  const auto V = ref::random_vec(rng, K * B * Tn, -1, 1);
  const auto r = ref::random_vec(rng, B * Tn, -1, 1);
  const auto m = ref::random_mask(rng, B, Tn);
  std::vector<double> R(B * Tn);
  gae_options o;
  o.lambda_actor = 0.9;
  gae(cpu_backend(), critic_view<const double>(V.data(), K, B, Tn), token_view<const double>(r.data(), B, Tn),
      mask_view(m.data(), B, Tn), o, gae_outputs<double>{{}, {R.data(), B, Tn}, {}});
  for (int b = 0; b < B; ++b) {
    double togo = 0;
    for (int t = Tn - 1; t >= 0; --t) {
      const int i = b * Tn + t;
      if (!m[i]) {
        CHECK(R[i] == 0.0);
        continue;
      }
      togo += r[i];
      CHECK(R[i] == Approx(togo).margin(1e-12));  // V-independent (E7)
    }
  }
}

TEST_CASE("gae: separate lambda_actor / lambda_critic, gamma < 1, both semantics and paddings", "[gae]") {
  std::uint64_t seed = 1000;
  for (auto sem : {gae_mask_semantics::skip, gae_mask_semantics::step})
    for (auto pad : {padding_mode::zero, padding_mode::raw})
      for (double gamma : {1.0, 0.99, 0.7, 0.0})
        for (auto lams : {std::pair{1.0, 1.0}, std::pair{0.95, 1.0}, std::pair{0.0, 0.9}, std::pair{0.8, 0.3}}) {
          check_case<double>({3, 13, 57, gamma, lams.first, lams.second, sem, pad, 0, 0, 1, seed++});
          check_case<float>({2, 13, 57, gamma, lams.first, lams.second, sem, pad, 0, 0, 1, seed++});
        }
}

TEST_CASE("gae: length-adaptive actor lambda (VAPO) per row", "[gae]") {
  std::uint64_t seed = 5000;
  for (auto sem : {gae_mask_semantics::skip, gae_mask_semantics::step}) {
    // The fork's setting: alpha = 0.05 clamped to [0.95, 1].
    check_case<double>({2, 20, 300, 1.0, 0.5, 1.0, sem, padding_mode::zero, 0.05, 0.95, 1.0, seed++});
    // Unclamped range so rows of different length get visibly different lambdas.
    check_case<double>({2, 20, 64, 0.97, 0.5, 0.9, sem, padding_mode::zero, 0.5, 0.0, 1.0, seed++});
    check_case<float>({4, 20, 64, 1.0, 0.5, 0.9, sem, padding_mode::raw, 0.2, 0.3, 0.99, seed++});
  }
  // Hand check: one row of L = 4 valid tokens, alpha = 0.5: lambda = 1 - 1/(0.5*4) = 0.5.
  // r = [0,0,0,1], V = 0, gamma = 1: A_t = 0.5^(3-t); lambda_critic = 1 gives returns 1.
  const std::vector<double> V(4, 0.0), r = {0, 0, 0, 1};
  const std::vector<std::uint8_t> m(4, 1);
  std::vector<double> A(4), R(4);
  gae_options o;
  o.lambda_actor = 0.1;  // overridden by the adaptive rule
  o.adaptive_lambda_alpha = 0.5;
  gae(cpu_backend(), critic_view<const double>(V.data(), 1, 1, 4), token_view<const double>(r.data(), 1, 4),
      mask_view(m.data(), 1, 4), o, gae_outputs<double>{{A.data(), 1, 4}, {R.data(), 1, 4}, {}});
  CHECK(A == std::vector<double>{0.125, 0.25, 0.5, 1.0});
  CHECK(R == std::vector<double>{1, 1, 1, 1});
}

TEST_CASE("gae: randomized shapes (B up to 64, T up to 2048, K 1..8), float and double", "[gae]") {
  std::mt19937_64 rng(424242);
  std::uniform_int_distribution<int> pickK(1, 8);
  const double gammas[] = {1.0, 0.995, 0.9};
  const double lams[] = {1.0, 0.95, 0.6};
  for (int iter = 0; iter < 24; ++iter) {
    int B, Tn;
    if (iter % 4 == 0) B = std::uniform_int_distribution<int>(1, 8)(rng), Tn = std::uniform_int_distribution<int>(1024, 2048)(rng);
    else if (iter % 4 == 1) B = std::uniform_int_distribution<int>(32, 64)(rng), Tn = std::uniform_int_distribution<int>(1, 64)(rng);
    else if (iter % 4 == 2) B = 1, Tn = 1;
    else B = std::uniform_int_distribution<int>(1, 64)(rng), Tn = std::uniform_int_distribution<int>(1, 256)(rng);
    const int K = pickK(rng);
    gae_case c{K, B, Tn, gammas[iter % 3], lams[(iter / 3) % 3], lams[(iter / 2) % 3],
               iter % 2 ? gae_mask_semantics::step : gae_mask_semantics::skip,
               (iter / 2) % 2 ? padding_mode::raw : padding_mode::zero, 0, 0, 1, 7000u + static_cast<std::uint64_t>(iter)};
    check_case<double>(c, 1 + iter % 3);
    check_case<float>(c, 1 + iter % 3);
  }
}

TEST_CASE("gae: unbiased std output and K = 1", "[gae]") {
  std::mt19937_64 rng(17);
  const int K = 3, B = 4, Tn = 10;
  const auto V = ref::random_vec(rng, K * B * Tn, -1, 1);
  const auto r = ref::random_vec(rng, B * Tn, -1, 1);
  const auto m = ref::random_mask(rng, B, Tn);
  std::vector<double> S(B * Tn, 5);
  gae(cpu_backend(), critic_view<const double>(V.data(), K, B, Tn), token_view<const double>(r.data(), B, Tn),
      mask_view(m.data(), B, Tn), gae_options{}, gae_outputs<double>{{}, {}, {S.data(), B, Tn}}, std_kind::unbiased);
  const auto e = ref::ensemble(V, K, B, Tn, m, true);
  for (int i = 0; i < B * Tn; ++i) CHECK(S[i] == Approx(e.std[i]).margin(1e-14));
  // K = 1: sigma is 0 everywhere (population and unbiased), and GAE runs on the single critic.
  for (auto kind : {std_kind::population, std_kind::unbiased}) {
    std::vector<double> S1(B * Tn, 5), A1(B * Tn);
    gae(cpu_backend(), critic_view<const double>(V.data(), 1, B, Tn), token_view<const double>(r.data(), B, Tn),
        mask_view(m.data(), B, Tn), gae_options{}, gae_outputs<double>{{A1.data(), B, Tn}, {}, {S1.data(), B, Tn}}, kind);
    for (double s : S1) CHECK(s == 0.0);
    const auto w = ref::gae_verl(ref::vec(V.begin(), V.begin() + B * Tn), r, m, B, Tn, 1.0, ref::vec(B, 1.0));
    for (int i = 0; i < B * Tn; ++i) CHECK(A1[i] == Approx(m[i] ? w.adv[i] : 0.0).margin(1e-12));
  }
}

TEST_CASE("gae: strided inputs and outputs, results independent of thread count", "[gae]") {
  // values stored as [B, T, K] (critic innermost), rewards and mask transposed ([T, B]), outputs [T, B].
  const int K = 3, B = 6, Tn = 50;
  std::mt19937_64 rng(31);
  const auto Vs = ref::random_vec(rng, static_cast<std::size_t>(K) * B * Tn, -1, 1);  // [B,T,K]
  const auto rs = ref::random_vec(rng, static_cast<std::size_t>(B) * Tn, -1, 1);      // [T,B]
  const auto mrow = ref::random_mask(rng, B, Tn);                                      // [B,T]
  ref::bytes ms(static_cast<std::size_t>(B) * Tn);
  ref::vec V(static_cast<std::size_t>(K) * B * Tn), r(static_cast<std::size_t>(B) * Tn);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t) {
      ms[static_cast<std::size_t>(t) * B + b] = mrow[static_cast<std::size_t>(b) * Tn + t];
      r[static_cast<std::size_t>(b) * Tn + t] = rs[static_cast<std::size_t>(t) * B + b];
      for (int k = 0; k < K; ++k)
        V[(static_cast<std::size_t>(k) * B + b) * Tn + t] = Vs[(static_cast<std::size_t>(b) * Tn + t) * K + k];
    }
  const auto cv = critic_view<const double>::strided(Vs.data(), {K, B, Tn}, {1, Tn * K, K});
  const auto rv = token_view<const double>::strided(rs.data(), {B, Tn}, {1, B});
  const auto mv = mask_view::strided(ms.data(), {B, Tn}, {1, B});
  gae_options o;
  o.gamma = 0.98;
  o.lambda_actor = 0.9;
  std::vector<double> first;
  for (int threads = 1; threads <= 4; ++threads) {
    std::vector<double> As(static_cast<std::size_t>(B) * Tn, 8), Rs(As);
    gae(cpu_backend(threads), cv, rv, mv, o,
        gae_outputs<double>{token_view<double>::strided(As.data(), {B, Tn}, {1, B}),
                            token_view<double>::strided(Rs.data(), {B, Tn}, {1, B}), {}});
    const auto e = ref::ensemble(V, K, B, Tn, ref::bytes{}, false);
    const auto A = ref::gae_verl(e.mean, r, mrow, B, Tn, 0.98, ref::vec(B, 0.9));
    const auto R = ref::gae_verl(e.mean, r, mrow, B, Tn, 0.98, ref::vec(B, 1.0));
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < Tn; ++t) {
        const std::size_t i = static_cast<std::size_t>(b) * Tn + t, j = static_cast<std::size_t>(t) * B + b;
        REQUIRE(As[j] == Approx(mrow[i] ? A.adv[i] : 0.0).margin(1e-12));
        REQUIRE(Rs[j] == Approx(mrow[i] ? R.ret[i] : 0.0).margin(1e-12));
      }
    As.insert(As.end(), Rs.begin(), Rs.end());
    if (threads == 1) first = As;
    else REQUIRE(As == first);  // bit-identical
  }
}

TEST_CASE("gae: empty batches (B = 0, T = 0) are valid", "[gae]") {
  std::vector<double> none;
  gae(cpu_backend(), critic_view<const double>(none.data(), 2, 0, 7), token_view<const double>(none.data(), 0, 7),
      mask_view(nullptr, 0, 7), gae_options{}, gae_outputs<double>{{nullptr, 0, 7}, {nullptr, 0, 7}, {}});
  gae(cpu_backend(), critic_view<const double>(none.data(), 2, 5, 0), token_view<const double>(none.data(), 5, 0),
      mask_view(nullptr, 5, 0), gae_options{}, gae_outputs<double>{{nullptr, 5, 0}, {}, {}});
  SUCCEED();
}

TEST_CASE("gae: the joint scan (one lambda) gives the general scan's bits, c = a", "[gae]") {
  // gae_compose<true> carries 5-double maps when lambda_actor == lambda_critic; every state it produces,
  // by applying tokens or by composing maps in any association, must equal the general operator's.
  using asyppo::detail::gae_compose;
  using asyppo::detail::gae_state;
  using asyppo::detail::gae_token;
  std::mt19937_64 rng(29);
  std::uniform_real_distribution<double> u(-2.0, 2.0);
  for (const bool skip : {true, false})
    for (const double lambda : {0.0, 0.37, 0.95, 1.0}) {
      const double gamma = 0.99;
      const gae_compose<true> joint{gamma, lambda, skip};
      const gae_compose<false> general{gamma, lambda, skip};
      std::vector<gae_token> tokens(97);
      for (auto& e : tokens) {
        const bool valid = (rng() % 4) != 0;
        e = {valid ? u(rng) : 0.0, valid ? u(rng) : 0.0, lambda, valid};
      }
      gae_state xj = joint.initial(), xg = general.initial();
      auto mj = joint.lift(tokens[0]);
      auto mg = general.lift(tokens[0]);
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        xj = joint.apply(tokens[i], xj);
        xg = general.apply(tokens[i], xg);
        REQUIRE(xj.s == xg.s);
        REQUIRE(xj.a == xg.a);
        REQUIRE(xj.c == xg.c);
        REQUIRE(xj.a == xj.c);
        if (i > 0) {
          // Compose a split at a random point in both operators, then act on a random state.
          mj = joint.combine(mj, joint.lift(tokens[i]));
          mg = general.combine(mg, general.lift(tokens[i]));
          const gae_state x0{u(rng), u(rng), 0.0};
          const gae_state s0{x0.s, x0.a, x0.a};
          const gae_state yj = joint.apply(mj, s0), yg = general.apply(mg, s0);
          REQUIRE(yj.s == yg.s);
          REQUIRE(yj.a == yg.a);
          REQUIRE(yj.c == yg.c);
        }
      }
      // Composition is associative in both: (first half) then (second half) acts like the fold.
      const std::size_t h = tokens.size() / 2;
      auto left = joint.lift(tokens[0]);
      for (std::size_t i = 1; i < h; ++i) left = joint.combine(left, joint.lift(tokens[i]));
      auto right = joint.lift(tokens[h]);
      for (std::size_t i = h + 1; i < tokens.size(); ++i) right = joint.combine(right, joint.lift(tokens[i]));
      const gae_state y = joint.apply(joint.combine(left, right), joint.initial());
      CHECK(y.a == Approx(xj.a).margin(1e-9));
      CHECK(y.s == xj.s);
    }
}
