# CPU backend sources. Kernels for a specific ISA get their -m flags per file
# here; the library as a whole is built for baseline x86-64 and picks the ISA
# at run time.
file(GLOB MMKIT_CPU_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.cpp)
target_sources(mmkit PRIVATE ${MMKIT_CPU_SOURCES})
