// asyppo/core/shards.hpp: in-group disjoint shard assignment of the K critics (docs/algorithm.md, Eq. E8).
//
// Every prompt group's n responses are split into K disjoint shares, one per critic, so each
// critic sees every prompt but only its own responses. With n = q*K + e (0 <= e < K) the
// critics c with ((c - g*e) mod K) < e get q+1 responses of group g and the others q: shares
// differ by at most one, and the critics receiving the extra response rotate with the dense
// group number g so that totals balance over the batch. When K divides n (e = 0) this is
// exactly the split of the public AsyPPO code: contiguous blocks in order.
//   contiguous: critic 0 takes the first share of the group (by batch index), critic 1 the next...
//   strided:    position j goes to critic (j + g*e) mod K.
// Output: weights[k,b] = 1 if sequence b trains critic k, else 0 (exactly one 1 per column),
// and optionally critic_of[b]. Deterministic and exact. In one process on a device backend nothing is
// read on the host (the group slots of core/groups.hpp: sizes from offsets padded with B, no group
// count): the call can be captured in a CUDA graph, and advantage_step_to writes the weights the same
// way.
#pragma once

#include "asyppo/core/groups.hpp"
#include "asyppo/core/validate.hpp"

namespace asyppo {

enum class shard_mode { contiguous, strided };

namespace detail {

ASYPPO_INLINE index_t shard_critic(index_t j, index_t n, index_t g, index_t K, shard_mode mode) {
  const index_t q = n / K, e = n % K;
  const index_t rot = (g % K) * e % K;
  if (mode == shard_mode::strided) return (j + rot) % K;
  index_t start = 0;
  for (index_t c = 0; c < K; ++c) {
    const index_t share = q + ((c - rot + K) % K < e ? 1 : 0);
    if (j < start + share) return c;
    start += share;
  }
  return K - 1;  // unreachable: shares sum to n
}

template <class T>
struct shard_kernel {
  const index_t* group_of;  // local dense group of b
  const index_t* position;  // local position of b in its group
  const index_t* number;    // [G] group number among all ranks' groups (null: one process, g itself)
  const index_t* size;      // [G] group size over all ranks
  const index_t* before;    // [G] members of the group on lower ranks (null: one process, none)
  index_t K;
  shard_mode mode;
  view<T, 2> weights;
  seq_view<std::int64_t> critic_of;
  ASYPPO_HD void operator()(index_t b) const {
    const index_t g = group_of[b];
    const index_t c = shard_critic((before ? before[g] : 0) + position[b], size[g], number ? number[g] : g, K, mode);
    if (weights.data)
      for (index_t k = 0; k < K; ++k) weights(k, b) = k == c ? T(1) : T(0);
    if (critic_of.data) critic_of(b) = c;
  }
};

/// Writes the shard weights of a batch whose group layout is L (arguments validated). Groups may
/// span the ranks of comm (collective): positions count members in (rank, batch index) order, so
/// the shards are those of the concatenated batch.
template <class Backend, class T, class Comm>
void shard_weights_unchecked(const Backend& be, seq_view<const std::int64_t> group_ids, const group_layout<Backend>& L,
                             index_t K, view<T, 2> weights, shard_mode mode, seq_view<std::int64_t> critic_of,
                             const Comm& comm) {
  const global_group_place place = global_group_places(be, group_ids, L, comm);
  const index_t G = L.count;
  auto d = be.template allocate<index_t>(3 * G);
  be.copy_from_host(place.number.data(), G, d.data());
  be.copy_from_host(place.size.data(), G, d.data() + G);
  be.copy_from_host(place.before.data(), G, d.data() + 2 * G);
  be.for_each(L.sequences, shard_kernel<T>{L.group_of.data(), L.position.data(), d.data(), d.data() + G,
                                           d.data() + 2 * G, K, mode, weights, critic_of});
}

/// Group g's size from the padded offsets of make_group_slots (0 for the empty slots).
struct slot_size {
  const index_t* offsets;
  index_t* size;
  ASYPPO_HD void operator()(index_t g) const { size[g] = offsets[g + 1] - offsets[g]; }
};

/// One process, nothing read on the host (advantage_step_to, shard_weights on a device backend): the
/// group slots of make_group_slots, each group's size from its offsets, then the shard kernel with the
/// local group numbers. The same weights as shard_weights_unchecked with one rank.
template <class Backend, class T>
void shard_weights_resident(const Backend& be, seq_view<const std::int64_t> ids, index_t K, view<T, 2> weights,
                            shard_mode mode, seq_view<std::int64_t> critic_of = {}) {
  const index_t B = ids.extent[0];
  if (B == 0) return;
  const auto L = make_group_slots(be, ids);
  auto size = be.template allocate<index_t>(B);
  be.for_each(B, slot_size{L.offsets.data(), size.data()});
  be.for_each(B, shard_kernel<T>{L.group_of.data(), L.position.data(), nullptr, size.data(), nullptr, K, mode, weights,
                                 critic_of});
}

/// The shard weights after the checks: on a device backend in one process without a host round trip
/// (shard_weights_resident), else through the group layout and the groups' places among the ranks.
template <class Backend, class T, class Comm>
void shard_weights_of(const Backend& be, seq_view<const std::int64_t> group_ids, index_t K, view<T, 2> weights,
                      shard_mode mode, seq_view<std::int64_t> critic_of, const Comm& comm) {
  if constexpr (device_in_one_process<Backend, Comm>)
    shard_weights_resident(be, group_ids, K, weights, mode, critic_of);
  else
    shard_weights_unchecked(be, group_ids, make_group_layout(be, group_ids), K, weights, mode, critic_of, comm);
}

}  // namespace detail

/// Shard weights [K,B] (and optionally critic_of [B]) for group ids [B]; groups may span the ranks
/// of comm (collective). Throws on K < 1 or bad views.
template <class Backend, class T, class Comm = single_process>
void shard_weights(const Backend& be, seq_view<const std::int64_t> group_ids, index_t K, view<T, 2> weights,
                   shard_mode mode = shard_mode::contiguous, seq_view<std::int64_t> critic_of = {},
                   const Comm& comm = {}) {
  constexpr const char* where = "asyppo::shard_weights";
  if (K < 1) detail::fail(where, "K", "needs at least one critic (K >= 1), got ", K);
  detail::check_view(where, "group_ids", group_ids);
  const index_t B = group_ids.extent[0];
  detail::check_optional_output(where, "weights", weights, {K, B});
  detail::check_memory(be, where, "group_ids", group_ids, "weights", weights, "critic_of", critic_of);
  detail::check_optional_output(where, "critic_of", critic_of, {B});
  detail::shard_weights_of(be, group_ids, K, weights, mode, critic_of, comm);
}

}  // namespace asyppo
