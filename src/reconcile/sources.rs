//! The engines of the sources with `[reconcile]`: each one's config,
//! credentials (as the provider module takes them), client, rate limiter
//! and health; built from a config, and again on a reload keeping what an
//! unchanged source had.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::client::ProviderClient;
use super::error::SetupError;
use super::schedule::Plan;
use super::source_state::SourceState;
use crate::config::{Config, ReconcileAuth, ReconcileConfig};
use crate::providers::query::QueryCredentials;
use crate::providers::Provider;

/// The config's sources, for a reload to swap at once.
#[derive(Default)]
pub struct Sources {
    pub(super) names: Vec<String>,
    pub(super) engines: BTreeMap<String, Arc<SourceEngine>>,
}

/// One source's query API: its config, client, rate and health.
pub(super) struct SourceEngine {
    pub(super) config: ReconcileConfig,
    pub(super) provider: Provider,
    pub(super) credentials: QueryCredentials,
    pub(super) client: ProviderClient,
    pub(super) limiter: governor::DefaultDirectRateLimiter,
    pub(super) plan: Plan,
    pub(super) state: Mutex<SourceState>,
}

impl SourceEngine {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn credentials(auth: &ReconcileAuth) -> QueryCredentials {
    match auth {
        ReconcileAuth::NubeFact { token, header } => QueryCredentials::NubeFact {
            token: token.expose().to_owned(),
            header: match header {
                crate::config::NubefactHeaderForm::Token => {
                    crate::providers::query::NubefactHeader::TokenQuoted
                }
                crate::config::NubefactHeaderForm::Bare => {
                    crate::providers::query::NubefactHeader::Bare
                }
            },
        },
        ReconcileAuth::TusFacturas {
            apikey,
            apitoken,
            usertoken,
        } => QueryCredentials::TusFacturas {
            apikey: apikey.expose().to_owned(),
            apitoken: apitoken.expose().to_owned(),
            usertoken: usertoken.expose().to_owned(),
        },
        ReconcileAuth::Datil { api_key } => QueryCredentials::Datil {
            api_key: api_key.expose().to_owned(),
        },
    }
}

impl Sources {
    /// The engines `config` asks for; an unchanged source keeps its own
    /// (its rate and health), a changed one keeps its health.
    pub(super) fn build(config: &Config, before: Option<&Sources>) -> Result<Sources, SetupError> {
        let mut engines = BTreeMap::new();
        for (name, source) in &config.sources {
            let Some(reconcile) = &source.reconcile else {
                continue;
            };
            let old = before.and_then(|b| b.engines.get(name));
            let after = source.reconcile_after().unwrap_or_default();
            if let Some(old) = old.filter(|old| old.config == *reconcile && old.plan.after == after)
            {
                engines.insert(name.clone(), old.clone());
                continue;
            }
            let client = ProviderClient::new(reconcile.timeout, reconcile.tls_ca.as_deref())
                .map_err(|error| SetupError {
                    name: name.clone(),
                    error,
                })?;
            let rate = reconcile.rate;
            let quota = governor::Quota::with_period(rate.replenish_interval())
                .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
                .allow_burst(
                    std::num::NonZeroU32::new(rate.count).unwrap_or(std::num::NonZeroU32::MIN),
                );
            let mut state = old.map(|old| old.state().clone()).unwrap_or_default();
            if old.is_some_and(|old| asked_otherwise(&old.config, reconcile)) {
                state.reconfigured();
            }
            engines.insert(
                name.clone(),
                Arc::new(SourceEngine {
                    config: reconcile.clone(),
                    provider: source.provider(),
                    credentials: credentials(&reconcile.credentials),
                    client,
                    limiter: governor::RateLimiter::direct(quota),
                    plan: Plan {
                        after,
                        every: reconcile.every.clone(),
                        give_up_after: reconcile.give_up_after,
                    },
                    state: Mutex::new(state),
                }),
            );
        }
        Ok(Sources {
            names: config.sources.keys().cloned().collect(),
            engines,
        })
    }
}

/// Whether a request would go out differently: what a failure may have
/// been about (a wrong token, a moved RUTA, a CA, a short timeout).
fn asked_otherwise(before: &ReconcileConfig, now: &ReconcileConfig) -> bool {
    before.url != now.url
        || before.credentials != now.credentials
        || before.tls_ca != now.tls_ca
        || before.timeout != now.timeout
}
