// advantage_step_example: the main job. Builds a synthetic rollout batch of realistic shape, runs
// asyppo::advantage_step on the CPU backend with the paper's defaults (K = 2, k = h = 0.2,
// gamma = lambda = 1, batch-scope masks, no whitening), and prints the configuration, the summary
// statistics and the time (median of a few runs, with 1 and 2 threads).
//
// The batch (fixed seed by default, so the output is reproducible):
//   * prompts x group responses (GRPO/AsyPPO style groups: B = prompts * group), T positions;
//   * response lengths from a log-normal (median 0.2 T, long tail), those reaching T truncated;
//   * about a quarter of the longer responses are multi-turn: 1-3 observation (tool output)
//     holes inside the response, mask 0, which GAE skips;
//   * outcome reward 0/1 on the last valid token (truncated responses score 0), success
//     probability drawn per prompt;
//   * critic values: noisy estimates of the return, V_k = v* + bias_k + noise, where v* moves
//     from the prompt's success rate to the final reward as the response proceeds.
//
// Flags: --prompts N (32) --group N (8) --T N (4096) --K N (2) --threads N (run only this
// thread count; default: 1 and 2) --seed N (1) --double (float by default) --runs N (5).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "asyppo/asyppo.hpp"

namespace {

using asyppo::index_t;

struct options {
  index_t prompts = 32, group = 8, T = 4096, K = 2;
  int threads = 0;  // 0: run 1 and 2
  int runs = 5;
  std::uint64_t seed = 1;
  bool use_double = false;
};

[[noreturn]] void usage(const char* prog, const char* bad) {
  if (bad) std::fprintf(stderr, "%s: bad or unknown argument '%s'\n", prog, bad);
  std::fprintf(stderr,
               "usage: %s [--prompts N] [--group N] [--T N] [--K N] [--threads N] [--seed N] [--runs N] [--double]\n",
               prog);
  std::exit(bad ? 2 : 0);
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") usage(argv[0], nullptr);
    if (a == "--double") {
      o.use_double = true;
      continue;
    }
    if (i + 1 >= argc) usage(argv[0], argv[i]);
    char* end = nullptr;
    const long long v = std::strtoll(argv[i + 1], &end, 10);
    if (end == argv[i + 1] || *end != '\0' || v < 0) usage(argv[0], argv[i + 1]);
    if (a == "--prompts") o.prompts = v;
    else if (a == "--group") o.group = v;
    else if (a == "--T") o.T = v;
    else if (a == "--K") o.K = v;
    else if (a == "--threads") o.threads = static_cast<int>(v);
    else if (a == "--seed") o.seed = static_cast<std::uint64_t>(v);
    else if (a == "--runs") o.runs = static_cast<int>(std::max<long long>(1, v));
    else usage(argv[0], argv[i]);
    ++i;
  }
  if (o.prompts < 1 || o.group < 1 || o.T < 1 || o.K < 1) usage(argv[0], "sizes must be >= 1");
  return o;
}

template <class F>
struct batch {
  index_t B = 0, T = 0, K = 0;
  std::vector<F> values;           // [K,B,T]
  std::vector<F> rewards;          // [B,T]
  std::vector<std::uint8_t> mask;  // [B,T]
  std::vector<std::int64_t> ids;   // [B]
  std::vector<index_t> length;     // response length (valid span incl. holes)
  index_t truncated = 0, multi_turn = 0, hole_tokens = 0, correct = 0;
};

