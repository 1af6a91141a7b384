// A worker process seen from the daemon: starting it, sending it jobs,
// reading its replies, its timers, and telling its owner when it goes.
#include "workers/worker.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <spdlog/spdlog.h>

#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "nsbroker/throw_errno.hpp"
#include "sys/logging.hpp"
#include "workers/worker_main.hpp"

namespace nsbroker::daemon {

namespace {

// Each watch holds a pidfd in the daemon, and any number of processes may
// reach one namespace by pid; the bound keeps that to a few descriptors per
// worker. One live watched process is enough to keep the worker, so a
// process past the bound only risks the worker going before it does, to be
// started again on its next request.
constexpr std::size_t max_watched_processes = 16;

std::string describe_identity(const NetnsIdentity& id) {
    return std::to_string(id.dev) + ":" + std::to_string(id.ino);
}

std::uint64_t to_usec(std::chrono::seconds s) {
    return static_cast<std::uint64_t>(std::chrono::microseconds(s).count());
}

} // namespace

std::unique_ptr<Worker> Worker::launch(sd_event* loop, WorkerOwner& owner,
                                       const WorkerSettings& settings, const WorkerKit& kit,
                                       int netns_fd) {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
        throw_errno("socketpair");
    }
    UniqueFd ours{pair[0]};
    UniqueFd theirs{pair[1]};
    // Built before fork: the child only calls async-signal-safe functions
    // until it execs or becomes the worker (the daemon has one thread, so
    // the worker may then use the allocator).
    std::string log_level = settings.log_level;
    const char* argv[] = {"nsbroker-worker", "--log-level", log_level.c_str(), nullptr};

    pid_t pid = ::fork();
    if (pid < 0) {
        throw_errno("fork");
    }
    if (pid == 0) {
        const bool exec = settings.mode == WorkerMode::exec;
        if (!place_worker_fds(theirs.get(), netns_fd, exec ? kit.filter.sealed().get() : -1)) {
            ::_exit(127);
        }
        if (exec) {
            ::execv(kit.executable.c_str(), const_cast<char* const*>(argv));
            ::_exit(127);
        }
        spdlog::set_default_logger(kit.logger);
        ::_exit(run_worker(&kit.filter));
    }
    theirs.reset();
    int flags = ::fcntl(ours.get(), F_GETFL);
    ::fcntl(ours.get(), F_SETFL, flags | O_NONBLOCK);
    try {
        return std::unique_ptr<Worker>(new Worker(loop, owner, settings, pid, std::move(ours)));
    } catch (...) {
        // Without its event sources nobody would reap it.
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        throw;
    }
}

std::unique_ptr<Worker> Worker::start(sd_event* loop, WorkerOwner& owner,
                                      const WorkerSettings& settings, const WorkerKit& kit,
                                      ResolvedNetns netns, WorkerSponsor sponsor) {
    auto worker = launch(loop, owner, settings, kit, netns.fd.get());
    netns.fd.reset();
    worker->state_ = State::starting;
    worker->serve(std::move(netns), sponsor);
    return worker;
}

std::unique_ptr<Worker> Worker::start_spare(sd_event* loop, WorkerOwner& owner,
                                            const WorkerSettings& settings, const WorkerKit& kit) {
    auto worker = launch(loop, owner, settings, kit, -1);
    spdlog::debug("spare worker {} started", worker->pid_);
    return worker;
}

void Worker::enter(ResolvedNetns netns, WorkerSponsor sponsor) {
    state_ = State::starting;
    // Sent with the first job (submit), once the owner holds the worker as
    // live: a spare found dead then fails that job as any worker would.
    outbox_.push_back({proto::encode_enter_namespace(), std::move(netns.fd)});
    serve(std::move(netns), sponsor);
}

void Worker::serve(ResolvedNetns netns, WorkerSponsor sponsor) {
    spare_ = false;
    identity_ = netns.identity;
    sponsor_ = sponsor.uid;
    reached(sponsor, netns.name, std::move(netns.pidfd));
    spdlog::info("worker {} started for namespace {}{}", pid_, describe_identity(identity_),
                 netns.name ? " (" + *netns.name + ")" : std::string{});
}

Worker::Worker(sd_event* loop, WorkerOwner& owner, const WorkerSettings& settings, pid_t pid,
               UniqueFd channel)
    : loop_(loop), owner_(owner), settings_(settings), pid_(pid), channel_(std::move(channel)),
      idle_timer_(loop, [this](std::uint64_t armed_for) { on_idle_timer(armed_for); }),
      job_deadline_(loop, [this](std::uint64_t armed_for) { on_job_deadline(armed_for); }) {
    sd_event_source* s = nullptr;
    check_sd(sd_event_add_io(loop_, &s, channel_.get(), EPOLLIN, &Worker::on_io, this),
             "sd_event_add_io(worker)");
    io_.reset(s);
    check_sd(sd_event_add_child(loop_, &s, pid_, WEXITED, &Worker::on_exit, this),
             "sd_event_add_child");
    child_.reset(s);
    // Should the daemon drop this handle early, the process is killed, not leaked.
    sd_event_source_set_child_process_own(child_.get(), 1);
}

