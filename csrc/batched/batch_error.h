// Errors that a Batcher hands to its submitters.
//
// Both derive from std::runtime_error, so a server that only wants "it did not
// run" can catch that; what() names the batcher. They mirror the Python
// package's batched.ShutdownError and batched.QueueFullError.
#pragma once

#include <stdexcept>
#include <string>

namespace batched {

// The batcher was shut down: a submit after shutdown() is refused with it, and
// every item still queued at shutdown() completes with it.
class ShutdownError : public std::runtime_error {
 public:
  explicit ShutdownError(const std::string& what) : std::runtime_error(what) {}
};

// try_submit found max_queue_size items queued, or a call was larger than
// max_queue_size and could never fit. Nothing was queued.
class QueueFullError : public std::runtime_error {
 public:
  explicit QueueFullError(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace batched
