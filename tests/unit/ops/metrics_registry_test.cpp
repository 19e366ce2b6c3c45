// The metrics on prometheus-cpp: what a registry's text exposition shows after a mixed set of
// reports (every outcome, several priority levels, shadow decisions, late fallbacks), in full
// precision, with arrivals equal to the sum of outcomes per route; and that the text parses
// with Debian's python3-prometheus-client. Reports go straight to the route_metrics admission
// holds; no request runs, so nothing here waits.
#include "qos/ops/metrics_registry.hpp"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "qos/version.hpp"

namespace qos {
namespace {

using namespace std::chrono_literals;
using labels = std::map<std::string, std::string>;

// A sample's key as prometheus-cpp writes it: the labels in name order, a bucket's le last.
std::string series(std::string_view name, labels l = {}) {
  std::string s(name);
  if (l.empty()) return s;
  s += '{';
  auto add = [&s](const std::string& k, const std::string& v) {
    if (s.back() != '{') s += ',';
    s += k + "=\"" + v + "\"";
  };
  const auto le = l.extract("le");
  for (const auto& [k, v] : l) add(k, v);
  if (le) add(le.key(), le.mapped());
  return s + '}';
}

// The value of one sample as written, or "missing".
std::string value(const std::map<std::string, std::string>& all, const std::string& key) {
  const auto it = all.find(key);
  return it == all.end() ? "missing: " + key : it->second;
}

// Every sample of an exposition: key -> the value as written.
std::map<std::string, std::string> samples(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const auto space = line.rfind(' ');
    out[line.substr(0, space)] = line.substr(space + 1);
  }
  return out;
}

// The sum of the samples named `name` whose labels include every one of `having`.
double sum(const std::map<std::string, std::string>& all, std::string_view name,
           const labels& having) {
  double total = 0;
  for (const auto& [key, value] : all) {
    if (key.substr(0, key.find('{')) != name) continue;
    bool match = true;
    for (const auto& [k, v] : having) {
      match = match && key.find(k + "=\"" + v + "\"") != std::string::npos;
    }
    if (match) total += std::stod(value);
  }
  return total;
}

group_options group(std::string name, std::size_t limit, std::size_t queue) {
  group_options g;
  g.name = std::move(name);
  g.limiter.max_concurrent = limit;
  g.limiter.max_queue = queue;
  return g;
}

route_policy route(std::string name, std::string grp) {
  route_policy r;
  r.name = std::move(name);
  r.group = std::move(grp);
  return r;
}

bool ran(outcome o) {
  return o == outcome::admitted || o == outcome::error || o == outcome::exec_timeout;
}

// Admission wired to a metrics_registry as the server wires it: routes item and search in group
// db (limit 4, queue 10), img in group cache (limit 8, queue 2).
struct fixture {
  explicit fixture(
      std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>())
      : metrics(std::move(registry)),
        adm({group("db", 4, 10), group("cache", 8, 2)},
            {route("item", "db"), route("search", "db"), route("img", "cache")}, exec, metrics) {}
  ~fixture() { exec.stop(); }

  route_metrics& at(const std::string& name) { return *adm.find_route(name)->metrics; }

  // One request's two reports, as admission makes them.
  void request(const std::string& name, outcome o, priority level, duration waited = {},
               duration handled = {}) {
    auto& m = at(name);
    m.on_arrival(level);
    m.on_done({.result = o, .level = level, .waited = waited, .handled = handled, .ran = ran(o)});
  }

  // item: outcome i, i + 1 times, at level 0, 3, 7 or 15 (i % 4); search: a few; img: a few.
  void mixed_run() {
    for (const auto& row : outcome_table) {
      const auto i = index(row.value);
      for (std::size_t n = 0; n <= i; ++n) request("item", row.value, mixed_level(row.value), 2ms);
    }
    request("search", outcome::admitted, 1, {}, 5ms);
    request("search", outcome::queue_full, 1);
    request("search", outcome::timeout, 9, 100ms);
    request("img", outcome::admitted, 0, {}, 1ms);
    request("img", outcome::shed, 4, 30ms);
    at("img").on_shadow(outcome::queue_full);
    at("img").on_shadow(outcome::timeout);
    at("img").on_shadow(outcome::queue_full);
    at("search").on_late_fallback(700us);
    at("search").on_late_fallback(300ms);
  }
  static priority mixed_level(outcome o) {
    constexpr std::array<priority, 4> levels{0, 3, 7, 15};
    return levels[index(o) % levels.size()];
  }

