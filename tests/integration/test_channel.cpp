// Direct channels to workers, against the real daemon: what they serve, whom
// they serve it as, and how a revoked, closed or dead channel sends the
// library back to nsbrokerd. Every socket is checked with SIOCGSKNS.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <thread>

#include "nsbroker/client.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "support/clients.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using namespace nsbroker::test;

namespace {

constexpr uid_t nobody = 65534;
const ClientOptions through_daemon{.direct_channels = false};

// Whether r is a socket in the namespace with inode ino.
bool in_netns(const Result<Socket>& r, ino_t ino) {
    if (!r) {
        std::fprintf(stderr, "expected a socket: %s\n", r.error().describe().c_str());
        return false;
    }
    return socket_netns_inode(r->fd()) == ino;
}

// Sends SIGCONT to a process stopped for a test, however the test ends.
class Stopped {
  public:
    explicit Stopped(pid_t pid) : pid_(pid) { ::kill(pid_, SIGSTOP); }
    ~Stopped() { ::kill(pid_, SIGCONT); }
    Stopped(const Stopped&) = delete;
    Stopped& operator=(const Stopped&) = delete;

  private:
    pid_t pid_;
};

// nobody, in a process of its own, in lockstep with the test: each side
// says when it is done with a step, handing over the sockets it made, and
// waits for the other, with a generous deadline. SIOCGSKNS needs
// CAP_NET_ADMIN, so the test checks nobody's sockets.
class NobodyInStep {
  public:
    explicit NobodyInStep(const std::function<int(NobodyInStep&)>& body) {
        int pair[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0);
        test_end_ = UniqueFd{pair[0]};
        mine_ = UniqueFd{pair[1]};
        child_ = start_as_user(nobody, Nobody::plain, [&] {
            test_end_.reset();
            return body(*this);
        });
        // The child's end closes with it, so the test never waits on the dead.
        mine_ = std::move(test_end_);
    }
    ~NobodyInStep() {
        mine_.reset();
        if (child_ > 0) {
            ::kill(child_, SIGKILL);
            wait_for_child(child_);
        }
    }
    NobodyInStep(const NobodyInStep&) = delete;
    NobodyInStep& operator=(const NobodyInStep&) = delete;

    // Either side: this step is done.
    bool done(std::vector<int> fds = {}) {
        return proto::send_message(mine_.get(), "done", fds) == proto::SendStatus::sent;
    }
    // Either side: the other's next step, with what it handed over.
    std::optional<std::vector<UniqueFd>> next() {
        pollfd p{mine_.get(), POLLIN, 0};
        if (::poll(&p, 1, 30'000) != 1) {
            return std::nullopt;
        }
        auto r = proto::receive_message(mine_.get());
        if (r.status != proto::ReceiveStatus::message) {
            return std::nullopt;
        }
        return std::move(r.message.fds);
    }
    // The test: what the child's body returned.
    int result() {
        int status = wait_for_child(child_);
        child_ = -1;
        return status;
    }

  private:
    UniqueFd test_end_;
    UniqueFd mine_;
    pid_t child_ = -1;
};

// The namespace inode of the one socket handed over, or 0.
ino_t inode_of(const std::optional<std::vector<UniqueFd>>& handed) {
    return handed && handed->size() == 1 ? socket_netns_inode((*handed)[0].get()) : 0;
}

// A raw request on fd and its reply, with the descriptors that came with it.
struct RawReply {
    proto::ReceiveStatus status = proto::ReceiveStatus::closed;
    std::string text;
    std::vector<UniqueFd> fds;
};

RawReply raw_call(int fd, const std::string& request, std::span<const int> fds_to_send = {}) {
    RawReply out;
    if (proto::send_message(fd, request, fds_to_send) != proto::SendStatus::sent) {
        return out;
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 30'000) != 1) {
        out.status = proto::ReceiveStatus::would_block;
        return out;
    }
    auto received = proto::receive_message(fd);
    out.status = received.status;
    out.text = received.message.data;
    out.fds = std::move(received.message.fds);
    return out;
}

std::string socket_request(const std::string& netns_name, const std::string& type, bool channel) {
    std::string netns = netns_name.empty() ? "" : R"("netns": {"name": ")" + netns_name + R"("}, )";
    return R"({"id": 1, "op": "socket", )" + netns + R"("sockets": [{"family": "inet", "type": ")" +
           type + R"("}])" + (channel ? R"(, "channel": true)" : "") + "}";
}

// The direct channel nsbrokerd grants on raw with a socket of the
// namespace named name.
UniqueFd granted_channel(int raw, const std::string& name) {
    auto granted = raw_call(raw, socket_request(name, "dgram", true));
    REQUIRE_MESSAGE(granted.fds.size() == 2, granted.text);
    return std::move(granted.fds.back());
}

// A second /run/netns name for a namespace, as a bind mount of its first,
// removed with the test.
class SecondName {
  public:
    SecondName(const TestNetns& ns, const std::string& tag) : path_(ns.path() + "-" + tag) {
        { std::ofstream touch(path_); }
        REQUIRE(::mount(ns.path().c_str(), path_.c_str(), nullptr, MS_BIND, nullptr) == 0);
    }
    ~SecondName() {
        ::umount2(path_.c_str(), MNT_DETACH);
        ::unlink(path_.c_str());
    }
    SecondName(const SecondName&) = delete;
    SecondName& operator=(const SecondName&) = delete;
    [[nodiscard]] std::string name() const { return path_.substr(path_.rfind('/') + 1); }

  private:
    std::string path_;
};

