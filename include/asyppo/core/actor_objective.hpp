// asyppo/core/actor_objective.hpp: the whole AsyPPO actor loss in one call (docs/algorithm.md,
// Eq. L5, built from L1-L4).
//
//   L = Agg(I^A l_clip)  -  beta Agg(I^H H)  +  kappa Agg(kl(logp - ref_logp))
// with the clipped surrogate of core/policy_loss.hpp (I^A = adv_mask), the entropy bonus of
// core/entropy.hpp (I^H = entropy_mask, beta = entropy_coef) and the KL penalty of core/kl.hpp
// (kappa = kl_coef), all with the SAME aggregation and normaliser (core/aggregation.hpp). Masked
// tokens (I^A = 0, I^H = 0) contribute 0 to their term and keep their place in the normaliser.
// Outputs: grad_logp = dL/dlogp (surrogate + kappa * KL gradient) and grad_entropy = dL/dH
// (= -beta w_b I^H), both exactly 0 on masked/padded tokens; the surrogate part is also exactly 0 on
// I^A = 0 tokens and the entropy part on I^H = 0 tokens. Results: the total and each part with its
// metrics (policy_loss_result, entropy_bonus_result, kl_loss_result: the same numbers the three
// separate calls give, up to float rounding of the fused sum).
// The entropy tensor is required when beta != 0 and ref_logp when kappa != 0; a ref_logp given with
// kappa = 0 still yields the KL metrics (its gradient contribution is 0).
// One fused pass: a single reduce whose add() evaluates all three terms at token i and writes both
// gradients at position i only (every i is visited exactly once). Double accumulation; the CPU
// backend's results are bit-identical for any thread count, and for any SIMD width (contiguous rows
// run on SIMD lanes on x86-64: core/simd/token_kernels.inc).
// Inputs in float, double, bfloat16 or float16 (read exactly); outputs and gradients in
// compute_type_t of the input type (half_types.hpp: float for the 16-bit types): the float call's bits.
#pragma once

#include <cmath>
#include <cstdint>

#include "asyppo/core/aggregation.hpp"
#include "asyppo/core/entropy.hpp"
#include "asyppo/core/kl.hpp"
#include "asyppo/core/policy_loss.hpp"

