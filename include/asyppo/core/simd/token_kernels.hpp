// asyppo/core/simd/token_kernels.hpp: the contiguous fast paths of policy_loss, actor_objective,
// kl_loss, value_loss and the advantage step's summary moments on
// the widest SIMD lanes the CPU has (core/simd/lanes.hpp), chosen at run time.
//
// policy_span_simd, actor_span_simd, kl_span_simd, value_span_simd and summary_span_simd process whole lane groups of one row's span [t0, t1) and
// return the first token they did not process (t0 when no SIMD width is available); the reducers
// finish the span with their scalar per-token code. The values, sums and counts are bit-identical to
// the scalar code's for every width (core/simd/token_kernels.inc), so results do not depend on the
// CPU, the width limit or the thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "asyppo/core/entropy.hpp"
#include "asyppo/core/kl_token.hpp"
#include "asyppo/core/simd/lanes.hpp"
#include "asyppo/core/surrogate.hpp"
#include "asyppo/core/validate.hpp"
#include "asyppo/core/value_acc.hpp"

namespace asyppo::detail {

#if defined(ASYPPO_SIMD_SSE2)
namespace sse2_kernels {
using L = sse2_lanes;
#include "asyppo/core/simd/token_kernels.inc"
}  // namespace sse2_kernels
#endif

#if defined(ASYPPO_SIMD_AVX2)
ASYPPO_BEGIN_AVX2_CODE
namespace avx2_kernels {
using L = avx2_lanes;
#include "asyppo/core/simd/token_kernels.inc"
}  // namespace avx2_kernels
ASYPPO_END_AVX2_CODE
#endif

#if defined(ASYPPO_SIMD_SSE2)  // else the reducers use their scalar code only
/// Per-thread float buffers for 16-bit inputs widened (exactly) before a float SIMD path runs on them:
/// buffer `slot` of this thread, at least `cols` long. A pass uses each slot for one input row at a
/// time (the losses slots 0-4, the GAE lanes 0-11, the summary moments 0-1; passes do not nest).
inline constexpr int widened_slots = 12;
inline float* widened_buffer(int slot, index_t cols) {
  thread_local std::vector<float> buffers[widened_slots];
  std::vector<float>& x = buffers[slot];
  if (static_cast<index_t>(x.size()) < cols) x.resize(static_cast<std::size_t>(cols));
  return x.data();
}

/// Columns [t0, t1) of the contiguous 16-bit row p (p[t] is column t), widened into buffer `slot`;
/// returns the buffer's column 0 (only [t0, t1) written): the float row a SIMD path then reads.
template <class H>
const float* widened_span(const H* p, index_t t0, index_t t1, int slot) {
  float* x = widened_buffer(slot, t1);
  for (index_t t = t0; t < t1; ++t) x[t] = static_cast<float>(p[t]);
  return x;
}

/// Columns [t0, t1) of row b of a 16-bit view (any strides), widened into buffer `slot` and returned
/// as a float view whose row b reads them (row stride 0): a reducer then runs its float span, SIMD
/// lanes included, on 16-bit inputs, with the bits the per-token code gives. Absent stays absent.
template <class H>
token_view<const float> widened_row(token_view<const H> v, index_t b, index_t t0, index_t t1, int slot) {
  if (v.data == nullptr) return {};
  const float* x = nullptr;
  if (unit_inner_stride(v)) {
    x = widened_span(&v(b, 0), t0, t1, slot);  // a loop the compiler vectorises
  } else {
    float* w = widened_buffer(slot, t1);
    for (index_t t = t0; t < t1; ++t) w[t] = static_cast<float>(v(b, t));
    x = w;
  }
  return token_view<const float>::strided(x, {b + 1, t1}, {0, 1});
}

/// policy_reducer's span on SIMD lanes; returns the first token not processed.
template <class T>
inline index_t policy_span_simd(policy_acc& acc, const T* pl, const T* po, const T* pa, const std::uint8_t* m,
                                const std::uint8_t* am, T* g, double wb, index_t t0, index_t t1,
                                const surrogate_params& p) {
  const int width = simd_width();
#if defined(ASYPPO_SIMD_AVX2)
  if (width >= 4) return avx2_kernels::policy_span(acc, pl, po, pa, m, am, g, wb, t0, t1, p);
#endif
  if (width >= 2) return sse2_kernels::policy_span(acc, pl, po, pa, m, am, g, wb, t0, t1, p);
  return t0;
}

/// actor_reducer's span on SIMD lanes; returns the first token not processed.
template <class T>
inline index_t actor_span_simd(policy_acc& pg, entropy_acc& ent, kl_acc& kl, const T* pl, const T* po, const T* pa,
                               const T* ph, const T* pr, const std::uint8_t* m, const std::uint8_t* am,
                               const std::uint8_t* em, T* gl, T* gh, double wb, double beta, double kappa, index_t t0,
                               index_t t1, const surrogate_params& sp, const kl_params& kp) {
  const int width = simd_width();
#if defined(ASYPPO_SIMD_AVX2)
  if (width >= 4)
    return avx2_kernels::actor_span(pg, ent, kl, pl, po, pa, ph, pr, m, am, em, gl, gh, wb, beta, kappa, t0, t1, sp, kp);
#endif
  if (width >= 2)
    return sse2_kernels::actor_span(pg, ent, kl, pl, po, pa, ph, pr, m, am, em, gl, gh, wb, beta, kappa, t0, t1, sp, kp);
  return t0;
}

/// kl_reducer's span on SIMD lanes; returns the first token not processed.
template <class T>
inline index_t kl_span_simd(kl_acc& acc, const T* pl, const T* pr, const std::uint8_t* m, T* g, double wb, double coef,
                            index_t t0, index_t t1, const kl_params& p) {
  const int width = simd_width();
#if defined(ASYPPO_SIMD_AVX2)
  if (width >= 4) return avx2_kernels::kl_span(acc, pl, pr, m, g, wb, coef, t0, t1, p);
#endif
  if (width >= 2) return sse2_kernels::kl_span(acc, pl, pr, m, g, wb, coef, t0, t1, p);
  return t0;
}

/// summary_reducer's span on four lanes (series in lanes; needs n > 0); returns the first token not processed.
template <int NC, class T>
inline index_t summary_span_simd(double& n, double* shift, double* s1, double* s2, T* pa, const T* pr, const T* pv0,
                                 const T* pv1, const std::uint8_t* m, const std::uint8_t* am, index_t t0, index_t t1) {
#if defined(ASYPPO_SIMD_AVX2)
  if (simd_width() >= 4) return avx2_kernels::summary_span<NC>(n, shift, s1, s2, pa, pr, pv0, pv1, m, am, t0, t1);
#endif
  return t0;
}

/// value_reducer's span on SIMD lanes (with EV, acc.n must be > 0); returns the first token not processed.
template <bool EV, class T>
inline index_t value_span_simd(value_acc& acc, const T* px, const T* pr, const T* po, const std::uint8_t* m, T* g,
                               double wb, double clip, index_t t0, index_t t1) {
  const int width = simd_width();
#if defined(ASYPPO_SIMD_AVX2)
  if (width >= 4) return avx2_kernels::value_span<EV>(acc, px, pr, po, m, g, wb, clip, t0, t1);
#endif
  if (width >= 2) return sse2_kernels::value_span<EV>(acc, px, pr, po, m, g, wb, clip, t0, t1);
  return t0;
}
#endif

}  // namespace asyppo::detail
