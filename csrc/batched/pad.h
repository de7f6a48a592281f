// pad_rows: stack variable-length rows into one padded batch buffer.
//
// Each row is a contiguous array of `length` steps along its first axis; a
// step is `step_bytes` bytes (itemsize x the product of the trailing
// dimensions, so rows of shape [L, D] pad along L). The output is
// [n_rows, max_length, trailing...], contiguous: row i is copied to the start
// (right padding) or the end (left padding) of its slot, and the rest of the
// slot is filled with `pad_value`, one element of `itemsize` bytes repeated.
// Any dtype works: the kernel moves bytes and never interprets them.
//
// Cost: one memcpy per row plus the fill, no allocation; a pad value whose
// bytes are all zero is a memset. Not thread-safe on the same output; any
// number of threads may pad different outputs. Does not throw.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace batched {

enum class PaddingSide : std::uint8_t { kRight = 0, kLeft = 1 };

struct RowView {
  const void* data;     // `length` steps, contiguous
  std::int64_t length;  // steps along the first axis, 0 <= length <= max_length
};

// ---- implementation details follow ----
namespace detail {

// Fills `bytes` bytes at `dst` with the `itemsize`-byte pattern `value`.
// `bytes` must be a multiple of itemsize.
inline void fill_pattern(unsigned char* dst, std::size_t bytes, const unsigned char* value,
                         std::size_t itemsize) noexcept {
  if (bytes == 0) return;
  const bool zero = std::all_of(value, value + itemsize, [](unsigned char b) { return b == 0; });
  if (zero) {
    std::memset(dst, 0, bytes);
    return;
  }
  if (itemsize == 1) {
    std::memset(dst, value[0], bytes);
    return;
  }
  // Write one element, then double the filled prefix: O(log n) memcpy calls.
  std::memcpy(dst, value, itemsize);
  std::size_t filled = itemsize;
  while (filled < bytes) {
    const std::size_t chunk = std::min(filled, bytes - filled);
    std::memcpy(dst + filled, dst, chunk);
    filled += chunk;
  }
}

}  // namespace detail

// Writes n_rows x max_length x step_bytes bytes to `out` (see above).
inline void pad_rows(const RowView* rows, std::size_t n_rows, std::size_t step_bytes,
                     std::int64_t max_length, PaddingSide side, const void* pad_value,
                     std::size_t itemsize, void* out) noexcept {
  auto* dst = static_cast<unsigned char*>(out);
  const auto* value = static_cast<const unsigned char*>(pad_value);
  const std::size_t slot = static_cast<std::size_t>(max_length) * step_bytes;
  for (std::size_t i = 0; i < n_rows; ++i, dst += slot) {
    const std::size_t used = static_cast<std::size_t>(rows[i].length) * step_bytes;
    const std::size_t pad = slot - used;
    if (side == PaddingSide::kRight) {
      if (used) std::memcpy(dst, rows[i].data, used);
      detail::fill_pattern(dst + used, pad, value, itemsize);
    } else {
      detail::fill_pattern(dst, pad, value, itemsize);
      if (used) std::memcpy(dst + pad, rows[i].data, used);
    }
  }
}

}  // namespace batched
