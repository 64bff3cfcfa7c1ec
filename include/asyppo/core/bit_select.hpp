// asyppo/core/bit_select.hpp: branch-free selects for per-token code.
//
// zero_unless(keep, x) is keep ? x : +0.0, computed by masking the bits of x, so that it costs no
// jump and no multiply: x may be +-Inf or NaN (x * 0 would be NaN, x * 1 keeps it). Compilers turn a
// plain `keep ? x : 0.0` into a conditional jump when they guess the condition is predictable;
// where the condition is a coin flip on real data (clip decisions, scattered I^A zeros), that
// jump mispredicts on a large share of the tokens. Host and device.
#pragma once

#include <cstdint>
#include <cstring>

#include "asyppo/config.hpp"

namespace asyppo::detail {

ASYPPO_INLINE double zero_unless(bool keep, double x) {
  std::uint64_t u;
  memcpy(&u, &x, sizeof u);
  u &= std::uint64_t{0} - static_cast<std::uint64_t>(keep);  // all ones or all zeros
  memcpy(&x, &u, sizeof u);
  return x;
}

}  // namespace asyppo::detail
