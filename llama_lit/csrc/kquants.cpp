// ---- section: kq_headers ----
// GGUF's K-quants (Q4_K, Q5_K, Q6_K: super-blocks of 256 weights) multiplied as the file stores them, by activations
// rounded to int8 per 256 (Q8_K). An AVX2 version of each kernel and an AVX-512 one (VNNI), chosen at run time by
// llama_lit::current_isa(). Chapter 11b of the book (nbs/11b_kquants.ipynb) shows it section by section.
// The activation rounding is ggml's quantize_row_q8_K_ref, and the AVX2 dot products follow ggml's
// ggml_vec_dot_q4_K_q8_K / q5_K / q6_K (ggml/src/ggml-quants.c, ggml/src/ggml-cpu/arch/x86/quants.c; MIT license,
// Copyright (c) 2023-2024 The ggml authors), rewritten to do several weight rows per activation load; the AVX-512
// versions are written for this project.
#include "isa.h"
#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

constexpr int QKK = 256;                                   // weights per super-block (ggml's QK_K)
constexpr int Q4K_BYTES = 144, Q5K_BYTES = 176, Q6K_BYTES = 210;
constexpr int KQ_RT = 4;                                   // weight rows per tile
constexpr int KQ_PF = 2;                                   // prefetch distance in tiles

// ---- section: kq_helpers ----
inline float kq_f16(const uint8_t* p) {                   // a float16 at any byte address (Q6_K's d is at byte 208)
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

inline float kq_hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float kq_hsum4(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline void kq_prefetch(const uint8_t* p, int bytes) {     // never faults, even past the end of the matrix
  for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char*)(p + o), _MM_HINT_T0);
}

// Q4_K/Q5_K's 12 bytes of 6-bit scales and mins -> 8 scales then 8 mins, one byte each (ggml's utmp shuffle).
inline __m128i kq_scales_mins(const uint8_t* s12) {
  constexpr uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
  uint32_t u[4];
  std::memcpy(u, s12, 12);
  u[3] = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);
  const uint32_t uaux = u[1] & kmask1;
  u[1] = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);
  u[2] = uaux;
  u[0] &= kmask1;
  return _mm_set_epi32(u[3], u[2], u[1], u[0]);
}

// ---- section: quantize_row_q8_k ----
// One row of K floats -> K/256 Q8_K blocks: q (K), d (K/256), bsums (K/16), as ggml's quantize_row_q8_K_ref: the
// value of largest magnitude (the first such) `max`, iscale = -127/max, q = min(127, round_half_even(iscale·x)),
// d = 1/iscale, bsums = the sums of q over each 16. Vectorized; the same bits as the scalar reference. Unlike ggml,
// a super-block with a NaN or an infinity gets d = NaN (and q = 0), so the outputs it touches are NaN.
void quantize_row_q8_k(const float* x, int64_t K, int8_t* q, float* d, int16_t* bsums) {
  const __m256 signbit = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), m127 = _mm256_set1_epi32(127);
  constexpr int nearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;   // to nearest, halves to even
  for (int64_t b = 0; b < K / QKK; ++b) {
    const float* xb = x + b * QKK;
    int8_t* qb = q + b * QKK;
    __m256 mx = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (int j = 0; j < QKK; j += 8) {
      const __m256 a = _mm256_andnot_ps(signbit, _mm256_loadu_ps(xb + j));
      mx = _mm256_max_ps(mx, a);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));     // NaN or infinite
    }
    if (_mm256_movemask_ps(bad)) {                           // not ggml's: d = NaN, so a NaN in gives NaN out
      d[b] = std::numeric_limits<float>::quiet_NaN();
      std::memset(qb, 0, QKK);
      std::memset(bsums + b * 16, 0, 32);
      continue;
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    if (amax == 0.0f) {                                     // all zero: ggml's `if (!amax)` block
      d[b] = 0.0f;
      std::memset(qb, 0, QKK);
      std::memset(bsums + b * 16, 0, 32);
      continue;
    }
    int jmax = 0;                                           // the first x with |x| == amax: ggml's `max`
    for (int j = 0; j < QKK; j += 8) {
      const __m256 eq = _mm256_cmp_ps(_mm256_andnot_ps(signbit, _mm256_loadu_ps(xb + j)), _mm256_set1_ps(amax),
                                      _CMP_EQ_OQ);
      const int mask = _mm256_movemask_ps(eq);
      if (mask) { jmax = j + __builtin_ctz(mask); break; }
    }
    const float iscale = -127.f / xb[jmax];
    const __m256 mul = _mm256_set1_ps(iscale);
    for (int j = 0; j < QKK; j += 32) {
      __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + j), mul), nearest));
      __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 8), mul), nearest));
      __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 16), mul), nearest));
      __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 24), mul), nearest));
      i0 = _mm256_min_epi32(i0, m127); i1 = _mm256_min_epi32(i1, m127);    // MIN(127, v)
      i2 = _mm256_min_epi32(i2, m127); i3 = _mm256_min_epi32(i3, m127);
      for (int h = 0; h < 2; ++h) {                          // the two sums of 16
        const __m256i s = h == 0 ? _mm256_add_epi32(i0, i1) : _mm256_add_epi32(i2, i3);
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        bsums[b * 16 + j / 16 + h] = (int16_t)_mm_cvtsi128_si32(s4);
      }
      i0 = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));   // 32 x int8, lane order
      _mm256_storeu_si256((__m256i*)(qb + j), _mm256_permutevar8x32_epi32(i0, perm));
    }
    d[b] = 1 / iscale;
  }
}

