// asyppo/backend/cpu.hpp: the CPU backend (host memory, optional threads).
//
// Implements every pattern of backend/patterns.hpp with plain loops that the compiler
// inlines the algorithms' functors into, spread over an Eigen::ThreadPool when threads > 1.
// Work is cut into pieces that do not depend on the thread count (fixed reduce tiles,
// whole segments), and partial results are merged in a fixed order, so results are
// bit-identical for any thread count. Histograms and sorts are exact (integers).
//
// Memory: caller tensors are read in place through views (zero copy); temporaries come
// from allocate<T>(n), an owning host buffer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

#define EIGEN_USE_THREADS
#if defined(__CUDACC__) && !defined(EIGEN_NO_CUDA)
#define EIGEN_NO_CUDA  // the CPU backend is host code, also inside a .cu file
#endif
#include <unsupported/Eigen/CXX11/ThreadPool>

#include "asyppo/backend/host_buffer.hpp"
#include "asyppo/backend/patterns.hpp"
#include "asyppo/config.hpp"

namespace asyppo {

class cpu_backend {
 public:
  /// Elements per reduce tile: the unit of work whose partial result is merged in order.
  static constexpr index_t reduce_tile = 1 << 14;
  /// Host memory: allocate<T> gives host arrays, and host arrays may be passed where backend memory is expected.
  static constexpr bool host_memory = true;

  /// threads = 1 runs everything on the calling thread; threads = 0 uses every hardware
  /// thread. Copies share the same pool.
  explicit cpu_backend(int threads = 1) {
    if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    threads_ = threads;
    if (threads_ > 1) pool_ = std::make_shared<Eigen::ThreadPool>(threads_ - 1);
  }

  int threads() const { return threads_; }

  // ---- memory ------------------------------------------------------------------------
  template <class T>
  host_buffer<T> allocate(index_t n) const {
    return host_buffer<T>(n);
  }
  template <class T>
  void copy_to_host(const T* src, index_t n, T* dst) const {
    if (n > 0) std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(T));
  }
  template <class T>
  void copy_from_host(const T* src, index_t n, T* dst) const {
    copy_to_host(src, n, dst);
  }
  template <class T>
  void fill(T* p, index_t n, T value) const {
    std::fill(p, p + n, value);
  }
  void synchronize() const {}

  // ---- patterns ----------------------------------------------------------------------
  template <class F>
  void for_each(index_t n, F f) const {
    parallel_blocks(n, 4096, [&](index_t lo, index_t hi) {
      for (index_t i = lo; i < hi; ++i) f(i);
    });
  }

  template <class R>
  typename R::value_type reduce(index_t n, R r) const {
    using V = typename R::value_type;
    const index_t tiles = (n + reduce_tile - 1) / reduce_tile;
    if (tiles <= 1) {
      V acc = r.identity();
      for (index_t i = 0; i < n; ++i) r.add(acc, i);
      return acc;
    }
    std::vector<V> part(static_cast<std::size_t>(tiles));
    parallel_blocks(tiles, 1, [&](index_t lo, index_t hi) {
      for (index_t t = lo; t < hi; ++t) {
        V acc = r.identity();
        const index_t end = std::min(n, (t + 1) * reduce_tile);
        for (index_t i = t * reduce_tile; i < end; ++i) r.add(acc, i);
        part[static_cast<std::size_t>(t)] = acc;
      }
    });
    V acc = part[0];
    for (index_t t = 1; t < tiles; ++t) acc = r.combine(acc, part[static_cast<std::size_t>(t)]);
    return acc;
  }

  template <class Begin, class R, class Sink>
  void segmented_reduce(index_t nseg, Begin begin, R r, Sink sink) const {
    parallel_blocks(nseg, 1, [&](index_t lo, index_t hi) {
      for (index_t g = lo; g < hi; ++g) {
        typename R::value_type acc = r.identity();
        const index_t e = begin(g + 1);
        for (index_t i = begin(g); i < e; ++i) r.add(acc, i);
        sink(g, acc);
      }
    });
  }

