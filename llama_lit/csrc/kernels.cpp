// ---- section: headers ----
// llama_lit's CPU kernels: Q4_1, Q5_0, Q5_1 and Q8_0 blocks times int8 activations, and float weights, for x86-64,
// each in two variants: AVX2 (+ FMA, F16C: the flags the file is compiled with) and AVX-512 (F, BW, VL, DQ, VNNI:
// compiled in `#pragma GCC target` regions, called only when llama_lit::current_isa() says so). Shipped with the
// package and compiled on first use by llama_lit.kernels.load_kernels(); chapter 11 of the book shows it section by
// section (the `section:` comments; llama_lit.kernels.cpp_section reads them).
#include <ATen/ATen.h>
#include <torch/library.h>   // no torch/extension.h / pybind11: only ATen's headers, a cold compile of seconds
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>
#include <type_traits>
#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>
#include "isa.h"

// ---- section: isa_switch ----
// The vector width every kernel of the library runs (isa.h): AVX2 until load_kernels sets it through set_isa.
int& llama_lit::current_isa() {
  static int isa = llama_lit::AVX2;
  return isa;
}

namespace {

// set_isa(isa): run the AVX2 (0) or AVX-512 (1) variants from now on; returns the one before (set_isa(-1) only
// reads it). AVX-512 only where the CPU has every extension its variants are compiled for.
int64_t set_isa(int64_t isa) {
  const int before = llama_lit::current_isa();
  if (isa == -1) return before;
  TORCH_CHECK(isa == llama_lit::AVX2 || isa == llama_lit::AVX512, "set_isa: ", isa,
              " is neither 0 (AVX2) nor 1 (AVX-512)");
  TORCH_CHECK(isa == llama_lit::AVX2 || (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                                         __builtin_cpu_supports("avx512vnni")),
              "set_isa: this CPU lacks AVX-512 F/BW/VL/DQ/VNNI");
  llama_lit::current_isa() = (int)isa;
  return before;
}

// ---- section: helpers ----
constexpr int QK = 32;
#ifndef QPF
#define QPF 2   // software prefetch distance, in tiles of rows ahead (may run past the end: prefetch never faults)
#endif

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

// group G (1, 2 or 4): store each group of G blocks b..b+G-1 as the first 16 activations of each, then the last 16
// of each (groups of G while they fit, then of G/2, ...: an odd last block stays in order); one 32-byte (AVX2, G=2)
// or 64-byte (AVX-512, G=4) load of Q4 bytes holds the weights of G blocks in that order: low nibbles | high ones.
QX quantize_x(const float* x, int64_t M, int64_t K, bool with_s, int G = 1) {
  QX r;
  const int64_t nb = K / QK;
  r.q.resize(M * K);
  r.d.resize(M * nb + 16);
  if (with_s) r.s.resize(M * nb + 16);
  std::vector<int8_t> tmp(G > 1 ? K : 0);
  for (int64_t i = 0; i < M; ++i) {
    int8_t* dst = r.q.data() + i * K;
    quantize_row_q8(x + i * K, K, G > 1 ? tmp.data() : dst, r.d.data() + i * nb,
                    with_s ? r.s.data() + i * nb : nullptr);
    if (G == 1) continue;
    int64_t b = 0;
    for (int g = G; g > 1; g /= 2)
      for (; b + g <= nb; b += g)
        for (int j = 0; j < g; ++j) {
          std::memcpy(dst + b * QK + 16 * j, tmp.data() + (b + j) * QK, 16);
          std::memcpy(dst + b * QK + 16 * (g + j), tmp.data() + (b + j) * QK + 16, 16);
        }
    if (b < nb) std::memcpy(dst + b * QK, tmp.data() + b * QK, QK);
  }
  return r;
}

// ---- section: q4_1_rows ----
// The 4- and 5-bit formats share one kernel: w = d·q + m with q a 4-bit code (Q4_1), or a 5-bit one whose fifth
// bits lie in a 32-bit word qh per block (Q5_1); Q5_0 is w = d·(q - 16), i.e. m = -16·d (exact), not stored.
enum Nib { Q4_1F = 0, Q5_1F = 1, Q5_0F = 2 };

// 32 bytes: 0xFF where bit i of x is set, else 0 (ggml's bytes_from_bits_32, ggml-quants.c, MIT license).
inline __m256i bytes_from_bits_32(uint32_t x) {
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  const __m256i bytes = _mm256_or_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf),
                                        _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

// R rows of weights (starting at row n) against one quantized activation row; writes R outputs. MODE as in the
// AVX-512 variant below: 0 unpacks and uses, 1 also stores the unpacked vectors in buf, 2 reads them back.
template <int R, int F, int MODE = 0>
inline void q4_1_rows(const uint8_t* __restrict qs, const uint32_t* __restrict qh, const uint16_t* __restrict dw,
                      const uint16_t* __restrict mw, int64_t K, const int8_t* __restrict qy,
                      const float* __restrict dy, const float* __restrict sy, float* __restrict out,
                      __m256i* buf = nullptr) {
  // qy in pair layout (quantize_x(G=2)); two blocks per step: one 32-byte load of qs gives both blocks'
  // low nibbles (w0..15) and high nibbles (w16..31) in the 128-bit lanes of block b and b+1.
  const int64_t nb = K / QK, rs = K / 2;
  const __m256i lowmask = _mm256_set1_epi8(0x0F), bit5 = _mm256_set1_epi8(0x10);
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
      __m256i lo, hi;                                                                                      \
      if constexpr (MODE == 2) { lo = _mm256_loadu_si256(buf); hi = _mm256_loadu_si256(buf + 1); }         \
      else {                                                                                               \
      if ((P) % 2 == 0) _mm_prefetch((const char*)(qs + (QPF * R + r) * rs + b * 16), _MM_HINT_T0);       \
      const __m256i q = _mm256_loadu_si256((const __m256i*)(qs + r * rs + b * 16));                       \
      lo = _mm256_and_si256(q, lowmask);                                                                   \
      hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), lowmask);                                            \
      if constexpr (F != Q4_1F) {   /* fifth bits: w0..15 of both blocks, then w16..31 of both */          \
        const uint32_t h0 = qh[r * nb + b], h1 = qh[r * nb + b + 1];                                       \
        lo = _mm256_or_si256(lo, _mm256_and_si256(bytes_from_bits_32((h0 & 0xFFFF) | (h1 << 16)), bit5));   \
        hi = _mm256_or_si256(hi, _mm256_and_si256(bytes_from_bits_32((h0 >> 16) | (h1 & 0xFFFF0000u)), bit5)); \
      }                                                                                                    \
      if constexpr (MODE == 1) { _mm256_storeu_si256(buf, lo); _mm256_storeu_si256(buf + 1, hi); }         \
      }                                                                                                    \
      if constexpr (MODE != 0) buf += 2;                                                                   \
      const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ya), _mm256_maddubs_epi16(hi, yb));    \
      const __m256 sc = _mm256_permutevar8x32_ps(scl[r], IDX);                                             \
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)), sc, acc[r]);              \
    }                                                                                                      \
  }
  auto mof = [&](int64_t i) { return F == Q5_0F ? -16.f * h2f(dw[i]) : h2f(mw[i]); };   // m of one block
  int64_t b0 = 0;
  for (; b0 + 8 <= nb; b0 += 8) {
    const __m256 dy8 = _mm256_loadu_ps(dy + b0), sy8 = _mm256_loadu_ps(sy + b0);
    __m256 scl[R];
    for (int r = 0; r < R; ++r) {
      const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(dw + r * nb + b0)));
      const __m256 m8 = F == Q5_0F ? _mm256_mul_ps(d8, _mm256_set1_ps(-16.f))
                                   : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(mw + r * nb + b0)));
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
      // written as one fma: left to the compiler, a*b + c*d may fuse either product, differently per instantiation
      const float m01 = std::fma(mof(r * nb + b0), sy[b0], mof(r * nb + b0 + 1) * sy[b0 + 1]);
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
      __m256i w;
      if constexpr (MODE == 2) w = _mm256_loadu_si256(buf);
      else {
        const __m128i q = _mm_loadu_si128((const __m128i*)(qs + r * rs + b0 * 16));
        w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), lowmask);
        if constexpr (F != Q4_1F) w = _mm256_or_si256(w, _mm256_and_si256(bytes_from_bits_32(qh[r * nb + b0]), bit5));
        if constexpr (MODE == 1) _mm256_storeu_si256(buf, w);
      }
      if constexpr (MODE != 0) buf += 1;
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), ones);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(dw[r * nb + b0]) * dy[b0]), acc[r]);
      mtail[r] = std::fma(mof(r * nb + b0), sy[b0], mtail[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum8(_mm256_add_ps(acc[r], macc[r])) + mtail[r];
}

// A prompt (M activation rows) against R weight rows: the first row unpacks the tile into buf, the others read it.
template <int R, int F>
void q4_1_tile(const uint8_t* qs, const uint32_t* qh, const uint16_t* dw, const uint16_t* mw, int64_t K,
               const int8_t* qy, const float* dy, const float* sy, int64_t M, float* out, __m256i* buf) {
  const int64_t nb = K / QK;
  q4_1_rows<R, F, 1>(qs, qh, dw, mw, K, qy, dy, sy, out, buf);
  for (int64_t i = 1; i < M; ++i)
    q4_1_rows<R, F, 2>(qs, qh, dw, mw, K, qy + i * K, dy + i * nb, sy + i * nb, out + i * R, buf);
}

// ---- section: q4_1_rows_avx512 ----
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
// The same on 512-bit registers, G = 4 blocks per step (activations in quantize_x(G=4)'s layout): one 64-byte load
// of qs, and VNNI's vpdpbusd multiplies unsigned codes by signed activations and adds each 4 products into an int32
// lane (no int16 step); lanes 4j..4j+3 hold block b+j. The last G = 2 or 1 blocks of a row use masked loads.
// MODE: 0 unpacks each weight vector and uses it; 1 also stores it in `buf`; 2 reads it back from `buf` (a prompt's
// next activation rows against the same tile: the unpacking once per tile, the arithmetic the same bit for bit).
template <int R, int F, int G, int MODE>
__attribute__((always_inline)) inline void q4_1_group_512(const uint8_t* __restrict qs, const uint32_t* __restrict qh,
                                                          int64_t nb, int64_t b, int p, const int8_t* __restrict qy,
                                                          const __m512* scl, __m512* acc, __m512i*& buf) {
  const int64_t rs = nb * 16;
  const __mmask64 bytes = G == 4 ? ~0ULL : (1ULL << (16 * G)) - 1;          // qs bytes (and y bytes) of G blocks
  const __mmask16 lanes = G == 4 ? 0xFFFF : (1u << (4 * G)) - 1;           // their int32 lanes
  const __m512i lowmask = _mm512_set1_epi8(0x0F), bit5 = _mm512_set1_epi8(0x10);
  const __m512i ya = _mm512_maskz_loadu_epi8(bytes, qy + b * QK);             // first halves of the G blocks
  const __m512i yb = _mm512_maskz_loadu_epi8(bytes, qy + b * QK + 16 * G);    // second halves
  const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(p),                   // lanes 4j..4j+3: block p + j's scale
                                       _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
  for (int r = 0; r < R; ++r) {
    __m512i lo, hi;
    if constexpr (MODE == 2) {
      lo = _mm512_loadu_si512(buf); hi = _mm512_loadu_si512(buf + 1);
    } else {
      if (G == 4) _mm_prefetch((const char*)(qs + (QPF * R + r) * rs + b * 16), _MM_HINT_T0);
      const __m512i q = _mm512_maskz_loadu_epi8(bytes, qs + r * rs + b * 16);
      lo = _mm512_and_si512(q, lowmask), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), lowmask);
      if constexpr (F != Q4_1F) {   // fifth bits of w0..15 of the G blocks, then of w16..31: one mask bit per byte
        uint64_t lb = 0, hb = 0;
        for (int j = 0; j < G; ++j) {
          const uint64_t h = qh[r * nb + b + j];
          lb |= (h & 0xFFFF) << (16 * j);
          hb |= (h >> 16) << (16 * j);
        }
        lo = _mm512_or_si512(lo, _mm512_maskz_mov_epi8(_cvtu64_mask64(lb), bit5));
        hi = _mm512_or_si512(hi, _mm512_maskz_mov_epi8(_cvtu64_mask64(hb), bit5));
      }
      if constexpr (MODE == 1) { _mm512_storeu_si512(buf, lo); _mm512_storeu_si512(buf + 1, hi); }
    }
    if constexpr (MODE != 0) buf += 2;
    const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, ya), hi, yb);
    acc[r] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(idx, scl[r]), acc[r], lanes);
  }
}

