// Conformance of asyppo::cuda_backend against the CPU backend (run only where a CUDA device is
// present; the runner, gpu_main.cpp, exits 77 = skipped otherwise).
//
// Part 1: every pattern of backend/patterns.hpp on random data, with functors written for the
// test (exact integer results must be identical; order-sensitive reducers and scans check that
// the backend combines in index order; floating-point sums within rounding).
// Part 2: the main algorithms on device copies of random inputs against the CPU backend on the
// host copies. Tolerances (the CUDA backend associates sums and scans differently, and nvcc
// contracts a*b+c into FMA on the device):
//   masks, counts, histograms, sorts, selections: exact (identical);
//   double accumulations (losses, moments): 1e-12 relative to max(1, |x|);
//   per-token outputs: 1e-10 (double) and 2e-6 (float) relative to max(1, |x|).
// K = 2 everywhere masks are compared: the critic std is then |v0 - v1| * c, one multiplication,
// identical on host and device, so the selected thresholds and ties are identical too.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// The CPU backend (the reference here) uses Eigen's thread pool: compile Eigen as plain host code
// (otherwise nvcc marks its members __host__ __device__ and flags their std:: calls).
#define EIGEN_NO_CUDA
#include "asyppo/asyppo.hpp"
#include "asyppo/backend/cuda/cuda_backend.cuh"
#include "select_checks.hpp"

using namespace asyppo;
using i64 = std::int64_t;
using u8 = std::uint8_t;

namespace {

// ---- host <-> device helpers ----------------------------------------------------------------------
template <class T>
device_buffer<T> upload(const cuda_backend& be, const std::vector<T>& h) {
  auto d = be.allocate<T>(static_cast<index_t>(h.size()));
  be.copy_from_host(h.data(), static_cast<index_t>(h.size()), d.data());
  return d;
}
template <class T>
std::vector<T> download(const cuda_backend& be, const T* d, std::size_t n) {
  std::vector<T> h(n);
  be.copy_to_host(d, static_cast<index_t>(n), h.data());
  return h;
}
template <class T>
std::vector<T> download(const cuda_backend& be, const device_buffer<T>& d) {
  return download(be, d.data(), static_cast<std::size_t>(d.size()));
}

std::vector<double> random_values(std::mt19937_64& rng, std::size_t n, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}
template <class T>
std::vector<T> as(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

/// Response masks: valid prefix of random length with ~10% interior holes; some empty rows.
std::vector<u8> random_mask(std::mt19937_64& rng, int B, int Tn) {
  std::vector<u8> m(static_cast<std::size_t>(B) * Tn, 0);
  std::uniform_int_distribution<int> len(0, Tn), hole(0, 9);
  for (int b = 0; b < B; ++b) {
    const int L = b % 7 == 3 ? 0 : len(rng);
    for (int t = 0; t < L; ++t) m[static_cast<std::size_t>(b) * Tn + t] = hole(rng) == 0 ? 0 : 1;
  }
  return m;
}

double rel_err(double a, double b) { return std::abs(a - b) / std::max(1.0, std::abs(b)); }

template <class T>
void require_close(const std::vector<T>& got, const std::vector<T>& want, double tol) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double e = rel_err(static_cast<double>(got[i]), static_cast<double>(want[i]));
    if (!(e <= worst)) worst = e, at = i;  // NaN counts as worst
  }
  INFO("worst relative error " << worst << " at " << at);
  REQUIRE(worst <= tol);
}

// ---- test functors (ASYPPO_HD structs, as the algorithms' own) ------------------------------------
// The writes are compared bit for bit with the CPU backend's, so none of them is a multiply-add that
// nvcc may contract into an FMA (2.0 * x is exact, so fma(2, x, i) rounds as x + x + i does).
struct scale_write {
  const double* x;
  double* y;
  ASYPPO_HD void operator()(index_t i) const { y[i] = 2.0 * x[i] + static_cast<double>(i); }
};
struct scale_write2 {
  const double* x;
  double* y;
  index_t cols;
  ASYPPO_HD void operator()(index_t b, index_t t) const { y[b * cols + t] = 0.5 * (x[b * cols + t] - static_cast<double>(b)); }
};

/// Sum (double) and count (exact) of x over a flat index space.
struct sum_count {
  const double* x;
  struct value_type {
    double s;
    i64 n;
  };
  ASYPPO_HD value_type identity() const { return {0, 0}; }
  ASYPPO_HD void add(value_type& a, index_t i) const { a.s += x[i], a.n += x[i] > 0 ? 1 : 0; }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const { return {a.s + b.s, a.n + b.n}; }
};

/// Order witness: folds indices and checks they arrive as one increasing run (non-commutative).
struct order_witness {
  index_t cols;  // 2-D: flat index b * cols + t
  struct value_type {
    i64 first, last, n;
    bool ordered;
  };
  ASYPPO_HD value_type identity() const { return {0, -1, 0, true}; }
  ASYPPO_HD void add(value_type& a, index_t i) const {
    if (a.n == 0) a.first = i;
    else a.ordered = a.ordered && i == a.last + 1;
    a.last = i;
    a.n += 1;
  }
  ASYPPO_HD void add(value_type& a, index_t b, index_t t) const { add(a, b * cols + t); }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const {
    if (a.n == 0) return b;
    if (b.n == 0) return a;
    return {a.first, b.last, a.n + b.n, a.ordered && b.ordered && b.first == a.last + 1};
  }
};

/// Masked row sums (2-D reducer) of a [B,T] double tensor.
struct masked_sum2 {
  const double* x;
  const u8* m;
  index_t cols;
  using value_type = double;
  ASYPPO_HD double identity() const { return 0; }
  ASYPPO_HD void add(double& a, index_t b, index_t t) const { a += m[b * cols + t] ? x[b * cols + t] : 0.0; }
  ASYPPO_HD double combine(double a, double b) const { return a + b; }
};
template <class V>
struct store_row_value {
  V* out;
  ASYPPO_HD void operator()(index_t g, const V& v) const { out[g] = v; }
};
struct store_double {
  double* out;
  ASYPPO_HD void operator()(index_t g, double v) const { out[g] = v; }
};
struct sum_1d {
  const double* x;
  using value_type = double;
  ASYPPO_HD double identity() const { return 0; }
  ASYPPO_HD void add(double& a, index_t i) const { a += x[i]; }
  ASYPPO_HD double combine(double a, double b) const { return a + b; }
};

/// Affine maps x -> u x + o, composed in scan order (non-commutative), as the GAE scan.
struct affine {
  double u, o;
};
struct affine_op {
  using value_type = affine;
  ASYPPO_HD double initial() const { return 0.0; }
  ASYPPO_HD affine lift(const affine& e) const { return e; }
  ASYPPO_HD double apply(const affine& e, double x) const { return e.u * x + e.o; }
  ASYPPO_HD affine combine(const affine& f, const affine& e) const { return {e.u * f.u, e.u * f.o + e.o}; }
};
struct affine_elem2 {
  const double* x;
  index_t cols;
  ASYPPO_HD affine operator()(index_t b, index_t t) const { return {0.97, x[b * cols + t]}; }
};
struct affine_elem1 {
  const double* x;
  ASYPPO_HD affine operator()(index_t i) const { return {0.9, x[i]}; }
};
struct state_sink2 {
  double* out;
  index_t cols;
  ASYPPO_HD void operator()(index_t b, index_t t, double v) const { out[b * cols + t] = v; }
};
struct affine_sink1 {
  double* out;
  ASYPPO_HD void operator()(index_t i, const affine& a) const { out[i] = a.o; }
};

/// Exact integer scan: running count of positive entries and last position seen (non-commutative).
struct count_last {
  i64 n, last;
};
struct count_last_op {
  using value_type = count_last;
  ASYPPO_HD count_last initial() const { return {0, -1}; }
  ASYPPO_HD count_last lift(const count_last& e) const { return e; }
  ASYPPO_HD count_last apply(const count_last& e, const count_last& x) const { return combine(x, e); }
  ASYPPO_HD count_last combine(const count_last& a, const count_last& b) const { return {a.n + b.n, b.last}; }
};
struct count_last_elem2 {
  const double* x;
  index_t cols;
  ASYPPO_HD count_last operator()(index_t b, index_t t) const { return {x[b * cols + t] > 0 ? 1 : 0, t}; }
};
struct count_last_sink2 {
  i64* out;
  index_t cols;
  ASYPPO_HD void operator()(index_t b, index_t t, const count_last& v) const { out[b * cols + t] = v.n * 100000 + v.last; }
};
struct count_last_elem1 {
  const double* x;
  ASYPPO_HD count_last operator()(index_t i) const { return {x[i] > 0 ? 1 : 0, i}; }
};
struct count_last_sink1 {
  i64* out;
  ASYPPO_HD void operator()(index_t i, const count_last& v) const { out[i] = v.n * 100000000 + v.last; }
};

struct bin_1d {
  const double* x;
  index_t nbins;
  ASYPPO_HD index_t operator()(index_t i) const {
    return x[i] < -0.9 ? -1 : static_cast<index_t>((x[i] + 1.0) * 0.5 * static_cast<double>(nbins - 1));
  }
};
struct bin_2d {
  const double* x;
  const u8* m;
  index_t cols, nbins;
  ASYPPO_HD index_t operator()(index_t b, index_t t) const {
    if (!m[b * cols + t]) return -1;
    return static_cast<index_t>((x[b * cols + t] + 1.0) * 0.5 * static_cast<double>(nbins - 1));
  }
};
struct pick_positive {
  const double* x;
  index_t cols;
  struct value_type {
    i64 b, t;
    double v;
  };
  ASYPPO_HD bool operator()(index_t b, index_t t, value_type& out) const {
    const double v = x[b * cols + t];
    if (v < 0.8) return false;
    out = {b, t, v};
    return true;
  }
};
struct coarse_key {
  const double* x;
  ASYPPO_HD std::int64_t operator()(index_t i) const { return static_cast<std::int64_t>(std::floor(x[i] * 5.0)); }
};

constexpr double kSumTol = 1e-12;

}  // namespace

// =====================================================================================================
// Part 1: patterns
// =====================================================================================================

TEST_CASE("cuda patterns: for_each, fill, copies", "[cuda][patterns]") {
  cuda_backend gpu;
  cpu_backend cpu;
  std::mt19937_64 rng(1);
  const index_t B = 37, Tn = 1531, n = B * Tn;
  const auto x = random_values(rng, static_cast<std::size_t>(n));
  auto dx = upload(gpu, x);
  std::vector<double> want(x.size()), want2(x.size());
  cpu.for_each(n, scale_write{x.data(), want.data()});
  cpu.for_each(B, Tn, scale_write2{x.data(), want2.data(), Tn});
  auto dy = gpu.allocate<double>(n);
  gpu.for_each(n, scale_write{dx.data(), dy.data()});
  REQUIRE(download(gpu, dy) == want);
  gpu.for_each(B, Tn, scale_write2{dx.data(), dy.data(), Tn});
  REQUIRE(download(gpu, dy) == want2);
  for (index_t cols : {index_t(1), index_t(3), index_t(70)}) {  // narrow rows: threads along rows
    std::vector<double> w(static_cast<std::size_t>(5 * cols));
    cpu.for_each(5, cols, scale_write2{x.data(), w.data(), cols});
    auto d = gpu.allocate<double>(5 * cols);
    gpu.for_each(5, cols, scale_write2{dx.data(), d.data(), cols});
    REQUIRE(download(gpu, d) == w);
  }
  gpu.fill(dy.data(), n, 0.5);
  REQUIRE(download(gpu, dy) == std::vector<double>(x.size(), 0.5));
  gpu.copy(dx.data(), n, dy.data());
  REQUIRE(download(gpu, dy) == x);
}

