// JSON encoding and strict decoding of requests and replies, and the strict
// JSON reading that the worker codec shares (json_codec.hpp).
#include "nsbroker/codec.hpp"

#include <linux/netlink.h>
#include <net/ethernet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "json_codec.hpp"
#include "nsbroker/address.hpp"
#include "nsbroker/name_table.hpp"
#include "nsbroker/netns_reference.hpp"
#include "nsbroker/socket_option_table.hpp"
#include "nsbroker/typed_spec.hpp"

namespace nsbroker::proto {

using namespace json_codec;

namespace {

// Nesting deeper than this is refused before parsing; no valid message nests
// more than four levels.
constexpr int max_json_depth = 16;

constexpr auto family_names = name_table<int>({
    {"unix", AF_UNIX},
    {"inet", AF_INET},
    {"inet6", AF_INET6},
    {"netlink", AF_NETLINK},
    {"packet", AF_PACKET},
});

constexpr auto type_names = name_table<int>({
    {"stream", SOCK_STREAM},
    {"dgram", SOCK_DGRAM},
    {"raw", SOCK_RAW},
    {"seqpacket", SOCK_SEQPACKET},
});

constexpr auto inet_protocols = name_table<int>({
    {"ip", 0},
    {"icmp", IPPROTO_ICMP},
    {"tcp", IPPROTO_TCP},
    {"udp", IPPROTO_UDP},
    {"icmpv6", IPPROTO_ICMPV6},
    {"sctp", IPPROTO_SCTP},
    {"udplite", IPPROTO_UDPLITE},
});

constexpr auto netlink_protocols = name_table<int>({
    {"route", NETLINK_ROUTE},
    {"usersock", NETLINK_USERSOCK},
    {"firewall", NETLINK_FIREWALL},
    {"sock_diag", NETLINK_SOCK_DIAG},
    {"nflog", NETLINK_NFLOG},
    {"xfrm", NETLINK_XFRM},
    {"selinux", NETLINK_SELINUX},
    {"iscsi", NETLINK_ISCSI},
    {"audit", NETLINK_AUDIT},
    {"fib_lookup", NETLINK_FIB_LOOKUP},
    {"connector", NETLINK_CONNECTOR},
    {"netfilter", NETLINK_NETFILTER},
    {"kobject_uevent", NETLINK_KOBJECT_UEVENT},
    {"generic", NETLINK_GENERIC},
    {"crypto", NETLINK_CRYPTO},
    {"rdma", NETLINK_RDMA},
});

constexpr auto packet_protocols = name_table<int>({
    {"all", ETH_P_ALL},
    {"ip", ETH_P_IP},
    {"ipv6", ETH_P_IPV6},
    {"arp", ETH_P_ARP},
    {"none", 0},
});

constexpr auto op_names = name_table<Op>({
    {"hello", Op::hello},
    {"ping", Op::ping},
    {"socket", Op::socket},
    {"namespaces", Op::namespaces},
    {"stats", Op::stats},
});

} // namespace

namespace json_codec {

[[noreturn]] void fail(ErrorCode code, const Path& where, const std::string& what) {
    std::string path = where.str();
    throw BadInput{make_error(code, path.empty() ? what : path + ": " + what)};
}

std::string type_of(const json& j) {
    switch (j.type()) {
    case json::value_t::null:
        return "null";
    case json::value_t::boolean:
        return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float:
        return "a number";
    case json::value_t::string:
        return "a string";
    case json::value_t::array:
        return "an array";
    case json::value_t::object:
        return "an object";
    default:
        return "an unknown value";
    }
}

} // namespace json_codec

namespace {

// A pass over the raw text before it is parsed. In valid JSON each ':'
// outside a string separates one object member from its key, so the text
// spells out exactly that many members; a tree that holds fewer has lost the
// earlier values of a repeated key.
struct TextScan {
    bool nesting_within_limit = true; // no deeper than max_json_depth
    std::size_t members = 0;
};

TextScan scan_text(std::string_view bytes) {
    TextScan scan;
    int depth = 0;
    bool in_string = false;
    bool escaped = false;
    for (char c : bytes) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == ':') {
            ++scan.members;
        } else if (c == '{' || c == '[') {
            if (++depth > max_json_depth) {
                scan.nesting_within_limit = false;
                return scan;
            }
        } else if (c == '}' || c == ']') {
            --depth;
        }
    }
    return scan;
}

std::size_t count_members(const json& j) {
    std::size_t n = j.is_object() ? j.size() : 0;
    if (j.is_structured()) {
        for (const json& value : j) {
            n += count_members(value);
        }
    }
    return n;
}

std::optional<std::uint64_t> peek_id(const json& j) {
    auto it = j.find("id");
    if (it != j.end() && it->is_number_unsigned()) {
        return it->get<std::uint64_t>();
    }
    if (it != j.end() && it->is_number_integer() && it->get<std::int64_t>() >= 0) {
        return static_cast<std::uint64_t>(it->get<std::int64_t>());
    }
    return std::nullopt;
}

// Watches a parse for the objects that repeat a key, to name the first one
// and its path. An object repeats a key when it ends with fewer members than
// keys were read, so the keys are searched only then. Parsing with a
// callback is slower, so only a message that the member count shows to
// repeat a key is parsed with this.
class RepeatedKeys {
  public:
    bool operator()(int /*depth*/, json::parse_event_t event, const json& parsed) {
        switch (event) {
        case json::parse_event_t::object_start:
            levels_.push_back({keys_.size(), 0, false});
            break;
        case json::parse_event_t::array_start:
            levels_.push_back({keys_.size(), 0, true});
            break;
        case json::parse_event_t::key:
            keys_.push_back(parsed.get_ref<const std::string&>());
            break;
        case json::parse_event_t::value:
            next_element();
            break;
        case json::parse_event_t::object_end:
            if (parsed.size() != keys_.size() - levels_.back().first_key) {
                found_repeat();
            }
            end_level();
            break;
        case json::parse_event_t::array_end:
            end_level();
            break;
        }
        return true;
    }

    // The first object found to repeat a key; objects are checked as they
    // end, innermost first.
    [[nodiscard]] const std::optional<Error>& error() const { return error_; }
    // Whether the message's own object repeats "id", which then has no one value.
    [[nodiscard]] bool id_repeated() const { return id_repeated_; }

