// asyppo/core/kl_token.hpp: the KL estimators of one token (docs/algorithm.md, Eq. L4; the header of
// core/kl.hpp states them, their clamps and the straight-through variants), shared by kl_loss,
// kl_values and actor_objective; core/simd/token_kernels.inc computes the same values on SIMD lanes.
#pragma once

#include <cmath>
#include <cstdint>

#include "asyppo/config.hpp"
#include "asyppo/core/exp.hpp"

namespace asyppo {

enum class kl_estimator { k1, abs, k2, k3 };

namespace detail {

struct kl_params {
  kl_estimator estimator;
  bool straight_through, clamp;
};

struct kl_value {
  double value, ddelta;
};

ASYPPO_INLINE kl_value kl_token(double delta, const kl_params& p) {
  kl_value r{0.0, 0.0};
  switch (p.estimator) {
    case kl_estimator::k1: r = {delta, 1.0}; break;
    case kl_estimator::abs:  // fabs and selects: the sign of delta is random, a branch would mispredict
      r = {fabs(delta), static_cast<double>(delta > 0) - static_cast<double>(delta < 0)};
      break;
    case kl_estimator::k2: r = {0.5 * delta * delta, delta}; break;
    case kl_estimator::k3: {  // selects, not branches
      const double x0 = -delta;
      const bool inside = (!p.clamp) | ((x0 >= -20.0) & (x0 <= 20.0));
      const double x = p.clamp ? (x0 > 20.0 ? 20.0 : (x0 < -20.0 ? -20.0 : x0)) : x0;
      const double e = exp_ratio(x);
      const double v = e - x - 1.0;
      const bool capped = p.clamp & ((v > 10.0) | (v < -10.0));
      r.value = capped ? (v > 10.0 ? 10.0 : -10.0) : v;
      r.ddelta = (capped | !inside) ? 0.0 : 1.0 - e;
      break;
    }
  }
  if (p.straight_through) r.ddelta = delta;
  return r;
}

struct kl_acc {
  double agg, sum;
  std::int64_t valid;
};

}  // namespace detail
}  // namespace asyppo
