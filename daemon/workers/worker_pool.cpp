// Worker processes as seen from the daemon's event loop.
#include "workers/worker_pool.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "nsbroker/throw_errno.hpp"
#include "nsbroker/worker_protocol.hpp"
#include "sys/logging.hpp"
#include "workers/worker_main.hpp"

namespace nsbroker::daemon {

namespace {

// How long stop() waits for workers to finish their jobs before killing them.
constexpr std::uint64_t stop_grace_usec = 5'000'000;

std::string describe_identity(const NetnsIdentity& id) {
    return std::to_string(id.dev) + ":" + std::to_string(id.ino);
}

} // namespace

// One worker process and its channel.
class Worker {
  public:
    enum class State { starting, ready, draining, dead };

    Worker(WorkerPool& pool, NetnsIdentity identity, pid_t pid, UniqueFd channel,
           WorkerSponsor sponsor)
        : pool_(pool), identity_(identity), pid_(pid), channel_(std::move(channel)),
          sponsor_(sponsor.uid) {
        sd_event_source* s = nullptr;
        check_sd(sd_event_add_io(pool_.loop_, &s, channel_.get(), EPOLLIN, &Worker::on_io, this),
                 "sd_event_add_io(worker)");
        io_.reset(s);
        check_sd(sd_event_add_child(pool_.loop_, &s, pid_, WEXITED, &Worker::on_exit, this),
                 "sd_event_add_child");
        child_.reset(s);
        // Should the daemon drop this handle early, the process is killed, not leaked.
        sd_event_source_set_child_process_own(child_.get(), 1);
    }

    [[nodiscard]] const NetnsIdentity& identity() const { return identity_; }
    [[nodiscard]] pid_t pid() const { return pid_; }
    [[nodiscard]] std::size_t in_flight() const { return pending_.size(); }
    std::set<std::string>& names() { return names_; }
    [[nodiscard]] const std::optional<uid_t>& sponsor() const { return sponsor_; }

