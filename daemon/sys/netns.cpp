// Namespace references: open, verify, identify.
#include "sys/netns.hpp"

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
    return ResolvedNetns{std::move(file->fd), file->identity, std::nullopt, {}};
}

namespace {

Error no_process(pid_t pid) {
    return make_error(ErrorCode::not_found, "no process " + std::to_string(pid), ESRCH);
}

// The namespace of the process pidfd refers to. Since Linux 6.11 the pidfd
// gives it directly. Before, /proc/PID/ns/net is opened, and if the process
// is still alive afterwards the pid cannot have been reused in between, so
// the file is that process's. Both need the daemon to be allowed to read the
// process (CAP_SYS_PTRACE, or the same uid); the namespace is then judged
// by the policy like any other, and a process's existence is no secret
// (pidfd_open(2) tells anyone).
Result<ResolvedNetns> open_netns_of_pidfd(int pidfd, pid_t pid) {
    UniqueFd direct{::ioctl(pidfd, PIDFD_GET_NET_NAMESPACE, 0)};
    if (direct) {
        auto identity = verify_netns(direct.get());
        if (!identity) {
            return std::move(identity).error();
        }
        return ResolvedNetns{std::move(direct), *identity, std::nullopt, {}};
    }
    if (errno == ESRCH) {
        return no_process(pid);
    }
    if (errno != ENOTTY && errno != EINVAL && errno != EPERM && errno != EACCES) {
        return kernel_error("PIDFD_GET_NET_NAMESPACE");
    }
    auto r = open_netns_path("/proc/" + std::to_string(pid) + "/ns/net");
    if (!r) {
        return r.error().code == ErrorCode::not_found ? no_process(pid) : std::move(r).error();
    }
    // Signal 0 checks only that the process lives; EPERM says it does.
    if (::syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0) < 0 && errno != EPERM) {
        return no_process(pid);
    }
    return r;
}

// A pidfd taken first pins the process the caller meant; it is kept with the
// result, so that the daemon learns when that process exits.
Result<ResolvedNetns> open_netns_of_pid(pid_t pid) {
    UniqueFd pidfd{static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))};
    if (!pidfd) {
        if (errno == ESRCH) {
            return no_process(pid);
        }
        return kernel_error("pidfd_open");
    }
    auto r = open_netns_of_pidfd(pidfd.get(), pid);
    if (r) {
        r->pidfd = std::move(pidfd);
    }
    return r;
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
        if (caller.pidfd && ref.pid == caller.pid) {
            // The caller's own process, pinned when it connected.
            auto r = open_netns_of_pidfd(caller.pidfd.get(), caller.pid);
            if (r) {
                r->pidfd = caller.pidfd.duplicate();
            }
            return r;
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
        return ResolvedNetns{std::move(passed_fd), *identity, std::nullopt, {}};
    }
    }
    return make_error(ErrorCode::internal, "unknown namespace reference");
}

std::optional<NetnsIdentity> peek_identity(const proto::NetnsRef& ref, BorrowedFd passed_fd,
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
        r = passed_fd ? ::fstat(passed_fd.get(), &st) : -1;
        break;
    }
    if (r < 0) {
        return std::nullopt;
    }
    return NetnsIdentity{static_cast<std::uint64_t>(st.st_dev),
                         static_cast<std::uint64_t>(st.st_ino)};
}

namespace {

Result<NetnsIdentity> identity_of(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) < 0) {
        return kernel_error("fstat");
    }
    return NetnsIdentity{static_cast<std::uint64_t>(st.st_dev),
                         static_cast<std::uint64_t>(st.st_ino)};
}

// User namespaces nest at most 32 deep.
constexpr int max_userns_depth = 33;

} // namespace

Result<bool> netns_owned_by(int netns_fd, uid_t uid) {
    struct stat own {};
    if (::stat("/proc/self/ns/user", &own) < 0) {
        return kernel_error("/proc/self/ns/user");
    }
    const NetnsIdentity daemon_userns{static_cast<std::uint64_t>(own.st_dev),
                                      static_cast<std::uint64_t>(own.st_ino)};
    UniqueFd userns{::ioctl(netns_fd, NS_GET_USERNS)};
    if (!userns) {
        return kernel_error("NS_GET_USERNS");
    }
    for (int depth = 0; depth < max_userns_depth; ++depth) {
        auto id = identity_of(userns.get());
        if (!id) {
            return std::move(id).error();
        }
        if (*id == daemon_userns) {
            return false;
        }
        UniqueFd parent{::ioctl(userns.get(), NS_GET_PARENT)};
        if (!parent) {
            // EPERM: the parent lies outside the daemon's user namespace.
            if (errno == EPERM) {
                return false;
            }
            return kernel_error("NS_GET_PARENT");
        }
        auto parent_id = identity_of(parent.get());
        if (!parent_id) {
            return std::move(parent_id).error();
        }
        if (*parent_id == daemon_userns) {
            uid_t owner = 0;
            if (::ioctl(userns.get(), NS_GET_OWNER_UID, &owner) < 0) {
                return kernel_error("NS_GET_OWNER_UID");
            }
            return owner == uid;
        }
        userns = std::move(parent);
    }
    return false;
}

Result<NetnsIdentity> current_netns() {
    // The kernel's own link: a network namespace's nsfs file, so one stat
    // says which (a new worker asks this on the way to its first socket).
    struct stat st {};
    if (::stat("/proc/thread-self/ns/net", &st) < 0) {
        return kernel_error("/proc/thread-self/ns/net");
    }
    return NetnsIdentity{st.st_dev, st.st_ino};
}

} // namespace nsbroker::daemon
