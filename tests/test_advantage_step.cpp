// Tests of asyppo::advantage_step: the one-call step against the composition of the reference
// pieces (ensemble sigma, GAE on the mean, masks, I^A, optional whitening, shards, summary); and of
// advantage_step_to (A5) against advantage_step, byte for byte, on both of its paths.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "check.hpp"
#include "reference.hpp"
#include "round_trip_backend.hpp"

using namespace asyppo;
using i64 = std::int64_t;

namespace {

// Tolerances for the real-valued outputs (advantages, returns, sigma): as in test_gae.cpp, the
// library computes in double and rounds once to T; the reference does the same math in double.
// double: 1e-10 relative to max(1,|x|) (rows up to a few hundred tokens); float: 1e-5 (final
// rounding 6e-8 plus the rounding of sigma/advantages before whitening). Masks, counts,
// quantiles and shards are exact.
template <class T>
double tol() {
  return sizeof(T) == 4 ? 1e-5 : 1e-10;
}

template <class T>
struct step_data {
  int K, B, Tn;
  std::vector<T> V, r;
  ref::bytes m;
  std::vector<i64> ids;
};

template <class T>
step_data<T> make_data(std::uint64_t seed, int K, int B, int Tn, bool tied_values) {
  std::mt19937_64 rng(seed);
  step_data<T> d{K, B, Tn, {}, {}, {}, {}};
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  if (tied_values) {
    // Critic values on a coarse grid: many exactly tied sigmas.
    std::uniform_int_distribution<int> g(0, 4);
    d.V.resize(static_cast<std::size_t>(K) * n);
    for (auto& v : d.V) v = static_cast<T>(0.25 * g(rng));
  } else {
    d.V = ref::as<T>(ref::random_vec(rng, static_cast<std::size_t>(K) * n, -1, 1));
  }
  d.r.assign(n, T(0));
  d.m = ref::random_mask(rng, B, Tn);
  // Outcome reward on the last valid token plus a small dense term.
  std::uniform_real_distribution<double> u(0, 1);
  for (int b = 0; b < B; ++b) {
    int last = -1;
    for (int t = 0; t < Tn; ++t) {
      if (d.m[static_cast<std::size_t>(b) * Tn + t]) last = t;
      d.r[static_cast<std::size_t>(b) * Tn + t] = static_cast<T>(0.01 * (u(rng) - 0.5));
    }
    if (last >= 0) d.r[static_cast<std::size_t>(b) * Tn + last] += static_cast<T>(u(rng) < 0.5 ? 1.0 : 0.0);
  }
  const int groups = std::max(1, B / 4);
  for (int b = 0; b < B; ++b) d.ids.push_back(static_cast<i64>(std::uniform_int_distribution<int>(0, groups - 1)(rng)) * 7 - 3);
  return d;
}

template <class T>
struct step_out {
  std::vector<T> adv, ret, sd, shards;
  ref::bytes am, em;
  advantage_summary s;
};

// Outputs filled with 9 (so untouched entries show), and the step's input views.
template <class T>
step_out<T> blank_out(const step_data<T>& d) {
  const std::size_t n = static_cast<std::size_t>(d.B) * d.Tn;
  step_out<T> o;
  o.adv.assign(n, T(9));
  o.ret.assign(n, T(9));
  o.sd.assign(n, T(9));
  o.shards.assign(static_cast<std::size_t>(d.K) * d.B, T(9));
  o.am.assign(n, 9);
  o.em.assign(n, 9);
  return o;
}
template <class T>
advantage_inputs<T> inputs_of(const step_data<T>& d) {
  return {critic_view<const T>(d.V.data(), d.K, d.B, d.Tn), token_view<const T>(d.r.data(), d.B, d.Tn),
          mask_view(d.m.data(), d.B, d.Tn), seq_view<const i64>(d.ids.data(), d.B)};
}

template <class T>
step_out<T> run_step(const step_data<T>& d, const advantage_config& cfg, int threads, bool with_std = true,
                     bool with_shards = true) {
  step_out<T> o = blank_out(d);
  const advantage_inputs<T> in = inputs_of(d);
  advantage_outputs<T> out{token_view<T>(o.adv.data(), d.B, d.Tn), token_view<T>(o.ret.data(), d.B, d.Tn),
                           mask_out(o.am.data(), d.B, d.Tn), mask_out(o.em.data(), d.B, d.Tn),
                           with_shards ? view<T, 2>(o.shards.data(), d.K, d.B) : view<T, 2>{},
                           with_std ? token_view<T>(o.sd.data(), d.B, d.Tn) : token_view<T>{}};
  o.s = advantage_step(cpu_backend(threads), in, out, cfg);
  return o;
}

// advantage_step_to on the CPU backend posing as a device backend (its device paths; round trips
// counted), or on the CPU backend (its host path): the summary read back from "device memory" into a
// step_out like run_step's. Without statistics it writes no explained variance (the [K] array is
// checked untouched).
template <class T>
step_out<T> run_step_to(const step_data<T>& d, advantage_config cfg, int threads, int* trips = nullptr,
                        bool host_path = false) {
  step_out<T> o = blank_out(d);
  const advantage_inputs<T> in = inputs_of(d);
  advantage_outputs<T> out{token_view<T>(o.adv.data(), d.B, d.Tn), token_view<T>(o.ret.data(), d.B, d.Tn),
                           mask_out(o.am.data(), d.B, d.Tn), mask_out(o.em.data(), d.B, d.Tn),
                           view<T, 2>(o.shards.data(), d.K, d.B), token_view<T>(o.sd.data(), d.B, d.Tn)};
  advantage_step_result res;
  res.sequences = -5;  // overwritten
  std::vector<double> ev(static_cast<std::size_t>(d.K), 123.0);
  if (host_path) {  // a host-memory backend: advantage_step's path, its summary copied
    advantage_step_to(cpu_backend(threads), in, out, &res, ev.data(), cfg);
  } else {
    const asyppo_test::round_trip_backend be(threads);
    advantage_step_to(be, in, out, &res, ev.data(), cfg);
    if (trips) *trips = be.round_trips();
  }
  o.s.sequences = res.sequences;
  o.s.valid_tokens = res.valid_tokens;
  o.s.adv_masked = res.adv_masked;
  o.s.entropy_masked = res.entropy_masked;
  o.s.adv_mask_fraction = res.adv_mask_fraction;
  o.s.entropy_filter_fraction = res.entropy_filter_fraction;
  o.s.adv_threshold = res.adv_threshold;
  o.s.entropy_threshold = res.entropy_threshold;
  for (int q = 0; q < 5; ++q) o.s.std_quantiles[q] = res.std_quantiles[q];
  o.s.advantage_mean = res.advantage_mean;
  o.s.advantage_std = res.advantage_std;
  o.s.return_mean = res.return_mean;
  o.s.return_std = res.return_std;
  if (cfg.statistics) o.s.explained_variance = ev;
  else
    for (double e : ev) REQUIRE(e == 123.0);
  return o;
}

template <class T>
std::vector<unsigned char> bytes_of(const step_out<T>& o);

// advantage_step_to gives advantage_step's bits and, without the finiteness check, makes no host round
// trip.
template <class T>
void check_step_to(const step_data<T>& d, advantage_config cfg, const step_out<T>& want, int threads) {
  cfg.check_finite = false;
  int trips = -1;
  auto got = run_step_to(d, cfg, threads, &trips);
  REQUIRE(trips == 0);
  const auto a = bytes_of(want), b = bytes_of(got);
  REQUIRE(a.size() == b.size());
  REQUIRE(std::memcmp(a.data(), b.data(), a.size()) == 0);
  const auto c = bytes_of(run_step_to(d, cfg, threads, nullptr, true));
  REQUIRE(a.size() == c.size());
  REQUIRE(std::memcmp(a.data(), c.data(), a.size()) == 0);
}

// Compares one run with the composition of the reference pieces.
template <class T>
void check_step(const step_data<T>& d, const advantage_config& cfg) {
  INFO("K=" << d.K << " B=" << d.B << " T=" << d.Tn << " gamma=" << cfg.gamma << " la=" << cfg.lambda_actor
            << " lc=" << cfg.lambda_critic << " step=" << (cfg.semantics == gae_mask_semantics::step)
            << " scope_seq=" << (cfg.scope == mask_scope::sequence) << " whiten=" << cfg.whiten_advantages
            << " mask_adv=" << cfg.mask_advantages << " k=" << cfg.adv_mask_fraction << " h=" << cfg.entropy_filter_fraction);
  const auto o = run_step(d, cfg, 2);
  check_step_to(d, cfg, o, 2);
  const int B = d.B, Tn = d.Tn, K = d.K;
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  const auto V = ref::widen(d.V), r = ref::widen(d.r);
  const auto& m = d.m;

  // 1. sigma and GAE on the mean.
  const auto all = ref::ensemble(V, K, B, Tn, ref::bytes{}, cfg.std == std_kind::unbiased);
  const auto valid_only = ref::ensemble(V, K, B, Tn, m, cfg.std == std_kind::unbiased);
  require_close(o.sd, valid_only.std, "std", tol<T>());
  const ref::vec la = cfg.adaptive_lambda_alpha > 0
                          ? ref::adaptive_lambda(m, B, Tn, cfg.adaptive_lambda_alpha, cfg.adaptive_lambda_min, cfg.adaptive_lambda_max)
                          : ref::vec(static_cast<std::size_t>(B), cfg.lambda_actor);
  const ref::vec lc(static_cast<std::size_t>(B), cfg.lambda_critic);
  const bool skip = cfg.semantics == gae_mask_semantics::skip;
  const auto A = skip ? ref::gae_verl(all.mean, r, m, B, Tn, cfg.gamma, la) : ref::gae_openrlhf(all.mean, r, m, B, Tn, cfg.gamma, la);
  const auto R = skip ? ref::gae_verl(all.mean, r, m, B, Tn, cfg.gamma, lc) : ref::gae_openrlhf(all.mean, r, m, B, Tn, cfg.gamma, lc);
  require_close(o.ret, ref::zero_masked(R.ret, m), "returns", tol<T>());

  // 2. masks from the sigma the library ranks (its std output, checked above), exact.
  const auto sig = ref::widen(o.sd);
  const auto mk = ref::masks(sig, m, B, Tn, cfg.adv_mask_fraction, cfg.entropy_filter_fraction, cfg.scope == mask_scope::sequence);
  auto first_diff = [](const ref::bytes& a, const ref::bytes& b) {
    for (std::size_t i = 0; i < a.size(); ++i)
      if (a[i] != b[i]) return static_cast<long>(i);
    return -1L;
  };
  INFO("first adv_mask diff " << first_diff(o.am, mk.adv) << ", first entropy_mask diff " << first_diff(o.em, mk.ent));
  REQUIRE(o.am == mk.adv);
  REQUIRE(o.em == mk.ent);

  // 3. advantages: (whiten) then I^A.
  ref::vec adv = ref::zero_masked(A.adv, m);
  if (cfg.whiten_advantages) {
    adv = ref::widen(ref::as<T>(adv));  // the library whitens its T-rounded advantages
    adv = ref::whiten(adv, m, cfg.whiten.unbiased, cfg.whiten.eps, cfg.whiten.eps_placement == eps_mode::floor,
                      cfg.whiten.shift_mean, false).out;
  }
  if (cfg.mask_advantages)
    for (std::size_t i = 0; i < n; ++i)
      if (!mk.adv[i]) adv[i] = 0;
  require_close(o.adv, adv, "advantages", tol<T>());
  for (std::size_t i = 0; i < n; ++i) {
    if (!m[i]) REQUIRE((o.adv[i] == T(0) && o.ret[i] == T(0) && o.am[i] == 0 && o.em[i] == 0 && o.sd[i] == T(0)));
    if (cfg.mask_advantages && !mk.adv[i]) REQUIRE(o.adv[i] == T(0));
  }

  // 4. shards.
  const auto crit = ref::shards(d.ids, K, cfg.shards == shard_mode::strided);
  for (int k = 0; k < K; ++k)
    for (int b = 0; b < B; ++b)
      REQUIRE(o.shards[static_cast<std::size_t>(k) * B + b] == (crit[static_cast<std::size_t>(b)] == k ? T(1) : T(0)));

  // 5. summary.
  const auto& s = o.s;
  REQUIRE(s.sequences == B);
  REQUIRE(s.valid_tokens == mk.valid);
  REQUIRE(s.adv_masked == mk.adv_masked);
  REQUIRE(s.entropy_masked == mk.ent_masked);
  if (mk.valid > 0) {
    REQUIRE(s.adv_mask_fraction == static_cast<double>(mk.adv_masked) / static_cast<double>(mk.valid));
    REQUIRE(s.entropy_filter_fraction == static_cast<double>(mk.ent_masked) / static_cast<double>(mk.valid));
  } else {
    REQUIRE(s.adv_mask_fraction == 0.0);
    REQUIRE(s.entropy_filter_fraction == 0.0);
  }
  const double qs[5] = {0, 0.25, 0.5, 0.75, 1};
  for (int q = 0; q < 5; ++q) {
    const double want = ref::quantile(sig, m, qs[q]);
    if (std::isnan(want)) REQUIRE(std::isnan(s.std_quantiles[q]));
    else REQUIRE(s.std_quantiles[q] == want);
  }
  if (cfg.statistics && mk.valid > 0) {
    // Moments of the written outputs (population), EV_k = 1 - Var(R - V_k) / Var(R). The library uses
    // shifted one-pass sums merged with Chan's formula: agreement to ~1e-12 relative in double; we
    // allow 1e-9 relative (plus 1e-12 absolute for near-zero means).
    const auto am_ = ref::masked_mean_var(ref::widen(o.adv), m);
    const auto rm_ = ref::masked_mean_var(ref::widen(o.ret), m);
    CHECK(s.advantage_mean == Approx(am_.first).epsilon(1e-9).margin(1e-12));
    CHECK(s.advantage_std == Approx(std::sqrt(am_.second)).epsilon(1e-9).margin(1e-12));
    CHECK(s.return_mean == Approx(rm_.first).epsilon(1e-9).margin(1e-12));
    CHECK(s.return_std == Approx(std::sqrt(rm_.second)).epsilon(1e-9).margin(1e-12));
    REQUIRE(s.explained_variance.size() == static_cast<std::size_t>(K));
    for (int k = 0; k < K; ++k) {
      ref::vec diff(n);
      for (std::size_t i = 0; i < n; ++i) diff[i] = static_cast<double>(o.ret[i]) - V[static_cast<std::size_t>(k) * n + i];
      const double vr = rm_.second;
      if (vr > 0) {
        const double want = 1.0 - ref::masked_mean_var(diff, m).second / vr;
        CHECK(s.explained_variance[static_cast<std::size_t>(k)] == Approx(want).epsilon(1e-9).margin(1e-9));
      } else {
        CHECK(std::isnan(s.explained_variance[static_cast<std::size_t>(k)]));
      }
    }
  }
  if (cfg.scope == mask_scope::batch && mk.valid > 0) {
    double amax = -std::numeric_limits<double>::infinity(), emin = std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < n; ++i) {
      if (m[i] && !mk.adv[i]) amax = std::max(amax, sig[i]);
      if (m[i] && !mk.ent[i]) emin = std::min(emin, sig[i]);
    }
    if (mk.adv_masked > 0) REQUIRE(s.adv_threshold == amax);
    if (mk.ent_masked > 0) REQUIRE(s.entropy_threshold == emin);
  }
}