  private:
    struct Level {
        std::size_t first_key;
        std::size_t index;
        bool is_array;
    };

    void next_element() {
        if (!levels_.empty() && levels_.back().is_array) {
            ++levels_.back().index;
        }
    }

    void end_level() {
        keys_.resize(levels_.back().first_key);
        levels_.pop_back();
        next_element();
    }

    void found_repeat() {
        std::set<std::string_view> seen;
        std::optional<std::string_view> repeated;
        bool id_twice = false;
        for (std::size_t i = levels_.back().first_key; i < keys_.size(); ++i) {
            if (!seen.insert(keys_[i]).second) {
                repeated = repeated.value_or(keys_[i]);
                id_twice = id_twice || keys_[i] == "id";
            }
        }
        if (levels_.size() == 1) {
            id_repeated_ = id_twice;
        }
        if (error_ || !repeated) {
            return;
        }
        // Spelt as Path::str() spells it: the key each enclosing object is
        // reading, or the index each enclosing array is at.
        std::string path;
        for (std::size_t i = 0; i + 1 < levels_.size(); ++i) {
            if (levels_[i].is_array) {
                path += "[" + std::to_string(levels_[i].index) + "]";
            } else {
                const std::string& key = keys_[levels_[i + 1].first_key - 1];
                path += path.empty() ? key : "." + key;
            }
        }
        std::string what = "duplicate key \"" + std::string(*repeated) + "\"";
        error_ = make_error(ErrorCode::invalid_request, path.empty() ? what : path + ": " + what);
    }

    std::vector<Level> levels_;
    std::vector<std::string> keys_;
    std::optional<Error> error_;
    bool id_repeated_ = false;
};

} // namespace

namespace json_codec {

json parse_object(std::string_view bytes, std::optional<std::uint64_t>* id) {
    if (bytes.size() > max_message_size) {
        fail(ErrorCode::limit, "",
             "message larger than " + std::to_string(max_message_size) + " bytes");
    }
    const TextScan scan = scan_text(bytes);
    if (!scan.nesting_within_limit) {
        fail(ErrorCode::invalid_request, "",
             "JSON nested deeper than " + std::to_string(max_json_depth) + " levels");
    }
    json j = json::parse(bytes.begin(), bytes.end(), nullptr, false);
    if (j.is_discarded()) {
        fail(ErrorCode::invalid_request, "", "malformed JSON");
    }
    if (!j.is_object()) {
        fail(ErrorCode::invalid_request, "", "expected a JSON object, got " + type_of(j));
    }
    RepeatedKeys repeats;
    if (count_members(j) != scan.members) {
        j = json::parse(
            bytes.begin(), bytes.end(),
            [&repeats](int depth, json::parse_event_t event, json& parsed) {
                return repeats(depth, event, parsed);
            },
            false);
    }
    if (id != nullptr && !repeats.id_repeated()) {
        *id = peek_id(j);
    }
    if (repeats.error()) {
        throw BadInput{*repeats.error()};
    }
    return j;
}
} // namespace json_codec

namespace {

// ---- socket specs ----------------------------------------------------------

int decode_named_number(const json& j, const Path& where, std::string_view what,
                        const std::function<std::optional<int>(std::string_view)>& by_name,
                        int max) {
    if (j.is_string()) {
        auto name = j.get<std::string>();
        auto v = by_name(name);
        if (!v) {
            fail(ErrorCode::unsupported, where,
                 "unknown " + std::string(what) + " \"" + name + "\"");
        }
        return *v;
    }
    return Fields::as_integer<int>(j, where, 0, max);
}

// A JSON value as the typed value that socket options and spec fields take.
TypedValue typed_value(const json& j) {
    switch (j.type()) {
    case json::value_t::boolean:
        return j.get<bool>();
    case json::value_t::number_unsigned:
        return j.get<std::uint64_t>();
    case json::value_t::number_integer:
        return j.get<std::int64_t>();
    case json::value_t::string:
        return j.get<std::string>();
    default:
        return OtherValue{type_of(j)};
    }
}

[[noreturn]] void fail_at(const Path& where, const FieldError& problem) {
    fail(problem.error.code, Path(where, problem.field), problem.error.message);
}

SocketOptions decode_options(const json& j, const Path& where) {
    Fields f(j, where);
    f.allow_only_if([](std::string_view key) { return find_socket_option(key) != nullptr; },
                    ErrorCode::unsupported);
    SocketOptions o;
    for (const auto& row : socket_option_table) {
        // Option names are string literals, NUL-terminated.
        if (const json* value = f.find(row.name.data())) {
            if (auto problem = set_socket_option(o, row.name, typed_value(*value))) {
                fail_at(where, *problem);
            }
        }
    }
    return o;
}

// Reads each field as its type and range say, then checks the spec whole.
SocketSpec decode_spec(const json& j, const Path& where) {
    Fields f(j, where);
    f.allow_only(
        {"family", "type", "protocol", "flags", "options", "bind", "listen", "connect", "count"},
        ErrorCode::invalid_request);
    SocketSpec s;
    s.family = decode_named_number(f.require("family"), f.path("family"), "family",
                                   family_from_name, max_family);
    s.type =
        decode_named_number(f.require("type"), f.path("type"), "type", type_from_name, max_type);
    if (const json* p = f.find("protocol")) {
        int family = s.family;
        s.protocol = decode_named_number(
            *p, f.path("protocol"), "protocol for family " + family_name(family),
            [family](std::string_view n) { return protocol_from_name(family, n); }, max_protocol);
    }
    if (const json* flags = f.find("flags")) {
        if (!flags->is_array()) {
            fail(ErrorCode::invalid_request, f.path("flags"),
                 "expected an array, got " + type_of(*flags));
        }
        for (std::size_t i = 0; i < flags->size(); ++i) {
            Path flags_path = f.path("flags");
            Path where_i(flags_path, i);
            auto flag = Fields::as_string((*flags)[i], where_i);
            if (flag == "nonblock") {
                s.nonblock = true;
            } else if (flag != "cloexec") {
                fail(ErrorCode::unsupported, where_i, "unknown flag \"" + flag + "\"");
            }
        }
    }
    if (const json* o = f.find("options")) {
        s.options = decode_options(*o, f.path("options"));
    }
    s.bind = f.opt_string("bind");
    s.listen = f.opt_integer<int>("listen", 0, max_listen_backlog);
    s.connect = f.opt_string("connect");
    s.count = f.opt_integer<unsigned>("count", 1, max_fds_per_message).value_or(1);
    if (auto problem = check_socket_spec(s)) {
        fail_at(where, *problem);
    }
    return s;
}

json encode_options(const SocketOptions& o) {
    json j = json::object();
    for (const auto& row : socket_option_table) {
        std::visit(
            [&](auto member) {
                if (const auto& value = o.*member) {
                    j[std::string(row.name)] = *value;
                }
            },
            row.field);
    }
    return j;
}

json encode_spec(const SocketSpec& s) {
    json j = {
        {"family", family_name(s.family)}, {"type", type_name(s.type)}, {"protocol", s.protocol}};
    if (s.nonblock) {
        j["flags"] = json::array({"nonblock"});
    }
    json options = encode_options(s.options);
    if (!options.empty()) {
        j["options"] = std::move(options);
    }
    if (s.bind) {
        j["bind"] = *s.bind;
    }
    if (s.listen) {
        j["listen"] = *s.listen;
    }
    if (s.connect) {
        j["connect"] = *s.connect;
    }
    if (s.count != 1) {
        j["count"] = s.count;
    }
    return j;
}

} // namespace

