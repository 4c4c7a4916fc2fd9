// SPDX-License-Identifier: MIT
/// \file
/// vnpu::Result<T>: errors as values (GCC 12 has no std::expected). Used inside the library and by the
/// low-level Device API; value() turns a failure into a thrown vnpu::Error at the public boundary.
#pragma once

#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

#include <vnpu/error.h>

namespace vnpu {

/// Either a T or an Error. [[nodiscard]]: ignoring a result is ignoring a possible error.
/// Thread safety: none of its own; a const Result may be read from several threads.
template <class T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<std::remove_cvref_t<T>, Error>, "Result<Error> is ambiguous");

 public:
  /// A success holding `value`.
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(google-explicit-constructor)
  /// A failure holding `error`.
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT(google-explicit-constructor)

  /// True on success.
  [[nodiscard]] bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  /// The value; throws the stored Error on failure.
  T& value() & {
    throw_if_error();
    return std::get<0>(v_);
  }
  const T& value() const& {
    throw_if_error();
    return std::get<0>(v_);
  }
  T&& value() && {
    throw_if_error();
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  T& operator*() & { return value(); }

  /// The error. Precondition: !ok().
  [[nodiscard]] const Error& error() const& { return std::get<1>(v_); }
  [[nodiscard]] Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  void throw_if_error() const {
    if (v_.index() != 0)
      throw std::get<1>(v_);
  }
  std::variant<T, Error> v_;
};

/// Success or an Error, with nothing to return.
template <>
class [[nodiscard]] Result<void> {
 public:
  /// Success.
  Result() = default;
  /// A failure holding `error`.
  Result(Error error) : error_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  [[nodiscard]] bool ok() const noexcept { return !error_.has_value(); }
  explicit operator bool() const noexcept { return ok(); }
  /// Throws the stored Error on failure; does nothing on success.
  void value() const {
    if (error_)
      throw *error_;
  }
  /// The error. Precondition: !ok().
  [[nodiscard]] const Error& error() const& { return *error_; }
  [[nodiscard]] Error&& error() && { return std::move(*error_); }

 private:
  std::optional<Error> error_;
};

/// Outcome of an operation that returns nothing.
using Status = Result<void>;

}  // namespace vnpu
