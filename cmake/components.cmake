# libmoex is built as one static library per layer so that each layer builds and tests alone.
function(moex_component name)
  cmake_parse_arguments(C "" "" "DIRS;DEPS" ${ARGN})
  set(sources)
  foreach(dir ${C_DIRS})
    file(GLOB_RECURSE found CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/${dir}/*.cpp)
    list(APPEND sources ${found})
  endforeach()
  if(sources)
    add_library(${name} STATIC ${sources})
    target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/src)
    target_link_libraries(${name} PUBLIC ${C_DEPS})
  else()  # a layer with no sources yet
    add_library(${name} INTERFACE)
    target_include_directories(${name} INTERFACE ${PROJECT_SOURCE_DIR}/src)
    target_link_libraries(${name} INTERFACE ${C_DEPS})
  endif()
endfunction()

moex_component(moex_core DIRS core DEPS)
target_sources(moex_core PRIVATE ${PROJECT_SOURCE_DIR}/src/backend/buffer.cpp)

moex_component(moex_tokenizer DIRS model/tokenizer DEPS moex_core nlohmann_json::nlohmann_json)
if(NOT "${PCRE2_LIBRARY}" STREQUAL "")
  get_target_property(tokenizer_type moex_tokenizer TYPE)
  if(tokenizer_type STREQUAL "STATIC_LIBRARY")
    target_include_directories(moex_tokenizer PRIVATE ${PCRE2_INCLUDE_DIR})
    target_compile_definitions(moex_tokenizer PRIVATE PCRE2_CODE_UNIT_WIDTH=8)
    target_link_libraries(moex_tokenizer PUBLIC ${PCRE2_LIBRARY})
  endif()
endif()

# Unicode normalization (NFC etc.) for tokenizer normalizers: Debian libutf8proc-dev.
find_path(UTF8PROC_INCLUDE_DIR utf8proc.h REQUIRED)
find_library(UTF8PROC_LIBRARY NAMES utf8proc libutf8proc.a libutf8proc.so.2 REQUIRED)
get_target_property(tokenizer_type2 moex_tokenizer TYPE)
if(tokenizer_type2 STREQUAL "STATIC_LIBRARY")
  target_include_directories(moex_tokenizer PRIVATE ${UTF8PROC_INCLUDE_DIR})
  target_link_libraries(moex_tokenizer PUBLIC ${UTF8PROC_LIBRARY})
endif()

moex_component(moex_weights DIRS model/weights model/config DEPS moex_core nlohmann_json::nlohmann_json)

moex_component(moex_cpu DIRS backend/cpu DEPS moex_core OpenMP::OpenMP_CXX)

if(MOEX_WITH_CUDA)
  file(GLOB_RECURSE cuda_sources CONFIGURE_DEPENDS
       ${PROJECT_SOURCE_DIR}/src/backend/cuda/*.cpp ${PROJECT_SOURCE_DIR}/src/backend/cuda/*.cu
       ${PROJECT_SOURCE_DIR}/src/kernels/*.cu)
  add_library(moex_cuda STATIC ${cuda_sources})
  target_include_directories(moex_cuda PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(moex_cuda PUBLIC moex_core CUDA::cudart_static CUDA::cublasLt)
  target_compile_options(moex_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
  set_target_properties(moex_cuda PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
  target_compile_definitions(moex_cuda PUBLIC MOEX_WITH_CUDA=1)
else()
  add_library(moex_cuda STATIC ${PROJECT_SOURCE_DIR}/src/backend/cuda_unavailable.cpp)
  target_include_directories(moex_cuda PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(moex_cuda PUBLIC moex_core)
endif()

# Model code: forward passes and loading (talks to backends only through backend/backend.h).
file(GLOB model_sources CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/model/*.cpp
     ${PROJECT_SOURCE_DIR}/src/model/archs/*.cpp)
if(model_sources)
  add_library(moex_model STATIC ${model_sources})
  target_include_directories(moex_model PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(moex_model PUBLIC moex_weights moex_tokenizer moex_core)
else()
  add_library(moex_model INTERFACE)
  target_link_libraries(moex_model INTERFACE moex_weights moex_tokenizer moex_core)
endif()

moex_component(moex_runtime DIRS runtime DEPS moex_model moex_cpu moex_cuda)

# The whole library.
add_library(moex_lib INTERFACE)
target_link_libraries(moex_lib INTERFACE moex_runtime moex_model moex_weights moex_tokenizer moex_cpu moex_cuda moex_core)

# Benchmarks and operator test sets (`moex bench ...`, `moex test-set ...`).
file(GLOB_RECURSE bench_sources CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/bench/*.cpp)
if(MOEX_WITH_CUDA)
  file(GLOB_RECURSE bench_cuda_sources CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/bench/*.cu)
  list(APPEND bench_sources ${bench_cuda_sources})
endif()
if(bench_sources)
  add_library(moex_bench STATIC ${bench_sources})
  target_include_directories(moex_bench PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(moex_bench PUBLIC moex_runtime moex_model moex_cpu moex_cuda moex_core nlohmann_json::nlohmann_json)
else()
  add_library(moex_bench INTERFACE)
endif()
target_link_libraries(moex_lib INTERFACE moex_bench)
