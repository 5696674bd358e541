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
//!
//! The gateway itself (resolution, connecting to the checked address,
//! redirects, limits, audit records) comes with the gateway issue (#6).

#![forbid(unsafe_code)]

pub mod addr;
pub mod egress;
pub mod product;
