// Uses the installed package: GroupNorm + SiLU on a small NHWC activation, checked against a
// double-precision computation of the same formula. Exits non-zero on any mismatch.
#include <cmath>
#include <cstdio>
#include <diffprobe/diffprobe.hpp>
#include <vector>

namespace dp = diffprobe;

int main() {
  try {
    constexpr int N = 2, C = 8, H = 3, W = 5, G = 4;
    std::vector<float> xs(N * C * H * W), gs(C), bs(C);
    for (std::size_t i = 0; i < xs.size(); ++i) xs[i] = static_cast<float>(std::sin(0.37 * i) * 2.0 + 0.1);
    for (int c = 0; c < C; ++c) {
      gs[c] = 0.5f + 0.125f * c;
      bs[c] = 0.25f - 0.0625f * c;
    }
    // from_vector takes values in logical [N, C, H, W] order whatever the physical layout.
    const dp::Tensor x = dp::Tensor::from_vector({N, C, H, W}, xs, dp::Layout::NHWC);
    const dp::Tensor gamma = dp::Tensor::from_vector({C}, gs);
    const dp::Tensor beta = dp::Tensor::from_vector({C}, bs);

    dp::ops::GroupNormArgs args;
    args.groups = G;
    args.silu = true;
    const dp::Tensor y = dp::ops::group_norm(x, gamma, beta, args);
    if (y.shape() != x.shape() || y.layout() != dp::Layout::NHWC) {
      std::fprintf(stderr, "unexpected result %s\n", y.str().c_str());
      return 1;
    }

    // Reference: statistics over each group of C/G channels x H x W, then affine, then SiLU.
    const std::vector<float> got = y.to_vector();
    const int cpg = C / G, hw = H * W;
    double worst = 0.0;
    for (int n = 0; n < N; ++n) {
      for (int g = 0; g < G; ++g) {
        double sum = 0.0, sq = 0.0;
        for (int c = g * cpg; c < (g + 1) * cpg; ++c)
          for (int i = 0; i < hw; ++i) sum += xs[(n * C + c) * hw + i];
        const double mean = sum / (cpg * hw);
        for (int c = g * cpg; c < (g + 1) * cpg; ++c)
          for (int i = 0; i < hw; ++i) sq += std::pow(xs[(n * C + c) * hw + i] - mean, 2);
        const double inv = 1.0 / std::sqrt(sq / (cpg * hw) + static_cast<double>(args.eps));
        for (int c = g * cpg; c < (g + 1) * cpg; ++c) {
          for (int i = 0; i < hw; ++i) {
            const int idx = (n * C + c) * hw + i;
            const double v = (xs[idx] - mean) * inv * gs[c] + bs[c];
            const double ref = v / (1.0 + std::exp(-v));
            worst = std::fmax(worst, std::fabs(ref - got[idx]));
          }
        }
      }
    }
    std::printf("diffprobe %s: group_norm+silu on %s, y[0,0,0,0] = %.6f, max |error| = %.3g\n", dp::version(),
                x.str().c_str(), got[0], worst);
    if (!(worst < 1e-5)) {
      std::fprintf(stderr, "mismatch: max |error| %.3g exceeds 1e-5\n", worst);
      return 1;
    }

    // Bad input raises a typed error: 8 channels do not split into 3 groups.
    try {
      args.groups = 3;
      (void)dp::ops::group_norm(x, gamma, beta, args);
      std::fprintf(stderr, "group_norm accepted 8 channels in 3 groups\n");
      return 1;
    } catch (const dp::ShapeError& e) {
      std::printf("typed error as expected: %s\n", e.what());
    }
    return 0;
  } catch (const dp::Error& e) {
    std::fprintf(stderr, "diffprobe error: %s\n", e.what());
    return 1;
  }
}
