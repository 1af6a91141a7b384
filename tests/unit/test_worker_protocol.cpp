// The worker protocol's codec: jobs, channel grants, revocations and notices
// round-trip, and what is not one of them is refused as precisely as a request.
#include <doctest/doctest.h>
#include <sys/socket.h>

#include "nsbroker/worker_protocol.hpp"

using namespace nsbroker;
using namespace nsbroker::proto;

TEST_CASE("worker jobs round-trip and are validated like requests") {
    WorkerJob job;
    job.id = 12;
    SocketSpec s;
    s.family = AF_UNIX;
    s.type = SOCK_SEQPACKET;
    s.bind = "@abstract";
    job.specs = {s};
    auto back = decode_job(encode_job(job));
    REQUIRE(back);
    CHECK(back->id == 12);
    CHECK(back->specs.at(0) == s);
    CHECK_FALSE(decode_job(R"({"id":1,"sockets":[{"family":"inet"}]})"));
}

TEST_CASE("a key repeated in a worker job is refused") {
    auto job = decode_job(R"({"id":1,"sockets":[{"family":"unix","type":"stream",
        "bind":"@a","bind":"@b"}]})");
    REQUIRE_FALSE(job);
    CHECK(job.error().code == ErrorCode::invalid_request);
    CHECK(job.error().message == "sockets[0]: duplicate key \"bind\"");
    job = decode_job(R"({"id":1,"id":1,"sockets":[{"family":"unix","type":"stream"}]})");
    REQUIRE_FALSE(job);
    CHECK(job.error().message == "duplicate key \"id\"");
}

namespace {

ChannelGrant full_grant() {
    ChannelGrant grant;
    grant.id = 7;
    grant.caller = {1000, 100, {100, 4242}};
    grant.pid = 4321;
    grant.name = "qrouter-1";
    grant.owned_by_caller = true;
    grant.stall_timeout = 60;
    grant.policy =
        R"({"rules":[{"limits":{"requests_in_flight":64,"sockets_per_request":253},"name":"r","namespaces":{"any":true},"users":["*"]}]})";
    return grant;
}

// The one message decode_to_worker reads, which must be a grant.
ChannelGrant grant_of(const std::string& bytes) {
    auto message = decode_to_worker(bytes);
    REQUIRE_MESSAGE(message, message.error().message);
    REQUIRE(std::holds_alternative<ChannelGrant>(*message));
    return std::get<ChannelGrant>(*message);
}

// What decode_to_worker says is wrong with bytes.
std::string refusal(const std::string& bytes) {
    auto message = decode_to_worker(bytes);
    REQUIRE_FALSE(message);
    CHECK(message.error().code == ErrorCode::invalid_request);
    return message.error().message;
}

} // namespace

TEST_CASE("channel grants round-trip, with and without what is optional") {
    auto grant = full_grant();
    auto back = grant_of(encode_channel_grant(grant));
    CHECK(back.id == grant.id);
    CHECK(back.caller == grant.caller);
    CHECK(back.pid == grant.pid);
    CHECK(back.name == grant.name);
    CHECK(back.owned_by_caller);
    CHECK(back.stall_timeout == 60);
    // The rules travel as the same JSON: the worker reads what the daemon wrote.
    CHECK(back.policy == grant.policy);

    ChannelGrant root;
    root.id = 1;
    auto bare = grant_of(encode_channel_grant(root));
    CHECK(bare.id == 1);
    CHECK(bare.stall_timeout == 0);
    CHECK(bare.caller == JobCaller{});
    CHECK_FALSE(bare.name);
    CHECK_FALSE(bare.owned_by_caller);
    CHECK_FALSE(bare.policy);

    ChannelGrant largest = grant;
    largest.id = UINT64_MAX;
    largest.caller = {0xfffffffeU, 0xfffffffeU, {0, 0xfffffffeU}};
    largest.pid = pid_max_limit;
    back = grant_of(encode_channel_grant(largest));
    CHECK(back.id == UINT64_MAX);
    CHECK(back.caller == largest.caller);
    CHECK(back.pid == pid_max_limit);
}

