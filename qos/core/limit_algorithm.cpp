// The limit algorithms behind make_limit_algorithm, plus what the adaptive ones share: the sample
// window they decide on and the rtt probe. Each keeps its estimate as a double and exposes the
// floor, so increases smaller than one permit accumulate instead of being lost.
#include "qos/core/limit_algorithm.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

namespace qos {
namespace {

// Durations as double nanoseconds: the algorithms only ever use ratios of rtts.
double ns(duration d) noexcept {
  return std::chrono::duration<double, std::nano>(d).count();
}

class bounds {
 public:
  bounds(std::size_t min, std::size_t max) noexcept
      : min_(static_cast<double>(min)), max_(static_cast<double>(max)) {
    assert(min >= 1 && min <= max);  // validate() let nothing else through
  }
  double clamp(double limit) const noexcept { return std::clamp(limit, min_, max_); }
  // The floor of an estimate already within [min, max] is too, since min and max are integers.
  static std::size_t expose(double limit) noexcept {
    return static_cast<std::size_t>(std::floor(limit));
  }

 private:
  double min_;
  double max_;
};

class fixed_limit final : public limit_algorithm {
 public:
  explicit fixed_limit(std::size_t limit) noexcept : limit_(limit) {}
  std::size_t limit() const noexcept override { return limit_; }
  std::size_t on_sample(const limit_sample&) noexcept override { return limit_; }
  std::string_view name() const noexcept override { return "fixed"; }

 private:
  const std::size_t limit_;
};

// What the adaptive algorithms decide on: one window of samples, as Netflix's WindowedLimit
// summarises them (average rtt, largest inflight, whether anything dropped).
struct window_summary {
  duration rtt{};  // average over the samples that did not drop; zero when all dropped
  duration max_rtt{};
  std::size_t inflight = 0;
  bool dropped = false;
  time_point now{};
};

// Collects samples until it holds `size` of them, `size` being the limit when the window opened:
// one generation of permits, so about one service time at full use (Little's law). Deciding once
// per window rather than per sample is what keeps the feedback stable: the samples that finish
// right after a change were admitted under the old limit and still report its latency; a
// per-sample rule keeps reacting to them and overshoots (AIMD cuts to min on one slow round,
// Gradient2 and Vegas grow once per sample while latency has not caught up yet). Counting
// samples, not time, keeps this correct whatever the caller's clock does.
class sample_window {
 public:
  // True when this sample completes the window; take() then returns it and starts the next.
  bool add(const limit_sample& s, std::size_t size) noexcept {
    if (count_ == 0) size_ = std::max<std::size_t>(size, 1);
    ++count_;
    if (s.dropped) {
      summary_.dropped = true;
    } else {
      rtt_sum_ += s.rtt;
      ++measured_;
    }
    summary_.max_rtt = std::max(summary_.max_rtt, s.rtt);
    summary_.inflight = std::max(summary_.inflight, s.inflight);
    summary_.now = s.now;
    return count_ >= size_;
  }

  window_summary take() noexcept {
    window_summary out = summary_;
    if (measured_ > 0) out.rtt = rtt_sum_ / static_cast<duration::rep>(measured_);
    *this = sample_window{};
    return out;
  }

 private:
  window_summary summary_;
  duration rtt_sum_{};
  std::size_t measured_ = 0;  // samples in rtt_sum_
  std::size_t count_ = 0;
  std::size_t size_ = 1;
};

// Netflix AIMDLimit, applied once per window (TCP's once per round trip). Loss-based: it finds
// the knee only through `timeout` or drops, so `timeout` is where latency stops being acceptable.
class aimd_limit final : public limit_algorithm {
 public:
  explicit aimd_limit(const limit_options& o) noexcept
      : bounds_(o.min, o.max),
        limit_(static_cast<double>(o.initial)),
        backoff_ratio_(o.backoff_ratio),
        timeout_(o.timeout) {}

  std::size_t limit() const noexcept override { return bounds::expose(limit_); }

