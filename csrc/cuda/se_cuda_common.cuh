// What every CUDA stage of se_fused shares: the block shape, 16-byte granule
// loads and stores with their cache policies, warp sums, the inter-block
// signals of the persistent kernels, and the dtype/layout switch.
//
// Every global memory access and every synchronisation goes through a function
// here, so the stage files compile unchanged as host C++ in the CPU emulation
// (tests/cuda_emu): that build defines SE_CUDA_EMULATION and supplies threadIdx,
// __syncthreads, warp shuffles and a bounds/alignment check for each access.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if !defined(SE_CUDA_EMULATION)
#include <cuda_runtime.h>
#endif
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "se_common.h"
#include "schedule.h"

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

// Resident blocks per SM the kernels are compiled for: 6 caps them at 40 registers.
// SE_FUSED_MIN_BLOCKS overrides it (e.g. 4: 64 registers, fewer spills) to compare
// on a GPU; results do not change, only the register budget.
#ifndef SE_FUSED_MIN_BLOCKS
#define SE_FUSED_MIN_BLOCKS 6
#endif
template <typename T>
struct MinBlocks {
  static constexpr int value = std::is_same<T, double>::value ? 4 : SE_FUSED_MIN_BLOCKS;
};


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
// registered buffers or a misaligned one; emu_spin_wait lets other emulated blocks
// run (and reports a deadlock); emu_counter_changed records progress.
void emu_check_access(const void* p, int bytes, bool write);
void emu_spin_wait();
void emu_counter_changed();
unsigned char* emu_block_shared(int bytes);
#endif

// L2 policy of a granule load. Keep: the data is read again later in this launch
// (x between the squeeze and the scale of a wave), so it should outlive streamed
// data in L2. Last: its last read (the scale's x, data read once).
enum class L2Hint { Normal, Keep, Last };

// The L2 policy of Keep loads, made once per tile (a register pair).
SE_DEV uint64_t l2_keep_policy() {
#if defined(SE_CUDA_EMULATION)
  return 0;
#else
  uint64_t pol;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
  return pol;
#endif
}

template <L2Hint H = L2Hint::Normal>
SE_DEV Raw16 load16(const void* p, uint64_t keep_policy = 0) {
#if defined(SE_CUDA_EMULATION)
  (void)keep_policy;
  emu_check_access(p, 16, false);
  Raw16 r;
  std::memcpy(&r, p, 16);
  return r;
#else
  Raw16 r;
  if constexpr (H == L2Hint::Keep) {
    asm volatile("ld.global.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(r.a), "=r"(r.b), "=r"(r.c), "=r"(r.d)
                 : "l"(p), "l"(keep_policy));
  } else if constexpr (H == L2Hint::Last) {
    asm volatile("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.a), "=r"(r.b), "=r"(r.c), "=r"(r.d)
                 : "l"(p));
  } else {
    asm volatile("ld.global.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.a), "=r"(r.b), "=r"(r.c), "=r"(r.d)
                 : "l"(p));
  }
  return r;
#endif
}

// One 128-bit store (a struct copy may be split into narrower stores), marked
// evict-first: outputs are not read again in the pass and must not push the
// wave's inputs out of L2.
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

// Values written by other blocks in this launch (partials, h, s, ...): read from
// L2, never from a possibly stale L1 line, and never through the read-only path.
template <typename T>
SE_DEV T load_cg(const T* p) {
#if defined(SE_CUDA_EMULATION)
  emu_check_access(p, sizeof(T), false);
  return *p;
#else
  return __ldcg(p);
#endif
}

// Parameters (w1, b1, w2, b2, z for the backward): never written in the launch.
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

// ---- inter-block signals ----------------------------------------------------
// Work items of a persistent kernel are claimed through a ticket counter in
// increasing order, and an item only ever waits for items with smaller tickets.
// Those were claimed by blocks that are running, whose own waits point further
// down, so the smallest unfinished ticket can always proceed: no wait depends on
// a block being resident, and any grid size (even 1) finishes.

SE_DEV uint32_t atomic_add_u32(uint32_t* p, uint32_t v) {
#if defined(SE_CUDA_EMULATION)
  emu_check_access(p, 4, true);
  const uint32_t old = *p;
  *p = old + v;
  emu_counter_changed();
  return old;
#else
  return atomicAdd(p, v);
#endif
}

SE_DEV uint32_t load_acquire(const uint32_t* p) {
#if defined(SE_CUDA_EMULATION)
  emu_check_access(p, 4, false);
  return *p;
#else
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
#endif
}

SE_DEV void fence_gpu() {
#if !defined(SE_CUDA_EMULATION)
  __threadfence();
#endif
}

// The block's claim of the next work item (thread 0 only).
SE_DEV uint32_t claim_ticket(uint32_t* ticket) { return atomic_add_u32(ticket, 1u); }

// Waits until *counter >= target. Thread 0 polls with acquire loads; the barrier
// then orders the block's later reads after the producers' writes.
SE_DEV void wait_at_least(const uint32_t* counter, uint32_t target) {
  if (threadIdx.x == 0) {
#if defined(SE_CUDA_EMULATION)
    while (load_acquire(counter) < target) emu_spin_wait();
#else
    unsigned ns = 32;
    while (load_acquire(counter) < target) {
      __nanosleep(ns);
      if (ns < 512) ns <<= 1;
    }
#endif
  }
  __syncthreads();
}

// Marks one item done: every thread's writes, then the release count.
SE_DEV void signal_done(uint32_t* counter) {
  __syncthreads();
  if (threadIdx.x == 0) {
    fence_gpu();
    atomic_add_u32(counter, 1u);
  }
}

// True in the last of `expected` blocks arriving at `counter` (for the block-wide
// result, `flag` is a shared word). Every block's writes before its arrival are
// visible to the last one, which reads them with load_cg.
SE_DEV bool arrive_is_last(uint32_t* counter, uint32_t expected, volatile uint32_t* flag) {
  __syncthreads();
  if (threadIdx.x == 0) {
    fence_gpu();
    const uint32_t prev = atomic_add_u32(counter, 1u);
    const bool last = prev + 1u == expected;
    if (last) fence_gpu();
    *flag = last ? 1u : 0u;
  }
  __syncthreads();
  return *flag != 0u;
}

}  // namespace cuda
}  // namespace se_fused
