// The socket options a spec may ask for, one row each: its name in
// messages, the SocketOptions member that holds it, the values it takes, the
// setsockopt(2) that applies it and the grant it needs from a caller other
// than root. The codec, the daemon's policy and its workers read options
// only through this table; proto/PROTOCOL.md documents it and a unit test
// holds the two together.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

#include "nsbroker/protocol.hpp"
#include "nsbroker/worker_protocol.hpp"

namespace nsbroker::proto {

// Where a row's value is kept. The member's type is the kind of value the
// option takes: a boolean, an integer (from min to max), or a string, which
// is an interface name.
using OptionField =
    std::variant<std::optional<bool> SocketOptions::*, std::optional<int> SocketOptions::*,
                 std::optional<std::uint32_t> SocketOptions::*,
                 std::optional<std::string> SocketOptions::*>;

// The level and name setsockopt(2) takes.
struct SockoptName {
    int level = 0;
    int name = 0;
};

// The longest interface name, IFNAMSIZ less its NUL.
inline constexpr std::size_t max_interface_name_length = 15;

struct SocketOptionRow {
    std::string_view name;
    OptionField field;
    SockoptName sockopt;
    std::int64_t min = 0; // integers only
    std::int64_t max = 0;
    // Where an inet6 socket knows the option by another name.
    std::optional<SockoptName> inet6_sockopt = std::nullopt;
    // What a caller other than root needs granted to set it; a boolean set
    // to false asks for nothing.
    std::optional<Grant> grant = std::nullopt;

    [[nodiscard]] constexpr SockoptName sockopt_for(int family) const {
        return family == AF_INET6 && inet6_sockopt ? *inet6_sockopt : sockopt;
    }
};

// In the order the worker applies them: a socket's plain options, then each
// privileged one under the capability its grant lends, then buffer sizes.
inline constexpr SocketOptionRow socket_option_table[] = {
    // Booleans anyone may set: name, member, setsockopt level and name.
    {"reuseaddr", &SocketOptions::reuseaddr, {SOL_SOCKET, SO_REUSEADDR}},
    {"reuseport", &SocketOptions::reuseport, {SOL_SOCKET, SO_REUSEPORT}},
    {"ipv6_only", &SocketOptions::ipv6_only, {IPPROTO_IPV6, IPV6_V6ONLY}},
    {"keepalive", &SocketOptions::keepalive, {SOL_SOCKET, SO_KEEPALIVE}},
    {"nodelay", &SocketOptions::nodelay, {IPPROTO_TCP, TCP_NODELAY}},
    {"broadcast", &SocketOptions::broadcast, {SOL_SOCKET, SO_BROADCAST}},
    {.name = "bindtodevice",
     .field = &SocketOptions::bindtodevice,
     .sockopt = {SOL_SOCKET, SO_BINDTODEVICE},
     .grant = Grant::bindtodevice},
    {.name = "mark",
     .field = &SocketOptions::mark,
     .sockopt = {SOL_SOCKET, SO_MARK},
     .min = 0,
     .max = UINT32_MAX,
     .grant = Grant::mark},
    {.name = "freebind",
     .field = &SocketOptions::freebind,
     .sockopt = {IPPROTO_IP, IP_FREEBIND},
     .inet6_sockopt = SockoptName{IPPROTO_IPV6, IPV6_FREEBIND},
     .grant = Grant::transparent},
    {.name = "transparent",
     .field = &SocketOptions::transparent,
     .sockopt = {IPPROTO_IP, IP_TRANSPARENT},
     .inet6_sockopt = SockoptName{IPPROTO_IPV6, IPV6_TRANSPARENT},
     .grant = Grant::transparent},
    {.name = "rcvbuf",
     .field = &SocketOptions::rcvbuf,
     .sockopt = {SOL_SOCKET, SO_RCVBUF},
     .min = 0,
     .max = INT32_MAX / 2},
    {.name = "sndbuf",
     .field = &SocketOptions::sndbuf,
     .sockopt = {SOL_SOCKET, SO_SNDBUF},
     .min = 0,
     .max = INT32_MAX / 2},
};

// The row called name, or nullptr.
constexpr const SocketOptionRow* find_socket_option(std::string_view name) noexcept {
    for (const auto& row : socket_option_table) {
        if (row.name == name) {
            return &row;
        }
    }
    return nullptr;
}

// Whether options gives this row a value.
constexpr bool option_is_set(const SocketOptionRow& row, const SocketOptions& options) noexcept {
    return std::visit([&options](auto member) { return (options.*member).has_value(); }, row.field);
}

// Whether options asks for what the row's grant covers.
constexpr bool option_needs_grant(const SocketOptionRow& row,
                                  const SocketOptions& options) noexcept {
    if (!row.grant) {
        return false;
    }
    return std::visit(
        [&options](auto member) {
            const auto& value = options.*member;
            if constexpr (std::is_same_v<std::decay_t<decltype(value)>, std::optional<bool>>) {
                return value.value_or(false);
            } else {
                return value.has_value();
            }
        },
        row.field);
}

} // namespace nsbroker::proto
