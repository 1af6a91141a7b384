// nsbroker-chaos: the real nsbrokerd under load while things break.
//
// Four client processes of four threads each (one of them as uid 65534,
// judged by a policy) ask for sockets in a pool of network namespaces that a
// manager creates and deletes all along (some with a veth pair), by name, by
// descriptor and in batches, blocking and submitted, on channels and through
// nsbrokerd, and some hang up mid-request. Meanwhile workers are killed with
// SIGKILL, nsbrokerd itself is killed and started again, and SIGHUP swaps
// the policy between one that grants uid 65534 and one that does not.
//
// Every socket is checked for its namespace (SO_NETNS_COOKIE): a namespace
// gets a name of its own for its whole life, so a socket asked for by that
// name can only come from it. Every call must end in a socket or an error
// with a code, and none past its deadline. At the end, with every namespace
// deleted: no worker left but the spare, the daemon's descriptors back to
// and its memory near what it had at its start, and no namespace this run
// made still held by the daemon or its workers.
//
//   nsbroker-chaos [--long] [--seconds N] [--namespaces N]
//
// The short run (the default, about a minute) is part of scripts/test; the
// long one runs 30 minutes over 1,000 namespaces. Run as root.
#include <fcntl.h>
#include <grp.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "nsbroker/address.hpp"
#include "nsbroker/client.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using namespace nsbroker::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

struct Settings {
    bool long_run = false;
    int seconds = 60;
    int namespaces = 100;
    std::chrono::milliseconds restart_every = 25s;
    std::chrono::milliseconds reload_every = 7s;
    std::chrono::milliseconds kill_every = 300ms;
    std::chrono::milliseconds churn_every = 50ms;
};

// AddressSanitizer's quarantine keeps what the daemon frees, for a while:
// a daemon built with it is not held to its memory at start.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool judge_memory = false;
#else
constexpr bool judge_memory = true;
#endif

constexpr int processes = 4;
constexpr int threads_per_process = 4;
constexpr int max_namespaces = 2000;
constexpr uid_t nobody = 65534;
// A call's deadline, and how much later than it a call may end before it
// counts as hung.
constexpr auto call_timeout = 20s;
constexpr auto deadline_slack = 2s;

// ---- state shared by every process (an anonymous shared mapping) ----------

// A namespace of the pool: its name is "<prefix>-<slot>-<generation>", and
// which namespace a name means never changes. Written under a sequence
// count, odd while it changes.
struct Slot {
    std::atomic<std::uint64_t> seq{0};
    std::atomic<std::uint64_t> generation{0};
    std::atomic<std::uint64_t> cookie{0}; // SO_NETNS_COOKIE of its sockets
    std::atomic<bool> live{false};
};

// Latency in µs, in buckets of about 2.3 % (100 a decade) up to 1000 s.
constexpr int latency_buckets = 900;
int latency_bucket(double us) {
    return std::clamp(static_cast<int>(std::log10(std::max(us, 1.0)) * 100), 0,
                      latency_buckets - 1);
}
double bucket_us(int bucket) {
    return std::pow(10.0, (bucket + 1) / 100.0);
}

constexpr int error_codes = static_cast<int>(ErrorCode::timeout) + 1;

enum Kind { by_name, batch, by_fd, submitted, new_client, hang_up, kinds };
constexpr const char* kind_names[kinds] = {"by name",    "batch",      "by fd",
                                           "event loop", "new Client", "hang-up"};

struct Shared {
    std::atomic<bool> stop{false};
    std::array<Slot, max_namespaces> slots;
    std::atomic<std::uint64_t> requests{0};
    std::atomic<std::uint64_t> sockets{0};
    std::array<std::atomic<std::uint64_t>, kinds> by_kind{};
    std::array<std::atomic<std::uint64_t>, error_codes> errors{};
    std::atomic<std::uint64_t> wrong_namespace{0};
    std::atomic<std::uint64_t> past_deadline{0};
    std::atomic<std::uint64_t> max_latency_us{0};
    std::array<std::atomic<std::uint64_t>, latency_buckets> latency{};
};

Shared* shared = nullptr;

std::string prefix() {
    static const std::string p = "nsbc" + std::to_string(::getpid());
    return p;
}