Worker::~Worker() = default;

void Worker::reached(const WorkerSponsor& sponsor, const std::optional<std::string>& name,
                     UniqueFd pidfd) {
    if (sponsor_ != sponsor.uid) {
        sponsor_.reset();
    }
    if (name) {
        names_.insert(*name);
    }
    if (pidfd) {
        watch_process(std::move(pidfd));
    }
}

proto::NamespaceInfo Worker::describe() const {
    // The wire has one word for a worker that is going away, whether it
    // was asked to or failed.
    static constexpr const char* state_names[] = {"starting", "starting", "ready", "exiting",
                                                  "exiting"};
    proto::NamespaceInfo info;
    info.dev = identity_.dev;
    info.ino = identity_.ino;
    info.names.assign(names_.begin(), names_.end());
    info.worker_pid = pid_;
    info.state = state_names[static_cast<int>(state_)];
    info.requests = requests_;
    info.sockets = sockets_;
    return info;
}

bool Worker::alive() {
    if (state_ == State::dead || !channel_) {
        return false;
    }
    pollfd p{channel_.get(), 0, 0};
    if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)) != 0) {
        read_replies();
    }
    return state_ != State::dead;
}

void Worker::submit(proto::WorkerJob job, JobDone done) {
    job.id = next_job_++;
    std::size_t expected = proto::socket_count(job.specs);
    touch();
    pending_.emplace(job.id, Pending{expected, std::move(done), last_used_ + job_usec()});
    ++requests_;
    outbox_.push_back({proto::encode_job(job), {}});
    arm_job_deadline();
    flush();
}

bool Worker::grant_channel(const proto::ChannelGrant& grant, UniqueFd worker_end,
                           std::unique_ptr<ChannelLease> lease) {
    if (state_ == State::exiting || state_ == State::dead) {
        return false;
    }
    UniqueFd kept{::fcntl(worker_end.get(), F_DUPFD_CLOEXEC, 0)};
    if (!kept) {
        spdlog::warn("worker {}: cannot keep a copy of a direct channel: {}", pid_,
                     std::strerror(errno));
        return false;
    }
    outbox_.push_back({proto::encode_channel_grant(grant), std::move(worker_end)});
    channels_.emplace(grant.id, GrantedChannel{std::move(kept), std::move(lease)});
    flush();
    return true;
}

void Worker::revoke_channels() {
    if (channels_.empty() || state_ == State::dead) {
        return;
    }
    outbox_.push_back({proto::encode_revoke({true, {}}), {}});
    flush();
}

void Worker::exit_when_done(const char* why) {
    processes_.clear();
    if (state_ == State::exiting || state_ == State::dead) {
        return;
    }
    spdlog::debug("worker {} for {}: exiting ({})", pid_, describe_identity(identity_), why);
    state_ = State::exiting;
    asked_to_exit_ = true;
    idle_timer_.disarm();
    if (outbox_.empty()) {
        ::shutdown(channel_.get(), SHUT_WR);
    }
    owner_.worker_exiting(*this);
}

void Worker::kill_now() {
    ::kill(pid_, SIGKILL);
}

