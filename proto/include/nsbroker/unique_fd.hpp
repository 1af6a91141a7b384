// UniqueFd: the one owner of a file descriptor in nsbroker. Move-only; the
// descriptor is closed exactly once, by the destructor or reset().
#pragma once

#include <unistd.h>

#include <utility>

#include "nsbroker/export.hpp"

namespace nsbroker {

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

} // namespace nsbroker
