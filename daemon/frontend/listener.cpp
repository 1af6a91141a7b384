// Creating the daemon's listening socket.
#include "frontend/listener.hpp"

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
#include "nsbroker/throw_errno.hpp"

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
    // Whoever may write to the directory could put another file in the
    // socket's place: it must be the daemon's own, and no one else's to
    // write to.
    if (!parent.empty()) {
        struct stat dir {};
        if (::lstat(parent.c_str(), &dir) < 0) {
            throw_errno("lstat " + parent.string());
        }
        if (!S_ISDIR(dir.st_mode) || dir.st_uid != ::geteuid() ||
            (dir.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
            throw SystemError(EPERM, parent.string() +
                                         " must be a directory of the daemon's own user that "
                                         "no one else may write to");
        }
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
    // Everyone may connect (the policy decides what they get). The mode is
    // set by the umask at bind(2), never by a chmod(2) of the path, which
    // would follow whatever is there by then.
    const mode_t umask_before = ::umask(0111);
    const int bound = ::bind(fd.get(), address->get(), address->length);
    const int bind_errno = errno;
    ::umask(umask_before);
    if (bound < 0) {
        throw SystemError(bind_errno, "bind " + path);
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
