// The wire codec: round trips, and a precise error for every kind of bad input.
#include <doctest/doctest.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>

#include "nsbroker/codec.hpp"

using namespace nsbroker;
using namespace nsbroker::proto;

namespace {

Request decode_ok(const std::string& text) {
    auto r = decode_request(text);
    if (auto* e = std::get_if<RequestError>(&r)) {
        FAIL("unexpected error: " << e->error.message);
    }
    return std::get<Request>(r);
}

RequestError decode_bad(const std::string& text) {
    auto r = decode_request(text);
    REQUIRE(std::holds_alternative<RequestError>(r));
    return std::get<RequestError>(r);
}

} // namespace

TEST_CASE("a socket request round-trips through the codec") {
    Request r;
    r.id = 42;
    r.op = Op::socket;
    r.netns = NetnsRef::by_name("blue");
    SocketSpec tcp;
    tcp.family = AF_INET;
    tcp.type = SOCK_STREAM;
    tcp.protocol = IPPROTO_TCP;
    tcp.nonblock = true;
    tcp.options.reuseaddr = true;
    tcp.options.mark = 7;
    tcp.options.bindtodevice = "eth0";
    tcp.bind = "127.0.0.1:8080";
    tcp.listen = 64;
    SocketSpec nl;
    nl.family = AF_NETLINK;
    nl.type = SOCK_RAW;
    nl.protocol = NETLINK_ROUTE;
    nl.count = 5;
    r.specs = {tcp, nl};

    Request back = decode_ok(encode_request(r));
    CHECK(back.id == 42);
    CHECK(back.op == Op::socket);
    REQUIRE(back.netns);
    CHECK(back.netns->kind == NetnsRef::Kind::name);
    CHECK(back.netns->text == "blue");
    REQUIRE(back.specs.size() == 2);
    CHECK(back.specs[0] == tcp);
    CHECK(back.specs[1] == nl);
    CHECK(socket_count(back.specs) == 6);
}

TEST_CASE("socket requests of every shape round-trip, written directly or through the DOM") {
    SocketSpec plain;
    plain.family = AF_INET6;
    plain.type = SOCK_DGRAM;
    SocketSpec steps;
    steps.family = AF_INET;
    steps.type = SOCK_STREAM;
    steps.nonblock = true;
    steps.bind = "127.0.0.1:0";
    steps.listen = 0;
    steps.count = 3;
    SocketSpec connecting;
    connecting.family = AF_UNIX;
    connecting.type = SOCK_SEQPACKET;
    connecting.connect = "@demo";
    SocketSpec packet;
    packet.family = AF_PACKET;
    packet.type = SOCK_DGRAM;
    packet.protocol = 0x88cc; // LLDP
    SocketSpec with_options = plain;
    with_options.options.rcvbuf = 4096;
    SocketSpec odd_text = connecting;
    odd_text.connect = "/tmp/caf\xc3\xa9 \"quoted\"";
    const std::vector<std::optional<NetnsRef>> refs = {std::nullopt, NetnsRef::by_name("blue"),
                                                       NetnsRef::by_path("/run/netns/bl\\ue"),
                                                       NetnsRef::by_pid(4242), NetnsRef::by_fd()};
    for (const auto& ref : refs) {
        for (const auto& specs : std::vector<std::vector<SocketSpec>>{
                 {plain}, {steps, connecting, packet}, {with_options}, {odd_text, plain}}) {
            for (bool channel : {false, true}) {
                Request r;
                r.id = 18446744073709551615u;
                r.op = Op::socket;
                r.netns = ref;
                r.specs = specs;
                r.channel = channel;
                const std::string bytes = encode_request(r);
                CAPTURE(bytes);
                auto decoded = ref ? decode_request(bytes) : decode_channel_request(bytes);
                if (ref && channel) {
                    REQUIRE(std::holds_alternative<Request>(decoded));
                } else if (!ref && channel) {
                    // A channel request asks for no channel.
                    CHECK(std::holds_alternative<RequestError>(decoded));
                    continue;
                }
                if (auto* bad = std::get_if<RequestError>(&decoded)) {
                    FAIL(bytes << ": " << bad->error.message);
                }
                const Request& back = std::get<Request>(decoded);
                CHECK(back.id == r.id);
                CHECK(back.channel == channel);
                CHECK(back.specs == specs);
                CHECK(back.netns.has_value() == ref.has_value());
                if (ref) {
                    CHECK(back.netns->kind == ref->kind);
                    CHECK(back.netns->text == ref->text);
                    CHECK(back.netns->pid == ref->pid);
                }
            }
        }
    }
}

