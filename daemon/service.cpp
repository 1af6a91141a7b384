// The loop, signals, idle exit and systemd notifications.
#include "service.hpp"

#include <malloc.h>
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <cstring>
#include <spdlog/spdlog.h>

#include "core/core.hpp"
#include "frontend/frontend.hpp"

namespace nsbroker::daemon {

namespace {

// How often systemd's STATUS= line is brought up to date.
constexpr std::uint64_t status_interval_usec = 5'000'000;

uint64_t usec(std::chrono::seconds s) {
    return static_cast<uint64_t>(std::chrono::microseconds(s).count());
}

} // namespace

Service::Service() {
    sd_event* e = nullptr;
    check_sd(sd_event_new(&e), "sd_event_new");
    loop_.reset(e);

    // The signals the loop handles must not be delivered the ordinary way;
    // SIGCHLD is blocked for sd_event_add_child.
    sigset_t mask;
    sigemptyset(&mask);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGCHLD}) {
        sigaddset(&mask, sig);
    }
    ::sigprocmask(SIG_BLOCK, &mask, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
    for (int sig : {SIGTERM, SIGINT}) {
        sd_event_source* s = nullptr;
        check_sd(sd_event_add_signal(loop_.get(), &s, sig, &Service::on_stop_signal, this),
                 "sd_event_add_signal");
        signal_sources_.emplace_back(s);
    }
    sd_event_source* hup = nullptr;
    check_sd(sd_event_add_signal(loop_.get(), &hup, SIGHUP, &Service::on_reload_signal, this),
             "sd_event_add_signal");
    signal_sources_.emplace_back(hup);
}

void Service::attach(Core& core, std::vector<Frontend*> frontends,
                     std::chrono::seconds exit_idle_time) {
    core_ = &core;
    frontends_ = std::move(frontends);
    exit_idle_time_ = exit_idle_time;
    // With WatchdogSec= set, the loop sends WATCHDOG=1 itself, at half the
    // interval, for as long as it turns.
    if (int r = sd_event_set_watchdog(loop_.get(), 1); r < 0) {
        spdlog::warn("watchdog: {}; running without it", std::strerror(-r));
    }
    status_timer_.emplace(loop_.get(), [this](uint64_t now) {
        notify_status();
        trim_after_load(now);
        status_timer_->arm_in(status_interval_usec);
    });
    status_timer_->arm_in(status_interval_usec);
    if (exit_idle_time_.count() > 0) {
        idle_timer_.emplace(loop_.get(), [this](uint64_t now) { idle_check(now); });
        core_->note_activity();
        idle_timer_->arm_at(core_->last_activity() + usec(exit_idle_time_));
    }
}

int Service::run(Core& core, std::vector<Frontend*> frontends, std::chrono::seconds exit_idle_time,
                 const std::string& description) {
    attach(core, std::move(frontends), exit_idle_time);
    spdlog::info("{}", description);
    sd_notify(0, "READY=1");
    notify_status();
    int r = sd_event_loop(loop_.get());
    if (r < 0) {
        spdlog::error("event loop failed: {}", std::strerror(-r));
        return 1;
    }
    spdlog::info("nsbrokerd stopped");
    return r;
}

bool Service::run_once(std::uint64_t timeout_usec) {
    return sd_event_run(loop_.get(), timeout_usec) >= 0 &&
           sd_event_get_state(loop_.get()) != SD_EVENT_FINISHED;
}

bool Service::idle() const {
    if (!core_->idle()) {
        return false;
    }
    for (const Frontend* f : frontends_) {
        if (!f->idle()) {
            return false;
        }
    }
    return true;
}

// Like a worker's idle timer: armed once, and when it fires, armed again from
// the last activity, so that busy times cost no timer updates.
void Service::idle_check(uint64_t now) {
    const uint64_t idle_time = usec(exit_idle_time_);
    const uint64_t last = core_->last_activity();
    if (!idle()) {
        idle_timer_->arm_at(now + idle_time);
    } else if (now < last + idle_time) {
        idle_timer_->arm_at(last + idle_time);
    } else {
        spdlog::info("idle for {}s: exiting", exit_idle_time_.count());
        stop("idle");
    }
}

// Once no socket has been asked for in a whole status interval and no job
// is in flight, the heap pages that the load grew (a connection's and a
// worker's bookkeeping, with a thousand workers) go back to the system:
// free() returns only the top of the heap. Once after each busy time.
void Service::trim_after_load(uint64_t now) {
    const uint64_t last = core_->last_activity();
    if (last != trimmed_after_ && now >= last + status_interval_usec && core_->idle()) {
        ::malloc_trim(0);
        trimmed_after_ = last;
    }
}

void Service::notify_status() {
    std::size_t clients = 0;
    for (const Frontend* f : frontends_) {
        clients += f->clients();
    }
    auto stats = core_->stats();
    std::string status =
        std::to_string(clients) + " clients, " + std::to_string(stats.workers_live) + " workers, " +
        std::to_string(stats.requests) + " requests, " + std::to_string(stats.sockets) + " sockets";
    if (status != last_status_) {
        sd_notifyf(0, "STATUS=%s", status.c_str());
        last_status_ = std::move(status);
    }
}

int Service::on_stop_signal(sd_event_source*, const struct signalfd_siginfo* si, void* userdata) {
    spdlog::info("signal {}: stopping", sigabbrev_np(static_cast<int>(si->ssi_signo)));
    static_cast<Service*>(userdata)->stop("signal");
    return 0;
}

int Service::on_reload_signal(sd_event_source*, const struct signalfd_siginfo*, void* userdata) {
    auto* self = static_cast<Service*>(userdata);
    sd_notify(0, "RELOADING=1");
    if (self->core_ != nullptr) {
        self->core_->reload_policy();
    }
    sd_notify(0, "READY=1");
    return 0;
}

void Service::stop(const char* why) {
    if (core_ == nullptr) {
        sd_event_exit(loop_.get(), 0);
        return;
    }
    if (core_->stopping()) {
        return;
    }
    sd_notifyf(0, "STOPPING=1\nSTATUS=stopping (%s)", why);
    // No new connections or calls; requests already with a worker are
    // finished, and their answers sent, before the loop ends.
    for (Frontend* f : frontends_) {
        f->stop();
    }
    core_->stop([this] {
        for (Frontend* f : frontends_) {
            f->flush();
        }
        sd_event_exit(loop_.get(), 0);
    });
}

} // namespace nsbroker::daemon
