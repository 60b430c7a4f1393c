#pragma once
// DEEPEM_CHECK(cond, parts...): TORCH_CHECK with a message that deepem builds itself, as one
// std::string, without std::ostream. On the GPU machine's toolchain (GCC 13.3, -std=c++20,
// torch 2.11 built as C++17) every TORCH_CHECK message that streamed an integer crashed the
// process inside std::ostream::_M_insert<long>, of which _C.so carried its own weak copy.
// TORCH_CHECK passes a single std::string message through untouched (c10::str returns it as
// is), so a failed deepem check never creates a stream: integers go through std::to_string,
// doubles through snprintf, dtypes through c10::toString.
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

namespace deepem {
namespace detail {

inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, char v) { s += v; }
inline void append(std::string& s, bool v) { s += v ? "true" : "false"; }
inline void append(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
inline void append(std::string& s, const c10::Device& v) { s += v.str(); }

template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool> &&
                                           !std::is_same_v<T, char>, int> = 0>
void append(std::string& s, T v) {
  s += std::to_string(v);
}

template <typename T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
void append(std::string& s, T v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(v));  // as a default ostream prints it
  s += buf;
}

template <typename T>
void append(std::string& s, c10::ArrayRef<T> v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    append(s, v[i]);
  }
  s += ']';
}

template <typename T>
void append(std::string& s, const std::vector<T>& v) {
  append(s, c10::ArrayRef<T>(v));
}

}  // namespace detail

template <typename... Parts>
std::string message(const Parts&... parts) {
  std::string s;
  (detail::append(s, parts), ...);
  return s;
}

}  // namespace deepem

#define DEEPEM_CHECK(cond, ...)                                  \
  do {                                                           \
    if (C10_UNLIKELY(!(cond))) {                                 \
      TORCH_CHECK(false, ::deepem::message(__VA_ARGS__));        \
    }                                                            \
  } while (0)
