// python/src/asyppo_module.cpp: the asyppo._native extension module (pybind11).
//
// NumPy arrays in and out. Float inputs are float32 or float64 (the dtype of each function's first
// float argument decides; other float arguments of another dtype are cast to it, every other one is
// read in place). Inputs are zero-copy strided views: the element strides are the buffer's byte strides
// divided by the itemsize (a byte stride that is not a multiple of the itemsize is rejected; negative
// strides are copied to a contiguous array first, since the library takes non-negative strides). Masks
// are bool, uint8 or int8 (read in place, nonzero = valid) or any other numeric dtype (compared with 0
// into a temporary). Group ids are int64 (in place) or another integer dtype (converted).
// Outputs are new C-contiguous arrays, or the caller's `out=` arrays where a function offers them;
// the library validates everything before writing, so a ValueError leaves them untouched.
// asyppo::error derives from std::invalid_argument, which pybind11 raises as ValueError with the
// library's message. The GIL is released while the library runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <asyppo/asyppo.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <initializer_list>
#include <utility>
#include <string>
#include <vector>

namespace py = pybind11;
using asyppo::index_t;

namespace {

// ---- backend ------------------------------------------------------------------------------
std::unique_ptr<asyppo::cpu_backend>& backend_slot() {
  static std::unique_ptr<asyppo::cpu_backend> be = std::make_unique<asyppo::cpu_backend>(1);
  return be;
}
const asyppo::cpu_backend& be() { return *backend_slot(); }

[[noreturn]] void bad(const std::string& fn, const std::string& name, const std::string& what) {
  throw py::value_error("asyppo." + fn + ": " + name + ": " + what);
}

// ---- array conversion -----------------------------------------------------------------------
py::array as_array(const py::handle& o) {
  if (py::isinstance<py::array>(o)) return py::reinterpret_borrow<py::array>(o);
  return py::array::ensure(o);
}

/// Makes `a` usable as a strided view: no negative strides (copied), strides multiple of itemsize.
py::array usable(py::array a, const std::string& fn, const std::string& name) {
  if (!a) bad(fn, name, "not convertible to an array");
  bool negative = false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (a.shape(d) > 1 && a.strides(d) % static_cast<py::ssize_t>(a.itemsize()) != 0)
      bad(fn, name,
          "byte stride " + std::to_string(a.strides(d)) + " of dimension " + std::to_string(d) +
              " is not a multiple of the itemsize " + std::to_string(a.itemsize()));
    if (a.strides(d) < 0) negative = true;
  }
  if (negative) a = py::module_::import("numpy").attr("ascontiguousarray")(a);
  return a;
}

template <class T>
bool is_dtype(const py::array& a) {
  return py::isinstance<py::array_t<T>>(a);
}

/// Converts to dtype T when needed (a copy), else the same array.
template <class T>
py::array to_dtype(py::array a) {
  if (is_dtype<T>(a)) return a;
  return a.attr("astype")(py::dtype::of<T>());
}

template <class E, int R>
asyppo::view<E, R> make_view(const py::array& a, E* data, const std::string& fn, const std::string& name) {
  if (a.ndim() != R)
    bad(fn, name, "expected a " + std::to_string(R) + "-D array, got " + std::to_string(a.ndim()) + "-D");
  index_t ext[R], str[R];
  const auto item = static_cast<py::ssize_t>(a.itemsize());
  for (int d = 0; d < R; ++d) {
    ext[d] = static_cast<index_t>(a.shape(d));
    str[d] = a.shape(d) > 1 ? static_cast<index_t>(a.strides(d) / item) : 0;
  }
  return asyppo::view<E, R>::strided(data, ext, str);
}

/// Keeps converted temporaries alive for the duration of one call.
struct keep_alive {
  std::vector<py::array> arrays;
  py::array hold(py::array a) {
    arrays.push_back(a);
    return a;
  }
};

template <class T, int R>
asyppo::view<const T, R> in(keep_alive& k, const py::handle& o, const std::string& fn, const std::string& name) {
  py::array a = k.hold(usable(to_dtype<T>(usable(as_array(o), fn, name)), fn, name));
  return make_view<const T, R>(a, static_cast<const T*>(a.data()), fn, name);
}

template <class T, int R>
asyppo::view<const T, R> opt_in(keep_alive& k, const py::object& o, const std::string& fn, const std::string& name) {
  if (o.is_none()) return {};
  return in<T, R>(k, o, fn, name);
}

/// A [B,T] mask (or [K,B] shard-like uint8) as uint8: bool/uint8/int8 in place, else (x != 0).
asyppo::mask_view mask_in(keep_alive& k, const py::object& o, const std::string& fn, const std::string& name) {
  if (o.is_none()) return {};
  py::array a = usable(as_array(o), fn, name);
  const char kind = a.dtype().kind();
  if (!(a.itemsize() == 1 && (kind == 'b' || kind == 'u' || kind == 'i'))) {
    py::object ne = py::module_::import("numpy").attr("not_equal")(a, 0);
    a = py::array(ne.attr("view")(py::dtype::of<std::uint8_t>()));
  }
  k.hold(a);
  return make_view<const std::uint8_t, 2>(a, static_cast<const std::uint8_t*>(a.data()), fn, name);
}

asyppo::seq_view<const std::int64_t> ids_in(keep_alive& k, const py::object& o, const std::string& fn,
                                             const std::string& name) {
  py::array a = usable(as_array(o), fn, name);
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u' && kind != 'b') bad(fn, name, "must be an integer array (group ids)");
  a = k.hold(usable(to_dtype<std::int64_t>(a), fn, name));
  return make_view<const std::int64_t, 1>(a, static_cast<const std::int64_t*>(a.data()), fn, name);
}

/// A caller-provided output array (dtype T, writeable) or a new C-contiguous one.
template <class T, int R>
asyppo::view<T, R> out(keep_alive& k, const py::object& given, const std::vector<py::ssize_t>& shape,
                       py::array& result, const std::string& fn, const std::string& name) {
  if (given.is_none()) {
    result = py::array_t<T>(shape);
  } else {
    if (!py::isinstance<py::array>(given)) bad(fn, name, "must be a numpy array");
    result = py::reinterpret_borrow<py::array>(given);
    if (!is_dtype<T>(result)) bad(fn, name, "dtype must match the inputs' float dtype");
    if (!result.writeable()) bad(fn, name, "is read-only");
    for (py::ssize_t d = 0; d < result.ndim(); ++d)
      if (result.strides(d) < 0) bad(fn, name, "negative strides are not supported for outputs");
    usable(result, fn, name);
  }
  k.hold(result);
  return make_view<T, R>(result, static_cast<T*>(result.mutable_data()), fn, name);
}

/// A new bool array written through a uint8 view (bool is one byte holding 0 or 1).
asyppo::mask_out bool_out(keep_alive& k, py::ssize_t B, py::ssize_t Tn, py::array& result) {
  result = py::array_t<bool>({B, Tn});
  k.hold(result);
  return asyppo::mask_out(reinterpret_cast<std::uint8_t*>(result.mutable_data()), B, Tn);
}