TEST_CASE("names and numbers are both accepted for family, type and protocol") {
    auto r = decode_ok(R"({"id":1,"op":"socket","netns":{"pid":1},
        "socket":{"family":2,"type":"dgram","protocol":"udp"}})");
    CHECK(r.specs.at(0).family == AF_INET);
    CHECK(r.specs.at(0).type == SOCK_DGRAM);
    CHECK(r.specs.at(0).protocol == IPPROTO_UDP);
    r = decode_ok(R"({"id":1,"op":"socket","netns":{"fd":0},
        "socket":{"family":"netlink","type":"raw","protocol":"generic"}})");
    CHECK(r.specs.at(0).protocol == NETLINK_GENERIC);
    CHECK(r.netns->kind == NetnsRef::Kind::fd);
    r = decode_ok(R"({"id":1,"op":"socket","netns":{"path":"/proc/1/ns/net"},
        "socket":{"family":"packet","type":"raw","protocol":"all"}})");
    CHECK(r.specs.at(0).protocol == 3);
}

TEST_CASE("every operation decodes, and other fields are refused") {
    for (auto op : {"hello", "ping", "namespaces", "stats"}) {
        auto r = decode_ok(std::string(R"({"id":7,"op":")") + op + R"("})");
        CHECK(to_string(r.op) == op);
    }
    auto e = decode_bad(R"({"id":7,"op":"ping","extra":1})");
    CHECK(e.id == 7u);
    CHECK(e.error.code == ErrorCode::invalid_request);
    CHECK(e.error.message == "unknown field \"extra\"");
}

TEST_CASE("malformed input gets a precise error, with the id when it could be read") {
    struct Case {
        const char* input;
        ErrorCode code;
        const char* message;
    };
    const Case cases[] = {
        {"{", ErrorCode::invalid_request, "malformed JSON"},
        {"[1,2]", ErrorCode::invalid_request, "expected a JSON object, got an array"},
        {R"({"op":"ping"})", ErrorCode::invalid_request, "missing field \"id\""},
        {R"({"id":"x","op":"ping"})", ErrorCode::invalid_request,
         "id: expected an integer, got a string"},
        {R"({"id":-1,"op":"ping"})", ErrorCode::invalid_request,
         "id: out of range (0 to 18446744073709551615)"},
        {R"({"id":1,"op":"fly"})", ErrorCode::unsupported, "op: unknown operation \"fly\""},
        {R"({"id":1,"op":"socket","sockets":[]})", ErrorCode::invalid_request,
         "missing field \"netns\""},
        {R"({"id":1,"op":"socket","netns":{"name":"a"}})", ErrorCode::invalid_request,
         "missing field \"sockets\""},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"sockets":[]})", ErrorCode::invalid_request,
         "sockets: must not be empty"},
        {R"({"id":1,"op":"socket","netns":{"name":"a","pid":3},"sockets":[]})",
         ErrorCode::invalid_request,
         "netns: expected exactly one of \"name\", \"path\", \"pid\", \"fd\""},
        {R"({"id":1,"op":"socket","netns":{"name":".."},"socket":{}})", ErrorCode::invalid_request,
         "netns.name: namespace name must not be \".\" or \"..\""},
        {R"({"id":1,"op":"socket","netns":{"name":"../x"},"socket":{}})",
         ErrorCode::invalid_request,
         "netns.name: namespace name must be a single path component (no '/' or NUL)"},
        {R"({"id":1,"op":"socket","netns":{"path":"relative"},"socket":{}})",
         ErrorCode::invalid_request, "netns.path: expected an absolute path"},
        {R"({"id":1,"op":"socket","netns":{"fd":1},"socket":{}})", ErrorCode::invalid_request,
         "netns.fd: out of range (0 to 0)"},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"socket":{"type":"stream"}})",
         ErrorCode::invalid_request, "socket: missing field \"family\""},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"socket":{"family":"ax25","type":"stream"}})",
         ErrorCode::unsupported, "socket.family: unknown family \"ax25\""},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"socket":{"family":"inet","type":true}})",
         ErrorCode::invalid_request, "socket.type: expected an integer, got a boolean"},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"sockets":[{"family":"inet","type":"stream"},
            {"family":"inet","type":"stream","protocol":"route"}]})",
         ErrorCode::unsupported, "sockets[1].protocol: unknown protocol for family inet \"route\""},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"socket":{"family":"inet","type":"stream","bnid":1}})",
         ErrorCode::invalid_request, "socket: unknown field \"bnid\""},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"socket":{"family":"inet","type":"stream",
            "options":{"reuseaddr":1}}})",
         ErrorCode::invalid_request, "socket.options.reuseaddr: expected a boolean, got a number"},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"socket":{"family":"inet","type":"stream",
            "options":{"fastopen":true}}})",
         ErrorCode::unsupported, "socket.options: unknown field \"fastopen\""},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"socket":{"family":"inet","type":"stream",
            "bind":"localhost:80"}})",
         ErrorCode::invalid_request,
         "socket.bind: invalid inet address \"localhost:80\": expected an IPv4 address, as in "
         "127.0.0.1:8080"},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"socket":{"family":"inet","type":"stream","count":0}})",
         ErrorCode::invalid_request, "socket.count: out of range (1 to 253)"},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"sockets":[{"family":"inet","type":"stream","count":200},
            {"family":"inet","type":"stream","count":54}]})",
         ErrorCode::limit, "sockets: asks for 254 sockets; at most 253 in one request"},
        {R"({"id":1,"op":"socket","netns":{"name":"a"},"socket":{"family":"inet","type":"stream",
            "listen":5,"connect":"1.2.3.4:5"}})",
         ErrorCode::invalid_request, "socket: \"listen\" and \"connect\" exclude each other"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.input);
        auto e = decode_bad(c.input);
        CHECK(e.error.code == c.code);
        CHECK(e.error.message == c.message);
    }
    CHECK(decode_bad(R"({"id":9,"op":"fly"})").id == 9u);
    CHECK_FALSE(decode_bad("{").id.has_value());
}

