// Tests of half_types.hpp: the widening of every one of the 65536 bit patterns of bfloat16 and
// float16 against formulas written here (ldexp of sign, exponent and mantissa), and the narrowing
// (from_float) against the definition of round to nearest, ties to even: the result is the
// representable value nearest to x, the even one on ties, on all float16 / bfloat16 midpoints and on
// random floats over the whole range (subnormals, overflow, Inf and NaN included).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include "asyppo/half_types.hpp"

using asyppo::bfloat16;
using asyppo::float16;

namespace {

double f16_value(std::uint16_t b) {  // the binary16 definition
  const int sign = b >> 15, e = (b >> 10) & 31, m = b & 1023;
  double v;
  if (e == 0) v = std::ldexp(m, -24);
  else if (e == 31) v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else v = std::ldexp(1024 + m, e - 25);
  return sign ? -v : v;
}

double bf16_value(std::uint16_t b) {  // sign, 8 exponent bits (bias 127), 7 mantissa bits
  const int sign = b >> 15, e = (b >> 7) & 255, m = b & 127;
  double v;
  if (e == 0) v = std::ldexp(m, -133);
  else if (e == 255) v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else v = std::ldexp(128 + m, e - 134);
  return sign ? -v : v;
}

bool same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || (a == b && std::signbit(a) == std::signbit(b)); }

// Whether r (bits) is x rounded to nearest, ties to even, among the finite values of the format (and
// +-Inf beyond the overflow threshold), with value(bits) the format's definition.
template <class Value>
bool is_nearest_even(float x, std::uint16_t r, Value value, std::uint16_t max_finite, double overflow) {
  const double xv = x, rv = value(r);
  if (std::isnan(xv)) return std::isnan(rv);
  if (std::abs(xv) >= overflow) return std::isinf(rv) && std::signbit(rv) == std::signbit(xv);
  if (std::isinf(rv) || std::isnan(rv)) return false;
  if (std::signbit(rv) != std::signbit(xv) && rv != 0) return false;
  const std::uint16_t mag = r & 0x7fff, sign = r & 0x8000;
  const double err = std::abs(rv - xv);
  // The neighbours of r in magnitude (same sign); r must be at least as close as each, and even on ties.
  for (int step : {-1, 1}) {
    const int nb = static_cast<int>(mag) + step;
    if (nb < 0 || nb > max_finite) continue;
    const double other = value(static_cast<std::uint16_t>(sign | nb));
    const double e2 = std::abs(other - xv);
    if (e2 < err) return false;
    if (e2 == err && (mag & 1)) return false;  // a tie goes to the even mantissa
  }
  return true;
}

}  // namespace

TEST_CASE("half types: widening is exact for all 65536 bit patterns", "[half_types]") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto u = static_cast<std::uint16_t>(b);
    CAPTURE(b);
    REQUIRE(same(static_cast<float>(float16{u}), f16_value(u)));
    REQUIRE(same(static_cast<float>(bfloat16{u}), bf16_value(u)));
    // Narrowing a widened value gives the same bits back (NaN: a NaN).
    const float f16 = float16{u}, bf = bfloat16{u};
    if (!std::isnan(f16)) REQUIRE(float16::from_float(f16).bits == u);
    else REQUIRE(std::isnan(static_cast<float>(float16::from_float(f16))));
    if (!std::isnan(bf)) REQUIRE(bfloat16::from_float(bf).bits == u);
    else REQUIRE(std::isnan(static_cast<float>(bfloat16::from_float(bf))));
  }
}

TEST_CASE("half types: narrowing rounds to nearest, ties to even", "[half_types]") {
  const double f16_overflow = 65520.0;                    // the midpoint between 65504 and 2^16
  const double bf16_overflow = std::ldexp(255.5, 127 - 7);  // the midpoint between the largest and 2^128
  // Every midpoint between consecutive finite values (exact in float), both signs.
  for (std::uint32_t b = 0; b < 0x7bff; ++b) {
    const float mid = static_cast<float>((f16_value(static_cast<std::uint16_t>(b)) + f16_value(static_cast<std::uint16_t>(b + 1))) / 2);
    for (float x : {mid, -mid}) {
      CAPTURE(b, x);
      REQUIRE(is_nearest_even(x, float16::from_float(x).bits, f16_value, 0x7bff, f16_overflow));
    }
  }
  for (std::uint32_t b = 0; b < 0x7f7f; ++b) {
    const float mid = static_cast<float>((bf16_value(static_cast<std::uint16_t>(b)) + bf16_value(static_cast<std::uint16_t>(b + 1))) / 2);
    CAPTURE(b, mid);
    REQUIRE(is_nearest_even(mid, bfloat16::from_float(mid).bits, bf16_value, 0x7f7f, bf16_overflow));
  }
  // Random float bit patterns (every exponent, subnormals, Inf, NaN).
  std::mt19937_64 rng(17);
  for (int i = 0; i < 400000; ++i) {
    const auto u = static_cast<std::uint32_t>(rng());
    float x;
    std::memcpy(&x, &u, sizeof x);
    CAPTURE(u, x);
    REQUIRE(is_nearest_even(x, float16::from_float(x).bits, f16_value, 0x7bff, f16_overflow));
    REQUIRE(is_nearest_even(x, bfloat16::from_float(x).bits, bf16_value, 0x7f7f, bf16_overflow));
  }
  // Random floats in float16's range (where the subnormal and normal paths are exercised most).
  std::uniform_real_distribution<float> u(-70000.0f, 70000.0f), small(-1e-4f, 1e-4f);
  for (int i = 0; i < 200000; ++i) {
    for (float x : {u(rng), small(rng)}) {
      CAPTURE(x);
      REQUIRE(is_nearest_even(x, float16::from_float(x).bits, f16_value, 0x7bff, f16_overflow));
    }
  }
}