template <class F>
batch<F> make_batch(const options& o) {
  batch<F> d;
  d.B = o.prompts * o.group;
  d.T = o.T;
  d.K = o.K;
  const index_t B = d.B, T = d.T, K = d.K, BT = B * T;
  d.values.assign(static_cast<std::size_t>(K * BT), F(0));
  d.rewards.assign(static_cast<std::size_t>(BT), F(0));
  d.mask.assign(static_cast<std::size_t>(BT), 0);
  d.ids.resize(static_cast<std::size_t>(B));
  d.length.resize(static_cast<std::size_t>(B));
  std::mt19937_64 rng(o.seed);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::lognormal_distribution<double> len_dist(std::log(0.2 * static_cast<double>(T)), 0.9);
  std::vector<double> bias(static_cast<std::size_t>(K)), noise(static_cast<std::size_t>(K));
  for (index_t k = 0; k < K; ++k) noise[static_cast<std::size_t>(k)] = 0.06 + 0.03 * static_cast<double>(k);
  for (index_t p = 0; p < o.prompts; ++p) {
    const double success = 0.05 + 0.9 * unif(rng);  // per-prompt difficulty
    for (index_t j = 0; j < o.group; ++j) {
      const index_t b = p * o.group + j;
      d.ids[static_cast<std::size_t>(b)] = 1000 + p;
      index_t L = static_cast<index_t>(std::ceil(len_dist(rng)));
      L = std::clamp<index_t>(L, std::min<index_t>(8, T), T);
      const bool trunc = L == T;
      d.truncated += trunc;
      d.length[static_cast<std::size_t>(b)] = L;
      std::uint8_t* m = d.mask.data() + b * T;
      std::fill(m, m + L, std::uint8_t(1));
      // Multi-turn: observation holes strictly inside the response.
      if (L >= 128 && unif(rng) < 0.25) {
        ++d.multi_turn;
        const int holes = 1 + static_cast<int>(unif(rng) * 3);
        for (int h = 0; h < holes; ++h) {
          const index_t len = 8 + static_cast<index_t>(unif(rng) * static_cast<double>(std::min<index_t>(248, L / 8)));
          const index_t lo = L / 8, hi = L - 16 - len;
          if (hi <= lo) continue;
          const index_t at = lo + static_cast<index_t>(unif(rng) * static_cast<double>(hi - lo));
          std::fill(m + at, m + at + len, std::uint8_t(0));
        }
      }
      index_t last = L - 1;
      while (last >= 0 && !m[last]) --last;  // (never: holes end 16 tokens before L)
      const double R = (!trunc && unif(rng) < success) ? 1.0 : 0.0;
      d.correct += R > 0;
      if (last >= 0) d.rewards[static_cast<std::size_t>(b * T + last)] = static_cast<F>(R);
      for (index_t k = 0; k < K; ++k) bias[static_cast<std::size_t>(k)] = 0.05 * normal(rng);
      for (index_t t = 0; t < L; ++t) {
        if (!m[t]) {
          ++d.hole_tokens;
          continue;
        }
        const double frac = static_cast<double>(t + 1) / static_cast<double>(L);
        const double vstar = success + (R - success) * frac * frac;  // information arrives late
        for (index_t k = 0; k < K; ++k) {
          const double v = vstar + bias[static_cast<std::size_t>(k)] + noise[static_cast<std::size_t>(k)] * normal(rng);
          d.values[static_cast<std::size_t>(k * BT + b * T + t)] = static_cast<F>(v);
        }
      }
    }
  }
  return d;
}

template <class F>
struct outputs {
  std::vector<F> adv, ret, shard;
  std::vector<std::uint8_t> amask, emask;
  explicit outputs(index_t K, index_t B, index_t T)
      : adv(static_cast<std::size_t>(B * T)), ret(static_cast<std::size_t>(B * T)), shard(static_cast<std::size_t>(K * B)),
        amask(static_cast<std::size_t>(B * T)), emask(static_cast<std::size_t>(B * T)) {}
  bool operator==(const outputs& o) const {
    auto same = [](const auto& x, const auto& y) {
      return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(x[0])) == 0;
    };
    return same(adv, o.adv) && same(ret, o.ret) && same(shard, o.shard) && same(amask, o.amask) && same(emask, o.emask);
  }
};

template <class F>
asyppo::advantage_summary step(const asyppo::cpu_backend& be, const batch<F>& d, outputs<F>& out,
                               const asyppo::advantage_config& cfg) {
  const index_t K = d.K, B = d.B, T = d.T;
  asyppo::advantage_inputs<F> in{asyppo::critic_view<const F>(d.values.data(), K, B, T),
                                 asyppo::token_view<const F>(d.rewards.data(), B, T),
                                 asyppo::mask_view(d.mask.data(), B, T),
                                 asyppo::seq_view<const std::int64_t>(d.ids.data(), B)};
  asyppo::advantage_outputs<F> o{asyppo::token_view<F>(out.adv.data(), B, T),
                                 asyppo::token_view<F>(out.ret.data(), B, T),
                                 asyppo::mask_out(out.amask.data(), B, T),
                                 asyppo::mask_out(out.emask.data(), B, T),
                                 asyppo::view<F, 2>(out.shard.data(), K, B),
                                 {}};
  return asyppo::advantage_step(be, in, o, cfg);
}

double percentile(std::vector<index_t> v, double q) {
  std::sort(v.begin(), v.end());
  return static_cast<double>(v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))]);
}

std::string with_commas(long long n) {
  std::string s = std::to_string(n < 0 ? -n : n), r;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) r += ',';
    r += s[i];
  }
  return n < 0 ? "-" + r : r;
}

