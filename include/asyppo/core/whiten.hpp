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
#include "asyppo/core/row_span.hpp"
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

/// y = (x - mean) scale + add_back (W2, W3) from the moments and the options.
struct whiten_coeffs {
  double mean, scale, add_back;
};
ASYPPO_HD inline whiten_coeffs whiten_coeffs_of(const masked_moments& mo, const whiten_options& opt) {
  whiten_coeffs c{mo.mean, 0.0, opt.shift_mean ? 0.0 : mo.mean};
  if (mo.count > 0) {
    const double v = opt.eps_placement == eps_mode::add ? mo.var + opt.eps : (mo.var > opt.eps ? mo.var : opt.eps);
    c.scale = v > 0 ? 1.0 / sqrt(v) : 0.0;
  } else if (opt.padding == padding_mode::raw) {
    c.scale = 1.0;  // nothing valid: raw mode leaves x as it is
    c.mean = 0.0;
  }
  return c;
}

template <class T>
whiten_kernel<T> whiten_kernel_of(token_view<const T> x, mask_view mask, token_view<T> out, const whiten_coeffs& c,
                                  const whiten_options& opt) {
  return {x, mask, out, c.mean, c.scale, c.add_back, opt.padding == padding_mode::raw};
}

template <class Backend, class T, class Comm>
masked_moments whiten_unchecked(const Backend& be, token_view<const T> x, mask_view mask, token_view<T> out,
                                const whiten_options& opt, const Comm& comm) {
  const index_t B = x.extent[0], Tn = x.extent[1];
  const masked_moments mo = masked_moments_unchecked(be, x, mask, opt.unbiased, comm);
  be.for_each(B, Tn, whiten_kernel_of(x, mask, out, whiten_coeffs_of(mo, opt), opt));
  return mo;
}

// ---- masked_whiten_to: the moments and coefficients stay where the data is ----------------------
/// What the device-resident passes share (backend memory).
struct whiten_state {
  masked_moments moments;
  whiten_coeffs coeffs;
};

/// Pass 1's sink: the provisional moments.
template <class V>
struct whiten_first_sink {
  whiten_state* st;
  ASYPPO_HD void operator()(const V& a) const { st->moments = moments_first(a.n, a.s.total()); }
};

/// Pass 2: masked_sum_reducer about the provisional mean, read from the state when the pass runs.
template <class T>
struct sum_about_state_mean {
  masked_sum_reducer<T> r;  // center set from the state
  const whiten_state* st;
  using value_type = typename masked_sum_reducer<T>::value_type;
  ASYPPO_HD masked_sum_reducer<T> at_mean() const {
    masked_sum_reducer<T> c = r;
    c.center = st->moments.mean;
    return c;
  }
  ASYPPO_HD value_type identity() const { return r.identity(); }
  ASYPPO_HD void add(value_type& acc, index_t b, index_t t) const { at_mean().add(acc, b, t); }
  ASYPPO_HD void add_span(value_type& acc, index_t b, index_t t0, index_t t1) const { at_mean().add_span(acc, b, t0, t1); }
  ASYPPO_HD value_type combine(const value_type& a, const value_type& b) const { return r.combine(a, b); }
};

/// Pass 2's sink: the corrected moments and the whitening coefficients (and a copy of the moments for
/// the caller).
template <class V>
struct whiten_second_sink {
  whiten_state* st;
  masked_moments* result;  // optional
  whiten_options opt;
  ASYPPO_HD void operator()(const V& a) const {
    masked_moments m = st->moments;
    moments_second(m, a.s.total(), a.s2.total(), opt.unbiased);
    st->moments = m;
    st->coeffs = whiten_coeffs_of(m, opt);
    if (result) *result = m;
  }
};

/// The whitening pass with the coefficients read from the state.
template <class T>
struct whiten_from_state {
  whiten_kernel<T> k;  // coefficients set from the state
  const whiten_state* st;
  ASYPPO_HD whiten_kernel<T> with_coeffs() const {
    whiten_kernel<T> c = k;
    c.mean = st->coeffs.mean;
    c.scale = st->coeffs.scale;
    c.add_back = st->coeffs.add_back;
    return c;
  }
  ASYPPO_HD void operator()(index_t b, index_t t) const { with_coeffs()(b, t); }
  ASYPPO_HD void span(index_t b, index_t t0, index_t t1) const { with_coeffs().span(b, t0, t1); }
};

/// The two moment passes of masked_whiten_to and masked_moments_to: reduce_to passes that leave the
/// moments and the whitening coefficients in a backend state (returned), and a copy of the moments in
/// *moments (optional). range: the columns holding every valid token.
template <class Backend, class T, class Range>
auto moments_resident(const Backend& be, token_view<const T> x, mask_view mask, masked_moments* moments,
                      const whiten_options& opt, Range range) {
  const index_t B = x.extent[0], Tn = x.extent[1];
  using R = masked_sum_reducer<T>;
  using V = typename R::value_type;
  auto state = be.template allocate<whiten_state>(1);
  reduce_to(be, B, Tn, R{x, mask, 0.0, false}, range, whiten_first_sink<V>{state.data()});
  reduce_to(be, B, Tn, sum_about_state_mean<T>{R{x, mask, 0.0, true}, state.data()}, range,
            whiten_second_sink<V>{state.data(), moments, opt});
  return state;
}

