// The Elman, GRU and LSTM recurrences of rnnlab/models/kernels/recurrences.py, whole time loops
// in C++: per step one product (ATen's addmm, the BLAS PyTorch ships) and one fused pass over
// the (B, H) units for all of the step's element-wise work, where the Python loop makes about
// ten ATen calls of a few microseconds each. They compute exactly what the Python loops of
// recurrences.py compute and are tested against them and against torch.nn (float64, 1e-10).
//
// Layouts: every tensor is contiguous, time-major: projected (T, B, G*H) with the gates in
// PyTorch's order, states (T, B, H), h0 / c0 (B, H), w_hh (G*H, H). ``mask`` (T, B) bool, or an
// undefined tensor for full-length sequences: a row whose sequence has ended keeps its state
// (h and c carry over unchanged) and sends the gradient that reaches it straight on to the
// previous step. ``save``: keep what the backward needs (false under torch.no_grad).

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <vector>

namespace {

// exp for float32 as a polynomial (Cephes' expf: range reduction by ln 2, degree-7 polynomial,
// about 1 ulp over the clamped range) so that the compiler vectorises the loops that call it;
// std::exp is a library call per element. float64 uses std::exp: it is the reference type.
inline float exp_poly(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

template <typename T>
struct Act;

template <>
struct Act<float> {
  static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_poly(-x)); }
  static inline float tanh(float x) { return 2.0f * sigmoid(2.0f * x) - 1.0f; }
};

template <>
struct Act<double> {
  static inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  static inline double tanh(double x) { return std::tanh(x); }
};

// Run fn(b0, b1) over the batch rows, on several threads when a step has enough units.
template <typename F>
inline void for_rows(int64_t B, int64_t units_per_row, const F& fn) {
  constexpr int64_t kMinUnitsPerTask = 8192;
  const int64_t grain = std::max<int64_t>(1, kMinUnitsPerTask / std::max<int64_t>(units_per_row, 1));
  if (B <= grain) {
    fn(0, B);
  } else {
    at::parallel_for(0, B, grain, fn);
  }
}

// Python's None for an optional tensor argument, as an undefined tensor.
using Opt = std::optional<at::Tensor>;
inline at::Tensor value(const Opt& t) { return t.has_value() ? *t : at::Tensor(); }

const bool* mask_row(const at::Tensor& mask, int64_t t, int64_t B) {
  return mask.defined() ? mask.data_ptr<bool>() + t * B : nullptr;
}

// x W^T (+ add) for every step with one weight W (N, K): through oneDNN's packed copy of W
// when the caller packed it (for large products; see kernels/matmul.py), else ATen's addmm.
class StepProduct {
 public:
  StepProduct(const at::Tensor& weight, const Opt& packed, int64_t rows)
      : weight_t_(weight.t()), packed_(value(packed)) {
    if (packed_.defined()) zeros_ = at::zeros({rows, weight.size(0)}, weight.options());
  }

  // out = add + x W^T; ``add`` may be ``out`` itself.
  void add_into(at::Tensor& out, const at::Tensor& add, const at::Tensor& x) const {
    if (packed_.defined()) {
      out.copy_(linear_add(x, add));
    } else {
      at::addmm_out(out, add, x, weight_t_);
    }
  }

  // out = x W^T.
  void into(at::Tensor& out, const at::Tensor& x) const {
    if (packed_.defined()) {
      out.copy_(linear_add(x, zeros_));
    } else {
      at::mm_out(out, x, weight_t_);
    }
  }

 private:
  at::Tensor linear_add(const at::Tensor& x, const at::Tensor& add) const {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const std::optional<at::Tensor>&, c10::string_view)>();
    return op.call(x, add, packed_, std::nullopt, "add");
  }

  at::Tensor weight_t_, packed_, zeros_;
};

// Each step's projected input p_t (B, G*H), from one of two sources. Either the caller's
// ``projected`` (T, B, G*H), all steps projected in one product (what a backward needs), or,
// without a backward, ``x`` (T, B, D) projected here ``kChunk`` steps at a time into one small
// buffer that every chunk reuses: a (T, B, G*H) temporary of tens of megabytes is above
// glibc's mmap threshold, so each call would fault in fresh pages for it (at the char shape
// that costs about as much as the product itself).
class StepInputs {
 public:
  static constexpr int64_t kChunk = 16;

  explicit StepInputs(const at::Tensor& projected) : all_(projected) {}
  // ``packed_ih``: oneDNN's packed copy of w_ih for kChunk * B rows, or undefined for addmm
  // (which writes into one buffer, allocated here; the packed product returns its own).
  StepInputs(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& packed_ih, const at::Tensor& bias)
      : x_(x), w_ih_t_(w_ih.t()), packed_ih_(packed_ih), bias_(bias),
        chunk_(packed_ih.defined() ? at::Tensor()
                                   : at::empty({std::min(kChunk, x.size(0)), x.size(1), w_ih.size(0)}, x.options())) {}

  int64_t steps() const { return all_.defined() ? all_.size(0) : x_.size(0); }

