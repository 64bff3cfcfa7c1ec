// tests/support/backend_conformance.hpp: the algorithms on a backend under test against the CPU
// backend (one test body, every backend: the re-associating tiled_backend, the Thrust backend).
//
// backend_at(seed) returns the backend under test. Integer results (masks, counts, shards, quantiles,
// tie ranks) must be identical; floating-point results may differ by the rounding of a different
// association only. Tolerances, relative to max(1, |x|): double 1e-12 (sums of at most a few
// thousand terms of magnitude <= 1e2 in double); float 2e-6 (one rounding of the double result to
// float, plus its flip when the double values differ in the last bits). Per-token gradients of the
// losses do not depend on any sum (weights come from integer counts): they must be identical.
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "check.hpp"
#include "reference.hpp"

namespace asyppo_conformance {

using namespace asyppo;
using i64 = std::int64_t;

template <class T>
double tol() {
  return sizeof(T) == 4 ? 2e-6 : 1e-12;
}

template <class T>
void require_near(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  require_close(got, ref::widen(want), what, tol<T>());
}

template <class T>
struct batch {
  int K, B, Tn;
  std::vector<T> V, V2, r, lp, olp, H, ref;
  ref::bytes m;
  std::vector<i64> ids;
  std::vector<T> scores;
};

template <class T>
batch<T> make(std::uint64_t seed, int K, int B, int Tn, int distinct_sigma = 0) {
  std::mt19937_64 rng(seed);
  batch<T> d{K, B, Tn, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  d.V = ref::as<T>(ref::random_vec(rng, static_cast<std::size_t>(K) * B * Tn, -1, 2));
  if (distinct_sigma > 0)  // few distinct values: heavy ties in sigma
    for (auto& x : d.V) x = static_cast<T>(std::floor(static_cast<double>(x) * distinct_sigma) / distinct_sigma);
  d.V2 = ref::as<T>(ref::random_vec(rng, d.V.size(), -1, 2));
  d.r = ref::as<T>(ref::random_vec(rng, static_cast<std::size_t>(B) * Tn, -1, 1));
  d.olp = ref::as<T>(ref::random_vec(rng, d.r.size(), -3, 0));
  d.lp = d.olp;
  for (auto& x : d.lp) x = static_cast<T>(static_cast<double>(x) + std::uniform_real_distribution<double>(-0.6, 0.6)(rng));
  d.H = ref::as<T>(ref::random_vec(rng, d.r.size(), 0, 3));
  d.ref = ref::as<T>(ref::random_vec(rng, d.r.size(), -3, 0));
  d.m = ref::random_mask(rng, B, Tn);
  for (int b = 0; b < B; ++b) d.ids.push_back(static_cast<i64>(rng() % 5));
  d.scores = ref::as<T>(ref::random_vec(rng, static_cast<std::size_t>(B), 0, 1));
  return d;
}

/// advantage_step, or (resident) advantage_step_to with its result read back into a summary. T: any
/// input type (the outputs are compute_type_t<T>).
template <class T, class Backend>
std::pair<advantage_summary, std::vector<std::vector<double>>> step(const Backend& be, const batch<T>& d,
                                                                     const advantage_config& cfg, bool resident = false) {
  using C = compute_type_t<T>;
  const std::size_t n = static_cast<std::size_t>(d.B) * d.Tn;
  std::vector<C> adv(n), ret(n), sd(n), w(static_cast<std::size_t>(d.K) * d.B);
  ref::bytes am(n), em(n);
  const advantage_inputs<T> in{
      {d.V.data(), d.K, d.B, d.Tn}, {d.r.data(), d.B, d.Tn}, {d.m.data(), d.B, d.Tn}, {d.ids.data(), d.B}};
  advantage_outputs<C> out{{adv.data(), d.B, d.Tn}, {ret.data(), d.B, d.Tn}, {am.data(), d.B, d.Tn},
                           {em.data(), d.B, d.Tn}, {w.data(), d.K, d.B}, {sd.data(), d.B, d.Tn}};
  advantage_summary s;
  if (resident) {
    advantage_step_result r;
    s.explained_variance.assign(static_cast<std::size_t>(d.K), 0.0);
    advantage_step_to(be, in, out, &r, s.explained_variance.data(), cfg);
    s.valid_tokens = r.valid_tokens, s.adv_masked = r.adv_masked, s.entropy_masked = r.entropy_masked;
    for (int q = 0; q < 5; ++q) s.std_quantiles[q] = r.std_quantiles[q];
    s.return_mean = r.return_mean, s.advantage_std = r.advantage_std;
  } else {
    s = advantage_step(be, in, out, cfg);
  }
  return {s, {ref::widen(adv), ref::widen(ret), ref::widen(sd), ref::widen(w),
              std::vector<double>(am.begin(), am.end()), std::vector<double>(em.begin(), em.end())}};
}


template <class T, class Make>
void conformance_advantage_step(const Make& backend_at) {
  for (std::uint64_t seed : {1u, 2u, 3u})
    for (int ties : {0, 3})
      for (int variant = 0; variant < 4; ++variant) {
        const auto d = make<T>(seed, 2 + (variant == 3 ? 1 : 0), 9, 70, ties);
        advantage_config cfg;
        cfg.critics = d.K;
        cfg.lambda_actor = 0.95;
        cfg.gamma = variant == 1 ? 0.97 : 1.0;
        cfg.whiten_advantages = variant == 2;
        cfg.scope = variant == 3 ? mask_scope::sequence : mask_scope::batch;
        cfg.semantics = variant == 1 ? gae_mask_semantics::step : gae_mask_semantics::skip;
        INFO("seed " << seed << " ties " << ties << " variant " << variant);
        const auto [s0, o0] = step(cpu_backend(1), d, cfg);
        // The resident variant (advantage_step_to, every other configuration; checks off) on this
        // backend: the same checks.
        const bool resident = (seed + static_cast<std::uint64_t>(variant)) % 2 == 1;
        INFO("resident " << resident);
        if (resident) cfg.check_finite = false;
        const auto [s1, o1] = step(backend_at(seed * 11 + static_cast<std::uint64_t>(variant)), d, cfg, resident);
        for (int k = 0; k < 2; ++k) require_close(o1[static_cast<std::size_t>(k)], o0[static_cast<std::size_t>(k)], k ? "returns" : "advantages", 50 * tol<T>());
        CHECK(o1[2] == o0[2]);  // sigma: per token, no sum
        CHECK(o1[3] == o0[3]);  // shards
        CHECK(o1[4] == o0[4]);  // advantage mask
        CHECK(o1[5] == o0[5]);  // entropy mask
        CHECK(s1.valid_tokens == s0.valid_tokens);
        CHECK(s1.adv_masked == s0.adv_masked);
        CHECK(s1.entropy_masked == s0.entropy_masked);
        for (int q = 0; q < 5; ++q) CHECK(std::memcmp(&s1.std_quantiles[q], &s0.std_quantiles[q], sizeof(double)) == 0);
        CHECK(s1.return_mean == Approx(s0.return_mean).margin(1e-12));
        CHECK(s1.advantage_std == Approx(s0.advantage_std).margin(1e-9));
        for (std::size_t k = 0; k < s0.explained_variance.size(); ++k)
          if (!std::isnan(s0.explained_variance[k]))
            CHECK(s1.explained_variance[k] == Approx(s0.explained_variance[k]).margin(1e-9));
      }
}

template <class T, class Make>
void conformance_baselines(const Make& backend_at) {
  for (std::uint64_t seed : {4u, 5u}) {
    const auto d = make<T>(seed, 1, 13, 40);
    const std::size_t n = static_cast<std::size_t>(d.B) * d.Tn;
    const mask_view mv(d.m.data(), d.B, d.Tn);
    auto grpo = [&](const auto& be, bool rloo) {
      std::vector<T> a(n), s(static_cast<std::size_t>(d.B));
      const outcome_outputs<T> out{{a.data(), d.B, d.Tn}, {s.data(), d.B}};
      if (rloo) rloo_advantages(be, seq_view<const T>(d.scores.data(), d.B), seq_view<const i64>(d.ids.data(), d.B), mv, out);
      else grpo_advantages(be, seq_view<const T>(d.scores.data(), d.B), seq_view<const i64>(d.ids.data(), d.B), mv, out);
      return a;
    };
    for (bool rloo : {false, true}) require_near(grpo(backend_at(seed), rloo), grpo(cpu_backend(1), rloo), "group baseline");
    auto rfpp = [&](const auto& be) {
      std::vector<T> a(n);
      reinforce_options o;
      o.gamma = 0.9;
      reinforce_pp_advantages(be, token_view<const T>(d.r.data(), d.B, d.Tn), mv, token_view<T>(a.data(), d.B, d.Tn), o);
      return a;
    };
    require_close(rfpp(backend_at(seed + 1)), ref::widen(rfpp(cpu_backend(1))), "reinforce++", 50 * tol<T>());
    auto white = [&](const auto& be) {
      std::vector<T> a(n);
      masked_whiten(be, token_view<const T>(d.r.data(), d.B, d.Tn), mv, token_view<T>(a.data(), d.B, d.Tn));
      return a;
    };
    require_near(white(backend_at(seed + 2)), white(cpu_backend(1)), "whitening");
  }
}

template <class T, class Make>
void conformance_losses(const Make& backend_at) {
  for (std::uint64_t seed : {6u, 7u})
    for (auto mode : {loss_aggregation::token_mean, loss_aggregation::seq_mean_token_mean}) {
      const auto d = make<T>(seed, 2, 11, 50);
      const std::size_t n = static_cast<std::size_t>(d.B) * d.Tn;
      const mask_view mv(d.m.data(), d.B, d.Tn);
      std::vector<T> adv = d.r;
      auto actor = [&](const auto& be) {
        std::vector<T> gl(n), gh(n);
        actor_objective_options o;
        o.aggregation = mode;
        o.dual_clip = 3;
        o.entropy_coef = 0.01;
        o.kl_coef = 0.1;
        const auto r = actor_objective(be,
                                       actor_objective_inputs<T>{{d.lp.data(), d.B, d.Tn}, {d.olp.data(), d.B, d.Tn},
                                                                        {adv.data(), d.B, d.Tn}, mv, {}, {d.H.data(), d.B, d.Tn},
                                                                        {}, {d.ref.data(), d.B, d.Tn}},
                                       actor_objective_outputs<T>{{gl.data(), d.B, d.Tn}, {gh.data(), d.B, d.Tn}}, o);
        return std::make_tuple(r.total, gl, gh, r.policy.metrics.clipped_tokens());
      };
      const auto [t0, gl0, gh0, c0] = actor(cpu_backend(1));
      const auto [t1, gl1, gh1, c1] = actor(backend_at(seed));
      CHECK(t1 == Approx(t0).epsilon(1e-12).margin(1e-12));
      CHECK(gl1 == gl0);
      CHECK(gh1 == gh0);
      CHECK(c1 == c0);
      std::vector<T> shard(static_cast<std::size_t>(d.K) * d.B);
      shard_weights(cpu_backend(1), seq_view<const i64>(d.ids.data(), d.B), d.K, view<T, 2>(shard.data(), d.K, d.B));
      auto critic = [&](const auto& be) {
        std::vector<T> g(static_cast<std::size_t>(d.K) * n);
        value_loss_options o;
        o.aggregation = mode;
        const auto r = value_loss(be,
                                  value_loss_inputs<T>{{d.V.data(), d.K, d.B, d.Tn}, {d.V2.data(), d.K, d.B, d.Tn},
                                                              {d.r.data(), d.B, d.Tn}, {}, mv, {shard.data(), d.K, d.B}},
                                  critic_view<T>(g.data(), d.K, d.B, d.Tn), o);
        return std::make_pair(r, g);
      };
      const auto [v0, g0] = critic(cpu_backend(1));
      const auto [v1, g1] = critic(backend_at(seed + 5));
      CHECK(g1 == g0);
      for (int k = 0; k < d.K; ++k) {
        CHECK(v1.critics[static_cast<std::size_t>(k)].loss == Approx(v0.critics[static_cast<std::size_t>(k)].loss).epsilon(1e-12).margin(1e-12));
        CHECK(v1.critics[static_cast<std::size_t>(k)].clipped_tokens == v0.critics[static_cast<std::size_t>(k)].clipped_tokens);
      }
    }
}

/// 16-bit inputs (half_types.hpp) on the backend under test: advantage_step (and advantage_step_to),
/// actor_objective and value_loss on bfloat16 / float16 inputs give the bits of the same backend's call
/// on the float values they widen to (both make the same backend calls in the same order, so a backend
/// made from the same seed tiles them alike).
template <class H, class Make>
void conformance_half_inputs(const Make& backend_at) {
  for (std::uint64_t seed : {8u, 9u}) {
    const auto f = make<float>(seed, 2, 9, 70, seed == 9 ? 3 : 0);  // seed 9: heavy sigma ties
    batch<H> h{f.K, f.B, f.Tn, {}, {}, {}, {}, {}, {}, {}, f.m, f.ids, {}};
    batch<float> w = f;  // the 16-bit values, widened (exact)
    const auto narrow = [](const std::vector<float>& x, std::vector<H>& n, std::vector<float>& back) {
      n.resize(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) n[i] = H::from_float(x[i]), back[i] = static_cast<float>(n[i]);
    };
    narrow(f.V, h.V, w.V), narrow(f.V2, h.V2, w.V2), narrow(f.r, h.r, w.r), narrow(f.lp, h.lp, w.lp);
    narrow(f.olp, h.olp, w.olp), narrow(f.H, h.H, w.H), narrow(f.ref, h.ref, w.ref);
    INFO("seed " << seed);
    for (bool resident : {false, true}) {
      advantage_config cfg;
      cfg.lambda_actor = 0.95;
      cfg.check_finite = !resident;
      cfg.scope = seed == 9 ? mask_scope::sequence : mask_scope::batch;
      const auto [s16, o16] = step(backend_at(seed), h, cfg, resident);
      const auto [s32, o32] = step(backend_at(seed), w, cfg, resident);
      CHECK(o16 == o32);
      CHECK(s16.adv_masked == s32.adv_masked);
      for (int q = 0; q < 5; ++q) CHECK(std::memcmp(&s16.std_quantiles[q], &s32.std_quantiles[q], sizeof(double)) == 0);
      CHECK(std::memcmp(&s16.advantage_std, &s32.advantage_std, sizeof(double)) == 0);
    }
    const std::size_t n = static_cast<std::size_t>(f.B) * f.Tn;
    const mask_view mv(f.m.data(), f.B, f.Tn);
    std::vector<float> shard(static_cast<std::size_t>(f.K) * f.B);
    shard_weights(cpu_backend(1), seq_view<const i64>(f.ids.data(), f.B), f.K, view<float, 2>(shard.data(), f.K, f.B));
    const auto losses = [&](const auto& d) {
      using In = typename std::decay_t<decltype(d.V)>::value_type;
      const auto tv = [&](const std::vector<In>& x) { return token_view<const In>(x.data(), d.B, d.Tn); };
      std::vector<float> gl(n), gh(n), gv(static_cast<std::size_t>(d.K) * n);
      actor_objective_options ao;
      ao.dual_clip = 3;
      ao.entropy_coef = 0.01;
      ao.kl_coef = 0.1;
      const auto a = actor_objective(backend_at(seed + 1),
                                     actor_objective_inputs<In>{tv(d.lp), tv(d.olp), tv(d.r), mv, {}, tv(d.H), {}, tv(d.ref)},
                                     actor_objective_outputs<float>{{gl.data(), d.B, d.Tn}, {gh.data(), d.B, d.Tn}}, ao);
      const auto v = value_loss(backend_at(seed + 2),
                                value_loss_inputs<In>{{d.V.data(), d.K, d.B, d.Tn}, {d.V2.data(), d.K, d.B, d.Tn}, tv(d.r),
                                                      {}, mv, {shard.data(), d.K, d.B}},
                                critic_view<float>(gv.data(), d.K, d.B, d.Tn));
      return std::make_tuple(std::vector<double>{a.total, a.policy.metrics.approx_kl_sum, a.entropy.entropy, a.kl.kl,
                                                 v.critics[0].loss, v.critics[1].explained_variance},
                             gl, gh, gv);
    };
    const auto r16 = losses(h);
    const auto r32 = losses(w);
    CHECK(std::memcmp(std::get<0>(r16).data(), std::get<0>(r32).data(), 6 * sizeof(double)) == 0);
    CHECK(std::get<1>(r16) == std::get<1>(r32));
    CHECK(std::get<2>(r16) == std::get<2>(r32));
    CHECK(std::get<3>(r16) == std::get<3>(r32));
  }
}

/// The critic heads (H1-H4), a trunk per critic and a shared trunk: values, dW, dc, dH against the CPU
/// backend. The values and dc are row reductions (to rounding); dW (fixed token tiles) and dH are per
/// element with a fixed order (identical).
template <class T, class Make>
void conformance_critic_heads(const Make& backend_at) {
  const int K = 2, N = 333, D = 21;
  std::mt19937_64 rng(23);
  std::uniform_real_distribution<double> u(-1, 1);
  auto fill = [&](std::size_t n) {
    std::vector<T> v(n);
    for (auto& x : v) x = static_cast<T>(u(rng));
    return v;
  };
  for (bool shared : {false, true}) {
    CAPTURE(shared);
    const std::size_t trunks = shared ? 1 : K;
    const auto h = fill(trunks * N * D), w = fill(static_cast<std::size_t>(K) * D), c = fill(K),
               g = fill(static_cast<std::size_t>(K) * N);
    const auto hv = view<const T, 3>::strided(h.data(), {K, N, D}, {shared ? 0 : index_t(N) * D, D, 1});
    auto run = [&](const auto& be) {
      std::vector<T> v(static_cast<std::size_t>(K) * N), dw(static_cast<std::size_t>(K) * D), dc(K), dh(h.size());
      critic_heads_forward(be, hv, view<const T, 2>(w.data(), K, D), seq_view<const T>(c.data(), K),
                           view<T, 2>(v.data(), K, N));
      critic_heads_backward(be, hv, view<const T, 2>(w.data(), K, D), view<const T, 2>(g.data(), K, N),
                            critic_head_gradients<T>{{dw.data(), K, D}, {dc.data(), K},
                                                     view<T, 3>::strided(dh.data(), {K, N, D}, {shared ? 0 : index_t(N) * D, D, 1})});
      return std::make_tuple(v, dw, dc, dh);
    };
    const auto [v0, dw0, dc0, dh0] = run(cpu_backend(1));
    const auto [v1, dw1, dc1, dh1] = run(backend_at(31));
    require_near(v1, v0, "values");
    CHECK(dw1 == dw0);
    require_near(dc1, dc0, "dc");
    CHECK(dh1 == dh0);
  }
}

}  // namespace asyppo_conformance
