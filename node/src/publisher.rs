//! The own feed: created and configured as the spec lays out, kept equal to
//! the node's own records (the source of truth), republished after every
//! connect because the PubSub service may have lost items.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use corvid_protocol::feed::{self, FeedOp, FeedWriter};
use corvid_protocol::record::Issuer;
use futures::StreamExt as _;
use tokio::sync::Notify;

use crate::config::FeedConfig;
use crate::engine::Engine;
use crate::pubsub;
use crate::xmpp::{Link, LinkState};

/// Publishes in flight at once (the link pipelines them).
const IN_FLIGHT: usize = 32;

/// With the component (layout 2): own records are served from the store,
/// so the outbox only needs emptying as they are written.
pub async fn served_by_component(engine: Arc<Engine>, wake: Arc<Notify>) {
    loop {
        let drained = {
            let engine = Arc::clone(&engine);
            tokio::task::spawn_blocking(move || -> Result<()> {
                for subject in engine.store().outbox()? {
                    engine.store().published(&subject)?;
                }
                Ok(())
            })
            .await
        };
        match drained {
            Ok(Ok(())) => engine.set_publish_error(None),
            Ok(Err(e)) => tracing::warn!("outbox: {e:#}"),
            Err(e) => tracing::error!("outbox task panicked: {e}"),
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// A failure that repeats is logged the first time, then at most once every
/// five minutes with how often it recurred meanwhile: a missing PubSub
/// right must not fill the log every two seconds.
#[derive(Default)]
struct Repeated {
    last: String,
    since_logged: u32,
    logged_at: Option<Instant>,
}

impl Repeated {
    const EVERY: Duration = Duration::from_secs(300);

    fn warn(&mut self, message: String) {
        let now = Instant::now();
        if self.last == message {
            if self.logged_at.is_some_and(|t| now - t < Self::EVERY) {
                self.since_logged += 1;
                return;
            }
            tracing::warn!(
                "{message} (again; {} more time(s) in the last {} min)",
                self.since_logged,
                Self::EVERY.as_secs() / 60
            );
        } else {
            tracing::warn!("{message}");
        }
        self.last = message;
        self.since_logged = 0;
        self.logged_at = Some(now);
    }
}

/// Runs for ever: waits for sessions, reconciles, drains the outbox.
pub async fn run(engine: Arc<Engine>, link: Link, config: FeedConfig, wake: Arc<Notify>) {
    let mut writer: Option<FeedWriter> = None;
    let mut reconciled_session = 0u64;
    let mut failing = Repeated::default();
    // Retries of a failing reconciliation back off from 2 s to a minute.
    let mut retry = Duration::from_secs(2);
    loop {
        let session = match link.state() {
            LinkState::Online { session, .. } => session,
            LinkState::Connecting { .. } => {
                let _ = link.wait_online(Duration::from_secs(3600)).await;
                continue;
            }
        };
        if session != reconciled_session {
            // The issuer's key id follows the current key (it changes on rotation).
            let issuer = Issuer {
                domain: engine.settings().domain.clone(),
                key: engine.public_key().key_id(),
            };
            match reconcile(&engine, &link, &config, &issuer, &mut writer).await {
                Ok(()) => {
                    reconciled_session = session;
                    engine.set_publish_error(None);
                    failing = Repeated::default();
                    retry = Duration::from_secs(2);
                    // Keep the membership card current after every connect.
                    if engine.settings().directory.is_some()
                        && let Err(e) = crate::federation::announce(&engine, &link).await
                    {
                        tracing::warn!("could not publish the membership card: {e:#}");
                    }
                }
                Err(e) => {
                    let why = format!(
                        "cannot maintain the feed {}: {e:#} (is corvidd's JID an admin of that PubSub component? `corvid status` shows this too)",
                        engine.feed()
                    );
                    failing.warn(format!("feed reconciliation failed, retrying: {why}"));
                    engine.set_publish_error(Some(why));
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(60));
                    continue;
                }
            }
        }
        if let Some(w) = writer.as_mut()
            && let Err(e) = drain_outbox(&engine, &link, w).await
        {
            let why = format!("publishing to {} failed: {e:#}", engine.feed());
            failing.warn(format!("{why}; reconciling and retrying"));
            engine.set_publish_error(Some(why));
            // A failed op leaves the service out of step: reconcile again.
            reconciled_session = 0;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = engine.own_changed().notified() => {}
            () = engine.own_feed_changed.notified() => {
                tracing::info!("own feed changed on the service (purge, deletion or retraction): reconciling");
                reconciled_session = 0;
            }
            () = engine.rekeyed().notified() => {
                tracing::info!("signing key rotated: rewriting the feed under the new key");
                writer = None;
                reconciled_session = 0;
            }
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

async fn reconcile(
    engine: &Engine,
    link: &Link,
    config: &FeedConfig,
    issuer: &Issuer,
    writer: &mut Option<FeedWriter>,
) -> Result<()> {
    let service = &config.service;
    let node = &config.node;
    pubsub::ensure_node(
        link,
        service,
        node,
        &pubsub::feed_node_config(config.max_items, config.access_model.as_str()),
    )
    .await?;
    // Follow our own node too, to notice a purge or deletion at once.
    // (Always: a stale "subscribed" survives a node's deletion in Prosody.)
    pubsub::subscribe(link, service, node, link.bare()).await?;
    let now = crate::now();
    let signer = engine.signer();
    let signer = signer.as_ref();
    let present: BTreeSet<String> = pubsub::item_ids(link, service, node)
        .await?
        .into_iter()
        .collect();
    let (ops, full) = match writer {
        None => {
            // First session since start: one fresh generation from the store.
            let mut w = FeedWriter::new(engine.feed().clone(), issuer.clone());
            let pending = engine.store().outbox()?;
            let ops = w.replace_all(signer, engine.store().own_records()?, now)?;
            *writer = Some(w);
            for subject in pending {
                engine.store().published(&subject)?;
            }
            (ops, true)
        }
        Some(w) => (w.desired_items(signer, now)?, false),
    };
    let mut wanted = BTreeSet::new();
    let mut to_run = Vec::new();
    for op in ops {
        if let FeedOp::Publish { item_id, .. } = &op {
            wanted.insert(item_id.clone());
            // After a reconnect, only what the service lost is republished.
            if !full && present.contains(item_id) {
                continue;
            }
        }
        to_run.push(op);
    }
    // Items of ours the layout no longer has (an earlier run's deltas and
    // chunks). Cards and key records are managed elsewhere.
    for id in &present {
        let managed = id.starts_with(feed::DELTA_PREFIX)
            || id.starts_with(feed::CHUNK_PREFIX)
            || id == feed::HEAD_ITEM;
        if managed && !wanted.contains(id) {
            to_run.push(FeedOp::Retract {
                node: node.clone(),
                item_id: id.clone(),
            });
        }
    }
    // Key records (rotations, revocations) stay published for good.
    for (item_id, xml) in engine.store().key_records()? {
        if !present.contains(&item_id)
            && let Ok(item) = corvid_protocol::item::SignedItem::from_xml(&xml)
        {
            to_run.push(FeedOp::Publish {
                node: node.clone(),
                item_id,
                item,
            });
        }
    }
    let count = to_run.len();
    execute(engine, link, service, to_run).await?;
    tracing::info!(feed = %engine.feed(), ops = count, items = wanted.len(), "feed reconciled");
    Ok(())
}

async fn drain_outbox(engine: &Engine, link: &Link, writer: &mut FeedWriter) -> Result<()> {
    let service = engine.feed().service.clone();
    for subject in engine.store().outbox()? {
        let Some(record) = engine.store().own(&subject)? else {
            engine.store().published(&subject)?;
            continue;
        };
        let ops = writer.upsert(engine.signer().as_ref(), record.clone(), crate::now())?;
        execute(engine, link, &service, ops).await?;
        // Unqueue only if no newer record replaced it meanwhile.
        if engine.store().own(&subject)?.as_ref() == Some(&record) {
            engine.store().published(&subject)?;
        }
    }
    Ok(())
}

/// Carries out ops: everything before the head concurrently, then the head,
/// then the rest (retractions of folded items) concurrently, so a reader
/// never finds a head whose chunks are not yet there.
async fn execute(engine: &Engine, link: &Link, service: &str, ops: Vec<FeedOp>) -> Result<()> {
    let mut phases: Vec<Vec<FeedOp>> = vec![Vec::new()];
    for op in ops {
        let is_head = matches!(&op, FeedOp::Publish { item_id, .. } if item_id == feed::HEAD_ITEM);
        if is_head {
            phases.push(vec![op]);
            phases.push(Vec::new());
        } else if let Some(last) = phases.last_mut() {
            last.push(op);
        }
    }
    for phase in phases {
        let results: Vec<Result<()>> = futures::stream::iter(phase)
            .map(|op| async move {
                let started = Instant::now();
                match op {
                    FeedOp::Publish {
                        node,
                        item_id,
                        item,
                    } => {
                        pubsub::publish(link, service, &node, &item_id, item.to_element()).await?;
                        engine.metrics.published(started.elapsed().as_secs_f64());
                    }
                    FeedOp::Retract { node, item_id } => {
                        pubsub::retract(link, service, &node, &item_id).await?;
                        engine.metrics.retracted();
                    }
                }
                Ok(())
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for r in results {
            r?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_failure_is_logged_once_then_summarised() {
        let mut r = Repeated::default();
        r.warn("forbidden".into());
        let first = r.logged_at;
        for _ in 0..10 {
            r.warn("forbidden".into());
        }
        // Within five minutes: counted, not logged again.
        assert_eq!(r.since_logged, 10);
        assert_eq!(r.logged_at, first);
        // Another failure is logged at once.
        r.warn("timeout".into());
        assert_eq!((r.last.as_str(), r.since_logged), ("timeout", 0));
    }
}
