// asyppo/core/select.hpp: exact order statistics by radix selection (no sort).
//
// Finds, for each request (segment s, rank r), the key of rank r (0-based, ascending) among
// the valid keys of segment s, together with how many valid keys of s are strictly smaller
// and how many are equal. Keys are the order-preserving unsigned images of float/double
// (ordered_key), so float order is exact: -inf < ... < 0 < ... < +inf, NaNs at the ends; -0 and
// +0 compare equal (both map to the key of +0), as they do as numbers.
//
// Method: MSD radix selection. Each pass builds one histogram of the next digit_bits of the
// keys that match a request's known prefix (one backend histogram over all requests at once),
// sums it across ranks with the communicator, and fixes that digit of every request on the
// host. Across ranks, passes = key_bits / digit_bits (2 for float with 16-bit digits); each pass
// streams the keys once, so selection is linear in the number of tokens and the communicated
// volume per pass (requests x 2^digit_bits counters) does not depend on the number of tokens.
// In a single process, after the first histogram the few keys that share a request's leading
// digit are collected (backend collect) and finished on the host with nth_element: two streaming
// passes whatever the key width. Counts are integers and selection is by value: results are
// exact and identical for every backend, thread count and partition.
#pragma once

#include <algorithm>
#include <atomic>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/comm/communicator.hpp"
#include "asyppo/config.hpp"
#include "asyppo/core/simd/select_lanes.hpp"
#include "asyppo/error.hpp"

