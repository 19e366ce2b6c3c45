// The executor: a full inbox refuses a job without consuming it.
#include "qos/fiber/executor.hpp"
#include "support/eventually.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "qos/fiber/fiber_limiter.hpp"

namespace qos {
namespace {

using namespace std::chrono_literals;

TEST(executor_test, full_inbox_refuses_without_consuming_the_job) {
  executor ex({.threads = 1, .inbox = 2});
  fiber_limiter gate_lim({.max_concurrent = 1, .max_queue = 10});
  auto held = gate_lim.try_admit();
  std::atomic<int> started{0};
  // Occupy the worker's fibers so the inbox fills: each job parks on the limiter.
  int refused = 0;
  for (int i = 0; i < 64; ++i) {
    unique_task t([&] {
      ++started;
      (void)gate_lim.acquire(0, clock::now() + 50ms);
    });
    if (!ex.try_post(t)) {
      EXPECT_TRUE(static_cast<bool>(t));
      ++refused;
    }
  }
  held.permit.reset();
  ex.stop();
  EXPECT_EQ(started.load() + refused, 64);
  EXPECT_EQ(ex.live(), 0u);
}

}  // namespace
}  // namespace qos
