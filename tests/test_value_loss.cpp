// Tests of core/value_loss.hpp: K mini-critics on their own shards, normalised by their own
// shards, against a plain reference and central finite differences; empty critics, per-critic
// targets, micro-batch accumulation, validation and thread-count determinism.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "loss_reference.hpp"
#include "loss_test_util.hpp"

using namespace asyppo;
using lt::cv;
using lt::mk;
using lt::mv;

namespace {

struct vcase {
  int K, B, T;
  lref::vec V, Vo, R, Rk;    // V, Vo, Rk: K*B*T; R: B*T
  lref::bytes m;
  std::vector<lref::bytes> in_shard;  // K x B
  lref::vec shard;                    // K*B 0/1
};

vcase make_v(std::uint64_t seed, int K, int B, int T, int empty_critic = -1) {
  std::mt19937_64 rng(seed);
  vcase c{K, B, T, {}, {}, {}, {}, {}, {}, {}};
  const std::size_t n = static_cast<std::size_t>(B) * T, kn = K * n;
  c.Vo = lref::random_vec(rng, kn, -1, 1);
  const auto dv = lref::random_vec(rng, kn, -0.6, 0.6);
  c.V.resize(kn);
  for (std::size_t i = 0; i < kn; ++i) c.V[i] = c.Vo[i] + dv[i];
  c.R = lref::random_vec(rng, n, -1, 1);
  c.Rk = lref::random_vec(rng, kn, -1, 1);
  c.m = lref::random_mask(rng, B, T);
  c.in_shard.assign(K, lref::bytes(B, 0));
  c.shard.assign(static_cast<std::size_t>(K) * B, 0.0);
  for (int b = 0; b < B; ++b) {
    int k = static_cast<int>(rng() % K);
    if (k == empty_critic) k = (k + 1) % K;
    c.in_shard[k][b] = 1;
    c.shard[static_cast<std::size_t>(k) * B + b] = 1.0;
  }
  return c;
}

template <class T>
struct vdata {
  std::vector<T> V, Vo, R, Rk, S;
  explicit vdata(const vcase& c)
      : V(lt::cast<T>(c.V)), Vo(lt::cast<T>(c.Vo)), R(lt::cast<T>(c.R)), Rk(lt::cast<T>(c.Rk)), S(lt::cast<T>(c.shard)) {}
};

template <class T>
value_loss_result run_v(const cpu_backend& be, const vcase& c, const vdata<T>& d, std::vector<T>* grad,
                        const value_loss_options& o, bool per_critic = false, bool shards = true) {
  value_loss_inputs<T> in;
  in.values = critic_view<const T>(d.V.data(), c.K, c.B, c.T);
  in.old_values = critic_view<const T>(d.Vo.data(), c.K, c.B, c.T);
  if (per_critic) in.critic_returns = critic_view<const T>(d.Rk.data(), c.K, c.B, c.T);
  else in.returns = cv(d.R, c.B, c.T);
  in.mask = mk(c.m, c.B, c.T);
  if (shards) in.shard_weights = view<const T, 2>(d.S.data(), c.K, c.B);
  return value_loss(be, in, grad ? critic_view<T>(grad->data(), c.K, c.B, c.T) : critic_view<T>{}, o);
}

lref::vec slice(const lref::vec& v, int k, std::size_t n) {
  return lref::vec(v.begin() + static_cast<std::ptrdiff_t>(k * n), v.begin() + static_cast<std::ptrdiff_t>((k + 1) * n));
}

/// Reference normaliser of critic k's shard.
lref::norm shard_norm(const vcase& c, int k) {
  lref::bytes ms(c.m.size(), 0);
  for (int b = 0; b < c.B; ++b)
    for (int t = 0; t < c.T; ++t) ms[b * c.T + t] = c.m[b * c.T + t] && c.in_shard[k][b];
  return lref::local_norm(ms, c.B, c.T);
}

}  // namespace

