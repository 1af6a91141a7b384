// Never a confused deputy: each attack a local user could try through
// nsbrokerd, tried by real unprivileged users (uid 65534 and 65533) against
// the real daemon, run both as root and as nsbrokerd.service runs it. Each
// is refused, or succeeds only with the caller's own identity, as a real
// peer, the socket's owner and the file system see it.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <thread>

#include "nsbroker/client.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using namespace nsbroker::test;

namespace {

constexpr uid_t nobody = 65534;
constexpr uid_t other_user = 65533;
constexpr RunAs run_modes[] = {RunAs::root, RunAs::service};

const char* describe(RunAs how) {
    return how == RunAs::root ? "daemon as root" : "daemon as its unit runs it";
}

// One request in the protocol's own words, as a client that does not use
// the library would send it; returns the reply's error code, or "ok".
std::string raw_request(const std::string& socket_path, const std::string& json,
                        int fd_to_send = -1) {
    auto c = Client::connect(socket_path);
    if (!c) {
        return "connect: " + c.error().describe();
    }
    int fds[1] = {fd_to_send};
    proto::send_message(c->fd(), json, std::span<const int>(fds, fd_to_send >= 0 ? 1 : 0));
    auto received = proto::receive_message(c->fd());
    if (received.status != proto::ReceiveStatus::message) {
        return "no reply";
    }
    auto reply = proto::decode_reply(received.message.data, proto::Op::socket);
    if (!reply) {
        return "undecodable reply: " + reply.error().message;
    }
    if (auto* e = std::get_if<Error>(&reply->body)) {
        std::fprintf(stderr, "%s\n", e->describe().c_str());
        return std::string(to_string(e->code));
    }
    return "ok";
}

// A unix stream listener at path that anyone may connect to.
UniqueFd unix_listener(const std::string& path, mode_t mode = 0777) {
    UniqueFd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)};
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path.c_str());
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0);
    REQUIRE(::chmod(path.c_str(), mode) == 0);
    REQUIRE(::listen(fd.get(), 8) == 0);
    return fd;
}

std::string own_pid_ref() {
    return "{\"pid\": " + std::to_string(::getpid()) + "}";
}

std::size_t count_of(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
        ++n;
    }
    return n;
}

// A process in a network namespace that nothing else names, living until
// the test lets it go. The forked child runs enter, which makes the
// namespace and in it calls hold_on: that tells the test the pid of the
// process it runs in, then waits for the release.
class NetnsHolder {
  public:
    using Enter = std::function<int(const std::function<int()>& hold_on)>;

    explicit NetnsHolder(const Enter& enter) {
        int told[2];
        int hold[2];
        REQUIRE(::pipe2(told, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(hold, O_CLOEXEC) == 0);
        UniqueFd told_read{told[0]};
        UniqueFd told_write{told[1]};
        UniqueFd hold_read{hold[0]};
        release_.reset(hold[1]);
        child_ = ::fork();
        if (child_ == 0) {
            // Every process below this one sees the release as end of file.
            release_.reset();
            ::_exit(enter([&] {
                pid_t self = ::getpid();
                if (::write(told_write.get(), &self, sizeof self) != sizeof self) {
                    return 1;
                }
                char byte = 0;
                return static_cast<int>(::read(hold_read.get(), &byte, 1));
            }));
        }
        told_write.reset();
        hold_read.reset();
        REQUIRE(::read(told_read.get(), &pid_, sizeof pid_) == sizeof pid_);
    }

    ~NetnsHolder() { release(); }
    NetnsHolder(const NetnsHolder&) = delete;
    NetnsHolder& operator=(const NetnsHolder&) = delete;

    // The process that lives in the namespace.
    [[nodiscard]] pid_t pid() const { return pid_; }

    // Lets the process go and waits for the child the test forked.
    void release() {
        if (release_) {
            release_.reset();
            ::waitpid(child_, nullptr, 0);
        }
    }

  private:
    UniqueFd release_;
    pid_t child_ = -1;
    pid_t pid_ = 0;
};

} // namespace

