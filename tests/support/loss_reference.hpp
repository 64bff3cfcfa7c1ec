// tests/support/loss_reference.hpp: plain-loop reference implementations for the update-side
// tests (aggregation, policy loss, entropy, KL, value loss, logits helper).
//
// Written from docs/method-spec.md (E9, E12-E15, section f) and docs/peer-semantics.md (2.4, 2.5,
// 2.7-2.9) in the style of the peers (torch-like min/clamp expressions), in double, with no use of
// asyppo's algorithms. Layout: token tensors are std::vector<double> of size B*T (b*T + t), critic
// tensors K*B*T, masks std::vector<std::uint8_t>. Aggregation modes are ints in the order
// 0 token-mean, 1 token-sum, 2 seq-mean-token-mean, 3 seq-mean-token-sum, 4 seq-mean-token-sum-norm.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace lref {

using vec = std::vector<double>;
using bytes = std::vector<std::uint8_t>;

struct norm {
  double N, Bg, Ln;  // tokens, sequences, norm length
};

/// Local counts of a mask: N = sum m, Bg = non-empty rows, Ln = T.
inline norm local_norm(const bytes& m, int B, int T) {
  norm n{0, 0, static_cast<double>(T)};
  for (int b = 0; b < B; ++b) {
    int L = 0;
    for (int t = 0; t < T; ++t) L += m[b * T + t] ? 1 : 0;
    n.N += L;
    n.Bg += L > 0 ? 1 : 0;
  }
  return n;
}

/// Agg(l) written directly from each mode's formula (docs 2.9).
inline double aggregate(const vec& l, const bytes& m, int B, int T, int mode, norm n) {
  double total = 0;
  for (int b = 0; b < B; ++b) {
    double S = 0;
    int L = 0;
    for (int t = 0; t < T; ++t)
      if (m[b * T + t]) S += l[b * T + t], ++L;
    switch (mode) {
      case 0: total += S; break;
      case 1: total += S; break;
      case 2: total += L > 0 ? S / L : 0.0; break;
      case 3: total += S; break;
      case 4: total += S; break;
    }
  }
  switch (mode) {
    case 0: return n.N > 0 ? total / n.N : 0.0;
    case 1: return total;
    case 2: return n.Bg > 0 ? total / n.Bg : 0.0;
    case 3: return n.Bg > 0 ? total / n.Bg : 0.0;
    default: return n.Bg > 0 ? total / (n.Bg * n.Ln) : 0.0;
  }
}

/// dAgg/dl[b,t].
inline vec aggregate_grad(const bytes& m, int B, int T, int mode, norm n) {
  vec g(static_cast<std::size_t>(B) * T, 0.0);
  for (int b = 0; b < B; ++b) {
    int L = 0;
    for (int t = 0; t < T; ++t) L += m[b * T + t] ? 1 : 0;
    for (int t = 0; t < T; ++t) {
      if (!m[b * T + t]) continue;
      double w = 0;
      switch (mode) {
        case 0: w = 1.0 / n.N; break;
        case 1: w = 1.0; break;
        case 2: w = 1.0 / (n.Bg * L); break;
        case 3: w = 1.0 / n.Bg; break;
        default: w = 1.0 / (n.Bg * n.Ln); break;
      }
      g[b * T + t] = w;
    }
  }
  return g;
}

// ---- PPO clipped surrogate (E12, E13, dual clip; verl compute_policy_loss) ---------------------

struct pg_params {
  double eps_low = 0.2, eps_high = 0.2, c = 0.0, clamp = 20.0;
};

struct pg_token_out {
  double loss = 0, grad = 0;
  bool clipped = false, high = false, low = false, dual = false;
};

inline pg_token_out pg_token(double logp, double old_logp, double A, const pg_params& p) {
  pg_token_out o;
  const double neg_kl = logp - old_logp;
  const double d = p.clamp > 0 ? std::clamp(neg_kl, -p.clamp, p.clamp) : neg_kl;
  const double ratio = std::exp(d);
  const double pg1 = -A * ratio;
  const double pg2 = -A * std::clamp(ratio, 1.0 - p.eps_low, 1.0 + p.eps_high);
  double loss = std::max(pg1, pg2);
  o.clipped = pg2 > pg1;
  const bool clamp_active = p.clamp > 0 && std::fabs(neg_kl) > p.clamp;
  double grad = (o.clipped || clamp_active) ? 0.0 : -A * ratio;
  if (p.c > 0 && A < 0) {
    const double pg3 = -A * p.c;
    if (loss > pg3) {
      o.dual = true;
      loss = pg3;
      grad = 0.0;
    }
  }
  o.high = o.clipped && ratio > 1.0 + p.eps_high;
  o.low = o.clipped && ratio < 1.0 - p.eps_low;
  o.loss = loss;
  o.grad = grad;
  return o;
}

