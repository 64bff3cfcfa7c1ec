// Strided copies for "contiguous == strided" tests: spread(x) puts row-major data into every other
// element of a buffer (inner stride 2, the others hold a marker), so that views over it take the
// algorithms' per-element paths; gather(y) reads it back.
#pragma once

#include <cstddef>
#include <vector>

namespace asyppo_test {

template <class T>
std::vector<T> spread(const std::vector<T>& x, T marker = T(77)) {
  std::vector<T> y(2 * x.size(), marker);
  for (std::size_t i = 0; i < x.size(); ++i) y[2 * i] = x[i];
  return y;
}

template <class T>
std::vector<T> gather(const std::vector<T>& y) {
  std::vector<T> x(y.size() / 2);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = y[2 * i];
  return x;
}

}  // namespace asyppo_test
