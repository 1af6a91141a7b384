// Connections to the socket: accepting, reading requests, queuing replies and
// the descriptors that go with them.
#include "frontend/socket_frontend.hpp"

#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <spdlog/spdlog.h>

#include "frontend/listener.hpp"
#include "frontend/peer_creds.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "sys/logging.hpp"

namespace nsbroker::daemon {

// One client connection. Owned by SocketFrontend::clients_; answers that
// come after the client left find it gone through a weak_ptr.
struct Connection : std::enable_shared_from_this<Connection> {
    [[nodiscard]] Caller caller() const {
        return {peer.cred.uid, peer.cred.gid, peer.groups, peer.cred.pid};
    }
    [[nodiscard]] pid_t pid() const { return peer.cred.pid; }
    [[nodiscard]] uid_t uid() const { return peer.cred.uid; }

    struct Outgoing {
        std::string data;
        std::vector<UniqueFd> fds; // closed once the message is sent
    };

    // A socket request read but not yet handed to the core: its sockets would
    // not fit the descriptor budget. Nothing more is read from the connection
    // until it goes.
    struct Waiting {
        proto::Request request;
        UniqueFd netns_fd;
    };

    SocketFrontend* frontend = nullptr;
    UniqueFd fd;
    PeerCredentials peer;
    Core::Seat seat;
    std::shared_ptr<Channel> channel = std::make_shared<Channel>(Channel{"on this connection", 0});
    EventSource source;
    std::deque<Outgoing> outbox;
    DescriptorBudget::Account account;
    std::optional<Waiting> waiting;
    bool read_closed = false; // the peer sends no more, and waits for its answers
    bool closed = false;
    std::uint64_t stalled_since = 0; // CLOCK_MONOTONIC, microseconds; 0: not stalled
    int unread_when_stalled = 0;     // what the peer had not read then (SIOCOUTQ)

