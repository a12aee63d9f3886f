//! One subscription's target: its pooled HTTP client, signing key, headers
//! and limits, and the sending of one attempt, classified into an
//! [`Outcome`] for the state machine.

use std::error::Error as _;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::outgoing;
use crate::clock::{format_ms, Clock};
use crate::config::{OnSuperseded, SubscriptionConfig};
use crate::delivery::{answer_excerpt, Outcome, Schedule, ANSWER_KEPT};
use crate::providers::Flag;
use crate::signing::SigningKey;
use crate::spool::NotificationRecord;

/// How much of a target's answer is read (to keep the connection reusable).
const MAX_ANSWER: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("subscription {name}: {detail}")]
    Setup { name: String, detail: String },
}

pub struct Target {
    pub name: String,
    /// What it was built from: a reload keeps a target whose config is unchanged.
    pub config: SubscriptionConfig,
    url: reqwest::Url,
    client: reqwest::Client,
    key: SigningKey,
    /// The key a rotation replaced, and until when (Unix ms) it signs too.
    previous: Option<(SigningKey, i64)>,
    headers: HeaderMap,
    pub schedule: Schedule,
    timeout_first: Duration,
    timeout_retry: Duration,
    pub max_in_flight: usize,
    pub limiter: Option<governor::DefaultDirectRateLimiter>,
}

impl Target {
    pub fn new(config: &SubscriptionConfig) -> Result<Self, TargetError> {
        let fail = |detail: String| TargetError::Setup {
            name: config.name.clone(),
            detail,
        };
        let url = reqwest::Url::parse(&config.url).map_err(|e| fail(e.to_string()))?;
        let key = SigningKey::from_secret(&config.secret).map_err(|e| fail(e.to_string()))?;
        let previous = match &config.previous_secret {
            Some(previous) => Some((
                SigningKey::from_secret(&previous.secret).map_err(|e| fail(e.to_string()))?,
                previous.until_ms,
            )),
            None => None,
        };
        let schedule = config.retry_schedule().map_err(|e| fail(e.to_string()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| fail(e.to_string()))?;
            let value = HeaderValue::from_str(value).map_err(|e| fail(e.to_string()))?;
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(config.timeout_retry.0)
            .pool_max_idle_per_host(config.max_in_flight)
            .tcp_nodelay(true)
            .user_agent(concat!("webhook-relay/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.tls_ca {
            let pem =
                std::fs::read(path).map_err(|e| fail(format!("tls_ca {}: {e}", path.display())))?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?
            {
                builder = builder.tls_certs_merge([cert]);
            }
        }
        let client = builder.build().map_err(|e| fail(e.to_string()))?;
        let limiter = config.rate.and_then(|rate| {
            let quota = governor::Quota::with_period(rate.replenish_interval())?
                .allow_burst(std::num::NonZeroU32::new(rate.count)?);
            Some(governor::RateLimiter::direct(quota))
        });
        Ok(Target {
            name: config.name.clone(),
            config: config.clone(),
            url,
            client,
            key,
            previous,
            headers,
            schedule,
            timeout_first: config.timeout_first.0,
            timeout_retry: config.timeout_retry.0,
            max_in_flight: config.max_in_flight,
            limiter,
        })
    }

    /// Sends attempt `attempt` of a notification, started at `now_ms`;
    /// never fails, it reports the outcome and what the target answered
    /// (see [`answer_excerpt`]). `clock` dates the answer, so a Retry-After
    /// date is read against the time the forwarder was given.
    pub async fn send(
        &self,
        notification: &NotificationRecord,
        attempt: u32,
        now_ms: i64,
        clock: &Clock,
    ) -> (Outcome, Option<String>) {
        let meta = &notification.meta;
        let timestamp = now_ms.div_euclid(1000);
        let latin1 = meta.flags.iter().any(|f| f == Flag::Latin1Body.as_str());
        let (body, transcoded) = outgoing::body(&notification.body, latin1);
        let signature = self.signature(&meta.id, timestamp, &body, now_ms);
        let timeout = if attempt <= 1 {
            self.timeout_first
        } else {
            self.timeout_retry
        };
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(timeout)
            .headers(self.headers.clone())
            .header("webhook-id", &meta.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("x-relay-source", &meta.source)
            .header("x-relay-event", outgoing::header_text(&meta.event_type))
            .header("x-relay-status", meta.status.as_str())
            .header("x-relay-attempt", attempt.to_string())
            .header("x-relay-received-at", format_ms(meta.received_ms))
            .body(body);
        // The provider's own Content-Type, or none if it sent none (its
        // charset made UTF-8 when the body was).
        if let Some(content_type) = meta
            .content_type
            .as_deref()
            .map(|v| match transcoded {
                true => outgoing::utf8_content_type(v),
                false => v.to_owned(),
            })
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        if let Some(subject) = &meta.subject {
            request = request.header("x-relay-subject", outgoing::header_text(subject));
        }
        // It would move its invoice back from a final status: an app that
        // keeps the last write can tell (`deliver` sends it as any other).
        if meta.superseded && self.config.on_superseded == OnSuperseded::Mark {
            request = request.header("x-relay-superseded", "true");
        }
        // What the provider check took though not as documented, e.g. a
        // Windows-1252 body (sent as it came): the target can tell.
        if !meta.flags.is_empty() {
            if let Ok(flags) = HeaderValue::from_str(&meta.flags.join(", ")) {
                request = request.header("x-relay-flags", flags);
            }
        }
        // Made by the relay from the provider's query API, not received.
        if meta.flags.iter().any(|f| f == Flag::Reconciled.as_str()) {
            request = request.header("x-relay-origin", "reconcile");
        }
        match request.send().await {
            Ok(response) => read_answer(response, clock).await,
            Err(err) => (classify(&err), None),
        }
    }
}

impl Target {
    /// The `webhook-signature` value: the current key's, and while a
    /// rotation's overlap lasts the replaced key's too (Standard Webhooks
    /// lists several, space-separated; a receiver accepts any it knows).
    fn signature(&self, msg_id: &str, timestamp: i64, body: &[u8], now_ms: i64) -> String {
        let mut signature = self.key.sign(msg_id, timestamp, body);
        if let Some((previous, until_ms)) = &self.previous {
            if now_ms < *until_ms {
                signature.push(' ');
                signature.push_str(&previous.sign(msg_id, timestamp, body));
            }
        }
        signature
    }
}

async fn read_answer(mut response: reqwest::Response, clock: &Clock) -> (Outcome, Option<String>) {
    let code = response.status().as_u16();
    let retry_after_ms = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, clock.now_ms()));
    // Read (a bounded part of) the answer so the connection can be reused;
    // a target that resets mid-answer has not confirmed anything.
    // Its start is kept for the attempt history (why did it refuse?).
    let mut read = 0;
    let mut kept = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                let room = ANSWER_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if read > MAX_ANSWER {
                    break;
                }
            }
            Ok(None) => break,
            Err(err) => return (classify(&err), None),
        }
    }
    let outcome = Outcome::Status {
        code,
        retry_after_ms,
    };
    (outcome, answer_excerpt(&kept))
}

