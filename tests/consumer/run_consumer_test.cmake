# run_consumer_test.cmake: configure, build and run one consumer project (cmake -P script).
#
# Required -D variables:
#   ASYPPO_SOURCE_DIR      asyppo source tree (for add_subdirectory / FetchContent consumers)
#   CONSUMER_SOURCE_DIR    the consumer project to build
#   WORK_DIR               scratch directory, wiped first
#   CONSUMER_GENERATOR, CONSUMER_MAKE_PROGRAM, CONSUMER_CXX_COMPILER, CONSUMER_BUILD_TYPE
# Optional:
#   INSTALL_FROM           asyppo build tree: `cmake --install` it into WORK_DIR/prefix first
#                          and let the consumer find it through CMAKE_PREFIX_PATH.
cmake_minimum_required(VERSION 3.25)

foreach(_var ASYPPO_SOURCE_DIR CONSUMER_SOURCE_DIR WORK_DIR CONSUMER_GENERATOR CONSUMER_CXX_COMPILER)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer_test.cmake: -D${_var}=... is required")
  endif()
endforeach()
if("${CONSUMER_BUILD_TYPE}" STREQUAL "")
  set(CONSUMER_BUILD_TYPE Release)
endif()

# Runs a command, echoing it, and stops the script with its output if it fails.
function(run_step what)
  message(STATUS "[consumer] ${what}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "[consumer] ${what} failed (${_rc})")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
set(_build_dir ${WORK_DIR}/build)

set(_configure_args
  -S ${CONSUMER_SOURCE_DIR} -B ${_build_dir}
  -G ${CONSUMER_GENERATOR}
  -DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}
  -DCMAKE_BUILD_TYPE=${CONSUMER_BUILD_TYPE})
if(CONSUMER_MAKE_PROGRAM)
  list(APPEND _configure_args -DCMAKE_MAKE_PROGRAM=${CONSUMER_MAKE_PROGRAM})
endif()

if(DEFINED INSTALL_FROM AND NOT "${INSTALL_FROM}" STREQUAL "")
  set(_prefix ${WORK_DIR}/prefix)
  run_step("install" ${CMAKE_COMMAND} --install ${INSTALL_FROM}
           --prefix ${_prefix} --config ${CONSUMER_BUILD_TYPE})
  # Search only the temporary prefix, so that a system-wide asyppo cannot be picked up.
  list(APPEND _configure_args -DCMAKE_PREFIX_PATH=${_prefix}
       -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
else()
  list(APPEND _configure_args -DASYPPO_SOURCE_DIR=${ASYPPO_SOURCE_DIR})
endif()

run_step("configure" ${CMAKE_COMMAND} ${_configure_args})

if(DEFINED _prefix)
  # Check that the package really came from the temporary prefix.
  file(STRINGS ${_build_dir}/CMakeCache.txt _asyppo_dir REGEX "^asyppo_DIR:")
  string(REGEX REPLACE "^asyppo_DIR:[A-Z]+=" "" _asyppo_dir "${_asyppo_dir}")
  string(FIND "${_asyppo_dir}" "${_prefix}/" _pos)
  if(NOT _pos EQUAL 0)
    message(FATAL_ERROR "[consumer] asyppo was found in '${_asyppo_dir}', not under '${_prefix}'")
  endif()
  message(STATUS "[consumer] asyppo_DIR = ${_asyppo_dir}")
endif()

run_step("build" ${CMAKE_COMMAND} --build ${_build_dir} --config ${CONSUMER_BUILD_TYPE})

# Single-config generators put the program in the build dir, multi-config ones in <config>/.
set(_exe ${_build_dir}/asyppo_consumer)
if(NOT EXISTS ${_exe})
  set(_exe ${_build_dir}/${CONSUMER_BUILD_TYPE}/asyppo_consumer)
endif()
run_step("run" ${_exe})