  // p_t (B, G*H), writable: the recurrences may overwrite it.
  at::Tensor at(int64_t t) {
    if (all_.defined()) return all_[t];
    const int64_t k = t % kChunk;
    if (k == 0) {
      const int64_t n = std::min(kChunk, x_.size(0) - t), G = w_ih_t_.size(1);
      at::Tensor in = x_.narrow(0, t, n).reshape({-1, x_.size(2)});  // (n*B, D)
      if (packed_ih_.defined()) {
        static auto linear = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                                 .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                   const std::optional<at::Tensor>&, c10::string_view,
                                                   c10::List<std::optional<at::Scalar>>,
                                                   std::optional<c10::string_view>)>();
        const std::optional<at::Tensor> bias = bias_.defined() ? std::optional<at::Tensor>(bias_) : std::nullopt;
        chunk_ = linear.call(in, packed_ih_, bias, "none", c10::List<std::optional<at::Scalar>>(), "")
                     .view({n, -1, G});  // (n, B, G*H)
      } else {
        at::Tensor out = chunk_.narrow(0, 0, n).view({-1, G});  // (n*B, G*H)
        if (bias_.defined()) {
          at::addmm_out(out, bias_, in, w_ih_t_);
        } else {
          at::mm_out(out, in, w_ih_t_);
        }
      }
    }
    return chunk_[k];
  }

 private:
  at::Tensor all_, x_, w_ih_t_, packed_ih_, bias_, chunk_;
};

// In a backward, rows whose sequence had ended at this step pass dL/dh on unchanged:
// out[b] = dh[b] where !valid[b] (``valid`` null: every row was valid).
template <typename T>
void pass_ended_rows(T* out, const T* dh, const bool* valid, int64_t B, int64_t H) {
  if (valid == nullptr) return;
  for (int64_t b = 0; b < B; ++b) {
    if (!valid[b]) std::memcpy(out + b * H, dh + b * H, H * sizeof(T));
  }
}

// One batch row's element-wise work per step, each a loop over the H units that the
// compiler vectorises (free functions with restrict pointers: inside the dispatch lambdas
// it cannot prove that the arrays do not overlap).
template <typename T>
void add_row(T* __restrict__ dst, const T* __restrict__ src, int64_t H) {
  for (int64_t j = 0; j < H; ++j) dst[j] += src[j];
}

template <typename T>
void elman_row(T* __restrict__ h, bool relu, int64_t H) {
  if (relu) {
    for (int64_t j = 0; j < H; ++j) h[j] = h[j] > T(0) ? h[j] : T(0);
  } else {
    for (int64_t j = 0; j < H; ++j) h[j] = Act<T>::tanh(h[j]);
  }
}

template <typename T>
void elman_back_row(T* __restrict__ g, const T* __restrict__ dh, const T* __restrict__ h, bool relu, int64_t H) {
  if (relu) {
    for (int64_t j = 0; j < H; ++j) g[j] = h[j] > T(0) ? dh[j] : T(0);
  } else {
    for (int64_t j = 0; j < H; ++j) g[j] = dh[j] * (T(1) - h[j] * h[j]);
  }
}

template <typename T>
void gru_row(const T* __restrict__ p, const T* __restrict__ q, const T* __restrict__ hp,
             T* __restrict__ r_out, T* __restrict__ z_out, T* __restrict__ hn_out, T* __restrict__ n_out,
             T* __restrict__ h, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = Act<T>::sigmoid(p[j] + q[j]);
    const T z = Act<T>::sigmoid(p[H + j] + q[H + j]);
    const T hn = q[2 * H + j];  // W_hn h + b_hn
    const T n = Act<T>::tanh(p[2 * H + j] + r * hn);
    r_out[j] = r;
    z_out[j] = z;
    hn_out[j] = hn;
    n_out[j] = n;
    h[j] = n + z * (hp[j] - n);
  }
}

template <typename T>
void gru_back_row(const T* __restrict__ dh, const T* __restrict__ r, const T* __restrict__ z,
                  const T* __restrict__ hn, const T* __restrict__ n, const T* __restrict__ hp,
                  T* __restrict__ g, T* __restrict__ g_pre_n, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T d = dh[j];
    const T pre_n = d * (T(1) - z[j]) * (T(1) - n[j] * n[j]);
    g[j] = pre_n * hn[j] * r[j] * (T(1) - r[j]);
    g[H + j] = d * (hp[j] - n[j]) * z[j] * (T(1) - z[j]);
    g[2 * H + j] = pre_n * r[j];
    g_pre_n[j] = pre_n;
  }
}

template <typename T>
void gru_back_state_row(T* __restrict__ out, const T* __restrict__ through, const T* __restrict__ dh,
                        const T* __restrict__ z, int64_t H) {
  for (int64_t j = 0; j < H; ++j) out[j] = through[j] + dh[j] * z[j];
}

template <typename T>
void lstm_row(T* __restrict__ a, const T* __restrict__ cp, T* __restrict__ c, T* __restrict__ tc, T* __restrict__ h,
              int64_t H) {
  T* __restrict__ af = a + H;
  T* __restrict__ ag = a + 2 * H;
  T* __restrict__ ao = a + 3 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T i = Act<T>::sigmoid(a[j]);
    const T f = Act<T>::sigmoid(af[j]);
    const T g = Act<T>::tanh(ag[j]);
    const T o = Act<T>::sigmoid(ao[j]);
    a[j] = i;
    af[j] = f;
    ag[j] = g;
    ao[j] = o;
    const T cj = f * cp[j] + i * g;
    const T tcj = Act<T>::tanh(cj);
    c[j] = cj;
    tc[j] = tcj;
    h[j] = o * tcj;
  }
}

