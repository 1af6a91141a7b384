// Ownership of file descriptors, in the type. UniqueFd is the one owner of a
// descriptor: move-only, it closes it exactly once, by the destructor or
// reset(). BorrowedFd is a descriptor someone else owns, lent for a call or
// for the life of an object that the owner outlives: it never closes it.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <utility>

#include "nsbroker/export.hpp"

namespace nsbroker {

class BorrowedFd;

class UniqueFd {
  public:
    UniqueFd() noexcept = default;
    // Takes ownership of fd (which may be -1 for "none").
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
    UniqueFd& operator=(UniqueFd&& other) noexcept {
        if (this != &other) {
            reset(other.release());
        }
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() { reset(); }

    [[nodiscard]] int get() const noexcept { return fd_; }
    [[nodiscard]] bool valid() const noexcept { return fd_ >= 0; }
    explicit operator bool() const noexcept { return valid(); }
    // Lends the descriptor; this UniqueFd must outlive the loan.
    [[nodiscard]] BorrowedFd borrow() const noexcept;

    // Gives up ownership; the caller now owns the returned descriptor.
    [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }

    // Closes the current descriptor (if any) and owns fd instead.
    void reset(int fd = -1) noexcept {
        int old = std::exchange(fd_, fd);
        if (old >= 0) {
            ::close(old);
        }
    }

  private:
    int fd_ = -1;
};

class BorrowedFd {
  public:
    constexpr BorrowedFd() noexcept = default;
    // fd is owned elsewhere, and stays open for as long as this is used.
    constexpr explicit BorrowedFd(int fd) noexcept : fd_(fd) {}

    [[nodiscard]] constexpr int get() const noexcept { return fd_; }
    [[nodiscard]] constexpr bool valid() const noexcept { return fd_ >= 0; }
    constexpr explicit operator bool() const noexcept { return valid(); }

    // A descriptor of its own for the same open file, close-on-exec and never
    // one of 0, 1 or 2; empty (errno set) when the process has none left.
    [[nodiscard]] UniqueFd duplicate() const noexcept {
        return UniqueFd{valid() ? ::fcntl(fd_, F_DUPFD_CLOEXEC, 3) : -1};
    }

  private:
    int fd_ = -1;
};

inline BorrowedFd UniqueFd::borrow() const noexcept {
    return BorrowedFd{fd_};
}

} // namespace nsbroker
