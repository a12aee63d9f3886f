//! Integration tests: one binary, real TLS on loopback, a real sled spool,
//! real HTTP targets, and the built binary for crash tests.

mod abuse;
mod acme;
mod acme_shared;
mod admin;
mod admin_page;
mod app_run;
mod backup;
mod cluster;
mod corruption;
mod crash;
mod duties;
mod events;
mod forwarding;
mod full_disk;
mod helpers;
mod host;
mod ingest;
mod invoices;
mod layout;
mod memory;
mod migrate;
mod openapi;
mod operator_cli;
mod ops;
mod process;
mod progress;
mod provider_sim;
mod reconcile;
mod reconcile_admin;
mod reload;
mod scale_out;
mod spool_cli;
mod subscriptions;