TEST_CASE("unix sockets: the daemon never binds or connects them for a user") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        Daemon d({}, {}, how);
        TempDir dir;
        const std::string planted = "/etc/nsbroker-test-" + std::to_string(::getpid()) + ".sock";
        // In the protocol's words: connecting to the daemon's own socket,
        // binding a file where only root may write, an abstract name and a
        // relative path are all refused.
        CHECK(as_nobody(Nobody::own_netns, [&] {
                  const std::string ns = own_pid_ref();
                  auto ask = [&](const std::string& step, const std::string& address) {
                      return raw_request(d.socket_path(),
                                         R"({"id": 1, "op": "socket", "netns": )" + ns +
                                             R"(, "sockets": [{"family": "unix", "type": )"
                                             R"("seqpacket", ")" +
                                             step + R"(": ")" + address + R"("}]})");
                  };
                  int failures = 0;
                  failures += ask("connect", d.socket_path()) != "permission_denied";
                  failures += ask("bind", planted) != "permission_denied";
                  failures += ask("connect", "@nsbroker-test") != "permission_denied";
                  failures += ask("bind", "relative.sock") != "permission_denied";
                  return failures;
              }) == 0);
        CHECK(::access(planted.c_str(), F_OK) != 0);
        // As root the daemon still binds, but never a relative path.
        CHECK(raw_request(d.socket_path(),
                          R"({"id": 1, "op": "socket", "netns": {"pid": )" +
                              std::to_string(::getpid()) +
                              R"(}, "sockets": [{"family": "unix", "type": "stream", )"
                              R"("bind": "x.sock"}]})") == "invalid_request");

        // Through the library, the caller connects itself: the daemon, as its
        // peer, sees uid 65534 and answers it as such (stats is root's).
        CHECK(as_nobody(Nobody::own_netns, [&] {
                  auto c = Client::connect(d.socket_path());
                  SocketSpec back = spec(AF_UNIX, SOCK_SEQPACKET);
                  back.connect = d.socket_path();
                  auto s = c->socket(Netns::pid(::getpid()), back);
                  if (!s) {
                      std::fprintf(stderr, "%s\n", s.error().describe().c_str());
                      return 1;
                  }
                  const std::string stats = R"({"id": 7, "op": "stats"})";
                  proto::send_message(s->fd(), stats);
                  auto answer = proto::receive_message(s->fd());
                  return answer.message.data.find("\"permission_denied\"") != std::string::npos ? 0
                                                                                                : 2;
              }) == 0);

        // A listener of root's that anyone may reach sees the caller itself.
        const std::string path = dir.path() + "/peer.sock";
        auto listener = unix_listener(path);
        pid_t child = ::fork();
        if (child == 0) {
            int r = as_nobody(Nobody::own_netns, [&] {
                auto c = Client::connect(d.socket_path());
                SocketSpec to_root = spec(AF_UNIX, SOCK_STREAM);
                to_root.connect = path;
                auto s = c->socket(Netns::pid(::getpid()), to_root);
                char byte = 0;
                return s && ::read(s->fd(), &byte, 1) >= 0 ? 0 : 1;
            });
            ::_exit(r);
        }
        UniqueFd accepted;
        CHECK(wait_for([&] {
            accepted.reset(
                ::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
            return static_cast<bool>(accepted);
        }));
        if (!accepted) {
            ::kill(child, SIGKILL);
            ::waitpid(child, nullptr, 0);
            continue;
        }
        ucred peer{};
        socklen_t length = sizeof peer;
        REQUIRE(::getsockopt(accepted.get(), SOL_SOCKET, SO_PEERCRED, &peer, &length) == 0);
        CHECK(peer.uid == nobody);
        CHECK(peer.gid == nobody);
        CHECK(peer.pid != d.pid());
        accepted.reset();
        int status = 0;
        ::waitpid(child, &status, 0);
        CHECK(WIFEXITED(status));
    }
}

TEST_CASE("holding a descriptor of a namespace root made grants nothing") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        TestNetns ns("roots");
        Daemon d({}, {}, how);
        // /run/netns files are 0444: anyone may open one, and pass it.
        CHECK(as_nobody(Nobody::plain, [&] {
                  UniqueFd named{::open(ns.path().c_str(), O_RDONLY | O_CLOEXEC)};
                  if (!named) {
                      return 1;
                  }
                  if (::setns(named.get(), CLONE_NEWNET) == 0 || errno != EPERM) {
                      return 2; // the kernel itself says no
                  }
                  auto c = Client::connect(d.socket_path());
                  auto s = c->socket(Netns::fd(named.get()), spec(AF_INET, SOCK_STREAM));
                  if (s || s.error().code != ErrorCode::permission_denied) {
                      return 3;
                  }
                  auto by_path = c->socket(Netns::path(ns.path()), spec(AF_NETLINK, SOCK_RAW));
                  return !by_path && by_path.error().code == ErrorCode::permission_denied ? 0 : 4;
              }) == 0);
        // A policy that still says "passed" is refused, not half read.
        CHECK_FALSE(d.write_policy(
            R"({"rules": [{"users": ["*"], "namespaces": {"owned": true, "passed": true}}]})"));
        CHECK(d.log().find("namespaces.passed: no longer exists") != std::string::npos);
    }
}