std::string nobody_policy(const std::string& netns_name, const std::string& types) {
    return R"({"rules": [{"name": "nobody in )" + netns_name + R"(", "users": [65534],
                         "namespaces": {"names": [")" +
           netns_name + R"("]}, "types": [)" + types + "]}]}";
}

// The 16 channels a uid may hold, asked for on one connection to the
// namespace called name; fewer when nsbrokerd grants fewer.
std::vector<UniqueFd> take_every_channel(const Daemon& d, const std::string& name) {
    UniqueFd raw = connect_raw(d);
    std::vector<UniqueFd> channels;
    for (int i = 0; i < 16; ++i) {
        auto granted = raw_call(raw.get(), socket_request(name, "dgram", true));
        if (granted.fds.size() != 2) {
            break;
        }
        channels.push_back(std::move(granted.fds.back()));
    }
    return channels;
}

// Whether all 16 of a uid's channel places come back, asking on one new
// connection until they do.
bool every_place_back(const Daemon& d, const std::string& name) {
    UniqueFd raw = connect_raw(d);
    std::vector<UniqueFd> channels;
    return wait_for([&] {
        auto granted = raw_call(raw.get(), socket_request(name, "dgram", true));
        if (granted.fds.size() == 2) {
            channels.push_back(std::move(granted.fds.back()));
        }
        return channels.size() == 16;
    });
}

} // namespace

TEST_CASE("a direct channel serves requests while nsbrokerd itself is stopped") {
    TestNetns ns("served");
    Daemon d;
    auto c = connect(d);
    REQUIRE(in_netns(c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)), ns.inode()));
    REQUIRE(c.direct_channels() == 1);
    {
        Stopped daemon(d.pid());
        for (int i = 0; i < 50; ++i) {
            int type = i % 2 ? SOCK_DGRAM : SOCK_STREAM;
            auto s = c.socket(Netns::name(ns.name()), spec(AF_INET, type));
            REQUIRE(in_netns(s, ns.inode()));
            CHECK(socket_option(s->fd(), SO_TYPE) == type);
        }
        auto many = spec(AF_INET6, SOCK_DGRAM);
        many.count = 253;
        auto batch = c.sockets(Netns::name(ns.name()), {many});
        REQUIRE_MESSAGE(batch, batch.error().describe());
        REQUIRE(batch->size() == 253);
        for (const auto& s : *batch) {
            CHECK(socket_netns_inode(s.fd()) == ns.inode());
        }
    }
    // What the channel served is the daemon's to count.
    CHECK(wait_for([&] {
        auto stats = c.stats();
        return stats && stats->sockets == 1 + 50 + 253;
    }));
}

TEST_CASE("kill -9 of a worker: the library goes back to nsbrokerd, and the next request is "
          "served") {
    TestNetns ns("killed");
    Daemon d;
    auto c = connect(d);
    REQUIRE(in_netns(c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)), ns.inode()));
    pid_t worker = worker_of(c, ns.inode());
    REQUIRE(worker > 0);
    ::kill(worker, SIGKILL);
    // Once nsbrokerd has seen the worker go (it no longer lists it), the
    // channel is closed: a request sent before that is in flight.
    REQUIRE(wait_for([&] { return worker_of(c, ns.inode()) != worker; }));
    CHECK(in_netns(c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)), ns.inode()));
    pid_t next = worker_of(c, ns.inode());
    CHECK(next > 0);
    CHECK(next != worker);
    CHECK(c.direct_channels() == 1);
    CHECK(in_netns(c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_STREAM)), ns.inode()));
}

TEST_CASE("a request in flight when its worker dies gets a clear error; the next is served") {
    TestNetns ns("in-flight");
    Daemon d;
    auto c = connect(d);
    REQUIRE(in_netns(c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)), ns.inode()));
    pid_t worker = worker_of(c, ns.inode());
    REQUIRE(worker > 0);
    Result<Socket> lost = make_error(ErrorCode::internal, "not run");
    {
        Stopped held(worker);
        std::thread caller(
            [&] { lost = c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)); });
        // The request waits in the stopped worker's channel.
        CHECK(wait_for([&] { return queued_to(worker) > 0; }));
        ::kill(worker, SIGKILL);
        caller.join();
    }
    REQUIRE_FALSE(lost);
    CHECK(lost.error().code == ErrorCode::worker_failed);
    CHECK(lost.error().message.find("may be sent again") != std::string::npos);
    CHECK(in_netns(c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)), ns.inode()));
}

TEST_CASE("threads sharing a Client: one that finds the channel busy gets a channel of its own") {
    TestNetns ns("lanes");
    Daemon d;
    std::size_t per_namespace = 4;
    SUBCASE("a second channel to the namespace") {}
    SUBCASE("channels_per_namespace = 1: the threads share the one channel") {
        per_namespace = 1;
    }
    auto c = connect(d, ClientOptions{.channels_per_namespace = per_namespace});
    auto udp = spec(AF_INET, SOCK_DGRAM);
    REQUIRE(in_netns(c.socket(Netns::name(ns.name()), udp), ns.inode()));
    REQUIRE(c.direct_channels() == 1);
    pid_t worker = worker_of(c, ns.inode());
    REQUIRE(worker > 0);
    Result<Socket> first = make_error(ErrorCode::internal, "not run");
    Result<Socket> second = make_error(ErrorCode::internal, "not run");
    std::thread a;
    std::thread b;
    {
        // With the worker stopped, the first call holds the channel until
        // the second is on its way too.
        Stopped held(worker);
        a = std::thread([&] { first = c.socket(Netns::name(ns.name()), udp); });
        CHECK(wait_for([&] { return queued_to(worker) > 0; }));
        long queued = queued_to(worker);
        b = std::thread([&] { second = c.socket(Netns::name(ns.name()), udp); });
        CHECK(wait_for([&] { return queued_to(worker) > queued; }));
    }
    a.join();
    b.join();
    CHECK(in_netns(first, ns.inode()));
    CHECK(in_netns(second, ns.inode()));
    CHECK(c.direct_channels() == std::min<std::size_t>(2, per_namespace));
    // Every channel serves, alone or together.
    std::vector<std::thread> threads;
    std::atomic<int> right{0};
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 50; ++i) {
                auto s = c.socket(Netns::name(ns.name()), udp);
                if (s && socket_netns_inode(s->fd()) == ns.inode()) {
                    ++right;
                }
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    CHECK(right == 8 * 50);
    CHECK(c.direct_channels() <= per_namespace);
    CHECK(c.direct_channels() >= 1);
}

