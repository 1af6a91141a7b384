// org.nsbroker.Broker1 on a private system bus: a dbus-daemon started by the
// test with tests/dbus/system-bus.conf.in and nsbrokerd's own bus policy,
// called by busctl, by an sd-bus client, by Debian's python3-dbus, and by an
// unprivileged user; and killed and started again under the daemon.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <thread>

#include "nsbroker/client.hpp"
#include "nsbroker_config.h"
#include "support/harness.hpp"

using namespace nsbroker;
using namespace nsbroker::test;

namespace {

constexpr const char* service = "org.nsbroker.Broker1";
constexpr const char* object = "/org/nsbroker/Broker1";
constexpr const char* interface = "org.nsbroker.Broker1";

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// nsbrokerd on the private bus, once it owns its name.
struct BusDaemon {
    explicit BusDaemon(const PrivateBus& bus) : daemon({}, {bus.env()}) {
        if (!wait_for([this] {
                return daemon.log().find("D-Bus: org.nsbroker.Broker1 at") != std::string::npos;
            })) {
            throw std::runtime_error("nsbrokerd did not take its bus name:\n" + daemon.log());
        }
    }
    Daemon daemon;
};

struct BusRelease {
    void operator()(sd_bus* bus) const noexcept { sd_bus_flush_close_unref(bus); }
};
using BusPtr = std::unique_ptr<sd_bus, BusRelease>;

BusPtr connect_bus(const std::string& address) {
    sd_bus* raw = nullptr;
    if (sd_bus_new(&raw) < 0) {
        return nullptr;
    }
    BusPtr bus(raw);
    if (sd_bus_set_address(bus.get(), address.c_str()) < 0 ||
        sd_bus_set_bus_client(bus.get(), 1) < 0 || sd_bus_start(bus.get()) < 0) {
        return nullptr;
    }
    return bus;
}

// What a call gave: its descriptors (dup'd out of the reply), or its error.
struct CallResult {
    std::vector<UniqueFd> fds;
    std::string error_name;
    std::string error_message;
};

CallResult finish(int r, sd_bus_error& error, sd_bus_message* reply, bool many) {
    CallResult out;
    if (r < 0) {
        out.error_name = error.name ? error.name : "";
        out.error_message = error.message ? error.message : "";
        sd_bus_error_free(&error);
        return out;
    }
    if (many) {
        sd_bus_message_enter_container(reply, 'a', "h");
        int fd = -1;
        while (sd_bus_message_read_basic(reply, 'h', &fd) > 0) {
            out.fds.emplace_back(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
        }
    } else {
        int fd = -1;
        if (sd_bus_message_read(reply, "h", &fd) > 0) {
            out.fds.emplace_back(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
        }
    }
    sd_bus_message_unref(reply);
    return out;
}

// OpenSocket(netns, AF_INET, SOCK_DGRAM, 0, {"bind": "127.0.0.1:0"}).
CallResult open_udp(sd_bus* bus, const std::string& netns) {
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message* reply = nullptr;
    int r = sd_bus_call_method(bus, service, object, interface, "OpenSocket", &error, &reply,
                               "siiia{sv}", netns.c_str(), AF_INET, SOCK_DGRAM, 0, 1, "bind", "s",
                               "127.0.0.1:0");
    return finish(r, error, reply, false);
}

int local_port(int fd) {
    sockaddr_in address{};
    socklen_t length = sizeof address;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    return ntohs(address.sin_port);
}

std::string busctl(const PrivateBus& bus, const std::string& args, int* status = nullptr) {
    return run_output(bus.env() + " busctl " + args + " 2>&1", status);
}

// Whether the daemon answers Ping on the bus at address, asked on a
// connection of its own. A bus without the name answers at once.
bool bus_ping(const std::string& address) {
    auto c = connect_bus(address);
    if (!c) {
        return false;
    }
    sd_bus_error error = SD_BUS_ERROR_NULL;
    int r = sd_bus_call_method(c.get(), service, object, interface, "Ping", &error, nullptr, "");
    sd_bus_error_free(&error);
    return r >= 0;
}

// The worker serving the namespace with this inode, as ListNamespaces says
// (as root), or 0.
pid_t bus_worker_of(sd_bus* bus, ino_t ino) {
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message* raw = nullptr;
    int r = sd_bus_call_method(bus, service, object, interface, "ListNamespaces", &error, &raw, "");
    sd_bus_error_free(&error);
    std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)> reply(raw,
                                                                           sd_bus_message_unref);
    if (r < 0 || sd_bus_message_enter_container(raw, 'a', "(asttsutt)") < 0) {
        return 0;
    }
    while (sd_bus_message_enter_container(raw, 'r', "asttsutt") > 0) {
        uint64_t dev = 0;
        uint64_t inode = 0;
        const char* state = nullptr;
        uint32_t pid = 0;
        if (sd_bus_message_skip(raw, "as") < 0 ||
            sd_bus_message_read(raw, "ttsu", &dev, &inode, &state, &pid) < 0 ||
            sd_bus_message_skip(raw, "tt") < 0 || sd_bus_message_exit_container(raw) < 0) {
            return 0;
        }
        if (inode == ino) {
            return static_cast<pid_t>(pid);
        }
    }
    return 0;
}

// Whether the daemon answers ping on its socket.
bool socket_ping(const Daemon& d) {
    auto c = Client::connect(d.socket_path());
    return c && c->ping();
}

// Lines of the daemon's log that hold text.
std::size_t log_lines(const Daemon& d, const std::string& text) {
    std::istringstream log(d.log());
    std::size_t n = 0;
    for (std::string line; std::getline(log, line);) {
        n += line.find(text) != std::string::npos ? 1 : 0;
    }
    return n;
}

// How long a bus started again may take to be joined: the daemon's attempts
// are at most 5 s apart.
constexpr auto rejoin_deadline = std::chrono::seconds(30);

} // namespace

TEST_CASE("busctl calls Ping and ListNamespaces, and reads the properties") {
    PrivateBus bus;
    BusDaemon d(bus);
    TestNetns ns("busctl");
    int status = -1;
    busctl(bus, std::string("call ") + service + " " + object + " " + interface + " Ping", &status);
    CHECK(status == 0);

    // A namespace with a worker is listed with it.
    auto c = connect_bus(bus.address());
    REQUIRE(c);
    REQUIRE(open_udp(c.get(), ns.name()).fds.size() == 1);
    auto list = busctl(
        bus, std::string("call ") + service + " " + object + " " + interface + " ListNamespaces",
        &status);
    INFO(list);
    CHECK(status == 0);
    CHECK(list.rfind("a(asttsutt) ", 0) == 0);
    CHECK(list.find("\"" + ns.name() + "\" 4 " + std::to_string(ns.inode()) + " \"ready\"") !=
          std::string::npos);

    auto version = busctl(bus, std::string("get-property ") + service + " " + object + " " +
                                   interface + " Version");
    CHECK(version == std::string("s \"") + NSBROKER_VERSION + "\"\n");
    auto workers = busctl(bus, std::string("get-property ") + service + " " + object + " " +
                                   interface + " Workers");
    CHECK(workers == "u 1\n");
}

TEST_CASE("ListNamespaces answers with the whole list, more than one socket message holds") {
    PrivateBus bus;
    BusDaemon d(bus);
    std::map<ino_t, std::unique_ptr<TestNetns>> ours;
    for (int i = 0; i < 400; ++i) {
        auto ns = std::make_unique<TestNetns>("bus-" + std::string(180, 'b'));
        ours.emplace(ns->inode(), std::move(ns));
    }
    // The socket protocol takes more than one page for them.
    auto client = Client::connect(d.daemon.socket_path());
    REQUIRE(client);
    auto first = client->namespaces_page(std::nullopt);
    REQUIRE(first);
    CHECK(first->next_cursor);

    auto c = connect_bus(bus.address());
    REQUIRE(c);
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message* raw = nullptr;
    int r =
        sd_bus_call_method(c.get(), service, object, interface, "ListNamespaces", &error, &raw, "");
    INFO((error.message ? error.message : ""));
    REQUIRE(r >= 0);
    std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)> reply(raw,
                                                                           sd_bus_message_unref);
    std::map<std::uint64_t, int> listed;
    std::uint64_t last_ino = 0;
    REQUIRE(sd_bus_message_enter_container(reply.get(), 'a', "(asttsutt)") > 0);
    while (sd_bus_message_enter_container(reply.get(), 'r', "asttsutt") > 0) {
        std::vector<std::string> names;
        REQUIRE(sd_bus_message_enter_container(reply.get(), 'a', "s") > 0);
        const char* name = nullptr;
        while (sd_bus_message_read_basic(reply.get(), 's', &name) > 0) {
            names.emplace_back(name);
        }
        REQUIRE(sd_bus_message_exit_container(reply.get()) >= 0);
        std::uint64_t dev = 0, ino = 0, requests = 0, sockets = 0;
        const char* state = nullptr;
        uint32_t worker = 0;
        REQUIRE(sd_bus_message_read(reply.get(), "ttsutt", &dev, &ino, &state, &worker, &requests,
                                    &sockets) > 0);
        REQUIRE(sd_bus_message_exit_container(reply.get()) >= 0);
        // In the socket protocol's order.
        CHECK(ino > last_ino);
        last_ino = ino;
        ++listed[ino];
        if (auto it = ours.find(ino); it != ours.end()) {
            CHECK(names == std::vector<std::string>{it->second->name()});
        }
    }
    for (const auto& [ino, ns] : ours) {
        CHECK(listed[ino] == 1);
    }
}

