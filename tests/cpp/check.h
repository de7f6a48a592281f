// A minimal test harness: CHECK/CHECK_EQ record failures; main() runs every
// test registered with TEST() and exits non-zero if any check failed.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace batched_test {

struct Registry {
  std::vector<std::pair<std::string, std::function<void()>>> tests;
  int failures = 0;
  static Registry& get() {
    static Registry r;
    return r;
  }
};

// Deterministic pseudo-random numbers for tests (xorshift64): next(n) is in [0, n).
struct Rng {
  std::uint64_t state;
  std::uint64_t operator()(std::uint64_t n) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state % n;
  }
};

struct Register {
  Register(const char* name, std::function<void()> fn) { Registry::get().tests.emplace_back(name, std::move(fn)); }
};

}  // namespace batched_test

#define TEST(name)                                                          \
  static void name();                                                       \
  static ::batched_test::Register register_##name(#name, name);             \
  static void name()

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++::batched_test::Registry::get().failures;                                    \
    }                                                                                \
  } while (0)

#define CHECK_EQ(a, b)                                                                        \
  do {                                                                                        \
    const auto va_ = (a);                                                                     \
    const auto vb_ = (b);                                                                     \
    if (!(va_ == vb_)) {                                                                      \
      std::fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld vs %lld)\n", __FILE__,    \
                   __LINE__, #a, #b, static_cast<long long>(va_), static_cast<long long>(vb_)); \
      ++::batched_test::Registry::get().failures;                                             \
    }                                                                                         \
  } while (0)

#define TEST_MAIN()                                                  \
  int main() {                                                       \
    auto& r = ::batched_test::Registry::get();                       \
    for (auto& [name, fn] : r.tests) {                               \
      const int before = r.failures;                                 \
      fn();                                                          \
      std::printf("%s %s\n", r.failures == before ? "ok  " : "FAIL", name.c_str()); \
    }                                                                \
    return r.failures == 0 ? 0 : 1;                                  \
  }
