// libnsbroker: sockets from other network namespaces, from any thread,
// without fork or setns.
//
//     auto client = nsbroker::Client::connect();          // NSBROKER_SOCKET or the default
//     auto sock = client->socket(nsbroker::Netns::name("blue"),
//                                *nsbroker::parse_socket_spec("tcp-listen:8080"));
//     if (sock) use(sock->release()); else report(sock.error().describe());
//
// A Client may be shared by any number of threads: each call waits for its
// own reply, and replies are matched by id.
//
// After its first request for a namespace, a Client may hold a direct
// channel to that namespace's worker, granted by nsbrokerd: later requests
// for it go straight to the worker, which judges them by the same rules and
// answers with the same errors. When nsbrokerd revokes a channel (a policy
// reload, the namespace deleted, its worker gone), the Client goes back to
// nsbrokerd by itself; only a request the worker had already been sent when
// it died fails, with worker_failed.
//
// Every call has a deadline (ClientOptions::timeout) and fails with `timeout`
// past it. When nsbrokerd goes away (restarted, say), a call in flight fails
// with `io`, and the next call connects again by itself, at once, and after
// a failed attempt no sooner than a pause that doubles from 10 ms to 1 s.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nsbroker/error.hpp"
#include "nsbroker/export.hpp"
#include "nsbroker/protocol.hpp"
#include "nsbroker/unique_fd.hpp"

namespace nsbroker {

using proto::HelloReply;
using proto::NamespaceInfo;
using proto::NamespacesCursor;
using proto::NamespacesReply;
using proto::SocketInfo;
using proto::SocketSpec;
using proto::StatsReply;

// The socket path a client uses when given none: $NSBROKER_SOCKET, else
// /run/nsbroker/nsbroker.sock.
NSBROKER_PUBLIC std::string default_socket_path();

// Which namespace to make sockets in.
class Netns {
  public:
    NSBROKER_PUBLIC static Netns name(std::string name); // /run/netns/NAME
    // Any nsfs file. The library opens it with the caller's own rights and
    // sends the descriptor; a path it cannot open is an error here.
    NSBROKER_PUBLIC static Netns path(std::string path);
    // The namespace process pid is in: opened here as for a path when this
    // process may read it, else named to the daemon by pid.
    NSBROKER_PUBLIC static Netns pid(pid_t pid);
    // A namespace fd the caller holds (borrowed; it must stay open for the call).
    NSBROKER_PUBLIC static Netns fd(int fd);
    // The command line's spelling: "NAME", a path (anything with a '/'), or "pid:N".
    NSBROKER_PUBLIC static Result<Netns> parse(std::string_view text);

    [[nodiscard]] const proto::NetnsRef& ref() const { return ref_; }
    [[nodiscard]] int borrowed_fd() const { return fd_; }

  private:
    proto::NetnsRef ref_;
    int fd_ = -1;
};

// A socket made in a namespace: owns its fd until release().
class Socket {
  public:
    Socket(UniqueFd fd, SocketInfo info) : fd_(std::move(fd)), info_(std::move(info)) {}

    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    // The caller owns the returned descriptor.
    [[nodiscard]] int release() noexcept { return fd_.release(); }
    [[nodiscard]] UniqueFd take() noexcept { return std::move(fd_); }
    [[nodiscard]] const SocketInfo& info() const noexcept { return info_; }
    // Local address after bind, in the protocol's spelling ("127.0.0.1:8080").
    [[nodiscard]] const std::string& local_address() const noexcept { return info_.local; }

  private:
    UniqueFd fd_;
    SocketInfo info_;
};

// A request submitted from an event loop (Client::submit_sockets), completed.
struct Completion {
    std::uint64_t id = 0; // what submit_sockets returned
    Result<std::vector<Socket>> sockets = make_error(ErrorCode::internal, "not completed");
};

struct ClientOptions {
    // How long a call may wait for its answer, from its start, before it
    // fails with ErrorCode::timeout; zero waits for ever. An answer that
    // comes later is dropped, its sockets closed. A direct channel whose
    // worker let a call time out is given up, so that the next request
    // goes to nsbrokerd, which replaces a worker that hangs.
    std::chrono::milliseconds timeout = std::chrono::seconds(30);
    // Ask nsbrokerd for direct channels to workers and use them.
    bool direct_channels = true;
    // The most channels held at once; past it, the namespace used least
    // loses its channels.
    std::size_t max_direct_channels = 16;
    // The most channels held to one namespace. A blocking call that finds
    // every one busy with another thread's call asks nsbrokerd for one more
    // (counted in both bounds, and in nsbrokerd's per-uid bound), so that
    // threads sharing the Client do not wait on each other's replies; 1
    // shares one channel among all threads.
    std::size_t channels_per_namespace = 4;
    // Sockets made ahead of time, per kind (family, type, protocol) and
    // direct channel, refilled in batches on the channel; 0 keeps none. A
    // socket() or sockets() call for one kind of socket (not submit_sockets)
    // is then served from them when the
    // socket needs nothing privileged to be made and the caller may take
    // its other steps itself: inet or inet6 stream (tcp) or dgram (udp)
    // sockets with no options and no connect, unbound or bound to port 0
    // (the library binds and listens); and unix sockets of any type. A
    // socket from the reservoir was made as the channel's caller under the
    // rules in force when it was made. The reservoir is emptied when its
    // channel closes (revoked, or its worker gone) or is let go, as the
    // library finds out on its next use of the channel, or in completions().
    std::size_t reservoir = 0;
};

class Client {
  public:
    // Connects to path, or to default_socket_path() when path is empty.
    NSBROKER_PUBLIC static Result<Client> connect(std::string_view path = {});
    NSBROKER_PUBLIC static Result<Client> connect(std::string_view path,
                                                  const ClientOptions& options);

