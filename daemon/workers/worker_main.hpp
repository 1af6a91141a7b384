// The worker: a process that joins one network namespace once and then makes
// sockets there for nsbrokerd, for as long as its channel stays open.
#pragma once

namespace nsbroker::daemon {

class WorkerFilter;

// Where a worker finds its descriptors, in both worker modes; an exec'd
// worker also finds its seccomp filter's sealed memfd.
inline constexpr int worker_channel_fd = 3;
inline constexpr int worker_netns_fd = 4;
inline constexpr int worker_filter_fd = 5;

// Moves channel, netns and filter to fds 3, 4 and 5 and closes every other
// descriptor; netns and filter may be -1, which leaves theirs closed. Called
// in the child between fork and run_worker (or exec). Async-signal-safe.
// Returns false when a descriptor could not be placed.
bool place_worker_fds(int channel, int netns, int filter) noexcept;

// Runs the worker on fds 3 (channel) and 4 (namespace) and confines it with
// filter: the daemon's, in a forked worker, or when null (an exec'd worker)
// the one on fd 5. Without fd 4 the worker is a spare: it waits for the
// namespace to come on its channel (proto::EnterNamespace). Returns the exit
// status.
int run_worker(const WorkerFilter* filter);

// The worker's serving loop on control, as run_worker runs it, but without
// joining a namespace or confining anything: it serves in the calling
// thread's namespace, and takes callers' identities for that thread only.
// For driving the worker in-process (tests/fuzz/fuzz_worker_channel.cpp).
// control stays the caller's; returns when its peer closes it.
int serve_in_place(int control);

} // namespace nsbroker::daemon
