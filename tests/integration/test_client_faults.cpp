// The client library when something breaks: a daemon or a worker that stops
// answering, a daemon killed and started again under calling threads, and a
// caller at its own descriptor limit.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "nsbroker/client.hpp"
#include "support/clients.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using namespace nsbroker::test;
using namespace std::chrono_literals;

namespace {

// Descriptors that fill every free slot below the RLIMIT_NOFILE in force:
// then no new one fits until some are let go.
std::vector<UniqueFd> fill_descriptor_table() {
    std::vector<UniqueFd> fillers;
    for (;;) {
        UniqueFd fd{::fcntl(0, F_DUPFD_CLOEXEC, 0)};
        if (!fd) {
            return fillers;
        }
        fillers.push_back(std::move(fd));
    }
}

// A process stopped with SIGSTOP, continued when this goes, whatever happened.
class Stopped {
  public:
    explicit Stopped(pid_t pid) : pid_(pid) { REQUIRE(::kill(pid_, SIGSTOP) == 0); }
    ~Stopped() { resume(); }
    Stopped(const Stopped&) = delete;
    Stopped& operator=(const Stopped&) = delete;
    void resume() const { ::kill(pid_, SIGCONT); }

  private:
    pid_t pid_;
};

SocketSpec udp(unsigned count = 1) {
    SocketSpec s = spec(AF_INET, SOCK_DGRAM);
    s.count = count;
    return s;
}

} // namespace

TEST_CASE("a call to a stopped nsbrokerd fails with timeout at its deadline, and the Client "
          "serves again once it is continued") {
    TestNetns ns("stopped");
    Daemon d;
    auto c = connect(d, {.timeout = 400ms, .direct_channels = false});
    const auto netns = Netns::name(ns.name());
    REQUIRE(c.ping());
    const std::size_t fds_before = open_fd_count();
    Stopped stopped(d.pid());

    const auto start = std::chrono::steady_clock::now();
    auto s = c.socket(netns, udp());
    const auto took = std::chrono::steady_clock::now() - start;
    REQUIRE_FALSE(s);
    CHECK_MESSAGE(s.error().code == ErrorCode::timeout, s.error().describe());
    CHECK(s.error().sys_errno == ETIMEDOUT);
    CHECK(s.error().message.find("nsbrokerd did not answer within 400 ms") != std::string::npos);
    CHECK(took >= 400ms);
    CHECK(took < 10s); // it did not wait for the daemon
    auto pong = c.ping();
    REQUIRE_FALSE(pong);
    CHECK(pong.error().code == ErrorCode::timeout);

    stopped.resume();
    // The answers that come after their deadline are dropped, sockets and all.
    REQUIRE(wait_for([&] { return c.ping().ok(); }));
    {
        auto again = c.socket(netns, udp());
        REQUIRE_MESSAGE(again, again.error().describe());
        CHECK(socket_netns_inode(again->fd()) == ns.inode());
    }
    CHECK(wait_for([&] {
        (void)c.ping();
        return open_fd_count() == fds_before;
    }));
}

TEST_CASE("a request submitted from an event loop to a stopped nsbrokerd completes with timeout "
          "at its deadline") {
    TestNetns ns("stopped-loop");
    Daemon d;
    auto c = connect(d, {.timeout = 300ms, .direct_channels = false});
    REQUIRE(c.ping());
    Stopped stopped(d.pid());
    auto id = c.submit_sockets(Netns::name(ns.name()), {udp()});
    REQUIRE(id);
    std::optional<Completion> done;
    const bool completed = wait_for([&] {
        pollfd p{c.event_fd(), POLLIN, 0};
        if (::poll(&p, 1, 100) == 1) {
            for (auto& completion : c.completions()) {
                if (completion.id == *id) {
                    done = std::move(completion);
                }
            }
        }
        return done.has_value();
    });
    REQUIRE(completed);
    REQUIRE_FALSE(done->sockets);
    CHECK_MESSAGE(done->sockets.error().code == ErrorCode::timeout,
                  done->sockets.error().describe());
    stopped.resume();
    CHECK(wait_for([&] { return c.ping().ok(); }));
}

