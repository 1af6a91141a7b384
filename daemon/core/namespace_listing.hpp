// The `namespaces` reply: every namespace named under /run/netns, whether it
// has a worker or not, and every namespace that has one, named or not, in
// pages ordered by the namespaces' (dev, ino).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "nsbroker/protocol.hpp"

namespace nsbroker::daemon {

// Merges the workers' namespaces (WorkerPool::describe) with the names under
// netns_dir: one entry for each namespace, its names sorted, in the order of
// (dev, ino).
std::vector<proto::NamespaceInfo> namespace_listing(const std::string& netns_dir,
                                                    std::vector<proto::NamespaceInfo> with_workers);

// The page of a listing in that order that comes after `after` (from the
// start when there is none): at most `limit` entries, and when
// `one_message`, only as many as fit in one message of the socket protocol.
// A namespace whose entry alone does not fit gets as many of its names as
// fit, and the cursor goes on from the last of them. next_cursor is set
// whenever something is left after the page.
proto::NamespacesReply namespace_page(std::vector<proto::NamespaceInfo> listing,
                                      const std::optional<proto::NamespacesCursor>& after,
                                      std::size_t limit, bool one_message);

} // namespace nsbroker::daemon
