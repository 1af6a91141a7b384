// Creating the daemon's listening socket.
#include "listener.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "nsbroker/address.hpp"
#include "nsbroker/error.hpp"

namespace nsbroker::daemon {

namespace {

bool someone_listens(const proto::SocketAddress& address) {
    UniqueFd probe{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)};
    return probe && ::connect(probe.get(), address.get(), address.length) == 0;
}

} // namespace

UniqueFd listen_at(const std::string& path) {
    auto address = proto::parse_address(AF_UNIX, path);
    if (!address || path.front() == '@') {
        throw SystemError(EINVAL, "socket path \"" + path + "\" is not a usable path");
    }
    auto parent = std::filesystem::path(path).parent_path();
    if (!parent.empty() && ::mkdir(parent.c_str(), 0755) < 0 && errno != EEXIST) {
        throw_errno("mkdir " + parent.string());
    }
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            throw SystemError(EEXIST, path + " exists and is not a socket");
        }
        if (someone_listens(*address)) {
            throw SystemError(EADDRINUSE, "another daemon is listening on " + path);
        }
        ::unlink(path.c_str());
    }
    UniqueFd fd{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)};
    if (!fd) {
        throw_errno("socket");
    }
    if (::bind(fd.get(), address->get(), address->length) < 0) {
        throw_errno("bind " + path);
    }
    if (::chmod(path.c_str(), 0666) < 0) {
        throw_errno("chmod " + path);
    }
    if (::listen(fd.get(), SOMAXCONN) < 0) {
        throw_errno("listen " + path);
    }
    return fd;
}

} // namespace nsbroker::daemon
