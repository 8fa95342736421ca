#include "cli/mpi_session.hpp"

#include "diffprobe/features/extraction_job.hpp"

#if DIFFPROBE_WITH_MPI
#include <mpi.h>
#endif

namespace diffprobe::cli {

bool built_with_mpi() noexcept { return DIFFPROBE_WITH_MPI != 0; }

MpiSession::MpiSession() {
#if DIFFPROBE_WITH_MPI
  if (detect_launch().launcher.empty()) return;  // a plain process: no MPI singleton start-up
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized && MPI_Init(nullptr, nullptr) != MPI_SUCCESS) return;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  active_ = true;
#endif
}

MpiSession::~MpiSession() {
#if DIFFPROBE_WITH_MPI
  if (active_) MPI_Finalize();
#endif
}

bool MpiSession::all(bool ok) const {
#if DIFFPROBE_WITH_MPI
  if (active_) {
    int in = ok ? 1 : 0, out = 0;
    MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return out != 0;
  }
#endif
  return ok;
}

bool MpiSession::broadcast(bool value) const {
#if DIFFPROBE_WITH_MPI
  if (active_) {
    int v = value ? 1 : 0;
    MPI_Bcast(&v, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return v != 0;
  }
#endif
  return value;
}

}  // namespace diffprobe::cli
