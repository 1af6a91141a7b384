// nsbrokerd as systemd runs it: socket activation by systemd's own
// systemd-socket-activate, idle exit and reactivation, sd_notify messages on
// a NOTIFY_SOCKET the test binds, and structured lines on a journal socket.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "nsbroker/client.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using namespace nsbroker::test;

namespace {

// Puts fd at 3, inheritable, as systemd passes its first socket.
void place_at_3(int fd) {
    if (fd == 3) {
        ::fcntl(3, F_SETFD, 0);
    } else {
        ::dup2(fd, 3); // dup2 leaves the copy inheritable
    }
}

UniqueFd unix_socket(int type, const std::string& path, bool listening) {
    UniqueFd fd{::socket(AF_UNIX, type | SOCK_CLOEXEC, 0)};
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof address.sun_path, "%s", path.c_str());
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    if (listening) {
        REQUIRE(::listen(fd.get(), 16) == 0);
    }
    return fd;
}

// Plays systemd's part: keeps the listening socket, and hands it to
// systemd-socket-activate, which waits for a connection and then executes
// nsbrokerd with LISTEN_FDS. Returns the pid (nsbrokerd's, once it runs).
pid_t activate(int listener, const std::vector<std::string>& daemon_args,
               const std::string& log_path) {
    std::vector<std::string> args = {"systemd-socket-activate", "--seqpacket",
                                     "--fdname=nsbrokerd.socket", built("NSBROKERD")};
    args.insert(args.end(), daemon_args.begin(), daemon_args.end());
    pid_t child = ::fork();
    if (child == 0) {
        int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        ::dup2(log, 1);
        ::dup2(log, 2);
        place_at_3(listener);
        ::close_range(4, ~0U, 0);
        std::string pid = "LISTEN_PID=" + std::to_string(::getpid());
        ::putenv(pid.data());
        ::putenv(const_cast<char*>("LISTEN_FDS=1"));
        ::putenv(const_cast<char*>("LISTEN_FDNAMES=nsbrokerd.socket"));
        std::vector<char*> argv;
        for (auto& a : args) {
            argv.push_back(a.data());
        }
        argv.push_back(nullptr);
        ::execvp(argv[0], argv.data());
        ::_exit(127);
    }
    return child;
}

// The exit status of child once it exits within timeout, else -1.
int wait_exit(pid_t child, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    int status = -1;
    bool done = wait_for(
        [&] {
            int s = 0;
            if (::waitpid(child, &s, WNOHANG) == child) {
                status = WIFEXITED(s) ? WEXITSTATUS(s) : 128 + WTERMSIG(s);
                return true;
            }
            return false;
        },
        timeout);
    if (!done) {
        ::kill(child, SIGKILL);
        ::waitpid(child, nullptr, 0);
    }
    return status;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

bool any_contains(const std::vector<std::string>& messages, const std::string& what) {
    return std::any_of(messages.begin(), messages.end(),
                       [&](const std::string& m) { return m.find(what) != std::string::npos; });
}

// The datagrams that arrive on fd until each of wanted is in one of them, or
// timeout passes.
std::vector<std::string> datagrams_until(int fd, const std::vector<std::string>& wanted,
                                         std::chrono::milliseconds timeout) {
    std::vector<std::string> got;
    auto all_seen = [&] {
        return std::all_of(wanted.begin(), wanted.end(),
                           [&](const std::string& w) { return any_contains(got, w); });
    };
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!all_seen() && std::chrono::steady_clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 50) != 1) {
            continue;
        }
        char buffer[4096];
        ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n > 0) {
            got.emplace_back(buffer, static_cast<std::size_t>(n));
        }
    }
    return got;
}

} // namespace

