// Parsing and formatting of the protocol's socket address strings.
#include "nsbroker/address.hpp"

#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <charconv>
#include <cstring>

namespace nsbroker::proto {

namespace {

template <typename T>
bool parse_number(std::string_view text, T& out, int base = 10) {
    if (text.empty()) {
        return false;
    }
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out, base);
    return ec == std::errc{} && end == text.data() + text.size();
}

bool parse_port(std::string_view text, std::uint16_t& port) {
    return parse_number(text, port);
}

Error bad(std::string_view family, std::string_view text, std::string_view expected) {
    return make_error(ErrorCode::invalid_request, std::string("invalid ") + std::string(family) +
                                                      " address \"" + std::string(text) +
                                                      "\": expected " + std::string(expected));
}

Result<SocketAddress> parse_inet(std::string_view text) {
    auto colon = text.rfind(':');
    std::uint16_t port = 0;
    if (colon == std::string_view::npos || !parse_port(text.substr(colon + 1), port)) {
        return bad("inet", text, "ADDR:PORT");
    }
    std::string host(text.substr(0, colon));
    SocketAddress a;
    auto* sin = reinterpret_cast<sockaddr_in*>(&a.storage);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    if (host.empty()) {
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (::inet_pton(AF_INET, host.c_str(), &sin->sin_addr) != 1) {
        return bad("inet", text, "an IPv4 address, as in 127.0.0.1:8080");
    }
    a.length = sizeof(sockaddr_in);
    return a;
}

Result<SocketAddress> parse_inet6(std::string_view text) {
    if (text.empty() || text.front() != '[') {
        return bad("inet6", text, "[ADDR]:PORT");
    }
    auto close = text.find(']');
    std::uint16_t port = 0;
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':' ||
        !parse_port(text.substr(close + 2), port)) {
        return bad("inet6", text, "[ADDR]:PORT");
    }
    std::string host(text.substr(1, close - 1));
    std::uint32_t scope = 0;
    if (auto pct = host.find('%'); pct != std::string::npos) {
        if (!parse_number(std::string_view(host).substr(pct + 1), scope)) {
            return bad("inet6", text, "a numeric scope id after '%'");
        }
        host.resize(pct);
    }
    SocketAddress a;
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    sin6->sin6_scope_id = scope;
    if (host.empty()) {
        sin6->sin6_addr = in6addr_any;
    } else if (::inet_pton(AF_INET6, host.c_str(), &sin6->sin6_addr) != 1) {
        return bad("inet6", text, "an IPv6 address, as in [::1]:8080");
    }
    a.length = sizeof(sockaddr_in6);
    return a;
}

Result<SocketAddress> parse_unix(std::string_view text) {
    SocketAddress a;
    auto* sun = reinterpret_cast<sockaddr_un*>(&a.storage);
    sun->sun_family = AF_UNIX;
    if (text.empty()) {
        return bad("unix", text, "a path or @name");
    }
    bool abstract = text.front() == '@';
    // A path needs its terminating NUL; an abstract name does not.
    std::size_t room = sizeof(sun->sun_path) - (abstract ? 0 : 1);
    if (text.size() > room) {
        return bad("unix", text, "at most 107 bytes");
    }
    if (text.find('\0') != std::string_view::npos) {
        return bad("unix", text, "no NUL bytes");
    }
    std::memcpy(sun->sun_path, text.data(), text.size());
    if (abstract) {
        sun->sun_path[0] = '\0';
        a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + text.size());
    } else {
        a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + text.size() + 1);
    }
    return a;
}

