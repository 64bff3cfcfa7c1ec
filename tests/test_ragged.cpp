// Ragged rows and span folds (backend/patterns.hpp, core/row_span.hpp).
//
// Patterns: every ragged overload (a column range per row) of the CPU backend (1..4 threads) and of
// the re-associating test backend against sequential loops written here: exactly the positions in
// range are visited, non-commutative exact reductions and scans give the sequential result, and
// scans start from initial() at the range's first column (forward) or last (reverse).
// Spans: a reducer's add_span is what the CPU backend folds; the finiteness counter's vectorised
// span equals its per-element add on random NaN/Inf placements.
// Algorithms: row ends are exact (holes, empty rows, a valid last column); the padding after the
// last valid token of every output is written (outputs start as garbage) with exactly what the
// full-row computation writes there (0, or verl's raw values); contiguous and strided inputs (the
// span path and the per-element path) give bit-identical outputs.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <type_traits>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "exact_ops.hpp"
#include "pattern_checks.hpp"
#include "round_trip_backend.hpp"
#include "strided_copy.hpp"
#include "tiled_backend.hpp"

using namespace asyppo;

namespace {

using namespace asyppo_test;

// The product of mat_reducer2 through add_span (counts the span calls: the CPU backend must use it).
struct mat_span_reducer : mat_reducer2 {
  std::int64_t* spans;
  void add_span(mat& acc, index_t b, index_t t0, index_t t1) const {
    ++*spans;
    for (index_t t = t0; t < t1; ++t) add(acc, b, t);
  }
};

}  // namespace

TEST_CASE("ragged patterns visit exactly each row's range (cpu_backend, 1..4 threads)", "[ragged]") {
  for (auto shape : {std::pair<index_t, index_t>{37, 300}, {1, 1}, {200, 40000}, {3, 5}})
    for (int threads = 1; threads <= 4; ++threads)
      check_ragged_patterns(cpu_backend(threads), shape.first, shape.second, 17 + static_cast<std::uint64_t>(threads));
}

TEST_CASE("flat patterns against sequential loops (cpu_backend 1..3 threads, re-associating backend)", "[patterns]") {
  for (index_t n : {index_t(1), index_t(7), index_t(1000), index_t(70000)}) {
    for (int threads = 1; threads <= 3; ++threads) check_flat_patterns(cpu_backend(threads), n, 5 + static_cast<std::uint64_t>(n));
    check_flat_patterns(asyppo_test::tiled_backend(static_cast<std::uint64_t>(n)), n, 9);
  }
}

TEST_CASE("ragged patterns on the re-associating backend (random tiles, random merge trees)", "[ragged]") {
  for (std::uint64_t seed = 1; seed <= 3; ++seed) {
    check_ragged_patterns(asyppo_test::tiled_backend(seed), 23, 90, seed);
    check_ragged_patterns(asyppo_test::tiled_backend(seed, 3), 5, 1000, seed + 10);
  }
}

TEST_CASE("the CPU backend folds a reducer through its add_span, with the same result", "[ragged]") {
  std::mt19937_64 rng(5);
  const index_t rows = 40, cols = 70000;  // rows longer than a reduce tile: several spans per row
  const ranges rg = random_ranges(rng, rows, cols);
  for (int threads = 1; threads <= 3; ++threads) {
    const cpu_backend be(threads);
    std::int64_t spans = 0;
    const mat want = be.reduce(rows, cols, mat_reducer2{cols}, rg);
    REQUIRE(be.reduce(rows, cols, mat_span_reducer{{cols}, &spans}, rg) == want);
    REQUIRE(spans > 0);
    std::vector<mat> a(static_cast<std::size_t>(rows)), c(static_cast<std::size_t>(rows));
    be.row_reduce(rows, cols, mat_reducer2{cols}, [&](index_t b, const mat& m) { a[static_cast<std::size_t>(b)] = m; }, rg);
    be.row_reduce(rows, cols, mat_span_reducer{{cols}, &spans}, [&](index_t b, const mat& m) { c[static_cast<std::size_t>(b)] = m; }, rg);
    REQUIRE(a == c);
  }
}

TEMPLATE_TEST_CASE("finiteness count: the vectorised span equals the per-element count", "[ragged]", float, double) {
  using T = TestType;
  std::mt19937_64 rng(11);
  const index_t K = 2, B = 9, Tn = 1500;
  std::vector<T> v(static_cast<std::size_t>(K * B * Tn)), r(static_cast<std::size_t>(B * Tn));
  std::vector<std::uint8_t> m(r.size());
  const T specials[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                        -std::numeric_limits<T>::infinity(), std::numeric_limits<T>::max(),
                        std::numeric_limits<T>::denorm_min(), T(-0.0)};
  for (auto& x : v) x = rng() % 50 == 0 ? specials[rng() % 6] : T(0.5);
  for (auto& x : r) x = rng() % 70 == 0 ? specials[rng() % 6] : T(-1);
  for (auto& x : m) x = static_cast<std::uint8_t>(rng() % 3 == 0 ? 0 : 1 + rng() % 200);
  const detail::count_nonfinite_tokens<T, 1, 1> counter{{critic_view<const T>(v.data(), K, B, Tn)},
                                                        {token_view<const T>(r.data(), B, Tn)},
                                                        mask_view(m.data(), B, Tn)};
  std::int64_t valid = 0, bad = 0;
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < Tn; ++t) {
      if (!m[static_cast<std::size_t>(b * Tn + t)]) continue;
      ++valid;
      bool ok = std::isfinite(static_cast<double>(r[static_cast<std::size_t>(b * Tn + t)]));
      for (index_t k = 0; k < K; ++k) ok = ok && std::isfinite(static_cast<double>(v[static_cast<std::size_t>((k * B + b) * Tn + t)]));
      bad += ok ? 0 : 1;
    }
  REQUIRE(bad > 0);
  for (index_t t0 : {index_t(0), index_t(1), index_t(513)})
    for (index_t t1 : {Tn, Tn - 1, index_t(1024)}) {
      detail::token_tally a{0, 0}, c{0, 0};
      for (index_t b = 0; b < B; ++b) {
        for (index_t t = t0; t < t1; ++t) counter.add(a, b, t);
        counter.add_span(c, b, t0, t1);
      }
      REQUIRE(a.valid == c.valid);
      REQUIRE(a.nonfinite == c.nonfinite);
    }
  const auto all = cpu_backend(2).reduce(B, Tn, counter);
  REQUIRE(all.valid == valid);
  REQUIRE(all.nonfinite == bad);
}

