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

namespace se_emu {
namespace {

constexpr int kThreads = se_fused::cuda::kThreads;
constexpr size_t kStackBytes = 256 * 1024;
constexpr int kIdleRounds = 2000;  // scheduler rounds without progress = deadlock

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  int tid = 0, block = 0;
  bool done = false;
};

struct Block {
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

// Runs body() as grid x 256 fibers; false (and g->error) on a failure.
bool run_grid(Launch& L, unsigned grid, uint64_t seed) {
  L.grid = grid;
  L.blocks.assign(grid, Block());
  for (unsigned b = 0; b < grid; ++b) {
    for (int t = 0; t < kThreads; ++t) {
      auto f = std::make_unique<Fiber>();
      f->tid = t;
      f->block = int(b);
      f->stack.reset(new char[kStackBytes]);
      getcontext(&f->ctx);
      f->ctx.uc_stack.ss_sp = f->stack.get();
      f->ctx.uc_stack.ss_size = kStackBytes;
      f->ctx.uc_link = nullptr;
      makecontext(&f->ctx, fiber_entry, 0);
      L.fibers.push_back(std::move(f));
    }
  }
  std::mt19937_64 rng(seed);
  std::vector<size_t> order(L.fibers.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  int idle = 0;
  for (;;) {
    std::shuffle(order.begin(), order.end(), rng);
    const uint64_t before = L.progress;
    bool any = false;
    for (size_t i : order) {
      Fiber* f = L.fibers[i].get();
      if (f->done) continue;
      any = true;
      L.cur = f;
      swapcontext(&L.sched, &f->ctx);
      if (L.failed) return false;
    }
    if (!any) return true;
    if (L.progress == before) {
      if (++idle > kIdleRounds) {
        L.error = "deadlock: no thread made progress (a wait on a later ticket, or a barrier "
                  "not reached by every thread)";
        return false;
      }
    } else {
      idle = 0;
    }
  }
}

}  // namespace

Dim3 thread_index() { return {unsigned(g->cur->tid), 0, 0}; }
Dim3 block_index() { return {unsigned(g->cur->block), 0, 0}; }
Dim3 grid_dim() { return {g->grid, 1, 1}; }

void fail(const std::string& what) {
  if (!g->failed) {
    g->failed = true;
    g->error = what + " (block " + std::to_string(g->cur->block) + ", thread " +
               std::to_string(g->cur->tid) + ")";
  }
  swapcontext(&g->cur->ctx, &g->sched);
  std::abort();  // never resumed
}

void barrier() {
  Block& b = g->blocks[g->cur->block];
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
  Block& b = g->blocks[g->cur->block];
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

void* warp_slot() { return &g->blocks[g->cur->block].slots[g->cur->tid]; }
void* warp_slot_of(int lane) {
  return &g->blocks[g->cur->block].slots[(g->cur->tid / 32) * 32 + lane];
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
      return;
    }
  }
  se_emu::fail(std::string(write ? "write" : "read") + " of " + std::to_string(bytes) +
               " bytes outside every buffer");
}

void emu_spin_wait() { se_emu::yield(); }
void emu_counter_changed() { ++se_emu::g->progress; }

unsigned char* emu_block_shared(int bytes) {
  auto& smem = se_emu::g->blocks[se_emu::g->cur->block].smem;
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
// gres, z, gw1, gb1, gw2, gb2. Both: w1, b1, w2, b2 at 10..13.
enum Slot { kX = 0, kRes, kY, kZ, kPre };
enum BSlot { kGy = 0, kV, kMask, kGx, kGres, kBz, kGw1, kGb1, kGw2, kGb2 };
enum PSlot { kW1 = 10, kB1, kW2, kB2, kSlots = 16 };

}  // namespace

extern "C" {

struct EmuArgs {
  int64_t N, C, H, W, R;
  int32_t dtype, channels_last, act, gate, relu, from_y, backward, grid;
  int64_t wave_bytes;
  uint64_t seed;
  void* t[kSlots];
  int64_t bytes[kSlots];
};

struct EmuPlan {
  int64_t total, waves, wave_samples, tile_samples, per_sample, ws_size, n_counters;
  int32_t vec, long_rows, stage_s, seg_lanes, seg_groups;
};

}  // extern "C"

namespace {

bool aligned(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

Plan plan_of(const EmuArgs& a) {
  static const int kEsize[4] = {4, 2, 2, 8};
  bool vec = true;
  const int streamed[] = {0, 1, 2, 3, 4};  // forward: x, res, y; backward: gy, v, mask, gx, gres
  for (int s : streamed) {
    if (!a.backward && s > kY) break;
    vec = vec && aligned(a.t[s]);
  }
  PlanInput in{a.N,       a.C, a.H * a.W,          a.R, a.channels_last != 0, a.backward != 0,
               a.backward && a.t[kMask] != nullptr, kEsize[a.dtype], vec, a.wave_bytes};
  return make_plan(in);
}

template <typename T, bool CL, bool Flag>
void run_kernel(se_emu::Launch& L, const EmuArgs& a, const Plan& plan, void* ws,
                uint32_t* counters) {
  if (!a.backward) {
    ForwardLaunch l{};
    l.plan = plan;
    l.x = a.t[kX];
    l.res = a.t[kRes];
    l.y = a.t[kY];
    l.z = a.t[kZ];
    l.pre = a.t[kPre];
    l.w1 = a.t[kW1], l.b1 = a.t[kB1], l.w2 = a.t[kW2], l.b2 = a.t[kB2];
    l.act = a.act, l.gate = a.gate, l.relu = a.relu != 0;
    l.workspace = ws;
    l.counters = counters;
    const ForwardParams<T> p = forward_params<T>(l);
    L.body = [p]() { se_forward_kernel<T, CL, Flag>(p); };
  } else {
    BackwardLaunch l{};
    l.plan = plan;
    l.gy = a.t[kGy], l.v = a.t[kV], l.mask = a.t[kMask];
    l.gx = a.t[kGx], l.gres = a.t[kGres], l.z = a.t[kBz];
    l.w1 = a.t[kW1], l.b1 = a.t[kB1], l.w2 = a.t[kW2], l.b2 = a.t[kB2];
    l.gw1 = a.t[kGw1], l.gb1 = a.t[kGb1], l.gw2 = a.t[kGw2], l.gb2 = a.t[kGb2];
    l.act = a.act, l.gate = a.gate, l.from_y = a.from_y != 0;
    l.workspace = ws;
    l.counters = counters;
    const BackwardParams<T> p = backward_params<T>(l);
    L.body = [p]() { se_backward_kernel<T, CL, Flag>(p); };
  }
}

template <typename T>
void select_kernel(se_emu::Launch& L, const EmuArgs& a, const Plan& plan, void* ws,
                   uint32_t* counters) {
  const bool flag = a.backward ? a.t[kMask] != nullptr : a.t[kRes] != nullptr;
  if (a.channels_last) {
    flag ? run_kernel<T, true, true>(L, a, plan, ws, counters)
         : run_kernel<T, true, false>(L, a, plan, ws, counters);
  } else {
    flag ? run_kernel<T, false, true>(L, a, plan, ws, counters)
         : run_kernel<T, false, false>(L, a, plan, ws, counters);
  }
}

}  // namespace

extern "C" {

// The plan the CUDA host code would make for this call (no kernel run).
int se_emu_plan(const EmuArgs* a, EmuPlan* out) {
  const Plan p = plan_of(*a);
  *out = EmuPlan{p.total,       p.W,          p.WS,          p.NT,          p.st.per_sample,
                 p.ws_size,     p.n_counters, p.st.vec,      p.st.long_rows, p.st.stage_s,
                 p.st.seg_lanes, p.st.seg_groups};
  return 0;
}

// decode() of every ticket, and the two properties the kernels rely on: every
// (stage, wave, index) appears exactly once, and every dependency of an item has
// only smaller tickets (so no block waits for a block that may not be running).
// Returns the number of violations; the decoded items go to the arrays.
int64_t se_emu_schedule(const EmuArgs* a, int32_t* stage, int32_t* wave, uint32_t* index,
                        int64_t cap) {
  const Plan p = plan_of(*a);
  if (p.total > cap) return -1;
  // last ticket of each (stage, wave), and how many of its items were seen
  std::vector<int64_t> last(size_t(kNumStages) * (p.W + 1), -1), seen(last.size(), 0);
  auto key = [&](int s, int w) { return size_t(s) * (p.W + 1) + size_t(w < 0 ? p.W : w); };
  int64_t bad = 0;
  for (int64_t t = 0; t < p.total; ++t) {
    const Item it = p.decode(uint32_t(t));
    stage[t] = it.stage, wave[t] = it.wave, index[t] = it.index;
    if (it.stage < 0 || it.index >= p.count(it.stage, it.wave)) {
      ++bad;
      continue;
    }
    last[key(it.stage, it.wave)] = t;
    ++seen[key(it.stage, it.wave)];
  }
  for (int s = 0; s < kNumStages; ++s) {
    if ((s >= kBwdFc1) != p.backward) continue;  // the other pass's stages
    for (int w = 0; w <= p.W; ++w) {
      const int64_t want = p.count(s, w);
      if (seen[key(s, w)] != want) ++bad;
    }
  }
  for (int64_t t = 0; t < p.total; ++t) {
    const Item it = p.decode(uint32_t(t));
    for (int i = 0; i < 2; ++i) {
      int s, w;
      if (p.dependency(it, i, &s, &w) && last[key(s, w)] >= t) ++bad;
    }
    if (it.stage == kBwdWeights) {
      for (int w = 0; w < p.W; ++w) {
        if (last[key(kBwdGate, w)] >= t) ++bad;
      }
    }
  }
  return bad;
}

uint64_t se_emu_fastdiv(uint64_t a, uint64_t d) { return FastDiv::of(d).div(a); }

// Runs the forward or backward kernel on host buffers. 0 on success, else 1 and a
// message in err.
int se_emu_run(const EmuArgs* a, char* err, int errlen) {
  const Plan plan = plan_of(*a);
  const size_t acc = a->dtype == 3 ? 8 : 4;
  std::vector<unsigned char> ws(size_t(plan.ws_size) * acc + 16);
  // NaN-filled workspace: a stage that reads a value nobody wrote shows it.
  std::memset(ws.data(), 0xff, ws.size());
  std::vector<uint32_t> counters(size_t(plan.n_counters), 0u);

  se_emu::Launch L;
  se_emu::g = &L;
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
    L.regions.push_back({lo, lo + a->bytes[s], writable, kNames[s]});
  }
  L.regions.push_back({ws.data(), ws.data() + ws.size(), true, "workspace"});
  const auto* c0 = reinterpret_cast<const unsigned char*>(counters.data());
  L.regions.push_back({c0, c0 + counters.size() * 4, true, "counters"});

  void* wsp = ws.data();
  switch (a->dtype) {
    case 0: select_kernel<float>(L, *a, plan, wsp, counters.data()); break;
    case 1: select_kernel<c10::Half>(L, *a, plan, wsp, counters.data()); break;
    case 2: select_kernel<c10::BFloat16>(L, *a, plan, wsp, counters.data()); break;
    default: select_kernel<double>(L, *a, plan, wsp, counters.data()); break;
  }
  const unsigned grid = unsigned(std::max<int64_t>(1, std::min<int64_t>(a->grid, plan.total)));
  const bool ok = se_emu::run_grid(L, grid, a->seed);
  se_emu::g = nullptr;
  if (!ok) {
    std::snprintf(err, size_t(errlen), "%s", L.error.c_str());
    return 1;
  }
  if (counters[0] < plan.total) {
    std::snprintf(err, size_t(errlen), "only %u of %lld tickets were claimed", counters[0],
                  static_cast<long long>(plan.total));
    return 1;
  }
  return 0;
}

}  // extern "C"