namespace json_codec {

json encode_specs(const std::vector<SocketSpec>& specs) {
    json list = json::array();
    for (const auto& s : specs) {
        list.push_back(encode_spec(s));
    }
    return list;
}

std::vector<SocketSpec> decode_specs(const Fields& f) {
    const json* one = f.find("socket");
    const json* many = f.find("sockets");
    if (one && many) {
        fail(ErrorCode::invalid_request, "", "give either \"socket\" or \"sockets\", not both");
    }
    std::vector<SocketSpec> specs;
    if (one) {
        specs.push_back(decode_spec(*one, "socket"));
    } else if (many) {
        if (!many->is_array()) {
            fail(ErrorCode::invalid_request, "sockets", "expected an array, got " + type_of(*many));
        }
        if (many->empty()) {
            fail(ErrorCode::invalid_request, "sockets", "must not be empty");
        }
        if (many->size() > max_fds_per_message) {
            fail(ErrorCode::limit, "sockets",
                 "at most " + std::to_string(max_fds_per_message) + " sockets in one request");
        }
        const Path sockets_path("sockets");
        for (std::size_t i = 0; i < many->size(); ++i) {
            specs.push_back(decode_spec((*many)[i], Path(sockets_path, i)));
        }
    } else {
        fail(ErrorCode::invalid_request, "", "missing field \"sockets\"");
    }
    if (socket_count(specs) > max_fds_per_message) {
        fail(ErrorCode::limit, "sockets",
             "asks for " + std::to_string(socket_count(specs)) + " sockets; at most " +
                 std::to_string(max_fds_per_message) + " in one request");
    }
    return specs;
}
} // namespace json_codec

namespace {

// ---- namespace references --------------------------------------------------

NetnsRef decode_netns(const json& j) {
    Fields f(j, "netns");
    if (j.size() != 1) {
        std::string kinds;
        for (const auto& kind : netns_kind_names) {
            kinds += (kinds.empty() ? "\"" : ", \"") + std::string(kind.name) + "\"";
        }
        fail(ErrorCode::invalid_request, "netns", "expected exactly one of " + kinds);
    }
    f.allow_only_if([](std::string_view key) { return netns_kind_names.value_of(key).has_value(); },
                    ErrorCode::invalid_request);
    const auto& key = j.begin().key();
    const Path where = f.path(key);
    switch (*netns_kind_names.value_of(key)) {
    case NetnsRef::Kind::name: {
        auto name = Fields::as_string(j.front(), where);
        if (auto ok = check_netns_name(name); !ok) {
            fail(ok.error().code, where, ok.error().message);
        }
        return NetnsRef::by_name(std::move(name));
    }
    case NetnsRef::Kind::path: {
        auto path = Fields::as_string(j.front(), where);
        if (auto ok = check_netns_path(path); !ok) {
            fail(ok.error().code, where, ok.error().message);
        }
        return NetnsRef::by_path(std::move(path));
    }
    case NetnsRef::Kind::pid:
        return NetnsRef::by_pid(Fields::as_integer<pid_t>(j.front(), where, 1, pid_max_limit));
    case NetnsRef::Kind::fd:
        (void)Fields::as_integer<int>(j.front(), where, 0, 0);
        return NetnsRef::by_fd();
    }
    fail(ErrorCode::internal, "netns", "unknown kind of reference");
}

json encode_netns(const NetnsRef& ref) {
    std::string key(netns_kind_names.name_of(ref.kind).value_or("?"));
    switch (ref.kind) {
    case NetnsRef::Kind::name:
    case NetnsRef::Kind::path:
        return {{key, ref.text}};
    case NetnsRef::Kind::pid:
        return {{key, ref.pid}};
    case NetnsRef::Kind::fd:
        return {{key, ref.fd_index}};
    }
    return nullptr;
}

// ---- namespaces cursors ----------------------------------------------------
//
// "DEV:INO", or "DEV:INO:NAME" with the name in lowercase hex when the page
// ended inside that namespace's names. Clients treat it as opaque; the
// daemon takes back only what it could have given.

constexpr std::size_t max_cursor_length = 20 + 1 + 20 + 1 + 2 * max_netns_name_length;

std::string encode_cursor(const NamespacesCursor& cursor) {
    constexpr std::string_view digits = "0123456789abcdef";
    std::string out = std::to_string(cursor.dev) + ":" + std::to_string(cursor.ino);
    if (cursor.name) {
        out += ':';
        for (unsigned char c : *cursor.name) {
            out += digits[c >> 4];
            out += digits[c & 0xf];
        }
    }
    return out;
}

// A decimal number without leading zeros at the start of text, and what follows it.
std::optional<std::uint64_t> cursor_number(std::string_view& text) {
    std::uint64_t value = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    std::size_t length = static_cast<std::size_t>(end - text.data());
    if (error != std::errc{} || length == 0 || (text[0] == '0' && length > 1)) {
        return std::nullopt;
    }
    text.remove_prefix(length);
    return value;
}

std::optional<std::string> cursor_name(std::string_view hex) {
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') {
            return c - '0';
        }
        return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    };
    if (hex.empty() || hex.size() % 2 != 0) {
        return std::nullopt;
    }
    std::string name;
    for (std::size_t i = 0; i < hex.size(); i += 2) {
        int high = nibble(hex[i]);
        int low = nibble(hex[i + 1]);
        if (high < 0 || low < 0) {
            return std::nullopt;
        }
        name += static_cast<char>((high << 4) | low);
    }
    if (!check_netns_name(name)) {
        return std::nullopt;
    }
    return name;
}