TEST_CASE("a worker that stops answering on its channel: the call times out, the channel is "
          "given up, and nsbrokerd replaces the worker") {
    TestNetns ns("hung");
    Daemon d({"--worker-timeout", "1"});
    auto c = connect(d, {.timeout = 500ms});
    const auto netns = Netns::name(ns.name());
    REQUIRE(c.socket(netns, udp()));
    REQUIRE(c.direct_channels() == 1);
    const pid_t worker = worker_of(c, ns.inode());
    REQUIRE(worker > 0);

    Stopped stopped(worker);
    auto s = c.socket(netns, udp());
    REQUIRE_FALSE(s);
    CHECK_MESSAGE(s.error().code == ErrorCode::timeout, s.error().describe());
    CHECK(s.error().message.find("the namespace's worker did not answer") != std::string::npos);
    CHECK(c.direct_channels() == 0);

    // Through nsbrokerd, whose job deadline (--worker-timeout) ends the
    // stopped worker; a new one serves.
    std::optional<Socket> served;
    REQUIRE(wait_for(
        [&] {
            auto r = c.socket(netns, udp());
            if (r) {
                served = std::move(*r);
            }
            return r.ok();
        },
        30s));
    CHECK(socket_netns_inode(served->fd()) == ns.inode());
    CHECK(wait_for([&] { return !process_alive(worker); }));
    CHECK(worker_of(c, ns.inode()) != worker);
}

TEST_CASE("nsbrokerd killed and started again under 16 calling threads: calls in flight fail "
          "with io, and every thread goes on through a new connection") {
    TestNetns ns("restart");
    Daemon d;
    bool channels = false;
    SUBCASE("through nsbrokerd") {
        channels = false;
    }
    SUBCASE("on direct channels") {
        channels = true;
    }
    auto c = connect(d, {.direct_channels = channels});
    const auto netns = Netns::name(ns.name());
    const ino_t inode = ns.inode();

    constexpr int threads = 16;
    std::atomic<bool> stop{false};
    std::atomic<bool> restarted{false};
    std::atomic<int> wrong_namespace{0};
    std::atomic<int> served{0};
    std::array<std::atomic<int>, threads> served_after{};
    std::mutex errors_mutex;
    std::map<std::string, int> errors;
    std::vector<std::thread> callers;
    for (int i = 0; i < threads; ++i) {
        callers.emplace_back([&, i] {
            while (!stop) {
                const bool after = restarted;
                auto s = c.socket(netns, udp());
                if (!s) {
                    std::lock_guard lock(errors_mutex);
                    ++errors[std::string(to_string(s.error().code))];
                    continue;
                }
                if (socket_netns_inode(s->fd()) != inode) {
                    ++wrong_namespace;
                }
                ++served;
                if (after) {
                    ++served_after[static_cast<std::size_t>(i)];
                }
            }
        });
    }
    const bool warmed = wait_for([&] { return served > 500; });
    const pid_t first = d.pid();
    d.restart(SIGKILL);
    restarted = true;
    const bool recovered = wait_for(
        [&] {
            return std::all_of(served_after.begin(), served_after.end(),
                               [](const auto& n) { return n >= 5; });
        },
        60s);
    stop = true;
    for (auto& t : callers) {
        t.join();
    }
    CHECK(warmed);
    CHECK(d.pid() != first);
    CHECK(recovered);
    CHECK(wrong_namespace == 0);
    // What failed failed clearly: the connection or the channel's worker went away.
    for (const auto& [code, n] : errors) {
        INFO(code << ": " << n);
        CHECK((code == "io" || code == "worker_failed"));
    }
    CHECK(c.ping());
}

