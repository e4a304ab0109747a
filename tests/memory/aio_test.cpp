// The async IO engine against its contract: data written at aligned offsets reads back byte for byte on both
// backends, depth requests in flight at most, unaligned requests refused as bad input, a full disk (a tiny tmpfs,
// or a file size limit) is InputError naming the path.
#include <gtest/gtest.h>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <vector>

#include "kolos/core/error.h"
#include "kolos/memory/aio.h"
#include "kolos/memory/swap_space.h"
#include "tests/support.h"

namespace kolos::memory {
namespace {

void fill_random(AlignedBuffer& buffer, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto* words = reinterpret_cast<uint64_t*>(buffer.data());
  for (int64_t i = 0; i < buffer.bytes() / 8; ++i) words[i] = rng();
}

// An engine of the backend under test, or nullptr when that backend is io_uring and the kernel refuses it
// (`why` says so: the test reports a skip, never a pass).
std::unique_ptr<AioEngine> make_engine(AioBackend backend, int depth, std::string* why) {
  AioOptions options;
  options.backend = backend;
  options.queue_depth = depth;
  try {
    return std::make_unique<AioEngine>(options);
  } catch (const InputError& e) {
    if (backend != AioBackend::kUring) throw;
    *why = e.what();
    return nullptr;
  }
}

class AioBackends : public ::testing::TestWithParam<AioBackend> {};

#define MAKE_ENGINE_OR_SKIP(engine, depth)                                     \
  std::string why_unavailable;                                                 \
  auto engine = make_engine(GetParam(), depth, &why_unavailable);              \
  if (engine == nullptr) GTEST_SKIP() << "io_uring unavailable: " << why_unavailable; \
  ASSERT_EQ(engine->backend(), GetParam())

TEST_P(AioBackends, RoundTripAtSeveralOffsets) {
  MAKE_ENGINE_OR_SKIP(engine, 8);
  test::TempDir dir("aio");
  DirectFile file(dir / "data.bin", {true, true});
  EXPECT_TRUE(file.direct()) << "the test directory's filesystem refused O_DIRECT";
  // (offset, bytes): the first block, one block in, across a MiB boundary, a request of several MiB.
  const std::vector<std::pair<int64_t, int64_t>> ranges = {
      {0, 4096}, {4096, 65536}, {(1 << 20) - 8192, (1 << 20) + 4096}, {3 << 20, 3 << 20}};
  file.grow(6 << 20);
  std::vector<AlignedBuffer> written, read;
  int64_t total = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    written.emplace_back(ranges[i].second);
    fill_random(written.back(), 100 + i);
    engine->write(file, ranges[i].first, written.back().data(), ranges[i].second);
    total += ranges[i].second;
  }
  engine->wait_all();
  EXPECT_EQ(engine->bytes_written(), total);
  std::vector<AioTicket> tickets;
  for (size_t i = 0; i < ranges.size(); ++i) {
    read.emplace_back(ranges[i].second);
    std::memset(read.back().data(), 0, read.back().bytes());
    tickets.push_back(engine->read(file, ranges[i].first, read.back().data(), ranges[i].second));
  }
  for (size_t i = ranges.size(); i-- > 0;) engine->wait(tickets[i]);  // any order
  EXPECT_EQ(engine->bytes_read(), total);
  for (size_t i = 0; i < ranges.size(); ++i)
    EXPECT_EQ(std::memcmp(written[i].data(), read[i].data(), ranges[i].second), 0) << "range " << i;
}

TEST_P(AioBackends, ManyRequestsInFlight) {
  constexpr int kDepth = 16, kRequests = 256;
  constexpr int64_t kBytes = 16384;
  MAKE_ENGINE_OR_SKIP(engine, kDepth);
  test::TempDir dir("aio");
  DirectFile file(dir / "data.bin", {true, true});
  AlignedBuffer source(kRequests * kBytes), back(kRequests * kBytes);
  fill_random(source, 7);
  std::memset(back.data(), 0, back.bytes());
  int most_in_flight = 0;
  // Writes in a scrambled order (the file grows as they land), then reads of every block.
  std::vector<int> order(kRequests);
  for (int i = 0; i < kRequests; ++i) order[i] = (i * 37) % kRequests;
  for (int i : order) {
    engine->write(file, i * kBytes, source.data() + i * kBytes, kBytes);
    most_in_flight = std::max(most_in_flight, engine->in_flight());
  }
  engine->wait_all();
  EXPECT_EQ(engine->in_flight(), 0);
  for (int i : order) {
    engine->read(file, i * kBytes, back.data() + i * kBytes, kBytes);
    most_in_flight = std::max(most_in_flight, engine->in_flight());
  }
  engine->wait_all();
  EXPECT_LE(most_in_flight, kDepth);
  EXPECT_GE(most_in_flight, 1);
  EXPECT_EQ(std::memcmp(source.data(), back.data(), source.bytes()), 0);
  EXPECT_EQ(engine->bytes_written(), kRequests * kBytes);
  EXPECT_EQ(engine->bytes_read(), kRequests * kBytes);
  EXPECT_EQ(file.size(), kRequests * kBytes);
}

TEST_P(AioBackends, UnalignedRequestIsBadInput) {
  MAKE_ENGINE_OR_SKIP(engine, 4);
  test::TempDir dir("aio");
  DirectFile file(dir / "data.bin", {true, true});
  AlignedBuffer buffer(16384);
  EXPECT_THROW(engine->write(file, 100, buffer.data(), 4096), InputError);       // offset
  EXPECT_THROW(engine->write(file, 0, buffer.data(), 1000), InputError);         // length
  EXPECT_THROW(engine->write(file, 0, buffer.data() + 8, 4096), InputError);     // address
  EXPECT_THROW(engine->read(file, 0, buffer.data(), 0), InputError);             // empty
  try {
    engine->read(file, 512, buffer.data(), 4096);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(file.path()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("4096"), std::string::npos) << e.what();
  }
  EXPECT_EQ(engine->in_flight(), 0);
  engine->wait_all();  // nothing was queued, nothing fails
}

TEST_P(AioBackends, ReadPastEndIsAnIoError) {
  MAKE_ENGINE_OR_SKIP(engine, 4);
  test::TempDir dir("aio");
  DirectFile file(dir / "data.bin", {true, true});
  file.grow(8192);
  AlignedBuffer buffer(16384);
  const AioTicket t = engine->read(file, 0, buffer.data(), 16384);  // the file ends half way
  try {
    engine->wait(t);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    ADD_FAILURE() << "a short read is not bad input: " << e.what();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(file.path()), std::string::npos) << e.what();
  }
  engine->wait(t);  // already waited: returns, the error was thrown once
  EXPECT_EQ(engine->bytes_read(), 0);
}

