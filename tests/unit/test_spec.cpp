// The command line's socket shorthand and namespace references.
#include <doctest/doctest.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "nsbroker/client.hpp"

using namespace nsbroker;

TEST_CASE("listening TCP and UDP specs") {
    auto s = parse_socket_spec("tcp-listen:8080");
    REQUIRE(s);
    CHECK(s->family == AF_INET);
    CHECK(s->type == SOCK_STREAM);
    CHECK(s->protocol == IPPROTO_TCP);
    CHECK(s->bind == "0.0.0.0:8080");
    CHECK(s->listen == 128);
    CHECK(s->options.reuseaddr == true);

    s = parse_socket_spec("tcp-listen:127.0.0.1:80");
    REQUIRE(s);
    CHECK(s->bind == "127.0.0.1:80");

    s = parse_socket_spec("tcp6-listen:[::1]:443");
    REQUIRE(s);
    CHECK(s->family == AF_INET6);
    CHECK(s->bind == "[::1]:443");
    CHECK(parse_socket_spec("tcp6-listen:443")->bind == "[::]:443");

    s = parse_socket_spec("udp:53");
    REQUIRE(s);
    CHECK(s->type == SOCK_DGRAM);
    CHECK(s->protocol == IPPROTO_UDP);
    CHECK_FALSE(s->listen);
    CHECK(parse_socket_spec("udp6:[::]:53")->family == AF_INET6);
}

TEST_CASE("connect, unix, netlink, raw and packet specs") {
    auto c = parse_socket_spec("tcp-connect:10.0.0.1:22");
    REQUIRE(c);
    CHECK(c->connect == "10.0.0.1:22");
    CHECK(parse_socket_spec("tcp-connect:[::1]:22")->family == AF_INET6);
    auto u = parse_socket_spec("unix-listen:/run/app.sock");
    REQUIRE(u);
    CHECK(u->family == AF_UNIX);
    CHECK(u->bind == "/run/app.sock");
    auto n = parse_socket_spec("netlink:route");
    REQUIRE(n);
    CHECK(n->family == AF_NETLINK);
    CHECK(n->type == SOCK_RAW);
    CHECK(n->protocol == NETLINK_ROUTE);
    CHECK(parse_socket_spec("netlink:16")->protocol == NETLINK_GENERIC);
    CHECK(parse_socket_spec("raw:icmp")->protocol == IPPROTO_ICMP);
    CHECK(parse_socket_spec("raw6:icmpv6")->protocol == IPPROTO_ICMPV6);
    CHECK(parse_socket_spec("packet:all")->family == AF_PACKET);
}

TEST_CASE("bad specs say what is wrong") {
    CHECK(parse_socket_spec("tcp-listen").error().message ==
          "socket spec \"tcp-listen\": expected KIND:ARGUMENT, as in tcp-listen:8080");
    CHECK(parse_socket_spec("sctp:1").error().message.find("unknown kind \"sctp\"") !=
          std::string::npos);
    CHECK_FALSE(parse_socket_spec("tcp-listen:host:80"));
    CHECK_FALSE(parse_socket_spec("tcp-listen:99999"));
    CHECK_FALSE(parse_socket_spec("netlink:nosuch"));
    CHECK_FALSE(parse_socket_spec("raw:70000"));
}

TEST_CASE("namespace references from the command line") {
    auto n = Netns::parse("blue");
    REQUIRE(n);
    CHECK(n->ref().kind == proto::NetnsRef::Kind::name);
    auto p = Netns::parse("/proc/1/ns/net");
    REQUIRE(p);
    CHECK(p->ref().kind == proto::NetnsRef::Kind::path);
    auto rel = Netns::parse("./ns");
    REQUIRE(rel);
    CHECK(rel->ref().text.front() == '/');
    auto pid = Netns::parse("pid:42");
    REQUIRE(pid);
    CHECK(pid->ref().pid == 42);
    CHECK_FALSE(Netns::parse("pid:"));
    CHECK_FALSE(Netns::parse("pid:x1"));
    CHECK_FALSE(Netns::parse(".."));
    CHECK_FALSE(Netns::parse(std::string(256, 'a')));
    // The range the daemon accepts, checked before anything is sent.
    CHECK(Netns::parse("pid:4194304"));
    CHECK(Netns::parse("pid:4194305").error().message == "\"pid:4194305\": expected pid:N");
    CHECK(Netns::parse("pid:x1").error().message == "\"pid:x1\": expected pid:N");
    CHECK(Netns::parse("..").error().message == "namespace name must not be \".\" or \"..\"");
}
