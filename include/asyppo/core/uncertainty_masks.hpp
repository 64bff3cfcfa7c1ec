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
// uncertainty_masks_to: the same masks and counts from the resident plan (thresholds, ties and counts
// decided in backend memory: docs/algorithm.md, S4), so a device backend never waits; one process.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
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
  /// Reads sigma at (b, t) whether or not the token is valid (callers ask about tokens where sigma is
  /// defined: a caller's full array, or the advantage step's over each row's range), so the two loads
  /// need not wait for each other.
  ASYPPO_HD bool operator()(index_t b, index_t t, index_t& seg, std::uint64_t& key) const {
    const bool valid = mask(b, t) != 0;
    const T s = sigma(b, t);
    seg = per_row ? b : 0;
    key = ordered_key(s);
    return valid;
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

/// Per-row parameters of the mask decision (batch scope: the same for every row but the offsets).
struct mask_row_params {
  std::uint64_t key_k, key_h;    // thresholds (ordered keys)
  std::uint64_t need_k;          // the first need_k tokens equal to key_k are taken
  std::uint64_t skip_h;          // the first skip_h tokens equal to key_h are NOT taken
  std::uint64_t off_k, off_h;    // ties at the threshold in earlier rows (and ranks)
  std::uint8_t has_k, has_h;     // n_k > 0, n_h > 0
  // This row's tokens that tie with a threshold need their flat-order rank: the row holds both taken
  // and untaken ties of a threshold value (straddles()). In every other row the decision is the same
  // for each of its ties, so it is made with tie count 1 (no scan); only these rows need the forward
  // tie scan (docs/algorithm.md S3). Batch scope, before the tie offsets are known: whether a
  // threshold value is partly taken at all.
  std::uint8_t rank_ties;
};

struct tie_counts {
  std::uint64_t k, h;
};

/// Whether a row whose ties at the thresholds are `row` (and whose offsets p.off_k, p.off_h are set)
/// holds both taken and untaken ties of a threshold: its ties at key_k have ranks off_k + 1 ..
/// off_k + row.k, taken while <= need_k; its ties at key_h ranks off_h + 1 .. off_h + row.h, filtered
/// while > skip_h.
ASYPPO_INLINE std::uint8_t straddles(const mask_row_params& p, const tie_counts& row) {
  const bool k = (p.off_k < p.need_k) & (p.need_k < p.off_k + row.k);
  const bool h = (p.off_h < p.skip_h) & (p.skip_h < p.off_h + row.h);
  return static_cast<std::uint8_t>(k | h);
}

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

/// Whether a token with ordered key `key` ties with each threshold ({0|1, 0|1}; a valid token).
ASYPPO_INLINE tie_counts threshold_ties(const mask_row_params& p, std::uint64_t key) {
  return {static_cast<std::uint64_t>((p.has_k != 0) & (key == p.key_k)),
          static_cast<std::uint64_t>((p.has_h != 0) & (key == p.key_h))};
}

template <class T>
struct tie_element {
  token_view<const T> sigma;
  mask_view mask;
  const mask_row_params* rows;
  ASYPPO_HD tie_counts operator()(index_t b, index_t t) const {
    if (!mask(b, t)) return {0, 0};
    return threshold_ties(rows[b], ordered_key(sigma(b, t)));
  }
  ASYPPO_HD bool contiguous() const { return unit_inner_stride(sigma) && unit_inner_stride(mask); }
};

/// Each row's ties at the thresholds (batch scope, for the tie offsets). Rows whose plan has no
/// partly-taken threshold (rank_ties 0) count nothing and read nothing: no row straddles then.
template <class T>
struct tie_row_reducer {
  tie_element<T> elem;
  using value_type = tie_counts;
  ASYPPO_HD tie_counts identity() const { return {0, 0}; }
  ASYPPO_HD void add(tie_counts& a, index_t b, index_t t) const {
    if (!elem.rows[b].rank_ties) return;
    const tie_counts c = elem(b, t);
    a.k += c.k;
    a.h += c.h;
  }
  /// add() over [t0, t1): contiguous rows in a plain loop (no branch on the key).
  ASYPPO_HD void add_span(tie_counts& a, index_t b, index_t t0, index_t t1) const {
    if (!elem.rows[b].rank_ties) return;
    if (!elem.contiguous()) {
      for (index_t t = t0; t < t1; ++t) add(a, b, t);
      return;
    }
    const mask_row_params& p = elem.rows[b];
    const T* s = &elem.sigma(b, 0);
    const std::uint8_t* m = &elem.mask(b, 0);
    // Keys and counts as wide as T's keys (the compiler vectorises the loop), in chunks they cannot
    // overflow; a threshold that is absent matches no key.
    using K = key_bits_t<T>;
    const K kk = static_cast<K>(p.key_k), kh = static_cast<K>(p.key_h);
    const K on_k = p.has_k ? K(1) : K(0), on_h = p.has_h ? K(1) : K(0);
    constexpr index_t chunk = index_t(1) << 30;
    for (index_t c0 = t0; c0 < t1; c0 += chunk) {
      const index_t c1 = t1 - c0 < chunk ? t1 : c0 + chunk;
      K k = 0, h = 0;
      for (index_t t = c0; t < c1; ++t) {
        const K key = ordered_key(s[t]), v = static_cast<K>(m[t] != 0);
        k += v & on_k & static_cast<K>(key == kk);
        h += v & on_h & static_cast<K>(key == kh);
      }
      a.k += k;
      a.h += h;
    }
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
  /// The row scan's per-row path (backend/patterns.hpp): the forward tie scan of rows [lo, hi), each
  /// contiguous row in one plain loop (tie counts, decision and stores per token, as operator() after
  /// the element's counts); false for other layouts.
  template <class Range>
  bool scan_rows(const tie_element<T>& e, const tie_sum&, scan_direction dir, index_t lo, index_t hi,
                 const Range& range) const {
    if (dir != scan_direction::forward || !e.contiguous() || !unit_inner_stride(adv_mask) ||
        !unit_inner_stride(entropy_mask))
      return false;
    for (index_t b = lo; b < hi; ++b) {
      index_t t0, t1;
      range(b, t0, t1);
      if (t1 <= t0) continue;
      const mask_row_params& p = e.rows[b];
      const T* s = &e.sigma(b, 0);
      const std::uint8_t* m = &e.mask(b, 0);
      std::uint8_t* am = adv_mask.data ? &adv_mask(b, 0) : nullptr;
      std::uint8_t* em = entropy_mask.data ? &entropy_mask(b, 0) : nullptr;
      tie_counts y{0, 0};
      for (index_t t = t0; t < t1; ++t) {
        std::uint8_t a = 0, f = 0;
        if (m[t]) {  // masks are runs: a predictable branch
          const std::uint64_t key = ordered_key(s[t]);
          const tie_counts c = threshold_ties(p, key);
          y.k += c.k, y.h += c.h;
          mask_decision(p, key, y.k, y.h, a, f);
        }
        if (am) am[t] = a;
        if (em) em[t] = f;
      }
    }
    return true;
  }
};


/// Digit width of the batch-scope selection: 16 bits in one process (fewest passes: 2 for float);
/// 8 bits across ranks, so each histogram all-reduce is requests x 256 counters (a few KiB) instead
/// of requests x 65536 (512 KiB per request and pass) for two more streaming passes over sigma.
template <class Comm>
int selection_digit_bits(const Comm& comm) {
  return comm.size() > 1 ? 8 : 16;
}

ASYPPO_INLINE std::int64_t fraction_count(double frac, std::int64_t n) {
  return static_cast<std::int64_t>(floor(frac * static_cast<double>(n)));
}

/// The n_k smallest keys are masked: every key below the selected one (rank n_k - 1), then the first
/// n_k - less of its ties. Returns whether that threshold value is only partly taken (ties ranked).
ASYPPO_INLINE bool take_lowest(mask_row_params& p, std::uint64_t rank, std::uint64_t key, std::uint64_t less,
                               std::uint64_t equal) {
  p.has_k = 1;
  p.key_k = key;
  p.need_k = rank + 1 - less;  // n_k - less, in [1, equal]
  return p.need_k < equal;
}

/// The n_h largest keys are filtered (rank total - n_h selected): every key above it, then the last
/// n_h - greater of its ties, i.e. all but the first skip_h. Returns whether ties are ranked.
ASYPPO_INLINE bool take_highest(mask_row_params& p, std::uint64_t total, std::uint64_t rank, std::uint64_t key,
                                std::uint64_t less, std::uint64_t equal) {
  p.has_h = 1;
  p.key_h = key;
  const std::uint64_t nh = total - rank;
  const std::uint64_t need = nh - (total - less - equal);  // n_h - greater, in [1, equal]
  p.skip_h = equal - need;
  return p.skip_h > 0;
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
    if (which[r] == 0) {
      p.rank_ties |= static_cast<std::uint8_t>(take_lowest(p, req[r].rank, s.key, s.less, s.equal));
      if (!per_row) counts.adv_threshold = static_cast<double>(key_value<T>(s.key));
    } else if (which[r] == 1) {
      p.rank_ties |= static_cast<std::uint8_t>(take_highest(p, total, req[r].rank, s.key, s.less, s.equal));
      if (!per_row) counts.entropy_threshold = static_cast<double>(key_value<T>(s.key));
    } else {
      plan.quantiles.push_back(static_cast<double>(key_value<T>(s.key)));
    }
  }
  if (!per_row)
    for (auto& p : rows) p = global;
  for (const auto& p : rows) plan.ranked = plan.ranked || p.rank_ties;

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
    plan.ranked = false;
    for (index_t b = 0; b < B; ++b) {
      mask_row_params& p = rows[static_cast<std::size_t>(b)];
      const tie_counts& c = row_ties[static_cast<std::size_t>(b)];
      p.off_k = ok;
      p.off_h = oh;
      p.rank_ties = straddles(p, c);
      plan.ranked = plan.ranked || p.rank_ties;
      ok += c.k;
      oh += c.h;
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

/// The columns of range in the rows whose ties need ranking (rank_ties); none in the others.
template <class Range>
struct ranked_rows {
  Range range;
  const mask_row_params* rows;
  ASYPPO_HD void operator()(index_t b, index_t& lo, index_t& hi) const {
    if (rows[b].rank_ties)
      range(b, lo, hi);
    else
      lo = hi = 0;
  }
};

/// Writes both masks in the columns of range of the rows whose ties need ranking (rank_ties), by a
/// forward row scan of tie counts (exact flat-order ranks among ties); other rows are not touched.
/// Batch scope: at most two rows (one per threshold). A pass over B rows of nothing when none.
template <class Backend, class T, class Range>
void write_ranked_rows(const Backend& be, token_view<const T> sigma, mask_view mask, mask_out adv_mask,
                       mask_out entropy_mask, const mask_row_params* rows, Range range) {
  be.row_scan(scan_direction::forward, sigma.extent[0], sigma.extent[1], tie_element<T>{sigma, mask, rows}, tie_sum{},
              mask_writer<T>{sigma, mask, adv_mask, entropy_mask, rows}, ranked_rows<Range>{range, rows});
}

/// Writes both masks in the columns of range: every token by its decision with tie count 1 (exact
/// outside the rows that need tie ranks), then (ranked) those rows again by write_ranked_rows.
template <class Backend, class T, class Range>
void write_masks(const Backend& be, token_view<const T> sigma, mask_view mask, mask_out adv_mask, mask_out entropy_mask,
                 const mask_row_params* rows, bool ranked, Range range) {
  be.for_each(sigma.extent[0], sigma.extent[1],
              unranked_mask_writer<T>{{sigma, mask, adv_mask, entropy_mask, rows}}, range);
  if (ranked) write_ranked_rows(be, sigma, mask, adv_mask, entropy_mask, rows, range);
}

// ---- The resident plan: thresholds and ties decided in the backend's memory ----------------------
// (uncertainty_masks_to, advantage_step_to: no host round trip). The same selection results and
// decisions as plan_masks, so the same masks. Single process. Whether ties must be ranked is known
// only on the device, so the passes for it always run: the tie offsets (batch scope: one pass that
// reads sigma only where a threshold value is partly taken) and the tie scan over the rows whose
// rank_ties is set (none, or at most two in batch scope: a pass over empty rows otherwise).

/// Valid tokens of the scope and the two mask sizes (backend memory).
struct mask_totals {
  std::int64_t valid, adv_masked, entropy_masked;
};

/// Row counts through a row's count function: counts(b) = valid tokens of row b.
struct row_count_array {
  const index_t* n;
  ASYPPO_HD std::int64_t operator()(index_t b) const { return n[b]; }
};

/// Reduce over [B, 1]: the scope's totals (batch scope: floor of the fractions of the sum, in the
/// sink; sequence scope: the sum of each row's floors).
template <class RowCount>
struct mask_total_reducer {
  RowCount count;
  double k, h;
  bool per_row;
  using value_type = mask_totals;
  ASYPPO_HD value_type identity() const { return {0, 0, 0}; }
  ASYPPO_HD void add(value_type& a, index_t b, index_t) const {
    const std::int64_t n = count(b);
    a.valid += n;
    if (per_row) a.adv_masked += fraction_count(k, n), a.entropy_masked += fraction_count(h, n);
  }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const {
    return {a.valid + b.valid, a.adv_masked + b.adv_masked, a.entropy_masked + b.entropy_masked};
  }
};
struct store_mask_totals {
  mask_totals* out;
  double k, h;
  bool per_row;
  ASYPPO_HD void operator()(mask_totals v) const {
    if (!per_row) v.adv_masked = fraction_count(k, v.valid), v.entropy_masked = fraction_count(h, v.valid);
    *out = v;
  }
};

/// A reduce_to sink, then a one-thread pass (b = t = 0) in the same device thread: the pass may read what
/// the sink wrote.
template <class Sink, class Then>
struct then_sink {
  Sink sink;
  Then then;
  template <class V>
  ASYPPO_HD void operator()(const V& v) const {
    sink(v);
    then(0, 0);
  }
};

/// Rank of the q-th summary quantile of sigma (q = j / 4, j = 0..4) among n >= 1 valid tokens.
ASYPPO_INLINE std::uint64_t std_quantile_rank(int j, std::uint64_t n) {
  return static_cast<std::uint64_t>(floor(0.25 * j * static_cast<double>(n - 1)));
}
inline constexpr int std_quantile_count = 5;

/// One thread per segment (for_each over [nseg, 1]): its requests, [the n_k-th smallest, the
/// (n - n_h)-th smallest] when masks, then the `quantiles` summary quantiles of sigma.
template <class RowCount>
struct mask_request_setup {
  RowCount count;
  const mask_totals* totals;
  resident_request* req;
  index_t per_segment;
  double k, h;
  bool per_row, masks;
  int quantiles;
  ASYPPO_HD void operator()(index_t s, index_t) const {
    const std::int64_t n = per_row ? count(s) : totals->valid;
    resident_request* q = req + s * per_segment;
    int i = 0;
    if (masks) {
      const std::int64_t nk = fraction_count(k, n), nh = fraction_count(h, n);
      q[i++] = resident_request{static_cast<std::uint64_t>(nk - 1), 0, 0, 0, nk > 0};
      q[i++] = resident_request{static_cast<std::uint64_t>(n - nh), 0, 0, 0, nh > 0};
    }
    for (int j = 0; j < quantiles; ++j)
      q[i++] = resident_request{n > 0 ? std_quantile_rank(j, static_cast<std::uint64_t>(n)) : 0, 0, 0, 0, n > 0};
  }
};

/// Nothing after the row setup: plan_masks_resident's default then_of (no_plan_then_of) makes this.
struct no_plan_then {
  ASYPPO_HD void operator()(index_t, index_t) const {}
};
struct no_plan_then_of {
  template <class Plan>
  no_plan_then operator()(const Plan&) const {
    return {};
  }
};

/// One thread per row: its decision parameters from its segment's first two requests; row 0's thread then
/// also runs then(0, 0) (a one-thread task that needs the plan's results, fused here: one launch fewer).
template <class RowCount, class Then = no_plan_then>
struct mask_row_setup {
  RowCount count;
  const mask_totals* totals;
  const resident_request* res;
  mask_row_params* rows;
  index_t per_segment;
  bool per_row;
  Then then = {};
  ASYPPO_HD void operator()(index_t b, index_t) const {
    const resident_request* q = res + (per_row ? b * per_segment : 0);
    const std::uint64_t total = static_cast<std::uint64_t>(per_row ? count(b) : totals->valid);
    mask_row_params p{};
    if (q[0].active) p.rank_ties |= static_cast<std::uint8_t>(take_lowest(p, q[0].rank, q[0].prefix, q[0].below, q[0].equal));
    if (q[1].active)
      p.rank_ties |= static_cast<std::uint8_t>(take_highest(p, total, q[1].rank, q[1].prefix, q[1].below, q[1].equal));
    rows[b] = p;
    if (b == 0) then(0, 0);
  }
};

/// Batch scope: each row's tie offsets, the ties at the thresholds in the rows before it (a forward
/// scan over the rows' tie counts).
struct row_ties {
  const tie_counts* ties;
  ASYPPO_HD tie_counts operator()(index_t, index_t b) const { return ties[b]; }
};
struct store_tie_offsets {
  const tie_counts* ties;
  mask_row_params* rows;
  ASYPPO_HD void operator()(index_t, index_t b, const tie_counts& upto) const {
    mask_row_params& p = rows[b];
    p.off_k = upto.k - ties[b].k;
    p.off_h = upto.h - ties[b].h;
    p.rank_ties = straddles(p, ties[b]);
  }
};

/// What the resident plan leaves in backend memory for the passes after it.
template <class Backend>
struct resident_mask_plan {
  using row_buffer = decltype(std::declval<const Backend&>().template allocate<mask_row_params>(0));
  using totals_buffer = decltype(std::declval<const Backend&>().template allocate<mask_totals>(0));
  using request_buffer = decltype(std::declval<const Backend&>().template allocate<resident_request>(0));
  row_buffer rows;          ///< [B] per-row decision parameters, tie offsets included
  totals_buffer totals;     ///< [1]
  request_buffer req_a, req_b;
  const resident_request* results = nullptr;  ///< [nseg * per_segment]: masks' requests, then quantiles
  index_t per_segment = 0;
};

/// The first pass of plan_masks_resident's selection reads sigma as the others do (std_key_of).
struct sigma_as_read {};

/// Resident selection and decision parameters of both masks (batch scope: also the `quantiles`
/// summary quantiles, as requests 2.. of the one segment). count: valid tokens per row, in backend
/// memory (a RowCount functor). range: the columns holding every valid token of each row. first: the key
/// function of the selection's first pass (radix_select_resident_from: the keys of std_key_of<T>{sigma,
/// mask, sequence scope}, writing sigma as it goes), or sigma_as_read. then_of(plan): a one-thread task,
/// f(0, 0), run once the plan's totals and results are final (by the row setup's first thread; with no
/// rows, by a launch of its own), e.g. the advantage step's counts; no_plan_then_of: nothing.
template <class Backend, class T, class RowCount, class Range, class FirstKeys = sigma_as_read,
          class ThenOf = no_plan_then_of>
resident_mask_plan<Backend> plan_masks_resident(const Backend& be, token_view<const T> sigma, mask_view mask,
                                                const mask_options& opt, RowCount count, int quantiles, Range range,
                                                FirstKeys first = {}, ThenOf then_of = {}) {
  const index_t B = sigma.extent[0], Tn = sigma.extent[1];
  const bool per_row = opt.scope == mask_scope::sequence;
  resident_mask_plan<Backend> plan;
  plan.totals = be.template allocate<mask_totals>(1);
  const index_t nseg = per_row ? B : 1;
  plan.per_segment = 2 + (per_row ? 0 : quantiles);
  plan.req_a = be.template allocate<resident_request>(nseg * plan.per_segment);
  plan.req_b = be.template allocate<resident_request>(nseg * plan.per_segment);
  const mask_request_setup<RowCount> setup{count, plan.totals.data(), plan.req_a.data(), plan.per_segment, opt.adv_fraction,
                                           opt.entropy_fraction, per_row, true, per_row ? 0 : quantiles};
  const store_mask_totals totals{plan.totals.data(), opt.adv_fraction, opt.entropy_fraction, per_row};
  const mask_total_reducer<RowCount> reducer{count, opt.adv_fraction, opt.entropy_fraction, per_row};
  if (per_row) {  // a request setup per row
    reduce_to(be, B, 1, reducer, full_rows{1}, totals);
    be.for_each(nseg, 1, setup);
  } else {  // the one segment's requests set by the thread that stores the totals (one launch fewer)
    reduce_to(be, B, 1, reducer, full_rows{1}, then_sink<store_mask_totals, mask_request_setup<RowCount>>{totals, setup});
  }
  const std_key_of<T> key_of{sigma, mask, per_row};
  const auto first_key_of = [&] {
    if constexpr (std::is_same_v<FirstKeys, sigma_as_read>) return key_of;
    else return first;
  }();
  plan.results = radix_select_resident_from(be, B, Tn, first_key_of, key_of, 8 * int(sizeof(T)), nseg, plan.per_segment,
                                            plan.req_a.data(), plan.req_b.data(), range);
  plan.rows = be.template allocate<mask_row_params>(B);
  using Then = decltype(then_of(plan));
  const Then then = then_of(plan);
  be.for_each(B, 1, mask_row_setup<RowCount, Then>{count, plan.totals.data(), plan.results, plan.rows.data(),
                                                   plan.per_segment, per_row, then});
  if constexpr (!std::is_same_v<Then, no_plan_then>)
    if (B == 0) be.for_each(1, 1, then);
  if (!per_row && B > 0) {
    auto ties = be.template allocate<tie_counts>(B);
    be.row_reduce(B, Tn, tie_row_reducer<T>{{sigma, mask, plan.rows.data()}}, store_row<tie_counts>{ties.data()}, range);
    be.row_scan(scan_direction::forward, 1, B, row_ties{ties.data()}, tie_sum{},
                store_tie_offsets{ties.data(), plan.rows.data()});
  }
  return plan;
}

/// The sigma a resident request selected (NaN when it was not active).
template <class T>
ASYPPO_INLINE double selected_value(const resident_request& q) {
  return q.active ? static_cast<double>(key_value<T>(q.prefix)) : std::numeric_limits<double>::quiet_NaN();
}

/// mask_counts from the resident plan (batch scope: the thresholds' sigma).
template <class T>
ASYPPO_INLINE mask_counts mask_counts_of(const mask_totals& totals, const resident_request* res, bool per_row) {
  mask_counts c;
  c.valid = totals.valid;
  c.adv_masked = totals.adv_masked;
  c.entropy_masked = totals.entropy_masked;
  if (!per_row) c.adv_threshold = selected_value<T>(res[0]), c.entropy_threshold = selected_value<T>(res[1]);
  return c;
}

/// One thread: the caller's mask_counts.
template <class T>
struct store_mask_counts {
  const mask_totals* totals;
  const resident_request* res;
  mask_counts* out;
  bool per_row;
  ASYPPO_HD void operator()(index_t, index_t) const { *out = mask_counts_of<T>(*totals, res, per_row); }
};

/// Valid tokens of each row, in backend memory.
template <class Backend, class Range>
auto row_valid_counts(const Backend& be, mask_view mask, Range range) {
  const index_t B = mask.extent[0], Tn = mask.extent[1];
  auto d = be.template allocate<index_t>(B);
  if (B > 0) be.row_reduce(B, Tn, count_valid{mask}, store_row<index_t>{d.data()}, range);
  return d;
}

/// The same on the host.
template <class Backend, class Range>
std::vector<index_t> valid_per_row(const Backend& be, mask_view mask, Range range) {
  const index_t B = mask.extent[0];
  std::vector<index_t> host(static_cast<std::size_t>(B));
  be.copy_to_host(row_valid_counts(be, mask, range).data(), B, host.data());
  return host;
}

inline void check_mask_options(const char* where, const mask_options& o) {
  check_fraction(where, "adv_fraction", o.adv_fraction);
  check_fraction(where, "entropy_fraction", o.entropy_fraction);
}

/// Checks of uncertainty_masks and uncertainty_masks_to, then the row span of the mask (with_counts: and
/// each row's valid tokens) and (check_finite) the NaN/Inf check of sigma on valid tokens.
template <class Backend, class T>
auto checked_mask_span(const Backend& be, const char* where, token_view<const T> sigma, mask_view mask, mask_out adv_mask,
                       mask_out entropy_mask, const mask_options& opt, bool with_counts = false) {
  check_view(where, "sigma", sigma);
  const index_t B = sigma.extent[0], Tn = sigma.extent[1];
  check_input(where, "mask", mask, {B, Tn});
  if (!present(mask) && B * Tn > 0) fail(where, "mask", "is required");
  check_optional_output(where, "adv_mask", adv_mask, {B, Tn});
  check_optional_output(where, "entropy_mask", entropy_mask, {B, Tn});
  check_memory(be, where, "sigma", sigma, "mask", mask, "adv_mask", adv_mask, "entropy_mask", entropy_mask);
  check_mask_options(where, opt);
  auto span = make_row_span(be, mask, with_counts);  // every pass stops at each row's last valid token
  if (opt.check_finite)
    check_finite(be, where, "sigma", B, Tn, count_nonfinite_tokens<T, 1, 1>{{}, {sigma}, mask}, span.heads());
  return span;
}

/// The masks after the checks, through the host plan (S2, S3).
template <class Backend, class T, class Comm, class Span>
mask_counts masks_by_host_plan(const Backend& be, token_view<const T> sigma, mask_view mask, mask_out adv_mask,
                               mask_out entropy_mask, const mask_options& opt, const Comm& comm, const Span& span) {
  const auto plan = plan_masks(be, sigma, mask, opt, comm, valid_per_row(be, mask, span.heads()), {}, span.heads());
  write_masks(be, sigma, mask, adv_mask, entropy_mask, plan.rows.data(), plan.ranked, span.heads());
  write_zero(be, sigma.extent[0], sigma.extent[1], span.tails(), adv_mask, entropy_mask);
  return plan.counts;
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
  const auto span = detail::checked_mask_span(be, "asyppo::uncertainty_masks", sigma, mask, adv_mask, entropy_mask, opt);
  return detail::masks_by_host_plan(be, sigma, mask, adv_mask, entropy_mask, opt, comm, span);
}

/// uncertainty_masks with nothing read on the host (docs/algorithm.md, S4): the counts and thresholds go
/// to *counts in backend memory (optional: null skips them), the selection's digits are chosen there
/// (core/select.hpp, resident selection). The same masks and counts. One process. With
/// opt.check_finite the NaN/Inf check waits for the device (one round trip); without it nothing does,
/// so a CUDA graph can hold the call. A host-memory backend (the CPU's), where nothing waits, takes
/// uncertainty_masks' path. Throws like uncertainty_masks.
template <class Backend, class T>
void uncertainty_masks_to(const Backend& be, token_view<const T> sigma, mask_view mask, mask_out adv_mask,
                          mask_out entropy_mask, mask_counts* counts, const mask_options& opt = {}) {
  constexpr const char* where = "asyppo::uncertainty_masks_to";
  if (counts) detail::check_memory(be, where, "counts", seq_view<mask_counts>(counts, 1));
  constexpr bool host = detail::host_memory_backend<Backend>;
  const auto span = detail::checked_mask_span(be, where, sigma, mask, adv_mask, entropy_mask, opt, !host);
  if constexpr (host) {
    const mask_counts c = detail::masks_by_host_plan(be, sigma, mask, adv_mask, entropy_mask, opt, single_process{}, span);
    if (counts) *counts = c;
  } else {
    const index_t B = sigma.extent[0], Tn = sigma.extent[1];
    const auto plan = detail::plan_masks_resident(be, sigma, mask, opt, detail::row_count_array{span.counts.data()}, 0,
                                                  span.heads());
    detail::write_masks(be, sigma, mask, adv_mask, entropy_mask, plan.rows.data(), true, span.heads());
    detail::write_zero(be, B, Tn, span.tails(), adv_mask, entropy_mask);
    if (counts)
      be.for_each(1, 1,
                  detail::store_mask_counts<T>{plan.totals.data(), plan.results, counts, opt.scope == mask_scope::sequence});
  }
}

}  // namespace asyppo
