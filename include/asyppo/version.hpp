// asyppo/version.hpp: the library version (kept in sync with project() in CMakeLists.txt).
#pragma once

#define ASYPPO_VERSION_MAJOR 0
#define ASYPPO_VERSION_MINOR 1
#define ASYPPO_VERSION_PATCH 0
#define ASYPPO_VERSION_STRING "0.1.0"

namespace asyppo {
inline constexpr int version_major = ASYPPO_VERSION_MAJOR;
inline constexpr int version_minor = ASYPPO_VERSION_MINOR;
inline constexpr int version_patch = ASYPPO_VERSION_PATCH;
inline constexpr const char* version_string = ASYPPO_VERSION_STRING;
}  // namespace asyppo
