// Creating the daemon's listening socket.
#include "listener.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

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

std::optional<ActivatedSocket> activated_socket() {
    char** names = nullptr;
    int n = sd_listen_fds_with_names(1, &names);
    std::vector<std::string> fd_names;
    for (char** name = names; name && *name; ++name) {
        fd_names.emplace_back(*name);
        std::free(*name);
    }
    std::free(names);
    if (n < 0) {
        throw SystemError(-n, "LISTEN_FDS");
    }
    if (n == 0) {
        return std::nullopt;
    }
    // Own every descriptor at once, so that none is left open on an error.
    std::vector<UniqueFd> fds;
    for (int i = 0; i < n; ++i) {
        fds.emplace_back(SD_LISTEN_FDS_START + i);
    }
    if (n != 1) {
        throw SystemError(EINVAL, "systemd passed " + std::to_string(n) +
                                      " sockets; nsbrokerd serves exactly one");
    }
    const int fd = fds.front().get();
    const std::string name = fd_names.empty() ? "unknown" : fd_names.front();
    if (sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, nullptr, 0) <= 0) {
        throw SystemError(EINVAL, "the socket systemd passed (" + name +
                                      ") is not a listening AF_UNIX SOCK_SEQPACKET socket");
    }
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        throw_errno("fcntl(O_NONBLOCK) on the passed socket");
    }
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) < 0) {
        throw_errno("getsockname on the passed socket");
    }
    return ActivatedSocket{std::move(fds.front()),
                           proto::format_address(reinterpret_cast<sockaddr*>(&address), length)};
}

} // namespace nsbroker::daemon
