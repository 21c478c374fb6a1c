// Fused SE forward and backward on the CPU.
//
// Three steps per group of samples: a streaming pass that sums each (sample,
// channel) over H*W (the squeeze; in the backward, sum_hw g * x), the small
// layers for the whole group as matrix products (se_cpu_gemm.h: the weights are
// read once per group, not once per sample), and a second streaming pass that
// writes y (grad_x) while the group is still in cache. The streaming passes
// work on contiguous runs (se_cpu_rows.h): H*W rows in NCHW, C-vectors of one
// pixel in channels_last.
//
// With at least two samples per thread, each thread takes a contiguous share of
// the batch and runs all three steps on its own groups: one parallel region per
// call, no barrier, each group re-read from that core's caches, and one thread's
// streaming overlaps the other's matrix products. Smaller batches split each
// step over the threads instead (rows, pixel chunks, outputs of the layers).
//
// Every sum has an order fixed by the shape alone (a row, a pixel chunk, one
// output of a matrix product), so both schedules, any thread count and any
// group size give the same bits.
// gcc 12 reports the self-initialised "undefined" vectors inside its own AVX-512
// intrinsics (_mm512_reduce_add_ps, _mm512_max_ps) as uninitialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/se_cpu_gemm.h"
#include "cpu/se_cpu_rows.h"
#include "se_entry.h"

namespace se_fused {
namespace {

using cpu::gemm_nn;
using cpu::gemm_nt;

// Samples per group when each thread runs its own groups. A group is read twice
// (squeeze, then scale), and only a core's private L2 keeps it reliably between
// the two reads on this VM (the shared L3 gave no measurable gain); the small
// layers read all the weights once per group. So a group spans about as many
// bytes as the weights: one sample when the weights are smaller than a sample,
// more as they grow (measured on the deep stages in docs/NOTES.md).
// n: the samples of one thread; its groups are made equal in size.
int64_t thread_group_size(int64_t sample_bytes, int64_t weight_bytes, int64_t n) {
  n = std::max<int64_t>(1, n);
  const int64_t want = std::clamp<int64_t>(
      (weight_bytes + sample_bytes - 1) / std::max<int64_t>(1, sample_bytes), 1, n);
  const int64_t groups = (n + want - 1) / want;
  return (n + groups - 1) / groups;
}
// Outputs in [kStreamBytes, kFreshBytes) are written with streaming stores: they
// do not stay in the caches anyway, and streaming skips reading their old lines
// (SE-ResNet-50 s3 at N = 32, 25 MiB, NCHW: forward 1.94 -> 1.58 ms). From 32 MiB
// on, glibc maps every such allocation afresh, the kernel zeroes each new page
// through the cache, and streaming stores then only add a write (s1, 98 MiB:
// 30.9 -> 32.5 ms).
constexpr int64_t kStreamBytes = int64_t(16) << 20;
constexpr int64_t kFreshBytes = int64_t(32) << 20;
// The same for a group split over all threads (small batches).
constexpr int64_t kSharedGroupBytes = int64_t(6) << 20;
// Elements (or multiply-adds) a parallel task should at least cover to amortise
// scheduling.
constexpr int64_t kTaskElements = 16384;

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, work_per_item));
}

// Pixel chunks per sample for channels_last sums; depends on the shape only
// (never on the thread count) so the summation order is fixed.
int64_t pixel_chunks(int64_t hw, int64_t c) {
  return std::clamp<int64_t>(hw * c / kTaskElements, 1, std::min<int64_t>(hw, 64));
}

// Samples per group; whole samples, at least one.
int64_t group_size(int64_t budget, int64_t sample_bytes, int64_t n) {
  return std::clamp<int64_t>(budget / std::max<int64_t>(1, sample_bytes), 1, std::max<int64_t>(1, n));
}

// Each thread takes whole samples when it gets at least two and the batch
// divides evenly enough that no thread waits long for another.
bool per_thread_schedule(int64_t N) {
  const int64_t threads = at::get_num_threads();
  return threads > 1 && !at::in_parallel_region() && N >= 2 * threads;
}

