// The worker: a process that joins one network namespace once and then makes
// sockets there for nsbrokerd, for as long as its channel stays open.
#pragma once

namespace nsbroker::daemon {

// Where a worker finds its descriptors, in both worker modes.
inline constexpr int worker_channel_fd = 3;
inline constexpr int worker_netns_fd = 4;

// Moves channel and netns to fds 3 and 4 and closes every other descriptor.
// Called in the child between fork and run_worker (or exec). Async-signal-safe.
// Returns false when a descriptor could not be placed.
bool place_worker_fds(int channel, int netns) noexcept;

// Runs the worker on fds 3 (channel) and 4 (namespace); returns the exit status.
int run_worker();

// The worker's serving loop on control, as run_worker runs it, but without
// joining a namespace or confining anything: it serves in the calling
// thread's namespace, and takes callers' identities for that thread only.
// For driving the worker in-process (tests/fuzz/fuzz_worker_channel.cpp).
// control stays the caller's; returns when its peer closes it.
int serve_in_place(int control);

} // namespace nsbroker::daemon
