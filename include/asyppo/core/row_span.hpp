// asyppo/core/row_span.hpp: where the valid tokens of each row end (right padding).
//
//   end[b] = 1 + the largest t with mask[b,t] != 0, or 0 when row b has no valid token;
//   where asked (make_row_span's with_counts), count[b] = the valid tokens of row b, from the same pass
//   on a device (last_valid_counted: the device paths of the masks and of the advantage step need both).
//
// Every valid token of row b lies in [0, end[b]). LLM batches are right-padded (most of a
// [B,T] batch is often padding), so the token algorithms visit only those columns through the
// ragged overloads of the 2-D patterns (row_heads{end}, backend/patterns.hpp) and write the
// padding [end[b], T) of their outputs in plain store loops (row_tails{end, T}, write_zero).
// Cost: on the CPU each row's mask is read backwards from T until its last valid token, a word at a
// time when the row is contiguous, so only the padding is read. On a device that walk would be one
// thread per row (latency-bound: 0.8 ms for 1024 x 8192 on an H100), so there a row reduce reads the
// whole mask, one block per row (14 us there, one column per load), eight columns per load when the rows
// are aligned 8-byte words (last_valid_word_max). Exact (integers).
// Ticket (device backends): a counter the pass that finds the ends zeroes (the sink of row 0), which the
// span hands to the per-row kernels (row_heads::ticket): a per-row reduce counts its finished blocks there
// and the last one combines the rows' partials, one launch instead of two (the CUDA backend).
// Schedule (device backends that offer longest_first): one block per row takes the rows in launch order,
// so with ragged rows a few long ones left for the last wave keep the device waiting while most of it
// idles (the H200 profile in docs/benchmarks.md: SMs active 74 % of the actor's reduce). The span then
// also holds the rows by descending end, which the per-row kernels follow (row_heads::order): longest
// first, the tail is short rows. Results do not change (each row's result goes to its own row).
#pragma once

#include <bit>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <utility>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/core/simd/stream_store.hpp"
#include "asyppo/core/validate.hpp"
#include "asyppo/views.hpp"

