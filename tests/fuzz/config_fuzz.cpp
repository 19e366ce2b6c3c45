// libFuzzer harness of the YAML config loader. Whatever the text, load_config_string either
// returns a config that holds its promises or throws config_error naming the file; any other
// exception (it escapes and aborts), a crash, a hang or a sanitizer report is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "qos/admission/options.hpp"
#include "qos/config/config.hpp"

#ifndef QOS_FUZZ_BASE_DIR
#error "QOS_FUZZ_BASE_DIR must name the folder fallback files resolve against"
#endif

namespace {

void require(bool ok, const char* what, std::string_view detail = {}) {
  if (ok) return;
  std::fprintf(stderr, "config_fuzz: %s %.*s\n", what, static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

// What a loaded config promises the rest of qos: validate() accepts every group and route
// (the loader ran it), every route's group exists, and the fallback rule resolves.
void check_loaded(const qos::config::app_config& cfg) {
  require(!cfg.groups.empty() && !cfg.routes.empty(), "loaded without groups or routes");
  for (const auto& g : cfg.groups) qos::validate(g);
  for (const auto& r : cfg.routes) {
    const auto* group = cfg.find_group(r.group);
    require(group != nullptr, "route names an unknown group:", r.group);
    qos::validate(r, *group);
    (void)qos::config::resolve(r.fallback);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    check_loaded(qos::config::load_config_string(text, "fuzz.yaml", QOS_FUZZ_BASE_DIR));
  } catch (const qos::config::config_error& e) {
    const std::string_view what = e.what();
    require(what.rfind("fuzz.yaml", 0) == 0 && e.file() == "fuzz.yaml",
            "config_error does not name the file:", what);
    require(e.line() >= 0 && e.column() >= 0, "negative position in", what);
  } catch (const qos::invalid_option& e) {
    require(false, "a loaded config fails validate():", e.what());
  }
  return 0;
}
