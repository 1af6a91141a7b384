// Worker process: setns once, prove where it is, then serve jobs until the
// daemon closes the channel.
//
// Startup reply: a Reply to id 0, an empty SocketReply when the worker is in
// its namespace, or an Error saying why it is not. Then, for each WorkerJob, one
// Reply with the same id and the sockets' fds.
//
// The daemon may also give the worker direct channels: one end of a
// socketpair whose other end a caller holds, with the caller's identity and
// the rules that apply to it. The worker reads socket requests from callers
// there and judges each as the daemon would (the same codec, the same policy
// code, the same errors), then makes the sockets as for a job. Input from a
// caller never ends the worker: what cannot be read closes that channel only.
//
// The worker enforces the one part of the policy the daemon cannot judge:
// whether a port is below the namespace's net.ipv4.ip_unprivileged_port_start,
// a sysctl only a process inside the namespace can read.
#include "workers/worker_main.hpp"

#include <fcntl.h>
#include <linux/sockios.h>
#include <malloc.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstring>
#include <list>
#include <spdlog/spdlog.h>

#include "nsbroker/address.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "nsbroker/worker_protocol.hpp"
#include "policy/policy.hpp"
#include "sys/netns.hpp"
#include "workers/socket_factory.hpp"
#include "workers/worker_sandbox.hpp"

namespace nsbroker::daemon {

bool place_worker_fds(int channel, int netns, int filter) noexcept {
    // Lift each above the target slots first, so that dup2 cannot clobber one
    // with another.
    const int targets[] = {worker_channel_fd, worker_netns_fd, worker_filter_fd};
    const int fds[] = {channel, netns, filter};
    int high[3] = {-1, -1, -1};
    for (int i = 0; i < 3; ++i) {
        if (fds[i] >= 0 && (high[i] = ::fcntl(fds[i], F_DUPFD, 10)) < 0) {
            return false;
        }
    }
    // dup2 leaves them without close-on-exec, so that an exec'd worker image
    // inherits exactly these; a slot with nothing for it is left closed.
    for (int i = 0; i < 3; ++i) {
        if (high[i] >= 0 ? ::dup2(high[i], targets[i]) < 0
                         : ::close(targets[i]) < 0 && errno != EBADF) {
            return false;
        }
    }
    return ::close_range(static_cast<unsigned>(worker_filter_fd) + 1, ~0U, 0) == 0;
}

namespace {

void send_reply(int channel, const proto::Reply& reply, const std::vector<UniqueFd>& fds = {}) {
    auto raw = proto::raw_fds(fds);
    proto::send_message(channel, proto::encode_reply(reply), raw);
}

// The namespace's first unprivileged port, read afresh for each check from a
// file opened once inside the namespace (the filter forbids opening files).
class PortFloor {
  public:
    Result<void> open() {
        fd_.reset(::open("/proc/sys/net/ipv4/ip_unprivileged_port_start", O_RDONLY | O_CLOEXEC));
        if (!fd_) {
            return kernel_error("ip_unprivileged_port_start");
        }
        return {};
    }

    [[nodiscard]] int read() const {
        char text[16];
        ssize_t n = ::pread(fd_.get(), text, sizeof text, 0);
        int value = 0;
        if (n <= 0 || std::from_chars(text, text + n, value).ec != std::errc{}) {
            return 1024; // the kernel's default, should the file fail us
        }
        return value;
    }

  private:
    UniqueFd fd_;
};

// Refuses a bind below the namespace's first unprivileged port when the
// caller's rule does not grant low_ports. Without CAP_NET_BIND_SERVICE the
// kernel would refuse it too; this says why.
Result<void> check_low_ports(const proto::WorkerJob& job, const PortFloor& floor) {
    if (!job.restricted || job.restricted->grants_kind(proto::Grant::low_ports)) {
        return {};
    }
    for (std::size_t i = 0; i < job.specs.size(); ++i) {
        const auto& s = job.specs[i];
        auto port = s.bind ? proto::inet_port(s.family, *s.bind) : std::nullopt;
        if (!port || *port == 0) {
            continue;
        }
        if (int start = floor.read(); *port < start) {
            return make_error(ErrorCode::permission_denied,
                              "rule \"" + job.restricted->rule + "\": sockets[" +
                                  std::to_string(i) + "]: port " + std::to_string(*port) +
                                  " is below the namespace's ip_unprivileged_port_start (" +
                                  std::to_string(start) + ") and low_ports is not granted",
                              EACCES);
        }
    }
    return {};
}

// Who the worker is while it makes a job's sockets: the caller's identity,
// and for each step the capabilities its grants allow. Both change only when
// they differ from what is held, so a run of jobs for one caller costs no
// system call here.
class Credentials {
  public:
    Result<void> become(const proto::JobCaller& caller) {
        if (caller_ == caller) {
            return {};
        }
        caller_.reset();
        if (auto changed = become_caller(caller); !changed) {
            return changed;
        }
        caller_ = caller;
        held_ = WorkerCapabilities{false, false, false};
        return {};
    }

