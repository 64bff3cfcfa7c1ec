// asyppo/core/simd/gae_lanes.hpp: the GAE scan (docs/algorithm.md, Eqs. E5-E7) of four rows at once,
// one row per AVX2 lane, the CPU backend's fast path for contiguous rows and K = 1 or 2.
//
// Why lanes across rows: the scan is a recurrence along each row (a_t needs a_{t+1}), so one row
// cannot use SIMD along t; four rows can, one per lane. Each lane runs exactly the scalar code's
// operations for its row (gae_element, gae_compose::apply, gae_sink and its hook; no FMA), so every
// output is bit-identical to the one-row-at-a-time scan, whatever the grouping, width or thread count.
//
// Method (gae_scan_rows_simd): the rows of the backend's block are ordered by the length of their
// column range (longest first, ties by row index), and taken four at a time. The four rows go backwards
// together, four columns per step: each row's four columns are loaded and transposed so that vector k
// holds "k-th column of the block" of every row (rows end at different columns; each lane has its own
// position). C, the shortest range of the four rounded down to a multiple of 4, is done in lanes; each
// row then finishes its remaining columns with the scalar scan, starting from its lane's state.
// Leftover rows (fewer than four) use the scalar scan. The hook of the sink (no_gae_hook, or the
// advantage step's mask_hook) runs on the lanes through its adapter gae_hook_lanes<Hook>; a hook without
// one makes the whole block scalar, and rows its adapter declines (on_lanes false: the mask hook's rows
// whose ties need ranks) take the scalar scan too.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "asyppo/core/simd/lanes.hpp"
#include "asyppo/core/validate.hpp"
#include "asyppo/views.hpp"

