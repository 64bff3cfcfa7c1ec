// bench/synthetic_rollout.hpp: the synthetic rollout batch the benchmarks share.
//
// Groups of `group` responses per prompt (ids 1000 + b / group), log-normal response lengths
// (median 0.2 T, at least 8, some truncated at T), one to three observation holes (mask 0) in a
// quarter of the responses of 128 tokens or more, a 0/1 outcome reward on the last valid token
// (prompt difficulty drawn per group; a truncated response gets 0), and K critics whose values
// are the expected return plus noise of growing size per critic. Float, fixed seed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "asyppo/config.hpp"

namespace asyppo_bench {

using asyppo::index_t;

struct rollout {
  index_t K = 0, B = 0, T = 0;
  std::vector<float> values;       // [K,B,T]
  std::vector<float> rewards;      // [B,T]
  std::vector<std::uint8_t> mask;  // [B,T]
  std::vector<std::int64_t> ids;   // [B]
  std::vector<float> scores;       // [B]
};

/// The response-length distribution: log-normal with median 0.2 T.
inline std::lognormal_distribution<double> response_lengths(index_t T) {
  return std::lognormal_distribution<double>(std::log(0.2 * static_cast<double>(T)), 0.9);
}

/// One response's mask row m[0..T): a length L from len_dist (clamped to [8, T]), and in a
/// quarter of the responses of 128 tokens or more one to three observation holes. Returns L.
inline index_t draw_response_mask(std::mt19937_64& rng, std::lognormal_distribution<double>& len_dist, std::uint8_t* m,
                                  index_t T) {
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  const index_t L = std::clamp<index_t>(static_cast<index_t>(std::ceil(len_dist(rng))), 8, T);
  std::fill(m, m + L, std::uint8_t(1));
  if (L >= 128 && unif(rng) < 0.25) {
    const int holes = 1 + static_cast<int>(unif(rng) * 3);
    for (int h = 0; h < holes; ++h) {
      const index_t len = 8 + static_cast<index_t>(unif(rng) * static_cast<double>(std::min<index_t>(248, L / 8)));
      const index_t lo = L / 8, hi = L - 16 - len;
      if (hi <= lo) continue;
      const index_t at = lo + static_cast<index_t>(unif(rng) * static_cast<double>(hi - lo));
      std::fill(m + at, m + at + len, std::uint8_t(0));
    }
  }
  return L;
}

inline rollout make_rollout(index_t B, index_t T, index_t K = 2, int group = 8, std::uint64_t seed = 1) {
  rollout d;
  d.K = K;
  d.B = B;
  d.T = T;
  const index_t BT = B * T;
  d.values.assign(static_cast<std::size_t>(K * BT), 0.0f);
  d.rewards.assign(static_cast<std::size_t>(BT), 0.0f);
  d.mask.assign(static_cast<std::size_t>(BT), 0);
  d.ids.resize(static_cast<std::size_t>(B));
  d.scores.resize(static_cast<std::size_t>(B));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto len_dist = response_lengths(T);
  double success = 0.5;
  for (index_t b = 0; b < B; ++b) {
    if (b % group == 0) success = 0.05 + 0.9 * unif(rng);
    d.ids[static_cast<std::size_t>(b)] = 1000 + b / group;
    std::uint8_t* m = d.mask.data() + b * T;
    const index_t L = draw_response_mask(rng, len_dist, m, T);
    const double R = (L < T && unif(rng) < success) ? 1.0 : 0.0;
    d.scores[static_cast<std::size_t>(b)] = static_cast<float>(R);
    d.rewards[static_cast<std::size_t>(b * T + L - 1)] = static_cast<float>(R);
    for (index_t t = 0; t < L; ++t) {
      if (!m[t]) continue;
      const double frac = static_cast<double>(t + 1) / static_cast<double>(L);
      const double vstar = success + (R - success) * frac * frac;
      for (index_t k = 0; k < K; ++k)
        d.values[static_cast<std::size_t>(k * BT + b * T + t)] =
            static_cast<float>(vstar + (0.06 + 0.03 * static_cast<double>(k)) * normal(rng));
    }
  }
  return d;
}

}  // namespace asyppo_bench
