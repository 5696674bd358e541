//! The SSRF suite: every way we know to talk the egress gateway into
//! reaching something the app was not granted, or an address no app may
//! reach, as a table of cases, plus the attacks that need a resolver or an
//! upstream that changes its answer (DNS rebinding, redirects).
//!
//! Nothing here leaves loopback. The gateway opens every connection
//! through [`LoopbackOnly`], which reaches only the upstream this suite
//! starts on 127.0.0.1 and refuses (and records) any other address; every
//! test asserts that no such attempt was made. Names resolve through a
//! table in this file, never through DNS. Cases that must be refused name
//! addresses the gateway has to refuse before dialling; cases that must
//! get through resolve to loopback and run with `insecure_allow_loopback`,
//! the only loosening the gateway has.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use common::LoopbackOnly;
use hyper::body::{Bytes, Frame};
use kiln_egress::*;
use kiln_manifest::EgressTarget;
use kiln_policy::egress::Refused;

/// The suite may grow; it must not shrink without someone deciding so.
const MIN_CASES: usize = 100;

/// What a case expects of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Checked and connected: the record names this host, and the dialler
    /// was asked for exactly this address (an IP and the URL's port).
    Reached(&'static str, &'static str),
    NotAUrl,
    Scheme(&'static str),
    UserInfo,
    EmptyLabel,
    Port(u16),
    /// Refused by name, for this (normalized) host.
    NotDeclared(&'static str),
    /// Refused by address, for this reason (`NonPublic::as_str`).
    NonPublic(&'static str),
    Unresolved,
    Header,
    Method,
    RequestTooLarge,
    ResponseTooLarge,
    TooManyRedirects,
}

use Want::*;

impl Want {
    /// Refusals the app sees as `ExternalEndpointNotAllowedError`.
    fn is_policy(self) -> bool {
        matches!(self, NotAUrl | Scheme(_) | UserInfo | EmptyLabel | Port(_) | NotDeclared(_) | NonPublic(_))
    }

    /// Refusals made before any name is resolved.
    fn before_resolving(self) -> bool {
        matches!(
            self,
            NotAUrl
                | Scheme(_)
                | UserInfo
                | EmptyLabel
                | Port(_)
                | NotDeclared(_)
                | Header
                | Method
                | RequestTooLarge
        )
    }

    /// Outcomes that end with a connection made on the last hop.
    fn dials_last_hop(self) -> bool {
        matches!(self, Reached(..) | ResponseTooLarge | TooManyRedirects)
    }
}

/// Which gateway a case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// As deployed: loopback is as unreachable as any other internal address.
    Production,
    /// `insecure_allow_loopback`: 127.0.0.0/8 and ::1 stand in for public
    /// addresses, so a case can show what gets through, or that one bad
    /// address among good ones refuses the whole request.
    Loopback,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    url: &'static str,
    /// As in the manifest: `*`, `*.domain`, `remote:key` or a host.
    grant: &'static [&'static str],
    mode: Mode,
    method: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: usize,
    want: Want,
}

const fn case(name: &'static str, url: &'static str, grant: &'static [&'static str], want: Want) -> Case {
    Case { name, url, grant, mode: Mode::Production, method: "GET", headers: &[], body: 0, want }
}

impl Case {
    const fn on_loopback(self) -> Case {
        Case { mode: Mode::Loopback, ..self }
    }

    const fn headers(self, headers: &'static [(&'static str, &'static str)]) -> Case {
        Case { headers, ..self }
    }

    const fn method(self, method: &'static str) -> Case {
        Case { method, ..self }
    }

    const fn body(self, body: usize) -> Case {
        Case { body, ..self }
    }
}

const ANY: &[&str] = &["*"];
const API: &[&str] = &["api.example.com"];
const EXAMPLE: &[&str] = &["example.com"];
const SUBS: &[&str] = &["*.example.com"];
const NONE: &[&str] = &[];

/// The upstream's echo of the headers that arrived, behind a granted name.
const ECHO: &str = "https://api.example.com/echo";
const AT_API: Want = Reached("api.example.com", "127.0.0.1:443");
const AT_EXAMPLE: Want = Reached("example.com", "127.0.0.1:443");

/// The gateway's limits in this suite.
const MAX_REQUEST: usize = 1024;
const MAX_RESPONSE: usize = 4096;

/// The resolver's table. Names the suite may reach resolve to loopback;
/// `evil.test` does too, so a case that wrongly lets it through shows up
/// as reaching it rather than as a resolution error.
const DNS: &[(&str, &[&str])] = &[
    ("api.example.com", &["127.0.0.1"]),
    ("other.example.com", &["127.0.0.1"]),
    ("example.com", &["127.0.0.1"]),
    ("a.example.com", &["127.0.0.1"]),
    ("a.b.example.com", &["127.0.0.1"]),
    ("evilexample.com", &["127.0.0.1"]),
    ("example.com.evil.test", &["127.0.0.1"]),
    ("api.example.com.evil.test", &["127.0.0.1"]),
    ("evil.test", &["127.0.0.1"]),
    ("xn--bcher-kva.example", &["127.0.0.1"]),
    ("xn--pple-43d.example", &["127.0.0.1"]),
    ("apple.example", &["127.0.0.1"]),
    ("internal.example.com", &["10.0.0.1"]),
    ("localhost", &["127.0.0.1", "::1"]),
    ("loop.test", &["127.0.0.2"]),
    ("loop6.test", &["::1"]),
    ("private.test", &["10.0.0.7"]),
    ("p172.test", &["172.16.5.4"]),
    ("p192.test", &["192.168.1.1"]),
    ("meta.test", &["169.254.169.254"]),
    ("meta6.test", &["fd00:ec2::254"]),
    ("alibaba.test", &["100.100.100.200"]),
    ("oracle.test", &["192.0.0.192"]),
    ("cgnat.test", &["100.64.0.1"]),
    ("doc.test", &["192.0.2.1"]),
    ("doc6.test", &["2001:db8::1"]),
    ("mcast.test", &["224.0.0.251"]),
    ("mcast6.test", &["ff02::1"]),
    ("bcast.test", &["255.255.255.255"]),
    ("zero.test", &["0.0.0.0"]),
    ("zero6.test", &["::"]),
    ("reserved.test", &["240.0.0.1"]),
    ("bench.test", &["198.18.0.1"]),
    ("ula.test", &["fd12:3456::1"]),
    ("ll6.test", &["fe80::1"]),
    ("mapped.test", &["::ffff:169.254.169.254"]),
    ("nat64.test", &["64:ff9b::a00:1"]),
    ("nat64local.test", &["64:ff9b:1:a9fe:a9:fe00:808:808"]),
    ("sixtofour.test", &["2002:a9fe:a9fe::1"]),
    ("teredo.test", &["2001:0:4136:e378:8000:63bf:f5ff:fffe"]),
    ("sitelocal.test", &["fec0::1"]),
    ("mixed-private.test", &["127.0.0.1", "10.0.0.1"]),
    ("mixed-meta.test", &["127.0.0.1", "169.254.169.254"]),
    ("mixed-meta6.test", &["::1", "fd00:ec2::254"]),
    ("mixed-first-bad.test", &["10.0.0.1", "127.0.0.1"]),
    ("mixed-mapped.test", &["127.0.0.1", "::ffff:10.0.0.1"]),
    ("mixed-many.test", &["127.0.0.1", "127.0.0.2", "127.0.0.3", "100.64.0.1"]),
    ("empty.test", &[]),
];

