//! The fold: one task per relay that tails the whole stream in order with
//! an ordered, headers-only consumer (bodies are not copied), from the
//! index's checkpoint, and folds the messages into the local index, those
//! that arrived together as one burst (`staged.rs`). The
//! client recreates an ordered consumer by itself after a gap; when the
//! stream cannot be read at all, or its consumer was lost with a node and
//! a quiet second shows messages waiting that do not come, the task waits
//! a second and starts again from the checkpoint.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self, Message};
use futures_util::{FutureExt, StreamExt};

use super::index::{Folded, Index};
use super::reports::ATTEMPTED;
use super::staged::BURST;
use super::subjects::{Kind, DUE, LEASE, META, RELEASED, STANDING};
use super::Names;
use crate::spool::NotificationId;

/// How long the fold waits before it starts again after an error.
const RETRY: Duration = Duration::from_secs(1);
/// How long the fold hears nothing before it asks whether its consumer
/// still gives what the stream holds.
const QUIET: Duration = Duration::from_secs(1);

/// Folds the stream into `index` until the task is aborted.
pub(super) async fn run(context: jetstream::Context, names: Names, index: Arc<Index>) {
    loop {
        if let Err(err) = follow(&context, &names, &index).await {
            tracing::warn!(error = %err, stream = %names.stream(), "the JetStream index stopped following the stream; starting again");
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn follow(
    context: &jetstream::Context,
    names: &Names,
    index: &Index,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let stream = context.get_stream(names.stream()).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: names.subjects(),
            headers_only: true,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: index.applied() + 1,
            },
            ..Default::default()
        })
        .await?;
    let name = consumer.cached_info().name.clone();
    let mut messages = consumer.messages().await?;
    loop {
        match tokio::time::timeout(QUIET, messages.next()).await {
            Ok(Some(message)) => {
                // The messages already here join it: one batch for all.
                let mut burst = vec![message?];
                while burst.len() < BURST {
                    match messages.next().now_or_never() {
                        Some(Some(message)) => burst.push(message?),
                        Some(None) | None => break,
                    }
                }
                fold(names, index, &burst)?;
            }
            Ok(None) => return Ok(()),
            Err(_) => {
                // Quiet: caught up, or the consumer was lost with the node
                // that held it (the client notices only after two missed
                // heartbeats and then retries with back-off). Ask.
                let info = stream.consumer_info(&name).await?;
                if info.num_pending > 0 {
                    return Err(format!(
                        "{} messages wait past sequence {} but none came for {QUIET:?}",
                        info.num_pending,
                        index.applied()
                    )
                    .into());
                }
            }
        }
    }
}

fn fold(
    names: &Names,
    index: &Index,
    burst: &[Message],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let read: Vec<(u64, Kind, Folded<'_>)> = burst
        .iter()
        .map(|message| read(names, message))
        .collect::<Result<_, _>>()?;
    index.apply_burst(
        read.iter()
            .map(|(sequence, kind, folded)| Ok((*sequence, kind.clone(), folded))),
    )?;
    Ok(())
}

/// A message's sequence, kind (from its subject) and what the fold reads
/// of its headers.
fn read<'m>(
    names: &Names,
    message: &'m Message,
) -> Result<(u64, Kind, Folded<'m>), Box<dyn std::error::Error + Send + Sync>> {
    let sequence = message.info()?.stream_sequence;
    let kind = names.parse(message.subject.as_str());
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    };
    let folded = Folded {
        meta: match kind {
            Kind::Other => None,
            _ => header(META),
        },
        released: header(RELEASED).and_then(NotificationId::parse),
        lease: header(LEASE),
        due_ms: header(DUE).and_then(|due| due.parse().ok()),
        standing: header(STANDING),
        attempted: header(ATTEMPTED),
        size: header("Nats-Msg-Size").and_then(|size| size.parse().ok()),
    };
    Ok((sequence, kind, folded))
}
