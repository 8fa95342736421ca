#pragma once
// MPI for `diffprobe extract` under mpirun / srun: only the command-line tool links MPI (option
// DIFFPROBE_WITH_MPI), the library never does. Without MPI in the build, or when the process was
// not started by an MPI launcher, the session is inactive and shards are read from the
// launcher's environment (detect_launch) or --shard.
namespace diffprobe::cli {

class MpiSession {
 public:
  /// Initialises MPI when the tool was built with it and the process has an MPI launcher.
  MpiSession();
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  bool active() const noexcept { return active_; }
  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  /// True when every rank passes true (a collective: every rank must call it).
  bool all(bool ok) const;
  /// Rank 0's value, on every rank (collective).
  bool broadcast(bool value) const;

 private:
  bool active_ = false;
  int rank_ = 0, size_ = 1;
};

/// Whether this build of the tool has MPI.
bool built_with_mpi() noexcept;

}  // namespace diffprobe::cli