/// Names on the upstream's certificate: what a case may reach.
const CERT_NAMES: &[&str] = &[
    "api.example.com",
    "other.example.com",
    "example.com",
    "a.example.com",
    "a.b.example.com",
    "xn--bcher-kva.example",
    "rebind.example.com",
    "127.0.0.1",
    "::1",
];

/// The cases, one a line so the table reads down its columns.
#[rustfmt::skip]
const CASES: &[Case] = &[
    // Numeric IPv4 forms, normalized by the URL parser, then checked as addresses.
    case("decimal loopback under *", "https://2130706433/", ANY, NonPublic("loopback")),
    case("decimal loopback over http", "http://2130706433/", ANY, Scheme("http")),
    case("octal loopback", "https://0177.0.0.1/", ANY, NonPublic("loopback")),
    case("hex dotted loopback", "https://0x7f.0.0.1/", ANY, NonPublic("loopback")),
    case("hex whole loopback", "https://0x7f000001/", ANY, NonPublic("loopback")),
    case("upper-case hex loopback", "https://0X7F.0.0.1/", ANY, NonPublic("loopback")),
    case("short form 127.1", "https://127.1/", ANY, NonPublic("loopback")),
    case("short form 127.0.1", "https://127.0.1/", ANY, NonPublic("loopback")),
    case("octal short form", "https://0177.1/", ANY, NonPublic("loopback")),
    case("hex short form", "https://0x7f.1/", ANY, NonPublic("loopback")),
    case("octal whole loopback", "https://017700000001/", ANY, NonPublic("loopback")),
    case("mixed hex and octal", "https://0x7f.000.00.01/", ANY, NonPublic("loopback")),
    case("hex zero in the middle", "https://127.0x0.0.1/", ANY, NonPublic("loopback")),
    case("loopback with a trailing dot", "https://127.0.0.1./", ANY, NonPublic("loopback")),
    case("loopback not the first of 127/8", "https://127.255.255.254/", ANY, NonPublic("loopback")),
    case("bare zero", "https://0/", ANY, NonPublic("unspecified")),
    case("0.0.0.0", "https://0.0.0.0/", ANY, NonPublic("unspecified")),
    case("this-network 0.1.2.3", "https://0.1.2.3/", ANY, NonPublic("reserved")),
    case("metadata dotted", "https://169.254.169.254/latest/meta-data/", ANY, NonPublic("link-local")),
    case("metadata decimal", "https://2852039166/", ANY, NonPublic("link-local")),
    case("metadata hex whole", "https://0xa9fea9fe/", ANY, NonPublic("link-local")),
    case("metadata hex dotted upper case", "https://0xA9.0xFE.0xA9.0xFE/", ANY, NonPublic("link-local")),
    case("metadata octal", "https://0251.0376.0251.0376/", ANY, NonPublic("link-local")),
    case("metadata 16-bit last part", "https://169.254.43518/", ANY, NonPublic("link-local")),
    case("private decimal", "https://167772161/", ANY, NonPublic("private")),
    case("private short form", "https://10.1/", ANY, NonPublic("private")),
    case("private 172.16/12", "https://172.31.255.255/", ANY, NonPublic("private")),
    case("private 192.168 as hex", "https://0xc0a80001/", ANY, NonPublic("private")),
    case("CGNAT", "https://100.64.0.1/", ANY, NonPublic("shared address space (CGNAT)")),
    case("Alibaba metadata", "https://100.100.100.200/", ANY, NonPublic("cloud metadata")),
    case("Oracle metadata 192.0.0.192", "https://192.0.0.192/", ANY, NonPublic("reserved")),
    case("multicast", "https://224.0.0.1/", ANY, NonPublic("multicast")),
    case("broadcast", "https://255.255.255.255/", ANY, NonPublic("broadcast")),
    case("broadcast as hex", "https://0xffffffff/", ANY, NonPublic("broadcast")),
    case("class E", "https://240.0.0.1/", ANY, NonPublic("reserved")),
    case("benchmarking", "https://198.18.0.1/", ANY, NonPublic("benchmarking")),
    case("documentation", "https://192.0.2.1/", ANY, NonPublic("documentation")),
    case("five parts", "https://1.2.3.4.5/", ANY, NotAUrl),
    case("bad octal digit", "https://09.0.0.1/", ANY, NotAUrl),
    case("octet out of range", "https://256.0.0.1/", ANY, NotAUrl),
    case("decimal out of range", "https://4294967296/", ANY, NotAUrl),
    case("full-width digits", "https://１２７.０.０.１/", ANY, NonPublic("loopback")),
    case("ideographic full stops", "https://127。0。0。1/", ANY, NonPublic("loopback")),
    case("percent-encoded digits", "https://%31%32%37.0.0.1/", ANY, NonPublic("loopback")),
    case("circled digits", "https://①②⑦.0.0.1/", ANY, NonPublic("loopback")),
    // Without `*`, an IP literal matches no grant, whatever its form.
    case("decimal loopback under a name grant", "https://2130706433/", API, NotDeclared("127.0.0.1")),
    case("hex short form under a name grant", "https://0x7f.1/", API, NotDeclared("127.0.0.1")),
    case("metadata under its own address as a grant", "https://169.254.169.254/", &["169.254.169.254"], NotDeclared("169.254.169.254")),
    case("IPv6 loopback under a name grant", "https://[::1]/", API, NotDeclared("::1")),
    case("an IP literal under a subdomain grant", "https://127.0.0.1/", &["*.0.0.1"], NotDeclared("127.0.0.1")),
    case("an IP literal under a name grant, loopback allowed", "https://127.0.0.1/", API, NotDeclared("127.0.0.1")).on_loopback(),
    // The control: `*` opens a public address (loopback stands in for one).
    case("hex short form reaches its address under * when allowed", "https://0x7f.1/", ANY, Reached("127.0.0.1", "127.0.0.1:443")).on_loopback(),
    case("an IPv6 literal reaches its address under * when allowed", "https://[::1]/", ANY, Reached("::1", "[::1]:443")).on_loopback(),
    // IPv6 literals and the forms that carry IPv4.
    case("IPv6 loopback", "https://[::1]/", ANY, NonPublic("loopback")),
    case("IPv6 loopback in full", "https://[0:0:0:0:0:0:0:1]/", ANY, NonPublic("loopback")),
    case("IPv6 unspecified", "https://[::]/", ANY, NonPublic("unspecified")),
    case("mapped dotted", "https://[::ffff:127.0.0.1]/", ANY, NonPublic("loopback")),
    case("mapped hex", "https://[::ffff:7f00:1]/", ANY, NonPublic("loopback")),
    case("mapped in full", "https://[0:0:0:0:0:ffff:127.0.0.1]/", ANY, NonPublic("loopback")),
    case("mapped metadata", "https://[::ffff:a9fe:a9fe]/", ANY, NonPublic("link-local")),
    case("mapped private", "https://[::ffff:10.0.0.1]/", ANY, NonPublic("private")),
    case("mapped loopback, loopback allowed", "https://[::ffff:127.0.0.1]/", ANY, NonPublic("loopback")).on_loopback(),
    case("compatible loopback", "https://[::127.0.0.1]/", ANY, NonPublic("loopback")),
    case("compatible private", "https://[::10.0.0.1]/", ANY, NonPublic("private")),
    case("compatible metadata", "https://[::a9fe:a9fe]/", ANY, NonPublic("link-local")),
    case("IPv4-translated (SIIT)", "https://[::ffff:0:7f00:1]/", ANY, NonPublic("reserved")),
    case("mapped under a non-zero prefix", "https://[1::ffff:127.0.0.1]/", ANY, NonPublic("reserved")),
    case("NAT64 private", "https://[64:ff9b::a00:1]/", ANY, NonPublic("private")),
    case("NAT64 loopback", "https://[64:ff9b::7f00:1]/", ANY, NonPublic("loopback")),
    case("NAT64 metadata", "https://[64:ff9b::169.254.169.254]/", ANY, NonPublic("link-local")),
    case("local-use NAT64, public last 32 bits", "https://[64:ff9b:1::808:808]/", ANY, NonPublic("reserved")),
    case("local-use NAT64 /48 metadata with a public suffix", "https://[64:ff9b:1:a9fe:a9:fe00:808:808]/", ANY, NonPublic("reserved")),
    case("6to4 loopback", "https://[2002:7f00:1::]/", ANY, NonPublic("loopback")),
    case("6to4 metadata", "https://[2002:a9fe:a9fe::1]/", ANY, NonPublic("link-local")),
    case("6to4 private", "https://[2002:a00:1::1]/", ANY, NonPublic("private")),
    case("Teredo loopback", "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", ANY, NonPublic("loopback")),
    case("Teredo private", "https://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/", ANY, NonPublic("private")),
    case("zone id, encoded", "https://[fe80::1%25eth0]/", ANY, NotAUrl),
    case("zone id, raw", "https://[fe80::1%eth0]/", ANY, NotAUrl),
    case("link-local", "https://[fe80::1]/", ANY, NonPublic("link-local")),
    case("link-local, top of range", "https://[febf::1]/", ANY, NonPublic("link-local")),
    case("unique local fc00", "https://[fc00::1]/", ANY, NonPublic("unique local")),
    case("unique local fd", "https://[fd12:3456:789a::1]/", ANY, NonPublic("unique local")),
    case("AWS metadata over IPv6", "https://[fd00:ec2::254]/", ANY, NonPublic("cloud metadata")),
    case("multicast link scope", "https://[ff02::1]/", ANY, NonPublic("multicast")),
    case("multicast site scope", "https://[ff05::1:3]/", ANY, NonPublic("multicast")),
    case("site-local (deprecated)", "https://[fec0::1]/", ANY, NonPublic("reserved")),
    case("discard prefix", "https://[100::1]/", ANY, NonPublic("reserved")),
    case("IPv6 documentation", "https://[2001:db8::1]/", ANY, NonPublic("documentation")),
    case("IPv6 documentation 3fff", "https://[3fff::1]/", ANY, NonPublic("documentation")),
    case("IPv6 benchmarking", "https://[2001:2::1]/", ANY, NonPublic("benchmarking")),
    case("IPv6 outside global unicast", "https://[4000::1]/", ANY, NonPublic("reserved")),
    // Names that resolve to addresses no app may reach.
    case("localhost", "https://localhost/", ANY, NonPublic("loopback")),
    case("localhost with a trailing dot", "https://localhost./", ANY, NonPublic("loopback")),
    case("name to 127.0.0.2", "https://loop.test/", ANY, NonPublic("loopback")),
    case("name to ::1", "https://loop6.test/", ANY, NonPublic("loopback")),
    case("name to 10/8", "https://private.test/", ANY, NonPublic("private")),
    case("name to 172.16/12", "https://p172.test/", ANY, NonPublic("private")),
    case("name to 192.168/16", "https://p192.test/", ANY, NonPublic("private")),
    case("name to the metadata address", "https://meta.test/", ANY, NonPublic("link-local")),
    case("name to AWS IPv6 metadata", "https://meta6.test/", ANY, NonPublic("cloud metadata")),
    case("name to Alibaba metadata", "https://alibaba.test/", ANY, NonPublic("cloud metadata")),
    case("name to Oracle metadata", "https://oracle.test/", ANY, NonPublic("reserved")),
    case("name to CGNAT", "https://cgnat.test/", ANY, NonPublic("shared address space (CGNAT)")),
    case("name to documentation", "https://doc.test/", ANY, NonPublic("documentation")),
    case("name to IPv6 documentation", "https://doc6.test/", ANY, NonPublic("documentation")),
    case("name to multicast", "https://mcast.test/", ANY, NonPublic("multicast")),
    case("name to IPv6 multicast", "https://mcast6.test/", ANY, NonPublic("multicast")),
    case("name to broadcast", "https://bcast.test/", ANY, NonPublic("broadcast")),
    case("name to 0.0.0.0", "https://zero.test/", ANY, NonPublic("unspecified")),
    case("name to ::", "https://zero6.test/", ANY, NonPublic("unspecified")),
    case("name to class E", "https://reserved.test/", ANY, NonPublic("reserved")),
    case("name to benchmarking", "https://bench.test/", ANY, NonPublic("benchmarking")),
    case("name to unique local", "https://ula.test/", ANY, NonPublic("unique local")),
    case("name to IPv6 link-local", "https://ll6.test/", ANY, NonPublic("link-local")),
    case("name to mapped metadata", "https://mapped.test/", ANY, NonPublic("link-local")),
    case("name to NAT64 private", "https://nat64.test/", ANY, NonPublic("private")),
    case("name to local-use NAT64", "https://nat64local.test/", ANY, NonPublic("reserved")),
    case("name to 6to4 metadata", "https://sixtofour.test/", ANY, NonPublic("link-local")),
    case("name to Teredo private", "https://teredo.test/", ANY, NonPublic("private")),
    case("name to site-local", "https://sitelocal.test/", ANY, NonPublic("reserved")),
    case("a granted subdomain resolving private", "https://internal.example.com/", SUBS, NonPublic("private")),
    case("a granted name that does not resolve", "https://nxdomain.test/", ANY, Unresolved),
    case("a granted name with no addresses", "https://empty.test/", ANY, Unresolved),
    // Any non-public address among several refuses the whole request.
    case("loopback then private", "https://mixed-private.test/", ANY, NonPublic("private")).on_loopback(),
    case("loopback then metadata", "https://mixed-meta.test/", ANY, NonPublic("link-local")).on_loopback(),
    case("::1 then IPv6 metadata", "https://mixed-meta6.test/", ANY, NonPublic("cloud metadata")).on_loopback(),
    case("private then loopback", "https://mixed-first-bad.test/", ANY, NonPublic("private")).on_loopback(),
    case("loopback then mapped private", "https://mixed-mapped.test/", ANY, NonPublic("private")).on_loopback(),
    case("three good then CGNAT", "https://mixed-many.test/", ANY, NonPublic("shared address space (CGNAT)")).on_loopback(),
    // Full-width characters, trailing dots, encodings, IDNA.
    case("full-width first letter", "https://ｅxample.com/", EXAMPLE, AT_EXAMPLE).on_loopback(),
    case("full-width name and dot", "https://ｅｘａｍｐｌｅ．ｃｏｍ/", EXAMPLE, AT_EXAMPLE).on_loopback(),
    case("ideographic full stop in a name", "https://example。com/", EXAMPLE, AT_EXAMPLE).on_loopback(),
    case("trailing dot", "https://example.com./", EXAMPLE, AT_EXAMPLE).on_loopback(),
    case("ideographic trailing dot", "https://example.com。/", EXAMPLE, AT_EXAMPLE).on_loopback(),
    case("percent-encoded letter", "https://%65xample.com/", EXAMPLE, AT_EXAMPLE).on_loopback(),
    case("soft hyphen vanishes", "https://ex%C2%ADample.com/", EXAMPLE, AT_EXAMPLE).on_loopback(),
    case("two trailing dots", "https://example.com../", EXAMPLE, EmptyLabel).on_loopback(),
    case("leading dot under a subdomain grant", "https://.example.com/", SUBS, EmptyLabel).on_loopback(),
    case("empty label under a subdomain grant", "https://a..example.com/", SUBS, EmptyLabel).on_loopback(),
    case("encoded ideographic stop joins a suffix", "https://example.com%E3%80%82evil.test/", EXAMPLE, NotDeclared("example.com.evil.test")).on_loopback(),
    case("CRLF inside a host is dropped by the parser", "https://api.example.com\r\n.evil.test/", API, NotDeclared("api.example.com.evil.test")).on_loopback(),
    case("tab inside a host is dropped by the parser", "https://api.exa\tmple.com/", API, AT_API).on_loopback(),
    case("NUL inside a host", "https://api.example.com\0.evil.test/", API, NotAUrl).on_loopback(),
    case("encoded NUL inside a host", "https://api.example.com%00.evil.test/", API, NotAUrl).on_loopback(),
    case("Cyrillic look-alike", "https://аpple.example/", &["apple.example"], NotDeclared("xn--pple-43d.example")).on_loopback(),
    case("punycode look-alike", "https://xn--pple-43d.example/", &["apple.example"], NotDeclared("xn--pple-43d.example")).on_loopback(),
    case("plain name under a punycode grant", "https://apple.example/", &["xn--pple-43d.example"], NotDeclared("apple.example")).on_loopback(),
    case("Unicode name under its punycode grant", "https://bücher.example/", &["xn--bcher-kva.example"], Reached("xn--bcher-kva.example", "127.0.0.1:443")).on_loopback(),
    case("invalid punycode", "https://xn--a.example.com/", SUBS, NotAUrl).on_loopback(),
    // User-info and other authority confusion.
    case("allowed name as user-info", "https://api.example.com@evil.test/", API, UserInfo).on_loopback(),
    case("allowed name and port as user-info", "https://api.example.com:443@evil.test/", API, UserInfo).on_loopback(),
    case("user and password", "https://user:pw@api.example.com/", API, UserInfo).on_loopback(),
    case("empty user-info", "https://@api.example.com/", API, UserInfo).on_loopback(),
    case("empty user and password", "https://:@api.example.com/", API, UserInfo).on_loopback(),
    case("user-info with encoded slash", "https://api.example.com%2f@evil.test/", API, UserInfo).on_loopback(),
    case("user-info with encoded hash", "https://api.example.com%23@evil.test/", API, UserInfo).on_loopback(),
    case("user-info with space and ampersand", "https://api.example.com &@evil.test# @api.example.com/", API, UserInfo).on_loopback(),
    case("user-info before an internal address", "https://api.example.com@127.0.0.1/", ANY, UserInfo),
    case("allowed name after a hash", "https://evil.test#@api.example.com/", API, NotDeclared("evil.test")).on_loopback(),
    case("allowed name after a question mark", "https://evil.test?@api.example.com/", API, NotDeclared("evil.test")).on_loopback(),
    case("backslash before @ ends the authority", "https://api.example.com\\@evil.test/", API, AT_API).on_loopback(),
    case("backslash before the allowed name", "https://evil.test\\api.example.com/", API, NotDeclared("evil.test")).on_loopback(),
    case("slash-backslash authority", "https:/\\evil.test/", API, NotDeclared("evil.test")).on_loopback(),
    case("backslash authority", "https:\\\\evil.test/", API, NotDeclared("evil.test")).on_loopback(),
    case("encoded @ in a host", "https://evil.test%40api.example.com/", API, NotAUrl).on_loopback(),
    case("@ in the path", "https://api.example.com/@evil.test", API, AT_API).on_loopback(),
    case("CRLF in the path is dropped by the parser", "https://api.example.com/\r\nHost: evil.test", API, AT_API).on_loopback(),
    // Schemes.
    case("http", "http://api.example.com/", API, Scheme("http")).on_loopback(),
    case("http to loopback", "http://127.0.0.1/", ANY, Scheme("http")).on_loopback(),
    case("ftp", "ftp://api.example.com/", API, Scheme("ftp")).on_loopback(),
    case("file", "file:///etc/passwd", ANY, Scheme("file")).on_loopback(),
    case("file with a host", "file://localhost/etc/passwd", ANY, Scheme("file")).on_loopback(),
    case("gopher to redis", "gopher://127.0.0.1:6379/_INFO", ANY, Scheme("gopher")).on_loopback(),
    case("dict to memcached", "dict://127.0.0.1:11211/stat", ANY, Scheme("dict")).on_loopback(),
    case("ldap", "ldap://127.0.0.1/", ANY, Scheme("ldap")).on_loopback(),
    case("data", "data:text/plain,hi", ANY, Scheme("data")).on_loopback(),
    case("javascript", "javascript:alert(1)", ANY, Scheme("javascript")).on_loopback(),
    case("ws", "ws://api.example.com/", API, Scheme("ws")).on_loopback(),
    case("wss", "wss://api.example.com/", API, Scheme("wss")).on_loopback(),
    case("blob", "blob:https://api.example.com/x", ANY, Scheme("blob")).on_loopback(),
    case("no scheme", "//api.example.com/", API, NotAUrl).on_loopback(),
    case("a path alone", "/hello", API, NotAUrl).on_loopback(),
    case("upper-case scheme and host", "HTTPS://API.EXAMPLE.COM/", API, AT_API).on_loopback(),
    case("https without slashes", "https:api.example.com/", API, AT_API).on_loopback(),
    // Ports.
    case("ssh port", "https://api.example.com:22/", API, Port(22)).on_loopback(),
    case("smtp port", "https://api.example.com:25/", API, Port(25)).on_loopback(),
    case("redis port", "https://api.example.com:6379/", API, Port(6379)).on_loopback(),
    case("memcached port", "https://api.example.com:11211/", API, Port(11211)).on_loopback(),
    case("docker port", "https://api.example.com:2375/", API, Port(2375)).on_loopback(),
    case("kubelet port", "https://api.example.com:10250/", API, Port(10250)).on_loopback(),
    case("port 0", "https://api.example.com:0/", API, Port(0)).on_loopback(),
    case("port 65535", "https://api.example.com:65535/", API, Port(65535)).on_loopback(),
    case("port out of range", "https://api.example.com:65536/", API, NotAUrl).on_loopback(),
    case("negative port", "https://api.example.com:-1/", API, NotAUrl).on_loopback(),
    case("odd port on an internal address", "https://10.0.0.1:6379/", ANY, Port(6379)),
    case("port 8443 is one of Forge's", "https://api.example.com:8443/", API, Reached("api.example.com", "127.0.0.1:8443")).on_loopback(),
    case("port 80 over https is one of Forge's", "https://api.example.com:80/", API, Reached("api.example.com", "127.0.0.1:80")).on_loopback(),
    case("port with a leading zero", "https://api.example.com:0443/", API, AT_API).on_loopback(),
    // Grant matching.
    case("*.domain does not match the domain", "https://example.com/", SUBS, NotDeclared("example.com")).on_loopback(),
    case("*.domain does not match a longer name", "https://evilexample.com/", SUBS, NotDeclared("evilexample.com")).on_loopback(),
    case("*.domain does not match a suffix trick", "https://example.com.evil.test/", SUBS, NotDeclared("example.com.evil.test")).on_loopback(),
    case("*.domain does not match a subdomain under a suffix trick", "https://a.example.com.evil.test/", SUBS, NotDeclared("a.example.com.evil.test")).on_loopback(),
    case("*.domain matches a subdomain", "https://a.example.com/", SUBS, Reached("a.example.com", "127.0.0.1:443")).on_loopback(),
    case("*.domain matches a deeper subdomain", "https://a.b.example.com/", SUBS, Reached("a.b.example.com", "127.0.0.1:443")).on_loopback(),
    case("*.domain matches whatever the case", "https://A.EXAMPLE.COM/", SUBS, Reached("a.example.com", "127.0.0.1:443")).on_loopback(),
    case("*.domain matches a trailing dot", "https://a.example.com./", SUBS, Reached("a.example.com", "127.0.0.1:443")).on_loopback(),
    case("*.DOMAIN matches whatever the case", "https://a.example.com/", &["*.EXAMPLE.COM"], Reached("a.example.com", "127.0.0.1:443")).on_loopback(),
    case("*.domain. matches without the dot", "https://a.example.com/", &["*.example.com."], Reached("a.example.com", "127.0.0.1:443")).on_loopback(),
    case("a name does not match its subdomain", "https://a.example.com/", EXAMPLE, NotDeclared("a.example.com")).on_loopback(),
    case("a name does not match a suffix trick", "https://example.com.evil.test/", EXAMPLE, NotDeclared("example.com.evil.test")).on_loopback(),
    case("a name does not match a longer name", "https://evilexample.com/", EXAMPLE, NotDeclared("evilexample.com")).on_loopback(),
    case("a name does not match a shorter name", "https://example.co/", EXAMPLE, NotDeclared("example.co")).on_loopback(),
    case("a name does not match a hyphenated look-alike", "https://example-com.evil.test/", EXAMPLE, NotDeclared("example-com.evil.test")).on_loopback(),
    case("a name matches whatever the case", "https://EXAMPLE.com/", EXAMPLE, AT_EXAMPLE).on_loopback(),
    case("an upper-case grant matches", "https://example.com/", &["EXAMPLE.COM"], AT_EXAMPLE).on_loopback(),
    case("a grant with a trailing dot matches", "https://example.com/", &["example.com."], AT_EXAMPLE).on_loopback(),
    case("a remote is not a fetch grant", "https://api.example.com/", &["remote:api"], NotDeclared("api.example.com")).on_loopback(),
    case("no grants", "https://api.example.com/", NONE, NotDeclared("api.example.com")).on_loopback(),
    case("another host's grant", "https://api.example.com/", &["other.example.com"], NotDeclared("api.example.com")).on_loopback(),
    case("* reaches a public name", "https://api.example.com/", ANY, AT_API).on_loopback(),
    case("* does not open loopback in production", "https://api.example.com/", ANY, NonPublic("loopback")),
    // Request smuggling through headers and methods: refused before anything.
    case("CRLF in a header value", ECHO, API, Header).on_loopback().headers(&[("X-A", "a\r\nHost: evil.test")]),
    case("LF in a header value", ECHO, API, Header).on_loopback().headers(&[("X-A", "a\nb")]),
    case("CR in a header value", ECHO, API, Header).on_loopback().headers(&[("X-A", "a\rb")]),
    case("NUL in a header value", ECHO, API, Header).on_loopback().headers(&[("X-A", "a\0b")]),
    case("DEL in a header value", ECHO, API, Header).on_loopback().headers(&[("X-A", "a\u{7f}b")]),
    case("a smuggled request in a header value", ECHO, API, Header).on_loopback().headers(&[("X-A", "a\r\n\r\nGET /admin HTTP/1.1\r\nHost: 10.0.0.1")]),
    case("CRLF in a header name", ECHO, API, Header).on_loopback().headers(&[("X-A\r\nHost", "evil.test")]),
    case("NUL in a header name", ECHO, API, Header).on_loopback().headers(&[("X-\0A", "b")]),
    case("colon in a header name", ECHO, API, Header).on_loopback().headers(&[("X-A:", "b")]),
    case("space in a header name", ECHO, API, Header).on_loopback().headers(&[("X A", "b")]),
    case("empty header name", ECHO, API, Header).on_loopback().headers(&[("", "b")]),
    case("non-ASCII header name", ECHO, API, Header).on_loopback().headers(&[("X-Ä", "b")]),
    case("a bad header after good ones", ECHO, API, Header).on_loopback().headers(&[("Accept", "*/*"), ("X-A", "b\r\n")]),
    case("a tab in a header value is allowed", ECHO, API, AT_API).on_loopback().headers(&[("X-A", "a\tb")]),
    case("the app's Host header is dropped", ECHO, API, AT_API).on_loopback().headers(&[("Host", "10.0.0.1")]),
    case("the app's Transfer-Encoding is dropped", ECHO, API, AT_API).on_loopback().headers(&[("Transfer-Encoding", "chunked")]),
    case("the app's Content-Length is dropped", ECHO, API, AT_API).on_loopback().headers(&[("Content-Length", "100")]),
    case("CRLF in the method", ECHO, API, Method).on_loopback().method("GET\r\n"),
    case("a request line in the method", ECHO, API, Method).on_loopback().method("GET /admin HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\nGET"),
    case("CONNECT", "https://api.example.com/", API, Method).on_loopback().method("CONNECT"),
    case("TRACE", "https://api.example.com/", API, Method).on_loopback().method("TRACE"),
    case("a lower-case method is allowed", ECHO, API, AT_API).on_loopback().method("get"),
    // Sizes.
    case("a request body over the limit", ECHO, API, RequestTooLarge).on_loopback().method("POST").body(MAX_REQUEST + 1),
    case("a request body at the limit", ECHO, API, AT_API).on_loopback().method("POST").body(MAX_REQUEST),
    case("a response over the limit", "https://api.example.com/big", API, ResponseTooLarge).on_loopback(),
    case("an endless response", "https://api.example.com/endless", API, ResponseTooLarge).on_loopback(),
    // Redirects: each hop is checked as if it were new.
    case("redirect scheme-relative to a private address", "https://api.example.com/to?u=//10.0.0.1/", ANY, NonPublic("private")).on_loopback(),
    case("redirect slash-backslash to a private address", "https://api.example.com/to?u=/%5C10.0.0.1/", ANY, NonPublic("private")).on_loopback(),
    case("redirect backslashes to a private address", "https://api.example.com/to?u=https:%5C%5C10.0.0.1%5C", ANY, NonPublic("private")).on_loopback(),
    case("redirect to the metadata address", "https://api.example.com/to?u=https://169.254.169.254/latest/meta-data/", ANY, NonPublic("link-local")).on_loopback(),
    case("redirect to octal metadata", "https://api.example.com/to?u=https://0251.0376.0251.0376/", ANY, NonPublic("link-local")).on_loopback(),
    case("redirect to IPv6 metadata", "https://api.example.com/to?u=https://[fd00:ec2::254]/", ANY, NonPublic("cloud metadata")).on_loopback(),
    case("redirect to mapped metadata", "https://api.example.com/to?u=https://[::ffff:a9fe:a9fe]/", ANY, NonPublic("link-local")).on_loopback(),
    case("redirect to CGNAT", "https://api.example.com/to?u=https://100.64.0.1/", ANY, NonPublic("shared address space (CGNAT)")).on_loopback(),
    case("redirect to a name resolving private", "https://api.example.com/to?u=https://private.test/", ANY, NonPublic("private")).on_loopback(),
    case("redirect to a name resolving to metadata", "https://api.example.com/to?u=https://meta.test/", ANY, NonPublic("link-local")).on_loopback(),
    case("redirect to a name mixing good and private", "https://api.example.com/to?u=https://mixed-private.test/", ANY, NonPublic("private")).on_loopback(),
    case("307 to a private address", "https://api.example.com/to?s=307&u=https://10.0.0.1/", ANY, NonPublic("private")).on_loopback(),
    case("308 to a private address", "https://api.example.com/to?s=308&u=https://10.0.0.1/", ANY, NonPublic("private")).on_loopback(),
    case("301 to a private address", "https://api.example.com/to?s=301&u=https://10.0.0.1/", ANY, NonPublic("private")).on_loopback(),
    case("303 to a private address", "https://api.example.com/to?s=303&u=https://10.0.0.1/", ANY, NonPublic("private")).on_loopback(),
    case("redirect to http", "https://api.example.com/to?u=http://api.example.com/", ANY, Scheme("http")).on_loopback(),
    case("redirect to file", "https://api.example.com/to?u=file:///etc/passwd", ANY, Scheme("file")).on_loopback(),
    case("redirect to gopher", "https://api.example.com/to?u=gopher://127.0.0.1:6379/_INFO", ANY, Scheme("gopher")).on_loopback(),
    case("redirect to data", "https://api.example.com/to?u=data:text/plain,hi", ANY, Scheme("data")).on_loopback(),
    case("redirect with user-info", "https://api.example.com/to?u=https://user:pw@api.example.com/", ANY, UserInfo).on_loopback(),
    case("redirect to an odd port", "https://api.example.com/to?u=https://api.example.com:6379/", ANY, Port(6379)).on_loopback(),
    case("redirect to an undeclared host", "https://api.example.com/to?u=https://other.example.com/", API, NotDeclared("other.example.com")).on_loopback(),
    case("redirect to an IP literal under a name grant", "https://api.example.com/to?u=https://127.0.0.1/", API, NotDeclared("127.0.0.1")).on_loopback(),
    case("redirect to a zone id", "https://api.example.com/to?u=https://[fe80::1%25eth0]/", ANY, NotAUrl).on_loopback(),
    case("redirect to the same origin is followed", "https://api.example.com/to?u=/hello", API, AT_API).on_loopback(),
    case("a redirect loop", "https://api.example.com/loop", API, TooManyRedirects).on_loopback(),
];

