// Policy files: precise refusals of bad ones, and the decision for a request.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "nsbroker/codec.hpp"
#include "nsbroker/socket_option_table.hpp"
#include "nsbroker/typed_spec.hpp"
#include "policy/policy.hpp"

using namespace nsbroker;
using namespace nsbroker::daemon;

namespace {

proto::SocketSpec spec(int family, int type, int protocol = 0) {
    proto::SocketSpec s;
    s.family = family;
    s.type = type;
    s.protocol = protocol;
    return s;
}

Caller user(uid_t uid, std::vector<gid_t> groups = {}) {
    return {uid, uid, std::move(groups), 42};
}

NamespaceFacts named(const std::string& name) {
    NamespaceFacts f;
    f.name = name;
    return f;
}

} // namespace

TEST_CASE("bad policy files are refused with the place and the reason") {
    struct Case {
        const char* text;
        const char* message;
    };
    const Case cases[] = {
        {"{", "not valid JSON"},
        {R"({"rulez": []})", "policy: unknown field \"rulez\""},
        {R"({"rules": [{"namespaces": {"any": true}}]})",
         "rules[0]: a rule names \"users\" or \"groups\" (\"*\" is everyone)"},
        {R"({"rules": [{"users": ["*"]}]})", "rules[0]: a rule grants \"namespaces\""},
        {R"({"rules": [{"users": ["*"], "namespaces": {"some": true}}]})",
         "rules[0].namespaces: unknown field \"some\""},
        {R"({"rules": [{"users": ["nobody-such-user"], "namespaces": {"any": true}}]})",
         "rules[0].users[0]: no user named \"nobody-such-user\""},
        {R"({"rules": [{"users": ["*"], "namespaces": {"any": true}, "grant": ["root"]}]})",
         "rules[0].grant[0]: expected one of raw, packet, low_ports, bindtodevice, mark, "
         "transparent, net_admin"},
        {R"({"rules": [{"users": ["*"], "namespaces": {"any": true}, "families": ["ax25"]}]})",
         "rules[0].families[0]: unknown name \"ax25\""},
        {R"({"rules": [{"users": ["*"], "namespaces": {"any": true}, "limits": {"sockets_per_request": 300}}]})",
         "rules[0].limits.sockets_per_request: expected a number from 1 to 253"},
        {R"({"rules": [{"users": ["*"], "namespaces": {"any": true}, "grant": [], "grant": ["raw"]}]})",
         "duplicate key \"grant\""},
        {R"({"rules": [{"users": ["*"], "namespaces": {"owned": true, "passed": true}}]})",
         "rules[0].namespaces.passed: no longer exists: holding a namespace's descriptor proves "
         "nothing (anyone may open /run/netns/*), so passing one grants nothing; use \"owned\" "
         "for namespaces the caller could enter itself, \"names\" or \"any\""},
    };
    for (const auto& c : cases) {
        CAPTURE(c.text);
        auto p = Policy::parse(c.text);
        REQUIRE_FALSE(p);
        CHECK(p.error().message == c.message);
    }
}

TEST_CASE("the default policy: own namespaces, ordinary sockets, root everything") {
    auto p = Policy::builtin_default();
    NamespaceFacts owned;
    owned.owned_by_caller = true;
    NamespaceFacts someone_elses;
    auto mine = p.decide(user(1000), owned, {spec(AF_INET, SOCK_STREAM)});
    CHECK(mine.allowed);
    CHECK(mine.owned_only);
    auto theirs = p.decide(user(1000), someone_elses, {spec(AF_NETLINK, SOCK_RAW)});
    CHECK_FALSE(theirs.allowed);
    CHECK(theirs.reason ==
          "rule \"default\": the namespace is not granted (the caller does not own it)");
    CHECK_FALSE(p.decide(user(1000), named("blue"), {spec(AF_INET, SOCK_STREAM)}).allowed);
    CHECK(p.decide(user(0), named("blue"), {spec(AF_PACKET, SOCK_RAW)}).allowed);
    auto raw = p.decide(user(1000), owned, {spec(AF_INET, SOCK_RAW, IPPROTO_ICMP)});
    CHECK_FALSE(raw.allowed);
    CHECK(raw.reason == "rule \"default\": sockets[0]: raw sockets not granted");
    // Whether port 443 is privileged is the namespace's to say: the request
    // is allowed, and the worker is told the caller may not bind low ports.
    auto low = spec(AF_INET6, SOCK_STREAM);
    low.bind = "[::]:443";
    auto https = p.decide(user(1000), owned, {low});
    CHECK(https.allowed);
    CHECK_FALSE(job_restriction(*https.rule).grants_kind(Privilege::low_ports));
    auto marked = spec(AF_INET, SOCK_DGRAM);
    marked.options.mark = 1;
    CHECK(p.decide(user(1000), owned, {marked}).reason ==
          "rule \"default\": sockets[0]: mark not granted");
}

