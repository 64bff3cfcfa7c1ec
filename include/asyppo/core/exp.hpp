// asyppo/core/exp.hpp: the exponential of the losses' probability ratios, with the same bits on every
// host and on every SIMD width (docs/algorithm.md, "The exponential").
//
// exp_ratio(x) = 2^(k/64) * e^r with k = round(64 x / ln 2) and r = x - k ln2/64 (Cody-Waite: the
// product k * ln2hi/64 is exact because ln2hi keeps 34 significant bits and |k| < 2^17), so
// |r| <= ln2/128. e^r - 1 is its degree-5 Taylor polynomial (truncation below 3.5e-17, a sixth of an
// ulp of 1), 2^(i/64) comes from a table of correctly rounded doubles (i = k mod 64), and
// 2^((k - i)/64) is added to the exponent bits. Error: below 1.5 ulp (tests/test_simd_kernels.cpp
// measures it against long double). Outside |x| <= 708 (overflow, subnormal results, NaN) it returns
// std::exp(x).
//
// Why not std::exp: the policy loss, the actor objective and the k3 KL need one or two per token; a
// call into libm blocks vectorisation and spills every live register around it. The SIMD kernels of
// core/simd/token_kernels.inc compute the same operations on 2 or 4 lanes and get exactly the bits of
// exp_ratio, so the contiguous fast paths and the generic per-element paths agree bit for bit, and
// results do not depend on the C library. On a CUDA device exp_ratio is CUDA's exp (device results are
// not bit-identical to the host's anyway, docs/architecture.md "Determinism contract").
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "asyppo/config.hpp"

namespace asyppo::detail {

/// 2^(i/64), i = 0..63, correctly rounded.
inline constexpr double exp2_table64[64] = {
    0x1.0000000000000p+0, 0x1.02c9a3e778061p+0, 0x1.059b0d3158574p+0, 0x1.0874518759bc8p+0,
    0x1.0b5586cf9890fp+0, 0x1.0e3ec32d3d1a2p+0, 0x1.11301d0125b51p+0, 0x1.1429aaea92de0p+0,
    0x1.172b83c7d517bp+0, 0x1.1a35beb6fcb75p+0, 0x1.1d4873168b9aap+0, 0x1.2063b88628cd6p+0,
    0x1.2387a6e756238p+0, 0x1.26b4565e27cddp+0, 0x1.29e9df51fdee1p+0, 0x1.2d285a6e4030bp+0,
    0x1.306fe0a31b715p+0, 0x1.33c08b26416ffp+0, 0x1.371a7373aa9cbp+0, 0x1.3a7db34e59ff7p+0,
    0x1.3dea64c123422p+0, 0x1.4160a21f72e2ap+0, 0x1.44e086061892dp+0, 0x1.486a2b5c13cd0p+0,
    0x1.4bfdad5362a27p+0, 0x1.4f9b2769d2ca7p+0, 0x1.5342b569d4f82p+0, 0x1.56f4736b527dap+0,
    0x1.5ab07dd485429p+0, 0x1.5e76f15ad2148p+0, 0x1.6247eb03a5585p+0, 0x1.6623882552225p+0,
    0x1.6a09e667f3bcdp+0, 0x1.6dfb23c651a2fp+0, 0x1.71f75e8ec5f74p+0, 0x1.75feb564267c9p+0,
    0x1.7a11473eb0187p+0, 0x1.7e2f336cf4e62p+0, 0x1.82589994cce13p+0, 0x1.868d99b4492edp+0,
    0x1.8ace5422aa0dbp+0, 0x1.8f1ae99157736p+0, 0x1.93737b0cdc5e5p+0, 0x1.97d829fde4e50p+0,
    0x1.9c49182a3f090p+0, 0x1.a0c667b5de565p+0, 0x1.a5503b23e255dp+0, 0x1.a9e6b5579fdbfp+0,
    0x1.ae89f995ad3adp+0, 0x1.b33a2b84f15fbp+0, 0x1.b7f76f2fb5e47p+0, 0x1.bcc1e904bc1d2p+0,
    0x1.c199bdd85529cp+0, 0x1.c67f12e57d14bp+0, 0x1.cb720dcef9069p+0, 0x1.d072d4a07897cp+0,
    0x1.d5818dcfba487p+0, 0x1.da9e603db3285p+0, 0x1.dfc97337b9b5fp+0, 0x1.e502ee78b3ff6p+0,
    0x1.ea4afa2a490dap+0, 0x1.efa1bee615a27p+0, 0x1.f50765b6e4540p+0, 0x1.fa7c1819e90d8p+0,
};

struct exp_constants {
  static constexpr double range = 708.0;                  // |x| <= range: the table path
  static constexpr double inv_ln2_64 = 0x1.71547652b82fep+6;  // 64 / ln 2
  static constexpr double ln2_64_hi = 0x1.62e42fef80000p-7;   // ln2/64, 34 significant bits
  static constexpr double ln2_64_lo = 0x1.1cf79abc9e3b4p-42;  // ln2/64 - ln2_64_hi
  static constexpr double shift = 0x1.8p52;                   // (z + shift) - shift = round(z)
  static constexpr double c2 = 1.0 / 2, c3 = 1.0 / 6, c4 = 1.0 / 24, c5 = 1.0 / 120;
};

/// 2^(k/64) (1 + p) from the bits of k + 0x1.8p52: the table value times 1 + p, then
/// 2^((k - i)/64) added to the exponent (the result stays normal for |x| <= 708).
inline double exp_scale(std::int64_t kbits, double p) {  // host only (the table is host memory)
  const std::uint64_t k = static_cast<std::uint64_t>(kbits) - std::uint64_t{0x4338000000000000};
  const std::uint64_t i = k & 63;
  const double t = exp2_table64[i];
  double y = t + t * p;
  std::uint64_t ybits;
  memcpy(&ybits, &y, sizeof ybits);
  ybits += (k - i) << 46;  // (k - i)/64 << 52, two's complement
  memcpy(&y, &ybits, sizeof y);
  return y;
}

/// e^x within 1.5 ulp, bit-identical to each lane of the SIMD kernels' exp.
ASYPPO_INLINE double exp_ratio(double x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  using c = exp_constants;
  if (!(std::fabs(x) <= c::range)) return std::exp(x);
  const double kd_shifted = x * c::inv_ln2_64 + c::shift;
  std::int64_t kbits;
  memcpy(&kbits, &kd_shifted, sizeof kbits);
  const double kd = kd_shifted - c::shift;
  const double r = (x - kd * c::ln2_64_hi) - kd * c::ln2_64_lo;
  const double p = r + r * r * (c::c2 + r * (c::c3 + r * (c::c4 + r * c::c5)));
  return exp_scale(kbits, p);
#endif
}

}  // namespace asyppo::detail
