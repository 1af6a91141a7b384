// Listing /run/netns for the `namespaces` reply, and cutting the listing
// into pages.
#include "core/namespace_listing.hpp"

#include <dirent.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <utility>

#include "nsbroker/codec.hpp"
#include "sys/netns.hpp"

namespace nsbroker::daemon {

namespace {

using Key = std::pair<std::uint64_t, std::uint64_t>; // (dev, ino)

Key key_of(const proto::NamespaceInfo& n) {
    return {n.dev, n.ino};
}

proto::NamespacesCursor after_whole(const proto::NamespaceInfo& n) {
    return {n.dev, n.ino, std::nullopt};
}

// As many of the entry's names as fit in budget, with the rest of the
// entry: the first part of a namespace too large for one message.
proto::NamespaceInfo first_names_that_fit(proto::NamespaceInfo entry, std::size_t budget) {
    auto size_with = [&entry](std::size_t count) {
        proto::NamespaceInfo part = entry;
        part.names.resize(count);
        return proto::namespace_entry_size(part);
    };
    std::size_t fits = 0;
    std::size_t does_not = entry.names.size(); // the whole entry does not fit
    while (does_not - fits > 1) {
        std::size_t middle = fits + (does_not - fits) / 2;
        if (size_with(middle) <= budget) {
            fits = middle;
        } else {
            does_not = middle;
        }
    }
    entry.names.resize(fits);
    return entry;
}

} // namespace

std::vector<proto::NamespaceInfo>
namespace_listing(const std::string& netns_dir, std::vector<proto::NamespaceInfo> with_workers) {
    std::map<Key, proto::NamespaceInfo> known;
    for (auto& n : with_workers) {
        // A namespace whose worker is exiting may already have its next
        // one: the entry is the worker that serves it now.
        auto [it, added] = known.try_emplace(key_of(n), n);
        if (!added && it->second.state == "exiting") {
            it->second = std::move(n);
        }
    }
    if (DIR* d = ::opendir(netns_dir.c_str())) {
        while (dirent* entry = ::readdir(d)) {
            std::string name = entry->d_name;
            if (name == "." || name == "..") {
                continue;
            }
            auto ns = open_netns_path(netns_dir + "/" + name);
            if (!ns) {
                continue;
            }
            auto [it, added] = known.try_emplace(Key{ns->identity.dev, ns->identity.ino});
            if (added) {
                it->second.dev = ns->identity.dev;
                it->second.ino = ns->identity.ino;
                it->second.state = "idle";
            }
            it->second.names.push_back(std::move(name));
        }
        ::closedir(d);
    }
    std::vector<proto::NamespaceInfo> out;
    out.reserve(known.size());
    for (auto& [key, n] : known) {
        std::sort(n.names.begin(), n.names.end());
        n.names.erase(std::unique(n.names.begin(), n.names.end()), n.names.end());
        out.push_back(std::move(n));
    }
    return out;
}

proto::NamespacesReply namespace_page(std::vector<proto::NamespaceInfo> listing,
                                      const std::optional<proto::NamespacesCursor>& after,
                                      std::size_t limit, bool one_message) {
    proto::NamespacesReply page;
    auto next = listing.begin();
    if (after) {
        // By key, not by position: namespaces made or deleted since the
        // cursor was given move nothing across it.
        const Key cursor{after->dev, after->ino};
        next = std::lower_bound(listing.begin(), listing.end(), cursor,
                                [](const auto& n, const Key& k) { return key_of(n) < k; });
        if (next != listing.end() && key_of(*next) == cursor) {
            auto& names = next->names;
            if (after->name) {
                names.erase(names.begin(),
                            std::upper_bound(names.begin(), names.end(), *after->name));
            }
            if (!after->name || names.empty()) {
                ++next;
            }
        }
    }
    const std::size_t budget =
        one_message ? proto::max_message_size - proto::namespaces_reply_overhead() : SIZE_MAX;
    std::size_t used = 0;
    for (; next != listing.end(); ++next) {
        if (page.namespaces.size() >= limit) {
            page.next_cursor = after_whole(page.namespaces.back());
            break;
        }
        const std::size_t size = one_message ? proto::namespace_entry_size(*next) : 0;
        if (used + size <= budget) {
            used += size;
            page.namespaces.push_back(std::move(*next));
            continue;
        }
        if (!page.namespaces.empty()) {
            page.next_cursor = after_whole(page.namespaces.back());
            break;
        }
        // Alone, this namespace does not fit in a message: it goes on from
        // its last name here at the start of the next page. Its entry
        // without names always fits.
        auto part = first_names_that_fit(std::move(*next), budget);
        page.next_cursor = part.names.empty()
                               ? after_whole(part)
                               : proto::NamespacesCursor{part.dev, part.ino, part.names.back()};
        page.namespaces.push_back(std::move(part));
        break;
    }
    return page;
}

} // namespace nsbroker::daemon
