// Who may have which sockets in which namespaces.
//
// A policy is a list of rules. A rule names users and groups and grants
// namespaces, socket kinds, privileged kinds and limits. A request is served
// when one rule that applies to the caller grants all of it. uid 0 is always
// served: it could do all of this itself. See docs/POLICY.md.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "nsbroker/error.hpp"
#include "nsbroker/protocol.hpp"
#include "nsbroker/worker_protocol.hpp"

namespace nsbroker::daemon {

inline constexpr const char* default_policy_path = "/etc/nsbroker/policy.json";

// Socket kinds that need a grant of their own: proto::Grant says what each
// lets a worker do.
using Privilege = proto::Grant;

struct Rule {
    std::string name;
    bool everyone = false;
    std::set<uid_t> users;
    std::set<gid_t> groups;

    std::vector<std::string> namespace_globs; // names under /run/netns
    // The caller could enter the namespace itself: its owning user namespace
    // was made, directly or through its ancestors, by the caller's uid.
    bool owned = false;
    bool any = false;

    std::set<int> families;          // empty: inet, inet6, unix, netlink
    std::set<int> types;             // empty: stream, dgram, seqpacket (and raw for netlink)
    std::set<int> netlink_protocols; // empty: every netlink protocol
    std::set<Privilege> privileges;

    std::size_t max_sockets_per_request = proto::max_fds_per_message;
    std::size_t max_requests_in_flight = 64;
};

struct Caller {
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups; // supplementary, from SO_PEERGROUPS
    pid_t pid = 0;
};

// What the daemon knows of the namespace a request names. How the caller
// named it (a name, a path, a pid, a descriptor) is not a fact about it:
// naming a namespace grants nothing.
struct NamespaceFacts {
    std::optional<std::string> name; // when named under /run/netns
    bool owned_by_caller = false;
};

struct Decision {
    bool allowed = false;
    const Rule* rule = nullptr; // the rule that allowed it
    // The rule grants the namespace only because the caller owns it: a
    // worker started for it is the caller's, counted against its uid.
    bool owned_only = false;
    std::string reason; // why not, naming the rule that refused
};

// Unix sockets come unbound and unconnected to callers other than root,
// who bind and connect them themselves: see docs/POLICY.md. Relative paths
// are refused to everyone. The reason, or nothing.
std::optional<std::string> unix_address_refusal(const Caller& caller,
                                                const std::vector<proto::SocketSpec>& specs);

// What a worker may use for a caller this rule serves. Binding below the
// namespace's net.ipv4.ip_unprivileged_port_start is judged there: only a
// process in the namespace can read that sysctl.
proto::JobRestriction job_restriction(const Rule& rule);

class Policy {
  public:
    // No file: root may do everything; everyone else ordinary sockets in
    // namespaces it owns, nothing privileged.
    static Policy builtin_default();
    // Parses a policy file's text; the error says where and what is wrong.
    static Result<Policy> parse(std::string_view text);
    // Loads path; a missing file gives the default policy.
    static Result<Policy> load(const std::string& path);

    [[nodiscard]] Decision decide(const Caller& caller, const NamespaceFacts& ns,
                                  const std::vector<proto::SocketSpec>& specs) const;
    // The rules that apply to caller, as a policy file's JSON: a policy that
    // decides every request of that caller exactly as this one does. A worker
    // judges the requests on a caller's direct channel with it.
    [[nodiscard]] std::string for_caller(const Caller& caller) const;
    // How many rules apply to caller.
    [[nodiscard]] std::size_t rules_for(const Caller& caller) const;
    [[nodiscard]] const std::vector<Rule>& rules() const { return rules_; }
    [[nodiscard]] const std::string& origin() const { return origin_; }

  private:
    std::vector<Rule> rules_;
    std::string origin_; // "built-in default" or the file's path
};

} // namespace nsbroker::daemon
