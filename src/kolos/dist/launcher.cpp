#include "kolos/dist/launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cstring>
#include <optional>
#include <stdexcept>

#include "kolos/core/error.h"

extern char** environ;

namespace kolos::dist {

namespace {

using Clock = std::chrono::steady_clock;

// The variables kolos run sets in each rank; inherited values of the same names are dropped.
const char* const kRankVariables[] = {"RANK",        "WORLD_SIZE",  "LOCAL_RANK", "LOCAL_WORLD_SIZE",   "GROUP_RANK",
                                      "MASTER_ADDR", "MASTER_PORT", "KOLOS_RUN",  "KOLOS_RESTART_COUNT"};

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

void write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // a closed terminal or pipe: nothing better to do with the output
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
}

void say(const std::string& line) {
  const std::string text = "kolos run: " + line + "\n";
  write_all(STDERR_FILENO, text.data(), text.size());
}

// An exit status as the shell reports it: the exit code, or 128 + the signal number.
int shell_status(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 1;
}

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

Fd open_or_throw(const char* path, int flags) {
  const int fd = ::open(path, flags | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(fmt::format("kolos run: cannot open {}: {}", path, std::strerror(errno)));
  return Fd(fd);
}

// Blocks the signals kolos run acts on and hands them out through a signalfd, so that the poll loop sees them in
// order with the children's output. Ignores SIGPIPE (a closed stdout must not kill the launcher and orphan the
// ranks). The destructor restores both.
class SignalInbox {
 public:
  SignalInbox() {
    sigemptyset(&set_);
    for (int sig : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) sigaddset(&set_, sig);
    pthread_sigmask(SIG_BLOCK, &set_, &old_mask_);
    fd_ = Fd(signalfd(-1, &set_, SFD_NONBLOCK | SFD_CLOEXEC));
    if (fd_.get() < 0) {
      pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
      throw std::runtime_error(fmt::format("kolos run: signalfd failed: {}", std::strerror(errno)));
    }
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ignore, &old_pipe_);
  }
  ~SignalInbox() {
    fd_.reset();
    sigaction(SIGPIPE, &old_pipe_, nullptr);
    pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  SignalInbox(const SignalInbox&) = delete;
  SignalInbox& operator=(const SignalInbox&) = delete;

  int fd() const { return fd_.get(); }

  // The signals received since the last call, in order (SIGCHLD included).
  std::vector<int> take() {
    std::vector<int> signals;
    signalfd_siginfo info;
    while (::read(fd_.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info))
      signals.push_back(static_cast<int>(info.ssi_signo));
    return signals;
  }

  // What a child must restore between fork and exec (async-signal-safe).
  void restore_in_child() const {
    sigaction(SIGPIPE, &old_pipe_, nullptr);
    sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
  }

 private:
  sigset_t set_;
  sigset_t old_mask_;
  struct sigaction old_pipe_ {};
  Fd fd_;
};

// One rank's stdout or stderr under --tee: bytes are collected until a newline, then written as one prefixed line.
struct TeeStream {
  Fd fd;           // read end of the rank's pipe; closed at EOF
  int target = 1;  // STDOUT_FILENO or STDERR_FILENO
  std::string prefix;
  std::string pending;  // bytes after the last newline

  static constexpr size_t kMaxLine = 64 * 1024;  // a longer line is cut (each piece still whole and prefixed)

  void emit(size_t end) {  // writes pending[0, end) as one line, with a newline added when missing
    std::string line = prefix;
    line.append(pending, 0, end);
    if (line.back() != '\n') line += '\n';
    write_all(target, line.data(), line.size());
    pending.erase(0, end);
  }

  // Reads what is available; returns false at EOF (the stream is then flushed and closed).
  bool pump() {
    char buffer[65536];
    const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    if (n <= 0) {
      if (!pending.empty()) emit(pending.size());
      fd.reset();
      return false;
    }
    pending.append(buffer, static_cast<size_t>(n));
    for (size_t newline; (newline = pending.find('\n')) != std::string::npos;) emit(newline + 1);
    while (pending.size() >= kMaxLine) emit(kMaxLine);
    return true;
  }
};

struct RankProcess {
  int rank = 0;
  pid_t pid = -1;  // also the id of its process group
  bool alive = false;
  int wait_status = 0;
};

// One start of the whole local group: forks the ranks, forwards signals, relays output and reaps. The destructor
// SIGKILLs and reaps whatever is still running, so no path out of an attempt leaves a process behind.
class Attempt {
 public:
  struct Result {
    bool failed = false;       // a rank exited non-zero or was killed (not after a forwarded signal)
    int interrupt_signal = 0;  // the first SIGINT/SIGTERM/SIGHUP forwarded, 0 when none
    int exit_code = 0;         // for kolos run when not failed: the first non-zero rank status, else 0
  };

  Attempt(const LauncherOptions& options, std::string master_addr, int master_port, int restart,
          SignalInbox& inbox)
      : options_(options), master_addr_(std::move(master_addr)), master_port_(master_port), restart_(restart),
        inbox_(inbox) {}

  ~Attempt() {
    for (auto& r : ranks_) {
      if (r.pid <= 0) continue;
      ::kill(-r.pid, SIGKILL);
      if (r.alive) {
        while (::waitpid(r.pid, &r.wait_status, 0) < 0 && errno == EINTR) {
        }
        r.alive = false;
      }
    }
  }

  Attempt(const Attempt&) = delete;
  Attempt& operator=(const Attempt&) = delete;

  Result run() {
    for (int local = 0; local < options_.nproc_per_node; ++local) start_rank(local);
    while (any_alive()) {
      wait_for_events(std::chrono::milliseconds(100));
      handle_signals();
      reap();
      if (kill_deadline_ && Clock::now() >= *kill_deadline_) {
        signal_all(SIGKILL);
        kill_deadline_.reset();
      }
    }
    // Every rank has been reaped: end what they left behind, reap what was orphaned to us (kolos run is a child
    // subreaper) and read the rest of the output. Bounded, in case something left its process group.
    signal_all(SIGKILL);
    const auto drain_end = Clock::now() + std::chrono::seconds(2);
    bool orphans = true;
    while ((orphans || any_stream_open()) && Clock::now() < drain_end) {
      orphans = reap_orphans();
      if (orphans || any_stream_open()) wait_for_events(std::chrono::milliseconds(orphans ? 10 : 100));
      handle_signals();
    }
    for (auto& s : streams_)
      if (s.fd.get() >= 0 && !s.pending.empty()) s.emit(s.pending.size());
    streams_.clear();

    Result result;
    result.failed = failed_;
    result.interrupt_signal = interrupt_signal_;
    for (const auto& r : ranks_) {
      const int status = shell_status(r.wait_status);
      if (status != 0) {
        result.exit_code = status;
        break;
      }
    }
    return result;
  }

 private:
  void start_rank(int local) {
    const int rank = options_.node_rank * options_.nproc_per_node + local;
    const int world_size = options_.nnodes * options_.nproc_per_node;

    // Everything the child needs is built before fork: between fork and exec only async-signal-safe calls.
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
      const std::string entry = *e;
      const std::string name = entry.substr(0, entry.find('='));
      bool ours = false;
      for (const char* v : kRankVariables) ours = ours || name == v;
      if (!ours) env_strings.push_back(entry);
    }
    const std::pair<const char*, std::string> values[] = {
        {"RANK", std::to_string(rank)},
        {"WORLD_SIZE", std::to_string(world_size)},
        {"LOCAL_RANK", std::to_string(local)},
        {"LOCAL_WORLD_SIZE", std::to_string(options_.nproc_per_node)},
        {"GROUP_RANK", std::to_string(options_.node_rank)},
        {"MASTER_ADDR", master_addr_},
        {"MASTER_PORT", std::to_string(master_port_)},
        {"KOLOS_RUN", "1"},
        {"KOLOS_RESTART_COUNT", std::to_string(restart_)}};
    for (const auto& [name, value] : values) env_strings.push_back(std::string(name) + "=" + value);
    std::vector<char*> envp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> arg_strings = options_.command;
    std::vector<char*> argv;
    for (auto& s : arg_strings) argv.push_back(s.data());
    argv.push_back(nullptr);
    const std::string exec_error_prefix = fmt::format("kolos run: rank {}: cannot execute \"{}\": ", rank, argv[0]);

    // stdin: rank 0 reads kolos run's, unless it is a terminal (a rank in its own process group would be stopped
    // by SIGTTIN); the others read /dev/null. stdout/stderr: see the header.
    Fd stdin_fd, stdout_fd, stderr_fd;
    if (rank != 0 || isatty(STDIN_FILENO)) stdin_fd = open_or_throw("/dev/null", O_RDONLY);
    TeeStream out, err;
    if (options_.tee) {
      int pipe_out[2], pipe_err[2];
      if (pipe2(pipe_out, O_CLOEXEC) != 0)
        throw std::runtime_error(fmt::format("kolos run: pipe failed: {}", std::strerror(errno)));
      out.fd = Fd(pipe_out[0]);
      stdout_fd = Fd(pipe_out[1]);
      if (pipe2(pipe_err, O_CLOEXEC) != 0)
        throw std::runtime_error(fmt::format("kolos run: pipe failed: {}", std::strerror(errno)));
      err.fd = Fd(pipe_err[0]);
      stderr_fd = Fd(pipe_err[1]);
      out.target = STDOUT_FILENO;
      err.target = STDERR_FILENO;
      out.prefix = err.prefix = fmt::format("[rank {}] ", rank);
    } else if (rank != 0) {
      stdout_fd = open_or_throw("/dev/null", O_WRONLY);
      stderr_fd = open_or_throw("/dev/null", O_WRONLY);
    }

    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) throw std::runtime_error(fmt::format("kolos run: fork failed: {}", std::strerror(errno)));
    if (pid == 0) {
      setpgid(0, 0);
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);  // kolos run died before prctl took effect
      if (stdin_fd.get() >= 0) dup2(stdin_fd.get(), STDIN_FILENO);
      if (stdout_fd.get() >= 0) dup2(stdout_fd.get(), STDOUT_FILENO);
      if (stderr_fd.get() >= 0) dup2(stderr_fd.get(), STDERR_FILENO);
      inbox_.restore_in_child();
      execvpe(argv[0], argv.data(), envp.data());
      const char* reason = strerror(errno);
      write_all(STDERR_FILENO, exec_error_prefix.data(), exec_error_prefix.size());
      write_all(STDERR_FILENO, reason, std::strlen(reason));
      write_all(STDERR_FILENO, "\n", 1);
      _exit(127);
    }
    setpgid(pid, pid);  // also here, so the group exists before anything signals it (EACCES after exec: fine)
    ranks_.push_back({rank, pid, true, 0});
    if (options_.tee) {
      streams_.push_back(std::move(out));
      streams_.push_back(std::move(err));
    }
  }

  bool any_alive() const {
    for (const auto& r : ranks_)
      if (r.alive) return true;
    return false;
  }

  bool any_stream_open() const {
    for (const auto& s : streams_)
      if (s.fd.get() >= 0) return true;
    return false;
  }

  // Waits up to `timeout` for a signal or rank output, and relays the output.
  void wait_for_events(std::chrono::milliseconds timeout) {
    std::vector<pollfd> fds;
    fds.push_back({inbox_.fd(), POLLIN, 0});
    std::vector<TeeStream*> polled;
    for (auto& s : streams_) {
      if (s.fd.get() < 0) continue;
      fds.push_back({s.fd.get(), POLLIN, 0});
      polled.push_back(&s);
    }
    if (::poll(fds.data(), fds.size(), static_cast<int>(timeout.count())) <= 0) return;
    for (size_t i = 1; i < fds.size(); ++i)
      if (fds[i].revents != 0) polled[i - 1]->pump();
  }

  void handle_signals() {
    for (int sig : inbox_.take()) {
      if (sig == SIGCHLD) continue;  // reap() looks at every rank anyway
      if (interrupt_signal_ == 0) interrupt_signal_ = sig;
      if (++interrupts_ >= 3) {
        say(fmt::format("{} received a third time: killing all ranks", signal_name(sig)));
        signal_all(SIGKILL);
      } else {
        say(fmt::format("forwarding {} to all ranks", signal_name(sig)));
        signal_all(sig);
      }
    }
  }

  // Reaps every exited child: ranks, and descendants orphaned to kolos run (the subreaper), so no zombie stays.
  void reap() {
    for (;;) {
      int status = 0;
      const pid_t done = ::waitpid(-1, &status, WNOHANG);
      if (done < 0 && errno == EINTR) continue;
      if (done <= 0) return;
      RankProcess* found = nullptr;
      for (auto& r : ranks_)
        if (r.alive && r.pid == done) found = &r;
      if (found) on_rank_exit(*found, status);
    }
  }

  void on_rank_exit(RankProcess& r, int status) {
    r.alive = false;
    r.wait_status = status;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok || failed_ || interrupts_ > 0) return;
    // The first failure: say which rank, then stop the others.
    failed_ = true;
    if (WIFSIGNALED(status))
      say(fmt::format("rank {} was killed by signal {}", r.rank, signal_name(WTERMSIG(status))));
    else
      say(fmt::format("rank {} exited with status {}", r.rank, shell_status(status)));
    signal_all(SIGTERM);
    kill_deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(options_.stop_grace_s));
  }

  // Reaps exited descendants that were re-parented to kolos run; returns whether any descendant is left.
  static bool reap_orphans() {
    for (;;) {
      int status = 0;
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid > 0) continue;
      if (pid < 0 && errno == EINTR) continue;
      return pid == 0;  // 0: some still running; -1 (ECHILD): none left
    }
  }

  // Sends `sig` to every rank's process group (also those whose leader has exited: what they started).
  void signal_all(int sig) {
    for (const auto& r : ranks_) ::kill(-r.pid, sig);
  }

  const LauncherOptions& options_;
  const std::string master_addr_;
  const int master_port_;
  const int restart_;
  SignalInbox& inbox_;
  std::vector<RankProcess> ranks_;
  std::vector<TeeStream> streams_;
  bool failed_ = false;
  int interrupt_signal_ = 0;
  int interrupts_ = 0;
  std::optional<Clock::time_point> kill_deadline_;
};

}  // namespace

