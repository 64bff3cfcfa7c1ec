// tests/support/tiled_backend.hpp: a CPU test backend that evaluates reductions and scans in
// random tiles combined in a random tree order, the way a GPU backend associates them.
//
// The CPU backend folds every reduction tile and every row scan sequentially (row scans through
// op.apply on the state), so the lift/combine paths that a parallel backend relies on never run
// there. This backend runs them: a reduce splits its range into random tiles, folds each tile
// with add() and merges the tile results with combine() in a random binary tree (left-to-right
// order kept: associativity, not commutativity); a row scan cuts each row into random tiles,
// forms inclusive prefixes inside each tile with lift()/combine(), combines the tile totals into
// exclusive tile prefixes, and delivers apply(combine(prefix, inside), initial()) to the sink. A
// flat segmented scan does the same with combine() only. Every other pattern is the CPU
// backend's. Deterministic for a given seed. Tests compare it with cpu_backend: integer results
// must be identical, floating-point results equal to rounding.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "asyppo/backend/cpu.hpp"

namespace asyppo_test {

using asyppo::index_t;
using asyppo::scan_direction;

class tiled_backend : public asyppo::cpu_backend {
 public:
  explicit tiled_backend(std::uint64_t seed, index_t max_tile = 37) : cpu_backend(1), seed_(seed), max_tile_(max_tile) {}

  using cpu_backend::for_each;
  using cpu_backend::histogram;

  template <class R>
  typename R::value_type reduce(index_t n, R r) const {
    return tree_reduce(n, r, [&](typename R::value_type& acc, index_t i) { r.add(acc, i); });
  }
  template <class R>
  typename R::value_type reduce(index_t rows, index_t cols, R r) const {
    return reduce(rows, cols, r, asyppo::full_rows{cols});
  }
  template <class R, class Range>
  typename R::value_type reduce(index_t rows, index_t cols, R r, Range range) const {
    const asyppo::detail::ragged_reducer<R, Range> rr{r, range};  // the GPU's way: a skipping functor
    return tree_reduce(rows * cols, r, [&](typename R::value_type& acc, index_t i) { rr.add(acc, i / cols, i % cols); });
  }
  template <class R, class Sink>
  void row_reduce(index_t rows, index_t cols, R r, Sink sink) const {
    row_reduce(rows, cols, r, sink, asyppo::full_rows{cols});
  }
  template <class R, class Sink, class Range>
  void row_reduce(index_t rows, index_t, R r, Sink sink, Range range) const {
    for (index_t b = 0; b < rows; ++b) {
      index_t lo, hi;
      range(b, lo, hi);
      sink(b, tree_reduce(hi - lo, r, [&](typename R::value_type& acc, index_t t) { r.add(acc, b, lo + t); }));
    }
  }
  template <class Begin, class R, class Sink>
  void segmented_reduce(index_t nseg, Begin begin, R r, Sink sink) const {
    for (index_t g = 0; g < nseg; ++g) {
      const index_t lo = begin(g);
      sink(g, tree_reduce(begin(g + 1) - lo, r, [&](typename R::value_type& acc, index_t i) { r.add(acc, lo + i); }));
    }
  }

  template <class Elem, class Op, class Sink>
  void row_scan(scan_direction dir, index_t rows, index_t cols, Elem elem, Op op, Sink sink) const {
    row_scan(dir, rows, cols, elem, op, sink, asyppo::full_rows{cols});
  }
  template <class Elem, class Op, class Sink, class Range>
  void row_scan(scan_direction dir, index_t rows, index_t, Elem elem, Op op, Sink sink, Range range) const {
    using V = typename Op::value_type;
    for (index_t b = 0; b < rows; ++b) {
      index_t lo, hi;
      range(b, lo, hi);
      auto at = [&](index_t p) { return dir == scan_direction::forward ? lo + p : hi - 1 - p; };
      tiled_scan<V>(hi - lo, [&](index_t p) { return op.lift(elem(b, at(p))); },
                    [&](const V& x, const V& y) { return op.combine(x, y); },
                    [&](index_t p, const V& y) { sink(b, at(p), op.apply(y, op.initial())); });
    }
  }

  template <class Begin, class Elem, class Op, class Sink>
  void segmented_scan(scan_direction dir, index_t nseg, Begin begin, Elem elem, Op op, Sink sink) const {
    using V = typename Op::value_type;
    for (index_t g = 0; g < nseg; ++g) {
      const index_t lo = begin(g), n = begin(g + 1) - lo;
      auto at = [&](index_t p) { return dir == scan_direction::forward ? lo + p : lo + n - 1 - p; };
      tiled_scan<V>(n, [&](index_t p) { return elem(at(p)); }, [&](const V& x, const V& y) { return op.combine(x, y); },
                    [&](index_t p, const V& y) { sink(at(p), y); });
    }
  }

 private:
  std::vector<index_t> cuts(index_t n) const {  // random tile boundaries 0 = c0 < c1 < ... = n
    std::vector<index_t> c{0};
    while (c.back() < n) c.push_back(std::min(n, c.back() + 1 + static_cast<index_t>(rng_() % static_cast<std::uint64_t>(max_tile_))));
    return c;
  }

  template <class R, class Add>
  typename R::value_type tree_reduce(index_t n, const R& r, Add add) const {
    using V = typename R::value_type;
    if (n <= 0) return r.identity();
    const auto c = cuts(n);
    std::vector<V> parts;
    for (std::size_t k = 0; k + 1 < c.size(); ++k) {
      V acc = r.identity();
      for (index_t i = c[k]; i < c[k + 1]; ++i) add(acc, i);
      parts.push_back(acc);
    }
    while (parts.size() > 1) {  // merge a random adjacent pair
      const std::size_t j = static_cast<std::size_t>(rng_() % (parts.size() - 1));
      parts[j] = r.combine(parts[j], parts[j + 1]);
      parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(j + 1));
    }
    return parts[0];
  }

  // Inclusive scan of value(p), p in [0, n), delivered as emit(p, prefix), in random tiles.
  template <class V, class Value, class Combine, class Emit>
  void tiled_scan(index_t n, Value value, Combine combine, Emit emit) const {
    if (n <= 0) return;
    const auto c = cuts(n);
    std::vector<std::vector<V>> inside(c.size() - 1);
    for (std::size_t k = 0; k + 1 < c.size(); ++k)
      for (index_t p = c[k]; p < c[k + 1]; ++p)
        inside[k].push_back(p == c[k] ? value(p) : combine(inside[k].back(), value(p)));
    bool have = false;
    V prefix{};
    for (std::size_t k = 0; k + 1 < c.size(); ++k) {
      for (index_t p = c[k]; p < c[k + 1]; ++p) {
        const V& v = inside[k][static_cast<std::size_t>(p - c[k])];
        emit(p, have ? combine(prefix, v) : v);
      }
      prefix = have ? combine(prefix, inside[k].back()) : inside[k].back();
      have = true;
    }
  }

  std::uint64_t seed_;
  index_t max_tile_;
  mutable std::mt19937_64 rng_{seed_};
};

}  // namespace asyppo_test
