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
// advantage_step_to (docs/algorithm.md, A5): the same outputs, bit for bit, with the summary left in
// backend memory and the selection resident there (no host round trip once checks are off); one
// process.
// Inputs in float, double, bfloat16 or float16 (read exactly); outputs and gradients in
// compute_type_t of the input type (half_types.hpp: float for the 16-bit types): the float call's bits.
#pragma once

#include <cmath>
#include <limits>
#include <utility>
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

/// T: float, double, bfloat16 or float16 (the outputs: advantage_outputs<compute_type_t<T>>).
template <class T>
struct advantage_inputs {
  critic_view<const T> values;             ///< [K,B,T]
  token_view<const T> rewards;             ///< [B,T]
  mask_view mask;                          ///< [B,T]
  seq_view<const std::int64_t> group_ids;  ///< [B]
};

/// T: the inputs' compute type (compute_type_t, half_types.hpp).
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

/// What advantage_step_to leaves in backend memory: advantage_summary's fields but the explained
/// variances (a separate [K] array), with the same meaning.
struct advantage_step_result {
  std::int64_t sequences = 0;
  std::int64_t valid_tokens = 0;
  std::int64_t adv_masked = 0;
  std::int64_t entropy_masked = 0;
  double adv_mask_fraction = 0;
  double entropy_filter_fraction = 0;
  double adv_threshold = NAN;
  double entropy_threshold = NAN;
  double std_quantiles[5] = {NAN, NAN, NAN, NAN, NAN};
  double advantage_mean = 0, advantage_std = 0;
  double return_mean = 0, return_std = 0;
};