template <int R, int F, int MODE = 0>
void q4_1_rows_512(const uint8_t* __restrict qs, const uint32_t* __restrict qh, const uint16_t* __restrict dw,
                   const uint16_t* __restrict mw, int64_t K, const int8_t* __restrict qy, const float* __restrict dy,
                   const float* __restrict sy, float* __restrict out, __m512i* buf = nullptr) {
  const int64_t nb = K / QK;
  __m512 acc[R], macc[R], scl[R];
  for (int r = 0; r < R; ++r) { acc[r] = _mm512_setzero_ps(); macc[r] = _mm512_setzero_ps(); }
  for (int64_t c0 = 0; c0 < nb; c0 += 16) {   // 16 blocks' scales at a time (the last chunk masked)
    const int cnt = (int)std::min<int64_t>(16, nb - c0);
    const __mmask16 km = cnt == 16 ? 0xFFFF : (1u << cnt) - 1;
    const __m512 dy16 = _mm512_maskz_loadu_ps(km, dy + c0), sy16 = _mm512_maskz_loadu_ps(km, sy + c0);
    for (int r = 0; r < R; ++r) {
      const __m512 d16 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, dw + r * nb + c0));
      const __m512 m16 = F == Q5_0F ? _mm512_mul_ps(d16, _mm512_set1_ps(-16.f))
                                    : _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, mw + r * nb + c0));
      scl[r] = _mm512_mul_ps(d16, dy16);
      macc[r] = _mm512_fmadd_ps(m16, sy16, macc[r]);
    }
    int p = 0;
    for (; p + 4 <= cnt; p += 4) q4_1_group_512<R, F, 4, MODE>(qs, qh, nb, c0 + p, p, qy, scl, acc, buf);
    if (p + 2 <= cnt) { q4_1_group_512<R, F, 2, MODE>(qs, qh, nb, c0 + p, p, qy, scl, acc, buf); p += 2; }
    if (p < cnt) q4_1_group_512<R, F, 1, MODE>(qs, qh, nb, c0 + p, p, qy, scl, acc, buf);
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], macc[r]));
}

