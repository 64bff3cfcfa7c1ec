// Tests of 16-bit inputs (half_types.hpp: bfloat16, float16; compute_type_t) to the loss and
// advantage entry points. The contract (docs/architecture.md, "16-bit inputs"): each value is read
// exactly (the widening to float is exact) and the call computes as it does on float inputs, writing
// float outputs; so a call on bfloat16 / float16 inputs gives, bit for bit, what the same call gives
// on the inputs widened to float. Checked on random shapes, masks and layouts (the 16-bit inputs in
// padded rows or with elements two apart, NaN in every gap, which no call may read; the float copies
// contiguous, so the float call takes its SIMD paths directly and the 16-bit one through its widened
// rows or the per-token code), for 1 and 2 threads, and for advantage_step_to on the device-posing
// round-trip backend too (its resident path). The losses are also checked against the plain
// references of loss_reference.hpp on the widened values, and every finiteness check against 16-bit
// Inf / NaN: rejected on a valid token with nothing written, ignored on a masked one.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "loss_reference.hpp"
#include "loss_test_util.hpp"
#include "round_trip_backend.hpp"

using namespace asyppo;
using i64 = std::int64_t;

namespace {

/// One [R, C] tensor (a [K,B,T] one is R = K*B rows): 16-bit storage, element (r, c) at
/// r * pitch + c * step (step 1 or 2; pitch >= C * step; every element between holds NaN), and the
/// exact float widening, contiguous.
template <class H>
struct tensor16 {
  index_t R = 0, C = 0, pitch = 0, step = 1;
  std::vector<H> store;
  std::vector<float> wide;
  view<const H, 2> v16() const { return view<const H, 2>::strided(store.data(), {R, C}, {pitch, step}); }
  token_view<const float> v32() const { return token_view<const float>(wide.data(), R, C); }
  critic_view<const H> c16(index_t K) const {
    return critic_view<const H>::strided(store.data(), {K, R / K, C}, {(R / K) * pitch, pitch, step});
  }
  critic_view<const float> c32(index_t K) const { return critic_view<const float>(wide.data(), K, R / K, C); }
  /// The 16-bit views (In = H) or the widened ones (In = float).
  template <class In>
  token_view<const In> tok() const {
    if constexpr (std::is_same_v<In, float>) return v32();
    else return v16();
  }
  template <class In>
  critic_view<const In> crit(index_t K) const {
    if constexpr (std::is_same_v<In, float>) return c32(K);
    else return c16(K);
  }
  lref::vec as_doubles() const { return lref::vec(wide.begin(), wide.end()); }
  /// Sets element (r, c) to x in both (x must be exact in H: Inf, NaN, or a value from H).
  void set(index_t r, index_t c, H x) {
    store[static_cast<std::size_t>(r * pitch + c * step)] = x;
    wide[static_cast<std::size_t>(r * C + c)] = static_cast<float>(x);
  }
};

/// pad >= 2: elements two apart (step 2), else contiguous; rows padded by pad % 2 more.
template <class H>
tensor16<H> random16(std::mt19937_64& rng, index_t R, index_t C, double lo, double hi, index_t pad) {
  tensor16<H> x;
  x.R = R, x.C = C, x.step = pad >= 2 ? 2 : 1, x.pitch = C * x.step + pad % 2;
  std::uniform_real_distribution<double> u(lo, hi);
  x.store.assign(static_cast<std::size_t>(R * x.pitch), H::from_float(std::nanf("")));
  x.wide.resize(static_cast<std::size_t>(R * C));
  for (index_t r = 0; r < R; ++r)
    for (index_t c = 0; c < C; ++c) {
      const H h = H::from_float(static_cast<float>(u(rng)));
      x.store[static_cast<std::size_t>(r * x.pitch + c * x.step)] = h;
      x.wide[static_cast<std::size_t>(r * C + c)] = static_cast<float>(h);
    }
  return x;
}

/// old = x + noise, in H (a log-ratio or value change of either sign).
template <class H>
tensor16<H> nudged(std::mt19937_64& rng, const tensor16<H>& x, double spread) {
  tensor16<H> y = x;
  std::uniform_real_distribution<double> u(-spread, spread);
  for (index_t r = 0; r < x.R; ++r)
    for (index_t c = 0; c < x.C; ++c)
      y.set(r, c, H::from_float(static_cast<float>(static_cast<double>(x.wide[static_cast<std::size_t>(r * x.C + c)]) + u(rng))));
  return y;
}

template <class H>
H inf16() {
  return H::from_float(INFINITY);
}

/// Bit-identical doubles (NaN payloads included) or integers.
template <class A>
bool same(A a, A b) {
  return std::memcmp(&a, &b, sizeof(A)) == 0;
}
template <class T>
bool same_vec(const std::vector<T>& a, const std::vector<T>& b) {
  return lt::bit_equal(a, b);
}

/// A random [B,T] batch shape and response mask (rows may be empty), and the layout (random16's pad).
struct batch_shape {
  index_t B, T, pad;
  lref::bytes m;
};
batch_shape random_shape(std::mt19937_64& rng, index_t max_b = 7, index_t max_t = 70) {
  batch_shape s;
  s.B = 1 + static_cast<index_t>(rng() % static_cast<std::uint64_t>(max_b));
  s.T = 1 + static_cast<index_t>(rng() % static_cast<std::uint64_t>(max_t));
  s.pad = static_cast<index_t>(rng() % 4);
  s.m = lref::random_mask(rng, static_cast<int>(s.B), static_cast<int>(s.T));
  return s;
}

/// The flat index of the first valid token and of the first masked one (-1: none).
std::pair<index_t, index_t> first_valid_and_masked(const lref::bytes& m) {
  index_t v = -1, k = -1;
  for (std::size_t i = 0; i < m.size(); ++i) {
    if (m[i] && v < 0) v = static_cast<index_t>(i);
    if (!m[i] && k < 0) k = static_cast<index_t>(i);
  }
  return {v, k};
}

std::vector<double> fields(const actor_objective_result& r) {
  const auto& p = r.policy.metrics;
  return {r.total, r.policy.loss, static_cast<double>(p.valid_tokens), static_cast<double>(p.adv_masked_tokens),
          static_cast<double>(p.clipped_high_tokens), static_cast<double>(p.clipped_low_tokens),
          static_cast<double>(p.dual_clipped_tokens), p.approx_kl_sum, r.entropy.loss, r.entropy.entropy,
          r.entropy.filtered_entropy, static_cast<double>(r.entropy.metrics.valid_tokens),
          static_cast<double>(r.entropy.metrics.filtered_tokens), r.entropy.metrics.entropy_sum, r.kl.loss, r.kl.kl,
          static_cast<double>(r.kl.metrics.valid_tokens), r.kl.metrics.kl_sum};
}

/// The fields advantage_summary and advantage_step_result share (every one but sequences and the
/// explained variances).
template <class S>
std::vector<double> fields(const S& s) requires requires { s.std_quantiles; } {
  std::vector<double> f{static_cast<double>(s.valid_tokens), static_cast<double>(s.adv_masked),
                        static_cast<double>(s.entropy_masked), s.adv_mask_fraction, s.entropy_filter_fraction,
                        s.adv_threshold, s.entropy_threshold, s.advantage_mean, s.advantage_std, s.return_mean,
                        s.return_std};
  f.insert(f.end(), s.std_quantiles, s.std_quantiles + 5);
  return f;
}

std::vector<double> fields(const critic_loss_metrics& m) {
  return {m.loss, static_cast<double>(m.tokens), static_cast<double>(m.sequences), static_cast<double>(m.clipped_tokens),
          m.squared_error_sum, m.clip_fraction, m.mse, m.explained_variance};
}

}  // namespace

