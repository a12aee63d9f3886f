//! Subscriptions created through the admin API, as the spool keeps them:
//! beside the `relay.toml` ones, durable like a notification (an answer
//! "created" must survive a crash), with their secret, the secret a
//! rotation replaced and until when it still signs, and who created them.
//!
//! The settings are kept in the config's own grammar (`"20/s"`, `"5m"`)
//! and made a [`SubscriptionConfig`] by the same deserializer as
//! `relay.toml`, so an API subscription gets exactly the defaults and
//! checks of a configured one.

use serde::{Deserialize, Serialize};

use super::SpoolError;
use crate::config::{AdminConfig, PreviousSecret, SubscriptionConfig};

/// One API-created subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiSubscription {
    pub name: String,
    pub url: String,
    /// Source names; all sources when `None`.
    pub sources: Option<Vec<String>>,
    /// Event-type patterns with `*`; all events when `None`.
    pub events: Option<Vec<String>>,
    /// The `whsec_` secret it signs with.
    pub secret: String,
    /// The secret the last rotation replaced, signed with too until its time.
    #[serde(default)]
    pub previous: Option<Replaced>,
    /// The optional settings, as `relay.toml` writes them.
    #[serde(default)]
    pub settings: Settings,
    /// The admin token's name that created it: a `subscriber` token
    /// manages only its own.
    pub created_by: String,
    pub created_ms: i64,
}

/// A secret replaced by a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    pub secret: String,
    /// Unix ms: from then on only the new secret signs.
    pub until_ms: i64,
}

/// The optional settings of a subscription, in the config's grammar.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_first: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_retry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
    /// Invoice statuses it takes (`["accepted", "rejected"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statuses: Option<Vec<String>>,
    /// `deliver`, `mark` or `skip` (see `config::OnSuperseded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_superseded: Option<String>,
}

impl ApiSubscription {
    /// The subscription as the forwarder and fan-out take it, through the
    /// same deserializer as `relay.toml`; the error says which setting is
    /// wrong, in the config's words.
    pub fn to_config(&self) -> Result<SubscriptionConfig, String> {
        let mut table = toml::Table::new();
        table.insert("name".into(), self.name.clone().into());
        table.insert("url".into(), self.url.clone().into());
        table.insert("secret".into(), self.secret.clone().into());
        let strings =
            |list: &[String]| toml::Value::Array(list.iter().map(|s| s.clone().into()).collect());
        if let Some(sources) = &self.sources {
            table.insert("sources".into(), strings(sources));
        }
        if let Some(events) = &self.events {
            table.insert("events".into(), strings(events));
        }
        let settings = &self.settings;
        for (key, value) in [
            ("rate", &settings.rate),
            ("timeout_first", &settings.timeout_first),
            ("timeout_retry", &settings.timeout_retry),
        ] {
            if let Some(value) = value {
                table.insert(key.into(), value.clone().into());
            }
        }
        if let Some(max) = settings.max_in_flight {
            let max = i64::try_from(max).map_err(|_| "max_in_flight: too large".to_owned())?;
            table.insert("max_in_flight".into(), max.into());
        }
        if let Some(schedule) = &settings.schedule {
            table.insert("schedule".into(), strings(schedule));
        }
        if let Some(statuses) = &settings.statuses {
            table.insert("statuses".into(), strings(statuses));
        }
        if let Some(choice) = &settings.on_superseded {
            table.insert("on_superseded".into(), choice.clone().into());
        }
        if let Some(jitter) = settings.jitter {
            table.insert("jitter".into(), jitter.into());
        }
        let mut config: SubscriptionConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        config.previous_secret = self.previous.as_ref().map(|p| PreviousSecret {
            secret: p.secret.clone(),
            until_ms: p.until_ms,
        });
        Ok(config)
    }
}

impl ApiSubscription {
    /// Whether `[admin] allowed_targets` lets it send to its URL: a
    /// narrowed list can leave a subscription created under a wider one
    /// without an allowed target.
    pub fn target_allowed(&self, admin: &AdminConfig) -> bool {
        reqwest::Url::parse(&self.url).is_ok_and(|url| admin.allows_target(&url))
    }

