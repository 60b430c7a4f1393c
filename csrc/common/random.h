#pragma once
// Counter-based randomness shared by the kernels that draw (anchor labelling, E-step
// sampling): stateless hashes of (seed, item) that any thread, on CPU or CUDA, evaluates alike.
#include <cstdint>

#include "macros.h"

namespace deepem {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;  // 2^64 / golden ratio, splitmix64's step

// splitmix64's finaliser: a bijection of 64-bit words with full avalanche.
DEEPEM_HD uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// One splitmix64 step: the finaliser of z advanced by the golden step.
DEEPEM_HD uint64_t splitmix64(uint64_t z) { return mix64(z + kGolden); }

}  // namespace deepem