template <class T>
std::vector<unsigned char> bytes_of(const step_out<T>& o) {
  std::vector<unsigned char> b;
  auto put = [&](const void* p, std::size_t n) {
    const auto* c = static_cast<const unsigned char*>(p);
    b.insert(b.end(), c, c + n);
  };
  put(o.adv.data(), o.adv.size() * sizeof(T));
  put(o.ret.data(), o.ret.size() * sizeof(T));
  put(o.sd.data(), o.sd.size() * sizeof(T));
  put(o.shards.data(), o.shards.size() * sizeof(T));
  put(o.am.data(), o.am.size());
  put(o.em.data(), o.em.size());
  const auto& s = o.s;
  put(&s.sequences, sizeof s.sequences);
  put(&s.valid_tokens, sizeof s.valid_tokens);
  put(&s.adv_masked, sizeof s.adv_masked);
  put(&s.entropy_masked, sizeof s.entropy_masked);
  put(&s.adv_mask_fraction, sizeof(double));
  put(&s.entropy_filter_fraction, sizeof(double));
  put(&s.adv_threshold, sizeof(double));
  put(&s.entropy_threshold, sizeof(double));
  put(s.std_quantiles, sizeof s.std_quantiles);
  put(&s.advantage_mean, sizeof(double));
  put(&s.advantage_std, sizeof(double));
  put(&s.return_mean, sizeof(double));
  put(&s.return_std, sizeof(double));
  put(s.explained_variance.data(), s.explained_variance.size() * sizeof(double));
  return b;
}

}  // namespace

