// asyppo/core/critic_heads.hpp: the K critics' linear value heads, forward and backward
// (docs/algorithm.md, "Critic value heads", Eq. H1-H4).
//
//   V[k,n]    = sum_d H[k,n,d] W[k,d] + c[k]                        (H1, forward)
//   dW[k,d]   = sum_n G[k,n] H[k,n,d],   dc[k] = sum_n G[k,n]          (H2, H3)
//   dH[k,n,d] = G[k,n] W[k,d]            (a trunk per critic)          (H4)
//   dH[n,d]   = sum_k G[k,n] W[k,d]      (one trunk shared by the heads)
// n runs over the N tokens of a micro-batch in any flat order (row-major [B,T] is the usual one:
// then the values [K,N] are the critic tensor [K,B,T] of the other entry points, same memory),
// H are the last hidden states of each critic's trunk, W, c the head weights and biases, G the
// gradient of the loss with respect to the values (value_loss's grad_values).
//
// Types: weights, biases, values and every gradient in T = float or double; hidden states in T, in
// float (with T = double), or in bfloat16 / float16 (half_types.hpp: what a bf16 or fp16 model hands
// over), read exactly and computed in double like the rest. Only H == T takes the GEMM path.
// Views: hidden [K,N,D] (stride 0 along K: one trunk for every head, see shared_trunk), weight
// [K,D], bias [K] (optional), values [K,N]; grad_values [K,N]; the gradients weight [K,D], bias [K]
// and hidden [K,N,D] are each optional, and grad hidden has stride 0 along K exactly when hidden
// has (the heads' contributions to the shared trunk are summed); it may be hidden itself (dW is
// computed first). accumulate adds dW and dc into the outputs (micro-batches; equal to the one-batch
// result to rounding), otherwise they are overwritten; dH is always overwritten.
//
// Two paths, same results to rounding:
// - a backend with the dense pattern (backend/dense.hpp: the CUDA backend, cuBLAS) and views with
//   unit inner strides get each of H1, H2, H4 as one GEMM (strided batched over K for separate
//   trunks; one GEMM over all K for a shared trunk, which then reads H once);
// - every other backend (the CPU backend) runs the pattern path below, accumulating in double:
//   H1 a row reduce, one row of D columns per (token, head), into eight interleaved partial sums
//   (lane_sums; on a GPU one block of threads per row, coalesced also for 16-bit hidden states), H2
//   per fixed tile of tokens (the tiles depend on N only) and the tiles summed in order, H4 per
//   element. On the CPU results are bit-identical run to run and for any thread count; the
//   contiguous span functions perform the per-element operations in the same order (same bits).
// Checks: shapes, strides, K >= 1, D >= 1, and (check_finite) NaN/Inf in weight, bias and
// grad_values; hidden is not scanned (that would be a second read of the largest tensor): NaN or
// Inf there propagates into the outputs, as in any GEMM. N = 0 is allowed (nothing to do; the
// overwritten parameter gradients become 0). A thrown asyppo::error leaves every output untouched.
#pragma once

#include <cstdint>
#include <type_traits>

#include "asyppo/backend/dense.hpp"
#include "asyppo/backend/patterns.hpp"
#include "asyppo/core/lane_sums.hpp"
#include "asyppo/core/validate.hpp"
#include "asyppo/half_types.hpp"
#include "asyppo/views.hpp"

