// tests/support/round_trip_backend.hpp: the CPU backend posing as a device backend, counting host
// round trips.
//
// host_memory = false makes the algorithms take the paths they take on a GPU (temporaries through
// allocate, results through copy_to_host), so those paths run in CI; every pattern call that hands a
// value to the host (reduce, collect, copy_to_host) is counted (reduce_to, whose sink runs on the
// device, is not). On the CUDA backend each of them
// waits for the stream, and a call that makes none can be captured in a CUDA graph: the tests assert
// which entry points make none, and docs/architecture.md lists the counts of the others.
#pragma once

#include <memory>
#include <vector>

#include "asyppo/backend/cpu.hpp"

namespace asyppo_test {

class round_trip_backend : public asyppo::cpu_backend {
 public:
  using index_t = asyppo::index_t;
  static constexpr bool host_memory = false;  // the device paths of the algorithms
  explicit round_trip_backend(int threads = 1) : cpu_backend(threads) {}

  int round_trips() const { return *trips_; }
  void reset() const { *trips_ = 0; }

  template <class R>
  typename R::value_type reduce(index_t n, R r) const {
    ++*trips_;
    return cpu_backend::reduce(n, r);
  }
  template <class R>
  typename R::value_type reduce(index_t rows, index_t cols, R r) const {
    ++*trips_;
    return cpu_backend::reduce(rows, cols, r);
  }
  template <class R, class Range>
  typename R::value_type reduce(index_t rows, index_t cols, R r, Range range) const {
    ++*trips_;
    return cpu_backend::reduce(rows, cols, r, range);
  }
  template <class V, class Pick>
  std::vector<V> collect(index_t rows, index_t cols, Pick pick) const {
    ++*trips_;
    return cpu_backend::template collect<V>(rows, cols, pick);
  }
  template <class V, class Pick, class Range>
  std::vector<V> collect(index_t rows, index_t cols, Pick pick, Range range) const {
    ++*trips_;
    return cpu_backend::template collect<V>(rows, cols, pick, range);
  }
  /// The device-side reduce (backend/patterns.hpp, reduce_to): the sink runs "on the device", so it is
  /// no round trip.
  template <class R, class Range, class Sink>
  void reduce_to(index_t rows, index_t cols, R r, Range range, Sink sink) const {
    sink(cpu_backend::reduce(rows, cols, r, range));
  }
  template <class T>
  void copy_to_host(const T* src, index_t n, T* dst) const {
    ++*trips_;
    cpu_backend::copy_to_host(src, n, dst);
  }

 private:
  std::shared_ptr<int> trips_ = std::make_shared<int>(0);
};

}  // namespace asyppo_test