    // Another caller reached the namespace: a worker anyone else uses is no
    // longer one caller's; a name or a live process keeps it longer.
    void reached(const WorkerSponsor& sponsor, const std::optional<std::string>& name,
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

    [[nodiscard]] proto::NamespaceInfo describe() const {
        static constexpr const char* state_names[] = {"starting", "ready", "exiting", "exiting"};
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

    void submit(proto::WorkerJob job, JobDone done) {
        job.id = next_job_++;
        std::size_t expected = proto::socket_count(job.specs);
        touch();
        pending_.emplace(job.id, Pending{expected, std::move(done), last_used_ + job_usec()});
        ++requests_;
        outbox_.push_back(proto::encode_job(job));
        arm_job_timer();
        flush();
    }

    // Lets the worker finish what it has and exit: it reads EOF after its
    // last job. Replies are still read until the channel closes.
    void drain(const char* why) {
        processes_.clear();
        if (state_ == State::draining || state_ == State::dead) {
            return;
        }
        spdlog::debug("worker {} for {}: retiring ({})", pid_, describe_identity(identity_), why);
        state_ = State::draining;
        retired_ = true;
        idle_timer_.reset();
        if (outbox_.empty()) {
            ::shutdown(channel_.get(), SHUT_WR);
        }
        pool_.worker_draining(this);
    }

    // Safe until the process is reaped, and a Worker does not outlive that:
    // its pid cannot have been reused.
    void kill_now() { ::kill(pid_, SIGKILL); }

  private:
    struct Pending {
        std::size_t expected_fds;
        JobDone done;
        uint64_t deadline; // CLOCK_MONOTONIC, microseconds
    };

    static int on_io(sd_event_source*, int, uint32_t revents, void* userdata) {
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

    static int on_exit(sd_event_source*, const siginfo_t* si, void* userdata) {
        auto* self = static_cast<Worker*>(userdata);
        WorkerPool& pool = self->pool_;
        if (si->si_code == CLD_EXITED) {
            self->exit_reason_ = "exited with status " + std::to_string(si->si_status);
        } else {
            self->exit_reason_ = std::string("killed by signal ") + sigabbrev_np(si->si_status);
        }
        bool quiet = self->retired_ && si->si_code == CLD_EXITED && si->si_status == 0;
        if (quiet) {
            spdlog::debug("worker {} {}", self->pid_, self->exit_reason_);
        } else {
            spdlog::warn("worker {} for {} {}", self->pid_, describe_identity(self->identity_),
                         self->exit_reason_);
        }
        // Replies the worker sent before it exited are still delivered.
        if (self->state_ != State::dead) {
            try {
                self->read_replies();
            } catch (const std::exception&) {
            }
            self->fail("worker " + self->exit_reason_);
        }
        // The process is reaped; nothing may touch self after this call.
        pool.worker_reaped(self);
        return 0;
    }

    // The idle timer is armed once and, when it fires, re-armed from the
    // last time the worker was used: busy workers cost no timer updates.
    static int on_idle(sd_event_source*, uint64_t now, void* userdata) {
        auto* self = static_cast<Worker*>(userdata);
        uint64_t due = self->last_used_ + self->idle_usec();
        if (!self->pending_.empty() || now < due) {
            self->schedule_idle(self->pending_.empty() ? due : now + self->idle_usec());
            return 0;
        }
        self->drain("idle");
        return 0;
    }

    // Only a name or a live process that was named says the namespace lives
    // without the worker; otherwise it may be all that keeps it alive.
    [[nodiscard]] bool kept_for_long() const { return !names_.empty() || !processes_.empty(); }

    [[nodiscard]] std::chrono::seconds idle_timeout() const {
        const auto& config = pool_.config_;
        if (kept_for_long() || config.unnamed_idle_timeout.count() == 0) {
            return config.idle_timeout;
        }
        if (config.idle_timeout.count() == 0) {
            return config.unnamed_idle_timeout;
        }
        return std::min(config.idle_timeout, config.unnamed_idle_timeout);
    }

    [[nodiscard]] uint64_t idle_usec() const {
        return static_cast<uint64_t>(std::chrono::microseconds(idle_timeout()).count());
    }

    // The process a pid reference named: when it exits, so does the reason
    // to keep its namespace's worker.
    static constexpr std::size_t max_watched_processes = 16;

    void watch_process(UniqueFd pidfd) {
        if (processes_.size() >= max_watched_processes) {
            return;
        }
        sd_event_source* s = nullptr;
        if (sd_event_add_io(pool_.loop_, &s, pidfd.get(), EPOLLIN, &Worker::on_process_exit, this) <
            0) {
            return;
        }
        processes_.push_back({std::move(pidfd), EventSource{s}});
    }

    // The process exited: when nothing else names the namespace, the worker
    // may be all that keeps it alive, so it finishes what it was sent and goes.
    static int on_process_exit(sd_event_source* source, int, uint32_t, void* userdata) {
        auto* self = static_cast<Worker*>(userdata);
        std::erase_if(self->processes_,
                      [source](const WatchedProcess& p) { return p.source.get() == source; });
        if (!self->kept_for_long() && self->state_ == State::ready) {
            self->drain("the process that named its namespace exited");
        }
        return 0;
    }

    [[nodiscard]] uint64_t now() const {
        uint64_t usec = 0;
        sd_event_now(pool_.loop_, CLOCK_MONOTONIC, &usec);
        return usec;
    }

    void schedule_idle(uint64_t when) {
        if (idle_timer_) {
            sd_event_source_set_time(idle_timer_.get(), when);
            sd_event_source_set_enabled(idle_timer_.get(), SD_EVENT_ONESHOT);
            return;
        }
        sd_event_source* s = nullptr;
        if (sd_event_add_time(pool_.loop_, &s, CLOCK_MONOTONIC, when, 0, &Worker::on_idle, this) >=
            0) {
            idle_timer_.reset(s);
        }
    }

    void arm_idle() {
        if (pool_.config_.idle_timeout.count() != 0 && state_ == State::ready && !idle_timer_) {
            schedule_idle(now() + idle_usec());
        }
    }

    void touch() { last_used_ = now(); }

  public:
    [[nodiscard]] uint64_t last_used() const { return last_used_; }
    [[nodiscard]] bool ready_and_idle() const { return state_ == State::ready && pending_.empty(); }

  private:
    // Every job has a deadline. One timer serves them all: armed for the
    // oldest job, and when it fires, either that job is late (the worker is
    // killed) or it re-arms for whichever job is oldest then. A busy worker
    // thus costs about one timer update per timeout, not one per job.
    [[nodiscard]] uint64_t job_usec() const {
        return static_cast<uint64_t>(std::chrono::microseconds(pool_.config_.job_timeout).count());
    }

    void arm_job_timer() {
        if (job_timer_armed_ || pending_.empty() || job_usec() == 0) {
            return;
        }
        uint64_t when = pending_.begin()->second.deadline;
        job_timer_armed_ = true;
        if (job_timer_) {
            sd_event_source_set_time(job_timer_.get(), when);
            sd_event_source_set_enabled(job_timer_.get(), SD_EVENT_ONESHOT);
            return;
        }
        sd_event_source* s = nullptr;
        if (sd_event_add_time(pool_.loop_, &s, CLOCK_MONOTONIC, when, 0, &Worker::on_job_timer,
                              this) >= 0) {
            job_timer_.reset(s);
        } else {
            job_timer_armed_ = false;
        }
    }

    static int on_job_timer(sd_event_source*, uint64_t now, void* userdata) {
        auto* self = static_cast<Worker*>(userdata);
        self->job_timer_armed_ = false;
        if (self->pending_.empty()) {
            return 0;
        }
        if (now >= self->pending_.begin()->second.deadline) {
            auto seconds = self->pool_.config_.job_timeout.count();
            spdlog::warn("worker {} did not answer within {} s; killing it", self->pid_, seconds);
            self->kill_now();
            self->fail("worker did not answer within " + std::to_string(seconds) + " s");
            return 0;
        }
        self->arm_job_timer();
        return 0;
    }

    void flush() {
        while (!outbox_.empty() && channel_) {
            auto status = proto::send_message(channel_.get(), outbox_.front(), {}, true);
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
        if (outbox_.empty() && state_ == State::draining) {
            ::shutdown(channel_.get(), SHUT_WR);
        }
    }

    // Reads and handles one message; false when there is nothing more to read.
    bool read_reply() {
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
        case proto::ReceiveStatus::fds_truncated:
            kill_now();
            fail("worker sent an unreadable message");
            return false;
        case proto::ReceiveStatus::message:
            handle_reply(std::move(received.message));
            return true;
        }
        return false;
    }

    void read_replies() {
        while (read_reply()) {
        }
    }

    void handle_reply(proto::Message message) {
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
                arm_idle();
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
        if (auto* error = std::get_if<Error>(&reply->body)) {
            job.done(*error, {});
        } else if (auto* sockets = std::get_if<proto::SocketReply>(&reply->body);
                   sockets && sockets->sockets.size() == job.expected_fds &&
                   message.fds.size() == job.expected_fds) {
            sockets_ += job.expected_fds;
            job.done(std::move(*sockets), std::move(message.fds));
        } else {
            job.done(
                make_error(ErrorCode::worker_failed, "worker sent the wrong number of sockets"),
                {});
            kill_now();
            fail("worker sent the wrong number of sockets");
            return;
        }
        touch();
    }

    // The worker is gone or unusable: every job in flight fails.
    void fail(const std::string& why) {
        if (state_ == State::dead) {
            return;
        }
        bool was_draining = state_ == State::draining;
        state_ = State::dead;
        processes_.clear();
        io_.reset();
        channel_.reset();
        idle_timer_.reset();
        job_timer_.reset();
        outbox_.clear();
        auto pending = std::move(pending_);
        pending_.clear();
        if (!pending.empty()) {
            spdlog::warn("worker {}: {}; failing {} request(s)", pid_, why, pending.size());
        }
        if (!was_draining) {
            pool_.worker_draining(this);
        }
        for (auto& [id, job] : pending) {
            job.done(make_error(ErrorCode::worker_failed, why), {});
        }
    }

    WorkerPool& pool_;
    NetnsIdentity identity_;
    pid_t pid_;
    UniqueFd channel_;
    EventSource io_;
    EventSource child_;
    EventSource idle_timer_;
    EventSource job_timer_;
    bool job_timer_armed_ = false;
    State state_ = State::starting;
    bool retired_ = false; // asked to exit, so an exit is expected
    std::set<std::string> names_;
    std::optional<uid_t> sponsor_;
    struct WatchedProcess {
        UniqueFd pidfd;
        EventSource source;
    };
    std::vector<WatchedProcess> processes_;
    std::map<std::uint64_t, Pending> pending_;
    std::deque<std::string> outbox_;
    std::uint64_t next_job_ = 1;
    std::uint64_t last_used_ = 0; // CLOCK_MONOTONIC, microseconds
    std::uint64_t requests_ = 0;
    std::uint64_t sockets_ = 0;
    std::string startup_error_;
    std::string exit_reason_;
};

WorkerPool::WorkerPool(sd_event* loop, WorkerPoolConfig config)
    : loop_(loop), config_(std::move(config)) {}

WorkerPool::~WorkerPool() = default;

bool WorkerPool::submit_to_running(const NetnsIdentity& identity,
                                   const std::optional<std::string>& name, proto::WorkerJob& job,
                                   JobDone& done) {
    auto it = live_.find(identity);
    if (stopping_ || it == live_.end()) {
        return false;
    }
    it->second->reached(WorkerSponsor{}, name, UniqueFd{});
    it->second->submit(std::move(job), std::move(done));
    return true;
}

void WorkerPool::submit(ResolvedNetns netns, proto::WorkerJob job, WorkerSponsor sponsor,
                        JobDone done) {
    if (stopping_) {
        done(make_error(ErrorCode::unavailable, "the daemon is shutting down"), {});
        return;
    }
    Worker* worker = nullptr;
    if (auto it = live_.find(netns.identity); it != live_.end()) {
        worker = it->second.get();
        worker->reached(sponsor, netns.name, std::move(netns.pidfd));
    } else {
        if (auto full = make_room(sponsor)) {
            done(make_error(ErrorCode::limit, *full), {});
            return;
        }
        try {
            worker = spawn(netns, sponsor);
        } catch (const std::exception& e) {
            spdlog::error("cannot start a worker: {}", e.what());
            done(make_error(ErrorCode::worker_failed,
                            std::string("cannot start a worker: ") + e.what()),
                 {});
            return;
        }
    }
    worker->submit(std::move(job), std::move(done));
}

Worker* WorkerPool::spawn(ResolvedNetns& netns, WorkerSponsor sponsor) {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
        throw_errno("socketpair");
    }
    UniqueFd ours{pair[0]};
    UniqueFd theirs{pair[1]};
    // Built before fork: the child only calls async-signal-safe functions
    // until it execs or becomes the worker (the daemon has one thread, so
    // the worker may then use the allocator).
    std::string log_level = config_.log_level;
    const char* argv[] = {"nsbrokerd", "--worker", "--log-level", log_level.c_str(), nullptr};

    pid_t pid = ::fork();
    if (pid < 0) {
        throw_errno("fork");
    }
    if (pid == 0) {
        if (!place_worker_fds(theirs.get(), netns.fd.get())) {
            ::_exit(127);
        }
        if (config_.mode == WorkerMode::exec) {
            ::execv("/proc/self/exe", const_cast<char* const*>(argv));
            ::_exit(127);
        }
        setup_logging(log_level, true);
        ::_exit(run_worker());
    }
    theirs.reset();
    netns.fd.reset();
    int flags = ::fcntl(ours.get(), F_GETFL);
    ::fcntl(ours.get(), F_SETFL, flags | O_NONBLOCK);
    ++spawned_;
    std::unique_ptr<Worker> worker;
    try {
        worker = std::make_unique<Worker>(*this, netns.identity, pid, std::move(ours), sponsor);
    } catch (...) {
        // Without its event sources nobody would reap it.
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        throw;
    }
    Worker* raw = worker.get();
    raw->reached(sponsor, netns.name, std::move(netns.pidfd));
    live_.emplace(netns.identity, std::move(worker));
    spdlog::info("worker {} started for namespace {}{}", pid, describe_identity(netns.identity),
                 netns.name ? " (" + *netns.name + ")" : std::string{});
    return raw;
}

std::optional<std::string> WorkerPool::make_room(const WorkerSponsor& sponsor) {
    // The least recently used idle worker that pred allows, retired; false
    // when there is none.
    auto retire_oldest = [this](auto pred) {
        Worker* oldest = nullptr;
        for (auto& [identity, worker] : live_) {
            if (worker->ready_and_idle() && pred(*worker) &&
                (!oldest || worker->last_used() < oldest->last_used())) {
                oldest = worker.get();
            }
        }
        if (oldest) {
            oldest->drain("making room for another namespace");
        }
        return oldest != nullptr;
    };
    auto sponsored = [](const Worker& w) {
        return w.sponsor().has_value();
    };
    if (sponsor.uid) {
        const uid_t uid = *sponsor.uid;
        auto of_uid = [uid](const Worker& w) {
            return w.sponsor() == uid;
        };
        std::size_t own = 0;
        std::size_t all_sponsored = 0;
        for (const auto& [identity, worker] : live_) {
            own += of_uid(*worker) ? 1 : 0;
            all_sponsored += sponsored(*worker) ? 1 : 0;
        }
        if (own >= config_.max_workers_per_uid) {
            if (!retire_oldest(of_uid)) {
                return "uid " + std::to_string(uid) + " has " + std::to_string(own) +
                       " workers busy, the most it may have";
            }
            --all_sponsored;
        }
        // Root's workers and those for namespaces a rule names never make
        // room for these, and a quarter of the pool stays theirs.
        const std::size_t share = config_.max_workers - config_.max_workers / 4;
        if ((all_sponsored >= share || live_.size() >= config_.max_workers) &&
            !retire_oldest(sponsored)) {
            return "all " + std::to_string(all_sponsored) +
                   " workers that callers other than root may start are busy";
        }
        return std::nullopt;
    }
    if (live_.size() < config_.max_workers || retire_oldest(sponsored) ||
        retire_oldest([](const Worker&) { return true; })) {
        return std::nullopt;
    }
    return "all " + std::to_string(config_.max_workers) +
           " workers are busy; no worker can be started for another namespace";
}

void WorkerPool::worker_draining(Worker* worker) {
    auto it = live_.find(worker->identity());
    if (it != live_.end() && it->second.get() == worker) {
        draining_.push_back(std::move(it->second));
        live_.erase(it);
    }
}

void WorkerPool::worker_reaped(Worker* worker) {
    ++exited_;
    worker_draining(worker);
    auto it = std::find_if(draining_.begin(), draining_.end(),
                           [worker](const auto& w) { return w.get() == worker; });
    if (it != draining_.end()) {
        draining_.erase(it);
    }
    check_stopped();
}

void WorkerPool::name_deleted(const std::string& name) {
    std::vector<Worker*> retiring;
    for (auto& [identity, worker] : live_) {
        if (worker->names().erase(name) == 0) {
            continue;
        }
        bool still_named = false;
        for (const auto& other : worker->names()) {
            auto r = open_netns_path(config_.netns_dir + "/" + other);
            still_named = still_named || (r && r->identity == identity);
        }
        if (!still_named) {
            retiring.push_back(worker.get());
        }
    }
    for (Worker* w : retiring) {
        spdlog::info("namespace \"{}\" was deleted; worker {} exits", name, w->pid());
        w->drain("namespace deleted");
    }
}

void WorkerPool::stop(std::function<void()> all_exited) {
    stopping_ = true;
    all_exited_ = std::move(all_exited);
    std::vector<Worker*> all;
    for (auto& [identity, worker] : live_) {
        all.push_back(worker.get());
    }
    for (Worker* w : all) {
        w->drain("daemon stopping");
    }
    sd_event_source* s = nullptr;
    auto on_timeout = [](sd_event_source*, uint64_t, void* userdata) -> int {
        auto* self = static_cast<WorkerPool*>(userdata);
        for (auto& w : self->draining_) {
            spdlog::warn("worker {} did not exit in time; killing it", w->pid());
            w->kill_now();
        }
        return 0;
    };
    if (sd_event_add_time_relative(loop_, &s, CLOCK_MONOTONIC, stop_grace_usec, 0, on_timeout,
                                   this) >= 0) {
        kill_timer_.reset(s);
    }
    check_stopped();
}

void WorkerPool::check_stopped() {
    if (stopping_ && live_.empty() && draining_.empty() && all_exited_) {
        kill_timer_.reset();
        auto done = std::move(all_exited_);
        all_exited_ = nullptr;
        done();
    }
}

std::vector<proto::NamespaceInfo> WorkerPool::describe() const {
    std::vector<proto::NamespaceInfo> out;
    for (const auto& [identity, worker] : live_) {
        out.push_back(worker->describe());
    }
    for (const auto& worker : draining_) {
        out.push_back(worker->describe());
    }
    return out;
}

std::size_t WorkerPool::jobs_in_flight() const {
    std::size_t n = 0;
    for (const auto& [identity, worker] : live_) {
        n += worker->in_flight();
    }
    for (const auto& worker : draining_) {
        n += worker->in_flight();
    }
    return n;
}

} // namespace nsbroker::daemon
