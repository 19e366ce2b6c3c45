#include "qos/core/metrics.hpp"

namespace qos {
namespace {

class null_route final : public route_metrics {
 public:
  void on_arrival(priority) noexcept override {}
  void on_done(const request_report&) noexcept override {}
  void on_shadow(outcome) noexcept override {}
};

class null_sink final : public metrics_sink {
 public:
  route_metrics& route(std::string_view, std::string_view) override { return route_; }

 private:
  null_route route_;
};

}  // namespace

metrics_sink& null_metrics() noexcept {
  static null_sink sink;
  return sink;
}

}  // namespace qos