namespace asyppo::detail {

/// Lane adapter of a GAE sink hook: primary template = none (the scan stays scalar).
template <class Hook>
struct gae_hook_lanes {
  static constexpr bool available = false;
};

struct no_gae_hook;  // core/gae.hpp
template <class T>
struct mask_hook;  // core/advantage_step.hpp

#if defined(ASYPPO_SIMD_AVX2)
ASYPPO_BEGIN_AVX2_CODE
#define ASYPPO_LANES_INLINE inline __attribute__((always_inline))
namespace gae_lanes {

using vd = __m256d;

/// Four row pointers, each moved to its row's column of this step: at(base, col).p[r] = base[r] + col[r].
template <class P>
struct ptr4 {
  P p[4];
};
template <class P>
ASYPPO_LANES_INLINE ptr4<P> at(P const base[4], const index_t col[4]) {
  return {{base[0] + col[0], base[1] + col[1], base[2] + col[2], base[3] + col[3]}};
}

/// Row r's four values p[r][0..3] -> out[k] = {p[0][k], p[1][k], p[2][k], p[3][k]}, in double.
ASYPPO_LANES_INLINE void load4x4(const float* const p[4], vd out[4]) {
  __m128 r0 = _mm_loadu_ps(p[0]), r1 = _mm_loadu_ps(p[1]), r2 = _mm_loadu_ps(p[2]), r3 = _mm_loadu_ps(p[3]);
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  out[0] = _mm256_cvtps_pd(r0), out[1] = _mm256_cvtps_pd(r1), out[2] = _mm256_cvtps_pd(r2), out[3] = _mm256_cvtps_pd(r3);
}
ASYPPO_LANES_INLINE void transpose4(vd& a, vd& b, vd& c, vd& d) {
  const vd t0 = _mm256_unpacklo_pd(a, b), t1 = _mm256_unpackhi_pd(a, b);
  const vd t2 = _mm256_unpacklo_pd(c, d), t3 = _mm256_unpackhi_pd(c, d);
  a = _mm256_permute2f128_pd(t0, t2, 0x20), b = _mm256_permute2f128_pd(t1, t3, 0x20);
  c = _mm256_permute2f128_pd(t0, t2, 0x31), d = _mm256_permute2f128_pd(t1, t3, 0x31);
}
ASYPPO_LANES_INLINE void load4x4(const double* const p[4], vd out[4]) {
  out[0] = _mm256_loadu_pd(p[0]), out[1] = _mm256_loadu_pd(p[1]), out[2] = _mm256_loadu_pd(p[2]), out[3] = _mm256_loadu_pd(p[3]);
  transpose4(out[0], out[1], out[2], out[3]);
}
/// The inverse: row r's four values p[r][k] = in[k][r], rounded as static_cast<T>.
ASYPPO_LANES_INLINE void store4x4(float* const p[4], const vd in[4]) {
  __m128 r0 = _mm256_cvtpd_ps(in[0]), r1 = _mm256_cvtpd_ps(in[1]), r2 = _mm256_cvtpd_ps(in[2]), r3 = _mm256_cvtpd_ps(in[3]);
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_ps(p[0], r0), _mm_storeu_ps(p[1], r1), _mm_storeu_ps(p[2], r2), _mm_storeu_ps(p[3], r3);
}
ASYPPO_LANES_INLINE void store4x4(double* const p[4], const vd in[4]) {
  vd a = in[0], b = in[1], c = in[2], d = in[3];
  transpose4(a, b, c, d);
  _mm256_storeu_pd(p[0], a), _mm256_storeu_pd(p[1], b), _mm256_storeu_pd(p[2], c), _mm256_storeu_pd(p[3], d);
}
/// Sixteen bytes as a 4 x 4 matrix, transposed: byte 4 i + j goes to 4 j + i.
ASYPPO_LANES_INLINE __m128i transpose_bytes4x4(__m128i x) {
  return _mm_shuffle_epi8(x, _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
}
/// Row r's four bytes -> lane masks out[k] (all ones where p[r][k] != 0).
ASYPPO_LANES_INLINE void mask4x4(const std::uint8_t* const p[4], vd out[4]) {
  std::int32_t w[4];
  for (int r = 0; r < 4; ++r) memcpy(&w[r], p[r], 4);
  const __m128i bytes = transpose_bytes4x4(_mm_set_epi32(w[3], w[2], w[1], w[0]));
  const __m128i nz = _mm_xor_si128(_mm_cmpeq_epi8(bytes, _mm_setzero_si128()), _mm_set1_epi32(-1));  // 0xff: != 0
  out[0] = _mm256_castsi256_pd(_mm256_cvtepi8_epi64(nz));
  out[1] = _mm256_castsi256_pd(_mm256_cvtepi8_epi64(_mm_srli_si128(nz, 4)));
  out[2] = _mm256_castsi256_pd(_mm256_cvtepi8_epi64(_mm_srli_si128(nz, 8)));
  out[3] = _mm256_castsi256_pd(_mm256_cvtepi8_epi64(_mm_srli_si128(nz, 12)));
}
/// A lane mask of four 64-bit lanes as four 32-bit lanes.
ASYPPO_LANES_INLINE __m128i narrow_mask(vd m) {
  return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(m), _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
}
/// The inverse of mask4x4 for 0/1 bytes, from 32-bit lane masks: p[r][k] = (lane r of in[k] != 0).
ASYPPO_LANES_INLINE void store_mask4x4(std::uint8_t* const p[4], const __m128i in[4]) {
  const __m128i bytes = _mm_packs_epi16(_mm_packs_epi32(in[0], in[1]), _mm_packs_epi32(in[2], in[3]));  // [k][r]
  const __m128i rows = _mm_and_si128(transpose_bytes4x4(bytes), _mm_set1_epi8(1));  // [r][k]
  const std::int32_t w0 = _mm_cvtsi128_si32(rows), w1 = _mm_extract_epi32(rows, 1), w2 = _mm_extract_epi32(rows, 2),
                     w3 = _mm_extract_epi32(rows, 3);
  memcpy(p[0], &w0, 4), memcpy(p[1], &w1, 4), memcpy(p[2], &w2, 4), memcpy(p[3], &w3, 4);
}
ASYPPO_LANES_INLINE vd select(vd m, vd a, vd b) { return _mm256_blendv_pd(b, a, m); }
ASYPPO_LANES_INLINE vd lanes_of(const double x[4]) { return _mm256_loadu_pd(x); }

/// ordered_key (core/select.hpp) of four values with the top bit flipped, so that signed compares
/// order them as the unsigned keys: u (sign clear) or u ^ 0x7f..f (sign set), -0 taken as +0.
ASYPPO_LANES_INLINE __m128i flipped_keys(__m128 x) {
  x = _mm_andnot_ps(_mm_cmpeq_ps(x, _mm_setzero_ps()), x);
  const __m128i u = _mm_castps_si128(x);
  return _mm_xor_si128(u, _mm_and_si128(_mm_srai_epi32(u, 31), _mm_set1_epi32(0x7fffffff)));
}
ASYPPO_LANES_INLINE __m256i flipped_keys(vd x) {
  x = _mm256_andnot_pd(_mm256_cmp_pd(x, _mm256_setzero_pd(), _CMP_EQ_OQ), x);
  const __m256i u = _mm256_castpd_si256(x);
  return _mm256_xor_si256(u, _mm256_and_si256(_mm256_cmpgt_epi64(_mm256_setzero_si256(), u), _mm256_set1_epi64x(INT64_MAX)));
}
template <bool Narrow>
struct key_lanes {  // four keys: 32-bit (float) or 64-bit (double) lanes
  using type = __m128i;
};
template <>
struct key_lanes<false> {
  using type = __m256i;
};
ASYPPO_LANES_INLINE __m128i lanes_i(const std::int32_t* x) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(x)); }
ASYPPO_LANES_INLINE __m256i lanes_i(const std::int64_t* x) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)); }
ASYPPO_LANES_INLINE __m128i and_(__m128i a, __m128i b) { return _mm_and_si128(a, b); }
ASYPPO_LANES_INLINE __m256i and_(__m256i a, __m256i b) { return _mm256_and_si256(a, b); }
ASYPPO_LANES_INLINE __m128i or_(__m128i a, __m128i b) { return _mm_or_si128(a, b); }
ASYPPO_LANES_INLINE __m256i or_(__m256i a, __m256i b) { return _mm256_or_si256(a, b); }
ASYPPO_LANES_INLINE __m128i and_not(__m128i a, __m128i b) { return _mm_andnot_si128(b, a); }  // a & ~b
ASYPPO_LANES_INLINE __m256i and_not(__m256i a, __m256i b) { return _mm256_andnot_si256(b, a); }
ASYPPO_LANES_INLINE __m128i gt(__m128i a, __m128i b) { return _mm_cmpgt_epi32(a, b); }
ASYPPO_LANES_INLINE __m256i gt(__m256i a, __m256i b) { return _mm256_cmpgt_epi64(a, b); }
ASYPPO_LANES_INLINE __m128i eq(__m128i a, __m128i b) { return _mm_cmpeq_epi32(a, b); }
ASYPPO_LANES_INLINE __m256i eq(__m256i a, __m256i b) { return _mm256_cmpeq_epi64(a, b); }

