//! A small key-value store that every relay on the spool shares, for
//! state of the relay that is not notifications: a KV bucket
//! `{prefix}_{name}` (file storage, the spool's replicas, one value per
//! key, nothing expires). The ACME side keeps its account, certificate,
//! order lock and challenge answers in `{prefix}_acme` so that several
//! relays order once and serve the same certificate (`acme/shared.rs`).

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::bridge::Bridge;
use super::provision::bucket_not_found;
use super::JetStreamSpool;
use crate::spool::SpoolError;

/// One bucket of shared state; cheap to clone.
#[derive(Clone)]
pub struct SharedState {
    bucket: String,
    store: kv::Store,
    bridge: Bridge,
}

/// A change to a key, as a watch sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedChange {
    Put { key: String, value: Bytes },
    Gone { key: String },
}

/// How many changes a watch holds for a slow reader before it waits.
const WATCH_BUFFER: usize = 64;

impl JetStreamSpool {
    /// The bucket `{prefix}_{name}`, made if it is not there.
    pub(crate) async fn shared_state(&self, name: &str) -> Result<SharedState, SpoolError> {
        let bucket = format!("{}_{name}", self.config.jetstream.prefix);
        let context = self.link.context().clone();
        let config = kv::Config {
            bucket: bucket.clone(),
            description: format!("webhook-relay shared state: {name}"),
            history: 1,
            storage: StorageType::File,
            num_replicas: usize::from(self.config.jetstream.replicas),
            ..Default::default()
        };
        let store = self
            .bridge
            .run(async move {
                match context.get_key_value(&config.bucket).await {
                    Ok(store) => Ok(store),
                    // A failure of the servers is told as such, not
                    // answered with an attempt to make the bucket.
                    Err(e) if !bucket_not_found(&e) => Err(e.to_string()),
                    Err(_) => context
                        .create_key_value(config)
                        .await
                        .map_err(|e| e.to_string()),
                }
            })
            .await?
            .map_err(|e| unavailable(&bucket, "opening", &e))?;
        Ok(SharedState {
            bucket,
            store,
            bridge: self.bridge.clone(),
        })
    }
}

fn unavailable(bucket: &str, doing: &str, e: &dyn std::fmt::Display) -> SpoolError {
    SpoolError::Unavailable(format!("JetStream bucket {bucket}: {doing}: {e}"))
}

impl SharedState {
    /// The value of `key` and its revision, if it has one.
    pub async fn entry(&self, key: &str) -> Result<Option<(Bytes, u64)>, SpoolError> {
        let (store, owned) = (self.store.clone(), key.to_owned());
        let entry = self
            .bridge
            .run(async move { store.entry(owned).await })
            .await?
            .map_err(|e| unavailable(&self.bucket, &format!("reading {key}"), &e))?;
        Ok(entry
            .filter(|entry| entry.operation == Operation::Put)
            .map(|entry| (entry.value, entry.revision)))
    }

    /// The value of `key`, if it has one.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, SpoolError> {
        Ok(self.entry(key).await?.map(|(value, _)| value))
    }

    /// Sets `key`, whatever it held; answers the new revision.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<u64, SpoolError> {
        let (store, owned) = (self.store.clone(), key.to_owned());
        self.bridge
            .run(async move { store.put(owned, value).await })
            .await?
            .map_err(|e| unavailable(&self.bucket, &format!("writing {key}"), &e))
    }

    /// Sets `key` only if it holds nothing; `None` when it does.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<Option<u64>, SpoolError> {
        let (store, owned) = (self.store.clone(), key.to_owned());
        match self
            .bridge
            .run(async move { store.create(owned, value).await })
            .await?
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(unavailable(&self.bucket, &format!("creating {key}"), &e)),
        }
    }

    /// Sets `key` only if it is still at `revision`; `None` when another
    /// write came first.
    pub async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<Option<u64>, SpoolError> {
        let (store, owned) = (self.store.clone(), key.to_owned());
        match self
            .bridge
            .run(async move { store.update(owned, value, revision).await })
            .await?
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable(&self.bucket, &format!("updating {key}"), &e)),
        }
    }

    /// Removes `key`'s value.
    pub async fn delete(&self, key: &str) -> Result<(), SpoolError> {
        let (store, owned) = (self.store.clone(), key.to_owned());
        self.bridge
            .run(async move { store.delete(owned).await })
            .await?
            .map_err(|e| unavailable(&self.bucket, &format!("deleting {key}"), &e))
    }

    /// Every key's value now, then each change as it comes, until the
    /// receiver is dropped. A watch the servers end (a node lost) is made
    /// again, replaying the values, so a reader sees a value more than
    /// once but misses none.
    pub fn watch(&self) -> mpsc::Receiver<SharedChange> {
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        let (store, bucket) = (self.store.clone(), self.bucket.clone());
        self.bridge.spawn(async move {
            loop {
                match store.watch_with_history(">").await {
                    Ok(mut changes) => {
                        while let Some(change) = changes.next().await {
                            let Ok(entry) = change else { break };
                            let change = match entry.operation {
                                Operation::Put => SharedChange::Put {
                                    key: entry.key,
                                    value: entry.value,
                                },
                                Operation::Delete | Operation::Purge => {
                                    SharedChange::Gone { key: entry.key }
                                }
                            };
                            if sender.send(change).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(bucket = %bucket, error = %e, "watching a shared bucket failed; trying again"),
                }
                if sender.is_closed() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
        receiver
    }
}