TEST_CASE("advantage_step: method-spec worked example", "[advantage_step]") {
  step_data<double> d{2, 2, 4, {0.2, 0.4, 0.5, 0.7, 0.1, 0.3, 0.2, 0.0, 0.4, 0.4, 0.9, 0.5, 0.1, 0.5, 0.3, 0.0},
                      {0, 0, 0, 1, 0, 0, 0, 0}, {1, 1, 1, 1, 1, 1, 1, 0}, {5, 6}};
  advantage_config cfg;  // K = 2, k = h = 0.2, gamma = 1
  cfg.lambda_actor = 0.95;
  const auto o = run_step(d, cfg, 1);
  // Hand-checked in method-spec (b); I^A zeroes (0,1), so its advantage 0.566 becomes 0.
  const double wantA[8] = {0.6377, 0, 0.28, 0.4, -0.068125, -0.3875, -0.25, 0};
  for (int i = 0; i < 8; ++i) CHECK(o.adv[i] == Approx(wantA[i]).margin(1e-12));
  const double wantR[8] = {1, 1, 1, 1, 0, 0, 0, 0};  // lambda_c = gamma = 1: the outcome reward
  for (int i = 0; i < 8; ++i) CHECK(o.ret[i] == Approx(wantR[i]).margin(1e-12));
  CHECK(o.am == ref::bytes{1, 0, 1, 1, 1, 1, 1, 0});
  CHECK(o.em == ref::bytes{1, 1, 0, 1, 1, 1, 1, 0});
  CHECK(o.s.valid_tokens == 7);
  CHECK(o.s.adv_masked == 1);
  CHECK(o.s.entropy_masked == 1);
  CHECK(o.s.adv_mask_fraction == 1.0 / 7);
  // sigma sorted: 0, 0, .05, .1, .1, .1, .2; ranks floor(q*6) = 0, 1, 3, 4, 6.
  CHECK(o.s.std_quantiles[0] == 0.0);
  CHECK(o.s.std_quantiles[1] == 0.0);
  CHECK(o.s.std_quantiles[2] == Approx(0.1).margin(1e-15));
  CHECK(o.s.std_quantiles[3] == Approx(0.1).margin(1e-15));
  CHECK(o.s.std_quantiles[4] == Approx(0.2).margin(1e-15));
  // Returns: row 0 all 1, row 1 all 0 -> mean 4/7.
  CHECK(o.s.return_mean == Approx(4.0 / 7).epsilon(1e-14));
  CHECK(o.s.return_std == Approx(std::sqrt(4.0 / 7 * 3.0 / 7)).epsilon(1e-14));
  // Two groups of one (n = 1, e = 1): the extra response rotates, g = 0 -> critic 0, g = 1 -> critic 1.
  CHECK(o.shards == std::vector<double>{1, 0, 0, 1});
}