struct pg_result {
  double loss = 0;
  vec grad;
  long valid = 0, adv_masked = 0, clipped = 0, high = 0, low = 0, dual = 0;
  double kl_sum = 0;
};

/// adv_mask empty = all ones.
inline pg_result policy(const vec& lp, const vec& olp, const vec& A, const bytes& m, const bytes& am, int B, int T,
                        const pg_params& p, int mode, norm n) {
  pg_result r;
  const std::size_t N = static_cast<std::size_t>(B) * T;
  vec l(N, 0.0), dl(N, 0.0);
  for (std::size_t i = 0; i < N; ++i) {
    if (!m[i]) continue;
    ++r.valid;
    r.kl_sum += olp[i] - lp[i];
    if (!am.empty() && !am[i]) {
      ++r.adv_masked;
      continue;
    }
    if (A[i] == 0.0) continue;
    const pg_token_out o = pg_token(lp[i], olp[i], A[i], p);
    l[i] = o.loss;
    dl[i] = o.grad;
    r.clipped += o.clipped;
    r.high += o.high;
    r.low += o.low;
    r.dual += o.dual;
  }
  r.loss = aggregate(l, m, B, T, mode, n);
  const vec w = aggregate_grad(m, B, T, mode, n);
  r.grad.assign(N, 0.0);
  for (std::size_t i = 0; i < N; ++i) r.grad[i] = w[i] * dl[i];
  return r;
}

// ---- Entropy bonus (E15) ---------------------------------------------------------------------

struct ent_result {
  double loss = 0, agg = 0, filtered_agg = 0;
  vec grad;
};

inline ent_result entropy(const vec& H, const bytes& m, const bytes& hm, int B, int T, double beta, int mode, norm n) {
  const std::size_t N = static_cast<std::size_t>(B) * T;
  vec f(N, 0.0);
  for (std::size_t i = 0; i < N; ++i) f[i] = (hm.empty() || hm[i]) ? H[i] : 0.0;
  ent_result r;
  r.agg = aggregate(H, m, B, T, mode, n);
  r.filtered_agg = aggregate(f, m, B, T, mode, n);
  r.loss = -beta * r.filtered_agg;
  const vec w = aggregate_grad(m, B, T, mode, n);
  r.grad.assign(N, 0.0);
  for (std::size_t i = 0; i < N; ++i) r.grad[i] = (hm.empty() || hm[i]) ? -beta * w[i] : 0.0;
  return r;
}

// ---- KL estimators (2.7; verl kl_penalty) ----------------------------------------------------

/// est: 0 k1, 1 abs, 2 k2 (mse), 3 k3 (low_var_kl). Returns value and d/dlogp.
inline std::pair<double, double> kl_token(double logp, double ref, int est, bool st, bool clamp) {
  const double delta = logp - ref;
  double v = 0, g = 0;
  if (est == 0) v = delta, g = 1;
  else if (est == 1) v = std::fabs(delta), g = delta > 0 ? 1 : (delta < 0 ? -1 : 0);
  else if (est == 2) v = 0.5 * delta * delta, g = delta;
  else {
    // verl: kl = ref - logp; kl = clamp(kl, -20, 20); ratio = exp(kl); kld = ratio - kl - 1; clamp(kld, -10, 10)
    double kl = ref - logp;
    bool live = true;
    if (clamp && (kl > 20 || kl < -20)) kl = std::clamp(kl, -20.0, 20.0), live = false;
    const double ratio = std::exp(kl);
    v = ratio - kl - 1;
    g = live ? (-ratio + 1) : 0.0;  // d/dlogp: dkl/dlogp = -1
    if (clamp && (v > 10 || v < -10)) v = std::clamp(v, -10.0, 10.0), g = 0;
  }
  if (st) g = delta;
  return {v, g};
}

// ---- Value loss (E9, 2.5) --------------------------------------------------------------------

struct value_critic {
  double loss = 0, mse = NAN, ev = NAN, clipfrac = NAN;
  long n = 0;
};