TEST_CASE("deep nesting and oversized messages are refused before parsing") {
    std::string deep =
        R"({"id":1,"op":"ping","x":)" + std::string(10000, '[') + std::string(10000, ']') + "}";
    auto e = decode_bad(deep);
    CHECK(e.error.code == ErrorCode::invalid_request);
    CHECK(e.error.message == "JSON nested deeper than 16 levels");

    std::string big = R"({"id":1,"op":"ping","pad":")" + std::string(max_message_size, 'x') + "\"}";
    CHECK(decode_bad(big).error.code == ErrorCode::limit);
}

TEST_CASE("replies round-trip for every operation") {
    Reply hello{1, HelloReply{1, "0.1.0", {"socket"}}};
    auto h = decode_reply(encode_reply(hello), Op::hello);
    REQUIRE(h);
    CHECK(h->id == 1u);
    CHECK(std::get<HelloReply>(h->body).daemon_version == "0.1.0");

    SocketReply sockets;
    sockets.sockets.push_back({AF_INET6, SOCK_STREAM, IPPROTO_TCP, "[::1]:80"});
    auto s = decode_reply(encode_reply({2, sockets}), Op::socket);
    REQUIRE(s);
    auto& info = std::get<SocketReply>(s->body).sockets.at(0);
    CHECK(info.family == AF_INET6);
    CHECK(info.local == "[::1]:80");

    NamespacesReply ns;
    ns.namespaces.push_back({4, 4026531840, {"a", "b"}, 77, "ready", 3, 9});
    auto n = decode_reply(encode_reply({3, ns}), Op::namespaces);
    REQUIRE(n);
    CHECK(std::get<NamespacesReply>(n->body).namespaces.at(0).names.size() == 2);
    CHECK(std::get<NamespacesReply>(n->body).namespaces.at(0).worker_pid == 77);

    StatsReply st;
    st.requests = 10;
    st.errors["not_found"] = 2;
    auto t = decode_reply(encode_reply({4, st}), Op::stats);
    REQUIRE(t);
    CHECK(std::get<StatsReply>(t->body).errors.at("not_found") == 2);

    auto err = decode_reply(encode_reply({5, make_error(ErrorCode::kernel, "bind: in use", 98)}),
                            Op::socket);
    REQUIRE(err);
    auto& e = std::get<Error>(err->body);
    CHECK(e.code == ErrorCode::kernel);
    CHECK(e.sys_errno == 98);
    CHECK(e.message == "bind: in use");

    auto json =
        nlohmann::json::parse(encode_reply({std::nullopt, make_error(ErrorCode::limit, "x")}));
    CHECK(json["id"].is_null());
    CHECK(json["ok"] == false);
    CHECK(json["error"]["code"] == "limit");
    CHECK_FALSE(json["error"].contains("errno"));
}

