// Consumer smoke test: the installed / embedded asyppo headers compile and link.
#include "asyppo/asyppo.hpp"
#include "asyppo/version.hpp"

#include <cstdio>

int main() {
  std::printf("asyppo %s\n", ASYPPO_VERSION_STRING);
  return asyppo::version_string[0] != '\0' ? 0 : 1;
}
