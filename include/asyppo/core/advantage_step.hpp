// asyppo/core/advantage_step.hpp: the whole AsyPPO advantage step in one call
// (docs/algorithm.md, "The advantage step").
//
// From critic values V [K,B,T] (old critics), token rewards r [B,T], the response mask m [B,T]
// and prompt group ids [B]:
//   1. sigma, V-bar and GAE in one fused reverse scan (core/gae.hpp): advantages with
//      lambda_actor, returns R = V-bar + A(lambda_critic), and the critic std sigma;
//   2. optional masked whitening of the advantages (off by default, as in the paper);
//   3. the advantage mask I^A and entropy mask I^H from sigma (core/uncertainty_masks.hpp), and the
//      std quantiles, from one radix selection;
//   4. advantages *= I^A when mask_advantages (default), so any PPO loss can consume them;
//   5. shard weights [K,B] for the K critics' losses (core/shards.hpp);
//   6. summary statistics: counts and fractions, sigma quantiles, advantage/return moments, and
//      the explained variance of each critic, EV_k = 1 - Var(R - V_k) / Var(R) over valid tokens.
// Validation (shapes, K, fractions, gamma/lambda, finiteness of V and r on valid tokens) happens
// before any output is written. Every output is deterministic and independent of thread count.
#pragma once

#include <cmath>
#include <vector>

#include "asyppo/core/advantage_stats.hpp"
#include "asyppo/core/gae.hpp"
#include "asyppo/core/shards.hpp"
#include "asyppo/core/uncertainty_masks.hpp"
#include "asyppo/core/whiten.hpp"

