// Tests of the exact order statistics of core/select.hpp (docs/algorithm.md S2, S4): radix_select (the
// host-driven selection: 16- and 8-bit digits, the collection finish) and radix_select_resident (the
// device path: 8-, 11- and 5-bit digits, each digit chosen by a row scan over the bins, the per-segment
// digit filter) against a plain reference that sorts each segment's values (tests/support/select_checks.hpp),
// on the CPU backend (1 and 2 threads), the CPU backend posing as a device (round_trip_backend) and the
// re-associating tiled backend; a worked example with hand-counted results; the digit filter's bits.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "round_trip_backend.hpp"
#include "select_checks.hpp"
#include "tiled_backend.hpp"

using namespace asyppo;
using namespace asyppo_select_checks;

namespace {

template <class T>
void check_all_backends(std::uint64_t seed) {
  for (bool interleaved : {false, true}) {
    const problem<T> p = make_problem<T>(seed, interleaved, seed % 5 == 0 ? 3000 : 300);
    INFO("seed " << seed << ", rows " << p.rows << ", cols " << p.cols << ", segments " << p.nseg
                 << (interleaved ? ", interleaved" : ", by row"));
    for (int digit_bits : {8, 16}) {
      check_host_selection(cpu_backend(1), p, digit_bits, seed + 1);
      check_host_selection(cpu_backend(2), p, digit_bits, seed + 1);
      check_host_selection(asyppo_test::round_trip_backend(1), p, digit_bits, seed + 1);
      check_host_selection(asyppo_test::tiled_backend(seed), p, digit_bits, seed + 1);
    }
    for (int digit_bits : {resident_digit_bits, resident_wide_digit_bits, 5}) {  // 5: a last pass of 2 bits (float)
      check_resident_selection(cpu_backend(1), p, seed + 2, digit_bits);
      check_resident_selection(cpu_backend(2), p, seed + 2, digit_bits);
      check_resident_selection(asyppo_test::round_trip_backend(2), p, seed + 2, digit_bits);
      check_resident_selection(asyppo_test::tiled_backend(seed), p, seed + 2, digit_bits);
      // Compaction off; after 8 bits into a store with a slot for every element (no overflow); into one
      // region (an overflow wherever a row's range holds more candidates than a row has columns).
      for (const resident_compaction c : {resident_compaction{0, 0}, resident_compaction{8, p.rows},
                                          resident_compaction{5, 1}}) {
        check_resident_selection(cpu_backend(2), p, seed + 2, digit_bits, c);
        check_resident_selection(asyppo_test::tiled_backend(seed), p, seed + 2, digit_bits, c);
      }
    }
  }
}

}  // namespace

TEST_CASE("radix selection: a worked example", "[select]") {
  // One row, one segment: 3, 1, 2, 2, -0, +0, 5 (sorted: 0, 0, 1, 2, 2, 3, 5; -0 and +0 tie).
  problem<float> p;
  p.rows = 1, p.cols = 7, p.nseg = 1;
  p.x = {3.0f, 1.0f, 2.0f, 2.0f, -0.0f, 0.0f, 5.0f};
  p.valid.assign(7, 1);
  p.seg.assign(7, 0);
  p.lo = {0}, p.hi = {7};
  // rank -> (value, keys below, keys equal), counted by hand.
  const struct {
    std::uint64_t rank;
    float value;
    std::uint64_t less, equal;
  } want[] = {{0, 0.0f, 0, 2}, {1, 0.0f, 0, 2}, {2, 1.0f, 2, 1}, {3, 2.0f, 3, 2}, {4, 2.0f, 3, 2}, {6, 5.0f, 6, 1}};
  std::vector<select_request> req;
  for (const auto& w : want) req.push_back({0, w.rank});
  std::vector<select_result> res(req.size());
  const problem_on<cpu_backend, float> on(cpu_backend(1), p);
  radix_select(cpu_backend(1), 1, 7, on.keys(), 32, 16, 1, req.data(), static_cast<index_t>(req.size()), res.data(),
               single_process{}, on.range());
  for (std::size_t r = 0; r < req.size(); ++r) {
    CHECK(detail::key_value<float>(res[r].key) == want[r].value);
    CHECK(res[r].less == want[r].less);
    CHECK(res[r].equal == want[r].equal);
  }
  for (int digit_bits : {resident_digit_bits, resident_wide_digit_bits}) {
    INFO("resident selection, digits of " << digit_bits << " bits");
    std::vector<detail::resident_request> host;
    for (const auto& w : want) host.push_back({w.rank, 0, 0, 0, 1});
    std::vector<detail::resident_request> b(host.size());
    const detail::resident_request* out =
        radix_select_resident(cpu_backend(1), 1, 7, on.keys(), 32, 1, static_cast<index_t>(host.size()), host.data(),
                              b.data(), on.range(), digit_bits);
    for (std::size_t r = 0; r < req.size(); ++r) {
      CHECK(detail::key_value<float>(out[r].prefix) == want[r].value);
      CHECK(out[r].below == want[r].less);
      CHECK(out[r].equal == want[r].equal);
    }
  }
}

