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
// (the carried advantage, and that plus V for returns) for parity tests. In raw skip mode the
// returns at masked tokens read the values there, which the finiteness check (valid tokens only)
// does not cover: a NaN value on a masked token then shows up in that token's raw return only.
//
// The recursion is an associative scan: each token is an affine map on the state
// (next valid value s, actor advantage a, critic advantage c); composing maps is
// associative and non-commutative (detail::gae_map), so a GPU may scan each row in
// parallel. The CPU backend folds each row sequentially in double; rows run in parallel, and on AVX2
// four rows share a vector (core/simd/gae_lanes.hpp, gae_sink::scan_rows; the same bits).
// Inputs in float, double, bfloat16 or float16 (read exactly); outputs and gradients in
// compute_type_t of the input type (half_types.hpp: float for the 16-bit types): the float call's bits.
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/core/ensemble.hpp"
#include "asyppo/core/row_span.hpp"
#include "asyppo/core/simd/gae_lanes.hpp"
#include "asyppo/core/simd/token_kernels.hpp"
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

/// The state (s, a, c) after a token: next valid value, actor and critic advantages.
struct gae_state {
  double s, a, c;
};

/// One token as the scan sees it: its mean value v, v's residual d = r - v (both 0 at masked
/// tokens), whether it is valid, and its row's actor lambda.
struct gae_token {
  double v, d, lambda_actor;
  bool valid;
};

/// The map of a joint scan (lambda_actor == lambda_critic for every row): the critic's row of the map
/// equals the actor's, so only (p, os, q, u, o) = (p, os, qa, ua, oa) are kept.
struct gae_joint_map {
  double p, os, q, u, o;
};

/// The scan operator. lift(e) is the token's affine map; combine(f, e) = e after f (scan order is
/// reverse time, so f is the later part of the row) is associative and non-commutative;
/// apply(e, x) = e(x) is the action on the state, which a sequential backend folds directly
/// (six multiply-adds per token instead of composing 3x3 maps). Joint (one lambda for actor and
/// critic, no per-row actor lambda: verl's and OpenRLHF's GAE): the critic's advantage is the actor's,
/// computed by the same operations, so the scan carries 5-double maps instead of 8 (fewer registers on a
/// device) and sets c = a: the same bits as the general scan with lambda_critic = lambda_actor.
template <bool Joint = false>
struct gae_compose {
  double gamma, lambda_critic;
  bool skip;
  using value_type = std::conditional_t<Joint, gae_joint_map, gae_map>;
  ASYPPO_HD gae_state initial() const { return {0.0, 0.0, 0.0}; }
  ASYPPO_HD value_type lift(const gae_token& e) const {
    if constexpr (Joint) {
      if (skip && !e.valid) return {1.0, 0.0, 0.0, 1.0, 0.0};  // transparent
      return {0.0, e.v, gamma, gamma * lambda_critic, e.d};
    } else {
      if (skip && !e.valid) return {1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0};  // transparent
      const double ga = gamma * e.lambda_actor, gc = gamma * lambda_critic;
      return {0.0, e.v, gamma, ga, e.d, gamma, gc, e.d};
    }
  }
  ASYPPO_HD gae_state apply(const gae_token& e, const gae_state& x) const {
    if (skip && !e.valid) return x;
    const double g = gamma * x.s;
    if constexpr (Joint) {
      const double a = e.d + g + gamma * lambda_critic * x.a;
      return {e.v, a, a};
    } else {
      return {e.v, e.d + g + gamma * e.lambda_actor * x.a, e.d + g + gamma * lambda_critic * x.c};
    }
  }
  ASYPPO_HD gae_state apply(const value_type& e, const gae_state& x) const {
    if constexpr (Joint) {
      const double a = e.q * x.s + e.u * x.a + e.o;
      return {e.p * x.s + e.os, a, a};
    } else {
      return {e.p * x.s + e.os, e.qa * x.s + e.ua * x.a + e.oa, e.qc * x.s + e.uc * x.c + e.oc};
    }
  }
  ASYPPO_HD value_type combine(const value_type& f, const value_type& e) const {
    if constexpr (Joint) {
      return {e.p * f.p, e.p * f.os + e.os, e.q * f.p + e.u * f.q, e.u * f.u, e.q * f.os + e.u * f.o + e.o};
    } else {
      return {e.p * f.p,          e.p * f.os + e.os,
              e.qa * f.p + e.ua * f.qa, e.ua * f.ua, e.qa * f.os + e.ua * f.oa + e.oa,
              e.qc * f.p + e.uc * f.qc, e.uc * f.uc, e.qc * f.os + e.uc * f.oc + e.oc};
    }
  }
};

