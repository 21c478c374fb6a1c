// The small layers, spread over both launches so that none of them sits on a
// chain that other blocks wait for (no block ever waits).
//
// Launch 1, in the block that arrives last at a counter:
//   per (sample tile, channel group): the channels' sums (z, or d = sum g*v),
//     then this group's share of the next layer: forward P = W1[:, group] z,
//     backward da2 = gate_input_grad(a2, d) and Q = da2 W2[group, :];
//   per sample tile: the shares added in group order (forward a1 = sum P + b1,
//     h = act(a1); backward da1 = (sum Q) act'(a1), h).
// Launch 2, in every scale/map block, for its own (sample, channel) pairs: the
// forward's a2 = W2 h + b2 and s = gate(a2); the backward's s and dz = da1 W1.
// Each value is computed by one function in one order, whichever block runs it,
// so the bits never depend on the grid. Extra blocks of the backward's launch 2
// compute the weight gradients.
#pragma once

#include "squeeze.cuh"

namespace se_fused {
namespace cuda {

// Parameters of the small layers, in the accumulation type, contiguous.
template <typename acc_t>
struct Layers {
  const acc_t* w1;  // (R, C)
  const acc_t* b1;  // (R,) or nullptr
  const acc_t* w2;  // (C, R); nullptr in the one-layer form
  const acc_t* b2;  // (C,) or nullptr
  Act act;
  Gate gate;
  bool one_layer;   // s = gate(a1): no w2, act is the identity, R == C
};

// Per-sample values between the launches.
template <typename acc_t>
struct Excite {
  acc_t* z;    // (N, C): forward output, backward input
  acc_t* pre;  // (N, R + C) [a1 | a2]: forward output, backward input
  acc_t* p;    // (N, CGn, R) workspace: per channel group, P (forward) or Q (backward)
  acc_t* h;    // (N, R) workspace: act(a1)
  acc_t* da2;  // (N, C) workspace, backward
  acc_t* da1;  // (N, R) workspace, backward
};

template <typename acc_t, typename Launch>
inline Layers<acc_t> layers_of(const Launch& l) {
  return {static_cast<const acc_t*>(l.w1), static_cast<const acc_t*>(l.b1),
          static_cast<const acc_t*>(l.w2), static_cast<const acc_t*>(l.b2), l.act,
          l.gate, l.plan.one_layer};
}

// Dot products of a warp, one per row i < rows of weights (w_of(i): K values):
// out[m] = sum_k a(m, k) w[k] for m < M. Lane l takes k = l, l + 32, ... (fused
// multiply-adds), then the lanes' sums are added in a fixed xor tree and done(i, out)
// gets them in every lane. a reads shared memory; the weights of successive rows are
// one stream of loads ahead (ahead_loop), so a row of few weights does not cost a
// round trip of its own. Every lane of the warp calls it with the same rows, K and M.
template <int MM, typename acc_t, typename WF, typename AF, typename Done>
SE_DEV void warp_dots(int rows, int K, int M, const WF& w_of, const AF& a, const Done& done) {
  const int lane = threadIdx.x % 32;
  const int T = int(imax(1, ceil_div(K, 32)));  // steps per row, the same in every lane
  acc_t out[MM];
#pragma unroll
  for (int m = 0; m < MM; ++m) out[m] = acc_t(0);
  auto step = [&](int64_t s, int* i, int* j) {  // step s: row i, k = lane + 32 j
    *i = int(s) / T;
    *j = int(s) - *i * T;
  };
  ahead_loop<kAhead<acc_t>>(
      0, int64_t(rows) * T, 1,
      [&](int64_t s) {
        int i, j;
        step(s, &i, &j);
        const int k = lane + 32 * j;
        return k < K ? load_ro(w_of(i) + k) : acc_t(0);
      },
      [&](acc_t wk, int64_t s) {
        int i, j;
        step(s, &i, &j);
        const int k = lane + 32 * j;
        if (k < K) {
#pragma unroll
          for (int m = 0; m < MM; ++m) {
            if (m < M) out[m] = se_fma(wk, a(m, k), out[m]);
          }
        }
        if (j == T - 1) {  // the row's last step, in every lane at once
#pragma unroll
          for (int m = 0; m < MM; ++m) {
            if (m < M) out[m] = group_sum(out[m], 32);
          }
          done(i, out);
#pragma unroll
          for (int m = 0; m < MM; ++m) out[m] = acc_t(0);
        }
      });
}

// out[m] = sum_k a(m, k) w[k * ld] for m < M, k ascending, in one thread; a reads
// shared memory, the weights are loaded J ahead.
template <int MM, int J, typename acc_t, typename AF>
SE_DEV void column_dot(const acc_t* w, int64_t ld, int64_t K, int M, const AF& a,
                       acc_t (&out)[MM]) {
#pragma unroll
  for (int m = 0; m < MM; ++m) out[m] = acc_t(0);
  ahead_loop<J>(
      0, K, 1, [&](int64_t k) { return load_ro(w + k * ld); },
      [&](acc_t wk, int64_t k) {
#pragma unroll
        for (int m = 0; m < MM; ++m) {
          if (m < M) out[m] = se_fma(wk, a(m, k), out[m]);
        }
      });
}

// Launch 2's prologue reads rows [n0, n0 + M) of an (N, R) tensor of the earlier
// launch (h, or da1) once per channel: staged in the shared memory behind the
// block's constants when they fit (the caller's constants start the kernel's
// kSmemBytes buffer and take `used` bytes), loaded ahead by all the block's threads.
// Returns the rows (row m at m * R), or nullptr: read them from global memory.
template <typename acc_t>
SE_DEV const acc_t* stage_rows(const acc_t* src, int64_t n0, int M, int64_t R, acc_t* dst,
                               int64_t used) {
  if (int64_t(M) * R * int64_t(sizeof(acc_t)) > kSmemBytes - used) return nullptr;
  const acc_t* rows = src + n0 * R;  // contiguous
  ahead_loop<kAhead<acc_t>>(
      threadIdx.x, int64_t(M) * R, kThreads, [&](int64_t e) { return load_ro(rows + e); },
      [&](acc_t v, int64_t e) { dst[e] = v; });
  __syncthreads();
  return dst;
}

// The samples [n0, n0 + M) of sample tile st and the channels [c0, c0 + nc) of
// channel group cg.
struct GroupFrame {
  int64_t n0, c0;
  int M, nc;
  SE_DEV GroupFrame(const Plan& p, int64_t st, int64_t cg)
      : n0(st * p.NT), c0(cg * p.CG), M(int(p.samples_in(st * p.NT, p.NT))),
        nc(int(imin(p.CG, p.C - cg * p.CG))) {}
};

// Launch 1: the count-in of one streaming tile; the last tile of its group runs
// group(st, cg), and the last group of its sample tile runs sample(st) (when
// `sample_stage`).
template <typename Group, typename Sample>
SE_DEV void last_arrivals(const Plan& p, int64_t n, int64_t ct, uint32_t* counters,
                          volatile uint32_t* flag, bool sample_stage, const Group& group,
                          const Sample& sample) {
  const int64_t st = n / p.NT, cg = ct / p.cts_per_group;
  if (!arrive_is_last(counters + p.cnt_group + st * p.CGn + cg, p.group_arrivals(st, cg), flag)) {
    return;
  }
  group(st, cg);
  if (!sample_stage) return;
  if (!arrive_is_last(counters + p.cnt_sample + st, uint32_t(p.CGn), flag)) return;
  sample(st);
}

// The sample tile's sums of the groups' shares (P or Q): use(n, r, sum) for every output r
// of samples [n0, n0 + M), each sum in group order. A thread takes kSumPairs outputs at
// once (e = threadIdx.x + kThreads j) and issues the loads of a chunk of kAhead groups
// for all of them before it adds the first: 4x the loads in flight of one output at a
// time, with the same bits (each output still adds its groups one after another from
// zero).
constexpr int kSumPairs = 4;

template <typename acc_t, typename Use>
SE_DEV void sums_of_groups(const Plan& p, const acc_t* shares, int64_t n0, int64_t M,
                           const Use& use) {
  constexpr int J = kSumPairs, G = kAhead<acc_t>;
  const int R = int(p.R), G_all = int(p.CGn), total = int(M) * R;
  if (total == 0) return;  // R = 0: no outputs (and no division by R)
  // output e = sample e / R, r = e % R; the thread's J outputs advance by kThreads J
  // elements a round: one division each before the loop (no 64-bit division inside it)
  const int step = kThreads * J, dn = step / R, dr = step % R;
  int m[J], r[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int e = int(threadIdx.x) + kThreads * j;
    m[j] = e / R;
    r[j] = e % R;
  }
  for (int e0 = int(threadIdx.x); e0 < total; e0 += step) {
    acc_t a[J];
#pragma unroll
    for (int j = 0; j < J; ++j) a[j] = acc_t(0);
    for (int g0 = 0; g0 < G_all; g0 += G) {
      acc_t v[J][G];
#pragma unroll
      for (int j = 0; j < J; ++j) {
        const acc_t* col = shares + ((n0 + m[j]) * G_all + g0) * R + r[j];
#pragma unroll
        for (int k = 0; k < G; ++k) {
          const bool in = e0 + kThreads * j < total && g0 + k < G_all;
          v[j][k] = in ? load_cg(col + int64_t(k) * R) : acc_t(0);
        }
      }
#pragma unroll
      for (int j = 0; j < J; ++j) {
#pragma unroll
        for (int k = 0; k < G; ++k) {
          if (g0 + k < G_all) a[j] += v[j][k];
        }
      }
    }
#pragma unroll
    for (int j = 0; j < J; ++j) {
      if (e0 + kThreads * j < total) use(n0 + m[j], int64_t(r[j]), a[j]);
      m[j] += dn;
      r[j] += dr;
      if (r[j] >= R) {
        r[j] -= R;
        ++m[j];
      }
    }
  }
}

// ---- forward ----------------------------------------------------------------------

// z for the group's (sample, channel) pairs (into the output z and shared memory),
// then P[n, cg, r] = sum over the group's channels of W1[r, c] z[n, c].
template <bool CL, typename acc_t>
SE_DEV void forward_group(const Plan& p, const Layers<acc_t>& L, const Excite<acc_t>& X,
                          const Pieces<acc_t>& in, int64_t st, int64_t cg, unsigned char* smem) {
  constexpr int MM = MaxSamples<acc_t>::value;
  const GroupFrame f(p, st, cg);
  acc_t* zs = reinterpret_cast<acc_t*>(smem);  // [M][nc]
  const acc_t inv_hw = static_cast<acc_t>(p.inv_hw);
  for (int e = threadIdx.x; e < f.M * f.nc; e += kThreads) {
    const int64_t n = f.n0 + e / f.nc, c = f.c0 + e % f.nc;
    const acc_t z = se_mul(row_total<CL>(p, in, n, c), inv_hw);
    zs[e] = z;
    store1(X.z + n * p.C + c, z);
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;  // rows r = warp + 8 i
  warp_dots<MM, acc_t>(
      int(ceil_div(imax(0, p.R - warp), kWarps)), f.nc, f.M,
      [&](int i) { return L.w1 + (warp + int64_t(kWarps) * i) * p.C + f.c0; },
      [&](int m, int k) { return zs[m * f.nc + k]; },
      [&](int i, const acc_t(&acc)[MM]) {
        const int64_t r = warp + int64_t(kWarps) * i;
#pragma unroll
        for (int m = 0; m < MM; ++m) {
          if (m < f.M && lane == 0) store1(X.p + ((f.n0 + m) * p.CGn + cg) * p.R + r, acc[m]);
        }
      });
}

// a1 = sum of P over the groups, in group order, + b1 (into pre); h = act(a1).
template <typename acc_t>
SE_DEV void forward_sample(const Plan& p, const Layers<acc_t>& L, const Excite<acc_t>& X,
                           int64_t st) {
  const int64_t n0 = st * p.NT, R = p.R;
  sums_of_groups(p, X.p, n0, p.samples_in(n0, p.NT), [&](int64_t n, int64_t r, acc_t a) {
    if (L.b1 != nullptr) a += load_ro(L.b1 + r);
    store1(X.pre + n * (R + p.C) + r, a);
    store1(X.h + n * R + r, act_forward(L.act, a));
  });
}

// Launch 2: s for samples [n0, n0 + M) and channels [cb, cb + nch) into s_sm[m][ch];
// a2 also into pre for the channels from own_from on (each (n, c) has one owner).
template <typename acc_t>
SE_DEV void forward_gates(const Plan& p, const Layers<acc_t>& L, const Excite<acc_t>& X,
                          int64_t n0, int M, int64_t cb, int nch, int own_from, acc_t* s_sm) {
  constexpr int MM = MaxSamples<acc_t>::value;
  const int64_t R = p.R, C = p.C;
  auto put = [&](int m, int ch, acc_t a2) {
    const int64_t n = n0 + m, c = cb + ch;
    s_sm[m * nch + ch] = gate_forward(L.gate, a2);
    if (ch >= own_from) store1(X.pre + n * (R + C) + R + c, a2);
  };
  if (L.one_layer) {  // a2 = a1 = h (act is the identity)
    for (int e = threadIdx.x; e < M * nch; e += kThreads) {
      put(e / nch, e % nch, load_ro(X.h + (n0 + e / nch) * R + cb + e % nch));
    }
    return;
  }
  const acc_t* hs = stage_rows(X.h, n0, M, R, s_sm + M * nch, int64_t(sizeof(acc_t)) * M * nch);
  auto h = [&](int m, int k) {
    return hs != nullptr ? hs[m * R + k] : load_ro(X.h + (n0 + m) * R + k);
  };
  const int warp = threadIdx.x / 32;  // channels ch = warp + 8 i
  warp_dots<MM, acc_t>(
      int(ceil_div(imax(0, nch - warp), kWarps)), int(R), M,
      [&](int i) { return L.w2 + (cb + warp + int64_t(kWarps) * i) * R; }, h,
      [&](int i, const acc_t(&acc)[MM]) {
        const int ch = warp + kWarps * i;
        if (threadIdx.x % 32 != 0) return;
        const int64_t c = cb + ch;
        const acc_t b = L.b2 != nullptr ? load_ro(L.b2 + c) : acc_t(0);
#pragma unroll
        for (int m = 0; m < MM; ++m) {
          if (m < M) put(m, ch, L.b2 != nullptr ? acc[m] + b : acc[m]);
        }
      });
}

// ---- backward ---------------------------------------------------------------------

// da2 for the group's pairs from d = sum g*v and a2 (pre), then
// Q[n, cg, r] = sum over the group's channels of da2[n, c] W2[c, r]. One layer:
// da1 = da2, no Q.
template <bool CL, typename acc_t>
SE_DEV void backward_group(const Plan& p, const Layers<acc_t>& L, const Excite<acc_t>& X,
                           const Pieces<acc_t>& in, bool from_y, int64_t st, int64_t cg,
                           unsigned char* smem) {
  constexpr int MM = MaxSamples<acc_t>::value;
  const GroupFrame f(p, st, cg);
  const int64_t R = p.R, C = p.C;
  acc_t* ds = reinterpret_cast<acc_t*>(smem);  // [M][nc]
  for (int e = threadIdx.x; e < f.M * f.nc; e += kThreads) {
    const int64_t n = f.n0 + e / f.nc, c = f.c0 + e % f.nc;
    const acc_t a2 = load_ro(X.pre + n * (R + C) + R + c);
    const acc_t da2 = gate_input_grad(L.gate, a2, row_total<CL>(p, in, n, c), from_y);
    ds[e] = da2;
    store1(X.da2 + n * C + c, da2);
    if (L.one_layer) store1(X.da1 + n * R + c, da2);
  }
  if (L.one_layer) return;
  __syncthreads();
  for (int64_t r = threadIdx.x; r < R; r += kThreads) {
    acc_t acc[MM];
    // half the chunk: under launch 1's register cap, a full one beside the MM
    // accumulators spills (ptxas)
    column_dot<MM, kAhead<acc_t> / 2>(L.w2 + f.c0 * R + r, R, f.nc, f.M,
                   [&](int m, int64_t k) { return ds[m * f.nc + k]; }, acc);
#pragma unroll
    for (int m = 0; m < MM; ++m) {
      if (m < f.M) store1(X.p + ((f.n0 + m) * p.CGn + cg) * R + r, acc[m]);
    }
  }
}

// dh = sum of Q over the groups in group order; da1 = dh act'(a1); h = act(a1).
template <typename acc_t>
SE_DEV void backward_sample(const Plan& p, const Layers<acc_t>& L, const Excite<acc_t>& X,
                            int64_t st) {
  const int64_t n0 = st * p.NT, R = p.R;
  sums_of_groups(p, X.p, n0, p.samples_in(n0, p.NT), [&](int64_t n, int64_t r, acc_t dh) {
    const acc_t a1 = load_ro(X.pre + n * (R + p.C) + r);
    store1(X.da1 + n * R + r, se_mul(dh, act_derivative(L.act, a1)));
    store1(X.h + n * R + r, act_forward(L.act, a1));
  });
}

// Launch 2: s = gate(a2) and dz / HW (dz = sum_r da1[n, r] W1[r, c]) for samples
// [n0, n0 + M) and channels [cb, cb + nch), into s_sm[m][ch] and d_sm[m][ch].
template <typename acc_t>
SE_DEV void backward_consts(const Plan& p, const Layers<acc_t>& L, const Excite<acc_t>& X,
                            int64_t n0, int M, int64_t cb, int nch, acc_t* s_sm, acc_t* d_sm) {
  constexpr int MM = MaxSamples<acc_t>::value;
  const int64_t R = p.R, C = p.C;
  const acc_t inv_hw = static_cast<acc_t>(p.inv_hw);
  const acc_t* ds = stage_rows(X.da1, n0, M, R, d_sm + M * nch,
                               int64_t(sizeof(acc_t)) * 2 * M * nch);
  auto da1 = [&](int m, int64_t k) {
    return ds != nullptr ? ds[m * R + k] : load_ro(X.da1 + (n0 + m) * R + k);
  };
  for (int ch = threadIdx.x; ch < nch; ch += kThreads) {
    const int64_t c = cb + ch;
    acc_t acc[MM];
    column_dot<MM, kAhead<acc_t>>(L.w1 + c, C, R, M, da1, acc);
#pragma unroll
    for (int m = 0; m < MM; ++m) {
      if (m < M) {
        d_sm[m * nch + ch] = se_mul(acc[m], inv_hw);
        s_sm[m * nch + ch] = gate_forward(L.gate, load_ro(X.pre + (n0 + m) * (R + C) + R + c));
      }
    }
  }
}

// Weight and bias gradients over the batch, in tiles of 32 x 32 (lanes along the
// output's contiguous index, warps along the other, 4 each):
//   grad_w1 (R, C) = da1^T z; the tiles of the first channel block give grad_b1;
//   grad_w2 (C, R) = da2^T h; the tiles of the first column block give grad_b2.
// A tile's block sums n ascending over its samples; when the batch is split (plan.h
// wg_split), each block leaves its partial tile in the workspace and the last to arrive
// adds the partials in split order.
template <typename acc_t>
struct WeightGrads {
  acc_t* gw1;       // (R, C)
  acc_t* gb1;       // (R,)
  acc_t* gw2;       // (C, R); nullptr in the one-layer form
  acc_t* gb2;       // (C,)
  acc_t* partials;  // workspace: kGradPartial per (tile, split)
};

// sum over j < splits of v[j * kGradPartial], j ascending (the partials of other blocks:
// load_cg)
template <typename acc_t>
SE_DEV acc_t sum_of_splits(const acc_t* v, int64_t splits) {
  acc_t a = acc_t(0);
  ahead_loop<kAhead<acc_t>>(
      0, splits, 1, [&](int64_t j) { return load_cg(v + j * kGradPartial); },
      [&](acc_t x, int64_t j) { a = j == 0 ? x : a + x; });
  return a;
}

// Split `split` of tile `tile`: gw (nrows, ncols) = rows^T cols over the split's samples,
// gb = the rows' sums (tiles with c0 = 0).
template <typename acc_t>
SE_DEV void grad_tile(const Plan& p, acc_t* partials, uint32_t* counters,
                      volatile uint32_t* flag, int64_t tile, int64_t split, const acc_t* rows,
                      int64_t ld_rows, int64_t nrows, const acc_t* cols, int64_t ld_cols,
                      int64_t ncols, int64_t r0, int64_t c0, acc_t* gw, acc_t* gb) {
  constexpr int kPer = kGradTile / kWarps;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t c = c0 + lane;
  const bool bias = c0 == 0 && lane == 0;
  acc_t acc[kPer], bsum[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = bsum[i] = acc_t(0);
  struct Operands {
    acc_t c, r[kPer];
  };
  // a chunk and a half (3 iterations of 5 loads): a weight-gradient block holds
  // nothing else; 4 iterations spill (ptxas)
  const int64_t n0 = split * p.wg_n;
  ahead_loop<ahead_steps(1 + kPer, 3 * kAhead<acc_t> / 2)>(
      n0, imin(p.N, n0 + p.wg_n), 1,
      [&](int64_t n) {
        Operands o;
        o.c = c < ncols ? load_ro(cols + n * ld_cols + c) : acc_t(0);
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
          const int64_t r = r0 + warp + kWarps * i;
          o.r[i] = r < nrows ? load_ro(rows + n * ld_rows + r) : acc_t(0);
        }
        return o;
      },
      [&](const Operands& o, int64_t) {
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
          if (r0 + warp + kWarps * i < nrows) {
            acc[i] = se_fma(o.r[i], o.c, acc[i]);
            bsum[i] += o.r[i];
          }
        }
      });
  auto store = [&](int row, acc_t w, acc_t b) {
    const int64_t r = r0 + row;
    if (r < nrows) {
      if (c < ncols) store1(gw + r * ncols + c, w);
      if (bias) store1(gb + r, b);
    }
  };
  if (p.wg_split == 1) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) store(warp + kWarps * i, acc[i], bsum[i]);
    return;
  }
  acc_t* mine = partials + (tile * p.wg_split + split) * kGradPartial;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int row = warp + kWarps * i;
    store1(mine + row * kGradTile + lane, acc[i]);
    if (lane == 0) store1(mine + kGradTile * kGradTile + row, bsum[i]);
  }
  if (!arrive_is_last(counters + p.cnt_wg + tile, uint32_t(p.wg_split), flag)) return;
  // one row at a time: the partials' loads of all rows at once spill (ptxas)
  const acc_t* first = partials + tile * p.wg_split * kGradPartial;