TEST_CASE("SIGHUP revokes direct channels: the next request is judged by the new policy") {
    TestNetns ns("reload");
    Daemon d;
    REQUIRE(d.write_policy(nobody_policy(ns.name(), R"("dgram")")));
    std::string name = ns.name();
    NobodyInStep child([&](NobodyInStep& step) {
        auto c = Client::connect(d.socket_path());
        if (!c) {
            return 10;
        }
        auto dgram = c->socket(Netns::name(name), spec(AF_INET, SOCK_DGRAM));
        if (!dgram || c->direct_channels() != 1 || !step.done({dgram->fd()}) || !step.next()) {
            return 11;
        }
        // The policy now allows stream sockets only.
        auto refused = c->socket(Netns::name(name), spec(AF_INET, SOCK_DGRAM));
        if (refused || refused.error().code != ErrorCode::permission_denied) {
            return 12;
        }
        auto stream = c->socket(Netns::name(name), spec(AF_INET, SOCK_STREAM));
        if (!stream || c->direct_channels() != 1 || !step.done({stream->fd()})) {
            return 13;
        }
        return 0;
    });
    CHECK(inode_of(child.next()) == ns.inode());
    CHECK(d.write_policy(nobody_policy(ns.name(), R"("stream")")));
    CHECK(child.done());
    CHECK(inode_of(child.next()) == ns.inode());
    CHECK(child.result() == 0);
}

TEST_CASE("ip netns delete revokes the channels of its worker; another name is served again") {
    TestNetns ns("deleted");
    SecondName other(ns, "other");
    Daemon d;
    auto c = connect(d);
    const ino_t ino = ns.inode();
    REQUIRE(in_netns(c.socket(Netns::name(other.name()), spec(AF_INET, SOCK_DGRAM)), ino));
    // A channel held raw, as a client that kept it would hold it.
    UniqueFd raw = connect_raw(d);
    auto granted = raw_call(raw.get(), socket_request(ns.name(), "dgram", true));
    REQUIRE(granted.status == proto::ReceiveStatus::message);
    REQUIRE_MESSAGE(granted.text.find(R"("channel":{)") != std::string::npos, granted.text);
    REQUIRE(granted.fds.size() == 2);
    UniqueFd channel = std::move(granted.fds.back());
    pid_t worker = worker_of(c, ino);

    ns.remove();
    // Until nsbrokerd sees the deletion the channel may still serve; then it
    // answers `unavailable`, unserved, or is closed.
    CHECK(wait_for([&] {
        auto r = raw_call(channel.get(), socket_request("", "dgram", false));
        return r.status != proto::ReceiveStatus::message ||
               r.text.find(R"("code":"unavailable")") != std::string::npos;
    }));
    auto gone = c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM));
    REQUIRE_FALSE(gone);
    CHECK(gone.error().code == ErrorCode::not_found);
    // The worker still has the other name, and its channel came back.
    CHECK(in_netns(c.socket(Netns::name(other.name()), spec(AF_INET, SOCK_DGRAM)), ino));
    CHECK(worker_of(c, ino) == worker);
    CHECK(c.direct_channels() == 1);
}

TEST_CASE("a channel passed to another process serves only its original caller's rule") {
    TestNetns ns("passed-on");
    Daemon d;
    REQUIRE(d.write_policy(nobody_policy(ns.name(), R"("dgram")")));
    int pair[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0);
    UniqueFd test_end{pair[0]};
    UniqueFd child_end{pair[1]};
    std::string name = ns.name();
    // nobody asks for a channel, and hands it on with what nsbrokerd itself
    // answers it for a stream socket.
    CHECK(as_nobody(Nobody::plain, [&] {
              UniqueFd raw = connect_raw(d);
              auto granted = raw_call(raw.get(), socket_request(name, "dgram", true));
              if (granted.fds.size() != 2) {
                  std::fprintf(stderr, "%s\n", granted.text.c_str());
                  return 11;
              }
              auto refused = raw_call(raw.get(), socket_request(name, "stream", false));
              int channel[1] = {granted.fds.back().get()};
              return proto::send_message(child_end.get(), refused.text, channel) ==
                             proto::SendStatus::sent
                         ? 0
                         : 12;
          }) == 0);
    child_end.reset(); // so that nothing handed over reads as the end, not a wait
    auto handed = proto::receive_message(test_end.get());
    REQUIRE(handed.status == proto::ReceiveStatus::message);
    REQUIRE(handed.message.fds.size() == 1);
    const std::string refused_by_daemon = handed.message.data;
    CHECK(refused_by_daemon.find(R"("code":"permission_denied")") != std::string::npos);
    int channel = handed.message.fds[0].get();

    // Root, sending on nobody's channel, is refused what nobody is refused,
    // in the same words.
    auto refused = raw_call(channel, socket_request("", "stream", false));
    REQUIRE(refused.status == proto::ReceiveStatus::message);
    CHECK(refused.text == refused_by_daemon);
    CHECK(refused.fds.empty());
    // And what it is given is made as nobody.
    auto served = raw_call(channel, socket_request("", "dgram", false));
    REQUIRE(served.status == proto::ReceiveStatus::message);
    REQUIRE_MESSAGE(served.fds.size() == 1, served.text);
    CHECK(socket_netns_inode(served.fds[0].get()) == ns.inode());
    struct stat st {};
    REQUIRE(::fstat(served.fds[0].get(), &st) == 0);
    CHECK(st.st_uid == nobody);
}

