// asyppo/core/kl.hpp: KL-penalty estimators to a reference policy, per token and as an aggregated
// loss with its gradient wrt logp (docs/algorithm.md, Eq. L4).
//
// With delta = logp - ref_logp on a valid token:
//   k1  (verl "kl")          delta                       d/ddelta = 1
//   abs (verl "abs")         |delta|                     sign(delta) (0 at delta = 0, as torch)
//   k2  (verl "mse")         0.5 delta^2                 delta
//   k3  (verl "low_var_kl")  exp(-delta) - 1 + delta     1 - exp(-delta)
// verl clamps k3 (clamp = true, the default): x = -delta is clamped to [-20, 20] before the exp and
// the result to [-10, 10]; the gradient is 0 where either clamp is active (both terms of k3 use
// the clamped x, as in verl; boundaries pass the gradient, as torch.clamp). k1, abs and k2 are never
// clamped (verl; OpenRLHF clamps every estimator to [-10, 10], slime only low_var_kl). With
// clamp = false, k3 of delta < -709 overflows to +inf.
// Straight-through (verl's "+" suffix: "k1+", "k3+", ...): the value is the base estimator's (with
// its clamps), the gradient is k2's, delta (never clamped).
//
// kl_values writes the per-token estimator [B,T] (0 on masked tokens). kl_loss returns
//   L = coef * Agg(kl)  (core/aggregation.hpp)
// and grad_logp = coef * w_b * dkl/ddelta (exactly 0 on masked/padded tokens) in one fused reduce
// that writes only position i inside add(). Computed in double (k3's exp is exp_ratio, core/exp.hpp);
// the CPU backend's results are bit-identical for any thread count.
// Inputs in float, double, bfloat16 or float16 (read exactly); outputs and gradients in
// compute_type_t of the input type (half_types.hpp: float for the 16-bit types): the float call's bits.
// kl_loss_to, the device-result variant, writes the same result to the backend's memory (device memory on a
// GPU) from an explicit normaliser; with check_finite off it waits for nothing (one body for every loss:
// fused_loss_to in core/aggregation.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "asyppo/core/aggregation.hpp"
#include "asyppo/core/kl_token.hpp"
#include "asyppo/core/simd/token_kernels.hpp"