struct Q8K {                                                // M rows of Q8_K activations
  std::vector<int8_t> q;                                    // (M, K)
  std::vector<float> d;                                     // (M, K/256)
  std::vector<int16_t> bsums;                               // (M, K/16)
};

Q8K quantize_q8_k_rows(const float* x, int64_t M, int64_t K) {
  Q8K r;
  r.q.resize(M * K);
  r.d.resize(M * (K / QKK));
  r.bsums.resize(M * (K / 16));
  for (int64_t i = 0; i < M; ++i)
    quantize_row_q8_k(x + i * K, K, r.q.data() + i * K, r.d.data() + i * (K / QKK), r.bsums.data() + i * (K / 16));
  return r;
}

// ---- section: kq_tiles ----
// rows(R, C, n, i, out): activation rows i..i+C against weight rows n..n+R, out[c·R + r] (R = KQ_RT for whole tiles,
// 1 for the last tile's rows; C = KQ_XC activation rows at a time, 1 for the rest; both std::integral_constants).
// Tiles are spread over the threads; each tile meets every activation row while its bytes are in cache, and in a
// prompt each weight unpacked serves KQ_XC activation rows (4: measured faster than 2 and 8, both variants).
constexpr int KQ_XC = 4;

template <typename Rows>
void kq_over_tiles(int64_t M, int64_t N, int64_t K, float* Y, Rows rows) {
  const int64_t grain = std::max<int64_t>(1, 16384 / (KQ_RT * K));
  at::parallel_for(0, (N + KQ_RT - 1) / KQ_RT, grain, [&](int64_t t0, int64_t t1) {
    float tmp[KQ_RT * KQ_XC];
    auto run = [&](auto C, int64_t n, int64_t left, int64_t i) {
      constexpr int c_ = decltype(C)::value;
      if (left == KQ_RT) {
        rows(std::integral_constant<int, KQ_RT>{}, C, n, i, tmp);
        for (int c = 0; c < c_; ++c)
          for (int r = 0; r < KQ_RT; ++r) Y[(i + c) * N + n + r] = tmp[c * KQ_RT + r];
      } else {
        for (int64_t r = 0; r < left; ++r) {
          rows(std::integral_constant<int, 1>{}, C, n + r, i, tmp);
          for (int c = 0; c < c_; ++c) Y[(i + c) * N + n + r] = tmp[c];
        }
      }
    };
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t * KQ_RT, left = std::min<int64_t>(KQ_RT, N - n);
      int64_t i = 0;
      for (; i + KQ_XC <= M; i += KQ_XC) run(std::integral_constant<int, KQ_XC>{}, n, left, i);
      for (; i < M; ++i) run(std::integral_constant<int, 1>{}, n, left, i);
    }
  });
}

