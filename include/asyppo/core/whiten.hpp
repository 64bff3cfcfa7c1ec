// asyppo/core/whiten.hpp: masked whitening over the whole batch (docs/algorithm.md, whitening).
//
//   y = (x - mu) / sqrt(var + eps)      eps_mode = add (verl, TRL, ROLL; default)
//   y = (x - mu) / sqrt(max(var, eps))  eps_mode = floor (OpenRLHF)
// with mu, var the masked moments of core/moments.hpp (unbiased by default, as verl), and
// mu added back when shift_mean is false. Masked-out positions get 0 (padding_mode::zero,
// default) or the same formula as valid ones (padding_mode::raw, what verl returns).
// in == out is allowed (in place). An empty mask (N = 0) writes zeros (raw: x unchanged). With
// eps = 0 and zero variance (all valid values equal) the scale is taken as 0: outputs are 0
// (plus mu when shift_mean is false), never Inf or NaN.
#pragma once

#include <cmath>

#include "asyppo/core/modes.hpp"
#include "asyppo/core/moments.hpp"
#include "asyppo/core/validate.hpp"

namespace asyppo {

enum class eps_mode { add, floor };

struct whiten_options {
  bool shift_mean = true;
  bool unbiased = true;
  double eps = 1e-8;
  eps_mode eps_placement = eps_mode::add;
  padding_mode padding = padding_mode::zero;
  bool check_finite = true;
};

namespace detail {

template <class T>
struct whiten_kernel {
  token_view<const T> x;
  mask_view mask;
  token_view<T> out;
  double mean, scale, add_back;
  bool raw;
  ASYPPO_HD void operator()(index_t b, index_t t) const {
    const bool valid = mask(b, t) != 0;
    if (valid || raw) out(b, t) = static_cast<T>((static_cast<double>(x(b, t)) - mean) * scale + add_back);
    else out(b, t) = T(0);
  }
  /// The same over [t0, t1) of a contiguous row, as one select per token (vectorises; out may be x).
  ASYPPO_HD void span(index_t b, index_t t0, index_t t1) const {
    if (!unit_inner_stride(x) || !unit_inner_stride(mask) || !unit_inner_stride(out)) {
      for (index_t t = t0; t < t1; ++t) (*this)(b, t);
      return;
    }
    const T* xp = &x(b, 0);
    const std::uint8_t* m = &mask(b, 0);
    T* o = &out(b, 0);
    for (index_t t = t0; t < t1; ++t) {
      const T y = static_cast<T>((static_cast<double>(xp[t]) - mean) * scale + add_back);
      o[t] = (raw || m[t] != 0) ? y : T(0);
    }
  }
};

inline void check_whiten_options(const char* where, const whiten_options& o) {
  if (!(o.eps >= 0.0) || !std::isfinite(o.eps)) fail(where, "eps", "must be finite and >= 0, got ", o.eps);
}

template <class Backend, class T, class Comm>
masked_moments whiten_unchecked(const Backend& be, token_view<const T> x, mask_view mask, token_view<T> out,
                                const whiten_options& opt, const Comm& comm) {
  const index_t B = x.extent[0], Tn = x.extent[1];
  const masked_moments mo = masked_moments_unchecked(be, x, mask, opt.unbiased, comm);
  double scale = 0.0, mean = mo.mean;
  if (mo.count > 0) {
    const double v = opt.eps_placement == eps_mode::add ? mo.var + opt.eps : (mo.var > opt.eps ? mo.var : opt.eps);
    scale = v > 0 ? 1.0 / std::sqrt(v) : 0.0;
  } else if (opt.padding == padding_mode::raw) {
    scale = 1.0;  // nothing valid: raw mode leaves x as it is
    mean = 0.0;
  }
  be.for_each(B, Tn, whiten_kernel<T>{x, mask, out, mean, scale, opt.shift_mean ? 0.0 : mo.mean,
                                       opt.padding == padding_mode::raw});
  return mo;
}

}  // namespace detail

/// Whitens x [B,T] over mask [B,T] into out [B,T] (may be x itself). Returns the moments used.
/// Throws asyppo::error on bad shapes, negative or non-finite eps, or (check_finite) NaN/Inf
/// in x on a valid token.
template <class Backend, class T, class Comm = single_process>
masked_moments masked_whiten(const Backend& be, token_view<const T> x, mask_view mask, token_view<T> out,
                             const whiten_options& opt = {}, const Comm& comm = {}) {
  constexpr const char* where = "asyppo::masked_whiten";
  detail::check_view(where, "x", x);
  const index_t B = x.extent[0], Tn = x.extent[1];
  detail::check_input(where, "mask", mask, {B, Tn});
  if (!detail::present(mask) && B * Tn > 0) detail::fail(where, "mask", "is required");
  detail::check_output(where, "out", out, {B, Tn});
  detail::check_memory(be, where, "x", x, "mask", mask, "out", out);
  detail::check_whiten_options(where, opt);
  if (opt.check_finite) detail::check_finite_tokens<Backend, T>(be, where, "x", B, Tn, {}, x, mask);
  return detail::whiten_unchecked(be, x, mask, out, opt, comm);
}

}  // namespace asyppo
