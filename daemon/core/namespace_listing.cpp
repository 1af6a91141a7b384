// Listing /run/netns for the `namespaces` reply.
#include "core/namespace_listing.hpp"

#include <dirent.h>

#include <algorithm>
#include <tuple>

#include "nsbroker/codec.hpp"
#include "sys/netns.hpp"

namespace nsbroker::daemon {

proto::NamespacesReply namespace_listing(const std::string& netns_dir,
                                         std::vector<proto::NamespaceInfo> with_workers) {
    proto::NamespacesReply out;
    auto& known = with_workers;
    auto find = [&known](const NetnsIdentity& id) {
        return std::find_if(known.begin(), known.end(),
                            [&id](const auto& n) { return n.dev == id.dev && n.ino == id.ino; });
    };
    const std::string& dir = netns_dir;
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* entry = ::readdir(d)) {
            std::string name = entry->d_name;
            if (name == "." || name == "..") {
                continue;
            }
            auto ns = open_netns_path(dir + "/" + name);
            if (!ns) {
                continue;
            }
            auto it = find(ns->identity);
            if (it == known.end()) {
                proto::NamespaceInfo info;
                info.dev = ns->identity.dev;
                info.ino = ns->identity.ino;
                info.state = "idle";
                known.push_back(std::move(info));
                it = std::prev(known.end());
            }
            if (std::find(it->names.begin(), it->names.end(), name) == it->names.end()) {
                it->names.push_back(name);
            }
        }
        ::closedir(d);
    }
    for (auto& n : known) {
        std::sort(n.names.begin(), n.names.end());
    }
    std::sort(known.begin(), known.end(), [](const auto& a, const auto& b) {
        return std::tie(a.names, a.dev, a.ino) < std::tie(b.names, b.dev, b.ino);
    });
    // Keep the reply within one message; the caller learns it was cut.
    out.namespaces = std::move(known);
    while (!out.namespaces.empty() &&
           proto::encode_reply(proto::Reply{UINT64_MAX, out}).size() > proto::max_message_size) {
        out.namespaces.resize(out.namespaces.size() * 3 / 4);
        out.truncated = true;
    }
    return out;
}

} // namespace nsbroker::daemon