/// One critic: V, Vold, R of size B*T; shard row flags [B]; normaliser of the shard.
inline value_critic value_one(const vec& V, const vec& Vo, const vec& R, const bytes& m, const bytes& in_shard, int B,
                              int T, double c, bool half, int mode, norm n, vec* grad) {
  const std::size_t N = static_cast<std::size_t>(B) * T;
  bytes ms(N, 0);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) ms[b * T + t] = (m[b * T + t] && in_shard[b]) ? 1 : 0;
  vec l(N, 0.0), dl(N, 0.0);
  value_critic r;
  long clipped = 0;
  double sq = 0;
  std::vector<double> Rs, Es;
  for (std::size_t i = 0; i < N; ++i) {
    if (!ms[i]) continue;
    const double s = half ? 0.5 : 1.0;
    const double vf1 = (V[i] - R[i]) * (V[i] - R[i]);
    double e = vf1, de = 2 * (V[i] - R[i]);
    if (c > 0) {
      const double vclip = Vo[i] + std::clamp(V[i] - Vo[i], -c, c);
      const double vf2 = (vclip - R[i]) * (vclip - R[i]);
      if (vf2 > vf1) e = vf2, de = 0, ++clipped;
    }
    l[i] = s * e;
    dl[i] = s * de;
    sq += vf1;
    Rs.push_back(R[i]);
    Es.push_back(R[i] - V[i]);
  }
  r.n = static_cast<long>(Rs.size());
  r.loss = aggregate(l, ms, B, T, mode, n);
  const vec w = aggregate_grad(ms, B, T, mode, n);
  if (grad) {
    grad->assign(N, 0.0);
    for (std::size_t i = 0; i < N; ++i) (*grad)[i] = ms[i] ? w[i] * dl[i] : 0.0;
  }
  if (r.n > 0) {
    auto var = [](const std::vector<double>& x) {
      double mu = 0;
      for (double v : x) mu += v;
      mu /= x.size();
      double q = 0;
      for (double v : x) q += (v - mu) * (v - mu);
      return q / x.size();
    };
    r.mse = sq / r.n;
    r.clipfrac = static_cast<double>(clipped) / r.n;
    const double vr = var(Rs);
    r.ev = vr > 0 ? 1.0 - var(Es) / vr : NAN;
  }
  return r;
}

// ---- Logits helper (E14, 2.8) ----------------------------------------------------------------

/// Softmax of z/temp for one position (V entries): logp of y, entropy, and p.
inline void logits_ref(const double* z, int V, long y, double temp, double& logp, double& H, vec& p) {
  p.assign(V, 0.0);
  double mx = -INFINITY;
  for (int v = 0; v < V; ++v) mx = std::max(mx, z[v] / temp);
  double s = 0;
  for (int v = 0; v < V; ++v) s += std::exp(z[v] / temp - mx);
  for (int v = 0; v < V; ++v) p[v] = std::exp(z[v] / temp - mx) / s;
  logp = std::log(p[y]);
  H = 0;
  for (int v = 0; v < V; ++v)
    if (p[v] > 0) H -= p[v] * std::log(p[v]);
}

// ---- Random data -----------------------------------------------------------------------------

/// Random mask: each row a random valid prefix length in [0, T] (some rows empty when allow_empty),
/// plus a few interior holes (multi-turn style).
inline bytes random_mask(std::mt19937_64& rng, int B, int T, bool allow_empty = true) {
  bytes m(static_cast<std::size_t>(B) * T, 0);
  std::uniform_int_distribution<int> len(allow_empty ? 0 : 1, T);
  std::uniform_real_distribution<double> u(0, 1);
  for (int b = 0; b < B; ++b) {
    const int L = T > 0 ? len(rng) : 0;
    for (int t = 0; t < L; ++t) m[b * T + t] = u(rng) < 0.9 ? 1 : 0;
  }
  return m;
}

inline vec random_vec(std::mt19937_64& rng, std::size_t n, double lo, double hi) {
  std::uniform_real_distribution<double> u(lo, hi);
  vec v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

inline bytes random_bits(std::mt19937_64& rng, std::size_t n, double p_one) {
  std::uniform_real_distribution<double> u(0, 1);
  bytes v(n);
  for (auto& x : v) x = u(rng) < p_one ? 1 : 0;
  return v;
}

}  // namespace lref
