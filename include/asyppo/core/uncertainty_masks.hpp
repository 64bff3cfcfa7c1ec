// asyppo/core/uncertainty_masks.hpp: the AsyPPO advantage mask and entropy filter
// (docs/algorithm.md, Eq. E10-E11).
//
// Over the N valid tokens of the scope (the whole batch, across ranks, by default; or each
// sequence on its own), order tokens by critic std sigma ascending, ties by flat token index
// b*T + t ascending. Then
//   adv_mask[b,t]     = 0 for the floor(k N) tokens with the smallest sigma ("critics agree"),
//   entropy_mask[b,t] = 0 for the floor(h N) tokens with the largest sigma ("critics disagree"),
// and 1 on every other valid token. Masked-out (invalid) tokens get 0 in both masks, so each
// mask is a subset of the response mask. Among tied sigmas, the tokens with the smaller flat
// index are taken first (for both masks). k = 0 (h = 0) masks nothing. Counts are exact.
//
// Cost: a radix selection (core/select.hpp: two streaming passes for float keys, four for
// double in batch scope) plus one streaming pass that writes both masks. No sort.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/comm/communicator.hpp"
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
  std::int64_t valid = 0;            ///< N: valid tokens in scope (summed over sequences/ranks)
  std::int64_t adv_masked = 0;       ///< tokens with adv_mask = 0 among the valid ones
  std::int64_t entropy_masked = 0;   ///< tokens with entropy_mask = 0 among the valid ones
  double adv_threshold = NAN;        ///< batch scope: largest masked sigma (NaN if none)
  double entropy_threshold = NAN;    ///< batch scope: smallest filtered sigma (NaN if none)
};

