#include "e2e/cli_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace moex::test {

std::string moex_binary() { return std::string(MOEX_BINARY_DIR) + "/tools/moex"; }

std::string make_temp_dir(const std::string& tag) {
  std::random_device rd;
  const auto dir = std::filesystem::temp_directory_path() /
                   ("moex-" + tag + "-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
  std::filesystem::create_directories(dir);
  return dir.string();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

CliResult run_moex(const std::string& args) {
  const std::string dir = make_temp_dir("cli");
  const std::string out = dir + "/out", err = dir + "/err";
  const std::string cmd = moex_binary() + " " + args + " >" + out + " 2>" + err + " </dev/null";
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out);
  r.err = read_file(err);
  std::filesystem::remove_all(dir);
  return r;
}

}  // namespace moex::test