TEST_CASE("padding writes: one functor zeroes every present output, per element (a device) and per span (the CPU)",
          "[ragged]") {
  // Three outputs of different element types (one strided, one absent in the second round), filled
  // with garbage; the functor is applied to the columns [lo, hi) of each row by hand, element by
  // element or through its span. Exactly those positions of the present outputs become 0.
  std::mt19937_64 rng(11);
  const index_t B = 7, Tn = 300;
  for (int round = 0; round < 2; ++round)
    for (bool by_span : {false, true}) {
      std::vector<float> f(static_cast<std::size_t>(B * Tn), 5.0f);
      std::vector<std::uint8_t> m(static_cast<std::size_t>(B * Tn), 9);
      std::vector<double> d(static_cast<std::size_t>(B * Tn * 2), 7.0);  // stride 2
      const view<float, 2> fv(f.data(), B, Tn);
      const view<std::uint8_t, 2> mv(round == 0 ? m.data() : nullptr, B, Tn);
      view<double, 2> dv(d.data(), B, Tn);
      dv.stride[0] = 2 * Tn, dv.stride[1] = 2;
      const auto zero = detail::zero_fill_of(fv, mv, dv);
      std::vector<index_t> lo(static_cast<std::size_t>(B)), hi(static_cast<std::size_t>(B));
      for (index_t b = 0; b < B; ++b) {
        lo[static_cast<std::size_t>(b)] = static_cast<index_t>(rng() % static_cast<u64>(Tn + 1));
        hi[static_cast<std::size_t>(b)] = lo[static_cast<std::size_t>(b)] +
                                          static_cast<index_t>(rng() % static_cast<u64>(Tn + 1 - lo[static_cast<std::size_t>(b)]));
        if (b == 0) lo[0] = 0, hi[0] = Tn;  // a whole row
        if (by_span)
          zero.span(b, lo[static_cast<std::size_t>(b)], hi[static_cast<std::size_t>(b)]);
        else
          for (index_t t = lo[static_cast<std::size_t>(b)]; t < hi[static_cast<std::size_t>(b)]; ++t) zero(b, t);
      }
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < Tn; ++t) {
          const bool in = t >= lo[static_cast<std::size_t>(b)] && t < hi[static_cast<std::size_t>(b)];
          const std::size_t i = static_cast<std::size_t>(b * Tn + t);
          INFO("round " << round << (by_span ? " span" : " per element") << " b " << b << " t " << t);
          REQUIRE(f[i] == (in ? 0.0f : 5.0f));
          REQUIRE(m[i] == (in && round == 0 ? 0 : 9));
          REQUIRE(d[2 * i] == (in ? 0.0 : 7.0));
          REQUIRE(d[2 * i + 1] == 7.0);  // between the strided elements: untouched
        }
    }
}

namespace {
// The fused-padding helpers' pieces: a range read from two arrays, a reducer and a scan sink that mark
// what they visit, and a fill that marks the columns after the range (or says it writes nothing).
struct range_of {
  const index_t *lo, *hi;
  void operator()(index_t b, index_t& l, index_t& h) const { l = lo[b], h = hi[b]; }
};
struct marking_reducer : mat_reducer2 {
  std::uint8_t* seen;
  void add(mat& acc, index_t b, index_t t) const {
    ++seen[b * cols + t];
    mat_reducer2::add(acc, b, t);
  }
};
struct marking_sink {
  index_t cols;
  u64* out;
  void operator()(index_t b, index_t t, u64 x) const { out[b * cols + t] = x; }
};
struct after_mark {
  index_t cols;
  std::uint8_t* seen;
  bool none;
  void operator()(index_t b, index_t t) const { seen[b * cols + t] += 16; }
  bool empty() const { return none; }
};

/// reduce_then_fill, reduce_to_then_fill and row_scan_then_fill on backend be: the pattern's result (the
/// plain pattern's bits), every position in range visited once, every column after it filled once, the
/// columns before it untouched; a fill that says it is empty writes nothing.
template <class Backend>
void check_fused_padding(const Backend& be, index_t rows, index_t cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<index_t> lo(static_cast<std::size_t>(rows)), hi(lo.size());
  for (std::size_t b = 0; b < lo.size(); ++b) {
    std::uniform_int_distribution<index_t> at(0, cols);
    index_t x = at(rng), y = at(rng);
    if (b % 5 == 2) x = y = cols;  // nothing visited, nothing after it
    if (b % 5 == 3) x = 0, y = cols;
    lo[b] = std::min(x, y), hi[b] = std::max(x, y);
  }
  const range_of range{lo.data(), hi.data()};
  const std::size_t n = static_cast<std::size_t>(rows * cols);
  const auto expect = [&](const std::vector<std::uint8_t>& seen, bool filled) {
    for (index_t b = 0; b < rows; ++b)
      for (index_t t = 0; t < cols; ++t) {
        const std::size_t i = static_cast<std::size_t>(b * cols + t);
        const int want = (t >= lo[static_cast<std::size_t>(b)] && t < hi[static_cast<std::size_t>(b)] ? 1 : 0) +
                         (filled && t >= hi[static_cast<std::size_t>(b)] ? 16 : 0);
        REQUIRE(int(seen[i]) == want);
      }
  };
  const mat plain = be.reduce(rows, cols, mat_reducer2{cols}, range);
  for (bool none : {false, true}) {
    std::vector<std::uint8_t> seen(n, 0);
    const mat got = asyppo::detail::reduce_then_fill(be, rows, cols, marking_reducer{{cols}, seen.data()}, range,
                                                     after_mark{cols, seen.data(), none});
    REQUIRE(got == plain);
    expect(seen, !none);
    std::fill(seen.begin(), seen.end(), std::uint8_t(0));
    mat to{};
    asyppo::detail::reduce_to_then_fill(be, rows, cols, marking_reducer{{cols}, seen.data()}, range,
                                        [&](const mat& v) { to = v; }, after_mark{cols, seen.data(), none});
    REQUIRE(to == plain);
    expect(seen, !none);
  }
  for (auto dir : {scan_direction::forward, scan_direction::reverse}) {
    std::vector<u64> want(n, 0), got(n, 0);
    be.row_scan(dir, rows, cols, affine_elem{cols}, affine_op{}, marking_sink{cols, want.data()}, range);
    std::vector<std::uint8_t> seen(n, 0);
    asyppo::detail::row_scan_then_fill(be, dir, rows, cols, affine_elem{cols}, affine_op{},
                                       marking_sink{cols, got.data()}, range, after_mark{cols, seen.data(), false});
    REQUIRE(got == want);
    for (index_t b = 0; b < rows; ++b)  // the scan marks nothing: 0 up to the range's end, 16 after it
      for (index_t t = 0; t < cols; ++t)
        REQUIRE(int(seen[static_cast<std::size_t>(b * cols + t)]) == (t >= hi[static_cast<std::size_t>(b)] ? 16 : 0));
  }
}
}  // namespace