    Result<void> use(const WorkerCapabilities& wanted) {
        if (wanted == held_) {
            return {};
        }
        if (auto set = set_effective_capabilities(wanted); !set) {
            return set;
        }
        held_ = wanted;
        return {};
    }

  private:
    std::optional<proto::JobCaller> caller_; // unknown until the first job
    WorkerCapabilities held_;                // what become() and use() last left effective
};

// Joins the namespace on fd 4, checks the kernel agrees where we are, and
// gives up every privilege the rest of the worker's life does not need.
Result<void> enter_namespace(PortFloor& floor, const WorkerFilter& filter) {
    UniqueFd netns{worker_netns_fd};
    auto target = verify_netns(netns.get());
    if (!target) {
        return std::move(target).error();
    }
    if (::setns(netns.get(), CLONE_NEWNET) < 0) {
        return kernel_error("setns");
    }
    auto now = current_netns();
    if (!now) {
        return std::move(now).error();
    }
    if (*now != *target) {
        return make_error(ErrorCode::internal, "after setns the worker is not in its namespace");
    }
    netns.reset(); // so that the sysctl takes its place as fd 4
    if (auto opened = floor.open(); !opened) {
        return opened;
    }
    return confine_worker(filter);
}

// A spare worker, started before any namespace needed it: waits for the
// daemon to name its namespace, and puts that descriptor on fd 4. An exit
// status when it is not to enter one: 0 when the daemon closed the channel
// (the spare is not needed), 1 when it sent something else.
std::optional<int> await_namespace(int channel) {
    auto received = proto::receive_message(channel);
    if (received.status == proto::ReceiveStatus::closed) {
        return 0;
    }
    std::optional<Result<proto::ToWorker>> message;
    if (received.status == proto::ReceiveStatus::message) {
        message = proto::decode_to_worker(received.message.data);
    }
    if (!message || !*message || !std::holds_alternative<proto::EnterNamespace>(**message) ||
        received.message.fds.size() != 1) {
        spdlog::error("worker {}: a spare expects the namespace to enter first", ::getpid());
        return 1;
    }
    // Received on the lowest free descriptor, which may already be fd 4.
    UniqueFd netns = std::move(received.message.fds.front());
    if (netns.get() != worker_netns_fd && ::dup2(netns.get(), worker_netns_fd) < 0) {
        return 1;
    }
    if (netns.get() == worker_netns_fd) {
        (void)netns.release();
    }
    return std::nullopt;
}

void reset_signals() {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGPIPE}) {
        ::signal(sig, SIG_DFL);
    }
    ::signal(SIGPIPE, SIG_IGN);
}

// Bounds on what callers hold of a worker through direct channels. A
// caller that stops reading its replies is not read from again until it has
// caught up: what it has not read stays charged to the worker's user.
constexpr std::size_t max_channels = 256;
constexpr std::size_t max_unread_fds_per_channel = proto::max_fds_per_message;
// While a channel waits for its caller to read, the worker looks again this
// often (the kernel gives no event for a peer's reads).
constexpr int unread_recheck_ms = 2;
// How often the worker tells the daemon what its channels served: the daemon
// counts it as use of the worker, and in its figures.
constexpr int report_interval_ms = 1000;
constexpr std::chrono::milliseconds report_interval{report_interval_ms};

// One direct channel: the worker's end, and whom and under which rules it
// serves.
struct DirectChannel {
    UniqueFd fd;
    proto::ChannelGrant grant;
    std::optional<Policy> policy; // absent for root
    // Revoked: what is queued is answered `unavailable`, unserved, and then
    // the channel closes; the caller's library asks nsbrokerd instead.
    bool revoked = false;
    std::size_t unread_fds = 0; // sent since the caller was last seen to have read all
    // A request read whose sockets would leave more than
    // max_unread_fds_per_channel unread: served once the caller has read.
    std::optional<proto::Request> held;
    // A reply the caller's queue had no room for, sent before anything else
    // is read.
    std::optional<std::pair<std::string, std::vector<UniqueFd>>> unsent;
    // Since when the channel has waited for its caller to read, with a
    // request held or a reply unsent, and what the caller had left unread
    // then (SIOCOUTQ): past grant.stall_timeout with nothing read since, it
    // closes.
    std::chrono::steady_clock::time_point waiting_since;
    int unread_when_waiting = 0;
};

