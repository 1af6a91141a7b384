// libFuzzer target: every decoder of the protocol, on any bytes.
// A message that decodes must encode and decode again to the same value;
// nothing may crash, leak or read out of bounds.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "nsbroker/address.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/worker_protocol.hpp"

using namespace nsbroker::proto;

namespace {

[[noreturn]] void mismatch() {
    __builtin_trap();
}

void check_request(std::string_view bytes) {
    auto decoded = decode_request(bytes);
    auto* request = std::get_if<Request>(&decoded);
    if (request == nullptr) {
        return;
    }
    auto again = decode_request(encode_request(*request));
    auto* second = std::get_if<Request>(&again);
    if (second == nullptr || second->id != request->id || second->op != request->op ||
        second->specs != request->specs) {
        mismatch();
    }
    for (const auto& spec : request->specs) {
        if (spec.bind) {
            (void)parse_address(spec.family, *spec.bind);
        }
    }
}

void check_reply(std::string_view bytes, Op op) {
    auto reply = decode_reply(bytes, op);
    if (!reply) {
        return;
    }
    auto again = decode_reply(encode_reply(*reply), op);
    if (!again || again->id != reply->id || again->body.index() != reply->body.index()) {
        mismatch();
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view bytes(reinterpret_cast<const char*>(data), size);
    check_request(bytes);
    for (Op op : {Op::hello, Op::ping, Op::socket, Op::namespaces, Op::stats}) {
        check_reply(bytes, op);
    }
    (void)decode_to_worker(bytes);
    (void)decode_notice(bytes);
    if (auto request = decode_channel_request(bytes); std::holds_alternative<Request>(request)) {
        const auto& r = std::get<Request>(request);
        if (r.op != Op::socket || r.netns || r.channel || r.specs.empty()) {
            mismatch();
        }
    }
    (void)reply_id(bytes);
    return 0;
}