/// The inputs and outputs of four rows, and the scan's constants. Row pointers point at column 0.
template <class T, int NK>
struct rows4 {
  const T* v0[4];
  const T* v1[4];  // NK = 2
  const T* rw[4];
  const std::uint8_t* m[4];
  T* adv[4];  // null: not written (all four or none)
  T* ret[4];
  T* sd[4];
  index_t end[4];  // each row's range ends here (exclusive)
  double gla[4];   // gamma * lambda_actor of the row
  double gamma, glc, inv_k, inv_d, half_span;
  bool skip, raw;
};

/// The scan over columns [end[r] - C, end[r]) of the four rows, in lanes; s, a, c: the lanes' states
/// after column end[r] - C (from the initial state). Skip, Raw, Std: the semantics, the padding mode
/// and whether the std is written, fixed at compile time. Hook: gae_hook_lanes<...>.
template <class T, int NK, bool Skip, bool Raw, bool Std, class HookLanes>
void scan4(const rows4<T, NK>& q, const HookLanes& hook, index_t C, double s_out[4], double a_out[4], double c_out[4]) {
  const vd gamma = _mm256_set1_pd(q.gamma), glc = _mm256_set1_pd(q.glc), gla = lanes_of(q.gla);
  const vd zero = _mm256_setzero_pd(), half = _mm256_set1_pd(0.5), inv_k = _mm256_set1_pd(q.inv_k);
  const vd inv_d = _mm256_set1_pd(q.inv_d), half_span = _mm256_set1_pd(q.half_span);
  const vd abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(INT64_MAX));
  vd s = zero, a = zero, c = zero;
  for (index_t i = 4; i <= C; i += 4) {
    index_t col[4];
    for (int r = 0; r < 4; ++r) col[r] = q.end[r] - i;
    // Up to 36 streams going backwards, more than the hardware prefetchers follow: one software prefetch
    // per cache line of each, 128 columns ahead (measured: the step 4.5-5.0 -> 3.9-4.0 ms, 1 thread).
    constexpr index_t line = 64 / sizeof(T), ahead_cols = 128;
    if ((i - 4) % line == 0 && i + ahead_cols <= C)
      for (int r = 0; r < 4; ++r) {
        const index_t ahead = col[r] - ahead_cols;
        _mm_prefetch(reinterpret_cast<const char*>(q.v0[r] + ahead), _MM_HINT_T0);
        if constexpr (NK == 2) _mm_prefetch(reinterpret_cast<const char*>(q.v1[r] + ahead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(q.rw[r] + ahead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(q.m[r] + ahead), _MM_HINT_T0);
        if (q.adv[0]) _mm_prefetch(reinterpret_cast<const char*>(q.adv[r] + ahead), _MM_HINT_T0);
        if (q.ret[0]) _mm_prefetch(reinterpret_cast<const char*>(q.ret[r] + ahead), _MM_HINT_T0);
        hook.prefetch(r, ahead);
      }
    vd valid[4], v0[4], v1[4], rw[4], A[4], R[4], S[4];
    mask4x4(at(q.m, col).p, valid);
    load4x4(at(q.v0, col).p, v0);
    if constexpr (NK == 2) load4x4(at(q.v1, col).p, v1);
    load4x4(at(q.rw, col).p, rw);
    for (int k = 3; k >= 0; --k) {
      // gae_element: V-bar and r - V-bar (ensemble_point::mean), 0 at masked tokens.
      const vd mean = NK == 2 ? _mm256_mul_pd(half, _mm256_add_pd(v0[k], v1[k]))
                              : _mm256_mul_pd(_mm256_add_pd(zero, v0[k]), inv_k);
      const vd v = _mm256_and_pd(valid[k], mean), d = _mm256_and_pd(valid[k], _mm256_sub_pd(rw[k], mean));
      // gae_compose::apply (skip: a masked token leaves the state as it is).
      const vd dg = _mm256_add_pd(d, _mm256_mul_pd(gamma, s));
      const vd an = _mm256_add_pd(dg, _mm256_mul_pd(gla, a)), cn = _mm256_add_pd(dg, _mm256_mul_pd(glc, c));
      if constexpr (Skip) {
        s = select(valid[k], v, s), a = select(valid[k], an, a), c = select(valid[k], cn, c);
      } else {
        s = v, a = an, c = cn;
      }
      // gae_sink: A (0 at masked tokens unless raw), R = c + s at valid tokens, else raw: c + V-bar
      // (skip) or c + 0, else 0; the std about s at valid tokens, else 0.
      if constexpr (Raw) {
        A[k] = a;
        R[k] = select(valid[k], _mm256_add_pd(c, s), _mm256_add_pd(c, Skip ? mean : zero));
      } else {
        A[k] = _mm256_and_pd(valid[k], a);
        R[k] = _mm256_and_pd(valid[k], _mm256_add_pd(c, s));
      }
      if constexpr (Std) {
        vd sd;
        if constexpr (NK == 2) {
          sd = _mm256_mul_pd(_mm256_and_pd(_mm256_sub_pd(v0[k], v1[k]), abs_mask), half_span);
        } else {
          const vd e = _mm256_sub_pd(v0[k], s);
          sd = _mm256_sqrt_pd(_mm256_mul_pd(_mm256_add_pd(zero, _mm256_mul_pd(e, e)), inv_d));
        }
        S[k] = _mm256_and_pd(valid[k], sd);
      }
    }
    hook.block(col, valid, A);
    if (q.adv[0]) store4x4(at(q.adv, col).p, A);
    if (q.ret[0]) store4x4(at(q.ret, col).p, R);
    if constexpr (Std) store4x4(at(q.sd, col).p, S);
  }
  _mm256_storeu_pd(s_out, s), _mm256_storeu_pd(a_out, a), _mm256_storeu_pd(c_out, c);
}

/// scan4 with the run-time flags q.skip, q.raw and q.sd[0] != null made compile-time.
template <class T, int NK, class HookLanes>
void scan4(const rows4<T, NK>& q, const HookLanes& hook, index_t C, double s[4], double a[4], double c[4]) {
  const int mode = (q.skip ? 4 : 0) + (q.raw ? 2 : 0) + (q.sd[0] ? 1 : 0);
  switch (mode) {
    case 0: return scan4<T, NK, false, false, false>(q, hook, C, s, a, c);
    case 1: return scan4<T, NK, false, false, true>(q, hook, C, s, a, c);
    case 2: return scan4<T, NK, false, true, false>(q, hook, C, s, a, c);
    case 3: return scan4<T, NK, false, true, true>(q, hook, C, s, a, c);
    case 4: return scan4<T, NK, true, false, false>(q, hook, C, s, a, c);
    case 5: return scan4<T, NK, true, false, true>(q, hook, C, s, a, c);
    case 6: return scan4<T, NK, true, true, false>(q, hook, C, s, a, c);
    default: return scan4<T, NK, true, true, true>(q, hook, C, s, a, c);
  }
}

}  // namespace gae_lanes

