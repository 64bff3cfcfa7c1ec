// asyppo/backend/thrust/thrust_backend.hpp: every pattern of backend/patterns.hpp composed from
// Thrust (CCCL) algorithms, for Thrust's host systems (CPP, OMP, TBB).
//
// What each pattern is made of (i: a counting iterator; fancy iterators, no index arrays):
//   for_each                 thrust::for_each over i (2-D: i -> (i / cols, i % cols))
//   reduce                   thrust::transform_reduce: lift(i) = add(identity, i), then combine
//   row_reduce / segmented_reduce
//                            thrust::reduce_by_key with the segment of i as the key (upper_bound
//                            of i in the segment starts for CSR segments), values lift(i)
//   row_scan                 thrust::inclusive_scan_by_key of the lifted elements in scan order
//                            (reverse scans read each row backwards), then the sink on each
//                            prefix; the columns outside a row's range get a key of their own
//   segmented_scan           thrust::inclusive_scan per segment, in scan order
//   histogram                thrust::transform of the bins, thrust::sort, thrust::reduce_by_key
//   sort_indices             thrust::stable_sort_by_key of (key(i), i)
//   collect                  a flag and a value per position, thrust::copy_if
//   reduce_to                reduce, then the sink as a one-element thrust::for_each
// Memory is the host's (allocate gives host_buffer); copies are std::copy.
//
// Why it exists: the CUDA backend is built from kernels plus CUB, and no GPU is available in CI.
// This backend composes the same patterns from the library algorithms, so the composition (the
// lift/combine contracts under a library scan or reduce that re-associates, ragged ranges through
// keys, stable sorts, stream compaction) runs the conformance suite on every CI machine with
// Thrust's CPP system (tests/test_thrust_backend.cpp). thrust::cpp::par evaluates sequentially;
// results are deterministic, and equal the CPU backend's up to the association of floating-point
// sums (integer results are identical).
//
// Requirements: the CCCL headers (the CUDA toolkit's include/cccl) and a host compiler; no nvcc.
// Outside nvcc, Thrust's default device system (CUDA) cannot compile, so this header selects the CPP
// device system unless THRUST_DEVICE_SYSTEM is already defined: include it before other Thrust
// headers, or define THRUST_DEVICE_SYSTEM yourself. Functors must be callable on the host.
#pragma once

#if !defined(THRUST_DEVICE_SYSTEM) && !defined(__CUDACC__)
#define THRUST_DEVICE_SYSTEM THRUST_DEVICE_SYSTEM_CPP
#endif

#include <thrust/binary_search.h>
#include <thrust/copy.h>
#include <thrust/execution_policy.h>
#include <thrust/for_each.h>
#include <thrust/functional.h>
#include <thrust/iterator/constant_iterator.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/reduce.h>
#include <thrust/scan.h>
#include <thrust/sequence.h>
#include <thrust/sort.h>
#include <thrust/transform.h>
#include <thrust/transform_reduce.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "asyppo/backend/host_buffer.hpp"
#include "asyppo/backend/patterns.hpp"
#include "asyppo/config.hpp"

namespace asyppo {

namespace thrust_detail {

using counting = thrust::counting_iterator<index_t>;

// Flat index -> (b, t) adapters.
template <class F>
struct index2 {
  F f;
  index_t cols;
  void operator()(index_t i) const { f(i / cols, i % cols); }
};
template <class R>
struct lift1 {  // i -> add(identity, i)
  R r;
  typename R::value_type operator()(index_t i) const {
    auto v = r.identity();
    r.add(v, i);
    return v;
  }
};
template <class R>
struct lift2 {  // i -> add(identity, b, t)
  R r;
  index_t cols;
  typename R::value_type operator()(index_t i) const {
    auto v = r.identity();
    r.add(v, i / cols, i % cols);
    return v;
  }
};
template <class R>
struct combine_fn {
  R r;
  template <class V>
  V operator()(const V& a, const V& b) const {
    return r.combine(a, b);
  }
};
struct segment_of {  // i -> the segment g with starts[g] <= i < starts[g + 1] (the last of equal starts)
  const index_t* starts;
  index_t nseg;
  index_t operator()(index_t i) const {
    return static_cast<index_t>(std::upper_bound(starts, starts + nseg, i) - starts) - 1;
  }
};
struct row_of {
  index_t cols;
  index_t operator()(index_t i) const { return i / cols; }
};
template <class Bin>
struct bin1 {
  Bin bin;
  index_t operator()(index_t i) const { return bin(i); }
};
template <class Bin>
struct bin2 {
  Bin bin;
  index_t cols;
  index_t operator()(index_t i) const { return bin(i / cols, i % cols); }
};

/// reduce_to's last step: the sink on the reduced value, as one element of a for_each.
template <class Sink, class V>
struct apply_sink {
  Sink sink;
  V value;
  ASYPPO_HD void operator()(index_t) const { sink(value); }
};

}  // namespace thrust_detail

/// Policy: a Thrust host execution policy (default thrust::cpp::par).
template <class Policy = std::remove_cv_t<decltype(thrust::cpp::par)>>
class thrust_backend : public detail::ragged_by_wrapping<thrust_backend<Policy>> {
 public:
  // Ragged for_each, reduce, histogram and collect: the full-row compositions on range-restricted
  // functors (detail::ragged_by_wrapping); row_reduce and row_scan handle ranges themselves.
  using detail::ragged_by_wrapping<thrust_backend<Policy>>::for_each;
  using detail::ragged_by_wrapping<thrust_backend<Policy>>::reduce;
  using detail::ragged_by_wrapping<thrust_backend<Policy>>::histogram;
  using detail::ragged_by_wrapping<thrust_backend<Policy>>::collect;

