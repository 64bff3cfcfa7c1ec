// asyppo/backend/patterns.hpp: the contracts every backend implements (the Backend concept),
// and the small vocabulary types the patterns take.
//
// A backend is a small copyable value object. Algorithms in asyppo/core build functors
// and call only these patterns, so one algorithm runs on every backend and each backend is
// free to fuse: the functors are called per element, never per tensor.
//
//   for_each(n, f)                       f(i) for every i in [0,n); i's are independent.
//   reduce(n, r)                         fold r.add(acc, i) over i in [0,n), merging partial
//                                        accumulators with r.combine(a, b) (a earlier). The
//                                        combine must be associative; it need not be commutative.
//   segmented_reduce(nseg, begin, r, s)  per segment g = [begin(g), begin(g+1)): s(g, acc).
//   segmented_scan(dir, nseg, begin, e, op, s)
//                                        inclusive scan of e(i) with op inside each segment, in
//                                        increasing i (forward) or decreasing i (reverse):
//                                        s(i, e(first) op ... op e(i)). op associative,
//                                        non-commutative allowed (a is earlier in scan order).
//   histogram(n, bin, nbins, counts)     counts[b] += #{i : bin(i) == b} (bin < 0 is skipped).
//   sort_indices(n, key, perm)           perm = indices 0..n-1 stably sorted by the int64 key(i).
//   allocate<T>(n) / copy_to_host / copy_from_host / fill
//                                        temporary memory in the backend's memory space.
//
// Reducer r: value_type; identity(); add(acc&, i); combine(a, b). Scan op: value_type;
// combine(a, b). All ASYPPO_HD, trivially copyable, no exceptions.
//
// Determinism contract (every backend): for the same inputs, every pattern returns
// bit-identical results run to run, and the CPU backend's results do not depend on its
// thread count (reduce folds fixed tiles of reduce_tile elements, then merges the tiles in
// order). Across backends, reductions may associate differently; algorithms document the
// resulting tolerance.
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
  ASYPPO_HD double combine(double a, double b) const { return a + b; }
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
  { b.sort_indices(n, detail::probe_key{}, perm) };
  { b.template allocate<double>(n) };
  { b.copy_to_host(p, n, p) };
  { b.copy_from_host(p, n, p) };
  { b.fill(p, n, 0.0) };
};

}  // namespace asyppo
