// The worker pool with no front end: a real WorkerPool on a real sd-event loop
// in this process, forking real workers into network namespaces the test
// makes. What starts a worker, what makes it exit, and how many there may be.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/harness.hpp"
#include "workers/worker_pool.hpp"

using namespace nsbroker;
using namespace nsbroker::daemon;
using namespace std::chrono_literals;

namespace {

// Generous, for a busy 2-core machine: the loop is turned until what a test
// waits for holds, and only a fault takes this long.
constexpr auto patience = 20s;

// Mounts of test namespaces are made in a mount namespace of this process
// alone, so that none is left on the machine even when the test crashes.
void enter_private_mount_namespace() {
    static const bool entered = [] {
        if (::unshare(CLONE_NEWNS) != 0 ||
            ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
            throw std::runtime_error("cannot make a private mount namespace");
        }
        return true;
    }();
    (void)entered;
}

// What the daemon sets up before it forks workers from its loop: SIGCHLD
// blocked, as sd_event_add_child requires, and no SIGPIPE from a channel
// whose worker has gone.
void prepare_process_for_workers() {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &mask, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
    enter_private_mount_namespace();
}

// A network namespace of the test's own with a name in a private netns_dir:
// a bind mount of it at dir/name, as `ip netns add` makes /run/netns/NAME.
class NamedNetns {
  public:
    // A new namespace.
    NamedNetns(const std::string& dir, const std::string& name)
        : dir_(dir), name_(name), path_(dir + "/" + name) {
        make_mount_point();
        UniqueFd own{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
        REQUIRE(own);
        REQUIRE(::unshare(CLONE_NEWNET) == 0);
        int mounted = ::mount("/proc/thread-self/ns/net", path_.c_str(), nullptr, MS_BIND, nullptr);
        // Back in the test's own namespace before anything can throw.
        REQUIRE(::setns(own.get(), CLONE_NEWNET) == 0);
        REQUIRE(mounted == 0);
        finish();
    }

    // Another name for the namespace of other.
    NamedNetns(const std::string& dir, const std::string& name, const NamedNetns& other)
        : dir_(dir), name_(name), path_(dir + "/" + name) {
        make_mount_point();
        REQUIRE(::mount(other.path_.c_str(), path_.c_str(), nullptr, MS_BIND, nullptr) == 0);
        finish();
    }

    ~NamedNetns() { remove(); }
    NamedNetns(const NamedNetns&) = delete;
    NamedNetns& operator=(const NamedNetns&) = delete;

    [[nodiscard]] const std::string& name() const { return name_; }
    [[nodiscard]] const NetnsIdentity& identity() const { return identity_; }

    // Reached by its name, as the daemon resolves {"name": ...}.
    [[nodiscard]] ResolvedNetns by_name() const {
        auto r = resolve_netns(proto::NetnsRef::by_name(name_), UniqueFd{}, dir_);
        REQUIRE(r);
        return std::move(*r);
    }

    // Reached without a name, as through a descriptor a caller sent.
    [[nodiscard]] ResolvedNetns by_fd() const {
        auto r = open_netns_path(path_);
        REQUIRE(r);
        return std::move(*r);
    }

    // As `ip netns delete`: the name goes; the namespace lives while a
    // worker sits in it.
    void remove() {
        if (mounted_) {
            ::umount2(path_.c_str(), MNT_DETACH);
            mounted_ = false;
        }
        ::unlink(path_.c_str());
    }

  private:
    void make_mount_point() {
        UniqueFd file{::open(path_.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444)};
        REQUIRE(file);
    }

    void finish() {
        mounted_ = true;
        auto opened = open_netns_path(path_);
        REQUIRE(opened);
        identity_ = opened->identity;
    }

    std::string dir_;
    std::string name_;
    std::string path_;
    bool mounted_ = false;
    NetnsIdentity identity_;
};

// How one job ended. Shared with the JobDone, which may outlive a failed test.
struct Answer {
    bool done = false;
    std::optional<Error> error;
    std::vector<UniqueFd> fds;
};
using AnswerPtr = std::shared_ptr<Answer>;

JobDone record(const AnswerPtr& answer) {
    return [answer](Result<proto::SocketReply> result, std::vector<UniqueFd> fds) {
        answer->done = true;
        if (!result) {
            answer->error = result.error();
        }
        answer->fds = std::move(fds);
    };
}

// One UDP socket, for root.
proto::WorkerJob udp_job() {
    return proto::WorkerJob{0, {test::spec(AF_INET, SOCK_DGRAM)}, proto::JobCaller{}, std::nullopt};
}

WorkerSponsor by_uid(uid_t uid) {
    return WorkerSponsor{uid};
}

// Small timeouts keep the test fast; each test sets the ones it is about.
WorkerPoolConfig quick_config() {
    WorkerPoolConfig config;
    config.mode = WorkerMode::fork;
    config.idle_timeout = 60s;
    config.unnamed_idle_timeout = 0s; // the idle timeout, for every worker
    config.job_timeout = 10s;
    return config;
}

// quick_config with one setting changed.
template <typename Setting, typename Value>
WorkerPoolConfig quick_config(Setting setting, Value value) {
    WorkerPoolConfig config = quick_config();
    config.*setting = value;
    return config;
}

// The answer carries exactly one socket, made in the namespace of identity.
void check_one_socket_in(const Answer& answer, const NetnsIdentity& identity) {
    REQUIRE(answer.done);
    REQUIRE_FALSE(answer.error);
    REQUIRE(answer.fds.size() == 1);
    CHECK(test::socket_netns_inode(answer.fds[0].get()) == identity.ino);
}

void check_refused(const Answer& answer, ErrorCode code, const std::string& says) {
    REQUIRE(answer.done);
    REQUIRE(answer.error);
    CHECK(answer.error->code == code);
    CHECK(answer.error->message.find(says) != std::string::npos);
    CHECK(answer.fds.empty());
}

// A WorkerPool on its own event loop, with a private netns_dir.
class PoolUnderTest {
  public:
    explicit PoolUnderTest(WorkerPoolConfig config) {
        prepare_process_for_workers();
        sd_event* e = nullptr;
        REQUIRE(sd_event_new(&e) >= 0);
        loop_.reset(e);
        config.netns_dir = netns_dir_.path();
        pool_ = std::make_unique<WorkerPool>(loop_.get(), std::move(config));
    }

