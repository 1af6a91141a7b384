// The worker's privilege drop, in the order it must happen. Before setns
// (prepare_confinement; a spare worker does it before it waits):
//   1. bounding set cleared (needs CAP_SETPCAP, so before capset; skipped
//      when the daemon runs without it);
//   2. PR_SET_KEEPCAPS, so that taking a caller's uid never empties the
//      permitted set (it would when the worker runs as root for a root
//      caller and then as another uid for the next one);
//   3. ambient set cleared;
//   4. PR_SET_NO_NEW_PRIVS and PR_SET_DUMPABLE 0;
//   5. the entry filter: the worker's seccomp allowlist, and what joining
//      the namespace takes besides (dup2, fstatfs, the NS_GET_NSTYPE ioctl,
//      setns, openat for the namespace's sysctl, and seccomp for step 7).
// After setns and the check of where it is (confine_worker):
//   6. capabilities reduced to CAP_NET_RAW,
//      CAP_NET_BIND_SERVICE and CAP_NET_ADMIN (raw and packet sockets,
//      low ports, bindtodevice/mark/transparent/net_admin) and CAP_SETUID
//      and CAP_SETGID (each job's sockets are made as its caller);
//   7. the settle filter, which refuses those extras: the two together
//      allow exactly the allowlist, and anything else fails with EPERM.
//      Identity changes may touch effective ids only, never the real or
//      saved ones.
// The kernel takes about as long to check and compile the allowlist as a
// fork per socket takes; loading it before the namespace is known keeps
// that off a first request, and the settle filter is a few instructions.
// The daemon compiles both once (WorkerFilter); the worker loads them with
// seccomp(2), as libseccomp's seccomp_load would.
// The worker keeps the daemon's real uid; without the allowlist, that uid
// could still open the daemon's files, so the filter is what closes files,
// exec, setns and namespace creation.
#include "workers/worker_sandbox.hpp"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/nsfs.h>
#include <linux/seccomp.h>
#include <linux/sockios.h>
#include <seccomp.h>
#include <sys/capability.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <vector>

