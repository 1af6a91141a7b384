// Listener, connections and request dispatch.
#include "core/core.hpp"

#include <dirent.h>
#include <signal.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "frontend/dbus_service.hpp"
#include "frontend/listener.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker_config.h"
#include "sys/logging.hpp"

// From asm-generic/socket.h of Linux 6.5, which Debian 12's headers predate.
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace nsbroker::daemon {

// One client connection. Owned by Broker::clients_; replies that arrive from
// workers after the client left find it gone through a weak_ptr.
struct Connection : std::enable_shared_from_this<Connection> {
    [[nodiscard]] Caller caller() const { return {peer.uid, peer.gid, groups, peer.pid}; }

    struct Outgoing {
        std::string data;
        std::vector<UniqueFd> fds; // closed once the message is sent
    };

    // A socket request read but not yet admitted: its sockets would not fit
    // the descriptor budget. Nothing more is read from the connection
    // until it goes.
    struct Waiting {
        proto::Request request;
        UniqueFd netns_fd;
    };

    Broker* broker = nullptr;
    UniqueFd fd;
    ucred peer{};
    std::vector<gid_t> groups; // supplementary groups, SO_PEERGROUPS
    UniqueFd pidfd;            // SO_PEERPIDFD, where the kernel has it
    EventSource source;
    std::deque<Outgoing> outbox;
    std::size_t in_flight = 0;
    DescriptorBudget::Account account;
    std::optional<Waiting> waiting;
    bool read_closed = false; // the peer sends no more, and waits for its answers
    bool closed = false;

    [[nodiscard]] bool answered_all() const { return in_flight == 0 && outbox.empty() && !waiting; }
};

namespace {

// Pause before accepting again after the process ran out of descriptors.
constexpr std::uint64_t accept_pause_usec = 200'000;
// How often systemd's STATUS= line is brought up to date.
constexpr std::uint64_t status_interval_usec = 5'000'000;
// How often connections held back by the descriptor budget are looked at.
constexpr std::uint64_t budget_retry_usec = 50'000;

uint64_t idle_usec(std::chrono::seconds s) {
    return static_cast<uint64_t>(std::chrono::microseconds(s).count());
}

std::vector<std::string> features(WorkerMode mode) {
    return {"socket",
            "batch",
            "netns-name",
            "netns-path",
            "netns-pid",
            "netns-fd",
            "namespaces",
            "stats",
            mode == WorkerMode::fork ? "worker-mode-fork" : "worker-mode-exec"};
}

} // namespace

namespace {

// The peer's supplementary groups as the kernel recorded them at connect().
std::optional<std::vector<gid_t>> peer_groups(int fd) {
    std::vector<gid_t> groups(64);
    for (;;) {
        auto length = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &length) == 0) {
            groups.resize(length / sizeof(gid_t));
            return groups;
        }
        if (errno != ERANGE || groups.size() >= 65536) {
            return std::nullopt;
        }
        groups.resize(length / sizeof(gid_t) + 1);
    }
}

// A pidfd of the peer, pinned when it connected; an empty one on kernels
// before 6.5, which do not have it; nothing on any other error.
std::optional<UniqueFd> peer_pidfd(int fd) {
    int pidfd = -1;
    socklen_t length = sizeof pidfd;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &length) == 0) {
        return UniqueFd{pidfd};
    }
    if (errno == ENOPROTOOPT) {
        return UniqueFd{};
    }
    return std::nullopt;
}

Policy load_policy_or_throw(const std::string& path) {
    auto policy = Policy::load(path);
    if (!policy) {
        throw std::runtime_error("policy " + policy.error().message);
    }
    return std::move(*policy);
}

} // namespace

