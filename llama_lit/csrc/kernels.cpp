// ---- section: headers ----
// llama_lit's CPU kernels: Q4_1 and Q8_0 blocks times int8 activations, and float weights, for x86-64 with AVX2,
// FMA and F16C. Shipped with the package and compiled on first use by llama_lit.kernels.load_kernels(); chapter 11
// of the book shows it section by section (the `section:` comments; llama_lit.kernels.cpp_section reads them).
#include <ATen/ATen.h>
#include <torch/library.h>   // no torch/extension.h / pybind11: only ATen's headers, a cold compile of seconds
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>
#include <type_traits>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int QK = 32;
#ifndef QPF
#define QPF 2   // software prefetch distance, in tiles of rows ahead (may run past the end: prefetch never faults)
#endif

// ---- section: helpers ----
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// ---- section: quantize_row_q8 ----
// Quantize one row of K floats into int8 blocks: q (K), dy (K/32), sy (K/32) (sy may be null).
// Adapted from ggml's quantize_row_q8_1 (AVX2 path, ggml-quants.c; MIT license, (c) 2023-2024 The ggml authors),
// step for step; d and s are kept in float32 here, where ggml's block_q8_1 rounds them to float16.
void quantize_row_q8(const float* x, int64_t K, int8_t* q, float* dy, float* sy) {
  const __m256 signbit = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < K / QK; ++b) {
    const float* xb = x + b * QK;
    __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
    __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
    __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(signbit, v0), _mm256_andnot_ps(signbit, v1)),
                              _mm256_max_ps(_mm256_andnot_ps(signbit, v2), _mm256_andnot_ps(signbit, v3)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const __m256 mul = _mm256_set1_ps(id);
    constexpr int nearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;   // to nearest, halves to even
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, mul), nearest));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, mul), nearest));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, mul), nearest));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, mul), nearest));
    dy[b] = d;
    if (sy) {
      __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      s4 = _mm_hadd_epi32(s4, s4);
      s4 = _mm_hadd_epi32(s4, s4);
      sy[b] = d * (float)_mm_cvtsi128_si32(s4);
    }
    // pack 32 x int32 -> 32 x int8 in order
    i0 = _mm256_packs_epi32(i0, i1);
    i2 = _mm256_packs_epi32(i2, i3);
    i0 = _mm256_packs_epi16(i0, i2);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    i0 = _mm256_permutevar8x32_epi32(i0, perm);
    _mm256_storeu_si256((__m256i*)(q + b * QK), i0);
  }
}

// ---- section: quantize_x ----
struct QX {  // quantized activations of M rows
  std::vector<int8_t> q;
  std::vector<float> d, s;
};

// pairs: store each pair of blocks (b, b+1) as [y_b[0:16] y_b+1[0:16] y_b[16:32] y_b+1[16:32]] (an odd last
// block stays in order), matching 32 bytes of Q4_1 qs = two blocks' low nibbles | high nibbles.
QX quantize_x(const float* x, int64_t M, int64_t K, bool with_s, bool pairs = false) {
  QX r;
  const int64_t nb = K / QK;
  r.q.resize(M * K);
  r.d.resize(M * nb + 8);
  if (with_s) r.s.resize(M * nb + 8);
  std::vector<int8_t> tmp(pairs ? K : 0);
  for (int64_t i = 0; i < M; ++i) {
    int8_t* dst = r.q.data() + i * K;
    quantize_row_q8(x + i * K, K, pairs ? tmp.data() : dst, r.d.data() + i * nb,
                    with_s ? r.s.data() + i * nb : nullptr);
    if (pairs) {
      int64_t b = 0;
      for (; b + 2 <= nb; b += 2) {
        const __m256i y0 = _mm256_loadu_si256((const __m256i*)(tmp.data() + b * QK));
        const __m256i y1 = _mm256_loadu_si256((const __m256i*)(tmp.data() + b * QK + QK));
        _mm256_storeu_si256((__m256i*)(dst + b * QK), _mm256_permute2x128_si256(y0, y1, 0x20));
        _mm256_storeu_si256((__m256i*)(dst + b * QK + QK), _mm256_permute2x128_si256(y0, y1, 0x31));
      }
      if (b < nb) std::memcpy(dst + b * QK, tmp.data() + b * QK, QK);
    }
  }
  return r;
}

