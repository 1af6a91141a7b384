// nsbrokerd's command line.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "core/core.hpp"
#include "frontend/socket_frontend.hpp"
#include "nsbroker_config.h"

namespace nsbroker::daemon {

inline SocketFrontendConfig default_socket() {
    SocketFrontendConfig config;
    config.socket_path = NSBROKER_DEFAULT_SOCKET;
    return config;
}

struct Options {
    CoreConfig core;
    SocketFrontendConfig socket = default_socket();
    // Exit once nothing has happened for this long and no client is
    // connected, no request is in flight; 0: never. For socket activation,
    // where systemd starts the daemon again on the next connection.
    std::chrono::seconds exit_idle_time{0};
    bool dbus = true; // serve org.nsbroker.Broker1 on the system bus
    std::string log_level = "info";
};

struct ParsedOptions {
    std::optional<Options> options; // empty: exit with exit_status
    int exit_status = 0;
};

// Parses argv; prints help, version or a usage error itself.
ParsedOptions parse_options(int argc, char** argv);

} // namespace nsbroker::daemon