/// Every case in the table, against one upstream; all failures reported
/// together, by name.
#[tokio::test]
async fn every_ssrf_case_is_refused_or_reaches_only_what_it_names() {
    assert!(CASES.len() >= MIN_CASES, "the suite shrank to {} cases (at least {MIN_CASES})", CASES.len());
    let mut names = HashSet::new();
    for case in CASES {
        assert!(names.insert(case.name), "two cases are named {:?}", case.name);
    }
    let upstream = Upstream::start().await;
    let dns = Arc::new(TableDns::new());
    let dialer = &upstream.dialer;
    let production = upstream.gateway(dns.clone(), false);
    let loopback = upstream.gateway(dns.clone(), true);

    let mut failures = Vec::new();
    for case in CASES {
        let gw = match case.mode {
            Mode::Production => &production,
            Mode::Loopback => &loopback,
        };
        if let Err(why) = run(case, gw, &dns, dialer).await {
            failures.push(format!("{}: {why}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} SSRF cases failed:\n  {}",
        failures.len(),
        CASES.len(),
        failures.join("\n  ")
    );
    dialer.assert_stayed_on_loopback();
}

/// One case: what happened, against what it wants and against what must
/// hold whatever the outcome.
async fn run(case: &Case, gw: &Gateway, dns: &TableDns, dialer: &LoopbackOnly) -> Result<(), String> {
    let escaped_before = dialer.escapes().len();
    dialer.take_dialled();
    dns.take_lookups();
    let request = FetchRequest {
        method: case.method.into(),
        url: case.url.into(),
        headers: case.headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        body: vec![b'x'; case.body],
    };
    let mut records = Vec::new();
    let budget = budget();
    let result = gw.fetch(&grants(case.grant), &budget, request, &mut records).await;
    let dialled = dialer.take_dialled();
    let lookups = dns.take_lookups();
    let got = match &result {
        Ok(r) => format!("reached {} ({})", r.url, r.status),
        Err(e) => format!("{e:?}"),
    };

    // Whatever the outcome: no escape, a dial only for a hop that passed
    // every check, at most one resolution per hop.
    let escapes = dialer.escapes();
    if escapes.len() != escaped_before {
        return Err(format!("tried to dial off loopback: {:?}; got {got}", &escapes[escaped_before..]));
    }
    let passed = records.iter().filter(|r| r.allowed).count();
    if dialled.len() != passed {
        return Err(format!("dialled {dialled:?} but {passed} hop(s) passed the checks; got {got}"));
    }
    if lookups.len() > records.len() {
        return Err(format!("resolved {lookups:?} for {} hop(s); got {got}", records.len()));
    }

    let want = case.want;
    match (want, &result) {
        (Reached(host, addr), Ok(_)) => {
            // The last hop answered; every hop was this host, dialled at
            // this address and resolved (unless a literal) under this name.
            let addr: SocketAddr = addr.parse().unwrap();
            if records.iter().any(|r| r.host != host) || dialled.iter().any(|d| *d != addr) {
                return Err(format!("want {host} at {addr}; records {records:?}, dialled {dialled:?}"));
            }
            let literal = host.parse::<IpAddr>().is_ok();
            if (literal && !lookups.is_empty()) || lookups.iter().any(|l| l != host) {
                return Err(format!("want {host} resolved as named, resolved {lookups:?}"));
            }
            Ok(())
        }
        (_, Err(e)) if refused_as(want, e) => {
            if want.is_policy() && e.code() != "ExternalEndpointNotAllowedError" {
                return Err(format!("the app would see {} for {e}", e.code()));
            }
            // Every refused hop is in the trail, not dialled.
            let hop_refused = want.is_policy() || want == Unresolved;
            if hop_refused && records.last().is_none_or(|r| r.allowed || r.reason.is_none()) {
                return Err(format!("the refusal is not recorded: {records:?}"));
            }
            if !want.dials_last_hop() && records.last().is_some_and(|r| r.allowed) {
                return Err(format!("the refused hop is recorded as allowed: {records:?}"));
            }
            if want.before_resolving() && records.len() <= 1 && !lookups.is_empty() {
                return Err(format!("resolved {lookups:?} before refusing: {e}"));
            }
            if want == Header && !e.to_string().contains("CR, LF, NUL") {
                return Err(format!("the header error does not say what is allowed: {e}"));
            }
            Ok(())
        }
        _ => Err(format!("want {want:?}, got {got}")),
    }
}

fn refused_as(want: Want, e: &FetchError) -> bool {
    match (want, e) {
        (NotAUrl, FetchError::NotAllowed(Refused::NotAUrl(..)))
        | (UserInfo, FetchError::NotAllowed(Refused::UserInfo))
        | (EmptyLabel, FetchError::NotAllowed(Refused::EmptyLabel(_)))
        | (Unresolved, FetchError::Resolve { .. })
        | (Header, FetchError::Header { .. })
        | (Method, FetchError::Method(_))
        | (RequestTooLarge, FetchError::RequestTooLarge(MAX_REQUEST))
        | (ResponseTooLarge, FetchError::ResponseTooLarge(MAX_RESPONSE))
        | (TooManyRedirects, FetchError::TooManyRedirects(5)) => true,
        (Scheme(s), FetchError::NotAllowed(Refused::Scheme(got))) => s == got,
        (Port(p), FetchError::NotAllowed(Refused::Port(got))) => p == *got,
        (NotDeclared(h), FetchError::NotAllowed(Refused::NotDeclared(got))) => h == got,
        (NonPublic(w), FetchError::NonPublic { why, .. }) => w == *why,
        _ => false,
    }
}

/// Grants as the manifest declares them.
fn grants(declared: &[&str]) -> Vec<EgressTarget> {
    declared
        .iter()
        .map(|g| match *g {
            "*" => EgressTarget::Any,
            g => match (g.strip_prefix("*."), g.strip_prefix("remote:")) {
                (Some(domain), _) => EgressTarget::Subdomains(domain.to_owned()),
                (None, Some(key)) => EgressTarget::Remote(key.to_owned()),
                (None, None) => EgressTarget::Host(g.to_owned()),
            },
        })
        .collect()
}

/// DNS rebinding: the resolver answers a loopback (standing in for a
/// public) address, then an internal one. The gateway resolves once,
/// connects to the address it checked, and the next request, resolving
/// anew, is refused.
#[tokio::test]
async fn a_dns_answer_that_changes_after_the_check_cannot_move_the_connection() {
    let upstream = Upstream::start().await;
    let dialer = &upstream.dialer;
    let grant = grants(&["rebind.example.com"]);
    let budget = budget();

    let dns = Rebinding::new(&[&["127.0.0.1"], &["10.0.0.1"], &["169.254.169.254"]]);
    let gw = upstream.gateway(dns.clone(), true);
    let mut records = Vec::new();
    let ok =
        gw.fetch(&grant, &budget, request("https://rebind.example.com/hello"), &mut records).await.unwrap();
    assert_eq!((ok.status, ok.body.as_slice()), (200, &b"hi"[..]));
    assert_eq!(dns.calls(), 1, "resolved more than once for one hop");
    assert_eq!(dialer.take_dialled(), [SocketAddr::from((Ipv4Addr::LOCALHOST, 443))]);
    assert_eq!(records[0].address, Some(IpAddr::from(Ipv4Addr::LOCALHOST)));

    let mut records = Vec::new();
    let err = gw.fetch(&grant, &budget, request("https://rebind.example.com/hello"), &mut records).await;
    assert!(matches!(err, Err(FetchError::NonPublic { why: "private", .. })), "{err:?}");
    assert_eq!(dns.calls(), 2);
    assert!(dialer.take_dialled().is_empty(), "dialled after refusing");
    assert!(!records[0].allowed && records[0].address.is_none());

    // Internal first and fine afterwards: refused, without asking again
    // for an answer it might like better.
    let dns = Rebinding::new(&[&["169.254.169.254"], &["127.0.0.1"]]);
    let gw = upstream.gateway(dns.clone(), true);
    let err = gw.fetch(&grant, &budget, request("https://rebind.example.com/hello"), &mut vec![]).await;
    assert!(matches!(err, Err(FetchError::NonPublic { why: "link-local", .. })), "{err:?}");
    assert_eq!(dns.calls(), 1);
    assert!(dialer.take_dialled().is_empty());
    dialer.assert_stayed_on_loopback();
}

/// A redirect to the same name is a new hop: resolved again, once, and
/// checked again; the rebound answer is refused and never dialled.
#[tokio::test]
async fn every_redirect_hop_is_resolved_once_and_checked_again() {
    let upstream = Upstream::start().await;
    let dialer = &upstream.dialer;
    let grant = grants(&["rebind.example.com"]);
    let budget = budget();

    let dns = Rebinding::new(&[&["127.0.0.1"], &["169.254.169.254"]]);
    let gw = upstream.gateway(dns.clone(), true);
    let mut records = Vec::new();
    let err =
        gw.fetch(&grant, &budget, request("https://rebind.example.com/to?u=/hello"), &mut records).await;
    assert!(matches!(err, Err(FetchError::NonPublic { why: "link-local", .. })), "{err:?}");
    assert_eq!(dns.calls(), 2, "one resolution per hop");
    assert_eq!(dialer.take_dialled(), [SocketAddr::from((Ipv4Addr::LOCALHOST, 443))]);
    assert_eq!(records.len(), 2);
    assert!(records[0].allowed && !records[1].allowed);

    // The same two hops with a stable answer: two resolutions, two dials.
    let dns = Rebinding::new(&[&["127.0.0.1"]]);
    let gw = upstream.gateway(dns.clone(), true);
    let ok = gw.fetch(&grant, &budget, request("https://rebind.example.com/to?u=/hello"), &mut vec![]).await;
    assert_eq!(ok.unwrap().body, b"hi");
    assert_eq!(dns.calls(), 2);
    assert_eq!(dialer.take_dialled().len(), 2);
    dialer.assert_stayed_on_loopback();
}

/// Credentials stay with the origin the app sent them to: a redirect to
/// another host or another port drops them, and coming back does not
/// restore them.
#[tokio::test]
async fn a_redirect_that_changes_origin_drops_credentials() {
    let upstream = Upstream::start().await;
    let dialer = &upstream.dialer;
    let gw = upstream.gateway(Arc::new(TableDns::new()), true);
    let grant = grants(&["api.example.com", "other.example.com"]);
    let budget = budget();
    let with_credentials = |url: &str| FetchRequest {
        headers: vec![
            ("Authorization".into(), "Bearer app-secret".into()),
            ("COOKIE".into(), "session=1".into()),
            ("proxy-authorization".into(), "Basic eDp5".into()),
            ("X-Keep".into(), "1".into()),
        ],
        ..request(url)
    };
    let seen = |body: Vec<u8>| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["headers"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_owned()).collect()
    };
    let all = ["authorization", "cookie", "proxy-authorization", "x-keep"];

    let same = gw
        .fetch(&grant, &budget, with_credentials("https://api.example.com/to?u=/echo"), &mut vec![])
        .await
        .unwrap();
    let same = seen(same.body);
    assert!(all.iter().all(|h| same.iter().any(|s| s == h)), "same origin lost headers: {same:?}");

    for (url, hops) in [
        ("https://api.example.com/to?u=https://other.example.com/echo", 2),
        ("https://api.example.com/to?u=https://api.example.com:8443/echo", 2),
        ("https://api.example.com/to?u=https://other.example.com/to%3Fu%3Dhttps://api.example.com/echo", 3),
        ("https://api.example.com/to?s=307&u=https://other.example.com/echo", 2),
    ] {
        let mut records = Vec::new();
        let res = gw.fetch(&grant, &budget, with_credentials(url), &mut records).await.unwrap();
        assert_eq!(records.len(), hops, "{url}");
        let got = seen(res.body);
        assert!(got.iter().any(|h| h == "x-keep"), "{url}: {got:?}");
        for credential in ["authorization", "cookie", "proxy-authorization"] {
            assert!(!got.iter().any(|h| h == credential), "{url}: {credential} crossed origins: {got:?}");
        }
    }
    dialer.assert_stayed_on_loopback();
}

/// A loop, and two origins bouncing between each other, stop after five
/// redirects: six hops, each checked and dialled once.
#[tokio::test]
async fn redirect_loops_stop_at_the_hop_limit() {
    let upstream = Upstream::start().await;
    let dialer = &upstream.dialer;
    let dns = Arc::new(TableDns::new());
    let gw = upstream.gateway(dns.clone(), true);
    let grant = grants(&["api.example.com", "other.example.com"]);
    let budget = budget();
    for url in ["https://api.example.com/loop", "https://api.example.com/bounce"] {
        dns.take_lookups();
        let mut records = Vec::new();
        let err = gw.fetch(&grant, &budget, request(url), &mut records).await;
        assert!(matches!(err, Err(FetchError::TooManyRedirects(5))), "{url}: {err:?}");
        assert_eq!(records.len(), 6, "{url}: the first request and five redirects");
        assert_eq!(dialer.take_dialled().len(), 6, "{url}");
        assert_eq!(dns.take_lookups().len(), 6, "{url}");
    }
    let hosts: Vec<String> = {
        let mut records = Vec::new();
        let _ = gw.fetch(&grant, &budget, request("https://api.example.com/bounce"), &mut records).await;
        records.into_iter().map(|r| r.host).collect()
    };
    assert_eq!(hosts[..3], ["api.example.com", "other.example.com", "api.example.com"]);
    dialer.assert_stayed_on_loopback();
}

fn request(url: &str) -> FetchRequest {
    FetchRequest { method: "GET".into(), url: url.into(), headers: vec![], body: vec![] }
}

/// A request budget with the default limits.
fn budget() -> Budget {
    Budget::new(&Config::new(String::new()))
}

/// The table above as a resolver, recording every name asked for.
struct TableDns {
    names: HashMap<&'static str, Vec<IpAddr>>,
    lookups: Mutex<Vec<String>>,
}

impl TableDns {
    fn new() -> Self {
        let names = DNS
            .iter()
            .map(|(name, ips)| (*name, ips.iter().map(|ip| ip.parse().unwrap()).collect()))
            .collect();
        TableDns { names, lookups: Mutex::new(Vec::new()) }
    }

    fn take_lookups(&self) -> Vec<String> {
        std::mem::take(&mut *self.lookups.lock().unwrap())
    }
}

impl Resolve for TableDns {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move {
            self.lookups.lock().unwrap().push(host.to_owned());
            let ips = self.names.get(host).ok_or_else(|| std::io::Error::other("NXDOMAIN"))?;
            Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
        })
    }
}