TEST_CASE("fused padding: the pattern, then the columns after each row's range (CPU, re-associating, device paths)",
          "[ragged]") {
  for (auto shape : {std::pair<index_t, index_t>{23, 300}, {1, 1}, {7, 1000}, {4, 0}}) {
    check_fused_padding(cpu_backend(2), shape.first, shape.second, 5);
    check_fused_padding(tiled_backend(9), shape.first, shape.second, 6);
    check_fused_padding(round_trip_backend(2), shape.first, shape.second, 7);
  }
}

TEST_CASE("row ends: last valid token + 1, 0 for empty rows, any stride", "[ragged]") {
  // Tn = 77: the last 8-byte word of a row is partial; 80: whole words; the contiguous copy's rows are
  // aligned words only when Tn is a multiple of 8 (else the device form reads byte by byte).
  for (const index_t Tn : {index_t(77), index_t(80), index_t(8), index_t(3)}) {
    INFO("Tn " << Tn);
    std::mt19937_64 rng(3);
    const index_t B = 50;
    std::vector<std::uint8_t> m(static_cast<std::size_t>(B * Tn * 2), 0);  // every other column: stride 2
    std::vector<index_t> want(static_cast<std::size_t>(B), 0);
    for (index_t b = 0; b < B; ++b) {
      const index_t len = b == 0 ? 0 : (b == 1 ? Tn : static_cast<index_t>(rng() % static_cast<u64>(Tn + 1)));
      for (index_t t = 0; t < len; ++t)  // any nonzero byte is valid (the word form finds its highest byte)
        m[static_cast<std::size_t>(b * Tn * 2 + 2 * t)] = rng() % 4 ? static_cast<std::uint8_t>(1 + rng() % 255) : 0;
      for (index_t t = 0; t < Tn; ++t)
        if (m[static_cast<std::size_t>(b * Tn * 2 + 2 * t)]) want[static_cast<std::size_t>(b)] = t + 1;
    }
    const cpu_backend be(2);
    const auto strided = detail::valid_row_ends(be, mask_view::strided(m.data(), {B, Tn}, {2 * Tn, 2}));
    std::vector<std::uint8_t> packed(static_cast<std::size_t>(B * Tn));
    for (std::size_t i = 0; i < packed.size(); ++i) packed[i] = m[2 * i];
    const auto contiguous = detail::valid_row_ends(be, mask_view(packed.data(), B, Tn));
    // The device form, a row reduce (round_trip_backend takes the device path), also re-associated.
    const round_trip_backend dev(2);
    const auto dev_strided = detail::valid_row_ends(dev, mask_view::strided(m.data(), {B, Tn}, {2 * Tn, 2}));
    const auto dev_contiguous = detail::valid_row_ends(dev, mask_view(packed.data(), B, Tn));
    std::vector<index_t> tiled(static_cast<std::size_t>(B), -1);
    tiled_backend(7, 5).row_reduce(B, Tn, detail::last_valid_max{mask_view(packed.data(), B, Tn)},
                                   detail::store_row<index_t>{tiled.data()});
    // The word form on rows padded to whole aligned words (a partial last word when Tn % 8 != 0).
    const index_t padded = (Tn + 7) / 8 * 8;
    std::vector<std::uint64_t> words(static_cast<std::size_t>(B * padded / 8), ~std::uint64_t(0));
    auto* bytes = reinterpret_cast<std::uint8_t*>(words.data());
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < Tn; ++t) bytes[b * padded + t] = packed[static_cast<std::size_t>(b * Tn + t)];
    const mask_view word_mask = mask_view::strided(bytes, {B, Tn}, {padded, 1});
    REQUIRE(detail::word_rows(word_mask));
    REQUIRE(detail::word_rows(mask_view(packed.data(), B, Tn)) == (Tn % 8 == 0 && reinterpret_cast<std::uintptr_t>(packed.data()) % 8 == 0));
    std::vector<index_t> tiled_words(static_cast<std::size_t>(B), -1);
    tiled_backend(9, 3).row_reduce(B, padded / 8, detail::last_valid_word_max{word_mask},
                                   detail::store_row<index_t>{tiled_words.data()});
    const auto dev_words = detail::valid_row_ends(dev, word_mask);
    for (index_t b = 0; b < B; ++b) {
      const index_t w = want[static_cast<std::size_t>(b)];
      REQUIRE(strided[b] == w);
      REQUIRE(contiguous[b] == w);
      REQUIRE(dev_strided.data()[b] == w);
      REQUIRE(dev_contiguous.data()[b] == w);
      REQUIRE(tiled[static_cast<std::size_t>(b)] == w);
      REQUIRE(tiled_words[static_cast<std::size_t>(b)] == w);
      REQUIRE(dev_words.data()[b] == w);
    }
  }
}

