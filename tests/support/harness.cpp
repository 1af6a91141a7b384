// Namespaces, daemons and probes for the integration tests.
#include "harness.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace nsbroker::test {

int run(const std::string& command) {
    int status = std::system(command.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string run_output(const std::string& command, int* status) {
    std::string out;
    FILE* p = ::popen(command.c_str(), "r");
    if (p == nullptr) {
        if (status) {
            *status = -1;
        }
        return out;
    }
    char buffer[4096];
    std::size_t n;
    while ((n = std::fread(buffer, 1, sizeof(buffer), p)) > 0) {
        out.append(buffer, n);
    }
    int st = ::pclose(p);
    if (status) {
        *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    return out;
}

std::string unique_name(const std::string& tag) {
    static std::atomic<int> counter{0};
    return "nsbt-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" + tag;
}

std::string built(const char* variable) {
    const char* value = std::getenv(variable);
    if (value == nullptr || *value == '\0') {
        throw std::runtime_error(std::string(variable) +
                                 " is not set; run the tests with meson test");
    }
    return value;
}

namespace {

// Where built_for_everyone copies programs: a directory of its own, 0755.
class SharedCopies {
  public:
    ~SharedCopies() {
        if (!dir_.empty()) {
            std::error_code ec;
            std::filesystem::remove_all(dir_, ec);
        }
    }

    // A copy of the file at from, as dir/SUBDIR/NAME, once.
    std::string copy(const std::filesystem::path& from, const std::string& subdir) {
        std::lock_guard lock(mutex_);
        if (dir_.empty()) {
            char pattern[] = "/tmp/nsbroker-built-XXXXXX";
            if (::mkdtemp(pattern) == nullptr) {
                throw std::runtime_error("mkdtemp failed");
            }
            dir_ = pattern;
            std::filesystem::permissions(dir_, std::filesystem::perms(0755));
        }
        const auto into = dir_ / subdir;
        const auto to = into / from.filename();
        if (!std::filesystem::exists(to)) {
            std::filesystem::create_directories(into);
            std::filesystem::permissions(into, std::filesystem::perms(0755));
            std::filesystem::copy_file(std::filesystem::canonical(from), to);
            std::filesystem::permissions(to, std::filesystem::perms(0755));
        }
        return to;
    }

  private:
    std::mutex mutex_;
    std::filesystem::path dir_;
};

SharedCopies shared_copies;

} // namespace

std::string built_for_everyone(const char* variable) {
    const std::filesystem::path program = built(variable);
    const std::string dir = program.parent_path().filename();
    const std::string name = program.filename();
    const std::string copy = shared_copies.copy(program, dir);
    // What the program loads from beside itself, in the build's layout.
    if (name == "nsbrokerd") {
        shared_copies.copy(program.parent_path() / "nsbroker-worker", dir);
    } else if (name == "nsbroker") {
        shared_copies.copy(program.parent_path().parent_path() / "client-lib" / "libnsbroker.so.0",
                           "client-lib");
    }
    return copy;
}

proto::SocketSpec spec(int family, int type, int protocol) {
    proto::SocketSpec s;
    s.family = family;
    s.type = type;
    s.protocol = protocol;
    return s;
}

// ---- as_nobody -------------------------------------------------------------

namespace {

// Keeps CAP_NET_ADMIN alone, as a network agent running as a system user
// does.
bool keep_only_net_admin() {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
    data[0].permitted = data[0].effective = 1U << CAP_NET_ADMIN;
    return ::syscall(SYS_capset, &header, data) == 0;
}

} // namespace

int as_nobody(Nobody how, const std::function<int()>& body) {
    return as_user(65534, how, body);
}

int as_user(uid_t uid, Nobody how, const std::function<int()>& body) {
    return wait_for_child(start_as_user(uid, how, body));
}

int wait_for_child(pid_t child) {
    int status = 0;
    ::waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 200;
}

pid_t start_as_user(uid_t uid, Nobody how, const std::function<int()>& body) {
    pid_t child = ::fork();
    if (child == 0) {
        if (how == Nobody::net_admin && ::prctl(PR_SET_KEEPCAPS, 1) < 0) {
            ::_exit(103);
        }
        if (::setgroups(0, nullptr) < 0 || ::setresgid(uid, uid, uid) < 0 ||
            ::setresuid(uid, uid, uid) < 0) {
            ::_exit(101);
        }
        if (how == Nobody::net_admin && !keep_only_net_admin()) {
            ::_exit(104);
        }
        // Changing uid made the process undumpable, and its /proc files
        // root's; a user's own process is dumpable.
        if (::prctl(PR_SET_DUMPABLE, 1) < 0) {
            ::_exit(105);
        }
        if (how == Nobody::own_netns && ::unshare(CLONE_NEWUSER | CLONE_NEWNET) < 0) {
            ::_exit(102);
        }
        ::_exit(body());
    }
    return child;
}

// ---- PrivateBus ------------------------------------------------------------

namespace {

// Whether something listens on the unix socket at path, of type (a bus's
// SOCK_STREAM, nsbrokerd's SOCK_SEQPACKET).
bool can_connect(const std::string& path, int type = SOCK_SEQPACKET) {
    int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path.c_str());
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) == 0;
    ::close(fd);
    return ok;
}

} // namespace

PrivateBus::PrivateBus()
    : socket_(dir_.path() + "/system_bus_socket"), config_path_(dir_.path() + "/bus.conf"),
      log_path_(dir_.path() + "/dbus-daemon.log") {
    const std::string template_path = built("DBUS_BUS_CONFIG");
    std::ifstream in(template_path);
    std::stringstream text;
    text << in.rdbuf();
    std::string config = text.str();
    const auto socket_at = config.find("@SOCKET@");
    const auto policy_at = config.find("@POLICY@");
    if (socket_at == std::string::npos || policy_at == std::string::npos) {
        throw std::runtime_error(template_path + ": not a bus configuration template");
    }
    // The later one first, so that the earlier one's offset still holds.
    const std::string policy = built("DBUS_POLICY");
    if (policy_at > socket_at) {
        config.replace(policy_at, 8, policy).replace(socket_at, 8, socket_);
    } else {
        config.replace(socket_at, 8, socket_).replace(policy_at, 8, policy);
    }
    std::ofstream(config_path_) << config;
    start();
}

PrivateBus::~PrivateBus() {
    if (pid_ > 0) {
        ::kill(pid_, SIGTERM);
        ::waitpid(pid_, nullptr, 0);
    }
}

void PrivateBus::kill() {
    if (pid_ > 0) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        pid_ = -1;
    }
}