TEST_CASE("a namespace made in the user's own nested user namespaces is its own") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        Daemon d({}, {}, how);
        CHECK(as_nobody(Nobody::own_netns, [&] {
                  // A second level below the first, as a container in a rootless
                  // container would make: nobody is root in the first.
                  std::ofstream("/proc/self/setgroups") << "deny";
                  std::ofstream("/proc/self/gid_map") << "0 65534 1";
                  std::ofstream("/proc/self/uid_map") << "0 65534 1";
                  if (::unshare(CLONE_NEWUSER | CLONE_NEWNET) < 0) {
                      std::perror("unshare");
                      return 1;
                  }
                  auto c = Client::connect(d.socket_path());
                  auto s = c->socket(Netns::pid(::getpid()), spec(AF_INET, SOCK_DGRAM));
                  if (!s) {
                      std::fprintf(stderr, "%s\n", s.error().describe().c_str());
                      return 2;
                  }
                  struct stat mine {};
                  ::stat("/proc/self/ns/net", &mine);
                  return socket_netns_inode(s->fd()) == mine.st_ino ? 0 : 3;
              }) == 0);
        // Another user's namespace is not nobody's, however it is named.
        NetnsHolder theirs([](const std::function<int()>& hold_on) {
            return as_user(other_user, Nobody::own_netns, hold_on);
        });
        CHECK(as_nobody(Nobody::plain, [&] {
                  auto c = Client::connect(d.socket_path());
                  auto s = c->socket(Netns::pid(theirs.pid()), spec(AF_INET, SOCK_DGRAM));
                  if (s) {
                      return 1;
                  }
                  std::fprintf(stderr, "%s\n", s.error().describe().c_str());
                  return s.error().code == ErrorCode::permission_denied ? 0 : 2;
              }) == 0);
        theirs.release();
    }
}

TEST_CASE("sockets are the caller's: owner, group, ping_group_range and SO_REUSEPORT see it") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        TestNetns ns("identity");
        Daemon d({}, {}, how);
        REQUIRE(d.write_policy(R"({"rules": [{"name": "web", "users": [65534, 65533],
                                  "namespaces": {"names": [")" +
                               ns.name() + R"("]}}]})"));
        // Only gid 0 may make ping sockets here: the daemon's group, never
        // the caller's.
        REQUIRE(run("ip netns exec " + ns.name() + " sysctl -qw net.ipv4.ping_group_range='0 0'") ==
                0);
        // Root holds 127.0.0.1:7080 with SO_REUSEPORT in the namespace.
        auto root = Client::connect(d.socket_path());
        REQUIRE(root);
        SocketSpec web = spec(AF_INET, SOCK_STREAM);
        web.bind = "127.0.0.1:7080";
        web.listen = 16;
        web.options.reuseport = true;
        auto roots = root->socket(Netns::name(ns.name()), web);
        REQUIRE_MESSAGE(roots, roots.error().describe());
        struct stat st {};
        REQUIRE(::fstat(roots->fd(), &st) == 0);
        CHECK(st.st_uid == 0);

        CHECK(as_nobody(Nobody::plain, [&] {
                  auto c = Client::connect(d.socket_path());
                  auto mine = c->socket(Netns::name(ns.name()), spec(AF_INET, SOCK_STREAM));
                  struct stat owner {};
                  if (!mine || ::fstat(mine->fd(), &owner) < 0 || owner.st_uid != nobody ||
                      owner.st_gid != nobody) {
                      return 1;
                  }
                  // Joining root's SO_REUSEPORT group takes the same owner.
                  auto hijack = c->socket(Netns::name(ns.name()), web);
                  if (hijack || hijack.error().sys_errno != EADDRINUSE) {
                      return 2;
                  }
                  auto ping =
                      c->socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM, IPPROTO_ICMP));
                  if (ping || ping.error().sys_errno != EACCES) {
                      return 3;
                  }
                  return 0;
              }) == 0);
        // Root is root: its ping socket is made.
        CHECK(root->socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)));
        // A second user's sockets are its own, in the same worker.
        CHECK(as_user(other_user, Nobody::plain, [&] {
                  auto c = Client::connect(d.socket_path());
                  auto mine = c->socket(Netns::name(ns.name()), spec(AF_INET6, SOCK_DGRAM));
                  struct stat owner {};
                  return mine && ::fstat(mine->fd(), &owner) == 0 && owner.st_uid == other_user &&
                                 owner.st_gid == other_user
                             ? 0
                             : 1;
              }) == 0);
    }
}

