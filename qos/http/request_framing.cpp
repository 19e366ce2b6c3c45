#include "qos/http/detail/request_framing.hpp"

#include <algorithm>

namespace qos::detail {

enum class request_framer::state : std::uint8_t {
  lead,     // empty lines before the request line, or its first byte
  lead_lf,  // the LF of an empty line
  method,
  target_first,
  target,
  version,  // "HTTP/d.d" then CR
  request_lf,
  field_start,  // a field, or the CR of the empty line ending the head
  field_name,
  field_value,
  field_lf,
  head_lf,
  length_body,
  chunk_size,
  chunk_ext,
  chunk_size_lf,
  chunk_data,
  chunk_data_cr,
  chunk_data_lf,
  trailer_start,
  trailer_field,
  trailer_lf,
  final_lf,
  done,
  failed,
};

namespace {

// RFC 9110 5.6.2 token characters.
bool is_tchar(unsigned char c) noexcept {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

// A byte of a field value other than its end: visible, obs-text, SP or HTAB (no CTL, no DEL).
bool is_field_byte(unsigned char c) noexcept {
  return c == '\t' || (c >= 0x20 && c != 0x7f);
}

// A byte of the request target: visible or obs-text, no SP, no CTL.
bool is_target_byte(unsigned char c) noexcept {
  return c > 0x20 && c != 0x7f;
}

int hex_value(unsigned char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  const unsigned char l = c | 0x20;
  if (l >= 'a' && l <= 'f') return l - 'a' + 10;
  return -1;
}

bool iequals(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (static_cast<unsigned char>(x) | 0x20) == (static_cast<unsigned char>(y) | 0x20);
         });
}

std::string_view trim(std::string_view v) noexcept {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

// 1*DIGIT with no sign, no space inside and no overflow; nullopt-like false otherwise.
bool parse_length(std::string_view v, std::uint64_t& out) noexcept {
  if (v.empty() || v.size() > 19) return false;  // 19 digits always fit in 64 bits
  std::uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + static_cast<std::uint64_t>(c - '0');
  }
  out = n;
  return true;
}

}  // namespace

request_framer::request_framer(std::size_t max_request_size) noexcept
    : max_(max_request_size), state_(state::lead) {}

void request_framer::reset() noexcept {
  state_ = state::lead;
  pos_ = token_begin_ = colon_ = chunk_left_ = 0;
  number_ = 0;
  head_done_ = has_length_ = has_encoding_ = close_token_ = keep_alive_token_ = false;
  content_length_ = 0;
  decoded_.clear();
  req_ = {};
  error_status_ = 0;
  error_reason_ = "";
}

bool request_framer::awaiting_continue() const noexcept {
  return head_done_ && req_.expect_continue && state_ != state::done && state_ != state::failed;
}

std::string_view request_framer::body(std::string_view data) const noexcept {
  if (req_.chunked) return decoded_;
  return data.substr(req_.head_begin + req_.head_size, req_.body_size);
}

framing_status request_framer::fail(int status, const char* reason) {
  state_ = state::failed;
  error_status_ = status;
  error_reason_ = reason;
  return framing_status::error;
}

framing_status request_framer::next(std::string_view data) {
  if (state_ == state::done) return framing_status::complete;
  if (state_ == state::failed) return framing_status::error;
  if (!head_done_) {
    const auto s = scan_head(data);
    if (s != framing_status::complete) return s;
  }
  if (state_ == state::length_body) {
    const std::size_t end = req_.head_begin + req_.head_size + req_.body_size;
    if (data.size() < end) {
      pos_ = data.size();
      return framing_status::need_more;
    }
    pos_ = end;
    req_.consumed = end;
    state_ = state::done;
    return framing_status::complete;
  }
  if (state_ == state::done) return framing_status::complete;
  return scan_chunked(data);
}

