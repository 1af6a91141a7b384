// send_message / receive_message over real SOCK_SEQPACKET socket pairs.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nsbroker/fd_passing.hpp"

using namespace nsbroker;
using namespace nsbroker::proto;

namespace {

struct Pair {
    UniqueFd a, b;
    Pair() {
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
        a.reset(sv[0]);
        b.reset(sv[1]);
    }
};

std::vector<UniqueFd> pipes(std::size_t n) {
    std::vector<UniqueFd> fds;
    for (std::size_t i = 0; i < n; ++i) {
        int p[2];
        REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
        fds.emplace_back(p[0]);
        ::close(p[1]);
    }
    return fds;
}

ino_t inode(int fd) {
    struct stat st {};
    ::fstat(fd, &st);
    return st.st_ino;
}

} // namespace

TEST_CASE("a message with 253 descriptors arrives whole, close-on-exec, in order") {
    Pair p;
    auto fds = pipes(max_fds_per_message);
    REQUIRE(send_message(p.a.get(), "hello", raw_fds(fds)) == SendStatus::sent);
    auto r = receive_message(p.b.get());
    REQUIRE(r.status == ReceiveStatus::message);
    CHECK(r.message.data == "hello");
    REQUIRE(r.message.fds.size() == max_fds_per_message);
    for (std::size_t i = 0; i < fds.size(); ++i) {
        CHECK(inode(r.message.fds[i].get()) == inode(fds[i].get()));
        CHECK((::fcntl(r.message.fds[i].get(), F_GETFD) & FD_CLOEXEC) != 0);
    }
}

TEST_CASE("message boundaries are kept, and a closed peer is reported") {
    Pair p;
    REQUIRE(send_message(p.a.get(), "one") == SendStatus::sent);
    REQUIRE(send_message(p.a.get(), "two") == SendStatus::sent);
    CHECK(receive_message(p.b.get()).message.data == "one");
    CHECK(receive_message(p.b.get()).message.data == "two");
    CHECK(receive_message(p.b.get(), max_message_size, true).status == ReceiveStatus::would_block);
    p.a.reset();
    CHECK(receive_message(p.b.get()).status == ReceiveStatus::closed);
    CHECK(send_message(p.b.get(), "x") == SendStatus::closed);
}

TEST_CASE("an oversized message is dropped with its descriptors") {
    Pair p;
    int big = 256 * 1024;
    ::setsockopt(p.a.get(), SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    auto fds = pipes(3);
    std::string data(max_message_size + 1024, 'x');
    REQUIRE(send_message(p.a.get(), data, raw_fds(fds)) == SendStatus::sent);
    REQUIRE(send_message(p.a.get(), "next") == SendStatus::sent);
    auto r = receive_message(p.b.get());
    CHECK(r.status == ReceiveStatus::too_large);
    CHECK(r.message.fds.empty());
    CHECK(receive_message(p.b.get()).message.data == "next");
}

TEST_CASE("more than 253 descriptors are refused by the sender") {
    Pair p;
    std::vector<int> many(max_fds_per_message + 1, 0);
    CHECK_THROWS_AS(send_message(p.a.get(), "x", many), std::invalid_argument);
}

TEST_CASE("MSG_CTRUNC is reported as fds_truncated, with the message's data and no descriptor") {
    // A receiver out of descriptor slots gets MSG_CTRUNC; lower the limit in a
    // child so that the test process keeps its own.
    Pair p;
    auto fds = pipes(20);
    REQUIRE(send_message(p.a.get(), "fds", raw_fds(fds)) == SendStatus::sent);
    pid_t child = ::fork();
    if (child == 0) {
        // Keep stdio and the socket (as fd 3), and allow two more descriptors:
        // twenty cannot be installed.
        if (::dup2(p.b.get(), 3) < 0 || ::close_range(4, ~0U, 0) < 0) {
            ::_exit(2);
        }
        rlimit lim{6, 6};
        ::setrlimit(RLIMIT_NOFILE, &lim);
        auto r = receive_message(3);
        // The two that fitted were closed again: the message is incomplete.
        const bool closed = ::fcntl(4, F_GETFD) < 0 && ::fcntl(5, F_GETFD) < 0;
        ::_exit(r.status == ReceiveStatus::fds_truncated && r.message.data == "fds" &&
                        r.message.fds.empty() && closed
                    ? 0
                    : 1);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("what a peer said before closing on unread messages is still received") {
    // Closing with unread data makes the kernel report ECONNRESET first.
    Pair p;
    REQUIRE(send_message(p.a.get(), "unread by b") == SendStatus::sent);
    REQUIRE(send_message(p.b.get(), "last words") == SendStatus::sent);
    p.b.reset();
    auto r = receive_message(p.a.get());
    REQUIRE(r.status == ReceiveStatus::message);
    CHECK(r.message.data == "last words");
    CHECK(receive_message(p.a.get()).status == ReceiveStatus::closed);
}