TEST_CASE("cuda patterns: reduce (flat and 2-D), order and determinism", "[cuda][patterns]") {
  cuda_backend gpu;
  cpu_backend cpu;
  std::mt19937_64 rng(2);
  for (index_t n : {index_t(1), index_t(255), index_t(4097), index_t(1000003)}) {
    const auto x = random_values(rng, static_cast<std::size_t>(n));
    auto dx = upload(gpu, x);
    const auto want = cpu.reduce(n, sum_count{x.data()});
    const auto got = gpu.reduce(n, sum_count{dx.data()});
    REQUIRE(got.n == want.n);
    double mag = 0;
    for (double v : x) mag += std::abs(v);
    REQUIRE(std::abs(got.s - want.s) <= kSumTol * std::max(1.0, mag));
    const auto again = gpu.reduce(n, sum_count{dx.data()});
    REQUIRE(again.s == got.s);  // bit-identical run to run
    const auto w = gpu.reduce(n, order_witness{0});
    REQUIRE(w.ordered);
    REQUIRE(w.first == 0);
    REQUIRE(w.last == n - 1);
    REQUIRE(w.n == n);
  }
  for (auto [B, Tn] : {std::pair<index_t, index_t>{1, 1}, {3, 5000}, {1000, 1001}, {4099, 3}}) {
    const auto w = gpu.reduce(B, Tn, order_witness{Tn});
    REQUIRE(w.ordered);
    REQUIRE(w.n == B * Tn);
    REQUIRE(w.last == B * Tn - 1);
  }
  REQUIRE(gpu.reduce(0, sum_1d{nullptr}) == 0.0);
  REQUIRE(gpu.reduce(0, 7, order_witness{7}).n == 0);
}

/// Visit-order witness of a ragged 2-D reduce: the flat indices b * cols + t it visited, which must be
/// increasing (index order: combine need not be commutative), their count and their sum (which tells
/// exactly which ones were visited, given the count).
struct ragged_witness {
  index_t cols;
  struct value_type {
    i64 first, last, n, sum;
    bool increasing;
  };
  ASYPPO_HD value_type identity() const { return {0, -1, 0, 0, true}; }
  ASYPPO_HD void add(value_type& a, index_t b, index_t t) const {
    const i64 i = b * cols + t;
    if (a.n == 0) a.first = i;
    else a.increasing = a.increasing && i > a.last;
    a.last = i;
    a.n += 1;
    a.sum += i;
  }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const {
    if (a.n == 0) return b;
    if (b.n == 0) return a;
    return {a.first, b.last, a.n + b.n, a.sum + b.sum, a.increasing && b.increasing && b.first > a.last};
  }
};

/// tag[i] = i for i < n (split_witness's tokens).
inline std::vector<i64> position_tags(std::size_t n) {
  std::vector<i64> tags(n);
  for (std::size_t i = 0; i < n; ++i) tags[i] = static_cast<i64>(i);
  return tags;
}

/// ragged_witness split into load (the position's tag, read from memory: tag[i] = i) and apply, so that a
/// backend that loads a run's tokens ahead of applying them (kLoadAhead), or stages a warp's tokens in
/// shared memory (ASYPPO_CUDA_FOLD_STAGED_TOKENS), must still hand each position its own token: apply counts
/// the tokens whose tag is not their position's.
struct split_witness {
  const i64* tag;
  index_t cols;
  struct value_type {
    ragged_witness::value_type w;
    i64 wrong;
  };
  struct token_type {
    i64 tag;
  };
  ASYPPO_HD value_type identity() const { return {ragged_witness{cols}.identity(), 0}; }
  ASYPPO_HD token_type load(index_t b, index_t t) const { return {tag[b * cols + t]}; }
  ASYPPO_HD void apply(value_type& a, index_t b, index_t t, const token_type& k) const {
    ragged_witness{cols}.add(a.w, b, t);
    a.wrong += k.tag != b * cols + t ? 1 : 0;
  }
  ASYPPO_HD void add(value_type& a, index_t b, index_t t) const { apply(a, b, t, load(b, t)); }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const {
    return {ragged_witness{cols}.combine(a.w, b.w), a.wrong + b.wrong};
  }
};

template <class V>
struct store_value {
  V* out;
  ASYPPO_HD void operator()(const V& v) const { *out = v; }
};

// Ragged reduces on wide rows take one block per row over the row's range (its partials then combined in
// row order, by its last block); on narrow rows the flat reduce over a skipping functor. Both must visit
// exactly the range, in index order, and sum like the CPU; reduce_to gives reduce's bits.
TEST_CASE("cuda patterns: ragged reduce and reduce_to, wide and narrow rows", "[cuda][patterns]") {
  cuda_backend gpu;
  cpu_backend cpu;
  std::mt19937_64 rng(4);
  for (auto [B, Tn] : {std::pair<index_t, index_t>{301, 2100}, {7, 9000}, {1000, 100}, {3, 512}, {1, 600}}) {
    CAPTURE(B, Tn);
    std::vector<index_t> end(static_cast<std::size_t>(B));
    std::uniform_int_distribution<index_t> len(0, Tn);
    for (index_t b = 0; b < B; ++b)  // empty rows, full rows, and a row with one token
      end[static_cast<std::size_t>(b)] = b % 7 == 0 ? 0 : (b % 7 == 1 ? Tn : (b % 7 == 2 ? 1 : len(rng)));
    i64 n = 0, sum = 0;
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < end[static_cast<std::size_t>(b)]; ++t) n += 1, sum += b * Tn + t;
    auto dend = upload(gpu, end);
    const row_heads drange{dend.data()};
    const auto w = gpu.reduce(B, Tn, ragged_witness{Tn}, drange);
    CHECK(w.increasing);
    CHECK(w.n == n);
    CHECK(w.sum == sum);
    auto dtags = upload(gpu, position_tags(static_cast<std::size_t>(B * Tn)));
    const auto sw = gpu.reduce(B, Tn, split_witness{dtags.data(), Tn}, drange);  // loads ahead of applies
    CHECK((sw.w.increasing && sw.w.n == n && sw.w.sum == sum));
    CHECK(sw.wrong == 0);
    const auto x = random_values(rng, static_cast<std::size_t>(B * Tn));
    const auto m = random_mask(rng, static_cast<int>(B), static_cast<int>(Tn));
    auto dx = upload(gpu, x);
    auto dm = upload(gpu, m);
    const double want = cpu.reduce(B, Tn, masked_sum2{x.data(), m.data(), Tn}, row_heads{end.data()});
    const double got = gpu.reduce(B, Tn, masked_sum2{dx.data(), dm.data(), Tn}, drange);
    double mag = 0;
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < end[static_cast<std::size_t>(b)]; ++t)
        mag += m[static_cast<std::size_t>(b * Tn + t)] ? std::abs(x[static_cast<std::size_t>(b * Tn + t)]) : 0.0;
    CHECK(std::abs(got - want) <= kSumTol * std::max(1.0, mag));
    CHECK(gpu.reduce(B, Tn, masked_sum2{dx.data(), dm.data(), Tn}, drange) == got);  // run to run
    auto dout = gpu.allocate<double>(1);
    gpu.reduce_to(B, Tn, masked_sum2{dx.data(), dm.data(), Tn}, drange, store_value<double>{dout.data()});
    CHECK(download(gpu, dout)[0] == got);
    // With ASYPPO_CUDA_LAST_BLOCK_COMBINE=1 (off by default: the suite built with it by gpu-prepare.sh's
    // ASYPPO_SUITE_FLAGS) the last block combines in the same launch, on the range's own counter above
    // (zeroed by a memset), or on a span's ticket here: the same order, so the same bits, and the counter
    // back at zero for the next reduce (three in a row). Without it the ticket is not touched.
    auto ticket = upload(gpu, std::vector<unsigned>{0u});
    row_heads tranges{dend.data()};
    tranges.ticket = ticket.data();
    for (int again = 0; again < 3; ++again) {
      CAPTURE(again);
      const auto tw = gpu.reduce(B, Tn, ragged_witness{Tn}, tranges);
      CHECK((tw.increasing && tw.n == n && tw.sum == sum));
      CHECK(gpu.reduce(B, Tn, masked_sum2{dx.data(), dm.data(), Tn}, tranges) == got);
      gpu.reduce_to(B, Tn, masked_sum2{dx.data(), dm.data(), Tn}, tranges, store_value<double>{dout.data()});
      CHECK(download(gpu, dout)[0] == got);
      CHECK(download(gpu, ticket)[0] == 0u);
    }
  }
  // Nothing to visit: the identity, from reduce and reduce_to.
  auto dout = gpu.allocate<double>(1);
  gpu.reduce_to(0, 5000, masked_sum2{nullptr, nullptr, 5000}, full_rows{5000}, store_value<double>{dout.data()});
  CHECK(download(gpu, dout)[0] == 0.0);
  CHECK(gpu.reduce(4, 0, masked_sum2{nullptr, nullptr, 0}, full_rows{0}) == 0.0);
}

TEST_CASE("cuda patterns: row_reduce and segmented_reduce", "[cuda][patterns]") {
  cuda_backend gpu;
  cpu_backend cpu;
  std::mt19937_64 rng(3);
  const index_t B = 301, Tn = 2100;
  const auto x = random_values(rng, static_cast<std::size_t>(B * Tn));
  const auto m = random_mask(rng, static_cast<int>(B), static_cast<int>(Tn));
  auto dx = upload(gpu, x);
  auto dm = upload(gpu, m);
  std::vector<double> want(static_cast<std::size_t>(B));
  cpu.row_reduce(B, Tn, masked_sum2{x.data(), m.data(), Tn}, store_double{want.data()});
  auto d = gpu.allocate<double>(B);
  gpu.row_reduce(B, Tn, masked_sum2{dx.data(), dm.data(), Tn}, store_double{d.data()});
  require_close(download(gpu, d), want, 1e-12 * 2100);
  // A reducer split into load and apply, each row's own order and tokens (row_reduce's runs are 8 long).
  auto dtags = upload(gpu, position_tags(static_cast<std::size_t>(B * Tn)));
  auto dw = gpu.allocate<split_witness::value_type>(B);
  gpu.row_reduce(B, Tn, split_witness{dtags.data(), Tn}, store_row_value<split_witness::value_type>{dw.data()});
  const auto rows = download(gpu, dw);
  for (index_t b = 0; b < B; ++b) {
    const auto& r = rows[static_cast<std::size_t>(b)];
    CAPTURE(b);
    CHECK((r.w.increasing && r.w.n == Tn && r.w.first == b * Tn && r.w.last == b * Tn + Tn - 1));
    CHECK(r.w.sum == Tn * (b * Tn) + Tn * (Tn - 1) / 2);
    CHECK(r.wrong == 0);
  }
  // CSR segments with empty ones.
  std::vector<index_t> off{0};
  std::uniform_int_distribution<int> len(0, 3000);
  for (int g = 0; g < 50; ++g) off.push_back(off.back() + (g % 5 == 0 ? 0 : len(rng)));
  const index_t nseg = 50, total = off.back();
  const auto y = random_values(rng, static_cast<std::size_t>(total));
  auto dy = upload(gpu, y);
  auto doff = upload(gpu, off);
  std::vector<double> wseg(static_cast<std::size_t>(nseg));
  cpu.segmented_reduce(nseg, offset_segments{off.data()}, sum_1d{y.data()}, store_double{wseg.data()});
  auto dseg = gpu.allocate<double>(nseg);
  gpu.segmented_reduce(nseg, offset_segments{doff.data()}, sum_1d{dy.data()}, store_double{dseg.data()});
  require_close(download(gpu, dseg), wseg, 1e-12 * 3000);
}