TEST_CASE("an sd-bus client gets sockets in the namespace, and errors by name") {
    PrivateBus bus;
    BusDaemon d(bus);
    TestNetns ns("sdbus");
    auto c = connect_bus(bus.address());
    REQUIRE(c);

    auto one = open_udp(c.get(), ns.name());
    INFO(one.error_name, ": ", one.error_message);
    REQUIRE(one.fds.size() == 1);
    CHECK(socket_netns_inode(one.fds[0].get()) == ns.inode());
    CHECK(socket_option(one.fds[0].get(), SO_TYPE) == SOCK_DGRAM);
    CHECK(local_port(one.fds[0].get()) != 0);

    // Three listening TCP sockets sharing a port through SO_REUSEPORT.
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message* reply = nullptr;
    int r = sd_bus_call_method(c.get(), service, object, interface, "OpenSockets", &error, &reply,
                               "siiia{sv}u", ns.path().c_str(), AF_INET, SOCK_STREAM, 0, 3, "bind",
                               "s", "127.0.0.1:8080", "listen", "i", 16, "reuseport", "b", 1, 3U);
    auto three = finish(r, error, reply, true);
    INFO(three.error_name, ": ", three.error_message);
    REQUIRE(three.fds.size() == 3);
    for (const auto& fd : three.fds) {
        CHECK(socket_netns_inode(fd.get()) == ns.inode());
        CHECK(local_port(fd.get()) == 8080);
        CHECK(socket_option(fd.get(), SO_ACCEPTCONN) == 1);
    }

    // The protocol's codes and messages, as D-Bus errors.
    auto missing = open_udp(c.get(), "nsbroker-no-such-namespace");
    CHECK(missing.fds.empty());
    CHECK(missing.error_name == "org.nsbroker.Broker1.Error.NotFound");
    CHECK(missing.error_message ==
          "no network namespace named \"nsbroker-no-such-namespace\" in /run/netns");

    r = sd_bus_call_method(c.get(), service, object, interface, "OpenSocket", &error, &reply,
                           "siiia{sv}", ns.name().c_str(), AF_INET, SOCK_DGRAM, 0, 1, "mark", "d",
                           1.5);
    auto bad_type = finish(r, error, reply, false);
    CHECK(bad_type.error_name == "org.nsbroker.Broker1.Error.InvalidRequest");
    CHECK(bad_type.error_message ==
          "options.mark: D-Bus type 'd' is not accepted; expected a string, boolean or integer");

    r = sd_bus_call_method(c.get(), service, object, interface, "OpenSocket", &error, &reply,
                           "siiia{sv}", ns.name().c_str(), AF_INET, SOCK_DGRAM, 0, 1, "bind", "s",
                           "localhost");
    auto bad_bind = finish(r, error, reply, false);
    CHECK(bad_bind.error_name == "org.nsbroker.Broker1.Error.InvalidRequest");
    CHECK(bad_bind.error_message.rfind("bind: ", 0) == 0);

    // More descriptors than dbus-daemon passes in one message: refused before
    // any socket is made, and the daemon keeps its bus connection.
    r = sd_bus_call_method(c.get(), service, object, interface, "OpenSockets", &error, &reply,
                           "siiia{sv}u", ns.name().c_str(), AF_INET, SOCK_DGRAM, 0, 0, 17U);
    auto too_many = finish(r, error, reply, true);
    CHECK(too_many.error_name == "org.nsbroker.Broker1.Error.Limit");
    r = sd_bus_call_method(c.get(), service, object, interface, "OpenSockets", &error, &reply,
                           "siiia{sv}u", ns.name().c_str(), AF_INET, SOCK_DGRAM, 0, 0, 16U);
    CHECK(finish(r, error, reply, true).fds.size() == 16);

    auto bad_pid = open_udp(c.get(), "pid:x");
    CHECK(bad_pid.error_name == "org.nsbroker.Broker1.Error.InvalidRequest");

    // The daemon keeps serving after all of that, and holds no stray fd.
    CHECK(open_udp(c.get(), ns.name()).fds.size() == 1);
}

