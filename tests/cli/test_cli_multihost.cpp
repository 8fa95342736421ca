// `mpirun` across two hosts joined by TCP: two network namespaces of this machine linked by a
// veth pair stand in for two machines with a shared file system (the test's folder). Open MPI
// starts the remote rank through tests/cli/netns_rsh.sh (its ssh stand-in), the ranks talk over
// 10.x addresses on the veth pair only (oob and btl restricted to that subnet), and the file they
// write equals the one-process file byte for byte. Needs root and `ip netns`; skips saying why
// otherwise.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "cli/run_cli.hpp"

namespace fs = std::filesystem;
using cli_test::Result;
using cli_test::run;

namespace {

const std::string kData = "/usr/share/datasets/fashion-mnist/";
const std::string kModel = std::string(DIFFPROBE_SOURCE_DIR) + "/models/fmnist_default.safetensors";

std::string q(const fs::path& p) { return cli_test::quote(p.string()); }

std::string bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

int sh(const std::string& cmd) { return std::system(cmd.c_str()); }

// Two namespaces A and B joined by a veth pair on 10.77.S.0/24; removed on destruction.
struct TwoHosts {
  std::string a, b, ip_a, ip_b, subnet, why_not;
  TwoHosts() {
    const int id = static_cast<int>(::getpid() % 200) + 20;
    a = "dpA" + std::to_string(::getpid());
    b = "dpB" + std::to_string(::getpid());
    subnet = "10.77." + std::to_string(id) + ".0/24";
    ip_a = "10.77." + std::to_string(id) + ".1";
    ip_b = "10.77." + std::to_string(id) + ".2";
    if (::geteuid() != 0) {
      why_not = "network namespaces need root";
      return;
    }
    if (sh("command -v ip > /dev/null 2>&1") != 0) {
      why_not = "no `ip` (iproute2)";
      return;
    }
    const std::string va = "dpa" + std::to_string(id), vb = "dpb" + std::to_string(id);
    const std::string setup = "ip netns add " + a + " && ip netns add " + b + " && ip link add " + va +
                              " type veth peer name " + vb + " && ip link set " + va + " netns " + a +
                              " && ip link set " + vb + " netns " + b + " && ip -n " + a + " addr add " +
                              ip_a + "/24 dev " + va + " && ip -n " + b + " addr add " + ip_b + "/24 dev " +
                              vb + " && ip -n " + a + " link set " + va + " up && ip -n " + b + " link set " +
                              vb + " up && ip -n " + a + " link set lo up && ip -n " + b + " link set lo up";
    if (sh(setup + " > /dev/null 2>&1") != 0)
      why_not = "cannot create network namespaces here (ip netns add failed)";
  }
  ~TwoHosts() { sh("ip netns del " + a + " > /dev/null 2>&1; ip netns del " + b + " > /dev/null 2>&1"); }
};

}  // namespace

TEST(MultiHost, MpirunOverTcpBetweenTwoNamespacesEqualsOneProcess) {
  ASSERT_EQ(sh("command -v mpirun > /dev/null 2>&1"), 0) << "bash scripts/setup.sh installs openmpi-bin";
  const TwoHosts hosts;
  if (!hosts.why_not.empty()) GTEST_SKIP() << hosts.why_not;
  const fs::path dir = fs::path(DIFFPROBE_BINARY_DIR) / ("cli_test_multihost_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string args = "extract --weights " + q(kModel) + " --input " + kData +
                           "t10k-images-idx3-ubyte.gz --labels " + kData +
                           "t10k-labels-idx1-ubyte.gz --t 50 --blocks 4,9 --pool avg:2 --batch 32 --chunk 64 "
                           "--limit 256 --threads 1 --out ";
  const Result one = run(args + q(dir / "one.safetensors"));
  ASSERT_EQ(one.code, 0) << one.out;

  const fs::path log = dir / "mpirun.log", launched = dir / "launched.txt";
  const std::string env = "DP_NETNS_MAP=" + hosts.ip_a + "=" + hosts.a + "," + hosts.ip_b + "=" + hosts.b +
                          " DP_NETNS_LOG=" + q(launched) + " ";
  const std::string cmd =
      env + "timeout 300 ip netns exec " + hosts.a + " mpirun --allow-run-as-root -np 2 -H " + hosts.ip_a +
      ":1," + hosts.ip_b + ":1 --mca plm_rsh_agent " +
      q(fs::path(DIFFPROBE_SOURCE_DIR) / "tests/cli/netns_rsh.sh") + " --mca oob_tcp_if_include " +
      hosts.subnet + " --mca btl_tcp_if_include " + hosts.subnet + " --mca btl tcp,self " +
      std::string(DIFFPROBE_CLI) + " " + args + q(dir / "two_hosts.safetensors") + " > " + q(log) + " 2>&1";
  const int rc = sh(cmd);
  ASSERT_EQ(rc, 0) << bytes(log);
  EXPECT_NE(bytes(launched).find(hosts.ip_b + " " + hosts.b), std::string::npos)
      << "the second rank was not started in the second namespace:\n"
      << bytes(launched);
  EXPECT_NE(bytes(log).find("shard 1/2"), std::string::npos) << bytes(log);
  EXPECT_EQ(bytes(dir / "two_hosts.safetensors"), bytes(dir / "one.safetensors"));
  fs::remove_all(dir);
}