TEST_CASE("a mark or transparent grant does not make a socket with CAP_NET_ADMIN") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        TestNetns ns("mark");
        Daemon d({}, {}, how);
        REQUIRE(d.write_policy(R"({"rules": [{"name": "marks", "users": [65534],
                                  "namespaces": {"names": [")" +
                               ns.name() + R"("]}, "grant": ["mark", "transparent"]}]})"));
        // An agent with CAP_NET_ADMIN that cannot enter the namespace: a
        // netlink socket the broker makes under `mark` must not let it take
        // lo down.
        CHECK(as_nobody(Nobody::net_admin, [&] {
                  auto c = Client::connect(d.socket_path());
                  SocketSpec marked = spec(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
                  marked.options.mark = 7;
                  auto s = c->socket(Netns::name(ns.name()), marked);
                  if (!s) {
                      std::fprintf(stderr, "%s\n", s.error().describe().c_str());
                      return 1;
                  }
                  int mark = 0;
                  socklen_t length = sizeof mark;
                  if (::getsockopt(s->fd(), SOL_SOCKET, SO_MARK, &mark, &length) < 0 || mark != 7) {
                      return 2;
                  }
                  return take_lo_down(s->fd()) == -EPERM ? 0 : 3;
              }) == 0);
        CHECK(run("ip -n " + ns.name() + " link show lo | grep -q UP") == 0);
    }
}

TEST_CASE("root is served while another user hoards descriptors and connections") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        TestNetns ns("hoard");
        Daemon d({"--max-connections", "8"}, {}, how);
        const int baseline = d.fd_count();
        // uid 65534 opens every connection it may and asks for 253 sockets
        // again and again on each, never reading a reply.
        constexpr int hoarders = 8;
        int pipe_fds[2];
        REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
        UniqueFd release{pipe_fds[1]};
        pid_t child = ::fork();
        if (child == 0) {
            ::close(pipe_fds[1]);
            int r = as_nobody(Nobody::own_netns, [&] {
                std::vector<Client> clients;
                for (int i = 0; i < hoarders; ++i) {
                    auto c = Client::connect(d.socket_path());
                    if (!c) {
                        return 1;
                    }
                    clients.push_back(std::move(*c));
                }
                const std::string batch =
                    R"({"id": 1, "op": "socket", "netns": {"fd": 0}, )"
                    R"("sockets": [{"family": "inet", "type": "dgram", "count": 253}]})";
                UniqueFd own{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
                const int fds[1] = {own.get()};
                for (auto& c : clients) {
                    for (int n = 0; n < 16; ++n) {
                        proto::send_message(c.fd(), batch, fds);
                    }
                }
                // A ninth connection is over the limit for users but root.
                auto extra = Client::connect(d.socket_path());
                if (!extra || extra->ping()) {
                    return 2;
                }
                char byte = 0;
                return static_cast<int>(::read(pipe_fds[0], &byte, 1));
            });
            ::_exit(r);
        }
        ::close(pipe_fds[0]);
        // Every hoarding connection ends up held back by its budget.
        REQUIRE(wait_for(
            [&] { return count_of(d.log(), "waits for its descriptor budget") >= hoarders; },
            std::chrono::seconds(60)));
        const int hoarded = d.fd_count();
        // Per uid at most 2048 sockets outstanding, queued here or unread there.
        CHECK(hoarded - baseline < 2048 + 3 * hoarders + 64);
        // Root connects past the connection limit and gets everything it asks.
        auto root = Client::connect(d.socket_path());
        REQUIRE(root);
        SocketSpec many = spec(AF_INET, SOCK_DGRAM);
        many.count = 253;
        for (int i = 0; i < 20; ++i) {
            auto batch = root->sockets(Netns::name(ns.name()), {many});
            REQUIRE_MESSAGE(batch, batch.error().describe());
            CHECK(batch->size() == 253);
        }
        release.reset();
        int status = 0;
        ::waitpid(child, &status, 0);
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 0);
        // Once the hoarder is gone, so is everything it held.
        CHECK(wait_for([&] { return d.fd_count() <= baseline + 4; }, std::chrono::seconds(30)));
        CHECK(d.running());
    }
}