TEST_CASE("row ends with counts: each row's valid tokens from the same pass", "[ragged]") {
  // valid_row_ends' optional counts: the CPU's (a count over each row's head), a device's (the byte and
  // the word forms of the ends' row reduce, counting too: last_valid_counted), and those reducers
  // re-associated; against a plain count of the nonzero bytes (any value 1..255 is valid; the word form
  // folds each byte's bits into its lowest). Strided, contiguous, and padded to aligned words.
  for (const index_t Tn : {index_t(77), index_t(80), index_t(8), index_t(3), index_t(0)}) {
    INFO("Tn " << Tn);
    std::mt19937_64 rng(11 + static_cast<u64>(Tn));
    const index_t B = 40;
    const index_t padded = (Tn + 7) / 8 * 8;
    std::vector<std::uint64_t> words(static_cast<std::size_t>(B * padded / 8 + 1), ~std::uint64_t(0));
    auto* bytes = reinterpret_cast<std::uint8_t*>(words.data());
    std::vector<std::uint8_t> packed(static_cast<std::size_t>(B * Tn + 1)), strided(static_cast<std::size_t>(2 * B * Tn + 1));
    std::vector<index_t> want(static_cast<std::size_t>(B), 0);
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < Tn; ++t) {
        const int kind = static_cast<int>(rng() % 4);  // runs of zeros, ones, any byte, single high bits
        const std::uint8_t v = kind == 0 ? 0 : kind == 1 ? 1 : kind == 2 ? static_cast<std::uint8_t>(rng() % 256)
                                                                         : static_cast<std::uint8_t>(1u << (rng() % 8));
        packed[static_cast<std::size_t>(b * Tn + t)] = v;
        strided[static_cast<std::size_t>(2 * (b * Tn + t))] = v;
        bytes[b * padded + t] = v;
        want[static_cast<std::size_t>(b)] += v != 0 ? 1 : 0;
      }
    const mask_view masks[] = {mask_view(packed.data(), B, Tn), mask_view::strided(strided.data(), {B, Tn}, {2 * Tn, 2}),
                               mask_view::strided(bytes, {B, Tn}, {padded, 1})};
    REQUIRE(detail::word_rows(masks[2]));
    for (const mask_view& m : masks) {
      std::vector<index_t> cpu_count(static_cast<std::size_t>(B), -1), dev_count(cpu_count), tiled_count(cpu_count);
      const auto cpu_ends = detail::valid_row_ends(cpu_backend(2), m, nullptr, cpu_count.data());
      const auto dev_ends = detail::valid_row_ends(round_trip_backend(2), m, nullptr, dev_count.data());
      std::vector<index_t> ends(static_cast<std::size_t>(B), -1);
      const detail::store_row_end_count sink{{ends.data(), nullptr}, tiled_count.data()};
      if (Tn > 0 && detail::word_rows(m))
        tiled_backend(5, 3).row_reduce(B, padded / 8, detail::last_valid_counted<detail::last_valid_word_max>{{m}}, sink);
      else if (Tn > 0)
        tiled_backend(5, 3).row_reduce(B, Tn, detail::last_valid_counted<detail::last_valid_max>{{m}}, sink);
      for (index_t b = 0; b < B; ++b) {
        INFO("row " << b);
        const index_t w = want[static_cast<std::size_t>(b)];
        CHECK(cpu_count[static_cast<std::size_t>(b)] == w);
        CHECK(dev_count[static_cast<std::size_t>(b)] == w);
        CHECK(dev_ends.data()[b] == cpu_ends.data()[b]);
        if (Tn > 0) {
          CHECK(tiled_count[static_cast<std::size_t>(b)] == w);
          CHECK(ends[static_cast<std::size_t>(b)] == cpu_ends.data()[b]);
        }
      }
    }
  }
}

namespace {

/// The CPU backend posing as a device (round_trip_backend) with the optional row schedule of
/// core/row_span.hpp: longest_first writes the rows by descending end (equal ends: lower row first) for
/// at most `limit` rows (any width), as a device backend does, and counts its calls.
struct scheduling_backend : round_trip_backend {
  index_t limit;
  std::shared_ptr<int> calls = std::make_shared<int>(0);
  explicit scheduling_backend(index_t row_limit) : round_trip_backend(2), limit(row_limit) {}
  bool longest_first(index_t rows, index_t, const index_t* ends, index_t* order) const {
    ++*calls;
    if (rows > limit) return false;
    std::vector<index_t> idx(static_cast<std::size_t>(rows));
    for (index_t b = 0; b < rows; ++b) idx[static_cast<std::size_t>(b)] = b;
    std::stable_sort(idx.begin(), idx.end(), [&](index_t a, index_t b) { return ends[a] > ends[b]; });
    std::copy(idx.begin(), idx.end(), order);
    return true;
  }
};
static_assert(detail::has_row_schedule<scheduling_backend>);
static_assert(!detail::has_row_schedule<cpu_backend> && !detail::has_row_schedule<round_trip_backend>);

}  // namespace

// The wiring of the row schedule: make_row_span asks a backend that has it for the order of the rows'
// ends and heads() hands that order to the per-row patterns; none when the backend declines (too many
// rows) or has no such pattern. (What the device kernels do with it: the GPU suite, "cuda row schedule"
// and every algorithm case, whose rows are then taken longest first.)
TEST_CASE("row schedule: make_row_span hands the backend's longest-first order to the row ranges", "[ragged]") {
  std::mt19937_64 rng(11);
  const index_t B = 40, Tn = 30;
  std::vector<std::uint8_t> m(static_cast<std::size_t>(B * Tn), 0);
  std::vector<index_t> len(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) {
    len[static_cast<std::size_t>(b)] = static_cast<index_t>(rng() % 6) * 5;  // 0..25: many equal ends
    for (index_t t = 0; t < len[static_cast<std::size_t>(b)]; ++t) m[static_cast<std::size_t>(b * Tn + t)] = 1;
  }
  const mask_view mask(m.data(), B, Tn);
  // The expected order by ranks: row b goes after every longer row and every equal one above it.
  std::vector<index_t> want(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) {
    index_t rank = 0;
    for (index_t c = 0; c < B; ++c) {
      const index_t lb = len[static_cast<std::size_t>(b)], lc = len[static_cast<std::size_t>(c)];
      rank += lc > lb || (lc == lb && c < b);
    }
    want[static_cast<std::size_t>(rank)] = b;
  }
  const scheduling_backend sched(B);
  const auto span = detail::make_row_span(sched, mask);
  REQUIRE(*sched.calls == 1);
  const row_heads heads = span.heads();
  REQUIRE(heads.order != nullptr);
  REQUIRE(std::vector<index_t>(heads.order, heads.order + B) == want);
  for (index_t b = 0; b < B; ++b) REQUIRE(heads.end[b] == len[static_cast<std::size_t>(b)]);

  const scheduling_backend declines(B - 1);  // more rows than it schedules: no order, ends as before
  const auto unscheduled = detail::make_row_span(declines, mask);
  REQUIRE(*declines.calls == 1);
  REQUIRE(unscheduled.heads().order == nullptr);
  for (index_t b = 0; b < B; ++b) REQUIRE(unscheduled.heads().end[b] == len[static_cast<std::size_t>(b)]);

  const round_trip_backend device_without(1);  // backends without the pattern
  const cpu_backend cpu(1);
  REQUIRE(detail::make_row_span(device_without, mask).heads().order == nullptr);
  REQUIRE(detail::make_row_span(cpu, mask).heads().order == nullptr);
}

