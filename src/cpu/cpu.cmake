# CPU backend sources. The library is built for baseline x86-64 and picks the
# SIMD level at run time (cpu_isa.cpp); only the per-ISA kernel files below get
# wider -m flags, and they are entered only after the CPU check.
set(MMKIT_CPU_DIR ${CMAKE_CURRENT_LIST_DIR})
set(MMKIT_CPU_BASE_SOURCES
  ${MMKIT_CPU_DIR}/cpu_common.cpp
  ${MMKIT_CPU_DIR}/cpu_isa.cpp
  ${MMKIT_CPU_DIR}/qmm_cpu.cpp
  ${MMKIT_CPU_DIR}/gemm_cpu.cpp
  ${MMKIT_CPU_DIR}/quantize_cpu.cpp
  ${MMKIT_CPU_DIR}/gemm_driver.cpp
  ${MMKIT_CPU_DIR}/qmm_fast.cpp
  ${MMKIT_CPU_DIR}/gemm_fast.cpp
  ${MMKIT_CPU_DIR}/quantize_fast.cpp)
set(MMKIT_CPU_AVX512_SOURCES ${MMKIT_CPU_DIR}/qmm_avx512.cpp ${MMKIT_CPU_DIR}/gemm_avx512.cpp
                             ${MMKIT_CPU_DIR}/quantize_avx512.cpp)
set(MMKIT_CPU_AVX512BF16_SOURCES ${MMKIT_CPU_DIR}/qmm_avx512bf16.cpp)
set(MMKIT_CPU_AVX512VNNI_SOURCES ${MMKIT_CPU_DIR}/qmm_avx512vnni.cpp)
set(MMKIT_CPU_AVX2_SOURCES ${MMKIT_CPU_DIR}/qmm_avx2.cpp ${MMKIT_CPU_DIR}/gemm_avx2.cpp
                           ${MMKIT_CPU_DIR}/quantize_avx2.cpp)
target_sources(mmkit PRIVATE ${MMKIT_CPU_BASE_SOURCES} ${MMKIT_CPU_AVX512_SOURCES} ${MMKIT_CPU_AVX512BF16_SOURCES}
                             ${MMKIT_CPU_AVX512VNNI_SOURCES}
                             ${MMKIT_CPU_AVX2_SOURCES})

if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  # F + BW + VL + DQ is the avx512 level cpu_isa.cpp checks for. VNNI only in its
  # own file (qmm_avx512vnni.cpp), entered after its own CPU check.
  # -fno-tree-loop-distribute-patterns: GCC otherwise turns the stores of
  # transposed registers into memcpy calls whose rep-movsb stores stall the
  # loads that follow.
  set_source_files_properties(${MMKIT_CPU_AVX512_SOURCES} PROPERTIES
    COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mfma;-mf16c;-mavx2;$<$<CXX_COMPILER_ID:GNU>:-fno-tree-loop-distribute-patterns>")
  # AVX512_BF16 (vdpbf16ps) only in its own file, entered after its own CPU check.
  set_source_files_properties(${MMKIT_CPU_AVX512BF16_SOURCES} PROPERTIES
    COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512bf16;-mfma;-mf16c;-mavx2;$<$<CXX_COMPILER_ID:GNU>:-fno-tree-loop-distribute-patterns>")
  set_source_files_properties(${MMKIT_CPU_AVX512VNNI_SOURCES} PROPERTIES
    COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni;-mfma;-mf16c;-mavx2;$<$<CXX_COMPILER_ID:GNU>:-fno-tree-loop-distribute-patterns>")
  set_source_files_properties(${MMKIT_CPU_AVX2_SOURCES} PROPERTIES
    COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;$<$<CXX_COMPILER_ID:GNU>:-fno-tree-loop-distribute-patterns>")
endif()