TEST_P(AioBackends, BufferedFallbackRoundTrip) {
  MAKE_ENGINE_OR_SKIP(engine, 4);
  test::TempDir dir("aio");
  DirectFile file(dir / "data.bin", {true, /*direct=*/false});
  EXPECT_FALSE(file.direct());
  AlignedBuffer source(1 << 20), back(1 << 20);
  fill_random(source, 3);
  engine->wait(engine->write(file, 8192, source.data(), source.bytes()));
  engine->wait(engine->read(file, 8192, back.data(), back.bytes()));
  EXPECT_EQ(std::memcmp(source.data(), back.data(), source.bytes()), 0);
}

INSTANTIATE_TEST_SUITE_P(Aio, AioBackends, ::testing::Values(AioBackend::kUring, AioBackend::kThreads),
                         [](const auto& info) { return std::string(backend_name(info.param)); });

TEST(Aio, EnvironmentChoosesTheBackend) {
  ::setenv("KOLOS_AIO", "threads", 1);
  {
    AioEngine engine;
    EXPECT_EQ(engine.backend(), AioBackend::kThreads);
  }
  ::setenv("KOLOS_AIO", "io_uring", 1);
  try {
    AioEngine engine;
    ADD_FAILURE() << "KOLOS_AIO=io_uring accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("KOLOS_AIO"), std::string::npos) << e.what();
  }
  ::unsetenv("KOLOS_AIO");
  AioOptions forced;
  forced.backend = AioBackend::kThreads;
  EXPECT_EQ(AioEngine(forced).backend(), AioBackend::kThreads);
}

// In a child process whose seccomp filter answers io_uring_setup with ENOSYS (as container runtimes do), the
// default engine falls back to threads and still moves data; asking for io_uring explicitly is bad input.
TEST(Aio, FallsBackToThreadsWhenIoUringIsRefused) {
  test::TempDir dir("aio");
  const std::string path = dir / "data.bin";
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog program{static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0)
      ::_exit(10);
    try {
      AioEngine engine;
      if (engine.backend() != AioBackend::kThreads || engine.fallback_reason().find("io_uring") == std::string::npos)
        ::_exit(11);
      DirectFile file(path, {true, true});
      AlignedBuffer source(65536), back(65536);
      fill_random(source, 5);
      engine.wait(engine.write(file, 0, source.data(), source.bytes()));
      engine.wait(engine.read(file, 0, back.data(), back.bytes()));
      if (std::memcmp(source.data(), back.data(), source.bytes()) != 0) ::_exit(12);
    } catch (...) {
      ::_exit(13);
    }
    try {
      AioOptions uring;
      uring.backend = AioBackend::kUring;
      AioEngine engine(uring);
      ::_exit(14);
    } catch (const InputError&) {
    } catch (...) {
      ::_exit(15);
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: seccomp refused, 11: no fallback, 12: data differ, 13: threw, "
                                       "14/15: explicit io_uring not refused as bad input";
}

TEST(Aio, AlignedBufferIsAligned) {
  AlignedBuffer b(5000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % kIoAlignment, 0u);
  EXPECT_EQ(b.bytes(), 8192);
  AlignedBuffer moved = std::move(b);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(moved.bytes(), 8192);
  EXPECT_EQ(align_up(1), 4096);
  EXPECT_EQ(align_up(4096), 4096);
}

// ---------------------------------------------------------------------------------------------------------------
// A full disk.

void expect_disk_full(const std::function<void()>& f, const std::string& path) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("disk full"), std::string::npos) << what;
    EXPECT_NE(what.find(path), std::string::npos) << what;
  }
}

