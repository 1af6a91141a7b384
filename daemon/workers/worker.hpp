// One worker process as the daemon's event loop sees it. A Worker owns:
// - the process, forked for one network namespace and reaped through an
//   sd-event child source that kills it should the Worker go first;
// - the daemon's end of its channel, and the jobs queued on it or sent and
//   not yet answered, each with its JobDone;
// - an idle timer and one job deadline timer;
// - pidfd watches of the processes that reached its namespace by pid.
//
// Its states:
//   spare     forked before any namespace needed it, waiting to be told
//             which one to enter (enter); it serves nothing until then.
//   starting  forked; the startup notice (the reply to id 0) has not come.
//             Jobs are sent anyway: the worker reads them once it is in.
//   ready     in its namespace, serving jobs.
//   exiting   asked to go (idle, its name deleted, room needed, the daemon
//             stopping): takes no new jobs, answers those it has, then reads
//             EOF and exits.
//   dead      unusable: its channel is closed and every job it had failed;
//             only reaping the process is left.
// A worker that is exiting or dead has left its owner's live set (the owner
// heard worker_exiting); once reaped, the owner may destroy it.
#pragma once

#include <sys/types.h>
#include <systemd/sd-event.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "nsbroker/fd_passing.hpp"
#include "nsbroker/protocol.hpp"
#include "nsbroker/worker_protocol.hpp"
#include "sys/event.hpp"
#include "sys/netns.hpp"
#include "sys/timer.hpp"
#include "workers/worker_sandbox.hpp"

namespace spdlog {
class logger;
}

namespace nsbroker::daemon {

enum class WorkerMode { fork, exec };

// What every worker of a pool shares: how it starts and its timeouts.
struct WorkerSettings {
    WorkerMode mode = WorkerMode::fork;
    std::chrono::seconds idle_timeout{60}; // 0: workers stay until their namespace goes
    // For namespaces without a /run/netns name or a live process that names
    // them: the worker may be all that keeps them alive.
    std::chrono::seconds unnamed_idle_timeout{5};
    std::chrono::seconds job_timeout{10}; // a worker that takes longer is killed
    std::string log_level = "info";       // for exec'd workers
};

// What the pool makes once for all its workers, so that no worker pays for
// it as it starts: the seccomp filter, compiled, the logger a forked worker
// installs (an exec'd one builds its own), and in exec mode the worker
// executable's path.
struct WorkerKit {
    WorkerFilter filter;
    std::shared_ptr<spdlog::logger> logger;
    std::string executable;
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

// What the granter of a direct channel keeps for it: its place in the
// limits.
class ChannelLease {
  public:
    virtual ~ChannelLease() = default;
};

// A direct channel as the daemon keeps it: a copy of the end the worker
// serves, and its lease. Sockets the worker sent and the caller has not read
// are charged to the workers' user, so the lease outlives the worker's use
// of the channel: the copy is shut down then, and the lease is dropped once
// it reports nothing queued (SIOCOUTQ), or the caller closes its end.
struct GrantedChannel {
    UniqueFd end;
    std::unique_ptr<ChannelLease> lease;
};

// What a Worker tells whoever owns it, from the event loop.
class WorkerOwner {
  public:
    // The worker takes no more jobs: it is exiting or dead. Called once.
    virtual void worker_exiting(Worker& worker) = 0;
    // The process is reaped. The owner may destroy the Worker here; the
    // Worker touches nothing of its own after this call.
    virtual void worker_reaped(Worker& worker) = 0;
    // The worker's direct channels served this since it last said.
    virtual void channels_served(const proto::ChannelsServed& served) = 0;
    // The worker no longer serves this channel; its caller may still have
    // sockets to read.
    virtual void channel_ended(GrantedChannel channel) = 0;

  protected:
    ~WorkerOwner() = default;
};

class Worker {
  public:
    enum class State { spare, starting, ready, exiting, dead };

    // Forks the worker for netns, with what kit holds, and watches it.
    // netns.fd is handed to the child and closed here; netns.pidfd is
    // watched for as long as the worker lives. settings and owner must
    // outlive the Worker. Throws SystemError when the process cannot be
    // started or watched (a forked child is then killed and reaped).
    static std::unique_ptr<Worker> start(sd_event* loop, WorkerOwner& owner,
                                         const WorkerSettings& settings, const WorkerKit& kit,
                                         ResolvedNetns netns, WorkerSponsor sponsor);
    // Forks a spare: a worker with no namespace yet, which has done all of
    // its starting that does not depend on one. It holds the daemon's
    // privileges until enter() names its namespace, and reads only its
    // channel. Throws as start() does.
    static std::unique_ptr<Worker> start_spare(sd_event* loop, WorkerOwner& owner,
                                               const WorkerSettings& settings,
                                               const WorkerKit& kit);
    // Sends a spare into netns, as start() would have started it there; the
    // message goes with the first job submitted.
    void enter(ResolvedNetns netns, WorkerSponsor sponsor);
    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    [[nodiscard]] const NetnsIdentity& identity() const { return identity_; }
    // Whether it was never sent into a namespace.
    [[nodiscard]] bool spare() const { return spare_; }
    [[nodiscard]] pid_t pid() const { return pid_; }
    [[nodiscard]] std::size_t in_flight() const { return pending_.size(); }
    [[nodiscard]] const std::set<std::string>& names() const { return names_; }
    [[nodiscard]] const std::optional<uid_t>& sponsor() const { return sponsor_; }
    // When it last took or answered a job (CLOCK_MONOTONIC, microseconds).
    [[nodiscard]] std::uint64_t last_used() const { return last_used_; }
    [[nodiscard]] bool ready_and_idle() const { return state_ == State::ready && pending_.empty(); }
    [[nodiscard]] proto::NamespaceInfo describe() const;

