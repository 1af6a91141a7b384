// Turning a failed system call into the SystemError of error.hpp. Private to
// nsbroker: the daemon and the library call the kernel, a user of the library
// only catches what they throw.
#pragma once

#include <string>

#include "nsbroker/error.hpp"

namespace nsbroker {

// Throws SystemError(errno, what); for use right after a failed call.
[[noreturn]] void throw_errno(const std::string& what);

} // namespace nsbroker
