//! webhook-relay: receives e-invoicing webhooks at the network edge, keeps
//! each one durably before it answers, and forwards it, signed, to the
//! internal apps that subscribed to it.
//!
//! The modules, in the path of a notification (`../shared/DESIGN.md`;
//! `docs/architecture.md` maps every file):
//! - [`ingress`]: the HTTPS listener: routes, authentication, limits, the
//!   body budget.
//! - [`providers`]: pure checks of each provider's body (TusFacturas, Dátil,
//!   NubeFact, generic) into a [`providers::Notification`].
//! - [`spool`]: the durable store behind one async interface: a backend
//!   enum (sled today, in `spool/sled/`), role handles ([`spool::Producer`]
//!   for ingress, [`spool::Consumer`] for the forwarder, the whole
//!   [`spool::Spool`] for admins and upkeep), and the contract every
//!   backend passes.
//! - [`delivery`]: the pure state machine of one delivery and its schedule.
//! - [`signing`]: Standard Webhooks signatures.
//! - [`forwarder`]: leases due deliveries, sends them and records outcomes.
//! - [`events`]: the relay's own operational events (a delivery dead, a
//!   subscription failing, a full spool...), stored and delivered like
//!   notifications to the subscriptions that ask for them.
//! - [`reconcile`]: asks a provider's query API about a stuck invoice and
//!   stores a final answer as a notification flagged `reconciled`.
//! - [`admin`]: the admin listener: the API (a route table, each route's
//!   role declared once), the page, sessions and CSRF, bulk jobs, backup.
//! - [`metrics`]: the Prometheus families and the last hour for the page.
//! - [`config`]: the `relay.toml` schema and its validation.
//! - [`app`]: assembles the relay ([`app::Relay`]) and runs it
//!   ([`app::run`]): start-up, the watchdog, reloads, the stop.
//! - [`listen`]: the listening sockets (from systemd or bound) and the
//!   connection slots both listeners share.
//! - [`acme`]: the relay's own certificate, ordered and renewed by ACME.
//! - [`reexec`]: the relay replaces its own process, on the same sockets,
//!   to reopen a spool that failed or had no room, once there is room.
//! - [`cli`]: the command line, by job (`args`, `serve`, `spool`,
//!   `inspect`, `bulk`, `remote`, ...).
//! - [`redact`]: target URLs as non-admins see them (no query, no userinfo).
//! - [`clock`]: the one reader of the system clocks (`.clippy.toml`
//!   refuses them elsewhere); tests hand the relay a clock of their own.
//!
//! Dependencies point down: `cli` → `app` → `ingress`, `forwarder`,
//! `admin`, `events` → `spool` → `providers`, `delivery`, `signing`,
//! `config`. No module imports a sibling that imports it back (the
//! `layout` integration test fails on a cycle).

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
pub mod reconcile;
pub mod redact;
pub mod reexec;
pub mod signing;
pub mod spool;
