// oneDNN's 3x3 SAME stride-1 convolution, its batched matmul, and a Winograd F(4x4, 3x3)
// convolution around that matmul, as XLA FFI handlers for jaxviz.onednn.
//
// Convolution:
// x: (N, H, W, C) float32 or bfloat16 (NHWC), w: (3, 3, C, O) of the same type (HWIO),
// y: (N, H, W, O) float32. oneDNN picks its implementation for the CPU it runs on
// (AMX or AVX512-bf16 for bfloat16 where the CPU has them); its primitive cache keeps
// the compiled kernels between calls, keyed by shape.
#include <algorithm>
#include <cstring>
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

// Winograd F(4x4, 3x3) conv, 3x3 SAME stride 1, float32: x (N, H, W, C), u (36, C, O) = G g G^T
// -> y (N, H, W, O), with v (36, B, C) and m (36, B, O) as scratch for a block of B of its
// N ceil(H/4) ceil(W/4) tiles. The tile transforms run here on every core (OpenMP), the 36
// matmuls of a block in oneDNN's matmul. Every transform runs the operations of ops._bt4 and
// ops._at4 in their order, without FMA contraction, and each product is oneDNN's, which sums
// over K alike for any number of rows on AVX-512 (on AVX2 within one block only): the results
// are that XLA form's (with onednn.batched_matmul), bit for bit (tests/test_onednn.py).
constexpr int kTile = 6;
// Channels per vector: one register. With two AVX2 registers per 16-lane vector the transforms
// spilled (16 ymm registers); 8 lanes ran them 1.45-1.6x faster at 64 channels on an AVX2 Zen 3
// (bench/README.md).
#ifdef __AVX512F__
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
using Vec = float __attribute__((vector_size(4 * kLanes)));

// r[0..5] (stride rs) = B^T d[0..5] (stride ds): ops._bt4.
inline void Bt(const Vec* d, long ds, Vec* r, long rs) {
  const Vec d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds], d5 = d[5 * ds];
  const Vec e = d3 - d1, t3 = d4 - d2;
  const Vec t1 = d4 - 4.0f * d2, t2 = d3 - 4.0f * d1, t4 = 2.0f * e;
  r[0] = 4.0f * (d0 - d2) + t3;
  r[rs] = t1 + t2;
  r[2 * rs] = t1 - t2;
  r[3 * rs] = t3 + t4;
  r[4 * rs] = t3 - t4;
  r[5 * rs] = (d5 - d3) - 4.0f * e;
}

// r[0..3] (stride rs) = A^T m[0..5] (stride ms): ops._at4.
inline void At(const Vec* m, long ms, Vec* r, long rs) {
  const Vec m0 = m[0], m1 = m[ms], m2 = m[2 * ms], m3 = m[3 * ms], m4 = m[4 * ms], m5 = m[5 * ms];
  const Vec a = m1 + m2, b = m1 - m2, c = m3 + m4, d = m3 - m4;
  r[0] = (m0 + a) + c;
  r[rs] = b + 2.0f * d;
  r[2 * rs] = a + 4.0f * c;
  r[3 * rs] = (b + 8.0f * d) + m5;
}

// Unaligned loads and stores of len <= kLanes channels (a constant-size copy when whole: one instruction).
inline Vec Load(const float* p, int len) {
  Vec v{};
  if (len == kLanes) std::memcpy(&v, p, sizeof(Vec));
  else std::memcpy(&v, p, sizeof(float) * len);
  return v;
}

inline void Store(float* p, const Vec& v, int len) {
  if (len == kLanes) std::memcpy(p, &v, sizeof(Vec));
  else std::memcpy(p, &v, sizeof(float) * len);
}

// Input transform of tiles t0 .. t0 + nt into v (36, nt, C): tile (b, ty, tx) reads rows
// 4 ty - 1 .. 4 ty + 4 and columns 4 tx - 1 .. 4 tx + 4 (zeros outside the image);
// r[p][j] = sum_i Bt[p][i] d[i][j], a column at a time (its six values in registers), then
// v[p][q] = sum_j Bt[q][j] r[p][j].
void InputTransform(const float* xs, long h, long w, long c, long th, long tw, long t0, long nt, long ps, float* v) {
#pragma omp parallel for schedule(static)
  for (long k = 0; k < nt; ++k) {
    const long t = t0 + k, b = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
    const bool inside = ty > 0 && tx > 0 && 4 * ty + 4 < h && 4 * tx + 4 < w;
    for (long c0 = 0; c0 < c; c0 += kLanes) {
      const int len = static_cast<int>(std::min<long>(kLanes, c - c0));
      Vec r[kTile][kTile];
      for (int j = 0; j < kTile; ++j) {  // column j of the tile: r[.][j] = Bt d[.][j]
        const long cl = 4 * tx + j - 1;
        Vec d[kTile];
        for (int i = 0; i < kTile; ++i) {
          const long row = 4 * ty + i - 1;
          const bool in = inside || (row >= 0 && row < h && cl >= 0 && cl < w);
          d[i] = in ? Load(xs + ((b * h + row) * w + cl) * c + c0, len) : Vec{};
        }
        Bt(d, 1, &r[0][j], kTile);
      }
      for (int p = 0; p < kTile; ++p) {
        float* out = v + p * kTile * ps + k * c + c0;
        Vec q[kTile];
        Bt(r[p], 1, q, 1);
        for (int i = 0; i < kTile; ++i) Store(out + i * ps, q[i], len);
      }
    }
  }
}

