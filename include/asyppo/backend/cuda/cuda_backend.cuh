// asyppo/backend/cuda/cuda_backend.cuh: the CUDA backend (device memory, one stream).
//
// cuda_backend implements every pattern of backend/patterns.hpp with small kernels
// (kernels.cuh) and CUB, so the algorithms of asyppo/core run unchanged on a GPU with their
// views pointing at device memory. It is a small value object: a stream (not owned; default the
// legacy default stream), a device id, an optional caller workspace (cuda_workspace) for
// temporaries and an optional memory pool (not owned; cuda_memory_pool, with_memory_pool);
// everything else is stream-ordered cudaMallocAsync / cudaFreeAsync (cudaMallocFromPoolAsync with a
// pool). Steady state without allocation: a workspace, or a pool that keeps its memory (the device's
// default pool releases its free memory at every synchronisation: memory_pool.cuh).
//
// Synchronisation: work is queued on the stream. Only calls that return a host value wait for
// the stream: reduce (returns the value), collect (returns a host vector) and copy_to_host.
// copy_from_host returns once the source may be reused (pageable memory is staged by the
// runtime; from pinned memory the copy is waited for).
//
// Determinism: every pattern is bit-identical run to run and independent of the device, because
// work is split by problem size only and partial results are combined in a fixed order (see
// kernels.cuh). Against the CPU backend, reductions and scans associate differently: integer
// results (counts, masks, histograms, sorts, selections) are identical, floating-point sums
// differ by rounding only (a few ulps of the accumulation type, relative to the sum of
// magnitudes), and the GAE scan composes affine maps in a tree instead of folding the state, so
// advantages differ by rounding of the composed products (relative 1e-12 in double
// accumulation for gamma, lambda <= 1).
//
// Dense products (backend/dense.hpp: the critic heads) go to cuBLAS (cublas.cuh) on the same stream,
// through a handle created at the first GEMM and shared by the backend's copies (or the caller's:
// with_blas_handle).
//
// Errors: every CUDA / CUB / cuBLAS status becomes asyppo::error naming the call (error.cuh); views whose
// data is not device memory of this device are rejected before any launch (check_memory).
// Only valid under nvcc; link asyppo::cuda.
#pragma once

#include "asyppo/backend/cuda/cublas.cuh"
#include "asyppo/backend/cuda/device_buffer.cuh"
#include "asyppo/backend/cuda/error.cuh"
#include "asyppo/backend/cuda/kernels.cuh"
#include "asyppo/backend/cuda/memory_pool.cuh"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/config.hpp"

namespace asyppo {

// Whether a ragged reduce over wide rows whose range is row_heads (the ranges of a core/row_span.hpp span,
// whose ticket it counts its blocks on) combines its rows' partials in its own last block (1) or in a
// second launch (0). The same value either way (the same combine, in the same order). A launch fewer for
// every such reduce (the actor's loss and gradient, the value loss, the step's summary), but measured
// slower on an H200 (docs/benchmarks.md, fifth GPU session): the actor's graph 0.094-0.097 ms against
// 0.076-0.081 with the second launch (its one kernel 74-77 us against 53 + 11: every block's fence and
// ticket before it exits, then one block's combine of all the partials, which staging them through shared
// memory did not shorten). Off.
#ifndef ASYPPO_CUDA_LAST_BLOCK_COMBINE
#define ASYPPO_CUDA_LAST_BLOCK_COMBINE 0
#endif

// The ragged histogram on wide rows: parts per row (ASYPPO_CUDA_HIST_ROW_SPLIT, kernels.cuh) and the most
// blocks (tuning constants, measured at
// 1024 x 8192 on an H100, docs/benchmarks.md: the selection's four passes took 0.195 / 0.161 / 0.165 ms
// with 1 / 2 / 4 parts per row, and 0.39 ms with 264 blocks of four whole rows each: they are
// latency-bound and want many blocks of even length; with 4 parts per row, at most 4096 / 1056 / 528
// blocks took 0.156 / 0.142 / 0.175 ms: each block clears and flushes its shared bins once, so fewer
// blocks than parts (a grid-stride loop over them) save flushes until the SMs run short of blocks).
// The row schedule (longest_first): 0 lets the per-row kernels take the rows in index order (the
// measured alternative, docs/benchmarks.md).
#ifndef ASYPPO_CUDA_ROW_SCHEDULE
#define ASYPPO_CUDA_ROW_SCHEDULE 1
#endif
#ifndef ASYPPO_CUDA_HIST_ROW_BLOCKS
#define ASYPPO_CUDA_HIST_ROW_BLOCKS 1056
#endif

class cuda_backend : public detail::ragged_by_wrapping<cuda_backend> {
 public:
  // Ragged collect (and for_each, reduce, histogram on narrow rows): the full-row kernels on functors
  // that skip the columns outside the range (detail::ragged_by_wrapping); for_each, reduce and
  // histogram on wide rows, row_reduce and row_scan take ranges.
  using ragged_by_wrapping::for_each;
  using ragged_by_wrapping::histogram;
  using ragged_by_wrapping::collect;

