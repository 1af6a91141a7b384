// Printing the benchmark's report: aligned tables for people, JSON for
// bench/plot and for comparing runs.
#include "report.hpp"

#include <algorithm>
#include <stdexcept>

namespace nsbroker::bench {

namespace {

using Json = nlohmann::ordered_json;

std::string format_ratio(double value) {
    char text[32];
    std::snprintf(text, sizeof(text), value >= 100 ? "%.0fx" : "%.2fx", value);
    return text;
}

// "1.21x relay-1hop, 0.50x daemon", leaving out the one baseline that has a
// column of its own.
std::string other_ratios(const std::vector<Ratio>& ratios, const std::string& except) {
    std::string text;
    for (const auto& r : ratios) {
        if (r.baseline == except) {
            continue;
        }
        text += (text.empty() ? "" : ", ") + format_ratio(r.value) + " " + r.baseline;
    }
    return text;
}

const Ratio* find_ratio(const std::vector<Ratio>& ratios, const std::string& baseline) {
    auto it = std::find_if(ratios.begin(), ratios.end(),
                           [&](const Ratio& r) { return r.baseline == baseline; });
    return it == ratios.end() ? nullptr : &*it;
}

Json ratios_json(const std::vector<Ratio>& ratios) {
    Json out = Json::object();
    for (const auto& r : ratios) {
        out[r.baseline] = r.value;
    }
    return out;
}

// The width of a table's first column: its longest entry.
template <typename Rows>
int widest(const Rows& rows, std::size_t at_least,
           std::string (*field)(const typename Rows::value_type&)) {
    std::size_t width = at_least;
    for (const auto& r : rows) {
        width = std::max(width, field(r).size());
    }
    return static_cast<int>(width);
}

// Adds a ratio, or replaces one to the same baseline.
void set_ratio(std::vector<Ratio>& ratios, const std::string& baseline, double value) {
    for (auto& r : ratios) {
        if (r.baseline == baseline) {
            r.value = value;
            return;
        }
    }
    ratios.push_back({baseline, value});
}

} // namespace

void Report::note(const std::string& key, Json value) {
    run_[key] = std::move(value);
}

void Report::add(Row row) {
    rows_.push_back(std::move(row));
}

void Report::add(ThroughputRow row) {
    throughput_.push_back(std::move(row));
}

void Report::add(MemoryRow row) {
    memory_.push_back(std::move(row));
}

void Report::compare(const std::string& key, const std::string& baseline) {
    auto by_key = [](const std::string& k) {
        return [&k](const auto& r) {
            return r.key == k;
        };
    };
    auto row = std::find_if(rows_.begin(), rows_.end(), by_key(key));
    auto base = std::find_if(rows_.begin(), rows_.end(), by_key(baseline));
    if (row != rows_.end() && base != rows_.end()) {
        set_ratio(row->ratios, baseline, row->p50_us / base->p50_us);
        return;
    }
    auto flow = std::find_if(throughput_.begin(), throughput_.end(), by_key(key));
    auto flow_base = std::find_if(throughput_.begin(), throughput_.end(), by_key(baseline));
    if (flow != throughput_.end() && flow_base != throughput_.end()) {
        set_ratio(flow->ratios, baseline, flow->sockets_per_s / flow_base->sockets_per_s);
        return;
    }
    throw std::logic_error("no rows " + key + " and " + baseline + " to compare");
}

void Report::compare_all(const std::string& baseline) {
    for (const auto& row : rows_) {
        compare(row.key, baseline);
    }
}

void Report::print_tables(std::FILE* out) const {
    for (const auto& [key, value] : run_.items()) {
        std::fprintf(out, "%s: %s\n", key.c_str(),
                     (value.is_string() ? value.get<std::string>() : value.dump()).c_str());
    }

    const int name_width = widest(
        rows_, 10, +[](const Row& r) { return r.name; });
    const int key_width = widest(
        rows_, 3, +[](const Row& r) { return r.key; });
    std::fprintf(out, "\n%-*s  %-*s  %9s  %9s  %8s  %s\n", name_width, "per socket", key_width,
                 "key", "p50 us", "p99 us", "x setns", "against its own baseline");
    for (const auto& r : rows_) {
        const Ratio* setns = find_ratio(r.ratios, "setns");
        std::fprintf(out, "%-*s  %-*s  %9.2f  %9.2f  %8s  %s\n", name_width, r.name.c_str(),
                     key_width, r.key.c_str(), r.p50_us, r.p99_us,
                     setns ? format_ratio(setns->value).c_str() : "",
                     other_ratios(r.ratios, "setns").c_str());
    }

    if (!throughput_.empty()) {
        const int width = widest(
            throughput_, 10, +[](const ThroughputRow& r) { return r.name; });
        std::fprintf(out, "\n%-*s  %7s  %7s  %10s  %-24s  %s\n", width, "throughput", "threads",
                     "clients", "sockets/s", "CPU us a socket: client", "against its own baseline");
        std::fprintf(out, "%-*s  %7s  %7s  %10s  %24s\n", width, "", "", "", "", "daemon  worker");
        for (const auto& r : throughput_) {
            std::fprintf(out, "%-*s  %7d  %7d  %10.0f  %8.1f %7.1f %7.1f  %s\n", width,
                         r.name.c_str(), r.threads, r.clients, r.sockets_per_s, r.client_cpu_us,
                         r.daemon_cpu_us, r.worker_cpu_us, other_ratios(r.ratios, "").c_str());
        }
    }

    if (!memory_.empty()) {
        std::fprintf(out, "\n%-24s  %8s  %8s  %14s  %8s  %11s\n", "idle worker, worker mode",
                     "workers", "PSS KiB", "of files KiB", "RSS KiB", "private KiB");
        for (const auto& m : memory_) {
            std::fprintf(out, "%-24s  %8d  %8ld  %14ld  %8ld  %11ld\n", m.worker_mode.c_str(),
                         m.workers, m.pss_kib, m.pss_file_kib, m.rss_kib, m.private_kib);
        }
    }
}

Json Report::to_json() const {
    Json rows = Json::array();
    for (const auto& r : rows_) {
        rows.push_back({{"key", r.key},
                        {"name", r.name},
                        {"p50_us", r.p50_us},
                        {"p99_us", r.p99_us},
                        {"samples", r.samples},
                        {"ratios", ratios_json(r.ratios)}});
    }
    Json throughput = Json::array();
    for (const auto& r : throughput_) {
        throughput.push_back({{"key", r.key},
                              {"name", r.name},
                              {"series", r.series},
                              {"threads", r.threads},
                              {"clients", r.clients},
                              {"direct_channels", r.direct_channels},
                              {"sockets_per_s", r.sockets_per_s},
                              {"cpu_us_per_socket",
                               {{"client", r.client_cpu_us},
                                {"daemon", r.daemon_cpu_us},
                                {"worker", r.worker_cpu_us}}},
                              {"ratios", ratios_json(r.ratios)}});
    }
    Json memory = Json::array();
    for (const auto& m : memory_) {
        memory.push_back({{"worker_mode", m.worker_mode},
                          {"workers", m.workers},
                          {"pss_kib", m.pss_kib},
                          {"pss_file_kib", m.pss_file_kib},
                          {"rss_kib", m.rss_kib},
                          {"private_kib", m.private_kib}});
    }
    return {{"run", run_}, {"rows", rows}, {"throughput", throughput}, {"memory", memory}};
}

} // namespace nsbroker::bench
