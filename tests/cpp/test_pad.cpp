// pad_rows against a straightforward element-by-element reference.
#include <batched/pad.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "check.h"

using namespace batched;

namespace {

// Reference: element by element, in the output's logical layout.
template <class T>
std::vector<T> reference(const std::vector<std::vector<T>>& rows, std::size_t width, std::int64_t max_len,
                         PaddingSide side, T pad) {
  std::vector<T> out;
  for (const auto& r : rows) {
    const std::int64_t len = static_cast<std::int64_t>(r.size() / width);
    const std::int64_t lead = side == PaddingSide::kLeft ? max_len - len : 0;
    for (std::int64_t step = 0; step < max_len; ++step) {
      for (std::size_t k = 0; k < width; ++k) {
        const std::int64_t src = step - lead;
        out.push_back(src >= 0 && src < len ? r[static_cast<std::size_t>(src) * width + k] : pad);
      }
    }
  }
  return out;
}

template <class T>
bool same_as_reference(const std::vector<std::vector<T>>& rows, std::size_t width, PaddingSide side, T pad) {
  std::int64_t max_len = 0;
  std::vector<RowView> views;
  for (const auto& r : rows) {
    const auto len = static_cast<std::int64_t>(r.size() / width);
    max_len = std::max(max_len, len);
    views.push_back(RowView{r.data(), len});
  }
  std::vector<T> out(rows.size() * static_cast<std::size_t>(max_len) * width, T{});
  pad_rows(views.data(), views.size(), sizeof(T) * width, max_len, side, &pad, sizeof(T), out.data());
  const auto want = reference(rows, width, max_len, side, pad);
  return std::memcmp(out.data(), want.data(), out.size() * sizeof(T)) == 0 && out.size() == want.size();
}

}  // namespace

TEST(int64_right_and_left_with_zero_and_nonzero_pad) {
  const std::vector<std::vector<std::int64_t>> rows = {{1, 2, 3}, {4}, {}, {5, 6, 7, 8, 9}};
  for (auto side : {PaddingSide::kRight, PaddingSide::kLeft}) {
    CHECK(same_as_reference<std::int64_t>(rows, 1, side, 0));
    CHECK(same_as_reference<std::int64_t>(rows, 1, side, -100));
  }
}

TEST(float_rows_with_a_trailing_dimension_keep_their_bytes) {
  // [L, 3] rows, padded along L with a float pad (dtype preserved: no int cast).
  const std::vector<std::vector<float>> rows = {{0.5f, 1.5f, 2.5f, 3.25f, 4.0f, -1.0f}, {7.125f, 8.0f, 9.0f}};
  for (auto side : {PaddingSide::kRight, PaddingSide::kLeft}) {
    CHECK(same_as_reference<float>(rows, 3, side, 0.0f));
    CHECK(same_as_reference<float>(rows, 3, side, -1e30f));
  }
}

TEST(bytes_and_doubles) {
  const std::vector<std::vector<std::uint8_t>> bytes = {{1, 2}, {3, 4, 5, 6, 7}};
  CHECK(same_as_reference<std::uint8_t>(bytes, 1, PaddingSide::kRight, 255));
  const std::vector<std::vector<double>> doubles = {{1.0}, {2.0, 3.0, 4.0}};
  CHECK(same_as_reference<double>(doubles, 1, PaddingSide::kLeft, 3.5));
}

TEST(long_random_rows) {
  batched_test::Rng next{99};
  for (int round = 0; round < 50; ++round) {
    std::vector<std::vector<std::int32_t>> rows(1 + next(64));
    const std::size_t width = 1 + next(4);
    for (auto& r : rows) {
      r.resize((next(600)) * width);
      for (auto& v : r) v = static_cast<std::int32_t>(next(1000000));
    }
    CHECK(same_as_reference<std::int32_t>(rows, width, next(2) ? PaddingSide::kLeft : PaddingSide::kRight,
                                          static_cast<std::int32_t>(next(7))));
  }
}

TEST_MAIN()