template <typename T>
void lstm_back_row(const T* __restrict__ a, const T* __restrict__ tc, const T* __restrict__ cp,
                   const T* __restrict__ dh, T* __restrict__ dc, T* __restrict__ g, int64_t H) {
  const T* __restrict__ af = a + H;
  const T* __restrict__ ag = a + 2 * H;
  const T* __restrict__ ao = a + 3 * H;
  T* __restrict__ gf = g + H;
  T* __restrict__ gg = g + 2 * H;
  T* __restrict__ go = g + 3 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T i = a[j], f = af[j], gj = ag[j], o = ao[j], t = tc[j];
    const T c_grad = dc[j] + dh[j] * o * (T(1) - t * t);
    g[j] = c_grad * gj * i * (T(1) - i);
    gf[j] = c_grad * cp[j] * f * (T(1) - f);
    gg[j] = c_grad * i * (T(1) - gj * gj);
    go[j] = dh[j] * t * o * (T(1) - o);
    dc[j] = c_grad * f;  // dL/dc_{t-1}
  }
}

// ------------------------------------------------------------------ Elman
// h_t = act(p_t + W_hh h_{t-1}), written over ``projected`` (T, B, H), which becomes the states.
void elman_forward_impl(at::Tensor projected, const at::Tensor& h0, const at::Tensor& w_hh, const Opt& packed,
                        bool relu, const at::Tensor& mask) {
  const int64_t T = projected.size(0), B = projected.size(1), H = projected.size(2);
  const StepProduct recurrent(w_hh, packed, B);  // h -> W_hh h (+ p_t)
  std::vector<at::Tensor> steps = projected.unbind(0);
  AT_DISPATCH_FLOATING_TYPES(projected.scalar_type(), "elman_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      const at::Tensor& h_prev = t == 0 ? h0 : steps[t - 1];
      recurrent.add_into(steps[t], steps[t], h_prev);  // p_t + W_hh h_{t-1}, in place
      scalar_t* h = steps[t].data_ptr<scalar_t>();
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      const bool* valid = mask_row(mask, t, B);
      for_rows(B, H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          if (valid != nullptr && !valid[b]) {
            std::memcpy(h + b * H, hp + b * H, H * sizeof(scalar_t));  // ended: the state carries over
          } else {
            elman_row(h + b * H, relu, H);
          }
        }
      });
    }
  });
}

// Returns (dL/d pre-activations (T, B, H), dL/dh0 (B, H)).
std::vector<at::Tensor> elman_backward_impl(const at::Tensor& states, const at::Tensor& h0, const at::Tensor& w_hh,
                                            const Opt& packed_t, bool relu, const at::Tensor& mask,
                                            const at::Tensor& grad_states, const at::Tensor& grad_h_n) {
  const int64_t T = states.size(0), B = states.size(1), H = states.size(2);
  const StepProduct back(w_hh.t(), packed_t, B);  // g -> g W_hh
  at::Tensor grad_pre = at::empty_like(states);
  at::Tensor grad_h = grad_h_n.defined() ? grad_h_n.clone() : at::zeros_like(h0);  // dL/dh_t from later steps
  at::Tensor next = at::empty_like(h0);
  AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "elman_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* h = states.data_ptr<scalar_t>() + t * B * H;
      const scalar_t* gs = grad_states.defined() ? grad_states.data_ptr<scalar_t>() + t * B * H : nullptr;
      scalar_t* gh = grad_h.data_ptr<scalar_t>();
      scalar_t* g = grad_pre.data_ptr<scalar_t>() + t * B * H;
      const bool* valid = mask_row(mask, t, B);
      for_rows(B, H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          if (gs != nullptr) add_row(gh + b * H, gs + b * H, H);
          if (valid != nullptr && !valid[b]) {
            std::fill(g + b * H, g + (b + 1) * H, scalar_t(0));  // ended: dL/dh_t passes to h_{t-1} unchanged
          } else {
            elman_back_row(g + b * H, gh + b * H, h + b * H, relu, H);
          }
        }
      });
      back.into(next, grad_pre[t]);  // dL/dh_{t-1} through the product
      pass_ended_rows(next.data_ptr<scalar_t>(), gh, valid, B, H);
      std::swap(grad_h, next);
    }
  });
  return {grad_pre, grad_h};
}

// ------------------------------------------------------------------ GRU
// r, z = sigmoid(p_rz + W_hrz h + b_hrz), n = tanh(p_n + r (W_hn h + b_hn)), h' = n + z (h - n);
// p_t holds W_x x_t + b_x + (b_hr, b_hz, 0); b_hn (H,) or undefined.
// Returns (states, rz (T, B, 2H), hn (T, B, H), n (T, B, H)); the last three when ``save``.
std::vector<at::Tensor> gru_forward_impl(StepInputs& inputs, const at::Tensor& h0, const at::Tensor& w_hh,
                                         const Opt& packed, const at::Tensor& b_hn, const at::Tensor& mask,
                                         bool save) {
  const int64_t T = inputs.steps(), B = h0.size(0), H = h0.size(1);
  const int64_t kept = save ? T : 1;  // without a backward, one step's worth, reused
  at::Tensor states = at::empty({T, B, H}, h0.options());
  at::Tensor rz = at::empty({kept, B, 2 * H}, h0.options());
  at::Tensor hn = at::empty({kept, B, H}, h0.options());
  at::Tensor n = at::empty({kept, B, H}, h0.options());
  at::Tensor hh = at::empty({B, 3 * H}, h0.options());  // W_hh h_{t-1} + (0, 0, b_hn)
  at::Tensor bias = at::zeros({B, 3 * H}, h0.options());  // (0, 0, b_hn) in every row
  if (b_hn.defined()) bias.narrow(1, 2 * H, H).copy_(b_hn.expand({B, H}));
  const StepProduct recurrent(w_hh, packed, B);
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "gru_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      const at::Tensor h_prev = t == 0 ? h0 : states[t - 1];
      recurrent.add_into(hh, bias, h_prev);
      const int64_t s = save ? t : 0;
      const at::Tensor p_t = inputs.at(t);
      const scalar_t* p = p_t.data_ptr<scalar_t>();
      const scalar_t* q = hh.data_ptr<scalar_t>();
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      scalar_t* h = states.data_ptr<scalar_t>() + t * B * H;
      scalar_t* rzt = rz.data_ptr<scalar_t>() + s * B * 2 * H;
      scalar_t* hnt = hn.data_ptr<scalar_t>() + s * B * H;
      scalar_t* nt = n.data_ptr<scalar_t>() + s * B * H;
      const bool* valid = mask_row(mask, t, B);
      for_rows(B, 3 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          if (valid != nullptr && !valid[b]) {
            std::memcpy(h + b * H, hp + b * H, H * sizeof(scalar_t));
          } else {
            gru_row(p + b * 3 * H, q + b * 3 * H, hp + b * H, rzt + b * 2 * H, rzt + b * 2 * H + H,
                    hnt + b * H, nt + b * H, h + b * H, H);
          }
        }
      });
    }
  });
  if (!save) return {states, at::Tensor(), at::Tensor(), at::Tensor()};
  return {states, rz, hn, n};
}

