// Everything a Pistache user needs: the server builder, the gate, config and logging.
#pragma once

#include "qos/admission.hpp"
#include "qos/config.hpp"
#include "qos/log.hpp"
#include "qos/metrics_registry.hpp"
#include "qos/pistache_gate.hpp"
#include "qos/server.hpp"
