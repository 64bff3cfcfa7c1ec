// Tests of core/critic_heads.hpp (the K critics' linear value heads, Eq. H1-H4): a worked example
// with hand-checked numbers; every backend (CPU at 1-3 threads, the re-associating tiled backend,
// the GEMM mapping through a reference GEMM) against plain loops written here, on random shapes
// and layouts (padded and interleaved strides, a trunk per critic or one shared, with and without
// bias), in float and double; the chain heads -> value_loss -> heads against central finite
// differences; micro-batch accumulation; exact zeros on masked tokens; determinism; bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "asyppo/core/critic_heads.hpp"
#include "gemm_backend.hpp"
#include "tiled_backend.hpp"

using namespace asyppo;
using asyppo_test::gemm_backend;
using asyppo_test::tiled_backend;

static_assert(detail::has_gemm<gemm_backend, float> && detail::has_gemm<gemm_backend, double>);
static_assert(!detail::has_gemm<cpu_backend, float>, "the CPU backend runs the heads' pattern path");

namespace {

// One random problem in explicit storage: hidden [K or 1][N][D] with token stride D*inner + pad
// (inner 2 interleaves an unused element after each one), weight [K][D + wpad], values and
// gradients [K][N + vpad].
template <class T>
struct heads_case {
  int K, N, D;
  bool shared, with_bias;
  index_t inner, pad, wpad, vpad;
  std::vector<T> h, w, c, g;

  index_t tok_stride() const { return D * inner + pad; }
  index_t trunk_stride() const { return shared ? 0 : N * tok_stride(); }
  // The reference reads the storage through these formulas (not through the library's views).
  double H(int k, int n, int d) const {
    return static_cast<double>(h[static_cast<std::size_t>((shared ? 0 : k) * N * tok_stride() + n * tok_stride() + d * inner)]);
  }
  double W(int k, int d) const { return static_cast<double>(w[static_cast<std::size_t>(k * (D + wpad) + d)]); }
  double C(int k) const { return with_bias ? static_cast<double>(c[static_cast<std::size_t>(k)]) : 0.0; }
  double G(int k, int n) const { return static_cast<double>(g[static_cast<std::size_t>(k * (N + vpad) + n)]); }

  view<const T, 3> hidden() const {
    return view<const T, 3>::strided(h.data(), {K, N, D}, {trunk_stride(), tok_stride(), inner});
  }
  view<const T, 2> weight() const { return view<const T, 2>::strided(w.data(), {K, D}, {D + wpad, 1}); }
  seq_view<const T> bias() const { return with_bias ? seq_view<const T>(c.data(), K) : seq_view<const T>{}; }
  view<const T, 2> grad_values() const { return view<const T, 2>::strided(g.data(), {K, N}, {N + vpad, 1}); }
  std::size_t kn() const { return static_cast<std::size_t>(K) * (N + vpad); }
  view<T, 2> kn_view(std::vector<T>& v) const { return view<T, 2>::strided(v.data(), {K, N}, {N + vpad, 1}); }
  std::size_t hidden_size() const { return static_cast<std::size_t>(shared ? 1 : K) * N * tok_stride(); }
  view<T, 3> grad_hidden_view(std::vector<T>& v) const {
    return view<T, 3>::strided(v.data(), {K, N, D}, {trunk_stride(), tok_stride(), inner});
  }
};

template <class T>
heads_case<T> make_case(std::uint64_t seed, int K, int N, int D, bool shared, bool with_bias, index_t inner = 1,
                        index_t pad = 0, index_t wpad = 0, index_t vpad = 0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1, 1);
  heads_case<T> c{K, N, D, shared, with_bias, inner, pad, wpad, vpad, {}, {}, {}, {}};
  c.h.resize(c.hidden_size());
  for (auto& x : c.h) x = static_cast<T>(u(rng));
  c.w.resize(static_cast<std::size_t>(K) * (D + wpad));
  for (auto& x : c.w) x = static_cast<T>(u(rng));
  c.c.resize(static_cast<std::size_t>(K));
  for (auto& x : c.c) x = static_cast<T>(u(rng));
  c.g.resize(c.kn());
  for (auto& x : c.g) x = static_cast<T>(u(rng));
  return c;
}