    // Another caller reached the namespace: a worker anyone else uses is no
    // longer one caller's; a name or a live process keeps it longer.
    void reached(const WorkerSponsor& sponsor, const std::optional<std::string>& name,
                 UniqueFd pidfd);
    // The /run/netns name went away; false when the worker did not have it.
    bool forget_name(const std::string& name) { return names_.erase(name) != 0; }

    // Numbers the job and sends it; done is called once it is answered or
    // the worker fails. Only for a worker its owner still holds as live.
    void submit(proto::WorkerJob job, JobDone done);

    // Whether the process can still take a job. One killed a moment ago
    // (its direct channels fall back to the daemon at once) may not have
    // been reaped yet; its channel tells, and the worker then fails, after
    // reading what it said before it died.
    [[nodiscard]] bool alive();

    // Gives the worker a direct channel: worker_end is the socketpair's end
    // it serves, with grant saying for whom. The channel goes to the owner
    // (channel_ended) when the worker closes it or the worker goes. False,
    // with nothing sent, when the worker takes no more work.
    bool grant_channel(const proto::ChannelGrant& grant, UniqueFd worker_end,
                       std::unique_ptr<ChannelLease> lease);
    // Every direct channel stops taking requests: the worker answers those
    // queued `unavailable` and closes them.
    void revoke_channels();
    [[nodiscard]] std::size_t channels() const { return channels_.size(); }

    // Lets the worker finish what it has and exit: it reads EOF after its
    // last job. Replies are still read until the channel closes.
    void exit_when_done(const char* why);

    // Safe until the process is reaped, and a Worker does not outlive that:
    // its pid cannot have been reused.
    void kill_now();

  private:
    struct Pending {
        std::size_t expected_fds;
        JobDone done;
        std::uint64_t deadline; // CLOCK_MONOTONIC, microseconds
    };
    struct WatchedProcess {
        UniqueFd pidfd;
        EventSource source;
    };
    // A message for the worker, and the descriptor that goes with it, if any.
    struct Outgoing {
        std::string data;
        UniqueFd fd;
    };

    Worker(sd_event* loop, WorkerOwner& owner, const WorkerSettings& settings, pid_t pid,
           UniqueFd channel);
    // Forks the process, with netns_fd as its namespace or -1 for a spare.
    static std::unique_ptr<Worker> launch(sd_event* loop, WorkerOwner& owner,
                                          const WorkerSettings& settings, const WorkerKit& kit,
                                          int netns_fd);
    // From now on the worker serves netns.
    void serve(ResolvedNetns netns, WorkerSponsor sponsor);

    static int on_io(sd_event_source* source, int fd, uint32_t revents, void* userdata);
    static int on_exit(sd_event_source* source, const siginfo_t* si, void* userdata);
    static int on_process_exit(sd_event_source* source, int fd, uint32_t revents, void* userdata);
    void on_idle_timer(std::uint64_t armed_for);
    void on_job_deadline(std::uint64_t armed_for);

    [[nodiscard]] bool kept_for_long() const;
    [[nodiscard]] std::chrono::seconds idle_timeout() const;
    [[nodiscard]] std::uint64_t idle_usec() const;
    [[nodiscard]] std::uint64_t job_usec() const;
    [[nodiscard]] std::uint64_t now() const;
    void touch() { last_used_ = now(); }
    void watch_process(UniqueFd pidfd);
    void arm_idle_timer();
    void arm_job_deadline();

    void flush();
    bool read_reply();
    void read_replies();
    // fds_lost: the reply came without its descriptors (MSG_CTRUNC).
    void handle_reply(proto::Message message, bool fds_lost);
    void fail(const std::string& why);
    void end_channel(std::uint64_t id);

    sd_event* loop_;
    WorkerOwner& owner_;
    const WorkerSettings& settings_;
    NetnsIdentity identity_;
    pid_t pid_;
    UniqueFd channel_;
    EventSource io_;
    EventSource child_;
    OneShotTimer idle_timer_;
    OneShotTimer job_deadline_;
    State state_ = State::spare;
    bool asked_to_exit_ = false; // so that its exit is expected, not a fault
    bool spare_ = true;
    std::set<std::string> names_;
    std::optional<uid_t> sponsor_;
    std::vector<WatchedProcess> processes_;
    std::map<std::uint64_t, Pending> pending_;
    std::deque<Outgoing> outbox_;
    std::map<std::uint64_t, GrantedChannel> channels_;
    std::uint64_t next_job_ = 1;
    std::uint64_t last_used_ = 0; // CLOCK_MONOTONIC, microseconds
    std::uint64_t requests_ = 0;
    std::uint64_t sockets_ = 0;
    std::string startup_error_;
    std::string exit_reason_;
};

} // namespace nsbroker::daemon
