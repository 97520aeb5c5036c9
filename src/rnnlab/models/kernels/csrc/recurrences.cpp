// The Elman, GRU and LSTM recurrences of rnnlab/models/kernels/recurrences.py, whole time loops
// in C++, where the Python loop makes about ten ATen calls of a few microseconds each per
// step. The Elman cell and the GRU: per step one product (ATen's addmm, or oneDNN's packed
// product) and one fused pass over the (B, H) units for all of the step's element-wise work.
// The LSTM: per step one pass that sums the product in registers and applies the gates there
// (see "LSTM" below). They compute exactly what the Python loops of recurrences.py compute
// and are tested against them and against torch.nn (float64, 1e-10).
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
#include <string>
#include <utility>
#if defined(_OPENMP)
#include <dlfcn.h>
#include <omp.h>
#endif
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <type_traits>
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
  // ``add_bias``: the addmm path adds the bias to each chunk (else the caller adds it per step,
  // see step_bias(): addmm first copies the bias into every row of the chunk, a pass over
  // (kChunk B, G*H) that the LSTM's step can save by adding it where it loads p_t).
  StepInputs(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& packed_ih, const at::Tensor& bias,
             bool add_bias = true)
      : x_(x), w_ih_t_(w_ih.t()), packed_ih_(packed_ih), bias_(bias), add_bias_(add_bias || packed_ih.defined()),
        chunk_(packed_ih.defined() ? at::Tensor()
                                   : at::empty({std::min(kChunk, x.size(0)), x.size(1), w_ih.size(0)}, x.options())) {}

  // No projection: the step itself multiplies x_t by W_xh (the LSTM's, where D is small) and
  // adds ``bias``; data() is null.
  struct InStep {};
  StepInputs(const at::Tensor& x, const at::Tensor& bias, InStep) : x_(x), bias_(bias), add_bias_(false), in_step_(true) {}
  bool projects_in_step() const { return in_step_; }
  const at::Tensor& x() const { return x_; }

  int64_t steps() const { return all_.defined() ? all_.size(0) : x_.size(0); }

  // The bias (G*H,) the steps' p_t lack, or undefined: where the chunks are projected without it.
  const at::Tensor& step_bias() const { return add_bias_ ? none_ : bias_; }

  // The end of the span of steps from t that data() serves once at(t) has run: every step, or
  // the rest of t's chunk.
  int64_t span_end(int64_t t) const {
    return all_.defined() || in_step_ ? steps() : std::min(steps(), t - t % kChunk + kChunk);
  }

  // p_t's first element, for a step of the span that at() last prepared; no tensor is made.
  template <typename T>
  T* data(int64_t t) const {
    if (in_step_) return nullptr;
    const at::Tensor& source = all_.defined() ? all_ : chunk_;
    const int64_t step = all_.defined() ? t : t % kChunk;
    return source.data_ptr<T>() + step * source.stride(0);
  }

  // p_t (B, G*H), writable: the recurrences may overwrite it.
  at::Tensor at(int64_t t) {
    if (in_step_) return at::Tensor();
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
        if (bias_.defined() && add_bias_) {
          at::addmm_out(out, bias_, in, w_ih_t_);
        } else {
          at::mm_out(out, in, w_ih_t_);
        }
      }
    }
    return chunk_[k];
  }

 private:
  at::Tensor all_, x_, w_ih_t_, packed_ih_, bias_;
  bool add_bias_ = true, in_step_ = false;
  at::Tensor chunk_, none_;
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

// The GRU's rows in two types: T, the state's and the arithmetic's, and P, the products'
// operands' and results' (p_t, W_hh h_{t-1}, the gradients that go into products). P is T, or
// bfloat16 in mixed precision (see gru_forward_impl), where a row also writes h_t in P for the
// next step's product (``h_low``).
template <typename T, typename P>
void gru_row(const P* __restrict__ p, const P* __restrict__ q, const T* __restrict__ hp,
             T* __restrict__ r_out, T* __restrict__ z_out, T* __restrict__ hn_out, T* __restrict__ n_out,
             T* __restrict__ h, P* __restrict__ h_low, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = Act<T>::sigmoid(static_cast<T>(p[j]) + static_cast<T>(q[j]));
    const T z = Act<T>::sigmoid(static_cast<T>(p[H + j]) + static_cast<T>(q[H + j]));
    const T hn = static_cast<T>(q[2 * H + j]);  // W_hn h + b_hn
    const T n = Act<T>::tanh(static_cast<T>(p[2 * H + j]) + r * hn);
    r_out[j] = r;
    z_out[j] = z;
    hn_out[j] = hn;
    n_out[j] = n;
    h[j] = n + z * (hp[j] - n);
    if constexpr (!std::is_same_v<T, P>) h_low[j] = static_cast<P>(h[j]);
  }
}

template <typename T, typename P>
void gru_back_row(const T* __restrict__ dh, const T* __restrict__ r, const T* __restrict__ z,
                  const T* __restrict__ hn, const T* __restrict__ n, const T* __restrict__ hp,
                  P* __restrict__ g, P* __restrict__ g_pre_n, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T d = dh[j];
    const T pre_n = d * (T(1) - z[j]) * (T(1) - n[j] * n[j]);
    g[j] = static_cast<P>(pre_n * hn[j] * r[j] * (T(1) - r[j]));
    g[H + j] = static_cast<P>(d * (hp[j] - n[j]) * z[j] * (T(1) - z[j]));
    g[2 * H + j] = static_cast<P>(pre_n * r[j]);
    g_pre_n[j] = static_cast<P>(pre_n);
  }
}

template <typename T, typename P>
void gru_back_state_row(T* __restrict__ out, const P* __restrict__ through, const T* __restrict__ dh,
                        const T* __restrict__ z, int64_t H) {
  for (int64_t j = 0; j < H; ++j) out[j] = static_cast<T>(through[j]) + dh[j] * z[j];
}

// P: the type of the gate gradients written (T, or bfloat16 in mixed precision: see
// lstm_mixed_forward).
template <typename T, typename P>
void lstm_back_row(const T* __restrict__ a, const T* __restrict__ tc, const T* __restrict__ cp,
                   const T* __restrict__ dh, T* __restrict__ dc, P* __restrict__ g, int64_t H, int64_t n) {
  const T* __restrict__ af = a + H;
  const T* __restrict__ ag = a + 2 * H;
  const T* __restrict__ ao = a + 3 * H;
  P* __restrict__ gf = g + H;
  P* __restrict__ gg = g + 2 * H;
  P* __restrict__ go = g + 3 * H;
  for (int64_t j = 0; j < n; ++j) {
    const T i = a[j], f = af[j], gj = ag[j], o = ao[j], t = tc[j];
    const T c_grad = dc[j] + dh[j] * o * (T(1) - t * t);
    g[j] = static_cast<P>(c_grad * gj * i * (T(1) - i));
    gf[j] = static_cast<P>(c_grad * cp[j] * f * (T(1) - f));
    gg[j] = static_cast<P>(c_grad * i * (T(1) - gj * gj));
    go[j] = static_cast<P>(dh[j] * t * o * (T(1) - o));
    dc[j] = c_grad * f;  // dL/dc_{t-1}
  }
}

