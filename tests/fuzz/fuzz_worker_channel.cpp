// libFuzzer target: a caller's direct channel to a worker, served by the
// worker's own loop (serve_in_place) on a thread of this process.
// Each input is one channel: its grant (the caller, what the daemon knew of
// the namespace, the caller's rules of one of a few policies), then up to 16
// messages with descriptors, among which the daemon may revoke the channel
// and the caller may hang up. Every message the worker reads must be
// answered exactly once, in order, with the id the codec reads from it, by a
// reply that decode_reply reads and that carries exactly the descriptors it
// lists, and refused as the full policy refuses it; otherwise the channel
// must close. The worker must then tell the daemon the channel closed, go on
// serving, and hold no descriptor more than before.
//
// The worker thread takes callers' identities for itself only (raw
// set*id calls, as in the worker) and runs chrooted in worker-channel-root/
// beside the corpus, so that root's unix socket paths land there and a crash
// found on that thread is written there. Run it inside a fresh network
// namespace (unshare -n), as root.
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <fuzzer/FuzzedDataProvider.h>
#include <poll.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <map>
#include <optional>
#include <spdlog/spdlog.h>
#include <string>
#include <thread>
#include <vector>

#include "fuzz_descriptors.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "nsbroker/worker_protocol.hpp"
#include "policy/policy.hpp"
#include "workers/worker_main.hpp"

// Present only in builds with a sanitizer.
extern "C" __attribute__((weak)) void __sanitizer_symbolize_pc(void* pc, const char* format,
                                                               char* out, std::size_t size);

using namespace nsbroker;

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto patience = std::chrono::seconds(10);

[[noreturn]] void broken(const std::string& what) {
    std::fprintf(stderr, "fuzz_worker_channel: %s\n", what.c_str());
    std::abort();
}

// Who a channel is granted to, as the policies below know them.
const proto::JobCaller grantees[] = {
    {0, 0, {}},           // root: no rules travel
    {1000, 1000, {}},     // named by uid
    {1001, 1001, {2000}}, // a member of group 2000
    {1002, 1002, {}},     // in no rule but those for everyone
};

const char* const policy_texts[] = {
    // The built-in default.
    R"({"rules": [{"name": "default", "users": ["*"], "namespaces": {"owned": true}}]})",
    R"({"rules": [
        {"name": "agents", "users": [1000], "namespaces": {"names": ["fuzz-*"]},
         "grant": ["raw", "low_ports", "bindtodevice", "net_admin"],
         "limits": {"sockets_per_request": 16}},
        {"name": "group", "groups": [2000], "namespaces": {"any": true},
         "families": ["inet", "inet6", "packet", "netlink"], "types": ["dgram", "raw"],
         "grant": ["packet", "mark", "transparent"]},
        {"name": "everyone", "users": ["*"], "namespaces": {"owned": true},
         "netlink_protocols": ["route", "generic"]}
    ]})",
    R"({"rules": [{"name": "only 1000", "users": [1000], "namespaces": {"any": true},
                   "grant": ["low_ports", "mark"]}]})",
};
std::vector<daemon::Policy> policies;

const char* const names[] = {nullptr, "fuzz-1", "blue"};

UniqueFd daemon_end; // the daemon's end of the worker's control channel
std::thread* worker = nullptr;
std::uint64_t next_channel = 1;
std::uint64_t next_job = 1;
std::uint64_t sent_total = 0;          // messages the worker may have read
std::uint64_t reported_total = 0;      // what its ChannelsServed notices counted
std::vector<std::uint64_t> closed_ids; // ChannelClosed not yet matched
std::deque<std::pair<proto::Reply, std::size_t>> job_replies; // with their descriptor counts

// What each open descriptor is, by number.
std::map<int, std::string> open_fds() {
    DIR* dir = ::opendir("/proc/self/fd");
    if (dir == nullptr) {
        broken("opendir /proc/self/fd");
    }
    std::map<int, std::string> fds;
    while (const dirent* entry = ::readdir(dir)) {
        int fd = std::atoi(entry->d_name);
        if (entry->d_name[0] == '.' || fd == ::dirfd(dir)) {
            continue;
        }
        char target[PATH_MAX] = "";
        std::string path = std::string("/proc/self/fd/") + entry->d_name;
        if (::readlink(path.c_str(), target, sizeof target - 1) < 0) {
            continue; // closed since it was listed
        }
        fds[fd] = target;
    }
    ::closedir(dir);
    return fds;
}

void wait_for(int fd, short events, Clock::time_point deadline, const char* what) {
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) {
            broken(what);
        }
        pollfd p{fd, events, 0};
        int n = ::poll(&p, 1, static_cast<int>(left.count()));
        if (n > 0) {
            return;
        }
        if (n < 0 && errno != EINTR) {
            broken("poll");
        }
    }
}

