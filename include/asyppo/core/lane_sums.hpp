// asyppo/core/lane_sums.hpp: eight interleaved partial sums (docs/algorithm.md, Eq. O1).
//
// A sum over the columns of a row (or of a batch) keeps eight partial sums: column t is added to
// lane t mod 8, and total() adds the lanes in a fixed tree. The order of the additions is a
// function of the column indices only, so a per-element fold, a contiguous span fold (which
// vectorises instead of waiting on one chain of dependent adds) and any tiling of rows give the
// same bits. Lanes start at +0 and so never hold -0: adding +0 for a skipped (masked) column
// leaves a lane's bits unchanged, which lets span folds use selects instead of branches.
#pragma once

#include "asyppo/config.hpp"

namespace asyppo::detail {

struct lane_sums {
  double v[8];  // trivial (device shared memory); zero() for the identity
  ASYPPO_HD static lane_sums zero() { return {{0, 0, 0, 0, 0, 0, 0, 0}}; }
  ASYPPO_HD double total() const { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }
  ASYPPO_HD friend lane_sums operator+(const lane_sums& x, const lane_sums& y) {
    lane_sums s;
    for (int j = 0; j < 8; ++j) s.v[j] = x.v[j] + y.v[j];
    return s;
  }
};

}  // namespace asyppo::detail