/// Float dtype of the function's first float argument: 4 (float32) or 8 (float64; also any non-float).
int float_size(const py::handle& o) {
  py::array a = as_array(o);
  if (a && a.dtype().kind() == 'f' && a.itemsize() == 4) return 4;
  return 8;
}

template <class F>
py::object dispatch(const py::handle& primary, F&& f) {
  if (float_size(primary) == 4) return f(float{});
  return f(double{});
}

// ---- option parsing -------------------------------------------------------------------------
/// One of a few named choices; ValueError "must be 'a' or 'b', got 'x'" otherwise.
template <class E>
E parse_choice(const std::string& s, const std::string& fn, const char* arg,
               std::initializer_list<std::pair<const char*, E>> choices) {
  std::string names;
  for (const auto& [name, value] : choices) {
    if (s == name) return value;
    names += (names.empty() ? "'" : " or '") + std::string(name) + "'";
  }
  bad(fn, arg, "must be " + names + ", got '" + s + "'");
}
asyppo::padding_mode parse_padding(const std::string& s, const std::string& fn) {
  return parse_choice<asyppo::padding_mode>(s, fn, "padding", {{"zero", asyppo::padding_mode::zero}, {"raw", asyppo::padding_mode::raw}});
}
asyppo::gae_mask_semantics parse_semantics(const std::string& s, const std::string& fn) {
  return parse_choice<asyppo::gae_mask_semantics>(s, fn, "semantics",
                      {{"skip", asyppo::gae_mask_semantics::skip}, {"step", asyppo::gae_mask_semantics::step}});
}
asyppo::singleton_rule parse_singleton(const std::string& s, const std::string& fn) {
  return parse_choice<asyppo::singleton_rule>(s, fn, "singleton", {{"verl", asyppo::singleton_rule::verl}, {"zero", asyppo::singleton_rule::zero}});
}
asyppo::mask_scope parse_scope(const std::string& s, const std::string& fn) {
  return parse_choice<asyppo::mask_scope>(s, fn, "scope", {{"batch", asyppo::mask_scope::batch}, {"sequence", asyppo::mask_scope::sequence}});
}
asyppo::shard_mode parse_shard(const std::string& s, const std::string& fn) {
  return parse_choice<asyppo::shard_mode>(s, fn, "shards",
                      {{"contiguous", asyppo::shard_mode::contiguous}, {"strided", asyppo::shard_mode::strided}});
}
asyppo::eps_mode parse_eps_mode(const std::string& s, const std::string& fn) {
  return parse_choice<asyppo::eps_mode>(s, fn, "eps_mode", {{"add", asyppo::eps_mode::add}, {"floor", asyppo::eps_mode::floor}});
}

/// None, a dict {tokens, sequences, norm_length} (missing = local), or a 3-sequence.
asyppo::loss_normalizer parse_normalizer(const py::object& o, const std::string& fn) {
  asyppo::loss_normalizer n;
  if (o.is_none()) return n;
  auto num = [&](const py::handle& v, const char* f) {
    if (v.is_none()) return -1.0;
    try {
      return v.cast<double>();
    } catch (const py::cast_error&) {
      bad(fn, "normalizer", std::string(f) + " must be a number or None");
    }
  };
  if (py::isinstance<py::dict>(o)) {
    py::dict d = o.cast<py::dict>();
    for (auto item : d) {
      const std::string key = py::str(item.first);
      if (key != "tokens" && key != "sequences" && key != "norm_length")
        bad(fn, "normalizer", "unknown field '" + key + "' (tokens, sequences, norm_length)");
    }
    if (d.contains("tokens")) n.tokens = num(d["tokens"], "tokens");
    if (d.contains("sequences")) n.sequences = num(d["sequences"], "sequences");
    if (d.contains("norm_length")) n.norm_length = num(d["norm_length"], "norm_length");
    return n;
  }
  py::sequence s = o.cast<py::sequence>();
  if (s.size() != 3) bad(fn, "normalizer", "a sequence must have 3 entries (tokens, sequences, norm_length)");
  n.tokens = num(s[0], "tokens");
  n.sequences = num(s[1], "sequences");
  n.norm_length = num(s[2], "norm_length");
  return n;
}

py::dict normalizer_dict(const asyppo::loss_normalizer& n) {
  py::dict d;
  d["tokens"] = n.tokens;
  d["sequences"] = n.sequences;
  d["norm_length"] = n.norm_length;
  return d;
}


/// [K,B,T] critic values, or [B,T] read as K = 1.
template <class T>
asyppo::critic_view<const T> critic_in(keep_alive& k, const py::handle& o, const std::string& fn,
                                       const std::string& name) {
  py::array a = k.hold(usable(to_dtype<T>(usable(as_array(o), fn, name)), fn, name));
  if (a.ndim() == 2) {
    const auto v = make_view<const T, 2>(a, static_cast<const T*>(a.data()), fn, name);
    const index_t ext[3] = {1, v.extent[0], v.extent[1]}, str[3] = {0, v.stride[0], v.stride[1]};
    return asyppo::critic_view<const T>::strided(v.data, ext, str);
  }
  return make_view<const T, 3>(a, static_cast<const T*>(a.data()), fn, name);
}

/// A [B,T] view of one element repeated (stride 0): an all-valid mask or all-zero token ids.
template <class E>
asyppo::view<const E, 2> constant_view(keep_alive& k, E value, index_t B, index_t Tn) {
  py::array_t<E> a(1);
  a.mutable_at(0) = value;
  k.hold(a);
  const index_t ext[2] = {B, Tn}, str[2] = {0, 0};
  return asyppo::view<const E, 2>::strided(a.data(), ext, str);
}

py::dict summary_dict(const asyppo::advantage_summary& s) {
  py::dict d;
  d["sequences"] = s.sequences;
  d["valid_tokens"] = s.valid_tokens;
  d["adv_masked"] = s.adv_masked;
  d["entropy_masked"] = s.entropy_masked;
  d["adv_mask_fraction"] = s.adv_mask_fraction;
  d["entropy_filter_fraction"] = s.entropy_filter_fraction;
  d["adv_threshold"] = s.adv_threshold;
  d["entropy_threshold"] = s.entropy_threshold;
  d["std_quantiles"] = std::vector<double>(s.std_quantiles, s.std_quantiles + 5);
  d["advantage_mean"] = s.advantage_mean;
  d["advantage_std"] = s.advantage_std;
  d["return_mean"] = s.return_mean;
  d["return_std"] = s.return_std;
  d["explained_variance"] = s.explained_variance;
  return d;
}

py::dict mask_counts_dict(const asyppo::mask_counts& c) {
  py::dict d;
  d["valid"] = c.valid;
  d["adv_masked"] = c.adv_masked;
  d["entropy_masked"] = c.entropy_masked;
  d["adv_threshold"] = c.adv_threshold;
  d["entropy_threshold"] = c.entropy_threshold;
  return d;
}

