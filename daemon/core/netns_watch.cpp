// inotify on the /run/netns directory.
#include "core/netns_watch.hpp"

#include <fcntl.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "nsbroker/error.hpp"

namespace nsbroker::daemon {

NetnsWatch::NetnsWatch(sd_event* loop, std::string dir, std::function<void()> on_changed)
    : loop_(loop), dir_(std::move(dir)), on_changed_(std::move(on_changed)) {
    mountinfo_.reset(::open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC));
    if (!mountinfo_) {
        spdlog::warn("/proc/self/mountinfo: {}; names unmounted without being deleted are "
                     "not noticed",
                     std::strerror(errno));
        return;
    }
    sd_event_source* s = nullptr;
    check_sd(sd_event_add_io(loop_, &s, mountinfo_.get(), EPOLLPRI, &NetnsWatch::on_mounts, this),
             "sd_event_add_io(mountinfo)");
    mounts_source_.reset(s);
}

void NetnsWatch::ensure() {
    if (watching_) {
        return;
    }
    if (!inotify_) {
        inotify_.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
        if (!inotify_) {
            spdlog::warn("inotify_init1: {}", std::strerror(errno));
            return;
        }
        sd_event_source* s = nullptr;
        check_sd(sd_event_add_io(loop_, &s, inotify_.get(), EPOLLIN, &NetnsWatch::on_event, this),
                 "sd_event_add_io(inotify)");
        source_.reset(s);
    }
    constexpr uint32_t mask =
        IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;
    if (::inotify_add_watch(inotify_.get(), dir_.c_str(), mask) >= 0) {
        watching_ = true;
        spdlog::debug("watching {} for deleted namespaces", dir_);
    }
}

int NetnsWatch::on_event(sd_event_source*, int fd, uint32_t, void* userdata) {
    auto* self = static_cast<NetnsWatch*>(userdata);
    alignas(inotify_event) char buffer[16 * 1024];
    for (;;) {
        ssize_t n = ::read(fd, buffer, sizeof(buffer));
        if (n <= 0) {
            break;
        }
        for (char* p = buffer; p < buffer + n;) {
            auto* ev = reinterpret_cast<inotify_event*>(p);
            p += sizeof(inotify_event) + ev->len;
            if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) {
                self->watching_ = false;
                continue;
            }
            if ((ev->mask & (IN_DELETE | IN_MOVED_FROM)) && ev->len > 0) {
                self->on_changed_();
            }
        }
    }
    return 0;
}

int NetnsWatch::on_mounts(sd_event_source*, int, uint32_t, void* userdata) {
    // The poll that reported the change also consumed it.
    static_cast<NetnsWatch*>(userdata)->on_changed_();
    return 0;
}

} // namespace nsbroker::daemon
