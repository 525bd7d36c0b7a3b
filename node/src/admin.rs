//! Admin endpoints the `corvid` CLI needs: peers, reload, status, import,
//! export and the federation directory. Anything that changes state takes
//! the write token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query as QueryParams, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use corvid_protocol::record::Category;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ApiError, ApiState, blocking};
use crate::component::ComponentState;
use crate::engine::IMPORT_PREFIX;
use crate::engine::SubmitError;
use crate::subjects::{ReportSubject, parse_report_subject};
use crate::xmpp::LinkState;
use corvid_api::health::{Check, Health, Severity};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;

/// Admin routes.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/v1/peers", get(peers))
        .route(
            "/v1/peers/{domain}/confirm-rotation",
            post(confirm_rotation),
        )
        .route("/v1/peers/{domain}/enforce", post(enforce))
        .route("/v1/admin/reload", post(reload))
        .route("/v1/admin/brake", post(brake))
        .route("/v1/status", get(status))
        .route("/v1/doctor", post(doctor))
        .route("/v1/import", post(import))
        .route("/v1/export", get(export))
        .route("/v1/federation/announce", post(announce))
        .route("/v1/federation/members", get(members))
        .route("/v1/keys/rotate", post(rotate))
        .route("/v1/keys/revoke", post(revoke))
}

fn peer_json(s: &ApiState, domain: &str, p: &crate::engine::Peer) -> Result<Value, ApiError> {
    let state = s.engine.peer_state(domain)?;
    let rejected = s.engine.rejects().totals(domain);
    let sync = s.engine.sync.get(domain);
    let now = crate::now();
    let now_ms = crate::now_ms();
    let id_ms = |id: Option<&str>| {
        id.and_then(|i| i.parse::<corvid_protocol::record::ReportId>().ok())
            .map(|i| i.timestamp_ms())
    };
    let cursor_ms = id_ms(state.log_cursor.as_deref()).filter(|_| state.log_layout);
    // The newest record read from the peer: its log cursor, or (a feed read
    // as layout 1) when an item last arrived.
    let newest_item_age = match cursor_ms {
        Some(ms) => Some(now_ms.saturating_sub(ms) / 1000),
        None => state.last_item.map(|t| now.saturating_sub(t)),
    };
    // Records the peer's latest checkpoint counts that are not held here
    // (a non-member is not served those for members only), and how far
    // the newest record it names is ahead of the cursor.
    let backlog = sync.checkpoint_records.map(|n| {
        n.saturating_sub(sync.checkpoint_members_only)
            .saturating_sub(state.records)
    });
    let behind_secs = match (id_ms(sync.checkpoint_last.as_deref()), cursor_ms) {
        (Some(last), Some(cursor)) => Some(last.saturating_sub(cursor) / 1000),
        (Some(last), None) => Some(now_ms.saturating_sub(last) / 1000),
        _ => None,
    };
    let mode = if s.engine.is_suspended(domain) {
        "observe (suspended: reported a canary)"
    } else if p.trust.mode == corvid_protocol::aggregate::Mode::Observe {
        "observe"
    } else {
        "enforce"
    };
    Ok(json!({
        "domain": domain,
        "feed": p.feed.to_string(),
        "key": p.key.to_string(),
        "fingerprint": p.key.fingerprint().to_string(),
        "weight": p.trust.weight,
        "mode": mode,
        "last_sync": state.last_sync,
        "last_item": state.last_item,
        "records": state.records,
        "pending_rotation": state.pending_rotation,
        "suspended": state.suspended_for_canary,
        "rejected": rejected,
        "layout": if state.log_layout { 2 } else { 1 },
        "last_error": sync.last_error,
        "last_error_age": sync.error_at.map(|t| now.saturating_sub(t)),
        "failures": sync.failures,
        "reading_for": sync.reading_since.map(|t| now.saturating_sub(t)),
        "newest_item_age": newest_item_age,
        "backlog": backlog,
        "behind_secs": behind_secs,
        "checkpoint_age": sync.checkpoint_at.map(|t| now.saturating_sub(t)),
        "max_new_blocks_per_hour": p.max_new_blocks_per_hour,
        "cap": s.engine.shared().cap(domain),
    }))
}

async fn peers(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let settings = s.engine.settings();
    let mut out = Vec::new();
    for (domain, p) in &settings.peers {
        out.push(peer_json(&s, domain, p)?);
    }
    Ok(Json(json!({"peers": out})))
}

