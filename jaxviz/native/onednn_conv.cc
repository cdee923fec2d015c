// oneDNN's 3x3 SAME stride-1 convolution, its batched matmul, and a Winograd F(4x4, 3x3)
// convolution around that matmul, as XLA FFI handlers for jaxviz.onednn.
//
// Convolution:
// x: (N, H, W, C) float32 or bfloat16 (NHWC), w: (3, 3, C, O) of the same type (HWIO),
// y: (N, H, W, O) float32. oneDNN picks its implementation for the CPU it runs on
// (AMX or AVX512-bf16 for bfloat16 where the CPU has them); its primitive cache keeps
// the compiled kernels between calls, keyed by shape.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <immintrin.h>
#include <omp.h>

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
using VecI = int __attribute__((vector_size(4 * kLanes)));

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

// Unaligned loads and stores of len <= kLanes channels: one instruction when whole; a part
// (channels not a multiple of kLanes) out of line, so that the whole case keeps its vector in a
// register (with both in one function, GCC sent every load through the stack).
[[gnu::noinline, gnu::cold]] Vec LoadPart(const float* p, int len) {
  Vec v{};
  std::memcpy(&v, p, sizeof(float) * len);
  return v;
}

inline Vec Load(const float* p, int len) {
  if (__builtin_expect(len != kLanes, 0)) return LoadPart(p, len);
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

[[gnu::noinline, gnu::cold]] void StorePart(float* p, const Vec& v, int len) {
  std::memcpy(p, &v, sizeof(float) * len);
}

inline void Store(float* p, const Vec& v, int len) {
  if (__builtin_expect(len != kLanes, 0)) return StorePart(p, v, len);
  std::memcpy(p, &v, sizeof(Vec));
}

// Store, bypassing the cache where a whole aligned vector (a streaming store): for the conv's
// output, which is not read again in this call. A line written in full this way is not first read
// from memory; on a Zen 5 the seed's four grids took 0.93x their time with it (bench/README.md).
// The caller fences (Fence) before another thread reads what it wrote.
inline void Stream(float* p, const Vec& v, int len) {
  if (len != kLanes || reinterpret_cast<uintptr_t>(p) % sizeof(Vec) != 0) return Store(p, v, len);
#ifdef __AVX512F__
  _mm512_stream_ps(p, (__m512)v);
#else
  _mm256_stream_ps(p, (__m256)v);
#endif
}

inline void Fence() { _mm_sfence(); }

// Whether any lane of a comparison's mask is set.
inline bool Any(const VecI& m) {
#ifdef __AVX512F__
  return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
#else
  return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#endif
}

// A window's maxima as bits, a byte per channel (Output.hits, PoolGrad): lanes' low bytes.
inline void StoreBytes(uint8_t* p, const VecI& v, int len) {
#ifdef __AVX512F__
  if (len == kLanes) return _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8((__m512i)v));
#endif
  for (int l = 0; l < len; ++l) p[l] = static_cast<uint8_t>(v[l]);
}

inline VecI LoadBytes(const uint8_t* p, int len) {
  if (len == kLanes) {
#ifdef __AVX512F__
    return (VecI)_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
    return (VecI)_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
#endif
  }
  VecI v{};
  for (int l = 0; l < len; ++l) v[l] = p[l];
  return v;
}

// What the input transform reads: a tile's 6 x 6 values of one vector of channels, a column
// at a time, for the tile (b, ty, tx) at rows 4 ty - 1 .. 4 ty + 4 and columns 4 tx - 1 ..
// 4 tx + 4 of an (N, H, W, C) image (zeros outside it).
// Rows and columns are the tile's own, 0-5; a tile's offsets and the bits of its rows and columns
// inside the image are worked out once in Begin, so that each of the 36 loads is one instruction.
struct Pixels {  // the image itself
  const float* x;
  long h, w, c;
  long b, ty, tx, c0;
  int len;
  bool inside;
  unsigned rows, cols;  // bit i: the tile's row / column i lies in the image
  long at0, row_stride;  // the offset of the tile's row 0, column 0 (outside the image at an edge)
  void Begin(long b_, long ty_, long tx_, long c0_, int len_) {
    b = b_, ty = ty_, tx = tx_, c0 = c0_, len = len_;
    rows = cols = 0;
    for (int i = 0; i < kTile; ++i) {
      rows |= static_cast<unsigned>(4 * ty + i - 1 >= 0 && 4 * ty + i - 1 < h) << i;
      cols |= static_cast<unsigned>(4 * tx + i - 1 >= 0 && 4 * tx + i - 1 < w) << i;
    }
    inside = rows == 63 && cols == 63;
    row_stride = w * c;
    at0 = ((b * h + 4 * ty - 1) * w + 4 * tx - 1) * c + c0;
  }
  bool In(int i, int j) const { return inside || ((rows >> i) & (cols >> j) & 1); }
  long At(int i, int j) const { return at0 + i * row_stride + j * c; }
  void Column(int j, Vec* d) const {
#pragma GCC unroll 6
    for (int i = 0; i < kTile; ++i) d[i] = In(i, j) ? Load(x + At(i, j), len) : Vec{};
  }
};

