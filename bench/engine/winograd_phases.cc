// One core's time in each phase of the Winograd conv (jaxviz/native/onednn_conv.cc, included
// whole): the input transform, oneDNN's 36 matmuls, the output transform, block by block as
// RunWinograd4 does on one thread (own blocks), for one layer shape. Built and run by
// winograd_phases.py, which passes JAXVIZ_SOURCE's directory with -I.
//
//   winograd_phases N H C O BLOCK REPS KIND  ->  one line: tiles timed, then seconds of the input
//       transform, the matmuls, the output transform, the whole (best of REPS each), and the
//       matmuls again on a block already in cache. KIND: plain (winograd4), layer (bias and relu
//       out, with the relu's mask), forward (a layer's relu(x + bias) in, its bias, relu and pool
//       out), pool_grad (a pool's gradient in, the input relu's mask out), relu_grad (a relu's
//       gradient in, from its mask).
#include "onednn_conv.cc"

#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {
using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
long PlaneFloats(long floats) {  // onednn._plane: an odd number of 64-byte lines
  const long lines = (floats + 15) / 16;
  return 16 * (lines + 1 - lines % 2);
}
}  // namespace

// Times the blocks of one call of Src into `out`: best of `reps` of each phase, and the matmul again.
template <class Src>
void Time(Src src, Output out, long n, long c, long o, long block, int reps, const float* u, double best[5]) {
  const long th = (src.h + 3) / 4, tw = (src.w + 3) / 4, blocks = n * th * tw / block;  // whole blocks only
  const long vs = PlaneFloats(block * c), ms = PlaneFloats(block * o);
  std::vector<float> v(36 * vs), m(36 * ms);
  dnnl::engine& engine = cpu_engine();
  dnnl::stream stream(engine);
  memory bm(Planes(c, o, c * o), engine, const_cast<float*>(u));
  BlockMatmul mm(engine, block, c, o, vs, ms, memory::data_type::f32);
  for (int k = 0; k < 5; ++k) best[k] = 1e9;
  for (int r = 0; r < reps; ++r) {
    double in = 0, mul = 0, outt = 0;
    const auto t0 = Clock::now();
    for (long i = 0; i < blocks; ++i) {
      const auto a = Clock::now();
      InputTransform(src, th, tw, i * block, block, vs, v.data(), false);
      const auto b = Clock::now();
      mm.Run(engine, stream, bm, v.data(), m.data());
      const auto d = Clock::now();
      OutputTransform(m.data(), out, th, tw, i * block, block, ms, false);
      const auto e = Clock::now();
      in += Seconds(a, b), mul += Seconds(b, d), outt += Seconds(d, e);
    }
    const auto t1 = Clock::now();
    for (long i = 0; i < blocks; ++i) mm.Run(engine, stream, bm, v.data(), m.data());
    const double again = Seconds(t1, Clock::now());
    const double now[5] = {in, mul, outt, Seconds(t0, t1), again};
    for (int k = 0; k < 5; ++k) best[k] = std::min(best[k], now[k]);
  }
}

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s N H C O BLOCK REPS KIND (plain, layer, forward, pool_grad, relu_grad)\n", argv[0]);
    return 2;
  }
  const long n = std::atol(argv[1]), h = std::atol(argv[2]), c = std::atol(argv[3]), o = std::atol(argv[4]);
  const long tiles = n * ((h + 3) / 4) * ((h + 3) / 4), block = std::min(std::atol(argv[5]), tiles);
  const int reps = std::atoi(argv[6]);
  const std::string kind = argv[7];
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> uniform(-1, 1);
  auto randoms = [&](long count, float scale) {
    std::vector<float> a(count);
    for (auto& x : a) x = scale * uniform(rng);
    return a;
  };
  const long h2 = h / 2;
  std::vector<float> x = randoms(n * h * h * c, 1), u = randoms(36 * c * o, 0.1f), y(n * h * h * o);
  std::vector<float> bias_c = randoms(c, 0.1f), bias_o = randoms(o, 0.1f);
  std::vector<float> gp = randoms(n * h2 * h2 * c, 1), pooled(n * h2 * h2 * o);
  std::vector<uint8_t> hits_in(n * h2 * h2 * c), hits_out(n * h2 * h2 * o);
  for (auto& b : hits_in) b = static_cast<uint8_t>(1u << (rng() % 4));
  std::vector<uint8_t> keep_in(n * h * h * o), keep_out(n * h * h * c);  // an input relu's mask: read, written
  for (auto& b : keep_in) b = static_cast<uint8_t>(rng() % 2);
  std::vector<uint8_t> relu_mask(n * h * h * c);  // a relu's mask, its gradient's input
  for (auto& b : relu_mask) b = static_cast<uint8_t>(rng() % 2);
  Pixels pixels{};
  pixels.x = x.data(), pixels.h = h, pixels.w = h, pixels.c = c;
  Output plain{y.data(), nullptr, nullptr, h, h, o};
  double best[5];
  if (kind == "plain") {  // winograd4: the conv alone
    Time(pixels, plain, n, c, o, block, reps, u.data(), best);
  } else if (kind == "layer") {  // bias_relu: relu(y + bias) and its relu's mask out
    std::vector<uint8_t> mask(n * h * h * o);
    Output out{y.data(), bias_o.data(), nullptr, h, h, o};
    out.relu_mask = mask.data();
    Time(pixels, out, n, c, o, block, reps, u.data(), best);
  } else if (kind == "forward") {  // in_relu_bias_relu_pool: relu(x + bias) in, relu(y + bias) and its pool out
    BiasRelu src{pixels};
    src.bias = bias_c.data(), src.keep = keep_out.data();
    Output out{nullptr, bias_o.data(), pooled.data(), h, h, o};
    out.hits = hits_out.data();
    Time(src, out, n, c, o, block, reps, u.data(), best);
  } else if (kind == "pool_grad") {  // in_pool_grad: the pool's gradient in, the input relu's mask out
    PoolGrad src{};
    src.h = h, src.w = h, src.c = c, src.gp = gp.data(), src.hits = hits_in.data(), src.h2 = h2, src.w2 = h2;
    Output out = plain;
    out.keep = keep_in.data();
    Time(src, out, n, c, o, block, reps, u.data(), best);
  } else if (kind == "relu_grad") {  // relu_grad: the relu's gradient in, the plain conv out
    ReluGrad src{pixels};
    src.mask = relu_mask.data();
    Time(src, plain, n, c, o, block, reps, u.data(), best);
  } else {
    std::fprintf(stderr, "unknown kind %s\n", kind.c_str());
    return 2;
  }
  const long th = (h + 3) / 4;
  std::printf("%ld %.6f %.6f %.6f %.6f %.6f\n", n * th * th / block * block, best[0], best[1], best[2], best[3], best[4]);
  return 0;
}