TEST_CASE("radix selection: random float keys against a sorted reference", "[select]") {
  for (std::uint64_t seed = 1; seed <= 40; ++seed) check_all_backends<float>(seed);
}

TEST_CASE("radix selection: random double keys against a sorted reference", "[select]") {
  for (std::uint64_t seed = 101; seed <= 125; ++seed) check_all_backends<double>(seed);
}

TEST_CASE("resident selection: the digit filter passes exactly the active requests' last digits", "[select]") {
  // Segment 0: active requests with prefixes 0x0103 and 0x02c8 (inactive ones ending in other digits,
  // and one with the first active one's prefix); segment 1: none active. 8-bit digits: last digits 0x03
  // and 0xc8; 11-bit: 0x103 and 0x2c8.
  std::vector<detail::resident_request> req = {
      {0, 0x0103, 0, 0, 1}, {0, 0x07, 0, 0, 0}, {0, 0x02c8, 0, 0, 1}, {0, 0x0103, 0, 0, 0}, {0, 0x55, 0, 0, 0}, {0, 0, 0, 0, 0}};
  for (int digit_bits : {resident_digit_bits, resident_wide_digit_bits}) {
    INFO("digits of " << digit_bits << " bits");
    const index_t words = detail::resident_filter_words(digit_bits);
    REQUIRE(words == (index_t(1) << digit_bits) / 64);
    std::vector<std::uint64_t> hist(static_cast<std::size_t>(6 << digit_bits), 9);
    std::vector<std::uint64_t> filter(static_cast<std::size_t>(2 * words), 9), next(filter.size(), 9);
    // The candidate counters it zeroes too: more words than bins (the setup runs over both).
    std::vector<std::uint64_t> counters(hist.size() + 37, 9);
    const index_t nbins = static_cast<index_t>(hist.size()), nzero = static_cast<index_t>(counters.size());
    cpu_backend(2).for_each(nzero, detail::resident_pass_setup{req.data(), 3, 2, hist.data(), nbins, filter.data(),
                                                               next.data(), digit_bits, counters.data(), nzero});
    CHECK(std::count(hist.begin(), hist.end(), std::uint64_t(0)) == static_cast<std::ptrdiff_t>(hist.size()));
    CHECK(std::count(next.begin(), next.end(), std::uint64_t(0)) == static_cast<std::ptrdiff_t>(next.size()));
    CHECK(std::count(counters.begin(), counters.end(), std::uint64_t(0)) == static_cast<std::ptrdiff_t>(counters.size()));
    const std::uint64_t mask = (std::uint64_t(1) << digit_bits) - 1, d1 = 0x0103 & mask, d2 = 0x02c8 & mask;
    for (std::uint64_t d = 0; d <= mask; ++d) {
      INFO("digit " << d);
      CHECK(detail::filter_has(filter.data(), d, digit_bits) == (d == d1 || d == d2));
      CHECK(detail::filter_has(filter.data(), d + (std::uint64_t(0x12) << digit_bits), digit_bits) ==
            (d == d1 || d == d2));  // only the last digit counts
      CHECK_FALSE(detail::filter_has(filter.data() + words, d, digit_bits));
    }
  }
}

