// YAML loader for qos::config. Every value is checked against the schema here, once, so the
// rest of qos can trust app_config; each failure names the file, line, column and key path.
#include "qos/config/config.hpp"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <sstream>
#include <string_view>
#include <system_error>
#include <utility>

#include "qos/config/detail/names.hpp"

namespace qos::config {

namespace {

namespace fs = std::filesystem;

std::string format_what(const std::string& file, int line, int column, const std::string& key,
                        const std::string& message) {
  std::string out = file;
  if (line > 0) {
    out += ':' + std::to_string(line);
    if (column > 0) out += ':' + std::to_string(column);
  }
  out += ": ";
  if (!key.empty()) out += key + ": ";
  return out + message;
}

}  // namespace

config_error::config_error(std::string file, int line, int column, std::string key,
                           std::string message)
    : std::runtime_error(format_what(file, line, column, key, message)),
      file_(std::move(file)),
      line_(line),
      column_(column),
      key_(std::move(key)),
      message_(std::move(message)) {}

const group_config* app_config::find_group(const std::string& name) const {
  auto it = std::find_if(groups.begin(), groups.end(),
                         [&](const group_config& g) { return g.name == name; });
  return it == groups.end() ? nullptr : &*it;
}

const route_config* app_config::find_route(const std::string& name) const {
  auto it = std::find_if(routes.begin(), routes.end(),
                         [&](const route_config& r) { return r.name == name; });
  return it == routes.end() ? nullptr : &*it;
}

bool is_loopback_address(const std::string& address) {
  if (address == "localhost" || address == "::1" || address == "0:0:0:0:0:0:0:1") return true;
  std::string_view v4 = address;
  if (v4.starts_with("::ffff:")) v4.remove_prefix(7);
  // Dotted decimal, four parts 0..255, the first 127.
  int parts = 0;
  int first = -1;
  while (true) {
    int part = 0;
    const auto [end, ec] = std::from_chars(v4.data(), v4.data() + v4.size(), part);
    if (ec != std::errc() || end == v4.data() || part < 0 || part > 255) return false;
    if (first < 0) first = part;
    ++parts;
    v4.remove_prefix(static_cast<std::size_t>(end - v4.data()));
    if (v4.empty()) break;
    if (v4.front() != '.' || parts == 4) return false;
    v4.remove_prefix(1);
  }
  return parts == 4 && first == 127;
}

// ---------------------------------------------------------------------------------------------
// Durations

namespace {

struct duration_unit {
  std::string_view suffix;
  std::int64_t ns;
};

// Longest suffixes first so "ms" is not read as "m" followed by junk.
constexpr duration_unit duration_units[] = {
    {"us", 1'000},         {"ms", 1'000'000},        {"s", 1'000'000'000},
    {"m", 60'000'000'000}, {"h", 3'600'000'000'000},
};

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

[[noreturn]] void bad_duration(const std::string& text, const char* why) {
  throw std::invalid_argument("invalid duration '" + text + "': " + why);
}

std::int64_t unit_ns(const std::string& text, std::string_view suffix) {
  if (suffix.empty()) return 1'000'000;  // a bare number is milliseconds
  for (const auto& unit : duration_units) {
    if (unit.suffix == suffix) return unit.ns;
  }
  bad_duration(text, "unknown unit (use us, ms, s, m or h)");
}

// The parse in nanoseconds; parse_duration truncates to milliseconds, the microsecond keys
// (jobs.group_commit) to microseconds.
std::chrono::nanoseconds parse_duration_ns(const std::string& text) {
  if (!text.empty() && text.front() == '-') bad_duration(text, "must not be negative");
  std::size_t pos = 0;
  while (pos < text.size() && is_digit(text[pos])) ++pos;
  const std::string_view whole(text.data(), pos);
  std::string_view fraction;
  if (pos < text.size() && text[pos] == '.') {
    const std::size_t start = ++pos;
    while (pos < text.size() && is_digit(text[pos])) ++pos;
    fraction = std::string_view(text.data() + start, pos - start);
    if (fraction.empty()) bad_duration(text, "expected digits after '.'");
  }
  if (whole.empty()) bad_duration(text, "expected a number, e.g. 250ms or 1.5s");
  const std::int64_t ns_per_unit = unit_ns(text, std::string_view(text).substr(pos));

  // Integer arithmetic in nanoseconds keeps "1.001s" exact, which doubles would not.
  std::int64_t fraction_ns = 0;  // below one unit
  std::int64_t scale = ns_per_unit;
  for (char digit : fraction) {
    scale /= 10;  // digits finer than a nanosecond are dropped
    fraction_ns += (digit - '0') * scale;
  }
  // The fraction counts too: "9223372036.9s" is past the largest int64 of nanoseconds although
  // its whole seconds are not (a signed overflow UBSan reported through tests/fuzz/).
  std::int64_t units = 0;
  const auto [end, ec] = std::from_chars(whole.data(), whole.data() + whole.size(), units);
  if (ec != std::errc() || end != whole.data() + whole.size() ||
      units > (std::numeric_limits<std::int64_t>::max() - fraction_ns) / ns_per_unit) {
    bad_duration(text, "too large");
  }
  const std::int64_t ns = units * ns_per_unit + fraction_ns;
  // Digits finer than a nanosecond still make a positive duration.
  const bool positive =
      std::string_view(text).substr(0, pos).find_first_of("123456789") != std::string_view::npos;
  return std::chrono::nanoseconds(positive && ns == 0 ? 1 : ns);
}

// A positive duration must stay positive: "100us" means "a little", not "no time at all".
template <typename To>
To truncate_positive(std::chrono::nanoseconds ns) {
  const To out = std::chrono::duration_cast<To>(ns);
  return ns > ns.zero() && out == To::zero() ? To(1) : out;
}

}  // namespace

std::chrono::milliseconds parse_duration(const std::string& text) {
  return truncate_positive<std::chrono::milliseconds>(parse_duration_ns(text));
}

fallback_config fallback_base(const fallback_config& route, outcome why) {
  fallback_config out = route;
  if (traits(why).status != 0) out.status = traits(why).status;
  return out;
}

std::array<fallback_config, outcome_count> resolve(const fallback_set& f) {
  std::array<fallback_config, outcome_count> all;
  for (const auto& row : outcome_table) {
    fallback_config& out = all[index(row.value)];
    if (row.answer == answer_kind::internal) {
      // The application failed, not the gate: nothing to retry after, nothing configured.
      out = fallback_config{};
      out.status = row.status;
      out.retry_after_s = std::nullopt;
      out.body = "{\"error\":\"internal\"}";
    } else if (const auto& own = f.own[index(row.value)]) {
      out = *own;
    } else if (const auto& parent = f.own[index(row.inherits)]) {
      out = *parent;
    } else {
      out = fallback_base(f.route, row.inherits);
    }
    if (row.inherits != row.value && !f.own[index(row.value)] && row.status != 0) {
      out.status = row.status;
    }
  }
  return all;
}

// ---------------------------------------------------------------------------------------------
// Loader

namespace {

// Nullopt when missing, not a regular file or unreadable; an empty file is fine.
std::optional<std::string> read_whole_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) return std::nullopt;
  return text;
}

struct context {
  std::string source;
  fs::path base_dir;
};

// Yaml-cpp marks are 0-based and -1 when unknown; messages are 1-based and 0 when unknown.
[[noreturn]] void fail_at(const context& ctx, const YAML::Mark& mark, const std::string& key,
                          const std::string& message) {
  const int line = mark.line >= 0 ? mark.line + 1 : 0;
  const int column = mark.line >= 0 && mark.column >= 0 ? mark.column + 1 : 0;
  throw config_error(ctx.source, line, column, key, message);
}

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Scalar:
      return "'" + node.Scalar() + "'";
    default:
      return "nothing";
  }
}