    /// Its target as a log line or an answer may show it: scheme, host
    /// (and port) and path, never user info, query or fragment (where
    /// receivers put keys).
    pub fn redacted_target(&self) -> String {
        crate::redact::target_url(&self.url)
    }
}

/// The stored form: a version byte, then the subscription as JSON.
const SUBSCRIPTION_V1: u8 = 1;

pub(crate) fn encode(subscription: &ApiSubscription) -> Result<Vec<u8>, SpoolError> {
    let mut out = vec![SUBSCRIPTION_V1];
    serde_json::to_writer(&mut out, subscription)
        .map_err(|e| SpoolError::Encode(crate::spool::cause(e)))?;
    Ok(out)
}

/// Decodes a stored subscription; never panics on damaged bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<ApiSubscription, SpoolError> {
    match bytes.split_first() {
        Some((&SUBSCRIPTION_V1, json)) => serde_json::from_slice(json)
            .map_err(|e| SpoolError::Corrupt(format!("API subscription: {e}"))),
        Some((other, _)) => Err(SpoolError::Corrupt(format!(
            "API subscription: unknown version {other}"
        ))),
        None => Err(SpoolError::Corrupt("API subscription: empty".into())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn billing() -> ApiSubscription {
        ApiSubscription {
            name: "billing".into(),
            url: "http://10.0.0.5/in".into(),
            sources: Some(vec!["tus".into()]),
            events: None,
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            previous: None,
            settings: Settings {
                rate: Some("20/s".into()),
                timeout_first: Some("3s".into()),
                statuses: Some(vec!["accepted".into()]),
                on_superseded: Some("skip".into()),
                ..Settings::default()
            },
            created_by: "erp-team".into(),
            created_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn it_becomes_a_config_with_the_relay_toml_defaults() {
        let config = billing().to_config().unwrap();
        assert_eq!(config.rate.map(|r| r.count), Some(20));
        assert_eq!(config.timeout_first.0, std::time::Duration::from_secs(3));
        assert_eq!(config.max_in_flight, 8, "the relay.toml default");
        assert_eq!(config.retry_schedule().unwrap().max_attempts(), 6);
        assert_eq!(config.on_superseded, crate::config::OnSuperseded::Skip);
        let accepted = crate::providers::InvoiceStatus::Accepted;
        assert!(config.matches("tus", "anything", accepted));
        assert!(!config.matches("datil", "x", accepted));
        assert!(!config.matches("tus", "x", crate::providers::InvoiceStatus::Queued));
    }

    #[test]
    fn its_target_is_checked_against_allowed_targets_and_shown_without_query_or_user() {
        let mut sub = billing();
        sub.url = "http://user:pw@10.0.0.5:8080/in/hook?apikey=k#f".into();
        assert_eq!(sub.redacted_target(), "http://10.0.0.5:8080/in/hook");
        let admin = |allowed: &str| -> AdminConfig {
            toml::from_str(&format!("allowed_targets = [{allowed}]")).unwrap()
        };
        assert!(sub.target_allowed(&admin("\"10.0.0.5\"")));
        assert!(!sub.target_allowed(&admin("")));
        assert!(!sub.target_allowed(&admin("\"10.0.0.6\"")));
    }

    #[test]
    fn a_bad_setting_is_named_in_the_config_grammar() {
        let mut sub = billing();
        sub.settings.rate = Some("fast".into());
        let err = sub.to_config().unwrap_err();
        assert!(err.contains("invalid rate \"fast\""), "{err}");
    }

    #[test]
    fn a_record_round_trips_and_damage_is_an_error() {
        let mut sub = billing();
        sub.previous = Some(Replaced {
            secret: "whsec_old".into(),
            until_ms: 5,
        });
        let bytes = encode(&sub).unwrap();
        assert_eq!(decode(&bytes).unwrap(), sub);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        assert!(decode(b"\x09{}").is_err());
    }
}
