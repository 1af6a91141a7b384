// Sending and receiving one SOCK_SEQPACKET message with up to 253 descriptors.
// Every component that passes fds goes through these two functions.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nsbroker/protocol.hpp"
#include "nsbroker/unique_fd.hpp"

namespace nsbroker::proto {

struct Message {
    std::string data;
    std::vector<UniqueFd> fds; // received with MSG_CMSG_CLOEXEC; owned here
};

enum class ReceiveStatus {
    message,     // a whole message (possibly empty) and its fds
    would_block, // non-blocking socket, nothing queued
    closed,      // the peer closed the connection
    too_large,   // the message exceeded max_size; its data and fds were dropped
    // MSG_CTRUNC: the receiver was at its descriptor limit (or past
    // SCM_MAX_FD), and the kernel dropped descriptors the message carried.
    // The message's data is kept, so that whatever it answered can be
    // failed; the descriptors that did arrive are closed.
    fds_truncated,
};

struct Received {
    ReceiveStatus status = ReceiveStatus::closed;
    Message message;
};

// Receives one message of at most max_size bytes. Non-blocking when the socket
// is, or when dont_wait is set. Throws SystemError on any other failure.
Received receive_message(int fd, std::size_t max_size = max_message_size, bool dont_wait = false);

// A descriptor a peer sent may be a socket set to linger: closing it would
// then wait for its unsent data, holding up whoever closes it. Switches
// lingering off on those that are sockets, so that the kernel finishes in
// the background. Call before closing descriptors a peer sent.
void never_linger(const std::vector<UniqueFd>& fds);

// Reads and drops every message queued on fd without waiting, closing the
// descriptors they carry. For an end nobody will serve again: a descriptor
// of its peer's own end, queued here, would otherwise keep that peer, and
// whatever it holds unread, alive for as long as fd is open. Throws as
// receive_message does.
void discard_queued(int fd);

enum class SendStatus { sent, would_block, closed };

// Sends one message with the given fds, which stay owned by the caller (the
// kernel duplicates them into the message). At most 253 fds. Throws
// SystemError on failures other than would-block and a closed peer.
SendStatus send_message(int fd, std::string_view data, std::span<const int> fds = {},
                        bool dont_wait = false);

// Raw descriptor numbers of a list of owned fds, for send_message.
std::vector<int> raw_fds(const std::vector<UniqueFd>& fds);

} // namespace nsbroker::proto
