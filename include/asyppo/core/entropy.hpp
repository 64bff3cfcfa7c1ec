// asyppo/core/entropy.hpp: the entropy bonus with the AsyPPO entropy filter I^H, and a small-
// vocabulary helper from logits (docs/algorithm.md, Eq. L3).
//
// Bonus (a loss to minimise), with H[b,t] the token entropy and I^H the entropy mask:
//   L_H = -beta * Agg(I^H * H) = -beta * sum_{b,t} m w_b I^H[b,t] H[b,t]     (core/aggregation.hpp)
//   dL_H/dH[b,t] = -beta * w_b * I^H[b,t] on valid tokens, exactly 0 on masked/padded tokens and on
//   I^H = 0 tokens, which keep their place in the normaliser (E15: 1/L_b counts them).
// The filter is applied before the reduction (the public AsyPPO code reduces first and never uses
// the filtered tensor: not copied). Metrics: entropy = Agg(H) unfiltered (verl actor/entropy),
// filtered_entropy = Agg(I^H H), and raw sums/counts that merge across micro-batches.
// One fused reduce; add() writes grad_entropy at position i only (each i is visited once).
// The entropy may be float, double, bfloat16 or float16 (read exactly; grad_entropy in
// compute_type_t, half_types.hpp). The logits helper takes float or double.
//
// Helper for small vocabularies (tests, toy models, CPU reference of a fused kernel): from logits
// z [B,T,V] (any strides; V contiguous is fastest) and taken token ids y [B,T] (int64), with
// z' = z / temperature and p = softmax(z'):
//   logp[b,t]    = z'_y - logsumexp(z')
//   entropy[b,t] = logsumexp(z') - sum_v p_v z'_v = -sum_v p_v log p_v
// computed with max subtraction in double (p_v log p_v uses log p_v = z'_v - lse, so p_v = 0
// contributes exactly 0). Backward, given upstream g_l = dL/dlogp and g_h = dL/dH [B,T]:
//   dL/dz_v = ( g_l (1[v = y] - p_v) - g_h p_v (log p_v + H) ) / temperature.
// Masked positions (optional mask) get logp = entropy = 0 and zero gradient, and their token ids
// are not read for validation. Token ids of valid positions must lie in [0, V).
// entropy_bonus_to, the device-result variant, writes the same result to the backend's memory (device memory on a
// GPU) from an explicit normaliser; with check_finite off it waits for nothing (one body for every loss:
// fused_loss_to in core/aggregation.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "asyppo/core/aggregation.hpp"

namespace asyppo {

struct entropy_bonus_options {
  double beta = 0.0;  ///< entropy coefficient, finite (the AsyPPO scripts use 0)
  loss_aggregation aggregation = loss_aggregation::seq_mean_token_mean;
  loss_normalizer normalizer{};
  bool check_finite = true;  ///< reject NaN/Inf entropy on valid tokens
};

/// Raw sums of one call (+= merges micro-batches).
struct entropy_metrics {
  std::int64_t valid_tokens = 0;
  std::int64_t filtered_tokens = 0;  ///< valid tokens with I^H = 0
  double entropy_sum = 0;            ///< sum of H over valid tokens (unfiltered)
  double mean_entropy() const { return frac(entropy_sum); }
  double filtered_fraction() const { return frac(static_cast<double>(filtered_tokens)); }
  entropy_metrics& operator+=(const entropy_metrics& o) {
    valid_tokens += o.valid_tokens;
    filtered_tokens += o.filtered_tokens;
    entropy_sum += o.entropy_sum;
    return *this;
  }

