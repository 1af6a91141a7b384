// Policy files and the decision for one request.
#include "policy/policy.hpp"

#include <fnmatch.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "nsbroker/address.hpp"
#include "nsbroker/bad_input.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/socket_option_table.hpp"
#include "policy/accounts.hpp"

namespace nsbroker::daemon {

using nlohmann::json;

namespace {

// How a refusal names what a privilege covers: by its grant's name, which
// for raw and packet names a kind of socket, and for transparent also
// covers freebind. Every grant is listed so that a new one is described on
// purpose.
std::string privilege_description(Privilege p) {
    std::string name(proto::to_string(p));
    switch (p) {
    case Privilege::raw:
    case Privilege::packet:
        return name + " sockets";
    case Privilege::transparent:
        return name + " and freebind";
    case Privilege::low_ports:
    case Privilege::bindtodevice:
    case Privilege::mark:
    case Privilege::net_admin:
        break;
    }
    return name;
}

[[noreturn]] void invalid(const std::string& where, const std::string& what) {
    throw BadInput{make_error(ErrorCode::invalid_request, where + ": " + what)};
}

void only_keys(const json& object, const std::string& where,
               std::initializer_list<std::string_view> keys) {
    if (!object.is_object()) {
        invalid(where, "expected an object");
    }
    for (const auto& [key, value] : object.items()) {
        if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
            invalid(where, "unknown field \"" + key + "\"");
        }
    }
}

const json& list_at(const json& object, const char* key, const std::string& where) {
    const json& list = object.at(key);
    if (!list.is_array()) {
        invalid(where + "." + key, "expected a list");
    }
    return list;
}

bool flag(const json& object, const char* key, const std::string& where) {
    if (!object.contains(key)) {
        return false;
    }
    if (!object.at(key).is_boolean()) {
        invalid(where + "." + key, "expected true or false");
    }
    return object.at(key).get<bool>();
}

std::size_t limit(const json& object, const char* key, const std::string& where,
                  std::size_t fallback, std::size_t most) {
    if (!object.contains(key)) {
        return fallback;
    }
    const json& v = object.at(key);
    if (!v.is_number_unsigned() || v.get<std::uint64_t>() == 0 || v.get<std::uint64_t>() > most) {
        invalid(where + "." + key, "expected a number from 1 to " + std::to_string(most));
    }
    return static_cast<std::size_t>(v.get<std::uint64_t>());
}

// A user or a group, by number or by the name the account database knows;
// kind ("user") and number ("uid") say in an error which was expected.
template <typename Id, typename Lookup>
Id account_id(const json& v, const std::string& where, const std::string& kind,
              const std::string& number, Lookup by_name) {
    if (v.is_number_unsigned()) {
        return static_cast<Id>(v.get<std::uint64_t>());
    }
    if (!v.is_string()) {
        invalid(where, "expected a " + kind + " name or " + number);
    }
    std::string name = v.get<std::string>();
    if (std::optional<Id> id = by_name(name.c_str())) {
        return *id;
    }
    invalid(where, "no " + kind + " named \"" + name + "\"");
}

uid_t user_id(const json& v, const std::string& where) {
    return account_id<uid_t>(v, where, "user", "uid", uid_named);
}

gid_t group_id(const json& v, const std::string& where) {
    return account_id<gid_t>(v, where, "group", "gid", gid_named);
}

template <typename Lookup>
std::set<int> named_set(const json& rule, const char* key, const std::string& where,
                        Lookup lookup) {
    std::set<int> out;
    if (!rule.contains(key)) {
        return out;
    }
    const json& list = list_at(rule, key, where);
    for (std::size_t i = 0; i < list.size(); ++i) {
        std::string at = where + "." + key + "[" + std::to_string(i) + "]";
        if (!list[i].is_string()) {
            invalid(at, "expected a name");
        }
        auto value = lookup(list[i].get<std::string>());
        if (!value) {
            invalid(at, "unknown name \"" + list[i].get<std::string>() + "\"");
        }
        out.insert(*value);
    }
    return out;
}

Rule parse_rule(const json& j, const std::string& where) {
    only_keys(j, where,
              {"name", "users", "groups", "namespaces", "families", "types", "netlink_protocols",
               "grant", "limits"});
    Rule r;
    r.name = where;
    if (j.contains("name")) {
        if (!j.at("name").is_string()) {
            invalid(where + ".name", "expected a string");
        }
        r.name = j.at("name").get<std::string>();
    }
    if (j.contains("users")) {
        const json& users = list_at(j, "users", where);
        for (std::size_t i = 0; i < users.size(); ++i) {
            if (users[i] == "*") {
                r.everyone = true;
            } else {
                r.users.insert(user_id(users[i], where + ".users[" + std::to_string(i) + "]"));
            }
        }
    }
    if (j.contains("groups")) {
        const json& groups = list_at(j, "groups", where);
        for (std::size_t i = 0; i < groups.size(); ++i) {
            r.groups.insert(group_id(groups[i], where + ".groups[" + std::to_string(i) + "]"));
        }
    }
    if (!r.everyone && r.users.empty() && r.groups.empty()) {
        invalid(where, "a rule names \"users\" or \"groups\" (\"*\" is everyone)");
    }
    if (!j.contains("namespaces")) {
        invalid(where, "a rule grants \"namespaces\"");
    }
    const json& ns = j.at("namespaces");
    std::string ns_where = where + ".namespaces";
    if (ns.is_object() && ns.contains("passed")) {
        invalid(ns_where + ".passed",
                "no longer exists: holding a namespace's descriptor proves nothing (anyone may "
                "open /run/netns/*), so passing one grants nothing; use \"owned\" for "
                "namespaces the caller could enter itself, \"names\" or \"any\"");
    }
    only_keys(ns, ns_where, {"names", "owned", "any"});
    if (ns.contains("names")) {
        const json& names = list_at(ns, "names", ns_where);
        for (std::size_t i = 0; i < names.size(); ++i) {
            if (!names[i].is_string() || names[i].get<std::string>().empty()) {
                invalid(ns_where + ".names[" + std::to_string(i) + "]", "expected a name or glob");
            }
            r.namespace_globs.push_back(names[i].get<std::string>());
        }
    }
    r.owned = flag(ns, "owned", ns_where);
    r.any = flag(ns, "any", ns_where);
    r.families = named_set(j, "families", where, proto::family_from_name);
    r.types = named_set(j, "types", where, proto::type_from_name);
    r.netlink_protocols = named_set(j, "netlink_protocols", where, [](std::string_view n) {
        return proto::protocol_from_name(AF_NETLINK, n);
    });
    if (j.contains("grant")) {
        const json& grants = list_at(j, "grant", where);
        for (std::size_t i = 0; i < grants.size(); ++i) {
            std::string at = where + ".grant[" + std::to_string(i) + "]";
            auto grant = grants[i].is_string()
                             ? proto::grant_from_name(grants[i].get<std::string>())
                             : std::nullopt;
            if (!grant) {
                std::string names;
                for (Privilege p : proto::all_grants) {
                    names += (names.empty() ? "" : ", ") + std::string(proto::to_string(p));
                }
                invalid(at, "expected one of " + names);
            }
            r.privileges.insert(*grant);
        }
    }
    if (j.contains("limits")) {
        const json& limits = j.at("limits");
        only_keys(limits, where + ".limits", {"sockets_per_request", "requests_in_flight"});
        r.max_sockets_per_request = limit(limits, "sockets_per_request", where + ".limits",
                                          proto::max_fds_per_message, proto::max_fds_per_message);
        r.max_requests_in_flight =
            limit(limits, "requests_in_flight", where + ".limits", 64, 1u << 20);
    }
    return r;
}

bool applies(const Rule& rule, const Caller& caller) {
    if (rule.everyone || rule.users.count(caller.uid) || rule.groups.count(caller.gid)) {
        return true;
    }
    return std::any_of(caller.groups.begin(), caller.groups.end(),
                       [&](gid_t g) { return rule.groups.count(g) > 0; });
}

// The privileges a spec needs that the daemon can judge. low_ports depends on
// a sysctl of the namespace that only its worker can read: see Decision.
std::set<Privilege> needed(const proto::SocketSpec& s) {
    std::set<Privilege> need;
    if ((s.family == AF_INET || s.family == AF_INET6) && s.type == SOCK_RAW) {
        need.insert(Privilege::raw);
    }
    if (s.family == AF_PACKET) {
        need.insert(Privilege::packet);
    }
    for (const auto& row : proto::socket_option_table) {
        if (proto::option_needs_grant(row, s.options)) {
            need.insert(*row.grant);
        }
    }
    return need;
}

bool family_allowed(const Rule& r, int family) {
    if (!r.families.empty()) {
        return r.families.count(family) > 0;
    }
    return family == AF_INET || family == AF_INET6 || family == AF_UNIX || family == AF_NETLINK ||
           (family == AF_PACKET && r.privileges.count(Privilege::packet));
}

bool type_allowed(const Rule& r, const proto::SocketSpec& s) {
    if (!r.types.empty()) {
        return r.types.count(s.type) > 0;
    }
    // Raw is how netlink and packet sockets are made; on inet it is the raw privilege.
    return s.type == SOCK_STREAM || s.type == SOCK_DGRAM || s.type == SOCK_SEQPACKET ||
           (s.type == SOCK_RAW && (s.family == AF_NETLINK || s.family == AF_PACKET ||
                                   r.privileges.count(Privilege::raw)));
}

std::string describe_namespace(const NamespaceFacts& ns) {
    if (ns.name) {
        return "namespace \"" + *ns.name + "\"";
    }
    return "the namespace";
}

bool by_name(const Rule& r, const NamespaceFacts& ns) {
    return ns.name && std::any_of(r.namespace_globs.begin(), r.namespace_globs.end(),
                                  [&](const std::string& glob) {
                                      return ::fnmatch(glob.c_str(), ns.name->c_str(), 0) == 0;
                                  });
}

bool by_ownership_only(const Rule& r, const NamespaceFacts& ns) {
    return !r.any && !by_name(r, ns);
}

// Why rule does not grant the request, or nothing when it does.
std::optional<std::string> refusal(const Rule& r, const NamespaceFacts& ns,
                                   const std::vector<proto::SocketSpec>& specs) {
    if (!(r.any || by_name(r, ns) || (r.owned && ns.owned_by_caller))) {
        return describe_namespace(ns) + " is not granted" +
               (r.owned ? " (the caller does not own it)" : "");
    }
    if (auto n = proto::socket_count(specs); n > r.max_sockets_per_request) {
        return "asks for " + std::to_string(n) + " sockets, at most " +
               std::to_string(r.max_sockets_per_request) + " a request";
    }
    for (std::size_t i = 0; i < specs.size(); ++i) {
        const auto& s = specs[i];
        std::string at = "sockets[" + std::to_string(i) + "]: ";
        if (!family_allowed(r, s.family)) {
            return at + "family " + proto::family_name(s.family) + " is not granted";
        }
        for (Privilege p : needed(s)) {
            if (!r.privileges.count(p)) {
                return at + privilege_description(p) + " not granted";
            }
        }
        if (!type_allowed(r, s)) {
            return at + "type " + proto::type_name(s.type) + " is not granted";
        }
        if (s.family == AF_NETLINK && !r.netlink_protocols.empty() &&
            !r.netlink_protocols.count(s.protocol)) {
            return at + "netlink protocol " + std::to_string(s.protocol) + " is not granted";
        }
    }
    return std::nullopt;
}

} // namespace

