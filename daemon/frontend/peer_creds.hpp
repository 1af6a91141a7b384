// Who is at the other end of an AF_UNIX connection, as the kernel recorded it
// at connect(2): the only identity the socket front end trusts.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "nsbroker/unique_fd.hpp"

namespace nsbroker::daemon {

struct PeerCredentials {
    ucred cred{};              // SO_PEERCRED
    std::vector<gid_t> groups; // SO_PEERGROUPS
    UniqueFd pidfd;            // SO_PEERPIDFD; empty where the kernel predates it
};

// How reading the credentials came out. Only a kernel too old for
// SO_PEERPIDFD is tolerated (the pidfd stays empty); anything else leaves the
// peer without an identity, and nothing can be authorized without one.
enum class PeerRead {
    complete,
    no_pidfd, // Linux before 6.5: pid references to the caller go by pid
    failed,   // errno says why; `what` names the option that failed
};

struct PeerReadResult {
    PeerRead outcome = PeerRead::failed;
    PeerCredentials creds;
    const char* what = ""; // the socket option that failed
    int error = 0;         // its errno
};

PeerReadResult read_peer_credentials(BorrowedFd connection);

} // namespace nsbroker::daemon