TEST_CASE("cuda patterns: row_scan and segmented_scan, forward and reverse", "[cuda][patterns]") {
  cuda_backend gpu;
  cpu_backend cpu;
  std::mt19937_64 rng(4);
  const index_t B = 23, Tn = 5000;  // several tiles per row
  const auto x = random_values(rng, static_cast<std::size_t>(B * Tn));
  auto dx = upload(gpu, x);
  for (auto dir : {scan_direction::forward, scan_direction::reverse}) {
    std::vector<double> want(x.size());
    cpu.row_scan(dir, B, Tn, affine_elem2{x.data(), Tn}, affine_op{}, state_sink2{want.data(), Tn});
    auto d = gpu.allocate<double>(B * Tn);
    gpu.row_scan(dir, B, Tn, affine_elem2{dx.data(), Tn}, affine_op{}, state_sink2{d.data(), Tn});
    require_close(download(gpu, d), want, 1e-12);
    std::vector<i64> wi(x.size());
    cpu.row_scan(dir, B, Tn, count_last_elem2{x.data(), Tn}, count_last_op{}, count_last_sink2{wi.data(), Tn});
    auto di = gpu.allocate<i64>(B * Tn);
    gpu.row_scan(dir, B, Tn, count_last_elem2{dx.data(), Tn}, count_last_op{}, count_last_sink2{di.data(), Tn});
    REQUIRE(download(gpu, di) == wi);  // exact, and order-sensitive (last position)

    std::vector<index_t> off{0, 0, 1, 7, 1030, 1030, 6000, static_cast<index_t>(x.size())};
    const index_t nseg = static_cast<index_t>(off.size()) - 1;
    auto doff = upload(gpu, off);
    std::vector<double> ws(x.size(), 0.0);
    cpu.segmented_scan(dir, nseg, offset_segments{off.data()}, affine_elem1{x.data()}, affine_op{},
                       affine_sink1{ws.data()});
    auto ds = gpu.allocate<double>(B * Tn);
    gpu.fill(ds.data(), B * Tn, 0.0);
    gpu.segmented_scan(dir, nseg, offset_segments{doff.data()}, affine_elem1{dx.data()}, affine_op{},
                       affine_sink1{ds.data()});
    require_close(download(gpu, ds), ws, 1e-12);
    std::vector<i64> wsi(x.size(), 0);
    cpu.segmented_scan(dir, nseg, offset_segments{off.data()}, count_last_elem1{x.data()}, count_last_op{},
                       count_last_sink1{wsi.data()});
    auto dsi = gpu.allocate<i64>(B * Tn);
    gpu.fill(dsi.data(), B * Tn, i64(0));
    gpu.segmented_scan(dir, nseg, offset_segments{doff.data()}, count_last_elem1{dx.data()}, count_last_op{},
                       count_last_sink1{dsi.data()});
    REQUIRE(download(gpu, dsi) == wsi);
  }
}

TEST_CASE("cuda patterns: histogram, collect, sort_indices", "[cuda][patterns]") {
  cuda_backend gpu;
  cpu_backend cpu;
  std::mt19937_64 rng(5);
  const index_t B = 211, Tn = 999, n = B * Tn, nbins = 1000;
  const auto x = random_values(rng, static_cast<std::size_t>(n));
  const auto m = random_mask(rng, static_cast<int>(B), static_cast<int>(Tn));
  auto dx = upload(gpu, x);
  auto dm = upload(gpu, m);
  std::vector<std::uint64_t> h1(static_cast<std::size_t>(nbins), 0), h2(h1);
  cpu.histogram(n, bin_1d{x.data(), nbins}, nbins, h1.data());
  cpu.histogram(B, Tn, bin_2d{x.data(), m.data(), Tn, nbins}, nbins, h2.data());
  auto dh = gpu.allocate<std::uint64_t>(nbins);
  gpu.fill(dh.data(), nbins, std::uint64_t(0));
  gpu.histogram(n, bin_1d{dx.data(), nbins}, nbins, dh.data());
  REQUIRE(download(gpu, dh) == h1);
  gpu.fill(dh.data(), nbins, std::uint64_t(0));
  gpu.histogram(B, Tn, bin_2d{dx.data(), dm.data(), Tn, nbins}, nbins, dh.data());
  REQUIRE(download(gpu, dh) == h2);

  using V = pick_positive::value_type;
  const auto want = cpu.collect<V>(B, Tn, pick_positive{x.data(), Tn});
  const auto got = gpu.collect<V>(B, Tn, pick_positive{dx.data(), Tn});
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    REQUIRE(got[i].b == want[i].b);
    REQUIRE(got[i].t == want[i].t);
    REQUIRE(got[i].v == want[i].v);
  }
  REQUIRE(gpu.collect<V>(B, Tn, pick_positive{dx.data(), Tn}).size() == want.size());

  std::vector<index_t> perm(static_cast<std::size_t>(n));
  cpu.sort_indices(n, coarse_key{x.data()}, perm.data());  // ~10 keys: heavy ties, stability matters
  auto dp = gpu.allocate<index_t>(n);
  gpu.sort_indices(n, coarse_key{dx.data()}, dp.data());
  REQUIRE(download(gpu, dp) == perm);
}

// The row schedule: the rows by descending end, equal ends by row (a permutation); nothing above the
// documented row limit. Ends with many ties (few distinct lengths) and zeros (empty rows).
TEST_CASE("cuda row schedule: longest_first against a stable sort", "[cuda][patterns]") {
  cuda_backend gpu;
  std::mt19937_64 rng(77);
  for (index_t rows : {index_t(1), index_t(7), index_t(300), index_t(1024), cuda_detail::kMaxScheduledRows}) {
    CAPTURE(rows);
    std::uniform_int_distribution<index_t> len(0, rows % 2 == 0 ? 40 : 8000);
    std::vector<index_t> ends(static_cast<std::size_t>(rows));
    for (auto& e : ends) e = len(rng);
    std::vector<index_t> want(ends.size());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = static_cast<index_t>(i);
    std::stable_sort(want.begin(), want.end(), [&](index_t a, index_t b) { return ends[a] > ends[b]; });
    const auto de = upload(gpu, ends);
    auto order = gpu.allocate<index_t>(rows);
    REQUIRE(gpu.longest_first(rows, 1024, de.data(), order.data()));
    REQUIRE(download(gpu, order) == want);
  }
  const index_t too_many = cuda_detail::kMaxScheduledRows + 1;
  const auto de = upload(gpu, std::vector<index_t>(static_cast<std::size_t>(too_many), 3));
  auto order = upload(gpu, std::vector<index_t>(static_cast<std::size_t>(too_many), -1));
  REQUIRE_FALSE(gpu.longest_first(too_many, 1024, de.data(), order.data()));
  REQUIRE_FALSE(gpu.longest_first(8, 2 * cuda_detail::kBlock - 1, de.data(), order.data()));  // narrow rows
  REQUIRE(download(gpu, order) == std::vector<index_t>(static_cast<std::size_t>(too_many), -1));
}

// =====================================================================================================
// Part 2: algorithms on device copies against the CPU backend
// =====================================================================================================

namespace {

template <class T>
double out_tol() {
  return sizeof(T) == 4 ? 2e-6 : 1e-10;
}

template <class T>
struct batch {
  int K, B, Tn;
  std::vector<T> V, V2, r, logp, old_logp, ref_logp, adv, ent;
  std::vector<u8> m, adv_mask, ent_mask;
  std::vector<i64> ids;
  std::vector<T> scores;
};

template <class T>
batch<T> make_batch(std::uint64_t seed, int K, int B, int Tn) {
  std::mt19937_64 rng(seed);
  batch<T> d;
  d.K = K, d.B = B, d.Tn = Tn;
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  d.V = as<T>(random_values(rng, K * n));
  d.V2 = as<T>(random_values(rng, K * n));
  d.r = as<T>(random_values(rng, n, -0.05, 0.05));
  d.logp = as<T>(random_values(rng, n, -3, 0));
  d.old_logp = d.logp;
  const auto jitter = random_values(rng, n, -0.4, 0.4);
  for (std::size_t i = 0; i < n; ++i) d.old_logp[i] = static_cast<T>(d.logp[i] + jitter[i]);
  d.ref_logp = as<T>(random_values(rng, n, -3, 0));
  d.adv = as<T>(random_values(rng, n, -2, 2));
  d.ent = as<T>(random_values(rng, n, 0, 3));
  d.m = random_mask(rng, B, Tn);
  std::uniform_int_distribution<int> coin(0, 4);
  d.adv_mask.resize(n), d.ent_mask.resize(n);
  for (std::size_t i = 0; i < n; ++i) d.adv_mask[i] = coin(rng) != 0, d.ent_mask[i] = coin(rng) != 0;
  std::uniform_int_distribution<int> gid(0, B / 4);
  for (int b = 0; b < B; ++b) d.ids.push_back(1000 + 7 * gid(rng));
  d.scores = as<T>(random_values(rng, static_cast<std::size_t>(B), 0, 1));
  return d;
}

/// The same batch in device memory, with views of both copies.
template <class T>
struct device_batch {
  device_buffer<T> V, V2, r, logp, old_logp, ref_logp, adv, ent, scores;
  device_buffer<u8> m, adv_mask, ent_mask;
  device_buffer<i64> ids;
  device_batch(const cuda_backend& be, const batch<T>& h)
      : V(upload(be, h.V)), V2(upload(be, h.V2)), r(upload(be, h.r)), logp(upload(be, h.logp)),
        old_logp(upload(be, h.old_logp)), ref_logp(upload(be, h.ref_logp)), adv(upload(be, h.adv)),
        ent(upload(be, h.ent)), scores(upload(be, h.scores)), m(upload(be, h.m)), adv_mask(upload(be, h.adv_mask)),
        ent_mask(upload(be, h.ent_mask)), ids(upload(be, h.ids)) {}
};

}  // namespace

