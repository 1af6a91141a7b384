// Client: one SOCK_SEQPACKET connection shared by every calling thread.
//
// A caller sends its request, then waits for its reply. One waiting thread at
// a time reads from the socket and hands each reply to the thread whose id it
// carries, so replies may arrive in any order and no thread is dedicated to
// reading.
#include "nsbroker/client.hpp"

#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "nsbroker/address.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "nsbroker/netns_file.hpp"
#include "nsbroker/netns_reference.hpp"
#include "nsbroker_config.h"

// From linux/pidfd.h of Linux 6.11, which Debian 12's headers predate.
#ifndef PIDFD_GET_NET_NAMESPACE
#define PIDFD_GET_NET_NAMESPACE _IO(0xFF, 4)
#endif

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
    auto ref = proto::parse_netns_reference(text);
    if (!ref) {
        return std::move(ref).error();
    }
    // A relative path is the caller's, from its own working directory.
    if (ref->kind == proto::NetnsRef::Kind::path && ref->text.front() != '/') {
        char cwd[4096];
        if (::getcwd(cwd, sizeof(cwd)) == nullptr) {
            return make_error(ErrorCode::io, "getcwd failed", errno);
        }
        ref->text = std::string(cwd) + "/" + ref->text;
    }
    Netns ns;
    ns.ref_ = std::move(*ref);
    return ns;
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

// A unix socket's bind, listen and connect are done here, in the caller's
// process, never by nsbrokerd: a path is then looked up in the caller's own
// mount namespace and working directory and checked against the caller's own
// rights, and a peer sees the caller's credentials and pid. Nothing is lost by
// it, since an abstract name is looked up in the namespace of the socket, not
// of the process that binds or connects it.
bool unix_steps_here(const SocketSpec& s) {
    return s.family == AF_UNIX && (s.bind || s.listen || s.connect);
}

std::string where(std::size_t index) {
    return "sockets[" + std::to_string(index) + "]";
}

// What nsbrokerd would have refused in the steps it no longer sees, refused
// in its words.
Result<void> check_unix_steps(std::size_t index, const SocketSpec& s) {
    for (const auto& [field, text] :
         {std::pair{"bind", &s.bind}, std::pair{"connect", &s.connect}}) {
        if (*text) {
            if (auto address = proto::parse_address(AF_UNIX, **text); !address) {
                Error e = std::move(address).error();
                e.message = where(index) + "." + field + ": " + e.message;
                return e;
            }
        }
    }
    if (s.listen && (*s.listen < 0 || *s.listen > 65535)) {
        return make_error(ErrorCode::invalid_request,
                          where(index) + ".listen: out of range (0 to 65535)");
    }
    if (s.listen && s.connect) {
        return make_error(ErrorCode::invalid_request,
                          where(index) + ": \"listen\" and \"connect\" exclude each other");
    }
    return {};
}

Error unix_step_error(std::size_t index, const std::string& step) {
    int err = errno;
    ErrorCode code =
        (err == EPERM || err == EACCES) ? ErrorCode::permission_denied : ErrorCode::kernel;
    return make_error(code, where(index) + ": " + step + ": " + std::strerror(err), err);
}

// The worker's bind, listen and connect, in its order, on a socket it made.
Result<void> do_unix_steps(std::size_t index, const SocketSpec& s, int fd, SocketInfo& info) {
    if (s.bind) {
        auto address = proto::parse_address(AF_UNIX, *s.bind);
        if (::bind(fd, address->get(), address->length) < 0) {
            return unix_step_error(index, "bind " + *s.bind);
        }
    }
    if (s.listen && ::listen(fd, *s.listen) < 0) {
        return unix_step_error(index, "listen");
    }
    if (s.connect) {
        auto address = proto::parse_address(AF_UNIX, *s.connect);
        int rc = 0;
        do {
            rc = ::connect(fd, address->get(), address->length);
        } while (rc < 0 && errno == EINTR);
        // With nonblock, EAGAIN (a full backlog) is still a failure: unlike
        // EINPROGRESS it leaves the socket unconnected for good.
        if (rc < 0 && !(s.nonblock && errno == EINPROGRESS)) {
            return unix_step_error(index, "connect " + *s.connect);
        }
    }
    sockaddr_storage local{};
    socklen_t length = sizeof(local);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) == 0) {
        info.local = proto::format_address(reinterpret_cast<sockaddr*>(&local), length);
    }
    return {};
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

