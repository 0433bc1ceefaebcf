// ---- section: isa ----
// Which vector width the kernels run, for every kernel file of the library: chosen once by
// llama_lit.kernels.load_kernels (from what the CPU reports, ATEN_CPU_CAPABILITY and LLAMA_LIT_KERNELS_ISA) and set
// through the op llama_lit::set_isa; each kernel reads it and calls its AVX2 or its AVX-512 variant.
#pragma once

namespace llama_lit {
enum Isa : int { AVX2 = 0, AVX512 = 1 };   // AVX512: avx512f + bw + vl + vnni (vpdpbusd on 512-bit registers)
int& current_isa();                          // defined in kernels.cpp; AVX2 until set_isa says otherwise
}  // namespace llama_lit