using fuzz::descriptor;

// Reads one message from the worker's control channel: a notice that reads,
// or the reply to a job.
void read_control(Clock::time_point deadline) {
    wait_for(daemon_end.get(), POLLIN, deadline, "the worker told the daemon nothing in time");
    auto r = proto::receive_message(daemon_end.get());
    if (r.status == proto::ReceiveStatus::closed) {
        broken("the worker stopped serving");
    }
    if (r.status != proto::ReceiveStatus::message) {
        broken("an unreadable message from the worker");
    }
    if (auto notice = proto::decode_notice(r.message.data)) {
        if (!r.message.fds.empty()) {
            broken("a notice carried descriptors");
        }
        if (const auto* closed = std::get_if<proto::ChannelClosed>(&*notice)) {
            closed_ids.push_back(closed->id);
            return;
        }
        const auto& served = std::get<proto::ChannelsServed>(*notice);
        std::uint64_t errors = 0;
        for (auto [code, count] : served.errors) {
            errors += count;
        }
        reported_total += served.requests;
        if (errors > served.requests || reported_total > sent_total) {
            broken("the worker reported more than it was sent: " + r.message.data);
        }
        return;
    }
    auto reply = proto::decode_reply(r.message.data, proto::Op::socket);
    if (!reply) {
        broken("neither a notice nor a reply from the worker: " + r.message.data);
    }
    job_replies.emplace_back(std::move(*reply), r.message.fds.size());
}

// What the answer to one message must be.
struct Expected {
    std::optional<std::uint64_t> id;
    std::optional<ErrorCode> code;      // when the answer must be this error
    std::optional<std::string> message; // and say exactly this
    // A request the worker reads whole: once the channel is revoked it is
    // answered `unavailable`, unserved, whatever it asks.
    bool revocable = false;
};

// What a revoked channel answers a request it no longer serves.
const std::string revoked_answer =
    "the direct channel was revoked: nsbrokerd serves the request instead";

// Whether the daemon has sent a revocation that covers the channel.
bool revoke_sent = false;

// Judges one message as the worker must, from the same codec and the full
// policy rather than the rules the grant carried.
Expected expect(const std::string& message, bool with_fds, const daemon::Caller& caller,
                const daemon::Policy* policy, const daemon::NamespaceFacts& facts) {
    if (message.size() > proto::max_message_size) {
        return {std::nullopt, ErrorCode::limit, "message too large"};
    }
    auto decoded = proto::decode_channel_request(message);
    if (auto* bad = std::get_if<proto::RequestError>(&decoded)) {
        return {bad->id, bad->error.code, bad->error.message};
    }
    const auto& request = std::get<proto::Request>(decoded);
    if (with_fds) {
        return {request.id, ErrorCode::invalid_request, "a worker channel takes no descriptors"};
    }
    if (auto why = daemon::unix_address_refusal(caller, request.specs)) {
        return {request.id,
                caller.uid == 0 ? ErrorCode::invalid_request : ErrorCode::permission_denied, *why,
                true};
    }
    if (policy != nullptr) {
        auto decision = policy->decide(caller, facts, request.specs);
        if (!decision.allowed) {
            return {request.id, ErrorCode::permission_denied, decision.reason, true};
        }
    }
    return {request.id, std::nullopt, std::nullopt, true};
}

// Reads the replies queued on the caller's end; false once the worker has
// closed it.
bool read_replies(int fd, std::deque<Expected>& expected) {
    for (;;) {
        auto r = proto::receive_message(fd, proto::max_message_size, true);
        switch (r.status) {
        case proto::ReceiveStatus::would_block:
            return true;
        case proto::ReceiveStatus::closed:
            return false;
        case proto::ReceiveStatus::too_large:
        case proto::ReceiveStatus::fds_truncated:
            broken("a reply that does not fit a message");
        case proto::ReceiveStatus::message:
            break;
        }
        if (expected.empty()) {
            broken("a reply to no request: " + r.message.data);
        }
        Expected want = std::move(expected.front());
        expected.pop_front();
        auto reply = proto::decode_reply(r.message.data, proto::Op::socket);
        if (!reply) {
            broken("a reply that does not read (" + reply.error().message + "): " + r.message.data);
        }
        if (reply->id != want.id) {
            broken("a reply with another request's id: " + r.message.data);
        }
        if (const auto* error = std::get_if<Error>(&reply->body)) {
            if (!r.message.fds.empty()) {
                broken("an error reply carried descriptors");
            }
            if (want.revocable && revoke_sent && error->code == ErrorCode::unavailable &&
                error->message == revoked_answer) {
                continue;
            }
            if (want.code && (error->code != *want.code || error->message != *want.message)) {
                broken("refused otherwise than the daemon would (" + *want.message +
                       "): " + r.message.data);
            }
            continue;
        }
        const auto* sockets = std::get_if<proto::SocketReply>(&reply->body);
        if (sockets == nullptr) {
            broken("a reply that is no socket reply: " + r.message.data);
        }
        if (want.code) {
            broken("served what the daemon refuses (" + *want.message + "): " + r.message.data);
        }
        if (sockets->sockets.size() != r.message.fds.size() || sockets->channel) {
            broken("a socket reply whose descriptors are not the sockets it lists: " +
                   r.message.data);
        }
    }
}