TEMPLATE_TEST_CASE("value_loss matches the reference: shards, own normaliser, clip, half, targets", "[value]", float,
                   double) {
  using T = TestType;
  cpu_backend be(1);
  std::mt19937_64 srng(41);
  for (int rep = 0; rep < 8; ++rep) {
    const int K = 1 + static_cast<int>(srng() % 3), B = 2 + static_cast<int>(srng() % 8), Tn = 1 + static_cast<int>(srng() % 12);
    const vcase c = make_v(500 + rep, K, B, Tn);
    const vdata<T> d(c);
    const std::size_t n = static_cast<std::size_t>(B) * Tn;
    const auto Vr = lt::rounded<T>(c.V), Vor = lt::rounded<T>(c.Vo), Rr = lt::rounded<T>(c.R), Rkr = lt::rounded<T>(c.Rk);
    for (int mode = 0; mode < lt::kModes; ++mode)
      for (double clip : {0.2, 0.0})
        for (bool half : {true, false})
          for (bool per_critic : {false, true}) {
            value_loss_options o;
            o.clip = clip;
            o.half = half;
            o.aggregation = lt::mode_of(mode);
            std::vector<T> g(K * n, T(-3));
            const auto r = run_v<T>(be, c, d, &g, o, per_critic);
            REQUIRE(r.critics.size() == static_cast<std::size_t>(K));
            double total = 0;
            for (int k = 0; k < K; ++k) {
              lref::vec gk;
              const auto ref = lref::value_one(slice(Vr, k, n), slice(Vor, k, n), per_critic ? slice(Rkr, k, n) : Rr, c.m,
                                               c.in_shard[k], B, Tn, clip, half, mode, shard_norm(c, k), &gk);
              const auto& mk_ = r.critics[k];
              INFO("rep " << rep << " mode " << mode << " clip " << clip << " half " << half << " pc " << per_critic
                          << " k " << k);
              CHECK(lt::close(mk_.loss, ref.loss, 1e-12, 1e-14));
              CHECK(mk_.tokens == ref.n);
              CHECK(lt::close(mk_.mse, ref.mse, 1e-11, 1e-14));
              CHECK(lt::close(mk_.clip_fraction, ref.clipfrac, 1e-14));
              CHECK(lt::close(mk_.explained_variance, ref.ev, 1e-9, 1e-12));
              for (std::size_t i = 0; i < n; ++i) {
                const double gi = static_cast<double>(g[k * n + i]);
                CHECK(lt::close(gi, gk[i], lt::grad_rtol<T>(), 1e-30));
                if (!c.m[i] || !c.in_shard[k][i / Tn]) CHECK(g[k * n + i] == T(0));
              }
              total += ref.loss;
            }
            CHECK(lt::close(r.loss, total, 1e-12, 1e-14));
          }
  }
}

TEST_CASE("value_loss gradient matches central finite differences", "[value][fd]") {
  cpu_backend be(1);
  const vcase c = make_v(71, 2, 4, 5);
  for (int mode = 0; mode < lt::kModes; ++mode)
    for (double clip : {0.2, 0.0}) {
      value_loss_options o;
      o.clip = clip;
      o.aggregation = lt::mode_of(mode);
      vdata<double> d(c);
      std::vector<double> g(d.V.size());
      run_v<double>(be, c, d, &g, o);
      for (std::size_t i = 0; i < d.V.size(); ++i) {
        vdata<double> e = d;
        e.V[i] += 1e-6;
        const double up = run_v<double>(be, c, e, nullptr, o).loss;
        e.V[i] -= 2e-6;
        const double dn = run_v<double>(be, c, e, nullptr, o).loss;
        INFO("mode " << mode << " clip " << clip << " i " << i);
        CHECK(std::fabs((up - dn) / 2e-6 - g[i]) <= 1e-7 * std::max(1.0, std::fabs(g[i])));
      }
    }
}