TEST_CASE("a channel grant is read as strictly as a request") {
    const std::string caller = R"("caller":{"uid":1000,"gid":1000,"groups":[]})";
    auto grant = [&](const std::string& fields) {
        return R"({"grant_channel":{"id":3,)" + caller + fields + "}}";
    };
    // What the daemon writes, to start from.
    CHECK(grant_of(grant(R"(,"pid":1)")).pid == 1);
    const char* wrong[] = {
        R"(,"pid":1,"extra":true)",        // an unknown key
        R"(,"pid":"1")",                   // a pid as a string
        R"(,"pid":-1)",                    // no such pid
        R"(,"pid":4194305)",               // above PID_MAX_LIMIT
        R"(,"pid":1.5)",                   // a fraction
        R"(,"pid":1,"name":7)",            // a name that is no string
        R"(,"pid":1,"name":null)",         // nor absent
        R"(,"pid":1,"owned_by_caller":1)", // a flag that is no boolean
        R"(,"pid":1,"policy":"{}")",       // rules as a string, not an object
        R"(,"pid":1,"policy":[])",         // nor a list
        R"(,"pid":1,"pid":2)",             // a key twice
    };
    for (const char* fields : wrong) {
        CAPTURE(fields);
        CHECK_FALSE(decode_to_worker(grant(fields)));
    }
    CHECK(refusal(grant(R"(,"pid":1,"extra":true)")) == "grant_channel: unknown field \"extra\"");
    CHECK_FALSE(decode_to_worker(grant("")));                               // no pid
    CHECK_FALSE(decode_to_worker(R"({"grant_channel":{"id":3,"pid":1}})")); // no caller
    CHECK_FALSE(decode_to_worker(R"({"grant_channel":{"id":0,)" + caller + R"(,"pid":1}})"));
    CHECK_FALSE(decode_to_worker(R"({"grant_channel":{"id":"3",)" + caller + R"(,"pid":1}})"));
    CHECK_FALSE(decode_to_worker(R"({"grant_channel":[]})"));
    CHECK_FALSE(
        decode_to_worker(R"({"grant_channel":{"id":3,"pid":1,"caller":{"uid":1000,"gid":1000}}})"));
    const char* callers[] = {
        R"({"uid":1000,"gid":1000,"groups":[],"pid":1})", // an unknown key
        R"({"uid":4294967295,"gid":1000,"groups":[]})",   // -1 is no uid
        R"({"uid":-1,"gid":1000,"groups":[]})",
        R"({"uid":1000,"gid":4294967295,"groups":[]})",
        R"({"uid":1000,"gid":1000,"groups":[4294967295]})",
        R"({"uid":1000,"gid":1000,"groups":["wheel"]})",
        R"({"uid":1000,"gid":1000,"groups":{}})",
        R"({"uid":"1000","gid":1000,"groups":[]})",
    };
    for (const char* c : callers) {
        CAPTURE(c);
        CHECK_FALSE(decode_to_worker(R"({"grant_channel":{"id":3,"pid":1,"caller":)" +
                                     std::string(c) + "}}"));
    }
    // A grant is the message's one key: nothing of a job rides along.
    CHECK(refusal(R"({"grant_channel":{"id":3,)" + caller + R"(,"pid":1},"id":4})") ==
          "unknown field \"id\"");
}

TEST_CASE("revocations round-trip, and nothing but \"all\" or ids is one") {
    for (const RevokeChannels& revoke :
         {RevokeChannels{true, {}}, RevokeChannels{false, {}}, RevokeChannels{false, {1}},
          RevokeChannels{false, {1, 2, UINT64_MAX}}}) {
        auto message = decode_to_worker(encode_revoke(revoke));
        REQUIRE_MESSAGE(message, message.error().message);
        REQUIRE(std::holds_alternative<RevokeChannels>(*message));
        const auto& back = std::get<RevokeChannels>(*message);
        CHECK(back.all == revoke.all);
        CHECK(back.ids == revoke.ids);
    }
    const char* wrong[] = {
        R"({"revoke_channels":"some"})",
        R"({"revoke_channels":true})",
        R"({"revoke_channels":[-1]})",
        R"({"revoke_channels":["1"]})",
        R"({"revoke_channels":[1.5]})",
        R"({"revoke_channels":{"all":true}})",
        R"({"revoke_channels":null})",
        R"({"revoke_channels":"all","id":1})",
        R"({"revoke_channels":"all","revoke_channels":[1]})",
    };
    for (const char* bytes : wrong) {
        CAPTURE(bytes);
        CHECK_FALSE(decode_to_worker(bytes));
    }
    CHECK(refusal(R"({"revoke_channels":"some"})") ==
          "revoke_channels: expected \"all\" or an array of channel ids");
}