// ---- section: q4_1_rows ----
// R rows of Q4_1 weights (starting at row n) against one quantized activation row; writes R outputs.
template <int R>
inline void q4_1_rows(const uint8_t* __restrict qs, const uint16_t* __restrict dw, const uint16_t* __restrict mw,
                      int64_t K, const int8_t* __restrict qy, const float* __restrict dy, const float* __restrict sy,
                      float* __restrict out) {
  // qy in pair layout (quantize_x(pairs=true)); two blocks per step: one 32-byte load of qs gives both blocks'
  // low nibbles (w0..15) and high nibbles (w16..31) in the 128-bit lanes of block b and b+1.
  const int64_t nb = K / QK, rs = K / 2;
  const __m256i lowmask = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i pidx0 = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), pidx1 = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
  const __m256i pidx2 = _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5), pidx3 = _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7);
  __m256 acc[R], macc[R];
  for (int r = 0; r < R; ++r) { acc[r] = _mm256_setzero_ps(); macc[r] = _mm256_setzero_ps(); }
#define Q41_PAIR(P, IDX)                                                                                   \
  {                                                                                                        \
    const int64_t b = b0 + 2 * (P);                                                                        \
    const __m256i ya = _mm256_loadu_si256((const __m256i*)(qy + b * QK));                                 \
    const __m256i yb = _mm256_loadu_si256((const __m256i*)(qy + b * QK + QK));                            \
    for (int r = 0; r < R; ++r) {                                                                          \
      if ((P) % 2 == 0) _mm_prefetch((const char*)(qs + (QPF * R + r) * rs + b * 16), _MM_HINT_T0);       \
      const __m256i q = _mm256_loadu_si256((const __m256i*)(qs + r * rs + b * 16));                       \
      const __m256i lo = _mm256_and_si256(q, lowmask);                                                     \
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), lowmask);                              \
      const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ya), _mm256_maddubs_epi16(hi, yb));    \
      const __m256 sc = _mm256_permutevar8x32_ps(scl[r], IDX);                                             \
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)), sc, acc[r]);              \
    }                                                                                                      \
  }
  int64_t b0 = 0;
  for (; b0 + 8 <= nb; b0 += 8) {
    const __m256 dy8 = _mm256_loadu_ps(dy + b0), sy8 = _mm256_loadu_ps(sy + b0);
    __m256 scl[R];
    for (int r = 0; r < R; ++r) {
      const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(dw + r * nb + b0)));
      const __m256 m8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(mw + r * nb + b0)));
      scl[r] = _mm256_mul_ps(d8, dy8);
      macc[r] = _mm256_fmadd_ps(m8, sy8, macc[r]);
    }
    Q41_PAIR(0, pidx0) Q41_PAIR(1, pidx1) Q41_PAIR(2, pidx2) Q41_PAIR(3, pidx3)
  }
  for (; b0 + 2 <= nb; b0 += 2) {   // remaining pairs
    __m256 scl[R];
    for (int r = 0; r < R; ++r) {
      const float s0 = h2f(dw[r * nb + b0]) * dy[b0], s1 = h2f(dw[r * nb + b0 + 1]) * dy[b0 + 1];
      scl[r] = _mm256_setr_ps(s0, s1, 0, 0, 0, 0, 0, 0);
      const float m01 = h2f(mw[r * nb + b0]) * sy[b0] + h2f(mw[r * nb + b0 + 1]) * sy[b0 + 1];
      macc[r] = _mm256_add_ps(macc[r], _mm256_setr_ps(m01, 0, 0, 0, 0, 0, 0, 0));
    }
    Q41_PAIR(0, pidx0)
  }
#undef Q41_PAIR
  float mtail[R];
  for (int r = 0; r < R; ++r) mtail[r] = 0.f;
  if (b0 < nb) {   // odd last block, y in plain order
    const __m256i y = _mm256_loadu_si256((const __m256i*)(qy + b0 * QK));
    for (int r = 0; r < R; ++r) {
      const __m128i q = _mm_loadu_si128((const __m128i*)(qs + r * rs + b0 * 16));
      const __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), lowmask);
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), ones);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(dw[r * nb + b0]) * dy[b0]), acc[r]);
      mtail[r] += h2f(mw[r * nb + b0]) * sy[b0];
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum8(_mm256_add_ps(acc[r], macc[r])) + mtail[r];
}

// ---- section: over_row_tiles ----
constexpr int RT = 4;  // rows per tile

// Calls rows(R, n, i, out) for x row i against output rows n..n+R: R = RT for whole tiles, 1 for the last tile's rows
// (R an std::integral_constant, a template argument inside); writes out[0..R) to Y; tiles are spread over the threads.
template <typename Rows>
void over_row_tiles(int64_t M, int64_t N, int64_t grain, float* Y, Rows rows) {
  at::parallel_for(0, (N + RT - 1) / RT, grain, [&](int64_t t0, int64_t t1) {
    float tmp[RT];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t * RT, left = std::min<int64_t>(RT, N - n);
      for (int64_t i = 0; i < M; ++i) {
        if (left == RT) {
          rows(std::integral_constant<int, RT>{}, n, i, tmp);
          for (int r = 0; r < RT; ++r) Y[i * N + n + r] = tmp[r];
        } else {
          for (int64_t r = 0; r < left; ++r) {
            rows(std::integral_constant<int, 1>{}, n + r, i, tmp);
            Y[i * N + n + r] = tmp[0];
          }
        }
      }
    }
  });
}

