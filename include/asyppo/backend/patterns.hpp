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
// Ragged rows: every 2-D pattern also takes a column range as its last argument, range(b, lo&, hi&)
// (0 <= lo <= hi <= cols), and then visits only t in [lo, hi) of row b; a row scan starts at hi - 1
// (reverse) or lo (forward) from op.initial(), and a reduce visits the range in index order (the CPU
// backend keeps the tile structure of the full space: the same bits as a functor that skips the
// unvisited columns; the CUDA backend folds each wide row's range in its own block, which associates
// differently, rounding only). LLM batches are right-padded,
// so an algorithm that knows where each row's valid tokens end (row_span) visits only those columns
// and writes the padding once (or leaves it to a separate pass). The (rows, cols) overloads are
// the range full_rows{cols}. detail::ragged_* wrap a functor so that a backend may implement a
// ragged pattern through its full-row one.
// Memory: allocate<T>(n) (an owning buffer with data()), copy_to_host, copy_from_host, fill.
// Optional: reduce_to(rows, cols, r, range, sink): the reduction of reduce(rows, cols, r, range) handed to
// sink(value) where the backend's memory is (on a GPU: one device thread), without waiting for it; what
// the device-result variants of the losses use (detail::reduce_to falls back to sink(reduce(...)) on
// host-memory backends).
// Optional fused padding: row_scan(dir, rows, cols, e, op, s, range, fill), reduce(rows, cols, r, range,
// fill) and reduce_to(rows, cols, r, range, sink, fill): the pattern, then fill(b, t) at every column
// after the row's range, t in [hi, cols) (for_each(rows, cols, fill, detail::after_range{range, cols})),
// where fill writes only what the pattern neither reads nor writes (the row's padding). A backend may
// fuse the two (the CUDA backend's per-row blocks fill their row after it); detail::row_scan_then_fill,
// reduce_then_fill and reduce_to_then_fill make the two calls on a backend without them.
// Optional dense pattern: gemm(shape, a, b, beta, c), BLAS's strided batched matrix product
// (backend/dense.hpp; the CUDA backend's cuBLAS). Algorithms that use it also have a path written
// with the patterns above, taken on backends without it.
// Optional: check_memory(where, name, const void* p) throws asyppo::error unless the backend can use
// the memory at p; every entry point calls it on each view before any other backend call
// (detail::check_memory). The CUDA backend rejects host memory and other devices' memory there; a
// backend without it accepts everything (the CPU backends).
//
// Reducer r: value_type; identity(); add(acc&, index...); combine(a, b). add() may also write
// to the output locations of its own index (each index is visited exactly once), which is how
// an algorithm fuses "compute a value, store it, and sum it" into one pass. A 2-D reducer may also
// offer add_span(acc&, b, t0, t1): the same as add(acc, b, t) for t = t0, ..., t1 - 1 in that order
// (same result), written so that the compiler can vectorise it (contiguous rows); a CPU backend
// calls it for each piece of a row it folds, a GPU backend ignores it (detail::fold_span). A 2-D
// reducer may also split add into token_type load(b, t) (what add reads there) and apply(acc&, b, t,
// token) (the rest), add(acc, b, t) being apply(acc, b, t, load(b, t)): a GPU backend then loads a few
// positions of a thread's run before applying any of them, so that their loads are in flight together
// (add() of the next position cannot load before this one's stores, which might alias its inputs).
// A row-scan sink may split the same way: token_type load(b, t) and store(b, t, x, token), s(b, t, x)
// being store(b, t, x, load(b, t)). Likewise
// a 2-D for_each functor may offer span(b, t0, t1), the same as f(b, t) for t in [t0, t1)
// (detail::visit_span), and work() -> index_t, the cost of one element in units of a simple token
// operation (default 1; the critic heads' elements are dot products of length D), by which a CPU backend
// divides the number of elements it gives each thread at least (detail::work_of). A row-scan sink may offer scan_rows(e, op, dir, lo, hi, range) -> bool: it then
// scans the rows [lo, hi) itself, exactly as the pattern would (same states, same outputs; the GAE
// sink runs four rows per SIMD vector), or returns false and the CPU backend scans them one by one
// (detail::scan_row). In the same way a histogram bin may offer count_span(b, t0, t1, counts) (++counts[bin]
// for each element) and a collect pick collect_span(b, t0, t1, push) (push(v) for each picked element, in
// order), which the CPU backend calls per row. Scan op: value_type;
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
#include <type_traits>

