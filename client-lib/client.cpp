// Client: one SOCK_SEQPACKET connection to nsbrokerd shared by every calling
// thread, the direct channels to workers it granted, and their reservoirs.
//
// A caller sends its request, then waits for its reply. One waiting thread at
// a time reads from the socket and hands each reply to the thread whose id it
// carries, so replies may arrive in any order and no thread is dedicated to
// reading. Direct channels work the same way, one namespace each. Requests
// submitted from an event loop complete through callbacks, run by whichever
// thread reads their replies, and wait in the Client until completions().
#include "nsbroker/client.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
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

using Clock = std::chrono::steady_clock;

// When a call must have its answer (ClientOptions::timeout from its start),
// or never.
class Deadline {
  public:
    explicit Deadline(std::chrono::milliseconds timeout) : timeout_(timeout) {
        if (timeout.count() > 0) {
            at_ = Clock::now() + timeout;
        }
    }

    [[nodiscard]] bool passed() const { return at_ && Clock::now() >= *at_; }
    [[nodiscard]] std::optional<Clock::time_point> at() const { return at_; }

    // Waits on woken until notified or the deadline passes.
    void wait(std::condition_variable& woken, std::unique_lock<std::mutex>& lock) const {
        if (at_) {
            woken.wait_until(lock, *at_);
        } else {
            woken.wait(lock);
        }
    }

    // The error of a call that passed it, waiting for who.
    [[nodiscard]] Error missed(const std::string& who) const {
        return make_error(
            ErrorCode::timeout,
            who + " did not answer within " + std::to_string(timeout_.count()) + " ms", ETIMEDOUT);
    }

  private:
    std::chrono::milliseconds timeout_;
    std::optional<Clock::time_point> at_;
};

