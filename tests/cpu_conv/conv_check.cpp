// Checks the AVX-512 loads and stores of bfloat16 and float16 in csrc/cpu/se_cpu_rows.h
// bit for bit against c10's scalar conversions (the generic loops' static_cast), built
// with the extension's own CPU flags (tests/test_cpu_conversions.py). Prints one line
// per dtype; exits 0 when every value matched, 1 on the first mismatch, 2 when the
// build has no 16-bit vector path (nothing to check).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

// se_cpu_rows.h includes no ATen (no torch library to link).
#include "cpu/se_cpu_rows.h"

#if SE_CPU_SIMD_HALF
namespace {

using se_fused::cpu::kAll;
using se_fused::cpu::load16;
using se_fused::cpu::store16;

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
template <typename T>
uint16_t bits16(T v) {
  uint16_t u;
  std::memcpy(&u, &v, 2);
  return u;
}

// Narrowing: every float of `in` through store16 (16 at a time, and the last
// partial vector under a mask) against T(float).
template <typename T>
bool narrow(const std::vector<uint32_t>& in, const char* name) {
  std::vector<float> f(in.size());
  for (size_t i = 0; i < in.size(); ++i) f[i] = from_bits(in[i]);
  std::vector<T> out(in.size() + 16);
  for (size_t i = 0; i < in.size(); i += 16) {
    const size_t n = std::min<size_t>(16, in.size() - i);
    const __mmask16 m = se_fused::cpu::row_tail(int64_t(n));
    store16(out.data() + i, _mm512_maskz_loadu_ps(m, f.data() + i), m);
  }
  for (size_t i = 0; i < in.size(); ++i) {
    const uint16_t want = bits16(T(f[i])), got = bits16(out[i]);
    if (want != got) {
      std::printf("%s narrow 0x%08x: vector 0x%04x, c10 0x%04x\n", name, in[i], got, want);
      return false;
    }
  }
  std::printf("%s narrow: %zu values ok\n", name, in.size());
  return true;
}

// Widening: all 65536 patterns through load16 against float(T).
template <typename T>
bool widen(const char* name) {
  std::vector<uint16_t> in(65536);
  for (uint32_t i = 0; i < 65536; ++i) in[i] = uint16_t(i);
  for (uint32_t i = 0; i < 65536; i += 16) {
    float got[16];
    _mm512_storeu_ps(got, load16(reinterpret_cast<const T*>(in.data() + i), kAll));
    for (int k = 0; k < 16; ++k) {
      T v;
      std::memcpy(&v, &in[i + k], 2);
      if (bits_of(static_cast<float>(v)) != bits_of(got[k])) {
        std::printf("%s widen 0x%04x: vector 0x%08x, c10 0x%08x\n", name, i + k, bits_of(got[k]),
                    bits_of(static_cast<float>(v)));
        return false;
      }
    }
  }
  std::printf("%s widen: 65536 values ok\n", name);
  return true;
}

// Float bit patterns: every value of the upper `hi_bits` bits (so every sign,
// exponent and leading mantissa), each with the low bits at the rounding
// boundaries (ties, just below and above) and at random; an odd count, so the
// masked tail runs too.
std::vector<uint32_t> patterns(int hi_bits, uint32_t seed) {
  const int lo_bits = 32 - hi_bits;
  const uint32_t lo_mask = (uint32_t(1) << lo_bits) - 1, half = uint32_t(1) << (lo_bits - 1);
  std::mt19937 rng(seed);
  std::vector<uint32_t> v;
  for (uint64_t hi = 0; hi < (uint64_t(1) << hi_bits); ++hi) {
    const uint32_t base = uint32_t(hi) << lo_bits;
    for (uint32_t lo : {uint32_t(0), uint32_t(1), half - 1, half, half + 1, lo_mask,
                        uint32_t(rng()) & lo_mask}) {
      v.push_back(base | lo);
    }
  }
  v.push_back(0x7FC00001u);  // a quiet NaN with payload
  return v;
}

}  // namespace

int main() {
  bool ok = widen<c10::BFloat16>("bfloat16") && widen<c10::Half>("float16");
  // bfloat16 keeps the upper 16 bits and rounds at bit 15; float16 keeps sign,
  // exponent and 10 mantissa bits and rounds at bit 12 for normal results (higher
  // for subnormal ones), so it gets 20 upper bits: every rounding bit position.
  ok = ok && narrow<c10::BFloat16>(patterns(16, 1), "bfloat16");
  ok = ok && narrow<c10::Half>(patterns(20, 2), "float16");
  return ok ? 0 : 1;
}
#else
int main() {
  std::printf("no 16-bit vector path in this build\n");
  return 2;
}
#endif