TEST_CASE("socket activation: the CLI reaches the daemon, which exits when idle and comes back") {
    TempDir dir;
    const std::string path = dir.path() + "/nsbroker.sock";
    const std::string log = dir.path() + "/nsbrokerd.log";
    UniqueFd listener = unix_socket(SOCK_SEQPACKET, path, true);
    TestNetns ns("activated");
    const std::vector<std::string> args = {"--exit-idle-time", "1", "--no-dbus", "--policy",
                                           dir.path() + "/policy.json"};

    pid_t first = activate(listener.get(), args, log);
    int status = -1;
    auto out = run_output(built("NSBROKER_CLI") + " --broker " + path + " ping", &status);
    INFO(read_file(log));
    CHECK(status == 0);
    CHECK(out.find("pong from nsbrokerd") != std::string::npos);
    // A socket and its worker; the worker goes with the daemon.
    pid_t worker = 0;
    {
        auto c = Client::connect(path);
        REQUIRE(c);
        auto s = c->socket(Netns::name(ns.name()), spec(AF_INET, SOCK_DGRAM));
        REQUIRE(s);
        CHECK(socket_netns_inode(s->fd()) == ns.inode());
        auto list = c->namespaces();
        REQUIRE(list);
        for (const auto& n : list->namespaces) {
            if (n.ino == ns.inode()) {
                worker = n.worker_pid;
            }
        }
    }
    REQUIRE(worker > 0);
    // A client that stays connected, even doing nothing, keeps it running.
    {
        auto idle_client = Client::connect(path);
        REQUIRE(idle_client);
        REQUIRE(idle_client->ping());
        // Not a wait for an event: the time in which an idle daemon would
        // have exited (--exit-idle-time 1 s) passes twice and more.
        std::this_thread::sleep_for(std::chrono::milliseconds(2500));
        CHECK(process_alive(first));
        CHECK(idle_client->ping());
    }
    // No client, nothing in flight: it exits by itself, with status 0.
    CHECK(wait_exit(first) == 0);
    CHECK(read_file(log).find("idle for 1s: exiting") != std::string::npos);
    CHECK_FALSE(process_alive(worker));
    // The socket is systemd's: it stays, and a client that connects while no
    // daemon runs waits in its backlog for the next one.
    struct stat st {};
    CHECK(::stat(path.c_str(), &st) == 0);
    pid_t second = 0;
    {
        auto waiting = Client::connect(path);
        REQUIRE(waiting);
        second = activate(listener.get(), args, log);
        CHECK(waiting->ping());
    }
    CHECK(wait_exit(second) == 0);
}

TEST_CASE("socket activation refuses a socket that is not a listening SOCK_SEQPACKET one") {
    TempDir dir;
    const std::string path = dir.path() + "/stream.sock";
    const std::string log = dir.path() + "/nsbrokerd.log";
    UniqueFd listener = unix_socket(SOCK_STREAM, path, true);
    pid_t child = ::fork();
    if (child == 0) {
        int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        ::dup2(out, 2);
        place_at_3(listener.get());
        ::close_range(4, ~0U, 0);
        std::string pid = "LISTEN_PID=" + std::to_string(::getpid());
        ::putenv(pid.data());
        ::putenv(const_cast<char*>("LISTEN_FDS=1"));
        std::string daemon = built("NSBROKERD");
        ::execl(daemon.c_str(), "nsbrokerd", "--no-dbus", nullptr);
        ::_exit(127);
    }
    CHECK(wait_exit(child) == 1);
    CHECK(read_file(log).find("is not a listening AF_UNIX SOCK_SEQPACKET socket") !=
          std::string::npos);
}

