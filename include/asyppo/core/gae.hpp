// asyppo/core/gae.hpp: generalised advantage estimation on the critic-ensemble mean
// (docs/algorithm.md, Eq. E5-E7 and the GAE section).
//
// Per sequence b, with V[t] the mean of the K critics (K = 1: the single critic), r the
// token rewards and m the response mask:
//   skip semantics (verl; default): masked tokens inside a response are transparent. Over the
//     valid tokens t1 < t2 < ... of a row, delta_i = r[t_i] + gamma V[t_{i+1}] - V[t_i] (V past
//     the last valid token is 0), A[t_i] = delta_i + gamma lambda A[t_{i+1}]. Rewards on masked
//     tokens are ignored.
//   step semantics (OpenRLHF): every position is a step; V and r are multiplied by m first,
//     delta_t = m r_t + gamma m_{t+1} V_{t+1} - m_t V_t, A_t = delta_t + gamma lambda A_{t+1}.
// Actor advantages use lambda_actor, critic targets R = V + A(lambda_critic); both come out
// of one reverse scan. Optional length-adaptive actor lambda (VAPO):
//   lambda_actor(b) = clamp(1 - 1/(alpha L_b), lo, hi), L_b = valid tokens of row b.
// Outputs at masked tokens are 0; padding = raw writes what verl/OpenRLHF write there
// (the carried advantage, and that plus V for returns) for parity tests.
//
// The recursion is an associative scan: each token is an affine map on the state
// (next valid value s, actor advantage a, critic advantage c); composing maps is
// associative and non-commutative (detail::gae_map), so a GPU may scan each row in
// parallel. The CPU backend folds each row sequentially in double; rows run in parallel.
#pragma once

#include <cmath>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/core/ensemble.hpp"
#include "asyppo/core/validate.hpp"

