// asyppo/core/uncertainty_masks.hpp: the AsyPPO advantage mask and entropy filter
// (docs/algorithm.md, Eq. E10-E11).
//
// Over the N valid tokens of the scope (the whole batch, across ranks, by default; or each
// sequence on its own), order tokens totally by (critic std sigma, flat token index b*T + t),
// both ascending. Then
//   adv_mask[b,t]     = 0 for the first floor(k N) tokens of that order ("critics agree"),
//   entropy_mask[b,t] = 0 for the last floor(h N) tokens of that order ("critics disagree"),
// and 1 on every other valid token. Masked-out (invalid) tokens get 0 in both masks, so each
// mask is a subset of the response mask. One total order means that among tied sigmas the
// advantage mask takes the smallest flat indices and the entropy filter the largest, so the two
// sets never overlap while floor(kN) + floor(hN) <= N, even when every sigma is equal (K = 1, or
// critics that start identical). -0 and +0 are the same value. k = 0 (h = 0) masks nothing.
// Counts are exact.
//
// Cost: a radix selection (core/select.hpp: two streaming passes for float keys, four for
// double, in batch scope; across ranks 8-bit digits, so four / eight passes, each followed by an
// all-reduce of requests x 256 counters) plus one streaming pass that writes both masks. No sort.
// The plan (thresholds, and tie offsets when a threshold value is only partly taken) is separate from
// the writing so that the advantage step can fuse the writing into its GAE pass.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/comm/communicator.hpp"
#include "asyppo/core/row_span.hpp"
#include "asyppo/core/select.hpp"
#include "asyppo/core/validate.hpp"