// The LSTM's step in mixed precision (see lstm_mixed_forward): the gates from p_t and
// q = W_hh h_{t-1} (both bfloat16), everything else float; a: the activated gates (i, f, g, o).
inline void lstm_mixed_row(const at::BFloat16* __restrict__ p, const at::BFloat16* __restrict__ q,
                           const float* __restrict__ cp, float* __restrict__ a, float* __restrict__ c,
                           float* __restrict__ tc, float* __restrict__ h, at::BFloat16* __restrict__ h_low,
                           int64_t H) {
  using A = Act<float>;
  for (int64_t j = 0; j < H; ++j) {
    const float i = A::sigmoid(static_cast<float>(p[j]) + static_cast<float>(q[j]));
    const float f = A::sigmoid(static_cast<float>(p[H + j]) + static_cast<float>(q[H + j]));
    const float g = A::tanh(static_cast<float>(p[2 * H + j]) + static_cast<float>(q[2 * H + j]));
    const float o = A::sigmoid(static_cast<float>(p[3 * H + j]) + static_cast<float>(q[3 * H + j]));
    const float cj = f * cp[j] + i * g;
    const float t = A::tanh(cj);
    a[j] = i;
    a[H + j] = f;
    a[2 * H + j] = g;
    a[3 * H + j] = o;
    c[j] = cj;
    tc[j] = t;
    h[j] = o * t;
    h_low[j] = static_cast<at::BFloat16>(h[j]);
  }
}

// ------------------------------------------------------------------ Elman
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
//
// Mixed precision (bfloat16 autocast on the CPU): p_t and w_hh arrive in bfloat16 with h0 in
// float32. The products then run in bfloat16 (W_hh h_{t-1} from a bfloat16 copy of h_{t-1}
// that each step's row pass writes; oneDNN's AMX or AVX-512 BF16 kernels where the CPU has
// them) and everything else in float32: the state, the gates, the gradients that flow back
// through time. Autocast would run the whole loop in bfloat16, state included.
//
// Returns (states, rz (T, B, 2H), hn (T, B, H), n (T, B, H)); the last three when ``save``.
// states and the rest are in h0's type.
// Whether a loop runs in mixed precision: bfloat16 products (w_hh) around a float32 state (h0).
inline bool mixed_precision(const at::Tensor& w_hh, const at::Tensor& h0) {
  return w_hh.scalar_type() == at::kBFloat16 && h0.scalar_type() == at::kFloat;
}

template <typename T, typename P>
void gru_forward_loop(StepInputs& inputs, const at::Tensor& h0, const StepProduct& recurrent, const at::Tensor& bias,
                      at::Tensor& states, at::Tensor& rz, at::Tensor& hn, at::Tensor& n, const at::Tensor& mask,
                      bool save) {
  constexpr bool kMixed = !std::is_same_v<T, P>;
  const int64_t T_ = inputs.steps(), B = h0.size(0), H = h0.size(1);
  at::Tensor hh = at::empty({B, 3 * H}, bias.options());  // W_hh h_{t-1} + (0, 0, b_hn), in P
  at::Tensor h_low = kMixed ? h0.to(bias.scalar_type()) : at::Tensor();  // h_{t-1} in P, the product's input
  for (int64_t t = 0; t < T_; ++t) {
    const at::Tensor h_prev = t == 0 ? h0 : states[t - 1];
    recurrent.add_into(hh, bias, kMixed ? h_low : h_prev);
    const int64_t s = save ? t : 0;
    const at::Tensor p_t = inputs.at(t);
    const P* p = p_t.data_ptr<P>();
    const P* q = hh.data_ptr<P>();
    const T* hp = h_prev.data_ptr<T>();
    T* h = states.data_ptr<T>() + t * B * H;
    P* hl = kMixed ? h_low.data_ptr<P>() : nullptr;
    T* rzt = rz.data_ptr<T>() + s * B * 2 * H;
    T* hnt = hn.data_ptr<T>() + s * B * H;
    T* nt = n.data_ptr<T>() + s * B * H;
    const bool* valid = mask_row(mask, t, B);
    for_rows(B, 3 * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (valid != nullptr && !valid[b]) {
          std::memcpy(h + b * H, hp + b * H, H * sizeof(T));  // h_low's row already holds h_{t-1}
        } else {
          gru_row<T, P>(p + b * 3 * H, q + b * 3 * H, hp + b * H, rzt + b * 2 * H, rzt + b * 2 * H + H,
                        hnt + b * H, nt + b * H, h + b * H, kMixed ? hl + b * H : nullptr, H);
        }
      }
    });
  }
}

std::vector<at::Tensor> gru_forward_impl(StepInputs& inputs, const at::Tensor& h0, const at::Tensor& w_hh,
                                         const Opt& packed, const at::Tensor& b_hn, const at::Tensor& mask,
                                         bool save) {
  const int64_t T = inputs.steps(), B = h0.size(0), H = h0.size(1);
  const int64_t kept = save ? T : 1;  // without a backward, one step's worth, reused
  at::Tensor states = at::empty({T, B, H}, h0.options());
  at::Tensor rz = at::empty({kept, B, 2 * H}, h0.options());
  at::Tensor hn = at::empty({kept, B, H}, h0.options());
  at::Tensor n = at::empty({kept, B, H}, h0.options());
  at::Tensor bias = at::zeros({B, 3 * H}, w_hh.options());  // (0, 0, b_hn) in every row, in the products' type
  if (b_hn.defined()) bias.narrow(1, 2 * H, H).copy_(b_hn.expand({B, H}));
  const StepProduct recurrent(w_hh, packed, B);
  if (mixed_precision(w_hh, h0)) {
    gru_forward_loop<float, at::BFloat16>(inputs, h0, recurrent, bias, states, rz, hn, n, mask, save);
  } else {
    AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "gru_forward", [&] {
      gru_forward_loop<scalar_t, scalar_t>(inputs, h0, recurrent, bias, states, rz, hn, n, mask, save);
    });
  }
  if (!save) return {states, at::Tensor(), at::Tensor(), at::Tensor()};
  return {states, rz, hn, n};
}

