// `kolos bench comm`: achieved bandwidth of all-reduce, all-gather and reduce-scatter over the world group, for
// message sizes from --min-size to --max-size (default 1 KiB to 256 MiB, growing by 4×), with --in-place the forms
// that work in place on a Comm::shared_zeros buffer. Run it under a launcher:
// `kolos run -n 2 -- kolos bench comm`. Rank 0 prints a table and one JSON line last.
//
// For a message of M bytes (the all-reduce buffer, the reduce-scatter input, the all-gather output) taking t
// seconds: algbw = M / t, busbw = algbw × f with f = 2(n−1)/n for all-reduce and (n−1)/n for the others
// (yardsticks §5, the nccl-tests convention), so busbw compares with the link bandwidth whatever n is.
#pragma once

namespace kolos::dist {

int bench_comm_main(int argc, char** argv);

}  // namespace kolos::dist