std::string join_path(const std::string& parent, std::string_view key) {
  return parent.empty() ? std::string(key) : parent + "." + std::string(key);
}

std::string index_path(const std::string& parent, std::size_t index) {
  return parent + "[" + std::to_string(index) + "]";
}

// A value together with where it came from, so any check on it can report precisely.
struct field {
  const context* ctx;
  YAML::Node node;
  std::string path;
  YAML::Mark mark;  // of the value, or of its key when the value is empty (yaml-cpp marks an
                    // empty value at the token after it, usually on the next line)

  [[noreturn]] void fail(const std::string& message) const { fail_at(*ctx, mark, path, message); }
};

field make_field(const context& ctx, const YAML::Node& node, std::string path,
                 const YAML::Mark& fallback_mark) {
  const YAML::Mark mark = node.IsNull() ? fallback_mark : node.Mark();
  return field{&ctx, node, std::move(path), mark};
}

// A map whose keys were checked against the schema up front, so a typo fails loudly instead of
// silently leaving a default in place. Null counts as an empty map: a section whose keys are
// all commented out just means "defaults".
class map_view {
 public:
  map_view(const field& self, const std::vector<std::string_view>& allowed) : self_(self) {
    if (self.node.IsNull()) return;
    if (!self.node.IsMap()) self.fail("expected a map, got " + describe(self.node));
    for (const auto& pair : self.node) add(pair.first, pair.second, allowed);
  }

  std::optional<field> get(std::string_view key) const {
    for (const auto& known : entries_) {
      if (known.name == key) return known.value;
    }
    return std::nullopt;
  }

  field require(std::string_view key) const {
    if (auto value = get(key)) return *value;
    // The key does not exist, so the best place to point at is the map that lacks it.
    fail_at(*self_.ctx, self_.mark, join_path(self_.path, key), "missing required key");
  }

  const field& self() const { return self_; }

 private:
  struct entry {
    std::string name;
    field value;
  };

  void add(const YAML::Node& key, const YAML::Node& value,
           const std::vector<std::string_view>& allowed) {
    if (!key.IsScalar()) {
      fail_at(*self_.ctx, key.Mark(), self_.path, "keys must be strings, got " + describe(key));
    }
    const std::string& name = key.Scalar();
    const std::string path = join_path(self_.path, name);
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      fail_at(*self_.ctx, key.Mark(), path, "unknown key (expected one of: " + list(allowed) + ")");
    }
    if (get(name)) fail_at(*self_.ctx, key.Mark(), path, "duplicate key");
    entries_.push_back({name, make_field(*self_.ctx, value, path, key.Mark())});
  }

  static std::string list(const std::vector<std::string_view>& allowed) {
    std::string out;
    for (auto name : allowed) out += (out.empty() ? "" : ", ") + std::string(name);
    return out;
  }

  field self_;
  std::vector<entry> entries_;
};

// Keys of a free-form map (header tables, priority values), in document order.
std::vector<std::pair<field, field>> map_entries(const field& self) {
  std::vector<std::pair<field, field>> out;
  if (self.node.IsNull()) return out;
  if (!self.node.IsMap()) self.fail("expected a map, got " + describe(self.node));
  for (const auto& entry : self.node) {
    const field key = make_field(*self.ctx, entry.first, self.path, entry.first.Mark());
    if (!entry.first.IsScalar()) key.fail("keys must be strings, got " + describe(entry.first));
    const std::string path = join_path(self.path, entry.first.Scalar());
    for (const auto& [seen, unused] : out) {
      if (seen.node.Scalar() == entry.first.Scalar()) {
        fail_at(*self.ctx, entry.first.Mark(), path, "duplicate key");
      }
    }
    out.emplace_back(key, make_field(*self.ctx, entry.second, path, entry.first.Mark()));
  }
  return out;
}

std::vector<field> list_items(const field& self) {
  if (!self.node.IsSequence()) self.fail("expected a list, got " + describe(self.node));
  std::vector<field> out;
  std::size_t index = 0;
  for (const auto& item : self.node) {
    out.push_back(make_field(*self.ctx, item, index_path(self.path, index++), self.mark));
  }
  return out;
}

// Quoted scalars are strings to YAML, so `port: "80"` is a type error rather than a number.
bool is_quoted(const YAML::Node& node) {
  return node.Tag() == "!";
}

std::string read_string(const field& f) {
  if (!f.node.IsScalar()) f.fail("expected a string, got " + describe(f.node));
  return f.node.Scalar();
}

std::string read_non_empty(const field& f) {
  std::string value = read_string(f);
  if (value.empty()) f.fail("must not be empty");
  return value;
}

// Parsed by hand, decimal only: yaml-cpp's own conversion reads "010" as octal 8.
long long read_int(const field& f) {
  if (!f.node.IsScalar() || is_quoted(f.node)) {
    f.fail("expected an integer, got " + (f.node.IsScalar() ? "a string" : describe(f.node)));
  }
  const std::string& text = f.node.Scalar();
  long long value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec == std::errc::result_out_of_range) f.fail("integer out of range: " + text);
  if (ec != std::errc() || end != text.data() + text.size()) {
    f.fail("expected an integer, got " + describe(f.node));
  }
  return value;
}

long long read_int_in(const field& f, long long min, long long max) {
  const long long value = read_int(f);
  if (value < min || value > max) {
    f.fail("must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " +
           std::to_string(value));
  }
  return value;
}

std::size_t read_count(const field& f, long long min) {
  const long long value = read_int(f);
  if (value < min) {
    f.fail((min == 0 ? "must be >= 0" : "must be > " + std::to_string(min - 1)) + ", got " +
           std::to_string(value));
  }
  return static_cast<std::size_t>(value);
}

// A count within [min, max], worded as validate() words its bounds.
std::size_t read_count(const field& f, long long min, long long max) {
  const std::size_t value = read_count(f, min);
  if (value > static_cast<std::size_t>(max)) {
    f.fail("must be <= " + std::to_string(max) + ", got " + std::to_string(value));
  }
  return value;
}

bool read_bool(const field& f) {
  bool value = false;
  if (!f.node.IsScalar() || is_quoted(f.node) || !YAML::convert<bool>::decode(f.node, value)) {
    f.fail("expected true or false, got " + describe(f.node));
  }
  return value;
}

std::chrono::milliseconds read_duration(const field& f) {
  if (!f.node.IsScalar()) f.fail("expected a duration, got " + describe(f.node));
  try {
    return parse_duration(f.node.Scalar());
  } catch (const std::invalid_argument& e) {
    f.fail(e.what());
  }
}

// A duration within [min, max]; the bounds are given as the file would write them.
std::chrono::milliseconds read_duration_in(const field& f, std::chrono::milliseconds min,
                                           std::chrono::milliseconds max, const char* min_text,
                                           const char* max_text) {
  const auto d = read_duration(f);
  if (d < min || d > max) {
    f.fail(std::string("must be between ") + min_text + " and " + max_text + ", got " +
           std::to_string(d.count()) + "ms");
  }
  return d;
}

// A duration kept to the microsecond, for a key whose useful values are below a millisecond.
std::chrono::microseconds read_duration_us(const field& f) {
  if (!f.node.IsScalar()) f.fail("expected a duration, got " + describe(f.node));
  try {
    return truncate_positive<std::chrono::microseconds>(parse_duration_ns(f.node.Scalar()));
  } catch (const std::invalid_argument& e) {
    f.fail(e.what());
  }
}