Policy Policy::builtin_default() {
    Policy p;
    p.origin_ = "built-in default";
    Rule everyone;
    everyone.name = "default";
    everyone.everyone = true;
    everyone.owned = true;
    p.rules_.push_back(std::move(everyone));
    return p;
}

Result<Policy> Policy::parse(std::string_view text) {
    // A key given twice would let a reader see one grant and the daemon
    // another: the file is refused.
    std::vector<std::set<std::string>> keys;
    std::optional<std::string> repeated;
    json::parser_callback_t no_repeats = [&](int, json::parse_event_t event, json& value) {
        if (event == json::parse_event_t::object_start) {
            keys.emplace_back();
        } else if (event == json::parse_event_t::object_end && !keys.empty()) {
            keys.pop_back();
        } else if (event == json::parse_event_t::key && !keys.empty() && !repeated &&
                   !keys.back().insert(value.get<std::string>()).second) {
            repeated = value.get<std::string>();
        }
        return true;
    };
    json j = json::parse(text.begin(), text.end(), no_repeats, false);
    if (j.is_discarded()) {
        return make_error(ErrorCode::invalid_request, "not valid JSON");
    }
    if (repeated) {
        return make_error(ErrorCode::invalid_request, "duplicate key \"" + *repeated + "\"");
    }
    try {
        only_keys(j, "policy", {"rules"});
        if (!j.contains("rules")) {
            invalid("policy", "missing \"rules\"");
        }
        Policy p;
        p.origin_ = "inline";
        const json& rules = list_at(j, "rules", "policy");
        for (std::size_t i = 0; i < rules.size(); ++i) {
            p.rules_.push_back(parse_rule(rules[i], "rules[" + std::to_string(i) + "]"));
        }
        return p;
    } catch (const BadInput& e) {
        return e.error;
    }
}

