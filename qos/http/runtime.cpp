#include "qos/http/runtime.hpp"

#include <algorithm>
#include <map>
#include <stdexcept>
#include <vector>

#ifdef QOS_HAVE_PG_STORE
#include "qos/jobs/pg_store.hpp"
#endif

#include "qos/config/reload_plan.hpp"
#include "qos/ops/log.hpp"

namespace qos {

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;

namespace {

// The config embeds admission's structs: slicing off the rest is the whole conversion.
template <class To, class From>
std::vector<To> sliced(const std::vector<From>& from) {
  return std::vector<To>(from.begin(), from.end());
}

}  // namespace

runtime::runtime(config::app_config cfg, std::shared_ptr<prometheus::Registry> registry)
    : runtime(std::move(cfg), std::shared_ptr<jobs::job_store>{}, std::move(registry)) {}

runtime::runtime(config::app_config cfg, std::shared_ptr<jobs::job_store> store,
                 std::shared_ptr<prometheus::Registry> registry)
    : cfg_(std::move(cfg)),
      current_(std::make_shared<const config::app_config>(cfg_)),
      metrics_(registry ? std::move(registry) : std::make_shared<prometheus::Registry>()) {
  executor_ = std::make_unique<executor>(
      executor_options{cfg_.server.fiber_threads, cfg_.server.max_pending_jobs, 64 * 1024});
  admission_ = std::make_unique<qos::admission>(
      sliced<group_options>(cfg_.groups), sliced<route_policy>(cfg_.routes), *executor_, metrics_);
  gate_ = std::make_unique<qos::gate>(*admission_, cfg_);
  if (cfg_.logging.access_log.enabled) {
    access_log_ = std::make_unique<qos::access_log>(cfg_.logging);
    gate_->set_access_log(access_log_.get());
  }
  store_ = std::move(store);
  setup_jobs();
  monitor_ = std::thread([this] { monitor_main(); });
}

void runtime::setup_jobs() {
  const bool any_accept = std::any_of(cfg_.routes.begin(), cfg_.routes.end(), [](const auto& r) {
    return r.mode == config::route_mode::accept;
  });
  if (!store_) {
    if (cfg_.jobs) {
      store_ = make_job_store(*cfg_.jobs);
    } else if (any_accept) {
      throw std::invalid_argument(
          "a route has mode accept, but the config has no jobs: section (the job store)");
    }
  }
  if (!store_) return;
  int retry_after = 0;
  for (const auto& r : cfg_.routes) {
    if (r.mode != config::route_mode::accept) continue;
    retry_after =
        retry_after == 0 ? r.accept.retry_after_s : std::min(retry_after, r.accept.retry_after_s);
  }
  jobs_ = std::make_unique<job_front>(store_, cfg_.jobs.value_or(config::jobs_config{}), metrics_,
                                      std::max(1, retry_after));
  gate_->attach_jobs(jobs_.get());
}

void runtime::start_jobs() {
  std::lock_guard lk(jobs_mutex_);
  if (jobs_started_ || jobs_stopped_ || !jobs_) return;
  jobs_started_ = true;
  const config::jobs_config jc = cfg_.jobs.value_or(config::jobs_config{});
  std::map<std::string, accepted_route> given;
  for (auto& a : gate_->accepted()) given.emplace(a.name, std::move(a));
  // By group, in config order: the first route of a group sets its consumer's lease and retries.
  std::vector<std::pair<std::string, std::vector<const config::route_config*>>> groups;
  for (const auto& r : cfg_.routes) {
    if (r.mode != config::route_mode::accept) continue;
    if (given.find(r.name) == given.end()) {
      logger()->warn(
          "qos: accept route '{}' was given no job handler (gate().accept): its jobs "
          "are not run by this process",
          r.name);
      continue;
    }
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const auto& g) { return g.first == r.group; });
    if (it == groups.end()) it = groups.insert(groups.end(), {r.group, {}});
    it->second.push_back(&r);
  }
  if (jc.consume) {
    for (const auto& [group, routes] : groups) {
      const config::accept_config& first = routes.front()->accept;
      jobs::consumer_options o;
      o.group = group;
      o.lease = first.lease;
      o.poll_interval = jc.poll_interval;
      o.prefetch = jc.prefetch;
      o.retry = jobs::retry_policy{
          .max_attempts = first.max_attempts, .base = first.backoff_base, .cap = first.backoff_cap};
      for (const auto* r : routes) {
        const auto& a = r->accept;
        if (a.lease != first.lease || a.max_attempts != first.max_attempts ||
            a.backoff_base != first.backoff_base || a.backoff_cap != first.backoff_cap) {
          logger()->warn(
              "qos: accept route '{}': group '{}' has one consumer, which takes lease, "
              "max_attempts and backoff from route '{}'",
              r->name, group, routes.front()->name);
        }
        const auto& g = given.at(r->name);
        o.routes.push_back({.name = r->name, .handler = g.handler, .kind = g.kind});
      }
      if (auto rate = jc.rates.find(group); rate != jc.rates.end()) {
        o.rate =
            jobs::steady_rate{.per_second = rate->second.per_second, .burst = rate->second.burst};
      }
#ifdef QOS_HAVE_PG_STORE
      if (auto* pg = dynamic_cast<jobs::pg_store*>(store_.get())) {
        o.wait_for_work = [pg](const std::string& g, std::chrono::milliseconds timeout) {
          return pg->wait_for_work(g, timeout);
        };
      }
#endif
      consumers_.emplace_back(group, std::make_unique<jobs::consumer>(*store_, *admission_, o));
      logger()->info("qos: job consumer of group '{}' started ({} route(s))", group,
                     o.routes.size());
    }
    // A job enqueued here wakes its group's consumer at once instead of at its next poll.
    std::map<std::string, jobs::consumer*> by_group;
    for (auto& [group, c] : consumers_) by_group.emplace(group, c.get());
    jobs_->on_created([by_group](const std::string& group) {
      if (auto it = by_group.find(group); it != by_group.end()) it->second->poke();
    });
  }
  jobs_thread_ = std::thread([this] { jobs_main(); });
}