// A prompt (M activation rows) against R weight rows: the first row unpacks the tile into buf, the others read it.
template <int R, int F>
void q4_1_tile_512(const uint8_t* qs, const uint32_t* qh, const uint16_t* dw, const uint16_t* mw, int64_t K,
                   const int8_t* qy, const float* dy, const float* sy, int64_t M, float* out, __m512i* buf) {
  const int64_t nb = K / QK;
  q4_1_rows_512<R, F, 1>(qs, qh, dw, mw, K, qy, dy, sy, out, buf);
  for (int64_t i = 1; i < M; ++i)
    q4_1_rows_512<R, F, 2>(qs, qh, dw, mw, K, qy + i * K, dy + i * nb, sy + i * nb, out + i * R, buf);
}
#pragma GCC pop_options

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
// A prompt: tiles of RT weight rows spread over the threads; each tile unpacked once into a buffer of the thread's
// own (the unpacked vectors of R rows: at most R·(2·nb + 16)·64 bytes), then every activation row meets it. Each
// row's arithmetic is the one-row kernel's, in its order: the same bits as a decode step of that row alone.
template <int F, bool WIDE>
void nibble_prompt(const uint8_t* Q, const uint32_t* H, const uint16_t* D, const uint16_t* Mn, const QX& qx,
                   int64_t M, int64_t N, int64_t K, float* Y) {
  const int64_t nb = K / QK;
  at::parallel_for(0, (N + RT - 1) / RT, std::max<int64_t>(1, 16384 / (RT * K * M)), [&](int64_t t0, int64_t t1) {
    std::vector<uint8_t> buf(RT * (2 * nb + 16) * 64);
    std::vector<float> out(M * RT);
    auto tile = [&](auto R, int64_t row) {
      constexpr int r = decltype(R)::value;
      const uint8_t* q = Q + row * (K / 2);
      const uint32_t* h = H ? H + row * nb : nullptr;
      const uint16_t *d = D + row * nb, *m = Mn ? Mn + row * nb : nullptr;
      if constexpr (WIDE)
        q4_1_tile_512<r, F>(q, h, d, m, K, qx.q.data(), qx.d.data(), qx.s.data(), M, out.data(), (__m512i*)buf.data());
      else
        q4_1_tile<r, F>(q, h, d, m, K, qx.q.data(), qx.d.data(), qx.s.data(), M, out.data(), (__m256i*)buf.data());
    };
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t * RT, left = std::min<int64_t>(RT, N - n);
      if (left == RT) {
        tile(std::integral_constant<int, RT>{}, n);
        for (int64_t i = 0; i < M; ++i)
          for (int r = 0; r < RT; ++r) Y[i * N + n + r] = out[i * RT + r];
      } else {
        for (int64_t r = 0; r < left; ++r) {
          tile(std::integral_constant<int, 1>{}, n + r);
          for (int64_t i = 0; i < M; ++i) Y[i * N + n + r] = out[i];
        }
      }
    }
  });
}