  explicit thrust_backend(Policy policy = Policy{}) : policy_(policy) {}

  // ---- memory ------------------------------------------------------------------------------
  template <class T>
  host_buffer<T> allocate(index_t n) const {
    return host_buffer<T>(n);
  }
  template <class T>
  void copy_to_host(const T* src, index_t n, T* dst) const {
    if (n > 0) std::copy(src, src + n, dst);
  }
  template <class T>
  void copy_from_host(const T* src, index_t n, T* dst) const {
    copy_to_host(src, n, dst);
  }
  template <class T>
  void fill(T* p, index_t n, T value) const {
    if (n > 0) std::fill(p, p + n, value);
  }
  void synchronize() const {}

  // ---- flat patterns -------------------------------------------------------------------------
  template <class F>
  void for_each(index_t n, F f) const {
    if (n > 0) thrust::for_each(policy_, counting(0), counting(n), f);
  }

  template <class R>
  typename R::value_type reduce(index_t n, R r) const {
    if (n <= 0) return r.identity();
    return thrust::transform_reduce(policy_, counting(0), counting(n), thrust_detail::lift1<R>{r}, r.identity(),
                                    thrust_detail::combine_fn<R>{r});
  }

  template <class Begin, class R, class Sink>
  void segmented_reduce(index_t nseg, Begin begin, R r, Sink sink) const {
    if (nseg <= 0) return;
    const auto starts = segment_starts(nseg, begin);
    const index_t lo = starts[0], hi = begin(nseg);
    reduce_by_segment(lo, hi, nseg, starts.data(),
                      thrust::make_transform_iterator(counting(lo), thrust_detail::lift1<R>{r}), r,
                      [&](index_t g, const typename R::value_type& v) { sink(g, v); });
  }

  template <class Begin, class Elem, class Op, class Sink>
  void segmented_scan(scan_direction dir, index_t nseg, Begin begin, Elem elem, Op op, Sink sink) const {
    using V = typename Op::value_type;
    for (index_t g = 0; g < nseg; ++g) {  // one library scan per segment run in scan order
      const index_t lo = begin(g), n = begin(g + 1) - lo;
      if (n <= 0) continue;
      auto at = [&](index_t p) { return dir == scan_direction::forward ? lo + p : lo + n - 1 - p; };
      std::vector<V> in(static_cast<std::size_t>(n)), out(in.size());
      for (index_t p = 0; p < n; ++p) in[static_cast<std::size_t>(p)] = elem(at(p));
      thrust::inclusive_scan(policy_, in.begin(), in.end(), out.begin(), [&](const V& a, const V& b) { return op.combine(a, b); });
      for (index_t p = 0; p < n; ++p) sink(at(p), out[static_cast<std::size_t>(p)]);
    }
  }

  template <class Bin>
  void histogram(index_t n, Bin bin, index_t nbins, std::uint64_t* counts) const {
    if (n > 0) count_bins(thrust::make_transform_iterator(counting(0), thrust_detail::bin1<Bin>{bin}), n, nbins, counts);
  }

