// asyppo/core/groups.hpp: prompt groups from group ids (the GRPO/RLOO "uid", the AsyPPO prompt).
//
// Sequences b with equal ids[b] form one group, whatever the labels (any int64) and wherever
// the members sit in the batch (contiguous or not). The layout numbers the G distinct groups
// densely in ascending label order, and numbers the members of a group by ascending batch
// index (their position j). It is built with one stable sort and one forward scan, so it is
// exact and deterministic; outcome baselines and shard assignment reduce over it. make_group_layout
// reads the group count G on the host; make_group_slots (one process, what a device backend uses)
// does not: B slots, those past the last group empty.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "asyppo/backend/patterns.hpp"
#include "asyppo/comm/communicator.hpp"
#include "asyppo/views.hpp"

namespace asyppo {

template <class Backend>
struct group_layout {
  using index_buffer = decltype(std::declval<const Backend&>().template allocate<index_t>(0));
  index_t sequences = 0;  ///< B
  index_t count = 0;      ///< G, the number of distinct groups
  index_buffer perm;      ///< [B]   batch indices sorted by (id, index)
  index_buffer offsets;   ///< [G+1] group g holds perm[offsets[g] .. offsets[g+1])
  index_buffer group_of;  ///< [B]   dense group number of sequence b
  index_buffer position;  ///< [B]   position of sequence b inside its group
};

namespace detail {

struct group_key {
  seq_view<const std::int64_t> ids;
  ASYPPO_HD std::int64_t operator()(index_t i) const { return ids(i); }
};

/// Scan element over sorted positions: number of group heads so far, position of the last head.
struct head_count {
  index_t heads;
  index_t last_head;
};
struct head_op {
  using value_type = head_count;
  ASYPPO_HD head_count combine(const head_count& a, const head_count& b) const {
    return {a.heads + b.heads, b.heads ? b.last_head : a.last_head};
  }
};
struct head_elem {
  seq_view<const std::int64_t> ids;
  const index_t* perm;
  ASYPPO_HD head_count operator()(index_t p) const {
    const bool head = p == 0 || ids(perm[p]) != ids(perm[p - 1]);
    return {head ? 1 : 0, p};
  }
};
struct head_sink {
  const index_t* perm;
  index_t* offsets;
  index_t* group_of;
  index_t* position;
  ASYPPO_HD void operator()(index_t p, const head_count& y) const {
    const index_t g = y.heads - 1;
    if (y.last_head == p) offsets[g] = p;
    group_of[perm[p]] = g;
    position[perm[p]] = p - y.last_head;
  }
};
struct count_heads {
  seq_view<const std::int64_t> ids;
  const index_t* perm;
  using value_type = index_t;
  ASYPPO_HD index_t identity() const { return 0; }
  ASYPPO_HD void add(index_t& acc, index_t p) const { acc += (p == 0 || ids(perm[p]) != ids(perm[p - 1])) ? 1 : 0; }
  ASYPPO_HD index_t combine(index_t a, index_t b) const { return a + b; }
};

/// Label (id) of each dense group: ids of its first member.
struct group_label {
  seq_view<const std::int64_t> ids;
  const index_t* perm;
  const index_t* offsets;
  std::int64_t* out;
  ASYPPO_HD void operator()(index_t g) const { out[g] = ids(perm[offsets[g]]); }
};

}  // namespace detail

namespace detail {

/// The layout's buffers (uninitialised), for B = ids.extent[0] sequences.
template <class Backend>
group_layout<Backend> layout_buffers(const Backend& be, seq_view<const std::int64_t> ids) {
  group_layout<Backend> L;
  const index_t B = ids.extent[0];
  L.sequences = B;
  L.perm = be.template allocate<index_t>(B);
  L.offsets = be.template allocate<index_t>(B + 1);
  L.group_of = be.template allocate<index_t>(B);
  L.position = be.template allocate<index_t>(B);
  return L;
}
/// The stable sort by id and the head scan: offsets written at the groups' heads, group_of and position
/// for every sequence (B > 0).
template <class Backend>
void sort_and_scan_groups(const Backend& be, seq_view<const std::int64_t> ids, group_layout<Backend>& L) {
  const index_t B = ids.extent[0];
  be.sort_indices(B, group_key{ids}, L.perm.data());
  be.segmented_scan(scan_direction::forward, 1, row_segments{B}, head_elem{ids, L.perm.data()}, head_op{},
                    head_sink{L.perm.data(), L.offsets.data(), L.group_of.data(), L.position.data()});
}

}  // namespace detail

/// Builds the group layout of ids [B]. Callers validate the view; B = 0 gives G = 0.
template <class Backend>
group_layout<Backend> make_group_layout(const Backend& be, seq_view<const std::int64_t> ids) {
  group_layout<Backend> L = detail::layout_buffers(be, ids);
  const index_t B = ids.extent[0];
  if (B == 0) {
    const index_t zero = 0;
    be.copy_from_host(&zero, 1, L.offsets.data());
    return L;
  }
  detail::sort_and_scan_groups(be, ids, L);
  L.count = be.reduce(B, detail::count_heads{ids, L.perm.data()});  // G, on the host
  be.copy_from_host(&B, 1, L.offsets.data() + L.count);
  return L;
}

/// The same layout without reading G on the host (one process; what a device backend uses so that
/// nothing waits for it): count is B, an upper bound of G, and the offsets of the slots g >= G are B,
/// so a segmented pass over all count slots visits every group once and the slots past the last group
/// as empty segments. Group numbers, positions and perm are those of make_group_layout.
template <class Backend>
group_layout<Backend> make_group_slots(const Backend& be, seq_view<const std::int64_t> ids) {
  group_layout<Backend> L = detail::layout_buffers(be, ids);
  const index_t B = ids.extent[0];
  L.count = B;
  be.fill(L.offsets.data(), B + 1, B);
  if (B > 0) detail::sort_and_scan_groups(be, ids, L);
  return L;
}

/// Where each local group sits among the groups of every rank (groups may span ranks): its dense
/// number among all ranks' distinct ids (ascending), its size over all ranks, and how many of its
/// members are on lower ranks, so that position-in-group counts members in (rank, batch index)
/// order: exactly the layout of the concatenated batch. Host vectors of G entries. Collective.
struct global_group_place {
  std::vector<index_t> number, size, before;
};

template <class Backend, class Comm>
global_group_place global_group_places(const Backend& be, seq_view<const std::int64_t> ids,
                                       const group_layout<Backend>& L, const Comm& comm) {
  const index_t G = L.count;
  global_group_place out;
  std::vector<std::int64_t> label(static_cast<std::size_t>(G)), offsets(static_cast<std::size_t>(G + 1));
  if (G > 0) {
    auto d_label = be.template allocate<std::int64_t>(G);
    be.for_each(G, detail::group_label{ids, L.perm.data(), L.offsets.data(), d_label.data()});
    be.copy_to_host(d_label.data(), G, label.data());
  }
  be.copy_to_host(L.offsets.data(), G + 1, offsets.data());
  const int R = comm.size();
  std::vector<std::int64_t> count(static_cast<std::size_t>(R));
  const std::int64_t g64 = G;
  comm.allgather(&g64, 1, count.data());
  const index_t Gmax = static_cast<index_t>(*std::max_element(count.begin(), count.end()));
  std::vector<std::int64_t> send(static_cast<std::size_t>(2 * Gmax), 0), all(static_cast<std::size_t>(2 * Gmax * R));
  for (index_t g = 0; g < G; ++g) {
    send[static_cast<std::size_t>(2 * g)] = label[static_cast<std::size_t>(g)];
    send[static_cast<std::size_t>(2 * g + 1)] = offsets[static_cast<std::size_t>(g + 1)] - offsets[static_cast<std::size_t>(g)];
  }
  if (Gmax > 0) comm.allgather(send.data(), 2 * Gmax, all.data());
  std::vector<std::int64_t> distinct;
  for (int q = 0; q < R; ++q)
    for (std::int64_t g = 0; g < count[static_cast<std::size_t>(q)]; ++g)
      distinct.push_back(all[static_cast<std::size_t>(2 * (q * Gmax + g))]);
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  out.number.assign(static_cast<std::size_t>(G), 0);
  out.size.assign(static_cast<std::size_t>(G), 0);
  out.before.assign(static_cast<std::size_t>(G), 0);
  const int me = comm.rank();
  for (index_t g = 0; g < G; ++g) {
    const std::int64_t id = label[static_cast<std::size_t>(g)];
    out.number[static_cast<std::size_t>(g)] =
        static_cast<index_t>(std::lower_bound(distinct.begin(), distinct.end(), id) - distinct.begin());
    for (int q = 0; q < R; ++q) {  // each rank's ids are ascending: binary search
      const std::int64_t* first = all.data() + 2 * static_cast<std::size_t>(q) * static_cast<std::size_t>(Gmax);
      std::int64_t lo = 0, hi = count[static_cast<std::size_t>(q)];
      while (lo < hi) {
        const std::int64_t mid = (lo + hi) / 2;
        if (first[2 * mid] < id) lo = mid + 1;
        else hi = mid;
      }
      if (lo == count[static_cast<std::size_t>(q)] || first[2 * lo] != id) continue;
      out.size[static_cast<std::size_t>(g)] += first[2 * lo + 1];
      if (q < me) out.before[static_cast<std::size_t>(g)] += first[2 * lo + 1];
    }
  }
  return out;
}

}  // namespace asyppo