// A blocking read or send on a link returns at least this often while a
// call waits, to look at its deadline: an eighth of the timeout, from 5 ms
// to 1 s. Waiting threads that do not read wake at their deadline itself.
timeval wait_slice(std::chrono::milliseconds timeout) {
    auto slice = std::clamp<std::chrono::milliseconds>(timeout / 8, std::chrono::milliseconds(5),
                                                       std::chrono::seconds(1));
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(slice).count();
    return timeval{static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
}

// What a reply that came without its descriptors tells its caller.
Error descriptors_lost() {
    rlimit limit{};
    ::getrlimit(RLIMIT_NOFILE, &limit);
    return make_error(ErrorCode::limit,
                      "the reply's descriptors were lost: this process is at its descriptor "
                      "limit (RLIMIT_NOFILE " +
                          std::to_string(limit.rlim_cur) + ")",
                      EMFILE);
}

// One SOCK_SEQPACKET connection shared by every calling thread: to nsbrokerd,
// or a direct channel to a worker. A blocking caller sends its request, then
// waits for its reply; one waiting thread at a time reads and hands each reply
// to the thread whose id it carries. A request submitted from an event loop
// is sent without blocking (or held until the socket has room) and its reply
// goes to a callback, from whichever thread reads it.
class Link {
  public:
    // timeout: ClientOptions::timeout; zero leaves the socket's reads and
    // sends blocking for ever.
    Link(UniqueFd fd, std::chrono::milliseconds timeout) : fd_(std::move(fd)) {
        if (timeout.count() > 0) {
            const timeval slice = wait_slice(timeout);
            ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &slice, sizeof slice);
            ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &slice, sizeof slice);
        }
    }

    // How a call went: its answer or error, and whether the request left at
    // all (a link closed before the send can be retried elsewhere).
    struct Outcome {
        Result<Answer> answer;
        bool sent = true;
    };
    using Done = std::function<void(Outcome)>;

    // Sends request (numbered here, with at most one borrowed fd) and waits
    // for its reply until deadline. A reply that comes after is dropped,
    // with its descriptors.
    Outcome call(proto::Request request, int fd_to_send, const Deadline& deadline) {
        if (deadline.passed()) {
            return {deadline.missed(what_), false};
        }
        request.id = next_id_.fetch_add(1, std::memory_order_relaxed);
        std::string bytes = proto::encode_request(request);
        if (bytes.size() > proto::max_message_size) {
            return {make_error(ErrorCode::limit, "request larger than 64 KiB"), false};
        }
        Slot slot;
        {
            std::lock_guard lock(mutex_);
            if (auto refused = broken_ ? broken_ : unsendable_) {
                return {*refused, false};
            }
            waiting_.emplace(request.id, &slot);
        }
        bool left = false;
        try {
            int fds[1] = {fd_to_send};
            auto status = proto::SendStatus::would_block;
            // A full socket makes the send return every wait_slice.
            while ((status = proto::send_message(
                        fd_.get(), bytes, std::span<const int>(fds, fd_to_send >= 0 ? 1 : 0))) ==
                       proto::SendStatus::would_block &&
                   !deadline.passed()) {
            }
            left = status == proto::SendStatus::sent;
            if (status == proto::SendStatus::would_block) {
                std::lock_guard lock(mutex_);
                waiting_.erase(request.id);
                return {deadline.missed(what_), false};
            }
            // A peer that closed may have said why first (a limit, say): the
            // reads below find that, then the end. A direct channel, which
            // the caller leaves for nsbrokerd, is not read: what it sent
            // before is still answered.
            if (status == proto::SendStatus::closed && direct_channel_) {
                Error closed = refuse_unsent();
                std::lock_guard lock(mutex_);
                waiting_.erase(request.id);
                return {std::move(closed), false};
            }
        } catch (const SystemError& e) {
            fail_all(make_error(ErrorCode::io, e.what(), e.sys_errno()));
        }
        std::unique_lock lock(mutex_);
        while (!slot.done) {
            if (broken_) {
                waiting_.erase(request.id);
                return {*broken_, left};
            }
            if (deadline.passed()) {
                waiting_.erase(request.id);
                hand_on_reading();
                return {deadline.missed(what_), true};
            }
            if (reading_) {
                // Woken when its reply is there, or to read in turn.
                deadline.wait(slot.woken, lock);
                continue;
            }
            // This thread reads until its own reply comes (or a wait_slice
            // passes), handing each other reply to its waiting thread, then
            // hands reading on.
            reading_ = true;
            lock.unlock();
            read_one(false);
            lock.lock();
            reading_ = false;
        }
        waiting_.erase(request.id);
        hand_on_reading();
        lock.unlock();
        if (slot.error) {
            return {std::move(*slot.error), true};
        }
        return outcome_of(std::move(slot.message), request.op);
    }

    // Sends request without waiting for its reply, or holds it until the
    // socket has room (flush); done gets the outcome once. fd_to_send goes
    // with the request.
    void submit(proto::Request request, UniqueFd fd_to_send, const Deadline& deadline, Done done) {
        request.id = next_id_.fetch_add(1, std::memory_order_relaxed);
        std::string bytes = proto::encode_request(request);
        if (bytes.size() > proto::max_message_size) {
            done({make_error(ErrorCode::limit, "request larger than 64 KiB"), false});
            return;
        }
        std::optional<Error> refused;
        {
            std::lock_guard lock(mutex_);
            if (broken_ || unsendable_) {
                refused = broken_ ? broken_ : unsendable_;
            } else {
                outbox_.push_back({request.id, std::move(bytes), std::move(fd_to_send)});
                submitted_.emplace(request.id, Submitted{std::move(done), false, deadline});
            }
        }
        if (refused) {
            done({std::move(*refused), false});
            return;
        }
        flush();
    }

    // Sends what submit held back, as far as the socket takes it without
    // blocking; whether something is still held.
    bool flush() {
        std::optional<Error> failed;
        bool closed = false;
        {
            std::lock_guard lock(mutex_);
            while (!outbox_.empty() && !broken_ && in_flight_ < max_submitted_in_flight) {
                auto& next = outbox_.front();
                int fds[1] = {next.fd.get()};
                proto::SendStatus status = proto::SendStatus::closed;
                try {
                    status = proto::send_message(fd_.get(), next.bytes,
                                                 std::span<const int>(fds, next.fd ? 1 : 0), true);
                } catch (const SystemError& e) {
                    failed = make_error(ErrorCode::io, e.what(), e.sys_errno());
                    break;
                }
                if (status == proto::SendStatus::would_block) {
                    break;
                }
                if (status == proto::SendStatus::closed) {
                    closed = true;
                    break;
                }
                submitted_.at(next.id).sent = true;
                ++in_flight_;
                outbox_.pop_front();
            }
        }
        if (failed) {
            fail_all(std::move(*failed));
        }
        if (closed) {
            refuse_unsent();
        }
        std::lock_guard lock(mutex_);
        return !outbox_.empty() && !broken_;
    }

    // Reads every reply that has arrived, without blocking, unless another
    // thread is reading already (that thread delivers them).
    void read_arrived() {
        {
            std::lock_guard lock(mutex_);
            if (reading_ || broken_) {
                return;
            }
            reading_ = true;
        }
        while (read_one(true)) {
        }
        std::lock_guard lock(mutex_);
        reading_ = false;
        hand_on_reading();
    }

    [[nodiscard]] bool broken() const {
        std::lock_guard lock(mutex_);
        return broken_.has_value();
    }

    // Whether requests may still be sent: the link has not failed, nor
    // found its peer gone.
    [[nodiscard]] bool sendable() const {
        std::lock_guard lock(mutex_);
        return !broken_ && !unsendable_;
    }

    // Whether the peer may still answer: it has not closed, nor been found
    // to read no more.
    [[nodiscard]] bool open() const {
        {
            std::lock_guard lock(mutex_);
            if (broken_ || unsendable_) {
                return false;
            }
        }
        pollfd p{fd_.get(), 0, 0};
        return ::poll(&p, 1, 0) == 0;
    }

    // Whether submitted requests wait to be sent.
    [[nodiscard]] bool holding() const {
        std::lock_guard lock(mutex_);
        return !outbox_.empty();
    }

    // Submitted requests whose deadline passed fail with timeout (as
    // final: they are not sent anywhere else), whether sent or still held;
    // a reply that comes later is dropped. When the next deadline is.
    std::optional<Clock::time_point> expire() {
        const auto now = Clock::now();
        std::vector<std::pair<Done, Error>> expired;
        std::optional<Clock::time_point> next;
        {
            std::lock_guard lock(mutex_);
            for (auto it = submitted_.begin(); it != submitted_.end();) {
                auto& [id, submitted] = *it;
                const auto due = submitted.deadline.at();
                if (!due || *due > now) {
                    if (due && (!next || *due < *next)) {
                        next = due;
                    }
                    ++it;
                    continue;
                }
                if (submitted.sent) {
                    --in_flight_;
                } else {
                    std::erase_if(outbox_, [id = id](const Held& held) { return held.id == id; });
                }
                expired.emplace_back(std::move(submitted.done), submitted.deadline.missed(what_));
                it = submitted_.erase(it);
            }
        }
        for (auto& [done, error] : expired) {
            done({std::move(error), true});
        }
        return next;
    }

    // Whether requests submitted here still wait for their replies.
    [[nodiscard]] bool busy() const {
        std::lock_guard lock(mutex_);
        return !submitted_.empty();
    }

    // Makes this link a direct channel: names the peer in errors, and says
    // what its closing means (it was revoked or lost its worker).
    void describe_as(std::string what, Error closed_error) {
        what_ = std::move(what);
        closed_error_ = std::move(closed_error);
        direct_channel_ = true;
    }

    [[nodiscard]] int fd() const noexcept { return fd_.get(); }

    // How many blocking calls use this link now: a Client with several
    // channels to one namespace gives each call the least used.
    std::atomic<std::size_t> callers{0};

  private:
    struct Slot {
        bool done = false;
        proto::Message message;
        std::optional<Error> error; // the reply could not be taken whole
        std::condition_variable woken;
    };

    // With the lock held, and no thread reading: wakes one thread still
    // waiting for its reply to read for everyone.
    void hand_on_reading() {
        if (reading_) {
            return;
        }
        for (auto& [id, slot] : waiting_) {
            if (!slot->done) {
                slot->woken.notify_one();
                return;
            }
        }
    }
    struct Held {
        std::uint64_t id;
        std::string bytes;
        UniqueFd fd;
    };
    struct Submitted {
        Done done;
        bool sent;
        Deadline deadline;
    };
    // Past this many submitted requests awaiting replies, the rest wait here:
    // nsbrokerd refuses a connection more than --max-requests-in-flight.
    static constexpr std::size_t max_submitted_in_flight = 32;

    // A reply as its caller gets it.
    Outcome outcome_of(proto::Message message, proto::Op op) {
        auto reply = proto::decode_reply(message.data, op);
        if (!reply) {
            Error e = std::move(reply).error();
            return {make_error(ErrorCode::io, what_ + " sent an unreadable reply: " + e.message)};
        }
        if (auto* e = std::get_if<Error>(&reply->body);
            e && direct_channel_ && e->code == ErrorCode::unavailable) {
            // Revoked before the worker served it: nsbrokerd serves it
            // instead, and every request from now on. Those already sent
            // still get their answers.
            refuse_unsent();
            return {std::move(*e), false};
        }
        return {Answer{std::move(reply->body), std::move(message.fds)}};
    }

    // Reads one message and delivers it; called without the lock held.
    // False when nothing more can be read now.
    bool read_one(bool dont_wait) {
        proto::Received received;
        try {
            received = proto::receive_message(fd_.get(), proto::max_message_size, dont_wait);
        } catch (const SystemError& e) {
            fail_all(make_error(ErrorCode::io, e.what(), e.sys_errno()));
            return false;
        }
        std::optional<Error> failed;
        switch (received.status) {
        case proto::ReceiveStatus::would_block:
            return false;
        case proto::ReceiveStatus::closed:
            fail_all(closed_error_);
            return false;
        case proto::ReceiveStatus::too_large:
            fail_all(make_error(ErrorCode::io, what_ + " sent a message larger than " +
                                                   std::to_string(proto::max_message_size) +
                                                   " bytes"));
            return false;
        case proto::ReceiveStatus::fds_truncated:
            // Its caller learns why; the link goes on.
            failed = descriptors_lost();
            break;
        case proto::ReceiveStatus::message:
            break;
        }
        auto id = proto::reply_id(received.message.data);
        if (!id) {
            // Without an id the peer speaks of the connection itself (it
            // was refused, say): every call on it gets that error.
            auto reply = proto::decode_reply(received.message.data, proto::Op::ping);
            if (reply) {
                if (auto* e = std::get_if<Error>(&reply->body)) {
                    fail_all(*e);
                    return false;
                }
            }
            return true;
        }
        Done done;
        {
            std::lock_guard lock(mutex_);
            if (auto it = waiting_.find(*id); it != waiting_.end()) {
                it->second->message = std::move(received.message);
                it->second->error = std::move(failed);
                it->second->done = true;
                it->second->woken.notify_one();
                return true;
            }
            if (auto it = submitted_.find(*id); it != submitted_.end()) {
                done = std::move(it->second.done);
                submitted_.erase(it);
                --in_flight_;
            }
        }
        // A reply nobody waits for (any more) is dropped, and its fds are closed.
        if (done) {
            done(failed ? Outcome{std::move(*failed)}
                        : outcome_of(std::move(received.message), proto::Op::socket));
            flush();
        }
        return true;
    }

    // The peer reads no more: requests not yet sent fail as never sent, and
    // so does every later one; those sent are still read. The error given.
    Error refuse_unsent() {
        std::vector<Done> dones;
        Error closed = direct_channel_
                           ? make_error(ErrorCode::unavailable, "the channel is closed", EPIPE)
                           : closed_error_;
        {
            std::lock_guard lock(mutex_);
            unsendable_ = closed;
            for (const auto& held : outbox_) {
                auto it = submitted_.find(held.id);
                dones.push_back(std::move(it->second.done));
                submitted_.erase(it);
            }
            outbox_.clear();
        }
        for (auto& done : dones) {
            done({closed, false});
        }
        return closed;
    }

    // The link is done for: every caller waiting on it, and every submitted
    // request, gets e (a request never sent is marked so).
    void fail_all(Error e) {
        std::vector<Outcome> outcomes;
        std::vector<Done> dones;
        {
            std::lock_guard lock(mutex_);
            if (!broken_) {
                broken_ = std::move(e);
            }
            for (auto& [id, submitted] : submitted_) {
                outcomes.push_back({*broken_, submitted.sent});
                dones.push_back(std::move(submitted.done));
            }
            submitted_.clear();
            outbox_.clear();
            in_flight_ = 0;
            for (auto& [id, slot] : waiting_) {
                slot->woken.notify_one();
            }
        }
        for (std::size_t i = 0; i < dones.size(); ++i) {
            dones[i](std::move(outcomes[i]));
        }
    }

    UniqueFd fd_;
    std::atomic<std::uint64_t> next_id_{1};
    std::string what_ = "nsbrokerd";
    Error closed_error_ = make_error(ErrorCode::io, "nsbrokerd closed the connection", ECONNRESET);
    bool direct_channel_ = false; // see describe_as

    mutable std::mutex mutex_; // guards everything below
    bool reading_ = false;
    std::optional<Error> broken_;     // set once the link failed
    std::optional<Error> unsendable_; // set once the peer stopped reading
    std::unordered_map<std::uint64_t, Slot*> waiting_;
    std::unordered_map<std::uint64_t, Submitted> submitted_;
    std::deque<Held> outbox_;   // submitted, not yet sent
    std::size_t in_flight_ = 0; // submitted, sent, not yet answered
};