  std::size_t on_sample(const limit_sample& s) noexcept override {
    if (!window_.add(s, limit())) return limit();
    const window_summary w = window_.take();
    if (w.dropped || w.max_rtt > timeout_) {
      limit_ = bounds_.clamp(std::floor(limit_ * backoff_ratio_));
    } else if (static_cast<double>(w.inflight) * 2 >= limit_) {
      // Growing while the limit is not in use would let it drift to max during a quiet spell
      // and admit a burst the backend never proved it can take.
      limit_ = bounds_.clamp(limit_ + 1);
    }
    return limit();
  }

  std::string_view name() const noexcept override { return "aimd"; }

 private:
  bounds bounds_;
  double limit_;  // always a whole number: AIMD moves in whole permits
  double backoff_ratio_;
  duration timeout_;
  sample_window window_;
};

// Exponentially weighted average over about `window` values, a plain mean for the first few so
// that the first value alone does not anchor it.
class ewma {
 public:
  explicit ewma(std::size_t window) noexcept
      : factor_(2.0 / (static_cast<double>(window) + 1.0)),
        warmup_(std::min<std::size_t>(window, 10)) {}

  double add(double value) noexcept {
    if (count_ < warmup_) {
      ++count_;
      value_ += (value - value_) / static_cast<double>(count_);
    } else {
      value_ += (value - value_) * factor_;
    }
    return value_;
  }
  void scale(double by) noexcept { value_ *= by; }
  // Replaces the history with one trusted value, which then weighs as a full warm-up.
  void reset(double value) noexcept {
    value_ = value;
    count_ = warmup_;
  }

 private:
  double factor_;
  std::size_t warmup_;
  std::size_t count_ = 0;
  double value_ = 0;
};

// Envoy's minimum-rtt measurement (adaptive_concurrency's gradient controller), shared by the
// delay-based algorithms. Every `interval` the limit is pinned to `min` (never lower) for one
// window of requests admitted after the probe began; their average is the no-load rtt, and then
// the limit returns to where it was. Measuring at the current limit instead, as Netflix's Vegas
// probe does, takes a queued rtt for the no-load one under sustained load: the queue then reads
// as empty and the limit ratchets up at every probe.
class rtt_probe {
 public:
  explicit rtt_probe(duration interval) noexcept : interval_(interval) {}

  bool active() const noexcept { return active_; }
  bool due(time_point now) const noexcept { return now >= next_; }
  void schedule(time_point now) noexcept { next_ = now + interval_; }

  // `inflight` bounds how many requests admitted before the probe are still to report.
  void begin(time_point now, std::size_t inflight) noexcept {
    active_ = true;
    started_ = now;
    stale_left_ = inflight;
  }
  // True for a sample to leave out of the probe: admitted before it began, under the full
  // limit, so its rtt includes the queue. Counting them down keeps the probe finite even if the
  // caller's clock stands still.
  bool stale(const limit_sample& s) noexcept {
    if (!active_ || stale_left_ == 0 || s.now - s.rtt >= started_) return false;
    --stale_left_;
    return true;
  }
  void end(time_point now) noexcept {
    active_ = false;
    schedule(now);
  }

 private:
  duration interval_;
  time_point next_{};
  bool active_ = false;
  time_point started_{};
  std::size_t stale_left_ = 0;
};

// Netflix Gradient2Limit: compares the short-term rtt (one window's average) with a long-term
// average rather than a minimum, because a minimum latches onto rare fast requests and then
// sheds too much. Two known failures are guarded against:
//  - Drift (Netflix issue #137): under a steady overload the long-term average absorbs the
//    queueing delay, the gradient returns to 1 and the limit climbs to max. Each rtt_probe
//    re-anchors the long-term average to an unloaded measurement, so drift lasts at most one
//    probe interval; and, as proposed in Netflix PR #134, the sqrt(limit) headroom is added
//    only while the gradient is 1, so a queue that is detected is never grown into.
//  - Fast failures (Netflix issue #176): Netflix ignores drops, so a backend failing fast reads
//    as an idle one. A window with a drop takes the steepest gradient, 0.5 (also PR #134).
class gradient2_limit final : public limit_algorithm {
 public:
  explicit gradient2_limit(const limit_options& o) noexcept
      : bounds_(o.min, o.max),
        min_(o.min),
        limit_(static_cast<double>(o.initial)),
        tolerance_(o.rtt_tolerance),
        smoothing_(o.smoothing),
        long_rtt_(o.long_window),
        probe_(o.probe_interval) {}

