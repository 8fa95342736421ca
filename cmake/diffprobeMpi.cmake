# Decides whether the diffprobe tool links MPI, from DIFFPROBE_WITH_MPI:
#   ON    link it; configuring fails when no MPI is found
#   OFF   no MPI: shards come from --shard or the launcher's environment
#   AUTO  link it when found (Debian: libopenmpi-dev)
# (C API through the CXX component: the project enables only C++.) The library never links MPI. Sets DIFFPROBE_MPI_ENABLED.
string(TOUPPER "${DIFFPROBE_WITH_MPI}" _dp_mpi)
if(NOT _dp_mpi MATCHES "^(ON|OFF|AUTO|TRUE|FALSE|YES|NO|1|0)$")
  message(FATAL_ERROR "DIFFPROBE_WITH_MPI must be AUTO, ON or OFF, not '${DIFFPROBE_WITH_MPI}'")
endif()
set(DIFFPROBE_MPI_ENABLED OFF)
if(_dp_mpi MATCHES "^(ON|TRUE|YES|1)$")
  find_package(MPI REQUIRED COMPONENTS CXX)
  set(DIFFPROBE_MPI_ENABLED ON)
elseif(_dp_mpi STREQUAL "AUTO" AND DIFFPROBE_BUILD_CLI)
  find_package(MPI QUIET COMPONENTS CXX)
  set(DIFFPROBE_MPI_ENABLED ${MPI_CXX_FOUND})
endif()
if(DIFFPROBE_MPI_ENABLED)
  message(STATUS "diffprobe: MPI ON for the diffprobe tool (${MPI_CXX_LIBRARIES})")
else()
  message(STATUS "diffprobe: MPI OFF (shards from --shard or the launcher's environment)")
endif()
unset(_dp_mpi)
