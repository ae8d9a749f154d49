// Runs the moex binary and captures its exit code, stdout and stderr.
#pragma once
#include <string>

namespace moex::test {

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// `args` is appended to the binary path as-is (shell syntax).
CliResult run_moex(const std::string& args);
std::string moex_binary();
// A fresh empty directory under the system temp dir.
std::string make_temp_dir(const std::string& tag);
void write_file(const std::string& path, const std::string& text);
std::string read_file(const std::string& path);

}  // namespace moex::test
