#include "qos/core/group_controller.hpp"

#include <cassert>
#include <chrono>
#include <cmath>

namespace qos {

namespace {
duration from_ns(double ns) {
  return std::chrono::duration_cast<duration>(std::chrono::nanoseconds(std::llround(ns)));
}
}  // namespace

group_controller::group_controller(limiter_options options,
                                   std::unique_ptr<limit_algorithm> algorithm)
    : limiter_(options), algorithm_(std::move(algorithm)) {
  // Nobody waits yet: setting the limit grants no one, and its time is never read.
  if (algorithm_) limiter_.set_limit(algorithm_->limit(), time_point{}, [](waiter&) {});
}

group_controller::group_controller(limiter_options options, const limit_options& made_from,
                                   std::unique_ptr<limit_algorithm> algorithm)
    : group_controller(options, std::move(algorithm)) {
  if (algorithm_) made_from_ = made_from;
}

void group_controller::reconfigure(limiter_options options,
                                   const std::optional<limit_options>& limit,
                                   std::unique_ptr<limit_algorithm> fresh, time_point now,
                                   waiter_list& woken) noexcept {
  assert(!limit || fresh || (algorithm_ && made_from_ == limit));
  if (!limit) {
    algorithm_.reset();
    made_from_.reset();
  } else if (!(algorithm_ && made_from_ == limit) && fresh) {
    algorithm_ = std::move(fresh);
    made_from_ = limit;
  }
  if (algorithm_) options.max_concurrent = algorithm_->limit();
  limiter_.reconfigure(options, now, [&](waiter& w) { woken.push(w); });
}

void group_controller::adapt(duration rtt, bool dropped, time_point now,
                             waiter_list& woken) noexcept {
  const std::size_t limit = algorithm_->on_sample({rtt, limiter_.in_use(), dropped, now});
  if (limit != limiter_.limit()) {
    limiter_.set_limit(limit, now, [&](waiter& w) { woken.push(w); });
  }
}

duration group_controller::estimate_wait(priority level) const noexcept {
  if (service_ns_ == 0) return duration::zero();
  const double ahead =
      static_cast<double>(limiter_.waiting_at_or_above(level) + limiter_.reserved());
  return from_ns(ahead * service_ns_ / static_cast<double>(limiter_.limit()));
}

duration group_controller::service_time() const noexcept {
  return from_ns(service_ns_);
}

group_stats group_controller::stats() const noexcept {
  return {limiter_.in_use(),    limiter_.waiting(), limiter_.reserved(), limiter_.limit(),
          limiter_.max_queue(), service_time(),     adaptive()};
}

}  // namespace qos