// Returns (dL/d(W_hh h_{t-1} + (0, 0, b_hn)) (T, B, 3H), dL/d pre_n (T, B, H), dL/dh0).
std::vector<at::Tensor> gru_backward_impl(const at::Tensor& rz, const at::Tensor& hn, const at::Tensor& n,
                                          const at::Tensor& states, const at::Tensor& h0, const at::Tensor& w_hh,
                                          const Opt& packed_t, const at::Tensor& mask, const at::Tensor& grad_states,
                                          const at::Tensor& grad_h_n) {
  const int64_t T = states.size(0), B = states.size(1), H = states.size(2);
  const StepProduct back(w_hh.t(), packed_t, B);  // g -> g W_hh
  at::Tensor grad_hh = at::empty({T, B, 3 * H}, h0.options());
  at::Tensor grad_pre_n = at::empty({T, B, H}, h0.options());
  at::Tensor grad_h = grad_h_n.defined() ? grad_h_n.clone() : at::zeros_like(h0);
  at::Tensor next = at::empty_like(h0);
  at::Tensor through = at::empty_like(h0);
  AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "gru_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* hp = (t == 0 ? h0 : states[t - 1]).data_ptr<scalar_t>();
      const scalar_t* gs = grad_states.defined() ? grad_states.data_ptr<scalar_t>() + t * B * H : nullptr;
      const scalar_t* rzt = rz.data_ptr<scalar_t>() + t * B * 2 * H;
      const scalar_t* hnt = hn.data_ptr<scalar_t>() + t * B * H;
      const scalar_t* nt = n.data_ptr<scalar_t>() + t * B * H;
      scalar_t* gh = grad_h.data_ptr<scalar_t>();
      scalar_t* ghh = grad_hh.data_ptr<scalar_t>() + t * B * 3 * H;
      scalar_t* gpn = grad_pre_n.data_ptr<scalar_t>() + t * B * H;
      const bool* valid = mask_row(mask, t, B);
      for_rows(B, 3 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          if (gs != nullptr) add_row(gh + b * H, gs + b * H, H);
          if (valid != nullptr && !valid[b]) {
            std::fill(ghh + b * 3 * H, ghh + (b + 1) * 3 * H, scalar_t(0));
            std::fill(gpn + b * H, gpn + (b + 1) * H, scalar_t(0));
          } else {
            gru_back_row(gh + b * H, rzt + b * 2 * H, rzt + b * 2 * H + H, hnt + b * H, nt + b * H, hp + b * H,
                         ghh + b * 3 * H, gpn + b * H, H);
          }
        }
      });
      // dL/dh_{t-1} = g W_hh + dL/dh' z; ended rows pass dL/dh_t on unchanged.
      back.into(through, grad_hh[t]);
      const scalar_t* th = through.data_ptr<scalar_t>();
      scalar_t* out = next.data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        if (valid != nullptr && !valid[b]) {
          std::memcpy(out + b * H, gh + b * H, H * sizeof(scalar_t));
        } else {
          gru_back_state_row(out + b * H, th + b * H, gh + b * H, rzt + b * 2 * H + H, H);
        }
      }
      std::swap(grad_h, next);
    }
  });
  return {grad_hh, grad_pre_n, grad_h};
}

