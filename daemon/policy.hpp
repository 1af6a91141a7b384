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

namespace nsbroker::daemon {

inline constexpr const char* default_policy_path = "/etc/nsbroker/policy.json";

// Socket kinds that need a grant of their own.
// net_admin: sockets are made with CAP_NET_ADMIN, so that netlink requests
// that change the namespace through them are accepted.
enum class Privilege { raw, packet, low_ports, bindtodevice, mark, transparent, net_admin };

struct Rule {
    std::string name;
    bool everyone = false;
    std::set<uid_t> users;
    std::set<gid_t> groups;

    std::vector<std::string> namespace_globs; // names under /run/netns
    bool owned = false;  // the namespace's owning user namespace is the caller's uid's
    bool passed = false; // the caller sent a descriptor of the namespace
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

// What the daemon knows of the namespace a request names.
struct NamespaceFacts {
    std::optional<std::string> name; // when named under /run/netns
    bool passed = false;
    bool owned_by_caller = false;
};

struct Decision {
    bool allowed = false;
    const Rule* rule = nullptr; // the rule that allowed it
    std::string reason;         // why not, naming the rule that refused
};

// The worker capabilities a rule's grants can use; the worker holds only
// these while it makes the request's sockets. Binding below the namespace's
// net.ipv4.ip_unprivileged_port_start is judged there too: only a process in
// the namespace can read that sysctl.
proto::JobCapabilities job_capabilities(const Rule& rule);

class Policy {
  public:
    // No file: root may do everything; everyone else ordinary sockets in
    // namespaces they own or pass by descriptor, nothing privileged.
    static Policy builtin_default();
    // Parses a policy file's text; the error says where and what is wrong.
    static Result<Policy> parse(std::string_view text);
    // Loads path; a missing file gives the default policy.
    static Result<Policy> load(const std::string& path);

    [[nodiscard]] Decision decide(const Caller& caller, const NamespaceFacts& ns,
                                  const std::vector<proto::SocketSpec>& specs) const;
    [[nodiscard]] const std::vector<Rule>& rules() const { return rules_; }
    [[nodiscard]] const std::string& origin() const { return origin_; }

  private:
    std::vector<Rule> rules_;
    std::string origin_; // "built-in default" or the file's path
};

} // namespace nsbroker::daemon