TEST_CASE("a Python client with python3-dbus receives a socket that lives in the namespace") {
    PrivateBus bus;
    BusDaemon d(bus);
    TestNetns ns("python");
    int status = -1;
    auto out = run_output(built("DBUS_PYTHON") + " " + built("DBUS_PYTHON_CLIENT") + " '" +
                              bus.address() + "' " + ns.name() + " 2>&1",
                          &status);
    INFO(out);
    REQUIRE(status == 0);
    std::istringstream fields(out);
    unsigned long long inode = 0;
    int port = 0;
    fields >> inode >> port;
    CHECK(inode == ns.inode());
    CHECK(port != 0);
}

TEST_CASE("an unprivileged caller on D-Bus follows the same policy as on the socket") {
    PrivateBus bus;
    BusDaemon d(bus);
    TestNetns ns("bus-nobody");
    const std::string address = bus.address();
    // A namespace root made: refused, naming the rule.
    CHECK(as_nobody(Nobody::plain, [&] {
              auto c = connect_bus(address);
              if (!c) {
                  return 10;
              }
              auto r = open_udp(c.get(), ns.name());
              if (!r.fds.empty() || r.error_name != "org.nsbroker.Broker1.Error.PermissionDenied" ||
                  r.error_message != "rule \"default\": namespace \"" + ns.name() +
                                         "\" is not granted (the caller does not own it)") {
                  std::fprintf(stderr, "%s: %s\n", r.error_name.c_str(), r.error_message.c_str());
                  return 11;
              }
              sd_bus_error error = SD_BUS_ERROR_NULL;
              sd_bus_message* reply = nullptr;
              int listed = sd_bus_call_method(c.get(), service, object, interface, "ListNamespaces",
                                              &error, &reply, "");
              auto list = finish(listed, error, reply, false);
              return list.error_name == "org.nsbroker.Broker1.Error.PermissionDenied" ? 0 : 12;
          }) == 0);
    CHECK(d.daemon.log().find("denied socket request") != std::string::npos);
    CHECK(d.daemon.log().find("of uid 65534") != std::string::npos);
    // A namespace it made itself, named by its own pid: served.
    CHECK(as_nobody(Nobody::own_netns, [&] {
              auto c = connect_bus(address);
              if (!c) {
                  return 20;
              }
              auto r = open_udp(c.get(), "pid:" + std::to_string(::getpid()));
              struct stat own {};
              ::stat("/proc/self/ns/net", &own);
              if (r.fds.size() != 1 || socket_netns_inode(r.fds[0].get()) != own.st_ino) {
                  std::fprintf(stderr, "%s: %s\n", r.error_name.c_str(), r.error_message.c_str());
                  return 21;
              }
              return 0;
          }) == 0);
    // Granted by name, the socket is still the caller's, as the bus says who
    // that is.
    REQUIRE(d.daemon.write_policy(R"({"rules": [{"users": [65534], "namespaces": {"names": [")" +
                                  ns.name() + R"("]}}]})"));
    CHECK(as_nobody(Nobody::plain, [&] {
              auto c = connect_bus(address);
              auto r = c ? open_udp(c.get(), ns.name()) : CallResult{};
              struct stat owner {};
              if (r.fds.size() != 1 || ::fstat(r.fds[0].get(), &owner) < 0) {
                  std::fprintf(stderr, "%s: %s\n", r.error_name.c_str(), r.error_message.c_str());
                  return 30;
              }
              return owner.st_uid == 65534 && owner.st_gid != 0 ? 0 : 31;
          }) == 0);
}