    NSBROKER_PUBLIC Client(Client&&) noexcept;
    NSBROKER_PUBLIC Client& operator=(Client&&) noexcept;
    NSBROKER_PUBLIC ~Client();

    NSBROKER_PUBLIC Result<HelloReply> hello();
    NSBROKER_PUBLIC Result<void> ping();
    NSBROKER_PUBLIC Result<Socket> socket(const Netns& netns, const SocketSpec& spec);
    // Several sockets in one request and one reply (at most 253 in all),
    // in the order of the specs and their counts.
    // A unix socket is bound, listened on and connected in the calling
    // process, once nsbrokerd has made it: a path is the caller's (relative
    // to its working directory, in its mount namespace, with its rights),
    // while an abstract "@name" belongs to the socket's network namespace.
    NSBROKER_PUBLIC Result<std::vector<Socket>> sockets(const Netns& netns,
                                                        const std::vector<SocketSpec>& specs);
    // Every namespace nsbrokerd lists (root only), in the order of their
    // (dev, ino): the library asks for page after page, within one deadline
    // for them all, and joins the parts of a namespace whose names did not
    // fit in one page. next_cursor is never set.
    NSBROKER_PUBLIC Result<NamespacesReply> namespaces();
    // One page of that list: the namespaces after cursor (from the first when
    // there is none), at most limit of them (1 to proto::max_namespaces_limit;
    // as many as fit in one message when there is none). Its next_cursor, when
    // set, asks for the next page; a namespace deleted meanwhile is left out,
    // and no other is listed twice or missed.
    NSBROKER_PUBLIC Result<NamespacesReply>
    namespaces_page(const std::optional<NamespacesCursor>& cursor,
                    std::optional<unsigned> limit = std::nullopt);
    NSBROKER_PUBLIC Result<StatsReply> stats();

    // From an event loop, without a thread per call: submit_sockets sends a
    // request (or holds it until the socket has room) and returns its id at
    // once; event_fd() becomes readable when there is something to collect
    // (a reply, or a request past its deadline, which completes with timeout);
    // completions() then reads what arrived without blocking and returns the
    // requests that completed, each with its id. Requests on the connection
    // and on its direct channels are pipelined, and completions come in any
    // order. Thread-safe, and may be mixed with the blocking calls. A
    // Netns::fd is duplicated at submit, so the caller may close its own.
    NSBROKER_PUBLIC Result<std::uint64_t> submit_sockets(const Netns& netns,
                                                         const std::vector<SocketSpec>& specs);
    // For poll(2), epoll or sd_event_add_io, level-triggered (POLLIN); owned by the Client.
    [[nodiscard]] NSBROKER_PUBLIC int event_fd() const noexcept;
    NSBROKER_PUBLIC std::vector<Completion> completions();

    // The connection's descriptor, for diagnostics; still owned by the Client.
    [[nodiscard]] NSBROKER_PUBLIC int fd() const noexcept;
    // How many direct channels the Client holds now.
    [[nodiscard]] NSBROKER_PUBLIC std::size_t direct_channels() const;

  private:
    struct Impl;
    explicit Client(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// The command line's socket shorthand:
//   tcp-listen:[ADDR:]PORT   tcp6-listen:[[ADDR]:]PORT   udp:[ADDR:]PORT   udp6:[[ADDR]:]PORT
//   tcp-connect:HOST:PORT    tcp6-connect:[HOST]:PORT    unix-listen:PATH
//   netlink:PROTO            raw:PROTO                   raw6:PROTO        packet:PROTO
NSBROKER_PUBLIC Result<SocketSpec> parse_socket_spec(std::string_view text);

} // namespace nsbroker
