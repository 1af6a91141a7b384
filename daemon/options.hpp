// nsbrokerd's command line.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/core.hpp"

namespace nsbroker::daemon {

struct Options {
    BrokerConfig broker;
    std::string log_level = "info";
    bool worker = false; // internal: run as an exec'd worker on fds 3 and 4
};

struct ParsedOptions {
    std::optional<Options> options; // empty: exit with exit_status
    int exit_status = 0;
};

// Parses argv; prints help, version or a usage error itself.
ParsedOptions parse_options(int argc, char** argv);

} // namespace nsbroker::daemon
