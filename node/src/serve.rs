//! The API's HTTP server: hyper's HTTP/1.1 connections, bounded so that a
//! hostile neighbour on loopback cannot lock the server's hooks out.
//!
//! On loopback every neighbour is 127.0.0.1, so limits per address protect
//! nothing. Instead connections come in two classes:
//! - *unproven*: accepted, no request with a valid token yet. At most
//!   `max_connections - reserved_connections` of them; when that pool is
//!   full, a new connection evicts the oldest unproven one (a slowloris
//!   holds its slots longest, a hook sends its request at once);
//! - *proven*: a request on it carried a valid token (the API's auth
//!   layer calls [`ConnSlot::prove`]). Only these can use the last
//!   `reserved_connections` slots, and they are never evicted.
//!
//! Headers must arrive within `header_timeout` (which also bounds how long
//! an idle keep-alive connection stays open: hyper starts the same timer
//! when it waits for the next request), and a request's handling is bounded
//! by the API's own request timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tower::ServiceExt as _;

use crate::metrics::Metrics;

/// Connection limits, from `[api]` in the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once (proven and unproven).
    pub max_connections: usize,
    /// Slots only connections that have authenticated may use.
    pub reserved_connections: usize,
    /// Longest wait for a request's headers, and for the next request on
    /// an idle keep-alive connection.
    pub header_timeout: Duration,
}

#[derive(Debug, Default)]
struct Pool {
    next_id: u64,
    /// Unproven connections by age (id order), each with its evictor.
    unproven: BTreeMap<u64, oneshot::Sender<()>>,
    proven: usize,
}

/// The connection slots of one listener.
#[derive(Debug)]
pub struct Slots {
    limits: Limits,
    pool: Mutex<Pool>,
    metrics: Arc<Metrics>,
}

/// One accepted connection's slot; released when dropped.
#[derive(Debug, Clone)]
pub struct ConnSlot(Arc<SlotInner>);

#[derive(Debug)]
struct SlotInner {
    slots: Arc<Slots>,
    id: u64,
    proven: AtomicBool,
}

impl ConnSlot {
    /// Marks the connection as authenticated: it leaves the evictable pool.
    pub fn prove(&self) {
        if !self.0.proven.swap(true, Ordering::AcqRel) {
            let mut pool = self.0.slots.lock();
            pool.unproven.remove(&self.0.id);
            pool.proven += 1;
        }
    }

    /// Whether a request on this connection carried a valid token.
    pub fn is_proven(&self) -> bool {
        self.0.proven.load(Ordering::Acquire)
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        let mut pool = self.slots.lock();
        if self.proven.load(Ordering::Acquire) {
            pool.proven = pool.proven.saturating_sub(1);
        } else {
            pool.unproven.remove(&self.id);
        }
    }
}

impl Slots {
    /// Slots for one listener.
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            pool: Mutex::new(Pool::default()),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a slot for a new connection, evicting the oldest unproven
    /// connection if needed. `None` when every slot is held by
    /// authenticated connections: the new one is refused.
    pub fn admit(self: &Arc<Self>) -> Option<(ConnSlot, oneshot::Receiver<()>)> {
        let max = self.limits.max_connections.max(1);
        let unproven_max = max.saturating_sub(self.limits.reserved_connections).max(1);
        let mut pool = self.lock();
        let total = pool.proven + pool.unproven.len();
        if total >= max || pool.unproven.len() >= unproven_max {
            match pool.unproven.pop_first() {
                Some((_, evict)) => {
                    let _ = evict.send(());
                    self.metrics.connection_evicted();
                }
                None => {
                    self.metrics.connection_refused();
                    return None;
                }
            }
        }
        let id = pool.next_id;
        pool.next_id += 1;
        let (tx, rx) = oneshot::channel();
        pool.unproven.insert(id, tx);
        Some((
            ConnSlot(Arc::new(SlotInner {
                slots: Arc::clone(self),
                id,
                proven: AtomicBool::new(false),
            })),
            rx,
        ))
    }
}

/// Something that accepts byte streams (a TCP or Unix listener).
pub trait Accept: Send + 'static {
    /// The stream type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts the next connection.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        Ok(tokio::net::UnixListener::accept(self).await?.0)
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open
/// requests finish (up to 10 s).
pub async fn serve<L: Accept>(
    mut listener: L,
    app: Router,
    slots: Arc<Slots>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let io = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(io) => io,
                Err(e) => {
                    // EMFILE and friends: wait instead of spinning.
                    tracing::warn!("API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        let Some((slot, evicted)) = slots.admit() else {
            drop(io);
            continue;
        };
        tasks.spawn(connection(
            io,
            app.clone(),
            slot,
            evicted,
            stop_rx.clone(),
            slots.limits.header_timeout,
        ));
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

async fn connection<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: Io,
    app: Router,
    slot: ConnSlot,
    evicted: oneshot::Receiver<()>,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) {
    let service_slot = slot.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(service_slot.clone());
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::pin!(evicted);
    let mut stopping = false;
    let mut evict_seen = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("API connection ended: {e}");
                }
                break;
            }
            // Evicted (an unproven slot was needed): drop at once. The
            // sender is dropped when the connection proves itself.
            result = &mut evicted, if !evict_seen => {
                evict_seen = true;
                if result.is_ok() && !slot.is_proven() {
                    break;
                }
            }
            Ok(()) = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(slot);
}
