// The protocol's vocabularies: the socket option table against PROTOCOL.md
// and the schema, typed values into options, the check of a whole spec,
// the text grammar of namespace references, and the name tables.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "nsbroker/codec.hpp"
#include "nsbroker/netns_reference.hpp"
#include "nsbroker/socket_option_table.hpp"
#include "nsbroker/typed_spec.hpp"

using namespace nsbroker;
using namespace nsbroker::proto;

namespace {

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    REQUIRE_MESSAGE(in.good(), path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

std::string trim(std::string_view text) {
    auto begin = text.find_first_not_of(' ');
    auto end = text.find_last_not_of(' ');
    return begin == std::string_view::npos ? std::string()
                                           : std::string(text.substr(begin, end - begin + 1));
}

// The cells of each row of the Markdown table whose header line is header.
std::vector<std::vector<std::string>> markdown_table(const std::string& doc,
                                                     const std::string& header) {
    std::vector<std::vector<std::string>> rows;
    std::istringstream lines(doc);
    bool inside = false;
    for (std::string line; std::getline(lines, line);) {
        if (!inside) {
            if (line == header) {
                inside = true;
                std::getline(lines, line); // the | --- | line
            }
            continue;
        }
        if (!line.starts_with("|")) {
            break;
        }
        std::vector<std::string> cells;
        std::string_view rest(line);
        rest.remove_prefix(1);
        for (auto bar = rest.find('|'); bar != std::string_view::npos; bar = rest.find('|')) {
            cells.push_back(trim(rest.substr(0, bar)));
            rest.remove_prefix(bar + 1);
        }
        rows.push_back(std::move(cells));
    }
    return rows;
}

bool is_boolean(const SocketOptionRow& row) {
    return std::holds_alternative<std::optional<bool> SocketOptions::*>(row.field);
}
bool is_string(const SocketOptionRow& row) {
    return std::holds_alternative<std::optional<std::string> SocketOptions::*>(row.field);
}

// A value the row accepts, as a caller would give it.
TypedValue some_value(const SocketOptionRow& row) {
    if (is_boolean(row)) {
        return true;
    }
    if (is_string(row)) {
        return std::string("eth0");
    }
    return row.max;
}

SocketSpec inet_stream() {
    SocketSpec s;
    s.family = AF_INET;
    s.type = SOCK_STREAM;
    return s;
}

} // namespace

TEST_CASE("PROTOCOL.md lists every socket option of the table, in its order, and no other") {
    auto rows =
        markdown_table(read_file(NSBROKER_PROTOCOL_MD), "| option | value | setsockopt | grant |");
    REQUIRE(rows.size() == std::size(socket_option_table));
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto& row = socket_option_table[i];
        const auto& cells = rows[i];
        CAPTURE(row.name);
        REQUIRE(cells.size() == 4);
        CHECK(cells[0] == "`" + std::string(row.name) + "`");
        if (is_boolean(row)) {
            CHECK(cells[1] == "boolean");
        } else if (is_string(row)) {
            CHECK(cells[1] ==
                  "interface name, 1 to " + std::to_string(max_interface_name_length) + " bytes");
        } else {
            CHECK(cells[1].starts_with("integer, " + std::to_string(row.min) + " to " +
                                       std::to_string(row.max)));
        }
        if (row.grant) {
            std::string grant = "`" + std::string(to_string(*row.grant)) + "`";
            CHECK(cells[3] == (is_boolean(row) ? grant + ", when true" : grant));
        } else {
            CHECK(cells[3].empty());
        }
    }
}

TEST_CASE("the schema's socket options are the table's") {
    std::string protocol_md = NSBROKER_PROTOCOL_MD;
    std::string schema_path =
        protocol_md.substr(0, protocol_md.rfind('/')) + "/schema/nsbroker.schema.json";
    auto schema = nlohmann::json::parse(read_file(schema_path));
    const auto& options = schema["$defs"]["socket_spec"]["properties"]["options"];
    CHECK(options["additionalProperties"] == false);
    const auto& properties = options["properties"];
    CHECK(properties.size() == std::size(socket_option_table));
    for (const auto& row : socket_option_table) {
        CAPTURE(row.name);
        REQUIRE(properties.contains(std::string(row.name)));
        const auto& p = properties[std::string(row.name)];
        if (is_boolean(row)) {
            CHECK(p["type"] == "boolean");
        } else if (is_string(row)) {
            CHECK(p["type"] == "string");
            CHECK(p["minLength"] == 1);
            CHECK(p["maxLength"] == max_interface_name_length);
        } else {
            CHECK(p["type"] == "integer");
            CHECK(p["minimum"] == row.min);
            CHECK(p["maximum"] == row.max);
        }
    }
}

