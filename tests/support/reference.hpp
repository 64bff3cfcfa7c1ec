// tests/support/reference.hpp: independent reference implementations for the advantage-side tests.
//
// Everything here is written directly from the math in the headers' top comments,
// docs/method-spec.md (E3-E11, D1-D4) and docs/peer-semantics.md (2.2, 2.3, 2.6), with plain loops
// in double (long double for the whitening moments), a full std::sort for the masks and std::map
// for groups. Nothing here calls asyppo's algorithms: a test compares the library against these.
//
// Layout conventions: token tensors are std::vector<double> of size B*T, row-major (b*T + t);
// critic tensors are K*B*T (k*B*T + b*T + t); masks are std::vector<std::uint8_t> of size B*T.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <utility>
#include <vector>

namespace ref {

using vec = std::vector<double>;
using bytes = std::vector<std::uint8_t>;
using i64 = std::int64_t;

// ---- ensemble (E3, E4) --------------------------------------------------------------------

struct ensemble_result {
  vec mean, std, min, max;
};

/// Per-token mean / std (divisor K or K-1; 0 when the divisor is 0) / min / max of K critics.
/// mask empty = all valid; masked tokens get 0 everywhere.
inline ensemble_result ensemble(const vec& V, int K, int B, int T, const bytes& mask, bool unbiased) {
  ensemble_result r;
  const std::size_t n = static_cast<std::size_t>(B) * T;
  r.mean.assign(n, 0);
  r.std.assign(n, 0);
  r.min.assign(n, 0);
  r.max.assign(n, 0);
  for (std::size_t i = 0; i < n; ++i) {
    if (!mask.empty() && !mask[i]) continue;
    double s = 0, lo = V[i], hi = V[i];
    for (int k = 0; k < K; ++k) {
      const double v = V[static_cast<std::size_t>(k) * n + i];
      s += v;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    const double mu = s / K;
    double q = 0;
    for (int k = 0; k < K; ++k) {
      const double d = V[static_cast<std::size_t>(k) * n + i] - mu;
      q += d * d;
    }
    const int d = unbiased ? K - 1 : K;
    r.mean[i] = mu;
    r.std[i] = d > 0 ? std::sqrt(q / d) : 0.0;
    r.min[i] = lo;
    r.max[i] = hi;
  }
  return r;
}

// ---- GAE (peer-semantics 2.2, literal) -------------------------------------------------------

struct gae_result {
  vec adv;  // value at every position (raw: what the peer writes, masked positions included)
  vec ret;  // adv + values as the peer adds them
};

/// verl compute_gae_advantage_return, literally: carry (V_next, A_next) = (0, 0); for t = T-1..0:
///   delta = r_t + gamma V_next - V_t;  A' = delta + gamma lam A_next;
///   if m_t: carry = (V_t, A'), else carry unchanged; output A_t = carried A.
/// Returns R = A + V with V as given (the caller decides what sits at masked tokens).
/// lam is per row (lam[b]).
inline gae_result gae_verl(const vec& V, const vec& r, const bytes& m, int B, int T, double gamma, const vec& lam) {
  gae_result g;
  g.adv.assign(static_cast<std::size_t>(B) * T, 0);
  g.ret.assign(static_cast<std::size_t>(B) * T, 0);
  for (int b = 0; b < B; ++b) {
    double vnext = 0, anext = 0;
    for (int t = T - 1; t >= 0; --t) {
      const std::size_t i = static_cast<std::size_t>(b) * T + t;
      const double delta = r[i] + gamma * vnext - V[i];
      const double cand = delta + gamma * lam[static_cast<std::size_t>(b)] * anext;
      if (m[i]) {
        vnext = V[i];
        anext = cand;
      }
      g.adv[i] = anext;
      g.ret[i] = anext + V[i];
    }
  }
  return g;
}

/// OpenRLHF get_advantages_and_returns, literally: V <- V m, r <- r m, then the textbook loop
/// (V_next = V_{t+1}, 0 at the end); R = A + V m.
inline gae_result gae_openrlhf(const vec& V0, const vec& r0, const bytes& m, int B, int T, double gamma,
                               const vec& lam) {
  gae_result g;
  const std::size_t n = static_cast<std::size_t>(B) * T;
  vec V(n), r(n);
  for (std::size_t i = 0; i < n; ++i) {
    V[i] = m[i] ? V0[i] : 0.0;
    r[i] = m[i] ? r0[i] : 0.0;
  }
  g.adv.assign(n, 0);
  g.ret.assign(n, 0);
  for (int b = 0; b < B; ++b) {
    double last = 0;
    for (int t = T - 1; t >= 0; --t) {
      const std::size_t i = static_cast<std::size_t>(b) * T + t;
      const double vnext = t < T - 1 ? V[i + 1] : 0.0;
      const double delta = r[i] + gamma * vnext - V[i];
      last = delta + gamma * lam[static_cast<std::size_t>(b)] * last;
      g.adv[i] = last;
      g.ret[i] = last + V[i];
    }
  }
  return g;
}

/// VAPO length-adaptive lambda per row: clamp(1 - 1/(alpha L_b), lo, hi); rows with L_b = 0 get hi.
inline vec adaptive_lambda(const bytes& m, int B, int T, double alpha, double lo, double hi) {
  vec out(static_cast<std::size_t>(B));
  for (int b = 0; b < B; ++b) {
    int L = 0;
    for (int t = 0; t < T; ++t) L += m[static_cast<std::size_t>(b) * T + t] ? 1 : 0;
    double l = L > 0 ? 1.0 - 1.0 / (alpha * L) : hi;
    out[static_cast<std::size_t>(b)] = std::min(hi, std::max(lo, l));
  }
  return out;
}

/// Zeroes masked positions (padding_mode::zero).
inline vec zero_masked(vec x, const bytes& m) {
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!m[i]) x[i] = 0;
  return x;
}

// ---- whitening (peer-semantics 2.6) --------------------------------------------------------

struct whiten_result {
  vec out;
  double count = 0, mean = 0, var = 0;
};

/// Masked whitening. Moments in long double, two passes. add: 1/sqrt(var + eps); floor:
/// 1/sqrt(max(var, eps)); scale 0 when that is 0. shift_mean = false adds the mean back.
/// raw: masked positions get the same formula; otherwise 0. N = 0: zeros (raw: x unchanged).
inline whiten_result whiten(const vec& x, const bytes& m, bool unbiased, double eps, bool floor_mode,
                            bool shift_mean, bool raw) {
  whiten_result w;
  long double n = 0, s = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (m[i]) n += 1, s += x[i];
  w.count = static_cast<double>(n);
  w.out.assign(x.size(), 0);
  if (n == 0) {
    if (raw) w.out = x;
    return w;
  }
  const long double mu = s / n;
  long double q = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (m[i]) q += (x[i] - mu) * (x[i] - mu);
  const long double d = unbiased ? n - 1 : n;
  const long double var = d > 0 ? q / d : 0;
  w.mean = static_cast<double>(mu);
  w.var = static_cast<double>(var);
  const long double v = floor_mode ? std::max<long double>(var, eps) : var + eps;
  const long double scale = v > 0 ? 1.0L / std::sqrt(v) : 0.0L;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (m[i] || raw) w.out[i] = static_cast<double>((x[i] - mu) * scale + (shift_mean ? 0.0L : mu));
  return w;
}

// ---- groups and outcome baselines (peer-semantics 2.3) --------------------------------------

/// label -> member batch indices (ascending), in ascending label order.
inline std::map<i64, std::vector<int>> groups(const std::vector<i64>& ids) {
  std::map<i64, std::vector<int>> g;
  for (std::size_t b = 0; b < ids.size(); ++b) g[ids[b]].push_back(static_cast<int>(b));
  return g;
}

enum class outcome { grpo, dr_grpo, rloo, mean };

/// Per-sequence advantage. singleton_zero: singletons get 0; else verl: GRPO s/(1+eps), others s.
inline vec outcome_sequence(const vec& s, const std::vector<i64>& ids, outcome kind, double eps, bool unbiased,
                            bool singleton_zero) {
  vec a(s.size(), 0);
  for (const auto& [label, members] : groups(ids)) {
    (void)label;
    const double n = static_cast<double>(members.size());
    if (members.size() == 1) {
      const int b = members[0];
      a[static_cast<std::size_t>(b)] = singleton_zero ? 0.0 : (kind == outcome::grpo ? s[static_cast<std::size_t>(b)] / (1.0 + eps) : s[static_cast<std::size_t>(b)]);
      continue;
    }
    long double sum = 0;
    for (int b : members) sum += s[static_cast<std::size_t>(b)];
    const double mu = static_cast<double>(sum / n);
    long double q = 0;
    for (int b : members) q += (s[static_cast<std::size_t>(b)] - mu) * (s[static_cast<std::size_t>(b)] - mu);
    const double sd = std::sqrt(static_cast<double>(q / (unbiased ? n - 1 : n)));
    for (int b : members) {
      const double x = s[static_cast<std::size_t>(b)];
      double v = 0;
      switch (kind) {
        case outcome::grpo: v = (x - mu) / (sd + eps); break;
        case outcome::dr_grpo: v = x - mu; break;
        case outcome::rloo: v = x - static_cast<double>((sum - x) / (n - 1)); break;  // leave-one-out mean
        case outcome::mean: v = x - mu; break;
      }
      a[static_cast<std::size_t>(b)] = v;
    }
  }
  return a;
}

/// a_b m[b,t].
inline vec broadcast(const vec& a, const bytes& m, int B, int T) {
  vec out(static_cast<std::size_t>(B) * T, 0);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      out[static_cast<std::size_t>(b) * T + t] = m[static_cast<std::size_t>(b) * T + t] ? a[static_cast<std::size_t>(b)] : 0.0;
  return out;
}

/// REINFORCE++ discounted return over valid tokens (masked tokens transparent, output 0).
inline vec discounted_returns(const vec& r, const bytes& m, int B, int T, double gamma) {
  vec G(static_cast<std::size_t>(B) * T, 0);
  for (int b = 0; b < B; ++b) {
    double carry = 0;
    for (int t = T - 1; t >= 0; --t) {
      const std::size_t i = static_cast<std::size_t>(b) * T + t;
      if (!m[i]) continue;
      carry = r[i] + gamma * carry;
      G[i] = carry;
    }
  }
  return G;
}

// ---- shards (E8 with the documented rotation) -----------------------------------------------

/// critic_of[b]. Groups numbered densely by ascending label (g), members by ascending batch index (j).
/// n = qK + e; critic c gets q+1 iff ((c - g e) mod K) < e. contiguous: shares in critic order;
/// strided: position j -> (j + g e) mod K.
inline std::vector<i64> shards(const std::vector<i64>& ids, i64 K, bool strided) {
  std::vector<i64> critic(ids.size(), -1);
  i64 g = 0;
  for (const auto& [label, members] : groups(ids)) {
    (void)label;
    const i64 n = static_cast<i64>(members.size());
    const i64 q = n / K, e = n % K;
    const i64 rot = ((g % K) * e) % K;  // g e mod K without overflow
    if (strided) {
      for (i64 j = 0; j < n; ++j) critic[static_cast<std::size_t>(members[static_cast<std::size_t>(j)])] = (j + rot) % K;
    } else {
      i64 j = 0;
      for (i64 c = 0; c < K; ++c) {
        const i64 share = q + ((((c - rot) % K) + K) % K < e ? 1 : 0);
        for (i64 s = 0; s < share; ++s, ++j) critic[static_cast<std::size_t>(members[static_cast<std::size_t>(j)])] = c;
      }
    }
    ++g;
  }
  return critic;
}

// ---- uncertainty masks (E10, E11, D4) -------------------------------------------------------

struct mask_result {
  bytes adv, ent;
  i64 valid = 0, adv_masked = 0, ent_masked = 0;
};

/// Sort-based masks. Scope: whole batch (per_row = false) or each row. The valid tokens of a scope
/// are totally ordered by (sigma ascending, flat index ascending); adv = 0 for the first floor(k N)
/// of that order, ent = 0 for the last floor(h N) (so among tied sigmas the advantage mask takes
/// the smallest flat indices and the entropy filter the largest, as the header documents).
/// sigma compared as doubles (so -0 == +0 is a tie). Invalid tokens: 0 in both.
inline mask_result masks(const vec& sigma, const bytes& m, int B, int T, double k, double h, bool per_row) {
  mask_result r;
  const std::size_t n = static_cast<std::size_t>(B) * T;
  r.adv.assign(n, 0);
  r.ent.assign(n, 0);
  auto run = [&](std::vector<i64> idx) {
    const i64 N = static_cast<i64>(idx.size());
    const i64 nk = static_cast<i64>(std::floor(k * static_cast<double>(N)));
    const i64 nh = static_cast<i64>(std::floor(h * static_cast<double>(N)));
    r.valid += N;
    r.adv_masked += nk;
    r.ent_masked += nh;
    for (i64 i : idx) r.adv[static_cast<std::size_t>(i)] = r.ent[static_cast<std::size_t>(i)] = 1;
    std::vector<i64> asc = idx;
    std::sort(asc.begin(), asc.end(), [&](i64 a, i64 b) {
      const double sa = sigma[static_cast<std::size_t>(a)], sb = sigma[static_cast<std::size_t>(b)];
      return sa != sb ? sa < sb : a < b;
    });
    for (i64 j = 0; j < nk; ++j) r.adv[static_cast<std::size_t>(asc[static_cast<std::size_t>(j)])] = 0;
    for (i64 j = N - nh; j < N; ++j) r.ent[static_cast<std::size_t>(asc[static_cast<std::size_t>(j)])] = 0;
  };
  if (per_row) {
    for (int b = 0; b < B; ++b) {
      std::vector<i64> idx;
      for (int t = 0; t < T; ++t)
        if (m[static_cast<std::size_t>(b) * T + t]) idx.push_back(static_cast<i64>(b) * T + t);
      run(idx);
    }
  } else {
    std::vector<i64> idx;
    for (std::size_t i = 0; i < n; ++i)
      if (m[i]) idx.push_back(static_cast<i64>(i));
    run(idx);
  }
  return r;
}

/// Value of rank floor(q (N-1)) among the valid sigmas (ascending); NaN when N = 0.
inline double quantile(const vec& sigma, const bytes& m, double q) {
  vec v;
  for (std::size_t i = 0; i < sigma.size(); ++i)
    if (m[i]) v.push_back(sigma[i]);
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(std::floor(q * static_cast<double>(v.size() - 1)))];
}