namespace {

/// A device-posing backend whose new memory holds garbage (0xa5 bytes), so that what a pass must zero is
/// not zero by chance.
struct poisoning_backend : round_trip_backend {
  template <class T>
  host_buffer<T> allocate(index_t n) const {
    host_buffer<T> b(n);
    if (n > 0) std::memset(static_cast<void*>(b.data()), 0xa5, static_cast<std::size_t>(n) * sizeof(T));
    return b;
  }
};

}  // namespace

// The ticket of a span (core/row_span.hpp): on a device backend the pass that finds the ends zeroes it and
// heads() hands it to the per-row patterns (the CUDA backend's ragged reduce counts its blocks there and
// combines in the last one: the GPU suite's reduce and loss cases); none on host-memory backends, and none
// where no row or no column leaves a per-row reduce to use it.
TEST_CASE("row span: a device backend's span carries a zeroed ticket for its per-row reduces", "[ragged]") {
  const poisoning_backend dev;
  for (const bool words : {true, false}) {  // the 8-byte-word pass and the column pass
    const index_t B = 5, Tn = 24;
    std::vector<std::uint8_t> m(static_cast<std::size_t>(B * Tn + 1), 0);
    std::uint8_t* base = m.data() + (words ? 0 : 1);  // an odd address: no word rows
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < 3 * b; ++t) base[b * Tn + t] = 1;
    const mask_view mask(base, B, Tn);
    REQUIRE(detail::word_rows(mask) == (words && reinterpret_cast<std::uintptr_t>(base) % 8 == 0));
    const auto span = detail::make_row_span(dev, mask);
    const row_heads heads = span.heads();
    REQUIRE(heads.ticket != nullptr);
    CHECK(*heads.ticket == 0u);
    for (index_t b = 0; b < B; ++b) CHECK(heads.end[b] == 3 * b);
    CHECK(detail::make_row_span(cpu_backend(1), mask).heads().ticket == nullptr);
  }
  std::vector<std::uint8_t> none(8, 1);
  CHECK(detail::make_row_span(dev, mask_view(none.data(), 0, 8)).heads().ticket == nullptr);
  CHECK(detail::make_row_span(dev, mask_view(none.data(), 8, 0)).heads().ticket == nullptr);
}

namespace {

struct rollout {
  index_t K, B, Tn;
  std::vector<double> V, r, lp, olp, A;
  std::vector<std::uint8_t> m;
  std::vector<std::int64_t> ids;
};

// Right-padded rows of random length (some empty, some full), observation holes.
rollout make_rollout(std::uint64_t seed, index_t K, index_t B, index_t Tn) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1, 1);
  rollout d{K, B, Tn, {}, {}, {}, {}, {}, {}, {}};
  d.m.assign(static_cast<std::size_t>(B * Tn), 0);
  for (index_t b = 0; b < B; ++b) {
    const index_t len = b % 7 == 3 ? 0 : (b % 7 == 5 ? Tn : static_cast<index_t>(rng() % static_cast<u64>(Tn + 1)));
    for (index_t t = 0; t < len; ++t) d.m[static_cast<std::size_t>(b * Tn + t)] = rng() % 6 ? 1 : 0;
    d.ids.push_back(b / 4);
  }
  for (index_t i = 0; i < K * B * Tn; ++i) d.V.push_back(u(rng));
  for (index_t i = 0; i < B * Tn; ++i) {
    d.r.push_back(rng() % 9 == 0 ? u(rng) : 0.0);
    d.olp.push_back(-1.5 + u(rng));
    d.lp.push_back(d.olp.back() + 0.4 * u(rng));
    d.A.push_back(u(rng));
  }
  return d;
}

template <class T>
std::vector<T> as(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

}  // namespace