// A real number; integers are fine, quoted strings, bools, inf and nan are not.
double read_number(const field& f) {
  if (!f.node.IsScalar() || is_quoted(f.node)) {
    f.fail("expected a number, got " + (f.node.IsScalar() ? "a string" : describe(f.node)));
  }
  const std::string& text = f.node.Scalar();
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(value)) {
    f.fail("expected a number, got " + describe(f.node));
  }
  return value;
}

// One of a fixed set of words (config/detail/names.hpp), e.g. an algorithm or a discipline.
using detail::drain_modes;
using detail::job_stores;
using detail::limit_algorithms;
using detail::log_formats;
using detail::log_sinks;
using detail::name_of;
using detail::named;
using detail::queue_disciplines;
using detail::route_modes;
using detail::sqlite_syncs;

template <typename T, std::size_t N>
T read_choice(const field& f, const named<T> (&choices)[N], const char* what) {
  const std::string text = read_string(f);
  for (const auto& choice : choices) {
    if (choice.name == text) return choice.value;
  }
  std::string expected;
  for (std::size_t i = 0; i < N; ++i) {
    expected += (i == 0 ? "" : i + 1 == N ? " or " : ", ") + std::string(choices[i].name);
  }
  f.fail(std::string("invalid ") + what + " '" + text + "' (expected " + expected + ")");
}

priority read_priority(const field& f) {
  return static_cast<priority>(read_int_in(f, 0, max_priority));
}

// RFC 9110 token characters; anything else would corrupt the response head.
bool is_header_name(std::string_view name) {
  constexpr std::string_view extra = "!#$%&'*+-.^_`|~";
  return !name.empty() && std::all_of(name.begin(), name.end(), [&](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || extra.find(c) != extra.npos;
  });
}

bool has_line_break(std::string_view value) {
  return value.find_first_of(std::string_view("\r\n\0", 3)) != value.npos;
}

std::string read_header_name(const field& f) {
  std::string name = read_string(f);
  if (!is_header_name(name)) f.fail("invalid header name '" + name + "'");
  return name;
}

std::string read_header_value(const field& f) {
  std::string value = read_string(f);
  if (has_line_break(value)) f.fail("header values must not contain line breaks");
  return value;
}