  /// stream: where every kernel and copy is queued (not owned). device < 0: the current device.
  /// ws: optional caller-provided scratch arena (see device_buffer.cuh), used before cudaMallocAsync.
  explicit cuda_backend(cudaStream_t stream = nullptr, int device = -1, cuda_workspace* ws = nullptr)
      : stream_(stream), device_(device), ws_(ws) {
    if (device_ < 0) ASYPPO_CUDA_CHECK(cudaGetDevice(&device_));
  }

  /// The same backend with the caller's cuBLAS handle (not owned) for the dense pattern, instead of
  /// the one created on first use.
  cuda_backend with_blas_handle(cublasHandle_t handle) const {
    cuda_backend b = *this;
    b.blas_ = std::make_shared<cublas_handle>(handle);
    return b;
  }

  /// The same backend taking its temporaries from `pool` (not owned; null: the device's current pool)
  /// when they do not fit the workspace. The pool must hold memory of this backend's device.
  cuda_backend with_memory_pool(cudaMemPool_t pool) const {
    cuda_backend b = *this;
    b.pool_ = pool;
    return b;
  }
  cuda_backend with_memory_pool(const cuda_memory_pool& pool) const {
    if (pool.device() != device_)
      detail::fail(cuda_detail::backend_name, "with_memory_pool", "the pool holds memory of device ", pool.device(),
                   ", but the backend uses device ", device_);
    return with_memory_pool(pool.get());
  }

  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }
  cuda_workspace* workspace() const { return ws_; }
  cudaMemPool_t memory_pool() const { return pool_; }

  /// Throws asyppo::error(where, name, ...) unless p is device or managed memory of this backend's
  /// device: a host pointer or another device's memory is rejected before any launch (every entry
  /// point calls this on each of its views: detail::check_memory in core/validate.hpp). During a
  /// graph capture of the stream, pointers the driver does not know yet (graph allocations) pass.
  void check_memory(const char* where, const char* name, const void* p) const {
    check_device_pointer(p, device_, where, name, stream_);
  }

  // ---- memory ------------------------------------------------------------------------------
  template <class T>
  device_buffer<T> allocate(index_t n) const {
    device_guard g(device_);
    return device_buffer<T>(n, stream_, ws_, pool_);
  }