TEMPLATE_TEST_CASE("advantage step and GAE: padding written, contiguous == strided bit for bit", "[ragged]", float, double) {
  using T = TestType;
  const index_t K = 2, B = 23, Tn = 131;
  const rollout d = make_rollout(7, K, B, Tn);
  const std::vector<T> V = as<T>(d.V), r = as<T>(d.r);
  const std::vector<T> V2 = spread(V), r2 = spread(r);
  const std::vector<std::uint8_t> m2 = spread(d.m);
  const cpu_backend be(2);
  const index_t BT = B * Tn;

  for (int whiten = 0; whiten < 2; ++whiten) {
    advantage_config cfg;
    cfg.whiten_advantages = whiten == 1;
    // Contiguous inputs and outputs (the span paths) into garbage-filled outputs.
    std::vector<T> A(static_cast<std::size_t>(BT), T(9)), R(A), S(A);
    std::vector<std::uint8_t> am(static_cast<std::size_t>(BT), 5), em(am);
    const auto s1 = advantage_step(be, advantage_inputs<T>{{V.data(), K, B, Tn}, {r.data(), B, Tn}, {d.m.data(), B, Tn}, {d.ids.data(), B}},
                                   advantage_outputs<T>{{A.data(), B, Tn}, {R.data(), B, Tn}, {am.data(), B, Tn}, {em.data(), B, Tn}, {}, {S.data(), B, Tn}},
                                   cfg);
    // Strided (inner stride 2) inputs and outputs: the per-element paths.
    std::vector<T> A2(static_cast<std::size_t>(2 * BT), T(9)), R2(A2), S2(A2);
    std::vector<std::uint8_t> am2(static_cast<std::size_t>(2 * BT), 5), em2(am2);
    auto tv = [&](auto* p) { return view<std::remove_pointer_t<decltype(p)>, 2>::strided(p, {B, Tn}, {2 * Tn, 2}); };
    const auto s2 = advantage_step(
        be,
        advantage_inputs<T>{critic_view<const T>::strided(V2.data(), {K, B, Tn}, {2 * B * Tn, 2 * Tn, 2}), tv(r2.data()),
                            tv(m2.data()), {d.ids.data(), B}},
        advantage_outputs<T>{tv(A2.data()), tv(R2.data()), tv(am2.data()), tv(em2.data()), {}, tv(S2.data())}, cfg);
    REQUIRE(gather(A2) == A);
    REQUIRE(gather(R2) == R);
    REQUIRE(gather(S2) == S);
    REQUIRE(gather(am2) == am);
    REQUIRE(gather(em2) == em);
    REQUIRE(s1.adv_masked == s2.adv_masked);
    REQUIRE(s1.advantage_mean == s2.advantage_mean);
    REQUIRE(s1.explained_variance == s2.explained_variance);
    // Every invalid token (padding included) holds 0 in every output.
    for (index_t i = 0; i < BT; ++i)
      if (!d.m[static_cast<std::size_t>(i)]) {
        REQUIRE(A[static_cast<std::size_t>(i)] == T(0));
        REQUIRE(R[static_cast<std::size_t>(i)] == T(0));
        REQUIRE(S[static_cast<std::size_t>(i)] == T(0));
        REQUIRE(am[static_cast<std::size_t>(i)] == 0);
        REQUIRE(em[static_cast<std::size_t>(i)] == 0);
      }
  }

  // gae(): zero and raw padding. Raw padding after a row's last valid token is what the full scan
  // writes there: advantage 0 (nothing carried back yet), return = the value mean (skip) or 0 (step).
  for (auto sem : {gae_mask_semantics::skip, gae_mask_semantics::step})
    for (auto pad : {padding_mode::zero, padding_mode::raw}) {
      gae_options o;
      o.semantics = sem;
      o.padding = pad;
      o.gamma = 0.97;
      o.lambda_actor = 0.9;
      std::vector<T> A(static_cast<std::size_t>(BT), T(9)), R(A);
      gae(be, critic_view<const T>(V.data(), K, B, Tn), token_view<const T>(r.data(), B, Tn), mask_view(d.m.data(), B, Tn), o,
          gae_outputs<T>{{A.data(), B, Tn}, {R.data(), B, Tn}, {}});
      std::vector<T> A2(static_cast<std::size_t>(2 * BT), T(9)), R2(A2);
      gae(be, critic_view<const T>::strided(V2.data(), {K, B, Tn}, {2 * B * Tn, 2 * Tn, 2}),
          token_view<const T>::strided(r2.data(), {B, Tn}, {2 * Tn, 2}), mask_view::strided(m2.data(), {B, Tn}, {2 * Tn, 2}), o,
          gae_outputs<T>{token_view<T>::strided(A2.data(), {B, Tn}, {2 * Tn, 2}), token_view<T>::strided(R2.data(), {B, Tn}, {2 * Tn, 2}), {}});
      REQUIRE(gather(A2) == A);
      REQUIRE(gather(R2) == R);
      // Whitening in place with the same padding (the vectorised span vs the per-element kernel).
      whiten_options wo;
      wo.padding = pad;
      std::vector<T> W = A, W2 = A2;
      masked_whiten(be, token_view<const T>(W.data(), B, Tn), mask_view(d.m.data(), B, Tn), token_view<T>(W.data(), B, Tn), wo);
      masked_whiten(be, token_view<const T>::strided(W2.data(), {B, Tn}, {2 * Tn, 2}), mask_view::strided(m2.data(), {B, Tn}, {2 * Tn, 2}),
                    token_view<T>::strided(W2.data(), {B, Tn}, {2 * Tn, 2}), wo);
      REQUIRE(gather(W2) == W);
      for (index_t b = 0; b < B; ++b) {
        index_t end = 0;
        for (index_t t = 0; t < Tn; ++t)
          if (d.m[static_cast<std::size_t>(b * Tn + t)]) end = t + 1;
        for (index_t t = end; t < Tn; ++t) {
          const std::size_t i = static_cast<std::size_t>(b * Tn + t);
          const double mean = (static_cast<double>(V[i]) + static_cast<double>(V[static_cast<std::size_t>(BT) + i])) / 2;
          const bool raw_value = pad == padding_mode::raw && sem == gae_mask_semantics::skip;
          REQUIRE(A[i] == T(0));
          REQUIRE(R[i] == (raw_value ? static_cast<T>(mean) : T(0)));
        }
      }
    }
}