namespace asyppo {

enum class mask_scope { batch, sequence };

struct mask_options {
  double adv_fraction = 0.2;      ///< k: share of valid tokens whose advantage is masked
  double entropy_fraction = 0.2;  ///< h: share of valid tokens dropped from the entropy bonus
  mask_scope scope = mask_scope::batch;
  bool check_finite = true;
};

struct mask_counts {
  std::int64_t valid = 0;           ///< N: valid tokens in scope (summed over sequences/ranks)
  std::int64_t adv_masked = 0;      ///< valid tokens with adv_mask = 0
  std::int64_t entropy_masked = 0;  ///< valid tokens with entropy_mask = 0
  double adv_threshold = NAN;       ///< batch scope: largest masked sigma (NaN if none)
  double entropy_threshold = NAN;   ///< batch scope: smallest filtered sigma (NaN if none)
};

namespace detail {

template <class T>
struct std_key_of {
  token_view<const T> sigma;
  mask_view mask;
  bool per_row;
  ASYPPO_HD bool operator()(index_t b, index_t t, index_t& seg, std::uint64_t& key) const {
    if (!mask(b, t)) return false;
    seg = per_row ? b : 0;
    key = ordered_key(sigma(b, t));
    return true;
  }
  /// Whether row b's keys are ordered_key(s[t]) at the t with m[t] != 0, s and m plain float and
  /// byte rows (core/select.hpp runs its first pass on SIMD lanes then); seg: the row's segment.
  bool float_row(index_t b, index_t& seg, const float*& s, const std::uint8_t*& m) const {
    if constexpr (std::is_same_v<T, float>) {
      if (!unit_inner_stride(sigma) || !unit_inner_stride(mask)) return false;
      seg = per_row ? b : 0, s = &sigma(b, 0), m = &mask(b, 0);
      return true;
    } else {
      return false;
    }
  }
  /// f(seg, key) for the valid elements of [t0, t1) of row b in order, in plain pointer loops, when the
  /// row is contiguous (else false: detail::for_each_key then calls this functor per element).
  template <class F>
  bool for_each_key(index_t b, index_t t0, index_t t1, F&& f) const {
    if (!unit_inner_stride(sigma) || !unit_inner_stride(mask)) return false;
    const index_t seg = per_row ? b : 0;
    const T* s = &sigma(b, 0);
    const std::uint8_t* m = &mask(b, 0);
    for (index_t t = t0; t < t1; ++t)
      if (m[t]) f(seg, ordered_key(s[t]));  // masks come in runs: a predictable branch
    return true;
  }
};

/// Per-row parameters of the mask decision (batch scope: the same for every row).
struct mask_row_params {
  std::uint64_t key_k, key_h;    // thresholds (ordered keys)
  std::uint64_t need_k;          // the first need_k tokens equal to key_k are taken
  std::uint64_t skip_h;          // the first skip_h tokens equal to key_h are NOT taken
  std::uint64_t off_k, off_h;    // ties at the threshold in earlier rows (and ranks)
  std::uint8_t has_k, has_h;     // n_k > 0, n_h > 0
};

struct tie_counts {
  std::uint64_t k, h;
};

/// Decision for a valid token with ordered key `key`; ties_k/ties_h count the tokens equal to the
/// threshold up to and including this one in flat order within the row. When no threshold value
/// is only partly taken (plan.ranked false), any ties >= 1 gives the same answer: pass 1.
ASYPPO_INLINE void mask_decision(const mask_row_params& p, std::uint64_t key, std::uint64_t ties_k,
                                 std::uint64_t ties_h, std::uint8_t& adv, std::uint8_t& ent) {
  // Non-short-circuit & and |: the comparisons on sigma are random, so branches would mispredict.
  const bool low = (p.has_k != 0) & ((key < p.key_k) | ((key == p.key_k) & (p.off_k + ties_k <= p.need_k)));
  const bool high = (p.has_h != 0) & ((key > p.key_h) | ((key == p.key_h) & (p.off_h + ties_h > p.skip_h)));
  adv = static_cast<std::uint8_t>(!low);
  ent = static_cast<std::uint8_t>(!high);
}

struct tie_sum {
  using value_type = tie_counts;
  ASYPPO_HD tie_counts initial() const { return {0, 0}; }
  ASYPPO_HD tie_counts lift(const tie_counts& e) const { return e; }
  ASYPPO_HD tie_counts apply(const tie_counts& e, const tie_counts& x) const { return {x.k + e.k, x.h + e.h}; }
  ASYPPO_HD tie_counts combine(const tie_counts& a, const tie_counts& b) const { return {a.k + b.k, a.h + b.h}; }
};

template <class T>
struct tie_element {
  token_view<const T> sigma;
  mask_view mask;
  const mask_row_params* rows;
  ASYPPO_HD tie_counts operator()(index_t b, index_t t) const {
    if (!mask(b, t)) return {0, 0};
    const mask_row_params& p = rows[b];
    const std::uint64_t key = ordered_key(sigma(b, t));
    return {p.has_k && key == p.key_k ? 1u : 0u, p.has_h && key == p.key_h ? 1u : 0u};
  }
};

template <class T>
struct tie_row_reducer {
  tie_element<T> elem;
  using value_type = tie_counts;
  ASYPPO_HD tie_counts identity() const { return {0, 0}; }
  ASYPPO_HD void add(tie_counts& a, index_t b, index_t t) const {
    const tie_counts c = elem(b, t);
    a.k += c.k;
    a.h += c.h;
  }
  ASYPPO_HD tie_counts combine(const tie_counts& a, const tie_counts& b) const { return {a.k + b.k, a.h + b.h}; }
};


template <class T>
struct mask_writer {
  token_view<const T> sigma;
  mask_view mask;
  mask_out adv_mask, entropy_mask;
  const mask_row_params* rows;
  ASYPPO_HD void operator()(index_t b, index_t t, const tie_counts& y) const {
    std::uint8_t a = 0, e = 0;
    if (mask(b, t)) mask_decision(rows[b], ordered_key(sigma(b, t)), y.k, y.h, a, e);
    if (adv_mask.data) adv_mask(b, t) = a;
    if (entropy_mask.data) entropy_mask(b, t) = e;
  }
};


/// Digit width of the batch-scope selection: 16 bits in one process (fewest passes: 2 for float);
/// 8 bits across ranks, so each histogram all-reduce is requests x 256 counters (a few KiB) instead
/// of requests x 65536 (512 KiB per request and pass) for two more streaming passes over sigma.
template <class Comm>
int selection_digit_bits(const Comm& comm) {
  return comm.size() > 1 ? 8 : 16;
}

inline std::int64_t fraction_count(double frac, std::int64_t n) {
  return static_cast<std::int64_t>(std::floor(frac * static_cast<double>(n)));
}

/// Thresholds and tie bookkeeping of the two masks, in backend memory (rows) and on the host.
template <class Backend>
struct mask_plan {
  using row_buffer = decltype(std::declval<const Backend&>().template allocate<mask_row_params>(0));
  mask_counts counts;
  row_buffer rows;          ///< [B] per-row decision parameters (backend memory)
  bool ranked = false;      ///< some threshold value is only partly taken: ties need flat ranks
  std::vector<double> quantiles;  ///< sigma at the requested extra ranks (batch scope)
};

/// Selection for the masks (and optional extra ascending ranks of sigma over all valid tokens).
/// Arguments validated; row_valid: valid tokens per row, on the host.
/// range: the columns of each row that hold every valid token (backend/patterns.hpp, ragged rows).
template <class Backend, class T, class Comm, class Range>
mask_plan<Backend> plan_masks(const Backend& be, token_view<const T> sigma, mask_view mask, const mask_options& opt,
                              const Comm& comm, const std::vector<index_t>& row_valid,
                              const std::vector<std::uint64_t>& extra_ranks, Range range) {
  const index_t B = sigma.extent[0], Tn = sigma.extent[1];
  const bool per_row = opt.scope == mask_scope::sequence;
  constexpr int key_bits = 8 * sizeof(T);
  mask_plan<Backend> plan;
  mask_counts& counts = plan.counts;
  std::vector<mask_row_params> rows(static_cast<std::size_t>(B), mask_row_params{});
  std::vector<select_request> req;
  std::vector<int> which;  // 0: adv rank, 1: entropy rank, 2: extra
  std::vector<index_t> req_row;
  if (per_row) {
    for (index_t b = 0; b < B; ++b) {
      const std::int64_t n = row_valid[static_cast<std::size_t>(b)];
      const std::int64_t nk = fraction_count(opt.adv_fraction, n), nh = fraction_count(opt.entropy_fraction, n);
      counts.valid += n;
      counts.adv_masked += nk;
      counts.entropy_masked += nh;
      if (nk > 0) req.push_back({b, static_cast<std::uint64_t>(nk - 1)}), which.push_back(0), req_row.push_back(b);
      if (nh > 0) req.push_back({b, static_cast<std::uint64_t>(n - nh)}), which.push_back(1), req_row.push_back(b);
    }
    if (comm.size() > 1) {  // the selection is per row (local); the reported counts are global
      std::uint64_t c[3] = {static_cast<std::uint64_t>(counts.valid), static_cast<std::uint64_t>(counts.adv_masked),
                            static_cast<std::uint64_t>(counts.entropy_masked)};
      comm.allreduce_sum(c, 3);
      counts.valid = static_cast<std::int64_t>(c[0]);
      counts.adv_masked = static_cast<std::int64_t>(c[1]);
      counts.entropy_masked = static_cast<std::int64_t>(c[2]);
    }
  } else {
    std::uint64_t n = 0;
    for (index_t b = 0; b < B; ++b) n += static_cast<std::uint64_t>(row_valid[static_cast<std::size_t>(b)]);
    comm.allreduce_sum(&n, 1);
    const std::int64_t N = static_cast<std::int64_t>(n);
    const std::int64_t nk = fraction_count(opt.adv_fraction, N), nh = fraction_count(opt.entropy_fraction, N);
    counts.valid = N;
    counts.adv_masked = nk;
    counts.entropy_masked = nh;
    if (nk > 0) req.push_back({0, static_cast<std::uint64_t>(nk - 1)}), which.push_back(0), req_row.push_back(-1);
    if (nh > 0) req.push_back({0, static_cast<std::uint64_t>(N - nh)}), which.push_back(1), req_row.push_back(-1);
    for (auto r : extra_ranks) req.push_back({0, r}), which.push_back(2), req_row.push_back(-1);
  }

  std::vector<select_result> res(req.size());
  const std_key_of<T> key_of{sigma, mask, per_row};
  if (per_row)  // each row is local: no communication; 8-bit digits keep the B histograms small
    radix_select(be, B, Tn, key_of, key_bits, 8, B, req.data(), static_cast<index_t>(req.size()), res.data(),
                 single_process{}, range);
  else
    radix_select(be, B, Tn, key_of, key_bits, selection_digit_bits(comm), 1, req.data(), static_cast<index_t>(req.size()),
                 res.data(), comm, range);

  mask_row_params global{};
  for (std::size_t r = 0; r < req.size(); ++r) {
    mask_row_params& p = per_row ? rows[static_cast<std::size_t>(req_row[r])] : global;
    const select_result& s = res[r];
    const std::uint64_t total = per_row ? static_cast<std::uint64_t>(row_valid[static_cast<std::size_t>(req_row[r])])
                                        : static_cast<std::uint64_t>(counts.valid);
    if (which[r] == 0) {  // the n_k smallest: all keys below, then the first (n_k - less) ties
      p.has_k = 1;
      p.key_k = s.key;
      p.need_k = req[r].rank + 1 - s.less;  // n_k - less, in [1, equal]
      plan.ranked = plan.ranked || p.need_k < s.equal;
      if (!per_row) counts.adv_threshold = static_cast<double>(key_value<T>(s.key));
    } else if (which[r] == 1) {  // the n_h largest: all keys above, then the first ties
      p.has_h = 1;
      p.key_h = s.key;
      const std::uint64_t nh = total - req[r].rank;
      const std::uint64_t need = nh - (total - s.less - s.equal);  // n_h - greater, in [1, equal]
      p.skip_h = s.equal - need;
      plan.ranked = plan.ranked || p.skip_h > 0;
      if (!per_row) counts.entropy_threshold = static_cast<double>(key_value<T>(s.key));
    } else {
      plan.quantiles.push_back(static_cast<double>(key_value<T>(s.key)));
    }
  }
  if (!per_row)
    for (auto& p : rows) p = global;

  plan.rows = be.template allocate<mask_row_params>(B);
  be.copy_from_host(rows.data(), B, plan.rows.data());
  if (!per_row && (plan.ranked || comm.size() > 1)) {
    // Ties are ranked by global flat index: offsets = ties in earlier rows, and on earlier ranks.
    auto d_ties = be.template allocate<tie_counts>(B);
    be.row_reduce(B, Tn, tie_row_reducer<T>{{sigma, mask, plan.rows.data()}}, store_row<tie_counts>{d_ties.data()}, range);
    std::vector<tie_counts> row_ties(static_cast<std::size_t>(B));
    be.copy_to_host(d_ties.data(), B, row_ties.data());
    std::uint64_t local_k = 0, local_h = 0;
    for (const auto& c : row_ties) local_k += c.k, local_h += c.h;
    std::uint64_t ok = comm.exclusive_scan_sum(local_k), oh = comm.exclusive_scan_sum(local_h);
    plan.ranked = true;
    for (index_t b = 0; b < B; ++b) {
      rows[static_cast<std::size_t>(b)].off_k = ok;
      rows[static_cast<std::size_t>(b)].off_h = oh;
      ok += row_ties[static_cast<std::size_t>(b)].k;
      oh += row_ties[static_cast<std::size_t>(b)].h;
    }
    be.copy_from_host(rows.data(), B, plan.rows.data());
  }
  return plan;
}

template <class T>
struct unranked_mask_writer {
  mask_writer<T> w;
  ASYPPO_HD void operator()(index_t b, index_t t) const { w(b, t, tie_counts{1, 1}); }
};

/// Writes both masks in the columns of range: per token when no tie needs ranking, else by a
/// forward row scan of tie counts (exact flat-order ranks among ties).
template <class Backend, class T, class Range>
void write_masks(const Backend& be, token_view<const T> sigma, mask_view mask, mask_out adv_mask, mask_out entropy_mask,
                 const mask_row_params* rows, bool ranked, Range range) {
  const mask_writer<T> w{sigma, mask, adv_mask, entropy_mask, rows};
  if (ranked)
    be.row_scan(scan_direction::forward, sigma.extent[0], sigma.extent[1], tie_element<T>{sigma, mask, rows}, tie_sum{}, w,
                range);
  else
    be.for_each(sigma.extent[0], sigma.extent[1], unranked_mask_writer<T>{w}, range);
}

template <class Backend, class Range>
std::vector<index_t> valid_per_row(const Backend& be, mask_view mask, Range range) {
  const index_t B = mask.extent[0], Tn = mask.extent[1];
  std::vector<index_t> host(static_cast<std::size_t>(B));
  auto d = be.template allocate<index_t>(B);
  be.row_reduce(B, Tn, count_valid{mask}, store_row<index_t>{d.data()}, range);
  be.copy_to_host(d.data(), B, host.data());
  return host;
}

inline void check_mask_options(const char* where, const mask_options& o) {
  check_fraction(where, "adv_fraction", o.adv_fraction);
  check_fraction(where, "entropy_fraction", o.entropy_fraction);
}

}  // namespace detail

/// AsyPPO masks from the critic std sigma [B,T] and the response mask [B,T]. adv_mask and
/// entropy_mask [B,T] (uint8) are outputs; either may be empty to skip it. Collective over comm
/// (batch scope: the selection; sequence scope: only the returned counts, which are global).
/// Throws asyppo::error on bad shapes, fractions outside [0,1), or (check_finite) NaN/Inf sigma
/// on a valid token.
template <class Backend, class T, class Comm = single_process>
mask_counts uncertainty_masks(const Backend& be, token_view<const T> sigma, mask_view mask, mask_out adv_mask,
                              mask_out entropy_mask, const mask_options& opt = {}, const Comm& comm = {}) {
  constexpr const char* where = "asyppo::uncertainty_masks";
  detail::check_view(where, "sigma", sigma);
  const index_t B = sigma.extent[0], Tn = sigma.extent[1];
  detail::check_input(where, "mask", mask, {B, Tn});
  if (!detail::present(mask) && B * Tn > 0) detail::fail(where, "mask", "is required");
  detail::check_optional_output(where, "adv_mask", adv_mask, {B, Tn});
  detail::check_optional_output(where, "entropy_mask", entropy_mask, {B, Tn});
  detail::check_memory(be, where, "sigma", sigma, "mask", mask, "adv_mask", adv_mask, "entropy_mask", entropy_mask);
  detail::check_mask_options(where, opt);
  const auto span = detail::make_row_span(be, mask);  // every pass stops at each row's last valid token
  if (opt.check_finite)
    detail::check_finite(be, where, "sigma", B, Tn, detail::count_nonfinite_tokens<T, 1, 1>{{}, {sigma}, mask}, span.heads());
  const auto plan = detail::plan_masks(be, sigma, mask, opt, comm, detail::valid_per_row(be, mask, span.heads()), {},
                                       span.heads());
  detail::write_masks(be, sigma, mask, adv_mask, entropy_mask, plan.rows.data(), plan.ranked, span.heads());
  detail::write_zero(be, B, Tn, span.tails(), adv_mask, entropy_mask);
  return plan.counts;
}

}  // namespace asyppo
