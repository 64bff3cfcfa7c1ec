// tests/support/pattern_checks.hpp: backend-generic pattern tests against sequential loops.
//
// check_ragged_patterns(be, rows, cols, seed): every ragged 2-D pattern (for_each, reduce,
// row_reduce, row_scan both directions, histogram, collect) over random per-row column ranges
// (empty, full and partial rows) with exact non-commutative operators (exact_ops.hpp): exactly the
// positions in range are visited, and reductions and scans give the sequential row-major result.
// check_flat_patterns(be, seed): the flat patterns (for_each, reduce, segmented_reduce and
// segmented_scan with empty segments, histogram, sort_indices) the same way. Any backend that
// satisfies asyppo::Backend can be checked (Kokkos style: one test body, every backend).
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "asyppo/backend/patterns.hpp"
#include "exact_ops.hpp"

namespace asyppo_test {

using asyppo::scan_direction;

struct ranges {
  std::vector<index_t> lo, hi;
  void operator()(index_t b, index_t& l, index_t& h) const {
    l = lo[static_cast<std::size_t>(b)];
    h = hi[static_cast<std::size_t>(b)];
  }
};

ranges random_ranges(std::mt19937_64& rng, index_t rows, index_t cols) {
  ranges r;
  for (index_t b = 0; b < rows; ++b) {
    index_t l = 0, h = cols;
    switch (rng() % 5) {
      case 0: l = h = static_cast<index_t>(rng() % static_cast<u64>(cols + 1)); break;  // empty
      case 1: break;                                                                     // full row
      default:
        l = static_cast<index_t>(rng() % static_cast<u64>(cols + 1));
        h = l + static_cast<index_t>(rng() % static_cast<u64>(cols - l + 1));
    }
    r.lo.push_back(l);
    r.hi.push_back(h);
  }
  return r;
}

template <class Be>
void check_ragged_patterns(const Be& be, index_t rows, index_t cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const ranges rg = random_ranges(rng, rows, cols);
  auto in = [&](index_t b, index_t t) { return t >= rg.lo[static_cast<std::size_t>(b)] && t < rg.hi[static_cast<std::size_t>(b)]; };

  // for_each: exactly the positions in range, once.
  std::vector<int> inside(static_cast<std::size_t>(rows * cols), 0), hits(inside.size(), 0);
  for (index_t b = 0; b < rows; ++b)
    for (index_t t = 0; t < cols; ++t) inside[static_cast<std::size_t>(b * cols + t)] = in(b, t) ? 1 : 0;
  be.for_each(rows, cols, [&](index_t b, index_t t) { ++hits[static_cast<std::size_t>(b * cols + t)]; }, rg);
  REQUIRE(hits == inside);

  // reduce and row_reduce: the sequential row-major product over the positions in range.
  mat all = eye;
  std::vector<mat> per_row(static_cast<std::size_t>(rows), eye);
  for (index_t b = 0; b < rows; ++b)
    for (index_t t = 0; t < cols; ++t)
      if (in(b, t)) {
        all = mul(all, elem_mat(b * cols + t));
        per_row[static_cast<std::size_t>(b)] = mul(per_row[static_cast<std::size_t>(b)], elem_mat(b * cols + t));
      }
  REQUIRE(be.reduce(rows, cols, mat_reducer2{cols}, rg) == all);
  std::vector<mat> got_rows(static_cast<std::size_t>(rows), mat{0, 0, 0, 0});
  be.row_reduce(rows, cols, mat_reducer2{cols}, [&](index_t b, const mat& m) { got_rows[static_cast<std::size_t>(b)] = m; }, rg);
  REQUIRE(got_rows == per_row);

  // row_scan: the fold starts from initial() at the range's first column in scan order.
  for (auto dir : {scan_direction::forward, scan_direction::reverse}) {
    std::vector<u64> want(static_cast<std::size_t>(rows * cols), 0), got(want.size(), 0);
    for (index_t b = 0; b < rows; ++b) {
      u64 x = affine_op{}.initial();
      const index_t l = rg.lo[static_cast<std::size_t>(b)], h = rg.hi[static_cast<std::size_t>(b)];
      for (index_t k = 0; k < h - l; ++k) {
        const index_t t = dir == scan_direction::forward ? l + k : h - 1 - k;
        x = affine_op{}.apply(affine_elem{cols}(b, t), x);
        want[static_cast<std::size_t>(b * cols + t)] = x;
      }
    }
    std::vector<int> seen(want.size(), 0);
    be.row_scan(dir, rows, cols, affine_elem{cols}, affine_op{}, [&](index_t b, index_t t, u64 x) {
      got[static_cast<std::size_t>(b * cols + t)] = x;
      ++seen[static_cast<std::size_t>(b * cols + t)];
    }, rg);
    REQUIRE(got == want);
    REQUIRE(seen == inside);
  }

  // histogram and collect: only positions in range, collect in row-major order.
  const index_t nbins = 11;
  auto bin = [&](index_t b, index_t t) -> index_t { return (b * 7 + t * 3) % 13 - 2; };  // some negative
  std::vector<u64> want_h(static_cast<std::size_t>(nbins), 3), got_h(want_h);
  std::vector<index_t> want_c;
  for (index_t b = 0; b < rows; ++b)
    for (index_t t = 0; t < cols; ++t)
      if (in(b, t)) {
        if (bin(b, t) >= 0) ++want_h[static_cast<std::size_t>(bin(b, t))];
        if ((b + t) % 3 == 0) want_c.push_back(b * cols + t);
      }
  be.histogram(rows, cols, bin, nbins, got_h.data(), rg);
  REQUIRE(got_h == want_h);
  const auto got_c = be.template collect<index_t>(rows, cols, [&](index_t b, index_t t, index_t& v) {
    v = b * cols + t;
    return (b + t) % 3 == 0;
  }, rg);
  REQUIRE(got_c == want_c);
}


/// Flat segmented scans: the elements are the values (no lift), combined by matrix product.
struct mat_scan {
  using value_type = mat;
  mat combine(const mat& a, const mat& b) const { return mul(a, b); }
};

template <class Be>
void check_flat_patterns(const Be& be, index_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  // for_each: every index once.
  std::vector<int> hits(static_cast<std::size_t>(n), 0);
  be.for_each(n, [&](index_t i) { ++hits[static_cast<std::size_t>(i)]; });
  REQUIRE(std::count(hits.begin(), hits.end(), 1) == n);
  // reduce: the sequential product.
  mat all = eye;
  for (index_t i = 0; i < n; ++i) all = mul(all, elem_mat(i));
  REQUIRE(be.reduce(n, mat_reducer{}) == all);
  // Segments with empty ones (CSR offsets), reduce and scan in both directions.
  std::vector<index_t> off{0};
  while (off.back() < n) off.push_back(std::min(n, off.back() + static_cast<index_t>(rng() % 9)));  // steps of 0..8
  const index_t nseg = static_cast<index_t>(off.size()) - 1;
  const asyppo::offset_segments seg{off.data()};
  std::vector<mat> want_seg(static_cast<std::size_t>(nseg), eye), got_seg(want_seg.size(), mat{0, 0, 0, 0});
  for (index_t g = 0; g < nseg; ++g)
    for (index_t i = off[static_cast<std::size_t>(g)]; i < off[static_cast<std::size_t>(g) + 1]; ++i)
      want_seg[static_cast<std::size_t>(g)] = mul(want_seg[static_cast<std::size_t>(g)], elem_mat(i));
  be.segmented_reduce(nseg, seg, mat_reducer{}, [&](index_t g, const mat& m) { got_seg[static_cast<std::size_t>(g)] = m; });
  REQUIRE(got_seg == want_seg);
  for (auto dir : {scan_direction::forward, scan_direction::reverse}) {
    std::vector<mat> want(static_cast<std::size_t>(n), mat{0, 0, 0, 0}), got(want);
    for (index_t g = 0; g < nseg; ++g) {
      const index_t lo = off[static_cast<std::size_t>(g)], hi = off[static_cast<std::size_t>(g) + 1];
      mat x = eye;
      for (index_t k = 0; k < hi - lo; ++k) {
        const index_t i = dir == scan_direction::forward ? lo + k : hi - 1 - k;
        x = k == 0 ? elem_mat(i) : mul(x, elem_mat(i));
        want[static_cast<std::size_t>(i)] = x;
      }
    }
    be.segmented_scan(dir, nseg, seg, [](index_t i) { return elem_mat(i); }, mat_scan{},
                      [&](index_t i, const mat& x) { got[static_cast<std::size_t>(i)] = x; });
    REQUIRE(got == want);
  }
  // histogram (negative bins skipped, counts added to what is there) and a stable sort.
  const index_t nbins = 7;
  std::vector<std::uint64_t> want_h(static_cast<std::size_t>(nbins), 5), got_h(want_h);
  auto bin = [](index_t i) -> index_t { return (i * 5) % 9 - 2; };
  for (index_t i = 0; i < n; ++i)
    if (bin(i) >= 0 && bin(i) < nbins) ++want_h[static_cast<std::size_t>(bin(i))];
  be.histogram(n, [&](index_t i) { return bin(i) < nbins ? bin(i) : index_t(-1); }, nbins, got_h.data());
  REQUIRE(got_h == want_h);
  std::vector<std::int64_t> key(static_cast<std::size_t>(n));
  for (auto& k : key) k = static_cast<std::int64_t>(rng() % 6) - 3;  // many ties
  std::vector<index_t> want_p(static_cast<std::size_t>(n)), got_p(want_p.size());
  for (index_t i = 0; i < n; ++i) want_p[static_cast<std::size_t>(i)] = i;
  std::stable_sort(want_p.begin(), want_p.end(), [&](index_t a, index_t b) { return key[static_cast<std::size_t>(a)] < key[static_cast<std::size_t>(b)]; });
  be.sort_indices(n, [&](index_t i) { return key[static_cast<std::size_t>(i)]; }, got_p.data());
  REQUIRE(got_p == want_p);
}

}  // namespace asyppo_test
