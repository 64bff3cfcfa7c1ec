// asyppo/core/advantage_step.hpp: the whole AsyPPO advantage step in one call
// (docs/algorithm.md, "The advantage step").
//
// From critic values V [K,B,T] (old critics), token rewards r [B,T], the response mask m [B,T]
// and prompt group ids [B]:
//   1. the critic std sigma per valid token (pass A, fused with the finiteness check and the
//      valid-token counts; into a temporary, so a failed check writes nothing);
//   2. the thresholds of the advantage mask I^A and entropy mask I^H and the sigma quantiles from
//      one radix selection (core/uncertainty_masks.hpp; passes B and C over sigma);
//   3. GAE on the ensemble mean V-bar (core/gae.hpp) in one reverse scan (pass D) that also writes
//      both masks and, when mask_advantages (default), the advantages times I^A, so any PPO loss
//      can consume them; returns R = V-bar + A(lambda_critic). When a threshold value is only partly
//      taken (ties), one forward pass ranks the ties and writes the masks before D;
//   4. optional masked whitening of the advantages (off by default, as in the paper), then I^A;
//   5. shard weights [K,B] for the K critics' losses (core/shards.hpp);
//   6. summary statistics (pass E, cfg.statistics): counts and fractions, thresholds, sigma
//      quantiles, advantage/return moments, and the explained variance of each critic,
//      EV_k = 1 - Var(R - V_k) / Var(R) over valid tokens.
// With a communicator every batch-level quantity (counts, thresholds, ties, quantiles, moments,
// whitening, shard positions) is that of the concatenated batch of all ranks (collective).
// Validation (shapes, K, fractions, gamma/lambda, finiteness of V and r on valid tokens) happens
// before any output is written. Every output is deterministic and independent of thread count.
#pragma once

#include <cmath>
#include <vector>

#include "asyppo/core/advantage_stats.hpp"
#include "asyppo/core/gae.hpp"
#include "asyppo/core/row_span.hpp"
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
  bool statistics = true;       ///< moments and explained variance in the summary (one extra pass)
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
  std::int64_t sequences = 0;       ///< B over every rank
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