  std::size_t limit() const noexcept override {
    return probe_.active() ? min_ : bounds::expose(limit_);
  }

  std::size_t on_sample(const limit_sample& s) noexcept override {
    if (probe_.stale(s)) return limit();
    if (!window_.add(s, limit())) return limit();
    const window_summary w = window_.take();
    if (probe_.active()) {
      probe_.end(w.now);
      if (w.rtt > duration::zero()) long_rtt_.reset(ns(w.rtt));
      if (w.dropped) update(0.5);
    } else if (!started_) {
      started_ = true;
      probe_.schedule(w.now);
      on_window(w);
    } else {
      const std::size_t admitted_under = limit();
      on_window(w);
      if (probe_.due(w.now)) probe_.begin(w.now, std::max(w.inflight, admitted_under));
    }
    return limit();
  }

  std::string_view name() const noexcept override { return "gradient2"; }

 private:
  void on_window(const window_summary& w) noexcept {
    if (w.dropped) {
      update(0.5);
      return;
    }
    if (w.rtt <= duration::zero()) return;  // no latency information

    const double short_rtt = ns(w.rtt);
    const double long_rtt = long_rtt_.add(short_rtt);
    // After a long overload the average stays high while samples are fast again; decaying it
    // brings the gradient back into play sooner than the EWMA alone would.
    if (long_rtt / short_rtt > 2) long_rtt_.scale(0.95);

    if (static_cast<double>(w.inflight) < limit_ / 2) return;  // app-limited

    // Never cut by more than half at once: one slow window must not halve the limit.
    update(std::clamp(tolerance_ * long_rtt / short_rtt, 0.5, 1.0));
  }

  void update(double gradient) noexcept {
    // sqrt(limit) of headroom lets the limit grow while latency holds.
    const double queue_size = gradient >= 1.0 ? std::sqrt(limit_) : 0.0;
    const double estimate = limit_ * gradient + queue_size;
    limit_ = bounds_.clamp(limit_ * (1 - smoothing_) + estimate * smoothing_);
  }

  bounds bounds_;
  std::size_t min_;
  double limit_;  // the limit outside probes
  double tolerance_;
  double smoothing_;
  ewma long_rtt_;
  rtt_probe probe_;
  bool started_ = false;  // a first window has been seen; probes are scheduled from it
  sample_window window_;
};

// Netflix VegasLimit (after TCP Vegas): estimates the queue from how far rtt has moved above the
// no-load rtt and keeps it between alpha and beta. rtt_noload is the least window rtt seen since
// the last rtt_probe, which re-measures it (Envoy's way, see rtt_probe; Netflix instead takes
// the current rtt, which ratchets the limit up under sustained load).
class vegas_limit final : public limit_algorithm {
 public:
  explicit vegas_limit(const limit_options& o) noexcept
      : bounds_(o.min, o.max),
        min_(o.min),
        limit_(static_cast<double>(o.initial)),
        probe_(o.probe_interval) {}

  std::size_t limit() const noexcept override {
    return probe_.active() ? min_ : bounds::expose(limit_);
  }

  std::size_t on_sample(const limit_sample& s) noexcept override {
    if (probe_.stale(s)) return limit();
    if (!window_.add(s, limit())) return limit();
    const window_summary w = window_.take();
    if (probe_.active()) {
      probe_.end(w.now);
      if (w.rtt > duration::zero()) rtt_noload_ = w.rtt;
      if (w.dropped) decrease();
    } else if (rtt_noload_ == duration::zero()) {
      if (w.rtt > duration::zero()) {  // the first measurement
        rtt_noload_ = w.rtt;
        probe_.schedule(w.now);
      }
      if (w.dropped) decrease();
    } else {
      const std::size_t admitted_under = limit();
      on_window(w);
      if (probe_.due(w.now)) probe_.begin(w.now, std::max(w.inflight, admitted_under));
    }
    return limit();
  }

