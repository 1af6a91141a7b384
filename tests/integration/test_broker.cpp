// nsbrokerd as clients see it: the built daemon, real namespaces, real sockets.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "nsbroker/address.hpp"
#include "nsbroker/client.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "support/clients.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using namespace nsbroker::test;

namespace {

// A raw protocol connection, for what the library would never send.
struct RawConnection {
    UniqueFd fd;
    explicit RawConnection(const Daemon& d) : fd(connect_raw(d)) {
        int big = 512 * 1024;
        ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    }
    nlohmann::json exchange(std::string_view bytes, std::vector<int> fds = {}) {
        INFO("request: " << bytes.substr(0, 120));
        REQUIRE(proto::send_message(fd.get(), bytes, fds) == proto::SendStatus::sent);
        auto r = proto::receive_message(fd.get());
        REQUIRE(r.status == proto::ReceiveStatus::message);
        CHECK(r.message.fds.empty());
        return nlohmann::json::parse(r.message.data);
    }
};

// The test's own end of a unix stream connection to address ("PATH" or
// "@NAME"); invalid, with *err set, when it was refused.
UniqueFd unix_stream_to(const std::string& address, int* err) {
    auto a = proto::parse_address(AF_UNIX, address);
    REQUIRE(a);
    UniqueFd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(fd);
    if (::connect(fd.get(), a->get(), a->length) < 0) {
        *err = errno;
        return {};
    }
    return fd;
}

pid_t peer_pid(int fd) {
    ucred cred{};
    socklen_t length = sizeof(cred);
    REQUIRE(::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0);
    return cred.pid;
}

// A namespace of the test's own, a daemon started after it and a
// connection to the daemon.
struct DaemonAndNetns {
    explicit DaemonAndNetns(const std::string& netns_tag, std::vector<std::string> daemon_args = {},
                            const ClientOptions& options = {})
        : ns(netns_tag), d(std::move(daemon_args)), c(connect(d, options)) {}

    // Sockets of spec in ns, reached by its name.
    Result<Socket> socket(const SocketSpec& s) { return c.socket(Netns::name(ns.name()), s); }
    Result<std::vector<Socket>> sockets(const std::vector<SocketSpec>& specs) {
        return c.sockets(Netns::name(ns.name()), specs);
    }
    Result<Socket> udp() { return socket(spec(AF_INET, SOCK_DGRAM)); }

    // The worker serving ns, or 0.
    pid_t worker() { return worker_of(c, ns.inode()); }
    // Makes a first socket in ns, which starts its worker; the worker, or 0.
    pid_t start_worker() {
        REQUIRE(udp());
        return worker();
    }

    TestNetns ns;
    Daemon d;
    Client c;
};

// A client whose every request goes through the daemon: the daemon's own
// accounting of requests in flight and of worker deadlines sees them all.
const ClientOptions through_daemon{.direct_channels = false};

const std::vector<std::vector<std::string>> worker_modes = {{"--worker-mode", "fork"},
                                                            {"--worker-mode", "exec"}};

} // namespace

TEST_CASE("hello and ping") {
    Daemon d;
    auto c = connect(d);
    auto hello = c.hello();
    REQUIRE(hello);
    CHECK(hello->protocol == 1);
    CHECK_FALSE(hello->daemon_version.empty());
    CHECK(c.ping());
}

TEST_CASE("every family and type, made in the namespace asked for, in both worker modes") {
    for (const auto& mode : worker_modes) {
        CAPTURE(mode[1]);
        DaemonAndNetns t("kinds", mode);
        struct Kind {
            int family, type, protocol;
        };
        const Kind kinds[] = {
            {AF_INET, SOCK_STREAM, IPPROTO_TCP},
            {AF_INET, SOCK_DGRAM, IPPROTO_UDP},
            {AF_INET, SOCK_RAW, IPPROTO_ICMP},
            {AF_INET6, SOCK_STREAM, IPPROTO_TCP},
            {AF_INET6, SOCK_DGRAM, IPPROTO_UDP},
            {AF_INET6, SOCK_RAW, IPPROTO_ICMPV6},
            {AF_UNIX, SOCK_STREAM, 0},
            {AF_UNIX, SOCK_DGRAM, 0},
            {AF_UNIX, SOCK_SEQPACKET, 0},
            {AF_NETLINK, SOCK_RAW, NETLINK_ROUTE},
            {AF_NETLINK, SOCK_DGRAM, NETLINK_GENERIC},
            {AF_PACKET, SOCK_RAW, 0x0003},
            {AF_PACKET, SOCK_DGRAM, 0x0800},
        };
        for (const auto& k : kinds) {
            CAPTURE(k.family);
            CAPTURE(k.type);
            auto s = t.socket(spec(k.family, k.type, k.protocol));
            REQUIRE_MESSAGE(s, s.error().describe());
            CHECK(socket_option(s->fd(), SO_DOMAIN) == k.family);
            CHECK(socket_option(s->fd(), SO_TYPE) == k.type);
            if (k.family != AF_PACKET) {
                CHECK(socket_option(s->fd(), SO_PROTOCOL) == k.protocol);
            }
            CHECK((::fcntl(s->fd(), F_GETFD) & FD_CLOEXEC) != 0);
            CHECK(socket_netns_inode(s->fd()) == t.ns.inode());
        }
    }
}

TEST_CASE("a listening socket is reachable inside the namespace and not outside") {
    DaemonAndNetns t("listen");
    auto tcp = parse_socket_spec("tcp-listen:127.0.0.1:0");
    auto s = t.socket(*tcp);
    REQUIRE_MESSAGE(s, s.error().describe());
    auto colon = s->local_address().rfind(':');
    int port = std::stoi(s->local_address().substr(colon + 1));
    CHECK(port > 0);
    CHECK(s->local_address().starts_with("127.0.0.1:"));
    CHECK(tcp_connect_from(t.ns.path(), "127.0.0.1", port));
    CHECK_FALSE(tcp_connect_here("127.0.0.1", port));
}