TEMPLATE_TEST_CASE("advantage_step vs composed reference pieces", "[advantage_step]", float, double) {
  std::uint64_t seed = 100;
  std::mt19937_64 pick(7);
  for (int iter = 0; iter < 16; ++iter) {
    const int K = 1 + iter % 5;
    const int B = std::uniform_int_distribution<int>(1, 40)(pick);
    const int Tn = std::uniform_int_distribution<int>(1, 200)(pick);
    const auto d = make_data<TestType>(seed++, K, B, Tn, iter % 3 == 1);
    advantage_config cfg;
    cfg.critics = K;
    cfg.gamma = iter % 4 == 3 ? 0.97 : 1.0;
    cfg.lambda_actor = iter % 2 ? 0.95 : 1.0;
    cfg.lambda_critic = iter % 5 == 2 ? 0.9 : 1.0;
    cfg.semantics = iter % 3 == 2 ? gae_mask_semantics::step : gae_mask_semantics::skip;
    cfg.scope = iter % 4 == 1 ? mask_scope::sequence : mask_scope::batch;
    cfg.std = iter % 6 == 5 ? std_kind::unbiased : std_kind::population;
    cfg.shards = iter % 2 ? shard_mode::strided : shard_mode::contiguous;
    cfg.adv_mask_fraction = iter % 7 == 0 ? 0.0 : 0.2;
    cfg.entropy_filter_fraction = iter % 5 == 4 ? 0.5 : 0.2;
    if (iter % 8 == 6) {
      cfg.adaptive_lambda_alpha = 0.05;
      cfg.adaptive_lambda_min = 0.9;
    }
    check_step(d, cfg);
    cfg.mask_advantages = false;
    check_step(d, cfg);
  }
}

