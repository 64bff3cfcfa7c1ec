// asyppo/core/simd/lanes.hpp: SIMD lanes of doubles for the contiguous fast paths of the per-token
// code (the losses, the advantage step's summary moments), and the choice of width at run time.
//
// sse2_lanes (2 doubles, every x86-64 host) and avx2_lanes (4 doubles, compiled for AVX2 with a target
// pragma and used only where the CPU reports AVX2) give the same small vocabulary: loads that widen
// float exactly, stores that round as static_cast<float>, lane masks (all ones = true) from 0/1 bytes,
// IEEE add/sub/mul, min/max that are exactly the scalar selects `a < b ? a : b` / `a > b ? a : b`,
// compares, bit selects, and sum_into, which adds the lanes into a double one after another in token
// order. Every operation is the lane-wise image of one scalar operation, so a kernel written with
// them (core/simd/token_kernels.inc) gives the bits of the scalar per-token code on every width. No
// FMA is enabled: a fused multiply-add would round differently from the scalar code. The same holds
// for the scalar code itself: compiled for a target with FMA (-march=haswell or later) under GCC's
// default -ffp-contract=fast, the compiler may fuse its multiply-adds, and the scalar tails and
// per-element paths can then differ from the lanes in the last bit; add -ffp-contract=off there to
// keep the guarantee (the project's own builds target the x86-64 baseline, which has no FMA).
//
// simd_width() is the widest kind the CPU supports (4, 2, or 1 = scalar), capped by
// set_simd_limit(), which tests and benchmarks use to run every width in one process.
// ASYPPO_NO_SIMD turns the SIMD paths off at compile time; CUDA translation units use the scalar path.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>

#include "asyppo/core/exp.hpp"

#if !defined(ASYPPO_NO_SIMD) && !defined(__CUDACC__) && defined(__SSE2__) && defined(__x86_64__)
#define ASYPPO_SIMD_SSE2 1
#include <emmintrin.h>
#if defined(__GNUC__)  // GCC and Clang: AVX2 code behind a target pragma, chosen at run time
#define ASYPPO_SIMD_AVX2 1
#include <immintrin.h>
// Functions defined between these two are compiled for AVX2 (here and in token_kernels.hpp).
#if defined(__clang__)
#define ASYPPO_BEGIN_AVX2_CODE \
  _Pragma("clang attribute push(__attribute__((target(\"avx2\"))), apply_to = function)")
#define ASYPPO_END_AVX2_CODE _Pragma("clang attribute pop")
#else
#define ASYPPO_BEGIN_AVX2_CODE _Pragma("GCC push_options") _Pragma("GCC target(\"avx2\")")
#define ASYPPO_END_AVX2_CODE _Pragma("GCC pop_options")
#endif
#endif
#endif

namespace asyppo::detail {

/// The SIMD width the CPU supports: 4 (AVX2), 2 (SSE2) or 1 (none compiled in).
inline int detected_simd_width() {
#if defined(ASYPPO_SIMD_AVX2)
  static const int w = __builtin_cpu_supports("avx2") ? 4 : 2;
  return w;
#elif defined(ASYPPO_SIMD_SSE2)
  return 2;
#else
  return 1;
#endif
}

inline std::atomic<int>& simd_limit() {
  static std::atomic<int> limit{4};
  return limit;
}

/// Caps the width of the SIMD paths (1 = scalar). Results are the same bits for every width.
inline void set_simd_limit(int width) { simd_limit().store(width, std::memory_order_relaxed); }

inline int simd_width() {
  const int d = detected_simd_width(), l = simd_limit().load(std::memory_order_relaxed);
  return d < l ? d : l;
}

#if defined(ASYPPO_SIMD_SSE2)
struct sse2_lanes {
  using vd = __m128d;
  static constexpr int width = 2;
  static vd set1(double x) { return _mm_set1_pd(x); }
  static vd zero() { return _mm_setzero_pd(); }
  static vd ones() { return _mm_castsi128_pd(_mm_set1_epi64x(-1)); }
  static vd load(const float* p) {
    return _mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static vd load(const double* p) { return _mm_loadu_pd(p); }
  static void store(float* p, vd x) { _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_castps_si128(_mm_cvtpd_ps(x))); }
  static void store(double* p, vd x) { _mm_storeu_pd(p, x); }
  static vd mask(const std::uint8_t* m) {
    return _mm_castsi128_pd(_mm_set_epi64x(-static_cast<std::int64_t>(m[1] != 0), -static_cast<std::int64_t>(m[0] != 0)));
  }
  static vd add(vd a, vd b) { return _mm_add_pd(a, b); }
  static vd sub(vd a, vd b) { return _mm_sub_pd(a, b); }
  static vd mul(vd a, vd b) { return _mm_mul_pd(a, b); }
  static vd min(vd a, vd b) { return _mm_min_pd(a, b); }  // a < b ? a : b
  static vd max(vd a, vd b) { return _mm_max_pd(a, b); }  // a > b ? a : b
  static vd gt(vd a, vd b) { return _mm_cmpgt_pd(a, b); }
  static vd lt(vd a, vd b) { return _mm_cmplt_pd(a, b); }
  static vd ge(vd a, vd b) { return _mm_cmpge_pd(a, b); }
  static vd le(vd a, vd b) { return _mm_cmple_pd(a, b); }
  static vd neq(vd a, vd b) { return _mm_cmpneq_pd(a, b); }
  static vd and_(vd a, vd b) { return _mm_and_pd(a, b); }
  static vd or_(vd a, vd b) { return _mm_or_pd(a, b); }
  static vd xor_(vd a, vd b) { return _mm_xor_pd(a, b); }
  static vd and_not(vd a, vd b) { return _mm_andnot_pd(b, a); }  // a & ~b
  static bool all(vd m) { return _mm_movemask_pd(m) == 3; }
  static void sum_into(double& s, vd x) {
    s += _mm_cvtsd_f64(x);
    s += _mm_cvtsd_f64(_mm_unpackhi_pd(x, x));
  }
  struct count {  // each true lane adds 1
    __m128i c = _mm_setzero_si128();
    void add(vd m) { c = _mm_sub_epi64(c, _mm_castpd_si128(m)); }
    std::int64_t total() const { return _mm_cvtsi128_si64(c) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(c, c)); }
  };
  /// exp_scale per lane.
  static vd exp_scale(vd kd_shifted, vd p) {
    const __m128i k = _mm_sub_epi64(_mm_castpd_si128(kd_shifted), _mm_set1_epi64x(0x4338000000000000));
    const __m128i i = _mm_and_si128(k, _mm_set1_epi64x(63));
    const vd t = _mm_set_pd(exp2_table64[_mm_cvtsi128_si64(_mm_unpackhi_epi64(i, i))], exp2_table64[_mm_cvtsi128_si64(i)]);
    const vd y = _mm_add_pd(t, _mm_mul_pd(t, p));
    return _mm_castsi128_pd(_mm_add_epi64(_mm_castpd_si128(y), _mm_slli_epi64(_mm_sub_epi64(k, i), 46)));
  }
};
#endif