TEST_CASE("a namespaces request's cursor and limit, and a reply's next cursor, round-trip") {
    const NamespacesCursor cursors[] = {
        {4, 4026532176, std::nullopt},
        {0, 0, std::nullopt},
        {UINT64_MAX, UINT64_MAX, std::nullopt},
        {4, 4026532176, "blue"},
        // Any bytes a file name may hold, the longest a name may be.
        {4, 7, "a:b\"c\\d\n\x01\xff\xc3\xa9 e"},
        {4, 7, std::string(max_netns_name_length, '\xfe')},
    };
    for (const auto& cursor : cursors) {
        CAPTURE(cursor.ino);
        Request r;
        r.id = 6;
        r.op = Op::namespaces;
        r.cursor = cursor;
        r.limit = 50;
        auto back = decode_ok(encode_request(r));
        CHECK(back.op == Op::namespaces);
        CHECK(back.cursor == cursor);
        CHECK(back.limit == 50u);

        NamespacesReply page;
        page.namespaces.push_back({4, 4026531840, {"a", "b"}, 77, "ready", 3, 9});
        page.next_cursor = cursor;
        auto reply = decode_reply(encode_reply({6, page}), Op::namespaces);
        REQUIRE(reply);
        CHECK(std::get<NamespacesReply>(reply->body).next_cursor == cursor);
    }

    // Neither field is needed; the last page has no next cursor.
    auto first = decode_ok(R"({"id":6,"op":"namespaces"})");
    CHECK_FALSE(first.cursor);
    CHECK_FALSE(first.limit);
    CHECK(decode_ok(R"({"id":6,"op":"namespaces","limit":1000})").limit == 1000u);
    auto last = nlohmann::json::parse(encode_reply({6, NamespacesReply{}}));
    CHECK_FALSE(last.contains("next_cursor"));
    CHECK_FALSE(last.contains("truncated"));
    auto decoded = decode_reply(last.dump(), Op::namespaces);
    REQUIRE(decoded);
    CHECK_FALSE(std::get<NamespacesReply>(decoded->body).next_cursor);
}