framing_status request_framer::scan_head(std::string_view data) {
  for (; pos_ < data.size(); ++pos_) {
    // The head, leading empty lines included, must fit the limit; a request line that does
    // not is a too long URI in practice.
    if (pos_ >= max_) {
      const bool in_line = state_ == state::lead || state_ == state::lead_lf ||
                           state_ == state::method || state_ == state::target_first ||
                           state_ == state::target || state_ == state::version ||
                           state_ == state::request_lf;
      return in_line ? fail(414, "request line too long")
                     : fail(431, "request header fields too large");
    }
    const auto c = static_cast<unsigned char>(data[pos_]);
    switch (state_) {
      case state::lead:
        if (c == '\r') {
          state_ = state::lead_lf;
        } else if (is_tchar(c)) {
          req_.head_begin = token_begin_ = pos_;
          state_ = state::method;
        } else {
          return fail(400, "not an HTTP/1.x request");
        }
        break;
      case state::lead_lf:
        if (c != '\n') return fail(400, "bare CR before the request line");
        state_ = state::lead;
        break;
      case state::method:
        if (c == ' ') {
          req_.head_method = data.substr(token_begin_, pos_ - token_begin_) == "HEAD";
          state_ = state::target_first;
        } else if (!is_tchar(c)) {
          return fail(400, "malformed method");
        }
        break;
      case state::target_first:
      case state::target:
        if (c == ' ' && state_ == state::target) {
          token_begin_ = pos_ + 1;
          state_ = state::version;
        } else if (!is_target_byte(c)) {
          // "GET /\r\n" (HTTP/0.9) ends here too: a line without a version.
          return fail(400, "malformed request target");
        } else {
          state_ = state::target;
        }
        break;
      case state::version: {
        static constexpr std::string_view prefix = "HTTP/";
        const std::size_t i = pos_ - token_begin_;
        const bool ok = i < prefix.size()  ? c == static_cast<unsigned char>(prefix[i])
                        : i == 5 || i == 7 ? (c >= '0' && c <= '9')
                        : i == 6           ? c == '.'
                        : i == 8           ? c == '\r'
                                           : false;
        if (!ok) return fail(400, "malformed HTTP version");
        if (i == 8) {
          const char major = data[token_begin_ + 5];
          const char minor = data[token_begin_ + 7];
          if (major != '1' || minor > '1') return fail(505, "HTTP version not supported");
          req_.minor_version = minor - '0';
          state_ = state::request_lf;
        }
        break;
      }
      case state::request_lf:
        if (c != '\n') return fail(400, "bare CR in the request line");
        state_ = state::field_start;
        break;
      case state::field_start:
        if (c == '\r') {
          state_ = state::head_lf;
        } else if (is_tchar(c)) {
          token_begin_ = pos_;
          state_ = state::field_name;
        } else {
          // Leading whitespace is obsolete line folding (RFC 9112 5.2): rejected.
          return fail(400, "malformed header field");
        }
        break;
      case state::field_name:
        if (c == ':') {
          colon_ = pos_;
          state_ = state::field_value;
        } else if (!is_tchar(c)) {
          return fail(400, "malformed header field name");  // whitespace before ':' too
        }
        break;
      case state::field_value:
        if (c == '\r') {
          state_ = state::field_lf;
        } else if (!is_field_byte(c)) {
          return fail(400, "invalid byte in a header field");
        }
        break;
      case state::field_lf:
        if (c != '\n') return fail(400, "bare CR in a header field");
        if (!field(data.substr(token_begin_, colon_ - token_begin_),
                   trim(data.substr(colon_ + 1, pos_ - 1 - (colon_ + 1))))) {
          return framing_status::error;
        }
        state_ = state::field_start;
        break;
      case state::head_lf:
        if (c != '\n') return fail(400, "bare CR ending the head");
        ++pos_;
        return end_of_head();
      default:
        return fail(400, "internal framing state");
    }
  }
  return framing_status::need_more;
}

bool request_framer::field(std::string_view name, std::string_view value) {
  if (iequals(name, "content-length")) {
    // Several values could disagree (request smuggling): one field, one number.
    if (has_length_) {
      fail(400, "duplicate Content-Length");
      return false;
    }
    if (!parse_length(value, content_length_)) {
      fail(400, "invalid Content-Length");
      return false;
    }
    has_length_ = true;
  } else if (iequals(name, "transfer-encoding")) {
    if (has_encoding_) {
      fail(400, "duplicate Transfer-Encoding");
      return false;
    }
    if (value.empty()) {
      fail(400, "empty Transfer-Encoding");
      return false;
    }
    // Only chunked; gzip, deflate or a list of codings would need decoding we do not do.
    if (!iequals(value, "chunked")) {
      fail(501, "unsupported Transfer-Encoding");
      return false;
    }
    has_encoding_ = true;
  } else if (iequals(name, "connection")) {
    while (!value.empty()) {
      const auto comma = value.find(',');
      const auto token = trim(value.substr(0, comma));
      if (iequals(token, "close")) close_token_ = true;
      if (iequals(token, "keep-alive")) keep_alive_token_ = true;
      if (comma == std::string_view::npos) break;
      value.remove_prefix(comma + 1);
    }
  } else if (iequals(name, "expect")) {
    req_.expect_continue = iequals(value, "100-continue");
  }
  return true;
}

