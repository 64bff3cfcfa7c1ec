// bench_advantage: Google Benchmark of the advantage-side algorithms on the CPU backend.
//
// Shapes B x T = 64 x 512 and 256 x 4096, K = 2 critics, float, synthetic rollout batch (long-tailed
// response lengths, a few truncated at T, observation holes, 0/1 outcome reward on the last valid
// token, noisy critics). For each algorithm:
//   <algo>/<B>x<T>/asyppo/threads:1 and threads:2   the library call (cpu_backend(threads))
//   <algo>/<B>x<T>/naive                             a plain single-threaded loop version written the
//                                                    obvious way (separate passes, std::sort, std::map)
// plus step_part/... (the pieces of the one-call step, 256 x 4096), select_resident/... (the resident
// selection alone at two digit widths) and membw/... (streaming kernels over 64 MB arrays with 1 and 2
// std::threads) so results can be put against the machine's bandwidth.
//
// Counters:
//   bytes_per_second  minimum bytes that must be streamed / real time, i.e. every input read once plus
//                     every output written once (formula per benchmark below; s = sizeof(float) = 4,
//                     BT = B*T, masks are 1 byte, group ids 8 bytes). Temporaries are not counted.
//   items_per_second  tokens (B*T) per second; shard_weights: sequences (B) per second.
// All benchmarks use real time (UseRealTime), so multi-threaded runs are measured by wall clock.
// A correctness cross-check of library vs naive runs once at start-up and prints to stderr.
#include <benchmark/benchmark.h>

#include "common.hpp"
#include "synthetic_rollout.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "asyppo/asyppo.hpp"

