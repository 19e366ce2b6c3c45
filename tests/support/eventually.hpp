// Bounded polling for tests that watch another thread: waits until `pred` holds or `limit`
// passes. The bound keeps a broken build from hanging the suite; nothing here asserts speed.
#pragma once

#include <chrono>
#include <thread>

namespace qos::test {

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace qos::test