// The cursor in text, or nothing when it is not one that encode_cursor writes.
std::optional<NamespacesCursor> parse_cursor(std::string_view text) {
    if (text.size() > max_cursor_length) {
        return std::nullopt;
    }
    NamespacesCursor cursor;
    auto dev = cursor_number(text);
    if (!dev || !text.starts_with(':')) {
        return std::nullopt;
    }
    text.remove_prefix(1);
    auto ino = cursor_number(text);
    if (!ino) {
        return std::nullopt;
    }
    cursor.dev = *dev;
    cursor.ino = *ino;
    if (!text.empty()) {
        if (!text.starts_with(':')) {
            return std::nullopt;
        }
        cursor.name = cursor_name(text.substr(1));
        if (!cursor.name) {
            return std::nullopt;
        }
    }
    return cursor;
}

NamespacesCursor decode_cursor(const json& j, const Path& where) {
    auto cursor = parse_cursor(Fields::as_string(j, where));
    if (!cursor) {
        // Not repeated in the message, which may be as long as a request.
        fail(ErrorCode::invalid_request, where,
             "not a cursor that nsbrokerd gave (send back a reply's \"next_cursor\" as it came)");
    }
    return std::move(*cursor);
}

// ---- replies ---------------------------------------------------------------

// The one spelling of a `namespaces` entry, which the page cut measures.
json encode_namespace(const NamespaceInfo& n) {
    return {{"dev", n.dev},        {"ino", n.ino},
            {"names", n.names},    {"worker_pid", n.worker_pid},
            {"state", n.state},    {"requests", n.requests},
            {"sockets", n.sockets}};
}

std::string dump(const json& j) {
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

json encode_error(const Error& e) {
    json j = {{"code", to_string(e.code)}, {"message", e.message}};
    if (e.sys_errno != 0) {
        j["errno"] = e.sys_errno;
    }
    return j;
}

Error decode_error(const json& j) {
    Fields f(j, "error");
    auto code_name = f.string("code");
    auto code = error_code_from_string(code_name);
    Error e;
    // A code this client does not know yet is still an error, reported as internal.
    e.code = code.value_or(ErrorCode::internal);
    e.sys_errno = f.opt_integer<int>("errno", 0, 4095).value_or(0);
    e.message = f.opt_string("message").value_or(code_name);
    return e;
}

struct ReplyEncoder {
    json& j;
    void operator()(const Error& e) const {
        j["ok"] = false;
        j["error"] = encode_error(e);
    }
    void operator()(const HelloReply& h) const {
        j["protocol"] = h.protocol;
        j["version"] = h.daemon_version;
        j["features"] = h.features;
    }
    void operator()(const PongReply&) const {}
    void operator()(const SocketReply& r) const {
        json list = json::array();
        for (const auto& s : r.sockets) {
            list.push_back({{"family", family_name(s.family)},
                            {"type", type_name(s.type)},
                            {"protocol", s.protocol},
                            {"local", s.local}});
        }
        j["sockets"] = std::move(list);
        if (r.channel) {
            j["channel"] = {{"dev", r.channel->dev}, {"ino", r.channel->ino}};
        }
    }
    void operator()(const NamespacesReply& r) const {
        json list = json::array();
        for (const auto& n : r.namespaces) {
            list.push_back(encode_namespace(n));
        }
        j["namespaces"] = std::move(list);
        if (r.next_cursor) {
            j["next_cursor"] = encode_cursor(*r.next_cursor);
        }
    }
    void operator()(const StatsReply& s) const {
        j["stats"] = {{"uptime_seconds", s.uptime_seconds},
                      {"requests", s.requests},
                      {"sockets", s.sockets},
                      {"errors", s.errors},
                      {"clients", s.clients},
                      {"workers_spawned", s.workers_spawned},
                      {"workers_live", s.workers_live},
                      {"workers_exited", s.workers_exited}};
    }
};

std::vector<std::string> string_list(const json& j, const Path& where) {
    if (!j.is_array()) {
        fail(ErrorCode::invalid_request, where, "expected an array, got " + type_of(j));
    }
    std::vector<std::string> out;
    for (std::size_t i = 0; i < j.size(); ++i) {
        out.push_back(Fields::as_string(j[i], Path(where, i)));
    }
    return out;
}

// The array f[key], each element read as an object by decode(Fields&).
template <typename Decode>
auto decode_each(const Fields& f, const char* key, Decode decode) {
    const json& list = f.require(key);
    if (!list.is_array()) {
        fail(ErrorCode::invalid_request, f.path(key), "expected an array, got " + type_of(list));
    }
    const Path list_path(key);
    std::vector<std::invoke_result_t<Decode, Fields&>> out;
    out.reserve(list.size());
    for (std::size_t i = 0; i < list.size(); ++i) {
        Fields item(list[i], Path(list_path, i));
        out.push_back(decode(item));
    }
    return out;
}

ReplyBody decode_body(const Fields& f, Op op) {
    switch (op) {
    case Op::hello: {
        HelloReply h;
        h.protocol = f.integer<int>("protocol", 0, 1 << 20);
        h.daemon_version = f.string("version");
        h.features = string_list(f.require("features"), "features");
        return h;
    }
    case Op::ping:
        return PongReply{};
    case Op::socket: {
        SocketReply r;
        r.sockets = decode_each(f, "sockets", [](Fields& s) {
            SocketInfo info;
            info.family = decode_named_number(s.require("family"), s.path("family"), "family",
                                              family_from_name, 255);
            info.type =
                decode_named_number(s.require("type"), s.path("type"), "type", type_from_name, 15);
            info.protocol = s.integer<int>("protocol", 0, 65535);
            info.local = s.opt_string("local").value_or("");
            return info;
        });
        if (const json* channel = f.find("channel")) {
            Fields c(*channel, f.path("channel"));
            c.allow_only({"dev", "ino"}, ErrorCode::invalid_request);
            r.channel = DirectChannel{c.integer<std::uint64_t>("dev", 0, UINT64_MAX),
                                      c.integer<std::uint64_t>("ino", 0, UINT64_MAX)};
        }
        return r;
    }
    case Op::namespaces: {
        NamespacesReply r;
        r.namespaces = decode_each(f, "namespaces", [](Fields& n) {
            NamespaceInfo info;
            info.dev = n.integer<std::uint64_t>("dev", 0, UINT64_MAX);
            info.ino = n.integer<std::uint64_t>("ino", 0, UINT64_MAX);
            info.names = string_list(n.require("names"), n.path("names"));
            info.worker_pid = n.integer<pid_t>("worker_pid", 0, INT32_MAX);
            info.state = n.string("state");
            info.requests = n.integer<std::uint64_t>("requests", 0, UINT64_MAX);
            info.sockets = n.integer<std::uint64_t>("sockets", 0, UINT64_MAX);
            return info;
        });
        if (const json* next = f.find("next_cursor")) {
            r.next_cursor = decode_cursor(*next, f.path("next_cursor"));
        }
        return r;
    }
    case Op::stats: {
        Fields s(f.require("stats"), "stats");
        StatsReply r;
        const json& uptime = s.require("uptime_seconds");
        if (!uptime.is_number()) {
            fail(ErrorCode::invalid_request, "stats.uptime_seconds", "expected a number");
        }
        r.uptime_seconds = uptime.get<double>();
        r.requests = s.integer<std::uint64_t>("requests", 0, UINT64_MAX);
        r.sockets = s.integer<std::uint64_t>("sockets", 0, UINT64_MAX);
        r.clients = s.integer<std::uint64_t>("clients", 0, UINT64_MAX);
        r.workers_spawned = s.integer<std::uint64_t>("workers_spawned", 0, UINT64_MAX);
        r.workers_live = s.integer<std::uint64_t>("workers_live", 0, UINT64_MAX);
        r.workers_exited = s.integer<std::uint64_t>("workers_exited", 0, UINT64_MAX);
        const json& errors = s.require("errors");
        const Path errors_path = s.path("errors");
        Fields{errors, errors_path}; // must be an object
        for (const auto& [code, count] : errors.items()) {
            r.errors[code] =
                Fields::as_integer<std::uint64_t>(count, Path(errors_path, code), 0, UINT64_MAX);
        }
        return r;
    }
    }
    fail(ErrorCode::internal, "", "unknown operation");
}

// ---- socket replies: the fast path ----------------------------------------
//
// A reply to a batch lists up to 253 sockets; building and walking a DOM for
// it costs more than making the sockets. Socket replies are therefore
// written directly, and read by a SAX handler that accepts exactly the
// success shape and gives up on anything else, leaving the message to the
// strict DOM decoder and its precise errors.

bool plain_ascii(std::string_view text) {
    for (char c : text) {
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') {
            return false;
        }
    }
    return true;
}

