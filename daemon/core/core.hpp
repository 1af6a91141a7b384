// The broker itself, known to no front end: admission, the policy, namespaces
// and workers. A front end (the socket, D-Bus) turns what its peers send into
// typed requests, says who sent them, and hands them to Core::serve; every
// request of every front end is admitted, counted and answered here.
#pragma once

#include <sys/types.h>
#include <systemd/sd-event.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/netns_watch.hpp"
#include "nsbroker/protocol.hpp"
#include "policy/policy.hpp"
#include "workers/worker_pool.hpp"

namespace nsbroker::daemon {

// What callers other than root may hold of the daemon through any front end.
// Reaching a limit gives a `limit` error, never more memory or descriptors.
// Root is never refused because of other users: its connections do not count
// towards `connections`.
struct CallerLimits {
    std::size_t connections = 1024; // of callers other than root
    std::size_t connections_per_uid = 128;
    std::size_t requests_in_flight = 64; // per channel
    // Direct channels to workers (proto::DirectChannel) held at once: per
    // channel to the daemon, per uid other than root, and in all. Past a
    // bound a request is still served, without a channel.
    std::size_t direct_channels_per_channel = 16;
    std::size_t direct_channels_per_uid = 16;
    std::size_t direct_channels = 4096;
    // A worker leaves a channel's caller at most 253 sockets unread, which
    // the kernel charges to the workers' user as it does the daemon's (see
    // DescriptorBudget). Callers other than root hold channels only while
    // 253 for each fits in this; 0: a quarter of RLIMIT_NOFILE, besides the
    // quarter the daemon's own budget takes.
    std::size_t direct_channel_fds = 0;
    // A caller that leaves what it was sent unread, so that it is not read
    // from, for this long is disconnected: a connection by its front end, a
    // direct channel by its worker. 0: never.
    std::chrono::seconds stall_timeout{60};
};

struct CoreConfig {
    std::string policy_path = default_policy_path;
    WorkerPoolConfig workers;
    CallerLimits limits;
};

// Where a front end's requests come from, as one stream: a connection, a bus
// peer. The core counts what each has in flight against the limit; the
// front end reads the count to know when it has answered everything.
struct Channel {
    std::string where; // "on this connection", "from :1.42": for the limit's message
    std::size_t in_flight = 0;
    std::size_t direct_channels = 0; // granted on it and still open
};

// One request, typed: what the peer sent, and who sent it as the front end's
// transport vouches for it (SO_PEERCRED, the bus's credentials).
struct Request {
    Caller caller;
    CallerProcess process;
    std::shared_ptr<Channel> channel;
    proto::Request message;
    UniqueFd netns_fd; // sent along, for NetnsRef::Kind::fd
    // A `namespaces` reply comes in pages that each fit in one message of
    // the socket protocol, unless the front end sends replies of any size:
    // then it lists everything at once (D-Bus).
    bool paged_listing = true;
};

// How the core answers a request: exactly once, perhaps before serve returns.
// The fds are the callee's from then on.
using Answer = std::function<void(proto::ReplyBody, std::vector<UniqueFd>)>;

class Core {
  public:
    // Loads the policy (throws std::runtime_error when it is refused) and
    // starts no worker yet.
    Core(sd_event* loop, CoreConfig config);
    ~Core();
    Core(const Core&) = delete;
    Core& operator=(const Core&) = delete;

    // ---- admission ----------------------------------------------------------
    // A caller holds a Seat for as long as one of its connections lasts: it
    // counts towards the connection limits and the `clients` figure.
    class Seat {
      public:
        Seat() = default;
        Seat(Seat&& other) noexcept;
        Seat& operator=(Seat&& other) noexcept;
        ~Seat();

      private:
        friend class Core;
        Seat(Core* core, uid_t uid) : core_(core), uid_(uid) {}
        Core* core_ = nullptr;
        uid_t uid_ = 0;
    };
    // A seat for a new connection of uid, or the limit it would go past.
    Result<Seat> seat(uid_t uid);

    // Admits, counts and answers one request: refused while stopping, root's
    // operations for root only, at most limits.requests_in_flight per channel.
    void serve(Request request, Answer answer);
    // A request that could not be read: counted, with its error.
    void count_unreadable(const Error& error);

    // ---- what the daemon around the core asks of it --------------------------
    [[nodiscard]] bool stopping() const { return stopping_; }
    // No job is with a worker.
    [[nodiscard]] bool idle() const;
    // When a request or a connection last came or went (CLOCK_MONOTONIC, µs).
    [[nodiscard]] std::uint64_t last_activity() const { return last_activity_; }
    void note_activity();
    // Reads the policy file again; the policy in force stays when it is refused.
    void reload_policy();
    // Refuses every request from now on, and calls stopped once every worker
    // has answered what it was sent and exited.
    void stop(std::function<void()> stopped);
    [[nodiscard]] proto::StatsReply stats() const;
    [[nodiscard]] const CoreConfig& config() const { return config_; }

  private:
    void answer_with(Answer& answer, proto::ReplyBody body, std::vector<UniqueFd> fds = {});
    // Why this request may not be served at all, or nothing.
    std::optional<Error> refusal(const Request& request) const;
    void open_sockets(Request request, Answer answer);
    // Jobs root sends to a namespace that already has a worker.
    bool send_to_running(Request& request, proto::WorkerJob& job, Answer& answer);
    // For callers other than root: the policy's decision on a resolved request.
    // A refusal is logged and comes back as a permission_denied Error.
    Result<Decision> authorize(const Request& request, const std::vector<proto::SocketSpec>& specs,
                               const ResolvedNetns& netns, bool owned_by_caller);
    // Whether the caller could enter the namespace itself (the policy's `owned`).
    static bool owns(const Caller& caller, const ResolvedNetns& netns);
    // What a direct channel granted with a request's sockets will serve.
    struct ChannelOffer {
        NetnsIdentity identity;
        std::optional<std::string> name;
        bool owned_by_caller = false;
    };
    class ChannelTicket;
    // What a worker answers, counted and passed on; with a direct channel
    // when offer is given and the limits allow one.
    JobDone from_worker(const Request& request, Answer answer,
                        std::optional<ChannelOffer> offer = std::nullopt);
    // Opens a direct channel for caller, who asked on channel, to the worker
    // of offer's namespace: the caller's end, or nothing when a limit stands
    // in the way.
    std::optional<UniqueFd> open_channel(const Caller& caller,
                                         const std::shared_ptr<Channel>& channel,
                                         const ChannelOffer& offer);
    [[nodiscard]] proto::HelloReply hello() const;
    [[nodiscard]] proto::NamespacesReply list_namespaces(const Request& request) const;

    sd_event* loop_;
    CoreConfig config_;
    Policy policy_;
    std::unique_ptr<WorkerPool> pool_;
    std::unique_ptr<NetnsWatch> netns_watch_;
    bool stopping_ = false;
    std::uint64_t last_activity_ = 0;

    std::map<uid_t, std::size_t> seats_; // connections by uid
    std::size_t seated_ = 0;
    std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
    std::uint64_t requests_ = 0;
    std::uint64_t sockets_ = 0;
    std::map<std::string, std::uint64_t> errors_;
    std::uint64_t next_direct_channel_ = 1;
    std::size_t direct_channels_ = 0;
    std::map<uid_t, std::size_t> direct_channels_by_uid_;
};

} // namespace nsbroker::daemon