// Returns (dL/d(W_hh h_{t-1} + (0, 0, b_hn)) (T, B, 3H), dL/d pre_n (T, B, H), dL/dh0); the
// first two in w_hh's type (bfloat16 in mixed precision, see above), dL/dh0 in h0's.
template <typename T, typename P>
void gru_backward_loop(const at::Tensor& rz, const at::Tensor& hn, const at::Tensor& n, const at::Tensor& states,
                       const at::Tensor& h0, const StepProduct& back, const at::Tensor& mask,
                       const at::Tensor& grad_states, at::Tensor& grad_hh, at::Tensor& grad_pre_n,
                       at::Tensor& grad_h) {
  const int64_t T_ = states.size(0), B = states.size(1), H = states.size(2);
  at::Tensor next = at::empty_like(h0);
  at::Tensor through = at::empty({B, H}, grad_hh.options());
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const T* hp = (t == 0 ? h0 : states[t - 1]).data_ptr<T>();
    const T* gs = grad_states.defined() ? grad_states.data_ptr<T>() + t * B * H : nullptr;
    const T* rzt = rz.data_ptr<T>() + t * B * 2 * H;
    const T* hnt = hn.data_ptr<T>() + t * B * H;
    const T* nt = n.data_ptr<T>() + t * B * H;
    T* gh = grad_h.data_ptr<T>();
    P* ghh = grad_hh.data_ptr<P>() + t * B * 3 * H;
    P* gpn = grad_pre_n.data_ptr<P>() + t * B * H;
    const bool* valid = mask_row(mask, t, B);
    for_rows(B, 3 * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (gs != nullptr) add_row(gh + b * H, gs + b * H, H);
        if (valid != nullptr && !valid[b]) {
          std::fill(ghh + b * 3 * H, ghh + (b + 1) * 3 * H, P(0));
          std::fill(gpn + b * H, gpn + (b + 1) * H, P(0));
        } else {
          gru_back_row<T, P>(gh + b * H, rzt + b * 2 * H, rzt + b * 2 * H + H, hnt + b * H, nt + b * H,
                             hp + b * H, ghh + b * 3 * H, gpn + b * H, H);
        }
      }
    });
    // dL/dh_{t-1} = g W_hh + dL/dh' z; ended rows pass dL/dh_t on unchanged.
    back.into(through, grad_hh[t]);
    const P* th = through.data_ptr<P>();
    T* out = next.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      if (valid != nullptr && !valid[b]) {
        std::memcpy(out + b * H, gh + b * H, H * sizeof(T));
      } else {
        gru_back_state_row<T, P>(out + b * H, th + b * H, gh + b * H, rzt + b * 2 * H + H, H);
      }
    }
    std::swap(grad_h, next);
  }
}

std::vector<at::Tensor> gru_backward_impl(const at::Tensor& rz, const at::Tensor& hn, const at::Tensor& n,
                                          const at::Tensor& states, const at::Tensor& h0, const at::Tensor& w_hh,
                                          const Opt& packed_t, const at::Tensor& mask, const at::Tensor& grad_states,
                                          const at::Tensor& grad_h_n) {
  const int64_t T = states.size(0), B = states.size(1), H = states.size(2);
  const StepProduct back(w_hh.t(), packed_t, B);  // g -> g W_hh
  at::Tensor grad_hh = at::empty({T, B, 3 * H}, w_hh.options());
  at::Tensor grad_pre_n = at::empty({T, B, H}, w_hh.options());
  at::Tensor grad_h = grad_h_n.defined() ? grad_h_n.clone() : at::zeros_like(h0);
  if (mixed_precision(w_hh, h0)) {
    gru_backward_loop<float, at::BFloat16>(rz, hn, n, states, h0, back, mask, grad_states, grad_hh, grad_pre_n,
                                           grad_h);
  } else {
    AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "gru_backward", [&] {
      gru_backward_loop<scalar_t, scalar_t>(rz, hn, n, states, h0, back, mask, grad_states, grad_hh, grad_pre_n,
                                            grad_h);
    });
  }
  return {grad_hh, grad_pre_n, grad_h};
}

// ------------------------------------------------------------------ LSTM
// (i, f, g, o) = (sigmoid, sigmoid, tanh, sigmoid)(p_t + W_hh h_{t-1}), c' = f c + i g, h' = o tanh(c').
//
// The forward's step is one fused pass instead of a product followed by an element-wise pass:
// the output (B, 4H) is cut into tiles of kTileRows batch rows by Vec<T>::N units, each tile
// holding the four gates of its units, so that W_hh h_{t-1} for a tile is summed in registers
// (kTileRows x 4 vectors, on top of p_t) and the tile's gates, c_t and h_t are computed from
// those registers before anything is written back. A product call followed by a pass over its
// output writes and re-reads (B, 4H) per step, and each call pays its own dispatch and thread
// start; the fused step is what oneDNN's LSTM primitive behind torch.nn.LSTM does, and what
// brought rnnlab's LSTM from 1.2-1.7x torch.nn.LSTM's time to about parity
// (docs/performance.md, item 14).
//
// W_hh is reordered once per call into panels (Vec<T>::N units each): panel j holds, for every
// input unit k, the 4 gates' weights of units j*N .. j*N + N - 1, contiguous ((P, H, 4, N),
// zero past H), so a tile reads its weights as one stream. How the threads share the steps:
// see lstm_forward_impl.

// Vectors of the CPU's widest registers (as the extension is compiled: see _flags() in
// compiled.py), written with GCC's vector extensions so that one source serves float and
// double, AVX-512, AVX2 and SSE. Tiles are kTileRows x 4 vectors: 24 of AVX-512's 32
// registers for the sums, 4 for the weights; AVX2 and SSE have 16.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kTileRows = 6;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
constexpr int kTileRows = 2;
#else
constexpr int kVecBytes = 16;
constexpr int kTileRows = 2;
#endif

template <typename T>
struct Vec {
  static constexpr int N = kVecBytes / sizeof(T);
  typedef T type __attribute__((vector_size(kVecBytes)));
  static inline type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static inline void store(T* p, type v) { std::memcpy(p, &v, sizeof(v)); }
};

// W_hh (4H, H), or W_xh (4H, D), as panels (P, K, 4, N), N = Vec<T>::N units per panel, zero
// past H.
at::Tensor lstm_panels(const at::Tensor& weight, int64_t N) {
  const int64_t H = weight.size(0) / 4, K = weight.size(1), P = (H + N - 1) / N;
  at::Tensor w = weight.view({4, H, K});  // (gate, unit, k)
  if (P * N != H) w = at::constant_pad_nd(w, {0, 0, 0, P * N - H});
  return w.view({4, P, N, K}).permute({1, 3, 0, 2}).contiguous();  // (P, k, gate, N)
}

// One step's tensors, as pointers: h_{t-1}, c_{t-1} (B, H); p_t (B, 4H), the pre-activations
// without W_hh h_{t-1}, overwritten by the activated gates; c_t, tanh(c_t), h_t (B, H).
template <typename T>
struct LSTMStep {
  const T* hp;
  const T* cp;
  T* p;
  const T* bias;  // (4H,) that p_t lacks, or null
  T* c;
  T* tc;
  T* h;
  const bool* valid;  // (B,) or null
  int64_t H;
  const T* x = nullptr;          // x_t (B, D) where the step projects its input (then p is null), else null
  const T* panels_ih = nullptr;  // W_xh's panels (P, D, 4, N)
  int64_t D = 0;
  bool keep_gates = true;  // write the activated gates over p_t (for a backward)
};

// The element-wise part of a step for n units of one row, from their pre-activations.
template <typename T, int N>
inline void lstm_units(const T (&pre)[4][N], T* __restrict__ a, const T* __restrict__ cp, T* __restrict__ c,
                       T* __restrict__ tc, T* __restrict__ h, int64_t H, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const T i = Act<T>::sigmoid(pre[0][j]);
    const T f = Act<T>::sigmoid(pre[1][j]);
    const T g = Act<T>::tanh(pre[2][j]);
    const T o = Act<T>::sigmoid(pre[3][j]);
    a[j] = i;
    a[H + j] = f;
    a[2 * H + j] = g;
    a[3 * H + j] = o;
    const T cj = f * cp[j] + i * g;
    const T tcj = Act<T>::tanh(cj);
    c[j] = cj;
    tc[j] = tcj;
    h[j] = o * tcj;
  }
}

