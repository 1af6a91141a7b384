// A server started the way systemd socket activation starts one: it takes
// its listening socket from fd 3, checks LISTEN_PID/LISTEN_FDS, answers one
// connection with "NAMES PID NETNS-INODE" and exits.
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

int main() {
    const char* pid = std::getenv("LISTEN_PID");
    const char* fds = std::getenv("LISTEN_FDS");
    const char* names = std::getenv("LISTEN_FDNAMES");
    if (pid == nullptr || fds == nullptr || names == nullptr || std::atoi(pid) != getpid() ||
        std::atoi(fds) < 1) {
        std::fprintf(stderr, "listen_fds_helper: not started with socket activation variables\n");
        return 2;
    }
    int nsfd = ioctl(3, SIOCGSKNS);
    struct stat st {};
    if (nsfd < 0 || fstat(nsfd, &st) < 0) {
        return 3;
    }
    int conn = accept(3, nullptr, nullptr);
    if (conn < 0) {
        return 4;
    }
    std::string reply =
        std::string(names) + " " + std::to_string(getpid()) + " " + std::to_string(st.st_ino);
    return write(conn, reply.data(), reply.size()) == static_cast<ssize_t>(reply.size()) ? 0 : 5;
}
