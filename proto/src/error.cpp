// ErrorCode names and the formatting of errors.
#include "nsbroker/error.hpp"

#include <cstring>

#include "nsbroker/name_table.hpp"
#include "nsbroker/throw_errno.hpp"

namespace nsbroker {

namespace {

constexpr auto code_names = proto::name_table<ErrorCode>({
    {"invalid_request", ErrorCode::invalid_request},
    {"unsupported", ErrorCode::unsupported},
    {"not_found", ErrorCode::not_found},
    {"not_a_netns", ErrorCode::not_a_netns},
    {"permission_denied", ErrorCode::permission_denied},
    {"limit", ErrorCode::limit},
    {"worker_failed", ErrorCode::worker_failed},
    {"kernel", ErrorCode::kernel},
    {"unavailable", ErrorCode::unavailable},
    {"internal", ErrorCode::internal},
    {"io", ErrorCode::io},
    {"timeout", ErrorCode::timeout},
});

} // namespace

std::string_view to_string(ErrorCode code) noexcept {
    return code_names.name_of(code).value_or("internal");
}

std::optional<ErrorCode> error_code_from_string(std::string_view name) noexcept {
    return code_names.value_of(name);
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
