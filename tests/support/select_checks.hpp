// tests/support/select_checks.hpp: the exact order statistics of core/select.hpp (docs/algorithm.md S2,
// S4) on a backend under test against a plain reference that sorts each segment's values (one body for
// every backend: tests/test_select.cpp runs it on the CPU backends, the GPU suite on the CUDA backend).
// A problem holds random keys with heavy ties, +-0, +-inf and values a few ulps apart, in several
// segments (interleaved, not one per row), with ragged column ranges; it is copied into the backend's
// memory, and the results are read back. Results are integers and selected values: every comparison is
// exact.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "asyppo/asyppo.hpp"

namespace asyppo_select_checks {

using namespace asyppo;


/// Element (b, t) is valid when its flag is set and t lies in the row's range; its segment is free.
template <class T>
struct test_keys {
  const T* x;
  const std::uint8_t* valid;
  const index_t* seg;
  index_t cols;
  ASYPPO_HD bool operator()(index_t b, index_t t, index_t& s, std::uint64_t& key) const {
    const index_t i = b * cols + t;
    if (!valid[i]) return false;
    s = seg[i];
    key = detail::ordered_key(x[i]);
    return true;
  }
};

struct test_range {
  const index_t* lo;
  const index_t* hi;
  ASYPPO_HD void operator()(index_t b, index_t& l, index_t& h) const { l = lo[b], h = hi[b]; }
};

template <class T>
struct problem {
  index_t rows = 0, cols = 0, nseg = 0;
  std::vector<T> x;
  std::vector<std::uint8_t> valid;
  std::vector<index_t> seg, lo, hi;
  /// The reference: each segment's values in the range, sorted (numeric order: -0 == +0).
  std::vector<std::vector<T>> sorted_segments() const {
    std::vector<std::vector<T>> s(static_cast<std::size_t>(nseg));
    for (index_t b = 0; b < rows; ++b)
      for (index_t t = lo[static_cast<std::size_t>(b)]; t < hi[static_cast<std::size_t>(b)]; ++t) {
        const std::size_t i = static_cast<std::size_t>(b * cols + t);
        if (valid[i]) s[static_cast<std::size_t>(seg[i])].push_back(x[i]);
      }
    for (auto& v : s) std::sort(v.begin(), v.end());
    return s;
  }
};

/// Values with heavy ties: a small set of specials, a few ulps around a few centres, and values spread
/// over many binades (so every digit of the keys varies somewhere).
template <class T>
T draw_value(std::mt19937_64& rng) {
  static const T specials[] = {-std::numeric_limits<T>::infinity(), T(-2.5), T(-0.0), T(0.0), T(1e-30), T(0.75),
                               T(3), std::numeric_limits<T>::infinity()};
  const int kind = static_cast<int>(rng() % 4);
  if (kind == 0) return specials[rng() % 8];
  if (kind == 1) {
    T v = (rng() % 2) ? T(0.1) : T(-7.25);
    for (int u = static_cast<int>(rng() % 5); u > 0; --u) v = std::nextafter(v, std::numeric_limits<T>::infinity());
    return v;
  }
  std::normal_distribution<double> nd;
  return static_cast<T>(nd(rng) * std::ldexp(1.0, static_cast<int>(rng() % 40) - 20));
}

template <class T>
problem<T> make_problem(std::uint64_t seed, bool interleaved_segments, index_t max_cols = 300) {
  std::mt19937_64 rng(seed);
  problem<T> p;
  p.rows = 1 + static_cast<index_t>(rng() % 9);
  p.cols = 1 + static_cast<index_t>(rng() % static_cast<std::uint64_t>(max_cols));
  p.nseg = 1 + static_cast<index_t>(rng() % 5);
  const std::size_t n = static_cast<std::size_t>(p.rows * p.cols);
  p.x.resize(n);
  p.valid.resize(n);
  p.seg.resize(n);
  const double density = (rng() % 4 == 0) ? 0.05 : 0.8;
  std::bernoulli_distribution keep(density);
  for (std::size_t i = 0; i < n; ++i) {
    p.x[i] = draw_value<T>(rng);
    p.valid[i] = keep(rng) ? 1 : 0;
    const index_t b = static_cast<index_t>(i) / p.cols;
    p.seg[i] = interleaved_segments ? static_cast<index_t>(rng() % static_cast<std::uint64_t>(p.nseg)) : b % p.nseg;
  }
  for (index_t b = 0; b < p.rows; ++b) {
    index_t l = static_cast<index_t>(rng() % static_cast<std::uint64_t>(p.cols + 1));
    index_t h = static_cast<index_t>(rng() % static_cast<std::uint64_t>(p.cols + 1));
    if (rng() % 3 == 0) l = 0, h = p.cols;  // some full rows
    if (l > h) std::swap(l, h);
    p.lo.push_back(l);
    p.hi.push_back(h);
  }
  return p;
}

/// A host array copied into a backend's memory.
template <class Backend, class T>
auto to_backend(const Backend& be, const std::vector<T>& h) {
  auto d = be.template allocate<T>(static_cast<index_t>(h.size()));
  be.copy_from_host(h.data(), static_cast<index_t>(h.size()), d.data());
  return d;
}

/// A problem's arrays in a backend's memory, and the key and range functions over them.
template <class Backend, class T>
struct problem_on {
  decltype(to_backend(std::declval<const Backend&>(), std::vector<T>{})) x;
  decltype(to_backend(std::declval<const Backend&>(), std::vector<std::uint8_t>{})) valid;
  decltype(to_backend(std::declval<const Backend&>(), std::vector<index_t>{})) seg, lo, hi;
  index_t cols;
  problem_on(const Backend& be, const problem<T>& p)
      : x(to_backend(be, p.x)), valid(to_backend(be, p.valid)), seg(to_backend(be, p.seg)), lo(to_backend(be, p.lo)),
        hi(to_backend(be, p.hi)), cols(p.cols) {}
  test_keys<T> keys() const { return {x.data(), valid.data(), seg.data(), cols}; }
  test_range range() const { return {lo.data(), hi.data()}; }
};

/// A result checked against the sorted segment: the value at the rank, and the exact counts below and equal.
template <class T>
void check_result(const std::vector<T>& sorted, std::uint64_t rank, std::uint64_t key, std::uint64_t less,
                  std::uint64_t equal) {
  REQUIRE(rank < sorted.size());
  const T want = sorted[static_cast<std::size_t>(rank)];
  const T got = detail::key_value<T>(key);
  CHECK(got == want);
  CHECK_FALSE((std::signbit(got) && got == T(0)));  // -0 selects as +0 (one key for both)
  const auto below = static_cast<std::uint64_t>(std::lower_bound(sorted.begin(), sorted.end(), want) - sorted.begin());
  const auto upto = static_cast<std::uint64_t>(std::upper_bound(sorted.begin(), sorted.end(), want) - sorted.begin());
  CHECK(less == below);
  CHECK(equal == upto - below);
}

/// Random ranks of the segments with valid elements: the extremes, repeats, and ranks whose values tie.
inline std::uint64_t draw_rank(std::mt19937_64& rng, std::uint64_t n, std::uint64_t previous) {
  switch (rng() % 5) {
    case 0: return 0;
    case 1: return n - 1;
    case 2: return previous < n ? previous : n - 1;
    default: return rng() % n;
  }
}

template <class T, class Backend>
void check_host_selection(const Backend& be, const problem<T>& p, int digit_bits, std::uint64_t seed) {
  const auto sorted = p.sorted_segments();
  std::mt19937_64 rng(seed);
  std::vector<select_request> req;
  std::uint64_t previous = 0;
  for (int r = 0; r < 12; ++r) {
    const index_t s = static_cast<index_t>(rng() % static_cast<std::uint64_t>(p.nseg));
    const std::uint64_t n = sorted[static_cast<std::size_t>(s)].size();
    if (n == 0) continue;  // a request's rank must exist
    previous = draw_rank(rng, n, previous);
    req.push_back({s, previous});
  }
  std::vector<select_result> res(req.size());
  const problem_on<Backend, T> on(be, p);
  radix_select(be, p.rows, p.cols, on.keys(), 8 * int(sizeof(T)), digit_bits, p.nseg, req.data(),
               static_cast<index_t>(req.size()), res.data(), single_process{}, on.range());
  for (std::size_t r = 0; r < req.size(); ++r)
    check_result(sorted[static_cast<std::size_t>(req[r].segment)], req[r].rank, res[r].key, res[r].less, res[r].equal);
}

/// digit_bits: the resident selection's digit width, compaction its candidate compaction (no width, no
/// compaction changes a result).
template <class T, class Backend>
void check_resident_selection(const Backend& be, const problem<T>& p, std::uint64_t seed, int digit_bits,
                              resident_compaction compaction = {}) {
  INFO("resident selection, digits of " << digit_bits << " bits, compaction after " << compaction.after_bits
                                        << " bits into " << compaction.regions << " regions");
  const auto sorted = p.sorted_segments();
  std::mt19937_64 rng(seed);
  const index_t per_segment = 1 + static_cast<index_t>(rng() % 7);
  const index_t nreq = p.nseg * per_segment;
  std::vector<detail::resident_request> host(static_cast<std::size_t>(nreq));
  std::uint64_t previous = 0;
  for (index_t s = 0; s < p.nseg; ++s) {
    const std::uint64_t n = sorted[static_cast<std::size_t>(s)].size();
    for (index_t j = 0; j < per_segment; ++j) {
      auto& q = host[static_cast<std::size_t>(s * per_segment + j)];
      q.active = (n > 0 && rng() % 5 != 0) ? 1 : 0;
      if (q.active) previous = q.rank = draw_rank(rng, n, previous);
      else q.rank = rng() % 1000;  // inactive: any rank, never read
    }
  }
  auto a = be.template allocate<detail::resident_request>(nreq);
  auto b = be.template allocate<detail::resident_request>(nreq);
  be.copy_from_host(host.data(), nreq, a.data());
  const problem_on<Backend, T> on(be, p);
  const detail::resident_request* out =
      radix_select_resident(be, p.rows, p.cols, on.keys(), 8 * int(sizeof(T)), p.nseg, per_segment, a.data(), b.data(),
                            on.range(), digit_bits, compaction);
  std::vector<detail::resident_request> got(static_cast<std::size_t>(nreq));
  be.copy_to_host(out, nreq, got.data());
  for (index_t r = 0; r < nreq; ++r) {
    const auto& q = got[static_cast<std::size_t>(r)];
    const auto& in = host[static_cast<std::size_t>(r)];
    CHECK(q.active == in.active);
    CHECK(q.rank == in.rank);
    if (!q.active) {  // untouched
      CHECK(q.prefix == 0);
      CHECK(q.below == 0);
      continue;
    }
    check_result(sorted[static_cast<std::size_t>(r / per_segment)], q.rank, q.prefix, q.below, q.equal);
  }
}

}  // namespace asyppo_select_checks
