// Result<T>: one item's outcome, a value or an exception.
//
// A batch function that can fail single items returns
// std::vector<batched::Result<Out>>: `Result<Out>(value)` for an item that
// worked, `batched::failure(error)` for one that did not. Only the submitter of
// a failed item sees its error; the rest of the batch is unaffected. The
// callback form of Batcher::submit receives a Result as well.
//
// Not thread-safe (a plain value type). Copying copies the value; the error is
// a std::exception_ptr, so copies share one exception object.
#pragma once

#include <exception>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <variant>

namespace batched {

// An error on its way into a Result<T> of any T: `return batched::failure(e);`.
struct Failure {
  std::exception_ptr error;
};

// Wraps `error`, an exception object (std::invalid_argument("..."), say) or an
// std::exception_ptr. A null exception_ptr becomes std::invalid_argument, so a
// failed Result always carries an error. Allocates the exception object.
template <class E>
Failure failure(E error) {
  if constexpr (std::is_same_v<std::decay_t<E>, std::exception_ptr>) {
    if (!error) return Failure{std::make_exception_ptr(std::invalid_argument("batched::failure: null exception_ptr"))};
    return Failure{std::move(error)};
  } else {
    return Failure{std::make_exception_ptr(std::move(error))};
  }
}

template <class T>
class Result {
  static_assert(!std::is_reference_v<T>, "Result<T> holds its value: T must not be a reference.");
  static_assert(!std::is_same_v<std::decay_t<T>, std::exception_ptr>,
                "Result<std::exception_ptr> would be ambiguous: wrap the error in a struct.");
  static_assert(!std::is_same_v<std::decay_t<T>, Failure>, "Result<Failure> would be ambiguous.");

 public:
  // A successful result (implicit, so `return value;` works).
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(google-explicit-constructor)
  // A failed result (implicit, so `return batched::failure(e);` works).
  Result(Failure f) : v_(std::in_place_index<1>, std::move(f.error)) {  // NOLINT(google-explicit-constructor)
    if (!std::get<1>(v_)) std::get<1>(v_) = failure(std::exception_ptr()).error;
  }

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  // The value; rethrows the error if the item failed.
  T& value() & {
    if (!ok()) std::rethrow_exception(std::get<1>(v_));
    return std::get<0>(v_);
  }
  const T& value() const& {
    if (!ok()) std::rethrow_exception(std::get<1>(v_));
    return std::get<0>(v_);
  }
  T&& value() && {
    if (!ok()) std::rethrow_exception(std::get<1>(v_));
    return std::get<0>(std::move(v_));
  }

  // The error, or a null exception_ptr if the item succeeded.
  std::exception_ptr error() const noexcept { return ok() ? std::exception_ptr() : std::get<1>(v_); }

 private:
  std::variant<T, std::exception_ptr> v_;
};

}  // namespace batched
