// socket(2), options, bind, listen and connect for one spec at a time.
#include "workers/socket_factory.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <type_traits>

#include "nsbroker/address.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/socket_option_table.hpp"

namespace nsbroker::daemon {

using proto::SocketSpec;

namespace {

Error kernel_error(const std::string& step) {
    int err = errno;
    ErrorCode code =
        (err == EPERM || err == EACCES) ? ErrorCode::permission_denied : ErrorCode::kernel;
    return make_error(code, step + ": " + std::strerror(err), err);
}

Result<void> set_int(int fd, proto::SockoptName option, int value, std::string_view label) {
    if (::setsockopt(fd, option.level, option.name, &value, sizeof(value)) < 0) {
        return kernel_error("setsockopt " + std::string(label));
    }
    return {};
}

using proto::Grant;

// The capability a grant lends, for the step it covers.
WorkerCapabilities lent_by(Grant grant) {
    switch (grant) {
    case Grant::raw:
    case Grant::packet:
    case Grant::bindtodevice:
        return {true, false, false};
    case Grant::low_ports:
        return {false, true, false};
    case Grant::mark:
    case Grant::transparent:
    case Grant::net_admin:
        return {false, false, true};
    }
    return {false, false, false};
}

WorkerCapabilities either(const WorkerCapabilities& a, const WorkerCapabilities& b) {
    return {a.net_raw || b.net_raw, a.net_bind_service || b.net_bind_service,
            a.net_admin || b.net_admin};
}

// What each step of making one socket may hold: everything for root,
// otherwise only what the caller's grants lend to that step.
class StepCapabilities {
  public:
    StepCapabilities(const SocketSpec& s, const std::optional<proto::JobRestriction>& restricted)
        : spec_(s), restricted_(restricted) {
        if (!restricted) {
            return;
        }
        const bool inet_raw = (s.family == AF_INET || s.family == AF_INET6) && s.type == SOCK_RAW;
        create_ = {(inet_raw && grants(Grant::raw)) ||
                       (s.family == AF_PACKET && grants(Grant::packet)),
                   false, grants(Grant::net_admin)};
        bind_ = create_;
        bind_.net_bind_service = grants(Grant::low_ports);
    }

    // socket(2), listen and connect.
    [[nodiscard]] const WorkerCapabilities& create() const { return create_; }
    // bind(2).
    [[nodiscard]] const WorkerCapabilities& bind() const { return bind_; }

    // Setting the options whose grants lend what grant lends: the socket's
    // own capabilities, and that one where an option that asks for it is
    // granted. Options that share a capability share the step.
    [[nodiscard]] WorkerCapabilities option(Grant grant) const {
        if (!restricted_) {
            return {};
        }
        const WorkerCapabilities lent = lent_by(grant);
        WorkerCapabilities held = create_;
        for (const auto& row : proto::socket_option_table) {
            if (row.grant && lent_by(*row.grant) == lent &&
                proto::option_needs_grant(row, spec_.options) && grants(*row.grant)) {
                held = either(held, lent);
            }
        }
        return held;
    }

  private:
    [[nodiscard]] bool grants(Grant g) const { return restricted_->grants_kind(g); }

    const SocketSpec& spec_;
    const std::optional<proto::JobRestriction>& restricted_;
    WorkerCapabilities create_;
    WorkerCapabilities bind_;
};

Result<void> set_option(int fd, const proto::SocketOptionRow& row, const SocketSpec& s) {
    const proto::SockoptName where = row.sockopt_for(s.family);
    return std::visit(
        [&](auto member) -> Result<void> {
            const auto& value = *(s.options.*member);
            using Value = std::decay_t<decltype(value)>;
            if constexpr (std::is_same_v<Value, std::string>) {
                if (::setsockopt(fd, where.level, where.name, value.c_str(),
                                 static_cast<socklen_t>(value.size() + 1)) < 0) {
                    return kernel_error("setsockopt " + std::string(row.name) + " " + value);
                }
                return {};
            } else if constexpr (std::is_same_v<Value, bool>) {
                return set_int(fd, where, value ? 1 : 0, row.name);
            } else {
                return set_int(fd, where, static_cast<int>(value), row.name);
            }
        },
        row.field);
}

// In the table's order. An option a grant covers is set holding what its
// step may hold, raised once for a run of options that share it; the
// options no grant covers check no capability and are set under whichever
// step came before them.
Result<void> apply_options(int fd, const SocketSpec& s, const StepCapabilities& steps,
                           const UseCapabilities& use) {
    std::optional<WorkerCapabilities> step_lending; // none: the socket's own step
    for (const auto& row : proto::socket_option_table) {
        if (!proto::option_is_set(row, s.options)) {
            continue;
        }
        if (row.grant && lent_by(*row.grant) != step_lending) {
            step_lending = lent_by(*row.grant);
            if (auto held = use(steps.option(*row.grant)); !held) {
                return held;
            }
        }
        if (auto r = set_option(fd, row, s); !r) {
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
    const StepCapabilities steps(s, restricted);
    if (auto held = use(steps.create()); !held) {
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
        if (auto held = use(steps.bind()); !held) {
            return std::move(held).error();
        }
        if (::bind(fd.get(), address->get(), address->length) < 0) {
            return kernel_error("bind " + *s.bind);
        }
    }
    // Back to what the socket was made with, for listen and connect.
    if (auto held = use(steps.create()); !held) {
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