TEST_CASE("a user's workers are counted against it, and root's never make room for them") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        TestNetns ns("roots-worker");
        Daemon d(
            {"--unnamed-idle-timeout", "600", "--max-workers", "3", "--max-workers-per-uid", "2"},
            {}, how);
        auto root = Client::connect(d.socket_path());
        REQUIRE(root->socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)));
        auto live_workers = [&] {
            auto stats = root->stats();
            return stats ? static_cast<int>(stats->workers_live) : -1;
        };
        auto root_worker = [&] {
            auto list = root->namespaces();
            for (const auto& n : list ? list->namespaces : std::vector<NamespaceInfo>{}) {
                if (n.ino == ns.inode()) {
                    return n.worker_pid;
                }
            }
            return pid_t{0};
        };
        const pid_t first = root_worker();
        REQUIRE(first > 0);
        // uid 65534 makes three namespaces of its own, one after the other,
        // and asks for a socket in each.
        CHECK(as_nobody(Nobody::own_netns, [&] {
                  auto c = Client::connect(d.socket_path());
                  for (int i = 0; i < 3; ++i) {
                      if (i > 0 && ::unshare(CLONE_NEWNET) < 0) {
                          return 1;
                      }
                      auto s = c->socket(Netns::pid(::getpid()), spec(AF_INET, SOCK_DGRAM));
                      if (!s) {
                          std::fprintf(stderr, "%s\n", s.error().describe().c_str());
                          return 2;
                      }
                  }
                  return 0;
              }) == 0);
        // Two of nobody's, its oldest made to exit for the third, and root's,
        // which made no room for it.
        CHECK(wait_for([&] { return live_workers() == 3; }));
        CHECK(root_worker() == first);
        CHECK(d.log().find("making room for another namespace") != std::string::npos);
    }
}

TEST_CASE("a worker for a namespace reached by pid goes when that process exits") {
    Daemon d({"--unnamed-idle-timeout", "600"});
    auto root = Client::connect(d.socket_path());
    // A process in a namespace nothing else names.
    NetnsHolder holder([](const std::function<int()>& hold_on) {
        return ::unshare(CLONE_NEWNET) < 0 ? 1 : hold_on();
    });
    // In the protocol's words, so that the daemon resolves the pid itself.
    CHECK(raw_request(d.socket_path(),
                      R"({"id": 1, "op": "socket", "netns": {"pid": )" +
                          std::to_string(holder.pid()) +
                          R"(}, "sockets": [{"family": "inet", "type": "dgram"}]})") == "ok");
    CHECK(root->stats()->workers_live == 1);
    holder.release();
    // Long before the 600 s idle time.
    CHECK(wait_for([&] { return root->stats()->workers_live == 0; }));
}

TEST_CASE("a worker for a namespace reached by descriptor goes after a short idle time") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        TestNetns named("kept");
        Daemon d({"--unnamed-idle-timeout", "1"}, {}, how);
        auto root = Client::connect(d.socket_path());
        REQUIRE(root->socket(Netns::name(named.name()), spec(AF_INET, SOCK_DGRAM)));
        TestNetns by_fd("by-fd");
        UniqueFd ns{::open(by_fd.path().c_str(), O_RDONLY | O_CLOEXEC)};
        by_fd.remove(); // nothing names it now but this descriptor
        REQUIRE(root->socket(Netns::fd(ns.get()), spec(AF_INET, SOCK_DGRAM)));
        CHECK(root->stats()->workers_live == 2);
        CHECK(wait_for([&] { return root->stats()->workers_live == 1; }));
        // The named one stays for the full idle time.
        CHECK(root->socket(Netns::name(named.name()), spec(AF_INET, SOCK_DGRAM)));
        CHECK(root->stats()->workers_spawned == 2);
    }
}

