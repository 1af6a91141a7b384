// The worker executable's account names: none. A name in a channel's rules
// is refused as unknown; nsbrokerd never sends one (Policy::for_caller).
#include "policy/accounts.hpp"

namespace nsbroker::daemon {

std::optional<uid_t> uid_named(const char*) {
    return std::nullopt;
}

std::optional<gid_t> gid_named(const char*) {
    return std::nullopt;
}

} // namespace nsbroker::daemon