async fn confirm_rotation(
    State(s): State<Arc<ApiState>>,
    Path(domain): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match s.engine.confirm_rotation(&domain)? {
        Some(key) => {
            s.reload.ask();
            Ok(Json(json!({"peer": domain, "accepted_key": key})))
        }
        None => Err(ApiError::bad(format!(
            "no key rotation is pending for {domain}"
        ))),
    }
}

async fn enforce(
    State(s): State<Arc<ApiState>>,
    Path(domain): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.engine.lift_suspension(&domain)?;
    Ok(Json(json!({"peer": domain, "suspension_lifted": true})))
}

/// Reloads the config and answers with the outcome: 200 once the new
/// settings run, 400 with the reason when the file was refused (the running
/// settings stay), 503 when no attempt finished within 10 s.
async fn reload(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    match s
        .reload
        .ask_and_wait(std::time::Duration::from_secs(10))
        .await
    {
        Some(Ok(restart_needed)) => Ok(Json(
            json!({"reloaded": true, "restart_needed": restart_needed}),
        )),
        Some(Err(why)) => Err(ApiError::bad(format!(
            "the config was not reloaded, the running settings stay: {why}"
        ))),
        None => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the reload did not finish within 10 s; see corvidd's log".to_owned(),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct BrakeRequest {
    on: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// The emergency brake: every server that keeps a copy of the decisions
/// (mod_corvid) switches to observe mode within one stream round trip, and
/// back when it is released. Kept across restarts.
async fn brake(
    State(s): State<Arc<ApiState>>,
    Json(req): Json<BrakeRequest>,
) -> Result<Json<Value>, ApiError> {
    let brake = crate::api::Brake {
        on: req.on,
        since: crate::now(),
        reason: req.reason.map(|r| r.chars().take(500).collect()),
    };
    let store = s.engine.store().clone();
    let stored = brake.clone();
    blocking(move || {
        store.batch(true, &mut |tx| tx.put_meta_json(crate::api::BRAKE, &stored))?;
        Ok(())
    })
    .await?;
    // Waiting consumers answer at once.
    s.engine.store().decided().notify_waiters();
    if brake.on {
        tracing::warn!(reason = ?brake.reason, "emergency brake on: every mod_corvid observes, nothing is refused");
    } else {
        tracing::info!("emergency brake released: mod_corvid enforces again where configured");
    }
    Ok(Json(json!(brake)))
}

/// The `component` check of `status` and `doctor`.
fn component_check(
    c: &crate::component::ComponentHandle,
    state: &ComponentState,
    now: u64,
) -> Check {
    match state {
        ComponentState::Online { since, consumers } => Check::ok(
            "component",
            format!(
                "{} connected for {} s; {consumers} block-list consumers",
                c.jid,
                now.saturating_sub(*since)
            ),
        ),
        ComponentState::Connecting { last_error, since } => Check::fail(
            "component",
            format!(
                "{} not connected for {} s: {}",
                c.jid,
                now.saturating_sub(*since),
                last_error.as_deref().unwrap_or("connecting")
            ),
            "check [component] (server, secret_file) against the XMPP server's Component line, component_secret and component_ports (loopback)",
        ),
    }
}

/// What a ping's outcome says about the link to a peer's feed service.
fn link_check(
    domain: &str,
    service: &str,
    me: &str,
    took: Duration,
    outcome: &Result<(), crate::xmpp::IqError>,
) -> Check {
    use crate::xmpp::IqError;
    use xmpp_parsers::stanza_error::DefinedCondition as C;
    let name = format!("link.{domain}");
    // Prosody answers for a component of its own that is not connected
    // with remote-server-timeout and the text "Component unavailable".
    let condition = match outcome {
        Ok(()) => None,
        Err(IqError::Stanza { error, text, .. }) => Some(match error.defined_condition {
            C::FeatureNotImplemented | C::BadRequest => "answered",
            C::ServiceUnavailable => "service-unavailable",
            C::RemoteServerTimeout if text.contains("Component unavailable") => {
                "service-unavailable"
            }
            C::RemoteServerTimeout => "remote-server-timeout",
            C::RemoteServerNotFound => "remote-server-not-found",
            _ => "other",
        }),
        Err(_) => Some(""),
    };
    match condition {
        // A reply (or an error from the service itself) crossed both
        // servers: theirs reached ours back.
        None | Some("answered") => Check::ok(
            name,
            format!(
                "{service} answered through the s2s links in {} ms",
                took.as_millis()
            ),
        ),
        Some("service-unavailable") => Check::fail(
            name,
            format!(
                "{service}'s server answers for it, but nothing serves it: their corvidd's component is not connected"
            ),
            format!(
                "ask the operator of {domain} to check `corvid status` there; reads retry on their own"
            ),
        ),
        Some("remote-server-not-found") => Check::fail(
            name,
            format!("our server cannot reach {service}, or was refused by its server"),
            format!(
                "check that {service} resolves (DNS A/AAAA or SRV _xmpp-server._tcp) and the XMPP server's log for certificate or dialback errors about {service} or {me}"
            ),
        ),
        Some("remote-server-timeout") => Check::fail(
            name,
            format!("no answer from {service} crossed the s2s links"),
            format!(
                "their server is down or unreachable, or it cannot reach {me} back: {me} needs a DNS record (A/AAAA or SRV) and a certificate naming it, as any domain peers reach over s2s"
            ),
        ),
        Some("") => Check::fail(
            name,
            format!(
                "no answer from {service}: {}",
                outcome
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
            format!(
                "the s2s link to {domain} or back to {me} does not carry stanzas; see the XMPP server's log"
            ),
        ),
        Some(_) => Check::warn(
            name,
            format!(
                "{service} answered a ping with {}",
                outcome
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
            "an answer crossed the links, but not the expected one: check their setup",
        ),
    }
}

/// Live checks of the XMPP link (`corvid doctor`): the component, and a
/// ping of every peer's feed service through it, at once. A reply
/// proves both directions: the request crossed our server's s2s link to
/// theirs, and the reply theirs to ours (their server resolved our
/// component's name and accepted its certificate or dialback).
async fn doctor(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let settings = s.engine.settings();
    let mut health = Health::default();
    let Some(c) = s.component.get() else {
        health.push(Check::warn(
            "component",
            "no [component]: peers read this server's feed from its PubSub service (layout 1) and no block lists are served",
            "add [component] and the Component lines that corvid init prints",
        ));
        return Ok(Json(json!({ "checks": health.checks })));
    };
    let check = component_check(c, &c.state.borrow().clone(), crate::now());
    let online = check.severity == Severity::Ok;
    health.push(check);
    if !online {
        return Ok(Json(
            json!({ "checks": health.checks, "worst": health.worst() }),
        ));
    }
    let mut pings = tokio::task::JoinSet::new();
    for (domain, p) in &settings.peers {
        let (c, domain, service) = (c.clone(), domain.clone(), p.feed.service.clone());
        pings.spawn(async move {
            let started = Instant::now();
            // Feed addresses are checked when the config is read.
            let to = Jid::new(&service).ok()?;
            let outcome = c
                .iq(Iq::from_get(String::new(), xmpp_parsers::ping::Ping).with_to(to))
                .await
                .map(drop);
            Some((domain, service, started.elapsed(), outcome))
        });
    }
    let mut checks = Vec::new();
    while let Some(done) = pings.join_next().await {
        if let Ok(Some((domain, service, took, outcome))) = done {
            checks.push(link_check(&domain, &service, &c.jid, took, &outcome));
        }
    }
    checks.sort_by(|a, b| a.name.cmp(&b.name));
    for check in checks {
        health.push(check);
    }
    Ok(Json(
        json!({ "checks": health.checks, "worst": health.worst() }),
    ))
}

async fn status(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let settings = s.engine.settings();
    let now = crate::now();
    let mut health = Health::default();
    let xmpp = match s.link.state() {
        LinkState::Online { .. } => {
            health.push(Check::ok("xmpp.link", "online"));
            "online".to_owned()
        }
        LinkState::Connecting { last_error } => {
            health.push(Check::fail(
                "xmpp.link",
                format!(
                    "XMPP link down: {}",
                    last_error.as_deref().unwrap_or("connecting")
                ),
                "check [xmpp] in the config, the account's password and that the XMPP server runs (journalctl -u corvidd)",
            ));
            "connecting".to_owned()
        }
    };
    let mut peers = Vec::new();
    for (domain, p) in &settings.peers {
        let v = peer_json(&s, domain, p)?;
        let name = format!("peer.{domain}");
        match v["last_sync"].as_u64() {
            Some(t) if now.saturating_sub(t) <= 3600 => {
                health.push(Check::ok(format!("{name}.sync"), "synced within the hour"));
            }
            last => health.push(Check::warn(
                format!("{name}.sync"),
                match last {
                    Some(t) => format!("no complete sync for {} s", now.saturating_sub(t)),
                    None => "never synced completely".to_owned(),
                },
                format!("is its feed reachable? corvid peer show {domain}"),
            )),
        }
        if let Some(error) = v["last_error"].as_str() {
            let failures = v["failures"].as_u64().unwrap_or(0);
            let detail = format!(
                "its last {failures} read(s) failed, the last {} s ago: {error}",
                v["last_error_age"].as_u64().unwrap_or(0)
            );
            let hint = format!(
                "retried after 10 s, 20 s, then every 40 s; corvid peer list, and journalctl -u corvidd for {domain}"
            );
            health.push(if failures >= 3 {
                Check::fail(format!("{name}.read"), detail, hint)
            } else {
                Check::warn(format!("{name}.read"), detail, hint)
            });
        }
        if let Some(behind) = v["behind_secs"].as_u64()
            && behind > 120
            && v["reading_for"].is_null()
        {
            health.push(Check::warn(
                format!("{name}.backlog"),
                format!(
                    "{behind} s behind the peer's checkpoint ({} records not held)",
                    v["backlog"].as_u64().unwrap_or(0)
                ),
                "a read follows at the next checkpoint; if this stays, check the s2s link and unlimited_jids (corvid doctor)",
            ));
        }
        let held_at = v["cap"]["last_held_at"].as_u64();
        if let Some(at) = held_at.filter(|t| now.saturating_sub(*t) < 3600) {
            health.push(Check::warn(
                format!("{name}.cap"),
                format!(
                    "it reached its cap of {} new blocks per hour: {} block(s) held at flag since start, the last {} s ago",
                    v["max_new_blocks_per_hour"],
                    v["cap"]["held"],
                    now.saturating_sub(at)
                ),
                format!(
                    "see what it reports (corvid why SUBJECT); if it is right, raise max_new_blocks_per_hour in its [[peer]]; if not, corvid peer observe {domain}"
                ),
            ));
        }
        if v["pending_rotation"].is_string() {
            health.push(Check::warn(
                format!("{name}.key"),
                "a key rotation waits for you",
                format!("corvid peer confirm-rotation {domain}"),
            ));
        }
        if v["suspended"].is_string() {
            health.push(Check::warn(
                format!("{name}.mode"),
                "suspended (observe mode) for reporting a canary",
                format!("corvid peer enforce {domain}, once resolved"),
            ));
        }
        peers.push(v);
    }
    match s.engine.publish_error() {
        None => health.push(Check::ok("feed.publish", "own reports published")),
        Some(e) => health.push(Check::fail(
            "feed.publish",
            e,
            "check the PubSub service named in [feed] and corvidd's log",
        )),
    }
    let offset = s.clock_offset.load(std::sync::atomic::Ordering::Relaxed);
    if !s.clock_measured.load(std::sync::atomic::Ordering::Relaxed) {
        health.push(Check::ok("clock", "not measured yet"));
    } else if offset.unsigned_abs() > settings.skew / 2 {
        health.push(Check::warn(
            "clock",
            format!("differs from the XMPP server's by {offset} s"),
            "fix NTP on this host (timedatectl; systemd-timesyncd or chrony)",
        ));
    } else {
        health.push(Check::ok(
            "clock",
            format!("{offset:+} s against the XMPP server"),
        ));
    }
    let unpublished = s.engine.store().outbox()?.len();
    health.push(Check::ok(
        "store",
        format!(
            "{}: {} contributions, {:.1} MB",
            s.engine.store().engine(),
            s.engine.store().contribution_count(),
            s.engine.store().size_on_disk() as f64 / 1e6
        ),
    ));
    let brake = s.brake();
    if brake.on {
        health.push(Check::warn(
            "enforcement.brake",
            format!(
                "the emergency brake is on since {}{}: servers observe, nothing is refused",
                brake.since,
                brake
                    .reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            "corvid brake off, once the cause is fixed",
        ));
    }
    let consumers = s
        .consumers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let seq = s.engine.store().decision_seq()?;
    let mut list_consumers = 0;
    let component = s.component.get().map(|c| {
        let state = c.state.borrow().clone();
        health.push(component_check(c, &state, now));
        match &state {
            ComponentState::Online { since, consumers } => {
                list_consumers = *consumers;
                json!({ "jid": c.jid, "state": "online", "since": since, "list_consumers": consumers })
            }
            ComponentState::Connecting { last_error, since } => {
                json!({ "jid": c.jid, "state": "connecting", "since": since, "last_error": last_error })
            }
        }
    });
    if consumers.is_empty() && list_consumers == 0 {
        health.push(Check::warn(
            "enforcement",
            "no XMPP server has read the verdicts since corvidd started",
            "load mod_corvid in Prosody (hooks/prosody/README.md), or check its corvid_api_url and token",
        ));
    }
    for (name, c) in &consumers {
        let about = |k: &str| c.about.get(k).cloned().unwrap_or_default();
        let age = now.saturating_sub(c.last_seen);
        let behind = seq.saturating_sub(c.cursor);
        let message = format!(
            "{} on {}: {}; last asked {age} s ago, {behind} decisions behind; refused {}, would refuse {} (observing), fail-open {}",
            about("software"),
            about("hosts"),
            about("mode"),
            about("refused"),
            about("would_refuse"),
            about("fail_open")
        );
        let check_name = format!("enforcement.{name}");
        if age > 90 {
            health.push(Check::warn(
                check_name,
                message,
                "is the XMPP server running and can it reach corvidd's API? (its log names mod_corvid)",
            ));
        } else if c.fail_open_at.is_some_and(|t| now.saturating_sub(t) < 600) {
            health.push(Check::warn(
                check_name,
                message,
                "in the last 10 minutes the module let stanzas through unchecked, having no current copy: see the XMPP server's log",
            ));
        } else {
            health.push(Check::ok(check_name, message));
        }
    }
    let warnings: Vec<String> = health
        .checks
        .iter()
        .filter(|c| c.severity != Severity::Ok)
        .map(|c| format!("{}: {}", c.name, c.message))
        .collect();
    Ok(Json(json!({
        "brake": brake,
        "consumers": consumers,
        "component": component,
        "domain": settings.domain,
        "feed": s.engine.feed().to_string(),
        "public_key": s.engine.public_key().to_string(),
        "fingerprint": s.engine.public_key().fingerprint().to_string(),
        "xmpp": xmpp,
        "subjects_by_action": s.engine.action_counts()?,
        "stored_contributions": s.engine.store().contribution_count(),
        "own_reports_unpublished": unpublished,
        "peers": peers,
        "checks": health.checks,
        "worst": health.worst(),
        "warnings": warnings,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    /// A name for the list (the source id becomes `import:NAME`).
    name: String,
    entries: Vec<ImportEntry>,
    #[serde(default)]
    publish: bool,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportEntry {
    subject: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

async fn import(
    State(s): State<Arc<ApiState>>,
    Json(body): Json<ImportBody>,
) -> Result<Json<Value>, ApiError> {
    if body.name.is_empty()
        || !body
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ApiError::bad("name must be letters, digits, - _ ."));
    }
    let engine = Arc::clone(&s.engine);
    let publish = body.publish;
    let source = format!("{IMPORT_PREFIX}{}", body.name);
    let shown = if publish {
        s.engine.settings().domain.clone()
    } else {
        source.clone()
    };
    let (imported, skipped) = blocking(move || {
    let settings = engine.settings();
    let ttl = body.ttl_secs.unwrap_or(settings.default_ttl);
    let now = crate::now();
    let (mut imported, mut skipped) = (0u64, Vec::<Value>::new());
    for e in body.entries {
        let category: Category = match e.category.as_deref().unwrap_or("spam").parse() {
            Ok(c) => c,
            Err(err) => {
                skipped.push(json!({"subject": e.subject, "reason": err}));
                continue;
            }
        };
        let subject = match parse_report_subject(&e.subject) {
            Ok(ReportSubject::Key(k)) => k,
            Ok(ReportSubject::Ip(_)) => {
                skipped.push(json!({"subject": e.subject, "reason": "IP entries are not imported (raw addresses stay out of the store)"}));
                continue;
            }
            Err(err) => {
                skipped.push(json!({"subject": e.subject, "reason": err.to_string()}));
                continue;
            }
        };
        if settings.is_canary(&subject) {
            skipped.push(json!({"subject": e.subject, "reason": "one of this server's own hosts (a canary)"}));
            continue;
        }
        if body.publish {
            let submitted = engine.submit(
                    now,
                    crate::engine::Submission {
                        subject: ReportSubject::Key(subject),
                        category,
                        confidence: 80,
                        ttl: Some(ttl),
                        note: e.note,
                        count: 1,
                        first_seen: None,
                        abuse_contacted_at: None,
                        message_text: None,
                    },
                );
            match submitted {
                Ok(_) => imported += 1,
                Err(SubmitError::Invalid(why)) => {
                    skipped.push(json!({"subject": e.subject, "reason": why}));
                }
                // Storage failed: the import stops, and says so.
                Err(SubmitError::Failed(err)) => return Err(err.into()),
            }
        } else {
            engine.import(now, &source, subject, category, ttl)?;
            imported += 1;
        }
    }
    Ok((imported, skipped))
    })
    .await?;
    if publish {
        s.wake.notify_one();
    }
    Ok(Json(
        json!({"source": shown, "imported": imported, "skipped": skipped, "published": body.publish}),
    ))
}

async fn export(
    State(s): State<Arc<ApiState>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let settings = s.engine.settings();
    let all = s.engine.export(crate::now())?;
    let only_block = params.get("action").map(String::as_str) == Some("block");
    let list: Vec<_> = all
        .into_iter()
        .filter(|e| !only_block || e.action == corvid_protocol::aggregate::Action::Block)
        .collect();
    let dir = settings.directory.as_ref();
    Ok(Json(json!({
        "server": settings.domain,
        "generated_at": crate::now(),
        "abuse_contacts": dir.map(|d| d.abuse.clone()).unwrap_or_default(),
        "listing_policy": dir.map(|d| d.listing_policy.clone()).unwrap_or_default(),
        "delisting_policy": dir.map(|d| d.delisting_policy.clone()).unwrap_or_default(),
        "entries": list,
    })))
}

async fn announce(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let card = crate::federation::announce(&s.engine, &s.link)
        .await
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    Ok(Json(json!({"announced": card})))
}

async fn members(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let list = crate::federation::members(&s.engine, &s.link)
        .await
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    Ok(Json(json!({"members": list})))
}

/// Publishes a key record on the own feed now (the publisher also
/// republishes it whenever the service lost it).
async fn publish_own(
    s: &ApiState,
    item_id: &str,
    item: &corvid_protocol::item::SignedItem,
) -> Result<(), crate::xmpp::IqError> {
    // A feed served by the component serves the stored key record itself
    // and notifies its subscribers: nothing to publish.
    if s.engine
        .feed_served
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Ok(());
    }
    let feed = s.engine.feed();
    crate::pubsub::publish(
        &s.link,
        &feed.service,
        &feed.node,
        item_id,
        item.to_element(),
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// The new key file (from `corvid keygen`), readable by corvidd, mode 0600.
    new_key_file: String,
}

async fn rotate(
    State(s): State<Arc<ApiState>>,
    Json(body): Json<RotateBody>,
) -> Result<Json<Value>, ApiError> {
    let path = std::path::Path::new(&body.new_key_file);
    crate::config::check_private(path).map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApiError::bad(format!("cannot read {}: {e}", path.display())))?;
    let new = corvid_protocol::keys::SecretKey::from_key_file(&text)
        .map_err(|e| ApiError::bad(format!("{}: {e}", path.display())))?;
    let new_public = corvid_protocol::keys::Signer::public_key(&new);
    if new_public == s.engine.public_key() {
        return Err(ApiError::bad("that is the current key"));
    }
    let old = s.engine.public_key();
    let (item_id, item) = s.engine.rotate_key(new)?;
    let published = publish_own(&s, &item_id, &item).await;
    Ok(Json(json!({
        "old_key": old.to_string(),
        "new_key": new_public.to_string(),
        "fingerprint": new_public.fingerprint().to_string(),
        "rotation_item": item_id,
        "published": published.is_ok(),
        "publish_error": published.err().map(|e| e.to_string()),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn revoke(
    State(s): State<Arc<ApiState>>,
    Json(body): Json<RevokeBody>,
) -> Result<Json<Value>, ApiError> {
    let key = s.engine.public_key();
    let (item_id, item) = s.engine.revoke_key(body.reason)?;
    let published = publish_own(&s, &item_id, &item).await;
    Ok(Json(json!({
        "revoked_key": key.to_string(),
        "revocation_item": item_id,
        "published": published.is_ok(),
        "publish_error": published.err().map(|e| e.to_string()),
    })))
}
