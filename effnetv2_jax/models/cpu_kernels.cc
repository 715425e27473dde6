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

#include <algorithm>
#include <cstdint>
#include <cstring>
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