// A forward's panel of more than kL1PanelBytes (H rows of 4 vectors: in float32 with AVX-512,
// H > 128) is read by its tiles from the second-level cache, and the tiles' sums run faster
// when they fetch each k's weights kPrefetchAhead k ahead (``stream``). Measured on 2
// cores of a Xeon with AVX-512 (docs/performance.md, item 19): the LSTM's recurrence 4-5%
// faster at H = 256 and 512, the Elman's 2-5%; at H = 64, where the panel stays in the
// first-level cache, fetching ahead made the LSTM's 2-5% slower, hence the threshold.
// (Summing the panel in blocks of rows that stay in the first-level cache, as the backward
// does, made the forward 4-9% slower.)
constexpr int64_t kL1PanelBytes = int64_t(32) << 10;
constexpr int64_t kPrefetchAhead = 8;

// acc[r][v] += sum_k in[r][k] w[k][v] for k < K: ``in`` MR rows of stride ``ld``, ``w`` a
// panel (K, 4, N) (the forward's: four gates of N units; the backward's: 4N units). ``next``:
// rows of p_t (4H apart, gates H apart) to fetch into the cache, or null. ``stream``: fetch
// the panel's rows ahead (see kL1PanelBytes).
template <typename T, int MR, bool stream = false>
inline void lstm_sum(typename Vec<T>::type (&acc)[MR][4], const T* __restrict__ in, int64_t ld, int64_t K,
                     const T* __restrict__ w, const T* next, int64_t H) {
  using V = Vec<T>;
  constexpr int N = V::N;
  for (int64_t k = 0; k < K; ++k, w += 4 * N) {
    if (next != nullptr && k < MR * 4) __builtin_prefetch(next + (k >> 2) * 4 * H + (k & 3) * H);
    if constexpr (stream) {
      for (int line = 0; line < int(4 * N * sizeof(T)) / 64; ++line)
        __builtin_prefetch(reinterpret_cast<const char*>(w + kPrefetchAhead * 4 * N) + 64 * line);
    }
    const auto w0 = V::load(w), w1 = V::load(w + N), w2 = V::load(w + 2 * N), w3 = V::load(w + 3 * N);
    for (int r = 0; r < MR; ++r) {
      const T a = in[r * ld + k];
      acc[r][0] += a * w0;
      acc[r][1] += a * w1;
      acc[r][2] += a * w2;
      acc[r][3] += a * w3;
    }
  }
}

// lstm_sum over a forward's panel (K, 4, N), fetching it ahead where it exceeds kL1PanelBytes.
template <typename T, int MR>
inline void panel_sum(typename Vec<T>::type (&acc)[MR][4], const T* in, int64_t ld, int64_t K, const T* w,
                      const T* next, int64_t H) {
  if (K * 4 * Vec<T>::N * int64_t(sizeof(T)) > kL1PanelBytes) {
    lstm_sum<T, MR, true>(acc, in, ld, K, w, next, H);
  } else {
    lstm_sum<T, MR>(acc, in, ld, K, w, next, H);
  }
}

// Rows m .. m + MR - 1 and units u0 .. u0 + n - 1 (n <= N; n < N only in the last panel) of one
// step. ``panel`` / ``panel_ih``: the units' panels of W_hh and, where the step projects its
// input (s.x), of W_xh. ``next``: the p_t row of the tile this thread does next, fetched into
// the cache while this one multiplies (p_t comes from a (T, B, 4H) tensor far larger than the
// caches).
template <typename T, int MR>
void lstm_tile(const LSTMStep<T>& s, const T* __restrict__ panel, const T* __restrict__ panel_ih, int64_t m,
               int64_t u0, int64_t n, const T* next) {
  using V = Vec<T>;
  constexpr int N = V::N;
  const int64_t H = s.H;
  const bool whole = n == N;
  typename V::type acc[MR][4], bias[4];
  for (int g = 0; g < 4; ++g) {
    alignas(64) T b[N] = {};
    if (s.bias != nullptr) std::memcpy(b, s.bias + g * H + u0, n * sizeof(T));
    bias[g] = V::load(b);
  }
  for (int r = 0; r < MR; ++r) {
    for (int g = 0; g < 4; ++g) {
      if (s.p == nullptr) {
        acc[r][g] = bias[g];
      } else if (whole) {
        acc[r][g] = V::load(s.p + (m + r) * 4 * H + g * H + u0) + bias[g];
      } else {  // the last panel: p_t zero past H
        alignas(64) T part[N] = {};
        std::memcpy(part, s.p + (m + r) * 4 * H + g * H + u0, n * sizeof(T));
        acc[r][g] = V::load(part) + bias[g];
      }
    }
  }
  if (s.x != nullptr) panel_sum<T, MR>(acc, s.x + m * s.D, s.D, s.D, panel_ih, nullptr, H);
  panel_sum<T, MR>(acc, s.hp + m * H, H, H, panel, next, H);
  for (int r = 0; r < MR; ++r) {
    const int64_t row = m + r;
    if (s.valid != nullptr && !s.valid[row]) {  // ended: c and h carry over
      std::memcpy(s.c + row * H + u0, s.cp + row * H + u0, n * sizeof(T));
      std::memcpy(s.h + row * H + u0, s.hp + row * H + u0, n * sizeof(T));
      continue;
    }
    alignas(64) T unused[4 * N];  // the gates, where no backward reads them
    const bool keep = s.p != nullptr && s.keep_gates;
    T* __restrict__ a = keep ? s.p + row * 4 * H + u0 : unused;
    const int64_t stride = keep ? H : N;
    const T* __restrict__ cp = s.cp + row * H + u0;
    T* __restrict__ c = s.c + row * H + u0;
    T* __restrict__ tc = s.tc + row * H + u0;
    T* __restrict__ h = s.h + row * H + u0;
    alignas(64) T pre[4][N];
    for (int g = 0; g < 4; ++g) V::store(pre[g], acc[r][g]);
    if (whole) {
      lstm_units<T, N>(pre, a, cp, c, tc, h, stride, N);
    } else {
      lstm_units<T, N>(pre, a, cp, c, tc, h, stride, n);
    }
  }
}

// tile(std::integral_constant<int, rows>{}) for ``rows`` (1 .. kTileRows) known at compile
// time: the tiles' register blocks are sized by it, and the batch's last tiles may be short.
template <int MR = kTileRows, typename F>
inline void with_tile_rows(int64_t rows, const F& tile) {
  if constexpr (MR > 1) {
    if (rows < MR) return with_tile_rows<MR - 1>(rows, tile);
  }
  tile(std::integral_constant<int, MR>{});
}