template <>
struct gae_hook_lanes<no_gae_hook> {  // nothing to do
  static constexpr bool available = true;
  static bool supported(const no_gae_hook&) { return true; }
  static bool on_lanes(const no_gae_hook&, index_t) { return true; }
  gae_hook_lanes(const no_gae_hook&, const index_t*) {}
  void block(const index_t*, const __m256d*, __m256d*) const {}
  void prefetch(int, index_t) const {}
};

/// mask_hook on lanes: sigma of the four rows, the mask decision (mask_decision with ties = 1, as
/// mask_hook passes) on keys as wide as T, the masks' bytes, sigma's copy, I^A. Rows whose ties need
/// ranks (rank_ties: the tie scan wrote their masks, which mask_hook reads) stay scalar. The sigma
/// temporary is read at masked tokens too (it holds anything there) and those lanes are discarded, as
/// mask_hook discards them.
template <class T>
struct gae_hook_lanes<mask_hook<T>> {
  static constexpr bool available = true;
  static constexpr bool narrow = sizeof(T) == 4;  // float: 32-bit keys
  using key_t = std::conditional_t<narrow, std::int32_t, std::int64_t>;
  using keys = typename gae_lanes::key_lanes<narrow>::type;
  const T* sig[4];
  std::uint8_t* am[4];
  std::uint8_t* em[4];
  T* sd[4];
  keys key_k, key_h, has_k, eq_k, has_h, eq_h;  // thresholds as flipped keys; the rest lane masks
  bool apply;
  bool whole_ties = true;  // every lane takes all of its ties (eq == has): the short form of decide()