// ---- section: q4_k_avx2 ----
// R rows of Q4_K (rs bytes apart) against C rows of Q8_K activations (from row i0 of a). Per super-block and row: the
// mins term from the activation sums (bsums, paired to 8 sums of 32) in one madd; then per 64 weights the nibbles
// unpacked once (low: sub-block 2j, high: 2j+1) and, per activation row, two maddubs weighted by the 6-bit scales in
// madd_epi16; d·dy and -dmin·dy applied once per super-block.
template <int R, int C>
inline void q4_k_rows_avx2(const uint8_t* __restrict w, int64_t rs, int64_t nb, const Q8K& a, int64_t i0,
                           float* __restrict out) {
  const int64_t K = nb * QKK;
  const __m256i m4 = _mm256_set1_epi8(0xF);
  __m256 acc[C][R];
  __m128 accm[C][R];
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) { acc[c][r] = _mm256_setzero_ps(); accm[c][r] = _mm_setzero_ps(); }
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t* q8[C];
    float dy[C];
    __m128i q8s[C];
    for (int c = 0; c < C; ++c) {
      q8[c] = a.q.data() + (i0 + c) * K + i * QKK;
      dy[c] = a.d[(i0 + c) * nb + i];
      const __m256i bs = _mm256_loadu_si256((const __m256i*)(a.bsums.data() + (i0 + c) * (K / 16) + i * 16));
      q8s[c] = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    }
    __m256i scales[R], sumi[C][R];
    float dw[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w + r * rs + i * Q4K_BYTES;
      kq_prefetch(blk + KQ_PF * R * rs, Q4K_BYTES);
      dw[r] = kq_f16(blk);
      const float mw = -kq_f16(blk + 2);
      const __m256i ms = _mm256_cvtepu8_epi16(kq_scales_mins(blk + 4));      // 8 scales, 8 mins as int16
      for (int c = 0; c < C; ++c) {
        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(ms, 1), q8s[c]);
        accm[c][r] = _mm_fmadd_ps(_mm_set1_ps(mw * dy[c]), _mm_cvtepi32_ps(prod), accm[c][r]);
        sumi[c][r] = _mm256_setzero_si256();
      }
      const __m128i sc = _mm256_castsi256_si128(ms);
      scales[r] = _mm256_set_m128i(sc, sc);
    }
#pragma GCC unroll 4
    for (int j = 0; j < QKK / 64; ++j) {
      const __m256i shl = _mm256_set1_epi16((int16_t)(((4 * j + 1) << 8) | (4 * j)));      // bytes 2·(2j), +1
      const __m256i shh = _mm256_set1_epi16((int16_t)(((4 * j + 3) << 8) | (4 * j + 2)));  // bytes 2·(2j+1), +1
      __m256i yl[C], yh[C];
      for (int c = 0; c < C; ++c) {
        yl[c] = _mm256_loadu_si256((const __m256i*)(q8[c] + 64 * j));
        yh[c] = _mm256_loadu_si256((const __m256i*)(q8[c] + 64 * j + 32));
      }
      for (int r = 0; r < R; ++r) {
        const __m256i q4 = _mm256_loadu_si256((const __m256i*)(w + r * rs + i * Q4K_BYTES + 16 + 32 * j));
        const __m256i lo = _mm256_and_si256(q4, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
        const __m256i scl = _mm256_shuffle_epi8(scales[r], shl), sch = _mm256_shuffle_epi8(scales[r], shh);
        for (int c = 0; c < C; ++c) {
          const __m256i sl = _mm256_madd_epi16(scl, _mm256_maddubs_epi16(lo, yl[c]));
          const __m256i sh = _mm256_madd_epi16(sch, _mm256_maddubs_epi16(hi, yh[c]));
          sumi[c][r] = _mm256_add_epi32(sumi[c][r], _mm256_add_epi32(sl, sh));
        }
      }
    }
    for (int c = 0; c < C; ++c)
      for (int r = 0; r < R; ++r)
        acc[c][r] = _mm256_fmadd_ps(_mm256_set1_ps(dw[r] * dy[c]), _mm256_cvtepi32_ps(sumi[c][r]), acc[c][r]);
  }
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) out[c * R + r] = kq_hsum8(acc[c][r]) + kq_hsum4(accm[c][r]);
}