TEST_CASE("sd_notify: READY=1, STATUS=, WATCHDOG=1, RELOADING=1 and STOPPING=1") {
    TempDir dir;
    const std::string path = dir.path() + "/notify.sock";
    UniqueFd notify = unix_socket(SOCK_DGRAM, path, false);
    Daemon d({}, {"NOTIFY_SOCKET=" + path, "WATCHDOG_USEC=200000"});

    auto start = datagrams_until(notify.get(), {"READY=1", "STATUS=", "WATCHDOG=1"},
                                 std::chrono::seconds(5));
    INFO(d.log());
    CHECK(any_contains(start, "READY=1"));
    CHECK(any_contains(start, "STATUS=0 clients, 0 workers, 0 requests, 0 sockets"));
    CHECK(any_contains(start, "WATCHDOG=1"));

    ::kill(d.pid(), SIGHUP);
    auto reload =
        datagrams_until(notify.get(), {"RELOADING=1", "READY=1"}, std::chrono::seconds(5));
    CHECK(any_contains(reload, "RELOADING=1"));
    CHECK(any_contains(reload, "READY=1"));

    CHECK(d.stop() == 0);
    auto stop = datagrams_until(notify.get(), {"STOPPING=1"}, std::chrono::seconds(2));
    CHECK(any_contains(stop, "STOPPING=1"));
}