// ---- section: q4_1_linear ----
at::Tensor q4_1_linear(at::Tensor x, at::Tensor qs, at::Tensor d, at::Tensor m) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "q4_1_linear: x must be a contiguous CPU float32 (M, K) tensor");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % QK == 0 && K > 0, "q4_1_linear: K=", K, " is not a positive multiple of 32");
  TORCH_CHECK(qs.dim() == 2 && qs.scalar_type() == at::kByte && qs.is_contiguous() && qs.size(1) == K / 2,
              "q4_1_linear: qs must be contiguous uint8 (N, K/2)");
  const int64_t N = qs.size(0), nb = K / QK;
  TORCH_CHECK(d.scalar_type() == at::kHalf && m.scalar_type() == at::kHalf && d.is_contiguous() &&
                  m.is_contiguous() && d.dim() == 2 && m.dim() == 2 && d.size(0) == N && d.size(1) == nb &&
                  m.size(0) == N && m.size(1) == nb,
              "q4_1_linear: d and m must be contiguous float16 (N, K/32)");
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  QX qx = quantize_x(x.data_ptr<float>(), M, K, true, true);
  const uint8_t* Q = qs.data_ptr<uint8_t>();
  const uint16_t* D = (const uint16_t*)d.data_ptr<at::Half>();
  const uint16_t* Mn = (const uint16_t*)m.data_ptr<at::Half>();
  float* Y = y.data_ptr<float>();
  over_row_tiles(M, N, std::max<int64_t>(1, 16384 / (RT * K)), Y, [&](auto R, int64_t n, int64_t i, float* out) {
    q4_1_rows<decltype(R)::value>(Q + n * (K / 2), D + n * nb, Mn + n * nb, K, qx.q.data() + i * K,
                                  qx.d.data() + i * nb, qx.s.data() + i * nb, out);
  });
  return y;
}

// ---- section: q8_0_rows ----
// R rows of Q8_0 weights against one quantized activation row, as q4_1_rows.
template <int R>
inline void q8_0_rows(const int8_t* __restrict qs, const uint16_t* __restrict dw, int64_t K,
                      const int8_t* __restrict qy, const float* __restrict dy, float* __restrict out) {
  const int64_t nb = K / QK;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t b0 = 0;
  for (; b0 + 8 <= nb; b0 += 8) {
    const __m256 dy8 = _mm256_loadu_ps(dy + b0);
    __m256 scl[R];
    for (int r = 0; r < R; ++r)
      scl[r] = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(dw + r * nb + b0))), dy8);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const int64_t b = b0 + i;
      const __m256i y = _mm256_loadu_si256((const __m256i*)(qy + b * QK));
      const __m256i idx = _mm256_set1_epi32(i);
      for (int r = 0; r < R; ++r) {
        if (i % 2 == 0) _mm_prefetch((const char*)(qs + (QPF * R + r) * K + b * QK), _MM_HINT_T0);
        const __m256i w = _mm256_loadu_si256((const __m256i*)(qs + r * K + b * QK));
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w)), ones);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_permutevar8x32_ps(scl[r], idx), acc[r]);
      }
    }
  }
  for (; b0 < nb; ++b0) {
    const __m256i y = _mm256_loadu_si256((const __m256i*)(qy + b0 * QK));
    for (int r = 0; r < R; ++r) {
      const __m256i w = _mm256_loadu_si256((const __m256i*)(qs + r * K + b0 * QK));
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w)), ones);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(dw[r * nb + b0]) * dy[b0]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum8(acc[r]);
}

// ---- section: q8_0_linear ----
at::Tensor q8_0_linear(at::Tensor x, at::Tensor qs, at::Tensor d) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "q8_0_linear: x must be a contiguous CPU float32 (M, K) tensor");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % QK == 0 && K > 0, "q8_0_linear: K=", K, " is not a positive multiple of 32");
  TORCH_CHECK(qs.dim() == 2 && qs.scalar_type() == at::kChar && qs.is_contiguous() && qs.size(1) == K,
              "q8_0_linear: qs must be contiguous int8 (N, K)");
  const int64_t N = qs.size(0), nb = K / QK;
  TORCH_CHECK(d.scalar_type() == at::kHalf && d.is_contiguous() && d.dim() == 2 && d.size(0) == N && d.size(1) == nb,
              "q8_0_linear: d must be contiguous float16 (N, K/32)");
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  QX qx = quantize_x(x.data_ptr<float>(), M, K, false);
  const int8_t* Q = qs.data_ptr<int8_t>();
  const uint16_t* D = (const uint16_t*)d.data_ptr<at::Half>();
  float* Y = y.data_ptr<float>();
  over_row_tiles(M, N, std::max<int64_t>(1, 8192 / (RT * K)), Y, [&](auto R, int64_t n, int64_t i, float* out) {
    q8_0_rows<decltype(R)::value>(Q + n * K, D + n * nb, K, qx.q.data() + i * K, qx.d.data() + i * nb, out);
  });
  return y;
}