Result<SocketAddress> parse_netlink(std::string_view text) {
    std::uint32_t pid = 0;
    std::uint32_t groups = 0;
    auto slash = text.find('/');
    std::string_view pid_text = text.substr(0, slash);
    if (!parse_number(pid_text, pid)) {
        return bad("netlink", text, "PID or PID/GROUPS");
    }
    if (slash != std::string_view::npos) {
        std::string_view g = text.substr(slash + 1);
        bool ok =
            g.starts_with("0x") ? parse_number(g.substr(2), groups, 16) : parse_number(g, groups);
        if (!ok) {
            return bad("netlink", text, "PID/GROUPS with GROUPS a number");
        }
    }
    SocketAddress a;
    auto* snl = reinterpret_cast<sockaddr_nl*>(&a.storage);
    snl->nl_family = AF_NETLINK;
    snl->nl_pid = pid;
    snl->nl_groups = groups;
    a.length = sizeof(sockaddr_nl);
    return a;
}

} // namespace

Result<SocketAddress> parse_address(int family, std::string_view text) {
    switch (family) {
    case AF_INET:
        return parse_inet(text);
    case AF_INET6:
        return parse_inet6(text);
    case AF_UNIX:
        return parse_unix(text);
    case AF_NETLINK:
        return parse_netlink(text);
    default:
        return make_error(ErrorCode::unsupported,
                          "addresses of family " + std::to_string(family) + " are not supported");
    }
}

Result<void> check_address(int family, std::string_view text) {
    if (family == AF_PACKET) {
        if (text.empty() || text.size() >= IFNAMSIZ || text.find('/') != std::string_view::npos ||
            text.find('\0') != std::string_view::npos) {
            return bad("packet", text, "an interface name");
        }
        return {};
    }
    auto parsed = parse_address(family, text);
    if (!parsed) {
        return std::move(parsed).error();
    }
    return {};
}

std::optional<std::uint16_t> inet_port(int family, std::string_view text) {
    if (family != AF_INET && family != AF_INET6) {
        return std::nullopt;
    }
    auto address = parse_address(family, text);
    if (!address) {
        return std::nullopt;
    }
    const auto* sa = address->get();
    return ntohs(sa->sa_family == AF_INET ? reinterpret_cast<const sockaddr_in*>(sa)->sin_port
                                          : reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port);
}

std::string format_address(const sockaddr* address, socklen_t length) {
    if (length < static_cast<socklen_t>(sizeof(sa_family_t))) {
        return {};
    }
    char host[INET6_ADDRSTRLEN] = {};
    switch (address->sa_family) {
    case AF_INET: {
        const auto* sin = reinterpret_cast<const sockaddr_in*>(address);
        ::inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        return std::string(host) + ":" + std::to_string(ntohs(sin->sin_port));
    }
    case AF_INET6: {
        const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(address);
        ::inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        std::string scope = sin6->sin6_scope_id ? "%" + std::to_string(sin6->sin6_scope_id) : "";
        return "[" + std::string(host) + scope + "]:" + std::to_string(ntohs(sin6->sin6_port));
    }
    case AF_UNIX: {
        const auto* sun = reinterpret_cast<const sockaddr_un*>(address);
        std::size_t n = static_cast<std::size_t>(length) - offsetof(sockaddr_un, sun_path);
        if (n == 0) {
            return {};
        }
        if (sun->sun_path[0] == '\0') {
            return "@" + std::string(sun->sun_path + 1, n - 1);
        }
        return std::string(sun->sun_path, strnlen(sun->sun_path, n));
    }
    case AF_NETLINK: {
        const auto* snl = reinterpret_cast<const sockaddr_nl*>(address);
        std::string text = std::to_string(snl->nl_pid);
        if (snl->nl_groups != 0) {
            text += "/" + std::to_string(snl->nl_groups);
        }
        return text;
    }
    case AF_PACKET: {
        const auto* sll = reinterpret_cast<const sockaddr_ll*>(address);
        char name[IF_NAMESIZE] = {};
        if (sll->sll_ifindex != 0 &&
            ::if_indextoname(static_cast<unsigned>(sll->sll_ifindex), name)) {
            return name;
        }
        return sll->sll_ifindex ? std::to_string(sll->sll_ifindex) : std::string{};
    }
    default:
        return {};
    }
}

} // namespace nsbroker::proto
