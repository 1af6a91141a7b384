// Client: one SOCK_SEQPACKET connection shared by every calling thread.
//
// A caller sends its request, then waits for its reply. One waiting thread at
// a time reads from the socket and hands each reply to the thread whose id it
// carries, so replies may arrive in any order and no thread is dedicated to
// reading.
#include "nsbroker/client.hpp"

#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "nsbroker/address.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "nsbroker/netns_file.hpp"
#include "nsbroker_config.h"

namespace nsbroker {

std::string default_socket_path() {
    const char* env = std::getenv("NSBROKER_SOCKET");
    return env && *env ? env : NSBROKER_DEFAULT_SOCKET;
}

// ---- Netns -----------------------------------------------------------------

Netns Netns::name(std::string n) {
    Netns ns;
    ns.ref_ = proto::NetnsRef::by_name(std::move(n));
    return ns;
}

Netns Netns::path(std::string p) {
    Netns ns;
    ns.ref_ = proto::NetnsRef::by_path(std::move(p));
    return ns;
}

Netns Netns::pid(pid_t p) {
    Netns ns;
    ns.ref_ = proto::NetnsRef::by_pid(p);
    return ns;
}

Netns Netns::fd(int f) {
    Netns ns;
    ns.ref_ = proto::NetnsRef::by_fd();
    ns.fd_ = f;
    return ns;
}

Result<Netns> Netns::parse(std::string_view text) {
    if (text.starts_with("pid:")) {
        auto digits = text.substr(4);
        pid_t p = 0;
        for (char ch : digits) {
            if (ch < '0' || ch > '9' || p > 4194304) {
                p = -1;
                break;
            }
            p = p * 10 + (ch - '0');
        }
        if (digits.empty() || p <= 0) {
            return make_error(ErrorCode::invalid_request,
                              "\"" + std::string(text) + "\": expected pid:N");
        }
        return pid(p);
    }
    if (text.find('/') != std::string_view::npos) {
        if (text.front() != '/') {
            char cwd[4096];
            if (::getcwd(cwd, sizeof(cwd)) == nullptr) {
                return make_error(ErrorCode::io, "getcwd failed", errno);
            }
            return path(std::string(cwd) + "/" + std::string(text));
        }
        return path(std::string(text));
    }
    if (auto ok = proto::check_netns_name(text); !ok) {
        return std::move(ok).error();
    }
    return name(std::string(text));
}

// ---- Client ----------------------------------------------------------------

namespace {

// A decoded reply and the descriptors that came with it.
struct Answer {
    proto::ReplyBody body;
    std::vector<UniqueFd> fds;
};

} // namespace

struct Client::Impl {
    UniqueFd fd;
    std::atomic<std::uint64_t> next_id{1};

    struct Slot {
        bool done = false;
        proto::Message message;
    };

    std::mutex mutex; // guards everything below
    std::condition_variable replied;
    bool reading = false;
    std::optional<Error> broken; // set once the connection failed
    std::unordered_map<std::uint64_t, Slot*> waiting;

    // Sends request (and at most one borrowed fd) and waits for its reply.
    Result<Answer> call(proto::Request request, int fd_to_send = -1) {
        request.id = next_id.fetch_add(1, std::memory_order_relaxed);
        std::string bytes = proto::encode_request(request);
        if (bytes.size() > proto::max_message_size) {
            return make_error(ErrorCode::limit, "request larger than 64 KiB");
        }
        Slot slot;
        {
            std::lock_guard lock(mutex);
            if (broken) {
                return *broken;
            }
            waiting.emplace(request.id, &slot);
        }
        try {
            int fds[1] = {fd_to_send};
            // The socket blocks, so a send either goes or finds the daemon
            // gone. A daemon that closed the connection may have said why
            // first (a limit, say): the reads below find that, then the end.
            (void)proto::send_message(fd.get(), bytes,
                                      std::span<const int>(fds, fd_to_send >= 0 ? 1 : 0));
        } catch (const SystemError& e) {
            fail_all(make_error(ErrorCode::io, e.what(), e.sys_errno()));
        }
        std::unique_lock lock(mutex);
        while (!slot.done) {
            if (broken) {
                waiting.erase(request.id);
                return *broken;
            }
            if (reading) {
                replied.wait(lock);
                continue;
            }
            reading = true;
            lock.unlock();
            read_one();
            lock.lock();
            reading = false;
            replied.notify_all();
        }
        waiting.erase(request.id);
        lock.unlock();
        auto reply = proto::decode_reply(slot.message.data, request.op);
        if (!reply) {
            Error e = std::move(reply).error();
            return make_error(ErrorCode::io, "unreadable reply from nsbrokerd: " + e.message);
        }
        return Answer{std::move(reply->body), std::move(slot.message.fds)};
    }

