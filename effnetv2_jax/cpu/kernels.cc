// XLA:CPU kernels for the ops whose XLA-generated code is far from the hardware
// (effnetv2_jax/cpu/kernels.py builds and registers this file through jax.ffi).
//
// effnetv2_depthwise_kernel_grad: the weight gradient of a depthwise k x k convolution,
//   dw[i, j, c] = sum_{n, h, w} xp[n, h * s + i, w * s + j, c] * dy[n, h, w, c]
// xp: [N, Hp, Wp, C] float32, the input already padded ("SAME"); dy: [N, OH, OW, C] float32;
// dw: [k, k, C] float32; attribute stride (s). XLA reduces over N, H, W with C minor, far
// below the machine's speed; here each output pixel adds k*k vectorised rows of C products
// into a k*k*C accumulator that stays in L1/L2. Each image is summed on its own and then added
// to the total, so rounding grows with pixels per image, not the batch.
//
// effnetv2_materialize: the identity, its result aliased to its operand. It marks a value that
// XLA must write to memory once: XLA fuses cheap elementwise producers (such as the depthwise
// conv's k*k shifted multiply-adds) into every consumer, and its reduction loops, which then
// recompute the producer per output element, run on one thread without vectors.
//
// effnetv2_spatial_mean: out[b, c] = mean_n x[b, n, c], x: [B, N, C] float32 (the
// squeeze-excite pooling at inference). XLA's reduction loop for it runs on one thread; here
// the images are shared out over XLA's intra-op thread pool and each sums its rows with
// vectorised adds.
//
// effnetv2_winograd_{input,output,output_adjoint,input_adjoint}: the tile transforms of
// Winograd's F(4x4, 3x3) convolution (Lavin & Gray, 2016; interpolation points 0, +-1, +-2,
// infinity), for a 3x3, stride-1, "SAME" conv of x [N, H, W, C] with output [N, H, W, K]. The
// output is cut into Th x Tw tiles of 4x4 pixels (Th = ceil(H / 4)); tile p = (n * Th + th) *
// Tw + tw reads the 6x6 input window at rows 4 th - 1 .. 4 th + 4 (zero outside the image).
//   input:          x  [N, H, W, C]  -> V  [36, P, C],  V[a][p]  = (B^T d B)[a], d the window
//   output:         M  [36, P, K]    -> y  [N, H, W, K], y tile  = A^T M A (cut at the edge)
//   output_adjoint: dy [N, H, W, K]  -> dM [36, P, K],  dM[a][p] = (A dy A^T)[a]
//   input_adjoint:  dV [36, P, C]    -> dx [N, H, W, C], dx     += B dV B^T on each window
// The conv is then V times the transformed kernel (G w G^T), 36 GEMMs with 4x fewer
// multiply-adds than the direct conv (the GEMMs run in XLA, see winograd.py); the adjoints
// give its exact gradient. XLA's fusions for these transforms run far below memory speed; here
// each tile is transformed in registers, rows of tiles spread over XLA's thread pool.
//
// effnetv2_mbconv_depthwise_inference: the middle of an MBConv block at inference, in one pass:
//   a = act_in(u * in_scale + in_shift)           (the expansion's BN + activation)
//   y = act_out(depthwise_k(pad(a), kernel) + out_shift)
// u: [N, H, W, C] float32 (the expansion's 1x1 conv output, or the block input); in_affine:
// [2, C] (scale; shift); kernel: [k, k, C] with the depthwise BN's scale folded in; out_shift:
// [C]; y: [N, OH, OW, C]; TF "SAME" padding. Attributes: stride, act_in, act_out (0 none,
// 1 SiLU, 2 ReLU, 3 ReLU6). XLA made seven passes over these activations (BN + act + pad, the
// taps, BN + act, squeeze-excite's mean); here one image's activated input stays in L2 and y is
// written once.
// effnetv2_mbconv_depthwise_se_inference: the same, then squeeze-excite on each image while its
// y is still in cache:
//   gate = sigmoid(se_act(mean_pixels(y) @ se_reduce + se_reduce_bias) @ se_expand
//                  + se_expand_bias),  y *= gate
// with se_reduce [C, S], se_reduce_bias [S], se_expand [S, C], se_expand_bias [C] and the
// attribute se_act. XLA's gate multiply was one more pass over y.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

