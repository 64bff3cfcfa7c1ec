// asyppo/core/ensemble.hpp: per-token statistics of the K critics (docs/algorithm.md, Eq. E3-E4).
//
//   mean[b,t] = (1/K) sum_k V[k,b,t]
//   std[b,t]  = sqrt( sum_k (V[k,b,t] - mean)^2 / D ),  D = K (population, default) or K-1
//               (unbiased; defined as 0 when K = 1)
//   min[b,t], max[b,t] over k
//
// Two passes over the K values of one token (mean, then squared deviations), accumulated in
// double, so the std of nearly equal critics is exact to rounding (no E[x^2]-E[x]^2).
// With a mask, masked-out tokens get 0 in every output and their values are never read.
// Each output is optional (pass an empty view to skip it). Deterministic: every token is
// computed independently with a fixed order over k.
// Inputs in float, double, bfloat16 or float16 (read exactly); outputs and gradients in
// compute_type_t of the input type (half_types.hpp: float for the 16-bit types): the float call's bits.
#pragma once

#include <cmath>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/core/modes.hpp"
#include "asyppo/core/row_span.hpp"
#include "asyppo/core/validate.hpp"
#include "asyppo/views.hpp"

namespace asyppo {

template <class T>
struct ensemble_outputs {
  token_view<T> mean{};
  token_view<T> std{};
  token_view<T> min{};
  token_view<T> max{};
};

namespace detail {

/// Mean and std of the K critic values at (b,t), in double. Holds 1/K and 1/D so the per-token
/// work has no division (K = 2, the default, is exact either way). NK > 0 fixes K = NK at compile
/// time (the per-token loops disappear; the caller dispatches on K), NK = 0 reads K from the view.
/// Every NK computes the same values.
template <class T, int NK = 0>
struct ensemble_point {
  static constexpr int critic_count = NK;
  critic_view<const T> values;
  double inv_k = 0, inv_d = 0;  // 1/K, and 1/D (0 when D = 0: K = 1 unbiased)
  double half_span = 0;         // K = 2: sqrt(1 / (2 D)) (0.5 population, 1/sqrt(2) unbiased)
  ensemble_point() = default;
  ensemble_point(critic_view<const T> v, bool unbiased) : values(v) {
    const index_t K = v.extent[0], D = unbiased ? K - 1 : K;
    inv_k = K > 0 ? 1.0 / static_cast<double>(K) : 0.0;
    inv_d = D > 0 ? 1.0 / static_cast<double>(D) : 0.0;
    half_span = D > 0 ? std::sqrt(0.5 / static_cast<double>(D)) : 0.0;
  }
  template <int N>
  explicit ensemble_point(const ensemble_point<T, N>& o)
      : values(o.values), inv_k(o.inv_k), inv_d(o.inv_d), half_span(o.half_span) {}
  ASYPPO_HD index_t critics() const { return NK > 0 ? NK : values.extent[0]; }
  ASYPPO_HD double mean(index_t b, index_t t) const {
    const index_t K = critics();
    if (K == 2) return 0.5 * (static_cast<double>(values(0, b, t)) + static_cast<double>(values(1, b, t)));
    double s = 0;
    for (index_t k = 0; k < K; ++k) s += static_cast<double>(values(k, b, t));
    return s * inv_k;
  }
  /// The std at (b,t) (K = 2 needs no mean).
  ASYPPO_HD double std(index_t b, index_t t) const {
    return critics() == 2 ? std_about(b, t, 0.0) : std_about(b, t, mean(b, t));
  }
  ASYPPO_HD double std_about(index_t b, index_t t, double mu) const {
    const index_t K = critics();
    if (K == 2) {  // sqrt(sum (v_k - mu)^2 / D) = |v0 - v1| sqrt(1 / (2 D)), without a square root
      const double d = static_cast<double>(values(0, b, t)) - static_cast<double>(values(1, b, t));
      return fabs(d) * half_span;  // fabs, not a branch on the sign (random: mispredicted)
    }
    double s = 0;
    for (index_t k = 0; k < K; ++k) {
      const double e = static_cast<double>(values(k, b, t)) - mu;
      s += e * e;
    }
    return sqrt(s * inv_d);
  }
};

/// Calls f(point) with point an ensemble_point<T, 1> or <T, 2> when K is 1 or 2 (the common
/// cases: loops unrolled at compile time), else with the run-time ensemble_point<T>.
template <class T, class F>
decltype(auto) with_critic_count(const ensemble_point<T>& point, F&& f) {
  switch (point.values.extent[0]) {
    case 1: return f(ensemble_point<T, 1>(point));
    case 2: return f(ensemble_point<T, 2>(point));
    default: return f(point);
  }
}

template <class T>
struct ensemble_kernel {
  ensemble_point<T> point;
  mask_view mask;  // data may be null: every token valid
  ensemble_outputs<compute_type_t<T>> out;
  ASYPPO_HD void operator()(index_t b, index_t t) const {
    const bool valid = mask.data == nullptr || mask(b, t) != 0;
    double mu = 0, sd = 0, lo = 0, hi = 0;
    if (valid) {
      mu = point.mean(b, t);
      sd = point.std_about(b, t, mu);
      lo = hi = static_cast<double>(point.values(0, b, t));
      for (index_t k = 1; k < point.values.extent[0]; ++k) {
        const double v = static_cast<double>(point.values(k, b, t));
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
      }
    }
    using C = compute_type_t<T>;
    if (out.mean.data) out.mean(b, t) = static_cast<C>(mu);
    if (out.std.data) out.std(b, t) = static_cast<C>(sd);
    if (out.min.data) out.min(b, t) = static_cast<C>(lo);
    if (out.max.data) out.max(b, t) = static_cast<C>(hi);
  }
};

}  // namespace detail

/// Ensemble statistics of values [K,B,T] (K >= 1). mask [B,T] is optional (empty view = all
/// valid). Throws asyppo::error on bad shapes, K < 1, or (check_finite) NaN/Inf on a valid token.
template <class Backend, class T>
void ensemble_stats(const Backend& be, critic_view<const T> values, mask_view mask,
                    const ensemble_outputs<compute_type_t<T>>& out, std_kind kind = std_kind::population,
                    bool check_finite = true) {
  constexpr const char* where = "asyppo::ensemble_stats";
  detail::check_view(where, "values", values);
  const index_t K = values.extent[0], B = values.extent[1], Tn = values.extent[2];
  if (K < 1) detail::fail(where, "values", "needs at least one critic (K >= 1), got K = ", K);
  if (detail::present(mask)) detail::check_input(where, "mask", mask, {B, Tn});
  detail::check_optional_output(where, "out.mean", out.mean, {B, Tn});
  detail::check_optional_output(where, "out.std", out.std, {B, Tn});
  detail::check_optional_output(where, "out.min", out.min, {B, Tn});
  detail::check_optional_output(where, "out.max", out.max, {B, Tn});
  detail::check_memory(be, where, "values", values, "mask", mask, "out.mean", out.mean, "out.std", out.std, "out.min",
                       out.min, "out.max", out.max);
  const detail::ensemble_kernel<T> kernel{{values, kind == std_kind::unbiased}, mask, out};
  if (!detail::present(mask)) {  // every token valid
    if (check_finite) detail::check_finite_tokens<Backend, T>(be, where, "values", B, Tn, values, {}, mask);
    be.for_each(B, Tn, kernel);
    return;
  }
  const auto span = detail::make_row_span(be, mask);  // up to each row's last valid token, then zeros
  if (check_finite)
    detail::check_finite(be, where, "values", B, Tn, detail::count_nonfinite_tokens<T, 1, 1>{{values}, {}, mask}, span.heads());
  be.for_each(B, Tn, kernel, span.heads());
  detail::write_zero(be, B, Tn, span.tails(), out.mean, out.std, out.min, out.max);
}

}  // namespace asyppo