// ------------------------------------------------------------------ LSTM
// (i, f, g, o) = (sigmoid, sigmoid, tanh, sigmoid)(p_t + W_hh h_{t-1}), c' = f c + i g, h' = o tanh(c').
// The activated gates are written over ``projected`` (T, B, 4H), a temporary the caller gives up.
// Returns (states, c_n, cells (T, B, H), tanh_cells (T, B, H)); the last two when ``save``.
std::vector<at::Tensor> lstm_forward_impl(StepInputs& inputs, const at::Tensor& h0, const at::Tensor& c0,
                                          const at::Tensor& w_hh, const Opt& packed, const at::Tensor& mask,
                                          bool save) {
  const int64_t T = inputs.steps(), B = h0.size(0), H = h0.size(1);
  at::Tensor states = at::empty({T, B, H}, h0.options());
  at::Tensor cells = at::empty({save ? T : 2, B, H}, h0.options());  // without a backward: two, in turn
  at::Tensor tanh_cells = at::empty({save ? T : 1, B, H}, h0.options());
  const StepProduct recurrent(w_hh, packed, B);
  at::Tensor c_prev = c0;
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "lstm_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      const at::Tensor h_prev = t == 0 ? h0 : states[t - 1];
      at::Tensor p_t = inputs.at(t);
      recurrent.add_into(p_t, p_t, h_prev);  // p_t + W_hh h_{t-1}, in place
      const at::Tensor c_t = cells[save ? t : t % 2];
      scalar_t* ap = p_t.data_ptr<scalar_t>();
      const scalar_t* cp = c_prev.data_ptr<scalar_t>();
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      scalar_t* c = c_t.data_ptr<scalar_t>();
      scalar_t* tc = tanh_cells.data_ptr<scalar_t>() + (save ? t : 0) * B * H;
      scalar_t* h = states.data_ptr<scalar_t>() + t * B * H;
      const bool* valid = mask_row(mask, t, B);
      for_rows(B, 4 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          if (valid != nullptr && !valid[b]) {
            std::memcpy(c + b * H, cp + b * H, H * sizeof(scalar_t));
            std::memcpy(h + b * H, hp + b * H, H * sizeof(scalar_t));
          } else {
            lstm_row(ap + b * 4 * H, cp + b * H, c + b * H, tc + b * H, h + b * H, H);
          }
        }
      });
      c_prev = c_t;
    }
  });
  at::Tensor c_n = c_prev.clone();
  if (!save) return {states, c_n, at::Tensor(), at::Tensor()};
  return {states, c_n, cells, tanh_cells};
}

// Returns (dL/d pre-activations (T, B, 4H), dL/dh0, dL/dc0).
std::vector<at::Tensor> lstm_backward_impl(const at::Tensor& gates, const at::Tensor& cells,
                                           const at::Tensor& tanh_cells, const at::Tensor& states,
                                           const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
                                           const Opt& packed_t, const at::Tensor& mask, const at::Tensor& grad_states,
                                           const at::Tensor& grad_h_n, const at::Tensor& grad_c_n) {
  const int64_t T = states.size(0), B = states.size(1), H = states.size(2);
  const StepProduct back(w_hh.t(), packed_t, B);  // g -> g W_hh
  at::Tensor grad_gates = at::empty({T, B, 4 * H}, h0.options());
  at::Tensor grad_h = grad_h_n.defined() ? grad_h_n.clone() : at::zeros_like(h0);
  at::Tensor grad_c = grad_c_n.defined() ? grad_c_n.clone() : at::zeros_like(c0);  // dL/dc_t, updated in place
  at::Tensor next = at::empty_like(h0);
  AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "lstm_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* cp = (t == 0 ? c0 : cells[t - 1]).data_ptr<scalar_t>();
      const scalar_t* gs = grad_states.defined() ? grad_states.data_ptr<scalar_t>() + t * B * H : nullptr;
      const scalar_t* a = gates.data_ptr<scalar_t>() + t * B * 4 * H;
      const scalar_t* tc = tanh_cells.data_ptr<scalar_t>() + t * B * H;
      scalar_t* gh = grad_h.data_ptr<scalar_t>();
      scalar_t* gc = grad_c.data_ptr<scalar_t>();
      scalar_t* gg = grad_gates.data_ptr<scalar_t>() + t * B * 4 * H;
      const bool* valid = mask_row(mask, t, B);
      for_rows(B, 4 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          if (gs != nullptr) add_row(gh + b * H, gs + b * H, H);
          if (valid != nullptr && !valid[b]) {
            std::fill(gg + b * 4 * H, gg + (b + 1) * 4 * H, scalar_t(0));  // ended: dL/dh, dL/dc pass on
          } else {
            lstm_back_row(a + b * 4 * H, tc + b * H, cp + b * H, gh + b * H, gc + b * H, gg + b * 4 * H, H);
          }
        }
      });
      back.into(next, grad_gates[t]);  // dL/dh_{t-1}
      pass_ended_rows(next.data_ptr<scalar_t>(), gh, valid, B, H);
      std::swap(grad_h, next);
    }
  });
  return {grad_gates, grad_h, grad_c};
}

// The minimal cells' whole layer after the input projection, fused: the coefficients a_t, b_t
// of h_t = a_t h_{t-1} + b_t are computed from the projected input on the fly (nothing but the
// states is written), and the backward recomputes them. g(v) = v + 1/2 (v >= 0), sigmoid(v)
// (v < 0), the candidate's activation (Feng et al., 2024).
//   minGRU  (G = 2, projected [k_z | k_h]):      a = 1 - z, b = z g(k_h), z = sigmoid(k_z)
//   minLSTM (G = 3, projected [k_f | k_i | k_h]): a = f / (f + i), b = i g(k_h) / (f + i)
// Both branches computed and blended by a 0/1 factor, not selected by a condition: the
// loops that call these then vectorise (GCC leaves a loop with a selection in it scalar).
template <typename T>
inline T candidate(T v) {
  const T s = Act<T>::sigmoid(v), m = static_cast<T>(v >= T(0));
  return m * (v + T(0.5)) + (T(1) - m) * s;
}
// g(v) and g'(v) together.
template <typename T>
inline void candidate_and_slope(T v, T& value, T& slope) {
  const T s = Act<T>::sigmoid(v), m = static_cast<T>(v >= T(0));
  value = m * (v + T(0.5)) + (T(1) - m) * s;
  slope = m + (T(1) - m) * s * (T(1) - s);
}

