// Admission, dispatch and the path of a socket request from the caller's
// reference to its namespace's worker.
#include "core/core.hpp"

#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "core/namespace_listing.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/netns_reference.hpp"
#include "nsbroker_config.h"
#include "sys/logging.hpp"

namespace nsbroker::daemon {

namespace {

// A D-Bus caller whose gid the bus does not vouch for gets the kernel's
// overflow gid, which owns nothing.
constexpr gid_t unknown_gid = 65534;

proto::JobCaller job_caller(const Caller& caller) {
    return {caller.uid, caller.gid == static_cast<gid_t>(-1) ? unknown_gid : caller.gid,
            caller.groups};
}

Policy load_policy_or_throw(const std::string& path) {
    auto policy = Policy::load(path);
    if (!policy) {
        throw std::runtime_error("policy " + policy.error().message);
    }
    return std::move(*policy);
}

// Sockets are the policy's business; the daemon's inner state is root's.
bool for_root_only(proto::Op op) {
    return op == proto::Op::namespaces || op == proto::Op::stats;
}

std::vector<std::string> features(WorkerMode mode) {
    std::vector<std::string> out{"socket", "batch", "channel"};
    for (const auto& kind : proto::netns_kind_names) {
        out.push_back("netns-" + std::string(kind.name));
    }
    out.insert(out.end(), {"namespaces", "stats",
                           mode == WorkerMode::fork ? "worker-mode-fork" : "worker-mode-exec"});
    return out;
}

} // namespace

Core::Core(sd_event* loop, CoreConfig config)
    : loop_(loop), config_(std::move(config)), policy_(load_policy_or_throw(config_.policy_path)) {
    if (auto& fds = config_.limits.direct_channel_fds; fds == 0) {
        rlimit limit{};
        fds = ::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY
                  ? limit.rlim_cur / 4
                  : 65536;
    }
    spdlog::info("policy: {} ({} rules)", policy_.origin(), policy_.rules().size());
    pool_ = std::make_unique<WorkerPool>(loop_, config_.workers);
    netns_watch_ = std::make_unique<NetnsWatch>(loop_, config_.workers.netns_dir,
                                                [this] { pool_->names_changed(); });
    netns_watch_->ensure();
    note_activity();
}

// The pool goes first: its workers hold channel tickets, which count
// themselves out of the maps below as they go.
Core::~Core() {
    netns_watch_.reset();
    pool_.reset();
}

// ---- admission -------------------------------------------------------------

Core::Seat::Seat(Seat&& other) noexcept
    : core_(std::exchange(other.core_, nullptr)), uid_(other.uid_) {}

Core::Seat& Core::Seat::operator=(Seat&& other) noexcept {
    if (this != &other) {
        Seat gone(std::move(*this));
        core_ = std::exchange(other.core_, nullptr);
        uid_ = other.uid_;
    }
    return *this;
}

Core::Seat::~Seat() {
    if (core_ == nullptr) {
        return;
    }
    if (auto it = core_->seats_.find(uid_); it != core_->seats_.end() && --it->second == 0) {
        core_->seats_.erase(it);
    }
    --core_->seated_;
}

Result<Core::Seat> Core::seat(uid_t uid) {
    const auto& limits = config_.limits;
    auto root = seats_.find(0);
    std::size_t others = seated_ - (root == seats_.end() ? 0 : root->second);
    std::optional<std::string> why;
    if (uid != 0 && others >= limits.connections) {
        why = "the daemon serves at most " + std::to_string(limits.connections) +
              " connections of users other than root";
    } else if (auto it = seats_.find(uid);
               it != seats_.end() && it->second >= limits.connections_per_uid) {
        why = "uid " + std::to_string(uid) + " has " + std::to_string(it->second) +
              " connections, the most it may have";
    }
    if (why) {
        ++errors_[std::string(to_string(ErrorCode::limit))];
        return make_error(ErrorCode::limit, *why);
    }
    ++seats_[uid];
    ++seated_;
    return Seat(this, uid);
}

std::optional<Error> Core::refusal(const Request& request) const {
    const auto op = request.message.op;
    if (stopping_) {
        return make_error(ErrorCode::unavailable, "the daemon is shutting down");
    }
    if (request.caller.uid != 0 && for_root_only(op)) {
        spdlog::info("denied {} from pid {} uid {}: not root", to_string(op), request.caller.pid,
                     request.caller.uid);
        return make_error(ErrorCode::permission_denied,
                          std::string(to_string(op)) + " is for root only", EPERM);
    }
    // Every front end checks its requests as the codec does; this holds the
    // core to what it relies on even if one did not.
    if (op == proto::Op::socket &&
        (!request.message.netns || request.message.specs.empty() ||
         proto::socket_count(request.message.specs) > proto::max_fds_per_message)) {
        return make_error(ErrorCode::invalid_request,
                          "a socket request names a namespace and asks for 1 to " +
                              std::to_string(proto::max_fds_per_message) + " sockets");
    }
    if (op == proto::Op::socket &&
        request.channel->in_flight >= config_.limits.requests_in_flight) {
        return make_error(ErrorCode::limit, std::to_string(request.channel->in_flight) +
                                                " requests in flight " + request.channel->where +
                                                ", the most it may have");
    }
    return std::nullopt;
}

void Core::serve(Request request, Answer answer) {
    ++requests_;
    if (auto error = refusal(request)) {
        answer_with(answer, std::move(*error));
        return;
    }
    switch (request.message.op) {
    case proto::Op::hello:
        answer_with(answer, hello());
        return;
    case proto::Op::ping:
        answer_with(answer, proto::PongReply{});
        return;
    case proto::Op::namespaces:
        answer_with(answer, list_namespaces(request));
        return;
    case proto::Op::stats:
        answer_with(answer, stats());
        return;
    case proto::Op::socket:
        open_sockets(std::move(request), std::move(answer));
        return;
    }
}

void Core::count_unreadable(const Error& error) {
    ++requests_;
    ++errors_[std::string(to_string(error.code))];
}

void Core::answer_with(Answer& answer, proto::ReplyBody body, std::vector<UniqueFd> fds) {
    if (auto* error = std::get_if<Error>(&body)) {
        ++errors_[std::string(to_string(error->code))];
    }
    answer(std::move(body), std::move(fds));
}

// ---- sockets ---------------------------------------------------------------

void Core::open_sockets(Request request, Answer answer) {
    note_activity();
    // Counted in flight on its channel until answered, whatever the answer.
    ++request.channel->in_flight;
    answer = [channel = request.channel, inner = std::move(answer)](proto::ReplyBody body,
                                                                    std::vector<UniqueFd> fds) {
        --channel->in_flight;
        inner(std::move(body), std::move(fds));
    };
    const auto& ref = *request.message.netns;
    const bool root = request.caller.uid == 0;
    if (auto why = unix_address_refusal(request.caller, request.message.specs)) {
        answer_with(answer, root ? make_error(ErrorCode::invalid_request, *why)
                                 : make_error(ErrorCode::permission_denied, *why, EPERM));
        return;
    }
    proto::WorkerJob job{0, std::move(request.message.specs), job_caller(request.caller),
                         std::nullopt};
    if (root && send_to_running(request, job, answer)) {
        return;
    }
    // A path would be opened with the daemon's rights, in its mount
    // namespace, where /proc/self is the daemon: whatever it answered would
    // tell the caller about files it cannot see. A caller opens its paths
    // itself and sends the descriptor (the library does).
    if (!root && ref.kind == proto::NetnsRef::Kind::path) {
        answer_with(answer,
                    make_error(ErrorCode::permission_denied,
                               "nsbrokerd opens no path for a caller other than root: open it "
                               "yourself and send the descriptor ({\"fd\": 0}; libnsbroker does "
                               "this for you)",
                               EPERM));
        return;
    }
    auto netns =
        resolve_netns(ref, std::move(request.netns_fd), config_.workers.netns_dir, request.process);
    if (!netns) {
        spdlog::debug("pid {}: {}: {}", request.caller.pid, ref.describe(), netns.error().message);
        answer_with(answer, std::move(netns).error());
        return;
    }
    WorkerSponsor sponsor;
    ChannelOffer offer{netns->identity, netns->name, false};
    if (!root) {
        offer.owned_by_caller = owns(request.caller, *netns);
        auto decision = authorize(request, job.specs, *netns, offer.owned_by_caller);
        if (!decision) {
            answer_with(answer, std::move(decision).error());
            return;
        }
        if (const Rule* rule = decision->rule) {
            if (request.channel->in_flight > rule->max_requests_in_flight) {
                answer_with(answer, make_error(ErrorCode::limit,
                                               "rule \"" + rule->name + "\" allows " +
                                                   std::to_string(rule->max_requests_in_flight) +
                                                   " requests in flight"));
                return;
            }
            job.restricted = job_restriction(*rule);
        }
        if (decision->owned_only) {
            sponsor.uid = request.caller.uid;
        }
    }
    if (netns->name) {
        netns_watch_->ensure();
    }
    auto done = from_worker(request, std::move(answer), offer);
    pool_->submit(std::move(*netns), std::move(job), sponsor, std::move(done));
}

// Root's requests need no facts about the namespace, so one that already
// has a worker is found by one stat(2).
bool Core::send_to_running(Request& request, proto::WorkerJob& job, Answer& answer) {
    const auto& ref = *request.message.netns;
    auto known = peek_identity(ref, request.netns_fd.borrow(), config_.workers.netns_dir);
    if (!known) {
        return false;
    }
    std::optional<std::string> name;
    if (ref.kind == proto::NetnsRef::Kind::name) {
        name = ref.text;
    }
    JobDone done = from_worker(request, answer, ChannelOffer{*known, name, false});
    if (!pool_->submit_to_running(*known, name, job, done)) {
        return false;
    }
    answer = nullptr;
    return true;
}

JobDone Core::from_worker(const Request& request, Answer answer,
                          std::optional<ChannelOffer> offer) {
    const bool root = request.caller.uid == 0;
    // Whom to grant a channel, kept only when the request asks for one.
    std::optional<std::pair<Caller, std::shared_ptr<Channel>>> granting;
    if (offer && request.message.channel) {
        granting.emplace(request.caller, request.channel);
    }
    return [this, uid = request.caller.uid, pid = request.caller.pid, id = request.message.id,
            netns = root ? std::string() : request.message.netns->describe(),
            granting = std::move(granting), offer = std::move(offer), answer = std::move(answer)](
               Result<proto::SocketReply> result, std::vector<UniqueFd> fds) mutable {
        note_activity();
        if (result) {
            sockets_ += fds.size();
            proto::SocketReply reply = std::move(result).value();
            if (granting && fds.size() < proto::max_fds_per_message) {
                if (auto client_end = open_channel(granting->first, granting->second, *offer)) {
                    reply.channel = proto::DirectChannel{offer->identity.dev, offer->identity.ino};
                    fds.push_back(std::move(*client_end));
                }
            }
            answer_with(answer, std::move(reply), std::move(fds));
            return;
        }
        if (result.error().code == ErrorCode::permission_denied) {
            // The worker's part of the policy: ports below the namespace's
            // ip_unprivileged_port_start. Only callers other than root can be
            // refused there.
            ScopedLogFields fields{{uid, pid, netns, "permission_denied"}};
            spdlog::warn("denied socket request {} of uid {} pid {} in {} by its worker: {}", id,
                         uid, pid, netns, result.error().message);
        }
        answer_with(answer, std::move(result).error());
    };
}

// A direct channel's place in the limits, for as long as its worker serves it.
class Core::ChannelTicket : public ChannelLease {
  public:
    ChannelTicket(Core& core, uid_t uid, std::shared_ptr<Channel> channel)
        : core_(core), uid_(uid), channel_(std::move(channel)) {
        ++core_.direct_channels_;
        ++core_.direct_channels_by_uid_[uid_];
        ++channel_->direct_channels;
    }
    ~ChannelTicket() override {
        --core_.direct_channels_;
        if (auto it = core_.direct_channels_by_uid_.find(uid_); --it->second == 0) {
            core_.direct_channels_by_uid_.erase(it);
        }
        --channel_->direct_channels;
    }
    ChannelTicket(const ChannelTicket&) = delete;
    ChannelTicket& operator=(const ChannelTicket&) = delete;

