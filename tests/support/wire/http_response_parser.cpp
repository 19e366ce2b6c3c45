#include "support/wire/http_response_parser.hpp"

#include <algorithm>
#include <charconv>

namespace qos::wire {
namespace {

char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// Error messages quote the offending line; a megabyte of garbage should not become the message.
std::string quote(std::string_view s) {
  constexpr std::size_t shown = 80;
  return s.size() <= shown ? std::string(s) : std::string(s.substr(0, shown)) + "...";
}

// The last entry of a comma-separated list: the encoding applied last, the one that frames.
std::string_view last_token(std::string_view list) {
  const auto comma = list.rfind(',');
  return trim(comma == std::string_view::npos ? list : list.substr(comma + 1));
}

}  // namespace

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return lower(x) == lower(y); });
}

bool has_token(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    const auto comma = list.find(',');
    if (iequals(trim(list.substr(0, comma)), token)) return true;
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
  }
  return false;
}

std::optional<std::string_view> parsed_response::header(std::string_view name) const {
  for (const auto& [key, value] : headers)
    if (iequals(key, name)) return std::string_view(value);
  return std::nullopt;
}

http_response_parser::http_response_parser(parser_options options) : options_(options) {}

void http_response_parser::reset() {
  *this = http_response_parser(options_);
}

void http_response_parser::feed(std::string_view bytes) {
  if (state_ == state::finished || state_ == state::failed) return;
  // Parsed bytes are dropped once they are at least half the buffer, so the copy is amortised.
  if (pos_ > 0 && pos_ * 2 >= in_.size()) {
    in_.erase(0, pos_);
    scan_ -= pos_;
    pos_ = 0;
  }
  in_.append(bytes);
}

void http_response_parser::feed_eof() {
  eof_ = true;
}

void http_response_parser::expect_no_body() {
  head_request_ = true;
}

bool http_response_parser::mid_response() const {
  switch (state_) {
    case state::status_line:
      return pos_ < in_.size();
    case state::finished:
      return false;
    default:
      return true;
  }
}

std::optional<std::string_view> http_response_parser::take_line() {
  const auto lf = in_.find('\n', scan_);
  if (lf == std::string::npos) {
    scan_ = in_.size();
    return std::nullopt;
  }
  // CRLF ends a line; a bare LF is accepted too (RFC 9112 2.2 lets a recipient do so).
  std::size_t end = lf;
  if (end > pos_ && in_[end - 1] == '\r') --end;
  const std::string_view line(in_.data() + pos_, end - pos_);
  pos_ = scan_ = lf + 1;
  return line;
}

// Without this bound a peer that never sends LF would grow the buffer without end.
bool http_response_parser::line_too_long() const {
  return in_.size() - pos_ > options_.max_head_bytes;
}

bool http_response_parser::parse_status_line(std::string_view line) {
  // HTTP/1.<d> SP <3 digits> [SP reason]
  const bool shape = line.size() >= 12 && line.substr(0, 7) == "HTTP/1." && is_digit(line[7]) &&
                     line[8] == ' ' && is_digit(line[9]) && is_digit(line[10]) &&
                     is_digit(line[11]) && (line.size() == 12 || line[12] == ' ');
  if (!shape) return false;
  const int status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
  if (status < 100 || status > 599) return false;
  response_.minor_version = line[7] - '0';
  response_.status = status;
  response_.reason.assign(line.size() > 13 ? line.substr(13) : std::string_view{});
  return true;
}

bool http_response_parser::parse_header_line(std::string_view line) {
  // A name is a token: no whitespace before the colon (RFC 9112 5.1), and a line that starts with
  // whitespace would be obsolete line folding, which nobody we talk to sends.
  const auto colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  const std::string_view name = line.substr(0, colon);
  if (name.find_first_of(" \t") != std::string_view::npos) return false;
  response_.headers.emplace_back(name, trim(line.substr(colon + 1)));
  return true;
}

// The head is complete: decide how the body is framed (RFC 9112 6.3, in its order).
parse_result http_response_parser::end_of_head() {
  auto& r = response_;
  bool close = false, keep_alive = false, has_te = false, chunked = false;
  std::optional<std::uint64_t> length;
  for (const auto& [name, value] : r.headers) {
    if (iequals(name, "connection")) {
      close = close || has_token(value, "close");
      keep_alive = keep_alive || has_token(value, "keep-alive");
    } else if (iequals(name, "transfer-encoding")) {
      has_te = true;
      chunked = iequals(last_token(value), "chunked");  // the last field holds the last coding
    } else if (iequals(name, "content-length")) {
      std::uint64_t n = 0;
      const auto* end = value.data() + value.size();
      const auto [ptr, ec] = std::from_chars(value.data(), end, n);
      if (value.empty() || ec != std::errc{} || ptr != end || !is_digit(value.front()))
        return fail("malformed Content-Length: " + quote(value));
      if (length && *length != n) return fail("conflicting Content-Length values");
      length = n;
    }
  }
  r.keep_alive = !close && (r.minor_version >= 1 || keep_alive);

  const bool final_response = r.status >= 200;
  const bool head_answer = final_response && head_request_;
  if (final_response) head_request_ = false;
  if (r.status == 101) {  // the connection now speaks another protocol
    r.keep_alive = false;
    return complete(state::finished);
  }
  if (!final_response || r.status == 204 || r.status == 304 || head_answer)
    return complete(state::status_line);
  if (has_te) {
    if (!chunked) {  // an unknown coding last: only the end of stream delimits it
      r.keep_alive = false;
      state_ = state::body_until_eof;
      return parse_result::incomplete;
    }
    // Both headers: the chunks frame it, but a peer that sends both is not trusted with the
    // next response on this connection.
    if (length) r.keep_alive = false;
    state_ = state::chunk_size;
    return parse_result::incomplete;
  }
  if (length) {
    if (*length > options_.max_body_bytes) return fail("response too large");
    if (*length == 0) return complete(state::status_line);
    remaining_ = *length;
    state_ = state::body_length;
    return parse_result::incomplete;
  }
  r.keep_alive = false;
  state_ = state::body_until_eof;
  return parse_result::incomplete;
}