TEMPLATE_TEST_CASE("losses: padding gradients written, contiguous == strided bit for bit", "[ragged]", float, double) {
  using T = TestType;
  const index_t B = 19, Tn = 157;
  const rollout d = make_rollout(9, 1, B, Tn);
  const std::vector<T> lp = as<T>(d.lp), olp = as<T>(d.olp), A = as<T>(d.A);
  const std::vector<T> lp2 = spread(lp), olp2 = spread(olp), A2 = spread(A);
  const std::vector<std::uint8_t> m2 = spread(d.m);
  const index_t BT = B * Tn;
  auto st = [&](const T* p) { return token_view<const T>::strided(p, {B, Tn}, {2 * Tn, 2}); };
  for (int threads = 1; threads <= 2; ++threads) {
    const cpu_backend be(threads);
    std::vector<T> g(static_cast<std::size_t>(BT), T(9)), g2(static_cast<std::size_t>(2 * BT), T(9));
    const auto a = policy_loss(be, policy_loss_inputs<T>{{lp.data(), B, Tn}, {olp.data(), B, Tn}, {A.data(), B, Tn}, {d.m.data(), B, Tn}},
                               token_view<T>(g.data(), B, Tn));
    const auto c = policy_loss(be, policy_loss_inputs<T>{st(lp2.data()), st(olp2.data()), st(A2.data()), mask_view::strided(m2.data(), {B, Tn}, {2 * Tn, 2})},
                               token_view<T>::strided(g2.data(), {B, Tn}, {2 * Tn, 2}));
    REQUIRE(a.loss == c.loss);
    REQUIRE(gather(g2) == g);
    for (index_t i = 0; i < BT; ++i)
      if (!d.m[static_cast<std::size_t>(i)]) REQUIRE(g[static_cast<std::size_t>(i)] == T(0));
    // With I^A, dual clip and asymmetric clipping (the contiguous span reads the masks by pointer).
    std::vector<std::uint8_t> am(static_cast<std::size_t>(BT));
    for (index_t i = 0; i < BT; ++i) am[static_cast<std::size_t>(i)] = (i * 7919) % 5 != 0;
    const std::vector<std::uint8_t> am2 = spread(am);
    policy_loss_options po;
    po.clip_high = 0.28;
    po.dual_clip = 3.0;
    std::fill(g.begin(), g.end(), T(9));
    std::fill(g2.begin(), g2.end(), T(9));
    const auto a2 = policy_loss(be, policy_loss_inputs<T>{{lp.data(), B, Tn}, {olp.data(), B, Tn}, {A.data(), B, Tn}, {d.m.data(), B, Tn},
                                                          {am.data(), B, Tn}},
                                token_view<T>(g.data(), B, Tn), po);
    const auto c2 = policy_loss(be, policy_loss_inputs<T>{st(lp2.data()), st(olp2.data()), st(A2.data()),
                                                          mask_view::strided(m2.data(), {B, Tn}, {2 * Tn, 2}),
                                                          mask_view::strided(am2.data(), {B, Tn}, {2 * Tn, 2})},
                                token_view<T>::strided(g2.data(), {B, Tn}, {2 * Tn, 2}), po);
    REQUIRE(a2.loss == c2.loss);
    REQUIRE(a2.metrics.clipped_tokens() == c2.metrics.clipped_tokens());
    REQUIRE(a2.metrics.adv_masked_tokens == c2.metrics.adv_masked_tokens);
    REQUIRE(a2.metrics.adv_masked_tokens > 0);
    REQUIRE(gather(g2) == g);
    for (index_t i = 0; i < BT; ++i)
      if (!d.m[static_cast<std::size_t>(i)] || !am[static_cast<std::size_t>(i)]) REQUIRE(g[static_cast<std::size_t>(i)] == T(0));
    std::vector<T> gk(static_cast<std::size_t>(BT), T(9));
    const auto k = kl_loss(be, token_view<const T>(lp.data(), B, Tn), token_view<const T>(olp.data(), B, Tn), mask_view(d.m.data(), B, Tn),
                           token_view<T>(gk.data(), B, Tn));
    REQUIRE(std::isfinite(k.loss));
    for (index_t i = 0; i < BT; ++i)
      if (!d.m[static_cast<std::size_t>(i)]) REQUIRE(gk[static_cast<std::size_t>(i)] == T(0));
  }
}

TEMPLATE_TEST_CASE("value loss: contiguous (span) == strided (per element) bit for bit, shards, EV on and off",
                   "[ragged][value]", float, double) {
  using T = TestType;
  const index_t K = 2, B = 23, Tn = 131, BT = B * Tn;
  const rollout d = make_rollout(17, K, B, Tn);
  // New values near the old ones (V) so that both clip outcomes occur; targets r + A.
  std::vector<T> V = as<T>(d.V), Vo(V.size()), R(static_cast<std::size_t>(BT));
  for (std::size_t i = 0; i < V.size(); ++i) Vo[i] = static_cast<T>(d.V[i] + 0.3 * d.A[i % static_cast<std::size_t>(BT)]);
  for (std::size_t i = 0; i < R.size(); ++i) R[i] = static_cast<T>(d.r[i] + d.A[i]);
  std::vector<T> W(static_cast<std::size_t>(K * B));  // shards: critic k takes rows with b % 2 == k
  for (index_t k = 0; k < K; ++k)
    for (index_t b = 0; b < B; ++b) W[static_cast<std::size_t>(k * B + b)] = T(b % 2 == k ? 1 : 0);
  const std::vector<T> V2 = spread(V), Vo2 = spread(Vo), R2 = spread(R);
  const std::vector<std::uint8_t> m2 = spread(d.m);
  auto cst = [&](const T* p) { return critic_view<const T>::strided(p, {K, B, Tn}, {2 * BT, 2 * Tn, 2}); };
  for (bool ev : {true, false})
    for (int threads = 1; threads <= 2; ++threads) {
      const cpu_backend be(threads);
      value_loss_options o;
      o.clip = 0.2;
      o.explained_variance = ev;
      std::vector<T> g(static_cast<std::size_t>(K * BT), T(9)), g2(static_cast<std::size_t>(2 * K * BT), T(9));
      value_loss_inputs<T> in{critic_view<const T>(V.data(), K, B, Tn), critic_view<const T>(Vo.data(), K, B, Tn),
                              token_view<const T>(R.data(), B, Tn), {}, mask_view(d.m.data(), B, Tn),
                              view<const T, 2>(W.data(), K, B)};
      value_loss_inputs<T> in2{cst(V2.data()), cst(Vo2.data()), token_view<const T>::strided(R2.data(), {B, Tn}, {2 * Tn, 2}),
                               {}, mask_view::strided(m2.data(), {B, Tn}, {2 * Tn, 2}), view<const T, 2>(W.data(), K, B)};
      const auto a = value_loss(be, in, critic_view<T>(g.data(), K, B, Tn), o);
      const auto c = value_loss(be, in2, critic_view<T>::strided(g2.data(), {K, B, Tn}, {2 * BT, 2 * Tn, 2}), o);
      REQUIRE(a.loss == c.loss);
      REQUIRE(gather(g2) == g);
      std::int64_t clipped = 0;
      for (index_t k = 0; k < K; ++k) {
        const auto &x = a.critics[static_cast<std::size_t>(k)], &y = c.critics[static_cast<std::size_t>(k)];
        REQUIRE(x.loss == y.loss);
        REQUIRE(x.clipped_tokens == y.clipped_tokens);
        REQUIRE(x.squared_error_sum == y.squared_error_sum);
        REQUIRE(std::isnan(x.explained_variance) == !ev);
        if (ev) REQUIRE(x.explained_variance == y.explained_variance);
        clipped += x.clipped_tokens;
      }
      REQUIRE(clipped > 0);  // both clip outcomes exercised
      for (index_t k = 0; k < K; ++k)
        for (index_t b = 0; b < B; ++b)
          for (index_t t = 0; t < Tn; ++t)
            if (!d.m[static_cast<std::size_t>(b * Tn + t)] || b % 2 != k)
              REQUIRE(g[static_cast<std::size_t>(k * BT + b * Tn + t)] == T(0));  // off-shard, masked, padding
    }
}