namespace asyppo::detail {

struct last_valid_end {
  mask_view mask;
  index_t* end;
  /// As a 2-D for_each over the first column of each row (first_column): rows, not tokens, are the
  /// unit of work, so the CPU backend splits the rows over its threads (its 1-D for_each over B rows
  /// would be one piece: that grain is sized for cheap elements).
  ASYPPO_HD void operator()(index_t b, index_t) const { (*this)(b); }
  ASYPPO_HD void operator()(index_t b) const {
    index_t t = mask.extent[1];
    if (mask.stride[1] == 1 && t > 0) {  // eight mask bytes at a time
      const std::uint8_t* row = &mask(b, 0);
      while (t >= 8) {
        std::uint64_t w;
        memcpy(&w, row + t - 8, 8);
        if (w != 0) break;
        t -= 8;
      }
    }
    while (t > 0 && mask(b, t - 1) == 0) --t;
    end[b] = t;
  }
};

/// The same end as a reduction over the row: the largest t + 1 with mask[b,t] != 0 (max: associative
/// and commutative, identity 0). The device form (row_reduce, one block per row).
struct last_valid_max {
  mask_view mask;
  using value_type = index_t;
  ASYPPO_HD index_t identity() const { return 0; }
  ASYPPO_HD void add(index_t& acc, index_t b, index_t t) const {
    if (mask(b, t) != 0) acc = t + 1 > acc ? t + 1 : acc;
  }
  ASYPPO_HD index_t combine(index_t a, index_t b) const { return a > b ? a : b; }
  /// The valid tokens among the columns of element t (last_valid_counted).
  ASYPPO_HD index_t count(index_t b, index_t t) const { return mask(b, t) != 0 ? 1 : 0; }
};

/// The same reduction over each row's 8-byte words, for contiguous rows whose words are 8-byte aligned:
/// word w holds columns [8w, 8w + 8) (the last one may be partial), so a device reads the mask with one
/// load per eight columns instead of one per column. Byte j of a word is column 8w + j (little-endian).
struct last_valid_word_max : last_valid_max {  // mask: stride[1] == 1, &mask(b, 0) 8-byte aligned for every row
  /// Word w of row b, byte j column 8w + j; bytes past the row's last column 0 (a partial last word).
  ASYPPO_HD std::uint64_t word(index_t b, index_t w) const {
    const index_t t0 = 8 * w, cols = mask.extent[1];
    const std::uint8_t* p = &mask(b, 0) + t0;
    std::uint64_t x = 0;
    if (t0 + 8 <= cols) {
#if defined(__CUDA_ARCH__)
      x = *reinterpret_cast<const std::uint64_t*>(p);  // aligned: one load
#else
      memcpy(&x, p, 8);
#endif
    } else {
      for (index_t t = t0; t < cols; ++t) x |= static_cast<std::uint64_t>(p[t - t0]) << (8 * (t - t0));
    }
    return x;
  }
  ASYPPO_HD void add(index_t& acc, index_t b, index_t w) const {
    const std::uint64_t x = word(b, w);
    if (x == 0) return;
#if defined(__CUDA_ARCH__)
    const index_t end = 8 * w + (63 - __clzll(static_cast<long long>(x))) / 8 + 1;  // 1 + the last valid column
#else
    const index_t end = 8 * w + (63 - std::countl_zero(x)) / 8 + 1;
#endif
    acc = end > acc ? end : acc;
  }
  /// The nonzero bytes of word w: each byte's bits ORed into its lowest, then those counted.
  ASYPPO_HD index_t count(index_t b, index_t w) const {
    std::uint64_t x = word(b, w);
    x |= x >> 4;
    x |= x >> 2;
    x |= x >> 1;
    x &= 0x0101010101010101ull;  // bit 8j is now the OR of bits 8j..8j+7: byte j is nonzero
#if defined(__CUDA_ARCH__)
    return __popcll(static_cast<unsigned long long>(x));
#else
    return std::popcount(x);
#endif
  }
};
static_assert(std::endian::native == std::endian::little, "last_valid_word_max reads little-endian words");

/// A row's end and its valid tokens.
struct row_end_count {
  index_t end, valid;
};

/// Base (last_valid_max or last_valid_word_max) that also counts the valid tokens: one pass over the mask for
/// both, for the callers that need each row's count besides its end (the device paths of the masks and the
/// advantage step: make_row_span with counts). Exact (integers: max and sum).
template <class Base>
struct last_valid_counted {
  Base base;
  using value_type = row_end_count;
  ASYPPO_HD row_end_count identity() const { return {0, 0}; }
  ASYPPO_HD void add(row_end_count& acc, index_t b, index_t i) const {
    base.add(acc.end, b, i);
    acc.valid += base.count(b, i);
  }
  ASYPPO_HD row_end_count combine(const row_end_count& x, const row_end_count& y) const {
    return {x.end > y.end ? x.end : y.end, x.valid + y.valid};
  }
};

/// Whether the rows of mask can be read as aligned 8-byte words (last_valid_word_max).
inline bool word_rows(mask_view mask) {
  return mask.stride[1] == 1 && mask.stride[0] % 8 == 0 && reinterpret_cast<std::uintptr_t>(mask.data) % 8 == 0;
}

/// Column 0 of every row (cols > 0).
struct first_column {
  ASYPPO_HD void operator()(index_t, index_t& lo, index_t& hi) const { lo = 0, hi = 1; }
};

/// Row b's end into end[b]; row 0 also zeroes *ticket (when given): one launch for both.
struct store_row_end {
  index_t* end;
  unsigned* ticket;
  ASYPPO_HD void operator()(index_t b, index_t v) const {
    end[b] = v;
    if (b == 0 && ticket) *ticket = 0;
  }
};

/// Row b's end and valid tokens into end[b] and count[b]; row 0 also zeroes *ticket (when given).
struct store_row_end_count {
  store_row_end ends;
  index_t* count;
  ASYPPO_HD void operator()(index_t b, const row_end_count& v) const {
    ends(b, v.end);
    count[b] = v.valid;
  }
};

/// end[b] for every row, in backend memory (host-visible through copy_to_host); on a device backend also
/// zeroes *ticket when given (mask.extent[0] > 0). count (optional, backend memory): each row's valid tokens,
/// on a device from the same pass.
template <class Backend>
auto valid_row_ends(const Backend& be, mask_view mask, unsigned* ticket = nullptr, index_t* count = nullptr) {
  const index_t B = mask.extent[0], Tn = mask.extent[1];
  auto ends = be.template allocate<index_t>(B);
  // One block per row on a device: the ends, and the counts with them where asked.
  const auto per_row = [&](index_t n, auto reducer) {
    if (count)
      be.row_reduce(B, n, last_valid_counted<decltype(reducer)>{reducer},
                    store_row_end_count{{ends.data(), ticket}, count});
    else
      be.row_reduce(B, n, reducer, store_row_end{ends.data(), ticket});
  };
  if constexpr (host_memory_backend<Backend>) {  // the CPU: rows over the threads
    if (Tn > 0)
      be.for_each(B, Tn, last_valid_end{mask, ends.data()}, first_column{});
    else if (B > 0)
      be.fill(ends.data(), B, index_t(0));
    if (count && B > 0) be.row_reduce(B, Tn, count_valid{mask}, store_row<index_t>{count}, row_heads{ends.data()});
  } else if (B > 0) {  // a device: one block per row reads the whole row
    if (Tn > 0 && word_rows(mask))
      per_row((Tn + 7) / 8, last_valid_word_max{mask});
    else if (Tn > 0)
      per_row(Tn, last_valid_max{mask});
    else {  // (no column: no per-row reduce uses the ticket)
      be.fill(ends.data(), B, index_t(0));
      if (count) be.fill(count, B, index_t(0));
    }
  }
  return ends;
}

/// The ends of a batch's rows and the two column ranges they give: heads (what the algorithms
/// visit) and tails (the padding, written once); on a backend with a row schedule, also the rows
/// longest first (order), which heads() hands to the per-row kernels.
template <class Backend>
struct row_span {
  using ticket_buffer = decltype(std::declval<const Backend&>().template allocate<unsigned>(0));
  using index_buffer = decltype(valid_row_ends(std::declval<const Backend&>(), mask_view{}));
  ticket_buffer ticket;  // [1] on a device backend (zeroed with the ends), else empty
  index_buffer ends;
  index_t cols;
  index_buffer order;
  index_buffer counts;  // each row's valid tokens where make_row_span was asked for them, else empty
  const index_t* schedule = nullptr;  // order.data() when the backend wrote it, else none
  unsigned* counter = nullptr;        // ticket.data() when the ends pass zeroed it, else none
  row_heads heads() const {
    row_heads h;  // members set one by one: nvcc's host pass rejects the braced return here
    h.end = ends.data();
    h.order = schedule;
    h.ticket = counter;
    return h;
  }
  row_tails tails() const {
    row_tails r;
    r.end = ends.data();
    r.cols = cols;
    return r;
  }
};

/// Whether the backend offers the optional row schedule: longest_first(rows, cols, ends, order) writes
/// the rows by descending end (equal ends: the lower row first) and says whether it did; it declines
/// where its kernels would not follow it (a device backend, where one block per row takes the rows in a
/// launch's order on wide rows: cuda_backend).
template <class Backend>
concept has_row_schedule = requires(const Backend& be, const index_t* ends, index_t* order) {
  { be.longest_first(index_t{}, index_t{}, ends, order) } -> std::same_as<bool>;
};

/// The span of mask's rows; with_counts: also each row's valid tokens (counts), from the same pass on a device.
template <class Backend>
row_span<Backend> make_row_span(const Backend& be, mask_view mask, bool with_counts = false) {
  const bool ticket = !host_memory_backend<Backend> && mask.extent[0] > 0 && mask.extent[1] > 0;
  auto counter = be.template allocate<unsigned>(ticket ? 1 : 0);
  unsigned* zeroed = ticket ? counter.data() : nullptr;  // (a moved buffer keeps its memory)
  auto counts = be.template allocate<index_t>(with_counts ? mask.extent[0] : 0);
  auto ends = valid_row_ends(be, mask, zeroed, with_counts ? counts.data() : nullptr);
  row_span<Backend> s{std::move(counter), std::move(ends), mask.extent[1], be.template allocate<index_t>(0),
                      std::move(counts)};
  s.counter = zeroed;
  if constexpr (has_row_schedule<Backend>) {
    const index_t rows = mask.extent[0];
    s.order = be.template allocate<index_t>(rows);
    if (be.longest_first(rows, mask.extent[1], s.ends.data(), s.order.data())) s.schedule = s.order.data();
  }
  return s;
}

/// Zeroes (b, t) of several outputs (absent ones, data == nullptr, skipped), so that the padding of all
/// of them is one pass (one launch on a device). A list: the first output and the rest.
template <class... E>
struct zero_fill_all {
  ASYPPO_HD void operator()(index_t, index_t) const {}
  bool empty() const { return true; }  // no output present (detail::fill_is_empty)
#if !defined(__CUDACC__)
  void span(index_t, index_t, index_t) const {}
#endif
};
template <class E, class... R>
struct zero_fill_all<E, R...> {
  view<E, 2> out;
  zero_fill_all<R...> rest;
  ASYPPO_HD void operator()(index_t b, index_t t) const {
    if (out.data) out(b, t) = E(0);
    rest(b, t);
  }
  bool empty() const { return !out.data && rest.empty(); }
#if !defined(__CUDACC__)  // (visit_span is host-device: a CUDA translation unit's CPU backend goes per element)
  /// The CPU backend's span: each output's run in turn (streaming stores where it is contiguous).
  void span(index_t b, index_t t0, index_t t1) const {
    if (out.data && out.stride[1] == 1)
      stream_zero(&out(b, t0), static_cast<std::size_t>(t1 - t0) * sizeof(E));  // E(0) is all zero bytes
    else if (out.data)
      for (index_t t = t0; t < t1; ++t) out(b, t) = E(0);
    rest.span(b, t0, t1);
  }
#endif
};

template <class E, class... R>
zero_fill_all<E, R...> zero_fill_of(view<E, 2> out, view<R, 2>... rest) {
  zero_fill_all<E, R...> f;
  f.out = out;
  if constexpr (sizeof...(R) > 0) f.rest = zero_fill_of(rest...);
  return f;
}

/// Writes 0 in the columns of range (typically row_tails: the padding) of every present output, all of
/// them in one pass.
template <class Backend, class Range, class... E>
void write_zero(const Backend& be, index_t B, index_t Tn, Range range, view<E, 2>... outs) {
  const auto fill = zero_fill_of(outs...);
  if (!fill.empty()) be.for_each(B, Tn, fill, range);
}

}  // namespace asyppo::detail
