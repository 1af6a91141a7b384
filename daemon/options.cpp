// Command-line parsing for nsbrokerd.
#include "options.hpp"

#include <getopt.h>

#include <charconv>
#include <cstdio>
#include <string_view>

#include "nsbroker_config.h"

namespace nsbroker::daemon {

namespace {

constexpr const char* usage_text = R"(Usage: nsbrokerd [OPTIONS]

Hands out sockets that live in other network namespaces. Started by systemd
with a socket (LISTEN_FDS), it serves that one instead of --socket.

  --socket PATH               listen on PATH (default %s)
  --policy PATH               who may have which sockets (default
                              /etc/nsbroker/policy.json; without it root may
                              do everything, others get ordinary sockets in
                              namespaces they own)
  --worker-mode fork|exec     start workers by fork (default) or fork+exec
  --worker-idle-timeout SEC   a worker with nothing to do exits after SEC
                              seconds; 0 keeps it (default 60)
  --unnamed-idle-timeout SEC  the same for a namespace that has no /run/netns
                              name and no live process that was named: the
                              worker may be all that keeps it (default 5)
  --worker-timeout SEC        a worker that takes longer than SEC seconds to
                              answer is killed and the request fails with
                              worker_failed; 0 waits forever (default 10)
  --max-workers N             workers at once; beyond it the least recently
                              used idle worker exits (default 512)
  --max-workers-per-uid N     workers one user other than root may start for
                              namespaces it owns (default 16)
  --max-connections N         connections of users other than root (default 1024)
  --max-connections-per-uid N connections one uid may hold (default 128)
  --max-requests-in-flight N  unanswered requests on one connection, or D-Bus
                              calls from one bus client (default 64)
  --max-fds-per-connection N  sockets made for one connection and not yet read
                              by it (default 1024; at least 253)
  --max-fds-per-uid N         the same for all of one uid's connections
                              (default 2048)
  --max-fds N                 the same for all users but root together
                              (default a quarter of RLIMIT_NOFILE)
  --exit-idle-time SEC        exit after SEC seconds with no client connected
                              and nothing in flight; for socket activation,
                              which starts the daemon again (default: never)
  --no-dbus                   do not serve org.nsbroker.Broker1 on the system bus
  --log-level LEVEL           trace, debug, info, warn, error (default info)
  --help                      show this help
  --version                   show the version
)";

enum : int {
    opt_socket = 256,
    opt_policy,
    opt_mode,
    opt_idle,
    opt_job_timeout,
    opt_max_workers,
    opt_max_connections,
    opt_max_per_uid,
    opt_max_in_flight,
    opt_unnamed_idle,
    opt_max_workers_per_uid,
    opt_max_fds_per_connection,
    opt_max_fds_per_uid,
    opt_max_fds,
    opt_level,
    opt_exit_idle,
    opt_no_dbus,
    opt_help,
    opt_version,
    opt_worker,
};

std::string option_name(const option* options, int value) {
    for (const option* o = options; o->name != nullptr; ++o) {
        if (o->val == value) {
            return std::string("--") + o->name;
        }
    }
    return "option";
}

// A whole non-negative number, or nothing.
std::optional<std::size_t> parse_count(std::string_view text) {
    std::size_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) {
        return std::nullopt;
    }
    return value;
}

bool valid_level(std::string_view level) {
    for (auto l : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
        if (level == l) {
            return true;
        }
    }
    return false;
}

ParsedOptions usage_error(const std::string& message) {
    std::fprintf(stderr, "nsbrokerd: %s\nTry 'nsbrokerd --help'.\n", message.c_str());
    return {std::nullopt, 2};
}

} // namespace