namespace nsbroker::daemon {

namespace {

bool has_effective(cap_value_t cap) {
    std::unique_ptr<std::remove_pointer_t<cap_t>, int (*)(void*)> caps(cap_get_proc(), cap_free);
    cap_flag_value_t value = CAP_CLEAR;
    return caps && cap_get_flag(caps.get(), cap, CAP_EFFECTIVE, &value) == 0 && value == CAP_SET;
}

// What joining a namespace takes beyond the allowlist: the entry filter
// allows these, and the settle filter refuses them again. The ioctl is the
// one request the allowlist's other ioctls do not cover.
constexpr int entry_calls[] = {SCMP_SYS(dup2), SCMP_SYS(fstatfs), SCMP_SYS(setns), SCMP_SYS(openat),
                               SCMP_SYS(seccomp)};
constexpr scmp_datum_t entry_ioctl = NS_GET_NSTYPE;

// The settle filter: everything but the entry filter's extras.
Result<void> write_settle_filter(int fd) {
    std::unique_ptr<void, void (*)(scmp_filter_ctx)> filter(seccomp_init(SCMP_ACT_ALLOW),
                                                            seccomp_release);
    if (!filter) {
        return kernel_error("seccomp_init", ENOMEM);
    }
    for (int call : entry_calls) {
        if (int r = seccomp_rule_add(filter.get(), SCMP_ACT_ERRNO(EPERM), call, 0); r < 0) {
            return kernel_error("seccomp_rule_add", -r);
        }
    }
    const scmp_arg_cmp second_argument{1, SCMP_CMP_EQ, entry_ioctl, 0};
    if (int r = seccomp_rule_add_array(filter.get(), SCMP_ACT_ERRNO(EPERM), SCMP_SYS(ioctl), 1,
                                       &second_argument);
        r < 0) {
        return kernel_error("seccomp_rule_add(ioctl)", -r);
    }
    if (int r = seccomp_export_bpf(filter.get(), fd); r < 0) {
        return kernel_error("seccomp_export_bpf", -r);
    }
    return {};
}

// The entry filter: the system calls a worker makes (its channels, making
// and configuring sockets, naming interfaces, reading the sysctl it opened
// before, lowering and raising its effective capabilities, never beyond the
// permitted five, taking a caller's effective ids, memory, logging, and
// exit), and those of joining its namespace.
Result<void> write_entry_filter(int fd) {
    std::unique_ptr<void, void (*)(scmp_filter_ctx)> filter(seccomp_init(SCMP_ACT_ERRNO(EPERM)),
                                                            seccomp_release);
    if (!filter) {
        return kernel_error("seccomp_init", ENOMEM);
    }
    const int allowed[] = {
        SCMP_SYS(recvmsg),       SCMP_SYS(sendmsg),
        SCMP_SYS(socket),        SCMP_SYS(setsockopt),
        SCMP_SYS(getsockopt),    SCMP_SYS(bind),
        SCMP_SYS(listen),        SCMP_SYS(connect),
        SCMP_SYS(getsockname),   SCMP_SYS(shutdown),
        SCMP_SYS(fcntl),         SCMP_SYS(close),
        SCMP_SYS(write),         SCMP_SYS(writev),
        SCMP_SYS(fstat),         SCMP_SYS(newfstatat),
        SCMP_SYS(brk),           SCMP_SYS(mmap),
        SCMP_SYS(munmap),        SCMP_SYS(mremap),
        SCMP_SYS(madvise),       SCMP_SYS(mprotect),
        SCMP_SYS(futex),         SCMP_SYS(getpid),
        SCMP_SYS(gettid),        SCMP_SYS(getppid),
        SCMP_SYS(clock_gettime), SCMP_SYS(gettimeofday),
        SCMP_SYS(rt_sigreturn),  SCMP_SYS(rt_sigprocmask),
        SCMP_SYS(sched_yield),   SCMP_SYS(restart_syscall),
        SCMP_SYS(exit),          SCMP_SYS(exit_group),
        SCMP_SYS(getrandom),     SCMP_SYS(pread64),
        SCMP_SYS(capset),        SCMP_SYS(poll),
        SCMP_SYS(ppoll),
    };
    std::vector<int> calls(std::begin(allowed), std::end(allowed));
    calls.insert(calls.end(), std::begin(entry_calls), std::end(entry_calls));
#if defined(__SANITIZE_ADDRESS__)
    // AddressSanitizer asks for the signal stack whenever an exception is
    // thrown (a worker throws on a malformed request from a direct channel).
    calls.push_back(SCMP_SYS(sigaltstack));
#endif
    for (int call : calls) {
        if (int r = seccomp_rule_add(filter.get(), SCMP_ACT_ALLOW, call, 0); r < 0) {
            return kernel_error("seccomp_rule_add", -r);
        }
    }
    // ioctl only to turn interface names into indexes and back, and to see
    // whether a direct channel's caller has read its replies.
    for (scmp_datum_t request : {scmp_datum_t{SIOCGIFINDEX}, scmp_datum_t{SIOCGIFNAME},
                                 scmp_datum_t{SIOCOUTQ}, entry_ioctl}) {
        const scmp_arg_cmp second_argument{1, SCMP_CMP_EQ, request, 0};
        if (int r = seccomp_rule_add_array(filter.get(), SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
                                           &second_argument);
            r < 0) {
            return kernel_error("seccomp_rule_add(ioctl)", -r);
        }
    }
    // setresuid(-1, euid, -1) and setresgid(-1, egid, -1) only: the real and
    // saved ids, which decide who may signal the worker, stay the daemon's.
    const scmp_datum_t unchanged = static_cast<std::uint32_t>(-1);
    for (int call : {SCMP_SYS(setresuid), SCMP_SYS(setresgid)}) {
        const scmp_arg_cmp keep_ids[] = {
            {0, SCMP_CMP_MASKED_EQ, 0xffffffffU, unchanged},
            {2, SCMP_CMP_MASKED_EQ, 0xffffffffU, unchanged},
        };
        if (int r = seccomp_rule_add_array(filter.get(), SCMP_ACT_ALLOW, call, 2, keep_ids);
            r < 0) {
            return kernel_error("seccomp_rule_add(setresuid)", -r);
        }
    }
    if (int r = seccomp_rule_add(filter.get(), SCMP_ACT_ALLOW, SCMP_SYS(setgroups), 0); r < 0) {
        return kernel_error("seccomp_rule_add(setgroups)", -r);
    }
    if (int r = seccomp_export_bpf(filter.get(), fd); r < 0) {
        return kernel_error("seccomp_export_bpf", -r);
    }
    return {};
}

// The memfd WorkerFilter::compile writes: a first record whose k is the
// length of the entry program, then the entry program, then the settle
// program. Longer than this it is not one compile() made (the kernel's own
// limit is BPF_MAXINSNS, 4096 instructions a program).
constexpr std::size_t max_filter_bytes = (1 + 2 * 4096) * sizeof(sock_filter);

Result<void> write_programs(int fd) {
    const sock_filter placeholder{};
    if (::write(fd, &placeholder, sizeof(placeholder)) != sizeof(placeholder)) {
        return kernel_error("write(filter)");
    }
    if (auto written = write_entry_filter(fd); !written) {
        return written;
    }
    off_t end = ::lseek(fd, 0, SEEK_END);
    if (end < 0) {
        return kernel_error("lseek(filter)");
    }
    const sock_filter header{
        0, 0, 0,
        static_cast<std::uint32_t>(static_cast<std::size_t>(end) / sizeof(sock_filter) - 1)};
    if (::pwrite(fd, &header, sizeof(header), 0) != sizeof(header)) {
        return kernel_error("pwrite(filter)");
    }
    return write_settle_filter(fd);
}

// The two programs in a memfd that compile() made, checked to be sealed.
Result<std::pair<std::vector<sock_filter>, std::vector<sock_filter>>>
read_programs(BorrowedFd sealed) {
    // Only a program no one can change is worth loading in every worker.
    constexpr int all_seals = F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL;
    int seals = ::fcntl(sealed.get(), F_GET_SEALS);
    if (seals < 0) {
        return kernel_error("F_GET_SEALS");
    }
    if ((seals & all_seals) != all_seals) {
        return make_error(ErrorCode::internal, "the worker's filter is not sealed");
    }
    struct stat st {};
    if (::fstat(sealed.get(), &st) < 0) {
        return kernel_error("fstat(filter)");
    }
    auto size = static_cast<std::size_t>(st.st_size);
    if (size == 0 || size > max_filter_bytes || size % sizeof(sock_filter) != 0) {
        return make_error(ErrorCode::internal, "the worker's filter has a bad size");
    }
    std::vector<sock_filter> records(size / sizeof(sock_filter));
    ssize_t n = ::pread(sealed.get(), records.data(), size, 0);
    if (n < 0) {
        return kernel_error("pread(filter)");
    }
    if (static_cast<std::size_t>(n) != size) {
        return make_error(ErrorCode::internal, "the worker's filter was cut short");
    }
    const std::size_t entry = records.front().k;
    if (entry == 0 || 1 + entry >= records.size()) {
        return make_error(ErrorCode::internal, "the worker's filter has a bad layout");
    }
    const auto settle_begin = records.begin() + static_cast<std::ptrdiff_t>(1 + entry);
    return std::pair{std::vector<sock_filter>(records.begin() + 1, settle_begin),
                     std::vector<sock_filter>(settle_begin, records.end())};
}

} // namespace

Result<WorkerFilter> WorkerFilter::compile() {
    UniqueFd memfd{::memfd_create("nsbroker-worker-filter", MFD_CLOEXEC | MFD_ALLOW_SEALING)};
    if (!memfd) {
        return kernel_error("memfd_create");
    }
    if (auto written = write_programs(memfd.get()); !written) {
        return std::move(written).error();
    }
    if (::fcntl(memfd.get(), F_ADD_SEALS,
                F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0) {
        return kernel_error("F_ADD_SEALS");
    }
    auto programs = read_programs(memfd.borrow());
    if (!programs) {
        return std::move(programs).error();
    }
    WorkerFilter filter;
    filter.sealed_ = std::move(memfd);
    filter.entry_ = std::move(programs->first);
    filter.settle_ = std::move(programs->second);
    return filter;
}

Result<WorkerFilter> WorkerFilter::read(UniqueFd sealed) {
    auto programs = read_programs(sealed.borrow());
    if (!programs) {
        return std::move(programs).error();
    }
    WorkerFilter filter;
    filter.entry_ = std::move(programs->first);
    filter.settle_ = std::move(programs->second);
    return filter;
}

namespace {

// What seccomp_load does with the program, without compiling it again: no
// flags, so no thread sync (a worker has one thread), no logging, no
// speculation exceptions.
Result<void> install_filter(const std::vector<sock_filter>& program) {
    sock_fprog prog{static_cast<unsigned short>(program.size()),
                    const_cast<sock_filter*>(program.data())};
    if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) {
        return kernel_error("seccomp(SECCOMP_SET_MODE_FILTER)", errno);
    }
    return {};
}

constexpr std::uint32_t bit(int cap) {
    return 1U << cap;
}

constexpr std::uint32_t permitted_set = bit(CAP_NET_RAW) | bit(CAP_NET_BIND_SERVICE) |
                                        bit(CAP_NET_ADMIN) | bit(CAP_SETUID) | bit(CAP_SETGID);

Result<void> capset_effective(std::uint32_t effective) {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
    data[0].permitted = permitted_set;
    data[0].effective = effective;
    if (::syscall(SYS_capset, &header, data) < 0) {
        return kernel_error("capset", errno);
    }
    return {};
}

} // namespace

// Present only in builds with LeakSanitizer.
extern "C" __attribute__((weak)) void __lsan_do_leak_check();

Result<void> prepare_confinement(const WorkerFilter& filter) {
    // Clearing the bounding set needs CAP_SETPCAP, which a hardened unit may
    // not give. Without it the set stays as the unit left it; it only limits
    // what execve(2) could grant, and the worker can no longer execve.
    if (has_effective(CAP_SETPCAP)) {
        for (cap_value_t cap = 0; cap <= CAP_LAST_CAP; ++cap) {
            if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) {
                return kernel_error("PR_CAPBSET_DROP", errno);
            }
        }
    }
    if (::prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) {
        return kernel_error("PR_SET_KEEPCAPS", errno);
    }
    if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) {
        return kernel_error("PR_CAP_AMBIENT_CLEAR_ALL", errno);
    }
    // A leak checker's end-of-process check needs /proc and clone(2), which
    // the filter forbids; in such a build, check now, and not again at exit.
    if (__lsan_do_leak_check != nullptr) {
        __lsan_do_leak_check();
    }
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        return kernel_error("PR_SET_NO_NEW_PRIVS", errno);
    }
    if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
        return kernel_error("PR_SET_DUMPABLE", errno);
    }
    return install_filter(filter.entry());
}