namespace asyppo {

struct critic_heads_options {
  bool accumulate = false;   ///< add dW and dc into the gradient outputs instead of overwriting them
  bool check_finite = true;  ///< reject NaN/Inf in weight, bias, grad_values
};

template <class T>
struct critic_head_gradients {
  view<T, 2> weight{};  ///< [K,D] dW (optional)
  seq_view<T> bias{};   ///< [K]   dc (optional)
  view<T, 3> hidden{};  ///< [K,N,D] dH (optional; stride 0 along K for a shared trunk)
};

/// The [N,D] hidden states of one trunk shared by K heads, as the [K,N,D] view the heads take
/// (stride 0 along K). Also for the gradient of a shared trunk.
template <class T>
view<T, 3> shared_trunk(view<T, 2> h, index_t K) {
  return view<T, 3>::strided(h.data, {K, h.extent[0], h.extent[1]}, {0, h.stride[0], h.stride[1]});
}

namespace detail {

/// Rows of H1's pattern path: one row of D columns per (token, head), ordered token block by token
/// block, head by head within a block: r = ((blk << k_shift) + k) << block_shift + j for token
/// n = (blk << block_shift) + j. Blocks of 2^block_shift tokens hold about 256 KB of hidden states (a
/// block of a shared trunk is read from memory once for the K heads, from L2 for the others, and one
/// head's weights stay in L1 while a block streams past them); K is padded to 2^k_shift, so every index
/// is found with shifts and masks (no division per element on a GPU). Rows of a padded head or past the
/// last token have no columns. A row reduce over them is one block of threads per row on a GPU
/// (coalesced reads of a token's hidden states, also when they are 16-bit) and a fold per row on the CPU.
struct head_rows {
  index_t K, N, D;
  int block_shift, k_shift;
  static int log2_ceil(index_t x) {
    int s = 0;
    while ((index_t(1) << s) < x) ++s;
    return s;
  }
  head_rows(index_t K_, index_t N_, index_t D_) : K(K_), N(N_), D(D_), k_shift(log2_ceil(K_)) {
    int s = 0;
    while (s < 16 && (D_ << (s + 1)) <= 65536) ++s;  // 2^s tokens of D elements: at most 65536 elements
    const int n_shift = log2_ceil(N_ > 0 ? N_ : 1);
    block_shift = s < n_shift ? s : n_shift;
  }
  index_t count() const {
    const index_t blocks = ((N > 0 ? N : 1) + (index_t(1) << block_shift) - 1) >> block_shift;
    return blocks << (k_shift + block_shift);
  }
  ASYPPO_HD void token(index_t r, index_t& k, index_t& n) const {
    const index_t q = r >> block_shift;
    k = q & ((index_t(1) << k_shift) - 1);
    n = ((q >> k_shift) << block_shift) + (r & ((index_t(1) << block_shift) - 1));
  }
  /// The columns of row r: all D, or none for a padded head or a row past the last token.
  ASYPPO_HD void operator()(index_t r, index_t& lo, index_t& hi) const {
    index_t k, n;
    token(r, k, n);
    lo = 0;
    hi = k < K && n < N ? D : 0;
  }
};

/// H1 as a reduction over the columns d of a row: the dot product in lane_sums (element d into lane
/// d mod 8, each lane in increasing d), so any split of a row into contiguous pieces folded in order,
/// and the contiguous span fold, give the same bits.
template <class T, class H>
struct head_forward {
  view<const H, 3> hidden;
  view<const T, 2> weight;
  head_rows rows;
  using value_type = lane_sums;
  ASYPPO_HD lane_sums identity() const { return lane_sums::zero(); }
  ASYPPO_HD void add(lane_sums& acc, index_t r, index_t d) const {
    index_t k, n;
    rows.token(r, k, n);
    acc.v[d & 7] += static_cast<double>(hidden(k, n, d)) * static_cast<double>(weight(k, d));
  }
  ASYPPO_HD void add_span(lane_sums& acc, index_t r, index_t d0, index_t d1) const {
    index_t k, n;
    rows.token(r, k, n);
    if (hidden.stride[2] != 1 || weight.stride[1] != 1) {
      for (index_t d = d0; d < d1; ++d)
        acc.v[d & 7] += static_cast<double>(hidden(k, n, d)) * static_cast<double>(weight(k, d));
      return;
    }
    const H* h = &hidden(k, n, 0);
    const T* w = &weight(k, 0);
    lane_sums s = acc;  // a local: its updates cannot alias the inputs
    index_t d = d0;
    for (; d < d1 && (d & 7) != 0; ++d) s.v[d & 7] += static_cast<double>(h[d]) * static_cast<double>(w[d]);
    for (; d + 8 <= d1; d += 8)
      for (int j = 0; j < 8; ++j) s.v[j] += static_cast<double>(h[d + j]) * static_cast<double>(w[d + j]);
    for (; d < d1; ++d) s.v[d & 7] += static_cast<double>(h[d]) * static_cast<double>(w[d]);
    acc = s;
  }
  ASYPPO_HD lane_sums combine(const lane_sums& a, const lane_sums& b) const { return a + b; }
};

/// values[k,n] = the row's total + bias[k].
template <class T>
struct head_forward_sink {
  head_rows rows;
  seq_view<const T> bias;
  view<T, 2> values;
  ASYPPO_HD void operator()(index_t r, const lane_sums& s) const {
    index_t k, n;
    rows.token(r, k, n);
    if (k < rows.K && n < rows.N)
      values(k, n) = static_cast<T>(s.total() + (bias.data ? static_cast<double>(bias(k)) : 0.0));
  }
};

/// H4 at (n, d): each head's share, or (shared trunk) their sum over k in order.
template <class T>
struct head_grad_hidden {
  view<const T, 2> weight, grad_values;
  view<T, 3> grad_hidden;
  bool shared;
  ASYPPO_HD index_t work() const { return weight.extent[0]; }
  ASYPPO_HD void operator()(index_t n, index_t d) const {
    const index_t K = weight.extent[0];
    if (shared) {
      double s = 0;
      for (index_t k = 0; k < K; ++k) s += static_cast<double>(grad_values(k, n)) * static_cast<double>(weight(k, d));
      grad_hidden(0, n, d) = static_cast<T>(s);
      return;
    }
    for (index_t k = 0; k < K; ++k)
      grad_hidden(k, n, d) = static_cast<T>(static_cast<double>(grad_values(k, n)) * static_cast<double>(weight(k, d)));
  }
  /// The same over d in [d0, d1) of contiguous rows (vectorises).
  ASYPPO_HD void span(index_t n, index_t d0, index_t d1) const {
    if (!unit_inner_stride(weight) || grad_hidden.stride[2] != 1) {
      for (index_t d = d0; d < d1; ++d) (*this)(n, d);
      return;
    }
    const index_t K = weight.extent[0];
    T* o0 = &grad_hidden(0, n, 0);
    if (shared) {
      for (index_t d = d0; d < d1; ++d) {
        double s = 0;
        for (index_t k = 0; k < K; ++k) s += static_cast<double>(grad_values(k, n)) * static_cast<double>(weight(k, d));
        o0[d] = static_cast<T>(s);
      }
      return;
    }
    for (index_t k = 0; k < K; ++k) {
      const double g = static_cast<double>(grad_values(k, n));
      const T* w = &weight(k, 0);
      T* o = &grad_hidden(k, n, 0);
      for (index_t d = d0; d < d1; ++d) o[d] = static_cast<T>(g * static_cast<double>(w[d]));
    }
  }
};

/// Tokens per tile of H2: at least 256, and at most 64 tiles; depends on N only.
inline index_t head_tile_tokens(index_t N) {
  const index_t by_count = (N + 63) / 64;
  return by_count > 256 ? by_count : 256;
}

/// H2, first part: partial[(k P + p) D + d] = sum over the tokens n of tile p (ascending) of
/// G[k,n] H[k,n,d], in double. Row r = k P + p of a [K P, D] index space.
template <class T, class H>
struct head_grad_weight_tiles {
  view<const H, 3> hidden;
  view<const T, 2> grad_values;
  double* partial;
  index_t tiles, tile;  // P, tokens per tile
  ASYPPO_HD index_t work() const { return tile; }
  ASYPPO_HD void token_range(index_t p, index_t& lo, index_t& hi) const {
    const index_t N = grad_values.extent[1];
    lo = p * tile;
    hi = lo + tile < N ? lo + tile : N;
  }
  ASYPPO_HD void operator()(index_t r, index_t d) const {
    const index_t k = r / tiles, D = hidden.extent[2];
    index_t lo, hi;
    token_range(r - k * tiles, lo, hi);
    double s = 0;
    for (index_t n = lo; n < hi; ++n) s += static_cast<double>(grad_values(k, n)) * static_cast<double>(hidden(k, n, d));
    partial[r * D + d] = s;
  }
  /// The same for d in [d0, d1): the tile's tokens streamed row by row into the partial row.
  ASYPPO_HD void span(index_t r, index_t d0, index_t d1) const {
    if (hidden.stride[2] != 1) {
      for (index_t d = d0; d < d1; ++d) (*this)(r, d);
      return;
    }
    const index_t k = r / tiles, D = hidden.extent[2];
    index_t lo, hi;
    token_range(r - k * tiles, lo, hi);
    double* acc = partial + r * D;
    for (index_t d = d0; d < d1; ++d) acc[d] = 0;
    // Rows of more than 2048 partial sums (16 KB) leave L1: then four tokens per sweep, added in token
    // order (the same additions as one token at a time), for a quarter of their loads and stores.
    index_t n = lo;
    for (; d1 - d0 > 2048 && n + 4 <= hi; n += 4) {
      const double g0 = static_cast<double>(grad_values(k, n)), g1 = static_cast<double>(grad_values(k, n + 1)),
                   g2 = static_cast<double>(grad_values(k, n + 2)), g3 = static_cast<double>(grad_values(k, n + 3));
      const H *h0 = &hidden(k, n, 0), *h1 = &hidden(k, n + 1, 0), *h2 = &hidden(k, n + 2, 0), *h3 = &hidden(k, n + 3, 0);
      for (index_t d = d0; d < d1; ++d)
        acc[d] = (((acc[d] + g0 * static_cast<double>(h0[d])) + g1 * static_cast<double>(h1[d])) +
                  g2 * static_cast<double>(h2[d])) + g3 * static_cast<double>(h3[d]);
    }
    for (; n < hi; ++n) {
      const double g = static_cast<double>(grad_values(k, n));
      const H* h = &hidden(k, n, 0);
      for (index_t d = d0; d < d1; ++d) acc[d] += g * static_cast<double>(h[d]);
    }
  }
};

/// H2, second part: dW[k,d] (+)= the tiles' partials summed in tile order.
template <class T>
struct head_grad_weight_sum {
  const double* partial;
  index_t tiles;
  view<T, 2> grad_weight;
  bool accumulate;
  ASYPPO_HD index_t work() const { return tiles; }
  ASYPPO_HD void operator()(index_t k, index_t d) const {
    const index_t D = grad_weight.extent[1];
    double s = 0;
    for (index_t p = 0; p < tiles; ++p) s += partial[(k * tiles + p) * D + d];
    grad_weight(k, d) = static_cast<T>(accumulate ? static_cast<double>(grad_weight(k, d)) + s : s);
  }
};

/// H3: sum over the tokens of one head's gradient (row_reduce over [K, N]).
template <class T>
struct head_grad_bias {
  view<const T, 2> grad_values;
  using value_type = double;
  ASYPPO_HD double identity() const { return 0; }
  ASYPPO_HD void add(double& acc, index_t k, index_t n) const { acc += static_cast<double>(grad_values(k, n)); }
  ASYPPO_HD double combine(double a, double b) const { return a + b; }
};

template <class T>
struct head_grad_bias_sink {
  seq_view<T> grad_bias;
  bool accumulate;
  ASYPPO_HD void operator()(index_t k, double s) const {
    grad_bias(k) = static_cast<T>(accumulate ? static_cast<double>(grad_bias(k)) + s : s);
  }
};

/// Bias broadcast into the values before a GEMM with beta = 1.
template <class T>
struct head_bias_fill {
  seq_view<const T> bias;
  view<T, 2> values;
  ASYPPO_HD void operator()(index_t k, index_t n) const { values(k, n) = bias(k); }
};

/// What the checks found: sizes and whether the heads share one trunk.
struct head_dims {
  index_t K, N, D;
  bool shared;  // hidden has stride 0 along K and K > 1
};

/// The element types the heads take: hidden states H in T or in a 16-bit input type (read exactly).
template <class H, class T>
inline constexpr bool head_types_ok =
    (std::is_same_v<T, float> || std::is_same_v<T, double>) &&
    (std::is_same_v<H, T> || std::is_same_v<H, float> || is_half_type_v<H>);

template <class H, class T>
head_dims check_head_inputs(const char* where, view<const H, 3> hidden, view<const T, 2> weight) {
  static_assert(head_types_ok<H, T>,
                "critic heads: weights, values and gradients in float or double; hidden states in the same type, "
                "float, bfloat16 or float16");
  check_view(where, "weight", weight);
  const index_t K = weight.extent[0], D = weight.extent[1];
  if (K < 1) fail(where, "weight", "K (extent 0) must be >= 1, got ", K);
  if (D < 1) fail(where, "weight", "D (extent 1) must be >= 1, got ", D);
  check_view(where, "hidden", hidden);
  if (hidden.extent[0] != K || hidden.extent[2] != D)
    fail(where, "hidden", "extents [", hidden.extent[0], ",", hidden.extent[1], ",", hidden.extent[2],
         "], need [K,N,D] with K = ", K, " and D = ", D, " (weight is [K,D])");
  return {K, hidden.extent[1], D, K > 1 && hidden.stride[0] == 0};
}

/// NaN/Inf in a [K,X] view (every element is required finite).
template <class Backend, class T>
void check_head_finite(const Backend& be, const char* where, const char* name, view<const T, 2> v) {
  if (present(v)) check_finite_tokens<Backend, T>(be, where, name, v.extent[0], v.extent[1], {}, v, mask_view{});
}

/// A [K] view as the [1,K] view the checks take.
template <class T>
view<const T, 2> as_row(seq_view<const T> v) {
  return view<const T, 2>::strided(v.data, {1, v.extent[0]}, {0, v.stride[0]});
}

// ---- the GEMM mapping (backend/dense.hpp; column-major) --------------------------------------
// A [K,L] view with contiguous rows is K column-major L x 1 matrices (separate trunks: a batch of
// K GEMMs) or one L x K matrix (shared trunk: one GEMM over every head). hidden [K,N,D] is D x N
// per trunk (ld: the token stride). H1: V = H^T W; H2: dW = H G; H4: dH = W G^T.

/// BLAS's leading dimension for `cols` columns of `rows` contiguous elements `stride` apart; 0
/// when BLAS cannot take it (two or more columns closer than a column's length).
inline index_t blas_ld(index_t stride, index_t cols, index_t rows) {
  const index_t need = rows > 1 ? rows : 1;
  if (cols <= 1) return need;
  return stride >= need ? stride : 0;
}

struct head_gemm_layout {
  index_t batch, cols;  // separate trunks: (K, 1); shared: (1, K)
  explicit head_gemm_layout(const head_dims& d) : batch(d.shared ? 1 : d.K), cols(d.shared ? d.K : 1) {}
};

/// A [K,L] view as gemm matrices (L x cols, `batch` of them); data null when BLAS cannot take it.
template <class V>
auto head_matrix(const V& v, const head_gemm_layout& g, blas_op op = blas_op::none) {
  using T = std::remove_const_t<typename V::element_type>;
  const index_t L = v.extent[1];
  gemm_operand<T> a{v.data, blas_ld(v.stride[0], g.cols, L), g.batch > 1 ? v.stride[0] : 0, op};
  if (!(v.stride[1] == 1 || L <= 1) || a.ld == 0) a.data = nullptr;
  return a;
}

/// hidden (or its gradient) [K,N,D] as D x N matrices; data null when BLAS cannot take it.
template <class V>
auto trunk_matrix(const V& v, const head_gemm_layout& g, blas_op op = blas_op::none) {
  using T = std::remove_const_t<typename V::element_type>;
  const index_t N = v.extent[1], D = v.extent[2];
  gemm_operand<T> a{v.data, blas_ld(v.stride[1], N, D), g.batch > 1 ? v.stride[0] : 0, op};
  if (!(v.stride[2] == 1 || D <= 1) || a.ld == 0) a.data = nullptr;
  return a;
}

template <class T>
gemm_output<T> as_output(const gemm_operand<T>& a) {
  return {const_cast<T*>(a.data), a.ld, a.stride};
}

}  // namespace detail

/// H1: values[k,n] = hidden[k,n,:] . weight[k,:] + bias[k] (bias optional). See the file comment
/// for the views and checks.
template <class Backend, class H, class T>
void critic_heads_forward(const Backend& be, view<const H, 3> hidden, view<const T, 2> weight,
                          seq_view<const T> bias, view<T, 2> values, const critic_heads_options& opt = {}) {
  constexpr const char* where = "asyppo::critic_heads_forward";
  const detail::head_dims dm = detail::check_head_inputs(where, hidden, weight);
  if (detail::present(bias)) detail::check_input(where, "bias", bias, {dm.K});
  detail::check_output(where, "values", values, {dm.K, dm.N});
  detail::check_memory(be, where, "hidden", hidden, "weight", weight, "bias", bias, "values", values);
  if (opt.check_finite) {
    detail::check_head_finite(be, where, "weight", weight);
    detail::check_head_finite(be, where, "bias", detail::as_row(bias));
  }
  if (dm.N == 0) return;
  if constexpr (std::is_same_v<H, T> && detail::has_gemm<Backend, T>) {
    const detail::head_gemm_layout g(dm);
    const auto Hm = detail::trunk_matrix(hidden, g, blas_op::transpose);
    const auto W = detail::head_matrix(weight, g);
    const auto V = detail::head_matrix(view<const T, 2>(values), g);
    if (Hm.data && W.data && V.data) {
      if (detail::present(bias)) be.for_each(dm.K, dm.N, detail::head_bias_fill<T>{bias, values});
      be.gemm(gemm_shape{dm.N, g.cols, dm.D, g.batch}, Hm, W, detail::present(bias) ? 1.0 : 0.0,
              detail::as_output(V));
      return;
    }
  }
  const detail::head_rows rows(dm.K, dm.N, dm.D);
  be.row_reduce(rows.count(), dm.D, detail::head_forward<T, H>{hidden, weight, rows},
                detail::head_forward_sink<T>{rows, bias, values}, rows);
}

/// H2-H4: the gradients of the heads' parameters and of the hidden states, from grad_values
/// [K,N] = dL/dV. Each output of grads is optional. See the file comment for the views and checks.
template <class Backend, class H, class T>
void critic_heads_backward(const Backend& be, view<const H, 3> hidden, view<const T, 2> weight,
                           view<const T, 2> grad_values, const critic_head_gradients<T>& grads,
                           const critic_heads_options& opt = {}) {
  constexpr const char* where = "asyppo::critic_heads_backward";
  const detail::head_dims dm = detail::check_head_inputs(where, hidden, weight);
  const index_t K = dm.K, N = dm.N, D = dm.D;
  detail::check_input(where, "grad_values", grad_values, {K, N});
  detail::check_optional_output(where, "grads.weight", grads.weight, {K, D});
  detail::check_optional_output(where, "grads.bias", grads.bias, {K});
  if (detail::present(grads.hidden)) {
    detail::check_extents(where, "grads.hidden", grads.hidden, {K, N, D});
    const bool shared_out = K > 1 && grads.hidden.stride[0] == 0;
    if (shared_out != dm.shared)
      detail::fail(where, "grads.hidden", dm.shared ? "must have stride 0 along K, as hidden (one shared trunk)"
                                                     : "has stride 0 along K but hidden does not (a trunk per critic)");
    if (dm.shared) detail::check_output_view(where, "grads.hidden", grads.hidden[0]);
    else detail::check_output_view(where, "grads.hidden", grads.hidden);
  }
  detail::check_memory(be, where, "hidden", hidden, "weight", weight, "grad_values", grad_values, "grads.weight",
                       grads.weight, "grads.bias", grads.bias, "grads.hidden", grads.hidden);
  if (opt.check_finite) {
    detail::check_head_finite(be, where, "weight", weight);
    detail::check_head_finite(be, where, "grad_values", grad_values);
  }
  // H3 (also what N = 0 leaves: 0, or the accumulated value unchanged).
  if (detail::present(grads.bias))
    be.row_reduce(K, N, detail::head_grad_bias<T>{grad_values}, detail::head_grad_bias_sink<T>{grads.bias, opt.accumulate});
  if (N == 0) {
    if (detail::present(grads.weight) && !opt.accumulate)
      be.for_each(K, D, detail::head_grad_weight_sum<T>{nullptr, 0, grads.weight, false});
    return;
  }
  if constexpr (std::is_same_v<H, T> && detail::has_gemm<Backend, T>) {
    const detail::head_gemm_layout g(dm);
    const auto Hm = detail::trunk_matrix(hidden, g);
    const auto W = detail::head_matrix(weight, g);
    const auto G = detail::head_matrix(grad_values, g);
    const auto dW = detail::head_matrix(view<const T, 2>(grads.weight), g);
    const auto dH = detail::trunk_matrix(view<const T, 3>(grads.hidden), g);
    const bool want_w = detail::present(grads.weight), want_h = detail::present(grads.hidden);
    if (Hm.data && W.data && G.data && (!want_w || dW.data) && (!want_h || dH.data)) {
      if (want_w)  // H2: dW (D x cols) = H (D x N) G (N x cols); before H4 so that dH may overwrite H
        be.gemm(gemm_shape{D, g.cols, N, g.batch}, Hm, G, opt.accumulate ? 1.0 : 0.0, detail::as_output(dW));
      if (want_h) {  // H4: dH (D x N) = W (D x cols) G^T (cols x N)
        auto Gt = G;
        Gt.op = blas_op::transpose;
        be.gemm(gemm_shape{D, N, g.cols, g.batch}, W, Gt, 0.0, detail::as_output(dH));
      }
      return;
    }
  }
  if (detail::present(grads.weight)) {
    const index_t tile = detail::head_tile_tokens(N), P = (N + tile - 1) / tile;
    auto partial = be.template allocate<double>(K * P * D);
    be.for_each(K * P, D, detail::head_grad_weight_tiles<T, H>{hidden, grad_values, partial.data(), P, tile});
    be.for_each(K, D, detail::head_grad_weight_sum<T>{partial.data(), P, grads.weight, opt.accumulate});
  }
  if (detail::present(grads.hidden))
    be.for_each(N, D, detail::head_grad_hidden<T>{weight, grad_values, grads.hidden, dm.shared});
}

}  // namespace asyppo