// XLA's max(z, 0), as jax.nn.relu: a NaN stays NaN.
inline Vec Relu(const Vec& z) { return (Vec)((VecI)z & ~(VecI)(z < 0.0f)); }

// relu(x + bias): a layer's input that is the conv before it without its bias and relu (the
// colour layer's: its own conv has no fused form), which are applied here as the tile is read.
// With `keep`, (N, H, W, C) bytes: 1 where x + bias > 0, else 0 (a NaN 0), each pixel written by
// the one tile whose inner 4 x 4 holds it: all the gradient of this relu needs (Output.keep),
// a quarter of x's bytes, so that the gradient's call reads no float of x.
struct BiasRelu : Pixels {
  const float* bias;
  uint8_t* keep = nullptr;
  Vec bv;
  void Begin(long b_, long ty_, long tx_, long c0_, int len_) {
    Pixels::Begin(b_, ty_, tx_, c0_, len_);
    bv = Load(bias + c0, len);
  }
  void Column(int j, Vec* d) const {
#pragma GCC unroll 6
    for (int i = 0; i < kTile; ++i) {
      if (!In(i, j)) {
        d[i] = Vec{};
        continue;
      }
      const long at = At(i, j);
      const Vec z = Load(x + at, len) + bv;
      d[i] = Relu(z);
      if (keep && i >= 1 && i <= 4 && j >= 1 && j <= 4) StoreBytes(keep + at, (VecI)(z > 0.0f) & 1, len);
    }
  }
};

// A relu's gradient: x (the cotangent) where mask is 1, else 0: the relu's bytes (Output.relu_mask,
// 1 where its output is positive), as XLA's select(relu_out > 0, g, 0).
struct ReluGrad : Pixels {
  const uint8_t* mask;
  void Column(int j, Vec* d) const {
#pragma GCC unroll 6
    for (int i = 0; i < kTile; ++i) {
      if (!In(i, j)) {
        d[i] = Vec{};
        continue;
      }
      const long at = At(i, j);
      d[i] = (Vec)((VecI)Load(x + at, len) & -LoadBytes(mask + at, len));
    }
  }
};

// The gradient of relu then a 2x2 max pool (model.max_pool2's, then the relu's), from the
// pooled cotangent gp and the windows' hits, (N, H/2, W/2, C) (Output.hits: bit k set where the
// window's k-th pixel is its maximum and that maximum is positive); the image (N, H, W, C) it
// spreads to is the Pixels' (x unused). A window's cotangent split equally between its maxima,
// g / count at each hit (XLA's hit * share), else 0; pixels of no window (an odd edge) get 0. A
// window whose maximum is NaN or not positive has no hit: all 0, as in XLA's ops.
struct PoolGrad : Pixels {
  const float* gp;
  const uint8_t* hits;
  long h2, w2;
  Vec share[4][4];  // windows 2 ty - 1 .. 2 ty + 2 by 2 tx - 1 .. 2 tx + 2
  VecI bits[4][4];
  bool valid[4][4];
  void Begin(long b_, long ty_, long tx_, long c0_, int len_) {
    Pixels::Begin(b_, ty_, tx_, c0_, len_);
    for (int p = 0; p < 4; ++p) {
      for (int q = 0; q < 4; ++q) {
        const long wy = 2 * ty - 1 + p, wx = 2 * tx - 1 + q;
        valid[p][q] = wy >= 0 && wy < h2 && wx >= 0 && wx < w2;
        if (!valid[p][q]) continue;
        const long pat = ((b * h2 + wy) * w2 + wx) * c + c0;
        const VecI hb = LoadBytes(hits + pat, len);
        const VecI count = (hb & 1) + ((hb >> 1) & 1) + ((hb >> 2) & 1) + ((hb >> 3) & 1);
        const Vec g = Load(gp + pat, len);
        bits[p][q] = hb;
        // g / count only where a window has tied maxima: most skip the division (g / 1 is g)
        share[p][q] = Any(count > 1) ? g / __builtin_convertvector(count, Vec) : g;
      }
    }
  }
  void Column(int j, Vec* d) const {
    const int q = (j + 1) / 2, kx = (j + 1) & 1;
    for (int i = 0; i < kTile; ++i) {
      const int p = (i + 1) / 2, k = 2 * ((i + 1) & 1) + kx;
      d[i] = valid[p][q] ? (Vec)((VecI)share[p][q] & -((bits[p][q] >> k) & 1)) : Vec{};
    }
  }
};

// v's values: float32, or bfloat16 (uint16_t) rounded to nearest even, as XLA's convert rounds.
inline void StoreV(float* p, const Vec& v, int len) { Store(p, v, len); }

