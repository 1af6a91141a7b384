// User and group names in a policy's rules, as ids. nsbrokerd reads the
// system's account database; the worker executable, which holds no such
// database and may open no file, knows no names (accounts_none.cpp): the
// rules a direct channel carries name ids only (Policy::for_caller).
#pragma once

#include <sys/types.h>

#include <optional>

namespace nsbroker::daemon {

std::optional<uid_t> uid_named(const char* name);
std::optional<gid_t> gid_named(const char* name);

} // namespace nsbroker::daemon
