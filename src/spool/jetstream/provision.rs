//! Creating what the spool needs on the servers, or checking what is
//! there: the stream `P_spool`, the bucket `P_locks`, the identity record.
//! Opening twice, or two relays opening at once, makes each thing once.
//!
//! An existing stream whose settings would break a guarantee is refused,
//! never changed behind the operator's back: memory storage or
//! `persist_mode: async` (a 200 for what is not stored), fewer replicas
//! than asked, limits that would drop acknowledged notifications, or
//! anything but one message per subject (each delivery's subject holds its
//! current state).

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, kv, stream};
use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

use super::error::JetStreamError;
use super::Names;
use crate::clock::Clock;
use crate::config::JetstreamConfig;

/// How long a duty's lease lives unless renewed (the bucket's max age): a
/// dead holder's duty passes to another relay after this.
pub(super) const DUTY_TTL: Duration = Duration::from_secs(15);
/// The stream's dedup window of `Nats-Msg-Id`s: it only guards the relay's
/// own retried publishes; the dedup of providers' resends is on subjects.
const MSG_ID_WINDOW: Duration = Duration::from_secs(120);
/// A JetStream API error: the stream does not exist.
const STREAM_NOT_FOUND: u64 = 10059;
/// A JetStream API error: a stream of that name exists with other settings
/// (another relay created it a moment ago).
const STREAM_NAME_IN_USE: u64 = 10058;
/// Errors of a stream that asks for more replicas than the servers have:
/// no cluster (10074), insufficient resources (10023), no suitable peers
/// (10005).
const NOT_ENOUGH_SERVERS: [u64; 3] = [10074, 10023, 10005];

/// What the spool's stream is made with.
pub(super) fn spool_stream_config(names: &Names, replicas: u8) -> stream::Config {
    stream::Config {
        name: names.stream(),
        description: Some("webhook-relay spool (docs/design/jetstream.md)".into()),
        subjects: vec![names.subjects()],
        storage: stream::StorageType::File,
        num_replicas: usize::from(replicas),
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_messages_per_subject: 1,
        allow_direct: true,
        duplicate_window: MSG_ID_WINDOW,
        // Retention's markers carry a per-message TTL (step 7).
        allow_message_ttl: true,
        ..Default::default()
    }
}

/// The problems of an existing spool stream's settings, each with how to
/// fix it; none when it keeps every promise with `replicas` copies.
pub(super) fn guarantee_problems(
    config: &stream::Config,
    names: &Names,
    replicas: u8,
) -> Vec<String> {
    let mut problems = Vec::new();
    let name = &config.name;
    if config.storage != stream::StorageType::File {
        problems.push("it keeps messages in memory: an acknowledged notification would not survive a restart of nats-server; delete the stream or choose another prefix, and the relay makes it with file storage".to_owned());
    }
    if config.persist_mode == Some(stream::PersistenceMode::Async) {
        problems.push(format!("persist_mode is async: the server would acknowledge a notification before storing it; `nats stream edit {name}` back to the default"));
    }
    if config.num_replicas < usize::from(replicas) {
        problems.push(format!(
            "it has {} replica(s), fewer than spool.jetstream.replicas = {replicas}: raise them (`nats stream edit {name} --replicas {replicas}`) or lower spool.jetstream.replicas",
            config.num_replicas
        ));
    }
    if config.max_messages_per_subject != 1 {
        problems.push(format!(
            "it keeps {} message(s) per subject, not 1: each delivery's subject must hold only its current state",
            config.max_messages_per_subject
        ));
    }
    if !config.subjects.contains(&names.subjects()) {
        problems.push(format!(
            "its subjects are {:?}, not [\"{}\"]",
            config.subjects,
            names.subjects()
        ));
    }
    if config.retention != stream::RetentionPolicy::Limits {
        problems.push("its retention policy is not `limits`: messages would go when consumed, not when the relay's retention removes them".to_owned());
    }
    let limited = !config.max_age.is_zero()
        || config.max_messages > 0
        || config.max_bytes > 0
        || config.max_message_size > 0;
    if limited {
        problems.push("it has a limit (max_age, max_msgs, max_bytes or max_msg_size) that would drop or refuse notifications the relay acknowledged or must keep: the relay's own retention removes them; remove the limit".to_owned());
    }
    if !config.allow_direct {
        problems.push(format!(
            "direct gets are off: `nats stream edit {name} --allow-direct`"
        ));
    }
    if !config.allow_message_ttl {
        problems.push(format!(
            "per-message TTLs are off: `nats stream edit {name} --allow-msg-ttl`"
        ));
    }
    if config.sealed || config.deny_purge {
        problems.push(
            "it is sealed or denies purges: retention could not remove what is over".to_owned(),
        );
    }
    problems
}

