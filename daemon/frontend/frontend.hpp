// What the daemon asks of a front end: a way in to the core (the socket,
// D-Bus, and whatever comes next). A front end turns its peers' messages
// into core::Request and its answers back into its own replies; the core
// knows none of them, and adding one means adding files here and a line in
// main.cpp.
#pragma once

#include <cstddef>

namespace nsbroker::daemon {

class Frontend {
  public:
    virtual ~Frontend() = default;

    // Nothing of this front end's is open or waiting: the daemon may exit
    // when idle (socket activation) without leaving a peer unanswered.
    [[nodiscard]] virtual bool idle() const = 0;
    // Takes nothing new from now on (closes a listener, gives up a bus name);
    // what is in flight is still answered.
    virtual void stop() = 0;
    // Sends what is still queued, just before the daemon exits.
    virtual void flush() {}
    // Peers connected now, for the status line.
    [[nodiscard]] virtual std::size_t clients() const { return 0; }
};

} // namespace nsbroker::daemon
