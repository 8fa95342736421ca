# libFuzzer targets (tests/fuzz/): clang only. Everything built after this file is included (the
# library included) gets coverage instrumentation and ASan + UBSan, so the fuzzer sees edges
# inside the parsers; only the fuzz targets themselves link libFuzzer (-fsanitize=fuzzer).
# DIFFPROBE_FUZZING makes the library read files into exact-size heap buffers instead of mapping
# them (src/io/mapped_file.cpp), so a read past the end of a file is an ASan report rather than a
# read of the mapping's zero padding.
if(DIFFPROBE_BUILD_FUZZERS)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "DIFFPROBE_BUILD_FUZZERS needs clang (libFuzzer); use the 'fuzz' preset (clang++ from Debian)")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
                      -fno-omit-frame-pointer)
  add_compile_definitions(DIFFPROBE_FUZZING=1)
  add_link_options(-fsanitize=address,undefined)
endif()