TEST_CASE("the interface the daemon serves is proto/org.nsbroker.Broker1.xml") {
    PrivateBus bus;
    BusDaemon d(bus);
    // The <interface> element of each, whitespace aside.
    auto interface_of = [](const std::string& xml) {
        std::string text = std::regex_replace(xml, std::regex("<!--[^]*?-->"), "");
        auto begin = text.find("<interface name=\"org.nsbroker.Broker1\">");
        auto end = text.find("</interface>", begin);
        if (begin == std::string::npos || end == std::string::npos) {
            return std::string();
        }
        text = text.substr(begin, end - begin);
        return std::regex_replace(text, std::regex(">\\s+<"), "><");
    };
    int status = -1;
    auto served =
        busctl(bus, std::string("introspect --xml-interface ") + service + " " + object, &status);
    REQUIRE(status == 0);
    auto kept = read_file(built("DBUS_INTERFACE_XML"));
    REQUIRE_FALSE(interface_of(kept).empty());
    CHECK(interface_of(served) == interface_of(kept));
}

TEST_CASE("the daemon outlives its bus and goes on serving the socket") {
    auto bus = std::make_unique<PrivateBus>();
    BusDaemon d(*bus);
    bus.reset();
    CHECK(wait_for([&] {
        return d.daemon.log().find("D-Bus: the system bus went away") != std::string::npos;
    }));
    CHECK(d.daemon.running());
    auto c = Client::connect(d.daemon.socket_path());
    REQUIRE(c);
    CHECK(c->ping());
    CHECK(d.daemon.stop() == 0);
}

