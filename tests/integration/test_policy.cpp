// Authorization as real unprivileged users see it: uid 65534 (nobody), in
// namespaces root made and in namespaces it made itself.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "nsbroker/client.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using namespace nsbroker::test;

namespace {

constexpr uid_t nobody = 65534;

// 0 when the result is the error expected, with its message containing what.
int expect_error(const Result<Socket>& r, ErrorCode code, const std::string& what = {}) {
    if (r) {
        std::fprintf(stderr, "expected an error, got a socket\n");
        return 1;
    }
    if (r.error().code != code || r.error().message.find(what) == std::string::npos) {
        std::fprintf(stderr, "unexpected error: %s\n", r.error().describe().c_str());
        return 2;
    }
    return 0;
}

std::string own_ns_policy(const std::string& grants) {
    return R"({"rules": [{"name": "nobody's own", "users": [65534],
                         "namespaces": {"owned": true},
                         "grant": [)" +
           grants + "]}]}";
}

} // namespace

TEST_CASE("an unprivileged user is refused a socket in a namespace root made") {
    TestNetns ns("root-owned");
    Daemon d;
    std::string name = ns.name();
    CHECK(as_nobody(Nobody::plain, [&] {
              auto c = Client::connect(d.socket_path());
              if (!c || !c->ping()) {
                  return 10;
              }
              auto stats = c->stats();
              if (stats || stats.error().code != ErrorCode::permission_denied) {
                  return 11;
              }
              return expect_error(c->socket(Netns::name(name), spec(AF_INET, SOCK_DGRAM)),
                                  ErrorCode::permission_denied,
                                  "rule \"default\": namespace \"" + name + "\" is not granted");
          }) == 0);
    CHECK(d.log().find("denied socket request") != std::string::npos);
}

