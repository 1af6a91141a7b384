// Namespace references: open, verify, identify.
#include "netns.hpp"

#include "nsbroker/codec.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <cerrno>
#include <cstring>

namespace nsbroker::daemon {

namespace {

Error open_error(const std::string& what, int err) {
    if (err == ENOENT || err == ENOTDIR) {
        return make_error(ErrorCode::not_found, what + " does not exist", err);
    }
    if (err == EACCES || err == EPERM) {
        return make_error(ErrorCode::permission_denied, what + ": " + std::strerror(err), err);
    }
    return make_error(ErrorCode::kernel, what + ": " + std::strerror(err), err);
}

} // namespace

Result<NetnsIdentity> verify_netns(int fd) {
    struct statfs fs {};
    if (::fstatfs(fd, &fs) < 0) {
        return make_error(ErrorCode::kernel, std::string("fstatfs: ") + std::strerror(errno),
                          errno);
    }
    if (fs.f_type != static_cast<decltype(fs.f_type)>(NSFS_MAGIC)) {
        return make_error(ErrorCode::not_a_netns, "not a namespace file (not on nsfs)");
    }
    int type = ::ioctl(fd, NS_GET_NSTYPE);
    if (type < 0) {
        return make_error(ErrorCode::not_a_netns,
                          std::string("NS_GET_NSTYPE: ") + std::strerror(errno), errno);
    }
    if (type != CLONE_NEWNET) {
        return make_error(ErrorCode::not_a_netns, "a namespace, but not a network namespace");
    }
    struct stat st {};
    if (::fstat(fd, &st) < 0) {
        return make_error(ErrorCode::kernel, std::string("fstat: ") + std::strerror(errno), errno);
    }
    return NetnsIdentity{static_cast<std::uint64_t>(st.st_dev),
                         static_cast<std::uint64_t>(st.st_ino)};
}

Result<ResolvedNetns> open_netns_path(const std::string& path) {
    UniqueFd pathfd{::open(path.c_str(), O_PATH | O_CLOEXEC)};
    if (!pathfd) {
        return open_error(path, errno);
    }
    struct statfs fs {};
    if (::fstatfs(pathfd.get(), &fs) < 0) {
        return open_error(path, errno);
    }
    if (fs.f_type != static_cast<decltype(fs.f_type)>(NSFS_MAGIC)) {
        return make_error(ErrorCode::not_a_netns,
                          path + " is not a network namespace (not on nsfs)");
    }
    // Reopen through the O_PATH descriptor, so that what is opened is what was checked.
    std::string proc = "/proc/self/fd/" + std::to_string(pathfd.get());
    UniqueFd fd{::open(proc.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)};
    if (!fd) {
        return open_error(path, errno);
    }
    auto identity = verify_netns(fd.get());
    if (!identity) {
        Error e = std::move(identity).error();
        e.message = path + ": " + e.message;
        return e;
    }
    return ResolvedNetns{std::move(fd), *identity, std::nullopt};
}

Result<ResolvedNetns> resolve_netns(const proto::NetnsRef& ref, UniqueFd passed_fd,
                                    const std::string& netns_dir) {
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
    case Kind::pid: {
        auto r = open_netns_path("/proc/" + std::to_string(ref.pid) + "/ns/net");
        if (!r && r.error().code == ErrorCode::not_found) {
            return make_error(ErrorCode::not_found, "no process " + std::to_string(ref.pid),
                              ENOENT);
        }
        return r;
    }
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

Result<NetnsIdentity> current_netns() {
    UniqueFd fd{::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)};
    if (!fd) {
        return open_error("/proc/thread-self/ns/net", errno);
    }
    return verify_netns(fd.get());
}

} // namespace nsbroker::daemon