void PrivateBus::start() {
    kill();
    pid_ = ::fork();
    if (pid_ == 0) {
        // Appended to: a bus started again adds to the log of the one before.
        int out = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        ::dup2(out, 1);
        ::dup2(out, 2);
        ::close_range(3, ~0U, 0);
        std::string option = "--config-file=" + config_path_;
        ::execlp("dbus-daemon", "dbus-daemon", "--nofork", "--nopidfile", option.c_str(), nullptr);
        ::_exit(127);
    }
    // Connecting, not the file's existence: a killed bus leaves its socket
    // file behind.
    if (!wait_for([this] { return can_connect(socket_, SOCK_STREAM); })) {
        throw std::runtime_error("dbus-daemon did not start: " + run_output("cat " + log_path_));
    }
}

// ---- TestNetns -------------------------------------------------------------

TestNetns::TestNetns(const std::string& tag) : name_(unique_name(tag)) {
    if (run("ip netns add " + name_) != 0) {
        throw std::runtime_error("ip netns add " + name_ + " failed (are we root?)");
    }
    present_ = true;
    run("ip -n " + name_ + " link set lo up");
}

TestNetns::~TestNetns() {
    remove();
}

void TestNetns::remove() {
    if (present_) {
        run("ip netns delete " + name_ + " 2>/dev/null");
        present_ = false;
    }
}

ino_t TestNetns::inode() const {
    struct stat st {};
    if (::stat(path().c_str(), &st) < 0) {
        return 0;
    }
    return st.st_ino;
}

// ---- TempDir ---------------------------------------------------------------

TempDir::TempDir() {
    char pattern[] = "/tmp/nsbroker-test-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) {
        throw std::runtime_error("mkdtemp failed");
    }
    path_ = pattern;
    ::chmod(path_.c_str(), 0755);
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

// ---- Daemon ----------------------------------------------------------------

