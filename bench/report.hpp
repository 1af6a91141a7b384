// The benchmark's report: every figure of one run, with its ratios to the
// baselines measured in the same run, printed as tables or as JSON
// (bench/plot reads the JSON).
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace nsbroker::bench {

// One figure over the same figure of a baseline row.
struct Ratio {
    std::string baseline; // the baseline row's key
    double value = 0;
};

// What one socket costs by one path, in µs per socket.
struct Row {
    std::string key;  // short and stable: what ratios and JSON readers name it by
    std::string name; // what the table says
    double p50_us = 0;
    double p99_us = 0;
    int samples = 0;
    std::vector<Ratio> ratios; // of p50 to the baseline's p50
};

// Sockets a second, with threads each asking for one socket a request, as
// fast as they can, for a fixed time.
struct ThroughputRow {
    std::string key;
    std::string name;
    std::string series; // the rows of one series differ only in their threads
    int threads = 0;
    int clients = 0; // Client objects the threads share out
    bool direct_channels = false;
    double sockets_per_s = 0;
    // Processor time, user and system, a socket cost each process.
    double client_cpu_us = 0;
    double daemon_cpu_us = 0;
    double worker_cpu_us = 0;
    std::vector<Ratio> ratios; // of sockets_per_s to the baseline's
};

// What an idle worker holds in memory, from /proc/PID/smaps_rollup.
// The mean of several idle workers of one daemon: what each costs once
// there are many, sharing the pages they do not write.
struct MemoryRow {
    std::string worker_mode; // nsbrokerd --worker-mode
    int workers = 0;
    long pss_kib = 0;
    long rss_kib = 0;
    long private_kib = 0; // Private_Clean + Private_Dirty
    // The part of the PSS that is a share of pages mapped from files (the
    // program's and its libraries' code and data), which every process
    // running that code shares.
    long pss_file_kib = 0;
};

class Report {
  public:
    // Facts about the run (iterations, load, kernel), printed first.
    void note(const std::string& key, nlohmann::ordered_json value);
    void add(Row row);
    void add(ThroughputRow row);
    void add(MemoryRow row);

    // Records the figure of row key as a ratio to the same figure of row
    // baseline: p50 for cost rows, sockets/s for throughput rows. Throws
    // std::logic_error when either is missing.
    void compare(const std::string& key, const std::string& baseline);
    // Compares every cost row with baseline.
    void compare_all(const std::string& baseline);

    void print_tables(std::FILE* out) const;
    [[nodiscard]] nlohmann::ordered_json to_json() const;

  private:
    nlohmann::ordered_json run_ = nlohmann::ordered_json::object();
    std::vector<Row> rows_;
    std::vector<ThroughputRow> throughput_;
    std::vector<MemoryRow> memory_;
};

} // namespace nsbroker::bench
