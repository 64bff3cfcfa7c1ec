// asyppo/core/advantage_stats.hpp: summary moments of the advantage step (one fused pass).
//
// Over valid tokens: mean and std of the advantages (after I^A when it is applied in this same
// pass), of the returns R, and of R - V_k for each critic k, giving the explained variance
// EV_k = 1 - Var(R - V_k) / Var(R) (NaN when Var(R) = 0). Moments are accumulated per backend
// tile as sums of deviations from the tile's first value (shifted data: no catastrophic
// cancellation for data far from 0) and tiles are merged with Chan's pairwise formula; ranks
// are merged in rank order. These are diagnostics: the whitening that feeds the loss uses the
// exact two-pass moments of core/moments.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/comm/communicator.hpp"
#include "asyppo/core/simd/token_kernels.hpp"
#include "asyppo/core/validate.hpp"
#include "asyppo/views.hpp"

namespace asyppo::detail {

inline constexpr int stats_critics_per_pass = 8;

/// NC: critics per pass known at compile time (1 or 2, the common cases: the accumulators then
/// live in registers), or 0: ncritics at run time, up to stats_critics_per_pass. Values in T (any
/// input type), advantages and returns in its compute type.
template <class T, int NC = 0>
struct summary_reducer {
  static constexpr int cap = 2 + (NC > 0 ? NC : stats_critics_per_pass);  // advantages, returns, R - V_k
  using C = compute_type_t<T>;
  critic_view<const T> values;
  token_view<C> adv;
  token_view<const C> ret;
  mask_view mask;
  view<const std::uint8_t, 2> adv_mask;
  index_t first_critic, ncritics;
  bool apply_mask;  // write adv *= adv_mask (first pass only)