TEST_CASE("a refusal on a channel gives the same error as through nsbrokerd") {
    TestNetns ns("refusals");
    Daemon d;
    REQUIRE(d.write_policy(nobody_policy(ns.name(), R"("dgram", "stream")")));
    const std::vector<std::pair<std::string, SocketSpec>> refused = {
        {"a type the rule does not list", spec(AF_INET, SOCK_SEQPACKET)},
        {"a raw socket", spec(AF_INET, SOCK_RAW, IPPROTO_ICMP)},
        {"a family the rule does not list", spec(AF_PACKET, SOCK_DGRAM)},
        {"a low port",
         [] {
             auto s = spec(AF_INET, SOCK_STREAM);
             s.bind = "127.0.0.1:80";
             return s;
         }()},
        {"an option that needs a grant",
         [] {
             auto s = spec(AF_INET, SOCK_DGRAM);
             s.options.mark = 7;
             return s;
         }()},
    };
    std::string name = ns.name();
    NobodyInStep child([&](NobodyInStep& step) {
        auto direct = Client::connect(d.socket_path());
        auto plain = Client::connect(d.socket_path(), through_daemon);
        if (!direct || !plain) {
            return 10;
        }
        auto first = direct->socket(Netns::name(name), spec(AF_INET, SOCK_DGRAM));
        // Asked while nsbrokerd is stopped, the answers can only be the worker's.
        if (!first || !step.done({first->fd()}) || !step.next()) {
            return 11;
        }
        std::vector<Result<Socket>> on_channel;
        for (const auto& [what, s] : refused) {
            on_channel.push_back(direct->socket(Netns::name(name), s));
        }
        if (!step.done()) {
            return 12;
        }
        int failures = 0;
        for (std::size_t i = 0; i < refused.size(); ++i) {
            auto by_daemon = plain->socket(Netns::name(name), refused[i].second);
            const auto& by_worker = on_channel[i];
            if (by_worker || by_daemon ||
                by_worker.error().describe() != by_daemon.error().describe() ||
                by_worker.error().sys_errno != by_daemon.error().sys_errno) {
                std::fprintf(stderr, "%s: on the channel \"%s\", through nsbrokerd \"%s\"\n",
                             refused[i].first.c_str(),
                             by_worker ? "a socket" : by_worker.error().describe().c_str(),
                             by_daemon ? "a socket" : by_daemon.error().describe().c_str());
                ++failures;
            }
        }
        return failures == 0 ? 0 : 20 + failures;
    });
    CHECK(inode_of(child.next()) == ns.inode());
    {
        Stopped daemon(d.pid());
        CHECK(child.done());
        CHECK(child.next());
    }
    CHECK(child.result() == 0);
}

TEST_CASE("a channel answers what it cannot serve with an error, and keeps serving") {
    TestNetns ns("strict");
    Daemon d;
    UniqueFd raw = connect_raw(d);
    UniqueFd granted = granted_channel(raw.get(), ns.name());
    int channel = granted.get();

    auto expect_error = [&](const std::string& request, const std::string& code,
                            std::span<const int> fds = {}) {
        CAPTURE(request);
        auto r = raw_call(channel, request, fds);
        REQUIRE(r.status == proto::ReceiveStatus::message);
        CHECK_MESSAGE(r.text.find(R"("code":")" + code + "\"") != std::string::npos, r.text);
        CHECK(r.fds.empty());
    };
    expect_error("{", "invalid_request");
    expect_error(R"({"id": 2, "op": "ping"})", "unsupported");
    expect_error(socket_request(ns.name(), "dgram", false), "invalid_request");
    expect_error(R"({"id": 3, "op": "socket", "sockets": [{"family": "inet", "type": "dgram"}],
                     "channel": true})",
                 "invalid_request");
    int passed[1] = {raw.get()};
    expect_error(socket_request("", "dgram", false), "invalid_request", passed);

    auto served = raw_call(channel, socket_request("", "dgram", false));
    REQUIRE(served.fds.size() == 1);
    CHECK(socket_netns_inode(served.fds[0].get()) == ns.inode());
}

