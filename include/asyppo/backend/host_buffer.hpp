// asyppo/backend/host_buffer.hpp: the owning host array that host-memory backends allocate
// (cpu_backend, thrust_backend): allocate<T>(n) returns one; data(), size(), operator[].
#pragma once

#include <cstddef>
#include <memory>

#include "asyppo/config.hpp"

namespace asyppo {

/// Owning host buffer of trivially copyable T (uninitialised on allocation).
template <class T>
class host_buffer {
 public:
  host_buffer() = default;
  explicit host_buffer(index_t n) : data_(n > 0 ? new T[static_cast<std::size_t>(n)] : nullptr), size_(n) {}
  T* data() const { return data_.get(); }
  index_t size() const { return size_; }
  T& operator[](index_t i) const { return data_[static_cast<std::size_t>(i)]; }

 private:
  std::unique_ptr<T[]> data_;
  index_t size_ = 0;
};

}  // namespace asyppo
