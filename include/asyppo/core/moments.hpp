// asyppo/core/moments.hpp: masked count, mean and variance of a [B,T] tensor, batch-global.
//
// Two passes, both exact reductions in double followed by a communicator all-reduce:
//   pass 1: N = sum m, S = sum m x          -> mean = S / N
//   pass 2: Q = sum m (x - mean)^2          -> var = Q / N (biased) or Q / (N - 1) (unbiased)
// No sum of squares is ever differenced, so identical values give variance exactly 0.
// N = 0 gives mean 0, var 0; unbiased with N = 1 gives var 0. Deterministic: the backend
// folds fixed tiles in order and ranks are summed in rank order.
#pragma once

#include "asyppo/backend/patterns.hpp"
#include "asyppo/comm/communicator.hpp"
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
  index_t cols;
  double center;  // pass 1: 0 and power 1; pass 2: the mean and power 2
  bool square;
  struct value_type {
    double n, s;
  };
  ASYPPO_HD value_type identity() const { return {0, 0}; }
  ASYPPO_HD void add(value_type& acc, index_t i) const {
    const index_t b = i / cols, t = i - b * cols;
    if (!mask(b, t)) return;
    const double d = static_cast<double>(x(b, t)) - center;
    acc.n += 1;
    acc.s += square ? d * d : d;
  }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const { return {a.n + b.n, a.s + b.s}; }
};

}  // namespace detail

/// Moments of x over mask != 0, over the whole batch of every rank of comm.
template <class Backend, class T, class Comm = single_process>
masked_moments compute_masked_moments(const Backend& be, token_view<const T> x, mask_view mask, bool unbiased,
                                      const Comm& comm = {}) {
  const index_t B = x.extent[0], Tn = x.extent[1];
  auto first = be.reduce(B * Tn, detail::masked_sum_reducer<T>{x, mask, Tn, 0.0, false});
  double ns[2] = {first.n, first.s};
  comm.allreduce_sum(ns, 2);
  masked_moments m;
  m.count = ns[0];
  if (m.count <= 0) return m;
  m.mean = ns[1] / m.count;
  double q = be.reduce(B * Tn, detail::masked_sum_reducer<T>{x, mask, Tn, m.mean, true}).s;
  comm.allreduce_sum(&q, 1);
  const double d = unbiased ? m.count - 1 : m.count;
  m.var = d > 0 ? q / d : 0.0;
  return m;
}

}  // namespace asyppo