  template <class Begin, class Elem, class Op, class Sink>
  void segmented_scan(scan_direction dir, index_t nseg, Begin begin, Elem elem, Op op, Sink sink) const {
    parallel_blocks(nseg, 1, [&](index_t lo, index_t hi) {
      for (index_t g = lo; g < hi; ++g) {
        const index_t b = begin(g), e = begin(g + 1);
        if (b >= e) continue;
        if (dir == scan_direction::forward) {
          typename Op::value_type acc = elem(b);
          sink(b, acc);
          for (index_t i = b + 1; i < e; ++i) {
            acc = op.combine(acc, elem(i));
            sink(i, acc);
          }
        } else {
          typename Op::value_type acc = elem(e - 1);
          sink(e - 1, acc);
          for (index_t i = e - 2; i >= b; --i) {
            acc = op.combine(acc, elem(i));
            sink(i, acc);
          }
        }
      }
    });
  }

  // ---- 2-D patterns over a row-major [rows, cols] index space ---------------------------
  // Functors receive (b, t). Rows run in parallel; reduce tiles are (row, column chunk) pairs of
  // at most reduce_tile columns, merged in row-major order (thread-count independent). The
  // ragged overloads (last argument: a column range per row) loop over [lo, hi) only; the tiles
  // stay those of the full space, so a range changes no result bits.

  template <class F>
  void for_each(index_t rows, index_t cols, F f) const {
    for_each(rows, cols, f, full_rows{cols});
  }
  template <class F, class Range>
  void for_each(index_t rows, index_t cols, F f, Range range) const {
    const index_t per_row = std::max<index_t>(cols, 1) * detail::work_of(f);
    parallel_blocks(rows, std::max<index_t>(1, 4096 / per_row), [&](index_t lo, index_t hi) {
      const F fn = f;  // a local copy: stores through uint8 outputs cannot alias its fields
      for (index_t b = lo; b < hi; ++b) {
        index_t t0, t1;
        range(b, t0, t1);
        detail::visit_span(fn, b, t0, t1);
      }
    });
  }

  template <class R>
  typename R::value_type reduce(index_t rows, index_t cols, R r) const {
    return reduce(rows, cols, r, full_rows{cols});
  }
  template <class R, class Range>
  typename R::value_type reduce(index_t rows, index_t cols, R r, Range range) const {
    using V = typename R::value_type;
    const index_t chunks = cols > 0 ? (cols + reduce_tile - 1) / reduce_tile : 0;
    const index_t tiles = rows * chunks;
    if (tiles == 0) return r.identity();
    std::vector<V> part(static_cast<std::size_t>(tiles));
    parallel_blocks(tiles, std::max<index_t>(1, 4096 / std::min(cols, reduce_tile)), [&](index_t lo, index_t hi) {
      const R rl = r;
      for (index_t k = lo; k < hi; ++k) {
        const index_t b = k / chunks, c = (k - b * chunks) * reduce_tile;
        index_t t0, t1;
        range(b, t0, t1);
        t0 = std::max(t0, c), t1 = std::min(t1, std::min(cols, c + reduce_tile));
        V acc = rl.identity();
        detail::fold_span(rl, acc, b, t0, t1);
        part[static_cast<std::size_t>(k)] = acc;
      }
    });
    V acc = part[0];
    for (index_t k = 1; k < tiles; ++k) acc = r.combine(acc, part[static_cast<std::size_t>(k)]);
    return acc;
  }