// The rows of the next tile when ``left`` rows are left: kTileRows, but the last two tiles
// share what is left past a multiple of kTileRows (32 rows: 6, 6, 6, 6, 4, 4 rather than
// ..., 6, 2), since a tile of few rows loads as many weights as a full one for fewer sums.
inline int64_t tile_rows(int64_t left) {
  return left > kTileRows && left < 2 * kTileRows ? (left + 1) / 2 : std::min<int64_t>(kTileRows, left);
}

// Rows b0 .. b1 - 1 and panels j0 .. j1 - 1 of one step.
template <typename T>
void lstm_block(const LSTMStep<T>& s, const T* panels, int64_t b0, int64_t b1, int64_t j0, int64_t j1) {
  constexpr int N = Vec<T>::N;
  const int64_t H = s.H;
  for (int64_t j = j0; j < j1; ++j) {
    const T* panel = panels + j * H * 4 * N;
    const T* panel_ih = s.x != nullptr ? s.panels_ih + j * s.D * 4 * N : nullptr;
    const int64_t u0 = j * N, n = std::min<int64_t>(N, H - u0);
    for (int64_t m = b0, rows; m < b1; m += rows) {
      rows = tile_rows(b1 - m);
      const T* next = s.p == nullptr ? nullptr
                      : m + rows < b1 ? s.p + (m + rows) * 4 * H + u0
                      : j + 1 < j1    ? s.p + b0 * 4 * H + u0 + N
                                      : nullptr;
      with_tile_rows(rows, [&](auto mr) { lstm_tile<T, mr.value>(s, panel, panel_ih, m, u0, n, next); });
    }
  }
}

// How the threads share a layer's steps. A sequence's batch rows are independent of each
// other, so when W_hh (G*H, H) fits in a core's cache next to its share of the rows (the LSTM's
// up to H = 256 in float32, the Elman's up to 512), each thread takes a share of the rows for all the steps it can (all T, or a chunk
// of projected input): one parallel region per layer or chunk, no meeting between steps, and
// each core reads only the states it wrote. Past that size each thread would read all of W_hh
// from memory at every step; then the threads split the units instead (each keeps its panels
// of W_hh in its cache) and meet at every step, since every unit of h_t reads all of h_{t-1}.
// Steps of few multiply-adds (generation at batch 1) run on one thread.
constexpr int64_t kRowSplitMaxWeightBytes = int64_t(1) << 20;
constexpr int64_t kMinParallelStepMacs = int64_t(1) << 18;

enum class StepSplit { kOneThread, kRows, kUnits };

template <typename T>
StepSplit step_split(int64_t B, int64_t G, int64_t H) {
  if (B * G * H * H < kMinParallelStepMacs || at::get_num_threads() == 1) return StepSplit::kOneThread;
  const bool fits = G * H * H * int64_t(sizeof(T)) <= kRowSplitMaxWeightBytes;
  return B >= 2 * kTileRows && fits ? StepSplit::kRows : StepSplit::kUnits;
}

// block(t, b0, b1, j0, j1) for ``count`` steps t = first, first + dir, ..., over the rows
// 0 .. B - 1 and panels 0 .. P - 1, shared between the threads as ``split`` says.
template <typename F>
void run_steps(StepSplit split, int64_t B, int64_t P, int64_t first, int64_t count, int64_t dir,
               const F& block) {
  if (split == StepSplit::kRows) {
    at::parallel_for(0, B, kTileRows, [&](int64_t b0, int64_t b1) {
      for (int64_t i = 0, t = first; i < count; ++i, t += dir) block(t, b0, b1, 0, P);
    });
    return;
  }
  for (int64_t i = 0, t = first; i < count; ++i, t += dir) {
    if (split == StepSplit::kUnits) {
      at::parallel_for(0, P, 1, [&](int64_t j0, int64_t j1) { block(t, 0, B, j0, j1); });
    } else {
      block(t, 0, B, 0, P);
    }
  }
}

// A product's weights M (K, units) as panels (P, K, width), zero past the last unit: for each
// of the K inputs, ``width`` consecutive units, the layout of a tile's sum (lstm_sum).
at::Tensor unit_panels(const at::Tensor& m, int64_t width) {
  const int64_t K = m.size(0), units = m.size(1), P = (units + width - 1) / width;
  at::Tensor w = m;
  if (P * width != units) w = at::constant_pad_nd(w, {0, P * width - units});
  return w.reshape({K, P, width}).permute({1, 0, 2}).contiguous();  // (P, K, width)
}

// ------------------------------------------------------------------ Elman, forward
// The Elman step as the LSTM's is: tiles of kTileRows batch rows by 4 vectors of units, the
// sum over h_{t-1} in registers on top of p_t, and the activation in the tile's epilogue. A
// per-step product (B, H) x (H, H) is small enough that a library call for it runs well below
// the arithmetic rate the tile reaches.
template <typename T, int MR>
void elman_tile(T* __restrict__ h, const T* __restrict__ hp, const T* __restrict__ panel, const bool* valid,
                bool relu, int64_t H, int64_t m, int64_t u0, int64_t n) {
  using V = Vec<T>;
  constexpr int W = 4 * V::N;
  typename V::type acc[MR][4];
  for (int r = 0; r < MR; ++r) {  // p_t, zero past H in the last panel
    alignas(64) T p[W] = {};
    std::memcpy(p, h + (m + r) * H + u0, n * sizeof(T));
    for (int v = 0; v < 4; ++v) acc[r][v] = V::load(p + v * V::N);
  }
  panel_sum<T, MR>(acc, hp + m * H, H, H, panel, nullptr, H);
  for (int r = 0; r < MR; ++r) {
    const int64_t row = m + r;
    if (valid != nullptr && !valid[row]) {  // ended: the state carries over
      std::memcpy(h + row * H + u0, hp + row * H + u0, n * sizeof(T));
      continue;
    }
    alignas(64) T out[W];
    for (int v = 0; v < 4; ++v) V::store(out + v * V::N, acc[r][v]);
    elman_row(out, relu, W);
    std::memcpy(h + row * H + u0, out, n * sizeof(T));
  }
}

// h_t = act(p_t + W_hh h_{t-1}), written over ``projected`` (T, B, H), which becomes the states.
void elman_forward_impl(at::Tensor projected, const at::Tensor& h0, const at::Tensor& w_hh, bool relu,
                        const at::Tensor& mask) {
  const int64_t T = projected.size(0), B = projected.size(1), H = projected.size(2);
  AT_DISPATCH_FLOATING_TYPES(projected.scalar_type(), "elman_forward", [&] {
    using T_ = scalar_t;
    constexpr int W = 4 * Vec<T_>::N;
    const at::Tensor panels_t = unit_panels(w_hh.t(), W);  // (P, H, 4N)
    const T_* panels = panels_t.data_ptr<T_>();
    const int64_t P = panels_t.size(0), BH = B * H;
    T_* states = projected.data_ptr<T_>();
    const T_* h0_ = h0.data_ptr<T_>();
    run_steps(step_split<T_>(B, 1, H), B, P, 0, T, 1, [&](int64_t t, int64_t b0, int64_t b1, int64_t j0, int64_t j1) {
      T_* h = states + t * BH;
      const T_* hp = t == 0 ? h0_ : h - BH;
      const bool* valid = mask_row(mask, t, B);
      for (int64_t j = j0; j < j1; ++j) {
        const T_* panel = panels + j * H * W;
        const int64_t u0 = j * W, n = std::min<int64_t>(W, H - u0);
        for (int64_t m = b0, rows; m < b1; m += rows) {
          rows = tile_rows(b1 - m);
          with_tile_rows(rows, [&](auto mr) { elman_tile<T_, mr.value>(h, hp, panel, valid, relu, H, m, u0, n); });
        }
      }
    });
  });
}

