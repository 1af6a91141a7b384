// Logging for worker processes: stderr, with "<N>" priority prefixes when it
// is the journal's stream.
#include "sys/worker_log.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <spdlog/logger.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

namespace nsbroker::daemon {

namespace {

// A worker's lines on a stderr that journald reads: "<N>" gives the priority.
// (A worker closes every descriptor it did not bring, the journal's socket
// among them, so it cannot use sd_journal.)
class PrefixedStderrSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
  protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        std::fprintf(stderr, "<%d>worker %d: %.*s\n", syslog_priority(msg.level),
                     static_cast<int>(::getpid()), static_cast<int>(msg.payload.size()),
                     msg.payload.data());
    }
    void flush_() override { std::fflush(stderr); }
};

} // namespace

int syslog_priority(spdlog::level::level_enum level) {
    switch (level) {
    case spdlog::level::critical:
        return 2; // LOG_CRIT
    case spdlog::level::err:
        return 3;
    case spdlog::level::warn:
        return 4;
    case spdlog::level::info:
        return 6;
    default:
        return 7; // LOG_DEBUG
    }
}

bool stderr_is_journal() {
    const char* stream = std::getenv("JOURNAL_STREAM");
    if (stream == nullptr) {
        return false;
    }
    unsigned long long dev = 0;
    unsigned long long ino = 0;
    struct stat st {};
    return std::sscanf(stream, "%llu:%llu", &dev, &ino) == 2 && ::fstat(STDERR_FILENO, &st) == 0 &&
           st.st_dev == dev && st.st_ino == ino;
}

std::shared_ptr<spdlog::logger> make_worker_logger(const std::string& level) {
    std::shared_ptr<spdlog::logger> logger;
    if (stderr_is_journal()) {
        logger =
            std::make_shared<spdlog::logger>("nsbrokerd", std::make_shared<PrefixedStderrSink>());
    } else {
        logger = std::make_shared<spdlog::logger>(
            "nsbrokerd", std::make_shared<spdlog::sinks::stderr_color_sink_st>());
        logger->set_pattern("%H:%M:%S.%e %^%l%$ [worker %P] %v");
    }
    logger->set_level(spdlog::level::from_str(level));
    return logger;
}

} // namespace nsbroker::daemon