/// Creates the spool's stream, or checks the one there; its info.
pub(super) async fn spool_stream(
    context: &jetstream::Context,
    names: &Names,
    settings: &JetstreamConfig,
) -> Result<stream::Info, JetStreamError> {
    let name = names.stream();
    // Twice at most: a relay that loses the race to create it reads it.
    for _ in 0..2 {
        match context.get_stream(&name).await {
            Ok(stream) => {
                let info = stream.cached_info().clone();
                let problems = guarantee_problems(&info.config, names, settings.replicas);
                if !problems.is_empty() {
                    return Err(JetStreamError::Unsafe {
                        stream: name,
                        problems,
                    });
                }
                return Ok(info);
            }
            Err(e) if get_code(&e) != Some(STREAM_NOT_FOUND) => {
                return Err(JetStreamError::request(format!("reading stream {name}"), e))
            }
            Err(_) => {}
        }
        match context
            .create_stream(spool_stream_config(names, settings.replicas))
            .await
        {
            Ok(stream) => {
                tracing::info!(stream = %name, replicas = settings.replicas, "created the JetStream spool stream");
                return Ok(stream.cached_info().clone());
            }
            Err(e) if create_code(&e) == Some(STREAM_NAME_IN_USE) => continue,
            Err(e) => return Err(create_error(&name, settings.replicas, e)),
        }
    }
    Err(JetStreamError::request(
        format!("creating stream {name}"),
        "it was created and gone again meanwhile",
    ))
}

/// Whether a KV bucket could not be opened only because it is not there
/// (its stream not found), not for a failure of the servers or the link.
pub(super) fn bucket_not_found(error: &jetstream::context::KeyValueError) -> bool {
    error.kind() == jetstream::context::KeyValueErrorKind::GetBucket
        && std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<jetstream::context::GetStreamError>())
            .and_then(get_code)
            == Some(STREAM_NOT_FOUND)
}

/// The JetStream API error code of a failed stream read, if it has one.
fn get_code(error: &jetstream::context::GetStreamError) -> Option<u64> {
    match error.kind() {
        jetstream::context::GetStreamErrorKind::JetStream(api) => Some(api.error_code().0),
        _ => None,
    }
}

/// The JetStream API error code of a failed stream creation, if it has one.
fn create_code(error: &jetstream::context::CreateStreamError) -> Option<u64> {
    match error.kind() {
        jetstream::context::CreateStreamErrorKind::JetStream(api) => Some(api.error_code().0),
        _ => None,
    }
}

fn create_error(
    name: &str,
    replicas: u8,
    error: jetstream::context::CreateStreamError,
) -> JetStreamError {
    match create_code(&error) {
        Some(code) if NOT_ENOUGH_SERVERS.contains(&code) => JetStreamError::Replicas {
            stream: name.to_owned(),
            replicas,
            detail: error.to_string(),
        },
        _ => JetStreamError::request(format!("creating stream {name}"), error),
    }
}

/// Creates the duties' lock bucket, or checks the one there.
pub(super) async fn locks_bucket(
    context: &jetstream::Context,
    names: &Names,
    settings: &JetstreamConfig,
) -> Result<(), JetStreamError> {
    let bucket = names.locks();
    let stream_name = format!("KV_{bucket}");
    match context.get_stream(&stream_name).await {
        Ok(stream) => {
            let config = &stream.cached_info().config;
            let mut problems = Vec::new();
            if config.storage != stream::StorageType::File {
                problems.push("it keeps the duties' leases in memory".to_owned());
            }
            if config.num_replicas < usize::from(settings.replicas) {
                problems.push(format!(
                    "it has {} replica(s), fewer than spool.jetstream.replicas = {}",
                    config.num_replicas, settings.replicas
                ));
            }
            if config.max_age != DUTY_TTL {
                problems.push(format!(
                    "its max_age is {:?}, not the duties' lease of {DUTY_TTL:?}",
                    config.max_age
                ));
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(JetStreamError::Unsafe {
                    stream: stream_name,
                    problems,
                })
            }
        }
        Err(e) if get_code(&e) != Some(STREAM_NOT_FOUND) => Err(JetStreamError::request(
            format!("reading bucket {bucket}"),
            e,
        )),
        Err(_) => context
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "webhook-relay duties' leases".into(),
                history: 1,
                max_age: DUTY_TTL,
                storage: stream::StorageType::File,
                num_replicas: usize::from(settings.replicas),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|e| JetStreamError::request(format!("creating bucket {bucket}"), e)),
    }
}

/// The spool's identity: made once by the first relay that opens it; a
/// stream deleted and made again has another, which a relay's local index
/// notices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    /// A ULID, fresh when the spool was made.
    pub id: String,
    pub created_ms: i64,
}

/// Writes the identity if none is there (a compare-and-set on sequence 0,
/// so two relays opening at once agree), and reads it.
pub(super) async fn identity(
    context: &jetstream::Context,
    names: &Names,
    clock: Clock,
) -> Result<Identity, JetStreamError> {
    let subject = names.identity();
    let ours = Identity {
        id: ulid::Ulid::new().to_string(),
        created_ms: clock.now_ms(),
    };
    let payload = serde_json::to_vec(&ours)
        .map_err(|e| JetStreamError::request("encoding the identity", e))?;
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    let ack = context
        .publish_with_headers(subject.clone(), headers, payload.into())
        .await
        .map_err(|e| JetStreamError::request("writing the identity", e))?
        .await;
    match ack {
        Ok(_) => Ok(ours),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
            let stream = context
                .get_stream(names.stream())
                .await
                .map_err(|e| JetStreamError::request("reading the identity", e))?;
            let message = stream
                .direct_get_last_for_subject(subject)
                .await
                .map_err(|e| JetStreamError::request("reading the identity", e))?;
            serde_json::from_slice(&message.payload).map_err(|e| JetStreamError::Identity {
                stream: names.stream(),
                detail: e.to_string(),
            })
        }
        Err(e) => Err(JetStreamError::request("writing the identity", e)),
    }
}
