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

#include "asyppo/backend/patterns.hpp"
#include "asyppo/comm/communicator.hpp"
#include "asyppo/core/row_span.hpp"
#include "asyppo/views.hpp"

namespace asyppo {

struct masked_moments {
  double count = 0;  ///< N, valid tokens in the whole (all-rank) batch
  double mean = 0;
  double var = 0;
};

namespace detail {

template <class T>
struct masked_sum_reducer {
  token_view<const T> x;
  mask_view mask;
  double center;  // pass 1: 0 and power 1; pass 2: the mean and power 2
  bool square;
  struct value_type {
    double n, s, s2;  // count, sum of d, sum of d^2 (pass 2 only), d = x - center
  };
  ASYPPO_HD value_type identity() const { return {0, 0, 0}; }
  ASYPPO_HD void add(value_type& acc, index_t b, index_t t) const {
    if (!mask(b, t)) return;
    const double d = static_cast<double>(x(b, t)) - center;
    acc.n += 1;
    acc.s += d;
    if (square) acc.s2 += d * d;
  }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const {
    return {a.n + b.n, a.s + b.s, a.s2 + b.s2};
  }
};

}  // namespace detail

/// Moments of x over mask != 0, over the whole batch of every rank of comm.
template <class Backend, class T, class Comm = single_process>
masked_moments compute_masked_moments(const Backend& be, token_view<const T> x, mask_view mask, bool unbiased,
                                      const Comm& comm = {}) {
  const index_t B = x.extent[0], Tn = x.extent[1];
  const auto span = detail::make_row_span(be, mask);  // both passes visit each row up to its last valid token
  auto first = be.reduce(B, Tn, detail::masked_sum_reducer<T>{x, mask, 0.0, false}, span.heads());
  double ns[2] = {first.n, first.s};
  comm.allreduce_sum(ns, 2);
  masked_moments m;
  m.count = ns[0];
  if (m.count <= 0) return m;
  m.mean = ns[1] / m.count;
  // Pass 2 about the provisional mean, corrected (Chan, Golub & LeVeque): S/N is not exactly the
  // mean (N copies of 0.35 sum to a value whose quotient misses 0.35 by an ulp), so the mean is
  // shifted by the mean deviation and Q = sum d^2 - (sum d)^2 / N. Identical values give d all
  // equal to one small exact number, hence mean exactly x and Q exactly 0.
  const auto second = be.reduce(B, Tn, detail::masked_sum_reducer<T>{x, mask, m.mean, true}, span.heads());
  double sq[2] = {second.s, second.s2};
  comm.allreduce_sum(sq, 2);
  const double shift = sq[0] / m.count;
  m.mean += shift;
  double q = sq[1] - sq[0] * shift;
  if (!(q > 0)) q = 0;
  const double d = unbiased ? m.count - 1 : m.count;
  m.var = d > 0 ? q / d : 0.0;
  return m;
}

}  // namespace asyppo