namespace detail {

template <class T>
struct std_key_of {
  token_view<const T> sigma;
  mask_view mask;
  index_t cols;
  bool per_row;
  ASYPPO_HD bool operator()(index_t i, index_t& seg, std::uint64_t& key) const {
    const index_t b = i / cols, t = i - b * cols;
    if (!mask(b, t)) return false;
    seg = per_row ? b : 0;
    key = ordered_key(sigma(b, t));
    return true;
  }
};

/// Per-row selection parameters of the final pass (batch scope: the same for every row).
struct mask_row_params {
  std::uint64_t key_k, key_h;  // thresholds (ordered keys)
  std::uint64_t need_k, need_h;  // how many tokens equal to the threshold are taken
  std::uint64_t off_k, off_h;    // ties at the threshold in earlier rows (and ranks)
  std::uint8_t has_k, has_h;     // n_k > 0, n_h > 0
};

struct tie_counts {
  std::uint64_t k, h;
};
struct tie_sum {
  using value_type = tie_counts;
  ASYPPO_HD tie_counts combine(const tie_counts& a, const tie_counts& b) const { return {a.k + b.k, a.h + b.h}; }
};

template <class T>
struct tie_element {
  token_view<const T> sigma;
  mask_view mask;
  const mask_row_params* rows;
  index_t cols;
  ASYPPO_HD tie_counts operator()(index_t i) const {
    const index_t b = i / cols, t = i - b * cols;
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
  ASYPPO_HD void add(tie_counts& a, index_t i) const {
    const tie_counts c = elem(i);
    a.k += c.k;
    a.h += c.h;
  }
  ASYPPO_HD tie_counts combine(const tie_counts& a, const tie_counts& b) const { return {a.k + b.k, a.h + b.h}; }
};

struct store_ties {
  tie_counts* out;
  ASYPPO_HD void operator()(index_t b, const tie_counts& c) const { out[b] = c; }
};

template <class T>
struct mask_writer {
  token_view<const T> sigma;
  mask_view mask;
  mask_out adv_mask, entropy_mask;
  const mask_row_params* rows;
  index_t cols;
  // y = ties at each threshold up to and including token i within its row (inclusive scan).
  ASYPPO_HD void operator()(index_t i, const tie_counts& y) const {
    const index_t b = i / cols, t = i - b * cols;
    std::uint8_t a = 0, e = 0;
    if (mask(b, t)) {
      const mask_row_params& p = rows[b];
      const std::uint64_t key = ordered_key(sigma(b, t));
      const bool low = p.has_k && (key < p.key_k || (key == p.key_k && p.off_k + y.k <= p.need_k));
      const bool high = p.has_h && (key > p.key_h || (key == p.key_h && p.off_h + y.h <= p.need_h));
      a = low ? 0 : 1;
      e = high ? 0 : 1;
    }
    if (adv_mask.data) adv_mask(b, t) = a;
    if (entropy_mask.data) entropy_mask(b, t) = e;
  }
};

struct count_row_valid {
  mask_view mask;
  index_t cols;
  using value_type = index_t;
  ASYPPO_HD index_t identity() const { return 0; }
  ASYPPO_HD void add(index_t& a, index_t i) const {
    const index_t b = i / cols;
    a += mask(b, i - b * cols) ? 1 : 0;
  }
  ASYPPO_HD index_t combine(index_t a, index_t b) const { return a + b; }
};
struct store_index {
  index_t* out;
  ASYPPO_HD void operator()(index_t b, index_t v) const { out[b] = v; }
};

inline std::int64_t fraction_count(double frac, std::int64_t n) {
  return static_cast<std::int64_t>(std::floor(frac * static_cast<double>(n)));
}

/// The masks plus optional extra order statistics of sigma in batch scope (quantile_ranks, ascending
/// ranks among all valid tokens; their sigma values go to quantile_values). Arguments validated.
template <class Backend, class T, class Comm>
mask_counts uncertainty_masks_unchecked(const Backend& be, token_view<const T> sigma, mask_view mask, mask_out adv_mask,
                                        mask_out entropy_mask, const mask_options& opt, const Comm& comm,
                                        const std::vector<std::uint64_t>& quantile_ranks = {},
                                        std::vector<double>* quantile_values = nullptr) {
  const index_t B = sigma.extent[0], Tn = sigma.extent[1];
  const bool per_row = opt.scope == mask_scope::sequence;
  constexpr int key_bits = 8 * sizeof(T);
  mask_counts counts;
  if (B * Tn == 0 && comm.size() == 1) return counts;

  // Valid tokens per segment (one segment per row, or one for the batch).
  std::vector<index_t> row_valid(static_cast<std::size_t>(B));
  {
    auto d = be.template allocate<index_t>(B);
    be.segmented_reduce(B, row_segments{Tn}, count_row_valid{mask, Tn}, store_index{d.data()});
    be.copy_to_host(d.data(), B, row_valid.data());
  }
  std::vector<mask_row_params> rows(static_cast<std::size_t>(B));
  std::vector<select_request> req;
  std::vector<int> which;  // 0: adv rank, 1: entropy rank, 2: quantile
  std::vector<index_t> req_row;
  std::vector<std::int64_t> nk_of, nh_of;
  if (per_row) {
    for (index_t b = 0; b < B; ++b) {
      const std::int64_t n = row_valid[static_cast<std::size_t>(b)];
      const std::int64_t nk = fraction_count(opt.adv_fraction, n), nh = fraction_count(opt.entropy_fraction, n);
      counts.valid += n;
      counts.adv_masked += nk;
      counts.entropy_masked += nh;
      auto& p = rows[static_cast<std::size_t>(b)];
      p = {};
      p.has_k = nk > 0;
      p.has_h = nh > 0;
      p.need_k = static_cast<std::uint64_t>(nk);
      p.need_h = static_cast<std::uint64_t>(nh);
      if (nk > 0) req.push_back({b, static_cast<std::uint64_t>(nk - 1)}), which.push_back(0), req_row.push_back(b);
      if (nh > 0) req.push_back({b, static_cast<std::uint64_t>(n - nh)}), which.push_back(1), req_row.push_back(b);
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
    for (auto r : quantile_ranks) req.push_back({0, r}), which.push_back(2), req_row.push_back(-1);
  }

  std::vector<select_result> res(req.size());
  const std_key_of<T> key_of{sigma, mask, Tn, per_row};
  if (per_row)
    radix_select(be, B * Tn, key_of, key_bits, 8, B, req.data(), static_cast<index_t>(req.size()), res.data());
  else
    radix_select(be, B * Tn, key_of, key_bits, 16, 1, req.data(), static_cast<index_t>(req.size()), res.data(), comm);

  // Thresholds and how many tokens equal to each threshold are taken.
  mask_row_params global{};
  bool rank_ties = false;
  for (std::size_t r = 0; r < req.size(); ++r) {
    mask_row_params& p = per_row ? rows[static_cast<std::size_t>(req_row[r])] : global;
    const select_result& s = res[r];
    if (which[r] == 0) {
      p.has_k = 1;
      p.key_k = s.key;
      const std::uint64_t nk = per_row ? p.need_k : static_cast<std::uint64_t>(counts.adv_masked);
      p.need_k = nk - s.less;  // in [1, equal]
      rank_ties = rank_ties || p.need_k < s.equal;
      if (!per_row) counts.adv_threshold = static_cast<double>(key_value<T>(s.key));
    } else if (which[r] == 1) {
      p.has_h = 1;
      p.key_h = s.key;
      const std::uint64_t nh = per_row ? p.need_h : static_cast<std::uint64_t>(counts.entropy_masked);
      const std::uint64_t total = per_row ? static_cast<std::uint64_t>(row_valid[static_cast<std::size_t>(req_row[r])])
                                          : static_cast<std::uint64_t>(counts.valid);
      const std::uint64_t greater = total - s.less - s.equal;
      p.need_h = nh - greater;  // in [1, equal]
      rank_ties = rank_ties || p.need_h < s.equal;
      if (!per_row) counts.entropy_threshold = static_cast<double>(key_value<T>(s.key));
    } else if (quantile_values) {
      quantile_values->push_back(static_cast<double>(key_value<T>(s.key)));
    }
  }
  if (!per_row)
    for (auto& p : rows) p = global;

  auto d_rows = be.template allocate<mask_row_params>(B);
  be.copy_from_host(rows.data(), B, d_rows.data());
  const tie_element<T> ties{sigma, mask, d_rows.data(), Tn};
  if (!per_row && (rank_ties || comm.size() > 1)) {
    // Ties are ranked by global flat index: offsets = ties in earlier rows, and on earlier ranks.
    auto d_ties = be.template allocate<tie_counts>(B);
    be.segmented_reduce(B, row_segments{Tn}, tie_row_reducer<T>{ties}, store_ties{d_ties.data()});
    std::vector<tie_counts> row_ties(static_cast<std::size_t>(B));
    be.copy_to_host(d_ties.data(), B, row_ties.data());
    std::uint64_t local_k = 0, local_h = 0;
    for (const auto& c : row_ties) local_k += c.k, local_h += c.h;
    std::uint64_t ok = comm.exclusive_scan_sum(local_k), oh = comm.exclusive_scan_sum(local_h);
    for (index_t b = 0; b < B; ++b) {
      rows[static_cast<std::size_t>(b)].off_k = ok;
      rows[static_cast<std::size_t>(b)].off_h = oh;
      ok += row_ties[static_cast<std::size_t>(b)].k;
      oh += row_ties[static_cast<std::size_t>(b)].h;
    }
    be.copy_from_host(rows.data(), B, d_rows.data());
  }
  be.segmented_scan(scan_direction::forward, B, row_segments{Tn}, ties, tie_sum{},
                    mask_writer<T>{sigma, mask, adv_mask, entropy_mask, d_rows.data(), Tn});
  return counts;
}

inline void check_mask_options(const char* where, const mask_options& o) {
  check_fraction(where, "adv_fraction", o.adv_fraction);
  check_fraction(where, "entropy_fraction", o.entropy_fraction);
}

}  // namespace detail

/// AsyPPO masks from the critic std sigma [B,T] and the response mask [B,T]. adv_mask and
/// entropy_mask [B,T] (uint8) are outputs; either may be empty to skip it. Collective over comm
/// in batch scope. Throws asyppo::error on bad shapes, fractions outside [0,1), or (check_finite)
/// NaN/Inf sigma on a valid token.
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
  detail::check_mask_options(where, opt);
  if (opt.check_finite) detail::check_finite_tokens<Backend, T>(be, where, "sigma", B, Tn, {}, sigma, mask);
  return detail::uncertainty_masks_unchecked(be, sigma, mask, adv_mask, entropy_mask, opt, comm);
}

}  // namespace asyppo