// ---- section: q5_k_avx2 ----
// Q5_K is Q4_K plus a fifth bit per weight (qh: bit 2j for sub-block 2j, 2j+1 for 2j+1), added as 16 before maddubs.
template <int R, int C>
inline void q5_k_rows_avx2(const uint8_t* __restrict w, int64_t rs, int64_t nb, const Q8K& a, int64_t i0,
                           float* __restrict out) {
  const int64_t K = nb * QKK;
  const __m256i m4 = _mm256_set1_epi8(0xF);
  __m256 acc[C][R];
  __m128 accm[C][R];
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) { acc[c][r] = _mm256_setzero_ps(); accm[c][r] = _mm_setzero_ps(); }
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t* q8[C];
    float dy[C];
    __m128i q8s[C];
    for (int c = 0; c < C; ++c) {
      q8[c] = a.q.data() + (i0 + c) * K + i * QKK;
      dy[c] = a.d[(i0 + c) * nb + i];
      const __m256i bs = _mm256_loadu_si256((const __m256i*)(a.bsums.data() + (i0 + c) * (K / 16) + i * 16));
      q8s[c] = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    }
    __m256i scales[R], sumi[C][R];
    float dw[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w + r * rs + i * Q5K_BYTES;
      kq_prefetch(blk + KQ_PF * R * rs, Q5K_BYTES);
      dw[r] = kq_f16(blk);
      const float mw = -kq_f16(blk + 2);
      const __m256i ms = _mm256_cvtepu8_epi16(kq_scales_mins(blk + 4));
      for (int c = 0; c < C; ++c) {
        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(ms, 1), q8s[c]);
        accm[c][r] = _mm_fmadd_ps(_mm_set1_ps(mw * dy[c]), _mm_cvtepi32_ps(prod), accm[c][r]);
        sumi[c][r] = _mm256_setzero_si256();
      }
      const __m128i sc = _mm256_castsi256_si128(ms);
      scales[r] = _mm256_set_m128i(sc, sc);
    }
#pragma GCC unroll 4
    for (int j = 0; j < QKK / 64; ++j) {
      const __m256i shl = _mm256_set1_epi16((int16_t)(((4 * j + 1) << 8) | (4 * j)));
      const __m256i shh = _mm256_set1_epi16((int16_t)(((4 * j + 3) << 8) | (4 * j + 2)));
      const __m256i bl = _mm256_set1_epi8((char)(1 << (2 * j))), bh = _mm256_set1_epi8((char)(2 << (2 * j)));
      __m256i yl[C], yh[C];
      for (int c = 0; c < C; ++c) {
        yl[c] = _mm256_loadu_si256((const __m256i*)(q8[c] + 64 * j));
        yh[c] = _mm256_loadu_si256((const __m256i*)(q8[c] + 64 * j + 32));
      }
      for (int r = 0; r < R; ++r) {
        const uint8_t* blk = w + r * rs + i * Q5K_BYTES;
        const __m256i qh = _mm256_loadu_si256((const __m256i*)(blk + 16));
        const __m256i q4 = _mm256_loadu_si256((const __m256i*)(blk + 48 + 32 * j));
        const __m256i hl = _mm256_slli_epi16(_mm256_srli_epi16(_mm256_and_si256(qh, bl), 2 * j), 4);
        const __m256i hh = _mm256_slli_epi16(_mm256_srli_epi16(_mm256_and_si256(qh, bh), 2 * j + 1), 4);
        const __m256i lo = _mm256_add_epi8(_mm256_and_si256(q4, m4), hl);
        const __m256i hi = _mm256_add_epi8(_mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), hh);
        const __m256i scl = _mm256_shuffle_epi8(scales[r], shl), sch = _mm256_shuffle_epi8(scales[r], shh);
        for (int c = 0; c < C; ++c) {
          const __m256i sl = _mm256_madd_epi16(scl, _mm256_maddubs_epi16(lo, yl[c]));
          const __m256i sh = _mm256_madd_epi16(sch, _mm256_maddubs_epi16(hi, yh[c]));
          sumi[c][r] = _mm256_add_epi32(sumi[c][r], _mm256_add_epi32(sl, sh));
        }
      }
    }
    for (int c = 0; c < C; ++c)
      for (int r = 0; r < R; ++r)
        acc[c][r] = _mm256_fmadd_ps(_mm256_set1_ps(dw[r] * dy[c]), _mm256_cvtepi32_ps(sumi[c][r]), acc[c][r]);
  }
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) out[c * R + r] = kq_hsum8(acc[c][r]) + kq_hsum4(accm[c][r]);
}

