// Network namespace files: open safely, verify, identify.
#include "nsbroker/netns_file.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <cerrno>
#include <cstring>

namespace nsbroker::proto {

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

Result<NetnsFile> open_netns_file(const std::string& path) {
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
    return NetnsFile{std::move(fd), *identity};
}

} // namespace nsbroker::proto
