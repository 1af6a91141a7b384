// prepare_confinement and confine_worker: after them, a process can make
// sockets and nothing else of what a compromised worker would want.
// WorkerFilter: the allowlist compiled once, the same program for every
// worker, and no one can change it.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <linux/seccomp.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "workers/worker_sandbox.hpp"

using namespace nsbroker::daemon;

namespace {

const WorkerFilter& compiled() {
    static const WorkerFilter filter = [] {
        auto made = WorkerFilter::compile();
        REQUIRE(made);
        return std::move(*made);
    }();
    return filter;
}

// Runs probe in a child confined by filter; returns what it returned
// (through a pipe: a sanitizer's exit handler may change the exit status of
// a confined process).
template <typename Probe>
int in_confined_child(Probe probe, const WorkerFilter& filter = compiled()) {
    int result[2];
    REQUIRE(::pipe2(result, O_CLOEXEC) == 0);
    pid_t child = ::fork();
    if (child == 0) {
        ::close(result[0]);
        int netns = ::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
        unsigned char answer = 100;
        if (netns >= 0 && prepare_confinement(filter) && confine_worker(filter)) {
            answer = static_cast<unsigned char>(probe(netns));
        }
        if (::write(result[1], &answer, 1) != 1) {
            ::_exit(1);
        }
        ::_exit(0);
    }
    ::close(result[1]);
    unsigned char answer = 255;
    if (::read(result[0], &answer, 1) != 1) {
        answer = 254;
    }
    ::close(result[0]);
    ::waitpid(child, nullptr, 0);
    return answer;
}

bool refused(int r) {
    return r < 0 && errno == EPERM;
}

} // namespace

TEST_CASE("a confined worker can no longer open files, exec, setns or unshare") {
    CHECK(in_confined_child(
              [](int) { return refused(::open("/etc/hostname", O_RDONLY)) ? 0 : 1; }) == 0);
    CHECK(in_confined_child([](int) {
              return refused(::openat(AT_FDCWD, "/proc/self/status", O_RDONLY)) ? 0 : 1;
          }) == 0);
    CHECK(in_confined_child([](int) {
              char* const argv[] = {const_cast<char*>("true"), nullptr};
              return refused(::execve("/bin/true", argv, nullptr)) ? 0 : 1;
          }) == 0);
    CHECK(in_confined_child(
              [](int netns) { return refused(::setns(netns, CLONE_NEWNET)) ? 0 : 1; }) == 0);
    CHECK(in_confined_child([](int) { return refused(::unshare(CLONE_NEWNET)) ? 0 : 1; }) == 0);
    CHECK(in_confined_child([](int) { return refused(static_cast<int>(::fork())) ? 0 : 1; }) == 0);
}

TEST_CASE("a worker joins its namespace between the two stages of its filter, and no more after") {
    int result[2];
    REQUIRE(::pipe2(result, O_CLOEXEC) == 0);
    pid_t child = ::fork();
    if (child == 0) {
        ::close(result[0]);
        unsigned char failed = 0;
        auto step = [&](unsigned char bit, bool ok) {
            failed |= ok ? 0 : bit;
        };
        int netns = ::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
        step(1, netns >= 0 && prepare_confinement(compiled()));
        // The entry stage: what joining takes, and still not the rest.
        struct statfs fs {};
        step(2, ::fstatfs(netns, &fs) == 0 && ::ioctl(netns, NS_GET_NSTYPE) == CLONE_NEWNET &&
                    ::setns(netns, CLONE_NEWNET) == 0 && ::dup2(netns, 100) == 100);
        int sysctl = ::openat(AT_FDCWD, "/proc/sys/net/ipv4/ip_unprivileged_port_start",
                              O_RDONLY | O_CLOEXEC);
        step(4, sysctl >= 0);
        step(8, refused(::unshare(CLONE_NEWNET)) && refused(static_cast<int>(::fork())));
        step(16, static_cast<bool>(confine_worker(compiled())));
        // Settled: none of the extras is left.
        step(32, refused(::fstatfs(netns, &fs)) && refused(::ioctl(netns, NS_GET_NSTYPE)) &&
                     refused(::setns(netns, CLONE_NEWNET)) && refused(::dup2(netns, 101)) &&
                     refused(::openat(AT_FDCWD, "/proc/self/status", O_RDONLY)) &&
                     refused(static_cast<int>(
                         ::syscall(SYS_seccomp, SECCOMP_SET_MODE_STRICT, 0, nullptr))));
        // And the allowlist's own ioctls still work.
        int queued = -1;
        int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        step(64, udp >= 0 && ::ioctl(udp, SIOCOUTQ, &queued) == 0);
        if (::write(result[1], &failed, 1) != 1) {
            ::_exit(1);
        }
        ::_exit(0);
    }
    ::close(result[1]);
    unsigned char failed = 255;
    CHECK(::read(result[0], &failed, 1) == 1);
    ::close(result[0]);
    ::waitpid(child, nullptr, 0);
    CHECK(failed == 0);
}