#include "asyppo/comm/communicator.hpp"
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

/// Every column of every row: [0, cols).
struct full_rows {
  index_t cols;
  ASYPPO_HD void operator()(index_t, index_t& lo, index_t& hi) const { lo = 0, hi = cols; }
};

/// The columns [0, end[b]) of row b (end: a backend array of rows entries).
struct row_heads {
  const index_t* end;
  /// Optional schedule for device backends: the rows in the order their per-row kernels should take
  /// them (the longest first, core/row_span.hpp). Not a range property: results never depend on it.
  const index_t* order = nullptr;
  /// Optional for device backends: a counter at zero in backend memory, which a per-row reduce may use to
  /// find its last block (the CUDA backend's in-kernel final combine) and leaves at zero. Patterns run in
  /// stream order use it one at a time. Not a range property either.
  unsigned* ticket = nullptr;
  ASYPPO_HD void operator()(index_t b, index_t& lo, index_t& hi) const { lo = 0, hi = end[b]; }
};

/// The columns [end[b], cols) of row b: what row_heads leaves out.
struct row_tails {
  const index_t* end;
  index_t cols;
  ASYPPO_HD void operator()(index_t b, index_t& lo, index_t& hi) const { lo = end[b], hi = cols; }
};

namespace detail {

/// add_span when the reducer offers it, else add() over [t0, t1).
template <class R>
ASYPPO_HD void fold_span(const R& r, typename R::value_type& acc, index_t b, index_t t0, index_t t1) {
  if constexpr (requires { r.add_span(acc, b, t0, t1); }) {
    if (t1 > t0) r.add_span(acc, b, t0, t1);
  } else {
    for (index_t t = t0; t < t1; ++t) r.add(acc, b, t);
  }
}

/// f.span(b, t0, t1) when the functor offers it, else f(b, t) over [t0, t1).
template <class F>
ASYPPO_HD void visit_span(const F& f, index_t b, index_t t0, index_t t1) {
  if constexpr (requires { f.span(b, t0, t1); }) {
    if (t1 > t0) f.span(b, t0, t1);
  } else {
    for (index_t t = t0; t < t1; ++t) f(b, t);
  }
}

/// f.work() when the functor offers it (>= 1), else 1.
template <class F>
index_t work_of(const F& f) {
  if constexpr (requires { f.work(); }) {
    const index_t w = f.work();
    return w > 1 ? w : 1;
  } else {
    return 1;
  }
}

/// Whether the backend's memory is the host's (Backend::host_memory, cpu_backend): algorithms may then
/// hand host arrays to its patterns without allocate and copy.
template <class Backend>
inline constexpr bool host_memory_backend = [] {
  if constexpr (requires { Backend::host_memory; })
    return static_cast<bool>(Backend::host_memory);
  else
    return false;
}();

/// Whether an algorithm may take its path without host round trips (the group slots, whitening through
/// a device state): a device backend in one process, where reading a count on the host means waiting
/// for the device and no communicator needs it there.
template <class Backend, class Comm>
inline constexpr bool device_in_one_process = !host_memory_backend<Backend> && std::is_same_v<Comm, single_process>;

/// reduce_to when the backend offers it, else sink(reduce(...)) on the host (host-memory backends
/// only: there the sink's stores are plain host stores).
template <class Backend, class R, class Range, class Sink>
void reduce_to(const Backend& be, index_t rows, index_t cols, R r, Range range, Sink sink) {
  if constexpr (requires { be.reduce_to(rows, cols, r, range, sink); }) {
    be.reduce_to(rows, cols, r, range, sink);
  } else {
    static_assert(host_memory_backend<Backend>, "a device backend needs reduce_to for the device-result variants");
    sink(be.reduce(rows, cols, r, range));
  }
}

/// The columns of each row after range's: [hi, cols) where range gives [lo, hi) (row_heads -> row_tails).
template <class Range>
struct after_range {
  Range range;
  index_t cols;
  ASYPPO_HD void operator()(index_t b, index_t& lo, index_t& hi) const {
    index_t l, h;
    range(b, l, h);
    lo = h, hi = cols;
  }
};

/// Whether a fill functor of the fused-padding patterns writes nothing (fill.empty(), when it says).
template <class Fill>
bool fill_is_empty(const Fill& fill) {
  if constexpr (requires { fill.empty(); }) return fill.empty();
  else return false;
}

/// be.row_scan(..., range), then fill(b, t) after each row's range: fused where the backend offers it
/// (backend/patterns.hpp, fused padding).
template <class Backend, class Elem, class Op, class Sink, class Range, class Fill>
void row_scan_then_fill(const Backend& be, scan_direction dir, index_t rows, index_t cols, Elem e, Op op, Sink s,
                        Range range, Fill fill) {
  if (fill_is_empty(fill)) {
    be.row_scan(dir, rows, cols, e, op, s, range);
  } else if constexpr (requires { be.row_scan(dir, rows, cols, e, op, s, range, fill); }) {
    be.row_scan(dir, rows, cols, e, op, s, range, fill);
  } else {
    be.row_scan(dir, rows, cols, e, op, s, range);
    be.for_each(rows, cols, fill, after_range<Range>{range, cols});
  }
}

/// be.reduce(rows, cols, r, range), then fill(b, t) after each row's range, fused where offered.
template <class Backend, class R, class Range, class Fill>
typename R::value_type reduce_then_fill(const Backend& be, index_t rows, index_t cols, R r, Range range, Fill fill) {
  if (fill_is_empty(fill)) return be.reduce(rows, cols, r, range);
  if constexpr (requires { be.reduce(rows, cols, r, range, fill); }) {
    return be.reduce(rows, cols, r, range, fill);
  } else {
    const auto value = be.reduce(rows, cols, r, range);
    be.for_each(rows, cols, fill, after_range<Range>{range, cols});
    return value;
  }
}

/// reduce_to, then fill(b, t) after each row's range, fused where offered.
template <class Backend, class R, class Range, class Sink, class Fill>
void reduce_to_then_fill(const Backend& be, index_t rows, index_t cols, R r, Range range, Sink sink, Fill fill) {
  if (fill_is_empty(fill)) {
    reduce_to(be, rows, cols, r, range, sink);
  } else if constexpr (requires { be.reduce_to(rows, cols, r, range, sink, fill); }) {
    be.reduce_to(rows, cols, r, range, sink, fill);
  } else {
    reduce_to(be, rows, cols, r, range, sink);
    be.for_each(rows, cols, fill, after_range<Range>{range, cols});
  }
}

/// One row of a row scan on one thread: from state x, x = op.apply(e(b, t), x) and s(b, t, x) for t
/// over [t0, t1) in scan order (reverse: from t1 - 1 down).
template <class Elem, class Op, class Sink, class State>
ASYPPO_HD void scan_row(scan_direction dir, const Elem& e, const Op& op, const Sink& s, index_t b, index_t t0, index_t t1,
                        State x) {
  if (dir == scan_direction::forward) {
    for (index_t t = t0; t < t1; ++t) {
      x = op.apply(e(b, t), x);
      s(b, t, x);
    }
  } else {
    for (index_t t = t1 - 1; t >= t0; --t) {
      x = op.apply(e(b, t), x);
      s(b, t, x);
    }
  }
}

/// s.scan_rows(e, op, dir, lo, hi, range) when the sink offers it (true: it scanned rows [lo, hi)),
/// else false (the caller scans them with scan_row).
template <class Elem, class Op, class Sink, class Range>
bool scan_rows(scan_direction dir, const Elem& e, const Op& op, const Sink& s, index_t lo, index_t hi, const Range& range) {
  if constexpr (requires { s.scan_rows(e, op, dir, lo, hi, range); })
    return s.scan_rows(e, op, dir, lo, hi, range);
  else
    return false;
}

/// bin.count_span(b, t0, t1, counts) when the bin offers it, else ++counts[bin(b, t)] (bins >= 0) over [t0, t1).
template <class Bin, class Count>
void count_span(const Bin& bin, index_t b, index_t t0, index_t t1, Count* counts) {
  if constexpr (requires { bin.count_span(b, t0, t1, counts); }) {
    if (t1 > t0) bin.count_span(b, t0, t1, counts);
  } else {
    for (index_t t = t0; t < t1; ++t) {
      const index_t k = bin(b, t);
      if (k >= 0) ++counts[k];
    }
  }
}

/// pick.collect_span(b, t0, t1, push) when the pick offers it, else push(v) for each t of [t0, t1) in
/// order with pick(b, t, v) true.
template <class V, class Pick, class Push>
void collect_span(const Pick& pick, index_t b, index_t t0, index_t t1, Push&& push) {
  if constexpr (requires { pick.collect_span(b, t0, t1, push); }) {
    if (t1 > t0) pick.collect_span(b, t0, t1, push);
  } else {
    V v;
    for (index_t t = t0; t < t1; ++t)
      if (pick(b, t, v)) push(v);
  }
}

/// Whether column t lies in the range of row b.
template <class Range>
ASYPPO_HD bool in_range(const Range& range, index_t b, index_t t) {
  index_t lo, hi;
  range(b, lo, hi);
  return t >= lo && t < hi;
}

/// Full-row functors restricted to a range (for backends that implement ragged patterns by
/// wrapping): outside the range a for-each does nothing, a reducer adds nothing, a bin is -1 and a
/// pick is false.
template <class F, class Range>
struct ragged_index {
  F f;
  Range range;
  ASYPPO_HD void operator()(index_t b, index_t t) const {
    if (in_range(range, b, t)) f(b, t);
  }
};
template <class R, class Range>
struct ragged_reducer {
  R r;
  Range range;
  using value_type = typename R::value_type;
  ASYPPO_HD value_type identity() const { return r.identity(); }
  ASYPPO_HD void add(value_type& acc, index_t b, index_t t) const {
    if (in_range(range, b, t)) r.add(acc, b, t);
  }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& c) const { return r.combine(a, c); }
};
template <class Bin, class Range>
struct ragged_bin {
  Bin bin;
  Range range;
  ASYPPO_HD index_t operator()(index_t b, index_t t) const { return in_range(range, b, t) ? bin(b, t) : -1; }
};
template <class Pick, class Range>
struct ragged_pick {
  Pick pick;
  Range range;
  template <class V>
  ASYPPO_HD bool operator()(index_t b, index_t t, V& v) const {
    return in_range(range, b, t) && pick(b, t, v);
  }
};

