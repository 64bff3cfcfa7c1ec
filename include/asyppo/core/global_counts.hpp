// asyppo/core/global_counts.hpp: loss normalisers across data-parallel ranks in one call.
//
// The losses (core/aggregation.hpp) take an explicit loss_normalizer whose counts must be those of
// the whole optimiser step: every micro-batch on every rank. Sum the local loss_counts of this
// rank's micro-batches with +=, then
//     const loss_counts global = allreduce(local, comm);          // policy / actor losses
//     const auto per_critic = allreduce(local_per_critic, comm);   // value_loss (one per critic)
// and pass global.normalizer() (per_critic[k].normalizer() as value_loss_options::normalizers[k])
// to every loss call of the step, on every rank. Then the SUM over ranks and micro-batches of the
// returned losses and gradients is the full-batch loss and gradient.
//
// What it computes: tokens, sequences and rows summed over ranks, length the maximum over ranks
// (as loss_counts::operator+= does), all exact (integers). Collective over comm: every rank calls
// it, and for the vector form with the same number of entries (checked: a mismatch throws
// asyppo::error on every rank alike, so no rank is left waiting). Cost: one allgather of 4 int64
// per entry per rank (plus, for the vector form, one of the entry count). Results are identical on
// every rank; with single_process it returns its argument.
#pragma once

#include <cstdint>
#include <vector>

#include "asyppo/comm/communicator.hpp"
#include "asyppo/core/aggregation.hpp"

namespace asyppo {

namespace detail {

/// Sums (max for length) n loss_counts over ranks with one allgather.
template <class Comm>
void allreduce_loss_counts(loss_counts* c, index_t n, const Comm& comm) {
  const int R = comm.size();
  if (R <= 1 || n == 0) return;
  std::vector<std::int64_t> mine(static_cast<std::size_t>(4 * n)), all(static_cast<std::size_t>(4 * n * R));
  for (index_t i = 0; i < n; ++i) {
    mine[static_cast<std::size_t>(4 * i)] = c[i].tokens;
    mine[static_cast<std::size_t>(4 * i + 1)] = c[i].sequences;
    mine[static_cast<std::size_t>(4 * i + 2)] = c[i].rows;
    mine[static_cast<std::size_t>(4 * i + 3)] = static_cast<std::int64_t>(c[i].length);
  }
  comm.allgather(mine.data(), 4 * n, all.data());
  for (index_t i = 0; i < n; ++i) {
    loss_counts g;
    for (int q = 0; q < R; ++q) {
      const std::int64_t* p = all.data() + (static_cast<std::size_t>(q) * static_cast<std::size_t>(n) + static_cast<std::size_t>(i)) * 4;
      g += loss_counts{p[0], p[1], p[2], static_cast<index_t>(p[3])};
    }
    c[i] = g;
  }
}

}  // namespace detail

/// Global loss counts of an optimiser step: this rank's counts (summed over its micro-batches)
/// summed over every rank of comm (length: the maximum). Collective.
template <class Comm>
loss_counts allreduce(const loss_counts& local, const Comm& comm) {
  loss_counts c = local;
  detail::allreduce_loss_counts(&c, 1, comm);
  return c;
}

/// Per-critic form (count_critic_loss_tokens): entry k summed over ranks. Collective; every rank
/// must pass the same number of entries (throws asyppo::error on every rank otherwise).
template <class Comm>
std::vector<loss_counts> allreduce(const std::vector<loss_counts>& local, const Comm& comm) {
  std::vector<loss_counts> c = local;
  const int R = comm.size();
  if (R <= 1) return c;
  const std::int64_t n = static_cast<std::int64_t>(c.size());
  std::vector<std::int64_t> sizes(static_cast<std::size_t>(R));
  comm.allgather(&n, 1, sizes.data());
  for (int q = 0; q < R; ++q)
    if (sizes[static_cast<std::size_t>(q)] != n)
      detail::fail("asyppo::allreduce", "counts", "rank ", q, " passes ", sizes[static_cast<std::size_t>(q)],
                   " entries, rank ", comm.rank(), " passes ", n, " (every rank needs the same number of critics)");
  detail::allreduce_loss_counts(c.data(), static_cast<index_t>(n), comm);
  return c;
}

}  // namespace asyppo