int64_t thread_share(int64_t N) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return (N + threads - 1) / threads;
}

// Intermediates (the small layers' vectors, pixel-chunk sums: at most a few MiB)
// live in buffers of the calling thread kept across calls, one per use (kSlot),
// so that a call allocates nothing beyond its outputs: a fresh buffer of more
// than 128 KiB is mmap'ed and page-faulted by glibc on every call, and its
// release moves glibc's thresholds, which decides whether y's own memory is
// reused or faulted in again (measured: 0.39 vs 0.58 ms at EfficientNet-B0 s6.1).
enum Slot { kCallSlot = 0, kTaskSlot = 1, kChunkSlot = 2, kSlots = 3 };

template <typename T>
T* scratch(Slot slot, int64_t n) {
  thread_local std::vector<T> buffers[kSlots];
  std::vector<T>& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
  return b.data();
}

template <typename acc_t>
struct Params {
  const acc_t* w1;  // (R, C)
  const acc_t* b1;  // (R,) or nullptr
  const acc_t* w2;  // (C, R), nullptr in the one-layer form
  const acc_t* b2;  // (C,) or nullptr
};

// ---- channels_last sums over a sample's pixels ---------------------------------

// out[c] = sum over the pixels of sample n of v(pixel_offset)[c] via `add(pixel, part)`,
// summed chunk by chunk: each chunk from zero in pixel order, the chunks in order.
// One thread; split_pixel_sums below gives the same bits with the chunks in parallel.
template <typename acc_t, typename Add>
void pixel_sums_serial(int64_t HW, int64_t C, int64_t P, const Add& add, acc_t* part,
                       acc_t* out) {
  std::fill(out, out + C, acc_t(0));
  for (int64_t p = 0; p < P; ++p) {
    std::fill(part, part + C, acc_t(0));
    for (int64_t pix = HW * p / P; pix < HW * (p + 1) / P; ++pix) add(pix, part);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) out[c] += part[c];
  }
}

// The same sums for g samples (add(n, pixel, part)), chunks spread over threads.
template <typename acc_t, typename Add>
void pixel_sums_split(int64_t g, int64_t HW, int64_t C, int64_t P, const Add& add,
                      acc_t* out) {
  acc_t* partial = scratch<acc_t>(kChunkSlot, g * P * C);
  std::fill(partial, partial + g * P * C, acc_t(0));
  at::parallel_for(0, g * P, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / P, p = t % P;
      acc_t* part = partial + t * C;
      for (int64_t pix = HW * p / P; pix < HW * (p + 1) / P; ++pix) add(n, pix, part);
    }
  });
  at::parallel_for(0, g * C, grain_for(P), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / C, c = i % C;
      acc_t s = 0;
      for (int64_t p = 0; p < P; ++p) s += partial[(n * P + p) * C + c];
      out[i] = s;
    }
  });
}

// Multiply-adds a parallel task of the small layers should at least have: below
// that a fork and join (and the second core reading the weights too) costs more
// than it saves (one sample of SE-ResNet-50 s4, 2 x 262144, runs on one core).
constexpr int64_t kLayerTaskMacs = int64_t(1) << 18;

// Outputs of one small layer per parallel task, for g samples of K inputs each.
int64_t layer_grain(int64_t g, int64_t K) {
  return std::max<int64_t>(4, kLayerTaskMacs / std::max<int64_t>(1, g * K));
}

