#include "qos/http/job_front.hpp"

#include <ctime>
#include <exception>
#include <stdexcept>
#include <utility>

#include <pistache/mime.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include "qos/http/gate.hpp"
#include "qos/jobs/job_id.hpp"
#include "qos/jobs/sqlite_store.hpp"
#include "qos/ops/detail/log_format.hpp"
#include "qos/ops/log.hpp"
#ifdef QOS_HAVE_PG_STORE
#include "qos/jobs/pg_store.hpp"
#endif

namespace qos {

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;

bool have_pg_store() noexcept {
#ifdef QOS_HAVE_PG_STORE
  return true;
#else
  return false;
#endif
}

std::unique_ptr<jobs::job_store> make_job_store(const config::jobs_config& cfg) {
  if (cfg.store == config::job_store_kind::postgres) {
#ifdef QOS_HAVE_PG_STORE
    if (cfg.conninfo.empty()) {
      throw std::invalid_argument("jobs.store: postgres needs jobs.conninfo (or conninfo_env)");
    }
    return std::make_unique<jobs::pg_store>(
        jobs::pg_store_options{.conninfo = cfg.conninfo, .pool_size = cfg.pool});
#else
    throw std::invalid_argument(
        "jobs.store: postgres, but this qos was built without libpq (libpq-dev): only the "
        "sqlite store is available");
#endif
  }
  jobs::sqlite_options o;
  o.path = cfg.sqlite_path;
  o.synchronous = cfg.synchronous == config::sqlite_sync::full
                      ? jobs::sqlite_options::sync_mode::full
                      : jobs::sqlite_options::sync_mode::normal;
  o.group_commit = cfg.group_commit;
  return std::make_unique<jobs::sqlite_store>(std::move(o));
}

store_threads::store_threads(std::size_t threads, std::size_t max_pending)
    : max_pending_(max_pending) {
  if (threads == 0) throw std::invalid_argument("jobs.store_threads must be at least 1");
  threads_.reserve(threads);
  try {
    for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { main(); });
  } catch (...) {
    close();
    throw;
  }
}

store_threads::~store_threads() {
  close();
}

