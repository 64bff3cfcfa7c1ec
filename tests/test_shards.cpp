// Tests of asyppo::shard_weights (E8, D1): in-group disjoint shares with the documented rotation.
// Everything here is exact (integers): comparisons are ==.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "reference.hpp"
#include "round_trip_backend.hpp"

using namespace asyppo;
using i64 = std::int64_t;

namespace {

struct shard_run {
  std::vector<double> weights;  // [K,B]
  std::vector<i64> critic_of;   // [B]
};

// device: the CPU backend posing as a device backend, where one process takes the path without host
// round trips (the layout's sort and scan, group sizes from each group's last member); asserted.
shard_run run(const std::vector<i64>& ids, i64 K, shard_mode mode, int threads = 1, bool device = false) {
  const i64 B = static_cast<i64>(ids.size());
  shard_run r;
  r.weights.assign(static_cast<std::size_t>(K * B), -1.0);
  r.critic_of.assign(static_cast<std::size_t>(B), -7);
  const seq_view<const i64> iv(ids.data(), B);
  const view<double, 2> wv(r.weights.data(), K, B);
  if (device) {
    const asyppo_test::round_trip_backend be(threads);
    shard_weights(be, iv, K, wv, mode, seq_view<i64>(r.critic_of.data(), B));
    REQUIRE(be.round_trips() == 0);
  } else {
    shard_weights(cpu_backend(threads), iv, K, wv, mode, seq_view<i64>(r.critic_of.data(), B));
  }
  return r;
}

// Structural checks that hold for any correct assignment, independent of the rotation details.
void check_structure(const std::vector<i64>& ids, i64 K, const shard_run& r) {
  const i64 B = static_cast<i64>(ids.size());
  for (i64 b = 0; b < B; ++b) {
    int ones = 0;
    for (i64 k = 0; k < K; ++k) {
      const double w = r.weights[static_cast<std::size_t>(k * B + b)];
      REQUIRE((w == 0.0 || w == 1.0));
      if (w == 1.0) {
        ++ones;
        REQUIRE(r.critic_of[static_cast<std::size_t>(b)] == k);
      }
    }
    REQUIRE(ones == 1);  // exactly one critic per sequence
  }
  // Per group: share sizes differ by at most one.
  for (const auto& [label, members] : ref::groups(ids)) {
    std::vector<i64> share(static_cast<std::size_t>(K), 0);
    for (int b : members) ++share[static_cast<std::size_t>(r.critic_of[static_cast<std::size_t>(b)])];
    const auto [lo, hi] = std::minmax_element(share.begin(), share.end());
    INFO("group " << label << " of size " << members.size());
    REQUIRE(*hi - *lo <= 1);
  }
}

void check_against_reference(const std::vector<i64>& ids, i64 K) {
  for (auto mode : {shard_mode::contiguous, shard_mode::strided})
    for (bool device : {false, true}) {
      INFO("device path " << device);
      const auto r = run(ids, K, mode, 1 + static_cast<int>(ids.size() % 3), device);
      check_structure(ids, K, r);
      const auto want = ref::shards(ids, K, mode == shard_mode::strided);
      REQUIRE(r.critic_of == want);
    }
}

}  // namespace

TEST_CASE("shards: K divides the group size -> the public code's contiguous blocks", "[shards]") {
  // 3 contiguous groups of G = 4, K = 2: first G/K of each group -> critic 0, rest -> critic 1.
  const std::vector<i64> ids = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2};
  const auto r = run(ids, 2, shard_mode::contiguous);
  const std::vector<i64> want = {0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1};
  REQUIRE(r.critic_of == want);
  for (std::size_t b = 0; b < ids.size(); ++b) {
    REQUIRE(r.weights[b] == (want[b] == 0 ? 1.0 : 0.0));
    REQUIRE(r.weights[ids.size() + b] == (want[b] == 1 ? 1.0 : 0.0));
  }
  // G = 8, K = 4: blocks of 2 in critic order, in every group whatever the rotation.
  std::vector<i64> ids8;
  for (int g = 0; g < 3; ++g)
    for (int j = 0; j < 8; ++j) ids8.push_back(g);
  const auto r8 = run(ids8, 4, shard_mode::contiguous);
  for (std::size_t b = 0; b < ids8.size(); ++b) REQUIRE(r8.critic_of[b] == static_cast<i64>((b % 8) / 2));
  // Strided with K | G: position j -> j mod K.
  const auto s8 = run(ids8, 4, shard_mode::strided);
  for (std::size_t b = 0; b < ids8.size(); ++b) REQUIRE(s8.critic_of[b] == static_cast<i64>((b % 8) % 4));
}