#pragma unroll 1
  for (int row = warp; row < kGradTile; row += kWarps) {
    store(row, sum_of_splits(first + row * kGradTile + lane, p.wg_split),
          bias ? sum_of_splits(first + kGradTile * kGradTile + row, p.wg_split) : acc_t(0));
  }
}

// Block idx of the weight-gradient blocks: split idx % wg_split of tile idx / wg_split.
template <typename acc_t>
SE_DEV void weight_grad_block(const Plan& p, const Excite<acc_t>& X,
                              const WeightGrads<acc_t>& G, uint32_t* counters,
                              volatile uint32_t* flag, int64_t idx) {
  const int64_t C = p.C, R = p.R;
  const int64_t tile = uint32_t(idx) / uint32_t(p.wg_split);  // 32-bit: a block index
  const int64_t split = idx - tile * p.wg_split;
  if (tile < p.n_gw1) {
    const int64_t nct = ceil_div(C, kGradTile);
    grad_tile(p, G.partials, counters, flag, tile, split, X.da1, R, R, X.z, C, C,
              (tile / nct) * kGradTile, (tile % nct) * kGradTile, G.gw1, G.gb1);
  } else {
    const int64_t k = tile - p.n_gw1, nrt = imax(1, ceil_div(R, kGradTile));
    grad_tile(p, G.partials, counters, flag, tile, split, X.da2, C, C, X.h, R, R,
              (k / nrt) * kGradTile, (k % nrt) * kGradTile, G.gw2, G.gb2);
  }
}

}  // namespace cuda
}  // namespace se_fused
