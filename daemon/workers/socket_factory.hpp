// Making sockets from SocketSpecs in the calling thread's network namespace.
// Runs in the worker, after setns.
#pragma once

#include <functional>
#include <optional>
#include <vector>

#include "nsbroker/error.hpp"
#include "nsbroker/protocol.hpp"
#include "nsbroker/unique_fd.hpp"
#include "nsbroker/worker_protocol.hpp"
#include "workers/worker_sandbox.hpp"

namespace nsbroker::daemon {

struct MadeSockets {
    std::vector<UniqueFd> fds;
    proto::SocketReply reply; // one SocketInfo per fd, same order
};

// Makes exactly these capabilities effective for the next step.
using UseCapabilities = std::function<Result<void>(const WorkerCapabilities&)>;

// All or nothing: on any failure every socket made so far is closed and the
// error names the spec and the step that failed. Before each step (socket,
// each privileged option, bind) use is called with what that step may hold:
// everything for root (restricted absent), otherwise only the capability of
// the grant that covers the step, and nothing for the rest. A socket thus
// carries a capability from its creation only under the grants that mean it
// (raw, packet, net_admin): SO_MARK set under `mark` does not leave a socket
// that netlink would take for its creator's CAP_NET_ADMIN.
Result<MadeSockets> make_sockets(const std::vector<proto::SocketSpec>& specs,
                                 const std::optional<proto::JobRestriction>& restricted,
                                 const UseCapabilities& use);

} // namespace nsbroker::daemon