TEST_CASE("a cursor or a limit nsbrokerd did not give is refused, naming the field") {
    const std::string not_a_cursor =
        "cursor: not a cursor that nsbrokerd gave (send back a reply's \"next_cursor\" as it came)";
    const char* bad_cursors[] = {
        "",         "blue",   "4",        "4:",      ":4",   "4:5:",
        "4:5:6",    "4:5:zz", "4:5:ABCD", "04:5",    "4:05", "-4:5",
        "+4:5",     " 4:5",   "4:5 ",     "4:5:6:7", "4;5",  "18446744073709551616:5",
        "4:5:2f",   // "/"
        "4:5:2e",   // "."
        "4:5:2e2e", // ".."
        "4:5:6100", // a NUL
    };
    for (const char* cursor : bad_cursors) {
        CAPTURE(cursor);
        auto e =
            decode_bad(std::string(R"({"id":6,"op":"namespaces","cursor":")") + cursor + "\"}");
        CHECK(e.id == 6u);
        CHECK(e.error.code == ErrorCode::invalid_request);
        CHECK(e.error.message == not_a_cursor);
    }
    // A name longer than any file name, and a cursor as long as a request:
    // refused without repeating it.
    std::string hex_256(2 * (max_netns_name_length + 1), 'a');
    CHECK(
        decode_bad(R"({"id":6,"op":"namespaces","cursor":"4:5:)" + hex_256 + "\"}").error.message ==
        not_a_cursor);
    std::string long_cursor(60000, '1');
    CHECK(
        decode_bad(R"({"id":6,"op":"namespaces","cursor":")" + long_cursor + "\"}").error.message ==
        not_a_cursor);

    const std::pair<const char*, const char*> bad_fields[] = {
        {R"("cursor":45)", "cursor: expected a string, got a number"},
        {R"("cursor":null)", "cursor: expected a string, got null"},
        {R"("cursor":{"dev":4,"ino":5})", "cursor: expected a string, got an object"},
        {R"("limit":0)", "limit: out of range (1 to 1000)"},
        {R"("limit":1001)", "limit: out of range (1 to 1000)"},
        {R"("limit":-1)", "limit: out of range (1 to 1000)"},
        {R"("limit":18446744073709551615)", "limit: out of range (1 to 1000)"},
        {R"("limit":"10")", "limit: expected an integer, got a string"},
        {R"("limit":2.5)", "limit: expected an integer, got a number"},
        {R"("offset":10)", "unknown field \"offset\""},
    };
    for (const auto& [field, message] : bad_fields) {
        CAPTURE(field);
        auto e = decode_bad(std::string(R"({"id":6,"op":"namespaces",)") + field + "}");
        CHECK(e.error.code == ErrorCode::invalid_request);
        CHECK(e.error.message == message);
    }
    // Only a namespaces request pages.
    CHECK(decode_bad(R"({"id":6,"op":"stats","cursor":"4:5"})").error.message ==
          "unknown field \"cursor\"");
    CHECK(decode_bad(R"({"id":6,"op":"ping","limit":5})").error.message ==
          "unknown field \"limit\"");

    // A client holds a reply's cursor to the same form.
    auto reply =
        decode_reply(R"({"id":6,"ok":true,"namespaces":[],"next_cursor":"4:05"})", Op::namespaces);
    REQUIRE_FALSE(reply);
    CHECK(reply.error().message ==
          "next_cursor: not a cursor that nsbrokerd gave (send back a reply's \"next_cursor\" as "
          "it came)");
}

TEST_CASE("a namespaces reply is no larger than its entries' sizes and the overhead say") {
    NamespacesReply page;
    std::size_t entries = 0;
    // Names that JSON spells longer than their bytes: quotes, control
    // characters, bytes that are not UTF-8.
    for (const std::string& name :
         {std::string("plain"), std::string(255, '"'), std::string(255, '\x01'),
          std::string(255, '\xff'), std::string("\xc3\xa9t\xc3\xa9")}) {
        page.namespaces.push_back({UINT64_MAX,
                                   UINT64_MAX,
                                   {name, name + "2"},
                                   INT32_MAX,
                                   "starting",
                                   UINT64_MAX,
                                   UINT64_MAX});
        entries += namespace_entry_size(page.namespaces.back());
    }
    page.next_cursor = NamespacesCursor{UINT64_MAX, UINT64_MAX, std::string(255, 'x')};
    CHECK(encode_reply({UINT64_MAX, page}).size() <= namespaces_reply_overhead() + entries);
    CHECK(encode_reply({UINT64_MAX, NamespacesReply{}}).size() <= namespaces_reply_overhead());
    CHECK(namespaces_reply_overhead() < 1024);
}

TEST_CASE("every example in PROTOCOL.md decodes as the daemon and the client read it") {
    std::ifstream doc(NSBROKER_PROTOCOL_MD);
    REQUIRE(doc.good());
    auto json_part = [](const std::string& line) {
        std::string text = line.substr(2);
        auto end = text.rfind('}');
        return end == std::string::npos ? text : text.substr(0, end + 1);
    };
    std::optional<std::string> request;
    // A request after "on the channel:" goes to a worker on a direct channel.
    bool on_channel = false;
    int pairs = 0;
    for (std::string line; std::getline(doc, line);) {
        if (line == "on the channel:") {
            on_channel = true;
        } else if (line.starts_with("> ")) {
            request = json_part(line);
        } else if (line.starts_with("< ") && request) {
            CAPTURE(*request);
            auto reply_json = nlohmann::json::parse(json_part(line));
            auto decoded = on_channel ? decode_channel_request(*request) : decode_request(*request);
            on_channel = false;
            if (auto* bad = std::get_if<RequestError>(&decoded)) {
                // The codec refuses exactly what the daemon answered with an error.
                CHECK(reply_json["ok"] == false);
                CHECK(reply_json["error"]["code"] == std::string(to_string(bad->error.code)));
                CHECK(reply_json["error"]["message"] == bad->error.message);
            } else {
                auto reply = decode_reply(json_part(line), std::get<Request>(decoded).op);
                CHECK_MESSAGE(reply, (reply ? "" : reply.error().message));
            }
            ++pairs;
            request.reset();
        }
    }
    CHECK(pairs >= 10);
}