TEMPLATE_TEST_CASE("advantage_step with whitening (then I^A)", "[advantage_step]", float, double) {
  std::uint64_t seed = 500;
  for (int iter = 0; iter < 6; ++iter) {
    const int K = 2 + iter % 2;
    const auto d = make_data<TestType>(seed++, K, 12 + iter, 64, iter == 3);
    advantage_config cfg;
    cfg.critics = K;
    cfg.lambda_actor = 0.95;
    cfg.whiten_advantages = true;
    cfg.whiten.unbiased = iter % 2 == 0;
    cfg.whiten.eps_placement = iter % 3 == 0 ? eps_mode::floor : eps_mode::add;
    cfg.whiten.shift_mean = iter != 4;
    check_step(d, cfg);
    cfg.mask_advantages = false;
    check_step(d, cfg);
    cfg.statistics = false;
    cfg.mask_advantages = true;
    check_step(d, cfg);
  }
}

TEST_CASE("advantage_step: optional std and shard outputs may be omitted", "[advantage_step]") {
  const auto d = make_data<double>(31, 3, 10, 50, false);
  advantage_config cfg;
  cfg.critics = 3;
  const auto full = run_step(d, cfg, 1, true, true);
  const auto bare = run_step(d, cfg, 1, false, false);
  CHECK(full.adv == bare.adv);
  CHECK(full.ret == bare.ret);
  CHECK(full.am == bare.am);
  CHECK(full.em == bare.em);
  for (auto w : bare.shards) CHECK(w == 9.0);  // untouched
  for (auto s : bare.sd) CHECK(s == 9.0);
}

