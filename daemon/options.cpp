// Command-line parsing for nsbrokerd.
#include "options.hpp"

#include <getopt.h>

#include <charconv>
#include <cstdio>
#include <string_view>

#include <fmt/format.h>

#include "nsbroker_config.h"

namespace nsbroker::daemon {

namespace {

// More would only hold processes and memory for namespaces that may never come.
constexpr std::size_t max_spare_workers = 64;

// The help text. Every default is read from the structs that hold it.
void print_usage() {
    const Options d;
    const auto& w = d.core.workers;
    const auto& limits = d.core.limits;
    const auto& fds = d.socket.descriptors;
    std::fputs(fmt::format(
                   R"(Usage: nsbrokerd [OPTIONS]

Hands out sockets that live in other network namespaces. Started by systemd
with a socket (LISTEN_FDS), it serves that one instead of --socket.

  --socket PATH               listen on PATH (default {socket})
  --policy PATH               who may have which sockets (default
                              {policy}; without it root may
                              do everything, others get ordinary sockets in
                              namespaces they own)
  --worker-mode fork|exec     start workers by fork of the daemon (default), or
                              by fork and exec of nsbroker-worker
  --worker-idle-timeout SEC   a worker with nothing to do exits after SEC
                              seconds; 0 keeps it (default {idle})
  --unnamed-idle-timeout SEC  the same for a namespace that has no /run/netns
                              name and no live process that was named: the
                              worker may be all that keeps it (default {unnamed})
  --worker-timeout SEC        a worker that takes longer than SEC seconds to
                              answer is killed and the request fails with
                              worker_failed; 0 waits forever (default {job})
  --max-workers N             workers at once; beyond it the least recently
                              used idle worker exits (default {workers})
  --max-workers-per-uid N     workers one user other than root may start for
                              namespaces it owns (default {workers_per_uid})
  --spare-workers N           workers forked ahead, each waiting for the next
                              namespace that needs one, so that its first
                              request does not wait for a fork; 0 forks on
                              demand (default {spares}, at most {max_spares})
  --stall-timeout SEC         a connection whose client leaves its replies
                              unread, so that nsbrokerd stops reading it, is
                              closed after SEC seconds; its replies stay
                              readable; 0: never (default {stall})
  --max-connections N         connections of users other than root (default {connections})
  --max-connections-per-uid N connections one uid may hold (default {connections_per_uid})
  --max-requests-in-flight N  unanswered requests on one connection, or D-Bus
                              calls from one bus client (default {in_flight})
  --max-fds-per-connection N  sockets made for one connection and not yet read
                              by it (default {fds_per_connection}; at least {max_fds})
  --max-fds-per-uid N         the same for all of one uid's connections
                              (default {fds_per_uid})
  --max-fds N                 the same for all users but root together
                              (default a quarter of RLIMIT_NOFILE)
  --exit-idle-time SEC        exit after SEC seconds with no client connected
                              and nothing in flight; for socket activation,
                              which starts the daemon again (default: never)
  --no-dbus                   do not serve org.nsbroker.Broker1 on the system bus;
                              without it, a bus that is not there at start or
                              goes away is joined again when it is back
  --log-level LEVEL           trace, debug, info, warn, error (default {level})
  --help                      show this help
  --version                   show the version
)",
                   fmt::arg("socket", d.socket.socket_path), fmt::arg("policy", d.core.policy_path),
                   fmt::arg("idle", w.idle_timeout.count()),
                   fmt::arg("unnamed", w.unnamed_idle_timeout.count()),
                   fmt::arg("job", w.job_timeout.count()), fmt::arg("workers", w.max_workers),
                   fmt::arg("workers_per_uid", w.max_workers_per_uid),
                   fmt::arg("spares", w.spare_workers), fmt::arg("max_spares", max_spare_workers),
                   fmt::arg("connections", limits.connections),
                   fmt::arg("stall", d.core.limits.stall_timeout.count()),
                   fmt::arg("connections_per_uid", limits.connections_per_uid),
                   fmt::arg("in_flight", limits.requests_in_flight),
                   fmt::arg("fds_per_connection", fds.per_connection),
                   fmt::arg("max_fds", proto::max_fds_per_message),
                   fmt::arg("fds_per_uid", fds.per_uid), fmt::arg("level", d.log_level))
                   .c_str(),
               stdout);
}

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
    opt_spare_workers,
    opt_stall_timeout,
    opt_max_fds_per_connection,
    opt_max_fds_per_uid,
    opt_max_fds,
    opt_level,
    opt_exit_idle,
    opt_no_dbus,
    opt_help,
    opt_version,
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
        {"spare-workers", required_argument, nullptr, opt_spare_workers},
        {"stall-timeout", required_argument, nullptr, opt_stall_timeout},
        {"max-fds-per-connection", required_argument, nullptr, opt_max_fds_per_connection},
        {"max-fds-per-uid", required_argument, nullptr, opt_max_fds_per_uid},
        {"max-fds", required_argument, nullptr, opt_max_fds},
        {"log-level", required_argument, nullptr, opt_level},
        {"exit-idle-time", required_argument, nullptr, opt_exit_idle},
        {"no-dbus", no_argument, nullptr, opt_no_dbus},
        {"help", no_argument, nullptr, opt_help},
        {"version", no_argument, nullptr, opt_version},
        {nullptr, 0, nullptr, 0},
    };
    Options o;
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
            o.socket.socket_path = std::string(arg);
            break;
        case opt_policy:
            if (arg.empty()) {
                return usage_error("--policy needs a path");
            }
            o.core.policy_path = std::string(arg);
            break;
        case opt_mode:
            if (arg == "fork") {
                o.core.workers.mode = WorkerMode::fork;
            } else if (arg == "exec") {
                o.core.workers.mode = WorkerMode::exec;
            } else {
                return usage_error("--worker-mode is fork or exec, not \"" + std::string(arg) +
                                   "\"");
            }
            break;
        case opt_idle:
        case opt_unnamed_idle:
        case opt_job_timeout:
        case opt_stall_timeout:
        case opt_exit_idle: {
            auto seconds = parse_count(arg);
            if (!seconds) {
                return usage_error(option_name(long_options, c) + " needs a number of seconds");
            }
            auto& target = c == opt_idle            ? o.core.workers.idle_timeout
                           : c == opt_unnamed_idle  ? o.core.workers.unnamed_idle_timeout
                           : c == opt_job_timeout   ? o.core.workers.job_timeout
                           : c == opt_stall_timeout ? o.core.limits.stall_timeout
                                                    : o.exit_idle_time;
            target = std::chrono::seconds(*seconds);
            break;
        }
        case opt_spare_workers: {
            auto n = parse_count(arg);
            if (!n || *n > max_spare_workers) {
                return usage_error("--spare-workers needs a number from 0 to " +
                                   std::to_string(max_spare_workers));
            }
            o.core.workers.spare_workers = *n;
            break;
        }
        case opt_no_dbus:
            o.dbus = false;
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
            auto& limits = o.core.limits;
            auto& fds = o.socket.descriptors;
            std::size_t& target = c == opt_max_workers ? o.core.workers.max_workers
                                  : c == opt_max_workers_per_uid
                                      ? o.core.workers.max_workers_per_uid
                                  : c == opt_max_connections        ? limits.connections
                                  : c == opt_max_per_uid            ? limits.connections_per_uid
                                  : c == opt_max_in_flight          ? limits.requests_in_flight
                                  : c == opt_max_fds_per_connection ? fds.per_connection
                                  : c == opt_max_fds_per_uid        ? fds.per_uid
                                                                    : fds.total;
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
            print_usage();
            return {std::nullopt, 0};
        case opt_version:
            std::printf("nsbrokerd %s\n", NSBROKER_VERSION);
            return {std::nullopt, 0};
        default:
            return {std::nullopt, 2};
        }
    }
    if (optind < argc) {
        return usage_error(std::string("unexpected argument \"") + argv[optind] + "\"");
    }
    o.core.workers.log_level = o.log_level;
    o.socket.stall_timeout = o.core.limits.stall_timeout;
    return {std::move(o), 0};
}

} // namespace nsbroker::daemon
