// asyppo/core/moments.hpp: masked count, mean and variance of a [B,T] tensor, batch-global.
//
// Two passes, both exact reductions in double followed by a communicator all-reduce:
//   pass 1: N = sum m, S = sum m x          -> provisional mean mu0 = S / N
//   pass 2: S1 = sum m d, S2 = sum m d^2, d = x - mu0  (corrected two-pass)
//           mean = mu0 + S1 / N, Q = S2 - S1^2 / N  -> var = Q / N (biased) or Q / (N - 1) (unbiased)
// Raw sums of squares of x are never differenced, and identical values give mean exactly x and
// variance exactly 0 (S / N alone can miss x by an ulp, e.g. three copies of 0.35).
// N = 0 gives mean 0, var 0; unbiased with N = 1 gives var 0. Deterministic: the backend
// folds fixed tiles in order and ranks are summed in rank order.
#pragma once

#include <cstdint>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/comm/communicator.hpp"
#include "asyppo/core/bit_select.hpp"
#include "asyppo/core/lane_sums.hpp"
#include "asyppo/core/row_span.hpp"
#include "asyppo/core/validate.hpp"
#include "asyppo/views.hpp"

namespace asyppo {

struct masked_moments {
  double count = 0;  ///< N, valid tokens in the whole (all-rank) batch
  double mean = 0;
  double var = 0;
};

namespace detail {

/// Count, sum and (pass 2) sum of squares of d = x - center over the valid tokens, the sums in
/// eight lanes by column (core/lane_sums.hpp): the per-element and the contiguous span fold give
/// the same bits, and the span fold runs eight independent chains instead of one.
template <class T>
struct masked_sum_reducer {
  token_view<const T> x;
  mask_view mask;
  double center;  // pass 1: 0 and power 1; pass 2: the mean and power 2
  bool square;
  struct value_type {
    double n;          // count
    lane_sums s, s2;   // sum of d, sum of d^2 (pass 2 only), d = x - center
  };
  ASYPPO_HD value_type identity() const { return {0, lane_sums::zero(), lane_sums::zero()}; }
  ASYPPO_HD void add(value_type& acc, index_t b, index_t t) const {
    if (!mask(b, t)) return;
    const double d = static_cast<double>(x(b, t)) - center;
    acc.n += 1;
    acc.s.v[t & 7] += d;
    if (square) acc.s2.v[t & 7] += d * d;
  }
  /// add() over [t0, t1); contiguous rows in blocks of eight columns with selects (a masked
  /// column adds +0 to its lanes, which changes no bits: see lane_sums).
  ASYPPO_HD void add_span(value_type& acc, index_t b, index_t t0, index_t t1) const {
    index_t t = t0;
    if (unit_inner_stride(x) && unit_inner_stride(mask)) {
      for (; t < t1 && (t & 7) != 0; ++t) add(acc, b, t);
      t = square ? blocks<true>(acc, b, t, t1) : blocks<false>(acc, b, t, t1);
    }
    for (; t < t1; ++t) add(acc, b, t);
  }
  /// The whole blocks of eight from t (a multiple of 8) on; returns where they end.
  template <bool Square>
  ASYPPO_HD index_t blocks(value_type& acc, index_t b, index_t t, index_t t1) const {
    const T* p = &x(b, 0);
    const std::uint8_t* m = &mask(b, 0);
    double s[8], s2[8];  // locals: registers, no aliasing with the views
    for (int j = 0; j < 8; ++j) s[j] = acc.s.v[j], s2[j] = acc.s2.v[j];
    std::int64_t n = 0;
    for (; t + 8 <= t1; t += 8)
      for (int j = 0; j < 8; ++j) {
        const bool v = m[t + j] != 0;
        const double d = zero_unless(v, static_cast<double>(p[t + j]) - center);
        n += v;
        s[j] += d;
        if (Square) s2[j] += d * d;
      }
    for (int j = 0; j < 8; ++j) acc.s.v[j] = s[j], acc.s2.v[j] = s2[j];
    acc.n += static_cast<double>(n);  // a count: exact in any order
    return t;
  }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const {
    return {a.n + b.n, a.s + b.s, a.s2 + b.s2};
  }
};

/// The moments from pass 1's count and sum (mean S / N; N = 0: all 0).
ASYPPO_HD inline masked_moments moments_first(double n, double sum) {
  masked_moments m;
  m.count = n;
  if (n > 0) m.mean = sum / n;
  return m;
}

/// Pass 2's correction (Chan, Golub & LeVeque): S/N is not exactly the mean (N copies of 0.35 sum to a
/// value whose quotient misses 0.35 by an ulp), so the mean is shifted by the mean deviation and
/// Q = sum d^2 - (sum d)^2 / N. Identical values give d all equal to one small exact number, hence mean
/// exactly x and Q exactly 0. N = 0 leaves the moments 0.
ASYPPO_HD inline void moments_second(masked_moments& m, double s1, double s2, bool unbiased) {
  if (!(m.count > 0)) return;
  const double shift = s1 / m.count;
  m.mean += shift;
  double q = s2 - s1 * shift;
  if (!(q > 0)) q = 0;
  const double d = unbiased ? m.count - 1 : m.count;
  m.var = d > 0 ? q / d : 0.0;
}

/// compute_masked_moments without the memory check (for callers that made it).
template <class Backend, class T, class Comm>
masked_moments masked_moments_unchecked(const Backend& be, token_view<const T> x, mask_view mask, bool unbiased,
                                        const Comm& comm) {
  const index_t B = x.extent[0], Tn = x.extent[1];
  const auto span = detail::make_row_span(be, mask);  // both passes visit each row up to its last valid token
  auto first = be.reduce(B, Tn, detail::masked_sum_reducer<T>{x, mask, 0.0, false}, span.heads());
  double ns[2] = {first.n, first.s.total()};
  comm.allreduce_sum(ns, 2);
  masked_moments m = moments_first(ns[0], ns[1]);
  if (m.count <= 0) return m;
  // Pass 2 about the provisional mean, corrected (moments_second).
  const auto second = be.reduce(B, Tn, detail::masked_sum_reducer<T>{x, mask, m.mean, true}, span.heads());
  double sq[2] = {second.s.total(), second.s2.total()};
  comm.allreduce_sum(sq, 2);
  moments_second(m, sq[0], sq[1], unbiased);
  return m;
}

/// The checks of compute_masked_moments and masked_moments_to: x [B,T] and a required mask of its shape.
template <class Backend, class T>
void check_moments_args(const Backend& be, const char* where, token_view<const T> x, mask_view mask) {
  check_view(where, "x", x);
  check_required_mask(where, "mask", mask, x.extent[0], x.extent[1]);
  check_memory(be, where, "x", x, "mask", mask);
}

}  // namespace detail

/// Moments of x [B,T] over mask [B,T] != 0 (required), over the whole batch of every rank of comm. Throws
/// asyppo::error on bad shapes. NaN/Inf values propagate. Device-result variant (one process):
/// masked_moments_to (core/whiten.hpp).
template <class Backend, class T, class Comm = single_process>
masked_moments compute_masked_moments(const Backend& be, token_view<const T> x, mask_view mask, bool unbiased,
                                      const Comm& comm = {}) {
  detail::check_moments_args(be, "asyppo::compute_masked_moments", x, mask);
  return detail::masked_moments_unchecked(be, x, mask, unbiased, comm);
}

}  // namespace asyppo