class WorkerServer {
  public:
    WorkerServer(int control, PortFloor& floor) : control_(control), floor_(floor) {}

    // Serves until the daemon closes the control channel; the exit status.
    int run() {
        std::vector<pollfd> fds;
        std::vector<DirectChannel*> polled;
        for (;;) {
            fds.assign(1, pollfd{control_, POLLIN, 0});
            polled.clear();
            bool throttled = false;
            int stall_check = -1; // ms until an unsent reply has waited too long
            for (auto& channel : channels_) {
                if (channel.held && !channel.unsent &&
                    (channel.revoked || has_room(channel, *channel.held))) {
                    proto::Request r = std::move(*channel.held);
                    channel.held.reset();
                    serve_request(channel, r);
                } else if ((channel.held || channel.unsent) && stalled_too_long(channel) &&
                           !read_since_waiting(channel)) {
                    // Whether it will ever read is up to the caller; one
                    // whose own end waits in this channel's queue never
                    // will, and would keep the channel's place for good.
                    spdlog::warn("worker {}: channel {}: its caller left its replies unread for "
                                 "{} s; closed",
                                 ::getpid(), channel.grant.id, channel.grant.stall_timeout);
                    close_channel(channel);
                    continue;
                }
                short events = POLLIN;
                if (channel.unsent) {
                    events = POLLOUT;
                    stall_check = sooner(stall_check, ms_until_stalled(channel));
                } else if (channel.held) {
                    throttled = true;
                    events = 0;
                }
                fds.push_back(pollfd{channel.fd.get(), events, 0});
                polled.push_back(&channel);
            }
            int timeout = throttled ? unread_recheck_ms : stall_check;
            if (served_.requests != 0) {
                timeout = timeout < 0 ? report_interval_ms : std::min(timeout, report_interval_ms);
            }
            if (trim_when_idle_ && ::poll(fds.data(), fds.size(), 0) == 0) {
                // Once, after the first job, when there is nothing to do:
                // the heap pages that starting and that job wrote (copies
                // of the daemon's, in a forked worker) go back, and the
                // first job did not wait for it.
                ::malloc_trim(0);
                trim_when_idle_ = false;
                trimmed_ = true;
            }
            int n = ::poll(fds.data(), fds.size(), timeout);
            if (n < 0 && errno != EINTR) {
                spdlog::error("worker {}: poll: {}", ::getpid(), std::strerror(errno));
                return 1;
            }
            if (n == 0) {
                report_served(true);
            }
            if (n <= 0) {
                continue;
            }
            if (fds[0].revents != 0) {
                if (auto status = serve_daemon(); status) {
                    return *status;
                }
            }
            for (std::size_t i = 1; i < fds.size(); ++i) {
                if (fds[i].revents != 0) {
                    serve_channel(*polled[i - 1], fds[i].revents);
                }
            }
            channels_.remove_if([](const DirectChannel& c) { return !c.fd; });
        }
    }

  private:
    // One message from the daemon; an exit status when the worker is done.
    std::optional<int> serve_daemon() {
        auto received = proto::receive_message(control_);
        if (received.status == proto::ReceiveStatus::closed) {
            report_served(true); // what the channels served is counted even now
            return 0;
        }
        if (received.status != proto::ReceiveStatus::message) {
            spdlog::error("worker {}: unreadable message from the daemon", ::getpid());
            return 1;
        }
        auto message = proto::decode_to_worker(received.message.data);
        if (!message) {
            spdlog::error("worker {}: bad message from the daemon: {}", ::getpid(),
                          message.error().describe());
            return 1;
        }
        if (auto* job = std::get_if<proto::WorkerJob>(&*message)) {
            // The daemon never sends fds with a job; any that arrive are
            // closed by the message's destructor.
            auto [reply, fds] = serve(*job);
            send_reply(control_, reply, fds);
            trim_when_idle_ = !trimmed_;
        } else if (auto* grant = std::get_if<proto::ChannelGrant>(&*message)) {
            if (received.message.fds.size() != 1) {
                spdlog::error("worker {}: a channel came without its descriptor", ::getpid());
                return 1;
            }
            open_channel(std::move(*grant), std::move(received.message.fds.front()));
        } else if (auto* revoke = std::get_if<proto::RevokeChannels>(&*message)) {
            for (auto& channel : channels_) {
                if (revoke->all || std::find(revoke->ids.begin(), revoke->ids.end(),
                                             channel.grant.id) != revoke->ids.end()) {
                    revoke_channel(channel);
                }
            }
        } else {
            spdlog::error("worker {}: told to enter a namespace a second time", ::getpid());
            return 1;
        }
        return std::nullopt;
    }