// The two small layers' products for samples [n0, n0 + g), outputs [j0, j1), into
// pre (N, R + C) = [a1 | a2]: the forward's, and the backward's when it recomputes
// them (so the backward recomputes the forward's bits). layer1 also gives h = act(a1),
// layer2's input. The one-layer form has no second product: a2 is a1 (and h, since its
// activation is the identity).
template <typename acc_t>
void layer1(const SEArgs& a, const Params<acc_t>& p, const acc_t* z, int64_t n0, int64_t g,
            int64_t j0, int64_t j1, acc_t* pre, acc_t* h) {
  const int64_t C = a.C, R = a.R, RC = R + C;
  gemm_nt(z + n0 * C, C, g, p.w1, C, j0, j1, C, p.b1, pre + n0 * RC, RC);
  for (int64_t i = n0; i < n0 + g; ++i)
    for (int64_t j = j0; j < j1; ++j) h[i * R + j] = act_forward(a.act, pre[i * RC + j]);
}

template <typename acc_t>
void layer2(const SEArgs& a, const Params<acc_t>& p, const acc_t* h, int64_t n0, int64_t g,
            int64_t j0, int64_t j1, acc_t* pre) {
  const int64_t C = a.C, R = a.R, RC = R + C;
  if (a.one_layer) {
    for (int64_t i = n0; i < n0 + g; ++i)
      for (int64_t j = j0; j < j1; ++j) pre[i * RC + R + j] = pre[i * RC + j];
    return;
  }
  gemm_nt(h + n0 * R, R, g, p.w2, R, j0, j1, R, p.b2, pre + n0 * RC + R, RC);
}

// ---- forward ---------------------------------------------------------------

