// socket(2), options, bind, listen and connect for one spec at a time.
#include "workers/socket_factory.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "nsbroker/address.hpp"
#include "nsbroker/codec.hpp"

namespace nsbroker::daemon {

using proto::SocketSpec;

namespace {

Error kernel_error(const std::string& step) {
    int err = errno;
    ErrorCode code =
        (err == EPERM || err == EACCES) ? ErrorCode::permission_denied : ErrorCode::kernel;
    return make_error(code, step + ": " + std::strerror(err), err);
}

Result<void> set_int(int fd, int level, int name, int value, const char* label) {
    if (::setsockopt(fd, level, name, &value, sizeof(value)) < 0) {
        return kernel_error(std::string("setsockopt ") + label);
    }
    return {};
}

// What each step of making one socket may hold.
struct StepCapabilities {
    WorkerCapabilities create;       // socket(2), and listen and connect
    WorkerCapabilities bindtodevice; // SO_BINDTODEVICE
    WorkerCapabilities admin_option; // SO_MARK, IP_TRANSPARENT, IP_FREEBIND
    WorkerCapabilities bind;         // bind(2)
};

StepCapabilities step_capabilities(const SocketSpec& s,
                                   const std::optional<proto::JobRestriction>& restricted) {
    if (!restricted) {
        WorkerCapabilities all;
        return {all, all, all, all};
    }
    using proto::Grant;
    auto grants = [&restricted](Grant g) {
        return restricted->grants_kind(g);
    };
    const bool inet_raw = (s.family == AF_INET || s.family == AF_INET6) && s.type == SOCK_RAW;
    WorkerCapabilities create{(inet_raw && grants(Grant::raw)) ||
                                  (s.family == AF_PACKET && grants(Grant::packet)),
                              false, grants(Grant::net_admin)};
    StepCapabilities steps{create, create, create, create};
    steps.bindtodevice.net_raw = create.net_raw || grants(Grant::bindtodevice);
    // mark and transparent each raise CAP_NET_ADMIN only for their own option.
    const bool mark = s.options.mark && grants(Grant::mark);
    const bool transparent =
        (s.options.transparent.value_or(false) || s.options.freebind.value_or(false)) &&
        grants(Grant::transparent);
    steps.admin_option.net_admin = create.net_admin || mark || transparent;
    steps.bind.net_bind_service = grants(Grant::low_ports);
    return steps;
}

Result<void> apply_options(int fd, const SocketSpec& s, const StepCapabilities& steps,
                           const UseCapabilities& use) {
    const auto& o = s.options;
    bool v6 = s.family == AF_INET6;
    struct BoolOption {
        const std::optional<bool>& value;
        int level;
        int name;
        const char* label;
    };
    const BoolOption bools[] = {
        {o.reuseaddr, SOL_SOCKET, SO_REUSEADDR, "reuseaddr"},
        {o.reuseport, SOL_SOCKET, SO_REUSEPORT, "reuseport"},
        {o.ipv6_only, IPPROTO_IPV6, IPV6_V6ONLY, "ipv6_only"},
        {o.keepalive, SOL_SOCKET, SO_KEEPALIVE, "keepalive"},
        {o.nodelay, IPPROTO_TCP, TCP_NODELAY, "nodelay"},
        {o.broadcast, SOL_SOCKET, SO_BROADCAST, "broadcast"},
    };
    for (const auto& b : bools) {
        if (b.value) {
            if (auto r = set_int(fd, b.level, b.name, *b.value ? 1 : 0, b.label); !r) {
                return r;
            }
        }
    }
    if (o.bindtodevice) {
        if (auto held = use(steps.bindtodevice); !held) {
            return held;
        }
        const auto& dev = *o.bindtodevice;
        if (::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev.c_str(),
                         static_cast<socklen_t>(dev.size() + 1)) < 0) {
            return kernel_error("setsockopt bindtodevice " + dev);
        }
    }
    if (o.mark || o.transparent || o.freebind) {
        if (auto held = use(steps.admin_option); !held) {
            return held;
        }
    }
    if (o.mark) {
        if (auto r = set_int(fd, SOL_SOCKET, SO_MARK, static_cast<int>(*o.mark), "mark"); !r) {
            return r;
        }
    }
    const BoolOption admin_bools[] = {
        {o.freebind, v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_FREEBIND : IP_FREEBIND, "freebind"},
        {o.transparent, v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT,
         "transparent"},
    };
    for (const auto& b : admin_bools) {
        if (b.value) {
            if (auto r = set_int(fd, b.level, b.name, *b.value ? 1 : 0, b.label); !r) {
                return r;
            }
        }
    }
    if (o.rcvbuf) {
        if (auto r = set_int(fd, SOL_SOCKET, SO_RCVBUF, *o.rcvbuf, "rcvbuf"); !r) {
            return r;
        }
    }
    if (o.sndbuf) {
        if (auto r = set_int(fd, SOL_SOCKET, SO_SNDBUF, *o.sndbuf, "sndbuf"); !r) {
            return r;
        }
    }
    return {};
}

Result<proto::SocketAddress> address_for(const SocketSpec& s, const std::string& text) {
    if (s.family != AF_PACKET) {
        return proto::parse_address(s.family, text);
    }
    unsigned index = ::if_nametoindex(text.c_str());
    if (index == 0) {
        return make_error(ErrorCode::not_found, "no interface \"" + text + "\" in the namespace",
                          errno);
    }
    proto::SocketAddress a;
    auto* sll = reinterpret_cast<sockaddr_ll*>(&a.storage);
    sll->sll_family = AF_PACKET;
    sll->sll_protocol = htons(static_cast<std::uint16_t>(s.protocol));
    sll->sll_ifindex = static_cast<int>(index);
    a.length = sizeof(sockaddr_ll);
    return a;
}

// The protocol the kernel picks for protocol 0 where it is fixed by family
// and type, so that the reply names it without another system call.
int effective_protocol(const SocketSpec& s) {
    if (s.protocol != 0 || (s.family != AF_INET && s.family != AF_INET6)) {
        return s.protocol;
    }
    switch (s.type) {
    case SOCK_STREAM:
        return IPPROTO_TCP;
    case SOCK_DGRAM:
        return IPPROTO_UDP;
    default:
        return 0;
    }
}

Result<std::pair<UniqueFd, proto::SocketInfo>>
make_socket(const SocketSpec& s, const std::optional<proto::JobRestriction>& restricted,
            const UseCapabilities& use) {
    const StepCapabilities steps = step_capabilities(s, restricted);
    if (auto held = use(steps.create); !held) {
        return std::move(held).error();
    }
    // AF_PACKET takes its protocol (an EtherType) in network byte order.
    int protocol =
        s.family == AF_PACKET ? htons(static_cast<std::uint16_t>(s.protocol)) : s.protocol;
    bool connecting = s.connect.has_value();
    int type = s.type | SOCK_CLOEXEC | ((s.nonblock || connecting) ? SOCK_NONBLOCK : 0);
    UniqueFd fd{::socket(s.family, type, protocol)};
    if (!fd) {
        return kernel_error("socket(" + proto::family_name(s.family) + ", " +
                            proto::type_name(s.type) + ", " + std::to_string(s.protocol) + ")");
    }
    if (auto r = apply_options(fd.get(), s, steps, use); !r) {
        return std::move(r).error();
    }
    if (s.bind) {
        auto address = address_for(s, *s.bind);
        if (!address) {
            return std::move(address).error();
        }
        if (auto held = use(steps.bind); !held) {
            return std::move(held).error();
        }
        if (::bind(fd.get(), address->get(), address->length) < 0) {
            return kernel_error("bind " + *s.bind);
        }
    }
    // Back to what the socket was made with, for listen and connect.
    if (auto held = use(steps.create); !held) {
        return std::move(held).error();
    }
    if (s.listen) {
        if (::listen(fd.get(), *s.listen) < 0) {
            return kernel_error("listen");
        }
    }
    if (connecting) {
        auto address = address_for(s, *s.connect);
        if (!address) {
            return std::move(address).error();
        }
        if (::connect(fd.get(), address->get(), address->length) < 0 && errno != EINPROGRESS) {
            return kernel_error("connect " + *s.connect);
        }
        if (!s.nonblock) {
            int flags = ::fcntl(fd.get(), F_GETFL);
            if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) < 0) {
                return kernel_error("fcntl");
            }
        }
    }
    proto::SocketInfo info{s.family, s.type, effective_protocol(s), {}};
    // An unbound socket has no address worth a system call.
    if (s.bind || s.listen || connecting) {
        sockaddr_storage local{};
        socklen_t length = sizeof(local);
        if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &length) == 0) {
            info.local = proto::format_address(reinterpret_cast<sockaddr*>(&local), length);
        }
    }
    return std::pair{std::move(fd), std::move(info)};
}

} // namespace

Result<MadeSockets> make_sockets(const std::vector<SocketSpec>& specs,
                                 const std::optional<proto::JobRestriction>& restricted,
                                 const UseCapabilities& use) {
    MadeSockets made;
    for (std::size_t i = 0; i < specs.size(); ++i) {
        for (unsigned n = 0; n < specs[i].count; ++n) {
            auto one = make_socket(specs[i], restricted, use);
            if (!one) {
                // A step that failed may have left its capability raised.
                (void)use(WorkerCapabilities{false, false, false});
                Error e = std::move(one).error();
                e.message = "sockets[" + std::to_string(i) + "]: " + e.message;
                return e;
            }
            made.fds.push_back(std::move(one->first));
            made.reply.sockets.push_back(std::move(one->second));
        }
    }
    return made;
}

} // namespace nsbroker::daemon
