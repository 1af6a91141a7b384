// The daemon's side of the workers: one worker process per network namespace
// identity, started on first use, pipelined jobs. A worker is exiting (it
// takes no new jobs, answers those it has, then exits) when idle, when its
// /run/netns name is deleted, when room is needed for another, or when the
// daemon stops; one that dies fails the jobs it had.
//
// A worker keeps its namespace alive. One for a namespace reached only by
// descriptor, path or pid therefore goes soon: when the process it was
// reached through exits, or after a short idle time. A worker started for a
// caller other than root, in a namespace no rule names (it owns it), is that
// caller's: counted against its uid, and the first to go when room is needed;
// root's workers never go to make room for it.
#pragma once

#include <sys/types.h>
#include <systemd/sd-event.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nsbroker/protocol.hpp"
#include "nsbroker/worker_protocol.hpp"
#include "sys/netns.hpp"
#include "sys/timer.hpp"
#include "workers/worker.hpp"

namespace nsbroker::daemon {

struct WorkerPoolConfig : WorkerSettings {
    std::size_t max_workers = 512;        // beyond it the least recently used idle one goes
    std::size_t max_workers_per_uid = 16; // of workers callers other than root start
    // Workers forked ahead, each waiting to be sent into the next namespace
    // that needs one; not counted among the workers above.
    std::size_t spare_workers = 1;
    std::string netns_dir = default_netns_dir;
};

class WorkerPool : private WorkerOwner {
  public:
    WorkerPool(sd_event* loop, WorkerPoolConfig config);
    ~WorkerPool();
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    // Sends the job to the worker of netns (starting one if there is none);
    // the pool numbers it. netns.fd is handed to a new worker, or closed;
    // netns.pidfd is watched for as long as the worker lives.
    void submit(ResolvedNetns netns, proto::WorkerJob job, WorkerSponsor sponsor, JobDone done);

    // Sends root's job to the running worker of identity and returns true;
    // when there is none, returns false and leaves job and done untouched.
    bool submit_to_running(const NetnsIdentity& identity, const std::optional<std::string>& name,
                           proto::WorkerJob& job, JobDone& done);

    // Gives the live worker of identity a direct channel (Worker::grant_channel);
    // false when the namespace has no live worker, or when the name the
    // channel was granted through no longer leads to it.
    bool grant_channel(const NetnsIdentity& identity, const proto::ChannelGrant& grant,
                       UniqueFd worker_end, std::unique_ptr<ChannelLease> lease);
    // Every worker's direct channels are revoked (the policy changed).
    void revoke_channels();

    // /run/netns changed (a name deleted, unmounted or mounted over): a
    // worker reached by a name that no longer leads to its namespace loses
    // it and the direct channels granted so far (one may have come through
    // that name); one with no name left exits.
    void names_changed();

    // Every worker exits; calls all_exited once every process is reaped.
    void stop(std::function<void()> all_exited);

    [[nodiscard]] std::vector<proto::NamespaceInfo> describe() const;
    [[nodiscard]] std::uint64_t spawned() const { return spawned_; }
    [[nodiscard]] std::uint64_t exited() const { return exited_; }
    [[nodiscard]] std::size_t live() const { return live_.size() + exiting_.size(); }
    [[nodiscard]] std::size_t jobs_in_flight() const;
    // What every worker's direct channels served, as their workers reported it.
    [[nodiscard]] const proto::ChannelsServed& served_on_channels() const {
        return served_on_channels_;
    }

  private:
    void worker_exiting(Worker& worker) override;
    void worker_reaped(Worker& worker) override;
    void channels_served(const proto::ChannelsServed& served) override;
    void channel_ended(GrantedChannel channel) override;

    // Drops the leases of ended channels whose callers have read all they
    // were sent, and looks again later while some have not.
    void check_draining();

    // A worker for netns: a spare sent into it, or one started for it.
    Worker* spawn(ResolvedNetns netns, WorkerSponsor sponsor);
    // Forks spares until there are config_.spare_workers.
    void fill_spares();
    // Makes room for one more worker for sponsor; the reason when it cannot.
    std::optional<std::string> make_room(const WorkerSponsor& sponsor);
    void on_stop_grace_over();
    void check_stopped();

    sd_event* loop_;
    WorkerPoolConfig config_;
    WorkerKit kit_;
    // The workers that take jobs, one per namespace.
    std::map<NetnsIdentity, std::unique_ptr<Worker>> live_;
    // Exiting or dead workers, kept until their process is reaped.
    std::vector<std::unique_ptr<Worker>> exiting_;
    std::vector<std::unique_ptr<Worker>> spares_;
    std::uint64_t spawned_ = 0;
    std::uint64_t exited_ = 0;
    proto::ChannelsServed served_on_channels_;
    // Ended direct channels whose callers have sockets left to read.
    std::vector<GrantedChannel> draining_;
    OneShotTimer drain_timer_;
    bool stopping_ = false;
    std::function<void()> all_exited_;
    OneShotTimer kill_timer_;
};

} // namespace nsbroker::daemon
