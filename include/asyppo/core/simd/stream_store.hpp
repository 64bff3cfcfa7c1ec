// asyppo/core/simd/stream_store.hpp: zeroing a long run of bytes with streaming (non-temporal) stores.
//
// The padding of a right-padded batch is most of its outputs (often 70 % of [B,T]) and is written
// once with zeros that nothing reads back soon. Ordinary stores first read every cache line they
// fill (read-for-ownership), so zeroing costs twice its bytes in memory traffic; streaming stores
// write whole lines without reading them. stream_zero(p, n) does that for the 16-byte aligned middle
// of [p, p + n) (x86-64, n >= 256) and ends with a store fence, so the zeros are visible to any thread
// that synchronises with this one afterwards; short runs and other hosts use memset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "asyppo/core/simd/lanes.hpp"

namespace asyppo::detail {

inline void stream_zero(void* p, std::size_t n) {
  auto* c = static_cast<unsigned char*>(p);
#if defined(ASYPPO_SIMD_SSE2)
  if (n >= 256) {
    const std::size_t head = (16 - reinterpret_cast<std::uintptr_t>(c) % 16) % 16;
    std::memset(c, 0, head);
    c += head, n -= head;
    const __m128i z = _mm_setzero_si128();
    for (; n >= 64; n -= 64, c += 64) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(c), z);
      _mm_stream_si128(reinterpret_cast<__m128i*>(c + 16), z);
      _mm_stream_si128(reinterpret_cast<__m128i*>(c + 32), z);
      _mm_stream_si128(reinterpret_cast<__m128i*>(c + 48), z);
    }
    for (; n >= 16; n -= 16, c += 16) _mm_stream_si128(reinterpret_cast<__m128i*>(c), z);
    _mm_sfence();
  }
#endif
  std::memset(c, 0, n);
}

}  // namespace asyppo::detail