TEMPLATE_TEST_CASE("16-bit inputs: policy_loss, entropy_bonus, kl_loss, kl_values and actor_objective give the float "
                   "call's bits on the widened inputs, and the reference",
                   "[half][losses]", bfloat16, float16) {
  using H = TestType;
  std::mt19937_64 rng(4242);
  for (int rep = 0; rep < 24; ++rep) {
    const batch_shape s = random_shape(rng);
    const index_t B = s.B, T = s.T;
    const auto lp = random16<H>(rng, B, T, -3.0, 0.0, s.pad);
    const auto olp = nudged(rng, lp, rep % 3 == 0 ? 1.0 : 0.3);
    const auto adv = random16<H>(rng, B, T, -2.0, 2.0, s.pad);
    const auto ent = random16<H>(rng, B, T, 0.0, 3.0, s.pad);
    const auto ref = nudged(rng, lp, 0.5);
    const lref::bytes am = lref::random_bits(rng, static_cast<std::size_t>(B * T), 0.8);
    const lref::bytes hm = lref::random_bits(rng, static_cast<std::size_t>(B * T), 0.8);
    const mask_view mask = lt::mk(s.m, B, T), adv_mask = lt::mk(am, B, T), ent_mask = lt::mk(hm, B, T);
    const int mode = rep % lt::kModes;
    const int threads = 1 + rep % 2;
    const cpu_backend be(threads);
    const std::size_t n = static_cast<std::size_t>(B * T);

    // policy_loss
    policy_loss_options po;
    po.clip_high = 0.28;
    po.dual_clip = rep % 2 ? 3.0 : 0.0;
    po.aggregation = lt::mode_of(mode);
    std::vector<float> g16(n, 7.0f), g32(n, 7.0f);
    const auto r16 = policy_loss(be, policy_loss_inputs<H>{lp.v16(), olp.v16(), adv.v16(), mask, adv_mask},
                                 lt::mv(g16, B, T), po);
    const auto r32 = policy_loss(be, policy_loss_inputs<float>{lp.v32(), olp.v32(), adv.v32(), mask, adv_mask},
                                 lt::mv(g32, B, T), po);
    REQUIRE(same(r16.loss, r32.loss));
    REQUIRE(r16.metrics.clipped_high_tokens == r32.metrics.clipped_high_tokens);
    REQUIRE(r16.metrics.dual_clipped_tokens == r32.metrics.dual_clipped_tokens);
    REQUIRE(same(r16.metrics.approx_kl_sum, r32.metrics.approx_kl_sum));
    REQUIRE(same_vec(g16, g32));
    const lref::norm nrm = lref::local_norm(s.m, static_cast<int>(B), static_cast<int>(T));
    const auto pr = lref::policy(lp.as_doubles(), olp.as_doubles(), adv.as_doubles(), s.m, am, static_cast<int>(B),
                                 static_cast<int>(T), {0.2, 0.28, po.dual_clip, 20.0}, mode, nrm);
    CHECK(lt::close(r16.loss, pr.loss, 1e-12, 1e-15));
    CHECK(r16.metrics.clipped_low_tokens == pr.low);
    for (std::size_t i = 0; i < n; ++i) REQUIRE(lt::close(g16[i], pr.grad[i], 2e-7, 1e-30));

    // entropy_bonus
    entropy_bonus_options eo;
    eo.beta = 0.01;
    eo.aggregation = lt::mode_of(mode);
    std::vector<float> h16(n, 7.0f), h32(n, 7.0f);
    const auto e16 = entropy_bonus(be, ent.v16(), mask, ent_mask, lt::mv(h16, B, T), eo);
    const auto e32 = entropy_bonus(be, ent.v32(), mask, ent_mask, lt::mv(h32, B, T), eo);
    REQUIRE(same(e16.loss, e32.loss));
    REQUIRE(same(e16.entropy, e32.entropy));
    REQUIRE(same_vec(h16, h32));
    const auto er = lref::entropy(ent.as_doubles(), s.m, hm, static_cast<int>(B), static_cast<int>(T), 0.01, mode, nrm);
    CHECK(lt::close(e16.filtered_entropy, er.filtered_agg, 1e-12, 1e-15));

    // kl_loss and kl_values
    kl_loss_options ko;
    ko.kl.estimator = static_cast<kl_estimator>(rep % 4);
    ko.coef = 0.05;
    ko.aggregation = lt::mode_of(mode);
    std::vector<float> k16(n, 7.0f), k32(n, 7.0f);
    const auto kr16 = kl_loss(be, lp.v16(), ref.v16(), mask, lt::mv(k16, B, T), ko);
    const auto kr32 = kl_loss(be, lp.v32(), ref.v32(), mask, lt::mv(k32, B, T), ko);
    REQUIRE(same(kr16.loss, kr32.loss));
    REQUIRE(same(kr16.metrics.kl_sum, kr32.metrics.kl_sum));
    REQUIRE(same_vec(k16, k32));
    std::vector<float> kv16(n, 7.0f), kv32(n, 7.0f);
    kl_values(be, lp.v16(), ref.v16(), mask, lt::mv(kv16, B, T), ko.kl);
    kl_values(be, lp.v32(), ref.v32(), mask, lt::mv(kv32, B, T), ko.kl);
    REQUIRE(same_vec(kv16, kv32));

    // actor_objective and actor_objective_to
    actor_objective_options ao;
    ao.clip_high = 0.28;
    ao.dual_clip = po.dual_clip;
    ao.entropy_coef = 0.01;
    ao.kl_coef = 0.05;
    ao.kl = ko.kl;
    ao.aggregation = lt::mode_of(mode);
    ao.normalizer = lt::to_norm(nrm);
    std::vector<float> al16(n, 7.0f), ah16(n, 7.0f), al32(n, 7.0f), ah32(n, 7.0f);
    const actor_objective_inputs<H> ai16{lp.v16(), olp.v16(), adv.v16(), mask, adv_mask, ent.v16(), ent_mask, ref.v16()};
    const actor_objective_inputs<float> ai32{lp.v32(), olp.v32(), adv.v32(), mask, adv_mask, ent.v32(), ent_mask, ref.v32()};
    const auto a16 = actor_objective(be, ai16, {lt::mv(al16, B, T), lt::mv(ah16, B, T)}, ao);
    const auto a32 = actor_objective(be, ai32, {lt::mv(al32, B, T), lt::mv(ah32, B, T)}, ao);
    REQUIRE(same_vec(fields(a16), fields(a32)));
    REQUIRE(same_vec(al16, al32));
    REQUIRE(same_vec(ah16, ah32));
    std::vector<float> bl16(n, 7.0f), bh16(n, 7.0f);
    actor_objective_result to16;
    actor_objective_to(be, ai16, {lt::mv(bl16, B, T), lt::mv(bh16, B, T)}, &to16, ao);
    REQUIRE(same_vec(fields(to16), fields(a32)));
    REQUIRE(same_vec(bl16, al32));
    REQUIRE(same_vec(bh16, ah32));
  }
}

