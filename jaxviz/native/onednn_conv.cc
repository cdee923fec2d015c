// oneDNN's 3x3 SAME stride-1 convolution and batched matmul, as XLA FFI handlers for jaxviz.onednn.
//
// Convolution:
// x: (N, H, W, C) float32 or bfloat16 (NHWC), w: (3, 3, C, O) of the same type (HWIO),
// y: (N, H, W, O) float32. oneDNN picks its implementation for the CPU it runs on
// (AMX or AVX512-bf16 for bfloat16 where the CPU has them); its primitive cache keeps
// the compiled kernels between calls, keyed by shape.
#include <algorithm>
#include <exception>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

template <ffi::DataType T>
ffi::Error Conv3x3(ffi::Buffer<T> x, ffi::Buffer<T> w, ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 4 || wd.size() != 4 || wd[0] != 3 || wd[1] != 3 || wd[2] != xd[3]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxviz onednn conv: x must be (N, H, W, C) and w (3, 3, C, O)");
  }
  const memory::dim n = xd[0], h = xd[1], width = xd[2], c = xd[3], o = wd[3];
  const auto dt = T == ffi::DataType::F32 ? memory::data_type::f32 : memory::data_type::bf16;
  try {
    dnnl::engine& engine = cpu_engine();
    dnnl::stream stream(engine);
    memory::desc src_md({n, c, h, width}, dt, memory::format_tag::nhwc);
    memory::desc dst_md({n, o, h, width}, memory::data_type::f32, memory::format_tag::nhwc);
    memory::desc user_w_md({o, c, 3, 3}, dt, memory::format_tag::hwio);
    memory::desc any_w_md({o, c, 3, 3}, dt, memory::format_tag::any);
    dnnl::convolution_forward::primitive_desc pd(
        engine, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src_md, any_w_md,
        dst_md, {1, 1}, {1, 1}, {1, 1});
    memory src(src_md, engine, x.untyped_data());
    memory dst(dst_md, engine, y->untyped_data());
    memory wts(user_w_md, engine, w.untyped_data());
    if (pd.weights_desc() != user_w_md) {
      memory blocked(pd.weights_desc(), engine);
      dnnl::reorder(wts, blocked).execute(stream, wts, blocked);
      wts = blocked;
    }
    dnnl::convolution_forward(pd).execute(
        stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wts}, {DNNL_ARG_DST, dst}});
    stream.wait();
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("jaxviz onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

// c[..., i] = a[..., i, :, :] @ b[i] for a (..., B, M, K), b (B, K, N): Winograd's batched matmuls,
// the leading dimensions of a broadcast over b (oneDNN's matmul with a batch of 1 in b).
ffi::Error BatchedMatmul(ffi::Buffer<ffi::DataType::F32> a, ffi::Buffer<ffi::DataType::F32> b,
                         ffi::ResultBuffer<ffi::DataType::F32> c) {
  auto ad = a.dimensions();
  auto bd = b.dimensions();
  const size_t r = ad.size();
  if (r < 3 || bd.size() != 3 || ad[r - 3] != bd[0] || ad[r - 1] != bd[1]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxviz onednn matmul: a must be (..., B, M, K) and b (B, K, N)");
  }
  memory::dim v = 1;
  for (size_t i = 0; i + 3 < r; ++i) v *= ad[i];
  const memory::dim nb = bd[0], m = ad[r - 2], k = ad[r - 1], n = bd[2];
  const auto f32 = memory::data_type::f32;
  try {
    dnnl::engine& engine = cpu_engine();
    dnnl::stream stream(engine);
    memory::desc a_md({v, nb, m, k}, f32, memory::format_tag::abcd);
    memory::desc b_md({1, nb, k, n}, f32, memory::format_tag::abcd);
    memory::desc c_md({v, nb, m, n}, f32, memory::format_tag::abcd);
    dnnl::matmul::primitive_desc pd(engine, a_md, b_md, c_md);
    memory am(a_md, engine, a.untyped_data()), bm(b_md, engine, b.untyped_data()), cm(c_md, engine, c->untyped_data());
    dnnl::matmul(pd).execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    stream.wait();
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("jaxviz onednn matmul: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizOnednnBatchedMatmulF32, BatchedMatmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::DataType::F32>>()
                                  .Arg<ffi::Buffer<ffi::DataType::F32>>()
                                  .Ret<ffi::Buffer<ffi::DataType::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizOnednnConvF32, Conv3x3<ffi::DataType::F32>,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::DataType::F32>>()
                                  .Arg<ffi::Buffer<ffi::DataType::F32>>()
                                  .Ret<ffi::Buffer<ffi::DataType::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizOnednnConvBF16, Conv3x3<ffi::DataType::BF16>,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::DataType::BF16>>()
                                  .Arg<ffi::Buffer<ffi::DataType::BF16>>()
                                  .Ret<ffi::Buffer<ffi::DataType::F32>>());

// For the loader: which impl oneDNN chose for a shape (a diagnostic, not used by the conv).
extern "C" int jaxviz_onednn_impl(int bf16, long n, long h, long w, long c, long o, char* out, int size) {
  try {
    auto dt = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
    dnnl::engine& engine = cpu_engine();
    dnnl::convolution_forward::primitive_desc pd(
        engine, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
        memory::desc({n, c, h, w}, dt, memory::format_tag::nhwc),
        memory::desc({o, c, 3, 3}, dt, memory::format_tag::any),
        memory::desc({n, o, h, w}, memory::data_type::f32, memory::format_tag::nhwc), {1, 1}, {1, 1}, {1, 1});
    std::string s = pd.impl_info_str();
    if (size > 0) {
      s.copy(out, size - 1);
      out[std::min<size_t>(s.size(), size - 1)] = 0;
    }
    return 0;
  } catch (const std::exception&) {
    return 1;
  }
}