  private:
    Core& core_;
    uid_t uid_;
    std::shared_ptr<Channel> channel_;
};

std::optional<UniqueFd> Core::open_channel(const Caller& caller,
                                           const std::shared_ptr<Channel>& channel,
                                           const ChannelOffer& offer) {
    const auto& limits = config_.limits;
    auto held_by = [this](uid_t uid) {
        auto it = direct_channels_by_uid_.find(uid);
        return it == direct_channels_by_uid_.end() ? std::size_t{0} : it->second;
    };
    const std::size_t held_by_users = direct_channels_ - held_by(0);
    if (stopping_ || direct_channels_ >= limits.direct_channels ||
        channel->direct_channels >= limits.direct_channels_per_channel ||
        (caller.uid != 0 &&
         (held_by(caller.uid) >= limits.direct_channels_per_uid ||
          (held_by_users + 1) * proto::max_fds_per_message > limits.direct_channel_fds))) {
        return std::nullopt;
    }
    proto::ChannelGrant grant{next_direct_channel_, job_caller(caller),    caller.pid,
                              offer.name,           offer.owned_by_caller, std::nullopt};
    grant.stall_timeout = static_cast<std::uint32_t>(limits.stall_timeout.count());
    if (caller.uid != 0) {
        grant.policy = policy_.for_caller(caller);
        if (policy_.rules_for(caller) == 0) {
            return std::nullopt; // the policy changed since: nothing to serve on it
        }
    }
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
        spdlog::warn("cannot open a direct channel: socketpair: {}", std::strerror(errno));
        return std::nullopt;
    }
    UniqueFd client_end{pair[0]};
    UniqueFd worker_end{pair[1]};
    auto ticket = std::make_unique<ChannelTicket>(*this, caller.uid, channel);
    if (!pool_->grant_channel(offer.identity, grant, std::move(worker_end), std::move(ticket))) {
        return std::nullopt;
    }
    ++next_direct_channel_;
    spdlog::debug("direct channel {} for uid {} pid {} to the worker of {}:{}", grant.id,
                  caller.uid, caller.pid, offer.identity.dev, offer.identity.ino);
    return client_end;
}

