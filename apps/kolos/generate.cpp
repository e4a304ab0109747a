// kolos generate: samples text from a checkpoint.
#include "apps/kolos/commands.h"
#include "kolos/checkpoint/checkpoint.h"
#include "kolos/config/config.h"
#include "kolos/core/error.h"
#include "kolos/data/tokenizer.h"
#include "kolos/models/model.h"
#include "kolos/train/generate.h"
#include "kolos/train/trainer.h"

namespace kolos::app {

int generate_main(int argc, char** argv) {
  CLI::App app{"Sample text from a checkpoint (a checkpoints/step_N directory or a run directory).", "generate"};
  std::string checkpoint_path, prompt, data_dir;
  train::SampleOptions o;
  o.temperature = 0.8;
  o.top_k = 40;
  app.add_option("--checkpoint", checkpoint_path, "checkpoint directory, or run directory (its latest checkpoint)")->required();
  app.add_option("--prompt", prompt, "text to continue")->required();
  app.add_option("--tokens", o.tokens, "number of tokens to generate (default 100)")->check(CLI::PositiveNumber);
  app.add_option("--temperature", o.temperature, "sampling temperature, 0 = greedy (default 0.8)")->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", o.top_k, "sample among the k most likely tokens, 0 = all (default 40)")->check(CLI::NonNegativeNumber);
  app.add_option("--seed", o.seed, "random seed (default 0)");
  app.add_option("--data", data_dir, "token directory whose tokenizer to use (default: the checkpoint's data.path)");
  if (!parse_args(app, argc, argv)) return 0;

  std::string dir;
  checkpoint::CheckpointData ckpt = checkpoint::load_checkpoint(checkpoint_path, &dir);
  Config config;
  apply_toml(config, ckpt.config_toml, dir + "/config.toml");
  validate(config);
  train::configure_threads(config.train.threads);
  auto model = models::Model::create(config.model);
  std::vector<at::Tensor> tensors;
  for (const auto& spec : model->param_specs()) {
    auto it = ckpt.model.find(spec.name);
    KOLOS_CHECK(it != ckpt.model.end(), "checkpoint {}: model.safetensors lacks parameter {}", dir, spec.name);
    KOLOS_CHECK(it->second.sizes().vec() == spec.shape && it->second.scalar_type() == at::kFloat,
                "checkpoint {}: parameter {} has the wrong shape or dtype", dir, spec.name);
    tensors.push_back(it->second);
  }
  model->bind_params(std::move(tensors));
  auto tokenizer = data::load_tokenizer(data_dir.empty() ? config.data.path : data_dir);
  KOLOS_CHECK(tokenizer->vocab_size() <= config.model.vocab,
              "--data: the tokenizer has {} tokens but the model's vocabulary is {}", tokenizer->vocab_size(),
              config.model.vocab);
  std::vector<int32_t> ids = train::sample(*model, tokenizer->encode(prompt), o);
  std::printf("%s%s\n", prompt.c_str(), tokenizer->decode(ids).c_str());
  return 0;
}

}  // namespace kolos::app
