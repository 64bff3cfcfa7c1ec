// The Thrust backend (backend/thrust/thrust_backend.hpp) on Thrust's CPP system, with the same test
// bodies as the other backends: every flat and ragged 2-D pattern against sequential loops with
// exact non-commutative operators (support/pattern_checks.hpp), and every algorithm against the CPU
// backend (support/backend_conformance.hpp: integer results identical, floating-point results to
// rounding). Built when the CCCL headers are found (asyppo::thrust); no GPU or nvcc needed.
#include <catch2/catch.hpp>

#include "asyppo/backend/thrust/thrust_backend.hpp"

#include <cstdint>
#include <utility>

#include "asyppo/asyppo.hpp"
#include "backend_conformance.hpp"
#include "pattern_checks.hpp"

using namespace asyppo;

namespace {
const auto make_thrust = [](std::uint64_t) { return thrust_backend<>{}; };
}  // namespace

TEST_CASE("thrust backend: flat patterns against sequential loops", "[thrust][patterns]") {
  for (index_t n : {index_t(1), index_t(7), index_t(1000), index_t(20000)})
    asyppo_test::check_flat_patterns(thrust_backend<>{}, n, 3 + static_cast<std::uint64_t>(n));
}

TEST_CASE("thrust backend: ragged 2-D patterns against sequential loops", "[thrust][patterns]") {
  for (auto shape : {std::pair<index_t, index_t>{37, 300}, {1, 1}, {3, 5}, {64, 2000}})
    asyppo_test::check_ragged_patterns(thrust_backend<>{}, shape.first, shape.second,
                                       11 + static_cast<std::uint64_t>(shape.first));
}

TEMPLATE_TEST_CASE("thrust backend: advantage_step against the CPU backend", "[thrust][conformance]", float, double) {
  asyppo_conformance::conformance_advantage_step<TestType>(make_thrust);
}

TEMPLATE_TEST_CASE("thrust backend: baselines, whitening and returns against the CPU backend", "[thrust][conformance]",
                   float, double) {
  asyppo_conformance::conformance_baselines<TestType>(make_thrust);
}

TEMPLATE_TEST_CASE("thrust backend: losses against the CPU backend", "[thrust][conformance]", float, double) {
  asyppo_conformance::conformance_losses<TestType>(make_thrust);
}

TEMPLATE_TEST_CASE("thrust backend: critic heads against the CPU backend", "[thrust][conformance]", float, double) {
  asyppo_conformance::conformance_critic_heads<TestType>(make_thrust);
}

TEMPLATE_TEST_CASE("thrust backend: 16-bit inputs give the float inputs' bits", "[thrust][conformance][half]", bfloat16, float16) {
  asyppo_conformance::conformance_half_inputs<TestType>(make_thrust);
}
