// What every CUDA kernel of se_fused shares: 16-byte granule loads and stores
// with their cache policies, warp sums, explicit rounding, and the last-arrival
// handoff between blocks.
//
// Every global memory access and every synchronisation goes through a function
// here, so the stage files compile unchanged as host C++ in the CPU emulation
// (tests/cuda_emu): that build defines SE_CUDA_EMULATION and supplies threadIdx,
// __syncthreads, warp shuffles and a bounds/alignment check for each access.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if !defined(SE_CUDA_EMULATION)
#include <cuda_runtime.h>
#endif
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "se_common.h"
#include "plan.h"

#if defined(SE_CUDA_EMULATION)
#define SE_DEV inline
#else
#define SE_DEV __device__ __forceinline__
#endif

namespace se_fused {
namespace cuda {


template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// Resident blocks per SM the kernels are compiled for: launch 1 (squeeze, reduce)
// at 4 (64 registers), launch 2 (scale, map: the per-sample loop keeps its tile
// geometry in registers) at 3 (80 registers); both without spills, and with at
// least 48 KB of loads in flight per SM. SE_FUSED_MIN_BLOCKS / SE_FUSED_MIN_BLOCKS_2
// override them to compare register budgets on a GPU; results do not change.
#ifndef SE_FUSED_MIN_BLOCKS
#define SE_FUSED_MIN_BLOCKS 4
#endif
#ifndef SE_FUSED_MIN_BLOCKS_2
#define SE_FUSED_MIN_BLOCKS_2 3
#endif

// A kernel's shared memory: one buffer, carved by each stage (the emulation gives
// every emulated block its own).
#if defined(SE_CUDA_EMULATION)
#define SE_BLOCK_SHARED(name, bytes) \
  unsigned char* name = ::se_fused::cuda::emu_block_shared(bytes)
#else
#define SE_BLOCK_SHARED(name, bytes) __shared__ alignas(16) unsigned char name[bytes]
#endif

// ---- 16-byte granules -----------------------------------------------------------

struct alignas(16) Raw16 {
  uint32_t a, b, c, d;
};

template <typename T>
struct Width {
  static constexpr int value = kGranule / int(sizeof(T));
};

// The V elements of a granule, converted to/from the accumulation type.
template <typename T, typename acc_t>
SE_DEV void unpack(const Raw16& r, acc_t* out) {
  constexpr int V = Width<T>::value;
  T e[V];
  std::memcpy(e, &r, sizeof(r));
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = static_cast<acc_t>(e[k]);
}

template <typename T, typename acc_t>
SE_DEV Raw16 pack(const acc_t* in) {
  constexpr int V = Width<T>::value;
  T e[V];
#pragma unroll
  for (int k = 0; k < V; ++k) e[k] = static_cast<T>(in[k]);
  Raw16 r;
  std::memcpy(&r, e, sizeof(r));
  return r;
}

#if defined(SE_CUDA_EMULATION)
// Supplied by the emulation shim: emu_check_access aborts on an access outside the
// registered buffers or a misaligned one.
void emu_check_access(const void* p, int bytes, bool write);
unsigned char* emu_block_shared(int bytes);
void emu_grid_wait();  // marks the thread as past wait_prior_grid
#endif

// L2 policies of granule loads. Keep: launch 2 reads the data again (x, or grad_y
// and the mask) and it fits in L2, so it should outlive streamed data there.
// Last: its last read; evict-first, which also demotes the lines a Keep load
// marked evict-last, so nothing stays pinned after the pass. Normal otherwise.
enum class L2Hint { Normal, Keep, Last };

// A policy, made once per tile (a register pair).
SE_DEV uint64_t l2_policy(L2Hint h) {
#if defined(SE_CUDA_EMULATION)
  return uint64_t(h);
#else
  uint64_t pol;
  if (h == L2Hint::Keep) {
    asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
  } else if (h == L2Hint::Last) {
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  } else {
    asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(pol));
  }
  return pol;
#endif
}

// One 16-byte load under an L2 policy, not allocated in L1 (streamed data).
SE_DEV Raw16 load16(const void* p, uint64_t policy) {
#if defined(SE_CUDA_EMULATION)
  (void)policy;
  emu_check_access(p, 16, false);
  Raw16 r;
  std::memcpy(&r, p, 16);
  return r;
#else
  Raw16 r;
  asm volatile("ld.global.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
               : "=r"(r.a), "=r"(r.b), "=r"(r.c), "=r"(r.d)
               : "l"(p), "l"(policy));
  return r;
#endif
}

// One 128-bit store (a struct copy may be split into narrower stores), marked
// evict-first: outputs are not read again in the pass and must not push the
// re-read inputs out of L2.
SE_DEV void store16(void* p, const Raw16& v) {
#if defined(SE_CUDA_EMULATION)
  emu_check_access(p, 16, true);
  std::memcpy(p, &v, 16);
#else
  asm volatile("st.global.cs.v4.u32 [%0], {%1,%2,%3,%4};" ::"l"(p), "r"(v.a), "r"(v.b),
               "r"(v.c), "r"(v.d)
               : "memory");
#endif
}

// Scalar element access for the unaligned fallback paths.
template <typename T>
SE_DEV T load1(const T* p) {
#if defined(SE_CUDA_EMULATION)
  emu_check_access(p, sizeof(T), false);
  return *p;
#else
  return *p;
#endif
}

template <typename T>
SE_DEV void store1(T* p, T v) {
#if defined(SE_CUDA_EMULATION)
  emu_check_access(p, sizeof(T), true);
#endif
  *p = v;
}

// Values written by other blocks in this launch (partials): read from L2, never
// from a possibly stale L1 line, and never through the read-only path.
template <typename T>
SE_DEV T load_cg(const T* p) {
#if defined(SE_CUDA_EMULATION)
  emu_check_access(p, sizeof(T), false);
  return *p;
#else
  return __ldcg(p);
#endif
}

// Parameters, and what an earlier launch wrote (h, da1, ...): never written in
// this launch.
template <typename T>
SE_DEV T load_ro(const T* p) {
#if defined(SE_CUDA_EMULATION)
  emu_check_access(p, sizeof(T), false);
  return *p;
#else
  return __ldg(p);
#endif
}

// ---- warp and block helpers -------------------------------------------------

// Sum over aligned groups of G lanes (G a power of two <= 32), fixed xor tree;
// every lane of the warp must call it.
template <typename acc_t>
SE_DEV acc_t group_sum(acc_t a, int G) {
  for (int o = G >> 1; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
  return a;
}

// ---- explicit rounding --------------------------------------------------------
// The kernel files are compiled with --fmad=false, so a * b + c is a multiply and
// an add wherever it is written, and every fused multiply-add is written as
// se_fma. So both paths of a tile (16-byte granules, or element by element)
// round alike. The CPU emulation is compiled with contraction on: a product left
// to the compiler there may be fused in one path and not in the other, and the
// bit-equality tests catch it.
template <typename T>
SE_DEV T se_fma(T a, T b, T c) {
#if defined(SE_CUDA_EMULATION)
  return std::fma(a, b, c);
#else
  return fma(a, b, c);
#endif
}

// a * b rounded on its own, never fused into a later add (also in the emulation).
template <typename T>
SE_DEV T se_mul(T a, T b) {
#if defined(SE_CUDA_EMULATION)
  T r = a * b;
  asm("" : "+x"(r));
  return r;
#else
  if constexpr (sizeof(T) == 8) {
    return __dmul_rn(a, b);
  } else {
    return __fmul_rn(a, b);
  }
#endif
}

// L2 prefetch of `rows` spans of `bytes` bytes, `ld` bytes apart, by the whole block:
// one hint per 128-byte line (a span's first address, then every 128 bytes on).
SE_DEV void prefetch_l2(const void* p, int64_t rows, int64_t bytes, int64_t ld) {
  const int64_t lines = (bytes + 127) / 128;
  for (int64_t i = threadIdx.x; i < rows * lines; i += kThreads) {
    const int64_t r = i / lines;
    const unsigned char* a = static_cast<const unsigned char*>(p) + r * ld + (i - r * lines) * 128;
#if defined(SE_CUDA_EMULATION)
    emu_check_access(a, 1, false);
#else
    asm volatile("prefetch.global.L2 [%0];" ::"l"(a));
#endif
  }
}

// ---- programmatic dependent launch ----------------------------------------------
// Each kernel of a pass is launched with programmatic stream serialization after the
// one before it (kernel_launch.cuh), so it may start while that one runs. Before its
// first access to anything the earlier kernel writes, every thread waits for it:
// griddepcontrol.wait returns once the prerequisite grid has completed and its writes
// are visible. Without a programmatic launch (SE_FUSED_CUDA_PDL=0, a GPU before sm_90)
// both instructions are no-ops. The emulation runs the kernels one after another and
// fails any access a kernel makes before its wait to what the kernel before it writes.
SE_DEV void wait_prior_grid() {
#if defined(SE_CUDA_EMULATION)
  emu_grid_wait();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel in the stream be scheduled once every block of this one has
// called it (or exited): its blocks then fill the SMs this grid's last blocks leave.
SE_DEV void allow_next_grid() {
#if !defined(SE_CUDA_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// ---- last-arrival handoff ------------------------------------------------------
// No block ever waits for another. A block that produced partial results counts
// itself in at a counter (release: its writes before the count); the one that
// arrives last (acquire: everyone's writes) does the dependent work. Counters are
// per call and zeroed by se_zero_kernel in the stream before every launch 1.

SE_DEV uint32_t atomic_add_u32(uint32_t* p, uint32_t v) {
#if defined(SE_CUDA_EMULATION)
  emu_check_access(p, 4, true);
  const uint32_t old = *p;
  *p = old + v;
  return old;
#else
  return atomicAdd(p, v);
#endif
}

// The counters of one call, zeroed. Launched plainly (it follows all earlier work in
// the stream, which the per-call counter buffer may have served), and at once lets
// launch 1 start: launch 1 waits for it before its first atomic.
template <typename W>
__global__ void __launch_bounds__(kThreads) se_zero_kernel(W* words, int64_t n) {
  allow_next_grid();
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    store1(words + i, W(0));
  }
}

SE_DEV void fence_acq_rel_gpu() {
#if !defined(SE_CUDA_EMULATION)
  asm volatile("fence.acq_rel.gpu;" ::: "memory");
#endif
}

// True in the last of `expected` blocks arriving at `counter` (every thread gets
// the answer through the shared word `flag`). The last block reads the others'
// results with load_cg (L2, never a stale L1 line).
SE_DEV bool arrive_is_last(uint32_t* counter, uint32_t expected, volatile uint32_t* flag) {
  __syncthreads();  // every thread's writes, before thread 0's release
  if (threadIdx.x == 0) {
    fence_acq_rel_gpu();
    const uint32_t prev = atomic_add_u32(counter, 1u);
    const bool last = prev + 1u == expected;
    if (last) fence_acq_rel_gpu();
    *flag = last ? 1u : 0u;
  }
  __syncthreads();
  const bool last = *flag != 0u;
  __syncthreads();  // the flag word may be reused right after
  return last;
}

}  // namespace cuda
}  // namespace se_fused