TEST_CASE("socket replies round-trip with odd addresses and numeric families") {
    SocketReply r;
    r.sockets.push_back({AF_UNIX, SOCK_STREAM, 0, "/tmp/with \"quotes\"\n and \\ slashes"});
    r.sockets.push_back({AF_UNIX, SOCK_DGRAM, 0, std::string("@abstract\0name", 14)});
    r.sockets.push_back({40, 5, 0, ""});
    r.sockets.push_back({AF_INET6, SOCK_RAW, IPPROTO_ICMPV6, "[::1]:0"});
    std::string bytes = encode_reply({7, r});
    CHECK(nlohmann::json::accept(bytes));
    auto back = decode_reply(bytes, Op::socket);
    REQUIRE(back);
    CHECK(back->id == 7u);
    const auto& list = std::get<SocketReply>(back->body).sockets;
    REQUIRE(list.size() == 4);
    CHECK(list[0].local == r.sockets[0].local);
    CHECK(list[1].local == r.sockets[1].local);
    CHECK(list[2].family == 40);
    CHECK(list[2].type == 5);
    CHECK(list[3].protocol == IPPROTO_ICMPV6);
}

TEST_CASE("socket replies outside the common shape still decode, or fail precisely") {
    // Key order, an unknown extra field and an error all leave the fast path.
    auto reordered = decode_reply(
        R"({"sockets":[{"type":"dgram","protocol":17,"family":"inet","local":"","extra":1}],"ok":true,"id":3})",
        Op::socket);
    REQUIRE(reordered);
    CHECK(std::get<SocketReply>(reordered->body).sockets.at(0).protocol == 17);
    auto error = decode_reply(
        R"({"id":4,"ok":false,"error":{"code":"kernel","errno":24,"message":"m"}})", Op::socket);
    REQUIRE(error);
    CHECK(std::get<Error>(error->body).sys_errno == 24);
    auto missing = decode_reply(
        R"({"id":5,"ok":true,"sockets":[{"family":"inet","type":"dgram"}]})", Op::socket);
    REQUIRE_FALSE(missing);
    CHECK(missing.error().message == "sockets[0]: missing field \"protocol\"");
    auto wrong = decode_reply(
        R"({"id":6,"ok":true,"sockets":[{"family":"inet","type":"dgram","protocol":"x"}]})",
        Op::socket);
    REQUIRE_FALSE(wrong);
    CHECK(wrong.error().message == "sockets[0].protocol: expected an integer, got a string");
}

TEST_CASE("a key repeated in any object of a request is refused, with the object's path") {
    struct Case {
        const char* input;
        const char* message;
    };
    const Case cases[] = {
        {R"({"id":3,"op":"ping","op":"stats"})", "duplicate key \"op\""},
        {R"({"id":3,"op":"socket","netns":{"name":"a","name":"b"},
            "socket":{"family":"inet","type":"stream"}})",
         "netns: duplicate key \"name\""},
        {R"({"id":3,"op":"socket","netns":{"name":"a"},"sockets":[{"family":"inet","type":"stream"},
            {"family":"inet","type":"stream","type":"dgram"}]})",
         "sockets[1]: duplicate key \"type\""},
        {R"({"id":3,"op":"socket","netns":{"name":"a"},"socket":{"family":"inet","type":"stream",
            "flags":["nonblock","cloexec"],"options":{"mark":1,"reuseaddr":true,"mark":2}}})",
         "socket.options: duplicate key \"mark\""},
        {R"({"id":3,"op":"socket","netns":{"name":"a"},"sockets":[{"family":"inet","type":"stream",
            "options":{"nodelay":true,"nodelay":false}}]})",
         "sockets[0].options: duplicate key \"nodelay\""},
        {R"({"id":3,"op":"socket","netns":{"name":"a"},"socket":{"family":"inet","type":"stream"},
            "socket":{"family":"inet6","type":"stream"}})",
         "duplicate key \"socket\""},
    };
    for (const auto& c : cases) {
        CAPTURE(c.input);
        auto e = decode_bad(c.input);
        CHECK(e.id == 3u);
        CHECK(e.error.code == ErrorCode::invalid_request);
        CHECK(e.error.message == c.message);
    }

    // Which of two ids the client waits for cannot be known.
    auto twice = decode_bad(R"({"id":1,"op":"ping","id":2})");
    CHECK(twice.error.message == "duplicate key \"id\"");
    CHECK_FALSE(twice.id.has_value());

    // A repeat is refused even where the value would otherwise be ignored or wrong.
    CHECK(decode_bad(R"({"id":4,"op":"ping","extra":1,"extra":2})").error.message ==
          "duplicate key \"extra\"");
    CHECK(decode_bad(R"({"id":4,"op":"ping","x":[{"a":1},{"b":[{"c":1,"c":1}]}]})").error.message ==
          "x[1].b[0]: duplicate key \"c\"");
    // Malformed JSON is still reported as such.
    CHECK(decode_bad(R"({"id":4,"op":"ping","op":"ping")").error.message == "malformed JSON");
}

