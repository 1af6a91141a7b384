// nsbrokerd: the entry point of the daemon, and of exec'd workers.
#include <spdlog/spdlog.h>

#include <sys/resource.h>
#include <unistd.h>

#include "core/core.hpp"
#include "options.hpp"
#include "sys/logging.hpp"
#include "workers/worker_main.hpp"

namespace {

// Every client holds a socket and a pidfd in the daemon, and every worker a
// channel: the usual soft limit of 1024 descriptors is too few for the
// default limits. The daemon only uses epoll, so it may take the hard limit.
void raise_descriptor_limit() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        if (::setrlimit(RLIMIT_NOFILE, &limit) < 0) {
            spdlog::warn("could not raise the descriptor limit to {}", limit.rlim_max);
        }
    }
}

} // namespace

int main(int argc, char** argv) {
    using namespace nsbroker::daemon;
    auto parsed = parse_options(argc, argv);
    if (!parsed.options) {
        return parsed.exit_status;
    }
    Options& options = *parsed.options;

    setup_logging(options.log_level, options.worker);

    if (options.worker) {
        // Straight out: a confined worker may not even open the files that
        // exit handlers (a leak checker, say) would want.
        ::_exit(run_worker());
    }
    raise_descriptor_limit();
    try {
        Broker broker(std::move(options.broker));
        return broker.run();
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return 1;
    }
}