// The operators of the three formats: checks, the activations rounded once (in the layout of the ISA's variant),
// then the tiles.
template <int F>
at::Tensor nibble_linear(const char* op, at::Tensor x, at::Tensor qs, const at::Tensor* qh, at::Tensor d,
                         const at::Tensor* m) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              op, ": x must be a contiguous CPU float32 (M, K) tensor");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % QK == 0 && K > 0, op, ": K=", K, " is not a positive multiple of 32");
  TORCH_CHECK(qs.dim() == 2 && qs.scalar_type() == at::kByte && qs.is_contiguous() && qs.size(1) == K / 2,
              op, ": qs must be contiguous uint8 (N, K/2)");
  const int64_t N = qs.size(0), nb = K / QK;
  auto blocks = [&](const at::Tensor& t, at::ScalarType dt) {
    return t.scalar_type() == dt && t.is_contiguous() && t.dim() == 2 && t.size(0) == N && t.size(1) == nb;
  };
  TORCH_CHECK(blocks(d, at::kHalf) && (!m || blocks(*m, at::kHalf)), op,
              ": d (and m) must be contiguous float16 (N, K/32)");
  TORCH_CHECK(!qh || blocks(*qh, at::kInt), op, ": qh must be contiguous int32 (N, K/32)");
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const bool wide = llama_lit::current_isa() == llama_lit::AVX512;
  QX qx = quantize_x(x.data_ptr<float>(), M, K, true, wide ? 4 : 2);
  const uint8_t* Q = qs.data_ptr<uint8_t>();
  const uint32_t* H = qh ? (const uint32_t*)qh->data_ptr<int32_t>() : nullptr;
  const uint16_t* D = (const uint16_t*)d.data_ptr<at::Half>();
  const uint16_t* Mn = m ? (const uint16_t*)m->data_ptr<at::Half>() : nullptr;
  float* Y = y.data_ptr<float>();
  if (M > 1) {                           // a prompt: each tile unpacked once, then met by every activation row
    (wide ? nibble_prompt<F, true> : nibble_prompt<F, false>)(Q, H, D, Mn, qx, M, N, K, Y);
    return y;
  }
  over_row_tiles(M, N, std::max<int64_t>(1, 16384 / (RT * K)), Y, [&](auto R, int64_t n, int64_t i, float* out) {
    constexpr int r = decltype(R)::value;
    auto rows = [&](auto kernel) {
      kernel(Q + n * (K / 2), H ? H + n * nb : nullptr, D + n * nb, Mn ? Mn + n * nb : nullptr, K,
             qx.q.data() + i * K, qx.d.data() + i * nb, qx.s.data() + i * nb, out);
    };
    if (wide) rows([](auto... a) { q4_1_rows_512<r, F>(a...); });
    else rows([](auto... a) { q4_1_rows<r, F>(a...); });
  });
  return y;
}