py::dict policy_metrics_dict(const asyppo::policy_loss_result& r) {
  const auto& m = r.metrics;
  py::dict d;
  d["valid_tokens"] = m.valid_tokens;
  d["adv_masked_tokens"] = m.adv_masked_tokens;
  d["clipped_high_tokens"] = m.clipped_high_tokens;
  d["clipped_low_tokens"] = m.clipped_low_tokens;
  d["dual_clipped_tokens"] = m.dual_clipped_tokens;
  d["approx_kl_sum"] = m.approx_kl_sum;
  d["clip_fraction"] = m.clip_fraction();
  d["clip_high_fraction"] = m.clip_high_fraction();
  d["clip_low_fraction"] = m.clip_low_fraction();
  d["dual_clip_fraction"] = m.dual_clip_fraction();
  d["adv_mask_fraction"] = m.adv_mask_fraction();
  d["approx_kl"] = m.approx_kl();
  d["normalizer"] = normalizer_dict(r.normalizer);
  return d;
}

asyppo::whiten_options whiten_opts(bool shift_mean, bool unbiased, double eps, const std::string& eps_mode,
                                   const std::string& padding, bool check_finite, const std::string& fn) {
  asyppo::whiten_options w;
  w.shift_mean = shift_mean;
  w.unbiased = unbiased;
  w.eps = eps;
  w.eps_placement = parse_eps_mode(eps_mode, fn);
  w.padding = parse_padding(padding, fn);
  w.check_finite = check_finite;
  return w;
}

// ---- bindings -------------------------------------------------------------------------------

py::object ensemble_stats_py(py::object values, py::object mask, bool unbiased, bool check_finite) {
  const std::string fn = "ensemble_stats";
  return dispatch(values, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto v = critic_in<T>(k, values, fn, "values");
    auto m = mask_in(k, mask, fn, "mask");
    const py::ssize_t B = v.extent[1], Tn = v.extent[2];
    py::array mean, sd, lo, hi;
    asyppo::ensemble_outputs<T> o{out<T, 2>(k, py::none(), {B, Tn}, mean, fn, "mean"),
                                  out<T, 2>(k, py::none(), {B, Tn}, sd, fn, "std"),
                                  out<T, 2>(k, py::none(), {B, Tn}, lo, fn, "min"),
                                  out<T, 2>(k, py::none(), {B, Tn}, hi, fn, "max")};
    {
      py::gil_scoped_release nogil;
      asyppo::ensemble_stats(be(), v, m, o, unbiased ? asyppo::std_kind::unbiased : asyppo::std_kind::population,
                             check_finite);
    }
    py::dict d;
    d["mean"] = mean;
    d["std"] = sd;
    d["min"] = lo;
    d["max"] = hi;
    return d;
  });
}

py::object gae_py(py::object values, py::object rewards, py::object mask, double gamma, double lambda_actor,
                  double lambda_critic, const std::string& semantics, const std::string& padding,
                  double adaptive_lambda_alpha, double adaptive_lambda_min, double adaptive_lambda_max,
                  bool unbiased_std, bool with_std, bool check_finite, py::object out_advantages,
                  py::object out_returns) {
  const std::string fn = "gae";
  return dispatch(rewards, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto v = critic_in<T>(k, values, fn, "values");
    auto r = in<T, 2>(k, rewards, fn, "rewards");
    auto m = mask_in(k, mask, fn, "mask");
    const py::ssize_t B = r.extent[0], Tn = r.extent[1];
    asyppo::gae_options g;
    g.gamma = gamma;
    g.lambda_actor = lambda_actor;
    g.lambda_critic = lambda_critic;
    g.semantics = parse_semantics(semantics, fn);
    g.padding = parse_padding(padding, fn);
    g.adaptive_lambda_alpha = adaptive_lambda_alpha;
    g.adaptive_lambda_min = adaptive_lambda_min;
    g.adaptive_lambda_max = adaptive_lambda_max;
    g.check_finite = check_finite;
    py::array adv, ret, sd;
    asyppo::gae_outputs<T> o{out<T, 2>(k, out_advantages, {B, Tn}, adv, fn, "out_advantages"),
                             out<T, 2>(k, out_returns, {B, Tn}, ret, fn, "out_returns"), {}};
    if (with_std) o.std = out<T, 2>(k, py::none(), {B, Tn}, sd, fn, "std");
    {
      py::gil_scoped_release nogil;
      asyppo::gae(be(), v, r, m, g, o, unbiased_std ? asyppo::std_kind::unbiased : asyppo::std_kind::population);
    }
    if (with_std) return py::make_tuple(adv, ret, sd);
    return py::make_tuple(adv, ret);
  });
}

enum class outcome_kind { grpo, rloo, rfpp_baseline };

py::object outcome_py(outcome_kind kind, const std::string& fn, py::object scores, py::object group_ids,
                      py::object mask, const asyppo::grpo_options& gopt, const asyppo::rloo_options& ropt,
                      const asyppo::reinforce_options& fopt) {
  return dispatch(scores, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto s = in<T, 1>(k, scores, fn, "scores");
    auto ids = ids_in(k, group_ids, fn, "group_ids");
    if (mask.is_none()) bad(fn, "mask", "is required");
    auto m = mask_in(k, mask, fn, "mask");
    const py::ssize_t B = m.extent[0], Tn = m.extent[1];
    py::array adv, seq;
    asyppo::outcome_outputs<T> o{out<T, 2>(k, py::none(), {B, Tn}, adv, fn, "advantages"),
                                 out<T, 1>(k, py::none(), {B}, seq, fn, "sequence")};
    {
      py::gil_scoped_release nogil;
      if (kind == outcome_kind::grpo) asyppo::grpo_advantages(be(), s, ids, m, o, gopt);
      else if (kind == outcome_kind::rloo) asyppo::rloo_advantages(be(), s, ids, m, o, ropt);
      else asyppo::reinforce_pp_baseline_advantages(be(), s, ids, m, o, fopt);
    }
    return py::make_tuple(adv, seq);
  });
}

py::object grpo_py(py::object scores, py::object group_ids, py::object mask, bool norm_by_std, double eps,
                   bool unbiased, const std::string& singleton, bool check_finite) {
  asyppo::grpo_options o;
  o.norm_by_std = norm_by_std;
  o.eps = eps;
  o.std = unbiased ? asyppo::std_kind::unbiased : asyppo::std_kind::population;
  o.singleton = parse_singleton(singleton, "grpo");
  o.check_finite = check_finite;
  return outcome_py(outcome_kind::grpo, "grpo", scores, group_ids, mask, o, {}, {});
}

py::object rloo_py(py::object scores, py::object group_ids, py::object mask, const std::string& singleton,
                   bool check_finite) {
  asyppo::rloo_options o;
  o.singleton = parse_singleton(singleton, "rloo");
  o.check_finite = check_finite;
  return outcome_py(outcome_kind::rloo, "rloo", scores, group_ids, mask, {}, o, {});
}