Daemon::Daemon(std::vector<std::string> extra_args, std::vector<std::string> env, RunAs run_as)
    : socket_(dir_.path() + "/nsbroker.sock"), policy_(dir_.path() + "/policy.json"),
      log_path_(dir_.path() + "/nsbrokerd.log") {
    std::string binary =
        run_as == RunAs::service ? built_for_everyone("NSBROKERD") : built("NSBROKERD");
    std::vector<std::string> args;
    if (run_as == RunAs::service) {
        if (::chown(dir_.path().c_str(), service_uid, service_uid) < 0) {
            throw std::runtime_error("chown " + dir_.path() + " failed");
        }
        const std::string caps = service_capabilities;
        args = {"/usr/bin/setpriv",
                "--reuid=" + std::to_string(service_uid),
                "--regid=" + std::to_string(service_uid),
                "--clear-groups",
                "--inh-caps=-all," + caps,
                "--ambient-caps=" + caps,
                "--bounding-set=-all," + caps};
    }
    for (const char* a : {binary.c_str(), "--socket", socket_.c_str(), "--policy", policy_.c_str(),
                          "--log-level", "debug"}) {
        args.emplace_back(a);
    }
    const bool bus = std::any_of(env.begin(), env.end(), [](const std::string& e) {
        return e.starts_with("DBUS_SYSTEM_BUS_ADDRESS=");
    });
    if (!bus) {
        args.emplace_back("--no-dbus");
    }
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    args_ = std::move(args);
    env_ = std::move(env);
    launch(true);
}

void Daemon::restart(int sig) {
    stop(sig);
    launch(false);
}

void Daemon::launch(bool new_log) {
    std::vector<std::string> args = args_;
    std::vector<std::string> env = env_;
    std::vector<char*> argv;
    for (auto& a : args) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    int log_fd = ::open(log_path_.c_str(),
                        O_WRONLY | O_CREAT | O_CLOEXEC | (new_log ? O_TRUNC : O_APPEND), 0644);
    pid_ = ::fork();
    if (pid_ == 0) {
        ::dup2(log_fd, 1);
        ::dup2(log_fd, 2);
        int devnull = ::open("/dev/null", O_RDONLY);
        ::dup2(devnull, 0);
        // The daemon starts with only stdio open, as it would under systemd.
        ::close_range(3, ~0U, 0);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        for (auto& e : env) {
            ::putenv(e.data());
        }
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    ::close(log_fd);
    if (!wait_for([this] { return can_connect(socket_) || !running(); })) {
        throw std::runtime_error("nsbrokerd did not start:\n" + log());
    }
    if (!running()) {
        throw std::runtime_error("nsbrokerd exited at start:\n" + log());
    }
}

Daemon::~Daemon() {
    if (pid_ > 0) {
        stop(SIGTERM);
    }
}

bool Daemon::running() const {
    if (pid_ <= 0) {
        return false;
    }
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           info.si_pid == 0;
}

int Daemon::fd_count() const {
    int n = 0;
    std::error_code ec;
    for ([[maybe_unused]] const auto& entry :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/fd", ec)) {
        ++n;
    }
    return n;
}

bool Daemon::write_policy(const std::string& json) const {
    auto verdicts = [this] {
        std::string text = log();
        std::size_t n = 0;
        for (auto at = text.find("SIGHUP: policy"); at != std::string::npos;
             at = text.find("SIGHUP: policy", at + 1)) {
            ++n;
        }
        return n;
    };
    const std::size_t before = verdicts();
    {
        std::ofstream out(policy_ + ".new");
        out << json;
    }
    std::filesystem::rename(policy_ + ".new", policy_);
    ::kill(pid_, SIGHUP);
    if (!wait_for([&] { return verdicts() > before; })) {
        return false;
    }
    std::string text = log();
    return text.find("refused", text.rfind("SIGHUP: policy")) == std::string::npos;
}

std::string Daemon::fd_list() const {
    std::string out;
    std::error_code ec;
    for (const auto& entry :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/fd", ec)) {
        out += entry.path().filename().string() + " -> " +
               std::filesystem::read_symlink(entry.path(), ec).string() + "\n";
    }
    return out;
}

int Daemon::stop(int sig, std::chrono::milliseconds timeout) {
    if (pid_ <= 0) {
        return -1;
    }
    ::kill(pid_, sig);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    for (;;) {
        pid_t r = ::waitpid(pid_, &status, WNOHANG);
        if (r == pid_) {
            break;
        }
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, &status, 0);
            pid_ = -1;
            return -1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
    if (WIFEXITED(status)) {
        return WEXITSTATUS(status);
    }
    return 128 + WTERMSIG(status);
}

std::string Daemon::log() const {
    std::ifstream in(log_path_);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// ---- probes ----------------------------------------------------------------

ino_t socket_netns_inode(int fd) {
    int nsfd = ::ioctl(fd, SIOCGSKNS);
    if (nsfd < 0) {
        return 0;
    }
    struct stat st {};
    ::fstat(nsfd, &st);
    ::close(nsfd);
    return st.st_ino;
}

int socket_option(int fd, int option) {
    int value = -1;
    socklen_t length = sizeof(value);
    if (::getsockopt(fd, SOL_SOCKET, option, &value, &length) < 0) {
        return -1;
    }
    return value;
}

std::size_t open_fd_count() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& entry :
         std::filesystem::directory_iterator("/proc/self/fd")) {
        ++n;
    }
    return n;
}

