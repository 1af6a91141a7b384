// The daemon's side of the workers: one worker process per network namespace
// identity, started on first use, pipelined jobs, retired when idle, when its
// /run/netns name is deleted, when it dies, or when the daemon stops.
#pragma once

#include <sys/types.h>
#include <systemd/sd-event.h>

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "event.hpp"
#include "netns.hpp"
#include "nsbroker/protocol.hpp"

namespace nsbroker::daemon {

enum class WorkerMode { fork, exec };

struct WorkerPoolConfig {
    WorkerMode mode = WorkerMode::fork;
    std::chrono::seconds idle_timeout{60}; // 0: workers stay until their namespace goes
    std::chrono::seconds job_timeout{10};  // a worker that takes longer is killed
    std::size_t max_workers = 512;         // beyond it the least recently used idle one goes
    std::string log_level = "info";        // for exec'd workers
    std::string netns_dir = default_netns_dir;
};

// Called exactly once per job: with the sockets and their fds (fds owned by
// the callee from then on), or with an Error and no fds.
using JobDone = std::function<void(Result<proto::SocketReply>, std::vector<UniqueFd>)>;

class Worker;

class WorkerPool {
  public:
    WorkerPool(sd_event* loop, WorkerPoolConfig config);
    ~WorkerPool();
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    // Sends the job to the worker of netns (starting one if there is none);
    // the pool numbers it. netns.fd is handed to a new worker, or closed.
    void submit(ResolvedNetns netns, proto::WorkerJob job, JobDone done);

    // Sends the job to the running worker of identity and returns true; when
    // there is none, returns false and leaves job and done untouched.
    bool submit_to_running(const NetnsIdentity& identity, const std::optional<std::string>& name,
                           proto::WorkerJob& job, JobDone& done);

    // A /run/netns entry went away: workers that no longer have a name retire.
    void name_deleted(const std::string& name);

    // Retires every worker; calls all_exited once every process is reaped.
    void stop(std::function<void()> all_exited);

    [[nodiscard]] std::vector<proto::NamespaceInfo> describe() const;
    [[nodiscard]] std::uint64_t spawned() const { return spawned_; }
    [[nodiscard]] std::uint64_t exited() const { return exited_; }
    [[nodiscard]] std::size_t live() const { return live_.size() + draining_.size(); }
    [[nodiscard]] std::size_t jobs_in_flight() const;

  private:
    friend class Worker;
    // Worker -> pool notifications.
    void worker_draining(Worker* worker);
    void worker_reaped(Worker* worker);

    Worker* spawn(ResolvedNetns& netns);
    // Makes room for one more worker; false when every worker is busy.
    bool make_room();
    void check_stopped();

    sd_event* loop_;
    WorkerPoolConfig config_;
    std::map<NetnsIdentity, std::unique_ptr<Worker>> live_;
    std::vector<std::unique_ptr<Worker>> draining_;
    std::uint64_t spawned_ = 0;
    std::uint64_t exited_ = 0;
    bool stopping_ = false;
    std::function<void()> all_exited_;
    EventSource kill_timer_;
};

} // namespace nsbroker::daemon