  static bool supported(const mask_hook<T>& h) {
    return unit_inner_stride(h.adv_mask) && unit_inner_stride(h.entropy_mask) && unit_inner_stride(h.std_out);
  }
  static bool on_lanes(const mask_hook<T>& h, index_t b) { return !h.rows[b].rank_ties; }
  gae_hook_lanes(const mask_hook<T>& h, const index_t* b) : apply(h.apply) {
    key_t kk[4], kh[4], hk[4], ek[4], hh[4], eh[4];
    constexpr std::uint64_t top = std::uint64_t(1) << (8 * sizeof(key_t) - 1);
    for (int r = 0; r < 4; ++r) {
      sig[r] = h.sigma + b[r] * h.cols;
      am[r] = &h.adv_mask(b[r], 0);
      em[r] = h.entropy_mask.data ? &h.entropy_mask(b[r], 0) : nullptr;
      sd[r] = h.std_out.data ? &h.std_out(b[r], 0) : nullptr;
      const auto& p = h.rows[b[r]];
      kk[r] = static_cast<key_t>(p.key_k ^ top);
      kh[r] = static_cast<key_t>(p.key_h ^ top);
      hk[r] = -static_cast<key_t>(p.has_k != 0);
      ek[r] = -static_cast<key_t>((p.has_k != 0) & (p.off_k + 1 <= p.need_k));
      hh[r] = -static_cast<key_t>(p.has_h != 0);
      eh[r] = -static_cast<key_t>((p.has_h != 0) & (p.off_h + 1 > p.skip_h));
      whole_ties = whole_ties && ek[r] == hk[r] && eh[r] == hh[r];
    }
    key_k = gae_lanes::lanes_i(kk), key_h = gae_lanes::lanes_i(kh), has_k = gae_lanes::lanes_i(hk);
    eq_k = gae_lanes::lanes_i(ek), has_h = gae_lanes::lanes_i(hh), eq_h = gae_lanes::lanes_i(eh);
  }
  /// low (I^A = 0) and high (I^H = 0) of keys x.
  ASYPPO_LANES_INLINE void decide(keys x, keys& low, keys& high) const {
    using namespace gae_lanes;
    if (whole_ties) {  // x <= key_k, x >= key_h
      low = and_not(has_k, gt(x, key_k));
      high = and_not(has_h, gt(key_h, x));
    } else {
      low = or_(and_(has_k, gt(key_k, x)), and_(eq_k, eq(x, key_k)));
      high = or_(and_(has_h, gt(x, key_h)), and_(eq_h, eq(x, key_h)));
    }
  }
  ASYPPO_LANES_INLINE void prefetch(int r, index_t col) const {
    _mm_prefetch(reinterpret_cast<const char*>(sig[r] + col), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(am[r] + col), _MM_HINT_T0);
    if (em[0]) _mm_prefetch(reinterpret_cast<const char*>(em[r] + col), _MM_HINT_T0);
    if (sd[0]) _mm_prefetch(reinterpret_cast<const char*>(sd[r] + col), _MM_HINT_T0);
  }
  ASYPPO_LANES_INLINE void block(const index_t* col, const __m256d* valid, __m256d* A) const {
    using namespace gae_lanes;
    __m128i am32[4] = {}, em32[4] = {};  // I^A, I^H as 32-bit lane masks (decided here)
    __m256d amask[4] = {};               // I^A as 64-bit lane masks
    if constexpr (narrow) {  // sigma stays float: keys, copy and masks in 32-bit lanes
      __m128 s0 = _mm_loadu_ps(sig[0] + col[0]), s1 = _mm_loadu_ps(sig[1] + col[1]);
      __m128 s2 = _mm_loadu_ps(sig[2] + col[2]), s3 = _mm_loadu_ps(sig[3] + col[3]);
      _MM_TRANSPOSE4_PS(s0, s1, s2, s3);
      __m128 sv[4] = {s0, s1, s2, s3};
      for (int k = 0; k < 4; ++k) {
        const __m128i v32 = narrow_mask(valid[k]);
        sv[k] = _mm_and_ps(_mm_castsi128_ps(v32), sv[k]);  // T(0) at masked tokens
        __m128i low, high;
        decide(flipped_keys(sv[k]), low, high);
        am32[k] = _mm_andnot_si128(low, v32), em32[k] = _mm_andnot_si128(high, v32);
        amask[k] = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(am32[k]));
      }
      if (sd[0]) {
        _MM_TRANSPOSE4_PS(sv[0], sv[1], sv[2], sv[3]);
        for (int r = 0; r < 4; ++r) _mm_storeu_ps(reinterpret_cast<float*>(sd[r]) + col[r], sv[r]);
      }
    } else {
      __m256d sv[4];
      load4x4(at(sig, col).p, sv);
      for (int k = 0; k < 4; ++k) {
        sv[k] = _mm256_and_pd(valid[k], sv[k]);
        __m256i low, high;
        decide(flipped_keys(sv[k]), low, high);
        amask[k] = _mm256_andnot_pd(_mm256_castsi256_pd(low), valid[k]);
        am32[k] = narrow_mask(amask[k]);
        em32[k] = narrow_mask(_mm256_andnot_pd(_mm256_castsi256_pd(high), valid[k]));
      }
      if (sd[0]) store4x4(at(sd, col).p, sv);
    }
    store_mask4x4(at(am, col).p, am32);
    if (em[0]) store_mask4x4(at(em, col).p, em32);
    if (apply)
      for (int k = 0; k < 4; ++k) A[k] = _mm256_andnot_pd(_mm256_andnot_pd(amask[k], valid[k]), A[k]);  // 0 where valid & !I^A
  }
};
#undef ASYPPO_LANES_INLINE
ASYPPO_END_AVX2_CODE
#endif

}  // namespace asyppo::detail
