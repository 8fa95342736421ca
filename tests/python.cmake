# The Python module's pytest suite (tests/python), label "python": one ctest test per test file,
# run by the interpreter the module was built for, importing the module from the build tree.
# The GIL test times two threads against one, so it runs alone (RUN_SERIAL).
if(TARGET diffprobe_python AND DIFFPROBE_PYTHON_EXECUTABLE)
  execute_process(COMMAND ${DIFFPROBE_PYTHON_EXECUTABLE} -c "import pytest, numpy"
    RESULT_VARIABLE _dp_pytest_rc OUTPUT_QUIET ERROR_QUIET)
  if(NOT _dp_pytest_rc EQUAL 0)
    message(STATUS "diffprobe: Python tests off (${DIFFPROBE_PYTHON_EXECUTABLE} lacks pytest or numpy: bash scripts/setup.sh)")
    return()
  endif()
  file(GLOB _dp_py_tests CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/python/test_*.py)
  set(_dp_py_env "PYTHONPATH=${DIFFPROBE_PYTHON_DIR}" "PYTHONDONTWRITEBYTECODE=1")
  if(TARGET diffprobe_cli)
    list(APPEND _dp_py_env "DIFFPROBE_CLI=$<TARGET_FILE:diffprobe_cli>")
  endif()
  foreach(f ${_dp_py_tests})
    get_filename_component(name ${f} NAME_WE)
    add_test(NAME python.${name}
      COMMAND ${DIFFPROBE_PYTHON_EXECUTABLE} -m pytest -q -p no:cacheprovider ${f}
      WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/python)
    set_tests_properties(python.${name} PROPERTIES LABELS python ENVIRONMENT "${_dp_py_env}" TIMEOUT 300)
  endforeach()
  if(TEST python.test_gil)
    set_tests_properties(python.test_gil PROPERTIES RUN_SERIAL TRUE)
  endif()
endif()