TEST_CASE("resident digit choice: exactly one bin writes each request, the bin advance_digit stops at", "[select]") {
  // The choice's sink is called once per bin in an order a backend chooses (a device: all at once), so
  // its result must not depend on which bin writes last: exactly one may write. Checked bin by bin here,
  // in reverse order, against advance_digit's sweep, with ranks on bin boundaries and empty bins.
  using detail::resident_request;
  std::mt19937_64 rng(41);
  for (int trial = 0; trial < 400; ++trial) {
    const int digit_bits = (trial / 2) % 2 == 0 ? resident_digit_bits : resident_wide_digit_bits;
    const index_t radix = index_t(1) << digit_bits;
    std::vector<std::uint64_t> h(static_cast<std::size_t>(radix), 0);
    const int fill = 1 + static_cast<int>(rng() % 4);  // about 1 in fill bins nonzero
    for (auto& x : h) x = rng() % static_cast<std::uint64_t>(fill) == 0 ? rng() % 4 : 0;
    h[static_cast<std::size_t>(rng() % radix)] += 1;  // at least one key
    std::uint64_t total = 0;
    std::vector<std::uint64_t> upto(h.size());
    for (std::size_t d = 0; d < h.size(); ++d) upto[d] = total += h[d];
    const std::uint64_t below = rng() % 50;
    const std::uint64_t within = trial % 2 == 0 ? upto[static_cast<std::size_t>(rng() % radix)] % total : rng() % total;
    const bool active = trial % 10 != 0;
    const resident_request cur{below + within, 7, below, 0, active ? 1u : 0u};
    std::uint64_t acc = below;
    const index_t want = detail::advance_digit(h.data(), radix, cur.rank, 0, acc);
    int writers = 0;
    // The next pass's buffers: a histogram every bin zeroes, a filter only the chosen bin sets a bit of,
    // and the filter after it, whose words the first bins zero (the selection's digit filters: at most 11
    // bits here, the width of this pass or wider).
    const int filter_bits = digit_bits + static_cast<int>(rng() % 2);
    const index_t words = detail::resident_filter_words(filter_bits);
    std::vector<std::uint64_t> next_hist(h.size(), 7), next_filter(static_cast<std::size_t>(words), 0),
        later_filter(static_cast<std::size_t>(words), 7);
    for (index_t d = radix - 1; d >= 0; --d) {
      resident_request next{~0ull, ~0ull, ~0ull, ~0ull, 9u};  // a sentinel no choice writes
      detail::resident_choose{{&cur, h.data(), 1, digit_bits}, &next, next_hist.data(), next_filter.data(),
                              later_filter.data(), filter_bits}(0, d, upto[static_cast<std::size_t>(d)]);
      CHECK(next_hist[static_cast<std::size_t>(d)] == 0);
      if (next.active == 9u) continue;
      ++writers;
      INFO("trial " << trial << ", bin " << d);
      if (active) {
        REQUIRE(d == want);
        CHECK(next.prefix == ((cur.prefix << digit_bits) | static_cast<std::uint64_t>(want)));
        CHECK(next.below == acc);
        CHECK(next.equal == h[static_cast<std::size_t>(want)]);
        CHECK(next.rank == cur.rank);
      } else {
        REQUIRE(d == 0);
        CHECK(next.prefix == cur.prefix);
      }
    }
    REQUIRE(writers == 1);
    CHECK(std::count(later_filter.begin(), later_filter.end(), std::uint64_t(0)) == static_cast<std::ptrdiff_t>(words));
    for (index_t d = 0; d < (index_t(1) << filter_bits); ++d)  // the chosen digit's bit, no other
      CHECK(detail::filter_has(next_filter.data(), static_cast<std::uint64_t>(d), filter_bits) == (active && d == want));
  }
}