// The activated gates are written over ``inputs``' steps, a temporary the caller gives up.
// Returns (states, c_n, cells (T, B, H), tanh_cells (T, B, H)); the last two when ``save``.
// ``w_ih``: W_xh (4H, D) where ``inputs`` projects in the step, else undefined.
std::vector<at::Tensor> lstm_forward_impl(StepInputs& inputs, const at::Tensor& h0, const at::Tensor& c0,
                                          const at::Tensor& w_hh, const at::Tensor& mask, bool save,
                                          const at::Tensor& w_ih = at::Tensor()) {
  const int64_t T = inputs.steps(), B = h0.size(0), H = h0.size(1);
  at::Tensor states = at::empty({T, B, H}, h0.options());
  at::Tensor cells = at::empty({save ? T : 2, B, H}, h0.options());  // without a backward: two, in turn
  at::Tensor tanh_cells = at::empty({save ? T : 1, B, H}, h0.options());
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "lstm_forward", [&] {
    using T_ = scalar_t;
    const at::Tensor panels_t = lstm_panels(w_hh, Vec<T_>::N);
    const T_* panels = panels_t.data_ptr<T_>();
    const int64_t P = panels_t.size(0), BH = B * H;
    T_* st = states.data_ptr<T_>();
    T_* ce = cells.data_ptr<T_>();
    T_* tce = tanh_cells.data_ptr<T_>();
    const T_* bias = inputs.step_bias().defined() ? inputs.step_bias().data_ptr<T_>() : nullptr;
    const bool in_step = inputs.projects_in_step();
    const at::Tensor panels_ih_t = in_step ? lstm_panels(w_ih, Vec<T_>::N) : at::Tensor();
    const int64_t D = in_step ? inputs.x().size(2) : 0;
    auto step = [&](int64_t t) {
      const T_* cp = t == 0 ? c0.data_ptr<T_>() : ce + (save ? t - 1 : (t - 1) % 2) * BH;
      return LSTMStep<T_>{t == 0 ? h0.data_ptr<T_>() : st + (t - 1) * BH, cp, inputs.data<T_>(t), bias,
                          ce + (save ? t : t % 2) * BH, tce + (save ? t : 0) * BH, st + t * BH,
                          mask_row(mask, t, B), H,
                          in_step ? inputs.x().data_ptr<T_>() + t * B * D : nullptr,
                          in_step ? panels_ih_t.data_ptr<T_>() : nullptr, D, save};
    };
    const StepSplit split = step_split<T_>(B, 4, H);
    for (int64_t t0 = 0; t0 < T;) {
      inputs.at(t0);  // projects the chunk that starts at t0 where x is projected chunk by chunk
      const int64_t t1 = inputs.span_end(t0);
      run_steps(split, B, P, t0, t1 - t0, 1, [&](int64_t t, int64_t b0, int64_t b1, int64_t j0, int64_t j1) {
        lstm_block(step(t), panels, b0, b1, j0, j1);
      });
      t0 = t1;
    }
  });
  at::Tensor c_n = T == 0 ? c0.clone() : cells[save ? T - 1 : (T - 1) % 2].clone();
  if (!save) return {states, c_n, at::Tensor(), at::Tensor()};
  return {states, c_n, cells, tanh_cells};
}

// The backward fuses the same way. Its step product is dL/dh_{t-1} = dL/da_t W_hh, (B, 4H) x
// (4H, H); a tile is kTileRows rows by 4 vectors of units of dL/dh_{t-1}, summed in registers,
// and its epilogue is step t-1's element-wise work for those rows and units: dL/dh_{t-1} (plus
// the outputs' gradient), and from it dL/da_{t-1} and dL/dc_{t-2}. W_hh's rows are already
// units-contiguous, so its panels are unit_panels(W_hh): (P, 4H, 4N).

// Step t -> t-1 of the backward, as pointers. ``ga``: dL/da_t (B, 4H), read; ``ga_prev``:
// dL/da_{t-1}, written (null at t = 0: then only dL/dh_{-1}, which is dL/dh0, is made);
// ``gh``: dL/dh_t on entry (what an ended row passes on), dL/dh_{t-1} on exit; ``gc``:
// dL/dc_{t-1} on entry, dL/dc_{t-2} on exit; ``gs``: the outputs' gradient at t-1 or null;
// ``a``, ``tc``, ``cp``: step t-1's activated gates, tanh(c_{t-1}) and c_{t-2};
// ``valid`` / ``valid_prev``: the mask rows of t and t-1, or null.
template <typename T>
struct LSTMBackStep {
  const T* ga;
  T* ga_prev;
  T* gh;
  T* gc;
  const T* gs;
  const T* a;
  const T* tc;
  const T* cp;
  const bool* valid;
  const bool* valid_prev;
  int64_t H;
};

template <typename T, int MR>
void lstm_back_tile(const LSTMBackStep<T>& s, const T* __restrict__ panel, int64_t m, int64_t u0, int64_t n,
                    int64_t k0, int64_t k1, T* __restrict__ sums) {
  using V = Vec<T>;
  constexpr int N = V::N;
  const int64_t H = s.H, K = 4 * H;
  typename V::type acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = k0 == 0 ? typename V::type{} : V::load(sums + (r * 4 + v) * N);
  lstm_sum<T, MR>(acc, s.ga + m * K + k0, K, k1 - k0, panel + k0 * 4 * N, nullptr, H);  // dL/da_t rows x W_hh
  if (k1 < K) {  // more of the sum to come (lstm_back_block)
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < 4; ++v) V::store(sums + (r * 4 + v) * N, acc[r][v]);
    return;
  }
  for (int r = 0; r < MR; ++r) {
    const int64_t row = m + r;
    alignas(64) T dh[4 * N];
    for (int v = 0; v < 4; ++v) V::store(dh + v * N, acc[r][v]);
    T* __restrict__ gh = s.gh + row * H + u0;
    if (s.valid != nullptr && !s.valid[row]) std::memcpy(dh, gh, n * sizeof(T));  // ended at t: passed on
    if (s.gs != nullptr) add_row(dh, s.gs + row * H + u0, n);
    std::memcpy(gh, dh, n * sizeof(T));
    if (s.ga_prev == nullptr) continue;
    T* ga_prev = s.ga_prev + row * K + u0;
    if (s.valid_prev != nullptr && !s.valid_prev[row]) {  // ended at t-1: no gate gradients, dL/dc passes on
      for (int g = 0; g < 4; ++g) std::fill(ga_prev + g * H, ga_prev + g * H + n, T(0));
      continue;
    }
    lstm_back_row(s.a + row * K + u0, s.tc + row * H + u0, s.cp + row * H + u0, dh, s.gc + row * H + u0, ga_prev,
                  H, n);
  }
}