Result<void> confine_worker(const WorkerFilter& filter) {
    // The five kept, all effective until the first job sets its own.
    if (auto r = capset_effective(permitted_set); !r) {
        return r;
    }
    return install_filter(filter.settle());
}

Result<void> set_effective_capabilities(const WorkerCapabilities& caps) {
    return capset_effective((caps.net_raw ? bit(CAP_NET_RAW) : 0) |
                            (caps.net_bind_service ? bit(CAP_NET_BIND_SERVICE) : 0) |
                            (caps.net_admin ? bit(CAP_NET_ADMIN) : 0));
}

Result<void> become_caller(const proto::JobCaller& caller) {
    if (auto raised = capset_effective(bit(CAP_SETUID) | bit(CAP_SETGID)); !raised) {
        return raised;
    }
    // Raw system calls: the worker has one thread, and glibc's wrappers would
    // try to signal others. Groups and gid first, while CAP_SETGID is still
    // effective; a change of euid away from 0 empties the effective set.
    if (::syscall(SYS_setgroups, caller.groups.size(), caller.groups.data()) < 0) {
        return kernel_error("setgroups", errno);
    }
    if (::syscall(SYS_setresgid, -1, caller.gid, -1) < 0) {
        return kernel_error("setresgid", errno);
    }
    if (::syscall(SYS_setresuid, -1, caller.uid, -1) < 0) {
        return kernel_error("setresuid", errno);
    }
    return capset_effective(0);
}

} // namespace nsbroker::daemon