// Which direct channel serves a request: the namespace's identity, and the
// /run/netns name the request used, if it used one. A channel granted
// through a name serves only requests by that name, and one granted
// otherwise only requests that name no name: nsbrokerd judged it with
// exactly those facts.
struct ChannelKey {
    std::uint64_t dev = 0;
    std::uint64_t ino = 0;
    std::string name;
    auto operator<=>(const ChannelKey&) const = default;
};

// What a request's namespace reference turns into here: a descriptor the
// library opened with the caller's rights (for a path or a pid), and the key
// of the direct channel that would serve it, when one stat(2) can tell.
struct Target {
    Netns netns;
    UniqueFd opened;
    std::optional<ChannelKey> key;
};

// Sockets made ahead of time on one direct channel (ClientOptions::reservoir).
struct Reservoir {
    using Kind = std::pair<int, int>; // family and type; tcp and udp are protocol 0
    std::mutex mutex;                 // guards everything below
    std::map<Kind, std::vector<Socket>> ready;
    std::set<Kind> refilling; // a batch is on its way
    std::set<Kind> refused;   // the channel would not make them: not asked again
};

// The direct channels held to one namespace (ClientOptions says how many),
// all granted by the same rules: a closed one means all are done for.
struct HeldChannel {
    std::vector<std::shared_ptr<Link>> lanes;
    std::uint64_t uses = 0;
    bool full = false;                    // nsbrokerd granted no further one: none is asked again
    std::shared_ptr<Reservoir> reservoir; // when ClientOptions::reservoir asks for one
};

// A blocking call's use of a link, counted while it lasts.
class LinkUse {
  public:
    explicit LinkUse(std::shared_ptr<Link> link) : link_(std::move(link)) {}
    LinkUse(const LinkUse&) = delete;
    LinkUse& operator=(const LinkUse&) = delete;
    ~LinkUse() { link_->callers.fetch_sub(1, std::memory_order_relaxed); }
    [[nodiscard]] Link& link() const { return *link_; }

  private:
    std::shared_ptr<Link> link_;
};

std::optional<ChannelKey> key_of_file(int fd, std::string name = {}) {
    struct stat st {};
    if (::fstat(fd, &st) < 0) {
        return std::nullopt;
    }
    return ChannelKey{st.st_dev, st.st_ino, std::move(name)};
}

std::optional<ChannelKey> key_of_path(const std::string& path, std::string name = {}) {
    struct stat st {};
    if (::stat(path.c_str(), &st) < 0) {
        return std::nullopt;
    }
    return ChannelKey{st.st_dev, st.st_ino, std::move(name)};
}

} // namespace

// How long a Client waits before it tries to connect again, once an attempt
// failed: the first retry is at once, then the pause doubles up to a second.
constexpr std::chrono::milliseconds first_reconnect_pause{10};
constexpr std::chrono::milliseconds longest_reconnect_pause{1000};