TEST_CASE("options, nonblock and connect are applied before the socket is handed over") {
    DaemonAndNetns t("options");
    auto server = t.socket(*parse_socket_spec("tcp-listen:127.0.0.1:0"));
    REQUIRE(server);

    SocketSpec s = spec(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    s.nonblock = true;
    s.options.reuseport = true;
    s.options.keepalive = true;
    s.options.nodelay = true;
    s.options.mark = 42;
    s.options.rcvbuf = 65536;
    s.connect = server->local_address();
    auto client = t.socket(s);
    REQUIRE_MESSAGE(client, client.error().describe());
    CHECK((::fcntl(client->fd(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK(socket_option(client->fd(), SO_REUSEPORT) == 1);
    CHECK(socket_option(client->fd(), SO_KEEPALIVE) == 1);
    CHECK(socket_option(client->fd(), SO_MARK) == 42);
    CHECK(socket_option(client->fd(), SO_RCVBUF) >= 65536);
    CHECK(client->local_address().starts_with("127.0.0.1:"));

    SocketSpec v6 = spec(AF_INET6, SOCK_DGRAM, IPPROTO_UDP);
    v6.options.ipv6_only = true;
    v6.bind = "[::1]:0";
    auto u = t.socket(v6);
    REQUIRE_MESSAGE(u, u.error().describe());
    CHECK(u->local_address().starts_with("[::1]:"));
    CHECK(u->local_address() != "[::1]:0");

    // A blocking connect that is still in progress is not an error either.
    SocketSpec blocking = spec(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    blocking.connect = server->local_address();
    auto b = t.socket(blocking);
    REQUIRE(b);
    CHECK((::fcntl(b->fd(), F_GETFL) & O_NONBLOCK) == 0);
}

TEST_CASE("the kernel's refusals come back with their errno") {
    DaemonAndNetns t("refusal");
    auto first = t.socket(*parse_socket_spec("tcp-listen:127.0.0.1:0"));
    REQUIRE(first);
    SocketSpec again = spec(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    again.bind = first->local_address();
    auto second = t.socket(again);
    REQUIRE_FALSE(second);
    CHECK(second.error().code == ErrorCode::kernel);
    CHECK(second.error().sys_errno == EADDRINUSE);
    CHECK(second.error().message.find("bind") != std::string::npos);

    SocketSpec dev = spec(AF_INET, SOCK_DGRAM);
    dev.options.bindtodevice = "nosuchdev0";
    auto d2 = t.socket(dev);
    REQUIRE_FALSE(d2);
    CHECK(d2.error().sys_errno == ENODEV);
}

TEST_CASE("a unix listener on a path is bound and listened on by the caller itself") {
    DaemonAndNetns t("unix-path");
    TempDir dir;
    const std::string path = dir.path() + "/listener.sock";
    auto listener = t.socket(*parse_socket_spec("unix-listen:" + path));
    REQUIRE_MESSAGE(listener, listener.error().describe());
    CHECK(listener->local_address() == path);
    CHECK(socket_option(listener->fd(), SO_ACCEPTCONN) == 1);
    CHECK(socket_netns_inode(listener->fd()) == t.ns.inode());
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK(st.st_uid == ::getuid());

    // A connecting peer sees the credentials listen(2) recorded: the test's,
    // not a worker's.
    int err = 0;
    UniqueFd peer = unix_stream_to(path, &err);
    REQUIRE_MESSAGE(peer, std::strerror(err));
    pid_t worker = t.worker();
    REQUIRE(worker > 0);
    CHECK(peer_pid(peer.get()) == ::getpid());
    UniqueFd accepted{::accept4(listener->fd(), nullptr, nullptr, SOCK_CLOEXEC)};
    REQUIRE(accepted);

    // And a listener sees those connect(2) recorded.
    SocketSpec dialer = spec(AF_UNIX, SOCK_STREAM);
    dialer.connect = path;
    auto dialed = t.socket(dialer);
    REQUIRE_MESSAGE(dialed, dialed.error().describe());
    CHECK((::fcntl(dialed->fd(), F_GETFL) & O_NONBLOCK) == 0);
    UniqueFd second{::accept4(listener->fd(), nullptr, nullptr, SOCK_CLOEXEC)};
    REQUIRE(second);
    CHECK(peer_pid(second.get()) == ::getpid());
    CHECK(peer_pid(second.get()) != worker);

    // A relative path is the caller's, from its working directory.
    CHECK(in_child([&] {
              auto own = Client::connect(t.d.socket_path());
              if (!own || ::chdir(dir.path().c_str()) < 0) {
                  return 10;
              }
              auto relative = own->socket(Netns::name(t.ns.name()),
                                          *parse_socket_spec("unix-listen:relative.sock"));
              if (!relative) {
                  std::fprintf(stderr, "%s\n", relative.error().describe().c_str());
                  return 11;
              }
              return relative->local_address() == "relative.sock" ? 0 : 12;
          }) == 0);
    CHECK(::access((dir.path() + "/relative.sock").c_str(), F_OK) == 0);
}

TEST_CASE("a unix abstract name belongs to the namespace of the socket") {
    DaemonAndNetns t("unix-abstract");
    const std::string name = "@" + unique_name("abstract");
    SocketSpec listening = spec(AF_UNIX, SOCK_STREAM);
    listening.bind = name;
    listening.listen = 16;
    auto listener = t.socket(listening);
    REQUIRE_MESSAGE(listener, listener.error().describe());
    CHECK(listener->local_address() == name);
    CHECK(socket_option(listener->fd(), SO_ACCEPTCONN) == 1);

    CHECK(in_child([&] {
              UniqueFd nsfd{::open(t.ns.path().c_str(), O_RDONLY | O_CLOEXEC)};
              if (!nsfd || ::setns(nsfd.get(), CLONE_NEWNET) < 0) {
                  return 10;
              }
              auto a = proto::parse_address(AF_UNIX, name);
              UniqueFd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
              return ::connect(fd.get(), a->get(), a->length) == 0 ? 0 : 11;
          }) == 0);
    int err = 0;
    CHECK_FALSE(unix_stream_to(name, &err));
    CHECK(err == ECONNREFUSED);

    // The library's own connect finds the name in the socket's namespace too.
    SocketSpec dialer = spec(AF_UNIX, SOCK_STREAM);
    dialer.connect = name;
    dialer.nonblock = true;
    auto inside = t.socket(dialer);
    REQUIRE_MESSAGE(inside, inside.error().describe());
    CHECK((::fcntl(inside->fd(), F_GETFL) & O_NONBLOCK) != 0);
    UniqueFd accepted{::accept4(listener->fd(), nullptr, nullptr, SOCK_CLOEXEC)};
    CHECK(accepted);

    // A full backlog fails a nonblocking connect: nothing would complete it.
    SocketSpec full = listening;
    full.bind = name + "-full";
    full.listen = 0;
    auto small = t.socket(full);
    REQUIRE_MESSAGE(small, small.error().describe());
    SocketSpec eager = dialer;
    eager.connect = full.bind;
    REQUIRE(t.socket(eager));
    auto turned_away = t.socket(eager);
    REQUIRE_FALSE(turned_away);
    CHECK(turned_away.error().code == ErrorCode::kernel);
    CHECK(turned_away.error().sys_errno == EAGAIN);

    // Refused in the test's own namespace, which fails the whole batch and
    // closes the sockets already received, a listener of another name too.
    dialer.nonblock = false;
    SocketSpec other = listening;
    other.bind = name + "-other";
    std::size_t fds_before = open_fd_count();
    std::size_t channels_before = t.c.direct_channels();
    auto outside = t.c.sockets(Netns::pid(::getpid()), {spec(AF_INET, SOCK_DGRAM), other, dialer});
    REQUIRE_FALSE(outside);
    CHECK(outside.error().code == ErrorCode::kernel);
    CHECK(outside.error().sys_errno == ECONNREFUSED);
    CHECK(outside.error().message == "sockets[2]: connect " + name + ": Connection refused");
    // All that stays is the direct channel the request was granted.
    CHECK(open_fd_count() == fds_before + t.c.direct_channels() - channels_before);
    // The worker closes its own copy once it has sent it, perhaps after
    // the library closed this one.
    CHECK(wait_for([&] { return !unix_stream_to(*other.bind, &err) && err == ECONNREFUSED; }));
}

TEST_CASE("a unix path is checked against the caller's own rights") {
    Daemon d;
    TempDir dir;
    REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
    const std::string path = dir.path() + "/root-only.sock";
    auto address = proto::parse_address(AF_UNIX, path);
    REQUIRE(address);
    UniqueFd listener{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(::bind(listener.get(), address->get(), address->length) == 0);
    REQUIRE(::listen(listener.get(), 16) == 0);
    REQUIRE(::chmod(path.c_str(), 0600) == 0);

    SocketSpec dialer = spec(AF_UNIX, SOCK_STREAM);
    dialer.connect = path;
    SocketSpec binder = spec(AF_UNIX, SOCK_DGRAM);
    binder.bind = dir.path() + "/nobody.sock";
    CHECK(as_nobody(Nobody::own_netns, [&] {
              auto c = Client::connect(d.socket_path());
              if (!c) {
                  return 10;
              }
              auto expect_denied = [&](const SocketSpec& s, const std::string& message) {
                  auto refused = c->socket(Netns::pid(::getpid()), s);
                  if (refused) {
                      return false;
                  }
                  const Error& e = refused.error();
                  if (e.code != ErrorCode::permission_denied || e.sys_errno != EACCES ||
                      e.message != message) {
                      std::fprintf(stderr, "%s\n", e.describe().c_str());
                      return false;
                  }
                  return true;
              };
              if (!expect_denied(dialer, "sockets[0]: connect " + path + ": Permission denied")) {
                  return 11;
              }
              if (!expect_denied(binder,
                                 "sockets[0]: bind " + *binder.bind + ": Permission denied")) {
                  return 12;
              }
              return 0;
          }) == 0);
    CHECK(::access(binder.bind->c_str(), F_OK) != 0);

    // Root may: the same request is refused for nobody's rights, not for its path.
    auto c = connect(d);
    auto granted = c.socket(Netns::pid(::getpid()), dialer);
    CHECK_MESSAGE(granted, granted.error().describe());
}

TEST_CASE("a batch of 253 sockets in one reply, and batches of different specs") {
    DaemonAndNetns t("batch");
    SocketSpec udp = spec(AF_INET, SOCK_DGRAM, IPPROTO_UDP);
    udp.count = 253;
    auto many = t.sockets({udp});
    REQUIRE_MESSAGE(many, many.error().describe());
    REQUIRE(many->size() == 253);
    std::set<int> distinct;
    for (auto& s : *many) {
        CHECK(socket_netns_inode(s.fd()) == t.ns.inode());
        distinct.insert(s.fd());
    }
    CHECK(distinct.size() == 253);

    auto mixed =
        t.sockets({*parse_socket_spec("tcp-listen:127.0.0.1:0"),
                   *parse_socket_spec("netlink:route"), *parse_socket_spec("udp6:[::1]:0")});
    REQUIRE(mixed);
    REQUIRE(mixed->size() == 3);
    CHECK(socket_option((*mixed)[0].fd(), SO_ACCEPTCONN) == 1);
    CHECK(socket_option((*mixed)[1].fd(), SO_DOMAIN) == AF_NETLINK);
    CHECK(socket_option((*mixed)[2].fd(), SO_DOMAIN) == AF_INET6);

    // All or nothing: one bad spec fails the whole request, and says which.
    SocketSpec bad = spec(AF_INET, SOCK_STREAM);
    bad.bind = "192.0.2.1:1"; // not an address of this namespace
    auto failed = t.sockets({spec(AF_INET, SOCK_DGRAM), bad});
    REQUIRE_FALSE(failed);
    CHECK(failed.error().sys_errno == EADDRNOTAVAIL);
    CHECK(failed.error().message.starts_with("sockets[1]: "));
}

TEST_CASE("references by name, path, pid and fd reach the same namespace") {
    DaemonAndNetns t("refs");
    auto by_path = t.c.socket(Netns::path(t.ns.path()), spec(AF_INET, SOCK_DGRAM));
    REQUIRE(by_path);
    CHECK(socket_netns_inode(by_path->fd()) == t.ns.inode());

    UniqueFd nsfd{::open(t.ns.path().c_str(), O_RDONLY | O_CLOEXEC)};
    auto by_fd = t.c.socket(Netns::fd(nsfd.get()), spec(AF_INET, SOCK_DGRAM));
    REQUIRE_MESSAGE(by_fd, by_fd.error().describe());
    CHECK(socket_netns_inode(by_fd->fd()) == t.ns.inode());

    // A process living in the namespace.
    pid_t sleeper = ::fork();
    if (sleeper == 0) {
        int fd = ::open(t.ns.path().c_str(), O_RDONLY);
        ::setns(fd, CLONE_NEWNET);
        ::pause();
        ::_exit(0);
    }
    REQUIRE(wait_for([&] {
        return run("test $(stat -L -c %i /proc/" + std::to_string(sleeper) +
                   "/ns/net) = " + std::to_string(t.ns.inode())) == 0;
    }));
    auto by_pid = t.c.socket(Netns::pid(sleeper), spec(AF_INET, SOCK_DGRAM));
    ::kill(sleeper, SIGKILL);
    ::waitpid(sleeper, nullptr, 0);
    REQUIRE(by_pid);
    CHECK(socket_netns_inode(by_pid->fd()) == t.ns.inode());

    auto stats = t.c.stats();
    REQUIRE(stats);
    CHECK(stats->workers_spawned == 1);
}

TEST_CASE("two names for one namespace share one worker") {
    TestNetns ns("alias");
    std::string alias = unique_name("alias2");
    std::string alias_path = "/run/netns/" + alias;
    REQUIRE(run("touch " + alias_path + " && mount --bind " + ns.path() + " " + alias_path) == 0);
    struct Cleanup {
        std::string path;
        ~Cleanup() { run("umount " + path + " 2>/dev/null; rm -f " + path); }
    } cleanup{alias_path};

    Daemon d;
    auto c = connect(d);
    REQUIRE(c.socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM)));
    auto second = c.socket(Netns::name(alias), spec(AF_INET, SOCK_DGRAM));
    REQUIRE(second);
    CHECK(socket_netns_inode(second->fd()) == ns.inode());
    auto list = c.namespaces();
    REQUIRE(list);
    int entries = 0;
    for (const auto& n : list->namespaces) {
        if (n.ino == ns.inode()) {
            ++entries;
            CHECK(n.names ==
                  std::vector<std::string>{std::min(ns.name(), alias), std::max(ns.name(), alias)});
            CHECK(n.worker_pid > 0);
            CHECK(n.state == "ready");
            CHECK(n.requests == 2);
            CHECK(n.sockets == 2);
        }
    }
    CHECK(entries == 1);
    CHECK(c.stats()->workers_spawned == 1);
}

namespace {

// Namespaces enough, with names long enough, that their list takes several
// messages: by inode.
std::map<ino_t, std::unique_ptr<TestNetns>> many_namespaces(int count, const std::string& tag) {
    std::map<ino_t, std::unique_ptr<TestNetns>> made;
    for (int i = 0; i < count; ++i) {
        auto ns = std::make_unique<TestNetns>(tag);
        ino_t ino = ns->inode();
        REQUIRE(ino != 0);
        made.emplace(ino, std::move(ns));
    }
    return made;
}

// One `namespaces` request on a raw connection: the reply, and its size as
// the kernel delivered it, whatever the size.
std::pair<nlohmann::json, std::size_t> namespaces_raw(int fd, const nlohmann::json& request) {
    const std::string text = request.dump();
    REQUIRE(::send(fd, text.data(), text.size(), 0) == static_cast<ssize_t>(text.size()));
    std::string buffer(1024 * 1024, '\0');
    ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
    REQUIRE(n > 0);
    buffer.resize(static_cast<std::size_t>(n));
    return {nlohmann::json::parse(buffer), buffer.size()};
}

} // namespace

TEST_CASE("namespaces come in pages of one message each, and every one is listed once") {
    // 500 names of 200 bytes: about 150 KB of entries.
    auto ours = many_namespaces(500, "page-" + std::string(180, 'p'));
    Daemon d;

    // Page by page, as the daemon sends them.
    UniqueFd raw = connect_raw(d);
    std::map<std::uint64_t, int> listed;
    std::size_t pages = 0;
    std::size_t largest = 0;
    nlohmann::json request = {{"op", "namespaces"}};
    for (bool more = true; more && pages < 100;) {
        request["id"] = ++pages;
        auto [reply, size] = namespaces_raw(raw.get(), request);
        INFO(reply.dump().substr(0, 300));
        REQUIRE(reply["ok"] == true);
        CHECK(size <= proto::max_message_size);
        largest = std::max(largest, size);
        CHECK_FALSE(reply["namespaces"].empty());
        for (const auto& n : reply["namespaces"]) {
            ++listed[n["ino"].get<std::uint64_t>()];
        }
        more = reply.contains("next_cursor");
        if (more) {
            request["cursor"] = reply["next_cursor"];
        }
    }
    MESSAGE(pages << " pages, the largest " << largest << " bytes");
    CHECK(pages >= 3);
    for (const auto& [ino, count] : listed) {
        CAPTURE(ino);
        CHECK(count == 1);
    }
    for (const auto& [ino, ns] : ours) {
        CHECK(listed.count(ino) == 1);
    }

    // The library gathers the pages.
    auto c = connect(d);
    auto all = c.namespaces();
    REQUIRE(all);
    CHECK_FALSE(all->next_cursor);
    std::map<std::uint64_t, int> gathered;
    for (const auto& n : all->namespaces) {
        ++gathered[n.ino];
        if (auto it = ours.find(n.ino); it != ours.end()) {
            CHECK(n.names == std::vector<std::string>{it->second->name()});
        }
    }
    for (const auto& [ino, ns] : ours) {
        CHECK(gathered[ino] == 1);
    }

    // So does the command line, into one reply.
    int status = -1;
    auto out =
        run_output(built("NSBROKER_CLI") + " --broker " + d.socket_path() + " --json ns", &status);
    REQUIRE(status == 0);
    auto printed = nlohmann::json::parse(out);
    CHECK(printed["ok"] == true);
    CHECK_FALSE(printed.contains("next_cursor"));
    std::map<std::uint64_t, int> from_cli;
    for (const auto& n : printed["namespaces"]) {
        ++from_cli[n["ino"].get<std::uint64_t>()];
    }
    for (const auto& [ino, ns] : ours) {
        CHECK(from_cli[ino] == 1);
    }
    CHECK(out.size() > proto::max_message_size);
}

TEST_CASE("a namespace deleted between two pages makes no other one listed twice or missed") {
    auto ours = many_namespaces(120, "gone");
    Daemon d;
    auto c = connect(d);
    std::map<std::uint64_t, int> listed;
    std::optional<NamespacesCursor> cursor;
    ino_t gone_at_cursor = 0;
    ino_t gone_ahead = 0;
    std::unique_ptr<TestNetns> made_meanwhile;
    std::size_t pages = 0;
    do {
        auto page = c.namespaces_page(cursor, 20);
        REQUIRE_MESSAGE(page, page.error().describe());
        REQUIRE(page->namespaces.size() <= 20);
        ++pages;
        for (const auto& n : page->namespaces) {
            ++listed[n.ino];
        }
        cursor = page->next_cursor;
        // Between this page and the next: the namespace the cursor names is
        // deleted, so is one of ours not listed yet, and another is made.
        if (gone_at_cursor == 0 && cursor && ours.count(cursor->ino) != 0) {
            gone_at_cursor = cursor->ino;
            auto ahead = ours.upper_bound(gone_at_cursor);
            REQUIRE(ahead != ours.end());
            gone_ahead = ahead->first;
            ours.at(gone_at_cursor)->remove();
            ours.at(gone_ahead)->remove();
            made_meanwhile = std::make_unique<TestNetns>("made");
        }
    } while (cursor && pages < 100);
    REQUIRE(gone_at_cursor != 0);
    CHECK(pages >= 6);
    CHECK(listed[gone_at_cursor] == 1);
    CHECK(listed.count(gone_ahead) == 0);
    CHECK(listed.count(made_meanwhile->inode()) <= 1);
    for (const auto& [ino, ns] : ours) {
        if (ino != gone_at_cursor && ino != gone_ahead) {
            CAPTURE(ino);
            CHECK(listed[ino] == 1);
        }
    }
    for (const auto& [ino, count] : listed) {
        CAPTURE(ino);
        CHECK(count == 1);
    }
}

TEST_CASE("a worker killed mid-request fails that request; the next one gets a new worker") {
    for (const auto& mode : worker_modes) {
        CAPTURE(mode[1]);
        DaemonAndNetns t("kill", mode);
        pid_t worker = t.start_worker();
        REQUIRE(worker > 0);

        // Stopped, the worker holds the request; killed, it never answers.
        ::kill(worker, SIGSTOP);
        std::atomic<bool> done{false};
        Result<Socket> pending = make_error(ErrorCode::internal, "not run");
        std::thread caller([&] {
            pending = t.udp();
            done = true;
        });
        CHECK(wait_for([&] { return queued_to(worker) > 0; }));
        CHECK_FALSE(done.load());
        ::kill(worker, SIGKILL);
        caller.join();
        REQUIRE_FALSE(pending);
        CHECK(pending.error().code == ErrorCode::worker_failed);

        auto next = t.udp();
        REQUIRE_MESSAGE(next, next.error().describe());
        CHECK(socket_netns_inode(next->fd()) == t.ns.inode());
        pid_t replacement = t.worker();
        CHECK(replacement > 0);
        CHECK(replacement != worker);
        // The killed worker was reaped: no zombie is left behind.
        CHECK(wait_for([&] {
            return !process_alive(worker) && run("test -e /proc/" + std::to_string(worker)) != 0;
        }));
        CHECK(t.c.stats()->workers_exited == 1);
    }
}

TEST_CASE("16 threads x 1000 requests on one Client, every socket checked") {
    TestNetns a("threads-a");
    TestNetns b("threads-b");
    Daemon d;
    auto c = connect(d);
    constexpr int threads = 16;
    constexpr int per_thread = 1000;
    std::atomic<int> good{0};
    std::atomic<int> bad{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            const TestNetns& ns = (t % 2) ? a : b;
            int type = (t % 3) ? SOCK_DGRAM : SOCK_STREAM;
            for (int i = 0; i < per_thread; ++i) {
                auto s = c.socket(Netns::name(ns.name()), spec(AF_INET, type));
                if (s && socket_netns_inode(s->fd()) == ns.inode() &&
                    socket_option(s->fd(), SO_TYPE) == type) {
                    ++good;
                } else {
                    ++bad;
                }
            }
        });
    }
    for (auto& t : pool) {
        t.join();
    }
    CHECK(bad.load() == 0);
    CHECK(good.load() == threads * per_thread);
    // Workers report what their direct channels served within a second.
    CHECK(wait_for([&] {
        auto stats = c.stats();
        return stats && stats->sockets == threads * per_thread;
    }));
    CHECK(c.stats()->workers_spawned == 2);
}

TEST_CASE("ip netns delete makes its worker exit") {
    for (const auto& mode : worker_modes) {
        CAPTURE(mode[1]);
        DaemonAndNetns t("delete", mode);
        REQUIRE(t.udp());
        ino_t ino = t.ns.inode();
        pid_t worker = worker_of(t.c, ino);
        REQUIRE(worker > 0);
        t.ns.remove();
        CHECK(wait_for([&] { return !process_alive(worker); }));
        CHECK(wait_for([&] { return worker_of(t.c, ino) == 0; }));
        CHECK(t.c.stats()->workers_live == 0);
    }
}

TEST_CASE("an idle worker exits after its timeout, and comes back on demand") {
    DaemonAndNetns t("idle", {"--worker-idle-timeout", "1"});
    pid_t worker = t.start_worker();
    REQUIRE(worker > 0);
    CHECK(wait_for([&] { return !process_alive(worker); }, std::chrono::seconds(5)));
    // Gone is not yet reaped: the daemon counts the exit when it reaps.
    CHECK(wait_for([&] { return t.c.stats()->workers_exited == 1; }));
    REQUIRE(t.udp());
    CHECK(t.c.stats()->workers_spawned == 2);
}

TEST_CASE("hostile input gets clear errors and the daemon keeps serving, leaking nothing") {
    // t.c is the one observer connection that stays open throughout, so that
    // the counts before and after compare the same set of connections.
    DaemonAndNetns t("hostile");
    REQUIRE(t.udp());
    // The daemon closes its copy of a socket right after sending it; the
    // answer to a later request proves that has happened.
    REQUIRE(t.c.ping());
    int fds_before = t.d.fd_count();
    const std::string before = t.d.fd_list();
    INFO("descriptors before:\n" << before);

    {
        RawConnection raw(t.d);
        auto check_error = [](const nlohmann::json& reply, const char* code) {
            CAPTURE(reply.dump());
            CHECK(reply["ok"] == false);
            CHECK(reply["error"]["code"] == code);
            CHECK_FALSE(reply["error"]["message"].get<std::string>().empty());
        };
        check_error(raw.exchange("{not json"), "invalid_request");
        check_error(raw.exchange(R"({"id":1,"op":"teleport"})"), "unsupported");
        check_error(raw.exchange(R"({"id":2,"op":"socket","netns":{"name":5},"socket":{}})"),
                    "invalid_request");
        check_error(
            raw.exchange(
                R"({"id":3,"op":"socket","netns":{"name":"x"},"socket":{"family":[],"type":1}})"),
            "invalid_request");
        check_error(raw.exchange(std::string(65 * 1024, ' ')), "limit");
        check_error(raw.exchange(std::string(20000, '[')), "invalid_request");
        check_error(raw.exchange("\"just a string\""), "invalid_request");

        // A descriptor where none belongs is closed and refused.
        int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        auto r = raw.exchange(R"({"id":4,"op":"ping"})", {devnull});
        check_error(r, "invalid_request");
        CHECK(r["id"] == 4);
        // Two descriptors are refused too.
        r = raw.exchange(
            R"({"id":5,"op":"socket","netns":{"fd":0},"socket":{"family":"inet","type":"dgram"}})",
            {devnull, devnull});
        check_error(r, "invalid_request");
        // A descriptor that is no network namespace.
        r = raw.exchange(
            R"({"id":6,"op":"socket","netns":{"fd":0},"socket":{"family":"inet","type":"dgram"}})",
            {devnull});
        check_error(r, "not_a_netns");
        // Missing the descriptor it promised.
        r = raw.exchange(
            R"({"id":7,"op":"socket","netns":{"fd":0},"socket":{"family":"inet","type":"dgram"}})");
        check_error(r, "invalid_request");
        ::close(devnull);
        check_error(raw.exchange(R"({"id":8,"op":"socket","netns":{"path":"/etc/passwd"},
                                     "socket":{"family":"inet","type":"dgram"}})"),
                    "not_a_netns");
        check_error(raw.exchange(R"({"id":9,"op":"socket","netns":{"path":"/proc/self/ns/mnt"},
                                     "socket":{"family":"inet","type":"dgram"}})"),
                    "not_a_netns");
        check_error(raw.exchange(R"({"id":10,"op":"socket","netns":{"name":"nsbroker-absent"},
                                     "socket":{"family":"inet","type":"dgram"}})"),
                    "not_found");
        // The same connection still works.
        auto pong = raw.exchange(R"({"id":11,"op":"ping"})");
        CHECK(pong["ok"] == true);
        CHECK(pong["id"] == 11);
    }
    {
        // A client that sends and leaves without reading, with fds in flight.
        RawConnection rude(t.d);
        for (int i = 0; i < 20; ++i) {
            std::string req = R"({"id":)" + std::to_string(i) +
                              R"(,"op":"socket","netns":{"name":")" + t.ns.name() +
                              R"("},"socket":{"family":"inet","type":"dgram","count":50}})";
            REQUIRE(proto::send_message(rude.fd.get(), req) == proto::SendStatus::sent);
        }
    }
    CHECK(t.c.ping());
    // Once the rude connection is gone no new job can start; one more request
    // through the same worker (which answers in order) outlasts every earlier one.
    CHECK(wait_for([&] { return t.c.stats()->clients == 1; }));
    REQUIRE(t.udp());
    auto stats = t.c.stats();
    REQUIRE(stats);
    CHECK(stats->errors.at("invalid_request") >= 7);
    CHECK(stats->errors.at("not_a_netns") == 3);
    CHECK(t.d.running());
    // Every client fd and every socket in flight was closed.
    const std::string after = t.d.fd_list();
    INFO("descriptors after:\n" << after);
    CHECK(t.d.fd_count() == fds_before);
}

