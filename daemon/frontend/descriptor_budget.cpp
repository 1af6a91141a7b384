// Per-connection, per-uid and total bounds on descriptors outstanding.
#include "frontend/descriptor_budget.hpp"

#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/resource.h>

#include <algorithm>

#include "nsbroker/protocol.hpp"

namespace nsbroker::daemon {

namespace {

// The smallest budget that still lets one request of the most sockets
// through, so that nothing waits for ever on an idle connection.
constexpr std::size_t at_least = proto::max_fds_per_message;

std::size_t default_total() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) < 0 || limit.rlim_cur == RLIM_INFINITY) {
        return 65536;
    }
    return std::max<std::size_t>(limit.rlim_cur / 4, at_least);
}

} // namespace

DescriptorBudget::DescriptorBudget(DescriptorLimits limits) : limits_(limits) {
    if (limits_.total == 0) {
        limits_.total = default_total();
    }
    limits_.total = std::max(limits_.total, at_least);
    limits_.per_uid = std::clamp(limits_.per_uid, at_least, limits_.total);
    limits_.per_connection = std::clamp(limits_.per_connection, at_least, limits_.per_uid);
}

void DescriptorBudget::close(Account& account) {
    release(account, account.held);
}

void DescriptorBudget::forget(Account& account) {
    close(account);
    charge(account, account.unread, false);
    account.unread = 0;
    with_unread_.erase(&account);
}

bool DescriptorBudget::fits_own(const Account& account, std::size_t n) const {
    auto it = per_uid_.find(account.uid);
    std::size_t uid_charged = it == per_uid_.end() ? 0 : it->second;
    return account.held + account.unread + n <= limits_.per_connection &&
           uid_charged + n <= limits_.per_uid;
}

bool DescriptorBudget::fits(const Account& account, std::size_t n) const {
    return fits_own(account, n) && total_ + n <= limits_.total;
}

bool DescriptorBudget::admit(Account& account, std::size_t n) {
    if (account.exempt()) {
        return true;
    }
    if (!fits(account, n)) {
        // Maybe the peers read what they were sent; only then, ask.
        if (!refresh(account) || !fits(account, n)) {
            refresh_all();
        }
        if (!fits(account, n)) {
            return false;
        }
    }
    account.held += n;
    charge(account, n, true);
    return true;
}

void DescriptorBudget::release(Account& account, std::size_t n) {
    if (account.exempt()) {
        return;
    }
    n = std::min(n, account.held);
    account.held -= n;
    charge(account, n, false);
}

void DescriptorBudget::sent(Account& account, std::size_t n) {
    if (account.exempt() || n == 0) {
        return;
    }
    n = std::min(n, account.held);
    account.held -= n;
    account.unread += n;
    with_unread_.insert(&account);
}

bool DescriptorBudget::refresh(Account& account) {
    if (account.exempt() || account.unread == 0) {
        return false;
    }
    int queued = 0;
    if (!account.fd || ::ioctl(account.fd.get(), SIOCOUTQ, &queued) < 0 || queued > 0) {
        return false;
    }
    charge(account, account.unread, false);
    account.unread = 0;
    with_unread_.erase(&account);
    return true;
}

bool DescriptorBudget::refresh_all() {
    bool released = false;
    // refresh() erases from the set: walk a copy.
    const std::set<Account*> accounts = with_unread_;
    for (Account* a : accounts) {
        released = refresh(*a) || released;
    }
    return released;
}

std::size_t DescriptorBudget::charged(uid_t uid) const {
    auto it = per_uid_.find(uid);
    return it == per_uid_.end() ? 0 : it->second;
}

void DescriptorBudget::charge(Account& account, std::size_t n, bool add) {
    if (account.exempt() || n == 0) {
        return;
    }
    auto& uid_total = per_uid_[account.uid];
    if (add) {
        uid_total += n;
        total_ += n;
        return;
    }
    uid_total -= std::min(uid_total, n);
    total_ -= std::min(total_, n);
    if (uid_total == 0) {
        per_uid_.erase(account.uid);
    }
}

} // namespace nsbroker::daemon
