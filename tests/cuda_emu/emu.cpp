// The CPU emulation of se_fused's CUDA kernels (see emu_shim.h): the kernel
// headers of csrc/cuda compiled as host C++, with a fiber scheduler, a checked
// view of global memory and a C interface for tests/test_cuda_logic.py.
#include "emu_shim.h"

#include <ucontext.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "cuda/backward_kernel.cuh"
#include "cuda/forward_kernel.cuh"

namespace se_emu {
namespace {

constexpr int kThreads = se_fused::cuda::kThreads;
constexpr size_t kStackBytes = 256 * 1024;
constexpr int kIdleRounds = 2000;  // scheduler rounds without progress = deadlock

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  int tid = 0, slot = 0;
  bool waited = false;  // the thread passed wait_prior_grid (griddepcontrol.wait)
  bool done = true;
};

// A resident block: the state of one of the `concurrency` slots.
struct Block {
  int64_t index = -1;  // blockIdx.x, -1: idle
  int arrived = 0;
  uint64_t gen = 0;
  int warp_arrived[kThreads / 32] = {};
  uint64_t warp_gen[kThreads / 32] = {};
  uint64_t slots[kThreads] = {};
  std::vector<unsigned char> smem;
};

struct Region {
  const unsigned char *lo, *hi;
  bool writable;
  std::string name;
  bool after_wait = false;  // written by the kernel before: only after wait_prior_grid
};

struct Launch {
  std::vector<std::unique_ptr<Fiber>> fibers;
  std::vector<Block> blocks;
  Fiber* cur = nullptr;
  ucontext_t sched;
  std::function<void()> body;
  unsigned grid = 1;
  uint64_t progress = 0;
  bool failed = false;
  std::string error;
  std::vector<Region> regions;
  bool writes_after_wait = false;  // no store before wait_prior_grid (launch 2: y may be x)
};

Launch* g = nullptr;

void yield() { swapcontext(&g->cur->ctx, &g->sched); }

void fiber_entry() {
  Fiber* f = g->cur;
  g->body();
  f->done = true;
  ++g->progress;
  swapcontext(&f->ctx, &g->sched);
}

void start_block(Launch& L, int slot, int64_t index) {
  Block& b = L.blocks[size_t(slot)];
  std::vector<unsigned char> smem = std::move(b.smem);
  b = Block();
  b.index = index;
  b.smem = std::move(smem);
  std::fill(b.smem.begin(), b.smem.end(), 0xff);  // NaN-filled: unstaged reads show
  for (int t = 0; t < kThreads; ++t) {
    Fiber* f = L.fibers[size_t(slot) * kThreads + size_t(t)].get();
    f->done = false;
    f->waited = false;
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack.get();
    f->ctx.uc_stack.ss_size = kStackBytes;
    f->ctx.uc_link = nullptr;
    makecontext(&f->ctx, fiber_entry, 0);
  }
}

// Runs body() for blocks 0 .. grid-1, `concurrency` of them resident at a time, in
// a seeded random order, their threads interleaved at every barrier and shuffle;
// false (and g->error) on a failure.
bool run_grid(Launch& L, int64_t grid, int concurrency, uint64_t seed) {
  L.grid = unsigned(grid);
  const int slots = int(std::max<int64_t>(1, std::min<int64_t>(concurrency, grid)));
  L.blocks.assign(size_t(slots), Block());
  L.fibers.clear();
  for (int b = 0; b < slots; ++b) {
    for (int t = 0; t < kThreads; ++t) {
      auto f = std::make_unique<Fiber>();
      f->tid = t;
      f->slot = b;
      f->stack.reset(new char[kStackBytes]);
      L.fibers.push_back(std::move(f));
    }
  }
  std::mt19937_64 rng(seed);
  std::vector<int64_t> order(size_t(std::max<int64_t>(grid, 0)));
  for (size_t i = 0; i < order.size(); ++i) order[i] = int64_t(i);
  std::shuffle(order.begin(), order.end(), rng);
  size_t next = 0;
  for (int b = 0; b < slots && next < order.size(); ++b) start_block(L, b, order[next++]);
  std::vector<size_t> fo(L.fibers.size());
  for (size_t i = 0; i < fo.size(); ++i) fo[i] = i;
  int idle = 0;
  for (;;) {
    std::shuffle(fo.begin(), fo.end(), rng);
    const uint64_t before = L.progress;
    bool any = false;
    for (size_t i : fo) {
      Fiber* f = L.fibers[i].get();
      if (f->done) continue;
      any = true;
      L.cur = f;
      swapcontext(&L.sched, &f->ctx);
      if (L.failed) return false;
    }
    for (int b = 0; b < slots; ++b) {  // finished blocks make room for the next ones
      Block& blk = L.blocks[size_t(b)];
      if (blk.index < 0) continue;
      bool done = true;
      for (int t = 0; t < kThreads && done; ++t) done = L.fibers[size_t(b) * kThreads + t]->done;
      if (!done) continue;
      blk.index = -1;
      if (next < order.size()) {
        start_block(L, b, order[next++]);
        any = true;
      }
    }
    if (!any) return true;
    if (L.progress == before) {
      if (++idle > kIdleRounds) {
        L.error = "deadlock: no thread made progress (a barrier not reached by every thread)";
        return false;
      }
    } else {
      idle = 0;
    }
  }
}

}  // namespace

