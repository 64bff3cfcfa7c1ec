// Placeholder for the advantage-step example (to be replaced).
#include <cstdio>

int main(int /*argc*/, char** /*argv*/) {
  std::printf("placeholder\n");
  return 0;
}
