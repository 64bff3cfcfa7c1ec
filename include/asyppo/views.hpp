// asyppo/views.hpp: non-owning strided views over the caller's memory.
//
// A view<T, R> is a pointer plus R extents and R strides (in elements, any sign is
// rejected by validation except positive or zero-extent cases). Nothing is copied: the
// algorithms read and write through views, so a row-major [B,T] tensor, a column slice of a
// larger tensor or a transposed layout are all accepted. Views are trivially copyable and
// usable on a CUDA device (ASYPPO_HD accessors).
//
// Shapes used throughout:
//   token tensors   view<T,2>   [B,T]    (sequence b, response position t)
//   critic tensors  view<T,3>   [K,B,T]  (critic k)
//   per-sequence    view<T,1>   [B]
//   per-critic seq  view<T,2>   [K,B]
// Masks are std::uint8_t (0 = masked out, any nonzero = valid); bool arrays are accepted
// through the bool* constructors (bool has size 1 and holds 0 or 1 on every supported ABI).
#pragma once

#include <cstdint>
#include <type_traits>

#include "asyppo/config.hpp"

namespace asyppo {

template <class T, int R>
struct view {
  static_assert(R >= 1 && R <= 3, "asyppo::view supports ranks 1 to 3");
  using element_type = T;
  static constexpr int rank = R;

  T* data = nullptr;
  index_t extent[R] = {};
  index_t stride[R] = {};

  constexpr view() = default;

  /// Contiguous row-major view.
  template <class... E>
    requires(sizeof...(E) == R && (std::is_integral_v<E> && ...))
  constexpr view(T* p, E... e) : data(p), extent{static_cast<index_t>(e)...} {
    index_t s = 1;
    for (int d = R - 1; d >= 0; --d) {
      stride[d] = s;
      s *= extent[d];
    }
  }

  /// Fully strided view: extents and strides (in elements) given explicitly.
  static constexpr view strided(T* p, const index_t (&ext)[R], const index_t (&str)[R]) {
    view v;
    v.data = p;
    for (int d = 0; d < R; ++d) {
      v.extent[d] = ext[d];
      v.stride[d] = str[d];
    }
    return v;
  }

  /// A view of non-const T converts to a view of const T.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr view(const view<U, R>& o) : data(o.data) {
    for (int d = 0; d < R; ++d) {
      extent[d] = o.extent[d];
      stride[d] = o.stride[d];
    }
  }

  ASYPPO_HD constexpr index_t size() const {
    index_t n = 1;
    for (int d = 0; d < R; ++d) n *= extent[d];
    return n;
  }
  ASYPPO_HD constexpr bool empty() const { return size() == 0; }

  ASYPPO_HD constexpr T& operator()(index_t i) const
    requires(R == 1)
  {
    return data[i * stride[0]];
  }
  ASYPPO_HD constexpr T& operator()(index_t i, index_t j) const
    requires(R == 2)
  {
    return data[i * stride[0] + j * stride[1]];
  }
  ASYPPO_HD constexpr T& operator()(index_t i, index_t j, index_t k) const
    requires(R == 3)
  {
    return data[i * stride[0] + j * stride[1] + k * stride[2]];
  }

  /// Slice along the first dimension: critics(k) is the [B,T] view of critic k.
  ASYPPO_HD constexpr view<T, R - 1> operator[](index_t i) const
    requires(R > 1)
  {
    view<T, R - 1> v;
    v.data = data + i * stride[0];
    for (int d = 1; d < R; ++d) {
      v.extent[d - 1] = extent[d];
      v.stride[d - 1] = stride[d];
    }
    return v;
  }
};

template <class T> using seq_view = view<T, 1>;     ///< [B]
template <class T> using token_view = view<T, 2>;   ///< [B,T]
template <class T> using critic_view = view<T, 3>;  ///< [K,B,T]
using mask_view = view<const std::uint8_t, 2>;      ///< [B,T] input mask
using mask_out = view<std::uint8_t, 2>;             ///< [B,T] output mask

/// A [B,T] mask view over a bool array (no copy).
inline mask_view as_mask(const bool* p, index_t rows, index_t cols) {
  static_assert(sizeof(bool) == 1, "bool masks need a one-byte bool");
  return mask_view(reinterpret_cast<const std::uint8_t*>(p), rows, cols);
}
inline mask_view as_mask(const std::uint8_t* p, index_t rows, index_t cols) {
  return mask_view(p, rows, cols);
}

}  // namespace asyppo