TEST_CASE("value_loss: each critic is normalised by its own shard, not the whole batch", "[value]") {
  cpu_backend be(1);
  // K = 2, B = 2, T = 2, every token valid; critic 0 trains on row 0, critic 1 on row 1.
  const std::vector<double> V = {1, 2, 0, 0, /*critic 1*/ 0, 0, 3, 5}, R = {0, 0, 1, 1}, S = {1, 0, 0, 1};
  const lref::bytes m(4, 1);
  value_loss_inputs<double> in;
  in.values = critic_view<const double>(V.data(), 2, 2, 2);
  in.returns = cv(R, 2, 2);
  in.mask = mk(m, 2, 2);
  in.shard_weights = view<const double, 2>(S.data(), 2, 2);
  value_loss_options o;
  o.clip = 0;  // old values not needed
  o.aggregation = loss_aggregation::token_mean;
  std::vector<double> g(8, 1.0);
  const auto r = value_loss(be, in, critic_view<double>(g.data(), 2, 2, 2), o);
  CHECK(r.critics[0].loss == Approx(0.5 * (1 + 4) / 2));   // own 2 tokens, not 4
  CHECK(r.critics[1].loss == Approx(0.5 * (4 + 16) / 2));
  CHECK(r.critics[0].normalizer.tokens == 2);
  CHECK(r.loss == Approx(r.critics[0].loss + r.critics[1].loss));
  CHECK(g == std::vector<double>{0.5, 1.0, 0, 0, 0, 0, 1.0, 2.0});
  CHECK(r.critics[0].mse == Approx(2.5));
  // Explicit per-critic normalisers (e.g. summed over micro-batches) are honoured.
  o.normalizers = {loss_normalizer{4, 2, 2}, loss_normalizer{8, 2, 2}};
  const auto r2 = value_loss(be, in, critic_view<double>{}, o);
  CHECK(r2.critics[0].loss == Approx(0.5 * 5 / 4));
  CHECK(r2.critics[1].loss == Approx(0.5 * 20 / 8));
}

TEST_CASE("value_loss: a critic with no tokens gives loss 0 and NaN metrics; EV edge cases", "[value]") {
  cpu_backend be(1);
  for (int mode = 0; mode < lt::kModes; ++mode) {
    vcase c = make_v(88, 3, 6, 4, /*empty critic*/ 2);
    vdata<double> d(c);
    value_loss_options o;
    o.aggregation = lt::mode_of(mode);
    std::vector<double> g(d.V.size(), 7.0);
    const auto r = run_v<double>(be, c, d, &g, o);
    CHECK(r.critics[2].loss == 0.0);
    CHECK(r.critics[2].tokens == 0);
    CHECK(std::isnan(r.critics[2].mse));
    CHECK(std::isnan(r.critics[2].explained_variance));
    CHECK(std::isnan(r.critics[2].clip_fraction));
    for (std::size_t i = 2 * 24; i < 3 * 24; ++i) CHECK(g[i] == 0.0);
    CHECK(std::isfinite(r.loss));
  }
  // A fully masked batch and an empty batch.
  {
    vcase c = make_v(3, 2, 3, 3);
    c.m.assign(9, 0);
    vdata<double> d(c);
    std::vector<double> g(d.V.size(), 7.0);
    const auto r = run_v<double>(be, c, d, &g, {});
    CHECK(r.loss == 0.0);
    for (double x : g) CHECK(x == 0.0);
    value_loss_inputs<double> in;
    in.values = critic_view<const double>(nullptr, 2, 0, 5);
    in.mask = mask_view(nullptr, 0, 5);
    in.returns = token_view<const double>(nullptr, 0, 5);
    CHECK(value_loss(be, in).critics.size() == 2);
  }
  // v = R: EV = 1, mse = 0; constant R: EV NaN; far-from-zero data: EV still accurate.
  {
    const std::vector<double> R = {1e6 + 0.1, 1e6 + 0.3, 1e6 + 0.2, 1e6 + 0.6};
    const std::vector<double> V = {1e6 + 0.1, 1e6 + 0.3, 1e6 + 0.2, 1e6 + 0.6};
    const std::vector<double> V2 = {1e6 + 0.15, 1e6 + 0.25, 1e6 + 0.2, 1e6 + 0.5};
    const lref::bytes m(4, 1);
    value_loss_inputs<double> in;
    in.values = critic_view<const double>(V.data(), 1, 2, 2);
    in.returns = cv(R, 2, 2);
    in.mask = mk(m, 2, 2);
    value_loss_options o;
    o.clip = 0;
    auto r = value_loss(be, in, critic_view<double>{}, o);
    CHECK(r.critics[0].explained_variance == 1.0);
    CHECK(r.critics[0].mse == 0.0);
    in.values = critic_view<const double>(V2.data(), 1, 2, 2);
    r = value_loss(be, in, critic_view<double>{}, o);
    lref::bytes one = {1, 1};
    const auto ref = lref::value_one(V2, V2, R, m, one, 2, 2, 0, true, 2, lref::local_norm(m, 2, 2), nullptr);
    CHECK(r.critics[0].explained_variance == Approx(ref.ev).epsilon(1e-6));
    const std::vector<double> Rc(4, 2.0);
    in.returns = cv(Rc, 2, 2);
    r = value_loss(be, in, critic_view<double>{}, o);
    CHECK(std::isnan(r.critics[0].explained_variance));
  }
}

