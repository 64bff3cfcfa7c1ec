// asyppo/core/policy_loss.hpp: the PPO clipped surrogate on log-probs, with the AsyPPO advantage
// mask, dual clip, aggregation and the exact gradient wrt logp (docs/algorithm.md, Eq. L2).
//
// Per valid token (m = 1), with delta = logp - old_logp and A the advantage:
//   rho = exp(clamp(delta, -C, C))            C = log_ratio_clamp (verl/OpenRLHF: 20; 0 = no clamp)
//   l1  = -A rho
//   l2  = -A clip(rho, 1 - eps_low, 1 + eps_high)
//   l   = max(l1, l2)
//   dual clip (c > 0, only where A < 0, as verl/OpenRLHF/slime): l = min(l, -c A)
// Tokens with I^A = 0 (adv_mask) and tokens with A = 0 have l = 0 and gradient 0 exactly; they keep
// their place in the normaliser (identical to feeding A * I^A, docs/algorithm.md A2). The loss is
//   L = Agg(l) = sum_{b,t} m w_b l[b,t]           (core/aggregation.hpp)
// and grad_logp[b,t] = dL/dlogp[b,t] = w_b * dl/dlogp:
//   -A rho on the unclipped branch (l1 >= l2, i.e. rho inside the clip range or clipping on the
//   side that does not bind) when |delta| <= C; 0 where the clipped branch is active (l2 > l1),
//   where the dual clip is active, where the log-ratio clamp is active (|delta| > C), and exactly 0
//   on masked/padded tokens and on I^A = 0 tokens. Ties (l1 == l2, l == -cA) take the unclipped
//   branch (a measure-zero choice; torch splits the gradient there).
//
// Metrics (over the valid tokens of this call; raw counts kept so they merge across micro-batches
// with +=, fractions are NaN when there is no valid token):
//   clip_fraction       #(l2 > l1) / N_valid   (verl pg_clipfrac; I^A = 0 tokens count as A = 0,
//                        i.e. never clipped)
//   clip_high_fraction  the clipped ones with rho > 1 + eps_high (A > 0)
//   clip_low_fraction   the clipped ones with rho < 1 - eps_low  (A < 0); high + low = clip.
//                        (ROLL's region metrics ignore the sign of A; these do not.)
//   dual_clip_fraction  #(A < 0 and max(l1, l2) > -c A) / N_valid (verl pg_clipfrac_lower)
//   approx_kl           mean of old_logp - logp over valid tokens, unclamped (verl ppo_kl)
//   adv_mask_fraction   #(I^A = 0) / N_valid
//
// One fused pass: a single backend reduce whose add(acc, i) evaluates token i, accumulates the
// loss and the metrics, and writes grad_logp at position i only. Writing position i inside add()
// is allowed by this library's reduce contract because every i is visited exactly once, by one
// thread, whatever the tiling. Before it: validation, an optional finiteness pass and the row
// weight pass of core/aggregation.hpp. Everything is computed in double; the CPU backend's
// results are bit-identical for any thread count. On x86-64 contiguous rows run on SIMD lanes
// (core/simd/token_kernels.inc), with the same bits as the per-token code; rho uses exp_ratio
// (core/exp.hpp), within 1.5 ulp of exp.
// Extremes: with the clamp on, any log-ratio gives a finite loss. With the clamp off (C = 0), a
// ratio that overflows to +inf gives l = +inf where A < 0 and no dual clip (A > 0 is clipped and
// finite); this is the documented price of turning the clamp off.
// Inputs in float, double, bfloat16 or float16 (read exactly); outputs and gradients in
// compute_type_t of the input type (half_types.hpp: float for the 16-bit types): the float call's bits.
// policy_loss_to, the device-result variant, writes the same result to the backend's memory (device memory on a
// GPU) from an explicit normaliser; with check_finite off it waits for nothing (one body for every loss:
// fused_loss_to in core/aggregation.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "asyppo/core/aggregation.hpp"
#include "asyppo/core/simd/token_kernels.hpp"
#include "asyppo/core/surrogate.hpp"