    void open_channel(proto::ChannelGrant grant, UniqueFd fd) {
        std::optional<Policy> policy;
        if (!grant.policy && grant.caller.uid != 0) {
            // Only root is served without rules.
            spdlog::error("worker {}: channel {} for uid {} came without its rules", ::getpid(),
                          grant.id, grant.caller.uid);
            closed(grant.id);
            return;
        }
        if (grant.policy) {
            auto parsed = Policy::parse(*grant.policy);
            if (!parsed) {
                spdlog::error("worker {}: channel {}: its rules: {}", ::getpid(), grant.id,
                              parsed.error().message);
                closed(grant.id);
                return;
            }
            policy = std::move(*parsed);
        }
        if (channels_.size() >= max_channels) {
            closed(grant.id);
            return;
        }
        ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
        auto& channel = channels_.emplace_back();
        channel.fd = std::move(fd);
        channel.grant = std::move(grant);
        channel.policy = std::move(policy);
    }

    // What is queued is answered `unavailable`, unserved; the caller's next
    // send fails. Either sends the caller back to the daemon.
    static void revoke_channel(DirectChannel& channel) {
        if (!channel.revoked) {
            channel.revoked = true;
            ::shutdown(channel.fd.get(), SHUT_RD);
        }
    }

    void close_channel(DirectChannel& channel) {
        if (!channel.fd) {
            return;
        }
        channel.fd.reset();
        closed(channel.grant.id);
    }

    void closed(std::uint64_t id) {
        proto::send_message(control_, proto::encode_notice(proto::ChannelClosed{id}));
    }

    // Tells the daemon what the channels served, when it has been a while.
    void report_served(bool now) {
        if (served_.requests == 0) {
            return;
        }
        auto time = std::chrono::steady_clock::now();
        if (!now && time - last_report_ < report_interval) {
            return;
        }
        proto::send_message(control_, proto::encode_notice(served_));
        served_ = {};
        last_report_ = time;
    }

    // Starts a wait for channel's caller to read.
    static void start_waiting(DirectChannel& channel) {
        channel.waiting_since = std::chrono::steady_clock::now();
        channel.unread_when_waiting = unread_by_caller(channel);
    }

    // What the caller has left unread of what the worker sent it, in the
    // kernel's accounting (SIOCOUTQ), or INT_MAX when unknown.
    static int unread_by_caller(const DirectChannel& channel) {
        int queued = 0;
        return ::ioctl(channel.fd.get(), SIOCOUTQ, &queued) == 0 ? queued : INT_MAX;
    }

    // Whether the caller has read anything since the channel began to wait:
    // then it waits afresh. The kernel reports room to send (POLLOUT) only
    // once three quarters of what was sent is read, so a caller that reads
    // slowly but steadily would otherwise look stalled.
    static bool read_since_waiting(DirectChannel& channel) {
        const int unread = unread_by_caller(channel);
        if (unread >= channel.unread_when_waiting) {
            return false;
        }
        channel.waiting_since = std::chrono::steady_clock::now();
        channel.unread_when_waiting = unread;
        return true;
    }

    static bool stalled_too_long(const DirectChannel& channel) {
        return channel.grant.stall_timeout != 0 &&
               std::chrono::steady_clock::now() - channel.waiting_since >=
                   std::chrono::seconds(channel.grant.stall_timeout);
    }

    // The sooner of two poll timeouts, where -1 is never.
    static int sooner(int a, int b) { return a < 0 ? b : b < 0 ? a : std::min(a, b); }

    // How long poll may wait before channel has waited too long for its
    // caller, rounded up; -1 for never.
    static int ms_until_stalled(const DirectChannel& channel) {
        if (channel.grant.stall_timeout == 0) {
            return -1;
        }
        auto left = channel.waiting_since + std::chrono::seconds(channel.grant.stall_timeout) -
                    std::chrono::steady_clock::now();
        return static_cast<int>(std::max<std::chrono::milliseconds::rep>(
            1, std::chrono::ceil<std::chrono::milliseconds>(left).count()));
    }

