//! The test bed's address plan. Only documentation ranges are used:
//!
//! | what | range |
//! |---|---|
//! | uplinks (ToR `.2k`, hypervisor `.2k+1`, /31) | 192.0.2.0/25, 2001:db8:ffff:k::/64 |
//! | ToR router ids | 192.0.2.200 + t |
//! | VM subnet (gateway .1) | 198.51.100.0/24, 2001:db8:100::/64 |
//! | floating IPs | 203.0.113.0/25 |
//! | management network (etcd on .129) | 203.0.113.128/25 |

use std::net::{Ipv4Addr, Ipv6Addr};

/// Most uplinks one test bed can have (192.0.2.0/25 in /31s).
pub const MAX_UPLINKS: usize = 64;
/// Most ToRs one test bed can have.
pub const MAX_TORS: usize = 50;
/// Most hypervisors on the management network.
pub const MAX_HYPERVISORS: usize = 120;

/// The VMs' IPv4 subnet gateway; every hypervisor stands for it (proxy ARP).
pub const VM_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The VMs' IPv4 subnet prefix length.
pub const VM_PREFIX_V4: u8 = 24;
/// The VMs' IPv6 subnet gateway; every hypervisor stands for it (proxy NDP).
pub const VM_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
/// The VMs' IPv6 subnet prefix length.
pub const VM_PREFIX_V6: u8 = 64;

/// The etcd server's address on the management network.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 129);
/// Prefix length of the management network.
pub const MGMT_PREFIX: u8 = 25;

/// Addresses of uplink `k`: (ToR v4, hypervisor v4, ToR v6, hypervisor v6).
pub fn uplink(k: usize) -> (Ipv4Addr, Ipv4Addr, Ipv6Addr, Ipv6Addr) {
    let base = u8::try_from(2 * k).unwrap_or(u8::MAX - 1);
    let net = u16::try_from(k).unwrap_or(u16::MAX);
    (
        Ipv4Addr::new(192, 0, 2, base),
        Ipv4Addr::new(192, 0, 2, base + 1),
        Ipv6Addr::new(0x2001, 0xdb8, 0xffff, net, 0, 0, 0, 1),
        Ipv6Addr::new(0x2001, 0xdb8, 0xffff, net, 0, 0, 0, 2),
    )
}

/// Router id of ToR `t`.
pub fn tor_router_id(t: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        192,
        0,
        2,
        200u8.saturating_add(u8::try_from(t).unwrap_or(u8::MAX)),
    )
}

/// Management address of hypervisor `i`.
pub fn mgmt_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        203,
        0,
        113,
        130u8.saturating_add(u8::try_from(i).unwrap_or(u8::MAX)),
    )
}

/// Default IPv4 address of the `n`-th VM of a test bed.
pub fn vm_v4(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        198,
        51,
        100,
        10u8.saturating_add(u8::try_from(n).unwrap_or(u8::MAX)),
    )
}

/// Default IPv6 address of the `n`-th VM of a test bed.
pub fn vm_v6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0x100,
        0,
        0,
        0,
        0,
        0x10 + u16::try_from(n).unwrap_or(0xff00),
    )
}

/// An OpenStack-style MAC (fa:16:3e prefix) for the `n`-th VM.
pub fn vm_mac(n: usize) -> String {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    format!(
        "fa:16:3e:{:02x}:{:02x}:{:02x}",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

/// A Neutron-style port id (a UUID) for the `n`-th VM, distinct in its first 11 characters.
pub fn port_id(n: usize) -> String {
    format!(
        "{:08x}-5c0a-4d1e-9b7f-{:012x}",
        0x3a00_0000u64 + n as u64 * 0x0101,
        n
    )
}

/// The hypervisor-side interface name Nova gives a port: `tap` + the first 11 characters.
pub fn tap_name(port_id: &str) -> String {
    format!("tap{}", port_id.chars().take(11).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_follow_nova() {
        assert_eq!(
            tap_name("4e1a2b3c-d4e5-4f60-8a9b-0c1d2e3f4a5b"),
            "tap4e1a2b3c-d4"
        );
        assert!(tap_name(&port_id(7)).len() <= 15);
        assert_ne!(tap_name(&port_id(1)), tap_name(&port_id(2)));
    }

    #[test]
    fn uplinks_are_distinct_slash31s() {
        let (t0, h0, ..) = uplink(0);
        let (t1, h1, t6, h6) = uplink(1);
        assert_eq!((t0.octets()[3], h0.octets()[3]), (0, 1));
        assert_eq!((t1.octets()[3], h1.octets()[3]), (2, 3));
        assert_eq!(t6.segments()[3], 1);
        assert_ne!(t6, h6);
    }

    #[test]
    fn macs_are_openstack_style() {
        assert_eq!(vm_mac(258), "fa:16:3e:00:01:02");
    }
}