// ---- section: q6_k_avx2 ----
// Q6_K: 6-bit codes q (4 low bits in ql, 2 high in qh), w = d·sc·(q - 32), 16 sub-blocks of 16 with int8 scales.
// maddubs needs q unsigned, so it multiplies q and subtracts 32·Σy, a product of the activations alone (maddubs of
// 32 and y): computed once per 32 activations and shared by the R rows.
template <int R, int C>
inline void q6_k_rows_avx2(const uint8_t* __restrict w, int64_t rs, int64_t nb, const Q8K& a, int64_t i0,
                           float* __restrict out) {
  const int64_t K = nb * QKK;
  const __m256i m4 = _mm256_set1_epi8(0xF), m3 = _mm256_set1_epi8(3), m32 = _mm256_set1_epi8(32);
  __m256 acc[C][R];
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) acc[c][r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t* q8[C];
    for (int c = 0; c < C; ++c) q8[c] = a.q.data() + (i0 + c) * K + i * QKK;
    __m256i sumi[C][R];
    __m128i scales[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w + r * rs + i * Q6K_BYTES;
      kq_prefetch(blk + KQ_PF * R * rs, Q6K_BYTES);
      scales[r] = _mm_loadu_si128((const __m128i*)(blk + 192));
      for (int c = 0; c < C; ++c) sumi[c][r] = _mm256_setzero_si256();
    }
    for (int h = 0; h < 2; ++h) {                           // two halves of 128 weights
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {                         // 32 weights: sub-blocks 8h+2g, 8h+2g+1
        __m256i y[C], y32[C];
        for (int c = 0; c < C; ++c) {
          y[c] = _mm256_loadu_si256((const __m256i*)(q8[c] + 128 * h + 32 * g));
          y32[c] = _mm256_maddubs_epi16(m32, y[c]);
        }
        const int s = 8 * h + 2 * g;
        const __m128i shuf = _mm_set_epi64x(0x0101010101010101LL * (s + 1), 0x0101010101010101LL * s);
        for (int r = 0; r < R; ++r) {
          const uint8_t* blk = w + r * rs + i * Q6K_BYTES;
          const __m256i ql = _mm256_loadu_si256((const __m256i*)(blk + 64 * h + 32 * (g & 1)));
          const __m256i qh = _mm256_loadu_si256((const __m256i*)(blk + 128 + 32 * h));
          const __m256i lo = _mm256_and_si256(g < 2 ? ql : _mm256_srli_epi16(ql, 4), m4);
          const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), m3), 4);
          const __m256i q6 = _mm256_or_si256(lo, hi);
          const __m256i sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales[r], shuf));
          for (int c = 0; c < C; ++c) {
            const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q6, y[c]), y32[c]);
            sumi[c][r] = _mm256_add_epi32(sumi[c][r], _mm256_madd_epi16(sc, p));
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float dw = kq_f16(w + r * rs + i * Q6K_BYTES + 208);
      for (int c = 0; c < C; ++c) {
        const float dd = dw * a.d[(i0 + c) * nb + i];
        acc[c][r] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sumi[c][r]), acc[c][r]);
      }
    }
  }
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) out[c * R + r] = kq_hsum8(acc[c][r]);
}

// ---- section: q4_k_avx512 ----
// The AVX-512 versions: 64 weights per 512-bit register, and VNNI's vpdpwssd folding the sub-block scale multiply
// and the accumulation of maddubs' 16-bit pair sums into one instruction. Compiled for AVX-512 inside this region
// only; called only when llama_lit::current_isa() == AVX512.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#define KQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
template <int R, int C>
KQ_AVX512 inline void q4_k_rows_avx512(const uint8_t* __restrict w, int64_t rs, int64_t nb, const Q8K& a,
                                       int64_t i0, float* __restrict out) {
  const int64_t K = nb * QKK;
  const __m512i m4 = _mm512_set1_epi8(0xF);
  const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);  // 0 low, 4 high half
  __m512 acc[C][R];
  __m128 accm[C][R];
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) { acc[c][r] = _mm512_setzero_ps(); accm[c][r] = _mm_setzero_ps(); }
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t* q8[C];
    float dy[C];
    __m128i q8s[C];
    for (int c = 0; c < C; ++c) {
      q8[c] = a.q.data() + (i0 + c) * K + i * QKK;
      dy[c] = a.d[(i0 + c) * nb + i];
      const __m256i bs = _mm256_loadu_si256((const __m256i*)(a.bsums.data() + (i0 + c) * (K / 16) + i * 16));
      q8s[c] = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    }
    __m512i scales[R], sumi[C][R];
    float dw[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w + r * rs + i * Q4K_BYTES;
      kq_prefetch(blk + KQ_PF * R * rs, Q4K_BYTES);
      dw[r] = kq_f16(blk);
      const float mw = -kq_f16(blk + 2);
      const __m256i ms = _mm256_cvtepu8_epi16(kq_scales_mins(blk + 4));
      for (int c = 0; c < C; ++c) {
        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(ms, 1), q8s[c]);
        accm[c][r] = _mm_fmadd_ps(_mm_set1_ps(mw * dy[c]), _mm_cvtepi32_ps(prod), accm[c][r]);
        sumi[c][r] = _mm512_setzero_si512();
      }
      scales[r] = _mm512_castsi256_si512(ms);
    }
