// nsbrokerd's core: the listening socket, client connections, request
// dispatch and counters, all on one sd-event loop.
#pragma once

#include <sys/socket.h>
#include <systemd/sd-event.h>

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "event.hpp"
#include "netns_watch.hpp"
#include "nsbroker/fd_passing.hpp"
#include "nsbroker/protocol.hpp"
#include "policy.hpp"
#include "worker_pool.hpp"

namespace nsbroker::daemon {

// What one peer may hold of the daemon. Reaching a limit gives a `limit`
// error, or a refused connection; never more memory or descriptors.
struct Limits {
    std::size_t connections = 1024;
    std::size_t connections_per_uid = 128;
    std::size_t requests_in_flight = 64; // per connection
    std::size_t unread_replies = 256;    // per connection; beyond it the daemon stops reading
};

struct BrokerConfig {
    std::string socket_path;
    std::string policy_path = default_policy_path;
    WorkerPoolConfig workers;
    Limits limits;
};

struct Connection;

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
    // For callers other than root: the policy's decision on a resolved request.
    // A refusal is logged and comes back as a permission_denied Error.
    Result<Decision> authorize(const Connection& c, const proto::Request& request,
                               const std::vector<proto::SocketSpec>& specs,
                               const ResolvedNetns& netns);
    void reply(Connection& c, std::optional<std::uint64_t> id, proto::ReplyBody body,
               std::vector<UniqueFd> fds = {});
    void flush(Connection& c);
    void update_events(Connection& c);
    void close_client(Connection& c);

    [[nodiscard]] proto::NamespacesReply list_namespaces() const;
    [[nodiscard]] proto::StatsReply stats() const;
    void stop();

    BrokerConfig config_;
    EventLoop loop_;
    UniqueFd listener_;
    EventSource listener_source_;
    EventSource accept_pause_;
    std::vector<EventSource> signal_sources_;
    std::unique_ptr<WorkerPool> pool_;
    Policy policy_;
    std::unique_ptr<NetnsWatch> netns_watch_;
    std::map<Connection*, std::shared_ptr<Connection>> clients_;
    std::map<uid_t, std::size_t> connections_per_uid_;
    bool stopping_ = false;

    std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
    std::uint64_t requests_ = 0;
    std::uint64_t sockets_ = 0;
    std::map<std::string, std::uint64_t> errors_;
};

} // namespace nsbroker::daemon
