// The worker protocol's codec: jobs round-trip, and are refused as precisely
// as requests.
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
