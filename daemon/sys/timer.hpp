// A re-armable one-shot timer on the daemon's event loop: one CLOCK_MONOTONIC
// sd-event time source, made once and then only re-armed or switched off,
// for deadlines that keep changing (idle checks, job deadlines, grace
// periods, periodic reports).
#pragma once

#include <systemd/sd-event.h>

#include <cstdint>
#include <functional>

#include "sys/event.hpp"

namespace nsbroker::daemon {

class OneShotTimer {
  public:
    // Called from the loop with the time the timer was armed for
    // (CLOCK_MONOTONIC, microseconds), which has passed. The timer is
    // disarmed by then, so the callback may arm it again. An exception it
    // throws is logged and goes no further.
    using Callback = std::function<void(std::uint64_t armed_for_usec)>;

    // The source is made here, disarmed, so that arming never fails later.
    // Throws SystemError when sd-event cannot make it.
    OneShotTimer(sd_event* loop, Callback on_elapsed);
    // The loop holds a pointer to the timer: it stays where it was made.
    OneShotTimer(const OneShotTimer&) = delete;
    OneShotTimer& operator=(const OneShotTimer&) = delete;

    // Fires once at usec on CLOCK_MONOTONIC, replacing any earlier arming.
    void arm_at(std::uint64_t usec);
    // Fires once usec after the loop's current time (sd_event_now), which is
    // when the current iteration began.
    void arm_in(std::uint64_t usec);
    void disarm();
    [[nodiscard]] bool armed() const;

  private:
    static int on_time(sd_event_source* source, std::uint64_t usec, void* userdata);

    Callback on_elapsed_;
    EventSource source_;
};

} // namespace nsbroker::daemon