TEST_CASE("value_loss: micro-batch accumulation with per-critic normalisers equals the full batch", "[value][microbatch]") {
  cpu_backend be(1);
  const vcase c = make_v(123, 2, 12, 7);
  const vdata<double> d(c);
  const int K = 2, B = 12, Tn = 7;
  const std::size_t n = B * Tn;
  for (int mode = 0; mode < lt::kModes; ++mode) {
    value_loss_options o;
    o.aggregation = lt::mode_of(mode);
    std::vector<double> g(K * n);
    const auto full = run_v<double>(be, c, d, &g, o);
    for (int nmb = 1; nmb <= 4; ++nmb) {
      const auto sp = lt::split_points(B, nmb);
      // Per-critic counts over the micro-batches.
      std::vector<loss_counts> cnt(K);
      std::vector<vcase> parts;
      for (int j = 0; j < nmb; ++j) {
        const int r0 = sp[j], r1 = sp[j + 1], b = r1 - r0;
        vcase p{K, b, Tn, {}, {}, lt::rows_of(c.R, Tn, r0, r1), {}, lt::rows_of(c.m, Tn, r0, r1), {}, {}};
        for (int k = 0; k < K; ++k) {
          auto Vk = lt::rows_of(slice(c.V, k, n), Tn, r0, r1), Vok = lt::rows_of(slice(c.Vo, k, n), Tn, r0, r1),
               Rkk = lt::rows_of(slice(c.Rk, k, n), Tn, r0, r1);
          p.V.insert(p.V.end(), Vk.begin(), Vk.end());
          p.Vo.insert(p.Vo.end(), Vok.begin(), Vok.end());
          p.Rk.insert(p.Rk.end(), Rkk.begin(), Rkk.end());
          p.in_shard.push_back(lref::bytes(c.in_shard[k].begin() + r0, c.in_shard[k].begin() + r1));
          for (int bb = r0; bb < r1; ++bb) p.shard.push_back(c.shard[k * B + bb]);
        }
        const std::vector<double> S = p.shard;
        const auto pc = count_critic_loss_tokens(be, mk(p.m, b, Tn), view<const double, 2>(S.data(), K, b));
        for (int k = 0; k < K; ++k) cnt[k] += pc[k];
        parts.push_back(p);
      }
      value_loss_options og = o;
      for (int k = 0; k < K; ++k) og.normalizers.push_back(cnt[k].normalizer());
      std::vector<double> sum(K, 0.0);
      std::vector<double> ga(K * n, 0.0);
      for (int j = 0; j < nmb; ++j) {
        const vdata<double> pd(parts[j]);
        const int b = parts[j].B;
        std::vector<double> gj(K * b * Tn);
        const auto r = run_v<double>(be, parts[j], pd, &gj, og);
        for (int k = 0; k < K; ++k) {
          sum[k] += r.critics[k].loss;
          for (int i = 0; i < b * Tn; ++i) ga[k * n + sp[j] * Tn + i] = gj[k * b * Tn + i];
        }
      }
      INFO("mode " << mode << " nmb " << nmb);
      for (int k = 0; k < K; ++k) CHECK(lt::close(sum[k], full.critics[k].loss, 1e-13, 1e-15));
      CHECK(lt::bit_equal(ga, g));
    }
  }
}

