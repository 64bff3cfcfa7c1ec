// asyppo/interop/eigen.hpp: zero-copy conversions between asyppo views and Eigen.
//
//   as_view(m)      any Eigen dense expression with direct access (Matrix, Map, Ref, Block)
//                   -> asyppo::view<T, 2> (or view<const T, 2>) over the same memory, strides
//                   taken from the expression (row- or column-major, blocks included);
//   as_view(v)      a vector expression (one row or one column) -> view<T, 1>;
//   as_eigen(v)     view<T, 2> -> Eigen::Map<Matrix<T, Dynamic, Dynamic, RowMajor>, 0,
//                   Stride<Dynamic, Dynamic>> over the same memory, so Eigen's linear algebra
//                   can run on the library's inputs and outputs without a copy.
// Nothing is copied and nothing is owned: the Eigen object or the view must outlive the other.
// Strides are in elements (Eigen's convention too).
#pragma once

#include <Eigen/Core>

#include <type_traits>

#include "asyppo/views.hpp"

namespace asyppo {

/// [rows, cols] view over an Eigen matrix expression with direct access (writable when the
/// expression is; a const expression or a temporary block gives a view of const).
template <class Derived>
auto as_view(Eigen::DenseBase<Derived>& m) {
  auto& d = m.derived();
  using T = std::remove_pointer_t<decltype(d.data())>;
  return view<T, 2>::strided(d.data(), {static_cast<index_t>(d.rows()), static_cast<index_t>(d.cols())},
                             {static_cast<index_t>(d.rowStride()), static_cast<index_t>(d.colStride())});
}

template <class Derived>
auto as_view(const Eigen::DenseBase<Derived>& m) {
  const auto& d = m.derived();
  using T = const typename Derived::Scalar;
  return view<T, 2>::strided(d.data(), {static_cast<index_t>(d.rows()), static_cast<index_t>(d.cols())},
                             {static_cast<index_t>(d.rowStride()), static_cast<index_t>(d.colStride())});
}

/// [n] view over an Eigen vector expression (a row or a column).
template <class Derived>
view<const typename Derived::Scalar, 1> as_seq_view(const Eigen::DenseBase<Derived>& v) {
  const auto& d = v.derived();
  return view<const typename Derived::Scalar, 1>::strided(d.data(), {static_cast<index_t>(d.size())},
                                                          {static_cast<index_t>(d.innerStride())});
}

template <class T>
using eigen_map = Eigen::Map<std::conditional_t<std::is_const_v<T>,
                                                const Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                                                Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>,
                             0, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

/// Eigen map over a [rows, cols] view (row stride = outer, column stride = inner).
template <class T>
eigen_map<T> as_eigen(const view<T, 2>& v) {
  return eigen_map<T>(v.data, v.extent[0], v.extent[1], Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(v.stride[0], v.stride[1]));
}

}  // namespace asyppo
