// nsbroker-bench: what one socket in another network namespace costs, by
// every way of getting one, measured side by side in one run.
//
//   nsbroker-bench [--json] [--cpus LIST] [ITERATIONS]
//
// (as root; NSBROKERD names the daemon binary). --cpus 0 or --cpus 0,1 pins
// the benchmark and every process it starts (relays, daemons, workers,
// dbus-daemon) to those CPUs: a wake-up on a CPU other than the waker's can
// cost ten times the work of a whole request on a virtual machine, and
// without pinning the scheduler decides, differently from row to row.
//
// Each figure is per socket, p50 and p99, and a ratio to the in-thread setns
// baseline (setns into the namespace, socket(), setns back); each nsbroker
// path is also compared with the floor it is built on, measured in the same
// process. Then come sockets per second with threads, and what an idle worker
// holds in memory. --json prints the whole report as JSON, for bench/plot.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "nsbroker/client.hpp"
#include "nsbroker/fd_passing.hpp"
#include "report.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using bench::MemoryRow;
using bench::Report;
using bench::Row;
using bench::ThroughputRow;
using Clock = std::chrono::steady_clock;

namespace {

// A failure that ends the run; thrown, so that the namespaces, daemons and
// bus the run made are cleaned up by their destructors on the way out.
struct Fatal {
    std::string what;
};

[[noreturn]] void die(const std::string& what) {
    throw Fatal{what};
}

double micros_since(Clock::time_point start) {
    return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

// Runs timed_op iterations times, after a few runs to warm up; timed_op
// makes sockets_per_op sockets and returns how long the part worth timing
// took, in µs, so that it may prepare things outside that part.
Row measure_timed(std::string key, std::string name, int iterations, int sockets_per_op,
                  const std::function<double()>& timed_op) {
    for (int i = 0; i < std::min(iterations / 10 + 1, 50); ++i) {
        timed_op();
    }
    std::vector<double> samples;
    samples.reserve(static_cast<std::size_t>(iterations));
    for (int i = 0; i < iterations; ++i) {
        samples.push_back(timed_op() / sockets_per_op);
    }
    std::sort(samples.begin(), samples.end());
    auto at = [&](double q) {
        return samples[static_cast<std::size_t>(q * static_cast<double>(samples.size() - 1))];
    };
    return {std::move(key), std::move(name), at(0.50), at(0.99), iterations, {}};
}

// The same, timing all of op.
Row measure(std::string key, std::string name, int iterations, int sockets_per_op,
            const std::function<void()>& op) {
    return measure_timed(std::move(key), std::move(name), iterations, sockets_per_op, [&] {
        auto start = Clock::now();
        op();
        return micros_since(start);
    });
}

SocketSpec udp_spec(unsigned count = 1) {
    SocketSpec udp;
    udp.family = AF_INET;
    udp.type = SOCK_DGRAM;
    udp.count = count;
    return udp;
}

Client connect_client(const test::Daemon& daemon, bool direct_channels) {
    auto client = Client::connect(daemon.socket_path(), {.direct_channels = direct_channels});
    if (!client) {
        die(client.error().describe());
    }
    return std::move(*client);
}

void one_socket(Client& client, const Netns& netns) {
    auto s = client.socket(netns, udp_spec());
    if (!s) {
        die(s.error().describe());
    }
}

// ---- the floors: no daemon, no JSON -----------------------------------------

// A process forked to serve the benchmark on one end of a SOCK_SEQPACKET
// socketpair; the benchmark holds the other. Closing that end ends it.
class Forked {
  public:
    explicit Forked(const std::function<void(int fd)>& body) {
        int pair[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
            die("socketpair");
        }
        ours_ = UniqueFd{pair[0]};
        UniqueFd theirs{pair[1]};
        pid_ = ::fork();
        if (pid_ < 0) {
            die("fork");
        }
        if (pid_ == 0) {
            ours_.reset();
            try {
                body(theirs.get());
            } catch (...) {
                ::_exit(1);
            }
            ::_exit(0);
        }
    }
    ~Forked() {
        ours_.reset();
        ::waitpid(pid_, nullptr, 0);
    }
    Forked(const Forked&) = delete;
    Forked& operator=(const Forked&) = delete;

    [[nodiscard]] int fd() const { return ours_.get(); }

  private:
    UniqueFd ours_;
    pid_t pid_ = -1;
};

// A worker without nsbroker: joins the namespace, then answers every
// message on fd with as many sockets as its length, until fd closes.
void serve_sockets(int namespace_fd, int fd) {
    if (::setns(namespace_fd, CLONE_NEWNET) < 0) {
        return;
    }
    for (;;) {
        auto job = proto::receive_message(fd);
        if (job.status != proto::ReceiveStatus::message) {
            return;
        }
        std::vector<UniqueFd> made;
        for (std::size_t i = 0; i < job.message.data.size(); ++i) {
            made.emplace_back(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        }
        proto::send_message(fd, "s", proto::raw_fds(made));
    }
}

// Asks the relay on fd for count sockets (one byte each) and expects them.
void ask_for_sockets(int fd, std::size_t count = 1) {
    proto::send_message(fd, std::string(count, 's'));
    auto r = proto::receive_message(fd);
    if (r.message.fds.size() != count) {
        die("the relay sent " + std::to_string(r.message.fds.size()) + " sockets, not " +
            std::to_string(count));
    }
}

Row fork_per_socket(int iterations, int namespace_fd) {
    return measure("fork", "fork+setns+socket+send, per socket", iterations, 1, [&] {
        Forked child([&](int fd) {
            if (::setns(namespace_fd, CLONE_NEWNET) < 0) {
                return;
            }
            UniqueFd s{::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
            int fds[1] = {s.get()};
            proto::send_message(fd, "s", fds);
        });
        auto r = proto::receive_message(child.fd());
        if (r.message.fds.size() != 1) {
            die("forked child sent no socket");
        }
    });
}

// The floor of a direct channel: the client and one process in the
// namespace, blocking I/O, a one-byte protocol.
Row one_hop_relay(int iterations, int namespace_fd) {
    Forked worker([&](int fd) { serve_sockets(namespace_fd, fd); });
    return measure("relay-1hop", "bare relay: 1 process, no JSON", iterations, 1,
                   [&] { ask_for_sockets(worker.fd()); });
}

// The floor of a batch on a direct channel: the same relay, 253 sockets a message.
Row one_hop_relay_batch(int iterations, int namespace_fd) {
    Forked worker([&](int fd) { serve_sockets(namespace_fd, fd); });
    return measure("relay-1hop-253", "bare relay: 1 process, no JSON, 253 sockets a message",
                   iterations, 253, [&] { ask_for_sockets(worker.fd(), 253); });
}

// The floor of any design through a daemon: client -> relay process ->
// worker process in the namespace -> relay -> client.
Row two_hop_relay(int iterations, int namespace_fd) {
    Forked relay([&](int up) {
        Forked worker([&](int down) { serve_sockets(namespace_fd, down); });
        for (;;) {
            auto request = proto::receive_message(up);
            if (request.status != proto::ReceiveStatus::message) {
                return;
            }
            proto::send_message(worker.fd(), request.message.data);
            auto reply = proto::receive_message(worker.fd());
            proto::send_message(up, reply.message.data, proto::raw_fds(reply.message.fds));
        }
    });
    return measure("relay-2hop", "bare relay: 2 processes, no JSON", iterations, 1,
                   [&] { ask_for_sockets(relay.fd()); });
}

// ---- nsbroker ---------------------------------------------------------------

// The first socket in a namespace that has no worker yet: a new namespace
// for each sample, made and deleted outside the timed part.
Row cold_namespace(std::string key, std::string name, Client& client, int iterations) {
    return measure_timed(std::move(key), std::move(name), iterations, 1, [&] {
        test::TestNetns fresh("cold");
        auto netns = Netns::name(fresh.name());
        auto start = Clock::now();
        one_socket(client, netns);
        return micros_since(start);
    });
}

// The pid of the worker serving namespace name, as nsbrokerd lists it.
pid_t worker_of(Client& client, const std::string& name) {
    auto listing = client.namespaces();
    if (!listing) {
        die(listing.error().describe());
    }
    for (const auto& ns : listing->namespaces) {
        if (std::find(ns.names.begin(), ns.names.end(), name) != ns.names.end() &&
            ns.worker_pid != 0) {
            return ns.worker_pid;
        }
    }
    die("nsbrokerd lists no worker for " + name);
}

// The processor time process pid has used, all its threads, user and
// system, in µs (/proc/PID/stat, in clock ticks).
double cpu_us_of(pid_t pid) {
    std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    // The fields after the command name, which may hold spaces, start at
    // the state (field 3); utime and stime are fields 14 and 15.
    auto end_of_name = stat.rfind(')');
    if (end_of_name == std::string::npos) {
        die("cannot read /proc/" + std::to_string(pid) + "/stat");
    }
    std::istringstream fields(stat.substr(end_of_name + 2));
    std::vector<std::string> f{std::istream_iterator<std::string>(fields),
                               std::istream_iterator<std::string>()};
    if (f.size() < 13) {
        die("short /proc/" + std::to_string(pid) + "/stat");
    }
    double ticks = std::atof(f[11].c_str()) + std::atof(f[12].c_str());
    return ticks * 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// Threads asking for one socket a request for a fixed time, each through
// the Client client_of(thread) gives it: sockets a second, and the
// processor time a socket cost this process, the daemon and the worker.
struct Flow {
    double sockets_per_s = 0;
    double client_cpu_us = 0;
    double daemon_cpu_us = 0;
    double worker_cpu_us = 0;
};

Flow measure_flow(int threads, const std::function<Client&(int)>& client_of,
                  const test::Daemon& daemon, const std::string& name) {
    // Long enough that starting and stopping the threads is noise.
    constexpr auto window = std::chrono::milliseconds(1500);
    const auto netns = Netns::name(name);
    std::atomic<bool> stop{false};
    std::atomic<long> made{0};
    std::latch warmed(threads + 1);
    std::latch go(1);
    std::mutex failure_mutex;
    std::optional<std::string> failure;
    auto fail = [&](const Error& e) {
        std::lock_guard lock(failure_mutex);
        failure = e.describe();
    };
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            Client& client = client_of(t);
            // The first request may start a worker and open a channel.
            auto first = client.socket(netns, udp_spec());
            warmed.arrive_and_wait();
            go.wait();
            if (!first) {
                fail(first.error());
                return;
            }
            long mine = 0;
            while (!stop.load(std::memory_order_relaxed)) {
                auto s = client.socket(netns, udp_spec());
                if (!s) {
                    fail(s.error());
                    break;
                }
                ++mine;
            }
            made += mine;
        });
    }
    warmed.arrive_and_wait();
    const pid_t worker = worker_of(client_of(0), name);
    const double cpu_before[3] = {cpu_us_of(::getpid()), cpu_us_of(daemon.pid()),
                                  cpu_us_of(worker)};
    auto start = Clock::now();
    go.count_down();
    std::this_thread::sleep_for(window);
    stop = true;
    for (auto& w : workers) {
        w.join();
    }
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (failure) {
        die(*failure);
    }
    const double sockets = static_cast<double>(made.load());
    return {sockets / seconds, (cpu_us_of(::getpid()) - cpu_before[0]) / sockets,
            (cpu_us_of(daemon.pid()) - cpu_before[1]) / sockets,
            (cpu_us_of(worker) - cpu_before[2]) / sockets};
}

// Sockets a second from one thread driving one Client from a poll(2) loop,
// with depth requests in flight on its direct channel.
ThroughputRow event_loop_flow(const test::Daemon& daemon, const std::string& name, int depth) {
    constexpr auto window = std::chrono::milliseconds(1500);
    Client client = connect_client(daemon, true);
    const auto netns = Netns::name(name);
    one_socket(client, netns);
    const pid_t worker = worker_of(client, name);
    int in_flight = 0;
    long made = 0;
    auto collect = [&] {
        pollfd p{client.event_fd(), POLLIN, 0};
        if (::poll(&p, 1, 10'000) != 1) {
            die("no completion within 10 s");
        }
        for (auto& done : client.completions()) {
            if (!done.sockets) {
                die(done.sockets.error().describe());
            }
            ++made;
            --in_flight;
        }
    };
    const double cpu_before[3] = {cpu_us_of(::getpid()), cpu_us_of(daemon.pid()),
                                  cpu_us_of(worker)};
    const auto start = Clock::now();
    while (Clock::now() - start < window) {
        for (; in_flight < depth; ++in_flight) {
            if (auto id = client.submit_sockets(netns, {udp_spec()}); !id) {
                die(id.error().describe());
            }
        }
        collect();
    }
    while (in_flight > 0) {
        collect();
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const double sockets = static_cast<double>(made);
    ThroughputRow row;
    row.key = "loop-channel-1";
    row.name = "one Client from an event loop, " + std::to_string(depth) +
               " requests in flight, direct channel, 1 thread";
    row.series = "one Client from an event loop, direct channel";
    row.threads = 1;
    row.clients = 1;
    row.direct_channels = true;
    row.sockets_per_s = sockets / seconds;
    row.client_cpu_us = (cpu_us_of(::getpid()) - cpu_before[0]) / sockets;
    row.daemon_cpu_us = (cpu_us_of(daemon.pid()) - cpu_before[1]) / sockets;
    row.worker_cpu_us = (cpu_us_of(worker) - cpu_before[2]) / sockets;
    return row;
}

// Sockets a second for 1, 4 and 16 threads: sharing one Client or with a
// Client each, on direct channels or through nsbrokerd.
void add_throughput_series(Report& report, const test::Daemon& daemon, const std::string& name,
                           bool shared, bool channels) {
    const std::string series = std::string(shared ? "one Client shared" : "a Client each") +
                               (channels ? ", direct channel" : ", through nsbrokerd");
    const std::string key =
        std::string(shared ? "shared-" : "own-") + (channels ? "channel-" : "daemon-");
    for (int threads : {1, 4, 16}) {
        std::vector<Client> clients;
        for (int t = 0; t < (shared ? 1 : threads); ++t) {
            clients.push_back(connect_client(daemon, channels));
        }
        auto client_of = [&](int t) -> Client& {
            return clients[shared ? 0 : static_cast<std::size_t>(t)];
        };
        const std::string count = std::to_string(threads);
        Flow flow = measure_flow(threads, client_of, daemon, name);
        ThroughputRow row;
        row.key = key + count;
        row.name = series + ", " + count + (threads == 1 ? " thread" : " threads");
        row.series = series;
        row.threads = threads;
        row.clients = static_cast<int>(clients.size());
        row.direct_channels = channels;
        row.sockets_per_s = flow.sockets_per_s;
        row.client_cpu_us = flow.client_cpu_us;
        row.daemon_cpu_us = flow.daemon_cpu_us;
        row.worker_cpu_us = flow.worker_cpu_us;
        report.add(std::move(row));
    }
}

// One line of /proc/PID/smaps_rollup, in KiB.
long smaps_field(const std::string& rollup, const std::string& field) {
    std::istringstream lines(rollup);
    std::string line;
    while (std::getline(lines, line)) {
        if (line.starts_with(field + ":")) {
            return std::atol(line.c_str() + field.size() + 1);
        }
    }
    die("no " + field + " in smaps_rollup");
}

// Idle workers measured together for the memory rows: enough that the pages
// they share weigh little in each one's PSS, as on a machine with many.
constexpr int idle_workers = 16;

// The mean memory of idle workers, one in each of as many new namespaces.
MemoryRow idle_worker_memory(Client& client, std::string mode, int workers) {
    std::vector<std::unique_ptr<test::TestNetns>> spaces;
    for (int i = 0; i < workers; ++i) {
        spaces.push_back(std::make_unique<test::TestNetns>("idle"));
        one_socket(client, Netns::name(spaces.back()->name()));
    }
    MemoryRow row{std::move(mode), workers, 0, 0, 0, 0};
    for (const auto& ns : spaces) {
        const pid_t pid = worker_of(client, ns->name());
        std::ifstream file("/proc/" + std::to_string(pid) + "/smaps_rollup");
        std::stringstream rollup;
        rollup << file.rdbuf();
        if (!file) {
            die("cannot read the smaps_rollup of worker " + std::to_string(pid));
        }
        const std::string text = rollup.str();
        row.pss_kib += smaps_field(text, "Pss");
        row.pss_file_kib += smaps_field(text, "Pss_File");
        row.rss_kib += smaps_field(text, "Rss");
        row.private_kib += smaps_field(text, "Private_Clean") + smaps_field(text, "Private_Dirty");
    }
    row.pss_kib /= workers;
    row.rss_kib /= workers;
    row.private_kib /= workers;
    row.pss_file_kib /= workers;
    return row;
}

// ---- D-Bus ------------------------------------------------------------------

struct BusRelease {
    void operator()(sd_bus* bus) const noexcept { sd_bus_flush_close_unref(bus); }
};

// A client of the bus at address once nsbrokerd answers Ping there.
std::unique_ptr<sd_bus, BusRelease> broker_on_bus(const std::string& address) {
    sd_bus* raw = nullptr;
    if (sd_bus_new(&raw) < 0) {
        die("sd_bus_new");
    }
    std::unique_ptr<sd_bus, BusRelease> bus(raw);
    if (sd_bus_set_address(bus.get(), address.c_str()) < 0 ||
        sd_bus_set_bus_client(bus.get(), 1) < 0 || sd_bus_start(bus.get()) < 0) {
        die("cannot connect to the private bus");
    }
    bool up = test::wait_for([&] {
        return sd_bus_call_method(bus.get(), "org.nsbroker.Broker1", "/org/nsbroker/Broker1",
                                  "org.nsbroker.Broker1", "Ping", nullptr, nullptr, "") >= 0;
    });
    if (!up) {
        die("nsbrokerd did not come up on the private bus");
    }
    return bus;
}

// OpenSockets(name, AF_INET, SOCK_DGRAM, 0, {}, count), or OpenSocket when
// count is 0; dies unless the reply carries the sockets.
void open_over_dbus(sd_bus* bus, const std::string& name, unsigned count) {
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message* reply = nullptr;
    int r = count == 0
                ? sd_bus_call_method(bus, "org.nsbroker.Broker1", "/org/nsbroker/Broker1",
                                     "org.nsbroker.Broker1", "OpenSocket", &error, &reply,
                                     "siiia{sv}", name.c_str(), AF_INET, SOCK_DGRAM, 0, 0)
                : sd_bus_call_method(bus, "org.nsbroker.Broker1", "/org/nsbroker/Broker1",
                                     "org.nsbroker.Broker1", "OpenSockets", &error, &reply,
                                     "siiia{sv}u", name.c_str(), AF_INET, SOCK_DGRAM, 0, 0, count);
    if (r < 0) {
        die(std::string("D-Bus: ") + (error.message ? error.message : std::strerror(-r)));
    }
    // The reply owns its descriptors; they close with it.
    sd_bus_message_unref(reply);
}

// ---- the run ----------------------------------------------------------------

std::string load_average() {
    std::ifstream file("/proc/loadavg");
    std::string one, five, fifteen;
    file >> one >> five >> fifteen;
    return one + " " + five + " " + fifteen;
}

void note_machine(Report& report, int iterations) {
    utsname u{};
    ::uname(&u);
    report.note("kernel", std::string(u.release));
    report.note("cpus", std::thread::hardware_concurrency());
    report.note("iterations", iterations);
    report.note("load before", load_average());
}

struct Options {
    int iterations = 2000;
    bool json = false;
    std::string cpus; // empty: wherever the scheduler puts them
};

// Pins this process, and so every process it starts later, to the CPUs
// listed ("0", "0,1").
void pin_to(const std::string& cpus) {
    cpu_set_t set;
    CPU_ZERO(&set);
    std::istringstream list(cpus);
    std::string cpu;
    while (std::getline(list, cpu, ',')) {
        if (cpu.empty() || cpu.find_first_not_of("0123456789") != std::string::npos) {
            die("--cpus takes a list of CPU numbers, like 0,1");
        }
        CPU_SET(std::atoi(cpu.c_str()), &set);
    }
    if (::sched_setaffinity(0, sizeof(set), &set) < 0) {
        die("sched_setaffinity " + cpus + ": " + std::strerror(errno));
    }
}

Options parse_options(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--json") {
            o.json = true;
        } else if (arg == "--cpus" && i + 1 < argc) {
            o.cpus = argv[++i];
        } else if (!arg.empty() && arg.find_first_not_of("0123456789") == std::string::npos) {
            o.iterations = std::atoi(arg.c_str());
        } else {
            die("usage: nsbroker-bench [--json] [--cpus LIST] [ITERATIONS]");
        }
    }
    if (o.iterations < 10) {
        die("ITERATIONS must be at least 10");
    }
    return o;
}

} // namespace

int run(int argc, char** argv) {
    const Options options = parse_options(argc, argv);
    const int n = options.iterations;
    ::setenv("NSBROKERD", NSBROKERD_PATH, 0);
    ::setenv("DBUS_BUS_CONFIG", DBUS_BUS_CONFIG_PATH, 0);
    ::setenv("DBUS_POLICY", DBUS_POLICY_PATH, 0);

    if (!options.cpus.empty()) {
        pin_to(options.cpus);
    }
    Report report;
    note_machine(report, n);
    report.note("pinned to cpus", options.cpus.empty() ? "no" : options.cpus);
    test::TestNetns ns("bench");
    UniqueFd home{::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)};
    UniqueFd target{::open(ns.path().c_str(), O_RDONLY | O_CLOEXEC)};
    if (!home || !target) {
        die("cannot open the namespaces");
    }

