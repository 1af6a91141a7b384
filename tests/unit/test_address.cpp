// Socket address strings: parse, format, and refuse what is not an address.
#include <doctest/doctest.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/un.h>

#include "nsbroker/address.hpp"

using namespace nsbroker::proto;

namespace {

std::string round_trip(int family, const std::string& text) {
    auto a = parse_address(family, text);
    REQUIRE_MESSAGE(a, text);
    return format_address(a->get(), a->length);
}

} // namespace

TEST_CASE("addresses of every family round-trip") {
    CHECK(round_trip(AF_INET, "127.0.0.1:8080") == "127.0.0.1:8080");
    CHECK(round_trip(AF_INET, ":53") == "0.0.0.0:53");
    CHECK(round_trip(AF_INET6, "[::1]:443") == "[::1]:443");
    CHECK(round_trip(AF_INET6, "[]:0") == "[::]:0");
    CHECK(round_trip(AF_INET6, "[fe80::1%2]:53") == "[fe80::1%2]:53");
    CHECK(round_trip(AF_UNIX, "/run/x.sock") == "/run/x.sock");
    CHECK(round_trip(AF_UNIX, "@abstract") == "@abstract");
    CHECK(round_trip(AF_NETLINK, "0") == "0");
    CHECK(round_trip(AF_NETLINK, "0/0x11") == "0/17");
}

TEST_CASE("malformed addresses are refused") {
    for (const char* bad :
         {"", "1.2.3.4", "1.2.3.4:", "1.2.3.4:65536", "1.2.3:80", "host:80", "1.2.3.4:x"}) {
        CAPTURE(bad);
        CHECK_FALSE(parse_address(AF_INET, bad));
    }
    for (const char* bad : {"::1:80", "[::1]", "[::1]80", "[zz::1]:80", "[::1%x]:1"}) {
        CAPTURE(bad);
        CHECK_FALSE(parse_address(AF_INET6, bad));
    }
    CHECK_FALSE(parse_address(AF_UNIX, std::string(108, 'a')));
    CHECK(parse_address(AF_UNIX, std::string(107, 'a')));
    CHECK(parse_address(AF_UNIX, "@" + std::string(107, 'a')));
    CHECK_FALSE(parse_address(AF_NETLINK, "x"));
    CHECK_FALSE(parse_address(AF_NETLINK, "1/zz"));
    CHECK(check_address(AF_PACKET, "eth0"));
    CHECK_FALSE(check_address(AF_PACKET, "a-very-long-interface-name"));
    CHECK_FALSE(check_address(AF_PACKET, "../x"));
    CHECK(parse_address(AF_INET, "localhost:80").error().message ==
          "invalid inet address \"localhost:80\": expected an IPv4 address, as in 127.0.0.1:8080");
}
