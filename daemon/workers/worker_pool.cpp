// The pool of worker processes: which worker serves a namespace, how many
// there may be and whose they are, and stopping them all.
#include "workers/worker_pool.hpp"

#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <spdlog/spdlog.h>

#include "nsbroker_config.h"
#include "sys/logging.hpp"

namespace nsbroker::daemon {

namespace {

// How long stop() waits for workers to finish their jobs before killing
// them: longer than a socket job takes, short enough that a stuck worker
// does not hold up a restart by systemd.
constexpr std::uint64_t stop_grace_usec = 5'000'000;

// How often the leases of ended direct channels are looked at while their
// callers have sockets left to read: the kernel gives no event for a
// peer's reads.
constexpr std::uint64_t drain_check_usec = 1'000'000;

// A quarter of max_workers (rounded down) is kept for root's workers and
// for namespaces a rule names: callers other than root, each starting
// workers of their own, must not be able to crowd those out.
constexpr std::size_t root_reserve_divisor = 4;

// How many workers callers other than root may have between them.
std::size_t sponsored_cap(std::size_t max_workers) {
    return max_workers - max_workers / root_reserve_divisor;
}

// The worker executable: beside the daemon's own when it is there (a build
// tree), else where it was installed.
std::string worker_executable() {
    std::error_code error;
    auto self = std::filesystem::read_symlink("/proc/self/exe", error);
    if (!error) {
        auto beside = self.parent_path() / "nsbroker-worker";
        if (::access(beside.c_str(), X_OK) == 0) {
            return beside;
        }
    }
    if (::access(NSBROKER_WORKER_PATH, X_OK) < 0) {
        throw SystemError(errno, std::string("the worker executable ") + NSBROKER_WORKER_PATH);
    }
    return NSBROKER_WORKER_PATH;
}

WorkerKit make_kit(const WorkerSettings& settings) {
    auto filter = WorkerFilter::compile();
    if (!filter) {
        throw SystemError(filter.error().sys_errno,
                          "the workers' seccomp filter: " + filter.error().message);
    }
    return {std::move(*filter), make_logger(settings.log_level, true),
            settings.mode == WorkerMode::exec ? worker_executable() : std::string{}};
}

} // namespace

WorkerPool::WorkerPool(sd_event* loop, WorkerPoolConfig config)
    : loop_(loop), config_(std::move(config)), kit_(make_kit(config_)),
      drain_timer_(loop, [this](std::uint64_t) { check_draining(); }),
      kill_timer_(loop, [this](std::uint64_t) { on_stop_grace_over(); }) {
    fill_spares();
}

WorkerPool::~WorkerPool() = default;

bool WorkerPool::submit_to_running(const NetnsIdentity& identity,
                                   const std::optional<std::string>& name, proto::WorkerJob& job,
                                   JobDone& done) {
    auto it = live_.find(identity);
    if (stopping_ || it == live_.end() || !it->second->alive()) {
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
    if (auto it = live_.find(netns.identity); it != live_.end() && it->second->alive()) {
        worker = it->second.get();
        worker->reached(sponsor, netns.name, std::move(netns.pidfd));
    } else {
        if (auto full = make_room(sponsor)) {
            done(make_error(ErrorCode::limit, *full), {});
            return;
        }
        try {
            worker = spawn(std::move(netns), sponsor);
        } catch (const std::exception& e) {
            spdlog::error("cannot start a worker: {}", e.what());
            done(make_error(ErrorCode::worker_failed,
                            std::string("cannot start a worker: ") + e.what()),
                 {});
            return;
        }
        if (spares_.size() < config_.spare_workers) {
            // The spare taken is replaced once this job is answered: forking
            // the daemon now would hold up the answer.
            done = [this, answer = std::move(done)](Result<proto::SocketReply> result,
                                                    std::vector<UniqueFd> fds) {
                answer(std::move(result), std::move(fds));
                fill_spares();
            };
        }
    }
    worker->submit(std::move(job), std::move(done));
}

Worker* WorkerPool::spawn(ResolvedNetns netns, WorkerSponsor sponsor) {
    const NetnsIdentity identity = netns.identity;
    std::unique_ptr<Worker> worker;
    while (!worker && !spares_.empty()) {
        Worker* spare = spares_.back().get();
        // One found dead moves itself to exiting_ (worker_exiting).
        const bool usable = spare->alive();
        if (!spares_.empty() && spares_.back().get() == spare) {
            auto taken = std::move(spares_.back());
            spares_.pop_back();
            if (usable) {
                worker = std::move(taken);
            } else {
                taken->kill_now();
                exiting_.push_back(std::move(taken));
            }
        }
    }
    if (worker) {
        worker->enter(std::move(netns), sponsor);
    } else {
        worker = Worker::start(loop_, *this, config_, kit_, std::move(netns), sponsor);
    }
    ++spawned_;
    Worker* raw = worker.get();
    live_.emplace(identity, std::move(worker));
    return raw;
}

void WorkerPool::fill_spares() {
    while (!stopping_ && spares_.size() < config_.spare_workers) {
        try {
            spares_.push_back(Worker::start_spare(loop_, *this, config_, kit_));
        } catch (const std::exception& e) {
            spdlog::warn("cannot start a spare worker: {}", e.what());
            return;
        }
    }
}

std::optional<std::string> WorkerPool::make_room(const WorkerSponsor& sponsor) {
    // The least recently used idle worker that pred allows exits; false
    // when there is none.
    auto make_oldest_exit = [this](auto pred) {
        Worker* oldest = nullptr;
        for (auto& [identity, worker] : live_) {
            if (worker->ready_and_idle() && pred(*worker) &&
                (!oldest || worker->last_used() < oldest->last_used())) {
                oldest = worker.get();
            }
        }
        if (oldest) {
            oldest->exit_when_done("making room for another namespace");
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
            if (!make_oldest_exit(of_uid)) {
                return "uid " + std::to_string(uid) + " has " + std::to_string(own) +
                       " workers busy, the most it may have";
            }
            --all_sponsored;
        }
        // Root's workers and those for namespaces a rule names never make
        // room for these, and a quarter of the pool stays theirs.
        if ((all_sponsored >= sponsored_cap(config_.max_workers) ||
             live_.size() >= config_.max_workers) &&
            !make_oldest_exit(sponsored)) {
            return "all " + std::to_string(all_sponsored) +
                   " workers that callers other than root may start are busy";
        }
        return std::nullopt;
    }
    if (live_.size() < config_.max_workers || make_oldest_exit(sponsored) ||
        make_oldest_exit([](const Worker&) { return true; })) {
        return std::nullopt;
    }
    return "all " + std::to_string(config_.max_workers) +
           " workers are busy; no worker can be started for another namespace";
}

void WorkerPool::worker_exiting(Worker& worker) {
    auto it = live_.find(worker.identity());
    if (it != live_.end() && it->second.get() == &worker) {
        exiting_.push_back(std::move(it->second));
        live_.erase(it);
        return;
    }
    auto spare = std::find_if(spares_.begin(), spares_.end(),
                              [&worker](const auto& w) { return w.get() == &worker; });
    if (spare != spares_.end()) {
        exiting_.push_back(std::move(*spare));
        spares_.erase(spare);
    }
}

void WorkerPool::channels_served(const proto::ChannelsServed& served) {
    served_on_channels_.requests += served.requests;
    served_on_channels_.sockets += served.sockets;
    for (auto [code, count] : served.errors) {
        served_on_channels_.errors[code] += count;
    }
}

void WorkerPool::channel_ended(GrantedChannel channel) {
    // The caller reads what is queued, then EOF, and its sends fail.
    ::shutdown(channel.end.get(), SHUT_RDWR);
    draining_.push_back(std::move(channel));
    check_draining();
}

void WorkerPool::check_draining() {
    std::erase_if(draining_, [](const GrantedChannel& channel) {
        // What the caller sent that the worker did not read goes: its own
        // end among it would keep the channel, and its place, for good.
        try {
            proto::discard_queued(channel.end.get());
        } catch (const SystemError& e) {
            spdlog::warn("an ended direct channel: {}", e.what());
        }
        int queued = 0;
        return ::ioctl(channel.end.get(), SIOCOUTQ, &queued) != 0 || queued == 0;
    });
    if (draining_.empty()) {
        drain_timer_.disarm();
    } else if (!drain_timer_.armed()) {
        drain_timer_.arm_in(drain_check_usec);
    }
}

void WorkerPool::worker_reaped(Worker& worker) {
    exited_ += worker.spare() ? 0 : 1;
    worker_exiting(worker);
    auto it = std::find_if(exiting_.begin(), exiting_.end(),
                           [&worker](const auto& w) { return w.get() == &worker; });
    if (it != exiting_.end()) {
        exiting_.erase(it);
    }
    check_stopped();
}

bool WorkerPool::grant_channel(const NetnsIdentity& identity, const proto::ChannelGrant& grant,
                               UniqueFd worker_end, std::unique_ptr<ChannelLease> lease) {
    auto it = live_.find(identity);
    // A channel granted through a name is granted only while that name
    // still leads to the namespace: names_changed may have revoked the
    // worker's channels between the request's judgment and this grant.
    return !stopping_ && it != live_.end() &&
           (!grant.name || it->second->names().contains(*grant.name)) &&
           it->second->grant_channel(grant, std::move(worker_end), std::move(lease));
}

void WorkerPool::revoke_channels() {
    for (auto& [identity, worker] : live_) {
        worker->revoke_channels();
    }
}

void WorkerPool::names_changed() {
    std::vector<Worker*> unnamed;
    for (auto& [identity, worker] : live_) {
        std::vector<std::string> lost;
        for (const auto& name : worker->names()) {
            auto r = open_netns_path(config_.netns_dir + "/" + name);
            if (!r || r->identity != identity) {
                lost.push_back(name);
            }
        }
        if (lost.empty()) {
            continue;
        }
        // A channel may have been granted through a name it lost.
        worker->revoke_channels();
        for (const auto& name : lost) {
            worker->forget_name(name);
            spdlog::info("worker {}: \"{}\" no longer names its namespace", worker->pid(), name);
        }
        if (worker->names().empty()) {
            unnamed.push_back(worker.get());
        }
    }
    for (Worker* w : unnamed) {
        w->exit_when_done("namespace deleted");
    }
}

void WorkerPool::stop(std::function<void()> all_exited) {
    stopping_ = true;
    all_exited_ = std::move(all_exited);
    std::vector<Worker*> all;
    for (auto& [identity, worker] : live_) {
        all.push_back(worker.get());
    }
    for (auto& spare : spares_) {
        all.push_back(spare.get());
    }
    for (Worker* w : all) {
        w->exit_when_done("daemon stopping");
    }
    kill_timer_.arm_in(stop_grace_usec);
    check_stopped();
}

void WorkerPool::on_stop_grace_over() {
    for (auto& w : exiting_) {
        spdlog::warn("worker {} did not exit in time; killing it", w->pid());
        w->kill_now();
    }
}

void WorkerPool::check_stopped() {
    if (stopping_ && live_.empty() && spares_.empty() && exiting_.empty() && all_exited_) {
        kill_timer_.disarm();
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
    for (const auto& worker : exiting_) {
        out.push_back(worker->describe());
    }
    return out;
}

std::size_t WorkerPool::jobs_in_flight() const {
    std::size_t n = 0;
    for (const auto& [identity, worker] : live_) {
        n += worker->in_flight();
    }
    for (const auto& worker : exiting_) {
        n += worker->in_flight();
    }
    return n;
}

} // namespace nsbroker::daemon