ParsedOptions parse_options(int argc, char** argv) {
    static const option long_options[] = {
        {"socket", required_argument, nullptr, opt_socket},
        {"policy", required_argument, nullptr, opt_policy},
        {"worker-mode", required_argument, nullptr, opt_mode},
        {"worker-idle-timeout", required_argument, nullptr, opt_idle},
        {"worker-timeout", required_argument, nullptr, opt_job_timeout},
        {"max-workers", required_argument, nullptr, opt_max_workers},
        {"max-connections", required_argument, nullptr, opt_max_connections},
        {"max-connections-per-uid", required_argument, nullptr, opt_max_per_uid},
        {"max-requests-in-flight", required_argument, nullptr, opt_max_in_flight},
        {"unnamed-idle-timeout", required_argument, nullptr, opt_unnamed_idle},
        {"max-workers-per-uid", required_argument, nullptr, opt_max_workers_per_uid},
        {"max-fds-per-connection", required_argument, nullptr, opt_max_fds_per_connection},
        {"max-fds-per-uid", required_argument, nullptr, opt_max_fds_per_uid},
        {"max-fds", required_argument, nullptr, opt_max_fds},
        {"log-level", required_argument, nullptr, opt_level},
        {"exit-idle-time", required_argument, nullptr, opt_exit_idle},
        {"no-dbus", no_argument, nullptr, opt_no_dbus},
        {"help", no_argument, nullptr, opt_help},
        {"version", no_argument, nullptr, opt_version},
        {"worker", no_argument, nullptr, opt_worker},
        {nullptr, 0, nullptr, 0},
    };
    Options o;
    o.broker.socket_path = NSBROKER_DEFAULT_SOCKET;
    optind = 1;
    for (;;) {
        int c = ::getopt_long(argc, argv, "", long_options, nullptr);
        if (c == -1) {
            break;
        }
        std::string_view arg = optarg ? optarg : "";
        switch (c) {
        case opt_socket:
            if (arg.empty()) {
                return usage_error("--socket needs a path");
            }
            o.broker.socket_path = std::string(arg);
            break;
        case opt_policy:
            if (arg.empty()) {
                return usage_error("--policy needs a path");
            }
            o.broker.policy_path = std::string(arg);
            break;
        case opt_mode:
            if (arg == "fork") {
                o.broker.workers.mode = WorkerMode::fork;
            } else if (arg == "exec") {
                o.broker.workers.mode = WorkerMode::exec;
            } else {
                return usage_error("--worker-mode is fork or exec, not \"" + std::string(arg) +
                                   "\"");
            }
            break;
        case opt_idle:
        case opt_unnamed_idle:
        case opt_job_timeout:
        case opt_exit_idle: {
            auto seconds = parse_count(arg);
            if (!seconds) {
                return usage_error(option_name(long_options, c) + " needs a number of seconds");
            }
            auto& target = c == opt_idle           ? o.broker.workers.idle_timeout
                           : c == opt_unnamed_idle ? o.broker.workers.unnamed_idle_timeout
                           : c == opt_job_timeout  ? o.broker.workers.job_timeout
                                                   : o.broker.exit_idle_time;
            target = std::chrono::seconds(*seconds);
            break;
        }
        case opt_no_dbus:
            o.broker.dbus = false;
            break;
        case opt_max_workers:
        case opt_max_connections:
        case opt_max_per_uid:
        case opt_max_in_flight:
        case opt_max_workers_per_uid:
        case opt_max_fds_per_connection:
        case opt_max_fds_per_uid:
        case opt_max_fds: {
            auto n = parse_count(arg);
            if (!n || *n == 0) {
                return usage_error(option_name(long_options, c) + " needs a number above 0");
            }
            auto& limits = o.broker.limits;
            std::size_t& target =
                c == opt_max_workers              ? o.broker.workers.max_workers
                : c == opt_max_workers_per_uid    ? o.broker.workers.max_workers_per_uid
                : c == opt_max_connections        ? limits.connections
                : c == opt_max_per_uid            ? limits.connections_per_uid
                : c == opt_max_in_flight          ? limits.requests_in_flight
                : c == opt_max_fds_per_connection ? limits.descriptors.per_connection
                : c == opt_max_fds_per_uid        ? limits.descriptors.per_uid
                                                  : limits.descriptors.total;
            target = *n;
            break;
        }
        case opt_level:
            if (!valid_level(arg)) {
                return usage_error("unknown log level \"" + std::string(arg) + "\"");
            }
            o.log_level = std::string(arg);
            break;
        case opt_help:
            std::printf(usage_text, NSBROKER_DEFAULT_SOCKET);
            return {std::nullopt, 0};
        case opt_version:
            std::printf("nsbrokerd %s\n", NSBROKER_VERSION);
            return {std::nullopt, 0};
        case opt_worker:
            o.worker = true;
            break;
        default:
            return {std::nullopt, 2};
        }
    }
    if (optind < argc) {
        return usage_error(std::string("unexpected argument \"") + argv[optind] + "\"");
    }
    o.broker.workers.log_level = o.log_level;
    return {std::move(o), 0};
}

} // namespace nsbroker::daemon
