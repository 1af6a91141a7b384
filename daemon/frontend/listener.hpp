// The listening socket: AF_UNIX, SOCK_SEQPACKET, at a path, made by the
// daemon or handed over by systemd.
#pragma once

#include <optional>
#include <string>

#include "nsbroker/unique_fd.hpp"

namespace nsbroker::daemon {

// Binds and listens at path (mode 0666: callers are told apart by
// SO_PEERCRED, not by file permissions). A stale socket left by a previous
// run is replaced; a live one, or any other file, is an error. Throws
// SystemError.
UniqueFd listen_at(const std::string& path);

struct ActivatedSocket {
    UniqueFd fd;
    std::string path; // where it listens, as getsockname(2) says
};

// The socket systemd passed (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), or
// nothing when the daemon was not started that way. Exactly one socket is
// accepted, and only an AF_UNIX SOCK_SEQPACKET socket that listens; anything
// else throws SystemError, for the daemon must not serve the wrong socket.
std::optional<ActivatedSocket> activated_socket();

} // namespace nsbroker::daemon
