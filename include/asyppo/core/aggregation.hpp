// asyppo/core/aggregation.hpp: loss aggregation with an explicit, batch-global normaliser
// (docs/algorithm.md, Eq. L1).
//
// A per-token loss l[b,t] with response mask m[b,t] aggregates as
//     Agg(l) = sum_{b,t} m[b,t] * w_b * l[b,t]
// where the per-row weight w_b depends on the mode and on the GLOBAL normaliser
// (N = tokens, B_g = sequences, L_n = norm_length of loss_normalizer):
//     token_mean               w_b = 1 / N                       (DAPO, verl/OpenRLHF token mode)
//     token_sum                w_b = 1
//     seq_mean_token_mean      w_b = 1 / (B_g * L_b), 0 if L_b = 0  (AsyPPO E15, GRPO; the default)
//     seq_mean_token_sum       w_b = 1 / B_g
//     seq_mean_token_sum_norm  w_b = 1 / (B_g * L_n)             (Dr. GRPO; verl: L_n = padded T)
// with L_b = sum_t m[b,t] the valid tokens of the LOCAL row b. Because the weight of every token is
// known before the loss is evaluated, each loss of this library returns the aggregated value AND
// the exact gradient w_b * dl/dx, and the sum of the micro-batch losses (and gradients) of a
// mini-batch split over micro-batches and data-parallel ranks equals the full-batch loss (and
// gradient) up to float rounding, for every mode, provided every call gets the same global
// normaliser. That is the point of this header.
//
// The normaliser: loss_normalizer{tokens, sequences, norm_length}. A field < 0 (the default, -1)
// means "this call's local count": tokens = valid tokens of this call, sequences = non-empty rows
// of this call, norm_length = this call's padded length T. Local fallback is a convenience for a
// call that IS the whole mini-batch; with several micro-batches or ranks it is the classic bug:
//   * mean of micro-batch means: token_mean over each micro-batch, then averaged, weights short
//     sequences' micro-batches up (verl #5625, TRL's accelerate averaging);
//   * per-rank token counts: each rank divides by its own N and DDP averages, so ranks with few
//     tokens are over-weighted (verl before PR #6957 for the critic, OpenRLHF #1249).
// Sum count_loss_tokens() over every micro-batch and rank of the optimiser step (loss_counts has
// operator+=), pass loss_counts::normalizer() to every call, and SUM (not average) the losses and
// gradients. If your framework averages gradients over R data-parallel ranks (DDP), multiply the
// loss by R as verl and OpenRLHF do.
// Sequence count: verl's B_global is a config constant (ppo_mini_batch_size * rollout.n), so it
// counts fully-masked sequences, while the local fallback (and verl's) counts only non-empty rows.
// loss_counts::normalizer(true) counts every row; pass whatever you want.
// Explicit values must be finite and not smaller than this call's own count (a global count cannot
// be smaller than a local one); norm_length, when used, must be > 0. A zero count is allowed only
// when this call has nothing to count: the weights are then 0 (no division by zero).
//
// Cost: one pass over the mask (row lengths, segmented_reduce) plus O(B) host work; the weights
// are a [B] table in backend memory that the loss kernels read. Deterministic: counts are exact
// integers, the weights are computed on the host, sums follow the backend's reduce contract
// (bit-identical for any CPU thread count).
// The losses share one body after their checks: detail::fused_loss (row span, finiteness check, row
// weights, one fused reduce, zero gradients on the padding) and, for the device-result variants
// (aggregate_loss_to and the losses' _to), detail::fused_loss_to (weights from the caller's normaliser
// where the data is, the result written there by reduce_to's sink: no host round trip).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/core/row_span.hpp"
#include "asyppo/core/validate.hpp"