TEST_CASE("the daemon joins a bus killed and started again, three times, and holds nothing of "
          "the ones before") {
    PrivateBus bus;
    BusDaemon d(bus);
    REQUIRE(bus_ping(bus.address()));
    const int fds = d.daemon.fd_count();
    for (std::size_t round = 1; round <= 3; ++round) {
        CAPTURE(round);
        const std::size_t failed = log_lines(d.daemon, "to join the system bus failed");
        bus.kill();
        REQUIRE(wait_for(
            [&] { return log_lines(d.daemon, "D-Bus: the system bus went away") == round; }));
        // Without a bus, the socket serves.
        CHECK(d.daemon.running());
        CHECK(socket_ping(d.daemon));
        // The bus stays away for `round` attempts, each further from the
        // last.
        REQUIRE(wait_for([&] {
            return log_lines(d.daemon, "to join the system bus failed") >= failed + round;
        }));
        CHECK(log_lines(d.daemon, "attempt " + std::to_string(round) +
                                      " to join the system bus failed (Connection refused); "
                                      "the next in " +
                                      std::to_string(100 << round) + " ms") >= 1);
        bus.start();
        REQUIRE(wait_for([&] { return bus_ping(bus.address()); }, rejoin_deadline));
        CHECK(log_lines(d.daemon, "D-Bus: org.nsbroker.Broker1 at /org/nsbroker/Broker1 again") ==
              round);
    }
    // One warning for each absence: the attempts that failed in between are
    // logged at debug level.
    CHECK(log_lines(d.daemon, " warning ") == 3);
    // One connection to the bus, as after the first: the ones of the buses
    // that went away are closed.
    INFO(d.daemon.fd_list());
    CHECK(wait_for([&] { return d.daemon.fd_count() == fds; }));
    CHECK(d.daemon.stop() == 0);
}

