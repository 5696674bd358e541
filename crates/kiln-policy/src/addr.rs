//! Which IP addresses an app's request may reach: Kiln's own table of
//! non-public ranges, applied to every address a name resolves to (and to
//! the address of every redirect hop) before connecting to it.
//!
//! The table follows the IANA special-purpose registries (RFC 6890 and its
//! updates) and adds what they do not mark but a server must never let
//! tenants reach: cloud metadata endpoints and the shared address space.
//! IPv6 forms that carry an IPv4 address (mapped, compatible, well-known
//! NAT64, 6to4, Teredo) are judged by the address they carry; local-use
//! NAT64 (64:ff9b:1::/48), whose embedding the operator chooses, is refused
//! whole.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonPublic {
    Unspecified,
    Loopback,
    /// RFC 1918.
    Private,
    /// 100.64.0.0/10, carrier-grade NAT.
    SharedAddressSpace,
    /// 169.254.0.0/16 and fe80::/10 (cloud metadata lives here: 169.254.169.254, fd00:ec2::254).
    LinkLocal,
    /// Cloud metadata endpoints outside link-local ranges.
    Metadata,
    /// fc00::/7.
    UniqueLocal,
    /// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18.0.0/15.
    Benchmarking,
    Multicast,
    Broadcast,
    /// 0.0.0.0/8, 240.0.0.0/4, 192.0.0.0/24, IPv6 reserved and discard ranges,
    /// local-use NAT64 (64:ff9b:1::/48).
    Reserved,
}

impl NonPublic {
    pub fn as_str(self) -> &'static str {
        match self {
            NonPublic::Unspecified => "unspecified",
            NonPublic::Loopback => "loopback",
            NonPublic::Private => "private",
            NonPublic::SharedAddressSpace => "shared address space (CGNAT)",
            NonPublic::LinkLocal => "link-local",
            NonPublic::Metadata => "cloud metadata",
            NonPublic::UniqueLocal => "unique local",
            NonPublic::Documentation => "documentation",
            NonPublic::Benchmarking => "benchmarking",
            NonPublic::Multicast => "multicast",
            NonPublic::Broadcast => "broadcast",
            NonPublic::Reserved => "reserved",
        }
    }
}

fn in_v4(a: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    (u32::from(a) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn in_v6(a: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    (u128::from(a) & mask) == (u128::from(net) & mask)
}

/// The IPv4 table, most specific first.
fn classify_v4(a: Ipv4Addr) -> Option<NonPublic> {
    use NonPublic::*;
    let table: [([u8; 4], u32, NonPublic); 17] = [
        ([255, 255, 255, 255], 32, Broadcast),
        ([0, 0, 0, 0], 32, Unspecified),
        ([0, 0, 0, 0], 8, Reserved),
        ([10, 0, 0, 0], 8, Private),
        ([100, 64, 0, 0], 10, SharedAddressSpace),
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, Reserved),
        ([192, 0, 2, 0], 24, Documentation),
        ([192, 88, 99, 0], 24, Reserved),
        ([192, 168, 0, 0], 16, Private),
        ([198, 18, 0, 0], 15, Benchmarking),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([224, 0, 0, 0], 4, Multicast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    // Alibaba Cloud's metadata service is on a public-looking address.
    if a == Ipv4Addr::new(100, 100, 100, 200) {
        return Some(Metadata);
    }
    table.iter().find(|(net, prefix, _)| in_v4(a, *net, *prefix)).map(|(_, _, why)| *why)
}

/// An IPv4 address an IPv6 address carries, if it is one of the forms that
/// reach an IPv4 host.
pub fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = a.segments();
    let low32 = Ipv4Addr::from((u32::from(seg[6]) << 16) | u32::from(seg[7]));
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if let Some(v4) = a.to_ipv4_mapped() {
        return Some(v4);
    }
    if seg[..6] == [0, 0, 0, 0, 0, 0] && u32::from(low32) > 1 {
        return Some(low32);
    }
    // 64:ff9b::/96 (NAT64 well-known). The local-use 64:ff9b:1::/48 is not
    // here: an operator may carve it into shorter prefixes that put the IPv4
    // address elsewhere than the last 32 bits, so the whole range is
    // refused in `classify_v6` instead.
    if in_v6(a, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some(low32);
    }
    // 2002::/16 (6to4): the IPv4 address is in bits 16..48.
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::from((u32::from(seg[1]) << 16) | u32::from(seg[2])));
    }
    // 2001::/32 (Teredo): the client's address, inverted, in the last 32 bits.
    if seg[0] == 0x2001 && seg[1] == 0 {
        return Some(Ipv4Addr::from(!u32::from(low32)));
    }
    None
}