#pragma GCC unroll 4
    for (int j = 0; j < QKK / 64; ++j) {
      const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi16(2 * j), _mm256_set1_epi16(2 * j + 1), 1);
      __m512i y[C];
      for (int c = 0; c < C; ++c) y[c] = _mm512_loadu_si512((const void*)(q8[c] + 64 * j));   // sub-blocks 2j, 2j+1
      for (int r = 0; r < R; ++r) {
        const __m256i q4 = _mm256_loadu_si256((const __m256i*)(w + r * rs + i * Q4K_BYTES + 16 + 32 * j));
        const __m512i q = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(q4), shift), m4);
        const __m512i sc = _mm512_permutexvar_epi16(idx, scales[r]);
        for (int c = 0; c < C; ++c) sumi[c][r] = _mm512_dpwssd_epi32(sumi[c][r], _mm512_maddubs_epi16(q, y[c]), sc);
      }
    }
    for (int c = 0; c < C; ++c)
      for (int r = 0; r < R; ++r)
        acc[c][r] = _mm512_fmadd_ps(_mm512_set1_ps(dw[r] * dy[c]), _mm512_cvtepi32_ps(sumi[c][r]), acc[c][r]);
  }
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) out[c * R + r] = _mm512_reduce_add_ps(acc[c][r]) + kq_hsum4(accm[c][r]);
}

// ---- section: q5_k_avx512 ----
// Q5_K's fifth bit: vptestmb picks the weights whose bit is set, a masked add puts in the 16.
template <int R, int C>
KQ_AVX512 inline void q5_k_rows_avx512(const uint8_t* __restrict w, int64_t rs, int64_t nb, const Q8K& a,
                                       int64_t i0, float* __restrict out) {
  const int64_t K = nb * QKK;
  const __m512i m4 = _mm512_set1_epi8(0xF), m16 = _mm512_set1_epi8(16);
  const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  __m512 acc[C][R];
  __m128 accm[C][R];
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) { acc[c][r] = _mm512_setzero_ps(); accm[c][r] = _mm_setzero_ps(); }
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t* q8[C];
    float dy[C];
    __m128i q8s[C];
    for (int c = 0; c < C; ++c) {
      q8[c] = a.q.data() + (i0 + c) * K + i * QKK;
      dy[c] = a.d[(i0 + c) * nb + i];
      const __m256i bs = _mm256_loadu_si256((const __m256i*)(a.bsums.data() + (i0 + c) * (K / 16) + i * 16));
      q8s[c] = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    }
    __m512i scales[R], sumi[C][R], qh[R];
    float dw[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w + r * rs + i * Q5K_BYTES;
      kq_prefetch(blk + KQ_PF * R * rs, Q5K_BYTES);
      dw[r] = kq_f16(blk);
      const float mw = -kq_f16(blk + 2);
      const __m256i ms = _mm256_cvtepu8_epi16(kq_scales_mins(blk + 4));
      for (int c = 0; c < C; ++c) {
        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(ms, 1), q8s[c]);
        accm[c][r] = _mm_fmadd_ps(_mm_set1_ps(mw * dy[c]), _mm_cvtepi32_ps(prod), accm[c][r]);
        sumi[c][r] = _mm512_setzero_si512();
      }
      scales[r] = _mm512_castsi256_si512(ms);
      qh[r] = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(blk + 16)));
    }