namespace asyppo {

enum class gae_mask_semantics { skip, step };

struct gae_options {
  double gamma = 1.0;
  double lambda_actor = 1.0;
  double lambda_critic = 1.0;
  gae_mask_semantics semantics = gae_mask_semantics::skip;
  padding_mode padding = padding_mode::zero;
  /// VAPO length-adaptive actor lambda; 0 disables it (lambda_actor is used).
  double adaptive_lambda_alpha = 0.0;
  double adaptive_lambda_min = 0.0;
  double adaptive_lambda_max = 1.0;
  bool check_finite = true;
};

template <class T>
struct gae_outputs {
  token_view<T> advantages{};  ///< [B,T], lambda_actor
  token_view<T> returns{};     ///< [B,T], V + A(lambda_critic)
  token_view<T> std{};         ///< [B,T], optional: critic std (fused, population or unbiased)
};

namespace detail {

/// Affine map x -> M x + o on the state x = (s, a, c), M = [[p,0,0],[qa,ua,0],[qc,0,uc]].
struct gae_map {
  double p, os, qa, ua, oa, qc, uc, oc;
};

/// combine(f, e) = e after f: scan order is reverse time, so f is the later part of the row.
struct gae_compose {
  using value_type = gae_map;
  ASYPPO_HD gae_map combine(const gae_map& f, const gae_map& e) const {
    return {e.p * f.p,          e.p * f.os + e.os,
            e.qa * f.p + e.ua * f.qa, e.ua * f.ua, e.qa * f.os + e.ua * f.oa + e.oa,
            e.qc * f.p + e.uc * f.qc, e.uc * f.uc, e.qc * f.os + e.uc * f.oc + e.oc};
  }
};

template <class T>
struct gae_element {
  ensemble_point<T> point;
  token_view<const T> rewards;
  mask_view mask;
  index_t cols;
  double gamma, lambda_actor, lambda_critic;
  const double* row_lambda_actor;  // null: lambda_actor for every row
  bool skip;
  ASYPPO_HD gae_map operator()(index_t i) const {
    const index_t b = i / cols, t = i - b * cols;
    const double m = mask(b, t) ? 1.0 : 0.0;
    const double v = m != 0.0 ? point.mean(b, t) : 0.0;
    const double r = m != 0.0 ? static_cast<double>(rewards(b, t)) : 0.0;
    const double la = row_lambda_actor ? row_lambda_actor[b] : lambda_actor;
    if (skip)
      return {1.0 - m, m * v, m * gamma, m * gamma * la + 1.0 - m, m * (r - v),
              m * gamma, m * gamma * lambda_critic + 1.0 - m, m * (r - v)};
    return {0.0, m * v, gamma, gamma * la, m * (r - v), gamma, gamma * lambda_critic, m * (r - v)};
  }
};

template <class T>
struct gae_sink {
  ensemble_point<T> point;
  mask_view mask;
  gae_outputs<T> out;
  index_t cols;
  bool raw;
  bool skip;
  ASYPPO_HD void operator()(index_t i, const gae_map& y) const {
    const index_t b = i / cols, t = i - b * cols;
    const bool valid = mask(b, t) != 0;
    // Applied to the zero state, the composed map's offsets are the state at t.
    if (valid) {
      const double v = point.mean(b, t);
      if (out.advantages.data) out.advantages(b, t) = static_cast<T>(y.oa);
      if (out.returns.data) out.returns(b, t) = static_cast<T>(y.oc + v);
      if (out.std.data) out.std(b, t) = static_cast<T>(point.std_about(b, t, v));
    } else {
      // Raw returns: verl adds the value tensor as given (R = A + V); OpenRLHF adds V*m = 0.
      const double v = raw && skip ? point.mean(b, t) : 0.0;
      if (out.advantages.data) out.advantages(b, t) = raw ? static_cast<T>(y.oa) : T(0);
      if (out.returns.data) out.returns(b, t) = raw ? static_cast<T>(y.oc + v) : T(0);
      if (out.std.data) out.std(b, t) = T(0);
    }
  }
};

struct count_valid_row {
  mask_view mask;
  index_t cols;
  using value_type = index_t;
  ASYPPO_HD index_t identity() const { return 0; }
  ASYPPO_HD void add(index_t& acc, index_t i) const {
    const index_t b = i / cols;
    acc += mask(b, i - b * cols) ? 1 : 0;
  }
  ASYPPO_HD index_t combine(index_t a, index_t b) const { return a + b; }
};

struct adaptive_lambda_sink {
  double* out;
  double alpha, lo, hi;
  ASYPPO_HD void operator()(index_t b, index_t len) const {
    double l = len > 0 ? 1.0 - 1.0 / (alpha * static_cast<double>(len)) : hi;
    l = l < lo ? lo : l;
    out[b] = l > hi ? hi : l;
  }
};

inline void check_gae_options(const char* where, const gae_options& o) {
  check_range(where, "gamma", o.gamma, 0.0, 1.0);
  check_range(where, "lambda_actor", o.lambda_actor, 0.0, 1.0);
  check_range(where, "lambda_critic", o.lambda_critic, 0.0, 1.0);
  if (o.adaptive_lambda_alpha != 0.0) {
    if (!(o.adaptive_lambda_alpha > 0.0) || !std::isfinite(o.adaptive_lambda_alpha))
      fail(where, "adaptive_lambda_alpha", "must be 0 (off) or a finite positive number, got ",
           o.adaptive_lambda_alpha);
    check_range(where, "adaptive_lambda_min", o.adaptive_lambda_min, 0.0, 1.0);
    check_range(where, "adaptive_lambda_max", o.adaptive_lambda_max, o.adaptive_lambda_min, 1.0);
  }
}

/// The scan itself; arguments already validated.
template <class Backend, class T>
void gae_unchecked(const Backend& be, critic_view<const T> values, token_view<const T> rewards, mask_view mask,
                   const gae_options& opt, const gae_outputs<T>& out, std_kind kind) {
  const index_t B = rewards.extent[0], Tn = rewards.extent[1];
  if (B * Tn == 0) return;
  ensemble_point<T> point{values, kind == std_kind::unbiased};
  auto row_lambda = be.template allocate<double>(opt.adaptive_lambda_alpha > 0 ? B : 0);
  if (opt.adaptive_lambda_alpha > 0)
    be.segmented_reduce(B, row_segments{Tn}, count_valid_row{mask, Tn},
                        adaptive_lambda_sink{row_lambda.data(), opt.adaptive_lambda_alpha,
                                             opt.adaptive_lambda_min, opt.adaptive_lambda_max});
  gae_element<T> elem{point, rewards, mask, Tn, opt.gamma, opt.lambda_actor, opt.lambda_critic,
                      opt.adaptive_lambda_alpha > 0 ? row_lambda.data() : nullptr,
                      opt.semantics == gae_mask_semantics::skip};
  be.segmented_scan(scan_direction::reverse, B, row_segments{Tn}, elem, gae_compose{},
                    gae_sink<T>{point, mask, out, Tn, opt.padding == padding_mode::raw,
                                opt.semantics == gae_mask_semantics::skip});
}

}  // namespace detail

/// GAE on the mean of values [K,B,T] (K >= 1) with token rewards [B,T] and mask [B,T].
/// Outputs are optional views (advantages, returns, std); they may alias nothing among the
/// inputs. Throws asyppo::error on bad shapes, gamma/lambda outside [0,1], bad adaptive-lambda
/// settings, or (check_finite) NaN/Inf in values or rewards on a valid token.
template <class Backend, class T>
void gae(const Backend& be, critic_view<const T> values, token_view<const T> rewards, mask_view mask,
         const gae_options& opt, const gae_outputs<T>& out, std_kind kind = std_kind::population) {
  constexpr const char* where = "asyppo::gae";
  detail::check_view(where, "values", values);
  const index_t K = values.extent[0], B = values.extent[1], Tn = values.extent[2];
  if (K < 1) detail::fail(where, "values", "needs at least one critic (K >= 1), got K = ", K);
  detail::check_input(where, "rewards", rewards, {B, Tn});
  detail::check_input(where, "mask", mask, {B, Tn});
  if (!detail::present(mask) && B * Tn > 0) detail::fail(where, "mask", "is required");
  detail::check_optional_output(where, "out.advantages", out.advantages, {B, Tn});
  detail::check_optional_output(where, "out.returns", out.returns, {B, Tn});
  detail::check_optional_output(where, "out.std", out.std, {B, Tn});
  detail::check_gae_options(where, opt);
  if (opt.check_finite) detail::check_finite_tokens<Backend, T>(be, where, "values or rewards", B, Tn, values, rewards, mask);
  detail::gae_unchecked(be, values, rewards, mask, opt, out, kind);
}

}  // namespace asyppo
