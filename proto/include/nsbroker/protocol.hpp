// The typed form of the messages between clients and nsbrokerd: requests
// and replies. proto/PROTOCOL.md is the specification; the codec, private to
// nsbroker, turns these into JSON.
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
#include "nsbroker/export.hpp"

namespace nsbroker::proto {

inline constexpr int protocol_version = 1;
// Largest message in either direction, in bytes.
inline constexpr std::size_t max_message_size = 64 * 1024;
// SCM_MAX_FD: the kernel's limit of descriptors in one message.
inline constexpr std::size_t max_fds_per_message = 253;
inline constexpr std::size_t max_netns_name_length = 255;
// The most entries a `namespaces` request may ask for in one page.
inline constexpr unsigned max_namespaces_limit = 1000;
// PID_MAX_LIMIT of linux/threads.h: no process id is larger.
inline constexpr pid_t pid_max_limit = 4194304;

enum class Op { hello, ping, socket, namespaces, stats };

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
    [[nodiscard]] NSBROKER_PUBLIC std::string describe() const;
};

// Socket options applied by the worker before a socket is handed over.
// Each member has its row in proto/internal/nsbroker/socket_option_table.hpp, through
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

// Where a page of the `namespaces` listing ended. The listing is ordered by
// the namespaces' (dev, ino), which stay the same for as long as a namespace
// lives: the next page lists what comes after this key, so that namespaces
// made or deleted between pages move no other one across a page's edge.
// On the wire it is a string for clients to send back as they got it.
struct NamespacesCursor {
    std::uint64_t dev = 0;
    std::uint64_t ino = 0;
    // Set when the page ended inside the names of namespace (dev, ino), whose
    // entry alone did not fit in one message: the last of its names sent. The
    // next page goes on with that namespace's names after it.
    std::optional<std::string> name;

    bool operator==(const NamespacesCursor&) const = default;
};

struct Request {
    std::uint64_t id = 0;
    Op op = Op::ping;
    std::optional<NetnsRef> netns; // socket only
    std::vector<SocketSpec> specs; // socket only; total count 1..253
    // socket only, to nsbrokerd: asks for a direct channel to the namespace's
    // worker along with the sockets (see DirectChannel).
    bool channel = false;
    // namespaces only: the page after this cursor (the first page when
    // there is none), and at most this many entries in it (1 to
    // max_namespaces_limit; as many as fit in one message when there is none).
    std::optional<NamespacesCursor> cursor = std::nullopt;
    std::optional<unsigned> limit = std::nullopt;
};

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

// A direct channel to the worker of one namespace, granted with a socket
// reply to a request that asked for it; its descriptor is the last one the
// reply carries. Socket requests sent on it go straight to the worker, with
// no "netns": they are served in the namespace (dev, ino), under the rule and
// for the caller that the request granting it was served for. It closes when
// nsbrokerd revokes it; the caller then asks nsbrokerd again.
struct DirectChannel {
    std::uint64_t dev = 0;
    std::uint64_t ino = 0;
    bool operator==(const DirectChannel&) const = default;
};

struct SocketReply {
    std::vector<SocketInfo> sockets; // in the order of the fds sent with the reply
    std::optional<DirectChannel> channel;
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

// One page of the listing, in the order of (dev, ino). A namespace whose
// entry alone does not fit in one message is continued at the start of the
// next page, with the same dev and ino and the names after those sent.
struct NamespacesReply {
    std::vector<NamespaceInfo> namespaces;
    std::optional<NamespacesCursor> next_cursor = std::nullopt; // none on the last page
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

} // namespace nsbroker::proto