Dim3 thread_index() { return {unsigned(g->cur->tid), 0, 0}; }
Dim3 block_index() { return {unsigned(g->blocks[size_t(g->cur->slot)].index), 0, 0}; }
Dim3 grid_dim() { return {g->grid, 1, 1}; }

void fail(const std::string& what) {
  if (!g->failed) {
    g->failed = true;
    g->error = what + " (block " + std::to_string(g->blocks[size_t(g->cur->slot)].index) +
               ", thread " +
               std::to_string(g->cur->tid) + ")";
  }
  swapcontext(&g->cur->ctx, &g->sched);
  std::abort();  // never resumed
}

void barrier() {
  Block& b = g->blocks[size_t(g->cur->slot)];
  const uint64_t gen = b.gen;
  if (++b.arrived == kThreads) {
    b.arrived = 0;
    ++b.gen;
    ++g->progress;
    return;
  }
  while (b.gen == gen) yield();
}

void warp_barrier() {
  Block& b = g->blocks[size_t(g->cur->slot)];
  const int w = g->cur->tid / 32;
  const uint64_t gen = b.warp_gen[w];
  if (++b.warp_arrived[w] == 32) {
    b.warp_arrived[w] = 0;
    ++b.warp_gen[w];
    ++g->progress;
    return;
  }
  while (b.warp_gen[w] == gen) yield();
}

void* warp_slot() { return &g->blocks[size_t(g->cur->slot)].slots[g->cur->tid]; }
void* warp_slot_of(int lane) {
  return &g->blocks[size_t(g->cur->slot)].slots[(g->cur->tid / 32) * 32 + lane];
}

}  // namespace se_emu

namespace se_fused {
namespace cuda {

void emu_check_access(const void* p, int bytes, bool write) {
  using se_emu::g;
  const auto* a = static_cast<const unsigned char*>(p);
  if (reinterpret_cast<uintptr_t>(p) % uintptr_t(bytes) != 0) {
    se_emu::fail("misaligned " + std::to_string(bytes) + "-byte access");
  }
  for (const auto& r : g->regions) {
    if (a >= r.lo && a + bytes <= r.hi) {
      if (write && !r.writable) se_emu::fail("write to read-only buffer " + r.name);
      if ((r.after_wait || (write && g->writes_after_wait)) && !g->cur->waited) {
        se_emu::fail(std::string(write ? "write to " : "read of ") + r.name +
                     " before wait_prior_grid (programmatic dependent launch)");
      }
      return;
    }
  }
  se_emu::fail(std::string(write ? "write" : "read") + " of " + std::to_string(bytes) +
               " bytes outside every buffer");
}

void emu_grid_wait() { se_emu::g->cur->waited = true; }

unsigned char* emu_block_shared(int bytes) {
  auto& smem = se_emu::g->blocks[size_t(se_emu::g->cur->slot)].smem;
  if (smem.empty()) smem.assign(size_t(bytes), 0xff);  // NaN-filled: unstaged reads show
  if (smem.size() != size_t(bytes)) se_emu::fail("two sizes of block shared memory");
  return smem.data();
}

}  // namespace cuda
}  // namespace se_fused

// ---- the C interface ------------------------------------------------------------

namespace {

using namespace se_fused::cuda;

// Tensor slots of EmuArgs::t. Forward: x, res, y, z, pre. Backward: gy, v, mask, gx,
// gres, z, gw1, gb1, gw2, gb2, and pre at 14. Both: w1, b1, w2, b2 at 10..13.
enum Slot { kX = 0, kRes, kY, kZ, kPre };
enum BSlot { kGy = 0, kV, kMask, kGx, kGres, kBz, kGw1, kGb1, kGw2, kGb2 };
enum PSlot { kW1 = 10, kB1, kW2, kB2, kBpre, kSlots = 16 };

}  // namespace

extern "C" {

struct EmuArgs {
  int64_t N, C, H, W, R;
  int32_t dtype, channels_last, act, gate, relu, from_y, backward, one_layer, concurrency;
  int32_t samples2;
  int64_t l2_bytes, slots;
  uint64_t seed;
  void* t[kSlots];
  int64_t bytes[kSlots];
};

struct EmuPlan {
  int64_t grid1, grid2, ws_size, n_counters, CTw, CTn, Tp, CG, CGn, NT, M2, CTw2, CTn2, Tp2,
      grid0, wg_split, wg_n;
  int32_t vec, keep, reverse, long_rows, stack2;
};

}  // extern "C"

