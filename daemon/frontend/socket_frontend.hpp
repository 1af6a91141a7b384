// The socket front end: the AF_UNIX SOCK_SEQPACKET listener, its connections,
// and the JSON messages on them (proto/PROTOCOL.md). Callers are known by the
// credentials the kernel recorded at connect(2); the sockets they are sent
// are bounded by a DescriptorBudget.
#pragma once

#include <systemd/sd-event.h>

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/core.hpp"
#include "frontend/descriptor_budget.hpp"
#include "frontend/frontend.hpp"
#include "nsbroker/fd_passing.hpp"
#include "nsbroker/protocol.hpp"
#include "sys/event.hpp"
#include "sys/timer.hpp"

namespace nsbroker::daemon {

struct SocketFrontendConfig {
    std::string socket_path; // used when systemd passed no socket
    // Replies queued for one connection; beyond it the daemon stops reading it.
    std::size_t unread_replies = 256;
    DescriptorLimits descriptors;
    // A connection whose peer leaves its own replies unread, so that the
    // daemon stops reading it, is closed after this long; 0: never. Its
    // replies stay readable.
    std::chrono::seconds stall_timeout{60};
};

struct Connection;

class SocketFrontend final : public Frontend {
  public:
    // Listens on the socket systemd passed, else at config.socket_path.
    // Throws SystemError.
    SocketFrontend(sd_event* loop, Core& core, SocketFrontendConfig config);
    ~SocketFrontend() override;
    SocketFrontend(const SocketFrontend&) = delete;
    SocketFrontend& operator=(const SocketFrontend&) = delete;

    [[nodiscard]] bool idle() const override { return clients_.empty(); }
    void stop() override;
    void flush() override;
    [[nodiscard]] std::size_t clients() const override { return clients_.size(); }

    // Where it listens, and whether systemd made the socket.
    [[nodiscard]] const std::string& path() const { return config_.socket_path; }
    [[nodiscard]] bool activated() const { return activated_; }

  private:
    static int on_accept(sd_event_source*, int, uint32_t, void* userdata);
    static int on_client(sd_event_source*, int, uint32_t revents, void* userdata);
    void accept_clients();
    void pause_accepting();
    void client_event(const std::shared_ptr<Connection>& c, uint32_t revents);
    void receive(const std::shared_ptr<Connection>& c);
    void handle_message(const std::shared_ptr<Connection>& c, proto::Message message);
    // Hands a request to the core, whose answer becomes a reply. reserved:
    // the descriptors the budget set aside for it.
    void submit(const std::shared_ptr<Connection>& c, proto::Request request, UniqueFd netns_fd,
                std::size_t reserved);
    // Requests waiting for their connection's descriptor budget, and
    // connections closed with descriptors their peer has not read: looked at
    // again on a timer until the peers read.
    void retry_waiting();
    void arm_budget_timer();
    void budget_timer_elapsed();
    void reply(Connection& c, std::optional<std::uint64_t> id, proto::ReplyBody body,
               std::vector<UniqueFd> fds = {});
    // Replies with an error to a request the core never saw, and counts it.
    void refuse(Connection& c, std::optional<std::uint64_t> id, Error error);
    void flush(Connection& c);
    void update_events(Connection& c);
    // Whether c is stalled: not read, with replies of its own its peer has
    // not read. Stalled too long, it is closed (stall_timer_elapsed).
    void note_stalled(Connection& c, bool stalled);
    void stall_timer_elapsed();
    // Whether c's peer has read anything since c stalled, or since this was
    // last asked.
    static bool peer_read_since_stalled(Connection& c);
    void close_client(Connection& c);
    // Frees the connection for good: its peer holds nothing of ours unread.
    void forget_client(Connection& c);

    sd_event* loop_;
    Core& core_;
    SocketFrontendConfig config_;
    UniqueFd listener_;
    bool activated_ = false; // the listener is systemd's: never unlink its path
    EventSource listener_source_;
    OneShotTimer accept_pause_;
    std::map<Connection*, std::shared_ptr<Connection>> clients_;
    DescriptorBudget budget_;
    std::set<Connection*> waiting_;   // a request held back by the budget
    std::set<Connection*> lingering_; // closed, with descriptors unread by the peer
    OneShotTimer budget_timer_;
    std::set<Connection*> stalled_;
    OneShotTimer stall_timer_;
};

} // namespace nsbroker::daemon
