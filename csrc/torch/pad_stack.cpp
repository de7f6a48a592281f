// The custom op batched::pad_stack: its schema, and its CPU kernel, a thin
// wrapper over batched::pad_rows (csrc/batched/pad.h). The CUDA kernel is in
// pad_stack_cuda.cu; the fake (meta) kernel is registered from Python
// (batched/torch_ops.py), which also builds and loads this library.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "batched/pad.h"
#include "pad_stack_common.h"

namespace {

at::Tensor pad_stack_cpu(at::TensorList blocks, int64_t max_length, const at::Scalar& pad_value,
                         bool pad_left) {
  const std::vector<int64_t> shape = batched_torch::pad_stack_shape(blocks, max_length);
  at::Tensor out = at::empty(shape, blocks[0].options());
  if (out.numel() == 0) return out;

  const std::size_t itemsize = out.element_size();
  const std::size_t step_bytes = itemsize * static_cast<std::size_t>(c10::multiply_integers(shape.begin() + 2, shape.end()));
  const std::size_t slot_bytes = step_bytes * static_cast<std::size_t>(max_length);

  // Row views point into the blocks (or into contiguous copies kept alive here).
  std::vector<at::Tensor> readable;
  readable.reserve(blocks.size());
  std::vector<batched::RowView> rows;
  rows.reserve(static_cast<std::size_t>(shape[0]));
  for (const at::Tensor& block : blocks) {
    readable.push_back(batched_torch::readable_block(block));
    const at::Tensor& b = readable.back();
    const int64_t n = b.size(0);
    const int64_t length = b.size(1);
    if (n == 0) continue;
    const auto* base = static_cast<const unsigned char*>(b.const_data_ptr());
    const int64_t row_stride = b.stride(0) * static_cast<int64_t>(itemsize);
    for (int64_t i = 0; i < n; ++i) rows.push_back({base + i * row_stride, length});
  }

  const auto value = batched_torch::pad_bytes(pad_value, out.scalar_type());
  const auto side = pad_left ? batched::PaddingSide::kLeft : batched::PaddingSide::kRight;
  auto* dst = static_cast<unsigned char*>(out.data_ptr());
  // Split over rows only for big outputs (>= 256 KiB per task): small batches
  // stay on the calling thread, where the wake-up of the pool would dominate.
  const int64_t grain = std::max<int64_t>(1, static_cast<int64_t>((std::size_t{1} << 18) / slot_bytes));
  at::parallel_for(0, static_cast<int64_t>(rows.size()), grain, [&](int64_t begin, int64_t end) {
    batched::pad_rows(rows.data() + begin, static_cast<std::size_t>(end - begin), step_bytes,
                      max_length, side, value.data(), itemsize,
                      dst + static_cast<std::size_t>(begin) * slot_bytes);
  });
  return out;
}

// Serves what has no kernel of its own: an empty list (no tensor to dispatch
// on) and devices this build has no kernel for. Only checks and explains;
// batched.torch_ops.pad_stack falls back to torch code in those cases.
at::Tensor pad_stack_unsupported(at::TensorList blocks, int64_t max_length,
                                 const at::Scalar& /*pad_value*/, bool /*pad_left*/) {
  batched_torch::pad_stack_shape(blocks, max_length);
  TORCH_CHECK(false, "pad_stack: this build of the op has no kernel for device ",
              blocks[0].device(), "; batched.torch_ops.pad_stack falls back to torch code");
}

}  // namespace

TORCH_LIBRARY(batched, m) {
  // The fake kernel lives in this Python module; torch imports it on demand.
  m.set_python_module("batched.torch_ops");
  m.def("pad_stack(Tensor[] blocks, int max_length, Scalar pad_value, bool pad_left=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(batched, CompositeExplicitAutograd, m) {
  m.impl("pad_stack", &pad_stack_unsupported);
}

TORCH_LIBRARY_IMPL(batched, CPU, m) {
  m.impl("pad_stack", &pad_stack_cpu);
}
