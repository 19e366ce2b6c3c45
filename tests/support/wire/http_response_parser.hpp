// Incremental HTTP/1.1 response parser shared by the test client and the load generators: bytes go
// in as they arrive, whole responses come out (Content-Length, chunked or until end of stream).
// No sockets, no clock, the standard library only. Not thread-safe: one parser per connection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qos::wire {

// ASCII case-insensitive equality, for header names and tokens.
bool iequals(std::string_view a, std::string_view b);
// Whether a comma-separated header value ("keep-alive, Upgrade") lists `token`, any case.
bool has_token(std::string_view list, std::string_view token);

struct parsed_response {
  int minor_version = 1;  // HTTP/1.<minor_version>
  int status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;  // wire order, values trimmed
  std::string body;  // chunks joined; stays empty when the parser does not keep bodies
  // Whether another response may follow on this connection: false after "Connection: close",
  // an HTTP/1.0 answer without keep-alive, a body delimited by end of stream, 101, or a message
  // framed by both Transfer-Encoding and Content-Length (RFC 9112 6.1: close after it).
  bool keep_alive = true;

  // Value of the first header with this name, case-insensitive.
  std::optional<std::string_view> header(std::string_view name) const;
};

enum class parse_result {
  incomplete,  // every byte fed so far is used; feed more
  complete,    // response() holds the next response
  closed,      // no more responses on this connection: end of stream between two responses, a
               // body that ran to end of stream was returned, or the connection left HTTP (101)
  error,       // malformed or truncated; error() says why; the parser stays failed until reset()
};

struct parser_options {
  std::size_t max_head_bytes = std::size_t{64} << 10;  // status line + headers; also one line
  std::size_t max_body_bytes = std::size_t{64} << 20;  // a broken peer fails, it does not OOM us
  bool keep_body = true;  // false: bodies are skipped, not stored (the load generators)
};

class http_response_parser {
 public:
  explicit http_response_parser(parser_options options = {});

  // Appends received bytes; they are parsed by next(). Ignored once the parser failed or closed.
  void feed(std::string_view bytes);
  // The peer closed its side: a body delimited by end of stream ends here, any other unfinished
  // response is an error.
  void feed_eof();
  // The next final (non-1xx) response answers a HEAD request: it has no body whatever its
  // headers say. Responses arrive in request order, so pipelining callers call it in that order.
  void expect_no_body();

  // Parses the next response from the bytes fed so far. 1xx interim responses are returned like
  // any other; a caller waiting for the final one skips them.
  parse_result next();
  // The response of the last next() that returned complete; valid (and movable from) until the
  // next call to next().
  parsed_response& response() { return response_; }
  const std::string& error() const { return error_; }
  // Some byte of a response not yet returned was received (true after an error): a peer that
  // closes now cut a response short rather than an idle keep-alive connection.
  bool mid_response() const;

  // Forgets everything: a new connection.
  void reset();

 private:
  enum class state : std::uint8_t {
    status_line,
    headers,
    body_length,     // remaining_ bytes of a Content-Length body
    chunk_size,      // the line "<hex size>[;ext]"
    chunk_data,      // remaining_ bytes of the current chunk
    chunk_end,       // the CRLF after a chunk's data
    trailers,        // trailer fields up to an empty line (read and dropped)
    body_until_eof,  // no length: the body is everything until the peer closes
    finished,        // nothing more will come (see parse_result::closed)
    failed,
  };

  std::optional<std::string_view> take_line();
  bool line_too_long() const;
  bool parse_status_line(std::string_view line);
  bool parse_header_line(std::string_view line);
  parse_result end_of_head();
  std::uint64_t take_body(std::uint64_t at_most);
  parse_result need_more();
  parse_result complete(state after);
  parse_result fail(std::string why);

  parser_options options_;
  std::string in_;  // bytes received; [pos_, size) not parsed yet
  std::size_t pos_ = 0;
  std::size_t scan_ = 0;  // the search for the next LF resumes here (>= pos_): feeding byte by
                          // byte stays linear
  state state_ = state::status_line;
  std::size_t head_bytes_ = 0;   // of the response being parsed
  std::uint64_t remaining_ = 0;  // of the Content-Length body or of the current chunk
  std::uint64_t body_bytes_ = 0;
  bool eof_ = false;
  bool head_request_ = false;
  bool delivered_ = false;  // response_ was returned; it is cleared when the next one starts
  parsed_response response_;
  std::string error_;
};

}  // namespace qos::wire
