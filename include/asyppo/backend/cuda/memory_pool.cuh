// asyppo/backend/cuda/memory_pool.cuh: a stream-ordered memory pool that keeps its memory between calls.
//
// cuda_memory_pool owns a cudaMemPool_t of device memory on one device whose release threshold is
// `keep` bytes (default: all of it). A cuda_backend given the pool (cuda_backend::with_memory_pool)
// takes its temporaries from it with cudaMallocFromPoolAsync / cudaFreeAsync, so after the first call
// of a given size the allocations are served from memory the pool already holds.
//
// Why: without it the backend allocates from the device's current pool (cudaMallocAsync), whose
// release threshold is 0 unless the application changed it: the driver then hands the pool's free
// memory back to the OS at every stream, event or device synchronisation, and the next call maps it
// again. A training loop that synchronises once per step (a loss read on the host, a timer) pays that
// every step. The pool's memory is returned when the pool is destroyed (or on trim). The
// other steady-state option is a caller workspace (cuda_workspace, device_buffer.cuh): no allocation
// calls at all.
//
// During a stream capture, cudaMallocFromPoolAsync creates a graph allocation node (owned by the graph,
// created with the pool's properties), as cudaMallocAsync does: a backend with a pool stays
// capturable. Not copyable (it owns the pool); movable. Only valid under nvcc.
#pragma once

#include "asyppo/backend/cuda/error.cuh"

#include <cstdint>
#include <limits>
#include <utility>

namespace asyppo {

class cuda_memory_pool {
 public:
  /// A pool of device memory on `device` (< 0: the current device) that keeps up to `keep` bytes of
  /// freed memory across synchronisations.
  explicit cuda_memory_pool(int device = -1, std::uint64_t keep = std::numeric_limits<std::uint64_t>::max()) {
    if (device < 0) ASYPPO_CUDA_CHECK(cudaGetDevice(&device));
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    ASYPPO_CUDA_CHECK(cudaMemPoolCreate(&pool_, &props));
    const cudaError_t status = cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep);
    if (status != cudaSuccess) {
      (void)cudaMemPoolDestroy(pool_);
      ASYPPO_CUDA_CHECK(status);
    }
    device_ = device;
  }
  cuda_memory_pool(const cuda_memory_pool&) = delete;
  cuda_memory_pool& operator=(const cuda_memory_pool&) = delete;
  cuda_memory_pool(cuda_memory_pool&& o) noexcept
      : pool_(std::exchange(o.pool_, nullptr)), device_(o.device_) {}
  cuda_memory_pool& operator=(cuda_memory_pool&& o) noexcept {
    if (this != &o) {
      destroy();
      pool_ = std::exchange(o.pool_, nullptr);
      device_ = o.device_;
    }
    return *this;
  }
  /// Destroys the pool (its memory goes back to the OS once every allocation from it is freed).
  ~cuda_memory_pool() { destroy(); }

  cudaMemPool_t get() const { return pool_; }
  int device() const { return device_; }

  /// Device memory the pool holds now (in use or kept for reuse).
  std::uint64_t reserved_bytes() const { return attribute(cudaMemPoolAttrReservedMemCurrent); }
  /// Device memory handed out by the pool now.
  std::uint64_t used_bytes() const { return attribute(cudaMemPoolAttrUsedMemCurrent); }
  /// Returns free memory to the OS until the pool holds at most `keep` bytes beyond what is in use.
  void trim(std::uint64_t keep = 0) { ASYPPO_CUDA_CHECK(cudaMemPoolTrimTo(pool_, keep)); }

 private:
  std::uint64_t attribute(cudaMemPoolAttr a) const {
    std::uint64_t v = 0;
    ASYPPO_CUDA_CHECK(cudaMemPoolGetAttribute(pool_, a, &v));
    return v;
  }
  void destroy() noexcept {
    if (pool_ != nullptr) (void)cudaMemPoolDestroy(pool_);
    pool_ = nullptr;
  }

  cudaMemPool_t pool_ = nullptr;
  int device_ = 0;
};

}  // namespace asyppo
