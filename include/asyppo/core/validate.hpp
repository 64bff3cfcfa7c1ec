// asyppo/core/validate.hpp: argument checks shared by every entry point.
//
// Each entry point runs all of its checks before it writes anything, so a thrown
// asyppo::error leaves the outputs untouched. Checks are cheap (extents, strides, scalars)
// except check_finite_*, which reads the inputs once through the backend.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/error.hpp"
#include "asyppo/half_types.hpp"
#include "asyppo/views.hpp"

namespace asyppo::detail {

/// Extents are non-negative, strides are non-negative, data is non-null when non-empty.
template <class T, int R>
void check_view(const char* where, const char* name, const view<T, R>& v) {
  for (int d = 0; d < R; ++d) {
    if (v.extent[d] < 0) fail(where, name, "extent ", d, " is negative (", v.extent[d], ")");
    if (v.stride[d] < 0) fail(where, name, "stride ", d, " is negative (", v.stride[d], ")");
  }
  if (v.size() > 0 && v.data == nullptr) fail(where, name, "null data for a non-empty view");
}

/// Where the data lives: a backend may offer check_memory(where, name, const void* p), which throws
/// asyppo::error unless it can use the memory at p (the CUDA backend: device or managed memory of its
/// device; CPU backends offer nothing and accept everything). Every entry point calls this on each
/// view it reads or writes, after the shape checks and before any backend work, with (name, view)
/// pairs. Empty (null) views are skipped.
template <class Backend>
void check_memory(const Backend&, const char*) {}
template <class Backend, class V, class... Rest>
void check_memory(const Backend& be, const char* where, const char* name, const V& v, const Rest&... rest) {
  if constexpr (requires { be.check_memory(where, name, static_cast<const void*>(nullptr)); }) {
    if (v.data != nullptr) be.check_memory(where, name, static_cast<const void*>(v.data));
  }
  check_memory(be, where, rest...);
}

/// An output view must not map two indices to one address: strides, sorted, must each
/// cover the span of the dimensions below them.
template <class T, int R>
void check_output_view(const char* where, const char* name, const view<T, R>& v) {
  check_view(where, name, v);
  if (v.size() <= 1) return;
  int order[R];
  for (int d = 0; d < R; ++d) order[d] = d;
  std::sort(order, order + R, [&](int a, int b) { return v.stride[a] < v.stride[b]; });
  index_t span = 1;
  for (int j = 0; j < R; ++j) {
    const int d = order[j];
    if (v.extent[d] <= 1) continue;
    if (v.stride[d] < span)
      fail(where, name, "overlapping layout: stride ", d, " is ", v.stride[d], ", need at least ", span);
    span = v.stride[d] * v.extent[d];
  }
}

template <class T, int R>
void check_extents(const char* where, const char* name, const view<T, R>& v, const index_t (&want)[R]) {
  for (int d = 0; d < R; ++d)
    if (v.extent[d] != want[d])
      fail(where, name, "extent ", d, " is ", v.extent[d], ", expected ", want[d]);
}

/// Optional outputs are "absent" when they have no data pointer; present ones are checked.
template <class T, int R>
bool present(const view<T, R>& v) {
  return v.data != nullptr;
}

template <class T, int R>
void check_optional_output(const char* where, const char* name, const view<T, R>& v,
                           const index_t (&want)[R]) {
  if (!present(v)) return;
  check_output_view(where, name, v);
  check_extents(where, name, v, want);
}

template <class T, int R>
void check_input(const char* where, const char* name, const view<T, R>& v, const index_t (&want)[R]) {
  check_view(where, name, v);
  check_extents(where, name, v, want);
}

/// Optional input: absent (null data) is fine, present ones are checked like inputs.
template <class T, int R>
void check_optional_input(const char* where, const char* name, const view<T, R>& v, const index_t (&want)[R]) {
  if (!present(v)) return;
  check_input(where, name, v, want);
}

/// Required [B,T] mask: present when non-empty.
inline void check_required_mask(const char* where, const char* name, mask_view mask, index_t B, index_t Tn) {
  check_input(where, name, mask, {B, Tn});
  if (!present(mask) && B * Tn > 0) fail(where, name, "is required");
}

template <class T, int R>
void check_output(const char* where, const char* name, const view<T, R>& v, const index_t (&want)[R]) {
  if (!present(v) && v.size() > 0) fail(where, name, "required output is missing");
  check_output_view(where, name, v);
  check_extents(where, name, v, want);
}

inline void check_finite_scalar(const char* where, const char* name, double x) {
  if (!std::isfinite(x)) fail(where, name, "must be finite, got ", x);
}
/// lo <= x <= hi (closed interval).
inline void check_range(const char* where, const char* name, double x, double lo, double hi) {
  if (!(x >= lo && x <= hi)) fail(where, name, "must lie in [", lo, ", ", hi, "], got ", x);
}
/// A fraction of tokens: 0 <= x < 1.
inline void check_fraction(const char* where, const char* name, double x) {
  if (!(x >= 0.0 && x < 1.0)) fail(where, name, "must lie in [0, 1), got ", x);
}

// ---- finiteness on valid tokens (one read through the backend) -------------------------

template <class T>
ASYPPO_INLINE bool is_finite_value(T x) {
  if constexpr (is_half_type_v<T>) {
    return is_finite_value(static_cast<float>(x));  // the widening keeps Inf and NaN
  } else {
    // x - x is 0 for finite x and NaN for inf/NaN; NaN != NaN. Works on host and device
    // without <cmath> and survives -ffast-math better than std::isfinite.
    const T z = x - x;
    return z == z;
  }
}

/// The exponent bits of T (all ones: Inf or NaN).
template <class T>
inline constexpr std::uint64_t exponent_bits = std::is_same_v<T, bfloat16>  ? 0x7f80u
                                               : std::is_same_v<T, float16> ? 0x7c00u
                                               : sizeof(T) == 4             ? 0x7f800000u
                                                                            : 0x7ff0000000000000ull;

/// Inf or NaN: the exponent bits are all ones (the same test as is_finite_value, in integer
/// operations a compiler vectorises). T: float, double, bfloat16 or float16.
template <class T>
ASYPPO_INLINE bool nonfinite_bits(T x) {
  using U = std::conditional_t<sizeof(T) == 2, std::uint16_t, std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>;
  static_assert(sizeof(T) == sizeof(U), "nonfinite_bits needs float, double, bfloat16 or float16");
  constexpr U exponent = static_cast<U>(exponent_bits<T>);
  U u;
  memcpy(&u, &x, sizeof(U));
  return (u & exponent) == exponent;
}

/// Whether element (b, t + i) of a 2-D view (or of slice k of a 3-D one) is &v(...)[i].
template <class V>
ASYPPO_HD bool unit_inner_stride(const V& v) {
  return v.data == nullptr || v.stride[V::rank - 1] == 1 || v.extent[V::rank - 1] <= 1;
}

/// Valid tokens (mask != 0) of a [B,T] mask; with row_reduce, per row.
struct count_valid {
  mask_view mask;
  using value_type = index_t;
  ASYPPO_HD index_t identity() const { return 0; }
  ASYPPO_HD void add(index_t& acc, index_t b, index_t t) const { acc += mask(b, t) ? 1 : 0; }
  ASYPPO_HD index_t combine(index_t a, index_t b) const { return a + b; }
};

/// row_reduce sink storing one value per row.
template <class V>
struct store_row {
  V* out;
  ASYPPO_HD void operator()(index_t b, const V& v) const { out[b] = v; }
};

struct token_tally {
  std::int64_t valid, nonfinite;
};

/// Counts valid tokens (mask != 0; a null mask means every token), and those where any of NC
/// [K,B,T] views or NV [B,T] views holds NaN or Inf. Null views are skipped. One pass checks every
/// input of an entry point; the counts of views are template arguments so the loops unroll.
template <class T, int NC, int NV>
struct count_nonfinite_tokens {
  critic_view<const T> critics[NC];
  token_view<const T> tokens[NV];
  mask_view mask;
  using value_type = token_tally;
  ASYPPO_HD value_type identity() const { return {0, 0}; }
  ASYPPO_HD void add(value_type& acc, index_t b, index_t t) const {
    if (mask.data && !mask(b, t)) return;
    bool ok = true;
    for (int j = 0; j < NC; ++j)
      if (critics[j].data)
        for (index_t k = 0; k < critics[j].extent[0]; ++k) ok = ok && is_finite_value(critics[j](k, b, t));
    for (int j = 0; j < NV; ++j)
      if (tokens[j].data) ok = ok && is_finite_value(tokens[j](b, t));
    acc.valid += 1;
    acc.nonfinite += ok ? 0 : 1;
  }
  /// add() over [t0, t1); contiguous rows in chunks: a flag per token ORed over the views, then
  /// counted under the mask (every loop vectorises).
  ASYPPO_HD void add_span(value_type& acc, index_t b, index_t t0, index_t t1) const {
    bool unit = unit_inner_stride(mask);
    for (int j = 0; j < NC; ++j) unit = unit && unit_inner_stride(critics[j]);
    for (int j = 0; j < NV; ++j) unit = unit && unit_inner_stride(tokens[j]);
    if (!unit) {
      for (index_t t = t0; t < t1; ++t) add(acc, b, t);
      return;
    }
    constexpr index_t chunk = 512;
    std::uint8_t bad[chunk];
    for (index_t c0 = t0; c0 < t1; c0 += chunk) {
      const index_t n = t1 - c0 < chunk ? t1 - c0 : chunk;
      for (index_t i = 0; i < n; ++i) bad[i] = 0;
      for (int j = 0; j < NC; ++j)
        if (critics[j].data)
          for (index_t k = 0; k < critics[j].extent[0]; ++k) {
            const T* p = &critics[j](k, b, c0);
            for (index_t i = 0; i < n; ++i) bad[i] |= static_cast<std::uint8_t>(nonfinite_bits(p[i]));
          }
      for (int j = 0; j < NV; ++j)
        if (tokens[j].data) {
          const T* p = &tokens[j](b, c0);
          for (index_t i = 0; i < n; ++i) bad[i] |= static_cast<std::uint8_t>(nonfinite_bits(p[i]));
        }
      std::int64_t valid = n, nonfinite = 0;
      if (mask.data) {
        const std::uint8_t* m = &mask(b, c0);
        valid = 0;
        for (index_t i = 0; i < n; ++i) {
          const std::uint8_t v = m[i] != 0;
          valid += v;
          nonfinite += v & bad[i];
        }
      } else {
        for (index_t i = 0; i < n; ++i) nonfinite += bad[i];
      }
      acc.valid += valid;
      acc.nonfinite += nonfinite;
    }
  }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const {
    return {a.valid + b.valid, a.nonfinite + b.nonfinite};
  }
};

/// Throws if any valid token holds NaN/Inf in one of the views; returns the number of valid tokens.
/// range: the columns of each row that hold every valid token (full_rows{Tn}, or row_heads).
template <class Backend, class T, int NC, int NV, class Range>
std::int64_t check_finite(const Backend& be, const char* where, const char* names, index_t B, index_t Tn,
                          count_nonfinite_tokens<T, NC, NV> views, Range range) {
  if (B * Tn == 0) return 0;
  const auto n = be.reduce(B, Tn, views, range);
  if (n.nonfinite > 0) fail(where, names, n.nonfinite, " valid token(s) hold NaN or Inf");
  return n.valid;
}

/// The common case: the K values of a critic tensor and/or one [B,T] tensor.
template <class Backend, class T>
std::int64_t check_finite_tokens(const Backend& be, const char* where, const char* name, index_t B, index_t Tn,
                                 critic_view<const T> values, token_view<const T> tokens, mask_view mask) {
  return check_finite(be, where, name, B, Tn, count_nonfinite_tokens<T, 1, 1>{{values}, {tokens}, mask}, full_rows{Tn});
}

/// Any number of [B,T] tensors in one pass (null ones skipped), over the columns of range.
template <class Backend, class T, class Range, class... More>
void check_finite_views(const Backend& be, const char* where, const char* names, mask_view mask, Range range,
                        token_view<const T> v0, More... more) {
  check_finite(be, where, names, mask.extent[0], mask.extent[1],
               count_nonfinite_tokens<T, 1, 1 + sizeof...(More)>{{critic_view<const T>{}}, {v0, token_view<const T>(more)...}, mask},
               range);
}

}  // namespace asyppo::detail
