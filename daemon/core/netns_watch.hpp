// Watches /run/netns with inotify, and the mount table, and reports when a
// name may have gone or changed: ip-netns deletes a name by unmounting and
// unlinking it, and an administrator may unmount one, or mount another
// namespace over it, without unlinking anything. The worker of a namespace
// no longer named exits and does not keep it alive, and channels granted
// through a name stop serving when it leads elsewhere.
#pragma once

#include <systemd/sd-event.h>

#include <functional>
#include <string>

#include "nsbroker/unique_fd.hpp"
#include "sys/event.hpp"

namespace nsbroker::daemon {

class NetnsWatch {
  public:
    NetnsWatch(sd_event* loop, std::string dir, std::function<void()> on_changed);

    // Starts watching if the directory exists and no watch is active yet.
    // Called whenever a name was resolved, since ip-netns creates the
    // directory on first use.
    void ensure();

  private:
    static int on_event(sd_event_source*, int fd, uint32_t, void* userdata);
    static int on_mounts(sd_event_source*, int fd, uint32_t, void* userdata);

    sd_event* loop_;
    std::string dir_;
    std::function<void()> on_changed_;
    UniqueFd inotify_;
    EventSource source_;
    // /proc/self/mountinfo, which polls EPOLLPRI when the mount table changes.
    UniqueFd mountinfo_;
    EventSource mounts_source_;
    bool watching_ = false;
};

} // namespace nsbroker::daemon