#pragma GCC unroll 4
    for (int j = 0; j < QKK / 64; ++j) {
      const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi16(2 * j), _mm256_set1_epi16(2 * j + 1), 1);
      const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * j))),
                                             _mm256_set1_epi8((char)(2 << (2 * j))), 1);
      __m512i y[C];
      for (int c = 0; c < C; ++c) y[c] = _mm512_loadu_si512((const void*)(q8[c] + 64 * j));
      for (int r = 0; r < R; ++r) {
        const __m256i q4 = _mm256_loadu_si256((const __m256i*)(w + r * rs + i * Q5K_BYTES + 48 + 32 * j));
        __m512i q = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(q4), shift), m4);
        q = _mm512_mask_add_epi8(q, _mm512_test_epi8_mask(qh[r], bit), q, m16);
        const __m512i sc = _mm512_permutexvar_epi16(idx, scales[r]);
        for (int c = 0; c < C; ++c) sumi[c][r] = _mm512_dpwssd_epi32(sumi[c][r], _mm512_maddubs_epi16(q, y[c]), sc);
      }
    }
    for (int c = 0; c < C; ++c)
      for (int r = 0; r < R; ++r)
        acc[c][r] = _mm512_fmadd_ps(_mm512_set1_ps(dw[r] * dy[c]), _mm512_cvtepi32_ps(sumi[c][r]), acc[c][r]);
  }
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) out[c * R + r] = _mm512_reduce_add_ps(acc[c][r]) + kq_hsum4(accm[c][r]);
}

// ---- section: q6_k_avx512 ----
// Q6_K: the -32 of every code taken out once per super-block, as 32·Σ_k sc_k·bsum_k (one madd of the 16 scales with
// the 16 activation sums), so the inner loop is maddubs and vpdpwssd on the raw codes; 64 weights per register.
template <int R, int C>
KQ_AVX512 inline void q6_k_rows_avx512(const uint8_t* __restrict w, int64_t rs, int64_t nb, const Q8K& a,
                                       int64_t i0, float* __restrict out) {
  const int64_t K = nb * QKK;
  const __m512i m4 = _mm512_set1_epi8(0xF), m3 = _mm512_set1_epi8(3);
  const __m512i sh01 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);        // 0 | 2
  const __m512i sh23 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);          // 4 | 6
  const __m512i lane8 = _mm512_cvtepu8_epi16(_mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  __m512 acc[C][R];
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) acc[c][r] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t* q8[C];
    __m256i bs[C];
    for (int c = 0; c < C; ++c) {
      q8[c] = a.q.data() + (i0 + c) * K + i * QKK;
      bs[c] = _mm256_loadu_si256((const __m256i*)(a.bsums.data() + (i0 + c) * (K / 16) + i * 16));
    }
    __m512i scales[R], sumi[C][R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w + r * rs + i * Q6K_BYTES;
      kq_prefetch(blk + KQ_PF * R * rs, Q6K_BYTES);
      const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(blk + 192)));    // 16 x int16
      scales[r] = _mm512_castsi256_si512(sc);
      for (int c = 0; c < C; ++c) {
        const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc, bs[c]), 5);                 // 32·sc·bsum
        sumi[c][r] = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_sub_epi32(_mm256_setzero_si256(), off), 0);
      }
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {                            // 64 weights: half h = k/2, sub-blocks 4k..4k+3
      const int h = k / 2, g = k % 2;
      const __m512i idx = _mm512_add_epi16(_mm512_set1_epi16(4 * k), lane8);    // lane l: scale 4k + l/8
      __m512i y[C];
      for (int c = 0; c < C; ++c) y[c] = _mm512_loadu_si512((const void*)(q8[c] + 64 * k));
      for (int r = 0; r < R; ++r) {
        const uint8_t* blk = w + r * rs + i * Q6K_BYTES;
        const __m512i ql = _mm512_loadu_si512((const void*)(blk + 64 * h));
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(blk + 128 + 32 * h)));
        const __m512i lo = _mm512_and_si512(g == 0 ? ql : _mm512_srli_epi16(ql, 4), m4);
        const __m512i hi = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, g == 0 ? sh01 : sh23), m3), 4);
        const __m512i q6 = _mm512_or_si512(lo, hi);
        const __m512i sc = _mm512_permutexvar_epi16(idx, scales[r]);
        for (int c = 0; c < C; ++c) sumi[c][r] = _mm512_dpwssd_epi32(sumi[c][r], _mm512_maddubs_epi16(q6, y[c]), sc);
      }
    }
    for (int r = 0; r < R; ++r) {
      const float dw = kq_f16(w + r * rs + i * Q6K_BYTES + 208);
      for (int c = 0; c < C; ++c) {
        const float dd = dw * a.d[(i0 + c) * nb + i];
        acc[c][r] = _mm512_fmadd_ps(_mm512_set1_ps(dd), _mm512_cvtepi32_ps(sumi[c][r]), acc[c][r]);
      }
    }
  }
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) out[c * R + r] = _mm512_reduce_add_ps(acc[c][r]);
}
#undef KQ_AVX512
#pragma GCC pop_options

