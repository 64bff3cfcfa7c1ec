// asyppo/backend/patterns.hpp: the contracts every backend implements (the Backend concept),
// and the small vocabulary types the patterns take.
//
// A backend is a small copyable value object. Algorithms in asyppo/core build functors
// and call only these patterns, so one algorithm runs on every backend and each backend is
// free to fuse: the functors are called per element, never per tensor.
//
// Flat patterns over [0, n):
//   for_each(n, f)                       f(i) for every i; the i's are independent.
//   reduce(n, r)                         fold r.add(acc, i) over i, merging partial accumulators
//                                        with r.combine(a, b) (a earlier): associative, need not
//                                        be commutative.
//   segmented_reduce(nseg, begin, r, s)  per segment g = [begin(g), begin(g+1)): s(g, acc).
//   segmented_scan(dir, nseg, begin, e, op, s)
//                                        inclusive scan of e(i) with op.combine inside each
//                                        segment, increasing (forward) or decreasing (reverse) i:
//                                        s(i, e(first) op ... op e(i)).
//   histogram(n, bin, nbins, counts)     counts[k] += #{i : bin(i) == k} (k < 0 is skipped).
//   sort_indices(n, key, perm)           perm = 0..n-1 stably sorted by the int64 key(i).
// 2-D patterns over a row-major [rows, cols] index space (functors receive (b, t); what the
// token algorithms use, so no backend ever divides a flat index):
//   for_each(rows, cols, f)              f(b, t).
//   reduce(rows, cols, r)                r.add(acc, b, t), as reduce above.
//   row_reduce(rows, cols, r, s)         per row: s(b, acc).
//   row_scan(dir, rows, cols, e, op, s)  per row, a scan over t of the elements e(b, t), delivered
//                                        as states: s(b, t, x_t) with x_t = op.apply(e(b,t), x_prev)
//                                        and x before the first element op.initial(). A parallel
//                                        backend computes the same x_t as
//                                        op.apply(op.combine(...op.lift(e)...), op.initial()),
//                                        so op.combine must be associative (non-commutative is
//                                        fine; a is earlier in scan order) and
//                                        apply(combine(a, b), x) == apply(b, apply(a, x)).
//   histogram(rows, cols, bin, nbins, counts)   bin(b, t).
//   collect<V>(rows, cols, pick) -> host std::vector<V>
//                                        the v with pick(b, t, v) true, in row-major order
//                                        (stream compaction; used for small candidate sets).
// Memory: allocate<T>(n) (an owning buffer with data()), copy_to_host, copy_from_host, fill.
//
// Reducer r: value_type; identity(); add(acc&, index...); combine(a, b). add() may also write
// to the output locations of its own index (each index is visited exactly once), which is how
// an algorithm fuses "compute a value, store it, and sum it" into one pass. Scan op: value_type;
// initial(); lift(e); apply(e, x) (and apply(value, x)); combine(a, b). All functors are
// ASYPPO_HD, trivially copyable, hold views/pointers/scalars only, and never throw.
//
// Determinism contract (every backend): for the same inputs, every pattern returns
// bit-identical results run to run, and the CPU backend's results do not depend on its
// thread count (reduce folds fixed tiles, then merges the tiles in order). Across backends,
// reductions may associate differently; algorithms document the resulting tolerance.
#pragma once

#include <concepts>
#include <cstdint>

#include "asyppo/config.hpp"

namespace asyppo {

enum class scan_direction { forward, reverse };

/// Segment boundaries of a [rows, cols] row-major index space: segment g is row g.
struct row_segments {
  index_t cols;
  ASYPPO_HD index_t operator()(index_t g) const { return g * cols; }
};

/// Segment boundaries read from an offsets array of nseg+1 entries (CSR style).
struct offset_segments {
  const index_t* offsets;
  ASYPPO_HD index_t operator()(index_t g) const { return offsets[g]; }
};

namespace detail {
struct probe_reducer {
  using value_type = double;
  ASYPPO_HD double identity() const { return 0; }
  ASYPPO_HD void add(double&, index_t) const {}
  ASYPPO_HD double combine(double a, double b) const { return a + b; }
};
struct probe_scan {
  using value_type = double;
  ASYPPO_HD double initial() const { return 0; }
  ASYPPO_HD double lift(double e) const { return e; }
  ASYPPO_HD double apply(double e, double x) const { return x + e; }
  ASYPPO_HD double combine(double a, double b) const { return a + b; }
};
struct probe_reducer2 {
  using value_type = double;
  ASYPPO_HD double identity() const { return 0; }
  ASYPPO_HD void add(double&, index_t, index_t) const {}
  ASYPPO_HD double combine(double a, double b) const { return a + b; }
};
struct probe_elem2 {
  ASYPPO_HD double operator()(index_t, index_t) const { return 0; }
};
struct probe_sink2 {
  ASYPPO_HD void operator()(index_t, index_t, double) const {}
};
struct probe_index2 {
  ASYPPO_HD void operator()(index_t, index_t) const {}
};
struct probe_bin2 {
  ASYPPO_HD index_t operator()(index_t, index_t) const { return -1; }
};
struct probe_pick {
  ASYPPO_HD bool operator()(index_t, index_t, double&) const { return false; }
};
struct probe_elem {
  ASYPPO_HD double operator()(index_t) const { return 0; }
};
struct probe_sink {
  ASYPPO_HD void operator()(index_t, double) const {}
};
struct probe_index {
  ASYPPO_HD void operator()(index_t) const {}
};
struct probe_bin {
  ASYPPO_HD index_t operator()(index_t) const { return -1; }
};
struct probe_key {
  ASYPPO_HD std::int64_t operator()(index_t i) const { return i; }
};
}  // namespace detail

/// What an algorithm may call on a backend.
template <class B>
concept Backend = std::copy_constructible<B> && requires(const B& b, index_t n, index_t* perm,
                                                          std::uint64_t* counts, double* p) {
  { b.for_each(n, detail::probe_index{}) };
  { b.reduce(n, detail::probe_reducer{}) } -> std::same_as<double>;
  { b.segmented_reduce(n, row_segments{1}, detail::probe_reducer{}, detail::probe_sink{}) };
  {
    b.segmented_scan(scan_direction::reverse, n, row_segments{1}, detail::probe_elem{},
                     detail::probe_scan{}, detail::probe_sink{})
  };
  { b.histogram(n, detail::probe_bin{}, n, counts) };
  { b.for_each(n, n, detail::probe_index2{}) };
  { b.reduce(n, n, detail::probe_reducer2{}) } -> std::same_as<double>;
  { b.row_reduce(n, n, detail::probe_reducer2{}, detail::probe_sink{}) };
  { b.row_scan(scan_direction::reverse, n, n, detail::probe_elem2{}, detail::probe_scan{}, detail::probe_sink2{}) };
  { b.histogram(n, n, detail::probe_bin2{}, n, counts) };
  { b.template collect<double>(n, n, detail::probe_pick{}) };
  { b.sort_indices(n, detail::probe_key{}, perm) };
  { b.template allocate<double>(n) };
  { b.copy_to_host(p, n, p) };
  { b.copy_from_host(p, n, p) };
  { b.fill(p, n, 0.0) };
};

}  // namespace asyppo
