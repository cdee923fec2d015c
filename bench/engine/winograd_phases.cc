// One core's time in each phase of the Winograd conv (jaxviz/native/onednn_conv.cc, included
// whole): the input transform, oneDNN's 36 matmuls, the output transform, block by block as
// RunWinograd4 does on one thread (own blocks), for one layer shape. Built and run by
// winograd_phases.py, which passes JAXVIZ_SOURCE's directory with -I.
//
//   winograd_phases N H C O BLOCK REPS  ->  one line: "in mm out total" ms (best of REPS each),
//                                           then the matmul again on a block already in cache
#include "onednn_conv.cc"

#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

namespace {
using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
long PlaneFloats(long floats) {  // onednn._plane: an odd number of 64-byte lines
  const long lines = (floats + 15) / 16;
  return 16 * (lines + 1 - lines % 2);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s N H C O BLOCK REPS\n", argv[0]);
    return 2;
  }
  const long n = std::atol(argv[1]), h = std::atol(argv[2]), c = std::atol(argv[3]), o = std::atol(argv[4]);
  const long tiles = n * ((h + 3) / 4) * ((h + 3) / 4), block = std::min(std::atol(argv[5]), tiles);
  const int reps = std::atoi(argv[6]);
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> uniform(-1, 1);
  std::vector<float> x(n * h * h * c), u(36 * c * o), y(n * h * h * o);
  for (auto& v : x) v = uniform(rng);
  for (auto& v : u) v = 0.1f * uniform(rng);
  const long vs = PlaneFloats(block * c), ms = PlaneFloats(block * o);
  std::vector<float> v(36 * vs), m(36 * ms);
  dnnl::engine& engine = cpu_engine();
  dnnl::stream stream(engine);
  memory bm(Planes(c, o, c * o), engine, u.data());
  Pixels src{};
  src.x = x.data(), src.h = h, src.w = h, src.c = c;
  const Output out{y.data(), nullptr, nullptr, h, h, o};
  const long th = (h + 3) / 4, tw = th, blocks = tiles / block;  // whole blocks only
  BlockMatmul mm(engine, block, c, o, vs, ms, memory::data_type::f32);
  double best[5] = {1e9, 1e9, 1e9, 1e9, 1e9};
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
  std::printf("%ld %.6f %.6f %.6f %.6f %.6f\n", blocks * block, best[0], best[1], best[2], best[3], best[4]);
  return 0;
}
