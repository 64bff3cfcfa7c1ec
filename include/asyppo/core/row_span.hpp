// asyppo/core/row_span.hpp: where the valid tokens of each row end (right padding).
//
//   end[b] = 1 + the largest t with mask[b,t] != 0, or 0 when row b has no valid token.
//
// Every valid token of row b lies in [0, end[b]). LLM batches are right-padded (most of a
// [B,T] batch is often padding), so the token algorithms visit only those columns through the
// ragged overloads of the 2-D patterns (row_heads{end}, backend/patterns.hpp) and write the
// padding [end[b], T) of their outputs in plain store loops (row_tails{end, T}, write_zero).
// Cost: on the CPU each row's mask is read backwards from T until its last valid token, a word at a
// time when the row is contiguous, so only the padding is read. On a device that walk would be one
// thread per row (latency-bound: 0.8 ms for 1024 x 8192 on an H100), so there a row reduce reads the
// whole mask, one block per row (14 us there). Exact (integers).
#pragma once

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
};

/// Column 0 of every row (cols > 0).
struct first_column {
  ASYPPO_HD void operator()(index_t, index_t& lo, index_t& hi) const { lo = 0, hi = 1; }
};

/// end[b] for every row, in backend memory (host-visible through copy_to_host).
template <class Backend>
auto valid_row_ends(const Backend& be, mask_view mask) {
  auto ends = be.template allocate<index_t>(mask.extent[0]);
  if constexpr (host_memory_backend<Backend>) {  // the CPU: rows over the threads
    if (mask.extent[1] > 0)
      be.for_each(mask.extent[0], mask.extent[1], last_valid_end{mask, ends.data()}, first_column{});
    else if (mask.extent[0] > 0)
      be.fill(ends.data(), mask.extent[0], index_t(0));
  } else if (mask.extent[0] > 0) {  // a device: one block per row reads the whole row
    if (mask.extent[1] > 0)
      be.row_reduce(mask.extent[0], mask.extent[1], last_valid_max{mask}, store_row<index_t>{ends.data()});
    else
      be.fill(ends.data(), mask.extent[0], index_t(0));
  }
  return ends;
}

/// The ends of a batch's rows and the two column ranges they give: heads (what the algorithms
/// visit) and tails (the padding, written once).
template <class Backend>
struct row_span {
  decltype(valid_row_ends(std::declval<const Backend&>(), mask_view{})) ends;
  index_t cols;
  row_heads heads() const {
    row_heads h;  // members set one by one: nvcc's host pass rejects the braced return here
    h.end = ends.data();
    return h;
  }
  row_tails tails() const {
    row_tails r;
    r.end = ends.data();
    r.cols = cols;
    return r;
  }
};

template <class Backend>
row_span<Backend> make_row_span(const Backend& be, mask_view mask) {
  return {valid_row_ends(be, mask), mask.extent[1]};
}

template <class E>
struct zero_fill {
  view<E, 2> out;
  ASYPPO_HD void operator()(index_t b, index_t t) const { out(b, t) = E(0); }
#if defined(ASYPPO_SIMD_SSE2)
  /// The CPU backend's span: a contiguous run gets streaming stores (core/simd/stream_store.hpp).
  void span(index_t b, index_t t0, index_t t1) const {
    if (out.stride[1] != 1) {
      for (index_t t = t0; t < t1; ++t) out(b, t) = E(0);
      return;
    }
    stream_zero(&out(b, t0), static_cast<std::size_t>(t1 - t0) * sizeof(E));  // E(0) is all zero bytes
  }
#endif
};

/// Writes 0 in the columns of range (typically row_tails: the padding) of every present output,
/// one loop per output (a plain store loop, which the compiler vectorises).
template <class Backend, class Range, class... E>
void write_zero(const Backend& be, index_t B, index_t Tn, Range range, view<E, 2>... outs) {
  (..., (outs.data ? be.for_each(B, Tn, zero_fill<E>{outs}, range) : void()));
}

}  // namespace asyppo::detail