TEMPLATE_TEST_CASE("16-bit inputs: value_loss and value_loss_to give the float call's bits, and the reference",
                   "[half][value]", bfloat16, float16) {
  using H = TestType;
  std::mt19937_64 rng(777);
  for (int rep = 0; rep < 18; ++rep) {
    const batch_shape s = random_shape(rng);
    const index_t B = s.B, T = s.T, K = 1 + rep % 3;
    const auto vo = random16<H>(rng, K * B, T, -1.0, 1.0, s.pad);
    const auto v = nudged(rng, vo, 0.6);
    const auto ret = random16<H>(rng, B, T, -1.0, 1.0, s.pad);
    const auto rk = random16<H>(rng, K * B, T, -1.0, 1.0, s.pad);
    std::vector<float> shard(static_cast<std::size_t>(K * B), 0.0f);
    std::vector<lref::bytes> in_shard(static_cast<std::size_t>(K), lref::bytes(static_cast<std::size_t>(B), 0));
    for (index_t b = 0; b < B; ++b) {
      const index_t k = static_cast<index_t>(rng() % static_cast<std::uint64_t>(K));
      shard[static_cast<std::size_t>(k * B + b)] = 1.0f;
      in_shard[static_cast<std::size_t>(k)][static_cast<std::size_t>(b)] = 1;
    }
    const bool per_critic = rep % 4 == 3;
    const mask_view mask = lt::mk(s.m, B, T);
    value_loss_options o;
    o.clip = rep % 5 == 4 ? 0.0 : 0.2;
    o.aggregation = lt::mode_of(rep % lt::kModes);
    const auto inputs = [&](auto element) {  // element: H (the 16-bit inputs) or float (widened)
      using In = decltype(element);
      value_loss_inputs<In> in;
      in.values = v.template crit<In>(K);
      in.old_values = vo.template crit<In>(K);
      if (per_critic) in.critic_returns = rk.template crit<In>(K);
      else in.returns = ret.template tok<In>();
      in.mask = mask;
      in.shard_weights = view<const float, 2>(shard.data(), K, B);
      return in;
    };
    const value_loss_inputs<H> in16 = inputs(H{});
    const value_loss_inputs<float> in32 = inputs(0.0f);
    const std::size_t kn = static_cast<std::size_t>(K * B * T);
    std::vector<float> g16(kn, 7.0f), g32(kn, 7.0f);
    const cpu_backend be(1 + rep % 2);
    const auto r16 = value_loss(be, in16, critic_view<float>(g16.data(), K, B, T), o);
    const auto r32 = value_loss(be, in32, critic_view<float>(g32.data(), K, B, T), o);
    REQUIRE(same(r16.loss, r32.loss));
    for (index_t k = 0; k < K; ++k) REQUIRE(same_vec(fields(r16.critics[k]), fields(r32.critics[k])));
    REQUIRE(same_vec(g16, g32));
    // The reference on the widened values, critic by critic (its own shard's normaliser).
    const std::size_t bt = static_cast<std::size_t>(B * T);
    const lref::vec V = v.as_doubles(), Vo = vo.as_doubles(), R = ret.as_doubles(), Rk = rk.as_doubles();
    for (index_t k = 0; k < K; ++k) {
      const auto part = [&](const lref::vec& x) {
        return lref::vec(x.begin() + static_cast<std::ptrdiff_t>(k * bt), x.begin() + static_cast<std::ptrdiff_t>((k + 1) * bt));
      };
      lref::bytes ms(bt, 0);
      for (std::size_t i = 0; i < bt; ++i) ms[i] = s.m[i] && in_shard[static_cast<std::size_t>(k)][i / static_cast<std::size_t>(T)];
      lref::vec grad;
      const auto c = lref::value_one(part(V), part(Vo), per_critic ? part(Rk) : R, s.m, in_shard[static_cast<std::size_t>(k)],
                                     static_cast<int>(B), static_cast<int>(T), o.clip, true, rep % lt::kModes,
                                     lref::local_norm(ms, static_cast<int>(B), static_cast<int>(T)), &grad);
      CHECK(lt::close(r16.critics[k].loss, c.loss, 1e-12, 1e-15));
      for (std::size_t i = 0; i < bt; ++i) REQUIRE(lt::close(g16[k * bt + i], grad[i], 2e-7, 1e-30));
    }
    // value_loss_to with this call's normalisers: the same gradients and metrics (sequences -1).
    o.normalizers.clear();
    for (const auto& c : r32.critics) o.normalizers.push_back(c.normalizer);
    std::vector<float> t16(kn, 7.0f);
    std::vector<critic_loss_metrics> m16(static_cast<std::size_t>(K));
    value_loss_to(be, in16, critic_view<float>(t16.data(), K, B, T), m16.data(), o);
    REQUIRE(same_vec(t16, g32));
    for (index_t k = 0; k < K; ++k) {
      critic_loss_metrics want = r32.critics[k];
      want.sequences = -1;
      REQUIRE(same_vec(fields(m16[static_cast<std::size_t>(k)]), fields(want)));
    }
  }
}

