// org.nsbroker.Broker1 on the system bus: the broker's methods with D-Bus
// types, served from the daemon's event loop. Callers are identified by the
// credentials the bus attached (never read from /proc) and go through the
// same policy as socket callers. The interface is described by
// proto/org.nsbroker.Broker1.xml. The bus may come and go (dbus-daemon
// restarted, or not started yet): the daemon serves its socket meanwhile and
// joins the bus again when it is back.
#pragma once

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "core/core.hpp"
#include "frontend/frontend.hpp"
#include "sys/timer.hpp"

namespace nsbroker::daemon {

inline constexpr const char* dbus_name = "org.nsbroker.Broker1";
inline constexpr const char* dbus_path = "/org/nsbroker/Broker1";
inline constexpr const char* dbus_interface = "org.nsbroker.Broker1";
// dbus-daemon passes at most this many descriptors in one message (its
// max_message_unix_fds), and disconnects a sender that tries more.
inline constexpr unsigned dbus_max_fds = 16;
// dbus-daemon takes messages of at most this many bytes on the system bus (its
// max_message_size), and disconnects a sender that sends a larger one.
inline constexpr std::size_t dbus_max_message_size = 32 * 1024 * 1024;
// While there is no bus, attempts to join it follow each other after this
// delay, doubled after each failure up to the most: a bus that is restarted
// is found again quickly, and one that stays away costs a connect(2) every
// few seconds.
inline constexpr std::uint64_t dbus_first_retry_usec = 100'000;
inline constexpr std::uint64_t dbus_max_retry_usec = 5'000'000;

class DbusService final : public Frontend {
  public:
    // Joins the system bus (DBUS_SYSTEM_BUS_ADDRESS, when set): connects,
    // adds the object and asks for the name, whose answer comes through the
    // loop. Without a bus, at start or later, the daemon goes on serving its
    // socket, says so once, and tries again on a timer. Throws SystemError
    // when the loop cannot make the timer.
    DbusService(sd_event* loop, Core& core);
    ~DbusService() override;
    DbusService(const DbusService&) = delete;
    DbusService& operator=(const DbusService&) = delete;

    // No call is waiting for a worker.
    [[nodiscard]] bool idle() const override { return calls_in_flight_ == 0; }
    // Gives the name up, so that calls from now on start a new daemon
    // (D-Bus activation) instead of reaching one that is leaving, and stops
    // joining the bus again.
    void stop() override;

    // Called back by sd-bus.
    static int open_socket(sd_bus_message* m, void* userdata, sd_bus_error* error);
    static int open_sockets(sd_bus_message* m, void* userdata, sd_bus_error* error);
    static int list_namespaces(sd_bus_message* m, void* userdata, sd_bus_error* error);
    static int ping(sd_bus_message* m, void* userdata, sd_bus_error* error);
    static int on_disconnected(sd_bus_message* m, void* userdata, sd_bus_error* error);
    static int on_name_reply(sd_bus_message* m, void* userdata, sd_bus_error* error);
    static int property(sd_bus*, const char*, const char*, const char* name, sd_bus_message* reply,
                        void* userdata, sd_bus_error* error);

  private:
    // joining: connected, waiting for the bus's answer to RequestName;
    // serving: the name is ours; away: no bus, the next attempt is timed;
    // stopped: the daemon is leaving and joins no bus again.
    enum class BusState { joining, serving, away, stopped };
    // One attempt: drops what is left of the last connection, connects,
    // adds the object and the Disconnected match, and asks for the name.
    void join();
    // The name is ours: calls reach this daemon.
    void joined();
    // An attempt failed: logged, and the next one timed.
    void retry_later(const std::string& why);
    // Arms the next attempt after the current delay, which then doubles.
    void schedule_retry();
    // Drops the connection, its slots and what was learnt about its peers.
    // Calls still in flight on it find their bus closed when answered.
    void leave();

    int handle_open(sd_bus_message* m, bool many);
    int handle_plain(sd_bus_message* m, proto::Op op);
    // Hands a call to the core; answered by the core's answer, converted.
    void serve(sd_bus_message* m, Caller caller, proto::Request request, bool many);
    // Who sent m. The bus vouches for a connection's credentials when it
    // connects, and never gives its unique name to another, so they are
    // asked for once per connection (the question is a blocking call to the
    // bus) and remembered.
    Result<Caller> caller_of(sd_bus_message* m);
    static constexpr std::size_t max_remembered_callers = 4096;

    struct BusRelease {
        void operator()(sd_bus* bus) const noexcept { sd_bus_flush_close_unref(bus); }
    };
    struct SlotRelease {
        void operator()(sd_bus_slot* slot) const noexcept { sd_bus_slot_unref(slot); }
    };

    Core& core_;
    sd_event* loop_;
    BusState state_ = BusState::away;
    OneShotTimer retry_timer_;
    std::uint64_t retry_delay_usec_ = dbus_first_retry_usec;
    unsigned attempts_ = 0;         // since the name was last ours
    bool absence_reported_ = false; // the warning of this absence is logged
    bool served_before_ = false;    // the name was ours once already
    // Slots hold a reference to their bus: they are released before it.
    std::unique_ptr<sd_bus, BusRelease> bus_;
    std::unique_ptr<sd_bus_slot, SlotRelease> object_;
    std::unique_ptr<sd_bus_slot, SlotRelease> disconnected_;
    std::unique_ptr<sd_bus_slot, SlotRelease> name_request_;
    // Replies that arrive after the service is gone find this expired.
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);
    std::size_t calls_in_flight_ = 0;
    // By sender, on the current connection only: a bus that is started
    // again gives its unique names (":1.42") to other peers.
    std::map<std::string, std::shared_ptr<Channel>> channels_; // while calls are in flight
    std::unordered_map<std::string, Caller> callers_;
};

} // namespace nsbroker::daemon
