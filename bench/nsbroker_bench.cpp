// nsbroker-bench: what one socket in another network namespace costs, by
// every way of getting one, measured side by side in one run.
//
//   nsbroker-bench [ITERATIONS]     (root; NSBROKERD names the daemon binary)
//
// Each figure is per socket, p50 and p99, and as a ratio to the in-thread
// setns baseline: setns into the namespace, socket(), setns back.
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "nsbroker/client.hpp"
#include "nsbroker/fd_passing.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using Clock = std::chrono::steady_clock;

namespace {

struct Figures {
    std::string name;
    double p50_us = 0;
    double p99_us = 0;
};

// Runs op iterations times; each run makes sockets_per_op sockets.
Figures measure(const std::string& name, int iterations, int sockets_per_op,
                const std::function<void()>& op) {
    for (int i = 0; i < std::min(iterations / 10 + 1, 50); ++i) {
        op(); // warm up
    }
    std::vector<double> samples;
    samples.reserve(static_cast<std::size_t>(iterations));
    for (int i = 0; i < iterations; ++i) {
        auto start = Clock::now();
        op();
        std::chrono::duration<double, std::micro> took = Clock::now() - start;
        samples.push_back(took.count() / sockets_per_op);
    }
    std::sort(samples.begin(), samples.end());
    auto at = [&](double q) {
        return samples[static_cast<std::size_t>(q * (samples.size() - 1))];
    };
    return {name, at(0.50), at(0.99)};
}

// A failure that ends the run; thrown, so that the namespaces, daemons and
// bus the run made are cleaned up by their destructors on the way out.
struct Fatal {
    std::string what;
};

[[noreturn]] void die(const std::string& what) {
    throw Fatal{what};
}

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

} // namespace

