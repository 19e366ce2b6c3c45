// The limit algorithms, driven by a simulated backend and a manual clock: no threads, no sleeps.
#include "qos/core/limit_algorithm.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <utility>

namespace qos {
namespace {

using namespace std::chrono_literals;

static_assert(
    noexcept(std::declval<limit_algorithm&>().on_sample(std::declval<const limit_sample&>())));
static_assert(noexcept(std::declval<const limit_algorithm&>().limit()));

// A backend that serves `knee` requests at a time in `base`; past the knee requests share it, so
// latency grows in proportion to concurrency.
struct backend {
  duration base = 50ms;
  std::size_t knee = 20;

  duration latency(std::size_t concurrent) const {
    if (concurrent <= knee) return base;
    return base * static_cast<duration::rep>(concurrent) / static_cast<duration::rep>(knee);
  }
};

struct run_stats {
  double tail_average = 0;    // limit after each of the last rounds, averaged
  std::size_t tail_high = 0;  // highest limit after any of the last rounds
  std::size_t lowest = std::numeric_limits<std::size_t>::max();  // after any sample
  std::size_t highest = 0;                                       // after any sample
};

// A client with more demand than any limit: each round runs exactly `limit` requests at once;
// they all finish after latency(limit) and each reports one sample.
class closed_loop {
 public:
  explicit closed_loop(limit_algorithm& algorithm) : algorithm_(algorithm) {}

  run_stats run(const backend& b, int rounds, int tail = 500) {
    run_stats out;
    double sum = 0;
    for (int round = 0; round < rounds; ++round) {
      const std::size_t concurrent = algorithm_.limit();
      const duration rtt = b.latency(concurrent);
      clock_.advance(rtt);
      for (std::size_t i = 0; i < concurrent; ++i) {
        const std::size_t limit =
            algorithm_.on_sample({.rtt = rtt, .inflight = concurrent, .now = clock_.now()});
        EXPECT_EQ(limit, algorithm_.limit());
        out.lowest = std::min(out.lowest, limit);
        out.highest = std::max(out.highest, limit);
      }
      if (round >= rounds - tail) {
        sum += static_cast<double>(algorithm_.limit());
        out.tail_high = std::max(out.tail_high, algorithm_.limit());
      }
    }
    out.tail_average = sum / tail;
    return out;
  }

  manual_clock& clock() { return clock_; }