at::Tensor q4_1_linear(at::Tensor x, at::Tensor qs, at::Tensor d, at::Tensor m) {
  return nibble_linear<Q4_1F>("q4_1_linear", x, qs, nullptr, d, &m);
}
at::Tensor q5_1_linear(at::Tensor x, at::Tensor qs, at::Tensor qh, at::Tensor d, at::Tensor m) {
  return nibble_linear<Q5_1F>("q5_1_linear", x, qs, &qh, d, &m);
}
at::Tensor q5_0_linear(at::Tensor x, at::Tensor qs, at::Tensor qh, at::Tensor d) {
  return nibble_linear<Q5_0F>("q5_0_linear", x, qs, &qh, d, nullptr);
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

// ---- section: q8_0_rows_avx512 ----
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
// Q8_0 on 512-bit registers, two blocks per load. vpdpbusd wants one operand unsigned: w + 128 (w XOR 0x80) is,
// and Σ (w + 128)·y = Σ w·y + 128·Σ y, so each int32 lane starts from -128·(its four y's sum), itself a vpdpbusd
// of 0x80 bytes by y, once per block pair for all R rows: exact integers, no sign tricks per row.
// One pair of blocks (or, FULL false, a row's odd last block: half a register) for R rows.
template <int R, bool FULL>
__attribute__((always_inline)) inline void q8_0_pair_512(const int8_t* __restrict qs, int64_t K, int64_t b, int p,
                                                         const int8_t* __restrict qy, const __m512* scl, __m512* acc) {
  const __m512i off = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
  const __mmask64 bytes = FULL ? ~0ULL : 0xFFFFFFFFULL;
  const __m512i y = FULL ? _mm512_loadu_si512(qy + b * QK) : _mm512_maskz_loadu_epi8(bytes, qy + b * QK);
  const __m512i corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, off, y));   // -128·Σ y per lane
  const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(p),                         // lanes 0-7: block p, 8-15: p+1
                                       _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
  for (int r = 0; r < R; ++r) {
    _mm_prefetch((const char*)(qs + (QPF * R + r) * K + b * QK), _MM_HINT_T0);   // one line: this pair's 64 bytes
    const int8_t* wp = qs + r * K + b * QK;
    const __m512i wr = FULL ? _mm512_loadu_si512(wp) : _mm512_maskz_loadu_epi8(bytes, wp);
    const __m512i dot = _mm512_dpbusd_epi32(corr, _mm512_xor_si512(wr, off), y);
    const __m512 sc = _mm512_permutexvar_ps(idx, scl[r]);
    acc[r] = FULL ? _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r])
                  : _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r], 0x00FF);
  }
}