int in_child(const std::function<int()>& body) {
    pid_t child = ::fork();
    if (child == 0) {
        ::_exit(body());
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::vector<pid_t> children_of(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
    std::vector<pid_t> pids;
    for (pid_t child = 0; in >> child;) {
        pids.push_back(child);
    }
    return pids;
}

int ip_batch(const std::string& commands) {
    FILE* ip = ::popen("ip -batch - 2>/dev/null", "w");
    if (ip == nullptr) {
        return -1;
    }
    std::fwrite(commands.data(), 1, commands.size(), ip);
    return ::pclose(ip);
}

bool process_alive(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) {
        return false;
    }
    auto close = line.rfind(')');
    return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

long queued_to(pid_t pid) {
    std::string table = run_output("ss -x -a -p -H 2>/dev/null");
    long total = 0;
    std::size_t start = 0;
    const std::string mark = "pid=" + std::to_string(pid) + ",";
    while (start < table.size()) {
        std::size_t end = table.find('\n', start);
        std::string line = table.substr(start, end - start);
        start = end == std::string::npos ? table.size() : end + 1;
        if (line.find(mark) == std::string::npos) {
            continue;
        }
        char netid[16] = {};
        char state[16] = {};
        long recv_q = 0;
        if (std::sscanf(line.c_str(), "%15s %15s %ld", netid, state, &recv_q) == 3) {
            total += recv_q;
        }
    }
    return total;
}

bool wait_for(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
}

bool tcp_connect_here(const std::string& ip, int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(static_cast<std::uint16_t>(port));
    ::inet_pton(AF_INET, ip.c_str(), &sin.sin_addr);
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0;
    ::close(fd);
    return ok;
}

bool tcp_connect_from(const std::string& netns_path, const std::string& ip, int port) {
    pid_t child = ::fork();
    if (child == 0) {
        int ns = ::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
        if (ns < 0 || ::setns(ns, CLONE_NEWNET) < 0) {
            ::_exit(2);
        }
        ::_exit(tcp_connect_here(ip, port) ? 0 : 1);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// ---- netlink ---------------------------------------------------------------

int take_lo_down(int fd) {
    struct {
        nlmsghdr header;
        ifinfomsg link;
    } request{};
    request.header.nlmsg_len = sizeof request;
    request.header.nlmsg_type = RTM_NEWLINK;
    request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    request.header.nlmsg_seq = 1;
    request.link.ifi_family = AF_UNSPEC;
    request.link.ifi_index = static_cast<int>(::if_nametoindex("lo"));
    request.link.ifi_change = IFF_UP;
    if (::send(fd, &request, sizeof request, 0) != sizeof request) {
        return -1000;
    }
    struct {
        nlmsghdr header;
        nlmsgerr error;
    } answer{};
    if (::recv(fd, &answer, sizeof answer, 0) < static_cast<ssize_t>(sizeof answer) ||
        answer.header.nlmsg_type != NLMSG_ERROR) {
        return -1001;
    }
    return answer.error.error;
}

} // namespace nsbroker::test