py::object rfpp_baseline_py(py::object scores, py::object group_ids, py::object mask, const std::string& singleton,
                            bool shift_mean, bool unbiased, double eps, const std::string& eps_mode,
                            const std::string& padding, bool check_finite) {
  const std::string fn = "reinforce_pp_baseline";
  asyppo::reinforce_options o;
  o.singleton = parse_singleton(singleton, fn);
  o.whiten = whiten_opts(shift_mean, unbiased, eps, eps_mode, padding, check_finite, fn);
  return outcome_py(outcome_kind::rfpp_baseline, fn, scores, group_ids, mask, {}, {}, o);
}

py::object rfpp_py(py::object rewards, py::object mask, double gamma, bool shift_mean, bool unbiased, double eps,
                   const std::string& eps_mode, const std::string& padding, bool check_finite) {
  const std::string fn = "reinforce_pp";
  return dispatch(rewards, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto r = in<T, 2>(k, rewards, fn, "rewards");
    if (mask.is_none()) bad(fn, "mask", "is required");
    auto m = mask_in(k, mask, fn, "mask");
    asyppo::reinforce_options o;
    o.gamma = gamma;
    o.whiten = whiten_opts(shift_mean, unbiased, eps, eps_mode, padding, check_finite, fn);
    py::array adv;
    auto a = out<T, 2>(k, py::none(), {r.extent[0], r.extent[1]}, adv, fn, "advantages");
    {
      py::gil_scoped_release nogil;
      asyppo::reinforce_pp_advantages(be(), r, m, a, o);
    }
    return adv;
  });
}

py::object sequence_scores_py(py::object rewards) {
  const std::string fn = "sequence_scores";
  return dispatch(rewards, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto r = in<T, 2>(k, rewards, fn, "rewards");
    py::array s;
    auto o = out<T, 1>(k, py::none(), {r.extent[0]}, s, fn, "scores");
    {
      py::gil_scoped_release nogil;
      asyppo::sequence_scores(be(), r, o);
    }
    return s;
  });
}

py::object masked_whiten_py(py::object x, py::object mask, bool shift_mean, bool unbiased, double eps,
                            const std::string& eps_mode, const std::string& padding, bool check_finite,
                            py::object out_arr, bool return_moments) {
  const std::string fn = "masked_whiten";
  return dispatch(x, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto xv = in<T, 2>(k, x, fn, "x");
    if (mask.is_none()) bad(fn, "mask", "is required");
    auto m = mask_in(k, mask, fn, "mask");
    const auto opt = whiten_opts(shift_mean, unbiased, eps, eps_mode, padding, check_finite, fn);
    py::array res;
    auto o = out<T, 2>(k, out_arr, {xv.extent[0], xv.extent[1]}, res, fn, "out");
    asyppo::masked_moments mo;
    {
      py::gil_scoped_release nogil;
      mo = asyppo::masked_whiten(be(), xv, m, o, opt);
    }
    if (!return_moments) return res;
    py::dict d;
    d["count"] = mo.count;
    d["mean"] = mo.mean;
    d["var"] = mo.var;
    return py::make_tuple(res, d);
  });
}

py::object uncertainty_masks_py(py::object sigma, py::object mask, double adv_fraction, double entropy_fraction,
                                const std::string& scope, bool check_finite) {
  const std::string fn = "uncertainty_masks";
  return dispatch(sigma, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto s = in<T, 2>(k, sigma, fn, "sigma");
    if (mask.is_none()) bad(fn, "mask", "is required");
    auto m = mask_in(k, mask, fn, "mask");
    asyppo::mask_options o;
    o.adv_fraction = adv_fraction;
    o.entropy_fraction = entropy_fraction;
    o.scope = parse_scope(scope, fn);
    o.check_finite = check_finite;
    py::array am, em;
    auto a = bool_out(k, s.extent[0], s.extent[1], am);
    auto e = bool_out(k, s.extent[0], s.extent[1], em);
    asyppo::mask_counts c;
    {
      py::gil_scoped_release nogil;
      c = asyppo::uncertainty_masks(be(), s, m, a, e, o);
    }
    return py::make_tuple(am, em, mask_counts_dict(c));
  });
}

py::object shard_weights_py(py::object group_ids, index_t K, const std::string& mode, py::object dtype) {
  const std::string fn = "shard_weights";
  keep_alive k;
  auto ids = ids_in(k, group_ids, fn, "group_ids");
  const auto sm = parse_shard(mode, fn);
  const py::ssize_t B = ids.extent[0];
  if (K < 1) bad(fn, "K", "needs at least one critic (K >= 1), got " + std::to_string(K));
  py::array critic = py::array_t<std::int64_t>(B);
  k.hold(critic);
  asyppo::seq_view<std::int64_t> cv(static_cast<std::int64_t*>(critic.mutable_data()), B);
  const bool single = py::dtype::from_args(dtype).itemsize() == 4;
  py::array w;
  if (single) {
    auto wv = out<float, 2>(k, py::none(), {K, B}, w, fn, "weights");
    py::gil_scoped_release nogil;
    asyppo::shard_weights(be(), ids, K, wv, sm, cv);
  } else {
    auto wv = out<double, 2>(k, py::none(), {K, B}, w, fn, "weights");
    py::gil_scoped_release nogil;
    asyppo::shard_weights(be(), ids, K, wv, sm, cv);
  }
  return py::make_tuple(w, critic);
}