Broker::Broker(BrokerConfig config)
    : config_(std::move(config)), policy_(load_policy_or_throw(config_.policy_path)),
      budget_(config_.limits.descriptors) {
    sd_event* e = nullptr;
    check_sd(sd_event_new(&e), "sd_event_new");
    loop_.reset(e);

    // The signals the loop handles must not be delivered the ordinary way;
    // SIGCHLD is blocked for sd_event_add_child.
    sigset_t mask;
    sigemptyset(&mask);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGCHLD}) {
        sigaddset(&mask, sig);
    }
    ::sigprocmask(SIG_BLOCK, &mask, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
    for (int sig : {SIGTERM, SIGINT}) {
        sd_event_source* s = nullptr;
        check_sd(sd_event_add_signal(loop_.get(), &s, sig, &Broker::on_stop_signal, this),
                 "sd_event_add_signal");
        signal_sources_.emplace_back(s);
    }

    sd_event_source* hup = nullptr;
    check_sd(sd_event_add_signal(loop_.get(), &hup, SIGHUP, &Broker::on_reload_signal, this),
             "sd_event_add_signal");
    signal_sources_.emplace_back(hup);
    spdlog::info("policy: {} ({} rules)", policy_.origin(), policy_.rules().size());

    pool_ = std::make_unique<WorkerPool>(loop_.get(), config_.workers);
    netns_watch_ = std::make_unique<NetnsWatch>(
        loop_.get(), config_.workers.netns_dir,
        [this](const std::string& name) { pool_->name_deleted(name); });
    netns_watch_->ensure();

    if (auto activated = activated_socket()) {
        listener_ = std::move(activated->fd);
        config_.socket_path = std::move(activated->path);
        activated_ = true;
    } else {
        listener_ = listen_at(config_.socket_path);
    }
    sd_event_source* s = nullptr;
    check_sd(sd_event_add_io(loop_.get(), &s, listener_.get(), EPOLLIN, &Broker::on_accept, this),
             "sd_event_add_io(listener)");
    listener_source_.reset(s);

    if (config_.dbus) {
        dbus_ = std::make_unique<DbusService>(loop_.get(), *this);
    }
    // With WatchdogSec= set, the loop sends WATCHDOG=1 itself, at half the
    // interval, for as long as it turns.
    if (int r = sd_event_set_watchdog(loop_.get(), 1); r < 0) {
        spdlog::warn("watchdog: {}; running without it", std::strerror(-r));
    }
    check_sd(sd_event_add_time_relative(loop_.get(), &s, CLOCK_MONOTONIC, status_interval_usec, 0,
                                        &Broker::on_status_timer, this),
             "sd_event_add_time(status)");
    status_timer_.reset(s);
    if (config_.exit_idle_time.count() > 0) {
        note_activity();
        schedule_idle_check(last_activity_ + idle_usec(config_.exit_idle_time));
    }
}

Broker::~Broker() {
    dbus_.reset();
    clients_.clear();
    pool_.reset();
}

int Broker::run() {
    spdlog::info("nsbrokerd {} listening on {}{} (worker mode {}, idle timeout {}s)",
                 NSBROKER_VERSION, config_.socket_path, activated_ ? " (from systemd)" : "",
                 config_.workers.mode == WorkerMode::fork ? "fork" : "exec",
                 config_.workers.idle_timeout.count());
    sd_notify(0, "READY=1");
    notify_status();
    int r = sd_event_loop(loop_.get());
    if (r < 0) {
        spdlog::error("event loop failed: {}", std::strerror(-r));
        return 1;
    }
    spdlog::info("nsbrokerd stopped");
    return r;
}

void Broker::note_activity() {
    sd_event_now(loop_.get(), CLOCK_MONOTONIC, &last_activity_);
}

void Broker::count_request() {
    ++requests_;
}

void Broker::count_error(ErrorCode code) {
    ++errors_[std::string(to_string(code))];
}

bool Broker::idle() const {
    return clients_.empty() && pool_->jobs_in_flight() == 0 && (!dbus_ || dbus_->idle());
}

// Like a worker's idle timer: armed once, and when it fires, armed again from
// the last activity, so that busy times cost no timer updates.
int Broker::on_idle_check(sd_event_source*, uint64_t now, void* userdata) {
    auto* self = static_cast<Broker*>(userdata);
    const uint64_t idle_time = idle_usec(self->config_.exit_idle_time);
    if (!self->idle()) {
        self->schedule_idle_check(now + idle_time);
    } else if (now < self->last_activity_ + idle_time) {
        self->schedule_idle_check(self->last_activity_ + idle_time);
    } else {
        spdlog::info("idle for {}s: exiting", self->config_.exit_idle_time.count());
        self->stop("idle");
    }
    return 0;
}