    [[nodiscard]] bool answered_all() const {
        return channel->in_flight == 0 && outbox.empty() && !waiting;
    }
};

namespace {

// Pause before accepting again after the process ran out of descriptors.
constexpr std::uint64_t accept_pause_usec = 200'000;
// How often connections held back by the descriptor budget are looked at.
constexpr std::uint64_t budget_retry_usec = 50'000;
// The descriptors a request's reply may carry: its sockets, and a direct
// channel when it asks for one.
std::size_t descriptors_asked(const proto::Request& request) {
    if (request.op != proto::Op::socket) {
        return 0;
    }
    return proto::socket_count(request.specs) + (request.channel ? 1 : 0);
}

// How often stalled connections are looked at.
constexpr std::uint64_t stall_check_usec = 1'000'000;

} // namespace

SocketFrontend::SocketFrontend(sd_event* loop, Core& core, SocketFrontendConfig config)
    : loop_(loop), core_(core), config_(std::move(config)),
      accept_pause_(loop,
                    [this](uint64_t) {
                        if (listener_source_) {
                            sd_event_source_set_enabled(listener_source_.get(), SD_EVENT_ON);
                        }
                    }),
      budget_(config_.descriptors),
      budget_timer_(loop, [this](uint64_t) { budget_timer_elapsed(); }),
      stall_timer_(loop, [this](uint64_t) { stall_timer_elapsed(); }) {
    if (auto activated = activated_socket()) {
        listener_ = std::move(activated->fd);
        config_.socket_path = std::move(activated->path);
        activated_ = true;
    } else {
        listener_ = listen_at(config_.socket_path);
    }
    sd_event_source* s = nullptr;
    check_sd(sd_event_add_io(loop_, &s, listener_.get(), EPOLLIN, &SocketFrontend::on_accept, this),
             "sd_event_add_io(listener)");
    listener_source_.reset(s);
}

SocketFrontend::~SocketFrontend() {
    clients_.clear();
}

void SocketFrontend::stop() {
    // A socket from systemd stays where it is, to start the daemon again.
    listener_source_.reset();
    listener_.reset();
    if (!activated_) {
        ::unlink(config_.socket_path.c_str());
    }
}

void SocketFrontend::flush() {
    std::vector<std::shared_ptr<Connection>> clients;
    for (auto& [raw, c] : clients_) {
        clients.push_back(c);
    }
    for (auto& c : clients) {
        try {
            flush(*c);
        } catch (const std::exception& e) {
            spdlog::warn("client pid {} uid {}: {}", c->pid(), c->uid(), e.what());
        }
    }
}

// ---- connections -----------------------------------------------------------

int SocketFrontend::on_accept(sd_event_source*, int, uint32_t, void* userdata) {
    static_cast<SocketFrontend*>(userdata)->accept_clients();
    return 0;
}

void SocketFrontend::accept_clients() {
    for (;;) {
        UniqueFd fd{::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)};
        if (!fd) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                pause_accepting();
            }
            return;
        }
        auto read = read_peer_credentials(fd.borrow());
        if (read.outcome == PeerRead::failed) {
            // Without an identity nothing can be authorized.
            spdlog::warn("{}: {}; connection refused", read.what, std::strerror(read.error));
            continue;
        }
        auto c = std::make_shared<Connection>();
        c->peer = std::move(read.creds);
        auto seat = core_.seat(c->uid());
        if (!seat) {
            spdlog::warn("connection from pid {} uid {} refused: {}", c->pid(), c->uid(),
                         seat.error().message);
            auto refusal = proto::encode_reply({std::nullopt, seat.error()});
            (void)proto::send_message(fd.get(), refusal, {}, true);
            continue;
        }
        c->seat = std::move(*seat);
        c->frontend = this;
        c->fd = std::move(fd);
        c->account.uid = c->uid();
        c->account.fd = c->fd.borrow();
        sd_event_source* s = nullptr;
        if (sd_event_add_io(loop_, &s, c->fd.get(), EPOLLIN, &SocketFrontend::on_client, c.get()) <
            0) {
            continue;
        }
        c->source.reset(s);
        core_.note_activity();
        spdlog::debug("client connected: pid {} uid {} gid {}", c->pid(), c->uid(),
                      c->peer.cred.gid);
        clients_.emplace(c.get(), std::move(c));
    }
}

// Out of descriptors: stop accepting for a moment instead of spinning on a
// listener that stays readable.
void SocketFrontend::pause_accepting() {
    spdlog::warn("accept: {}; pausing new connections", std::strerror(errno));
    sd_event_source_set_enabled(listener_source_.get(), SD_EVENT_OFF);
    accept_pause_.arm_in(accept_pause_usec);
}

int SocketFrontend::on_client(sd_event_source*, int, uint32_t revents, void* userdata) {
    auto* raw = static_cast<Connection*>(userdata);
    // Keeps the connection alive to the end of this event, even if it closes.
    auto c = raw->shared_from_this();
    c->frontend->client_event(c, revents);
    return 0;
}

void SocketFrontend::client_event(const std::shared_ptr<Connection>& c, uint32_t revents) {
    // What is logged while this client is served says whose it is.
    ScopedLogFields fields{{c->uid(), c->pid(), {}, {}}};
    try {
        if (revents & EPOLLHUP) {
            // The peer is gone in both directions: what it still had queued
            // could never be answered.
            close_client(*c);
            return;
        }
        if (revents & EPOLLOUT) {
            flush(*c);
        }
        // One message per wake-up: the loop calls again while more are queued,
        // and stops reading while the connection has too much outstanding.
        if (!c->closed && !c->waiting && (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) &&
            c->outbox.size() < config_.unread_replies) {
            receive(c);
        }
        update_events(*c);
    } catch (const std::exception& e) {
        spdlog::warn("client pid {} uid {}: {}; disconnected", c->pid(), c->uid(), e.what());
        close_client(*c);
    }
}