template <int G, typename T>
inline void min_coefficients(const T* p, int64_t H, int64_t j, T& a, T& b) {
  if constexpr (G == 2) {
    const T z = Act<T>::sigmoid(p[j]);
    a = T(1) - z;
    b = z * candidate(p[H + j]);
  } else {
    const T f = Act<T>::sigmoid(p[j]), i = Act<T>::sigmoid(p[H + j]), inv = T(1) / (f + i);
    a = f * inv;
    b = i * inv * candidate(p[2 * H + j]);
  }
}

// One row of one step of the backward: from the projected input p (G*H), the previous
// state, dL/dh_t from the outputs (gt) and from later steps (c, updated in place to
// dL/dh_{t-1}), write dL/dp (gq, G*H).
template <int G, typename T>
void min_back_row(const T* __restrict__ p, const T* __restrict__ prev, const T* __restrict__ gt, T* __restrict__ c,
                  T* __restrict__ gq, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T g = c[j] + gt[j];  // dL/dh_t in total
    const T da = g * prev[j], db = g;
    T cand, slope;
    if constexpr (G == 2) {
      const T z = Act<T>::sigmoid(p[j]);
      candidate_and_slope(p[H + j], cand, slope);
      gq[j] = (db * cand - da) * z * (T(1) - z);
      gq[H + j] = db * z * slope;
      c[j] = g * (T(1) - z);
    } else {
      const T f = Act<T>::sigmoid(p[j]), i = Act<T>::sigmoid(p[H + j]);
      candidate_and_slope(p[2 * H + j], cand, slope);
      const T inv = T(1) / (f + i), inv2 = inv * inv;
      const T df = (da - db * cand) * i * inv2;  // a = f/s, b = i cand/s, s = f + i
      const T di = (db * cand - da) * f * inv2;
      gq[j] = df * f * (T(1) - f);
      gq[H + j] = di * i * (T(1) - i);
      gq[2 * H + j] = db * i * inv * slope;
      c[j] = g * f * inv;
    }
  }
}

// h (T, B, H) from projected (T, B, G*H) and h0 (B, H); mask (T, B) or undefined.
template <int G>
at::Tensor min_scan(const at::Tensor& projected, const at::Tensor& h0, const at::Tensor& mask) {
  const int64_t T = projected.size(0), B = projected.size(1), H = h0.size(1);
  at::Tensor h = at::empty({T, B, H}, h0.options());
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "min_scan", [&] {
    const scalar_t* pp = projected.data_ptr<scalar_t>();
    const scalar_t* h0p = h0.data_ptr<scalar_t>();
    scalar_t* hp = h.data_ptr<scalar_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, 2048 / H), [&](int64_t b0, int64_t b1) {
      for (int64_t t = 0; t < T; ++t) {
        const bool* valid = mask_row(mask, t, B);
        for (int64_t r = b0; r < b1; ++r) {
          const scalar_t* prev = (t == 0 ? h0p : hp + (t - 1) * B * H) + r * H;
          scalar_t* __restrict__ out = hp + (t * B + r) * H;
          if (valid != nullptr && !valid[r]) {
            std::memcpy(out, prev, H * sizeof(scalar_t));
            continue;
          }
          const scalar_t* __restrict__ p = pp + (t * B + r) * G * H;
          for (int64_t j = 0; j < H; ++j) {
            scalar_t a, b;
            min_coefficients<G>(p, H, j, a, b);
            out[j] = a * prev[j] + b;
          }
        }
      }
    });
  });
  return h;
}

// Returns (dL/d projected (T, B, G*H), dL/dh0 (B, H)) from the forward's h and dL/dh.
template <int G>
std::vector<at::Tensor> min_scan_backward(const at::Tensor& projected, const at::Tensor& h, const at::Tensor& h0,
                                          const at::Tensor& mask, const at::Tensor& grad_h) {
  const int64_t T = projected.size(0), B = projected.size(1), H = h0.size(1);
  at::Tensor grad_p = at::empty_like(projected), grad_h0 = at::empty_like(h0);
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "min_scan_backward", [&] {
    const scalar_t* pp = projected.data_ptr<scalar_t>();
    const scalar_t* hp = h.data_ptr<scalar_t>();
    const scalar_t* h0p = h0.data_ptr<scalar_t>();
    const scalar_t* gp = grad_h.data_ptr<scalar_t>();
    scalar_t* gpp = grad_p.data_ptr<scalar_t>();
    scalar_t* gh0 = grad_h0.data_ptr<scalar_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, 2048 / H), [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> carry((b1 - b0) * H, scalar_t(0));  // dL/dh_t through later steps
      for (int64_t t = T - 1; t >= 0; --t) {
        const bool* valid = mask_row(mask, t, B);
        for (int64_t r = b0; r < b1; ++r) {
          scalar_t* __restrict__ c = carry.data() + (r - b0) * H;
          const scalar_t* __restrict__ gt = gp + (t * B + r) * H;
          scalar_t* __restrict__ gq = gpp + (t * B + r) * G * H;
          if (valid != nullptr && !valid[r]) {  // ended: h_t = h_{t-1}, the gradient passes on
            for (int64_t j = 0; j < H; ++j) c[j] += gt[j];
            std::fill(gq, gq + G * H, scalar_t(0));
            continue;
          }
          const scalar_t* p = pp + (t * B + r) * G * H;
          const scalar_t* prev = (t == 0 ? h0p : hp + (t - 1) * B * H) + r * H;
          min_back_row<G>(p, prev, gt, c, gq, H);
        }
      }
      std::copy(carry.begin(), carry.end(), gh0 + b0 * H);
    });
  });
  return {grad_p, grad_h0};
}