namespace asyppo {

struct actor_objective_options {
  double clip_low = 0.2;          ///< eps_low, in [0, 1]
  double clip_high = 0.2;         ///< eps_high, >= 0 (AsyPPO code: 0.28)
  double dual_clip = 0.0;         ///< c; 0 = off, else > 1
  double log_ratio_clamp = 20.0;  ///< 0 = off
  double entropy_coef = 0.0;      ///< beta, finite
  double kl_coef = 0.0;           ///< kappa, finite
  kl_options kl{};
  loss_aggregation aggregation = loss_aggregation::seq_mean_token_mean;  ///< E15
  loss_normalizer normalizer{};
  bool check_finite = true;  ///< reject NaN/Inf inputs on valid tokens
};

template <class T>
struct actor_objective_inputs {
  token_view<const T> logp;        ///< [B,T]
  token_view<const T> old_logp;    ///< [B,T]
  token_view<const T> advantages;  ///< [B,T]
  mask_view mask;                  ///< [B,T] required
  mask_view adv_mask{};            ///< [B,T] I^A (optional)
  token_view<const T> entropy{};   ///< [B,T] H (required when entropy_coef != 0)
  mask_view entropy_mask{};        ///< [B,T] I^H (optional)
  token_view<const T> ref_logp{};  ///< [B,T] (required when kl_coef != 0)
};

template <class T>
struct actor_objective_outputs {
  token_view<T> grad_logp{};     ///< [B,T] optional
  token_view<T> grad_entropy{};  ///< [B,T] optional
};

struct actor_objective_result {
  double total = 0;  ///< policy.loss + entropy.loss + kl.loss
  policy_loss_result policy{};
  entropy_bonus_result entropy{};
  kl_loss_result kl{};
  loss_normalizer normalizer{};
};

namespace detail {

struct actor_acc {
  policy_acc pg;
  entropy_acc ent;
  kl_acc kl;
};

/// The inputs of one position as add() reads them (optional views: zero values, masks on), so that a
/// device can load several positions before computing any (backend/patterns.hpp, load/apply reducers).
template <class T>
struct actor_token {
  T lp, olp, a, h, ref;
  std::uint8_t m, am, hm;
};

template <class T>
struct actor_reducer {
  token_view<const T> logp, old_logp, adv, entropy, ref;
  mask_view mask, adv_mask, entropy_mask;
  row_weights w;
  token_view<compute_type_t<T>> grad_logp, grad_entropy;  // optional each
  surrogate_params sp;
  kl_params kp;
  double beta, kappa;
  using value_type = actor_acc;
  using token_type = actor_token<T>;
  ASYPPO_HD actor_acc identity() const { return {{0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0}, {0, 0, 0}}; }
  ASYPPO_HD void add(actor_acc& acc, index_t b, index_t t) const { apply(acc, b, t, load(b, t)); }
  ASYPPO_HD actor_token<T> load(index_t b, index_t t) const {
    actor_token<T> k;
    k.m = mask(b, t);
    k.lp = logp(b, t), k.olp = old_logp(b, t), k.a = adv(b, t);
    k.h = entropy.data ? entropy(b, t) : T{};
    k.ref = ref.data ? ref(b, t) : T{};
    k.am = adv_mask.data ? adv_mask(b, t) : std::uint8_t(1);
    k.hm = entropy_mask.data ? entropy_mask(b, t) : std::uint8_t(1);
    return k;
  }
  // Writes both gradients at position (b, t) only; every position is visited exactly once.
  ASYPPO_HD void apply(actor_acc& acc, index_t b, index_t t, const actor_token<T>& k) const {
    double gl = 0.0, gh = 0.0;
    if (k.m) {
      const double wb = w[b];
      const double lp = static_cast<double>(k.lp);
      // Surrogate (I^A).
      gl = policy_token(acc.pg, wb, lp, static_cast<double>(k.olp), static_cast<double>(k.a), k.am != 0, sp);
      // Entropy bonus (I^H).
      const bool keep_h = k.hm != 0;
      acc.ent.valid += 1;
      if (entropy.data) {
        const double h = static_cast<double>(k.h);
        acc.ent.sum += h;
        acc.ent.agg += wb * h;
        acc.ent.filtered_agg += keep_h ? wb * h : 0.0;  // selects: I^H zeros are scattered
      }
      acc.ent.filtered += keep_h ? 0 : 1;
      gh = keep_h ? -beta * wb : 0.0;
      // KL penalty.
      if (ref.data) {
        const kl_value kv = kl_token(lp - static_cast<double>(k.ref), kp);
        acc.kl.agg += wb * kv.value;
        acc.kl.sum += kv.value;
        acc.kl.valid += 1;
        if (kappa != 0.0) gl += kappa * wb * kv.ddelta;
      }
    }
    if (grad_logp.data) grad_logp(b, t) = static_cast<compute_type_t<T>>(gl);
    if (grad_entropy.data) grad_entropy(b, t) = static_cast<compute_type_t<T>>(gh);
  }
  /// add() over [t0, t1) on contiguous rows: SIMD lanes for whole lane groups, then add() (same bits).
  ASYPPO_HD void add_span(actor_acc& acc, index_t b, index_t t0, index_t t1) const {
    index_t t = t0;
#if defined(ASYPPO_SIMD_SSE2)  // host x86-64, not nvcc
    if constexpr (is_half_type_v<T>) {  // 16-bit inputs: the row widened, then the float span (same bits)
      const actor_reducer<float> wide{widened_row(logp, b, t0, t1, 0),
                                      widened_row(old_logp, b, t0, t1, 1),
                                      widened_row(adv, b, t0, t1, 2),
                                      widened_row(entropy, b, t0, t1, 3),
                                      widened_row(ref, b, t0, t1, 4),
                                      mask,
                                      adv_mask,
                                      entropy_mask,
                                      w,
                                      grad_logp,
                                      grad_entropy,
                                      sp,
                                      kp,
                                      beta,
                                      kappa};
      wide.add_span(acc, b, t0, t1);
      return;
    }
    if constexpr (!is_half_type_v<T>) {  // (16-bit inputs took the widened path above)
      if (unit_inner_stride(logp) && unit_inner_stride(old_logp) && unit_inner_stride(adv) && unit_inner_stride(entropy) &&
          unit_inner_stride(ref) && unit_inner_stride(mask) && unit_inner_stride(adv_mask) &&
          unit_inner_stride(entropy_mask) && unit_inner_stride(grad_logp) && unit_inner_stride(grad_entropy)) {
        const auto row = [b](auto v) { return v.data ? &v(b, 0) : nullptr; };
        t = actor_span_simd(acc.pg, acc.ent, acc.kl, row(logp), row(old_logp), row(adv), row(entropy), row(ref),
                            row(mask), row(adv_mask), row(entropy_mask), row(grad_logp), row(grad_entropy), w[b], beta,
                            kappa, t0, t1, sp, kp);
      }
    }
#endif
    for (; t < t1; ++t) add(acc, b, t);
  }
  ASYPPO_HD actor_acc combine(const actor_acc& a, const actor_acc& b) const {
    return {policy_acc_combine(a.pg, b.pg), entropy_acc_combine(a.ent, b.ent),
            {a.kl.agg + b.kl.agg, a.kl.sum + b.kl.sum, a.kl.valid + b.kl.valid}};
  }
};

}  // namespace detail

namespace detail {

/// Every check of actor_objective and actor_objective_to that reads no data (shapes, options, memory).
template <class Backend, class T>
void check_actor_objective(const Backend& be, const char* where, const actor_objective_inputs<T>& in,
                           const actor_objective_outputs<compute_type_t<T>>& out, const actor_objective_options& opt) {
  check_view(where, "logp", in.logp);
  const index_t B = in.logp.extent[0], Tn = in.logp.extent[1];
  check_input(where, "old_logp", in.old_logp, {B, Tn});
  check_input(where, "advantages", in.advantages, {B, Tn});
  check_required_mask(where, "mask", in.mask, B, Tn);
  check_optional_input(where, "adv_mask", in.adv_mask, {B, Tn});
  check_optional_input(where, "entropy", in.entropy, {B, Tn});
  check_optional_input(where, "entropy_mask", in.entropy_mask, {B, Tn});
  check_optional_input(where, "ref_logp", in.ref_logp, {B, Tn});
  check_optional_output(where, "grad_logp", out.grad_logp, {B, Tn});
  check_optional_output(where, "grad_entropy", out.grad_entropy, {B, Tn});
  check_surrogate_options(where, opt.clip_low, opt.clip_high, opt.dual_clip, opt.log_ratio_clamp);
  check_finite_scalar(where, "entropy_coef", opt.entropy_coef);
  check_finite_scalar(where, "kl_coef", opt.kl_coef);
  check_kl_options(where, opt.kl);
  if (opt.entropy_coef != 0.0 && !present(in.entropy) && B * Tn > 0)
    fail(where, "entropy", "is required when entropy_coef != 0 (entropy_coef = ", opt.entropy_coef, ")");
  if (opt.kl_coef != 0.0 && !present(in.ref_logp) && B * Tn > 0)
    fail(where, "ref_logp", "is required when kl_coef != 0 (kl_coef = ", opt.kl_coef, ")");
  check_aggregation(where, opt.aggregation);
  check_memory(be, where, "logp", in.logp, "old_logp", in.old_logp, "advantages", in.advantages, "mask", in.mask,
               "adv_mask", in.adv_mask, "entropy", in.entropy, "entropy_mask", in.entropy_mask, "ref_logp",
               in.ref_logp, "grad_logp", out.grad_logp, "grad_entropy", out.grad_entropy);
  check_normalizer_fields(where, "normalizer", opt.normalizer);
}

template <class Backend, class T, class Range>
void check_actor_finite(const Backend& be, const char* where, const actor_objective_inputs<T>& in, Range range) {
  check_finite_views<Backend, T>(be, where, "logp, old_logp, advantages, entropy or ref_logp", in.mask, range, in.logp,
                                 in.old_logp, in.advantages, in.entropy, in.ref_logp);
}

template <class T>
actor_reducer<T> actor_reducer_of(const actor_objective_inputs<T>& in,
                                  const actor_objective_outputs<compute_type_t<T>>& out, const actor_objective_options& opt,
                                  row_weights weights) {
  return {in.logp,      in.old_logp,     in.advantages,  in.entropy, in.ref_logp,  in.mask, in.adv_mask,
          in.entropy_mask, weights,      out.grad_logp,  out.grad_entropy,
          {opt.clip_low, opt.clip_high, opt.dual_clip, opt.log_ratio_clamp}, kl_params_of(opt.kl), opt.entropy_coef,
          opt.kl_coef};
}

/// The result of the fused reduction (L5), on the host or on the device: each part's as its own call gives.
struct actor_result_of {
  double beta, kappa;
  loss_normalizer norm;
  ASYPPO_HD actor_objective_result operator()(const actor_acc& a) const {
    actor_objective_result r;
    r.normalizer = norm;
    r.policy = policy_result_of{norm}(a.pg);
    r.entropy = entropy_result_of{beta, norm}(a.ent);
    r.kl = kl_result_of{kappa, norm}(a.kl);
    r.total = r.policy.loss + r.entropy.loss + r.kl.loss;
    return r;
  }
};

}  // namespace detail

/// The AsyPPO actor objective (see the header comment). Throws asyppo::error (and writes nothing)
/// on bad shapes, bad clip/dual/clamp options, non-finite entropy_coef or kl_coef, a missing
/// entropy (beta != 0) or ref_logp (kappa != 0), a bad normaliser, or (check_finite) NaN/Inf inputs
/// on a valid token.
template <class Backend, class T>
actor_objective_result actor_objective(const Backend& be, const actor_objective_inputs<T>& in,
                                       const actor_objective_outputs<compute_type_t<T>>& out = {},
                                       const actor_objective_options& opt = {}) {
  constexpr const char* where = "asyppo::actor_objective";
  detail::check_actor_objective(be, where, in, out, opt);
  const auto [acc, norm] = detail::fused_loss(
      be, where, in.mask, opt.aggregation, opt.normalizer, opt.check_finite,
      [&](auto range) { detail::check_actor_finite(be, where, in, range); },
      [&](detail::row_weights w) { return detail::actor_reducer_of(in, out, opt, w); }, out.grad_logp, out.grad_entropy);
  return detail::actor_result_of{opt.entropy_coef, opt.kl_coef, norm}(acc);
}

/// The device-result variant of actor_objective: the same gradients, and the result written to
/// *result in the backend's memory (device memory on a GPU; result->normalizer is opt.normalizer)
/// instead of returned. With opt.check_finite = false it makes no host round trip (nothing waits for
/// the stream: a step built from such calls can be captured in a CUDA graph): the per-row weights come
/// from opt.normalizer, so every field the aggregation uses must be given (>= 0; tokens for
/// token-mean, sequences for the seq-mean modes, norm_length > 0 for seq-mean-token-sum-norm), and it
/// is not checked against this call's own counts. Throws like actor_objective, and on a null result.
template <class Backend, class T>
void actor_objective_to(const Backend& be, const actor_objective_inputs<T>& in,
                        const actor_objective_outputs<compute_type_t<T>>& out,
                        actor_objective_result* result, const actor_objective_options& opt = {}) {
  constexpr const char* where = "asyppo::actor_objective_to";
  detail::check_actor_objective(be, where, in, out, opt);
  detail::check_loss_to(be, where, result, opt.aggregation, opt.normalizer);
  detail::fused_loss_to(
      be, in.mask, opt.aggregation, opt.normalizer, opt.check_finite,
      [&](auto range) { detail::check_actor_finite(be, where, in, range); },
      [&](detail::row_weights w) { return detail::actor_reducer_of(in, out, opt, w); },
      result, detail::actor_result_of{opt.entropy_coef, opt.kl_coef, opt.normalizer}, out.grad_logp,
      out.grad_entropy);
}

}  // namespace asyppo
