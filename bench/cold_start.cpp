// nsbroker-cold-start: what the first socket in a namespace costs, and what
// the worker that then stays there costs in memory, beside a fork per socket.
//
//   nsbroker-cold-start [NAMESPACES]     (root; NSBROKERD names the daemon binary)
//
// For each worker mode, with a spare worker and without, it starts the
// daemon, makes NAMESPACES namespaces (not timed), asks once for a socket in
// each, 20 ms apart (timed: the daemon starts a worker for it, or sends its
// spare), and then reads every idle worker's smaps_rollup.
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "nsbroker/client.hpp"
#include "nsbroker/fd_passing.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using Clock = std::chrono::steady_clock;

namespace {

struct Spread {
    double p50 = 0;
    double min = 0;
    double max = 0;
};

Spread spread(std::vector<double> samples) {
    std::sort(samples.begin(), samples.end());
    return {samples[samples.size() / 2], samples.front(), samples.back()};
}

double elapsed_us(Clock::time_point since) {
    return std::chrono::duration<double, std::micro>(Clock::now() - since).count();
}

// A child per socket: fork, setns, socket, send it back, exit.
double fork_per_socket(int netns_fd) {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
        throw std::runtime_error("socketpair");
    }
    UniqueFd ours{pair[0]};
    UniqueFd theirs{pair[1]};
    auto start = Clock::now();
    pid_t child = ::fork();
    if (child == 0) {
        ::setns(netns_fd, CLONE_NEWNET);
        int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        int fds[1] = {s};
        proto::send_message(theirs.get(), "s", fds);
        ::_exit(0);
    }
    auto r = proto::receive_message(ours.get());
    ::waitpid(child, nullptr, 0);
    double took = elapsed_us(start);
    if (r.message.fds.size() != 1) {
        throw std::runtime_error("forked child sent no socket");
    }
    return took;
}

// The pid of the worker serving the namespace named name, or 0.
pid_t worker_of(Client& client, const std::string& name) {
    auto listing = client.namespaces();
    if (!listing) {
        throw std::runtime_error(listing.error().describe());
    }
    for (const auto& ns : listing->namespaces) {
        if (std::find(ns.names.begin(), ns.names.end(), name) != ns.names.end()) {
            return ns.worker_pid;
        }
    }
    return 0;
}

// Time the process has spent on a processor, in microseconds
// (/proc/PID/schedstat): unlike wall time, it does not count waiting for a
// processor that other work on the machine holds.
double cpu_us(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/schedstat");
    double ns = 0;
    in >> ns;
    return ns / 1000;
}

// One field of /proc/PID/smaps_rollup, in KiB.
long rollup_kib(pid_t pid, const std::string& field) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(field + ":", 0) == 0) {
            std::istringstream words(line.substr(field.size() + 1));
            long kib = -1;
            words >> kib;
            return kib;
        }
    }
    return -1;
}

struct Memory {
    double pss = 0;
    double private_kib = 0; // Private_Clean + Private_Dirty: what the worker alone holds
    double rss = 0;
};

Memory mean_memory(const std::vector<pid_t>& pids) {
    Memory m;
    for (pid_t pid : pids) {
        m.pss += rollup_kib(pid, "Pss");
        m.private_kib += rollup_kib(pid, "Private_Clean") + rollup_kib(pid, "Private_Dirty");
        m.rss += rollup_kib(pid, "Rss");
    }
    auto n = static_cast<double>(pids.size());
    return {m.pss / n, m.private_kib / n, m.rss / n};
}

void print_row(const char* what, const Spread& s, double fork_p50) {
    std::printf("%-38s %9.0f %9.0f %9.0f %8.2fx\n", what, s.p50, s.min, s.max, s.p50 / fork_p50);
}

struct ModeFigures {
    Spread cold;
    Spread daemon_cpu; // the daemon's processor time for the request
    Spread worker_cpu; // the new worker's, from fork to its first reply
    Memory one;        // the only worker
    Memory many;       // mean of every worker, all alive at once
};

// Namespaces come one at a time, as they are made: making one takes longer
// than this, and so does starting a spare worker in its place.
constexpr auto between_namespaces = std::chrono::milliseconds(20);