TEST_CASE("resident selection: a digit width outside [1, 16] or a negative compaction is rejected before any pass", "[select][errors]") {
  problem<float> p;
  p.rows = 1, p.cols = 3, p.nseg = 1;
  p.x = {3.0f, 1.0f, 2.0f};
  p.valid.assign(3, 1);
  const problem_on<cpu_backend, float> on(cpu_backend(1), p);
  for (int digit_bits : {-1, 17, 64}) {
    INFO("digit_bits " << digit_bits);
    std::vector<detail::resident_request> a = {{1, 0, 0, 0, 1}}, b = {{9, 9, 9, 9, 0}};
    CHECK_THROWS_WITH(radix_select_resident(cpu_backend(1), 1, 3, on.keys(), 32, 1, 1, a.data(), b.data(), on.range(),
                                            digit_bits),
                      Catch::Contains("asyppo::radix_select_resident: digit_bits:") && Catch::Contains("outside [1, 16]"));
    CHECK(a[0].prefix == 0);  // nothing written
    CHECK(b[0].rank == 9);
  }
  for (const resident_compaction c : {resident_compaction{-1, 0}, resident_compaction{16, -2}}) {
    std::vector<detail::resident_request> a = {{1, 0, 0, 0, 1}}, b = {{9, 9, 9, 9, 0}};
    CHECK_THROWS_WITH(radix_select_resident(cpu_backend(1), 1, 3, on.keys(), 32, 1, 1, a.data(), b.data(), on.range(), 8, c),
                      Catch::Contains("asyppo::radix_select_resident: compaction.") && Catch::Contains("is negative"));
    CHECK(a[0].prefix == 0);
    CHECK(b[0].rank == 9);
  }
}