py::object advantage_step_py(py::object values, py::object rewards, py::object mask, py::object group_ids,
                             double gamma, double lambda_actor, double lambda_critic, const std::string& semantics,
                             double adaptive_lambda_alpha, double adaptive_lambda_min, double adaptive_lambda_max,
                             double adv_mask_fraction, double entropy_filter_fraction, const std::string& scope,
                             bool unbiased_std, const std::string& shards, bool whiten_advantages,
                             bool whiten_shift_mean, bool whiten_unbiased, double whiten_eps,
                             const std::string& whiten_eps_mode, bool mask_advantages, bool statistics,
                             bool check_finite) {
  const std::string fn = "advantage_step";
  return dispatch(rewards, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto v = critic_in<T>(k, values, fn, "values");
    auto r = in<T, 2>(k, rewards, fn, "rewards");
    if (mask.is_none()) bad(fn, "mask", "is required");
    auto m = mask_in(k, mask, fn, "mask");
    auto ids = ids_in(k, group_ids, fn, "group_ids");
    asyppo::advantage_config c;
    c.critics = v.extent[0];
    c.gamma = gamma;
    c.lambda_actor = lambda_actor;
    c.lambda_critic = lambda_critic;
    c.semantics = parse_semantics(semantics, fn);
    c.adaptive_lambda_alpha = adaptive_lambda_alpha;
    c.adaptive_lambda_min = adaptive_lambda_min;
    c.adaptive_lambda_max = adaptive_lambda_max;
    c.adv_mask_fraction = adv_mask_fraction;
    c.entropy_filter_fraction = entropy_filter_fraction;
    c.scope = parse_scope(scope, fn);
    c.std = unbiased_std ? asyppo::std_kind::unbiased : asyppo::std_kind::population;
    c.shards = parse_shard(shards, fn);
    c.whiten_advantages = whiten_advantages;
    c.whiten = whiten_opts(whiten_shift_mean, whiten_unbiased, whiten_eps, whiten_eps_mode, "zero", check_finite, fn);
    c.mask_advantages = mask_advantages;
    c.statistics = statistics;
    c.check_finite = check_finite;
    const py::ssize_t K = v.extent[0], B = r.extent[0], Tn = r.extent[1];
    py::array adv, ret, am, em, sw, sd;
    asyppo::advantage_outputs<T> o{out<T, 2>(k, py::none(), {B, Tn}, adv, fn, "advantages"),
                                   out<T, 2>(k, py::none(), {B, Tn}, ret, fn, "returns"),
                                   bool_out(k, B, Tn, am),
                                   bool_out(k, B, Tn, em),
                                   out<T, 2>(k, py::none(), {K, B}, sw, fn, "shard_weights"),
                                   out<T, 2>(k, py::none(), {B, Tn}, sd, fn, "std")};
    asyppo::advantage_summary s;
    {
      py::gil_scoped_release nogil;
      s = asyppo::advantage_step(be(), asyppo::advantage_inputs<T>{v, r, m, ids}, o, c);
    }
    py::dict arrays;
    arrays["advantages"] = adv;
    arrays["returns"] = ret;
    arrays["adv_mask"] = am;
    arrays["entropy_mask"] = em;
    arrays["shard_weights"] = sw;
    arrays["std"] = sd;
    return py::make_tuple(arrays, summary_dict(s));
  });
}

py::object policy_loss_py(py::object logp, py::object old_logp, py::object advantages, py::object mask,
                          py::object adv_mask, double clip_low, double clip_high, double dual_clip,
                          double log_ratio_clamp, const std::string& aggregation, py::object normalizer,
                          bool check_finite, bool compute_grad, py::object grad_out) {
  const std::string fn = "policy_loss";
  return dispatch(logp, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    asyppo::policy_loss_inputs<T> in_{in<T, 2>(k, logp, fn, "logp"), in<T, 2>(k, old_logp, fn, "old_logp"),
                                      in<T, 2>(k, advantages, fn, "advantages"), mask_in(k, mask, fn, "mask"),
                                      mask_in(k, adv_mask, fn, "adv_mask")};
    if (mask.is_none()) bad(fn, "mask", "is required");
    asyppo::policy_loss_options o;
    o.clip_low = clip_low;
    o.clip_high = clip_high;
    o.dual_clip = dual_clip;
    o.log_ratio_clamp = log_ratio_clamp;
    o.aggregation = asyppo::parse_loss_aggregation(aggregation);
    o.normalizer = parse_normalizer(normalizer, fn);
    o.check_finite = check_finite;
    py::array g;
    asyppo::token_view<T> gv{};
    if (compute_grad || !grad_out.is_none())
      gv = out<T, 2>(k, grad_out, {in_.logp.extent[0], in_.logp.extent[1]}, g, fn, "grad_out");
    asyppo::policy_loss_result r;
    {
      py::gil_scoped_release nogil;
      r = asyppo::policy_loss(be(), in_, gv, o);
    }
    return py::make_tuple(r.loss, gv.data ? py::object(g) : py::object(py::none()), policy_metrics_dict(r));
  });
}

// ---- critic value heads (H1-H4) ------------------------------------------------------------------
/// hidden [K,N,D] (a trunk per critic) or [N,D] (one trunk shared by the K heads), as a view of E.
template <class E>
asyppo::view<const E, 3> hidden_view(keep_alive& k, const py::array& a, asyppo::index_t K, const std::string& fn) {
  const auto nd = a.ndim();
  if (nd != 2 && nd != 3)
    bad(fn, "hidden", "must be [K,N,D] (a trunk per critic) or [N,D] (shared), got " + std::to_string(nd) + " dimensions");
  k.hold(a);
  const E* p = static_cast<const E*>(a.data());
  if (nd == 2) return asyppo::shared_trunk(make_view<const E, 2>(a, p, fn, "hidden"), K);
  return make_view<const E, 3>(a, p, fn, "hidden");
}

/// Calls f(hidden view): numpy float16 hidden states are read in place as asyppo::float16 (computed in
/// T, Eq. H1-H4); any other dtype is converted to T.
template <class T, class F>
py::object with_hidden(keep_alive& k, const py::object& hidden, asyppo::index_t K, const std::string& fn, F&& f) {
  py::array a = usable(as_array(hidden), fn, "hidden");
  if (a.dtype().kind() == 'f' && a.itemsize() == 2) return f(hidden_view<asyppo::float16>(k, a, K, fn));
  return f(hidden_view<T>(k, usable(to_dtype<T>(a), fn, "hidden"), K, fn));
}

py::object critic_heads_forward_py(py::object hidden, py::object weight, py::object bias, bool check_finite) {
  const std::string fn = "critic_heads_forward";
  return dispatch(weight, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    const auto w = in<T, 2>(k, weight, fn, "weight");
    const auto b = opt_in<T, 1>(k, bias, fn, "bias");
    return with_hidden<T>(k, hidden, w.extent[0], fn, [&](auto h) -> py::object {
      py::array v;
      const auto vv = out<T, 2>(k, py::none(), {w.extent[0], h.extent[1]}, v, fn, "values");
      asyppo::critic_heads_options o;
      o.check_finite = check_finite;
      {
        py::gil_scoped_release nogil;
        asyppo::critic_heads_forward(be(), h, w, b, vv, o);
      }
      return v;
    });
  });
}

py::object critic_heads_backward_py(py::object hidden, py::object weight, py::object grad_values, bool hidden_grad,
                                    bool check_finite) {
  const std::string fn = "critic_heads_backward";
  return dispatch(weight, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    const auto w = in<T, 2>(k, weight, fn, "weight");
    const asyppo::index_t K = w.extent[0], D = w.extent[1];
    const auto g = in<T, 2>(k, grad_values, fn, "grad_values");
    const bool shared = as_array(hidden).ndim() == 2;
    return with_hidden<T>(k, hidden, K, fn, [&](auto h) -> py::object {
      const asyppo::index_t N = h.extent[1];
      py::array dw, dc, dh;
      asyppo::critic_head_gradients<T> grads{out<T, 2>(k, py::none(), {K, D}, dw, fn, "weight"),
                                             out<T, 1>(k, py::none(), {K}, dc, fn, "bias"), {}};
      if (hidden_grad) {
        if (shared) grads.hidden = asyppo::shared_trunk(out<T, 2>(k, py::none(), {N, D}, dh, fn, "hidden"), K);
        else grads.hidden = out<T, 3>(k, py::none(), {K, N, D}, dh, fn, "hidden");
      }
      asyppo::critic_heads_options o;
      o.check_finite = check_finite;
      {
        py::gil_scoped_release nogil;
        asyppo::critic_heads_backward(be(), h, w, g, grads, o);
      }
      py::dict d;
      d["weight"] = dw;
      d["bias"] = dc;
      d["hidden"] = hidden_grad ? py::object(dh) : py::object(py::none());
      return d;
    });
  });
}