void append_string(std::string& out, std::string_view text) {
    if (plain_ascii(text)) {
        out += '"';
        out += text;
        out += '"';
    } else {
        out += json(std::string(text)).dump(-1, ' ', false, json::error_handler_t::replace);
    }
}

void append_name(std::string& out, const std::string& name_or_number) {
    bool number = !name_or_number.empty() &&
                  name_or_number.find_first_not_of("0123456789") == std::string::npos;
    if (number) {
        out += name_or_number;
    } else {
        append_string(out, name_or_number);
    }
}

std::string encode_socket_reply(std::uint64_t id, const SocketReply& r) {
    std::string out;
    out.reserve(32 + r.sockets.size() * 64);
    out += "{\"id\":";
    out += std::to_string(id);
    out += ",\"ok\":true,\"sockets\":[";
    bool first = true;
    for (const auto& s : r.sockets) {
        out += first ? "{\"family\":" : ",{\"family\":";
        first = false;
        append_name(out, family_name(s.family));
        out += ",\"local\":";
        append_string(out, s.local);
        out += ",\"protocol\":";
        out += std::to_string(s.protocol);
        out += ",\"type\":";
        append_name(out, type_name(s.type));
        out += '}';
    }
    out += ']';
    if (r.channel) {
        out += ",\"channel\":{\"dev\":";
        out += std::to_string(r.channel->dev);
        out += ",\"ino\":";
        out += std::to_string(r.channel->ino);
        out += '}';
    }
    out += '}';
    return out;
}

// What the quick readers of socket replies and channel requests share: the
// SAX interface's types, and the values neither message has, each of which
// sends the message to the full decoder.
class QuickReader {
  public:
    using number_integer_t = json::number_integer_t;
    using number_unsigned_t = json::number_unsigned_t;
    using number_float_t = json::number_float_t;
    using string_t = json::string_t;
    using binary_t = json::binary_t;

    bool null() { return false; }
    bool number_float(number_float_t, const string_t&) { return false; }
    bool binary(binary_t&) { return false; }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) {
        return false;
    }

  protected:
    // A family or type by its protocol name; false for a name this reader
    // does not know.
    static bool set_named(int& target, std::optional<int> value) {
        target = value.value_or(0);
        return value.has_value();
    }
};

class SocketReplySax : public QuickReader {
  public:
    // The reply, when the message had exactly the success shape.
    std::optional<Reply> result() {
        if (!done_ || !id_ || !ok_ || !have_sockets_) {
            return std::nullopt;
        }
        return Reply{id_, std::move(reply_)};
    }