namespace asyppo {

enum class loss_aggregation { token_mean, token_sum, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm };

/// verl's names: "token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum",
/// "seq-mean-token-sum-norm".
inline const char* to_string(loss_aggregation m) {
  switch (m) {
    case loss_aggregation::token_mean: return "token-mean";
    case loss_aggregation::token_sum: return "token-sum";
    case loss_aggregation::seq_mean_token_mean: return "seq-mean-token-mean";
    case loss_aggregation::seq_mean_token_sum: return "seq-mean-token-sum";
    case loss_aggregation::seq_mean_token_sum_norm: return "seq-mean-token-sum-norm";
  }
  return "?";
}

/// Parses verl's names (see to_string); throws asyppo::error on an unknown name.
inline loss_aggregation parse_loss_aggregation(std::string_view s) {
  for (auto m : {loss_aggregation::token_mean, loss_aggregation::token_sum, loss_aggregation::seq_mean_token_mean,
                 loss_aggregation::seq_mean_token_sum, loss_aggregation::seq_mean_token_sum_norm})
    if (s == to_string(m)) return m;
  detail::fail("asyppo::parse_loss_aggregation", "name", "unknown loss aggregation mode '", std::string(s), "'");
}

/// Global normaliser of one optimiser step. A field < 0 means "this call's local count" (see the
/// header comment: correct only when the call holds the whole mini-batch).
struct loss_normalizer {
  double tokens = -1;       ///< N: valid tokens of the whole mini-batch (all micro-batches and ranks)
  double sequences = -1;    ///< B_g: sequences of the whole mini-batch
  double norm_length = -1;  ///< L_n of seq_mean_token_sum_norm (verl: padded length T)
};

/// Local counts of one call, to be summed over micro-batches and ranks.
struct loss_counts {
  std::int64_t tokens = 0;     ///< valid tokens
  std::int64_t sequences = 0;  ///< rows with at least one valid token
  std::int64_t rows = 0;       ///< every row, empty ones included
  index_t length = 0;          ///< padded length T (max over merged calls)

  loss_counts& operator+=(const loss_counts& o) {
    tokens += o.tokens;
    sequences += o.sequences;
    rows += o.rows;
    length = length > o.length ? length : o.length;
    return *this;
  }
  friend loss_counts operator+(loss_counts a, const loss_counts& b) { return a += b; }

