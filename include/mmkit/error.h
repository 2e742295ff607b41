// The one exception type mmkit throws for bad input (SPEC decision 6).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mmkit {

/// Every message starts with "[op_name]" and states the offending shapes,
/// dtypes and values. Python sees it as ValueError.
class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& what) : std::invalid_argument(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

/// throw_error("quantize", "bits ", b, " is not supported") -> "[quantize] bits 7 ..."
template <typename... Args>
[[noreturn]] void throw_error(const char* op, Args&&... args) {
  throw Error(detail::concat("[", op, "] ", std::forward<Args>(args)...));
}

}  // namespace mmkit
