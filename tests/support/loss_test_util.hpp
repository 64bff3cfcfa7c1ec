// tests/support/loss_test_util.hpp: small helpers shared by the update-side tests (views over
// std::vector, mode lists, tolerances). The plain references live in loss_reference.hpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "loss_reference.hpp"

namespace lt {

using asyppo::index_t;

inline constexpr int kModes = 5;

inline asyppo::loss_aggregation mode_of(int i) { return static_cast<asyppo::loss_aggregation>(i); }

template <class T>
std::vector<T> cast(const lref::vec& v) {
  std::vector<T> o(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) o[i] = static_cast<T>(v[i]);
  return o;
}
/// Values as the library sees them (rounded to T), back in double for the reference.
template <class T>
lref::vec rounded(const lref::vec& v) {
  lref::vec o(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) o[i] = static_cast<double>(static_cast<T>(v[i]));
  return o;
}

template <class T>
asyppo::token_view<const T> cv(const std::vector<T>& v, index_t B, index_t T_) {
  return asyppo::token_view<const T>(v.empty() ? nullptr : v.data(), B, T_);
}
template <class T>
asyppo::token_view<T> mv(std::vector<T>& v, index_t B, index_t T_) {
  return asyppo::token_view<T>(v.empty() ? nullptr : v.data(), B, T_);
}
inline asyppo::mask_view mk(const lref::bytes& m, index_t B, index_t T_) {
  if (m.empty()) return {};
  return asyppo::mask_view(m.data(), B, T_);
}

inline asyppo::loss_normalizer to_norm(const lref::norm& n) { return {n.N, n.Bg, n.Ln}; }

/// |a - b| <= atol + rtol * max(|a|, |b|).
inline bool close(double a, double b, double rtol, double atol = 0.0) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::fabs(a - b) <= atol + rtol * std::max(std::fabs(a), std::fabs(b));
}

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T>
constexpr double grad_rtol() {
  return sizeof(T) == 4 ? 2e-6 : 1e-12;
}

/// Rows [r0, r1) of a row-major [B,T] vector.
template <class V>
V rows_of(const V& v, int T_, int r0, int r1) {
  return V(v.begin() + static_cast<std::ptrdiff_t>(r0) * T_, v.begin() + static_cast<std::ptrdiff_t>(r1) * T_);
}

/// Splits B rows into n contiguous micro-batches (n <= B; sizes differ by at most one).
inline std::vector<int> split_points(int B, int n) {
  std::vector<int> p;
  for (int j = 0; j <= n; ++j) p.push_back(B * j / n);
  return p;
}

}  // namespace lt