TEST_CASE("value loss: explained_variance = false changes nothing but that metric", "[value]") {
  const index_t K = 2, B = 9, Tn = 64;
  const rollout d = make_rollout(21, K, B, Tn);
  std::vector<double> Vo(d.V.size()), R(d.r.size());
  for (std::size_t i = 0; i < Vo.size(); ++i) Vo[i] = d.V[i] + 0.5 * d.A[i % R.size()];
  for (std::size_t i = 0; i < R.size(); ++i) R[i] = d.A[i];
  value_loss_inputs<double> in{critic_view<const double>(d.V.data(), K, B, Tn), critic_view<const double>(Vo.data(), K, B, Tn),
                               token_view<const double>(R.data(), B, Tn), {}, mask_view(d.m.data(), B, Tn)};
  const cpu_backend be(1);
  value_loss_options on, off;
  off.explained_variance = false;
  std::vector<double> g1(d.V.size()), g2(d.V.size());
  const auto a = value_loss(be, in, critic_view<double>(g1.data(), K, B, Tn), on);
  const auto c = value_loss(be, in, critic_view<double>(g2.data(), K, B, Tn), off);
  REQUIRE(a.loss == c.loss);
  REQUIRE(g1 == g2);
  for (index_t k = 0; k < K; ++k) {
    REQUIRE(std::isfinite(a.critics[static_cast<std::size_t>(k)].explained_variance));
    REQUIRE(std::isnan(c.critics[static_cast<std::size_t>(k)].explained_variance));
    REQUIRE(a.critics[static_cast<std::size_t>(k)].mse == c.critics[static_cast<std::size_t>(k)].mse);
    REQUIRE(a.critics[static_cast<std::size_t>(k)].clip_fraction == c.critics[static_cast<std::size_t>(k)].clip_fraction);
  }
}

TEMPLATE_TEST_CASE("ensemble stats and uncertainty masks: padding written, contiguous == strided", "[ragged]", float, double) {
  using T = TestType;
  const index_t K = 3, B = 21, Tn = 97;
  const rollout d = make_rollout(13, K, B, Tn);
  const std::vector<T> V = as<T>(d.V), V2 = spread(V);
  const std::vector<std::uint8_t> m2 = spread(d.m);
  const index_t BT = B * Tn;
  const cpu_backend be(3);
  auto st = [&](auto* p) { return view<std::remove_pointer_t<decltype(p)>, 2>::strided(p, {B, Tn}, {2 * Tn, 2}); };
  std::vector<T> mean(static_cast<std::size_t>(BT), T(9)), sd(mean), lo(mean), hi(mean);
  std::vector<T> mean2(static_cast<std::size_t>(2 * BT), T(9)), sd2(mean2), lo2(mean2), hi2(mean2);
  ensemble_stats(be, critic_view<const T>(V.data(), K, B, Tn), mask_view(d.m.data(), B, Tn),
                 ensemble_outputs<T>{{mean.data(), B, Tn}, {sd.data(), B, Tn}, {lo.data(), B, Tn}, {hi.data(), B, Tn}});
  ensemble_stats(be, critic_view<const T>::strided(V2.data(), {K, B, Tn}, {2 * B * Tn, 2 * Tn, 2}), st(m2.data()),
                 ensemble_outputs<T>{st(mean2.data()), st(sd2.data()), st(lo2.data()), st(hi2.data())});
  REQUIRE(gather(mean2) == mean);
  REQUIRE(gather(sd2) == sd);
  REQUIRE(gather(lo2) == lo);
  REQUIRE(gather(hi2) == hi);
  std::vector<std::uint8_t> am(static_cast<std::size_t>(BT), 5), em(am), am2(static_cast<std::size_t>(2 * BT), 5), em2(am2);
  const auto c1 = uncertainty_masks(be, token_view<const T>(sd.data(), B, Tn), mask_view(d.m.data(), B, Tn),
                                    mask_out(am.data(), B, Tn), mask_out(em.data(), B, Tn));
  const std::vector<T> sdw = spread(sd);
  const auto c2 = uncertainty_masks(be, st(sdw.data()), st(m2.data()), st(am2.data()), st(em2.data()));
  REQUIRE(gather(am2) == am);
  REQUIRE(gather(em2) == em);
  REQUIRE(c1.adv_masked == c2.adv_masked);
  REQUIRE(c1.adv_masked > 0);
  for (index_t i = 0; i < BT; ++i)
    if (!d.m[static_cast<std::size_t>(i)]) {
      const std::size_t j = static_cast<std::size_t>(i);
      REQUIRE((mean[j] == T(0) && sd[j] == T(0) && lo[j] == T(0) && hi[j] == T(0)));
      REQUIRE((am[j] == 0 && em[j] == 0));
    }
}

TEMPLATE_TEST_CASE("GRPO broadcast: contiguous == strided, zeros at masked tokens", "[ragged]", float, double) {
  using T = TestType;
  const index_t B = 24, Tn = 75;
  const rollout d = make_rollout(17, 1, B, Tn);
  std::vector<T> scores;
  for (index_t b = 0; b < B; ++b) scores.push_back(static_cast<T>(d.A[static_cast<std::size_t>(b)]));
  const std::vector<std::uint8_t> m2 = spread(d.m);
  std::vector<T> A(static_cast<std::size_t>(B * Tn), T(9)), A2(static_cast<std::size_t>(2 * B * Tn), T(9));
  const cpu_backend be(2);
  grpo_advantages(be, seq_view<const T>(scores.data(), B), seq_view<const std::int64_t>(d.ids.data(), B),
                  mask_view(d.m.data(), B, Tn), outcome_outputs<T>{{A.data(), B, Tn}});
  grpo_advantages(be, seq_view<const T>(scores.data(), B), seq_view<const std::int64_t>(d.ids.data(), B),
                  mask_view::strided(m2.data(), {B, Tn}, {2 * Tn, 2}),
                  outcome_outputs<T>{token_view<T>::strided(A2.data(), {B, Tn}, {2 * Tn, 2})});
  REQUIRE(gather(A2) == A);
  std::size_t nonzero = 0;
  for (std::size_t i = 0; i < A.size(); ++i) {
    if (!d.m[i]) REQUIRE(A[i] == T(0));
    nonzero += A[i] != T(0) ? 1 : 0;
  }
  REQUIRE(nonzero > 0);
}
