// asyppo/backend/cuda/kernels.cuh: the kernels behind cuda_backend's patterns.
//
// Thin launchers around the algorithms' ASYPPO_HD functors. Work is cut into pieces that depend
// only on the problem size (never on the device or the launch history), and block-level results
// are combined by CUB block primitives in thread order and then in block order, so every pattern
// is bit-identical run to run (and device to device for the same block size):
//   * flat reduce: block k folds a contiguous range of the index space in rounds of kBlock * n
//     positions: thread j folds n adjacent positions in order (n = 16, fewer in a last round that
//     the threads then share evenly: run_length), cub::BlockReduce (warp reductions:
//     non-commutative operators allowed) combines the threads of a block in thread order, the
//     rounds are appended in order (block_fold); a second one-block pass combines the block
//     partials in block order. On wide ragged rows the first pass is one block per row over the
//     row's range only (rows' partials, then the same second pass);
//   * row / segment reduce: one block per row (segment), folded the same way (8 per thread); the
//     per-row kernels (this one, the row scan) may end each row with an epilogue (fill_after: the
//     fused padding of backend/patterns.hpp, the row's columns after its range);
//   * row / segment scan: one block per row (segment), tiles of kBlock * n positions in scan
//     order, each thread a contiguous run of n positions (`items`, fewer in a row's last tile:
//     run_length); cub::BlockScan (warp scans) of the
//     threads' aggregates, plus the running prefix of the earlier tiles. Scan values are wrapped in
//     maybe<V> (an explicit "empty" element), because the scan operators have no identity. A row
//     scan then produces its states with op.apply from each thread's prefix (row_scan_kernel);
//   * staging (switches, off until measured): a warp may load its lanes' runs into shared memory in
//     coalesced steps (backend/stage_map.hpp, shared_stage, warp_stage) and each thread then reads
//     its run from there: the same positions, in the same order, so the same bits;
//   * histogram: atomicAdd on 64-bit bins (integers: exact whatever the order); up to kSharedBins
//     bins, per-block 32-bit shared counters first, one atomic per distinct bin of a warp;
//   * collect: per-thread counts, an exclusive scan of the counts, then each thread writes its
//     picks at its offset: row-major order, as the CPU backend.
// Which block takes which row may follow a schedule (row_heads::order: the rows longest first, from
// longest_first_kernel), and every kernel is launched programmatically on 9.0+ devices (launch(): it
// waits for the previous kernel at its first statement); neither changes a result.
// Only valid under nvcc.
#pragma once

#include "asyppo/backend/cuda/error.cuh"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "asyppo/config.hpp"
#include "asyppo/backend/stage_map.hpp"

