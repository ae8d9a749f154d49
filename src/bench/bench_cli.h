// Entry points of `moex bench ...` and `moex test-set ...` (called by tools/moex). argv[0] is
// the subcommand name. Both return the process exit code: 0 success, 1 a failed check or case,
// 2 bad flags or an error; they print a one-line error and never call exit().
#pragma once

namespace moex {

int bench_main(int argc, char** argv);
int test_set_main(int argc, char** argv);

}  // namespace moex