  template <class R, class Sink>
  void row_reduce(index_t rows, index_t cols, R r, Sink sink) const {
    row_reduce(rows, cols, r, sink, full_rows{cols});
  }
  template <class R, class Sink, class Range>
  void row_reduce(index_t rows, index_t cols, R r, Sink sink, Range range) const {
    parallel_blocks(rows, std::max<index_t>(1, 4096 / std::max<index_t>(cols, 1)), [&](index_t lo, index_t hi) {
      const R rl = r;
      const Sink sk = sink;
      for (index_t b = lo; b < hi; ++b) {
        index_t t0, t1;
        range(b, t0, t1);
        typename R::value_type acc = rl.identity();
        detail::fold_span(rl, acc, b, t0, t1);
        sk(b, acc);
      }
    });
  }

  template <class Elem, class Op, class Sink>
  void row_scan(scan_direction dir, index_t rows, index_t cols, Elem elem, Op op, Sink sink) const {
    row_scan(dir, rows, cols, elem, op, sink, full_rows{cols});
  }
  template <class Elem, class Op, class Sink, class Range>
  void row_scan(scan_direction dir, index_t rows, index_t cols, Elem elem, Op op, Sink sink, Range range) const {
    if (cols <= 0) return;
    parallel_blocks(rows, std::max<index_t>(1, 4096 / cols), [&](index_t lo, index_t hi) {
      const Elem el = elem;
      const Op o = op;
      const Sink sk = sink;
      if (detail::scan_rows(dir, el, o, sk, lo, hi, range)) return;  // e.g. several rows per SIMD vector
      for (index_t b = lo; b < hi; ++b) {
        index_t t0, t1;
        range(b, t0, t1);
        // Sequential fold of the state: x_t = apply(elem(b,t), x_prev), equal to applying the
        // combined prefix to op.initial() (what a parallel backend computes).
        detail::scan_row(dir, el, o, sk, b, t0, t1, o.initial());
      }
    });
  }

  template <class Bin>
  void histogram(index_t rows, index_t cols, Bin bin, index_t nbins, std::uint64_t* counts) const {
    histogram(rows, cols, bin, nbins, counts, full_rows{cols});
  }
  template <class Bin, class Range>
  void histogram(index_t rows, index_t cols, Bin bin, index_t nbins, std::uint64_t* counts, Range range) const {
    const int parts = static_cast<int>(std::min<index_t>(threads_, std::max<index_t>(1, rows * cols / 65536)));
    auto count_rows = [&](index_t lo, index_t hi, auto* h) {
      for (index_t b = lo; b < hi; ++b) {
        index_t t0, t1;
        range(b, t0, t1);
        detail::count_span(bin, b, t0, t1, h);
      }
    };
    if (parts <= 1 || rows < 2) {
      count_rows(0, rows, counts);
      return;
    }
    // Part 0 counts into counts itself, the others into 32-bit local counters (a part never holds 2^32
    // elements here: checked), added in part order afterwards.
    if (rows * cols >= (index_t(1) << 32)) {
      count_parts<std::uint64_t>(parts, rows, nbins, counts, count_rows);
    } else {
      count_parts<std::uint32_t>(parts, rows, nbins, counts, count_rows);
    }
  }

  template <class Bin>
  void histogram(index_t n, Bin bin, index_t nbins, std::uint64_t* counts) const {
    const int parts = static_cast<int>(std::min<index_t>(threads_, (n + 65535) / 65536));
    if (parts <= 1) {
      for (index_t i = 0; i < n; ++i) {
        const index_t b = bin(i);
        if (b >= 0) ++counts[b];
      }
      return;
    }
    std::vector<std::vector<std::uint32_t>> local(static_cast<std::size_t>(parts));
    run_parts(parts, [&](int p) {
      auto& h = local[static_cast<std::size_t>(p)];
      h.assign(static_cast<std::size_t>(nbins), 0u);
      const index_t lo = n * p / parts, hi = n * (p + 1) / parts;
      // 32-bit counters per part: a part never holds 2^32 elements in practice; guard anyway.
      for (index_t i = lo; i < hi; ++i) {
        const index_t b = bin(i);
        if (b >= 0) ++h[static_cast<std::size_t>(b)];
      }
    });
    for (const auto& h : local)
      for (index_t b = 0; b < nbins; ++b) counts[b] += h[static_cast<std::size_t>(b)];
  }

