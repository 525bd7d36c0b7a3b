//! corvidd: the Corvid node.
//!
//! `corvidd --config FILE` runs the node; `corvidd check-config FILE` lists
//! every problem in a config file. Exit codes: 0 ok, 1 runtime failure,
//! 2 bad config or usage.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use corvid_node::api::{ApiState, router};
use corvid_node::config::{Config, ConfigProblems, Listen, read_secret};
use corvid_node::engine::{Engine, Settings};
use corvid_node::store::Store;
use corvid_node::xmpp::{self, Backoff, LinkEvent};
use corvid_node::{now, publisher, serve, sync};
use corvid_protocol::item::FeedAddress;
use corvid_protocol::keys::SecretKey;
use std::collections::HashSet;

use tokio::sync::{Notify, mpsc, watch};
use xmpp_parsers::jid::BareJid;

#[derive(Parser, Debug)]
#[command(
    name = "corvidd",
    version,
    about = "The Corvid node: federated, signed spam reports over XMPP PubSub"
)]
struct Cli {
    /// The config file (TOML).
    #[arg(long, short = 'c', env = "CORVIDD_CONFIG")]
    config: Option<PathBuf>,
    /// Write a JSON readiness line here once the API listens.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a config file and list every problem with a hint.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Rewrite the database without its free space (corvidd must be
    /// stopped; a clean stop does this by itself for databases up to
    /// 768 MiB).
    Compact {
        /// The config file.
        file: PathBuf,
    },
}

/// PubSub events queued between the XMPP link and the sync manager; more
/// are dropped and trigger a full reread.
const EVENT_QUEUE: usize = 4096;

/// The storage engine's page cache: sized for the memory target (10M
/// contributions in 1 GB), not the engines' 1 GiB defaults.
const STORE_CACHE_BYTES: u64 = 64 * 1024 * 1024;

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: journald and log files get plain
        // text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Compact { file }) => match compact(&file) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        },
        None => match cli.config {
            None => {
                eprintln!(
                    "error: no config file. Run `corvidd --config /etc/corvid/corvidd.toml` (create one with `corvid init`)."
                );
                2
            }
            Some(path) => match run(&path, cli.ready_file) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    // A config with problems is a usage error (2), chosen by
                    // the error's type, never by its text.
                    if e.chain().any(|c| c.is::<ConfigProblems>()) {
                        2
                    } else {
                        1
                    }
                }
            },
        },
    };
    std::process::exit(code);
}

