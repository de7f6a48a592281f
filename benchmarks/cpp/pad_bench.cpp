// pad_rows against a plain memcpy of the same bytes (issue 4's padding step).
//
//   cmake -S . -B build/bench -DBATCHED_BUILD_BENCHMARKS=ON -DBATCHED_BUILD_PYTHON=OFF
//   cmake --build build/bench && build/bench/benchmarks/cpp/pad_bench
//
// 64 rows of random length 16..512, two int64 features (as input_ids and
// attention_mask), right padding; the baseline copies the padded output's
// byte count with one memcpy per feature. Median of 2001 repetitions.
#include <batched/pad.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

using namespace batched;

int main() {
  constexpr int kRows = 64, kFeatures = 2, kReps = 2001;
  std::uint64_t rng = 7;
  auto next = [&rng](std::uint64_t n) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng % n;
  };
  std::vector<std::vector<std::int64_t>> data[kFeatures];
  std::vector<RowView> views[kFeatures];
  std::int64_t max_len = 0;
  std::vector<std::int64_t> lengths(kRows);
  for (auto& l : lengths) {
    l = 16 + static_cast<std::int64_t>(next(497));
    max_len = std::max(max_len, l);
  }
  for (int f = 0; f < kFeatures; ++f) {
    data[f].resize(kRows);
    for (int r = 0; r < kRows; ++r) {
      data[f][r].assign(static_cast<std::size_t>(lengths[r]), f + r);
      views[f].push_back(RowView{data[f][r].data(), lengths[r]});
    }
  }
  const std::size_t out_elems = static_cast<std::size_t>(kRows * max_len);
  std::vector<std::int64_t> out[kFeatures], src(out_elems, 1);
  for (auto& o : out) o.resize(out_elems);
  const std::int64_t pad = 0;

  auto median_us = [&](auto&& body) {
    std::vector<double> t;
    for (int i = 0; i < kReps; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      body();
      t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::nth_element(t.begin(), t.begin() + kReps / 2, t.end());
    return t[kReps / 2];
  };
  const double pad_us = median_us([&] {
    for (int f = 0; f < kFeatures; ++f)
      pad_rows(views[f].data(), kRows, sizeof(std::int64_t), max_len, PaddingSide::kRight, &pad,
               sizeof(std::int64_t), out[f].data());
  });
  const double copy_us = median_us([&] {
    for (int f = 0; f < kFeatures; ++f) std::memcpy(out[f].data(), src.data(), out_elems * sizeof(std::int64_t));
  });
  std::printf("64 rows x 2 int64 features, lengths 16..512 (max %lld): pad_rows %.1f us, memcpy of the "
              "same %zu bytes %.1f us, ratio %.2f\n",
              static_cast<long long>(max_len), pad_us, 2 * out_elems * sizeof(std::int64_t), copy_us, pad_us / copy_us);
  return 0;
}