// The checks of DiskFullOnATinyTmpfs, run in the child that mounted the tmpfs at `nvme`. Returns "" when all hold,
// else what failed.
std::string check_tiny_tmpfs(const std::string& nvme) {
  std::string failures;
  auto disk_full = [&](const std::function<void()>& f, const std::string& path, const std::string& what) {
    try {
      f();
      failures += what + ": no error; ";
    } catch (const InputError& e) {
      const std::string message = e.what();
      if (message.find("disk full") == std::string::npos || message.find(path) == std::string::npos)
        failures += what + ": message \"" + message + "\"; ";
    } catch (const std::exception& e) {
      failures += what + ": not InputError: " + e.what() + "; ";
    }
  };
  // The swap space grows the file with fallocate: the disk is full at allocation.
  {
    SwapSpace::Options options;
    options.grow_step = 256 << 10;
    SwapSpace space(nvme, options);
    space.allocate(512 << 10);
    disk_full([&] { space.allocate(2 << 20); }, space.path(), "swap space growth");
    if (space.file_bytes() != (512 << 10) || space.file().size() != (512 << 10))
      failures += "the failed growth changed the file's size; ";
    space.allocate(256 << 10);  // what still fits, still does
  }
  // A write into a sparse file finds the disk full mid-request, on either backend.
  for (AioBackend backend : {AioBackend::kUring, AioBackend::kThreads}) {
    std::string why;
    auto engine = make_engine(backend, 4, &why);
    if (engine == nullptr) continue;  // the uring case is reported as skipped by the AioBackends tests
    DirectFile file(nvme + "/sparse.bin", {true, true});
    if (!file.direct()) failures += "this kernel's tmpfs refuses O_DIRECT; ";
    file.truncate(4 << 20);
    AlignedBuffer source(2 << 20);
    fill_random(source, 1);
    const AioTicket t = engine->write(file, 0, source.data(), source.bytes());
    disk_full([&] { engine->wait(t); }, file.path(), std::string("write through ") + backend_name(backend));
    std::filesystem::remove(file.path());
  }
  if (!std::filesystem::is_empty(nvme)) failures += "files left behind; ";
  return failures;
}

// A 1 MiB tmpfs, mounted by a child process in its own mount namespace (needs root or CAP_SYS_ADMIN), so that
// the mount disappears with the child however it ends.
TEST(Aio, DiskFullOnATinyTmpfs) {
  test::TempDir dir("aio");
  const std::string nvme = dir / "tmpfs";
  std::filesystem::create_directories(nvme);
  const std::string report = test::in_private_tmpfs(nvme, "1048576", [&] { return check_tiny_tmpfs(nvme); });
  if (report.rfind("skip: ", 0) == 0) GTEST_SKIP() << report.substr(6) << " (needs root)";
  EXPECT_EQ(report, "");
}

TEST(Aio, FileSizeLimitIsDiskFull) {
  // Works without root: RLIMIT_FSIZE makes writes past 1 MiB fail with EFBIG (and SIGXFSZ, ignored here).
  test::TempDir dir("aio");
  // Restores the limit and the signal's disposition however the test ends.
  struct SizeLimit {
    rlimit old{};
    void (*old_handler)(int) = nullptr;
    explicit SizeLimit(rlim_t bytes) {
      old_handler = ::signal(SIGXFSZ, SIG_IGN);
      ::getrlimit(RLIMIT_FSIZE, &old);
      rlimit tight = old;
      tight.rlim_cur = bytes;
      if (::setrlimit(RLIMIT_FSIZE, &tight) != 0) ADD_FAILURE() << "setrlimit: " << std::strerror(errno);
    }
    ~SizeLimit() {
      ::setrlimit(RLIMIT_FSIZE, &old);
      ::signal(SIGXFSZ, old_handler);
    }
  } limit(1 << 20);
  for (AioBackend backend : {AioBackend::kUring, AioBackend::kThreads}) {
    std::string why;
    auto engine = make_engine(backend, 4, &why);
    if (engine == nullptr) continue;
    DirectFile file(dir / fmt::format("{}.bin", backend_name(backend)), {true, true});
    AlignedBuffer source(2 << 20);
    fill_random(source, 2);
    const AioTicket t = engine->write(file, 0, source.data(), source.bytes());
    expect_disk_full([&] { engine->wait(t); }, file.path());
  }
  {
    SwapSpace space(dir.path(), {});
    expect_disk_full([&] { space.allocate(4 << 20); }, space.path());
  }
}

}  // namespace
}  // namespace kolos::memory