    ~PoolUnderTest() {
        // Kills and reaps whatever workers are left, before the loop goes.
        pool_.reset();
    }

    [[nodiscard]] WorkerPool& pool() { return *pool_; }
    [[nodiscard]] const std::string& netns_dir() const { return netns_dir_.path(); }

    // Turns the loop until condition holds; false when it did not in time.
    bool run_until(const std::function<bool()>& condition) {
        const auto give_up = std::chrono::steady_clock::now() + patience;
        while (!condition()) {
            if (std::chrono::steady_clock::now() >= give_up ||
                sd_event_run(loop_.get(), 100'000) < 0) {
                return false;
            }
        }
        return true;
    }

    // Turns the loop for span whatever happens: to see that something does
    // not happen in that time.
    void run_for(std::chrono::milliseconds span) {
        const auto end = std::chrono::steady_clock::now() + span;
        while (std::chrono::steady_clock::now() < end) {
            REQUIRE(sd_event_run(loop_.get(), 50'000) >= 0);
        }
    }

    // Submits one UDP socket job and returns at once.
    AnswerPtr submit(ResolvedNetns netns, WorkerSponsor sponsor = {}) {
        auto answer = std::make_shared<Answer>();
        pool_->submit(std::move(netns), udp_job(), sponsor, record(answer));
        return answer;
    }

    // Submits one UDP socket job and turns the loop until it is answered.
    AnswerPtr make_socket(ResolvedNetns netns, WorkerSponsor sponsor = {}) {
        auto answer = submit(std::move(netns), sponsor);
        REQUIRE(run_until([&] { return answer->done; }));
        return answer;
    }

    // A job for ns, reached by its name, is answered with one socket made there.
    void check_socket_by_name(const NamedNetns& ns) {
        check_one_socket_in(*make_socket(ns.by_name()), ns.identity());
    }

    // Turns the loop until the pool has reaped n workers in all.
    bool run_until_exited(std::uint64_t n) {
        return run_until([&] { return pool_->exited() == n; });
    }

    // The worker state describe() reports for a namespace; empty without one.
    [[nodiscard]] std::string state_of(const NetnsIdentity& identity) const {
        for (const auto& info : pool_->describe()) {
            if (info.dev == identity.dev && info.ino == identity.ino) {
                return info.state;
            }
        }
        return {};
    }

    // The namespace's worker is exiting, or already reaped.
    [[nodiscard]] bool leaving(const NetnsIdentity& identity) const {
        std::string state = state_of(identity);
        return state.empty() || state == "exiting";
    }

    [[nodiscard]] pid_t worker_pid(const NetnsIdentity& identity) const {
        for (const auto& info : pool_->describe()) {
            if (info.dev == identity.dev && info.ino == identity.ino) {
                return info.worker_pid;
            }
        }
        return 0;
    }

    // Stops the namespace's worker with SIGSTOP: it reads and answers
    // nothing, and SIGKILL still ends it.
    pid_t stop_worker(const NetnsIdentity& identity) {
        pid_t pid = worker_pid(identity);
        REQUIRE(pid > 0);
        REQUIRE(::kill(pid, SIGSTOP) == 0);
        return pid;
    }

    // Stops the pool and turns the loop until every worker is reaped.
    void stop_all() {
        int calls = 0;
        pool_->stop([&calls] { ++calls; });
        REQUIRE(run_until([&] { return calls > 0; }));
        CHECK(calls == 1);
        CHECK(pool_->live() == 0);
    }

  private:
    test::TempDir netns_dir_;
    EventLoop loop_;
    std::unique_ptr<WorkerPool> pool_;
};

// A pool with one limit at two workers (max_workers or max_workers_per_uid)
// and namespaces "a", "b" and "c": one more than the limit.
template <std::size_t WorkerPoolConfig::*limit>
struct AtTwoWorkers {
    PoolUnderTest t{quick_config(limit, 2)};
    NamedNetns a{t.netns_dir(), "a"};
    NamedNetns b{t.netns_dir(), "b"};
    NamedNetns c{t.netns_dir(), "c"};
};
using TwoWorkers = AtTwoWorkers<&WorkerPoolConfig::max_workers>;
using TwoWorkersPerUid = AtTwoWorkers<&WorkerPoolConfig::max_workers_per_uid>;

} // namespace

TEST_CASE("a job's sockets are made in its namespace, by one worker per namespace") {
    PoolUnderTest t(quick_config());
    NamedNetns a(t.netns_dir(), "a");
    NamedNetns b(t.netns_dir(), "b");
    auto own = current_netns();
    REQUIRE(own);
    REQUIRE(a.identity() != *own);
    REQUIRE(a.identity() != b.identity());

    t.check_socket_by_name(a);
    check_one_socket_in(*t.make_socket(b.by_fd()), b.identity());
    check_one_socket_in(*t.make_socket(a.by_fd()), a.identity());
    CHECK(t.pool().spawned() == 2);
    CHECK(t.pool().live() == 2);
    CHECK(t.state_of(a.identity()) == "ready");

    // Root's fast way in reaches the running worker, and only a running one.
    auto answer = std::make_shared<Answer>();
    proto::WorkerJob job = udp_job();
    JobDone done = record(answer);
    REQUIRE(t.pool().submit_to_running(b.identity(), std::nullopt, job, done));
    REQUIRE(t.run_until([&] { return answer->done; }));
    check_one_socket_in(*answer, b.identity());
    NamedNetns c(t.netns_dir(), "c");
    job = udp_job();
    done = record(answer);
    CHECK_FALSE(t.pool().submit_to_running(c.identity(), std::nullopt, job, done));
    CHECK(static_cast<bool>(done));
    CHECK(t.pool().spawned() == 2);

    auto described = t.pool().describe();
    REQUIRE(described.size() == 2);
    for (const auto& info : described) {
        CHECK(info.requests == 2);
        CHECK(info.sockets == 2);
    }
    t.stop_all();
    CHECK(t.pool().exited() == 2);
}

TEST_CASE("an idle worker exits after idle_timeout, and the next job starts another") {
    PoolUnderTest t(quick_config(&WorkerPoolConfig::idle_timeout, 1s));
    NamedNetns a(t.netns_dir(), "a");

    t.check_socket_by_name(a);
    CHECK(t.pool().live() == 1);
    REQUIRE(t.run_until_exited(1));
    CHECK(t.pool().live() == 0);
    CHECK(t.pool().describe().empty());

    t.check_socket_by_name(a);
    CHECK(t.pool().spawned() == 2);
    CHECK(t.pool().live() == 1);
    t.stop_all();
}

TEST_CASE("a worker only a descriptor reached goes after unnamed_idle_timeout") {
    WorkerPoolConfig config = quick_config();
    config.idle_timeout = 60s;
    config.unnamed_idle_timeout = 1s;
    PoolUnderTest t(config);
    NamedNetns named(t.netns_dir(), "named");
    NamedNetns unnamed(t.netns_dir(), "unnamed");
    NamedNetns of_process(t.netns_dir(), "of-process");

    // A live process reached by pid keeps its namespace's worker as a name does.
    int hold[2];
    REQUIRE(::pipe2(hold, O_CLOEXEC) == 0);
    UniqueFd hold_read{hold[0]};
    UniqueFd hold_write{hold[1]};
    pid_t holder = ::fork();
    REQUIRE(holder >= 0);
    if (holder == 0) {
        hold_write.reset();
        char byte;
        [[maybe_unused]] ssize_t n = ::read(hold_read.get(), &byte, 1);
        ::_exit(0);
    }
    hold_read.reset();
    ResolvedNetns through_process = of_process.by_fd();
    through_process.pidfd.reset(static_cast<int>(::syscall(SYS_pidfd_open, holder, 0)));
    REQUIRE(through_process.pidfd);

    t.check_socket_by_name(named);
    check_one_socket_in(*t.make_socket(unnamed.by_fd()), unnamed.identity());
    check_one_socket_in(*t.make_socket(std::move(through_process)), of_process.identity());
    REQUIRE(t.run_until_exited(1));
    CHECK(t.state_of(unnamed.identity()).empty());
    // Past the time the other two would have gone without a name or process.
    t.run_for(1500ms);
    CHECK(t.state_of(named.identity()) == "ready");
    CHECK(t.state_of(of_process.identity()) == "ready");

    hold_write.reset();
    ::waitpid(holder, nullptr, 0);
    REQUIRE(t.run_until_exited(2));
    CHECK(t.state_of(of_process.identity()).empty());
    CHECK(t.state_of(named.identity()) == "ready");
    t.stop_all();
}

TEST_CASE("a worker that does not answer within job_timeout is killed and its job fails") {
    PoolUnderTest t(quick_config(&WorkerPoolConfig::job_timeout, 1s));
    NamedNetns a(t.netns_dir(), "a");

    t.check_socket_by_name(a);
    t.stop_worker(a.identity());
    auto late = t.make_socket(a.by_name());
    check_refused(*late, ErrorCode::worker_failed, "did not answer within 1 s");
    REQUIRE(t.run_until_exited(1));
    CHECK(t.pool().live() == 0);

    t.check_socket_by_name(a);
    CHECK(t.pool().spawned() == 2);
    t.stop_all();
}

TEST_CASE("a worker killed from outside fails its jobs; the next job starts another") {
    PoolUnderTest t(quick_config());
    NamedNetns a(t.netns_dir(), "a");

    t.check_socket_by_name(a);
    pid_t pid = t.stop_worker(a.identity());
    auto lost = t.submit(a.by_name());
    REQUIRE(::kill(pid, SIGKILL) == 0);
    REQUIRE(t.run_until([&] { return lost->done; }));
    // Whether the closed channel or the exit is seen first, the job fails.
    check_refused(*lost, ErrorCode::worker_failed, "worker");
    REQUIRE(t.run_until_exited(1));

    t.check_socket_by_name(a);
    CHECK(t.pool().spawned() == 2);
    t.stop_all();
}

TEST_CASE_FIXTURE(TwoWorkers,
                  "at max_workers, the least recently used idle worker exits for a new namespace") {
    t.make_socket(a.by_name());
    t.make_socket(b.by_name());
    t.make_socket(a.by_name()); // b is now the least recently used
    t.check_socket_by_name(c);
    CHECK(t.pool().spawned() == 3);
    REQUIRE(t.run_until_exited(1));
    CHECK(t.state_of(b.identity()).empty());
    CHECK(t.state_of(a.identity()) == "ready");
    CHECK(t.state_of(c.identity()) == "ready");
    t.stop_all();
}

TEST_CASE_FIXTURE(TwoWorkers,
                  "at max_workers with every worker busy, a job for another namespace is refused") {
    // Not yet answered: a worker that is starting or has a job is busy.
    auto for_a = t.submit(a.by_name());
    auto for_b = t.submit(b.by_name());
    auto for_c = t.submit(c.by_name());
    check_refused(*for_c, ErrorCode::limit, "all 2 workers are busy");
    CHECK(t.pool().spawned() == 2);
    REQUIRE(t.run_until([&] { return for_a->done && for_b->done; }));
    check_one_socket_in(*for_a, a.identity());
    check_one_socket_in(*for_b, b.identity());
    t.stop_all();
}

TEST_CASE_FIXTURE(TwoWorkersPerUid,
                  "max_workers_per_uid: a uid's own least recently used idle worker makes room") {
    NamedNetns root_ns(t.netns_dir(), "root");
    NamedNetns other(t.netns_dir(), "other");

    // Root's worker and another uid's are older than all of uid 1000's.
    t.make_socket(root_ns.by_name());
    t.make_socket(other.by_fd(), by_uid(1001));
    t.make_socket(a.by_fd(), by_uid(1000));
    t.make_socket(b.by_fd(), by_uid(1000));
    check_one_socket_in(*t.make_socket(c.by_fd(), by_uid(1000)), c.identity());
    REQUIRE(t.run_until_exited(1));
    CHECK(t.state_of(a.identity()).empty());
    for (const NamedNetns* ns : {&root_ns, &other, &b, &c}) {
        CAPTURE(ns->name());
        CHECK(t.state_of(ns->identity()) == "ready");
    }
    t.stop_all();
}

TEST_CASE_FIXTURE(
    TwoWorkersPerUid,
    "max_workers_per_uid: with all of a uid's workers busy, its next one is refused") {
    auto for_a = t.submit(a.by_fd(), by_uid(1000));
    auto for_b = t.submit(b.by_fd(), by_uid(1000));
    auto for_c = t.submit(c.by_fd(), by_uid(1000));
    check_refused(*for_c, ErrorCode::limit, "uid 1000 has 2 workers busy");
    // Another uid, and root, still get workers.
    auto for_c_other = t.submit(c.by_fd(), by_uid(1001));
    REQUIRE(t.run_until([&] { return for_a->done && for_b->done && for_c_other->done; }));
    check_one_socket_in(*for_c_other, c.identity());
    CHECK(t.pool().spawned() == 3);
    t.stop_all();
}

TEST_CASE("callers other than root may fill three quarters of max_workers, never root's") {
    // Four workers, three of them for callers other than root.
    PoolUnderTest t(quick_config(&WorkerPoolConfig::max_workers, 4));
    std::vector<std::unique_ptr<NamedNetns>> s;
    for (int i = 1; i <= 5; ++i) {
        s.push_back(std::make_unique<NamedNetns>(t.netns_dir(), "s" + std::to_string(i)));
    }
    NamedNetns r(t.netns_dir(), "r");
    NamedNetns r2(t.netns_dir(), "r2");

    // Three busy sponsored workers: a fourth caller is refused though the
    // pool has room, which stays root's.
    std::vector<AnswerPtr> first;
    for (int i = 0; i < 3; ++i) {
        first.push_back(t.submit(s[i]->by_fd(), by_uid(1001 + i)));
    }
    auto fourth = t.submit(s[3]->by_fd(), by_uid(1004));
    check_refused(*fourth, ErrorCode::limit, "all 3 workers that callers other than root");
    auto for_root = t.submit(r.by_name());
    CHECK(t.pool().spawned() == 4);
    REQUIRE(t.run_until(
        [&] { return first[0]->done && first[1]->done && first[2]->done && for_root->done; }));
    check_one_socket_in(*for_root, r.identity());

    // Root's worker is now the least recently used, then s1's.
    for (int i = 0; i < 3; ++i) {
        check_one_socket_in(*t.make_socket(s[i]->by_fd(), by_uid(1001 + i)), s[i]->identity());
    }
    // A sponsored newcomer makes the oldest sponsored worker exit, not root's.
    check_one_socket_in(*t.make_socket(s[4]->by_fd(), by_uid(1005)), s[4]->identity());
    CHECK(t.leaving(s[0]->identity()));
    CHECK(t.state_of(r.identity()) == "ready");
    // Root at max_workers: a sponsored worker goes before root's older one.
    t.check_socket_by_name(r2);
    CHECK(t.leaving(s[1]->identity()));
    CHECK(t.state_of(r.identity()) == "ready");
    REQUIRE(t.run_until_exited(2));
    CHECK(t.pool().live() == 4);
    t.stop_all();
}

TEST_CASE("names_changed: a worker exits when no name of its namespace is left") {
    PoolUnderTest t(quick_config());
    NamedNetns a(t.netns_dir(), "a");
    NamedNetns a_too(t.netns_dir(), "a-too", a);
    NamedNetns b(t.netns_dir(), "b");
    REQUIRE(a_too.identity() == a.identity());

    t.make_socket(a.by_name());
    t.make_socket(a_too.by_name());
    t.make_socket(b.by_name());
    CHECK(t.pool().spawned() == 2);

    t.pool().names_changed();
    CHECK(t.state_of(a.identity()) == "ready");
    a.remove();
    t.pool().names_changed();
    CHECK(t.state_of(a.identity()) == "ready"); // "a-too" still names it
    auto described = t.pool().describe();
    for (const auto& info : described) {
        if (info.ino == a.identity().ino) {
            CHECK(info.names == std::vector<std::string>{"a-too"});
        }
    }

    a_too.remove();
    t.pool().names_changed();
    CHECK(t.state_of(a.identity()) == "exiting");
    REQUIRE(t.run_until_exited(1));
    CHECK(t.state_of(a.identity()).empty());
    CHECK(t.state_of(b.identity()) == "ready");
    t.stop_all();
}

TEST_CASE("stop: jobs already sent are answered, then all_exited is called once") {
    PoolUnderTest t(quick_config());
    NamedNetns a(t.netns_dir(), "a");
    NamedNetns b(t.netns_dir(), "b");

    t.make_socket(a.by_name());
    t.make_socket(b.by_name());
    auto in_flight = t.submit(a.by_name());
    int calls = 0;
    t.pool().stop([&calls] { ++calls; });
    CHECK(t.state_of(a.identity()) == "exiting");
    CHECK(t.state_of(b.identity()) == "exiting");

    auto too_late = t.submit(b.by_name());
    check_refused(*too_late, ErrorCode::unavailable, "shutting down");
    proto::WorkerJob job = udp_job();
    JobDone done = record(too_late);
    CHECK_FALSE(t.pool().submit_to_running(b.identity(), std::nullopt, job, done));

    REQUIRE(t.run_until([&] { return calls > 0; }));
    check_one_socket_in(*in_flight, a.identity());
    t.run_for(100ms);
    CHECK(calls == 1);
    CHECK(t.pool().live() == 0);
    CHECK(t.pool().exited() == 2);
    CHECK(t.pool().jobs_in_flight() == 0);
}

TEST_CASE("stop: a worker that does not exit in the grace time is killed") {
    PoolUnderTest t(quick_config());
    NamedNetns a(t.netns_dir(), "a");

    t.make_socket(a.by_name());
    t.stop_worker(a.identity());
    t.stop_all();
    CHECK(t.pool().exited() == 1);
}
