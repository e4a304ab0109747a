// `kolos bench train`: the training-step benchmark (argv[0] is "train", as for the commands in apps/kolos).
#pragma once

namespace kolos::train { int bench_train_main(int argc, char** argv); }