TEST_CASE("a confined worker still makes every kind of socket it serves") {
    CHECK(in_confined_child([](int) {
              int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
              int raw = ::socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
              int nl = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0);
              sockaddr_in low{};
              low.sin_family = AF_INET;
              low.sin_port = htons(80);
              low.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
              int tcp = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
              int one = 1;
              bool ok = udp >= 0 && raw >= 0 && nl >= 0 && tcp >= 0 &&
                        ::setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
                        ::bind(tcp, reinterpret_cast<sockaddr*>(&low), sizeof(low)) == 0 &&
                        ::setsockopt(udp, SOL_SOCKET, SO_MARK, &one, sizeof(one)) == 0;
              return ok ? 0 : 1;
          }) == 0);
}

TEST_CASE("a confined worker makes sockets as its caller and keeps its own real uid") {
    CHECK(in_confined_child([](int) {
              const nsbroker::proto::JobCaller nobody{65534, 65534, {65534, 100}};
              if (!become_caller(nobody)) {
                  return 1;
              }
              int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
              struct stat owner {};
              if (udp < 0 || ::fstat(udp, &owner) < 0 || owner.st_uid != 65534 ||
                  owner.st_gid != 65534) {
                  return 2;
              }
              // The real and saved ids, which decide who may signal it,
              // cannot become the caller's.
              if (!refused(static_cast<int>(::syscall(SYS_setresuid, 65534, -1, -1))) ||
                  !refused(static_cast<int>(::syscall(SYS_setresuid, -1, -1, 65534)))) {
                  return 3;
              }
              // And on to another caller, root here.
              const nsbroker::proto::JobCaller root{0, 0, {}};
              if (!become_caller(root)) {
                  return 4;
              }
              int tcp = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
              return tcp >= 0 && ::fstat(tcp, &owner) == 0 && owner.st_uid == 0 ? 0 : 5;
          }) == 0);
}

TEST_CASE("a confined worker still waits on its channels and sees what a caller left unread") {
    // A worker is given its channels; it never makes one.
    int pair[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0);
    nsbroker::UniqueFd ours{pair[0]};
    nsbroker::UniqueFd peer{pair[1]};
    CHECK(in_confined_child([&](int) {
              pollfd fds[1] = {{ours.get(), POLLOUT, 0}};
              const timespec none{};
              int queued = -1;
              bool ok = ::poll(fds, 1, 0) == 1 && ::ppoll(fds, 1, &none, nullptr) == 1 &&
                        ::write(ours.get(), "x", 1) == 1 &&
                        ::ioctl(ours.get(), SIOCOUTQ, &queued) == 0 && queued > 0;
              return ok ? 0 : 1;
          }) == 0);
}

TEST_CASE("the compiled filter is sealed, and a worker reads back the same programs") {
    const auto& filter = compiled();
    REQUIRE(!filter.entry().empty());
    REQUIRE(!filter.settle().empty());
    auto copy = filter.sealed().duplicate();
    REQUIRE(copy);
    CHECK(::pwrite(copy.get(), "x", 1, 0) < 0);
    CHECK(errno == EPERM);
    CHECK(::ftruncate(copy.get(), 0) < 0);
    auto read = WorkerFilter::read(std::move(copy));
    REQUIRE(read);
    REQUIRE(read->entry().size() == filter.entry().size());
    CHECK(std::memcmp(read->entry().data(), filter.entry().data(),
                      filter.entry().size() * sizeof(sock_filter)) == 0);
    REQUIRE(read->settle().size() == filter.settle().size());
    CHECK(std::memcmp(read->settle().data(), filter.settle().data(),
                      filter.settle().size() * sizeof(sock_filter)) == 0);
    // An exec'd worker confines itself with the copy it read.
    CHECK(in_confined_child([](int) { return refused(::open("/etc/hostname", O_RDONLY)) ? 0 : 1; },
                            *read) == 0);
}

TEST_CASE("a filter that is not sealed is not loaded") {
    nsbroker::UniqueFd memfd{::memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING)};
    REQUIRE(memfd);
    auto sealed = compiled().sealed().duplicate();
    REQUIRE(sealed);
    struct stat st {};
    REQUIRE(::fstat(sealed.get(), &st) == 0);
    std::vector<char> bytes(static_cast<std::size_t>(st.st_size));
    REQUIRE(::pread(sealed.get(), bytes.data(), bytes.size(), 0) == st.st_size);
    REQUIRE(::write(memfd.get(), bytes.data(), bytes.size()) == st.st_size);
    CHECK(!WorkerFilter::read(std::move(memfd)));
}
