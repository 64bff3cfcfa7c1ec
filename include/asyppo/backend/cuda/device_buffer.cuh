// asyppo/backend/cuda/device_buffer.cuh: stream-ordered device memory for the CUDA backend.
//
// device_buffer<T> owns n uninitialised T in device memory, allocated on a stream with
// cudaMallocAsync and released with cudaFreeAsync on the same stream (so a temporary may be
// released while kernels that use it are still queued: the release is ordered after them).
// A cuda_workspace is an optional caller-provided arena: allocations are carved from it first
// (256-byte aligned bump allocation) and released in LIFO order, which is what the algorithms do
// (temporaries are scoped). Memory of a buffer released out of order is reclaimed when the
// caller resets the workspace (used = 0) between steps. An allocation that does not fit falls
// back to the stream-ordered allocator. One workspace serves one stream (stream order makes the
// reuse safe). The stream-ordered allocator is cudaMallocFromPoolAsync on the caller's pool when one
// is given (cuda_memory_pool, memory_pool.cuh), else cudaMallocAsync on the device's current pool.
#pragma once

#include "asyppo/backend/cuda/error.cuh"

#include <cstddef>
#include <utility>

#include "asyppo/config.hpp"

namespace asyppo {

/// Caller-owned device scratch memory for a cuda_backend (not thread-safe; one stream).
struct cuda_workspace {
  void* data = nullptr;    ///< device memory of `bytes` bytes
  std::size_t bytes = 0;
  std::size_t used = 0;    ///< high-water offset of live allocations; reset to 0 between steps
  std::size_t peak = 0;    ///< largest `used` seen (to size the workspace)
  std::size_t fallbacks = 0;  ///< allocations that did not fit and went to the stream-ordered allocator
};

template <class T>
class device_buffer {
 public:
  device_buffer() = default;

  /// n uninitialised elements, stream-ordered on `stream`; from `ws` when it fits, else from `pool`
  /// (null: the device's current pool).
  device_buffer(index_t n, cudaStream_t stream, cuda_workspace* ws = nullptr, cudaMemPool_t pool = nullptr)
      : size_(n > 0 ? n : 0), stream_(stream) {
    if (size_ == 0) return;
    const std::size_t bytes = static_cast<std::size_t>(size_) * sizeof(T);
    if (ws && ws->data) {
      const std::size_t begin = (ws->used + 255) / 256 * 256;
      if (begin <= ws->bytes && bytes <= ws->bytes - begin) {
        ws_ = ws;
        ws_begin_ = ws->used;
        ws_end_ = begin + bytes;
        ws->used = ws_end_;
        if (ws->used > ws->peak) ws->peak = ws->used;
        data_ = reinterpret_cast<T*>(static_cast<unsigned char*>(ws->data) + begin);
        return;
      }
      ++ws->fallbacks;
    }
    void* p = nullptr;
    if (pool != nullptr) ASYPPO_CUDA_CHECK(cudaMallocFromPoolAsync(&p, bytes, pool, stream));
    else ASYPPO_CUDA_CHECK(cudaMallocAsync(&p, bytes, stream));
    data_ = static_cast<T*>(p);
  }

  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept { steal(o); }
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      release();
      steal(o);
    }
    return *this;
  }
  ~device_buffer() { release(); }

  T* data() const { return data_; }
  index_t size() const { return size_; }
  cudaStream_t stream() const { return stream_; }

 private:
  void steal(device_buffer& o) noexcept {
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    stream_ = o.stream_;
    ws_ = std::exchange(o.ws_, nullptr);
    ws_begin_ = o.ws_begin_;
    ws_end_ = o.ws_end_;
  }
  // Never throws: a failing cudaFreeAsync (e.g. a device already in an error state) is dropped;
  // the next checked call reports the sticky error.
  void release() noexcept {
    if (data_ == nullptr) return;
    if (ws_) {
      if (ws_->used == ws_end_) ws_->used = ws_begin_;
    } else {
      (void)cudaFreeAsync(data_, stream_);
    }
    data_ = nullptr;
    size_ = 0;
    ws_ = nullptr;
  }

  T* data_ = nullptr;
  index_t size_ = 0;
  cudaStream_t stream_ = nullptr;
  cuda_workspace* ws_ = nullptr;
  std::size_t ws_begin_ = 0, ws_end_ = 0;
};

}  // namespace asyppo
