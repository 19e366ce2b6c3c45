#include "qos/jobs/detail/header_blob.hpp"

#include "qos/jobs/store_error.hpp"

namespace qos::jobs::detail {

namespace {

void put_u32(std::string& out, std::size_t n) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
}

}  // namespace

std::string encode_headers(const std::vector<std::pair<std::string, std::string>>& headers) {
  std::string out;
  for (const auto& [name, value] : headers) {
    put_u32(out, name.size());
    out += name;
    put_u32(out, value.size());
    out += value;
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> decode_headers(std::string_view in) {
  std::vector<std::pair<std::string, std::string>> out;
  auto take = [&in](std::string& field) {
    if (in.size() < 4) throw store_error("corrupt header blob");
    std::size_t n = 0;
    for (int i = 0; i < 4; ++i) n |= std::size_t(static_cast<unsigned char>(in[i])) << (8 * i);
    in.remove_prefix(4);
    if (in.size() < n) throw store_error("corrupt header blob");
    field.assign(in.substr(0, n));
    in.remove_prefix(n);
  };
  while (!in.empty()) {
    auto& [name, value] = out.emplace_back();
    take(name);
    take(value);
  }
  return out;
}

}  // namespace qos::jobs::detail