namespace {

// The network namespace of process pid, as this process may open it: the
// pidfd taken first pins the process, and where /proc has to be read, the
// process still living afterwards proves the pid was not reused between.
std::optional<UniqueFd> open_netns_of_process(pid_t pid) {
    UniqueFd pidfd{static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))};
    if (!pidfd) {
        return std::nullopt;
    }
    UniqueFd direct{::ioctl(pidfd.get(), PIDFD_GET_NET_NAMESPACE, 0)};
    if (direct && proto::verify_netns(direct.get())) {
        return direct;
    }
    auto file = proto::open_netns_file("/proc/" + std::to_string(pid) + "/ns/net");
    if (!file || ::syscall(SYS_pidfd_send_signal, pidfd.get(), 0, nullptr, 0) < 0) {
        return std::nullopt;
    }
    return std::move(file->fd);
}

} // namespace

Result<std::vector<Socket>> Client::sockets(const Netns& netns,
                                            const std::vector<SocketSpec>& specs) {
    // Paths and pids are opened here, with the caller's own rights, in its
    // own mount namespace, and sent as a descriptor: the kernel judges the
    // caller, and nsbrokerd never opens a path for anyone but root. A pid
    // this process may not read is left to the daemon, whose policy judges
    // the namespace it names.
    UniqueFd opened;
    Netns target = netns;
    if (netns.borrowed_fd() < 0) {
        if (netns.ref().kind == proto::NetnsRef::Kind::path) {
            auto file = proto::open_netns_file(netns.ref().text);
            if (!file) {
                return std::move(file).error();
            }
            opened = std::move(file->fd);
            target = Netns::fd(opened.get());
        } else if (netns.ref().kind == proto::NetnsRef::Kind::pid) {
            if (auto file = open_netns_of_process(netns.ref().pid)) {
                opened = std::move(*file);
                target = Netns::fd(opened.get());
            }
        }
    }
    proto::Request r = request_for(proto::Op::socket);
    r.netns = target.ref();
    r.specs = specs;
    if (specs.empty() || proto::socket_count(specs) > proto::max_fds_per_message) {
        return make_error(ErrorCode::limit, "a request asks for 1 to " +
                                                std::to_string(proto::max_fds_per_message) +
                                                " sockets");
    }
    for (std::size_t i = 0; i < r.specs.size(); ++i) {
        if (!unix_steps_here(r.specs[i])) {
            continue;
        }
        if (auto ok = check_unix_steps(i, r.specs[i]); !ok) {
            return std::move(ok).error();
        }
        r.specs[i].bind.reset();
        r.specs[i].listen.reset();
        r.specs[i].connect.reset();
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
    if (fds.size() != proto::socket_count(specs)) {
        return make_error(ErrorCode::io,
                          "nsbrokerd sent " + std::to_string(fds.size()) + " sockets for " +
                              std::to_string(proto::socket_count(specs)) + " asked for");
    }
    std::vector<Socket> out;
    out.reserve(fds.size());
    std::size_t next = 0;
    for (std::size_t i = 0; i < specs.size(); ++i) {
        for (unsigned n = 0; n < specs[i].count; ++n, ++next) {
            if (unix_steps_here(specs[i])) {
                if (auto ok = do_unix_steps(i, specs[i], fds[next].get(), reply->sockets[next]);
                    !ok) {
                    return std::move(ok).error();
                }
            }
            out.emplace_back(std::move(fds[next]), std::move(reply->sockets[next]));
        }
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