static ffi::Error DepthwiseKernelGrad(ffi::Buffer<ffi::F32> xp, ffi::Buffer<ffi::F32> dy,
                                      ffi::ResultBuffer<ffi::F32> dw, int64_t stride) {
  auto xd = xp.dimensions();
  auto yd = dy.dimensions();
  auto wd = dw->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != 3) {
    return ffi::Error::InvalidArgument(
        "effnetv2_depthwise_kernel_grad: xp and dy must be 4-D, dw 3-D");
  }
  const int64_t n = xd[0], hp = xd[1], wp = xd[2], c = xd[3];
  const int64_t oh = yd[1], ow = yd[2], k = wd[0];
  if (stride < 1 || yd[0] != n || yd[3] != c || wd[1] != k || wd[2] != c ||
      (oh - 1) * stride + k > hp || (ow - 1) * stride + k > wp) {
    return ffi::Error::InvalidArgument(
        "effnetv2_depthwise_kernel_grad: xp, dy, dw shapes or stride do not match");
  }
  const float* x = xp.typed_data();
  const float* d = dy.typed_data();
  float* total = dw->typed_data();
  const int64_t taps = k * k * c;
  std::fill(total, total + taps, 0.0f);
  std::vector<float> image(taps);
  for (int64_t b = 0; b < n; ++b) {
    std::fill(image.begin(), image.end(), 0.0f);
    for (int64_t r = 0; r < oh; ++r) {
      for (int64_t q = 0; q < ow; ++q) {
        const float* g = d + ((b * oh + r) * ow + q) * c;
        for (int64_t i = 0; i < k; ++i) {
          for (int64_t j = 0; j < k; ++j) {
            const float* row = x + ((b * hp + r * stride + i) * wp + q * stride + j) * c;
            float* acc = image.data() + (i * k + j) * c;
            for (int64_t ch = 0; ch < c; ++ch) acc[ch] += row[ch] * g[ch];
          }
        }
      }
    }
    for (int64_t t = 0; t < taps; ++t) total[t] += image[t];
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(effnetv2_depthwise_kernel_grad, DepthwiseKernelGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride"));

static ffi::Error Materialize(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (x.element_type() != y->element_type() || x.size_bytes() != y->size_bytes()) {
    return ffi::Error::InvalidArgument("effnetv2_materialize: result must match the operand");
  }
  // Aliased, the buffers are one and there is nothing to do; XLA may still hand a copy.
  if (x.untyped_data() != y->untyped_data()) {
    std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(effnetv2_materialize, Materialize,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

namespace {

// Runs fn(0) .. fn(count - 1) on the calling thread and XLA's intra-op pool; returns when all
// are done. Items are claimed one at a time. Shared ownership: a pool task that starts after
// the call has returned finds nothing left to claim and only drops its reference.
struct ParallelJob {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t count = 0;
  std::function<void(int64_t)> fn;

  void Work() {
    for (int64_t i; (i = next.fetch_add(1)) < count;) {
      fn(i);
      done.fetch_add(1);
    }
  }
};

void ParallelFor(ffi::ThreadPool& pool, int64_t count, std::function<void(int64_t)> fn) {
  auto job = std::make_shared<ParallelJob>();
  job->count = count;
  job->fn = std::move(fn);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->Work(); });
  job->Work();  // the caller works too, so the call finishes even if the pool is busy
  while (job->done.load() < job->count) std::this_thread::yield();
}

}  // namespace

static ffi::Error SpatialMean(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions();
  auto od = out->dimensions();
  if (xd.size() != 3 || od.size() != 2 || od[0] != xd[0] || od[1] != xd[2] || xd[1] < 1) {
    return ffi::Error::InvalidArgument(
        "effnetv2_spatial_mean: x must be [B, N >= 1, C] and the result [B, C]");
  }
  const int64_t pixels = xd[1], channels = xd[2];
  const float* x_data = x.typed_data();
  float* out_data = out->typed_data();
  ParallelFor(pool, xd[0], [=](int64_t b) {
    float* o = out_data + b * channels;
    std::fill(o, o + channels, 0.0f);
    const float* row = x_data + b * pixels * channels;
    for (int64_t p = 0; p < pixels; ++p, row += channels) {
      for (int64_t ch = 0; ch < channels; ++ch) o[ch] += row[ch];
    }
    const float scale = 1.0f / static_cast<float>(pixels);
    for (int64_t ch = 0; ch < channels; ++ch) o[ch] *= scale;
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(effnetv2_spatial_mean, SpatialMean,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

namespace {

// F(4x4, 3x3): y = A^T [(G w G^T) . (B^T d B)] A. Rows of kBT, kAT are the transforms applied
// to a column of 6 (or 4) values; the adjoints apply their transposes.
constexpr int kWindow = 6, kTile = 4, kPoints = kWindow * kWindow;
constexpr float kBT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                             {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
constexpr float kAT[4][6] = {
    {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};

// dst[o][ch] = sum_i m(o, i) * src[i][ch] for ch < c, where m(o, i) is kBT[o][i] (or its
// transpose, or kAT's): fully unrolled, the zero coefficients drop out at compile time. The
// rows src[i] and dst[o] never overlap (ivdep lets the compiler vectorise over channels without
// checking 36 pointer pairs at run time, which it would not do: up to 2.5x slower).
template <int kOut, int kIn, bool kTranspose, const float (&kM)[kTranspose ? kIn : kOut]
                                                             [kTranspose ? kOut : kIn]>
inline void Transform(const float* const* src, float* const* dst, int64_t c) {
#pragma GCC ivdep
  for (int64_t ch = 0; ch < c; ++ch) {
    float in[kIn];
#pragma GCC unroll 8
    for (int i = 0; i < kIn; ++i) in[i] = src[i][ch];
#pragma GCC unroll 8
    for (int o = 0; o < kOut; ++o) {
      float acc = 0.0f;
#pragma GCC unroll 8
      for (int i = 0; i < kIn; ++i) {
        constexpr bool kT = kTranspose;
        const float m = kT ? kM[i][o] : kM[o][i];
        if (m == 1.0f) acc += in[i];
        else if (m == -1.0f) acc -= in[i];
        else if (m != 0.0f) acc += m * in[i];
      }
      dst[o][ch] = acc;
    }
  }
}

// The tiling of one conv: x or y [n, h, w, c], tiles th x tw, p counts n * th * tw.
struct Tiling {
  int64_t n, h, w, th, tw, p;
  Tiling(int64_t n_, int64_t h_, int64_t w_)
      : n(n_), h(h_), w(w_), th((h_ + kTile - 1) / kTile), tw((w_ + kTile - 1) / kTile),
        p(n_ * th * tw) {}
  // Pixel (row, col) of image b, channels c: its data, or null outside the image.
  template <typename T>
  T* Pixel(T* data, int64_t b, int64_t row, int64_t col, int64_t c) const {
    if (row < 0 || row >= h || col < 0 || col >= w) return nullptr;
    return data + ((b * h + row) * w + col) * c;
  }
};

ffi::Error CheckTiling(const char* name, ffi::Span<const int64_t> image,
                       ffi::Span<const int64_t> points, int64_t* channels) {
  if (image.size() != 4 || points.size() != 3 || points[0] != kPoints ||
      points[2] != image[3] ||
      points[1] != Tiling(image[0], image[1], image[2]).p) {
    return ffi::Error::InvalidArgument(
        std::string(name) +
        ": shapes must be [N, H, W, C] and [36, N * ceil(H / 4) * ceil(W / 4), C]");
  }
  *channels = image[3];
  return ffi::Error::Success();
}

}  // namespace

static ffi::Error WinogradInput(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                ffi::ResultBuffer<ffi::F32> v) {
  int64_t c;
  if (auto e = CheckTiling("effnetv2_winograd_input", x.dimensions(), v->dimensions(), &c);
      e.failure()) {
    return e;
  }
  const Tiling t(x.dimensions()[0], x.dimensions()[1], x.dimensions()[2]);
  const float* xd = x.typed_data();
  float* vd = v->typed_data();
  ParallelFor(pool, t.n * t.th, [=](int64_t row_of_tiles) {
    const int64_t b = row_of_tiles / t.th, ti = row_of_tiles % t.th;
    std::vector<float> zeros(c, 0.0f), rows(kPoints * c);
    for (int64_t tj = 0; tj < t.tw; ++tj) {
      const int64_t p = row_of_tiles * t.tw + tj;
      for (int i = 0; i < kWindow; ++i) {  // along each window row: rows[i][nu] = (d_i B)[nu]
        const float* src[kWindow];
        float* dst[kWindow];
        for (int j = 0; j < kWindow; ++j) {
          const float* px = t.Pixel(xd, b, ti * kTile + i - 1, tj * kTile + j - 1, c);
          src[j] = px ? px : zeros.data();
          dst[j] = rows.data() + (i * kWindow + j) * c;
        }
        Transform<kWindow, kWindow, false, kBT>(src, dst, c);
      }
      for (int nu = 0; nu < kWindow; ++nu) {  // down each column: V[xi][nu] = (B^T rows)[xi]
        const float* src[kWindow];
        float* dst[kWindow];
        for (int i = 0; i < kWindow; ++i) {
          src[i] = rows.data() + (i * kWindow + nu) * c;
          dst[i] = vd + ((i * kWindow + nu) * t.p + p) * c;
        }
        Transform<kWindow, kWindow, false, kBT>(src, dst, c);
      }
    }
  });
  return ffi::Error::Success();
}

static ffi::Error WinogradOutput(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> m,
                                 ffi::ResultBuffer<ffi::F32> y) {
  int64_t k;
  if (auto e = CheckTiling("effnetv2_winograd_output", y->dimensions(), m.dimensions(), &k);
      e.failure()) {
    return e;
  }
  const Tiling t(y->dimensions()[0], y->dimensions()[1], y->dimensions()[2]);
  const float* md = m.typed_data();
  float* yd = y->typed_data();
  ParallelFor(pool, t.n * t.th, [=](int64_t row_of_tiles) {
    const int64_t b = row_of_tiles / t.th, ti = row_of_tiles % t.th;
    std::vector<float> rows(kWindow * kTile * k), spill(k);
    for (int64_t tj = 0; tj < t.tw; ++tj) {
      const int64_t p = row_of_tiles * t.tw + tj;
      for (int xi = 0; xi < kWindow; ++xi) {  // rows[xi][q] = (M_xi A)[q]
        const float* src[kWindow];
        float* dst[kTile];
        for (int nu = 0; nu < kWindow; ++nu) src[nu] = md + ((xi * kWindow + nu) * t.p + p) * k;
        for (int q = 0; q < kTile; ++q) dst[q] = rows.data() + (xi * kTile + q) * k;
        Transform<kTile, kWindow, false, kAT>(src, dst, k);
      }
      for (int q = 0; q < kTile; ++q) {  // y[r][q] = (A^T rows)[r], pixels past the edge dropped
        const float* src[kWindow];
        float* dst[kTile];
        for (int xi = 0; xi < kWindow; ++xi) src[xi] = rows.data() + (xi * kTile + q) * k;
        for (int r = 0; r < kTile; ++r) {
          float* px = t.Pixel(yd, b, ti * kTile + r, tj * kTile + q, k);
          dst[r] = px ? px : spill.data();
        }
        Transform<kTile, kWindow, false, kAT>(src, dst, k);
      }
    }
  });
  return ffi::Error::Success();
}

static ffi::Error WinogradOutputAdjoint(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                                        ffi::ResultBuffer<ffi::F32> dm) {
  int64_t k;
  if (auto e = CheckTiling("effnetv2_winograd_output_adjoint", dy.dimensions(),
                           dm->dimensions(), &k);
      e.failure()) {
    return e;
  }
  const Tiling t(dy.dimensions()[0], dy.dimensions()[1], dy.dimensions()[2]);
  const float* gd = dy.typed_data();
  float* md = dm->typed_data();
  ParallelFor(pool, t.n * t.th, [=](int64_t row_of_tiles) {
    const int64_t b = row_of_tiles / t.th, ti = row_of_tiles % t.th;
    std::vector<float> zeros(k, 0.0f), rows(kTile * kWindow * k);
    for (int64_t tj = 0; tj < t.tw; ++tj) {
      const int64_t p = row_of_tiles * t.tw + tj;
      for (int r = 0; r < kTile; ++r) {  // rows[r][nu] = (dy_r A^T)[nu]
        const float* src[kTile];
        float* dst[kWindow];
        for (int q = 0; q < kTile; ++q) {
          const float* px = t.Pixel(gd, b, ti * kTile + r, tj * kTile + q, k);
          src[q] = px ? px : zeros.data();
        }
        for (int nu = 0; nu < kWindow; ++nu) dst[nu] = rows.data() + (r * kWindow + nu) * k;
        Transform<kWindow, kTile, true, kAT>(src, dst, k);
      }
      for (int nu = 0; nu < kWindow; ++nu) {  // dM[xi][nu] = (A rows)[xi]
        const float* src[kTile];
        float* dst[kWindow];
        for (int r = 0; r < kTile; ++r) src[r] = rows.data() + (r * kWindow + nu) * k;
        for (int xi = 0; xi < kWindow; ++xi) dst[xi] = md + ((xi * kWindow + nu) * t.p + p) * k;
        Transform<kWindow, kTile, true, kAT>(src, dst, k);
      }
    }
  });
  return ffi::Error::Success();
}

static ffi::Error WinogradInputAdjoint(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dv,
                                       ffi::ResultBuffer<ffi::F32> dx) {
  int64_t c;
  if (auto e = CheckTiling("effnetv2_winograd_input_adjoint", dx->dimensions(),
                           dv.dimensions(), &c);
      e.failure()) {
    return e;
  }
  const Tiling t(dx->dimensions()[0], dx->dimensions()[1], dx->dimensions()[2]);
  const float* vd = dv.typed_data();
  float* xd = dx->typed_data();
  const int64_t image = t.h * t.w * c;
  ParallelFor(pool, t.n, [=](int64_t b) { std::fill(xd + b * image, xd + (b + 1) * image, 0.f); });
  // Windows of neighbouring tile rows share two pixel rows: even tile rows first, then odd
  // ones, so no two threads add to the same pixel (a thread does a whole row of tiles).
  const int64_t half = (t.th + 1) / 2;
  for (int parity = 0; parity < 2; ++parity) {
    ParallelFor(pool, t.n * half, [=](int64_t item) {
      const int64_t b = item / half, ti = (item % half) * 2 + parity;
      if (ti >= t.th) return;
      std::vector<float> rows(kPoints * c), window(kPoints * c);
      for (int64_t tj = 0; tj < t.tw; ++tj) {
        const int64_t p = (b * t.th + ti) * t.tw + tj;
        for (int xi = 0; xi < kWindow; ++xi) {  // rows[xi][j] = (dV_xi B^T)[j]
          const float* src[kWindow];
          float* dst[kWindow];
          for (int nu = 0; nu < kWindow; ++nu) {
            src[nu] = vd + ((xi * kWindow + nu) * t.p + p) * c;
            dst[nu] = rows.data() + (xi * kWindow + nu) * c;
          }
          Transform<kWindow, kWindow, true, kBT>(src, dst, c);
        }
        for (int j = 0; j < kWindow; ++j) {  // window[i][j] = (B rows)[i]
          const float* src[kWindow];
          float* dst[kWindow];
          for (int xi = 0; xi < kWindow; ++xi) {
            src[xi] = rows.data() + (xi * kWindow + j) * c;
            dst[xi] = window.data() + (xi * kWindow + j) * c;
          }
          Transform<kWindow, kWindow, true, kBT>(src, dst, c);
        }
        for (int i = 0; i < kWindow; ++i) {
          for (int j = 0; j < kWindow; ++j) {
            float* px = t.Pixel(xd, b, ti * kTile + i - 1, tj * kTile + j - 1, c);
            if (px == nullptr) continue;
            const float* add = window.data() + (i * kWindow + j) * c;
            for (int64_t ch = 0; ch < c; ++ch) px[ch] += add[ch];
          }
        }
      }
    });
  }
  return ffi::Error::Success();
}

#define EFFNETV2_WINOGRAD_HANDLER(name, fn)                                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, fn,                                               \
                                ffi::Ffi::Bind()                                        \
                                    .Ctx<ffi::ThreadPool>()                             \
                                    .Arg<ffi::Buffer<ffi::F32>>()                       \
                                    .Ret<ffi::Buffer<ffi::F32>>());

EFFNETV2_WINOGRAD_HANDLER(effnetv2_winograd_input, WinogradInput)
EFFNETV2_WINOGRAD_HANDLER(effnetv2_winograd_output, WinogradOutput)
EFFNETV2_WINOGRAD_HANDLER(effnetv2_winograd_output_adjoint, WinogradOutputAdjoint)
EFFNETV2_WINOGRAD_HANDLER(effnetv2_winograd_input_adjoint, WinogradInputAdjoint)

namespace {

// exp(x) for float32 within 2 ulp (Cephes' polynomial, Cody-Waite reduction), written so that
// GCC vectorises it over channels (with -fno-trapping-math, see kernels.py). x is clamped
// to [-87.33, 88.37], where 2^n is a normal float: below, it gives exp(-87.33) = 1.2e-38 (not a
// denormal or 0); above, exp(88.37) = 2.4e38 (not up to inf). NaN passes through. Full range
// handling would cost a measurable part of the MBConv kernel's time; SiLU handles its one edge
// itself.
inline float Exp(float x) {
  float t = x < -87.33f ? -87.33f : x;
  t = t > 88.37f ? 88.37f : t;
  // n = round(t / ln 2): adding 1.5 * 2^23 rounds away the fraction.
  const float n = (t * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = t - n * 0.693359375f + n * 2.12194440e-4f;  // ln 2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);  // p * 2^n
}

enum Activation : int64_t { kNone = 0, kSilu = 1, kRelu = 2, kRelu6 = 3 };

template <int64_t kAct>
inline float Activate(float z) {
  if constexpr (kAct == kSilu) {
    const float v = z / (1.0f + Exp(-z));
    return z < -88.0f ? -0.0f : v;  // |silu(z)| < 6e-37 there; Exp(-z) would stop at 2.4e38
  }
  if constexpr (kAct == kRelu) return z > 0.0f ? z : 0.0f;
  if constexpr (kAct == kRelu6) {
    z = z > 0.0f ? z : 0.0f;
    return z < 6.0f ? z : 6.0f;
  }
  return z;
}

// out[i] = act(u[i] * scale[i % c] + shift[i % c]) for one row of w pixels.
template <int64_t kAct>
void AffineActivateRow(const float* __restrict__ u, const float* __restrict__ scale,
                       const float* __restrict__ shift, float* __restrict__ out, int64_t w,
                       int64_t c) {
  for (int64_t q = 0; q < w; ++q, u += c, out += c) {
    for (int64_t ch = 0; ch < c; ++ch) out[ch] = Activate<kAct>(u[ch] * scale[ch] + shift[ch]);
  }
}

// y[i] = act(acc[i]); sum[i] += y[i].
template <int64_t kAct>
void ActivateAndSum(const float* __restrict__ acc, float* __restrict__ y, float* __restrict__ sum,
                    int64_t c) {
  for (int64_t ch = 0; ch < c; ++ch) {
    const float v = Activate<kAct>(acc[ch]);
    y[ch] = v;
    sum[ch] += v;
  }
}

template <typename Fn>
void WithActivation(int64_t act, Fn fn) {
  switch (act) {
    case kSilu: fn(std::integral_constant<int64_t, kSilu>()); break;
    case kRelu: fn(std::integral_constant<int64_t, kRelu>()); break;
    case kRelu6: fn(std::integral_constant<int64_t, kRelu6>()); break;
    default: fn(std::integral_constant<int64_t, kNone>());
  }
}

// Squeeze-excite's weights for one block (see the header); nullptr where the block has none.
struct SqueezeExciteWeights {
  const float* reduce;       // [C, S]
  const float* reduce_bias;  // [S]
  const float* expand;       // [S, C]
  const float* expand_bias;  // [C]
  int64_t squeezed;          // S
  int64_t act;
};

// gate[c] = sigmoid(act(mean @ reduce + reduce_bias) @ expand + expand_bias)[c] for one image.
void SqueezeExciteGate(const SqueezeExciteWeights& se, const float* mean, float* gate,
                       int64_t c) {
  std::vector<float> squeezed(se.reduce_bias, se.reduce_bias + se.squeezed);
  for (int64_t ch = 0; ch < c; ++ch) {
    const float m = mean[ch];
    const float* __restrict__ row = se.reduce + ch * se.squeezed;
    for (int64_t j = 0; j < se.squeezed; ++j) squeezed[j] += m * row[j];
  }
  WithActivation(se.act, [&](auto act) {
    for (float& v : squeezed) v = Activate<decltype(act)::value>(v);
  });
  std::copy(se.expand_bias, se.expand_bias + c, gate);
  for (int64_t j = 0; j < se.squeezed; ++j) {
    const float v = squeezed[j];
    const float* __restrict__ row = se.expand + j * c;
    for (int64_t ch = 0; ch < c; ++ch) gate[ch] += v * row[ch];
  }
  for (int64_t ch = 0; ch < c; ++ch) gate[ch] = 1.0f / (1.0f + Exp(-gate[ch]));
}

ffi::Error MbconvDepthwise(ffi::ThreadPool pool, const char* name, ffi::Buffer<ffi::F32> u,
                           ffi::Buffer<ffi::F32> in_affine, ffi::Buffer<ffi::F32> kernel,
                           ffi::Buffer<ffi::F32> out_shift, ffi::ResultBuffer<ffi::F32> y,
                           int64_t stride, int64_t act_in, int64_t act_out,
                           const SqueezeExciteWeights* se) {
  auto ud = u.dimensions();
  auto yd = y->dimensions();
  auto kd = kernel.dimensions();
  if (ud.size() != 4 || yd.size() != 4 || kd.size() != 3) {
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": u and y must be 4-D, the kernel [k, k, C]");
  }
  const int64_t n = ud[0], h = ud[1], w = ud[2], c = ud[3], oh = yd[1], ow = yd[2], k = kd[0];
  if (stride < 1 || k < 1 || kd[1] != k || kd[2] != c ||
      yd[0] != n || yd[3] != c || oh != (h + stride - 1) / stride ||
      ow != (w + stride - 1) / stride || in_affine.dimensions().size() != 2 ||
      in_affine.dimensions()[0] != 2 || in_affine.dimensions()[1] != c ||
      out_shift.element_count() != c || act_in < kNone || act_in > kRelu6 ||
      act_out < kNone || act_out > kRelu6) {
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": shapes, stride, padding or activations do not match");
  }
  // TF "SAME": the total padding makes the last window fit; the odd pixel goes after.
  const int64_t pad_top = std::max<int64_t>((oh - 1) * stride + k - h, 0) / 2;
  const int64_t pad_left = std::max<int64_t>((ow - 1) * stride + k - w, 0) / 2;
  // The activated input of one image with its zero border: rows pad_top .. pad_top + h - 1.
  const int64_t hp = std::max(pad_top + h, (oh - 1) * stride + k);
  const int64_t wp = std::max(pad_left + w, (ow - 1) * stride + k);
  const float* ud_data = u.typed_data();
  const float* scale = in_affine.typed_data();
  const float* shift = scale + c;
  const float* taps = kernel.typed_data();
  const float* bias = out_shift.typed_data();
  float* y_data = y->typed_data();
  ParallelFor(pool, n, [=](int64_t b) {
    // Only the border is zeroed: the image's rows overwrite the rest (zeroing all of it cost
    // a second write of each image's ~1 MB).
    std::vector<float> acc(c);
    std::vector<float> sum(se ? c : 0, 0.0f);
    std::unique_ptr<float[]> padded(new float[hp * wp * c]);
    std::fill(padded.get(), padded.get() + pad_top * wp * c, 0.0f);
    std::fill(padded.get() + (pad_top + h) * wp * c, padded.get() + hp * wp * c, 0.0f);
    for (int64_t r = 0; r < h; ++r) {
      float* row = padded.get() + (r + pad_top) * wp * c;
      std::fill(row, row + pad_left * c, 0.0f);
      std::fill(row + (pad_left + w) * c, row + wp * c, 0.0f);
      const float* src = ud_data + (b * h + r) * w * c;
      WithActivation(act_in, [&](auto act) {
        AffineActivateRow<decltype(act)::value>(src, scale, shift, row + pad_left * c, w, c);
      });
    }
    float* image = y_data + b * oh * ow * c;
    for (int64_t r = 0; r < oh; ++r) {
      for (int64_t q = 0; q < ow; ++q) {
        float* __restrict__ a = acc.data();
        std::copy(bias, bias + c, a);
        for (int64_t i = 0; i < k; ++i) {
          for (int64_t j = 0; j < k; ++j) {
            const float* __restrict__ px =
                padded.get() + ((r * stride + i) * wp + q * stride + j) * c;
            const float* __restrict__ wt = taps + (i * k + j) * c;
            for (int64_t ch = 0; ch < c; ++ch) a[ch] += px[ch] * wt[ch];
          }
        }
        float* out = image + (r * ow + q) * c;
        WithActivation(act_out, [&](auto act) {
          if (se) {
            ActivateAndSum<decltype(act)::value>(a, out, sum.data(), c);
          } else {
            for (int64_t ch = 0; ch < c; ++ch) out[ch] = Activate<decltype(act)::value>(a[ch]);
          }
        });
      }
    }
    if (!se) return;
    const float inv = 1.0f / static_cast<float>(oh * ow);
    for (float& v : sum) v *= inv;
    std::vector<float> gate(c);
    SqueezeExciteGate(*se, sum.data(), gate.data(), c);
    const float* __restrict__ g = gate.data();
    for (int64_t p = 0; p < oh * ow; ++p) {
      float* __restrict__ out = image + p * c;
      for (int64_t ch = 0; ch < c; ++ch) out[ch] *= g[ch];
    }
  });
  return ffi::Error::Success();
}

}  // namespace

static ffi::Error MbconvDepthwiseInference(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> in_affine,
    ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> out_shift, ffi::ResultBuffer<ffi::F32> y,
    int64_t stride, int64_t act_in, int64_t act_out) {
  return MbconvDepthwise(pool, "effnetv2_mbconv_depthwise_inference", u, in_affine, kernel,
                         out_shift, y, stride, act_in, act_out, nullptr);
}

static ffi::Error MbconvDepthwiseSeInference(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> in_affine,
    ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> out_shift,
    ffi::Buffer<ffi::F32> se_reduce, ffi::Buffer<ffi::F32> se_reduce_bias,
    ffi::Buffer<ffi::F32> se_expand, ffi::Buffer<ffi::F32> se_expand_bias,
    ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t act_in, int64_t act_out,
    int64_t se_act) {
  const char* name = "effnetv2_mbconv_depthwise_se_inference";
  auto rd = se_reduce.dimensions();
  const int64_t c = kernel.dimensions().size() == 3 ? kernel.dimensions()[2] : -1;
  const int64_t s = rd.size() == 2 ? rd[1] : -1;
  if (rd.size() != 2 || rd[0] != c || s < 1 || se_reduce_bias.element_count() != s ||
      se_expand.dimensions().size() != 2 || se_expand.dimensions()[0] != s ||
      se_expand.dimensions()[1] != c || se_expand_bias.element_count() != c ||
      se_act < kNone || se_act > kRelu6) {
    return ffi::Error::InvalidArgument(
        std::string(name) + ": squeeze-excite weights must be [C, S], [S], [S, C], [C] for the "
        "kernel's C channels, with an activation code 0-3");
  }
  const SqueezeExciteWeights se{se_reduce.typed_data(), se_reduce_bias.typed_data(),
                                se_expand.typed_data(), se_expand_bias.typed_data(), s, se_act};
  return MbconvDepthwise(pool, name, u, in_affine, kernel, out_shift, y, stride, act_in,
                         act_out, &se);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(effnetv2_mbconv_depthwise_inference, MbconvDepthwiseInference,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("act_in")
                                  .Attr<int64_t>("act_out"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(effnetv2_mbconv_depthwise_se_inference, MbconvDepthwiseSeInference,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("act_in")
                                  .Attr<int64_t>("act_out")
                                  .Attr<int64_t>("se_act"));