  /// perm = 0..n-1 stably sorted by key(i).
  template <class Key>
  void sort_indices(index_t n, Key key, index_t* perm) const {
    if (n <= 0) return;
    std::vector<std::int64_t> keys(static_cast<std::size_t>(n));
    thrust::transform(policy_, counting(0), counting(n), keys.begin(), [&](index_t i) { return static_cast<std::int64_t>(key(i)); });
    thrust::sequence(policy_, perm, perm + n);
    thrust::stable_sort_by_key(policy_, keys.begin(), keys.end(), perm);
  }

  // ---- 2-D patterns --------------------------------------------------------------------------
  template <class F>
  void for_each(index_t rows, index_t cols, F f) const {
    if (rows > 0 && cols > 0) for_each(rows * cols, thrust_detail::index2<F>{f, cols});
  }
  template <class R>
  typename R::value_type reduce(index_t rows, index_t cols, R r) const {
    if (rows <= 0 || cols <= 0) return r.identity();
    return thrust::transform_reduce(policy_, counting(0), counting(rows * cols), thrust_detail::lift2<R>{r, cols},
                                    r.identity(), thrust_detail::combine_fn<R>{r});
  }
  /// The optional reduce_to (backend/patterns.hpp): the reduction, then the sink as a one-element
  /// thrust::for_each, so that it runs in the policy's system.
  template <class R, class Range, class Sink>
  void reduce_to(index_t rows, index_t cols, R r, Range range, Sink sink) const {
    const auto v = this->reduce(rows, cols, r, range);
    thrust::for_each(policy_, counting(0), counting(1), thrust_detail::apply_sink<Sink, typename R::value_type>{sink, v});
  }
  template <class R, class Sink>
  void row_reduce(index_t rows, index_t cols, R r, Sink sink) const {
    row_reduce(rows, cols, r, sink, full_rows{cols > 0 ? cols : 0});
  }
  template <class R, class Sink, class Range>
  void row_reduce(index_t rows, index_t cols, R r, Sink sink, Range range) const {
    if (rows <= 0) return;
    if (cols <= 0) {
      for (index_t b = 0; b < rows; ++b) sink(b, r.identity());
      return;
    }
    const detail::ragged_reducer<R, Range> rr{r, range};
    std::vector<index_t> starts(static_cast<std::size_t>(rows));
    for (index_t b = 0; b < rows; ++b) starts[static_cast<std::size_t>(b)] = b * cols;
    reduce_by_segment(0, rows * cols, rows, starts.data(),
                      thrust::make_transform_iterator(counting(0), thrust_detail::lift2<detail::ragged_reducer<R, Range>>{rr, cols}),
                      rr, [&](index_t b, const typename R::value_type& v) { sink(b, v); });
  }
  template <class Elem, class Op, class Sink>
  void row_scan(scan_direction dir, index_t rows, index_t cols, Elem elem, Op op, Sink sink) const {
    row_scan(dir, rows, cols, elem, op, sink, full_rows{cols});
  }
  /// One keyed library scan over the whole [rows, cols] space in scan order; the key of a position
  /// is 2b inside row b's range and 2b + 1 outside it, so the prefix restarts at each row's range.
  template <class Elem, class Op, class Sink, class Range>
  void row_scan(scan_direction dir, index_t rows, index_t cols, Elem elem, Op op, Sink sink, Range range) const {
    using V = typename Op::value_type;
    if (rows <= 0 || cols <= 0) return;
    const index_t n = rows * cols;
    const bool rev = dir == scan_direction::reverse;
    auto pos = [=](index_t k) -> index_t {  // the k-th position in scan order, row-major flat index
      const index_t b = k / cols, p = k % cols;
      return b * cols + (rev ? cols - 1 - p : p);
    };
    std::vector<index_t> keys(static_cast<std::size_t>(n));
    std::vector<V> vals(static_cast<std::size_t>(n)), pre(vals.size());
    thrust::for_each(policy_, counting(0), counting(n), [&](index_t k) {
      const index_t i = pos(k), b = i / cols, t = i % cols;
      const bool in = detail::in_range(range, b, t);
      keys[static_cast<std::size_t>(k)] = 2 * b + (in ? 0 : 1);
      if (in) vals[static_cast<std::size_t>(k)] = op.lift(elem(b, t));
    });
    thrust::inclusive_scan_by_key(policy_, keys.begin(), keys.end(), vals.begin(), pre.begin(), thrust::equal_to<index_t>(),
                                  [&](const V& a, const V& c) { return op.combine(a, c); });
    thrust::for_each(policy_, counting(0), counting(n), [&](index_t k) {
      if (keys[static_cast<std::size_t>(k)] % 2 != 0) return;  // outside the range: not delivered
      const index_t i = pos(k);
      sink(i / cols, i % cols, op.apply(pre[static_cast<std::size_t>(k)], op.initial()));
    });
  }
  template <class Bin>
  void histogram(index_t rows, index_t cols, Bin bin, index_t nbins, std::uint64_t* counts) const {
    if (rows > 0 && cols > 0)
      count_bins(thrust::make_transform_iterator(counting(0), thrust_detail::bin2<Bin>{bin, cols}), rows * cols, nbins, counts);
  }
  template <class V, class Pick>
  std::vector<V> collect(index_t rows, index_t cols, Pick pick) const {
    std::vector<V> out;
    if (rows <= 0 || cols <= 0) return out;
    const index_t n = rows * cols;
    std::vector<V> vals(static_cast<std::size_t>(n));
    std::vector<std::uint8_t> keep(static_cast<std::size_t>(n));
    thrust::for_each(policy_, counting(0), counting(n), [&](index_t i) {
      keep[static_cast<std::size_t>(i)] = pick(i / cols, i % cols, vals[static_cast<std::size_t>(i)]) ? 1 : 0;
    });
    out.resize(vals.size());
    const auto end = thrust::copy_if(policy_, vals.begin(), vals.end(), keep.begin(), out.begin(),
                                     [](std::uint8_t k) { return k != 0; });
    out.resize(static_cast<std::size_t>(end - out.begin()));
    return out;
  }