std::string slot_name(int slot, std::uint64_t generation) {
    return prefix() + "-" + std::to_string(slot) + "-" + std::to_string(generation);
}

// What a client thread reads of a slot: consistent, or nothing.
struct SlotView {
    std::uint64_t generation = 0;
    std::uint64_t cookie = 0;
    bool live = false;
};

std::optional<SlotView> read_slot(const Slot& s) {
    const std::uint64_t before = s.seq.load(std::memory_order_acquire);
    if (before % 2 == 1) {
        return std::nullopt;
    }
    SlotView v{s.generation.load(), s.cookie.load(), s.live.load()};
    std::atomic_thread_fence(std::memory_order_acquire);
    if (s.seq.load(std::memory_order_relaxed) != before) {
        return std::nullopt;
    }
    return v;
}

std::uint64_t netns_cookie_of_socket(int fd) {
    std::uint64_t cookie = 0;
    socklen_t length = sizeof cookie;
    if (::getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &length) < 0) {
        return 0;
    }
    return cookie;
}

void note_latency(Clock::duration took) {
    const auto us = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(took).count());
    ++shared->latency[static_cast<std::size_t>(latency_bucket(static_cast<double>(us)))];
    std::uint64_t seen = shared->max_latency_us.load();
    while (us > seen && !shared->max_latency_us.compare_exchange_weak(seen, us)) {
    }
    if (took > call_timeout + deadline_slack) {
        ++shared->past_deadline;
    }
}

// ---- the namespaces ---------------------------------------------------------

// Creates and deletes the pool's namespaces, from the main process.
class Namespaces {
  public:
    explicit Namespaces(int count) : count_(count) {}

    // Every slot live, made in one `ip -batch`.
    void create_all() {
        std::string batch;
        for (int i = 0; i < count_; ++i) {
            batch += "netns add " + slot_name(i, 1) + "\n";
        }
        if (ip_batch(batch) != 0) {
            throw std::runtime_error("ip -batch could not create the namespaces");
        }
        for (int i = 0; i < count_; ++i) {
            publish(i, 1);
        }
    }

    // One step of churn: a random slot is deleted, or made again under a
    // new name (a quarter of them with a veth pair).
    void churn(std::mt19937& rng) {
        const int i = static_cast<int>(rng() % static_cast<unsigned>(count_));
        Slot& s = shared->slots[static_cast<std::size_t>(i)];
        const std::uint64_t generation = s.generation.load();
        if (s.live.load()) {
            begin(s);
            s.live = false;
            end(s);
            run("ip netns delete " + slot_name(i, generation) + " 2>/dev/null");
            ++deleted;
            return;
        }
        const std::string name = slot_name(i, generation + 1);
        if (run("ip netns add " + name) != 0) {
            return;
        }
        if (rng() % 4 == 0) {
            const std::string a = "cv" + std::to_string(i) + "a";
            const std::string b = "cv" + std::to_string(i) + "b";
            if (run("ip link add " + a + " type veth peer name " + b + " && ip link set " + b +
                    " netns " + name + " && ip link delete " + a) == 0) {
                ++with_veth;
            }
        }
        publish(i, generation + 1);
    }

    void delete_all() {
        std::string batch;
        for (int i = 0; i < count_; ++i) {
            Slot& s = shared->slots[static_cast<std::size_t>(i)];
            if (s.live) {
                batch += "netns delete " + slot_name(i, s.generation) + "\n";
                s.live = false;
            }
        }
        ip_batch(batch);
    }

    // The inodes of every namespace this run made.
    [[nodiscard]] std::set<ino_t> made() const {
        std::lock_guard lock(mutex_);
        return made_;
    }

    std::atomic<int> created{0};
    std::atomic<int> deleted{0};
    std::atomic<int> with_veth{0};

  private:
    static void begin(Slot& s) { s.seq.fetch_add(1, std::memory_order_acq_rel); }
    static void end(Slot& s) { s.seq.fetch_add(1, std::memory_order_release); }