inline void StoreV(uint16_t* p, const Vec& v, int len) {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
  const __m256bh h = _mm512_cvtneps_pbh((__m512)v);
  if (len == kLanes) return _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)h);
  uint16_t tmp[kLanes];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(tmp), (__m256i)h);
  std::memcpy(p, tmp, sizeof(uint16_t) * len);
#else
  for (int l = 0; l < len; ++l) {
    uint32_t b;
    const float f = v[l];
    std::memcpy(&b, &f, 4);
    p[l] = f != f ? static_cast<uint16_t>((b >> 16) | 0x40) : static_cast<uint16_t>((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
  }
#endif
}

// The channels of a tile in whole vectors (`Whole`: the first C / kLanes * kLanes channels, each
// load and store one instruction, no call on the way) or in the one part vector left. Two loops
// instead of a test at each load and store: with the part's out-of-line calls in the loop, GCC
// spilled more of the whole vectors' values, and the input transform alone ran 1.2-1.4x slower
// on a Zen 4; the calls 0.93-1.03x (about 0.97), the grids 0.985x paired (bench/README.md).
template <bool Whole>
inline long VecBegin(long n) { return Whole ? 0 : n / kLanes * kLanes; }
template <bool Whole>
inline long VecEnd(long n) { return Whole ? n / kLanes * kLanes : n; }
template <bool Whole>
inline int VecLen(long n, long c0) { return Whole ? kLanes : static_cast<int>(n - c0); }

// Input transform of tile t, row k of v (36, nt, C): r[p][j] = sum_i Bt[p][i] d[i][j], a column
// at a time (its six values in registers), then v[p][q] = sum_j Bt[q][j] r[p][j].
template <bool Whole, class Src, class T>
[[gnu::always_inline]] inline void InputTile(Src& src, long th, long tw, long t, long k, long ps, T* v) {
  const long c = src.c, b = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
  for (long c0 = VecBegin<Whole>(c); c0 < VecEnd<Whole>(c); c0 += kLanes) {
    const int len = VecLen<Whole>(c, c0);
    src.Begin(b, ty, tx, c0, len);
    Vec r[kTile][kTile];
#pragma GCC unroll 6
    for (int j = 0; j < kTile; ++j) {  // column j of the tile: r[.][j] = Bt d[.][j]
      Vec d[kTile];
      src.Column(j, d);
      Bt(d, 1, &r[0][j], kTile);
    }
#pragma GCC unroll 6
    for (int p = 0; p < kTile; ++p) {
      T* out = v + p * kTile * ps + k * c + c0;
      Vec q[kTile];
      Bt(r[p], 1, q, 1);
#pragma GCC unroll 6
      for (int i = 0; i < kTile; ++i) StoreV(out + i * ps, q[i], len);
    }
  }
}

// Input transform of tiles t0 .. t0 + nt into v (36, nt, C).
template <class Src, class T>
void InputTransform(Src src, long th, long tw, long t0, long nt, long ps, T* v, bool parallel) {
#pragma omp parallel firstprivate(src) if (parallel)
  {
#pragma omp for schedule(static) nowait
    for (long k = 0; k < nt; ++k) InputTile<true>(src, th, tw, t0 + k, k, ps, v);
    if (src.c % kLanes) {
#pragma omp for schedule(static) nowait
      for (long k = 0; k < nt; ++k) InputTile<false>(src, th, tw, t0 + k, k, ps, v);
    }
  }
}

// XLA's maximum: NaN if either is NaN.
inline Vec Max(const Vec& a, const Vec& b) {
  const VecI take_a = (a > b) | (a != a);
  return (Vec)(((VecI)a & take_a) | ((VecI)b & ~take_a));
}

// Where the output transform writes: y (N, H, W, O); with a bias, relu(y + bias) as XLA's
// max(y + bias, 0) (a NaN stays NaN), and with `relu_mask`, (N, H, W, O), a byte for each value
// written, 1 where it is positive (a NaN 0): all its relu's gradient needs (ReluGrad), a quarter
// of y's bytes; with `pooled` and `hits`, (N, H/2, W/2, O), its 2x2 max
// pool as model.max_pool2's max(max(a, b), max(c, d)) (odd edges dropped) and the pool's hits
// (PoolGrad's), y then not written (null): the next layer reads the pool, the gradient the hits.
// With `keep`, (N, H, W, O) bytes (BiasRelu's), y where keep is 1, else 0: the gradient of a
// layer's input relu(x + x_bias) taken on to x, as XLA's select(x + x_bias > 0, g, 0).
struct Output {
  float* y;
  const float* bias;
  float* pooled;
  long h, w, o;
  uint8_t* hits = nullptr;
  const uint8_t* keep = nullptr;
  uint8_t* relu_mask = nullptr;
};

// Output transform of tile t, row k of mm (36, nt, O): s[a][q] = sum_p At[a][p] m[p][q],
// y[a][e] = sum_q At[e][q] s[a][q].
template <bool Whole>
[[gnu::always_inline]] inline void OutputTile(const float* mm, const Output& out, long th, long tw, long t, long k, long ps) {
  const long h = out.h, w = out.w, o = out.o, h2 = h / 2, w2 = w / 2;
  const long b = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
  // the tile's rows and columns inside the image (4 but at an edge), and the offset of its pixel 0, 0
  const int rows = static_cast<int>(std::min<long>(4, h - 4 * ty)), cols = static_cast<int>(std::min<long>(4, w - 4 * tx));
  const long at0 = ((b * h + 4 * ty) * w + 4 * tx) * o;
  for (long o0 = VecBegin<Whole>(o); o0 < VecEnd<Whole>(o); o0 += kLanes) {
    const int len = VecLen<Whole>(o, o0);
    const Vec bv = out.bias ? Load(out.bias + o0, len) : Vec{};
    const float* mk = mm + k * o + o0;
    Vec s[4][kTile];
#pragma GCC unroll 6
    for (int q = 0; q < kTile; ++q) {  // column q: s[.][q] = At m[.][q]
      Vec m[kTile];
#pragma GCC unroll 6
      for (int p = 0; p < kTile; ++p) m[p] = Load(mk + (p * kTile + q) * ps, len);
      At(m, 1, &s[0][q], kTile);
    }
    Vec e[4][4];
#pragma GCC unroll 4
    for (int a = 0; a < 4; ++a) {
      if (a >= rows) break;
      At(s[a], 1, e[a], 1);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        if (i >= cols) break;
        const long at = at0 + (a * w + i) * o + o0;
        if (out.bias) e[a][i] = Relu(e[a][i] + bv);
        if (out.keep) e[a][i] = (Vec)((VecI)e[a][i] & -LoadBytes(out.keep + at, len));
        if (out.y) Stream(out.y + at, e[a][i], len);
        if (out.relu_mask) StoreBytes(out.relu_mask + at, (VecI)(e[a][i] > 0.0f) & 1, len);
      }
    }
    if (!out.pooled) continue;
    for (int a = 0; a < 2 && 2 * ty + a < h2; ++a) {
      for (int i = 0; i < 2 && 2 * tx + i < w2; ++i) {
        const Vec* r0 = &e[2 * a][2 * i];
        const Vec* r1 = &e[2 * a + 1][2 * i];
        const Vec m = Max(Max(r0[0], r0[1]), Max(r1[0], r1[1]));
        const long at = ((b * h2 + 2 * ty + a) * w2 + 2 * tx + i) * o + o0;
        Store(out.pooled + at, m, len);
        if (!out.hits) continue;
        const VecI top = m > 0.0f;
        const VecI hb = ((r0[0] == m) & top & 1) | ((r0[1] == m) & top & 2) | ((r1[0] == m) & top & 4) |
                        ((r1[1] == m) & top & 8);
        StoreBytes(out.hits + at, hb, len);
      }
    }
  }
}