TEST_CASE("every socket option round-trips through the codec under its name") {
    for (const auto& row : socket_option_table) {
        CAPTURE(row.name);
        Request r;
        r.id = 1;
        r.op = Op::socket;
        r.netns = NetnsRef::by_name("blue");
        SocketSpec s = inet_stream();
        REQUIRE_FALSE(set_socket_option(s.options, row.name, some_value(row)));
        CHECK(option_is_set(row, s.options));
        r.specs = {s};
        std::string bytes = encode_request(r);
        auto sent = nlohmann::json::parse(bytes)["sockets"][0]["options"];
        CHECK(sent.size() == 1);
        CHECK(sent.contains(std::string(row.name)));
        auto back = decode_request(bytes);
        REQUIRE(std::holds_alternative<Request>(back));
        CHECK(std::get<Request>(back).specs.at(0) == s);
    }
}

TEST_CASE("an option needs its grant when given, and a boolean only when true") {
    for (const auto& row : socket_option_table) {
        CAPTURE(row.name);
        SocketOptions o;
        CHECK_FALSE(option_needs_grant(row, o));
        REQUIRE_FALSE(set_socket_option(o, row.name, some_value(row)));
        CHECK(option_needs_grant(row, o) == row.grant.has_value());
        if (is_boolean(row)) {
            REQUIRE_FALSE(set_socket_option(o, row.name, false));
            CHECK_FALSE(option_needs_grant(row, o));
        }
    }
}

TEST_CASE("setting an option from a typed value refuses what does not fit, at the option") {
    struct Case {
        const char* name;
        TypedValue value;
        ErrorCode code;
        const char* field;
        const char* message;
    };
    const Case cases[] = {
        {"fastopen", true, ErrorCode::unsupported, "", "unknown field \"fastopen\""},
        {"reuseaddr", std::int64_t{1}, ErrorCode::invalid_request, "reuseaddr",
         "expected a boolean, got a number"},
        {"nodelay", std::string("yes"), ErrorCode::invalid_request, "nodelay",
         "expected a boolean, got a string"},
        {"mark", std::int64_t{-1}, ErrorCode::invalid_request, "mark",
         "out of range (0 to 4294967295)"},
        {"mark", std::uint64_t{1} << 40, ErrorCode::invalid_request, "mark",
         "out of range (0 to 4294967295)"},
        {"rcvbuf", OtherValue{"null"}, ErrorCode::invalid_request, "rcvbuf",
         "expected an integer, got null"},
        {"sndbuf", std::uint64_t{1} << 31, ErrorCode::invalid_request, "sndbuf",
         "out of range (0 to 1073741823)"},
        {"bindtodevice", true, ErrorCode::invalid_request, "bindtodevice",
         "expected a string, got a boolean"},
        {"bindtodevice", std::string(), ErrorCode::invalid_request, "bindtodevice",
         "expected an interface name"},
        {"bindtodevice", std::string(16, 'e'), ErrorCode::invalid_request, "bindtodevice",
         "expected an interface name"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.name);
        CAPTURE(c.message);
        SocketOptions o;
        auto problem = set_socket_option(o, c.name, c.value);
        REQUIRE(problem);
        CHECK(problem->error.code == c.code);
        CHECK(problem->field == c.field);
        CHECK(problem->error.message == c.message);
        CHECK(o == SocketOptions{});
    }
    SocketOptions o;
    auto bad = set_socket_option(o, "mark", std::string("x"));
    REQUIRE(bad);
    CHECK(bad->at("options").message == "options.mark: expected an integer, got a string");
    auto unknown = set_socket_option(o, "nope", true);
    REQUIRE(unknown);
    CHECK(unknown->at("options").message == "options: unknown field \"nope\"");
}

