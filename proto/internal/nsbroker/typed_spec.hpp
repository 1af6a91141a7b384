// A SocketSpec built from typed values and checked whole: what the JSON
// codec and the D-Bus front end share, so that a spec means the same, and is
// refused with the same words, whichever way it arrived.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "nsbroker/error.hpp"
#include "nsbroker/protocol.hpp"

namespace nsbroker::proto {

// The numbers a spec's fields take; options take what socket_option_table says.
inline constexpr int max_family = 255;
inline constexpr int max_type = 15;
inline constexpr int max_protocol = 65535;
inline constexpr int max_listen_backlog = 65535;

// A value of a kind no field takes, by the words an error uses for it
// ("null", "a number" for a fraction, "an array").
struct OtherValue {
    std::string description;
};

// A value as a message carried it, before it is known to fit where it goes.
using TypedValue = std::variant<bool, std::int64_t, std::uint64_t, std::string, OtherValue>;

// The value as a boolean, an integer from min to max, or a string; the error
// says what was expected and what came.
Result<bool> boolean_value(const TypedValue& value);
Result<std::int64_t> integer_value(const TypedValue& value, std::int64_t min, std::int64_t max);
Result<std::string> string_value(const TypedValue& value);

// What is wrong and where: the field's path ("bind", "options.mark"), empty
// when the whole is at fault.
struct FieldError {
    std::string field;
    Error error;

    // The error with the field's path, under outer when given, in front of
    // the message: "options.mark: out of range (0 to 4294967295)".
    [[nodiscard]] Error at(std::string_view outer) const;
};

// Sets the option called name to value. Its path is relative to the
// options: an unknown name is unsupported, with an empty path (the options
// are at fault); a value that does not fit is invalid_request, at the name.
[[nodiscard]] std::optional<FieldError>
set_socket_option(SocketOptions& options, std::string_view name, const TypedValue& value);

// The first thing wrong with a spec, its fields taken in the order the
// protocol lists them: family and type set and in range, the protocol in
// range, each option's value, the bind and connect addresses for the family,
// the listen backlog, listen and connect not both, packet sockets not
// connecting, and a count from 1 to 253. Nothing when the spec is whole.
[[nodiscard]] std::optional<FieldError> check_socket_spec(const SocketSpec& spec);

} // namespace nsbroker::proto