int run(int argc, char** argv) {
    int iterations = argc > 1 ? std::atoi(argv[1]) : 2000;
    if (iterations < 10) {
        die("ITERATIONS must be at least 10");
    }
    ::setenv("NSBROKERD", NSBROKERD_PATH, 0);
    ::setenv("DBUS_BUS_CONFIG", DBUS_BUS_CONFIG_PATH, 0);
    ::setenv("DBUS_POLICY", DBUS_POLICY_PATH, 0);
    test::TestNetns ns("bench");
    test::Daemon daemon({"--log-level", "warn"});
    auto client = Client::connect(daemon.socket_path());
    if (!client) {
        die(client.error().describe());
    }
    UniqueFd home{::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)};
    UniqueFd target{::open(ns.path().c_str(), O_RDONLY | O_CLOEXEC)};
    if (!home || !target) {
        die("cannot open the namespaces");
    }

    std::vector<Figures> results;
    results.push_back(measure("socket()+close, own namespace", iterations, 1,
                              [] { UniqueFd s{::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)}; }));
    results.push_back(measure("setns+socket+setns back, in thread", iterations, 1, [&] {
        if (::setns(target.get(), CLONE_NEWNET) < 0) {
            die("setns");
        }
        UniqueFd s{::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
        if (::setns(home.get(), CLONE_NEWNET) < 0) {
            die("setns back");
        }
    }));
    results.push_back(measure("fork+setns+socket+send, per socket", iterations / 4, 1, [&] {
        int pair[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
            die("socketpair");
        }
        UniqueFd ours{pair[0]};
        UniqueFd theirs{pair[1]};
        pid_t child = ::fork();
        if (child == 0) {
            ::setns(target.get(), CLONE_NEWNET);
            int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            int fds[1] = {s};
            proto::send_message(theirs.get(), "s", fds);
            ::_exit(0);
        }
        auto r = proto::receive_message(ours.get());
        ::waitpid(child, nullptr, 0);
        if (r.message.fds.size() != 1) {
            die("forked child sent no socket");
        }
    }));
    {
        // The floor of any relay design: client -> relay process -> worker
        // process in the namespace -> relay -> client, blocking I/O, no JSON.
        int up[2];
        int down[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, up) < 0 ||
            ::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, down) < 0) {
            die("socketpair");
        }
        UniqueFd client_end{up[0]};
        pid_t relay = ::fork();
        if (relay == 0) {
            client_end.reset();
            pid_t worker = ::fork();
            if (worker == 0) {
                ::close(up[1]);
                ::close(down[0]);
                ::setns(target.get(), CLONE_NEWNET);
                for (;;) {
                    auto job = proto::receive_message(down[1]);
                    if (job.status != proto::ReceiveStatus::message) {
                        ::_exit(0);
                    }
                    UniqueFd s{::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
                    int fds[1] = {s.get()};
                    proto::send_message(down[1], "s", fds);
                }
            }
            ::close(down[1]);
            for (;;) {
                auto request = proto::receive_message(up[1]);
                if (request.status != proto::ReceiveStatus::message) {
                    ::_exit(0);
                }
                proto::send_message(down[0], request.message.data);
                auto reply = proto::receive_message(down[0]);
                proto::send_message(up[1], reply.message.data, proto::raw_fds(reply.message.fds));
            }
        }
        ::close(up[1]);
        ::close(down[0]);
        ::close(down[1]);
        results.push_back(measure("bare relay: 2 processes, no JSON", iterations, 1, [&] {
            proto::send_message(client_end.get(), "socket");
            auto r = proto::receive_message(client_end.get());
            if (r.message.fds.size() != 1) {
                die("relay sent no socket");
            }
        }));
        client_end.reset();
        ::waitpid(relay, nullptr, 0);
    }
    SocketSpec udp;
    udp.family = AF_INET;
    udp.type = SOCK_DGRAM;
    auto netns = Netns::name(ns.name());
    results.push_back(measure("nsbroker, one socket a request", iterations, 1, [&] {
        auto s = client->socket(netns, udp);
        if (!s) {
            die(s.error().describe());
        }
    }));
    SocketSpec batch = udp;
    batch.count = 253;
    results.push_back(
        measure("nsbroker, 253 sockets a request", std::max(iterations / 20, 10), 253, [&] {
            auto s = client->sockets(netns, {batch});
            if (!s || s->size() != 253) {
                die("batch failed");
            }
        }));

    const Figures relay = results[3];
    const Figures single = results[4];
    const Figures batched = results[5];
    {
        // The same daemon's D-Bus front end, on a private bus, called by sd-bus.
        test::PrivateBus bus;
        test::Daemon bus_daemon({"--log-level", "warn"}, {bus.env()});
        auto caller = broker_on_bus(bus.address());
        results.push_back(measure("nsbroker over D-Bus, one socket a call", iterations, 1,
                                  [&] { open_over_dbus(caller.get(), ns.name(), 0); }));
        // dbus-daemon passes at most 16 descriptors in a message.
        results.push_back(measure("nsbroker over D-Bus, 16 sockets a call",
                                  std::max(iterations / 4, 10), 16,
                                  [&] { open_over_dbus(caller.get(), ns.name(), 16); }));
    }

    const double base = results[1].p50_us;
    std::printf("%-40s %10s %10s %12s\n", "per socket", "p50 us", "p99 us", "p50 / setns");
    for (const auto& r : results) {
        std::printf("%-40s %10.2f %10.2f %11.2fx\n", r.name.c_str(), r.p50_us, r.p99_us,
                    r.p50_us / base);
    }
    std::printf("\nsingle request: %.2fx in-thread setns (target 6x), %.2fx the bare relay\n",
                single.p50_us / base, single.p50_us / relay.p50_us);
    std::printf("batch of 253:   %.2fx in-thread setns (target 1.5x)\n", batched.p50_us / base);
    std::printf("over D-Bus:     %.2fx the socket for one socket a call\n",
                results[6].p50_us / single.p50_us);
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