TEST_CASE("value_loss: validation leaves outputs untouched", "[value][errors]") {
  cpu_backend be(1);
  const vcase c = make_v(5, 2, 3, 4);
  const vdata<double> d(c);
  std::vector<double> g(d.V.size(), 11.0);
  const auto sentinel = g;
  auto base = [&]() {
    value_loss_inputs<double> in;
    in.values = critic_view<const double>(d.V.data(), 2, 3, 4);
    in.old_values = critic_view<const double>(d.Vo.data(), 2, 3, 4);
    in.returns = cv(d.R, 3, 4);
    in.mask = mk(c.m, 3, 4);
    in.shard_weights = view<const double, 2>(d.S.data(), 2, 3);
    return in;
  };
  const critic_view<double> out(g.data(), 2, 3, 4);
  auto in = base();
  in.old_values = critic_view<const double>(d.Vo.data(), 1, 3, 4);  // K mismatch
  CHECK_THROWS_AS(value_loss(be, in, out), asyppo::error);
  in = base();
  in.shard_weights = view<const double, 2>(d.S.data(), 1, 3);  // K mismatch
  CHECK_THROWS_AS(value_loss(be, in, out), asyppo::error);
  in = base();
  in.old_values = {};  // required with clip > 0
  CHECK_THROWS_AS(value_loss(be, in, out), asyppo::error);
  in = base();
  in.critic_returns = critic_view<const double>(d.Rk.data(), 2, 3, 4);  // both targets
  CHECK_THROWS_AS(value_loss(be, in, out), asyppo::error);
  in = base();
  in.returns = {};  // no target
  CHECK_THROWS_AS(value_loss(be, in, out), asyppo::error);
  in = base();
  in.returns = cv(d.R, 4, 3);
  CHECK_THROWS_AS(value_loss(be, in, out), asyppo::error);
  in = base();
  value_loss_options o;
  o.normalizers = {loss_normalizer{}};  // 1 entry for K = 2
  CHECK_THROWS_AS(value_loss(be, in, out, o), asyppo::error);
  o = {};
  o.clip = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(value_loss(be, in, out, o), asyppo::error);
  o = {};
  o.normalizers = {loss_normalizer{0, -1, -1}, loss_normalizer{}};
  o.aggregation = loss_aggregation::token_mean;
  bool critic0_has_tokens = false;
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < 4; ++t) critic0_has_tokens |= c.in_shard[0][b] && c.m[b * 4 + t];
  if (critic0_has_tokens) CHECK_THROWS_AS(value_loss(be, in, out, o), asyppo::error);
  CHECK_THROWS_AS(value_loss(be, in, critic_view<double>(g.data(), 3, 2, 4)), asyppo::error);
  auto Vn = d.V;
  for (std::size_t i = 0; i < 12; ++i)
    if (c.m[i]) {
      Vn[12 + i] = std::numeric_limits<double>::infinity();
      break;
    }
  in.values = critic_view<const double>(Vn.data(), 2, 3, 4);
  CHECK_THROWS_AS(value_loss(be, in, out), asyppo::error);
  CHECK(lt::bit_equal(g, sentinel));
  // Without shards every critic trains on every row (K = 1 helper counts too).
  in = base();
  in.shard_weights = {};
  const auto r = value_loss(be, in, out);
  CHECK(r.critics[0].tokens == r.critics[1].tokens);
  CHECK(count_critic_loss_tokens(be, mk(c.m, 3, 4), view<const double, 2>{}).size() == 1);
}

TEST_CASE("value_loss is bit-identical for 1 and 2 threads", "[value][determinism]") {
  cpu_backend be1(1), be2(2);
  const vcase c = make_v(9, 2, 40, 500);
  const vdata<float> d(c);
  std::vector<float> g1(d.V.size()), g2(d.V.size());
  const auto r1 = run_v<float>(be1, c, d, &g1, {});
  const auto r2 = run_v<float>(be2, c, d, &g2, {});
  for (int k = 0; k < 2; ++k) {
    CHECK(std::memcmp(&r1.critics[k].loss, &r2.critics[k].loss, sizeof(double)) == 0);
    CHECK(std::memcmp(&r1.critics[k].explained_variance, &r2.critics[k].explained_variance, sizeof(double)) == 0);
  }
  CHECK(lt::bit_equal(g1, g2));
}
