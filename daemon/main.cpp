// nsbrokerd: the entry point of the daemon. The composition root: the
// service's loop, the core on it, and the front ends that reach the core.
#include <spdlog/spdlog.h>

#include <sys/resource.h>
#include <unistd.h>

#include "core/core.hpp"
#include "frontend/dbus_service.hpp"
#include "frontend/socket_frontend.hpp"
#include "nsbroker_config.h"
#include "options.hpp"
#include "service.hpp"
#include "sys/logging.hpp"

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

    setup_logging(options.log_level, false);
    raise_descriptor_limit();
    try {
        Service service;
        Core core(service.loop(), std::move(options.core));
        SocketFrontend socket(service.loop(), core, std::move(options.socket));
        std::vector<Frontend*> frontends{&socket};
        std::unique_ptr<DbusService> dbus;
        if (options.dbus) {
            dbus = std::make_unique<DbusService>(service.loop(), core);
            frontends.push_back(dbus.get());
        }
        const auto& workers = core.config().workers;
        auto description = fmt::format(
            "nsbrokerd {} listening on {}{} (worker mode {}, idle timeout {}s)", NSBROKER_VERSION,
            socket.path(), socket.activated() ? " (from systemd)" : "",
            workers.mode == WorkerMode::fork ? "fork" : "exec", workers.idle_timeout.count());
        return service.run(core, std::move(frontends), options.exit_idle_time, description);
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return 1;
    }
}
