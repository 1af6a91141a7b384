// Where the log goes. Started by systemd with stderr connected to the journal
// (JOURNAL_STREAM names it), the daemon sends each line to the journal with
// structured fields; otherwise it writes to the terminal. Workers always write
// to stderr: in the journal's case with a "<N>" priority prefix, which
// journald reads.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>

namespace spdlog {
class logger;
}

namespace nsbroker::daemon {

// Fields the journal gets with a line, besides MESSAGE and PRIORITY:
// NSBROKER_UID, NSBROKER_PID, NSBROKER_NETNS and NSBROKER_ERROR.
struct LogFields {
    std::optional<uid_t> uid;
    std::optional<pid_t> pid;
    std::string netns;
    std::string error; // a protocol error code
};

// Attaches fields to every line this thread logs while it lives.
class ScopedLogFields {
  public:
    explicit ScopedLogFields(LogFields fields) : fields_(std::move(fields)), outer_(current_) {
        current_ = &fields_;
    }
    ~ScopedLogFields() { current_ = outer_; }
    ScopedLogFields(const ScopedLogFields&) = delete;
    ScopedLogFields& operator=(const ScopedLogFields&) = delete;

    [[nodiscard]] static const LogFields* current() { return current_; }

  private:
    LogFields fields_;
    const LogFields* outer_;
    static thread_local const LogFields* current_;
};

// The logger of the daemon or of a worker, at level.
std::shared_ptr<spdlog::logger> make_logger(const std::string& level, bool worker);

// Installs make_logger(level, worker) as the default logger.
void setup_logging(const std::string& level, bool worker);

} // namespace nsbroker::daemon