TEST_CASE("requests whose objects share key names still decode") {
    auto r = decode_ok(R"({"id":8,"op":"socket","netns":{"name":"a"},"sockets":[
        {"family":"inet","type":"stream","options":{"mark":1,"nodelay":true}},
        {"family":"inet","type":"stream","flags":["nonblock","nonblock"],"options":{"mark":2}}]})");
    CHECK(r.id == 8);
    REQUIRE(r.specs.size() == 2);
    CHECK(r.specs[0].options.mark == 1u);
    CHECK(r.specs[1].options.mark == 2u);
    CHECK(r.specs[1].nonblock);
    CHECK(decode_ok(R"({"op":"stats","id":9})").op == Op::stats);
    // Colons and quotes inside strings are not members.
    r = decode_ok(R"({"id":10,"op":"socket","netns":{"path":"/run/netns/a:b"},
        "socket":{"family":"unix","type":"stream","bind":"/tmp/x\":{\"y\":1"}})");
    CHECK(r.specs.at(0).bind == "/tmp/x\":{\"y\":1");
}

TEST_CASE("a key repeated in a reply is refused") {
    // The reply, the operation it answers, and the message of its error.
    const std::tuple<const char*, Op, const char*> cases[] = {
        // The shape the socket fast path reads, with a repeat at each level.
        {R"({"id":1,"ok":true,"ok":true,"sockets":[]})", Op::socket, "duplicate key \"ok\""},
        {R"({"id":1,"ok":true,"sockets":[{"family":"inet","type":"dgram","protocol":17,"local":""},
            {"family":"inet","type":"dgram","protocol":17,"local":"a","local":"b"}]})",
         Op::socket, "sockets[1]: duplicate key \"local\""},
        {R"({"id":1,"ok":true,"sockets":[{"family":"inet","family":"inet","type":"dgram","protocol":17}]})",
         Op::socket, "sockets[0]: duplicate key \"family\""},
        {R"({"id":1,"ok":true,"sockets":[],"sockets":[]})", Op::socket,
         "duplicate key \"sockets\""},
        {R"({"id":1,"ok":false,"error":{"code":"kernel","code":"limit","message":"m"}})",
         Op::socket, "error: duplicate key \"code\""},
        {R"({"id":1,"ok":true,"protocol":1,"version":"0.1.0","version":"0.2.0","features":[]})",
         Op::hello, "duplicate key \"version\""},
        {R"({"id":1,"ok":true,"next_cursor":"1:3","namespaces":[
            {"dev":1,"ino":2,"names":[],"worker_pid":0,"state":"idle","requests":0,"sockets":0},
            {"dev":1,"ino":3,"names":["a","b"],"worker_pid":0,"state":"idle","state":"ready",
             "requests":0,"sockets":0}]})",
         Op::namespaces, "namespaces[1]: duplicate key \"state\""},
        {R"({"id":1,"ok":true,"stats":{"uptime_seconds":1,"requests":0,"sockets":0,"clients":0,
            "workers_spawned":0,"workers_live":0,"workers_exited":0,
            "errors":{"kernel":1,"limit":2,"kernel":3}}})",
         Op::stats, "stats.errors: duplicate key \"kernel\""},
    };
    for (const auto& [input, op, message] : cases) {
        CAPTURE(input);
        auto reply = decode_reply(input, op);
        REQUIRE_FALSE(reply);
        CHECK(reply.error().code == ErrorCode::invalid_request);
        CHECK(reply.error().message == message);
        // The id still reaches the caller waiting for this reply.
        CHECK(reply_id(input) == 1u);
    }
    CHECK_FALSE(reply_id(R"({"id":1,"ok":true,"id":2,"sockets":[]})").has_value());
}

