// asyppo/core/value_acc.hpp: the running sums of the value loss (core/value_loss.hpp) and their merge.
//
// Per critic: the weighted loss, the squared error, the token and clip counts, and shifted sums of two
// series (R and R - v, for the explained variance) merged with Chan's formula (docs/algorithm.md E9).
#pragma once

#include <cstdint>

#include "asyppo/config.hpp"

namespace asyppo::detail {

/// n items' shifted sums for two series (R and R - v): shift = an early value, s1 = sum (x - shift),
/// s2 = sum (x - shift)^2.
struct value_acc {
  double loss, sq;
  std::int64_t n, clipped;
  double shift[2], s1[2], s2[2];
};

ASYPPO_INLINE value_acc value_acc_combine(const value_acc& a, const value_acc& b) {
  if (a.n == 0) {
    value_acc r = b;
    r.loss += a.loss;
    return r;
  }
  if (b.n == 0) {
    value_acc r = a;
    r.loss += b.loss;
    return r;
  }
  value_acc r;
  r.loss = a.loss + b.loss;
  r.sq = a.sq + b.sq;
  r.n = a.n + b.n;
  r.clipped = a.clipped + b.clipped;
  const double na = static_cast<double>(a.n), nb = static_cast<double>(b.n), n = static_cast<double>(r.n);
  for (int j = 0; j < 2; ++j) {
    const double ma = a.shift[j] + a.s1[j] / na, mb = b.shift[j] + b.s1[j] / nb;
    const double qa = a.s2[j] - a.s1[j] * a.s1[j] / na, qb = b.s2[j] - b.s1[j] * b.s1[j] / nb;
    const double d = mb - ma;
    r.shift[j] = ma + d * nb / n;
    r.s1[j] = 0;
    r.s2[j] = qa + qb + d * d * na * nb / n;
  }
  return r;
}

}  // namespace asyppo::detail
