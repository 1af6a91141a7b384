// Namespace references: open, verify, identify.
#include "netns.hpp"

#include "nsbroker/codec.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

// From linux/pidfd.h of Linux 6.11, which Debian 12's headers predate.
#ifndef PIDFD_GET_NET_NAMESPACE
#define PIDFD_GET_NET_NAMESPACE _IO(0xFF, 4)
#endif

namespace nsbroker::daemon {

Result<ResolvedNetns> open_netns_path(const std::string& path) {
    auto file = proto::open_netns_file(path);
    if (!file) {
        return std::move(file).error();
    }
    return ResolvedNetns{std::move(file->fd), file->identity, std::nullopt};
}

namespace {

Error no_process(pid_t pid) {
    return make_error(ErrorCode::not_found, "no process " + std::to_string(pid), ESRCH);
}

// The namespace of the process pidfd refers to. Since Linux 6.11 the pidfd
// gives it directly. Before, /proc/PID/ns/net is opened, and if the process
// is still alive afterwards the pid cannot have been reused in between, so
// the file is that process's.
Result<ResolvedNetns> open_netns_of_pidfd(int pidfd, pid_t pid) {
    UniqueFd direct{::ioctl(pidfd, PIDFD_GET_NET_NAMESPACE, 0)};
    if (direct) {
        auto identity = verify_netns(direct.get());
        if (!identity) {
            return std::move(identity).error();
        }
        return ResolvedNetns{std::move(direct), *identity, std::nullopt};
    }
    if (errno == ESRCH) {
        return no_process(pid);
    }
    if (errno != ENOTTY && errno != EINVAL) {
        return make_error(ErrorCode::kernel,
                          std::string("PIDFD_GET_NET_NAMESPACE: ") + std::strerror(errno), errno);
    }
    auto r = open_netns_path("/proc/" + std::to_string(pid) + "/ns/net");
    if (!r) {
        return r.error().code == ErrorCode::not_found ? no_process(pid) : std::move(r).error();
    }
    if (::syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0) < 0) {
        return no_process(pid);
    }
    return r;
}

// A pidfd taken first pins the process the caller meant.
Result<ResolvedNetns> open_netns_of_pid(pid_t pid) {
    UniqueFd pidfd{static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))};
    if (!pidfd) {
        if (errno == ESRCH) {
            return no_process(pid);
        }
        return make_error(ErrorCode::kernel, std::string("pidfd_open: ") + std::strerror(errno),
                          errno);
    }
    return open_netns_of_pidfd(pidfd.get(), pid);
}

} // namespace

Result<ResolvedNetns> resolve_netns(const proto::NetnsRef& ref, UniqueFd passed_fd,
                                    const std::string& netns_dir, const CallerProcess& caller) {
    using Kind = proto::NetnsRef::Kind;
    switch (ref.kind) {
    case Kind::name: {
        if (auto ok = proto::check_netns_name(ref.text); !ok) {
            return std::move(ok).error();
        }
        auto r = open_netns_path(netns_dir + "/" + ref.text);
        if (!r) {
            Error e = std::move(r).error();
            if (e.code == ErrorCode::not_found) {
                e.message = "no network namespace named \"" + ref.text + "\" in " + netns_dir;
            }
            return e;
        }
        r->name = ref.text;
        return r;
    }
    case Kind::path:
        return open_netns_path(ref.text);
    case Kind::pid:
        if (caller.pidfd >= 0 && ref.pid == caller.pid) {
            return open_netns_of_pidfd(caller.pidfd, caller.pid);
        }
        return open_netns_of_pid(ref.pid);
    case Kind::fd: {
        if (!passed_fd) {
            return make_error(ErrorCode::invalid_request,
                              "netns {\"fd\": 0} needs a file descriptor sent with the request");
        }
        auto identity = verify_netns(passed_fd.get());
        if (!identity) {
            return std::move(identity).error();
        }
        return ResolvedNetns{std::move(passed_fd), *identity, std::nullopt};
    }
    }
    return make_error(ErrorCode::internal, "unknown namespace reference");
}

std::optional<NetnsIdentity> peek_identity(const proto::NetnsRef& ref, int passed_fd,
                                           const std::string& netns_dir) {
    using Kind = proto::NetnsRef::Kind;
    struct stat st {};
    int r = -1;
    switch (ref.kind) {
    case Kind::name:
        r = ::stat((netns_dir + "/" + ref.text).c_str(), &st);
        break;
    case Kind::path:
        r = ::stat(ref.text.c_str(), &st);
        break;
    case Kind::pid:
        r = ::stat(("/proc/" + std::to_string(ref.pid) + "/ns/net").c_str(), &st);
        break;
    case Kind::fd:
        r = passed_fd >= 0 ? ::fstat(passed_fd, &st) : -1;
        break;
    }
    if (r < 0) {
        return std::nullopt;
    }
    return NetnsIdentity{static_cast<std::uint64_t>(st.st_dev),
                         static_cast<std::uint64_t>(st.st_ino)};
}

Result<uid_t> netns_owner_uid(int netns_fd) {
    UniqueFd userns{::ioctl(netns_fd, NS_GET_USERNS)};
    if (!userns) {
        return make_error(ErrorCode::kernel, std::string("NS_GET_USERNS: ") + std::strerror(errno),
                          errno);
    }
    uid_t owner = 0;
    if (::ioctl(userns.get(), NS_GET_OWNER_UID, &owner) < 0) {
        return make_error(ErrorCode::kernel,
                          std::string("NS_GET_OWNER_UID: ") + std::strerror(errno), errno);
    }
    return owner;
}

Result<NetnsIdentity> current_netns() {
    auto file = proto::open_netns_file("/proc/thread-self/ns/net");
    if (!file) {
        return std::move(file).error();
    }
    return file->identity;
}

} // namespace nsbroker::daemon
