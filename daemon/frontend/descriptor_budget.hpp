// Descriptors the daemon holds or has sent for callers other than root.
//
// A socket made for a client lives first in a worker, then in the daemon's
// queue for the connection, then in the client's receive queue until it
// reads it. In that queue the kernel charges it to the sender's user (the
// daemon's), and once that user has more descriptors in flight than a
// process's RLIMIT_NOFILE, every worker's sendmsg fails with ETOOMANYREFS.
// So what one caller may have outstanding is bounded per connection, per uid
// and for all callers but root together; a request that does not fit waits,
// unread, until the caller has read what it was sent.
//
// What a peer has not read is known from SIOCOUTQ on the daemon's end: the
// bytes of our messages still queued at the peer. The count of descriptors
// sent since it last read 0 is an upper bound of what it holds unread.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <map>
#include <set>

#include "nsbroker/unique_fd.hpp"

namespace nsbroker::daemon {

struct DescriptorLimits {
    std::size_t per_connection = 1024;
    std::size_t per_uid = 2048;
    std::size_t total = 0; // 0: a quarter of the daemon's RLIMIT_NOFILE
};

class DescriptorBudget {
  public:
    // One connection's share. Root's connections are exempt: nothing is
    // counted for them and they never wait.
    struct Account {
        uid_t uid = 0;
        BorrowedFd fd;          // the connection, for SIOCOUTQ
        std::size_t held = 0;   // asked of workers or queued in the daemon
        std::size_t unread = 0; // sent since the peer was last seen to have read all
        [[nodiscard]] bool exempt() const { return uid == 0; }
    };

    explicit DescriptorBudget(DescriptorLimits limits);

    [[nodiscard]] const DescriptorLimits& limits() const { return limits_; }

    // Everything held is released; unread descriptors stay charged (the peer
    // may still hold them) until forget().
    void close(Account& account);
    void forget(Account& account);

    // Charges n more descriptors to the account when they fit, looking again
    // at what peers have read if they do not at first.
    bool admit(Account& account, std::size_t n);
    // n of the descriptors held will not be sent (a request failed, a reply
    // was dropped).
    void release(Account& account, std::size_t n);
    // n held descriptors were sent to the peer.
    void sent(Account& account, std::size_t n);
    // Asks the kernel whether the peer read everything; true when that
    // released something.
    bool refresh(Account& account);
    // refresh() on every account with unread descriptors; true when any
    // released something.
    bool refresh_all();

    [[nodiscard]] std::size_t charged(uid_t uid) const;
    [[nodiscard]] std::size_t total_charged() const { return total_; }

    // Whether n more fit what account's connection and its uid may hold,
    // whatever other uids hold.
    [[nodiscard]] bool fits_own(const Account& account, std::size_t n) const;

  private:
    [[nodiscard]] bool fits(const Account& account, std::size_t n) const;
    void charge(Account& account, std::size_t n, bool add);

    DescriptorLimits limits_;
    std::map<uid_t, std::size_t> per_uid_;
    std::size_t total_ = 0;
    std::set<Account*> with_unread_;
};

} // namespace nsbroker::daemon
