// What a worker gives up once it is in its namespace: every capability but
// the three that socket(2), bind(2) and setsockopt(2) check in the
// namespace and the two that let it take a caller's identity, the bounding
// set, the ability to gain privileges or be dumped, and every system call a
// socket maker does not use.
#pragma once

#include <linux/filter.h>

#include <vector>

#include "nsbroker/error.hpp"
#include "nsbroker/protocol.hpp"
#include "nsbroker/unique_fd.hpp"
#include "nsbroker/worker_protocol.hpp"

namespace nsbroker::daemon {

// The worker's seccomp allowlist as the BPF programs the kernel runs, in two
// stages: the entry program allows the allowlist and what joining a
// namespace takes besides, and the settle program, loaded over it once the
// worker is in its namespace, refuses those extras again. Compiling them
// with libseccomp costs a worker more than everything else it does before
// its first socket, so the daemon compiles them once and every worker only
// loads them: a forked worker from the daemon's memory, an exec'd one from a
// sealed memfd the daemon passes it.
class WorkerFilter {
  public:
    // Compiles both programs into a sealed memfd, and reads them back.
    static Result<WorkerFilter> compile();
    // The programs in a sealed memfd made by compile(). Takes the memfd and
    // closes it: the filter read holds none.
    static Result<WorkerFilter> read(UniqueFd sealed);

    // A compiled filter's memfd, for an exec'd worker. Its seals forbid any
    // change, so the daemon and every worker load the same programs.
    [[nodiscard]] BorrowedFd sealed() const { return sealed_.borrow(); }
    [[nodiscard]] const std::vector<sock_filter>& entry() const { return entry_; }
    [[nodiscard]] const std::vector<sock_filter>& settle() const { return settle_; }

  private:
    UniqueFd sealed_;
    std::vector<sock_filter> entry_;
    std::vector<sock_filter> settle_;
};

// The part of the privilege drop that takes nothing a worker needs to join
// its namespace: the bounding set, PR_SET_KEEPCAPS, the ambient set,
// PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE, and filter's entry program. A spare
// does it before it waits for its namespace.
Result<void> prepare_confinement(const WorkerFilter& filter);

// Confines the calling process for good, after prepare_confinement with the
// same filter: the five capabilities, and filter's settle program. Call
// after setns and the namespace check, before serving jobs; there is no way
// back.
Result<void> confine_worker(const WorkerFilter& filter);

// The network capabilities a confined worker keeps in its permitted set,
// beside CAP_SETUID and CAP_SETGID, which only become_caller uses.
struct WorkerCapabilities {
    bool net_raw = true;
    bool net_bind_service = true;
    bool net_admin = true;
    bool operator==(const WorkerCapabilities&) const = default;
};

// Makes exactly these effective; the rest stay permitted, to be raised again
// for a later step or job.
Result<void> set_effective_capabilities(const WorkerCapabilities& caps);

// Takes the caller's effective uid, effective gid and supplementary groups
// (and so its file-system identity). Real and saved ids stay the worker's, so
// a caller can never signal, trace or set limits on the worker it shares with
// others. Leaves no capability effective: call set_effective_capabilities
// before the next privileged step.
Result<void> become_caller(const proto::JobCaller& caller);

} // namespace nsbroker::daemon
