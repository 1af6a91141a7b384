// nsbroker: the command-line client of nsbrokerd.
//
//   nsbroker [--broker PATH] [--json] ping | ns | stats
//   nsbroker [--broker PATH] exec --netns REF --socket SPEC[=NAME]... -- CMD [ARG...]
//
// exec hands the sockets to CMD the way systemd socket activation does
// (fds 3, 4, ... with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES) and replaces
// itself with CMD: the sockets are made by the broker, nothing forks.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <tuple>
#include <vector>

#include "nsbroker/client.hpp"
#include "nsbroker/codec.hpp"

namespace {

using namespace nsbroker;

constexpr int exit_refused = 1;
constexpr int exit_usage = 2;

constexpr const char* usage_text = R"(Usage:
  nsbroker [--broker PATH] [--json] ping
  nsbroker [--broker PATH] [--json] ns
  nsbroker [--broker PATH] [--json] stats
  nsbroker [--broker PATH] exec --netns REF --socket SPEC[=NAME]... -- CMD [ARG...]

Options:
  --broker PATH   the daemon's socket (default: $NSBROKER_SOCKET, else /run/nsbroker/nsbroker.sock)
  --json          print the daemon's reply as JSON; for ns, the whole list in
                  one reply, gathered from every page the daemon sent

REF is a /run/netns name, a path (anything with a '/'), or pid:N.
SPEC is one of
  tcp-listen:[ADDR:]PORT   tcp6-listen:[[ADDR]:]PORT  udp:[ADDR:]PORT  udp6:[[ADDR]:]PORT
  tcp-connect:HOST:PORT    tcp6-connect:[HOST]:PORT   unix-listen:PATH
  netlink:PROTO            raw:PROTO                  raw6:PROTO       packet:PROTO
exec passes the sockets as fds 3, 4, ... with LISTEN_FDS, LISTEN_PID and
LISTEN_FDNAMES set, as systemd socket activation does, and execs CMD.
)";

int usage_error(const std::string& message) {
    std::fprintf(stderr, "nsbroker: %s\nTry 'nsbroker --help'.\n", message.c_str());
    return exit_usage;
}

int refused(const Error& e) {
    std::fprintf(stderr, "nsbroker: %s\n", e.describe().c_str());
    return exit_refused;
}

void print_json(proto::ReplyBody body) {
    std::cout << proto::encode_reply(proto::Reply{std::nullopt, std::move(body)}) << "\n";
}

int cmd_ping(Client& client, bool json) {
    auto hello = client.hello();
    if (!hello) {
        return refused(hello.error());
    }
    auto start = std::chrono::steady_clock::now();
    auto pong = client.ping();
    auto elapsed = std::chrono::steady_clock::now() - start;
    if (!pong) {
        return refused(pong.error());
    }
    if (json) {
        print_json(*hello);
    } else {
        auto us = std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count();
        std::printf("pong from nsbrokerd %s (protocol %d) in %lld us\n",
                    hello->daemon_version.c_str(), hello->protocol, static_cast<long long>(us));
    }
    return 0;
}

// By name for a person; the daemon lists them by (dev, ino).
void print_namespaces(const NamespacesReply& list) {
    std::vector<const NamespaceInfo*> by_name;
    for (const auto& n : list.namespaces) {
        by_name.push_back(&n);
    }
    std::sort(by_name.begin(), by_name.end(), [](const auto* a, const auto* b) {
        return std::tie(a->names, a->dev, a->ino) < std::tie(b->names, b->dev, b->ino);
    });
    std::printf("%-24s %-18s %8s %-9s %9s %9s\n", "NAME", "NETNS", "WORKER", "STATE", "REQUESTS",
                "SOCKETS");
    for (const auto* entry : by_name) {
        const auto& n = *entry;
        std::string names;
        for (const auto& name : n.names) {
            names += (names.empty() ? "" : ",") + name;
        }
        std::string id = "net:[" + std::to_string(n.ino) + "]";
        std::string pid = n.worker_pid ? std::to_string(n.worker_pid) : "-";
        std::printf("%-24s %-18s %8s %-9s %9llu %9llu\n", names.empty() ? "-" : names.c_str(),
                    id.c_str(), pid.c_str(), n.state.c_str(),
                    static_cast<unsigned long long>(n.requests),
                    static_cast<unsigned long long>(n.sockets));
    }
}

void print_stats(const StatsReply& s) {
    std::printf("uptime           %.1f s\n", s.uptime_seconds);
    std::printf("requests         %llu\n", static_cast<unsigned long long>(s.requests));
    std::printf("sockets          %llu\n", static_cast<unsigned long long>(s.sockets));
    std::printf("clients          %llu\n", static_cast<unsigned long long>(s.clients));
    std::printf("workers          %llu live, %llu spawned, %llu exited\n",
                static_cast<unsigned long long>(s.workers_live),
                static_cast<unsigned long long>(s.workers_spawned),
                static_cast<unsigned long long>(s.workers_exited));
    for (const auto& [code, count] : s.errors) {
        std::printf("errors %-9s %llu\n", code.c_str(), static_cast<unsigned long long>(count));
    }
}

// The daemon's reply as JSON when asked for, else as text for a person.
template <typename Reply>
int print_reply(const Result<Reply>& reply, bool json, void (*print_text)(const Reply&)) {
    if (!reply) {
        return refused(reply.error());
    }
    if (json) {
        print_json(*reply);
    } else {
        print_text(*reply);
    }
    return 0;
}

// The whole list, which the library gathers page by page: --json prints it
// as one reply.
int cmd_ns(Client& client, bool json) {
    return print_reply(client.namespaces(), json, print_namespaces);
}

