// asyppo/backend/stage_map.hpp: which lane of a warp loads which position when the warp stages its
// threads' runs in shared memory (the CUDA backend's staged row scans and folds, backend/cuda/kernels.cuh;
// plain C++, so that the CPU tests check the index arithmetic: tests/test_stage_map.cpp).
//
// The 32 lanes of a warp each own a run of n consecutive positions, lane o's from first + o n (the runs of
// a warp are adjacent). They pass through 256 slots, 8 positions of each run at a time (the chunk at
// c0 = 0, 8, 16, ... of the runs): slot 8 o + j holds position first + o n + c0 + j, for j < 8 with
// c0 + j < n and the position below the range's limit. At step k (0 <= k < 8) lane l loads slot l + 32 k,
// that is owner (l >> 3) + 4 k at offset l & 7: the warp's 32 loads of a step are four runs' 8 consecutive
// positions each (for n = 8, 32 consecutive positions), where each lane reading its own run puts the 32
// lanes n positions apart, a separate 32-byte sector each for 4-byte values. Then lane o reads its slots
// 8 o + j in order, j = 0, 1, ...: the same positions, in its run's order, as it would have loaded itself.
// With one pad word per 32 slots (padded), the slots a step writes (stride 1) and those the lanes read
// together (stride 8) fall on 32 distinct banks.
#pragma once

#include "asyppo/config.hpp"

namespace asyppo::stage_map {

inline constexpr int kChunk = 8;                  ///< positions of each run per chunk
inline constexpr int kWarpSlots = 32 * kChunk;    ///< slots of one warp
inline constexpr int kSteps = kWarpSlots / 32;    ///< loads per lane per chunk

/// The run (lane) whose position lane `lane` loads at `step`, and where in the chunk.
ASYPPO_HD constexpr int owner(int lane, int step) { return (lane >> 3) + 4 * step; }
ASYPPO_HD constexpr int offset(int lane) { return lane & 7; }
/// The slot of the j-th position of run o's chunk (0 <= j < kChunk).
ASYPPO_HD constexpr int slot(int o, int j) { return kChunk * o + j; }

/// The position lane `lane` loads at `step` of the chunk at c0, for a warp whose runs of n positions start
/// at first, in a range that ends at limit; -1 where there is none (past the owner's run or the limit).
/// Its slot is slot(owner(lane, step), offset(lane)) = lane + 32 step.
ASYPPO_HD constexpr index_t loaded_position(index_t first, index_t n, index_t c0, index_t limit, int lane, int step) {
  const int j = offset(lane);
  const index_t p = first + index_t(owner(lane, step)) * n + c0 + j;
  return c0 + j < n && p < limit ? p : index_t(-1);
}

/// The slot of position q of a block's tile (0 <= q < 32 kChunk per warp) whose threads own runs of
/// n <= kChunk positions each: thread q / n's (q % n)-th position, which that thread, lane o of warp w,
/// stages at w kWarpSlots + slot(o, q % n) = kChunk (q / n) + q % n (a row scan handing its states to the
/// sink in striped order reads them there). For n = kChunk, q itself.
ASYPPO_HD constexpr index_t run_slot(index_t q, index_t n) {
  if (n == kChunk) return q;
  const unsigned u = static_cast<unsigned>(q), m = static_cast<unsigned>(n);  // 32-bit division
  return index_t(slot(static_cast<int>(u / m), static_cast<int>(u % m)));
}

/// Slot s in a layout with one pad word per 32 slots (a shared-memory stage's word offset).
ASYPPO_HD constexpr index_t padded(index_t s) { return s + (s >> 5); }

}  // namespace asyppo::stage_map
