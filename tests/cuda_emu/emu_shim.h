// Runs the CUDA kernel sources of se_fused as host C++: a logic check of the
// kernels, not GPU evidence. Every CUDA thread is a fiber (ucontext), every block
// a group of 256 fibers with its own shared memory; __syncthreads and warp
// shuffles are barriers among the fibers; a few blocks are resident at a time,
// started in a seeded random order, their threads interleaving at every barrier
// (one CPU thread, no memory-model effects).
//
// What it checks: the kernels' arithmetic and indexing against the reference,
// that every global access hits a registered buffer at its alignment (16 bytes
// for granules), that every last-arrival counter ends at its count (the host
// side, emu.cpp), that barriers and shuffles are reached by all threads, that no
// kernel touches what the kernel before it writes (and launch 2 stores nothing) before
// its wait_prior_grid, as programmatic dependent launch requires. What it
// cannot: timing, the memory model, registers, coalescing, anything about the
// hardware.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#define SE_CUDA_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __grid_constant__
#define __launch_bounds__(...)

namespace se_emu {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

Dim3 thread_index();
Dim3 block_index();
Dim3 grid_dim();
void barrier();              // __syncthreads
void warp_barrier();         // the lanes of the calling thread's warp
void* warp_slot();           // this lane's 8-byte exchange slot
void* warp_slot_of(int lane);  // another lane's slot, same warp
[[noreturn]] void fail(const std::string& what);

template <typename T>
T shfl_xor(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
  if (mask != 0xffffffffu) fail("shuffle with a partial mask");
  std::memcpy(warp_slot(), &v, sizeof(T));
  warp_barrier();
  T r;
  std::memcpy(&r, warp_slot_of(int(thread_index().x % 32) ^ lane_mask), sizeof(T));
  warp_barrier();  // nobody overwrites a slot before every lane has read
  return r;
}

}  // namespace se_emu

#define threadIdx (::se_emu::thread_index())
#define blockIdx (::se_emu::block_index())
#define gridDim (::se_emu::grid_dim())

inline void __syncthreads() { ::se_emu::barrier(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  return ::se_emu::shfl_xor(mask, v, lane_mask);
}