// A new connection to nsbrokerd at path. Never waits: a daemon whose listen
// queue is full (stopped, say) is an error like one that is not there.
Result<UniqueFd> open_connection(const std::string& path) {
    auto address = proto::parse_address(AF_UNIX, path);
    if (!address) {
        return make_error(ErrorCode::invalid_request, "bad socket path \"" + path + "\"");
    }
    UniqueFd fd{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)};
    if (!fd) {
        return make_error(ErrorCode::io,
                          std::string("cannot open a socket: ") + std::strerror(errno), errno);
    }
    if (::connect(fd.get(), address->get(), address->length) < 0) {
        int err = errno;
        std::string why = err == EAGAIN ? "its listen queue is full" : std::strerror(err);
        return make_error(ErrorCode::io, "cannot connect to nsbrokerd at " + path + ": " + why,
                          err);
    }
    ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) & ~O_NONBLOCK);
    return fd;
}

struct Client::Impl {
    const std::string path;
    ClientOptions options;

    // The connection to nsbrokerd, replaced by a new one once it failed.
    mutable std::mutex daemon_mutex; // guards everything down to connect_error
    std::shared_ptr<Link> daemon_link;
    Clock::time_point next_connect{};
    std::chrono::milliseconds reconnect_pause{0};
    std::optional<Error> connect_error; // why the last attempt failed

    mutable std::mutex channels_mutex; // guards channels, asking and retired
    std::map<ChannelKey, HeldChannel> channels;
    // Channels asked of nsbrokerd and not yet answered: one request at a
    // time asks for each.
    std::set<ChannelKey> asking;
    // Channels let go of while requests submitted on them still wait: read
    // by completions() until they are answered.
    std::vector<std::shared_ptr<Link>> retired;

    // Event-loop use: an epoll set of every link, of `wake`, an eventfd
    // written when a submitted request completes, and of `timer`, armed at
    // the next deadline of a submitted request.
    UniqueFd epoll;
    UniqueFd wake;
    UniqueFd timer;
    std::mutex timer_mutex;                    // guards timer_at
    std::optional<Clock::time_point> timer_at; // when timer is armed for
    std::mutex completed_mutex;                // guards completed
    std::vector<Completion> completed;
    std::atomic<std::uint64_t> next_submission{1};

    Impl(std::string socket_path, UniqueFd fd, ClientOptions opts, UniqueFd epoll_fd,
         UniqueFd wake_fd, UniqueFd timer_fd)
        : path(std::move(socket_path)), options(opts),
          daemon_link(std::make_shared<Link>(std::move(fd), opts.timeout)),
          epoll(std::move(epoll_fd)), wake(std::move(wake_fd)), timer(std::move(timer_fd)) {}

    // Arms timer for a submitted request due at `at`, unless it is armed sooner.
    void arm_timer(std::optional<Clock::time_point> at) {
        std::lock_guard lock(timer_mutex);
        if (!at || (timer_at && *timer_at <= *at)) {
            return;
        }
        timer_at = at;
        const auto ns =
            std::chrono::duration_cast<std::chrono::nanoseconds>(at->time_since_epoch()).count();
        itimerspec when{};
        when.it_value.tv_sec = static_cast<time_t>(ns / 1000000000);
        when.it_value.tv_nsec = static_cast<long>(ns % 1000000000);
        // steady_clock is CLOCK_MONOTONIC; a time of zero would disarm it.
        if (when.it_value.tv_sec == 0 && when.it_value.tv_nsec == 0) {
            when.it_value.tv_nsec = 1;
        }
        ::timerfd_settime(timer.get(), TFD_TIMER_ABSTIME, &when, nullptr);
    }

    [[nodiscard]] Deadline deadline() const { return Deadline(options.timeout); }

    // The connection to nsbrokerd as it is.
    [[nodiscard]] std::shared_ptr<Link> current_daemon() const {
        std::lock_guard lock(daemon_mutex);
        return daemon_link;
    }

    // The connection to nsbrokerd for the next request: the one held, or
    // a new one once that one failed. Threads that find it failed at once
    // make one new connection between them; past a failed attempt, the
    // next waits for its pause, and calls before it fail as that one did.
    Result<std::shared_ptr<Link>> daemon() {
        std::lock_guard lock(daemon_mutex);
        if (daemon_link->sendable()) {
            return daemon_link;
        }
        const auto now = Clock::now();
        if (connect_error && now < next_connect) {
            return *connect_error;
        }
        auto fd = open_connection(path);
        if (!fd) {
            reconnect_pause =
                std::clamp(reconnect_pause * 2, first_reconnect_pause, longest_reconnect_pause);
            next_connect = now + reconnect_pause;
            connect_error = std::move(fd).error();
            return *connect_error;
        }
        reconnect_pause = std::chrono::milliseconds(0);
        connect_error.reset();
        {
            // What was submitted on the old one is still read, and failed, by completions().
            std::lock_guard channels_lock(channels_mutex);
            if (daemon_link->busy()) {
                retired.push_back(daemon_link);
            } else {
                unwatch(daemon_link->fd());
            }
        }
        daemon_link = std::make_shared<Link>(std::move(*fd), options.timeout);
        watch(daemon_link->fd(), false, EPOLL_CTL_ADD);
        return daemon_link;
    }

