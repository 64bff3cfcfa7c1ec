// The index arithmetic of a warp's staged runs (backend/stage_map.hpp), which the CUDA backend's staged
// row scans and folds use: checked here against a plain simulation of one warp (every lane's loads written
// into 256 slots, then every lane's reads), on random run lengths, starts and limits; bank assignment of
// the padded layout; and the striped reads of a tile's states (run_slot).
#include <catch2/catch.hpp>

#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "asyppo/backend/stage_map.hpp"

namespace sm = asyppo::stage_map;
using asyppo::index_t;

namespace {

/// One warp's chunk at c0, simulated: slot -> the position the loading lane put there (-1: none).
std::vector<index_t> simulate_loads(index_t first, index_t n, index_t c0, index_t limit) {
  std::vector<index_t> slots(sm::kWarpSlots, -1);
  for (int lane = 0; lane < 32; ++lane)
    for (int step = 0; step < sm::kSteps; ++step) {
      const index_t p = sm::loaded_position(first, n, c0, limit, lane, step);
      const int s = sm::slot(sm::owner(lane, step), sm::offset(lane));
      REQUIRE(s == lane + 32 * step);  // the documented slot of a load
      REQUIRE(slots[static_cast<std::size_t>(s)] == -1);
      if (p >= 0) slots[static_cast<std::size_t>(s)] = p;
    }
  return slots;
}

}  // namespace

TEST_CASE("stage map: each lane reads its own run's positions, each loaded exactly once", "[stage_map]") {
  std::mt19937_64 rng(20261127);
  for (int trial = 0; trial < 400; ++trial) {
    const index_t n = 1 + static_cast<index_t>(rng() % 20);
    const index_t first = static_cast<index_t>(rng() % 5000);
    // The limit anywhere from before the warp's first position to past its last.
    const index_t limit = first - 3 + static_cast<index_t>(rng() % static_cast<std::uint64_t>(32 * n + 8));
    std::map<index_t, int> loaded;  // position -> times loaded, over every chunk
    for (index_t c0 = 0; c0 < n; c0 += sm::kChunk) {
      const std::vector<index_t> slots = simulate_loads(first, n, c0, limit);
      for (int o = 0; o < 32; ++o)
        for (int j = 0; j < sm::kChunk; ++j) {
          // Plain reference: lane o's run is [first + o n, first + o n + n), cut at limit.
          const index_t p = first + o * n + c0 + j;
          const bool in_run = c0 + j < n && p < limit;
          const index_t got = slots[static_cast<std::size_t>(sm::slot(o, j))];
          CHECK(got == (in_run ? p : index_t(-1)));
        }
      for (index_t s : slots)
        if (s >= 0) ++loaded[s];
    }
    // Every position of the warp's runs below the limit, once; nothing else.
    const index_t stop = std::min(first + 32 * n, limit);
    CHECK(static_cast<index_t>(loaded.size()) == std::max<index_t>(stop - first, 0));
    for (const auto& [p, times] : loaded) {
      CHECK(times == 1);
      CHECK(p >= first);
      CHECK(p < stop);
    }
  }
}

TEST_CASE("stage map: a step's loads are four runs of 8 consecutive positions (runs of 8: 32 in a row)", "[stage_map]") {
  for (index_t n : {8, 9, 16, 13}) {
    const index_t first = 1000;
    for (int step = 0; step < sm::kSteps; ++step) {
      std::vector<index_t> p(32);
      for (int lane = 0; lane < 32; ++lane) p[static_cast<std::size_t>(lane)] = sm::loaded_position(first, n, 0, 1 << 20, lane, step);
      for (int lane = 0; lane < 32; ++lane) {
        const index_t expected = first + (lane / 8 + 4 * step) * n + lane % 8;
        CHECK(p[static_cast<std::size_t>(lane)] == expected);
        if (lane % 8 != 0) CHECK(p[static_cast<std::size_t>(lane)] == p[static_cast<std::size_t>(lane - 1)] + 1);
      }
      if (n == 8)
        for (int lane = 0; lane < 32; ++lane) CHECK(p[static_cast<std::size_t>(lane)] == first + 32 * step + lane);
    }
  }
}

TEST_CASE("stage map: the padded slots of a step's writes and of the lanes' reads hit 32 distinct banks", "[stage_map]") {
  for (int warp = 0; warp < 8; ++warp) {
    const index_t base = index_t(warp) * sm::kWarpSlots;
    for (int step = 0; step < sm::kSteps; ++step) {  // writes: lane + 32 step
      std::set<index_t> banks;
      for (int lane = 0; lane < 32; ++lane) banks.insert(sm::padded(base + lane + 32 * step) % 32);
      CHECK(banks.size() == 32);
    }
    for (int j = 0; j < sm::kChunk; ++j) {  // reads: lane o's j-th slot
      std::set<index_t> banks;
      for (int o = 0; o < 32; ++o) banks.insert(sm::padded(base + sm::slot(o, j)) % 32);
      CHECK(banks.size() == 32);
    }
  }
}

TEST_CASE("stage map: run_slot finds the slot where a tile position's thread staged it", "[stage_map]") {
  const int threads = 256;
  for (index_t n = 1; n <= sm::kChunk; ++n) {
    std::set<index_t> seen;
    for (int t = 0; t < threads; ++t)
      for (index_t j = 0; j < n; ++j) {
        // Thread t = lane o of warp w stages its j-th position at w * 256 + slot(o, j).
        const index_t staged_at = index_t(t / 32) * sm::kWarpSlots + sm::slot(t % 32, static_cast<int>(j));
        const index_t q = index_t(t) * n + j;  // its position in the tile
        CHECK(sm::run_slot(q, n) == staged_at);
        seen.insert(sm::run_slot(q, n));
      }
    CHECK(static_cast<index_t>(seen.size()) == threads * n);  // distinct slots
  }
}
