// Making sockets from SocketSpecs in the calling thread's network namespace.
// Runs in the worker, after setns.
#pragma once

#include <vector>

#include "nsbroker/error.hpp"
#include "nsbroker/protocol.hpp"
#include "nsbroker/unique_fd.hpp"

namespace nsbroker::daemon {

struct MadeSockets {
    std::vector<UniqueFd> fds;
    proto::SocketReply reply; // one SocketInfo per fd, same order
};

// All or nothing: on any failure every socket made so far is closed and the
// error names the spec and the step that failed.
Result<MadeSockets> make_sockets(const std::vector<proto::SocketSpec>& specs);

} // namespace nsbroker::daemon