std::pair<std::string, int> parse_master(const std::string& text) {
  const std::string expected = fmt::format(
      "kolos run: --master \"{}\": expected HOST:PORT with a port from 1 to 65535, e.g. 10.0.0.1:29500", text);
  std::string host, port_text;
  if (!text.empty() && text[0] == '[') {  // [IPv6]:PORT
    const size_t close = text.find(']');
    KOLOS_CHECK(close != std::string::npos && close + 1 < text.size() && text[close + 1] == ':', "{}", expected);
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    KOLOS_CHECK(colon != std::string::npos, "{}", expected);
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
  }
  int port = 0;
  const char* end = port_text.data() + port_text.size();
  const auto [ptr, ec] = std::from_chars(port_text.data(), end, port);
  KOLOS_CHECK(!host.empty() && !port_text.empty() && ec == std::errc() && ptr == end && port >= 1 && port <= 65535,
              "{}", expected);
  return {host, port};
}

int find_free_port() {
  Fd sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (sock.get() < 0) throw std::runtime_error(fmt::format("kolos run: socket failed: {}", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = 0;
  socklen_t size = sizeof addr;
  if (::bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(sock.get(), reinterpret_cast<sockaddr*>(&addr), &size) != 0)
    throw std::runtime_error(fmt::format("kolos run: cannot find a free port: {}", std::strerror(errno)));
  return ntohs(addr.sin_port);
}

void validate(const LauncherOptions& o) {
  KOLOS_CHECK(!o.command.empty(), "kolos run: no command after `--` (usage: kolos run -n N [...] -- CMD ARGS...)");
  KOLOS_CHECK(o.nproc_per_node >= 1 && o.nproc_per_node <= 4096,
              "kolos run: -n {}: expected the number of processes on this machine, from 1 to 4096", o.nproc_per_node);
  KOLOS_CHECK(o.nnodes >= 1 && o.nnodes <= 65536, "kolos run: --nnodes {}: expected the number of machines, from 1",
              o.nnodes);
  KOLOS_CHECK(o.node_rank >= 0 && o.node_rank < o.nnodes,
              "kolos run: --node-rank {}: expected 0 to {} (below --nnodes {})", o.node_rank, o.nnodes - 1, o.nnodes);
  KOLOS_CHECK(o.max_restarts >= 0, "kolos run: --max-restarts {}: expected 0 or more", o.max_restarts);
  KOLOS_CHECK(o.nnodes == 1 || !o.master_addr.empty(),
              "kolos run: --nnodes {} needs --master HOST:PORT, the address of node 0 (the same on every node)",
              o.nnodes);
  KOLOS_CHECK(o.master_addr.empty() || (o.master_port >= 1 && o.master_port <= 65535),
              "kolos run: --master port {}: expected 1 to 65535", o.master_port);
  KOLOS_CHECK(o.stop_grace_s >= 0, "kolos run: stop grace {} s: expected 0 or more", o.stop_grace_s);
}

int launch(const LauncherOptions& options) {
  validate(options);
  // Descendants whose parent dies are re-parented to kolos run rather than to init, so they can be reaped here.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  SignalInbox inbox;
  for (int restart = 0;; ++restart) {
    const bool own_master = options.master_addr.empty();
    const std::string master_addr = own_master ? "127.0.0.1" : options.master_addr;
    const int master_port = own_master ? find_free_port() : options.master_port;
    Attempt::Result result;
    {
      Attempt attempt(options, master_addr, master_port, restart, inbox);
      result = attempt.run();
    }
    if (!result.failed) return result.exit_code;
    if (result.interrupt_signal != 0 || restart >= options.max_restarts) return exit_code::kPeerFailed;
    // A signal that arrived while the group was stopping ends the run instead of restarting it.
    for (int sig : inbox.take())
      if (sig != SIGCHLD) return 128 + sig;
    say(fmt::format("restarting all {} local ranks (restart {} of {})", options.nproc_per_node, restart + 1,
                    options.max_restarts));
  }
}

}  // namespace kolos::dist
