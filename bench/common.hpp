// bench/common.hpp: what the benchmark executables of asyppo share: the byte/item counters, the
// registration of "library at 1 and 2 threads + naive baseline" benchmark families, and the
// machine's streaming bandwidth measured in the same run.
//
// Streaming kernels over 64 MiB float arrays, split into contiguous parts per std::thread. Bytes:
// copy 2 x 64 MiB (read a, write b), read 64 MiB (sum of a), add 3 x 64 MiB (c = a + b).
// Write-allocate traffic is not counted (as STREAM). register_membw() adds membw/{copy,read,add}
// at 1 and 2 threads.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "asyppo/config.hpp"

namespace asyppo_bench {

/// bytes_per_second and items_per_second from per-iteration bytes and items.
inline void set_counters(benchmark::State& st, double bytes, double items) {
  st.counters["bytes_per_second"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["items_per_second"] = benchmark::Counter(items, benchmark::Counter::kIsIterationInvariantRate);
}

inline constexpr std::size_t kBwElems = std::size_t(64) << 18;  // 16 Mi floats = 64 MiB

struct bw_arrays {
  std::vector<float> a, b, c;
  bw_arrays() : a(kBwElems, 1.0f), b(kBwElems, 2.0f), c(kBwElems, 0.0f) {}
};
inline bw_arrays& bw() {
  static bw_arrays arr;
  return arr;
}

enum class bw_kind { copy, read, add };

template <class Body>
void run_threads(int threads, Body body) {
  std::vector<std::thread> pool;
  for (int p = 1; p < threads; ++p) pool.emplace_back([&, p] { body(p, threads); });
  body(0, threads);
  for (auto& t : pool) t.join();
}

inline void BM_membw(benchmark::State& st, bw_kind kind, int threads) {
  bw_arrays& m = bw();
  float* a = m.a.data();
  float* b = m.b.data();
  float* c = m.c.data();
  std::vector<double> sums(static_cast<std::size_t>(threads));
  for (auto _ : st) {
    run_threads(threads, [&](int p, int parts) {
      const std::size_t lo = kBwElems * p / parts, hi = kBwElems * (p + 1) / parts;
      if (kind == bw_kind::copy) {
        for (std::size_t i = lo; i < hi; ++i) b[i] = a[i];
      } else if (kind == bw_kind::add) {
        for (std::size_t i = lo; i < hi; ++i) c[i] = a[i] + b[i];
      } else {
        // 32 independent lanes: vectorises without -ffast-math and hides the add latency.
        float acc[32] = {};
        std::size_t i = lo;
        for (; i + 32 <= hi; i += 32)
          for (int j = 0; j < 32; ++j) acc[j] += a[i + j];
        for (; i < hi; ++i) acc[0] += a[i];
        double total = 0;
        for (float x : acc) total += x;
        sums[static_cast<std::size_t>(p)] = total;
      }
    });
    benchmark::DoNotOptimize(sums.data());
    benchmark::ClobberMemory();
  }
  const double arr = double(kBwElems * sizeof(float));
  const double bytes = kind == bw_kind::copy ? 2 * arr : kind == bw_kind::add ? 3 * arr : arr;
  set_counters(st, bytes, double(kBwElems));
}

/// Registers name/BxT/asyppo/threads:{1,2} (lib(state, B, T, threads)) and name/BxT/naive
/// (naive(state, B, T)), both in real time.
template <class Lib, class Naive>
void register_lib_and_naive(const char* name, asyppo::index_t B, asyppo::index_t T, double min_time, Lib lib,
                            Naive naive) {
  const std::string dims = std::to_string(B) + "x" + std::to_string(T);
  for (int th : {1, 2})
    benchmark::RegisterBenchmark((std::string(name) + "/" + dims + "/asyppo/threads:" + std::to_string(th)).c_str(), lib,
                                 B, T, th)
        ->UseRealTime()
        ->MinTime(min_time)
        ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark((std::string(name) + "/" + dims + "/naive").c_str(), naive, B, T)
      ->UseRealTime()
      ->MinTime(min_time)
      ->Unit(benchmark::kMicrosecond);
}

inline void register_membw() {
  const std::pair<const char*, bw_kind> kinds[] = {{"copy", bw_kind::copy}, {"read", bw_kind::read}, {"add", bw_kind::add}};
  for (const auto& [name, k] : kinds)
    for (int th : {1, 2})
      benchmark::RegisterBenchmark((std::string("membw/") + name + "/64MiB/threads:" + std::to_string(th)).c_str(),
                                   BM_membw, k, th)
          ->UseRealTime()
          ->MinTime(0.3)
          ->Unit(benchmark::kMicrosecond);
}

}  // namespace asyppo_bench