TEST_CASE("SIGTERM: the daemon answers what is in flight, stops its workers and exits 0") {
    DaemonAndNetns t("term");
    pid_t worker = t.start_worker();
    REQUIRE(worker > 0);
    std::string path = t.d.socket_path();
    CHECK(t.d.stop(SIGTERM) == 0);
    CHECK_FALSE(process_alive(worker));
    CHECK(run("test -e " + path) != 0);
    auto after = t.c.ping();
    REQUIRE_FALSE(after);
    CHECK(after.error().code == ErrorCode::io);
}

TEST_CASE("a second daemon refuses a socket that is in use") {
    Daemon d;
    int status = -1;
    run_output(built("NSBROKERD") + " --socket " + d.socket_path() + " 2>&1", &status);
    CHECK(status == 1);
    CHECK(connect(d).ping());
}

namespace {} // namespace

TEST_CASE("a worker keeps no descriptor of the daemon's and no privilege it does not need") {
    for (const auto& [mode, spares] : {std::pair{worker_modes[0], "1"},
                                       {worker_modes[1], "1"},
                                       {worker_modes[0], "0"},
                                       {worker_modes[1], "0"}}) {
        CAPTURE(mode[1]);
        CAPTURE(spares);
        std::vector<std::string> args = mode;
        args.insert(args.end(), {"--spare-workers", spares});
        DaemonAndNetns t("fds", args);
        // A few clients and sockets open in the daemon when the worker starts.
        auto other = connect(t.d);
        REQUIRE(other.ping());
        pid_t worker = t.start_worker();
        REQUIRE(worker > 0);
        REQUIRE(t.c.direct_channels() == 1);
        // The worker's end of the channel is sent to it along with the
        // reply that brings the Client its own: it may still be on its way.
        std::string fds;
        wait_for([&] {
            fds = run_output("ls /proc/" + std::to_string(worker) + "/fd | sort -n | tr '\\n' ' '");
            return fds == "0 1 2 3 4 5 ";
        });
        CHECK(fds == "0 1 2 3 4 5 ");
        // 0-2 as the daemon has them, 3 its channel, 4 the one file it reads,
        // 5 the direct channel of the test's Client.
        CHECK(run_output("readlink /proc/" + std::to_string(worker) + "/fd/5")
                  .starts_with("socket:"));
        CHECK(run_output("readlink /proc/" + std::to_string(worker) + "/fd/4") ==
              "/proc/sys/net/ipv4/ip_unprivileged_port_start\n");
        // Confined: filtered, no new privileges, three network capabilities
        // effective for root's job and CAP_SETUID and CAP_SETGID permitted
        // to take each caller's identity, empty bounding set.
        auto status =
            run_output("grep -E '^(Seccomp|NoNewPrivs|CapEff|CapPrm|CapBnd|CapAmb):' /proc/" +
                       std::to_string(worker) + "/status | tr -s '\\t' ' '");
        CHECK(status.find("Seccomp: 2\n") != std::string::npos);
        CHECK(status.find("NoNewPrivs: 1\n") != std::string::npos);
        CHECK(status.find("CapEff: 0000000000003400\n") != std::string::npos);
        CHECK(status.find("CapPrm: 00000000000034c0\n") != std::string::npos);
        CHECK(status.find("CapBnd: 0000000000000000\n") != std::string::npos);
        CHECK(status.find("CapAmb: 0000000000000000\n") != std::string::npos);
        // And it lives where it was sent.
        CHECK(run("test $(stat -L -c %i /proc/" + std::to_string(worker) +
                  "/ns/net) = " + std::to_string(t.ns.inode())) == 0);
    }
}