// pre (N, R + C) receives a1 and a2, the layers' outputs before act and gate.
template <typename scalar_t>
void forward_kernel(const SEArgs& a, const scalar_t* x, const scalar_t* res, scalar_t* y,
                    at::opmath_type<scalar_t>* z, at::opmath_type<scalar_t>* pre,
                    const Params<at::opmath_type<scalar_t>>& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = a.N, C = a.C, HW = a.hw(), R = a.R, sample = C * HW;
  const bool cl = a.channels_last;
  const int64_t P = cl ? pixel_chunks(HW, C) : 1;
  const int64_t sample_bytes = sample * int64_t(sizeof(scalar_t)) * (res ? 2 : 1);
  const int64_t weight_bytes = (a.one_layer ? 1 : 2) * R * C * int64_t(sizeof(acc_t));
  const acc_t inv_hw = acc_t(1) / acc_t(HW);
  acc_t* h = scratch<acc_t>(kCallSlot, N * (R + C));  // (N, R)
  acc_t* s = h + N * R;                 // (N, C)

  const int64_t RC = R + C;

  // Small layers of samples [n0, n0 + g), outputs [j0, j1) of one layer.
  auto fc1 = [&](int64_t n0, int64_t g, int64_t j0, int64_t j1) {
    layer1(a, p, z, n0, g, j0, j1, pre, h);
  };
  auto fc2 = [&](int64_t n0, int64_t g, int64_t j0, int64_t j1) {
    layer2(a, p, h, n0, g, j0, j1, pre);
    for (int64_t i = n0; i < n0 + g; ++i)
      for (int64_t j = j0; j < j1; ++j) s[i * C + j] = gate_forward(a.gate, pre[i * RC + R + j]);
  };

  SE_BOOL_SWITCH(res != nullptr, kRes, [&] {
    SE_BOOL_SWITCH(a.out_relu, kRelu, [&] {
      // rows n * C + c in [r0, r1) (NCHW), pixels n * HW + q in [q0, q1) (channels_last)
      auto scale_rows = [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t off = r * HW;
          cpu::row_scale<kRes, kRelu>(x + off, kRes ? res + off : nullptr, y + off, HW, s[r]);
        }
      };
      auto scale_pixels = [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t off = q * C;
          cpu::pix_scale<kRes, kRelu>(x + off, kRes ? res + off : nullptr, y + off,
                                      s + (q / HW) * C, C);
        }
      };

      if (per_thread_schedule(N)) {
        const int64_t G = thread_group_size(sample_bytes, weight_bytes, thread_share(N));
        const int64_t y_bytes = N * sample * int64_t(sizeof(scalar_t));
        const bool stream_y =
            cpu::can_stream(y, C, HW, cl) && y_bytes >= kStreamBytes && y_bytes < kFreshBytes;
        at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
          acc_t* part = scratch<acc_t>(kTaskSlot, cl ? C : 0);
          for (int64_t n0 = b; n0 < e; n0 += G) {
            const int64_t g = std::min(G, e - n0);
            for (int64_t n = n0; n < n0 + g; ++n) {
              acc_t* zn = z + n * C;
              if (cl) {
                const scalar_t* xn = x + n * sample;
                pixel_sums_serial<acc_t>(
                    HW, C, P,
                    [=](int64_t q, acc_t* pt) { cpu::pix_accumulate(xn + q * C, pt, C); },
                    part, zn);
                for (int64_t c = 0; c < C; ++c) zn[c] *= inv_hw;
              } else {
                for (int64_t c = 0; c < C; ++c)
                  zn[c] = cpu::row_sum<acc_t>(x + (n * C + c) * HW, HW) * inv_hw;
              }
            }
            fc1(n0, g, 0, R);
            fc2(n0, g, 0, C);
            if (stream_y) {
              cpu::scale_stream<kRes, kRelu>(x, res, y, s, n0, g, C, HW, cl);
            } else if (cl) {
              scale_pixels(n0 * HW, (n0 + g) * HW);
            } else {
              scale_rows(n0 * C, (n0 + g) * C);
            }
          }
        });
        return;
      }

      const int64_t G = group_size(kSharedGroupBytes, sample_bytes, N);
      for (int64_t n0 = 0; n0 < N; n0 += G) {
        const int64_t g = std::min(G, N - n0);
        acc_t* zg = z + n0 * C;
        if (cl) {
          const scalar_t* xg = x + n0 * sample;
          pixel_sums_split<acc_t>(
              g, HW, C, P,
              [=](int64_t n, int64_t q, acc_t* pt) {
                cpu::pix_accumulate(xg + (n * HW + q) * C, pt, C);
              },
              zg);
          for (int64_t i = 0; i < g * C; ++i) zg[i] *= inv_hw;
        } else {
          at::parallel_for(n0 * C, (n0 + g) * C, grain_for(HW), [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) z[r] = cpu::row_sum<acc_t>(x + r * HW, HW) * inv_hw;
          });
        }
        at::parallel_for(0, R, layer_grain(g, C),
                         [&](int64_t j0, int64_t j1) { fc1(n0, g, j0, j1); });
        at::parallel_for(0, C, layer_grain(g, R),
                         [&](int64_t j0, int64_t j1) { fc2(n0, g, j0, j1); });
        if (cl) {
          at::parallel_for(n0 * HW, (n0 + g) * HW, grain_for(C), scale_pixels);
        } else {
          at::parallel_for(n0 * C, (n0 + g) * C, grain_for(HW), scale_rows);
        }
      }
    });
  });
}

// ---- backward --------------------------------------------------------------