py::object value_loss_py(py::object values, py::object returns, py::object mask, py::object old_values,
                         py::object critic_returns, py::object shard_weights, double clip, bool half,
                         const std::string& aggregation, py::object normalizers, bool check_finite,
                         bool compute_grad, bool explained_variance) {
  const std::string fn = "value_loss";
  return dispatch(values, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    const int nd = static_cast<int>(as_array(values).ndim());
    asyppo::value_loss_inputs<T> in_;
    in_.values = critic_in<T>(k, values, fn, "values");
    if (!old_values.is_none()) in_.old_values = critic_in<T>(k, old_values, fn, "old_values");
    if (!returns.is_none()) in_.returns = in<T, 2>(k, returns, fn, "returns");
    if (!critic_returns.is_none()) in_.critic_returns = critic_in<T>(k, critic_returns, fn, "critic_returns");
    if (mask.is_none()) bad(fn, "mask", "is required");
    in_.mask = mask_in(k, mask, fn, "mask");
    in_.shard_weights = opt_in<T, 2>(k, shard_weights, fn, "shard_weights");
    asyppo::value_loss_options o;
    o.clip = clip;
    o.half = half;
    o.aggregation = asyppo::parse_loss_aggregation(aggregation);
    if (!normalizers.is_none())
      for (auto n : normalizers.cast<py::sequence>()) o.normalizers.push_back(parse_normalizer(py::reinterpret_borrow<py::object>(n), fn));
    o.check_finite = check_finite;
    o.explained_variance = explained_variance;
    const py::ssize_t K = in_.values.extent[0], B = in_.values.extent[1], Tn = in_.values.extent[2];
    py::array g;
    asyppo::critic_view<T> gv{};
    if (compute_grad) {
      auto g3 = out<T, 3>(k, py::none(), {K, B, Tn}, g, fn, "grad");
      gv = g3;
    }
    asyppo::value_loss_result r;
    {
      py::gil_scoped_release nogil;
      r = asyppo::value_loss(be(), in_, gv, o);
    }
    py::list critics;
    for (const auto& c : r.critics) {
      py::dict d;
      d["loss"] = c.loss;
      d["tokens"] = c.tokens;
      d["sequences"] = c.sequences;
      d["clipped_tokens"] = c.clipped_tokens;
      d["squared_error_sum"] = c.squared_error_sum;
      d["clip_fraction"] = c.clip_fraction;
      d["mse"] = c.mse;
      d["explained_variance"] = c.explained_variance;
      d["normalizer"] = normalizer_dict(c.normalizer);
      critics.append(d);
    }
    py::object grad = py::none();
    if (compute_grad) grad = nd == 2 ? py::object(g.attr("reshape")(py::make_tuple(B, Tn))) : py::object(g);
    return py::make_tuple(r.loss, grad, critics);
  });
}

py::object kl_values_py(py::object logp, py::object ref_logp, py::object mask, const std::string& estimator,
                        bool clamp) {
  const std::string fn = "kl_values";
  return dispatch(logp, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto l = in<T, 2>(k, logp, fn, "logp");
    auto rf = in<T, 2>(k, ref_logp, fn, "ref_logp");
    auto m = mask.is_none() ? constant_view<std::uint8_t>(k, 1, l.extent[0], l.extent[1]) : mask_in(k, mask, fn, "mask");
    auto o = asyppo::parse_kl_estimator(estimator);
    o.clamp = clamp;
    py::array res;
    auto ov = out<T, 2>(k, py::none(), {l.extent[0], l.extent[1]}, res, fn, "out");
    {
      py::gil_scoped_release nogil;
      asyppo::kl_values(be(), l, rf, m, ov, o);
    }
    return res;
  });
}

py::object kl_loss_py(py::object logp, py::object ref_logp, py::object mask, const std::string& estimator,
                      double coef, bool clamp, const std::string& aggregation, py::object normalizer,
                      bool check_finite, bool compute_grad) {
  const std::string fn = "kl_loss";
  return dispatch(logp, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto l = in<T, 2>(k, logp, fn, "logp");
    auto rf = in<T, 2>(k, ref_logp, fn, "ref_logp");
    auto m = mask.is_none() ? constant_view<std::uint8_t>(k, 1, l.extent[0], l.extent[1]) : mask_in(k, mask, fn, "mask");
    asyppo::kl_loss_options o;
    o.kl = asyppo::parse_kl_estimator(estimator);
    o.kl.clamp = clamp;
    o.coef = coef;
    o.aggregation = asyppo::parse_loss_aggregation(aggregation);
    o.normalizer = parse_normalizer(normalizer, fn);
    o.check_finite = check_finite;
    py::array g;
    asyppo::token_view<T> gv{};
    if (compute_grad) gv = out<T, 2>(k, py::none(), {l.extent[0], l.extent[1]}, g, fn, "grad");
    asyppo::kl_loss_result r;
    {
      py::gil_scoped_release nogil;
      r = asyppo::kl_loss(be(), l, rf, m, gv, o);
    }
    py::dict d;
    d["kl"] = r.kl;
    d["valid_tokens"] = r.metrics.valid_tokens;
    d["kl_sum"] = r.metrics.kl_sum;
    d["kl_mean"] = r.metrics.mean();
    d["normalizer"] = normalizer_dict(r.normalizer);
    return py::make_tuple(r.loss, compute_grad ? py::object(g) : py::object(py::none()), d);
  });
}

py::object entropy_bonus_py(py::object entropy, py::object mask, py::object entropy_mask, double beta,
                            const std::string& aggregation, py::object normalizer, bool check_finite,
                            bool compute_grad) {
  const std::string fn = "entropy_bonus";
  return dispatch(entropy, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto h = in<T, 2>(k, entropy, fn, "entropy");
    if (mask.is_none()) bad(fn, "mask", "is required");
    auto m = mask_in(k, mask, fn, "mask");
    auto em = mask_in(k, entropy_mask, fn, "entropy_mask");
    asyppo::entropy_bonus_options o;
    o.beta = beta;
    o.aggregation = asyppo::parse_loss_aggregation(aggregation);
    o.normalizer = parse_normalizer(normalizer, fn);
    o.check_finite = check_finite;
    py::array g;
    asyppo::token_view<T> gv{};
    if (compute_grad) gv = out<T, 2>(k, py::none(), {h.extent[0], h.extent[1]}, g, fn, "grad");
    asyppo::entropy_bonus_result r;
    {
      py::gil_scoped_release nogil;
      r = asyppo::entropy_bonus(be(), h, m, em, gv, o);
    }
    py::dict d;
    d["entropy"] = r.entropy;
    d["filtered_entropy"] = r.filtered_entropy;
    d["valid_tokens"] = r.metrics.valid_tokens;
    d["filtered_tokens"] = r.metrics.filtered_tokens;
    d["entropy_sum"] = r.metrics.entropy_sum;
    d["mean_entropy"] = r.metrics.mean_entropy();
    d["filtered_fraction"] = r.metrics.filtered_fraction();
    d["normalizer"] = normalizer_dict(r.normalizer);
    return py::make_tuple(r.loss, compute_grad ? py::object(g) : py::object(py::none()), d);
  });
}

