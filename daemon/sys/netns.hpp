// Resolving a namespace reference to an open, verified network namespace.
// A file counts as a network namespace only when fstatfs says NSFS_MAGIC and
// NS_GET_NSTYPE says CLONE_NEWNET; its identity is the nsfs (st_dev, st_ino).
#pragma once

#include <sys/types.h>

#include <compare>
#include <optional>
#include <string>
#include <vector>

#include "nsbroker/error.hpp"
#include "nsbroker/netns_file.hpp"
#include "nsbroker/protocol.hpp"
#include "nsbroker/unique_fd.hpp"

namespace nsbroker::daemon {

inline constexpr const char* default_netns_dir = "/run/netns";

using proto::NetnsIdentity;
using proto::verify_netns;

struct ResolvedNetns {
    UniqueFd fd; // O_RDONLY, close-on-exec, usable with setns(2)
    NetnsIdentity identity;
    std::optional<std::string> name; // when reached through /run/netns
    UniqueFd pidfd;                  // when reached through a process: that process
};

// Opens path without following it into a device or FIFO first: it is opened
// O_PATH, checked to be on nsfs, and only then reopened for reading.
Result<ResolvedNetns> open_netns_path(const std::string& path);

// The process that sent a request: its pid, and a pidfd of it when the
// kernel gives one with the connection (SO_PEERPIDFD), lent by the
// connection, which outlives the request.
struct CallerProcess {
    pid_t pid = 0;
    BorrowedFd pidfd;
};

// Resolves any reference. passed_fd is the descriptor sent with the request
// (used only for NetnsRef::Kind::fd; ownership moves into the result). A pid
// reference to the caller itself goes through the caller's own pidfd. Paths
// and pids are opened with the daemon's rights: see Core::open_sockets for
// who may name a namespace by path.
Result<ResolvedNetns> resolve_netns(const proto::NetnsRef& ref, UniqueFd passed_fd,
                                    const std::string& netns_dir = default_netns_dir,
                                    const CallerProcess& caller = {});

// The identity a reference names, found by stat(2) alone, or nothing. It
// proves nothing about the file by itself; it is only good for finding a
// running worker, whose namespace cannot be freed and so keeps its identity.
std::optional<NetnsIdentity> peek_identity(const proto::NetnsRef& ref, BorrowedFd passed_fd,
                                           const std::string& netns_dir = default_netns_dir);

// Whether a process of uid, in the daemon's own user namespace, could setns
// into this network namespace itself: the kernel lets it when it owns the
// ancestor of the namespace's owning user namespace that was made in the
// daemon's user namespace (what `unshare -Urn` makes, nested ones too). A
// namespace owned by the daemon's own user namespace is nobody's but root's.
Result<bool> netns_owned_by(int netns_fd, uid_t uid);

// The identity of the network namespace the calling thread is in.
Result<NetnsIdentity> current_netns();

} // namespace nsbroker::daemon