TEMPLATE_TEST_CASE("cuda algorithms: ensemble_stats, gae, masked_whiten", "[cuda][algorithms]", float, double) {
  using T = TestType;
  cuda_backend gpu;
  cpu_backend cpu;
  const int K = 3, B = 29, Tn = 2300;
  const auto h = make_batch<T>(11, K, B, Tn);
  const device_batch<T> d(gpu, h);
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  const critic_view<const T> hv(h.V.data(), K, B, Tn), dv(d.V.data(), K, B, Tn);
  const mask_view hm(h.m.data(), B, Tn), dm(d.m.data(), B, Tn);

  SECTION("ensemble_stats") {
    std::vector<T> mean(n), sd(n), lo(n), hi(n);
    ensemble_stats(cpu, hv, hm, ensemble_outputs<T>{{mean.data(), B, Tn}, {sd.data(), B, Tn}, {lo.data(), B, Tn}, {hi.data(), B, Tn}},
                   std_kind::unbiased);
    auto o = gpu.allocate<T>(4 * static_cast<index_t>(n));
    T* p = o.data();
    ensemble_stats(gpu, dv, dm,
                   ensemble_outputs<T>{{p, B, Tn}, {p + n, B, Tn}, {p + 2 * n, B, Tn}, {p + 3 * n, B, Tn}},
                   std_kind::unbiased);
    const auto all = download(gpu, o);
    require_close(std::vector<T>(all.begin(), all.begin() + n), mean, out_tol<T>());
    require_close(std::vector<T>(all.begin() + n, all.begin() + 2 * n), sd, out_tol<T>());
    REQUIRE(std::vector<T>(all.begin() + 2 * n, all.begin() + 3 * n) == lo);  // min/max: exact
    REQUIRE(std::vector<T>(all.begin() + 3 * n, all.end()) == hi);
  }
  SECTION("gae (skip and step semantics, adaptive lambda; one lambda: the joint scan)") {
    for (auto sem : {gae_mask_semantics::skip, gae_mask_semantics::step})
    for (const bool joint : {false, true}) {
      gae_options opt;
      opt.gamma = 0.999;
      opt.lambda_actor = 0.95;
      opt.lambda_critic = joint ? 0.95 : 1.0;  // equal lambdas, no adaptive one: gae_compose<true>
      opt.semantics = sem;
      opt.adaptive_lambda_alpha = sem == gae_mask_semantics::skip && !joint ? 0.05 : 0.0;
      opt.padding = sem == gae_mask_semantics::skip ? padding_mode::zero : padding_mode::raw;
      std::vector<T> adv(n), ret(n), sd(n);
      gae(cpu, hv, token_view<const T>(h.r.data(), B, Tn), hm, opt,
          gae_outputs<T>{{adv.data(), B, Tn}, {ret.data(), B, Tn}, {sd.data(), B, Tn}});
      auto o = gpu.allocate<T>(3 * static_cast<index_t>(n));
      gpu.fill(o.data(), 3 * static_cast<index_t>(n), T(7));  // poison: the padding must be written
      T* p = o.data();
      gae(gpu, dv, token_view<const T>(d.r.data(), B, Tn), dm, opt,
          gae_outputs<T>{{p, B, Tn}, {p + n, B, Tn}, {p + 2 * n, B, Tn}});
      const auto all = download(gpu, o);
      require_close(std::vector<T>(all.begin(), all.begin() + n), adv, out_tol<T>());
      require_close(std::vector<T>(all.begin() + n, all.begin() + 2 * n), ret, out_tol<T>());
      require_close(std::vector<T>(all.begin() + 2 * n, all.end()), sd, out_tol<T>());
    }
  }
  SECTION("masked_whiten") {
    std::vector<T> want(n);
    const auto mc = masked_whiten(cpu, token_view<const T>(h.adv.data(), B, Tn), hm, token_view<T>(want.data(), B, Tn));
    auto o = gpu.allocate<T>(static_cast<index_t>(n));
    const auto mg = masked_whiten(gpu, token_view<const T>(d.adv.data(), B, Tn), dm, token_view<T>(o.data(), B, Tn));
    REQUIRE(mg.count == mc.count);
    REQUIRE(rel_err(mg.mean, mc.mean) <= kSumTol);
    REQUIRE(rel_err(mg.var, mc.var) <= kSumTol);
    require_close(download(gpu, o), want, out_tol<T>());
    // The device-result variant: moments and coefficients stay on the device.
    whiten_options wo;
    wo.check_finite = false;
    auto dmo = gpu.allocate<masked_moments>(1);
    auto o2 = gpu.allocate<T>(static_cast<index_t>(n));
    masked_whiten_to(gpu, token_view<const T>(d.adv.data(), B, Tn), dm, token_view<T>(o2.data(), B, Tn), dmo.data(), wo);
    const auto md = download(gpu, dmo)[0];
    REQUIRE(md.count == mc.count);
    REQUIRE(rel_err(md.mean, mc.mean) <= kSumTol);
    REQUIRE(rel_err(md.var, mc.var) <= kSumTol);
    require_close(download(gpu, o2), want, out_tol<T>());
  }
}

TEMPLATE_TEST_CASE("cuda algorithms: uncertainty_masks, grpo_advantages, advantage_step", "[cuda][algorithms]", float,
                   double) {
  using T = TestType;
  cuda_backend gpu;
  cpu_backend cpu;
  const int K = 2, B = 64, Tn = 1500;
  const auto h = make_batch<T>(12, K, B, Tn);
  const device_batch<T> d(gpu, h);
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  const mask_view hm(h.m.data(), B, Tn), dm(d.m.data(), B, Tn);

  SECTION("uncertainty_masks (batch and sequence scope, tied sigmas)") {
    // sigma on a coarse grid: many ties at the thresholds, so tie ranking is exercised.
    std::vector<T> sigma(n);
    for (std::size_t i = 0; i < n; ++i) sigma[i] = static_cast<T>(std::floor((h.V[i] + 1) * 8) / 16);
    auto ds = upload(gpu, sigma);
    for (auto scope : {mask_scope::batch, mask_scope::sequence}) {
      mask_options opt;
      opt.scope = scope;
      std::vector<u8> am(n), em(n);
      const auto c = uncertainty_masks(cpu, token_view<const T>(sigma.data(), B, Tn), hm, mask_out(am.data(), B, Tn),
                                       mask_out(em.data(), B, Tn), opt);
      auto dmasks = gpu.allocate<u8>(2 * static_cast<index_t>(n));
      const auto g = uncertainty_masks(gpu, token_view<const T>(ds.data(), B, Tn), dm, mask_out(dmasks.data(), B, Tn),
                                       mask_out(dmasks.data() + n, B, Tn), opt);
      const auto all = download(gpu, dmasks);
      REQUIRE(std::vector<u8>(all.begin(), all.begin() + n) == am);
      REQUIRE(std::vector<u8>(all.begin() + n, all.end()) == em);
      REQUIRE(g.valid == c.valid);
      REQUIRE(g.adv_masked == c.adv_masked);
      REQUIRE(g.entropy_masked == c.entropy_masked);
      if (scope == mask_scope::batch) {
        REQUIRE(g.adv_threshold == c.adv_threshold);
        REQUIRE(g.entropy_threshold == c.entropy_threshold);
      }
      // The resident variant: digits chosen on the device, counts left in device memory.
      opt.check_finite = false;
      auto dmasks2 = gpu.allocate<u8>(2 * static_cast<index_t>(n));
      auto dcounts = gpu.allocate<mask_counts>(1);
      uncertainty_masks_to(gpu, token_view<const T>(ds.data(), B, Tn), dm, mask_out(dmasks2.data(), B, Tn),
                           mask_out(dmasks2.data() + n, B, Tn), dcounts.data(), opt);
      REQUIRE(download(gpu, dmasks2) == all);
      const auto g2 = download(gpu, dcounts)[0];
      REQUIRE(g2.valid == c.valid);
      REQUIRE(g2.adv_masked == c.adv_masked);
      REQUIRE(g2.entropy_masked == c.entropy_masked);
      if (scope == mask_scope::batch) {
        REQUIRE(g2.adv_threshold == c.adv_threshold);
        REQUIRE(g2.entropy_threshold == c.entropy_threshold);
      }
    }
  }
  SECTION("grpo_advantages") {
    std::vector<T> adv(n), seq(static_cast<std::size_t>(B));
    grpo_advantages(cpu, seq_view<const T>(h.scores.data(), B), seq_view<const i64>(h.ids.data(), B), hm,
                    outcome_outputs<T>{{adv.data(), B, Tn}, {seq.data(), B}});
    auto da = gpu.allocate<T>(static_cast<index_t>(n));
    auto dq = gpu.allocate<T>(B);
    grpo_advantages(gpu, seq_view<const T>(d.scores.data(), B), seq_view<const i64>(d.ids.data(), B), dm,
                    outcome_outputs<T>{{da.data(), B, Tn}, {dq.data(), B}});
    require_close(download(gpu, dq), seq, out_tol<T>());
    require_close(download(gpu, da), adv, out_tol<T>());
  }
  SECTION("advantage_step (batch scope, with shards)") {
    advantage_config cfg;
    cfg.gamma = 0.99;
    cfg.lambda_actor = 0.95;
    const advantage_inputs<T> hin{critic_view<const T>(h.V.data(), K, B, Tn), token_view<const T>(h.r.data(), B, Tn), hm,
                                  seq_view<const i64>(h.ids.data(), B)};
    std::vector<T> adv(n), ret(n), sd(n), shard(static_cast<std::size_t>(K) * B);
    std::vector<u8> am(n), em(n);
    const auto sc = advantage_step(cpu, hin,
                                   advantage_outputs<T>{{adv.data(), B, Tn}, {ret.data(), B, Tn}, {am.data(), B, Tn},
                                                        {em.data(), B, Tn}, {shard.data(), K, B}, {sd.data(), B, Tn}},
                                   cfg);
    const advantage_inputs<T> din{critic_view<const T>(d.V.data(), K, B, Tn), token_view<const T>(d.r.data(), B, Tn), dm,
                                  seq_view<const i64>(d.ids.data(), B)};
    auto o = gpu.allocate<T>(3 * static_cast<index_t>(n) + K * B);
    auto om = gpu.allocate<u8>(2 * static_cast<index_t>(n));
    gpu.fill(o.data(), 3 * static_cast<index_t>(n) + K * B, T(7));  // poison: the padding must be written
    gpu.fill(om.data(), 2 * static_cast<index_t>(n), u8(7));
    T* p = o.data();
    const auto sg = advantage_step(gpu, din,
                                   advantage_outputs<T>{{p, B, Tn}, {p + n, B, Tn}, {om.data(), B, Tn},
                                                        {om.data() + n, B, Tn}, {p + 3 * n, K, B}, {p + 2 * n, B, Tn}},
                                   cfg);
    const auto all = download(gpu, o);
    const auto masks = download(gpu, om);
    REQUIRE(std::vector<u8>(masks.begin(), masks.begin() + n) == am);
    REQUIRE(std::vector<u8>(masks.begin() + n, masks.end()) == em);
    REQUIRE(std::vector<T>(all.begin() + 2 * n, all.begin() + 3 * n) == sd);  // sigma: K = 2, exact
    REQUIRE(std::vector<T>(all.begin() + 3 * n, all.end()) == shard);
    require_close(std::vector<T>(all.begin(), all.begin() + n), adv, out_tol<T>());
    require_close(std::vector<T>(all.begin() + n, all.begin() + 2 * n), ret, out_tol<T>());
    REQUIRE(sg.valid_tokens == sc.valid_tokens);
    REQUIRE(sg.adv_masked == sc.adv_masked);
    REQUIRE(sg.entropy_masked == sc.entropy_masked);
    REQUIRE(sg.adv_threshold == sc.adv_threshold);
    REQUIRE(sg.entropy_threshold == sc.entropy_threshold);
    for (int q = 0; q < 5; ++q) REQUIRE(sg.std_quantiles[q] == sc.std_quantiles[q]);
    REQUIRE(rel_err(sg.advantage_mean, sc.advantage_mean) <= 1e-9);
    REQUIRE(rel_err(sg.return_std, sc.return_std) <= 1e-9);
    REQUIRE(sg.explained_variance.size() == sc.explained_variance.size());
    for (std::size_t k = 0; k < sc.explained_variance.size(); ++k)
      REQUIRE(rel_err(sg.explained_variance[k], sc.explained_variance[k]) <= 1e-9);

    // advantage_step_to (sequence scope too): the device's own advantage_step, with the summary and the
    // explained variances left in device memory (no shards).
    for (auto scope : {mask_scope::batch, mask_scope::sequence}) {
      advantage_config c2 = cfg;
      c2.scope = scope;
      c2.check_finite = false;
      auto o1 = gpu.allocate<T>(3 * static_cast<index_t>(n)), o2 = gpu.allocate<T>(3 * static_cast<index_t>(n));
      auto m1 = gpu.allocate<u8>(2 * static_cast<index_t>(n)), m2 = gpu.allocate<u8>(2 * static_cast<index_t>(n));
      gpu.fill(o1.data(), 3 * static_cast<index_t>(n), T(7)), gpu.fill(o2.data(), 3 * static_cast<index_t>(n), T(-7));
      gpu.fill(m1.data(), 2 * static_cast<index_t>(n), u8(7)), gpu.fill(m2.data(), 2 * static_cast<index_t>(n), u8(9));
      auto outs = [&](T* q, u8* mq) {
        return advantage_outputs<T>{{q, B, Tn}, {q + n, B, Tn}, {mq, B, Tn}, {mq + n, B, Tn}, {}, {q + 2 * n, B, Tn}};
      };
      const auto s1 = advantage_step(gpu, din, outs(o1.data(), m1.data()), c2);
      auto dres = gpu.allocate<advantage_step_result>(1);
      auto dev = gpu.allocate<double>(K);
      advantage_step_to(gpu, din, outs(o2.data(), m2.data()), dres.data(), dev.data(), c2);
      REQUIRE(download(gpu, m2) == download(gpu, m1));
      REQUIRE(download(gpu, o2) == download(gpu, o1));  // the same patterns on the same device
      const auto s2 = download(gpu, dres)[0];
      const auto ev = download(gpu, dev);
      REQUIRE(s2.valid_tokens == s1.valid_tokens);
      REQUIRE(s2.adv_masked == s1.adv_masked);
      REQUIRE(s2.entropy_masked == s1.entropy_masked);
      if (scope == mask_scope::batch) REQUIRE(s2.adv_threshold == s1.adv_threshold);
      for (int q = 0; q < 5; ++q) REQUIRE(s2.std_quantiles[q] == s1.std_quantiles[q]);
      REQUIRE(rel_err(s2.advantage_mean, s1.advantage_mean) <= 1e-12);
      REQUIRE(rel_err(s2.return_std, s1.return_std) <= 1e-12);
      for (int k = 0; k < K; ++k) REQUIRE(rel_err(ev[static_cast<std::size_t>(k)], s1.explained_variance[static_cast<std::size_t>(k)]) <= 1e-12);
    }
  }
}

