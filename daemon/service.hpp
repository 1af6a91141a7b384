// nsbrokerd as a service: the event loop everything runs on, the signals it
// answers (SIGTERM and SIGINT stop, SIGHUP reloads the policy), the idle exit
// of a socket-activated daemon, and what systemd is told (READY=, STATUS=,
// STOPPING=, the watchdog). It knows the core and its front ends only through
// their interfaces; main.cpp puts them together.
#pragma once

#include <systemd/sd-event.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sys/event.hpp"
#include "sys/timer.hpp"

namespace nsbroker::daemon {

class Core;
class Frontend;

class Service {
  public:
    // Makes the loop and blocks the signals it handles (SIGCHLD too, for
    // sd_event_add_child). Throws SystemError.
    Service();
    Service(const Service&) = delete;
    Service& operator=(const Service&) = delete;

    [[nodiscard]] sd_event* loop() const { return loop_.get(); }

    // Serves core through the front ends (which outlive the call) until a
    // stop signal, or until it has been idle for exit_idle_time (0: never).
    // description: what the start-up log line says. Returns the exit status.
    int run(Core& core, std::vector<Frontend*> frontends, std::chrono::seconds exit_idle_time,
            const std::string& description);

    // For a caller that drives the loop itself (tests, fuzzing): attaches the
    // core and front ends as run() would, without entering the loop.
    void attach(Core& core, std::vector<Frontend*> frontends, std::chrono::seconds exit_idle_time);
    // One iteration of the loop, waiting at most timeout_usec. False once the
    // loop has finished.
    bool run_once(std::uint64_t timeout_usec);

  private:
    static int on_stop_signal(sd_event_source*, const struct signalfd_siginfo*, void* userdata);
    static int on_reload_signal(sd_event_source*, const struct signalfd_siginfo*, void* userdata);
    void trim_after_load(uint64_t now);
    void idle_check(uint64_t now);
    void stop(const char* why);
    [[nodiscard]] bool idle() const;
    // Tells systemd (when it started the daemon) a one-line summary.
    void notify_status();

    EventLoop loop_;
    std::vector<EventSource> signal_sources_;
    Core* core_ = nullptr;
    std::vector<Frontend*> frontends_;
    std::chrono::seconds exit_idle_time_{0};
    std::optional<OneShotTimer> idle_timer_;
    std::optional<OneShotTimer> status_timer_;
    std::string last_status_;
    uint64_t trimmed_after_ = 0; // the last activity the heap was trimmed after
};

} // namespace nsbroker::daemon
