// Watches /run/netns with inotify and reports names that disappear, so that
// the worker of a deleted namespace exits and does not keep it alive.
#pragma once

#include <systemd/sd-event.h>

#include <functional>
#include <string>

#include "nsbroker/unique_fd.hpp"
#include "sys/event.hpp"

namespace nsbroker::daemon {

class NetnsWatch {
  public:
    NetnsWatch(sd_event* loop, std::string dir, std::function<void(const std::string&)> on_deleted);

    // Starts watching if the directory exists and no watch is active yet.
    // Called whenever a name was resolved, since ip-netns creates the
    // directory on first use.
    void ensure();

  private:
    static int on_event(sd_event_source*, int fd, uint32_t, void* userdata);

    sd_event* loop_;
    std::string dir_;
    std::function<void(const std::string&)> on_deleted_;
    UniqueFd inotify_;
    EventSource source_;
    bool watching_ = false;
};

} // namespace nsbroker::daemon
