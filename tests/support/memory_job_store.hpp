// An in-memory job_store for unit tests of the job consumer: the contract's claim bound, leases
// with fencing tokens, attempts counted at the claim, retries and dead jobs, on a clock the test
// injects (leases expire only when the test says). Records every call for assertions. Not a
// product store: no durability, no idempotency keys, no depth cap. Thread-safe (one mutex).
// Failures can be injected: the next calls of heartbeat()/complete()/fail() throw store_error
// (the store could not answer), before doing anything or after committing (a lost
// acknowledgement).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "qos/jobs/job_store.hpp"
#include "qos/jobs/store_error.hpp"

namespace qos::test {

class memory_job_store final : public jobs::job_store {
 public:
  struct job {
    jobs::job_request request;
    jobs::job_state state = jobs::job_state::queued;
    int attempts = 0;
    std::uint64_t fence = 0;
    jobs::wall_time run_at{};
    jobs::wall_time lease_until{};
    std::optional<jobs::job_result> result;
    std::string last_error;
    std::uint64_t seq = 0;
  };
  struct fail_call {
    jobs::job_id id;
    std::string error;
    jobs::retry_policy retry;
    bool accepted = false;
  };

  explicit memory_job_store(jobs::now_fn now = jobs::wall_clock::now) : now_(std::move(now)) {}

  jobs::job_id add(jobs::job_request r) {
    const std::lock_guard lock(m_);
    const jobs::job_id id = "job" + std::to_string(++next_);
    job j;
    j.request = std::move(r);
    j.run_at = now_();
    j.seq = next_;
    jobs_.emplace(id, std::move(j));
    return id;
  }

  jobs::enqueue_result enqueue(const jobs::job_request& r, const jobs::enqueue_options&) override {
    return {.result = jobs::enqueue_result::kind::created, .id = add(r)};
  }

  std::vector<jobs::claimed_job> claim(const std::string& group, std::size_t limit,
                                       std::size_t group_limit,
                                       std::chrono::milliseconds lease) override {
    const std::lock_guard lock(m_);
    ++claim_calls;
    std::size_t leased = 0;
    for (auto& [id, j] : jobs_) {
      if (j.request.group == group && j.state == jobs::job_state::running) ++leased;
    }
    std::vector<std::pair<std::string, job*>> ready;
    const auto now = now_();
    for (auto& [id, j] : jobs_) {
      if (j.request.group == group && j.state == jobs::job_state::queued && j.run_at <= now) {
        ready.emplace_back(id, &j);
      }
    }
    std::sort(ready.begin(), ready.end(), [](const auto& a, const auto& b) {
      if (a.second->request.priority != b.second->request.priority) {
        return a.second->request.priority > b.second->request.priority;
      }
      return a.second->seq < b.second->seq;
    });
    std::vector<jobs::claimed_job> out;
    for (auto& [id, j] : ready) {
      if (out.size() >= limit || leased >= group_limit) break;
      j->state = jobs::job_state::running;
      ++j->attempts;
      j->fence = ++fences_;
      j->lease_until = now + lease;
      ++leased;
      out.push_back({.id = id,
                     .fence = j->fence,
                     .attempt = j->attempts,
                     .lease_until = j->lease_until,
                     .request = j->request});
    }
    if (leased > max_leased.load()) max_leased.store(leased);
    claimed_total += out.size();
    return out;
  }

  bool heartbeat(const jobs::job_id& id, std::uint64_t fence,
                 std::chrono::milliseconds lease) override {
    const std::lock_guard lock(m_);
    ++heartbeat_calls;
    unreachable(heartbeat_errors);
    job* j = leased(id, fence);
    if (j == nullptr) return false;
    j->lease_until = now_() + lease;
    return true;
  }

