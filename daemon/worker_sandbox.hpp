// What a worker gives up once it is in its namespace: every capability but
// the three that socket(2), bind(2) and setsockopt(2) check in the
// namespace, the bounding set, the ability to gain privileges or be dumped,
// and every system call a socket maker does not use.
#pragma once

#include "nsbroker/error.hpp"

namespace nsbroker::daemon {

// Confines the calling process for good. Call after setns and the
// namespace check, before serving jobs; there is no way back.
Result<void> confine_worker();

// The three capabilities a confined worker keeps in its permitted set.
struct WorkerCapabilities {
    bool net_raw = true;
    bool net_bind_service = true;
    bool net_admin = true;
    bool operator==(const WorkerCapabilities&) const = default;
};

// Makes exactly these effective; the rest stay permitted, to be raised again
// for a later job.
Result<void> set_effective_capabilities(const WorkerCapabilities& caps);

} // namespace nsbroker::daemon