template <int R>
void q8_0_rows_512(const int8_t* __restrict qs, const uint16_t* __restrict dw, int64_t K,
                   const int8_t* __restrict qy, const float* __restrict dy, float* __restrict out) {
  const int64_t nb = K / QK;
  __m512 acc[R], scl[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t c0 = 0; c0 < nb; c0 += 16) {
    const int cnt = (int)std::min<int64_t>(16, nb - c0);
    const __mmask16 km = cnt == 16 ? 0xFFFF : (1u << cnt) - 1;
    const __m512 dy16 = _mm512_maskz_loadu_ps(km, dy + c0);
    for (int r = 0; r < R; ++r)
      scl[r] = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, dw + r * nb + c0)), dy16);
    int p = 0;
    for (; p + 2 <= cnt; p += 2) q8_0_pair_512<R, true>(qs, K, c0 + p, p, qy, scl, acc);
    if (p < cnt) q8_0_pair_512<R, false>(qs, K, c0 + p, p, qy, scl, acc);
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
}
#pragma GCC pop_options

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
  const bool wide = llama_lit::current_isa() == llama_lit::AVX512;
  over_row_tiles(M, N, std::max<int64_t>(1, 8192 / (RT * K)), Y, [&](auto R, int64_t n, int64_t i, float* out) {
    auto rows = wide ? q8_0_rows_512<decltype(R)::value> : q8_0_rows<decltype(R)::value>;
    rows(Q + n * K, D + n * nb, K, qx.q.data() + i * K, qx.d.data() + i * nb, out);
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

// The line(s) holding 16 weights from p on, into the cache ahead of their use (never faults, even past the end).
template <typename W> inline void wf_prefetch(const W* p) {
  _mm_prefetch((const char*)p, _MM_HINT_T0);
  if (sizeof(W) * 16 > 64) _mm_prefetch((const char*)p + 64, _MM_HINT_T0);
}

// R weight rows against MX activation rows (x rows K apart): out[m * R + r] = x_m . w_r. Each 8 weights are widened
// once and meet all MX rows, so a prompt's rows share the widening; one accumulator per (m, r), the same order of
// sums whatever MX is, so a row's result never depends on the rows beside it in the batch.
template <typename W, int R, int MX>
inline void wf_rows(const W* __restrict w, int64_t K, const float* __restrict x, float* __restrict out) {
  __m256 acc[MX][R];
  for (int m = 0; m < MX; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 8) {                            // K is a multiple of 8
    __m256 xv[MX];
    for (int m = 0; m < MX; ++m) xv[m] = _mm256_loadu_ps(x + m * K + k);
    for (int r = 0; r < R; ++r) {
      if (k % 16 == 0) wf_prefetch(w + (QPF * R + r) * K + k);  // the row QPF tiles ahead
      const __m256 wv = load8(w + r * K + k);
      for (int m = 0; m < MX; ++m) acc[m][r] = _mm256_fmadd_ps(wv, xv[m], acc[m][r]);
    }
  }
  for (int m = 0; m < MX; ++m)
    for (int r = 0; r < R; ++r) out[m * R + r] = hsum8(acc[m][r]);
}

// ---- section: float_rows_avx512 ----
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
// The same with 16 floats per register; a row's last 8 (K is a multiple of 8) through masked loads of 8.
template <typename W> inline __m512 load16(const W* p);
template <> inline __m512 load16<float>(const float* p) { return _mm512_loadu_ps(p); }
template <> inline __m512 load16<at::BFloat16>(const at::BFloat16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
template <> inline __m512 load16<at::Half>(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
}
template <typename W> inline __m512 load16_first8(const W* p);             // 8 weights, the upper 8 lanes zero
template <> inline __m512 load16_first8<float>(const float* p) { return _mm512_maskz_loadu_ps(0xFF, p); }
template <> inline __m512 load16_first8<at::BFloat16>(const at::BFloat16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(0xFF, p)), 16));
}
template <> inline __m512 load16_first8<at::Half>(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(0xFF, p));
}