TEST_CASE("a whole spec is checked field by field, and the first fault is named") {
    CHECK_FALSE(check_socket_spec(inet_stream()));
    struct Case {
        std::function<void(SocketSpec&)> change;
        ErrorCode code;
        const char* message; // as FieldError::at("") spells it
    };
    const Case cases[] = {
        {[](SocketSpec& s) { s.family = 0; }, ErrorCode::invalid_request, "family: must not be 0"},
        {[](SocketSpec& s) { s.family = 256; }, ErrorCode::invalid_request,
         "family: out of range (0 to 255)"},
        {[](SocketSpec& s) { s.type = 0; }, ErrorCode::invalid_request, "type: must not be 0"},
        {[](SocketSpec& s) { s.type = -1; }, ErrorCode::invalid_request,
         "type: out of range (0 to 15)"},
        {[](SocketSpec& s) { s.protocol = 65536; }, ErrorCode::invalid_request,
         "protocol: out of range (0 to 65535)"},
        {[](SocketSpec& s) { s.options.rcvbuf = -1; }, ErrorCode::invalid_request,
         "options.rcvbuf: out of range (0 to 1073741823)"},
        {[](SocketSpec& s) { s.options.bindtodevice = "a-name-too-long-0"; },
         ErrorCode::invalid_request, "options.bindtodevice: expected an interface name"},
        {[](SocketSpec& s) { s.bind = "localhost:80"; }, ErrorCode::invalid_request,
         "bind: invalid inet address \"localhost:80\": expected an IPv4 address, as in "
         "127.0.0.1:8080"},
        {[](SocketSpec& s) { s.listen = 65536; }, ErrorCode::invalid_request,
         "listen: out of range (0 to 65535)"},
        {[](SocketSpec& s) { s.connect = "1.2.3.4"; }, ErrorCode::invalid_request,
         "connect: invalid inet address \"1.2.3.4\": expected ADDR:PORT"},
        {[](SocketSpec& s) {
             s.family = AF_PACKET;
             s.type = SOCK_RAW;
             s.connect = "eth0";
         },
         ErrorCode::unsupported, "connect: packet sockets cannot connect"},
        {[](SocketSpec& s) {
             s.listen = 5;
             s.connect = "1.2.3.4:5";
         },
         ErrorCode::invalid_request, "\"listen\" and \"connect\" exclude each other"},
        {[](SocketSpec& s) { s.count = 0; }, ErrorCode::invalid_request,
         "count: out of range (1 to 253)"},
        {[](SocketSpec& s) { s.count = 254; }, ErrorCode::invalid_request,
         "count: out of range (1 to 253)"},
        // Two faults: the one in the earlier field is named.
        {[](SocketSpec& s) {
             s.type = 0;
             s.count = 0;
         },
         ErrorCode::invalid_request, "type: must not be 0"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.message);
        SocketSpec s = inet_stream();
        c.change(s);
        auto problem = check_socket_spec(s);
        REQUIRE(problem);
        CHECK(problem->error.code == c.code);
        CHECK(problem->at("").message == c.message);
    }
}

TEST_CASE("the JSON decoder refuses a spec with the spec check's words, under the spec's path") {
    auto refused = [](const std::string& spec) {
        auto r = decode_request(R"({"id":1,"op":"socket","netns":{"name":"a"},"sockets":[)" + spec +
                                "]}");
        REQUIRE(std::holds_alternative<RequestError>(r));
        return std::get<RequestError>(r).error;
    };
    CHECK(refused(R"({"family":0,"type":"stream"})").message == "sockets[0].family: must not be 0");
    CHECK(refused(R"({"family":"inet","type":0})").message == "sockets[0].type: must not be 0");
    auto packet = refused(R"({"family":"packet","type":"raw","connect":"eth0"})");
    CHECK(packet.code == ErrorCode::unsupported);
    CHECK(packet.message == "sockets[0].connect: packet sockets cannot connect");
    CHECK(refused(R"({"family":"inet","type":"stream","options":{"bindtodevice":""}})").message ==
          "sockets[0].options.bindtodevice: expected an interface name");
    CHECK(refused(R"({"family":"inet","type":"stream","options":{"rcvbuf":1.5}})").message ==
          "sockets[0].options.rcvbuf: expected an integer, got a number");
    CHECK(refused(R"({"family":"inet","type":"stream","options":{"mark":null}})").message ==
          "sockets[0].options.mark: expected an integer, got null");
}