TEST_CASE("shards: G not a multiple of K, hand-checked rotation", "[shards]") {
  // Groups (dense g by ascending label): label -5 -> g 0, label 3 -> g 1, label 9 -> g 2. Each of size 5, K = 2:
  // q = 2, e = 1; extra response to critic c with ((c - g) mod 2) < 1, i.e. c = g mod 2.
  // Members are interleaved in the batch: positions j follow ascending batch index.
  const std::vector<i64> ids = {9, -5, 3, -5, 9, 3, -5, 3, 9, -5, 3, 9, -5, 3, 9};
  const auto r = run(ids, 2, shard_mode::contiguous);
  // g 0 (label -5, batch 1,3,6,9,12): critic 0 gets 3 -> [0,0,0,1,1]
  // g 1 (label 3, batch 2,5,7,10,13): critic 1 gets 3 -> [0,0,1,1,1]
  // g 2 (label 9, batch 0,4,8,11,14): critic 0 gets 3 -> [0,0,0,1,1]
  std::vector<i64> want(ids.size());
  const std::map<i64, std::vector<i64>> per_label = {{-5, {0, 0, 0, 1, 1}}, {3, {0, 0, 1, 1, 1}}, {9, {0, 0, 0, 1, 1}}};
  std::map<i64, int> seen;
  for (std::size_t b = 0; b < ids.size(); ++b) want[b] = per_label.at(ids[b])[static_cast<std::size_t>(seen[ids[b]]++)];
  REQUIRE(r.critic_of == want);
  // Strided: position j -> (j + g e) mod K = (j + g) mod 2.
  const auto s = run(ids, 2, shard_mode::strided);
  seen.clear();
  const std::map<i64, i64> g_of = {{-5, 0}, {3, 1}, {9, 2}};
  for (std::size_t b = 0; b < ids.size(); ++b) REQUIRE(s.critic_of[b] == (seen[ids[b]]++ + g_of.at(ids[b])) % 2);
}

TEST_CASE("shards: K = 3, group size 7, rotation balances totals over the batch", "[shards]") {
  // n = 7 = 2*3 + 1. Group g's extra response goes to critic g mod 3 (rot = g*1 mod 3).
  std::vector<i64> ids;
  for (int g = 0; g < 6; ++g)
    for (int j = 0; j < 7; ++j) ids.push_back(100 + g);
  const auto r = run(ids, 3, shard_mode::contiguous);
  for (int g = 0; g < 6; ++g) {
    std::vector<i64> share(3, 0);
    for (int j = 0; j < 7; ++j) share[static_cast<std::size_t>(r.critic_of[static_cast<std::size_t>(g * 7 + j)])]++;
    for (int c = 0; c < 3; ++c) REQUIRE(share[static_cast<std::size_t>(c)] == (c == g % 3 ? 3 : 2));
    // contiguous blocks in critic order
    for (int j = 1; j < 7; ++j)
      REQUIRE(r.critic_of[static_cast<std::size_t>(g * 7 + j)] >= r.critic_of[static_cast<std::size_t>(g * 7 + j - 1)]);
  }
  std::vector<i64> total(3, 0);
  for (auto c : r.critic_of) total[static_cast<std::size_t>(c)]++;
  REQUIRE(total == std::vector<i64>{14, 14, 14});
  check_against_reference(ids, 3);
}

TEST_CASE("shards: totals over many equal-sized groups differ by at most one", "[shards]") {
  for (i64 K : {2, 3, 4, 5, 7})
    for (int n : {1, 2, 3, 5, 6, 9, 10}) {
      std::vector<i64> ids;
      for (int g = 0; g < 11; ++g)
        for (int j = 0; j < n; ++j) ids.push_back(g * 3 - 7);
      for (auto mode : {shard_mode::contiguous, shard_mode::strided}) {
        const auto r = run(ids, K, mode);
        std::vector<i64> total(static_cast<std::size_t>(K), 0);
        for (auto c : r.critic_of) total[static_cast<std::size_t>(c)]++;
        const auto [lo, hi] = std::minmax_element(total.begin(), total.end());
        INFO("K=" << K << " n=" << n);
        REQUIRE(*hi - *lo <= 1);
      }
    }
}

TEST_CASE("shards: K = 1 assigns everything to critic 0", "[shards]") {
  const std::vector<i64> ids = {4, 4, -1, 7, 4, -1};
  for (auto mode : {shard_mode::contiguous, shard_mode::strided}) {
    const auto r = run(ids, 1, mode);
    for (auto c : r.critic_of) REQUIRE(c == 0);
    for (auto w : r.weights) REQUIRE(w == 1.0);
  }
}

