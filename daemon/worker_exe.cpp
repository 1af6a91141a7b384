// nsbroker-worker: the image a worker runs in --worker-mode exec. nsbrokerd
// forks, places the worker's channel, namespace and seccomp filter on fds 3,
// 4 and 5 (place_worker_fds) and execs this with
//   nsbroker-worker --log-level LEVEL
// It holds the worker's code and no more (built static where it can be), so
// that each exec'd worker maps little of its own.
#include <unistd.h>

#include <cstring>
#include <spdlog/spdlog.h>

#include "sys/worker_log.hpp"
#include "workers/worker_main.hpp"

int main(int argc, char** argv) {
    using namespace nsbroker::daemon;
    const char* level = argc == 3 && std::strcmp(argv[1], "--log-level") == 0 ? argv[2] : "info";
    spdlog::set_default_logger(make_worker_logger(level));
    // Straight out: a confined worker may not even open the files that exit
    // handlers (a leak checker, say) would want.
    ::_exit(run_worker(nullptr));
}