TEST_CASE("a caller at its descriptor limit gets a clear error for the sockets it could not "
          "receive, leaks none, and its connection goes on") {
    TestNetns ns("emfile");
    Daemon d;
    bool channels = false;
    SUBCASE("through nsbrokerd") {
        channels = false;
    }
    SUBCASE("on a direct channel") {
        channels = true;
    }
    const std::string path = d.socket_path();
    const std::string name = ns.name();
    const ino_t inode = ns.inode();
    // In a child, so that the test keeps its own limit. Each exit status
    // names the check that failed.
    int status = in_child([&]() -> int {
        auto c = Client::connect(path, {.direct_channels = channels});
        if (!c) {
            return 10;
        }
        const auto netns = Netns::name(name);
        if (!c->socket(netns, udp())) {
            return 11;
        }
        if (c->direct_channels() != (channels ? 1U : 0U)) {
            return 12;
        }
        const std::size_t fds_before = open_fd_count();
        rlimit saved{};
        ::getrlimit(RLIMIT_NOFILE, &saved);
        rlimit lowered{fds_before + 16, saved.rlim_max};
        if (::setrlimit(RLIMIT_NOFILE, &lowered) != 0) {
            return 13;
        }
        // No room for one more.
        auto fillers = fill_descriptor_table();
        auto none = c->socket(netns, udp());
        if (none || none.error().code != ErrorCode::limit || none.error().sys_errno != EMFILE ||
            none.error().message.find("descriptor limit (RLIMIT_NOFILE") == std::string::npos) {
            return 14;
        }
        // Room for two of eight: those two are closed again.
        fillers.resize(fillers.size() - 2);
        auto some = c->sockets(netns, {udp(8)});
        if (some || some.error().code != ErrorCode::limit) {
            return 15;
        }
        fillers.clear();
        if (open_fd_count() != fds_before) {
            return 16;
        }
        if (::setrlimit(RLIMIT_NOFILE, &saved) != 0) {
            return 17;
        }
        auto after = c->sockets(netns, {udp(8)});
        if (!after || after->size() != 8 || socket_netns_inode(after->front().fd()) != inode) {
            return 18;
        }
        if (c->direct_channels() != (channels ? 1U : 0U)) {
            return 19;
        }
        after->clear();
        return open_fd_count() == fds_before ? 0 : 20;
    });
    CHECK(status == 0);
    CHECK(d.running());
}

TEST_CASE("nsbrokerd at its descriptor limit refuses what it cannot receive, keeps its healthy "
          "workers and its connections, and serves again once it has room") {
    TestNetns ns("full");
    Daemon d;
    auto c = connect(d, {.direct_channels = false});
    const auto netns = Netns::name(ns.name());
    REQUIRE(c.socket(netns, udp()));
    const pid_t worker = worker_of(c, ns.inode());
    REQUIRE(worker > 0);
    const int resting = d.fd_count();

    // A limit at the highest descriptor the daemon holds: at rest its table
    // has no gaps, so no new descriptor fits.
    int highest = 0;
    std::istringstream list(d.fd_list());
    for (std::string line; std::getline(list, line);) {
        highest = std::max(highest, std::stoi(line));
    }
    INFO("descriptors:\n" << d.fd_list());
    REQUIRE(d.fd_count() == highest + 1);
    rlimit saved{};
    REQUIRE(::prlimit(d.pid(), RLIMIT_NOFILE, nullptr, &saved) == 0);
    const rlimit lowered{static_cast<rlim_t>(highest) + 1, saved.rlim_max};
    REQUIRE(::prlimit(d.pid(), RLIMIT_NOFILE, &lowered, nullptr) == 0);

    // A worker's sockets that nsbrokerd cannot receive.
    auto lost = c.sockets(netns, {udp(8)});
    REQUIRE_FALSE(lost);
    CHECK_MESSAGE(lost.error().code == ErrorCode::limit, lost.error().describe());
    CHECK(lost.error().sys_errno == EMFILE);
    CHECK(lost.error().message.find("nsbrokerd is at its descriptor limit") != std::string::npos);
    // A request's own descriptor that nsbrokerd cannot receive.
    auto by_path = c.socket(Netns::path(ns.path()), udp());
    REQUIRE_FALSE(by_path);
    CHECK_MESSAGE(by_path.error().code == ErrorCode::limit, by_path.error().describe());
    CHECK(c.ping());
    CHECK(process_alive(worker));

    REQUIRE(::prlimit(d.pid(), RLIMIT_NOFILE, &saved, nullptr) == 0);
    auto served = c.sockets(netns, {udp(8)});
    REQUIRE_MESSAGE(served, served.error().describe());
    CHECK(socket_netns_inode(served->front().fd()) == ns.inode());
    CHECK(worker_of(c, ns.inode()) == worker);
    CHECK(d.running());
    CHECK(d.fd_count() == resting);
}
