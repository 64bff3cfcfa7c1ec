// asyppo/core/value_loss.hpp: the K mini-critics' value losses, each on its own shard and
// normalised by its own shard (docs/algorithm.md, Eq. E9; options vs verl/OpenRLHF there).
//
// For critic k, on the valid tokens (m = 1) of the rows in its shard (shard_weights[k,b] != 0;
// shard_weights absent: every row), with v = V_new[k,b,t], v_old = V_old[k,b,t] (critic k's OWN old
// values) and R the target (returns[b,t] shared by all critics, the default, or critic_returns[k,b,t]):
//   clip c > 0:  e = max( (v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2 )     (verl/OpenRLHF/slime)
//   clip c <= 0: e = (v - R)^2                                                    (the paper)
//   l = s e, s = 0.5 when half (verl, OpenRLHF, TRL, ROLL; default) or 1 (slime and the AsyPPO code)
//   L_k = Agg_k(l) = sum_{b,t in shard k} m w^k_b l        (core/aggregation.hpp)
// The normaliser of critic k is ITS OWN: normalizers[k] (count them over micro-batches/ranks with
// count_critic_loss_tokens), or, when normalizers is empty, the local counts of critic k's shard in
// this call. The AsyPPO code keeps the other shard in the denominator, halving each critic's
// learning rate for K = 2; the paper's E_{D_k} normalises within the shard, as here.
// Returned loss = sum_k L_k (the critics are separate networks: each L_k only moves critic k).
// grad_values[k,b,t] = dL_k/dv = s w^k_b * 2 (v - R) on the unclipped branch, 0 where the clipped
// branch is active (clipped > unclipped: then |v - v_old| > c, so the clipped value does not move
// with v), and exactly 0 off-shard and on masked/padded tokens. Ties take the unclipped branch.
//
// Metrics per critic over its shard's valid tokens: clip_fraction = #(clipped > unclipped) / n
// (verl vf_clipfrac), mse = mean (v - R)^2 (no 0.5), explained_variance = 1 - Var(R - v) / Var(R)
// (moments accumulated as shifted sums per backend tile and merged with Chan's formula: no raw sum of
// squares is differenced; NaN when Var(R) = 0). A critic with no valid token in its shard has loss 0
// and NaN metrics (no division by zero). One fused reduce per critic computes loss, metrics and its
// gradient slice (add() writes only position i). Double accumulation; bit-identical for any CPU
// thread count and SIMD width (contiguous rows run on SIMD lanes on x86-64: core/simd/).
// Inputs in float, double, bfloat16 or float16 (read exactly); outputs and gradients in
// compute_type_t of the input type (half_types.hpp: float for the 16-bit types): the float call's bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "asyppo/core/aggregation.hpp"
#include "asyppo/core/bit_select.hpp"
#include "asyppo/core/simd/token_kernels.hpp"
#include "asyppo/core/value_acc.hpp"

