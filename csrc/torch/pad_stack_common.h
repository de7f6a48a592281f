// Shared by the CPU and CUDA kernels of batched::pad_stack: argument checks,
// the output shape, the pad value as raw bytes, and row-contiguity of blocks.
// Host code only (the .cu file includes it too), no kernels.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

namespace batched_torch {

// Largest itemsize of any torch dtype (complex128); pad values are at most this.
constexpr std::size_t kMaxItemsize = 16;

// Checks the arguments (messages name the block and both values) and returns
// the output shape [sum n_i, max_length, *trailing].
inline std::vector<int64_t> pad_stack_shape(at::TensorList blocks, int64_t max_length) {
  TORCH_CHECK(!blocks.empty(), "pad_stack: expected at least one block, got an empty list");
  TORCH_CHECK(max_length >= 0, "pad_stack: max_length must be >= 0, got ", max_length);
  const at::Tensor& first = blocks[0];
  int64_t n_rows = 0;
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    const at::Tensor& t = blocks[b];
    TORCH_CHECK(t.dim() >= 2, "pad_stack: block ", b, " has ", t.dim(),
                " dimension(s); expected at least 2 ([rows, length, ...])");
    TORCH_CHECK(t.scalar_type() == first.scalar_type(), "pad_stack: block ", b, " has dtype ",
                t.scalar_type(), " but block 0 has dtype ", first.scalar_type());
    TORCH_CHECK(t.device() == first.device(), "pad_stack: block ", b, " is on device ", t.device(),
                " but block 0 is on device ", first.device());
    TORCH_CHECK(t.sizes().slice(2).equals(first.sizes().slice(2)), "pad_stack: block ", b,
                " has trailing shape ", t.sizes().slice(2), " but block 0 has trailing shape ",
                first.sizes().slice(2));
    TORCH_CHECK(t.size(1) <= max_length, "pad_stack: block ", b, " has length ", t.size(1),
                " > max_length ", max_length);
    n_rows += t.size(0);
  }
  std::vector<int64_t> shape{n_rows, max_length};
  const auto trailing = first.sizes().slice(2);
  shape.insert(shape.end(), trailing.begin(), trailing.end());
  return shape;
}

// True when each row t[i] (dims 1..) is one contiguous array, whatever
// stride(0) is: rows can then be read in place (e.g. x[:, :L] of a
// contiguous x), and only other layouts need a copy.
inline bool rows_contiguous(const at::Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// The block itself, or a contiguous copy when its rows are not contiguous or
// its data is not aligned to its itemsize (both kernels read whole elements).
inline at::Tensor readable_block(const at::Tensor& t) {
  if (t.numel() == 0) return t;
  const auto addr = reinterpret_cast<std::uintptr_t>(t.const_data_ptr());
  if (rows_contiguous(t) && addr % t.element_size() == 0) return t;
  return t.clone(at::MemoryFormat::Contiguous);
}

// `pad_value` cast to `dtype` (as torch.full would), as that dtype's bytes.
inline std::array<unsigned char, kMaxItemsize> pad_bytes(const at::Scalar& pad_value,
                                                         at::ScalarType dtype) {
  const at::Tensor v = at::scalar_tensor(pad_value, at::TensorOptions().dtype(dtype));
  const std::size_t itemsize = v.element_size();
  TORCH_CHECK(itemsize <= kMaxItemsize, "pad_stack: unsupported dtype ", dtype);
  std::array<unsigned char, kMaxItemsize> bytes{};
  std::memcpy(bytes.data(), v.const_data_ptr(), itemsize);
  return bytes;
}

}  // namespace batched_torch
