// The access log: nothing when disabled, about the asked fraction when sampled, at most one
// second of lines per burst when rate-limited (the rest counted and reported once), exact text
// lines, and JSON lines a strict parser reads back field by field. Time is passed in: no sleep.
#include "qos/ops/access_log.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/log_capture.hpp"

namespace qos {
namespace {

using namespace std::chrono_literals;
using test::line_sink;

const time_point t0 = time_point{} + 1h;

const access_record sample_record{.method = "GET",
                                  .path = "/items/7",
                                  .status = 200,
                                  .result = outcome::admitted,
                                  .route = "items",
                                  .level = 3,
                                  .waited = 12us,
                                  .handled = 4210us,
                                  .bytes = 187,
                                  .peer = "127.0.0.1:50412"};

struct captured_log {
  std::shared_ptr<line_sink> sink = std::make_shared<line_sink>();
  std::unique_ptr<access_log> log;

  explicit captured_log(config::access_log_config options,
                        config::log_format format = config::log_format::text)
      : log(std::make_unique<access_log>(options, format, sink)) {}

  // Offers `n` requests finishing at `now`; writes a line for each one admitted.
  int offer(int n, time_point now) {
    int admitted = 0;
    for (int i = 0; i < n; ++i) {
      if (log->admit(now)) {
        log->write(sample_record);
        ++admitted;
      }
    }
    return admitted;
  }
  std::vector<std::string> lines() const { return sink->lines(); }
};

// The line without its time stamp ("2024-05-01T12:00:00.123+02:00 ").
std::string without_time(const std::string& line) {
  const auto space = line.find(' ');
  return space == std::string::npos ? line : line.substr(space + 1);
}

TEST(access_log_test, disabled_admits_nothing_and_writes_nothing) {
  captured_log c({.enabled = false, .sample = 1.0, .max_per_second = 0});
  EXPECT_FALSE(c.log->enabled());
  EXPECT_EQ(c.offer(10'000, t0), 0);
  c.log->flush();
  EXPECT_TRUE(c.lines().empty());
}

TEST(access_log_test, every_request_gets_a_line_without_sampling_or_limit) {
  captured_log c({.enabled = true});
  EXPECT_EQ(c.offer(10'000, t0), 10'000);
  EXPECT_EQ(c.lines().size(), 10'000u);
}

TEST(access_log_test, a_sample_of_one_half_logs_about_half) {
  captured_log c({.enabled = true, .sample = 0.5});
  const int admitted = c.offer(10'000, t0);
  // 5000 expected, standard deviation 50: the bounds are ten of them.
  EXPECT_GT(admitted, 4'500);
  EXPECT_LT(admitted, 5'500);
  EXPECT_EQ(c.lines().size(), static_cast<std::size_t>(admitted));
}

TEST(access_log_test, a_small_sample_stays_small) {
  captured_log c({.enabled = true, .sample = 0.01});
  const int admitted = c.offer(10'000, t0);
  EXPECT_GT(admitted, 50);  // 100 expected, deviation about 10
  EXPECT_LT(admitted, 150);
}

TEST(access_log_test, a_burst_gets_one_second_of_lines_and_one_dropped_report) {
  captured_log c({.enabled = true, .max_per_second = 100});
  EXPECT_EQ(c.offer(10'000, t0), 100);
  EXPECT_EQ(c.lines().size(), 100u);  // the report waits for its second
  c.log->flush();
  const auto lines = c.lines();
  ASSERT_EQ(lines.size(), 101u);
  EXPECT_EQ(without_time(lines.back()), "9900 access log lines dropped");
  c.log->flush();  // nothing new: no second report
  EXPECT_EQ(c.lines().size(), 101u);
}

TEST(access_log_test, the_bucket_refills_at_the_rate) {
  captured_log c({.enabled = true, .max_per_second = 100});
  EXPECT_EQ(c.offer(1'000, t0), 100);
  EXPECT_EQ(c.offer(1'000, t0 + 100ms), 10);
  EXPECT_EQ(c.offer(1'000, t0 + 600ms), 50);
  EXPECT_EQ(c.offer(1'000, t0 + 10s), 100);  // full again, never more than full
}

TEST(access_log_test, drops_are_reported_on_their_own_at_most_once_a_second) {
  captured_log c({.enabled = true, .max_per_second = 10});
  auto reports = [&] {
    std::vector<std::string> out;
    for (const auto& line : c.lines()) {
      if (line.find("dropped") != std::string::npos) out.push_back(without_time(line));
    }
    return out;
  };
  EXPECT_EQ(c.offer(100, t0), 10);         // 90 dropped, the report due at t0 + 1s
  EXPECT_EQ(c.offer(100, t0 + 500ms), 5);  // 95 more; not yet
  EXPECT_TRUE(reports().empty());
  EXPECT_EQ(c.offer(100, t0 + 1000ms), 5);  // due: reported with the first line taken
  EXPECT_EQ(reports(), std::vector<std::string>{"185 access log lines dropped"});
  EXPECT_EQ(c.offer(100, t0 + 1500ms), 5);  // 95 + 95 more; the next report at t0 + 2s
  EXPECT_EQ(reports().size(), 1u);
  EXPECT_EQ(c.offer(1, t0 + 2000ms), 1);
  EXPECT_EQ(reports().back(), "190 access log lines dropped");
  // Lines and reports together stay within the rate and a report a second.
  EXPECT_EQ(c.lines().size(), 10u + 5 + 5 + 5 + 1 + 2);
}

TEST(access_log_test, threads_share_one_bucket_and_lose_no_count) {
  captured_log c({.enabled = true, .max_per_second = 100});
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] { admitted += c.offer(10'000, t0); });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(admitted.load(), 100);
  c.log->flush();
  const auto lines = c.lines();
  ASSERT_EQ(lines.size(), 101u);
  EXPECT_EQ(without_time(lines.back()), "39900 access log lines dropped");
}

TEST(access_log_test, text_lines_hold_every_field_in_order) {
  captured_log c({.enabled = true});
  ASSERT_TRUE(c.log->admit(t0));
  c.log->write(sample_record);
  access_record gone = sample_record;
  gone.method = "POST";
  gone.path = "/a b\n\"x\"\\";
  gone.status = 0;
  gone.result = outcome::timeout;
  gone.bytes = 0;
  gone.peer = "";
  gone.handled = {};
  c.log->write(gone);

  const auto lines = c.lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(without_time(lines[0]),
            "GET /items/7 200 admitted route=items priority=3 waited_ms=0.012 handled_ms=4.210 "
            "bytes=187 peer=127.0.0.1:50412");
  // A client's path can neither split the line nor add a field.
  EXPECT_EQ(without_time(lines[1]),
            "POST /a\\x20b\\x0a\"x\"\\x5c 0 timeout route=items priority=3 waited_ms=0.012 "
            "handled_ms=0.000 bytes=0 peer=-");
}

TEST(access_log_test, json_lines_parse_and_carry_every_field) {
  if (!test::have_python3()) GTEST_SKIP() << "python3 is needed to parse the JSON lines";
  captured_log c({.enabled = true, .max_per_second = 2}, config::log_format::json);
  access_record odd = sample_record;
  odd.path = "/q\"uote\\back\nline\x01\xff";
  odd.result = outcome::queue_full;
  odd.status = 503;
  odd.peer = "";
  EXPECT_TRUE(c.log->admit(t0));
  c.log->write(sample_record);
  EXPECT_TRUE(c.log->admit(t0));
  c.log->write(odd);
  EXPECT_FALSE(c.log->admit(t0));
  c.log->flush();
  const auto lines = c.lines();
  ASSERT_EQ(lines.size(), 3u);

  std::string error;
  const auto fields = test::python_json(
      {lines[0], lines[1]},
      "o['logger'], o['method'], o['path'].encode().hex(), o['status'], o['outcome'], "
      "o['route'], o['priority'], o['waited_ms'], o['handled_ms'], o['bytes'], repr(o['peer']), "
      "o['time'][-1], len(o)",
      &error);
  ASSERT_TRUE(fields) << error;
  ASSERT_EQ(fields->size(), 2u);
  EXPECT_EQ((*fields)[0], "qos.access GET " + test::hex("/items/7") +
                              " 200 admitted items 3 0.012 4.21 187 '127.0.0.1:50412' Z 13");
  EXPECT_EQ((*fields)[1], "qos.access GET " + test::hex("/q\"uote\\back\nline\x01\xef\xbf\xbd") +
                              " 503 queue_full items 3 0.012 4.21 187 '' Z 13");

  const auto report = test::python_json({lines[2]}, "o['msg'], o['dropped']", &error);
  ASSERT_TRUE(report) << error;
  EXPECT_EQ(report->at(0), "1 access log lines dropped 1");
}

TEST(access_log_test, a_sample_outside_zero_to_one_is_refused) {
  auto sink = std::make_shared<line_sink>();
  for (double bad : {0.0, -0.5, 1.5, std::nan("")}) {
    EXPECT_THROW((void)access_log({.enabled = true, .sample = bad}, config::log_format::text, sink),
                 std::invalid_argument)
        << bad;
  }
  EXPECT_NO_THROW(
      (void)access_log({.enabled = true, .sample = 1e-9}, config::log_format::text, sink));
}

TEST(access_log_test, built_from_the_logging_section_it_writes_where_that_says) {
  config::logging_config cfg;
  cfg.sink = config::log_sink::standard_output;
  cfg.access_log.enabled = true;
  testing::internal::CaptureStdout();
  {
    access_log log(cfg);
    ASSERT_TRUE(log.admit());
    log.write(sample_record);
  }
  const std::string out = testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find(" GET /items/7 200 admitted route=items"), std::string::npos) << out;
  EXPECT_EQ(out.find("info"), std::string::npos) << out;  // access lines carry no level
}

}  // namespace
}  // namespace qos
