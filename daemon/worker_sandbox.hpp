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

} // namespace nsbroker::daemon
