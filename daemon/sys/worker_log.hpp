// Logging for worker processes, which cannot reach the journal's socket:
// lines on stderr, which under systemd is the journal's stream. Kept apart
// from the daemon's journal logging so that the worker executable needs
// nothing but spdlog.
#pragma once

#include <spdlog/common.h>

#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace nsbroker::daemon {

// The syslog priority (LOG_ERR, ...) of an spdlog level.
int syslog_priority(spdlog::level::level_enum level);

// Whether stderr is the journal's stream (JOURNAL_STREAM names it).
bool stderr_is_journal();

// A worker's logger at level: "<N>" priority prefixes when stderr is the
// journal's stream, timestamped lines otherwise.
std::shared_ptr<spdlog::logger> make_worker_logger(const std::string& level);

} // namespace nsbroker::daemon
