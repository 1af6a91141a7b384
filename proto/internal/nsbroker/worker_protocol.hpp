// The protocol between nsbrokerd and its workers: the job a worker is sent,
// whom its sockets are for and what a policy rule grants, and the job's JSON.
// Private to nsbroker: never installed, no part of libnsbroker.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "nsbroker/error.hpp"
#include "nsbroker/protocol.hpp"

namespace nsbroker::proto {

// Privileged kinds of socket that a policy rule grants by name (docs/POLICY.md).
// Each lets a worker hold one capability for exactly the step that needs it:
//   raw, packet    CAP_NET_RAW at socket(2) of an inet raw or a packet socket
//   bindtodevice   CAP_NET_RAW while setting SO_BINDTODEVICE
//   low_ports      CAP_NET_BIND_SERVICE at bind(2)
//   mark           CAP_NET_ADMIN while setting SO_MARK
//   transparent    CAP_NET_ADMIN while setting IP_TRANSPARENT or IP_FREEBIND
//   net_admin      CAP_NET_ADMIN at socket(2): netlink checks the capabilities
//                  of a socket's creator as well as of its sender, so only
//                  this grant lets a socket change the namespace
enum class Grant { raw, packet, low_ports, bindtodevice, mark, transparent, net_admin };

std::string_view to_string(Grant grant) noexcept;
std::optional<Grant> grant_from_name(std::string_view name) noexcept;
// Every grant, in the order above.
inline constexpr Grant all_grants[] = {Grant::raw,          Grant::packet, Grant::low_ports,
                                       Grant::bindtodevice, Grant::mark,   Grant::transparent,
                                       Grant::net_admin};

// Who a job's sockets are made for: the worker takes this effective uid, gid
// and supplementary groups while it makes them, so that the sockets carry the
// caller's identity (inode owner, SO_PEERCRED, the owner netfilter and
// SO_REUSEPORT see, ping_group_range) and never the daemon's.
struct JobCaller {
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;
    bool operator==(const JobCaller&) const = default;
};

// What a caller other than root may use: the rule that serves it and what
// that rule grants.
struct JobRestriction {
    std::string rule;
    std::vector<Grant> grants;
    [[nodiscard]] bool grants_kind(Grant g) const noexcept;
};

// nsbrokerd -> worker: make these sockets for this caller; the worker answers
// with a Reply carrying a SocketReply or an Error, and the fds.
struct WorkerJob {
    std::uint64_t id = 0;
    std::vector<SocketSpec> specs;
    JobCaller caller;
    // Absent for root, whose sockets are made with all of the worker's
    // network capabilities.
    std::optional<JobRestriction> restricted;
};

// nsbrokerd -> worker: serve a direct channel, whose descriptor comes with
// this message, for one caller in this worker's namespace. The worker judges
// each request on it as nsbrokerd would have: with the caller's identity, the
// facts nsbrokerd knew of the namespace, and the rules of the policy that
// apply to the caller.
struct ChannelGrant {
    std::uint64_t id = 0; // nsbrokerd's number for it, named in ChannelClosed
    JobCaller caller;
    pid_t pid = 0;                   // of the process it was granted to, for the log
    std::optional<std::string> name; // the /run/netns name the grant came through
    bool owned_by_caller = false;
    // Absent for root. Otherwise the rules that apply to the caller, as a
    // policy file's JSON: the policy in force when the channel was granted.
    std::optional<std::string> policy;
    // Seconds a request may wait for the caller to read what it was sent
    // before the worker closes the channel; 0: for ever.
    std::uint32_t stall_timeout = 0;
};

// nsbrokerd -> worker: stop serving these channels (every one when all is
// set). A request the worker has already read is still answered; then the
// channel closes and its caller goes back to nsbrokerd.
struct RevokeChannels {
    bool all = false;
    std::vector<std::uint64_t> ids;
};

// nsbrokerd -> a spare worker, once and first: join the namespace whose
// descriptor comes with this message.
struct EnterNamespace {};

// Everything nsbrokerd sends a worker.
using ToWorker = std::variant<WorkerJob, ChannelGrant, RevokeChannels, EnterNamespace>;

// worker -> nsbrokerd, beside its replies: a channel it served is closed.
struct ChannelClosed {
    std::uint64_t id = 0;
};

// worker -> nsbrokerd: what its direct channels served since it last said,
// at most about once a second while they are in use. nsbrokerd counts it
// in the worker's figures and as use that keeps the worker.
struct ChannelsServed {
    std::uint64_t requests = 0;
    std::uint64_t sockets = 0;
    std::map<ErrorCode, std::uint64_t> errors; // requests answered with an error, by code
};

using WorkerNotice = std::variant<ChannelClosed, ChannelsServed>;

// As JSON ("Between the daemon and its workers" in proto/PROTOCOL.md),
// decoded as strictly as a request.
std::string encode_job(const WorkerJob& job);
std::string encode_channel_grant(const ChannelGrant& grant);
std::string encode_revoke(const RevokeChannels& revoke);
std::string encode_enter_namespace();
Result<ToWorker> decode_to_worker(std::string_view bytes);
// A job, and nothing else.
Result<WorkerJob> decode_job(std::string_view bytes);
std::string encode_notice(const WorkerNotice& notice);
// The notice when bytes is one; nothing when it is anything else (a reply,
// or a notice that does not read).
std::optional<WorkerNotice> decode_notice(std::string_view bytes);

} // namespace nsbroker::proto
