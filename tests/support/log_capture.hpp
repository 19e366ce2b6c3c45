// Log output for tests: a spdlog sink that keeps the lines it was given (thread-safe: server
// threads write while the test reads), and a strict check of JSON lines with python3's json
// module, which the test reads back field by field.
#pragma once

#include <unistd.h>

#include <sys/wait.h>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/details/log_msg.h>
#include <spdlog/sinks/base_sink.h>

namespace qos::test {

class line_sink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::vector<std::string> lines() const {
    const std::lock_guard lock(lines_mutex_);
    return lines_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t out;
    formatter_->format(msg, out);
    std::string line(out.data(), out.size());
    if (!line.empty() && line.back() == '\n') line.pop_back();
    const std::lock_guard lock(lines_mutex_);
    lines_.push_back(std::move(line));
  }
  void flush_() override {}

 private:
  mutable std::mutex lines_mutex_;  // base_sink's own mutex is not held by lines()
  std::vector<std::string> lines_;
};

// The bytes of `s` in lower-case hex, as Python's bytes.hex() writes them.
inline std::string hex(const std::string& s) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (const unsigned char c : s) {
    out += digits[c >> 4];
    out += digits[c & 0xf];
  }
  return out;
}

inline bool have_python3() {
  return std::system("python3 -c 'import json' >/dev/null 2>&1") == 0;
}

// Parses every line as a JSON object with python3 (input read as strict UTF-8) and returns,
// per line, what the Python expression `expr` over the object `o` prints. nullopt (and the
// parser's complaint in `error`) when a line is not a JSON object.
inline std::optional<std::vector<std::string>> python_json(const std::vector<std::string>& lines,
                                                           const std::string& expr,
                                                           std::string* error = nullptr) {
  char input_path[] = "/tmp/qos_json_lines_XXXXXX";
  char script_path[] = "/tmp/qos_json_check_XXXXXX";
  const int input_fd = ::mkstemp(input_path);
  const int script_fd = ::mkstemp(script_path);
  if (input_fd < 0 || script_fd < 0) return std::nullopt;
  ::close(input_fd);
  ::close(script_fd);
  {
    std::ofstream in(input_path, std::ios::binary);
    for (const auto& line : lines) in << line << '\n';
    std::ofstream script(script_path);
    script << "import json, sys\n"
              "for line in sys.stdin.buffer.read().decode('utf-8').split('\\n'):\n"
              "    if not line: continue\n"
              "    o = json.loads(line)\n"
              "    assert isinstance(o, dict), 'not an object: ' + line\n"
              "    print("
           << expr << ")\n";
  }
  const std::string command = std::string("python3 ") + script_path + " < " + input_path + " 2>&1";
  std::string output;
  int status = -1;
  if (FILE* p = ::popen(command.c_str(), "r")) {
    char buf[4096];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) output.append(buf, n);
    status = ::pclose(p);
  }
  std::remove(input_path);
  std::remove(script_path);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    if (error != nullptr) *error = output;
    return std::nullopt;
  }
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start < output.size()) {
    const std::size_t end = output.find('\n', start);
    out.push_back(output.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

}  // namespace qos::test
