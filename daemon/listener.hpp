// The listening socket: AF_UNIX, SOCK_SEQPACKET, at a path.
#pragma once

#include <string>

#include "nsbroker/unique_fd.hpp"

namespace nsbroker::daemon {

// Binds and listens at path (mode 0666: callers are told apart by
// SO_PEERCRED, not by file permissions). A stale socket left by a previous
// run is replaced; a live one, or any other file, is an error. Throws
// SystemError.
UniqueFd listen_at(const std::string& path);

} // namespace nsbroker::daemon