    // Whether the sockets r asks for may be sent without leaving the caller
    // more than max_unread_fds_per_channel unread. Asked when r has come: a
    // caller that reads each reply before it sends again has read them all.
    static bool has_room(DirectChannel& channel, const proto::Request& r) {
        const std::size_t count = proto::socket_count(r.specs);
        if (channel.unread_fds + count <= max_unread_fds_per_channel) {
            return true;
        }
        int queued = 0;
        if (::ioctl(channel.fd.get(), SIOCOUTQ, &queued) == 0 && queued == 0) {
            channel.unread_fds = 0;
            return true;
        }
        return false;
    }

    void serve_channel(DirectChannel& channel, short revents) {
        if (channel.unsent) {
            if (revents & (POLLOUT | POLLHUP | POLLERR)) {
                auto [bytes, fds] = std::move(*channel.unsent);
                channel.unsent.reset();
                send_to_caller(channel, std::move(bytes), std::move(fds));
            }
            return;
        }
        if (channel.held) {
            // Not read from until the held request is served; a caller that
            // hung up meanwhile is gone with it.
            if (revents & (POLLHUP | POLLERR)) {
                close_channel(channel);
            }
            return;
        }
        auto received = proto::receive_message(channel.fd.get(), proto::max_message_size, true);
        // Refused below and closed with the message: a lingering socket
        // among them must not hold up the worker everyone shares.
        proto::never_linger(received.message.fds);
        switch (received.status) {
        case proto::ReceiveStatus::would_block:
            return;
        case proto::ReceiveStatus::closed:
            close_channel(channel);
            return;
        case proto::ReceiveStatus::too_large:
        case proto::ReceiveStatus::fds_truncated:
            answer(channel, {std::nullopt, make_error(ErrorCode::limit, "message too large")});
            close_channel(channel);
            return;
        case proto::ReceiveStatus::message:
            break;
        }
        auto request = proto::decode_channel_request(received.message.data);
        if (auto* bad = std::get_if<proto::RequestError>(&request)) {
            answer(channel, {bad->id, bad->error});
            return;
        }
        auto& r = std::get<proto::Request>(request);
        if (!received.message.fds.empty()) {
            answer(channel, {r.id, make_error(ErrorCode::invalid_request,
                                              "a worker channel takes no descriptors")});
            return;
        }
        if (!channel.revoked && !has_room(channel, r)) {
            channel.held = std::move(r);
            start_waiting(channel);
            return;
        }
        serve_request(channel, r);
    }

    void serve_request(DirectChannel& channel, proto::Request& r) {
        if (channel.revoked) {
            send_to_caller(
                channel,
                proto::encode_reply({r.id, make_error(ErrorCode::unavailable,
                                                      "the direct channel was revoked: nsbrokerd "
                                                      "serves the request instead")}),
                {});
            return;
        }
        auto [reply, fds] = serve_for(channel, r);
        answer(channel, reply, std::move(fds));
    }

    // Sends the caller its reply, counted in what the channels served.
    void answer(DirectChannel& channel, const proto::Reply& reply, std::vector<UniqueFd> fds = {}) {
        ++served_.requests;
        served_.sockets += fds.size();
        if (const auto* error = std::get_if<Error>(&reply.body)) {
            ++served_.errors[error->code];
        }
        send_to_caller(channel, proto::encode_reply(reply), std::move(fds));
        report_served(false);
    }

    void send_to_caller(DirectChannel& channel, std::string bytes, std::vector<UniqueFd> fds) {
        proto::SendStatus status = proto::SendStatus::closed;
        try {
            status = proto::send_message(channel.fd.get(), bytes, proto::raw_fds(fds), true);
        } catch (const SystemError& e) {
            spdlog::warn("worker {}: channel {}: {}", ::getpid(), channel.grant.id, e.what());
        }
        switch (status) {
        case proto::SendStatus::sent:
            channel.unread_fds += fds.size();
            return;
        case proto::SendStatus::would_block:
            channel.unsent.emplace(std::move(bytes), std::move(fds));
            start_waiting(channel);
            return;
        case proto::SendStatus::closed:
            close_channel(channel);
            return;
        }
    }

