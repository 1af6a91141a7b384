// The worker jobs' JSON, read as strictly as a request, and the names of grants.
#include "nsbroker/worker_protocol.hpp"

#include <algorithm>
#include <array>
#include <utility>

#include "json_codec.hpp"
#include "nsbroker/name_table.hpp"

namespace nsbroker::proto {

using namespace json_codec;

namespace {

constexpr auto grant_names = name_table<Grant>({
    {"raw", Grant::raw},
    {"packet", Grant::packet},
    {"low_ports", Grant::low_ports},
    {"bindtodevice", Grant::bindtodevice},
    {"mark", Grant::mark},
    {"transparent", Grant::transparent},
    {"net_admin", Grant::net_admin},
});

// all_grants lists the same grants, in the same order.
static_assert([] {
    std::size_t i = 0;
    for (const auto& entry : grant_names) {
        if (i >= std::size(all_grants) || all_grants[i++] != entry.value) {
            return false;
        }
    }
    return i == std::size(all_grants);
}());

// uid_t and gid_t: 32 bits, and -1 is never an identity.
constexpr std::uint64_t max_id = 0xfffffffeU;

JobCaller decode_job_caller(const json& j, const Path& where) {
    Fields f(j, where);
    f.allow_only({"uid", "gid", "groups"}, ErrorCode::invalid_request);
    JobCaller caller;
    caller.uid = static_cast<uid_t>(f.integer<std::uint64_t>("uid", 0, max_id));
    caller.gid = static_cast<gid_t>(f.integer<std::uint64_t>("gid", 0, max_id));
    const json& groups = f.require("groups");
    if (!groups.is_array() || groups.size() > 65536) {
        fail(ErrorCode::invalid_request, f.path("groups"), "expected an array of gids");
    }
    for (const json& g : groups) {
        if (!g.is_number_unsigned() || g.get<std::uint64_t>() > max_id) {
            fail(ErrorCode::invalid_request, f.path("groups"), "expected an array of gids");
        }
        caller.groups.push_back(static_cast<gid_t>(g.get<std::uint64_t>()));
    }
    return caller;
}

JobRestriction decode_job_restriction(const json& j, const Path& where) {
    Fields f(j, where);
    f.allow_only({"rule", "grants"}, ErrorCode::invalid_request);
    JobRestriction restriction;
    restriction.rule = f.string("rule");
    const json& grants = f.require("grants");
    if (!grants.is_array()) {
        fail(ErrorCode::invalid_request, f.path("grants"),
             "expected an array, got " + type_of(grants));
    }
    for (const json& name : grants) {
        auto grant = name.is_string() ? grant_from_name(name.get<std::string>()) : std::nullopt;
        if (!grant) {
            fail(ErrorCode::invalid_request, f.path("grants"), "expected names of grants");
        }
        restriction.grants.push_back(*grant);
    }
    return restriction;
}

json encode_caller(const JobCaller& caller) {
    return {{"uid", caller.uid}, {"gid", caller.gid}, {"groups", caller.groups}};
}

WorkerJob decode_job_fields(const Fields& f) {
    f.allow_only({"id", "sockets", "caller", "restricted"}, ErrorCode::invalid_request);
    WorkerJob job;
    job.id = f.integer<std::uint64_t>("id", 0, UINT64_MAX);
    job.specs = decode_specs(f);
    job.caller = decode_job_caller(f.require("caller"), f.path("caller"));
    if (const json* r = f.find("restricted")) {
        job.restricted = decode_job_restriction(*r, f.path("restricted"));
    }
    return job;
}

ChannelGrant decode_channel_grant(const json& j, const Path& where) {
    Fields f(j, where);
    f.allow_only({"id", "caller", "pid", "name", "owned_by_caller", "policy", "stall_timeout"},
                 ErrorCode::invalid_request);
    ChannelGrant grant;
    grant.id = f.integer<std::uint64_t>("id", 1, UINT64_MAX);
    grant.caller = decode_job_caller(f.require("caller"), f.path("caller"));
    grant.pid = f.integer<pid_t>("pid", 0, pid_max_limit);
    grant.name = f.opt_string("name");
    grant.owned_by_caller = f.opt_bool("owned_by_caller").value_or(false);
    if (f.find("stall_timeout") != nullptr) {
        grant.stall_timeout = f.integer<std::uint32_t>("stall_timeout", 0, UINT32_MAX);
    }
    if (const json* policy = f.find("policy")) {
        if (!policy->is_object()) {
            fail(ErrorCode::invalid_request, f.path("policy"),
                 "expected an object, got " + type_of(*policy));
        }
        grant.policy = policy->dump();
    }
    return grant;
}

RevokeChannels decode_revoke(const json& j, const Path& where) {
    if (j == "all") {
        return {true, {}};
    }
    if (!j.is_array()) {
        fail(ErrorCode::invalid_request, where, "expected \"all\" or an array of channel ids");
    }
    RevokeChannels revoke;
    for (const json& id : j) {
        if (!id.is_number_unsigned()) {
            fail(ErrorCode::invalid_request, where, "expected \"all\" or an array of channel ids");
        }
        revoke.ids.push_back(id.get<std::uint64_t>());
    }
    return revoke;
}

} // namespace

std::string_view to_string(Grant grant) noexcept {
    return grant_names.name_of(grant).value_or("unknown");
}

std::optional<Grant> grant_from_name(std::string_view name) noexcept {
    return grant_names.value_of(name);
}

bool JobRestriction::grants_kind(Grant g) const noexcept {
    return std::find(grants.begin(), grants.end(), g) != grants.end();
}

std::string encode_job(const WorkerJob& job) {
    json j = {{"id", job.id},
              {"sockets", encode_specs(job.specs)},
              {"caller", encode_caller(job.caller)}};
    if (const auto& r = job.restricted) {
        json grants = json::array();
        for (Grant g : r->grants) {
            grants.push_back(to_string(g));
        }
        j["restricted"] = {{"rule", r->rule}, {"grants", std::move(grants)}};
    }
    return j.dump();
}

std::string encode_channel_grant(const ChannelGrant& grant) {
    json g = {{"id", grant.id}, {"caller", encode_caller(grant.caller)}, {"pid", grant.pid}};
    if (grant.name) {
        g["name"] = *grant.name;
    }
    if (grant.owned_by_caller) {
        g["owned_by_caller"] = true;
    }
    if (grant.policy) {
        g["policy"] = json::parse(*grant.policy);
    }
    if (grant.stall_timeout != 0) {
        g["stall_timeout"] = grant.stall_timeout;
    }
    return json{{"grant_channel", std::move(g)}}.dump();
}

std::string encode_revoke(const RevokeChannels& revoke) {
    return json{{"revoke_channels", revoke.all ? json("all") : json(revoke.ids)}}.dump();
}

std::string encode_enter_namespace() {
    return R"({"enter_namespace":{}})";
}

Result<ToWorker> decode_to_worker(std::string_view bytes) {
    try {
        json j = parse_object(bytes);
        Fields f(j, "");
        if (const json* grant = f.find("grant_channel")) {
            f.allow_only({"grant_channel"}, ErrorCode::invalid_request);
            return ToWorker{decode_channel_grant(*grant, f.path("grant_channel"))};
        }
        if (const json* revoke = f.find("revoke_channels")) {
            f.allow_only({"revoke_channels"}, ErrorCode::invalid_request);
            return ToWorker{decode_revoke(*revoke, f.path("revoke_channels"))};
        }
        if (const json* enter = f.find("enter_namespace")) {
            f.allow_only({"enter_namespace"}, ErrorCode::invalid_request);
            const Path where = f.path("enter_namespace");
            Fields(*enter, where).allow_only({}, ErrorCode::invalid_request);
            return ToWorker{EnterNamespace{}};
        }
        return ToWorker{decode_job_fields(f)};
    } catch (const BadInput& e) {
        return e.error;
    }
}

Result<WorkerJob> decode_job(std::string_view bytes) {
    auto message = decode_to_worker(bytes);
    if (!message) {
        return std::move(message).error();
    }
    if (auto* job = std::get_if<WorkerJob>(&*message)) {
        return std::move(*job);
    }
    return make_error(ErrorCode::invalid_request, "expected a job");
}

std::string encode_notice(const WorkerNotice& notice) {
    if (const auto* closed = std::get_if<ChannelClosed>(&notice)) {
        return json{{"channel_closed", closed->id}}.dump();
    }
    const auto& served = std::get<ChannelsServed>(notice);
    json errors = json::object();
    for (auto [code, count] : served.errors) {
        errors[std::string(to_string(code))] = count;
    }
    return json{{"channels_served",
                 {{"requests", served.requests},
                  {"sockets", served.sockets},
                  {"errors", std::move(errors)}}}}
        .dump();
}

std::optional<WorkerNotice> decode_notice(std::string_view bytes) {
    // A worker's replies begin with "id" or "error"; a notice with its one key.
    if (!bytes.starts_with(R"({"channel)")) {
        return std::nullopt;
    }
    try {
        json j = parse_object(bytes);
        Fields f(j, "");
        if (f.find("channel_closed") != nullptr) {
            f.allow_only({"channel_closed"}, ErrorCode::invalid_request);
            return ChannelClosed{f.integer<std::uint64_t>("channel_closed", 1, UINT64_MAX)};
        }
        f.allow_only({"channels_served"}, ErrorCode::invalid_request);
        Fields served(f.require("channels_served"), f.path("channels_served"));
        served.allow_only({"requests", "sockets", "errors"}, ErrorCode::invalid_request);
        ChannelsServed notice{served.integer<std::uint64_t>("requests", 0, UINT64_MAX),
                              served.integer<std::uint64_t>("sockets", 0, UINT64_MAX),
                              {}};
        const json& errors = served.require("errors");
        const Path errors_path = served.path("errors");
        Fields{errors, errors_path}; // must be an object
        for (const auto& [name, count] : errors.items()) {
            auto code = error_code_from_string(name);
            if (!code) {
                return std::nullopt;
            }
            notice.errors[*code] =
                Fields::as_integer<std::uint64_t>(count, Path(errors_path, name), 0, UINT64_MAX);
        }
        return notice;
    } catch (const BadInput&) {
        return std::nullopt;
    }
}

} // namespace nsbroker::proto