fn compact(path: &std::path::Path) -> Result<()> {
    let config = Config::parse_file(path)?;
    let store = Store::open_with(&config.data_dir, config.storage_engine, STORE_CACHE_BYTES)?;
    let t = std::time::Instant::now();
    let (before, after) = store.compact()?;
    println!(
        "{}: {} database {:.1} MB -> {:.1} MB in {:.1} s",
        config.data_dir.display(),
        store.engine(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn check_config(path: &std::path::Path) -> i32 {
    let config = match Config::parse_file(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let problems = config.problems();
    if problems.is_empty() {
        println!("{}: ok", path.display());
        0
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!("{} problem(s) in {}", problems.len(), path.display());
        2
    }
}

fn run(path: &std::path::Path, ready_file: Option<PathBuf>) -> Result<()> {
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(path.to_owned(), config, ready_file))
}

async fn serve(path: PathBuf, config: Config, ready_file: Option<PathBuf>) -> Result<()> {
    let store = Store::open_with(&config.data_dir, config.storage_engine, STORE_CACHE_BYTES)?;
    if let Some(m) = corvid_node::store::migrate::from_v1(&config.data_dir, &store)? {
        tracing::info!(
            own = m.own,
            contributions = m.contributions,
            peers = m.peers,
            skipped = m.skipped,
            old = %m.moved_to.display(),
            "storage: moved the corvid 0.1 store into {}; the old one is kept aside",
            store.engine()
        );
    }
    let key_text = std::fs::read_to_string(&config.keys.signing_key_file).with_context(|| {
        format!(
            "cannot read signing key {}",
            config.keys.signing_key_file.display()
        )
    })?;
    let signer = SecretKey::from_key_file(&key_text).map_err(|e| {
        anyhow::anyhow!(
            "signing key {}: {e}",
            config.keys.signing_key_file.display()
        )
    })?;
    // With the component, the feed is the log it serves (layout 2);
    // without, the node on the PubSub service of [feed] (layout 1).
    let feed = match &config.component {
        Some(c) => corvid_node::component::own_feed(&c.jid)?,
        None => FeedAddress::new(&config.feed.service, &config.feed.node)?,
    };
    let settings = Settings::from_config(&config)?;
    let engine = Arc::new(Engine::new(store, settings, signer, feed.clone())?);

    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (senders_tx, senders_rx) = watch::channel(sync::event_senders(&engine));
    let sink = xmpp::EventSink::new(events_tx.clone())
        .only_from(senders_rx)
        .counted_in(Arc::clone(&engine.metrics));
    let overflow = Arc::clone(&sink.overflow);
    let backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(300),
    };
    let link = xmpp::start(&config.xmpp, backoff, sink.clone())?;
    // corvidd as a component: its block lists and its feed as a log, and
    // the peers' logs read through it.
    let component = match &config.component {
        Some(c) => Some(corvid_node::component::start(c, Arc::clone(&engine), sink)?),
        None => None,
    };
    let wake = Arc::new(Notify::new());
    let reload = Arc::new(corvid_node::api::Reloads::default());
    let resync = Duration::from_secs(
        std::env::var("CORVIDD_RESYNC_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );

    if component.is_some() {
        engine
            .feed_served
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // The component serves own records from the store as they are
        // written: nothing is published to a PubSub service (whose
        // whole-node rewrites stall the XMPP server at large feeds).
        tokio::spawn(publisher::served_by_component(
            Arc::clone(&engine),
            Arc::clone(&wake),
        ));
    } else {
        tokio::spawn(publisher::run(
            Arc::clone(&engine),
            link.clone(),
            config.feed.clone(),
            Arc::clone(&wake),
        ));
    }
    tokio::spawn(sync::run(
        Arc::clone(&engine),
        link.clone(),
        component.clone(),
        events_rx,
        overflow,
        resync,
    ));
    {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                // Small batches: a mass expiry is spread over time. Storage
                // work runs off the async threads.
                let engine = Arc::clone(&engine);
                match tokio::task::spawn_blocking(move || engine.sweep(now(), 2000)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("expiry sweep failed: {e:#}"),
                    Err(e) => tracing::error!("expiry sweep panicked: {e}"),
                }
            }
        });
    }

    let state = Arc::new(ApiState::new(
        Arc::clone(&engine),
        link.clone(),
        read_secret(&config.api.read_token_file)?,
        read_secret(&config.api.write_token_file)?,
        Arc::clone(&wake),
        corvid_node::api::ApiLimits {
            rate_per_token: config.api.rate_limit_per_sec,
            failed_auth_rate: config.api.failed_auth_per_sec,
            request_timeout: Duration::from_secs(config.api.request_timeout_secs),
        },
        Arc::clone(&reload),
    ));
    if let Some(handle) = component {
        let _ = state.component.set(handle);
    }
    spawn_clock_check(Arc::clone(&state), config.server.domain.clone());
    let app = router(Arc::clone(&state), config.api.max_body_bytes);

    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
    };
    spawn_reloader(
        path,
        config.clone(),
        Arc::clone(&engine),
        link.clone(),
        events_tx,
        senders_tx,
        Arc::clone(&reload),
    );

    let listen = config.api.listen()?;
    let slots = serve::Slots::new(
        serve::Limits {
            max_connections: config.api.max_connections,
            reserved_connections: config.api.reserved_connections,
            header_timeout: Duration::from_secs(config.api.header_timeout_secs),
        },
        Arc::clone(&engine.metrics),
    );
    let bound = match &listen {
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let bound = listener.local_addr()?.to_string();
            announce(&bound, &engine, ready_file.as_deref())?;
            serve::serve(listener, app, slots, shutdown).await;
            bound
        }
        Listen::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let listener = tokio::net::UnixListener::bind(p)
                .with_context(|| format!("cannot listen on {}", p.display()))?;
            // Owner and group only: the XMPP server joins the group to call
            // the hooks; other local users cannot connect at all.
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o660))
                .with_context(|| format!("cannot set the mode of {}", p.display()))?;
            let bound = format!("unix:{}", p.display());
            announce(&bound, &engine, ready_file.as_deref())?;
            serve::serve(listener, app, slots, shutdown).await;
            bound
        }
    };
    let t = std::time::Instant::now();
    let (before, after) = engine.shut_down()?;
    tracing::info!(
        api = bound,
        store_bytes = after,
        freed_bytes = before.saturating_sub(after),
        ms = t.elapsed().as_millis() as u64,
        "stopped cleanly"
    );
    Ok(())
}

