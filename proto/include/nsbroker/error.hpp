// The one error contract of nsbroker.
//
// Outcomes a caller must expect (a refused request, a namespace that does not
// exist, a peer that went away) are values: Error, carried in Result<T>.
// Faults (a system call that must not fail) are SystemError exceptions, which
// keep the errno and the operation that failed. A daemon catches them at the
// boundary of the peer that caused them and never exits because of one.
#pragma once

#include <cerrno>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>

#include "nsbroker/export.hpp"

namespace nsbroker {

// Stable, documented in proto/PROTOCOL.md; the wire spelling is the snake_case name.
enum class ErrorCode {
    invalid_request,   // malformed JSON, wrong types, missing or unknown fields
    unsupported,       // an operation, family or option this daemon does not know
    not_found,         // the namespace reference names nothing
    not_a_netns,       // the reference exists but is not a network namespace
    permission_denied, // the caller may not have what it asked for
    limit,             // a size or count limit was reached
    worker_failed,     // the namespace worker died or misbehaved
    kernel,            // the kernel refused (errno says why)
    unavailable,       // the daemon is shutting down
    internal,          // a fault inside the daemon; the request was not served
    io,                // the connection to the daemon failed (client side only)
    timeout,           // the call's deadline passed before its answer (client side only)
};

NSBROKER_PUBLIC std::string_view to_string(ErrorCode code) noexcept;
NSBROKER_PUBLIC std::optional<ErrorCode> error_code_from_string(std::string_view name) noexcept;

struct Error {
    ErrorCode code = ErrorCode::internal;
    int sys_errno = 0; // errno when the kernel said no, else 0
    std::string message;

    // "code: message (strerror)".
    [[nodiscard]] NSBROKER_PUBLIC std::string describe() const;
};

inline Error make_error(ErrorCode code, std::string message, int sys_errno = 0) {
    return Error{code, sys_errno, std::move(message)};
}

// A system call that failed for a reason the caller cannot act on: `kernel`,
// "what: strerror(err)", with err. Outcomes a caller can act on (a missing
// file, a refusal) have codes of their own and are told apart first.
inline Error kernel_error(std::string_view what, int err = errno) {
    return make_error(ErrorCode::kernel, std::string(what) + ": " + std::strerror(err), err);
}

// A failed system call: what was attempted, and the errno it failed with.
class NSBROKER_PUBLIC SystemError : public std::system_error {
  public:
    SystemError(int err, const std::string& what)
        : std::system_error(err, std::generic_category(), what) {}
    [[nodiscard]] int sys_errno() const noexcept { return code().value(); }
};

// A value or an Error.
template <typename T>
class [[nodiscard]] Result {
  public:
    Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
    Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}

    [[nodiscard]] bool ok() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return ok(); }

    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    const Error& error() const& { return std::get<1>(v_); }
    Error&& error() && { return std::get<1>(std::move(v_)); }

    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

  private:
    std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
  public:
    Result() = default;
    Result(Error error) : error_(std::move(error)) {}

    [[nodiscard]] bool ok() const noexcept { return !error_.has_value(); }
    explicit operator bool() const noexcept { return ok(); }
    const Error& error() const& { return *error_; }
    Error&& error() && { return std::move(*error_); }

  private:
    std::optional<Error> error_;
};

} // namespace nsbroker