  std::string_view name() const noexcept override { return "vegas"; }

 private:
  // Netflix's log10 steps are integers with no floor, so below a limit of 10 they are 0 and the
  // limit could neither grow nor shrink; a floor of 1 keeps it moving.
  double step() const noexcept { return std::max(1.0, std::floor(std::log10(limit_))); }
  void decrease() noexcept { limit_ = bounds_.clamp(limit_ - step()); }

  void on_window(const window_summary& w) noexcept {
    if (w.dropped) {
      decrease();
      return;
    }
    if (w.rtt <= duration::zero()) return;  // no latency information
    if (w.rtt < rtt_noload_) {
      rtt_noload_ = w.rtt;
      return;
    }
    // No evidence that a higher limit would be used.
    if (static_cast<double>(w.inflight) * 2 < limit_) return;

    const double step = this->step();
    const double alpha = 3 * step;
    const double beta = 6 * step;
    const double threshold = step;
    const double queue = limit_ * (1 - ns(rtt_noload_) / ns(w.rtt));
    if (queue <= threshold) {
      limit_ = bounds_.clamp(limit_ + beta);  // no queue at all: grow fast
    } else if (queue < alpha) {
      limit_ = bounds_.clamp(limit_ + step);
    } else if (queue > beta) {
      decrease();
    }
  }

  bounds bounds_;
  std::size_t min_;
  double limit_;           // the limit outside probes
  duration rtt_noload_{};  // zero until the first window with an rtt
  rtt_probe probe_;
  sample_window window_;
};

[[noreturn]] void reject(const char* what) {
  throw std::invalid_argument(std::string("limit_options: ") + what);
}

}  // namespace

std::optional<limit_problem> check(const limit_options& o) noexcept {
  const auto n = [](auto v) { return std::to_string(v); };
  const auto got = [](double v) {
    std::ostringstream out;
    out << ", got " << v;
    return out.str();
  };
  // Written as !(in range) so that NaN fails too.
  if (o.min < 1) return limit_problem{"min", "must be >= 1, got " + n(o.min)};
  if (o.max < o.min) {
    return limit_problem{"max", "must be >= min (" + n(o.min) + "), got " + n(o.max)};
  }
  if (o.initial < o.min || o.initial > o.max) {
    return limit_problem{"initial", "must be within [min, max] = [" + n(o.min) + ", " + n(o.max) +
                                        "], got " + n(o.initial)};
  }
  if (!(o.backoff_ratio >= 0.5 && o.backoff_ratio < 1.0)) {
    return limit_problem{"backoff_ratio", "must be in [0.5, 1)" + got(o.backoff_ratio)};
  }
  if (o.timeout <= duration::zero()) return limit_problem{"timeout", "must be > 0"};
  if (!(o.rtt_tolerance >= 1.0) || std::isinf(o.rtt_tolerance)) {
    return limit_problem{"rtt_tolerance", "must be >= 1 and finite" + got(o.rtt_tolerance)};
  }
  if (!(o.smoothing > 0.0 && o.smoothing <= 1.0)) {
    return limit_problem{"smoothing", "must be in (0, 1]" + got(o.smoothing)};
  }
  if (o.long_window < 1) return limit_problem{"long_window", "must be >= 1, got 0"};
  if (o.probe_interval <= duration::zero()) return limit_problem{"probe_interval", "must be > 0"};
  return std::nullopt;
}

std::unique_ptr<limit_algorithm> make_limit_algorithm(const limit_options& o) {
  if (auto problem = check(o)) {
    throw std::invalid_argument("limit_options: " + std::string(problem->field) + " " +
                                problem->message);
  }
  switch (o.kind) {
    case limit_kind::fixed:
      return std::make_unique<fixed_limit>(o.initial);
    case limit_kind::aimd:
      return std::make_unique<aimd_limit>(o);
    case limit_kind::gradient2:
      return std::make_unique<gradient2_limit>(o);
    case limit_kind::vegas:
      return std::make_unique<vegas_limit>(o);
  }
  reject("kind is not a known limit_kind");
}

}  // namespace qos
