// Errors that a Batcher hands to its submitters.
//
// All derive from std::runtime_error, so a server that only wants "it did not
// run" can catch that; what() names the batcher. They mirror the Python
// package's batched.ShutdownError, batched.QueueFullError and
// batched.DeadlineExceeded.
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

// The call's deadline (SubmitOptions::deadline_us, BatchOptions::deadline_us)
// passed, or could no longer be met, before its items were sent: they left
// the queue unsent. Mirrors batched.DeadlineExceeded.
class DeadlineExceeded : public std::runtime_error {
 public:
  explicit DeadlineExceeded(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace batched