namespace asyppo {

struct value_loss_options {
  double clip = 0.2;  ///< c_v; <= 0 turns clipping off (AsyPPO code: 0.2; verl/OpenRLHF: 0.5)
  bool half = true;   ///< multiply by 0.5 (verl/OpenRLHF); false for slime / the AsyPPO code
  loss_aggregation aggregation = loss_aggregation::seq_mean_token_mean;
  /// One normaliser per critic (size K), each from that critic's own shard; empty = local counts.
  std::vector<loss_normalizer> normalizers{};
  bool check_finite = true;  ///< reject NaN/Inf values, old values or targets on valid tokens
  /// Compute each critic's explained variance (two more running sums per token); false leaves it
  /// NaN, for callers that do not log it (the verl layer).
  bool explained_variance = true;
};

template <class T>
struct value_loss_inputs {
  critic_view<const T> values;             ///< [K,B,T] new values (being trained)
  critic_view<const T> old_values{};       ///< [K,B,T] each critic's old values; required when clip > 0
  token_view<const T> returns{};           ///< [B,T] shared targets (exactly one of returns / critic_returns)
  critic_view<const T> critic_returns{};   ///< [K,B,T] per-critic targets
  mask_view mask;                          ///< [B,T] required
  /// [K,B] 0/1 (core/shards.hpp), in the compute type (float for 16-bit inputs); absent = every row
  view<const compute_type_t<T>, 2> shard_weights{};
};

struct critic_loss_metrics {
  double loss = 0;  ///< L_k
  std::int64_t tokens = 0;          ///< valid tokens in the shard (this call)
  std::int64_t sequences = 0;       ///< non-empty rows in the shard (this call)
  std::int64_t clipped_tokens = 0;  ///< clipped > unclipped
  double squared_error_sum = 0;     ///< sum (v - R)^2
  double clip_fraction = std::numeric_limits<double>::quiet_NaN();
  double mse = std::numeric_limits<double>::quiet_NaN();
  double explained_variance = std::numeric_limits<double>::quiet_NaN();
  loss_normalizer normalizer{};  ///< resolved normaliser used for critic k
};

struct value_loss_result {
  double loss = 0;  ///< sum over critics
  std::vector<critic_loss_metrics> critics;
};

namespace detail {

template <class T, bool EV = true>
struct value_reducer {
  token_view<const T> v, vold, ret;  // critic k's slices; vold may be absent when clip is off
  mask_view mask;
  seq_view<const compute_type_t<T>> shard;  // critic k's row of the shard weights (absent: every row)
  const double* w;                          // critic k's row weights
  token_view<compute_type_t<T>> grad;       // critic k's gradient slice (optional)
  double clip, scale;  // clip > 0: clipping on; scale = 0.5 or 1
  using value_type = value_acc;
  using C = compute_type_t<T>;
  ASYPPO_HD value_acc identity() const { return {0, 0, 0, 0, {0, 0}, {0, 0}, {0, 0}}; }
  /// One valid on-shard token (new value x, target R, old value xo) into acc; returns dL/dx
  /// (wb = w_b * scale).
  ASYPPO_HD double token(value_acc& acc, double x, double R, double xo, double wb) const {
    const double d1 = x - R;
    const double u = d1 * d1;
    double e = u, de = 2.0 * d1;
    if (clip > 0) {
      // Branch-free: whether the clipped error wins is a coin flip on real data (selects, not
      // jumps). c2 > u implies the clamp is active, so the clipped branch's gradient is 0.
      double dv = x - xo;
      dv = dv > -clip ? dv : -clip;
      dv = dv < clip ? dv : clip;
      const double d2 = xo + dv - R;
      const double c2 = d2 * d2;
      const bool wins = c2 > u;
      e = wins ? c2 : u;
      de = zero_unless(!wins, de);
      acc.clipped += static_cast<std::int64_t>(wins);
    }
    acc.loss += wb * e;
    acc.sq += u;
    if constexpr (EV) {
      const double xs[2] = {R, R - x};
      if (acc.n == 0) acc.shift[0] = xs[0], acc.shift[1] = xs[1];
      for (int j = 0; j < 2; ++j) {
        const double d = xs[j] - acc.shift[j];
        acc.s1[j] += d;
        acc.s2[j] += d * d;
      }
    }
    acc.n += 1;
    return wb * de;
  }
  ASYPPO_HD bool on_shard(index_t b) const { return shard.data == nullptr || shard(b) != C(0); }
  // Writes grad at position i only; every i is visited exactly once.
  ASYPPO_HD void add(value_acc& acc, index_t b, index_t t) const {
    double g = 0.0;
    if (mask(b, t) && on_shard(b))
      g = token(acc, static_cast<double>(v(b, t)), static_cast<double>(ret(b, t)),
                clip > 0 ? static_cast<double>(vold(b, t)) : 0.0, w[b] * scale);
    if (grad.data) grad(b, t) = static_cast<C>(g);
  }
  /// add() over [t0, t1) on contiguous rows through plain pointers (the same operations per token).
  ASYPPO_HD void add_span(value_acc& acc_out, index_t b, index_t t0, index_t t1) const {
    if (!on_shard(b)) {  // another critic's row: zero gradient, nothing read
      if (grad.data)
        for (index_t t = t0; t < t1; ++t) grad(b, t) = C(0);
      return;
    }
#if defined(ASYPPO_SIMD_SSE2)  // host x86-64, not nvcc
    if constexpr (is_half_type_v<T>) {  // 16-bit inputs: the row widened, then the float span (same bits)
      // (the old values are read only with clipping: not widened without it)
      const value_reducer<float, EV> wide{widened_row(v, b, t0, t1, 0),
                                          clip > 0 ? widened_row(vold, b, t0, t1, 1) : token_view<const float>{},
                                          widened_row(ret, b, t0, t1, 2), mask, shard, w, grad, clip, scale};
      wide.add_span(acc_out, b, t0, t1);
      return;
    }
#endif
    if (!unit_inner_stride(v) || !unit_inner_stride(vold) || !unit_inner_stride(ret) || !unit_inner_stride(mask) ||
        !unit_inner_stride(grad)) {
      for (index_t t = t0; t < t1; ++t) add(acc_out, b, t);
      return;
    }
    C* g = grad.data ? &grad(b, 0) : nullptr;
    const T *px = &v(b, 0), *pr = &ret(b, 0), *po = clip > 0 ? &vold(b, 0) : nullptr;
    const std::uint8_t* m = &mask(b, 0);
    const double wb = w[b] * scale;
    value_acc acc = acc_out;  // a local: its stores cannot alias the views
    const auto one = [&](index_t t) {
      double gv = 0.0;
      if (m[t])  // masks are runs: a predictable branch
        gv = token(acc, static_cast<double>(px[t]), static_cast<double>(pr[t]), po ? static_cast<double>(po[t]) : 0.0, wb);
      if (g) g[t] = static_cast<C>(gv);
    };
    index_t t = t0;
    if constexpr (EV)
      for (; t < t1 && acc.n == 0; ++t) one(t);  // the first valid token sets the shifts
#if defined(ASYPPO_SIMD_SSE2)  // host x86-64, not nvcc
    if constexpr (!is_half_type_v<T>)  // (16-bit inputs took the widened path above)
      t = value_span_simd<EV>(acc, px, pr, po, m, g, wb, clip, t, t1);  // whole lane groups, same bits
#endif
    for (; t < t1; ++t) one(t);
    acc_out = acc;
  }
  ASYPPO_HD value_acc combine(const value_acc& a, const value_acc& b) const { return value_acc_combine(a, b); }
};

}  // namespace detail

/// Each critic's local counts over its own shard: valid tokens, non-empty rows and rows of the shard
/// (shard_weights [K,B] nonzero = in the shard; absent: every row, and K = 1). Sum them over the
/// micro-batches and ranks of the optimiser step and pass counts[k].normalizer() as normalizers[k].
template <class Backend, class T>
std::vector<loss_counts> count_critic_loss_tokens(const Backend& be, mask_view mask, view<const T, 2> shard_weights) {
  constexpr const char* where = "asyppo::count_critic_loss_tokens";
  detail::check_view(where, "mask", mask);
  const index_t B = mask.extent[0], Tn = mask.extent[1];
  if (!detail::present(mask) && B * Tn > 0) detail::fail(where, "mask", "is required");
  index_t K = 1;  // no shard view: one "critic" over every row; a [K,0] view (empty micro-batch) gives K
  if (detail::present(shard_weights) || shard_weights.extent[0] > 0) {
    detail::check_view(where, "shard_weights", shard_weights);
    K = shard_weights.extent[0];
    if (shard_weights.extent[1] != B)
      detail::fail(where, "shard_weights", "extent 1 is ", shard_weights.extent[1], ", expected ", B);
  }
  const auto span = detail::make_row_span(be, mask);
  const std::vector<index_t> len = detail::row_lengths_host<Backend, T>(be, mask, K, shard_weights, span.heads());
  std::vector<loss_counts> out;
  for (index_t k = 0; k < K; ++k) out.push_back(detail::counts_of_rows(len.data() + k * B, B, Tn));
  return out;
}

namespace detail {

struct value_loss_dims {
  index_t K, B, Tn;
  bool clip_on, per_critic;
};

/// Every check of value_loss and value_loss_to that reads no data (shapes, options, memory).
template <class Backend, class T>
value_loss_dims check_value_loss(const Backend& be, const char* where, const value_loss_inputs<T>& in,
                                 critic_view<compute_type_t<T>> grad_values, const value_loss_options& opt) {
  check_view(where, "values", in.values);
  const index_t K = in.values.extent[0], B = in.values.extent[1], Tn = in.values.extent[2];
  if (K < 1) fail(where, "values", "needs at least one critic (K >= 1), got K = ", K);
  check_required_mask(where, "mask", in.mask, B, Tn);
  const bool clip_on = opt.clip > 0;
  if (std::isnan(opt.clip) || std::isinf(opt.clip)) fail(where, "clip", "must be finite, got ", opt.clip);
  if (clip_on && !present(in.old_values) && K * B * Tn > 0)
    fail(where, "old_values", "is required when clip > 0 (clip = ", opt.clip, ")");
  check_optional_input(where, "old_values", in.old_values, {K, B, Tn});
  const bool shared = present(in.returns), per_critic = present(in.critic_returns);
  if (shared == per_critic && B * Tn > 0)
    fail(where, "returns", shared ? "give either returns [B,T] or critic_returns [K,B,T], not both"
                                  : "targets are required: returns [B,T] or critic_returns [K,B,T]");
  check_optional_input(where, "returns", in.returns, {B, Tn});
  check_optional_input(where, "critic_returns", in.critic_returns, {K, B, Tn});
  check_optional_input(where, "shard_weights", in.shard_weights, {K, B});
  check_optional_output(where, "grad_values", grad_values, {K, B, Tn});
  check_aggregation(where, opt.aggregation);
  const index_t nn = static_cast<index_t>(opt.normalizers.size());
  if (nn != 0 && nn != K) fail(where, "normalizers", "has ", nn, " entries, expected 0 (local counts) or K = ", K);
  for (const auto& n : opt.normalizers) check_normalizer_fields(where, "normalizers", n);
  check_memory(be, where, "values", in.values, "old_values", in.old_values, "returns", in.returns, "critic_returns",
               in.critic_returns, "mask", in.mask, "shard_weights", in.shard_weights, "grad_values", grad_values);
  return {K, B, Tn, clip_on, per_critic};
}

template <class Backend, class T, class Range>
void check_value_finite(const Backend& be, const char* where, const value_loss_inputs<T>& in, const value_loss_dims& d,
                        Range range) {
  check_finite(be, where, "values, old_values or targets", d.B, d.Tn,
               count_nonfinite_tokens<T, 3, 1>{{in.values, d.clip_on ? in.old_values : critic_view<const T>{},
                                                d.per_critic ? in.critic_returns : critic_view<const T>{}},
                                               {in.returns}, in.mask},
               range);
}

/// Critic k's gradient view (null when grad_values is absent).
template <class C>
token_view<C> critic_grad(critic_view<C> grad_values, index_t k) {
  return present(grad_values) ? grad_values[k] : token_view<C>{};
}

/// Critic k's fused reducer (E9) with row weights w (B entries).
template <bool EV, class T>
value_reducer<T, EV> value_reducer_of(const value_loss_inputs<T>& in, const value_loss_dims& d, index_t k,
                                      const double* w, critic_view<compute_type_t<T>> grad_values,
                                      const value_loss_options& opt) {
  return {in.values[k],
          d.clip_on ? in.old_values[k] : token_view<const T>{},
          d.per_critic ? in.critic_returns[k] : in.returns,
          in.mask,
          present(in.shard_weights) ? in.shard_weights[k] : seq_view<const compute_type_t<T>>{},
          w,
          critic_grad(grad_values, k),
          d.clip_on ? opt.clip : 0.0,
          opt.half ? 0.5 : 1.0};
}

/// Critic k's loss and metrics from its reduction (m holds the counts and normaliser already).
ASYPPO_HD inline void critic_metrics_from(critic_loss_metrics& m, const value_acc& a, bool ev) {
  m.loss = a.loss;
  m.clipped_tokens = a.clipped;
  m.squared_error_sum = a.sq;
  if (a.n > 0) {
    const double n = static_cast<double>(a.n);
    m.clip_fraction = static_cast<double>(a.clipped) / n;
    m.mse = a.sq / n;
    const double qr = a.s2[0] - a.s1[0] * a.s1[0] / n, qe = a.s2[1] - a.s1[1] * a.s1[1] / n;
    if (ev) m.explained_variance = qr > 0 ? 1.0 - qe / qr : std::numeric_limits<double>::quiet_NaN();
  }
}

/// reduce_to sink of value_loss_to: critic k's metrics into the backend's memory.
struct store_critic_metrics {
  critic_loss_metrics* dst;
  loss_normalizer norm;
  bool ev;
  ASYPPO_HD void operator()(const value_acc& a) const {
    critic_loss_metrics m;
    m.normalizer = norm;
    m.tokens = a.n;
    m.sequences = -1;  // not counted on the device
    critic_metrics_from(m, a, ev);
    *dst = m;
  }
};

/// Critic k's row weights where the data is: w[b] = row_weight(L_b) on its shard, 0 off it.
template <class S>
struct shard_row_weight {
  const index_t* len;
  view<const S, 2> shard;
  index_t k;
  double* w;
  loss_aggregation mode;
  loss_normalizer norm;
  ASYPPO_HD void operator()(index_t, index_t b) const {
    const bool on = shard.data == nullptr || shard(k, b) != S(0);
    w[b] = on ? row_weight(mode, norm, len[b]) : 0.0;
  }
};

}  // namespace detail

/// Value losses of the K critics; grad_values [K,B,T] (optional) receives dL_k/dV_new[k]. Throws
/// asyppo::error (and writes nothing) on bad shapes or K mismatches (old_values, critic_returns,
/// shard_weights, normalizers), both or neither of returns / critic_returns, a missing old_values
/// with clip > 0, a non-finite clip, a bad normaliser, or (check_finite) NaN/Inf values, old values
/// or targets on a valid token.
template <class Backend, class T>
value_loss_result value_loss(const Backend& be, const value_loss_inputs<T>& in,
                             critic_view<compute_type_t<T>> grad_values = {},
                             const value_loss_options& opt = {}) {
  constexpr const char* where = "asyppo::value_loss";
  const detail::value_loss_dims d = detail::check_value_loss(be, where, in, grad_values, opt);
  const index_t K = d.K, B = d.B, Tn = d.Tn, nn = static_cast<index_t>(opt.normalizers.size());
  const auto span = detail::make_row_span(be, in.mask);
  if (opt.check_finite) detail::check_value_finite(be, where, in, d, span.heads());
  const loss_normalizer local{};
  auto tab = detail::make_row_weights<Backend, compute_type_t<T>>(be, where, "normalizers", in.mask, K, in.shard_weights,
                                                  opt.aggregation, nn ? opt.normalizers.data() : &local, nn ? nn : 1,
                                                  span.heads());
  value_loss_result r;
  r.critics.resize(static_cast<std::size_t>(K));
  for (index_t k = 0; k < K; ++k) {
    critic_loss_metrics& m = r.critics[static_cast<std::size_t>(k)];
    m.normalizer = tab.resolved[static_cast<std::size_t>(k)];
    m.tokens = tab.counts[static_cast<std::size_t>(k)].tokens;
    m.sequences = tab.counts[static_cast<std::size_t>(k)].sequences;
    if (B * Tn == 0) continue;
    const double* w = tab.weights.data() + k * B;
    const auto padding = detail::zero_fill_of(detail::critic_grad(grad_values, k));
    const detail::value_acc a =
        opt.explained_variance
            ? detail::reduce_then_fill(be, B, Tn, detail::value_reducer_of<true>(in, d, k, w, grad_values, opt),
                                       span.heads(), padding)
            : detail::reduce_then_fill(be, B, Tn, detail::value_reducer_of<false>(in, d, k, w, grad_values, opt),
                                       span.heads(), padding);
    detail::critic_metrics_from(m, a, opt.explained_variance);
    r.loss += m.loss;
  }
  return r;
}

/// The device-result variant of value_loss: the same gradients, and each critic's metrics written to
/// metrics[k] (K entries in the backend's memory: device memory on a GPU) instead of returned
/// (metrics[k].sequences is -1: not counted; the total is the sum of metrics[k].loss). With
/// opt.check_finite = false it makes no host round trip: the row weights come from opt.normalizers,
/// which must hold K normalisers whose fields the aggregation uses are given (>= 0), not checked
/// against this call's counts. Throws like value_loss, and on a null metrics.
template <class Backend, class T>
void value_loss_to(const Backend& be, const value_loss_inputs<T>& in, critic_view<compute_type_t<T>> grad_values,
                   critic_loss_metrics* metrics, const value_loss_options& opt) {
  constexpr const char* where = "asyppo::value_loss_to";
  const detail::value_loss_dims d = detail::check_value_loss(be, where, in, grad_values, opt);
  const index_t K = d.K, B = d.B, Tn = d.Tn;
  if (metrics == nullptr) detail::fail(where, "metrics", "is null");
  detail::check_memory(be, where, "metrics", seq_view<critic_loss_metrics>(metrics, K));
  if (static_cast<index_t>(opt.normalizers.size()) != K)
    detail::fail(where, "normalizers", "must hold K = ", K, " explicit normalisers (the device-result variant cannot ",
                 "count on the host), got ", opt.normalizers.size());
  for (const auto& n : opt.normalizers) detail::check_explicit_normalizer(where, "normalizers", opt.aggregation, n);
  const auto span = detail::make_row_span(be, in.mask);
  if (opt.check_finite) detail::check_value_finite(be, where, in, d, span.heads());
  auto len = be.template allocate<index_t>(B);
  auto w = be.template allocate<double>(K * B);
  if (B > 0) {  // the lengths the weights need (detail::make_row_weights_in_place): 1 stands for "any"
    if (Tn > 0 && detail::weight_uses_length(opt.aggregation))
      be.row_reduce(B, Tn, detail::count_valid{in.mask}, detail::store_row<index_t>{len.data()}, span.heads());
    else be.fill(len.data(), B, index_t(1));
  }
  for (index_t k = 0; k < K; ++k) {
    const loss_normalizer& nk = opt.normalizers[static_cast<std::size_t>(k)];
    if (B > 0)
      be.for_each(1, B, detail::shard_row_weight<compute_type_t<T>>{len.data(), in.shard_weights, k, w.data() + k * B, opt.aggregation, nk});
    const double* wk = w.data() + k * B;
    const detail::store_critic_metrics sink{metrics + k, nk, opt.explained_variance};
    const auto padding = detail::zero_fill_of(detail::critic_grad(grad_values, k));
    if (opt.explained_variance)
      detail::reduce_to_then_fill(be, B, Tn, detail::value_reducer_of<true>(in, d, k, wk, grad_values, opt), span.heads(),
                                  sink, padding);
    else
      detail::reduce_to_then_fill(be, B, Tn, detail::value_reducer_of<false>(in, d, k, wk, grad_values, opt), span.heads(),
                                  sink, padding);
  }
}

}  // namespace asyppo
