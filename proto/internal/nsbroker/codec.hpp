// The JSON codec of requests and replies: the only place that turns them into
// bytes and back (worker jobs: worker_protocol.hpp). Decoders validate fully and
// say precisely what is wrong, with the JSON path of the offending field
// ("sockets[2].bind: expected a string").
#pragma once

#include <string>
#include <string_view>

#include "nsbroker/protocol.hpp"

namespace nsbroker::proto {

// The protocol's name of an operation ("socket").
std::string_view to_string(Op op) noexcept;

// Total number of sockets the specs ask for.
std::size_t socket_count(const std::vector<SocketSpec>& specs) noexcept;

// Requests. A decode error carries the id when it could be read, so that the
// error reply can still be matched by the client.
struct RequestError {
    std::optional<std::uint64_t> id;
    Error error;
};
std::string encode_request(const Request& request);
std::variant<Request, RequestError> decode_request(std::string_view bytes);
// A request sent on a direct worker channel: only "socket", and no "netns"
// or "channel" (the channel serves one namespace). Otherwise as strict as
// decode_request, with the same errors.
std::variant<Request, RequestError> decode_channel_request(std::string_view bytes);
// The same, without the quick reader of the library's own requests that
// decode_channel_request tries first: for tests to hold the two to one result.
std::variant<Request, RequestError> decode_channel_request_in_full(std::string_view bytes);

// Replies. decode_reply needs the operation the reply answers.
std::string encode_reply(const Reply& reply);
Result<Reply> decode_reply(std::string_view bytes, Op op);
// The id of a reply, read before the caller knows which request it answers.
std::optional<std::uint64_t> reply_id(std::string_view bytes);

// What nsbrokerd measures to cut the `namespaces` listing into pages: the
// bytes one entry adds to a reply (its separating comma included), and the
// most that a reply takes besides its entries (with the largest id and the
// longest cursor). A page whose entries add up to at most
// max_message_size - namespaces_reply_overhead() fits in one message.
std::size_t namespace_entry_size(const NamespaceInfo& entry);
std::size_t namespaces_reply_overhead();

// Names and numbers of socket families, types and protocols as the protocol
// spells them. Unknown names yield std::nullopt; numbers are always accepted
// by the decoders.
std::optional<int> family_from_name(std::string_view name);
std::optional<int> type_from_name(std::string_view name);
std::optional<int> protocol_from_name(int family, std::string_view name);
std::optional<std::string> protocol_name(int family, int protocol);
std::string family_name(int family);
std::string type_name(int type);

// /run/netns names: one path component, not "." or "..", at most 255 bytes.
Result<void> check_netns_name(std::string_view name);

} // namespace nsbroker::proto