std::uint64_t http_response_parser::take_body(std::uint64_t at_most) {
  const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(at_most, in_.size() - pos_));
  if (options_.keep_body) response_.body.append(in_, pos_, n);
  pos_ += n;
  scan_ = std::max(scan_, pos_);
  body_bytes_ += n;
  return n;
}

parse_result http_response_parser::complete(state after) {
  state_ = after;
  delivered_ = true;
  return parse_result::complete;
}

parse_result http_response_parser::fail(std::string why) {
  state_ = state::failed;
  error_ = std::move(why);
  in_.clear();
  pos_ = scan_ = 0;
  return parse_result::error;
}

// Every byte fed is used. Without end of stream that only means "wait"; with it, whether the
// stream ended cleanly depends on where in a response it stopped.
parse_result http_response_parser::need_more() {
  if (!eof_) return parse_result::incomplete;
  if (state_ == state::body_until_eof) return complete(state::finished);
  if (state_ == state::status_line && pos_ == in_.size()) {
    state_ = state::finished;
    return parse_result::closed;
  }
  return fail("connection closed by peer before the response was complete");
}

parse_result http_response_parser::next() {
  if (delivered_) {  // the caller is done with the previous response; capacity is kept
    delivered_ = false;
    response_.minor_version = 1;
    response_.status = 0;
    response_.reason.clear();
    response_.headers.clear();
    response_.body.clear();
    response_.keep_alive = true;
    head_bytes_ = 0;
    body_bytes_ = 0;
  }
  for (;;) {
    switch (state_) {
      case state::failed:
        return parse_result::error;
      case state::finished:
        return parse_result::closed;

      case state::status_line:
      case state::headers: {
        const std::size_t before = pos_;
        const auto line = take_line();
        if (!line) {
          if (head_bytes_ + (in_.size() - pos_) > options_.max_head_bytes)
            return fail("response too large");
          return need_more();
        }
        head_bytes_ += pos_ - before;
        if (head_bytes_ > options_.max_head_bytes) return fail("response too large");
        if (state_ == state::status_line) {
          if (!parse_status_line(*line)) return fail("malformed status line: " + quote(*line));
          state_ = state::headers;
        } else if (line->empty()) {
          const auto r = end_of_head();
          if (r != parse_result::incomplete) return r;
        } else if (!parse_header_line(*line)) {
          return fail("malformed header line: " + quote(*line));
        }
        continue;
      }

      case state::body_length:
        remaining_ -= take_body(remaining_);
        if (remaining_ == 0) return complete(state::status_line);
        return need_more();

      case state::chunk_size: {
        const auto line = take_line();
        if (!line) return line_too_long() ? fail("malformed chunk size") : need_more();
        // <hex size>[;extension...]: extensions carry nothing we need
        const auto text = trim(line->substr(0, line->find(';')));
        std::uint64_t size = 0;
        const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), size, 16);
        if (text.empty() || ec != std::errc{} || ptr != text.data() + text.size())
          return fail("malformed chunk size");
        if (size > options_.max_body_bytes - body_bytes_) return fail("response too large");
        remaining_ = size;
        state_ = size == 0 ? state::trailers : state::chunk_data;
        continue;
      }

      case state::chunk_data:
        remaining_ -= take_body(remaining_);
        if (remaining_ > 0) return need_more();
        state_ = state::chunk_end;
        continue;

      case state::chunk_end: {
        const auto line = take_line();
        if (!line) return in_.size() - pos_ >= 2 ? fail("malformed chunk terminator") : need_more();
        if (!line->empty()) return fail("malformed chunk terminator");
        state_ = state::chunk_size;
        continue;
      }

      case state::trailers: {  // read so that the next response starts at the right byte
        const auto line = take_line();
        if (!line) return line_too_long() ? fail("response too large") : need_more();
        if (line->empty()) return complete(state::status_line);
        continue;
      }

      case state::body_until_eof:
        take_body(in_.size() - pos_);
        if (body_bytes_ > options_.max_body_bytes) return fail("response too large");
        return need_more();
    }
  }
}

}  // namespace qos::wire