namespace detail {

/// s[t] = sigma of K = 2 critics' values v0[t], v1[t] over [t0, t1) (Eq. E4: |v0 - v1| half_span, in the
/// compute type C), whatever the mask: one loop that vectorises (the CPU's rows of pass A and of the
/// selection's sigma-writing first pass).
template <class T, class C>
ASYPPO_HD void write_sigma_k2(const T* v0, const T* v1, double half_span, C* s, index_t t0, index_t t1) {
  for (index_t t = t0; t < t1; ++t)
    s[t] = static_cast<C>(fabs(static_cast<double>(v0[t]) - static_cast<double>(v1[t])) * half_span);
}

/// Pass A: sigma of every valid token into a temporary, counting valid and non-finite tokens per row.
/// Writes only the temporary, so a failed check changes no output. Every token of a row's range is
/// written (0 at an invalid one, which nothing reads as a sigma), so later passes may read sigma there
/// whatever the mask. Split into load (reads the token, computes sigma; the values and reward are read
/// whether or not it is valid: in bounds, and a select rather than a branch, so a device has a run's
/// loads in flight together) and apply (stores and counts); add = apply(load).
template <class T>
struct sigma_pass {
  ensemble_point<T> point;
  token_view<const T> rewards;
  mask_view mask;
  compute_type_t<T>* sigma;  // [B,T] contiguous temporary
  index_t cols;
  bool check;
  using value_type = token_tally;
  using C = compute_type_t<T>;
  struct token_type {
    C sigma;
    bool valid, bad;
  };
  ASYPPO_HD value_type identity() const { return {0, 0}; }
  ASYPPO_HD token_type load(index_t b, index_t t) const {
    const bool valid = mask(b, t) != 0;
    bool ok = true;
    if (check) {
      ok = is_finite_value(rewards(b, t));
      for (index_t k = 0; k < point.values.extent[0]; ++k) ok = ok && is_finite_value(point.values(k, b, t));
    }
    const C s = static_cast<C>(point.std(b, t));
    return {valid ? s : C(0), valid, valid && !ok};
  }
  ASYPPO_HD void apply(value_type& acc, index_t b, index_t t, const token_type& k) const {
    acc.valid += k.valid ? 1 : 0;
    acc.nonfinite += k.bad ? 1 : 0;
    sigma[b * cols + t] = k.sigma;
  }
  ASYPPO_HD void add(value_type& acc, index_t b, index_t t) const { apply(acc, b, t, load(b, t)); }
  /// add() over [t0, t1). K = 2 with contiguous rows: one vectorisable loop (sigma at the invalid tokens
  /// of the span is the std of their values, not 0: nothing reads it as a sigma either).
  ASYPPO_HD void add_span(value_type& acc, index_t b, index_t t0, index_t t1) const {
    const critic_view<const T>& v = point.values;
    if (v.extent[0] != 2 || !unit_inner_stride(v) || !unit_inner_stride(rewards) || !unit_inner_stride(mask)) {
      for (index_t t = t0; t < t1; ++t) add(acc, b, t);
      return;
    }
    const T *v0 = &v(0, b, 0), *v1 = &v(1, b, 0), *r = &rewards(b, 0);
    const std::uint8_t* m = &mask(b, 0);
    write_sigma_k2(v0, v1, point.half_span, sigma + b * cols, t0, t1);
    std::int64_t valid = 0, bad = 0;
    for (index_t t = t0; t < t1; ++t) valid += m[t] != 0;
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

// Whether advantage_step_to without the NaN/Inf check computes sigma in its selection's first pass (1:
// sigma_writing_keys; the valid tokens per row come from the row-ends pass either way) or in pass A, as
// with the check (0). A tuning choice for a device: one pass over the values and the mask fewer, against a first
// histogram pass that reads the values instead of sigma. Results do not depend on it. Not yet measured on
// a GPU (docs/benchmarks.md, "Prepared without a GPU, third time").
#ifndef ASYPPO_STEP_SIGMA_IN_SELECTION
#define ASYPPO_STEP_SIGMA_IN_SELECTION 1
#endif

/// advantage_step_to without the NaN/Inf check: sigma has no pass of its own, the resident selection's first
/// pass computes it (radix_select_resident_from, docs/algorithm.md S4). Its key function: sigma of (b, t) as
/// pass A computes it (0 at an invalid token), written to the temporary at every token of the range, and the
/// validity, segment and key std_key_of<C>{temporary, mask, per_row} then reads there.
template <class T>
struct sigma_writing_keys {
  using C = compute_type_t<T>;
  ensemble_point<T> point;
  mask_view mask;
  C* sigma;  // [B,T] contiguous temporary
  index_t cols;
  bool per_row;
  ASYPPO_HD bool operator()(index_t b, index_t t, index_t& seg, std::uint64_t& key) const {
    const bool valid = mask(b, t) != 0;
    const C s = static_cast<C>(point.std(b, t));  // read whatever the mask: no load waits for the mask's
    sigma[b * cols + t] = valid ? s : C(0);
    seg = per_row ? b : 0;
    key = ordered_key(s);
    return valid;
  }
  /// The CPU's rows (detail::for_each_key): K = 2 with contiguous rows, sigma of [t0, t1) in one loop (pass A's
  /// span: the std at invalid tokens too, which nothing reads as a sigma), then f over the valid tokens.
  template <class F>
  bool for_each_key(index_t b, index_t t0, index_t t1, F&& f) const {
    const critic_view<const T>& v = point.values;
    if (v.extent[0] != 2 || !unit_inner_stride(v) || !unit_inner_stride(mask)) return false;
    C* s = sigma + b * cols;
    write_sigma_k2(&v(0, b, 0), &v(1, b, 0), point.half_span, s, t0, t1);
    const std::uint8_t* m = &mask(b, 0);
    const index_t seg = per_row ? b : 0;
    for (index_t t = t0; t < t1; ++t)
      if (m[t]) f(seg, ordered_key(s[t]));
    return true;
  }
};

/// Fused into the GAE pass: writes both masks (in a row whose ties need ranks, rank_ties, reads the
/// adv mask that write_ranked_rows wrote before), copies sigma to the caller's output, and applies
/// I^A to the advantage.
template <class T>
struct mask_hook {
  const T* sigma;
  index_t cols;
  const mask_row_params* rows;
  mask_out adv_mask, entropy_mask;
  token_view<T> std_out;
  bool apply;  // advantage *= I^A
  using token_type = T;  // sigma at the token (0 at a masked one)
  ASYPPO_HD T load(index_t b, index_t t, bool valid) const {
    const T s = sigma[b * cols + t];  // written at every token of the range (pass A): no wait for the mask
    return valid ? s : T(0);
  }
  ASYPPO_HD void operator()(index_t b, index_t t, bool valid, double& a, T s) const {
    if (std_out.data) std_out(b, t) = s;
    std::uint8_t am = 0, em = 0;
    if (rows[b].rank_ties) {
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

/// The options of the step's GAE and masks.
struct advantage_step_options {
  gae_options gae;
  mask_options masks;
};

/// Checks of advantage_step and advantage_step_to (before any backend call that writes).
template <class Backend, class T>
advantage_step_options check_advantage_step(const Backend& be, const char* where, const advantage_inputs<T>& in,
                                            const advantage_outputs<compute_type_t<T>>& out,
                                            const advantage_config& cfg) {
  check_view(where, "values", in.values);
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
  return {g, mo};
}

/// Pass A: sigma of every valid token (a [B,T] temporary, in the compute type) and each row's tally
/// (valid and non-finite tokens), both in backend memory.
template <class Backend, class T>
struct sigma_tallies {
  decltype(std::declval<const Backend&>().template allocate<compute_type_t<T>>(0)) sigma;
  decltype(std::declval<const Backend&>().template allocate<token_tally>(0)) tallies;
};
template <class Backend, class T>
sigma_tallies<Backend, T> sigma_pass_of(const Backend& be, const advantage_inputs<T>& in, const advantage_config& cfg,
                                        row_heads heads) {
  const index_t B = in.values.extent[1], Tn = in.values.extent[2];
  const ensemble_point<T> point{in.values, cfg.std == std_kind::unbiased};
  sigma_tallies<Backend, T> r{be.template allocate<compute_type_t<T>>(B * Tn), be.template allocate<token_tally>(B)};
  be.row_reduce(B, Tn, sigma_pass<T>{point, in.rewards, in.mask, r.sigma.data(), Tn, cfg.check_finite},
                store_row<token_tally>{r.tallies.data()}, heads);
  return r;
}

inline void fail_if_nonfinite(const char* where, const std::vector<token_tally>& tally) {
  std::int64_t n = 0;
  for (const auto& t : tally) n += t.nonfinite;
  if (n > 0) fail(where, "values or rewards", n, " valid token(s) hold NaN or Inf");
}

/// advantage_step after its checks (where: the entry point named in errors).
template <class Backend, class T, class Comm>
advantage_summary advantage_step_checked(const Backend& be, const char* where, const advantage_inputs<T>& in,
                                         const advantage_outputs<compute_type_t<T>>& out, const advantage_config& cfg,
                                         const advantage_step_options& opts, const Comm& comm) {
  using C = compute_type_t<T>;  // sigma and every output
  const gae_options& g = opts.gae;
  const mask_options& mo = opts.masks;
  const index_t K = in.values.extent[0], B = in.values.extent[1], Tn = in.values.extent[2];

  // Every pass visits only the columns up to each row's last valid token (core/row_span.hpp); the
  // padding after it is written once, after the checks.
  const auto span = detail::make_row_span(be, in.mask);
  const row_heads heads = span.heads();

  // A. sigma (temporary), finiteness, valid tokens per row.
  const auto pass_a = detail::sigma_pass_of(be, in, cfg, heads);
  const auto& sigma = pass_a.sigma;
  std::vector<detail::token_tally> tally(static_cast<std::size_t>(B));
  be.copy_to_host(pass_a.tallies.data(), B, tally.data());
  detail::fail_if_nonfinite(where, tally);
  std::vector<index_t> row_valid(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) row_valid[static_cast<std::size_t>(b)] = tally[static_cast<std::size_t>(b)].valid;

  // B, C. Thresholds of both masks and the sigma quantiles from one radix selection.
  const token_view<const C> csigma(sigma.data(), B, Tn);
  // Global valid tokens and sequences (one all-reduce; the summary reports whole-batch counts).
  std::uint64_t n_global[2] = {0, static_cast<std::uint64_t>(B)};
  for (auto v : row_valid) n_global[0] += static_cast<std::uint64_t>(v);
  comm.allreduce_sum(n_global, 2);
  const std::uint64_t n_valid = n_global[0];
  std::vector<std::uint64_t> qranks;
  if (n_valid > 0)
    for (int j = 0; j < detail::std_quantile_count; ++j) qranks.push_back(detail::std_quantile_rank(j, n_valid));
  const bool batch_scope = cfg.scope == mask_scope::batch;
  auto plan = detail::plan_masks(be, csigma, in.mask, mo, comm, row_valid,  // sequence scope: comm for counts only
                                 batch_scope ? qranks : std::vector<std::uint64_t>{}, heads);
  if (!batch_scope && !qranks.empty()) {
    std::vector<select_request> req;
    for (auto r : qranks) req.push_back({0, r});
    std::vector<select_result> res(req.size());
    radix_select(be, B, Tn, detail::std_key_of<C>{csigma, in.mask, false}, 8 * int(sizeof(C)),
                 detail::selection_digit_bits(comm), 1, req.data(),
                 static_cast<index_t>(req.size()), res.data(), comm, heads);
    for (auto& r : res) plan.quantiles.push_back(static_cast<double>(detail::key_value<C>(r.key)));
  }
  if (plan.ranked)  // the rows whose ties need ranks; the GAE pass decides the others
    detail::write_ranked_rows(be, csigma, in.mask, out.adv_mask, out.entropy_mask, plan.rows.data(), heads);

  // D. GAE, with the masks, sigma and I^A fused into its sink; then the padding of every output.
  const bool apply_in_gae = cfg.mask_advantages && !cfg.whiten_advantages;
  const detail::mask_hook<C> hook{sigma.data(), Tn, plan.rows.data(), out.adv_mask, out.entropy_mask, out.std,
                                  apply_in_gae};
  const gae_outputs<C> gout{out.advantages, out.returns, {}};
  detail::gae_unchecked(be, in.values, in.rewards, in.mask, g, gout, cfg.std, hook, heads,
                        detail::zero_fill_of(out.advantages, out.returns, out.std, out.adv_mask, out.entropy_mask));

  // Optional whitening (in place); I^A is applied after it.
  if (cfg.whiten_advantages)
    detail::whiten_no_moments(be, token_view<const C>(out.advantages), in.mask, out.advantages, cfg.whiten, comm);
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
    detail::advantage_moments(be, in.values, out.advantages, token_view<const C>(out.returns), in.mask,
                              view<const std::uint8_t, 2>(out.adv_mask), apply_later, s, comm, heads);
  else if (apply_later)
    be.for_each(B, Tn, detail::apply_adv_mask<C>{out.advantages, in.mask, view<const std::uint8_t, 2>(out.adv_mask)},
                heads);

  // Shards.
  // Shards are requested by a [K,B] view; with B = 0 on some rank its data may be null, and every
  // rank must still take part in the collective group placement.
  if (detail::present(out.shard_weights) || out.shard_weights.extent[0] == K)
    detail::shard_weights_of(be, in.group_ids, K, out.shard_weights, cfg.shards, {}, comm);
  return s;
}

/// The fields advantage_summary and advantage_step_result share (same names, same meaning), from one to
/// the other.
template <class From, class To>
void copy_summary_fields(const From& f, To& t) {
  t.sequences = f.sequences;
  t.valid_tokens = f.valid_tokens;
  t.adv_masked = f.adv_masked;
  t.entropy_masked = f.entropy_masked;
  t.adv_mask_fraction = f.adv_mask_fraction;
  t.entropy_filter_fraction = f.entropy_filter_fraction;
  t.adv_threshold = f.adv_threshold;
  t.entropy_threshold = f.entropy_threshold;
  for (int q = 0; q < std_quantile_count; ++q) t.std_quantiles[q] = f.std_quantiles[q];
  t.advantage_mean = f.advantage_mean;
  t.advantage_std = f.advantage_std;
  t.return_mean = f.return_mean;
  t.return_std = f.return_std;
}

template <class Backend, class T>
void advantage_step_resident(const Backend& be, const advantage_inputs<T>& in,
                             const advantage_outputs<compute_type_t<T>>& out, advantage_step_result* result,
                             double* explained_variance, const advantage_config& cfg,
                             const advantage_step_options& opts, const char* where);

}  // namespace detail

/// The whole step (see the top of this file). On a device backend in one process it takes
/// advantage_step_to's resident path and reads its summary back (the same bits): one wait for the
/// finiteness check, one for the summary, instead of the host-driven selection's round trips.
template <class Backend, class T, class Comm = single_process>
advantage_summary advantage_step(const Backend& be, const advantage_inputs<T>& in,
                                 const advantage_outputs<compute_type_t<T>>& out, const advantage_config& cfg = {},
                                 const Comm& comm = {}) {
  constexpr const char* where = "asyppo::advantage_step";
  const detail::advantage_step_options opts = detail::check_advantage_step(be, where, in, out, cfg);
  if constexpr (detail::device_in_one_process<Backend, Comm>) {
    const index_t K = cfg.statistics ? in.values.extent[0] : 0;
    auto result = be.template allocate<advantage_step_result>(1);
    auto ev = be.template allocate<double>(K);
    detail::advantage_step_resident(be, in, out, result.data(), K > 0 ? ev.data() : nullptr, cfg, opts, where);
    advantage_step_result r;
    be.copy_to_host(result.data(), 1, &r);
    advantage_summary s;
    detail::copy_summary_fields(r, s);
    s.explained_variance.resize(static_cast<std::size_t>(K));
    if (K > 0) be.copy_to_host(ev.data(), K, s.explained_variance.data());
    return s;
  } else {
    return detail::advantage_step_checked(be, where, in, out, cfg, opts, comm);
  }
}

namespace detail {

/// advantage_summary's fields in an advantage_step_result (the explained variances aside).
inline advantage_step_result result_of(const advantage_summary& s) {
  advantage_step_result r;
  copy_summary_fields(s, r);
  return r;
}

/// One thread: the counts, fractions, thresholds and quantiles of advantage_step_to's result (moments
/// zero: the summary pass writes them after), and NaN in the explained variances (ev [nev]; the summary
/// pass writes those it can).
template <class T>
struct store_step_counts {
  const mask_totals* totals;
  const resident_request* masks;      // the mask requests of the plan (batch scope: thresholds)
  const resident_request* quantiles;  // [std_quantile_count]
  index_t sequences;
  bool per_row;
  advantage_step_result* out;
  double* ev;
  index_t nev;
  ASYPPO_HD void operator()(index_t, index_t) const {
    for (index_t k = 0; k < nev; ++k) ev[k] = std::numeric_limits<double>::quiet_NaN();
    const mask_counts mc = mask_counts_of<T>(*totals, masks, per_row);
    advantage_step_result s;
    s.sequences = sequences;
    s.valid_tokens = mc.valid;
    s.adv_masked = mc.adv_masked;
    s.entropy_masked = mc.entropy_masked;
    if (mc.valid > 0) {
      s.adv_mask_fraction = static_cast<double>(mc.adv_masked) / static_cast<double>(mc.valid);
      s.entropy_filter_fraction = static_cast<double>(mc.entropy_masked) / static_cast<double>(mc.valid);
    }
    s.adv_threshold = mc.adv_threshold;
    s.entropy_threshold = mc.entropy_threshold;
    for (int j = 0; j < std_quantile_count; ++j) s.std_quantiles[j] = selected_value<T>(quantiles[j]);
    *out = s;
  }
};

/// advantage_step_to's device path after its checks: every decision in backend memory.
template <class Backend, class T>
void advantage_step_resident(const Backend& be, const advantage_inputs<T>& in,
                             const advantage_outputs<compute_type_t<T>>& out, advantage_step_result* result,
                             double* explained_variance, const advantage_config& cfg,
                             const advantage_step_options& opts, const char* where) {
  using C = compute_type_t<T>;  // sigma and every output
  const index_t K = in.values.extent[0], B = in.values.extent[1], Tn = in.values.extent[2];
  const auto span = make_row_span(be, in.mask, true);  // the rows' ends and valid tokens, one pass
  const row_heads heads = span.heads();
  const bool per_row = cfg.scope == mask_scope::sequence;
  // A. With the finiteness check (the only wait): sigma (pass A). Without it, sigma comes from the
  // selection's first pass below.
  const bool own_pass = cfg.check_finite || !ASYPPO_STEP_SIGMA_IN_SELECTION;
  sigma_tallies<Backend, T> pass_a{be.template allocate<C>(own_pass ? 0 : B * Tn), be.template allocate<token_tally>(0)};
  if (own_pass) pass_a = sigma_pass_of(be, in, cfg, heads);
  if (cfg.check_finite) {
    std::vector<token_tally> tally(static_cast<std::size_t>(B));
    be.copy_to_host(pass_a.tallies.data(), B, tally.data());
    fail_if_nonfinite(where, tally);
  }
  // Where the summary goes (E below).
  auto own_result = be.template allocate<advantage_step_result>(result ? 0 : 1);
  advantage_step_result* res = result ? result : own_result.data();
  auto own_ev = be.template allocate<double>(cfg.statistics && !explained_variance ? K : 0);
  double* ev = explained_variance ? explained_variance : own_ev.data();
  const index_t nev = cfg.statistics ? K : 0;
  // B, C. The resident plan of both masks (batch scope: with the quantiles, and the summary's counts
  // written by the plan's row setup: one launch fewer); sequence scope: the quantiles by a selection over
  // the whole batch.
  const token_view<const C> sigma(pass_a.sigma.data(), B, Tn);
  const row_count_array count{span.counts.data()};
  const auto batch_counts = [&](const auto& p) {
    return store_step_counts<C>{p.totals.data(), p.results, p.results + 2, B, false, res, ev, nev};
  };
  const auto plan_with = [&](auto first) {
    if (per_row) return plan_masks_resident(be, sigma, in.mask, opts.masks, count, std_quantile_count, heads, first);
    return plan_masks_resident(be, sigma, in.mask, opts.masks, count, std_quantile_count, heads, first, batch_counts);
  };
  const auto plan = [&] {
    if (own_pass) return plan_with(sigma_as_read{});
    const ensemble_point<T> point{in.values, cfg.std == std_kind::unbiased};
    return plan_with(sigma_writing_keys<T>{point, in.mask, pass_a.sigma.data(), Tn, per_row});
  }();
  const resident_request* quantiles = plan.results + 2;
  auto qa = be.template allocate<resident_request>(per_row ? std_quantile_count : 0);
  auto qb = be.template allocate<resident_request>(per_row ? std_quantile_count : 0);
  if (per_row) {
    be.for_each(1, 1, mask_request_setup<row_count_array>{count, plan.totals.data(), qa.data(), std_quantile_count, 0, 0,
                                                          false, false, std_quantile_count});
    quantiles = radix_select_resident(be, B, Tn, std_key_of<C>{sigma, in.mask, false}, 8 * int(sizeof(C)), 1,
                                      std_quantile_count, qa.data(), qb.data(), heads);
  }
  write_ranked_rows(be, sigma, in.mask, out.adv_mask, out.entropy_mask, plan.rows.data(), heads);

  // D. GAE with the masks (but in the rows ranked above), sigma and I^A fused into its sink; the
  // padding of every output.
  const bool apply_in_gae = cfg.mask_advantages && !cfg.whiten_advantages;
  const mask_hook<C> hook{pass_a.sigma.data(), Tn, plan.rows.data(), out.adv_mask, out.entropy_mask, out.std,
                          apply_in_gae};
  gae_unchecked(be, in.values, in.rewards, in.mask, opts.gae, gae_outputs<C>{out.advantages, out.returns, {}}, cfg.std,
                hook, heads, zero_fill_of(out.advantages, out.returns, out.std, out.adv_mask, out.entropy_mask));
  if (cfg.whiten_advantages)
    whiten_resident(be, token_view<const C>(out.advantages), in.mask, out.advantages, nullptr, cfg.whiten, heads);
  const bool apply_later = cfg.mask_advantages && cfg.whiten_advantages;

  // E. The summary: counts first (batch scope: already written by the plan), then the moments pass (which
  // also applies I^A after whitening).
  if (per_row)
    be.for_each(1, 1, store_step_counts<C>{plan.totals.data(), plan.results, quantiles, B, per_row, res, ev, nev});
  if (cfg.statistics) {
    advantage_moments_to(be, in.values, out.advantages, token_view<const C>(out.returns), in.mask,
                         view<const std::uint8_t, 2>(out.adv_mask), apply_later, res, ev, heads);
  } else if (apply_later) {
    be.for_each(B, Tn, apply_adv_mask<C>{out.advantages, in.mask, view<const std::uint8_t, 2>(out.adv_mask)}, heads);
  }
  // F. Shards.
  if (present(out.shard_weights)) shard_weights_of(be, in.group_ids, K, out.shard_weights, cfg.shards, {}, single_process{});
}

}  // namespace detail

/// advantage_step with nothing read on the host (docs/algorithm.md, A5): the same outputs, bit for bit,
/// and the summary written to *result and the critics' explained variances to explained_variance [K]
/// (both backend memory, both optional; explained_variance is written only with cfg.statistics). The
/// masks' thresholds, ties and the sigma quantiles come from the resident selection (core/select.hpp),
/// whitening from masked_whiten_to's device state, the shard weights from the group layout's sort and
/// scan (core/shards.hpp). One process. With cfg.check_finite the NaN/Inf check waits for the device
/// (one round trip); without it nothing does, so a CUDA graph can hold the call. A host-memory backend
/// (the CPU's), where nothing waits, takes advantage_step's path. Throws like advantage_step.
template <class Backend, class T>
void advantage_step_to(const Backend& be, const advantage_inputs<T>& in, const advantage_outputs<compute_type_t<T>>& out,
                       advantage_step_result* result, double* explained_variance, const advantage_config& cfg = {}) {
  constexpr const char* where = "asyppo::advantage_step_to";
  const detail::advantage_step_options opts = detail::check_advantage_step(be, where, in, out, cfg);
  if (result) detail::check_memory(be, where, "result", seq_view<advantage_step_result>(result, 1));
  if (explained_variance)
    detail::check_memory(be, where, "explained_variance", seq_view<double>(explained_variance, in.values.extent[0]));
  if constexpr (detail::host_memory_backend<Backend>) {  // nothing to wait for: the host path, its summary copied
    const advantage_summary s = detail::advantage_step_checked(be, where, in, out, cfg, opts, single_process{});
    if (result) *result = detail::result_of(s);
    if (explained_variance)
      for (std::size_t k = 0; k < s.explained_variance.size(); ++k) explained_variance[k] = s.explained_variance[k];
  } else {
    detail::advantage_step_resident(be, in, out, result, explained_variance, cfg, opts, where);
  }
}

}  // namespace asyppo
