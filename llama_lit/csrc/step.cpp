// ---- section: step_headers ----
// One decode step in C++ (chapter 11c): llama2.c's `forward` over this library's kernels. Python hands over, once
// per step, the embedded tokens and lists of every tensor the step reads; the loop over the layers, RMSNorm, RoPE,
// the cache write, attention, SwiGLU and the residual adds run here, and each matrix is the registered kernel of its
// kind, called through the dispatcher (so a Q4_1, Q5_0, Q8_0, K-quant or float matrix is the same call).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

// ---- section: rms_norm_rows ----
// RMSNorm of each of M rows of D floats (chapter 01): y = x / sqrt(mean(x^2) + eps) * w. The sum of squares in
// double: one rounding for the mean, so the result does not hang on the order of the sum (vector width, threads).
void rms_norm_rows(const float* x, const float* w, float* y, int64_t M, int64_t D, float eps) {
  for (int64_t i = 0; i < M; ++i) {
    const float* xi = x + i * D;
    double ss = 0;
    for (int64_t j = 0; j < D; ++j) ss += (double)xi[j] * xi[j];
    const float r = 1.0f / std::sqrt((float)(ss / D) + eps);
    float* yi = y + i * D;
    for (int64_t j = 0; j < D; ++j) yi[j] = xi[j] * r * w[j];
  }
}

at::Tensor rms_norm(at::Tensor x, at::Tensor w, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() >= 1 && x.device().is_cpu(),
              "rms_norm: x must be a contiguous CPU float32 tensor (..., dim)");
  const int64_t D = x.size(-1);
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.dim() == 1 && w.size(0) == D,
              "rms_norm: w must be a contiguous float32 (dim,) tensor, dim = x's last size");
  auto y = at::empty_like(x);
  const int64_t M = D ? x.numel() / D : 0;
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)), [&](int64_t i0, int64_t i1) {
    rms_norm_rows(x.data_ptr<float>() + i0 * D, w.data_ptr<float>(), y.data_ptr<float>() + i0 * D, i1 - i0, D,
                  (float)eps);
  });
  return y;
}

// ---- section: silu_mul ----
// SwiGLU's elementwise half: gu holds [gate | up] per row (M, 2F), the output silu(gate) * up (M, F), through ATen's
// own vectorized silu and multiply: the bits of torch's F.silu(gate) * up, whichever path (eager, this step) runs.
at::Tensor silu_mul(at::Tensor gu) {
  TORCH_CHECK(gu.scalar_type() == at::kFloat && gu.is_contiguous() && gu.dim() >= 1 && gu.size(-1) % 2 == 0 &&
                  gu.device().is_cpu(),
              "silu_mul: gu must be a contiguous CPU float32 (..., 2F) tensor, [gate | up]");
  const int64_t F = gu.size(-1) / 2;
  auto y = at::silu(gu.narrow(-1, 0, F));
  return y.mul_(gu.narrow(-1, F, F));
}

// ---- section: rope_pairs ----
// Meta's RoPE convention (interleaved pairs (x0, x1) = (x[2i], x[2i+1])) on n heads of hd values, in place:
// (x0 cos - x1 sin, x0 sin + x1 cos). Each product rounded on its own (no fused multiply-add), as torch's
// `apply_rotary_real` computes it: the same bits, so chapter 07's prompt path and this step agree on every key.
__attribute__((optimize("fp-contract=off"))) void rope_pairs(float* x, int64_t n, int64_t hd, const float* cos,
                                                             const float* sin) {
  for (int64_t h = 0; h < n; ++h) {
    float* xh = x + h * hd;
    for (int64_t i = 0; i < hd / 2; ++i) {
      const float x0 = xh[2 * i], x1 = xh[2 * i + 1];
      const float a = x0 * cos[i], b = x1 * sin[i], c = x0 * sin[i], d = x1 * cos[i];
      xh[2 * i] = a - b;
      xh[2 * i + 1] = c + d;
    }
  }
}