    // Puts fd in the epoll set, or changes what it is watched for.
    void watch(int fd, bool holding, int op = EPOLL_CTL_MOD) const {
        epoll_event e{};
        e.events = EPOLLIN | (holding ? EPOLLOUT : 0U);
        ::epoll_ctl(epoll.get(), op, fd, &e);
    }
    void unwatch(int fd) const { ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, fd, nullptr); }

    void complete(std::uint64_t id, Result<std::vector<Socket>> sockets) {
        {
            std::lock_guard lock(completed_mutex);
            completed.push_back({id, std::move(sockets)});
        }
        std::uint64_t one = 1;
        (void)!::write(wake.get(), &one, sizeof(one));
    }

    struct Submission;
    std::optional<Result<std::vector<Socket>>> from_reservoir(const Netns& netns,
                                                              const SocketSpec& spec);
    void refill(const std::shared_ptr<Link>& link, const std::shared_ptr<Reservoir>& reservoir,
                const SocketSpec& spec);
    void let_go_closed_channels();
    void submit_on_channel(std::shared_ptr<Submission> s, const ChannelKey& key,
                           const std::shared_ptr<Link>& link);
    void submit_to_daemon(std::shared_ptr<Submission> s);
    void adopt_channel(const std::optional<ChannelKey>& key, bool asked, Result<Answer>& answer);
    [[nodiscard]] bool asks_channel(const Target& target, const std::vector<SocketSpec>& specs,
                                    bool blocking);

    // A namespace's channels leave the map: each goes at once unless
    // submitted requests still wait on it. Called with channels_mutex held.
    void let_go(const HeldChannel& held) {
        for (const auto& link : held.lanes) {
            if (link->busy()) {
                retired.push_back(link);
            } else {
                unwatch(link->fd());
            }
        }
    }

    // How many channels are held, to every namespace. With channels_mutex held.
    [[nodiscard]] std::size_t held_channels() const {
        std::size_t n = 0;
        for (const auto& [key, held] : channels) {
            n += held.lanes.size();
        }
        return n;
    }

    // Whether a blocking call that finds every channel to its namespace busy
    // should ask nsbrokerd for one more. With channels_mutex held. An idle
    // channel, the usual case on every call, answers first.
    [[nodiscard]] bool may_add_channel(const ChannelKey& key, const HeldChannel& held) const {
        const bool all_busy =
            std::all_of(held.lanes.begin(), held.lanes.end(), [](const auto& link) {
                return link->callers.load(std::memory_order_relaxed) > 0;
            });
        return all_busy && !held.full && held.lanes.size() < options.channels_per_namespace &&
               held_channels() < options.max_direct_channels && !asking.contains(key);
    }

    // The least used of the channels held for key. With channels_mutex held.
    static const std::shared_ptr<Link>& least_used(const HeldChannel& held) {
        return *std::min_element(held.lanes.begin(), held.lanes.end(),
                                 [](const auto& a, const auto& b) {
                                     return a->callers.load(std::memory_order_relaxed) <
                                            b->callers.load(std::memory_order_relaxed);
                                 });
    }

    // Asks nsbrokerd. A request that did not leave because the connection
    // had failed goes once more, on a new connection; one in flight when
    // it failed gets its error.
    Result<Answer> call(const proto::Request& request, const Deadline& deadline,
                        int fd_to_send = -1) {
        for (int attempt = 0;; ++attempt) {
            auto link = daemon();
            if (!link) {
                return std::move(link).error();
            }
            auto outcome = (*link)->call(request, fd_to_send, deadline);
            if (outcome.sent || attempt > 0) {
                return std::move(outcome.answer);
            }
        }
    }

    // The least used channel held for key, for a submitted request.
    std::shared_ptr<Link> channel_for(const ChannelKey& key) {
        std::lock_guard lock(channels_mutex);
        auto it = channels.find(key);
        if (it == channels.end()) {
            return nullptr;
        }
        ++it->second.uses;
        return least_used(it->second);
    }

    // The channel a blocking call for key uses, counted as used: an idle
    // one if there is one. None when no channel serves key, or when every
    // one is busy and nsbrokerd may grant one more: the call then goes to
    // nsbrokerd and asks for it.
    std::optional<LinkUse> channel_to_call(const ChannelKey& key) {
        std::lock_guard lock(channels_mutex);
        auto it = channels.find(key);
        if (it == channels.end() || may_add_channel(key, it->second)) {
            return std::nullopt;
        }
        ++it->second.uses;
        const auto& link = least_used(it->second);
        link->callers.fetch_add(1, std::memory_order_relaxed);
        return std::optional<LinkUse>(std::in_place, link);
    }

    // A channel found closed: every channel to key goes with it.
    void forget(const ChannelKey& key, const Link* link) {
        std::lock_guard lock(channels_mutex);
        auto it = channels.find(key);
        if (it != channels.end() &&
            std::any_of(it->second.lanes.begin(), it->second.lanes.end(),
                        [link](const auto& lane) { return lane.get() == link; })) {
            let_go(it->second);
            channels.erase(it);
        }
    }

    // The answer on a direct channel held for key, or nothing when none
    // serves it (any more): the request then goes to nsbrokerd. A channel
    // whose worker let a call pass its deadline is let go too: the next
    // request goes to nsbrokerd, which replaces a worker that hangs.
    std::optional<Result<Answer>> on_channel(const ChannelKey& key, const proto::Request& r,
                                             const Deadline& deadline) {
        auto link = channel_to_call(key);
        if (!link) {
            return std::nullopt;
        }
        auto outcome = link->link().call(r, -1, deadline);
        const bool timed_out = !outcome.answer && outcome.answer.error().code == ErrorCode::timeout;
        if (!outcome.sent || timed_out) {
            forget(key, &link->link());
        }
        if (!outcome.sent && !timed_out) {
            return std::nullopt;
        }
        return std::move(outcome.answer);
    }

    // Keeps a channel nsbrokerd granted; past the bound the least used goes.
    void keep(const ChannelKey& key, UniqueFd fd) {
        auto link = std::make_shared<Link>(std::move(fd), options.timeout);
        link->describe_as("the namespace's worker",
                          make_error(ErrorCode::worker_failed,
                                     "the direct channel to the namespace's worker closed before "
                                     "it answered: the worker exited or nsbrokerd revoked the "
                                     "channel; the request may be sent again",
                                     ECONNRESET));
        std::lock_guard lock(channels_mutex);
        if (auto it = channels.find(key); it != channels.end()) {
            // One more channel to a busy namespace, within the bounds; past
            // them it closes.
            auto& held = it->second;
            if (held.lanes.size() < options.channels_per_namespace &&
                held_channels() < options.max_direct_channels) {
                watch(link->fd(), false, EPOLL_CTL_ADD);
                held.lanes.push_back(std::move(link));
            }
            return;
        }
        if (options.max_direct_channels == 0 || options.channels_per_namespace == 0) {
            return;
        }
        // Past the bound, the namespaces used least lose their channels.
        while (!channels.empty() && held_channels() >= options.max_direct_channels) {
            auto least = std::min_element(
                channels.begin(), channels.end(),
                [](const auto& a, const auto& b) { return a.second.uses < b.second.uses; });
            let_go(least->second);
            channels.erase(least);
        }
        watch(link->fd(), false, EPOLL_CTL_ADD);
        auto reservoir = options.reservoir > 0 ? std::make_shared<Reservoir>() : nullptr;
        channels.emplace(key, HeldChannel{{std::move(link)}, 1, false, std::move(reservoir)});
    }
};

Result<Client> Client::connect(std::string_view path) {
    return connect(path, ClientOptions{});
}