TEMPLATE_TEST_CASE("cuda algorithms: radix selection (host-driven and resident) against a sorted reference",
                   "[cuda][algorithms][select]", float, double) {
  // tests/support/select_checks.hpp: random keys with heavy ties, +-0, +-inf, interleaved segments, ragged
  // ranges, inactive requests; the resident path is what uncertainty_masks_to and advantage_step_to run.
  // Rows up to 300 and up to 3000 columns (from 512 on, the ragged histogram takes its row-parts kernel).
  using T = TestType;
  cuda_backend gpu;
  for (std::uint64_t seed = 1; seed <= 12; ++seed)
    for (bool interleaved : {false, true}) {
      const auto p = asyppo_select_checks::make_problem<T>(seed, interleaved, seed % 2 ? 300 : 3000);
      INFO("seed " << seed << (interleaved ? ", interleaved" : ", by row"));
      for (int digit_bits : {8, 16}) asyppo_select_checks::check_host_selection(gpu, p, digit_bits, seed + 1);
      // The wide digit: 2^11 bins per request (the global bins; with ASYPPO_CUDA_HIST_PACKED_BINS the packed ones).
      for (int digit_bits : {resident_digit_bits, resident_wide_digit_bits})
        asyppo_select_checks::check_resident_selection(gpu, p, seed + 2, digit_bits);
      // The candidate compaction (the default above: after 16 bits) off, after 8 bits with a slot for every
      // element, after 5 bits into one region (an overflow wherever a row's range holds more candidates than
      // the columns): the warps' slot claims, the candidates' pass, the full pass after an overflow.
      const resident_compaction compactions[] = {{0, 0}, {8, p.rows}, {5, 1}};  // (a named array: nvcc)
      for (const resident_compaction& c : compactions)
        asyppo_select_checks::check_resident_selection(gpu, p, seed + 2, resident_digit_bits, c);
    }
}

TEMPLATE_TEST_CASE("cuda algorithms: policy_loss, value_loss, actor_objective", "[cuda][algorithms]", float, double) {
  using T = TestType;
  cuda_backend gpu;
  cpu_backend cpu;
  const int K = 2, B = 48, Tn = 1700;
  const auto h = make_batch<T>(13, K, B, Tn);
  const device_batch<T> d(gpu, h);
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  const mask_view hm(h.m.data(), B, Tn), dm(d.m.data(), B, Tn);
  auto tv = [&](const std::vector<T>& v) { return token_view<const T>(v.data(), B, Tn); };
  auto dtv = [&](const device_buffer<T>& v) { return token_view<const T>(v.data(), B, Tn); };

  SECTION("policy_loss") {
    policy_loss_options opt;
    opt.dual_clip = 3.0;
    opt.clip_high = 0.28;
    std::vector<T> g(n);
    const auto c = policy_loss(cpu, policy_loss_inputs<T>{tv(h.logp), tv(h.old_logp), tv(h.adv), hm,
                                                         mask_view(h.adv_mask.data(), B, Tn)},
                               token_view<T>(g.data(), B, Tn), opt);
    auto dg = gpu.allocate<T>(static_cast<index_t>(n));
    const auto r = policy_loss(gpu, policy_loss_inputs<T>{dtv(d.logp), dtv(d.old_logp), dtv(d.adv), dm,
                                                         mask_view(d.adv_mask.data(), B, Tn)},
                               token_view<T>(dg.data(), B, Tn), opt);
    REQUIRE(rel_err(r.loss, c.loss) <= kSumTol);
    REQUIRE(r.metrics.valid_tokens == c.metrics.valid_tokens);
    REQUIRE(r.metrics.adv_masked_tokens == c.metrics.adv_masked_tokens);
    REQUIRE(r.metrics.clipped_high_tokens == c.metrics.clipped_high_tokens);
    REQUIRE(r.metrics.clipped_low_tokens == c.metrics.clipped_low_tokens);
    REQUIRE(r.metrics.dual_clipped_tokens == c.metrics.dual_clipped_tokens);
    REQUIRE(rel_err(r.metrics.approx_kl_sum, c.metrics.approx_kl_sum) <= kSumTol * static_cast<double>(n));
    require_close(download(gpu, dg), g, out_tol<T>());
  }
  SECTION("policy_loss_to, entropy_bonus_to, kl_loss_to, aggregate_loss_to, masked_moments_to") {
    // The device-result variants against the host-returning calls on the same device (checks off:
    // nothing waits), each result read back from device memory.
    const loss_normalizer norm{static_cast<double>(n), static_cast<double>(B), static_cast<double>(Tn)};
    auto dg = gpu.allocate<T>(static_cast<index_t>(n));
    auto dg2 = gpu.allocate<T>(static_cast<index_t>(n));
    const token_view<T> g1(dg.data(), B, Tn), g2(dg2.data(), B, Tn);
    policy_loss_options po;
    po.aggregation = loss_aggregation::seq_mean_token_mean;
    po.normalizer = norm;
    po.dual_clip = 3.0;
    const policy_loss_inputs<T> pin{dtv(d.logp), dtv(d.old_logp), dtv(d.adv), dm, mask_view(d.adv_mask.data(), B, Tn)};
    const auto pw = policy_loss(gpu, pin, g1, po);
    po.check_finite = false;
    auto pr = gpu.allocate<policy_loss_result>(1);
    policy_loss_to(gpu, pin, g2, pr.data(), po);
    const auto pg = download(gpu, pr)[0];
    REQUIRE(rel_err(pg.loss, pw.loss) <= 1e-12);
    REQUIRE(pg.metrics.clipped_tokens() == pw.metrics.clipped_tokens());
    REQUIRE(download(gpu, dg2) == download(gpu, dg));
    entropy_bonus_options eo;
    eo.beta = 0.01;
    eo.normalizer = norm;
    const auto ew = entropy_bonus(gpu, dtv(d.ent), dm, mask_view(d.ent_mask.data(), B, Tn), g1, eo);
    eo.check_finite = false;
    auto er = gpu.allocate<entropy_bonus_result>(1);
    entropy_bonus_to(gpu, dtv(d.ent), dm, mask_view(d.ent_mask.data(), B, Tn), g2, er.data(), eo);
    const auto eg = download(gpu, er)[0];
    REQUIRE(rel_err(eg.loss, ew.loss) <= 1e-12);
    REQUIRE(eg.metrics.filtered_tokens == ew.metrics.filtered_tokens);
    REQUIRE(download(gpu, dg2) == download(gpu, dg));
    kl_loss_options ko;
    ko.coef = 0.05;
    ko.normalizer = norm;
    const auto kw = kl_loss(gpu, dtv(d.logp), dtv(d.ref_logp), dm, g1, ko);
    ko.check_finite = false;
    auto kr = gpu.allocate<kl_loss_result>(1);
    kl_loss_to(gpu, dtv(d.logp), dtv(d.ref_logp), dm, g2, kr.data(), ko);
    REQUIRE(rel_err(download(gpu, kr)[0].loss, kw.loss) <= 1e-12);
    REQUIRE(download(gpu, dg2) == download(gpu, dg));
    const auto aw = aggregate_loss(gpu, dtv(d.adv), dm, loss_aggregation::token_mean, norm, g1);
    auto ar = gpu.allocate<aggregation_result>(1);
    aggregate_loss_to(gpu, dtv(d.adv), dm, loss_aggregation::token_mean, norm, g2, ar.data(), false);
    REQUIRE(rel_err(download(gpu, ar)[0].loss, aw.loss) <= 1e-12);
    REQUIRE(download(gpu, dg2) == download(gpu, dg));
    const auto mw = compute_masked_moments(gpu, dtv(d.adv), dm, true);
    auto mr = gpu.allocate<masked_moments>(1);
    masked_moments_to(gpu, dtv(d.adv), dm, true, mr.data());
    const auto mg = download(gpu, mr)[0];
    REQUIRE(mg.count == mw.count);
    REQUIRE(rel_err(mg.mean, mw.mean) <= 1e-12);
    REQUIRE(rel_err(mg.var, mw.var) <= 1e-12);
  }
  SECTION("value_loss (shared returns, shards)") {
    std::vector<T> shard(static_cast<std::size_t>(K) * B);
    for (int k = 0; k < K; ++k)
      for (int b = 0; b < B; ++b) shard[static_cast<std::size_t>(k) * B + b] = T((b + k) % 2 == 0 ? 1 : 0);
    auto dshard = upload(gpu, shard);
    value_loss_options opt;
    std::vector<T> g(static_cast<std::size_t>(K) * n);
    const auto c = value_loss(cpu,
                              value_loss_inputs<T>{critic_view<const T>(h.V.data(), K, B, Tn),
                                                   critic_view<const T>(h.V2.data(), K, B, Tn), tv(h.r), {}, hm,
                                                   view<const T, 2>(shard.data(), K, B)},
                              critic_view<T>(g.data(), K, B, Tn), opt);
    auto dg = gpu.allocate<T>(K * static_cast<index_t>(n));
    gpu.fill(dg.data(), K * static_cast<index_t>(n), T(7));  // poison: the padding must be written
    const auto r = value_loss(gpu,
                              value_loss_inputs<T>{critic_view<const T>(d.V.data(), K, B, Tn),
                                                   critic_view<const T>(d.V2.data(), K, B, Tn), dtv(d.r), {}, dm,
                                                   view<const T, 2>(dshard.data(), K, B)},
                              critic_view<T>(dg.data(), K, B, Tn), opt);
    REQUIRE(rel_err(r.loss, c.loss) <= kSumTol);
    REQUIRE(r.critics.size() == c.critics.size());
    for (std::size_t k = 0; k < c.critics.size(); ++k) {
      REQUIRE(r.critics[k].tokens == c.critics[k].tokens);
      REQUIRE(r.critics[k].sequences == c.critics[k].sequences);
      REQUIRE(r.critics[k].clipped_tokens == c.critics[k].clipped_tokens);
      REQUIRE(rel_err(r.critics[k].loss, c.critics[k].loss) <= kSumTol);
      REQUIRE(rel_err(r.critics[k].explained_variance, c.critics[k].explained_variance) <= 1e-9);
    }
    require_close(download(gpu, dg), g, out_tol<T>());
    // The device-result variant: each critic's metrics written to device memory, no wait.
    value_loss_options od = opt;
    od.check_finite = false;
    od.normalizers.clear();
    for (const auto& ck : c.critics) od.normalizers.push_back(ck.normalizer);
    auto dmet = gpu.allocate<critic_loss_metrics>(K);
    auto dg2 = gpu.allocate<T>(K * static_cast<index_t>(n));
    gpu.fill(dg2.data(), K * static_cast<index_t>(n), T(7));
    value_loss_to(gpu,
                  value_loss_inputs<T>{critic_view<const T>(d.V.data(), K, B, Tn), critic_view<const T>(d.V2.data(), K, B, Tn),
                                       dtv(d.r), {}, dm, view<const T, 2>(dshard.data(), K, B)},
                  critic_view<T>(dg2.data(), K, B, Tn), dmet.data(), od);
    const auto met = download(gpu, dmet);
    for (std::size_t k = 0; k < c.critics.size(); ++k) {
      REQUIRE(met[k].tokens == c.critics[k].tokens);
      REQUIRE(met[k].clipped_tokens == c.critics[k].clipped_tokens);
      REQUIRE(rel_err(met[k].loss, c.critics[k].loss) <= kSumTol);
    }
    require_close(download(gpu, dg2), g, out_tol<T>());
  }
  SECTION("actor_objective (surrogate + entropy bonus + KL)") {
    actor_objective_options opt;
    opt.entropy_coef = 0.01;
    opt.kl_coef = 0.001;
    opt.dual_clip = 3.0;
    std::vector<T> gl(n), ge(n);
    const auto c = actor_objective(cpu,
                                   actor_objective_inputs<T>{tv(h.logp), tv(h.old_logp), tv(h.adv), hm,
                                                             mask_view(h.adv_mask.data(), B, Tn), tv(h.ent),
                                                             mask_view(h.ent_mask.data(), B, Tn), tv(h.ref_logp)},
                                   actor_objective_outputs<T>{{gl.data(), B, Tn}, {ge.data(), B, Tn}}, opt);
    auto dgl = gpu.allocate<T>(static_cast<index_t>(n));
    auto dge = gpu.allocate<T>(static_cast<index_t>(n));
    const auto poison = [&] {  // every output element, padding included, must be written by the call
      gpu.fill(dgl.data(), static_cast<index_t>(n), T(7));
      gpu.fill(dge.data(), static_cast<index_t>(n), T(7));
    };
    poison();
    const auto r = actor_objective(gpu,
                                   actor_objective_inputs<T>{dtv(d.logp), dtv(d.old_logp), dtv(d.adv), dm,
                                                             mask_view(d.adv_mask.data(), B, Tn), dtv(d.ent),
                                                             mask_view(d.ent_mask.data(), B, Tn), dtv(d.ref_logp)},
                                   actor_objective_outputs<T>{{dgl.data(), B, Tn}, {dge.data(), B, Tn}}, opt);
    REQUIRE(rel_err(r.total, c.total) <= kSumTol);
    REQUIRE(rel_err(r.policy.loss, c.policy.loss) <= kSumTol);
    REQUIRE(rel_err(r.entropy.loss, c.entropy.loss) <= kSumTol);
    REQUIRE(rel_err(r.kl.loss, c.kl.loss) <= kSumTol);
    REQUIRE(r.policy.metrics.clipped_tokens() == c.policy.metrics.clipped_tokens());
    REQUIRE(r.entropy.metrics.filtered_tokens == c.entropy.metrics.filtered_tokens);
    require_close(download(gpu, dgl), gl, out_tol<T>());
    require_close(download(gpu, dge), ge, out_tol<T>());
    // The device-result variant: the result written to device memory, nothing waits for the stream.
    actor_objective_options od = opt;
    od.check_finite = false;
    od.aggregation = loss_aggregation::token_mean;
    od.normalizer.tokens = static_cast<double>(n);
    const auto cd = actor_objective(cpu,
                                    actor_objective_inputs<T>{tv(h.logp), tv(h.old_logp), tv(h.adv), hm,
                                                              mask_view(h.adv_mask.data(), B, Tn), tv(h.ent),
                                                              mask_view(h.ent_mask.data(), B, Tn), tv(h.ref_logp)},
                                    actor_objective_outputs<T>{{gl.data(), B, Tn}, {ge.data(), B, Tn}}, od);
    auto dres = gpu.allocate<actor_objective_result>(1);
    poison();
    actor_objective_to(gpu,
                       actor_objective_inputs<T>{dtv(d.logp), dtv(d.old_logp), dtv(d.adv), dm,
                                                 mask_view(d.adv_mask.data(), B, Tn), dtv(d.ent),
                                                 mask_view(d.ent_mask.data(), B, Tn), dtv(d.ref_logp)},
                       actor_objective_outputs<T>{{dgl.data(), B, Tn}, {dge.data(), B, Tn}}, dres.data(), od);
    const auto rd = download(gpu, dres)[0];
    REQUIRE(rel_err(rd.total, cd.total) <= kSumTol);
    REQUIRE(rel_err(rd.policy.loss, cd.policy.loss) <= kSumTol);
    REQUIRE(rd.policy.metrics.clipped_tokens() == cd.policy.metrics.clipped_tokens());
    REQUIRE(rd.entropy.metrics.filtered_tokens == cd.entropy.metrics.filtered_tokens);
    require_close(download(gpu, dgl), gl, out_tol<T>());
    require_close(download(gpu, dge), ge, out_tol<T>());
  }
}

