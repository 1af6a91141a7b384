// nsbrokerd's core: the listening socket, client connections, request
// dispatch and counters, all on one sd-event loop.
#pragma once

#include <sys/socket.h>
#include <systemd/sd-event.h>

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/netns_watch.hpp"
#include "core/policy.hpp"
#include "frontend/descriptor_budget.hpp"
#include "nsbroker/fd_passing.hpp"
#include "nsbroker/protocol.hpp"
#include "sys/event.hpp"
#include "workers/worker_pool.hpp"

namespace nsbroker::daemon {

// What one peer may hold of the daemon. Reaching a limit gives a `limit`
// error, or a refused connection; never more memory or descriptors.
// Root is never refused because of other users: its connections do not count
// towards `connections`, and descriptors are not counted for it.
struct Limits {
    std::size_t connections = 1024; // of callers other than root
    std::size_t connections_per_uid = 128;
    std::size_t requests_in_flight = 64; // per connection
    std::size_t unread_replies = 256;    // per connection; beyond it the daemon stops reading
    DescriptorLimits descriptors;        // sockets outstanding, see descriptor_budget.hpp
};

struct BrokerConfig {
    std::string socket_path;
    std::string policy_path = default_policy_path;
    WorkerPoolConfig workers;
    Limits limits;
    // Exit once nothing has happened for this long and no client is
    // connected, no request is in flight; 0: never. For socket activation,
    // where systemd starts the daemon again on the next connection.
    std::chrono::seconds exit_idle_time{0};
    bool dbus = true; // serve org.nsbroker.Broker1 on the system bus
};

// One request for sockets, from any front end.
struct SocketRequest {
    Caller caller;
    CallerProcess process;
    std::uint64_t id = 0; // for the log
    proto::NetnsRef netns;
    UniqueFd netns_fd; // sent with the request, for NetnsRef::Kind::fd
    std::vector<proto::SocketSpec> specs;
    std::size_t in_flight = 0; // the caller's requests in flight, this one included
};

struct Connection;
class DbusService;

class Broker {
  public:
    explicit Broker(BrokerConfig config);
    ~Broker();
    Broker(const Broker&) = delete;
    Broker& operator=(const Broker&) = delete;

    // Serves until SIGTERM or SIGINT; returns the process exit status.
    int run();

    // One iteration of the event loop, waiting at most timeout_usec, for a
    // caller that drives the broker itself (tests, fuzzing). False once the
    // loop has finished.
    bool run_once(std::uint64_t timeout_usec);

    // ---- what front ends (the socket, D-Bus) share ----------------------
    // Resolves the namespace, applies the policy and hands the job to the
    // namespace's worker. done is called exactly once, perhaps before this
    // returns.
    void open_sockets(SocketRequest request, JobDone done);
    [[nodiscard]] proto::NamespacesReply list_namespaces() const;
    [[nodiscard]] proto::StatsReply stats() const;
    [[nodiscard]] bool stopping() const { return stopping_; }
    [[nodiscard]] const Limits& limits() const { return config_.limits; }
    // Something happened: the idle exit is put off.
    void note_activity();
    // Counts a request from another front end, and a failed one by its code.
    void count_request();
    void count_error(ErrorCode code);

  private:
    static int on_accept(sd_event_source*, int, uint32_t, void* userdata);
    static int on_client(sd_event_source*, int, uint32_t revents, void* userdata);
    static int on_stop_signal(sd_event_source*, const struct signalfd_siginfo*, void* userdata);
    static int on_reload_signal(sd_event_source*, const struct signalfd_siginfo*, void* userdata);
    void reload_policy();

    void accept_clients();
    // Why a new connection from uid may not be served, or nothing.
    std::optional<std::string> connection_refusal(uid_t uid) const;
    void client_event(const std::shared_ptr<Connection>& c, uint32_t revents);
    void handle_message(const std::shared_ptr<Connection>& c, proto::Message message);
    void handle_socket(const std::shared_ptr<Connection>& c, proto::Request& request,
                       UniqueFd passed_fd);
    // Hands an admitted socket request to open_sockets.
    void submit_socket(const std::shared_ptr<Connection>& c, proto::Request& request,
                       UniqueFd passed_fd);
    // Requests waiting for their connection's descriptor budget, and
    // connections closed with descriptors their peer has not read: looked at
    // again on a timer until the peers read.
    void retry_waiting();
    void arm_budget_timer();
    static int on_budget_timer(sd_event_source*, uint64_t now, void* userdata);
    // Frees the connection for good: its peer holds nothing of ours unread.
    void forget_client(Connection& c);
    // For callers other than root: the policy's decision on a resolved request.
    // A refusal is logged and comes back as a permission_denied Error.
    Result<Decision> authorize(const SocketRequest& request,
                               const std::vector<proto::SocketSpec>& specs,
                               const ResolvedNetns& netns);
    void reply(Connection& c, std::optional<std::uint64_t> id, proto::ReplyBody body,
               std::vector<UniqueFd> fds = {});
    void flush(Connection& c);
    void update_events(Connection& c);
    void close_client(Connection& c);

    void stop(const char* why);
    [[nodiscard]] bool idle() const;
    static int on_idle_check(sd_event_source*, uint64_t now, void* userdata);
    void schedule_idle_check(uint64_t when);
    static int on_status_timer(sd_event_source*, uint64_t now, void* userdata);
    // Tells systemd (when it started the daemon) a one-line summary.
    void notify_status();

    BrokerConfig config_;
    EventLoop loop_;
    UniqueFd listener_;
    bool activated_ = false; // the listener is systemd's: never unlink its path
    EventSource listener_source_;
    EventSource accept_pause_;
    std::vector<EventSource> signal_sources_;
    std::unique_ptr<WorkerPool> pool_;
    Policy policy_;
    std::unique_ptr<NetnsWatch> netns_watch_;
    std::map<Connection*, std::shared_ptr<Connection>> clients_;
    std::map<uid_t, std::size_t> connections_per_uid_;
    DescriptorBudget budget_;
    std::set<Connection*> waiting_;   // a request held back by the budget
    std::set<Connection*> lingering_; // closed, with descriptors unread by the peer
    EventSource budget_timer_;
    std::unique_ptr<DbusService> dbus_;
    bool stopping_ = false;
    uint64_t last_activity_ = 0; // CLOCK_MONOTONIC, microseconds
    EventSource idle_timer_;
    EventSource status_timer_;
    std::string last_status_;

    std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
    std::uint64_t requests_ = 0;
    std::uint64_t sockets_ = 0;
    std::map<std::string, std::uint64_t> errors_;
};

} // namespace nsbroker::daemon