namespace asyppo {

struct policy_loss_options {
  double clip_low = 0.2;         ///< eps_low, in [0, 1]
  double clip_high = 0.2;        ///< eps_high, >= 0 (DAPO clip-higher / AsyPPO code: 0.28)
  double dual_clip = 0.0;        ///< c; 0 = off, else > 1 (verl clip_ratio_c = 3)
  double log_ratio_clamp = 20.0; ///< C; 0 = off
  loss_aggregation aggregation = loss_aggregation::seq_mean_token_mean;  ///< AsyPPO E15
  loss_normalizer normalizer{};  ///< global counts; negative fields = local (see aggregation.hpp)
  bool check_finite = true;      ///< reject NaN/Inf logp, old_logp, advantages on valid tokens
};

template <class T>
struct policy_loss_inputs {
  token_view<const T> logp;        ///< [B,T] log pi_theta of the taken tokens
  token_view<const T> old_logp;    ///< [B,T] log pi_old
  token_view<const T> advantages;  ///< [B,T]
  mask_view mask;                  ///< [B,T] response mask (required)
  mask_view adv_mask{};            ///< [B,T] AsyPPO I^A (optional; absent = all ones)
};

/// Raw counts of one call; += merges micro-batches, the fractions are computed from the counts.
struct policy_loss_metrics {
  std::int64_t valid_tokens = 0;
  std::int64_t adv_masked_tokens = 0;    ///< valid tokens with I^A = 0
  std::int64_t clipped_high_tokens = 0;  ///< l2 > l1 and rho > 1 + eps_high
  std::int64_t clipped_low_tokens = 0;   ///< l2 > l1 and rho < 1 - eps_low
  std::int64_t dual_clipped_tokens = 0;  ///< A < 0 and max(l1, l2) > -c A
  double approx_kl_sum = 0;              ///< sum of old_logp - logp over valid tokens

  std::int64_t clipped_tokens() const { return clipped_high_tokens + clipped_low_tokens; }
  double clip_fraction() const { return frac(static_cast<double>(clipped_tokens())); }
  double clip_high_fraction() const { return frac(static_cast<double>(clipped_high_tokens)); }
  double clip_low_fraction() const { return frac(static_cast<double>(clipped_low_tokens)); }
  double dual_clip_fraction() const { return frac(static_cast<double>(dual_clipped_tokens)); }
  double adv_mask_fraction() const { return frac(static_cast<double>(adv_masked_tokens)); }
  double approx_kl() const { return frac(approx_kl_sum); }

  policy_loss_metrics& operator+=(const policy_loss_metrics& o) {
    valid_tokens += o.valid_tokens;
    adv_masked_tokens += o.adv_masked_tokens;
    clipped_high_tokens += o.clipped_high_tokens;
    clipped_low_tokens += o.clipped_low_tokens;
    dual_clipped_tokens += o.dual_clipped_tokens;
    approx_kl_sum += o.approx_kl_sum;
    return *this;
  }