    // Reads one message and delivers it; called without the lock held.
    void read_one() {
        proto::Received received;
        try {
            received = proto::receive_message(fd.get());
        } catch (const SystemError& e) {
            fail_all(make_error(ErrorCode::io, e.what(), e.sys_errno()));
            return;
        }
        if (received.status != proto::ReceiveStatus::message) {
            fail_all(make_error(ErrorCode::io, "nsbrokerd closed the connection", ECONNRESET));
            return;
        }
        auto id = proto::reply_id(received.message.data);
        if (!id) {
            // Without an id the daemon speaks of the connection itself (it
            // was refused, say): every call on it gets that error.
            auto reply = proto::decode_reply(received.message.data, proto::Op::ping);
            if (reply) {
                if (auto* e = std::get_if<Error>(&reply->body)) {
                    fail_all(*e);
                }
            }
            return;
        }
        std::lock_guard lock(mutex);
        if (auto it = waiting.find(*id); it != waiting.end()) {
            it->second->message = std::move(received.message);
            it->second->done = true;
        }
        // A reply nobody waits for is dropped, and its fds are closed.
    }

    void fail_all(Error e) {
        std::lock_guard lock(mutex);
        if (!broken) {
            broken = std::move(e);
        }
        replied.notify_all();
    }
};

Result<Client> Client::connect(std::string_view path) {
    std::string target = path.empty() ? default_socket_path() : std::string(path);
    auto address = proto::parse_address(AF_UNIX, target);
    if (!address) {
        return make_error(ErrorCode::invalid_request, "bad socket path \"" + target + "\"");
    }
    UniqueFd fd{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)};
    if (!fd) {
        return make_error(ErrorCode::io, std::string("socket: ") + std::strerror(errno), errno);
    }
    if (::connect(fd.get(), address->get(), address->length) < 0) {
        int err = errno;
        return make_error(ErrorCode::io,
                          "cannot connect to nsbrokerd at " + target + ": " + std::strerror(err),
                          err);
    }
    auto impl = std::make_unique<Impl>();
    impl->fd = std::move(fd);
    return Client(std::move(impl));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

int Client::fd() const noexcept {
    return impl_->fd.get();
}

namespace {

// The reply's value of the expected kind, or its error.
template <typename T>
Result<T> expect(proto::ReplyBody& body) {
    if (auto* e = std::get_if<Error>(&body)) {
        return std::move(*e);
    }
    if (auto* value = std::get_if<T>(&body)) {
        return std::move(*value);
    }
    return make_error(ErrorCode::io, "nsbrokerd sent a reply of the wrong kind");
}

template <typename T>
Result<T> expect(Result<Answer> answer) {
    if (!answer) {
        return std::move(answer).error();
    }
    return expect<T>(answer->body);
}

proto::Request request_for(proto::Op op) {
    proto::Request r;
    r.op = op;
    return r;
}

} // namespace

Result<HelloReply> Client::hello() {
    return expect<HelloReply>(impl_->call(request_for(proto::Op::hello)));
}

Result<void> Client::ping() {
    auto pong = expect<proto::PongReply>(impl_->call(request_for(proto::Op::ping)));
    if (!pong) {
        return std::move(pong).error();
    }
    return {};
}

Result<NamespacesReply> Client::namespaces() {
    return expect<NamespacesReply>(impl_->call(request_for(proto::Op::namespaces)));
}

Result<StatsReply> Client::stats() {
    return expect<StatsReply>(impl_->call(request_for(proto::Op::stats)));
}

Result<std::vector<Socket>> Client::sockets(const Netns& netns,
                                            const std::vector<SocketSpec>& specs) {
    // A path is opened here, with the caller's own access, and sent as a
    // descriptor, so that the daemon never has to trust a path; only when it
    // cannot be opened here is the daemon asked to open it.
    UniqueFd opened;
    Netns target = netns;
    if (netns.ref().kind == proto::NetnsRef::Kind::path && netns.borrowed_fd() < 0) {
        if (auto file = proto::open_netns_file(netns.ref().text)) {
            opened = std::move(file->fd);
            target = Netns::fd(opened.get());
        }
    }
    proto::Request r = request_for(proto::Op::socket);
    r.netns = target.ref();
    r.specs = specs;
    if (specs.empty() || proto::socket_count(specs) > proto::max_fds_per_message) {
        return make_error(ErrorCode::limit, "a request asks for 1 to 253 sockets");
    }
    auto answer = impl_->call(std::move(r), target.borrowed_fd());
    if (!answer) {
        return std::move(answer).error();
    }
    auto reply = expect<proto::SocketReply>(answer->body);
    if (!reply) {
        return std::move(reply).error();
    }
    auto& fds = answer->fds;
    if (fds.size() != reply->sockets.size()) {
        return make_error(ErrorCode::io, "nsbrokerd sent " + std::to_string(fds.size()) +
                                             " descriptors for " +
                                             std::to_string(reply->sockets.size()) + " sockets");
    }
    std::vector<Socket> out;
    out.reserve(fds.size());
    for (std::size_t i = 0; i < fds.size(); ++i) {
        out.emplace_back(std::move(fds[i]), std::move(reply->sockets[i]));
    }
    return out;
}

Result<Socket> Client::socket(const Netns& netns, const SocketSpec& spec) {
    SocketSpec one = spec;
    one.count = 1;
    auto list = sockets(netns, {one});
    if (!list) {
        return std::move(list).error();
    }
    return std::move(list->front());
}

} // namespace nsbroker