// Serves the control channel's other end until the daemon's end closes.
void run_worker_thread(UniqueFd control, std::string root) {
    // The thread's own root and working directory; its identity changes
    // are its own already.
    if (::unshare(CLONE_FS) < 0 || ::chroot(root.c_str()) < 0 || ::chdir("/") < 0) {
        broken("cannot confine the worker thread to " + root + " (run as root)");
    }
    daemon::serve_in_place(control.get());
}

void stop_worker() {
    daemon_end.reset();
    if (worker != nullptr) {
        worker->join();
        delete worker;
        worker = nullptr;
    }
}

// The worker thread's root: writable by every caller identity, with the one
// file the worker opens, and none of the sockets an earlier run bound there.
std::string prepare_root() {
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd) == nullptr) {
        broken("getcwd");
    }
    std::string root = std::string(cwd) + "/worker-channel-root";
    std::string dir = root;
    for (const char* part : {"", "/proc", "/sys", "/net", "/ipv4"}) {
        dir += part;
        if (::mkdir(dir.c_str(), 0755) < 0 && errno != EEXIST) {
            broken("mkdir " + dir);
        }
    }
    if (::chmod(root.c_str(), 01777) < 0) {
        broken("chmod " + root);
    }
    std::ofstream(dir + "/ip_unprivileged_port_start") << "1024\n";
    ::nftw(
        root.c_str(),
        [](const char* path, const struct stat* st, int, FTW*) {
            if (S_ISSOCK(st->st_mode)) {
                ::unlink(path);
            }
            return 0;
        },
        16, FTW_PHYS);
    return root;
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    spdlog::set_level(spdlog::level::err);
    // Up to 16 replies of 253 sockets each may wait unread on one channel.
    rlimit files{};
    ::getrlimit(RLIMIT_NOFILE, &files);
    files.rlim_cur = std::max<rlim_t>(files.rlim_cur, 16384);
    files.rlim_max = std::max(files.rlim_max, files.rlim_cur);
    if (::setrlimit(RLIMIT_NOFILE, &files) < 0) {
        broken("setrlimit RLIMIT_NOFILE");
    }
    for (const char* text : policy_texts) {
        auto policy = daemon::Policy::parse(text);
        if (!policy) {
            broken("a policy of the fuzzer: " + policy.error().message);
        }
        policies.push_back(std::move(*policy));
    }
    // The symbolizer starts here, outside the worker thread's root, so that a
    // report from that thread is symbolized too.
    if (__sanitizer_symbolize_pc != nullptr) {
        char out[256];
        __sanitizer_symbolize_pc(reinterpret_cast<void*>(&open_fds), "%F %L", out, sizeof out);
    }
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
        broken("socketpair");
    }
    daemon_end.reset(pair[0]);
    worker = new std::thread(run_worker_thread, UniqueFd{pair[1]}, prepare_root());
    std::atexit(stop_worker);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider input(data, size);
    const auto fds_before = open_fds();
    const auto deadline = Clock::now() + patience;

    proto::ChannelGrant grant;
    grant.id = next_channel++;
    grant.caller = grantees[input.ConsumeIntegralInRange<std::size_t>(0, std::size(grantees) - 1)];
    grant.pid = ::getpid();
    if (const char* name = names[input.ConsumeIntegralInRange<std::size_t>(0, 2)]) {
        grant.name = name;
    }
    grant.owned_by_caller = input.ConsumeBool();
    const daemon::Caller caller{grant.caller.uid, grant.caller.gid, grant.caller.groups, grant.pid};
    const daemon::NamespaceFacts facts{grant.name, grant.owned_by_caller};
    const daemon::Policy* policy = nullptr;
    if (caller.uid != 0) {
        policy = &policies[input.ConsumeIntegralInRange<std::size_t>(0, policies.size() - 1)];
        grant.policy = policy->for_caller(caller);
    }

    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) < 0) {
        broken("socketpair");
    }
    UniqueFd caller_end{pair[0]};
    UniqueFd worker_end{pair[1]};
    const int granted[] = {worker_end.get()};
    proto::send_message(daemon_end.get(), proto::encode_channel_grant(grant), granted);
    worker_end.reset();

    std::deque<Expected> expected;
    revoke_sent = false;
    bool open = true;     // the worker has not closed the channel
    bool sending = true;  // the caller's sends still reach the worker
    bool closes = false;  // a message was sent after which the worker closes it
    bool hung_up = false; // the caller closed its end
    for (int action = 0; action < 24 && sending && input.remaining_bytes() > 0; ++action) {
        switch (input.ConsumeIntegralInRange<int>(0, 15)) {
        case 0: {
            proto::RevokeChannels revoke;
            revoke.all = input.ConsumeBool();
            revoke.ids = {grant.id + (input.ConsumeBool() ? 0 : 1)};
            revoke_sent = revoke_sent || revoke.all || revoke.ids.front() == grant.id;
            proto::send_message(daemon_end.get(), proto::encode_revoke(revoke));
            continue;
        }
        case 1:
            hung_up = true;
            sending = false;
            continue;
        case 2:
            open = read_replies(caller_end.get(), expected) && open;
            continue;
        default:
            break;
        }
        std::vector<UniqueFd> fds;
        for (int i = std::max(0, input.ConsumeIntegralInRange<int>(-3, 3)); i > 0; --i) {
            fds.push_back(descriptor(input.ConsumeIntegralInRange<int>(0, 3)));
        }
        const bool oversized = input.ConsumeIntegralInRange<int>(0, 31) == 0;
        std::string message = input.ConsumeRandomLengthString(4096);
        if (oversized) {
            message.resize(proto::max_message_size + 1, ' ');
        }
        for (;;) {
            auto status = proto::send_message(caller_end.get(), message, proto::raw_fds(fds), true);
            if (status == proto::SendStatus::closed) {
                sending = false;
                break;
            }
            if (status == proto::SendStatus::sent) {
                ++sent_total;
                if (message.empty() && fds.empty()) {
                    // Reads as the caller hanging up.
                    closes = true;
                    sending = false;
                } else if (!closes) {
                    expected.push_back(expect(message, !fds.empty(), caller, policy, facts));
                    if (oversized) {
                        closes = true;
                        sending = false;
                    }
                }
                break;
            }
            // The worker waits for the caller to read before it reads more.
            open = read_replies(caller_end.get(), expected) && open;
            wait_for(caller_end.get(), POLLIN | POLLOUT, deadline, "the channel stalled");
        }
    }

    if (!hung_up) {
        while (open && (!expected.empty() || closes)) {
            wait_for(caller_end.get(), POLLIN, deadline, "a request went unanswered");
            open = read_replies(caller_end.get(), expected);
        }
        if (!expected.empty()) {
            broken("the worker closed a channel with " + std::to_string(expected.size()) +
                   " requests unanswered");
        }
    }
    caller_end.reset();

    // The daemon hears that the channel closed, once.
    while (std::find(closed_ids.begin(), closed_ids.end(), grant.id) == closed_ids.end()) {
        read_control(deadline);
    }
    if (closed_ids.size() != 1) {
        broken("the worker said a channel closed twice, or one it was never given");
    }
    closed_ids.clear();

    // A job behind everything the worker had to do for this channel; once
    // it is answered, the worker holds nothing of the channel. The job is
    // refused before any socket is made, so that the worker holds nothing of
    // its own either while this thread counts descriptors.
    proto::WorkerJob job;
    job.id = next_job++;
    proto::SocketSpec spec;
    spec.family = AF_INET;
    spec.type = SOCK_STREAM;
    spec.bind = "0.0.0.0:1";
    job.specs = {spec};
    job.caller = {1000, 1000, {}};
    job.restricted = proto::JobRestriction{"no low ports", {}};
    proto::send_message(daemon_end.get(), proto::encode_job(job));
    while (job_replies.empty()) {
        read_control(deadline);
    }
    auto [reply, fd_count] = std::move(job_replies.front());
    job_replies.pop_front();
    const auto* refused = std::get_if<Error>(&reply.body);
    if (reply.id != job.id || refused == nullptr || refused->code != ErrorCode::permission_denied ||
        fd_count != 0) {
        broken("the worker no longer serves the daemon's jobs");
    }
    if (auto now = open_fds(); now != fds_before) {
        std::string what = "descriptors leaked:";
        for (const auto& [fd, target] : now) {
            if (!fds_before.contains(fd)) {
                what += " " + std::to_string(fd) + " (" + target + ")";
            }
        }
        broken(what);
    }
    return 0;
}