bool iequals(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

// ---------------------------------------------------------------------------------------------
// Sections

server_config parse_server(const field& f) {
  const map_view map(f, {"address", "port", "reactor_threads", "fiber_threads", "max_pending_jobs",
                         "shutdown_grace", "backlog", "max_request_size", "header_timeout",
                         "body_timeout", "keepalive_timeout", "send_timeout", "max_connections",
                         "write_stall", "drain_delay", "drain_parked"});
  server_config out;
  // Upper bounds, the same on every machine (a file accepted in CI is accepted in production).
  // Threads: beyond the cores, reactors only contend and fiber threads only help handlers
  // that block, which belong on a blocking pool; 256 is far past both and far below what the
  // kernel refuses (100,000 threads ended in an uncaught std::system_error). Pistache refuses
  // more than 255 reactors, but only when the server starts.
  constexpr long long max_fiber_threads = 256;
  constexpr long long max_reactor_threads = 255;
  // The executor allocates and touches one 8-byte slot per pending job at start:
  // 2^20 slots are 8 MiB (10^12 ended in std::bad_alloc), 64 x the default.
  constexpr long long max_pending_jobs = 1LL << 20;
  // The kernel caps the accept queue at net.core.somaxconn, historically a 16-bit value.
  constexpr long long max_backlog = 65535;
  // Supervisors give up long before (systemd's TimeoutStopSec 90 s, Kubernetes' grace 30 s).
  constexpr auto max_shutdown_grace = std::chrono::minutes(10);
  if (auto v = map.get("address")) out.address = read_non_empty(*v);
  if (auto v = map.get("port")) out.port = static_cast<std::uint16_t>(read_int_in(*v, 0, 65535));
  if (auto v = map.get("reactor_threads")) {
    out.reactor_threads = read_count(*v, 1, max_reactor_threads);
  }
  if (auto v = map.get("fiber_threads")) out.fiber_threads = read_count(*v, 1, max_fiber_threads);
  if (auto v = map.get("max_pending_jobs")) {
    out.max_pending_jobs = read_count(*v, 1, max_pending_jobs);
  }
  if (auto v = map.get("shutdown_grace")) {
    out.shutdown_grace = read_duration(*v);
    if (out.shutdown_grace > max_shutdown_grace) {
      v->fail("must be <= 10m, got " + std::to_string(out.shutdown_grace.count()) + "ms");
    }
  }
  if (auto v = map.get("backlog")) out.backlog = read_count(*v, 1, max_backlog);
  if (auto v = map.get("max_request_size")) {
    // Below a few hundred bytes no request head fits; above 1 GiB one request could take the
    // process's memory.
    out.max_request_size = static_cast<std::size_t>(read_int_in(*v, 512, 1LL << 30));
  }
  // At least a second (clients on slow links), at most a day.
  const auto read_timeout = [](const field& v) {
    const auto t = read_duration(v);
    if (t < std::chrono::seconds(1) || t > std::chrono::hours(24)) {
      v.fail("must be between 1s and 24h, got " + std::to_string(t.count()) + "ms");
    }
    return t;
  };
  if (auto v = map.get("header_timeout")) out.header_timeout = read_timeout(*v);
  if (auto v = map.get("body_timeout")) out.body_timeout = read_timeout(*v);
  if (auto v = map.get("keepalive_timeout")) out.keepalive_timeout = read_timeout(*v);
  if (auto v = map.get("send_timeout")) out.send_timeout = read_timeout(*v);
  // Each connection holds a descriptor and Pistache's buffers; a million is far past what one
  // process serves and what the usual hard descriptor limit (2^20) lets it open.
  constexpr long long max_connections = 1'000'000;
  if (auto v = map.get("max_connections")) out.max_connections = read_count(*v, 0, max_connections);
  // 0 turns the watchdog off. The watchdog probes every write_stall / 4 (at most 250 ms, at
  // least 10 ms): below 100 ms an ordinary busy moment of a reactor (an unguarded handler
  // running on it, a large response serialized) would count as a stall and cut healthy
  // clients; a reactor frozen for an hour has long failed every other client on it.
  if (auto v = map.get("write_stall")) {
    out.write_stall = read_duration(*v);
    if (out.write_stall != std::chrono::milliseconds::zero() &&
        (out.write_stall < std::chrono::milliseconds(100) ||
         out.write_stall > std::chrono::hours(1))) {
      v->fail("must be 0 (off) or between 100ms and 1h, got " +
              std::to_string(out.write_stall.count()) + "ms");
    }
  }
  // A balancer notices a failing readiness check within a few probe intervals (AWS: 2 x 5..300
  // s, Kubernetes: 3 x 10 s by default); 5 minutes covers the slowest and still ends.
  constexpr auto max_drain_delay = std::chrono::minutes(5);
  if (auto v = map.get("drain_delay")) {
    out.drain_delay = read_duration(*v);
    if (out.drain_delay > max_drain_delay) {
      v->fail("must be <= 5m, got " + std::to_string(out.drain_delay.count()) + "ms");
    }
  }
  if (auto v = map.get("drain_parked")) out.drain_parked = read_choice(*v, drain_modes, "mode");
  return out;
}

// A bearer token travels in an Authorization header: visible ASCII only (HTTP parsers trim
// surrounding blanks, and a control character could never be sent), and at most 4 KiB, a
// fraction of any server's header limit.
constexpr std::size_t max_token_size = 4096;

std::string check_token(const field& f, std::string token, const std::string& from) {
  if (token.empty()) f.fail(from + " is empty");
  if (token.size() > max_token_size) {
    f.fail(from + " is longer than 4096 bytes (" + std::to_string(token.size()) + ")");
  }
  for (const char c : token) {
    if (c < 0x21 || c > 0x7e) {
      f.fail(from + " holds a blank or a non-ASCII or control character (a bearer token is " +
             "visible ASCII)");
    }
  }
  return token;
}

admin_config parse_admin(const field& f, const server_config& server) {
  const map_view map(f, {"address", "port", "token_file", "token_env"});
  admin_config out;
  if (auto v = map.get("address")) out.address = read_non_empty(*v);
  const field port = map.require("port");
  out.port = static_cast<std::uint16_t>(read_int_in(port, 0, 65535));
  // Two listeners on one address and port: the second bind would fail at start.
  const auto wildcard = [](const std::string& a) { return a == "0.0.0.0" || a == "::"; };
  if (out.port != 0 && out.port == server.port &&
      (out.address == server.address || wildcard(out.address) || wildcard(server.address))) {
    port.fail("the admin listener needs a port of its own (server.port is " +
              std::to_string(server.port) + ")");
  }
  const auto file = map.get("token_file");
  const auto env = map.get("token_env");
  if (file && env) env->fail("token_file and token_env are mutually exclusive");
  if (file) {
    const fs::path path = (map.self().ctx->base_dir / read_non_empty(*file)).lexically_normal();
    std::optional<std::string> text = read_whole_file(path);
    if (!text) file->fail("cannot read token file " + path.string());
    // Written by `echo token > file` or an editor: the last line break is not part of it.
    if (!text->empty() && text->back() == '\n') text->pop_back();
    if (!text->empty() && text->back() == '\r') text->pop_back();
    out.token_file = path.string();
    out.token = check_token(*file, std::move(*text), "token file " + path.string());
  }
  if (env) {
    out.token_env = read_non_empty(*env);
    const char* value = std::getenv(out.token_env.c_str());
    if (value == nullptr) env->fail("environment variable " + out.token_env + " is not set");
    std::string text = value;
    if (!text.empty() && text.back() == '\n') text.pop_back();
    out.token = check_token(*env, std::move(text), "environment variable " + out.token_env);
  }
  if (!is_loopback_address(out.address) && out.token.empty()) {
    // Only a non-default address gets here, so the key is in the file.
    map.require("address").fail("the admin listener on " + out.address +
                                " is reachable beyond this machine: it needs a bearer token " +
                                "(set token_file or token_env)");
  }
  return out;
}

access_log_config parse_access_log(const field& f) {
  const map_view map(f, {"enabled", "sample", "max_per_second"});
  access_log_config out;
  if (auto v = map.get("enabled")) out.enabled = read_bool(*v);
  if (auto v = map.get("sample")) {
    out.sample = read_number(*v);
    if (!(out.sample > 0 && out.sample <= 1)) v->fail("must be in (0, 1], got " + v->node.Scalar());
  }
  // A line costs about a microsecond to format and write: past a million a second the bucket
  // limits nothing one logger can write, and 0 already means no limit.
  if (auto v = map.get("max_per_second")) out.max_per_second = read_count(*v, 0, 1'000'000);
  return out;
}

logging_config parse_logging(const field& f) {
  const map_view map(f, {"level", "format", "sink", "access_log"});
  logging_config out;
  if (auto v = map.get("level")) {
    static constexpr std::string_view levels[] = {"trace", "debug",    "info", "warn",
                                                  "error", "critical", "off"};
    out.level = read_string(*v);
    if (std::find(std::begin(levels), std::end(levels), out.level) == std::end(levels)) {
      v->fail("invalid log level '" + out.level +
              "' (expected trace, debug, info, warn, error, critical or off)");
    }
  }
  if (auto v = map.get("format")) out.format = read_choice(*v, log_formats, "log format");
  if (auto v = map.get("sink")) out.sink = read_choice(*v, log_sinks, "log sink");
  if (auto v = map.get("access_log")) out.access_log = parse_access_log(*v);
  return out;
}

bool is_group_name(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
}

// Where each key of a group or route was written, by validate()'s key spelling ("limit.max").
using key_fields = std::map<std::string, field, std::less<>>;

// Runs the one range check (admission's validate) and reports its complaint at the line of
// the key it names, or at the entry itself when the key was left to its default.
template <typename... Args>
void check_ranges(const field& entry, const key_fields& at, const Args&... what) {
  try {
    validate(what...);
  } catch (const invalid_option& e) {
    if (auto it = at.find(e.key()); it != at.end()) it->second.fail(e.message());
    fail_at(*entry.ctx, entry.mark, join_path(entry.path, e.key()), e.message());
  }
}

// Reads `limit:`; the ranges are validate()'s. Defaults: max = 4 x max_concurrent (at most
// bounds::permits, at least min), initial = max_concurrent within [min, max].
limit_options parse_limit(const field& f, std::size_t max_concurrent, key_fields& at) {
  const map_view map(f, {"algorithm", "min", "max", "initial", "backoff_ratio", "timeout",
                         "rtt_tolerance", "smoothing", "long_window", "probe_interval"});
  limit_options opt;
  opt.kind = read_choice(map.require("algorithm"), limit_algorithms, "algorithm");
  // A parameter of another algorithm would be silently ignored; say so instead.
  const auto param = [&](std::string_view key,
                         std::initializer_list<limit_kind> kinds) -> std::optional<field> {
    auto v = map.get(key);
    if (!v) return v;
    at.insert_or_assign("limit." + std::string(key), *v);
    if (kinds.size() != 0 && std::find(kinds.begin(), kinds.end(), opt.kind) == kinds.end()) {
      std::string names;
      for (const limit_kind kind : kinds) {
        names += (names.empty() ? "" : " and ") + std::string(name_of(limit_algorithms, kind));
      }
      v->fail(std::string("applies only to algorithm") + (kinds.size() > 1 ? "s " : " ") + names +
              ", not " + std::string(name_of(limit_algorithms, opt.kind)));
    }
    return v;
  };
  if (auto v = param("min", {})) opt.min = read_count(*v, 1);
  if (auto v = param("max", {})) {
    opt.max = read_count(*v, 1);
  } else {
    // Within bounds::permits, so that a large max_concurrent does not make a default that
    // validate() refuses.
    const std::size_t four_times = max_concurrent > bounds::permits / 4
                                       ? std::max(bounds::permits, max_concurrent)
                                       : 4 * max_concurrent;
    opt.max = std::max(four_times, opt.min);
  }
  if (auto v = param("initial", {})) {
    opt.initial = read_count(*v, 0);
  } else {
    opt.initial = std::clamp(max_concurrent, opt.min, std::max(opt.min, opt.max));
  }
  if (auto v = param("backoff_ratio", {limit_kind::aimd})) opt.backoff_ratio = read_number(*v);
  if (auto v = param("timeout", {limit_kind::aimd})) opt.timeout = read_duration(*v);
  if (auto v = param("rtt_tolerance", {limit_kind::gradient2})) opt.rtt_tolerance = read_number(*v);
  if (auto v = param("smoothing", {limit_kind::gradient2})) opt.smoothing = read_number(*v);
  if (auto v = param("long_window", {limit_kind::gradient2})) opt.long_window = read_count(*v, 0);
  if (auto v = param("probe_interval", {limit_kind::gradient2, limit_kind::vegas})) {
    opt.probe_interval = read_duration(*v);
  }
  return opt;
}

void parse_queue(const field& f, limiter_options& out, key_fields& at) {
  const map_view map(f, {"discipline", "target", "interval"});
  if (auto v = map.get("discipline")) {
    out.discipline = read_choice(*v, queue_disciplines, "discipline");
  }
  const std::string discipline(name_of(queue_disciplines, out.discipline));
  if (auto v = map.get("target")) {
    if (out.discipline != queue_discipline::codel) {
      v->fail("applies only to discipline codel, not " + discipline);
    }
    out.target = read_duration(*v);
    at.insert_or_assign("queue.target", *v);
  }
  if (auto v = map.get("interval")) {
    if (out.discipline == queue_discipline::fifo) {
      v->fail("applies only to disciplines codel and adaptive_lifo, not " + discipline);
    }
    out.interval = read_duration(*v);
    at.insert_or_assign("queue.interval", *v);
  }
}

group_config parse_group(const field& f) {
  const map_view map(f, {"name", "max_concurrent", "max_queue", "blocking_threads", "limit",
                         "queue", "aging_step", "reserve", "shadow"});
  group_config out;
  out.line = f.mark.line + 1;
  const field name = map.require("name");
  out.name = read_string(name);
  if (!is_group_name(out.name)) {
    name.fail("invalid group name '" + out.name + "' (use letters, digits, '_', '.', '-')");
  }
  key_fields at;
  limiter_options& l = out.limiter;
  const field max_concurrent = map.require("max_concurrent");
  l.max_concurrent = read_count(max_concurrent, 1);
  at.insert_or_assign("max_concurrent", max_concurrent);
  if (auto v = map.get("max_queue")) {
    l.max_queue = read_count(*v, 1);
    at.insert_or_assign("max_queue", *v);
  }
  if (auto v = map.get("limit")) out.limit = parse_limit(*v, l.max_concurrent, at);
  if (auto v = map.get("queue")) parse_queue(*v, l, at);
  if (auto v = map.get("aging_step")) {
    l.aging_step = read_duration(*v);
    at.insert_or_assign("aging_step", *v);
  }
  if (auto v = map.get("reserve")) {
    const map_view reserve(*v, {"permits", "priority"});
    const field permits = reserve.require("permits");
    const field level = reserve.require("priority");
    l.reserve = read_count(permits, 1);
    l.reserve_level = read_priority(level);
    at.insert_or_assign("reserve.permits", permits);
    at.insert_or_assign("reserve.priority", level);
  }
  if (auto v = map.get("shadow")) out.shadow = read_bool(*v);
  if (auto v = map.get("blocking_threads")) {
    out.blocking_threads = read_count(*v, 0);
    at.insert_or_assign("blocking_threads", *v);
  }
  check_ranges(f, at, static_cast<const group_options&>(out));
  return out;
}

template <typename T>
void check_unique(const std::vector<T>& items, const std::vector<field>& fields, const char* what) {
  for (std::size_t i = 0; i < items.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (items[i].name != items[j].name) continue;
      const field name = make_field(*fields[i].ctx, fields[i].node["name"],
                                    join_path(fields[i].path, "name"), fields[i].mark);
      name.fail(std::string("duplicate ") + what + " name '" + items[i].name +
                "' (first declared at line " + std::to_string(items[j].line) + ")");
    }
  }
}