bool Core::owns(const Caller& caller, const ResolvedNetns& netns) {
    auto owned = netns_owned_by(netns.fd.get(), caller.uid);
    return owned && *owned;
}

Result<Decision> Core::authorize(const Request& request,
                                 const std::vector<proto::SocketSpec>& specs,
                                 const ResolvedNetns& netns, bool owned_by_caller) {
    const Caller& caller = request.caller;
    const auto& ref = *request.message.netns;
    NamespaceFacts facts;
    facts.name = netns.name;
    facts.owned_by_caller = owned_by_caller;
    Decision decision = policy_.decide(caller, facts, specs);
    if (decision.allowed) {
        return decision;
    }
    ScopedLogFields fields{{caller.uid, caller.pid, ref.describe(), "permission_denied"}};
    spdlog::warn("denied socket request {} of uid {} pid {} in {} ({}:{}): {}", request.message.id,
                 caller.uid, caller.pid, ref.describe(), netns.identity.dev, netns.identity.ino,
                 decision.reason);
    return make_error(ErrorCode::permission_denied, decision.reason, EPERM);
}

// ---- everything else --------------------------------------------------------

proto::HelloReply Core::hello() const {
    return {proto::protocol_version, NSBROKER_VERSION, features(config_.workers.mode)};
}

