// The nsbroker command line against the built daemon.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "support/harness.hpp"

using namespace nsbroker::test;

namespace {

std::string cli(const Daemon& d, const std::string& args, int* status) {
    return run_output(built("NSBROKER_CLI") + " --broker " + d.socket_path() + " " + args + " 2>&1",
                      status);
}

// Connects from inside the namespace and returns what the server wrote.
std::string read_from(const std::string& netns_path, int port) {
    int out[2];
    REQUIRE(::pipe(out) == 0);
    pid_t child = ::fork();
    if (child == 0) {
        ::close(out[0]);
        int ns = ::open(netns_path.c_str(), O_RDONLY);
        if (ns < 0 || ::setns(ns, CLONE_NEWNET) < 0) {
            ::_exit(2);
        }
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_port = htons(static_cast<uint16_t>(port));
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        // Until the server listens, for as long as a busy machine may take.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (std::chrono::steady_clock::now() < deadline) {
            int fd = ::socket(AF_INET, SOCK_STREAM, 0);
            if (::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0) {
                char buffer[512];
                ssize_t n;
                while ((n = ::read(fd, buffer, sizeof(buffer))) > 0) {
                    if (::write(out[1], buffer, static_cast<size_t>(n)) != n) {
                        ::_exit(3);
                    }
                }
                ::_exit(0);
            }
            ::close(fd);
            ::usleep(10000);
        }
        ::_exit(1);
    }
    ::close(out[1]);
    std::string text;
    char buffer[512];
    ssize_t n;
    while ((n = ::read(out[0], buffer, sizeof(buffer))) > 0) {
        text.append(buffer, static_cast<size_t>(n));
    }
    ::close(out[0]);
    ::waitpid(child, nullptr, 0);
    return text;
}

} // namespace

TEST_CASE("nsbroker ping, ns and stats") {
    TestNetns ns("cli");
    Daemon d;
    int status = -1;
    auto out = cli(d, "ping", &status);
    CHECK(status == 0);
    CHECK(out.starts_with("pong from nsbrokerd "));

    out = cli(d, "ns", &status);
    CHECK(status == 0);
    CHECK(out.find(ns.name()) != std::string::npos);
    CHECK(out.find("net:[" + std::to_string(ns.inode()) + "]") != std::string::npos);

    out = cli(d, "--json ns", &status);
    CHECK(status == 0);
    auto json = nlohmann::json::parse(out);
    bool found = false;
    for (const auto& n : json["namespaces"]) {
        found = found || n["ino"] == ns.inode();
    }
    CHECK(found);

    out = cli(d, "stats", &status);
    CHECK(status == 0);
    CHECK(out.find("requests") != std::string::npos);
    CHECK(nlohmann::json::parse(cli(d, "--json stats", &status))["stats"]["requests"].get<int>() >
          0);
}

TEST_CASE("nsbroker exec hands sockets over by the socket-activation protocol, without a fork") {
    TestNetns ns("exec");
    Daemon d;
    pid_t child = ::fork();
    if (child == 0) {
        std::string cli_path = built("NSBROKER_CLI");
        std::string helper = built("LISTEN_FDS_HELPER");
        std::string sock = d.socket_path();
        std::string name = ns.name();
        ::execl(cli_path.c_str(), "nsbroker", "--broker", sock.c_str(), "exec", "--netns",
                name.c_str(), "--socket", "tcp-listen:127.0.0.1:8080=web", "--socket",
                "udp:127.0.0.1:5353", "--", helper.c_str(), nullptr);
        ::_exit(127);
    }
    auto text = read_from(ns.path(), 8080);
    int status = 0;
    ::waitpid(child, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    // Same pid as the process we started: nsbroker exec'd the server itself.
    CHECK(text == "web:udp " + std::to_string(child) + " " + std::to_string(ns.inode()));
    CHECK_FALSE(tcp_connect_here("127.0.0.1", 8080));
}

TEST_CASE("nsbroker exit codes: 2 for bad usage, 1 for a refused request") {
    Daemon d;
    int status = -1;
    auto out = cli(d, "exec --netns x --socket bogus:1 -- true", &status);
    CHECK(status == 2);
    CHECK(out.find("unknown kind \"bogus\"") != std::string::npos);
    cli(d, "frobnicate", &status);
    CHECK(status == 2);
    cli(d, "exec --socket udp:53 -- true", &status);
    CHECK(status == 2);
    out = cli(d, "exec --netns nsbroker-absent --socket udp:53 -- true", &status);
    CHECK(status == 1);
    CHECK(out.find("not_found") != std::string::npos);
    out = cli(d, "exec --netns /etc/passwd --socket udp:53 -- true", &status);
    CHECK(status == 1);
    CHECK(out.find("not_a_netns") != std::string::npos);
    out = run_output(built("NSBROKER_CLI") + " --broker /nonexistent/sock ping 2>&1", &status);
    CHECK(status == 1);
    CHECK(out.find("cannot connect") != std::string::npos);
}