template <class T, int NK = 0>
struct gae_element {
  ensemble_point<T, NK> point;
  token_view<const T> rewards;
  mask_view mask;
  double lambda_actor;
  const double* row_lambda_actor;  // null: lambda_actor for every row
  ASYPPO_HD gae_token operator()(index_t b, index_t t) const {
    const double la = row_lambda_actor ? row_lambda_actor[b] : lambda_actor;
    // Values and reward are read whether or not the token is valid (in bounds: t < cols) and a masked
    // token's are dropped by a select: no load waits for the mask's, so a device has a run's loads in flight.
    const bool valid = mask(b, t) != 0;
    const double v = point.mean(b, t), d = static_cast<double>(rewards(b, t)) - v;
    return valid ? gae_token{v, d, la, true} : gae_token{0.0, 0.0, la, false};
  }
};

/// Lets a caller fuse more per-token work into the GAE pass: hook(b, t, valid, advantage&, token) runs
/// before the advantage is stored and may change it (the advantage step applies I^A there); token is
/// what hook.load(b, t, valid) read there (the sink's load: read ahead of the stores on a device).
struct no_gae_hook {
  struct token_type {};
  ASYPPO_HD token_type load(index_t, index_t, bool) const { return {}; }
  ASYPPO_HD void operator()(index_t, index_t, bool, double&, token_type) const {}
};

template <class T, class Hook = no_gae_hook, int NK = 0>
struct gae_sink {
  ensemble_point<T, NK> point;
  mask_view mask;
  gae_outputs<compute_type_t<T>> out;
  bool raw;
  bool skip;
  Hook hook = {};
#if defined(ASYPPO_SIMD_AVX2)
  /// The CPU backend's row scan hands its blocks of rows here: four rows per AVX2 vector when the
  /// layout allows (core/simd/gae_lanes.hpp, same bits), else false and it scans them one by one.
  template <class Elem, bool Joint, class Range>
  bool scan_rows(const Elem& el, const gae_compose<Joint>& op, scan_direction dir, index_t lo, index_t hi,
                 const Range& range) const {
    return gae_scan_rows_simd(*this, el, op, dir, lo, hi, range);
  }
#endif
  /// The scan sink split into what it reads at (b, t) and the rest (backend/patterns.hpp: a device
  /// reads the tokens of a run before it stores any of them).
  struct token_type {
    typename Hook::token_type hook;
    bool valid;
  };
  ASYPPO_HD token_type load(index_t b, index_t t) const {
    const bool valid = mask(b, t) != 0;
    return {hook.load(b, t, valid), valid};
  }
  ASYPPO_HD void operator()(index_t b, index_t t, const gae_state& x) const { store(b, t, x, load(b, t)); }
  ASYPPO_HD void store(index_t b, index_t t, const gae_state& x, const token_type& tok) const {
    using C = compute_type_t<T>;
    const bool valid = tok.valid;
    double a = valid || raw ? x.a : 0.0;
    hook(b, t, valid, a, tok.hook);
    if (out.advantages.data) out.advantages(b, t) = static_cast<C>(a);
    if (valid) {  // at a valid token the state's s is V-bar[b,t] itself (both semantics)
      if (out.returns.data) out.returns(b, t) = static_cast<C>(x.c + x.s);
      if (out.std.data) out.std(b, t) = static_cast<C>(point.std_about(b, t, x.s));
    } else {
      // Raw returns: verl adds the value tensor as given (R = A + V); OpenRLHF adds V*m = 0.
      const double v = raw && skip ? point.mean(b, t) : 0.0;
      if (out.returns.data) out.returns(b, t) = raw ? static_cast<C>(x.c + v) : C(0);
      if (out.std.data) out.std(b, t) = C(0);
    }
  }
};

