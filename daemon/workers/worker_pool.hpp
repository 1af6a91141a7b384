// The daemon's side of the workers: one worker process per network namespace
// identity, started on first use, pipelined jobs, retired when idle, when its
// /run/netns name is deleted, when it dies, or when the daemon stops.
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

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/netns.hpp"
#include "nsbroker/protocol.hpp"
#include "nsbroker/worker_protocol.hpp"
#include "sys/event.hpp"

namespace nsbroker::daemon {

enum class WorkerMode { fork, exec };

struct WorkerPoolConfig {
    WorkerMode mode = WorkerMode::fork;
    std::chrono::seconds idle_timeout{60}; // 0: workers stay until their namespace goes
    // For namespaces without a /run/netns name or a live process that names
    // them: the worker may be all that keeps them alive.
    std::chrono::seconds unnamed_idle_timeout{5};
    std::chrono::seconds job_timeout{10}; // a worker that takes longer is killed
    std::size_t max_workers = 512;        // beyond it the least recently used idle one goes
    std::size_t max_workers_per_uid = 16; // of workers callers other than root start
    std::string log_level = "info";       // for exec'd workers
    std::string netns_dir = default_netns_dir;
};

// Called exactly once per job: with the sockets and their fds (fds owned by
// the callee from then on), or with an Error and no fds.
using JobDone = std::function<void(Result<proto::SocketReply>, std::vector<UniqueFd>)>;

// Whose a worker is: a uid other than root's when only that caller's
// ownership of the namespace lets it be served; none for root's and for
// namespaces a rule names.
struct WorkerSponsor {
    std::optional<uid_t> uid;
};

class Worker;

class WorkerPool {
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

    Worker* spawn(ResolvedNetns& netns, WorkerSponsor sponsor);
    // Makes room for one more worker for sponsor; the reason when it cannot.
    std::optional<std::string> make_room(const WorkerSponsor& sponsor);
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