TEST_CASE("a spare worker waits with its channel alone, and each namespace gets one of its own") {
    for (const auto& mode : worker_modes) {
        CAPTURE(mode[1]);
        DaemonAndNetns t("spare", mode);
        TestNetns other("spare-other");
        // Forked as the daemon starts: nothing but its channel, and already
        // without a bounding set.
        pid_t spare = 0;
        std::string fds;
        CHECK(wait_for([&] {
            auto children = children_of(t.d.pid());
            spare = children.size() == 1 ? children[0] : 0;
            fds = spare ? run_output("ls /proc/" + std::to_string(spare) +
                                     "/fd | sort -n | tr '\n' ' '")
                        : "";
            return fds == "0 1 2 3 ";
        }));
        CHECK(fds == "0 1 2 3 ");
        CHECK(run_output("grep CapBnd /proc/" + std::to_string(spare) + "/status") ==
              "CapBnd:\t0000000000000000\n");
        // The first namespace gets the spare, the next a new one.
        CHECK(t.start_worker() == spare);
        auto in_other = t.c.socket(Netns::name(other.name()), spec(AF_INET, SOCK_DGRAM));
        REQUIRE(in_other);
        CHECK(socket_netns_inode(in_other->fd()) == other.inode());
        const pid_t second = worker_of(t.c, other.inode());
        CHECK(second != spare);
        CHECK(second > 0);
        // A spare killed is replaced by a fork on demand; nothing fails.
        CHECK(wait_for([&] { return children_of(t.d.pid()).size() == 3; }));
        for (pid_t child : children_of(t.d.pid())) {
            if (child != spare && child != second) {
                ::kill(child, SIGKILL);
            }
        }
        TestNetns third("spare-third");
        auto in_third = t.c.socket(Netns::name(third.name()), spec(AF_INET, SOCK_DGRAM));
        REQUIRE(in_third);
        CHECK(socket_netns_inode(in_third->fd()) == third.inode());
        CHECK(t.udp());
    }
}

