// The `namespaces` reply: every namespace named under /run/netns, whether it
// has a worker or not, and every namespace that has one, named or not.
#pragma once

#include <string>
#include <vector>

#include "nsbroker/protocol.hpp"

namespace nsbroker::daemon {

// Merges the workers' namespaces (WorkerPool::describe) with the names under
// netns_dir, sorted by name, and cut to fit in one message (`truncated`).
proto::NamespacesReply namespace_listing(const std::string& netns_dir,
                                         std::vector<proto::NamespaceInfo> with_workers);

} // namespace nsbroker::daemon
