// The dynamic loss scaler (optim/loss_scaler.h) against its rule written out step by step: growth after the
// interval, backoff from the hysteresis-th overflow in a row, the floor, and a state round trip that continues
// exactly as the original.
#include <gtest/gtest.h>

#include "kolos/core/error.h"
#include "kolos/optim/loss_scaler.h"

namespace kolos {
namespace {

optim::LossScaler make(double init, int64_t interval, int64_t hysteresis) {
  optim::LossScalerOptions o;
  o.init_scale = init;
  o.growth_interval = interval;
  o.hysteresis = hysteresis;
  return optim::LossScaler(o);
}

TEST(LossScaler, GrowsByTwoAfterTheIntervalOfGoodSteps) {
  auto s = make(8, 3, 1);
  EXPECT_TRUE(s.update(false));
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 8);
  EXPECT_EQ(s.good_steps(), 2);
  EXPECT_TRUE(s.update(false));  // the third good step in a row
  EXPECT_EQ(s.scale(), 16);
  EXPECT_EQ(s.good_steps(), 0);
  for (int i = 0; i < 3; ++i) s.update(false);
  EXPECT_EQ(s.scale(), 32);
  EXPECT_EQ(s.skipped_steps(), 0);
}

TEST(LossScaler, OverflowSkipsAndRestartsTheGrowthCount) {
  auto s = make(8, 3, 1);
  s.update(false);
  s.update(false);
  EXPECT_FALSE(s.update(true));  // skipped, and halved at once (hysteresis 1)
  EXPECT_EQ(s.scale(), 4);
  EXPECT_EQ(s.good_steps(), 0);
  s.update(false);
  s.update(false);
  EXPECT_EQ(s.scale(), 4);  // two good steps since the overflow: not yet
  s.update(false);
  EXPECT_EQ(s.scale(), 8);
  EXPECT_EQ(s.skipped_steps(), 1);
}

TEST(LossScaler, BacksOffFromTheHysteresisThOverflowInARow) {
  auto s = make(1024, 100, 3);
  EXPECT_FALSE(s.update(true));
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 1024);  // tolerated: 2 overflows in a row < 3
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 512);   // the third
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 256);   // and every further one in the same run
  EXPECT_EQ(s.overflows_in_a_row(), 4);
  EXPECT_TRUE(s.update(false));  // a good step ends the run
  EXPECT_EQ(s.overflows_in_a_row(), 0);
  EXPECT_FALSE(s.update(true));
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 256);   // a new run: tolerated again
  EXPECT_EQ(s.skipped_steps(), 6);
}

TEST(LossScaler, NeverBelowOne) {
  auto s = make(2, 10, 1);
  s.update(true);
  EXPECT_EQ(s.scale(), 1);
  s.update(true);
  EXPECT_EQ(s.scale(), optim::LossScaler::kMinScale);
}

TEST(LossScaler, StateRoundTripContinuesIdentically) {
  auto a = make(4096, 4, 2);
  for (bool overflow : {false, false, true, false, true, true, false, false, false}) a.update(overflow);
  // Through text, as in a checkpoint's state.json.
  const nlohmann::json saved = nlohmann::json::parse(a.state().dump());
  auto b = make(65536, 4, 2);  // another initial scale: the state overrides it
  b.load_state(saved, "test");
  EXPECT_EQ(b.scale(), a.scale());
  EXPECT_EQ(b.good_steps(), a.good_steps());
  EXPECT_EQ(b.overflows_in_a_row(), a.overflows_in_a_row());
  EXPECT_EQ(b.skipped_steps(), a.skipped_steps());
  for (bool overflow : {false, true, true, true, false, false, false, false, false}) {
    EXPECT_EQ(a.update(overflow), b.update(overflow));
    EXPECT_EQ(a.scale(), b.scale());
  }
  nlohmann::json broken = saved;
  broken.erase("scale");
  EXPECT_THROW(b.load_state(broken, "test"), InputError);
  broken = saved;
  broken["scale"] = -1.0;
  EXPECT_THROW(b.load_state(broken, "test"), InputError);
}

TEST(LossScaler, BadOptionsNameTheirConfigKey) {
  auto expect_key = [](double init, int64_t interval, int64_t hysteresis, const std::string& key) {
    try {
      make(init, interval, hysteresis);
      ADD_FAILURE() << "no error for " << key;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  expect_key(0, 10, 1, "train.loss_scale_init");
  expect_key(8, 0, 1, "train.loss_scale_growth_interval");
  expect_key(8, 10, 0, "train.loss_scale_hysteresis");
}

}  // namespace
}  // namespace kolos