TEST_CASE("shards: K larger than the group size gives at most one response per critic", "[shards]") {
  // Groups of 1, 2 and 3 with K = 5: every critic gets 0 or 1 response of each group.
  const std::vector<i64> ids = {1, 2, 2, 3, 3, 3};
  for (auto mode : {shard_mode::contiguous, shard_mode::strided}) {
    const auto r = run(ids, 5, mode);
    check_structure(ids, 5, r);
    REQUIRE(r.critic_of == ref::shards(ids, 5, mode == shard_mode::strided));
  }
  // Hand check (contiguous): g0 (label 1, n=1, e=1, rot=0) -> critic 0; g1 (label 2, n=2, e=2, rot=2)
  // -> critics 2, 3; g2 (label 3, n=3, e=3, rot=6 mod 5=1) -> critics 1, 2, 3.
  const auto r = run(ids, 5, shard_mode::contiguous);
  REQUIRE(r.critic_of == std::vector<i64>{0, 2, 3, 1, 2, 3});
}

TEST_CASE("shards: arbitrary int64 labels (negative, extreme) and non-contiguous groups", "[shards]") {
  const i64 lo = std::numeric_limits<i64>::min(), hi = std::numeric_limits<i64>::max();
  const std::vector<i64> ids = {hi, lo, 0, -1, hi, lo, 0, hi, -1, lo, hi, 0, 1LL << 62, lo, hi};
  for (i64 K : {1, 2, 3, 4})
    for (int threads : {1, 3}) {
      for (auto mode : {shard_mode::contiguous, shard_mode::strided}) {
        const auto r = run(ids, K, mode, threads);
        check_structure(ids, K, r);
        REQUIRE(r.critic_of == ref::shards(ids, K, mode == shard_mode::strided));
      }
    }
  // Relabelling groups by an order-preserving map changes nothing.
  std::vector<i64> relabelled;
  for (auto x : ids) relabelled.push_back(x == lo ? -100 : x == -1 ? -5 : x == 0 ? 0 : x == (1LL << 62) ? 50 : 99);
  REQUIRE(run(ids, 3, shard_mode::contiguous).critic_of == run(relabelled, 3, shard_mode::contiguous).critic_of);
}

TEST_CASE("shards: randomized batches vs the reference rotation rule, deterministic across threads", "[shards]") {
  std::mt19937_64 rng(2024);
  for (int iter = 0; iter < 60; ++iter) {
    const int B = std::uniform_int_distribution<int>(0, 300)(rng);
    const int labels = std::uniform_int_distribution<int>(1, 40)(rng);
    const i64 K = std::uniform_int_distribution<int>(1, 8)(rng);
    std::vector<i64> ids(static_cast<std::size_t>(B));
    std::uniform_int_distribution<int> pick(0, labels - 1);
    const i64 scale = iter % 2 ? 1 : (1LL << 40);  // huge labels on even iterations
    for (auto& x : ids) x = (pick(rng) - labels / 2) * scale;
    INFO("iter " << iter << " B=" << B << " K=" << K);
    check_against_reference(ids, K);
    for (auto mode : {shard_mode::contiguous, shard_mode::strided}) {
      const auto a = run(ids, K, mode, 1), b = run(ids, K, mode, 4);
      REQUIRE(a.critic_of == b.critic_of);
      REQUIRE(a.weights == b.weights);
    }
  }
}

TEST_CASE("shards: strided ids view, float weights, critic_of alone", "[shards]") {
  // ids stored with stride 3 among other columns; weights as float [K,B] in a transposed [B,K] buffer.
  const std::vector<i64> base = {5, 5, 6, 5, 6, 6, 6, 5, 5};
  std::vector<i64> storage(base.size() * 3, 12345);
  for (std::size_t b = 0; b < base.size(); ++b) storage[3 * b] = base[b];
  const i64 B = static_cast<i64>(base.size()), K = 2;
  std::vector<float> wt(static_cast<std::size_t>(B * K), -1.f);
  shard_weights(cpu_backend(), seq_view<const i64>::strided(storage.data(), {B}, {3}), K,
                view<float, 2>::strided(wt.data(), {K, B}, {1, K}), shard_mode::contiguous);
  const auto want = ref::shards(base, K, false);
  for (i64 b = 0; b < B; ++b)
    for (i64 k = 0; k < K; ++k) REQUIRE(wt[static_cast<std::size_t>(b * K + k)] == (want[static_cast<std::size_t>(b)] == k ? 1.f : 0.f));
  std::vector<i64> c(static_cast<std::size_t>(B), -1);
  shard_weights(cpu_backend(), seq_view<const i64>(base.data(), B), K, view<float, 2>{}, shard_mode::contiguous,
                seq_view<i64>(c.data(), B));
  REQUIRE(c == want);
}

TEST_CASE("shards: empty batch", "[shards]") {
  std::vector<i64> ids;
  shard_weights(cpu_backend(), seq_view<const i64>(ids.data(), 0), 2, view<double, 2>(nullptr, 2, 0));
  SUCCEED();
}