// Output transform of mm (36, nt, O), tiles t0 .. t0 + nt; each thread fences its streaming stores.
void OutputTransform(const float* mm, const Output out, long th, long tw, long t0, long nt, long ps, bool parallel) {
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static) nowait
    for (long k = 0; k < nt; ++k) OutputTile<true>(mm, out, th, tw, t0 + k, k, ps);
    if (out.o % kLanes) {
#pragma omp for schedule(static) nowait
      for (long k = 0; k < nt; ++k) OutputTile<false>(mm, out, th, tw, t0 + k, k, ps);
    }
    Fence();
  }
}

using F32 = ffi::Buffer<ffi::DataType::F32>;
// A transformed kernel, (36, C, O): float32, or bfloat16 for matmuls of bfloat16 inputs (the
// transformed tiles rounded to bfloat16 as they are stored; products summed in float32).
using Kernel = ffi::AnyBuffer;
using F32Out = ffi::Result<F32>;
using U8 = ffi::Buffer<ffi::DataType::U8>;
using U8Out = ffi::Result<U8>;

ffi::Error Invalid(const char* what) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string("jaxviz winograd: ") + what);
}

// The transformed kernel G g G^T of ops.winograd_kernel: g (R, 3) (ops.WINOGRAD[m][1]), k (3, 3, C, O)
// -> u (R R, C, O). Each sum as XLA's dot made that einsum's on a Zen 5: the three products
// rounded, added in order, zeros included, no FMA ((g0 k0 + g1 k1) + g2 k2), rows G k first,
// then columns; the same bits there (tests/test_onednn.py). XLA's dots took about 50 ms for a
// 512 x 512 kernel, a cost every compiled call of a deep layer paid (bench/README.md).
ffi::Error WinogradKernel(F32 g, F32 k, F32Out u) {
  const auto gd = g.dimensions(), kd = k.dimensions();
  if (gd.size() != 2 || gd[1] != 3 || kd.size() != 4 || kd[0] != 3 || kd[1] != 3 || gd[0] > 8)
    return Invalid("kernel transform: g must be (R <= 8, 3) and k (3, 3, C, O)");
  const long r = gd[0], c = kd[2], o = kd[3], plane = c * o;
  const float* gp = g.typed_data();
  const float* kp = k.typed_data();
  float* up = u->typed_data();
#pragma omp parallel for schedule(static)
  for (long ci = 0; ci < c; ++ci) {
    for (long o0 = 0; o0 < o; o0 += kLanes) {
      const int len = static_cast<int>(std::min<long>(kLanes, o - o0));
      Vec kv[3][3];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) kv[i][j] = Load(kp + (i * 3 + j) * plane + ci * o + o0, len);
      for (long p = 0; p < r; ++p) {
        const float* gr = gp + 3 * p;
        Vec t[3];
        for (int j = 0; j < 3; ++j) t[j] = (gr[0] * kv[0][j] + gr[1] * kv[1][j]) + gr[2] * kv[2][j];
        for (long q = 0; q < r; ++q) {
          const float* gq = gp + 3 * q;
          Store(up + (p * r + q) * plane + ci * o + o0, (gq[0] * t[0] + gq[1] * t[1]) + gq[2] * t[2], len);
        }
      }
    }
  }
  return ffi::Error::Success();
}