void SocketFrontend::receive(const std::shared_ptr<Connection>& c) {
    auto received = proto::receive_message(c->fd.get(), proto::max_message_size, true);
    proto::never_linger(received.message.fds);
    switch (received.status) {
    case proto::ReceiveStatus::would_block:
        return;
    case proto::ReceiveStatus::closed:
        // shutdown(SHUT_WR) after its requests: they are still answered.
        if (!c->answered_all()) {
            c->read_closed = true;
            return;
        }
        close_client(*c);
        return;
    case proto::ReceiveStatus::fds_truncated: {
        // The kernel refuses a sender more than 253 descriptors: only
        // nsbrokerd's own descriptor limit cuts a request's short. The
        // request is refused and the connection kept.
        auto request = proto::decode_request(received.message.data);
        auto* decoded = std::get_if<proto::Request>(&request);
        spdlog::warn("client pid {} uid {}: a request's descriptor was lost: nsbrokerd is at its "
                     "descriptor limit",
                     c->pid(), c->uid());
        refuse(*c, decoded ? decoded->id : std::get<proto::RequestError>(request).id,
               make_error(ErrorCode::limit,
                          "nsbrokerd is at its descriptor limit and lost the request's "
                          "descriptor; it may be sent again",
                          EMFILE));
        return;
    }
    case proto::ReceiveStatus::too_large:
        refuse(*c, std::nullopt,
               make_error(ErrorCode::limit, "message larger than " +
                                                std::to_string(proto::max_message_size) +
                                                " bytes"));
        return;
    case proto::ReceiveStatus::message:
        handle_message(c, std::move(received.message));
        return;
    }
}

void SocketFrontend::update_events(Connection& c) {
    if (c.closed) {
        return;
    }
    uint32_t events = 0;
    if (c.outbox.size() < config_.unread_replies && !c.waiting && !c.read_closed) {
        events |= EPOLLIN;
    }
    if (!c.outbox.empty()) {
        events |= EPOLLOUT;
    }
    sd_event_source_set_io_events(c.source.get(), events);
    // Not read, and held back by what this connection's own peer, or its
    // uid, has left unread: whether that ever changes is up to them. (A
    // request that waits only because other uids hold the shared budget is
    // no stall of its own.)
    const bool held_back_by_own =
        !c.outbox.empty() || c.account.unread > 0 ||
        (c.waiting && !budget_.fits_own(c.account, descriptors_asked(c.waiting->request)));
    note_stalled(c, (events & EPOLLIN) == 0 && !c.read_closed && held_back_by_own);
}

void SocketFrontend::note_stalled(Connection& c, bool stalled) {
    if (!stalled || config_.stall_timeout.count() == 0) {
        if (c.stalled_since != 0) { // the usual case, on every event, costs nothing
            c.stalled_since = 0;
            stalled_.erase(&c);
        }
        return;
    }
    if (c.stalled_since == 0) {
        sd_event_now(loop_, CLOCK_MONOTONIC, &c.stalled_since);
        (void)peer_read_since_stalled(c);
        stalled_.insert(&c);
    }
    if (!stall_timer_.armed()) {
        stall_timer_.arm_in(stall_check_usec);
    }
}

bool SocketFrontend::peer_read_since_stalled(Connection& c) {
    int unread = 0;
    if (::ioctl(c.fd.get(), SIOCOUTQ, &unread) < 0) {
        return false;
    }
    const bool read = unread < c.unread_when_stalled;
    c.unread_when_stalled = unread;
    return read;
}

