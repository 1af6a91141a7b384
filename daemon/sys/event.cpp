// sd-event helpers.
#include "sys/event.hpp"

#include "nsbroker/error.hpp"

namespace nsbroker::daemon {

void check_sd(int r, const char* what) {
    if (r < 0) {
        throw SystemError(-r, what);
    }
}

} // namespace nsbroker::daemon