TEST_CASE("namespace references as text: one grammar") {
    struct Named {
        std::string text;
        NetnsRef::Kind kind;
    };
    const Named named[] = {
        {"blue", NetnsRef::Kind::name},
        {"/proc/1/ns/net", NetnsRef::Kind::path},
        // Relative paths are the caller's to resolve.
        {"ns/blue", NetnsRef::Kind::path},
    };
    for (const auto& n : named) {
        CAPTURE(n.text);
        auto ref = parse_netns_reference(n.text);
        REQUIRE(ref);
        CHECK(ref->kind == n.kind);
        CHECK(ref->text == n.text);
    }
    auto pid = parse_netns_reference("pid:42");
    REQUIRE(pid);
    CHECK(pid->kind == NetnsRef::Kind::pid);
    CHECK(pid->pid == 42);
    auto largest = parse_netns_reference("pid:" + std::to_string(pid_max_limit));
    REQUIRE(largest);
    CHECK(largest->pid == pid_max_limit);
    // A name may hold a colon; only "pid:" begins a process id.
    CHECK(parse_netns_reference("pid")->kind == NetnsRef::Kind::name);
    CHECK(parse_netns_reference("vrf:red")->kind == NetnsRef::Kind::name);

    struct Case {
        std::string text;
        std::string message;
    };
    const Case cases[] = {
        {"pid:", "\"pid:\": expected pid:N"},
        {"pid:0", "\"pid:0\": expected pid:N"},
        {"pid:x1", "\"pid:x1\": expected pid:N"},
        {"pid:-1", "\"pid:-1\": expected pid:N"},
        {"pid:4194305", "\"pid:4194305\": expected pid:N"},
        {"pid:99999999999999999999", "\"pid:99999999999999999999\": expected pid:N"},
        {"", "namespace name is empty"},
        {"..", "namespace name must not be \".\" or \"..\""},
        {std::string(256, 'a'), "namespace name longer than 255 bytes"},
        {std::string("a\0b", 3), "namespace name must be a single path component (no '/' or NUL)"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.text);
        auto r = parse_netns_reference(c.text);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == ErrorCode::invalid_request);
        CHECK(r.error().message == c.message);
    }

    CHECK(check_netns_path("/run/netns/blue"));
    CHECK_FALSE(check_netns_path("run/netns/blue"));
    auto too_long = check_netns_path("/" + std::string(max_netns_path_length, 'a'));
    REQUIRE_FALSE(too_long);
    CHECK(too_long.error().message == "expected an absolute path");
}

TEST_CASE("references describe themselves with the words of the protocol") {
    CHECK(NetnsRef::by_name("blue").describe() == "name:blue");
    CHECK(NetnsRef::by_path("/proc/1/ns/net").describe() == "path:/proc/1/ns/net");
    CHECK(NetnsRef::by_pid(42).describe() == "pid:42");
    CHECK(NetnsRef::by_fd().describe() == "fd");
    for (const auto& kind : netns_kind_names) {
        CHECK(netns_kind_names.value_of(kind.name) == kind.value);
    }
}

TEST_CASE("name tables read both ways, for every vocabulary") {
    CHECK(family_from_name("inet6") == AF_INET6);
    CHECK(family_name(AF_NETLINK) == "netlink");
    CHECK(family_name(99) == "99");
    CHECK_FALSE(family_from_name("ax25"));
    CHECK(type_from_name("seqpacket") == SOCK_SEQPACKET);
    CHECK(type_name(12) == "12");
    CHECK(protocol_from_name(AF_INET, "udp") == IPPROTO_UDP);
    CHECK_FALSE(protocol_from_name(AF_UNIX, "udp"));
    for (Grant g : all_grants) {
        CHECK(grant_from_name(to_string(g)) == g);
    }
    CHECK_FALSE(grant_from_name("root"));
    for (auto code :
         {ErrorCode::invalid_request, ErrorCode::not_a_netns, ErrorCode::io, ErrorCode::timeout}) {
        CHECK(error_code_from_string(to_string(code)) == code);
    }
    for (auto op : {Op::hello, Op::ping, Op::namespaces, Op::stats}) {
        auto bytes = encode_request(Request{1, op, {}, {}});
        auto back = decode_request(bytes);
        REQUIRE(std::holds_alternative<Request>(back));
        CHECK(std::get<Request>(back).op == op);
    }

    constexpr auto colours = name_table<int>({{"red", 1}, {"green", 2}, {"rot", 1}});
    static_assert(colours.size() == 3);
    static_assert(colours.value_of("green") == 2);
    static_assert(colours.name_of(1) == "red");
    static_assert(!colours.value_of("blue"));
    static_assert(!colours.name_of(3));
}