template <typename W, int R, int MX>
void wf_rows_512(const W* __restrict w, int64_t K, const float* __restrict x, float* __restrict out) {
  __m512 acc[MX][R];
  for (int m = 0; m < MX; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 xv[MX];
    for (int m = 0; m < MX; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k);
    for (int r = 0; r < R; ++r) {
      wf_prefetch(w + (QPF * R + r) * K + k);                     // the row QPF tiles ahead
      const __m512 wv = load16(w + r * K + k);
      for (int m = 0; m < MX; ++m) acc[m][r] = _mm512_fmadd_ps(wv, xv[m], acc[m][r]);
    }
  }
  if (k < K) {                                                     // the last 8
    __m512 xv[MX];
    for (int m = 0; m < MX; ++m) xv[m] = _mm512_maskz_loadu_ps(0xFF, x + m * K + k);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = load16_first8(w + r * K + k);
      for (int m = 0; m < MX; ++m) acc[m][r] = _mm512_fmadd_ps(wv, xv[m], acc[m][r]);
    }
  }
  for (int m = 0; m < MX; ++m)
    for (int r = 0; r < R; ++r) out[m * R + r] = _mm512_reduce_add_ps(acc[m][r]);
}
#pragma GCC pop_options

// ---- section: float_linear ----
// Tiles of RT weight rows spread over the threads; in each, the activation rows MX at a time (4 with AVX-512's 32
// registers, 2 with AVX2's 16), the rest one by one through the same order of sums; the last tile's rows one by one.
template <typename W, int R, int MX>
void wf_tile(bool wide, const W* w, int64_t K, const float* x, float* out) {
  (wide ? wf_rows_512<W, R, MX> : wf_rows<W, R, MX>)(w, K, x, out);
}

