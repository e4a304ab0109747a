#include "kolos/train/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "kolos/core/error.h"

namespace kolos::train {

std::vector<int32_t> sample(models::Model& model, const std::vector<int32_t>& prompt, const SampleOptions& o) {
  KOLOS_CHECK(!prompt.empty(), "generate: the prompt encodes to no tokens; give a non-empty --prompt");
  KOLOS_CHECK(o.temperature >= 0, "generate: --temperature must be >= 0, got {}", o.temperature);
  KOLOS_CHECK(o.top_k >= 0, "generate: --top-k must be >= 0, got {}", o.top_k);
  at::NoGradGuard no_grad;
  const bool was_training = model.training();
  model.set_training(false);
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  const int64_t ctx_len = model.config().seq_len;
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  std::vector<int32_t> out;
  for (int64_t i = 0; i < o.tokens; ++i) {
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(ids.size()) - ctx_len);
    at::Tensor ctx = at::from_blob(ids.data() + start, {1, static_cast<int64_t>(ids.size()) - start}, at::kLong).clone();
    at::Tensor logits = model.forward(ctx).select(1, ctx.size(1) - 1).squeeze(0).to(at::kDouble);
    int64_t next = 0;
    if (o.temperature == 0) {
      next = logits.argmax().item<int64_t>();
    } else {
      logits = logits / o.temperature;
      if (o.top_k > 0 && o.top_k < logits.size(0)) {
        const double kth = std::get<0>(logits.topk(o.top_k)).min().item<double>();
        logits.masked_fill_(logits < kth, -std::numeric_limits<double>::infinity());
      }
      at::Tensor probs = at::softmax(logits, 0);
      next = at::multinomial(probs, 1, false, gen).item<int64_t>();
    }
    ids.push_back(next);
    out.push_back(static_cast<int32_t>(next));
  }
  model.set_training(was_training);
  return out;
}

}  // namespace kolos::train
