// The core alone, without a front end: admission, counting, seats and the
// path of a socket request to a real worker in a real namespace, driven on
// the core's own event loop as the daemon drives it.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/core.hpp"
#include "core/namespace_listing.hpp"
#include "nsbroker/codec.hpp"
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

// ---- the namespaces listing's pages ------------------------------------------

namespace {

// A listing in the daemon's order, with names that JSON spells six bytes a
// byte: pages of it hold few entries.
std::vector<proto::NamespaceInfo> long_named_listing(std::size_t count) {
    std::vector<proto::NamespaceInfo> listing;
    for (std::size_t i = 0; i < count; ++i) {
        std::string name = std::to_string(i) + std::string(200, '\x01');
        listing.push_back({4, 1000 + 3 * i, {name}, 0, "idle", 0, 0});
    }
    return listing;
}

// Every page from the start, each checked to fit one message.
std::vector<proto::NamespacesReply> all_pages(const std::vector<proto::NamespaceInfo>& listing,
                                              std::size_t limit) {
    std::vector<proto::NamespacesReply> pages;
    std::optional<proto::NamespacesCursor> cursor;
    do {
        pages.push_back(namespace_page(listing, cursor, limit, true));
        const auto& page = pages.back();
        CHECK(proto::encode_reply({UINT64_MAX, page}).size() <= proto::max_message_size);
        CHECK(page.namespaces.size() <= limit);
        REQUIRE((page.namespaces.size() > 0 || !page.next_cursor));
        cursor = page.next_cursor;
    } while (cursor && pages.size() < 1000);
    return pages;
}

} // namespace

TEST_CASE("namespaces: pages fit one message, follow (dev, ino) and list everything once") {
    auto listing = long_named_listing(2000);
    auto pages = all_pages(listing, proto::max_namespaces_limit);
    CHECK(pages.size() > 10);
    std::vector<std::uint64_t> listed;
    for (const auto& page : pages) {
        for (const auto& n : page.namespaces) {
            listed.push_back(n.ino);
        }
        if (page.next_cursor) {
            // The cursor is the key of the last entry sent.
            CHECK(page.next_cursor->ino == page.namespaces.back().ino);
            CHECK_FALSE(page.next_cursor->name);
        }
    }
    std::vector<std::uint64_t> expected;
    for (const auto& n : listing) {
        expected.push_back(n.ino);
    }
    CHECK(listed == expected);

    // At most limit entries a page.
    pages = all_pages(listing, 7);
    CHECK(pages.size() == (2000 + 6) / 7);

    // Not cut for a front end whose replies have no 64 KiB bound.
    auto whole = namespace_page(listing, std::nullopt, SIZE_MAX, false);
    CHECK(whole.namespaces.size() == 2000);
    CHECK_FALSE(whole.next_cursor);
}

TEST_CASE("namespaces: the next page starts after the cursor's key, whether it still exists") {
    auto listing = long_named_listing(10);
    // Entry 4 (ino 1012) was the last sent, then deleted.
    auto without = listing;
    without.erase(without.begin() + 4);
    auto page = namespace_page(without, proto::NamespacesCursor{4, 1012, std::nullopt}, 3, true);
    REQUIRE(page.namespaces.size() == 3);
    CHECK(page.namespaces[0].ino == 1015);
    CHECK(page.next_cursor == proto::NamespacesCursor{4, 1021, std::nullopt});
    // One made since, before the cursor, is not listed; one after it is.
    auto with = listing;
    with.insert(with.begin() + 3, {4, 1007, {"new-before"}, 0, "idle", 0, 0});
    with.insert(with.begin() + 6, {4, 1014, {"new-after"}, 0, "idle", 0, 0});
    page = namespace_page(with, proto::NamespacesCursor{4, 1012, std::nullopt}, 2, true);
    REQUIRE(page.namespaces.size() == 2);
    CHECK(page.namespaces[0].ino == 1014);
    CHECK(page.namespaces[1].ino == 1015);
    // Past the end, nothing is left.
    page = namespace_page(listing, proto::NamespacesCursor{4, 1027, std::nullopt}, 3, true);
    CHECK(page.namespaces.empty());
    CHECK_FALSE(page.next_cursor);
    page = namespace_page(listing, proto::NamespacesCursor{5, 0, std::nullopt}, 3, true);
    CHECK(page.namespaces.empty());
}

TEST_CASE("namespaces: a namespace with more names than one message holds goes on the next page") {
    std::vector<proto::NamespaceInfo> listing{{4, 1, {"a"}, 0, "idle", 0, 0},
                                              {4, 2, {}, 77, "ready", 5, 6},
                                              {4, 3, {"c"}, 0, "idle", 0, 0}};
    for (int i = 0; i < 600; ++i) {
        listing[1].names.push_back("n" + std::to_string(1000 + i) + std::string(200, 'x'));
    }
    auto pages = all_pages(listing, proto::max_namespaces_limit);
    REQUIRE(pages.size() >= 3);
    // Joined as the library joins them.
    std::vector<proto::NamespaceInfo> joined;
    for (const auto& page : pages) {
        for (const auto& n : page.namespaces) {
            if (!joined.empty() && joined.back().ino == n.ino) {
                CHECK(n.worker_pid == 77);
                joined.back().names.insert(joined.back().names.end(), n.names.begin(),
                                           n.names.end());
            } else {
                joined.push_back(n);
            }
        }
    }
    REQUIRE(joined.size() == 3);
    CHECK(joined[1].names == listing[1].names);
    CHECK(joined[2].names == std::vector<std::string>{"c"});
    // The first page stops before the namespace that does not fit after "a".
    CHECK(pages[0].namespaces.size() == 1);
    CHECK(pages[1].next_cursor->ino == 2);
    CHECK(pages[1].next_cursor->name == pages[1].namespaces[0].names.back());

    // Names deleted since go with the namespace; those after the cursor's stay.
    auto fewer = listing;
    const auto& sent_last = listing[1].names[100];
    fewer[1].names.erase(fewer[1].names.begin() + 90, fewer[1].names.begin() + 110);
    auto page = namespace_page(fewer, proto::NamespacesCursor{4, 2, sent_last}, 2, true);
    REQUIRE(page.namespaces.size() == 1);
    CHECK(page.namespaces[0].ino == 2);
    CHECK(page.namespaces[0].names.front() == listing[1].names[110]);
    // With none of its names left after the cursor's, the page goes on with the next one.
    page = namespace_page(listing, proto::NamespacesCursor{4, 2, listing[1].names.back()}, 2, true);
    REQUIRE(page.namespaces.size() == 1);
    CHECK(page.namespaces[0].ino == 3);
}

TEST_CASE("namespaces: one entry for each namespace, from the worker that serves it now") {
    test::TempDir empty;
    const std::vector<proto::NamespaceInfo> workers{{4, 9, {}, 10, "exiting", 7, 7},
                                                    {4, 9, {}, 11, "ready", 1, 1},
                                                    {4, 5, {}, 12, "ready", 0, 0}};
    for (bool reversed : {false, true}) {
        auto given = workers;
        if (reversed) {
            std::reverse(given.begin(), given.end());
        }
        auto listing = namespace_listing(empty.path(), given);
        REQUIRE(listing.size() == 2);
        CHECK(listing[0].ino == 5);
        CHECK(listing[1].ino == 9);
        CHECK(listing[1].worker_pid == 11);
    }
}