fn classify(err: &reqwest::Error) -> Outcome {
    if err.is_timeout() {
        return Outcome::Timeout;
    }
    let mut source = err.source();
    while let Some(cause) = source {
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return Outcome::Tls;
        }
        source = cause.source();
    }
    if err.is_connect() {
        return Outcome::Connect;
    }
    Outcome::Io {
        detail: error_chain(err),
    }
}

/// The error and its causes, with the target URL the client names in
/// them redacted: the detail is kept, shown and raised in events that
/// non-admins read.
fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    crate::redact::urls_in(&text).into_owned()
}

/// `Retry-After` as milliseconds to wait: given in seconds, or as an HTTP
/// date, taken relative to `now_ms` (`None` once that date is past).
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    let at_ms = at.unix_timestamp_nanos().div_euclid(1_000_000);
    u64::try_from(at_ms.saturating_sub(i128::from(now_ms))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_key_signs_too_until_its_time_and_not_after() {
        let (old, new) = (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            SigningKey::generate_secret([7; 32]),
        );
        let mut config: SubscriptionConfig = toml::from_str(&format!(
            "name = \"erp\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"{new}\"\n"
        ))
        .unwrap();
        config.previous_secret = Some(crate::config::PreviousSecret {
            secret: old.into(),
            until_ms: 10_000,
        });
        let target = Target::new(&config).unwrap();
        let (old, new) = (
            SigningKey::from_secret(old).unwrap(),
            SigningKey::from_secret(&new).unwrap(),
        );
        let during = target.signature("msg_1", 9, b"{}", 9_999);
        assert_eq!(during.split(' ').count(), 2, "{during}");
        assert!(new.verify("msg_1", 9, b"{}", &during));
        assert!(old.verify("msg_1", 9, b"{}", &during));
        let after = target.signature("msg_1", 10, b"{}", 10_000);
        assert!(new.verify("msg_1", 10, b"{}", &after));
        assert!(!old.verify("msg_1", 10, b"{}", &after), "{after}");
    }

    /// Unix ms of Wed, 21 Oct 2015 07:28:00 GMT.
    const OCT_21_2015_07_28: i64 = 1_445_412_480_000;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = OCT_21_2015_07_28;
        assert_eq!(parse_retry_after("120", now), Some(120_000));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now + 1),
            None,
            "a past date gives no wait"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(0)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 08:28:00 GMT", now - 250),
            Some(3_600_250)
        );
    }

    /// A 503 whose Retry-After is an HTTP date, read on a manual clock a
    /// minute and a half before it (in 2015: the system clock would find the
    /// date long past and give no wait).
    #[tokio::test(start_paused = true)]
    async fn a_retry_after_date_is_a_delay_from_the_forwarder_s_clock() {
        let clock = Clock::following_tokio_from(OCT_21_2015_07_28 - 90_000);
        let answer = http::Response::builder()
            .status(503)
            .header(http::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT")
            .body("busy")
            .unwrap();
        let (outcome, _) = read_answer(reqwest::Response::from(answer), &clock).await;
        assert_eq!(
            outcome,
            Outcome::Status {
                code: 503,
                retry_after_ms: Some(90_000)
            }
        );
        // The same answer a minute later on that clock: half a minute left.
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        let answer = http::Response::builder()
            .status(503)
            .header(http::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT")
            .body("busy")
            .unwrap();
        let (outcome, _) = read_answer(reqwest::Response::from(answer), &clock).await;
        assert_eq!(
            outcome,
            Outcome::Status {
                code: 503,
                retry_after_ms: Some(30_000)
            }
        );
    }
}
