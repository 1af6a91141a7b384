// One message, up to 253 fds, over SOCK_SEQPACKET. The control buffer always
// has room for SCM_MAX_FD descriptors, received descriptors are owned at once
// and are close-on-exec from the moment they arrive.
#include "nsbroker/fd_passing.hpp"

#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "nsbroker/throw_errno.hpp"

namespace nsbroker::proto {

namespace {

constexpr std::size_t control_size = CMSG_SPACE(sizeof(int) * max_fds_per_message);

union ControlBuffer {
    char bytes[control_size];
    cmsghdr align;
};

// Takes ownership of every descriptor in the control messages.
void collect_fds(msghdr& msg, std::vector<UniqueFd>& out) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char* data = CMSG_DATA(c);
        for (std::size_t i = 0; i < n; ++i) {
            int fd;
            std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
            out.emplace_back(fd);
        }
    }
}

} // namespace

Received receive_message(int fd, std::size_t max_size, bool dont_wait) {
    // One byte more than allowed, so that an oversized message is detected
    // even where the kernel does not report MSG_TRUNC. The buffer is reused,
    // and never zero-filled: that would cost more than the message, and
    // would make a worker hold 64 KiB of pages that only recvmsg should touch.
    thread_local std::unique_ptr<char[]> buffer;
    thread_local std::size_t buffer_size = 0;
    if (buffer_size < max_size + 1) {
        buffer.reset(new char[max_size + 1]);
        buffer_size = max_size + 1;
    }
    Received result;
    ControlBuffer control;
    iovec iov{buffer.get(), max_size + 1};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof(control.bytes);

    int flags = MSG_CMSG_CLOEXEC | (dont_wait ? MSG_DONTWAIT : 0);
    ssize_t n;
    bool reset = false;
    for (;;) {
        n = ::recvmsg(fd, &msg, flags);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        // A peer that closed with our messages unread makes the kernel report
        // ECONNRESET once; what it sent before closing is still queued behind.
        if (n < 0 && errno == ECONNRESET && !reset) {
            reset = true;
            flags |= MSG_DONTWAIT;
            continue;
        }
        break;
    }
    if (n < 0) {
        if (reset || errno == ECONNRESET) {
            result.status = ReceiveStatus::closed;
            return result;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            result.status = ReceiveStatus::would_block;
            return result;
        }
        throw_errno("recvmsg");
    }
    collect_fds(msg, result.message.fds);
    if ((msg.msg_flags & MSG_CTRUNC) != 0) {
        result.status = ReceiveStatus::fds_truncated;
        never_linger(result.message.fds);
        result.message.fds.clear();
        if ((msg.msg_flags & MSG_TRUNC) == 0 && static_cast<std::size_t>(n) <= max_size) {
            result.message.data.assign(buffer.get(), static_cast<std::size_t>(n));
        }
        return result;
    }
    if (n == 0 && result.message.fds.empty()) {
        // SOCK_SEQPACKET reports a closed peer as a zero-length read; the
        // protocol has no empty messages.
        result.status = ReceiveStatus::closed;
        return result;
    }
    if ((msg.msg_flags & MSG_TRUNC) != 0 || static_cast<std::size_t>(n) > max_size) {
        result.status = ReceiveStatus::too_large;
        result.message = {};
        return result;
    }
    result.message.data.assign(buffer.get(), static_cast<std::size_t>(n));
    result.status = ReceiveStatus::message;
    return result;
}

void never_linger(const std::vector<UniqueFd>& fds) {
    for (const auto& fd : fds) {
        struct stat st {};
        if (::fstat(fd.get(), &st) == 0 && S_ISSOCK(st.st_mode)) {
            const linger off{0, 0};
            (void)::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &off, sizeof off);
        }
    }
}

void discard_queued(int fd) {
    for (;;) {
        auto received = receive_message(fd, max_message_size, true);
        never_linger(received.message.fds);
        if (received.status == ReceiveStatus::would_block ||
            received.status == ReceiveStatus::closed) {
            return;
        }
    }
}

SendStatus send_message(int fd, std::string_view data, std::span<const int> fds, bool dont_wait) {
    if (fds.size() > max_fds_per_message) {
        throw std::invalid_argument("send_message: more than " +
                                    std::to_string(max_fds_per_message) + " file descriptors");
    }
    iovec iov{const_cast<char*>(data.data()), data.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    ControlBuffer control;
    if (!fds.empty()) {
        std::memset(control.bytes, 0, sizeof(control.bytes));
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    int flags = MSG_NOSIGNAL | (dont_wait ? MSG_DONTWAIT : 0);
    ssize_t n;
    do {
        n = ::sendmsg(fd, &msg, flags);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return SendStatus::would_block;
        }
        if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN) {
            return SendStatus::closed;
        }
        throw_errno("sendmsg");
    }
    return SendStatus::sent;
}

std::vector<int> raw_fds(const std::vector<UniqueFd>& fds) {
    std::vector<int> raw;
    raw.reserve(fds.size());
    for (const auto& f : fds) {
        raw.push_back(f.get());
    }
    return raw;
}

} // namespace nsbroker::proto