std::vector<group_config> parse_groups(const field& f) {
  const std::vector<field> items = list_items(f);
  if (items.empty()) f.fail("must list at least one group");
  std::vector<group_config> out;
  for (const field& item : items) out.push_back(parse_group(item));
  check_unique(out, items, "group");
  return out;
}

priority_config parse_priority(const field& f) {
  const map_view map(f, {"default", "header", "values", "raw_header", "raw_header_trusted"});
  priority_config out;
  if (auto v = map.get("default")) out.default_level = read_priority(*v);
  if (auto v = map.get("header")) out.header = read_header_name(*v);
  if (auto v = map.get("values")) {
    if (out.header.empty()) v->fail("values need a header to read them from");
    for (const auto& [key, value] : map_entries(*v)) {
      out.values[read_string(key)] = read_priority(value);
    }
  }
  if (auto v = map.get("raw_header")) out.raw_header = read_header_name(*v);
  if (auto v = map.get("raw_header_trusted")) out.raw_header_trusted = read_bool(*v);
  return out;
}

std::string content_type_for(const fs::path& file) {
  std::string ext = file.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ext == ".json") return "application/json";
  if (ext == ".svg") return "image/svg+xml";
  if (ext == ".png") return "image/png";
  if (ext == ".html" || ext == ".htm") return "text/html";
  if (ext == ".txt") return "text/plain";
  return "application/octet-stream";
}

std::string read_body_file(const field& f, const fs::path& path) {
  std::optional<std::string> body = read_whole_file(path);
  if (!body) f.fail("cannot read fallback file " + path.string());
  return std::move(*body);
}

bool is_decimal_integer(const std::string& text) {
  long long value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  return (ec == std::errc() || ec == std::errc::result_out_of_range) &&
         end == text.data() + text.size();
}

// Seconds, `none` (or null: no header) or `auto` (computed per response). Any of them replaces
// what an entry inherited.
void read_retry_after(const field& f, fallback_config& out) {
  const bool scalar = f.node.IsScalar();
  if (f.node.IsNull() || (scalar && f.node.Scalar() == "none")) {
    out.retry_after_s = std::nullopt;
    out.retry_after_auto = false;
    return;
  }
  if (scalar && f.node.Scalar() == "auto") {
    out.retry_after_auto = true;
    return;
  }
  if (!scalar || is_quoted(f.node) || !is_decimal_integer(f.node.Scalar())) {
    f.fail("expected an integer, none or auto, got " +
           (scalar && is_quoted(f.node) ? "a string" : describe(f.node)));
  }
  // A day: later than that, a client has long stopped waiting to retry.
  out.retry_after_s = static_cast<int>(read_int_in(f, 0, 86400));
  out.retry_after_auto = false;
}

// Headers the fallback writes itself; setting them here would send them twice or wrongly.
void check_reserved_header(const field& key, const std::string& name) {
  if (iequals(name, "Content-Type")) key.fail("set Content-Type with content_type");
  if (iequals(name, "Retry-After")) key.fail("set Retry-After with retry_after");
  if (iequals(name, "Content-Length")) key.fail("Content-Length is computed from the body");
}

std::map<std::string, std::string> read_headers(const field& f) {
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : map_entries(f)) {
    const field name_at{key.ctx, key.node, value.path, key.mark};
    const std::string name = read_header_name(name_at);
    check_reserved_header(name_at, name);
    out[name] = read_header_value(value);
  }
  return out;
}

// Applies only the keys `map` sets, so a per-reason entry inherits everything else.
void apply_fallback(const map_view& map, fallback_config& out) {
  if (auto v = map.get("status")) out.status = static_cast<int>(read_int_in(*v, 100, 599));
  if (auto v = map.get("retry_after")) read_retry_after(*v, out);
  if (auto v = map.get("headers")) out.headers = read_headers(*v);
  const auto body = map.get("body");
  const auto file = map.get("file");
  if (body && file) file->fail("body and file are mutually exclusive");
  if (body) {
    out.body = read_string(*body);
    out.file.clear();
  }
  if (file) {
    const fs::path path = (map.self().ctx->base_dir / read_non_empty(*file)).lexically_normal();
    out.body = read_body_file(*file, path);
    out.file = path.string();
    // The file says more about its own type than whatever the entry inherited.
    out.content_type = content_type_for(path);
  }
  if (auto v = map.get("content_type")) {
    out.content_type = read_non_empty(*v);
    if (has_line_break(out.content_type)) v->fail("must not contain line breaks");
  }
}

// The reasons a route may give a fallback entry of its own: every outcome the table answers
// with a fallback.
constexpr auto reason_keys = [] {
  std::array<std::string_view, outcome_count> keys{};
  std::size_t n = 0;
  for (const auto& row : outcome_table) {
    if (row.answer == answer_kind::fallback) keys[n++] = row.name;
  }
  return std::pair{keys, n};
}();

