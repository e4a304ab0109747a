// The interface Gloo binds: the one whose route reaches the master (loopback → lo, an address of this host → the
// interface holding it), dist.iface when given, and bad input for an unknown host or interface.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <functional>
#include <string>
#include <vector>

#include "kolos/core/error.h"
#include "kolos/dist/iface.h"

namespace kolos {
namespace {

struct LocalAddress {
  std::string iface;
  std::string address;  // numeric
};

// The IPv4 and global IPv6 addresses of this host's interfaces that are up, loopback ones if `loopback`, else the
// others.
std::vector<LocalAddress> local_addresses(bool loopback) {
  std::vector<LocalAddress> found;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return found;
  for (const ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || !(a->ifa_flags & IFF_UP) || bool(a->ifa_flags & IFF_LOOPBACK) != loopback) continue;
    char text[INET6_ADDRSTRLEN] = "";
    if (a->ifa_addr->sa_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(a->ifa_addr)->sin_addr, text, sizeof(text));
    } else if (a->ifa_addr->sa_family == AF_INET6) {
      const auto* in6 = &reinterpret_cast<const sockaddr_in6*>(a->ifa_addr)->sin6_addr;
      if (IN6_IS_ADDR_LINKLOCAL(in6)) continue;  // needs a scope ("%eth0") to be routed
      inet_ntop(AF_INET6, in6, text, sizeof(text));
    } else {
      continue;
    }
    found.push_back({a->ifa_name, text});
  }
  freeifaddrs(list);
  return found;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no InputError)";
}

TEST(Iface, LoopbackAddressesGiveLo) {
  EXPECT_EQ(dist::interface_for_address("127.0.0.1", 29500), "lo");
  EXPECT_EQ(dist::interface_for_address("localhost", 29500), "lo");
  for (const auto& a : local_addresses(true)) {
    if (a.address == "::1") {
      EXPECT_EQ(dist::interface_for_address("::1", 29500), a.iface);
    }
  }
}

TEST(Iface, AnAddressOfThisHostGivesItsInterface) {
  const auto addresses = local_addresses(false);
  if (addresses.empty()) GTEST_SKIP() << "no non-loopback interface with an address is up on this host";
  for (const auto& a : addresses)
    EXPECT_EQ(dist::interface_for_address(a.address, 29500), a.iface) << "address " << a.address;
}

TEST(Iface, UnresolvableHostIsBadInputNamingItAndDistIface) {
  const std::string msg = error_of([] { dist::interface_for_address("no-such-host.invalid", 29500); });
  EXPECT_NE(msg.find("no-such-host.invalid"), std::string::npos) << msg;
  EXPECT_NE(msg.find("dist.iface"), std::string::npos) << msg;
  EXPECT_NE(error_of([] { dist::interface_for_address("", 29500); }).find("dist.iface"), std::string::npos);
  EXPECT_NE(error_of([] { dist::interface_for_address("127.0.0.1", 0); }).find("port"), std::string::npos);
}

TEST(Iface, ConfiguredInterfaceWinsWhenItExists) {
  EXPECT_EQ(dist::resolve_gloo_interface("lo", "no-such-host.invalid", 29500), "lo");  // the master is not looked up
  EXPECT_EQ(dist::resolve_gloo_interface("", "127.0.0.1", 29500), "lo");
  const auto addresses = local_addresses(false);
  if (!addresses.empty()) {
    EXPECT_EQ(dist::resolve_gloo_interface("", addresses[0].address, 29500), addresses[0].iface);
  }
}

TEST(Iface, UnknownConfiguredInterfaceIsBadInputNamingDistIface) {
  const std::string msg = error_of([] { dist::resolve_gloo_interface("nosuchif0", "127.0.0.1", 29500); });
  EXPECT_NE(msg.find("dist.iface"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nosuchif0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lo"), std::string::npos) << msg;  // lists the interfaces there are
}

}  // namespace
}  // namespace kolos