// Plain reference of Eq. H1-H4 in double, with each value's sum of magnitudes (for tolerances).
struct heads_ref {
  std::vector<double> v, v_mag, dw, dw_mag, dc, dc_mag, dh, dh_mag;  // dh: [K or 1][N][D]
};

template <class T>
heads_ref reference(const heads_case<T>& c) {
  heads_ref r;
  const int K = c.K, N = c.N, D = c.D, KH = c.shared ? 1 : K;
  r.v.assign(static_cast<std::size_t>(K) * N, 0);
  r.v_mag = r.v;
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n) {
      double s = c.C(k), m = std::abs(c.C(k));
      for (int d = 0; d < D; ++d) {
        s += c.H(k, n, d) * c.W(k, d);
        m += std::abs(c.H(k, n, d) * c.W(k, d));
      }
      r.v[static_cast<std::size_t>(k * N + n)] = s;
      r.v_mag[static_cast<std::size_t>(k * N + n)] = m;
    }
  r.dw.assign(static_cast<std::size_t>(K) * D, 0);
  r.dw_mag = r.dw;
  r.dc.assign(static_cast<std::size_t>(K), 0);
  r.dc_mag = r.dc;
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n) {
      r.dc[static_cast<std::size_t>(k)] += c.G(k, n);
      r.dc_mag[static_cast<std::size_t>(k)] += std::abs(c.G(k, n));
      for (int d = 0; d < D; ++d) {
        r.dw[static_cast<std::size_t>(k * D + d)] += c.G(k, n) * c.H(k, n, d);
        r.dw_mag[static_cast<std::size_t>(k * D + d)] += std::abs(c.G(k, n) * c.H(k, n, d));
      }
    }
  r.dh.assign(static_cast<std::size_t>(KH) * N * D, 0);
  r.dh_mag = r.dh;
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n)
      for (int d = 0; d < D; ++d) {
        const std::size_t i = static_cast<std::size_t>(((c.shared ? 0 : k) * N + n) * D + d);
        r.dh[i] += c.G(k, n) * c.W(k, d);
        r.dh_mag[i] += std::abs(c.G(k, n) * c.W(k, d));
      }
  return r;
}

// Relative rounding of the outputs: the library and the reference GEMM accumulate in double and
// round once to T (float: 2^-24 relative to the result, bounded by the sum of magnitudes).
template <class T>
constexpr double round_tol() {
  return std::is_same_v<T, float> ? 1e-6 : 1e-13;
}

void require_near(double got, double want, double mag, double tol, const char* what, std::size_t i) {
  if (!(std::abs(got - want) <= tol * std::max(1.0, mag)))
    FAIL(what << " at " << i << ": got " << got << " want " << want);
}

// Runs forward and backward on backend be and compares every output with the reference.
template <class T, class Backend>
void check_against_reference(const Backend& be, const heads_case<T>& c, const heads_ref& r) {
  const int K = c.K, N = c.N, D = c.D;
  std::vector<T> v(c.kn(), T(-7));
  critic_heads_forward(be, c.hidden(), c.weight(), c.bias(), c.kn_view(v));
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n) {
      const std::size_t i = static_cast<std::size_t>(k * N + n);
      require_near(static_cast<double>(v[static_cast<std::size_t>(k * (N + c.vpad) + n)]), r.v[i], r.v_mag[i],
                   round_tol<T>(), "values", i);
    }
  for (int k = 0; k < K; ++k)  // padding of the values is not written
    for (index_t j = 0; j < c.vpad; ++j) REQUIRE(v[static_cast<std::size_t>(k * (N + c.vpad) + N + j)] == T(-7));

  std::vector<T> dw(static_cast<std::size_t>(K) * D, T(-7)), dc(static_cast<std::size_t>(K), T(-7)),
      dh(c.hidden_size(), T(-7));
  critic_head_gradients<T> grads{{dw.data(), K, D}, {dc.data(), K}, c.grad_hidden_view(dh)};
  critic_heads_backward(be, c.hidden(), c.weight(), c.grad_values(), grads);
  for (std::size_t i = 0; i < dw.size(); ++i)
    require_near(static_cast<double>(dw[i]), r.dw[i], r.dw_mag[i], round_tol<T>(), "dW", i);
  for (std::size_t i = 0; i < dc.size(); ++i)
    require_near(static_cast<double>(dc[i]), r.dc[i], r.dc_mag[i], round_tol<T>(), "dc", i);
  const int KH = c.shared ? 1 : K;
  for (int k = 0; k < KH; ++k)
    for (int n = 0; n < N; ++n)
      for (int d = 0; d < D; ++d) {
        const std::size_t i = static_cast<std::size_t>((k * N + n) * D + d);
        const std::size_t at = static_cast<std::size_t>(k * N * c.tok_stride() + n * c.tok_stride() + d * c.inner);
        require_near(static_cast<double>(dh[at]), r.dh[i], r.dh_mag[i], round_tol<T>(), "dH", i);
      }
  // Storage outside the gradient view (padding, interleaved slots) is not written.
  std::size_t untouched = 0;
  for (T x : dh) untouched += x == T(-7) ? 1 : 0;
  REQUIRE(untouched == c.hidden_size() - static_cast<std::size_t>(KH) * N * D);
}

}  // namespace

