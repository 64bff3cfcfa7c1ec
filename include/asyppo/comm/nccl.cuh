// asyppo/comm/nccl.cuh: the communicator contract (comm/communicator.hpp) over NCCL, for
// data-parallel GPU ranks.
//
// What it computes: the same collectives as every communicator, on host memory (the algorithms
// hand over small host vectors: counts, histograms, moments):
//   allreduce_sum   integers: ncclAllReduce(ncclSum) on int64/uint64 — exact;
//                   floating point: ncclAllGather, then a sum in rank order on the host, so the
//                   result is identical on every rank and run to run (NCCL's reduction order is
//                   not specified);
//   exclusive_scan_sum   allgather of one value, sum of the lower ranks (rank 0 gets 0);
//   allgather       ncclAllGather of the raw bytes, rank-major.
// Each call stages the data through a device buffer on the communicator's stream and waits for
// the stream before returning (the caller needs the host result). The volume per call is what
// the algorithm passes (e.g. a radix-selection histogram), never proportional to the tokens.
//
// Ownership: wraps a caller's ncclComm_t (not owned), or creates one with init() from an
// ncclUniqueId that the caller distributed (e.g. with MPI_Bcast, as mpi_comm users do) and then
// owns it. Errors from CUDA or NCCL become asyppo::error naming the call. Only valid under nvcc;
// link asyppo::nccl.
#pragma once

#if !defined(__CUDACC__)
#error "asyppo/comm/nccl.cuh needs nvcc (link asyppo::nccl)"
#endif

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "asyppo/config.hpp"
#include "asyppo/error.hpp"

namespace asyppo {

class nccl_comm {
 public:
  /// Wraps an initialised communicator (not owned); collectives run on `stream`.
  nccl_comm(ncclComm_t comm, cudaStream_t stream) : stream_(stream) {
    state_ = std::make_shared<state>();
    state_->comm = comm;
    query();
  }

  /// Creates (and owns) the communicator of rank `rank` among `size`, from a unique id that rank 0
  /// obtained with ncclGetUniqueId and every rank received.
  static nccl_comm init(int rank, int size, const ncclUniqueId& id, cudaStream_t stream) {
    ncclComm_t c = nullptr;
    check(ncclCommInitRank(&c, size, id, rank), "ncclCommInitRank");
    nccl_comm n(c, stream);
    n.state_->owned = true;
    return n;
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  cudaStream_t stream() const { return stream_; }
  ncclComm_t native() const { return state_->comm; }

  template <class T>
  void allreduce_sum(T* data, index_t n) const {
    static_assert(std::is_arithmetic_v<T>, "allreduce_sum of arithmetic values");
    if (n <= 0) return;
    if constexpr (std::is_integral_v<T> && sizeof(T) == 8) {
      device_copy<T> d(n, stream_);
      to_device(d.p, data, n);
      check(ncclAllReduce(d.p, d.p, static_cast<std::size_t>(n), std::is_signed_v<T> ? ncclInt64 : ncclUint64, ncclSum,
                          state_->comm, stream_),
            "ncclAllReduce");
      to_host(data, d.p, n);
    } else {
      std::vector<T> all(static_cast<std::size_t>(n) * static_cast<std::size_t>(size_));
      allgather(data, n, all.data());
      for (index_t i = 0; i < n; ++i) {
        T s = T(0);
        for (int r = 0; r < size_; ++r) s += all[static_cast<std::size_t>(r) * static_cast<std::size_t>(n) + static_cast<std::size_t>(i)];
        data[i] = s;
      }
    }
  }

  template <class T>
  T exclusive_scan_sum(T v) const {
    std::vector<T> all(static_cast<std::size_t>(size_));
    allgather(&v, 1, all.data());
    T s = T(0);
    for (int r = 0; r < rank_; ++r) s += all[static_cast<std::size_t>(r)];
    return s;
  }

  template <class T>
  void allgather(const T* in, index_t n, T* out) const {
    static_assert(std::is_trivially_copyable_v<T>, "allgather of trivially copyable values");
    if (n <= 0) return;
    const std::size_t bytes = static_cast<std::size_t>(n) * sizeof(T);
    device_copy<unsigned char> d(static_cast<index_t>(bytes) * (size_ + 1), stream_);
    unsigned char* send = d.p + bytes * static_cast<std::size_t>(size_);
    check_cuda(cudaMemcpyAsync(send, in, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    check(ncclAllGather(send, d.p, bytes, ncclUint8, state_->comm, stream_), "ncclAllGather");
    check_cuda(cudaMemcpyAsync(out, d.p, bytes * static_cast<std::size_t>(size_), cudaMemcpyDeviceToHost, stream_),
               "cudaMemcpyAsync");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

 private:
  struct state {
    ncclComm_t comm = nullptr;
    bool owned = false;
    ~state() {
      if (owned && comm) ncclCommDestroy(comm);
    }
  };

  template <class T>
  struct device_copy {  // a stream-ordered device staging buffer
    T* p = nullptr;
    cudaStream_t s;
    device_copy(index_t n, cudaStream_t st) : s(st) {
      check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&p), static_cast<std::size_t>(n) * sizeof(T), s),
                 "cudaMallocAsync");
    }
    ~device_copy() { cudaFreeAsync(p, s); }
    device_copy(const device_copy&) = delete;
    device_copy& operator=(const device_copy&) = delete;
  };

  template <class T>
  void to_device(T* d, const T* h, index_t n) const {
    check_cuda(cudaMemcpyAsync(d, h, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyHostToDevice, stream_),
               "cudaMemcpyAsync");
  }
  template <class T>
  void to_host(T* h, const T* d, index_t n) const {
    check_cuda(cudaMemcpyAsync(h, d, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyDeviceToHost, stream_),
               "cudaMemcpyAsync");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  void query() {
    check(ncclCommUserRank(state_->comm, &rank_), "ncclCommUserRank");
    check(ncclCommCount(state_->comm, &size_), "ncclCommCount");
  }

  static void check(ncclResult_t r, const char* call) {
    if (r != ncclSuccess) detail::fail("asyppo::nccl_comm", call, ncclGetErrorString(r));
  }
  static void check_cuda(cudaError_t e, const char* call) {
    if (e != cudaSuccess) detail::fail("asyppo::nccl_comm", call, cudaGetErrorString(e));
  }

  std::shared_ptr<state> state_;
  cudaStream_t stream_ = nullptr;
  int rank_ = 0, size_ = 1;
};

}  // namespace asyppo