TEST_CASE("on a journal stream the daemon logs to the journal, with fields") {
    // journald's socket is /run/systemd/journal/socket: the daemon runs in a
    // mount namespace with a /run of its own, where the test's receiver binds
    // that socket.
    TempDir dir;
    const std::string socket = dir.path() + "/nsbroker.sock";
    const std::string entries = dir.path() + "/journal";
    const std::string stderr_path = dir.path() + "/stderr";
    const std::string pidfile = dir.path() + "/pid";
    pid_t jail = ::fork();
    if (jail == 0) {
        if (::unshare(CLONE_NEWNS) < 0 ||
            ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0 ||
            ::mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") < 0 ||
            ::mkdir("/run/systemd", 0755) < 0 || ::mkdir("/run/systemd/journal", 0755) < 0) {
            ::_exit(101);
        }
        UniqueFd journal{::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        std::strcpy(address.sun_path, "/run/systemd/journal/socket");
        if (::bind(journal.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) < 0) {
            ::_exit(102);
        }
        int err = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        struct stat st {};
        ::fstat(err, &st);
        std::string stream =
            "JOURNAL_STREAM=" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
        pid_t daemon = ::fork();
        if (daemon == 0) {
            ::dup2(err, 1);
            ::dup2(err, 2);
            ::putenv(stream.data());
            std::string binary = built("NSBROKERD");
            std::string policy = dir.path() + "/policy.json";
            ::execl(binary.c_str(), "nsbrokerd", "--no-dbus", "--socket", socket.c_str(),
                    "--policy", policy.c_str(), nullptr);
            ::_exit(127);
        }
        std::ofstream(pidfile) << daemon;
        std::ofstream out(entries);
        for (;;) {
            pollfd p{journal.get(), POLLIN, 0};
            if (::poll(&p, 1, 50) == 1) {
                char buffer[8192];
                ssize_t n = ::recv(journal.get(), buffer, sizeof buffer, 0);
                if (n > 0) {
                    out.write(buffer, n);
                    out << "--\n";
                    out.flush();
                }
            } else if (::waitpid(daemon, nullptr, WNOHANG) == daemon) {
                ::_exit(0);
            }
        }
    }
    REQUIRE(wait_for([&] {
        auto c = Client::connect(socket);
        return c && c->ping();
    }));
    // uid 65534 asks for a socket in the namespace of a root process, this
    // test: refused, and logged.
    const pid_t root_process = ::getpid();
    pid_t child = ::fork();
    if (child == 0) {
        if (::setresgid(65534, 65534, 65534) < 0 || ::setresuid(65534, 65534, 65534) < 0) {
            ::_exit(101);
        }
        auto c = Client::connect(socket);
        if (!c) {
            std::fprintf(stderr, "%s\n", c.error().describe().c_str());
            ::_exit(102);
        }
        auto r = c->socket(Netns::pid(root_process), spec(AF_INET, SOCK_DGRAM));
        if (r || r.error().code != ErrorCode::permission_denied) {
            std::fprintf(stderr, "%s\n", r ? "served" : r.error().describe().c_str());
            ::_exit(103);
        }
        ::_exit(0);
    }
    CHECK(wait_exit(child) == 0);
    pid_t daemon = std::stoi(read_file(pidfile));
    ::kill(daemon, SIGTERM);
    CHECK(wait_exit(jail) == 0);

    auto journal = read_file(entries);
    INFO(journal);
    INFO(read_file(stderr_path));
    auto at = journal.find("MESSAGE=denied socket request");
    REQUIRE(at != std::string::npos);
    auto entry = journal.substr(journal.rfind("--\n", at) + 1);
    entry = entry.substr(0, entry.find("--\n", 3));
    CHECK(entry.find("PRIORITY=4\n") != std::string::npos);
    CHECK(entry.find("SYSLOG_IDENTIFIER=nsbrokerd\n") != std::string::npos);
    CHECK(entry.find("NSBROKER_UID=65534\n") != std::string::npos);
    CHECK(entry.find("NSBROKER_PID=") != std::string::npos);
    CHECK(entry.find("NSBROKER_NETNS=pid:" + std::to_string(root_process) + "\n") !=
          std::string::npos);
    CHECK(entry.find("NSBROKER_ERROR=permission_denied\n") != std::string::npos);
    CHECK(journal.find("MESSAGE=nsbrokerd stopped") != std::string::npos);
    // Nothing of it on the terminal.
    CHECK(read_file(stderr_path).find("denied socket request") == std::string::npos);
}

TEST_CASE("nsbrokerd serves as its unit runs it: a user of its own and six capabilities") {
    // What nsbrokerd.service gives it, made by setpriv: a uid that is not
    // root, CAP_SYS_ADMIN, the three network capabilities and CAP_SETUID and
    // CAP_SETGID ambient, the bounding set cut to them.
    TempDir dir;
    REQUIRE(::chown(dir.path().c_str(), service_uid, service_uid) == 0);
    TestNetns ns("unit-user");
    const std::string socket = dir.path() + "/nsbroker.sock";
    const std::string log = dir.path() + "/nsbrokerd.log";
    const std::string caps = service_capabilities;
    const std::string binary = built_for_everyone("NSBROKERD");
    pid_t daemon = ::fork();
    if (daemon == 0) {
        int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        ::dup2(out, 1);
        ::dup2(out, 2);
        ::close_range(3, ~0U, 0);
        std::string inh = "--inh-caps=-all," + caps;
        std::string ambient = "--ambient-caps=" + caps;
        std::string bounding = "--bounding-set=-all," + caps;
        std::string policy = dir.path() + "/policy.json";
        ::execlp("setpriv", "setpriv", "--reuid=64000", "--regid=64000", "--clear-groups",
                 inh.c_str(), ambient.c_str(), bounding.c_str(), binary.c_str(), "--no-dbus",
                 "--socket", socket.c_str(), "--policy", policy.c_str(), nullptr);
        ::_exit(127);
    }
    REQUIRE(wait_for([&] {
        auto c = Client::connect(socket);
        return c && c->ping();
    }));
    INFO(read_file(log));
    auto c = Client::connect(socket);
    REQUIRE(c);
    SocketSpec http = spec(AF_INET, SOCK_STREAM);
    http.bind = "127.0.0.1:80";
    http.listen = 16;
    auto made = c->sockets(Netns::name(ns.name()), {http, spec(AF_INET, SOCK_RAW, IPPROTO_ICMP)});
    REQUIRE_MESSAGE(made, made.error().describe());
    REQUIRE(made->size() == 2);
    CHECK(socket_netns_inode((*made)[0].fd()) == ns.inode());
    CHECK(socket_netns_inode((*made)[1].fd()) == ns.inode());
    ::kill(daemon, SIGTERM);
    CHECK(wait_exit(daemon) == 0);
}