// The backward's product runs over K = 4H of W_hh's rows, and its panel (4H, 4N) is larger
// than a core's first-level cache from H = 64 (float32, AVX-512): the sums run over kBlock rows
// at a time, for every tile of batch rows in turn, so that each block of the panel (32 KiB) is
// read from that cache by all the tiles; the partial sums wait in a buffer of the thread's.
// (The forward's K is H, and blocking it was measured not to pay.)
constexpr int64_t kBlock = 128;

template <typename T>
void lstm_back_block(const LSTMBackStep<T>& s, const T* panels, int64_t b0, int64_t b1, int64_t j0, int64_t j1) {
  constexpr int W = 4 * Vec<T>::N;
  const int64_t H = s.H, K = 4 * H;
  thread_local std::vector<T> buffer;
  buffer.resize((b1 - b0) * W);
  for (int64_t j = j0; j < j1; ++j) {
    const T* panel = panels + j * K * W;
    const int64_t u0 = j * W, n = std::min<int64_t>(W, H - u0);
    for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
      const int64_t k1 = std::min(K, k0 + kBlock);
      for (int64_t m = b0, rows; m < b1; m += rows) {
        rows = tile_rows(b1 - m);
        T* sums = buffer.data() + (m - b0) * W;
        with_tile_rows(rows, [&](auto mr) { lstm_back_tile<T, mr.value>(s, panel, m, u0, n, k0, k1, sums); });
      }
    }
  }
}

// Returns (dL/d pre-activations (T, B, 4H), dL/dh0, dL/dc0). The threads share the steps as
// the forward's do (lstm_forward_impl).
std::vector<at::Tensor> lstm_backward_impl(const at::Tensor& gates, const at::Tensor& cells,
                                           const at::Tensor& tanh_cells, const at::Tensor& states,
                                           const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
                                           const at::Tensor& mask, const at::Tensor& grad_states,
                                           const at::Tensor& grad_h_n, const at::Tensor& grad_c_n) {
  const int64_t T = states.size(0), B = states.size(1), H = states.size(2);
  at::Tensor grad_gates = at::empty({T, B, 4 * H}, h0.options());
  at::Tensor grad_h = grad_h_n.defined() ? grad_h_n.clone() : at::zeros_like(h0);  // dL/dh_t, updated in place
  at::Tensor grad_c = grad_c_n.defined() ? grad_c_n.clone() : at::zeros_like(c0);  // dL/dc_t, updated in place
  AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "lstm_backward", [&] {
    using T_ = scalar_t;
    const int64_t BH = B * H, K = 4 * H;
    const at::Tensor panels_t = unit_panels(w_hh, 4 * Vec<T_>::N);
    const T_* panels = panels_t.data_ptr<T_>();
    const int64_t P = panels_t.size(0);
    const T_* gs = grad_states.defined() ? grad_states.data_ptr<T_>() : nullptr;
    T_* gg = grad_gates.data_ptr<T_>();
    T_* gh = grad_h.data_ptr<T_>();
    T_* gc = grad_c.data_ptr<T_>();
    // Step t -> t-1 (t-1 = -1: dL/dh0 only).
    auto step = [&](int64_t t) {
      const bool first = t == 0;
      return LSTMBackStep<T_>{gg + t * B * K,
                              first ? nullptr : gg + (t - 1) * B * K,
                              gh,
                              gc,
                              first || gs == nullptr ? nullptr : gs + (t - 1) * BH,
                              first ? nullptr : gates.data_ptr<T_>() + (t - 1) * B * K,
                              first ? nullptr : tanh_cells.data_ptr<T_>() + (t - 1) * BH,
                              first ? nullptr : t == 1 ? c0.data_ptr<T_>() : cells.data_ptr<T_>() + (t - 2) * BH,
                              mask_row(mask, t, B),
                              first ? nullptr : mask_row(mask, t - 1, B),
                              H};
    };
    // Step T-1's element-wise work, which no product precedes.
    const bool* last_valid = mask_row(mask, T - 1, B);
    const T_* a_last = gates.data_ptr<T_>() + (T - 1) * B * K;
    const T_* tc_last = tanh_cells.data_ptr<T_>() + (T - 1) * BH;
    const T_* cp_last = T == 1 ? c0.data_ptr<T_>() : cells.data_ptr<T_>() + (T - 2) * BH;
    for (int64_t b = 0; b < B; ++b) {
      if (gs != nullptr) add_row(gh + b * H, gs + (T - 1) * BH + b * H, H);
      T_* g = gg + (T - 1) * B * K + b * K;
      if (last_valid != nullptr && !last_valid[b]) {
        std::fill(g, g + K, T_(0));
      } else {
        lstm_back_row(a_last + b * K, tc_last + b * H, cp_last + b * H, gh + b * H, gc + b * H, g, H, H);
      }
    }
    run_steps(step_split<T_>(B, 4, H), B, P, T - 1, T, -1,
                   [&](int64_t t, int64_t b0, int64_t b1, int64_t j0, int64_t j1) {
                     lstm_back_block(step(t), panels, b0, b1, j0, j1);
                   });
  });
  return {grad_gates, grad_h, grad_c};
}

// ------------------------------------------------------------------ LSTM, mixed precision
// Under bfloat16 autocast (compiled.mixed_usable): projected (T, B, 4H) and w_hh (4H, H) in
// bfloat16, h0 and c0 float32. Per step one bfloat16 product W_hh h_{t-1} (from a bfloat16
// copy of h_{t-1} that the row pass writes) and one pass over the units in float32: the gates,
// c_t and h_t, as the GRU's mixed loop does. The float32 loop's fused tiles sum the product
// in float32 registers and have no bfloat16 form. Returns (states (T, B, H), c_T (B, H), the
// activated gates (T, B, 4H), c (T, B, H), tanh(c) (T, B, H)), the last three float32 and
// kept only when ``save``.
std::vector<at::Tensor> lstm_mixed_forward(const at::Tensor& projected, const at::Tensor& h0, const at::Tensor& c0,
                                           const at::Tensor& w_hh, const Opt& mask_opt, bool save) {
  const at::Tensor mask = value(mask_opt);
  const int64_t T = projected.size(0), B = h0.size(0), H = h0.size(1);
  const int64_t kept = save ? T : 2;  // without a backward, two steps' worth, alternating
  at::Tensor states = at::empty({T, B, H}, h0.options());
  at::Tensor gates = at::empty({save ? T : 1, B, 4 * H}, h0.options());
  at::Tensor cells = at::empty({kept, B, H}, h0.options());
  at::Tensor tanh_cells = at::empty({save ? T : 1, B, H}, h0.options());
  at::Tensor hh = at::empty({B, 4 * H}, w_hh.options());
  at::Tensor h_low = h0.to(at::kBFloat16);
  const StepProduct recurrent(w_hh, std::nullopt, B);
  const float* c0p = c0.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    recurrent.into(hh, h_low);
    const int64_t s = save ? t : 0, cs = save ? t : t % 2;
    const at::BFloat16* p = projected.data_ptr<at::BFloat16>() + t * B * 4 * H;
    const at::BFloat16* q = hh.data_ptr<at::BFloat16>();
    const float* hp = t == 0 ? h0.data_ptr<float>() : states.data_ptr<float>() + (t - 1) * B * H;
    const float* cp = t == 0 ? c0p : cells.data_ptr<float>() + (save ? t - 1 : (t - 1) % 2) * B * H;
    float* h = states.data_ptr<float>() + t * B * H;
    float* c = cells.data_ptr<float>() + cs * B * H;
    float* a = gates.data_ptr<float>() + s * B * 4 * H;
    float* tc = tanh_cells.data_ptr<float>() + s * B * H;
    at::BFloat16* hl = h_low.data_ptr<at::BFloat16>();
    const bool* valid = mask_row(mask, t, B);
    for_rows(B, 4 * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (valid != nullptr && !valid[b]) {  // ended: h and c carry over (h_low's row already holds h)
          std::memcpy(h + b * H, hp + b * H, H * sizeof(float));
          std::memcpy(c + b * H, cp + b * H, H * sizeof(float));
        } else {
          lstm_mixed_row(p + b * 4 * H, q + b * 4 * H, cp + b * H, a + b * 4 * H, c + b * H, tc + b * H, h + b * H,
                         hl + b * H, H);
        }
      }
    });
  }
  at::Tensor c_n = cells[save ? T - 1 : (T - 1) % 2].clone();
  if (!save) return {states, c_n, at::Tensor(), at::Tensor(), at::Tensor()};
  return {states, c_n, gates, cells, tanh_cells};
}

