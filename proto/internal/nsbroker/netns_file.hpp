// Opening and verifying network namespace files. The daemon resolves
// references with these; clients use them to open a path themselves and send
// the descriptor, so that the daemon never trusts a path it was given.
#pragma once

#include <compare>
#include <cstdint>
#include <string>

#include "nsbroker/error.hpp"
#include "nsbroker/unique_fd.hpp"

namespace nsbroker::proto {

// A namespace's identity: the (st_dev, st_ino) of its nsfs file.
struct NetnsIdentity {
    std::uint64_t dev = 0;
    std::uint64_t ino = 0;
    auto operator<=>(const NetnsIdentity&) const = default;
};

// Checks that fd is a network namespace (NSFS_MAGIC, NS_GET_NSTYPE) and
// returns its identity; not_a_netns otherwise.
Result<NetnsIdentity> verify_netns(int fd);

struct NetnsFile {
    UniqueFd fd; // O_RDONLY, close-on-exec, usable with setns(2)
    NetnsIdentity identity;
};

// Opens path without opening whatever else it might be first: it is opened
// O_PATH, checked to be on nsfs, and only then reopened for reading.
Result<NetnsFile> open_netns_file(const std::string& path);

} // namespace nsbroker::proto
