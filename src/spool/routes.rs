//! Fan-out: which subscriptions a notification goes to, decided by the
//! spool when it stores it (from the configured subscriptions; replaced
//! whole on reload).

use crate::config::{
    filters_match, status_matches, wildcard_match, Config, OnSuperseded, RELAY_SOURCE,
};
use crate::providers::InvoiceStatus;
use crate::spool::SpoolError;

/// One subscription's name and filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    /// Source names; all sources when `None`.
    pub sources: Option<Vec<String>>,
    /// Event-type patterns with `*`; all events when `None`.
    pub events: Option<Vec<String>>,
    /// Invoice statuses; all when `None`.
    pub statuses: Option<Vec<InvoiceStatus>>,
    /// What it gets of a superseded notification.
    pub on_superseded: OnSuperseded,
}

impl Route {
    /// A subscription that takes every notification.
    pub fn all(name: &str) -> Route {
        Route {
            name: name.to_owned(),
            sources: None,
            events: None,
            statuses: None,
            on_superseded: OnSuperseded::default(),
        }
    }

    fn matches(&self, source: &str, event_type: &str, status: InvoiceStatus) -> bool {
        if source == RELAY_SOURCE {
            // The relay's own events go only where they are asked for by
            // name: a subscription with no `events`, or with `*`, keeps
            // receiving invoices alone. Its `sources` do not apply.
            return self.events.iter().flatten().any(|pattern| {
                pattern.starts_with("relay.") && wildcard_match(pattern, event_type)
            });
        }
        filters_match(
            self.sources.as_deref(),
            self.events.as_deref(),
            source,
            event_type,
        ) && status_matches(self.statuses.as_deref(), status)
    }
}

/// The subscriptions' names and filters.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// Whether `from`'s deliveries may go to `to` (or be purged): `from`
    /// must be gone from the routes, and `to` in them.
    pub(crate) fn check_reassign(&self, from: &str, to: Option<&str>) -> Result<(), SpoolError> {
        if self.contains(from) {
            return Err(SpoolError::NotOrphan(format!(
                "subscription {from:?} is configured: its deliveries are not orphans"
            )));
        }
        if let Some(to) = to.filter(|to| !self.contains(to)) {
            return Err(SpoolError::NotOrphan(format!(
                "subscription {to:?} is not configured: nothing would deliver them"
            )));
        }
        Ok(())
    }

    pub fn new(routes: Vec<Route>) -> Routes {
        Routes { routes }
    }

    pub fn from_config(config: &Config) -> Routes {
        Routes::new(
            config
                .subscriptions
                .iter()
                .map(|s| Route {
                    name: s.name.clone(),
                    sources: s.sources.clone(),
                    events: s.events.clone(),
                    statuses: s.statuses.clone(),
                    on_superseded: s.on_superseded,
                })
                .collect(),
        )
    }

    /// The names of the subscriptions that take this source, event type
    /// and invoice status.
    pub fn matching(&self, source: &str, event_type: &str, status: InvoiceStatus) -> Vec<String> {
        self.routes
            .iter()
            .filter(|r| r.matches(source, event_type, status))
            .map(|r| r.name.clone())
            .collect()
    }

    /// Whether `name` holds back superseded notifications.
    pub fn skips_superseded(&self, name: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.name == name && r.on_superseded == OnSuperseded::Skip)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.name.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }

    /// These routes and, for each name they lack, a subscription known by
    /// name only (it takes nothing; for telling orphans from subscriptions).
    pub fn with_names<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Routes {
        let mut routes = self.routes.clone();
        for name in names {
            if !self.contains(name) {
                routes.push(Route {
                    name: name.clone(),
                    sources: Some(Vec::new()),
                    events: None,
                    statuses: None,
                    on_superseded: OnSuperseded::default(),
                });
            }
        }
        Routes::new(routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_follows_sources_and_event_patterns() {
        let routes = Routes::new(vec![
            Route::all("everything"),
            Route {
                name: "tus-issued".into(),
                sources: Some(vec!["tus".into()]),
                events: Some(vec!["*.emitido".into()]),
                statuses: None,
                ..Route::all("")
            },
        ]);
        assert_eq!(
            routes.matching("tus", "facturacion.emitido", InvoiceStatus::Unknown),
            ["everything", "tus-issued"]
        );
        assert_eq!(
            routes.matching("tus", "facturacion.error", InvoiceStatus::Unknown),
            ["everything"]
        );
        assert_eq!(
            routes.matching("datil", "x.emitido", InvoiceStatus::Unknown),
            ["everything"]
        );
        assert!(routes.contains("tus-issued") && !routes.contains("tus"));
    }

    #[test]
    fn a_statuses_filter_takes_only_those_statuses_but_not_for_relay_events() {
        let routes = Routes::new(vec![
            Route::all("everything"),
            Route {
                name: "final".into(),
                sources: None,
                events: Some(vec!["*".into(), "relay.*".into()]),
                statuses: Some(vec![InvoiceStatus::Accepted, InvoiceStatus::Rejected]),
                ..Route::all("")
            },
        ]);
        assert_eq!(
            routes.matching("tus", "facturacion.emitido", InvoiceStatus::Accepted),
            ["everything", "final"]
        );
        assert_eq!(
            routes.matching("tus", "facturacion.encolado", InvoiceStatus::Queued),
            ["everything"]
        );
        // The relay's own events carry no invoice status: not held to it.
        assert_eq!(
            routes.matching(RELAY_SOURCE, "relay.delivery.dead", InvoiceStatus::Unknown),
            ["final"]
        );
    }

    #[test]
    fn relay_events_go_only_to_subscriptions_that_name_them() {
        let routes = Routes::new(vec![
            Route::all("everything"),
            Route {
                name: "star".into(),
                sources: None,
                events: Some(vec!["*".into()]),
                statuses: None,
                ..Route::all("")
            },
            Route {
                name: "alerts".into(),
                sources: Some(vec!["tus".into()]),
                events: Some(vec!["relay.*".into(), "*.emitido".into()]),
                statuses: None,
                ..Route::all("")
            },
            Route {
                name: "dead-only".into(),
                sources: None,
                events: Some(vec!["relay.delivery.dead".into()]),
                statuses: None,
                ..Route::all("")
            },
        ]);
        assert_eq!(
            routes.matching(RELAY_SOURCE, "relay.delivery.dead", InvoiceStatus::Unknown),
            ["alerts", "dead-only"]
        );
        assert_eq!(
            routes.matching(RELAY_SOURCE, "relay.spool.full", InvoiceStatus::Unknown),
            ["alerts"]
        );
        // A provider's event named like one of ours is an ordinary notification.
        assert_eq!(
            routes.matching("tus", "relay.delivery.dead", InvoiceStatus::Unknown),
            ["everything", "star", "alerts", "dead-only"]
        );
    }
}