TEST_CASE("a spare is told to enter its namespace with an empty object, and nothing more") {
    auto message = decode_to_worker(encode_enter_namespace());
    REQUIRE(message);
    CHECK(std::holds_alternative<EnterNamespace>(*message));
    const char* wrong[] = {
        R"({"enter_namespace":true})",
        R"({"enter_namespace":{"fd":4}})",
        R"({"enter_namespace":{},"id":1})",
        R"({"enter_namespace":null})",
    };
    for (const char* bytes : wrong) {
        CAPTURE(bytes);
        CHECK_FALSE(decode_to_worker(bytes));
    }
    CHECK(refusal(R"({"enter_namespace":{"fd":4}})") == "enter_namespace: unknown field \"fd\"");
    CHECK(decode_job(encode_enter_namespace()).error().message == "expected a job");
}

TEST_CASE("a job is not a grant, and a grant is not a job") {
    CHECK(decode_job(encode_channel_grant(full_grant())).error().message == "expected a job");
    CHECK(decode_job(encode_revoke({true, {}})).error().message == "expected a job");
    WorkerJob job;
    job.id = 5;
    SocketSpec s;
    s.family = AF_INET;
    s.type = SOCK_DGRAM;
    job.specs = {s};
    auto message = decode_to_worker(encode_job(job));
    REQUIRE(message);
    CHECK(std::holds_alternative<WorkerJob>(*message));
}

TEST_CASE("notices round-trip, counting every error code") {
    auto closed = decode_notice(encode_notice(ChannelClosed{42}));
    REQUIRE(closed);
    REQUIRE(std::holds_alternative<ChannelClosed>(*closed));
    CHECK(std::get<ChannelClosed>(*closed).id == 42);

    ChannelsServed served{1000, 2000, {}};
    std::uint64_t n = 1;
    for (auto code = ErrorCode::invalid_request; code <= ErrorCode::timeout;
         code = static_cast<ErrorCode>(static_cast<int>(code) + 1)) {
        served.errors[code] = n++;
    }
    served.errors[ErrorCode::kernel] = UINT64_MAX;
    auto back = decode_notice(encode_notice(served));
    REQUIRE(back);
    REQUIRE(std::holds_alternative<ChannelsServed>(*back));
    const auto& read = std::get<ChannelsServed>(*back);
    CHECK(read.requests == 1000);
    CHECK(read.sockets == 2000);
    CHECK(read.errors == served.errors);

    auto none = decode_notice(encode_notice(ChannelsServed{}));
    REQUIRE(none);
    CHECK(std::get<ChannelsServed>(*none).errors.empty());
}

TEST_CASE("what does not read as a notice is none") {
    const char* not_notices[] = {
        // Replies, which share the worker's channel with notices.
        R"({"id":1,"ok":true,"sockets":[]})",
        R"({"error":{"code":"kernel","message":"x"},"id":null,"ok":false})",
        // Notices that do not read.
        R"({"channel_closed":0})",
        R"({"channel_closed":-1})",
        R"({"channel_closed":"1"})",
        R"({"channel_closed":1,"channels_served":{"requests":0,"sockets":0,"errors":{}}})",
        R"({"channel_closed":1,"id":2})",
        R"({"channel_closed":1,"channel_closed":2})",
        R"({"channels_served":{"requests":1,"sockets":0}})",
        R"({"channels_served":{"requests":1,"sockets":0,"errors":{},"spare":0}})",
        R"({"channels_served":{"requests":-1,"sockets":0,"errors":{}}})",
        R"({"channels_served":{"requests":1,"sockets":"0","errors":{}}})",
        R"({"channels_served":{"requests":1,"sockets":0,"errors":[]}})",
        R"({"channels_served":{"requests":1,"sockets":0,"errors":{"kernel":-1}}})",
        R"({"channels_served":{"requests":1,"sockets":0,"errors":{"kernel":1.5}}})",
        R"({"channels_served":{"requests":1,"sockets":0,"errors":{"no_such_code":1}}})",
        R"({"channels_served":[]})",
        R"({"channel_gone":1})",
        R"({"channel)",
        "",
    };
    for (const char* bytes : not_notices) {
        CAPTURE(bytes);
        CHECK_FALSE(decode_notice(bytes));
    }
}
