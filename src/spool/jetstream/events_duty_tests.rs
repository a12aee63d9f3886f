//! The events duty across relays (`reports.rs`, `duty.rs`): of relays
//! sharing a spool, only the holder of `duty.events` hears the spool's
//! reports, and it hears every relay's attempts and quarantined bodies
//! once each, from the stream; a rewrite that is no attempt (retry now)
//! is no report; when the holder closes another relay takes the duty at
//! once, when it crashes once the lease's key expires, and reports what
//! comes next.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use super::provision::DUTY_TTL;
use crate::clock::Clock;
use crate::delivery::Outcome;
use crate::spool::contract::support::{attempt, lease_now, received, routes, store_new};
use crate::spool::{Backend, Duty, NotificationId, Observe, Observed, Spool};

/// An observer that keeps what it hears.
#[derive(Default)]
struct Heard(Mutex<Vec<Observed>>);

impl Observe for Heard {
    fn observe(&self, report: Observed) {
        self.0.lock().unwrap().push(report);
    }
    fn dropped(&self) -> u64 {
        0
    }
}

impl Heard {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// How many attempt reports of each notification it heard.
    fn attempts(&self) -> BTreeMap<NotificationId, usize> {
        let mut of = BTreeMap::new();
        for report in self.0.lock().unwrap().iter() {
            if let Observed::Attempted { notification, .. } = report {
                *of.entry(notification.id).or_default() += 1;
            }
        }
        of
    }
}

fn observed(spool: &Spool) -> Arc<Heard> {
    let heard = Arc::new(Heard::default());
    assert!(spool.observe(heard.clone()));
    spool.set_observing(true);
    heard
}

fn refused() -> Outcome {
    Outcome::Status {
        code: 503,
        retry_after_ms: None,
    }
}

/// Asks for the events duty on each of `relays` (as their events tasks
/// do at every tick) until `heard` holds `count` reports, or `within`.
async fn asking_until(relays: &[&Spool], heard: &Heard, count: usize, within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        for relay in relays {
            relay.holds(Duty::Events).await;
        }
        if heard.count() >= count || Instant::now() > until {
            return heard.count() == count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks for the events duty on `spool` until it holds it, for at most the
/// lease's TTL and a little more.
async fn takes_over(spool: &Spool) -> bool {
    let until = Instant::now() + DUTY_TTL + Duration::from_secs(8);
    while Instant::now() < until {
        if spool.holds(Duty::Events).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_holder_alone_hears_every_relays_attempts_once_and_a_successor_takes_over() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let clock = Clock::manual(1_700_000_000_000);
    let a = fixture
        .open_relay("a", routes(&["erp"]), clock)
        .await
        .unwrap();
    let b = fixture
        .open_relay("b", routes(&["erp"]), clock)
        .await
        .unwrap();
    let (heard_a, heard_b) = (observed(&a), observed(&b));
    assert!(a.holds(Duty::Events).await, "a takes the duty");
    assert!(!b.holds(Duty::Events).await, "a holds it");

    // Six attempts, three made on each relay, and a body quarantined on b.
    let mut ids = Vec::new();
    for n in 0..6 {
        let on = if n % 2 == 0 { &a } else { &b };
        ids.push(store_new(on, &format!("n{n}"), clock.now_ms()).await);
    }
    for n in 0..6 {
        let on = if n % 2 == 0 { &a } else { &b };
        let leases = lease_now(on, "erp", 1).await;
        attempt(on, &leases[0], refused(), clock.now_ms()).await;
    }
    let body = received(clock.now_ms());
    let size = body.body.len();
    let quarantined = b
        .quarantine(body, "not_json", "not JSON".into())
        .await
        .unwrap();
    assert!(
        asking_until(&[&a, &b], &heard_a, 7, Duration::from_secs(10)).await,
        "a hears all seven: {:?}",
        heard_a.0.lock().unwrap()
    );
    // Retry now rewrites every state: no attempt, no report.
    assert_eq!(b.retry_now("erp", clock.now_ms()).await.unwrap(), 6);
    assert!(
        !asking_until(&[&a, &b], &heard_a, 8, Duration::from_secs(2)).await,
        "nothing more, nothing twice"
    );
    assert_eq!(heard_a.count(), 7);
    let each_once: BTreeMap<_, _> = ids.iter().map(|id| (*id, 1)).collect();
    assert_eq!(heard_a.attempts(), each_once, "each attempt once");
    let reported = heard_a.0.lock().unwrap().clone();
    assert!(reported.iter().any(|r| matches!(r,
        Observed::Quarantined { id, source, bytes, .. }
            if *id == quarantined && source == "tus" && *bytes == size)));
    assert!(reported.iter().all(|r| match r {
        Observed::Attempted {
            subscription,
            attempt,
            state,
            notification,
        } =>
            subscription == "erp"
                && attempt.number == 1
                && matches!(state, crate::delivery::State::Waiting { .. })
                && notification.source == "tus"
                && notification.subject.as_deref() == Some("17032"),
        Observed::Quarantined { .. } => true,
    }));
    assert_eq!(heard_b.count(), 0, "b holds no duty: it hears nothing");

    // a closes and gives the duty back: b takes it at its next try, and
    // hears what comes next (what a attempts too).
    a.close().await.unwrap();
    let closed = Instant::now();
    assert!(takes_over(&b).await, "b takes the duty over");
    assert!(
        closed.elapsed() < DUTY_TTL / 2,
        "a clean stop hands the duty over at once, not after {:?}",
        closed.elapsed()
    );
    let leases = lease_now(&b, "erp", 1).await;
    attempt(&b, &leases[0], refused(), clock.now_ms()).await;
    assert!(asking_until(&[&b], &heard_b, 1, Duration::from_secs(10)).await);

    // b crashes holding it: c takes it over after the TTL.
    let c = fixture
        .open_relay("c", routes(&["erp"]), clock)
        .await
        .unwrap();
    let heard_c = observed(&c);
    assert!(!c.holds(Duty::Events).await, "b holds it");
    match &b.backend {
        Backend::Jetstream(backend) => backend.crash(),
        Backend::Sled(_) => unreachable!(),
    }
    drop(b);
    let crashed = Instant::now();
    assert!(takes_over(&c).await, "c takes the duty over");
    assert!(
        crashed.elapsed() > DUTY_TTL / 2,
        "not before the crashed holder's lease lapsed"
    );
    let leases = lease_now(&c, "erp", 1).await;
    attempt(&c, &leases[0], refused(), clock.now_ms()).await;
    assert!(asking_until(&[&c], &heard_c, 1, Duration::from_secs(10)).await);
    assert_eq!(heard_b.count(), 1);
    c.close().await.unwrap();
}