  std::map<std::string, std::string> scrape() { return samples(metrics.render(adm)); }

  executor exec{{.threads = 1}};
  metrics_registry metrics;
  admission adm;
};

TEST(metrics_registry_test, every_outcome_is_counted_by_route_group_outcome_and_level) {
  fixture f;
  f.mixed_run();
  const auto s = f.scrape();
  const auto* item = f.metrics.find("item");
  ASSERT_NE(item, nullptr);
  for (const auto& row : outcome_table) {
    const auto level = fixture::mixed_level(row.value);
    const auto expected = std::to_string(index(row.value) + 1);
    const auto key = series("qos_requests_total", {{"route", "item"},
                                                   {"group", "db"},
                                                   {"outcome", std::string(row.name)},
                                                   {"priority", std::to_string(level)}});
    ASSERT_TRUE(s.contains(key)) << key;
    EXPECT_EQ(s.at(key), expected) << key;
    EXPECT_EQ(item->count(row.value), index(row.value) + 1);
    EXPECT_EQ(item->count(row.value, level), index(row.value) + 1);
  }
  // A level the route has seen has every outcome, at 0 until it happens; an unseen level has
  // no series.
  EXPECT_EQ(value(s, series("qos_requests_total", {{"route", "item"},
                                                   {"group", "db"},
                                                   {"outcome", "admitted"},
                                                   {"priority", "15"}})),
            "0");
  EXPECT_FALSE(s.contains(series("qos_requests_arrived_total",
                                 {{"route", "item"}, {"group", "db"}, {"priority", "1"}})));
  // Arrivals by level: level 0 took outcomes 0, 4, 8 (1 + 5 + 9 requests).
  EXPECT_EQ(value(s, series("qos_requests_arrived_total",
                            {{"route", "item"}, {"group", "db"}, {"priority", "0"}})),
            "15");
  EXPECT_EQ(value(s, series("qos_requests_arrived_total",
                            {{"route", "search"}, {"group", "db"}, {"priority", "9"}})),
            "1");
  EXPECT_EQ(f.metrics.find("nowhere"), nullptr);
}

TEST(metrics_registry_test, arrivals_equal_the_sum_of_outcomes_per_route) {
  fixture f;
  f.mixed_run();
  const auto s = f.scrape();
  const std::map<std::string, double> expected{{"item", 66}, {"search", 3}, {"img", 2}};
  for (const auto& [name, n] : expected) {
    const labels of_route{{"route", name}};
    EXPECT_EQ(sum(s, "qos_requests_arrived_total", of_route), n) << name;
    EXPECT_EQ(sum(s, "qos_requests_total", of_route), n) << name;
    EXPECT_EQ(sum(s, "qos_wait_seconds_count", of_route), n) << name;
    EXPECT_EQ(f.metrics.find(name)->arrivals(), static_cast<std::uint64_t>(n)) << name;
  }
}

TEST(metrics_registry_test, histograms_are_cumulative_and_sums_keep_full_precision) {
  fixture f;
  f.request("item", outcome::admitted, 0, 0ms, 1234567891ms);  // 1234567.891 s
  f.request("item", outcome::admitted, 0, 1ms, 2ms);           // on the 0.001 bound: le is <=
  f.request("item", outcome::admitted, 0, 3ms, 4ms);
  f.request("item", outcome::timeout, 0, 200ms);
  f.request("item", outcome::timeout, 0, 7s);  // past the last bound: +Inf only
  const auto text = f.metrics.render(f.adm);
  EXPECT_EQ(text.find("e+"), std::string::npos) << "no exponent notation:\n" << text;
  const auto s = samples(text);
  const labels item{{"route", "item"}, {"group", "db"}};

  EXPECT_EQ(value(s, series("qos_handler_seconds_sum", item)), "1234567.897");
  EXPECT_EQ(value(s, series("qos_handler_seconds_count", item)), "3");
  EXPECT_EQ(value(s, series("qos_wait_seconds_sum", item)), "7.204");
  EXPECT_EQ(value(s, series("qos_wait_seconds_count", item)), "5");

  auto bucket = [&](std::string_view name, std::string le) {
    auto l = item;
    l["le"] = std::move(le);
    return value(s, series(name, l));
  };
  EXPECT_EQ(bucket("qos_wait_seconds_bucket", "0.001"), "2");
  EXPECT_EQ(bucket("qos_wait_seconds_bucket", "0.005"), "3");
  EXPECT_EQ(bucket("qos_wait_seconds_bucket", "0.25"), "4");
  EXPECT_EQ(bucket("qos_wait_seconds_bucket", "5"), "4");
  EXPECT_EQ(bucket("qos_wait_seconds_bucket", "+Inf"), "5");
  EXPECT_EQ(bucket("qos_handler_seconds_bucket", "0.0025"), "1");
  EXPECT_EQ(bucket("qos_handler_seconds_bucket", "0.005"), "2");
  EXPECT_EQ(bucket("qos_handler_seconds_bucket", "10"), "2");
  EXPECT_EQ(bucket("qos_handler_seconds_bucket", "+Inf"), "3");

  // Every bucket of every histogram: cumulative, and +Inf is the count.
  auto cumulative = [&](std::string_view name, const auto& bounds) {
    double last = 0;
    for (double b : bounds) {
      std::ostringstream le;
      le << b;
      const double v = std::stod(bucket(std::string(name) + "_bucket", le.str()));
      EXPECT_GE(v, last) << name << " le=" << b;
      last = v;
    }
    EXPECT_GE(std::stod(bucket(std::string(name) + "_bucket", "+Inf")), last);
    EXPECT_EQ(bucket(std::string(name) + "_bucket", "+Inf"),
              value(s, series(std::string(name) + "_count", item)));
  };
  cumulative("qos_wait_seconds", metrics_registry::wait_buckets);
  cumulative("qos_handler_seconds", metrics_registry::handler_buckets);
  cumulative("qos_fallback_late_seconds", metrics_registry::late_buckets);
}

TEST(metrics_registry_test, shadow_decisions_and_late_fallbacks) {
  fixture f;
  f.mixed_run();
  const auto s = f.scrape();
  const labels img{{"route", "img"}, {"group", "cache"}};
  auto with = [](labels l, std::string k, std::string v) {
    l[std::move(k)] = std::move(v);
    return l;
  };
  EXPECT_EQ(value(s, series("qos_shadow_total", with(img, "decision", "shed"))), "2");
  EXPECT_EQ(value(s, series("qos_shadow_total", with(img, "decision", "queue"))), "1");

  const labels search{{"route", "search"}, {"group", "db"}};
  EXPECT_EQ(value(s, series("qos_fallback_late_seconds_bucket", with(search, "le", "0.0005"))),
            "0");
  EXPECT_EQ(value(s, series("qos_fallback_late_seconds_bucket", with(search, "le", "0.001"))), "1");
  EXPECT_EQ(value(s, series("qos_fallback_late_seconds_bucket", with(search, "le", "0.25"))), "1");
  EXPECT_EQ(value(s, series("qos_fallback_late_seconds_bucket", with(search, "le", "+Inf"))), "2");
  EXPECT_EQ(value(s, series("qos_fallback_late_seconds_sum", search)), "0.3007");
  EXPECT_EQ(f.metrics.find("search")->late_count(), 2u);
  EXPECT_EQ(value(s, series("qos_fallback_late_seconds_count", img)), "0");
}

TEST(metrics_registry_test, group_gauges_are_read_at_scrape_time_and_build_info_is_one) {
  fixture f;
  const labels db{{"group", "db"}};
  auto s = f.scrape();
  EXPECT_EQ(value(s, series("qos_group_limit", db)), "4");
  EXPECT_EQ(value(s, series("qos_group_queue_limit", db)), "10");
  EXPECT_EQ(value(s, series("qos_group_in_use", db)), "0");
  EXPECT_EQ(value(s, series("qos_group_waiting", db)), "0");
  EXPECT_EQ(value(s, series("qos_group_service_seconds", db)), "0");
  EXPECT_EQ(value(s, series("qos_group_queue_limit", {{"group", "cache"}})), "2");
  EXPECT_EQ(value(s, series("qos_build_info", {{"version", QOS_VERSION_STRING}})), "1");

  auto& limiter = f.adm.find_group("db")->limiter();
  std::vector<fiber_limiter::admit_result> held;
  for (int i = 0; i < 5; ++i) held.push_back(limiter.try_admit());  // 4 permits, 1 place
  limiter.on_served(250ms, false);
  s = f.scrape();
  EXPECT_EQ(value(s, series("qos_group_in_use", db)), "4");
  EXPECT_EQ(value(s, series("qos_group_waiting", db)), "1");
  EXPECT_GT(std::stod(value(s, series("qos_group_service_seconds", db))), 0.0);
  held.clear();
  s = f.scrape();
  EXPECT_EQ(value(s, series("qos_group_in_use", db)), "0");
  EXPECT_EQ(value(s, series("qos_group_waiting", db)), "0");
}

TEST(metrics_registry_test, qos_metrics_live_in_the_application_registry) {
  auto app = std::make_shared<prometheus::Registry>();
  auto& mine = prometheus::BuildCounter().Name("app_orders_total").Help("Orders.").Register(*app);
  mine.Add({{"shop", "north"}}).Increment(3);
  fixture f(app);
  EXPECT_EQ(f.metrics.registry(), app);
  f.mixed_run();

  // render() shows the application's metrics with qos's.
  const auto s = f.scrape();
  EXPECT_EQ(value(s, series("app_orders_total", {{"shop", "north"}})), "3");
  EXPECT_EQ(sum(s, "qos_requests_total", {{"route", "item"}}), 66);

  // The application's own serialization has the same qos metrics: counters always, gauges and
  // histograms as of the last refresh.
  f.request("img", outcome::admitted, 0, 1ms, 1ms);
  f.metrics.refresh(f.adm);
  const auto own = samples(prometheus::TextSerializer().Serialize(app->Collect()));
  EXPECT_EQ(value(own, series("app_orders_total", {{"shop", "north"}})), "3");
  EXPECT_EQ(sum(own, "qos_requests_total", {{"route", "img"}}), 3);
  EXPECT_EQ(value(own, series("qos_wait_seconds_count", {{"route", "img"}, {"group", "cache"}})),
            "3");
  EXPECT_EQ(value(own, series("qos_group_limit", {{"group", "cache"}})), "8");
}

TEST(metrics_registry_test, levels_past_the_last_are_counted_at_the_last) {
  fixture f;
  f.request("item", outcome::admitted, 200);
  const auto s = f.scrape();
  EXPECT_EQ(value(s, series("qos_requests_arrived_total",
                            {{"route", "item"}, {"group", "db"}, {"priority", "15"}})),
            "1");
  EXPECT_EQ(f.metrics.find("item")->count(outcome::admitted, 15), 1u);
}

TEST(metrics_registry_test, reports_from_many_threads_are_all_counted) {
  fixture f;
  constexpr int threads = 4, each = 5000;
  std::vector<std::thread> reporters;
  for (int t = 0; t < threads; ++t) {
    reporters.emplace_back([&f, t] {
      for (int i = 0; i < each; ++i) {
        // Every level, first seen by several threads at once; every outcome.
        f.request("item", static_cast<outcome>((i + t) % outcome_count),
                  static_cast<priority>(i % priority_levels), 1ms, 1ms);
      }
    });
  }
  for (auto& r : reporters) r.join();
  const auto s = f.scrape();
  const labels item{{"route", "item"}};
  EXPECT_EQ(sum(s, "qos_requests_arrived_total", item), threads * each);
  EXPECT_EQ(sum(s, "qos_requests_total", item), threads * each);
  EXPECT_EQ(sum(s, "qos_wait_seconds_count", item), threads * each);
  EXPECT_EQ(f.metrics.find("item")->arrivals(), static_cast<std::uint64_t>(threads * each));
}

// ---- The exposition parses with Debian's python3-prometheus-client ----

// The first interpreter that has prometheus_client: Debian's own first (a python3 earlier on
// PATH, such as pyenv's, may not see Debian's packages).
std::string python_with_prometheus_client() {
  for (const char* py : {"/usr/bin/python3", "python3"}) {
    const std::string probe =
        std::string(py) + " -c 'import prometheus_client.parser' >/dev/null 2>&1";
    if (std::system(probe.c_str()) == 0) return py;
  }
  return {};
}

// Reads the exposition in argv[1] and prints a few values, one per line, as "key value".
constexpr const char* parse_script = R"(import sys
from prometheus_client.parser import text_string_to_metric_families

families = {f.name: f for f in text_string_to_metric_families(open(sys.argv[1]).read())}

def total(family, sample, **labels):
    return sum(s.value for s in families[family].samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))

