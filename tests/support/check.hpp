// Shared comparison helper of the tests: element-wise closeness with a relative tolerance
// (|got - want| <= tol * max(1, |want|)), reporting the first failing index. Each test file
// chooses and justifies its own tolerance.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

template <class T>
void require_close(const std::vector<T>& got, const std::vector<double>& want, const char* what, double tol) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!(std::abs(static_cast<double>(got[i]) - want[i]) <= tol * std::max(1.0, std::abs(want[i]))))
      FAIL(what << " at " << i << ": got " << static_cast<double>(got[i]) << " want " << want[i]);
}