  /// Device -> host; waits for the stream (the host value is ready on return).
  template <class T>
  void copy_to_host(const T* src, index_t n, T* dst) const {
    if (n <= 0) return;
    device_guard g(device_);
    ASYPPO_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes<T>(n), cudaMemcpyDeviceToHost, stream_));
    ASYPPO_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  /// Host -> device, stream-ordered; the source may be reused on return.
  template <class T>
  void copy_from_host(const T* src, index_t n, T* dst) const {
    if (n <= 0) return;
    device_guard g(device_);
    ASYPPO_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes<T>(n), cudaMemcpyHostToDevice, stream_));
    // Pageable sources are staged before cudaMemcpyAsync returns; a pinned source is read by the
    // DMA engine later, so wait for it (callers pass short-lived host vectors).
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, src) != cudaSuccess) (void)cudaGetLastError();
    else if (attr.type == cudaMemoryTypeHost) ASYPPO_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  /// Device -> device, stream-ordered.
  template <class T>
  void copy(const T* src, index_t n, T* dst) const {
    if (n <= 0) return;
    device_guard g(device_);
    ASYPPO_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes<T>(n), cudaMemcpyDeviceToDevice, stream_));
  }

  template <class T>
  void fill(T* p, index_t n, T value) const {
    static_assert(std::is_trivially_copyable_v<T>, "fill needs a trivially copyable T");
    for_each(n, cuda_detail::fill_fn<T>{p, value});
  }

  void synchronize() const {
    device_guard g(device_);
    ASYPPO_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // ---- the dense pattern (backend/dense.hpp): cuBLAS, stream-ordered --------------------------
  template <class T>
  void gemm(gemm_shape s, gemm_operand<T> a, gemm_operand<T> b, double beta, gemm_output<T> c) const {
    device_guard g(device_);
    cuda_detail::gemm_strided_batched(blas_->get(), stream_, s, a, b, beta, c);
  }

  // ---- flat patterns -------------------------------------------------------------------------
  template <class F>
  void for_each(index_t n, F f) const {
    if (n <= 0) return;
    device_guard g(device_);
    launch("for_each_1d_kernel", cuda_detail::for_each_1d_kernel<F>, cuda_detail::grid_for(n, cuda_detail::kBlock), n, f);
  }

  /// Waits for the stream (returns a host value).
  template <class R>
  typename R::value_type reduce(index_t n, R r) const {
    if (n <= 0) return r.identity();
    return flat_reduce(cuda_detail::space1d{n}, r);
  }

  template <class Begin, class R, class Sink>
  void segmented_reduce(index_t nseg, Begin begin, R r, Sink sink) const {
    if (nseg <= 0) return;
    device_guard g(device_);
    launch_segment_reduce<cuda_detail::kRowFoldItems>("segment_reduce_kernel", nseg, r, cuda_detail::segment_bounds<Begin>{begin},
                                                      cuda_detail::segment_add<R>{r}, sink, cuda_detail::no_row_epilogue{});
  }

  template <class Begin, class Elem, class Op, class Sink>
  void segmented_scan(scan_direction dir, index_t nseg, Begin begin, Elem elem, Op op, Sink sink) const {
    if (nseg <= 0) return;
    device_guard g(device_);
    using A = cuda_detail::segment_scan_adapter<Begin, Elem, Op, Sink>;
    launch("segment_scan_kernel", cuda_detail::segment_scan_kernel<A>, cuda_detail::grid_for(nseg, 1), nseg,
           A{begin, dir == scan_direction::reverse, elem, op, sink});
  }

  /// counts: nbins device counters (std::uint64_t), incremented (not cleared).
  template <class Bin>
  void histogram(index_t n, Bin bin, index_t nbins, std::uint64_t* counts) const {
    (void)nbins;
    for_each(n, cuda_detail::histogram_1d_fn<Bin>{bin, as_ull(counts)});
  }

  /// perm (device, n entries) = 0..n-1 stably sorted by key(i) (LSD radix sort: stable).
  template <class Key>
  void sort_indices(index_t n, Key key, index_t* perm) const {
    if (n <= 0) return;
    auto keys = allocate<std::int64_t>(2 * n);
    auto idx = allocate<index_t>(n);
    for_each(n, cuda_detail::sort_key_fn<Key>{key, keys.data(), idx.data()});
    device_guard g(device_);
    std::size_t temp_bytes = 0;
    ASYPPO_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.data(), keys.data() + n, idx.data(),
                                                      perm, n, 0, 64, stream_));
    auto temp = allocate<unsigned char>(static_cast<index_t>(temp_bytes));
    ASYPPO_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, keys.data(), keys.data() + n,
                                                      idx.data(), perm, n, 0, 64, stream_));
  }

  // ---- 2-D patterns over a row-major [rows, cols] index space ------------------------------------
  template <class F>
  void for_each(index_t rows, index_t cols, F f) const {
    if (rows <= 0 || cols <= 0) return;
    device_guard g(device_);
    const auto [grid, block] = grid_2d(rows, cols);
    launch("for_each_2d_kernel", cuda_detail::for_each_2d_kernel<F>, grid, block, rows, cols, f);
  }

  /// Ragged: wide rows (cols >= 2 * kBlock) one block per row over the row's range only; narrow rows
  /// through the full 2-D grid on a skipping functor (ragged_by_wrapping).
  template <class F, class Range>
  void for_each(index_t rows, index_t cols, F f, Range range) const {
    if (rows <= 0 || cols <= 0) return;
    if (!cuda_detail::wide_rows(cols)) return ragged_by_wrapping::for_each(rows, cols, f, range);
    device_guard g(device_);
    launch("for_each_rows_kernel", cuda_detail::for_each_rows_kernel<F, Range>, cuda_detail::grid_for(rows, 1), rows, f, range);
  }

  /// Waits for the stream (returns a host value).
  template <class R>
  typename R::value_type reduce(index_t rows, index_t cols, R r) const {
    if (rows <= 0 || cols <= 0) return r.identity();
    return flat_reduce(cuda_detail::space2d{rows, cols}, r);
  }

  /// Ragged: wide rows (cols >= 2 * kBlock) one block per row over the row's range only, then the rows'
  /// partials in row order; narrow rows through the flat reduce on a skipping functor. Waits for the
  /// stream (returns a host value).
  template <class R, class Range>
  typename R::value_type reduce(index_t rows, index_t cols, R r, Range range) const {
    return reduce_with(rows, cols, r, range, cuda_detail::no_row_epilogue{});
  }

  /// reduce(rows, cols, r, range) handed to sink(value) on the device by one thread, stream-ordered:
  /// nothing waits for the stream (the optional reduce_to pattern of backend/patterns.hpp).
  template <class R, class Range, class Sink>
  void reduce_to(index_t rows, index_t cols, R r, Range range, Sink sink) const {
    reduce_to_with(rows, cols, r, range, sink, cuda_detail::no_row_epilogue{});
  }

  /// The fused padding of backend/patterns.hpp: reduce, then fill(b, t) on each row's columns after its
  /// range, on wide rows by the row's block after its fold (while other blocks fold other rows).
  template <class R, class Range, class Fill>
  typename R::value_type reduce(index_t rows, index_t cols, R r, Range range, Fill fill) const {
    return reduce_with(rows, cols, r, range, cuda_detail::fill_after<Fill>{fill, cols});
  }
  template <class R, class Range, class Sink, class Fill>
  void reduce_to(index_t rows, index_t cols, R r, Range range, Sink sink, Fill fill) const {
    reduce_to_with(rows, cols, r, range, sink, cuda_detail::fill_after<Fill>{fill, cols});
  }

  template <class R, class Sink>
  void row_reduce(index_t rows, index_t cols, R r, Sink sink) const {
    row_reduce(rows, cols, r, sink, full_rows{cols > 0 ? cols : 0});
  }
  template <class R, class Sink, class Range>
  void row_reduce(index_t rows, index_t cols, R r, Sink sink, Range range) const {
    (void)cols;
    if (rows <= 0) return;
    device_guard g(device_);
    launch_segment_reduce<cuda_detail::kRowFoldItems>("segment_reduce_kernel (row_reduce)", rows, r,
                                                      cuda_detail::row_bounds<Range>{range}, cuda_detail::row_add<R>{r}, sink,
                                                      cuda_detail::no_row_epilogue{});
  }

  template <class Elem, class Op, class Sink>
  void row_scan(scan_direction dir, index_t rows, index_t cols, Elem elem, Op op, Sink sink) const {
    row_scan(dir, rows, cols, elem, op, sink, full_rows{cols});
  }
  template <class Elem, class Op, class Sink, class Range>
  void row_scan(scan_direction dir, index_t rows, index_t cols, Elem elem, Op op, Sink sink, Range range) const {
    row_scan_with(dir, rows, cols, elem, op, sink, range, cuda_detail::no_row_epilogue{});
  }
  /// The fused padding of backend/patterns.hpp: the row's block fills the row's columns after its range.
  template <class Elem, class Op, class Sink, class Range, class Fill>
  void row_scan(scan_direction dir, index_t rows, index_t cols, Elem elem, Op op, Sink sink, Range range, Fill fill) const {
    row_scan_with(dir, rows, cols, elem, op, sink, range, cuda_detail::fill_after<Fill>{fill, cols});
  }

  /// The optional row schedule of core/row_span.hpp: order[k] = the row with the k-th largest end
  /// (equal ends: the lower row first), which the per-row kernels then take in that order
  /// (row_heads::order). One launch; false, and nothing written, above kMaxScheduledRows rows or on
  /// narrow rows (cols < 2 * kBlock: the ragged patterns take the full 2-D kernels there, no row order).
  bool longest_first(index_t rows, index_t cols, const index_t* ends, index_t* order) const {
    if (!ASYPPO_CUDA_ROW_SCHEDULE || rows <= 0 || rows > cuda_detail::kMaxScheduledRows || !cuda_detail::wide_rows(cols))
      return false;
    device_guard g(device_);
    launch("longest_first_kernel", cuda_detail::longest_first_kernel<>, cuda_detail::grid_for(rows, cuda_detail::kBlock / 32),
           rows, ends, order);
    return true;
  }

  /// Ragged: wide rows with shared bins, one block per part of a row's range (the range only): 32-bit
  /// bins up to kSharedBins, packed 16-bit ones up to kPackedBins where ASYPPO_CUDA_HIST_PACKED_BINS and no
  /// block counts 65536 elements; otherwise through the full 2-D kernels on a skipping functor
  /// (ragged_by_wrapping).
  template <class Bin, class Range>
  void histogram(index_t rows, index_t cols, Bin bin, index_t nbins, std::uint64_t* counts, Range range) const {
    const bool fits_packed = ASYPPO_CUDA_HIST_PACKED_BINS && nbins > cuda_detail::kSharedBins &&
                             nbins <= cuda_detail::kPackedBins;
    const index_t cap = fits_packed ? ASYPPO_CUDA_HIST_ROW_BLOCKS / 8 * 7 : ASYPPO_CUDA_HIST_ROW_BLOCKS;  // kPackedBins
    const index_t split = cuda_detail::kHistRowSplit;
    const index_t parts = rows * split;  // each block clears and flushes nbins shared bins once
    const index_t grid = parts < cap ? parts : cap;
    // The most elements one block counts: its turns times the widest part a row's range can have.
    const index_t per_block = grid > 0 ? (parts + grid - 1) / grid * (((cols + split - 1) / split + 31) / 32 * 32) : 0;
    const bool packed = fits_packed && per_block < 65536;
    if ((nbins > cuda_detail::kSharedBins && !packed) || !cuda_detail::wide_rows(cols))
      return ragged_by_wrapping::histogram(rows, cols, bin, nbins, counts, range);
    if (rows <= 0) return;
    device_guard g(device_);
    if constexpr (ASYPPO_CUDA_HIST_PACKED_BINS) {  // (the packed kernel is not even compiled without it)
      if (packed) {
        using cuda_detail::shared_bins_16;
        launch_smem<cuda_detail::histogram_rows_shared_kernel<Bin, Range, shared_bins_16>>(
            "histogram_rows_shared_kernel", static_cast<unsigned>(grid),
            static_cast<std::size_t>(4 * shared_bins_16::words_for(nbins)), rows, bin, range, nbins, as_ull(counts));
        return;
      }
    }
    launch("histogram_rows_shared_kernel", cuda_detail::histogram_rows_shared_kernel<Bin, Range>,
           static_cast<unsigned>(grid), rows, bin, range, nbins, as_ull(counts));
  }

  template <class Bin>
  void histogram(index_t rows, index_t cols, Bin bin, index_t nbins, std::uint64_t* counts) const {
    if (nbins > cuda_detail::kSharedBins) {
      for_each(rows, cols, cuda_detail::histogram_2d_fn<Bin>{bin, as_ull(counts)});
      return;
    }
    if (rows <= 0 || cols <= 0) return;
    device_guard g(device_);
    // At most 1024 blocks (the grid-stride loop covers the rest), so that each block's clearing and
    // flushing of its shared bins is spread over many elements.
    auto [grid, block] = grid_2d(rows, cols);
    grid.x = (grid.x + cuda_detail::kHistItems - 1) / cuda_detail::kHistItems;  // kHistItems chunks per warp step
    grid.x = grid.x < 1024u ? grid.x : 1024u;
    grid.y = grid.y < 1024u / grid.x ? grid.y : 1024u / grid.x;
    launch("histogram_2d_shared_kernel", cuda_detail::histogram_2d_shared_kernel<Bin>, grid, block, rows, cols, bin, nbins,
           as_ull(counts));
  }

  /// The v with pick(b, t, v) true, in row-major order, on the host. Waits for the stream.
  template <class V, class Pick>
  std::vector<V> collect(index_t rows, index_t cols, Pick pick) const {
    std::vector<V> host;
    if (rows <= 0 || cols <= 0) return host;
    const cuda_detail::space2d sp{rows, cols};
    const index_t n = rows * cols, blocks = cuda_detail::flat_blocks(n), threads = blocks * cuda_detail::kBlock;
    const index_t per_thread = (n + threads - 1) / threads;
    auto counts = allocate<unsigned long long>(threads + 1);
    auto offsets = allocate<unsigned long long>(threads + 1);
    device_guard g(device_);
    launch("collect_count_kernel", cuda_detail::collect_count_kernel<V, Pick>, static_cast<unsigned>(blocks), sp, pick,
           per_thread, counts.data());
    fill(counts.data() + threads, 1, 0ull);
    std::size_t temp_bytes = 0;
    ASYPPO_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, counts.data(), offsets.data(), threads + 1, stream_));
    auto temp = allocate<unsigned char>(static_cast<index_t>(temp_bytes));
    ASYPPO_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.data(), temp_bytes, counts.data(), offsets.data(), threads + 1, stream_));
    unsigned long long total = 0;
    copy_to_host(offsets.data() + threads, 1, &total);
    if (total == 0) return host;
    auto out = allocate<V>(static_cast<index_t>(total));
    launch("collect_write_kernel", cuda_detail::collect_write_kernel<V, Pick>, static_cast<unsigned>(blocks), sp, pick,
           per_thread, offsets.data(), out.data());
    host.resize(static_cast<std::size_t>(total));
    copy_to_host(out.data(), static_cast<index_t>(total), host.data());
    return host;
  }

 private:
  /// Grid and block of the 2-D grid-stride kernels: threads along columns, as many as a row needs up
  /// to the whole block; the rest along rows.
  static std::pair<dim3, dim3> grid_2d(index_t rows, index_t cols) {
    unsigned bx = 32;
    while (bx < static_cast<unsigned>(cuda_detail::kBlock) && static_cast<index_t>(bx) < cols) bx *= 2;
    const unsigned by = static_cast<unsigned>(cuda_detail::kBlock) / bx;
    const index_t gx = (cols + bx - 1) / bx, gy = (rows + by - 1) / by;
    return {dim3(static_cast<unsigned>(gx < 65535 ? gx : 65535), static_cast<unsigned>(gy < 65535 ? gy : 65535)),
            dim3(bx, by)};
  }

  /// kernel<<<grid, block, 0, stream_>>>(args...) through cuda_detail::launch (programmatic dependent
  /// launch where the device and the kernel's code have it); block: kBlock threads unless given.
  template <class... P, class... A>
  void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, A&&... args) const {
    cuda_detail::launch(name, kernel, grid, block, 0, stream_, device_, std::forward<A>(args)...);
  }
  /// Kernel with smem bytes of dynamic shared memory (above 48 KB, the kernel is first allowed that much on
  /// this device: cuda_detail::allow_dynamic_smem, once per kernel and device).
  template <auto Kernel, class... A>
  void launch_smem(const char* name, unsigned grid, std::size_t smem, A&&... args) const {
    cuda_detail::allow_dynamic_smem<Kernel>(smem, device_);
    cuda_detail::launch(name, Kernel, dim3(grid), dim3(cuda_detail::kBlock), smem, stream_, device_,
                        std::forward<A>(args)...);
  }
  template <class... P, class... A>
  void launch(const char* name, void (*kernel)(P...), unsigned grid, A&&... args) const {
    launch(name, kernel, dim3(grid), dim3(cuda_detail::kBlock), std::forward<A>(args)...);
  }

  /// segment_reduce_kernel<Items> over n segments (rows), one block each.
  template <int Items, class R, class Bounds, class Add, class Sink, class Epilogue>
  void launch_segment_reduce(const char* name, index_t n, R r, Bounds bounds, Add add, Sink sink, Epilogue epilogue) const {
    launch_smem<cuda_detail::segment_reduce_kernel<Items, R, Bounds, Add, Sink, Epilogue>>(
        name, cuda_detail::grid_for(n, 1), cuda_detail::fold_staging<R, Add>::kBytes, n, r, bounds, add, sink, epilogue);
  }

  /// Makes `device` current for the scope (restores the previous one).
  class device_guard {
   public:
    explicit device_guard(int device) {
      ASYPPO_CUDA_CHECK(cudaGetDevice(&prev_));
      if (prev_ != device) ASYPPO_CUDA_CHECK(cudaSetDevice(device));
      else prev_ = -1;
    }
    ~device_guard() {
      if (prev_ >= 0) (void)cudaSetDevice(prev_);
    }
    device_guard(const device_guard&) = delete;
    device_guard& operator=(const device_guard&) = delete;

   private:
    int prev_ = -1;
  };

  template <class T>
  static std::size_t bytes(index_t n) {
    return static_cast<std::size_t>(n) * sizeof(T);
  }
  static unsigned long long* as_ull(std::uint64_t* p) {
    static_assert(sizeof(std::uint64_t) == sizeof(unsigned long long));
    return reinterpret_cast<unsigned long long*>(p);
  }

  // The ragged reduce, reduce_to and row scan with a per-row epilogue (no_row_epilogue or fill_after).
  template <class R, class Range, class Epilogue>
  typename R::value_type reduce_with(index_t rows, index_t cols, R r, Range range, Epilogue epilogue) const {
    if (rows <= 0 || cols <= 0) return r.identity();
    return to_host<typename R::value_type>([&](auto finish) { ragged_reduce_then(rows, cols, r, range, epilogue, finish); });
  }
  template <class R, class Range, class Sink, class Epilogue>
  void reduce_to_with(index_t rows, index_t cols, R r, Range range, Sink sink, Epilogue epilogue) const {
    ragged_reduce_then(rows, cols, r, range, epilogue, sink);
  }
  template <class Elem, class Op, class Sink, class Range, class Epilogue>
  void row_scan_with(scan_direction dir, index_t rows, index_t cols, Elem elem, Op op, Sink sink, Range range,
                     Epilogue epilogue) const {
    if (rows <= 0 || cols <= 0) return;
    device_guard g(device_);
    using A = cuda_detail::row_scan_adapter<Elem, Op, Sink, Range>;
    launch_smem<cuda_detail::row_scan_kernel<Elem, Op, Sink, Range, Epilogue>>(
        "row_scan_kernel", cuda_detail::grid_for(rows, 1), cuda_detail::row_scan_staging<Elem, Op, Sink>::kBytes, rows,
        A{range, dir == scan_direction::reverse, elem, op, sink}, epilogue);
  }

  /// A row kernel's epilogue as its own pass after the range's pattern (narrow rows: the flat reduce).
  template <class F, class Range>
  void run_epilogue(index_t rows, index_t cols, Range range, cuda_detail::fill_after<F> epilogue) const {
    for_each(rows, cols, epilogue.fill, detail::after_range<Range>{range, cols});
  }
  template <class Range>
  void run_epilogue(index_t, index_t, Range, cuda_detail::no_row_epilogue) const {}

  /// first(store) folds `parts` partial values, part k handed to store(k, value) by one device thread.
  /// Several parts: stored in a temporary, then one block combines them in order and one of its threads
  /// hands the total to finish(total) (stream-ordered; the temporary is released after). One part, where
  /// one_part_is_total: store is finish itself, so the pass needs no second launch (the same value); the
  /// callers ask that only where it saves a launch that matters (a device-result reduce over few elements),
  /// since it compiles first's kernel once more, for that store. parts >= 1.
  template <bool OnePartIsTotal, class R, class First, class Finish>
  void reduce_in_parts(R r, index_t parts, First&& first, Finish finish) const {
    using V = typename R::value_type;
    static_assert(std::is_trivially_copyable_v<V>, "reducer value_type must be trivially copyable");
    device_guard g(device_);
    if constexpr (OnePartIsTotal)
      if (parts == 1) return first(cuda_detail::finish_part<Finish>{finish});
    auto partial = allocate<V>(parts);
    first(cuda_detail::store_partial<V>{partial.data()});
    launch("reduce_partials_kernel", cuda_detail::reduce_partials_kernel<R, Finish>, 1u, r,
           static_cast<const V*>(partial.data()), parts, finish);
  }

  /// The flat reduce: block k folds the k-th of flat_blocks(n) equal ranges. One block hands its value to
  /// a device-result finish itself (a host-result reduce, store_value, waits for the device anyway).
  template <class Space, class R, class Finish>
  void flat_reduce_then(Space sp, R r, Finish finish) const {
    const index_t n = sp.size(), blocks = cuda_detail::flat_blocks(n), per_block = (n + blocks - 1) / blocks;
    constexpr bool one_part = !std::is_same_v<Finish, cuda_detail::store_value<typename R::value_type>>;
    reduce_in_parts<one_part>(r, blocks, [&](auto store) {
      launch("reduce_blocks_kernel", cuda_detail::reduce_blocks_kernel<Space, R, decltype(store)>,
             static_cast<unsigned>(blocks), sp, r, per_block, store);
    }, finish);
  }

  /// The ragged reduce: on wide rows one partial per row, folded over the row's range only (block_fold:
  /// the valid prefix of a right-padded row is shared by all the block's threads, and no block folds
  /// padding), then the row's epilogue, and the partials combined in row order: by the last block of the
  /// same launch where the range is row_heads (ASYPPO_CUDA_LAST_BLOCK_COMBINE; its span's ticket, else one
  /// zeroed by a memset), else by a second launch (reduce_in_parts); the same value either way. Narrow
  /// rows, and an empty space (whose one block yields the identity), take the flat reduce on a skipping
  /// functor, then the epilogue as its own pass.
  template <class R, class Range, class Epilogue, class Finish>
  void ragged_reduce_then(index_t rows, index_t cols, R r, Range range, Epilogue epilogue, Finish finish) const {
    if (rows <= 0 || !cuda_detail::wide_rows(cols)) {
      flat_reduce_then(cuda_detail::space2d{rows > 0 ? rows : 0, cols > 0 ? cols : 0},
                       detail::ragged_reducer<R, Range>{r, range}, finish);
      return run_epilogue(rows, cols, range, epilogue);
    }
    if constexpr (ASYPPO_CUDA_LAST_BLOCK_COMBINE != 0 && requires { range.ticket; }) {
      // One launch: the last block combines. A range without its span's ticket gets one zeroed here (a
      // memset: the two operations of the second-launch path, whose kernels such ranges then never need).
      using V = typename R::value_type;
      auto partial = allocate<V>(rows);
      auto own = allocate<unsigned>(range.ticket ? 0 : 1);
      device_guard g(device_);
      if (!range.ticket) ASYPPO_CUDA_CHECK(cudaMemsetAsync(own.data(), 0, sizeof(unsigned), stream_));
      launch_smem<cuda_detail::segment_reduce_combine_kernel<cuda_detail::kFlatFoldItems, R, cuda_detail::row_bounds<Range>,
                                                             cuda_detail::row_add<R>, Epilogue, Finish>>(
          "segment_reduce_combine_kernel (ragged reduce)", cuda_detail::grid_for(rows, 1),
          cuda_detail::fold_staging<R, cuda_detail::row_add<R>>::kBytes, rows, r, cuda_detail::row_bounds<Range>{range},
          cuda_detail::row_add<R>{r}, partial.data(), epilogue, range.ticket ? range.ticket : own.data(), finish);
    } else {
      reduce_in_parts<false>(r, rows, [&](auto store) {
        launch_segment_reduce<cuda_detail::kFlatFoldItems>("segment_reduce_kernel (ragged reduce)", rows, r,
                                                           cuda_detail::row_bounds<Range>{range}, cuda_detail::row_add<R>{r},
                                                           store, epilogue);
      }, finish);
    }
  }

  /// A reduction's value on the host: reduce(finish) enqueues it with a finish that stores it in device
  /// memory, then one copy (waits for the stream).
  template <class V, class Reduce>
  V to_host(Reduce&& reduce) const {
    auto value = allocate<V>(1);
    reduce(cuda_detail::store_value<V>{value.data()});
    V host;
    copy_to_host(value.data(), 1, &host);
    return host;
  }

  /// The value copied to the host (waits for the stream).
  template <class Space, class R>
  typename R::value_type flat_reduce(Space sp, R r) const {
    return to_host<typename R::value_type>([&](auto finish) { flat_reduce_then(sp, r, finish); });
  }

  cudaStream_t stream_ = nullptr;
  int device_ = 0;
  cuda_workspace* ws_ = nullptr;
  cudaMemPool_t pool_ = nullptr;
  std::shared_ptr<cublas_handle> blas_ = std::make_shared<cublas_handle>();  // shared by copies
};

static_assert(Backend<cuda_backend>);

}  // namespace asyppo