TEST_CASE("advantage_step: empty batches and all-masked rows are valid", "[advantage_step]") {
  for (auto shape : {std::pair{0, 16}, std::pair{5, 0}, std::pair{0, 0}}) {
    step_data<double> d{2, shape.first, shape.second, {}, {}, {}, std::vector<i64>(static_cast<std::size_t>(shape.first), 1)};
    d.V.resize(static_cast<std::size_t>(2) * shape.first * shape.second);
    d.r.resize(static_cast<std::size_t>(shape.first) * shape.second);
    d.m.resize(static_cast<std::size_t>(shape.first) * shape.second);
    const auto o = run_step(d, advantage_config{}, 2);
    CHECK(o.s.sequences == shape.first);
    CHECK(o.s.valid_tokens == 0);
    CHECK(o.s.adv_masked == 0);
    CHECK(o.s.adv_mask_fraction == 0.0);
    for (double q : o.s.std_quantiles) CHECK(std::isnan(q));
  }
  // Every token masked.
  auto d = make_data<double>(3, 2, 6, 20, false);
  std::fill(d.m.begin(), d.m.end(), std::uint8_t(0));
  for (auto scope : {mask_scope::batch, mask_scope::sequence}) {
    advantage_config cfg;
    cfg.scope = scope;
    const auto o = run_step(d, cfg, 3);
    for (std::size_t i = 0; i < o.adv.size(); ++i) {
      REQUIRE(o.adv[i] == 0.0);
      REQUIRE(o.ret[i] == 0.0);
      REQUIRE(o.am[i] == 0);
      REQUIRE(o.em[i] == 0);
    }
    CHECK(o.s.valid_tokens == 0);
    for (double q : o.s.std_quantiles) CHECK(std::isnan(q));
    CHECK(o.s.advantage_mean == 0.0);
    CHECK(o.s.advantage_std == 0.0);
    check_step(d, cfg);
  }
  // Some all-masked rows among valid ones.
  auto d2 = make_data<double>(4, 2, 8, 30, false);
  for (int b : {0, 3, 7})
    for (int t = 0; t < 30; ++t) d2.m[static_cast<std::size_t>(b) * 30 + t] = 0;
  check_step(d2, advantage_config{});
}