Result<Policy> Policy::load(const std::string& path) {
    std::ifstream in(path);
    if (!in) {
        if (errno == ENOENT) {
            return builtin_default();
        }
        return make_error(ErrorCode::kernel, path + ": " + std::strerror(errno), errno);
    }
    std::stringstream text;
    text << in.rdbuf();
    auto p = parse(text.str());
    if (!p) {
        return make_error(ErrorCode::invalid_request, path + ": " + p.error().message);
    }
    p->origin_ = path;
    return p;
}

std::optional<std::string> unix_address_refusal(const Caller& caller,
                                                const std::vector<proto::SocketSpec>& specs) {
    for (std::size_t i = 0; i < specs.size(); ++i) {
        const auto& s = specs[i];
        if (s.family != AF_UNIX) {
            continue;
        }
        std::string at = "sockets[" + std::to_string(i) + "]: ";
        for (const auto* address : {&s.bind, &s.connect}) {
            if (!*address) {
                continue;
            }
            const char* step = address == &s.bind ? "bind" : "connect";
            if (caller.uid != 0) {
                return at + step + " " + **address +
                       ": unix sockets are bound and connected by the caller, with its own "
                       "rights, on the socket it receives (libnsbroker does this itself); "
                       "nsbrokerd would do it with its own";
            }
            if (!(*address)->empty() && (*address)->front() != '/' && (*address)->front() != '@') {
                return at + step + " " + **address +
                       ": a relative path would be resolved in the daemon's working directory; "
                       "give an absolute path";
            }
        }
    }
    return std::nullopt;
}

