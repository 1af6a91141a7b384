// Namespace references as the daemon resolves them: only network namespaces pass.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support/harness.hpp"
#include "sys/netns.hpp"

using namespace nsbroker;
using namespace nsbroker::daemon;

TEST_CASE("the own network namespace verifies, with the identity stat gives") {
    UniqueFd fd{::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)};
    REQUIRE(fd);
    auto id = verify_netns(fd.get());
    REQUIRE(id);
    struct stat st {};
    ::stat("/proc/self/ns/net", &st);
    CHECK(id->ino == st.st_ino);
    CHECK(id->dev == st.st_dev);
    auto current = current_netns();
    REQUIRE(current);
    CHECK(*current == *id);
}

TEST_CASE("files that are not network namespaces are refused with not_a_netns") {
    for (const char* path : {"/etc/passwd", "/proc/self/ns/mnt", "/proc/self/ns/pid",
                             "/proc/self/ns/uts", "/dev/null"}) {
        CAPTURE(path);
        auto r = open_netns_path(path);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == ErrorCode::not_a_netns);
        UniqueFd fd{::open(path, O_RDONLY | O_CLOEXEC)};
        REQUIRE(fd);
        auto passed = resolve_netns(proto::NetnsRef::by_fd(), std::move(fd));
        REQUIRE_FALSE(passed);
        CHECK(passed.error().code == ErrorCode::not_a_netns);
    }
}

TEST_CASE("a FIFO path is refused without blocking") {
    test::TempDir dir;
    std::string fifo = dir.path() + "/fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    auto r = open_netns_path(fifo);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == ErrorCode::not_a_netns);
}

TEST_CASE("references by name, path and pid resolve to the same identity") {
    test::TestNetns ns("resolve");
    auto by_name = resolve_netns(proto::NetnsRef::by_name(ns.name()), {});
    REQUIRE(by_name);
    CHECK(by_name->name == ns.name());
    CHECK(by_name->identity.ino == ns.inode());
    auto by_path = resolve_netns(proto::NetnsRef::by_path(ns.path()), {});
    REQUIRE(by_path);
    CHECK(by_path->identity == by_name->identity);
    CHECK_FALSE(by_path->name);

    auto self = resolve_netns(proto::NetnsRef::by_pid(::getpid()), {});
    REQUIRE(self);
    CHECK(self->identity == *current_netns());
}

TEST_CASE("a pid reference to the caller goes through the caller's pidfd") {
    // A child in a namespace of its own, then gone: its pid may be reused,
    // its pidfd never names another process.
    int ready[2];
    REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
    pid_t child = ::fork();
    if (child == 0) {
        ::unshare(CLONE_NEWNET);
        char one = 1;
        (void)::write(ready[1], &one, 1);
        ::pause();
        ::_exit(0);
    }
    ::close(ready[1]);
    char one = 0;
    REQUIRE(::read(ready[0], &one, 1) == 1);
    ::close(ready[0]);
    UniqueFd pidfd{static_cast<int>(::syscall(SYS_pidfd_open, child, 0))};
    REQUIRE(pidfd);
    auto expected = open_netns_path("/proc/" + std::to_string(child) + "/ns/net");
    REQUIRE(expected);
    CHECK(expected->identity != *current_netns());

    auto r = resolve_netns(proto::NetnsRef::by_pid(child), {}, default_netns_dir,
                           {child, pidfd.borrow()});
    REQUIRE(r);
    CHECK(r->identity == expected->identity);

    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    auto gone = resolve_netns(proto::NetnsRef::by_pid(child), {}, default_netns_dir,
                              {child, pidfd.borrow()});
    REQUIRE_FALSE(gone);
    CHECK(gone.error().code == ErrorCode::not_found);
}

TEST_CASE("missing and malformed references") {
    auto missing = resolve_netns(proto::NetnsRef::by_name("nsbroker-no-such-namespace"), {});
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code == ErrorCode::not_found);
    CHECK(missing.error().message ==
          "no network namespace named \"nsbroker-no-such-namespace\" in /run/netns");
    for (const char* bad : {"..", ".", "../x", "a/b", ""}) {
        CAPTURE(bad);
        auto r = resolve_netns(proto::NetnsRef::by_name(bad), {});
        REQUIRE_FALSE(r);
        CHECK(r.error().code == ErrorCode::invalid_request);
    }
    auto gone = resolve_netns(proto::NetnsRef::by_pid(4194303), {});
    REQUIRE_FALSE(gone);
    CHECK(gone.error().code == ErrorCode::not_found);
    auto no_fd = resolve_netns(proto::NetnsRef::by_fd(), {});
    REQUIRE_FALSE(no_fd);
    CHECK(no_fd.error().code == ErrorCode::invalid_request);
}
