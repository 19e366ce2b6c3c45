#include "qos/admission/options.hpp"

#include <chrono>
#include <limits>
#include <sstream>
#include <string>

namespace qos {

namespace {

std::string str(std::size_t v) {
  return std::to_string(v);
}

static_assert(bounds::longest == std::chrono::hours(1), "the messages below say 1h");
static_assert(bounds::rtt_tolerance == 10.0, "the message below says 10");

std::string ms(duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + "ms";
}

void at_most(const char* key, std::size_t value, std::size_t bound) {
  if (value > bound) {
    throw invalid_option(key, "must be <= " + str(bound) + ", got " + str(value));
  }
}

void at_most(const char* key, duration value) {
  if (value > bounds::longest) {
    throw invalid_option(key, "must be <= 1h, got " + ms(value));
  }
}

void check_limit(const limit_options& o) {
  if (auto problem = check(o)) {
    throw invalid_option("limit." + std::string(problem->field), problem->message);
  }
  // check() holds min <= initial <= max, so bounding min and max bounds all three.
  at_most("limit.min", o.min, bounds::permits);
  at_most("limit.max", o.max, bounds::permits);
  at_most("limit.timeout", o.timeout);
  if (o.rtt_tolerance > bounds::rtt_tolerance) {
    std::ostringstream got;
    got << o.rtt_tolerance;
    throw invalid_option("limit.rtt_tolerance", "must be <= 10, got " + got.str());
  }
  at_most("limit.long_window", o.long_window, bounds::long_window);
  at_most("limit.probe_interval", o.probe_interval);
}

}  // namespace

void validate(const group_options& g) {
  const limiter_options& l = g.limiter;
  if (l.max_concurrent < 1) throw invalid_option("max_concurrent", "must be >= 1, got 0");
  at_most("max_concurrent", l.max_concurrent, bounds::permits);
  if (l.max_queue < 1) throw invalid_option("max_queue", "must be >= 1, got 0");
  at_most("max_queue", l.max_queue, bounds::queue);
  if (l.target <= duration::zero()) throw invalid_option("queue.target", "must be > 0");
  at_most("queue.target", l.target);
  if (l.interval <= duration::zero()) throw invalid_option("queue.interval", "must be > 0");
  at_most("queue.interval", l.interval);
  if (l.aging_step < duration::zero()) throw invalid_option("aging_step", "must be >= 0");
  at_most("aging_step", l.aging_step);
  if (g.limit) check_limit(*g.limit);
  if (l.reserve != 0) {
    // Lower levels must be able to run at all, at the smallest limit the group can have.
    const std::size_t smallest = g.limit ? g.limit->min : l.max_concurrent;
    if (l.reserve >= smallest) {
      throw invalid_option("reserve.permits", std::string("must be below ") +
                                                  (g.limit ? "limit.min" : "max_concurrent") +
                                                  " (" + str(smallest) + "), got " +
                                                  str(l.reserve));
    }
    if (l.reserve_level == 0) {
      throw invalid_option("reserve.priority", "must be at least 1: level 0 would reserve nothing");
    }
  }
  // The pool may have to run as many handlers at once as the limit can reach.
  const std::size_t needed = g.limit ? g.limit->max : l.max_concurrent;
  at_most("blocking_threads", g.blocking_threads, bounds::permits);
  if (g.blocking_threads != 0 && g.blocking_threads < needed) {
    throw invalid_option("blocking_threads", std::string("must be 0 or >= ") +
                                                 (g.limit ? "limit.max" : "max_concurrent") + " (" +
                                                 str(needed) + "), got " + str(g.blocking_threads));
  }
}

void validate(const route_policy& r, const group_options& group) {
  if (r.max_wait <= duration::zero()) throw invalid_option("max_wait", "must be > 0");
  at_most("max_wait", r.max_wait);
  if (r.max_exec && *r.max_exec <= duration::zero()) {
    throw invalid_option("max_exec", "must be > 0");
  }
  if (r.max_exec) at_most("max_exec", *r.max_exec);
  // A request never needs more permits than its group can ever hand out.
  const std::size_t cap =
      std::min<std::size_t>(group.most_permits(), std::numeric_limits<std::uint32_t>::max());
  if (r.cost < 1 || r.cost > cap) {
    throw invalid_option("cost", "must be between 1 and " + str(cap) + " (group '" + group.name +
                                     "' never grants more, see its max_concurrent" +
                                     (group.limit ? " and limit.max" : "") + "), got " +
                                     str(r.cost));
  }
}

}  // namespace qos
