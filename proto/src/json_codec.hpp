// The strict JSON reading and the socket specs that the codec of requests and
// replies (codec.cpp) and the worker codec (worker_protocol.cpp) share: every
// decoder refuses what it does not expect and names the JSON path of it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nsbroker/bad_input.hpp"
#include "nsbroker/error.hpp"
#include "nsbroker/protocol.hpp"

namespace nsbroker::proto::json_codec {

using nlohmann::json;

// Where a value sits in a message ("sockets[2].bind"). Each level lives on
// the decoder's stack and points to its parent; the text is built only for
// an error, so that decoding a valid message allocates nothing for paths.
class Path {
  public:
    Path() = default;
    // A top-level field; only string literals, which outlive any Path.
    Path(const char* top) : key_(top) {}
    Path(const Path& parent, std::string_view key) : parent_(&parent), key_(key) {}
    Path(const Path& parent, std::size_t index)
        : parent_(&parent), index_(index), is_index_(true) {}

    [[nodiscard]] std::string str() const {
        std::string prefix = parent_ ? parent_->str() : std::string{};
        if (is_index_) {
            return prefix + "[" + std::to_string(index_) + "]";
        }
        if (prefix.empty()) {
            return std::string(key_);
        }
        return key_.empty() ? prefix : prefix + "." + std::string(key_);
    }

  private:
    const Path* parent_ = nullptr;
    std::string_view key_;
    std::size_t index_ = 0;
    bool is_index_ = false;
};

[[noreturn]] void fail(ErrorCode code, const Path& where, const std::string& what);

// "a string", "an object": what a value was, for an error.
std::string type_of(const json& j);

// Reading fields with their JSON path in every message.
class Fields {
  public:
    Fields(const json& object, const Path& path) : object_(object), path_(path) {
        if (!object_.is_object()) {
            fail(ErrorCode::invalid_request, path_, "expected an object, got " + type_of(object_));
        }
    }

    // Every key must be one of the known ones.
    void allow_only(std::initializer_list<std::string_view> known, ErrorCode code) const {
        allow_only_if(
            [known](std::string_view key) {
                return std::find(known.begin(), known.end(), key) != known.end();
            },
            code);
    }
    template <typename IsKnown>
    void allow_only_if(IsKnown is_known, ErrorCode code) const {
        for (const auto& [key, value] : object_.items()) {
            if (!is_known(key)) {
                fail(code, path_, "unknown field \"" + key + "\"");
            }
        }
    }

    [[nodiscard]] const json* find(const char* key) const {
        auto it = object_.find(key);
        return it == object_.end() ? nullptr : &*it;
    }
    [[nodiscard]] Path path(std::string_view key) const { return Path(path_, key); }
    [[nodiscard]] const json& require(const char* key) const {
        const json* j = find(key);
        if (j == nullptr) {
            fail(ErrorCode::invalid_request, path_, std::string("missing field \"") + key + "\"");
        }
        return *j;
    }

    [[nodiscard]] std::string string(const char* key) const {
        return as_string(require(key), path(key));
    }
    [[nodiscard]] std::optional<std::string> opt_string(const char* key) const {
        const json* j = find(key);
        return j ? std::optional(as_string(*j, path(key))) : std::nullopt;
    }
    [[nodiscard]] std::optional<bool> opt_bool(const char* key) const {
        const json* j = find(key);
        if (j == nullptr) {
            return std::nullopt;
        }
        if (!j->is_boolean()) {
            fail(ErrorCode::invalid_request, path(key), "expected a boolean, got " + type_of(*j));
        }
        return j->get<bool>();
    }
    template <typename T>
    [[nodiscard]] T integer(const char* key, T min, T max) const {
        return as_integer<T>(require(key), path(key), min, max);
    }
    template <typename T>
    [[nodiscard]] std::optional<T> opt_integer(const char* key, T min, T max) const {
        const json* j = find(key);
        return j ? std::optional(as_integer<T>(*j, path(key), min, max)) : std::nullopt;
    }

    static std::string as_string(const json& j, const Path& where) {
        if (!j.is_string()) {
            fail(ErrorCode::invalid_request, where, "expected a string, got " + type_of(j));
        }
        return j.get<std::string>();
    }

    template <typename T>
    static T as_integer(const json& j, const Path& where, T min, T max) {
        if (j.is_number_unsigned()) {
            auto v = j.get<std::uint64_t>();
            if (v <= static_cast<std::uint64_t>(max) &&
                (min <= 0 || v >= static_cast<std::uint64_t>(min))) {
                return static_cast<T>(v);
            }
        } else if (j.is_number_integer()) {
            auto v = j.get<std::int64_t>();
            if (v >= static_cast<std::int64_t>(min) &&
                (v < 0 || static_cast<std::uint64_t>(v) <= static_cast<std::uint64_t>(max))) {
                return static_cast<T>(v);
            }
        } else {
            fail(ErrorCode::invalid_request, where, "expected an integer, got " + type_of(j));
        }
        fail(ErrorCode::invalid_request, where,
             "out of range (" + std::to_string(min) + " to " + std::to_string(max) + ")");
    }

  private:
    const json& object_;
    Path path_;
};

// A message's top-level object, refused with the first problem found. When
// `id` is given it receives the message's id, if one could be read, before a
// repeated key is refused: the tree is whole then, and the error can still
// reach whoever waits for that id.
json parse_object(std::string_view bytes, std::optional<std::uint64_t>* id = nullptr);

// The "socket" or "sockets" of a request or a job, at most 253 sockets in all.
json encode_specs(const std::vector<SocketSpec>& specs);
std::vector<SocketSpec> decode_specs(const Fields& f);

} // namespace nsbroker::proto::json_codec
