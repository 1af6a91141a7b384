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
        second->specs != request->specs || second->cursor != request->cursor ||
        second->limit != request->limit) {
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
    const auto* page = std::get_if<NamespacesReply>(&reply->body);
    if (page && std::get<NamespacesReply>(again->body).next_cursor != page->next_cursor) {
        mismatch();
    }
}

// decode_channel_request reads the library's own requests with a quicker
// reader first: it must read exactly what the full decoder reads.
void check_channel_request(std::string_view bytes) {
    auto quick = decode_channel_request(bytes);
    auto full = decode_channel_request_in_full(bytes);
    if (quick.index() != full.index()) {
        mismatch();
    }
    if (const auto* r = std::get_if<Request>(&quick)) {
        const auto& f = std::get<Request>(full);
        if (r->id != f.id || r->op != f.op || r->netns.has_value() || f.netns.has_value() ||
            r->specs != f.specs || r->channel != f.channel) {
            mismatch();
        }
        if (r->op != Op::socket || r->channel || r->specs.empty()) {
            mismatch();
        }
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
    check_channel_request(bytes);
    (void)reply_id(bytes);
    return 0;
}