TEST_CASE("critic heads: worked example (hand-checked numbers)", "[critic_heads]") {
  // H0 = [[1,2],[3,4]], W0 = [0.5,-1], c0 = 0.25; H1 = [[0,1],[2,0]], W1 = [2,3], c1 = -1;
  // G0 = [1,-2], G1 = [0.5,1].
  const std::vector<double> h = {1, 2, 3, 4, 0, 1, 2, 0}, w = {0.5, -1, 2, 3}, c = {0.25, -1}, g = {1, -2, 0.5, 1};
  cpu_backend be;
  gemm_backend gb;
  for (int path = 0; path < 2; ++path) {
    CAPTURE(path);
    std::vector<double> v(4), dw(4), dc(2), dh(8);
    auto run = [&](const auto& b) {
      critic_heads_forward(b, view<const double, 3>(h.data(), 2, 2, 2), view<const double, 2>(w.data(), 2, 2),
                           seq_view<const double>(c.data(), 2), view<double, 2>(v.data(), 2, 2));
      critic_heads_backward(b, view<const double, 3>(h.data(), 2, 2, 2), view<const double, 2>(w.data(), 2, 2),
                            view<const double, 2>(g.data(), 2, 2),
                            critic_head_gradients<double>{{dw.data(), 2, 2}, {dc.data(), 2}, {dh.data(), 2, 2, 2}});
    };
    if (path == 0) run(be);
    else run(gb);
    // V0 = [1*0.5 - 2 + 0.25, 1.5 - 4 + 0.25], V1 = [0 + 3 - 1, 4 + 0 - 1]
    REQUIRE(v == std::vector<double>{-1.25, -2.25, 2, 3});
    // dW0 = 1*[1,2] - 2*[3,4], dW1 = 0.5*[0,1] + 1*[2,0]; dc = sums of G
    REQUIRE(dw == std::vector<double>{-5, -6, 2, 0.5});
    REQUIRE(dc == std::vector<double>{-1, 1.5});
    // dH_k[n] = G[k,n] W_k
    REQUIRE(dh == std::vector<double>{0.5, -1, -1, 2, 1, 1.5, 2, 3});
  }
  REQUIRE(gb.calls() == 3);  // H1, H2, H4 as one batched GEMM each

  // One trunk (H0) shared by both heads: V1 = H0 W1 - 1 = [7, 17]; dW1 = 0.5*[1,2] + [3,4];
  // dH[n] = G0[n] W0 + G1[n] W1 = [1.5, 0.5], [1, 5].
  for (int path = 0; path < 2; ++path) {
    std::vector<double> v(4), dw(4), dh(4);
    const auto hs = shared_trunk(view<const double, 2>(h.data(), 2, 2), 2);
    auto run = [&](const auto& b) {
      critic_heads_forward(b, hs, view<const double, 2>(w.data(), 2, 2), seq_view<const double>(c.data(), 2),
                           view<double, 2>(v.data(), 2, 2));
      critic_heads_backward(b, hs, view<const double, 2>(w.data(), 2, 2), view<const double, 2>(g.data(), 2, 2),
                            critic_head_gradients<double>{{dw.data(), 2, 2}, {}, shared_trunk(view<double, 2>(dh.data(), 2, 2), 2)});
    };
    if (path == 0) run(be);
    else run(gb);
    REQUIRE(v == std::vector<double>{-1.25, -2.25, 7, 17});
    REQUIRE(dw == std::vector<double>{-5, -6, 3.5, 5});
    REQUIRE(dh == std::vector<double>{1.5, 0.5, 1, 5});
  }
  REQUIRE(gb.calls() == 6);
}

