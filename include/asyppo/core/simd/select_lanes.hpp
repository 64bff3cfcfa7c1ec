// asyppo/core/simd/select_lanes.hpp: the first pass of the radix selection (core/select.hpp) over a
// contiguous row of float keys, eight elements per AVX2 vector.
//
// The keys are ordered_key(s[t]) of the valid elements (m[t] != 0). In the first pass every key's
// leading digit is its bin (key >> shift, nothing above it): count_digits adds one to
// counts[base + digit] per valid element, pick_digits hands (base + digit, key) of the valid elements
// whose bin is marked in a bitmap to push, in element order. Eight keys are computed at once; the
// counting and picking stay per element (integers: the results are exactly the scalar code's). Both
// process whole groups of eight from t0 and return where they stopped; the caller finishes the row.
#pragma once

#include <cstdint>
#include <cstring>

#include "asyppo/core/simd/lanes.hpp"
#include "asyppo/views.hpp"

namespace asyppo::detail {

#if defined(ASYPPO_SIMD_AVX2)
ASYPPO_BEGIN_AVX2_CODE
namespace select_lanes {

/// ordered_key (core/select.hpp) of eight floats: sign ? ~u : u | 0x8000'0000, with -0 taken as +0.
inline __m256i ordered_keys(__m256 x) {
  x = _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ), x);
  const __m256i u = _mm256_castps_si256(x);
  return _mm256_xor_si256(u, _mm256_or_si256(_mm256_srai_epi32(u, 31), _mm256_set1_epi32(INT32_MIN)));
}

template <class Count>
index_t count_digits(const float* s, const std::uint8_t* m, index_t t0, index_t t1, int shift, index_t base,
                     Count* counts) {
  alignas(32) std::uint32_t d[8];
  const __m128i sh = _mm_cvtsi32_si128(shift);
  index_t t = t0;
  for (; t + 8 <= t1; t += 8) {
    std::uint64_t valid;
    memcpy(&valid, m + t, 8);
    if (valid == 0) continue;
    _mm256_store_si256(reinterpret_cast<__m256i*>(d), _mm256_srl_epi32(ordered_keys(_mm256_loadu_ps(s + t)), sh));
    for (int j = 0; j < 8; ++j)
      if ((valid >> (8 * j)) & 0xff) ++counts[base + static_cast<index_t>(d[j])];
  }
  return t;
}

template <class Push>
index_t pick_digits(const float* s, const std::uint8_t* m, index_t t0, index_t t1, int shift, index_t base,
                    const std::uint64_t* marked, Push&& push) {
  alignas(32) std::uint32_t key[8];
  const __m128i sh = _mm_cvtsi32_si128(shift);
  const __m256i vbase = _mm256_set1_epi32(static_cast<int>(base)), low5 = _mm256_set1_epi32(31);
  const int* words = reinterpret_cast<const int*>(marked);  // bit i: bit (i & 31) of 32-bit word i >> 5
  index_t t = t0;
  for (; t + 8 <= t1; t += 8) {
    std::uint64_t valid;
    memcpy(&valid, m + t, 8);
    if (valid == 0) continue;
    const __m256i k = ordered_keys(_mm256_loadu_ps(s + t));
    const __m256i i = _mm256_add_epi32(vbase, _mm256_srl_epi32(k, sh));
    const __m256i w = _mm256_i32gather_epi32(words, _mm256_srli_epi32(i, 5), 4);
    const __m256i bit = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_and_si256(i, low5)), _mm256_set1_epi32(1));
    const __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(valid)));
    const int hit = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_and_si256(bit, v), _mm256_setzero_si256())));
    if (hit == 0) continue;  // the common case: no element of the eight is under a slot
    _mm256_store_si256(reinterpret_cast<__m256i*>(key), k);
    for (int j = 0; j < 8; ++j)
      if ((hit >> j) & 1) push(base + static_cast<index_t>(key[j] >> shift), std::uint64_t(key[j]));
  }
  return t;
}

}  // namespace select_lanes
ASYPPO_END_AVX2_CODE
#else
namespace select_lanes {  // no AVX2: nothing processed (float_first_pass is false anyway)
template <class Count>
index_t count_digits(const float*, const std::uint8_t*, index_t t0, index_t, int, index_t, Count*) {
  return t0;
}
template <class Push>
index_t pick_digits(const float*, const std::uint8_t*, index_t t0, index_t, int, index_t, const std::uint64_t*, Push&&) {
  return t0;
}
}  // namespace select_lanes
#endif

/// Whether the first radix pass over row b (top_bits = shift + digit bits = 32: nothing above the
/// digit) runs on these lanes: the key function offers float rows (float_row: segment, values, mask)
/// and the CPU has AVX2.
template <class KeyOf>
bool float_first_pass([[maybe_unused]] const KeyOf& key_of, [[maybe_unused]] int top_bits, [[maybe_unused]] index_t b,
                      [[maybe_unused]] index_t& seg, [[maybe_unused]] const float*& s,
                      [[maybe_unused]] const std::uint8_t*& m) {
#if defined(ASYPPO_SIMD_AVX2)
  if constexpr (requires { key_of.float_row(b, seg, s, m); })
    return top_bits == 32 && simd_width() >= 4 && key_of.float_row(b, seg, s, m);
#endif
  return false;
}

}  // namespace asyppo::detail