Decision Policy::decide(const Caller& caller, const NamespaceFacts& ns,
                        const std::vector<proto::SocketSpec>& specs) const {
    if (caller.uid == 0) {
        return {true, nullptr, false, {}};
    }
    // A request that binds a port is better served by a rule that grants
    // low_ports too, should the port turn out to be privileged.
    const bool binds_port = std::any_of(specs.begin(), specs.end(), [](const auto& s) {
        auto port = s.bind ? proto::inet_port(s.family, *s.bind) : std::nullopt;
        return port && *port != 0;
    });
    const Rule* granting = nullptr;
    std::string reasons;
    bool any_rule = false;
    for (const auto& rule : rules_) {
        if (!applies(rule, caller)) {
            continue;
        }
        any_rule = true;
        if (auto why = refusal(rule, ns, specs)) {
            reasons += (reasons.empty() ? "" : "; ") + ("rule \"" + rule.name + "\": " + *why);
            continue;
        }
        if (!binds_port || rule.privileges.count(Privilege::low_ports)) {
            return {true, &rule, by_ownership_only(rule, ns), {}};
        }
        if (!granting) {
            granting = &rule;
        }
    }
    if (granting) {
        return {true, granting, by_ownership_only(*granting, ns), {}};
    }
    if (!any_rule) {
        return {false, nullptr, false,
                "no rule of the policy (" + origin_ + ") applies to uid " +
                    std::to_string(caller.uid)};
    }
    return {false, nullptr, false, reasons};
}

namespace {

// A rule as a policy file spells it, for the one caller it applies to.
json encode_rule(const Rule& r) {
    json namespaces = json::object();
    if (!r.namespace_globs.empty()) {
        namespaces["names"] = r.namespace_globs;
    }
    if (r.owned) {
        namespaces["owned"] = true;
    }
    if (r.any) {
        namespaces["any"] = true;
    }
    json j = {{"name", r.name}, {"users", {"*"}}, {"namespaces", std::move(namespaces)}};
    auto names = [](const std::set<int>& values, auto name_of) {
        json list = json::array();
        for (int v : values) {
            list.push_back(name_of(v));
        }
        return list;
    };
    if (!r.families.empty()) {
        j["families"] = names(r.families, proto::family_name);
    }
    if (!r.types.empty()) {
        j["types"] = names(r.types, proto::type_name);
    }
    if (!r.netlink_protocols.empty()) {
        j["netlink_protocols"] = names(r.netlink_protocols, [](int p) {
            return proto::protocol_name(AF_NETLINK, p).value_or(std::to_string(p));
        });
    }
    if (!r.privileges.empty()) {
        json grants = json::array();
        for (Privilege p : r.privileges) {
            grants.push_back(proto::to_string(p));
        }
        j["grant"] = std::move(grants);
    }
    j["limits"] = {{"sockets_per_request", r.max_sockets_per_request},
                   {"requests_in_flight", r.max_requests_in_flight}};
    return j;
}

} // namespace

std::size_t Policy::rules_for(const Caller& caller) const {
    return static_cast<std::size_t>(std::count_if(
        rules_.begin(), rules_.end(), [&](const Rule& rule) { return applies(rule, caller); }));
}

std::string Policy::for_caller(const Caller& caller) const {
    json rules = json::array();
    for (const auto& rule : rules_) {
        if (applies(rule, caller)) {
            rules.push_back(encode_rule(rule));
        }
    }
    return json{{"rules", std::move(rules)}}.dump();
}

proto::JobRestriction job_restriction(const Rule& rule) {
    return {rule.name, {rule.privileges.begin(), rule.privileges.end()}};
}

} // namespace nsbroker::daemon
