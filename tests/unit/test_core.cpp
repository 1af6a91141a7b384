// The core alone, without a front end: admission, counting, seats and the
// path of a socket request to a real worker in a real namespace, driven on
// the core's own event loop as the daemon drives it.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <optional>

#include "core/core.hpp"
#include "service.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using namespace nsbroker::daemon;

namespace {

// A core on a loop of its own, with a policy file that does not exist (the
// built-in default) unless a test writes one.
struct CoreFixture {
    test::TempDir dir;
    Service service;
    std::unique_ptr<Core> core;

    explicit CoreFixture(CallerLimits limits = {}, const std::string& policy = "") {
        CoreConfig config;
        config.policy_path = dir.path() + "/policy.json";
        if (!policy.empty()) {
            REQUIRE(test::run("printf '%s' '" + policy + "' > " + config.policy_path) == 0);
        }
        config.limits = limits;
        config.workers.idle_timeout = std::chrono::seconds(30);
        core = std::make_unique<Core>(service.loop(), std::move(config));
        service.attach(*core, {}, std::chrono::seconds(0));
    }

    // Turns the loop until done holds, for at most ten seconds.
    template <typename Done>
    bool run_until(Done done) {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!done()) {
            if (std::chrono::steady_clock::now() > deadline) {
                return false;
            }
            service.run_once(100'000);
        }
        return true;
    }
};

struct Answered {
    std::optional<proto::ReplyBody> body;
    std::vector<UniqueFd> fds;
};

Answer into(const std::shared_ptr<Answered>& answered) {
    return [answered](proto::ReplyBody body, std::vector<UniqueFd> fds) {
        REQUIRE_FALSE(answered->body.has_value()); // exactly once
        answered->body = std::move(body);
        answered->fds = std::move(fds);
    };
}

Caller user(uid_t uid) {
    return {uid, static_cast<gid_t>(uid), {}, ::getpid()};
}

Request request_of(const Caller& caller, proto::Op op,
                   std::shared_ptr<Channel> channel = std::make_shared<Channel>()) {
    Request r;
    r.caller = caller;
    r.process = {caller.pid, {}};
    r.channel = std::move(channel);
    r.message.op = op;
    r.message.id = 7;
    return r;
}

Request socket_request(const Caller& caller, const std::string& netns,
                       std::shared_ptr<Channel> channel = std::make_shared<Channel>()) {
    Request r = request_of(caller, proto::Op::socket, std::move(channel));
    r.message.netns = proto::NetnsRef::by_name(netns);
    r.message.specs = {test::spec(AF_INET, SOCK_DGRAM)};
    return r;
}

const Error* error_of(const Answered& a) {
    return a.body ? std::get_if<Error>(&*a.body) : nullptr;
}

} // namespace

TEST_CASE("core: hello and ping are answered to anyone, and counted") {
    CoreFixture f;
    auto hello = std::make_shared<Answered>();
    f.core->serve(request_of(user(65534), proto::Op::hello), into(hello));
    REQUIRE(hello->body);
    auto* h = std::get_if<proto::HelloReply>(&*hello->body);
    REQUIRE(h != nullptr);
    CHECK(h->protocol == proto::protocol_version);

    auto pong = std::make_shared<Answered>();
    f.core->serve(request_of(user(65534), proto::Op::ping), into(pong));
    REQUIRE(pong->body);
    CHECK(std::holds_alternative<proto::PongReply>(*pong->body));
    CHECK(f.core->stats().requests == 2);
    CHECK(f.core->stats().errors.empty());
}

TEST_CASE("core: namespaces and stats are root's, and a refusal is counted by its code") {
    CoreFixture f;
    for (auto op : {proto::Op::namespaces, proto::Op::stats}) {
        auto denied = std::make_shared<Answered>();
        f.core->serve(request_of(user(65534), op), into(denied));
        auto* e = error_of(*denied);
        REQUIRE(e != nullptr);
        CHECK(e->code == ErrorCode::permission_denied);
        CHECK(e->sys_errno == EPERM);

        auto served = std::make_shared<Answered>();
        f.core->serve(request_of(user(0), op), into(served));
        CHECK(error_of(*served) == nullptr);
    }
    auto stats = f.core->stats();
    CHECK(stats.requests == 4);
    CHECK(stats.errors.at("permission_denied") == 2);

    f.core->count_unreadable(make_error(ErrorCode::invalid_request, "malformed JSON"));
    stats = f.core->stats();
    CHECK(stats.requests == 5);
    CHECK(stats.errors.at("invalid_request") == 1);
}