 private:
  limit_algorithm& algorithm_;
  manual_clock clock_;
};

limit_options options(limit_kind kind) {
  limit_options o;
  o.kind = kind;
  o.min = 5;
  o.max = 200;
  o.initial = 20;
  o.timeout = 75ms;  // aimd: 50 ms * c / 20 passes it above 30 concurrent
  return o;
}

// One window of samples at the algorithm's current limit, all alike; returns the new limit.
std::size_t window(limit_algorithm& a, manual_clock& clock, duration rtt, std::size_t inflight,
                   bool dropped = false) {
  const std::size_t n = a.limit();
  clock.advance(rtt);
  for (std::size_t i = 0; i < n; ++i) a.on_sample({rtt, inflight, dropped, clock.now()});
  return a.limit();
}

// --- settling at the knee (50 ms up to 20 concurrent, then 2.5 ms per request) ---------------
// 3000 rounds is about 200 s of simulated time, so about 20 probes for gradient2 and vegas. The
// tail averages include the probe rounds, where the limit reads min.

TEST(limit_algorithm_test, aimd_settles_where_latency_passes_its_timeout) {
  auto a = make_limit_algorithm(options(limit_kind::aimd));
  closed_loop loop(*a);
  const run_stats s = loop.run(backend{}, 3000);
  // Observed: a sawtooth 27..31 (average 29): +1 per round up to 31 (77.5 ms > 75 ms), then
  // x0.9. AIMD only sees the knee through the timeout, so it sits where latency crosses it.
  EXPECT_GE(s.tail_average, 26);
  EXPECT_LE(s.tail_average, 32);
  EXPECT_LE(s.tail_high, 32u);
  EXPECT_GE(s.lowest, 5u);
  EXPECT_LE(s.highest, 200u);
}

TEST(limit_algorithm_test, gradient2_settles_near_the_knee) {
  auto a = make_limit_algorithm(options(limit_kind::gradient2));
  closed_loop loop(*a);
  const run_stats s = loop.run(backend{}, 3000);
  // Observed: average 33.8, at most 38, and no upward drift over 20000 rounds. It holds latency
  // at about 1.7x the probed no-load rtt (rtt_tolerance is 1.5), so somewhat past the knee.
  EXPECT_GE(s.tail_average, 25);
  EXPECT_LE(s.tail_average, 40);
  EXPECT_LE(s.tail_high, 45u);
  EXPECT_GE(s.lowest, 5u);
  EXPECT_LE(s.highest, 200u);
}

TEST(limit_algorithm_test, vegas_settles_near_the_knee) {
  auto a = make_limit_algorithm(options(limit_kind::vegas));
  closed_loop loop(*a);
  const run_stats s = loop.run(backend{}, 3000);
  // Observed: 26 between probes (queue = limit - 20 = 6 = beta), average 25.9 with probes. The
  // probes do not ratchet it upwards: measured at min, no-load rtt stays 50 ms.
  EXPECT_GE(s.tail_average, 20);
  EXPECT_LE(s.tail_average, 30);
  EXPECT_LE(s.tail_high, 30u);
  EXPECT_GE(s.lowest, 5u);
  EXPECT_LE(s.highest, 200u);
}

// --- backing off when latency doubles --------------------------------------------------------

// The knee halves (50 ms up to 10 concurrent): at the settled limit latency doubles, and the
// capacity really halved, so the limit should settle about half as high.
TEST(limit_algorithm_test, every_adaptive_algorithm_backs_off_when_the_knee_halves) {
  for (limit_kind kind : {limit_kind::aimd, limit_kind::gradient2, limit_kind::vegas}) {
    auto a = make_limit_algorithm(options(kind));
    SCOPED_TRACE(a->name());
    closed_loop loop(*a);
    const run_stats before = loop.run(backend{}, 3000);
    const run_stats early = loop.run(backend{50ms, 10}, 100, 100);
    const run_stats after = loop.run(backend{50ms, 10}, 3000);
    // Observed (before -> after): aimd 29 -> 15, gradient2 33.8 -> 17.1, vegas 25.9 -> 15.9.
    EXPECT_LT(early.tail_average, before.tail_average);
    EXPECT_LT(after.tail_average, 0.7 * before.tail_average);
    EXPECT_LE(after.tail_high, 20u);
    EXPECT_GE(std::min({before.lowest, early.lowest, after.lowest}), 5u);
  }
}

// Base latency doubles and the knee halves (100 ms up to 10 concurrent).
TEST(limit_algorithm_test, delay_based_algorithms_back_off_when_base_latency_doubles) {
  for (limit_kind kind : {limit_kind::gradient2, limit_kind::vegas}) {
    auto a = make_limit_algorithm(options(kind));
    SCOPED_TRACE(a->name());
    closed_loop loop(*a);
    const run_stats before = loop.run(backend{}, 3000);
    const run_stats after = loop.run(backend{100ms, 10}, 3000);
    // Observed: gradient2 33.8 -> 16.2, vegas 25.9 -> 13.9.
    EXPECT_LT(after.tail_average, 0.7 * before.tail_average);
    EXPECT_GE(after.lowest, 5u);
  }
}

// There every request exceeds AIMD's 75 ms timeout, so it can only sit at min: it knows the
// knee only through its timeout, which must be set above the backend's normal latency.
TEST(limit_algorithm_test, aimd_sits_at_min_when_every_request_exceeds_its_timeout) {
  auto a = make_limit_algorithm(options(limit_kind::aimd));
  closed_loop loop(*a);
  loop.run(backend{}, 1000);
  const run_stats after = loop.run(backend{100ms, 10}, 1000);
  EXPECT_EQ(after.tail_average, 5);
  EXPECT_EQ(after.lowest, 5u);
}

// --- aimd ------------------------------------------------------------------------------------

TEST(limit_algorithm_test, aimd_cuts_multiplicatively_once_per_window) {
  auto a = make_limit_algorithm(options(limit_kind::aimd));
  manual_clock clock;
  // One drop among a window of 20 cuts once, when the window completes.
  for (int i = 0; i < 19; ++i) a->on_sample({.rtt = 10ms, .inflight = 20, .now = clock.now()});
  EXPECT_EQ(a->limit(), 20u);
  EXPECT_EQ(a->on_sample({.rtt = 10ms, .inflight = 20, .dropped = true, .now = clock.now()}),
            18u);  // floor(20 * 0.9)
  // A window of timeouts cuts once too, not once per sample: they all ran under one limit.
  EXPECT_EQ(window(*a, clock, 80ms, 18), 16u);  // floor(18 * 0.9)
  EXPECT_EQ(window(*a, clock, 10ms, 16), 17u);  // healthy and in use: +1
}

TEST(limit_algorithm_test, aimd_stays_at_min_under_a_long_run_of_drops) {
  auto a = make_limit_algorithm(options(limit_kind::aimd));
  manual_clock clock;
  for (int i = 0; i < 1000; ++i) {
    EXPECT_GE(window(*a, clock, 10ms, a->limit(), true), 5u);
  }
  EXPECT_EQ(a->limit(), 5u);
}

TEST(limit_algorithm_test, aimd_never_exceeds_max) {
  limit_options o = options(limit_kind::aimd);
  o.max = 25;
  auto a = make_limit_algorithm(o);
  manual_clock clock;
  for (int i = 0; i < 100; ++i) window(*a, clock, 10ms, a->limit());
  EXPECT_EQ(a->limit(), 25u);
}

// --- app-limited guard -----------------------------------------------------------------------

// Two requests at a time against a limit of 20, fast: nothing shows a higher limit would be
// used, so it must not climb (or a quiet spell would end with a limit the backend never held).
TEST(limit_algorithm_test, app_limited_traffic_does_not_raise_the_limit) {
  for (limit_kind kind : {limit_kind::aimd, limit_kind::gradient2, limit_kind::vegas}) {
    auto a = make_limit_algorithm(options(kind));
    SCOPED_TRACE(a->name());
    manual_clock clock;
    for (int i = 0; i < 20000; ++i) {  // 200 s: probes included
      clock.advance(10ms);
      EXPECT_LE(a->on_sample({.rtt = 5ms, .inflight = 2, .now = clock.now()}), 20u);
    }
    EXPECT_EQ(a->limit(), 20u);
  }
}

// --- drops -----------------------------------------------------------------------------------

// A backend that fails fast must not read as an idle one: a dropped window lowers the limit even
// though its rtt is tiny and the traffic is app-limited.
TEST(limit_algorithm_test, drops_lower_every_adaptive_limit) {
  for (limit_kind kind : {limit_kind::aimd, limit_kind::gradient2, limit_kind::vegas}) {
    auto a = make_limit_algorithm(options(kind));
    SCOPED_TRACE(a->name());
    manual_clock clock;
    window(*a, clock, 50ms, 20);  // a first measurement
    const std::size_t before = a->limit();
    for (int i = 0; i < 5; ++i) window(*a, clock, 1ms, 1, true);
    EXPECT_LT(a->limit(), before);
    EXPECT_GE(a->limit(), 5u);
  }
}

// --- probing ---------------------------------------------------------------------------------

TEST(limit_algorithm_test, a_probe_pins_the_limit_to_min_for_one_window_then_restores_it) {
  for (limit_kind kind : {limit_kind::gradient2, limit_kind::vegas}) {
    limit_options o = options(kind);
    o.probe_interval = 10s;
    auto a = make_limit_algorithm(o);
    SCOPED_TRACE(a->name());
    closed_loop loop(*a);
    loop.run(backend{}, 300);  // settled, some probes behind it
    manual_clock& clock = loop.clock();
    // Run rounds until the next probe begins: rounds take 50 ms or more, so within 200 of them.
    std::size_t before = a->limit();
    for (int round = 0; round < 200 && a->limit() != o.min; ++round) {
      before = a->limit();
      window(*a, clock, backend{}.latency(before), before);
    }
    ASSERT_EQ(a->limit(), o.min) << "no probe began within 10 s";
    ASSERT_GT(before, o.min);
    // Requests admitted before the probe still report, slowly: they must not end it.
    for (std::size_t i = 0; i < before; ++i) {
      EXPECT_EQ(a->on_sample({.rtt = 900ms, .inflight = before, .now = clock.now()}), o.min);
    }
    // min requests admitted during the probe end it, and the limit comes back (give or take
    // the one update from the window that ended at the probe time).
    clock.advance(50ms);
    for (std::size_t i = 0; i < o.min; ++i)
      a->on_sample({.rtt = 50ms, .inflight = o.min, .now = clock.now()});
    EXPECT_NEAR(static_cast<double>(a->limit()), static_cast<double>(before), 1.0);
  }
}

// If the caller's clock stands still, no sample can be told fresh from stale by time; the probe
// still ends once as many samples as were in flight have been left out.
TEST(limit_algorithm_test, a_probe_ends_even_if_the_clock_stands_still) {
  limit_options o = options(limit_kind::vegas);
  o.probe_interval = 1s;
  auto a = make_limit_algorithm(o);
  manual_clock clock;
  window(*a, clock, 50ms, 20);  // first measurement: next probe due 1 s later
  clock.advance(1s);
  window(*a, clock, 70ms, 20);  // at the due time; queue 5.7 holds the limit; the probe begins
  ASSERT_EQ(a->limit(), 5u);
  int samples = 0;
  while (a->limit() == 5u && samples < 1000) {
    a->on_sample({.rtt = 50ms, .inflight = 20, .now = clock.now()});
    ++samples;
  }
  EXPECT_EQ(samples, 20 + 5);  // 20 in flight left out, then one window of min
  EXPECT_EQ(a->limit(), 20u);
}

// Pathological rtts (zero, a nanosecond, minutes, drops) across many probe intervals: whatever
// the probes measure, the limit stays within [min, max].
TEST(limit_algorithm_test, probing_never_takes_the_limit_below_min) {
  for (limit_kind kind : {limit_kind::gradient2, limit_kind::vegas}) {
    limit_options o = options(kind);
    o.min = 10;
    o.max = 60;
    o.probe_interval = 2s;
    auto a = make_limit_algorithm(o);
    SCOPED_TRACE(a->name());
    manual_clock clock;
    const duration rtts[] = {0ns, 1ns, 50ms, 5min, 1ns, 1ms, 10s, 0ns, 50ms, 3ms, 2h};
    std::size_t lowest = o.max, highest = o.min;
    for (int i = 0; i < 50000; ++i) {  // 500 s, 250 probe intervals
      clock.advance(10ms);
      const duration rtt = rtts[static_cast<std::size_t>(i) % std::size(rtts)];
      const bool dropped = i % 7 == 0;
      const std::size_t inflight = static_cast<std::size_t>(i) % 80;
      const std::size_t limit = a->on_sample({rtt, inflight, dropped, clock.now()});
      lowest = std::min(lowest, limit);
      highest = std::max(highest, limit);
    }
    EXPECT_GE(lowest, 10u);
    EXPECT_LE(highest, 60u);
  }
}

// Netflix's Vegas probe takes the rtt at full load as the no-load one, so under a standing queue
// every probe reads "no queue" and adds beta. Ours measures at min: the limit must not creep.
TEST(limit_algorithm_test, vegas_probes_do_not_ratchet_the_limit_under_sustained_load) {
  limit_options o = options(limit_kind::vegas);
  o.probe_interval = 1s;  // about one probe every 15 rounds
  auto a = make_limit_algorithm(o);
  closed_loop loop(*a);
  const run_stats first = loop.run(backend{}, 3000);
  const run_stats later = loop.run(backend{}, 3000);
  EXPECT_LE(later.tail_high, first.tail_high);
  EXPECT_LE(later.tail_high, 30u);
}

// --- fixed and options -----------------------------------------------------------------------

TEST(limit_algorithm_test, fixed_never_moves) {
  auto a = make_limit_algorithm(options(limit_kind::fixed));
  EXPECT_EQ(a->name(), "fixed");
  manual_clock clock;
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(window(*a, clock, i % 2 ? 1ms : 10s, 20, i % 3 == 0), 20u);
  }
  closed_loop loop(*a);
  const run_stats s = loop.run(backend{}, 100, 100);
  EXPECT_EQ(s.lowest, 20u);
  EXPECT_EQ(s.highest, 20u);
}

TEST(limit_algorithm_test, names_and_initial_limits) {
  const std::pair<limit_kind, std::string_view> kinds[] = {{limit_kind::fixed, "fixed"},
                                                           {limit_kind::aimd, "aimd"},
                                                           {limit_kind::gradient2, "gradient2"},
                                                           {limit_kind::vegas, "vegas"}};
  for (const auto& [kind, name] : kinds) {
    limit_options o = options(kind);
    o.min = o.max = o.initial = 7;
    auto a = make_limit_algorithm(o);
    EXPECT_EQ(a->name(), name);
    EXPECT_EQ(a->limit(), 7u);
  }
}

TEST(limit_algorithm_test, invalid_options_throw) {
  const auto with = [](auto change) {
    limit_options o = options(limit_kind::aimd);
    change(o);
    return o;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const limit_options bad[] = {
      with([](limit_options& o) { o.min = 0; }),
      with([](limit_options& o) { o.min = 30, o.max = 20; }),
      with([](limit_options& o) { o.initial = 4; }),
      with([](limit_options& o) { o.initial = 201; }),
      with([](limit_options& o) { o.backoff_ratio = 0.49; }),
      with([](limit_options& o) { o.backoff_ratio = 1.0; }),
      with([&](limit_options& o) { o.backoff_ratio = nan; }),
      with([](limit_options& o) { o.timeout = 0s; }),
      with([](limit_options& o) { o.rtt_tolerance = 0.99; }),
      with([&](limit_options& o) { o.rtt_tolerance = inf; }),
      with([](limit_options& o) { o.smoothing = 0; }),
      with([](limit_options& o) { o.smoothing = 1.01; }),
      with([&](limit_options& o) { o.smoothing = nan; }),
      with([](limit_options& o) { o.long_window = 0; }),
      with([](limit_options& o) { o.probe_interval = -1s; }),
      with([](limit_options& o) { o.kind = static_cast<limit_kind>(42); }),
  };
  for (const limit_options& o : bad) {
    EXPECT_THROW(make_limit_algorithm(o), std::invalid_argument);
  }
  // Every field is checked whatever the kind.
  limit_options fixed = options(limit_kind::fixed);
  fixed.smoothing = 0;
  EXPECT_THROW(make_limit_algorithm(fixed), std::invalid_argument);
}

TEST(limit_algorithm_test, boundary_options_are_accepted) {
  limit_options o = options(limit_kind::aimd);
  o.backoff_ratio = 0.5;
  o.rtt_tolerance = 1.0;
  o.smoothing = 1.0;
  o.long_window = 1;
  o.min = o.max = o.initial = 1;
  for (limit_kind kind :
       {limit_kind::fixed, limit_kind::aimd, limit_kind::gradient2, limit_kind::vegas}) {
    o.kind = kind;
    EXPECT_NO_THROW(make_limit_algorithm(o));
  }
  EXPECT_NO_THROW(make_limit_algorithm(limit_options{}));  // the defaults
}

}  // namespace
}  // namespace qos