TEST_CASE("channels are bounded: per Client by its option, per connection by nsbrokerd") {
    std::vector<std::unique_ptr<TestNetns>> spaces;
    for (int i = 0; i < 17; ++i) {
        spaces.push_back(std::make_unique<TestNetns>("bound"));
    }
    Daemon d;
    SUBCASE("the Client keeps the channels it uses most") {
        auto c = connect(d, ClientOptions{.max_direct_channels = 2});
        for (int round = 0; round < 3; ++round) {
            for (int i = 0; i < 3; ++i) {
                const auto& ns = *spaces[static_cast<std::size_t>(i)];
                CHECK(in_netns(c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)),
                               ns.inode()));
                CHECK(c.direct_channels() <= 2);
            }
        }
    }
    SUBCASE("nsbrokerd grants 16 on one connection, and serves the 17th request without one") {
        UniqueFd raw = connect_raw(d);
        std::vector<UniqueFd> held;
        for (const auto& ns : spaces) {
            auto r = raw_call(raw.get(), socket_request(ns->name(), "dgram", true));
            REQUIRE_MESSAGE(r.text.find(R"("ok":true)") != std::string::npos, r.text);
            REQUIRE(!r.fds.empty());
            CHECK(socket_netns_inode(r.fds[0].get()) == ns->inode());
            const bool granted = r.text.find(R"("channel":{)") != std::string::npos;
            CHECK(granted == (held.size() < 16));
            CHECK(r.fds.size() == (granted ? 2u : 1u));
            if (granted) {
                held.push_back(std::move(r.fds.back()));
            }
        }
        // A channel that closes gives its place back.
        held.pop_back();
        CHECK(wait_for([&] {
            auto r = raw_call(raw.get(), socket_request(spaces[0]->name(), "dgram", true));
            return r.fds.size() == 2;
        }));
    }
}

namespace {

// Requests submitted from an sd-event loop, and what came of them.
struct EventLoopRun {
    explicit EventLoopRun(Client& c) : client(c) {}

    Client& client;
    sd_event* loop = nullptr;
    std::map<std::uint64_t, ino_t> expected; // request id -> its namespace
    std::size_t sockets_per_request = 1;
    int completed = 0;
    int wrong = 0;
    std::map<std::string, int> errors;

    static int on_ready(sd_event_source*, int, uint32_t, void* userdata) {
        auto& run = *static_cast<EventLoopRun*>(userdata);
        for (auto& done : run.client.completions()) {
            ++run.completed;
            auto it = run.expected.find(done.id);
            if (it == run.expected.end()) {
                ++run.wrong;
            } else if (!done.sockets) {
                ++run.errors[done.sockets.error().describe()];
            } else if (done.sockets->size() != run.sockets_per_request) {
                ++run.wrong;
            } else {
                for (const auto& s : *done.sockets) {
                    run.wrong += socket_netns_inode(s.fd()) != it->second;
                }
            }
        }
        if (run.completed == static_cast<int>(run.expected.size())) {
            sd_event_exit(run.loop, 0);
        }
        return 0;
    }
    static int on_deadline(sd_event_source*, uint64_t, void* userdata) {
        sd_event_exit(static_cast<EventLoopRun*>(userdata)->loop, 1);
        return 0;
    }

    // Runs the loop until every request completed (0), or a minute passed.
    int wait_all() {
        REQUIRE(sd_event_new(&loop) >= 0);
        sd_event_source* io = nullptr;
        sd_event_source* deadline = nullptr;
        REQUIRE(sd_event_add_io(loop, &io, client.event_fd(), EPOLLIN, on_ready, this) >= 0);
        uint64_t now = 0;
        REQUIRE(sd_event_now(loop, CLOCK_MONOTONIC, &now) >= 0);
        REQUIRE(sd_event_add_time(loop, &deadline, CLOCK_MONOTONIC, now + 60'000'000, 0,
                                  on_deadline, this) >= 0);
        int r = sd_event_loop(loop);
        sd_event_source_unref(io);
        sd_event_source_unref(deadline);
        loop = sd_event_unref(loop);
        return r;
    }
};

} // namespace

TEST_CASE("from an sd-event loop: a thousand requests in flight, each completed in its namespace") {
    TestNetns a("loop-a");
    TestNetns b("loop-b");
    Daemon d;
    auto c = connect(d);
    UniqueFd b_fd{::open(b.path().c_str(), O_RDONLY | O_CLOEXEC)};
    REQUIRE(b_fd);
    EventLoopRun run(c);
    auto udp = spec(AF_INET, SOCK_DGRAM);
    auto submit = [&](int n) {
        for (int i = 0; i < n; ++i) {
            const bool to_a = i % 2 == 0;
            // A descriptor is duplicated at submit: the caller's own may close.
            UniqueFd own{to_a ? -1 : ::fcntl(b_fd.get(), F_DUPFD_CLOEXEC, 3)};
            auto id = c.submit_sockets(to_a ? Netns::name(a.name()) : Netns::fd(own.get()), {udp});
            REQUIRE_MESSAGE(id, id.error().describe());
            run.expected[*id] = to_a ? a.inode() : b.inode();
        }
    };
    SUBCASE("through nsbrokerd first, then on the channels it granted") {
        submit(1000);
    }
    SUBCASE("while SIGHUP revokes the channels they were sent on") {
        REQUIRE(c.socket(Netns::name(a.name()), udp));
        REQUIRE(c.socket(Netns::fd(b_fd.get()), udp));
        REQUIRE(c.direct_channels() == 2);
        submit(500);
        REQUIRE(d.write_policy(R"({"rules": []})"));
        submit(500);
    }
    CHECK(run.wait_all() == 0);
    CHECK(run.completed == 1000);
    CHECK(run.wrong == 0);
    for (const auto& [error, count] : run.errors) {
        FAIL_CHECK(count << " requests failed: " << error);
    }
    CHECK(c.direct_channels() == 2);
}

namespace {

// How many sockets this process holds in the namespace with inode ino.
int open_sockets_in(ino_t ino) {
    int n = 0;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
        int fd = std::stoi(entry.path().filename().string());
        struct stat st {};
        if (::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && socket_netns_inode(fd) == ino) {
            ++n;
        }
    }
    return n;
}