/// `rebind.example.com`, answering the next of its answers at each call
/// (the last one again once they run out).
struct Rebinding {
    answers: Vec<Vec<IpAddr>>,
    calls: AtomicUsize,
}

impl Rebinding {
    fn new(answers: &[&[&str]]) -> Arc<Self> {
        let answers = answers.iter().map(|ips| ips.iter().map(|ip| ip.parse().unwrap()).collect()).collect();
        Arc::new(Rebinding { answers, calls: AtomicUsize::new(0) })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Resolve for Rebinding {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move {
            if host != "rebind.example.com" {
                return Err(std::io::Error::other("NXDOMAIN"));
            }
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let ips = self.answers.get(n).or(self.answers.last()).cloned().unwrap_or_default();
            Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
        })
    }
}

/// The HTTPS upstream every reachable name stands for, on an ephemeral
/// loopback port, and the dialler that sends every loopback dial there. The
/// upstream stops when this is dropped.
struct Upstream {
    cert: kiln_crypto::tls::Identity,
    dialer: Arc<LoopbackOnly>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Upstream {
    async fn start() -> Self {
        let cert = kiln_crypto::tls::self_signed(CERT_NAMES).unwrap();
        let app = axum::Router::new()
            .route("/", get_hi())
            .route("/hello", get_hi())
            .route("/echo", any(echo))
            .route("/to", any(redirect_to))
            .route("/loop", get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }))
            .route("/bounce", get(bounce))
            .route("/big", get(|| async { "x".repeat(MAX_RESPONSE + 1) }))
            .route("/endless", get(|| async { axum::body::Body::new(Endless) }));
        let tls = kiln_crypto::tls::server_config(&cert).unwrap();
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(kiln_server::serve(listener, tls, app, async {
            let _ = stopped.await;
        }));
        Upstream { cert, dialer: LoopbackOnly::to_upstream(port), _stop: stop }
    }

    /// A gateway trusting this upstream's certificate, resolving through
    /// `resolver`, with this suite's limits.
    fn gateway(&self, resolver: Arc<dyn Resolve>, allow_loopback: bool) -> Gateway {
        let mut config = Config::new(self.cert.cert_pem.clone());
        config.insecure_allow_loopback = allow_loopback;
        config.max_request_bytes = MAX_REQUEST;
        config.max_response_bytes = MAX_RESPONSE;
        config.connect_timeout = Duration::from_secs(5);
        config.total_timeout = Duration::from_secs(10);
        Gateway::new(config, resolver, self.dialer.clone()).unwrap()
    }
}

fn get_hi() -> axum::routing::MethodRouter {
    any(|| async { "hi" })
}

/// The names of the headers that arrived.
async fn echo(headers: HeaderMap) -> impl IntoResponse {
    let names: Vec<String> = headers.keys().map(|k| k.as_str().to_owned()).collect();
    axum::Json(serde_json::json!({ "headers": names }))
}

/// A redirect to `u`, with status `s` (302 unless given).
async fn redirect_to(Query(q): Query<HashMap<String, String>>) -> Response {
    let status = q
        .get("s")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::FOUND);
    let location = q.get("u").cloned().unwrap_or_default();
    (status, [(header::LOCATION, location)]).into_response()
}

/// api.example.com and other.example.com redirecting to each other.
async fn bounce(headers: HeaderMap) -> impl IntoResponse {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let next = if host.starts_with("api.") {
        "https://other.example.com/bounce"
    } else {
        "https://api.example.com/bounce"
    };
    (StatusCode::FOUND, [(header::LOCATION, next)])
}

/// A response body that never ends.
struct Endless;

static CHUNK: [u8; 16 * 1024] = [b'x'; 16 * 1024];

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
    }
}