TEMPLATE_TEST_CASE("critic heads: every backend against the plain reference, random shapes and layouts",
                   "[critic_heads]", float, double) {
  using T = TestType;
  std::mt19937_64 pick(11);
  const cpu_backend cpu1(1), cpu2(2), cpu3(3);
  const tiled_backend tiled(5);
  for (int trial = 0; trial < 40; ++trial) {
    const int K = 1 + static_cast<int>(pick() % 3);
    const int N = std::vector<int>{1, 3, 37, 300, 1100}[pick() % 5];
    const int D = std::vector<int>{1, 5, 8, 64, 131}[pick() % 5];
    const bool shared = pick() % 2 == 0, bias = pick() % 3 != 0;
    const index_t inner = pick() % 4 == 0 ? 2 : 1, pad = static_cast<index_t>(pick() % 3);
    const index_t wpad = static_cast<index_t>(pick() % 2), vpad = static_cast<index_t>(pick() % 2);
    CAPTURE(trial, K, N, D, shared, bias, inner, pad, wpad, vpad);
    const auto c = make_case<T>(1000 + static_cast<std::uint64_t>(trial), K, N, D, shared, bias, inner, pad, wpad, vpad);
    const heads_ref r = reference(c);
    check_against_reference(cpu1, c, r);
    check_against_reference(cpu2, c, r);
    check_against_reference(cpu3, c, r);
    check_against_reference(tiled, c, r);
    gemm_backend gb;
    check_against_reference(gb, c, r);
    // The GEMM path is taken exactly when every matrix has a contiguous inner dimension.
    REQUIRE(gb.calls() == (inner == 1 || D == 1 ? 3 : 0));
  }
}

TEMPLATE_TEST_CASE("critic heads: bit-identical for any thread count, run to run, strided or contiguous",
                   "[critic_heads][determinism]", float, double) {
  using T = TestType;
  const int K = 2, N = 5000, D = 45;  // D % 8 != 0: the lanes' remainder; dW in 20 tiles of 256 tokens (N alone fixes them)
  for (bool shared : {false, true}) {
    const auto c = make_case<T>(77, K, N, D, shared, true);
    // The same numbers with interleaved hidden states (inner stride 2): the per-element paths.
    auto cs = make_case<T>(77, K, N, D, shared, true, 2);
    for (int k = 0; k < (shared ? 1 : K); ++k)
      for (int n = 0; n < N; ++n)
        for (int d = 0; d < D; ++d)
          cs.h[static_cast<std::size_t>(k * N * cs.tok_stride() + n * cs.tok_stride() + 2 * d)] =
              c.h[static_cast<std::size_t>(k * N * c.tok_stride() + n * c.tok_stride() + d)];
    cs.w = c.w;
    cs.c = c.c;
    cs.g = c.g;
    auto run = [&](const heads_case<T>& hc, int threads) {
      const cpu_backend be(threads);
      std::vector<T> v(hc.kn()), dw(static_cast<std::size_t>(K) * D), dc(K), dh(hc.hidden_size());
      critic_heads_forward(be, hc.hidden(), hc.weight(), hc.bias(), hc.kn_view(v));
      critic_heads_backward(be, hc.hidden(), hc.weight(), hc.grad_values(),
                            critic_head_gradients<T>{{dw.data(), K, D}, {dc.data(), K}, hc.grad_hidden_view(dh)});
      std::vector<T> dense;  // dH in [K or 1][N][D] order, whatever the storage
      for (int k = 0; k < (shared ? 1 : K); ++k)
        for (int n = 0; n < N; ++n)
          for (int d = 0; d < D; ++d)
            dense.push_back(dh[static_cast<std::size_t>(k * N * hc.tok_stride() + n * hc.tok_stride() + d * hc.inner)]);
      return std::vector<std::vector<T>>{v, dw, dc, dense};
    };
    const auto base = run(c, 1);
    REQUIRE(run(c, 1) == base);
    REQUIRE(run(c, 2) == base);
    REQUIRE(run(c, 4) == base);
    REQUIRE(run(cs, 1) == base);
    REQUIRE(run(cs, 2) == base);
  }
}