TEST_CASE("resident compaction: the collecting pass stores exactly the elements it counts, by region", "[select]") {
  // One pass of a collecting histogram (8-bit digit under 8-bit prefixes) over random problems, checked
  // against a plain loop: the elements in range, valid, whose leading byte is the prefix of an active
  // request of their segment are counted and stored, each in region row % regions, a region's count is
  // its appends, and the flag is set exactly when one of them exceeds the columns.
  using detail::resident_request;
  for (std::uint64_t seed = 1; seed <= 30; ++seed) {
    const problem<float> p = make_problem<float>(seed, seed % 2 == 0, 200);
    std::mt19937_64 rng(seed);
    const index_t per_segment = 1 + static_cast<index_t>(rng() % 3);
    std::vector<resident_request> req(static_cast<std::size_t>(p.nseg * per_segment));
    for (auto& q : req) {
      q.active = rng() % 4 != 0 ? 1u : 0u;
      const std::size_t i = static_cast<std::size_t>(rng() % p.x.size());  // a prefix some element has
      q.prefix = detail::ordered_key(p.x[i]) >> 24;
    }
    const index_t words = detail::resident_filter_words(8);
    std::vector<std::uint64_t> filter(static_cast<std::size_t>(p.nseg * words), 0);
    for (index_t s = 0; s < p.nseg; ++s)
      for (index_t j = 0; j < per_segment; ++j) {
        const auto& q = req[static_cast<std::size_t>(s * per_segment + j)];
        if (q.active) filter[static_cast<std::size_t>(s * words + (q.prefix & 255) / 64)] |= 1ull << (q.prefix & 63);
      }
    const index_t regions = 1 + static_cast<index_t>(rng() % 3);
    const int stride = 1 + static_cast<int>(seed % 2);
    // Counted by the CPU backend (its spans: the key function's row loop), or element by element as a
    // device counts (the bin's operator()).
    const bool by_element = seed % 3 == 0;
    std::vector<std::uint64_t> store_words(static_cast<std::size_t>(regions * p.cols * stride), 0);
    std::vector<std::uint64_t> counters(static_cast<std::size_t>(detail::candidate_store::counter_words(regions)), 0);
    const detail::candidate_store store{store_words.data(), counters.data(), regions, p.cols, stride};
    const problem_on<cpu_backend, float> on(cpu_backend(1), p);
    using bin_t = detail::resident_bin<test_keys<float>, 8>;
    const detail::collecting_bin<bin_t> collect{{on.keys(), req.data(), filter.data(), per_segment, 16, 8, 8}, store};
    const index_t nbins = p.nseg * per_segment * 256;
    std::vector<std::uint64_t> hist(static_cast<std::size_t>(nbins), 0), want_hist(hist.size(), 0);
    if (by_element) {
      for (index_t b = 0; b < p.rows; ++b)
        for (index_t t = p.lo[static_cast<std::size_t>(b)]; t < p.hi[static_cast<std::size_t>(b)]; ++t)
          if (const index_t k = collect(b, t); k >= 0) ++hist[static_cast<std::size_t>(k)];
    } else {
      cpu_backend(2).histogram(p.rows, p.cols, collect, nbins, hist.data(), on.range());
    }
    // The reference.
    std::vector<std::vector<std::pair<index_t, std::uint64_t>>> want(static_cast<std::size_t>(regions));
    for (index_t b = 0; b < p.rows; ++b)
      for (index_t t = p.lo[static_cast<std::size_t>(b)]; t < p.hi[static_cast<std::size_t>(b)]; ++t) {
        const std::size_t i = static_cast<std::size_t>(b * p.cols + t);
        if (!p.valid[i]) continue;
        const index_t s = p.seg[i];
        const std::uint64_t key = detail::ordered_key(p.x[i]);
        for (index_t j = s * per_segment; j < (s + 1) * per_segment; ++j)
          if (req[static_cast<std::size_t>(j)].active && req[static_cast<std::size_t>(j)].prefix == key >> 24) {
            ++want_hist[static_cast<std::size_t>((j << 8) + static_cast<index_t>((key >> 16) & 255))];
            want[static_cast<std::size_t>(b % regions)].push_back({s, key});
            break;
          }
      }
    INFO("seed " << seed << ", regions " << regions << ", stride " << stride << (by_element ? ", by element" : ""));
    CHECK(hist == want_hist);
    bool over = false;
    for (index_t r = 0; r < regions; ++r) {
      auto& w = want[static_cast<std::size_t>(r)];
      CHECK(counters[static_cast<std::size_t>(r * detail::kCandidateCounterPitch)] == w.size());
      over = over || static_cast<index_t>(w.size()) > p.cols;
      if (static_cast<index_t>(w.size()) > p.cols) continue;  // which ones it kept depends on timing
      CHECK(store.size(r) == static_cast<index_t>(w.size()));
      std::vector<std::pair<index_t, std::uint64_t>> got;
      for (index_t t = 0; t < store.size(r); ++t) {
        index_t s;
        std::uint64_t key;
        store.get(r, t, s, key);
        got.push_back({s, key});
      }
      std::sort(got.begin(), got.end());
      std::sort(w.begin(), w.end());
      CHECK(got == w);
    }
    CHECK(store.overflowed() == over);
  }
}

TEST_CASE("resident compaction: the selection with room for every candidate and after an overflow", "[select]") {
  // Keys that all tie (every element a candidate) overflow a one-region store of `cols` slots whenever more
  // than cols elements are valid; distinct keys with a slot for every element never do. Both give the
  // sorted reference's results.
  for (const bool ties : {true, false}) {
    problem<float> p;
    p.rows = 6, p.cols = 50, p.nseg = 1;
    std::mt19937_64 rng(ties ? 5 : 6);
    for (index_t i = 0; i < p.rows * p.cols; ++i) {
      p.x.push_back(ties ? 0.375f : static_cast<float>(i) * 1e-3f + 1.0f);
      p.valid.push_back(rng() % 5 != 0 ? 1 : 0);
      p.seg.push_back(0);
    }
    for (index_t b = 0; b < p.rows; ++b) p.lo.push_back(0), p.hi.push_back(p.cols);
    INFO((ties ? "all keys tie, one region" : "distinct keys, a slot for each"));
    const resident_compaction c{16, ties ? 1 : p.rows};
    for (std::uint64_t seed = 1; seed <= 4; ++seed) {
      check_resident_selection(cpu_backend(2), p, seed, resident_digit_bits, c);
      check_resident_selection(asyppo_test::tiled_backend(seed), p, seed, resident_digit_bits, c);
    }
  }
}
