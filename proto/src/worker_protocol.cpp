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
              {"caller",
               {{"uid", job.caller.uid}, {"gid", job.caller.gid}, {"groups", job.caller.groups}}}};
    if (const auto& r = job.restricted) {
        json grants = json::array();
        for (Grant g : r->grants) {
            grants.push_back(to_string(g));
        }
        j["restricted"] = {{"rule", r->rule}, {"grants", std::move(grants)}};
    }
    return j.dump();
}

Result<WorkerJob> decode_job(std::string_view bytes) {
    try {
        json j = parse_object(bytes);
        Fields f(j, "");
        f.allow_only({"id", "sockets", "caller", "restricted"}, ErrorCode::invalid_request);
        WorkerJob job;
        job.id = f.integer<std::uint64_t>("id", 0, UINT64_MAX);
        job.specs = decode_specs(f);
        job.caller = decode_job_caller(f.require("caller"), f.path("caller"));
        if (const json* r = f.find("restricted")) {
            job.restricted = decode_job_restriction(*r, f.path("restricted"));
        }
        return job;
    } catch (const BadInput& e) {
        return e.error;
    }
}

} // namespace nsbroker::proto