 private:
  using counting = thrust_detail::counting;

  template <class Begin>
  std::vector<index_t> segment_starts(index_t nseg, Begin begin) const {
    std::vector<index_t> s(static_cast<std::size_t>(nseg));
    for (index_t g = 0; g < nseg; ++g) s[static_cast<std::size_t>(g)] = begin(g);
    return s;
  }

  /// reduce_by_key of values over [lo, hi) keyed by segment (starts: nseg non-decreasing starts,
  /// the last segment ending at hi); emit(g, value) for every segment, identity for empty ones.
  template <class Values, class R, class Emit>
  void reduce_by_segment(index_t lo, index_t hi, index_t nseg, const index_t* starts, Values values, const R& r,
                         Emit emit) const {
    using V = typename R::value_type;
    const index_t n = hi - lo;
    std::vector<index_t> seg_keys(static_cast<std::size_t>(n > 0 ? n : 0));
    std::vector<V> seg_vals(seg_keys.size());
    index_t produced = 0;
    if (n > 0) {
      const auto keys = thrust::make_transform_iterator(counting(lo), thrust_detail::segment_of{starts, nseg});
      const auto ends = thrust::reduce_by_key(policy_, keys, keys + n, values, seg_keys.begin(), seg_vals.begin(),
                                              thrust::equal_to<index_t>(), thrust_detail::combine_fn<R>{r});
      produced = static_cast<index_t>(ends.first - seg_keys.begin());
    }
    index_t j = 0;
    for (index_t g = 0; g < nseg; ++g) {
      if (j < produced && seg_keys[static_cast<std::size_t>(j)] == g) emit(g, seg_vals[static_cast<std::size_t>(j++)]);
      else emit(g, r.identity());
    }
  }

  template <class Bins>
  void count_bins(Bins bins, index_t n, index_t nbins, std::uint64_t* counts) const {
    std::vector<index_t> b(static_cast<std::size_t>(n));
    thrust::copy(policy_, bins, bins + n, b.begin());
    thrust::sort(policy_, b.begin(), b.end());
    std::vector<index_t> keys(b.size());
    std::vector<std::uint64_t> c(b.size());
    const auto ends = thrust::reduce_by_key(policy_, b.begin(), b.end(), thrust::make_constant_iterator(std::uint64_t{1}),
                                            keys.begin(), c.begin());
    const index_t m = static_cast<index_t>(ends.first - keys.begin());
    for (index_t j = 0; j < m; ++j) {
      const index_t k = keys[static_cast<std::size_t>(j)];
      if (k >= 0 && k < nbins) counts[k] += c[static_cast<std::size_t>(j)];
    }
  }

  Policy policy_;
};

static_assert(Backend<thrust_backend<>>);

}  // namespace asyppo