Result<Client> Client::connect(std::string_view path, const ClientOptions& options) {
    std::string target = path.empty() ? default_socket_path() : std::string(path);
    UniqueFd epoll{::epoll_create1(EPOLL_CLOEXEC)};
    UniqueFd wake{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
    UniqueFd timer{::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK)};
    if (!epoll || !wake || !timer) {
        return make_error(
            ErrorCode::io,
            std::string("cannot open the client's descriptors: ") + std::strerror(errno), errno);
    }
    auto fd = open_connection(target);
    if (!fd) {
        return std::move(fd).error();
    }
    auto impl = std::make_unique<Impl>(std::move(target), std::move(*fd), options, std::move(epoll),
                                       std::move(wake), std::move(timer));
    impl->watch(impl->daemon_link->fd(), false, EPOLL_CTL_ADD);
    impl->watch(impl->wake.get(), false, EPOLL_CTL_ADD);
    impl->watch(impl->timer.get(), false, EPOLL_CTL_ADD);
    return Client(std::move(impl));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

int Client::fd() const noexcept {
    return impl_->current_daemon()->fd();
}

std::size_t Client::direct_channels() const {
    std::lock_guard lock(impl_->channels_mutex);
    return impl_->held_channels();
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

Error step_error(std::size_t index, const std::string& step) {
    int err = errno;
    ErrorCode code =
        (err == EPERM || err == EACCES) ? ErrorCode::permission_denied : ErrorCode::kernel;
    return make_error(code, where(index) + ": " + step + ": " + std::strerror(err), err);
}

// The worker's bind, listen and connect, in its order, on a socket it made:
// a unix socket's, and a reservoir socket's.
Result<void> do_steps_here(std::size_t index, const SocketSpec& s, int fd, SocketInfo& info) {
    if (s.bind) {
        auto address = proto::parse_address(s.family, *s.bind);
        if (::bind(fd, address->get(), address->length) < 0) {
            return step_error(index, "bind " + *s.bind);
        }
    }
    if (s.listen && ::listen(fd, *s.listen) < 0) {
        return step_error(index, "listen");
    }
    if (s.connect) {
        auto address = proto::parse_address(s.family, *s.connect);
        int rc = 0;
        do {
            rc = ::connect(fd, address->get(), address->length);
        } while (rc < 0 && errno == EINTR);
        // With nonblock, EAGAIN (a full backlog) is still a failure: unlike
        // EINPROGRESS it leaves the socket unconnected for good.
        if (rc < 0 && !(s.nonblock && errno == EINPROGRESS)) {
            return step_error(index, "connect " + *s.connect);
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
    return expect<HelloReply>(impl_->call(request_for(proto::Op::hello), impl_->deadline()));
}

Result<void> Client::ping() {
    auto pong =
        expect<proto::PongReply>(impl_->call(request_for(proto::Op::ping), impl_->deadline()));
    if (!pong) {
        return std::move(pong).error();
    }
    return {};
}

Result<NamespacesReply> Client::namespaces_page(const std::optional<NamespacesCursor>& cursor,
                                                std::optional<unsigned> limit) {
    proto::Request request = request_for(proto::Op::namespaces);
    request.cursor = cursor;
    request.limit = limit;
    return expect<NamespacesReply>(impl_->call(request, impl_->deadline()));
}

namespace {

// Whether cursor next comes after previous in the listing's order, where a
// cursor inside a namespace's names comes before the one after all of them.
bool moves_on(const NamespacesCursor& next, const NamespacesCursor& previous) {
    if (next.dev != previous.dev || next.ino != previous.ino) {
        return std::pair(next.dev, next.ino) > std::pair(previous.dev, previous.ino);
    }
    return previous.name && (!next.name || *next.name > *previous.name);
}

} // namespace

Result<NamespacesReply> Client::namespaces() {
    // One call, with one deadline for all its pages.
    const Deadline deadline = impl_->deadline();
    auto page_after = [this, &deadline](const std::optional<NamespacesCursor>& cursor) {
        proto::Request request = request_for(proto::Op::namespaces);
        request.cursor = cursor;
        return expect<NamespacesReply>(impl_->call(request, deadline));
    };
    NamespacesReply all;
    std::optional<NamespacesCursor> cursor;
    do {
        auto page = page_after(cursor);
        if (!page) {
            return std::move(page).error();
        }
        for (auto& n : page->namespaces) {
            if (!all.namespaces.empty() && all.namespaces.back().dev == n.dev &&
                all.namespaces.back().ino == n.ino) {
                // The rest of the names of a namespace that did not fit in one page.
                auto& names = all.namespaces.back().names;
                names.insert(names.end(), std::make_move_iterator(n.names.begin()),
                             std::make_move_iterator(n.names.end()));
            } else {
                all.namespaces.push_back(std::move(n));
            }
        }
        // A cursor that does not move on would ask for the same page forever.
        if (page->next_cursor && cursor && !moves_on(*page->next_cursor, *cursor)) {
            return make_error(ErrorCode::io, "nsbrokerd's namespaces pages do not move on");
        }
        cursor = std::move(page->next_cursor);
    } while (cursor);
    return all;
}

Result<StatsReply> Client::stats() {
    return expect<StatsReply>(impl_->call(request_for(proto::Op::stats), impl_->deadline()));
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

namespace {

// Where `ip netns` names namespaces, and nsbrokerd looks names up.
constexpr const char* netns_dir = "/run/netns";

Result<Target> find_target(const Netns& netns, bool channel_only) {
    Target t{netns, {}, std::nullopt};
    const auto& ref = netns.ref();
    if (netns.borrowed_fd() >= 0) {
        t.key = key_of_file(netns.borrowed_fd());
        return t;
    }
    switch (ref.kind) {
    case proto::NetnsRef::Kind::name:
        if (proto::check_netns_name(ref.text)) {
            t.key = key_of_path(std::string(netns_dir) + "/" + ref.text, ref.text);
        }
        return t;
    case proto::NetnsRef::Kind::path: {
        // Paths are opened here, with the caller's own rights, in its own
        // mount namespace, and sent as a descriptor: the kernel judges the
        // caller, and nsbrokerd never opens a path for anyone but root.
        if (channel_only) {
            t.key = key_of_path(ref.text);
            return t;
        }
        auto file = proto::open_netns_file(ref.text);
        if (!file) {
            return std::move(file).error();
        }
        t.opened = std::move(file->fd);
        break;
    }
    case proto::NetnsRef::Kind::pid:
        // A pid this process may not read is left to the daemon, whose
        // policy judges the namespace it names.
        if (auto file = open_netns_of_process(ref.pid)) {
            t.opened = std::move(*file);
            break;
        }
        return t;
    case proto::NetnsRef::Kind::fd:
        return t;
    }
    t.netns = Netns::fd(t.opened.get());
    t.key = key_of_file(t.opened.get());
    return t;
}

} // namespace

namespace {

std::uint16_t port_of(const proto::SocketAddress& a) {
    if (a.storage.ss_family == AF_INET) {
        return ntohs(reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_port);
    }
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_port);
}

// Whether a reservoir may serve s (ClientOptions::reservoir says which).
bool reservoir_serves(const SocketSpec& s) {
    if (s.options != proto::SocketOptions{}) {
        return false;
    }
    if (s.family == AF_UNIX) {
        return s.protocol == 0;
    }
    if (s.family != AF_INET && s.family != AF_INET6) {
        return false;
    }
    const bool tcp = s.type == SOCK_STREAM && (s.protocol == 0 || s.protocol == IPPROTO_TCP);
    const bool udp = s.type == SOCK_DGRAM && (s.protocol == 0 || s.protocol == IPPROTO_UDP);
    if (!(tcp || udp) || s.connect) {
        return false;
    }
    if (s.bind) {
        auto address = proto::parse_address(s.family, *s.bind);
        return address && port_of(*address) == 0;
    }
    return true;
}

Reservoir::Kind kind_of(const SocketSpec& s) {
    return {s.family, s.type};
}

} // namespace

namespace {

// The request for specs, as nsbrokerd and workers get it: the unix steps
// this process does itself are taken out.
Result<proto::Request> socket_request(const std::vector<SocketSpec>& specs) {
    if (specs.empty() || proto::socket_count(specs) > proto::max_fds_per_message) {
        return make_error(ErrorCode::limit, "a request asks for 1 to " +
                                                std::to_string(proto::max_fds_per_message) +
                                                " sockets");
    }
    proto::Request r = request_for(proto::Op::socket);
    r.specs = specs;
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
    return r;
}

// The sockets of an answer to specs, with the unix steps done here.
Result<std::vector<Socket>> sockets_of(const std::vector<SocketSpec>& specs,
                                       Result<Answer> answer) {
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
                if (auto ok = do_steps_here(i, specs[i], fds[next].get(), reply->sockets[next]);
                    !ok) {
                    return std::move(ok).error();
                }
            }
            out.emplace_back(std::move(fds[next]), std::move(reply->sockets[next]));
        }
    }
    return out;
}

// The descriptor a request to nsbrokerd carries for target, if any.
UniqueFd descriptor_to_send(Target& target) {
    if (target.opened) {
        return std::move(target.opened);
    }
    int borrowed = target.netns.borrowed_fd();
    return UniqueFd{borrowed >= 0 ? ::fcntl(borrowed, F_DUPFD_CLOEXEC, 3) : -1};
}

} // namespace

// nsbrokerd's answer may bring a direct channel for key: kept, and taken out
// of the answer's descriptors.
void Client::Impl::adopt_channel(const std::optional<ChannelKey>& key, bool asked,
                                 Result<Answer>& answer) {
    auto* sockets = answer ? std::get_if<proto::SocketReply>(&answer->body) : nullptr;
    const bool granted = sockets && sockets->channel && !answer->fds.empty();
    if (asked) {
        std::lock_guard lock(channels_mutex);
        asking.erase(*key);
        if (auto it = channels.find(*key); it != channels.end() && sockets && !granted) {
            it->second.full = true;
        }
    }
    if (!granted) {
        return;
    }
    UniqueFd channel = std::move(answer->fds.back());
    answer->fds.pop_back();
    // A name that moved to another namespace since it was looked at here
    // leaves the channel unused.
    if (key && sockets->channel->dev == key->dev && sockets->channel->ino == key->ino) {
        keep(*key, std::move(channel));
    }
    sockets->channel.reset();
}

// Whether a request to nsbrokerd for target asks for a channel: the first
// to its namespace, or, for a blocking call, one more when every channel
// held to it is busy.
bool Client::Impl::asks_channel(const Target& target, const std::vector<SocketSpec>& specs,
                                bool blocking) {
    if (!options.direct_channels || !target.key ||
        proto::socket_count(specs) >= proto::max_fds_per_message) {
        return false;
    }
    std::lock_guard lock(channels_mutex);
    auto it = channels.find(*target.key);
    if (it != channels.end() && !(blocking && may_add_channel(*target.key, it->second))) {
        return false;
    }
    return asking.insert(*target.key).second;
}

Result<std::vector<Socket>> Client::sockets(const Netns& netns,
                                            const std::vector<SocketSpec>& specs) {
    auto r = socket_request(specs);
    if (!r) {
        return std::move(r).error();
    }
    Impl& im = *impl_;
    const Deadline deadline = im.deadline();
    if (im.options.reservoir > 0 && specs.size() == 1 && reservoir_serves(specs[0])) {
        if (auto served = im.from_reservoir(netns, specs[0])) {
            return std::move(*served);
        }
    }
    const bool channels = im.options.direct_channels;
    // A path is opened only when no channel serves it: stat(2) tells first.
    if (channels && netns.borrowed_fd() < 0 && netns.ref().kind == proto::NetnsRef::Kind::path) {
        if (auto t = find_target(netns, true); t && t->key) {
            if (auto answer = im.on_channel(*t->key, *r, deadline)) {
                return sockets_of(specs, std::move(*answer));
            }
        }
    }
    auto target = find_target(netns, false);
    if (!target) {
        return std::move(target).error();
    }
    if (channels && target->key) {
        if (auto answer = im.on_channel(*target->key, *r, deadline)) {
            return sockets_of(specs, std::move(*answer));
        }
    }
    r->netns = target->netns.ref();
    r->channel = im.asks_channel(*target, specs, true);
    const bool asked = r->channel;
    auto answer = im.call(*r, deadline, target->netns.borrowed_fd());
    im.adopt_channel(target->key, asked, answer);
    return sockets_of(specs, std::move(answer));
}

// ---- From an event loop ----------------------------------------------------

// A submitted request on its way: what it asks, and of which namespace.
struct Client::Impl::Submission {
    std::uint64_t id;
    std::vector<SocketSpec> specs;
    proto::Request request;
    Netns netns;
    UniqueFd netns_fd;   // a duplicate of a Netns::fd, which netns then borrows
    Deadline deadline;   // from submit_sockets, wherever it goes
    bool resent = false; // sent again on a new connection to nsbrokerd
};

void Client::Impl::submit_on_channel(std::shared_ptr<Submission> s, const ChannelKey& key,
                                     const std::shared_ptr<Link>& link) {
    const Link* used = link.get();
    const Deadline deadline = s->deadline;
    arm_timer(deadline.at());
    link->submit(s->request, {}, deadline, [this, s, key, used](Link::Outcome outcome) mutable {
        if (!outcome.sent) {
            forget(key, used);
            submit_to_daemon(std::move(s));
            return;
        }
        if (!outcome.answer && outcome.answer.error().code == ErrorCode::timeout) {
            forget(key, used); // as a blocking call does
        }
        complete(s->id, sockets_of(s->specs, std::move(outcome.answer)));
    });
    watch(link->fd(), link->holding());
}

void Client::Impl::submit_to_daemon(std::shared_ptr<Submission> s) {
    auto target = find_target(s->netns, false);
    if (!target) {
        complete(s->id, std::move(target).error());
        return;
    }
    auto link = daemon();
    if (!link) {
        complete(s->id, std::move(link).error());
        return;
    }
    proto::Request r = s->request;
    r.netns = target->netns.ref();
    r.channel = asks_channel(*target, s->specs, false);
    const bool asked = r.channel;
    arm_timer(s->deadline.at());
    (*link)->submit(std::move(r), descriptor_to_send(*target), s->deadline,
                    [this, s, key = target->key, asked](Link::Outcome outcome) mutable {
                        adopt_channel(key, asked, outcome.answer);
                        // Held when the connection failed: once more, on a new one.
                        if (!outcome.sent && !s->resent) {
                            s->resent = true;
                            submit_to_daemon(std::move(s));
                            return;
                        }
                        complete(s->id, sockets_of(s->specs, std::move(outcome.answer)));
                    });
    watch((*link)->fd(), (*link)->holding());
}

Result<std::uint64_t> Client::submit_sockets(const Netns& netns,
                                             const std::vector<SocketSpec>& specs) {
    auto r = socket_request(specs);
    if (!r) {
        return std::move(r).error();
    }
    Impl& im = *impl_;
    auto s = std::make_shared<Impl::Submission>(Impl::Submission{
        im.next_submission.fetch_add(1), specs, std::move(*r), netns, {}, im.deadline()});
    if (netns.borrowed_fd() >= 0) {
        s->netns_fd = UniqueFd{::fcntl(netns.borrowed_fd(), F_DUPFD_CLOEXEC, 3)};
        if (!s->netns_fd) {
            return make_error(ErrorCode::io, std::string("dup: ") + std::strerror(errno), errno);
        }
        s->netns = Netns::fd(s->netns_fd.get());
    }
    if (im.options.direct_channels) {
        // stat(2) alone tells which channel serves it.
        if (auto t = find_target(s->netns, true); t && t->key) {
            if (auto link = im.channel_for(*t->key)) {
                im.submit_on_channel(s, *t->key, link);
                return s->id;
            }
        }
    }
    const std::uint64_t id = s->id;
    im.submit_to_daemon(std::move(s));
    return id;
}

int Client::event_fd() const noexcept {
    return impl_->epoll.get();
}

std::vector<Completion> Client::completions() {
    Impl& im = *impl_;
    std::uint64_t woken = 0;
    (void)!::read(im.wake.get(), &woken, sizeof(woken));
    (void)!::read(im.timer.get(), &woken, sizeof(woken));
    {
        // Armed again below for the next deadline, unless a submit arms it sooner.
        std::lock_guard lock(im.timer_mutex);
        im.timer_at.reset();
    }
    std::optional<Clock::time_point> next_deadline;
    std::vector<std::shared_ptr<Link>> links;
    {
        std::lock_guard lock(im.channels_mutex);
        for (const auto& [key, held] : im.channels) {
            links.insert(links.end(), held.lanes.begin(), held.lanes.end());
        }
        links.insert(links.end(), im.retired.begin(), im.retired.end());
    }
    auto serve = [&im, &next_deadline](Link& link) {
        link.read_arrived();
        if (link.broken()) {
            im.unwatch(link.fd()); // a hung-up link would wake the loop for ever
        } else {
            im.watch(link.fd(), link.flush());
        }
        if (auto due = link.expire(); due && (!next_deadline || *due < *next_deadline)) {
            next_deadline = due;
        }
    };
    serve(*im.current_daemon());
    for (const auto& link : links) {
        serve(*link);
    }
    im.let_go_closed_channels();
    {
        std::lock_guard lock(im.channels_mutex);
        std::erase_if(im.retired, [&im](const std::shared_ptr<Link>& link) {
            if (link->busy()) {
                return false;
            }
            im.unwatch(link->fd());
            return true;
        });
    }
    im.arm_timer(next_deadline);
    std::lock_guard lock(im.completed_mutex);
    return std::exchange(im.completed, {});
}

// ---- The reservoir ---------------------------------------------------------

std::optional<Result<std::vector<Socket>>> Client::Impl::from_reservoir(const Netns& netns,
                                                                        const SocketSpec& spec) {
    auto target = find_target(netns, true);
    if (!target || !target->key) {
        return std::nullopt;
    }
    std::shared_ptr<Link> link;
    std::shared_ptr<Reservoir> reservoir;
    {
        std::lock_guard lock(channels_mutex);
        auto it = channels.find(*target->key);
        if (it != channels.end()) {
            ++it->second.uses;
            link = it->second.lanes.front();
            reservoir = it->second.reservoir;
        }
    }
    if (!link || !reservoir || !link->open()) {
        // A channel revoked, or whose worker is gone, goes with its
        // reservoir; this request goes to nsbrokerd.
        let_go_closed_channels();
        return std::nullopt;
    }
    const auto kind = kind_of(spec);
    std::vector<Socket> taken;
    bool ask = false;
    // Takes spec.count sockets if there are as many; whether a batch is on its way.
    auto take = [&] {
        std::lock_guard lock(reservoir->mutex);
        auto& ready = reservoir->ready[kind];
        if (ready.size() >= spec.count) {
            for (unsigned i = 0; i < spec.count; ++i) {
                taken.push_back(std::move(ready.back()));
                ready.pop_back();
            }
        }
        ask = ready.size() <= options.reservoir / 2 && !reservoir->refused.contains(kind) &&
              reservoir->refilling.insert(kind).second;
        return !ask && reservoir->refilling.contains(kind);
    };
    if (take() && taken.empty()) {
        // The batch may have come: read it, without waiting.
        link->read_arrived();
        take();
    }
    if (ask) {
        refill(link, reservoir, spec);
    }
    if (taken.empty()) {
        let_go_closed_channels();
        return std::nullopt;
    }
    std::vector<Socket> out;
    out.reserve(taken.size());
    for (auto& socket : taken) {
        SocketInfo info = socket.info();
        UniqueFd fd = socket.take();
        if (spec.nonblock &&
            ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK) < 0) {
            return Result<std::vector<Socket>>(step_error(0, "fcntl"));
        }
        if (spec.bind || spec.listen) {
            if (auto ok = do_steps_here(0, spec, fd.get(), info); !ok) {
                return Result<std::vector<Socket>>(std::move(ok).error());
            }
        }
        out.emplace_back(std::move(fd), std::move(info));
    }
    return out;
}

