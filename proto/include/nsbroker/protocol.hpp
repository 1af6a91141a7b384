// The typed form of every message nsbroker exchanges: requests and replies
// between clients and nsbrokerd, and jobs between nsbrokerd and its workers.
// proto/PROTOCOL.md is the specification; codec.hpp turns these into JSON.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "nsbroker/error.hpp"

namespace nsbroker::proto {

inline constexpr int protocol_version = 1;
// Largest message in either direction, in bytes.
inline constexpr std::size_t max_message_size = 64 * 1024;
// SCM_MAX_FD: the kernel's limit of descriptors in one message.
inline constexpr std::size_t max_fds_per_message = 253;
inline constexpr std::size_t max_netns_name_length = 255;
// PID_MAX_LIMIT of linux/threads.h: no process id is larger.
inline constexpr pid_t pid_max_limit = 4194304;

enum class Op { hello, ping, socket, namespaces, stats };

std::string_view to_string(Op op) noexcept;

// Which network namespace a request means.
struct NetnsRef {
    enum class Kind { name, path, pid, fd };
    Kind kind = Kind::name;
    std::string text; // the name or the path
    pid_t pid = 0;
    int fd_index = 0; // index into the fds sent with the request (always 0)

    static NetnsRef by_name(std::string n) { return {Kind::name, std::move(n), 0, 0}; }
    static NetnsRef by_path(std::string p) { return {Kind::path, std::move(p), 0, 0}; }
    static NetnsRef by_pid(pid_t p) { return {Kind::pid, {}, p, 0}; }
    static NetnsRef by_fd() { return {Kind::fd, {}, 0, 0}; }

    // "name:qrouter-1", "path:/proc/1/ns/net", "pid:42", "fd".
    [[nodiscard]] std::string describe() const;
};

// Socket options applied by the worker before a socket is handed over.
// Each member has its row in proto/src/socket_option_table.hpp, through
// which the codec, the policy and the worker read it.
struct SocketOptions {
    std::optional<bool> reuseaddr, reuseport, ipv6_only, keepalive, nodelay, broadcast, freebind,
        transparent;
    std::optional<std::string> bindtodevice;
    std::optional<std::uint32_t> mark;
    std::optional<int> rcvbuf, sndbuf;

    bool operator==(const SocketOptions&) const = default;
};

// One kind of socket: what socket(2) gets, what is done to it before it is
// handed over, and how many identical ones to make.
struct SocketSpec {
    int family = 0;   // AF_*
    int type = 0;     // SOCK_* without flags
    int protocol = 0; // host byte order, also for AF_PACKET
    bool nonblock = false;
    SocketOptions options;
    std::optional<std::string> bind;
    std::optional<int> listen; // backlog
    std::optional<std::string> connect;
    unsigned count = 1;

    bool operator==(const SocketSpec&) const = default;
};

struct Request {
    std::uint64_t id = 0;
    Op op = Op::ping;
    std::optional<NetnsRef> netns; // socket only
    std::vector<SocketSpec> specs; // socket only; total count 1..253
};

// Total number of sockets the specs ask for.
std::size_t socket_count(const std::vector<SocketSpec>& specs) noexcept;

struct HelloReply {
    int protocol = protocol_version;
    std::string daemon_version;
    std::vector<std::string> features;
};

struct PongReply {};

struct SocketInfo {
    int family = 0;
    int type = 0;
    int protocol = 0;
    std::string local; // local address after bind/connect, "" when unbound
};

struct SocketReply {
    std::vector<SocketInfo> sockets; // in the order of the fds sent with the reply
};

struct NamespaceInfo {
    std::uint64_t dev = 0;
    std::uint64_t ino = 0;
    std::vector<std::string> names; // under /run/netns
    pid_t worker_pid = 0;           // 0: no worker
    std::string state;              // "idle" (no worker), "starting", "ready", "exiting"
    std::uint64_t requests = 0;
    std::uint64_t sockets = 0;
};

struct NamespacesReply {
    std::vector<NamespaceInfo> namespaces;
    bool truncated = false; // the list did not fit in one message
};

struct StatsReply {
    double uptime_seconds = 0;
    std::uint64_t requests = 0;
    std::uint64_t sockets = 0;
    std::map<std::string, std::uint64_t> errors; // by error code
    std::uint64_t clients = 0;
    std::uint64_t workers_spawned = 0;
    std::uint64_t workers_live = 0;
    std::uint64_t workers_exited = 0;
};

// Everything a reply can carry; Error when "ok" is false.
using ReplyBody =
    std::variant<Error, HelloReply, PongReply, SocketReply, NamespacesReply, StatsReply>;

struct Reply {
    std::optional<std::uint64_t> id; // absent when the request had no readable id
    ReplyBody body;
};

// Privileged kinds of socket that a policy rule grants by name (docs/POLICY.md).
// Each lets a worker hold one capability for exactly the step that needs it:
//   raw, packet    CAP_NET_RAW at socket(2) of an inet raw or a packet socket
//   bindtodevice   CAP_NET_RAW while setting SO_BINDTODEVICE
//   low_ports      CAP_NET_BIND_SERVICE at bind(2)
//   mark           CAP_NET_ADMIN while setting SO_MARK
//   transparent    CAP_NET_ADMIN while setting IP_TRANSPARENT or IP_FREEBIND
//   net_admin      CAP_NET_ADMIN at socket(2): netlink checks the capabilities
//                  of a socket's creator as well as of its sender, so only
//                  this grant lets a socket change the namespace
enum class Grant { raw, packet, low_ports, bindtodevice, mark, transparent, net_admin };

std::string_view to_string(Grant grant) noexcept;
std::optional<Grant> grant_from_name(std::string_view name) noexcept;
// Every grant, in the order above.
inline constexpr Grant all_grants[] = {Grant::raw,          Grant::packet, Grant::low_ports,
                                       Grant::bindtodevice, Grant::mark,   Grant::transparent,
                                       Grant::net_admin};

// Who a job's sockets are made for: the worker takes this effective uid, gid
// and supplementary groups while it makes them, so that the sockets carry the
// caller's identity (inode owner, SO_PEERCRED, the owner netfilter and
// SO_REUSEPORT see, ping_group_range) and never the daemon's.
struct JobCaller {
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;
    bool operator==(const JobCaller&) const = default;
};

// What a caller other than root may use: the rule that serves it and what
// that rule grants.
struct JobRestriction {
    std::string rule;
    std::vector<Grant> grants;
    [[nodiscard]] bool grants_kind(Grant g) const noexcept;
};

// nsbrokerd -> worker: make these sockets for this caller; the worker answers
// with a Reply carrying a SocketReply or an Error, and the fds.
struct WorkerJob {
    std::uint64_t id = 0;
    std::vector<SocketSpec> specs;
    JobCaller caller;
    // Absent for root, whose sockets are made with all of the worker's
    // network capabilities.
    std::optional<JobRestriction> restricted;
};

} // namespace nsbroker::proto
