// Typed values into socket options, and the checks a whole spec must pass.
#include "nsbroker/typed_spec.hpp"

#include <sys/socket.h>

#include <type_traits>

#include "nsbroker/address.hpp"
#include "nsbroker/socket_option_table.hpp"

namespace nsbroker::proto {

namespace {

std::string describe(const TypedValue& value) {
    struct Describe {
        std::string operator()(bool) const { return "a boolean"; }
        std::string operator()(std::int64_t) const { return "a number"; }
        std::string operator()(std::uint64_t) const { return "a number"; }
        std::string operator()(const std::string&) const { return "a string"; }
        std::string operator()(const OtherValue& other) const { return other.description; }
    };
    return std::visit(Describe{}, value);
}

Error out_of_range(std::int64_t min, std::int64_t max) {
    return make_error(ErrorCode::invalid_request,
                      "out of range (" + std::to_string(min) + " to " + std::to_string(max) + ")");
}

bool in_range(std::int64_t value, std::int64_t min, std::int64_t max) {
    return value >= min && value <= max;
}

std::optional<Error> interface_name_problem(const std::string& name) {
    if (name.empty() || name.size() > max_interface_name_length ||
        name.find('\0') != std::string::npos) {
        return make_error(ErrorCode::invalid_request, "expected an interface name");
    }
    return std::nullopt;
}

// What is wrong with the value a row holds, if it holds one.
std::optional<Error> option_value_problem(const SocketOptionRow& row,
                                          const SocketOptions& options) {
    return std::visit(
        [&](auto member) -> std::optional<Error> {
            const auto& value = options.*member;
            using Value = typename std::decay_t<decltype(value)>::value_type;
            if (!value) {
                return std::nullopt;
            }
            if constexpr (std::is_same_v<Value, std::string>) {
                return interface_name_problem(*value);
            } else if constexpr (!std::is_same_v<Value, bool>) {
                if (!in_range(static_cast<std::int64_t>(*value), row.min, row.max)) {
                    return out_of_range(row.min, row.max);
                }
            }
            return std::nullopt;
        },
        row.field);
}

FieldError at_field(std::string field, Error error) {
    return FieldError{std::move(field), std::move(error)};
}

} // namespace

Result<bool> boolean_value(const TypedValue& value) {
    if (const bool* b = std::get_if<bool>(&value)) {
        return *b;
    }
    return make_error(ErrorCode::invalid_request, "expected a boolean, got " + describe(value));
}

Result<std::int64_t> integer_value(const TypedValue& value, std::int64_t min, std::int64_t max) {
    if (const auto* v = std::get_if<std::int64_t>(&value)) {
        if (in_range(*v, min, max)) {
            return *v;
        }
    } else if (const auto* u = std::get_if<std::uint64_t>(&value)) {
        if (max >= 0 && *u <= static_cast<std::uint64_t>(max) &&
            in_range(static_cast<std::int64_t>(*u), min, max)) {
            return static_cast<std::int64_t>(*u);
        }
    } else {
        return make_error(ErrorCode::invalid_request,
                          "expected an integer, got " + describe(value));
    }
    return out_of_range(min, max);
}

Result<std::string> string_value(const TypedValue& value) {
    if (const auto* s = std::get_if<std::string>(&value)) {
        return *s;
    }
    return make_error(ErrorCode::invalid_request, "expected a string, got " + describe(value));
}

Error FieldError::at(std::string_view outer) const {
    std::string path(outer);
    if (!field.empty()) {
        path += path.empty() ? field : "." + field;
    }
    if (path.empty()) {
        return error;
    }
    return make_error(error.code, path + ": " + error.message, error.sys_errno);
}

std::optional<FieldError> set_socket_option(SocketOptions& options, std::string_view name,
                                            const TypedValue& value) {
    const SocketOptionRow* row = find_socket_option(name);
    if (row == nullptr) {
        return at_field(
            {}, make_error(ErrorCode::unsupported, "unknown field \"" + std::string(name) + "\""));
    }
    return std::visit(
        [&](auto member) -> std::optional<FieldError> {
            auto& slot = options.*member;
            using Value = typename std::decay_t<decltype(slot)>::value_type;
            if constexpr (std::is_same_v<Value, bool>) {
                auto b = boolean_value(value);
                if (!b) {
                    return at_field(std::string(name), std::move(b).error());
                }
                slot = *b;
            } else if constexpr (std::is_same_v<Value, std::string>) {
                auto s = string_value(value);
                if (!s) {
                    return at_field(std::string(name), std::move(s).error());
                }
                if (auto problem = interface_name_problem(*s)) {
                    return at_field(std::string(name), std::move(*problem));
                }
                slot = std::move(*s);
            } else {
                auto n = integer_value(value, row->min, row->max);
                if (!n) {
                    return at_field(std::string(name), std::move(n).error());
                }
                slot = static_cast<Value>(*n);
            }
            return std::nullopt;
        },
        row->field);
}

std::optional<FieldError> check_socket_spec(const SocketSpec& s) {
    if (!in_range(s.family, 0, max_family)) {
        return at_field("family", out_of_range(0, max_family));
    }
    if (s.family == AF_UNSPEC) {
        return at_field("family", make_error(ErrorCode::invalid_request, "must not be 0"));
    }
    if (!in_range(s.type, 0, max_type)) {
        return at_field("type", out_of_range(0, max_type));
    }
    if (s.type == 0) {
        return at_field("type", make_error(ErrorCode::invalid_request, "must not be 0"));
    }
    if (!in_range(s.protocol, 0, max_protocol)) {
        return at_field("protocol", out_of_range(0, max_protocol));
    }
    for (const auto& row : socket_option_table) {
        if (auto problem = option_value_problem(row, s.options)) {
            return at_field("options." + std::string(row.name), std::move(*problem));
        }
    }
    if (s.bind) {
        if (auto ok = check_address(s.family, *s.bind); !ok) {
            return at_field("bind", std::move(ok).error());
        }
    }
    if (s.listen && !in_range(*s.listen, 0, max_listen_backlog)) {
        return at_field("listen", out_of_range(0, max_listen_backlog));
    }
    if (s.connect) {
        if (s.family == AF_PACKET) {
            return at_field("connect",
                            make_error(ErrorCode::unsupported, "packet sockets cannot connect"));
        }
        if (auto ok = check_address(s.family, *s.connect); !ok) {
            return at_field("connect", std::move(ok).error());
        }
    }
    if (s.listen && s.connect) {
        return at_field({}, make_error(ErrorCode::invalid_request,
                                       "\"listen\" and \"connect\" exclude each other"));
    }
    constexpr auto max_count = static_cast<std::int64_t>(max_fds_per_message);
    if (!in_range(s.count, 1, max_count)) {
        return at_field("count", out_of_range(1, max_count));
    }
    return std::nullopt;
}

} // namespace nsbroker::proto