TEST_CASE("critic heads: the chain heads -> value_loss -> heads matches central finite differences",
          "[critic_heads][gradient]") {
  // L(H, W, c) = value_loss(V = heads(H, W, c)) with clipping off (smooth), B x T = 3 x 7 tokens.
  const int K = 2, B = 3, Tn = 7, N = B * Tn, D = 6;
  for (bool shared : {false, true}) {
    CAPTURE(shared);
    auto c = make_case<double>(5, K, N, D, shared, true);
    std::mt19937_64 rng(9);
    std::vector<double> R(static_cast<std::size_t>(N));
    std::vector<std::uint8_t> m(static_cast<std::size_t>(N));
    for (int i = 0; i < N; ++i) {
      R[static_cast<std::size_t>(i)] = std::uniform_real_distribution<double>(-1, 1)(rng);
      m[static_cast<std::size_t>(i)] = (i % Tn) < 5 - (i / Tn) ? 1 : 0;  // right padding
    }
    value_loss_options vo;
    vo.clip = 0;
    const cpu_backend be;
    auto loss = [&](const heads_case<double>& hc, std::vector<double>* grad) {
      std::vector<double> v(static_cast<std::size_t>(K) * N);
      critic_heads_forward(be, hc.hidden(), hc.weight(), hc.bias(), view<double, 2>(v.data(), K, N));
      value_loss_inputs<double> in;
      in.values = critic_view<const double>(v.data(), K, B, Tn);
      in.returns = token_view<const double>(R.data(), B, Tn);
      in.mask = mask_view(m.data(), B, Tn);
      if (grad) grad->assign(static_cast<std::size_t>(K) * N, 0.0);
      return value_loss(be, in, grad ? critic_view<double>(grad->data(), K, B, Tn) : critic_view<double>{}, vo).loss;
    };
    std::vector<double> G;
    (void)loss(c, &G);
    std::vector<double> dw(static_cast<std::size_t>(K) * D), dc(K), dh(c.hidden_size());
    critic_heads_backward(be, c.hidden(), c.weight(), view<const double, 2>(G.data(), K, N),
                          critic_head_gradients<double>{{dw.data(), K, D}, {dc.data(), K}, c.grad_hidden_view(dh)});
    const double eps = 1e-6;
    auto fd = [&](double& x) {
      const double x0 = x;
      x = x0 + eps;
      const double lp = loss(c, nullptr);
      x = x0 - eps;
      const double lm = loss(c, nullptr);
      x = x0;
      return (lp - lm) / (2 * eps);
    };
    for (std::size_t i = 0; i < c.w.size(); ++i) REQUIRE(std::abs(fd(c.w[i]) - dw[i]) <= 1e-7);
    for (std::size_t i = 0; i < c.c.size(); ++i) REQUIRE(std::abs(fd(c.c[i]) - dc[i]) <= 1e-7);
    for (std::size_t i = 0; i < c.h.size(); i += 5) REQUIRE(std::abs(fd(c.h[i]) - dh[i]) <= 1e-7);
    // Masked tokens: value_loss gives them exactly zero gradient, and so do the heads' dH.
    for (int n = 0; n < N; ++n)
      if (!m[static_cast<std::size_t>(n)])
        for (int k = 0; k < (shared ? 1 : K); ++k)
          for (int d = 0; d < D; ++d)
            REQUIRE(dh[static_cast<std::size_t>(k * N * c.tok_stride() + n * c.tok_stride() + d)] == 0.0);
  }
}

