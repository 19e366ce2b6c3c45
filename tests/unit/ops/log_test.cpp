// The library's logger: named "qos", replaceable by the application, set up from the logging
// section without touching spdlog's default logger; the JSON lines format escapes everything a
// message may hold, and a strict parser (python3's json) reads every line back.
#include "qos/ops/log.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "qos/ops/detail/log_format.hpp"
#include "support/log_capture.hpp"

namespace qos {
namespace {

using test::line_sink;

// A logger writing to a line_sink in `format`, as setup_logging would build it.
std::shared_ptr<spdlog::logger> captured(std::shared_ptr<line_sink> sink, config::log_format format,
                                         const std::string& name = "qos") {
  sink->set_formatter(detail::make_formatter(format, detail::payload_kind::message));
  auto l = std::make_shared<spdlog::logger>(name, sink);
  l->set_level(spdlog::level::trace);
  return l;
}

std::string json_escaped(const std::string& text) {
  spdlog::memory_buf_t out;
  detail::append_json_string(out, text);
  return std::string(out.data(), out.size());
}

// Every test leaves qos on a fresh default logger, whatever it installed.
class log_test : public ::testing::Test {
 protected:
  void TearDown() override {
    ::unsetenv("QOS_LOG_LEVEL");
    set_logger(nullptr);
  }
};

TEST_F(log_test, the_logger_is_named_qos_registered_and_the_same_on_every_call) {
  spdlog::logger* l = logger();
  ASSERT_NE(l, nullptr);
  EXPECT_EQ(l->name(), "qos");
  EXPECT_EQ(logger(), l);
  EXPECT_EQ(spdlog::get("qos").get(), l);
  EXPECT_NE(spdlog::default_logger_raw(), l);
}

TEST_F(log_test, set_logger_replaces_it_and_null_brings_a_default_back) {
  auto sink = std::make_shared<line_sink>();
  auto mine = captured(sink, config::log_format::text, "app.qos");
  set_logger(mine);
  EXPECT_EQ(logger(), mine.get());
  // The registry is the application's: qos dropped its own "qos", registered nothing.
  EXPECT_EQ(spdlog::get("qos"), nullptr);
  EXPECT_EQ(spdlog::get("app.qos"), nullptr);

  config::app_config cfg;
  cfg.source = "test.yaml";
  cfg.routes.push_back({});
  cfg.routes.back().name = "items";
  cfg.routes.back().group = "db";
  log_startup_summary(cfg);
  const auto lines = sink->lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_NE(lines[0].find("qos: config test.yaml: 0 group(s), 1 route(s)"), std::string::npos)
      << lines[0];
  EXPECT_NE(lines[1].find("qos: route 'items': group 'db'"), std::string::npos) << lines[1];

  set_logger(nullptr);
  EXPECT_NE(logger(), mine.get());
  EXPECT_EQ(logger()->name(), "qos");
  EXPECT_EQ(spdlog::get("qos").get(), logger());
}

TEST_F(log_test, a_logger_the_application_registered_as_qos_is_used_as_it_is) {
  set_logger(nullptr);  // nothing registered by qos now, but a default is in use
  spdlog::drop("qos");
  auto sink = std::make_shared<line_sink>();
  auto app = captured(sink, config::log_format::text);
  spdlog::register_logger(app);
  set_logger(nullptr);  // starts over as at first use: finds the application's "qos"
  EXPECT_EQ(logger(), app.get());
  logger()->warn("from the library");
  ASSERT_EQ(sink->lines().size(), 1u);
  spdlog::drop("qos");
}

TEST_F(log_test, setup_logging_leaves_the_default_logger_alone) {
  spdlog::logger* before = spdlog::default_logger_raw();
  const auto global_level = spdlog::get_level();
  const auto default_level = before->level();

  config::logging_config cfg;
  cfg.level = "debug";
  setup_logging(cfg);

  EXPECT_EQ(spdlog::default_logger_raw(), before);
  EXPECT_EQ(spdlog::get_level(), global_level);
  EXPECT_EQ(before->level(), default_level);
  EXPECT_EQ(logger()->level(), spdlog::level::debug);
  EXPECT_EQ(logger()->name(), "qos");
  EXPECT_EQ(spdlog::get("qos").get(), logger());
}

TEST_F(log_test, the_environment_level_wins_and_an_unknown_one_means_info) {
  ::setenv("QOS_LOG_LEVEL", "error", 1);
  setup_logging("debug");
  EXPECT_EQ(logger()->level(), spdlog::level::err);

  ::setenv("QOS_LOG_LEVEL", "chatty", 1);
  testing::internal::CaptureStderr();
  setup_logging("debug");
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(logger()->level(), spdlog::level::info);
  EXPECT_NE(err.find("unknown log level 'chatty', using info"), std::string::npos) << err;
}

TEST_F(log_test, setup_logging_writes_text_to_stderr_by_default) {
  setup_logging(config::logging_config{});
  testing::internal::CaptureStderr();
  testing::internal::CaptureStdout();
  logger()->info("hello {}", 42);
  logger()->debug("not at info");
  const std::string out = testing::internal::GetCapturedStdout();
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(out, "");
  // "2024-05-01T12:00:00.123+02:00 info hello 42"
  EXPECT_TRUE(err.size() > 30 && err[4] == '-' && err[10] == 'T') << err;
  EXPECT_NE(err.find(" info hello 42\n"), std::string::npos) << err;
  EXPECT_EQ(err.find("not at info"), std::string::npos) << err;
}

TEST_F(log_test, setup_logging_writes_json_lines_to_stdout_when_asked) {
  if (!test::have_python3()) GTEST_SKIP() << "python3 is needed to parse the JSON lines";
  config::logging_config cfg;
  cfg.format = config::log_format::json;
  cfg.sink = config::log_sink::standard_output;
  setup_logging(cfg);
  testing::internal::CaptureStdout();
  logger()->info("a \"quoted\" word");
  logger()->warn("two\nlines");
  const std::string out = testing::internal::GetCapturedStdout();

  std::vector<std::string> lines;
  for (std::size_t start = 0, end; (end = out.find('\n', start)) != std::string::npos;
       start = end + 1) {
    lines.push_back(out.substr(start, end - start));
  }
  ASSERT_EQ(lines.size(), 2u) << out;
  std::string error;
  const auto fields = test::python_json(
      lines, "o['level'], o['logger'], o['msg'].encode().hex(), sorted(o), o['time'][-1]", &error);
  ASSERT_TRUE(fields) << error;
  ASSERT_EQ(fields->size(), 2u);
  const std::string keys = " ['level', 'logger', 'msg', 'time'] Z";
  EXPECT_EQ((*fields)[0], "info qos " + test::hex("a \"quoted\" word") + keys);
  EXPECT_EQ((*fields)[1], "warning qos " + test::hex("two\nlines") + keys);
}

TEST_F(log_test, json_lines_survive_quotes_backslashes_control_characters_and_bad_utf8) {
  if (!test::have_python3()) GTEST_SKIP() << "python3 is needed to parse the JSON lines";
  auto sink = std::make_shared<line_sink>();
  set_logger(captured(sink, config::log_format::json, "my \"app\""));
  const std::vector<std::string> messages = {
      "plain",
      "quote \" backslash \\ slash /",
      std::string("nul \0 bell \a esc \x1b del \x7f", 24),
      "tab\tnewline\ncarriage\rform\fbackspace\b",
      "utf-8: \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
      "{\"looks\": \"like json\"}",
  };
  for (const auto& m : messages) logger()->info("{}", m);
  logger()->error("{{}} braces {}", "and args");

  ASSERT_EQ(sink->lines().size(), messages.size() + 1);
  std::string error;
  const auto parsed = test::python_json(
      sink->lines(), "o['msg'].encode('utf-8').hex(), o['logger'], o['level']", &error);
  ASSERT_TRUE(parsed) << error;
  ASSERT_EQ(parsed->size(), messages.size() + 1);
  for (std::size_t i = 0; i < messages.size(); ++i) {
    EXPECT_EQ((*parsed)[i], test::hex(messages[i]) + " my \"app\" info") << i;
  }
  EXPECT_EQ(parsed->back(), test::hex("{} braces and args") + " my \"app\" error");

  // Bytes of no valid UTF-8 sequence become U+FFFD, so the line stays valid UTF-8.
  sink = std::make_shared<line_sink>();
  set_logger(captured(sink, config::log_format::json));
  logger()->info("bad: \xff \xc0\xaf \xed\xa0\x80 \xe2\x82");
  const auto bad = test::python_json(sink->lines(), "o['msg'].encode('utf-8').hex()", &error);
  ASSERT_TRUE(bad) << error;
  const std::string r = "\xef\xbf\xbd";  // U+FFFD
  EXPECT_EQ(bad->at(0), test::hex("bad: " + r + " " + r + r + " " + r + r + r + " " + r + r));
}

TEST(log_format_test, json_strings_escape_exactly_what_json_requires) {
  EXPECT_EQ(json_escaped("plain / text"), "plain / text");
  EXPECT_EQ(json_escaped("a\"b\\c"), "a\\\"b\\\\c");
  EXPECT_EQ(json_escaped("\n\r\t"), "\\n\\r\\t");
  EXPECT_EQ(json_escaped(std::string("\0\x01\x1f", 3)), "\\u0000\\u0001\\u001f");
  EXPECT_EQ(json_escaped("\x7f"), "\x7f");
  EXPECT_EQ(json_escaped("\xc3\xa9\xf0\x9f\x98\x80"), "\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_EQ(json_escaped("\xff"), "\\ufffd");
  EXPECT_EQ(json_escaped("\xc3"), "\\ufffd");                                   // truncated
  EXPECT_EQ(json_escaped("\xc0\x80"), "\\ufffd\\ufffd");                        // overlong
  EXPECT_EQ(json_escaped("\xf4\x90\x80\x80"), "\\ufffd\\ufffd\\ufffd\\ufffd");  // > U+10FFFF
}

TEST(log_format_test, text_lines_carry_an_iso_time_the_level_and_the_message) {
  auto sink = std::make_shared<line_sink>();
  auto l = captured(sink, config::log_format::text);
  l->warn("careful");
  ASSERT_EQ(sink->lines().size(), 1u);
  const std::string line = sink->lines()[0];
  // 2024-05-01T12:00:00.123+02:00 warning careful
  ASSERT_GE(line.size(), 29u) << line;
  EXPECT_EQ(line[4], '-');
  EXPECT_EQ(line[7], '-');
  EXPECT_EQ(line[10], 'T');
  EXPECT_EQ(line[19], '.');
  EXPECT_TRUE(line[23] == '+' || line[23] == '-') << line;
  EXPECT_EQ(line.substr(29), " warning careful");
}

}  // namespace
}  // namespace qos