// ---- 16-bit inputs: the float inputs' bits -------------------------------------------------------
// A call on bfloat16 / float16 inputs reads them exactly and computes as on float inputs (half_types.hpp,
// compute_type_t): on the same device its outputs are the float call's on the widened values, bit for
// bit (the same kernels and launch shapes; only the loads differ).
namespace {
/// The float batch's tensors rounded to H, and those values widened back to float (exact).
template <class H>
std::pair<batch<H>, batch<float>> narrowed(const batch<float>& f) {
  batch<H> h{f.K, f.B, f.Tn, {}, {}, {}, {}, {}, {}, {}, {}, f.m, f.adv_mask, f.ent_mask, f.ids, {}};
  batch<float> w = f;
  const auto round = [](const std::vector<float>& x, std::vector<H>& n, std::vector<float>& back) {
    n.resize(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) n[i] = H::from_float(x[i]), back[i] = static_cast<float>(n[i]);
  };
  round(f.V, h.V, w.V), round(f.V2, h.V2, w.V2), round(f.r, h.r, w.r), round(f.logp, h.logp, w.logp);
  round(f.old_logp, h.old_logp, w.old_logp), round(f.ref_logp, h.ref_logp, w.ref_logp), round(f.adv, h.adv, w.adv);
  round(f.ent, h.ent, w.ent), round(f.scores, h.scores, w.scores);
  return {h, w};
}
template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}
template <class T>
bool same_object_bytes(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}
}  // namespace

TEMPLATE_TEST_CASE("cuda algorithms: bfloat16 and float16 inputs give the float inputs' bits", "[cuda][algorithms][half]",
                   bfloat16, float16) {
  using H = TestType;
  cuda_backend gpu;
  const int K = 2, B = 40, Tn = 1500;
  const auto [h16, h32] = narrowed<H>(make_batch<float>(31, K, B, Tn));
  const device_batch<H> d16(gpu, h16);
  const device_batch<float> d32(gpu, h32);
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  const mask_view dm(d32.m.data(), B, Tn);

  SECTION("advantage_step_to (both scopes, shards)") {
    for (auto scope : {mask_scope::batch, mask_scope::sequence}) {
      advantage_config cfg;
      cfg.lambda_actor = 0.95;
      cfg.scope = scope;
      cfg.check_finite = false;
      auto run = [&](const auto& in) {
        auto o = gpu.allocate<float>(3 * static_cast<index_t>(n) + K * B);
        auto om = gpu.allocate<u8>(2 * static_cast<index_t>(n));
        auto res = gpu.allocate<advantage_step_result>(1);
        auto ev = gpu.allocate<double>(K);
        float* p = o.data();
        advantage_step_to(gpu, in,
                          advantage_outputs<float>{{p, B, Tn}, {p + n, B, Tn}, {om.data(), B, Tn}, {om.data() + n, B, Tn},
                                                   {p + 3 * n, K, B}, {p + 2 * n, B, Tn}},
                          res.data(), ev.data(), cfg);
        return std::tuple{download(gpu, o), download(gpu, om), download(gpu, res)[0], download(gpu, ev)};
      };
      const auto [o16, m16, r16, e16] = run(advantage_inputs<H>{critic_view<const H>(d16.V.data(), K, B, Tn),
                                                                token_view<const H>(d16.r.data(), B, Tn), dm,
                                                                seq_view<const i64>(d16.ids.data(), B)});
      const auto [o32, m32, r32, e32] = run(advantage_inputs<float>{critic_view<const float>(d32.V.data(), K, B, Tn),
                                                                    token_view<const float>(d32.r.data(), B, Tn), dm,
                                                                    seq_view<const i64>(d32.ids.data(), B)});
      REQUIRE(same_bytes(o16, o32));
      REQUIRE(m16 == m32);
      REQUIRE(same_object_bytes(r16, r32));
      REQUIRE(same_bytes(e16, e32));
    }
  }
  SECTION("actor_objective_to and value_loss_to") {
    actor_objective_options ao;
    ao.entropy_coef = 0.01;
    ao.kl_coef = 0.001;
    ao.dual_clip = 3.0;
    ao.check_finite = false;
    ao.aggregation = loss_aggregation::token_mean;
    ao.normalizer.tokens = static_cast<double>(n);
    value_loss_options vo;
    vo.check_finite = false;
    vo.normalizers.assign(K, loss_normalizer{static_cast<double>(n), static_cast<double>(B), static_cast<double>(Tn)});
    auto run = [&](const auto& d) {
      using In = std::remove_cv_t<std::remove_pointer_t<decltype(d.V.data())>>;
      auto tv = [&](const device_buffer<In>& v) { return token_view<const In>(v.data(), B, Tn); };
      auto g = gpu.allocate<float>(2 * static_cast<index_t>(n) + K * static_cast<index_t>(n));
      auto ares = gpu.allocate<actor_objective_result>(1);
      auto vmet = gpu.allocate<critic_loss_metrics>(K);
      actor_objective_to(gpu,
                         actor_objective_inputs<In>{tv(d.logp), tv(d.old_logp), tv(d.adv), dm,
                                                    mask_view(d.adv_mask.data(), B, Tn), tv(d.ent),
                                                    mask_view(d.ent_mask.data(), B, Tn), tv(d.ref_logp)},
                         actor_objective_outputs<float>{{g.data(), B, Tn}, {g.data() + n, B, Tn}}, ares.data(), ao);
      value_loss_to(gpu,
                    value_loss_inputs<In>{critic_view<const In>(d.V.data(), K, B, Tn),
                                          critic_view<const In>(d.V2.data(), K, B, Tn), tv(d.r), {}, dm, {}},
                    critic_view<float>(g.data() + 2 * n, K, B, Tn), vmet.data(), vo);
      return std::tuple{download(gpu, g), download(gpu, ares)[0], download(gpu, vmet)};
    };
    const auto [g16, a16, v16] = run(d16);
    const auto [g32, a32, v32] = run(d32);
    REQUIRE(same_bytes(g16, g32));
    REQUIRE(same_object_bytes(a16, a32));
    for (int k = 0; k < K; ++k) REQUIRE(same_object_bytes(v16[static_cast<std::size_t>(k)], v32[static_cast<std::size_t>(k)]));
  }
}

