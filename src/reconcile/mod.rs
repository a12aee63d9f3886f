//! Reconciliation: asks a provider's query API where an invoice stands
//! when its final webhook is late or lost (it is stuck, see
//! `events::stuck`), and stores a final answer as a notification of its
//! source flagged `reconciled`, delivered like any other (with
//! `x-relay-origin: reconcile`).
//!
//! - `schedule`: when an invoice's next automatic check is due, or when
//!   to give up, pure.
//! - `source_state`: a source's back-off after failed requests and its
//!   failing/recovered turns, pure.
//! - `client`: the HTTP call (the request is built and the answer read by
//!   `providers::query`, pure).

pub mod client;
pub mod schedule;
pub mod source_state;