/// The sink's outputs at the initial scan state (the padding after a row's last valid token):
/// advantage 0, return 0 + V-bar (raw skip) or 0, std 0.
template <class T>
struct gae_initial_state {
  using C = compute_type_t<T>;
  gae_sink<T> sink;
  ASYPPO_HD void operator()(index_t b, index_t t) const { sink(b, t, gae_state{0.0, 0.0, 0.0}); }
  ASYPPO_HD static void zero(const token_view<C>& o, index_t b, index_t t0, index_t t1) {
    if (!o.data) return;
    C* p = &o(b, 0);
    for (index_t t = t0; t < t1; ++t) p[t] = C(0);
  }
  /// The same over [t0, t1) for contiguous rows and K <= 2, in plain loops the compiler vectorises.
  ASYPPO_HD void span(index_t b, index_t t0, index_t t1) const {
    const gae_outputs<C>& out = sink.out;
    const critic_view<const T>& v = sink.point.values;
    const index_t K = v.extent[0];
    const bool mean_needed = sink.raw && sink.skip && out.returns.data;
    if (!unit_inner_stride(out.advantages) || !unit_inner_stride(out.returns) || !unit_inner_stride(out.std) ||
        (mean_needed && (K > 2 || !unit_inner_stride(v)))) {
      for (index_t t = t0; t < t1; ++t) (*this)(b, t);
      return;
    }
    zero(out.advantages, b, t0, t1);
    zero(out.std, b, t0, t1);
    if (!out.returns.data) return;
    C* r = &out.returns(b, 0);
    if (!mean_needed) {
      for (index_t t = t0; t < t1; ++t) r[t] = C(0);
    } else if (K == 1) {  // 0.0 + V, as the sink computes it (so -0 becomes +0 there too)
      const T* v0 = &v(0, b, 0);
      for (index_t t = t0; t < t1; ++t) r[t] = static_cast<C>(0.0 + static_cast<double>(v0[t]) * sink.point.inv_k);
    } else {
      const T *v0 = &v(0, b, 0), *v1 = &v(1, b, 0);
      for (index_t t = t0; t < t1; ++t) r[t] = static_cast<C>(0.0 + 0.5 * (static_cast<double>(v0[t]) + static_cast<double>(v1[t])));
    }
  }
};

