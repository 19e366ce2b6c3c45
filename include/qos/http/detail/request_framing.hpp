// Finds where one HTTP/1.x request ends in a connection's byte stream (RFC 9112: request line,
// header fields, then a Content-Length or chunked body), strictly, before Pistache sees it. Reads
// each byte once however the stream is cut; answers garbage at its first bad byte. The standard
// library only; one framer per connection, not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qos::detail {

enum class framing_status : std::uint8_t {
  need_more,  // every byte so far is valid; the request is not complete
  complete,   // request() describes it
  error,      // error_status() / error_reason(): answer that and close the connection
};

// One complete request as it lies in the buffer.
struct framed_request {
  std::size_t consumed = 0;    // bytes it takes, leading empty lines and raw body included
  std::size_t head_begin = 0;  // offset of the request line
  std::size_t head_size = 0;   // request line, fields and the empty line ending them
  bool chunked = false;        // the body came chunked; body() holds it decoded
  std::size_t body_size = 0;   // decoded body length
  int minor_version = 1;       // HTTP/1.<minor_version>
  bool close = false;          // the connection ends after this exchange (RFC 9112 9.3)
  bool expect_continue = false;
  bool head_method = false;  // HEAD
};

class request_framer {
 public:
  // `max_request_size` bounds the head and the head plus the decoded body.
  explicit request_framer(std::size_t max_request_size) noexcept;

  // `data` holds the stream from the start of this request on: the same bytes as last call
  // plus any that arrived since (the buffer may move; offsets are kept, not pointers).
  // Idempotent once complete or failed, until reset().
  framing_status next(std::string_view data);

  // Valid after next() returned complete.
  const framed_request& request() const noexcept { return req_; }
  // The Content-Length body (a slice of `data`), or the decoded chunked body.
  std::string_view body(std::string_view data) const noexcept;

  // Valid after next() returned error: 400, 408-free codes only (400, 413, 414, 431, 501, 505).
  int error_status() const noexcept { return error_status_; }
  const char* error_reason() const noexcept { return error_reason_; }

  // Some byte of this request arrived (a header timeout runs); the head is complete (a body
  // timeout runs); the head says "Expect: 100-continue" and its body is not complete yet.
  bool started() const noexcept { return pos_ > 0; }
  bool head_complete() const noexcept { return head_done_; }
  bool awaiting_continue() const noexcept;

  // Forgets this request, for the next one (which starts at the new data[0]).
  void reset() noexcept;

 private:
  enum class state : std::uint8_t;

  framing_status fail(int status, const char* reason);
  framing_status scan_head(std::string_view data);
  framing_status scan_chunked(std::string_view data);
  framing_status end_of_head();
  bool field(std::string_view name, std::string_view value);

  std::size_t max_;
  state state_;
  std::size_t pos_ = 0;          // next byte to examine
  std::size_t token_begin_ = 0;  // start of the current method, version, field or chunk size
  std::size_t colon_ = 0;        // ':' of the current field
  std::size_t chunk_left_ = 0;   // data bytes left in the current chunk
  std::uint64_t number_ = 0;     // chunk size being read
  bool head_done_ = false;
  bool has_length_ = false;
  bool has_encoding_ = false;
  bool close_token_ = false;
  bool keep_alive_token_ = false;
  std::uint64_t content_length_ = 0;
  std::string decoded_;
  framed_request req_;
  int error_status_ = 0;
  const char* error_reason_ = "";
};

}  // namespace qos::detail
