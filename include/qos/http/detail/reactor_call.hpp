// Running a piece of code on a Pistache reactor thread from any thread (qos's HTTP layer only).
#pragma once

#include <functional>

namespace Pistache::Tcp {
class Transport;
}

namespace qos::detail {

// Runs `fn` on `transport`'s reactor thread at a later turn of its loop: a 1 ms transport timer
// whose continuation is attached before the timer is handed over, so it never runs on the
// calling thread. Returns false when no timer could be made (`fn` never runs). `fn` is dropped
// unrun when the reactor stops first; it must not own the transport (the transport would then
// own itself through its timer and never be freed).
bool call_on_reactor(Pistache::Tcp::Transport& transport, std::function<void()> fn);

}  // namespace qos::detail