// IndRNN (Li et al., 2018): h_t = relu(p_t + u * h_{t-1}), u (H,) element-wise. Each unit's
// recurrence is its own, so the batch rows are split between the threads, and a step is one
// pass over a row. An ended row (mask false) keeps its state.
at::Tensor indrnn_scan(const at::Tensor& projected, const at::Tensor& h0, const at::Tensor& u,
                       const at::Tensor& mask) {
  const int64_t T = projected.size(0), B = projected.size(1), H = h0.size(1);
  at::Tensor h = at::empty({T, B, H}, h0.options());
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "indrnn_scan", [&] {
    const scalar_t* pp = projected.data_ptr<scalar_t>();
    const scalar_t* h0p = h0.data_ptr<scalar_t>();
    const scalar_t* __restrict__ up = u.data_ptr<scalar_t>();
    scalar_t* hp = h.data_ptr<scalar_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, 2048 / H), [&](int64_t b0, int64_t b1) {
      for (int64_t t = 0; t < T; ++t) {
        const bool* valid = mask_row(mask, t, B);
        for (int64_t r = b0; r < b1; ++r) {
          const scalar_t* __restrict__ prev = (t == 0 ? h0p : hp + (t - 1) * B * H) + r * H;
          scalar_t* __restrict__ out = hp + (t * B + r) * H;
          if (valid != nullptr && !valid[r]) {
            std::memcpy(out, prev, H * sizeof(scalar_t));
            continue;
          }
          const scalar_t* __restrict__ p = pp + (t * B + r) * H;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t z = p[j] + up[j] * prev[j];
            out[j] = z > scalar_t(0) ? z : scalar_t(0);
          }
        }
      }
    });
  });
  return h;
}

// Returns (dL/d projected (T, B, H), dL/dh0 (B, H), dL/du (H,)) from the forward's h and
// dL/dh. ReLU's slope is h_t > 0. Each thread sums u's gradient over its rows, then adds it
// to the total under a lock (H additions per thread).
std::vector<at::Tensor> indrnn_scan_backward(const at::Tensor& h, const at::Tensor& h0, const at::Tensor& u,
                                             const at::Tensor& mask, const at::Tensor& grad_h) {
  const int64_t T = h.size(0), B = h.size(1), H = h0.size(1);
  at::Tensor grad_pre = at::empty_like(h), grad_h0 = at::empty_like(h0), grad_u = at::zeros_like(u);
  std::mutex total;
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "indrnn_scan_backward", [&] {
    const scalar_t* hp = h.data_ptr<scalar_t>();
    const scalar_t* h0p = h0.data_ptr<scalar_t>();
    const scalar_t* __restrict__ up = u.data_ptr<scalar_t>();
    const scalar_t* gp = grad_h.data_ptr<scalar_t>();
    scalar_t* gpre = grad_pre.data_ptr<scalar_t>();
    scalar_t* gh0 = grad_h0.data_ptr<scalar_t>();
    scalar_t* gu = grad_u.data_ptr<scalar_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, 2048 / H), [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> carry((b1 - b0) * H, scalar_t(0));  // dL/dh_t through later steps
      std::vector<scalar_t> gu_part(H, scalar_t(0));
      scalar_t* __restrict__ gup = gu_part.data();
      for (int64_t t = T - 1; t >= 0; --t) {
        const bool* valid = mask_row(mask, t, B);
        for (int64_t r = b0; r < b1; ++r) {
          scalar_t* __restrict__ c = carry.data() + (r - b0) * H;
          const scalar_t* __restrict__ gt = gp + (t * B + r) * H;
          scalar_t* __restrict__ gq = gpre + (t * B + r) * H;
          if (valid != nullptr && !valid[r]) {  // ended: h_t = h_{t-1}, the gradient passes on
            for (int64_t j = 0; j < H; ++j) c[j] += gt[j];
            std::fill(gq, gq + H, scalar_t(0));
            continue;
          }
          const scalar_t* __restrict__ out = hp + (t * B + r) * H;
          const scalar_t* __restrict__ prev = (t == 0 ? h0p : hp + (t - 1) * B * H) + r * H;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t g = out[j] > scalar_t(0) ? c[j] + gt[j] : scalar_t(0);
            gq[j] = g;
            c[j] = g * up[j];
          }
          for (int64_t j = 0; j < H; ++j) gup[j] += gq[j] * prev[j];  // a loop of its own: it vectorises
        }
      }
      std::copy(carry.begin(), carry.end(), gh0 + b0 * H);
      std::lock_guard<std::mutex> lock(total);
      for (int64_t j = 0; j < H; ++j) gu[j] += gup[j];
    });
  });
  return {grad_pre, grad_h0, grad_u};
}

}  // namespace