/// masked_whiten_to after its checks: the moments and coefficients in a backend state, then the
/// whitening pass reads them.
template <class Backend, class T, class Range>
void whiten_resident(const Backend& be, token_view<const T> x, mask_view mask, token_view<T> out, masked_moments* moments,
                     const whiten_options& opt, Range range) {
  const auto state = moments_resident(be, x, mask, moments, opt, range);
  be.for_each(x.extent[0], x.extent[1], whiten_from_state<T>{whiten_kernel_of(x, mask, out, {}, opt), state.data()});
}

/// Whitening whose moments the caller does not need: in one process on a device backend through the
/// device state (whiten_resident: no host round trip), else whiten_unchecked. The same outputs.
template <class Backend, class T, class Comm>
void whiten_no_moments(const Backend& be, token_view<const T> x, mask_view mask, token_view<T> out,
                       const whiten_options& opt, const Comm& comm) {
  if constexpr (device_in_one_process<Backend, Comm>)
    whiten_resident(be, x, mask, out, nullptr, opt, make_row_span(be, mask).heads());
  else
    whiten_unchecked(be, x, mask, out, opt, comm);
}

template <class Backend, class T>
void check_whiten(const Backend& be, const char* where, token_view<const T> x, mask_view mask, token_view<T> out,
                  const whiten_options& opt) {
  check_view(where, "x", x);
  const index_t B = x.extent[0], Tn = x.extent[1];
  check_required_mask(where, "mask", mask, B, Tn);
  check_output(where, "out", out, {B, Tn});
  check_memory(be, where, "x", x, "mask", mask, "out", out);
  check_whiten_options(where, opt);
}

}  // namespace detail

/// Whitens x [B,T] over mask [B,T] into out [B,T] (may be x itself). Returns the moments used.
/// Throws asyppo::error on bad shapes, negative or non-finite eps, or (check_finite) NaN/Inf
/// in x on a valid token.
template <class Backend, class T, class Comm = single_process>
masked_moments masked_whiten(const Backend& be, token_view<const T> x, mask_view mask, token_view<T> out,
                             const whiten_options& opt = {}, const Comm& comm = {}) {
  constexpr const char* where = "asyppo::masked_whiten";
  detail::check_whiten(be, where, x, mask, out, opt);
  const index_t B = x.extent[0], Tn = x.extent[1];
  if (opt.check_finite) detail::check_finite_tokens<Backend, T>(be, where, "x", B, Tn, {}, x, mask);
  return detail::whiten_unchecked(be, x, mask, out, opt, comm);
}

/// The device-result variant of masked_whiten (one process): the same output bits, with the moments
/// and the whitening coefficients computed and kept where the data is (the optional reduce_to pattern),
/// and the moments written to *moments (optional, backend memory) instead of returned. With
/// opt.check_finite = false nothing waits for the device (gae followed by masked_whiten_to is verl's
/// compute_gae_advantage_return without a host round trip). Throws like masked_whiten.
template <class Backend, class T>
void masked_whiten_to(const Backend& be, token_view<const T> x, mask_view mask, token_view<T> out,
                      masked_moments* moments = nullptr, const whiten_options& opt = {}) {
  constexpr const char* where = "asyppo::masked_whiten_to";
  detail::check_whiten(be, where, x, mask, out, opt);
  if (moments) detail::check_memory(be, where, "moments", seq_view<masked_moments>(moments, 1));
  const index_t B = x.extent[0], Tn = x.extent[1];
  if (opt.check_finite) detail::check_finite_tokens<Backend, T>(be, where, "x", B, Tn, {}, x, mask);
  detail::whiten_resident(be, x, mask, out, moments, opt, detail::make_row_span(be, mask).heads());
}

/// The device-result variant of compute_masked_moments (one process; here because the moment passes
/// keep their state with the whitening's): the same moments, bit for bit, written to *result in the
/// backend's memory instead of returned; nothing waits for the device. Throws asyppo::error (and writes
/// nothing) on bad shapes or a null result.
template <class Backend, class T>
void masked_moments_to(const Backend& be, token_view<const T> x, mask_view mask, bool unbiased, masked_moments* result) {
  constexpr const char* where = "asyppo::masked_moments_to";
  detail::check_moments_args(be, where, x, mask);
  if (result == nullptr) detail::fail(where, "result", "is null");
  detail::check_memory(be, where, "result", seq_view<masked_moments>(result, 1));
  whiten_options opt;
  opt.unbiased = unbiased;
  detail::moments_resident(be, x, mask, result, opt, detail::make_row_span(be, mask).heads());
}

}  // namespace asyppo