namespace {

bool aligned(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

Plan plan_of(const EmuArgs& a) {
  static const int kEsize[4] = {4, 2, 2, 8};
  const int esize = kEsize[a.dtype];
  bool vec = true;
  // forward: x, res, y; backward: gy, v, mask, gx, gres
  for (int s = 0; s <= (a.backward ? int(kGres) : int(kY)); ++s) vec = vec && aligned(a.t[s]);
  const int64_t numel = a.N * a.C * a.H * a.W * esize;
  const int64_t reread = a.backward ? numel * (a.t[kMask] != nullptr ? 2 : 1) : numel;
  PlanInput in{a.N,   a.C,  a.H * a.W,          a.R, a.channels_last != 0, a.backward != 0,
               a.one_layer != 0, esize, vec, reread <= a.l2_bytes / 2, a.samples2,
               a.slots};
  return make_plan(in);
}

template <typename T, bool CL, bool Flag>
void set_kernels(se_emu::Launch& L1, se_emu::Launch& L2, const EmuArgs& a, const Plan& plan,
                 void* ws, uint32_t* counters) {
  if (!a.backward) {
    ForwardLaunch l{};
    l.plan = plan;
    l.x = a.t[kX];
    l.res = a.t[kRes];
    l.y = a.t[kY];
    l.z = a.t[kZ];
    l.pre = a.t[kPre];
    l.w1 = a.t[kW1], l.b1 = a.t[kB1], l.w2 = a.t[kW2], l.b2 = a.t[kB2];
    l.act = se_fused::Act(a.act), l.gate = se_fused::Gate(a.gate), l.relu = a.relu != 0;
    l.workspace = ws;
    l.counters = counters;
    const ForwardParams<T> p = forward_params<T>(l);
    L1.body = [p]() { se_squeeze_kernel<T, CL>(p); };
    L2.body = [p]() { se_scale_kernel<T, CL, Flag>(p); };
  } else {
    BackwardLaunch l{};
    l.plan = plan;
    l.gy = a.t[kGy], l.v = a.t[kV], l.mask = a.t[kMask];
    l.gx = a.t[kGx], l.gres = a.t[kGres], l.z = a.t[kBz], l.pre = a.t[kBpre];
    l.w1 = a.t[kW1], l.b1 = a.t[kB1], l.w2 = a.t[kW2], l.b2 = a.t[kB2];
    l.gw1 = a.t[kGw1], l.gb1 = a.t[kGb1], l.gw2 = a.t[kGw2], l.gb2 = a.t[kGb2];
    l.act = se_fused::Act(a.act), l.gate = se_fused::Gate(a.gate), l.from_y = a.from_y != 0;
    l.workspace = ws;
    l.counters = counters;
    const BackwardParams<T> p = backward_params<T>(l);
    L1.body = [p]() { se_reduce_kernel<T, CL, Flag>(p); };
    L2.body = [p]() { se_map_kernel<T, CL, Flag>(p); };
  }
}

template <typename T>
void select_kernels(se_emu::Launch& L1, se_emu::Launch& L2, const EmuArgs& a, const Plan& plan,
                    void* ws, uint32_t* counters) {
  const bool flag = a.backward ? a.t[kMask] != nullptr : a.t[kRes] != nullptr;
  SE_BOOL_SWITCH(a.channels_last != 0, CL, [&] {
    SE_BOOL_SWITCH(flag, Flag, [&] { set_kernels<T, CL, Flag>(L1, L2, a, plan, ws, counters); });
  });
}

// The buffers kernel `k` of a pass may touch (0: the zeroing kernel, 1 and 2: the
// launches). Under programmatic dependent launch, kernel k may run while kernel k - 1
// still does: what k - 1 writes (launch 1: the counters; launch 2: the counters, the
// workspace, and the forward's z and pre) is reachable only after wait_prior_grid,
// and launch 2 stores nothing before it.
void add_regions(se_emu::Launch& L, const EmuArgs* a, std::vector<unsigned char>& ws,
                 std::vector<uint32_t>& counters, int k) {
  static const char* kNames[kSlots] = {"t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7",
                                       "t8", "t9", "w1", "b1", "w2", "b2", "t14", "t15"};
  for (int s = 0; s < kSlots; ++s) {
    if (a->t[s] == nullptr || a->bytes[s] <= 0) continue;
    bool writable;
    if (a->backward) {
      writable = s >= kGx && s <= kGb2 && s != kBz;
    } else {
      writable = s == kY || s == kZ || s == kPre || (s == kX && a->t[kX] == a->t[kY]);
    }
    const auto* lo = static_cast<const unsigned char*>(a->t[s]);
    const bool from_launch_1 = !a->backward && (s == kZ || s == kPre);
    L.regions.push_back({lo, lo + a->bytes[s], writable, kNames[s], k == 2 && from_launch_1});
  }
  L.regions.push_back({ws.data(), ws.data() + ws.size(), true, "workspace", k == 2});
  const auto* c0 = reinterpret_cast<const unsigned char*>(counters.data());
  L.regions.push_back({c0, c0 + counters.size() * 4, true, "counters", k >= 1});
  L.writes_after_wait = k == 2;
}

}  // namespace

extern "C" {

// The plan the CUDA host code would make for this call (no kernel run).
int se_emu_plan(const EmuArgs* a, EmuPlan* out) {
  const Plan p = plan_of(*a);
  *out = EmuPlan{p.grid1,  p.grid2,   p.ws_size, p.n_counters, p.t.CTw,  p.t.CTn,
                 p.t.Tp,   p.CG,      p.CGn,     p.NT,         p.M2,     p.t2.CTw,
                 p.t2.CTn, p.t2.Tp,   p.grid0,   p.wg_split,   p.wg_n,   p.vec,
                 p.keep,   p.reverse, p.t.long_rows, p.stack2};
  return 0;
}

uint64_t se_emu_fastdiv(uint64_t a, uint64_t d) { return FastDiv::of(d).div(a); }

// Runs the pass's three kernels (zero the counters, launch 1, launch 2) in order on
// host buffers, the workspace NaN-filled and the counters poisoned (the zeroing
// kernel must clear them). 0 on success, else 1 and a message in err.
int se_emu_run(const EmuArgs* a, char* err, int errlen) {
  const Plan plan = plan_of(*a);
  const size_t acc = a->dtype == 3 ? 8 : 4;
  std::vector<unsigned char> ws(size_t(plan.ws_size) * acc + 16);
  std::memset(ws.data(), 0xff, ws.size());
  std::vector<uint32_t> counters(size_t(std::max<int64_t>(plan.n_counters, 1)), 0xdeadbeefu);

  se_emu::Launch L0, L1, L2;
  add_regions(L0, a, ws, counters, 0);
  add_regions(L1, a, ws, counters, 1);
  add_regions(L2, a, ws, counters, 2);
  uint32_t* cp = counters.data();
  const int64_t nc = plan.n_counters;
  L0.body = [cp, nc]() { se_zero_kernel<uint32_t>(cp, nc); };
  void* wsp = ws.data();
  SE_DTYPE_SWITCH(se_fused::DType(a->dtype), T,
                  [&] { select_kernels<T>(L1, L2, *a, plan, wsp, counters.data()); });
  const int64_t grids[3] = {plan.grid0, plan.grid1, plan.grid2};
  se_emu::Launch* launches[3] = {&L0, &L1, &L2};
  for (int i = 0; i < 3; ++i) {
    se_emu::g = launches[i];
    const bool ok = se_emu::run_grid(*launches[i], grids[i], a->concurrency, a->seed + i);
    se_emu::g = nullptr;
    if (!ok) {
      std::snprintf(err, size_t(errlen), "launch %d: %s", i, launches[i]->error.c_str());
      return 1;
    }
    if (i == 1) {
      // every tile counted in, so every finalizer ran exactly once
      const bool sample_stage = !(plan.backward && plan.one_layer);
      for (int64_t st = 0; st < plan.NST; ++st) {
        for (int64_t cg = 0; cg < plan.CGn; ++cg) {
          const uint32_t got = counters[size_t(plan.cnt_group + st * plan.CGn + cg)];
          if (got != plan.group_arrivals(st, cg)) {
            std::snprintf(err, size_t(errlen), "group counter (%lld, %lld) is %u, expected %u",
                          static_cast<long long>(st), static_cast<long long>(cg), got,
                          plan.group_arrivals(st, cg));
            return 1;
          }
        }
        const uint32_t got = counters[size_t(plan.cnt_sample + st)];
        if (got != (sample_stage ? uint32_t(plan.CGn) : 0u)) {
          std::snprintf(err, size_t(errlen), "sample counter %lld is %u",
                        static_cast<long long>(st), got);
          return 1;
        }
      }
    }
    if (i == 2 && plan.wg_split > 1) {
      // every split of every weight-gradient tile counted in
      for (int64_t k = 0; k < plan.n_gw1 + plan.n_gw2; ++k) {
        const uint32_t got = counters[size_t(plan.cnt_wg + k)];
        if (got != uint32_t(plan.wg_split)) {
          std::snprintf(err, size_t(errlen), "weight-gradient counter %lld is %u",
                        static_cast<long long>(k), got);
          return 1;
        }
      }
    }
  }
  return 0;
}

}  // extern "C"
