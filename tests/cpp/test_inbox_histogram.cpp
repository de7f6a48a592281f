// MpscInbox order and LatencyHistogram accuracy.
#include <batched/histogram.h>
#include <batched/mpsc_inbox.h>

#include <thread>
#include <vector>

#include "check.h"

using namespace batched;

namespace {
struct Node {
  Node* next = nullptr;
  int producer = 0;
  int seq = 0;
};
}  // namespace

TEST(inbox_returns_nodes_oldest_first) {
  MpscInbox<Node, &Node::next> inbox;
  CHECK(inbox.empty_approx());
  CHECK(inbox.take_all() == nullptr);
  Node n[3];
  for (int i = 0; i < 3; ++i) {
    n[i].seq = i;
    inbox.push(&n[i]);
  }
  CHECK(!inbox.empty_approx());
  Node* list = inbox.take_all();
  for (int i = 0; i < 3; ++i, list = list->next) CHECK(list == &n[i]);
  CHECK(list == nullptr);
  CHECK(inbox.empty_approx());
}

TEST(inbox_keeps_per_producer_order_under_contention) {
  constexpr int kProducers = 4, kPer = 50000;
  MpscInbox<Node, &Node::next> inbox;
  std::vector<std::vector<Node>> nodes(kProducers, std::vector<Node>(kPer));
  std::vector<std::thread> threads;
  for (int p = 0; p < kProducers; ++p)
    threads.emplace_back([&, p] {
      for (int i = 0; i < kPer; ++i) {
        nodes[p][i].producer = p;
        nodes[p][i].seq = i;
        inbox.push(&nodes[p][i]);
      }
    });
  std::vector<int> next_seq(kProducers, 0);
  int received = 0, out_of_order = 0;
  while (received < kProducers * kPer) {
    for (Node* n = inbox.take_all(); n != nullptr; n = n->next) {
      if (n->seq != next_seq[n->producer]) ++out_of_order;
      next_seq[n->producer] = n->seq + 1;
      ++received;
    }
  }
  for (auto& t : threads) t.join();
  CHECK_EQ(out_of_order, 0);
  CHECK_EQ(received, kProducers * kPer);
}

TEST(histogram_quantiles_within_bucket_precision) {
  LatencyHistogram h;
  CHECK_EQ(h.quantile(0.5), 0.0);
  for (int i = 1; i <= 1000; ++i) h.record(i * 1000);  // 1..1000 us
  CHECK_EQ(h.count(), 1000u);
  auto near = [](double got, double want) { return got > want * 0.93 && got < want * 1.07; };
  CHECK(near(h.quantile(0.5), 500000));
  CHECK(near(h.quantile(0.99), 990000));
  h.record(5, 3);
  CHECK_EQ(h.count(), 1003u);
  CHECK_EQ(h.sum_ns(), 500500.0 * 1000 + 15);
}

TEST(histogram_buckets_cover_every_recorded_value) {
  LatencyHistogram h;
  const std::int64_t values[] = {0, 7, 8, 1000, 123456, 5000000000};
  for (std::int64_t v : values) h.record(v);
  std::uint64_t seen = 0;
  for (std::size_t b = 0; b < LatencyHistogram::kBuckets; ++b) {
    for (std::int64_t v : values) {
      // each value lies in exactly the bucket that counts it
      const bool inside = (b == 0 ? 0.0 : LatencyHistogram::upper_bound(b - 1)) <= static_cast<double>(v) &&
                          static_cast<double>(v) < LatencyHistogram::upper_bound(b);
      if (inside) CHECK(h.count_at(b) >= 1u);
    }
    seen += h.count_at(b);
  }
  CHECK_EQ(seen, 6u);
}

TEST_MAIN()