void SocketFrontend::stall_timer_elapsed() {
    budget_.refresh_all();
    std::uint64_t now = 0;
    sd_event_now(loop_, CLOCK_MONOTONIC, &now);
    const auto timeout =
        static_cast<std::uint64_t>(std::chrono::microseconds(config_.stall_timeout).count());
    // Held here: closing one may close and free others.
    std::vector<std::shared_ptr<Connection>> stalled;
    for (Connection* c : stalled_) {
        stalled.push_back(c->shared_from_this());
    }
    for (const auto& c : stalled) {
        // A peer that has read anything since is not stalled: the kernel
        // reports room (EPOLLOUT) only once three quarters of what was sent
        // is read, so one that reads slowly but steadily would look it.
        const std::size_t unsent = c->outbox.size();
        const bool read = peer_read_since_stalled(*c);
        flush(*c); // what fits now is sent
        if (c->closed) {
            continue;
        }
        if (c->stalled_since != 0 && (read || c->outbox.size() < unsent)) {
            c->stalled_since = now;
            (void)peer_read_since_stalled(*c);
        }
        if (c->stalled_since != 0 && now - c->stalled_since >= timeout) {
            // Whether it will ever read is up to the peer; one whose own end
            // waits, unread, in this connection's queue never will.
            spdlog::warn("client pid {} uid {}: left its replies unread for {} s; disconnected",
                         c->pid(), c->uid(), config_.stall_timeout.count());
            close_client(*c);
        }
    }
    if (!stalled_.empty()) {
        stall_timer_.arm_in(stall_check_usec);
    }
}

void SocketFrontend::close_client(Connection& c) {
    if (c.closed) {
        return;
    }
    c.closed = true;
    c.stalled_since = 0;
    stalled_.erase(&c);
    spdlog::debug("client disconnected: pid {} uid {}", c.pid(), c.uid());
    core_.note_activity();
    c.source.reset();
    c.outbox.clear();
    c.waiting.reset();
    waiting_.erase(&c);
    budget_.close(c.account);
    budget_.refresh(c.account);
    if (c.account.unread > 0) {
        // The peer may still hold replies it never read, charged to the
        // daemon's user until it reads them or closes: they stay counted,
        // and so does the connection, until then. It reads EOF after them,
        // and what it sent that was never read goes, descriptors and all.
        ::shutdown(c.fd.get(), SHUT_RDWR);
        try {
            proto::discard_queued(c.fd.get());
        } catch (const SystemError& e) {
            spdlog::warn("client pid {} uid {}: {}", c.pid(), c.uid(), e.what());
        }
        lingering_.insert(&c);
        arm_budget_timer();
        retry_waiting();
        return;
    }
    forget_client(c);
    retry_waiting();
}

void SocketFrontend::forget_client(Connection& c) {
    lingering_.erase(&c);
    budget_.forget(c.account);
    c.fd.reset();
    clients_.erase(&c); // gives up its seat
}

// ---- requests --------------------------------------------------------------

void SocketFrontend::handle_message(const std::shared_ptr<Connection>& c, proto::Message message) {
    auto decoded = proto::decode_request(message.data);
    if (auto* bad = std::get_if<proto::RequestError>(&decoded)) {
        spdlog::debug("client pid {}: {}", c->pid(), bad->error.message);
        refuse(*c, bad->id, std::move(bad->error));
        return; // any fds sent along close with the message
    }
    auto& request = std::get<proto::Request>(decoded);
    bool takes_fd = request.op == proto::Op::socket && request.netns &&
                    request.netns->kind == proto::NetnsRef::Kind::fd;
    if (message.fds.size() > 1) {
        refuse(*c, request.id,
               make_error(ErrorCode::invalid_request,
                          "a request carries at most one file descriptor, got " +
                              std::to_string(message.fds.size())));
        return;
    }
    if (!message.fds.empty() && !takes_fd) {
        refuse(*c, request.id,
               make_error(ErrorCode::invalid_request,
                          "unexpected file descriptor: only a socket request with netns "
                          "{\"fd\": 0} carries one"));
        return;
    }
    UniqueFd netns_fd = message.fds.empty() ? UniqueFd{} : std::move(message.fds.front());
    // A request the core will refuse anyway reserves nothing.
    const std::size_t asked = core_.stopping() ? 0 : descriptors_asked(request);
    if (asked > 0 && !budget_.admit(c->account, asked)) {
        spdlog::debug("client pid {} uid {}: request {} waits for its descriptor budget", c->pid(),
                      c->uid(), request.id);
        c->waiting = Connection::Waiting{std::move(request), std::move(netns_fd)};
        waiting_.insert(c.get());
        arm_budget_timer();
        return;
    }
    submit(c, std::move(request), std::move(netns_fd), asked);
}

