// asyppo/core/outcome.hpp: outcome-reward baselines (docs/algorithm.md, outcome baselines).
//
// Per sequence b with score s_b in prompt group g (n_g members, mean mu_g, std sd_g):
//   GRPO        A_b = (s_b - mu_g) / (sd_g + eps)     sd unbiased by default (torch.std), eps 1e-6
//   Dr.GRPO     A_b = s_b - mu_g                       (grpo with norm_by_std = false)
//   RLOO        A_b = s_b - mean of the other members = (s_b - mu_g) n_g / (n_g - 1)
//   RF++-base   A_b = s_b - mu_g, then masked whitening of A_b m[b,t] over the batch
//   RF++        G[b,t] = r[b,t] + gamma G[b,t'] over valid tokens (t' the next valid one;
//               masked tokens are transparent and get 0), then masked whitening
// Per-token outputs are A_b m[b,t]. Singleton groups (n_g = 1) follow singleton_rule:
//   verl: mu = 0 and sd = 1 for the group, so GRPO gives s_b/(1+eps), Dr.GRPO, RLOO and
//         RF++-baseline give s_b (verl's loop estimators);
//   zero: A_b = 0 (the group carries no baseline information; verl's vectorised RLOO).
// Group statistics use Welford accumulation in double over each group's members in batch
// order; every output is deterministic.
// Across ranks (comm of size R > 1; every function below takes an optional communicator, default
// single_process): a group is every sequence with the same id on ANY rank, so groups may span
// ranks. Each rank computes (id, n, mean, M2) of its local groups as above, the ranks allgather
// them (three collectives: the group counts, then the ids and the statistics padded to the largest
// count, O(R * max local groups) values), and every rank merges the entries of each of its ids in
// rank order with Chan's pairwise formula; the merged statistics replace the local ones. n and the
// singleton rule are exact; means and stds match a single process holding the concatenated batch
// up to the rounding of the merge (a few ulps). With single_process (or R = 1) nothing is
// exchanged and the results are exactly those of the one-process code path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "asyppo/comm/communicator.hpp"
#include "asyppo/core/groups.hpp"
#include "asyppo/core/lane_sums.hpp"
#include "asyppo/core/modes.hpp"
#include "asyppo/core/validate.hpp"
#include "asyppo/core/whiten.hpp"