// `f` may be null (no `fallback` key): the resolved responses are still filled in.
fallback_set parse_fallback(const field& f) {
  std::vector<std::string_view> allowed = {"status", "retry_after", "headers",
                                           "body",   "file",        "content_type"};
  allowed.insert(allowed.end(), reason_keys.first.begin(),
                 reason_keys.first.begin() + static_cast<std::ptrdiff_t>(reason_keys.second));
  const map_view map(f, allowed);
  fallback_set out;
  apply_fallback(map, out.route);
  for (const auto& row : outcome_table) {
    if (row.answer != answer_kind::fallback) continue;
    if (const auto entry = map.get(row.name)) {
      fallback_config own = fallback_base(out.route, row.value);
      apply_fallback(
          map_view(*entry, {"status", "retry_after", "headers", "body", "file", "content_type"}),
          own);
      out.own[index(row.value)] = std::move(own);
    }
  }
  return out;
}

deadline_config parse_deadline(const field& f) {
  const map_view map(f, {"header", "grpc_timeout"});
  deadline_config out;
  if (auto v = map.get("header")) {
    out.header = read_header_name(*v);
    if (iequals(out.header, "grpc-timeout")) {
      v->fail("grpc-timeout has its own format; set grpc_timeout: true instead");
    }
  }
  if (auto v = map.get("grpc_timeout")) out.grpc_timeout = read_bool(*v);
  return out;
}

