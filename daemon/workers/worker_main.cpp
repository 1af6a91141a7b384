// Worker process: setns once, prove where it is, then serve jobs until the
// daemon closes the channel.
//
// Startup reply: a Reply to id 0, an empty SocketReply when the worker is in
// its namespace, or an Error saying why it is not. Then, for each WorkerJob, one
// Reply with the same id and the sockets' fds.
//
// The worker enforces the one part of the policy the daemon cannot judge:
// whether a port is below the namespace's net.ipv4.ip_unprivileged_port_start,
// a sysctl only a process inside the namespace can read.
#include "workers/worker_main.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <spdlog/spdlog.h>

#include "nsbroker/address.hpp"
#include "nsbroker/codec.hpp"
#include "nsbroker/fd_passing.hpp"
#include "nsbroker/worker_protocol.hpp"
#include "sys/netns.hpp"
#include "workers/socket_factory.hpp"
#include "workers/worker_sandbox.hpp"

namespace nsbroker::daemon {

bool place_worker_fds(int channel, int netns) noexcept {
    // Lift both above the target slots first, so that dup2 cannot clobber one
    // with the other.
    int high_channel = ::fcntl(channel, F_DUPFD, 10);
    int high_netns = ::fcntl(netns, F_DUPFD, 10);
    if (high_channel < 0 || high_netns < 0) {
        return false;
    }
    if (::dup2(high_channel, worker_channel_fd) < 0 || ::dup2(high_netns, worker_netns_fd) < 0) {
        return false;
    }
    // dup2 leaves both without close-on-exec, so that an exec'd worker image
    // inherits exactly these two.
    return ::close_range(worker_netns_fd + 1, ~0U, 0) == 0;
}

namespace {

void send_reply(int channel, const proto::Reply& reply, const std::vector<UniqueFd>& fds = {}) {
    auto raw = proto::raw_fds(fds);
    proto::send_message(channel, proto::encode_reply(reply), raw);
}

// The namespace's first unprivileged port, read afresh for each check from a
// file opened once inside the namespace (the filter forbids opening files).
class PortFloor {
  public:
    Result<void> open() {
        fd_.reset(::open("/proc/sys/net/ipv4/ip_unprivileged_port_start", O_RDONLY | O_CLOEXEC));
        if (!fd_) {
            return kernel_error("ip_unprivileged_port_start");
        }
        return {};
    }

    [[nodiscard]] int read() const {
        char text[16];
        ssize_t n = ::pread(fd_.get(), text, sizeof text, 0);
        int value = 0;
        if (n <= 0 || std::from_chars(text, text + n, value).ec != std::errc{}) {
            return 1024; // the kernel's default, should the file fail us
        }
        return value;
    }

  private:
    UniqueFd fd_;
};

// Refuses a bind below the namespace's first unprivileged port when the
// caller's rule does not grant low_ports. Without CAP_NET_BIND_SERVICE the
// kernel would refuse it too; this says why.
Result<void> check_low_ports(const proto::WorkerJob& job, const PortFloor& floor) {
    if (!job.restricted || job.restricted->grants_kind(proto::Grant::low_ports)) {
        return {};
    }
    for (std::size_t i = 0; i < job.specs.size(); ++i) {
        const auto& s = job.specs[i];
        auto port = s.bind ? proto::inet_port(s.family, *s.bind) : std::nullopt;
        if (!port || *port == 0) {
            continue;
        }
        if (int start = floor.read(); *port < start) {
            return make_error(ErrorCode::permission_denied,
                              "rule \"" + job.restricted->rule + "\": sockets[" +
                                  std::to_string(i) + "]: port " + std::to_string(*port) +
                                  " is below the namespace's ip_unprivileged_port_start (" +
                                  std::to_string(start) + ") and low_ports is not granted",
                              EACCES);
        }
    }
    return {};
}

// Who the worker is while it makes a job's sockets: the caller's identity,
// and for each step the capabilities its grants allow. Both change only when
// they differ from what is held, so a run of jobs for one caller costs no
// system call here.
class Credentials {
  public:
    Result<void> become(const proto::JobCaller& caller) {
        if (caller_ == caller) {
            return {};
        }
        caller_.reset();
        if (auto changed = become_caller(caller); !changed) {
            return changed;
        }
        caller_ = caller;
        held_ = WorkerCapabilities{false, false, false};
        return {};
    }

    Result<void> use(const WorkerCapabilities& wanted) {
        if (wanted == held_) {
            return {};
        }
        if (auto set = set_effective_capabilities(wanted); !set) {
            return set;
        }
        held_ = wanted;
        return {};
    }

  private:
    std::optional<proto::JobCaller> caller_; // unknown until the first job
    WorkerCapabilities held_;                // what become() and use() last left effective
};

// Joins the namespace on fd 4, checks the kernel agrees where we are, and
// gives up every privilege the rest of the worker's life does not need.
Result<void> enter_namespace(PortFloor& floor) {
    UniqueFd netns{worker_netns_fd};
    auto target = verify_netns(netns.get());
    if (!target) {
        return std::move(target).error();
    }
    if (::setns(netns.get(), CLONE_NEWNET) < 0) {
        return kernel_error("setns");
    }
    auto now = current_netns();
    if (!now) {
        return std::move(now).error();
    }
    if (*now != *target) {
        return make_error(ErrorCode::internal, "after setns the worker is not in its namespace");
    }
    netns.reset(); // so that the sysctl takes its place as fd 4
    if (auto opened = floor.open(); !opened) {
        return opened;
    }
    return confine_worker();
}

void reset_signals() {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGPIPE}) {
        ::signal(sig, SIG_DFL);
    }
    ::signal(SIGPIPE, SIG_IGN);
}

} // namespace

int run_worker() {
    reset_signals();
    // The daemon's end of the channel closes when it exits; this covers the
    // case where it is killed before it can close it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int channel = worker_channel_fd;
    try {
        PortFloor floor;
        Credentials credentials;
        const UseCapabilities use = [&credentials](const WorkerCapabilities& wanted) {
            return credentials.use(wanted);
        };
        if (auto entered = enter_namespace(floor); !entered) {
            send_reply(channel, proto::Reply{0, entered.error()});
            return 1;
        }
        send_reply(channel, proto::Reply{0, proto::SocketReply{}});
        for (;;) {
            auto received = proto::receive_message(channel);
            if (received.status == proto::ReceiveStatus::closed) {
                return 0;
            }
            if (received.status != proto::ReceiveStatus::message) {
                spdlog::error("worker {}: unreadable message from the daemon", ::getpid());
                return 1;
            }
            // The daemon never sends fds to a worker; any that arrive are
            // closed by the message's destructor.
            auto job = proto::decode_job(received.message.data);
            if (!job) {
                spdlog::error("worker {}: bad job: {}", ::getpid(), job.error().describe());
                return 1;
            }
            if (auto allowed = check_low_ports(*job, floor); !allowed) {
                send_reply(channel, proto::Reply{job->id, allowed.error()});
                continue;
            }
            if (auto became = credentials.become(job->caller); !became) {
                send_reply(channel, proto::Reply{job->id, became.error()});
                continue;
            }
            auto made = make_sockets(job->specs, job->restricted, use);
            if (!made) {
                send_reply(channel, proto::Reply{job->id, made.error()});
                continue;
            }
            send_reply(channel, proto::Reply{job->id, std::move(made->reply)}, made->fds);
        }
    } catch (const std::exception& e) {
        spdlog::error("worker {}: {}", ::getpid(), e.what());
        return 1;
    }
}

} // namespace nsbroker::daemon