asyppo::view<const std::int64_t, 2> token_ids_in(keep_alive& k, const py::object& o, index_t B, index_t Tn,
                                                 const std::string& fn) {
  if (o.is_none()) return constant_view<std::int64_t>(k, 0, B, Tn);
  py::array a = usable(as_array(o), fn, "token_ids");
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u') bad(fn, "token_ids", "must be an integer array");
  a = k.hold(usable(to_dtype<std::int64_t>(a), fn, "token_ids"));
  return make_view<const std::int64_t, 2>(a, static_cast<const std::int64_t*>(a.data()), fn, "token_ids");
}

py::object logits_forward_py(py::object logits, py::object token_ids, py::object mask, double temperature,
                             bool check_finite) {
  const std::string fn = "logits_logp_entropy";
  return dispatch(logits, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto z = in<T, 3>(k, logits, fn, "logits");
    const py::ssize_t B = z.extent[0], Tn = z.extent[1];
    auto ids = token_ids_in(k, token_ids, B, Tn, fn);
    auto m = mask_in(k, mask, fn, "mask");
    asyppo::logits_options o;
    o.temperature = temperature;
    o.check_finite = check_finite;
    py::array lp, h;
    asyppo::token_view<T> lv{};
    if (!token_ids.is_none()) lv = out<T, 2>(k, py::none(), {B, Tn}, lp, fn, "logp");
    auto hv = out<T, 2>(k, py::none(), {B, Tn}, h, fn, "entropy");
    {
      py::gil_scoped_release nogil;
      asyppo::logits_logp_entropy(be(), z, ids, lv, hv, o, m);
    }
    return py::make_tuple(lv.data ? py::object(lp) : py::object(py::none()), h);
  });
}

py::object logits_backward_py(py::object logits, py::object token_ids, py::object grad_logp, py::object grad_entropy,
                              py::object mask, double temperature, bool check_finite) {
  const std::string fn = "logits_logp_entropy_backward";
  return dispatch(logits, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto z = in<T, 3>(k, logits, fn, "logits");
    const py::ssize_t B = z.extent[0], Tn = z.extent[1], V = z.extent[2];
    if (token_ids.is_none() && !grad_logp.is_none()) bad(fn, "token_ids", "are required with grad_logp");
    auto ids = token_ids_in(k, token_ids, B, Tn, fn);
    auto gl = opt_in<T, 2>(k, grad_logp, fn, "grad_logp");
    auto gh = opt_in<T, 2>(k, grad_entropy, fn, "grad_entropy");
    auto m = mask_in(k, mask, fn, "mask");
    asyppo::logits_options o;
    o.temperature = temperature;
    o.check_finite = check_finite;
    py::array g;
    auto gv = out<T, 3>(k, py::none(), {B, Tn, V}, g, fn, "grad_logits");
    {
      py::gil_scoped_release nogil;
      asyppo::logits_logp_entropy_backward(be(), z, ids, gl, gh, gv, o, m);
    }
    return g;
  });
}

py::object aggregate_loss_py(py::object loss, py::object mask, const std::string& mode, py::object normalizer,
                             bool check_finite, bool compute_grad) {
  const std::string fn = "aggregate_loss";
  return dispatch(loss, [&](auto tag) -> py::object {
    using T = decltype(tag);
    keep_alive k;
    auto l = in<T, 2>(k, loss, fn, "loss");
    if (mask.is_none()) bad(fn, "mask", "is required");
    auto m = mask_in(k, mask, fn, "mask");
    const auto agg = asyppo::parse_loss_aggregation(mode);
    const auto n = parse_normalizer(normalizer, fn);
    py::array w;
    asyppo::token_view<T> wv{};
    if (compute_grad) wv = out<T, 2>(k, py::none(), {l.extent[0], l.extent[1]}, w, fn, "weights");
    asyppo::aggregation_result r;
    {
      py::gil_scoped_release nogil;
      r = asyppo::aggregate_loss(be(), l, m, agg, n, wv, check_finite);
    }
    return py::make_tuple(r.loss, compute_grad ? py::object(w) : py::object(py::none()), normalizer_dict(r.normalizer));
  });
}

