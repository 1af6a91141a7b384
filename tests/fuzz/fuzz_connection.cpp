// libFuzzer target: a whole client connection to a real in-process core and
// socket front end.
// The input is a sequence of messages, each with up to three descriptors of
// assorted kinds (a file, a pipe, a socket, a network namespace). Every
// message must get exactly one well-formed reply, and the broker must keep
// serving. Run it inside a fresh network namespace (unshare -n): the workers
// it starts make their sockets there, where nothing is reachable.
#include <fcntl.h>
#include <fuzzer/FuzzedDataProvider.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <string>

#include "core/core.hpp"
#include "frontend/socket_frontend.hpp"
#include "fuzz_descriptors.hpp"
#include "nsbroker/address.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "service.hpp"

using namespace nsbroker;

namespace {

std::unique_ptr<daemon::Service> service;
std::unique_ptr<daemon::Core> core;
std::unique_ptr<daemon::SocketFrontend> frontend;
std::string socket_path;

[[noreturn]] void broken(const char* what) {
    std::fprintf(stderr, "fuzz_connection: %s\n", what);
    std::abort();
}

using fuzz::descriptor;

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    spdlog::set_level(spdlog::level::off);
    char dir[] = "/tmp/nsbroker-fuzz-XXXXXX";
    if (::mkdtemp(dir) == nullptr) {
        broken("mkdtemp");
    }
    socket_path = std::string(dir) + "/nsbroker.sock";
    daemon::CoreConfig config;
    config.workers.idle_timeout = std::chrono::seconds(1);
    config.workers.netns_dir = dir; // names resolve here: none exist
    service = std::make_unique<daemon::Service>();
    core = std::make_unique<daemon::Core>(service->loop(), std::move(config));
    daemon::SocketFrontendConfig listen;
    listen.socket_path = socket_path;
    frontend = std::make_unique<daemon::SocketFrontend>(service->loop(), *core, std::move(listen));
    service->attach(*core, {frontend.get()}, std::chrono::seconds(0));
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider input(data, size);
    auto address = proto::parse_address(AF_UNIX, socket_path);
    UniqueFd client{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)};
    if (::connect(client.get(), address->get(), address->length) < 0) {
        broken("connect");
    }
    int sent = 0;
    while (input.remaining_bytes() > 0 && sent < 16) {
        auto fd_count = input.ConsumeIntegralInRange<int>(0, 3);
        std::vector<UniqueFd> fds;
        for (int i = 0; i < fd_count; ++i) {
            fds.push_back(descriptor(input.ConsumeIntegralInRange<int>(0, 3)));
        }
        std::string message = input.ConsumeRandomLengthString(4096);
        if (message.empty()) {
            continue; // an empty message is how a closed peer reads
        }
        if (proto::send_message(client.get(), message, proto::raw_fds(fds), true) !=
            proto::SendStatus::sent) {
            break;
        }
        ++sent;
    }
    int replies = 0;
    for (int round = 0; round < 2000 && replies < sent; ++round) {
        service->run_once(1000);
        for (;;) {
            auto r = proto::receive_message(client.get(), proto::max_message_size, true);
            if (r.status != proto::ReceiveStatus::message) {
                break;
            }
            ++replies;
            auto reply = nlohmann::json::parse(r.message.data, nullptr, false);
            if (!reply.is_object() || !reply.contains("ok") || !reply.contains("id")) {
                broken("malformed reply");
            }
            if (reply["ok"] == false && !r.message.fds.empty()) {
                broken("an error reply carried descriptors");
            }
        }
    }
    if (replies != sent) {
        broken("a message went unanswered");
    }
    client.reset();
    for (int round = 0; round < 10; ++round) {
        service->run_once(0);
    }
    return 0;
}
