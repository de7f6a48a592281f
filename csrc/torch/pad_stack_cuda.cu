// CUDA kernel of the custom op batched::pad_stack (schema in pad_stack.cpp).
//
// One launch per call, whatever the number of blocks and rows: the host builds
// a table of rows (source pointer, length) in pinned memory, copies it to the
// device on the current stream, and a grid over (row, chunk of its slot)
// writes every output element, copying from the row or writing the pad value.
// The kernel moves units of 1..16 bytes and never interprets them, so any
// dtype works; the unit is the widest that every address and the step size
// are aligned to (16-byte loads/stores for most real inputs).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "pad_stack_common.h"

namespace {

struct RowEntry {
  const void* src;  // first unit of the row (unused when units == 0)
  int64_t units;    // row length in units
};

// The type moved per thread and element: its size is the unit.
template <int kBytes> struct UnitType;
template <> struct UnitType<1> { using type = uint8_t; };
template <> struct UnitType<2> { using type = uint16_t; };
template <> struct UnitType<4> { using type = uint32_t; };
template <> struct UnitType<8> { using type = uint2; };
template <> struct UnitType<16> { using type = uint4; };

constexpr int kThreads = 256;
constexpr int kUnitsPerThread = 4;  // a block covers kThreads * kUnitsPerThread units of a slot
constexpr int64_t kChunkUnits = int64_t{kThreads} * kUnitsPerThread;

template <typename T>
__global__ void pad_stack_kernel(const RowEntry* __restrict__ rows, int64_t n_rows,
                                 int64_t slot_units, int64_t chunks_per_row, bool pad_left,
                                 T pad, T* __restrict__ out) {
  const int64_t total = n_rows * chunks_per_row;
  // Grid-stride over (row, chunk) pairs: the grid is capped, the work is not.
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t row = blk / chunks_per_row;
    const int64_t begin = (blk - row * chunks_per_row) * kChunkUnits;
    const int64_t end = begin + kChunkUnits < slot_units ? begin + kChunkUnits : slot_units;
    const RowEntry entry = rows[row];
    const T* __restrict__ src = static_cast<const T*>(entry.src);
    const int64_t offset = pad_left ? slot_units - entry.units : 0;  // where the row starts
    T* __restrict__ dst = out + row * slot_units;
    for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
      const int64_t k = j - offset;
      dst[j] = (k >= 0 && k < entry.units) ? src[k] : pad;
    }
  }
}

template <int kBytes>
void launch(const RowEntry* rows, int64_t n_rows, int64_t slot_bytes, bool pad_left,
            const unsigned char* pad_unit, void* out, cudaStream_t stream) {
  using T = typename UnitType<kBytes>::type;
  static_assert(sizeof(T) == kBytes, "unit type size");
  T pad;
  std::memcpy(&pad, pad_unit, kBytes);
  const int64_t slot_units = slot_bytes / kBytes;
  const int64_t chunks_per_row = (slot_units + kChunkUnits - 1) / kChunkUnits;
  const int64_t grid = std::min<int64_t>(n_rows * chunks_per_row, int64_t{1} << 20);
  pad_stack_kernel<T><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
      rows, n_rows, slot_units, chunks_per_row, pad_left, pad, static_cast<T*>(out));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor pad_stack_cuda(at::TensorList blocks, int64_t max_length, const at::Scalar& pad_value,
                          bool pad_left) {
  const std::vector<int64_t> shape = batched_torch::pad_stack_shape(blocks, max_length);
  TORCH_CHECK(blocks[0].is_cuda(), "pad_stack: CUDA kernel called with blocks on ",
              blocks[0].device());
  const c10::cuda::CUDAGuard guard(blocks[0].device());
  at::Tensor out = at::empty(shape, blocks[0].options());
  if (out.numel() == 0) return out;

  const int64_t n_rows = shape[0];
  const std::size_t itemsize = out.element_size();
  const auto step_bytes = static_cast<int64_t>(
      itemsize * static_cast<std::size_t>(c10::multiply_integers(shape.begin() + 2, shape.end())));

  // The row table, in pinned memory so that the copy below is truly async;
  // the caching host allocator keeps this buffer from reuse until the copy,
  // recorded on the current stream by copy_, is done.
  const auto table_options = at::TensorOptions().dtype(at::kLong);
  at::Tensor host_table = at::empty({n_rows * 2}, table_options.pinned_memory(true));
  auto* table = reinterpret_cast<RowEntry*>(host_table.data_ptr<int64_t>());
  static_assert(sizeof(RowEntry) == 2 * sizeof(int64_t), "RowEntry is two int64 words");

  // The unit: the widest power of two (<= 16) dividing the step size, the
  // output address and every row address, so every access is aligned.
  auto align_bits = static_cast<std::uintptr_t>(step_bytes) |
                    reinterpret_cast<std::uintptr_t>(out.data_ptr()) | std::uintptr_t{16};
  std::vector<at::Tensor> readable;  // contiguous copies live until the launch is queued
  readable.reserve(blocks.size());
  int64_t r = 0;
  for (const at::Tensor& block : blocks) {
    readable.push_back(batched_torch::readable_block(block));
    const at::Tensor& b = readable.back();
    const int64_t n = b.size(0);
    const int64_t length_bytes = b.size(1) * step_bytes;
    if (n == 0) continue;
    const auto* base = static_cast<const unsigned char*>(b.const_data_ptr());
    const int64_t row_stride = b.stride(0) * static_cast<int64_t>(itemsize);
    if (length_bytes > 0) {
      align_bits |= reinterpret_cast<std::uintptr_t>(base);
      if (n > 1) align_bits |= static_cast<std::uintptr_t>(row_stride);
    }
    for (int64_t i = 0; i < n; ++i, ++r) table[r] = RowEntry{base + i * row_stride, length_bytes};
  }
  // itemsize is a power of two dividing every address (readable_block), so
  // the unit is at least one element and the pad unit is the value repeated.
  const int unit = static_cast<int>(align_bits & (~align_bits + 1));
  for (int64_t i = 0; i < n_rows; ++i) table[i].units /= unit;

  const auto value = batched_torch::pad_bytes(pad_value, out.scalar_type());
  unsigned char pad_unit[batched_torch::kMaxItemsize];
  for (int k = 0; k < unit; k += static_cast<int>(itemsize)) std::memcpy(pad_unit + k, value.data(), itemsize);

  at::Tensor device_table = at::empty({n_rows * 2}, table_options.device(out.device()));
  device_table.copy_(host_table, /*non_blocking=*/true);
  const auto* rows = reinterpret_cast<const RowEntry*>(device_table.const_data_ptr<int64_t>());

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t slot_bytes = step_bytes * max_length;
  void* dst = out.data_ptr();
  switch (unit) {
    case 1: launch<1>(rows, n_rows, slot_bytes, pad_left, pad_unit, dst, stream); break;
    case 2: launch<2>(rows, n_rows, slot_bytes, pad_left, pad_unit, dst, stream); break;
    case 4: launch<4>(rows, n_rows, slot_bytes, pad_left, pad_unit, dst, stream); break;
    case 8: launch<8>(rows, n_rows, slot_bytes, pad_left, pad_unit, dst, stream); break;
    default: launch<16>(rows, n_rows, slot_bytes, pad_left, pad_unit, dst, stream); break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(batched, CUDA, m) {
  m.impl("pad_stack", &pad_stack_cuda);
}