void runtime::jobs_main() {
  const config::jobs_config jc = cfg_.jobs.value_or(config::jobs_config{});
  std::vector<std::pair<std::string, std::string>> routes;  // name, group
  for (const auto& r : cfg_.routes) {
    if (r.mode == config::route_mode::accept) routes.emplace_back(r.name, r.group);
  }
  auto next_prune = std::chrono::steady_clock::now() + jc.prune_interval;
  std::unique_lock lk(jobs_mutex_);
  for (;;) {
    lk.unlock();
    for (const auto& [name, group] : routes) {
      try {
        jobs_->set_depth(name, group, store_->depth(name));
      } catch (const std::exception& e) {
        logger()->debug("qos: queue depth of route '{}' not read: {}", name, e.what());
      }
    }
    for (const auto& [group, c] : consumers_) {
      jobs_->set_group({.name = group,
                        .claimed = c->claimed(),
                        .succeeded = c->succeeded(),
                        .failed = c->failed(),
                        .given_back = c->given_back(),
                        .fenced_out = c->fenced_out(),
                        .requeued = c->requeued(),
                        .abandoned = c->abandoned(),
                        .held = c->held(),
                        .run_slots = c->run_slots_held()});
    }
    if (std::chrono::steady_clock::now() >= next_prune) {
      next_prune = std::chrono::steady_clock::now() + jc.prune_interval;
      try {
        const std::size_t pruned = store_->prune(jc.retention);
        if (pruned > 0) logger()->info("qos: pruned {} finished job(s)", pruned);
      } catch (const std::exception& e) {
        logger()->warn("qos: pruning the job store failed: {}", e.what());
      }
    }
    lk.lock();
    const auto wait =
        std::min<std::chrono::milliseconds>(std::chrono::seconds(1), jc.prune_interval);
    if (jobs_cv_.wait_for(lk, wait, [this] { return jobs_stop_; })) return;
  }
}

void runtime::stop_jobs(std::chrono::milliseconds grace) {
  if (!jobs_) return;
  std::unique_lock lk(jobs_mutex_);
  if (jobs_stopped_) return;
  jobs_stopped_ = true;
  lk.unlock();
  const auto until = clock::now() + grace;
  // New enqueues get 503; those already handed to the store threads are answered.
  jobs_->close();
  for (auto& [group, c] : consumers_) {
    const auto left =
        std::max(duration::zero(), std::chrono::duration_cast<duration>(until - clock::now()));
    if (!c->stop(std::chrono::duration_cast<std::chrono::milliseconds>(left))) {
      logger()->warn(
          "qos: job consumer of group '{}': jobs still running after the grace are "
          "left to their leases",
          group);
    }
  }
  lk.lock();
  jobs_stop_ = true;
  lk.unlock();
  jobs_cv_.notify_all();
  if (jobs_thread_.joinable()) jobs_thread_.join();
}

runtime::~runtime() {
  if (!drained_) drain(cfg_.server.shutdown_grace);
  stop_jobs(std::chrono::milliseconds(0));
  consumers_.clear();
  {
    std::lock_guard lk(monitor_mutex_);
    monitor_stop_ = true;
  }
  monitor_cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  // Handlers still running after the grace point into this runtime: wait for them (with no
  // limit now) rather than destroy what they use.
  executor_->stop();
}