    // Reads the new namespace's cookie from a socket made in it, in a
    // thread of its own, and makes the slot live.
    void publish(int i, std::uint64_t generation) {
        const std::string path = "/run/netns/" + slot_name(i, generation);
        std::uint64_t cookie = 0;
        struct stat st {};
        std::thread([&] {
            UniqueFd ns{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
            if (!ns || ::fstat(ns.get(), &st) < 0 || ::setns(ns.get(), CLONE_NEWNET) < 0) {
                return;
            }
            UniqueFd probe{::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
            cookie = netns_cookie_of_socket(probe.get());
        }).join();
        if (cookie == 0) {
            return;
        }
        {
            std::lock_guard lock(mutex_);
            made_.insert(st.st_ino);
        }
        Slot& s = shared->slots[static_cast<std::size_t>(i)];
        begin(s);
        s.generation = generation;
        s.cookie = cookie;
        s.live = true;
        end(s);
        ++created;
    }

    int count_;
    mutable std::mutex mutex_;
    std::set<ino_t> made_;
};

// ---- the clients ------------------------------------------------------------

SocketSpec spec_of(int family, int type, unsigned count = 1) {
    SocketSpec s = spec(family, type);
    s.count = count;
    return s;
}

// Whether each socket lives where its name says; counted when not.
void check_sockets(const std::vector<Socket>& sockets, std::uint64_t cookie) {
    shared->sockets += sockets.size();
    for (const auto& s : sockets) {
        if (netns_cookie_of_socket(s.fd()) != cookie) {
            ++shared->wrong_namespace;
        }
    }
}

// The messages of a process's io errors (a connection that failed), with
// how many and the seconds of the run they came in: printed when there are
// many, to tell a restart's few from something else.
struct IoErrors {
    std::mutex mutex;
    std::map<std::string, std::pair<std::uint64_t, std::pair<long, long>>> by_message;
};
IoErrors io_errors;
Clock::time_point run_started = Clock::now();

void count_error(const Error& e) {
    ++shared->errors[static_cast<std::size_t>(e.code)];
    if (e.code == ErrorCode::io) {
        const long second =
            std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - run_started).count();
        std::lock_guard lock(io_errors.mutex);
        auto [it, fresh] =
            io_errors.by_message.try_emplace(e.message, 0, std::pair(second, second));
        ++it->second.first;
        it->second.second.second = second;
    }
}

void print_io_errors(int index) {
    std::lock_guard lock(io_errors.mutex);
    for (const auto& [message, seen] : io_errors.by_message) {
        if (seen.first >= 100) {
            std::fprintf(stderr, "client process %d: %llu io errors from %ld s to %ld s: %s\n",
                         index, static_cast<unsigned long long>(seen.first), seen.second.first,
                         seen.second.second, message.c_str());
        }
    }
}

// A request on a connection of its own, closed before the reply is read.
void send_and_hang_up(const std::string& socket_path, const std::string& name) {
    auto address = proto::parse_address(AF_UNIX, socket_path);
    UniqueFd fd{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)};
    if (!address || !fd || ::connect(fd.get(), address->get(), address->length) < 0) {
        return;
    }
    proto::Request r;
    r.id = 1;
    r.op = proto::Op::socket;
    r.netns = proto::NetnsRef::by_name(name);
    r.specs = {spec_of(AF_INET, SOCK_DGRAM, 64)};
    (void)proto::send_message(fd.get(), proto::encode_request(r), {}, true);
}

// Completions of submitted requests, collected by whichever thread of a
// process reads them, for the thread that submitted each.
struct Mailbox {
    std::mutex mutex;
    std::map<std::uint64_t, Result<std::vector<Socket>>> done;
};

// Waits for the completion of request id, reading those of others for them.
Result<std::vector<Socket>> collect(Client& client, Mailbox& box, std::uint64_t id,
                                    Clock::time_point start) {
    while (Clock::now() - start < call_timeout + deadline_slack * 2) {
        {
            std::lock_guard lock(box.mutex);
            if (auto it = box.done.find(id); it != box.done.end()) {
                auto result = std::move(it->second);
                box.done.erase(it);
                return result;
            }
        }
        pollfd p{client.event_fd(), POLLIN, 0};
        ::poll(&p, 1, 20);
        auto completed = client.completions();
        std::lock_guard lock(box.mutex);
        for (auto& c : completed) {
            box.done.emplace(c.id, std::move(c.sockets));
        }
    }
    return make_error(ErrorCode::timeout, "never completed");
}