// (1, 36, rows, cols) of type dt: the 36 planes of a block, rows of each plane dense, planes `plane` elements apart.
memory::desc Planes(long rows, long cols, long plane, memory::data_type dt = memory::data_type::f32) {
  return memory::desc({1, 36, rows, cols}, dt, {36 * plane, plane, cols, 1});
}

// oneDNN's matmul of a block of `rows` tiles by the transformed kernel, its scratchpad ours.
struct BlockMatmul {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul prim;
  std::vector<char> scratch;
  static dnnl::primitive_attr UserScratchpad() {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return attr;
  }
  BlockMatmul(dnnl::engine& engine, long rows, long c, long o, long vs, long ms, memory::data_type in)
      : pd(engine, Planes(rows, c, vs, in), Planes(c, o, c * o, in), Planes(rows, o, ms), UserScratchpad()),
        prim(pd),
        scratch(pd.scratchpad_desc().get_size()) {}
  void Run(dnnl::engine& engine, dnnl::stream& stream, const memory& bm, float* v, float* m) {
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(pd.src_desc(), engine, v)},
                                         {DNNL_ARG_WEIGHTS, bm},
                                         {DNNL_ARG_DST, memory(pd.dst_desc(), engine, m)}};
    if (!scratch.empty()) args[DNNL_ARG_SCRATCHPAD] = memory(pd.scratchpad_desc(), engine, scratch.data());
    prim.execute(stream, args);
    stream.wait();
  }
};

// The conv of what `src` reads, (N, H, W, C), in blocks of `block` tiles (the last one
// shorter): each block's transformed tiles and products stay in cache between the transforms
// and the matmul. Shared blocks (`own` 0): every core works on each block in turn, each step
// split between them. Own blocks (`own` 1): each thread takes whole blocks, its transforms and
// a one-thread matmul in its own slot of the scratch (36 planes each), so that its block stays in
// its own core's cache and no thread waits on another between the steps. The two give the same
// bits (oneDNN sums each row alike however the rows are split).
template <class Src>
ffi::Error RunWinograd4(Src src, long n, Kernel u, Output out, F32Out vbuf, F32Out mbuf, int64_t block, int64_t own) {
  auto ud = u.dimensions();
  auto vd = vbuf->dimensions();
  auto md_ = mbuf->dimensions();
  const long slots = vd.size() == 2 ? vd[0] / 36 : 0;
  if ((u.element_type() != ffi::DataType::F32 && u.element_type() != ffi::DataType::BF16) || ud.size() != 3 ||
      ud[0] != 36 || ud[1] != src.c || ud[2] != out.o || block < 1 || vd.size() != 2 ||
      md_.size() != 2 || slots < 1 || vd[0] != 36 * slots || md_[0] != vd[0] || (!own && slots != 1) ||
      vd[1] < block * src.c || md_[1] < block * out.o) {
    return Invalid("x must be (N, H, W, C), u (36, C, O) float32 or bfloat16, y (N, H, W, O), block positive and the scratch "
                   "(36 S, >= block C) and (36 S, >= block O), S 1 unless own");
  }
  const long c = src.c, o = out.o;
  const long th = (src.h + 3) / 4, tw = (src.w + 3) / 4, tiles = n * th * tw, blocks = (tiles + block - 1) / block;
  // The 36 planes of a block lie vd[1] and md_[1] floats apart: onednn.py pads them so that
  // the planes of one tile do not all fall into a few of L1's sets.
  const long vs = vd[1], ms = md_[1];
  // bfloat16 tiles in the same bytes as float32 ones, the planes as far apart: twice the elements
  const bool bf16 = u.element_type() == ffi::DataType::BF16;
  const auto in = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  const long vsi = bf16 ? 2 * vs : vs;
  std::string error;
  std::atomic<long> next{0};  // own blocks: the next block not taken, so that a thread slowed down takes fewer
  auto run = [&](long slot) {
    try {
      dnnl::engine& engine = cpu_engine();
      dnnl::stream stream(engine);
      memory bm(Planes(c, o, c * o, in), engine, u.untyped_data());
      float* v = vbuf->typed_data() + slot * 36 * vs;
      float* m = mbuf->typed_data() + slot * 36 * ms;
      std::unique_ptr<BlockMatmul> full, last;
      for (long i = own ? next++ : 0; i < blocks; i = own ? next++ : i + 1) {
        const long t0 = i * block, nt = std::min<long>(block, tiles - t0);
        auto& mm = nt == block ? full : last;
        if (!mm) mm = std::make_unique<BlockMatmul>(engine, nt, c, o, vsi, ms, in);
        if (bf16) {
          InputTransform(src, th, tw, t0, nt, vsi, reinterpret_cast<uint16_t*>(v), !own);
        } else {
          InputTransform(src, th, tw, t0, nt, vs, v, !own);
        }
        mm->Run(engine, stream, bm, v, m);
        OutputTransform(m, out, th, tw, t0, nt, ms, !own);
      }
    } catch (const std::exception& e) {
#pragma omp critical(jaxviz_winograd_error)
      error = e.what();
    }
  };
  if (!own) {
    run(0);
  } else {
#pragma omp parallel num_threads(static_cast<int>(std::min<long>(slots, blocks)))
    run(omp_get_thread_num());
  }
  if (!error.empty()) return ffi::Error(ffi::ErrorCode::kInternal, "jaxviz winograd: " + error);
  return ffi::Error::Success();
}

