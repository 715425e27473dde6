// XLA:CPU kernels for the ops whose XLA-generated code is far from the hardware
// (effnetv2_jax/models/cpu_kernels.py builds and registers this file through jax.ffi).
//
// effnetv2_depthwise_kernel_grad: the weight gradient of a depthwise k x k convolution,
//   dw[i, j, c] = sum_{n, h, w} xp[n, h * s + i, w * s + j, c] * dy[n, h, w, c]
// xp: [N, Hp, Wp, C] float32, the input already padded ("SAME"); dy: [N, OH, OW, C] float32;
// dw: [k, k, C] float32; attribute stride (s). XLA reduces over N, H, W with C minor at
// 0.1-1 GFLOP/s; here each output pixel adds k*k vectorised rows of C products into a k*k*C
// accumulator that stays in L1/L2 (5-14x faster on V2-S's shapes). Each image is summed on its
// own and then added to the total, so rounding grows with pixels per image, not the batch.
//
// effnetv2_materialize: the identity, its result aliased to its operand. It marks a value that
// XLA must write to memory once: XLA fuses cheap elementwise producers (such as the depthwise
// conv's k*k shifted multiply-adds) into every consumer, and its reduction loops, which then
// recompute the producer per output element, run on one thread without vectors.
//
// effnetv2_spatial_mean: out[b, c] = mean_n x[b, n, c], x: [B, N, C] float32 (the
// squeeze-excite pooling at inference). XLA's reduction loop for it runs on one thread at
// ~1 ns an element; here the images are shared out over XLA's intra-op thread pool and each
// sums its rows with vectorised adds.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
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

// The images of one spatial-mean call, claimed one at a time by the calling thread and by the
// pool's threads. Shared ownership: a pool task that starts after the call has returned finds
// nothing left to claim and only drops its reference.
struct SpatialMeanJob {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t images = 0, pixels = 0, channels = 0;
  const float* x = nullptr;
  float* out = nullptr;

  void Work() {
    for (int64_t b; (b = next.fetch_add(1)) < images;) {
      float* o = out + b * channels;
      std::fill(o, o + channels, 0.0f);
      const float* row = x + b * pixels * channels;
      for (int64_t p = 0; p < pixels; ++p, row += channels) {
        for (int64_t ch = 0; ch < channels; ++ch) o[ch] += row[ch];
      }
      const float scale = 1.0f / static_cast<float>(pixels);
      for (int64_t ch = 0; ch < channels; ++ch) o[ch] *= scale;
      done.fetch_add(1);
    }
  }
};

}  // namespace

static ffi::Error SpatialMean(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions();
  auto od = out->dimensions();
  if (xd.size() != 3 || od.size() != 2 || od[0] != xd[0] || od[1] != xd[2] || xd[1] < 1) {
    return ffi::Error::InvalidArgument(
        "effnetv2_spatial_mean: x must be [B, N >= 1, C] and the result [B, C]");
  }
  auto job = std::make_shared<SpatialMeanJob>();
  job->images = xd[0];
  job->pixels = xd[1];
  job->channels = xd[2];
  job->x = x.typed_data();
  job->out = out->typed_data();
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), job->images) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->Work(); });
  job->Work();  // the caller works too, so the call finishes even if the pool is busy
  while (job->done.load() < job->images) std::this_thread::yield();
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(effnetv2_spatial_mean, SpatialMean,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