TEST_CASE("rules by user and group, name globs, kinds and limits") {
    auto p = Policy::parse(R"({"rules": [
        {"name": "agents", "groups": [4242], "namespaces": {"names": ["qrouter-*"]},
         "families": ["inet", "netlink"], "netlink_protocols": ["route"], "grant": ["raw"],
         "limits": {"sockets_per_request": 4}},
        {"name": "uid 1001", "users": [1001], "namespaces": {"any": true}}
    ]})");
    REQUIRE_MESSAGE(p, p.error().message);
    auto agent = user(1000, {4242});
    CHECK(p->decide(agent, named("qrouter-1"), {spec(AF_INET, SOCK_RAW, IPPROTO_ICMP)}).allowed);
    CHECK(p->decide(agent, named("qrouter-1"), {spec(AF_NETLINK, SOCK_RAW, 0)}).allowed);
    CHECK(p->decide(agent, named("qdhcp-1"), {spec(AF_INET, SOCK_DGRAM)}).reason ==
          "rule \"agents\": namespace \"qdhcp-1\" is not granted");
    CHECK(p->decide(agent, named("qrouter-1"), {spec(AF_NETLINK, SOCK_RAW, 9)}).reason ==
          "rule \"agents\": sockets[0]: netlink protocol 9 is not granted");
    CHECK(p->decide(agent, named("qrouter-1"), {spec(AF_INET6, SOCK_DGRAM)}).reason ==
          "rule \"agents\": sockets[0]: family inet6 is not granted");
    auto five = spec(AF_INET, SOCK_DGRAM);
    five.count = 5;
    CHECK(p->decide(agent, named("qrouter-1"), {five}).reason ==
          "rule \"agents\": asks for 5 sockets, at most 4 a request");
    CHECK(p->decide(user(1001), named("anything"), {spec(AF_INET6, SOCK_STREAM)}).allowed);
    auto stranger = p->decide(user(2000), named("qrouter-1"), {spec(AF_INET, SOCK_DGRAM)});
    CHECK_FALSE(stranger.allowed);
    CHECK(stranger.reason == "no rule of the policy (inline) applies to uid 2000");
}

TEST_CASE("a rule's grants travel to the worker by name, and nothing else does") {
    auto p = Policy::parse(R"({"rules": [
        {"name": "none", "users": [1000], "namespaces": {"any": true}},
        {"name": "pinger", "users": [1001], "namespaces": {"any": true}, "grant": ["raw"]},
        {"name": "agent", "users": [1002], "namespaces": {"any": true},
         "grant": ["net_admin", "low_ports"]}
    ]})");
    REQUIRE_MESSAGE(p, p.error().message);
    auto restriction = [&](std::size_t i) {
        return job_restriction(p->rules()[i]);
    };
    CHECK(restriction(0).grants.empty());
    CHECK(restriction(0).rule == "none");
    CHECK(restriction(1).grants == std::vector{Privilege::raw});
    CHECK(restriction(2).grants_kind(Privilege::net_admin));
    CHECK(restriction(2).grants_kind(Privilege::low_ports));
    CHECK_FALSE(restriction(2).grants_kind(Privilege::mark));
}

TEST_CASE("a namespace a rule names is not one caller's; one it owns is") {
    auto p = Policy::parse(R"({"rules": [
        {"name": "web", "users": [1000], "namespaces": {"names": ["web-*"], "owned": true}}
    ]})");
    REQUIRE_MESSAGE(p, p.error().message);
    auto named_one = p->decide(user(1000), named("web-1"), {spec(AF_INET, SOCK_STREAM)});
    CHECK(named_one.allowed);
    CHECK_FALSE(named_one.owned_only);
    NamespaceFacts own;
    own.owned_by_caller = true;
    CHECK(p->decide(user(1000), own, {spec(AF_INET, SOCK_STREAM)}).owned_only);
}

TEST_CASE("unix sockets are bound and connected by their caller, and never by relative path") {
    auto listener = spec(AF_UNIX, SOCK_STREAM);
    listener.bind = "/run/user/1000/app.sock";
    auto why = unix_address_refusal(user(1000), {spec(AF_INET, SOCK_DGRAM), listener});
    REQUIRE(why);
    CHECK(why->starts_with("sockets[1]: bind /run/user/1000/app.sock: unix sockets are bound"));
    auto abstract = spec(AF_UNIX, SOCK_SEQPACKET);
    abstract.connect = "@bus";
    CHECK(unix_address_refusal(user(1000), {abstract}));
    CHECK_FALSE(unix_address_refusal(user(1000), {spec(AF_UNIX, SOCK_DGRAM)}));
    CHECK_FALSE(unix_address_refusal(user(0), {listener, abstract}));
    auto relative = spec(AF_UNIX, SOCK_STREAM);
    relative.connect = "x.sock";
    auto root_relative = unix_address_refusal(user(0), {relative});
    REQUIRE(root_relative);
    CHECK(root_relative->find("relative path") != std::string::npos);
}