TEMPLATE_TEST_CASE("critic heads: micro-batched accumulation equals the full batch", "[critic_heads]", float, double) {
  using T = TestType;
  const int K = 2, N = 900, D = 33;
  for (bool shared : {false, true})
    for (int path = 0; path < 2; ++path) {
      CAPTURE(shared, path);
      const auto c = make_case<T>(21, K, N, D, shared, true);
      const heads_ref r = reference(c);
      auto run = [&](const auto& be) {
        std::vector<T> dw(static_cast<std::size_t>(K) * D, T(0.25)), dc(K, T(-0.5)), dh(c.hidden_size());
        critic_heads_options acc;
        acc.accumulate = true;
        for (int lo : {0, 350, 351}) {  // micro-batches [0,350), [350,351), [351,900)
          const int hi = lo == 0 ? 350 : lo == 350 ? 351 : N;
          const auto h = view<const T, 3>::strided(c.h.data() + lo * c.tok_stride(), {K, hi - lo, D},
                                                   {c.trunk_stride(), c.tok_stride(), 1});
          const auto g = view<const T, 2>::strided(c.g.data() + lo, {K, hi - lo}, {N, 1});
          const auto dhv = view<T, 3>::strided(dh.data() + lo * c.tok_stride(), {K, hi - lo, D},
                                               {c.trunk_stride(), c.tok_stride(), 1});
          critic_heads_backward(be, h, c.weight(), g, critic_head_gradients<T>{{dw.data(), K, D}, {dc.data(), K}, dhv}, acc);
        }
        for (std::size_t i = 0; i < dw.size(); ++i)
          require_near(static_cast<double>(dw[i]) - 0.25, r.dw[i], r.dw_mag[i] + 0.25, 4 * round_tol<T>(), "dW", i);
        for (std::size_t i = 0; i < dc.size(); ++i)
          require_near(static_cast<double>(dc[i]) + 0.5, r.dc[i], r.dc_mag[i] + 0.5, 4 * round_tol<T>(), "dc", i);
        // dH is per token: the micro-batches give the full batch's bits.
        std::vector<T> full(c.hidden_size());
        critic_heads_backward(be, c.hidden(), c.weight(), c.grad_values(),
                              critic_head_gradients<T>{{}, {}, c.grad_hidden_view(full)});
        REQUIRE(dh == full);
      };
      if (path == 0) run(cpu_backend(2));
      else run(gemm_backend());
    }
}

TEST_CASE("critic heads: N = 0 and single-element shapes", "[critic_heads]") {
  const cpu_backend be;
  std::vector<double> w = {1, 2}, dw = {5, 5}, dc = {5};
  const double* none = nullptr;
  // No tokens: nothing to write for the values; the overwritten gradients become 0, accumulated ones stay.
  critic_heads_forward(be, view<const double, 3>(none, 1, 0, 2), view<const double, 2>(w.data(), 1, 2), {},
                       view<double, 2>(static_cast<double*>(nullptr), 1, 0));
  critic_heads_options acc;
  acc.accumulate = true;
  critic_heads_backward(be, view<const double, 3>(none, 1, 0, 2), view<const double, 2>(w.data(), 1, 2),
                        view<const double, 2>(none, 1, 0), critic_head_gradients<double>{{dw.data(), 1, 2}, {dc.data(), 1}, {}}, acc);
  REQUIRE(dw == std::vector<double>{5, 5});
  REQUIRE(dc == std::vector<double>{5});
  critic_heads_backward(be, view<const double, 3>(none, 1, 0, 2), view<const double, 2>(w.data(), 1, 2),
                        view<const double, 2>(none, 1, 0), critic_head_gradients<double>{{dw.data(), 1, 2}, {dc.data(), 1}, {}});
  REQUIRE(dw == std::vector<double>{0, 0});
  REQUIRE(dc == std::vector<double>{0});
}