void SocketFrontend::submit(const std::shared_ptr<Connection>& c, proto::Request request,
                            UniqueFd netns_fd, std::size_t reserved) {
    std::weak_ptr<Connection> weak = c;
    const auto id = request.id;
    Answer answer = [this, weak, id, reserved](proto::ReplyBody body, std::vector<UniqueFd> fds) {
        auto client = weak.lock();
        if (!client || client->closed) {
            return; // the client left; the fds close here
        }
        if (reserved > fds.size()) {
            budget_.release(client->account, reserved - fds.size());
        }
        reply(*client, id, std::move(body), std::move(fds));
    };
    core_.serve({c->caller(),
                 {c->pid(), c->peer.pidfd.borrow()},
                 c->channel,
                 std::move(request),
                 std::move(netns_fd)},
                std::move(answer));
}

void SocketFrontend::refuse(Connection& c, std::optional<std::uint64_t> id, Error error) {
    core_.count_unreadable(error);
    reply(c, id, std::move(error));
}

void SocketFrontend::reply(Connection& c, std::optional<std::uint64_t> id, proto::ReplyBody body,
                           std::vector<UniqueFd> fds) {
    if (c.closed) {
        return;
    }
    c.outbox.push_back({proto::encode_reply(proto::Reply{id, std::move(body)}), std::move(fds)});
    flush(c);
}

void SocketFrontend::flush(Connection& c) {
    while (!c.closed && !c.outbox.empty()) {
        auto& next = c.outbox.front();
        if (!next.fds.empty()) {
            // Keeps the count of what the peer holds unread close to true.
            budget_.refresh(c.account);
        }
        auto raw = proto::raw_fds(next.fds);
        auto status = proto::send_message(c.fd.get(), next.data, raw, true);
        if (status == proto::SendStatus::would_block) {
            break;
        }
        if (status == proto::SendStatus::closed) {
            close_client(c);
            return;
        }
        budget_.sent(c.account, next.fds.size());
        c.outbox.pop_front(); // our copies of the fds close here
    }
    if (c.read_closed && c.answered_all()) {
        close_client(c);
        return;
    }
    update_events(c);
}

// ---- the descriptor budget ---------------------------------------------------

void SocketFrontend::retry_waiting() {
    // One at a time, looking afresh after each: serving one may close a
    // connection and come back here.
    for (bool served = true; served;) {
        served = false;
        for (Connection* raw : waiting_) {
            const std::size_t asked = descriptors_asked(raw->waiting->request);
            if (!budget_.admit(raw->account, asked)) {
                continue;
            }
            auto c = raw->shared_from_this();
            waiting_.erase(raw);
            auto waiting = std::move(*c->waiting);
            c->waiting.reset();
            ScopedLogFields fields{{c->uid(), c->pid(), {}, {}}};
            try {
                submit(c, std::move(waiting.request), std::move(waiting.netns_fd), asked);
                update_events(*c);
            } catch (const std::exception& e) {
                spdlog::warn("client pid {} uid {}: {}; disconnected", c->pid(), c->uid(),
                             e.what());
                close_client(*c);
            }
            served = true;
            break;
        }
    }
}

void SocketFrontend::arm_budget_timer() {
    if (!budget_timer_.armed()) {
        budget_timer_.arm_in(budget_retry_usec);
    }
}

void SocketFrontend::budget_timer_elapsed() {
    budget_.refresh_all();
    std::vector<Connection*> read_all;
    for (Connection* c : lingering_) {
        if (c->account.unread == 0) {
            read_all.push_back(c);
        }
    }
    for (Connection* c : read_all) {
        forget_client(*c);
    }
    retry_waiting();
    if (!waiting_.empty() || !lingering_.empty()) {
        arm_budget_timer();
    }
}

} // namespace nsbroker::daemon