TEST_CASE("core: seats bound the connections of users other than root") {
    CallerLimits limits;
    limits.connections = 3;
    limits.connections_per_uid = 2;
    CoreFixture f(limits);

    auto a = f.core->seat(1000);
    auto b = f.core->seat(1000);
    REQUIRE(a);
    REQUIRE(b);
    auto c = f.core->seat(1000);
    REQUIRE_FALSE(c);
    CHECK(c.error().code == ErrorCode::limit);
    CHECK(c.error().message == "uid 1000 has 2 connections, the most it may have");

    auto d = f.core->seat(1001);
    REQUIRE(d);
    auto e = f.core->seat(1002);
    REQUIRE_FALSE(e);
    CHECK(e.error().message == "the daemon serves at most 3 connections of users other than root");
    // Root is never refused because of other users' connections.
    auto root = f.core->seat(0);
    CHECK(root);
    CHECK(f.core->stats().clients == 4);
    CHECK(f.core->stats().errors.at("limit") == 2);

    // A seat given up is free again.
    { auto gone = std::move(*a); }
    CHECK(f.core->stats().clients == 3);
    CHECK(f.core->seat(1000));
}

TEST_CASE("core: a socket request reaches the namespace's worker, within the channel's limit") {
    test::TestNetns ns("core");
    CallerLimits limits;
    limits.requests_in_flight = 1;
    CoreFixture f(limits);
    auto channel = std::make_shared<Channel>(Channel{"on this test", 0});

    auto first = std::make_shared<Answered>();
    f.core->serve(socket_request(user(0), ns.name(), channel), into(first));
    CHECK(channel->in_flight == 1);
    // The first is with its worker: a second on the same channel is refused.
    auto second = std::make_shared<Answered>();
    f.core->serve(socket_request(user(0), ns.name(), channel), into(second));
    auto* refused = error_of(*second);
    REQUIRE(refused != nullptr);
    CHECK(refused->code == ErrorCode::limit);
    CHECK(refused->message == "1 requests in flight on this test, the most it may have");
    // Another channel is not held back by it.
    auto other = std::make_shared<Answered>();
    f.core->serve(socket_request(user(0), ns.name()), into(other));

    REQUIRE(f.run_until([&] { return first->body && other->body; }));
    CHECK(channel->in_flight == 0);
    for (const auto& answered : {first, other}) {
        REQUIRE(error_of(*answered) == nullptr);
        REQUIRE(answered->fds.size() == 1);
        CHECK(test::socket_netns_inode(answered->fds.front().get()) == ns.inode());
    }
    auto stats = f.core->stats();
    CHECK(stats.sockets == 2);
    CHECK(stats.workers_spawned == 1);
    CHECK(f.core->idle());
}

TEST_CASE("core: a socket request without a namespace or sockets is refused, not served") {
    CoreFixture f;
    auto no_netns = request_of(user(0), proto::Op::socket);
    no_netns.message.specs = {test::spec(AF_INET, SOCK_DGRAM)};
    auto no_specs = request_of(user(0), proto::Op::socket);
    no_specs.message.netns = proto::NetnsRef::by_name("blue");
    for (auto* r : {&no_netns, &no_specs}) {
        auto refused = std::make_shared<Answered>();
        f.core->serve(std::move(*r), into(refused));
        auto* e = error_of(*refused);
        REQUIRE(e != nullptr);
        CHECK(e->code == ErrorCode::invalid_request);
    }
    CHECK(f.core->stats().workers_spawned == 0);
}

TEST_CASE("core: the policy refuses a caller other than root in a namespace it was not granted") {
    test::TestNetns ns("core-denied");
    CoreFixture f;
    auto denied = std::make_shared<Answered>();
    f.core->serve(socket_request(user(65534), ns.name()), into(denied));
    auto* e = error_of(*denied);
    REQUIRE(e != nullptr);
    CHECK(e->code == ErrorCode::permission_denied);
    CHECK(f.core->stats().workers_spawned == 0);

    // Unix addresses are bound by the caller itself.
    auto unix_bind = std::make_shared<Answered>();
    auto r = socket_request(user(65534), ns.name());
    r.message.specs = {test::spec(AF_UNIX, SOCK_STREAM)};
    r.message.specs.front().bind = "/tmp/x.sock";
    f.core->serve(std::move(r), into(unix_bind));
    e = error_of(*unix_bind);
    REQUIRE(e != nullptr);
    CHECK(e->code == ErrorCode::permission_denied);
}

TEST_CASE("core: once stopping, every request is refused and the workers exit") {
    test::TestNetns ns("core-stop");
    CoreFixture f;
    auto served = std::make_shared<Answered>();
    f.core->serve(socket_request(user(0), ns.name()), into(served));
    bool stopped = false;
    f.core->stop([&stopped] { stopped = true; });
    CHECK(f.core->stopping());

    auto refused = std::make_shared<Answered>();
    f.core->serve(request_of(user(0), proto::Op::ping), into(refused));
    auto* e = error_of(*refused);
    REQUIRE(e != nullptr);
    CHECK(e->code == ErrorCode::unavailable);

    // What was sent before the stop is still answered, then the pool empties.
    REQUIRE(f.run_until([&] { return stopped; }));
    REQUIRE(served->body);
    CHECK(error_of(*served) == nullptr);
    CHECK(served->fds.size() == 1);
    CHECK(f.core->stats().workers_live == 0);
}
