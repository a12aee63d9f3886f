//! webhook-relay: receives e-invoicing webhooks at the network edge, keeps
//! each one durably before it answers, and forwards it, signed, to the
//! internal apps that subscribed to it.
//!
//! The modules, in the path of a notification (`../shared/DESIGN.md`):
//! - [`ingress`]: the HTTPS listener: routes, authentication, limits.
//! - [`providers`]: pure checks of each provider's body (TusFacturas, Dátil,
//!   NubeFact, generic) into a [`providers::Notification`].
//! - [`spool`]: the sled store with group commit, dedup and the due index.
//! - [`delivery`]: the pure state machine of one delivery and its schedule.
//! - [`signing`]: Standard Webhooks signatures.
//! - [`forwarder`]: sends due deliveries and records their outcomes.
//! - [`events`]: the relay's own operational events (a delivery dead, a
//!   subscription failing, a full spool...), stored and delivered like
//!   notifications to the subscriptions that ask for them.
//! - [`config`]: the `relay.toml` schema and its validation.
//! - [`app`]: wires the parts, owns start-up and shutdown.
//! - [`acme`]: the relay's own certificate, ordered and renewed by ACME.
//! - [`listen`]: the listening sockets: from systemd (socket activation)
//!   or bound as configured.
//! - [`reexec`]: the relay replaces its own process, on the same sockets,
//!   to reopen a spool that failed or had no room, once there is room.
//! - [`cli`]: the command line (`serve`, `check-config`, `spool dump`, ...).
//! - [`redact`]: target URLs as non-admins see them (no query, no userinfo).
//! - [`clock`]: Unix milliseconds: the system clock in service, or one that
//!   follows tokio's paused clock in tests.
//!
//! Dependencies point down: `cli` → `app` → `ingress`, `forwarder`, `events` → `spool`
//! → `providers`, `delivery`, `signing`, `config`.

#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod events;
pub mod forwarder;
pub mod ingress;
pub mod listen;
pub mod metrics;
pub mod providers;
pub mod redact;
pub mod reexec;
pub mod signing;
pub mod spool;