// pre_in: the forward's [a1 | a2] (N, R + C), or nullptr to recompute them from z.
template <typename scalar_t>
void backward_kernel(const SEArgs& a, const scalar_t* gy, const scalar_t* x, const scalar_t* y,
                     const at::opmath_type<scalar_t>* z, const at::opmath_type<scalar_t>* pre_in,
                     const Params<at::opmath_type<scalar_t>>& p, scalar_t* gx, scalar_t* gres,
                     at::opmath_type<scalar_t>* gw1, at::opmath_type<scalar_t>* gb1,
                     at::opmath_type<scalar_t>* gw2, at::opmath_type<scalar_t>* gb2) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = a.N, C = a.C, HW = a.hw(), R = a.R, sample = C * HW, RC = R + C;
  const bool cl = a.channels_last;
  const int64_t P = cl ? pixel_chunks(HW, C) : 1;
  const int64_t sample_bytes = sample * int64_t(sizeof(scalar_t)) * (y ? 3 : 2);
  const int64_t weight_bytes = (a.one_layer ? 1 : 2) * R * C * int64_t(sizeof(acc_t));
  const acc_t inv_hw = acc_t(1) / acc_t(HW);
  const bool per_thread = per_thread_schedule(N);
  const int64_t G = per_thread ? thread_group_size(sample_bytes, weight_bytes, thread_share(N))
                               : group_size(kSharedGroupBytes, sample_bytes, N);
  // Kept for the whole batch: the weight gradients are summed over it at the end.
  // Without pre_in, a1 and a2 are recomputed group by group into pre_buf.
  acc_t* h = scratch<acc_t>(kCallSlot, N * (2 * R + C) + (pre_in ? 0 : N * RC));  // (N, R)
  acc_t* da1 = h + N * R;                  // (N, R)
  acc_t* da2 = da1 + N * R;                // (N, C)
  acc_t* pre_buf = da2 + N * C;            // (N, R + C) without pre_in
  const acc_t* pre = pre_in ? pre_in : pre_buf;

  // One group's intermediates: dh (g, R); s, d (g, C); d holds sum_hw g * v, then dz.
  struct Group {
    acc_t *dh, *s, *d;
  };
  auto group_view = [&](acc_t* base) {
    return Group{base, base + G * R, base + G * R + G * C};
  };
  const int64_t group_floats = G * R + 2 * G * C;

  // The small layers of samples [n0, n0 + g), outputs [j0, j1); each lambda is one
  // step (one barrier in the split schedule). The first two only run without pre_in.
  auto fwd1 = [&](int64_t n0, int64_t g, int64_t j0, int64_t j1) {
    layer1(a, p, z, n0, g, j0, j1, pre_buf, h);
  };
  auto fwd2 = [&](int64_t n0, int64_t g, int64_t j0, int64_t j1) {
    layer2(a, p, h, n0, g, j0, j1, pre_buf);
  };
  auto gate_step = [&](const Group& w, int64_t n0, int64_t g, int64_t j0, int64_t j1) {
    for (int64_t i = 0; i < g; ++i) {
      const acc_t* a2 = pre + (n0 + i) * RC + R;
      for (int64_t j = j0; j < j1; ++j) {
        w.s[i * C + j] = gate_forward(a.gate, a2[j]);
        da2[(n0 + i) * C + j] = gate_input_grad(a.gate, a2[j], w.d[i * C + j], a.from_y);
      }
    }
  };
  auto bwd2 = [&](const Group& w, int64_t n0, int64_t g, int64_t j0, int64_t j1) {
    if (a.one_layer) {  // a2 = a1: da1 = da2, and no h for a gw2
      for (int64_t i = n0; i < n0 + g; ++i)
        for (int64_t j = j0; j < j1; ++j) da1[i * R + j] = da2[i * C + j];
      return;
    }
    gemm_nn(da2 + n0 * C, C, 1, g, p.w2, R, j0, j1, C, w.dh, R);
    for (int64_t i = 0; i < g; ++i) {
      const acc_t* a1 = pre + (n0 + i) * RC;
      for (int64_t j = j0; j < j1; ++j) {
        h[(n0 + i) * R + j] = act_forward(a.act, a1[j]);
        da1[(n0 + i) * R + j] = w.dh[i * R + j] * act_derivative(a.act, a1[j]);
      }
    }
  };
  auto bwd1 = [&](const Group& w, int64_t n0, int64_t g, int64_t j0, int64_t j1) {
    gemm_nn(da1 + n0 * R, R, 1, g, p.w1, C, j0, j1, R, w.d, C);
    for (int64_t i = 0; i < g; ++i)
      for (int64_t j = j0; j < j1; ++j) w.d[i * C + j] *= inv_hw;
  };

  SE_BOOL_SWITCH(gres != nullptr, kRes, [&] {
    // sum_hw g * v of rows [r0, r1) / one pixel; the map pass for rows / pixels.
    // Indices are global (n * C + c, n * HW + q); `first` is the group's first sample.
    auto reduce_rows = [&](int64_t r0, int64_t r1, acc_t* d, int64_t first) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t off = r * HW;
        d[r - first * C] = cpu::row_grad_dot<acc_t>(gy + off, y ? y + off : nullptr, x + off, HW);
      }
    };
    auto map_rows = [&](const Group& w, int64_t r0, int64_t r1, int64_t first) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t off = r * HW, i = r - first * C;
        cpu::row_grad_map<kRes>(gy + off, y ? y + off : nullptr, gx + off,
                                kRes ? gres + off : nullptr, HW, w.s[i], w.d[i]);
      }
    };
    auto map_pixels = [&](const Group& w, int64_t q0, int64_t q1, int64_t first) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t off = q * C, i = (q / HW - first) * C;
        cpu::pix_grad_map<kRes>(gy + off, y ? y + off : nullptr, gx + off,
                                kRes ? gres + off : nullptr, w.s + i, w.d + i, C);
      }
    };
    auto pixel_add = [&](int64_t n, int64_t q, acc_t* part) {
      const int64_t off = (n * HW + q) * C;
      cpu::pix_grad_accumulate(gy + off, y ? y + off : nullptr, x + off, part, C);
    };

    if (per_thread) {
      at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
        acc_t* buf = scratch<acc_t>(kTaskSlot, group_floats + (cl ? C : 0));
        const Group w = group_view(buf);
        acc_t* part = buf + group_floats;
        for (int64_t n0 = b; n0 < e; n0 += G) {
          const int64_t g = std::min(G, e - n0);
          for (int64_t n = n0; n < n0 + g; ++n) {
            if (cl) {
              pixel_sums_serial<acc_t>(
                  HW, C, P, [&](int64_t q, acc_t* pt) { pixel_add(n, q, pt); }, part,
                  w.d + (n - n0) * C);
            } else {
              reduce_rows(n * C, (n + 1) * C, w.d, n0);
            }
          }
          if (!pre_in) {
            fwd1(n0, g, 0, R);
            fwd2(n0, g, 0, C);
          }
          gate_step(w, n0, g, 0, C);
          bwd2(w, n0, g, 0, R);
          bwd1(w, n0, g, 0, C);
          if (cl) {
            map_pixels(w, n0 * HW, (n0 + g) * HW, n0);
          } else {
            map_rows(w, n0 * C, (n0 + g) * C, n0);
          }
        }
      });
    } else {
      const Group w = group_view(scratch<acc_t>(kTaskSlot, group_floats));
      for (int64_t n0 = 0; n0 < N; n0 += G) {
        const int64_t g = std::min(G, N - n0);
        if (cl) {
          pixel_sums_split<acc_t>(
              g, HW, C, P,
              [&](int64_t n, int64_t q, acc_t* pt) { pixel_add(n0 + n, q, pt); }, w.d);
        } else {
          at::parallel_for(n0 * C, (n0 + g) * C, grain_for(HW),
                           [&](int64_t r0, int64_t r1) { reduce_rows(r0, r1, w.d, n0); });
        }
        if (!pre_in) {
          at::parallel_for(0, R, layer_grain(g, C),
                           [&](int64_t j0, int64_t j1) { fwd1(n0, g, j0, j1); });
        }
        at::parallel_for(0, C, pre_in ? grain_for(g) : layer_grain(g, R),
                         [&](int64_t j0, int64_t j1) {
                           if (!pre_in) fwd2(n0, g, j0, j1);
                           gate_step(w, n0, g, j0, j1);
                         });
        at::parallel_for(0, R, layer_grain(g, C),
                         [&](int64_t j0, int64_t j1) { bwd2(w, n0, g, j0, j1); });
        at::parallel_for(0, C, layer_grain(g, R),
                         [&](int64_t j0, int64_t j1) { bwd1(w, n0, g, j0, j1); });
        if (cl) {
          at::parallel_for(n0 * HW, (n0 + g) * HW, grain_for(C),
                           [&](int64_t q0, int64_t q1) { map_pixels(w, q0, q1, n0); });
        } else {
          at::parallel_for(n0 * C, (n0 + g) * C, grain_for(HW),
                           [&](int64_t r0, int64_t r1) { map_rows(w, r0, r1, n0); });
        }
      }
    }
  });

  // Weight gradients, summed over the batch in sample order: gw1 = da1^T z,
  // gw2 = da2^T h, the biases the column sums. Both cost R * C * N multiply-adds;
  // units [0, kUnits) are rows of gw1, [kUnits, 2 kUnits) rows of gw2, so an even
  // split of the units is an even split of the work. The one-layer form has only
  // the first half.
  constexpr int64_t kUnits = 1024;
  const int64_t units = a.one_layer ? kUnits : 2 * kUnits;
  const int64_t units_grain = units / kUnits * R * C * N >= 2 * kLayerTaskMacs ? 1 : units;
  // out rows [i0, i1) of a^T b (a: N x M, b: N x K), bias[i] = sum_n a[n, i]. The bias
  // sums run over n in order for all columns at once, reading a's rows contiguously
  // (column by column, M floats apart, they took 0.1 ms for gb2 at C = 2048).
  auto batch_outer = [N](const acc_t* a, int64_t M, const acc_t* b, int64_t K, int64_t i0,
                         int64_t i1, acc_t* out, acc_t* bias) {
    if (i0 >= i1) return;
    gemm_nn(a + i0, 1, M, i1 - i0, b, K, 0, K, N, out + i0 * K, K);
    std::fill(bias + i0, bias + i1, acc_t(0));
    for (int64_t n = 0; n < N; ++n) {
      const acc_t* an = a + n * M;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) bias[i] += an[i];
    }
  };
  at::parallel_for(0, units, units_grain, [&](int64_t u0, int64_t u1) {
    batch_outer(da1, R, z, C, R * std::min(u0, kUnits) / kUnits,
                R * std::min(u1, kUnits) / kUnits, gw1, gb1);
    batch_outer(da2, C, h, R, C * (std::max(u0, kUnits) - kUnits) / kUnits,
                C * (std::max(u1, kUnits) - kUnits) / kUnits, gw2, gb2);
  });
}

