//! Which IP addresses the embedded SFU announces to browsers as ICE host candidates.
//!
//! The decision ([`announce_ips`]) is a pure function of the media bind address, the configured
//! addresses and the machine's interfaces; [`machine_interfaces`] is the small driver that reads
//! the interfaces from the OS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// One address of a network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InterfaceAddr {
    /// Interface name, like `eth0`.
    pub(crate) name: String,
    /// The address.
    pub(crate) ip: IpAddr,
}

/// Interface name prefixes of container and VM bridges: their addresses are not reachable from
/// other machines on the LAN, so announcing them only slows ICE down.
const VIRTUAL_PREFIXES: &[&str] = &[
    "docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "vxlan", "tun", "tap", "lxc",
    "podman",
];

fn is_lan(iface: &InterfaceAddr) -> bool {
    if VIRTUAL_PREFIXES.iter().any(|p| iface.name.starts_with(p)) {
        return false;
    }
    match iface.ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(_) => false,
    }
}

/// The addresses to announce, in order and without duplicates: the configured ones first; then,
/// when the media socket is bound to the unspecified address, 127.0.0.1 and (if `detect_lan`) the
/// private IPv4 addresses of physical interfaces; when bound to one address, that address.
pub(crate) fn announce_ips(
    media_bind: SocketAddr,
    configured: &[IpAddr],
    detect_lan: bool,
    interfaces: &[InterfaceAddr],
) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut push = |ip: IpAddr| {
        if !out.contains(&ip) {
            out.push(ip);
        }
    };
    for ip in configured {
        push(*ip);
    }
    if media_bind.ip().is_unspecified() {
        push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        if detect_lan {
            for iface in interfaces.iter().filter(|i| is_lan(i)) {
                push(iface.ip);
            }
        }
    } else {
        push(media_bind.ip());
    }
    out
}

/// The machine's interface addresses, or none if the OS refuses to list them (then only loopback
/// and configured addresses are announced, which is logged by the caller).
pub(crate) fn machine_interfaces() -> std::io::Result<Vec<InterfaceAddr>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| InterfaceAddr {
            ip: i.ip(),
            name: i.name,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ip: &str) -> InterfaceAddr {
        InterfaceAddr {
            name: name.into(),
            ip: ip.parse().unwrap(),
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn unspecified_bind_announces_loopback_and_lan() {
        let ifaces = [
            iface("lo", "127.0.0.1"),
            iface("eth0", "192.168.1.20"),
            iface("eth0", "fe80::1"),
            iface("wlan0", "10.0.0.5"),
            iface("docker0", "172.17.0.1"),
            iface("veth12", "172.18.0.1"),
            iface("eth1", "203.0.113.9"),
        ];
        let got = announce_ips("0.0.0.0:7881".parse().unwrap(), &[], true, &ifaces);
        assert_eq!(got, ips(&["127.0.0.1", "192.168.1.20", "10.0.0.5"]));
    }

    #[test]
    fn configured_come_first_and_duplicates_vanish() {
        let ifaces = [iface("eth0", "192.168.1.20")];
        let got = announce_ips(
            "0.0.0.0:7881".parse().unwrap(),
            &ips(&["198.51.100.4", "192.168.1.20"]),
            true,
            &ifaces,
        );
        assert_eq!(got, ips(&["198.51.100.4", "192.168.1.20", "127.0.0.1"]));
    }

    #[test]
    fn detection_can_be_turned_off() {
        let ifaces = [iface("eth0", "192.168.1.20")];
        let got = announce_ips("0.0.0.0:7881".parse().unwrap(), &[], false, &ifaces);
        assert_eq!(got, ips(&["127.0.0.1"]));
    }

    #[test]
    fn specific_bind_announces_that_address() {
        let ifaces = [iface("eth0", "192.168.1.20")];
        let got = announce_ips("127.0.0.1:0".parse().unwrap(), &[], true, &ifaces);
        assert_eq!(got, ips(&["127.0.0.1"]));
    }
}
