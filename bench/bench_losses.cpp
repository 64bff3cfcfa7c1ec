// bench_losses: Google Benchmark of the loss-side algorithms (issue 3) on the CPU backend: every loss
// evaluated WITH its gradient.
//
// Shapes B x T = 64 x 512 and 256 x 4096, K = 2 critics, float, a synthetic training batch (long-tailed
// response lengths and observation holes as in bench_advantage.cpp, so about 26 % of positions are
// valid; log-probs with a small policy drift plus a few huge log-ratios that hit the +-20 clamp; 80 %
// random I^A and I^H masks; K = 2 critics with old values near the new ones so value clipping is active;
// critic shards of 4 + 4 rows per group of 8). For each loss:
//   <loss>/<B>x<T>/asyppo/threads:1 and threads:2   the library call (cpu_backend(threads)), defaults
//                                                    (check_finite = true, local normaliser)
//   <loss>/<B>x<T>/naive                             a plain single-threaded version written the
//                                                    obvious way (PyTorch-like: separate passes for the
//                                                    row lengths, the ratio, the clipped loss, the row
//                                                    sums, the gradient and the metrics, float tensors,
//                                                    temporaries allocated once outside the timed loop)
// The losses (all with seq-mean-token-mean aggregation, the library default, AsyPPO E15):
//   policy_loss      clipped surrogate, eps_low 0.2, eps_high 0.28, dual clip c = 3, clamp 20, with
//                    I^A; value + grad_logp + clip metrics
//   actor_objective  surrogate with I^A + entropy bonus (beta = 1e-3) with I^H + k3 KL (kappa = 1e-3);
//                    value + grad_logp + grad_entropy
//   value_loss       K = 2 critics, clipped (c = 0.2), half, shard weights, per-critic normaliser;
//                    value + grad_values + clip fraction, mse, explained variance
//   aggregate_loss   Agg(l) with the weights output dAgg/dl
//   kl_loss          k3 (low_var_kl, clamped) with grad_logp
//   entropy_bonus    -beta Agg(I^H H) with grad_entropy
// actor_objective/256x4096/{bfloat16,float16}/threads:N: the same call on 16-bit inputs (the batch
// rounded; read exactly, each row span widened into float buffers, then the float SIMD code).
// <loss>/256x4096/simd:W/threads:1 (W = 1, 2, 4) caps the SIMD width of the per-token kernels of
// policy_loss, actor_objective and value_loss (core/simd/; 1 = the scalar code; the CPU's widest is
// the default above), plus loss_part/... (policy_loss pieces through the public API, and two hand-fused reference loops that
// show what one streaming pass costs on this machine) and membw/... (streaming kernels over 64 MiB
// arrays with 1 and 2 std::threads), so results can be put against the machine's bandwidth in the
// same run.
//
// Counters:
//   bytes_per_second  minimum bytes that must be streamed / real time: every input read once plus
//                     every output written once, over the full [B,T] (or [K,B,T]) arrays (the loss
//                     cannot know which positions are valid without reading the mask, and a dense
//                     gradient has to be written everywhere). With s = sizeof(float) = 4, BT = B*T,
//                     masks 1 byte, per benchmark (formulas in bytes_* below):
//                       policy_loss      3 BT s (logp, old_logp, A) + 2 BT (mask, I^A) + BT s (grad)
//                       actor_objective  5 BT s (logp, old, A, H, ref) + 3 BT (mask, I^A, I^H)
//                                        + 2 BT s (grad_logp, grad_entropy)
//                       value_loss       2 K BT s (V, V_old) + BT s (R) + BT (mask) + K B s (shards)
//                                        + K BT s (grad_values)
//                       aggregate_loss   BT s (l) + BT (mask) + BT s (weights)
//                       kl_loss          2 BT s (logp, ref) + BT (mask) + BT s (grad)
//                       entropy_bonus    BT s (H) + 2 BT (mask, I^H) + BT s (grad)
//                     Temporaries, the [B] row-weight table and scalar results are not counted.
//   items_per_second  tokens (B*T positions) per second.
// All benchmarks use real time (UseRealTime), so multi-threaded runs are measured by wall clock.
// A correctness cross-check of library vs naive (loss values, max |grad| difference, metrics) runs
// once at start-up and prints to stderr. Expect one visible difference: the value-loss clip fraction.
// The naive version computes v_clip = v_old + clamp(v - v_old) in float, as PyTorch float32 does, and
// that rounds to a value one ulp away from v for about 1 % of the unclipped tokens, which then count as
// "clipped" (vf2 > vf1 by a rounding); the library computes in double, where v_old + (v - v_old) == v
// exactly for float inputs. Losses and gradients agree (the gradient through v_clip is 1 there).
#include <benchmark/benchmark.h>

#include "common.hpp"
#include "synthetic_rollout.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "asyppo/asyppo.hpp"

