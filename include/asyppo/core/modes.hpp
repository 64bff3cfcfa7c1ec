// asyppo/core/modes.hpp: option enums shared by several algorithms.
#pragma once

namespace asyppo {

/// What an algorithm writes at masked-out (padding or observation) tokens.
///   zero: 0 (default; outputs are clean to multiply, sum or log)
///   raw:  what the peer implementation writes there, for parity tests (documented per algorithm)
enum class padding_mode { zero, raw };

/// Divisor of a standard deviation over n items: n (population) or n - 1 (unbiased).
enum class std_kind { population, unbiased };

}  // namespace asyppo