proto::NamespacesReply Core::list_namespaces(const Request& request) const {
    auto listing = namespace_listing(config_.workers.netns_dir, pool_->describe());
    if (!request.paged_listing) {
        return namespace_page(std::move(listing), std::nullopt, SIZE_MAX, false);
    }
    return namespace_page(std::move(listing), request.message.cursor,
                          request.message.limit.value_or(proto::max_namespaces_limit), true);
}

proto::StatsReply Core::stats() const {
    proto::StatsReply s;
    s.uptime_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    const auto& channels = pool_->served_on_channels();
    s.requests = requests_ + channels.requests;
    s.sockets = sockets_ + channels.sockets;
    s.errors = errors_;
    for (auto [code, count] : channels.errors) {
        s.errors[std::string(to_string(code))] += count;
    }
    s.clients = seated_;
    s.workers_spawned = pool_->spawned();
    s.workers_live = pool_->live();
    s.workers_exited = pool_->exited();
    return s;
}

bool Core::idle() const {
    return pool_->jobs_in_flight() == 0;
}

void Core::note_activity() {
    sd_event_now(loop_, CLOCK_MONOTONIC, &last_activity_);
}

void Core::reload_policy() {
    auto fresh = Policy::load(config_.policy_path);
    if (!fresh) {
        spdlog::error("SIGHUP: policy {} refused; the policy in force stays: {}",
                      config_.policy_path, fresh.error().message);
        return;
    }
    policy_ = std::move(*fresh);
    // Every direct channel was granted under the old rules: their callers
    // ask the daemon again, and are judged by the new ones.
    pool_->revoke_channels();
    spdlog::info("SIGHUP: policy {} ({} rules) in force", policy_.origin(), policy_.rules().size());
}

void Core::stop(std::function<void()> stopped) {
    if (stopping_) {
        return;
    }
    stopping_ = true;
    // A worker asked to exit answers every job it was sent before it goes.
    pool_->stop(std::move(stopped));
}

} // namespace nsbroker::daemon