TEST_CASE("critic heads: bad input is rejected by name and changes nothing", "[critic_heads][errors]") {
  const cpu_backend be;
  const int K = 2, N = 3, D = 4;
  auto c = make_case<double>(3, K, N, D, false, true);
  std::vector<double> v(static_cast<std::size_t>(K) * N, -7.0), dw(static_cast<std::size_t>(K) * D, -7.0),
      dh(c.hidden_size(), -7.0);
  const auto v0 = v, dw0 = dw, dh0 = dh;
  auto expect = [&](auto&& call, const char* argument, const char* text) {
    try {
      call();
      FAIL("expected asyppo::error");
    } catch (const asyppo::error& e) {
      CAPTURE(e.what());
      REQUIRE(e.argument() == argument);
      REQUIRE(std::string(e.what()).find(text) != std::string::npos);
    }
    REQUIRE(v == v0);
    REQUIRE(dw == dw0);
    REQUIRE(dh == dh0);
  };
  const view<double, 2> vv(v.data(), K, N);
  const critic_head_gradients<double> grads{{dw.data(), K, D}, {}, c.grad_hidden_view(dh)};
  expect([&] { critic_heads_forward(be, c.hidden(), view<const double, 2>(c.w.data(), 0, D), {}, view<double, 2>(v.data(), 0, N)); },
         "weight", "K (extent 0) must be >= 1");
  expect([&] { critic_heads_forward(be, view<const double, 3>(c.h.data(), K, N, 0), view<const double, 2>(c.w.data(), K, 0), {}, vv); },
         "weight", "D (extent 1) must be >= 1");
  expect([&] { critic_heads_forward(be, view<const double, 3>(c.h.data(), K, N, D - 1), c.weight(), {}, vv); }, "hidden",
         "need [K,N,D]");
  expect([&] { critic_heads_forward(be, c.hidden(), c.weight(), seq_view<const double>(c.c.data(), 1), vv); }, "bias",
         "extent 0 is 1");
  expect([&] { critic_heads_forward(be, c.hidden(), c.weight(), {}, view<double, 2>(v.data(), K, N - 1)); }, "values",
         "extent 1");
  expect([&] { critic_heads_forward(be, c.hidden(), c.weight(), {}, view<double, 2>::strided(v.data(), {K, N}, {1, 1})); },
         "values", "overlapping");
  c.w[3] = std::numeric_limits<double>::quiet_NaN();
  expect([&] { critic_heads_forward(be, c.hidden(), c.weight(), c.bias(), vv); }, "weight", "NaN or Inf");
  expect([&] { critic_heads_backward(be, c.hidden(), c.weight(), c.grad_values(), grads); }, "weight", "NaN or Inf");
  c.w[3] = 0.5;
  c.c[1] = std::numeric_limits<double>::infinity();
  expect([&] { critic_heads_forward(be, c.hidden(), c.weight(), c.bias(), vv); }, "bias", "NaN or Inf");
  c.g[4] = -std::numeric_limits<double>::infinity();
  expect([&] { critic_heads_backward(be, c.hidden(), c.weight(), c.grad_values(), grads); }, "grad_values", "NaN or Inf");
  c.g[4] = 0.5;
  expect([&] { critic_heads_backward(be, c.hidden(), c.weight(), view<const double, 2>(c.g.data(), K, N + 1), grads); },
         "grad_values", "extent 1");
  expect([&] {
    critic_heads_backward(be, c.hidden(), c.weight(), c.grad_values(),
                          critic_head_gradients<double>{{dw.data(), K, D - 1}, {}, {}});
  }, "grads.weight", "extent 1");
  expect([&] {  // a per-critic trunk with a shared (stride 0) gradient
    critic_heads_backward(be, c.hidden(), c.weight(), c.grad_values(),
                          critic_head_gradients<double>{{}, {}, shared_trunk(view<double, 2>(dh.data(), N, D), K)});
  }, "grads.hidden", "stride 0 along K but hidden does not");
  const auto cs = make_case<double>(3, K, N, D, true, false);
  expect([&] {  // a shared trunk with per-critic gradients
    critic_heads_backward(be, cs.hidden(), cs.weight(), cs.grad_values(),
                          critic_head_gradients<double>{{}, {}, view<double, 3>(dh.data(), K, N, D)});
  }, "grads.hidden", "must have stride 0 along K");
  // check_finite = false lets NaN through (propagated, not rejected).
  c.w[0] = std::numeric_limits<double>::quiet_NaN();
  critic_heads_options off;
  off.check_finite = false;
  critic_heads_forward(be, c.hidden(), c.weight(), {}, vv, off);
  REQUIRE(std::isnan(v[0]));
}

