// tests/support/exact_ops.hpp: exact, associative, non-commutative operators for pattern tests.
//
// 2x2 matrices and affine maps over Z / 2^64 (unsigned wrap-around): any reordering of a reduction
// or scan changes the result, while any re-association gives the same bits, so a pattern's result
// can be compared with a sequential loop exactly.
#pragma once

#include <cstdint>

#include "asyppo/config.hpp"

namespace asyppo_test {

using asyppo::index_t;
using u64 = std::uint64_t;

struct mat {
  u64 a, b, c, d;
  bool operator==(const mat&) const = default;
};
inline mat mul(const mat& x, const mat& y) {
  return {x.a * y.a + x.b * y.c, x.a * y.b + x.b * y.d, x.c * y.a + x.d * y.c, x.c * y.b + x.d * y.d};
}
inline constexpr mat eye{1, 0, 0, 1};
inline mat elem_mat(index_t i) {
  const u64 v = static_cast<u64>(i) * 0x9E3779B97F4A7C15ull + 12345;
  return {v | 1, v >> 7, (v >> 13) ^ 0x5555, (v * 3) | 1};
}

/// Product of elem_mat over a flat [0, n) space.
struct mat_reducer {
  using value_type = mat;
  mat identity() const { return eye; }
  void add(mat& acc, index_t i) const { acc = mul(acc, elem_mat(i)); }
  mat combine(const mat& x, const mat& y) const { return mul(x, y); }
};
/// Product of elem_mat(b * cols + t) over a [rows, cols] space.
struct mat_reducer2 {
  index_t cols;
  using value_type = mat;
  mat identity() const { return eye; }
  void add(mat& acc, index_t b, index_t t) const { acc = mul(acc, elem_mat(b * cols + t)); }
  mat combine(const mat& x, const mat& y) const { return mul(x, y); }
};

/// Affine maps x -> u x + o for row scans: apply(e, x) = u x + o; combine(a, b) = b after a.
struct affine {
  u64 u, o;
};
struct affine_op {
  using value_type = affine;
  u64 initial() const { return 7; }
  affine lift(const affine& e) const { return e; }
  u64 apply(const affine& e, u64 x) const { return e.u * x + e.o; }
  affine combine(const affine& a, const affine& b) const { return {b.u * a.u, b.u * a.o + b.o}; }
};
struct affine_elem {
  index_t cols;
  affine operator()(index_t b, index_t t) const {
    const u64 v = static_cast<u64>(b * cols + t) * 0xD1B54A32D192ED03ull + 99;
    return {v | 1, v >> 9};
  }
};

}  // namespace asyppo_test