#if defined(ASYPPO_SIMD_AVX2)
/// gae_sink::scan_rows: rows [lo, hi) of a reverse GAE scan, four at a time on AVX2 lanes
/// (core/simd/gae_lanes.hpp: ordering, grouping and bit-identity); false when this sink, its hook or
/// the layout (strided rows, K > 2, no AVX2) has no lane path.
template <class T, class Hook, int NK, bool Joint, class Range>
bool gae_scan_rows_simd(const gae_sink<T, Hook, NK>& sk, const gae_element<T, NK>& el, const gae_compose<Joint>& op,
                        scan_direction dir, index_t lo, index_t hi, const Range& range) {
  using hook_lanes = gae_hook_lanes<Hook>;
  if constexpr ((NK != 1 && NK != 2) || !hook_lanes::available) {
    return false;
  } else {
    const critic_view<const T>& v = el.point.values;
    if (dir != scan_direction::reverse || hi - lo < 4 || simd_width() < 4 || !unit_inner_stride(v) ||
        !unit_inner_stride(el.rewards) || !unit_inner_stride(el.mask) || !unit_inner_stride(sk.out.advantages) ||
        !unit_inner_stride(sk.out.returns) || !unit_inner_stride(sk.out.std) || !hook_lanes::supported(sk.hook))
      return false;
    // Rows by range length, longest first (ties: row order), so that each group of four is alike.
    struct row_range {
      index_t b, t0, t1;
    };
    std::vector<row_range> rows, scalar_rows;  // scalar_rows: those the hook's lanes decline
    rows.reserve(static_cast<std::size_t>(hi - lo));
    for (index_t b = lo; b < hi; ++b) {
      row_range r{b, 0, 0};
      range(b, r.t0, r.t1);
      (hook_lanes::on_lanes(sk.hook, b) ? rows : scalar_rows).push_back(r);
    }
    for (const row_range& r : scalar_rows) scan_row(dir, el, op, sk, r.b, r.t0, r.t1, op.initial());
    std::stable_sort(rows.begin(), rows.end(),
                     [](const row_range& x, const row_range& y) { return x.t1 - x.t0 > y.t1 - y.t0; });
    const auto row_ptr = [](const auto& view, index_t b) { return view.data ? &view(b, 0) : nullptr; };
    std::size_t g = 0;
    // 16-bit values and rewards: the lanes read float rows, each group's columns widened first (same bits).
    using L = std::conditional_t<is_half_type_v<T>, float, T>;
    for (; g + 4 <= rows.size(); g += 4) {
      gae_lanes::rows4<L, NK> q{};
      index_t b4[4], C = rows[g + 3].t1 - rows[g + 3].t0;  // the shortest of the four
      C -= C % 4;
      for (int r = 0; r < 4; ++r) {
        const index_t b = b4[r] = rows[g + static_cast<std::size_t>(r)].b;
        const index_t end = rows[g + static_cast<std::size_t>(r)].t1;
        if constexpr (is_half_type_v<T>) {
          q.v0[r] = widened_span(&v(0, b, 0), end - C, end, 3 * r);
          q.v1[r] = NK == 2 ? widened_span(&v(NK - 1, b, 0), end - C, end, 3 * r + 1) : nullptr;
          q.rw[r] = widened_span(&el.rewards(b, 0), end - C, end, 3 * r + 2);
        } else {
          q.v0[r] = &v(0, b, 0);
          q.v1[r] = NK == 2 ? &v(NK - 1, b, 0) : nullptr;
          q.rw[r] = &el.rewards(b, 0);
        }
        q.m[r] = &el.mask(b, 0);
        q.adv[r] = row_ptr(sk.out.advantages, b);
        q.ret[r] = row_ptr(sk.out.returns, b);
        q.sd[r] = row_ptr(sk.out.std, b);
        q.end[r] = end;
        q.gla[r] = op.gamma * (el.row_lambda_actor ? el.row_lambda_actor[b] : el.lambda_actor);
      }
      q.gamma = op.gamma, q.glc = op.gamma * op.lambda_critic;
      q.inv_k = sk.point.inv_k, q.inv_d = sk.point.inv_d, q.half_span = sk.point.half_span;
      q.skip = op.skip, q.raw = sk.raw;
      double s[4] = {0, 0, 0, 0}, a[4] = {0, 0, 0, 0}, c[4] = {0, 0, 0, 0};
      if (C > 0) {
        hook_lanes hl(sk.hook, b4);
        gae_lanes::scan4(q, hl, C, s, a, c);
      }
      for (int r = 0; r < 4; ++r) {  // the rest of each row, from its lane's state
        const row_range& rr = rows[g + static_cast<std::size_t>(r)];
        scan_row(dir, el, op, sk, rr.b, rr.t0, rr.t1 - C, gae_state{s[r], a[r], c[r]});
      }
    }
    for (; g < rows.size(); ++g) scan_row(dir, el, op, sk, rows[g].b, rows[g].t0, rows[g].t1, op.initial());
    return true;
  }
}
#endif

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