void Broker::schedule_idle_check(uint64_t when) {
    if (idle_timer_) {
        sd_event_source_set_time(idle_timer_.get(), when);
        sd_event_source_set_enabled(idle_timer_.get(), SD_EVENT_ONESHOT);
        return;
    }
    sd_event_source* s = nullptr;
    check_sd(
        sd_event_add_time(loop_.get(), &s, CLOCK_MONOTONIC, when, 0, &Broker::on_idle_check, this),
        "sd_event_add_time(idle)");
    idle_timer_.reset(s);
}

int Broker::on_status_timer(sd_event_source* source, uint64_t now, void* userdata) {
    static_cast<Broker*>(userdata)->notify_status();
    sd_event_source_set_time(source, now + status_interval_usec);
    sd_event_source_set_enabled(source, SD_EVENT_ONESHOT);
    return 0;
}

void Broker::notify_status() {
    std::string status = std::to_string(clients_.size()) + " clients, " +
                         std::to_string(pool_->live()) + " workers, " + std::to_string(requests_) +
                         " requests, " + std::to_string(sockets_) + " sockets";
    if (status != last_status_) {
        sd_notifyf(0, "STATUS=%s", status.c_str());
        last_status_ = std::move(status);
    }
}

bool Broker::run_once(std::uint64_t timeout_usec) {
    return sd_event_run(loop_.get(), timeout_usec) >= 0 &&
           sd_event_get_state(loop_.get()) != SD_EVENT_FINISHED;
}

// ---- connections -----------------------------------------------------------

int Broker::on_accept(sd_event_source*, int, uint32_t, void* userdata) {
    static_cast<Broker*>(userdata)->accept_clients();
    return 0;
}

void Broker::accept_clients() {
    for (;;) {
        UniqueFd fd{::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)};
        if (!fd) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                // Out of descriptors: stop accepting for a moment instead of
                // spinning on a listener that stays readable.
                spdlog::warn("accept: {}; pausing new connections", std::strerror(errno));
                sd_event_source_set_enabled(listener_source_.get(), SD_EVENT_OFF);
                sd_event_source* s = nullptr;
                auto resume = [](sd_event_source*, uint64_t, void* userdata) -> int {
                    auto* self = static_cast<Broker*>(userdata);
                    if (self->listener_source_) {
                        sd_event_source_set_enabled(self->listener_source_.get(), SD_EVENT_ON);
                    }
                    return 0;
                };
                if (sd_event_add_time_relative(loop_.get(), &s, CLOCK_MONOTONIC, accept_pause_usec,
                                               0, resume, this) >= 0) {
                    accept_pause_.reset(s);
                }
            }
            return;
        }
        auto c = std::make_shared<Connection>();
        socklen_t length = sizeof(c->peer);
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &c->peer, &length) < 0) {
            // Without an identity nothing can be authorized.
            spdlog::warn("SO_PEERCRED: {}; connection refused", std::strerror(errno));
            continue;
        }
        auto groups = peer_groups(fd.get());
        if (!groups) {
            spdlog::warn("SO_PEERGROUPS: {}; connection refused", std::strerror(errno));
            continue;
        }
        c->groups = std::move(*groups);
        auto pidfd = peer_pidfd(fd.get());
        if (!pidfd) {
            spdlog::warn("SO_PEERPIDFD: {}; connection refused", std::strerror(errno));
            continue;
        }
        c->pidfd = std::move(*pidfd);
        if (auto why = connection_refusal(c->peer.uid)) {
            spdlog::warn("connection from pid {} uid {} refused: {}", c->peer.pid, c->peer.uid,
                         *why);
            auto refusal = proto::encode_reply({std::nullopt, make_error(ErrorCode::limit, *why)});
            (void)proto::send_message(fd.get(), refusal, {}, true);
            count_error(ErrorCode::limit);
            continue;
        }
        ++connections_per_uid_[c->peer.uid];
        c->broker = this;
        c->fd = std::move(fd);
        c->account.uid = c->peer.uid;
        c->account.fd = c->fd.get();
        sd_event_source* s = nullptr;
        if (sd_event_add_io(loop_.get(), &s, c->fd.get(), EPOLLIN, &Broker::on_client, c.get()) <
            0) {
            continue;
        }
        c->source.reset(s);
        spdlog::debug("client connected: pid {} uid {} gid {}", c->peer.pid, c->peer.uid,
                      c->peer.gid);
        clients_.emplace(c.get(), std::move(c));
    }
}