TEMPLATE_TEST_CASE("cuda algorithms: critic heads (cuBLAS and the pattern path)", "[cuda][algorithms][critic_heads]",
                   float, double) {
  // cuBLAS accumulates in T (float: FP32 FMA, no TF32 with the default handle), the CPU in double:
  // float within 1e-4 relative to max(1, |x|) for sums of up to 3000 terms of magnitude <= 1.
  using T = TestType;
  static_assert(detail::has_gemm<cuda_backend, T>, "the CUDA backend offers the dense pattern (cuBLAS)");
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-11;
  cuda_backend gpu;
  cpu_backend cpu;
  const int K = 2, N = 3000, D = 256;
  for (bool shared : {false, true})
    for (bool interleaved : {false, true}) {  // interleaved hidden states: the pattern path on the GPU
      CAPTURE(shared, interleaved);
      std::mt19937_64 rng(shared ? 31 : 32);
      const index_t inner = interleaved ? 2 : 1, trunks = shared ? 1 : K;
      const auto h = as<T>(random_values(rng, static_cast<std::size_t>(trunks) * N * D * inner));
      const auto w = as<T>(random_values(rng, static_cast<std::size_t>(K) * D));
      const auto c = as<T>(random_values(rng, K));
      const auto g = as<T>(random_values(rng, static_cast<std::size_t>(K) * N));
      auto dh_ = upload(gpu, h), dw_ = upload(gpu, w), dc_ = upload(gpu, c), dg_ = upload(gpu, g);
      auto hv = [&](const T* p) {
        return view<const T, 3>::strided(p, {K, N, D}, {shared ? 0 : N * D * inner, D * inner, inner});
      };
      auto out_h = [&](T* p) { return view<T, 3>::strided(p, {K, N, D}, {shared ? 0 : N * D * inner, D * inner, inner}); };
      std::vector<T> v(static_cast<std::size_t>(K) * N), gw(static_cast<std::size_t>(K) * D), gc(K), gh(h.size());
      critic_heads_forward(cpu, hv(h.data()), view<const T, 2>(w.data(), K, D), seq_view<const T>(c.data(), K),
                           view<T, 2>(v.data(), K, N));
      critic_heads_backward(cpu, hv(h.data()), view<const T, 2>(w.data(), K, D), view<const T, 2>(g.data(), K, N),
                            critic_head_gradients<T>{{gw.data(), K, D}, {gc.data(), K}, out_h(gh.data())});
      auto dv = gpu.allocate<T>(K * N);
      auto dgw = gpu.allocate<T>(K * D);
      auto dgc = gpu.allocate<T>(K);
      auto dgh = upload(gpu, std::vector<T>(h.size(), T(0)));
      critic_heads_forward(gpu, hv(dh_.data()), view<const T, 2>(dw_.data(), K, D), seq_view<const T>(dc_.data(), K),
                           view<T, 2>(dv.data(), K, N));
      critic_heads_backward(gpu, hv(dh_.data()), view<const T, 2>(dw_.data(), K, D), view<const T, 2>(dg_.data(), K, N),
                            critic_head_gradients<T>{{dgw.data(), K, D}, {dgc.data(), K}, out_h(dgh.data())});
      require_close(download(gpu, dv), v, tol);
      require_close(download(gpu, dgw), gw, tol);
      require_close(download(gpu, dgc), gc, tol);
      require_close(download(gpu, dgh), gh, tol);
    }
  // bfloat16 hidden states (read exactly; the pattern path on every backend: H1 a row reduce).
  {
    std::mt19937_64 rng(33);
    const auto wide = random_values(rng, static_cast<std::size_t>(K) * N * D);
    std::vector<bfloat16> h16(wide.size());
    for (std::size_t i = 0; i < wide.size(); ++i) h16[i] = bfloat16::from_float(static_cast<float>(wide[i]));
    const auto w = as<T>(random_values(rng, static_cast<std::size_t>(K) * D));
    const auto g = as<T>(random_values(rng, static_cast<std::size_t>(K) * N));
    auto dh16 = upload(gpu, h16);
    auto dw_ = upload(gpu, w), dg_ = upload(gpu, g);
    std::vector<T> v(static_cast<std::size_t>(K) * N), gw(static_cast<std::size_t>(K) * D), gh(h16.size());
    critic_heads_forward(cpu, view<const bfloat16, 3>(h16.data(), K, N, D), view<const T, 2>(w.data(), K, D), {},
                         view<T, 2>(v.data(), K, N));
    critic_heads_backward(cpu, view<const bfloat16, 3>(h16.data(), K, N, D), view<const T, 2>(w.data(), K, D),
                          view<const T, 2>(g.data(), K, N),
                          critic_head_gradients<T>{{gw.data(), K, D}, {}, {gh.data(), K, N, D}});
    auto dv = gpu.allocate<T>(K * N);
    auto dgw = gpu.allocate<T>(K * D);
    auto dgh = gpu.allocate<T>(K * N * D);
    critic_heads_forward(gpu, view<const bfloat16, 3>(dh16.data(), K, N, D), view<const T, 2>(dw_.data(), K, D), {},
                         view<T, 2>(dv.data(), K, N));
    critic_heads_backward(gpu, view<const bfloat16, 3>(dh16.data(), K, N, D), view<const T, 2>(dw_.data(), K, D),
                          view<const T, 2>(dg_.data(), K, N),
                          critic_head_gradients<T>{{dgw.data(), K, D}, {}, {dgh.data(), K, N, D}});
    require_close(download(gpu, dv), v, std::is_same_v<T, float> ? 2e-6 : 1e-12);  // both accumulate in double
    require_close(download(gpu, dgw), gw, std::is_same_v<T, float> ? 2e-6 : 1e-12);
    require_close(download(gpu, dgh), gh, 0.0);  // per element, one product
  }
}

TEST_CASE("cuda backend: errors name the failing call; host pointers are rejected", "[cuda][errors]") {
  cuda_backend gpu;
  std::vector<double> host(4);
  REQUIRE_THROWS_AS(check_device_pointer(host.data(), gpu.device(), "test", "x"), asyppo::error);
  auto d = gpu.allocate<double>(4);
  REQUIRE_NOTHROW(check_device_pointer(d.data(), gpu.device(), "test", "x"));
  // An entry point given a host view rejects it by name before any launch, leaving the device output alone.
  {
    const int B = 2, Tn = 2;
    std::vector<double> hx = {1, 2, 3, 4};
    std::vector<u8> hm = {1, 1, 1, 0};
    auto dm = upload(gpu, hm);
    auto dx = upload(gpu, hx);
    auto dout = upload(gpu, std::vector<double>{-7, -7, -7, -7});
    try {
      masked_whiten(gpu, token_view<const double>(hx.data(), B, Tn), mask_view(dm.data(), B, Tn), token_view<double>(dout.data(), B, Tn));
      FAIL("expected asyppo::error");
    } catch (const asyppo::error& e) {
      REQUIRE(e.argument() == "x");
      REQUIRE(std::string(e.what()).find("host pointer") != std::string::npos);
    }
    std::vector<double> back(4);
    gpu.copy_to_host(dout.data(), 4, back.data());
    REQUIRE(back == std::vector<double>{-7, -7, -7, -7});
    REQUIRE_NOTHROW(masked_whiten(gpu, token_view<const double>(dx.data(), B, Tn), mask_view(dm.data(), B, Tn),
                                  token_view<double>(dout.data(), B, Tn)));
  }
  try {
    (void)gpu.allocate<double>(index_t(1) << 50);  // 8 PiB: cudaMallocAsync fails
    FAIL("expected asyppo::error");
  } catch (const asyppo::error& e) {
    REQUIRE(std::string(e.what()).find("cudaMallocAsync") != std::string::npos);
  }
  // A workspace serves allocations in LIFO order and falls back when full.
  auto ws_mem = gpu.allocate<unsigned char>(1 << 20);
  cuda_workspace ws{ws_mem.data(), 1 << 20};
  const cuda_backend wsb(gpu.stream(), gpu.device(), &ws);
  {
    auto a = wsb.allocate<double>(1000);
    auto b = wsb.allocate<double>(1000);
    REQUIRE(ws.used >= 16000);
    auto c = wsb.allocate<double>(1 << 20);  // does not fit: cudaMallocAsync
    REQUIRE(ws.fallbacks == 1);
  }
  REQUIRE(ws.used == 0);
  gpu.synchronize();
}

namespace {
/// The work f() queues on `stream`, captured into a graph (global capture mode); on an exception the
/// capture is ended (the stream stays usable) and the exception passed on.
template <class F>
cudaGraph_t capture_graph(cudaStream_t stream, F&& f) {
  cudaGraph_t graph = nullptr;
  ASYPPO_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  try {
    f();
  } catch (...) {
    cudaGraph_t broken = nullptr;
    cudaStreamEndCapture(stream, &broken);
    if (broken) cudaGraphDestroy(broken);
    throw;
  }
  ASYPPO_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  return graph;
}
}  // namespace