  /// Stream compaction to the host: the values v with pick(b, t, v) true, in row-major order.
  template <class V, class Pick>
  std::vector<V> collect(index_t rows, index_t cols, Pick pick) const {
    return collect<V>(rows, cols, pick, full_rows{cols});
  }
  template <class V, class Pick, class Range>
  std::vector<V> collect(index_t rows, index_t cols, Pick pick, Range range) const {
    const int parts = static_cast<int>(std::min<index_t>(threads_, std::max<index_t>(1, rows * cols / 65536)));
    std::vector<std::vector<V>> local(static_cast<std::size_t>(std::max(parts, 1)));
    run_parts(std::max(parts, 1), [&](int p) {
      const int np = std::max(parts, 1);
      auto& out = local[static_cast<std::size_t>(p)];
      for (index_t b = rows * p / np; b < rows * (p + 1) / np; ++b) {
        index_t t0, t1;
        range(b, t0, t1);
        detail::collect_span<V>(pick, b, t0, t1, [&out](const V& x) { out.push_back(x); });
      }
    });
    std::vector<V> all = std::move(local[0]);
    for (std::size_t p = 1; p < local.size(); ++p) all.insert(all.end(), local[p].begin(), local[p].end());
    return all;
  }

  template <class Key>
  void sort_indices(index_t n, Key key, index_t* perm) const {
    std::vector<std::int64_t> k(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) {
      perm[i] = i;
      k[static_cast<std::size_t>(i)] = key(i);
    }
    std::stable_sort(perm, perm + n, [&](index_t a, index_t b) {
      return k[static_cast<std::size_t>(a)] < k[static_cast<std::size_t>(b)];
    });
  }

 private:
  // Runs body(p) for p in [0, parts) on the pool and the calling thread; waits for all.
  template <class Body>
  void run_parts(int parts, Body&& body) const {
    if (parts <= 1 || !pool_) {
      for (int p = 0; p < parts; ++p) body(p);
      return;
    }
    Eigen::Barrier done(static_cast<unsigned>(parts - 1));
    for (int p = 1; p < parts; ++p)
      pool_->Schedule([&body, &done, p] {
        body(p);
        done.Notify();
      });
    body(0);
    done.Wait();
  }

  template <class Local, class CountRows>
  void count_parts(int parts, index_t rows, index_t nbins, std::uint64_t* counts, CountRows& count_rows) const {
    std::vector<std::vector<Local>> local(static_cast<std::size_t>(parts));
    run_parts(parts, [&](int p) {
      if (p == 0) {
        count_rows(0, rows / parts, counts);
        return;
      }
      auto& h = local[static_cast<std::size_t>(p)];
      h.assign(static_cast<std::size_t>(nbins), 0u);
      count_rows(rows * p / parts, rows * (p + 1) / parts, h.data());
    });
    for (int p = 1; p < parts; ++p)
      for (index_t k = 0; k < nbins; ++k) counts[k] += local[static_cast<std::size_t>(p)][static_cast<std::size_t>(k)];
  }

  // Splits [0, n) into at most threads_ contiguous blocks of at least `grain` items.
  template <class Body>
  void parallel_blocks(index_t n, index_t grain, Body&& body) const {
    if (n <= 0) return;
    const index_t want = std::max<index_t>(1, n / std::max<index_t>(grain, 1));
    const int parts = static_cast<int>(std::min<index_t>(threads_, want));
    run_parts(parts, [&](int p) { body(n * p / parts, n * (p + 1) / parts); });
  }

  int threads_ = 1;
  std::shared_ptr<Eigen::ThreadPool> pool_;
};

static_assert(Backend<cpu_backend>);

}  // namespace asyppo
