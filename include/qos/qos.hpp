// Everything a Pistache user needs: the server builder, the gate, config and logging.
#pragma once

#include "qos/admission/admission.hpp"
#include "qos/config/config.hpp"
#include "qos/ops/log.hpp"
#include "qos/ops/metrics_registry.hpp"
#include "qos/http/gate.hpp"
#include "qos/http/server.hpp"
