#include "kolos/dist/iface.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <set>

#include "kolos/core/error.h"

namespace kolos::dist {

namespace {

constexpr const char* kHint = "set dist.iface to the network interface that reaches the master";

struct AddrinfoFree {
  void operator()(addrinfo* a) const { freeaddrinfo(a); }
};
struct IfaddrsFree {
  void operator()(ifaddrs* a) const { freeifaddrs(a); }
};
using Ifaddrs = std::unique_ptr<ifaddrs, IfaddrsFree>;

Ifaddrs list_interfaces() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0)
    throw std::runtime_error(fmt::format("getifaddrs failed: {}", std::strerror(errno)));
  return Ifaddrs(list);
}

// The numeric form of an IPv4/IPv6 socket address, for messages.
std::string numeric(const sockaddr* addr, socklen_t len) {
  char host[NI_MAXHOST] = "?";
  getnameinfo(addr, len, host, sizeof(host), nullptr, 0, NI_NUMERICHOST);
  return host;
}

// Whether interface address `a` is the local address `b` (same family and bytes; for IPv6 link-local addresses,
// the same scope when both carry one).
bool same_address(const sockaddr* a, const sockaddr_storage& b) {
  if (a->sa_family != b.ss_family) return false;
  if (a->sa_family == AF_INET) {
    return reinterpret_cast<const sockaddr_in*>(a)->sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in*>(&b)->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    const auto* x = reinterpret_cast<const sockaddr_in6*>(a);
    const auto* y = reinterpret_cast<const sockaddr_in6*>(&b);
    if (std::memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(in6_addr)) != 0) return false;
    return x->sin6_scope_id == 0 || y->sin6_scope_id == 0 || x->sin6_scope_id == y->sin6_scope_id;
  }
  return false;
}

bool is_loopback(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET)
    return (ntohl(reinterpret_cast<const sockaddr_in*>(&addr)->sin_addr.s_addr) >> 24) == 127;
  if (addr.ss_family == AF_INET6) return IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr);
  return false;
}

// "lo, eth0": the interfaces of this host, for error messages.
std::string interface_names() {
  const Ifaddrs interfaces = list_interfaces();
  std::set<std::string> names;
  for (const ifaddrs* a = interfaces.get(); a; a = a->ifa_next) names.insert(a->ifa_name);
  std::string text;
  for (const auto& n : names) text += (text.empty() ? "" : ", ") + n;
  return text.empty() ? "none" : text;
}

}  // namespace

std::string interface_for_address(const std::string& host, int port) {
  KOLOS_CHECK(!host.empty(), "the master address is empty: expected a host name or address; or {}", kHint);
  KOLOS_CHECK(port >= 1 && port <= 65535, "master port {} for host '{}': expected a TCP port between 1 and 65535",
              port, host);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
  KOLOS_CHECK(rc == 0, "cannot resolve the master host '{}' ({}): {}", host,
              rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc), kHint);
  const std::unique_ptr<addrinfo, AddrinfoFree> results(found);

  // The first resolved address that a route reaches, and the local address a packet to it would leave from.
  sockaddr_storage local{};
  std::string tried;
  bool routed = false;
  for (const addrinfo* ai = results.get(); ai; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    const std::string dest = numeric(ai->ai_addr, ai->ai_addrlen);
    const int fd = ::socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    socklen_t len = sizeof(local);
    routed = fd >= 0 && ::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
             ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
    const int error = errno;
    if (fd >= 0) ::close(fd);
    if (routed) break;
    tried += fmt::format("{}{}: {}", tried.empty() ? "" : "; ", dest, std::strerror(error));
  }
  KOLOS_CHECK(routed, "no route to the master host '{}' ({}): {}", host, tried.empty() ? "no IPv4/IPv6 address" : tried,
              kHint);

  const Ifaddrs interfaces = list_interfaces();
  std::string loopback;
  for (const ifaddrs* a = interfaces.get(); a; a = a->ifa_next) {
    if (a->ifa_addr && same_address(a->ifa_addr, local)) return a->ifa_name;
    if (loopback.empty() && (a->ifa_flags & IFF_LOOPBACK)) loopback = a->ifa_name;
  }
  // A loopback source address not listed as such (127.0.0.2 ... on lo's 127.0.0.0/8) is still on the loopback.
  if (is_loopback(local) && !loopback.empty()) return loopback;
  const socklen_t local_len = local.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  KOLOS_CHECK(false, "the route to the master host '{}' leaves from {}, which no network interface holds "
              "(interfaces: {}): {}", host, numeric(reinterpret_cast<const sockaddr*>(&local), local_len),
              interface_names(), kHint);
  return {};
}

std::string resolve_gloo_interface(const std::string& configured_iface, const std::string& master_addr,
                                   int master_port) {
  if (configured_iface.empty()) return interface_for_address(master_addr, master_port);
  KOLOS_CHECK(if_nametoindex(configured_iface.c_str()) != 0,
              "dist.iface = \"{}\": no such network interface on this host (interfaces: {})", configured_iface,
              interface_names());
  return configured_iface;
}

}  // namespace kolos::dist