int Broker::on_client(sd_event_source*, int, uint32_t revents, void* userdata) {
    auto* raw = static_cast<Connection*>(userdata);
    // Keeps the connection alive to the end of this event, even if it closes.
    auto c = raw->shared_from_this();
    c->broker->client_event(c, revents);
    return 0;
}

void Broker::client_event(const std::shared_ptr<Connection>& c, uint32_t revents) {
    // What is logged while this client is served says whose it is.
    ScopedLogFields fields{{c->peer.uid, c->peer.pid, {}, {}}};
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
            c->outbox.size() < config_.limits.unread_replies) {
            auto received = proto::receive_message(c->fd.get(), proto::max_message_size, true);
            switch (received.status) {
            case proto::ReceiveStatus::would_block:
                break;
            case proto::ReceiveStatus::closed:
                // shutdown(SHUT_WR) after its requests: they are still answered.
                if (!c->answered_all()) {
                    c->read_closed = true;
                    break;
                }
                close_client(*c);
                return;
            case proto::ReceiveStatus::fds_truncated:
                spdlog::warn("client pid {} uid {}: message with too many descriptors; "
                             "disconnected",
                             c->peer.pid, c->peer.uid);
                close_client(*c);
                return;
            case proto::ReceiveStatus::too_large:
                ++requests_;
                reply(*c, std::nullopt,
                      make_error(ErrorCode::limit, "message larger than " +
                                                       std::to_string(proto::max_message_size) +
                                                       " bytes"));
                break;
            case proto::ReceiveStatus::message:
                handle_message(c, std::move(received.message));
                break;
            }
        }
        update_events(*c);
    } catch (const std::exception& e) {
        spdlog::warn("client pid {} uid {}: {}; disconnected", c->peer.pid, c->peer.uid, e.what());
        close_client(*c);
    }
}

std::optional<std::string> Broker::connection_refusal(uid_t uid) const {
    const auto& limits = config_.limits;
    auto root = connections_per_uid_.find(0);
    std::size_t others = clients_.size() - (root == connections_per_uid_.end() ? 0 : root->second);
    if (uid != 0 && others >= limits.connections) {
        return "the daemon serves at most " + std::to_string(limits.connections) +
               " connections of users other than root";
    }
    auto it = connections_per_uid_.find(uid);
    if (it != connections_per_uid_.end() && it->second >= limits.connections_per_uid) {
        return "uid " + std::to_string(uid) + " has " + std::to_string(it->second) +
               " connections, the most it may have";
    }
    return std::nullopt;
}

void Broker::close_client(Connection& c) {
    if (c.closed) {
        return;
    }
    c.closed = true;
    spdlog::debug("client disconnected: pid {} uid {}", c.peer.pid, c.peer.uid);
    note_activity();
    c.source.reset();
    c.outbox.clear();
    c.waiting.reset();
    waiting_.erase(&c);
    budget_.close(c.account);
    budget_.refresh(c.account);
    if (c.account.unread > 0) {
        // The peer may still hold replies it never read, charged to the
        // daemon's user until it reads them or closes: they stay counted,
        // and so does the connection, until then.
        lingering_.insert(&c);
        arm_budget_timer();
        retry_waiting();
        return;
    }
    forget_client(c);
    retry_waiting();
}

void Broker::forget_client(Connection& c) {
    lingering_.erase(&c);
    budget_.forget(c.account);
    if (auto it = connections_per_uid_.find(c.peer.uid); it != connections_per_uid_.end()) {
        if (--it->second == 0) {
            connections_per_uid_.erase(it);
        }
    }
    c.fd.reset();
    clients_.erase(&c);
}