// ---- section: kq_linear ----
// The three operators: checks, Q8_K activations once per call, then the tiles through the AVX2 or AVX-512 rows.
enum KKind { Q4K, Q5K, Q6K };

at::Tensor kq_linear(KKind kind, const char* op, int bpb, at::Tensor x, at::Tensor blocks) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              op, ": x must be a contiguous CPU float32 (M, K) tensor");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % QKK == 0 && K > 0, op, ": K=", K, " is not a positive multiple of 256");
  const int64_t nb = K / QKK, rs = nb * bpb;
  TORCH_CHECK(blocks.dim() == 2 && blocks.scalar_type() == at::kByte && blocks.is_contiguous() &&
                  blocks.device().is_cpu() && blocks.size(1) == rs,
              op, ": blocks must be contiguous CPU uint8 (N, K/256*", bpb, ") = (N, ", rs, ")");
  const int64_t N = blocks.size(0);
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const Q8K a = quantize_q8_k_rows(x.data_ptr<float>(), M, K);
  const uint8_t* W = blocks.data_ptr<uint8_t>();
  const bool wide = llama_lit::current_isa() == llama_lit::AVX512;
  kq_over_tiles(M, N, K, y.data_ptr<float>(), [&](auto R, auto C, int64_t n, int64_t i, float* out) {
    constexpr int r = decltype(R)::value, c = decltype(C)::value;
    const uint8_t* w = W + n * rs;
    if (kind == Q4K && wide) q4_k_rows_avx512<r, c>(w, rs, nb, a, i, out);
    else if (kind == Q4K) q4_k_rows_avx2<r, c>(w, rs, nb, a, i, out);
    else if (kind == Q5K && wide) q5_k_rows_avx512<r, c>(w, rs, nb, a, i, out);
    else if (kind == Q5K) q5_k_rows_avx2<r, c>(w, rs, nb, a, i, out);
    else if (wide) q6_k_rows_avx512<r, c>(w, rs, nb, a, i, out);
    else q6_k_rows_avx2<r, c>(w, rs, nb, a, i, out);
  });
  return y;
}

at::Tensor q4_k_linear(at::Tensor x, at::Tensor blocks) { return kq_linear(Q4K, "q4_k_linear", Q4K_BYTES, x, blocks); }
at::Tensor q5_k_linear(at::Tensor x, at::Tensor blocks) { return kq_linear(Q5K, "q5_k_linear", Q5K_BYTES, x, blocks); }
at::Tensor q6_k_linear(at::Tensor x, at::Tensor blocks) { return kq_linear(Q6K, "q6_k_linear", Q6K_BYTES, x, blocks); }

// ---- section: quantize_q8_k ----
// The activation rounding handed to Python, for the tests: q int8 (M, K), d float32 (M, K/256), bsums int16 (M, K/16).
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_q8_k(at::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu() &&
                  x.size(1) % QKK == 0,
              "quantize_q8_k: x must be a contiguous CPU float32 (M, K) tensor, K a multiple of 256");
  const int64_t M = x.size(0), K = x.size(1);
  const Q8K a = quantize_q8_k_rows(x.data_ptr<float>(), M, K);
  auto q = at::empty({M, K}, x.options().dtype(at::kChar));
  auto d = at::empty({M, K / QKK}, x.options());
  auto bs = at::empty({M, K / 16}, x.options().dtype(at::kShort));
  if (M == 0) return std::make_tuple(q, d, bs);
  std::memcpy(q.data_ptr(), a.q.data(), M * K);
  std::memcpy(d.data_ptr(), a.d.data(), M * (K / QKK) * 4);
  std::memcpy(bs.data_ptr(), a.bsums.data(), M * (K / 16) * 2);
  return std::make_tuple(q, d, bs);
}

// ---- section: kq_registration ----
}  // namespace

TORCH_LIBRARY_FRAGMENT(llama_lit, lib) {
  lib.def("q4_k_linear(Tensor x, Tensor blocks) -> Tensor");
  lib.def("q5_k_linear(Tensor x, Tensor blocks) -> Tensor");
  lib.def("q6_k_linear(Tensor x, Tensor blocks) -> Tensor");
  lib.def("quantize_q8_k(Tensor x) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(llama_lit, CPU, lib) {
  lib.impl("q4_k_linear", &q4_k_linear);
  lib.impl("q5_k_linear", &q5_k_linear);
  lib.impl("q6_k_linear", &q6_k_linear);
  lib.impl("quantize_q8_k", &quantize_q8_k);
}
