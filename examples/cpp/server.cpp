// A server-like program: many client threads, one batched "model".
//
// Each of 16 client threads handles 200 requests the way a request handler in
// a C++ inference server would: it submits the request text to the batcher
// and waits for its embedding. The "model" costs a fixed 300 us per batch plus
// 2 us per item, like a GPU; batching is what makes 3200 requests cheap.
// Empty requests are refused by the model, item by item (batched::failure):
// only their own clients see the error.
//
// Every client checks every answer against the embedding computed locally;
// the program prints a summary and exits non-zero on any mismatch.
#include <batched/batcher.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Embedding {
  std::uint64_t hash = 0;
  std::size_t length = 0;
};

// The model's arithmetic, also used by the clients to check their answers.
Embedding embed_one(const std::string& text) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return Embedding{h, text.size()};
}

void busy_wait(std::chrono::microseconds d) {
  const auto until = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < until) {
  }
}

std::string request_text(int client, int i) {
  if (i % 50 == 49) return "";  // a bad request: the model refuses it
  return "client " + std::to_string(client) + " request " + std::to_string(i);
}

}  // namespace

int main() {
  constexpr int kClients = 16;
  constexpr int kRequests = 200;

  batched::BatchOptions options;
  options.max_batch_size = 64;  // Python: batch_size=64
  options.timeout_us = 500;     // Python: timeout_ms=0.5
  options.num_workers = 1;

  std::atomic<long> batches_run{0};
  batched::Batcher<std::string, Embedding> model(
      options,
      [&](std::vector<std::string>& texts) {
        batches_run.fetch_add(1);
        busy_wait(std::chrono::microseconds(300 + 2 * static_cast<long>(texts.size())));
        std::vector<batched::Result<Embedding>> out;
        out.reserve(texts.size());
        for (const std::string& t : texts) {
          if (t.empty()) {
            out.push_back(batched::failure(std::invalid_argument("empty request")));
          } else {
            out.push_back(embed_one(t));
          }
        }
        return out;
      },
      "toy-embedder");

  std::atomic<long> ok{0}, refused{0}, mismatches{0};
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < kRequests; ++i) {
        const std::string text = request_text(c, i);
        std::future<Embedding> answer = model.submit(text);
        try {
          const Embedding e = answer.get();
          const Embedding want = embed_one(text);
          if (text.empty() || e.hash != want.hash || e.length != want.length) {
            mismatches.fetch_add(1);
          } else {
            ok.fetch_add(1);
          }
        } catch (const std::invalid_argument& err) {
          if (text.empty() && std::string(err.what()) == "empty request") {
            refused.fetch_add(1);
          } else {
            mismatches.fetch_add(1);
          }
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  const double wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  model.shutdown();
  bool refused_after_shutdown = false;
  try {
    model.submit(std::string("late"));
  } catch (const batched::ShutdownError&) {
    refused_after_shutdown = true;
  }

  const batched::BatcherStats st = model.stats();
  const long total = static_cast<long>(kClients) * kRequests;
  std::printf("clients %d\n", kClients);
  std::printf("requests %ld\n", total);
  std::printf("answered %ld\n", ok.load());
  std::printf("refused %ld\n", refused.load());
  std::printf("mismatches %ld\n", mismatches.load());
  std::printf("processed %llu\n", static_cast<unsigned long long>(st.total_processed));
  std::printf("shutdown refuses new work: %s\n", refused_after_shutdown ? "yes" : "no");
  std::printf("batches %llu, avg batch size %.1f, p50 queue wait %.3f ms, wall %.0f ms\n",
              static_cast<unsigned long long>(st.total_batches), st.avg_batch_size, st.queue_wait_ms.p50, wall_ms);
  const bool good = mismatches.load() == 0 && ok.load() + refused.load() == total &&
                    refused.load() == kClients * (kRequests / 50) &&
                    static_cast<long>(st.total_processed) == total && refused_after_shutdown &&
                    st.avg_batch_size > 1.0;
  std::printf("%s\n", good ? "OK" : "FAILED");
  return good ? 0 : 1;
}