// One calling thread: requests of every kind, until told to stop.
void call(Client& client, Mailbox& box, const std::string& socket_path, int namespaces,
          unsigned seed) {
    std::mt19937 rng(seed);
    while (!shared->stop.load(std::memory_order_relaxed)) {
        const int i = static_cast<int>(rng() % static_cast<unsigned>(namespaces));
        auto view = read_slot(shared->slots[static_cast<std::size_t>(i)]);
        if (!view || view->generation == 0) {
            continue;
        }
        // Mostly live namespaces; some just deleted, to be told they are gone.
        if (!view->live && rng() % 8 != 0) {
            continue;
        }
        const std::string name = slot_name(i, view->generation);
        const auto netns = Netns::name(name);
        const unsigned dice = rng() % 100;
        const Kind kind = dice < 55   ? by_name
                          : dice < 70 ? batch
                          : dice < 82 ? by_fd
                          : dice < 92 ? submitted
                          : dice < 97 ? new_client
                                      : hang_up;
        ++shared->by_kind[kind];
        ++shared->requests;
        const auto start = Clock::now();
        Result<std::vector<Socket>> got = make_error(ErrorCode::internal, "not asked");
        switch (kind) {
        case by_name:
            got = client.sockets(netns, {spec_of(AF_INET, SOCK_DGRAM)});
            break;
        case batch:
            got = client.sockets(netns,
                                 {spec_of(AF_INET, SOCK_DGRAM, 8),
                                  spec_of(AF_INET6, SOCK_STREAM, 2), spec_of(AF_UNIX, SOCK_DGRAM)});
            break;
        case by_fd: {
            UniqueFd fd{::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC)};
            if (!fd) {
                got = make_error(ErrorCode::not_found, "deleted before it was opened", ENOENT);
                break;
            }
            got = client.sockets(Netns::fd(fd.get()), {spec_of(AF_INET, SOCK_STREAM)});
            break;
        }
        case submitted: {
            auto id = client.submit_sockets(netns, {spec_of(AF_INET, SOCK_DGRAM, 4)});
            if (!id) {
                got = std::move(id).error();
                break;
            }
            got = collect(client, box, *id, start);
            break;
        }
        case new_client: {
            auto own = Client::connect(socket_path, {.timeout = call_timeout});
            if (!own) {
                got = std::move(own).error();
                break;
            }
            got = own->sockets(netns, {spec_of(AF_INET, SOCK_DGRAM)});
            // Gone with a request submitted and not collected.
            (void)own->submit_sockets(netns, {spec_of(AF_INET, SOCK_DGRAM, 16)});
            break;
        }
        case hang_up:
            send_and_hang_up(socket_path, name);
            got = std::vector<Socket>{};
            break;
        case kinds:
            break;
        }
        note_latency(Clock::now() - start);
        if (got) {
            check_sockets(*got, view->cookie);
        } else {
            count_error(got.error());
            // As a program would while nsbrokerd is away, or while it
            // refuses what the policy no longer grants.
            if (got.error().code == ErrorCode::io ||
                got.error().code == ErrorCode::permission_denied) {
                std::this_thread::sleep_for(10ms);
            }
        }
    }
}

// A client process: threads_per_process threads sharing one Client.
int client_process(const std::string& socket_path, int index, int namespaces) {
    if (index == processes - 1) {
        // Judged by the policy, which SIGHUP keeps changing.
        if (::setgroups(0, nullptr) < 0 || ::setgid(nobody) < 0 || ::setuid(nobody) < 0) {
            return 2;
        }
    }
    auto client =
        Client::connect(socket_path, {.timeout = call_timeout, .direct_channels = index % 2 == 1});
    for (int attempt = 0; !client && attempt < 100; ++attempt) {
        std::this_thread::sleep_for(100ms); // nsbrokerd may be starting again
        client = Client::connect(socket_path,
                                 {.timeout = call_timeout, .direct_channels = index % 2 == 1});
    }
    if (!client) {
        return 3;
    }
    Mailbox box;
    std::vector<std::thread> threads;
    for (int t = 0; t < threads_per_process; ++t) {
        threads.emplace_back(call, std::ref(*client), std::ref(box), socket_path, namespaces,
                             static_cast<unsigned>(index * 100 + t + 1));
    }
    for (auto& t : threads) {
        t.join();
    }
    print_io_errors(index);
    return 0;
}