TEMPLATE_TEST_CASE("critic heads: bfloat16 and float16 hidden states are read exactly", "[critic_heads][half_types]",
                   bfloat16, float16) {
  // The heads on 16-bit hidden states give the bits of the same heads on the widened (float) copy,
  // on every backend path that reads them (contiguous and interleaved, shared and per-critic trunks),
  // and the widened copy's results match the plain reference.
  using H16 = TestType;
  std::mt19937_64 rng(41);
  std::uniform_real_distribution<float> u(-2, 2);
  for (bool shared : {false, true})
    for (index_t inner : {1, 2}) {
      const int K = 2, N = 700, D = 37;
      CAPTURE(shared, inner);
      auto c = make_case<float>(shared ? 8 : 9, K, N, D, shared, true, inner, 1);
      std::vector<H16> h16(c.h.size());
      for (std::size_t i = 0; i < c.h.size(); ++i) {
        h16[i] = H16::from_float(u(rng));
        c.h[i] = static_cast<float>(h16[i]);  // the widened copy
      }
      const auto hv16 = view<const H16, 3>::strided(h16.data(), {K, N, D}, {c.trunk_stride(), c.tok_stride(), inner});
      for (int threads : {1, 2}) {
        const cpu_backend be(threads);
        std::vector<float> v16(c.kn()), v32(c.kn());
        critic_heads_forward(be, hv16, c.weight(), c.bias(), c.kn_view(v16));
        critic_heads_forward(be, c.hidden(), c.weight(), c.bias(), c.kn_view(v32));
        REQUIRE(v16 == v32);
        std::vector<float> dw16(static_cast<std::size_t>(K) * D), dw32(dw16.size()), dh16(c.hidden_size()), dh32(c.hidden_size());
        critic_heads_backward(be, hv16, c.weight(), c.grad_values(),
                              critic_head_gradients<float>{{dw16.data(), K, D}, {}, c.grad_hidden_view(dh16)});
        critic_heads_backward(be, c.hidden(), c.weight(), c.grad_values(),
                              critic_head_gradients<float>{{dw32.data(), K, D}, {}, c.grad_hidden_view(dh32)});
        REQUIRE(dw16 == dw32);
        REQUIRE(dh16 == dh32);
      }
      // A backend with a GEMM still reads 16-bit hidden states through the pattern path.
      gemm_backend gb;
      std::vector<float> vg(c.kn()), v32(c.kn());
      critic_heads_forward(gb, hv16, c.weight(), c.bias(), c.kn_view(vg));
      REQUIRE(gb.calls() == 0);
      critic_heads_forward(cpu_backend(), c.hidden(), c.weight(), c.bias(), c.kn_view(v32));
      REQUIRE(vg == v32);
      check_against_reference(cpu_backend(), c, reference(c));
    }
}

TEST_CASE("critic heads: float hidden states with double weights and outputs", "[critic_heads]") {
  // H = float, T = double: the same bits as double hidden states holding the same (float) values.
  const int K = 2, N = 300, D = 19;
  auto c = make_case<double>(12, K, N, D, false, true);
  std::vector<float> h32(c.h.size());
  for (std::size_t i = 0; i < c.h.size(); ++i) {
    h32[i] = static_cast<float>(c.h[i]);
    c.h[i] = h32[i];
  }
  const view<const float, 3> hv(h32.data(), K, N, D);
  const cpu_backend be(2);
  std::vector<double> v32(c.kn()), v64(c.kn()), dw32(static_cast<std::size_t>(K) * D), dw64(dw32.size());
  critic_heads_forward(be, hv, c.weight(), c.bias(), c.kn_view(v32));
  critic_heads_forward(be, c.hidden(), c.weight(), c.bias(), c.kn_view(v64));
  REQUIRE(v32 == v64);
  critic_heads_backward(be, hv, c.weight(), c.grad_values(), critic_head_gradients<double>{{dw32.data(), K, D}, {}, {}});
  critic_heads_backward(be, c.hidden(), c.weight(), c.grad_values(), critic_head_gradients<double>{{dw64.data(), K, D}, {}, {}});
  REQUIRE(dw32 == dw64);
}
