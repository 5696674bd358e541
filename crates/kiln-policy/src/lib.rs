//! `kiln-policy`: where an app's data may go, as pure decisions the egress
//! gateway applies.
//!
//! - [`egress`]: a URL against the installation's consented
//!   `permissions.external.fetch.backend` (https only, no user-info, Forge's
//!   port list, `*.domain` meaning subdomains only).
//! - [`addr`]: Kiln's table of addresses no app may reach — loopback,
//!   private, shared, link-local and metadata, unique-local, documentation,
//!   multicast, reserved — including IPv6 forms that carry such an IPv4
//!   address.
//! - [`product`]: the route→scope table generated from Atlassian's OpenAPI
//!   documents, and the check the product gateway makes on every call.
//! - [`events`]: the product event→scope table Forge ships, and the check
//!   the event router makes before an event reaches an installation.
//!
//! The gateway itself (resolution, connecting to the checked address,
//! redirects, limits, audit records) comes with the gateway issue (#6).

#![forbid(unsafe_code)]

pub mod addr;
pub mod egress;
pub mod events;
pub mod product;