// ---- the daemon and what breaks it ------------------------------------------

std::string policy(bool grants) {
    if (!grants) {
        return R"({"rules": []})";
    }
    return R"({"rules": [{"name": "chaos", "users": [65534],
                         "namespaces": {"names": [")" +
           prefix() + R"(-*"]}, "grant": []}]})";
}

// A field of /proc/PID/status, in KiB: VmRSS, or RssAnon (the heap and the
// stacks, without the code and data mapped from files, which the kernel
// maps more of as more of the code runs).
long status_kib(pid_t pid, const std::string& field = "VmRSS") {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(in, line);) {
        if (line.starts_with(field + ":")) {
            return std::atol(line.c_str() + field.size() + 1);
        }
    }
    return 0;
}

std::size_t count_in(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
        ++n;
    }
    return n;
}

// The network namespaces process pid holds: its own, and those of its
// nsfs descriptors and sockets (taken with pidfd_getfd and asked SIOCGSKNS).
std::set<ino_t> namespaces_held_by(pid_t pid) {
    std::set<ino_t> held;
    struct stat st {};
    if (::stat(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), &st) == 0) {
        held.insert(st.st_ino);
    }
    UniqueFd pidfd{static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))};
    std::error_code ec;
    for (const auto& entry :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
        const std::string target = std::filesystem::read_symlink(entry.path(), ec).string();
        if (target.starts_with("net:[")) {
            held.insert(static_cast<ino_t>(std::stoull(target.substr(5))));
        } else if (target.starts_with("socket:[") && pidfd) {
            const int number = std::stoi(entry.path().filename().string());
            UniqueFd copy{static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), number, 0))};
            if (copy) {
                held.insert(socket_netns_inode(copy.get()));
            }
        }
    }
    return held;
}

struct Peaks {
    std::atomic<long> rss_kib{0};
    std::atomic<int> fds{0};
};

double percentile(double p) {
    std::uint64_t total = 0;
    for (const auto& b : shared->latency) {
        total += b;
    }
    const auto rank = static_cast<std::uint64_t>(std::ceil(p * static_cast<double>(total)));
    std::uint64_t seen = 0;
    for (int i = 0; i < latency_buckets; ++i) {
        seen += shared->latency[static_cast<std::size_t>(i)];
        if (seen >= rank && seen > 0) {
            return bucket_us(i);
        }
    }
    return 0;
}

std::string millis(double us) {
    char text[32];
    std::snprintf(text, sizeof text, us < 10'000 ? "%.2f ms" : "%.0f ms", us / 1000.0);
    return text;
}

Settings parse(int argc, char** argv) {
    Settings s;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--long") {
            s.long_run = true;
            s.seconds = 1800;
            s.namespaces = 1000;
            s.restart_every = 300s;
            s.reload_every = 30s;
            s.kill_every = 500ms;
            s.churn_every = 100ms;
        } else if (a == "--seconds" && i + 1 < argc) {
            s.seconds = std::stoi(argv[++i]);
        } else if (a == "--namespaces" && i + 1 < argc) {
            s.namespaces = std::clamp(std::stoi(argv[++i]), 1, max_namespaces);
        } else {
            std::fprintf(stderr, "usage: nsbroker-chaos [--long] [--seconds N] [--namespaces N]\n");
            std::exit(2);
        }
    }
    return s;
}