// ---- section: float_rows ----
// Float weights (f32 / bf16 / f16) times float32 x, accumulated in float32: load8 widens 8 weights to float32.
template <typename W> inline __m256 load8(const W* p);
template <> inline __m256 load8<float>(const float* p) { return _mm256_loadu_ps(p); }
template <> inline __m256 load8<at::BFloat16>(const at::BFloat16* p) {   // bf16 -> f32: the 16 bits moved to the top
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
template <> inline __m256 load8<at::Half>(const at::Half* p) {            // f16 -> f32: F16C's vcvtph2ps
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
}

template <typename W, int R>
inline void wf_rows(const W* __restrict w, int64_t K, const float* __restrict x, float* __restrict out) {
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
    for (int r = 0; r < R; ++r) {
      acc[r][0] = _mm256_fmadd_ps(load8(w + r * K + k), x0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(load8(w + r * K + k + 8), x1, acc[r][1]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    const __m256 x0 = _mm256_loadu_ps(x + k);
    for (int r = 0; r < R; ++r) acc[r][0] = _mm256_fmadd_ps(load8(w + r * K + k), x0, acc[r][0]);
  }
  for (int r = 0; r < R; ++r) out[r] = hsum8(_mm256_add_ps(acc[r][0], acc[r][1]));
}

template <typename W>
void wf_linear_impl(const float* X, const W* Wt, float* Y, int64_t M, int64_t N, int64_t K) {
  over_row_tiles(M, N, std::max<int64_t>(1, 8192 / (RT * K)), Y, [&](auto R, int64_t n, int64_t i, float* out) {
    wf_rows<W, decltype(R)::value>(Wt + n * K, K, X + i * K, out);
  });
}

// ---- section: float_linear ----
at::Tensor float_linear(at::Tensor x, at::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "float_linear: x must be a contiguous CPU float32 (M, K) tensor");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % 8 == 0 && K > 0, "float_linear: K=", K, " is not a positive multiple of 8");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(1) == K, "float_linear: w must be contiguous (N, K)");
  const int64_t N = w.size(0);
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  switch (w.scalar_type()) {
    case at::kFloat: wf_linear_impl(X, w.data_ptr<float>(), Y, M, N, K); break;
    case at::kBFloat16: wf_linear_impl(X, w.data_ptr<at::BFloat16>(), Y, M, N, K); break;
    case at::kHalf: wf_linear_impl(X, w.data_ptr<at::Half>(), Y, M, N, K); break;
    default: TORCH_CHECK(false, "float_linear: w must be float32, bfloat16 or float16, got ", w.scalar_type());
  }
  return y;
}

// ---- section: quantize_act ----
// Activation quantization exposed for the tests' reference: returns (q int8 (M,K), d (M,K/32), s (M,K/32)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_act(at::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.size(1) % QK == 0,
              "quantize_act: x must be contiguous float32 (M, K), K % 32 == 0");
  const int64_t M = x.size(0), K = x.size(1);
  QX qx = quantize_x(x.data_ptr<float>(), M, K, true);
  auto q = at::empty({M, K}, x.options().dtype(at::kChar));
  auto d = at::empty({M, K / QK}, x.options());
  auto s = at::empty({M, K / QK}, x.options());
  std::memcpy(q.data_ptr(), qx.q.data(), M * K);
  std::memcpy(d.data_ptr(), qx.d.data(), M * (K / QK) * 4);
  std::memcpy(s.data_ptr(), qx.s.data(), M * (K / QK) * 4);
  return std::make_tuple(q, d, s);
}

// ---- section: registration ----
}  // namespace

TORCH_LIBRARY(llama_lit, lib) {
  lib.def("q4_1_linear(Tensor x, Tensor qs, Tensor d, Tensor m) -> Tensor");
  lib.def("q8_0_linear(Tensor x, Tensor qs, Tensor d) -> Tensor");
  lib.def("float_linear(Tensor x, Tensor w) -> Tensor");
  lib.def("quantize_act(Tensor x) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(llama_lit, CPU, lib) {
  lib.impl("q4_1_linear", &q4_1_linear);
  lib.impl("q8_0_linear", &q8_0_linear);
  lib.impl("float_linear", &float_linear);
  lib.impl("quantize_act", &quantize_act);
}
