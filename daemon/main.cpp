// nsbrokerd: the entry point of the daemon, and of exec'd workers.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include "broker.hpp"
#include "options.hpp"
#include "worker_process.hpp"

int main(int argc, char** argv) {
    using namespace nsbroker::daemon;
    auto parsed = parse_options(argc, argv);
    if (!parsed.options) {
        return parsed.exit_status;
    }
    Options& options = *parsed.options;

    auto logger = spdlog::stderr_color_st("nsbrokerd");
    logger->set_pattern(options.worker ? "%H:%M:%S.%e %^%l%$ [worker %P] %v"
                                       : "%H:%M:%S.%e %^%l%$ %v");
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(options.log_level));

    if (options.worker) {
        // Straight out: a confined worker may not even open the files that
        // exit handlers (a leak checker, say) would want.
        ::_exit(run_worker());
    }
    try {
        Broker broker(std::move(options.broker));
        return broker.run();
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return 1;
    }
}