int run(const Settings& settings) {
    ::setenv("NSBROKERD", NSBROKERD_PATH, 0);
    void* memory =
        ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
        std::perror("mmap");
        return 2;
    }
    shared = new (memory) Shared;

    Namespaces pool(settings.namespaces);
    pool.create_all();
    Daemon daemon({"--log-level", "info", "--max-workers", std::to_string(max_namespaces + 64),
                   "--unnamed-idle-timeout", "1"});
    std::mutex daemon_mutex; // restart, reload and the kills take turns
    if (!daemon.write_policy(policy(true))) {
        std::fprintf(stderr, "the policy was refused:\n%s", daemon.log().c_str());
        return 2;
    }

    // What a fresh daemon holds, with its spare and no client: every
    // instance started later must come back to it once its load is gone.
    wait_for([&] { return !children_of(daemon.pid()).empty(); });
    const int resting_fds = daemon.fd_count();
    const long resting_rss = status_kib(daemon.pid());
    const long resting_anon = status_kib(daemon.pid(), "RssAnon");

    // Client processes first: no thread is running yet to fork.
    run_started = Clock::now();
    std::vector<pid_t> clients;
    for (int i = 0; i < processes; ++i) {
        pid_t pid = ::fork();
        if (pid == 0) {
            ::_exit(client_process(daemon.socket_path(), i, settings.namespaces));
        }
        clients.push_back(pid);
    }

    Peaks peaks;
    std::atomic<int> killed{0};
    std::atomic<int> restarts{0};
    std::atomic<std::uint64_t> sockets_at_restart{0};
    std::atomic<int> reloads{0};
    std::atomic<bool> stop{false};
    auto every = [&](std::chrono::milliseconds period, const std::function<void()>& step) {
        return std::thread([&, period, step] {
            auto next = Clock::now() + period;
            while (!stop) {
                std::this_thread::sleep_until(std::min(next, Clock::now() + 50ms));
                if (Clock::now() >= next) {
                    step();
                    next += period;
                }
            }
        });
    };
    std::mt19937 rng(1);
    std::vector<std::thread> chaos;
    chaos.push_back(every(settings.churn_every, [&] { pool.churn(rng); }));
    std::mt19937 kill_rng(2);
    chaos.push_back(every(settings.kill_every, [&] {
        std::lock_guard lock(daemon_mutex);
        auto workers = children_of(daemon.pid());
        if (!workers.empty()) {
            ::kill(workers[kill_rng() % workers.size()], SIGKILL);
            ++killed;
        }
    }));
    chaos.push_back(every(settings.reload_every, [&] {
        std::lock_guard lock(daemon_mutex);
        (void)daemon.write_policy(policy(reloads % 2 == 1));
        ++reloads;
    }));
    const auto started = Clock::now();
    const auto ends = started + std::chrono::seconds(settings.seconds);
    chaos.push_back(every(settings.restart_every, [&] {
        // Not in the run's last stretch: the daemon started last must serve.
        if (Clock::now() + settings.restart_every / 2 > ends) {
            return;
        }
        std::lock_guard lock(daemon_mutex);
        daemon.restart(SIGKILL);
        ++restarts;
        sockets_at_restart = shared->sockets.load();
        (void)daemon.write_policy(policy(reloads % 2 == 0));
    }));
    chaos.push_back(every(200ms, [&] {
        const pid_t pid = daemon.pid();
        peaks.rss_kib = std::max(peaks.rss_kib.load(), status_kib(pid));
        peaks.fds = std::max(peaks.fds.load(), daemon.fd_count());
    }));

    while (Clock::now() < ends) {
        std::this_thread::sleep_for(1s);
        if (settings.long_run) {
            std::fprintf(stderr, "\r%4lld s: %llu requests",
                         static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(
                                                    Clock::now() - started)
                                                    .count()),
                         static_cast<unsigned long long>(shared->requests.load()));
        }
    }
    stop = true;
    shared->stop = true;
    for (auto& t : chaos) {
        t.join();
    }
    int client_failures = 0;
    for (pid_t pid : clients) {
        client_failures += wait_for_child(pid) != 0;
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();

    // Everything deleted: no worker may be left but the spare, nothing
    // held, and the daemon back where it started.
    pool.delete_all();
    const bool workers_gone = wait_for([&] { return children_of(daemon.pid()).size() <= 1; }, 120s);
    const bool fds_back = wait_for([&] { return daemon.fd_count() <= resting_fds; }, 30s);
    // Its heap within 25 % (or 512 KiB) of the fresh daemon's, once it has
    // been idle long enough to give back what the load grew.
    const long anon_bound = std::max(resting_anon * 5 / 4, resting_anon + 512);
    const bool rss_back =
        !judge_memory ||
        wait_for([&] { return status_kib(daemon.pid(), "RssAnon") <= anon_bound; }, 30s);
    const long rss_end = status_kib(daemon.pid());
    const long anon_end = status_kib(daemon.pid(), "RssAnon");
    const auto made = pool.made();
    std::set<ino_t> kept;
    std::vector<pid_t> holders = children_of(daemon.pid());
    holders.push_back(daemon.pid());
    for (pid_t pid : holders) {
        for (ino_t ino : namespaces_held_by(pid)) {
            if (made.contains(ino)) {
                kept.insert(ino);
            }
        }
    }
    const std::string log = daemon.log();
    const std::size_t spawned = count_in(log, "started for namespace");

    std::uint64_t error_total = 0;
    for (const auto& e : shared->errors) {
        error_total += e;
    }
    const std::uint64_t timeouts = shared->errors[static_cast<int>(ErrorCode::timeout)];
    // Served through the daemon started last, not only before it.
    const bool served_after_restart = shared->sockets > sockets_at_restart;
    const bool pass = shared->wrong_namespace == 0 && shared->past_deadline == 0 && timeouts == 0 &&
                      client_failures == 0 && served_after_restart && workers_gone && fds_back &&
                      rss_back && kept.empty();

    std::printf("\nnsbroker-chaos: %s run, %.0f s, %d namespaces, %d processes x %d threads\n",
                settings.long_run ? "long" : "short", seconds, settings.namespaces, processes,
                threads_per_process);
    std::printf("requests         %llu (%.0f/s), sockets %llu\n",
                static_cast<unsigned long long>(shared->requests.load()),
                static_cast<double>(shared->requests.load()) / seconds,
                static_cast<unsigned long long>(shared->sockets.load()));
    std::printf("  of them        ");
    for (int k = 0; k < kinds; ++k) {
        std::printf("%s%s %llu", k ? ", " : "", kind_names[k],
                    static_cast<unsigned long long>(shared->by_kind[static_cast<std::size_t>(k)]));
    }
    std::printf("\nerrors           %llu:", static_cast<unsigned long long>(error_total));
    for (int c = 0; c < error_codes; ++c) {
        if (auto n = shared->errors[static_cast<std::size_t>(c)].load()) {
            std::printf(" %s %llu", std::string(to_string(static_cast<ErrorCode>(c))).c_str(),
                        static_cast<unsigned long long>(n));
        }
    }
    std::printf("\nwrong namespace  %llu\n",
                static_cast<unsigned long long>(shared->wrong_namespace.load()));
    std::printf("past deadline    %llu (deadline %lld s)\n",
                static_cast<unsigned long long>(shared->past_deadline.load()),
                static_cast<long long>(call_timeout.count()));
    std::printf("latency          p50 %s, p99 %s, max %s\n", millis(percentile(0.5)).c_str(),
                millis(percentile(0.99)).c_str(),
                millis(static_cast<double>(shared->max_latency_us.load())).c_str());
    std::printf("namespaces       created %d, deleted %d, with a veth pair %d\n",
                pool.created.load(), pool.deleted.load(), pool.with_veth.load());
    std::printf("workers          spawned %zu, killed %d\n", spawned, killed.load());
    std::printf("nsbrokerd        killed and restarted %d, SIGHUP %d; peak RSS %.1f MiB, peak "
                "descriptors %d\n",
                restarts.load(), reloads.load(), static_cast<double>(peaks.rss_kib) / 1024,
                peaks.fds.load());
    std::printf("at the end       workers left %zu (the spare counts), descriptors %d (%d at "
                "start), RSS %.1f MiB (%.1f at start), of it anonymous %.1f MiB (%.1f at start), "
                "namespaces still held %zu\n",
                children_of(daemon.pid()).size(), daemon.fd_count(), resting_fds,
                static_cast<double>(rss_end) / 1024, static_cast<double>(resting_rss) / 1024,
                static_cast<double>(anon_end) / 1024, static_cast<double>(resting_anon) / 1024,
                kept.size());
    if (!judge_memory) {
        std::printf("                 (memory not judged: built with AddressSanitizer)\n");
    }
    std::printf("after the last restart %llu sockets\n",
                static_cast<unsigned long long>(shared->sockets - sockets_at_restart));
    std::printf("verdict          %s\n", pass ? "PASS" : "FAIL");
    if (!pass && client_failures != 0) {
        std::printf("                 %d client processes failed\n", client_failures);
    }
    shared->~Shared();
    ::munmap(memory, sizeof(Shared));
    return pass ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
    try {
        return run(parse(argc, argv));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "nsbroker-chaos: %s\n", e.what());
        return 2;
    }
}