/// The ragged for_each, reduce, histogram and collect of a backend, written once as its full-row
/// patterns on the wrappers above (a backend derives from this and brings the four names in with
/// using-declarations). Backends with native ragged loops (cpu_backend) do not use it.
template <class Derived>
struct ragged_by_wrapping {
  template <class F, class Range>
  void for_each(index_t rows, index_t cols, F f, Range range) const {
    self().for_each(rows, cols, ragged_index<F, Range>{f, range});
  }
  template <class R, class Range>
  typename R::value_type reduce(index_t rows, index_t cols, R r, Range range) const {
    return self().reduce(rows, cols, ragged_reducer<R, Range>{r, range});
  }
  template <class Bin, class Range>
  void histogram(index_t rows, index_t cols, Bin bin, index_t nbins, std::uint64_t* counts, Range range) const {
    self().histogram(rows, cols, ragged_bin<Bin, Range>{bin, range}, nbins, counts);
  }
  template <class V, class Pick, class Range>
  auto collect(index_t rows, index_t cols, Pick pick, Range range) const {
    return self().template collect<V>(rows, cols, ragged_pick<Pick, Range>{pick, range});
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

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
  { b.for_each(n, n, detail::probe_index2{}, full_rows{n}) };
  { b.reduce(n, n, detail::probe_reducer2{}, full_rows{n}) } -> std::same_as<double>;
  { b.row_reduce(n, n, detail::probe_reducer2{}, detail::probe_sink{}, full_rows{n}) };
  {
    b.row_scan(scan_direction::reverse, n, n, detail::probe_elem2{}, detail::probe_scan{}, detail::probe_sink2{},
               full_rows{n})
  };
  { b.histogram(n, n, detail::probe_bin2{}, n, counts, full_rows{n}) };
  { b.template collect<double>(n, n, detail::probe_pick{}, full_rows{n}) };
  { b.sort_indices(n, detail::probe_key{}, perm) };
  { b.template allocate<double>(n) };
  { b.copy_to_host(p, n, p) };
  { b.copy_from_host(p, n, p) };
  { b.fill(p, n, 0.0) };
};

}  // namespace asyppo