// The Python entry points: optional tensors (None) as undefined tensors. ``packed``: oneDNN's
// packed W_hh for the forward's products, ``packed_t``: of W_hh^T for the backward's (or None).
void elman_forward(at::Tensor projected, const at::Tensor& h0, const at::Tensor& w_hh, const Opt& packed, bool relu,
                   const Opt& mask) {
  elman_forward_impl(projected, h0, w_hh, packed, relu, value(mask));
}
std::vector<at::Tensor> elman_backward(const at::Tensor& states, const at::Tensor& h0, const at::Tensor& w_hh,
                                       const Opt& packed_t, bool relu, const Opt& mask, const Opt& grad_states,
                                       const Opt& grad_h_n) {
  return elman_backward_impl(states, h0, w_hh, packed_t, relu, value(mask), value(grad_states), value(grad_h_n));
}
std::vector<at::Tensor> gru_forward(const at::Tensor& projected, const at::Tensor& h0, const at::Tensor& w_hh,
                                    const Opt& packed, const Opt& b_hn, const Opt& mask, bool save) {
  StepInputs inputs(projected);
  return gru_forward_impl(inputs, h0, w_hh, packed, value(b_hn), value(mask), save);
}
std::vector<at::Tensor> gru_backward(const at::Tensor& rz, const at::Tensor& hn, const at::Tensor& n,
                                     const at::Tensor& states, const at::Tensor& h0, const at::Tensor& w_hh,
                                     const Opt& packed_t, const Opt& mask, const Opt& grad_states,
                                     const Opt& grad_h_n) {
  return gru_backward_impl(rz, hn, n, states, h0, w_hh, packed_t, value(mask), value(grad_states), value(grad_h_n));
}
std::vector<at::Tensor> lstm_forward(at::Tensor projected, const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& w_hh, const Opt& packed, const Opt& mask, bool save) {
  StepInputs inputs(projected);
  return lstm_forward_impl(inputs, h0, c0, w_hh, packed, value(mask), save);
}
// Without a backward: x (T, B, D) projected by w_ih (G*H, D) (``packed_ih``: its packed copy or
// None) and bias (G*H,) or None, a few steps at a time (StepInputs). Returns what the forwards above return with save false.
std::vector<at::Tensor> gru_inference(const at::Tensor& x, const at::Tensor& w_ih, const Opt& packed_ih,
                                      const Opt& bias, const at::Tensor& h0, const at::Tensor& w_hh,
                                      const Opt& packed, const Opt& b_hn, const Opt& mask) {
  StepInputs inputs(x, w_ih, value(packed_ih), value(bias));
  return gru_forward_impl(inputs, h0, w_hh, packed, value(b_hn), value(mask), false);
}
std::vector<at::Tensor> lstm_inference(const at::Tensor& x, const at::Tensor& w_ih, const Opt& packed_ih,
                                       const Opt& bias, const at::Tensor& h0, const at::Tensor& c0,
                                       const at::Tensor& w_hh, const Opt& packed, const Opt& mask) {
  StepInputs inputs(x, w_ih, value(packed_ih), value(bias));
  return lstm_forward_impl(inputs, h0, c0, w_hh, packed, value(mask), false);
}
std::vector<at::Tensor> lstm_backward(const at::Tensor& gates, const at::Tensor& cells, const at::Tensor& tanh_cells,
                                      const at::Tensor& states, const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& w_hh, const Opt& packed_t, const Opt& mask,
                                      const Opt& grad_states, const Opt& grad_h_n, const Opt& grad_c_n) {
  return lstm_backward_impl(gates, cells, tanh_cells, states, h0, c0, w_hh, packed_t, value(mask),
                            value(grad_states), value(grad_h_n), value(grad_c_n));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("elman_forward", &elman_forward, "Elman recurrence, in place over projected");
  m.def("elman_backward", &elman_backward, "Elman recurrence's backward");
  m.def("gru_forward", &gru_forward, "GRU recurrence");
  m.def("gru_backward", &gru_backward, "GRU recurrence's backward");
  m.def("lstm_forward", &lstm_forward, "LSTM recurrence");
  m.def("lstm_backward", &lstm_backward, "LSTM recurrence's backward");
  m.def("min_gru_scan", [](const at::Tensor& p, const at::Tensor& h0, const Opt& mask) {
    return min_scan<2>(p, h0, value(mask));
  }, "minGRU layer after the input projection");
  m.def("min_gru_scan_backward", [](const at::Tensor& p, const at::Tensor& h, const at::Tensor& h0, const Opt& mask,
                                    const at::Tensor& grad_h) {
    return min_scan_backward<2>(p, h, h0, value(mask), grad_h);
  }, "min_gru_scan's backward");
  m.def("min_lstm_scan", [](const at::Tensor& p, const at::Tensor& h0, const Opt& mask) {
    return min_scan<3>(p, h0, value(mask));
  }, "minLSTM layer after the input projection");
  m.def("min_lstm_scan_backward", [](const at::Tensor& p, const at::Tensor& h, const at::Tensor& h0,
                                     const Opt& mask, const at::Tensor& grad_h) {
    return min_scan_backward<3>(p, h, h0, value(mask), grad_h);
  }, "min_lstm_scan's backward");
  m.def("indrnn_scan", [](const at::Tensor& p, const at::Tensor& h0, const at::Tensor& u, const Opt& mask) {
    return indrnn_scan(p, h0, u, value(mask));
  }, "IndRNN layer after the input projection");
  m.def("indrnn_scan_backward", [](const at::Tensor& h, const at::Tensor& h0, const at::Tensor& u, const Opt& mask,
                                   const at::Tensor& grad_h) {
    return indrnn_scan_backward(h, h0, u, value(mask), grad_h);
  }, "indrnn_scan's backward");
  m.def("gru_inference", &gru_inference, "GRU layer without a backward, input projected in chunks of steps");
  m.def("lstm_inference", &lstm_inference, "LSTM layer without a backward, input projected in chunks of steps");
}