 private:
  double frac(double x) const {
    return valid_tokens > 0 ? x / static_cast<double>(valid_tokens) : std::numeric_limits<double>::quiet_NaN();
  }
};

struct entropy_bonus_result {
  double loss = 0;              ///< -beta * Agg(I^H H)
  double entropy = 0;           ///< Agg(H), unfiltered
  double filtered_entropy = 0;  ///< Agg(I^H H)
  entropy_metrics metrics{};
  loss_normalizer normalizer{};
};

struct logits_options {
  double temperature = 1.0;  ///< finite, > 0
  bool check_finite = true;  ///< reject NaN/Inf logits at valid positions
};

namespace detail {

struct entropy_acc {
  double agg, filtered_agg, sum;
  std::int64_t valid, filtered;
};

ASYPPO_INLINE entropy_acc entropy_acc_combine(const entropy_acc& a, const entropy_acc& b) {
  return {a.agg + b.agg, a.filtered_agg + b.filtered_agg, a.sum + b.sum, a.valid + b.valid, a.filtered + b.filtered};
}

template <class T>
struct entropy_reducer {
  token_view<const T> entropy;
  mask_view mask, entropy_mask;
  row_weights w;
  token_view<compute_type_t<T>> grad;  // optional
  double beta;
  using value_type = entropy_acc;
  ASYPPO_HD entropy_acc identity() const { return {0, 0, 0, 0, 0}; }
  // Writes grad at position i only; every i is visited exactly once.
  ASYPPO_HD void add(entropy_acc& acc, index_t b, index_t t) const {
    double g = 0.0;
    if (mask(b, t)) {
      const double h = static_cast<double>(entropy(b, t));
      acc.valid += 1;
      acc.sum += h;
      acc.agg += w[b] * h;
      const bool keep = !entropy_mask.data || entropy_mask(b, t);  // selects: I^H zeros are scattered
      acc.filtered += keep ? 0 : 1;
      acc.filtered_agg += keep ? w[b] * h : 0.0;
      g = keep ? -beta * w[b] : 0.0;
    }
    if (grad.data) grad(b, t) = static_cast<compute_type_t<T>>(g);
  }
  ASYPPO_HD entropy_acc combine(const entropy_acc& a, const entropy_acc& b) const { return entropy_acc_combine(a, b); }
};

/// The result of the fused reduction (L3), on the host or on the device.
struct entropy_result_of {
  double beta;
  loss_normalizer norm;
  ASYPPO_HD entropy_bonus_result operator()(const entropy_acc& a) const {
    entropy_bonus_result r;
    r.entropy = a.agg;
    r.filtered_entropy = a.filtered_agg;
    r.loss = -beta * a.filtered_agg;
    r.metrics.valid_tokens = a.valid;
    r.metrics.filtered_tokens = a.filtered;
    r.metrics.entropy_sum = a.sum;
    r.normalizer = norm;
    return r;
  }
};

/// Every check of entropy_bonus and entropy_bonus_to that reads no data.
template <class Backend, class T>
void check_entropy_bonus(const Backend& be, const char* where, token_view<const T> entropy, mask_view mask,
                         mask_view entropy_mask, token_view<compute_type_t<T>> grad_entropy,
                         const entropy_bonus_options& opt) {
  check_view(where, "entropy", entropy);
  const index_t B = entropy.extent[0], Tn = entropy.extent[1];
  check_required_mask(where, "mask", mask, B, Tn);
  check_optional_input(where, "entropy_mask", entropy_mask, {B, Tn});
  check_optional_output(where, "grad_entropy", grad_entropy, {B, Tn});
  check_finite_scalar(where, "beta", opt.beta);
  check_aggregation(where, opt.aggregation);
  check_memory(be, where, "entropy", entropy, "mask", mask, "entropy_mask", entropy_mask, "grad_entropy", grad_entropy);
  check_normalizer_fields(where, "normalizer", opt.normalizer);
}

/// Per-position log-softmax statistics of z / temperature: lse and the entropy H.
struct softmax_stats {
  double lse, H;
};

template <class T>
ASYPPO_INLINE softmax_stats logits_stats(const view<const T, 3>& z, index_t b, index_t t, index_t V, double inv_temp) {
  double m = -std::numeric_limits<double>::infinity();
  for (index_t v = 0; v < V; ++v) {
    const double x = static_cast<double>(z(b, t, v)) * inv_temp;
    m = x > m ? x : m;
  }
  double s = 0.0, sz = 0.0;
  for (index_t v = 0; v < V; ++v) {
    const double d = static_cast<double>(z(b, t, v)) * inv_temp - m;
    const double e = std::exp(d);
    s += e;
    sz += e * d;
  }
  const double ls = std::log(s);
  return {m + ls, ls - sz / s};
}

template <class T>
struct logits_forward_kernel {
  view<const T, 3> z;
  view<const std::int64_t, 2> ids;
  mask_view mask;  // optional
  token_view<T> logp, entropy;  // optional each
  index_t V;
  double inv_temp;
  ASYPPO_HD void operator()(index_t b, index_t t) const {
    if (mask.data && !mask(b, t)) {
      if (logp.data) logp(b, t) = T(0);
      if (entropy.data) entropy(b, t) = T(0);
      return;
    }
    const softmax_stats s = logits_stats(z, b, t, V, inv_temp);
    if (logp.data) logp(b, t) = static_cast<T>(static_cast<double>(z(b, t, ids(b, t))) * inv_temp - s.lse);
    if (entropy.data) entropy(b, t) = static_cast<T>(s.H);
  }
};

template <class T>
struct logits_backward_kernel {
  view<const T, 3> z;
  view<const std::int64_t, 2> ids;
  mask_view mask;  // optional
  token_view<const T> gl, gh;  // optional each (absent = 0)
  view<T, 3> grad;
  index_t V;
  double inv_temp;
  ASYPPO_HD void operator()(index_t b, index_t t) const {
    if (mask.data && !mask(b, t)) {
      for (index_t v = 0; v < V; ++v) grad(b, t, v) = T(0);
      return;
    }
    const softmax_stats s = logits_stats(z, b, t, V, inv_temp);
    const double g_l = gl.data ? static_cast<double>(gl(b, t)) : 0.0;
    const double g_h = gh.data ? static_cast<double>(gh(b, t)) : 0.0;
    const std::int64_t y = ids(b, t);
    for (index_t v = 0; v < V; ++v) {
      const double lp = static_cast<double>(z(b, t, v)) * inv_temp - s.lse;
      const double p = std::exp(lp);
      const double g = g_l * ((v == y ? 1.0 : 0.0) - p) - g_h * p * (lp + s.H);
      grad(b, t, v) = static_cast<T>(g * inv_temp);
    }
  }
};

/// Counts valid positions with an out-of-range token id (first) and with non-finite logits (second).
template <class T>
struct logits_checker {
  view<const T, 3> z;
  view<const std::int64_t, 2> ids;
  mask_view mask;
  index_t V;
  bool finite;
  struct value_type {
    std::int64_t bad_ids, bad_logits;
  };
  ASYPPO_HD value_type identity() const { return {0, 0}; }
  ASYPPO_HD void add(value_type& acc, index_t b, index_t t) const {
    if (mask.data && !mask(b, t)) return;
    const std::int64_t y = ids(b, t);
    acc.bad_ids += (y < 0 || y >= V) ? 1 : 0;
    if (finite) {
      bool ok = true;
      for (index_t v = 0; v < V; ++v) ok = ok && is_finite_value(z(b, t, v));
      acc.bad_logits += ok ? 0 : 1;
    }
  }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const {
    return {a.bad_ids + b.bad_ids, a.bad_logits + b.bad_logits};
  }
};

template <class Backend, class T>
void check_logits_args(const Backend& be, const char* where, view<const T, 3> logits, view<const std::int64_t, 2> ids,
                       mask_view mask, const logits_options& opt) {
  detail::check_view(where, "logits", logits);
  const index_t B = logits.extent[0], Tn = logits.extent[1], V = logits.extent[2];
  detail::check_input(where, "token_ids", ids, {B, Tn});
  detail::check_optional_input(where, "mask", mask, {B, Tn});
  if (B * Tn > 0 && V < 1) detail::fail(where, "logits", "needs a vocabulary of at least one entry (extent 2 is 0)");
  if (!(opt.temperature > 0.0) || !std::isfinite(opt.temperature))
    detail::fail(where, "temperature", "must be finite and > 0, got ", opt.temperature);
  check_memory(be, where, "logits", logits, "token_ids", ids, "mask", mask);
  if (B * Tn == 0) return;
  const auto bad = be.reduce(B, Tn, logits_checker<T>{logits, ids, mask, V, opt.check_finite});
  if (bad.bad_ids > 0)
    detail::fail(where, "token_ids", bad.bad_ids, " valid position(s) hold a token id outside [0, ", V, ")");
  if (bad.bad_logits > 0) detail::fail(where, "logits", bad.bad_logits, " valid position(s) hold NaN or Inf logits");
}

}  // namespace detail

/// Entropy bonus -beta * Agg(I^H H) of entropy [B,T]; grad_entropy [B,T] (optional) receives
/// dL/dH. entropy_mask (I^H, optional: absent = no filter). Throws asyppo::error (and writes
/// nothing) on bad shapes, non-finite beta, a bad normaliser, or (check_finite) NaN/Inf entropy on
/// a valid token.
template <class Backend, class T>
entropy_bonus_result entropy_bonus(const Backend& be, token_view<const T> entropy, mask_view mask,
                                   mask_view entropy_mask = {}, token_view<compute_type_t<T>> grad_entropy = {},
                                   const entropy_bonus_options& opt = {}) {
  constexpr const char* where = "asyppo::entropy_bonus";
  detail::check_entropy_bonus(be, where, entropy, mask, entropy_mask, grad_entropy, opt);
  const auto [acc, norm] = detail::fused_loss(
      be, where, mask, opt.aggregation, opt.normalizer, opt.check_finite,
      [&](auto range) { detail::check_finite_views<Backend, T>(be, where, "entropy", mask, range, entropy); },
      [&](detail::row_weights w) { return detail::entropy_reducer<T>{entropy, mask, entropy_mask, w, grad_entropy, opt.beta}; },
      grad_entropy);
  return detail::entropy_result_of{opt.beta, norm}(acc);
}

/// The device-result variant of entropy_bonus: the same gradient, and the result written to *result in the
/// backend's memory (result->normalizer is opt.normalizer) instead of returned. With opt.check_finite =
/// false it makes no host round trip: the row weights come from opt.normalizer, whose fields the aggregation
/// uses must be given. Throws like entropy_bonus, and on a null result.
template <class Backend, class T>
void entropy_bonus_to(const Backend& be, token_view<const T> entropy, mask_view mask, mask_view entropy_mask,
                      token_view<compute_type_t<T>> grad_entropy, entropy_bonus_result* result,
                      const entropy_bonus_options& opt = {}) {
  constexpr const char* where = "asyppo::entropy_bonus_to";
  detail::check_entropy_bonus(be, where, entropy, mask, entropy_mask, grad_entropy, opt);
  detail::check_loss_to(be, where, result, opt.aggregation, opt.normalizer);
  detail::fused_loss_to(
      be, mask, opt.aggregation, opt.normalizer, opt.check_finite,
      [&](auto range) { detail::check_finite_views<Backend, T>(be, where, "entropy", mask, range, entropy); },
      [&](detail::row_weights w) { return detail::entropy_reducer<T>{entropy, mask, entropy_mask, w, grad_entropy, opt.beta}; },
      result, detail::entropy_result_of{opt.beta, opt.normalizer}, grad_entropy);
}

/// From logits [B,T,V] and token ids [B,T]: logp of the taken token and the entropy of
/// softmax(logits / temperature), each into an optional [B,T] output. mask [B,T] optional (absent:
/// every position valid). Throws asyppo::error on bad shapes, temperature <= 0 or non-finite, an
/// out-of-range token id at a valid position, or (check_finite) NaN/Inf logits at a valid position.
template <class Backend, class T>
void logits_logp_entropy(const Backend& be, view<const T, 3> logits, view<const std::int64_t, 2> token_ids,
                         token_view<T> logp, token_view<T> entropy, const logits_options& opt = {},
                         mask_view mask = {}) {
  constexpr const char* where = "asyppo::logits_logp_entropy";
  detail::check_view(where, "logits", logits);
  const index_t B = logits.extent[0], Tn = logits.extent[1];
  detail::check_optional_output(where, "logp", logp, {B, Tn});
  detail::check_optional_output(where, "entropy", entropy, {B, Tn});
  detail::check_memory(be, where, "logp", logp, "entropy", entropy);
  detail::check_logits_args(be, where, logits, token_ids, mask, opt);
  if (B * Tn == 0) return;
  be.for_each(B, Tn, detail::logits_forward_kernel<T>{logits, token_ids, mask, logp, entropy, logits.extent[2], 1.0 / opt.temperature});
}

/// Backward of logits_logp_entropy: grad_logits [B,T,V] = d/dlogits of
/// sum_{b,t} (grad_logp[b,t] logp[b,t] + grad_entropy[b,t] H[b,t]). grad_logp / grad_entropy are
/// optional (absent = 0). Same checks as the forward; grad_logits is required.
template <class Backend, class T>
void logits_logp_entropy_backward(const Backend& be, view<const T, 3> logits, view<const std::int64_t, 2> token_ids,
                                  token_view<const T> grad_logp, token_view<const T> grad_entropy,
                                  view<T, 3> grad_logits, const logits_options& opt = {}, mask_view mask = {}) {
  constexpr const char* where = "asyppo::logits_logp_entropy_backward";
  detail::check_view(where, "logits", logits);
  const index_t B = logits.extent[0], Tn = logits.extent[1], V = logits.extent[2];
  detail::check_optional_input(where, "grad_logp", grad_logp, {B, Tn});
  detail::check_optional_input(where, "grad_entropy", grad_entropy, {B, Tn});
  detail::check_output(where, "grad_logits", grad_logits, {B, Tn, V});
  detail::check_memory(be, where, "grad_logp", grad_logp, "grad_entropy", grad_entropy, "grad_logits", grad_logits);
  detail::check_logits_args(be, where, logits, token_ids, mask, opt);
  if (B * Tn == 0) return;
  be.for_each(B, Tn, detail::logits_backward_kernel<T>{logits, token_ids, mask, grad_logp, grad_entropy, grad_logits,
                                                        V, 1.0 / opt.temperature});
}

}  // namespace asyppo