// `ip netns add NAME` of a name chosen elsewhere, deleted with the test.
class NamedAgain {
  public:
    explicit NamedAgain(std::string name) : name_(std::move(name)) {
        REQUIRE(run("ip netns add " + name_) == 0);
    }
    ~NamedAgain() { run("ip netns delete " + name_ + " 2>/dev/null"); }
    NamedAgain(const NamedAgain&) = delete;
    NamedAgain& operator=(const NamedAgain&) = delete;
    [[nodiscard]] ino_t inode() const {
        struct stat st {};
        return ::stat(("/run/netns/" + name_).c_str(), &st) == 0 ? st.st_ino : 0;
    }

  private:
    std::string name_;
};

} // namespace

TEST_CASE("the reservoir serves sockets made ahead, and never keeps a deleted namespace alive") {
    TestNetns ns("reservoir");
    const std::string name = ns.name();
    const ino_t first = ns.inode();
    Daemon d;
    auto c = connect(d, ClientOptions{.reservoir = 8});
    auto udp = spec(AF_INET, SOCK_DGRAM);
    auto listener = spec(AF_INET, SOCK_STREAM);
    listener.bind = "127.0.0.1:0";
    listener.listen = 4;
    // Through nsbrokerd, which grants the channel; then on the channel,
    // which fills the reservoir of each kind.
    REQUIRE(in_netns(c.socket(Netns::name(name), udp), first));
    REQUIRE(in_netns(c.socket(Netns::name(name), udp), first));
    REQUIRE(in_netns(c.socket(Netns::name(name), listener), first));
    CHECK(open_sockets_in(first) == 16);
    pid_t worker = worker_of(c, first);
    REQUIRE(worker > 0);
    {
        // Neither nsbrokerd nor the worker answers now: only the reservoir can.
        Stopped daemon(d.pid());
        Stopped held(worker);
        for (int i = 0; i < 4; ++i) {
            CHECK(in_netns(c.socket(Netns::name(name), udp), first));
        }
        auto served = c.socket(Netns::name(name), listener);
        REQUIRE(in_netns(served, first));
        const std::string& local = served->local_address();
        CHECK(local.starts_with("127.0.0.1:"));
        CHECK(local != "127.0.0.1:0");
        CHECK(socket_option(served->fd(), SO_ACCEPTCONN) == 1);
        CHECK(tcp_connect_from(ns.path(), "127.0.0.1", std::stoi(local.substr(10))));
    }

    ns.remove();
    REQUIRE(wait_for([&] { return !process_alive(worker); }));
    NamedAgain again(name);
    auto s = c.socket(Netns::name(name), udp);
    REQUIRE(s);
    CHECK(socket_netns_inode(s->fd()) == again.inode());
    CHECK(socket_netns_inode(s->fd()) != first);
    // What the reservoir held of the deleted namespace is closed.
    CHECK(open_sockets_in(first) == 0);
}

TEST_CASE("a caller that leaves its replies unread holds up no one else, and loses nothing") {
    TestNetns ns("unread");
    Daemon d;
    UniqueFd raw = connect_raw(d);
    UniqueFd granted = granted_channel(raw.get(), ns.name());
    int channel = granted.get();
    // Four batches of 253: past what a worker sends a caller that has not read.
    const std::string batch =
        R"({"id": 7, "op": "socket", "sockets": [{"family": "inet", "type": "dgram", "count": 253}]})";
    for (int i = 0; i < 4; ++i) {
        REQUIRE(proto::send_message(channel, batch) == proto::SendStatus::sent);
    }
    // Everyone else is served meanwhile, on a channel of their own and
    // through nsbrokerd.
    auto c = connect(d);
    auto other = connect(d, through_daemon);
    for (int i = 0; i < 20; ++i) {
        CHECK(in_netns(c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)), ns.inode()));
    }
    CHECK(in_netns(other.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)), ns.inode()));
    // Read late, every batch is there, whole.
    for (int i = 0; i < 4; ++i) {
        pollfd p{channel, POLLIN, 0};
        REQUIRE(::poll(&p, 1, 30'000) == 1);
        auto reply = proto::receive_message(channel);
        REQUIRE(reply.status == proto::ReceiveStatus::message);
        CHECK(reply.message.fds.size() == 253);
        CHECK(socket_netns_inode(reply.message.fds.front().get()) == ns.inode());
    }
}

TEST_CASE("a user holds at most 16 channels, however many connections it opens") {
    Daemon d;
    CHECK(as_nobody(Nobody::own_netns, [&] {
              std::vector<UniqueFd> connections;
              std::vector<UniqueFd> channels;
              for (int c = 0; c < 2; ++c) {
                  connections.push_back(connect_raw(d));
                  for (int i = 0; i < 10; ++i) {
                      UniqueFd own{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
                      int passed[1] = {own.get()};
                      auto r = raw_call(connections.back().get(),
                                        R"({"id": 1, "op": "socket", "netns": {"fd": 0},
                                            "socket": {"family": "inet", "type": "dgram"},
                                            "channel": true})",
                                        passed);
                      if (r.text.find(R"("ok":true)") == std::string::npos) {
                          std::fprintf(stderr, "%s\n", r.text.c_str());
                          return 10;
                      }
                      if (r.fds.size() == 2) {
                          channels.push_back(std::move(r.fds.back()));
                      }
                  }
              }
              return channels.size() == 16 ? 0 : 11;
          }) == 0);
}

