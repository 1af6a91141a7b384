// The daemon's logging: the journal when stderr is its stream, with the
// fields of the request in scope; workers log through sys/worker_log.
#include "sys/logging.hpp"

#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <string_view>
#include <vector>

#include "sys/worker_log.hpp"

namespace nsbroker::daemon {

thread_local const LogFields* ScopedLogFields::current_ = nullptr;

namespace {

// The journal field that holds the line itself; the others are metadata.
constexpr std::string_view message_field = "MESSAGE=";

// One journal entry a line, with the fields in scope.
class JournalSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
  protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        std::vector<std::string> fields;
        fields.reserve(8);
        fields.push_back(std::string(message_field) +
                         std::string(msg.payload.data(), msg.payload.size()));
        fields.push_back("PRIORITY=" + std::to_string(syslog_priority(msg.level)));
        fields.emplace_back("SYSLOG_IDENTIFIER=nsbrokerd");
        if (const LogFields* f = ScopedLogFields::current()) {
            if (f->uid) {
                fields.push_back("NSBROKER_UID=" + std::to_string(*f->uid));
            }
            if (f->pid) {
                fields.push_back("NSBROKER_PID=" + std::to_string(*f->pid));
            }
            if (!f->netns.empty()) {
                fields.push_back("NSBROKER_NETNS=" + f->netns);
            }
            if (!f->error.empty()) {
                fields.push_back("NSBROKER_ERROR=" + f->error);
            }
        }
        std::vector<iovec> iov;
        iov.reserve(fields.size());
        for (auto& field : fields) {
            iov.push_back({field.data(), field.size()});
        }
        if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) < 0) {
            // The journal is gone; stderr still reaches someone.
            std::fprintf(stderr, "<%d>%s\n", syslog_priority(msg.level),
                         fields.front().c_str() + message_field.size());
        }
    }
    void flush_() override {}
};

} // namespace

std::shared_ptr<spdlog::logger> make_logger(const std::string& level, bool worker) {
    if (worker) {
        return make_worker_logger(level);
    }
    std::shared_ptr<spdlog::logger> logger;
    if (!stderr_is_journal()) {
        logger = std::make_shared<spdlog::logger>(
            "nsbrokerd", std::make_shared<spdlog::sinks::stderr_color_sink_st>());
        logger->set_pattern("%H:%M:%S.%e %^%l%$ %v");
    } else {
        logger = std::make_shared<spdlog::logger>("nsbrokerd", std::make_shared<JournalSink>());
    }
    logger->set_level(spdlog::level::from_str(level));
    return logger;
}

void setup_logging(const std::string& level, bool worker) {
    spdlog::set_default_logger(make_logger(level, worker));
    spdlog::set_level(spdlog::level::from_str(level));
}

} // namespace nsbroker::daemon
