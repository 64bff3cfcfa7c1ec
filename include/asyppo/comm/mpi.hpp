// asyppo/comm/mpi.hpp: asyppo::mpi_comm, the communicator contract (comm/communicator.hpp) over
// MPI, on host memory. Needs the asyppo::mpi CMake component (ASYPPO_ENABLE_MPI); no core header
// includes MPI.
//
// What it computes, for a communicator of R ranks (rank r holds the local part of the batch):
//   rank(), size()                   MPI_Comm_rank / MPI_Comm_size (read once, at construction)
//   allreduce_sum(T* data, n)        in place, element-wise sum over ranks, identical on every rank:
//     integers (any width): MPI_Allreduce(MPI_SUM), exact (modulo 2^bits, as the C++ type);
//     float/double: MPI_Allgather of every rank's n values, then each element summed on the host
//       in rank order, ((x_0 + x_1) + x_2) + ..., in T. MPI_SUM's evaluation order on floating
//       point is unspecified (it may depend on the algorithm MPI picks, the message size or the
//       rank layout, and need not even agree across ranks), so it is not used: this way the
//       result is bit-identical run to run, on every rank, for a given R and partition, and with
//       R = 1 it is x_0 exactly. Cost O(R n) received per rank: meant for the short statistics
//       vectors the library reduces (a handful of doubles), not for bulk data.
//   exclusive_scan_sum(v) -> T       sum of v over ranks 0..r-1 (rank 0 gets T{} = 0): MPI_Exscan for
//                                    integers; float/double through MPI_Allgather and a rank-order sum.
//   allgather(in, n, out)            out[q*n .. q*n+n) = rank q's in[0..n), MPI_Allgather. Every rank
//                                    passes the same n. in may alias out (it is copied first).
// Supported T: arithmetic types (integers of 1, 2, 4 or 8 bytes, float, double); allgather also
// takes any trivially copyable T (sent as bytes; homogeneous clusters only).
//
// Guarantees: integer results (valid-token counts, radix-selection histograms, tie offsets, loss
// counts) are exact, so every count-based result of the library (uncertainty masks, thresholds,
// quantiles, mask counts, loss normalisers) is bit-identical to the single-process result on the
// concatenated batch (ranks in rank order, rows in local order) for any partition. Floating-point
// results (whitening moments, summary moments, group statistics, summed losses) are deterministic
// and identical on every rank, and differ from the single-process result only by the association
// of their sums (per-rank partial sums, merged in rank order): in double a few ulps of the result
// relative to its scale; outputs stored as float may differ by one float rounding (1 ulp).
//
// Value object: copies share the same MPI_Comm. mpi_comm(c) does NOT own c (default
// MPI_COMM_WORLD): the caller keeps it alive and frees it. mpi_comm::duplicate(c) makes an owned
// MPI_Comm_dup of c (freed when the last copy goes away, unless MPI is finalised by then), whose
// traffic cannot mix with the caller's own messages on c, and sets MPI_ERRORS_RETURN on it.
// Errors: every MPI return code is checked; a failure throws asyppo::error("asyppo::mpi_comm",
// "<MPI call>", <MPI's error string>). MPI only returns error codes when the communicator's error
// handler is MPI_ERRORS_RETURN; under the default MPI_ERRORS_ARE_FATAL, MPI aborts the job itself.
// Counts above INT_MAX, and MPI not initialised (or already finalised), throw asyppo::error too.
// Collectives: every rank must make the same calls in the same order. The library's input checks
// are local, so a rank that throws on bad input leaves the others waiting in their next
// collective: validate inputs identically on every rank, or MPI_Abort on an exception.
// Thread safety: like the MPI_Comm it wraps (no concurrent collectives on one communicator).
#pragma once

#include <mpi.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "asyppo/comm/communicator.hpp"
#include "asyppo/config.hpp"
#include "asyppo/error.hpp"

