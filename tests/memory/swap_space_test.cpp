// The swap space's extents: first fit, reuse of freed space, coalescing, growth, data kept apart per extent, and
// the file gone when the space is.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "kolos/core/error.h"
#include "kolos/memory/swap_space.h"
#include "tests/support.h"

namespace kolos::memory {
namespace {

constexpr int64_t kB = kIoAlignment;

SwapSpace::Options step(int64_t grow_step, int rank = 0) {
  SwapSpace::Options o;
  o.grow_step = grow_step;
  o.rank = rank;
  return o;
}

TEST(SwapSpace, AllocateFreeReuseCoalesce) {
  test::TempDir dir("swap");
  SwapSpace space(dir.path(), step(64 * kB));
  const SwapExtent a = space.allocate(100);  // rounded up to one block
  const SwapExtent b = space.allocate(2 * kB);
  const SwapExtent c = space.allocate(kB);
  EXPECT_EQ(a.offset, 0);
  EXPECT_EQ(a.bytes, kB);
  EXPECT_EQ(b.offset, kB);
  EXPECT_EQ(c.offset, 3 * kB);
  EXPECT_EQ(space.file_bytes(), 64 * kB);  // one grow step
  EXPECT_EQ(space.file().size(), 64 * kB);
  EXPECT_EQ(space.used_bytes(), 4 * kB);
  EXPECT_EQ(space.free_extent_count(), 1);  // the tail

  space.free(b);  // a hole between a and c
  EXPECT_EQ(space.free_extent_count(), 2);
  const SwapExtent b2 = space.allocate(kB);  // first fit: the hole
  EXPECT_EQ(b2.offset, kB);
  const SwapExtent d = space.allocate(2 * kB);  // no longer fits in the hole's rest: after c
  EXPECT_EQ(d.offset, 4 * kB);
  space.free(b2);
  EXPECT_EQ(space.free_extent_count(), 2);  // [1, 3) and the tail after d

  // Freeing a and c merges [0, 4) into one range; freeing d merges it with the tail.
  space.free(a);
  space.free(c);
  EXPECT_EQ(space.free_extent_count(), 2);
  space.free(d);
  EXPECT_EQ(space.free_extent_count(), 1);
  EXPECT_EQ(space.used_bytes(), 0);
  // The whole file is one free range again: an extent of all of it fits without growing.
  const SwapExtent all = space.allocate(64 * kB);
  EXPECT_EQ(all.offset, 0);
  EXPECT_EQ(space.file_bytes(), 64 * kB);
  space.free(all);
}

TEST(SwapSpace, GrowsUsingTheFreeTail) {
  test::TempDir dir("swap");
  SwapSpace space(dir.path(), step(16 * kB));
  const SwapExtent a = space.allocate(10 * kB);
  EXPECT_EQ(space.file_bytes(), 16 * kB);
  // 6 blocks free at the end; 20 more need the file to reach 10 + 20 = 30 blocks, which beats one step (32).
  const SwapExtent b = space.allocate(20 * kB);
  EXPECT_EQ(b.offset, 10 * kB);
  EXPECT_EQ(space.file_bytes(), 32 * kB);
  // A request larger than a step starts in the free tail (blocks 30, 31) and grows the file by exactly the rest.
  const SwapExtent c = space.allocate(100 * kB);
  EXPECT_EQ(c.offset, 30 * kB);
  EXPECT_EQ(space.file_bytes(), 130 * kB);
  EXPECT_EQ(space.file().size(), 130 * kB);
  EXPECT_EQ(space.free_extent_count(), 0);
  space.free(a);
  space.free(b);
  space.free(c);
  EXPECT_EQ(space.free_extent_count(), 1);
}

TEST(SwapSpace, FreeingWhatWasNotAllocatedIsAnInternalError) {
  test::TempDir dir("swap");
  SwapSpace space(dir.path(), step(16 * kB));
  const SwapExtent a = space.allocate(kB);
  EXPECT_THROW(space.free({a.offset, 2 * kB}), std::logic_error);
  space.free(a);
  EXPECT_THROW(space.free(a), std::logic_error);  // twice
}

TEST(SwapSpace, ExtentsKeepTheirData) {
  test::TempDir dir("swap");
  SwapSpace space(dir.path(), step(16 * kB));
  AioOptions options;
  options.backend = AioBackend::kThreads;  // both backends are covered by the engine's own tests
  AioEngine engine(options);
  std::vector<SwapExtent> extents;
  std::vector<AlignedBuffer> sources;
  for (int i = 0; i < 6; ++i) {
    extents.push_back(space.allocate((i + 1) * 5000));
    sources.emplace_back(extents.back().bytes);
    std::memset(sources.back().data(), 'a' + i, sources.back().bytes());
    engine.write(space.file(), extents.back().offset, sources.back().data(), extents.back().bytes);
  }
  engine.wait_all();
  for (int i = 0; i < 6; ++i) {
    AlignedBuffer back(extents[i].bytes);
    engine.wait(engine.read(space.file(), extents[i].offset, back.data(), back.bytes()));
    EXPECT_EQ(std::memcmp(back.data(), sources[i].data(), back.bytes()), 0) << "extent " << i;
  }
  EXPECT_EQ(engine.bytes_written(), space.used_bytes());
}

TEST(SwapSpace, FileNamedForThisProcessAndRemovedAtDestruction) {
  test::TempDir dir("swap");
  const std::string nvme = dir / "nvme/nested";  // created on demand
  std::string path;
  {
    SwapSpace space(nvme, step(16 * kB, /*rank=*/3));
    path = space.path();
    space.allocate(kB);
    EXPECT_TRUE(std::filesystem::exists(path));
    const std::string name = std::filesystem::path(path).filename().string();
    EXPECT_NE(name.find(fmt::format("pid{}", ::getpid())), std::string::npos) << name;
    EXPECT_NE(name.find("rank3"), std::string::npos) << name;
    SwapSpace second(nvme, step(16 * kB, 3));  // a second space in the same process gets its own file
    EXPECT_NE(second.path(), path);
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_TRUE(std::filesystem::is_empty(nvme));
}

TEST(SwapSpace, RemovedAtExitWhenNeverDestroyed) {
  test::TempDir dir("swap");
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto* leaked = new SwapSpace(dir.path(), step(16 * kB));
    leaked->allocate(kB);
    const bool exists = std::filesystem::exists(leaked->path());
    (void)!::write(pipe_fds[1], exists ? "1" : "0", 1);
    std::exit(0);  // runs atexit handlers, not the SwapSpace's destructor
  }
  char exists = '?';
  EXPECT_EQ(::read(pipe_fds[0], &exists, 1), 1);
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(exists, '1');
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(SwapSpace, RemovedWhenTheProcessIsTerminated) {
  // `kolos bench train` has no handler of its own: SIGTERM (and SIGINT, SIGHUP) must not leave a swap file of the
  // model's size behind. The process still dies of the signal.
  for (int sig : {SIGTERM, SIGINT}) {
    test::TempDir dir("swap");
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {  // inherits the handler if this process installed it already
      SwapSpace space(dir.path(), step(16 * kB));
      space.allocate(kB);
      if (!std::filesystem::exists(space.path())) std::_Exit(7);
      ::kill(::getpid(), sig);
      std::_Exit(8);  // not reached
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig) << "signal " << sig << ", status " << status;
    EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "signal " << sig;
  }
}

TEST(SwapSpace, DirectoryThatCannotBeCreatedIsBadInput) {
  test::TempDir dir("swap");
  { std::ofstream(dir / "file") << "x"; }
  try {
    SwapSpace space(dir / "file", {});
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("memory.nvme_path"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kolos::memory
