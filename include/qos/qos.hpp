// Everything a Pistache user needs: the runtime (for your own endpoint) or the whole server,
// the gate, the connection layer, config, logging, metrics and the version.
#pragma once

#include "qos/admission/admission.hpp"
#include "qos/config/config.hpp"
#include "qos/http/connection.hpp"
#include "qos/http/gate.hpp"
#include "qos/http/runtime.hpp"
#include "qos/http/server.hpp"
#include "qos/ops/access_log.hpp"
#include "qos/ops/log.hpp"
#include "qos/ops/metrics_registry.hpp"
#include "qos/version.hpp"
