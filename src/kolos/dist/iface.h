// Which network interface Gloo binds. Gloo needs a local interface (or address) that the other ranks can reach;
// its default is the address this host's name resolves to, which on many hosts (this one included) is 127.0.0.1
// and so only works on one machine. kolos instead binds the interface whose route reaches MASTER_ADDR: the master
// is reachable from every rank by construction, and the interface carrying the route to it is the one the peers
// share. `dist.iface` overrides the choice.
//
// Contract:
//  - interface_for_address(host, port): resolves `host` (a name, an IPv4 or an IPv6 address; getaddrinfo, both
//    families, in the resolver's order), asks the kernel which local address a packet to it would leave from (a UDP
//    socket connect()ed to host:port — nothing is sent), and returns the name of the interface holding that address
//    (getifaddrs). A loopback address (127.0.0.1, ::1, "localhost") gives the loopback interface ("lo"); an address
//    of this host gives the interface holding it. Throws kolos::InputError naming `host` and saying to set
//    dist.iface when the host does not resolve, no route reaches it, or the source address is on no interface.
//    `port` (1–65535) only completes the socket address: routes rarely depend on it.
//  - resolve_gloo_interface(configured_iface, master_addr, master_port): `configured_iface` (dist.iface) when
//    non-empty — it must name an interface of this host (if_nametoindex), else InputError naming dist.iface and
//    listing the interfaces there are — otherwise interface_for_address(master_addr, master_port).
// The result goes to Comm::Options::iface. Gloo then binds the first address of that interface that is up (IPv4
// before IPv6 as getifaddrs lists them), which is the route's source address on an interface with one address.
// Both functions are thread-safe and cheap (no packet is sent, no DNS lookup for numeric addresses).
#pragma once

#include <string>

namespace kolos::dist {

// The interface whose route reaches host:port ("eth0", "lo" ...). Throws InputError (see above).
std::string interface_for_address(const std::string& host, int port);

// dist.iface if given (checked to exist), else the interface that reaches the master. Throws InputError.
std::string resolve_gloo_interface(const std::string& configured_iface, const std::string& master_addr,
                                   int master_port);

}  // namespace kolos::dist
