// Tests of the views (asyppo/views.hpp) and of the CPU backend's patterns (backend/cpu.hpp):
// every pattern against a sequential reference, non-commutative operators to catch any
// reordering, and bit-identical results for 1..4 threads.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "exact_ops.hpp"

using namespace asyppo;

namespace {

using namespace asyppo_test;

struct mat_scan {
  using value_type = mat;
  mat combine(const mat& x, const mat& y) const { return mul(x, y); }
};
struct mat_elem {
  mat operator()(index_t i) const { return elem_mat(i); }
};

}  // namespace

// ---- views ---------------------------------------------------------------------------------

TEST_CASE("views: contiguous strides, size, empty, element access", "[views]") {
  std::vector<int> d(24);
  std::iota(d.begin(), d.end(), 0);
  view<int, 3> v(d.data(), 2, 3, 4);
  CHECK(v.stride[0] == 12);
  CHECK(v.stride[1] == 4);
  CHECK(v.stride[2] == 1);
  CHECK(v.size() == 24);
  CHECK(!v.empty());
  CHECK(v(1, 2, 3) == 23);
  CHECK(v(0, 1, 2) == 6);
  CHECK(view<int, 2>(d.data(), 0, 5).empty());
  CHECK(view<int, 2>(d.data(), 5, 0).size() == 0);
  v(1, 0, 0) = -1;
  CHECK(d[12] == -1);
}

TEST_CASE("views: strided (transposed, sliced columns) and operator[] slicing", "[views]") {
  // A [4,6] row-major buffer viewed as its transpose [6,4] and as columns 1,3,5 ([4,3], stride 2).
  std::vector<double> d(24);
  std::iota(d.begin(), d.end(), 0.0);
  const auto tr = view<double, 2>::strided(d.data(), {6, 4}, {1, 6});
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 4; ++j) CHECK(tr(i, j) == d[static_cast<std::size_t>(j * 6 + i)]);
  const auto cols = view<double, 2>::strided(d.data() + 1, {4, 3}, {6, 2});
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) CHECK(cols(i, j) == d[static_cast<std::size_t>(i * 6 + 1 + 2 * j)]);
  // Rank 3 [2,3,4] sliced: critics(k) is a [3,4] view; then a row [4].
  view<double, 3> c(d.data(), 2, 3, 4);
  const view<double, 2> c1 = c[1];
  CHECK(c1.extent[0] == 3);
  CHECK(c1.extent[1] == 4);
  CHECK(c1.stride[0] == 4);
  CHECK(c1.stride[1] == 1);
  CHECK(c1(2, 3) == 23.0);
  const view<double, 1> row = c1[1];
  CHECK(row.extent[0] == 4);
  CHECK(row(0) == 16.0);
  // Slicing a strided view keeps the strides.
  const auto tslice = tr[2];
  CHECK(tslice.stride[0] == 6);
  CHECK(tslice(3) == d[3 * 6 + 2]);
}

TEST_CASE("views: const conversion only adds const", "[views]") {
  static_assert(std::is_convertible_v<view<float, 2>, view<const float, 2>>);
  static_assert(!std::is_convertible_v<view<const float, 2>, view<float, 2>>);
  static_assert(!std::is_convertible_v<view<float, 2>, view<const double, 2>>);
  static_assert(std::is_trivially_copyable_v<view<const double, 3>>);
  std::vector<float> d(12, 1.f);
  view<float, 2> v = view<float, 2>::strided(d.data(), {3, 2}, {4, 2});
  view<const float, 2> cv = v;
  CHECK(cv.data == v.data);
  for (int k = 0; k < 2; ++k) {
    CHECK(cv.extent[k] == v.extent[k]);
    CHECK(cv.stride[k] == v.stride[k]);
  }
  const bool flags[6] = {true, false, true, true, false, false};
  const mask_view m = as_mask(flags, 2, 3);
  CHECK(m(0, 0) == 1);
  CHECK(m(0, 1) == 0);
  CHECK(m(1, 0) == 1);
  CHECK(m(1, 2) == 0);
}