    bool boolean(bool value) {
        if (level_ != Level::top || field_ != Field::ok || !value) {
            return false;
        }
        ok_ = true;
        return true;
    }
    bool number_integer(number_integer_t value) {
        return value >= 0 && number_unsigned(static_cast<number_unsigned_t>(value));
    }
    bool number_unsigned(number_unsigned_t value) {
        if (level_ == Level::top && field_ == Field::id) {
            id_ = value;
            return true;
        }
        if (level_ != Level::entry || value > 65535) {
            return false;
        }
        auto v = static_cast<int>(value);
        switch (field_) {
        case Field::family:
            current_.family = v;
            return true;
        case Field::type:
            current_.type = v;
            return true;
        case Field::protocol:
            current_.protocol = v;
            return true;
        default:
            return false;
        }
    }
    bool string(string_t& value) {
        if (level_ != Level::entry) {
            return false;
        }
        switch (field_) {
        case Field::family:
            return set_named(current_.family, family_from_name(value));
        case Field::type:
            return set_named(current_.type, type_from_name(value));
        case Field::local:
            current_.local = std::move(value);
            return true;
        default:
            return false;
        }
    }
    bool start_object(std::size_t) {
        if (level_ == Level::outside) {
            level_ = Level::top;
            return true;
        }
        if (level_ == Level::list) {
            level_ = Level::entry;
            current_ = SocketInfo{};
            entry_keys_ = 0;
            return true;
        }
        return false;
    }
    bool key(string_t& name) {
        if (level_ == Level::top) {
            field_ = name == "id"        ? Field::id
                     : name == "ok"      ? Field::ok
                     : name == "sockets" ? Field::sockets
                                         : Field::other;
        } else {
            field_ = name == "family"     ? Field::family
                     : name == "type"     ? Field::type
                     : name == "protocol" ? Field::protocol
                     : name == "local"    ? Field::local
                                          : Field::other;
        }
        // A repeated key leaves the message to the DOM decoder, which names it.
        unsigned& seen = level_ == Level::top ? top_keys_ : entry_keys_;
        if (field_ == Field::other || (seen & bit(field_)) != 0) {
            return false;
        }
        seen |= bit(field_);
        return true;
    }
    bool end_object() {
        if (level_ == Level::entry) {
            const unsigned required = bit(Field::family) | bit(Field::type) | bit(Field::protocol);
            if ((entry_keys_ & required) != required) {
                return false;
            }
            reply_.sockets.push_back(std::move(current_));
            level_ = Level::list;
            return true;
        }
        if (level_ == Level::top) {
            level_ = Level::outside;
            done_ = true;
            return true;
        }
        return false;
    }
    bool start_array(std::size_t) {
        if (level_ != Level::top || field_ != Field::sockets || have_sockets_) {
            return false;
        }
        level_ = Level::list;
        have_sockets_ = true;
        return true;
    }
    bool end_array() {
        if (level_ != Level::list) {
            return false;
        }
        level_ = Level::top;
        return true;
    }

  private:
    enum class Level { outside, top, list, entry };
    enum class Field { id, ok, sockets, family, type, protocol, local, other };

    static constexpr unsigned bit(Field field) { return 1U << static_cast<unsigned>(field); }

    Level level_ = Level::outside;
    Field field_ = Field::other;
    std::optional<std::uint64_t> id_;
    bool ok_ = false;
    bool have_sockets_ = false;
    bool done_ = false;
    SocketReply reply_;
    SocketInfo current_;
    // The keys read so far in the message's object and in the current entry.
    unsigned top_keys_ = 0;
    unsigned entry_keys_ = 0;
};

// The reader stops at the first value nested deeper than the shape it
// reads, so no nesting limit needs checking first.
std::optional<Reply> decode_socket_reply_fast(std::string_view bytes) {
    if (bytes.size() > max_message_size) {
        return std::nullopt;
    }
    SocketReplySax sax;
    if (!json::sax_parse(bytes.begin(), bytes.end(), &sax)) {
        return std::nullopt;
    }
    return sax.result();
}

} // namespace

// ---- public ----------------------------------------------------------------

std::string_view to_string(Op op) noexcept {
    return op_names.name_of(op).value_or("unknown");
}

std::size_t socket_count(const std::vector<SocketSpec>& specs) noexcept {
    std::size_t n = 0;
    for (const auto& s : specs) {
        n += s.count;
    }
    return n;
}

std::optional<int> family_from_name(std::string_view name) {
    return family_names.value_of(name);
}
std::optional<int> type_from_name(std::string_view name) {
    return type_names.value_of(name);
}

std::optional<int> protocol_from_name(int family, std::string_view name) {
    switch (family) {
    case AF_INET:
    case AF_INET6:
        return inet_protocols.value_of(name);
    case AF_NETLINK:
        return netlink_protocols.value_of(name);
    case AF_PACKET:
        return packet_protocols.value_of(name);
    default:
        return std::nullopt;
    }
}

std::optional<std::string> protocol_name(int family, int protocol) {
    std::optional<std::string_view> name;
    switch (family) {
    case AF_INET:
    case AF_INET6:
        name = inet_protocols.name_of(protocol);
        break;
    case AF_NETLINK:
        name = netlink_protocols.name_of(protocol);
        break;
    case AF_PACKET:
        name = packet_protocols.name_of(protocol);
        break;
    default:
        break;
    }
    return name ? std::optional<std::string>(*name) : std::nullopt;
}

std::string family_name(int family) {
    auto n = family_names.name_of(family);
    return n ? std::string(*n) : std::to_string(family);
}

std::string type_name(int type) {
    auto n = type_names.name_of(type);
    return n ? std::string(*n) : std::to_string(type);
}