namespace {

using asyppo_bench::set_counters;

using asyppo::index_t;
using F = float;

constexpr index_t kK = 2;
constexpr int kGroup = 8;  // responses per prompt

// ---------------------------------------------------------------------------------------------
// Synthetic batch (same recipe as examples/advantage_step_example.cpp, fixed seed).
struct batch : asyppo_bench::rollout {
  std::vector<F> sigma;  // [B,T] critic std (input of the mask benchmarks)
  std::vector<F> adv;    // [B,T] GAE advantages (input of the whitening benchmarks)
};

void naive_ensemble(const batch& d, F* mean, F* sd);
void naive_gae(const batch& d, F* adv, F* ret, F* sd, std::vector<F>& mean_tmp);

batch make_batch(index_t B, index_t T, std::uint64_t seed = 1) {
  batch d;
  static_cast<asyppo_bench::rollout&>(d) = asyppo_bench::make_rollout(B, T, kK, kGroup, seed);
  const index_t BT = B * T;
  d.sigma.resize(static_cast<std::size_t>(BT));
  d.adv.resize(static_cast<std::size_t>(BT));
  std::vector<F> mean(static_cast<std::size_t>(BT)), ret(static_cast<std::size_t>(BT));
  naive_gae(d, d.adv.data(), ret.data(), d.sigma.data(), mean);
  return d;
}

const batch& get_batch(index_t B, index_t T) {
  static std::map<std::pair<index_t, index_t>, std::unique_ptr<batch>> cache;
  auto& p = cache[{B, T}];
  if (!p) p = std::make_unique<batch>(make_batch(B, T));
  return *p;
}

// Views over a batch.
asyppo::critic_view<const F> values_of(const batch& d) { return {d.values.data(), d.K, d.B, d.T}; }
asyppo::token_view<const F> tokens(const std::vector<F>& v, const batch& d) { return {v.data(), d.B, d.T}; }
asyppo::mask_view mask_of(const batch& d) { return {d.mask.data(), d.B, d.T}; }
asyppo::seq_view<const std::int64_t> ids_of(const batch& d) { return {d.ids.data(), d.B}; }

// ---------------------------------------------------------------------------------------------
// Naive baselines: plain single-threaded loops, the way a user would write them.

// Mean pass, then std pass (population), 0 on masked tokens.
void naive_ensemble(const batch& d, F* mean, F* sd) {
  const index_t BT = d.B * d.T;
  for (index_t i = 0; i < BT; ++i) {
    if (!d.mask[i]) {
      mean[i] = 0;
      continue;
    }
    float s = 0;
    for (index_t k = 0; k < d.K; ++k) s += d.values[k * BT + i];
    mean[i] = s / static_cast<float>(d.K);
  }
  for (index_t i = 0; i < BT; ++i) {
    if (!d.mask[i]) {
      sd[i] = 0;
      continue;
    }
    float q = 0;
    for (index_t k = 0; k < d.K; ++k) {
      const float e = d.values[k * BT + i] - mean[i];
      q += e * e;
    }
    sd[i] = std::sqrt(q / static_cast<float>(d.K));
  }
}

// verl-style GAE per row (reverse loop, carried next value / last advantage, masked tokens keep the
// carry), actor and critic lambdas, on the ensemble mean; std in the ensemble pass. gamma = lambda = 1.
void naive_gae(const batch& d, F* adv, F* ret, F* sd, std::vector<F>& mean) {
  naive_ensemble(d, mean.data(), sd);
  const float gamma = 1.0f, lam_a = 1.0f, lam_c = 1.0f;
  for (index_t b = 0; b < d.B; ++b) {
    float nextv = 0, last_a = 0, last_c = 0;
    for (index_t t = d.T - 1; t >= 0; --t) {
      const index_t i = b * d.T + t;
      if (d.mask[i]) {
        const float v = mean[i];
        const float delta = d.rewards[i] + gamma * nextv - v;
        last_a = delta + gamma * lam_a * last_a;
        last_c = delta + gamma * lam_c * last_c;
        nextv = v;
        adv[i] = last_a;
        ret[i] = last_c + v;
      } else {
        adv[i] = 0;
        ret[i] = 0;
      }
    }
  }
}

struct naive_mask_result {
  std::int64_t n = 0, nk = 0, nh = 0;
  float thr_k = NAN, thr_h = NAN;
  float q[5] = {NAN, NAN, NAN, NAN, NAN};
};

// Copy the valid sigmas, std::sort them, read the thresholds (and quantiles), then write both masks
// (ties at a threshold taken in flat-index order, as the library does).
naive_mask_result naive_masks(const batch& d, const F* sigma, std::uint8_t* am, std::uint8_t* em,
                              double kfrac = 0.2, double hfrac = 0.2) {
  const index_t BT = d.B * d.T;
  std::vector<float> v;
  v.reserve(static_cast<std::size_t>(BT));
  for (index_t i = 0; i < BT; ++i)
    if (d.mask[i]) v.push_back(sigma[i]);
  std::sort(v.begin(), v.end());
  naive_mask_result r;
  r.n = static_cast<std::int64_t>(v.size());
  r.nk = static_cast<std::int64_t>(std::floor(kfrac * static_cast<double>(r.n)));
  r.nh = static_cast<std::int64_t>(std::floor(hfrac * static_cast<double>(r.n)));
  std::int64_t take_k = 0, take_h = 0;
  if (r.nk > 0) {
    r.thr_k = v[static_cast<std::size_t>(r.nk - 1)];
    take_k = r.nk - (std::lower_bound(v.begin(), v.end(), r.thr_k) - v.begin());
  }
  if (r.nh > 0) {
    r.thr_h = v[static_cast<std::size_t>(r.n - r.nh)];
    take_h = r.nh - (v.end() - std::upper_bound(v.begin(), v.end(), r.thr_h));
  }
  if (r.n > 0)
    for (int j = 0; j < 5; ++j) r.q[j] = v[static_cast<std::size_t>(std::floor(0.25 * j * static_cast<double>(r.n - 1)))];
  for (index_t i = 0; i < BT; ++i) {
    std::uint8_t a = 0, e = 0;
    if (d.mask[i]) {
      const float s = sigma[i];
      const bool low = r.nk > 0 && (s < r.thr_k || (s == r.thr_k && take_k-- > 0));
      const bool high = r.nh > 0 && (s > r.thr_h || (s == r.thr_h && take_h-- > 0));
      a = low ? 0 : 1;
      e = high ? 0 : 1;
    }
    am[i] = a;
    em[i] = e;
  }
  return r;
}

// Mean pass, variance pass (unbiased), write pass: y = (x - mean) / sqrt(var + 1e-8), 0 on masked tokens.
void naive_whiten(const batch& d, const F* x, F* y) {
  const index_t BT = d.B * d.T;
  double n = 0, s = 0;
  for (index_t i = 0; i < BT; ++i)
    if (d.mask[i]) n += 1, s += x[i];
  const double mean = n > 0 ? s / n : 0;
  double q = 0;
  for (index_t i = 0; i < BT; ++i)
    if (d.mask[i]) q += (x[i] - mean) * (x[i] - mean);
  const double var = n > 1 ? q / (n - 1) : 0;
  const float scale = static_cast<float>(1.0 / std::sqrt(var + 1e-8));
  for (index_t i = 0; i < BT; ++i) y[i] = d.mask[i] ? static_cast<float>(x[i] - mean) * scale : 0.0f;
}

// GRPO: std::map from group id to member scores, group mean / unbiased std, then broadcast.
void naive_grpo(const batch& d, F* adv) {
  std::map<std::int64_t, std::vector<float>> groups;
  for (index_t b = 0; b < d.B; ++b) groups[d.ids[b]].push_back(d.scores[b]);
  std::map<std::int64_t, std::pair<float, float>> stats;
  for (auto& [id, s] : groups) {
    float mean = 0;
    for (float x : s) mean += x;
    mean /= static_cast<float>(s.size());
    float var = 0;
    for (float x : s) var += (x - mean) * (x - mean);
    const float sd = s.size() > 1 ? std::sqrt(var / static_cast<float>(s.size() - 1)) : 1.0f;
    stats[id] = {s.size() > 1 ? mean : 0.0f, sd};
  }
  for (index_t b = 0; b < d.B; ++b) {
    const auto [mean, sd] = stats[d.ids[b]];
    const float a = (d.scores[b] - mean) / (sd + 1e-6f);
    for (index_t t = 0; t < d.T; ++t) adv[b * d.T + t] = d.mask[b * d.T + t] ? a : 0.0f;
  }
}

// Shards: std::map from group id to members, contiguous shares of n/K (the first n%K critics get one more).
void naive_shards(const batch& d, F* w) {
  std::map<std::int64_t, std::vector<index_t>> groups;
  for (index_t b = 0; b < d.B; ++b) groups[d.ids[b]].push_back(b);
  std::fill(w, w + d.K * d.B, 0.0f);
  for (auto& [id, members] : groups) {
    const index_t n = static_cast<index_t>(members.size()), q = n / d.K, e = n % d.K;
    index_t j = 0;
    for (index_t c = 0; c < d.K; ++c)
      for (index_t r = 0; r < q + (c < e ? 1 : 0); ++r) w[c * d.B + members[static_cast<std::size_t>(j++)]] = 1.0f;
  }
}

struct naive_step_buffers {
  std::vector<F> adv, ret, sd, mean, shard;
  std::vector<std::uint8_t> am, em;
  explicit naive_step_buffers(const batch& d)
      : adv(d.B * d.T), ret(d.B * d.T), sd(d.B * d.T), mean(d.B * d.T), shard(d.K * d.B), am(d.B * d.T), em(d.B * d.T) {}
};

struct naive_summary {
  double adv_mean, adv_std, ret_mean, ret_std;
  std::vector<double> ev;
};

// The whole step done naively: ensemble + GAE, sort-based masks and quantiles, apply I^A, separate
// passes for every summary moment, explained variance per critic, shards.
naive_summary naive_step(const batch& d, naive_step_buffers& o) {
  const index_t BT = d.B * d.T;
  naive_gae(d, o.adv.data(), o.ret.data(), o.sd.data(), o.mean);
  naive_masks(d, o.sd.data(), o.am.data(), o.em.data());
  for (index_t i = 0; i < BT; ++i)
    if (!o.am[i]) o.adv[i] = 0;
  auto moments = [&](auto x) {
    double n = 0, s = 0;
    for (index_t i = 0; i < BT; ++i)
      if (d.mask[i]) n += 1, s += x(i);
    const double mean = s / n;
    double q = 0;
    for (index_t i = 0; i < BT; ++i)
      if (d.mask[i]) q += (x(i) - mean) * (x(i) - mean);
    return std::pair<double, double>{mean, q / n};
  };
  naive_summary s;
  const auto [am, av] = moments([&](index_t i) { return static_cast<double>(o.adv[i]); });
  const auto [rm, rv] = moments([&](index_t i) { return static_cast<double>(o.ret[i]); });
  s.adv_mean = am;
  s.adv_std = std::sqrt(av);
  s.ret_mean = rm;
  s.ret_std = std::sqrt(rv);
  for (index_t k = 0; k < d.K; ++k) {
    const auto [em, ev] =
        moments([&](index_t i) { return static_cast<double>(o.ret[i]) - static_cast<double>(d.values[k * BT + i]); });
    (void)em;
    s.ev.push_back(1.0 - ev / rv);
  }
  naive_shards(d, o.shard.data());
  return s;
}

// ---------------------------------------------------------------------------------------------
// Counters.

constexpr double s = sizeof(F);

// ensemble_stats (mean + std outputs): K*BT*s + BT read, 2*BT*s written.
double bytes_ensemble(const batch& d) { const double BT = double(d.B * d.T); return d.K * BT * s + BT + 2 * BT * s; }
// gae with fused std (advantages, returns, std): K*BT*s + BT*s + BT read, 3*BT*s written.
double bytes_gae(const batch& d) { const double BT = double(d.B * d.T); return d.K * BT * s + BT * s + BT + 3 * BT * s; }
// uncertainty_masks: sigma BT*s + mask BT read, two masks 2*BT written.
double bytes_masks(const batch& d) { const double BT = double(d.B * d.T); return BT * s + BT + 2 * BT; }
// masked_whiten (out of place): x BT*s + mask BT read, BT*s written.
double bytes_whiten(const batch& d) { const double BT = double(d.B * d.T); return BT * s + BT + BT * s; }
// grpo_advantages: scores B*s + ids 8B + mask BT read, BT*s written.
double bytes_grpo(const batch& d) { const double BT = double(d.B * d.T); return d.B * (s + 8) + BT + BT * s; }
// shard_weights: ids 8B read, K*B*s written.
double bytes_shards(const batch& d) { return d.B * 8.0 + double(d.K * d.B) * s; }
// advantage_step: values K*BT*s, rewards BT*s, mask BT, ids 8B read;
//                 advantages + returns 2*BT*s, two masks 2*BT, shard weights K*B*s written.
double bytes_step(const batch& d) {
  const double BT = double(d.B * d.T);
  return d.K * BT * s + BT * s + BT + 8.0 * d.B + 2 * BT * s + 2 * BT + double(d.K * d.B) * s;
}

// ---------------------------------------------------------------------------------------------
// Library benchmarks.
void BM_ensemble(benchmark::State& st, index_t B, index_t T, int threads) {
  const batch& d = get_batch(B, T);
  const asyppo::cpu_backend be(threads);
  std::vector<F> mean(B * T), sd(B * T);
  for (auto _ : st) {
    asyppo::ensemble_stats(be, values_of(d), mask_of(d),
                           asyppo::ensemble_outputs<F>{{mean.data(), B, T}, {sd.data(), B, T}, {}, {}});
    benchmark::DoNotOptimize(sd.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_ensemble(d), double(B * T));
}
void BM_ensemble_naive(benchmark::State& st, index_t B, index_t T) {
  const batch& d = get_batch(B, T);
  std::vector<F> mean(B * T), sd(B * T);
  for (auto _ : st) {
    naive_ensemble(d, mean.data(), sd.data());
    benchmark::DoNotOptimize(sd.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_ensemble(d), double(B * T));
}

void BM_gae(benchmark::State& st, index_t B, index_t T, int threads) {
  const batch& d = get_batch(B, T);
  const asyppo::cpu_backend be(threads);
  std::vector<F> adv(B * T), ret(B * T), sd(B * T);
  asyppo::gae_options opt;  // gamma = lambda = 1, skip semantics
  for (auto _ : st) {
    asyppo::gae(be, values_of(d), tokens(d.rewards, d), mask_of(d), opt,
                asyppo::gae_outputs<F>{{adv.data(), B, T}, {ret.data(), B, T}, {sd.data(), B, T}});
    benchmark::DoNotOptimize(adv.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_gae(d), double(B * T));
}
void BM_gae_naive(benchmark::State& st, index_t B, index_t T) {
  const batch& d = get_batch(B, T);
  std::vector<F> adv(B * T), ret(B * T), sd(B * T), mean(B * T);
  for (auto _ : st) {
    naive_gae(d, adv.data(), ret.data(), sd.data(), mean);
    benchmark::DoNotOptimize(adv.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_gae(d), double(B * T));
}

void BM_masks(benchmark::State& st, index_t B, index_t T, int threads) {
  const batch& d = get_batch(B, T);
  const asyppo::cpu_backend be(threads);
  std::vector<std::uint8_t> am(B * T), em(B * T);
  for (auto _ : st) {
    auto c = asyppo::uncertainty_masks(be, tokens(d.sigma, d), mask_of(d), asyppo::mask_out(am.data(), B, T),
                                       asyppo::mask_out(em.data(), B, T));
    benchmark::DoNotOptimize(c);
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_masks(d), double(B * T));
}
void BM_masks_naive(benchmark::State& st, index_t B, index_t T) {
  const batch& d = get_batch(B, T);
  std::vector<std::uint8_t> am(B * T), em(B * T);
  for (auto _ : st) {
    auto r = naive_masks(d, d.sigma.data(), am.data(), em.data());
    benchmark::DoNotOptimize(r);
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_masks(d), double(B * T));
}

void BM_whiten(benchmark::State& st, index_t B, index_t T, int threads) {
  const batch& d = get_batch(B, T);
  const asyppo::cpu_backend be(threads);
  std::vector<F> y(B * T);
  for (auto _ : st) {
    auto m = asyppo::masked_whiten(be, tokens(d.adv, d), mask_of(d), asyppo::token_view<F>(y.data(), B, T));
    benchmark::DoNotOptimize(m);
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_whiten(d), double(B * T));
}
void BM_whiten_naive(benchmark::State& st, index_t B, index_t T) {
  const batch& d = get_batch(B, T);
  std::vector<F> y(B * T);
  for (auto _ : st) {
    naive_whiten(d, d.adv.data(), y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_whiten(d), double(B * T));
}

void BM_grpo(benchmark::State& st, index_t B, index_t T, int threads) {
  const batch& d = get_batch(B, T);
  const asyppo::cpu_backend be(threads);
  std::vector<F> adv(B * T);
  for (auto _ : st) {
    asyppo::grpo_advantages(be, asyppo::seq_view<const F>(d.scores.data(), B), ids_of(d), mask_of(d),
                            asyppo::outcome_outputs<F>{{adv.data(), B, T}, {}});
    benchmark::DoNotOptimize(adv.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_grpo(d), double(B * T));
}
void BM_grpo_naive(benchmark::State& st, index_t B, index_t T) {
  const batch& d = get_batch(B, T);
  std::vector<F> adv(B * T);
  for (auto _ : st) {
    naive_grpo(d, adv.data());
    benchmark::DoNotOptimize(adv.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_grpo(d), double(B * T));
}

void BM_shards(benchmark::State& st, index_t B, index_t T, int threads) {
  const batch& d = get_batch(B, T);
  const asyppo::cpu_backend be(threads);
  std::vector<F> w(d.K * B);
  for (auto _ : st) {
    asyppo::shard_weights(be, ids_of(d), d.K, asyppo::view<F, 2>(w.data(), d.K, B));
    benchmark::DoNotOptimize(w.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_shards(d), double(B));
}
void BM_shards_naive(benchmark::State& st, index_t B, index_t T) {
  const batch& d = get_batch(B, T);
  std::vector<F> w(d.K * B);
  for (auto _ : st) {
    naive_shards(d, w.data());
    benchmark::DoNotOptimize(w.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_shards(d), double(B));
}

struct step_buffers {
  std::vector<F> adv, ret, shard;
  std::vector<std::uint8_t> am, em;
  explicit step_buffers(const batch& d)
      : adv(d.B * d.T), ret(d.B * d.T), shard(d.K * d.B), am(d.B * d.T), em(d.B * d.T) {}
};
asyppo::advantage_summary lib_step(const asyppo::cpu_backend& be, const batch& d, step_buffers& o,
                                   const asyppo::advantage_config& cfg = {}) {
  const index_t B = d.B, T = d.T;
  asyppo::advantage_inputs<F> in{values_of(d), tokens(d.rewards, d), mask_of(d), ids_of(d)};
  asyppo::advantage_outputs<F> out{{o.adv.data(), B, T}, {o.ret.data(), B, T}, {o.am.data(), B, T},
                                   {o.em.data(), B, T},  {o.shard.data(), d.K, B}, {}};
  return asyppo::advantage_step(be, in, out, cfg);
}

void BM_step(benchmark::State& st, index_t B, index_t T, int threads) {
  const batch& d = get_batch(B, T);
  const asyppo::cpu_backend be(threads);
  step_buffers o(d);
  for (auto _ : st) {
    auto sum = lib_step(be, d, o);
    benchmark::DoNotOptimize(sum);
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_step(d), double(B * T));
}
void BM_step_naive(benchmark::State& st, index_t B, index_t T) {
  const batch& d = get_batch(B, T);
  naive_step_buffers o(d);
  for (auto _ : st) {
    auto sum = naive_step(d, o);
    benchmark::DoNotOptimize(sum);
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes_step(d), double(B * T));
}

// ---------------------------------------------------------------------------------------------
// Pieces of the one-call step (256 x 4096), through the public API only so the breakdown does not
// depend on library internals:
//   step_part/full                 advantage_step, default config (== advantage_step/.../asyppo)
//   step_part/no_finite_check      same with check_finite = false   -> cost of the finiteness pass
//   step_part/no_shards            same without shard_weights       -> cost of the shard assignment
//   step_part/gae_fused_std        gae(check_finite = false) with the std output -> GAE scan + sigma
//   step_part/masks                uncertainty_masks(check_finite = false) on that sigma (2 ranks;
//                                  the step also selects the 5 sigma quantiles in the same passes)
//   step_part/unchecked_no_shards  advantage_step, check_finite = false, no shards: the baseline of
//   step_part/step_to              advantage_step_to, same config, on the CPU backend (its host path)
//   step_part/step_to_resident     the same on resident_cpu (the CPU backend as a device backend: the
//                                  resident selection's passes, what a GPU runs; docs/algorithm.md S4)
//   step_part/masks_to_resident    uncertainty_masks_to(check_finite = false) on resident_cpu, against masks
//   step_part/bfloat16             advantage_step, default config, on bfloat16 values and rewards (the
//                                  batch's rounded; outputs float): against full. Bytes: bytes_step
//                                  with the values and rewards at 2 bytes.
// The remainder (full - finite check - shards - gae - masks) is the valid-token count, the extra
// quantile requests and the fused pass that applies I^A and gathers the summary moments.
// Bytes: each piece's own minimum (inputs once + outputs once); full-step variants use bytes_step.
enum class part { full, no_finite_check, no_shards, gae, masks, unchecked_no_shards, step_to, step_to_resident, masks_to_resident, bfloat16 };

/// values and rewards of a batch rounded to bfloat16 (what a bf16 critic and reward model hand over).
struct bf16_step_inputs {
  std::vector<asyppo::bfloat16> values, rewards;
  explicit bf16_step_inputs(const batch& d) : values(round(d.values)), rewards(round(d.rewards)) {}
  static std::vector<asyppo::bfloat16> round(const std::vector<F>& x) {
    std::vector<asyppo::bfloat16> r(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) r[i] = asyppo::bfloat16::from_float(x[i]);
    return r;
  }
};

// The CPU backend posing as a device backend (host_memory false): the device-result variants then take
// their device paths (resident selection), with reduce_to's sink run on the host.
struct resident_cpu : asyppo::cpu_backend {
  static constexpr bool host_memory = false;
  using cpu_backend::cpu_backend;
  template <class R, class Range, class Sink>
  void reduce_to(index_t rows, index_t cols, R r, Range range, Sink sink) const {
    sink(cpu_backend::reduce(rows, cols, r, range));
  }
};

void BM_part(benchmark::State& st, index_t B, index_t T, int threads, part p) {
  const batch& d = get_batch(B, T);
  const asyppo::cpu_backend be(threads);
  step_buffers o(d);
  std::vector<F> sigma(B * T);
  asyppo::advantage_config cfg;
  const bool to = p == part::step_to || p == part::step_to_resident;
  if (p == part::no_finite_check || p == part::unchecked_no_shards || to) cfg.check_finite = false;
  asyppo::gae_options g;
  g.check_finite = false;
  asyppo::mask_options mo;
  mo.check_finite = false;
  asyppo::advantage_inputs<F> in{values_of(d), tokens(d.rewards, d), mask_of(d), ids_of(d)};
  asyppo::advantage_outputs<F> out{{o.adv.data(), B, T}, {o.ret.data(), B, T}, {o.am.data(), B, T},
                                   {o.em.data(), B, T},  {o.shard.data(), d.K, B}, {}};
  if (p == part::no_shards || p == part::unchecked_no_shards || to) out.shard_weights = {};
  auto result = std::make_unique<asyppo::advantage_step_result>();
  asyppo::mask_counts counts;
  const asyppo::token_view<F> adv(o.adv.data(), B, T), ret(o.ret.data(), B, T), sig(sigma.data(), B, T);
  asyppo::gae(be, values_of(d), tokens(d.rewards, d), mask_of(d), g, asyppo::gae_outputs<F>{adv, ret, sig});
  const double BT = double(B * T);
  double bytes = bytes_step(d);
  if (p == part::no_shards || p == part::unchecked_no_shards || to) bytes -= double(d.K * B) * s + 8.0 * B;
  if (p == part::gae) bytes = bytes_gae(d);
  if (p == part::masks || p == part::masks_to_resident) bytes = bytes_masks(d);
  const bool half = p == part::bfloat16;
  if (half) bytes -= double(d.K + 1) * BT * (s - 2);
  std::optional<bf16_step_inputs> h;
  if (half) h.emplace(d);
  const resident_cpu rbe(threads);
  for (auto _ : st) {
    switch (p) {
      case part::full:
      case part::no_finite_check:
      case part::no_shards:
      case part::unchecked_no_shards: {
        auto sum = asyppo::advantage_step(be, in, out, cfg);
        benchmark::DoNotOptimize(sum);
        break;
      }
      case part::bfloat16: {
        const asyppo::advantage_inputs<asyppo::bfloat16> in16{
            {h->values.data(), d.K, B, T}, {h->rewards.data(), B, T}, mask_of(d), ids_of(d)};
        auto sum = asyppo::advantage_step(be, in16, out, cfg);
        benchmark::DoNotOptimize(sum);
        break;
      }
      case part::step_to:
        asyppo::advantage_step_to(be, in, out, result.get(), nullptr, cfg);
        benchmark::DoNotOptimize(result.get());
        break;
      case part::step_to_resident:
        asyppo::advantage_step_to(rbe, in, out, result.get(), nullptr, cfg);
        benchmark::DoNotOptimize(result.get());
        break;
      case part::masks_to_resident:
        asyppo::uncertainty_masks_to(rbe, asyppo::token_view<const F>(sig), mask_of(d), asyppo::mask_out(o.am.data(), B, T),
                                     asyppo::mask_out(o.em.data(), B, T), &counts, mo);
        benchmark::DoNotOptimize(counts);
        break;
      case part::gae:
        asyppo::gae(be, values_of(d), tokens(d.rewards, d), mask_of(d), g, asyppo::gae_outputs<F>{adv, ret, sig});
        break;
      case part::masks: {
        auto c = asyppo::uncertainty_masks(be, asyppo::token_view<const F>(sig), mask_of(d),
                                           asyppo::mask_out(o.am.data(), B, T), asyppo::mask_out(o.em.data(), B, T), mo);
        benchmark::DoNotOptimize(c);
        break;
      }
    }
    benchmark::ClobberMemory();
  }
  set_counters(st, bytes, BT);
}

// The resident selection alone (docs/algorithm.md S4) on the sigma of the batch, the batch scope's seven
// requests of the advantage step (the masks' 20 % and 80 % ranks, quantiles 0, 25, 50, 75, 100 %), one
// segment, at the narrow (8-bit: 4 passes for float) and the wide (11-bit: 3 passes) digit, on the CPU
// backend: select_resident/<bits>/256x4096/threads:N, the two widths in the same process, each with the
// candidate compaction after 16 bits (core/select.hpp; the narrow digit's last pass then counts the
// candidates the third collected; the wide digit has no pass to spare it) and without (/no_compaction). Per
// pass, the CPU counts every key under the request loop; the wide digit's passes zero, merge and scan 8
// times the bins.
void BM_select_resident(benchmark::State& st, index_t B, index_t T, int threads, int digit_bits,
                        asyppo::resident_compaction compaction) {
  using asyppo::detail::resident_request;
  const batch& d = get_batch(B, T);
  const asyppo::cpu_backend be(threads);
  std::uint64_t n = 0;
  for (const auto m : d.mask) n += m != 0;
  std::vector<resident_request> init;
  for (const double q : {0.2, 0.8, 0.0, 0.25, 0.5, 0.75, 1.0})
    init.push_back({std::min<std::uint64_t>(n - 1, static_cast<std::uint64_t>(q * double(n))), 0, 0, 0, 1});
  std::vector<resident_request> a(init.size()), b(init.size());
  const asyppo::detail::std_key_of<F> key{{d.sigma.data(), B, T}, mask_of(d), false};
  const index_t nreq = static_cast<index_t>(init.size());
  for (auto _ : st) {
    a = init;
    const resident_request* res = asyppo::radix_select_resident(be, B, T, key, 32, 1, nreq, a.data(), b.data(),
                                                                asyppo::full_rows{T}, digit_bits, compaction);
    benchmark::DoNotOptimize(res);
    benchmark::ClobberMemory();
  }
  set_counters(st, double(B * T) * (sizeof(F) + 1), double(B * T));  // sigma and the mask, once
}

// One-time report: how many tokens the resident selection's compaction collects on this batch (the valid
// tokens whose sigma shares its leading 16 bits with one of select_resident's seven selected values), and the
// fullest region of its store (valid tokens of rows b = r mod ceil(B / 8) among them) against its T slots.
void candidate_report(index_t B, index_t T) {
  const batch& d = get_batch(B, T);
  std::vector<F> v;
  for (std::size_t i = 0; i < d.mask.size(); ++i)
    if (d.mask[i]) v.push_back(d.sigma[i]);
  std::sort(v.begin(), v.end());
  const std::uint64_t n = v.size();
  std::vector<std::uint64_t> prefixes;
  for (const double q : {0.2, 0.8, 0.0, 0.25, 0.5, 0.75, 1.0})
    prefixes.push_back(asyppo::detail::ordered_key(v[std::min<std::uint64_t>(n - 1, std::uint64_t(q * double(n)))]) >> 16);
  const index_t regions = (B + 7) / 8;
  std::vector<std::uint64_t> per_region(static_cast<std::size_t>(regions), 0);
  std::uint64_t picked = 0;
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t) {
      const std::size_t i = static_cast<std::size_t>(b * T + t);
      if (!d.mask[i]) continue;
      const std::uint64_t p = asyppo::detail::ordered_key(d.sigma[i]) >> 16;
      if (std::find(prefixes.begin(), prefixes.end(), p) == prefixes.end()) continue;
      ++picked;
      ++per_region[static_cast<std::size_t>(b % regions)];
    }
  std::fprintf(stderr, "compaction %lldx%lld: %llu candidates, %.2f %% of %llu valid tokens; fullest region %llu of %lld slots\n",
               static_cast<long long>(B), static_cast<long long>(T), static_cast<unsigned long long>(picked),
               100.0 * double(picked) / double(n), static_cast<unsigned long long>(n),
               static_cast<unsigned long long>(*std::max_element(per_region.begin(), per_region.end())),
               static_cast<long long>(T));
}

// ---------------------------------------------------------------------------------------------
// One-time cross-check: library vs naive (masks exact, advantages/returns to float rounding).
void cross_check(index_t B, index_t T) {
  const batch& d = get_batch(B, T);
  step_buffers o(d);
  naive_step_buffers n(d);
  const auto ls = lib_step(asyppo::cpu_backend(1), d, o);
  const auto ns = naive_step(d, n);
  double max_adv = 0, max_ret = 0;
  std::int64_t mask_diff = 0, shard_diff = 0;
  for (std::size_t i = 0; i < o.adv.size(); ++i) {
    max_adv = std::max(max_adv, std::abs(double(o.adv[i]) - double(n.adv[i])));
    max_ret = std::max(max_ret, std::abs(double(o.ret[i]) - double(n.ret[i])));
    mask_diff += (o.am[i] != n.am[i]) + (o.em[i] != n.em[i]);
  }
  for (std::size_t i = 0; i < o.shard.size(); ++i) shard_diff += o.shard[i] != n.shard[i];
  std::fprintf(stderr,
               "cross-check %lldx%lld: max|dA| %.2e max|dR| %.2e, mask mismatches %lld, shard mismatches %lld, "
               "adv mean %.6f/%.6f, EV0 %.6f/%.6f\n",
               static_cast<long long>(B), static_cast<long long>(T), max_adv, max_ret, static_cast<long long>(mask_diff),
               static_cast<long long>(shard_diff), ls.advantage_mean, ns.adv_mean, ls.explained_variance[0], ns.ev[0]);
}

void register_all() {
  struct shape {
    index_t B, T;
    double min_time;
  };
  const shape shapes[] = {{64, 512, 0.1}, {256, 4096, 0.25}};
  using lib_fn = void (*)(benchmark::State&, index_t, index_t, int);
  using naive_fn = void (*)(benchmark::State&, index_t, index_t);
  struct algo {
    const char* name;
    lib_fn lib;
    naive_fn naive;
  };
  const algo algos[] = {{"ensemble_stats", BM_ensemble, BM_ensemble_naive},
                        {"gae_fused_std", BM_gae, BM_gae_naive},
                        {"uncertainty_masks", BM_masks, BM_masks_naive},
                        {"masked_whiten", BM_whiten, BM_whiten_naive},
                        {"grpo_advantages", BM_grpo, BM_grpo_naive},
                        {"shard_weights", BM_shards, BM_shards_naive},
                        {"advantage_step", BM_step, BM_step_naive}};
  for (const auto& sh : shapes)
    for (const auto& a : algos) asyppo_bench::register_lib_and_naive(a.name, sh.B, sh.T, sh.min_time, a.lib, a.naive);
  const std::pair<const char*, part> parts[] = {{"full", part::full},
                                                {"no_finite_check", part::no_finite_check},
                                                {"no_shards", part::no_shards},
                                                {"gae_fused_std", part::gae},
                                                {"masks", part::masks},
                                                {"unchecked_no_shards", part::unchecked_no_shards},
                                                {"step_to", part::step_to},
                                                {"step_to_resident", part::step_to_resident},
                                                {"masks_to_resident", part::masks_to_resident},
                                                {"bfloat16", part::bfloat16}};
  for (const auto& [name, p] : parts)
    for (int th : {1, 2})
      benchmark::RegisterBenchmark((std::string("step_part/") + name + "/256x4096/threads:" + std::to_string(th)).c_str(),
                                   BM_part, index_t(256), index_t(4096), th, p)
          ->UseRealTime()
          ->MinTime(0.25)
          ->Unit(benchmark::kMicrosecond);
  for (int bits : {asyppo::resident_digit_bits, asyppo::resident_wide_digit_bits})
    for (const bool compact : {true, false})
      for (int th : {1, 2})
        benchmark::RegisterBenchmark(("select_resident/" + std::to_string(bits) + (compact ? "" : "/no_compaction") +
                                      "/256x4096/threads:" + std::to_string(th))
                                         .c_str(),
                                     BM_select_resident, index_t(256), index_t(4096), th, bits,
                                     asyppo::resident_compaction{compact ? 16 : 0, 0})
            ->UseRealTime()
            ->MinTime(0.25)
            ->Unit(benchmark::kMicrosecond);
  asyppo_bench::register_membw();
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  cross_check(64, 512);
  cross_check(256, 4096);
  candidate_report(256, 4096);
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