  /// The normaliser of these counts; count_empty_rows = true counts fully-masked rows as verl's
  /// B_global does. norm_length = length (verl's default, the padded T).
  loss_normalizer normalizer(bool count_empty_rows = false) const {
    return {static_cast<double>(tokens), static_cast<double>(count_empty_rows ? rows : sequences),
            static_cast<double>(length)};
  }
};

/// What an aggregation call used, and its value.
struct aggregation_result {
  double loss = 0;
  loss_normalizer normalizer{};  ///< resolved: every field >= 0
};

namespace detail {



/// eff[k*B + b] = L_b if row b is in critic k's shard (shard(k,b) != 0, or no shard), else -1.
template <class S>
struct shard_row_length {
  const index_t* len;
  view<const S, 2> shard;
  index_t rows;
  index_t* out;
  ASYPPO_HD void operator()(index_t k, index_t b) const {
    out[k * rows + b] = (shard.data == nullptr || shard(k, b) != S(0)) ? len[b] : index_t(-1);
  }
};

/// Row lengths L_b (valid tokens per row) into host memory, for K row selections (K*B entries;
/// selection k marks rows with shard(k, b) == 0 as -1, not selected; shard absent: every row).
template <class Backend, class S, class Range>
std::vector<index_t> row_lengths_host(const Backend& be, mask_view mask, index_t K, view<const S, 2> shard, Range range) {
  const index_t B = mask.extent[0], Tn = mask.extent[1];
  std::vector<index_t> host(static_cast<std::size_t>(K * B), 0);
  if (B == 0) return host;
  auto len = be.template allocate<index_t>(B);
  if (Tn > 0) be.row_reduce(B, Tn, count_valid{mask}, store_row<index_t>{len.data()}, range);
  else be.fill(len.data(), B, index_t(0));
  if (shard.data == nullptr && K == 1) {
    be.copy_to_host(len.data(), B, host.data());
    return host;
  }
  auto eff = be.template allocate<index_t>(K * B);
  be.for_each(K, B, shard_row_length<S>{len.data(), shard, B, eff.data()});
  be.copy_to_host(eff.data(), K * B, host.data());
  return host;
}

inline loss_counts counts_of_rows(const index_t* len, index_t B, index_t Tn) {
  loss_counts c;
  c.length = Tn;
  for (index_t b = 0; b < B; ++b) {
    if (len[b] < 0) continue;  // row not in this selection (another critic's shard)
    c.rows += 1;
    c.tokens += len[b];
    c.sequences += len[b] > 0 ? 1 : 0;
  }
  return c;
}

inline bool uses_tokens(loss_aggregation m) { return m == loss_aggregation::token_mean; }
inline bool uses_sequences(loss_aggregation m) {
  return m != loss_aggregation::token_mean && m != loss_aggregation::token_sum;
}

/// Checks the normaliser's fields (finite or negative = local) without the counts.
inline void check_normalizer_fields(const char* where, const char* name, const loss_normalizer& n) {
  const double f[3] = {n.tokens, n.sequences, n.norm_length};
  const char* what[3] = {"tokens", "sequences", "norm_length"};
  for (int j = 0; j < 3; ++j)
    if (std::isnan(f[j]) || std::isinf(f[j]))
      fail(where, name, what[j], " must be finite (or negative for the local count), got ", f[j]);
}

inline void check_aggregation(const char* where, loss_aggregation m) {
  switch (m) {
    case loss_aggregation::token_mean:
    case loss_aggregation::token_sum:
    case loss_aggregation::seq_mean_token_mean:
    case loss_aggregation::seq_mean_token_sum:
    case loss_aggregation::seq_mean_token_sum_norm: return;
  }
  fail(where, "aggregation", "unknown loss_aggregation value ", static_cast<int>(m));
}

/// Resolves negative fields to local counts and checks explicit ones against them.
inline loss_normalizer resolve_normalizer(const char* where, const char* name, loss_aggregation mode,
                                          const loss_normalizer& n, const loss_counts& local) {
  check_normalizer_fields(where, name, n);
  loss_normalizer r;
  r.tokens = n.tokens < 0 ? static_cast<double>(local.tokens) : n.tokens;
  r.sequences = n.sequences < 0 ? static_cast<double>(local.sequences) : n.sequences;
  r.norm_length = n.norm_length < 0 ? static_cast<double>(local.length) : n.norm_length;
  if (uses_tokens(mode) && n.tokens >= 0 && n.tokens < static_cast<double>(local.tokens))
    fail(where, name, "tokens = ", n.tokens, " is smaller than this call's ", local.tokens,
         " valid tokens (a global count cannot be smaller than a local one)");
  if (uses_sequences(mode) && n.sequences >= 0 && n.sequences < static_cast<double>(local.sequences))
    fail(where, name, "sequences = ", n.sequences, " is smaller than this call's ", local.sequences,
         " non-empty sequences (a global count cannot be smaller than a local one)");
  if (mode == loss_aggregation::seq_mean_token_sum_norm && local.tokens > 0 && !(r.norm_length > 0))
    fail(where, name, "norm_length must be > 0 for seq-mean-token-sum-norm, got ", r.norm_length);
  return r;
}

/// w_b for one row of local length len (0 where the normaliser is 0: nothing to normalise).
ASYPPO_HD inline double row_weight(loss_aggregation mode, const loss_normalizer& r, index_t len) {
  if (len <= 0) return 0.0;
  switch (mode) {
    case loss_aggregation::token_mean: return r.tokens > 0 ? 1.0 / r.tokens : 0.0;
    case loss_aggregation::token_sum: return 1.0;
    case loss_aggregation::seq_mean_token_mean:
      return r.sequences > 0 ? 1.0 / (r.sequences * static_cast<double>(len)) : 0.0;
    case loss_aggregation::seq_mean_token_sum: return r.sequences > 0 ? 1.0 / r.sequences : 0.0;
    case loss_aggregation::seq_mean_token_sum_norm:
      return r.sequences > 0 && r.norm_length > 0 ? 1.0 / (r.sequences * r.norm_length) : 0.0;
  }
  return 0.0;
}

/// Per-row weights in backend memory for K selections ([K*B], selection k at offset k*B), with
/// the resolved normaliser of each selection. Throws (before anything is written) on a bad
/// normaliser. norms has K entries (or 1, shared).
template <class Backend>
struct row_weight_table {
  decltype(std::declval<const Backend&>().template allocate<double>(0)) weights;
  std::vector<loss_normalizer> resolved;
  std::vector<loss_counts> counts;
};

template <class Backend, class S, class Range>
row_weight_table<Backend> make_row_weights(const Backend& be, const char* where, const char* name, mask_view mask,
                                           index_t K, view<const S, 2> shard, loss_aggregation mode,
                                           const loss_normalizer* norms, index_t nnorms, Range range) {
  const index_t B = mask.extent[0], Tn = mask.extent[1];
  const std::vector<index_t> len = row_lengths_host<Backend, S>(be, mask, K, shard, range);
  row_weight_table<Backend> tab{be.template allocate<double>(K * B), {}, {}};
  std::vector<double> w(static_cast<std::size_t>(K * B), 0.0);
  for (index_t k = 0; k < K; ++k) {
    const index_t* lk = len.data() + k * B;
    const loss_counts c = counts_of_rows(lk, B, Tn);
    const loss_normalizer r = resolve_normalizer(where, name, mode, norms[nnorms == 1 ? 0 : k], c);
    for (index_t b = 0; b < B; ++b) w[static_cast<std::size_t>(k * B + b)] = row_weight(mode, r, lk[b]);
    tab.resolved.push_back(r);
    tab.counts.push_back(c);
  }
  if (K * B > 0) be.copy_from_host(w.data(), K * B, tab.weights.data());
  return tab;
}

/// The row weights w_b a loss reducer reads (w[b]): a [B] table in backend memory, or one value for every
/// row (no table: what the device-result variants use where the weight does not depend on L_b).
struct row_weights {
  const double* table = nullptr;
  double value = 0;
  ASYPPO_HD row_weights(const double* t = nullptr) : table(t) {}  // a table (implicit: reducers take tables)
  ASYPPO_HD static row_weights constant(double v) {
    row_weights w;
    w.value = v;
    return w;
  }
  ASYPPO_HD double operator[](index_t b) const { return table ? table[b] : value; }
};

/// row_reduce sink: w[b] = row_weight(mode, normaliser, L_b).
struct store_row_weight {
  double* w;
  loss_aggregation mode;
  loss_normalizer norm;
  ASYPPO_HD void operator()(index_t b, index_t len) const { w[b] = row_weight(mode, norm, len); }
};

/// The per-row weights of one selection (no shards) computed where the backend's memory is, from an
/// explicit normaliser: no host round trip. Every field the mode uses must be given (>= 0); unlike
/// make_row_weights, the normaliser is not checked against this call's counts (they never reach the
/// host).
inline void check_explicit_normalizer(const char* where, const char* name, loss_aggregation mode,
                                      const loss_normalizer& n) {
  check_normalizer_fields(where, name, n);
  if (uses_tokens(mode) && n.tokens < 0)
    fail(where, name, "tokens must be given (>= 0): the device-result variant cannot count them on the host");
  if (uses_sequences(mode) && n.sequences < 0)
    fail(where, name, "sequences must be given (>= 0): the device-result variant cannot count them on the host");
  if (mode == loss_aggregation::seq_mean_token_sum_norm && !(n.norm_length > 0))
    fail(where, name, "norm_length must be given (> 0) for seq-mean-token-sum-norm, got ", n.norm_length);
}

/// Whether row_weight depends on the row's valid-token count beyond whether it has any (Eq. E15: only
/// seq-mean-token-mean divides by L_b).
inline bool weight_uses_length(loss_aggregation m) { return m == loss_aggregation::seq_mean_token_mean; }

/// The row weights of make_row_weights_in_place: the table (empty where the weights are one value) and
/// what the reducers read.
template <class Buffer>
struct weights_in_place {
  Buffer table;
  row_weights w;
};

/// (after check_explicit_normalizer) Counts each row's valid tokens only where the weight needs them
/// (seq-mean-token-mean: a [B] table); in the other modes every row's weight is row_weight(mode, n, 1),
/// carried by value (no table, no pass: a row without valid tokens never reads it, the weights being
/// read at valid tokens only).
template <class Backend, class Range>
auto make_row_weights_in_place(const Backend& be, mask_view mask, loss_aggregation mode, const loss_normalizer& n,
                               Range range) {
  const index_t B = mask.extent[0], Tn = mask.extent[1];
  const bool table = weight_uses_length(mode);
  weights_in_place<decltype(be.template allocate<double>(0))> out{be.template allocate<double>(table ? B : 0),
                                                                    row_weights::constant(row_weight(mode, n, 1))};
  if (table) {
    out.w = row_weights(out.table.data());
    if (B > 0 && Tn > 0) be.row_reduce(B, Tn, count_valid{mask}, store_row_weight{out.table.data(), mode, n}, range);
  }
  return out;
}

/// The body every loss shares after its checks (Eq. E15, one fused pass): the row span, the optional
/// finiteness check check(range) (range: the columns that hold every valid token), the row weights w_b, one
/// reduce of reducer_of(w) (whose add() also writes the gradients at the tokens it visits) and zero
/// gradients on each row's padding. fused_loss returns the reduction (the identity on an empty batch) and
/// the resolved normaliser (this call's counts where the caller's fields are negative).
template <class Backend, class Check, class ReducerOf, class... Grads>
auto fused_loss(const Backend& be, const char* where, mask_view mask, loss_aggregation mode, const loss_normalizer& norm,
                bool check_finite, Check check, ReducerOf reducer_of, Grads... grads) {
  const index_t B = mask.extent[0], Tn = mask.extent[1];
  const auto span = make_row_span(be, mask);
  if (check_finite) check(span.heads());
  auto tab = make_row_weights<Backend, double>(be, where, "normalizer", mask, 1, {}, mode, &norm, 1, span.heads());
  const auto red = reducer_of(tab.weights.data());
  auto acc = red.identity();
  if (B * Tn > 0) {
    acc = reduce_then_fill(be, B, Tn, red, span.heads(), zero_fill_of(grads...));
  }
  return std::pair{acc, tab.resolved[0]};
}

/// reduce_to sink of fused_loss_to: result_of(reduction) into *dst, in the backend's memory (one device
/// thread on a GPU).
template <class Result, class ResultOf>
struct store_result {
  Result* dst;
  ResultOf result_of;
  template <class Acc>
  ASYPPO_HD void operator()(const Acc& a) const {
    *dst = result_of(a);
  }
};

/// The same body for the device-result variants (after check_loss_to): the caller's normaliser as given,
/// the row weights made where the data is, and result_of(reduction) written to *result on the backend
/// (reduce_to), so nothing waits for the device unless check is called.
template <class Backend, class Check, class ReducerOf, class Result, class ResultOf, class... Grads>
void fused_loss_to(const Backend& be, mask_view mask, loss_aggregation mode, const loss_normalizer& norm,
                   bool check_finite, Check check, ReducerOf reducer_of, Result* result, ResultOf result_of,
                   Grads... grads) {
  const index_t B = mask.extent[0], Tn = mask.extent[1];
  const auto span = make_row_span(be, mask);
  if (check_finite) check(span.heads());
  const auto weights = make_row_weights_in_place(be, mask, mode, norm, span.heads());
  reduce_to_then_fill(be, B, Tn, reducer_of(weights.w), span.heads(), store_result<Result, ResultOf>{result, result_of},
                      zero_fill_of(grads...));
}

/// The checks every device-result variant of a loss adds: a result pointer (non-null, in the backend's
/// memory) and a normaliser whose fields the aggregation uses are given.
template <class Backend, class Result>
void check_loss_to(const Backend& be, const char* where, const Result* result, loss_aggregation mode,
                   const loss_normalizer& norm) {
  if (result == nullptr) fail(where, "result", "is null");
  check_memory(be, where, "result", seq_view<const Result>(result, 1));
  check_explicit_normalizer(where, "normalizer", mode, norm);
}

template <class T>
struct aggregate_reducer {
  token_view<const T> loss;
  mask_view mask;
  row_weights w;
  token_view<T> grad;  // optional: dAgg/dl = w_b on valid tokens, 0 elsewhere
  using value_type = double;
  ASYPPO_HD double identity() const { return 0; }
  // Writes only position i of grad; the reduce visits every i exactly once.
  ASYPPO_HD void add(double& acc, index_t b, index_t t) const {
    const bool valid = mask(b, t) != 0;
    const double wb = valid ? w[b] : 0.0;
    if (valid) acc += wb * static_cast<double>(loss(b, t));
    if (grad.data) grad(b, t) = valid ? static_cast<T>(wb) : T(0);
  }
  ASYPPO_HD double combine(double a, double b) const { return a + b; }
};

}  // namespace detail

/// Local counts of mask [B,T]: valid tokens, non-empty rows, rows, padded length. Sum them over
/// the micro-batches and ranks of an optimiser step and pass .normalizer() to every loss call.
template <class Backend>
loss_counts count_loss_tokens(const Backend& be, mask_view mask) {
  constexpr const char* where = "asyppo::count_loss_tokens";
  detail::check_view(where, "mask", mask);
  const index_t B = mask.extent[0], Tn = mask.extent[1];
  if (!detail::present(mask) && B * Tn > 0) detail::fail(where, "mask", "is required");
  const auto span = detail::make_row_span(be, mask);
  const std::vector<index_t> len = detail::row_lengths_host<Backend, double>(be, mask, 1, {}, span.heads());
  return detail::counts_of_rows(len.data(), B, Tn);
}

/// The normaliser actually used for (mode, norm) on this mask (negative fields resolved to local
/// counts). Throws like the losses do on an inconsistent normaliser.
template <class Backend>
loss_normalizer resolve_loss_normalizer(const Backend& be, mask_view mask, loss_aggregation mode,
                                        const loss_normalizer& norm = {}) {
  constexpr const char* where = "asyppo::resolve_loss_normalizer";
  detail::check_aggregation(where, mode);
  const loss_counts c = count_loss_tokens(be, mask);
  return detail::resolve_normalizer(where, "normalizer", mode, norm, c);
}

namespace detail {

template <class Backend, class T>
void check_aggregate_loss(const Backend& be, const char* where, token_view<const T> loss, mask_view mask,
                          loss_aggregation mode, const loss_normalizer& norm, token_view<T> weights) {
  check_view(where, "loss", loss);
  const index_t B = loss.extent[0], Tn = loss.extent[1];
  check_required_mask(where, "mask", mask, B, Tn);
  check_optional_output(where, "weights", weights, {B, Tn});
  check_aggregation(where, mode);
  check_memory(be, where, "loss", loss, "mask", mask, "weights", weights);
  check_normalizer_fields(where, "normalizer", norm);
}

/// aggregate_loss's result from its reduction (on the host or on the device).
struct aggregation_result_of {
  loss_normalizer norm;
  ASYPPO_HD aggregation_result operator()(double loss) const { return {loss, norm}; }
};

}  // namespace detail

/// Agg(loss) over mask (see the header comment). weights [B,T] (optional) receives dAgg/dloss:
/// w_b on valid tokens and exactly 0 on masked ones. Throws asyppo::error on bad shapes, a bad
/// normaliser or (check_finite) NaN/Inf loss on a valid token; then nothing is written.
template <class Backend, class T>
aggregation_result aggregate_loss(const Backend& be, token_view<const T> loss, mask_view mask, loss_aggregation mode,
                                  const loss_normalizer& norm = {}, token_view<T> weights = {},
                                  bool check_finite = true) {
  constexpr const char* where = "asyppo::aggregate_loss";
  detail::check_aggregate_loss(be, where, loss, mask, mode, norm, weights);
  const auto [acc, resolved] = detail::fused_loss(
      be, where, mask, mode, norm, check_finite,
      [&](auto range) { detail::check_finite_views<Backend, T>(be, where, "loss", mask, range, loss); },
      [&](detail::row_weights w) { return detail::aggregate_reducer<T>{loss, mask, w, weights}; }, weights);
  return detail::aggregation_result_of{resolved}(acc);
}

/// The device-result variant of aggregate_loss: the same weights, and the result written to *result in
/// the backend's memory (device memory on a GPU; result->normalizer is norm) instead of returned. With
/// check_finite = false it makes no host round trip; norm's fields that the mode uses must be given (the
/// row weights are made where the data is, not checked against this call's counts). Throws like
/// aggregate_loss, and on a null result.
template <class Backend, class T>
void aggregate_loss_to(const Backend& be, token_view<const T> loss, mask_view mask, loss_aggregation mode,
                       const loss_normalizer& norm, token_view<T> weights, aggregation_result* result,
                       bool check_finite = true) {
  constexpr const char* where = "asyppo::aggregate_loss_to";
  detail::check_aggregate_loss(be, where, loss, mask, mode, norm, weights);
  detail::check_loss_to(be, where, result, mode, norm);
  detail::fused_loss_to(
      be, mask, mode, norm, check_finite,
      [&](auto range) { detail::check_finite_views<Backend, T>(be, where, "loss", mask, range, loss); },
      [&](detail::row_weights w) { return detail::aggregate_reducer<T>{loss, mask, w, weights}; },
      result, detail::aggregation_result_of{norm}, weights);
}

}  // namespace asyppo