    // A request from a channel's caller, judged as the daemon judges one.
    std::pair<proto::Reply, std::vector<UniqueFd>> serve_for(const DirectChannel& channel,
                                                             proto::Request& request) {
        const auto& grant = channel.grant;
        const Caller caller{grant.caller.uid, grant.caller.gid, grant.caller.groups, grant.pid};
        const bool root = caller.uid == 0;
        auto refuse = [&](Error error) {
            return std::pair{proto::Reply{request.id, std::move(error)}, std::vector<UniqueFd>{}};
        };
        if (auto why = unix_address_refusal(caller, request.specs)) {
            return refuse(root ? make_error(ErrorCode::invalid_request, *why)
                               : make_error(ErrorCode::permission_denied, *why, EPERM));
        }
        proto::WorkerJob job{request.id, std::move(request.specs), grant.caller, std::nullopt};
        if (channel.policy) {
            NamespaceFacts facts{grant.name, grant.owned_by_caller};
            Decision decision = channel.policy->decide(caller, facts, job.specs);
            if (!decision.allowed) {
                spdlog::warn("denied socket request {} of uid {} pid {} on its channel: {}",
                             request.id, caller.uid, caller.pid, decision.reason);
                return refuse(make_error(ErrorCode::permission_denied, decision.reason, EPERM));
            }
            if (decision.rule != nullptr) {
                job.restricted = job_restriction(*decision.rule);
            }
        }
        auto served = serve(job);
        if (const auto* e = std::get_if<Error>(&served.first.body);
            e && e->code == ErrorCode::permission_denied) {
            // The worker's own part of the policy (ports below the
            // namespace's floor), logged as nsbrokerd logs it for its jobs.
            spdlog::warn(
                "denied socket request {} of uid {} pid {} on its channel by its worker: {}",
                request.id, caller.uid, caller.pid, e->message);
        }
        return served;
    }

    // Makes a job's sockets, or says why not.
    std::pair<proto::Reply, std::vector<UniqueFd>> serve(const proto::WorkerJob& job) {
        auto refuse = [&](Error error) {
            return std::pair{proto::Reply{job.id, std::move(error)}, std::vector<UniqueFd>{}};
        };
        if (auto allowed = check_low_ports(job, floor_); !allowed) {
            return refuse(allowed.error());
        }
        if (auto became = credentials_.become(job.caller); !became) {
            return refuse(became.error());
        }
        const UseCapabilities use = [this](const WorkerCapabilities& wanted) {
            return credentials_.use(wanted);
        };
        auto made = make_sockets(job.specs, job.restricted, use);
        if (!made) {
            return refuse(made.error());
        }
        return {proto::Reply{job.id, std::move(made->reply)}, std::move(made->fds)};
    }

    int control_;
    PortFloor& floor_;
    Credentials credentials_;
    std::list<DirectChannel> channels_;
    proto::ChannelsServed served_; // not yet reported
    bool trim_when_idle_ = false;
    bool trimmed_ = false;
    std::chrono::steady_clock::time_point last_report_;
};

} // namespace

int run_worker(const WorkerFilter* filter) {
    reset_signals();
    // The daemon's end of the channel closes when it exits; this covers the
    // case where it is killed before it can close it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int channel = worker_channel_fd;
    try {
        std::optional<WorkerFilter> passed;
        if (filter == nullptr) {
            auto read = WorkerFilter::read(UniqueFd{worker_filter_fd});
            if (!read) {
                send_reply(channel, proto::Reply{0, read.error()});
                return 1;
            }
            filter = &passed.emplace(std::move(*read));
        }
        if (auto prepared = prepare_confinement(*filter); !prepared) {
            send_reply(channel, proto::Reply{0, prepared.error()});
            return 1;
        }
        if (::fcntl(worker_netns_fd, F_GETFD) < 0) {
            if (auto status = await_namespace(channel)) {
                return *status;
            }
        }
        PortFloor floor;
        if (auto entered = enter_namespace(floor, *filter); !entered) {
            send_reply(channel, proto::Reply{0, entered.error()});
            return 1;
        }
        send_reply(channel, proto::Reply{0, proto::SocketReply{}});
        return WorkerServer(channel, floor).run();
    } catch (const std::exception& e) {
        spdlog::error("worker {}: {}", ::getpid(), e.what());
        return 1;
    }
}

int serve_in_place(int control) {
    try {
        PortFloor floor;
        if (auto opened = floor.open(); !opened) {
            spdlog::error("worker {}: {}", ::getpid(), opened.error().describe());
            return 1;
        }
        return WorkerServer(control, floor).run();
    } catch (const std::exception& e) {
        spdlog::error("worker {}: {}", ::getpid(), e.what());
        return 1;
    }
}

} // namespace nsbroker::daemon
