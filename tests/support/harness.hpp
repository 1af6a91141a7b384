// What the integration tests share: real network namespaces made with ip(8),
// the built nsbrokerd started on a private socket, and small probes of
// where a socket lives. Everything made here is removed by destructors, also
// when a test fails.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "nsbroker/protocol.hpp"
#include "nsbroker/unique_fd.hpp"

namespace nsbroker::test {

// Runs a shell command; returns its exit status (or -1).
int run(const std::string& command);
// Runs a shell command and returns what it printed on stdout.
std::string run_output(const std::string& command, int* status = nullptr);

// A unique name for this test process ("nsbt-<pid>-<n>-<tag>").
std::string unique_name(const std::string& tag);

// `ip netns add` on construction, `ip netns delete` on destruction.
class TestNetns {
  public:
    explicit TestNetns(const std::string& tag = "ns");
    ~TestNetns();
    TestNetns(const TestNetns&) = delete;
    TestNetns& operator=(const TestNetns&) = delete;

    [[nodiscard]] const std::string& name() const { return name_; }
    [[nodiscard]] std::string path() const { return "/run/netns/" + name_; }
    [[nodiscard]] ino_t inode() const;
    // Deletes it now (the destructor then does nothing).
    void remove();

  private:
    std::string name_;
    bool present_ = false;
};

// A private directory under /tmp, removed with everything in it.
class TempDir {
  public:
    TempDir();
    ~TempDir();
    [[nodiscard]] const std::string& path() const { return path_; }

  private:
    std::string path_;
};

// How nsbrokerd runs: as root (scripts/start, D-Bus activation without
// systemd), or as nsbrokerd.service runs it: uid 64000, its own group, no
// other groups, and only the unit's capabilities, ambient, with the bounding
// set cut to them (made by setpriv).
enum class RunAs { root, service };
inline constexpr uid_t service_uid = 64000;
// setpriv's spelling of the unit's AmbientCapabilities=.
inline constexpr const char* service_capabilities =
    "+sys_admin,+net_admin,+net_raw,+net_bind_service,+setuid,+setgid";

// The built nsbrokerd ($NSBROKERD), on a socket in a private directory.
// env adds "NAME=VALUE" entries to its environment; it serves D-Bus only when
// they name a bus (DBUS_SYSTEM_BUS_ADDRESS), never the machine's own.
class Daemon {
  public:
    explicit Daemon(std::vector<std::string> extra_args = {}, std::vector<std::string> env = {},
                    RunAs run_as = RunAs::root);
    ~Daemon();
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    [[nodiscard]] const std::string& socket_path() const { return socket_; }
    // The daemon's own policy file: absent at start, so the built-in default
    // applies. write_policy replaces it and sends SIGHUP.
    [[nodiscard]] const std::string& policy_path() const { return policy_; }
    // Replaces the policy file, sends SIGHUP and waits for the daemon's
    // verdict: true when the new policy is in force.
    [[nodiscard]] bool write_policy(const std::string& json) const;
    [[nodiscard]] pid_t pid() const { return pid_; }
    [[nodiscard]] bool running() const;
    // Open descriptors of the daemon process itself.
    [[nodiscard]] int fd_count() const;
    // What each open descriptor points to, one per line, for failure messages.
    [[nodiscard]] std::string fd_list() const;
    // Sends sig and waits for the exit; returns the exit status, or -1 when it
    // did not exit in time (it is then killed), or 128+N for a signal.
    int stop(int sig = 15, std::chrono::milliseconds timeout = std::chrono::seconds(10));
    // Stops it with sig, as stop() does, and starts it again as it was
    // started, on the same socket and policy, once it serves; its log goes on.
    void restart(int sig = 9);
    [[nodiscard]] std::string log() const;

  private:
    // Starts the daemon and waits until it accepts connections.
    void launch(bool new_log);