namespace detail {

/// Pass A: sigma of every valid token into a temporary (left unset at invalid tokens, where
/// nothing reads it), counting valid and non-finite tokens per row. Writes only the temporary,
/// so a failed check changes no output.
template <class T>
struct sigma_pass {
  ensemble_point<T> point;
  token_view<const T> rewards;
  mask_view mask;
  T* sigma;  // [B,T] contiguous temporary
  index_t cols;
  bool check;
  using value_type = token_tally;
  ASYPPO_HD value_type identity() const { return {0, 0}; }
  ASYPPO_HD void add(value_type& acc, index_t b, index_t t) const {
    if (!mask(b, t)) return;  // sigma is never read at invalid tokens
    acc.valid += 1;
    if (check) {
      bool ok = is_finite_value(rewards(b, t));
      for (index_t k = 0; k < point.values.extent[0]; ++k) ok = ok && is_finite_value(point.values(k, b, t));
      acc.nonfinite += ok ? 0 : 1;
    }
    sigma[b * cols + t] = static_cast<T>(point.std(b, t));
  }
  /// add() over [t0, t1). K = 2 with contiguous rows: one vectorisable loop (sigma is also written
  /// at the invalid tokens of the span, which nothing reads).
  ASYPPO_HD void add_span(value_type& acc, index_t b, index_t t0, index_t t1) const {
    const critic_view<const T>& v = point.values;
    if (v.extent[0] != 2 || !unit_inner_stride(v) || !unit_inner_stride(rewards) || !unit_inner_stride(mask)) {
      for (index_t t = t0; t < t1; ++t) add(acc, b, t);
      return;
    }
    const T *v0 = &v(0, b, 0), *v1 = &v(1, b, 0), *r = &rewards(b, 0);
    const std::uint8_t* m = &mask(b, 0);
    T* s = sigma + b * cols;
    const double half = point.half_span;
    std::int64_t valid = 0, bad = 0;
    for (index_t t = t0; t < t1; ++t) {
      s[t] = static_cast<T>(fabs(static_cast<double>(v0[t]) - static_cast<double>(v1[t])) * half);  // Eq. E4, K = 2
      valid += m[t] != 0;
    }
    if (check)
      for (index_t t = t0; t < t1; ++t)
        bad += (m[t] != 0) & (nonfinite_bits(v0[t]) | nonfinite_bits(v1[t]) | nonfinite_bits(r[t]));
    acc.valid += valid;
    acc.nonfinite += bad;
  }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const {
    return {a.valid + b.valid, a.nonfinite + b.nonfinite};
  }
};


/// Fused into the GAE pass: writes both masks (or reads the adv mask when ties were ranked by a
/// separate pass), copies sigma to the caller's output, and applies I^A to the advantage.
template <class T>
struct mask_hook {
  const T* sigma;
  index_t cols;
  const mask_row_params* rows;
  mask_out adv_mask, entropy_mask;
  token_view<T> std_out;
  bool masks_written;  // ranked ties: masks come from write_masks
  bool apply;          // advantage *= I^A
  ASYPPO_HD void operator()(index_t b, index_t t, bool valid, double& a) const {
    const T s = valid ? sigma[b * cols + t] : T(0);
    if (std_out.data) std_out(b, t) = s;
    std::uint8_t am = 0, em = 0;
    if (masks_written) {
      am = adv_mask(b, t);
    } else {
      if (valid) mask_decision(rows[b], ordered_key(s), 1, 1, am, em);
      adv_mask(b, t) = am;
      entropy_mask(b, t) = em;
    }
    a = (apply & valid & !am) ? 0.0 : a;  // a select, not a branch on the (random) mask
  }
};

template <class T>
struct apply_adv_mask {
  token_view<T> adv;
  mask_view mask;
  view<const std::uint8_t, 2> adv_mask;
  ASYPPO_HD void operator()(index_t b, index_t t) const {
    if (mask(b, t) && !adv_mask(b, t)) adv(b, t) = T(0);  // valid tokens only (raw padding stays)
  }
};

}  // namespace detail

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
  // Named after the config fields the caller set (not mask_options' names).
  detail::check_fraction(where, "adv_mask_fraction", cfg.adv_mask_fraction);
  detail::check_fraction(where, "entropy_filter_fraction", cfg.entropy_filter_fraction);
  if (cfg.whiten_advantages) detail::check_whiten_options(where, cfg.whiten);
  detail::check_memory(be, where, "values", in.values, "rewards", in.rewards, "mask", in.mask, "group_ids", in.group_ids,
                       "out.advantages", out.advantages, "out.returns", out.returns, "out.adv_mask", out.adv_mask,
                       "out.entropy_mask", out.entropy_mask, "out.shard_weights", out.shard_weights, "out.std", out.std);

  // Every pass visits only the columns up to each row's last valid token (core/row_span.hpp); the
  // padding after it is written once, after the checks.
  const auto span = detail::make_row_span(be, in.mask);
  const row_heads heads = span.heads();

  // A. sigma (temporary), finiteness, valid tokens per row.
  const detail::ensemble_point<T> point{in.values, cfg.std == std_kind::unbiased};
  auto sigma = be.template allocate<T>(B * Tn);
  auto tallies = be.template allocate<detail::token_tally>(B);
  be.row_reduce(B, Tn, detail::sigma_pass<T>{point, in.rewards, in.mask, sigma.data(), Tn, cfg.check_finite},
                detail::store_row<detail::token_tally>{tallies.data()}, heads);
  std::vector<detail::token_tally> tally(static_cast<std::size_t>(B));
  be.copy_to_host(tallies.data(), B, tally.data());
  std::vector<index_t> row_valid(static_cast<std::size_t>(B));
  std::int64_t nonfinite = 0;
  for (index_t b = 0; b < B; ++b) {
    row_valid[static_cast<std::size_t>(b)] = tally[static_cast<std::size_t>(b)].valid;
    nonfinite += tally[static_cast<std::size_t>(b)].nonfinite;
  }
  if (nonfinite > 0) detail::fail(where, "values or rewards", nonfinite, " valid token(s) hold NaN or Inf");

  // B, C. Thresholds of both masks and the sigma quantiles from one radix selection.
  const token_view<const T> csigma(sigma.data(), B, Tn);
  // Global valid tokens and sequences (one all-reduce; the summary reports whole-batch counts).
  std::uint64_t n_global[2] = {0, static_cast<std::uint64_t>(B)};
  for (auto v : row_valid) n_global[0] += static_cast<std::uint64_t>(v);
  comm.allreduce_sum(n_global, 2);
  const std::uint64_t n_valid = n_global[0];
  static constexpr double qs[5] = {0.0, 0.25, 0.5, 0.75, 1.0};
  std::vector<std::uint64_t> qranks;
  if (n_valid > 0)
    for (double q : qs) qranks.push_back(static_cast<std::uint64_t>(std::floor(q * static_cast<double>(n_valid - 1))));
  const bool batch_scope = cfg.scope == mask_scope::batch;
  auto plan = detail::plan_masks(be, csigma, in.mask, mo, comm, row_valid,  // sequence scope: comm for counts only
                                 batch_scope ? qranks : std::vector<std::uint64_t>{}, heads);
  if (!batch_scope && !qranks.empty()) {
    std::vector<select_request> req;
    for (auto r : qranks) req.push_back({0, r});
    std::vector<select_result> res(req.size());
    radix_select(be, B, Tn, detail::std_key_of<T>{csigma, in.mask, false}, 8 * int(sizeof(T)),
                 detail::selection_digit_bits(comm), 1, req.data(),
                 static_cast<index_t>(req.size()), res.data(), comm, heads);
    for (auto& r : res) plan.quantiles.push_back(static_cast<double>(detail::key_value<T>(r.key)));
  }
  if (plan.ranked)
    detail::write_masks(be, csigma, in.mask, out.adv_mask, out.entropy_mask, plan.rows.data(), true, heads);

  // D. GAE, with the masks, sigma and I^A fused into its sink; then the padding of every output.
  const bool apply_in_gae = cfg.mask_advantages && !cfg.whiten_advantages;
  const detail::mask_hook<T> hook{sigma.data(), Tn, plan.rows.data(), out.adv_mask, out.entropy_mask, out.std,
                                  plan.ranked, apply_in_gae};
  const gae_outputs<T> gout{out.advantages, out.returns, {}};
  detail::gae_unchecked(be, in.values, in.rewards, in.mask, g, gout, cfg.std, hook, heads);
  detail::write_zero(be, B, Tn, span.tails(), out.advantages, out.returns, out.std, out.adv_mask,
                     out.entropy_mask);

  // Optional whitening (in place); I^A is applied after it.
  if (cfg.whiten_advantages)
    detail::whiten_unchecked(be, token_view<const T>(out.advantages), in.mask, out.advantages, cfg.whiten, comm);
  const bool apply_later = cfg.mask_advantages && cfg.whiten_advantages;

  advantage_summary s;
  s.sequences = static_cast<std::int64_t>(n_global[1]);
  const mask_counts& mc = plan.counts;
  for (std::size_t i = 0; i < plan.quantiles.size() && i < 5; ++i) s.std_quantiles[i] = plan.quantiles[i];
  s.valid_tokens = mc.valid;
  s.adv_masked = mc.adv_masked;
  s.entropy_masked = mc.entropy_masked;
  s.adv_threshold = mc.adv_threshold;
  s.entropy_threshold = mc.entropy_threshold;
  if (mc.valid > 0) {
    s.adv_mask_fraction = static_cast<double>(mc.adv_masked) / static_cast<double>(mc.valid);
    s.entropy_filter_fraction = static_cast<double>(mc.entropy_masked) / static_cast<double>(mc.valid);
  }

  // E. Summary moments (and I^A after whitening).
  if (cfg.statistics)
    detail::advantage_moments(be, in.values, out.advantages, token_view<const T>(out.returns), in.mask,
                              view<const std::uint8_t, 2>(out.adv_mask), apply_later, s, comm, heads);
  else if (apply_later)
    be.for_each(B, Tn, detail::apply_adv_mask<T>{out.advantages, in.mask, view<const std::uint8_t, 2>(out.adv_mask)},
                heads);

  // Shards.
  // Shards are requested by a [K,B] view; with B = 0 on some rank its data may be null, and every
  // rank must still take part in the collective group placement.
  if (detail::present(out.shard_weights) || out.shard_weights.extent[0] == K)
    detail::shard_weights_unchecked(be, in.group_ids, make_group_layout(be, in.group_ids), K, out.shard_weights,
                                    cfg.shards, {}, comm);
  return s;
}

}  // namespace asyppo
