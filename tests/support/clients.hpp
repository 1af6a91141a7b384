// What the integration tests that talk to the daemon share: a Client that
// must connect, the worker serving a namespace, and a connection of the
// test's own for bytes the library would never send. Header-only: the
// harness library does not link libnsbroker.
#pragma once

#include <doctest/doctest.h>
#include <sys/socket.h>

#include <utility>

#include "nsbroker/address.hpp"
#include "nsbroker/client.hpp"
#include "support/harness.hpp"

namespace nsbroker::test {

inline Client connect(const Daemon& d, const ClientOptions& options = {}) {
    auto c = Client::connect(d.socket_path(), options);
    REQUIRE_MESSAGE(c, c.error().describe());
    return std::move(*c);
}

// The worker serving the namespace with this inode, or 0.
inline pid_t worker_of(Client& c, ino_t ino) {
    auto list = c.namespaces();
    REQUIRE(list);
    for (const auto& n : list->namespaces) {
        if (n.ino == ino) {
            return n.worker_pid;
        }
    }
    return 0;
}

// A connection to d that speaks the protocol's bytes.
inline UniqueFd connect_raw(const Daemon& d) {
    auto address = proto::parse_address(AF_UNIX, d.socket_path());
    REQUIRE(address);
    UniqueFd fd{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)};
    REQUIRE(::connect(fd.get(), address->get(), address->length) == 0);
    return fd;
}

} // namespace nsbroker::test