// The same as an operator, for the tests: x (n, heads, head_dim) rotated at one position's cos, sin (head_dim/2,).
at::Tensor rope(at::Tensor x, at::Tensor cos, at::Tensor sin) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat && x.size(2) % 2 == 0 && x.device().is_cpu(),
              "rope: x must be CPU float32 (n, heads, head_dim), head_dim even");
  for (const at::Tensor* t : {&cos, &sin})
    TORCH_CHECK(t->dim() == 1 && t->scalar_type() == at::kFloat && t->size(0) * 2 == x.size(2) && t->is_contiguous(),
                "rope: cos and sin must be contiguous float32 (head_dim/2,)");
  auto y = x.contiguous().clone();
  rope_pairs(y.data_ptr<float>(), y.size(0) * y.size(1), y.size(2), cos.data_ptr<float>(), sin.data_ptr<float>());
  return y;
}

// ---- section: attend_row ----
// A dot product the compiler vectorizes: 16 partial sums (a reduction in one sum would keep it scalar).
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {0};
  int64_t t = 0;
  for (; t + 16 <= n; t += 16)
    for (int u = 0; u < 16; ++u) acc[u] += a[t + u] * b[t + u];
  float s = 0;
  for (int u = 0; u < 16; ++u) s += acc[u];
  for (; t < n; ++t) s += a[t] * b[t];
  return s;
}

// One query q (hd) against L keys and values (rows ks and vs floats apart): softmax(q.K^T / sqrt(hd)) V into out.
void attend_row(const float* q, const float* K, const float* V, int64_t L, int64_t hd, int64_t ks, int64_t vs,
                float* out, float* scores) {
  const float scale = 1.0f / std::sqrt((float)hd);
  float mx = -INFINITY;
  for (int64_t j = 0; j < L; ++j) {
    const float* k = K + j * ks;
    scores[j] = dot(q, k, hd) * scale;
    mx = std::max(mx, scores[j]);
  }
  float sum = 0;
  for (int64_t j = 0; j < L; ++j) sum += (scores[j] = std::exp(scores[j] - mx));
  for (int64_t t = 0; t < hd; ++t) out[t] = 0;
  for (int64_t j = 0; j < L; ++j) {
    const float p = scores[j] / sum, *v = V + j * vs;
    for (int64_t t = 0; t < hd; ++t) out[t] += p * v[t];
  }
}

// ---- section: decode_attention ----
// Single-token queries q (n, n_heads, hd) against keys and values (n, n_kv_heads, >= L, hd) (any strides but the
// last: each key's hd values contiguous): row r attends over its first lengths[r] keys; query head h reads kv head
// h / (n_heads / n_kv_heads) (repeat_kv's order). Out (n, n_heads, hd); (row, head) pairs spread over the threads.
at::Tensor decode_attention(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor lengths) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous(),
              "decode_attention: q must be contiguous float32 (n, n_heads, head_dim)");
  const int64_t n = q.size(0), nh = q.size(1), hd = q.size(2);
  for (const at::Tensor* t : {&k, &v})
    TORCH_CHECK(t->dim() == 4 && t->scalar_type() == at::kFloat && t->size(0) == n && t->size(3) == hd &&
                    t->stride(3) == 1 && t->size(1) == k.size(1) && t->size(2) == k.size(2) && nh % t->size(1) == 0,
                "decode_attention: k and v must be float32 (n, n_kv_heads, L, head_dim), each key's head_dim values "
                "contiguous, n_kv_heads dividing n_heads");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == n && lengths.scalar_type() == at::kLong,
              "decode_attention: lengths must be int64 (n,)");
  const int64_t nkv = k.size(1), rep = nh / nkv, Lmax = k.size(2);
  const int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t r = 0; r < n; ++r)
    TORCH_CHECK(len[r] >= 1 && len[r] <= Lmax, "decode_attention: lengths[", r, "]=", len[r], " not in 1..", Lmax);
  auto out = at::empty_like(q);
  const float *Q = q.data_ptr<float>(), *Kp = k.data_ptr<float>(), *Vp = v.data_ptr<float>();
  float* O = out.data_ptr<float>();
  at::parallel_for(0, n * nh, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> scores(Lmax);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r = p / nh, h = p % nh, g = h / rep;
      attend_row(Q + p * hd, Kp + r * k.stride(0) + g * k.stride(1), Vp + r * v.stride(0) + g * v.stride(1),
                 len[r], hd, k.stride(2), v.stride(2), O + p * hd, scores.data());
    }
  });
  return out;
}

