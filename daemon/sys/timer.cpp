// One-shot timers on sd-event: a time source kept for the timer's life and
// re-armed with sd_event_source_set_time and SD_EVENT_ONESHOT.
#include "sys/timer.hpp"

#include <spdlog/spdlog.h>

namespace nsbroker::daemon {

OneShotTimer::OneShotTimer(sd_event* loop, Callback on_elapsed)
    : on_elapsed_(std::move(on_elapsed)) {
    sd_event_source* s = nullptr;
    // Accuracy 0 takes sd-event's default: the daemon's deadlines are
    // seconds long, and a coarse timer lets the loop wake up less often.
    check_sd(sd_event_add_time(loop, &s, CLOCK_MONOTONIC, 0, 0, &OneShotTimer::on_time, this),
             "sd_event_add_time");
    source_.reset(s);
    sd_event_source_set_enabled(source_.get(), SD_EVENT_OFF);
}

void OneShotTimer::arm_at(std::uint64_t usec) {
    if (sd_event_source_set_time(source_.get(), usec) >= 0) {
        sd_event_source_set_enabled(source_.get(), SD_EVENT_ONESHOT);
    }
}

void OneShotTimer::arm_in(std::uint64_t usec) {
    if (sd_event_source_set_time_relative(source_.get(), usec) >= 0) {
        sd_event_source_set_enabled(source_.get(), SD_EVENT_ONESHOT);
    }
}

void OneShotTimer::disarm() {
    sd_event_source_set_enabled(source_.get(), SD_EVENT_OFF);
}

bool OneShotTimer::armed() const {
    int enabled = SD_EVENT_OFF;
    return sd_event_source_get_enabled(source_.get(), &enabled) >= 0 && enabled != SD_EVENT_OFF;
}

// sd-event switches a SD_EVENT_ONESHOT source off before it calls here.
int OneShotTimer::on_time(sd_event_source*, std::uint64_t usec, void* userdata) {
    auto* self = static_cast<OneShotTimer*>(userdata);
    try {
        self->on_elapsed_(usec);
    } catch (const std::exception& e) {
        spdlog::error("timer: {}", e.what());
    }
    return 0;
}

} // namespace nsbroker::daemon