namespace asyppo {


struct kl_options {
  kl_estimator estimator = kl_estimator::k3;  ///< verl low_var_kl (GRPO's estimator)
  bool straight_through = false;              ///< value of the estimator, gradient of k2
  bool clamp = true;                          ///< verl's k3 clamps (input +-20, output +-10)
};

/// Parses verl's names: "kl"/"k1", "abs", "mse"/"k2", "low_var_kl"/"k3", each optionally with a
/// "+" suffix (straight-through). Throws asyppo::error on an unknown name.
inline kl_options parse_kl_estimator(std::string_view s) {
  kl_options o;
  if (!s.empty() && s.back() == '+') {
    o.straight_through = true;
    s.remove_suffix(1);
  }
  if (s == "kl" || s == "k1") o.estimator = kl_estimator::k1;
  else if (s == "abs") o.estimator = kl_estimator::abs;
  else if (s == "mse" || s == "k2") o.estimator = kl_estimator::k2;
  else if (s == "low_var_kl" || s == "k3") o.estimator = kl_estimator::k3;
  else detail::fail("asyppo::parse_kl_estimator", "name", "unknown KL estimator '", std::string(s), "'");
  return o;
}

struct kl_loss_options {
  kl_options kl{};
  double coef = 1.0;  ///< kappa, finite
  loss_aggregation aggregation = loss_aggregation::seq_mean_token_mean;
  loss_normalizer normalizer{};
  bool check_finite = true;  ///< reject NaN/Inf logp or ref_logp on valid tokens
};

/// Raw sums of one call (+= merges micro-batches).
struct kl_metrics {
  std::int64_t valid_tokens = 0;
  double kl_sum = 0;  ///< sum of the estimator over valid tokens
  double mean() const {
    return valid_tokens > 0 ? kl_sum / static_cast<double>(valid_tokens) : std::numeric_limits<double>::quiet_NaN();
  }
  kl_metrics& operator+=(const kl_metrics& o) {
    valid_tokens += o.valid_tokens;
    kl_sum += o.kl_sum;
    return *this;
  }
};

struct kl_loss_result {
  double loss = 0;  ///< coef * Agg(kl)
  double kl = 0;    ///< Agg(kl)
  kl_metrics metrics{};
  loss_normalizer normalizer{};
};

namespace detail {

template <class T>
struct kl_values_kernel {
  token_view<const T> logp, ref;
  mask_view mask;
  token_view<compute_type_t<T>> out;
  kl_params p;
  ASYPPO_HD void operator()(index_t b, index_t t) const {
    using C = compute_type_t<T>;
    out(b, t) = mask(b, t) ? static_cast<C>(kl_token(static_cast<double>(logp(b, t)) - static_cast<double>(ref(b, t)), p).value)
                           : C(0);
  }
};

template <class T>
struct kl_reducer {
  token_view<const T> logp, ref;
  mask_view mask;
  row_weights w;
  token_view<compute_type_t<T>> grad;  // optional
  kl_params p;
  double coef;
  using value_type = kl_acc;
  ASYPPO_HD kl_acc identity() const { return {0, 0, 0}; }
  // Writes grad at position i only; every i is visited exactly once.
  ASYPPO_HD void add(kl_acc& acc, index_t b, index_t t) const {
    double g = 0.0;
    if (mask(b, t)) {
      const kl_value k = kl_token(static_cast<double>(logp(b, t)) - static_cast<double>(ref(b, t)), p);
      acc.agg += w[b] * k.value;
      acc.sum += k.value;
      acc.valid += 1;
      g = coef * w[b] * k.ddelta;
    }
    if (grad.data) grad(b, t) = static_cast<compute_type_t<T>>(g);
  }
  /// add() over [t0, t1) on contiguous rows: SIMD lanes for whole lane groups, then add() (same bits).
  ASYPPO_HD void add_span(kl_acc& acc, index_t b, index_t t0, index_t t1) const {
    index_t t = t0;
#if defined(ASYPPO_SIMD_SSE2)  // host x86-64, not nvcc
    if constexpr (is_half_type_v<T>) {  // 16-bit inputs: the row widened, then the float span (same bits)
      const kl_reducer<float> wide{widened_row(logp, b, t0, t1, 0), widened_row(ref, b, t0, t1, 1), mask, w, grad, p,
                                   coef};
      wide.add_span(acc, b, t0, t1);
      return;
    }
    if constexpr (!is_half_type_v<T>) {  // (16-bit inputs took the widened path above)
      if (unit_inner_stride(logp) && unit_inner_stride(ref) && unit_inner_stride(mask) && unit_inner_stride(grad))
        t = kl_span_simd(acc, &logp(b, 0), &ref(b, 0), &mask(b, 0), grad.data ? &grad(b, 0) : nullptr, w[b], coef, t0, t1, p);
    }
#endif
    for (; t < t1; ++t) add(acc, b, t);
  }
  ASYPPO_HD kl_acc combine(const kl_acc& a, const kl_acc& b) const { return {a.agg + b.agg, a.sum + b.sum, a.valid + b.valid}; }
};

inline void check_kl_options(const char* where, const kl_options& o) {
  switch (o.estimator) {
    case kl_estimator::k1:
    case kl_estimator::abs:
    case kl_estimator::k2:
    case kl_estimator::k3: return;
  }
  fail(where, "estimator", "unknown kl_estimator value ", static_cast<int>(o.estimator));
}

inline kl_params kl_params_of(const kl_options& o) { return {o.estimator, o.straight_through, o.clamp}; }

/// The result of the fused reduction (L4), on the host or on the device.
struct kl_result_of {
  double coef;
  loss_normalizer norm;
  ASYPPO_HD kl_loss_result operator()(const kl_acc& a) const {
    kl_loss_result r;
    r.kl = a.agg;
    r.loss = coef * a.agg;
    r.metrics.valid_tokens = a.valid;
    r.metrics.kl_sum = a.sum;
    r.normalizer = norm;
    return r;
  }
};

/// Every check of kl_loss and kl_loss_to that reads no data.
template <class Backend, class T>
void check_kl_loss(const Backend& be, const char* where, token_view<const T> logp, token_view<const T> ref_logp,
                   mask_view mask, token_view<compute_type_t<T>> grad_logp, const kl_loss_options& opt) {
  check_view(where, "logp", logp);
  const index_t B = logp.extent[0], Tn = logp.extent[1];
  check_input(where, "ref_logp", ref_logp, {B, Tn});
  check_required_mask(where, "mask", mask, B, Tn);
  check_optional_output(where, "grad_logp", grad_logp, {B, Tn});
  check_kl_options(where, opt.kl);
  check_finite_scalar(where, "coef", opt.coef);
  check_aggregation(where, opt.aggregation);
  check_memory(be, where, "logp", logp, "ref_logp", ref_logp, "mask", mask, "grad_logp", grad_logp);
  check_normalizer_fields(where, "normalizer", opt.normalizer);
}

}  // namespace detail

/// Per-token estimator of delta = logp - ref_logp into out [B,T] (0 on masked tokens; out may be
/// logp or ref_logp itself). Throws asyppo::error on bad shapes or options; NaN/Inf inputs propagate.
template <class Backend, class T>
void kl_values(const Backend& be, token_view<const T> logp, token_view<const T> ref_logp, mask_view mask,
               token_view<compute_type_t<T>> out, const kl_options& opt = {}) {
  constexpr const char* where = "asyppo::kl_values";
  detail::check_view(where, "logp", logp);
  const index_t B = logp.extent[0], Tn = logp.extent[1];
  detail::check_input(where, "ref_logp", ref_logp, {B, Tn});
  detail::check_required_mask(where, "mask", mask, B, Tn);
  detail::check_output(where, "out", out, {B, Tn});
  detail::check_kl_options(where, opt);
  detail::check_memory(be, where, "logp", logp, "ref_logp", ref_logp, "mask", mask, "out", out);
  if (B * Tn == 0) return;

  be.for_each(B, Tn, detail::kl_values_kernel<T>{logp, ref_logp, mask, out, detail::kl_params_of(opt)});
}

/// KL loss coef * Agg(kl(logp - ref_logp)); grad_logp [B,T] (optional) receives dL/dlogp.
/// Throws asyppo::error (and writes nothing) on bad shapes or options, non-finite coef, a bad
/// normaliser, or (check_finite) NaN/Inf logp or ref_logp on a valid token.
template <class Backend, class T>
kl_loss_result kl_loss(const Backend& be, token_view<const T> logp, token_view<const T> ref_logp, mask_view mask,
                       token_view<compute_type_t<T>> grad_logp = {}, const kl_loss_options& opt = {}) {
  constexpr const char* where = "asyppo::kl_loss";
  detail::check_kl_loss(be, where, logp, ref_logp, mask, grad_logp, opt);
  const auto [acc, norm] = detail::fused_loss(
      be, where, mask, opt.aggregation, opt.normalizer, opt.check_finite,
      [&](auto range) { detail::check_finite_views<Backend, T>(be, where, "logp or ref_logp", mask, range, logp, ref_logp); },
      [&](detail::row_weights w) {
        return detail::kl_reducer<T>{logp, ref_logp, mask, w, grad_logp, detail::kl_params_of(opt.kl), opt.coef};
      },
      grad_logp);
  return detail::kl_result_of{opt.coef, norm}(acc);
}

/// The device-result variant of kl_loss: the same gradient, and the result written to *result in the
/// backend's memory (result->normalizer is opt.normalizer) instead of returned. With opt.check_finite =
/// false it makes no host round trip: the row weights come from opt.normalizer, whose fields the aggregation
/// uses must be given. Throws like kl_loss, and on a null result.
template <class Backend, class T>
void kl_loss_to(const Backend& be, token_view<const T> logp, token_view<const T> ref_logp, mask_view mask,
                token_view<compute_type_t<T>> grad_logp, kl_loss_result* result, const kl_loss_options& opt = {}) {
  constexpr const char* where = "asyppo::kl_loss_to";
  detail::check_kl_loss(be, where, logp, ref_logp, mask, grad_logp, opt);
  detail::check_loss_to(be, where, result, opt.aggregation, opt.normalizer);
  detail::fused_loss_to(
      be, mask, opt.aggregation, opt.normalizer, opt.check_finite,
      [&](auto range) { detail::check_finite_views<Backend, T>(be, where, "logp or ref_logp", mask, range, logp, ref_logp); },
      [&](detail::row_weights w) {
        return detail::kl_reducer<T>{logp, ref_logp, mask, w, grad_logp, detail::kl_params_of(opt.kl), opt.coef};
      },
      result, detail::kl_result_of{opt.coef, opt.normalizer}, grad_logp);
}

}  // namespace asyppo