void Broker::retry_waiting() {
    // One at a time, looking afresh after each: serving one may close a
    // connection and come back here.
    for (bool served = true; served;) {
        served = false;
        for (Connection* raw : waiting_) {
            if (!budget_.admit(raw->account, proto::socket_count(raw->waiting->request.specs))) {
                continue;
            }
            auto c = raw->shared_from_this();
            waiting_.erase(raw);
            auto waiting = std::move(*c->waiting);
            c->waiting.reset();
            ScopedLogFields fields{{c->peer.uid, c->peer.pid, {}, {}}};
            try {
                submit_socket(c, waiting.request, std::move(waiting.netns_fd));
                update_events(*c);
            } catch (const std::exception& e) {
                spdlog::warn("client pid {} uid {}: {}; disconnected", c->peer.pid, c->peer.uid,
                             e.what());
                close_client(*c);
            }
            served = true;
            break;
        }
    }
}

void Broker::arm_budget_timer() {
    if (budget_timer_) {
        if (int enabled = 0;
            sd_event_source_get_enabled(budget_timer_.get(), &enabled) >= 0 && enabled) {
            return;
        }
        uint64_t now = 0;
        sd_event_now(loop_.get(), CLOCK_MONOTONIC, &now);
        sd_event_source_set_time(budget_timer_.get(), now + budget_retry_usec);
        sd_event_source_set_enabled(budget_timer_.get(), SD_EVENT_ONESHOT);
        return;
    }
    sd_event_source* s = nullptr;
    check_sd(sd_event_add_time_relative(loop_.get(), &s, CLOCK_MONOTONIC, budget_retry_usec, 0,
                                        &Broker::on_budget_timer, this),
             "sd_event_add_time(budget)");
    budget_timer_.reset(s);
}

int Broker::on_budget_timer(sd_event_source*, uint64_t, void* userdata) {
    auto* self = static_cast<Broker*>(userdata);
    try {
        self->budget_.refresh_all();
        std::vector<Connection*> read_all;
        for (Connection* c : self->lingering_) {
            if (c->account.unread == 0) {
                read_all.push_back(c);
            }
        }
        for (Connection* c : read_all) {
            self->forget_client(*c);
        }
        self->retry_waiting();
        if (!self->waiting_.empty() || !self->lingering_.empty()) {
            self->arm_budget_timer();
        }
    } catch (const std::exception& e) {
        spdlog::error("descriptor budget: {}", e.what());
    }
    return 0;
}

void Broker::update_events(Connection& c) {
    if (c.closed) {
        return;
    }
    uint32_t events = 0;
    if (c.outbox.size() < config_.limits.unread_replies && !c.waiting && !c.read_closed) {
        events |= EPOLLIN;
    }
    if (!c.outbox.empty()) {
        events |= EPOLLOUT;
    }
    sd_event_source_set_io_events(c.source.get(), events);
}

void Broker::reply(Connection& c, std::optional<std::uint64_t> id, proto::ReplyBody body,
                   std::vector<UniqueFd> fds) {
    if (auto* error = std::get_if<Error>(&body)) {
        count_error(error->code);
    }
    if (c.closed) {
        return;
    }
    c.outbox.push_back({proto::encode_reply(proto::Reply{id, std::move(body)}), std::move(fds)});
    flush(c);
}