py::dict count_loss_tokens_py(py::object mask) {
  keep_alive k;
  auto m = mask_in(k, mask, "count_loss_tokens", "mask");
  asyppo::loss_counts c;
  {
    py::gil_scoped_release nogil;
    c = asyppo::count_loss_tokens(be(), m);
  }
  py::dict d;
  d["tokens"] = c.tokens;
  d["sequences"] = c.sequences;
  d["rows"] = c.rows;
  d["length"] = c.length;
  return d;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "asyppo native API (numpy in and out; see python/asyppo/__init__.py for torch support)";
  m.attr("__version__") = ASYPPO_PY_VERSION;
  m.def("set_num_threads", [](int n) { backend_slot() = std::make_unique<asyppo::cpu_backend>(n); },
        py::arg("threads"), "CPU threads of the library (1 = calling thread; 0 = all hardware threads).");
  m.def("get_num_threads", []() { return be().threads(); });
  using py::arg;
  const auto none = py::none();
  m.def("ensemble_stats", &ensemble_stats_py, arg("values"), arg("mask") = none, arg("unbiased") = false,
        arg("check_finite") = true, "Per-token mean/std/min/max of values [K,B,T] (or [B,T] as K=1) -> dict.");
  m.def("gae", &gae_py, arg("values"), arg("rewards"), arg("mask"), arg("gamma") = 1.0, arg("lambda_actor") = 1.0,
        arg("lambda_critic") = 1.0, arg("semantics") = "skip", arg("padding") = "zero",
        arg("adaptive_lambda_alpha") = 0.0, arg("adaptive_lambda_min") = 0.0, arg("adaptive_lambda_max") = 1.0,
        arg("unbiased_std") = false, arg("with_std") = false, arg("check_finite") = true,
        arg("out_advantages") = none, arg("out_returns") = none,
        "GAE on the ensemble mean -> (advantages, returns[, std]).");
  m.def("grpo", &grpo_py, arg("scores"), arg("group_ids"), arg("mask"), arg("norm_by_std") = true,
        arg("eps") = 1e-6, arg("unbiased") = true, arg("singleton") = "verl", arg("check_finite") = true,
        "GRPO / Dr.GRPO -> (advantages [B,T], per-sequence [B]).");
  m.def("rloo", &rloo_py, arg("scores"), arg("group_ids"), arg("mask"), arg("singleton") = "verl",
        arg("check_finite") = true, "RLOO -> (advantages [B,T], per-sequence [B]).");
  m.def("reinforce_pp", &rfpp_py, arg("rewards"), arg("mask"), arg("gamma") = 1.0, arg("shift_mean") = true,
        arg("unbiased") = true, arg("eps") = 1e-8, arg("eps_mode") = "add", arg("padding") = "zero",
        arg("check_finite") = true, "REINFORCE++ (discounted returns, then masked whitening) -> advantages.");
  m.def("reinforce_pp_baseline", &rfpp_baseline_py, arg("scores"), arg("group_ids"), arg("mask"),
        arg("singleton") = "verl", arg("shift_mean") = true, arg("unbiased") = true, arg("eps") = 1e-8,
        arg("eps_mode") = "add", arg("padding") = "zero", arg("check_finite") = true,
        "REINFORCE++-baseline -> (advantages [B,T], un-whitened per-sequence [B]).");
  m.def("sequence_scores", &sequence_scores_py, arg("rewards"), "Row sums of rewards [B,T] -> [B].");
  m.def("masked_whiten", &masked_whiten_py, arg("x"), arg("mask"), arg("shift_mean") = true, arg("unbiased") = true,
        arg("eps") = 1e-8, arg("eps_mode") = "add", arg("padding") = "zero", arg("check_finite") = true,
        arg("out") = none, arg("return_moments") = false, "Masked whitening over the batch.");
  m.def("uncertainty_masks", &uncertainty_masks_py, arg("sigma"), arg("mask"), arg("adv_fraction") = 0.2,
        arg("entropy_fraction") = 0.2, arg("scope") = "batch", arg("check_finite") = true,
        "AsyPPO masks -> (adv_mask bool, entropy_mask bool, counts dict).");
  m.def("shard_weights", &shard_weights_py, arg("group_ids"), arg("K"), arg("mode") = "contiguous",
        arg("dtype") = "float32", "Critic shards -> (weights [K,B], critic_of [B] int64).");
  m.def("advantage_step", &advantage_step_py, arg("values"), arg("rewards"), arg("mask"), arg("group_ids"),
        py::kw_only(), arg("gamma") = 1.0, arg("lambda_actor") = 1.0, arg("lambda_critic") = 1.0,
        arg("semantics") = "skip", arg("adaptive_lambda_alpha") = 0.0, arg("adaptive_lambda_min") = 0.0,
        arg("adaptive_lambda_max") = 1.0, arg("adv_mask_fraction") = 0.2, arg("entropy_filter_fraction") = 0.2,
        arg("scope") = "batch", arg("unbiased_std") = false, arg("shards") = "contiguous",
        arg("whiten_advantages") = false, arg("whiten_shift_mean") = true, arg("whiten_unbiased") = true,
        arg("whiten_eps") = 1e-8, arg("whiten_eps_mode") = "add", arg("mask_advantages") = true,
        arg("statistics") = true, arg("check_finite") = true,
        "The whole AsyPPO advantage step -> (dict of arrays, summary dict).");
  m.def("policy_loss", &policy_loss_py, arg("logp"), arg("old_logp"), arg("advantages"), arg("mask"),
        arg("adv_mask") = none, arg("clip_low") = 0.2, arg("clip_high") = 0.2, arg("dual_clip") = 0.0,
        arg("log_ratio_clamp") = 20.0, arg("aggregation") = "seq-mean-token-mean", arg("normalizer") = none,
        arg("check_finite") = true, arg("compute_grad") = true, arg("grad_out") = none,
        "Clipped PPO surrogate -> (loss, dloss/dlogp, metrics dict).");
  m.def("value_loss", &value_loss_py, arg("values"), arg("returns"), arg("mask"), arg("old_values") = none,
        py::kw_only(), arg("critic_returns") = none, arg("shard_weights") = none, arg("clip") = 0.2,
        arg("half") = true, arg("aggregation") = "seq-mean-token-mean", arg("normalizers") = none,
        arg("check_finite") = true, arg("compute_grad") = true, arg("explained_variance") = true,
        "Value losses of K critics -> (sum of losses, dloss/dvalues, per-critic metric dicts; "
        "explained_variance=False skips that metric, NaN).");
  m.def("kl_values", &kl_values_py, arg("logp"), arg("ref_logp"), arg("mask") = none,
        arg("estimator") = "low_var_kl", arg("clamp") = true, "Per-token KL estimator (0 on masked tokens).");
  m.def("kl_loss", &kl_loss_py, arg("logp"), arg("ref_logp"), arg("mask"), arg("estimator") = "low_var_kl",
        arg("coef") = 1.0, arg("clamp") = true, arg("aggregation") = "seq-mean-token-mean",
        arg("normalizer") = none, arg("check_finite") = true, arg("compute_grad") = true,
        "coef * Agg(kl) -> (loss, dloss/dlogp, metrics dict).");
  m.def("entropy_bonus", &entropy_bonus_py, arg("entropy"), arg("mask"), arg("entropy_mask") = none,
        arg("beta") = 0.0, arg("aggregation") = "seq-mean-token-mean", arg("normalizer") = none,
        arg("check_finite") = true, arg("compute_grad") = true,
        "-beta * Agg(I^H H) -> (loss, dloss/dentropy, metrics dict).");
  m.def("logits_logp_entropy", &logits_forward_py, arg("logits"), arg("token_ids") = none, arg("mask") = none,
        arg("temperature") = 1.0, arg("check_finite") = true,
        "logits [B,T,V] -> (logp of token_ids or None, entropy).");
  m.def("logits_logp_entropy_backward", &logits_backward_py, arg("logits"), arg("token_ids") = none,
        arg("grad_logp") = none, arg("grad_entropy") = none, arg("mask") = none, arg("temperature") = 1.0,
        arg("check_finite") = true, "Backward of logits_logp_entropy -> grad_logits [B,T,V].");
  m.def("aggregate_loss", &aggregate_loss_py, arg("loss"), arg("mask"), arg("mode") = "token-mean",
        arg("normalizer") = none, arg("check_finite") = true, arg("compute_grad") = true,
        "Agg(loss) -> (value, dAgg/dloss weights, resolved normalizer dict).");
  m.def("critic_heads_forward", &critic_heads_forward_py, arg("hidden"), arg("weight"), arg("bias") = none,
        arg("check_finite") = true,
        "Values [K,N] = hidden [K,N,D] (or shared [N,D]; float16 read in place) . weight [K,D] + bias [K] (Eq. H1).");
  m.def("critic_heads_backward", &critic_heads_backward_py, arg("hidden"), arg("weight"), arg("grad_values"),
        arg("hidden_grad") = true, arg("check_finite") = true,
        "Gradients {weight [K,D], bias [K], hidden (like hidden, or None)} from grad_values [K,N] (Eq. H2-H4).");
  m.def("count_loss_tokens", &count_loss_tokens_py, arg("mask"),
        "Local counts {tokens, sequences, rows, length} of a mask (sum over micro-batches/ranks).");
}