TEST_CASE("cpu_backend: for_each visits every index exactly once (flat and 2-D)", "[backend]") {
  for (int threads = 1; threads <= 4; ++threads) {
    const cpu_backend be(threads);
    for (index_t n : {index_t(0), index_t(1), index_t(4095), index_t(70001)}) {
      std::vector<int> hits(static_cast<std::size_t>(n), 0);
      be.for_each(n, [&](index_t i) { ++hits[static_cast<std::size_t>(i)]; });
      REQUIRE(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
    }
    for (auto shape : {std::pair<index_t, index_t>{0, 5}, {5, 0}, {1, 1}, {3, 9000}, {700, 13}}) {
      std::vector<int> hits(static_cast<std::size_t>(shape.first * shape.second), 0);
      be.for_each(shape.first, shape.second,
                  [&](index_t b, index_t t) { ++hits[static_cast<std::size_t>(b * shape.second + t)]; });
      REQUIRE(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
    }
  }
}

TEST_CASE("cpu_backend: reduce with a non-commutative associative op matches the sequential product", "[backend]") {
  for (index_t n : {index_t(0), index_t(1), index_t(16384), index_t(16385), index_t(100003)}) {
    mat want = eye;
    for (index_t i = 0; i < n; ++i) want = mul(want, elem_mat(i));
    for (int threads = 1; threads <= 4; ++threads) REQUIRE(cpu_backend(threads).reduce(n, mat_reducer{}) == want);
  }
  // 2-D: row-major order, including rows longer than a reduce tile (several chunks per row).
  for (auto shape : {std::pair<index_t, index_t>{3, 40000}, {200, 50}, {1, 1}, {0, 10}, {10, 0}}) {
    const index_t rows = shape.first, cols = shape.second;
    mat want = eye;
    for (index_t i = 0; i < rows * cols; ++i) want = mul(want, elem_mat(i));
    for (int threads = 1; threads <= 4; ++threads)
      REQUIRE(cpu_backend(threads).reduce(rows, cols, mat_reducer2{cols}) == want);
  }
}

TEST_CASE("cpu_backend: floating-point reduce is bit-identical for 1..4 threads", "[backend]") {
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<double> u(-1e3, 1e3);
  std::vector<double> x(250000);
  for (auto& v : x) v = u(rng);
  struct sum_reducer {
    const double* x;
    index_t cols;
    using value_type = double;
    double identity() const { return 0; }
    void add(double& a, index_t i) const { a += x[i]; }
    void add(double& a, index_t b, index_t t) const { a += x[b * cols + t]; }
    double combine(double a, double b) const { return a + b; }
  };
  const double flat1 = cpu_backend(1).reduce(static_cast<index_t>(x.size()), sum_reducer{x.data(), 0});
  const double rows1 = cpu_backend(1).reduce(50, 5000, sum_reducer{x.data(), 5000});
  for (int threads = 2; threads <= 4; ++threads) {
    const double f = cpu_backend(threads).reduce(static_cast<index_t>(x.size()), sum_reducer{x.data(), 0});
    const double r = cpu_backend(threads).reduce(50, 5000, sum_reducer{x.data(), 5000});
    REQUIRE(std::memcmp(&f, &flat1, sizeof f) == 0);
    REQUIRE(std::memcmp(&r, &rows1, sizeof r) == 0);
  }
}

TEST_CASE("cpu_backend: segmented_reduce and row_reduce with empty segments", "[backend]") {
  const std::vector<index_t> offsets = {0, 0, 5, 5, 5, 40000, 40003, 40003};
  const index_t nseg = static_cast<index_t>(offsets.size()) - 1;
  std::vector<mat> want(static_cast<std::size_t>(nseg), eye);
  for (index_t g = 0; g < nseg; ++g)
    for (index_t i = offsets[static_cast<std::size_t>(g)]; i < offsets[static_cast<std::size_t>(g + 1)]; ++i)
      want[static_cast<std::size_t>(g)] = mul(want[static_cast<std::size_t>(g)], elem_mat(i));
  for (int threads = 1; threads <= 4; ++threads) {
    std::vector<mat> got(static_cast<std::size_t>(nseg), mat{9, 9, 9, 9});
    cpu_backend(threads).segmented_reduce(nseg, offset_segments{offsets.data()}, mat_reducer{},
                                          [&](index_t g, const mat& m) { got[static_cast<std::size_t>(g)] = m; });
    REQUIRE(got == want);  // empty segments receive the identity
  }
  // row_reduce: per row in column order; cols = 0 gives the identity for every row.
  for (auto shape : {std::pair<index_t, index_t>{7, 300}, {4, 0}}) {
    const index_t rows = shape.first, cols = shape.second;
    for (int threads = 1; threads <= 4; ++threads) {
      std::vector<mat> got(static_cast<std::size_t>(rows), mat{9, 9, 9, 9});
      cpu_backend(threads).row_reduce(rows, cols, mat_reducer2{cols},
                                      [&](index_t b, const mat& m) { got[static_cast<std::size_t>(b)] = m; });
      for (index_t b = 0; b < rows; ++b) {
        mat w = eye;
        for (index_t t = 0; t < cols; ++t) w = mul(w, elem_mat(b * cols + t));
        REQUIRE(got[static_cast<std::size_t>(b)] == w);
      }
    }
  }
}

TEST_CASE("cpu_backend: segmented_scan forward/reverse with a non-commutative op", "[backend]") {
  const std::vector<index_t> offsets = {0, 3, 3, 1000, 1001, 5000};
  const index_t nseg = static_cast<index_t>(offsets.size()) - 1, n = offsets.back();
  for (auto dir : {scan_direction::forward, scan_direction::reverse}) {
    std::vector<mat> want(static_cast<std::size_t>(n));
    for (index_t g = 0; g < nseg; ++g) {
      const index_t b = offsets[static_cast<std::size_t>(g)], e = offsets[static_cast<std::size_t>(g + 1)];
      if (b == e) continue;
      if (dir == scan_direction::forward) {
        mat acc = elem_mat(b);
        want[static_cast<std::size_t>(b)] = acc;
        for (index_t i = b + 1; i < e; ++i) want[static_cast<std::size_t>(i)] = acc = mul(acc, elem_mat(i));
      } else {
        mat acc = elem_mat(e - 1);
        want[static_cast<std::size_t>(e - 1)] = acc;
        for (index_t i = e - 2; i >= b; --i) want[static_cast<std::size_t>(i)] = acc = mul(acc, elem_mat(i));
      }
    }
    for (int threads = 1; threads <= 4; ++threads) {
      std::vector<mat> got(static_cast<std::size_t>(n), mat{9, 9, 9, 9});
      cpu_backend(threads).segmented_scan(dir, nseg, offset_segments{offsets.data()}, mat_elem{}, mat_scan{},
                                          [&](index_t i, const mat& m) { got[static_cast<std::size_t>(i)] = m; });
      REQUIRE(got == want);
    }
  }
}

TEST_CASE("cpu_backend: row_scan forward/reverse delivers the sequentially folded states", "[backend]") {
  for (auto shape : {std::pair<index_t, index_t>{9, 700}, {1, 1}, {300, 3}, {5, 0}}) {
    const index_t rows = shape.first, cols = shape.second;
    const affine_elem e{cols};
    const affine_op op;
    for (auto dir : {scan_direction::forward, scan_direction::reverse}) {
      std::vector<u64> want(static_cast<std::size_t>(rows * cols));
      for (index_t b = 0; b < rows; ++b) {
        u64 x = op.initial();
        for (index_t k = 0; k < cols; ++k) {
          const index_t t = dir == scan_direction::forward ? k : cols - 1 - k;
          x = op.apply(e(b, t), x);
          want[static_cast<std::size_t>(b * cols + t)] = x;
        }
      }
      // The op's contract: the combined prefix applied to initial() gives the same state.
      if (rows * cols > 0) {
        affine pre = op.lift(e(0, dir == scan_direction::forward ? 0 : cols - 1));
        for (index_t k = 1; k < cols; ++k) pre = op.combine(pre, op.lift(e(0, dir == scan_direction::forward ? k : cols - 1 - k)));
        REQUIRE(op.apply(pre, op.initial()) == want[static_cast<std::size_t>(dir == scan_direction::forward ? cols - 1 : 0)]);
      }
      for (int threads = 1; threads <= 4; ++threads) {
        std::vector<u64> got(static_cast<std::size_t>(rows * cols), 0);
        std::vector<int> hits(static_cast<std::size_t>(rows * cols), 0);
        cpu_backend(threads).row_scan(dir, rows, cols, e, op, [&](index_t b, index_t t, u64 x) {
          got[static_cast<std::size_t>(b * cols + t)] = x;
          ++hits[static_cast<std::size_t>(b * cols + t)];
        });
        REQUIRE(got == want);
        REQUIRE(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
      }
    }
  }
}

TEST_CASE("cpu_backend: histogram (flat and 2-D) is exact and skips negative bins", "[backend]") {
  const index_t n = 300001, nbins = 37;
  auto bin = [](index_t i) -> index_t {
    const u64 v = static_cast<u64>(i) * 0x9E3779B97F4A7C15ull;
    return (v >> 60) == 0 ? -1 : static_cast<index_t>((v >> 20) % 37);
  };
  std::vector<u64> want(static_cast<std::size_t>(nbins), 5);  // histogram adds to existing counts
  for (index_t i = 0; i < n; ++i)
    if (bin(i) >= 0) ++want[static_cast<std::size_t>(bin(i))];
  for (int threads = 1; threads <= 4; ++threads) {
    std::vector<u64> got(static_cast<std::size_t>(nbins), 5);
    cpu_backend(threads).histogram(n, bin, nbins, got.data());
    REQUIRE(got == want);
    const index_t rows = 100, cols = 3000;
    std::vector<u64> got2(static_cast<std::size_t>(nbins), 0), want2(static_cast<std::size_t>(nbins), 0);
    for (index_t i = 0; i < rows * cols; ++i)
      if (bin(i) >= 0) ++want2[static_cast<std::size_t>(bin(i))];
    cpu_backend(threads).histogram(rows, cols, [&](index_t b, index_t t) { return bin(b * cols + t); }, nbins, got2.data());
    REQUIRE(got2 == want2);
  }
}

TEST_CASE("cpu_backend: sort_indices is a stable sort by key", "[backend]") {
  std::mt19937_64 rng(8);
  for (index_t n : {index_t(0), index_t(1), index_t(1000), index_t(50000)}) {
    std::vector<std::int64_t> keys(static_cast<std::size_t>(n));
    for (auto& k : keys) k = static_cast<std::int64_t>(rng() % 17) - 8 + (rng() % 5 == 0 ? INT64_MIN / 2 : 0);
    std::vector<index_t> want(static_cast<std::size_t>(n));
    std::iota(want.begin(), want.end(), index_t(0));
    std::stable_sort(want.begin(), want.end(), [&](index_t a, index_t b) {
      return keys[static_cast<std::size_t>(a)] < keys[static_cast<std::size_t>(b)];
    });
    for (int threads = 1; threads <= 4; ++threads) {
      std::vector<index_t> perm(static_cast<std::size_t>(n), -1);
      cpu_backend(threads).sort_indices(n, [&](index_t i) { return keys[static_cast<std::size_t>(i)]; }, perm.data());
      REQUIRE(perm == want);
    }
  }
}

TEST_CASE("cpu_backend: memory helpers and thread count", "[backend]") {
  const cpu_backend be(3);
  CHECK(be.threads() == 3);
  CHECK(cpu_backend(0).threads() >= 1);
  auto buf = be.allocate<double>(10);
  CHECK(buf.size() == 10);
  be.fill(buf.data(), 10, 2.5);
  std::vector<double> host(10, 0);
  be.copy_to_host(buf.data(), 10, host.data());
  CHECK(host == std::vector<double>(10, 2.5));
  host[3] = -1;
  be.copy_from_host(host.data(), 10, buf.data());
  CHECK(buf[3] == -1);
  auto empty = be.allocate<int>(0);
  CHECK(empty.size() == 0);
  static_assert(Backend<cpu_backend>);
  static_assert(Communicator<single_process>);
}

TEST_CASE("single_process communicator is the identity", "[backend]") {
  const single_process c;
  CHECK(c.rank() == 0);
  CHECK(c.size() == 1);
  double d[3] = {1, 2, 3};
  c.allreduce_sum(d, 3);
  CHECK(d[1] == 2);
  CHECK(c.exclusive_scan_sum(std::uint64_t(42)) == 0u);
  double out[3] = {};
  c.allgather(d, 3, out);
  CHECK(out[2] == 3);
}