// ---- section: call_linear ----
// y = x W^T through the registered kernel `op` (llama_lit::q4_1_linear, ::q4_k_linear, ::float_linear, ...) with
// its weight tensors: a boxed call, so every kind of matrix is one code path.
struct Linear {
  c10::OperatorHandle op;
  std::vector<at::Tensor> w;
};

at::Tensor call_linear(const Linear& lin, const at::Tensor& x) {
  torch::jit::Stack stack;
  stack.reserve(1 + lin.w.size());
  stack.emplace_back(x);
  for (const auto& t : lin.w) stack.emplace_back(t);
  lin.op.callBoxed(&stack);
  return stack[0].toTensor();
}

// A slot: one or more matrices whose outputs are joined along the features (wq|wk|wv when they are not one fused
// matrix because their kinds differ).
at::Tensor call_slot(const std::vector<Linear>& slot, const at::Tensor& x) {
  if (slot.size() == 1) return call_linear(slot[0], x);
  std::vector<at::Tensor> ys;
  for (const auto& lin : slot) ys.push_back(call_linear(lin, x));
  return at::cat(ys, 1);
}

// The dispatcher's handle of `llama_lit::<name>`, looked up once per name (a step names ~200 matrices).
c10::OperatorHandle kernel_op(const std::string& name) {
  static std::mutex mu;
  static std::unordered_map<std::string, c10::OperatorHandle> ops;
  std::lock_guard<std::mutex> lock(mu);
  auto it = ops.find(name);
  if (it == ops.end()) {
    auto op = c10::Dispatcher::singleton().findSchema({"llama_lit::" + name, ""});
    TORCH_CHECK(op.has_value(), "decode_step: no kernel llama_lit::", name, " (load the kernels first)");
    it = ops.emplace(name, *op).first;
  }
  return it->second;
}

// ---- section: unpack_slots ----
// The step's matrices from the flat lists Python passes: ops[i] the kernel of matrix i, n_args[i] how many of
// `weights` are its tensors, slots[s] how many matrices slot s joins (4 slots per layer: qkv, wo, w13, w2; then the
// output matrix).
std::vector<std::vector<Linear>> unpack_slots(at::TensorList weights, const c10::List<std::string>& ops,
                                              at::IntArrayRef n_args, at::IntArrayRef slots) {
  TORCH_CHECK(ops.size() == n_args.size(), "decode_step: ops and n_args differ in length");
  std::vector<Linear> lins;
  size_t at_w = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    auto op = kernel_op(ops.get(i));
    TORCH_CHECK(at_w + n_args[i] <= weights.size(), "decode_step: n_args asks for more weights than given");
    lins.push_back({op, std::vector<at::Tensor>(weights.begin() + at_w, weights.begin() + at_w + n_args[i])});
    at_w += n_args[i];
  }
  TORCH_CHECK(at_w == weights.size(), "decode_step: ", weights.size() - at_w, " weights left over");
  std::vector<std::vector<Linear>> out;
  size_t at_l = 0;
  for (int64_t s : slots) {
    TORCH_CHECK(s >= 1 && at_l + s <= lins.size(), "decode_step: slots do not add up to the matrices");
    out.emplace_back(lins.begin() + at_l, lins.begin() + at_l + s);
    at_l += s;
  }
  TORCH_CHECK(at_l == lins.size(), "decode_step: slots do not add up to the matrices");
  return out;
}