TEST_CASE("a path reveals nothing about files the caller cannot see") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        Daemon d({}, {}, how);
        TempDir secret;
        REQUIRE(::chmod(secret.path().c_str(), 0700) == 0);
        const std::string there = secret.path() + "/there";
        std::ofstream(there) << "x";
        CHECK(as_nobody(Nobody::own_netns, [&] {
                  // The library opens paths itself: the caller's own answer.
                  auto c = Client::connect(d.socket_path());
                  for (const auto& path : {secret.path() + "/missing", there}) {
                      auto s = c->socket(Netns::path(path), spec(AF_INET, SOCK_DGRAM));
                      if (s || s.error().code != ErrorCode::permission_denied ||
                          s.error().sys_errno != EACCES) {
                          return 1;
                      }
                  }
                  // The daemon opens no path for a user: one refusal for
                  // anything, /proc/self (which would be the daemon) included.
                  for (const auto& path :
                       {secret.path() + "/missing", there, std::string("/proc/self/fd/3"),
                        std::string("/proc/self/fd/200"), std::string("/proc/self/ns/net")}) {
                      if (raw_request(
                              d.socket_path(),
                              R"({"id": 1, "op": "socket", "netns": {"path": ")" + path +
                                  R"("}, "sockets": [{"family": "inet", "type": "dgram"}]})") !=
                          "permission_denied") {
                          return 2;
                      }
                  }
                  auto init = c->socket(Netns::pid(1), spec(AF_INET, SOCK_DGRAM));
                  return !init && init.error().code == ErrorCode::permission_denied ? 0 : 3;
              }) == 0);
    }
}

TEST_CASE("duplicate keys are refused, not resolved in the caller's favour") {
    Daemon d;
    CHECK(as_nobody(Nobody::plain, [&] {
              return raw_request(d.socket_path(), R"({"id": 1, "op": "ping", "op": "stats"})") ==
                             "invalid_request"
                         ? 0
                         : 1;
          }) == 0);
}

TEST_CASE("a socket directory others may write to is refused") {
    TempDir dir;
    const std::string shared = dir.path() + "/shared";
    REQUIRE(::mkdir(shared.c_str(), 01777) == 0);
    REQUIRE(::chmod(shared.c_str(), 01777) == 0);
    int status = -1;
    auto out = run_output("timeout 30 " + built("NSBROKERD") + " --no-dbus --socket " + shared +
                              "/nsb.sock --policy " + dir.path() + "/policy.json 2>&1",
                          &status);
    INFO(out);
    CHECK(status == 1);
    CHECK(out.find("no one else may write to") != std::string::npos);
    CHECK(::access((shared + "/nsb.sock").c_str(), F_OK) != 0);
}

namespace {

// 253 UDP sockets in the namespace passed with the request.
const std::string batch_in_passed_netns =
    R"({"id": 1, "op": "socket", "netns": {"fd": 0}, )"
    R"("sockets": [{"family": "inet", "type": "dgram", "count": 253}]})";

// Whether uid 65534 gets a connection that answers, within the deadline.
bool nobody_connects(const Daemon& d) {
    return as_nobody(Nobody::plain, [&] {
               return wait_for([&] {
                   auto c = Client::connect(d.socket_path());
                   return c && c->ping();
               })
                          ? 0
                          : 1;
           }) == 0;
}

} // namespace

TEST_CASE("a connection left with its replies unread is closed in time, also with its own end "
          "queued in it") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        Daemon d({"--stall-timeout", "1", "--max-connections-per-uid", "1"}, {}, how);
        const int baseline = d.fd_count();
        // uid 65534 asks for more than its budget, reads nothing, sends the
        // connection's own end along behind it, and is gone: only nsbrokerd's
        // unread queue still holds that end.
        CHECK(as_nobody(Nobody::own_netns, [&] {
                  auto c = Client::connect(d.socket_path());
                  if (!c) {
                      return 1;
                  }
                  UniqueFd own{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
                  const int netns[1] = {own.get()};
                  for (int n = 0; n < 8; ++n) {
                      proto::send_message(c->fd(), batch_in_passed_netns, netns);
                  }
                  pollfd p{c->fd(), POLLIN, 0};
                  const int itself[1] = {c->fd()};
                  return ::poll(&p, 1, 30'000) == 1 && proto::send_message(c->fd(), "{}", itself) ==
                                                           proto::SendStatus::sent
                             ? 0
                             : 2;
              }) == 0);
        // The connection is closed after the stall timeout, and with it goes
        // the one connection the uid may have.
        CHECK(nobody_connects(d));
        CHECK(d.log().find("left its replies unread for 1 s; disconnected") != std::string::npos);
        CHECK(wait_for([&] { return d.fd_count() <= baseline + 4; }));
        CHECK(d.running());
    }
}

