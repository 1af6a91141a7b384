// Naming a network namespace: the kinds of reference by the words the
// protocol uses for them, and the one text spelling of a reference that the
// command line, the library and D-Bus read.
#pragma once

#include <cstddef>
#include <string_view>

#include "nsbroker/error.hpp"
#include "nsbroker/name_table.hpp"
#include "nsbroker/protocol.hpp"

namespace nsbroker::proto {

// The key of each kind in a request's "netns" object, which is also the
// word NetnsRef::describe() and the text spelling "pid:N" begin with.
inline constexpr auto netns_kind_names = name_table<NetnsRef::Kind>({
    {"name", NetnsRef::Kind::name},
    {"path", NetnsRef::Kind::path},
    {"pid", NetnsRef::Kind::pid},
    {"fd", NetnsRef::Kind::fd},
});

// PATH_MAX: the longest path a reference gives.
inline constexpr std::size_t max_netns_path_length = 4096;

// A path the daemon may be given: absolute, at most 4096 bytes, no NUL.
Result<void> check_netns_path(std::string_view path);

// A reference as text:
//   pid:N  the namespace process N is in, N from 1 to pid_max_limit
//   PATH   anything with a '/': an nsfs file. A relative path comes back as
//          it is, for the caller to resolve against its own directory.
//   NAME   anything else: /run/netns/NAME, as check_netns_name allows
Result<NetnsRef> parse_netns_reference(std::string_view text);

} // namespace nsbroker::proto