TEST_CASE("an unprivileged user is served in a namespace it made, passed by fd or by path") {
    Daemon d;
    CHECK(as_nobody(Nobody::own_netns, [&] {
              auto c = Client::connect(d.socket_path());
              if (!c) {
                  return 10;
              }
              UniqueFd own{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
              auto by_fd = c->socket(Netns::fd(own.get()), spec(AF_INET, SOCK_DGRAM));
              if (!by_fd) {
                  std::fprintf(stderr, "%s\n", by_fd.error().describe().c_str());
                  return 11;
              }
              struct stat mine {};
              ::fstat(own.get(), &mine);
              if (socket_netns_inode(by_fd->fd()) != mine.st_ino) {
                  return 12;
              }
              // Its own pid: resolved through the pidfd of the connection.
              auto by_pid = c->socket(Netns::pid(::getpid()), spec(AF_INET, SOCK_DGRAM));
              if (!by_pid || socket_netns_inode(by_pid->fd()) != mine.st_ino) {
                  return 14;
              }
              // The library opens the path itself: the daemon never sees it.
              auto by_path =
                  c->socket(Netns::path("/proc/self/ns/net"), spec(AF_INET, SOCK_STREAM));
              if (!by_path || socket_netns_inode(by_path->fd()) != mine.st_ino) {
                  return 13;
              }
              return 0;
          }) == 0);
    // The same from the command line, made by setpriv and unshare.
    int status = -1;
    auto out =
        run_output("setpriv --reuid 65534 --regid 65534 --clear-groups unshare -Urn " +
                       built_for_everyone("NSBROKER_CLI") + " --broker " + d.socket_path() +
                       " exec --netns /proc/self/ns/net --socket udp:127.0.0.1:0 -- true 2>&1",
                   &status);
    INFO(out);
    CHECK(status == 0);
}

TEST_CASE("raw sockets and low ports need a grant; with one they are served") {
    Daemon d;
    auto attempt = [&](bool expect_granted) {
        return as_nobody(Nobody::own_netns, [&] {
            auto c = Client::connect(d.socket_path());
            UniqueFd own{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
            auto raw = c->socket(Netns::fd(own.get()), spec(AF_INET, SOCK_RAW, IPPROTO_ICMP));
            SocketSpec http = spec(AF_INET, SOCK_STREAM);
            http.bind = "127.0.0.1:80";
            auto low = c->socket(Netns::fd(own.get()), http);
            if (expect_granted) {
                return raw && low ? 0 : 20;
            }
            return expect_error(raw, ErrorCode::permission_denied, "raw sockets not granted") +
                   expect_error(low, ErrorCode::permission_denied,
                                "port 80 is below the namespace's ip_unprivileged_port_start "
                                "(1024) and low_ports is not granted");
        });
    };
    CHECK(attempt(false) == 0);
    CHECK(d.log().find("by its worker: rule \"default\": sockets[0]: port 80") !=
          std::string::npos);
    REQUIRE(d.write_policy(own_ns_policy(R"("raw", "low_ports")")));
    CHECK(attempt(true) == 0);
}

// 0 when writing value to the calling process's namespace's sysctl worked.
int set_port_start(const char* value) {
    UniqueFd f{::open("/proc/sys/net/ipv4/ip_unprivileged_port_start", O_WRONLY | O_CLOEXEC)};
    auto n = static_cast<ssize_t>(std::strlen(value));
    return f && ::write(f.get(), value, n) == n ? 0 : 30;
}

TEST_CASE("which ports are low is the namespace's ip_unprivileged_port_start, read live") {
    Daemon d;
    CHECK(as_nobody(Nobody::own_netns, [&] {
              auto c = Client::connect(d.socket_path());
              UniqueFd own{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
              SocketSpec server = spec(AF_INET, SOCK_STREAM);
              // In a namespace whose owner made every port unprivileged, port
              // 80 needs no grant.
              server.bind = "127.0.0.1:80";
              if (int r = set_port_start("0")) {
                  return r;
              }
              auto http = c->socket(Netns::fd(own.get()), server);
              if (!http) {
                  std::fprintf(stderr, "%s\n", http.error().describe().c_str());
                  return 31;
              }
              // The same worker sees the sysctl change: 1500 is now privileged.
              if (int r = set_port_start("2000")) {
                  return r;
              }
              server.bind = "127.0.0.1:1500";
              return expect_error(c->socket(Netns::fd(own.get()), server),
                                  ErrorCode::permission_denied,
                                  "port 1500 is below the namespace's "
                                  "ip_unprivileged_port_start (2000)");
          }) == 0);
}

TEST_CASE("a broken policy on SIGHUP is refused and the one in force stays") {
    Daemon d;
    REQUIRE(d.write_policy(own_ns_policy(R"("raw")")));
    CHECK_FALSE(d.write_policy(
        R"({"rules": [{"users": ["no-such-user-here"], "namespaces": {"any": true}}]})"));
    CHECK(d.log().find("rules[0].users[0]: no user named \"no-such-user-here\"") !=
          std::string::npos);
    CHECK(as_nobody(Nobody::own_netns, [&] {
              auto c = Client::connect(d.socket_path());
              UniqueFd own{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
              return c->socket(Netns::fd(own.get()), spec(AF_INET, SOCK_RAW, IPPROTO_ICMP)) ? 0 : 1;
          }) == 0);
}

TEST_CASE("another user's process, bad names and files that are not network namespaces") {
    Daemon d;
    pid_t root_process = ::getpid();
    CHECK(as_nobody(Nobody::plain, [&] {
              auto c = Client::connect(d.socket_path());
              int failures = 0;
              failures +=
                  expect_error(c->socket(Netns::pid(root_process), spec(AF_INET, SOCK_DGRAM)),
                               ErrorCode::permission_denied);
              failures += expect_error(c->socket(Netns::name("../x"), spec(AF_INET, SOCK_DGRAM)),
                                       ErrorCode::invalid_request);
              for (const char* path : {"/etc/passwd", "/proc/self/ns/mnt", "/proc/self/ns/pid"}) {
                  UniqueFd fd{::open(path, O_RDONLY | O_CLOEXEC)};
                  failures +=
                      expect_error(c->socket(Netns::fd(fd.get()), spec(AF_INET, SOCK_DGRAM)),
                                   ErrorCode::not_a_netns);
              }
              return failures;
          }) == 0);
}

TEST_CASE("a netlink socket made for an agent with CAP_NET_ADMIN works only with the grant") {
    // rtnetlink wants CAP_NET_ADMIN of both the sender and the socket's
    // creator: an agent that has it, but cannot setns, needs a socket made
    // with it, which only the net_admin grant gives.
    TestNetns ns("admin");
    Daemon d;
    auto attempt = [&] {
        return as_nobody(Nobody::net_admin, [&] {
            auto c = Client::connect(d.socket_path());
            auto route =
                c->socket(Netns::name(ns.name()), spec(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE));
            if (!route) {
                std::fprintf(stderr, "%s\n", route.error().describe().c_str());
                return 1000;
            }
            return -take_lo_down(route->fd());
        });
    };
    auto lo_up = [&] {
        return run_output("ip -n " + ns.name() + " -o link show lo").find("LOOPBACK,UP") !=
               std::string::npos;
    };
    auto grant = [&](const std::string& grants) {
        return d.write_policy(R"({"rules": [{"name": "agent", "users": [65534],
                                 "namespaces": {"names": [")" +
                              ns.name() + R"("]}, "grant": [)" + grants + "]}]}");
    };
    REQUIRE(lo_up());
    REQUIRE(grant(""));
    CHECK(attempt() == EPERM);
    CHECK(lo_up());
    REQUIRE(grant(R"("net_admin")"));
    CHECK(attempt() == 0);
    CHECK_FALSE(lo_up());
}

TEST_CASE("SIGHUP that takes a grant away changes no answer already judged: a request in "
          "flight gets its socket, and the next is refused") {
    TestNetns ns("reload");
    Daemon d;
    auto root = Client::connect(d.socket_path());
    REQUIRE(root);
    REQUIRE(d.write_policy(R"({"rules": [{"name": "agent", "users": [65534],
                               "namespaces": {"names": [")" +
                           ns.name() + R"("]}, "grant": []}]})"));
    const std::string name = ns.name();
    // SIOCGSKNS is for those with CAP_NET_ADMIN there; SO_NETNS_COOKIE tells
    // anyone which namespace a socket lives in.
    auto cookie_of = [](int fd) {
        std::uint64_t cookie = 0;
        socklen_t length = sizeof cookie;
        ::getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &length);
        return cookie;
    };
    auto probe = root->socket(Netns::name(name), spec(AF_INET, SOCK_DGRAM));
    REQUIRE(probe);
    const std::uint64_t cookie = cookie_of(probe->fd());
    REQUIRE(cookie != 0);
    // The child (nobody) and the test take turns over two pipes.
    int to_child[2];
    int to_test[2];
    REQUIRE(::pipe2(to_child, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(to_test, O_CLOEXEC) == 0);
    UniqueFd child_reads{to_child[0]}, test_writes{to_child[1]};
    UniqueFd test_reads{to_test[0]}, child_writes{to_test[1]};
    auto say = [](int fd) {
        return ::write(fd, "x", 1) == 1;
    };
    auto hear = [](int fd) {
        char c = 0;
        return ::read(fd, &c, 1) == 1;
    };
    pid_t child = start_as_user(nobody, Nobody::plain, [&] {
        auto c = Client::connect(d.socket_path(), {.direct_channels = false});
        const auto netns = Netns::name(name);
        if (!c || !c->socket(netns, spec(AF_INET, SOCK_DGRAM))) {
            return 10;
        }
        // Judged and sent to the worker, which the test has stopped.
        if (!say(child_writes.get()) || !hear(child_reads.get())) {
            return 11;
        }
        auto id = c->submit_sockets(netns, {spec(AF_INET, SOCK_DGRAM)});
        if (!id || !say(child_writes.get()) || !hear(child_reads.get())) {
            return 12;
        }
        // The policy that refuses is in force, and the worker continued.
        std::optional<Completion> done;
        while (!done) {
            pollfd p{c->event_fd(), POLLIN, 0};
            if (::poll(&p, 1, 30'000) != 1) {
                return 13;
            }
            for (auto& completion : c->completions()) {
                done = std::move(completion);
            }
        }
        if (!done->sockets || cookie_of(done->sockets->front().fd()) != cookie) {
            std::fprintf(stderr, "in flight: %s\n",
                         done->sockets ? "wrong namespace"
                                       : done->sockets.error().describe().c_str());
            return 14;
        }
        return expect_error(c->socket(netns, spec(AF_INET, SOCK_DGRAM)),
                            ErrorCode::permission_denied);
    });
    REQUIRE(hear(test_reads.get()));
    auto list = root->namespaces();
    REQUIRE(list);
    pid_t worker = 0;
    for (const auto& n : list->namespaces) {
        worker = n.ino == ns.inode() ? n.worker_pid : worker;
    }
    REQUIRE(worker > 0);
    REQUIRE(::kill(worker, SIGSTOP) == 0);
    REQUIRE(say(test_writes.get()));
    REQUIRE(hear(test_reads.get()));
    const bool queued = wait_for([&] { return queued_to(worker) > 0; });
    const bool refused = d.write_policy(R"({"rules": []})");
    ::kill(worker, SIGCONT);
    REQUIRE(say(test_writes.get()));
    CHECK(queued);
    CHECK(refused);
    CHECK(wait_for_child(child) == 0);
}