namespace asyppo {

namespace detail {

[[noreturn]] inline void mpi_fail(const char* call, int code) {
  char msg[MPI_MAX_ERROR_STRING + 1] = {};
  int len = 0;
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) len = 0;
  msg[len < 0 ? 0 : (len > MPI_MAX_ERROR_STRING ? MPI_MAX_ERROR_STRING : len)] = '\0';
  fail("asyppo::mpi_comm", call, "MPI error ", code, len > 0 ? ": " : "", msg);
}

inline void mpi_check(const char* call, int code) {
  if (code != MPI_SUCCESS) mpi_fail(call, code);
}

/// MPI datatype of an arithmetic T.
template <class T>
MPI_Datatype mpi_datatype() {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) {
    if constexpr (sizeof(T) == 1) return MPI_INT8_T;
    else if constexpr (sizeof(T) == 2) return MPI_INT16_T;
    else if constexpr (sizeof(T) == 4) return MPI_INT32_T;
    else {
      static_assert(sizeof(T) == 8, "asyppo::mpi_comm: unsupported integer width");
      return MPI_INT64_T;
    }
  } else if constexpr (std::is_integral_v<T>) {
    if constexpr (sizeof(T) == 1) return MPI_UINT8_T;
    else if constexpr (sizeof(T) == 2) return MPI_UINT16_T;
    else if constexpr (sizeof(T) == 4) return MPI_UINT32_T;
    else {
      static_assert(sizeof(T) == 8, "asyppo::mpi_comm: unsupported integer width");
      return MPI_UINT64_T;
    }
  } else {
    static_assert(sizeof(T) == 0, "asyppo::mpi_comm: unsupported element type (float, double or an integer)");
    return MPI_DATATYPE_NULL;
  }
}

inline int mpi_count(const char* call, index_t n) {
  if (n < 0 || n > INT_MAX)
    fail("asyppo::mpi_comm", call, "count ", n, " is outside [0, INT_MAX] (split the call)");
  return static_cast<int>(n);
}

}  // namespace detail

class mpi_comm {
 public:
  /// Wraps comm without owning it. Throws asyppo::error if MPI is not initialised (or finalised),
  /// if comm is MPI_COMM_NULL, or if MPI_Comm_rank / MPI_Comm_size fail.
  explicit mpi_comm(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) { init(); }