reload_result runtime::refused(const std::string& why) {
  metrics_.on_reload(false);
  logger()->error("qos: config reload refused, the running config stays: {}", why);
  return {.applied = false, .error = why};
}

reload_result runtime::reload(config::app_config next) {
  std::lock_guard lk(reload_mutex_);
  const auto current = current_config();
  config::reload_plan plan;
  try {
    plan = config::plan_reload(*current, next, gate_->guarded());
  } catch (const std::exception& e) {
    return refused(e.what());
  }
  try {
    // Groups before routes: a route whose cost grew must not queue behind a limit that has
    // not grown yet.
    for (const auto& g : plan.effective.groups) {
      limit_group* group = admission_->find_group(g.name);
      if (group == nullptr) continue;  // added: no route runs in it before a restart
      const config::group_config* was = current->find_group(g.name);
      if (was == nullptr || !(static_cast<const group_options&>(*was) == g)) {
        group->reconfigure(g);
      }
    }
    gate_->apply(plan.effective);
  } catch (const std::exception& e) {
    // Out of memory after some groups changed: say so rather than claim nothing did.
    return refused(std::string("applied in part: ") + e.what());
  }
  current_.store(std::make_shared<const config::app_config>(std::move(plan.effective)),
                 std::memory_order_release);
  metrics_.on_reload(true);
  if (plan.empty()) {
    logger()->info("qos: config reloaded from {}: nothing changed", next.source);
  } else {
    logger()->info("qos: config reloaded from {}: {} change(s), {} needing a restart", next.source,
                   plan.changes.size(), plan.restart_needed.size());
  }
  for (const auto& line : plan.changes) logger()->info("qos: reload: {}", line);
  for (const auto& line : plan.restart_needed) {
    logger()->warn("qos: reload: {} needs a restart; left unchanged", line);
  }
  return {.applied = true,
          .changes = std::move(plan.changes),
          .restart_needed = std::move(plan.restart_needed)};
}

reload_result runtime::reload_file(const std::string& path) {
  config::app_config next;
  try {
    next = config::load_config(path);
  } catch (const std::exception& e) {
    std::lock_guard lk(reload_mutex_);
    return refused(e.what());
  }
  return reload(std::move(next));
}

rest::Route::Handler runtime::job_status_handler() {
  if (!jobs_) throw std::logic_error("job_status_handler: no job store (no jobs: section)");
  return jobs_->status_handler();
}

rest::Route::Handler runtime::job_result_handler() {
  if (!jobs_) throw std::logic_error("job_result_handler: no job store (no jobs: section)");
  return jobs_->result_handler();
}

rest::Route::Handler runtime::metrics_handler() {
  return [this](const rest::Request req, http::ResponseWriter writer) {
    gate::keep_alive(req, writer);
    writer.send(http::Code::Ok, metrics_.render(*admission_),
                http::Mime::MediaType::fromString("text/plain; version=0.0.4"));
    return rest::Route::Result::Ok;
  };
}

bool runtime::drain(std::chrono::milliseconds grace, config::drain_mode parked,
                    const std::atomic<bool>* hurry) {
  const auto hurried = [hurry] { return hurry && hurry->load(std::memory_order_acquire); };
  const auto pause = std::chrono::milliseconds(5);
  // The fallbacks of requests still parked when the waiting ends take microseconds each; they
  // get this long past the grace (or past a hurry) to be written.
  const auto answer_time = std::chrono::milliseconds(200);
  auto until = clock::now() + grace;
  // Jobs first: the consumers' jobs run through admission, which must still take them.
  stop_jobs(grace);
  bool shed_late = false;
  if (parked == config::drain_mode::serve) {
    // Parked requests keep their places and are served as permits return; nothing new enters.
    admission_->close();
    while (admission_->waiting() != 0 && clock::now() < until && !hurried()) {
      std::this_thread::sleep_for(pause);
    }
    shed_late = admission_->waiting() != 0;
  }
  admission_->shutdown();
  if (shed_late) until += answer_time;
  // Running handlers hold writers that point into Pistache's transport, so they must end
  // before the endpoint goes away.
  bool hurry_seen = false;
  while (executor_->live() != 0 && clock::now() < until) {
    if (!hurry_seen && hurried()) {
      hurry_seen = true;
      until = std::min(until, clock::now() + answer_time);
    }
    std::this_thread::sleep_for(pause);
  }
  drained_ = executor_->live() == 0;
  return drained_;
}

void runtime::monitor_main() {
  std::unique_lock lk(monitor_mutex_);
  while (!monitor_cv_.wait_for(lk, std::chrono::seconds(1), [this] { return monitor_stop_; })) {
    lk.unlock();
    metrics_.tick(*admission_);
    lk.lock();
  }
}

}  // namespace qos