namespace asyppo {

namespace detail {

template <class T>
using key_bits_t = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

/// Order-preserving unsigned image of an IEEE float/double. -0 maps to the key of +0, so equal
/// numbers have equal keys (ties between -0 and +0 are then broken by the caller's index order).
template <class T>
ASYPPO_INLINE key_bits_t<T> ordered_key(T x) {
  using U = key_bits_t<T>;
  static_assert(sizeof(T) == sizeof(U), "ordered_key needs float or double");
  if (x == T(0)) x = T(0);  // -0 and +0 are one value (a tie), not two keys
  U u;
  memcpy(&u, &x, sizeof(U));
  constexpr U sign = U(1) << (8 * sizeof(U) - 1);
  return (u & sign) ? U(~u) : U(u | sign);
}

/// Inverse of ordered_key.
template <class T>
ASYPPO_INLINE T key_value(std::uint64_t key) {
  using U = key_bits_t<T>;
  constexpr U sign = U(1) << (8 * sizeof(U) - 1);
  U k = static_cast<U>(key);
  U u = (k & sign) ? U(k & ~sign) : U(~k);
  T x;
  memcpy(&x, &u, sizeof(U));
  return x;
}

/// One digit of a selection: from digit d on, while the rank lies beyond the keys counted so far (acc
/// plus bin d), add bin d and move on; the digit where it stops holds the rank. h: the radix bins of
/// the request's prefix. (The resident selection's device choice, resident_choose, stops at the same bin.)
ASYPPO_INLINE index_t advance_digit(const std::uint64_t* h, index_t radix, std::uint64_t rank, index_t d,
                                    std::uint64_t& acc) {
  while (d < radix - 1 && acc + h[d] <= rank) acc += h[d++];
  return d;
}

/// f(seg, key) for the valid elements of [t0, t1) of row b, in order: through the key function's own
/// row loop when it offers one for this row (for_each_key returning true), else element by element.
template <class KeyOf, class F>
void for_each_key(const KeyOf& key_of, index_t b, index_t t0, index_t t1, F&& f) {
  if constexpr (requires { { key_of.for_each_key(b, t0, t1, f) } -> std::same_as<bool>; })
    if (key_of.for_each_key(b, t0, t1, f)) return;
  index_t seg;
  std::uint64_t key;
  for (index_t t = t0; t < t1; ++t)
    if (key_of(b, t, seg, key)) f(seg, key);
}

/// The digit of a pass (digit_bits bits above shift) and the bits above it (the prefix it extends).
ASYPPO_INLINE std::uint64_t split_digit(std::uint64_t key, int shift, int digit_bits, std::uint64_t& above) {
  above = (shift + digit_bits >= 64) ? 0 : key >> (shift + digit_bits);
  return (key >> shift) & ((std::uint64_t(1) << digit_bits) - 1);
}

/// A histogram bin's value at (b, t): bin.bin_of(seg, key) for a valid element, else -1.
template <class KeyOf, class Bin>
ASYPPO_HD index_t bin_of_element(const KeyOf& key_of, const Bin& bin, index_t b, index_t t) {
  index_t seg;
  std::uint64_t key;
  if (!key_of(b, t, seg, key)) return -1;
  return bin.bin_of(seg, key);
}

/// ++counts[bin.bin_of(seg, key)] over the valid elements of [t0, t1) of row b (the CPU's count_span).
template <class KeyOf, class Bin, class Count>
void count_keys(const KeyOf& key_of, const Bin& bin, index_t b, index_t t0, index_t t1, Count* counts) {
  for_each_key(key_of, b, t0, t1, [&](index_t sg, std::uint64_t key) {
    const index_t k = bin.bin_of(sg, key);
    if (k >= 0) ++counts[k];
  });
}

/// Histogram bin of element i for one pass: looks the element's segment up in the slot table
/// and bins its next digit under the slot whose prefix it matches.
template <class KeyOf>
struct radix_bin {
  KeyOf key_of;                     // key_of(b, t, seg&, key&) -> bool valid
  const index_t* slot_begin;        // [nseg+1] slots of segment s: [slot_begin[s], slot_begin[s+1])
  const std::uint64_t* slot_prefix; // [nslots]
  int shift;                        // bits below the digit of this pass
  int digit_bits;
  ASYPPO_HD index_t operator()(index_t b, index_t t) const { return bin_of_element(key_of, *this, b, t); }
  ASYPPO_HD index_t bin_of(index_t seg, std::uint64_t key) const {
    std::uint64_t above;
    const std::uint64_t digit = split_digit(key, shift, digit_bits, above);
    for (index_t j = slot_begin[seg]; j < slot_begin[seg + 1]; ++j)
      if (slot_prefix[j] == above) return (j << digit_bits) + static_cast<index_t>(digit);
    return -1;
  }
  /// The CPU backend's span (backend/patterns.hpp): ++counts[bin] over [t0, t1) of row b, through the
  /// key function's own loop when it has one.
  template <class Count>
  void count_span(index_t b, index_t t0, index_t t1, Count* counts) const {
    index_t seg = 0;
    const float* s = nullptr;
    const std::uint8_t* m = nullptr;
    if (float_first_pass(key_of, shift + digit_bits, b, seg, s, m) && slot_begin[seg + 1] - slot_begin[seg] == 1 &&
        slot_prefix[slot_begin[seg]] == 0)  // eight keys per vector (core/simd/select_lanes.hpp)
      t0 = select_lanes::count_digits(s, m, t0, t1, shift, slot_begin[seg] << digit_bits, counts);
    count_keys(key_of, *this, b, t0, t1, counts);
  }
};

/// Collects (slot, key) of the elements whose leading bits (key >> shift, which has digit_bits
/// bits: right after the first pass) are a slot's prefix: slot_of[seg * 2^digit_bits + prefix] is
/// that slot, or -1 (one table lookup per element, not a search over the slots). is_slot holds the
/// same as one bit per entry (8 KiB for 16-bit digits: in L1), read first, so the table itself is
/// read only for the few elements that are collected.
template <class KeyOf>
struct radix_pick {
  KeyOf key_of;
  const std::int32_t* slot_of;
  const std::uint64_t* is_slot;
  int shift, digit_bits;
  struct value_type {
    index_t slot;
    std::uint64_t key;
  };
  ASYPPO_HD bool operator()(index_t b, index_t t, value_type& v) const {
    index_t seg;
    std::uint64_t key;
    if (!key_of(b, t, seg, key)) return false;
    return pick(seg, key, v);
  }
  ASYPPO_HD bool pick(index_t seg, std::uint64_t key, value_type& v) const {
    const index_t i = (seg << digit_bits) + static_cast<index_t>(key >> shift);
    if (((is_slot[i >> 6] >> (i & 63)) & 1) == 0) return false;
    v = {slot_of[i], key};
    return true;
  }
  /// The CPU backend's span: push(v) for the picked elements of [t0, t1) of row b, in order.
  template <class Push>
  void collect_span(index_t b, index_t t0, index_t t1, Push&& push) const {
    index_t seg = 0;
    const float* s = nullptr;
    const std::uint8_t* m = nullptr;
    if (float_first_pass(key_of, shift + digit_bits, b, seg, s, m))  // eight keys per vector
      t0 = select_lanes::pick_digits(s, m, t0, t1, shift, seg << digit_bits, is_slot,
                                     [&](index_t i, std::uint64_t key) { push(value_type{slot_of[i], key}); });
    value_type v;
    for_each_key(key_of, b, t0, t1, [&](index_t sg, std::uint64_t key) {
      if (pick(sg, key, v)) push(v);
    });
  }
};

}  // namespace detail

struct select_request {
  index_t segment;     ///< segment the rank refers to
  std::uint64_t rank;  ///< 0-based ascending rank among the segment's valid keys (must exist)
};

struct select_result {
  std::uint64_t key;    ///< ordered key of the selected element
  std::uint64_t less;   ///< valid keys of the segment strictly below it
  std::uint64_t equal;  ///< valid keys of the segment equal to it (>= 1)
};

namespace detail {

/// Single process, after the first pass (shift = key_bits - digit_bits): every request's key starts
/// with its known prefix (key >> shift); gather the keys under those prefixes and select among them
/// exactly on the host.
template <class Backend, class KeyOf, class Range>
void finish_by_collection(const Backend& be, index_t rows, index_t cols, KeyOf key_of, int shift, int digit_bits,
                          index_t nseg, const select_request* req, index_t nreq, const std::vector<std::uint64_t>& prefix,
                          const std::vector<std::uint64_t>& below, select_result* res, Range range) {
  // Distinct (segment, prefix) slots and the table from (segment, prefix) to slot.
  const index_t radix = index_t(1) << digit_bits;
  std::vector<std::int32_t> slot_table(static_cast<std::size_t>(nseg * radix), -1);
  std::vector<index_t> slot_of(static_cast<std::size_t>(nreq));
  const index_t words = (nseg * radix + 63) / 64;
  std::vector<std::uint64_t> is_slot(static_cast<std::size_t>(words), 0);
  std::int32_t nslots = 0;
  for (index_t r = 0; r < nreq; ++r) {
    const index_t i = (req[r].segment << digit_bits) + static_cast<index_t>(prefix[static_cast<std::size_t>(r)]);
    auto& entry = slot_table[static_cast<std::size_t>(i)];
    if (entry < 0) entry = nslots++;
    is_slot[static_cast<std::size_t>(i >> 6)] |= std::uint64_t(1) << (i & 63);
    slot_of[static_cast<std::size_t>(r)] = entry;
  }
  using pick_t = radix_pick<KeyOf>;
  const auto collect_with = [&](const std::int32_t* table, const std::uint64_t* bits) {
    return be.template collect<typename pick_t::value_type>(rows, cols, pick_t{key_of, table, bits, shift, digit_bits},
                                                            range);
  };
  std::vector<typename pick_t::value_type> found;
  if constexpr (host_memory_backend<Backend>) {  // the host tables serve as they are
    found = collect_with(slot_table.data(), is_slot.data());
  } else {
    auto d_table = be.template allocate<std::int32_t>(nseg * radix);
    auto d_bits = be.template allocate<std::uint64_t>(words);
    be.copy_from_host(slot_table.data(), nseg * radix, d_table.data());
    be.copy_from_host(is_slot.data(), words, d_bits.data());
    found = collect_with(d_table.data(), d_bits.data());
  }
  std::vector<std::vector<std::uint64_t>> keys(static_cast<std::size_t>(nslots));
  for (const auto& v : found) keys[static_cast<std::size_t>(v.slot)].push_back(v.key);
  for (index_t r = 0; r < nreq; ++r) {
    auto k = keys[static_cast<std::size_t>(slot_of[static_cast<std::size_t>(r)])];  // copy: slots may be shared
    const std::uint64_t within = req[r].rank - below[static_cast<std::size_t>(r)];
    std::nth_element(k.begin(), k.begin() + static_cast<std::ptrdiff_t>(within), k.end());
    const std::uint64_t key = k[static_cast<std::size_t>(within)];
    std::uint64_t less = 0, equal = 0;
    for (auto x : k) {
      less += x < key ? 1 : 0;
      equal += x == key ? 1 : 0;
    }
    res[r] = {key, below[static_cast<std::size_t>(r)] + less, equal};
  }
}

}  // namespace detail

/// Radix selection over a [rows, cols] index space, or the columns of each row that range
/// (backend/patterns.hpp, ragged rows) selects: elements outside it are not valid. key_of(b, t, seg,
/// key) returns whether element (b,t) is valid and, if so, its segment (in [0, nseg)) and ordered
/// key (key_bits wide). Requests and results are host arrays. Collective over comm: every rank
/// passes the same requests.
template <class Backend, class KeyOf, class Comm, class Range>
void radix_select(const Backend& be, index_t rows, index_t cols, KeyOf key_of, int key_bits, int digit_bits, index_t nseg,
                  const select_request* req, index_t nreq, select_result* res, const Comm& comm, Range range) {
  if (nreq == 0) return;
  std::vector<std::uint64_t> prefix(static_cast<std::size_t>(nreq), 0), below(static_cast<std::size_t>(nreq), 0);
  std::vector<index_t> slot_of(static_cast<std::size_t>(nreq));
  const index_t radix = index_t(1) << digit_bits;
  for (int shift = key_bits - digit_bits; shift >= 0; shift -= digit_bits) {
    // Distinct (segment, prefix) slots, grouped by segment (requests are few: a quadratic scan is fine).
    std::vector<index_t> slot_begin(static_cast<std::size_t>(nseg + 1), 0);
    std::vector<std::uint64_t> slot_prefix;
    std::vector<index_t> order(static_cast<std::size_t>(nreq));
    for (index_t r = 0; r < nreq; ++r) order[static_cast<std::size_t>(r)] = r;
    std::sort(order.begin(), order.end(), [&](index_t a, index_t b) {
      return req[a].segment != req[b].segment ? req[a].segment < req[b].segment
                                              : prefix[static_cast<std::size_t>(a)] < prefix[static_cast<std::size_t>(b)];
    });
    for (std::size_t o = 0; o < order.size(); ++o) {
      const index_t r = order[o];
      const bool fresh = o == 0 || req[order[o - 1]].segment != req[r].segment ||
                         prefix[static_cast<std::size_t>(order[o - 1])] != prefix[static_cast<std::size_t>(r)];
      if (fresh) {
        slot_prefix.push_back(prefix[static_cast<std::size_t>(r)]);
        ++slot_begin[static_cast<std::size_t>(req[r].segment + 1)];
      }
      slot_of[static_cast<std::size_t>(r)] = static_cast<index_t>(slot_prefix.size()) - 1;
    }
    for (index_t s = 0; s < nseg; ++s) slot_begin[static_cast<std::size_t>(s + 1)] += slot_begin[static_cast<std::size_t>(s)];
    const index_t nslots = static_cast<index_t>(slot_prefix.size());

    auto d_begin = be.template allocate<index_t>(nseg + 1);
    auto d_prefix = be.template allocate<std::uint64_t>(nslots);
    be.copy_from_host(slot_begin.data(), nseg + 1, d_begin.data());
    be.copy_from_host(slot_prefix.data(), nslots, d_prefix.data());
    const detail::radix_bin<KeyOf> bin{key_of, d_begin.data(), d_prefix.data(), shift, digit_bits};
    std::vector<std::uint64_t> hist(static_cast<std::size_t>(nslots * radix), 0);
    if constexpr (detail::host_memory_backend<Backend>) {  // count into the host array itself
      be.histogram(rows, cols, bin, nslots * radix, hist.data(), range);
    } else {
      auto d_hist = be.template allocate<std::uint64_t>(nslots * radix);
      be.fill(d_hist.data(), nslots * radix, std::uint64_t(0));
      be.histogram(rows, cols, bin, nslots * radix, d_hist.data(), range);
      be.copy_to_host(d_hist.data(), nslots * radix, hist.data());
    }
    comm.allreduce_sum(hist.data(), nslots * radix);

    // One sweep over each slot's bins for all its requests, in rank order (requests of one slot share
    // their prefix and so their count below it).
    std::sort(order.begin(), order.end(), [&](index_t a, index_t b) {
      const index_t sa = slot_of[static_cast<std::size_t>(a)], sb = slot_of[static_cast<std::size_t>(b)];
      return sa != sb ? sa < sb : req[a].rank < req[b].rank;
    });
    index_t slot = -1, d = 0;
    std::uint64_t acc = 0;
    for (const index_t r : order) {
      const std::uint64_t* h = hist.data() + slot_of[static_cast<std::size_t>(r)] * radix;
      if (slot_of[static_cast<std::size_t>(r)] != slot) {
        slot = slot_of[static_cast<std::size_t>(r)], d = 0;
        acc = below[static_cast<std::size_t>(r)];
      }
      d = detail::advance_digit(h, radix, req[r].rank, d, acc);
      below[static_cast<std::size_t>(r)] = acc;
      prefix[static_cast<std::size_t>(r)] = (prefix[static_cast<std::size_t>(r)] << digit_bits) | static_cast<std::uint64_t>(d);
      if (shift == 0) res[r] = {prefix[static_cast<std::size_t>(r)], acc, h[d]};
    }
    if (shift > 0 && comm.size() == 1) {
      detail::finish_by_collection(be, rows, cols, key_of, shift, digit_bits, nseg, req, nreq, prefix, below, res, range);
      return;
    }
  }
}

template <class Backend, class KeyOf, class Comm = single_process>
void radix_select(const Backend& be, index_t rows, index_t cols, KeyOf key_of, int key_bits, int digit_bits, index_t nseg,
                  const select_request* req, index_t nreq, select_result* res, const Comm& comm = {}) {
  radix_select(be, rows, cols, key_of, key_bits, digit_bits, nseg, req, nreq, res, comm, full_rows{cols});
}

// ---- Resident selection: requests, digits and results stay in the backend's memory --------------
//
// The same MSD radix selection with nothing read on the host, so that a device backend never waits
// (a CUDA graph can hold it; docs/algorithm.md, S4): the ranks are written by an earlier device pass
// (they depend on counts that live there), each digit is chosen by a row scan over each request's
// bins (resident_choose) from the pass's histogram, and the results are read by later device passes. One
// process. Digits of d bits (resident_digit_bits_for: 8, or 11 where chosen and the bins are few), the
// last pass taking the rest: ceil(key_bits / d) streaming passes (float: 4 of 8 bits, or 11 + 11 + 10;
// double: 8, or 6) and a 2^d-bin scan per request and pass. Segment s owns the request slots [s R, s R + R)
// (R per segment, in any rank order; inactive slots take no part). A request counts in the bins of
// its leader, the first active request of its segment with the same prefix, so requests with equal
// prefixes share one histogram row. Each pass reads a digit filter per segment (2^d bits: the last
// digits of its active requests' prefixes); the histogram rejects an element whose bits there are none
// of them with one bit test, so after the first pass most elements cost no prefix comparisons (on an
// H100 the passes after the first took twice as long as the first before it). One setup pass before
// the first histogram zeroes it and sets the first filter; after that each digit choice prepares the
// next pass itself (two histograms and three filters in turn: it zeroes the next pass's histogram bin
// by bin, sets the next filter's bit of each digit it chooses, and zeroes the filter after that), so a
// pass is two launches on a device, not three. Results (key, less, equal) equal radix_select's,
// whatever the digit width.

/// The narrow digit of a resident selection, and the wide one: one pass fewer for float keys (11 + 11 +
/// 10 bits), at 2^11 bins per request and pass.
inline constexpr int resident_digit_bits = 8;
inline constexpr int resident_wide_digit_bits = 11;
/// The most requests for which resident_digit_bits_for takes the wide digit (7 x 2^11 bins): the advantage
/// step's seven of the batch scope (the masks' two and the summary's five quantiles).
inline constexpr index_t resident_wide_max_requests = 7;

// Whether resident selections take the wide digit where the bins are few (1) or always the narrow one
// (0). A tuning choice for a device, where each pass is a launch-and-latency-bound kernel: one pass fewer
// against a histogram and a digit choice of 8 times the bins (on the CUDA backend: packed 16-bit shared
// bins, ASYPPO_CUDA_HIST_PACKED_BINS). Results do not depend on it. Measured on an H200 (docs/benchmarks.md,
// fifth GPU session; step graph replay): 0.323 ms against 0.301 with the narrow digit (three 2^11-bin digit
// choices took 92 us against four 256-bin ones' 70): off.
#ifndef ASYPPO_RESIDENT_WIDE_DIGITS
#define ASYPPO_RESIDENT_WIDE_DIGITS 0
#endif

/// The digit width of a resident selection of nreq requests (radix_select_resident's default).
inline int resident_digit_bits_for(index_t nreq) {
  const bool wide = ASYPPO_RESIDENT_WIDE_DIGITS != 0 && nreq <= resident_wide_max_requests;
  return wide ? resident_wide_digit_bits : resident_digit_bits;
}

namespace detail {

/// One request of a resident selection (backend memory). The caller sets rank and active and zeroes
/// prefix and below; after the last pass prefix is the selected key, below the valid keys of the
/// segment strictly smaller, equal those equal to it.
struct resident_request {
  std::uint64_t rank = 0;
  std::uint64_t prefix = 0;
  std::uint64_t below = 0;
  std::uint64_t equal = 0;
  std::uint32_t active = 0;
};

/// Index of the first active request of r's segment whose prefix is r's (r itself if none before).
ASYPPO_INLINE index_t resident_leader(const resident_request* req, index_t per_segment, index_t r) {
  index_t j = r - r % per_segment;
  while (!(req[j].active && req[j].prefix == req[r].prefix)) ++j;
  return j;
}

/// Words of a segment's digit filter for digits of digit_bits bits: one bit per value of a digit.
ASYPPO_INLINE index_t resident_filter_words(int digit_bits) { return ((index_t(1) << digit_bits) + 63) / 64; }

/// The last digit of a prefix (its low digit_bits bits): its bit in a digit filter.
ASYPPO_INLINE unsigned last_digit(std::uint64_t prefix, int digit_bits) {
  return static_cast<unsigned>(prefix & ((std::uint64_t(1) << digit_bits) - 1));
}

/// Whether the last digit of prefix is marked in a segment's filter.
ASYPPO_INLINE bool filter_has(const std::uint64_t* filter, std::uint64_t prefix, int digit_bits) {
  const unsigned d = last_digit(prefix, digit_bits);
  return ((filter[d >> 6] >> (d & 63)) & 1) != 0;
}

/// Sets the bits of v in the word at p: atomic (relaxed) on a device and on the host, where a backend's
/// threads may set bits of one word together (OR commutes: the word does not depend on their order).
ASYPPO_INLINE void atomic_set_bits(std::uint64_t* p, std::uint64_t v) {
#if defined(__CUDA_ARCH__)
  atomicOr(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
#else
  std::atomic_ref<std::uint64_t>(*p).fetch_or(v, std::memory_order_relaxed);
#endif
}

/// Before the first pass, a for_each over i in [0, max(nbins, nzero)) (nbins >= nseg): zeroes bin i, word i
/// of zero (the candidate store's counters, candidate_store) and, for i < nseg, sets segment i's filter to the
/// last digits (digit_bits bits: every pass but the last has that width, and a pass's prefixes end in the
/// digit of the pass before it) of its active requests' prefixes (in the first pass all prefixes are 0, as
/// are the bits above every key) and zeroes its words of next_filter (which the first digit choice sets:
/// resident_choose).
struct resident_pass_setup {
  const resident_request* req;
  index_t per_segment, nseg;
  std::uint64_t* hist;
  index_t nbins;
  std::uint64_t* filter;       // [nseg * resident_filter_words(digit_bits)]
  std::uint64_t* next_filter;  // the same size
  int digit_bits;
  std::uint64_t* zero;  // [nzero]
  index_t nzero;
  ASYPPO_HD void operator()(index_t i) const {
    if (i < nzero) zero[i] = 0;
    if (i >= nbins) return;
    hist[i] = 0;
    if (i >= nseg) return;
    const index_t words = resident_filter_words(digit_bits);
    for (index_t k = 0; k < words; ++k) {
      std::uint64_t w = 0;
      for (index_t j = i * per_segment; j < (i + 1) * per_segment; ++j) {
        const unsigned d = last_digit(req[j].prefix, digit_bits);
        if (req[j].active && index_t(d >> 6) == k) w |= std::uint64_t(1) << (d & 63);
      }
      filter[i * words + k] = w;
      next_filter[i * words + k] = 0;
    }
  }
};

/// Histogram bin of element (b, t) in one pass (its digit: digit_bits() bits above shift): its digit under
/// the first active request of its segment whose prefix its leading bits match (none unless the
/// segment's filter, of filter_bits()-bit digits, holds their last digit). Bits > 0: both widths are Bits
/// (compile-time: the narrow digit's passes); 0: pass_bits and prefix_bits.
template <class KeyOf, int Bits = 0>
struct resident_bin {
  KeyOf key_of;
  const resident_request* req;
  const std::uint64_t* filter;
  index_t per_segment;
  int shift;
  int pass_bits;    // the digit of this pass
  int prefix_bits;  // the last digit of the prefixes, the filter's
  ASYPPO_HD int digit_bits() const { return Bits > 0 ? Bits : pass_bits; }
  ASYPPO_HD int filter_bits() const { return Bits > 0 ? Bits : prefix_bits; }
  ASYPPO_HD index_t operator()(index_t b, index_t t) const { return bin_of_element(key_of, *this, b, t); }
  ASYPPO_HD index_t bin_of(index_t seg, std::uint64_t key) const {
    std::uint64_t above;
    const std::uint64_t digit = split_digit(key, shift, digit_bits(), above);
    if (!filter_has(filter + seg * resident_filter_words(filter_bits()), above, filter_bits())) return -1;
    for (index_t j = seg * per_segment; j < (seg + 1) * per_segment; ++j)
      if (req[j].active && req[j].prefix == above) return (j << digit_bits()) + static_cast<index_t>(digit);
    return -1;
  }
  /// The CPU backend's span: through the key function's own row loop.
  template <class Count>
  void count_span(index_t b, index_t t0, index_t t1, Count* counts) const {
    count_keys(key_of, *this, b, t0, t1, counts);
  }
};

/// The elements of a digit choice's row scan (one row per request, one column per bin): bin d of the
/// bins request r counts in, its leader's (none, zeros, for an inactive request: it has no leader).
struct leader_bins {
  const resident_request* req;
  const std::uint64_t* hist;
  index_t per_segment;
  int digit_bits;
  ASYPPO_HD std::uint64_t operator()(index_t r, index_t d) const {
    return req[r].active ? hist[(resident_leader(req, per_segment, r) << digit_bits) + d] : 0;
  }
};

/// Running count: the scan operator of a digit choice (integers: exact in any association).
struct count_sum {
  using value_type = std::uint64_t;
  ASYPPO_HD std::uint64_t initial() const { return 0; }
  ASYPPO_HD std::uint64_t lift(std::uint64_t e) const { return e; }
  ASYPPO_HD std::uint64_t apply(std::uint64_t e, std::uint64_t x) const { return x + e; }
  ASYPPO_HD std::uint64_t combine(std::uint64_t a, std::uint64_t b) const { return a + b; }
};

/// The sink of a digit choice: a forward row scan over [requests, 2^digit_bits] of leader_bins hands
/// bin d of request r the count of bins 0..d; the one bin where advance_digit would stop (the first whose
/// count reaches past the rank, or the last) writes next[r] with the digit appended, the keys below it and
/// its count; an inactive request is copied by bin 0. The requests of this pass (bins.req) are only read
/// (other requests read their leader's prefix there meanwhile). One bin per thread on a device instead of
/// one thread walking them. It also prepares the next pass (no setup launch between them): every bin
/// zeroes its bin of next_hist (the next pass's histogram: at most as wide as this one), the chosen bin
/// sets its digit's bit in its segment's next_filter, and bin k < filter words of each segment's first
/// request zeroes word k of later_filter (the filter the next choice sets; filters of filter_bits-bit
/// digits, the selection's width). The buffers differ from those this pass reads (radix_select_resident
/// takes them in turn).
struct resident_choose {
  leader_bins bins;  // the scan's elements over cur (the requests of this pass)
  resident_request* next;
  std::uint64_t* next_hist;     // [requests << bins.digit_bits]
  std::uint64_t* next_filter;   // [segments * resident_filter_words(filter_bits)]
  std::uint64_t* later_filter;  // the same size
  int filter_bits;
  ASYPPO_HD void operator()(index_t r, index_t d, std::uint64_t upto) const {
    next_hist[(r << bins.digit_bits) + d] = 0;
    const index_t words = resident_filter_words(filter_bits), seg = r / bins.per_segment;
    if (r % bins.per_segment == 0 && d < words) later_filter[seg * words + d] = 0;
    const resident_request& q = bins.req[r];
    if (!q.active) {
      if (d == 0) next[r] = q;
      return;
    }
    const std::uint64_t h = bins(r, d);
    const std::uint64_t before = q.below + (upto - h);  // keys of the segment below bin d
    const bool last = d == (index_t(1) << bins.digit_bits) - 1;
    if (before > q.rank || (q.below + upto <= q.rank && !last)) return;
    resident_request n = q;
    n.below = before;
    n.prefix = (q.prefix << bins.digit_bits) | static_cast<std::uint64_t>(d);
    n.equal = h;
    next[r] = n;
    atomic_set_bits(next_filter + seg * words + (d >> 6), std::uint64_t(1) << (d & 63));
  }
};

/// Claims the next slot of the append counter at p: returns its value before this element's increment
/// (atomic, relaxed). On a device the lanes of a warp claiming slots of one counter together add once
/// (their leader's atomic, the others' slots after it in lane order), so that a pass's appends cost one
/// atomic per warp and counter, not one per element; which slot an element gets depends on timing.
ASYPPO_INLINE std::uint64_t claim_slot(std::uint64_t* p) {
#if defined(__CUDA_ARCH__)
  const unsigned active = __activemask();
  const unsigned same = __match_any_sync(active, reinterpret_cast<unsigned long long>(p));
  unsigned lane;
  asm("mov.u32 %0, %%laneid;" : "=r"(lane));
  const int leader = __ffs(static_cast<int>(same)) - 1;
  unsigned long long base = 0;
  if (lane == static_cast<unsigned>(leader))
    base = atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(__popc(same)));
  base = __shfl_sync(same, base, leader);
  return base + static_cast<unsigned long long>(__popc(same & ((1u << lane) - 1u)));
#else
  return std::atomic_ref<std::uint64_t>(*p).fetch_add(1, std::memory_order_relaxed);
#endif
}

/// Words between two regions' counters of a candidate store (128 bytes: each counter its own line).
inline constexpr index_t kCandidateCounterPitch = 16;

/// The candidates of a resident selection (radix_select_resident's compaction): `regions` rows of `cols`
/// slots in backend memory, one append counter per region and an overflow flag. Element (b, t) appends its
/// (segment, key) to region b % regions (the appends of a pass spread over the counters); an append past a
/// region's last slot stores nothing and sets the flag instead. A candidate takes `stride` words: 1 (keys of
/// at most 32 bits, segments below 2^32: seg << 32 | key) or 2 (key, seg).
struct candidate_store {
  std::uint64_t* words;     // [regions * cols * stride]
  std::uint64_t* counters;  // [counter_words(regions)]: region r's count at r * kCandidateCounterPitch, then the flag
  index_t regions, cols;
  int stride;
  ASYPPO_HD static index_t counter_words(index_t regions) { return regions * kCandidateCounterPitch + 1; }
  ASYPPO_HD std::uint64_t* flag() const { return counters + regions * kCandidateCounterPitch; }
  ASYPPO_HD bool overflowed() const { return *flag() != 0; }
  /// The slots of region r that hold candidates.
  ASYPPO_HD index_t size(index_t r) const {
    const std::uint64_t c = counters[r * kCandidateCounterPitch];
    return c < static_cast<std::uint64_t>(cols) ? static_cast<index_t>(c) : cols;
  }
  ASYPPO_HD void get(index_t r, index_t t, index_t& seg, std::uint64_t& key) const {
    const std::uint64_t* w = words + (r * cols + t) * stride;
    if (stride == 1) {
      seg = static_cast<index_t>(w[0] >> 32);
      key = w[0] & 0xffffffffu;
    } else {
      key = w[0];
      seg = static_cast<index_t>(w[1]);
    }
  }
  ASYPPO_HD void push(index_t b, index_t seg, std::uint64_t key) const {
    const index_t r = b % regions;
    const std::uint64_t slot = claim_slot(counters + r * kCandidateCounterPitch);
    if (slot >= static_cast<std::uint64_t>(cols)) {
      atomic_set_bits(flag(), 1);
      return;
    }
    std::uint64_t* w = words + (r * cols + static_cast<index_t>(slot)) * stride;
    if (stride == 1) {
      w[0] = (static_cast<std::uint64_t>(seg) << 32) | key;
    } else {
      w[0] = key;
      w[1] = static_cast<std::uint64_t>(seg);
    }
  }
};

/// The histogram bin of the collecting pass: Bin's (a resident_bin), and every element it counts appended
/// to the candidate store.
template <class Bin>
struct collecting_bin {
  Bin bin;
  candidate_store store;
  ASYPPO_HD index_t operator()(index_t b, index_t t) const {
    index_t seg;
    std::uint64_t key;
    if (!bin.key_of(b, t, seg, key)) return -1;
    const index_t k = bin.bin_of(seg, key);
    if (k >= 0) store.push(b, seg, key);
    return k;
  }
  /// The CPU backend's span: through the key function's own row loop.
  template <class Count>
  void count_span(index_t b, index_t t0, index_t t1, Count* counts) const {
    for_each_key(bin.key_of, b, t0, t1, [&](index_t seg, std::uint64_t key) {
      const index_t k = bin.bin_of(seg, key);
      if (k < 0) return;
      ++counts[k];
      store.push(b, seg, key);
    });
  }
};

/// The keys of the passes after the collecting one, over rows + regions rows: rows [0, rows) are key_of's
/// (read only after an overflow: candidate_range), row rows + r region r's candidates (all valid).
template <class KeyOf>
struct candidate_keys {
  KeyOf key_of;
  candidate_store store;
  index_t rows;
  ASYPPO_HD bool operator()(index_t b, index_t t, index_t& seg, std::uint64_t& key) const {
    if (b < rows) return key_of(b, t, seg, key);
    store.get(b - rows, t, seg, key);
    return true;
  }
};

/// The ranges of candidate_keys: the candidates of each region, or, after an overflow, range's columns of
/// the rows [0, rows) and no candidate.
template <class Range>
struct candidate_range {
  Range range;
  candidate_store store;
  index_t rows;
  ASYPPO_HD void operator()(index_t b, index_t& lo, index_t& hi) const {
    const bool all = store.overflowed();
    lo = hi = 0;
    if (b < rows) {
      if (all) range(b, lo, hi);
    } else if (!all) {
      hi = store.size(b - rows);
    }
  }
};

}  // namespace detail

// Whether resident selections compact their candidates by default (1: resident_compaction's after_bits 16)
// or read every key in every pass (0). A tuning choice for a device: the last of a float selection's four
// passes (five of a double's eight) then reads the few elements the pass before it collected instead of
// every key again. Results do not depend on it. Not yet measured on a GPU (docs/benchmarks.md, "Prepared
// without a GPU, third time").
#ifndef ASYPPO_RESIDENT_COMPACTION
#define ASYPPO_RESIDENT_COMPACTION 1
#endif

/// Candidate compaction of a resident selection (docs/algorithm.md S4): the first pass whose prefixes hold
/// at least after_bits bits, unless it is the last, also appends every element it counts to a candidate
/// store (detail::candidate_store), and the later passes count those instead of reading every key. After 16
/// bits a float's prefix is its sign, exponent and 7 mantissa bits (1/128 of a binade), so the candidates
/// are few; where they are not (a region of the store fills up: many equal keys, say), the later passes read
/// every key as without compaction. The results never depend on it.
struct resident_compaction {
  int after_bits = ASYPPO_RESIDENT_COMPACTION ? 16 : 0;  ///< 0: no compaction
  index_t regions = 0;  ///< the store's rows of `cols` slots each (0: ceil(rows / 8), one slot per 8 elements)
};

/// radix_select_resident (below) whose first pass reads the keys through first_key_of: a key function that
/// gives every element the validity, segment and key key_of gives it, and may write, as it goes, what key_of
/// reads (the advantage step computes sigma there, so that sigma is not a pass of its own: docs/algorithm.md
/// S4). The first pass calls it once for every element of the range.
template <class Backend, class FirstKeyOf, class KeyOf, class Range>
detail::resident_request* radix_select_resident_from(const Backend& be, index_t rows, index_t cols,
                                                     FirstKeyOf first_key_of, KeyOf key_of, int key_bits, index_t nseg,
                                                     index_t per_segment, detail::resident_request* a,
                                                     detail::resident_request* b, Range range, int digit_bits = 0,
                                                     resident_compaction compaction = {}) {
  constexpr const char* where = "asyppo::radix_select_resident";
  const index_t nreq = nseg * per_segment;
  if (nreq == 0) return a;
  if (digit_bits == 0) digit_bits = resident_digit_bits_for(nreq);
  if (digit_bits < 1 || digit_bits > 16) detail::fail(where, "digit_bits", digit_bits, " is outside [1, 16]");
  if (compaction.after_bits < 0) detail::fail(where, "compaction.after_bits", compaction.after_bits, " is negative");
  if (compaction.regions < 0) detail::fail(where, "compaction.regions", compaction.regions, " is negative");
  const auto width_at = [&](int done) { return key_bits - done < digit_bits ? key_bits - done : digit_bits; };
  // The collecting pass: the first with at least after_bits bits of prefix that is not the last (-1: none).
  int collect = -1;
  if (compaction.after_bits > 0 && rows > 0 && cols > 0)
    for (int done = 0, pass = 0; done + width_at(done) < key_bits; done += width_at(done), ++pass)
      if (done >= compaction.after_bits) {
        collect = pass;
        break;
      }
  const index_t regions = collect < 0 ? 0 : (compaction.regions > 0 ? compaction.regions : (rows + 7) / 8);
  const int stride = key_bits <= 32 && nseg <= (index_t(1) << 32) ? 1 : 2;
  auto store_words = be.template allocate<std::uint64_t>(regions * cols * stride);
  const index_t counter_words = collect < 0 ? 0 : detail::candidate_store::counter_words(regions);
  auto store_counters = be.template allocate<std::uint64_t>(counter_words);
  const detail::candidate_store store{store_words.data(), store_counters.data(), regions, cols, stride};
  // Two histograms and three filters in turn (pass p: hist[p % 2], filter[p % 3]; see resident_choose).
  const index_t hist_size = nreq << digit_bits, words = detail::resident_filter_words(digit_bits);
  auto hist = be.template allocate<std::uint64_t>(2 * hist_size);  // hist_size >= nseg
  auto filter = be.template allocate<std::uint64_t>(3 * nseg * words);
  const auto hist_of = [&](int p) { return hist.data() + (p % 2) * hist_size; };
  const auto filter_of = [&](int p) { return filter.data() + (p % 3) * nseg * words; };
  be.for_each(hist_size > counter_words ? hist_size : counter_words,
              detail::resident_pass_setup{a, per_segment, nseg, hist_of(0), hist_size, filter_of(0), filter_of(1),
                                          digit_bits, store_counters.data(), counter_words});
  for (int done = 0, pass = 0; done < key_bits; ++pass) {
    const int width = width_at(done);  // the last pass: the rest
    const int shift = key_bits - done - width;
    const index_t nbins = nreq << width;
    // This pass's bin over the keys `keys` (the narrow digit: its widths at compile time).
    const auto bin_over = [&](auto keys, auto count) {
      using K = decltype(keys);
      constexpr int narrow = resident_digit_bits;
      if (width == narrow && digit_bits == narrow)
        count(detail::resident_bin<K, narrow>{keys, a, filter_of(pass), per_segment, shift, width, digit_bits});
      else
        count(detail::resident_bin<K>{keys, a, filter_of(pass), per_segment, shift, width, digit_bits});
    };
    const auto count_all = [&](auto bin) { be.histogram(rows, cols, bin, nbins, hist_of(pass), range); };
    if (pass == 0) {  // (never the collecting pass: that one has a prefix of after_bits > 0 bits)
      bin_over(first_key_of, count_all);
    } else if (collect < 0 || pass < collect) {
      bin_over(key_of, count_all);
    } else if (pass == collect) {
      bin_over(key_of, [&](auto bin) {
        be.histogram(rows, cols, detail::collecting_bin<decltype(bin)>{bin, store}, nbins, hist_of(pass), range);
      });
    } else {  // the candidates (or, after an overflow, every key): one bin type for every width
      const detail::candidate_keys<KeyOf> keys{key_of, store, rows};
      be.histogram(rows + regions, cols,
                   detail::resident_bin<detail::candidate_keys<KeyOf>>{keys, a, filter_of(pass), per_segment, shift,
                                                                         width, digit_bits},
                   nbins, hist_of(pass), detail::candidate_range<Range>{range, store, rows});
    }
    const detail::leader_bins bins{a, hist_of(pass), per_segment, width};
    be.row_scan(scan_direction::forward, nreq, index_t(1) << width, bins, detail::count_sum{},
                detail::resident_choose{bins, b, hist_of(pass + 1), filter_of(pass + 1), filter_of(pass + 2), digit_bits});
    std::swap(a, b);
    done += width;
  }
  return a;
}

/// Resident radix selection over [rows, cols] (the columns range selects; key_of as radix_select's,
/// segments in [0, nseg)). a and b: two backend arrays of nseg * per_segment requests, a set up by
/// the caller (rank, active; prefix = below = 0); the passes alternate between them. Returns the one
/// that holds the results. Enqueues only backend patterns: no host round trip. digit_bits in [1, 16]
/// (0: resident_digit_bits_for(nseg * per_segment)); compaction: after_bits >= 0, regions >= 0. The results
/// depend on neither.
template <class Backend, class KeyOf, class Range>
detail::resident_request* radix_select_resident(const Backend& be, index_t rows, index_t cols, KeyOf key_of, int key_bits,
                                                index_t nseg, index_t per_segment, detail::resident_request* a,
                                                detail::resident_request* b, Range range, int digit_bits = 0,
                                                resident_compaction compaction = {}) {
  return radix_select_resident_from(be, rows, cols, key_of, key_of, key_bits, nseg, per_segment, a, b, range, digit_bits,
                                    compaction);
}

}  // namespace asyppo