#if defined(ASYPPO_SIMD_AVX2)
ASYPPO_BEGIN_AVX2_CODE
struct avx2_lanes {
  using vd = __m256d;
  static constexpr int width = 4;
  static vd set1(double x) { return _mm256_set1_pd(x); }
  static vd zero() { return _mm256_setzero_pd(); }
  static vd ones() { return _mm256_castsi256_pd(_mm256_set1_epi64x(-1)); }
  static vd load(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
  static vd load(const double* p) { return _mm256_loadu_pd(p); }
  /// Lanes {x0, x1, x2, x3} (four-lane kinds only).
  static vd set4(double x3, double x2, double x1, double x0) { return _mm256_set_pd(x3, x2, x1, x0); }
  static void store(float* p, vd x) { _mm_storeu_ps(p, _mm256_cvtpd_ps(x)); }
  static void store(double* p, vd x) { _mm256_storeu_pd(p, x); }
  static vd mask(const std::uint8_t* m) {
    std::int32_t four;
    memcpy(&four, m, sizeof four);
    const __m256i b = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(four));
    return _mm256_castsi256_pd(_mm256_xor_si256(_mm256_cmpeq_epi64(b, _mm256_setzero_si256()), _mm256_set1_epi64x(-1)));
  }
  static vd add(vd a, vd b) { return _mm256_add_pd(a, b); }
  static vd sub(vd a, vd b) { return _mm256_sub_pd(a, b); }
  static vd mul(vd a, vd b) { return _mm256_mul_pd(a, b); }
  static vd min(vd a, vd b) { return _mm256_min_pd(a, b); }
  static vd max(vd a, vd b) { return _mm256_max_pd(a, b); }
  static vd gt(vd a, vd b) { return _mm256_cmp_pd(a, b, _CMP_GT_OS); }
  static vd lt(vd a, vd b) { return _mm256_cmp_pd(a, b, _CMP_LT_OS); }
  static vd ge(vd a, vd b) { return _mm256_cmp_pd(a, b, _CMP_GE_OS); }
  static vd le(vd a, vd b) { return _mm256_cmp_pd(a, b, _CMP_LE_OS); }
  static vd neq(vd a, vd b) { return _mm256_cmp_pd(a, b, _CMP_NEQ_UQ); }
  static vd and_(vd a, vd b) { return _mm256_and_pd(a, b); }
  static vd or_(vd a, vd b) { return _mm256_or_pd(a, b); }
  static vd xor_(vd a, vd b) { return _mm256_xor_pd(a, b); }
  static vd and_not(vd a, vd b) { return _mm256_andnot_pd(b, a); }
  static bool all(vd m) { return _mm256_movemask_pd(m) == 15; }
  static void sum_into(double& s, vd x) {
    const __m128d lo = _mm256_castpd256_pd128(x), hi = _mm256_extractf128_pd(x, 1);
    s += _mm_cvtsd_f64(lo);
    s += _mm_cvtsd_f64(_mm_unpackhi_pd(lo, lo));
    s += _mm_cvtsd_f64(hi);
    s += _mm_cvtsd_f64(_mm_unpackhi_pd(hi, hi));
  }
  struct count {
    __m256i c;
    count() : c(_mm256_setzero_si256()) {}  // user-provided: compiled under the AVX2 target
    void add(vd m) { c = _mm256_sub_epi64(c, _mm256_castpd_si256(m)); }
    std::int64_t total() const {
      alignas(32) std::int64_t v[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(v), c);
      return v[0] + v[1] + v[2] + v[3];
    }
  };
  static vd exp_scale(vd kd_shifted, vd p) {
    const __m256i k = _mm256_sub_epi64(_mm256_castpd_si256(kd_shifted), _mm256_set1_epi64x(0x4338000000000000));
    const __m256i i = _mm256_and_si256(k, _mm256_set1_epi64x(63));
    const vd t = _mm256_i64gather_pd(exp2_table64, i, 8);
    const vd y = _mm256_add_pd(t, _mm256_mul_pd(t, p));
    return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(y), _mm256_slli_epi64(_mm256_sub_epi64(k, i), 46)));
  }
};
ASYPPO_END_AVX2_CODE
#endif

}  // namespace asyppo::detail
