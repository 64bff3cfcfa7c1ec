// asyppo/core/surrogate.hpp: the PPO clipped surrogate of one token, the per-token core shared by
// policy_loss and actor_objective (docs/algorithm.md, Eq. L2; the header of core/policy_loss.hpp
// states the loss, its gradient and its metrics).
//
// clamp_log_ratio clamps delta = logp - old_logp to [-C, C]; surrogate_of_ratio gives l and dl/dlogp
// from rho = exp_ratio(clamped delta) (core/exp.hpp), branch-free; policy_token adds one valid token
// into the running sums and counts of a reduce. core/simd/token_kernels.inc computes the same values
// on SIMD lanes, bit for bit.
#pragma once

#include <cstdint>

#include "asyppo/config.hpp"
#include "asyppo/core/bit_select.hpp"
#include "asyppo/core/exp.hpp"

namespace asyppo::detail {

struct surrogate_params {
  double clip_low, clip_high, dual_clip, log_ratio_clamp;
};

struct surrogate_value {
  double loss;   // l
  double dlogp;  // dl/dlogp
  bool high, low, dual;
};

/// delta = logp - old_logp clamped to [-C, C] (C > 0); inside = the clamp is not active.
struct log_ratio {
  double d;
  bool inside;
};

ASYPPO_INLINE log_ratio clamp_log_ratio(double logp, double old_logp, double C) {
  log_ratio r{logp - old_logp, true};
  if (C > 0) {  // the clamp is rarely active: predictable branches
    if (r.d > C) r.d = C, r.inside = false;
    else if (r.d < -C) r.d = -C, r.inside = false;
  }
  return r;
}

/// l and dl/dlogp of one token from rho = exp(x.d) (Eq. L2). A == 0 gives l = 0 and a zero
/// gradient (whatever rho is). No data-dependent jumps: which clip branch binds, the sign of A and
/// A == 0 (I^A zeros fed as A * I^A) are coin flips on real data.
ASYPPO_INLINE surrogate_value surrogate_of_ratio(double rho, log_ratio x, double A, const surrogate_params& p) {
  const double lo = 1.0 - p.clip_low, hi = 1.0 + p.clip_high;
  double rc = rho > lo ? rho : lo;
  rc = rc < hi ? rc : hi;
  const double l1 = -A * rho, l2 = -A * rc;
  const bool clipped = l2 > l1;  // implies rho outside [lo, hi]
  double loss = clipped ? l2 : l1;
  bool keep = x.inside & !clipped & (A != 0.0);  // bool & bool: no short-circuit jumps
  bool dual = false;
  if (p.dual_clip > 0) {  // an option: the same for every token
    const double l3 = -p.dual_clip * A;
    dual = (A < 0.0) & (loss > l3);
    loss = dual ? l3 : loss;
    keep = keep & !dual;
  }
  const bool high = clipped & (rho > hi), low = clipped & (rho < lo);
  return {zero_unless(A != 0.0, loss), zero_unless(keep, -A * rho), high, low, dual};
}

struct policy_acc {
  double loss, kl;
  std::int64_t valid, adv_masked, high, low, dual;
};

ASYPPO_INLINE policy_acc policy_acc_combine(const policy_acc& a, const policy_acc& b) {
  return {a.loss + b.loss, a.kl + b.kl, a.valid + b.valid, a.adv_masked + b.adv_masked,
          a.high + b.high, a.low + b.low, a.dual + b.dual};
}

/// One valid token's surrogate into acc (weight wb = w_b; on = I^A); returns d(w_b l)/dlogp. An
/// I^A = 0 token is a token with A = 0 (Eq. A2); its exp is skipped.
ASYPPO_INLINE double policy_token(policy_acc& acc, double wb, double lp, double olp, double A, bool on,
                                  const surrogate_params& p) {
  acc.valid += 1;
  acc.kl += olp - lp;
  acc.adv_masked += static_cast<std::int64_t>(!on);
  const log_ratio x = clamp_log_ratio(lp, olp, p.log_ratio_clamp);
  const surrogate_value s = surrogate_of_ratio(on ? exp_ratio(x.d) : 0.0, x, on ? A : 0.0, p);
  acc.loss += wb * s.loss;
  acc.high += static_cast<std::int64_t>(s.high);
  acc.low += static_cast<std::int64_t>(s.low);
  acc.dual += static_cast<std::int64_t>(s.dual);
  return wb * s.dlogp;
}

}  // namespace asyppo::detail