TEST_CASE("a request that binds a port prefers a rule that grants low ports") {
    auto p = Policy::parse(R"({"rules": [
        {"name": "plain", "users": [1000], "namespaces": {"any": true}},
        {"name": "servers", "users": [1000], "namespaces": {"any": true}, "grant": ["low_ports"]}
    ]})");
    REQUIRE_MESSAGE(p, p.error().message);
    auto unbound = p->decide(user(1000), named("web"), {spec(AF_INET, SOCK_STREAM)});
    CHECK(unbound.rule->name == "plain");
    auto http = spec(AF_INET, SOCK_STREAM);
    http.bind = "0.0.0.0:80";
    auto bound = p->decide(user(1000), named("web"), {http});
    REQUIRE(bound.allowed);
    CHECK(bound.rule->name == "servers");
    CHECK(job_restriction(*bound.rule).grants_kind(Privilege::low_ports));
}

TEST_CASE("each socket option a grant covers is refused without that grant, and served with it") {
    const std::string grant_all_but = R"({"rules": [{"name": "r", "users": [1000],
        "namespaces": {"any": true}, "grant": [GRANTS]}]})";
    auto policy_granting = [&](std::optional<Privilege> left_out) {
        std::string names;
        for (Privilege p : proto::all_grants) {
            if (p != left_out) {
                names += (names.empty() ? "\"" : ", \"") + std::string(proto::to_string(p)) + "\"";
            }
        }
        std::string text = grant_all_but;
        text.replace(text.find("GRANTS"), 6, names);
        auto policy = Policy::parse(text);
        REQUIRE_MESSAGE(policy, policy.error().message);
        return std::move(*policy);
    };
    for (const auto& row : proto::socket_option_table) {
        CAPTURE(row.name);
        auto s = spec(AF_INET, SOCK_DGRAM);
        proto::TypedValue value = true;
        if (std::holds_alternative<std::optional<std::string> proto::SocketOptions::*>(row.field)) {
            value = std::string("eth0");
        } else if (!std::holds_alternative<std::optional<bool> proto::SocketOptions::*>(
                       row.field)) {
            value = row.max;
        }
        REQUIRE_FALSE(proto::set_socket_option(s.options, row.name, value));
        CHECK(policy_granting(std::nullopt).decide(user(1000), named("a"), {s}).allowed);
        if (!row.grant) {
            continue;
        }
        auto refused = policy_granting(*row.grant).decide(user(1000), named("a"), {s});
        CHECK_FALSE(refused.allowed);
        CHECK(refused.reason.starts_with("rule \"r\": sockets[0]: "));
        CHECK(refused.reason.ends_with(" not granted"));
    }
}

namespace {

// A decision as everything a caller or a worker sees of it.
std::string outcome(const Decision& d) {
    if (!d.allowed) {
        return "refused: " + d.reason;
    }
    std::string text = "allowed";
    if (d.rule != nullptr) {
        text += " by \"" + d.rule->name + "\", granting";
        for (Privilege p : job_restriction(*d.rule).grants) {
            text += " " + std::string(proto::to_string(p));
        }
        text += ", " + std::to_string(d.rule->max_sockets_per_request) + " sockets, " +
                std::to_string(d.rule->max_requests_in_flight) + " in flight";
    }
    return text + (d.owned_only ? ", owned only" : "");
}

// Every single spec of the kinds the rules tell apart: each family, type,
// a netlink protocol granted or not, each option a grant covers (and one no
// grant covers), a low port, a high one or none, one socket or five.
std::vector<proto::SocketSpec> every_spec() {
    std::vector<proto::SocketSpec> specs;
    for (int family : {AF_INET, AF_INET6, AF_UNIX, AF_NETLINK, AF_PACKET, AF_CAN}) {
        std::vector<std::optional<std::string>> binds{std::nullopt};
        if (family == AF_INET) {
            binds = {std::nullopt, "0.0.0.0:80", "0.0.0.0:8080", "0.0.0.0:0"};
        } else if (family == AF_INET6) {
            binds = {std::nullopt, "[::]:80", "[::]:8080"};
        }
        for (int type : {SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET, SOCK_RAW}) {
            for (int protocol : {0, 9, 16}) {
                for (int option = 0; option < 6; ++option) {
                    for (const auto& bind : binds) {
                        for (unsigned count : {1U, 5U}) {
                            auto s = spec(family, type, protocol);
                            s.bind = bind;
                            s.count = count;
                            switch (option) {
                            case 1:
                                s.options.mark = 1;
                                break;
                            case 2:
                                s.options.transparent = true;
                                break;
                            case 3:
                                s.options.freebind = true;
                                break;
                            case 4:
                                s.options.bindtodevice = "eth0";
                                break;
                            case 5:
                                s.options.reuseaddr = true;
                                break;
                            default:
                                break;
                            }
                            specs.push_back(std::move(s));
                        }
                    }
                }
            }
        }
    }
    return specs;
}

} // namespace

