// The command line's socket shorthand ("tcp-listen:8080") as SocketSpecs.
#include <netinet/in.h>
#include <sys/socket.h>

#include "nsbroker/address.hpp"
#include "nsbroker/client.hpp"
#include "nsbroker/codec.hpp"

namespace nsbroker {

namespace {

constexpr int default_backlog = 128;

Error bad_spec(std::string_view text, std::string_view why) {
    return make_error(ErrorCode::invalid_request,
                      "socket spec \"" + std::string(text) + "\": " + std::string(why));
}

// "[ADDR:]PORT" for IPv4, "[[ADDR]:]PORT" for IPv6, as a full protocol address.
std::string with_default_host(int family, std::string_view where) {
    bool has_host =
        family == AF_INET ? where.find(':') != std::string_view::npos : where.starts_with("[");
    if (has_host) {
        return std::string(where);
    }
    return (family == AF_INET ? "0.0.0.0:" : "[::]:") + std::string(where);
}

// The spec, once its bind or connect address is known to be well formed.
Result<SocketSpec> checked(SocketSpec s, std::string_view text) {
    const std::string& address = s.bind ? *s.bind : *s.connect;
    if (auto ok = proto::check_address(s.family, address); !ok) {
        return bad_spec(text, ok.error().message);
    }
    return s;
}

} // namespace

Result<SocketSpec> parse_socket_spec(std::string_view text) {
    auto colon = text.find(':');
    if (colon == std::string_view::npos || colon + 1 == text.size()) {
        return bad_spec(text, "expected KIND:ARGUMENT, as in tcp-listen:8080");
    }
    std::string_view kind = text.substr(0, colon);
    std::string_view arg = text.substr(colon + 1);
    SocketSpec s;

    if (kind == "tcp-listen" || kind == "tcp6-listen" || kind == "udp" || kind == "udp6") {
        bool v6 = kind == "tcp6-listen" || kind == "udp6";
        bool tcp = kind.starts_with("tcp");
        s.family = v6 ? AF_INET6 : AF_INET;
        s.type = tcp ? SOCK_STREAM : SOCK_DGRAM;
        s.protocol = tcp ? IPPROTO_TCP : IPPROTO_UDP;
        s.bind = with_default_host(s.family, arg);
        if (tcp) {
            s.options.reuseaddr = true;
            s.listen = default_backlog;
        }
        return checked(std::move(s), text);
    }
    if (kind == "tcp-connect" || kind == "tcp6-connect") {
        s.family = kind == "tcp6-connect" || arg.starts_with("[") ? AF_INET6 : AF_INET;
        s.type = SOCK_STREAM;
        s.protocol = IPPROTO_TCP;
        s.connect = std::string(arg);
        return checked(std::move(s), text);
    }
    if (kind == "unix-listen") {
        s.family = AF_UNIX;
        s.type = SOCK_STREAM;
        s.bind = std::string(arg);
        s.listen = default_backlog;
        return checked(std::move(s), text);
    }
    int family = 0;
    int type = SOCK_RAW;
    if (kind == "netlink") {
        family = AF_NETLINK;
    } else if (kind == "raw") {
        family = AF_INET;
    } else if (kind == "raw6") {
        family = AF_INET6;
    } else if (kind == "packet") {
        family = AF_PACKET;
    } else {
        return bad_spec(text, "unknown kind \"" + std::string(kind) +
                                  "\" (tcp-listen, tcp6-listen, udp, udp6, tcp-connect, "
                                  "tcp6-connect, unix-listen, netlink, raw, raw6, packet)");
    }
    s.family = family;
    s.type = type;
    if (auto named = proto::protocol_from_name(family, arg)) {
        s.protocol = *named;
        return s;
    }
    int number = 0;
    for (char ch : arg) {
        if (ch < '0' || ch > '9' || number > 65535) {
            return bad_spec(text, "unknown protocol \"" + std::string(arg) + "\"");
        }
        number = number * 10 + (ch - '0');
    }
    if (number > 65535) {
        return bad_spec(text, "protocol out of range");
    }
    s.protocol = number;
    return s;
}

} // namespace nsbroker