TEMPLATE_TEST_CASE("16-bit inputs: ensemble_stats, gae, advantage_step and advantage_step_to give the float call's bits",
                   "[half][advantage]", bfloat16, float16) {
  using H = TestType;
  std::mt19937_64 rng(31337);
  for (int rep = 0; rep < 18; ++rep) {
    const batch_shape s = random_shape(rng, 9, 90);
    const index_t B = s.B, T = s.T, K = 1 + rep % 3;
    const auto values = random16<H>(rng, K * B, T, -1.0, 1.0, s.pad);
    const auto rewards = random16<H>(rng, B, T, -0.2, 0.2, s.pad);
    const mask_view mask = lt::mk(s.m, B, T);
    const std::size_t bt = static_cast<std::size_t>(B * T);
    const cpu_backend be(1 + rep % 2);

    // ensemble_stats, and its mean and std written out here from the widened values (E3, E4).
    std::vector<std::vector<float>> e16(4, std::vector<float>(bt, 7.0f)), e32 = e16;
    const auto outs = [&](std::vector<std::vector<float>>& e) {
      return ensemble_outputs<float>{lt::mv(e[0], B, T), lt::mv(e[1], B, T), lt::mv(e[2], B, T), lt::mv(e[3], B, T)};
    };
    ensemble_stats(be, values.c16(K), mask, outs(e16));
    ensemble_stats(be, values.c32(K), mask, outs(e32));
    for (int j = 0; j < 4; ++j) REQUIRE(same_vec(e16[static_cast<std::size_t>(j)], e32[static_cast<std::size_t>(j)]));
    for (std::size_t i = 0; i < bt; ++i) {
      if (!s.m[i]) continue;
      double mu = 0, q = 0;
      for (index_t k = 0; k < K; ++k) mu += values.wide[static_cast<std::size_t>(k) * bt + i];
      mu /= static_cast<double>(K);
      for (index_t k = 0; k < K; ++k) q += std::pow(values.wide[static_cast<std::size_t>(k) * bt + i] - mu, 2);
      REQUIRE(e16[0][i] == static_cast<float>(mu));
      REQUIRE(lt::close(e16[1][i], std::sqrt(q / static_cast<double>(K)), 1e-6, 1e-30));
    }

    // gae (raw padding every other time: the padding reads the values' mean)
    gae_options go;
    go.lambda_actor = 0.95;
    go.padding = rep % 2 ? padding_mode::raw : padding_mode::zero;
    std::vector<std::vector<float>> g16(3, std::vector<float>(bt, 7.0f)), g32 = g16;
    const auto gouts = [&](std::vector<std::vector<float>>& g) {
      return gae_outputs<float>{lt::mv(g[0], B, T), lt::mv(g[1], B, T), lt::mv(g[2], B, T)};
    };
    gae(be, values.c16(K), rewards.v16(), mask, go, gouts(g16));
    gae(be, values.c32(K), rewards.v32(), mask, go, gouts(g32));
    for (int j = 0; j < 3; ++j) REQUIRE(same_vec(g16[static_cast<std::size_t>(j)], g32[static_cast<std::size_t>(j)]));

    // advantage_step and advantage_step_to (host path on the CPU backend, resident path on the
    // device-posing one).
    std::vector<i64> ids(static_cast<std::size_t>(B));
    for (auto& id : ids) id = static_cast<i64>(rng() % 3);
    advantage_config cfg;
    cfg.critics = K;
    cfg.lambda_actor = 0.95;
    cfg.scope = rep % 3 == 2 ? mask_scope::sequence : mask_scope::batch;
    cfg.whiten_advantages = rep % 4 == 1;
    struct step_out {
      std::vector<float> adv, ret, sd, shards;
      lref::bytes am, em;
    };
    const auto blank = [&] {
      return step_out{std::vector<float>(bt, 7.0f), std::vector<float>(bt, 7.0f), std::vector<float>(bt, 7.0f),
                      std::vector<float>(static_cast<std::size_t>(K * B), 7.0f), lref::bytes(bt, 9), lref::bytes(bt, 9)};
    };
    const auto out_of = [&](step_out& o) {
      return advantage_outputs<float>{lt::mv(o.adv, B, T), lt::mv(o.ret, B, T), mask_out(o.am.data(), B, T),
                                      mask_out(o.em.data(), B, T), view<float, 2>(o.shards.data(), K, B),
                                      lt::mv(o.sd, B, T)};
    };
    const seq_view<const i64> gids(ids.data(), B);
    const advantage_inputs<H> in16{values.c16(K), rewards.v16(), mask, gids};
    const advantage_inputs<float> in32{values.c32(K), rewards.v32(), mask, gids};
    step_out o16 = blank(), o32 = blank();
    const auto s16 = advantage_step(be, in16, out_of(o16), cfg);
    const auto s32 = advantage_step(be, in32, out_of(o32), cfg);
    const auto same_out = [](const step_out& a, const step_out& b) {
      return same_vec(a.adv, b.adv) && same_vec(a.ret, b.ret) && same_vec(a.sd, b.sd) && same_vec(a.shards, b.shards) &&
             a.am == b.am && a.em == b.em;
    };
    REQUIRE(same_out(o16, o32));
    REQUIRE(same_vec(fields(s16), fields(s32)));
    REQUIRE(same_vec(s16.explained_variance, s32.explained_variance));
    for (bool resident : {false, true}) {
      step_out o = blank();
      advantage_step_result res;
      std::vector<double> ev(static_cast<std::size_t>(K), 5.0);
      if (resident) advantage_step_to(asyppo_test::round_trip_backend(1 + rep % 2), in16, out_of(o), &res, ev.data(), cfg);
      else advantage_step_to(be, in16, out_of(o), &res, ev.data(), cfg);
      REQUIRE(same_out(o, o32));
      REQUIRE(same_vec(fields(res), fields(s32)));
      REQUIRE(same_vec(ev, s32.explained_variance));
    }
  }
}