std::string lowercase(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// `accept:` of a route; the bounds are config.hpp's. Durations in whole seconds are truncated.
accept_config parse_accept(const field& f) {
  using std::chrono::hours;
  using std::chrono::milliseconds;
  using std::chrono::minutes;
  using std::chrono::seconds;
  const map_view map(f, {"max_depth", "full_status", "retry_after", "keep_headers", "tenant_header",
                         "require_idempotency_key", "idempotency_retention", "max_attempts",
                         "backoff_base", "backoff_cap", "lease"});
  accept_config out;
  // 10^8 stored requests of even 1 KiB are 100 GB of store: a cap beyond protects nothing.
  if (auto v = map.get("max_depth")) out.max_depth = read_count(*v, 1, 100'000'000);
  if (auto v = map.get("full_status")) {
    // 503: the service is saturated; 429: this client sends too much. Both carry Retry-After,
    // and a client (or a proxy) retries nothing else.
    const long long status = read_int(*v);
    if (status != 429 && status != 503) {
      v->fail("must be 429 or 503, got " + std::to_string(status));
    }
    out.full_status = static_cast<int>(status);
  }
  // An hour: a client told to come back later than that has found another way.
  if (auto v = map.get("retry_after")) {
    out.retry_after_s = static_cast<int>(read_int_in(*v, 0, 3600));
  }
  if (auto v = map.get("keep_headers")) {
    // Each kept header is written with every job; 64 is past any API's needs.
    constexpr std::size_t max_keep_headers = 64;
    const std::vector<field> items = list_items(*v);
    if (items.size() > max_keep_headers) {
      v->fail("at most " + std::to_string(max_keep_headers) + " headers, got " +
              std::to_string(items.size()));
    }
    for (const field& item : items) {
      // Stored lowercase: HTTP compares header names without case.
      std::string name = lowercase(read_header_name(item));
      if (std::find(out.keep_headers.begin(), out.keep_headers.end(), name) !=
          out.keep_headers.end()) {
        item.fail("duplicate header '" + name + "'");
      }
      out.keep_headers.push_back(std::move(name));
    }
  }
  if (auto v = map.get("tenant_header")) out.tenant_header = read_header_name(*v);
  if (auto v = map.get("require_idempotency_key")) out.require_idempotency_key = read_bool(*v);
  // At least a minute (a client's retries of one request), at most 30 days (a key table that
  // large costs more than it saves).
  if (auto v = map.get("idempotency_retention")) {
    out.idempotency_retention = std::chrono::duration_cast<seconds>(
        read_duration_in(*v, minutes(1), hours(24 * 30), "1m", "720h (30 days)"));
  }
  if (auto v = map.get("max_attempts"))
    out.max_attempts = static_cast<int>(read_int_in(*v, 1, 1000));
  const auto base = map.get("backoff_base");
  const auto cap = map.get("backoff_cap");
  if (base) out.backoff_base = read_duration_in(*base, milliseconds(1), hours(1), "1ms", "1h");
  if (cap) out.backoff_cap = read_duration_in(*cap, milliseconds(1), hours(24), "1ms", "24h");
  if (out.backoff_cap < out.backoff_base) {
    const std::string values = "backoff_base " + std::to_string(out.backoff_base.count()) +
                               "ms, backoff_cap " + std::to_string(out.backoff_cap.count()) + "ms";
    if (cap) cap->fail("must be >= backoff_base (" + values + ")");
    base->fail("must be <= backoff_cap, 5m unless set (" + values + ")");
  }
  // A lease shorter than a second is renewed (every lease/3) faster than a store round trip
  // is sure to take; longer than an hour, a crashed process's jobs wait that long.
  if (auto v = map.get("lease")) {
    out.lease = read_duration_in(*v, seconds(1), hours(1), "1s", "1h");
  }
  return out;
}

// `jobs:`; the bounds are config.hpp's. Keys of the other store are refused rather than ignored.
jobs_config parse_jobs(const field& f, const std::vector<group_config>& groups) {
  using std::chrono::hours;
  using std::chrono::milliseconds;
  using std::chrono::minutes;
  using std::chrono::seconds;
  const map_view map(f, {"store", "sqlite_path", "synchronous", "group_commit", "conninfo",
                         "conninfo_env", "pool", "consume", "store_threads", "max_pending",
                         "retention", "prune_interval", "poll_interval", "rates", "prefetch"});
  jobs_config out;
  out.line = f.mark.line + 1;
  if (auto v = map.get("store")) out.store = read_choice(*v, job_stores, "store");
  const auto only = [&](std::string_view key, job_store_kind kind) -> std::optional<field> {
    auto v = map.get(key);
    if (v && out.store != kind) {
      v->fail("applies only to store " + std::string(name_of(job_stores, kind)) + ", not " +
              std::string(name_of(job_stores, out.store)));
    }
    return v;
  };
  const auto sqlite_path = only("sqlite_path", job_store_kind::sqlite);
  if (out.store == job_store_kind::sqlite) {
    // Relative to this file's folder, as fallback files are, not to wherever the process starts.
    const std::string path = sqlite_path ? read_non_empty(*sqlite_path) : out.sqlite_path;
    out.sqlite_path = (f.ctx->base_dir / path).lexically_normal().string();
  }
  if (auto v = only("synchronous", job_store_kind::sqlite)) {
    out.synchronous = read_choice(*v, sqlite_syncs, "synchronous");
  }
  // A commit every 100 ms at most: past that every 202 waits longer for batching than for
  // the disk.
  if (auto v = only("group_commit", job_store_kind::sqlite)) {
    out.group_commit = read_duration_us(*v);
    if (out.group_commit > std::chrono::milliseconds(100)) {
      v->fail("must be between 0 and 100ms, got " + std::to_string(out.group_commit.count()) +
              "us");
    }
  }
  // Up to 65,536 jobs per group held in memory ahead of their permits: beyond any sane limit.
  // Either store: sqlite's file is this process's alone, postgres bounds runs by run slots.
  if (auto v = map.get("prefetch")) {
    const bool scalar = v->node.IsScalar();
    if (scalar && !is_quoted(v->node) && v->node.Scalar() == "auto") {
      out.prefetch = std::nullopt;
    } else if (!scalar || is_quoted(v->node) || !is_decimal_integer(v->node.Scalar())) {
      v->fail("expected an integer or auto, got " +
              (scalar && is_quoted(v->node) ? std::string("a string") : describe(v->node)));
    } else {
      out.prefetch = read_count(*v, 0, 65536);
    }
  }
  const auto conninfo = only("conninfo", job_store_kind::postgres);
  const auto conninfo_env = only("conninfo_env", job_store_kind::postgres);
  if (out.store == job_store_kind::postgres) {
    if (conninfo && conninfo_env)
      conninfo_env->fail("conninfo and conninfo_env are mutually exclusive");
    if (!conninfo && !conninfo_env) {
      fail_at(*f.ctx, f.mark, join_path(f.path, "conninfo"),
              "store postgres needs conninfo or conninfo_env");
    }
  }
  if (conninfo) out.conninfo = read_non_empty(*conninfo);
  if (conninfo_env) {
    // Read once, here: a password stays out of the file, and a missing one fails the load, not
    // the first request.
    out.conninfo_env = read_non_empty(*conninfo_env);
    const char* value = std::getenv(out.conninfo_env.c_str());
    if (value == nullptr)
      conninfo_env->fail("environment variable " + out.conninfo_env + " is not set");
    if (*value == '\0')
      conninfo_env->fail("environment variable " + out.conninfo_env + " is empty");
    out.conninfo = value;
  }
  // Connections of one process; PostgreSQL's default max_connections is 100 for all of them.
  if (auto v = only("pool", job_store_kind::postgres)) out.pool = read_count(*v, 1, 256);
  if (auto v = map.get("consume")) out.consume = read_bool(*v);
  if (auto v = map.get("store_threads")) out.store_threads = read_count(*v, 1, 1024);
  if (auto v = map.get("max_pending")) out.max_pending = read_count(*v, 1, 1LL << 20);
  if (auto v = map.get("retention")) {
    out.retention = std::chrono::duration_cast<seconds>(
        read_duration_in(*v, minutes(1), hours(24 * 365), "1m", "8760h (365 days)"));
  }
  if (auto v = map.get("prune_interval")) {
    out.prune_interval = read_duration_in(*v, seconds(1), hours(24), "1s", "24h");
  }
  // Below 10 ms an idle consumer polls the store more than it works; above a minute a lost
  // wake-up delays a job that long.
  if (auto v = map.get("poll_interval")) {
    out.poll_interval = read_duration_in(*v, milliseconds(10), minutes(1), "10ms", "1m");
  }
  if (auto v = map.get("rates")) {
    for (const auto& [key, value] : map_entries(*v)) {
      const field name_at{key.ctx, key.node, value.path, key.mark};
      const std::string group = read_string(name_at);
      if (std::none_of(groups.begin(), groups.end(),
                       [&](const group_config& g) { return g.name == group; })) {
        name_at.fail("unknown group '" + group + "'");
      }
      const map_view rate(value, {"per_second", "burst"});
      job_rate_config r;
      const field per_second = rate.require("per_second");
      r.per_second = read_number(per_second);
      if (!(r.per_second > 0 && r.per_second <= 1e6)) {
        per_second.fail("must be in (0, 1000000], got " + per_second.node.Scalar());
      }
      if (auto b = rate.get("burst")) {
        r.burst = read_number(*b);
        if (!(r.burst >= 1 && r.burst <= 1e6)) {
          b->fail("must be in [1, 1000000], got " + b->node.Scalar());
        }
      }
      out.rates[group] = r;
    }
  }
  return out;
}

route_config parse_route(const field& f, const std::vector<group_config>& groups, bool have_jobs) {
  const map_view map(f, {"name", "group", "max_wait", "max_exec", "cost", "deadline",
                         "predictive_reject", "priority", "fallback", "mode", "accept"});
  route_config out;
  out.line = f.mark.line + 1;
  out.name = read_non_empty(map.require("name"));
  const field group_field = map.require("group");
  out.group = read_string(group_field);
  const auto group = std::find_if(groups.begin(), groups.end(),
                                  [&](const group_config& g) { return g.name == out.group; });
  if (group == groups.end()) group_field.fail("unknown group '" + out.group + "'");
  key_fields at;
  if (auto v = map.get("max_wait")) {
    out.max_wait = read_duration(*v);
    at.insert_or_assign("max_wait", *v);
  }
  if (auto v = map.get("max_exec")) {
    out.max_exec = read_duration(*v);
    at.insert_or_assign("max_exec", *v);
  }
  if (auto v = map.get("cost")) {
    // Clamped into the type, so that validate() names the group's own range.
    out.cost = static_cast<std::uint32_t>(
        std::clamp<long long>(read_int(*v), 0, std::numeric_limits<std::uint32_t>::max()));
    at.insert_or_assign("cost", *v);
  }
  if (auto v = map.get("deadline")) out.deadline = parse_deadline(*v);
  if (auto v = map.get("predictive_reject")) out.predictive_reject = read_bool(*v);
  if (auto v = map.get("priority")) out.priority = parse_priority(*v);
  if (auto v = map.get("mode")) {
    out.mode = read_choice(*v, route_modes, "mode");
    if (out.mode == route_mode::accept && !have_jobs) {
      v->fail(
          "mode accept needs a top-level `jobs:` section (the store its requests are "
          "written to)");
    }
  }
  if (auto v = map.get("accept")) {
    if (out.mode != route_mode::accept) v->fail("applies only to mode accept");
    out.accept = parse_accept(*v);
  }
  const auto fallback = map.get("fallback");
  out.fallback = parse_fallback(
      fallback ? *fallback : field{f.ctx, YAML::Node(), join_path(f.path, "fallback"), f.mark});
  check_ranges(f, at, static_cast<const route_policy&>(out),
               static_cast<const group_options&>(*group));
  return out;
}

std::vector<route_config> parse_routes(const field& f, const std::vector<group_config>& groups,
                                       bool have_jobs) {
  const std::vector<field> items = list_items(f);
  if (items.empty()) f.fail("must list at least one route");
  std::vector<route_config> out;
  for (const field& item : items) out.push_back(parse_route(item, groups, have_jobs));
  check_unique(out, items, "route");
  // One consumer per group claims the jobs of all its accept routes, under one lease and one
  // retry policy: routes sharing a group must agree on them.
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (out[i].mode != route_mode::accept) continue;
    for (std::size_t j = 0; j < i; ++j) {
      if (out[j].mode != route_mode::accept || out[j].group != out[i].group) continue;
      const accept_config& a = out[j].accept;
      const accept_config& b = out[i].accept;
      const char* differs = a.lease != b.lease                 ? "lease"
                            : a.max_attempts != b.max_attempts ? "max_attempts"
                            : a.backoff_base != b.backoff_base ? "backoff_base"
                            : a.backoff_cap != b.backoff_cap   ? "backoff_cap"
                                                               : nullptr;
      if (differs == nullptr) continue;
      const map_view route(items[i],
                           {"name", "group", "max_wait", "max_exec", "cost", "deadline",
                            "predictive_reject", "priority", "fallback", "mode", "accept"});
      const auto accept = route.get("accept");
      const field at = accept ? *accept : items[i];
      at.fail(std::string(differs) + " differs from accept route '" + out[j].name +
              "' of the same group '" + out[i].group +
              "' (one consumer per group runs them under one lease and retry policy)");
    }
  }
  return out;
}

app_config parse_root(const context& ctx, const YAML::Node& root) {
  const field self{&ctx, root, "", root.Mark()};
  const map_view map(self, {"server", "logging", "admin", "jobs", "groups", "routes"});
  app_config out;
  out.source = ctx.source;
  if (auto v = map.get("server")) out.server = parse_server(*v);
  if (auto v = map.get("logging")) out.logging = parse_logging(*v);
  if (auto v = map.get("admin")) out.admin = parse_admin(*v, out.server);
  // Groups first whatever the file order, so routes can be checked against them.
  out.groups = parse_groups(map.require("groups"));
  if (auto v = map.get("jobs")) out.jobs = parse_jobs(*v, out.groups);
  out.routes = parse_routes(map.require("routes"), out.groups, out.jobs.has_value());
  return out;
}