// Output transform of mm (36, nt, O), tiles t0 .. t0 + nt, into y:
// s[a][q] = sum_p At[a][p] m[p][q], y[a][e] = sum_q At[e][q] s[a][q].
void OutputTransform(const float* mm, long h, long w, long o, long th, long tw, long t0, long nt, long ps, float* ys) {
#pragma omp parallel for schedule(static)
  for (long k = 0; k < nt; ++k) {
    const long t = t0 + k, b = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
    for (long o0 = 0; o0 < o; o0 += kLanes) {
      const int len = static_cast<int>(std::min<long>(kLanes, o - o0));
      Vec s[4][kTile];
      for (int q = 0; q < kTile; ++q) {  // column q: s[.][q] = At m[.][q]
        Vec m[kTile];
        for (int p = 0; p < kTile; ++p) m[p] = Load(mm + (p * kTile + q) * ps + k * o + o0, len);
        At(m, 1, &s[0][q], kTile);
      }
      for (int a = 0; a < 4; ++a) {
        const long row = 4 * ty + a;
        if (row >= h) break;
        Vec e[4];
        At(s[a], 1, e, 1);
        for (int i = 0; i < 4 && 4 * tx + i < w; ++i) Store(ys + ((b * h + row) * w + 4 * tx + i) * o + o0, e[i], len);
      }
    }
  }
}

// The conv in blocks of `block` tiles (the last one shorter): each block's transformed tiles
// and products stay in cache between the transforms and the matmul.
ffi::Error Winograd4(ffi::Buffer<ffi::DataType::F32> x, ffi::Buffer<ffi::DataType::F32> u,
                     ffi::ResultBuffer<ffi::DataType::F32> y, ffi::ResultBuffer<ffi::DataType::F32> vbuf,
                     ffi::ResultBuffer<ffi::DataType::F32> mbuf, int64_t block) {
  auto xd = x.dimensions();
  auto ud = u.dimensions();
  auto vd = vbuf->dimensions();
  auto md_ = mbuf->dimensions();
  if (xd.size() != 4 || ud.size() != 3 || ud[0] != 36 || ud[1] != xd[3] || block < 1 || vd.size() != 2 ||
      md_.size() != 2 || vd[0] != 36 || md_[0] != 36 || vd[1] < block * xd[3] || md_[1] < block * ud[2]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxviz winograd: x must be (N, H, W, C), u (36, C, O), block positive and the scratch "
                      "(36, >= block C) and (36, >= block O)");
  }
  const long n = xd[0], h = xd[1], w = xd[2], c = xd[3], o = ud[2];
  const long th = (h + 3) / 4, tw = (w + 3) / 4, tiles = n * th * tw;
  // The 36 planes of a block lie vd[1] and md_[1] floats apart: onednn.py pads them so that
  // the planes of one tile do not all fall into a few of L1's sets.
  const long vs = vd[1], ms = md_[1];
  float* v = vbuf->typed_data();
  float* mm = mbuf->typed_data();
  try {
    dnnl::engine& engine = cpu_engine();
    dnnl::stream stream(engine);
    // (1, 36, rows, cols) float32, rows of each plane dense, planes `plane` floats apart
    auto md = [](long rows, long cols, long plane) {
      return memory::desc({1, 36, rows, cols}, memory::data_type::f32, {36 * plane, plane, cols, 1});
    };
    memory bm(md(c, o, c * o), engine, const_cast<float*>(u.typed_data()));
    dnnl::matmul full, last;
    for (long t0 = 0; t0 < tiles; t0 += block) {
      const long nt = std::min(block, tiles - t0);
      dnnl::matmul& mmul = nt == block ? full : last;
      if (!mmul) mmul = dnnl::matmul(dnnl::matmul::primitive_desc(engine, md(nt, c, vs), md(c, o, c * o), md(nt, o, ms)));
      InputTransform(x.typed_data(), h, w, c, th, tw, t0, nt, vs, v);
      memory am(md(nt, c, vs), engine, v), cm(md(nt, o, ms), engine, mm);
      mmul.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
      stream.wait();
      OutputTransform(mm, h, w, o, th, tw, t0, nt, ms, y->typed_data());
    }
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("jaxviz winograd: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizWinograd4F32, Winograd4,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::DataType::F32>>()
                                  .Arg<ffi::Buffer<ffi::DataType::F32>>()
                                  .Ret<ffi::Buffer<ffi::DataType::F32>>()
                                  .Ret<ffi::Buffer<ffi::DataType::F32>>()
                                  .Ret<ffi::Buffer<ffi::DataType::F32>>()
                                  .Attr<int64_t>("block"));

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
