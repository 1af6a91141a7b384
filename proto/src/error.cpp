// ErrorCode names and the formatting of errors.
#include "nsbroker/error.hpp"

#include <array>
#include <cstring>

#include "nsbroker/throw_errno.hpp"

namespace nsbroker {

namespace {

constexpr std::array<std::pair<ErrorCode, std::string_view>, 11> code_names{{
    {ErrorCode::invalid_request, "invalid_request"},
    {ErrorCode::unsupported, "unsupported"},
    {ErrorCode::not_found, "not_found"},
    {ErrorCode::not_a_netns, "not_a_netns"},
    {ErrorCode::permission_denied, "permission_denied"},
    {ErrorCode::limit, "limit"},
    {ErrorCode::worker_failed, "worker_failed"},
    {ErrorCode::kernel, "kernel"},
    {ErrorCode::unavailable, "unavailable"},
    {ErrorCode::internal, "internal"},
    {ErrorCode::io, "io"},
}};

} // namespace

std::string_view to_string(ErrorCode code) noexcept {
    for (const auto& [c, name] : code_names) {
        if (c == code) {
            return name;
        }
    }
    return "internal";
}

std::optional<ErrorCode> error_code_from_string(std::string_view name) noexcept {
    for (const auto& [c, n] : code_names) {
        if (n == name) {
            return c;
        }
    }
    return std::nullopt;
}

std::string Error::describe() const {
    std::string text{to_string(code)};
    text += ": ";
    text += message;
    if (sys_errno != 0 && message.find(std::strerror(sys_errno)) == std::string::npos) {
        text += " (";
        text += std::strerror(sys_errno);
        text += ")";
    }
    return text;
}

void throw_errno(const std::string& what) {
    throw SystemError(errno, what);
}

} // namespace nsbroker