// Deepest nesting accepted. qos's own schema needs 6 levels (routes, an entry, fallback, a
// reason, headers, a value); yaml-cpp recurses once per level and gives up only at about 500
// with a bare "bad file", pointing past the end of the brackets.
constexpr std::size_t max_nesting = 64;

// Refuses text nested deeper than max_nesting before yaml-cpp sees it, at the bracket or line
// that goes too deep. Counts flow collections ('[' and '{' where a value starts, outside quotes
// and comments) on top of block levels (indentation steps and compact "- - x" entries); skips
// the lines of quoted and block (| >) scalars. A multi-line plain scalar may count one level
// too many; anything it misses still meets yaml-cpp's own limit (DeepRecursion, below).
void check_nesting(const context& ctx, std::string_view text) {
  std::vector<std::size_t> block;     // columns of the open block levels, increasing
  std::size_t flow = 0;               // open '[' and '{'
  char quote = 0;                     // ' or " inside a quoted scalar
  std::optional<std::size_t> scalar;  // inside a block scalar: its parent line's indentation
  int line = 0;                       // 1-based, of `l`
  const auto too_deep = [&](std::size_t column) {
    throw config_error(ctx.source, line, static_cast<int>(column) + 1, "",
                       "nested deeper than " + std::to_string(max_nesting) + " levels");
  };
  for (std::size_t start = 0; start < text.size();) {
    const std::size_t end = std::min(text.find('\n', start), text.size());
    std::string_view l = text.substr(start, end - start);
    start = end + 1;
    ++line;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    const std::size_t indent = l.find_first_not_of(' ');
    if (scalar) {
      if (indent == l.npos || indent > *scalar) continue;
      scalar.reset();
    }
    std::size_t i = 0;
    if (quote == 0 && flow == 0) {
      if (indent == l.npos || l[indent] == '#') continue;
      // A line in block context closes the levels indented deeper than it, and opens one when
      // it is indented deeper than the innermost; each "- " before its content opens another.
      // A flow collection opening the content is counted below, as flow.
      while (!block.empty() && block.back() > indent) block.pop_back();
      i = indent;
      while (true) {
        if ((block.empty() || block.back() < i) && l[i] != '[' && l[i] != '{') block.push_back(i);
        if (block.size() > max_nesting) too_deep(i);
        if (l[i] != '-' || (i + 1 < l.size() && l[i + 1] != ' ' && l[i + 1] != '\t')) break;
        i = l.find_first_not_of(" \t", i + 1);
        if (i == l.npos || l[i] == '#') break;
      }
      if (i == l.npos) continue;
    }
    std::size_t code_end = l.size();  // where a comment starts
    for (; i < l.size(); ++i) {
      const char c = l[i];
      if (quote == '\'') {
        if (c != '\'') continue;
        if (i + 1 < l.size() && l[i + 1] == '\'') {
          ++i;  // '' is a quote inside the scalar
        } else {
          quote = 0;
        }
        continue;
      }
      if (quote == '"') {
        if (c == '\\') {
          ++i;
        } else if (c == '"') {
          quote = 0;
        }
        continue;
      }
      const char prev = i == 0 ? ' ' : l[i - 1];
      if (c == '#' && (prev == ' ' || prev == '\t')) {
        code_end = i;
        break;
      }
      if (flow > 0 && (c == ']' || c == '}')) {
        --flow;
        continue;
      }
      // Quotes and brackets open something only where a value starts, not inside a plain
      // scalar ("it's", "a[1]").
      if (prev != ' ' && prev != '\t' && prev != '[' && prev != '{' && prev != ',' && prev != ':') {
        continue;
      }
      if (c == '\'' || c == '"') {
        quote = c;
      } else if (c == '[' || c == '{') {
        ++flow;
        if (block.size() + flow > max_nesting) too_deep(i);
      }
    }
    // "key: |" or "- >-" ending a line in block context: a block scalar follows, its lines
    // indented deeper than this one.
    if (quote == 0 && flow == 0 && indent != l.npos) {
      std::string_view code = l.substr(0, code_end);
      while (!code.empty() && (code.back() == ' ' || code.back() == '\t')) code.remove_suffix(1);
      while (!code.empty() && (code.back() == '+' || code.back() == '-' ||
                               (code.back() >= '1' && code.back() <= '9'))) {
        code.remove_suffix(1);
      }
      if (!code.empty() && (code.back() == '|' || code.back() == '>') &&
          (code.size() == 1 || code[code.size() - 2] == ' ')) {
        scalar = indent;
      }
    }
  }
}

// Where the root node of each document starts. yaml-cpp 0.7's LoadAll loops forever (and
// allocates until the process dies) when a document starts with a token no rule consumes, e.g.
// a ',' at document level (yaml-cpp issue 1040, fixed after 0.8): every further document is
// the same null at the same place. So the loader walks at most three documents itself.
class document_roots final : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> roots;

  void OnDocumentStart(const YAML::Mark&) override { in_document_ = true; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { root(mark); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { root(mark); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                const std::string&) override {
    root(mark);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    root(mark);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    root(mark);
  }
  void OnMapEnd() override {}

 private:
  void root(const YAML::Mark& mark) {
    if (in_document_) roots.push_back(mark);
    in_document_ = false;
  }
  bool in_document_ = false;
};

YAML::Node parse_document(const context& ctx, const std::string& yaml) {
  check_nesting(ctx, yaml);
  try {
    std::istringstream in(yaml);
    YAML::Parser parser(in);
    document_roots docs;
    for (int i = 0; i < 3 && parser.HandleNextDocument(docs); ++i) {
    }
    for (std::size_t i = 1; i < docs.roots.size(); ++i) {
      const YAML::Mark& at = docs.roots[i];
      if (at.pos != docs.roots[i - 1].pos) continue;
      // The parser is stuck on a token, as it is on a ',' at document level.
      const std::size_t pos = static_cast<std::size_t>(std::max(at.pos, 0));
      fail_at(ctx, at, "",
              pos < yaml.size() ? "invalid YAML: unexpected '" + yaml.substr(pos, 1) + "'"
                                : std::string("invalid YAML"));
    }
    if (docs.roots.size() > 1) fail_at(ctx, docs.roots[1], "", "expected a single YAML document");
    const YAML::Node root = docs.roots.empty() ? YAML::Node() : YAML::Load(yaml);
    if (root.IsNull()) {
      // Nothing but blanks, comments or null: say so rather than "groups: missing".
      throw config_error(ctx.source, 1, 1, "", "empty config (expected groups and routes)");
    }
    return root;
  } catch (const YAML::DeepRecursion& e) {
    fail_at(ctx, e.mark, "", "nested too deeply for the YAML parser");
  } catch (const YAML::Exception& e) {
    fail_at(ctx, e.mark, "", "invalid YAML: " + e.msg);
  }
}

}  // namespace

app_config load_config_string(const std::string& yaml, const std::string& source_name,
                              const std::string& base_dir) {
  const context ctx{source_name, base_dir.empty() ? fs::path(".") : fs::path(base_dir)};
  const YAML::Node root = parse_document(ctx, yaml);
  try {
    return parse_root(ctx, root);
  } catch (const YAML::Exception& e) {
    // The checks above should leave yaml-cpp nothing to throw; if it does, still say where.
    fail_at(ctx, e.mark, "", e.msg);
  }
}

app_config load_config(const std::string& path) {
  const std::optional<std::string> text = read_whole_file(path);
  if (!text) throw config_error(path, 0, 0, "", "cannot read config file");
  return load_config_string(*text, path, fs::path(path).parent_path().string());
}

}  // namespace qos::config
