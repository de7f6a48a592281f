// Options and entries for the tests of the Scheduler (test_scheduler.cpp, test_tuning.cpp).
#pragma once

#include <batched/entry.h>
#include <batched/options.h>

#include <cstddef>
#include <cstdint>

namespace batched_test {

inline batched::BatchOptions opts(std::size_t batch, std::int64_t timeout_us) {
  batched::BatchOptions o;
  o.max_batch_size = batch;
  o.timeout_us = timeout_us;
  return o;
}

inline batched::Entry make(std::uint32_t count, void* owner = nullptr) {
  batched::Entry e;
  e.count = count;
  e.owner = owner;
  return e;
}

}  // namespace batched_test
