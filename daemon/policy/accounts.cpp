// Names in a policy's rules, looked up in the system's account database.
#include "policy/accounts.hpp"

#include <grp.h>
#include <pwd.h>

namespace nsbroker::daemon {

std::optional<uid_t> uid_named(const char* name) {
    const passwd* pw = ::getpwnam(name);
    return pw ? std::optional(pw->pw_uid) : std::nullopt;
}

std::optional<gid_t> gid_named(const char* name) {
    const group* gr = ::getgrnam(name);
    return gr ? std::optional(gr->gr_gid) : std::nullopt;
}

} // namespace nsbroker::daemon