bool Same(ffi::Span<const int64_t> a, ffi::Span<const int64_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// Whether x is (N, H, W, C) and y (N, H, W, O).
bool Shapes(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> yd) {
  return xd.size() == 4 && yd.size() == 4 && xd[0] == yd[0] && xd[1] == yd[1] && xd[2] == yd[2];
}

Pixels PixelsOf(const F32& x) {
  auto d = x.dimensions();
  Pixels p{};
  p.x = x.typed_data(), p.h = d[1], p.w = d[2], p.c = d[3];
  return p;
}

Output OutputOf(F32Out& y, const float* bias, float* pooled) {
  auto d = y->dimensions();
  return Output{y->typed_data(), bias, pooled, d[1], d[2], d[3]};
}

// conv(x): x (N, H, W, C), u (36, C, O) -> y (N, H, W, O).
ffi::Error Winograd4(F32 x, Kernel u, F32Out y, F32Out v, F32Out m, int64_t block, int64_t own) {
  if (!Shapes(x.dimensions(), y->dimensions())) return Invalid("x must be (N, H, W, C)");
  return RunWinograd4(PixelsOf(x), x.dimensions()[0], u, OutputOf(y, nullptr, nullptr), v, m, block, own);
}

// A conv layer's input: x itself, or with x_bias (C,) relu(x + x_bias) (BiasRelu), its mask
// written to keep, (N, H, W, C).
template <class Run>
ffi::Error Input(const F32& x, const F32* x_bias, U8Out* keep, Run run) {
  if (!x_bias) return run(PixelsOf(x));
  auto bd = x_bias->dimensions();
  if (bd.size() != 1 || bd[0] != x.dimensions()[3] || !Same(x.dimensions(), (*keep)->dimensions()))
    return Invalid("x_bias must be (C,) and keep (N, H, W, C), as x");
  BiasRelu src{PixelsOf(x)};
  src.bias = x_bias->typed_data(), src.keep = (*keep)->typed_data();
  return run(src);
}

// relu(conv(input) + bias), y (N, H, W, O): a conv layer in one call; or with `pooled` and
// `hits`, (N, H/2, W/2, O), its 2x2 max pool and the pool's hits in place of y: the layer and
// the pool after it. With y, its relu's mask to mask (Output.relu_mask); with x_bias, the input
// relu's mask to keep (Input).
ffi::Error Layer(F32 x, const F32* x_bias, U8Out* keep, Kernel u, F32 bias, F32Out* y, U8Out* mask, F32Out* pooled,
                 U8Out* hits, F32Out v, F32Out m, int64_t block, int64_t own) {
  auto xd = x.dimensions();
  if (xd.size() != 4 || bias.dimensions().size() != 1) return Invalid("x must be (N, H, W, C) and bias (O,)");
  Output out{nullptr, bias.typed_data(), nullptr, xd[1], xd[2], bias.dimensions()[0]};
  if (y) {
    auto yd = (*y)->dimensions();
    if (!Shapes(xd, yd) || yd[3] != out.o || !Same(yd, (*mask)->dimensions()))
      return Invalid("y and its mask must be (N, H, W, O)");
    out.y = (*y)->typed_data(), out.relu_mask = (*mask)->typed_data();
  } else {
    auto pd = (*pooled)->dimensions();
    if (pd.size() != 4 || pd[0] != xd[0] || pd[1] != xd[1] / 2 || pd[2] != xd[2] / 2 || pd[3] != out.o ||
        !Same(pd, (*hits)->dimensions())) {
      return Invalid("the pool and its hits must be (N, H/2, W/2, O)");
    }
    out.pooled = (*pooled)->typed_data(), out.hits = (*hits)->typed_data();
  }
  return Input(x, x_bias, keep, [&](auto src) { return RunWinograd4(src, xd[0], u, out, v, m, block, own); });
}

ffi::Error Winograd4BiasRelu(F32 x, Kernel u, F32 bias, F32Out y, U8Out mask, F32Out v, F32Out m, int64_t block,
                             int64_t own) {
  return Layer(x, nullptr, nullptr, u, bias, &y, &mask, nullptr, nullptr, v, m, block, own);
}

ffi::Error Winograd4BiasReluPool(F32 x, Kernel u, F32 bias, F32Out pooled, U8Out hits, F32Out v, F32Out m,
                                 int64_t block, int64_t own) {
  return Layer(x, nullptr, nullptr, u, bias, nullptr, nullptr, &pooled, &hits, v, m, block, own);
}

ffi::Error Winograd4InReluBiasRelu(F32 x, Kernel u, F32 bias, F32 x_bias, F32Out y, U8Out mask, U8Out keep, F32Out v,
                                   F32Out m, int64_t block, int64_t own) {
  return Layer(x, &x_bias, &keep, u, bias, &y, &mask, nullptr, nullptr, v, m, block, own);
}

ffi::Error Winograd4InReluBiasReluPool(F32 x, Kernel u, F32 bias, F32 x_bias, F32Out pooled, U8Out hits, U8Out keep,
                                       F32Out v, F32Out m, int64_t block, int64_t own) {
  return Layer(x, &x_bias, &keep, u, bias, nullptr, nullptr, &pooled, &hits, v, m, block, own);
}

// Where a layer's input gradient goes: y, and with keep (the mask of the layer's input relu(x +
// x_bias), the forward's) that mask applied as it is written: the gradient with respect to x.
ffi::Error GradOutput(F32Out& y, const U8* keep, Output* out) {
  *out = OutputOf(y, nullptr, nullptr);
  if (!keep) return ffi::Error::Success();
  if (!Same(keep->dimensions(), y->dimensions())) return Invalid("keep must be (N, H, W, C), as the layer's input");
  out->keep = keep->typed_data();
  return ffi::Error::Success();
}

// conv(where(mask > 0, g, 0)): a conv layer's input gradient, its relu's mask applied on the way in.
ffi::Error ReluGradOf(U8 mask, F32 g, const U8* keep, Kernel u, F32Out y, F32Out v, F32Out m, int64_t block,
                      int64_t own) {
  if (!Shapes(g.dimensions(), y->dimensions()) || !Same(g.dimensions(), mask.dimensions())) {
    return Invalid("g and the relu's mask must be (N, H, W, C) alike");
  }
  Output out;
  if (auto e = GradOutput(y, keep, &out); e.failure()) return e;
  ReluGrad src{PixelsOf(g)};
  src.mask = mask.typed_data();
  return RunWinograd4(src, g.dimensions()[0], u, out, v, m, block, own);
}

// The input gradient of a conv layer followed by a 2x2 max pool, y (N, H, W, O), from the
// pool's hits and its cotangent gp, (N, H/2, W/2, C).
ffi::Error PoolGradOf(U8 hits, F32 gp, const U8* keep, Kernel u, F32Out y, F32Out v, F32Out m, int64_t block,
                      int64_t own) {
  auto gd = gp.dimensions();
  auto yd = y->dimensions();
  if (gd.size() != 4 || yd.size() != 4 || !Same(gd, hits.dimensions()) || gd[0] != yd[0] || gd[1] != yd[1] / 2 ||
      gd[2] != yd[2] / 2) {
    return Invalid("gp and hits must be (N, H/2, W/2, C) alike, and y (N, H, W, O)");
  }
  Output out;
  if (auto e = GradOutput(y, keep, &out); e.failure()) return e;
  PoolGrad src{};
  src.h = yd[1], src.w = yd[2], src.c = gd[3];
  src.gp = gp.typed_data(), src.hits = hits.typed_data(), src.h2 = gd[1], src.w2 = gd[2];
  return RunWinograd4(src, gd[0], u, out, v, m, block, own);
}

ffi::Error Winograd4ReluGrad(U8 mask, F32 g, Kernel u, F32Out y, F32Out v, F32Out m, int64_t block, int64_t own) {
  return ReluGradOf(mask, g, nullptr, u, y, v, m, block, own);
}

ffi::Error Winograd4PoolGrad(U8 hits, F32 gp, Kernel u, F32Out y, F32Out v, F32Out m, int64_t block, int64_t own) {
  return PoolGradOf(hits, gp, nullptr, u, y, v, m, block, own);
}

ffi::Error Winograd4InReluGrad(U8 mask, F32 g, U8 keep, Kernel u, F32Out y, F32Out v, F32Out m, int64_t block,
                               int64_t own) {
  return ReluGradOf(mask, g, &keep, u, y, v, m, block, own);
}

ffi::Error Winograd4InPoolGrad(U8 hits, F32 gp, U8 keep, Kernel u, F32Out y, F32Out v, F32Out m, int64_t block,
                               int64_t own) {
  return PoolGradOf(hits, gp, &keep, u, y, v, m, block, own);
}

// The binding of a Winograd handler: its buffers' types, the arguments' then the results' (the
// outputs, then the two scratch buffers), then the attributes block and own.
template <class... Ts>
struct Types {};

template <class Binding>
auto WinogradBinding(Binding b, Types<>, Types<>) {
  return std::move(b).template Attr<int64_t>("block").template Attr<int64_t>("own");
}

template <class Binding, class R, class... Rets>
auto WinogradBinding(Binding b, Types<>, Types<R, Rets...>) {
  return WinogradBinding(std::move(b).template Ret<R>(), Types<>{}, Types<Rets...>{});
}

template <class Binding, class A, class... Args, class... Rets>
auto WinogradBinding(Binding b, Types<A, Args...>, Types<Rets...> rets) {
  return WinogradBinding(std::move(b).template Arg<A>(), Types<Args...>{}, rets);
}

template <class... Args>
using In = Types<Args...>;
template <class... Rets>
using Out = Types<Rets...>;  // the outputs, then the two scratch buffers (float32)

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizWinograd4F32, Winograd4,
                              (WinogradBinding(ffi::Ffi::Bind(), In<F32, Kernel>{}, Out<F32, F32, F32>{})));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizWinograd4BiasReluF32, Winograd4BiasRelu,
                              (WinogradBinding(ffi::Ffi::Bind(), In<F32, Kernel, F32>{}, Out<F32, U8, F32, F32>{})));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizWinograd4BiasReluPoolF32, Winograd4BiasReluPool,
                              (WinogradBinding(ffi::Ffi::Bind(), In<F32, Kernel, F32>{}, Out<F32, U8, F32, F32>{})));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizWinograd4ReluGradF32, Winograd4ReluGrad,
                              (WinogradBinding(ffi::Ffi::Bind(), In<U8, F32, Kernel>{}, Out<F32, F32, F32>{})));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizWinograd4PoolGradF32, Winograd4PoolGrad,
                              (WinogradBinding(ffi::Ffi::Bind(), In<U8, F32, Kernel>{}, Out<F32, F32, F32>{})));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizWinograd4InReluBiasReluF32, Winograd4InReluBiasRelu,
                              (WinogradBinding(ffi::Ffi::Bind(), In<F32, Kernel, F32, F32>{}, Out<F32, U8, U8, F32, F32>{})));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizWinograd4InReluBiasReluPoolF32, Winograd4InReluBiasReluPool,
                              (WinogradBinding(ffi::Ffi::Bind(), In<F32, Kernel, F32, F32>{}, Out<F32, U8, U8, F32, F32>{})));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizWinograd4InReluGradF32, Winograd4InReluGrad,
                              (WinogradBinding(ffi::Ffi::Bind(), In<U8, F32, U8, Kernel>{}, Out<F32, F32, F32>{})));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizWinograd4InPoolGradF32, Winograd4InPoolGrad,
                              (WinogradBinding(ffi::Ffi::Bind(), In<U8, F32, U8, Kernel>{}, Out<F32, F32, F32>{})));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvizWinogradKernelF32, WinogradKernel,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>());

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

// For the loader: how many threads a parallel region here gets (own blocks need a scratch slot each).
extern "C" int jaxviz_max_threads() { return omp_get_max_threads(); }

// s into out (size bytes), cut short and NUL-terminated; 0.
int CopyOut(const std::string& s, char* out, int size) {
  if (size > 0) {
    s.copy(out, size - 1);
    out[std::min<size_t>(s.size(), size - 1)] = 0;
  }
  return 0;
}

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
    return CopyOut(pd.impl_info_str(), out, size);
  } catch (const std::exception&) {
    return 1;
  }
}

// For the loader: which impl oneDNN chose for a Winograd block's matmul (BlockMatmul's), float32
// or bfloat16 inputs; 1 where it has none (oneDNN 3.2 has no bfloat16 matmul on AVX2 only).
extern "C" int jaxviz_matmul_impl(int bf16, long rows, long c, long o, char* out, int size) {
  try {
    dnnl::engine& engine = cpu_engine();
    const auto in = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
    const long vs = bf16 ? 2 * rows * c : rows * c;
    BlockMatmul mm(engine, rows, c, o, vs, rows * o, in);
    return CopyOut(mm.pd.impl_info_str(), out, size);
  } catch (const std::exception&) {
    return 1;
  }
}