void Broker::flush(Connection& c) {
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

// ---- requests --------------------------------------------------------------

void Broker::handle_message(const std::shared_ptr<Connection>& c, proto::Message message) {
    ++requests_;
    auto decoded = proto::decode_request(message.data);
    if (auto* bad = std::get_if<proto::RequestError>(&decoded)) {
        spdlog::debug("client pid {}: {}", c->peer.pid, bad->error.message);
        reply(*c, bad->id, bad->error);
        return; // any fds sent along close with the message
    }
    auto& request = std::get<proto::Request>(decoded);
    bool takes_fd = request.op == proto::Op::socket && request.netns &&
                    request.netns->kind == proto::NetnsRef::Kind::fd;
    if (message.fds.size() > 1) {
        reply(*c, request.id,
              make_error(ErrorCode::invalid_request,
                         "a request carries at most one file descriptor, got " +
                             std::to_string(message.fds.size())));
        return;
    }
    if (!message.fds.empty() && !takes_fd) {
        reply(*c, request.id,
              make_error(ErrorCode::invalid_request,
                         "unexpected file descriptor: only a socket request with netns {\"fd\": 0} "
                         "carries one"));
        return;
    }
    if (stopping_) {
        reply(*c, request.id, make_error(ErrorCode::unavailable, "the daemon is shutting down"));
        return;
    }
    // Sockets are the policy's business; the daemon's inner state is root's.
    bool inner_state = request.op == proto::Op::namespaces || request.op == proto::Op::stats;
    if (c->peer.uid != 0 && inner_state) {
        spdlog::info("denied {} from pid {} uid {}: not root", to_string(request.op), c->peer.pid,
                     c->peer.uid);
        reply(*c, request.id,
              make_error(ErrorCode::permission_denied,
                         std::string(to_string(request.op)) + " is for root only", EPERM));
        return;
    }
    switch (request.op) {
    case proto::Op::hello:
        reply(*c, request.id,
              proto::HelloReply{proto::protocol_version, NSBROKER_VERSION,
                                features(config_.workers.mode)});
        return;
    case proto::Op::ping:
        reply(*c, request.id, proto::PongReply{});
        return;
    case proto::Op::namespaces:
        reply(*c, request.id, list_namespaces());
        return;
    case proto::Op::stats:
        reply(*c, request.id, stats());
        return;
    case proto::Op::socket:
        handle_socket(c, request,
                      message.fds.empty() ? UniqueFd{} : std::move(message.fds.front()));
        return;
    }
}

void Broker::handle_socket(const std::shared_ptr<Connection>& c, proto::Request& request,
                           UniqueFd passed_fd) {
    if (c->in_flight >= config_.limits.requests_in_flight) {
        reply(*c, request.id,
              make_error(ErrorCode::limit,
                         std::to_string(c->in_flight) +
                             " requests in flight on this connection, the most it may have"));
        return;
    }
    if (!budget_.admit(c->account, proto::socket_count(request.specs))) {
        spdlog::debug("client pid {} uid {}: request {} waits for its descriptor budget",
                      c->peer.pid, c->peer.uid, request.id);
        c->waiting = Connection::Waiting{std::move(request), std::move(passed_fd)};
        waiting_.insert(c.get());
        arm_budget_timer();
        return;
    }
    submit_socket(c, request, std::move(passed_fd));
}

void Broker::submit_socket(const std::shared_ptr<Connection>& c, proto::Request& request,
                           UniqueFd passed_fd) {
    ++c->in_flight;
    std::weak_ptr<Connection> weak = c;
    auto id = request.id;
    const std::size_t asked = proto::socket_count(request.specs);
    JobDone done = [this, weak, id, asked](Result<proto::SocketReply> result,
                                           std::vector<UniqueFd> fds) {
        auto client = weak.lock();
        if (!client || client->closed) {
            if (!result) {
                count_error(result.error().code);
            }
            return; // the client left; the fds close here
        }
        --client->in_flight;
        budget_.release(client->account, asked - fds.size());
        if (result) {
            reply(*client, id, std::move(result).value(), std::move(fds));
        } else {
            reply(*client, id, std::move(result).error());
        }
    };
    SocketRequest r{
        c->caller(),          {c->peer.pid, c->pidfd.get()}, id,          std::move(*request.netns),
        std::move(passed_fd), std::move(request.specs),      c->in_flight};
    open_sockets(std::move(r), std::move(done));
}

namespace {

// A D-Bus caller whose gid the bus does not vouch for gets the kernel's
// overflow gid, which owns nothing.
constexpr gid_t unknown_gid = 65534;

proto::JobCaller job_caller(const Caller& caller) {
    return {caller.uid, caller.gid == static_cast<gid_t>(-1) ? unknown_gid : caller.gid,
            caller.groups};
}

} // namespace

void Broker::open_sockets(SocketRequest request, JobDone done) {
    note_activity();
    const auto& ref = request.netns;
    const bool root = request.caller.uid == 0;
    if (auto why = unix_address_refusal(request.caller, request.specs)) {
        done(root ? make_error(ErrorCode::invalid_request, *why)
                  : make_error(ErrorCode::permission_denied, *why, EPERM),
             {});
        return;
    }
    // What the worker answers is counted, and a refusal by the worker logged
    // (only callers other than root can be refused there).
    auto from_worker = [this, uid = request.caller.uid, pid = request.caller.pid, id = request.id,
                        netns = root ? std::string() : ref.describe()](JobDone inner) -> JobDone {
        return [this, uid, pid, id, netns, inner = std::move(inner)](
                   Result<proto::SocketReply> result, std::vector<UniqueFd> fds) {
            note_activity();
            if (result) {
                sockets_ += fds.size();
            } else if (result.error().code == ErrorCode::permission_denied) {
                // The worker's part of the policy: ports below the
                // namespace's ip_unprivileged_port_start.
                ScopedLogFields fields{{uid, pid, netns, "permission_denied"}};
                spdlog::warn("denied socket request {} of uid {} pid {} in {} by its worker: {}",
                             id, uid, pid, netns, result.error().message);
            }
            inner(std::move(result), std::move(fds));
        };
    };
    proto::WorkerJob job{0, std::move(request.specs), job_caller(request.caller), std::nullopt};
    // Root's requests need no facts about the namespace, so one that already
    // has a worker is found by one stat(2).
    if (root) {
        std::optional<std::string> name;
        if (ref.kind == proto::NetnsRef::Kind::name) {
            name = ref.text;
        }
        auto known = peek_identity(ref, request.netns_fd.get(), config_.workers.netns_dir);
        if (known) {
            JobDone to_worker = from_worker(done);
            if (pool_->submit_to_running(*known, name, job, to_worker)) {
                return;
            }
        }
    }

    // A path would be opened with the daemon's rights, in its mount
    // namespace, where /proc/self is the daemon: whatever it answered would
    // tell the caller about files it cannot see. A caller opens its paths
    // itself and sends the descriptor (the library does).
    if (!root && ref.kind == proto::NetnsRef::Kind::path) {
        done(make_error(ErrorCode::permission_denied,
                        "nsbrokerd opens no path for a caller other than root: open it yourself "
                        "and send the descriptor ({\"fd\": 0}; libnsbroker does this for you)",
                        EPERM),
             {});
        return;
    }
    auto netns =
        resolve_netns(ref, std::move(request.netns_fd), config_.workers.netns_dir, request.process);
    if (!netns) {
        spdlog::debug("pid {}: {}: {}", request.caller.pid, ref.describe(), netns.error().message);
        done(std::move(netns).error(), {});
        return;
    }
    WorkerSponsor sponsor;
    if (!root) {
        auto decision = authorize(request, job.specs, *netns);
        if (!decision) {
            done(std::move(decision).error(), {});
            return;
        }
        if (const Rule* rule = decision->rule) {
            if (request.in_flight > rule->max_requests_in_flight) {
                done(make_error(ErrorCode::limit, "rule \"" + rule->name + "\" allows " +
                                                      std::to_string(rule->max_requests_in_flight) +
                                                      " requests in flight"),
                     {});
                return;
            }
            job.restricted = job_restriction(*rule);
        }
        if (decision->owned_only) {
            sponsor.uid = request.caller.uid;
        }
    }
    if (netns->name) {
        netns_watch_->ensure();
    }
    pool_->submit(std::move(*netns), std::move(job), sponsor, from_worker(std::move(done)));
}

Result<Decision> Broker::authorize(const SocketRequest& request,
                                   const std::vector<proto::SocketSpec>& specs,
                                   const ResolvedNetns& netns) {
    const Caller& caller = request.caller;
    NamespaceFacts facts;
    facts.name = netns.name;
    auto owned = netns_owned_by(netns.fd.get(), caller.uid);
    facts.owned_by_caller = owned && *owned;
    Decision decision = policy_.decide(caller, facts, specs);
    if (decision.allowed) {
        return decision;
    }
    ScopedLogFields fields{{caller.uid, caller.pid, request.netns.describe(), "permission_denied"}};
    spdlog::warn("denied socket request {} of uid {} pid {} in {} ({}:{}): {}", request.id,
                 caller.uid, caller.pid, request.netns.describe(), netns.identity.dev,
                 netns.identity.ino, decision.reason);
    return make_error(ErrorCode::permission_denied, decision.reason, EPERM);
}

proto::NamespacesReply Broker::list_namespaces() const {
    proto::NamespacesReply out;
    auto known = pool_->describe();
    auto find = [&known](const NetnsIdentity& id) {
        return std::find_if(known.begin(), known.end(),
                            [&id](const auto& n) { return n.dev == id.dev && n.ino == id.ino; });
    };
    const std::string& dir = config_.workers.netns_dir;
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* entry = ::readdir(d)) {
            std::string name = entry->d_name;
            if (name == "." || name == "..") {
                continue;
            }
            auto ns = open_netns_path(dir + "/" + name);
            if (!ns) {
                continue;
            }
            auto it = find(ns->identity);
            if (it == known.end()) {
                proto::NamespaceInfo info;
                info.dev = ns->identity.dev;
                info.ino = ns->identity.ino;
                info.state = "idle";
                known.push_back(std::move(info));
                it = std::prev(known.end());
            }
            if (std::find(it->names.begin(), it->names.end(), name) == it->names.end()) {
                it->names.push_back(name);
            }
        }
        ::closedir(d);
    }
    for (auto& n : known) {
        std::sort(n.names.begin(), n.names.end());
    }
    std::sort(known.begin(), known.end(), [](const auto& a, const auto& b) {
        return std::tie(a.names, a.dev, a.ino) < std::tie(b.names, b.dev, b.ino);
    });
    // Keep the reply within one message; the caller learns it was cut.
    out.namespaces = std::move(known);
    while (!out.namespaces.empty() &&
           proto::encode_reply(proto::Reply{UINT64_MAX, out}).size() > proto::max_message_size) {
        out.namespaces.resize(out.namespaces.size() * 3 / 4);
        out.truncated = true;
    }
    return out;
}

