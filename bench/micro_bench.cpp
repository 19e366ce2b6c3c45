// S7 micro-benchmarks: the costs on the hot path of a guarded request.
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <boost/fiber/all.hpp>

#include "qos/admission/admission.hpp"
#include "qos/core/limiter.hpp"
#include "qos/fiber/executor.hpp"
#include "qos/fiber/fiber_limiter.hpp"
#include "qos/ops/metrics_registry.hpp"

namespace {

// The single-threaded core: what the state machine itself costs.
void core_acquire_release(benchmark::State& state) {
  qos::limiter l({.max_concurrent = 8, .max_queue = 1000});
  const auto now = qos::clock::now();
  for (auto _ : state) {
    benchmark::DoNotOptimize(l.try_acquire());
    l.release(1, now, [](qos::waiter&) {});
  }
}
BENCHMARK(core_acquire_release);

// What a request pays with free permits: the locked try_admit plus the RAII release.
void acquire_release_uncontended(benchmark::State& state) {
  qos::fiber_limiter l({.max_concurrent = 8, .max_queue = 1000});
  for (auto _ : state) {
    auto a = l.try_admit();
    benchmark::DoNotOptimize(a.kind);
    a.permit.reset();
  }
}
BENCHMARK(acquire_release_uncontended);

// A full queue sheds on the reactor thread without creating a fiber: the cost of that answer.
void reject_on_full_queue(benchmark::State& state) {
  qos::fiber_limiter l({.max_concurrent = 1, .max_queue = 1});
  auto held = l.try_admit();
  auto queued = l.try_admit();  // its ticket holds the only queue place until the end
  for (auto _ : state) benchmark::DoNotOptimize(l.try_admit().kind);
}
BENCHMARK(reject_on_full_queue);

// Park and resume: two fibers on one thread take turns on a limit of 1, so every acquire parks
// and every release hands the permit over and resumes the other. Reported per hand-off.
void park_resume(benchmark::State& state) {
  qos::fiber_limiter l({.max_concurrent = 1, .max_queue = 16});
  const auto far = qos::clock::now() + std::chrono::hours(1);
  std::int64_t handoffs = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const int rounds = 10000;
    state.ResumeTiming();
    auto worker = [&] {
      for (int i = 0; i < rounds; ++i) {
        auto got = l.acquire(0, far);
        boost::this_fiber::yield();  // let the other fiber queue behind us
        got.permit.reset();
      }
    };
    boost::fibers::fiber a(worker), b(worker);
    a.join();
    b.join();
    handoffs += 2 * rounds;
  }
  state.SetItemsProcessed(handoffs);
}
BENCHMARK(park_resume)->Unit(benchmark::kMillisecond);

// Reactor → fiber: post a job from a plain thread and wait until a fiber of the executor has
// started it (the round trip, so about twice the one-way hand-off).
void reactor_to_fiber(benchmark::State& state) {
  qos::executor ex({.threads = 2, .inbox = 1024});
  std::atomic<bool> ran{false};
  for (auto _ : state) {
    ran.store(false, std::memory_order_relaxed);
    qos::unique_task t([&ran] { ran.store(true, std::memory_order_release); });
    while (!ex.try_post(t)) {
    }
    while (!ran.load(std::memory_order_acquire)) {
    }
  }
  ex.stop();
}
BENCHMARK(reactor_to_fiber)->UseRealTime();

}  // namespace

// The gate's own bookkeeping for a reactor handler with a free permit (S5's /inline without
// HTTP): admission::submit on this thread, the permit, the handler call, the service-time
// sample, the metrics registry's counters, the release. The transport is built by the caller,
// as the Pistache adapter builds it, so its allocation is counted.
class inline_transport final : public qos::transport {
 public:
  bool connected() noexcept override { return true; }
  std::optional<qos::response> handle() override {
    benchmark::ClobberMemory();
    return std::nullopt;
  }
  void answer(qos::response) noexcept override {}
  void fallback(qos::outcome) noexcept override {}
  void fail(std::exception_ptr) noexcept override {}
};

void admission_inline(benchmark::State& state) {
  qos::executor exec({.threads = 1, .inbox = 1024});
  qos::group_options g;
  g.name = "free";
  g.limiter.max_concurrent = 100000;
  g.limiter.max_queue = 1000;
  qos::route_policy r;
  r.name = "inline";
  r.group = "free";
  qos::metrics_registry metrics;
  qos::admission adm({g}, {r}, exec, metrics);
  const auto& route = *adm.find_route("inline");
  for (auto _ : state) {
    adm.submit(route, qos::request_info{.level = 0, .arrival = qos::clock::now()},
               qos::handler_kind::reactor, std::make_unique<inline_transport>());
  }
  exec.stop();
}
BENCHMARK(admission_inline);

BENCHMARK_MAIN();