// ---- the back end ------------------------------------------------------------

template <typename acc_t>
Params<acc_t> params_view(const ParamTensors& p) {
  return {p.w1.data_ptr<acc_t>(), ptr_or_null<acc_t>(p.b1), ptr_or_null<acc_t>(p.w2),
          ptr_or_null<acc_t>(p.b2)};
}

// The kernels on a prepared call (se_entry.h).
struct CpuBackend {
  static void forward(const ForwardCall& c) {
    SE_DTYPE_SWITCH(c.a.dtype, scalar_t, [&] {
      using acc_t = at::opmath_type<scalar_t>;
      forward_kernel<scalar_t>(c.a, c.x.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(c.res),
                               c.y.data_ptr<scalar_t>(), c.z.data_ptr<acc_t>(),
                               c.pre.data_ptr<acc_t>(), params_view<acc_t>(c.p));
    });
  }

  static void backward(const BackwardCall& c) {
    SE_DTYPE_SWITCH(c.a.dtype, scalar_t, [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t>(c.a, c.gy.data_ptr<scalar_t>(), c.x.data_ptr<scalar_t>(),
                                ptr_or_null<scalar_t>(c.y), c.z.data_ptr<acc_t>(),
                                ptr_or_null<acc_t>(c.pre), params_view<acc_t>(c.p),
                                c.gx.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(c.gres),
                                c.gw1.data_ptr<acc_t>(), c.gb1.data_ptr<acc_t>(),
                                ptr_or_null<acc_t>(c.gw2), ptr_or_null<acc_t>(c.gb2));
    });
  }
};

}  // namespace
}  // namespace se_fused

TORCH_LIBRARY_IMPL(se_fused, CPU, m) { se_fused::register_ops<se_fused::CpuBackend>(m); }
