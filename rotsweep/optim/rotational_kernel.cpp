// impl="kernel" of rotsweep/optim/rotational.py: lines 9-18 of Algorithm 1 for one tensor's
// neuron rows on the CPU, row by row, so that each row is read from memory once.
//
// Per row (see _rotation in rotational.py for the algebra):
//   pass 1  reads p, g and the inner optimizer's moments, writes the new moments, keeps the
//           direction d in a row-sized buffer, and sums Σp², Σp·d, Σd², Σp, Σd;
//   then    the row's a, b, shift and new ν from those five sums (scalars, in double);
//   pass 2  p ← a·p + b·d + shift, over the row that pass 1 has just brought into the cache.
// So a step reads p, g and the moments once and writes them once, as fused AdamW does; the
// second pass and d's buffer stay in L1/L2. Rows are independent: at::parallel_for splits them.
//
// Every tensor is float32 and contiguous ([rows, width] for p, g, moments; [rows] for the rest);
// rotational.py checks that before calling and uses its other paths otherwise.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cfloat>
#include <cmath>
#include <vector>

namespace {

enum Inner { ADAMW = 0, ADAM_L2 = 1, SGDM = 2, LION = 3 };

struct Hyper {
  float beta1, beta2, momentum, eps, weight_decay, adam_scale;  // adam_scale: sqrt(1 − β2^t)
};

// torch.lerp's formula (exact at both ends), so the moments equal torch's to the bit.
inline float lerp(float start, float end, float weight) {
  return weight < 0.5f ? start + weight * (end - start) : end - (end - start) * (1.0f - weight);
}

// Pass 1 for inner optimizer INNER: new moments written in place, d into `direction`, sums out.
// d is the same as _direction_values's: the true direction divided by `unit` (see _unit).
template <int INNER>
void direction_and_sums(int64_t width, const float* p, const float* g, float* m, float* v, float* direction,
                        const Hyper& h, float sums[5]) {
  float p_sq = 0, dot = 0, d_sq = 0, p_sum = 0, d_sum = 0;
  const float inv_scale = 1.0f / h.adam_scale, l2_eps = h.eps * h.adam_scale;
#pragma omp simd reduction(+ : p_sq, dot, d_sq, p_sum, d_sum)
  for (int64_t i = 0; i < width; ++i) {
    float d;
    if constexpr (INNER == ADAMW || INNER == ADAM_L2) {
      float seen = INNER == ADAMW ? g[i] : g[i] + h.weight_decay * p[i];  // Adam+ℓ2: v of g + λp
      float m_new = lerp(m[i], g[i], 1.0f - h.beta1);
      float v_new = v[i] * h.beta2 + seen * seen * (1.0f - h.beta2);
      m[i] = m_new;
      v[i] = v_new;
      d = INNER == ADAMW ? m_new / (std::sqrt(v_new) * inv_scale + h.eps) : m_new / (std::sqrt(v_new) + l2_eps);
    } else if constexpr (INNER == SGDM) {
      d = m[i] * h.momentum + g[i];
      m[i] = d;
    } else {  // Lion: the sign of one interpolation, the momentum another (eq. 55-56)
      float towards = lerp(m[i], g[i], 1.0f - h.beta1);
      d = (towards > 0.0f) - (towards < 0.0f);
      m[i] = lerp(m[i], g[i], 1.0f - h.beta2);
    }
    direction[i] = d;
    p_sq += p[i] * p[i];
    dot += p[i] * d;
    d_sq += d * d;
    p_sum += p[i];
    d_sum += d;
  }
  sums[0] = p_sq, sums[1] = dot, sums[2] = d_sq, sums[3] = p_sum, sums[4] = d_sum;
}

void step_rows(int64_t inner, torch::Tensor rows, torch::Tensor grad, torch::Tensor first_moment,
               torch::Tensor second_moment, torch::Tensor norm, torch::Tensor rms_sq, c10::optional<torch::Tensor> speed,
               double beta1, double beta2, double momentum, double eps, double weight_decay, double adam_scale,
               double unit, double eta_r, double rms_beta, double rms_correction, double rotational_eps,
               bool zero_mean) {
  const int64_t n_rows = rows.size(0), width = rows.size(1);
  float* p_all = rows.data_ptr<float>();
  const float* g_all = grad.data_ptr<float>();
  float* m_all = first_moment.data_ptr<float>();
  float* v_all = second_moment.defined() && second_moment.numel() ? second_moment.data_ptr<float>() : nullptr;
  const float* norms = norm.data_ptr<float>();
  float* rms_sqs = rms_sq.data_ptr<float>();
  const float* speeds = speed.has_value() ? speed->data_ptr<float>() : nullptr;
  const Hyper h{float(beta1), float(beta2), float(momentum), float(eps), float(weight_decay), float(adam_scale)};
  // Enough rows per task that a thread's share is worth starting it for (~64 KB of each tensor).
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width));

  at::parallel_for(0, n_rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> direction(width);  // one row of d, reused for the rows of this task
    for (int64_t row = begin; row < end; ++row) {
      float* p = p_all + row * width;
      const float* g = g_all + row * width;
      float* m = m_all + row * width;
      float* v = v_all ? v_all + row * width : nullptr;
      float s[5];
      switch (inner) {
        case ADAMW: direction_and_sums<ADAMW>(width, p, g, m, v, direction.data(), h, s); break;
        case ADAM_L2: direction_and_sums<ADAM_L2>(width, p, g, m, v, direction.data(), h, s); break;
        case SGDM: direction_and_sums<SGDM>(width, p, g, m, v, direction.data(), h, s); break;
        default: direction_and_sums<LION>(width, p, g, m, v, direction.data(), h, s);
      }
      // The row's coefficients: _rotation's formulas, term for term.
      double p_sq = s[0], dot = s[1], d_sq = s[2], p_mean = 0, d_mean = 0;
      const double negligible = 64.0 * FLT_EPSILON * d_sq;  // _ROUNDING_MARGIN · float eps · Σd²
      if (zero_mean) {
        p_mean = s[3] / width, d_mean = s[4] / width;
        p_sq -= width * p_mean * p_mean;  // ‖c‖²
        dot -= width * p_mean * d_mean;   // ⟨e, c⟩
        d_sq -= width * d_mean * d_mean;  // ‖e‖²
      }
      const double radial = dot / p_sq;
      double perp_sq = d_sq - radial * dot;  // ‖d⊥‖²
      if (!(perp_sq > negligible)) perp_sq = 0;
      const float nu = float(rms_sqs[row] * rms_beta + perp_sq * ((1 - rms_beta) * unit * unit));  // line 14
      rms_sqs[row] = nu;
      double size = eta_r * unit * norms[row] / (std::sqrt(nu / rms_correction) + rotational_eps);  // line 16
      if (speeds) size *= speeds[row];
      if (perp_sq == 0) size = 0;
      const double scale = norms[row] / std::sqrt(p_sq + size * size * perp_sq);  // line 18
      const float a = float(scale * (1 + size * radial)), b = float(-scale * size);
      const float shift = float(-double(a) * p_mean - double(b) * d_mean);
      // Pass 2: the row and d are still in the cache.
      const float* d = direction.data();
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) p[i] = a * p[i] + b * d[i] + shift;
    }
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("step_rows", &step_rows, "Lines 9-18 of Algorithm 1 for a tensor's neuron rows, in place");
}