bool store_threads::post(std::function<void()> task) {
  {
    std::lock_guard lk(mutex_);
    if (closed_ || queue_.size() >= max_pending_) return false;
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return true;
}

void store_threads::close() {
  {
    std::lock_guard lk(mutex_);
    closed_ = true;
  }
  cv_.notify_all();
  std::call_once(joined_, [this] {
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  });
}

std::size_t store_threads::pending() const {
  std::lock_guard lk(mutex_);
  return queue_.size();
}

void store_threads::main() {
  std::unique_lock lk(mutex_);
  for (;;) {
    cv_.wait(lk, [this] { return closed_ || !queue_.empty(); });
    // Closed: the queue is still worked off, so that every request in it gets its answer.
    if (queue_.empty()) return;
    auto task = std::move(queue_.front());
    queue_.pop_front();
    lk.unlock();
    try {
      task();
    } catch (...) {
      // Tasks answer their own failures; nothing may end this thread.
    }
    task = nullptr;
    lk.lock();
  }
}

namespace {

void send(http::ResponseWriter& w, response r) noexcept {
  try {
    for (auto& [name, value] : r.headers) add_header(w, std::move(name), std::move(value));
    w.send(static_cast<http::Code>(r.status), r.body,
           http::Mime::MediaType::fromString(r.content_type));
  } catch (const std::exception& e) {
    // The client went away: the answer goes nowhere.
    logger()->debug("qos: job response not sent: {}", e.what());
  } catch (...) {
  }
}

response unavailable(int retry_after = 1) {
  return {.status = 503,
          .body = "{\"error\":\"the job store is unavailable\"}",
          .headers = {{"Retry-After", std::to_string(retry_after)}}};
}

response not_found() {
  return {.status = 404, .body = "{\"error\":\"no such job\"}"};
}

void append(spdlog::memory_buf_t& out, std::string_view text) {
  out.append(text.data(), text.data() + text.size());
}

void append_string(spdlog::memory_buf_t& out, std::string_view text) {
  append(out, "\"");
  detail::append_json_string(out, text);
  append(out, "\"");
}

// RFC 3339 in UTC with milliseconds: "2026-11-26T15:23:45.123Z".
std::string rfc3339(jobs::wall_time t) {
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char frac[8];
  std::snprintf(frac, sizeof frac, ".%03dZ", static_cast<int>(ms % 1000));
  return std::string(buf, n) + frac;
}

const char* state_word(jobs::job_state s) {
  switch (s) {
    case jobs::job_state::queued:
      return "queued";
    case jobs::job_state::running:
      return "running";
    case jobs::job_state::succeeded:
      return "succeeded";
    case jobs::job_state::dead:
      return "dead";
  }
  return "unknown";
}

// The :id of a job route, or empty when it is not the shape of a job id (no store call then).
std::string id_of(const rest::Request& req) {
  if (!req.hasParam(":id")) return {};
  std::string id = req.param(":id").as<std::string>();
  return jobs::is_job_id(id) ? id : std::string();
}

}  // namespace

job_front::job_front(std::shared_ptr<jobs::job_store> store, const config::jobs_config& cfg,
                     metrics_registry& metrics, int status_retry_after)
    : store_(std::move(store)),
      status_retry_after_(status_retry_after),
      threads_(cfg.store_threads, cfg.max_pending),
      enqueued_(prometheus::BuildCounter()
                    .Name("qos_jobs_enqueued_total")
                    .Help("Requests of accept routes, by what the store answered: created, "
                          "duplicate (same idempotency key and payload), conflict (same key, "
                          "other payload), full (the route's max_depth), unavailable (the store "
                          "failed or was closed; nothing stored).")
                    .Register(*metrics.registry())),
      finished_(prometheus::BuildCounter()
                    .Name("qos_jobs_finished_total")
                    .Help("Jobs this process's consumers ended, by result: succeeded, failed "
                          "(threw or overran max_exec), given_back (did not run), fenced_out "
                          "(lease lost), requeued (expired leases returned), abandoned (still "
                          "running at stop).")
                    .Register(*metrics.registry())),
      held_(prometheus::BuildGauge()
                .Name("qos_jobs_held")
                .Help("Jobs this process's consumer of the group holds now (waiting for a "
                      "permit or running).")
                .Register(*metrics.registry())),
      run_slots_(prometheus::BuildGauge()
                     .Name("qos_jobs_run_slots")
                     .Help("Run slots this process's consumer of the group holds now: with the "
                           "PostgreSQL store the group's N across processes is N slots, and a "
                           "job runs only on one (0 with SQLite).")
                     .Register(*metrics.registry())),
      depth_(prometheus::BuildGauge()
                 .Name("qos_jobs_depth")
                 .Help("Queued and running jobs of an accept route in the store (all "
                       "processes), sampled about once a second.")
                 .Register(*metrics.registry())) {
  if (!store_) throw std::invalid_argument("job_front: no store");
}

job_front::~job_front() {
  close();
}

void job_front::close() {
  close_accepting();
  threads_.close();
}

bool job_front::serve(http::ResponseWriter writer, std::function<response(jobs::job_store&)> work,
                      const std::function<void()>& refused) {
  // std::function wants a copyable callable; the writer moves once, into this.
  auto w = std::make_shared<http::ResponseWriter>(std::move(writer));
  auto store = store_;
  const bool posted = threads_.post([w, store, work = std::move(work)] {
    response r;
    try {
      r = work(*store);
    } catch (const std::exception& e) {
      logger()->warn("qos: job store call failed: {}", e.what());
      r = unavailable();
    } catch (...) {
      r = unavailable();
    }
    send(*w, std::move(r));
  });
  if (!posted) {
    if (refused) refused();
    send(*w, unavailable());
  }
  return posted;
}

job_front::route_counters& job_front::counters(const std::string& route) {
  std::lock_guard lk(mutex_);
  auto it = counters_.find(route);
  if (it != counters_.end()) return *it->second;
  auto c = std::make_unique<route_counters>();
  static constexpr const char* words[] = {"created", "duplicate", "conflict", "full",
                                          "unavailable"};
  for (std::size_t i = 0; i < c->by_result.size(); ++i) {
    c->by_result[i] = &enqueued_.Add({{"route", route}, {"result", words[i]}});
  }
  return *counters_.emplace(route, std::move(c)).first->second;
}

void job_front::on_created(std::function<void(const std::string& group)> hook) {
  on_created_.store(
      std::make_shared<const std::function<void(const std::string&)>>(std::move(hook)),
      std::memory_order_release);
}

void job_front::created(const std::string& group) const noexcept {
  const auto hook = on_created_.load(std::memory_order_acquire);
  if (!hook || !*hook) return;
  try {
    (*hook)(group);
  } catch (...) {
  }
}

void job_front::log_unavailable(const std::string& route, const std::string& why) {
  std::lock_guard lk(log_mutex_);
  const auto now = std::chrono::steady_clock::now();
  if (now - last_log_ < std::chrono::seconds(1)) {
    ++unlogged_;
    return;
  }
  last_log_ = now;
  if (unlogged_ > 0) {
    logger()->error(
        "qos: route '{}': job store unavailable, answered 503: {} ({} more since "
        "the last line)",
        route, why, unlogged_);
  } else {
    logger()->error("qos: route '{}': job store unavailable, answered 503: {}", route, why);
  }
  unlogged_ = 0;
}

std::string job_front::status_json(const jobs::job_status& s) {
  spdlog::memory_buf_t out;
  append(out, "{\"id\":");
  append_string(out, s.id);
  append(out, ",\"state\":");
  append_string(out, state_word(s.state));
  append(out, ",\"attempts\":");
  append(out, std::to_string(s.attempts));
  if (s.state == jobs::job_state::queued && s.run_at) {
    append(out, ",\"run_at\":");
    append_string(out, rfc3339(*s.run_at));
  }
  append(out, ",\"created\":");
  append_string(out, rfc3339(s.created));
  if (s.state == jobs::job_state::succeeded || s.state == jobs::job_state::dead) {
    append(out, ",\"finished\":");
    append_string(out, rfc3339(s.finished));
  }
  if (!s.last_error.empty()) {
    append(out, ",\"last_error\":");
    append_string(out, s.last_error);
  }
  if (s.state == jobs::job_state::succeeded) {
    append(out, ",\"result_url\":");
    append_string(out, "/jobs/" + s.id + "/result");
  }
  append(out, "}");
  return std::string(out.data(), out.size());
}

// The preamble of the handlers of one job: keep-alive, the id from the path (404 when it is
// not one), then `work` on a store thread.
rest::Route::Handler job_front::by_id(
    std::function<response(jobs::job_store&, const std::string& id)> work) {
  return [this, work = std::move(work)](const rest::Request& req, http::ResponseWriter w) {
    gate::keep_alive(req, w);
    std::string id = id_of(req);
    if (id.empty()) {
      send(w, not_found());
      return rest::Route::Result::Ok;
    }
    serve(std::move(w),
          [id = std::move(id), work](jobs::job_store& store) { return work(store, id); });
    return rest::Route::Result::Ok;
  };
}

rest::Route::Handler job_front::status_handler() {
  const int retry_after = status_retry_after_;
  return by_id([retry_after](jobs::job_store& store, const std::string& id) {
    const auto s = store.status(id);
    if (!s) return not_found();
    response r{.status = 200, .body = status_json(*s)};
    switch (s->state) {
      case jobs::job_state::queued:
      case jobs::job_state::running:
        r.headers.emplace_back("Retry-After", std::to_string(retry_after));
        break;
      case jobs::job_state::succeeded:
        r.status = 303;
        r.headers.emplace_back("Location", "/jobs/" + id + "/result");
        break;
      case jobs::job_state::dead:
        break;
    }
    return r;
  });
}

rest::Route::Handler job_front::result_handler() {
  return by_id([](jobs::job_store& store, const std::string& id) {
    const auto s = store.status(id);
    if (!s || s->state != jobs::job_state::succeeded || !s->result) return not_found();
    response r{.status = s->result->status, .body = s->result->body, .content_type = {}};
    for (const auto& [name, value] : s->result->headers) {
      // Content-Type goes through the writer's typed header; framing is the writer's own.
      if (Pistache::Http::Header::LowercaseEqualStatic(name, "content-type")) {
        r.content_type = value;
      } else if (!Pistache::Http::Header::LowercaseEqualStatic(name, "content-length") &&
                 !Pistache::Http::Header::LowercaseEqualStatic(name, "transfer-encoding") &&
                 !Pistache::Http::Header::LowercaseEqualStatic(name, "connection")) {
        r.headers.emplace_back(name, value);
      }
    }
    if (r.content_type.empty()) r.content_type = "application/octet-stream";
    return r;
  });
}

rest::Route::Handler job_front::requeue_handler() {
  return by_id([](jobs::job_store& store, const std::string& id) {
    if (store.requeue_dead(id)) {
      return response{.status = 200, .body = "{\"id\":\"" + id + "\",\"state\":\"queued\"}"};
    }
    const auto s = store.status(id);
    if (!s) return not_found();
    return response{
        .status = 409,
        .body = "{\"error\":\"the job is " + std::string(state_word(s->state)) + ", not dead\"}"};
  });
}

rest::Route::Handler job_front::purge_handler() {
  return by_id([](jobs::job_store& store, const std::string& id) {
    // Only a dead job may be purged: the check and the purge are two calls, and a dead job
    // changes state only through the operator (requeue), so nothing races them but another
    // operator.
    const auto s = store.status(id);
    if (!s) return not_found();
    if (s->state != jobs::job_state::dead) {
      return response{
          .status = 409,
          .body = "{\"error\":\"the job is " + std::string(state_word(s->state)) + ", not dead\"}"};
    }
    if (!store.purge(id)) return not_found();
    return response{.status = 200, .body = "{\"id\":\"" + id + "\",\"purged\":true}"};
  });
}

void job_front::set_depth(const std::string& route, const std::string& group, std::size_t depth) {
  depth_.Add({{"route", route}}).Set(static_cast<double>(depth));
  std::lock_guard lk(mutex_);
  depths_[route] = {.name = route, .group = group, .depth = depth};
}

void job_front::set_group(const jobs_snapshot::group& now) {
  std::lock_guard lk(mutex_);
  auto& was = groups_[now.name];
  const auto bump = [&](const char* result, std::uint64_t before, std::uint64_t after) {
    if (after > before) {
      finished_.Add({{"group", now.name}, {"result", result}})
          .Increment(static_cast<double>(after - before));
    } else {
      finished_.Add({{"group", now.name}, {"result", result}});  // present at 0
    }
  };
  bump("succeeded", was.succeeded, now.succeeded);
  bump("failed", was.failed, now.failed);
  bump("given_back", was.given_back, now.given_back);
  bump("fenced_out", was.fenced_out, now.fenced_out);
  bump("requeued", was.requeued, now.requeued);
  bump("abandoned", was.abandoned, now.abandoned);
  held_.Add({{"group", now.name}}).Set(static_cast<double>(now.held));
  run_slots_.Add({{"group", now.name}}).Set(static_cast<double>(now.run_slots));
  was = now;
}

jobs_snapshot job_front::snapshot() const {
  std::lock_guard lk(mutex_);
  jobs_snapshot s;
  for (const auto& [name, r] : depths_) s.routes.push_back(r);
  for (const auto& [name, g] : groups_) s.groups.push_back(g);
  return s;
}

}  // namespace qos