    // The floors and the ways without nsbroker.
    report.add(measure("socket", "socket()+close, own namespace", n, 1,
                       [] { UniqueFd s{::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)}; }));
    report.add(measure("setns", "setns+socket+setns back, in thread", n, 1, [&] {
        if (::setns(target.get(), CLONE_NEWNET) < 0) {
            die("setns");
        }
        UniqueFd s{::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
        if (::setns(home.get(), CLONE_NEWNET) < 0) {
            die("setns back");
        }
    }));
    report.add(fork_per_socket(n / 4, target.get()));
    report.add(one_hop_relay(n, target.get()));
    report.add(two_hop_relay(n, target.get()));
    report.add(one_hop_relay_batch(std::max(n / 20, 10), target.get()));

    // nsbroker, in its default worker mode (fork).
    const auto netns = Netns::name(ns.name());
    {
        test::Daemon daemon({"--log-level", "warn"});
        Client through_daemon = connect_client(daemon, false);
        Client on_channel = connect_client(daemon, true);
        report.add(measure("daemon", "nsbroker, one socket a request, through nsbrokerd", n, 1,
                           [&] { one_socket(through_daemon, netns); }));
        report.add(measure("channel", "nsbroker, one socket a request, direct channel", n, 1,
                           [&] { one_socket(on_channel, netns); }));
        auto reserving = Client::connect(daemon.socket_path(), {.reservoir = 64});
        if (!reserving) {
            die(reserving.error().describe());
        }
        // Through nsbrokerd, then on the channel, which fills the reservoir.
        one_socket(*reserving, netns);
        one_socket(*reserving, netns);
        report.add(measure("reservoir",
                           "nsbroker, one socket from a reservoir of 64, refilled on the channel",
                           n, 1, [&] { one_socket(*reserving, netns); }));
        const std::vector<SocketSpec> batch{udp_spec(253)};
        const int batches = std::max(n / 20, 10);
        auto batch_on = [&](Client& client) {
            return [&] {
                auto s = client.sockets(netns, batch);
                if (!s || s->size() != 253) {
                    die("batch failed: " +
                        (s ? std::to_string(s->size()) + " sockets" : s.error().describe()));
                }
            };
        };
        report.add(measure("daemon-253", "nsbroker, 253 sockets a request, through nsbrokerd",
                           batches, 253, batch_on(through_daemon)));
        report.add(measure("channel-253", "nsbroker, 253 sockets a request, direct channel",
                           batches, 253, batch_on(on_channel)));
        // Each row measured the path its name says.
        if (through_daemon.direct_channels() != 0 || on_channel.direct_channels() != 1) {
            die("a Client holds direct channels other than the ones asked for");
        }
    }
    {
        // Throughput has a daemon of its own: nothing the rows above left
        // behind (channels, descriptors, a worker's heap) weighs on it.
        test::Daemon daemon({"--log-level", "warn"});
        for (bool shared : {true, false}) {
            for (bool channels : {true, false}) {
                add_throughput_series(report, daemon, ns.name(), shared, channels);
            }
        }
        report.add(event_loop_flow(daemon, ns.name(), 64));
    }

    // A namespace's first socket, and an idle worker's memory, by worker mode.
    for (const char* mode : {"fork", "exec"}) {
        test::Daemon daemon({"--log-level", "warn", "--worker-mode", mode});
        Client client = connect_client(daemon, true);
        one_socket(client, netns);
        report.add(idle_worker_memory(client, mode, idle_workers));
        report.add(cold_namespace(std::string("cold-") + mode,
                                  std::string("nsbroker, first socket in a namespace, ") + mode +
                                      " worker",
                                  client, std::max(n / 20, 10)));
        // The same without a spare worker: each new namespace waits for its fork.
        test::Daemon forking(
            {"--log-level", "warn", "--worker-mode", mode, "--spare-workers", "0"});
        Client forking_client = connect_client(forking, true);
        report.add(cold_namespace(std::string("cold-") + mode + "-nospare",
                                  std::string("nsbroker, first socket in a namespace, ") + mode +
                                      " worker, no spare",
                                  forking_client, std::max(n / 20, 10)));
    }

    {
        // The same daemon's D-Bus front end, on a private bus, called by sd-bus.
        test::PrivateBus bus;
        test::Daemon daemon({"--log-level", "warn"}, {bus.env()});
        auto caller = broker_on_bus(bus.address());
        report.add(measure("dbus", "nsbroker over D-Bus, one socket a call", n, 1,
                           [&] { open_over_dbus(caller.get(), ns.name(), 0); }));
        // dbus-daemon passes at most 16 descriptors in a message.
        report.add(measure("dbus-16", "nsbroker over D-Bus, 16 sockets a call", std::max(n / 4, 10),
                           16, [&] { open_over_dbus(caller.get(), ns.name(), 16); }));
    }
    report.note("load after", load_average());

    report.compare_all("setns");
    report.compare("relay-2hop", "relay-1hop");
    report.compare("daemon", "relay-2hop");
    report.compare("channel", "relay-1hop");
    report.compare("channel", "daemon");
    report.compare("reservoir", "channel");
    report.compare("channel-253", "daemon-253");
    report.compare("channel-253", "relay-1hop-253");
    report.compare("cold-fork", "fork");
    report.compare("cold-exec", "fork");
    report.compare("cold-fork-nospare", "fork");
    report.compare("cold-exec-nospare", "fork");
    // The floor of a cold namespace: a request that crosses nsbrokerd at all.
    report.compare("daemon", "fork");
    report.compare("dbus", "daemon");
    report.compare("loop-channel-1", "own-daemon-4");
    for (const char* threads : {"4", "16"}) {
        for (const char* series : {"shared-channel-", "shared-daemon-", "own-channel-"}) {
            report.compare(series + std::string(threads), "own-daemon-" + std::string(threads));
        }
    }

    if (options.json) {
        std::printf("%s\n", report.to_json().dump(2).c_str());
    } else {
        report.print_tables(stdout);
    }
    return 0;
}

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const Fatal& f) {
        std::fprintf(stderr, "nsbroker-bench: %s\n", f.what.c_str());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "nsbroker-bench: %s\n", e.what());
    }
    return 1;
}
