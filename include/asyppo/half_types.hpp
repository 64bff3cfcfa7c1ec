// asyppo/half_types.hpp: the 16-bit input types frameworks hand over, bfloat16 and float16 (IEEE
// binary16, "half"), as storage types that convert exactly to float.
//
// Each is one std::uint16_t of bits, layout-compatible with __nv_bfloat16 / __half (CUDA), with
// torch.bfloat16 / torch.float16 tensors and with numpy.float16, so a caller's device or host buffer
// is viewed in place (reinterpret the pointer). Entry points that accept them read them as inputs only
// and compute in float or double (the widening is exact: every bfloat16 and float16 value is a float);
// outputs stay float or double. from_float rounds to nearest, ties to even (NaN stays NaN, overflow
// gives Inf), as torch's and CUDA's conversions do; the library itself never narrows.
// Usable on the host and on a CUDA device (bit operations only, no intrinsics).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "asyppo/config.hpp"

namespace asyppo {

namespace detail {

ASYPPO_HD inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
ASYPPO_HD inline float bits_float(std::uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace detail

/// bfloat16: the top 16 bits of a float (8 exponent bits, 7 mantissa bits).
struct bfloat16 {
  std::uint16_t bits;

  /// Exact widening.
  ASYPPO_HD operator float() const { return detail::bits_float(static_cast<std::uint32_t>(bits) << 16); }

  /// Nearest bfloat16 (ties to even); NaN stays a (quiet) NaN.
  ASYPPO_HD static bfloat16 from_float(float f) {
    const std::uint32_t u = detail::float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
    const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
    return {static_cast<std::uint16_t>(rounded >> 16)};
  }
};

/// float16 (IEEE binary16: 5 exponent bits, 10 mantissa bits, subnormals).
struct float16 {
  std::uint16_t bits;

  /// Exact widening (subnormals, Inf and NaN included; a NaN keeps its payload). Branch-free (selects
  /// only), so that a loop of conversions vectorises: with the exponent and mantissa moved to float's
  /// positions (u), a normal number rebiases its exponent (+112), Inf and NaN take float's all-ones
  /// exponent (+224), and a subnormal m * 2^-24 is (2^-14 + m * 2^-24) - 2^-14, both exact in float.
  ASYPPO_HD operator float() const {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    const std::uint32_t u = static_cast<std::uint32_t>(bits & 0x7fffu) << 13;
    const std::uint32_t exponent = u & 0x0f800000u;  // binary16's exponent field, at float's position
    const std::uint32_t normal = u + (112u << 23), special = u + (224u << 23);
    const std::uint32_t subnormal = detail::float_bits(detail::bits_float(u + (113u << 23)) - 6.103515625e-05f);
    // Selects by all-ones / all-zero masks (a ternary here may stay a branch and stop vectorisation).
    const std::uint32_t is_special = 0u - static_cast<std::uint32_t>(exponent == 0x0f800000u);
    const std::uint32_t is_subnormal = 0u - static_cast<std::uint32_t>(exponent == 0);
    std::uint32_t r = (normal & ~is_special) | (special & is_special);
    r = (r & ~is_subnormal) | (subnormal & is_subnormal);
    return detail::bits_float(r | sign);
  }

  /// Nearest float16 (ties to even); overflow gives Inf, NaN stays a (quiet) NaN.
  ASYPPO_HD static float16 from_float(float f) {
    const std::uint32_t u = detail::float_bits(f);
    const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return {static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu))};
    if (a >= 0x477ff000u) return {static_cast<std::uint16_t>(sign | 0x7c00u)};  // >= 65520: Inf
    if (a < 0x38800000u) {  // below 2^-14: a subnormal (or zero) result, in units of 2^-24
      const float scaled = detail::bits_float(a) * 16777216.0f;  // exact: a power-of-two scaling
      // Round to an integer, ties to even (scaled < 2^10, so the float addition trick is exact).
      const float r = (scaled + 8388608.0f) - 8388608.0f;
      return {static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(r))};
    }
    // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to even.
    const std::uint32_t rebased = a - (112u << 23);
    const std::uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
    return {static_cast<std::uint16_t>(sign | (rounded >> 13))};
  }
};

static_assert(sizeof(bfloat16) == 2 && sizeof(float16) == 2, "16-bit storage types");

/// Whether T is one of the 16-bit input types.
template <class T>
inline constexpr bool is_half_type_v = std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>;

/// The element type an entry point computes in and writes when its inputs are T: float for the
/// 16-bit input types (their outputs and gradients are float32, as under autocast's upcast), T
/// itself for float and double.
template <class T>
using compute_type_t = std::conditional_t<is_half_type_v<T>, float, T>;

}  // namespace asyppo