TEST_CASE("a connection whose peer reads its replies slowly but steadily is not closed as "
          "stalled") {
    Daemon d({"--stall-timeout", "1"});
    auto c = Client::connect(d.socket_path());
    REQUIRE(c);
    // Refused requests, sent without reading: nsbrokerd answers until the
    // connection's buffer is full (278 small replies here), keeps 256
    // replies more, and then reads no more; what is sent after waits in its
    // queue.
    const std::string refused = R"({"id": 9, "op": "nope"})";
    for (int i = 0; i < 700; ++i) {
        REQUIRE(wait_for([&] {
            return proto::send_message(c->fd(), refused, {}, true) == proto::SendStatus::sent;
        }));
    }
    // One reply read every 100 ms, for three times --stall-timeout: the
    // kernel reports room for the kept reply only once three quarters of
    // the queue is read, and the connection must not close meanwhile.
    for (int read = 0; read < 30; ++read) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        auto reply = proto::receive_message(c->fd(), proto::max_message_size, true);
        REQUIRE(reply.status == proto::ReceiveStatus::message);
        CHECK(reply.message.data.find("unsupported") != std::string::npos);
    }
    CHECK(d.log().find("unread for 1 s; disconnected") == std::string::npos);
    // Once it stops reading, it is closed after --stall-timeout.
    CHECK(wait_for(
        [&] { return d.log().find("unread for 1 s; disconnected") != std::string::npos; }));
}

TEST_CASE("a connection held back by its own uid's budget is closed in time, with the ends "
          "queued in it") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        Daemon d(
            {"--stall-timeout", "1", "--max-connections-per-uid", "2", "--max-fds-per-uid", "400"},
            {}, how);
        // One connection holds most of the uid's budget, read by nsbrokerd
        // but unread by its peer; once its 253 have come, a second one's 253
        // more are past the uid's 400 and wait. Both
        // ends go into the waiting one's unread input, and uid 65534 leaves.
        CHECK(as_nobody(Nobody::own_netns, [&] {
                  auto holder = Client::connect(d.socket_path());
                  auto waiter = Client::connect(d.socket_path());
                  if (!holder || !waiter) {
                      return 1;
                  }
                  UniqueFd own{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
                  const int netns[1] = {own.get()};
                  proto::send_message(holder->fd(), batch_in_passed_netns, netns);
                  pollfd p{holder->fd(), POLLIN, 0};
                  if (::poll(&p, 1, 30'000) != 1) {
                      return 2;
                  }
                  proto::send_message(waiter->fd(), batch_in_passed_netns, netns);
                  const int ends[2] = {holder->fd(), waiter->fd()};
                  return proto::send_message(waiter->fd(), "{}", ends) == proto::SendStatus::sent
                             ? 0
                             : 3;
              }) == 0);
        CHECK(nobody_connects(d));
        CHECK(d.log().find("left its replies unread for 1 s; disconnected") != std::string::npos);
        CHECK(d.running());
    }
}

TEST_CASE("a user who asks for more than its budget before reading is slowed, not refused") {
    for (RunAs how : run_modes) {
        CAPTURE(describe(how));
        Daemon d({}, {}, how);
        CHECK(as_nobody(Nobody::own_netns, [&] {
                  auto c = Client::connect(d.socket_path());
                  UniqueFd own{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
                  const int fds[1] = {own.get()};
                  // Eight batches of 253 at once: twice what one connection
                  // may have outstanding.
                  for (int id = 1; id <= 8; ++id) {
                      const std::string batch =
                          R"({"id": )" + std::to_string(id) +
                          R"(, "op": "socket", "netns": {"fd": 0}, )"
                          R"("sockets": [{"family": "inet", "type": "dgram", "count": 253}]})";
                      proto::send_message(c->fd(), batch, fds);
                  }
                  for (int n = 0; n < 8; ++n) {
                      auto reply = proto::receive_message(c->fd());
                      if (reply.status != proto::ReceiveStatus::message ||
                          reply.message.fds.size() != 253) {
                          std::fprintf(stderr, "reply %d: %s\n", n, reply.message.data.c_str());
                          return 1;
                      }
                  }
                  return 0;
              }) == 0);
        CHECK(d.log().find("waits for its descriptor budget") != std::string::npos);
    }
}
