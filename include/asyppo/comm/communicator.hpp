// asyppo/comm/communicator.hpp: the communicator contract, and the single-process one.
//
// Batch-level statistics (valid-token counts, whitening moments, order statistics of the
// critics' std, group statistics) must be the statistics of the whole batch, which may be
// spread over data-parallel ranks. Every algorithm that computes one takes a communicator
// (default: single_process) and calls only these collective operations, on host memory:
//
//   rank(), size()
//   allreduce_sum(T* data, n)        element-wise sum over ranks, in place (integers exact;
//                                    floating point summed in rank order, so deterministic)
//   exclusive_scan_sum(T v) -> T     sum of v over ranks below this one (global token offsets)
//   allgather(const T* in, n, T* out) out = concatenation of every rank's n values, by rank
//
// Integer reductions are exact, so count-based results (mask counts, selected thresholds)
// are identical to the single-process result whatever the partition. Multi-process
// implementations (MPI, NCCL) live in their own headers behind their own CMake components.
#pragma once

#include <concepts>
#include <cstdint>
#include <cstring>

#include "asyppo/config.hpp"

namespace asyppo {

/// The default communicator: one process holds the whole batch.
struct single_process {
  int rank() const { return 0; }
  int size() const { return 1; }
  template <class T>
  void allreduce_sum(T*, index_t) const {}
  template <class T>
  T exclusive_scan_sum(T) const {
    return T{};
  }
  template <class T>
  void allgather(const T* in, index_t n, T* out) const {
    if (n > 0 && in != out) std::memcpy(out, in, static_cast<std::size_t>(n) * sizeof(T));
  }
};

template <class C>
concept Communicator = requires(const C& c, std::uint64_t* u, double* d, index_t n) {
  { c.rank() } -> std::convertible_to<int>;
  { c.size() } -> std::convertible_to<int>;
  { c.allreduce_sum(u, n) };
  { c.allreduce_sum(d, n) };
  { c.exclusive_scan_sum(std::uint64_t{}) } -> std::same_as<std::uint64_t>;
  { c.allgather(d, n, d) };
  { c.allgather(static_cast<const std::int64_t*>(nullptr), n, static_cast<std::int64_t*>(nullptr)) };
};

static_assert(Communicator<single_process>);

}  // namespace asyppo