TEST_CASE("a channel request reads the same by the quick reader as by the full decoder") {
    // The library's own encodings, which the quick reader takes.
    std::vector<std::string> inputs;
    auto add = [&](const std::vector<SocketSpec>& specs) {
        Request r{11, Op::socket, std::nullopt, specs, false};
        inputs.push_back(encode_request(r));
    };
    SocketSpec udp;
    udp.family = AF_INET;
    udp.type = SOCK_DGRAM;
    SocketSpec listener;
    listener.family = AF_INET6;
    listener.type = SOCK_STREAM;
    listener.protocol = IPPROTO_TCP;
    listener.nonblock = true;
    listener.bind = "[::1]:0";
    listener.listen = 16;
    SocketSpec connecting;
    connecting.family = AF_INET;
    connecting.type = SOCK_STREAM;
    connecting.connect = "127.0.0.1:80";
    SocketSpec route;
    route.family = AF_NETLINK;
    route.type = SOCK_RAW;
    route.protocol = NETLINK_ROUTE;
    route.count = 253;
    add({udp});
    add({listener, connecting});
    add({route});
    add({udp, udp, listener});
    // Everything else goes to the full decoder, and reads or fails as it says.
    for (
        const char* text : {
            R"({"id":1,"op":"socket","sockets":[{"type":"dgram","family":"inet"}],"netns":{"name":"a"}})",
            R"({"id":1,"op":"socket","sockets":[{"family":2,"type":"dgram"}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","protocol":"udp"}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","count":0}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","count":254}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","count":200},
                 {"family":"inet","type":"dgram","count":54}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","listen":65536}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","protocol":70000}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","type":"stream"}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram"}],"id":2})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"stream","listen":1,
                 "connect":"127.0.0.1:1"}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","bind":"nowhere"}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","flags":["x"]}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","flags":[1]}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","options":{}}]})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet"}]})",
            R"({"id":1,"op":"socket","sockets":[]})",
            R"({"id":1,"op":"ping","sockets":[{"family":"inet","type":"dgram"}]})",
            R"({"id":-1,"op":"socket","sockets":[{"family":"inet","type":"dgram"}]})",
            R"({"op":"socket","sockets":[{"family":"inet","type":"dgram"}]})",
            R"({"id":1,"op":"socket","socket":{"family":"inet","type":"dgram"}})",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram"}]} x)",
            R"({"id":1,"op":"socket","sockets":[{"family":"inet","type":"dgram","bind":"\u00e9"}]})",
        }) {
        inputs.emplace_back(text);
    }
    for (const auto& input : inputs) {
        CAPTURE(input);
        auto quick = decode_channel_request(input);
        auto full = decode_channel_request_in_full(input);
        REQUIRE(quick.index() == full.index());
        if (const auto* r = std::get_if<Request>(&quick)) {
            const auto& f = std::get<Request>(full);
            CHECK(r->id == f.id);
            CHECK(r->op == f.op);
            CHECK(r->specs == f.specs);
            CHECK_FALSE(r->netns.has_value());
            CHECK_FALSE(r->channel);
        } else {
            const auto& q = std::get<RequestError>(quick);
            const auto& f = std::get<RequestError>(full);
            CHECK(q.id == f.id);
            CHECK(q.error.code == f.error.code);
            CHECK(q.error.message == f.error.message);
        }
    }
    // The library's own requests are read, whole.
    auto first = decode_channel_request(inputs[1]);
    REQUIRE(std::holds_alternative<Request>(first));
    const auto& specs = std::get<Request>(first).specs;
    REQUIRE(specs.size() == 2);
    CHECK(specs[0] == listener);
    CHECK(specs[1] == connecting);
}
