// Evaluation-order independence: every algorithm run on tiled_backend (support/tiled_backend.hpp:
// reductions and scans in random tiles merged in random tree order, through the lift/combine paths
// a GPU backend uses) against cpu_backend (sequential folds), with the comparisons and tolerances
// of support/backend_conformance.hpp.
#include <catch2/catch.hpp>

#include "asyppo/asyppo.hpp"
#include "backend_conformance.hpp"
#include "tiled_backend.hpp"

using namespace asyppo;
using asyppo_test::tiled_backend;

namespace {
const auto make_tiled = [](std::uint64_t seed) { return tiled_backend(seed); };
}  // namespace

TEMPLATE_TEST_CASE("advantage_step does not depend on the evaluation order", "[reassociation]", float, double) {
  asyppo_conformance::conformance_advantage_step<TestType>(make_tiled);
}

TEMPLATE_TEST_CASE("baselines, whitening and returns do not depend on the evaluation order", "[reassociation]", float,
                   double) {
  asyppo_conformance::conformance_baselines<TestType>(make_tiled);
}

TEMPLATE_TEST_CASE("losses do not depend on the evaluation order", "[reassociation]", float, double) {
  asyppo_conformance::conformance_losses<TestType>(make_tiled);
}

TEST_CASE("tiled_backend really re-associates (the test can fail)", "[reassociation]") {
  // A non-associative "combine" (subtraction) gives different answers in different tile orders:
  // the backend does split and regroup, so associativity bugs in an algorithm's operator show up.
  struct minus_reducer {
    using value_type = double;
    double identity() const { return 0; }
    void add(double& a, index_t i) const { a += static_cast<double>(i + 1); }
    double combine(double a, double b) const { return a - b; }
  };
  const double seq = cpu_backend(1).reduce(index_t(1000), minus_reducer{});
  int differ = 0;
  for (std::uint64_t s = 0; s < 5; ++s) differ += tiled_backend(s).reduce(index_t(1000), minus_reducer{}) != seq ? 1 : 0;
  CHECK(differ > 0);
}

TEMPLATE_TEST_CASE("critic heads do not depend on the evaluation order", "[reassociation]", float, double) {
  asyppo_conformance::conformance_critic_heads<TestType>(make_tiled);
}

TEMPLATE_TEST_CASE("16-bit inputs give the float inputs' bits under any evaluation order", "[reassociation][half]", bfloat16, float16) {
  asyppo_conformance::conformance_half_inputs<TestType>(make_tiled);
}