 private:
  double frac(double x) const {
    return valid_tokens > 0 ? x / static_cast<double>(valid_tokens) : std::numeric_limits<double>::quiet_NaN();
  }
};

struct policy_loss_result {
  double loss = 0;               ///< Agg(l)
  policy_loss_metrics metrics{};
  loss_normalizer normalizer{};  ///< the resolved normaliser used
};

namespace detail {

template <class T>
struct policy_reducer {
  token_view<const T> logp, old_logp, adv;
  mask_view mask, adv_mask;
  row_weights w;
  token_view<compute_type_t<T>> grad;  // optional
  surrogate_params p;
  using value_type = policy_acc;
  using C = compute_type_t<T>;
  ASYPPO_HD policy_acc identity() const { return {0, 0, 0, 0, 0, 0, 0}; }
  // Writes grad at position i only; every i is visited exactly once.
  ASYPPO_HD void add(policy_acc& acc, index_t b, index_t t) const {
    double g = 0.0;
    if (mask(b, t))  // masks are runs: a predictable branch
      g = policy_token(acc, w[b], static_cast<double>(logp(b, t)), static_cast<double>(old_logp(b, t)),
                       static_cast<double>(adv(b, t)), !adv_mask.data || adv_mask(b, t), p);
    if (grad.data) grad(b, t) = static_cast<C>(g);
  }
  /// add() over [t0, t1) on contiguous rows through plain pointers (the same operations per token).
  ASYPPO_HD void add_span(policy_acc& acc_out, index_t b, index_t t0, index_t t1) const {
#if defined(ASYPPO_SIMD_SSE2)  // host x86-64, not nvcc
    if constexpr (is_half_type_v<T>) {  // 16-bit inputs: the row widened, then the float span (same bits)
      const policy_reducer<float> wide{widened_row(logp, b, t0, t1, 0), widened_row(old_logp, b, t0, t1, 1),
                                       widened_row(adv, b, t0, t1, 2), mask, adv_mask, w, grad, p};
      wide.add_span(acc_out, b, t0, t1);
      return;
    }
#endif
    if (!unit_inner_stride(logp) || !unit_inner_stride(old_logp) || !unit_inner_stride(adv) ||
        !unit_inner_stride(mask) || !unit_inner_stride(adv_mask) || !unit_inner_stride(grad)) {
      for (index_t t = t0; t < t1; ++t) add(acc_out, b, t);
      return;
    }
    const T *pl = &logp(b, 0), *po = &old_logp(b, 0), *pa = &adv(b, 0);
    const std::uint8_t *m = &mask(b, 0), *am = adv_mask.data ? &adv_mask(b, 0) : nullptr;
    C* g = grad.data ? &grad(b, 0) : nullptr;
    const double wb = w[b];
    policy_acc acc = acc_out;  // a local: its stores cannot alias the views
    index_t t = t0;
#if defined(ASYPPO_SIMD_SSE2)  // host x86-64, not nvcc
    if constexpr (!is_half_type_v<T>)  // (16-bit inputs took the widened path above)
      t = policy_span_simd(acc, pl, po, pa, m, am, g, wb, t0, t1, p);  // whole lane groups, same bits
#endif
    for (; t < t1; ++t) {
      double gv = 0.0;
      if (m[t])  // masks are runs: a predictable branch
        gv = policy_token(acc, wb, static_cast<double>(pl[t]), static_cast<double>(po[t]), static_cast<double>(pa[t]),
                          !am || am[t], p);
      if (g) g[t] = static_cast<C>(gv);
    }
    acc_out = acc;
  }
  ASYPPO_HD policy_acc combine(const policy_acc& a, const policy_acc& b) const { return policy_acc_combine(a, b); }
};

inline void check_surrogate_options(const char* where, double clip_low, double clip_high, double dual_clip,
                                    double log_ratio_clamp) {
  check_range(where, "clip_low", clip_low, 0.0, 1.0);
  if (!(clip_high >= 0.0) || !std::isfinite(clip_high))
    fail(where, "clip_high", "must be finite and >= 0, got ", clip_high);
  if (dual_clip != 0.0 && !(dual_clip > 1.0 && std::isfinite(dual_clip)))
    fail(where, "dual_clip", "must be 0 (off) or a finite number > 1, got ", dual_clip);
  if (!(log_ratio_clamp >= 0.0) || !std::isfinite(log_ratio_clamp))
    fail(where, "log_ratio_clamp", "must be 0 (off) or finite and > 0, got ", log_ratio_clamp);
}

ASYPPO_HD inline policy_loss_metrics policy_metrics_of(const policy_acc& a) {
  policy_loss_metrics m;
  m.valid_tokens = a.valid;
  m.adv_masked_tokens = a.adv_masked;
  m.clipped_high_tokens = a.high;
  m.clipped_low_tokens = a.low;
  m.dual_clipped_tokens = a.dual;
  m.approx_kl_sum = a.kl;
  return m;
}

/// The result of the fused reduction (L2), on the host or on the device.
struct policy_result_of {
  loss_normalizer norm;
  ASYPPO_HD policy_loss_result operator()(const policy_acc& a) const {
    policy_loss_result r;
    r.loss = a.loss;
    r.metrics = policy_metrics_of(a);
    r.normalizer = norm;
    return r;
  }
};

/// Every check of policy_loss and policy_loss_to that reads no data (shapes, options, memory).
template <class Backend, class T>
void check_policy_loss(const Backend& be, const char* where, const policy_loss_inputs<T>& in,
                       token_view<compute_type_t<T>> grad_logp, const policy_loss_options& opt) {
  check_view(where, "logp", in.logp);
  const index_t B = in.logp.extent[0], Tn = in.logp.extent[1];
  check_input(where, "old_logp", in.old_logp, {B, Tn});
  check_input(where, "advantages", in.advantages, {B, Tn});
  check_required_mask(where, "mask", in.mask, B, Tn);
  check_optional_input(where, "adv_mask", in.adv_mask, {B, Tn});
  check_optional_output(where, "grad_logp", grad_logp, {B, Tn});
  check_surrogate_options(where, opt.clip_low, opt.clip_high, opt.dual_clip, opt.log_ratio_clamp);
  check_aggregation(where, opt.aggregation);
  check_memory(be, where, "logp", in.logp, "old_logp", in.old_logp, "advantages", in.advantages, "mask", in.mask,
               "adv_mask", in.adv_mask, "grad_logp", grad_logp);
  check_normalizer_fields(where, "normalizer", opt.normalizer);
}

/// policy_loss's finiteness check over range, and its reducer with row weights w.
template <class Backend, class T, class Range>
void check_policy_finite(const Backend& be, const char* where, const policy_loss_inputs<T>& in, Range range) {
  check_finite_views<Backend, T>(be, where, "logp, old_logp or advantages", in.mask, range, in.logp, in.old_logp,
                                 in.advantages);
}
template <class T>
policy_reducer<T> policy_reducer_of(const policy_loss_inputs<T>& in, token_view<compute_type_t<T>> grad_logp,
                                    const policy_loss_options& opt, row_weights w) {
  return {in.logp, in.old_logp, in.advantages, in.mask, in.adv_mask, w, grad_logp,
          {opt.clip_low, opt.clip_high, opt.dual_clip, opt.log_ratio_clamp}};
}

}  // namespace detail

/// Clipped surrogate loss Agg(l) of the inputs; grad_logp [B,T] (optional) receives dL/dlogp.
/// Throws asyppo::error (and writes nothing) on bad shapes, clip_low outside [0,1], clip_high < 0,
/// dual_clip not 0 and <= 1, log_ratio_clamp < 0, non-finite options, a bad normaliser, or
/// (check_finite) NaN/Inf in logp, old_logp or advantages on a valid token.
template <class Backend, class T>
policy_loss_result policy_loss(const Backend& be, const policy_loss_inputs<T>& in,
                               token_view<compute_type_t<T>> grad_logp = {}, const policy_loss_options& opt = {}) {
  constexpr const char* where = "asyppo::policy_loss";
  detail::check_policy_loss(be, where, in, grad_logp, opt);
  const auto [acc, norm] = detail::fused_loss(
      be, where, in.mask, opt.aggregation, opt.normalizer, opt.check_finite,
      [&](auto range) { detail::check_policy_finite(be, where, in, range); },
      [&](detail::row_weights w) { return detail::policy_reducer_of(in, grad_logp, opt, w); }, grad_logp);
  return detail::policy_result_of{norm}(acc);
}

/// The device-result variant of policy_loss: the same gradient, and the result written to *result in the
/// backend's memory (device memory on a GPU; result->normalizer is opt.normalizer) instead of returned.
/// With opt.check_finite = false it makes no host round trip (a CUDA graph can hold it): the row weights
/// come from opt.normalizer, whose fields the aggregation uses must be given (as for actor_objective_to).
/// Throws like policy_loss, and on a null result.
template <class Backend, class T>
void policy_loss_to(const Backend& be, const policy_loss_inputs<T>& in, token_view<compute_type_t<T>> grad_logp,
                    policy_loss_result* result, const policy_loss_options& opt = {}) {
  constexpr const char* where = "asyppo::policy_loss_to";
  detail::check_policy_loss(be, where, in, grad_logp, opt);
  detail::check_loss_to(be, where, result, opt.aggregation, opt.normalizer);
  detail::fused_loss_to(
      be, in.mask, opt.aggregation, opt.normalizer, opt.check_finite,
      [&](auto range) { detail::check_policy_finite(be, where, in, range); },
      [&](detail::row_weights w) { return detail::policy_reducer_of(in, grad_logp, opt, w); },
      result, detail::policy_result_of{opt.normalizer}, grad_logp);
}

}  // namespace asyppo
