//! Who may receive an event, pure. A subscription created through the API
//! by a token that is not an admin's belongs to that token's team (the
//! spool records the creating token's name, see `spool::subscriptions`);
//! the others (`relay.toml`'s, and those an admin token created) are the
//! admins'. An event about a subscription goes to the admins'
//! subscriptions that ask for it and to those of the team that owns it,
//! never to another team's: its name, its failures and its target are no
//! other team's business. An event about no subscription (the spool, a
//! source, an invoice, the quarantine) goes to all that ask.

use std::collections::HashMap;

use super::RelayEvent;
use crate::config::{Config, Role};
use crate::spool::ApiSubscription;

/// Each subscription that belongs to a team, and that team.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Audience {
    teams: HashMap<String, String>,
}

impl Audience {
    /// From the config's tokens and the API subscriptions with their
    /// creators. A creator no longer among the tokens keeps its
    /// subscriptions as a team's, not the admins'.
    pub fn new(config: &Config, api: &[ApiSubscription]) -> Audience {
        let is_admin = |name: &str| {
            config
                .admin
                .tokens
                .iter()
                .any(|token| token.name == name && token.role == Role::Admin)
        };
        Audience {
            teams: api
                .iter()
                .filter(|subscription| !is_admin(&subscription.created_by))
                .map(|subscription| (subscription.name.clone(), subscription.created_by.clone()))
                .collect(),
        }
    }

    /// Of `asking` (the subscriptions whose filters take the event), those
    /// that may receive it.
    pub fn recipients(&self, event: &RelayEvent, mut asking: Vec<String>) -> Vec<String> {
        let about = event.subscription().map(|name| self.teams.get(name));
        asking.retain(|recipient| match (self.teams.get(recipient), about) {
            // An admins' subscription, or an event about no subscription.
            (None, _) | (_, None) => true,
            (Some(team), Some(owner)) => owner == Some(team),
        });
        asking
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Attempt, Outcome};
    use crate::spool::{NotificationId, ObservedNotification, Settings};

    fn config() -> Config {
        Config::parse(
            "[server]\nself_signed = true\n\n[sources.tus]\nprovider = \"tusfacturas\"\n\
             token = \"0123456789abcdef\"\n\n[admin]\ntokens = [\n\
             { name = \"ops\", token = \"ops-token-0123456789\", role = \"admin\" },\n\
             { name = \"erp-team\", token = \"erp-token-0123456789\", role = \"subscriber\" },\n\
             { name = \"shop-team\", token = \"shop-token-0123456789\", role = \"subscriber\" },\n]\n",
        )
        .unwrap()
    }

    fn created(name: &str, by: &str) -> ApiSubscription {
        ApiSubscription {
            name: name.into(),
            url: "http://127.0.0.1/x".into(),
            sources: None,
            events: Some(vec!["relay.*".into()]),
            secret: String::new(),
            previous: None,
            settings: Settings::default(),
            created_by: by.into(),
            created_ms: 0,
        }
    }

    fn dead(subscription: &str) -> RelayEvent {
        RelayEvent::DeliveryDead {
            subscription: subscription.into(),
            notification: ObservedNotification {
                id: NotificationId::new(1),
                source: "tus".into(),
                event_type: "facturacion.emitido".into(),
                subject: None,
                received_ms: 1,
            },
            last: Attempt {
                number: 1,
                started_ms: 1,
                duration_ms: 1,
                outcome: Outcome::Connect,
                answer: None,
            },
            count: 1,
            ids: vec![NotificationId::new(1)],
            last_ms: 1,
        }
    }

    #[test]
    fn a_team_hears_of_its_own_subscriptions_and_the_admins_of_all() {
        let audience = Audience::new(
            &config(),
            &[
                created("erp-alerts", "erp-team"),
                created("erp-billing", "erp-team"),
                created("shop-alerts", "shop-team"),
                created("ops-alerts", "ops"),
                created("gone-alerts", "gone-team"),
            ],
        );
        let asking: Vec<String> = [
            "alerts",
            "ops-alerts",
            "erp-alerts",
            "shop-alerts",
            "gone-alerts",
        ]
        .map(String::from)
        .to_vec();
        // relay.toml's billing: the admins' only.
        assert_eq!(
            audience.recipients(&dead("billing"), asking.clone()),
            ["alerts", "ops-alerts"]
        );
        assert_eq!(
            audience.recipients(&dead("erp-billing"), asking.clone()),
            ["alerts", "ops-alerts", "erp-alerts"]
        );
        assert_eq!(
            audience.recipients(&dead("shop-alerts"), asking.clone()),
            ["alerts", "ops-alerts", "shop-alerts"]
        );
        let full = RelayEvent::SpoolFull {
            condition: "disk full".into(),
        };
        assert_eq!(audience.recipients(&full, asking.clone()), asking);
        // A source's query API failing is about no subscription: all hear.
        let failing = RelayEvent::ReconcileFailing {
            source: "tus".into(),
            kind: "unauthorized".into(),
            error: "apikey".into(),
            http_status: Some(401),
            retry_at_ms: None,
        };
        assert_eq!(audience.recipients(&failing, asking.clone()), asking);
    }
}
