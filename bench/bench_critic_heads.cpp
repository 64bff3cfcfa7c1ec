// bench/bench_critic_heads.cpp: the critics' value heads (core/critic_heads.hpp) on the CPU backend,
// K = 2 trunks of N tokens x D hidden units in float, against two baselines in the same process:
// plain loops (one double accumulator per output; "naive") and Eigen's float GEMV ("eigen", the
// products a caller would otherwise write: V_k = H_k w_k, dW_k = H_k^T g_k, dH_k = g_k w_k^T).
//
// Bytes per call (the minimum traffic): forward reads H (K N D floats) and writes V (K N);
// backward reads H and G and writes dH (K N D) and dW, dc. The heads are memory-bound: compare
// bytes_per_second with membw/* of the same run.
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include <random>
#include <string>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "asyppo/core/critic_heads.hpp"
#include "common.hpp"

using namespace asyppo;

namespace {

constexpr int kK = 2;

struct heads_data {
  index_t N, D;
  std::vector<float> h, w, c, g, v, dw, dc, dh;
  heads_data(index_t n, index_t d) : N(n), D(d) {
    std::mt19937_64 rng(3);
    std::uniform_real_distribution<float> u(-1, 1);
    auto fill = [&](std::vector<float>& x, std::size_t size) {
      x.resize(size);
      for (auto& e : x) e = u(rng);
    };
    fill(h, std::size_t(kK) * N * D);
    fill(w, std::size_t(kK) * D);
    fill(c, kK);
    fill(g, std::size_t(kK) * N);
    v.assign(std::size_t(kK) * N, 0);
    dw.assign(std::size_t(kK) * D, 0);
    dc.assign(kK, 0);
    dh.assign(h.size(), 0);
  }
  view<const float, 3> hidden() const { return {h.data(), kK, N, D}; }
  view<const float, 2> weight() const { return {w.data(), kK, D}; }
};

heads_data& data(index_t N, index_t D) {
  static std::vector<std::unique_ptr<heads_data>> all;
  for (auto& p : all)
    if (p->N == N && p->D == D) return *p;
  all.push_back(std::make_unique<heads_data>(N, D));
  return *all.back();
}

double forward_bytes(index_t N, index_t D) { return 4.0 * kK * (double(N) * D + N + D); }
double backward_bytes(index_t N, index_t D) { return 4.0 * kK * (2.0 * N * D + N + D); }

void lib_forward(benchmark::State& st, index_t N, index_t D, int threads) {
  heads_data& x = data(N, D);
  const cpu_backend be(threads);
  for (auto _ : st) {
    critic_heads_forward(be, x.hidden(), x.weight(), seq_view<const float>(x.c.data(), kK),
                         view<float, 2>(x.v.data(), kK, N));
    benchmark::DoNotOptimize(x.v.data());
  }
  asyppo_bench::set_counters(st, forward_bytes(N, D), double(kK) * N);
}

void lib_backward(benchmark::State& st, index_t N, index_t D, int threads) {
  heads_data& x = data(N, D);
  const cpu_backend be(threads);
  for (auto _ : st) {
    critic_heads_backward(be, x.hidden(), x.weight(), view<const float, 2>(x.g.data(), kK, N),
                          critic_head_gradients<float>{{x.dw.data(), kK, D}, {x.dc.data(), kK}, {x.dh.data(), kK, N, D}});
    benchmark::DoNotOptimize(x.dh.data());
  }
  asyppo_bench::set_counters(st, backward_bytes(N, D), double(kK) * N);
}

void naive_forward(benchmark::State& st, index_t N, index_t D) {
  heads_data& x = data(N, D);
  for (auto _ : st) {
    for (int k = 0; k < kK; ++k)
      for (index_t n = 0; n < N; ++n) {
        double s = x.c[k];
        for (index_t d = 0; d < D; ++d) s += double(x.h[(k * N + n) * D + d]) * double(x.w[k * D + d]);
        x.v[k * N + n] = float(s);
      }
    benchmark::DoNotOptimize(x.v.data());
  }
  asyppo_bench::set_counters(st, forward_bytes(N, D), double(kK) * N);
}

void naive_backward(benchmark::State& st, index_t N, index_t D) {
  heads_data& x = data(N, D);
  std::vector<double> acc(static_cast<std::size_t>(D));
  for (auto _ : st) {
    for (int k = 0; k < kK; ++k) {
      std::fill(acc.begin(), acc.end(), 0.0);
      double sc = 0;
      for (index_t n = 0; n < N; ++n) {
        const double gn = x.g[k * N + n];
        sc += gn;
        for (index_t d = 0; d < D; ++d) {
          acc[d] += gn * double(x.h[(k * N + n) * D + d]);
          x.dh[(k * N + n) * D + d] = float(gn * double(x.w[k * D + d]));
        }
      }
      for (index_t d = 0; d < D; ++d) x.dw[k * D + d] = float(acc[d]);
      x.dc[k] = float(sc);
    }
    benchmark::DoNotOptimize(x.dh.data());
  }
  asyppo_bench::set_counters(st, backward_bytes(N, D), double(kK) * N);
}

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

void eigen_forward(benchmark::State& st, index_t N, index_t D) {
  heads_data& x = data(N, D);
  for (auto _ : st) {
    for (int k = 0; k < kK; ++k) {
      Eigen::Map<const RowMat> H(x.h.data() + k * N * D, N, D);
      Eigen::Map<const Eigen::VectorXf> w(x.w.data() + k * D, D);
      Eigen::Map<Eigen::VectorXf> v(x.v.data() + k * N, N);
      v.noalias() = H * w;
      v.array() += x.c[k];
    }
    benchmark::DoNotOptimize(x.v.data());
  }
  asyppo_bench::set_counters(st, forward_bytes(N, D), double(kK) * N);
}

void eigen_backward(benchmark::State& st, index_t N, index_t D) {
  heads_data& x = data(N, D);
  for (auto _ : st) {
    for (int k = 0; k < kK; ++k) {
      Eigen::Map<const RowMat> H(x.h.data() + k * N * D, N, D);
      Eigen::Map<const Eigen::VectorXf> w(x.w.data() + k * D, D), g(x.g.data() + k * N, N);
      Eigen::Map<Eigen::VectorXf> dw(x.dw.data() + k * D, D);
      Eigen::Map<RowMat> dH(x.dh.data() + k * N * D, N, D);
      dw.noalias() = H.transpose() * g;
      x.dc[k] = g.sum();
      dH.noalias() = g * w.transpose();
    }
    benchmark::DoNotOptimize(x.dh.data());
  }
  asyppo_bench::set_counters(st, backward_bytes(N, D), double(kK) * N);
}

void register_all() {
  const std::pair<index_t, index_t> shapes[] = {{8192, 1024}, {2048, 4096}};
  for (const auto& [N, D] : shapes) {
    asyppo_bench::register_lib_and_naive("heads_forward", N, D, 0.3, lib_forward, naive_forward);
    asyppo_bench::register_lib_and_naive("heads_backward", N, D, 0.3, lib_backward, naive_backward);
    const std::string dims = std::to_string(N) + "x" + std::to_string(D);
    benchmark::RegisterBenchmark(("heads_forward/" + dims + "/eigen").c_str(), eigen_forward, N, D)
        ->UseRealTime()->MinTime(0.3)->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("heads_backward/" + dims + "/eigen").c_str(), eigen_backward, N, D)
        ->UseRealTime()->MinTime(0.3)->Unit(benchmark::kMicrosecond);
  }
  asyppo_bench::register_membw();
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