namespace {

// A socket request, as the library sends one for every socket it asks for:
// written out directly, as socket replies are. A request of another shape
// (socket options, text other than printable ASCII) goes through the DOM.
std::optional<std::string> encode_socket_request(const Request& r) {
    std::string out;
    out.reserve(160);
    auto text = [&out](std::string_view t) {
        if (!plain_ascii(t)) {
            return false;
        }
        out += '"';
        out += t;
        out += '"';
        return true;
    };
    out += "{\"id\":";
    out += std::to_string(r.id);
    out += ",\"op\":\"socket\"";
    if (r.netns) {
        const NetnsRef& ref = *r.netns;
        out += ",\"netns\":{\"";
        out += netns_kind_names.name_of(ref.kind).value_or("?");
        out += "\":";
        switch (ref.kind) {
        case NetnsRef::Kind::name:
        case NetnsRef::Kind::path:
            if (!text(ref.text)) {
                return std::nullopt;
            }
            break;
        case NetnsRef::Kind::pid:
            out += std::to_string(ref.pid);
            break;
        case NetnsRef::Kind::fd:
            out += std::to_string(ref.fd_index);
            break;
        }
        out += '}';
    }
    out += ",\"sockets\":[";
    for (std::size_t i = 0; i < r.specs.size(); ++i) {
        const SocketSpec& s = r.specs[i];
        if (s.options != SocketOptions{}) {
            return std::nullopt;
        }
        out += i == 0 ? "{\"family\":" : ",{\"family\":";
        append_name(out, family_name(s.family));
        out += ",\"type\":";
        append_name(out, type_name(s.type));
        out += ",\"protocol\":";
        out += std::to_string(s.protocol);
        if (s.nonblock) {
            out += ",\"flags\":[\"nonblock\"]";
        }
        for (const auto& [key, value] :
             {std::pair{",\"bind\":", &s.bind}, std::pair{",\"connect\":", &s.connect}}) {
            if (*value) {
                out += key;
                if (!text(**value)) {
                    return std::nullopt;
                }
            }
        }
        if (s.listen) {
            out += ",\"listen\":";
            out += std::to_string(*s.listen);
        }
        if (s.count != 1) {
            out += ",\"count\":";
            out += std::to_string(s.count);
        }
        out += '}';
    }
    out += ']';
    if (r.channel) {
        out += ",\"channel\":true";
    }
    out += '}';
    return out;
}

// A socket request on a worker channel, of the shape the library sends
// (encode_socket_request), read in one pass without building a tree: the
// request a channel serves most, read at the cost of its bytes. The reader
// takes only what the full decoder would take to the same request, and
// leaves everything else to it (another shape or field, a number where it
// expects a name, a value out of range, a repeated key), which refuses or
// reads it with its precise errors. fuzz_decoder holds the two to the same
// result.
class ChannelRequestSax : public QuickReader {
  public:
    // The request, when the message had exactly that shape and is whole.
    std::optional<Request> result() {
        const unsigned required = bit(Field::id) | bit(Field::op) | bit(Field::sockets);
        if (!done_ || (top_keys_ & required) != required || request_.specs.empty() ||
            socket_count(request_.specs) > max_fds_per_message) {
            return std::nullopt;
        }
        for (const auto& spec : request_.specs) {
            if (check_socket_spec(spec)) {
                return std::nullopt;
            }
        }
        return std::move(request_);
    }

    bool boolean(bool) { return false; }
    bool number_integer(number_integer_t) { return false; } // negative
    bool number_unsigned(number_unsigned_t value) {
        if (level_ == Level::top && field_ == Field::id) {
            request_.id = value;
            return true;
        }
        if (level_ != Level::entry) {
            return false;
        }
        switch (field_) {
        case Field::protocol:
            return in_range(spec_.protocol, value, 0, max_protocol);
        case Field::listen:
            spec_.listen.emplace();
            return in_range(*spec_.listen, value, 0, max_listen_backlog);
        case Field::count:
            return in_range(spec_.count, value, 1U, static_cast<unsigned>(max_fds_per_message));
        default:
            return false;
        }
    }
    bool string(string_t& value) {
        if (level_ == Level::top) {
            return field_ == Field::op && value == "socket";
        }
        if (level_ == Level::flags) {
            spec_.nonblock = spec_.nonblock || value == "nonblock";
            return value == "nonblock" || value == "cloexec";
        }
        if (level_ != Level::entry) {
            return false;
        }
        switch (field_) {
        case Field::family:
            return set_named(spec_.family, family_from_name(value));
        case Field::type:
            return set_named(spec_.type, type_from_name(value));
        case Field::bind:
            spec_.bind = std::move(value);
            return true;
        case Field::connect:
            spec_.connect = std::move(value);
            return true;
        default:
            return false;
        }
    }
    bool start_object(std::size_t) {
        if (level_ == Level::outside) {
            level_ = Level::top;
            return true;
        }
        if (level_ == Level::list && request_.specs.size() < max_fds_per_message) {
            level_ = Level::entry;
            spec_ = SocketSpec{};
            entry_keys_ = 0;
            return true;
        }
        return false;
    }
    bool key(string_t& name) {
        if (level_ == Level::top) {
            field_ = name == "id"        ? Field::id
                     : name == "op"      ? Field::op
                     : name == "sockets" ? Field::sockets
                                         : Field::other;
        } else {
            field_ = name == "family"     ? Field::family
                     : name == "type"     ? Field::type
                     : name == "protocol" ? Field::protocol
                     : name == "flags"    ? Field::flags
                     : name == "bind"     ? Field::bind
                     : name == "listen"   ? Field::listen
                     : name == "connect"  ? Field::connect
                     : name == "count"    ? Field::count
                                          : Field::other;
        }
        unsigned& seen = level_ == Level::top ? top_keys_ : entry_keys_;
        if (field_ == Field::other || (seen & bit(field_)) != 0) {
            return false;
        }
        seen |= bit(field_);
        return true;
    }
    bool end_object() {
        if (level_ == Level::entry) {
            const unsigned required = bit(Field::family) | bit(Field::type);
            if ((entry_keys_ & required) != required) {
                return false;
            }
            request_.specs.push_back(std::move(spec_));
            level_ = Level::list;
            return true;
        }
        level_ = Level::outside;
        done_ = true;
        return true;
    }
    bool start_array(std::size_t) {
        if (level_ == Level::top && field_ == Field::sockets) {
            level_ = Level::list;
            return true;
        }
        if (level_ == Level::entry && field_ == Field::flags) {
            level_ = Level::flags;
            return true;
        }
        return false;
    }
    bool end_array() {
        level_ = level_ == Level::list ? Level::top : Level::entry;
        return true;
    }

  private:
    enum class Level { outside, top, list, entry, flags };
    enum class Field {
        id,
        op,
        sockets,
        family,
        type,
        protocol,
        flags,
        bind,
        listen,
        connect,
        count,
        other
    };

    static constexpr unsigned bit(Field field) { return 1U << static_cast<unsigned>(field); }

    template <typename T>
    static bool in_range(T& target, number_unsigned_t value, T min, T max) {
        target = static_cast<T>(value);
        return value >= static_cast<number_unsigned_t>(min) &&
               value <= static_cast<number_unsigned_t>(max);
    }

    Level level_ = Level::outside;
    Field field_ = Field::other;
    bool done_ = false;
    Request request_{0, Op::socket, std::nullopt, {}, false};
    SocketSpec spec_;
    // The keys read so far in the message's object and in the current entry.
    unsigned top_keys_ = 0;
    unsigned entry_keys_ = 0;
};

// As decode_socket_reply_fast, with no nesting limit to check.
std::optional<Request> decode_channel_request_fast(std::string_view bytes) {
    if (bytes.size() > max_message_size) {
        return std::nullopt;
    }
    ChannelRequestSax sax;
    if (!json::sax_parse(bytes.begin(), bytes.end(), &sax)) {
        return std::nullopt;
    }
    return sax.result();
}

} // namespace