int cmd_stats(Client& client, bool json) {
    return print_reply(client.stats(), json, print_stats);
}

struct NamedSpec {
    SocketSpec spec;
    std::string name;
};

// "SPEC" or "SPEC=NAME"; NAME defaults to the spec's kind ("tcp-listen").
Result<NamedSpec> parse_named_spec(std::string_view text) {
    std::string name;
    if (auto eq = text.rfind('='); eq != std::string_view::npos) {
        name = std::string(text.substr(eq + 1));
        text = text.substr(0, eq);
        if (name.empty() || name.size() > 255 || name.find(':') != std::string::npos) {
            return make_error(ErrorCode::invalid_request,
                              "fd name \"" + name + "\" must be 1 to 255 characters without ':'");
        }
    }
    auto spec = parse_socket_spec(text);
    if (!spec) {
        return std::move(spec).error();
    }
    if (name.empty()) {
        name = std::string(text.substr(0, text.find(':')));
    }
    return NamedSpec{std::move(*spec), std::move(name)};
}

// Places the sockets at 3, 4, ... (inheritable) and closes every other copy.
bool place_listen_fds(std::vector<Socket>& sockets) {
    const int first = 3;
    const int n = static_cast<int>(sockets.size());
    // Lift every socket above the target range first, so that no dup2 below
    // overwrites a socket that has not been placed yet.
    std::vector<UniqueFd> lifted;
    for (auto& s : sockets) {
        UniqueFd high{::fcntl(s.fd(), F_DUPFD_CLOEXEC, first + n)};
        if (!high) {
            return false;
        }
        lifted.push_back(std::move(high));
    }
    sockets.clear();
    for (int i = 0; i < n; ++i) {
        // dup2 clears close-on-exec: these are meant for CMD.
        if (::dup2(lifted[static_cast<std::size_t>(i)].get(), first + i) < 0) {
            return false;
        }
    }
    return true;
}

int cmd_exec(std::string_view broker, int argc, char** argv, int index) {
    std::optional<Netns> netns;
    std::vector<NamedSpec> specs;
    for (; index < argc; ++index) {
        std::string_view arg = argv[index];
        if (arg == "--") {
            ++index;
            break;
        }
        if ((arg == "--netns" || arg == "--socket") && index + 1 >= argc) {
            return usage_error(std::string(arg) + " needs a value");
        }
        if (arg == "--netns") {
            auto parsed = Netns::parse(argv[++index]);
            if (!parsed) {
                return usage_error(parsed.error().message);
            }
            netns = std::move(*parsed);
        } else if (arg == "--socket") {
            auto parsed = parse_named_spec(argv[++index]);
            if (!parsed) {
                return usage_error(parsed.error().message);
            }
            specs.push_back(std::move(*parsed));
        } else {
            return usage_error("exec: unexpected \"" + std::string(arg) + "\" (missing \"--\"?)");
        }
    }
    if (!netns) {
        return usage_error("exec needs --netns");
    }
    if (specs.empty()) {
        return usage_error("exec needs at least one --socket");
    }
    if (index >= argc) {
        return usage_error("exec needs a command after \"--\"");
    }

    std::vector<SocketSpec> request;
    std::string names;
    for (const auto& s : specs) {
        request.push_back(s.spec);
        names += (names.empty() ? "" : ":") + s.name;
    }
    std::vector<Socket> sockets;
    {
        // One request: a direct channel would serve nothing after it.
        auto client = Client::connect(broker, ClientOptions{.direct_channels = false});
        if (!client) {
            return refused(client.error());
        }
        auto got = client->sockets(*netns, request);
        if (!got) {
            return refused(got.error());
        }
        sockets = std::move(*got);
    } // the connection to the daemon closes here
    std::string count = std::to_string(sockets.size());
    if (!place_listen_fds(sockets)) {
        std::fprintf(stderr, "nsbroker: cannot place sockets: %s\n", std::strerror(errno));
        return exit_refused;
    }
    ::setenv("LISTEN_FDS", count.c_str(), 1);
    ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    ::setenv("LISTEN_FDNAMES", names.c_str(), 1);
    ::execvp(argv[index], argv + index);
    int err = errno;
    std::fprintf(stderr, "nsbroker: cannot run %s: %s\n", argv[index], std::strerror(err));
    return err == ENOENT ? 127 : 126;
}

} // namespace

int main(int argc, char** argv) {
    std::string broker;
    bool json = false;
    int i = 1;
    for (; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::fputs(usage_text, stdout);
            return 0;
        }
        if (arg == "--json") {
            json = true;
        } else if (arg == "--broker") {
            if (++i >= argc) {
                return usage_error("--broker needs a path");
            }
            broker = argv[i];
        } else if (arg.starts_with("--broker=")) {
            broker = std::string(arg.substr(9));
        } else {
            break;
        }
    }
    if (i >= argc) {
        return usage_error("no command given (ping, ns, stats, exec)");
    }
    std::string_view command = argv[i];
    if (command == "exec") {
        return cmd_exec(broker, argc, argv, i + 1);
    }
    if (command != "ping" && command != "ns" && command != "stats") {
        return usage_error("unknown command \"" + std::string(command) + "\"");
    }
    if (i + 1 < argc) {
        return usage_error(std::string(command) + " takes no arguments");
    }
    auto client = Client::connect(broker);
    if (!client) {
        return refused(client.error());
    }
    if (command == "ping") {
        return cmd_ping(*client, json);
    }
    if (command == "ns") {
        return cmd_ns(*client, json);
    }
    return cmd_stats(*client, json);
}