namespace asyppo {

/// Defaults are the paper's: K = 2, k = h = 0.2, gamma = lambda = 1.
struct advantage_config {
  index_t critics = 2;  ///< K; must match values.extent[0]
  double gamma = 1.0;
  double lambda_actor = 1.0;
  double lambda_critic = 1.0;
  gae_mask_semantics semantics = gae_mask_semantics::skip;
  double adaptive_lambda_alpha = 0.0;  ///< VAPO length-adaptive actor lambda (0: off)
  double adaptive_lambda_min = 0.0;
  double adaptive_lambda_max = 1.0;
  double adv_mask_fraction = 0.2;        ///< k
  double entropy_filter_fraction = 0.2;  ///< h
  mask_scope scope = mask_scope::batch;
  std_kind std = std_kind::population;
  shard_mode shards = shard_mode::contiguous;
  bool whiten_advantages = false;
  whiten_options whiten = {};
  bool mask_advantages = true;  ///< write I^A * A (the adv_mask output is written either way)
  bool check_finite = true;
};

template <class T>
struct advantage_inputs {
  critic_view<const T> values;             ///< [K,B,T]
  token_view<const T> rewards;             ///< [B,T]
  mask_view mask;                          ///< [B,T]
  seq_view<const std::int64_t> group_ids;  ///< [B]
};

template <class T>
struct advantage_outputs {
  token_view<T> advantages;         ///< [B,T] required
  token_view<T> returns;            ///< [B,T] required
  mask_out adv_mask;                ///< [B,T] required
  mask_out entropy_mask;            ///< [B,T] required
  view<T, 2> shard_weights{};       ///< [K,B] optional
  token_view<T> std{};              ///< [B,T] optional (sigma; else a temporary)
};

struct advantage_summary {
  std::int64_t sequences = 0;
  std::int64_t valid_tokens = 0;
  std::int64_t adv_masked = 0;
  std::int64_t entropy_masked = 0;
  double adv_mask_fraction = 0;        ///< adv_masked / valid_tokens (0 if none)
  double entropy_filter_fraction = 0;  ///< entropy_masked / valid_tokens
  double adv_threshold = NAN;          ///< batch scope: largest masked sigma
  double entropy_threshold = NAN;      ///< batch scope: smallest filtered sigma
  /// sigma over valid tokens at ranks floor(q (N-1)), q = 0, .25, .5, .75, 1 (NaN when N = 0).
  double std_quantiles[5] = {NAN, NAN, NAN, NAN, NAN};
  double advantage_mean = 0, advantage_std = 0;  ///< of the written advantages, valid tokens
  double return_mean = 0, return_std = 0;
  std::vector<double> explained_variance;  ///< per critic (NaN when Var(R) = 0)
};

template <class Backend, class T, class Comm = single_process>
advantage_summary advantage_step(const Backend& be, const advantage_inputs<T>& in, const advantage_outputs<T>& out,
                                 const advantage_config& cfg = {}, const Comm& comm = {}) {
  constexpr const char* where = "asyppo::advantage_step";
  detail::check_view(where, "values", in.values);
  const index_t K = in.values.extent[0], B = in.values.extent[1], Tn = in.values.extent[2];
  if (cfg.critics < 1) detail::fail(where, "critics", "needs at least one critic (K >= 1), got ", cfg.critics);
  if (K != cfg.critics) detail::fail(where, "values", "extent 0 is ", K, ", expected K = config.critics = ", cfg.critics);
  detail::check_input(where, "rewards", in.rewards, {B, Tn});
  detail::check_input(where, "mask", in.mask, {B, Tn});
  detail::check_input(where, "group_ids", in.group_ids, {B});
  if (B * Tn > 0 && !detail::present(in.mask)) detail::fail(where, "mask", "is required");
  detail::check_output(where, "out.advantages", out.advantages, {B, Tn});
  detail::check_output(where, "out.returns", out.returns, {B, Tn});
  detail::check_output(where, "out.adv_mask", out.adv_mask, {B, Tn});
  detail::check_output(where, "out.entropy_mask", out.entropy_mask, {B, Tn});
  detail::check_optional_output(where, "out.shard_weights", out.shard_weights, {K, B});
  detail::check_optional_output(where, "out.std", out.std, {B, Tn});
  gae_options g;
  g.gamma = cfg.gamma;
  g.lambda_actor = cfg.lambda_actor;
  g.lambda_critic = cfg.lambda_critic;
  g.semantics = cfg.semantics;
  g.adaptive_lambda_alpha = cfg.adaptive_lambda_alpha;
  g.adaptive_lambda_min = cfg.adaptive_lambda_min;
  g.adaptive_lambda_max = cfg.adaptive_lambda_max;
  detail::check_gae_options(where, g);
  mask_options mo;
  mo.adv_fraction = cfg.adv_mask_fraction;
  mo.entropy_fraction = cfg.entropy_filter_fraction;
  mo.scope = cfg.scope;
  detail::check_mask_options(where, mo);
  if (cfg.whiten_advantages) detail::check_whiten_options(where, cfg.whiten);
  if (cfg.check_finite)
    detail::check_finite_tokens<Backend, T>(be, where, "values or rewards", B, Tn, in.values, in.rewards, in.mask);

  // 1. GAE + sigma (sigma into the caller's buffer or a temporary).
  auto sigma_tmp = be.template allocate<T>(detail::present(out.std) ? 0 : B * Tn);
  token_view<T> sigma = detail::present(out.std) ? out.std : token_view<T>(sigma_tmp.data(), B, Tn);
  detail::gae_unchecked(be, in.values, in.rewards, in.mask, g, gae_outputs<T>{out.advantages, out.returns, sigma}, cfg.std);

  // 2. Optional whitening (in place).
  if (cfg.whiten_advantages)
    detail::whiten_unchecked(be, token_view<const T>(out.advantages), in.mask, out.advantages, cfg.whiten, comm);

  // 3. Masks and sigma quantiles from one selection.
  advantage_summary s;
  s.sequences = B;
  const token_view<const T> csigma(sigma);
  std::uint64_t n_valid = static_cast<std::uint64_t>(be.reduce(B * Tn, detail::count_row_valid{in.mask, Tn}));
  comm.allreduce_sum(&n_valid, 1);
  std::vector<std::uint64_t> qranks;
  static constexpr double qs[5] = {0.0, 0.25, 0.5, 0.75, 1.0};
  if (n_valid > 0)
    for (double q : qs) qranks.push_back(static_cast<std::uint64_t>(std::floor(q * static_cast<double>(n_valid - 1))));
  std::vector<double> qvals;
  mask_counts mc;
  if (cfg.scope == mask_scope::batch) {
    mc = detail::uncertainty_masks_unchecked(be, csigma, in.mask, out.adv_mask, out.entropy_mask, mo, comm, qranks, &qvals);
  } else {
    mc = detail::uncertainty_masks_unchecked(be, csigma, in.mask, out.adv_mask, out.entropy_mask, mo, single_process{});
    if (!qranks.empty()) {
      std::vector<select_request> req;
      for (auto r : qranks) req.push_back({0, r});
      std::vector<select_result> res(req.size());
      radix_select(be, B * Tn, detail::std_key_of<T>{csigma, in.mask, Tn, false}, 8 * int(sizeof(T)), 16, 1,
                   req.data(), static_cast<index_t>(req.size()), res.data(), comm);
      for (auto& r : res) qvals.push_back(static_cast<double>(detail::key_value<T>(r.key)));
    }
  }
  for (std::size_t i = 0; i < qvals.size() && i < 5; ++i) s.std_quantiles[i] = qvals[i];
  s.valid_tokens = mc.valid;
  s.adv_masked = mc.adv_masked;
  s.entropy_masked = mc.entropy_masked;
  s.adv_threshold = mc.adv_threshold;
  s.entropy_threshold = mc.entropy_threshold;
  if (mc.valid > 0) {
    s.adv_mask_fraction = static_cast<double>(mc.adv_masked) / static_cast<double>(mc.valid);
    s.entropy_filter_fraction = static_cast<double>(mc.entropy_masked) / static_cast<double>(mc.valid);
  }

  // 4. + 6. Apply I^A and gather the summary moments in one pass.
  detail::advantage_moments(be, in.values, out.advantages, token_view<const T>(out.returns), in.mask,
                            view<const std::uint8_t, 2>(out.adv_mask), cfg.mask_advantages, s, comm);

  // 5. Shards.
  if (detail::present(out.shard_weights)) {
    auto L = make_group_layout(be, in.group_ids);
    be.for_each(B, detail::shard_kernel<T>{L.offsets.data(), L.group_of.data(), L.position.data(), K, cfg.shards,
                                           out.shard_weights, {}});
  }
  return s;
}

}  // namespace asyppo