for route in ("item", "search", "img"):
    print("arrived", route, repr(total("qos_requests_arrived", "qos_requests_arrived_total", route=route)))
    print("answered", route, repr(total("qos_requests", "qos_requests_total", route=route)))
print("types", families["qos_requests"].type, families["qos_wait_seconds"].type,
      families["qos_group_limit"].type)
print("handler_sum", repr(total("qos_handler_seconds", "qos_handler_seconds_sum", route="item")))
print("timeouts", repr(total("qos_requests", "qos_requests_total", route="item", outcome="timeout")))
print("late_inf", repr(total("qos_fallback_late_seconds", "qos_fallback_late_seconds_bucket",
                             route="search", le="+Inf")))
print("shed", repr(total("qos_shadow", "qos_shadow_total", route="img", decision="shed")))
print("version", families["qos_build_info"].samples[0].labels["version"])
)";

struct run_result {
  int status = -1;  // the exit status, -1 when it did not exit
  std::string output;
};

run_result run(const std::string& command) {
  run_result r;
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.output.append(buf, n);
  const int status = ::pclose(p);
  if (status != -1 && WIFEXITED(status)) r.status = WEXITSTATUS(status);
  return r;
}

TEST(metrics_registry_test, output_parses_with_python_prometheus_client) {
  const auto python = python_with_prometheus_client();
  if (python.empty()) {
    GTEST_SKIP() << "no python3 with prometheus_client (Debian: apt-get install "
                    "python3-prometheus-client); the strict parse is not checked";
  }
  fixture f;
  f.mixed_run();
  f.request("item", outcome::admitted, 2, 0ms, 1234567891ms);
  const auto text = f.metrics.render(f.adm);

  const auto dir = std::filesystem::temp_directory_path() /
                   ("qos_metrics_registry_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "metrics.txt") << text;
  std::ofstream(dir / "parse.py") << parse_script;
  const auto r = run(python + " " + (dir / "parse.py").string() + " " +
                     (dir / "metrics.txt").string() + " 2>&1");
  std::filesystem::remove_all(dir);

  ASSERT_EQ(r.status, 0) << r.output << "\n--- the exposition:\n" << text;
  // The handler sum of item: 1234567.891 s plus 22 handlers of 0 s.
  const std::string expected =
      "arrived item 67.0\n"
      "answered item 67.0\n"
      "arrived search 3.0\n"
      "answered search 3.0\n"
      "arrived img 2.0\n"
      "answered img 2.0\n"
      "types counter histogram gauge\n"
      "handler_sum 1234567.891\n"
      "timeouts 3.0\n"
      "late_inf 2.0\n"
      "shed 2.0\n"
      "version " QOS_VERSION_STRING "\n";
  EXPECT_EQ(r.output, expected) << text;
}

}  // namespace
}  // namespace qos