ModeFigures measure_mode(const char* mode, const char* spares, int namespaces) {
    std::vector<std::unique_ptr<test::TestNetns>> spaces;
    for (int i = 0; i < namespaces; ++i) {
        spaces.push_back(std::make_unique<test::TestNetns>("cold"));
    }
    test::Daemon daemon({"--log-level", "warn", "--worker-mode", mode, "--spare-workers", spares});
    auto client = Client::connect(daemon.socket_path());
    if (!client) {
        throw std::runtime_error(client.error().describe());
    }
    SocketSpec udp;
    udp.family = AF_INET;
    udp.type = SOCK_DGRAM;
    ModeFigures figures;
    std::vector<double> samples;
    std::vector<double> daemon_cpu;
    std::vector<double> worker_cpu;
    std::vector<pid_t> workers;
    for (std::size_t i = 0; i < spaces.size(); ++i) {
        std::this_thread::sleep_for(between_namespaces);
        const std::string& name = spaces[i]->name();
        double daemon_before = cpu_us(daemon.pid());
        auto start = Clock::now();
        auto s = client->socket(Netns::name(name), udp);
        samples.push_back(elapsed_us(start));
        if (!s) {
            throw std::runtime_error(s.error().describe());
        }
        daemon_cpu.push_back(cpu_us(daemon.pid()) - daemon_before);
        workers.push_back(worker_of(*client, name));
        if (workers.back() == 0) {
            throw std::runtime_error("nsbrokerd lists no worker for " + name);
        }
        // From its fork (as a spare, too) to its first reply.
        worker_cpu.push_back(cpu_us(workers.back()));
        if (i == 0) {
            // Settled: the worker has answered and waits for its next job.
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            figures.one = mean_memory(workers);
        }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    figures.cold = spread(samples);
    figures.daemon_cpu = spread(daemon_cpu);
    figures.worker_cpu = spread(worker_cpu);
    figures.many = mean_memory(workers);
    return figures;
}

} // namespace

int run(int argc, char** argv) {
    int namespaces = argc > 1 ? std::atoi(argv[1]) : 30;
    if (namespaces < 3) {
        throw std::runtime_error("NAMESPACES must be at least 3");
    }
    ::setenv("NSBROKERD", NSBROKERD_PATH, 0);
    std::vector<double> forks;
    {
        test::TestNetns ns("fork");
        UniqueFd target{::open(ns.path().c_str(), O_RDONLY | O_CLOEXEC)};
        for (int i = 0; i < 5; ++i) {
            fork_per_socket(target.get()); // warm up
        }
        for (int i = 0; i < namespaces * 4; ++i) {
            forks.push_back(fork_per_socket(target.get()));
        }
    }
    Spread fork = spread(forks);
    struct Mode {
        const char* label;
        ModeFigures figures;
    };
    const Mode modes[] = {
        {"fork workers", measure_mode("fork", "1", namespaces)},
        {"exec workers", measure_mode("exec", "1", namespaces)},
        {"fork workers, no spare", measure_mode("fork", "0", namespaces)},
        {"exec workers, no spare", measure_mode("exec", "0", namespaces)},
    };

    std::printf("%-38s %9s %9s %9s %9s\n", "first socket, us", "p50", "min", "max", "/ fork");
    print_row("fork+setns+socket+send", fork, fork.p50);
    for (const auto& m : modes) {
        print_row(("cold namespace, " + std::string(m.label)).c_str(), m.figures.cold, fork.p50);
    }
    std::printf("\n%-38s %9s %9s %9s\n", "processor time, us", "p50", "min", "max");
    auto cpu_row = [](const std::string& what, const Spread& s) {
        std::printf("%-38s %9.0f %9.0f %9.0f\n", what.c_str(), s.p50, s.min, s.max);
    };
    for (const auto& m : modes) {
        cpu_row(std::string("daemon, ") + m.label, m.figures.daemon_cpu);
        cpu_row(std::string("new worker, ") + m.label, m.figures.worker_cpu);
    }
    std::printf("\n%-38s %9s %9s %9s\n", "idle worker, KiB", "Pss", "Private", "Rss");
    auto memory_row = [](const std::string& what, const Memory& m) {
        std::printf("%-38s %9.0f %9.0f %9.0f\n", what.c_str(), m.pss, m.private_kib, m.rss);
    };
    for (const auto& m : modes) {
        memory_row(std::string(m.label) + ", alone", m.figures.one);
        memory_row(std::string(m.label) + ", mean of all", m.figures.many);
    }
    std::printf("\n(%d namespaces per mode; fork per socket %d times)\n", namespaces,
                namespaces * 4);
    return 0;
}

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "nsbroker-cold-start: %s\n", e.what());
    }
    return 1;
}