TEST_CASE("a call in flight when the bus dies is dropped, and the sockets made for it closed") {
    bool back_first = false;
    SUBCASE("answered while the bus is away") {}
    SUBCASE("answered once the daemon is on a new bus") {
        back_first = true;
    }
    PrivateBus bus;
    BusDaemon d(bus);
    TestNetns ns("bus-inflight");
    pid_t worker = 0;
    {
        auto c = connect_bus(bus.address());
        REQUIRE(c);
        REQUIRE(open_udp(c.get(), ns.name()).fds.size() == 1);
        worker = bus_worker_of(c.get(), ns.inode());
    }
    REQUIRE(worker > 0);
    auto local = Client::connect(d.daemon.socket_path());
    REQUIRE(local);
    REQUIRE(local->ping());
    const int fds = d.daemon.fd_count();

    // Stopped, the worker holds the call's job; the caller waits on the bus.
    ::kill(worker, SIGSTOP);
    CallResult pending;
    std::thread caller([&] {
        auto c = connect_bus(bus.address());
        if (!c) {
            pending.error_name = "no connection";
            return;
        }
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message* reply = nullptr;
        int r =
            sd_bus_call_method(c.get(), service, object, interface, "OpenSockets", &error, &reply,
                               "siiia{sv}u", ns.name().c_str(), AF_INET, SOCK_DGRAM, 0, 0, 16U);
        pending = finish(r, error, reply, true);
    });
    CHECK(wait_for([&] { return queued_to(worker) > 0; }));
    bus.kill();
    caller.join();
    CHECK(pending.fds.empty());
    CHECK_FALSE(pending.error_name.empty());
    REQUIRE(wait_for([&] { return log_lines(d.daemon, "D-Bus: the system bus went away") == 1; }));
    CHECK(local->ping());

    // The worker makes the 16 sockets; nobody is there to take them. The
    // answer comes while the bus is away, or once the daemon is on a new bus,
    // where the next caller may have been given the unique name of the last.
    auto rejoin = [&] {
        bus.start();
        REQUIRE(wait_for([&] { return bus_ping(bus.address()); }, rejoin_deadline));
    };
    if (back_first) {
        rejoin();
    }
    ::kill(worker, SIGCONT);
    CHECK(wait_for(
        [&] { return log_lines(d.daemon, "its answer, with 16 sockets, is dropped") == 1; }));
    CHECK(d.daemon.running());
    if (!back_first) {
        rejoin();
    }

    auto c = connect_bus(bus.address());
    REQUIRE(c);
    auto next = open_udp(c.get(), ns.name());
    INFO(next.error_name, ": ", next.error_message);
    REQUIRE(next.fds.size() == 1);
    CHECK(socket_netns_inode(next.fds[0].get()) == ns.inode());
    INFO(d.daemon.fd_list());
    CHECK(wait_for([&] { return d.daemon.fd_count() == fds; }));
    CHECK(d.daemon.stop() == 0);
}

TEST_CASE("a bus that is not there at start is joined once it is") {
    PrivateBus bus;
    bus.kill();
    Daemon d({}, {bus.env()});
    CHECK(wait_for([&] { return log_lines(d, "D-Bus: cannot join the system bus") == 1; }));
    CHECK(socket_ping(d));
    bus.start();
    CHECK(wait_for([&] { return bus_ping(bus.address()); }, rejoin_deadline));
    CHECK(log_lines(d, " warning ") == 1);
    CHECK(d.stop() == 0);
}

TEST_CASE("a bus started again gives a caller's unique name to another, who is asked who it is") {
    PrivateBus bus;
    BusDaemon d(bus);
    // Root, on the first bus, is remembered by its unique name.
    std::string name;
    {
        auto root = connect_bus(bus.address());
        REQUIRE(root);
        const char* unique = nullptr;
        REQUIRE(sd_bus_get_unique_name(root.get(), &unique) >= 0);
        name = unique;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message* reply = nullptr;
        int r = sd_bus_call_method(root.get(), service, object, interface, "ListNamespaces", &error,
                                   &reply, "");
        REQUIRE(finish(r, error, reply, false).error_name.empty());
    }
    bus.kill();
    REQUIRE(wait_for([&] { return log_lines(d.daemon, "D-Bus: the system bus went away") == 1; }));
    bus.start();
    // Waited for in the log: a connection of the test's own would take a name.
    REQUIRE(wait_for(
        [&] {
            return log_lines(d.daemon, "D-Bus: org.nsbroker.Broker1 at /org/nsbroker/Broker1 "
                                       "again") == 1;
        },
        rejoin_deadline));
    // Nobody, given that name on the new bus, is not root: ListNamespaces is
    // root's only.
    const std::string address = bus.address();
    CHECK(as_nobody(Nobody::plain, [&] {
              std::vector<BusPtr> connections;
              for (int i = 0; i < 8; ++i) {
                  auto c = connect_bus(address);
                  const char* unique = nullptr;
                  if (!c || sd_bus_get_unique_name(c.get(), &unique) < 0) {
                      return 10;
                  }
                  if (unique == name) {
                      sd_bus_error error = SD_BUS_ERROR_NULL;
                      sd_bus_message* reply = nullptr;
                      int r = sd_bus_call_method(c.get(), service, object, interface,
                                                 "ListNamespaces", &error, &reply, "");
                      auto list = finish(r, error, reply, false);
                      return list.error_name == "org.nsbroker.Broker1.Error.PermissionDenied" ? 0
                                                                                              : 11;
                  }
                  connections.push_back(std::move(c));
              }
              return 12; // the bus did not give the name again
          }) == 0);
}
