// org.nsbroker.Broker1: D-Bus arguments in, the broker's requests out.
//
// A call's arguments become a typed socket spec and namespace reference
// through the protocol's own option table, reference grammar and spec check,
// so that D-Bus callers get exactly the checks, and the error codes, that
// socket callers get.
#include "frontend/dbus_service.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>
#include <type_traits>

#include "nsbroker/bad_input.hpp"
#include "nsbroker/name_table.hpp"
#include "nsbroker/netns_reference.hpp"
#include "nsbroker/typed_spec.hpp"
#include "nsbroker_config.h"
#include "sys/logging.hpp"

namespace nsbroker::daemon {

namespace {

// org.nsbroker.Broker1.Error.<Code>: the protocol's code in D-Bus spelling,
// "not_a_netns" as "NotANetns".
std::string error_name(ErrorCode code) {
    std::string name = "org.nsbroker.Broker1.Error.";
    bool word_start = true;
    for (char c : to_string(code)) {
        if (c == '_') {
            word_start = true;
            continue;
        }
        name += word_start ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
        word_start = false;
    }
    return name;
}

// RequestName's answers (the D-Bus specification's numbers) that make the
// name this connection's.
constexpr uint32_t name_primary_owner = 1;
constexpr uint32_t name_already_owner = 4;

int reply_error(sd_bus_message* m, const Error& e) {
    return sd_bus_reply_method_errorf(m, error_name(e.code).c_str(), "%s", e.message.c_str());
}

struct MessageRelease {
    void operator()(sd_bus_message* m) const noexcept { sd_bus_message_unref(m); }
};
using MessageRef = std::unique_ptr<sd_bus_message, MessageRelease>;

struct CredsRelease {
    void operator()(sd_bus_creds* c) const noexcept { sd_bus_creds_unref(c); }
};

[[noreturn]] void bad_call(const Error& error) {
    throw BadInput{error};
}

[[noreturn]] void bad_call(const std::string& message) {
    bad_call(make_error(ErrorCode::invalid_request, message));
}

void check(int r, const char* what) {
    if (r < 0) {
        bad_call(std::string(what) + ": " + std::strerror(-r));
    }
}

// The caller as the bus daemon knows it: its connection's credentials,
// never anything sd-bus would have to read from /proc.
Result<Caller> sender_identity(sd_bus_message* m) {
    sd_bus_creds* raw = nullptr;
    int r = sd_bus_query_sender_creds(m,
                                      SD_BUS_CREDS_EUID | SD_BUS_CREDS_EGID | SD_BUS_CREDS_PID |
                                          SD_BUS_CREDS_SUPPLEMENTARY_GIDS,
                                      &raw);
    std::unique_ptr<sd_bus_creds, CredsRelease> creds(raw);
    Caller caller;
    if (r < 0 || sd_bus_creds_get_euid(creds.get(), &caller.uid) < 0 ||
        (sd_bus_creds_get_augmented_mask(creds.get()) & SD_BUS_CREDS_EUID) != 0) {
        return make_error(ErrorCode::permission_denied,
                          "the bus did not say who the caller is; nothing is served without that",
                          EPERM);
    }
    const uint64_t trusted = ~sd_bus_creds_get_augmented_mask(creds.get());
    if ((trusted & SD_BUS_CREDS_EGID) == 0 || sd_bus_creds_get_egid(creds.get(), &caller.gid) < 0) {
        caller.gid = static_cast<gid_t>(-1); // matches no group rule
    }
    const gid_t* groups = nullptr;
    if ((trusted & SD_BUS_CREDS_SUPPLEMENTARY_GIDS) != 0) {
        int n = sd_bus_creds_get_supplementary_gids(creds.get(), &groups);
        if (n > 0) {
            caller.groups.assign(groups, groups + n);
        }
    }
    if ((trusted & SD_BUS_CREDS_PID) == 0 || sd_bus_creds_get_pid(creds.get(), &caller.pid) < 0) {
        caller.pid = 0;
    }
    return caller;
}

// "qrouter-1", "/proc/42/ns/net" or "pid:42". A D-Bus caller has no
// directory of the daemon's to resolve a relative path against.
proto::NetnsRef netns_argument(std::string_view text) {
    auto ref = proto::parse_netns_reference(text);
    if (!ref) {
        bad_call(make_error(ref.error().code, "netns: " + ref.error().message));
    }
    if (ref->kind == proto::NetnsRef::Kind::path) {
        if (auto ok = proto::check_netns_path(ref->text); !ok) {
            bad_call(make_error(ok.error().code, "netns: " + ok.error().message));
        }
    }
    return std::move(*ref);
}

template <typename T>
T read_basic(sd_bus_message* m, char type) {
    T value{};
    check(sd_bus_message_read_basic(m, type, &value), "options");
    return value;
}

// Readers of a variant's contents, by the contents' one-letter signature.
// Integers are widened to 64 bits, keeping their sign.
template <typename T, char Type>
proto::TypedValue read_as(sd_bus_message* m) {
    const T value = read_basic<T>(m, Type);
    if constexpr (std::is_same_v<T, const char*>) {
        return std::string(value);
    } else if constexpr (Type == 'b') {
        return value != 0;
    } else if constexpr (std::is_signed_v<T>) {
        return std::int64_t{value};
    } else {
        return std::uint64_t{value};
    }
}

using ContentsReader = proto::TypedValue (*)(sd_bus_message*);
constexpr std::pair<char, ContentsReader> contents_readers[] = {
    {'s', &read_as<const char*, 's'>},   {'b', &read_as<int, 'b'>},
    {'y', &read_as<std::uint8_t, 'y'>},  {'n', &read_as<std::int16_t, 'n'>},
    {'q', &read_as<std::uint16_t, 'q'>}, {'i', &read_as<std::int32_t, 'i'>},
    {'u', &read_as<std::uint32_t, 'u'>}, {'x', &read_as<std::int64_t, 'x'>},
    {'t', &read_as<std::uint64_t, 't'>},
};

// What a variant of one-letter signature `type` holds, or nothing when
// options take no such type.
std::optional<proto::TypedValue> read_contents(sd_bus_message* m, char type) {
    for (const auto& [letter, read] : contents_readers) {
        if (letter == type) {
            return read(m);
        }
    }
    return std::nullopt;
}

// One a{sv} value: strings, booleans and integers are what socket options
// and the spec's fields take.
proto::TypedValue variant_value(sd_bus_message* m, const std::string& key) {
    char type = 0;
    const char* contents = nullptr;
    check(sd_bus_message_peek_type(m, &type, &contents), "options");
    if (type != 'v' || contents == nullptr || std::strlen(contents) != 1) {
        bad_call("options." + key + ": expected a string, boolean or integer");
    }
    check(sd_bus_message_enter_container(m, 'v', contents), "options");
    auto value = read_contents(m, contents[0]);
    if (!value) {
        bad_call("options." + key + ": D-Bus type '" + contents +
                 "' is not accepted; expected a string, boolean or integer");
    }
    check(sd_bus_message_exit_container(m), "options");
    return std::move(*value);
}

// A field of the spec from its a{sv} value; the error names it.
template <typename T>
T spec_field(Result<T> value, const std::string& key) {
    if (!value) {
        bad_call(make_error(value.error().code, key + ": " + value.error().message));
    }
    return std::move(*value);
}

// The socket spec of a call: family, type, protocol and the a{sv} options.
// bind, connect, listen and nonblock are fields of the spec; everything else
// is a socket option. A key given twice counts once, with its last value.
proto::SocketSpec spec_arguments(sd_bus_message* m, int family, int type, int protocol) {
    proto::SocketSpec spec;
    spec.family = family;
    spec.type = type;
    spec.protocol = protocol;
    std::map<std::string, proto::TypedValue> values;
    check(sd_bus_message_enter_container(m, 'a', "{sv}"), "options");
    for (;;) {
        int r = sd_bus_message_enter_container(m, 'e', "sv");
        check(r, "options");
        if (r == 0) {
            break;
        }
        std::string key = read_basic<const char*>(m, 's');
        values[key] = variant_value(m, key);
        check(sd_bus_message_exit_container(m), "options");
    }
    check(sd_bus_message_exit_container(m), "options");
    for (auto& [key, value] : values) {
        if (key == "bind") {
            spec.bind = spec_field(proto::string_value(value), key);
        } else if (key == "connect") {
            spec.connect = spec_field(proto::string_value(value), key);
        } else if (key == "listen") {
            spec.listen = static_cast<int>(
                spec_field(proto::integer_value(value, 0, proto::max_listen_backlog), key));
        } else if (key == "nonblock") {
            auto nonblock = proto::boolean_value(value);
            if (!nonblock) {
                bad_call("options.nonblock: expected a boolean");
            }
            spec.nonblock = *nonblock;
        } else if (auto problem = proto::set_socket_option(spec.options, key, value)) {
            bad_call(problem->at("options"));
        }
    }
    return spec;
}

// Runs a method handler; an exception, which must not unwind through sd-bus,
// becomes an Internal error reply.
template <typename Handler>
int guarded(sd_bus_message* m, Handler handler) {
    try {
        return handler();
    } catch (const std::exception& e) {
        spdlog::error("D-Bus: {}: {}", sd_bus_message_get_member(m), e.what());
        return reply_error(m, make_error(ErrorCode::internal, e.what()));
    }
}

const sd_bus_vtable broker_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD_WITH_NAMES("OpenSocket", "siiia{sv}",
                             SD_BUS_PARAM(netns) SD_BUS_PARAM(family) SD_BUS_PARAM(type)
                                 SD_BUS_PARAM(protocol) SD_BUS_PARAM(options),
                             "h", SD_BUS_PARAM(socket), &DbusService::open_socket,
                             SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_NAMES("OpenSockets", "siiia{sv}u",
                             SD_BUS_PARAM(netns) SD_BUS_PARAM(family) SD_BUS_PARAM(type)
                                 SD_BUS_PARAM(protocol) SD_BUS_PARAM(options) SD_BUS_PARAM(count),
                             "ah", SD_BUS_PARAM(sockets), &DbusService::open_sockets,
                             SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_NAMES("ListNamespaces", "", "", "a(asttsutt)", SD_BUS_PARAM(namespaces),
                             &DbusService::list_namespaces, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Ping", "", "", &DbusService::ping, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_PROPERTY("Version", "s", &DbusService::property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("Workers", "u", &DbusService::property, 0, 0),
    SD_BUS_PROPERTY("Clients", "u", &DbusService::property, 0, 0),
    SD_BUS_VTABLE_END,
};

} // namespace

DbusService::DbusService(sd_event* loop, Core& core)
    : core_(core), loop_(loop), retry_timer_(loop, [this](std::uint64_t) { join(); }) {
    join();
}

DbusService::~DbusService() {
    leave();
}

void DbusService::join() {
    leave();
    ++attempts_;
    sd_bus* raw = nullptr;
    int r = sd_bus_open_system_with_description(&raw, "nsbrokerd");
    bus_.reset(raw);
    if (r < 0) {
        retry_later(std::strerror(-r));
        return;
    }
    // sd-bus's default, set here because the daemon relies on it: with it, a
    // lost bus would end the event loop, and the daemon with it.
    sd_bus_set_exit_on_disconnect(bus_.get(), 0);
    sd_bus_slot* slot = nullptr;
    r = sd_bus_add_object_vtable(bus_.get(), &slot, dbus_path, dbus_interface, broker_vtable, this);
    object_.reset(slot);
    // sd-bus says so with a local signal when the bus goes away. A match on
    // the local interface stays in sd-bus: it sends the bus nothing and waits
    // for nothing.
    if (r >= 0) {
        slot = nullptr;
        r = sd_bus_match_signal(bus_.get(), &slot, "org.freedesktop.DBus.Local", nullptr,
                                "org.freedesktop.DBus.Local", "Disconnected",
                                &DbusService::on_disconnected, this);
        disconnected_.reset(slot);
    }
    // The name is asked for without waiting for the answer: a bus that takes
    // connections but is slow to answer (a dbus-daemon starting behind the
    // socket systemd holds for it) must not hold up the loop.
    if (r >= 0) {
        slot = nullptr;
        r = sd_bus_request_name_async(bus_.get(), &slot, dbus_name, 0, &DbusService::on_name_reply,
                                      this);
        name_request_.reset(slot);
    }
    if (r >= 0) {
        r = sd_bus_attach_event(bus_.get(), loop_, SD_EVENT_PRIORITY_NORMAL);
    }
    if (r < 0) {
        leave();
        retry_later(std::strerror(-r));
        return;
    }
    state_ = BusState::joining;
}

int DbusService::on_name_reply(sd_bus_message* m, void* userdata, sd_bus_error*) {
    auto* self = static_cast<DbusService*>(userdata);
    // sd-bus holds its own reference to the slot while it calls here.
    self->name_request_.reset();
    if (self->state_ != BusState::joining) {
        return 0;
    }
    // A bus that closes the connection first fails the call with an error.
    if (const sd_bus_error* error = sd_bus_message_get_error(m)) {
        self->retry_later(std::string("RequestName: ") +
                          (error->message != nullptr ? error->message : error->name));
        return 0;
    }
    uint32_t result = 0;
    if (sd_bus_message_read(m, "u", &result) < 0) {
        self->retry_later("RequestName: an answer that is not a number");
        return 0;
    }
    // Asked for without SD_BUS_NAME_QUEUE, the name is either this
    // connection's now (or already) or another's.
    if (result != name_primary_owner && result != name_already_owner) {
        self->retry_later(std::string(dbus_name) + " is another connection's");
        return 0;
    }
    self->joined();
    return 0;
}

void DbusService::joined() {
    state_ = BusState::serving;
    spdlog::info("D-Bus: {} at {}{}{}", dbus_name, dbus_path, served_before_ ? " again" : "",
                 attempts_ > 1 ? fmt::format(", joined on attempt {}", attempts_) : "");
    served_before_ = true;
    absence_reported_ = false;
    attempts_ = 0;
    retry_delay_usec_ = dbus_first_retry_usec;
}

void DbusService::retry_later(const std::string& why) {
    state_ = BusState::away;
    // One warning for each absence; the attempts it takes are for debugging.
    if (absence_reported_) {
        spdlog::debug("D-Bus: attempt {} to join the system bus failed ({}); the next in {} ms",
                      attempts_, why, retry_delay_usec_ / 1000);
    } else {
        spdlog::warn("D-Bus: cannot join the system bus ({}); serving the socket only, and trying "
                     "again",
                     why);
        absence_reported_ = true;
    }
    schedule_retry();
}

void DbusService::schedule_retry() {
    retry_timer_.arm_in(retry_delay_usec_);
    retry_delay_usec_ = std::min(retry_delay_usec_ * 2, dbus_max_retry_usec);
}

int DbusService::on_disconnected(sd_bus_message*, void* userdata, sd_bus_error*) {
    auto* self = static_cast<DbusService*>(userdata);
    // The connection is closed by now and detached from the loop; it is
    // dropped by the next attempt, outside sd-bus's own callback.
    switch (self->state_) {
    case BusState::serving:
        spdlog::warn("D-Bus: the system bus went away; serving the socket only until it is back");
        self->state_ = BusState::away;
        self->absence_reported_ = true;
        self->schedule_retry();
        break;
    case BusState::joining:
        self->retry_later("the bus closed the connection");
        break;
    case BusState::away: // the failed name request said so first
    case BusState::stopped:
        break;
    }
    return 0;
}

void DbusService::leave() {
    name_request_.reset();
    disconnected_.reset();
    object_.reset();
    bus_.reset();
    callers_.clear();
    channels_.clear();
}

void DbusService::stop() {
    retry_timer_.disarm();
    if (bus_ && (state_ == BusState::serving || state_ == BusState::joining)) {
        name_request_.reset();
        sd_bus_release_name(bus_.get(), dbus_name);
    }
    state_ = BusState::stopped;
}

Result<Caller> DbusService::caller_of(sd_bus_message* m) {
    const char* sender = sd_bus_message_get_sender(m);
    if (sender == nullptr) {
        return sender_identity(m); // a direct connection: nothing to remember it by
    }
    if (auto it = callers_.find(sender); it != callers_.end()) {
        return it->second;
    }
    auto caller = sender_identity(m);
    if (caller) {
        if (callers_.size() >= max_remembered_callers) {
            callers_.clear();
        }
        callers_.emplace(sender, *caller);
    }
    return caller;
}

int DbusService::open_socket(sd_bus_message* m, void* userdata, sd_bus_error*) {
    return guarded(m, [&] { return static_cast<DbusService*>(userdata)->handle_open(m, false); });
}

int DbusService::open_sockets(sd_bus_message* m, void* userdata, sd_bus_error*) {
    return guarded(m, [&] { return static_cast<DbusService*>(userdata)->handle_open(m, true); });
}

int DbusService::list_namespaces(sd_bus_message* m, void* userdata, sd_bus_error*) {
    return guarded(m, [&] {
        return static_cast<DbusService*>(userdata)->handle_plain(m, proto::Op::namespaces);
    });
}

int DbusService::ping(sd_bus_message* m, void* userdata, sd_bus_error*) {
    return guarded(
        m, [&] { return static_cast<DbusService*>(userdata)->handle_plain(m, proto::Op::ping); });
}

int DbusService::handle_open(sd_bus_message* m, bool many) {
    auto caller = caller_of(m);
    if (!caller) {
        core_.count_unreadable(caller.error());
        return reply_error(m, caller.error());
    }
    proto::Request request;
    try {
        const char* netns = nullptr;
        int family = 0;
        int type = 0;
        int protocol = 0;
        check(sd_bus_message_read(m, "siii", &netns, &family, &type, &protocol), "arguments");
        proto::SocketSpec spec = spec_arguments(m, family, type, protocol);
        if (many) {
            uint32_t count = 0;
            check(sd_bus_message_read(m, "u", &count), "count");
            if (count > dbus_max_fds) {
                throw BadInput{make_error(ErrorCode::limit,
                                          "count: at most " + std::to_string(dbus_max_fds) +
                                              " sockets a call, the most the bus passes in one "
                                              "message; the socket protocol gives up to " +
                                              std::to_string(proto::max_fds_per_message))};
            }
            spec.count = count;
        }
        uint64_t cookie = 0;
        sd_bus_message_get_cookie(m, &cookie);
        request.op = proto::Op::socket;
        request.id = cookie;
        request.netns = netns_argument(netns);
        if (auto problem = proto::check_socket_spec(spec)) {
            bad_call(problem->at(""));
        }
        request.specs = {std::move(spec)};
    } catch (const BadInput& e) {
        core_.count_unreadable(e.error);
        return reply_error(m, e.error);
    }
    serve(m, std::move(*caller), std::move(request), many);
    return 1;
}

int DbusService::handle_plain(sd_bus_message* m, proto::Op op) {
    auto caller = caller_of(m);
    if (!caller) {
        core_.count_unreadable(caller.error());
        return reply_error(m, caller.error());
    }
    proto::Request request;
    request.op = op;
    serve(m, std::move(*caller), std::move(request), false);
    return 1;
}

namespace {

// a(asttsutt): names, dev, ino, state, worker pid, requests, sockets.
int append_namespaces(sd_bus_message* reply, const proto::NamespacesReply& list) {
    int r = sd_bus_message_open_container(reply, 'a', "(asttsutt)");
    for (const auto& ns : list.namespaces) {
        if (r < 0) {
            break;
        }
        r = sd_bus_message_open_container(reply, 'r', "asttsutt");
        if (r >= 0) {
            r = sd_bus_message_open_container(reply, 'a', "s");
        }
        for (const auto& name : ns.names) {
            if (r >= 0) {
                r = sd_bus_message_append_basic(reply, 's', name.c_str());
            }
        }
        if (r >= 0) {
            r = sd_bus_message_close_container(reply);
        }
        if (r >= 0) {
            r = sd_bus_message_append(reply, "ttsutt", ns.dev, ns.ino, ns.state.c_str(),
                                      static_cast<uint32_t>(ns.worker_pid), ns.requests,
                                      ns.sockets);
        }
        if (r >= 0) {
            r = sd_bus_message_close_container(reply);
        }
    }
    if (r >= 0) {
        r = sd_bus_message_close_container(reply);
    }
    return r;
}

// The most bytes list takes marshalled as a(asttsutt), every alignment
// padded, with room for the reply's header.
std::size_t marshalled_size_bound(const proto::NamespacesReply& list) {
    std::size_t bound = 4096;
    for (const auto& ns : list.namespaces) {
        bound += 80 + ns.state.size();
        for (const auto& name : ns.names) {
            bound += 8 + name.size();
        }
    }
    return bound;
}

// h, or ah for OpenSockets. sd-bus dups each fd into the message.
int append_sockets(sd_bus_message* reply, const std::vector<UniqueFd>& fds, bool many) {
    if (!many) {
        int fd = fds.empty() ? -1 : fds.front().get();
        return sd_bus_message_append_basic(reply, 'h', &fd);
    }
    int r = sd_bus_message_open_container(reply, 'a', "h");
    for (std::size_t i = 0; r >= 0 && i < fds.size(); ++i) {
        int fd = fds[i].get();
        r = sd_bus_message_append_basic(reply, 'h', &fd);
    }
    if (r >= 0) {
        r = sd_bus_message_close_container(reply);
    }
    return r;
}

} // namespace

void DbusService::serve(sd_bus_message* m, Caller caller, proto::Request request, bool many) {
    std::string sender = sd_bus_message_get_sender(m) ? sd_bus_message_get_sender(m) : "";
    auto& channel = channels_[sender];
    if (!channel) {
        channel = std::make_shared<Channel>(Channel{"from " + sender, 0});
    }
    ++calls_in_flight_;
    ScopedLogFields fields{{caller.uid, caller.pid, {}, {}}};
    CallerProcess process{caller.pid, {}};
    // Shared, since the answer must be copyable.
    std::shared_ptr<sd_bus_message> call(sd_bus_message_ref(m), sd_bus_message_unref);
    std::weak_ptr<int> alive = alive_;
    Answer answer = [this, alive, call, channel, sender, many](proto::ReplyBody body,
                                                               std::vector<UniqueFd> fds) {
        if (alive.expired()) {
            return; // the daemon is going; the fds close here
        }
        --calls_in_flight_;
        // The map holds another channel by this name when the call came on a
        // connection that has been left since.
        if (auto it = channels_.find(sender);
            it != channels_.end() && it->second == channel && channel->in_flight == 0) {
            channels_.erase(it);
        }
        // The call came on a connection that is closed now (the bus went away):
        // there is nobody to answer, and the sockets close here.
        sd_bus* bus = sd_bus_message_get_bus(call.get());
        if (sd_bus_is_open(bus) <= 0) {
            spdlog::debug("D-Bus: the bus {} called on is gone; its answer, with {} sockets, is "
                          "dropped",
                          sender, fds.size());
            return;
        }
        if (auto* error = std::get_if<Error>(&body)) {
            reply_error(call.get(), *error);
            return;
        }
        // Sent whole, the list would cost the daemon its bus connection.
        if (auto* list = std::get_if<proto::NamespacesReply>(&body);
            list && marshalled_size_bound(*list) > dbus_max_message_size) {
            reply_error(
                call.get(),
                make_error(ErrorCode::limit, "the " + std::to_string(list->namespaces.size()) +
                                                 " namespaces take more than the " +
                                                 std::to_string(dbus_max_message_size) +
                                                 " bytes the bus passes in one message; the socket "
                                                 "protocol's \"namespaces\" lists them in pages"));
            return;
        }
        sd_bus_message* raw = nullptr;
        int r = sd_bus_message_new_method_return(call.get(), &raw);
        MessageRef reply(raw);
        if (r >= 0) {
            if (auto* list = std::get_if<proto::NamespacesReply>(&body)) {
                r = append_namespaces(reply.get(), *list);
            } else if (std::holds_alternative<proto::SocketReply>(body)) {
                r = append_sockets(reply.get(), fds, many);
            }
        }
        if (r >= 0) {
            r = sd_bus_send(nullptr, reply.get(), nullptr);
        }
        if (r < 0 && sd_bus_is_open(bus) <= 0) {
            spdlog::debug("D-Bus: the bus went away before the reply to {} was sent", sender);
        } else if (r < 0) {
            // The sockets close here; the caller learns why rather than
            // waiting for its call to time out.
            spdlog::warn("D-Bus: reply to {}: {}", sender, std::strerror(-r));
            reply_error(call.get(),
                        make_error(ErrorCode::internal,
                                   std::string("building the reply: ") + std::strerror(-r)));
        }
    };
    // A bus message may be far larger than a socket message: ListNamespaces
    // answers with the whole list at once.
    core_.serve({std::move(caller), process, channel, std::move(request), UniqueFd{}, false},
                std::move(answer));
}

int DbusService::property(sd_bus*, const char*, const char*, const char* name,
                          sd_bus_message* reply, void* userdata, sd_bus_error*) {
    auto* self = static_cast<DbusService*>(userdata);
    if (std::strcmp(name, "Version") == 0) {
        return sd_bus_message_append(reply, "s", NSBROKER_VERSION);
    }
    auto stats = self->core_.stats();
    auto count = std::strcmp(name, "Workers") == 0 ? stats.workers_live : stats.clients;
    return sd_bus_message_append(reply, "u", static_cast<uint32_t>(count));
}

} // namespace nsbroker::daemon