template <class F>
int run(const options& o) {
  const auto t_gen = std::chrono::steady_clock::now();
  const batch<F> d = make_batch<F>(o);
  const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_gen).count();
  const index_t B = d.B, T = d.T, K = d.K;
  asyppo::advantage_config cfg;  // the paper's defaults
  cfg.critics = K;

  std::printf("asyppo %s  advantage_step example\n\n", asyppo::version_string);
  std::printf("batch    %lld prompts x %lld responses = B %lld, T %lld, K %lld critics, %s (seed %llu, built in %.2f s)\n",
              static_cast<long long>(o.prompts), static_cast<long long>(o.group), static_cast<long long>(B),
              static_cast<long long>(T), static_cast<long long>(K), sizeof(F) == 4 ? "float" : "double",
              static_cast<unsigned long long>(o.seed), gen_s);
  std::printf("         response length: median %.0f, p90 %.0f, max %.0f; %lld truncated at T\n", percentile(d.length, 0.5),
              percentile(d.length, 0.9), percentile(d.length, 1.0), static_cast<long long>(d.truncated));
  std::printf("         %lld multi-turn responses with %s observation tokens (mask 0); reward 1 on %lld / %lld\n",
              static_cast<long long>(d.multi_turn), with_commas(d.hole_tokens).c_str(), static_cast<long long>(d.correct),
              static_cast<long long>(B));
  std::printf("config   gamma %g, lambda actor/critic %g/%g, %s-mask GAE, k = %g, h = %g, %s scope, %s std,\n",
              cfg.gamma, cfg.lambda_actor, cfg.lambda_critic,
              cfg.semantics == asyppo::gae_mask_semantics::skip ? "skip" : "step", cfg.adv_mask_fraction,
              cfg.entropy_filter_fraction, cfg.scope == asyppo::mask_scope::batch ? "batch" : "sequence",
              cfg.std == asyppo::std_kind::population ? "population" : "unbiased");
  std::printf("         whitening %s, advantages %s, %s shards, finiteness check %s\n\n",
              cfg.whiten_advantages ? "on" : "off", cfg.mask_advantages ? "multiplied by I^A" : "unmasked",
              cfg.shards == asyppo::shard_mode::contiguous ? "contiguous" : "strided", cfg.check_finite ? "on" : "off");

  std::vector<int> thread_counts = o.threads > 0 ? std::vector<int>{o.threads} : std::vector<int>{1, 2};
  asyppo::advantage_summary s;
  std::vector<double> median_ms;
  std::vector<outputs<F>> results;
  for (int th : thread_counts) {
    const asyppo::cpu_backend be(th);
    outputs<F> out(K, B, T);
    s = step(be, d, out, cfg);  // warm-up (and the result we print)
    std::vector<double> ms;
    for (int r = 0; r < o.runs; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      s = step(be, d, out, cfg);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    median_ms.push_back(ms[ms.size() / 2]);
    results.push_back(std::move(out));
  }

  const double N = static_cast<double>(s.valid_tokens);
  std::printf("summary  valid tokens        %s of %s (%.1f%%)\n", with_commas(s.valid_tokens).c_str(),
              with_commas(B * T).c_str(), 100.0 * N / static_cast<double>(B * T));
  std::printf("         advantage mask      %s tokens (%.2f%%) with sigma <= %.4g get I^A = 0\n",
              with_commas(s.adv_masked).c_str(), 100.0 * s.adv_mask_fraction, s.adv_threshold);
  std::printf("         entropy filter      %s tokens (%.2f%%) with sigma >= %.4g get I^H = 0\n",
              with_commas(s.entropy_masked).c_str(), 100.0 * s.entropy_filter_fraction, s.entropy_threshold);
  std::printf("         sigma quantiles     min %.4g  q25 %.4g  median %.4g  q75 %.4g  max %.4g\n", s.std_quantiles[0],
              s.std_quantiles[1], s.std_quantiles[2], s.std_quantiles[3], s.std_quantiles[4]);
  std::printf("         advantage           mean %+.4f  std %.4f (after I^A)\n", s.advantage_mean, s.advantage_std);
  std::printf("         return              mean %+.4f  std %.4f\n", s.return_mean, s.return_std);
  std::printf("         explained variance ");
  for (std::size_t k = 0; k < s.explained_variance.size(); ++k)
    std::printf(" critic %zu: %.4f%s", k, s.explained_variance[k], k + 1 < s.explained_variance.size() ? "," : "");
  std::printf("\n\n");

  const double bytes = static_cast<double>(K * B * T * sizeof(F) + B * T * sizeof(F) + B * T + B * 8  // inputs
                                           + 2 * B * T * sizeof(F) + 2 * B * T + K * B * sizeof(F));  // outputs
  std::printf("time     median of %d runs (after one warm-up); MB = inputs + outputs streamed once = %.1f MB\n", o.runs,
              bytes / 1e6);
  for (std::size_t i = 0; i < thread_counts.size(); ++i)
    std::printf("         threads %d: %8.2f ms  (%.0f M tokens/s over B*T, %.2f GB/s effective)\n", thread_counts[i],
                median_ms[i], static_cast<double>(B * T) / median_ms[i] / 1e3, bytes / median_ms[i] / 1e6);
  if (results.size() > 1) {
    bool same = true;
    for (std::size_t i = 1; i < results.size(); ++i) same = same && results[i] == results[0];
    std::printf("         outputs bit-identical across thread counts: %s\n", same ? "yes" : "NO");
    if (!same) return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  try {
    return o.use_double ? run<double>(o) : run<float>(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