int Worker::on_io(sd_event_source*, int, uint32_t revents, void* userdata) {
    auto* self = static_cast<Worker*>(userdata);
    try {
        if (revents & EPOLLOUT) {
            self->flush();
        }
        // One message per wake-up: the loop calls again while more are
        // queued, and a reply is not delayed by a read that finds nothing.
        if (self->state_ != State::dead && (revents & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
            self->read_reply();
        }
    } catch (const std::exception& e) {
        self->fail(std::string("worker channel: ") + e.what());
    }
    return 0;
}

int Worker::on_exit(sd_event_source*, const siginfo_t* si, void* userdata) {
    auto* self = static_cast<Worker*>(userdata);
    if (si->si_code == CLD_EXITED) {
        self->exit_reason_ = "exited with status " + std::to_string(si->si_status);
    } else {
        self->exit_reason_ = std::string("killed by signal ") + sigabbrev_np(si->si_status);
    }
    bool quiet = self->asked_to_exit_ && si->si_code == CLD_EXITED && si->si_status == 0;
    if (quiet) {
        spdlog::debug("worker {} {}", self->pid_, self->exit_reason_);
    } else if (self->spare_) {
        spdlog::warn("spare worker {} {}", self->pid_, self->exit_reason_);
    } else {
        spdlog::warn("worker {} for {} {}", self->pid_, describe_identity(self->identity_),
                     self->exit_reason_);
    }
    // Replies the worker sent before it exited are still delivered.
    if (self->state_ != State::dead) {
        try {
            self->read_replies();
        } catch (const std::exception& e) {
            // What could not be read fails below with the rest.
            spdlog::warn("worker {}: its last replies: {}", self->pid_, e.what());
        }
        self->fail("worker " + self->exit_reason_);
    }
    // The owner may destroy the Worker here: this is the last use of self.
    self->owner_.worker_reaped(*self);
    return 0;
}

// The idle timer is armed once and, when it fires, re-armed from the last
// time the worker was used: busy workers cost no timer updates.
void Worker::on_idle_timer(std::uint64_t armed_for) {
    std::uint64_t due = last_used_ + idle_usec();
    if (!pending_.empty() || armed_for < due) {
        idle_timer_.arm_at(pending_.empty() ? due : armed_for + idle_usec());
        return;
    }
    exit_when_done("idle");
}

void Worker::arm_idle_timer() {
    if (settings_.idle_timeout.count() != 0 && state_ == State::ready && !idle_timer_.armed()) {
        idle_timer_.arm_in(idle_usec());
    }
}

// Only a name or a live process that was named says the namespace lives
// without the worker; otherwise it may be all that keeps it alive.
bool Worker::kept_for_long() const {
    return !names_.empty() || !processes_.empty();
}

std::chrono::seconds Worker::idle_timeout() const {
    if (kept_for_long() || settings_.unnamed_idle_timeout.count() == 0) {
        return settings_.idle_timeout;
    }
    if (settings_.idle_timeout.count() == 0) {
        return settings_.unnamed_idle_timeout;
    }
    return std::min(settings_.idle_timeout, settings_.unnamed_idle_timeout);
}

std::uint64_t Worker::idle_usec() const {
    return to_usec(idle_timeout());
}

// The process a pid reference named: when it exits, so does the reason to
// keep its namespace's worker.
void Worker::watch_process(UniqueFd pidfd) {
    if (processes_.size() >= max_watched_processes) {
        return;
    }
    sd_event_source* s = nullptr;
    if (sd_event_add_io(loop_, &s, pidfd.get(), EPOLLIN, &Worker::on_process_exit, this) < 0) {
        return;
    }
    processes_.push_back({std::move(pidfd), EventSource{s}});
}

// The process exited: when nothing else names the namespace, the worker may
// be all that keeps it alive, so it finishes what it was sent and goes.
int Worker::on_process_exit(sd_event_source* source, int, uint32_t, void* userdata) {
    auto* self = static_cast<Worker*>(userdata);
    std::erase_if(self->processes_,
                  [source](const WatchedProcess& p) { return p.source.get() == source; });
    if (!self->kept_for_long() && self->state_ == State::ready) {
        self->exit_when_done("the process that named its namespace exited");
    }
    return 0;
}

std::uint64_t Worker::now() const {
    std::uint64_t usec = 0;
    sd_event_now(loop_, CLOCK_MONOTONIC, &usec);
    return usec;
}

// Every job has a deadline. One timer serves them all: armed for the oldest
// job, and when it fires, either that job is late (the worker is killed) or
// it re-arms for whichever job is oldest then. A busy worker thus costs about
// one timer update per timeout, not one per job.
std::uint64_t Worker::job_usec() const {
    return to_usec(settings_.job_timeout);
}

void Worker::arm_job_deadline() {
    if (job_deadline_.armed() || pending_.empty() || job_usec() == 0) {
        return;
    }
    job_deadline_.arm_at(pending_.begin()->second.deadline);
}

void Worker::on_job_deadline(std::uint64_t armed_for) {
    if (pending_.empty()) {
        return;
    }
    if (armed_for >= pending_.begin()->second.deadline) {
        auto seconds = settings_.job_timeout.count();
        spdlog::warn("worker {} did not answer within {} s; killing it", pid_, seconds);
        kill_now();
        fail("worker did not answer within " + std::to_string(seconds) + " s");
        return;
    }
    arm_job_deadline();
}

void Worker::flush() {
    while (!outbox_.empty() && channel_) {
        const auto& next = outbox_.front();
        const int fds[1] = {next.fd.get()};
        auto status = proto::send_message(channel_.get(), next.data,
                                          std::span<const int>(fds, next.fd ? 1 : 0), true);
        if (status == proto::SendStatus::would_block) {
            break;
        }
        if (status == proto::SendStatus::closed) {
            fail("worker closed its channel");
            return;
        }
        outbox_.pop_front();
    }
    if (!channel_) {
        return;
    }
    sd_event_source_set_io_events(io_.get(), outbox_.empty() ? EPOLLIN : EPOLLIN | EPOLLOUT);
    if (outbox_.empty() && state_ == State::exiting) {
        ::shutdown(channel_.get(), SHUT_WR);
    }
}

// Reads and handles one message; false when there is nothing more to read.
bool Worker::read_reply() {
    if (!channel_) {
        return false;
    }
    auto received = proto::receive_message(channel_.get(), proto::max_message_size, true);
    switch (received.status) {
    case proto::ReceiveStatus::would_block:
        return false;
    case proto::ReceiveStatus::closed:
        fail(startup_error_.empty() ? "worker closed its channel" : startup_error_);
        return false;
    case proto::ReceiveStatus::too_large:
        kill_now();
        fail("worker sent an unreadable message");
        return false;
    case proto::ReceiveStatus::fds_truncated:
        // nsbrokerd is at its own descriptor limit: the worker did its job.
        handle_reply(std::move(received.message), true);
        return true;
    case proto::ReceiveStatus::message:
        handle_reply(std::move(received.message), false);
        return true;
    }
    return false;
}

void Worker::read_replies() {
    while (read_reply()) {
    }
}

void Worker::handle_reply(proto::Message message, bool fds_lost) {
    if (auto notice = proto::decode_notice(message.data)) {
        if (auto* closed = std::get_if<proto::ChannelClosed>(&*notice)) {
            end_channel(closed->id);
        } else if (auto* served = std::get_if<proto::ChannelsServed>(&*notice)) {
            requests_ += served->requests;
            sockets_ += served->sockets;
            touch();
            owner_.channels_served(*served);
        }
        return;
    }
    auto reply = proto::decode_reply(message.data, proto::Op::socket);
    if (!reply || !reply->id) {
        kill_now();
        fail("worker sent a malformed reply");
        return;
    }
    if (*reply->id == 0) {
        // The startup notice: in the namespace, or why not.
        if (auto* error = std::get_if<Error>(&reply->body)) {
            startup_error_ = "worker could not enter the namespace: " + error->message;
            spdlog::error("worker {}: {}", pid_, startup_error_);
        } else if (state_ == State::starting) {
            state_ = State::ready;
            arm_idle_timer();
        }
        return;
    }
    auto it = pending_.find(*reply->id);
    if (it == pending_.end()) {
        kill_now();
        fail("worker answered a job it was not given");
        return;
    }
    Pending job = std::move(it->second);
    pending_.erase(it);
    if (fds_lost) {
        spdlog::warn("worker {}: its sockets for a job were lost: nsbrokerd is at its descriptor "
                     "limit",
                     pid_);
        job.done(make_error(ErrorCode::limit,
                            "nsbrokerd is at its descriptor limit: the sockets made for this "
                            "request were lost; it may be sent again",
                            EMFILE),
                 {});
    } else if (auto* error = std::get_if<Error>(&reply->body)) {
        job.done(*error, {});
    } else if (auto* sockets = std::get_if<proto::SocketReply>(&reply->body);
               sockets && sockets->sockets.size() == job.expected_fds &&
               message.fds.size() == job.expected_fds) {
        sockets_ += job.expected_fds;
        job.done(std::move(*sockets), std::move(message.fds));
    } else {
        job.done(make_error(ErrorCode::worker_failed, "worker sent the wrong number of sockets"),
                 {});
        kill_now();
        fail("worker sent the wrong number of sockets");
        return;
    }
    touch();
}

// The worker is gone or unusable: every job in flight fails.
void Worker::fail(const std::string& why) {
    if (state_ == State::dead) {
        return;
    }
    bool was_exiting = state_ == State::exiting;
    state_ = State::dead;
    processes_.clear();
    io_.reset();
    channel_.reset();
    idle_timer_.disarm();
    job_deadline_.disarm();
    outbox_.clear();
    // Its direct channels closed with it; their callers turn to the daemon.
    while (!channels_.empty()) {
        end_channel(channels_.begin()->first);
    }
    auto pending = std::move(pending_);
    pending_.clear();
    if (!pending.empty()) {
        spdlog::warn("worker {}: {}; failing {} request(s)", pid_, why, pending.size());
    }
    if (!was_exiting) {
        owner_.worker_exiting(*this);
    }
    for (auto& [id, job] : pending) {
        job.done(make_error(ErrorCode::worker_failed, why), {});
    }
}

void Worker::end_channel(std::uint64_t id) {
    auto it = channels_.find(id);
    if (it == channels_.end()) {
        return;
    }
    GrantedChannel channel = std::move(it->second);
    channels_.erase(it);
    owner_.channel_ended(std::move(channel));
}

} // namespace nsbroker::daemon