TEMPLATE_TEST_CASE("advantage_step: bit-identical for cpu_backend(1), (2), (3)", "[advantage_step]", float, double) {
  // Large enough for several reduce tiles and parallel histograms (B*T = 48000).
  for (int variant = 0; variant < 3; ++variant) {
    const auto d = make_data<TestType>(900 + static_cast<std::uint64_t>(variant), 2 + variant, 48, 1000, variant == 1);
    advantage_config cfg;
    cfg.critics = 2 + variant;
    cfg.lambda_actor = 0.95;
    cfg.scope = variant == 2 ? mask_scope::sequence : mask_scope::batch;
    cfg.whiten_advantages = variant == 2;
    const auto a = bytes_of(run_step(d, cfg, 1));
    for (int threads = 2; threads <= 3; ++threads) {
      const auto b = bytes_of(run_step(d, cfg, threads));
      REQUIRE(a.size() == b.size());
      REQUIRE(std::memcmp(a.data(), b.data(), a.size()) == 0);
    }
    if (variant == 0) check_step(d, cfg);
  }
}

TEMPLATE_TEST_CASE("advantage_step_to: advantage_step's bits, many critics, threads, empty batches, bad input",
                   "[advantage_step][round_trips]", float, double) {
  using T = TestType;
  // K = 10: the summary takes two passes (8 critics each at most); K = 1: no spread (all sigma 0).
  for (int K : {1, 3, 10})
    for (auto scope : {mask_scope::batch, mask_scope::sequence})
      for (int variant = 0; variant < 3; ++variant) {
        const auto d = make_data<T>(1300 + static_cast<std::uint64_t>(K * 7 + variant), K, 9 + variant, 150, variant == 1);
        advantage_config cfg;
        cfg.critics = K;
        cfg.lambda_actor = 0.95;
        cfg.scope = scope;
        cfg.whiten_advantages = variant == 2;
        cfg.statistics = !(variant == 2 && K == 3);
        for (int threads : {1, 3}) check_step_to(d, cfg, run_step(d, cfg, threads), threads);
      }
  for (auto shape : {std::pair{0, 16}, std::pair{5, 0}, std::pair{4, 7}}) {  // the last one all masked
    step_data<T> d{2, shape.first, shape.second, {}, {}, {}, std::vector<i64>(static_cast<std::size_t>(shape.first), 1)};
    d.V.assign(static_cast<std::size_t>(2) * shape.first * shape.second, T(0.5));
    d.r.assign(static_cast<std::size_t>(shape.first) * shape.second, T(1));
    d.m.assign(static_cast<std::size_t>(shape.first) * shape.second, 0);
    for (auto scope : {mask_scope::batch, mask_scope::sequence}) {
      advantage_config cfg;
      cfg.scope = scope;
      check_step_to(d, cfg, run_step(d, cfg, 2), 2);
    }
  }
  // With the finiteness check: one round trip, and NaN on a valid token throws before any output is
  // written.
  auto d = make_data<T>(77, 2, 6, 40, false);
  advantage_config cfg;
  int trips = -1;
  const auto checked = run_step_to(d, cfg, 2, &trips);
  CHECK(trips == 1);
  CHECK(checked.s.valid_tokens > 0);
  std::size_t i = 0;
  while (!d.m[i]) ++i;
  d.r[i] = std::numeric_limits<T>::quiet_NaN();
  for (bool host_path : {false, true}) {
    step_out<T> o = blank_out(d);
    const advantage_outputs<T> out{{o.adv.data(), 6, 40}, {o.ret.data(), 6, 40}, {o.am.data(), 6, 40},
                                   {o.em.data(), 6, 40}, {o.shards.data(), 2, 6}, {o.sd.data(), 6, 40}};
    std::vector<double> ev(2, 5.0);
    auto call = [&] {
      if (host_path) advantage_step_to(cpu_backend(1), inputs_of(d), out, nullptr, ev.data(), cfg);
      else advantage_step_to(asyppo_test::round_trip_backend(1), inputs_of(d), out, nullptr, ev.data(), cfg);
    };
    REQUIRE_THROWS_WITH(call(), Catch::Contains("advantage_step_to") && Catch::Contains("NaN or Inf"));
    const auto untouched = blank_out(d);
    REQUIRE(bytes_of(o) == bytes_of(untouched));
    REQUIRE(ev == std::vector<double>(2, 5.0));
  }
}