fn announce(bound: &str, engine: &Engine, ready_file: Option<&std::path::Path>) -> Result<()> {
    let line = serde_json::json!({
        "event": "ready",
        "api": bound,
        "feed": engine.feed().to_string(),
        "public_key": engine.public_key().to_string(),
        "pid": std::process::id(),
    })
    .to_string();
    println!("{line}");
    if let Some(path) = ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{line}\n"))?;
        std::fs::rename(&tmp, path)?;
    }
    tracing::info!(api = bound, feed = %engine.feed(), "corvidd ready");
    Ok(())
}

/// SIGHUP (or an admin request) re-reads the config: peers, policy and
/// lists change without dropping lookups; new peers are backfilled.
fn spawn_reloader(
    path: PathBuf,
    started: Config,
    engine: Arc<Engine>,
    link: xmpp::Link,
    events: mpsc::Sender<LinkEvent>,
    senders: watch::Sender<Arc<HashSet<BareJid>>>,
    reload: Arc<corvid_node::api::Reloads>,
) {
    // The XMPP password corvidd logged in with (read once, at start).
    let password = read_secret(&started.xmpp.password_file).ok();
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                () = reload.asked() => {}
            }
            // Every request made before the file is read is answered by
            // this attempt.
            let covering = reload.covering();
            let loaded = Config::load(&path)
                .and_then(|c| Settings::from_config(&c).map(|settings| (c, settings)));
            let outcome = match loaded {
                Ok((config, settings)) => match engine.replace_settings(settings) {
                    Err(e) => {
                        tracing::warn!("reload: {e:#}");
                        Err(format!("{e:#}"))
                    }
                    Ok(()) => {
                        let restart = needs_restart(&started, &config, password.as_deref());
                        if restart.is_empty() {
                            tracing::info!(config = %path.display(), "configuration reloaded");
                        } else {
                            tracing::warn!(
                                config = %path.display(),
                                "configuration reloaded, but these changes apply only after a restart (systemctl restart corvidd): {}",
                                restart.join(", ")
                            );
                        }
                        senders.send_replace(sync::event_senders(&engine));
                        if let xmpp::LinkState::Online { session, .. } = link.state() {
                            let _ = events.send(LinkEvent::Online { session }).await;
                        }
                        Ok(restart)
                    }
                },
                Err(e) => {
                    tracing::error!("reload failed, keeping the running configuration: {e:#}");
                    Err(format!("{e:#}"))
                }
            };
            reload.finished(covering, outcome);
        }
    });
}

/// The settings a reload does not apply, read once at start (the XMPP
/// account and its password, the API, the store, the feed, the signing key,
/// the component): those the file now changes, by name.
fn needs_restart(started: &Config, now: &Config, password: Option<&str>) -> Vec<String> {
    // (The config's sections compare by their full contents.)
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let xmpp_changed = differs(&started.xmpp, &now.xmpp);
    let mut out: Vec<String> = [
        ("data_dir", differs(&started.data_dir, &now.data_dir)),
        (
            "storage_engine",
            differs(&started.storage_engine, &now.storage_engine),
        ),
        ("[xmpp]", xmpp_changed),
        ("[feed]", differs(&started.feed, &now.feed)),
        ("[api]", differs(&started.api, &now.api)),
        (
            "keys.signing_key_file",
            started.keys.signing_key_file != now.keys.signing_key_file,
        ),
        ("[component]", differs(&started.component, &now.component)),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(name, _)| name.to_owned())
    .collect();
    if !xmpp_changed && read_secret(&now.xmpp.password_file).ok().as_deref() != password {
        out.push(format!(
            "the XMPP password in {}",
            now.xmpp.password_file.display()
        ));
    }
    out
}

/// Compares our clock with the XMPP server's (XEP-0202) every few minutes.
fn spawn_clock_check(state: Arc<ApiState>, server: String) {
    tokio::spawn(async move {
        loop {
            if state
                .link
                .wait_online(Duration::from_secs(600))
                .await
                .is_ok()
                && let Ok(to) = xmpp_parsers::jid::BareJid::new(&server)
            {
                let iq = xmpp_parsers::iq::Iq::from_get("", xmpp_parsers::time::TimeQuery)
                    .with_to(to.into());
                let before = now();
                if let Ok(Some(payload)) = state.link.iq(iq).await
                    && let Ok(t) = xmpp_parsers::time::TimeResult::try_from(payload)
                {
                    let server_time = chrono::DateTime::<chrono::Utc>::from(t).timestamp();
                    let ours = ((before + now()) / 2) as i64;
                    let offset = server_time - ours;
                    state
                        .clock_offset
                        .store(offset, std::sync::atomic::Ordering::Relaxed);
                    state
                        .clock_measured
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    if offset.unsigned_abs() > 60 {
                        tracing::warn!(offset, "local clock differs from the XMPP server's");
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(300)).await;
        }
    });
}