template <typename W>
void wf_linear_impl(const float* X, const W* Wt, float* Y, int64_t M, int64_t N, int64_t K) {
  const bool wide = llama_lit::current_isa() == llama_lit::AVX512;
  const int64_t mx = wide ? 4 : 2;
  at::parallel_for(0, (N + RT - 1) / RT, std::max<int64_t>(1, 8192 / (RT * K * std::max<int64_t>(M, 1))),
                   [&](int64_t t0, int64_t t1) {
    float tmp[4 * RT];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t * RT, left = std::min<int64_t>(RT, N - n);
      for (int64_t r0 = 0; r0 < left; r0 += (left == RT ? RT : 1)) {      // a whole tile, or the last rows singly
        const int64_t nr = left == RT ? RT : 1;
        for (int64_t i = 0; i < M;) {
          const int64_t m = nr == RT && M - i >= mx ? mx : 1;             // a single weight row: one x row
          const W* w = Wt + (n + r0) * K;
          if (nr == RT && m == 4) wf_tile<W, RT, 4>(wide, w, K, X + i * K, tmp);
          else if (nr == RT && m == 2) wf_tile<W, RT, 2>(wide, w, K, X + i * K, tmp);
          else if (nr == RT) wf_tile<W, RT, 1>(wide, w, K, X + i * K, tmp);
          else wf_tile<W, 1, 1>(wide, w, K, X + i * K, tmp);
          for (int64_t a = 0; a < m; ++a)
            for (int64_t r = 0; r < nr; ++r) Y[(i + a) * N + n + r0 + r] = tmp[a * nr + r];
          i += m;
        }
      }
    }
  });
}

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
  lib.def("q5_0_linear(Tensor x, Tensor qs, Tensor qh, Tensor d) -> Tensor");
  lib.def("q5_1_linear(Tensor x, Tensor qs, Tensor qh, Tensor d, Tensor m) -> Tensor");
  lib.def("q8_0_linear(Tensor x, Tensor qs, Tensor d) -> Tensor");
  lib.def("float_linear(Tensor x, Tensor w) -> Tensor");
  lib.def("quantize_act(Tensor x) -> (Tensor, Tensor, Tensor)");
  lib.def("set_isa(int isa) -> int", &set_isa);   // no tensors: a catch-all kernel, not a CPU one
}

TORCH_LIBRARY_IMPL(llama_lit, CPU, lib) {
  lib.impl("q4_1_linear", &q4_1_linear);
  lib.impl("q5_0_linear", &q5_0_linear);
  lib.impl("q5_1_linear", &q5_1_linear);
  lib.impl("q8_0_linear", &q8_0_linear);
  lib.impl("float_linear", &float_linear);
  lib.impl("quantize_act", &quantize_act);
}