fn classify_v6(a: Ipv6Addr) -> Option<NonPublic> {
    use NonPublic::*;
    if a.is_unspecified() {
        return Some(Unspecified);
    }
    if a.is_loopback() {
        return Some(Loopback);
    }
    // Local-use NAT64 (RFC 8215), not globally reachable. Judging it by its
    // last 32 bits let `64:ff9b:1:a9fe:a9:fe00:808:808` (169.254.169.254
    // under a /48 translator prefix, 8.8.8.8 in the ignored suffix) pass.
    if in_v6(a, Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48) {
        return Some(Reserved);
    }
    if let Some(v4) = embedded_v4(a) {
        // A tunnel or translator form: judged by where it leads, and never
        // public when that is not.
        return classify_v4(v4);
    }
    let table: [(Ipv6Addr, u32, NonPublic); 9] = [
        (Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254), 128, Metadata),
        (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, Reserved), // discard-only
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, Documentation),
        (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, Documentation),
        (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48, Benchmarking),
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23, Reserved), // IETF protocol assignments
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, UniqueLocal),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, LinkLocal),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, Multicast),
    ];
    if let Some((_, _, why)) = table.iter().find(|(net, prefix, _)| in_v6(a, *net, *prefix)) {
        return Some(*why);
    }
    // Only global unicast (2000::/3) is public; the rest of the space is
    // unassigned or reserved.
    if !in_v6(a, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return Some(Reserved);
    }
    // fec0::/10 (deprecated site-local) is outside 2000::/3 and caught above.
    None
}

/// `None` if `a` is a public address an app may reach; otherwise why not.
pub fn non_public(a: IpAddr) -> Option<NonPublic> {
    match a {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn why(s: &str) -> Option<NonPublic> {
        non_public(s.parse().unwrap())
    }

    #[test]
    fn the_table_refuses_every_non_public_range_and_allows_public_ones() {
        use NonPublic::*;
        for (addr, want) in [
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Reserved)),
            ("10.0.0.1", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("100.64.0.1", Some(SharedAddressSpace)),
            ("100.127.255.254", Some(SharedAddressSpace)),
            ("100.128.0.1", None),
            ("100.100.100.200", Some(Metadata)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("169.254.169.254", Some(LinkLocal)),
            ("172.15.255.255", None),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.1", None),
            ("192.0.0.8", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("192.88.99.1", Some(Reserved)),
            ("192.168.1.1", Some(Private)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("93.184.215.14", None),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(LinkLocal)),
            ("64:ff9b::10.0.0.1", Some(Private)),
            ("64:ff9b:1::c0a8:101", Some(Reserved)),
            ("64:ff9b:1::808:808", Some(Reserved)), // local-use NAT64 is never public
            ("64:ff9b:1:a9fe:a9:fe00:808:808", Some(Reserved)), // /48 form of 169.254.169.254
            ("64:ff9b::808:808", None),
            ("2002:a00:1::1", Some(Private)),
            ("2002:7f00:1::1", Some(Loopback)),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Some(Loopback)), // Teredo to 127.0.0.1
            ("fd00:ec2::254", Some(Metadata)),
            ("fc00::1", Some(UniqueLocal)),
            ("fdff:ffff::1", Some(UniqueLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(Reserved)),
            ("ff02::1", Some(Multicast)),
            ("100::1", Some(Reserved)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("2001:2::1", Some(Benchmarking)),
            ("2001:10::1", Some(Reserved)),
            ("4000::1", Some(Reserved)),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001:800::200e", None),
        ] {
            assert_eq!(why(addr), want, "{addr}");
        }
    }

    fn v4_in(net: [u8; 4], prefix: u32) -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(move |r| {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            Ipv4Addr::from((u32::from(Ipv4Addr::from(net)) & mask) | (r & !mask))
        })
    }

    proptest! {
        /// Every private, loopback or link-local IPv4 address stays
        /// non-public in every IPv6 form that carries it.
        #[test]
        fn embedded_forms_are_judged_by_the_address_they_carry(
            v4 in prop_oneof![
                v4_in([10, 0, 0, 0], 8),
                v4_in([127, 0, 0, 0], 8),
                v4_in([169, 254, 0, 0], 16),
                v4_in([172, 16, 0, 0], 12),
                v4_in([192, 168, 0, 0], 16),
                v4_in([100, 64, 0, 0], 10),
            ]
        ) {
            let o = v4.octets();
            let hi = u16::from_be_bytes([o[0], o[1]]);
            let lo = u16::from_be_bytes([o[2], o[3]]);
            prop_assert!(non_public(IpAddr::V4(v4)).is_some());
            for v6 in [
                v4.to_ipv6_mapped(),
                Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo),
                Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
                Ipv6Addr::new(0x64, 0xff9b, 1, 7, 0, 0, hi, lo),
                Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0x2001, 0, 1, 2, 0, 0, !hi, !lo),
            ] {
                prop_assert!(non_public(IpAddr::V6(v6)).is_some(), "{v6} carries {v4}");
            }
        }
    }
}
