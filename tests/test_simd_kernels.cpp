// The exponential of the ratios (core/exp.hpp) and the SIMD fast paths of the per-token losses
// (core/simd/): every width gives the bits of the scalar per-element path.
//
// exp_ratio against long double expl (error below 1.5 ulp over the whole table range and in the
// ratio range, the libm fallback outside it). Then policy_loss, actor_objective (every KL estimator,
// clamp on/off, straight-through, with/without entropy, masks and gradients), kl_loss (every
// estimator, clamp on/off), value_loss (clip
// on/off, explained variance on/off, shards) and the advantage step's summary moments (K = 1, 2, 3,
// I^A applied or not) on contiguous inputs at every SIMD width the CPU has
// (set_simd_limit 1, 2, 4) against the same call on strided copies (inner stride 2: the reducers'
// per-element add(), no SIMD): losses, metrics and gradients equal bit for bit. Rows have odd
// lengths (scalar tails), holes, empty and full rows; masked positions hold NaN, which must not leak.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "strided_copy.hpp"

using namespace asyppo;
using asyppo_test::gather;
using asyppo_test::spread;

namespace {

double ulp_error(double y, long double ref) {
  const double r = static_cast<double>(ref);
  const double ulp = std::nextafter(std::fabs(r), std::numeric_limits<double>::infinity()) - std::fabs(r);
  return static_cast<double>(std::fabs((static_cast<long double>(y) - ref) / ulp));
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Ragged rows of odd and even lengths (some empty, some full), holes; NaN at masked positions.
struct batch {
  index_t B, Tn;
  std::vector<std::uint8_t> m, am, em;
  std::vector<double> lp, olp, A, H, ref, V, Vo, R;
};

batch make_batch(std::uint64_t seed, index_t B, index_t Tn, double spread_log_ratio) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1, 1);
  batch d{B, Tn, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (index_t b = 0; b < B; ++b) {
    const index_t len = b % 5 == 2 ? 0 : (b % 5 == 4 ? Tn : static_cast<index_t>(rng() % static_cast<std::uint64_t>(Tn + 1)));
    for (index_t t = 0; t < Tn; ++t) {
      const bool valid = t < len && rng() % 7 != 0;
      d.m.push_back(valid);
      d.am.push_back(rng() % 5 != 0);
      d.em.push_back(rng() % 4 != 0);
      const double olp = -1.5 + u(rng);
      d.olp.push_back(valid ? olp : nan);
      d.lp.push_back(valid ? olp + spread_log_ratio * u(rng) : nan);
      d.A.push_back(valid ? (rng() % 11 == 0 ? 0.0 : u(rng)) : nan);
      d.H.push_back(valid ? 2.0 + u(rng) : nan);
      d.ref.push_back(valid ? olp + spread_log_ratio * u(rng) : nan);
      const double v = u(rng);
      d.V.push_back(valid ? v : nan);
      d.Vo.push_back(valid ? v + 0.3 * u(rng) : nan);
      d.R.push_back(valid ? u(rng) : nan);
    }
  }
  return d;
}

template <class T>
std::vector<T> as(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

std::vector<int> widths() { return {1, 2, 4}; }  // capped by what the CPU has

struct width_guard {
  ~width_guard() { detail::set_simd_limit(4); }
};

}  // namespace

TEST_CASE("exp_ratio: within 1.5 ulp of expl; libm outside the table range; special values", "[exp]") {
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> wide(-708.0, 708.0), ratio(-20.0, 20.0), tiny(-1e-3, 1e-3);
  double worst = 0;
  for (int i = 0; i < 300000; ++i) {
    const double x = i % 3 == 0 ? wide(rng) : (i % 3 == 1 ? ratio(rng) : tiny(rng));
    worst = std::max(worst, ulp_error(detail::exp_ratio(x), std::exp(static_cast<long double>(x))));
  }
  INFO("max ulp error " << worst);
  REQUIRE(worst < 1.5);
  for (int k = -64; k <= 64; ++k) {  // table points: exact multiples of ln2/64 round to the table
    const double x = k * 0.010830424696249145;
    REQUIRE(ulp_error(detail::exp_ratio(x), std::exp(static_cast<long double>(x))) < 1.5);
  }
  REQUIRE(detail::exp_ratio(0.0) == 1.0);
  REQUIRE(detail::exp_ratio(-0.0) == 1.0);
  const double inf = std::numeric_limits<double>::infinity();
  for (double x : {708.0, -708.0, 708.5, -708.5, 709.7, 710.0, -745.0, -746.0, 1e300, -1e300, inf, -inf})
    REQUIRE((std::fabs(x) <= 708.0 ? ulp_error(detail::exp_ratio(x), std::exp(static_cast<long double>(x))) < 1.5
                                   : same_bits(detail::exp_ratio(x), std::exp(x))));
  REQUIRE(std::isnan(detail::exp_ratio(std::numeric_limits<double>::quiet_NaN())));
}

TEMPLATE_TEST_CASE("policy_loss: every SIMD width == the per-element path, bit for bit", "[simd][policy]", float, double) {
  using T = TestType;
  width_guard guard;
  const index_t B = 23, Tn = 67, BT = B * Tn;
  for (double spread_lr : {0.4, 800.0}) {  // 800: log-ratios beyond the clamp, and beyond exp's table without it
    const batch d = make_batch(11, B, Tn, spread_lr);
    const std::vector<T> lp = as<T>(d.lp), olp = as<T>(d.olp), A = as<T>(d.A);
    const T nan = std::numeric_limits<T>::quiet_NaN();
    const std::vector<T> lp2 = spread(lp, nan), olp2 = spread(olp, nan), A2 = spread(A, nan);
    const std::vector<std::uint8_t> m2 = spread(d.m, std::uint8_t{1}), am2 = spread(d.am, std::uint8_t{1});
    auto st = [&](const T* p) { return token_view<const T>::strided(p, {B, Tn}, {2 * Tn, 2}); };
    auto sm = [&](const std::uint8_t* p) { return mask_view::strided(p, {B, Tn}, {2 * Tn, 2}); };
    for (double clamp : {20.0, 0.0})
      for (double dual : {0.0, 3.0})
        for (bool with_am : {false, true})
          for (int threads : {1, 2}) {
            const cpu_backend be(threads);
            policy_loss_options o;
            o.clip_high = 0.28;
            o.dual_clip = dual;
            o.log_ratio_clamp = clamp;
            o.check_finite = false;  // NaN sits at masked positions only
            std::vector<T> g2(static_cast<std::size_t>(2 * BT), T(9));
            const auto ref = policy_loss(be, policy_loss_inputs<T>{st(lp2.data()), st(olp2.data()), st(A2.data()), sm(m2.data()),
                                                                   with_am ? sm(am2.data()) : mask_view{}},
                                         token_view<T>::strided(g2.data(), {B, Tn}, {2 * Tn, 2}), o);
            for (int w : widths()) {
              detail::set_simd_limit(w);
              std::vector<T> g(static_cast<std::size_t>(BT), T(9));
              const auto r = policy_loss(be, policy_loss_inputs<T>{{lp.data(), B, Tn}, {olp.data(), B, Tn}, {A.data(), B, Tn},
                                                                   {d.m.data(), B, Tn}, with_am ? mask_view(d.am.data(), B, Tn) : mask_view{}},
                                         token_view<T>(g.data(), B, Tn), o);
              INFO("width " << w << " clamp " << clamp << " dual " << dual << " I^A " << with_am << " spread " << spread_lr);
              REQUIRE(same_bits(r.loss, ref.loss));
              REQUIRE(same_bits(r.metrics.approx_kl_sum, ref.metrics.approx_kl_sum));
              REQUIRE(r.metrics.valid_tokens == ref.metrics.valid_tokens);
              REQUIRE(r.metrics.adv_masked_tokens == ref.metrics.adv_masked_tokens);
              REQUIRE(r.metrics.clipped_high_tokens == ref.metrics.clipped_high_tokens);
              REQUIRE(r.metrics.clipped_low_tokens == ref.metrics.clipped_low_tokens);
              REQUIRE(r.metrics.dual_clipped_tokens == ref.metrics.dual_clipped_tokens);
              REQUIRE(same_bits(g, gather(g2)));
              // Without the clamp a ratio overflows to +inf, and the loss with it where A < 0 and no dual clip.
              REQUIRE(std::isfinite(r.loss) == (clamp > 0 || dual > 0 || spread_lr < 1));
              // Without a gradient output: the same sums.
              const auto r2 = policy_loss(be, policy_loss_inputs<T>{{lp.data(), B, Tn}, {olp.data(), B, Tn}, {A.data(), B, Tn},
                                                                    {d.m.data(), B, Tn}, with_am ? mask_view(d.am.data(), B, Tn) : mask_view{}},
                                          token_view<T>{}, o);
              REQUIRE(same_bits(r2.loss, ref.loss));
            }
            detail::set_simd_limit(4);
            REQUIRE(ref.metrics.clipped_tokens() > 0);
            if (dual > 0 && spread_lr > 1) REQUIRE(ref.metrics.dual_clipped_tokens > 0);
          }
  }
}

TEMPLATE_TEST_CASE("actor_objective: every SIMD width == the per-element path, bit for bit", "[simd][actor]", float, double) {
  using T = TestType;
  width_guard guard;
  const index_t B = 17, Tn = 45, BT = B * Tn;
  const batch d = make_batch(23, B, Tn, 0.5);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> lp = as<T>(d.lp), olp = as<T>(d.olp), A = as<T>(d.A), H = as<T>(d.H), ref = as<T>(d.ref);
  std::vector<T> ref_far = ref;  // log-ratios to the reference beyond k3's clamps
  for (std::size_t i = 0; i < ref_far.size(); i += 3) ref_far[i] = static_cast<T>(ref_far[i] + (i % 2 ? 30.0 : -30.0));
  const std::vector<T> lp2 = spread(lp, nan), olp2 = spread(olp, nan), A2 = spread(A, nan), H2 = spread(H, nan);
  const std::vector<std::uint8_t> m2 = spread(d.m, std::uint8_t{1}), am2 = spread(d.am, std::uint8_t{1}),
                                  em2 = spread(d.em, std::uint8_t{1});
  auto st = [&](const T* p) { return token_view<const T>::strided(p, {B, Tn}, {2 * Tn, 2}); };
  auto sm = [&](const std::uint8_t* p) { return mask_view::strided(p, {B, Tn}, {2 * Tn, 2}); };
  const cpu_backend be(2);
  int cases = 0;
  for (const char* est : {"k1", "abs", "k2", "k3", "k3+", "k1+"})
    for (bool clamp : {true, false})
      for (int variant = 0; variant < 4; ++variant) {
        // variant 0: everything; 1: no masks; 2: no entropy, no ref; 3: far reference, no gradients of H
        const bool masks = variant != 1, with_h = variant != 2, with_ref = variant != 2, gh_out = variant != 3;
        const std::vector<T>& rf = variant == 3 ? ref_far : ref;
        const std::vector<T> rf2 = spread(rf, nan);
        actor_objective_options o;
        o.clip_high = 0.28;
        o.dual_clip = 3.0;
        o.entropy_coef = with_h ? 0.01 : 0.0;
        o.kl_coef = with_ref ? 0.05 : 0.0;
        o.kl = parse_kl_estimator(est);
        o.kl.clamp = clamp;
        o.check_finite = false;
        std::vector<T> gl2(static_cast<std::size_t>(2 * BT), T(9)), gh2(gl2);
        actor_objective_inputs<T> in2{st(lp2.data()), st(olp2.data()), st(A2.data()), sm(m2.data()),
                                      masks ? sm(am2.data()) : mask_view{}, with_h ? st(H2.data()) : token_view<const T>{},
                                      masks ? sm(em2.data()) : mask_view{}, with_ref ? st(rf2.data()) : token_view<const T>{}};
        const auto want = actor_objective(be, in2,
                                          actor_objective_outputs<T>{token_view<T>::strided(gl2.data(), {B, Tn}, {2 * Tn, 2}),
                                                                     gh_out ? token_view<T>::strided(gh2.data(), {B, Tn}, {2 * Tn, 2})
                                                                            : token_view<T>{}},
                                          o);
        for (int w : widths()) {
          detail::set_simd_limit(w);
          std::vector<T> gl(static_cast<std::size_t>(BT), T(9)), gh(gl);
          actor_objective_inputs<T> in{{lp.data(), B, Tn},
                                       {olp.data(), B, Tn},
                                       {A.data(), B, Tn},
                                       {d.m.data(), B, Tn},
                                       masks ? mask_view(d.am.data(), B, Tn) : mask_view{},
                                       with_h ? token_view<const T>(H.data(), B, Tn) : token_view<const T>{},
                                       masks ? mask_view(d.em.data(), B, Tn) : mask_view{},
                                       with_ref ? token_view<const T>(rf.data(), B, Tn) : token_view<const T>{}};
          const auto r = actor_objective(
              be, in, actor_objective_outputs<T>{{gl.data(), B, Tn}, gh_out ? token_view<T>(gh.data(), B, Tn) : token_view<T>{}}, o);
          INFO("width " << w << " estimator " << est << " clamp " << clamp << " variant " << variant);
          REQUIRE(same_bits(r.total, want.total));
          REQUIRE(same_bits(r.policy.loss, want.policy.loss));
          REQUIRE(same_bits(r.policy.metrics.approx_kl_sum, want.policy.metrics.approx_kl_sum));
          REQUIRE(r.policy.metrics.clipped_tokens() == want.policy.metrics.clipped_tokens());
          REQUIRE(r.policy.metrics.dual_clipped_tokens == want.policy.metrics.dual_clipped_tokens);
          REQUIRE(r.policy.metrics.adv_masked_tokens == want.policy.metrics.adv_masked_tokens);
          REQUIRE(same_bits(r.entropy.entropy, want.entropy.entropy));
          REQUIRE(same_bits(r.entropy.filtered_entropy, want.entropy.filtered_entropy));
          REQUIRE(same_bits(r.entropy.metrics.entropy_sum, want.entropy.metrics.entropy_sum));
          REQUIRE(r.entropy.metrics.valid_tokens == want.entropy.metrics.valid_tokens);
          REQUIRE(r.entropy.metrics.filtered_tokens == want.entropy.metrics.filtered_tokens);
          REQUIRE(same_bits(r.kl.kl, want.kl.kl));
          REQUIRE(same_bits(r.kl.metrics.kl_sum, want.kl.metrics.kl_sum));
          REQUIRE(r.kl.metrics.valid_tokens == want.kl.metrics.valid_tokens);
          REQUIRE(same_bits(gl, gather(gl2)));
          if (gh_out) REQUIRE(same_bits(gh, gather(gh2)));
          REQUIRE(std::isfinite(r.total));
          ++cases;
        }
        detail::set_simd_limit(4);
      }
  REQUIRE(cases == 6 * 2 * 4 * 3);
}

TEMPLATE_TEST_CASE("kl_loss: every SIMD width == the per-element path, bit for bit", "[simd][kl]", float, double) {
  using T = TestType;
  width_guard guard;
  const index_t B = 19, Tn = 59, BT = B * Tn;
  const batch d = make_batch(41, B, Tn, 0.5);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> lp = as<T>(d.lp), ref = as<T>(d.ref);
  for (std::size_t i = 0; i < ref.size(); i += 5) ref[i] = static_cast<T>(ref[i] + (i % 2 ? 30.0 : -30.0));  // beyond k3's clamps
  const std::vector<T> lp2 = spread(lp, nan), ref2 = spread(ref, nan);
  const std::vector<std::uint8_t> m2 = spread(d.m, std::uint8_t{1});
  auto st = [&](const T* p) { return token_view<const T>::strided(p, {B, Tn}, {2 * Tn, 2}); };
  const cpu_backend be(2);
  for (const char* est : {"k1", "abs", "k2", "k3", "k3+", "abs+"})
    for (bool clamp : {true, false}) {
      kl_loss_options o;
      o.kl = parse_kl_estimator(est);
      o.kl.clamp = clamp;
      o.coef = 0.3;
      o.check_finite = false;
      std::vector<T> g2(static_cast<std::size_t>(2 * BT), T(9));
      const auto want = kl_loss(be, st(lp2.data()), st(ref2.data()), mask_view::strided(m2.data(), {B, Tn}, {2 * Tn, 2}),
                                token_view<T>::strided(g2.data(), {B, Tn}, {2 * Tn, 2}), o);
      for (int w : widths()) {
        detail::set_simd_limit(w);
        std::vector<T> g(static_cast<std::size_t>(BT), T(9));
        const auto r = kl_loss(be, token_view<const T>(lp.data(), B, Tn), token_view<const T>(ref.data(), B, Tn),
                               mask_view(d.m.data(), B, Tn), token_view<T>(g.data(), B, Tn), o);
        INFO("width " << w << " estimator " << est << " clamp " << clamp);
        REQUIRE(same_bits(r.loss, want.loss));
        REQUIRE(same_bits(r.kl, want.kl));
        REQUIRE(same_bits(r.metrics.kl_sum, want.metrics.kl_sum));
        REQUIRE(r.metrics.valid_tokens == want.metrics.valid_tokens);
        REQUIRE(same_bits(g, gather(g2)));
      }
      detail::set_simd_limit(4);
    }
}

TEMPLATE_TEST_CASE("value_loss: every SIMD width == the per-element path, bit for bit", "[simd][value]", float, double) {
  using T = TestType;
  width_guard guard;
  const index_t K = 2, B = 21, Tn = 53, BT = B * Tn;
  const batch d0 = make_batch(31, B, Tn, 0.5);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> V = as<T>(d0.V), Vo = as<T>(d0.Vo);
  for (std::size_t i = 0; i < static_cast<std::size_t>(BT); ++i) {  // critic 1: other values (NaN where masked)
    V.push_back(static_cast<T>(0.5 * d0.V[i] + 0.1 * d0.R[i]));
    Vo.push_back(static_cast<T>(0.5 * d0.Vo[i] - 0.1 * d0.R[i]));
  }
  const std::vector<T> R = as<T>(d0.R);
  std::vector<T> W(static_cast<std::size_t>(K * B));
  for (index_t k = 0; k < K; ++k)
    for (index_t b = 0; b < B; ++b) W[static_cast<std::size_t>(k * B + b)] = T((b + k) % 2 == 0 ? 1 : 0);
  const std::vector<T> V2 = spread(V, nan), Vo2 = spread(Vo, nan), R2 = spread(R, nan);
  const std::vector<std::uint8_t> m2 = spread(d0.m, std::uint8_t{1});
  auto cst = [&](const T* p) { return critic_view<const T>::strided(p, {K, B, Tn}, {2 * BT, 2 * Tn, 2}); };
  for (double clip : {0.2, 0.0})
    for (bool ev : {true, false})
      for (bool shards : {true, false})
        for (int threads : {1, 2}) {
          const cpu_backend be(threads);
          value_loss_options o;
          o.clip = clip;
          o.explained_variance = ev;
          o.check_finite = false;
          const view<const T, 2> sw = shards ? view<const T, 2>(W.data(), K, B) : view<const T, 2>{};
          std::vector<T> g2(static_cast<std::size_t>(2 * K * BT), T(9));
          const auto want = value_loss(be,
                                       value_loss_inputs<T>{cst(V2.data()), clip > 0 ? cst(Vo2.data()) : critic_view<const T>{},
                                                            token_view<const T>::strided(R2.data(), {B, Tn}, {2 * Tn, 2}), {},
                                                            mask_view::strided(m2.data(), {B, Tn}, {2 * Tn, 2}), sw},
                                       critic_view<T>::strided(g2.data(), {K, B, Tn}, {2 * BT, 2 * Tn, 2}), o);
          for (int w : widths()) {
            detail::set_simd_limit(w);
            std::vector<T> g(static_cast<std::size_t>(K * BT), T(9));
            const auto r = value_loss(be,
                                      value_loss_inputs<T>{critic_view<const T>(V.data(), K, B, Tn),
                                                           clip > 0 ? critic_view<const T>(Vo.data(), K, B, Tn) : critic_view<const T>{},
                                                           token_view<const T>(R.data(), B, Tn), {}, mask_view(d0.m.data(), B, Tn), sw},
                                      critic_view<T>(g.data(), K, B, Tn), o);
            INFO("width " << w << " clip " << clip << " ev " << ev << " shards " << shards);
            REQUIRE(same_bits(r.loss, want.loss));
            for (index_t k = 0; k < K; ++k) {
              const auto &x = r.critics[static_cast<std::size_t>(k)], &y = want.critics[static_cast<std::size_t>(k)];
              REQUIRE(same_bits(x.loss, y.loss));
              REQUIRE(x.tokens == y.tokens);
              REQUIRE(x.clipped_tokens == y.clipped_tokens);
              REQUIRE(same_bits(x.squared_error_sum, y.squared_error_sum));
              REQUIRE((ev ? same_bits(x.explained_variance, y.explained_variance) : std::isnan(x.explained_variance)));
              if (ev) REQUIRE(std::isfinite(x.explained_variance));
              if (clip > 0) REQUIRE(y.clipped_tokens > 0);
            }
            REQUIRE(same_bits(g, gather(g2)));
          }
          detail::set_simd_limit(4);
        }
}

TEMPLATE_TEST_CASE("advantage step summary moments: every SIMD width == the per-element path, bit for bit",
                   "[simd][advantage]", float, double) {
  using T = TestType;
  width_guard guard;
  const index_t B = 24, Tn = 61, BT = B * Tn;
  const batch d = make_batch(53, B, Tn, 0.5);
  std::vector<std::int64_t> ids;
  for (index_t b = 0; b < B; ++b) ids.push_back(b / 4);
  std::vector<T> r(static_cast<std::size_t>(BT), T(0));
  for (index_t i = 0; i < BT; ++i)
    if (d.m[static_cast<std::size_t>(i)] && i % 13 == 0) r[static_cast<std::size_t>(i)] = static_cast<T>(d.R[static_cast<std::size_t>(i)]);
  auto tv = [&](auto* p) { return view<std::remove_pointer_t<decltype(p)>, 2>::strided(p, {B, Tn}, {2 * Tn, 2}); };
  const cpu_backend be(2);
  // variant 0: batch scope; 1: sigma with many ties (ranked ties: masks written before the scan) and
  // the std output; 2: sequence scope, step semantics, gamma < 1.
  for (int variant : {0, 1, 2})
  for (index_t K : {1, 2, 3})
    for (bool mask_adv : {true, false})
      for (bool whiten : {false, true}) {
        std::vector<T> V;
        for (index_t k = 0; k < K; ++k)
          for (index_t i = 0; i < BT; ++i) {
            const double a = d.A[static_cast<std::size_t>(i)] * (variant == 1 ? 1.0 + 0.5 * static_cast<double>(k) : 1.0);
            const double spread_k = 0.3 * static_cast<double>(k) * d.H[static_cast<std::size_t>(i)];  // sigma varies: no ties
            V.push_back(static_cast<T>(d.m[static_cast<std::size_t>(i)] ? (variant == 1 ? std::round(4 * a) / 4 : spread_k + a) : 0.0));
          }
        const std::vector<T> V2 = spread(V, T(7)), r2 = spread(r, T(7));
        const std::vector<std::uint8_t> m2 = spread(d.m, std::uint8_t{1});
        advantage_config cfg;
        cfg.mask_advantages = mask_adv;
        cfg.whiten_advantages = whiten;
        cfg.lambda_actor = 0.95;
        cfg.critics = K;
        if (variant == 2) cfg.scope = mask_scope::sequence, cfg.semantics = gae_mask_semantics::step, cfg.gamma = 0.9;
        std::vector<T> A2(static_cast<std::size_t>(2 * BT), T(9)), R2(A2), S2(A2);
        std::vector<std::uint8_t> am2(static_cast<std::size_t>(2 * BT), 5), em2(am2);
        const auto want = advantage_step(
            be,
            advantage_inputs<T>{critic_view<const T>::strided(V2.data(), {K, B, Tn}, {2 * BT, 2 * Tn, 2}), tv(r2.data()), tv(m2.data()),
                                {ids.data(), B}},
            advantage_outputs<T>{tv(A2.data()), tv(R2.data()), tv(am2.data()), tv(em2.data()), {}, variant == 1 ? tv(S2.data()) : token_view<T>{}},
            cfg);
        REQUIRE(want.adv_masked > 0);
        for (int w : widths()) {
          detail::set_simd_limit(w);
          std::vector<T> A(static_cast<std::size_t>(BT), T(9)), R(A), S(A);
          std::vector<std::uint8_t> am(static_cast<std::size_t>(BT), 5), em(am);
          const auto s1 = advantage_step(be,
                                         advantage_inputs<T>{{V.data(), K, B, Tn}, {r.data(), B, Tn}, {d.m.data(), B, Tn}, {ids.data(), B}},
                                         advantage_outputs<T>{{A.data(), B, Tn}, {R.data(), B, Tn}, {am.data(), B, Tn}, {em.data(), B, Tn}, {},
                                                              variant == 1 ? token_view<T>{S.data(), B, Tn} : token_view<T>{}},
                                         cfg);
          INFO("variant " << variant << " width " << w << " K " << K << " mask_advantages " << mask_adv << " whiten " << whiten);
          REQUIRE(same_bits(s1.advantage_mean, want.advantage_mean));
          REQUIRE(same_bits(s1.advantage_std, want.advantage_std));
          REQUIRE(same_bits(s1.return_mean, want.return_mean));
          REQUIRE(same_bits(s1.return_std, want.return_std));
          REQUIRE(s1.explained_variance.size() == static_cast<std::size_t>(K));
          for (index_t k = 0; k < K; ++k)
            REQUIRE(same_bits(s1.explained_variance[static_cast<std::size_t>(k)], want.explained_variance[static_cast<std::size_t>(k)]));
          REQUIRE(same_bits(A, gather(A2)));
          REQUIRE(same_bits(R, gather(R2)));
          REQUIRE(am == gather(am2));
          REQUIRE(em == gather(em2));
          if (variant == 1) REQUIRE(same_bits(S, gather(S2)));
        }
        detail::set_simd_limit(4);
      }
}

TEMPLATE_TEST_CASE("gae: four rows per AVX2 vector == the one-row scan, bit for bit", "[simd][gae]", float, double) {
  // Contiguous rows take the lane scan (core/simd/gae_lanes.hpp) at width 4; strided copies and width 1
  // take the one-row-at-a-time scan. Every option that changes the per-token code is varied.
  using T = TestType;
  width_guard guard;
  const index_t B = 29, Tn = 67, BT = B * Tn;
  const batch d = make_batch(71, B, Tn, 0.5);
  std::vector<T> r(static_cast<std::size_t>(BT), T(0));
  for (index_t i = 0; i < BT; ++i)
    if (d.m[static_cast<std::size_t>(i)] && i % 5 == 0) r[static_cast<std::size_t>(i)] = static_cast<T>(d.R[static_cast<std::size_t>(i)]);
  auto tv = [&](auto* p) { return view<std::remove_pointer_t<decltype(p)>, 2>::strided(p, {B, Tn}, {2 * Tn, 2}); };
  const std::vector<T> r2 = spread(r, T(7));
  const std::vector<std::uint8_t> m2 = spread(d.m, std::uint8_t{1});
  int cases = 0;
  for (index_t K : {1, 2, 3})
    for (auto sem : {gae_mask_semantics::skip, gae_mask_semantics::step})
      for (auto pad : {padding_mode::zero, padding_mode::raw})
        for (int variant = 0; variant < 3; ++variant) {  // 0: plain, 1: gamma, lambdas < 1 + std out, 2: adaptive lambda, unbiased std
          std::vector<T> V;
          for (index_t k = 0; k < K; ++k)
            for (index_t i = 0; i < BT; ++i)
              V.push_back(static_cast<T>(d.m[static_cast<std::size_t>(i)] ? 0.3 * static_cast<double>(k) * d.A[static_cast<std::size_t>(i)] + d.V[static_cast<std::size_t>(i)]
                                                                        : (pad == padding_mode::raw ? 0.25 : d.V[static_cast<std::size_t>(i)])));  // NaN at masked tokens unless raw returns read them
          const std::vector<T> V2 = spread(V, T(7));
          gae_options o;
          o.semantics = sem;
          o.padding = pad;
          if (variant >= 1) o.gamma = 0.97, o.lambda_actor = 0.9, o.lambda_critic = 0.95;
          if (variant == 2) o.adaptive_lambda_alpha = 0.05, o.adaptive_lambda_min = 0.5;
          const bool with_std = variant >= 1;
          const std_kind kind = variant == 2 ? std_kind::unbiased : std_kind::population;
          std::vector<T> A2(static_cast<std::size_t>(2 * BT), T(9)), R2(A2), S2(A2);
          const token_view<T> none{};
          gae(cpu_backend(1), critic_view<const T>::strided(V2.data(), {K, B, Tn}, {2 * BT, 2 * Tn, 2}), tv(r2.data()),
              tv(m2.data()), o, gae_outputs<T>{tv(A2.data()), tv(R2.data()), with_std ? tv(S2.data()) : none}, kind);
          for (int threads : {1, 2})
            for (int w : widths()) {
              detail::set_simd_limit(w);
              std::vector<T> A(static_cast<std::size_t>(BT), T(9)), R(A), S(A);
              gae(cpu_backend(threads), critic_view<const T>{V.data(), K, B, Tn}, {r.data(), B, Tn}, {d.m.data(), B, Tn}, o,
                  gae_outputs<T>{{A.data(), B, Tn}, {R.data(), B, Tn}, with_std ? token_view<T>{S.data(), B, Tn} : none}, kind);
              INFO("K " << K << " step " << (sem == gae_mask_semantics::step) << " raw " << (pad == padding_mode::raw)
                        << " variant " << variant << " threads " << threads << " width " << w);
              REQUIRE(same_bits(A, gather(A2)));
              REQUIRE(same_bits(R, gather(R2)));
              if (with_std) REQUIRE(same_bits(S, gather(S2)));
              ++cases;
            }
          detail::set_simd_limit(4);
        }
  REQUIRE(cases == 3 * 2 * 2 * 3 * 2 * static_cast<int>(widths().size()));
  // Only returns, or only advantages, requested.
  const std::vector<T> V(d.V.begin(), d.V.end());
  for (int which = 0; which < 2; ++which) {
    std::vector<T> X1(static_cast<std::size_t>(BT), T(9)), X4(X1);
    const token_view<T> none{};
    for (int w : {1, 4}) {
      detail::set_simd_limit(w);
      std::vector<T>& X = w == 1 ? X1 : X4;
      const token_view<T> x{X.data(), B, Tn};
      gae(cpu_backend(1), critic_view<const T>{V.data(), 1, B, Tn}, {r.data(), B, Tn}, {d.m.data(), B, Tn}, gae_options{},
          gae_outputs<T>{which == 0 ? x : none, which == 1 ? x : none, none});
    }
    REQUIRE(same_bits(X1, X4));
  }
}

TEST_CASE("simd width: detection and limit", "[simd]") {
  width_guard guard;
  const int d = detail::detected_simd_width();
  REQUIRE((d == 1 || d == 2 || d == 4));
  detail::set_simd_limit(1);
  REQUIRE(detail::simd_width() == 1);
  detail::set_simd_limit(2);
  REQUIRE(detail::simd_width() == std::min(d, 2));
  detail::set_simd_limit(4);
  REQUIRE(detail::simd_width() == d);
}
