// Namespace references: their checks, their text spelling and their description.
#include "nsbroker/netns_reference.hpp"

#include "nsbroker/codec.hpp"

namespace nsbroker::proto {

namespace {

constexpr std::string_view pid_word = *netns_kind_names.name_of(NetnsRef::Kind::pid);

// The N of "pid:N", or nothing when it is not a process id.
std::optional<pid_t> pid_of(std::string_view digits) {
    if (digits.empty()) {
        return std::nullopt;
    }
    pid_t pid = 0;
    for (char ch : digits) {
        if (ch < '0' || ch > '9') {
            return std::nullopt;
        }
        pid = pid * 10 + (ch - '0');
        if (pid > pid_max_limit) {
            return std::nullopt;
        }
    }
    if (pid < 1) {
        return std::nullopt;
    }
    return pid;
}

} // namespace

std::string NetnsRef::describe() const {
    std::string word(netns_kind_names.name_of(kind).value_or("?"));
    switch (kind) {
    case Kind::name:
    case Kind::path:
        return word + ":" + text;
    case Kind::pid:
        return word + ":" + std::to_string(pid);
    case Kind::fd:
        return word;
    }
    return "?";
}

Result<void> check_netns_name(std::string_view name) {
    if (name.empty()) {
        return make_error(ErrorCode::invalid_request, "namespace name is empty");
    }
    if (name == "." || name == "..") {
        return make_error(ErrorCode::invalid_request, "namespace name must not be \".\" or \"..\"");
    }
    if (name.size() > max_netns_name_length) {
        return make_error(ErrorCode::invalid_request, "namespace name longer than 255 bytes");
    }
    if (name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos) {
        return make_error(ErrorCode::invalid_request,
                          "namespace name must be a single path component (no '/' or NUL)");
    }
    return {};
}

Result<void> check_netns_path(std::string_view path) {
    if (path.empty() || path.front() != '/' || path.size() > max_netns_path_length ||
        path.find('\0') != std::string_view::npos) {
        return make_error(ErrorCode::invalid_request, "expected an absolute path");
    }
    return {};
}

Result<NetnsRef> parse_netns_reference(std::string_view text) {
    if (text.starts_with(pid_word) && text.substr(pid_word.size()).starts_with(':')) {
        auto pid = pid_of(text.substr(pid_word.size() + 1));
        if (!pid) {
            return make_error(ErrorCode::invalid_request,
                              "\"" + std::string(text) + "\": expected pid:N");
        }
        return NetnsRef::by_pid(*pid);
    }
    if (text.find('/') != std::string_view::npos) {
        return NetnsRef::by_path(std::string(text));
    }
    if (auto ok = check_netns_name(text); !ok) {
        return std::move(ok).error();
    }
    return NetnsRef::by_name(std::string(text));
}

} // namespace nsbroker::proto