TEST_CASE("a channel's place is held while its caller leaves sockets unread, after its worker "
          "is gone") {
    TestNetns ns("held");
    const std::string name = ns.name();
    for (bool revoked : {false, true}) {
        CAPTURE(revoked);
        Daemon d;
        REQUIRE(d.write_policy(nobody_policy(name, R"("dgram")")));
        NobodyInStep child([&](NobodyInStep& step) {
            UniqueFd raw = connect_raw(d);
            std::vector<UniqueFd> channels;
            const std::string batch =
                R"({"id": 7, "op": "socket", "sockets": [{"family": "inet", "type": "dgram", "count": 253}]})";
            for (int i = 0; i < 16; ++i) {
                auto granted = raw_call(raw.get(), socket_request(name, "dgram", true));
                if (granted.fds.size() != 2) {
                    std::fprintf(stderr, "%s\n", granted.text.c_str());
                    return 10;
                }
                channels.push_back(std::move(granted.fds.back()));
                pollfd p{channels.back().get(), POLLIN, 0};
                if (proto::send_message(p.fd, batch) != proto::SendStatus::sent ||
                    ::poll(&p, 1, 30'000) != 1) {
                    return 11;
                }
            }
            // 16 channels of 253 unread sockets each; the worker goes.
            if (!step.done() || !step.next()) {
                return 12;
            }
            for (const auto& channel : channels) {
                pollfd p{channel.get(), POLLRDHUP, 0};
                if (::poll(&p, 1, 30'000) != 1) {
                    return 13;
                }
            }
            // Served, without a channel, on this connection and on another.
            UniqueFd another = connect_raw(d);
            for (int fd : {raw.get(), another.get()}) {
                auto more = raw_call(fd, socket_request(name, "dgram", true));
                if (more.fds.size() != 1) {
                    std::fprintf(stderr, "%zu fds: %s\n", more.fds.size(), more.text.c_str());
                    return 14;
                }
            }
            // Once the unread sockets are gone, channels are granted again.
            channels.clear();
            return wait_for([&] {
                return raw_call(another.get(), socket_request(name, "dgram", true)).fds.size() == 2;
            })
                       ? 0
                       : 15;
        });
        REQUIRE(child.next());
        auto c = connect(d, through_daemon);
        const pid_t worker = worker_of(c, ns.inode());
        REQUIRE(worker > 0);
        if (revoked) {
            REQUIRE(d.write_policy(nobody_policy(name, R"("dgram")")));
        } else {
            REQUIRE(::kill(worker, SIGKILL) == 0);
        }
        CHECK(child.done());
        CHECK(child.result() == 0);
    }
}

TEST_CASE("a channel's own end sent back on it, with sockets unread, does not hold its place "
          "for good") {
    TestNetns ns("cycle");
    const std::string name = ns.name();
    // Its worker killed, or left to serve on while the channel waits past
    // --stall-timeout for a caller that will never read.
    for (bool killed : {true, false}) {
        CAPTURE(killed);
        Daemon d(killed ? std::vector<std::string>{}
                        : std::vector<std::string>{"--stall-timeout", "1"});
        REQUIRE(d.write_policy(nobody_policy(name, R"("dgram")")));
        NobodyInStep child([&](NobodyInStep& step) {
            std::vector<UniqueFd> channels = take_every_channel(d, name);
            if (channels.size() != 16) {
                return 10;
            }
            // Two batches: the worker sends the first and holds the second
            // until the first is read, and reads nothing more meanwhile.
            const std::string batch =
                R"({"id": 7, "op": "socket", "sockets": [{"family": "inet", "type": "dgram", "count": 253}]})";
            pollfd p{channels[0].get(), POLLIN, 0};
            if (proto::send_message(p.fd, batch) != proto::SendStatus::sent ||
                proto::send_message(p.fd, batch) != proto::SendStatus::sent ||
                ::poll(&p, 1, 30'000) != 1) {
                return 11;
            }
            // The channel's end, queued to the worker on itself: once this copy
            // closes, only that queue holds it.
            int own[1] = {p.fd};
            if (proto::send_message(p.fd, "{}", own) != proto::SendStatus::sent) {
                return 12;
            }
            channels.clear();
            if (!step.done() || !step.next()) {
                return 13;
            }
            // With the worker gone or the channel closed, all 16 places come back.
            return every_place_back(d, name) ? 0 : 14;
        });
        REQUIRE(child.next());
        auto c = connect(d, through_daemon);
        const pid_t worker = worker_of(c, ns.inode());
        REQUIRE(worker > 0);
        if (killed) {
            REQUIRE(::kill(worker, SIGKILL) == 0);
        }
        CHECK(child.done());
        CHECK(child.result() == 0);
        if (!killed) {
            CHECK(worker_of(c, ns.inode()) == worker);
            CHECK(d.log().find("left its replies unread for 1 s; closed") != std::string::npos);
        }
    }
}

TEST_CASE("a channel's own end queued behind a reply its worker could not send does not hold its "
          "place for good") {
    TestNetns ns("unsent");
    const std::string name = ns.name();
    Daemon d({"--stall-timeout", "1"});
    REQUIRE(d.write_policy(nobody_policy(name, R"("dgram")")));
    NobodyInStep child([&](NobodyInStep&) {
        std::vector<UniqueFd> channels = take_every_channel(d, name);
        if (channels.size() != 16) {
            return 10;
        }
        // Requests of an unknown operation of 60000 bytes, refused with
        // replies that name it, never read: the worker's send buffer takes
        // at most buffer / 60000 + 1 of them, and it keeps the next unsent
        // and reads nothing more. Two requests after it, and the channel's
        // own end, stay in its queue.
        int buffer = 0;
        socklen_t length = sizeof(buffer);
        if (::getsockopt(channels[0].get(), SOL_SOCKET, SO_SNDBUF, &buffer, &length) < 0) {
            return 11;
        }
        const std::string big = R"({"id": 7, "op": ")" + std::string(60'000, 'x') + "\"}";
        // Sent without waiting for POLLOUT, which a unix socket signals only
        // while a quarter of its buffer is in use, as the worker reads them.
        const int fd = channels[0].get();
        auto sent = [fd](const std::string& bytes, std::span<const int> fds = {}) {
            return wait_for([&] {
                return proto::send_message(fd, bytes, fds, true) == proto::SendStatus::sent;
            });
        };
        for (int i = 0; i < buffer / 60'000 + 4; ++i) {
            if (!sent(big)) {
                return 11;
            }
        }
        int own[1] = {fd};
        if (!sent("{}", own)) {
            return 12;
        }
        channels.clear();
        // Once the worker closes the channel, all 16 places come back.
        return every_place_back(d, name) ? 0 : 13;
    });
    CHECK(child.result() == 0);
    CHECK(d.log().find("left its replies unread for 1 s; closed") != std::string::npos);
}

TEST_CASE("a caller that reads its replies slowly but steadily keeps its channel past "
          "--stall-timeout, and loses it once it stops") {
    TestNetns ns("steady");
    Daemon d({"--stall-timeout", "1"});
    UniqueFd raw = connect_raw(d);
    auto granted = raw_call(raw.get(), socket_request(ns.name(), "dgram", true));
    REQUIRE(granted.fds.size() == 2);
    const int channel = granted.fds.back().get();
    // Refused requests, sent without reading: the worker answers until its
    // send buffer is full (278 small replies here), keeps the next reply
    // unsent, and reads nothing more; what is sent after waits in its queue.
    const std::string refused = R"({"id": 9, "op": "ping"})";
    for (int i = 0; i < 400; ++i) {
        REQUIRE(wait_for([&] {
            return proto::send_message(channel, refused, {}, true) == proto::SendStatus::sent;
        }));
    }
    // One reply read every 100 ms, for three times --stall-timeout: the
    // kernel reports room for the unsent reply only once three quarters of
    // the queue is read, and the channel must not close meanwhile.
    int read = 0;
    for (; read < 30; ++read) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        auto reply = proto::receive_message(channel, proto::max_message_size, true);
        REQUIRE(reply.status == proto::ReceiveStatus::message);
        CHECK(reply.message.data.find("unsupported") != std::string::npos);
    }
    CHECK(d.log().find("unread for 1 s; closed") == std::string::npos);
    // Once it stops reading, the channel closes after --stall-timeout.
    CHECK(wait_for([&] { return d.log().find("unread for 1 s; closed") != std::string::npos; }));
}

TEST_CASE("no channel is granted through a name deleted while its request was at the worker") {
    TestNetns ns("granted-late");
    SecondName second(ns, "late");
    const std::string name = second.name();
    Daemon d;
    REQUIRE(d.write_policy(nobody_policy(name, R"("dgram")")));
    // Root keeps the worker by the namespace's first name.
    auto c = connect(d, through_daemon);
    REQUIRE(c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)));
    const pid_t worker = worker_of(c, ns.inode());
    REQUIRE(worker > 0);
    // Jobs the worker was given: root's first, then nobody's.
    auto jobs = [&] {
        auto list = c.namespaces();
        REQUIRE(list);
        for (const auto& n : list->namespaces) {
            if (n.ino == ns.inode()) {
                return n.requests;
            }
        }
        return std::uint64_t{0};
    };
    std::optional<Stopped> stopped;
    stopped.emplace(worker);
    NobodyInStep child([&](NobodyInStep& step) {
        UniqueFd raw = connect_raw(d);
        auto granted = raw_call(raw.get(), socket_request(name, "dgram", true));
        // The socket, judged before the name went, and no channel.
        if (granted.fds.size() != 1) {
            std::fprintf(stderr, "%zu fds: %s\n", granted.fds.size(), granted.text.c_str());
            return 10;
        }
        return step.done() ? 0 : 11;
    });
    // The request waits at the stopped worker; then the name goes, and
    // nsbrokerd sees it go.
    REQUIRE(wait_for([&] { return jobs() == 2; }));
    const std::string path = "/run/netns/" + name;
    REQUIRE(::umount2(path.c_str(), MNT_DETACH) == 0);
    REQUIRE(::unlink(path.c_str()) == 0);
    REQUIRE(wait_for([&] {
        return d.log().find("\"" + name + "\" no longer names its namespace") != std::string::npos;
    }));
    stopped.reset();
    CHECK(child.next());
    CHECK(child.result() == 0);
}

TEST_CASE("a name unmounted without being deleted, or mounted over, revokes its channels") {
    TestNetns ns("unmounted");
    TestNetns elsewhere("elsewhere");
    for (bool over : {false, true}) {
        CAPTURE(over);
        SecondName other(ns, over ? "over" : "bare");
        Daemon d;
        UniqueFd raw = connect_raw(d);
        UniqueFd channel = granted_channel(raw.get(), other.name());
        const std::string path = "/run/netns/" + other.name();
        REQUIRE(::umount2(path.c_str(), MNT_DETACH) == 0);
        if (over) {
            REQUIRE(::mount(elsewhere.path().c_str(), path.c_str(), nullptr, MS_BIND, nullptr) ==
                    0);
        }
        CHECK(wait_for([&] {
            auto r = raw_call(channel.get(), socket_request("", "dgram", false));
            return r.status != proto::ReceiveStatus::message ||
                   r.text.find(R"("code":"unavailable")") != std::string::npos;
        }));
        // The namespace's first name still serves it.
        auto c = connect(d);
        CHECK(in_netns(c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)), ns.inode()));
    }
}