/// The scan itself, over the columns of range (each row's from its last visited column backwards:
/// the caller guarantees the columns after it are padding, which the scan does not visit), then
/// padding(b, t) at those columns (the padding's outputs; fused with the scan where the backend can:
/// row_scan_then_fill); arguments already validated.
template <class Backend, class T, class Hook, class Range, class Padding>
void gae_unchecked(const Backend& be, critic_view<const T> values, token_view<const T> rewards, mask_view mask,
                   const gae_options& opt, const gae_outputs<compute_type_t<T>>& out, std_kind kind, Hook hook,
                   Range range, Padding padding) {
  const index_t B = rewards.extent[0], Tn = rewards.extent[1];
  if (B * Tn == 0) return;
  ensemble_point<T> point{values, kind == std_kind::unbiased};
  auto row_lambda = be.template allocate<double>(opt.adaptive_lambda_alpha > 0 ? B : 0);
  if (opt.adaptive_lambda_alpha > 0)
    be.row_reduce(B, Tn, count_valid{mask},
                  adaptive_lambda_sink{row_lambda.data(), opt.adaptive_lambda_alpha, opt.adaptive_lambda_min,
                                       opt.adaptive_lambda_max},
                  range);
  const bool skip = opt.semantics == gae_mask_semantics::skip;
  const double* row_la = opt.adaptive_lambda_alpha > 0 ? row_lambda.data() : nullptr;
  const bool joint = !row_la && opt.lambda_actor == opt.lambda_critic;
  with_critic_count(point, [&](const auto& pt) {
    constexpr int NK = std::remove_cvref_t<decltype(pt)>::critic_count;
    const gae_element<T, NK> elem{pt, rewards, mask, opt.lambda_actor, row_la};
    const gae_sink<T, Hook, NK> sink{pt, mask, out, opt.padding == padding_mode::raw, skip, hook};
    const auto scan = [&](auto op) { row_scan_then_fill(be, scan_direction::reverse, B, Tn, elem, op, sink, range, padding); };
    if (joint)
      scan(gae_compose<true>{opt.gamma, opt.lambda_critic, skip});
    else
      scan(gae_compose<false>{opt.gamma, opt.lambda_critic, skip});
  });
}

}  // namespace detail

/// GAE on the mean of values [K,B,T] (K >= 1) with token rewards [B,T] and mask [B,T].
/// Outputs are optional views (advantages, returns, std); they may alias nothing among the
/// inputs. Throws asyppo::error on bad shapes, gamma/lambda outside [0,1], bad adaptive-lambda
/// settings, or (check_finite) NaN/Inf in values or rewards on a valid token.
template <class Backend, class T>
void gae(const Backend& be, critic_view<const T> values, token_view<const T> rewards, mask_view mask,
         const gae_options& opt, const gae_outputs<compute_type_t<T>>& out, std_kind kind = std_kind::population) {
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
  detail::check_memory(be, where, "values", values, "rewards", rewards, "mask", mask, "out.advantages", out.advantages,
                       "out.returns", out.returns, "out.std", out.std);
  detail::check_gae_options(where, opt);
  const auto span = detail::make_row_span(be, mask);
  if (opt.check_finite)
    detail::check_finite(be, where, "values or rewards", B, Tn,
                         detail::count_nonfinite_tokens<T, 1, 1>{{values}, {rewards}, mask}, span.heads());
  // The padding after each row's last valid token: the scan state there is still the initial one
  // (both semantics), so raw padding is what the sink writes at that state, and zero padding is 0.
  if (opt.padding == padding_mode::raw)
    detail::gae_unchecked(be, values, rewards, mask, opt, out, kind, detail::no_gae_hook{}, span.heads(),
                          detail::gae_initial_state<T>{{{values, kind == std_kind::unbiased}, mask, out, true,
                                                        opt.semantics == gae_mask_semantics::skip}});
  else
    detail::gae_unchecked(be, values, rewards, mask, opt, out, kind, detail::no_gae_hook{}, span.heads(),
                          detail::zero_fill_of(out.advantages, out.returns, out.std));
}

}  // namespace asyppo
