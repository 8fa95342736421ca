# The install test (ctest label "install"). This one file has two roles:
#  - included from tests/CMakeLists.txt, it registers the test, which runs this file with `cmake -P`;
#  - run with `cmake -P`, it installs the current build into a scratch prefix, checks that no
#    absolute source/build/prefix path leaks into the installed CMake files, moves the prefix
#    elsewhere (the package must be relocatable), then configures, builds and runs
#    examples/consumer against the moved prefix and against the exported build tree, with the
#    same generator and compiler as this build.
if(NOT CMAKE_SCRIPT_MODE_FILE)
  add_test(NAME install.consumer
    COMMAND ${CMAKE_COMMAND}
      -DDP_SOURCE_DIR=${PROJECT_SOURCE_DIR}
      -DDP_BUILD_DIR=${PROJECT_BINARY_DIR}
      -DDP_WORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/install-test
      -DDP_GENERATOR=${CMAKE_GENERATOR}
      -DDP_MAKE_PROGRAM=${CMAKE_MAKE_PROGRAM}
      -DDP_CXX_COMPILER=${CMAKE_CXX_COMPILER}
      -DDP_CONFIG=$<CONFIG>
      -P ${CMAKE_CURRENT_LIST_FILE})
  set_tests_properties(install.consumer PROPERTIES LABELS install TIMEOUT 900)
  return()
endif()

cmake_minimum_required(VERSION 3.25)
foreach(var DP_SOURCE_DIR DP_BUILD_DIR DP_WORK_DIR DP_GENERATOR DP_CXX_COMPILER)
  if(NOT ${var})
    message(FATAL_ERROR "install test: ${var} is not set")
  endif()
endforeach()

# Runs a command; stops the test with its output when it fails.
function(dp_run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install test: ${what} failed (${rc}):\n${out}")
  endif()
  set(dp_output "${out}" PARENT_SCOPE)
endfunction()

set(config_args)
set(build_type_arg)
if(DP_CONFIG)
  set(config_args --config ${DP_CONFIG})
  set(build_type_arg -DCMAKE_BUILD_TYPE=${DP_CONFIG})
endif()
set(make_program_arg)
if(DP_MAKE_PROGRAM)
  set(make_program_arg -DCMAKE_MAKE_PROGRAM=${DP_MAKE_PROGRAM})
endif()

# Builds examples/consumer against one diffprobe package and runs it. `where` must be a prefix of
# the diffprobe_DIR the consumer ends up using, so a stray copy elsewhere cannot pass the test.
function(dp_consume name where)
  set(bin ${DP_WORK_DIR}/${name})
  dp_run("configuring the consumer (${name})" ${CMAKE_COMMAND} -S ${DP_SOURCE_DIR}/examples/consumer -B ${bin}
    -G ${DP_GENERATOR} ${make_program_arg} -DCMAKE_CXX_COMPILER=${DP_CXX_COMPILER} ${build_type_arg}
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF ${ARGN})
  file(STRINGS ${bin}/CMakeCache.txt found REGEX "^diffprobe_DIR:")
  string(REGEX REPLACE "^diffprobe_DIR:[A-Z]+=" "" found "${found}")
  if(NOT found)
    message(FATAL_ERROR "install test: the consumer (${name}) recorded no diffprobe_DIR")
  endif()
  file(REAL_PATH "${found}" found)
  file(REAL_PATH "${where}" where)
  string(FIND "${found}/" "${where}/" at)
  if(NOT at EQUAL 0)
    message(FATAL_ERROR "install test: the consumer (${name}) found diffprobe in ${found}, not under ${where}")
  endif()
  dp_run("building the consumer (${name})" ${CMAKE_COMMAND} --build ${bin} ${config_args})
  set(exe ${bin}/diffprobe_consumer)
  if(DP_CONFIG AND EXISTS ${bin}/${DP_CONFIG}/diffprobe_consumer)
    set(exe ${bin}/${DP_CONFIG}/diffprobe_consumer)  # multi-config generators
  endif()
  dp_run("running the consumer (${name})" ${exe})
  message(STATUS "consumer (${name}, diffprobe from ${found}):\n${dp_output}")
endfunction()

file(REMOVE_RECURSE ${DP_WORK_DIR})
set(prefix ${DP_WORK_DIR}/staged)
dp_run("cmake --install" ${CMAKE_COMMAND} --install ${DP_BUILD_DIR} --prefix ${prefix} ${config_args})

file(GLOB_RECURSE config_file ${prefix}/*/diffprobeConfig.cmake)
if(NOT config_file)
  message(FATAL_ERROR "install test: no diffprobeConfig.cmake under ${prefix}")
endif()
foreach(needed diffprobeConfigVersion.cmake diffprobeTargets.cmake)
  get_filename_component(dir "${config_file}" DIRECTORY)
  if(NOT EXISTS ${dir}/${needed})
    message(FATAL_ERROR "install test: ${needed} is not installed next to ${config_file}")
  endif()
endforeach()
if(NOT EXISTS ${prefix}/include/diffprobe/diffprobe.hpp)
  message(FATAL_ERROR "install test: the umbrella header include/diffprobe/diffprobe.hpp is not installed")
endif()

# Relocatable: no installed CMake file may name the source tree, the build tree or the prefix.
file(GLOB_RECURSE cmake_files ${prefix}/*.cmake)
foreach(f ${cmake_files})
  file(READ ${f} text)
  foreach(path ${DP_SOURCE_DIR} ${DP_BUILD_DIR} ${prefix})
    string(FIND "${text}" "${path}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "install test: ${f} contains the absolute path ${path}")
    endif()
  endforeach()
endforeach()

# Move the prefix; the consumer must find and use the package at its new place.
set(moved ${DP_WORK_DIR}/moved/prefix)
file(MAKE_DIRECTORY ${DP_WORK_DIR}/moved)
file(RENAME ${prefix} ${moved})
dp_consume(consumer-installed ${moved} -DCMAKE_PREFIX_PATH=${moved})

# The build tree exports the same targets.
dp_consume(consumer-build-tree ${DP_BUILD_DIR} -Ddiffprobe_DIR=${DP_BUILD_DIR})