// ---- section: decode_step ----
// One decode step for bsz sequences at position pos: h (bsz, dim) the embedded tokens; norms (2 per layer, then the
// final one), caches (k, v per layer: (max_bsz, n_kv_heads, max_seq_len, hd), head-major), cos/sin
// (max_seq_len, hd/2). Writes each layer's new key and value at pos; returns the logits (bsz, vocab).
at::Tensor decode_step(at::Tensor h, int64_t pos, at::TensorList weights, const c10::List<std::string>& ops,
                       at::IntArrayRef n_args, at::IntArrayRef slots, at::TensorList norms, at::TensorList caches,
                       at::Tensor cos, at::Tensor sin, int64_t n_heads, int64_t n_kv_heads, double eps) {
  const int64_t L = (int64_t)norms.size() / 2;
  TORCH_CHECK(h.dim() == 2 && h.scalar_type() == at::kFloat && h.device().is_cpu(),
              "decode_step: h must be CPU float32 (bsz, dim)");
  TORCH_CHECK((int64_t)norms.size() == 2 * L + 1 && (int64_t)caches.size() == 2 * L &&
                  (int64_t)slots.size() == 4 * L + 1,
              "decode_step: need 2 norms and 2 caches and 4 slots per layer, then the final norm and output");
  const int64_t bsz = h.size(0), hd = cos.size(1) * 2, nq = n_heads * hd, nk = n_kv_heads * hd;
  for (const auto& c : caches)
    TORCH_CHECK(c.dim() == 4 && c.scalar_type() == at::kFloat && c.is_contiguous() && c.size(0) >= bsz &&
                    c.size(1) == n_kv_heads && c.size(3) == hd && pos < c.size(2),
                "decode_step: caches must be contiguous float32 (>= bsz, n_kv_heads, > pos, head_dim)");
  TORCH_CHECK(cos.dim() == 2 && cos.scalar_type() == at::kFloat && cos.is_contiguous() && sin.sizes() == cos.sizes() &&
                  sin.scalar_type() == at::kFloat && sin.is_contiguous(),
              "decode_step: cos and sin must be contiguous float32 (max_seq_len, head_dim/2)");
  TORCH_CHECK(pos >= 0 && pos < cos.size(0), "decode_step: pos ", pos, " outside the RoPE tables");
  const auto lin = unpack_slots(weights, ops, n_args, slots);
  h = h.contiguous().clone();                                   // (bsz, dim): the residual stream, added to in place
  auto lengths = at::full({bsz}, pos + 1, h.options().dtype(at::kLong));
  const float *c = cos.data_ptr<float>() + pos * (hd / 2), *s = sin.data_ptr<float>() + pos * (hd / 2);
  for (int64_t l = 0; l < L; ++l) {
    auto qkv = call_slot(lin[4 * l], rms_norm(h, norms[2 * l], eps)).contiguous();   // (bsz, nq + 2 nk)
    TORCH_CHECK(qkv.size(1) == nq + 2 * nk, "decode_step: layer ", l, "'s qkv has ", qkv.size(1), " features");
    auto kc = caches[2 * l], vc = caches[2 * l + 1];
    float* Pq = qkv.data_ptr<float>();
    for (int64_t b = 0; b < bsz; ++b) {
      float* row = Pq + b * (nq + 2 * nk);
      rope_pairs(row, n_heads + n_kv_heads, hd, c, s);           // queries and keys, one table row
      for (int64_t g = 0; g < n_kv_heads; ++g) {                 // the new key and value into the caches at pos
        const int64_t at = ((b * n_kv_heads + g) * kc.size(2) + pos) * hd;
        std::memcpy(kc.data_ptr<float>() + at, row + nq + g * hd, hd * sizeof(float));
        std::memcpy(vc.data_ptr<float>() + at, row + nq + nk + g * hd, hd * sizeof(float));
      }
    }
    auto q = qkv.narrow(1, 0, nq).contiguous().view({bsz, n_heads, hd});
    auto att = decode_attention(q, kc.narrow(0, 0, bsz), vc.narrow(0, 0, bsz), lengths);   // (bsz, n_heads, hd)
    h.add_(call_slot(lin[4 * l + 1], att.view({bsz, nq})));
    auto gu = call_slot(lin[4 * l + 2], rms_norm(h, norms[2 * l + 1], eps)).contiguous();  // (bsz, 2 ffn)
    h.add_(call_slot(lin[4 * l + 3], silu_mul(gu)));
  }
  return call_slot(lin[4 * L], rms_norm(h, norms[2 * L], eps));
}

// ---- section: step_registration ----
}  // namespace

TORCH_LIBRARY_FRAGMENT(llama_lit, lib) {
  lib.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
  lib.def("silu_mul(Tensor gu) -> Tensor");
  lib.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  lib.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor lengths) -> Tensor");
  lib.def("decode_step(Tensor h, int pos, Tensor[] weights, str[] ops, int[] n_args, int[] slots, Tensor[] norms, "
          "Tensor(a!)[] caches, Tensor cos, Tensor sin, int n_heads, int n_kv_heads, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(llama_lit, CPU, lib) {
  lib.impl("rms_norm", &rms_norm);
  lib.impl("silu_mul", &silu_mul);
  lib.impl("rope", &rope);
  lib.impl("decode_attention", &decode_attention);
  lib.impl("decode_step", &decode_step);
}