std::string encode_request(const Request& r) {
    if (r.op == Op::socket) {
        if (auto fast = encode_socket_request(r)) {
            return std::move(*fast);
        }
    }
    json j = {{"id", r.id}, {"op", to_string(r.op)}};
    if (r.op == Op::socket) {
        if (r.netns) {
            j["netns"] = encode_netns(*r.netns);
        }
        j["sockets"] = encode_specs(r.specs);
        if (r.channel) {
            j["channel"] = true;
        }
    } else if (r.op == Op::namespaces) {
        if (r.cursor) {
            j["cursor"] = encode_cursor(*r.cursor);
        }
        if (r.limit) {
            j["limit"] = *r.limit;
        }
    }
    return j.dump();
}

namespace {

// Where a request arrived: nsbrokerd serves every operation for any
// namespace; a worker channel only socket requests for its own.
enum class Recipient { daemon, worker_channel };

std::variant<Request, RequestError> decode_request_for(std::string_view bytes,
                                                       Recipient recipient) {
    std::optional<std::uint64_t> id;
    try {
        json j = parse_object(bytes, &id);
        Fields f(j, "");
        Request r;
        r.id = f.integer<std::uint64_t>("id", 0, UINT64_MAX);
        auto op_name = f.string("op");
        auto op = op_names.value_of(op_name);
        if (!op) {
            fail(ErrorCode::unsupported, "op", "unknown operation \"" + op_name + "\"");
        }
        r.op = *op;
        if (recipient == Recipient::worker_channel) {
            if (r.op != Op::socket) {
                fail(ErrorCode::unsupported, "op",
                     "a worker channel serves only \"socket\"; send \"" + op_name +
                         "\" to nsbrokerd");
            }
            if (f.find("netns") != nullptr) {
                fail(ErrorCode::invalid_request, "netns",
                     "a worker channel serves the one namespace it was granted for; name none");
            }
            f.allow_only({"id", "op", "socket", "sockets"}, ErrorCode::invalid_request);
            r.specs = decode_specs(f);
        } else if (r.op == Op::socket) {
            f.allow_only({"id", "op", "netns", "socket", "sockets", "channel"},
                         ErrorCode::invalid_request);
            r.netns = decode_netns(f.require("netns"));
            r.specs = decode_specs(f);
            r.channel = f.opt_bool("channel").value_or(false);
        } else if (r.op == Op::namespaces) {
            f.allow_only({"id", "op", "cursor", "limit"}, ErrorCode::invalid_request);
            if (const json* cursor = f.find("cursor")) {
                r.cursor = decode_cursor(*cursor, f.path("cursor"));
            }
            r.limit = f.opt_integer<unsigned>("limit", 1, max_namespaces_limit);
        } else {
            f.allow_only({"id", "op"}, ErrorCode::invalid_request);
        }
        return r;
    } catch (const BadInput& e) {
        return RequestError{id, e.error};
    }
}

} // namespace

std::variant<Request, RequestError> decode_request(std::string_view bytes) {
    return decode_request_for(bytes, Recipient::daemon);
}

std::variant<Request, RequestError> decode_channel_request(std::string_view bytes) {
    if (auto fast = decode_channel_request_fast(bytes)) {
        return std::move(*fast);
    }
    return decode_request_for(bytes, Recipient::worker_channel);
}

std::variant<Request, RequestError> decode_channel_request_in_full(std::string_view bytes) {
    return decode_request_for(bytes, Recipient::worker_channel);
}

std::string encode_reply(const Reply& reply) {
    if (const auto* sockets = std::get_if<SocketReply>(&reply.body); sockets && reply.id) {
        return encode_socket_reply(*reply.id, *sockets);
    }
    json j = json::object();
    j["id"] = reply.id ? json(*reply.id) : json(nullptr);
    j["ok"] = true;
    std::visit(ReplyEncoder{j}, reply.body);
    return dump(j);
}

std::size_t namespace_entry_size(const NamespaceInfo& entry) {
    return dump(encode_namespace(entry)).size() + 1;
}

std::size_t namespaces_reply_overhead() {
    static const std::size_t overhead = [] {
        NamespacesCursor longest{UINT64_MAX, UINT64_MAX, std::string(max_netns_name_length, 'x')};
        return encode_reply({UINT64_MAX, NamespacesReply{{}, std::move(longest)}}).size();
    }();
    return overhead;
}

Result<Reply> decode_reply(std::string_view bytes, Op op) {
    if (op == Op::socket) {
        if (auto fast = decode_socket_reply_fast(bytes)) {
            return std::move(*fast);
        }
    }
    try {
        json j = parse_object(bytes);
        Fields f(j, "");
        Reply r;
        const json& id = f.require("id");
        if (!id.is_null()) {
            r.id = f.integer<std::uint64_t>("id", 0, UINT64_MAX);
        }
        const json& ok = f.require("ok");
        if (!ok.is_boolean()) {
            fail(ErrorCode::invalid_request, "ok", "expected a boolean, got " + type_of(ok));
        }
        if (!ok.get<bool>()) {
            r.body = decode_error(f.require("error"));
        } else {
            r.body = decode_body(f, op);
        }
        return r;
    } catch (const BadInput& e) {
        return e.error;
    }
}

std::optional<std::uint64_t> reply_id(std::string_view bytes) {
    // Socket replies, the many, begin with their id (encode_socket_reply).
    constexpr std::string_view head = R"({"id":)";
    if (bytes.starts_with(head)) {
        const char* first = bytes.data() + head.size();
        const char* last = bytes.data() + bytes.size();
        std::uint64_t value = 0;
        auto [end, error] = std::from_chars(first, last, value);
        // A second "id" anywhere, even inside a string, goes the long way:
        // a reply that repeats its id reaches nobody.
        if (error == std::errc{} && end != first && end != last && *end == ',' &&
            (*first != '0' || end == first + 1) &&
            bytes.find(R"("id")", head.size()) == std::string_view::npos) {
            return value;
        }
    }
    std::optional<std::uint64_t> id;
    try {
        parse_object(bytes, &id);
    } catch (const BadInput&) {
        // A message refused for a repeated key may still have told its id.
    }
    return id;
}

} // namespace nsbroker::proto
