#include "qos/http/runtime.hpp"

#include <vector>

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
  monitor_ = std::thread([this] { monitor_main(); });
}

runtime::~runtime() {
  if (!drained_) drain(cfg_.server.shutdown_grace);
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