  struct value_type {
    double n;
    double shift[cap], s1[cap], s2[cap];
  };
  ASYPPO_HD int series() const { return NC > 0 ? cap : 2 + static_cast<int>(ncritics); }
  ASYPPO_HD value_type identity() const {
    value_type v;
    v.n = 0;
    for (int j = 0; j < cap; ++j) v.shift[j] = v.s1[j] = v.s2[j] = 0;
    return v;
  }
  ASYPPO_HD void add(value_type& a, index_t b, index_t t) const {
    if (!mask(b, t)) return;
    double x[cap];
    double A = static_cast<double>(adv(b, t));
    if (apply_mask && !adv_mask(b, t)) {
      adv(b, t) = C(0);
      A = 0;
    }
    x[0] = A;
    x[1] = static_cast<double>(ret(b, t));
    const int m = series();
    for (int j = 2; j < m; ++j) x[j] = x[1] - static_cast<double>(values(first_critic + j - 2, b, t));
    if (a.n == 0)
      for (int j = 0; j < m; ++j) a.shift[j] = x[j];
    a.n += 1;
    for (int j = 0; j < m; ++j) {
      const double d = x[j] - a.shift[j];
      a.s1[j] += d;
      a.s2[j] += d * d;
    }
  }
  /// add() over [t0, t1): with NC = 1 or 2 on contiguous rows, the series of a token in one SIMD
  /// vector (core/simd/token_kernels.inc; the same bits), else add() per token.
  ASYPPO_HD void add_span(value_type& a, index_t b, index_t t0, index_t t1) const {
    index_t t = t0;
#if defined(ASYPPO_SIMD_SSE2)  // host x86-64, not nvcc
    if constexpr (NC == 1 || NC == 2) {
      const bool unit = unit_inner_stride(values) && unit_inner_stride(adv) && unit_inner_stride(ret) &&
                        unit_inner_stride(mask) && (!apply_mask || unit_inner_stride(adv_mask));
      for (; t < t1 && a.n == 0; ++t) add(a, b, t);  // the first valid token sets the shifts
      if (unit && t < t1) {
        const T* v0 = &values(first_critic, b, 0);
        const T* v1 = NC == 2 ? &values(first_critic + 1, b, 0) : nullptr;
        const auto lanes = [&](const auto* w0, const auto* w1) {
          return summary_span_simd<NC>(a.n, a.shift, a.s1, a.s2, &adv(b, 0), &ret(b, 0), w0, w1, &mask(b, 0),
                                       apply_mask ? &adv_mask(b, 0) : nullptr, t, t1);
        };
        if constexpr (is_half_type_v<T>)  // 16-bit values widened into float rows first (same bits)
          t = lanes(widened_span(v0, t, t1, 0), v1 ? widened_span(v1, t, t1, 1) : nullptr);
        else
          t = lanes(v0, v1);
      }
    }
#endif
    for (; t < t1; ++t) add(a, b, t);
  }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const {
    if (a.n == 0) return b;
    if (b.n == 0) return a;
    value_type r;
    r.n = a.n + b.n;
    for (int j = 0; j < cap; ++j) {
      const double ma = a.shift[j] + a.s1[j] / a.n, mb = b.shift[j] + b.s1[j] / b.n;
      const double qa = a.s2[j] - a.s1[j] * a.s1[j] / a.n, qb = b.s2[j] - b.s1[j] * b.s1[j] / b.n;
      const double d = mb - ma;
      r.shift[j] = ma + d * b.n / r.n;
      r.s1[j] = 0;
      r.s2[j] = qa + qb + d * d * a.n * b.n / r.n;
    }
    return r;
  }
};

/// Count, mean and M2 of each series from a reducer's value: local = {n, mean_0, M2_0, ...}.
template <class V>
ASYPPO_HD void local_moments(const V& acc, int series, double* local) {
  local[0] = acc.n;
  for (int j = 0; j < series; ++j) {
    local[1 + 2 * j] = acc.n > 0 ? acc.shift[j] + acc.s1[j] / acc.n : 0.0;
    local[2 + 2 * j] = acc.n > 0 ? acc.s2[j] - acc.s1[j] * acc.s1[j] / acc.n : 0.0;
  }
}

/// Merges one rank's {n, mean_j, M2_j} into the running out (Chan's formula; ranks in rank order,
/// out starting at zeros).
ASYPPO_INLINE void merge_moments(double* out, const double* p, int series) {
  const double nb = p[0];
  if (nb == 0) return;
  const double na = out[0], n = na + nb;
  for (int j = 0; j < series; ++j) {
    const double ma = out[1 + 2 * j], mb = p[1 + 2 * j], d = mb - ma;
    out[1 + 2 * j] = ma + d * nb / n;
    out[2 + 2 * j] += p[2 + 2 * j] + d * d * na * nb / n;
  }
  out[0] = n;
}

/// Count, mean and M2 of each series over the valid tokens of this rank: {n, mean_0, M2_0, ...}.
template <int NC, class Backend, class T, class Range>
std::vector<double> summary_moments(const Backend& be, const summary_reducer<T, NC>& red, index_t B, index_t Tn,
                                    Range range) {
  const auto acc = be.reduce(B, Tn, red, range);
  std::vector<double> local(static_cast<std::size_t>(1 + 2 * red.series()), 0.0);
  local_moments(acc, red.series(), local.data());
  return local;
}

/// Mean and M2 per series after merging every rank's (n, mean, M2) in rank order.
template <class Comm>
std::vector<double> merge_over_ranks(const std::vector<double>& local, int series, const Comm& comm) {
  const int R = comm.size();
  const index_t width = 1 + 2 * series;
  std::vector<double> all(static_cast<std::size_t>(width * R));
  comm.allgather(local.data(), width, all.data());
  std::vector<double> out(static_cast<std::size_t>(width), 0.0);
  for (int r = 0; r < R; ++r) merge_moments(out.data(), all.data() + r * width, series);
  return out;
}

/// From the merged moments g of a pass over the critics [k0, k0 + nk) with valid tokens (g[0] > 0):
/// the advantage and return moments into s (first pass, which also sets var_ret) and each critic's
/// explained variance into ev[k0 + k]. S: advantage_summary or advantage_step_result.
template <class S>
ASYPPO_HD void finish_summary_pass(const double* g, index_t k0, index_t nk, double& var_ret, S& s, double* ev) {
  const double n = g[0];
  if (k0 == 0) {
    s.advantage_mean = g[1];
    s.advantage_std = sqrt(g[2] / n);
    s.return_mean = g[3];
    s.return_std = sqrt(g[4] / n);
    var_ret = g[4] / n;
  }
  for (index_t k = 0; k < nk; ++k)
    ev[k0 + k] = var_ret > 0 ? 1.0 - (g[2 + 2 * (2 + k)] / n) / var_ret : std::numeric_limits<double>::quiet_NaN();
}

/// Runs f(reducer, k0, nk) for each pass of the summary: critics [k0, k0 + nk), at most
/// stats_critics_per_pass each (at least one pass); the I^A store (apply_mask) in the first only.
template <class T, class F>
void for_each_summary_pass(critic_view<const T> values, token_view<compute_type_t<T>> adv,
                           token_view<const compute_type_t<T>> ret, mask_view mask, view<const std::uint8_t, 2> adv_mask,
                           bool apply_mask, F&& f) {
  const index_t K = values.extent[0];
  for (index_t k0 = 0; k0 < K || k0 == 0; k0 += stats_critics_per_pass) {
    const index_t nk = std::min<index_t>(stats_critics_per_pass, K - k0);
    const bool apply = apply_mask && k0 == 0;
    if (nk == 2) f(summary_reducer<T, 2>{values, adv, ret, mask, adv_mask, k0, 2, apply}, k0, nk);
    else if (nk == 1) f(summary_reducer<T, 1>{values, adv, ret, mask, adv_mask, k0, 1, apply}, k0, nk);
    else f(summary_reducer<T>{values, adv, ret, mask, adv_mask, k0, nk, apply}, k0, nk);
    if (K == 0) break;
  }
}

/// range: columns holding every valid token of each row (backend/patterns.hpp, ragged rows).
template <class Backend, class T, class Summary, class Comm, class Range>
void advantage_moments(const Backend& be, critic_view<const T> values, token_view<compute_type_t<T>> adv,
                       token_view<const compute_type_t<T>> ret, mask_view mask, view<const std::uint8_t, 2> adv_mask,
                       bool apply_mask, Summary& s, const Comm& comm, Range range) {
  const index_t B = adv.extent[0], Tn = adv.extent[1];
  s.explained_variance.assign(static_cast<std::size_t>(values.extent[0]), NAN);
  double var_ret = 0;
  for_each_summary_pass(values, adv, ret, mask, adv_mask, apply_mask, [&](const auto& red, index_t k0, index_t nk) {
    const auto g = merge_over_ranks(summary_moments(be, red, B, Tn, range), red.series(), comm);
    if (g[0] > 0) finish_summary_pass(g.data(), k0, nk, var_ret, s, s.explained_variance.data());
  });
}

/// The device-result twin: the same passes through reduce_to, each finished by one device thread
/// (one process: the merge is the single rank's). ev [K] and var_ret [1] in backend memory; ev must
/// hold NaN beforehand (critics of a pass without valid tokens keep it).
template <class R, class S>
struct store_summary_pass {
  index_t k0, nk;
  int series;
  double* var_ret;
  S* s;
  double* ev;
  ASYPPO_HD void operator()(const typename R::value_type& acc) const {
    double local[1 + 2 * R::cap], g[1 + 2 * R::cap];
    for (int j = 0; j < 1 + 2 * R::cap; ++j) g[j] = 0;
    local_moments(acc, series, local);
    merge_moments(g, local, series);
    if (g[0] > 0) finish_summary_pass(g, k0, nk, *var_ret, *s, ev);
  }
};

template <class Backend, class T, class S, class Range>
void advantage_moments_to(const Backend& be, critic_view<const T> values, token_view<compute_type_t<T>> adv,
                          token_view<const compute_type_t<T>> ret, mask_view mask, view<const std::uint8_t, 2> adv_mask,
                          bool apply_mask, S* s, double* ev, Range range) {
  const index_t B = adv.extent[0], Tn = adv.extent[1];
  auto var_ret = be.template allocate<double>(1);
  for_each_summary_pass(values, adv, ret, mask, adv_mask, apply_mask, [&](const auto& red, index_t k0, index_t nk) {
    using R = std::decay_t<decltype(red)>;
    reduce_to(be, B, Tn, red, range, store_summary_pass<R, S>{k0, nk, red.series(), var_ret.data(), s, ev});
  });
}

}  // namespace asyppo::detail