namespace {

using asyppo_bench::set_counters;

using asyppo::index_t;
using F = float;

constexpr index_t kK = 2;
constexpr int kGroup = 8;  // responses per prompt

// Loss options shared by the library calls and the naive versions.
constexpr double kClipLow = 0.2, kClipHigh = 0.28, kDualClip = 3.0, kLogRatioClamp = 20.0;
constexpr double kBeta = 1e-3, kKappa = 1e-3, kValueClip = 0.2;

// ---------------------------------------------------------------------------------------------
// Synthetic batch (fixed seed).
struct batch {
  index_t K = 0, B = 0, T = 0;
  std::vector<std::uint8_t> mask, adv_mask, ent_mask;  // [B,T]
  std::vector<F> logp, old_logp, ref_logp, adv, entropy, loss;  // [B,T]
  std::vector<F> values, old_values;  // [K,B,T]
  std::vector<F> returns;             // [B,T]
  std::vector<F> shard;               // [K,B] 0/1
};

batch make_batch(index_t B, index_t T, std::uint64_t seed = 7) {
  batch d;
  d.K = kK;
  d.B = B;
  d.T = T;
  const std::size_t BT = static_cast<std::size_t>(B * T);
  d.mask.assign(BT, 0);
  d.adv_mask.assign(BT, 0);
  d.ent_mask.assign(BT, 0);
  for (auto* v : {&d.logp, &d.old_logp, &d.ref_logp, &d.adv, &d.entropy, &d.loss, &d.returns}) v->assign(BT, F(0));
  d.values.assign(kK * BT, F(0));
  d.old_values.assign(kK * BT, F(0));
  d.shard.assign(static_cast<std::size_t>(kK * B), F(0));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto len_dist = asyppo_bench::response_lengths(T);
  for (index_t b = 0; b < B; ++b) {
    // Shards: the first half of each group of 8 to critic 0, the second half to critic 1.
    d.shard[static_cast<std::size_t>(((b % kGroup) < kGroup / 2 ? 0 : 1) * B + b)] = F(1);
    std::uint8_t* m = d.mask.data() + b * T;
    const index_t L = asyppo_bench::draw_response_mask(rng, len_dist, m, T);
    const double row_adv = normal(rng);  // sequence-level advantage, plus token noise below
    for (index_t t = 0; t < L; ++t) {
      const std::size_t i = static_cast<std::size_t>(b * T + t);
      if (!m[t]) continue;
      const double lp = -std::abs(normal(rng)) * 1.5 - 0.01;
      double dlt = 0.15 * normal(rng);                  // policy drift: ~15-20 % of tokens clipped
      if (unif(rng) < 1e-3) dlt = unif(rng) < 0.5 ? -25.0 : 25.0;  // hits the log-ratio clamp
      d.logp[i] = static_cast<F>(lp);
      d.old_logp[i] = static_cast<F>(lp - dlt);
      d.ref_logp[i] = static_cast<F>(lp + 0.1 * normal(rng));
      d.adv[i] = static_cast<F>(row_adv + 0.3 * normal(rng));
      d.entropy[i] = static_cast<F>(2.0 * std::abs(normal(rng)));
      d.loss[i] = static_cast<F>(normal(rng));
      d.adv_mask[i] = unif(rng) < 0.8 ? 1 : 0;
      d.ent_mask[i] = unif(rng) < 0.8 ? 1 : 0;
      const double R = unif(rng);
      d.returns[i] = static_cast<F>(R);
      for (index_t k = 0; k < kK; ++k) {
        const double v = R + 0.1 * normal(rng);
        d.values[static_cast<std::size_t>(k) * BT + i] = static_cast<F>(v);
        d.old_values[static_cast<std::size_t>(k) * BT + i] = static_cast<F>(v + 0.15 * normal(rng));
      }
    }
  }
  return d;
}

const batch& get_batch(index_t B, index_t T) {
  static std::map<std::pair<index_t, index_t>, std::unique_ptr<batch>> cache;
  auto& p = cache[{B, T}];
  if (!p) p = std::make_unique<batch>(make_batch(B, T));
  return *p;
}

asyppo::token_view<const F> tok(const std::vector<F>& v, const batch& d) { return {v.data(), d.B, d.T}; }
asyppo::token_view<F> tok_out(std::vector<F>& v, const batch& d) { return {v.data(), d.B, d.T}; }
asyppo::mask_view msk(const std::vector<std::uint8_t>& m, const batch& d) { return {m.data(), d.B, d.T}; }
asyppo::critic_view<const F> crit(const std::vector<F>& v, const batch& d) { return {v.data(), d.K, d.B, d.T}; }

// ---------------------------------------------------------------------------------------------
// Library calls.
asyppo::policy_loss_options policy_opts() {
  asyppo::policy_loss_options o;
  o.clip_low = kClipLow;
  o.clip_high = kClipHigh;
  o.dual_clip = kDualClip;
  o.log_ratio_clamp = kLogRatioClamp;
  return o;
}
asyppo::policy_loss_result lib_policy(const asyppo::cpu_backend& be, const batch& d, std::vector<F>& grad,
                                      bool check_finite = true) {
  asyppo::policy_loss_options o = policy_opts();
  o.check_finite = check_finite;
  return asyppo::policy_loss(
      be, asyppo::policy_loss_inputs<F>{tok(d.logp, d), tok(d.old_logp, d), tok(d.adv, d), msk(d.mask, d), msk(d.adv_mask, d)},
      tok_out(grad, d), o);
}

/// The actor objective's inputs in In (F, or a 16-bit type: the batch's values rounded, what a bf16 or
/// fp16 policy would hand over); the masks are the batch's.
template <class In>
struct actor_tensors {
  std::vector<In> logp, old_logp, adv, entropy, ref_logp;
  asyppo::actor_objective_inputs<In> inputs(const batch& d) const {
    const auto v = [&](const std::vector<In>& x) { return asyppo::token_view<const In>(x.data(), d.B, d.T); };
    return {v(logp),         v(old_logp), v(adv), msk(d.mask, d), msk(d.adv_mask, d), v(entropy),
            msk(d.ent_mask, d), v(ref_logp)};
  }
};
template <class H>
const actor_tensors<H>& get_half_actor(const batch& d) {
  static std::map<const batch*, std::unique_ptr<actor_tensors<H>>> cache;
  auto& p = cache[&d];
  if (!p) {
    p = std::make_unique<actor_tensors<H>>();
    const auto round = [](const std::vector<F>& x) {
      std::vector<H> r(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) r[i] = H::from_float(x[i]);
      return r;
    };
    *p = {round(d.logp), round(d.old_logp), round(d.adv), round(d.entropy), round(d.ref_logp)};
  }
  return *p;
}

template <class In = F>
asyppo::actor_objective_result lib_actor(const asyppo::cpu_backend& be, const batch& d, std::vector<F>& gl,
                                         std::vector<F>& gh, const actor_tensors<In>* in16 = nullptr) {
  asyppo::actor_objective_options o;
  o.clip_low = kClipLow;
  o.clip_high = kClipHigh;
  o.dual_clip = kDualClip;
  o.log_ratio_clamp = kLogRatioClamp;
  o.entropy_coef = kBeta;
  o.kl_coef = kKappa;  // kl estimator: k3 with clamps (default)
  const asyppo::actor_objective_outputs<F> out{tok_out(gl, d), tok_out(gh, d)};
  if constexpr (!std::is_same_v<In, F>) {
    return asyppo::actor_objective(be, in16->inputs(d), out, o);
  } else {
    asyppo::actor_objective_inputs<F> in{tok(d.logp, d),    tok(d.old_logp, d),  tok(d.adv, d),
                                         msk(d.mask, d),    msk(d.adv_mask, d),  tok(d.entropy, d),
                                         msk(d.ent_mask, d), tok(d.ref_logp, d)};
    return asyppo::actor_objective(be, in, out, o);
  }
}

asyppo::value_loss_result lib_value(const asyppo::cpu_backend& be, const batch& d, std::vector<F>& grad) {
  asyppo::value_loss_options o;
  o.clip = kValueClip;
  o.half = true;
  asyppo::value_loss_inputs<F> in{crit(d.values, d),  crit(d.old_values, d), tok(d.returns, d), {},
                                  msk(d.mask, d),     asyppo::view<const F, 2>(d.shard.data(), d.K, d.B)};
  return asyppo::value_loss(be, in, asyppo::critic_view<F>(grad.data(), d.K, d.B, d.T), o);
}

asyppo::aggregation_result lib_aggregate(const asyppo::cpu_backend& be, const batch& d, std::vector<F>& wout) {
  return asyppo::aggregate_loss(be, tok(d.loss, d), msk(d.mask, d), asyppo::loss_aggregation::seq_mean_token_mean, {},
                                tok_out(wout, d));
}

asyppo::kl_loss_result lib_kl(const asyppo::cpu_backend& be, const batch& d, std::vector<F>& grad) {
  asyppo::kl_loss_options o;
  o.coef = kKappa;
  return asyppo::kl_loss(be, tok(d.logp, d), tok(d.ref_logp, d), msk(d.mask, d), tok_out(grad, d), o);
}

asyppo::entropy_bonus_result lib_entropy(const asyppo::cpu_backend& be, const batch& d, std::vector<F>& grad) {
  asyppo::entropy_bonus_options o;
  o.beta = kBeta;
  return asyppo::entropy_bonus(be, tok(d.entropy, d), msk(d.mask, d), msk(d.ent_mask, d), tok_out(grad, d), o);
}

// ---------------------------------------------------------------------------------------------
// Naive baselines: plain single-threaded loops, the way a PyTorch user writes the loss, one "tensor
// op" per pass: float per-token math, double sums (torch's float reductions are pairwise; a plain
// float sum over 10^6 tokens would lose digits). Temporaries are allocated once by the caller.

struct naive_tmp {
  std::vector<double> rowlen;        // [B] L_b
  std::vector<double> rowsum;        // [B]
  std::vector<F> ratio, l1, l2, pg;  // [B,T]
  std::vector<F> delta, kl, h;       // [B,T]
  std::vector<F> v_clip, vf1, vf2;   // [B,T]
  explicit naive_tmp(const batch& d) {
    const std::size_t BT = static_cast<std::size_t>(d.B * d.T);
    rowlen.resize(static_cast<std::size_t>(d.B));
    rowsum.resize(static_cast<std::size_t>(d.B));
    for (auto* v : {&ratio, &l1, &l2, &pg, &delta, &kl, &h, &v_clip, &vf1, &vf2}) v->resize(BT);
  }
};

// Row lengths (masked by an optional row selection), number of non-empty rows.
double naive_row_lengths(const batch& d, const std::uint8_t* mask, const F* rowsel, naive_tmp& tmp) {
  double nseq = 0;
  for (index_t b = 0; b < d.B; ++b) {
    double L = 0;
    for (index_t t = 0; t < d.T; ++t) L += mask[b * d.T + t];
    if (rowsel && rowsel[b] == F(0)) L = 0;
    tmp.rowlen[b] = L;
    nseq += L > 0 ? 1 : 0;
  }
  return nseq;
}

// seq-mean-token-mean of x over mask: row sums, / L_b, mean over non-empty rows.
double naive_seq_mean_token_mean(const batch& d, const F* x, const std::uint8_t* mask, double nseq, naive_tmp& tmp) {
  for (index_t b = 0; b < d.B; ++b) {
    double s = 0;
    for (index_t t = 0; t < d.T; ++t) s += mask[b * d.T + t] ? static_cast<double>(x[b * d.T + t]) : 0.0;
    tmp.rowsum[b] = s;
  }
  double total = 0;
  for (index_t b = 0; b < d.B; ++b)
    if (tmp.rowlen[b] > 0) total += tmp.rowsum[b] / tmp.rowlen[b];
  return nseq > 0 ? total / nseq : 0.0;
}

// Row weight 1 / (nseq L_b), 0 for empty rows.
inline F naive_w(const naive_tmp& tmp, index_t b, double nseq) {
  return tmp.rowlen[b] > 0 ? static_cast<F>(1.0 / (nseq * tmp.rowlen[b])) : F(0);
}

struct naive_policy_out {
  double loss, clipfrac, clipfrac_lower, ppo_kl;
};

// verl-style vanilla PPO with I^A, dual clip, seq-mean-token-mean; grad = dL/dlogp. Passes: row lengths,
// ratio, l1, l2, clipped loss, aggregation (row sums), gradient, three metric passes.
naive_policy_out naive_policy(const batch& d, naive_tmp& tmp, F* grad, bool accumulate_grad = false) {
  const index_t BT = d.B * d.T;
  const F lo = static_cast<F>(1.0 - kClipLow), hi = static_cast<F>(1.0 + kClipHigh), c = static_cast<F>(kDualClip);
  const F C = static_cast<F>(kLogRatioClamp);
  const double nseq = naive_row_lengths(d, d.mask.data(), nullptr, tmp);
  for (index_t i = 0; i < BT; ++i) tmp.ratio[i] = std::exp(std::clamp(d.logp[i] - d.old_logp[i], -C, C));
  for (index_t i = 0; i < BT; ++i) tmp.l1[i] = -(d.adv[i] * d.adv_mask[i]) * tmp.ratio[i];
  for (index_t i = 0; i < BT; ++i) tmp.l2[i] = -(d.adv[i] * d.adv_mask[i]) * std::clamp(tmp.ratio[i], lo, hi);
  for (index_t i = 0; i < BT; ++i) {
    const F A = d.adv[i] * d.adv_mask[i];
    const F l = std::max(tmp.l1[i], tmp.l2[i]);
    tmp.pg[i] = A < 0 ? std::min(l, -c * A) : l;
  }
  naive_policy_out r;
  r.loss = naive_seq_mean_token_mean(d, tmp.pg.data(), d.mask.data(), nseq, tmp);
  // Backward: d pg / d logp = -A ratio where the unclipped branch is taken, the dual clip is not
  // active and the log-ratio clamp is not active; times the row weight.
  for (index_t b = 0; b < d.B; ++b) {
    const F w = naive_w(tmp, b, nseq);
    for (index_t t = 0; t < d.T; ++t) {
      const index_t i = b * d.T + t;
      const F A = d.adv[i] * d.adv_mask[i];
      const F dl = d.logp[i] - d.old_logp[i];
      const bool unclipped = tmp.l1[i] >= tmp.l2[i] && !(A < 0 && std::max(tmp.l1[i], tmp.l2[i]) > -c * A) &&
                             dl >= -C && dl <= C;
      const F g = d.mask[i] && unclipped ? w * (-A * tmp.ratio[i]) : F(0);
      grad[i] = accumulate_grad ? grad[i] + g : g;
    }
  }
  double n = 0, nclip = 0, nlow = 0, kl = 0;
  for (index_t i = 0; i < BT; ++i) n += d.mask[i];
  for (index_t i = 0; i < BT; ++i) nclip += d.mask[i] && tmp.l2[i] > tmp.l1[i];
  for (index_t i = 0; i < BT; ++i) {
    const F A = d.adv[i] * d.adv_mask[i];
    nlow += d.mask[i] && A < 0 && std::max(tmp.l1[i], tmp.l2[i]) > -c * A;
  }
  for (index_t i = 0; i < BT; ++i) kl += d.mask[i] ? static_cast<double>(d.old_logp[i] - d.logp[i]) : 0.0;
  r.clipfrac = nclip / n;
  r.clipfrac_lower = nlow / n;
  r.ppo_kl = kl / n;
  return r;
}

struct naive_entropy_out {
  double loss, entropy;
};

// -beta Agg(I^H H): filtered tensor pass, two aggregations (filtered, unfiltered metric), gradient.
naive_entropy_out naive_entropy(const batch& d, naive_tmp& tmp, F* grad, bool row_lengths_done = false,
                                double nseq_in = 0) {
  const index_t BT = d.B * d.T;
  const double nseq = row_lengths_done ? nseq_in : naive_row_lengths(d, d.mask.data(), nullptr, tmp);
  for (index_t i = 0; i < BT; ++i) tmp.h[i] = d.entropy[i] * d.ent_mask[i];
  naive_entropy_out r;
  const double filtered = naive_seq_mean_token_mean(d, tmp.h.data(), d.mask.data(), nseq, tmp);
  r.entropy = naive_seq_mean_token_mean(d, d.entropy.data(), d.mask.data(), nseq, tmp);
  r.loss = -kBeta * filtered;
  for (index_t b = 0; b < d.B; ++b) {
    const F w = naive_w(tmp, b, nseq);
    for (index_t t = 0; t < d.T; ++t) {
      const index_t i = b * d.T + t;
      grad[i] = d.mask[i] && d.ent_mask[i] ? static_cast<F>(-kBeta) * w : F(0);
    }
  }
  return r;
}

// kappa Agg(k3(logp - ref)): delta pass, k3 pass (verl's clamps), aggregation, gradient.
double naive_kl(const batch& d, naive_tmp& tmp, F* grad, bool accumulate_grad = false, bool row_lengths_done = false,
                double nseq_in = 0) {
  const index_t BT = d.B * d.T;
  const double nseq = row_lengths_done ? nseq_in : naive_row_lengths(d, d.mask.data(), nullptr, tmp);
  for (index_t i = 0; i < BT; ++i) tmp.delta[i] = d.logp[i] - d.ref_logp[i];
  for (index_t i = 0; i < BT; ++i) {
    const F x = std::clamp(-tmp.delta[i], F(-20), F(20));
    tmp.kl[i] = std::clamp(std::exp(x) - x - F(1), F(-10), F(10));
  }
  const double loss = kKappa * naive_seq_mean_token_mean(d, tmp.kl.data(), d.mask.data(), nseq, tmp);
  for (index_t b = 0; b < d.B; ++b) {
    const F w = naive_w(tmp, b, nseq);
    for (index_t t = 0; t < d.T; ++t) {
      const index_t i = b * d.T + t;
      const F x = -tmp.delta[i];
      const F e = std::exp(std::clamp(x, F(-20), F(20)));
      const F v = e - std::clamp(x, F(-20), F(20)) - F(1);
      const bool inside = x >= -20 && x <= 20 && v >= -10 && v <= 10;
      const F g = d.mask[i] && inside ? static_cast<F>(kKappa) * w * (F(1) - e) : F(0);
      grad[i] = accumulate_grad ? grad[i] + g : g;
    }
  }
  return loss;
}

// The actor objective done as three separate losses, the gradients added.
double naive_actor(const batch& d, naive_tmp& tmp, F* gl, F* gh) {
  const naive_policy_out p = naive_policy(d, tmp, gl);
  const double nseq = naive_row_lengths(d, d.mask.data(), nullptr, tmp);
  const naive_entropy_out e = naive_entropy(d, tmp, gh, true, nseq);
  const double k = naive_kl(d, tmp, gl, true, true, nseq);
  return p.loss + e.loss + k;
}

// Agg(l) with the weights output.
double naive_aggregate(const batch& d, naive_tmp& tmp, F* wout) {
  const double nseq = naive_row_lengths(d, d.mask.data(), nullptr, tmp);
  const double loss = naive_seq_mean_token_mean(d, d.loss.data(), d.mask.data(), nseq, tmp);
  for (index_t b = 0; b < d.B; ++b) {
    const F w = naive_w(tmp, b, nseq);
    for (index_t t = 0; t < d.T; ++t) wout[b * d.T + t] = d.mask[b * d.T + t] ? w : F(0);
  }
  return loss;
}

struct naive_value_out {
  double loss;
  double clipfrac[kK], ev[kK];
};

// Per critic: shard row lengths, clipped prediction pass, two squared-error passes, max, aggregation,
// gradient, then metrics (clip fraction; explained variance by mean and variance passes).
naive_value_out naive_value(const batch& d, naive_tmp& tmp, F* grad) {
  const index_t BT = d.B * d.T;
  const F cv = static_cast<F>(kValueClip);
  naive_value_out r{};
  for (index_t k = 0; k < d.K; ++k) {
    const F* v = d.values.data() + k * BT;
    const F* vo = d.old_values.data() + k * BT;
    const F* sh = d.shard.data() + k * d.B;
    F* g = grad + k * BT;
    const double nseq = naive_row_lengths(d, d.mask.data(), sh, tmp);
    for (index_t i = 0; i < BT; ++i) tmp.v_clip[i] = vo[i] + std::clamp(v[i] - vo[i], -cv, cv);
    for (index_t i = 0; i < BT; ++i) tmp.vf1[i] = (v[i] - d.returns[i]) * (v[i] - d.returns[i]);
    for (index_t i = 0; i < BT; ++i) tmp.vf2[i] = (tmp.v_clip[i] - d.returns[i]) * (tmp.v_clip[i] - d.returns[i]);
    for (index_t i = 0; i < BT; ++i) tmp.pg[i] = F(0.5) * std::max(tmp.vf1[i], tmp.vf2[i]);
    // Aggregation over the shard (row length 0 off-shard).
    double total = 0;
    for (index_t b = 0; b < d.B; ++b) {
      if (tmp.rowlen[b] <= 0) continue;
      double s = 0;
      for (index_t t = 0; t < d.T; ++t) s += d.mask[b * d.T + t] ? static_cast<double>(tmp.pg[b * d.T + t]) : 0.0;
      total += s / tmp.rowlen[b];
    }
    r.loss += nseq > 0 ? total / nseq : 0.0;
    for (index_t b = 0; b < d.B; ++b) {
      const F w = naive_w(tmp, b, nseq);
      for (index_t t = 0; t < d.T; ++t) {
        const index_t i = b * d.T + t;
        // As autograd: through the branch max() took; the clipped branch moves with v only inside
        // the clamp (in float, v_clip can differ from v by one rounding and win the max).
        const F dv = v[i] - vo[i];
        const F dl = tmp.vf2[i] > tmp.vf1[i] ? (dv >= -cv && dv <= cv ? tmp.v_clip[i] - d.returns[i] : F(0))
                                             : v[i] - d.returns[i];
        g[i] = d.mask[i] && w != F(0) ? w * F(0.5) * F(2) * dl : F(0);
      }
    }
    // Metrics over the shard's valid tokens.
    auto in_shard = [&](index_t i) { return d.mask[i] && sh[i / d.T] != F(0); };
    double n = 0, nclip = 0, mr = 0, me = 0, vr = 0, ve = 0;
    for (index_t i = 0; i < BT; ++i) n += in_shard(i);
    for (index_t i = 0; i < BT; ++i) nclip += in_shard(i) && tmp.vf2[i] > tmp.vf1[i];
    for (index_t i = 0; i < BT; ++i) mr += in_shard(i) ? d.returns[i] : 0.0;
    mr /= n;
    for (index_t i = 0; i < BT; ++i) vr += in_shard(i) ? (d.returns[i] - mr) * (d.returns[i] - mr) : 0.0;
    for (index_t i = 0; i < BT; ++i) me += in_shard(i) ? static_cast<double>(d.returns[i] - v[i]) : 0.0;
    me /= n;
    for (index_t i = 0; i < BT; ++i) {
      const double e = static_cast<double>(d.returns[i] - v[i]) - me;
      ve += in_shard(i) ? e * e : 0.0;
    }
    r.clipfrac[k] = nclip / n;
    r.ev[k] = 1.0 - ve / vr;
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Hand-fused references for policy_loss (NOT the library and not baselines): what one streaming
// pass with the same semantics (value, gradient, clip and dual-clip counts) costs on this machine.
// Both: pass 1 row lengths (mask only, 1 B/token), pass 2 one loop per row in float over contiguous
// pointers, per-row float partial sums folded into a double total.
//   fused_libm  per-token branch on m * I^A (masked tokens only write grad = 0), std::exp (libm expf)
//   fused_vec   the same loop, but rho comes from a dense per-tile pass (every position of a 256-token
//               tile that holds a valid token; fully padded tiles only write zeros) with an inline polynomial exp (Cephes expf: Cody-Waite reduction + degree-6
//               polynomial, ~1 ulp on [-20, 20]) that GCC vectorises with the SSE2 baseline.
struct fused_out {
  double loss;
  std::int64_t clipped, dual;
};

double fused_row_lengths(const batch& d, naive_tmp& tmp) {
  double nseq = 0;
  for (index_t b = 0; b < d.B; ++b) {
    const std::uint8_t* m = d.mask.data() + b * d.T;
    unsigned L = 0;
    for (index_t t = 0; t < d.T; ++t) L += m[t];
    tmp.rowlen[b] = L;
    nseq += L > 0;
  }
  return nseq;
}

fused_out fused_policy_libm(const batch& d, naive_tmp& tmp, F* grad) {
  const index_t B = d.B, T = d.T;
  const F lo = static_cast<F>(1.0 - kClipLow), hi = static_cast<F>(1.0 + kClipHigh), c = static_cast<F>(kDualClip);
  const F C = static_cast<F>(kLogRatioClamp);
  const double nseq = fused_row_lengths(d, tmp);
  fused_out r{0, 0, 0};
  for (index_t b = 0; b < B; ++b) {
    const F w = naive_w(tmp, b, nseq);
    const index_t o = b * T;
    const F* lp = d.logp.data() + o;
    const F* ol = d.old_logp.data() + o;
    const F* ad = d.adv.data() + o;
    const std::uint8_t* m = d.mask.data() + o;
    const std::uint8_t* am = d.adv_mask.data() + o;
    F* g = grad + o;
    float acc = 0;
    int nclip = 0, ndual = 0;
    for (index_t t = 0; t < T; ++t) {
      if (!(m[t] & am[t])) {
        g[t] = F(0);
        continue;
      }
      const F A = ad[t];
      const F dl = lp[t] - ol[t];
      const F dc = std::min(std::max(dl, -C), C);
      const F rho = std::exp(dc);
      const F rc = std::min(std::max(rho, lo), hi);
      const F l1 = -A * rho, l2 = -A * rc;
      const bool clip = l2 > l1;
      F l = clip ? l2 : l1;
      const bool dual = A < 0 && l > -c * A;
      l = dual ? -c * A : l;
      acc += l;
      g[t] = !clip && !dual && dl == dc ? w * l1 : F(0);
      nclip += clip;
      ndual += dual;
    }
    r.loss += static_cast<double>(w) * acc;
    r.clipped += nclip;
    r.dual += ndual;
  }
  return r;
}

// exp(x) for |x| <= ~87 (callers clamp to +-20): Cephes expf. Compiled with -fno-trapping-math
// (IEEE results unchanged; only FP-exception side effects are given up): with the default
// -ftrapping-math GCC jump-threads the clamp into the polynomial and then refuses to if-convert the
// float ops it moved into branches ("control flow in loop"), so nothing vectorises.
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
inline float clamp_f(float x, float lo, float hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}
inline float poly_expf(float x) {
  const float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const std::int32_t e = (static_cast<std::int32_t>(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof scale);  // 2^fn
  return y * scale;
}
// rho[t] = exp(clamp(lp - ol, -C, C)) over a tile, dense (no mask): vectorised, 4 lanes (SSE2).
__attribute__((noinline)) void ratio_tile(index_t n, const F* __restrict lp, const F* __restrict ol, F C, F* __restrict rho) {
  for (index_t t = 0; t < n; ++t) rho[t] = poly_expf(clamp_f(lp[t] - ol[t], -C, C));
}
#pragma GCC pop_options

// Pass 2 per tile of 256: tiles without a valid token only write zeros; otherwise the vectorised dense
// ratio loop above (every position of the tile), then the fused per-token loop of fused_libm with rho
// from that buffer.
fused_out fused_policy_vec(const batch& d, naive_tmp& tmp, F* grad) {
  const index_t B = d.B, T = d.T;
  const F lo = static_cast<F>(1.0 - kClipLow), hi = static_cast<F>(1.0 + kClipHigh), c = static_cast<F>(kDualClip);
  const F C = static_cast<F>(kLogRatioClamp);
  const double nseq = fused_row_lengths(d, tmp);
  fused_out r{0, 0, 0};
  constexpr index_t kTile = 256;
  alignas(64) float rbuf[kTile];
  for (index_t b = 0; b < B; ++b) {
    const F w = naive_w(tmp, b, nseq);
    const index_t o = b * T;
    float acc = 0;
    int nclip = 0, ndual = 0;
    for (index_t t0 = 0; t0 < T; t0 += kTile) {
      const index_t n = std::min(kTile, T - t0);
      const F* lp = d.logp.data() + o + t0;
      const F* ol = d.old_logp.data() + o + t0;
      const F* ad = d.adv.data() + o + t0;
      const std::uint8_t* m = d.mask.data() + o + t0;
      const std::uint8_t* am = d.adv_mask.data() + o + t0;
      F* g = grad + o + t0;
      unsigned any = 0;  // fully masked tile (the padded tail of a row): write zeros, no exp
      for (index_t t = 0; t < n; ++t) any |= m[t];
      if (!any) {
        std::fill(g, g + n, F(0));
        continue;
      }
      ratio_tile(n, lp, ol, C, rbuf);
      for (index_t t = 0; t < n; ++t) {
        if (!(m[t] & am[t])) {
          g[t] = F(0);
          continue;
        }
        const F A = ad[t];
        const F dl = lp[t] - ol[t];
        const bool inside = dl >= -C && dl <= C;
        const F rho = rbuf[t];
        const F rc = std::min(std::max(rho, lo), hi);
        const F l1 = -A * rho, l2 = -A * rc;
        const bool clip = l2 > l1;
        F l = clip ? l2 : l1;
        const bool dual = A < 0 && l > -c * A;
        l = dual ? -c * A : l;
        acc += l;
        g[t] = !clip && !dual && inside ? w * l1 : F(0);
        nclip += clip;
        ndual += dual;
      }
    }
    r.loss += static_cast<double>(w) * acc;
    r.clipped += nclip;
    r.dual += ndual;
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Counters.

constexpr double s = sizeof(F);
double BTof(const batch& d) { return double(d.B * d.T); }
// policy_loss: logp, old_logp, A (3 BT s) + mask, I^A (2 BT) read; grad_logp (BT s) written.
double bytes_policy(const batch& d) { return BTof(d) * (4 * s + 2); }
// actor_objective: logp, old_logp, A, H, ref (5 BT s) + mask, I^A, I^H (3 BT) read;
//                  grad_logp, grad_entropy (2 BT s) written.
double bytes_actor(const batch& d) { return BTof(d) * (7 * s + 3); }
// value_loss: V, V_old (2 K BT s) + R (BT s) + mask (BT) + shards (K B s) read; grad_values (K BT s) written.
double bytes_value(const batch& d) { return BTof(d) * (3 * d.K * s + s + 1) + double(d.K * d.B) * s; }
// aggregate_loss: l (BT s) + mask (BT) read; weights (BT s) written.
double bytes_aggregate(const batch& d) { return BTof(d) * (2 * s + 1); }
// kl_loss: logp, ref (2 BT s) + mask (BT) read; grad (BT s) written.
double bytes_kl(const batch& d) { return BTof(d) * (3 * s + 1); }
// entropy_bonus: H (BT s) + mask, I^H (2 BT) read; grad (BT s) written.
double bytes_entropy(const batch& d) { return BTof(d) * (2 * s + 2); }

// ---------------------------------------------------------------------------------------------
// Benchmarks. Each loss: a library one (threads) and a naive one.
#define LOSS_BENCH(NAME, BYTES, LIB_BODY, NAIVE_BODY)                                     \
  void BM_##NAME(benchmark::State& st, index_t B, index_t T, int threads) {               \
    const batch& d = get_batch(B, T);                                                     \
    const asyppo::cpu_backend be(threads);                                                \
    std::vector<F> g1(static_cast<std::size_t>(d.K * B * T)), g2(static_cast<std::size_t>(B * T)); \
    for (auto _ : st) {                                                                   \
      auto r = LIB_BODY;                                                                  \
      benchmark::DoNotOptimize(r);                                                        \
      benchmark::ClobberMemory();                                                         \
    }                                                                                     \
    set_counters(st, BYTES(d), BTof(d));                                                  \
  }                                                                                       \
  void BM_##NAME##_naive(benchmark::State& st, index_t B, index_t T) {                    \
    const batch& d = get_batch(B, T);                                                     \
    naive_tmp tmp(d);                                                                     \
    std::vector<F> g1(static_cast<std::size_t>(d.K * B * T)), g2(static_cast<std::size_t>(B * T)); \
    for (auto _ : st) {                                                                   \
      auto r = NAIVE_BODY;                                                                \
      benchmark::DoNotOptimize(r);                                                        \
      benchmark::ClobberMemory();                                                         \
    }                                                                                     \
    set_counters(st, BYTES(d), BTof(d));                                                  \
  }

LOSS_BENCH(policy, bytes_policy, lib_policy(be, d, g1), naive_policy(d, tmp, g1.data()))
LOSS_BENCH(actor, bytes_actor, lib_actor(be, d, g1, g2), naive_actor(d, tmp, g1.data(), g2.data()))
LOSS_BENCH(value, bytes_value, lib_value(be, d, g1), naive_value(d, tmp, g1.data()))
LOSS_BENCH(aggregate, bytes_aggregate, lib_aggregate(be, d, g1), naive_aggregate(d, tmp, g1.data()))
LOSS_BENCH(kl, bytes_kl, lib_kl(be, d, g1), naive_kl(d, tmp, g1.data()))
LOSS_BENCH(entropy, bytes_entropy, lib_entropy(be, d, g1), naive_entropy(d, tmp, g1.data()))
#undef LOSS_BENCH

// actor_objective on 16-bit inputs H (the batch's values rounded): read exactly, computed as float.
// Bytes: the five inputs at 2 bytes.
template <class H>
void BM_actor_half(benchmark::State& st, index_t B, index_t T, int threads) {
  const batch& d = get_batch(B, T);
  const auto& in16 = get_half_actor<H>(d);
  const asyppo::cpu_backend be(threads);
  std::vector<F> gl(static_cast<std::size_t>(B * T)), gh(static_cast<std::size_t>(B * T));
  for (auto _ : st) {
    auto r = lib_actor(be, d, gl, gh, &in16);
    benchmark::DoNotOptimize(r);
    benchmark::ClobberMemory();
  }
  set_counters(st, BTof(d) * (5 * 2 + 3 + 2 * s), BTof(d));
}

// Pieces of policy_loss (public API only):
//   loss_part/policy_loss/full             == policy_loss/.../asyppo
//   loss_part/policy_loss/no_finite_check  check_finite = false  -> cost of the finiteness pass
//   loss_part/row_weights                  count_loss_tokens (the mask pass that make_row_weights
//                                          also does) -> cost of the row-weight pass
//   loss_part/fused_libm, fused_vec        the hand-fused references above (1 thread): what one
//                                          streaming pass costs with libm exp and a branch, and
//                                          branch-free with a vectorised polynomial exp
// Bytes: policy_loss's minimum for all but row_weights (mask only: BT).
enum class part { full, no_finite_check, row_weights, fused_libm, fused_vec };

void BM_part(benchmark::State& st, index_t B, index_t T, int threads, part p) {
  const batch& d = get_batch(B, T);
  const asyppo::cpu_backend be(threads);
  naive_tmp tmp(d);
  std::vector<F> grad(static_cast<std::size_t>(B * T));
  for (auto _ : st) {
    switch (p) {
      case part::full: {
        auto r = lib_policy(be, d, grad);
        benchmark::DoNotOptimize(r);
        break;
      }
      case part::no_finite_check: {
        auto r = lib_policy(be, d, grad, false);
        benchmark::DoNotOptimize(r);
        break;
      }
      case part::row_weights: {
        auto c = asyppo::count_loss_tokens(be, msk(d.mask, d));
        benchmark::DoNotOptimize(c);
        break;
      }
      case part::fused_libm: {
        auto r = fused_policy_libm(d, tmp, grad.data());
        benchmark::DoNotOptimize(r);
        break;
      }
      case part::fused_vec: {
        auto r = fused_policy_vec(d, tmp, grad.data());
        benchmark::DoNotOptimize(r);
        break;
      }
    }
    benchmark::ClobberMemory();
  }
  set_counters(st, p == part::row_weights ? BTof(d) : bytes_policy(d), BTof(d));
}


// ---------------------------------------------------------------------------------------------
// One-time cross-check: library vs naive (loss values relative difference, max |grad| difference).
double max_abs_diff(const std::vector<F>& a, const std::vector<F>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}
double max_abs(const std::vector<F>& a) {
  double m = 0;
  for (F x : a) m = std::max(m, std::abs(double(x)));
  return m;
}

void cross_check(index_t B, index_t T) {
  const batch& d = get_batch(B, T);
  const asyppo::cpu_backend be(1);
  naive_tmp tmp(d);
  const std::size_t BT = static_cast<std::size_t>(B * T);
  std::vector<F> a1(kK * BT), a2(BT), n1(kK * BT), n2(BT);
  auto rel = [](double x, double y) { return std::abs(x - y) / std::max(1e-300, std::abs(y)); };
  std::fprintf(stderr, "cross-check %lldx%lld (valid fraction %.3f):\n", static_cast<long long>(B),
               static_cast<long long>(T), double(std::count(d.mask.begin(), d.mask.end(), 1)) / double(BT));
  {
    const auto l = lib_policy(be, d, a1);
    const auto n = naive_policy(d, tmp, n1.data());
    std::fprintf(stderr,
                 "  policy_loss     loss %.9g / %.9g (rel %.1e), max|dgrad| %.1e of max|grad| %.1e, clipfrac %.5f / "
                 "%.5f, dual %.5f / %.5f, ppo_kl %.6f / %.6f\n",
                 l.loss, n.loss, rel(l.loss, n.loss), max_abs_diff(a1, n1), max_abs(n1), l.metrics.clip_fraction(),
                 n.clipfrac, l.metrics.dual_clip_fraction(), n.clipfrac_lower, l.metrics.approx_kl(), n.ppo_kl);
    std::vector<F> f(BT);
    for (int v = 0; v < 2; ++v) {
      const auto fr = v == 0 ? fused_policy_libm(d, tmp, f.data()) : fused_policy_vec(d, tmp, f.data());
      double m = 0;
      for (std::size_t i = 0; i < BT; ++i) m = std::max(m, std::abs(double(f[i]) - double(a1[i])));
      std::fprintf(stderr, "  %s loss %.9g (rel %.1e), max|dgrad| vs library %.1e, clipped %lld / %lld, dual %lld / %lld\n",
                   v == 0 ? "fused_libm" : "fused_vec ", fr.loss, rel(fr.loss, l.loss), m, static_cast<long long>(fr.clipped),
                   static_cast<long long>(l.metrics.clipped_tokens()), static_cast<long long>(fr.dual),
                   static_cast<long long>(l.metrics.dual_clipped_tokens));
    }
  }
  {
    const auto l = lib_actor(be, d, a1, a2);
    const double n = naive_actor(d, tmp, n1.data(), n2.data());
    double dl = 0;
    for (std::size_t i = 0; i < BT; ++i) dl = std::max(dl, std::abs(double(a1[i]) - double(n1[i])));
    std::fprintf(stderr, "  actor_objective total %.9g / %.9g (rel %.1e), max|dgrad_logp| %.1e, max|dgrad_H| %.1e\n",
                 l.total, n, rel(l.total, n), dl, max_abs_diff(a2, n2));
  }
  {
    const auto l = lib_value(be, d, a1);
    const auto n = naive_value(d, tmp, n1.data());
    std::fprintf(stderr,
                 "  value_loss      loss %.9g / %.9g (rel %.1e), max|dgrad| %.1e of %.1e, clipfrac %.5f / %.5f, "
                 "EV0 %.6f / %.6f, EV1 %.6f / %.6f\n",
                 l.loss, n.loss, rel(l.loss, n.loss), max_abs_diff(a1, n1), max_abs(n1), l.critics[0].clip_fraction,
                 n.clipfrac[0], l.critics[0].explained_variance, n.ev[0], l.critics[1].explained_variance, n.ev[1]);
  }
  {
    const auto l = lib_aggregate(be, d, a2);
    const double n = naive_aggregate(d, tmp, n2.data());
    std::fprintf(stderr, "  aggregate_loss  loss %.9g / %.9g (rel %.1e), max|dweights| %.1e\n", l.loss, n,
                 rel(l.loss, n), max_abs_diff(a2, n2));
  }
  {
    const auto l = lib_kl(be, d, a2);
    const double n = naive_kl(d, tmp, n2.data());
    std::fprintf(stderr, "  kl_loss         loss %.9g / %.9g (rel %.1e), max|dgrad| %.1e of %.1e\n", l.loss, n,
                 rel(l.loss, n), max_abs_diff(a2, n2), max_abs(n2));
  }
  {
    const auto l = lib_entropy(be, d, a2);
    const auto n = naive_entropy(d, tmp, n2.data());
    std::fprintf(stderr, "  entropy_bonus   loss %.9g / %.9g (rel %.1e), entropy %.6f / %.6f, max|dgrad| %.1e\n",
                 l.loss, n.loss, rel(l.loss, n.loss), l.entropy, n.entropy, max_abs_diff(a2, n2));
  }
  // Thread-count invariance of the library (bit-identical promise).
  {
    std::vector<F> b1(BT);
    const auto l1 = lib_policy(asyppo::cpu_backend(1), d, a2);
    const auto l2 = lib_policy(asyppo::cpu_backend(2), d, b1);
    std::fprintf(stderr, "  policy_loss threads 1 vs 2: loss %s, grad %s\n", l1.loss == l2.loss ? "identical" : "DIFFER",
                 a2 == b1 ? "identical" : "DIFFER");
  }
}

void register_all() {
  struct shape {
    index_t B, T;
    double min_time;
  };
  const shape shapes[] = {{64, 512, 0.1}, {256, 4096, 0.25}};
  using lib_fn = void (*)(benchmark::State&, index_t, index_t, int);
  using naive_fn = void (*)(benchmark::State&, index_t, index_t);
  struct algo {
    const char* name;
    lib_fn lib;
    naive_fn naive;
  };
  const algo algos[] = {{"policy_loss", BM_policy, BM_policy_naive},       {"actor_objective", BM_actor, BM_actor_naive},
                        {"value_loss", BM_value, BM_value_naive},          {"aggregate_loss", BM_aggregate, BM_aggregate_naive},
                        {"kl_loss", BM_kl, BM_kl_naive},                   {"entropy_bonus", BM_entropy, BM_entropy_naive}};
  for (const auto& sh : shapes)
    for (const auto& a : algos) asyppo_bench::register_lib_and_naive(a.name, sh.B, sh.T, sh.min_time, a.lib, a.naive);
  // The SIMD widths of the per-token kernels (core/simd/), same process: 1 = the scalar code.
  for (int w : {1, 2, 4})
    for (const auto& a : algos) {
      if (a.lib != BM_policy && a.lib != BM_actor && a.lib != BM_value) continue;
      benchmark::RegisterBenchmark((std::string(a.name) + "/256x4096/simd:" + std::to_string(w) + "/threads:1").c_str(),
                                   [w, fn = a.lib](benchmark::State& st) {
                                     asyppo::detail::set_simd_limit(w);
                                     fn(st, 256, 4096, 1);
                                     asyppo::detail::set_simd_limit(4);
                                   })
          ->UseRealTime()
          ->MinTime(0.25)
          ->Unit(benchmark::kMicrosecond);
    }
  using half_bench = void (*)(benchmark::State&, index_t, index_t, int);
  const std::pair<const char*, half_bench> halves[] = {{"bfloat16", BM_actor_half<asyppo::bfloat16>},
                                                       {"float16", BM_actor_half<asyppo::float16>}};
  for (const auto& [name, fn] : halves)
    for (int th : {1, 2})
      benchmark::RegisterBenchmark(
          ("actor_objective/256x4096/" + std::string(name) + "/threads:" + std::to_string(th)).c_str(), fn, index_t(256),
          index_t(4096), th)
          ->UseRealTime()
          ->MinTime(0.25)
          ->Unit(benchmark::kMicrosecond);
  const std::pair<const char*, part> parts[] = {{"policy_loss/full", part::full},
                                                {"policy_loss/no_finite_check", part::no_finite_check},
                                                {"row_weights", part::row_weights},
                                                {"fused_libm", part::fused_libm},
                                                {"fused_vec", part::fused_vec}};
  for (const auto& [name, p] : parts)
    for (int th : {1, 2}) {
      if ((p == part::fused_libm || p == part::fused_vec) && th != 1) continue;  // single-threaded loops
      benchmark::RegisterBenchmark((std::string("loss_part/") + name + "/256x4096/threads:" + std::to_string(th)).c_str(),
                                   BM_part, index_t(256), index_t(4096), th, p)
          ->UseRealTime()
          ->MinTime(0.25)
          ->Unit(benchmark::kMicrosecond);
    }
  asyppo_bench::register_membw();
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  cross_check(64, 512);
  cross_check(256, 4096);
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
