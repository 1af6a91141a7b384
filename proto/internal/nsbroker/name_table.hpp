// NameTable: a fixed list of names and the values they spell, read both
// ways. Every vocabulary nsbroker spells by name (families, types,
// protocols, operations, error codes, grants, kinds of namespace
// reference, D-Bus error names) is one of these.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string_view>

namespace nsbroker::proto {

template <typename Value>
struct NameEntry {
    std::string_view name;
    Value value;
};

template <typename Value, std::size_t N>
class NameTable {
  public:
    constexpr explicit NameTable(const std::array<NameEntry<Value>, N>& entries)
        : entries_(entries) {}

    [[nodiscard]] constexpr std::optional<Value> value_of(std::string_view name) const noexcept {
        for (const auto& entry : entries_) {
            if (entry.name == name) {
                return entry.value;
            }
        }
        return std::nullopt;
    }

    // The first name of value. The names are string literals, so a name's
    // data() is NUL-terminated.
    [[nodiscard]] constexpr std::optional<std::string_view> name_of(Value value) const noexcept {
        for (const auto& entry : entries_) {
            if (entry.value == value) {
                return entry.name;
            }
        }
        return std::nullopt;
    }

    [[nodiscard]] constexpr auto begin() const noexcept { return entries_.begin(); }
    [[nodiscard]] constexpr auto end() const noexcept { return entries_.end(); }
    [[nodiscard]] constexpr std::size_t size() const noexcept { return N; }

  private:
    std::array<NameEntry<Value>, N> entries_;
};

// A table from a braced list, its size counted by the compiler:
//   constexpr auto names = name_table<int>({{"unix", AF_UNIX}, {"inet", AF_INET}});
template <typename Value, std::size_t N>
constexpr NameTable<Value, N> name_table(const NameEntry<Value> (&entries)[N]) {
    return NameTable<Value, N>(std::to_array(entries));
}

} // namespace nsbroker::proto