// Asks the channel for a batch of spec's kind, plain, for the reservoir.
void Client::Impl::refill(const std::shared_ptr<Link>& link,
                          const std::shared_ptr<Reservoir>& reservoir, const SocketSpec& spec) {
    SocketSpec plain;
    plain.family = spec.family;
    plain.type = spec.type;
    plain.count = static_cast<unsigned>(std::min(options.reservoir, proto::max_fds_per_message));
    proto::Request r = request_for(proto::Op::socket);
    r.specs = {plain};
    const Deadline due = deadline();
    arm_timer(due.at());
    link->submit(std::move(r), {}, due,
                 [reservoir, plain, kind = kind_of(spec)](Link::Outcome outcome) {
                     auto made = sockets_of({plain}, std::move(outcome.answer));
                     std::lock_guard lock(reservoir->mutex);
                     reservoir->refilling.erase(kind);
                     if (!made) {
                         if (made.error().code == ErrorCode::permission_denied) {
                             reservoir->refused.insert(kind);
                         }
                         return;
                     }
                     auto& ready = reservoir->ready[kind];
                     for (auto& socket : *made) {
                         ready.push_back(std::move(socket));
                     }
                 });
    watch(link->fd(), link->holding());
}

// Channels found closed are let go, with their reservoirs and what replies
// they still hold: sockets nobody asked for yet keep no namespace alive.
void Client::Impl::let_go_closed_channels() {
    std::vector<HeldChannel> closed;
    {
        std::lock_guard lock(channels_mutex);
        std::erase_if(channels, [&closed](auto& entry) {
            const auto& lanes = entry.second.lanes;
            if (std::all_of(lanes.begin(), lanes.end(),
                            [](const auto& link) { return link->open(); })) {
                return false;
            }
            closed.push_back(std::move(entry.second));
            return true;
        });
    }
    for (const auto& held : closed) {
        for (const auto& link : held.lanes) {
            link->read_arrived();
        }
    }
    std::lock_guard lock(channels_mutex);
    for (const auto& held : closed) {
        let_go(held);
    }
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