    TempDir dir_;
    std::string socket_;
    std::string policy_;
    std::string log_path_;
    std::vector<std::string> args_;
    std::vector<std::string> env_;
    pid_t pid_ = -1;
};

// A dbus-daemon of the test's own, configured as a system bus by
// $DBUS_BUS_CONFIG (tests/dbus/system-bus.conf.in) with nsbrokerd's bus
// policy ($DBUS_POLICY), on a socket in a private directory. It can be
// killed and started again on the same socket, as a restarted system bus is.
class PrivateBus {
  public:
    // Starts it, and returns once it takes connections.
    PrivateBus();
    ~PrivateBus();
    PrivateBus(const PrivateBus&) = delete;
    PrivateBus& operator=(const PrivateBus&) = delete;

    [[nodiscard]] std::string address() const { return "unix:path=" + socket_; }
    // DBUS_SYSTEM_BUS_ADDRESS=..., for a Daemon's environment.
    [[nodiscard]] std::string env() const { return "DBUS_SYSTEM_BUS_ADDRESS=" + address(); }
    [[nodiscard]] pid_t pid() const { return pid_; }

    // kill -9, and waits for the exit. The socket file stays, as after a
    // crash: connecting to it is refused until the bus is started again.
    void kill();
    // Starts a new dbus-daemon on the same socket (killing the one running,
    // if any; the new one replaces a stale socket file), and returns once it
    // takes connections. Throws when it does not.
    void start();

  private:
    TempDir dir_;
    std::string socket_;
    std::string config_path_;
    std::string log_path_;
    pid_t pid_ = -1;
};

// Runs body in a forked child as uid/gid 65534 (nobody) with no
// supplementary groups: plainly, in a user and network namespace of its own
// (as unshare -Urn makes), or keeping CAP_NET_ADMIN alone, as a network agent
// running as a system user does. Returns what body returned, or a number
// above 100 when the child could not become that user.
enum class Nobody { plain, own_netns, net_admin };
int as_nobody(Nobody how, const std::function<int()>& body);
// The same as any uid other than root (its gid is the same number).
int as_user(uid_t uid, Nobody how, const std::function<int()>& body);
// The same, started and left running: its pid, for wait_for_child, which
// returns what as_user would have.
pid_t start_as_user(uid_t uid, Nobody how, const std::function<int()>& body);
int wait_for_child(pid_t child);

// A socket spec of family, type and protocol, nothing else set.
proto::SocketSpec spec(int family, int type, int protocol = 0);

// The inode of the network namespace a socket lives in (ioctl SIOCGSKNS).
ino_t socket_netns_inode(int fd);
// getsockopt SO_DOMAIN / SO_TYPE / SO_PROTOCOL.
int socket_option(int fd, int option);
// Whether a process exists (and is not a zombie).
bool process_alive(pid_t pid);
// The child processes of pid: for nsbrokerd, its workers and its spare.
std::vector<pid_t> children_of(pid_t pid);
// Runs `ip -batch -` on commands, one a line (many namespaces in one
// process); returns its exit status.
int ip_batch(const std::string& commands);
// Descriptors open in this process.
std::size_t open_fd_count();
// Exit status of body run in a forked child, or -1 when it did not exit.
int in_child(const std::function<int()>& body);
// Unread bytes queued to the unix sockets of process pid, as ss(8) sees
// them: a request waits there for a stopped worker.
long queued_to(pid_t pid);
// Waits until pred() holds, polling; false on timeout.
bool wait_for(const std::function<bool()>& pred,
              std::chrono::milliseconds timeout = std::chrono::seconds(10));
// In a forked child that joins netns_path: connects to a TCP address and
// returns true when the connection was accepted.
bool tcp_connect_from(const std::string& netns_path, const std::string& ip, int port);
// A connection attempt from the test's own namespace.
bool tcp_connect_here(const std::string& ip, int port);

// Asks rtnetlink to take lo down through a NETLINK_ROUTE socket; returns the
// kernel's answer: 0 or a negative errno.
int take_lo_down(int fd);

// Environment: path of a built program, from meson (fails the test if unset).
std::string built(const char* variable);
// The same program copied where any user may run it, for programs run as
// another user: a checkout under a directory only root may enter (/root,
// say) is out of their reach. The copy keeps the build's layout for what it
// loads from beside itself: nsbrokerd its nsbroker-worker, the command line
// its libnsbroker. Copied once per test process, removed at its exit.
std::string built_for_everyone(const char* variable);

} // namespace nsbroker::test
