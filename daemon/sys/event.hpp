// Owning handles for sd-event objects, so that sources are disabled and
// released by destructors like every other resource in the daemon.
#pragma once

#include <systemd/sd-event.h>

#include <memory>

namespace nsbroker::daemon {

struct EventSourceRelease {
    void operator()(sd_event_source* s) const noexcept { sd_event_source_disable_unref(s); }
};
using EventSource = std::unique_ptr<sd_event_source, EventSourceRelease>;

struct EventLoopRelease {
    void operator()(sd_event* e) const noexcept { sd_event_unref(e); }
};
using EventLoop = std::unique_ptr<sd_event, EventLoopRelease>;

// Throws SystemError for a negative sd-* return value (which is -errno).
void check_sd(int r, const char* what);

} // namespace nsbroker::daemon