TEST_CASE("SIGTERM with a request stuck at a worker answers it, then exits 0") {
    DaemonAndNetns t("stuck");
    pid_t worker = t.start_worker();
    REQUIRE(worker > 0);
    ::kill(worker, SIGSTOP);
    Result<Socket> pending = make_error(ErrorCode::internal, "not run");
    std::thread caller([&] { pending = t.udp(); });
    CHECK(wait_for([&] { return queued_to(worker) > 0; }));
    // The daemon waits for the worker, then kills it; the request fails cleanly.
    CHECK(t.d.stop(SIGTERM, std::chrono::seconds(20)) == 0);
    caller.join();
    REQUIRE_FALSE(pending);
    CHECK(pending.error().code == ErrorCode::worker_failed);
    CHECK(wait_for([&] { return !process_alive(worker); }));
}

TEST_CASE("limits: connections per uid, requests in flight, workers, and slow workers") {
    SUBCASE("a uid over its connection limit is refused with a limit error") {
        Daemon d({"--max-connections-per-uid", "2"});
        auto a = connect(d);
        // Once the daemon has seen the start-up probe go, a holds the only connection.
        REQUIRE(wait_for([&] { return a.stats()->clients == 1; }));
        auto b = connect(d);
        REQUIRE(a.ping());
        REQUIRE(b.ping());
        auto third = Client::connect(d.socket_path());
        REQUIRE(third);
        auto refused = third->ping();
        REQUIRE_FALSE(refused);
        CHECK(refused.error().code == ErrorCode::limit);
        CHECK(refused.error().message == "uid 0 has 2 connections, the most it may have");
        CHECK(a.ping());
    }
    SUBCASE("requests in flight on one connection") {
        DaemonAndNetns t("inflight", {"--max-requests-in-flight", "1"}, through_daemon);
        pid_t worker = t.start_worker();
        ::kill(worker, SIGSTOP);
        Result<Socket> first = make_error(ErrorCode::internal, "not run");
        std::thread holder([&] { first = t.udp(); });
        // The stopped worker holds the first request.
        CHECK(wait_for([&] { return queued_to(worker) > 0; }));
        auto second = t.udp();
        REQUIRE_FALSE(second);
        CHECK(second.error().code == ErrorCode::limit);
        ::kill(worker, SIGCONT);
        holder.join();
        CHECK(first);
    }
    SUBCASE("the least recently used idle worker makes room; busy ones do not") {
        TestNetns a("lru-a");
        TestNetns b("lru-b");
        Daemon d({"--max-workers", "1"});
        auto c = connect(d, through_daemon);
        REQUIRE(c.socket(Netns::name(a.name()), spec(AF_INET, SOCK_DGRAM)));
        pid_t first = worker_of(c, a.inode());
        REQUIRE(c.socket(Netns::name(b.name()), spec(AF_INET, SOCK_DGRAM)));
        CHECK(wait_for([&] { return !process_alive(first); }));
        pid_t busy = worker_of(c, b.inode());
        ::kill(busy, SIGSTOP);
        std::thread holder(
            [&] { (void)c.socket(Netns::name(b.name()), spec(AF_INET, SOCK_DGRAM)); });
        CHECK(wait_for([&] { return queued_to(busy) > 0; }));
        auto refused = c.socket(Netns::name(a.name()), spec(AF_INET, SOCK_DGRAM));
        REQUIRE_FALSE(refused);
        CHECK(refused.error().code == ErrorCode::limit);
        ::kill(busy, SIGCONT);
        holder.join();
    }
    SUBCASE("a worker that does not answer in time is killed; the next request is served") {
        DaemonAndNetns t("slow", {"--worker-timeout", "1"}, through_daemon);
        pid_t worker = t.start_worker();
        ::kill(worker, SIGSTOP);
        auto late = t.udp();
        REQUIRE_FALSE(late);
        CHECK(late.error().code == ErrorCode::worker_failed);
        CHECK(late.error().message == "worker did not answer within 1 s");
        CHECK(wait_for([&] { return !process_alive(worker); }));
        auto next = t.udp();
        REQUIRE_MESSAGE(next, next.error().describe());
        CHECK(socket_netns_inode(next->fd()) == t.ns.inode());
    }
}

TEST_CASE("a client that shuts down its sending side still gets its answers") {
    DaemonAndNetns t("half-closed");
    const std::string request =
        R"({"id": 5, "op": "socket", "netns": {"name": ")" + t.ns.name() +
        R"("}, "sockets": [{"family": "inet", "type": "dgram", "count": 3}]})";
    REQUIRE(proto::send_message(t.c.fd(), request) == proto::SendStatus::sent);
    REQUIRE(::shutdown(t.c.fd(), SHUT_WR) == 0);
    auto reply = proto::receive_message(t.c.fd());
    REQUIRE(reply.status == proto::ReceiveStatus::message);
    CHECK(reply.message.data.find("\"ok\":true") != std::string::npos);
    CHECK(reply.message.fds.size() == 3);
    // Then the daemon closes its end.
    CHECK(proto::receive_message(t.c.fd()).status == proto::ReceiveStatus::closed);
}