TEMPLATE_TEST_CASE("16-bit inputs: Inf and NaN on a valid token are rejected with nothing written, on a masked one "
                   "ignored",
                   "[half][errors]", bfloat16, float16) {
  using H = TestType;
  std::mt19937_64 rng(99);
  const index_t B = 4, T = 24, K = 2;
  batch_shape s{B, T, 0, lref::random_mask(rng, 4, 24, false)};
  s.m[5] = 0;  // at least one masked token
  const auto [iv, im] = first_valid_and_masked(s.m);
  REQUIRE(iv >= 0);
  REQUIRE(im >= 0);
  const mask_view mask = lt::mk(s.m, B, T);
  const std::size_t bt = static_cast<std::size_t>(B * T);
  const cpu_backend be(2);
  const H bad_values[2] = {inf16<H>(), H::from_float(std::nanf(""))};
  for (const index_t pad : {0, 3})  // contiguous rows (the checks' bit tests), strided ones (per token)
  for (const H bad : bad_values)
    for (const bool on_valid : {true, false}) {
      const index_t at = on_valid ? iv : im;
      auto lp = random16<H>(rng, B, T, -3.0, 0.0, pad);
      const auto olp = nudged(rng, lp, 0.3);
      const auto adv = random16<H>(rng, B, T, -2.0, 2.0, pad);
      auto values = random16<H>(rng, K * B, T, -1.0, 1.0, pad);
      const auto rewards = random16<H>(rng, B, T, -0.2, 0.2, pad);
      lp.set(at / T, at % T, bad);
      values.set(B + at / T, at % T, bad);  // critic 1
      const auto expect = [&](auto&& call) {
        if (on_valid) REQUIRE_THROWS_WITH(call(), Catch::Contains("NaN or Inf"));
        else REQUIRE_NOTHROW(call());
      };
      std::vector<float> g(bt, 7.0f);
      expect([&] { policy_loss(be, policy_loss_inputs<H>{lp.v16(), olp.v16(), adv.v16(), mask}, lt::mv(g, B, T)); });
      if (on_valid) REQUIRE(g == std::vector<float>(bt, 7.0f));
      std::vector<float> vg(static_cast<std::size_t>(K) * bt, 7.0f);
      value_loss_inputs<H> vin;
      vin.values = values.c16(K);
      vin.old_values = values.c16(K);
      vin.returns = rewards.v16();
      vin.mask = mask;
      expect([&] { value_loss(be, vin, critic_view<float>(vg.data(), K, B, T)); });
      if (on_valid) REQUIRE(vg == std::vector<float>(static_cast<std::size_t>(K) * bt, 7.0f));
      std::vector<float> adv_out(bt, 7.0f), ret_out(bt, 7.0f);
      lref::bytes am(bt, 9), em(bt, 9);
      std::vector<i64> ids(static_cast<std::size_t>(B), 1);
      const advantage_inputs<H> ain{values.c16(K), rewards.v16(), mask, seq_view<const i64>(ids.data(), B)};
      const advantage_outputs<float> aout{lt::mv(adv_out, B, T), lt::mv(ret_out, B, T), mask_out(am.data(), B, T),
                                          mask_out(em.data(), B, T)};
      expect([&] { advantage_step(be, ain, aout); });
      expect([&] { advantage_step_to(asyppo_test::round_trip_backend(1), ain, aout, nullptr, nullptr); });
      if (on_valid) {
        REQUIRE(adv_out == std::vector<float>(bt, 7.0f));
        REQUIRE(am == lref::bytes(bt, 9));
      }
      std::vector<float> mean(bt, 7.0f);
      expect([&] { ensemble_stats(be, values.c16(K), mask, ensemble_outputs<float>{lt::mv(mean, B, T)}); });
      if (on_valid) REQUIRE(mean == std::vector<float>(bt, 7.0f));
    }
}
