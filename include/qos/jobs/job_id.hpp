// Job ids: 128 bits from the kernel's CSPRNG (getrandom(2)), 32 lowercase hex digits, so a
// client cannot guess another client's job. Shared by every store. Thread-safe.
#pragma once

#include <string_view>

#include "qos/jobs/job_store.hpp"

namespace qos::jobs {

// Throws std::system_error only if the kernel refuses random bytes (never after boot).
job_id new_job_id();

// The shape new_job_id() makes: lets a status route answer 404 without asking the store.
bool is_job_id(std::string_view text) noexcept;

}  // namespace qos::jobs
