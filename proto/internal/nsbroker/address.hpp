// Socket addresses as the protocol writes them, and their sockaddr form.
//   inet     "ADDR:PORT"       e.g. "127.0.0.1:8080", "0.0.0.0:0"
//   inet6    "[ADDR]:PORT"     e.g. "[::1]:8080", "[fe80::1%2]:53"
//   unix     "PATH" or "@NAME" (abstract)
//   netlink  "PID" or "PID/GROUPS" (GROUPS decimal or 0x-hex)
//   packet   "IFNAME" (bind only; resolved inside the namespace)
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "nsbroker/error.hpp"

namespace nsbroker::proto {

struct SocketAddress {
    sockaddr_storage storage{};
    socklen_t length = 0;

    [[nodiscard]] const sockaddr* get() const {
        return reinterpret_cast<const sockaddr*>(&storage);
    }
};

// Parses an address of the given family. AF_PACKET is refused here: its
// interface name only means something inside the namespace.
Result<SocketAddress> parse_address(int family, std::string_view text);

// Checks an address without building it; AF_PACKET checks the interface name.
Result<void> check_address(int family, std::string_view text);

// The port of an inet or inet6 address; nothing for other families or for
// text that does not parse.
std::optional<std::uint16_t> inet_port(int family, std::string_view text);

// The protocol's spelling of a kernel address ("" for an unbound socket).
std::string format_address(const sockaddr* address, socklen_t length);

} // namespace nsbroker::proto