// Returns (dL/d pre-activations (T, B, 4H) in bfloat16, dL/dh0, dL/dc0).
std::vector<at::Tensor> lstm_mixed_backward(const at::Tensor& gates, const at::Tensor& cells,
                                            const at::Tensor& tanh_cells, const at::Tensor& states,
                                            const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
                                            const Opt& mask_opt, const Opt& grad_states_opt, const Opt& grad_h_n,
                                            const Opt& grad_c_n) {
  const at::Tensor mask = value(mask_opt), grad_states = value(grad_states_opt);
  const int64_t T = states.size(0), B = states.size(1), H = states.size(2), K = 4 * H;
  const StepProduct back(w_hh.t(), std::nullopt, B);  // g -> g W_hh
  at::Tensor grad_gates = at::empty({T, B, K}, w_hh.options());
  at::Tensor grad_h = grad_h_n.has_value() ? grad_h_n->clone() : at::zeros_like(h0);
  at::Tensor grad_c = grad_c_n.has_value() ? grad_c_n->clone() : at::zeros_like(c0);
  at::Tensor through = at::empty({B, H}, w_hh.options());
  for (int64_t t = T - 1; t >= 0; --t) {
    const float* gs = grad_states.defined() ? grad_states.data_ptr<float>() + t * B * H : nullptr;
    const float* a = gates.data_ptr<float>() + t * B * K;
    const float* tc = tanh_cells.data_ptr<float>() + t * B * H;
    const float* cp = t == 0 ? c0.data_ptr<float>() : cells.data_ptr<float>() + (t - 1) * B * H;
    float* gh = grad_h.data_ptr<float>();
    float* gc = grad_c.data_ptr<float>();
    at::BFloat16* g = grad_gates.data_ptr<at::BFloat16>() + t * B * K;
    const bool* valid = mask_row(mask, t, B);
    for_rows(B, K, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (gs != nullptr) add_row(gh + b * H, gs + b * H, H);
        if (valid != nullptr && !valid[b]) {  // ended: dL/dh_t and dL/dc_t pass to t-1 unchanged
          std::fill(g + b * K, g + (b + 1) * K, at::BFloat16(0.0f));
        } else {
          lstm_back_row(a + b * K, tc + b * H, cp + b * H, gh + b * H, gc + b * H, g + b * K, H, H);
        }
      }
    });
    back.into(through, grad_gates[t]);  // dL/dh_{t-1} through the product
    const at::BFloat16* th = through.data_ptr<at::BFloat16>();
    for (int64_t b = 0; b < B; ++b) {
      if (valid != nullptr && !valid[b]) continue;
      for (int64_t j = 0; j < H; ++j) gh[b * H + j] = static_cast<float>(th[b * H + j]);
    }
  }
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
void elman_forward(at::Tensor projected, const at::Tensor& h0, const at::Tensor& w_hh, bool relu, const Opt& mask) {
  elman_forward_impl(projected, h0, w_hh, relu, value(mask));
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
                                     const at::Tensor& w_hh, const Opt& mask, bool save) {
  StepInputs inputs(projected);
  return lstm_forward_impl(inputs, h0, c0, w_hh, value(mask), save);
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
                                       const at::Tensor& w_hh, const Opt& mask, bool in_step) {
  if (in_step) {
    StepInputs inputs(x, value(bias), StepInputs::InStep{});
    return lstm_forward_impl(inputs, h0, c0, w_hh, value(mask), false, w_ih);
  }
  StepInputs inputs(x, w_ih, value(packed_ih), value(bias), /*add_bias=*/false);  // the step adds it
  return lstm_forward_impl(inputs, h0, c0, w_hh, value(mask), false);
}
std::vector<at::Tensor> lstm_backward(const at::Tensor& gates, const at::Tensor& cells, const at::Tensor& tanh_cells,
                                      const at::Tensor& states, const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& w_hh, const Opt& mask, const Opt& grad_states,
                                      const Opt& grad_h_n, const Opt& grad_c_n) {
  return lstm_backward_impl(gates, cells, tanh_cells, states, h0, c0, w_hh, value(mask), value(grad_states),
                            value(grad_h_n), value(grad_c_n));
}

// The file of the OpenMP runtime this extension's parallel regions call, or "" without OpenMP.
std::string openmp_library() {
#if defined(_OPENMP)
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&omp_get_thread_num), &info) != 0 && info.dli_fname != nullptr) {
    return info.dli_fname;
  }
#endif
  return "";
}

// How many threads at::parallel_for runs here (one unless this file is compiled with OpenMP).
int64_t threads_used() {
  const int64_t n = at::get_num_threads();
  std::vector<int> seen(n, 0);
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) { seen[at::get_thread_num()] = 1; });
  return std::count(seen.begin(), seen.end(), 1);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("threads_used", &threads_used, "how many threads a parallel region of this extension runs");
  m.def("openmp_library", &openmp_library, "the file of the OpenMP runtime this extension calls");
  m.def("elman_forward", &elman_forward, "Elman recurrence, in place over projected");
  m.def("elman_backward", &elman_backward, "Elman recurrence's backward");
  m.def("gru_forward", &gru_forward, "GRU recurrence");
  m.def("gru_backward", &gru_backward, "GRU recurrence's backward");
  m.def("lstm_forward", &lstm_forward, "LSTM recurrence");
  m.def("lstm_backward", &lstm_backward, "LSTM recurrence's backward");
  m.def("lstm_mixed_forward", &lstm_mixed_forward, "LSTM recurrence, bfloat16 products around a float32 state");
  m.def("lstm_mixed_backward", &lstm_mixed_backward, "lstm_mixed_forward's backward");
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
