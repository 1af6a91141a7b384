// nsbroker-scale: what nsbrokerd and its workers cost with many namespaces
// live, a worker each.
//
//   sudo build/bench/nsbroker-scale [N] [--worker-mode fork|exec]
//
// Makes N namespaces (1,000 by default) with one `ip -batch`, starts the
// built nsbrokerd with room for a worker each, asks one socket in each, and
// reports the daemon's memory and descriptors and the workers' total PSS.
// Then deletes the namespaces and reports how long the workers took to go
// and what the daemon held afterwards.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "nsbroker/client.hpp"
#include "support/harness.hpp"

using namespace nsbroker;
using namespace nsbroker::test;
using Clock = std::chrono::steady_clock;

namespace {

long field_kib(const std::string& file, const std::string& field) {
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);) {
        if (line.starts_with(field + ":")) {
            return std::atol(line.c_str() + field.size() + 1);
        }
    }
    return 0;
}

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

} // namespace

int main(int argc, char** argv) {
    int count = 1000;
    std::string mode = "fork";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--worker-mode" && i + 1 < argc) {
            mode = argv[++i];
        } else if (std::atoi(a.c_str()) > 0) {
            count = std::atoi(a.c_str());
        } else {
            std::fprintf(stderr, "usage: nsbroker-scale [N] [--worker-mode fork|exec]\n");
            return 2;
        }
    }
    ::setenv("NSBROKERD", NSBROKERD_PATH, 0);
    const std::string prefix = "nsbs" + std::to_string(::getpid()) + "-";
    std::string adds;
    std::string deletes;
    for (int i = 0; i < count; ++i) {
        adds += "netns add " + prefix + std::to_string(i) + "\n";
        deletes += "netns delete " + prefix + std::to_string(i) + "\n";
    }
    auto start = Clock::now();
    if (ip_batch(adds) != 0) {
        std::fprintf(stderr, "ip -batch could not make the namespaces\n");
        ip_batch(deletes);
        return 1;
    }
    const double made_in = seconds_since(start);
    int status = 0;
    try {
        Daemon daemon({"--log-level", "warn", "--worker-mode", mode, "--max-workers",
                       std::to_string(count + 64)});
        wait_for([&] { return !children_of(daemon.pid()).empty(); });
        const std::string status_file = "/proc/" + std::to_string(daemon.pid()) + "/status";
        const long rss_before = field_kib(status_file, "VmRSS");
        const long anon_before = field_kib(status_file, "RssAnon");
        const int fds_before = daemon.fd_count();

        auto connected = Client::connect(daemon.socket_path());
        if (!connected) {
            throw std::runtime_error(connected.error().describe());
        }
        std::optional<Client> client(std::move(*connected));
        SocketSpec udp;
        udp.family = AF_INET;
        udp.type = SOCK_DGRAM;
        start = Clock::now();
        for (int i = 0; i < count; ++i) {
            auto s = client->socket(Netns::name(prefix + std::to_string(i)), udp);
            if (!s) {
                throw std::runtime_error(s.error().describe());
            }
        }
        const double served_in = seconds_since(start);
        const auto workers = children_of(daemon.pid());
        long pss = 0;
        long pss_anon = 0;
        for (pid_t w : workers) {
            const std::string rollup = "/proc/" + std::to_string(w) + "/smaps_rollup";
            pss += field_kib(rollup, "Pss");
            pss_anon += field_kib(rollup, "Pss_Anon");
        }
        const long rss = field_kib(status_file, "VmRSS");
        const long anon = field_kib(status_file, "RssAnon");
        const int fds = daemon.fd_count();
        const auto channels = client->direct_channels();
        client.reset();

        start = Clock::now();
        ip_batch(deletes);
        const bool gone = wait_for([&] { return children_of(daemon.pid()).size() <= 1; },
                                   std::chrono::seconds(120));
        const double gone_in = seconds_since(start);
        wait_for([&] { return daemon.fd_count() <= fds_before; }, std::chrono::seconds(30));
        wait_for([&] { return field_kib(status_file, "RssAnon") <= anon_before + 512; },
                 std::chrono::seconds(30));

        std::printf("nsbroker-scale: %d namespaces, %s workers\n", count, mode.c_str());
        std::printf("namespaces made (ip -batch)     %.1f s\n", made_in);
        std::printf("first socket in each            %.1f s (%.2f ms each)\n", served_in,
                    served_in * 1000 / count);
        std::printf("workers                         %zu (the spare counts)\n", workers.size());
        std::printf("workers' PSS                    %.1f MiB in all, %ld KiB each, of it "
                    "anonymous %ld KiB\n",
                    static_cast<double>(pss) / 1024,
                    pss / static_cast<long>(std::max<std::size_t>(workers.size(), 1)),
                    pss_anon / static_cast<long>(std::max<std::size_t>(workers.size(), 1)));
        std::printf("nsbrokerd RSS                   %.1f MiB (%.1f at rest), anonymous %.1f MiB "
                    "(%.1f at rest)\n",
                    static_cast<double>(rss) / 1024, static_cast<double>(rss_before) / 1024,
                    static_cast<double>(anon) / 1024, static_cast<double>(anon_before) / 1024);
        std::printf("nsbrokerd descriptors           %d (%d at rest; %.2f a worker; %zu direct "
                    "channels held by the client)\n",
                    fds, fds_before,
                    static_cast<double>(fds - fds_before) /
                        static_cast<double>(std::max<std::size_t>(workers.size(), 1)),
                    channels);
        std::printf("namespaces deleted: workers %s in %.1f s; then %d descriptors, "
                    "anonymous %.1f MiB\n",
                    gone ? "gone" : "NOT gone", gone_in, daemon.fd_count(),
                    static_cast<double>(field_kib(status_file, "RssAnon")) / 1024);
        status = gone ? 0 : 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "nsbroker-scale: %s\n", e.what());
        status = 1;
    }
    ip_batch(deletes);
    return status;
}
