// What fuzzers send along with a message: one descriptor of a few kinds,
// none of which a peer should accept.
#pragma once

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nsbroker/unique_fd.hpp"

namespace nsbroker::fuzz {

// /dev/null, a pipe's read end, a unix datagram socket, or a network
// namespace (kind 3 and above).
inline UniqueFd descriptor(int kind) {
    switch (kind) {
    case 0:
        return UniqueFd{::open("/dev/null", O_RDONLY | O_CLOEXEC)};
    case 1: {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) < 0) {
            return {};
        }
        ::close(p[1]);
        return UniqueFd{p[0]};
    }
    case 2:
        return UniqueFd{::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
    default:
        return UniqueFd{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
    }
}

} // namespace nsbroker::fuzz
