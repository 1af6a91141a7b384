// SO_PEERCRED, SO_PEERGROUPS and SO_PEERPIDFD of an accepted connection.
#include "frontend/peer_creds.hpp"

#include <cerrno>
#include <optional>

// From asm-generic/socket.h of Linux 6.5, which Debian 12's headers predate.
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace nsbroker::daemon {

namespace {

// The kernel keeps at most NGROUPS_MAX (65536) supplementary groups.
constexpr std::size_t max_groups = 65536;

std::optional<std::vector<gid_t>> peer_groups(int fd) {
    std::vector<gid_t> groups(64);
    for (;;) {
        auto length = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &length) == 0) {
            groups.resize(length / sizeof(gid_t));
            return groups;
        }
        if (errno != ERANGE || groups.size() >= max_groups) {
            return std::nullopt;
        }
        groups.resize(length / sizeof(gid_t) + 1);
    }
}

} // namespace

PeerReadResult read_peer_credentials(BorrowedFd connection) {
    const int fd = connection.get();
    PeerReadResult r;
    auto fail = [&r](const char* what) {
        r.outcome = PeerRead::failed;
        r.what = what;
        r.error = errno;
        return std::move(r);
    };
    socklen_t length = sizeof r.creds.cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &r.creds.cred, &length) < 0) {
        return fail("SO_PEERCRED");
    }
    auto groups = peer_groups(fd);
    if (!groups) {
        return fail("SO_PEERGROUPS");
    }
    r.creds.groups = std::move(*groups);
    int pidfd = -1;
    length = sizeof pidfd;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &length) == 0) {
        r.creds.pidfd = UniqueFd{pidfd};
        r.outcome = PeerRead::complete;
        return r;
    }
    if (errno == ENOPROTOOPT) {
        r.outcome = PeerRead::no_pidfd;
        return r;
    }
    return fail("SO_PEERPIDFD");
}

} // namespace nsbroker::daemon