  bool complete(const jobs::job_id& id, std::uint64_t fence,
                const jobs::job_result& result) override {
    const std::lock_guard lock(m_);
    ++complete_calls;
    unreachable(complete_errors);
    job* j = leased(id, fence);
    if (j == nullptr) {
      ++refused;
      return false;
    }
    j->state = jobs::job_state::succeeded;
    j->result = result;
    ++j->fence;
    unreachable(complete_lost_acks);
    return true;
  }

  bool fail(const jobs::job_id& id, std::uint64_t fence, const std::string& error,
            const jobs::retry_policy& retry) override {
    const std::lock_guard lock(m_);
    unreachable(fail_errors);
    job* j = leased(id, fence);
    fails.push_back({id, error, retry, j != nullptr});
    if (j == nullptr) {
      ++refused;
      return false;
    }
    j->last_error = error;
    ++j->fence;
    if (j->attempts >= retry.max_attempts) {
      j->state = jobs::job_state::dead;
    } else {
      j->state = jobs::job_state::queued;
      j->run_at = now_() + retry.base;  // the tests read the policy, not the backoff curve
    }
    return true;
  }

  std::optional<jobs::job_status> status(const jobs::job_id& id) override {
    const std::lock_guard lock(m_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return std::nullopt;
    return jobs::job_status{.id = id,
                            .state = it->second.state,
                            .attempts = it->second.attempts,
                            .result = it->second.result,
                            .last_error = it->second.last_error};
  }

  std::size_t requeue_expired(const jobs::retry_policy& retry) override {
    const std::lock_guard lock(m_);
    ++requeue_calls;
    std::size_t n = 0;
    for (auto& [id, j] : jobs_) {
      if (j.state == jobs::job_state::running && j.lease_until <= now_()) {
        j.state =
            j.attempts >= retry.max_attempts ? jobs::job_state::dead : jobs::job_state::queued;
        j.run_at = now_();
        ++j.fence;
        ++n;
      }
    }
    return n;
  }

  std::size_t prune(std::chrono::seconds) override { return 0; }
  bool requeue_dead(const jobs::job_id&) override { return false; }
  bool purge(const jobs::job_id&) override { return false; }
  std::size_t depth(const std::string&) override { return 0; }

  // The test takes the lease away, as a re-claim elsewhere would: later calls with the old
  // token are refused.
  void steal(const jobs::job_id& id) {
    const std::lock_guard lock(m_);
    ++jobs_.at(id).fence;
  }
  job get(const jobs::job_id& id) {
    const std::lock_guard lock(m_);
    return jobs_.at(id);
  }
  std::size_t count(jobs::job_state s) {
    const std::lock_guard lock(m_);
    return static_cast<std::size_t>(std::count_if(
        jobs_.begin(), jobs_.end(), [&](const auto& kv) { return kv.second.state == s; }));
  }
  std::vector<fail_call> fail_calls() {
    const std::lock_guard lock(m_);
    return fails;
  }

  // Read under no lock only once the consumer stopped, or as a monotonic hint.
  std::atomic<std::size_t> claim_calls{0}, heartbeat_calls{0}, complete_calls{0}, requeue_calls{0},
      refused{0}, claimed_total{0}, max_leased{0};

  // How many of the next calls throw store_error: heartbeat(), complete() and fail() before
  // touching anything; complete_lost_acks after committing. Negative: every call from now on.
  std::atomic<int> heartbeat_errors{0}, complete_errors{0}, fail_errors{0}, complete_lost_acks{0};

 private:
  job* leased(const jobs::job_id& id, std::uint64_t fence) {
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second.state != jobs::job_state::running ||
        it->second.fence != fence) {
      return nullptr;
    }
    return &it->second;
  }

  static void unreachable(std::atomic<int>& budget) {
    if (budget.load() == 0) return;
    if (budget.load() > 0) --budget;
    throw jobs::store_error("injected: the store is unreachable");
  }

  jobs::now_fn now_;
  std::mutex m_;
  std::map<jobs::job_id, job> jobs_;
  std::vector<fail_call> fails;
  std::uint64_t next_ = 0;
  std::uint64_t fences_ = 0;
};

}  // namespace qos::test