framing_status request_framer::end_of_head() {
  head_done_ = true;
  req_.head_size = pos_ - req_.head_begin;
  if (has_length_ && has_encoding_) {
    return fail(400, "both Content-Length and Transfer-Encoding");
  }
  if (has_encoding_ && req_.minor_version == 0) {
    return fail(400, "Transfer-Encoding in an HTTP/1.0 request");
  }
  req_.close = req_.minor_version >= 1 ? close_token_ : close_token_ || !keep_alive_token_;
  const std::size_t room = max_ - std::min(max_, req_.head_size);
  if (has_encoding_) {
    req_.chunked = true;
    number_ = 0;
    token_begin_ = pos_;
    state_ = state::chunk_size;
    return framing_status::complete;  // the head is; next() goes on with the body
  }
  if (content_length_ > room) return fail(413, "request body too large");
  req_.body_size = static_cast<std::size_t>(content_length_);
  state_ = state::length_body;
  return framing_status::complete;
}

framing_status request_framer::scan_chunked(std::string_view data) {
  const std::size_t room = max_ - std::min(max_, req_.head_size);
  const std::size_t body_begin = req_.head_begin + req_.head_size;
  while (pos_ < data.size()) {
    // Extensions and trailers are not stored, but they are read: bound them too.
    if (pos_ - body_begin > 2 * room + 4096) return fail(413, "chunked body too large");
    const auto c = static_cast<unsigned char>(data[pos_]);
    switch (state_) {
      case state::chunk_size: {
        const int h = hex_value(c);
        if (h >= 0) {
          if (number_ > (room >> 4)) return fail(413, "request body too large");
          number_ = number_ * 16 + static_cast<std::uint64_t>(h);
        } else if (pos_ == token_begin_) {
          return fail(400, "malformed chunk size");
        } else if (c == ';' || c == ' ' || c == '\t') {
          state_ = state::chunk_ext;
        } else if (c == '\r') {
          state_ = state::chunk_size_lf;
        } else {
          return fail(400, "malformed chunk size");
        }
        ++pos_;
        break;
      }
      case state::chunk_ext:
        if (c == '\r') {
          state_ = state::chunk_size_lf;
        } else if (!is_field_byte(c)) {
          return fail(400, "malformed chunk extension");
        }
        ++pos_;
        break;
      case state::chunk_size_lf:
        if (c != '\n') return fail(400, "bare CR after a chunk size");
        ++pos_;
        if (number_ == 0) {
          state_ = state::trailer_start;
        } else {
          if (number_ > room - decoded_.size()) return fail(413, "request body too large");
          chunk_left_ = static_cast<std::size_t>(number_);
          state_ = state::chunk_data;
        }
        break;
      case state::chunk_data: {
        const std::size_t n = std::min(chunk_left_, data.size() - pos_);
        decoded_.append(data.substr(pos_, n));
        pos_ += n;
        chunk_left_ -= n;
        if (chunk_left_ == 0) state_ = state::chunk_data_cr;
        break;
      }
      case state::chunk_data_cr:
        if (c != '\r') return fail(400, "chunk data longer than its size");
        state_ = state::chunk_data_lf;
        ++pos_;
        break;
      case state::chunk_data_lf:
        if (c != '\n') return fail(400, "bare CR after chunk data");
        number_ = 0;
        ++pos_;
        token_begin_ = pos_;
        state_ = state::chunk_size;
        break;
      case state::trailer_start:
        if (c == '\r') {
          state_ = state::final_lf;
        } else if (is_tchar(c)) {
          state_ = state::trailer_field;
        } else {
          return fail(400, "malformed trailer field");
        }
        ++pos_;
        break;
      case state::trailer_field:
        if (c == '\r') {
          state_ = state::trailer_lf;
        } else if (!is_field_byte(c)) {
          return fail(400, "invalid byte in a trailer field");
        }
        ++pos_;
        break;
      case state::trailer_lf:
        if (c != '\n') return fail(400, "bare CR in a trailer field");
        state_ = state::trailer_start;
        ++pos_;
        break;
      case state::final_lf:
        if (c != '\n') return fail(400, "bare CR ending the chunked body");
        ++pos_;
        req_.body_size = decoded_.size();
        req_.consumed = pos_;
        state_ = state::done;
        return framing_status::complete;
      default:
        return fail(400, "internal framing state");
    }
  }
  return framing_status::need_more;
}

}  // namespace qos::detail
