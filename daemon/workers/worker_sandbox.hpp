// What a worker gives up once it is in its namespace: every capability but
// the three that socket(2), bind(2) and setsockopt(2) check in the
// namespace and the two that let it take a caller's identity, the bounding
// set, the ability to gain privileges or be dumped, and every system call a
// socket maker does not use.
#pragma once

#include "nsbroker/error.hpp"
#include "nsbroker/protocol.hpp"
#include "nsbroker/worker_protocol.hpp"

namespace nsbroker::daemon {

// Confines the calling process for good. Call after setns and the
// namespace check, before serving jobs; there is no way back.
Result<void> confine_worker();

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
