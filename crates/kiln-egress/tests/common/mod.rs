//! Shared by the gateway's test suites: the only way they open connections.

#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "test code shared by test binaries that each use part of it; a panic is a failed test"
)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use kiln_egress::Dial;
use tokio::net::TcpStream;

/// A dialer that reaches loopback and nothing else. Every address the
/// gateway asks for is recorded; one that is not loopback is refused with
/// an error, without a packet sent, and kept as an escape for the test to
/// assert on. So a bypass in the gateway fails a test instead of reaching
/// a real network.
#[derive(Debug, Default)]
pub(crate) struct LoopbackOnly {
    /// Where loopback dials land. Test upstreams listen on 127.0.0.1 at a
    /// port the test picked, while the URLs they stand behind name 443 or
    /// another of Forge's ports; `None` dials the asked-for address as is.
    upstream: Option<u16>,
    dialled: Mutex<Vec<SocketAddr>>,
    escapes: Mutex<Vec<SocketAddr>>,
}

impl LoopbackOnly {
    /// Dial loopback addresses as asked.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(LoopbackOnly::default())
    }

    /// Dial every loopback address to 127.0.0.1:`port`.
    pub(crate) fn to_upstream(port: u16) -> Arc<Self> {
        Arc::new(LoopbackOnly { upstream: Some(port), ..LoopbackOnly::default() })
    }

    /// Loopback addresses the gateway dialled since the last call, in order.
    pub(crate) fn take_dialled(&self) -> Vec<SocketAddr> {
        std::mem::take(&mut *self.dialled.lock().unwrap())
    }

    /// Every address that was not loopback the gateway tried to dial.
    pub(crate) fn escapes(&self) -> Vec<SocketAddr> {
        self.escapes.lock().unwrap().clone()
    }

    /// Fails the test if the gateway ever tried to dial off loopback.
    pub(crate) fn assert_stayed_on_loopback(&self) {
        let escapes = self.escapes();
        assert!(escapes.is_empty(), "the gateway tried to dial off loopback: {escapes:?}");
    }
}

impl Dial for LoopbackOnly {
    fn dial<'a>(
        &'a self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + 'a>> {
        Box::pin(async move {
            // `is_loopback` is false for ::ffff:127.0.0.1 and the other
            // embedded forms: those count as escapes too.
            if !addr.ip().is_loopback() {
                self.escapes.lock().unwrap().push(addr);
                return Err(std::io::Error::other(format!("test dialer: refused to dial {addr}")));
            }
            self.dialled.lock().unwrap().push(addr);
            let target = match self.upstream {
                Some(port) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                None => addr,
            };
            TcpStream::connect(target).await
        })
    }
}