  /// An owned duplicate of comm (MPI_Comm_dup, collective over comm) with MPI_ERRORS_RETURN, so
  /// MPI errors become asyppo::error; freed by the last copy (skipped after MPI_Finalize).
  static mpi_comm duplicate(MPI_Comm comm = MPI_COMM_WORLD) {
    check_initialized();
    if (comm == MPI_COMM_NULL) detail::fail("asyppo::mpi_comm", "comm", "is MPI_COMM_NULL");
    MPI_Comm dup = MPI_COMM_NULL;
    detail::mpi_check("MPI_Comm_dup", MPI_Comm_dup(comm, &dup));
    auto owner = std::shared_ptr<MPI_Comm>(new MPI_Comm(dup), [](MPI_Comm* c) {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized && *c != MPI_COMM_NULL) MPI_Comm_free(c);  // never throws from a deleter
      delete c;
    });
    detail::mpi_check("MPI_Comm_set_errhandler", MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN));
    mpi_comm out(dup);
    out.owner_ = std::move(owner);
    return out;
  }

  MPI_Comm get() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }

  /// Element-wise sum over ranks, in place (see the header comment for the float order).
  template <class T>
  void allreduce_sum(T* data, index_t n) const {
    static_assert(std::is_arithmetic_v<T>, "asyppo::mpi_comm::allreduce_sum needs an arithmetic type");
    if (n == 0) return;
    if constexpr (std::is_floating_point_v<T>) {
      const int cnt = detail::mpi_count("MPI_Allgather", n);
      std::vector<T> all(static_cast<std::size_t>(n) * static_cast<std::size_t>(size_));
      detail::mpi_check("MPI_Allgather", MPI_Allgather(data, cnt, detail::mpi_datatype<T>(), all.data(), cnt,
                                                       detail::mpi_datatype<T>(), comm_));
      for (index_t i = 0; i < n; ++i) {
        T acc = all[static_cast<std::size_t>(i)];
        for (int q = 1; q < size_; ++q) acc += all[static_cast<std::size_t>(q) * static_cast<std::size_t>(n) + static_cast<std::size_t>(i)];
        data[i] = acc;
      }
    } else {
      const int cnt = detail::mpi_count("MPI_Allreduce", n);
      detail::mpi_check("MPI_Allreduce", MPI_Allreduce(MPI_IN_PLACE, data, cnt, detail::mpi_datatype<T>(), MPI_SUM, comm_));
    }
  }

  /// Sum of v over the ranks below this one; rank 0 gets T{}.
  template <class T>
  T exclusive_scan_sum(T v) const {
    static_assert(std::is_arithmetic_v<T>, "asyppo::mpi_comm::exclusive_scan_sum needs an arithmetic type");
    if constexpr (std::is_floating_point_v<T>) {
      std::vector<T> all(static_cast<std::size_t>(size_));
      detail::mpi_check("MPI_Allgather",
                        MPI_Allgather(&v, 1, detail::mpi_datatype<T>(), all.data(), 1, detail::mpi_datatype<T>(), comm_));
      T acc{};
      for (int q = 0; q < rank_; ++q) acc = q == 0 ? all[0] : acc + all[static_cast<std::size_t>(q)];
      return acc;
    } else {
      T out{};
      detail::mpi_check("MPI_Exscan", MPI_Exscan(&v, &out, 1, detail::mpi_datatype<T>(), MPI_SUM, comm_));
      return rank_ == 0 ? T{} : out;  // MPI leaves rank 0's result undefined
    }
  }

  /// out = concatenation of every rank's n values, in rank order (n equal on every rank).
  template <class T>
  void allgather(const T* in, index_t n, T* out) const {
    static_assert(std::is_trivially_copyable_v<T>, "asyppo::mpi_comm::allgather needs a trivially copyable type");
    const int cnt = detail::mpi_count("MPI_Allgather", std::is_arithmetic_v<T> ? n : n * static_cast<index_t>(sizeof(T)));
    const std::size_t bytes = static_cast<std::size_t>(n) * sizeof(T);
    const std::size_t total = bytes * static_cast<std::size_t>(size_);
    std::vector<unsigned char> copy;
    const void* send = in;
    // MPI forbids overlapping send and receive buffers: send a copy when they overlap.
    const auto* ib = reinterpret_cast<const unsigned char*>(in);
    const auto* ob = reinterpret_cast<const unsigned char*>(out);
    if (bytes > 0 && ib < ob + total && ob < ib + bytes) {
      copy.assign(ib, ib + bytes);
      send = copy.data();
    }
    if constexpr (std::is_arithmetic_v<T>) {
      detail::mpi_check("MPI_Allgather", MPI_Allgather(send, cnt, detail::mpi_datatype<T>(), out, cnt,
                                                       detail::mpi_datatype<T>(), comm_));
    } else {
      detail::mpi_check("MPI_Allgather", MPI_Allgather(send, cnt, MPI_BYTE, out, cnt, MPI_BYTE, comm_));
    }
  }

 private:
  static void check_initialized() {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin)
      detail::fail("asyppo::mpi_comm", "MPI", init ? "MPI is already finalised" : "MPI is not initialised (call MPI_Init first)");
  }
  void init() {
    check_initialized();
    if (comm_ == MPI_COMM_NULL) detail::fail("asyppo::mpi_comm", "comm", "is MPI_COMM_NULL");
    detail::mpi_check("MPI_Comm_rank", MPI_Comm_rank(comm_, &rank_));
    detail::mpi_check("MPI_Comm_size", MPI_Comm_size(comm_, &size_));
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::shared_ptr<MPI_Comm> owner_;  // set by duplicate(): frees the duplicate
};

static_assert(Communicator<mpi_comm>);

}  // namespace asyppo