/// Population mean and variance over valid tokens (long double, two passes).
inline std::pair<double, double> masked_mean_var(const vec& x, const bytes& m) {
  long double n = 0, s = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (m[i]) n += 1, s += x[i];
  if (n == 0) return {0.0, 0.0};
  const long double mu = s / n;
  long double q = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (m[i]) q += (x[i] - mu) * (x[i] - mu);
  return {static_cast<double>(mu), static_cast<double>(q / n)};
}

// ---- random inputs --------------------------------------------------------------------------

/// A [B,T] response mask with a mix of row kinds: empty rows, length-1 rows, full (truncated)
/// rows, prefix rows, and prefix rows with interior holes (observation blocks).
inline bytes random_mask(std::mt19937_64& rng, int B, int T) {
  bytes m(static_cast<std::size_t>(B) * T, 0);
  std::uniform_int_distribution<int> kind(0, 9);
  for (int b = 0; b < B; ++b) {
    if (T == 0) break;
    std::uint8_t* row = m.data() + static_cast<std::size_t>(b) * T;
    const int c = kind(rng);
    int L = 0;
    if (c == 0) L = 0;
    else if (c == 1) L = 1;
    else if (c == 2) L = T;
    else L = std::uniform_int_distribution<int>(1, T)(rng);
    for (int t = 0; t < L; ++t) row[t] = 1;
    if (c >= 6 && L > 2) {  // interior holes
      const int holes = std::uniform_int_distribution<int>(1, 3)(rng);
      for (int hIdx = 0; hIdx < holes; ++hIdx) {
        const int start = std::uniform_int_distribution<int>(1, L - 1)(rng);
        const int len = std::uniform_int_distribution<int>(1, std::max(1, L / 8))(rng);
        for (int t = start; t < std::min(L - 1, start + len); ++t) row[t] = 0;
      }
    }
  }
  return m;
}

inline vec random_vec(std::mt19937_64& rng, std::size_t n, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  vec v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

/// Round-trips through T (so float tests compare against the exact float inputs).
template <class T>
inline std::vector<T> as(const vec& v) {
  return std::vector<T>(v.begin(), v.end());
}
template <class T>
inline vec widen(const std::vector<T>& v) {
  return vec(v.begin(), v.end());
}

}  // namespace ref