namespace asyppo::cuda_detail {

inline constexpr int kBlock = 256;

/// Grid size of the flat reduce and collect passes: a function of n only (deterministic split).
inline index_t flat_blocks(index_t n) {
  constexpr index_t min_per_block = index_t(kBlock) * 4;
  constexpr index_t max_blocks = 1024;
  const index_t want = (n + min_per_block - 1) / min_per_block;
  return want < 1 ? 1 : (want > max_blocks ? max_blocks : want);
}

/// Whether ragged patterns take their per-row kernels (one block per row over the row's range) on rows of
/// `cols` columns; narrower rows go through the full 2-D kernels on skipping functors.
inline bool wide_rows(index_t cols) { return cols >= 2 * index_t(kBlock); }

/// Grid size of grid-stride loops (any value is correct; results do not depend on it).
inline unsigned grid_for(index_t n, index_t per_block) {
  const index_t b = (n + per_block - 1) / per_block;
  constexpr index_t cap = index_t(1) << 20;
  return static_cast<unsigned>(b < 1 ? 1 : (b > cap ? cap : b));
}

// ---- launches: programmatic dependent launch (compute capability 9.0+) ---------------------------
// Every kernel of this file begins with grid_dependency_wait(): it waits until the work queued before it
// on the stream has completed and its writes are visible (PTX griddepcontrol.wait), then lets the next
// kernel be launched (griddepcontrol.launch_dependents). launch() queues a kernel with
// cudaLaunchAttributeProgrammaticStreamSerialization where its code has that wait, so the launch of a
// kernel and the start of its blocks overlap the tail of the one before it (a stream capture keeps the
// relation as a programmatic edge of the graph) instead of following its completion. No kernel touches
// memory before the wait, so results do not change (docs/architecture.md, "Launches").
// ASYPPO_CUDA_PDL=0: plain launches, no wait (the measured alternative, docs/benchmarks.md).
#ifndef ASYPPO_CUDA_PDL
#define ASYPPO_CUDA_PDL 1
#endif

__device__ __forceinline__ void grid_dependency_wait() {
#if ASYPPO_CUDA_PDL && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/// Devices whose per-kernel answers are kept (ask_once); a device beyond them is asked every time.
inline constexpr int kMemoDevices = 64;

/// memo[device] if already asked, else ask() (a nonzero answer), kept there: what the runtime says about a
/// kernel on a device, asked once per kernel (the caller's static memo) and device.
template <class Ask>
signed char ask_once(std::atomic<signed char> (&memo)[kMemoDevices], int device, Ask ask) {
  const bool kept = device >= 0 && device < kMemoDevices;
  if (kept)
    if (const signed char k = memo[device].load(std::memory_order_relaxed)) return k;
  const signed char k = ask();
  if (kept) memo[device].store(k, std::memory_order_relaxed);
  return k;
}

/// Whether `kernel` may be launched programmatically on `device` (the current device): the code the
/// device runs was compiled for a 9.0+ virtual architecture, so it holds the wait (PTX of an older one,
/// compiled for this device at load time, does not). Asked once per kernel and device.
template <class... P>
bool programmatic_launch_ok(void (*kernel)(P...), int device) {
  if constexpr (!ASYPPO_CUDA_PDL) {
    (void)kernel, (void)device;
    return false;
  } else {
    static std::atomic<signed char> known[kMemoDevices] = {};  // 0: not asked yet, 1: no, 2: yes
    return ask_once(known, device, [&]() -> signed char {
             cudaFuncAttributes attr{};
             check_status(cudaFuncGetAttributes(&attr, kernel), "cudaFuncGetAttributes");
             return attr.ptxVersion >= 90 ? 2 : 1;
           }) == 2;
  }
}

/// Lets Kernel take `bytes` of dynamic shared memory on `device` (the current device) where that is
/// more than the 48 KB any kernel may take: set once per kernel and device.
template <auto Kernel>
void allow_dynamic_smem(std::size_t bytes, int device) {
  constexpr std::size_t kDefault = 48 * 1024;
  if (bytes <= kDefault) return;
  static std::atomic<signed char> done[kMemoDevices] = {};  // 0: not set yet, 1: set
  ask_once(done, device, [&]() -> signed char {
    check_status(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
                 "cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize)");
    return 1;
  });
}

/// kernel<<<grid, block, smem, stream>>>(args...), programmatic where programmatic_launch_ok; a launch
/// error names `name`.
template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
            int device, A&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attr;
  config.numAttrs = programmatic_launch_ok(kernel, device) ? 1 : 0;
  check_launch(name, cudaLaunchKernelEx(&config, kernel, std::forward<A>(args)...));
}

// ---- index spaces: visit a contiguous flat range [lo, hi) in order -----------------------------
struct space1d {
  index_t n;
  ASYPPO_HD index_t size() const { return n; }
  template <class F>
  __device__ void visit(index_t lo, index_t hi, F& f) const {
    for (index_t i = lo; i < hi; ++i) f(i);
  }
};

struct space2d {
  index_t rows, cols;
  ASYPPO_HD index_t size() const { return rows * cols; }
  // One division per range, then (b, t) advance together: functors get (b, t), never a flat index.
  template <class F>
  __device__ void visit(index_t lo, index_t hi, F& f) const {
    if (lo >= hi) return;
    index_t b = lo / cols, t = lo - b * cols;
    for (index_t i = lo; i < hi; ++i) {
      f(b, t);
      if (++t == cols) t = 0, ++b;
    }
  }
};

template <class R>
struct reducer_combine {
  R r;
  using V = typename R::value_type;
  __device__ V operator()(const V& a, const V& b) const { return r.combine(a, b); }
};

template <class R>
struct reducer_adder {
  const R& r;
  typename R::value_type& acc;
  template <class... I>
  __device__ void operator()(I... idx) const {
    r.add(acc, idx...);
  }
};

// ---- row schedules -------------------------------------------------------------------------------
/// The row a per-row kernel's block takes at its g-th turn: range.order[g] where the range carries a
/// schedule (row_heads::order, the rows longest first: longest_first_kernel), else row g. A row's
/// results go to that row whichever block folds it and when, so results do not depend on the schedule;
/// what it changes is which rows run last (LLM rows are ragged: in index order a few long rows left for
/// the last wave keep the device waiting, docs/benchmarks.md).
template <class Range>
__device__ index_t scheduled_row(const Range& range, index_t g) {
  if constexpr (requires { range.order; })
    return range.order ? range.order[g] : g;
  else
    return g;
}

// ---- for_each ------------------------------------------------------------------------------------
template <class F>
__global__ void __launch_bounds__(kBlock) for_each_1d_kernel(index_t n, F f) {
  grid_dependency_wait();
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

/// 2-D grid-stride: threadIdx.x / blockIdx.x over columns, threadIdx.y / blockIdx.y over rows.
template <class F>
__global__ void __launch_bounds__(kBlock) for_each_2d_kernel(index_t rows, index_t cols, F f) {
  grid_dependency_wait();
  const index_t sx = index_t(gridDim.x) * blockDim.x, sy = index_t(gridDim.y) * blockDim.y;
  for (index_t b = index_t(blockIdx.y) * blockDim.y + threadIdx.y; b < rows; b += sy)
    for (index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x; t < cols; t += sx) f(b, t);
}

/// Ragged 2-D for_each on wide rows: one block per row (grid-stride over rows), the threads over the
/// row's range [lo, hi) only (range(b, lo, hi) read once per row), so padding or heads cost nothing
/// where they are not visited.
template <class F, class Range>
__global__ void __launch_bounds__(kBlock) for_each_rows_kernel(index_t rows, F f, Range range) {
  grid_dependency_wait();
  for (index_t g = blockIdx.x; g < rows; g += gridDim.x) {
    const index_t b = scheduled_row(range, g);
    index_t lo, hi;
    range(b, lo, hi);
    for (index_t t = lo + index_t(threadIdx.x); t < hi; t += kBlock) f(b, t);
  }
}

// ---- the longest-first row schedule ---------------------------------------------------------------
/// Rows whose schedule one launch of longest_first_kernel computes (every block stages all the ends in
/// shared memory: 8 bytes each).
inline constexpr index_t kMaxScheduledRows = 4096;

/// order[k] = the row with the k-th largest end (equal ends: the lower row first), a permutation of
/// [0, rows) (rows <= kMaxScheduledRows). One warp per row: its lanes count, over a strided share of all
/// the ends (staged in shared memory by each block), the rows that come before it in that order; the
/// sum is its rank (exact integers, the same every run). A thread per row instead, on the few blocks
/// that gives, took 25 us for 1024 rows on an H200 (docs/benchmarks.md); this spreads the work over
/// rows / 8 blocks.
template <int = 0>  // a template: defined in a header included by many translation units
__global__ void __launch_bounds__(kBlock) longest_first_kernel(index_t rows, const index_t* ends, index_t* order) {
  grid_dependency_wait();
  __shared__ index_t e[kMaxScheduledRows];
  for (index_t k = threadIdx.x; k < rows; k += kBlock) e[k] = ends[k];
  __syncthreads();
  constexpr index_t warps = kBlock / 32;
  const unsigned lane = threadIdx.x & 31u;
  for (index_t b = index_t(blockIdx.x) * warps + threadIdx.x / 32; b < rows; b += index_t(gridDim.x) * warps) {
    const index_t mine = e[b];
    unsigned before = 0;
    for (index_t k = lane; k < rows; k += 32) before += (e[k] > mine) | ((e[k] == mine) & (k < b));
    before = __reduce_add_sync(0xffffffffu, before);
    if (lane == 0) order[before] = b;
  }
}

// ---- row epilogues: what a per-row kernel's block does after row b, given the end hi of its range ---
/// Nothing.
struct no_row_epilogue {
  __device__ void operator()(index_t, index_t) const {}
};
/// The fused padding of backend/patterns.hpp: fill(b, t) for t in [hi, cols), thread j the columns
/// hi + j, hi + j + kBlock, ... (a warp's stores adjacent).
template <class F>
struct fill_after {
  F fill;
  index_t cols;
  __device__ void operator()(index_t b, index_t hi) const {
    for (index_t t = hi + index_t(threadIdx.x); t < cols; t += kBlock) fill(b, t);
  }
};

// ---- flat reduce ---------------------------------------------------------------------------------
/// Positions per thread per round of the block folds below: tuning constants (fewer rounds, each ending
/// in a block reduction, against shorter runs per thread), measured on an H100 at 1024 x 8192
/// (docs/benchmarks.md): the flat reduce (the losses' fused pass) 4 -> 16 took 0.129 -> 0.090 ms, the
/// row reduces 8 was the best compromise (the sigma pass prefers 4, the mask-only ones 16).
#ifndef ASYPPO_CUDA_FLAT_FOLD_ITEMS
#define ASYPPO_CUDA_FLAT_FOLD_ITEMS 16
#endif
#ifndef ASYPPO_CUDA_ROW_FOLD_ITEMS
#define ASYPPO_CUDA_ROW_FOLD_ITEMS 8
#endif
inline constexpr int kFlatFoldItems = ASYPPO_CUDA_FLAT_FOLD_ITEMS;
inline constexpr int kRowFoldItems = ASYPPO_CUDA_ROW_FOLD_ITEMS;

/// Positions per thread in the round (or scan tile) that starts `remaining` positions before the end of
/// its range: Items, or, when the rest fits one round, the rest spread evenly over the block's threads,
/// so a short row or a row's last round keeps every warp busy with a short run instead of a few warps
/// with full runs and the others waiting at the block's barrier (rows are ragged: most are shorter than
/// one round of 256 x 8 positions at 1024 x 8192 with 20 % mean length).
template <int Items>
__device__ inline index_t run_length(index_t remaining) {
  const index_t even = (remaining + kBlock - 1) / kBlock;
  return even < Items ? even : index_t(Items);
}

// ---- shared-memory stages: a warp's runs loaded in coalesced steps (backend/stage_map.hpp) -------
/// 4-byte words a value of X takes in a shared_stage (0: X cannot be staged: not trivially copyable, or
/// not a whole number of words).
template <class X>
inline constexpr int stage_words = std::is_trivially_copyable_v<X> && sizeof(X) % 4 == 0 ? int(sizeof(X) / 4) : 0;

/// A block's stage in dynamic shared memory: stage_map's 256 slots for each of its warps (warp w's from
/// slot 256 w), up to Words 4-byte words a slot, word k of slot s at k * kPitch + stage_map::padded(s).
template <int Words>
struct shared_stage {
  static constexpr index_t kSlots = index_t(kBlock / 32) * stage_map::kWarpSlots;
  static constexpr index_t kPitch = stage_map::padded(kSlots);
  static constexpr std::size_t kBytes = std::size_t(Words) * std::size_t(kPitch) * 4;
  unsigned* words;
  template <class X>
  __device__ void put(index_t s, const X& x) const {
    static_assert(stage_words<X> > 0 && stage_words<X> <= Words, "a value of whole 4-byte words that fits the stage");
    unsigned w[stage_words<X>];
    memcpy(w, &x, sizeof(X));
#pragma unroll
    for (int k = 0; k < stage_words<X>; ++k) words[k * kPitch + stage_map::padded(s)] = w[k];
  }
  template <class X>
  __device__ X get(index_t s) const {
    static_assert(stage_words<X> > 0 && stage_words<X> <= Words, "a value of whole 4-byte words that fits the stage");
    unsigned w[stage_words<X>];
#pragma unroll
    for (int k = 0; k < stage_words<X>; ++k) w[k] = words[k * kPitch + stage_map::padded(s)];
    X x;
    memcpy(&x, w, sizeof(X));
    return x;
  }
};

/// The calling warp's part of a stage: its lanes' runs of n positions from `first` (the warp's first
/// position) within [.., limit), staged a chunk at a time (stage_map). Every lane of the warp calls
/// load_chunk together; then lane o's j-th position of the chunk is mine(j).
template <int Words>
struct warp_stage {
  shared_stage<Words> stage;
  index_t first, n, limit;
  index_t base;  // the warp's first slot
  int lane;
  __device__ warp_stage(unsigned* words, index_t first_, index_t n_, index_t limit_)
      : stage{words}, first(first_), n(n_), limit(limit_), base(index_t(threadIdx.x >> 5) * stage_map::kWarpSlots),
        lane(int(threadIdx.x & 31u)) {}
  /// Stages load(p) for the positions of the chunk at c0 (stage_map::loaded_position), then syncs the warp.
  template <class Load>
  __device__ void load_chunk(index_t c0, const Load& load) const {
#pragma unroll
    for (int k = 0; k < stage_map::kSteps; ++k) {
      const index_t p = stage_map::loaded_position(first, n, c0, limit, lane, k);
      if (p >= 0) stage.put(base + lane + 32 * k, load(p));
    }
    __syncwarp();
  }
  /// This lane's j-th position of the staged chunk.
  template <class X>
  __device__ X mine(int j) const {
    return stage.template get<X>(base + stage_map::slot(lane, j));
  }
};

/// The block folds [lo, hi) in rounds: in each round of n = run_length<Items>(rest) positions per thread,
/// thread j folds the n positions from the round's start + j * n in order (visit(a, e, acc), nothing when
/// a >= e), cub::BlockReduce combines the threads in thread order, and thread 0 appends the round's total
/// to the running one. The result is valid in thread 0. The order depends on lo and hi only
/// (determinism), and is index order (combine need not be commutative); a warp reads 32 adjacent short
/// runs per load (one long run per thread made every load touch 32 cache lines). A visit with kStaged
/// (segment_visit of a staged fold, fold_staging) is called by every thread, with the round's start, n and
/// hi, and folds the thread's run as visit(a, e, acc) would. Ends with a barrier (tmp can be reused).
template <int Items, class R, class Visit>
__device__ typename R::value_type block_fold(const R& r, index_t lo, index_t hi, Visit& visit,
                                             typename cub::BlockReduce<typename R::value_type, kBlock>::TempStorage& tmp) {
  using V = typename R::value_type;
  using block_reduce = cub::BlockReduce<V, kBlock>;
  V run = r.identity();
  for (index_t base = lo; base < hi;) {
    const index_t n = run_length<Items>(hi - base);
    const index_t a = base + index_t(threadIdx.x) * n;
    const index_t e = a + n < hi ? a + n : hi;
    V acc = r.identity();
    if constexpr (Visit::kStaged)
      visit.staged(base, n, hi, acc);
    else if (a < e)
      visit(a, e, acc);
    const V total = block_reduce(tmp).Reduce(acc, reducer_combine<R>{r});
    if (threadIdx.x == 0) run = r.combine(run, total);
    __syncthreads();  // tmp is reused by the next round
    base += index_t(kBlock) * n;
  }
  return run;
}

template <class Space, class R>
struct space_visit {
  static constexpr bool kStaged = false;
  Space sp;
  R r;
  __device__ void operator()(index_t a, index_t e, typename R::value_type& acc) const {
    reducer_adder<R> add{r, acc};
    sp.visit(a, e, add);
  }
};

// Blocks per SM the reduce kernels (flat first pass, row / segment reduce) ask the compiler to fit, by
// the size of the reducer's value (register caps of 48 / 128 / none): up to 16 bytes (counts, a max,
// the sigma pass) ASYPPO_CUDA_REDUCE_MIN_BLOCKS_SMALL = 5 (the sigma pass took 40 registers before the
// balanced runs, 64 to 72 after them uncapped, 48 at 5 without spills; at 6 the tie reducer spills 64
// bytes); up to 160 bytes (the actor's fused reducer,
// 120; the whitening moments, 136) ASYPPO_CUDA_REDUCE_MIN_BLOCKS = 2, since with the balanced runs of
// block_fold ptxas (nvcc 13, sm_90) gives the actor 130 to 154 registers uncapped, one block per SM
// (it took 128 before: two, 25 % occupancy on an H100), and spills 196 / 380 bytes at 3 / 4; larger
// values (the step's statistics summary, 248) 1: capped at 128 they spill 1.2 KB. None of these caps
// spills (ptxas -v). Tuning constants for the GPU sweep (scripts/gpu-prepare.sh, ASYPPO_VARIANTS).
#ifndef ASYPPO_CUDA_REDUCE_MIN_BLOCKS
#define ASYPPO_CUDA_REDUCE_MIN_BLOCKS 2
#endif
#ifndef ASYPPO_CUDA_REDUCE_MIN_BLOCKS_SMALL
#define ASYPPO_CUDA_REDUCE_MIN_BLOCKS_SMALL 5
#endif
template <class V>
constexpr int reduce_min_blocks() {
  return sizeof(V) <= 16 ? ASYPPO_CUDA_REDUCE_MIN_BLOCKS_SMALL : (sizeof(V) <= 160 ? ASYPPO_CUDA_REDUCE_MIN_BLOCKS : 1);
}

/// Pass 1: block k folds [k * per_block, (k + 1) * per_block) (block_fold) and hands the value to
/// store(k, value) (store_partial; with one block, finish_part).
template <class Space, class R, class Store>
__global__ void __launch_bounds__(kBlock, reduce_min_blocks<typename R::value_type>())
    reduce_blocks_kernel(Space sp, R r, index_t per_block, Store store) {
  grid_dependency_wait();
  using V = typename R::value_type;
  __shared__ typename cub::BlockReduce<V, kBlock>::TempStorage tmp;
  const index_t n = sp.size();
  const index_t lo = index_t(blockIdx.x) * per_block;
  const index_t hi = lo + per_block < n ? lo + per_block : n;
  space_visit<Space, R> visit{sp, r};
  const V total = block_fold<kFlatFoldItems>(r, lo, hi, visit, tmp);
  if (threadIdx.x == 0) store(index_t(blockIdx.x), total);
}

/// *p read from L2 (ld.global.cg), bypassing the SM's L1: what another block of the same kernel wrote and
/// published (__threadfence, then an atomic) is read as written.
template <class V>
__device__ V load_from_l2(const V* p) {
  static_assert(sizeof(V) % sizeof(unsigned) == 0 && alignof(V) >= alignof(unsigned), "4-byte words");
  unsigned w[sizeof(V) / sizeof(unsigned)];
  const unsigned* q = reinterpret_cast<const unsigned*>(p);
#pragma unroll
  for (std::size_t i = 0; i < sizeof(V) / sizeof(unsigned); ++i) w[i] = __ldcg(q + i);
  V v;
  memcpy(&v, w, sizeof(V));
  return v;
}

/// Sink of a reduce's first pass over rows: row b's fold into partial[b].
template <class V>
struct store_partial {
  V* partial;
  __device__ void operator()(index_t b, const V& v) const { partial[b] = v; }
};

/// One block: combines partial[0..nparts) in order (thread k folds its run, then a block reduce) and
/// hands the total to finish(total) from one thread. FromL2: the partials were written by other blocks
/// of the same kernel (load_from_l2); else by an earlier kernel (plain loads, through L1: a thread's loads
/// of a partial after the first hit the lines the first brought in; with load_from_l2 each 4-byte word is
/// a separate trip to L2, and the combine of the actor's 1024 partials of 120 bytes took 22 us instead of
/// 8 on an H200, docs/benchmarks.md). The same order, so the same bits, either way.
template <bool FromL2, class R, class Finish>
__device__ void combine_partials(const R& r, const typename R::value_type* partial, index_t nparts, const Finish& finish,
                                 typename cub::BlockReduce<typename R::value_type, kBlock>::TempStorage& tmp) {
  using V = typename R::value_type;
  const index_t per = (nparts + kBlock - 1) / kBlock;
  const index_t lo = index_t(threadIdx.x) * per;
  const index_t hi = lo + per < nparts ? lo + per : nparts;
  V acc = r.identity();
  for (index_t j = lo; j < hi; ++j) acc = r.combine(acc, FromL2 ? load_from_l2(partial + j) : partial[j]);
  const V total = cub::BlockReduce<V, kBlock>(tmp).Reduce(acc, reducer_combine<R>{r});
  if (threadIdx.x == 0) finish(total);
}

/// Pass 2 (one block): combines partial[0..nparts) in order and hands the total to finish(total) (one
/// thread: store_value, or reduce_to's sink). (Staging the partials through shared memory first, copied by
/// the whole block in coalesced 16-byte loads, was slower on an H200: 10.3 us against 7.7 for the actor's.)
template <class R, class Finish>
__global__ void __launch_bounds__(kBlock) reduce_partials_kernel(R r, const typename R::value_type* partial,
                                                                 index_t nparts, Finish finish) {
  grid_dependency_wait();
  __shared__ typename cub::BlockReduce<typename R::value_type, kBlock>::TempStorage tmp;
  combine_partials<false>(r, partial, nparts, finish, tmp);
}

/// A reduce's finish that stores the value (in device memory: the host-result reduces copy it back).
template <class V>
struct store_value {
  V* dst;
  __device__ void operator()(const V& v) const { *dst = v; }
};

// ---- per-segment reduce (rows or CSR segments): one block per segment ---------------------------
template <class Range>
struct row_bounds {
  Range range;
  __device__ index_t segment(index_t g) const { return scheduled_row(range, g); }
  __device__ void operator()(index_t b, index_t& lo, index_t& hi) const { range(b, lo, hi); }
};
template <class Begin>
struct segment_bounds {
  Begin begin;
  __device__ index_t segment(index_t g) const { return g; }
  __device__ void operator()(index_t g, index_t& lo, index_t& hi) const { lo = begin(g), hi = begin(g + 1); }
};

// Positions a thread loads before it applies them, for reducers split into load and apply
// (backend/patterns.hpp): add() of position i + 1 cannot start its loads before add() of i has stored its
// outputs (they might alias), so a thread of a per-row reduce had one memory latency per position in
// flight; with the split, the loads of this many positions are in flight together. Tuning constant,
// measured on an H100 (docs/benchmarks.md: the actor as a graph replay, 1 / 2 / 4 / 8: 0.095 / 0.092 /
// 0.098 / 0.112 ms; at 4 and 8 its reducer spills under the 128-register cap, at 2 it does not).
#ifndef ASYPPO_CUDA_LOAD_AHEAD
#define ASYPPO_CUDA_LOAD_AHEAD 2
#endif
inline constexpr int kLoadAhead = ASYPPO_CUDA_LOAD_AHEAD;

/// The fold of a thread's run [a, e) of row or segment g: r.add(acc, g, i) for rows (in groups of
/// kLoadAhead positions loaded before they are applied, where r splits add into load and apply; same
/// order, same results), r.add(acc, i) for segments.
template <class R>
struct row_add {
  R r;
  __device__ void run(typename R::value_type& acc, index_t b, index_t a, index_t e) const {
    index_t t = a;
    if constexpr (requires { r.apply(acc, b, t, r.load(b, t)); }) {
      for (; t + kLoadAhead <= e; t += kLoadAhead) {
        typename R::token_type k[kLoadAhead];
#pragma unroll
        for (int u = 0; u < kLoadAhead; ++u) k[u] = r.load(b, t + u);
#pragma unroll
        for (int u = 0; u < kLoadAhead; ++u) r.apply(acc, b, t + u, k[u]);
      }
    }
    for (; t < e; ++t) r.add(acc, b, t);
  }
  /// The same fold of the run [a, e) of the calling lane, a = first + lane * n, e = min(a + n, hi), its
  /// tokens loaded by the warp into the stage at `words` in coalesced steps, 8 positions of each lane's run
  /// at a time (warp_stage), then applied from there in order: the same loads and applies, so the same
  /// results. Every lane of the warp calls it (those with an empty run too). For reducers split into load
  /// and apply whose tokens can be staged (fold_staging).
  __device__ void run_staged(typename R::value_type& acc, index_t b, index_t first, index_t n, index_t hi,
                             unsigned* words) const {
    using K = typename R::token_type;
    const warp_stage<stage_words<K>> ws(words, first, n, hi);
    const index_t a = first + index_t(ws.lane) * n;
    for (index_t c0 = 0; c0 < n; c0 += stage_map::kChunk) {
      ws.load_chunk(c0, [&](index_t p) { return r.load(b, p); });
#pragma unroll 1  // (unrolled, the actor's reducer spilled 116 bytes instead of 84 under the 128-register cap)
      for (int j = 0; j < stage_map::kChunk; ++j)
        if (c0 + j < n && a + c0 + j < hi) r.apply(acc, b, a + c0 + j, ws.template mine<K>(j));
      __syncwarp();  // the warp's slots are reused by the next chunk
    }
  }
};

// Whether the per-row reduces of reducers split into load and apply (the actor's fused loss and gradient,
// the step's sigma pass) stage their tokens (1): each warp loads its lanes' runs into shared memory in
// coalesced steps (backend/stage_map.hpp: four runs' 8 consecutive positions a step), syncs (the warp
// only), and each thread applies its run from there, in order; or (0) each thread loads its own run, a few
// positions at a time (kLoadAhead), a warp's load touching one sector per lane (the ragged reduce's runs
// are 16 long: 64 bytes apart for 4-byte values). The same loads and applies in the same order, so the
// same bits. Dynamic shared memory for 8 positions per thread: the actor's 24-byte tokens, 51 KB a block.
// Not yet measured on a GPU (docs/benchmarks.md, "Prepared without a GPU, fourth time").
#ifndef ASYPPO_CUDA_FOLD_STAGED_TOKENS
#define ASYPPO_CUDA_FOLD_STAGED_TOKENS 0
#endif

template <class Add>
inline constexpr bool is_row_add = false;
template <class R>
inline constexpr bool is_row_add<row_add<R>> = true;

/// Whether a per-row reduce of R folding with Add stages its tokens (ASYPPO_CUDA_FOLD_STAGED_TOKENS, rows,
/// R split into load and apply, tokens of whole 4-byte words), and the dynamic shared memory that takes.
template <class R, class Add>
struct fold_staging {
  static constexpr int words() {
    if constexpr (is_row_add<Add> && requires(const R& r) { r.load(index_t(0), index_t(0)); })
      return stage_words<typename R::token_type>;
    else
      return 0;
  }
  static constexpr bool tokens = ASYPPO_CUDA_FOLD_STAGED_TOKENS != 0 && words() > 0;
  static constexpr std::size_t kBytes = tokens ? shared_stage<words()>::kBytes : 0;
};
template <class R>
struct segment_add {
  R r;
  __device__ void run(typename R::value_type& acc, index_t, index_t a, index_t e) const {
    for (index_t i = a; i < e; ++i) r.add(acc, i);
  }
};

template <class R, class Add>
struct segment_visit {
  static constexpr bool kStaged = fold_staging<R, Add>::tokens;
  R r;
  Add add;
  index_t g;
  unsigned* stage;  // the block's dynamic shared memory (fold_staging<R, Add>::kBytes)
  __device__ void operator()(index_t a, index_t e, typename R::value_type& acc) const { add.run(acc, g, a, e); }
  /// block_fold's round at base with runs of n, range end hi: the calling thread's run, staged.
  __device__ void staged(index_t base, index_t n, index_t hi, typename R::value_type& acc) const {
    add.run_staged(acc, g, base + index_t(threadIdx.x & ~31u) * n, n, hi, stage);
  }
};

/// The block's segments (grid-stride over segments), each folded by block_fold (Items positions per thread
/// per round at most) and handed to sink(g, total) by thread 0, then epilogue(g, hi) (rows: no_row_epilogue
/// or fill_after).
template <int Items, class R, class Bounds, class Add, class Sink, class Epilogue>
__device__ void fold_segments(index_t nseg, const R& r, const Bounds& bounds, const Add& add, const Sink& sink,
                              const Epilogue& epilogue,
                              typename cub::BlockReduce<typename R::value_type, kBlock>::TempStorage& tmp,
                              unsigned* stage) {
  for (index_t turn = blockIdx.x; turn < nseg; turn += gridDim.x) {
    const index_t g = bounds.segment(turn);  // the segment this turn folds (a row schedule, or turn)
    index_t lo, hi;
    bounds(g, lo, hi);
    segment_visit<R, Add> visit{r, add, g, stage};
    const typename R::value_type total = block_fold<Items>(r, lo, hi, visit, tmp);
    if (threadIdx.x == 0) sink(g, total);
    epilogue(g, hi);
  }
}

/// One block per segment: fold_segments (dynamic shared memory: fold_staging<R, Add>::kBytes).
template <int Items, class R, class Bounds, class Add, class Sink, class Epilogue = no_row_epilogue>
__global__ void __launch_bounds__(kBlock, reduce_min_blocks<typename R::value_type>())
    segment_reduce_kernel(index_t nseg, R r, Bounds bounds, Add add, Sink sink, Epilogue epilogue = {}) {
  grid_dependency_wait();
  __shared__ typename cub::BlockReduce<typename R::value_type, kBlock>::TempStorage tmp;
  extern __shared__ __align__(16) unsigned fold_words[];
  fold_segments<Items>(nseg, r, bounds, add, sink, epilogue, tmp, fold_words);
}

/// A reduce over segments in one launch: fold_segments into partial[g], then the last block to finish
/// (each block counts itself in *ticket after its partials are published; atomicInc wraps the counter back
/// to zero at the last one) combines partial[0..nseg) as reduce_partials_kernel does: the same order, so
/// the same value, without a second launch. *ticket must be zero when the kernel starts (row_heads::ticket).
template <int Items, class R, class Bounds, class Add, class Epilogue, class Finish>
__global__ void __launch_bounds__(kBlock, reduce_min_blocks<typename R::value_type>())
    segment_reduce_combine_kernel(index_t nseg, R r, Bounds bounds, Add add, typename R::value_type* partial,
                                  Epilogue epilogue, unsigned* ticket, Finish finish) {
  grid_dependency_wait();
  __shared__ typename cub::BlockReduce<typename R::value_type, kBlock>::TempStorage tmp;
  __shared__ bool last;
  extern __shared__ __align__(16) unsigned fold_words[];  // fold_staging<R, Add>::kBytes
  fold_segments<Items>(nseg, r, bounds, add, store_partial<typename R::value_type>{partial}, epilogue, tmp, fold_words);
  if (threadIdx.x == 0) {  // (thread 0 stored every partial of the block)
    __threadfence();       // the block's partials visible to every block before its count
    last = atomicInc(ticket, gridDim.x - 1) == gridDim.x - 1;
  }
  __syncthreads();  // (also: tmp free again)
  if (!last) return;
  __threadfence();
  combine_partials<true>(r, partial, nseg, finish, tmp);
}

/// The store of a reduce in one part: its value is the total, handed to the reduce's finish.
template <class Finish>
struct finish_part {
  Finish finish;
  template <class V>
  __device__ void operator()(index_t, const V& v) const { finish(v); }
};

// ---- per-segment scan: one block per segment, tiles in scan order ---------------------------------
/// A scan value or "nothing yet" (the scan operators have no identity element).
template <class V>
struct maybe {
  V v;
  bool has;
};

template <class Op, class V>
struct maybe_combine {
  Op op;
  __device__ maybe<V> operator()(const maybe<V>& a, const maybe<V>& b) const {
    if (!a.has) return b;
    if (!b.has) return a;
    return {op.combine(a.v, b.v), true};
  }
};

/// The block scan of the scan kernels' tiles. Warp scans (each warp scans its lanes with shuffles, then
/// the warps' totals are combined) rather than CUB's default raking (every thread's value through shared
/// memory, one warp reducing and scanning them while the others wait): the scans run at low occupancy
/// with large values (GAE's 8-double maps at 25 %), where the raking warp's serial composes held the
/// other warps at the barrier (the GAE scan's leading stall on an H100, 48 % of its cycles, with
/// raking; warp scans not yet measured there). Either is deterministic: a fixed order of combines.
#ifndef ASYPPO_CUDA_BLOCK_SCAN_ALGORITHM
#define ASYPPO_CUDA_BLOCK_SCAN_ALGORITHM cub::BLOCK_SCAN_WARP_SCANS
#endif
template <class M>
using tile_scan = cub::BlockScan<M, kBlock, ASYPPO_CUDA_BLOCK_SCAN_ALGORITHM>;

/// The scan of one tile for the thread whose run is the positions [p0, end) (at most Items): the threads'
/// aggregates (the fold of value(j) over the run) scanned by tile_scan in thread order and prefixed by
/// carry (the earlier tiles), which then advances by the tile's total. Returns the prefix before the
/// thread's first position. The caller syncs before tmp is reused.
template <int Items, class M, class Mop, class Value>
__device__ M tile_prefix(index_t p0, index_t end, Value value, const Mop& mop, typename tile_scan<M>::TempStorage& tmp,
                         M& carry) {
  M agg{{}, false};
#pragma unroll
  for (int j = 0; j < Items; ++j)
    if (p0 + j < end) agg = mop(agg, M{value(j), true});
  M excl, tile_total;
  tile_scan<M>(tmp).ExclusiveScan(agg, excl, M{{}, false}, mop, tile_total);
  const M run = mop(carry, excl);
  carry = mop(carry, tile_total);
  return run;
}

/// Elements per thread per tile: fewer for large scan values (registers).
template <class V>
constexpr int scan_items() {
  return sizeof(V) <= 16 ? 8 : (sizeof(V) <= 64 ? 4 : 2);
}

/// row_scan: position p of row b is column t = lo + p (forward) or hi-1-p (reverse), [lo, hi) the
/// row's range; the scanned value is op.lift(elem(b, t)); the sink receives the state
/// op.apply(prefix, op.initial()).
template <class Elem, class Op, class Sink, class Range>
struct row_scan_adapter {
  Range range;
  bool reverse;
  Elem elem;
  Op op;
  Sink sink;
  using value_type = typename Op::value_type;
  __device__ void bounds(index_t b, index_t& lo, index_t& len) const {
    index_t hi;
    range(b, lo, hi);
    len = hi > lo ? hi - lo : 0;
  }
  __device__ index_t column(index_t lo, index_t len, index_t p) const { return reverse ? lo + len - 1 - p : lo + p; }
};

/// segmented_scan: position p of segment g is index begin(g) + p (forward) or begin(g+1)-1-p
/// (reverse); the scanned value is elem(i); the sink receives the inclusive prefix.
template <class Begin, class Elem, class Op, class Sink>
struct segment_scan_adapter {
  Begin begin;
  bool reverse;
  Elem elem;
  Op op;
  Sink sink;
  using value_type = typename Op::value_type;
  __device__ void bounds(index_t g, index_t& lo, index_t& len) const {
    lo = begin(g);
    const index_t hi = begin(g + 1);
    len = hi > lo ? hi - lo : 0;
  }
  __device__ value_type load(index_t, index_t lo, index_t len, index_t p) const {
    return elem(reverse ? lo + len - 1 - p : lo + p);
  }
  __device__ void store(index_t, index_t lo, index_t len, index_t p, const value_type& x) const {
    sink(reverse ? lo + len - 1 - p : lo + p, x);
  }
};

template <class Adapter>
__global__ void __launch_bounds__(kBlock) segment_scan_kernel(index_t nseg, Adapter ad) {
  grid_dependency_wait();
  using V = typename Adapter::value_type;
  using M = maybe<V>;
  constexpr int items = scan_items<V>();
  using block_scan = tile_scan<M>;
  __shared__ typename block_scan::TempStorage tmp;
  const maybe_combine<decltype(ad.op), V> mop{ad.op};
  for (index_t g = blockIdx.x; g < nseg; g += gridDim.x) {
    index_t lo, len;
    ad.bounds(g, lo, len);
    M carry{V{}, false};
    for (index_t start = 0; start < len;) {
      const index_t n = run_length<items>(len - start);  // a tile of kBlock * n positions
      const index_t p0 = start + index_t(threadIdx.x) * n;
      const index_t end = p0 + n < len ? p0 + n : len;
      V local[items];
#pragma unroll
      for (int j = 0; j < items; ++j)
        if (p0 + j < end) local[j] = ad.load(g, lo, len, p0 + j);
      M run = tile_prefix<items>(p0, end, [&](int j) { return local[j]; }, mop, tmp, carry);
#pragma unroll
      for (int j = 0; j < items; ++j) {
        if (p0 + j < end) {
          run = mop(run, M{local[j], true});
          ad.store(g, lo, len, p0 + j, run.v);
        }
      }
      __syncthreads();  // tmp is reused by the next tile
      start += index_t(kBlock) * n;
    }
  }
}

/// Row scans: one block per row (grid-stride over rows), tiles of kBlock * n positions in scan order, each
/// thread a contiguous run of n = run_length<kRowScanItems>(rest) positions (kRowScanItems, fewer in a
/// row's last tile, so a short row costs each thread a short run). The threads' aggregates are
/// composed values (op.lift, op.combine; cub::BlockScan of them, plus the running prefix of the earlier
/// tiles), but the states handed to the sink come from op.apply(elem, state), token after token, from
/// the state at the thread's first position (its exclusive prefix applied to op.initial()): the run is
/// read again rather than kept in registers as composed values (GAE's are 8 doubles), and applying is
/// cheaper than composing (docs/algorithm.md G2; the states agree with the sequential fold to rounding).
#ifndef ASYPPO_CUDA_ROW_SCAN_ITEMS
#define ASYPPO_CUDA_ROW_SCAN_ITEMS 8
#endif
inline constexpr int kRowScanItems = ASYPPO_CUDA_ROW_SCAN_ITEMS;

// At least two blocks per SM: GAE's scan values (8 doubles) took 255 registers, one block per SM
// (12.5 % occupancy); capped at 128 the kernel took 0.207 -> 0.190 ms at 1024 x 8192 on an H100 (and
// four positions per thread instead of eight 0.212).
#ifndef ASYPPO_CUDA_ROW_SCAN_MIN_BLOCKS
#define ASYPPO_CUDA_ROW_SCAN_MIN_BLOCKS 2
#endif

/// What a row scan's sink reads at the positions of a thread's run, read before any of them is stored
/// (backend/patterns.hpp: a sink split into load and store; its stores might alias the next position's
/// inputs, so otherwise each position waited for its own loads: the advantage step's sigma, one memory
/// latency per position). Where the sink is not split, nothing is read ahead and it is called whole.
template <class Sink>
inline constexpr bool split_sink = requires(const Sink& s) { s.load(index_t(0), index_t(0)); };
template <class Sink, int N, bool Split = split_sink<Sink>>
struct sink_ahead {
  __device__ void load(const Sink&, index_t, int, index_t) {}
  template <class X>
  __device__ void store(const Sink& s, index_t b, int, index_t t, const X& x) const {
    s(b, t, x);
  }
};
template <class Sink, int N>
struct sink_ahead<Sink, N, true> {
  typename Sink::token_type token[N];
  __device__ void load(const Sink& s, index_t b, int j, index_t t) { token[j] = s.load(b, t); }
  template <class X>
  __device__ void store(const Sink& s, index_t b, int j, index_t t, const X& x) const {
    s.store(b, t, x, token[j]);
  }
};

// Whether a row scan reads its sink's tokens before the tile's block scan (1: their latency hides behind
// the scan, in registers held across it) or after it (0: all of a run's at once, before the first store).
// Tuning constant, measured on an H200 (docs/benchmarks.md; step graph replay): 0.335 ms at 0, 0.345 at 1.
#ifndef ASYPPO_CUDA_SCAN_SINK_EARLY
#define ASYPPO_CUDA_SCAN_SINK_EARLY 0
#endif

// Whether a row scan with a split sink hands it the tile's states in striped order (1) rather than each
// thread its own run (0): the states go through shared memory (a shared_stage), so that the sink's loads
// and stores at one step of the threads are consecutive columns (a warp's 32 floats in 4 sectors, not 32
// sectors of which it writes 4 bytes each; Nsight on an H200: the GAE scan wrote 7.85 M sectors for about
// 2.5 M of output). One more barrier per tile and kBlock * kRowScanItems states of shared memory (dynamic:
// 50 KB for GAE's 3-double state). The states, and so the outputs, are the same bits either way.
// Measured on an H200 (docs/benchmarks.md, fifth GPU session; step graph replay): 0.305 ms against 0.301 /
// 0.301 without (the GAE scan 109-111 us either way): off.
#ifndef ASYPPO_CUDA_SCAN_STRIPED_SINK
#define ASYPPO_CUDA_SCAN_STRIPED_SINK 0
#endif

// Whether a row scan evaluates its elements once per tile and keeps them in shared memory for both of the
// tile's uses, the aggregates and the states (1), instead of evaluating each twice along its thread's run (0:
// a warp's load at one step touches 32 sectors, one per lane, using 4 bytes of each; GAE's element reads
// three floats and a mask byte). Each warp loads its lanes' runs in coalesced steps (backend/stage_map.hpp:
// for runs of 8, 32 consecutive positions a step) into a shared_stage, syncs (the warp only), and each
// thread reads its run from there. The tile's elements in dynamic shared memory: GAE's 32-byte tokens, 66 KB
// a block (two blocks per SM still fit). Elements are pure (patterns.hpp), so the states, and the outputs,
// are the same bits either way. Not yet measured on a GPU (docs/benchmarks.md, "Prepared without a GPU,
// fourth time").
#ifndef ASYPPO_CUDA_SCAN_STAGED_ELEMENTS
#define ASYPPO_CUDA_SCAN_STAGED_ELEMENTS 0
#endif

/// What row_scan_kernel stages for Elem, Op and Sink (both, one or none) and the dynamic shared memory that
/// takes: the elements with ASYPPO_CUDA_SCAN_STAGED_ELEMENTS (where they can be staged), the states for a
/// split sink with ASYPPO_CUDA_SCAN_STRIPED_SINK; one stage of the larger of the two where both are.
template <class Elem, class Op, class Sink>
struct row_scan_staging {
  using token = decltype(std::declval<const Elem&>()(index_t(0), index_t(0)));
  using state = decltype(std::declval<const Op&>().initial());
  static constexpr bool elements = ASYPPO_CUDA_SCAN_STAGED_ELEMENTS != 0 && stage_words<token> > 0;
  static constexpr bool states = ASYPPO_CUDA_SCAN_STRIPED_SINK != 0 && split_sink<Sink> && stage_words<state> > 0;
  static constexpr int kWords = (elements && stage_words<token> > (states ? stage_words<state> : 0))
                                    ? stage_words<token>
                                    : (states ? stage_words<state> : 0);
  static constexpr std::size_t kBytes = kWords > 0 ? shared_stage<kWords>::kBytes : 0;
};
static_assert(kRowScanItems <= stage_map::kChunk, "a row scan's runs fit one chunk of a stage");

/// (Then epilogue(b, hi) after row b: no_row_epilogue or fill_after.) Staged elements
/// (row_scan_staging::elements): each warp first stages its lanes' runs of the tile's elements (warp_stage,
/// one chunk: runs are at most kRowScanItems <= 8 long), and each thread then reads its run from the stage,
/// for the aggregates and again for the states. Staged states (row_scan_staging::states): each thread
/// applies its run as above and puts each state in the slot of its position (where both are staged, over
/// the element it was applied from: only the run's own thread reads either), then, after a barrier, hands
/// the sink the tile's positions j * kBlock + threadIdx.x (j = 0, 1, ...; position q of the tile is run
/// q / n's (q % n)-th): the same states and outputs, in another order of positions.
template <class Elem, class Op, class Sink, class Range, class Epilogue>
__global__ void __launch_bounds__(kBlock, ASYPPO_CUDA_ROW_SCAN_MIN_BLOCKS)
    row_scan_kernel(index_t rows, row_scan_adapter<Elem, Op, Sink, Range> ad, Epilogue epilogue) {
  grid_dependency_wait();
  using V = typename Op::value_type;
  using M = maybe<V>;
  using staging = row_scan_staging<Elem, Op, Sink>;
  using S = typename staging::state;
  using E = typename staging::token;
  using block_scan = tile_scan<M>;
  constexpr bool striped = staging::states, staged = staging::elements;
  __shared__ typename block_scan::TempStorage tmp;
  extern __shared__ __align__(16) unsigned row_scan_words[];  // staging::kBytes
  const maybe_combine<Op, V> mop{ad.op};
  for (index_t turn = blockIdx.x; turn < rows; turn += gridDim.x) {
    const index_t b = scheduled_row(ad.range, turn);
    index_t lo, len;
    ad.bounds(b, lo, len);
    M carry{V{}, false};
    for (index_t start = 0; start < len;) {
      const index_t n = run_length<kRowScanItems>(len - start);  // a tile of kBlock * n positions
      const index_t p0 = start + index_t(threadIdx.x) * n;
      const index_t end = p0 + n < len ? p0 + n : len;
      const index_t tile_end = start + index_t(kBlock) * n < len ? start + index_t(kBlock) * n : len;
      // The warp's runs in the stage (positions in scan order; the warp's first is its first lane's p0).
      [[maybe_unused]] const warp_stage<staging::kWords> ws(row_scan_words, start + index_t(threadIdx.x & ~31u) * n,
                                                            n, len);
      if constexpr (staged) ws.load_chunk(0, [&](index_t p) { return ad.elem(b, ad.column(lo, len, p)); });
      // Position p0 + j's element: from the stage, or evaluated where it lies.
      const auto element = [&](int j) -> E {
        if constexpr (staged)
          return ws.template mine<E>(j);
        else
          return ad.elem(b, ad.column(lo, len, p0 + j));
      };
      // The positions this thread hands the sink: its run, or (striped) every kBlock-th of the tile.
      const auto sink_position = [&](int j) {
        return striped ? start + index_t(j) * kBlock + index_t(threadIdx.x) : p0 + j;
      };
      const auto sink_has = [&](int j) { return striped ? sink_position(j) < tile_end : p0 + j < end; };
      sink_ahead<Sink, kRowScanItems> ahead;
      const auto load_ahead = [&] {
#pragma unroll
        for (int j = 0; j < kRowScanItems; ++j)
          if (sink_has(j)) ahead.load(ad.sink, b, j, ad.column(lo, len, sink_position(j)));
      };
      if (ASYPPO_CUDA_SCAN_SINK_EARLY) load_ahead();
      const M run = tile_prefix<kRowScanItems>(p0, end, [&](int j) { return ad.op.lift(element(j)); }, mop, tmp, carry);
      if (!ASYPPO_CUDA_SCAN_SINK_EARLY && !striped) load_ahead();
      S state = run.has ? ad.op.apply(run.v, ad.op.initial()) : ad.op.initial();
#pragma unroll
      for (int j = 0; j < kRowScanItems; ++j)
        if (p0 + j < end) {
          const index_t t = ad.column(lo, len, p0 + j);
          state = ad.op.apply(element(j), state);
          if constexpr (striped)
            ws.stage.put(ws.base + stage_map::slot(ws.lane, j), state);
          else
            ahead.store(ad.sink, b, j, t, state);
        }
      if constexpr (striped) {
        __syncthreads();  // the tile's states are staged
        if (!ASYPPO_CUDA_SCAN_SINK_EARLY) load_ahead();
#pragma unroll
        for (int j = 0; j < kRowScanItems; ++j)
          if (sink_has(j)) {
            const index_t p = sink_position(j);
            ahead.store(ad.sink, b, j, ad.column(lo, len, p), ws.stage.template get<S>(stage_map::run_slot(p - start, n)));
          }
      }
      __syncthreads();  // tmp (and the stage) are reused by the next tile
      start += index_t(kBlock) * n;
    }
    epilogue(b, lo + len);
  }
}

// ---- histogram, fill, sort keys ------------------------------------------------------------------
template <class Bin>
struct histogram_1d_fn {
  Bin bin;
  unsigned long long* counts;
  __device__ void operator()(index_t i) const {
    const index_t k = bin(i);
    if (k >= 0) atomicAdd(counts + k, 1ull);
  }
};
template <class Bin>
struct histogram_2d_fn {
  Bin bin;
  unsigned long long* counts;
  __device__ void operator()(index_t b, index_t t) const {
    const index_t k = bin(b, t);
    if (k >= 0) atomicAdd(counts + k, 1ull);
  }
};

/// Histograms of at most kSharedBins bins count in shared memory first: a pass whose elements fall in a
/// few bins (the first digits of a selection over similar values) would otherwise serialise on a few
/// global atomics.
inline constexpr index_t kSharedBins = 4096;

/// A block's shared bins: one 32-bit counter per bin (kSharedBins at most: static shared memory).
struct shared_bins_32 {
  static constexpr int kPerWord = 1;
  unsigned* words;
  __host__ __device__ static constexpr index_t words_for(index_t nbins) { return nbins; }
  __device__ void add(int k, unsigned c) const { atomicAdd(words + k, c); }
  __device__ static unsigned count_in(unsigned word, int) { return word; }
};

// Whether the ragged histogram on wide rows also counts in shared memory from kSharedBins up to kPackedBins
// bins, two 16-bit counters per word (1), or adds each element to the global bins there (0: what the wide
// digits of a resident selection, core/select.hpp, would otherwise take). Counts do not depend on it.
// Measured on an H200 only with those wide digits (docs/benchmarks.md, fifth GPU session), which lose: off.
#ifndef ASYPPO_CUDA_HIST_PACKED_BINS
#define ASYPPO_CUDA_HIST_PACKED_BINS 0
#endif
/// The most bins of the packed shared bins: 28 KB of dynamic shared memory (the 7 x 2^11 bins of the
/// advantage step's resident selection with wide digits), 7 blocks per SM of a 9.0 device (228 KB, 1 KB
/// of it per block for the system; at 32-bit bins, 8), and the grid capped to match (cuda_backend.cuh).
inline constexpr index_t kPackedBins = 14336;

/// Two 16-bit counters per 32-bit word (dynamic shared memory): bin k in the low (even k) or high half of
/// word k / 2. Only where no block counts 65536 elements in all (cuda_backend::histogram checks that
/// before it launches), so that no half carries into the other.
struct shared_bins_16 {
  static constexpr int kPerWord = 2;
  unsigned* words;
  __host__ __device__ static constexpr index_t words_for(index_t nbins) { return (nbins + 1) / 2; }
  __device__ void add(int k, unsigned c) const { atomicAdd(words + (k >> 1), c << (16 * (k & 1))); }
  __device__ static unsigned count_in(unsigned word, int i) { return (word >> (16 * i)) & 0xffffu; }
};

/// Counts bin k (< 0: none) of every lane of the warp in the shared bins: the lanes with the same bin
/// find each other (__match_any_sync) and the lowest adds their count, one shared atomic per distinct
/// bin (the first digits of a selection fall in few bins, where per-lane atomics would serialise). A
/// warp none of whose lanes counts (most warps in a selection's later passes) stops after one ballot.
/// Every lane of the warp must call it together.
template <class Bins>
__device__ inline void count_in_warp(const Bins& local, int k, unsigned lane) {
  if (__ballot_sync(0xffffffffu, k >= 0) == 0u) return;  // uniform over the warp
  const unsigned same = __match_any_sync(0xffffffffu, k);
  if (k >= 0 && lane == static_cast<unsigned>(__ffs(static_cast<int>(same)) - 1))
    local.add(k, static_cast<unsigned>(__popc(same)));
}

/// Warp chunks of 32 columns a warp bins per step of the shared-bin histograms below: a tuning constant.
/// Each element waits for its mask byte and its key (read together); binning kHistItems chunks before
/// counting any puts that many elements of each lane in flight instead of one.
/// Measured on an H200 (docs/benchmarks.md; step graph replay): 1 / 2 / 4: 0.332 / 0.313 / 0.345 ms (with
/// 4 a row part of a few hundred columns leaves most warps of its block idle). Counts do not depend on it.
#ifndef ASYPPO_CUDA_HIST_ITEMS
#define ASYPPO_CUDA_HIST_ITEMS 2
#endif
inline constexpr int kHistItems = ASYPPO_CUDA_HIST_ITEMS;

/// Counts the columns [t0, t0 + 32 kHistItems) of row b below hi in the shared bins: the warp bins all
/// of its chunks first (independent loads), then counts them chunk by chunk (count_in_warp). Every lane
/// of the warp must call it together, with the same t0 (a multiple of 32 from the row's start) and hi.
template <class Bins, class Bin>
__device__ inline void count_chunks(const Bins& local, const Bin& bin, index_t b, index_t t0, index_t hi,
                                    unsigned lane) {
  int k[kHistItems];
#pragma unroll
  for (int u = 0; u < kHistItems; ++u) {
    const index_t t = t0 + 32 * u + lane;
    k[u] = t < hi ? static_cast<int>(bin(b, t)) : -1;
  }
#pragma unroll
  for (int u = 0; u < kHistItems; ++u) count_in_warp(local, k[u], lane);
}

/// Adds a block's nonzero shared bins to the 64-bit global bins (integers: exact in any order).
template <class Bins>
__device__ inline void flush_bins(const Bins& local, index_t nbins, unsigned long long* counts, index_t tid) {
  for (index_t w = tid; w < Bins::words_for(nbins); w += kBlock) {
    const unsigned word = local.words[w];
    if (word == 0) continue;
#pragma unroll
    for (int i = 0; i < Bins::kPerWord; ++i) {
      const index_t k = w * Bins::kPerWord + i;
      const unsigned c = Bins::count_in(word, i);
      if (c != 0 && (Bins::kPerWord == 1 || k < nbins)) atomicAdd(counts + k, static_cast<unsigned long long>(c));
    }
  }
}

/// The 2-D for_each's grid-stride loop, each block counting into its own 32-bit shared bins, then adding
/// the nonzero ones to the 64-bit global bins (integers: exact in any order). nbins <= kSharedBins.
template <class Bin>
__global__ void __launch_bounds__(kBlock) histogram_2d_shared_kernel(index_t rows, index_t cols, Bin bin, index_t nbins,
                                                                     unsigned long long* counts) {
  grid_dependency_wait();
  __shared__ unsigned int words[kSharedBins];
  const shared_bins_32 local{words};
  const index_t tid = index_t(threadIdx.y) * blockDim.x + threadIdx.x;
  for (index_t k = tid; k < nbins; k += kBlock) words[k] = 0;
  __syncthreads();
  // A warp lies in one threadIdx.y (blockDim.x is a power of two >= 32), so both loops are uniform
  // over the warp (count_in_warp's condition).
  const index_t sx = index_t(gridDim.x) * blockDim.x * kHistItems, sy = index_t(gridDim.y) * blockDim.y;
  const unsigned lane = threadIdx.x & 31u;
  for (index_t b = index_t(blockIdx.y) * blockDim.y + threadIdx.y; b < rows; b += sy)
    for (index_t t0 = (index_t(blockIdx.x) * blockDim.x + (threadIdx.x & ~31u)) * kHistItems; t0 < cols; t0 += sx)
      count_chunks(local, bin, b, t0, cols, lane);
  __syncthreads();
  flush_bins(local, nbins, counts, tid);
}

/// Parts per row (ASYPPO_CUDA_HIST_ROW_SPLIT, a tuning constant of cuda_backend.cuh's histogram; a
/// compile-time power of two, so that finding a part's row and columns is shifts, not 64-bit divisions:
/// those were most of a pass's instructions when it took them per part).
#ifndef ASYPPO_CUDA_HIST_ROW_SPLIT
#define ASYPPO_CUDA_HIST_ROW_SPLIT 4
#endif
inline constexpr index_t kHistRowSplit = ASYPPO_CUDA_HIST_ROW_SPLIT;
static_assert(kHistRowSplit > 0 && (kHistRowSplit & (kHistRowSplit - 1)) == 0, "ASYPPO_CUDA_HIST_ROW_SPLIT: a power of two");

/// The ragged histogram on wide rows: each row's range cut into `split` parts of whole warps' columns,
/// one block per part (grid-stride over rows * split parts), counting as histogram_2d_shared_kernel does.
/// Parts rather than whole rows per block, because the passes are latency-bound and a rollout's longest
/// rows are several times its median: with one block per row the longest rows' blocks set the pass's time.
/// With a row schedule (row_heads::order, longest first) the parts a block takes in its grid-stride turns
/// belong to rows of ranks spaced gridDim.x / split apart, so every block gets a share of long and short
/// rows (in row order the shares were random; the bins are integers, so counts do not change).
/// Bins: shared_bins_32 (static shared memory) or shared_bins_16 (dynamic: 4 * words_for(nbins) bytes).
template <class Bin, class Range, class Bins = shared_bins_32>
__global__ void __launch_bounds__(kBlock) histogram_rows_shared_kernel(index_t rows, Bin bin, Range range, index_t nbins,
                                                                       unsigned long long* counts) {
  constexpr index_t split = kHistRowSplit;
  constexpr bool packed = std::is_same_v<Bins, shared_bins_16>;
  grid_dependency_wait();
  __shared__ unsigned int fixed_words[packed ? 1 : kSharedBins];
  extern __shared__ unsigned int dynamic_words[];
  const Bins local{packed ? dynamic_words : fixed_words};
  for (index_t k = threadIdx.x; k < Bins::words_for(nbins); k += kBlock) local.words[k] = 0;
  __syncthreads();
  const unsigned lane = threadIdx.x & 31u;
  for (index_t w = blockIdx.x; w < rows * split; w += gridDim.x) {
    const index_t s = w % split, b = scheduled_row(range, w / split);  // each block: parts of rows far apart in the schedule
    index_t lo, hi;
    range(b, lo, hi);
    const index_t part = hi > lo ? ((hi - lo + split - 1) / split + 31) / 32 * 32 : 0;
    const index_t p_lo = lo + s * part, p_hi = p_lo + part < hi ? p_lo + part : hi;
    for (index_t t0 = p_lo + index_t(threadIdx.x & ~31u) * kHistItems; t0 < p_hi; t0 += kBlock * kHistItems)
      count_chunks(local, bin, b, t0, p_hi, lane);  // uniform over the warp
  }
  __syncthreads();
  flush_bins(local, nbins, counts, threadIdx.x);
}

template <class T>
struct fill_fn {
  T* p;
  T value;
  __device__ void operator()(index_t i) const { p[i] = value; }
};

template <class Key>
struct sort_key_fn {
  Key key;
  std::int64_t* keys;
  index_t* idx;
  __device__ void operator()(index_t i) const {
    keys[i] = key(i);
    idx[i] = i;
  }
};

// ---- collect ---------------------------------------------------------------------------------------
template <class V, class Pick>
struct pick_counter {
  const Pick& pick;
  unsigned long long& count;
  __device__ void operator()(index_t b, index_t t) const {
    V v;
    count += pick(b, t, v) ? 1 : 0;
  }
};
template <class V, class Pick>
struct pick_writer {
  const Pick& pick;
  V* out;  // advances past each written pick
  __device__ void operator()(index_t b, index_t t) {
    V v;
    if (pick(b, t, v)) *out++ = v;
  }
};

/// Pass 1: thread j counts the picks of its contiguous range.
template <class V, class Pick>
__global__ void __launch_bounds__(kBlock) collect_count_kernel(space2d sp, Pick pick, index_t per_thread,
                                                               unsigned long long* counts) {
  grid_dependency_wait();
  const index_t j = index_t(blockIdx.x) * kBlock + threadIdx.x, n = sp.size();
  const index_t lo = j * per_thread, hi = lo + per_thread < n ? lo + per_thread : n;
  unsigned long long c = 0;
  pick_counter<V, Pick> f{pick, c};
  sp.visit(lo, hi, f);
  counts[j] = c;
}

/// Pass 2: thread j writes its picks from offsets[j] on (offsets: exclusive scan of the counts).
template <class V, class Pick>
__global__ void __launch_bounds__(kBlock) collect_write_kernel(space2d sp, Pick pick, index_t per_thread,
                                                               const unsigned long long* offsets, V* out) {
  grid_dependency_wait();
  const index_t j = index_t(blockIdx.x) * kBlock + threadIdx.x, n = sp.size();
  const index_t lo = j * per_thread, hi = lo + per_thread < n ? lo + per_thread : n;
  pick_writer<V, Pick> f{pick, out + offsets[j]};
  sp.visit(lo, hi, f);
}

}  // namespace asyppo::cuda_detail
