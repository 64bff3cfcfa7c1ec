// asyppo/error.hpp: the one exception type every entry point throws on bad input.
//
// Entry points validate everything before writing anything, so a thrown asyppo::error
// leaves every output untouched. The message always starts with the entry point and the
// argument at fault, e.g. "asyppo::gae: values: extent 1 is 512, expected 1024".
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace asyppo {

/// Thrown on invalid input (shapes, strides, parameters, non-finite values). Derives from
/// std::invalid_argument so generic handlers (and pybind11, which maps it to ValueError) work.
class error : public std::invalid_argument {
 public:
  error(std::string where, std::string argument, const std::string& what)
      : std::invalid_argument(where + ": " + argument + ": " + what),
        where_(std::move(where)),
        argument_(std::move(argument)) {}
  /// The entry point that rejected the call ("asyppo::gae").
  const std::string& where() const noexcept { return where_; }
  /// The argument at fault ("values").
  const std::string& argument() const noexcept { return argument_; }

 private:
  std::string where_;
  std::string argument_;
};

namespace detail {
template <class... Args>
[[noreturn]] void fail(const char* where, const char* argument, const Args&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw error(where, argument, os.str());
}
}  // namespace detail

}  // namespace asyppo