// ---- CUDA graph: the whole AsyPPO step captured once and replayed ---------------------------------
// The issue's point of the device-result variants: heads forward, advantage_step_to (shard weights
// included), actor_objective_to, value_loss_to and heads backward (checks off; the normalisers are the
// caller's counts) queue work without a host round trip, so one stream capture holds them (their temporaries become the graph's allocation nodes: cudaMallocAsync/cudaFreeAsync;
// cuBLAS from CUDA 12.2 allocates its workspace stream-ordered too). Each replay must give the eager
// run's bits (the same kernels on the same data; integer atomics only).
TEST_CASE("cuda graph: one AsyPPO step captured and replayed gives the eager bits", "[cuda][graph]") {
  using T = float;
  const int K = 2, B = 24, Tn = 700, D = 96;
  const index_t N = static_cast<index_t>(B) * Tn;
  cudaStream_t stream = nullptr;
  ASYPPO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  {
    const cuda_backend gpu(stream);
    const auto h = make_batch<T>(21, K, B, Tn);
    const device_batch<T> d(gpu, h);
    std::mt19937_64 rng(5);
    const auto hid = upload(gpu, as<T>(random_values(rng, static_cast<std::size_t>(K) * N * D)));
    const auto w = upload(gpu, as<T>(random_values(rng, static_cast<std::size_t>(K) * D, -0.1, 0.1)));
    const auto c = upload(gpu, as<T>(random_values(rng, K, -0.1, 0.1)));
    double tokens = 0;
    for (u8 x : h.m) tokens += x != 0;
    const mask_view dm(d.m.data(), B, Tn);
    auto tv = [&](const device_buffer<T>& v) { return token_view<const T>(v.data(), B, Tn); };

    struct step_buffers {
      device_buffer<T> V, adv, ret, gl, gv, dw, dc, shard;
      device_buffer<u8> am, em;
      device_buffer<advantage_step_result> summary;
      device_buffer<actor_objective_result> actor;
      device_buffer<critic_loss_metrics> critic;
    };
    auto buffers = [&] {
      return step_buffers{gpu.allocate<T>(K * N), gpu.allocate<T>(N), gpu.allocate<T>(N), gpu.allocate<T>(N),
                          gpu.allocate<T>(K * N), gpu.allocate<T>(K * D), gpu.allocate<T>(K), gpu.allocate<T>(K * B),
                          gpu.allocate<u8>(N),
                          gpu.allocate<u8>(N), gpu.allocate<advantage_step_result>(1),
                          gpu.allocate<actor_objective_result>(1), gpu.allocate<critic_loss_metrics>(K)};
    };
    const view<const T, 3> hv(hid.data(), K, N, D);
    const view<const T, 2> wv(w.data(), K, D);
    // values_in_step: the heads write the values into a buffer allocated inside the step, which the
    // capture makes a graph allocation (unknown to cudaPointerGetAttributes until the graph runs): the
    // entry points' memory checks must let it pass during the capture. The values are copied to o.V.
    auto step = [&](step_buffers& o, bool values_in_step) {
      critic_heads_options ho;
      ho.check_finite = false;
      auto local = gpu.allocate<T>(values_in_step ? K * N : 0);
      T* vals = values_in_step ? local.data() : o.V.data();
      critic_heads_forward(gpu, hv, wv, seq_view<const T>(c.data(), K), view<T, 2>(vals, K, N), ho);
      const critic_view<const T> values(vals, K, B, Tn);
      advantage_config cfg;
      cfg.lambda_actor = 0.95;
      cfg.check_finite = false;
      advantage_step_to(gpu, advantage_inputs<T>{values, tv(d.r), dm, seq_view<const i64>(d.ids.data(), B)},
                        advantage_outputs<T>{{o.adv.data(), B, Tn}, {o.ret.data(), B, Tn}, {o.am.data(), B, Tn},
                                             {o.em.data(), B, Tn}, {o.shard.data(), K, B}},
                        o.summary.data(), nullptr, cfg);
      actor_objective_options ao;
      ao.check_finite = false;
      ao.aggregation = loss_aggregation::token_mean;
      ao.normalizer.tokens = tokens;
      ao.entropy_coef = 0.01;
      actor_objective_to(gpu,
                         actor_objective_inputs<T>{tv(d.logp), tv(d.old_logp), tv(o.adv), dm, mask_view(o.am.data(), B, Tn),
                                                   tv(d.ent), mask_view(o.em.data(), B, Tn), {}},
                         actor_objective_outputs<T>{{o.gl.data(), B, Tn}}, o.actor.data(), ao);
      value_loss_options vo;
      vo.check_finite = false;
      vo.aggregation = loss_aggregation::token_mean;
      vo.normalizers.assign(K, loss_normalizer{tokens, -1, -1});
      value_loss_to(gpu,
                    value_loss_inputs<T>{values, values, tv(o.ret), {}, dm, view<const T, 2>(o.shard.data(), K, B)},
                    critic_view<T>(o.gv.data(), K, B, Tn), o.critic.data(), vo);
      critic_heads_backward(gpu, hv, wv, view<const T, 2>(o.gv.data(), K, N),
                            critic_head_gradients<T>{{o.dw.data(), K, D}, {o.dc.data(), K}}, ho);
      if (values_in_step)
        ASYPPO_CUDA_CHECK(cudaMemcpyAsync(o.V.data(), vals, sizeof(T) * K * N, cudaMemcpyDeviceToDevice, stream));
    };
    auto eager = buffers();
    step(eager, false);  // also creates the cuBLAS handle and loads every kernel before the capture
    ASYPPO_CUDA_CHECK(cudaStreamSynchronize(stream));

    auto graphed = buffers();
    cudaGraph_t graph = capture_graph(stream, [&] { step(graphed, true); });
    cudaGraphExec_t exec = nullptr;
    ASYPPO_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 2; ++replay) {
      CAPTURE(replay);
      ASYPPO_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      ASYPPO_CUDA_CHECK(cudaStreamSynchronize(stream));
      CHECK(same_bytes(download(gpu, graphed.V), download(gpu, eager.V)));
      CHECK(same_bytes(download(gpu, graphed.adv), download(gpu, eager.adv)));
      CHECK(same_bytes(download(gpu, graphed.ret), download(gpu, eager.ret)));
      CHECK(same_bytes(download(gpu, graphed.am), download(gpu, eager.am)));
      CHECK(same_bytes(download(gpu, graphed.em), download(gpu, eager.em)));
      CHECK(same_bytes(download(gpu, graphed.gl), download(gpu, eager.gl)));
      CHECK(same_bytes(download(gpu, graphed.gv), download(gpu, eager.gv)));
      CHECK(same_bytes(download(gpu, graphed.dw), download(gpu, eager.dw)));
      CHECK(same_bytes(download(gpu, graphed.dc), download(gpu, eager.dc)));
      CHECK(same_bytes(download(gpu, graphed.shard), download(gpu, eager.shard)));
      CHECK(same_bytes(download(gpu, graphed.summary), download(gpu, eager.summary)));
      CHECK(same_bytes(download(gpu, graphed.actor), download(gpu, eager.actor)));
      CHECK(same_bytes(download(gpu, graphed.critic), download(gpu, eager.critic)));
    }
    const auto s = download(gpu, eager.summary)[0];
    CHECK(s.valid_tokens == static_cast<std::int64_t>(tokens));
    CHECK(s.adv_masked == static_cast<std::int64_t>(std::floor(0.2 * tokens)));
    ASYPPO_CUDA_CHECK(cudaGraphExecDestroy(exec));
    ASYPPO_CUDA_CHECK(cudaGraphDestroy(graph));
  }
  ASYPPO_CUDA_CHECK(cudaStreamDestroy(stream));
}

// ---- launches: kernels in a row that depend on each other; a kernel first launched in a capture ----
// On 9.0+ devices every kernel is launched programmatically (kernels.cuh, "launches"): the next kernel
// may start before the one before it has finished, and only its first statement's wait orders its
// memory accesses after that kernel's. A chain of for_each passes over two buffers in turns (each reads
// what the pass before wrote and overwrites what that pass read) must give the host's values, eagerly
// and as a graph whose kernel is launched for the first time inside the capture (the launch asks the
// kernel's attributes then: not a stream operation, allowed during a capture).
namespace {
struct halve_add_one {  // out = in / 2 + 1: exact in double for these values (no rounding, FMA or not)
  const double* in = nullptr;
  double* out = nullptr;
  ASYPPO_HD void operator()(index_t i) const { out[i] = in[i] * 0.5 + 1.0; }
};
struct halve_add_one_in_capture : halve_add_one {};  // a kernel of its own, launched only inside the capture
}  // namespace

TEST_CASE("cuda launches: dependent kernels in a row; a kernel first launched inside a capture", "[cuda][launch]") {
  const index_t n = index_t(1) << 22;  // 32 MB per buffer: each pass runs long enough for a race to show
  const int passes = 16;               // even: the result is back in the first buffer
  std::vector<double> start(static_cast<std::size_t>(n)), want(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < start.size(); ++i) {
    start[i] = static_cast<double>(i);
    double x = start[i];
    for (int p = 0; p < passes; ++p) x = x * 0.5 + 1.0;
    want[i] = x;
  }
  cudaStream_t stream = nullptr;
  ASYPPO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  {
    const cuda_backend gpu(stream);
    auto chain = [&](auto pass, device_buffer<double>& x, device_buffer<double>& y) {
      for (int p = 0; p < passes; ++p) {
        pass.in = p % 2 == 0 ? x.data() : y.data();
        pass.out = p % 2 == 0 ? y.data() : x.data();
        gpu.for_each(n, pass);
      }
    };
    auto x = upload(gpu, start);
    auto y = gpu.allocate<double>(n);
    chain(halve_add_one{}, x, y);
    CHECK(same_bytes(download(gpu, x), want));

    gpu.copy_from_host(start.data(), n, x.data());
    gpu.synchronize();
    cudaGraph_t graph = capture_graph(stream, [&] { chain(halve_add_one_in_capture{}, x, y); });
    cudaGraphExec_t exec = nullptr;
    ASYPPO_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 2; ++replay) {
      CAPTURE(replay);
      gpu.copy_from_host(start.data(), n, x.data());
      ASYPPO_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      CHECK(same_bytes(download(gpu, x), want));  // copy_to_host waits for the stream
    }
    ASYPPO_CUDA_CHECK(cudaGraphExecDestroy(exec));
    ASYPPO_CUDA_CHECK(cudaGraphDestroy(graph));
  }
  ASYPPO_CUDA_CHECK(cudaStreamDestroy(stream));
}

// ---- memory pool: the backend's temporaries from a pool that keeps its memory ---------------------
// The same kernels on the same data give the same bits whatever the allocator; what the pool changes
// is where the temporaries live: after a synchronisation the pool still holds them (release threshold:
// all), nothing is in use, trim returns them, and a capture of a call on the pool backend replays to
// the eager bits (cudaMallocFromPoolAsync under capture is a graph allocation node).
TEST_CASE("cuda memory pool: same bits, memory kept across synchronisation, capturable", "[cuda][pool]") {
  using T = float;
  const int K = 2, B = 16, Tn = 900;
  cudaStream_t stream = nullptr;
  ASYPPO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  {
    const cuda_backend gpu(stream);
    cuda_memory_pool pool(gpu.device());
    const cuda_backend pooled = gpu.with_memory_pool(pool);
    REQUIRE(pooled.memory_pool() == pool.get());
    REQUIRE(gpu.memory_pool() == nullptr);
    const auto h = make_batch<T>(31, K, B, Tn);
    const device_batch<T> d(gpu, h);
    const std::size_t n = static_cast<std::size_t>(B) * Tn;
    struct outputs {
      device_buffer<T> adv, ret;
      device_buffer<u8> am, em;
      device_buffer<advantage_step_result> summary;
    };
    auto make = [&] {
      return outputs{gpu.allocate<T>(n), gpu.allocate<T>(n), gpu.allocate<u8>(n), gpu.allocate<u8>(n),
                     gpu.allocate<advantage_step_result>(1)};
    };
    auto step = [&](const cuda_backend& be, outputs& o) {
      advantage_config cfg;
      cfg.critics = K;
      cfg.check_finite = false;
      advantage_step_to(be,
                        advantage_inputs<T>{critic_view<const T>(d.V.data(), K, B, Tn),
                                            token_view<const T>(d.r.data(), B, Tn), mask_view(d.m.data(), B, Tn),
                                            seq_view<const i64>(d.ids.data(), B)},
                        advantage_outputs<T>{{o.adv.data(), B, Tn}, {o.ret.data(), B, Tn}, {o.am.data(), B, Tn},
                                             {o.em.data(), B, Tn}},
                        o.summary.data(), nullptr, cfg);
    };
    auto same = [&](const outputs& a, const outputs& b) {
      CHECK(same_bytes(download(gpu, a.adv), download(gpu, b.adv)));
      CHECK(same_bytes(download(gpu, a.ret), download(gpu, b.ret)));
      CHECK(same_bytes(download(gpu, a.am), download(gpu, b.am)));
      CHECK(same_bytes(download(gpu, a.em), download(gpu, b.em)));
      CHECK(same_bytes(download(gpu, a.summary), download(gpu, b.summary)));
    };
    auto plain = make(), from_pool = make();
    step(gpu, plain);
    REQUIRE(pool.reserved_bytes() == 0);
    step(pooled, from_pool);
    ASYPPO_CUDA_CHECK(cudaStreamSynchronize(stream));
    same(plain, from_pool);
    const std::uint64_t kept = pool.reserved_bytes();
    CHECK(kept > 0);                   // the temporaries' memory is still the pool's ...
    CHECK(pool.used_bytes() == 0);     // ... and none of it is in use
    step(pooled, from_pool);           // served from the kept memory
    ASYPPO_CUDA_CHECK(cudaStreamSynchronize(stream));
    CHECK(pool.reserved_bytes() == kept);
    same(plain, from_pool);

    auto graphed = make();
    cudaGraph_t graph = capture_graph(stream, [&] { step(pooled, graphed); });
    cudaGraphExec_t exec = nullptr;
    ASYPPO_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    ASYPPO_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    ASYPPO_CUDA_CHECK(cudaStreamSynchronize(stream));
    same(plain, graphed);
    ASYPPO_CUDA_CHECK(cudaGraphExecDestroy(exec));
    ASYPPO_CUDA_CHECK(cudaGraphDestroy(graph));

    pool.trim();
    CHECK(pool.reserved_bytes() < kept);
    cuda_memory_pool moved(std::move(pool));  // the handle moves; the old object owns nothing
    CHECK(pool.get() == nullptr);
    CHECK(moved.get() == pooled.memory_pool());
  }
  ASYPPO_CUDA_CHECK(cudaStreamDestroy(stream));
}