namespace asyppo {

enum class singleton_rule { verl, zero };

struct grpo_options {
  bool norm_by_std = true;  ///< false: Dr.GRPO (mean only)
  double eps = 1e-6;
  std_kind std = std_kind::unbiased;
  singleton_rule singleton = singleton_rule::verl;
  bool check_finite = true;
};

struct rloo_options {
  singleton_rule singleton = singleton_rule::verl;
  bool check_finite = true;
};

struct reinforce_options {
  double gamma = 1.0;          ///< REINFORCE++ only
  whiten_options whiten = {};  ///< whitening of the token advantages (verl: unbiased, eps 1e-8)
  singleton_rule singleton = singleton_rule::verl;  ///< REINFORCE++-baseline only
};

template <class T>
struct outcome_outputs {
  token_view<T> advantages{};  ///< [B,T]: A_b m[b,t]
  seq_view<T> sequence{};      ///< [B], optional: A_b (GRPO, RLOO, RF++-baseline before whitening)
};

namespace detail {

struct group_stats {
  double n, mean, m2;
};

template <class T>
struct group_welford {
  seq_view<const T> scores;
  const index_t* perm;
  using value_type = group_stats;
  ASYPPO_HD group_stats identity() const { return {0, 0, 0}; }
  ASYPPO_HD void add(group_stats& a, index_t p) const {
    const double x = static_cast<double>(scores(perm[p]));
    a.n += 1;
    const double d = x - a.mean;
    a.mean += d / a.n;
    a.m2 += d * (x - a.mean);
  }
  ASYPPO_HD group_stats combine(const group_stats& a, const group_stats& b) const {
    const double n = a.n + b.n;
    if (n == 0) return a;
    const double d = b.mean - a.mean;
    return {n, a.mean + d * b.n / n, a.m2 + b.m2 + d * d * a.n * b.n / n};
  }
};

struct store_group_stats {
  group_stats* out;
  ASYPPO_HD void operator()(index_t g, const group_stats& s) const { out[g] = s; }
};

enum class baseline_kind { grpo, dr_grpo, rloo, mean };

template <class T>
struct baseline_kernel {
  seq_view<const T> scores;
  mask_view mask;
  outcome_outputs<T> out;
  const index_t* group_of;
  const group_stats* stats;
  baseline_kind kind;
  singleton_rule singleton;
  double eps;
  bool unbiased;
  ASYPPO_HD double advantage(index_t b) const {
    const group_stats& g = stats[group_of[b]];
    const double s = static_cast<double>(scores(b));
    if (g.n < 2) {
      if (singleton == singleton_rule::zero) return 0.0;
      return kind == baseline_kind::grpo ? s / (1.0 + eps) : s;  // verl: mean 0, std 1
    }
    switch (kind) {
      case baseline_kind::grpo: {
        const double var = g.m2 / (unbiased ? g.n - 1 : g.n);
        return (s - g.mean) / (sqrt(var) + eps);
      }
      case baseline_kind::rloo: return (s - g.mean) * g.n / (g.n - 1);
      default: return s - g.mean;
    }
  }
};

template <class T>
struct count_nonfinite_seq {
  seq_view<const T> s;
  using value_type = index_t;
  ASYPPO_HD index_t identity() const { return 0; }
  ASYPPO_HD void add(index_t& a, index_t i) const { a += is_finite_value(s(i)) ? 0 : 1; }
  ASYPPO_HD index_t combine(index_t a, index_t b) const { return a + b; }
};

/// One advantage per sequence (into a temporary and, when requested, out.sequence).
template <class T>
struct sequence_advantage_kernel {
  baseline_kernel<T> k;
  double* seq;
  ASYPPO_HD void operator()(index_t b) const {
    const double a = k.advantage(b);
    seq[b] = a;
    if (k.out.sequence.data) k.out.sequence(b) = static_cast<T>(a);
  }
};

/// A_b m[b,t] over the tokens.
template <class T>
struct broadcast_kernel {
  const double* seq;
  mask_view mask;
  token_view<T> out;
  ASYPPO_HD void operator()(index_t b, index_t t) const { out(b, t) = mask(b, t) ? static_cast<T>(seq[b]) : T(0); }
  /// The same over [t0, t1) of a contiguous row: one select per token (vectorises).
  ASYPPO_HD void span(index_t b, index_t t0, index_t t1) const {
    if (!unit_inner_stride(mask) || !unit_inner_stride(out)) {
      for (index_t t = t0; t < t1; ++t) (*this)(b, t);
      return;
    }
    const std::uint8_t* m = &mask(b, 0);
    T* o = &out(b, 0);
    const T a = static_cast<T>(seq[b]);
    for (index_t t = t0; t < t1; ++t) o[t] = m[t] ? a : T(0);
  }
};

template <class T>
struct row_sum_reducer {
  token_view<const T> r;
  using value_type = lane_sums;
  ASYPPO_HD lane_sums identity() const { return lane_sums::zero(); }
  ASYPPO_HD void add(lane_sums& a, index_t b, index_t t) const { a.v[t & 7] += static_cast<double>(r(b, t)); }
  ASYPPO_HD void add_span(lane_sums& a, index_t b, index_t t0, index_t t1) const {
    index_t t = t0;
    if (unit_inner_stride(r)) {
      for (; t < t1 && (t & 7) != 0; ++t) add(a, b, t);
      const T* p = &r(b, 0);
      for (; t + 8 <= t1; t += 8)
        for (int j = 0; j < 8; ++j) a.v[j] += static_cast<double>(p[t + j]);
    }
    for (; t < t1; ++t) add(a, b, t);
  }
  ASYPPO_HD lane_sums combine(const lane_sums& x, const lane_sums& y) const { return x + y; }
};

template <class T>
struct store_seq {
  seq_view<T> s;
  ASYPPO_HD void operator()(index_t b, const lane_sums& v) const { s(b) = static_cast<T>(v.total()); }
};

template <class Backend, class T>
void check_outcome_args(const Backend& be, const char* where, seq_view<const T> scores,
                        seq_view<const std::int64_t> ids, mask_view mask, const outcome_outputs<T>& out,
                        bool check_finite) {
  check_view(where, "scores", scores);
  const index_t B = scores.extent[0];
  check_input(where, "group_ids", ids, {B});
  check_view(where, "mask", mask);
  if (mask.extent[0] != B) fail(where, "mask", "extent 0 is ", mask.extent[0], ", expected ", B);
  const index_t Tn = mask.extent[1];
  if (!present(mask) && B * Tn > 0) fail(where, "mask", "is required");
  check_optional_output(where, "out.advantages", out.advantages, {B, Tn});
  check_memory(be, where, "scores", scores, "group_ids", ids, "mask", mask, "out.advantages", out.advantages,
               "out.sequence", out.sequence);
  check_optional_output(where, "out.sequence", out.sequence, {B});
  if (check_finite) {
    // Scores are per sequence: every one must be finite.
    const index_t bad = be.reduce(B, count_nonfinite_seq<T>{scores});
    if (bad > 0) fail(where, "scores", bad, " score(s) are NaN or Inf");
  }
}


/// Distributed path of the group statistics (comm.size() > 1, collective): replaces the statistics
/// of each local group (stats, backend memory, [L.count]) by those of every member with the same id
/// on every rank, merged in rank order with Chan's formula. See the header comment.
template <class Backend, class Comm>
void merge_group_stats_over_ranks(const Backend& be, seq_view<const std::int64_t> ids, const group_layout<Backend>& L,
                                  group_stats* stats, const Comm& comm) {
  const index_t G = L.count;
  const int R = comm.size();
  std::vector<std::int64_t> label(static_cast<std::size_t>(G));
  std::vector<group_stats> local(static_cast<std::size_t>(G));
  if (G > 0) {
    auto d_label = be.template allocate<std::int64_t>(G);
    be.for_each(G, group_label{ids, L.perm.data(), L.offsets.data(), d_label.data()});
    be.copy_to_host(d_label.data(), G, label.data());
    be.copy_to_host(stats, G, local.data());
  }
  // 1. How many groups each rank holds (sizes vary); 2. ids and (n, mean, M2), padded to the max.
  std::vector<std::int64_t> count(static_cast<std::size_t>(R));
  const std::int64_t g64 = G;
  comm.allgather(&g64, 1, count.data());
  const index_t Gmax = static_cast<index_t>(*std::max_element(count.begin(), count.end()));
  if (Gmax == 0) return;
  std::vector<std::int64_t> send_id(static_cast<std::size_t>(Gmax), 0), all_id(static_cast<std::size_t>(Gmax * R));
  std::vector<double> send_st(static_cast<std::size_t>(3 * Gmax), 0.0), all_st(static_cast<std::size_t>(3 * Gmax * R));
  for (index_t g = 0; g < G; ++g) {
    const group_stats& x = local[static_cast<std::size_t>(g)];
    send_id[static_cast<std::size_t>(g)] = label[static_cast<std::size_t>(g)];
    send_st[static_cast<std::size_t>(3 * g)] = x.n;
    send_st[static_cast<std::size_t>(3 * g + 1)] = x.mean;
    send_st[static_cast<std::size_t>(3 * g + 2)] = x.m2;
  }
  comm.allgather(send_id.data(), Gmax, all_id.data());
  comm.allgather(send_st.data(), 3 * Gmax, all_st.data());
  // 3. Per local id: merge every rank's entry in rank order (each rank's ids are sorted ascending).
  for (index_t g = 0; g < G; ++g) {
    const std::int64_t id = label[static_cast<std::size_t>(g)];
    group_stats acc{0, 0, 0};
    for (int q = 0; q < R; ++q) {
      const std::int64_t* first = all_id.data() + static_cast<std::size_t>(q) * static_cast<std::size_t>(Gmax);
      const std::int64_t* last = first + count[static_cast<std::size_t>(q)];
      const std::int64_t* it = std::lower_bound(first, last, id);
      if (it == last || *it != id) continue;
      const double* p = all_st.data() + 3 * (static_cast<std::size_t>(q) * static_cast<std::size_t>(Gmax) +
                                             static_cast<std::size_t>(it - first));
      const group_stats b{p[0], p[1], p[2]};
      if (acc.n == 0) {
        acc = b;
        continue;
      }
      const double n = acc.n + b.n, d = b.mean - acc.mean;
      acc = {n, acc.mean + d * b.n / n, acc.m2 + b.m2 + d * d * acc.n * b.n / n};
    }
    local[static_cast<std::size_t>(g)] = acc;
  }
  be.copy_from_host(local.data(), G, stats);
}

template <class Backend, class T, class Comm>
void group_baseline(const Backend& be, seq_view<const T> scores, seq_view<const std::int64_t> ids, mask_view mask,
                    const outcome_outputs<T>& out, baseline_kind kind, singleton_rule singleton, double eps,
                    bool unbiased, const Comm& comm) {
  const index_t B = scores.extent[0], Tn = mask.extent[1];
  // One process on a device backend: group slots (no group count read on the host; the empty slots
  // past the last group reduce to nothing).
  auto L = [&] {
    if constexpr (device_in_one_process<Backend, Comm>) return make_group_slots(be, ids);
    else return make_group_layout(be, ids);
  }();
  auto stats = be.template allocate<group_stats>(L.count);
  be.segmented_reduce(L.count, offset_segments{L.offsets.data()}, group_welford<T>{scores, L.perm.data()},
                      store_group_stats{stats.data()});
  // Groups spanning ranks (added for multi-process runs; single_process never enters this).
  if (comm.size() > 1) merge_group_stats_over_ranks(be, ids, L, stats.data(), comm);
  const baseline_kernel<T> k{scores, mask, out, L.group_of.data(), stats.data(), kind, singleton, eps, unbiased};
  auto seq = be.template allocate<double>(B);
  be.for_each(B, sequence_advantage_kernel<T>{k, seq.data()});
  if (out.advantages.data && Tn > 0) be.for_each(B, Tn, broadcast_kernel<T>{seq.data(), mask, out.advantages});
}

/// Reverse discounted return over valid tokens (masked tokens transparent, output 0).
struct discount_map {
  double u, o;  // x -> u x + o
};
struct discount_compose {
  using value_type = discount_map;
  ASYPPO_HD double initial() const { return 0.0; }
  ASYPPO_HD discount_map lift(const discount_map& e) const { return e; }
  ASYPPO_HD double apply(const discount_map& e, double x) const { return e.u * x + e.o; }
  ASYPPO_HD discount_map combine(const discount_map& f, const discount_map& e) const {
    return {e.u * f.u, e.u * f.o + e.o};
  }
};
template <class T>
struct discount_element {
  token_view<const T> rewards;
  mask_view mask;
  double gamma;
  ASYPPO_HD discount_map operator()(index_t b, index_t t) const {
    if (!mask(b, t)) return {1.0, 0.0};
    return {gamma, static_cast<double>(rewards(b, t))};
  }
};
template <class T>
struct discount_sink {
  mask_view mask;
  token_view<T> out;
  ASYPPO_HD void operator()(index_t b, index_t t, double g) const {
    out(b, t) = mask(b, t) ? static_cast<T>(g) : T(0);
  }
};

}  // namespace detail

/// GRPO (or Dr.GRPO) advantages from scores [B], group ids [B] and mask [B,T]. Collective over
/// comm: groups are reduced by id over every rank.
template <class Backend, class T, class Comm = single_process>
void grpo_advantages(const Backend& be, seq_view<const T> scores, seq_view<const std::int64_t> group_ids,
                     mask_view mask, const outcome_outputs<T>& out, const grpo_options& opt = {},
                     const Comm& comm = {}) {
  constexpr const char* where = "asyppo::grpo_advantages";
  if (!(opt.eps >= 0.0) || !std::isfinite(opt.eps)) detail::fail(where, "eps", "must be finite and >= 0, got ", opt.eps);
  detail::check_outcome_args(be, where, scores, group_ids, mask, out, opt.check_finite);
  detail::group_baseline(be, scores, group_ids, mask, out,
                         opt.norm_by_std ? detail::baseline_kind::grpo : detail::baseline_kind::dr_grpo,
                         opt.singleton, opt.eps, opt.std == std_kind::unbiased, comm);
}

/// RLOO advantages from scores [B], group ids [B] and mask [B,T]. Collective over comm: groups
/// are reduced by id over every rank.
template <class Backend, class T, class Comm = single_process>
void rloo_advantages(const Backend& be, seq_view<const T> scores, seq_view<const std::int64_t> group_ids,
                     mask_view mask, const outcome_outputs<T>& out, const rloo_options& opt = {},
                     const Comm& comm = {}) {
  constexpr const char* where = "asyppo::rloo_advantages";
  detail::check_outcome_args(be, where, scores, group_ids, mask, out, opt.check_finite);
  detail::group_baseline(be, scores, group_ids, mask, out, detail::baseline_kind::rloo, opt.singleton, 0.0, false,
                         comm);
}

/// REINFORCE++-baseline: (s_b - group mean) broadcast over valid tokens, then masked whitening.
/// out.sequence (optional) receives the un-whitened s_b - mean. Collective over comm: group means
/// by id over every rank, whitening moments over the whole batch.
template <class Backend, class T, class Comm = single_process>
void reinforce_pp_baseline_advantages(const Backend& be, seq_view<const T> scores,
                                      seq_view<const std::int64_t> group_ids, mask_view mask,
                                      const outcome_outputs<T>& out, const reinforce_options& opt = {},
                                      const Comm& comm = {}) {
  constexpr const char* where = "asyppo::reinforce_pp_baseline_advantages";
  detail::check_outcome_args(be, where, scores, group_ids, mask, out, opt.whiten.check_finite);
  if (!detail::present(out.advantages) && scores.extent[0] * mask.extent[1] > 0)
    detail::fail(where, "out.advantages", "required output is missing");
  detail::check_whiten_options(where, opt.whiten);
  detail::group_baseline(be, scores, group_ids, mask, out, detail::baseline_kind::mean, opt.singleton, 0.0, false,
                         comm);
  detail::whiten_no_moments(be, token_view<const T>(out.advantages), mask, out.advantages, opt.whiten, comm);
}

/// REINFORCE++: discounted returns of token rewards [B,T] over valid tokens, then masked whitening.
template <class Backend, class T, class Comm = single_process>
void reinforce_pp_advantages(const Backend& be, token_view<const T> rewards, mask_view mask, token_view<T> advantages,
                             const reinforce_options& opt = {}, const Comm& comm = {}) {
  constexpr const char* where = "asyppo::reinforce_pp_advantages";
  detail::check_view(where, "rewards", rewards);
  const index_t B = rewards.extent[0], Tn = rewards.extent[1];
  detail::check_input(where, "mask", mask, {B, Tn});
  if (!detail::present(mask) && B * Tn > 0) detail::fail(where, "mask", "is required");
  detail::check_output(where, "advantages", advantages, {B, Tn});
  detail::check_range(where, "gamma", opt.gamma, 0.0, 1.0);
  detail::check_memory(be, where, "rewards", rewards, "mask", mask, "advantages", advantages);
  detail::check_whiten_options(where, opt.whiten);
  if (opt.whiten.check_finite) detail::check_finite_tokens<Backend, T>(be, where, "rewards", B, Tn, {}, rewards, mask);
  be.row_scan(scan_direction::reverse, B, Tn, detail::discount_element<T>{rewards, mask, opt.gamma},
              detail::discount_compose{}, detail::discount_sink<T>{mask, advantages});
  detail::whiten_no_moments(be, token_view<const T>(advantages), mask, advantages, opt.whiten, comm);
}

/// Sequence scores as verl forms them: s_b = sum_t rewards[b,t] over every position.
template <class Backend, class T>
void sequence_scores(const Backend& be, token_view<const T> rewards, seq_view<T> scores) {
  constexpr const char* where = "asyppo::sequence_scores";
  detail::check_view(where, "rewards", rewards);
  const index_t B = rewards.extent[0], Tn = rewards.extent[1];
  detail::check_memory(be, where, "rewards", rewards, "scores", scores);
  detail::check_output(where, "scores", scores, {B});
  be.row_reduce(B, Tn, detail::row_sum_reducer<T>{rewards}, detail::store_seq<T>{scores});
}

}  // namespace asyppo