TEST_CASE("a caller's own rules decide its every request as the whole policy does") {
    const char* texts[] = {
        R"({"rules": [
            {"name": "agents", "users": [1000], "namespaces": {"names": ["qrouter-*", "qdhcp-?"]},
             "families": ["inet", "netlink"], "netlink_protocols": ["route", "generic"],
             "grant": ["raw", "bindtodevice", "net_admin"],
             "limits": {"sockets_per_request": 4, "requests_in_flight": 8}},
            {"name": "agents' servers", "users": [1000], "namespaces": {"names": ["qrouter-*"]},
             "grant": ["low_ports"]},
            {"groups": [4242], "namespaces": {"any": true}, "families": ["inet6", "packet", "unix"],
             "types": ["dgram", "raw"], "grant": ["packet", "mark", "transparent"]},
            {"name": "owners", "users": ["*"], "namespaces": {"owned": true, "names": ["web-*"]},
             "netlink_protocols": ["route"]},
            {"name": "someone else", "users": [3000], "namespaces": {"any": true},
             "grant": ["raw", "packet", "low_ports", "bindtodevice", "mark", "transparent",
                       "net_admin"]}
        ]})",
        R"({"rules": [{"name": "default", "users": ["*"], "namespaces": {"owned": true}}]})",
        R"({"rules": [{"name": "group only", "groups": [4242], "namespaces": {"any": true},
                       "grant": ["low_ports"], "limits": {"sockets_per_request": 2}}]})",
        R"({"rules": []})",
    };
    const Caller callers[] = {
        user(0),
        user(1000),           // named by uid
        user(1001, {4242}),   // a member by its supplementary groups
        {1002, 4242, {}, 42}, // a member by its primary group
        user(1000, {4242}),   // named, and a member
        user(2000),           // named by no rule
    };
    std::vector<NamespaceFacts> namespaces;
    for (const char* name : {"", "qrouter-1", "qdhcp-1", "qdhcp-10", "web-1", "blue"}) {
        for (bool owned : {false, true}) {
            NamespaceFacts facts;
            if (*name != '\0') {
                facts.name = name;
            }
            facts.owned_by_caller = owned;
            namespaces.push_back(std::move(facts));
        }
    }
    // Each spec alone, and with the next: a port bound by either asks for
    // a rule that grants low ports.
    const auto specs = every_spec();
    std::vector<std::vector<proto::SocketSpec>> requests;
    for (std::size_t i = 0; i < specs.size(); ++i) {
        requests.push_back({specs[i]});
        if (i % 5 == 0) {
            requests.push_back({specs[i], specs[(i * 7 + 3) % specs.size()]});
        }
    }

    for (const char* text : texts) {
        auto policy = Policy::parse(text);
        REQUIRE_MESSAGE(policy, policy.error().message);
        for (const auto& caller : callers) {
            CAPTURE(caller.uid);
            const std::string own_text = policy->for_caller(caller);
            CAPTURE(own_text);
            auto own = Policy::parse(own_text);
            REQUIRE_MESSAGE(own, own.error().message);
            // What the worker gets holds exactly the caller's rules, and
            // says the same again.
            CHECK(own->rules().size() == policy->rules_for(caller));
            CHECK(own->for_caller(caller) == own_text);
            std::size_t compared = 0;
            std::size_t allowed = 0;
            std::size_t differing = 0;
            std::string first_difference;
            for (const auto& facts : namespaces) {
                for (const auto& request : requests) {
                    auto whole = policy->decide(caller, facts, request);
                    auto theirs = own->decide(caller, facts, request);
                    ++compared;
                    allowed += whole.allowed;
                    if (outcome(whole) != outcome(theirs) && differing++ == 0) {
                        first_difference = "namespace " + facts.name.value_or("(unnamed)") +
                                           (facts.owned_by_caller ? " (owned)" : "") + ": " +
                                           proto::family_name(request[0].family) + " " +
                                           proto::type_name(request[0].type) + ": " +
                                           outcome(whole) + " | " + outcome(theirs);
                    }
                }
            }
            INFO(first_difference);
            CHECK(differing == 0);
            // The requests tell the rules apart: some are allowed, and for
            // every caller but root, some are refused.
            CHECK(compared > 10000);
            if (policy->rules_for(caller) > 0) {
                CHECK(allowed > 0);
            }
            if (caller.uid != 0) {
                CHECK(allowed < compared);
            }
        }
    }
}