proto::StatsReply Broker::stats() const {
    proto::StatsReply s;
    s.uptime_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    s.requests = requests_;
    s.sockets = sockets_;
    s.errors = errors_;
    s.clients = clients_.size();
    s.workers_spawned = pool_->spawned();
    s.workers_live = pool_->live();
    s.workers_exited = pool_->exited();
    return s;
}

// ---- shutdown --------------------------------------------------------------

int Broker::on_stop_signal(sd_event_source*, const struct signalfd_siginfo* si, void* userdata) {
    spdlog::info("signal {}: stopping", sigabbrev_np(static_cast<int>(si->ssi_signo)));
    static_cast<Broker*>(userdata)->stop("signal");
    return 0;
}

int Broker::on_reload_signal(sd_event_source*, const struct signalfd_siginfo*, void* userdata) {
    static_cast<Broker*>(userdata)->reload_policy();
    return 0;
}

void Broker::reload_policy() {
    sd_notify(0, "RELOADING=1");
    auto fresh = Policy::load(config_.policy_path);
    if (!fresh) {
        spdlog::error("SIGHUP: policy {} refused; the policy in force stays: {}",
                      config_.policy_path, fresh.error().message);
    } else {
        policy_ = std::move(*fresh);
        spdlog::info("SIGHUP: policy {} ({} rules) in force", policy_.origin(),
                     policy_.rules().size());
    }
    sd_notify(0, "READY=1");
}

void Broker::stop(const char* why) {
    if (stopping_) {
        return;
    }
    stopping_ = true;
    sd_notifyf(0, "STOPPING=1\nSTATUS=stopping (%s)", why);
    // No new connections; requests already with a worker are finished, since
    // a retiring worker answers every job it was sent before it exits. A
    // socket from systemd stays where it is, to start the daemon again.
    listener_source_.reset();
    listener_.reset();
    if (!activated_) {
        ::unlink(config_.socket_path.c_str());
    }
    if (dbus_) {
        dbus_->release_name();
    }
    pool_->stop([this] {
        std::vector<std::shared_ptr<Connection>> clients;
        for (auto& [raw, c] : clients_) {
            clients.push_back(c);
        }
        for (auto& c : clients) {
            try {
                flush(*c);
            } catch (const std::exception&) {
            }
        }
        sd_event_exit(loop_.get(), 0);
    });
}

} // namespace nsbroker::daemon
