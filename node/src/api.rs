//! The hook API (HTTP/JSON) that the XMPP server's hooks and the `corvid`
//! CLI call.
//!
//! Reads need the read token, writes the write token (`Authorization:
//! Bearer …`, compared in constant time). The token is checked by a layer
//! before any handler runs, so a request's body is never read before it is
//! authenticated; a request that fails authentication is answered and its
//! connection closed. Each token has its own rate-limit bucket, so no caller
//! can throttle another token's holders (the hooks use the read token, the
//! CLI the write token); failed authentications share a third bucket.
//! Bodies are size-limited, handling is time-limited, and every error,
//! axum's own rejections included, is JSON saying what is wrong.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, Query as QueryParams, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use corvid_protocol::record::{Category, RetractionReason};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;
use tokio::sync::Notify;

use crate::engine::{Engine, Submission, SubmitError};
use crate::ratelimit::TokenBucket;
use crate::serve::ConnSlot;
use crate::store::StoreError;
use crate::subjects::{Query, parse_report_subject, parse_subject};
use crate::xmpp::{Link, LinkState};

/// Shared state of the API.
#[derive(Debug)]
pub struct ApiState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The XMPP link (for health).
    pub link: Link,
    /// Wakes the publisher after a write.
    pub wake: Arc<Notify>,
    /// Server clock minus ours, seconds (XEP-0202), if measured.
    pub clock_offset: AtomicI64,
    /// Whether a clock offset was measured.
    pub clock_measured: std::sync::atomic::AtomicBool,
    /// Reloads the config (SIGHUP equivalent); set by main.
    pub reload: Arc<Reloads>,
    /// The servers that keep a copy of the decisions (mod_corvid), by the
    /// name they give, as last seen: for `corvid status`.
    pub consumers: Mutex<BTreeMap<String, Consumer>>,
    /// The component serving the block lists, when configured; set by main.
    pub component: std::sync::OnceLock<crate::component::ComponentHandle>,
    /// The character tables of `GET /v1/digest/tables`, computed at the
    /// first request.
    digest_tables: tokio::sync::OnceCell<axum::body::Bytes>,
    auth: Auth,
    request_timeout: Duration,
}

/// The most consumers remembered (a name is chosen by the caller, who
/// holds the read token; the oldest is forgotten first).
const MAX_CONSUMERS: usize = 64;

/// A server that keeps a copy of the decisions, as it last described
/// itself (`X-Corvid-Consumer: name; key=value; …`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Consumer {
    /// Unix time of its last request.
    pub last_seen: u64,
    /// The cursor it asked from.
    pub cursor: u64,
    /// What it said about itself (software, hosts, mode, counters).
    pub about: BTreeMap<String, String>,
    /// When its count of unchecked stanzas (`fail_open`) last grew.
    pub fail_open_at: Option<u64>,
}

/// The emergency brake's record in the store.
pub const BRAKE: &str = "enforcement_brake";

/// The emergency brake: while it is on, every consumer acts in observe mode.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Brake {
    /// On or off.
    pub on: bool,
    /// Unix time it was last set.
    pub since: u64,
    /// Why, as the operator said.
    #[serde(default)]
    pub reason: Option<String>,
}

impl ApiState {
    /// The brake as stored (off when never set or unreadable).
    pub fn brake(&self) -> Brake {
        self.engine
            .store()
            .meta_json::<Brake>(BRAKE)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn saw_consumer(&self, headers: &HeaderMap, cursor: u64) {
        let Some(text) = headers
            .get("x-corvid-consumer")
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let mut parts = text.split(';').map(str::trim);
        let name: String = parts.next().unwrap_or_default().chars().take(100).collect();
        if name.is_empty() {
            return;
        }
        let about: BTreeMap<String, String> = parts
            .filter_map(|kv| kv.split_once('='))
            .take(16)
            .map(|(k, v)| (k.chars().take(40).collect(), v.chars().take(200).collect()))
            .collect();
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !consumers.contains_key(&name) && consumers.len() >= MAX_CONSUMERS {
            let oldest = consumers
                .iter()
                .min_by_key(|(_, c)| c.last_seen)
                .map(|(n, _)| n.clone());
            if let Some(n) = oldest {
                consumers.remove(&n);
            }
        }
        let now = crate::now();
        let previous = consumers.get(&name);
        let grew = about
            .get("fail_open")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            > previous
                .and_then(|p| p.about.get("fail_open"))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        let fail_open_at = if grew {
            Some(now)
        } else {
            previous.and_then(|p| p.fail_open_at)
        };
        consumers.insert(
            name,
            Consumer {
                last_seen: now,
                cursor,
                about,
                fail_open_at,
            },
        );
    }
}

/// Tokens and their rate limits.
#[derive(Debug)]
struct Auth {
    read_token: String,
    write_token: String,
    /// One bucket per token, and one for failed authentications.
    buckets: [Mutex<TokenBucket>; 3],
}

/// Which token a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Read = 0,
    Write = 1,
}

/// Bucket index of failed authentications.
const FAILED: usize = 2;

/// The API's limits, from `[api]`.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Requests per second per token (0: unlimited).
    pub rate_per_token: u32,
    /// Failed authentications answered per second before 429.
    pub failed_auth_rate: u32,
    /// Longest a request may take once authenticated.
    pub request_timeout: Duration,
}

/// What a reload did: the settings it could not apply (they take a restart),
/// or why the file was refused.
pub type ReloadOutcome = Result<Vec<String>, String>;

/// Reloads of the config: asked by SIGHUP or through the API, carried out
/// by the reloader task, whose outcome an API caller can wait for (so that
/// `corvid peer set-weight` knows whether corvidd took the edited file).
#[derive(Debug)]
pub struct Reloads {
    wake: Notify,
    asked: std::sync::atomic::AtomicU64,
    /// The last request an attempt covered, and its outcome.
    done: tokio::sync::watch::Sender<(u64, ReloadOutcome)>,
}

impl Default for Reloads {
    fn default() -> Self {
        Self {
            wake: Notify::new(),
            asked: std::sync::atomic::AtomicU64::new(0),
            done: tokio::sync::watch::Sender::new((0, Ok(Vec::new()))),
        }
    }
}

impl Reloads {
    /// Asks for a reload, without waiting; the request's number.
    pub fn ask(&self) -> u64 {
        let n = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        n
    }

    /// Asks for a reload and waits for an attempt that read the file after
    /// this request (at most `timeout`): its outcome, None on a timeout.
    pub async fn ask_and_wait(&self, timeout: std::time::Duration) -> Option<ReloadOutcome> {
        let mut done = self.done.subscribe();
        let n = self.ask();
        let seen = tokio::time::timeout(timeout, done.wait_for(|(covered, _)| *covered >= n))
            .await
            .ok()?
            .ok()?;
        Some(seen.1.clone())
    }

    /// For the reloader: waits until a reload is asked through the API.
    pub async fn asked(&self) {
        self.wake.notified().await;
    }

    /// For the reloader, before it reads the file: the requests this
    /// attempt covers.
    pub fn covering(&self) -> u64 {
        self.asked.load(Ordering::SeqCst)
    }

    /// For the reloader, after an attempt.
    pub fn finished(&self, covered: u64, outcome: ReloadOutcome) {
        // (The previous outcome, replaced, is no one's to handle.)
        let _previous = self.done.send_replace((covered, outcome));
    }
}

impl ApiState {
    /// New state.
    pub fn new(
        engine: Arc<Engine>,
        link: Link,
        read_token: String,
        write_token: String,
        wake: Arc<Notify>,
        limits: ApiLimits,
        reload: Arc<Reloads>,
    ) -> Self {
        let now = Instant::now();
        let bucket = |rate: u32| Mutex::new(TokenBucket::new(f64::from(rate), now));
        Self {
            engine,
            link,
            wake,
            clock_offset: AtomicI64::new(0),
            clock_measured: std::sync::atomic::AtomicBool::new(false),
            reload,
            consumers: Mutex::default(),
            component: std::sync::OnceLock::new(),
            digest_tables: tokio::sync::OnceCell::new(),
            auth: Auth {
                read_token,
                write_token,
                buckets: [
                    bucket(limits.rate_per_token),
                    bucket(limits.rate_per_token),
                    bucket(limits.failed_auth_rate),
                ],
            },
            request_timeout: limits.request_timeout,
        }
    }
}

/// An API error: status plus a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// A 400.
    pub fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    /// A failure that is not the caller's: 503 when storage failed (retry
    /// later; nothing was stored or acknowledged), 500 otherwise.
    fn from(e: anyhow::Error) -> Self {
        tracing::error!("request failed: {e:#}");
        let status = match e.chain().find_map(|c| c.downcast_ref::<StoreError>()) {
            Some(StoreError::Io(_)) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: format!("{e:#}"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        anyhow::Error::from(e).into()
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(m) => Self::bad(m),
            SubmitError::Failed(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs storage work (fsync included) on tokio's blocking pool, off the
/// threads that answer lookups.
///
/// # Errors
/// What `f` returns; 500 if the task panicked.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storage task failed: {e}"),
        )
    })?
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

/// The token an endpoint needs: reads (GET, and the batch lookup) take the
/// read token, everything else the write token; `/healthz` none.
fn need_for(method: &Method, path: &str) -> Option<Need> {
    if path == "/healthz" {
        None
    } else if method == Method::GET
        || method == Method::HEAD
        || (method == Method::POST
            && (path == "/v1/verdicts" || path == "/v1/digest" || path == "/v1/signals"))
    {
        Some(Need::Read)
    } else {
        Some(Need::Write)
    }
}

impl Auth {
    fn check(&self, headers: &HeaderMap, need: Need) -> ApiResult<Token> {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing Authorization: Bearer <token>",
                )
            })?;
        let is = |t: &str| bool::from(t.as_bytes().ct_eq(given.as_bytes()));
        // The write token may also read.
        let (read, write) = (is(&self.read_token), is(&self.write_token));
        match need {
            _ if write => Ok(Token::Write),
            Need::Read if read => Ok(Token::Read),
            Need::Read => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "token not valid for reads",
            )),
            Need::Write => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "token not valid for writes (use the write token)",
            )),
        }
    }

    fn take(&self, bucket: usize) -> bool {
        self.buckets[bucket]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(Instant::now())
    }
}

/// The layer in front of every route: authentication before the body is
/// read, then the token's rate limit, then the request timeout.
async fn guard(State(s): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let Some(need) = need_for(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let token = match s.auth.check(req.headers(), need) {
        Ok(token) => token,
        Err(e) => {
            let over = !s.auth.take(FAILED);
            let reason = if over {
                "rate-limited"
            } else if e.status == StatusCode::UNAUTHORIZED {
                "unauthenticated"
            } else {
                "forbidden"
            };
            s.engine.metrics.api_rejected(reason);
            let mut response = if over {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentications; check the token",
                )
                .into_response()
            } else {
                e.into_response()
            };
            // Whoever sent it must reconnect, through the connection slots.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    if let Some(slot) = req.extensions().get::<ConnSlot>() {
        slot.prove();
    }
    if !s.auth.take(token as usize) {
        s.engine.metrics.api_rejected("rate-limited");
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit for this token exceeded (api.rate_limit_per_sec); slow down",
        )
        .into_response();
    }
    if need == Need::Read && req.uri().path() == "/v1/verdict" {
        // The lookup handler never awaits (it reads published verdicts),
        // so a timer could not cut it short: none is armed for it.
        return next.run(req).await;
    }
    match tokio::time::timeout(s.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {} s (api.request_timeout_secs)",
                s.request_timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Every error answers JSON, axum's own rejections (400, 405, 413, 415,
/// 422) included: their text becomes the `error` field.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match (text.is_empty(), status) {
        (false, _) => text,
        (true, StatusCode::METHOD_NOT_ALLOWED) => {
            "method not allowed on this endpoint (see the Allow header)".to_owned()
        }
        (true, _) => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    let mut out = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

const QUERY_KEYS: [&str; 6] = ["jid", "domain", "ip", "digest", "host", "subject"];

fn parse_query(state: &ApiState, params: &HashMap<String, String>) -> ApiResult<Query> {
    if let Some(k) = params.keys().find(|k| !QUERY_KEYS.contains(&k.as_str())) {
        return Err(ApiError::bad(format!(
            "unknown parameter {k:?}; use one of jid, domain, ip, digest (and optionally host)"
        )));
    }
    if let Some(host) = params.get("host") {
        let settings = state.engine.settings();
        let h = corvid_protocol::subject::normalize_domain(host)
            .map_err(|e| ApiError::bad(e.to_string()))?;
        if !settings.hosts.contains(&h) {
            return Err(ApiError::bad(format!(
                "host {host:?} is not one of this server's hosts"
            )));
        }
    }
    let get = |k: &str| params.get(k).map(String::as_str);
    // `subject=` takes any form the CLI accepts (JID, domain, key, ip:ADDR).
    if let Some(text) = get("subject") {
        if ["jid", "domain", "ip", "digest"]
            .iter()
            .any(|k| params.contains_key(*k))
        {
            return Err(ApiError::bad(
                "give subject alone, or one of jid, domain, ip, digest",
            ));
        }
        return Query::parse(text).map_err(|e| ApiError::bad(e.to_string()));
    }
    Query::from_params(get("jid"), get("domain"), get("ip"), get("digest"))
        .map_err(|e| ApiError::bad(e.to_string()))
}

fn verdict_json(v: &crate::engine::VerdictOut, explain: bool) -> Value {
    let mut out = json!({
        "action": v.action,
        "score": v.score,
        "reasons": v.reasons,
    });
    if explain {
        out["subjects"] = json!(v.subjects);
        out["contributions"] = json!(v.contributions);
    }
    out
}

/// A verdict's JSON, as the hooks read it.
#[derive(serde::Serialize)]
struct VerdictBody<'a> {
    action: corvid_protocol::aggregate::Action,
    score: f64,
    reasons: &'a [Value],
}

/// The kind of a raw query string that names one subject by one of the
/// four lookup parameters (`jid=…`, `domain=…`, `ip=…`, `digest=…`): only
/// those are answered from the cache under their raw spelling.
fn raw_kind(raw: &str) -> Option<&'static str> {
    let (name, value) = raw.split_once('=')?;
    if value.contains(['&', '=']) {
        return None;
    }
    match name {
        "jid" => Some("jid"),
        "domain" => Some("domain"),
        "ip" => Some("ip"),
        "digest" => Some("digest"),
        _ => None,
    }
}

/// A verdict rendered as the hooks read it.
fn render(
    v: &crate::engine::VerdictOut,
) -> (
    corvid_protocol::aggregate::Action,
    serde_json::Result<Vec<u8>>,
) {
    let body = serde_json::to_vec(&VerdictBody {
        action: v.action,
        score: v.score,
        reasons: &v.reasons,
    });
    (v.action, body)
}

async fn verdict(State(s): State<Arc<ApiState>>, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let raw = raw.unwrap_or_default();
    let now = crate::now();
    let published = &s.engine.shared().published;
    // A query string seen before is answered without decoding or preparing
    // it again (no stringprep, no hash): the cache keeps the answer under
    // its raw spelling too, invalidated with the prepared query's.
    let raw_kind = raw_kind(&raw);
    let hit = raw_kind.and_then(|_| published.cached_with(&raw, now, |v| render(v)).ok());
    let (kind, (action, body)) = match (raw_kind, hit) {
        (Some(kind), Some(answer)) => (kind, answer),
        _ => {
            let params: HashMap<String, String> = serde_urlencoded::from_str(&raw)
                .map_err(|e| ApiError::bad(format!("bad query string: {e}")))?;
            let q = parse_query(&s, &params)?;
            let kind = match &q {
                Query::Jid { .. } => "jid",
                Query::Domain { .. } => "domain",
                Query::Ip(_) | Query::IpPrefix(_) => "ip",
                Query::Digest(_) | Query::Key(_) => "digest",
            };
            // Rendered where the cache holds it: no copy of the verdict.
            let answer = s.engine.verdict_with(now, &q, |v| render(v))?;
            if raw_kind.is_some() {
                published.alias(&raw, &q.cache_key(), now);
            }
            (kind, answer)
        }
    };
    s.engine.metrics.lookup(kind);
    let body = body.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the verdict: {e}"),
        )
    })?;
    s.engine.metrics.verdict(action);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    queries: Vec<HashMap<String, String>>,
}

async fn verdicts(State(s): State<Arc<ApiState>>, body: Json<Batch>) -> ApiResult<Json<Value>> {
    if body.queries.len() > 1000 {
        return Err(ApiError::bad("at most 1000 queries per batch"));
    }
    let now = crate::now();
    let mut out = Vec::with_capacity(body.queries.len());
    for params in &body.queries {
        match parse_query(&s, params) {
            Ok(q) => {
                s.engine.metrics.lookup("batch");
                let v = s.engine.verdict(now, &q)?;
                s.engine.metrics.verdict(v.action);
                out.push(verdict_json(&v, false));
            }
            Err(e) => out.push(json!({"error": e.message})),
        }
    }
    Ok(Json(json!({"verdicts": out})))
}

async fn explain(
    State(s): State<Arc<ApiState>>,
    QueryParams(mut params): QueryParams<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    // `subject=` takes any form the CLI accepts (JID, domain, key, ip:ADDR).
    let q = match params.remove("subject") {
        Some(text) if params.is_empty() => {
            Query::parse(&text).map_err(|e| ApiError::bad(e.to_string()))?
        }
        Some(_) => {
            return Err(ApiError::bad(
                "give subject alone, or one of jid, domain, ip, digest",
            ));
        }
        None => parse_query(&s, &params)?,
    };
    let v = s.engine.explain(crate::now(), &q)?;
    let mut out = verdict_json(&v, true);
    // What local users did with the exact subject's messages.
    if let Some(key) = q.exact()
        && let Some(signals) = s.engine.store().signals(key.as_str())?
    {
        let since = crate::now().saturating_sub(crate::core::RELEASES_COUNT_SECS);
        out["local_signals"] = json!({
            "releases": signals.releases_since(since),
            "deletions": signals.deletions.len(),
            "last_release": signals.releases.values().max(),
            "last_deletion": signals.deletions.values().max(),
        });
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    subject: String,
    category: String,
    #[serde(default = "default_confidence")]
    confidence: u8,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    first_seen: Option<u64>,
    #[serde(default)]
    abuse_contacted_at: Option<u64>,
    #[serde(default)]
    message_text: Option<String>,
}

fn default_confidence() -> u8 {
    80
}

async fn report(
    State(s): State<Arc<ApiState>>,
    body: Json<ReportBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let subject =
        parse_report_subject(&body.subject).map_err(|e| ApiError::bad(format!("subject: {e}")))?;
    let category: Category = body.category.parse().map_err(ApiError::bad)?;
    if !(1..=100).contains(&body.confidence) {
        return Err(ApiError::bad("confidence must be 1-100"));
    }
    let submission = Submission {
        subject,
        category,
        confidence: body.confidence,
        ttl: body.ttl_secs,
        note: body.note.clone(),
        count: body.count.unwrap_or(1),
        first_seen: body.first_seen,
        abuse_contacted_at: body.abuse_contacted_at,
        message_text: body.message_text.clone(),
    };
    let engine = Arc::clone(&s.engine);
    let report = blocking(move || Ok(engine.submit(crate::now(), submission)?)).await?;
    s.wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": report.id.to_string(), "subject": report.subject.to_string(), "expires_at": report.expires_at, "durable": true}),
        ),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalBody {
    /// The sender: a JID, or a server's domain.
    sender: String,
    /// `release` or `delete`.
    kind: String,
    /// An opaque tag of the local user (distinct tags count), at most 128
    /// characters.
    user: String,
}

/// A local signal from the XMPP server's hooks: a user released a message
/// from the spam folder, or deleted one there. Releases by distinct users
/// count against the sender's verdict (local policy); both show in `why`.
/// Taken with the hooks' (read) token.
async fn signal(
    State(s): State<Arc<ApiState>>,
    Json(body): Json<SignalBody>,
) -> ApiResult<Json<Value>> {
    let release = match body.kind.as_str() {
        "release" => true,
        "delete" => false,
        other => {
            return Err(ApiError::bad(format!(
                "kind must be release or delete, not {other:?}"
            )));
        }
    };
    if body.user.is_empty() || body.user.len() > 128 {
        return Err(ApiError::bad("user must be 1-128 characters"));
    }
    let subject = if body.sender.contains('@') {
        corvid_protocol::subject::SubjectKey::for_jid(&body.sender)
    } else {
        corvid_protocol::subject::SubjectKey::for_domain(&body.sender, false)
    }
    .map_err(|e| ApiError::bad(format!("sender: {e}")))?;
    let engine = Arc::clone(&s.engine);
    let (key, user) = (subject.clone(), body.user);
    blocking(move || Ok(engine.signal(crate::now(), &key, release, &user)?)).await?;
    s.engine
        .metrics
        .local_signal(if release { "release" } else { "delete" });
    Ok(Json(
        json!({"subject": subject.to_string(), "recorded": body.kind}),
    ))
}

async fn retract(
    State(s): State<Arc<ApiState>>,
    Path(subject): Path<String>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let reason: RetractionReason = params
        .get("reason")
        .map_or("false-positive", String::as_str)
        .parse()
        .map_err(ApiError::bad)?;
    let key = match parse_report_subject(&subject).map_err(|e| ApiError::bad(e.to_string()))? {
        crate::subjects::ReportSubject::Key(k) => k,
        crate::subjects::ReportSubject::Ip(prefix) => {
            let settings = s.engine.settings();
            let Some((secret, _)) = settings.secrets.iter().find(|(_, issue)| *issue) else {
                return Err(ApiError::bad(
                    "no federation secret configured for IP subjects",
                ));
            };
            // The report may be from an earlier epoch: find the one we hold.
            let now = crate::now();
            let first = secret.epoch_of(now.saturating_sub(corvid_protocol::ns::MAX_TTL_SECS));
            let mut found = None;
            for epoch in (first..=secret.epoch_of(now)).rev() {
                let k = secret.token(&prefix, epoch);
                if s.engine.store().own(&k)?.is_some() {
                    found = Some(k);
                    break;
                }
            }
            found.ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "this server has no report about that IP prefix",
                )
            })?
        }
    };
    let engine = Arc::clone(&s.engine);
    let retracted = {
        let key = key.clone();
        blocking(move || Ok(engine.retract(crate::now(), &key, reason)?)).await?
    };
    match retracted {
        Some(t) => {
            s.wake.notify_one();
            Ok(Json(
                json!({"retracted": t.retracts.to_string(), "tombstone": t.id.to_string(), "subject": key.to_string(), "durable": true}),
            ))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("this server has no live report about {key}"),
        )),
    }
}

/// The longest a stream request waits for a decision (`wait`).
const MAX_STREAM_WAIT_SECS: u64 = 30;

async fn decisions(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let number = |name: &str, default: u64| -> ApiResult<u64> {
        params
            .get(name)
            .map_or(Ok(default), |v| v.parse())
            .map_err(|_| ApiError::bad(format!("{name} must be a number")))
    };
    let since = number("since", 0)?;
    let limit = usize::try_from(number("limit", 1000)?.min(10_000)).unwrap_or(10_000);
    let wait = Duration::from_secs(number("wait", 0)?.min(MAX_STREAM_WAIT_SECS));
    s.saw_consumer(&headers, since);
    let store = s.engine.store().clone();
    let deadline = tokio::time::Instant::now() + wait;
    let brake = s.brake();
    loop {
        // Registered before the read (`enable`: a `Notified` that was never
        // polled is not woken by `notify_waiters`), so a decision committed
        // between the read and the wait wakes us.
        let woken = store.decided().notified();
        let mut woken = std::pin::pin!(woken);
        woken.as_mut().enable();
        let read = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.decisions_since(since, limit))
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("decision stream: {e}"),
                    )
                })??
        };
        let (list, reset) = read;
        // A change of the brake answers at once, as a decision does.
        let brake_now = s.brake();
        if !list.is_empty()
            || reset
            || brake_now != brake
            || tokio::time::Instant::now() >= deadline
        {
            let next = list.last().map_or(since, |d| d.seq);
            return Ok(Json(json!({
                "decisions": list, "next": next, "reset": reset,
                "peers": peer_hosts(&s), "brake": brake_now.on,
            })));
        }
        if tokio::time::timeout_at(deadline, woken.as_mut())
            .await
            .is_err()
        {
            return Ok(Json(json!({
                "decisions": [], "next": since, "reset": false,
                "peers": peer_hosts(&s), "brake": s.brake().on,
            })));
        }
    }
}

/// The longest body digested (a larger one gets no digest, and says so).
const MAX_DIGEST_BODY: usize = 256 * 1024;

#[derive(Debug, serde::Deserialize)]
struct DigestRequest {
    body: String,
}

/// A message body's content digest (spec §10) and that digest's verdict:
/// what a server asks about a stranger's message. corvidd keeps nothing of
/// the text. A digest alone never blocks (§15.5).
async fn digest(
    State(s): State<Arc<ApiState>>,
    Json(req): Json<DigestRequest>,
) -> ApiResult<Json<Value>> {
    if req.body.len() > MAX_DIGEST_BODY {
        return Ok(Json(json!({
            "digest": null, "action": "allow",
            "note": format!("bodies over {MAX_DIGEST_BODY} bytes are not digested"),
        })));
    }
    let engine = Arc::clone(&s.engine);
    let now = crate::now();
    // Digesting is linear in the body but not free: off the async workers.
    let answer = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let Some(key) = corvid_protocol::digest::body_digest(&req.body) else {
            return Ok(json!({"digest": null, "action": "allow"}));
        };
        let (action, body) = engine.verdict_with(
            now,
            &corvid_api::subjects::Query::Digest(key.clone()),
            |v| (v.action, v.score),
        )?;
        // What the digest was reported for, as the decision stream says.
        let category = if action == corvid_protocol::aggregate::Action::Allow {
            None
        } else {
            engine
                .store()
                .last_action(key.as_str())
                .ok()
                .flatten()
                .and_then(|l| l.category)
        };
        Ok(json!({"digest": key.as_str(), "action": action, "score": body, "category": category}))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("digest: {e}")))??;
    s.engine.metrics.lookup("digest");
    Ok(Json(answer))
}

/// The body of `GET /v1/digest/tables`: [`corvid_protocol::digest::CharTables`]
/// as JSON, with the Unicode version and the minimum length (§10 step 6).
/// Each table is one string, so that a consumer without a fast JSON
/// decoder (Prosody's is plain Lua) splits it with its string functions:
/// entries separated by `;`, code points in hex, a range `first-last`, a
/// sequence of code points separated by spaces, `key:value`.
pub fn digest_tables_json() -> Vec<u8> {
    use std::fmt::Write as _;
    let t = corvid_protocol::digest::char_tables();
    let seq = |out: &mut String, cps: &mut dyn Iterator<Item = char>| {
        for (n, c) in cps.enumerate() {
            let _ = write!(out, "{}{:x}", if n > 0 { " " } else { "" }, u32::from(c));
        }
    };
    let ranges = |r: &[(u32, u32)]| -> String {
        let mut out = String::new();
        for (lo, hi) in r {
            let _ = write!(out, "{lo:x}-{hi:x};");
        }
        out
    };
    let entries = |list: &mut dyn Iterator<Item = (char, Vec<char>)>| -> String {
        let mut out = String::new();
        for (c, to) in list {
            let _ = write!(out, "{:x}:", u32::from(c));
            seq(&mut out, &mut to.into_iter());
            out.push(';');
        }
        out
    };
    let mut classes = String::new();
    for (lo, hi, k) in &t.combining_class {
        let _ = write!(classes, "{lo:x}-{hi:x}:{k:x};");
    }
    let mut compose = String::new();
    for (a, b, c) in &t.compose {
        let _ = write!(
            compose,
            "{:x} {:x}:{:x};",
            u32::from(*a),
            u32::from(*b),
            u32::from(*c)
        );
    }
    let (major, minor, update) = char::UNICODE_VERSION;
    let value = json!({
        "version": 2,
        "unicode": format!("{major}.{minor}.{update}"),
        "min_chars": corvid_protocol::digest::MIN_NORMALIZED_CHARS,
        "map": entries(&mut t.map.iter().map(|(c, s)| (*c, s.chars().collect()))),
        "context": ranges(&t.context),
        "label": ranges(&t.label),
        "alphabetic": ranges(&t.alphabetic),
        "numeric": ranges(&t.numeric),
        "space": ranges(&t.space),
        "decompose": entries(&mut t.decompose.iter().cloned()),
        "combining_class": classes,
        "compose": compose,
        "case_fold": entries(&mut t.case_fold.iter().map(|(c, s)| (*c, s.chars().collect()))),
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

/// The per-character tables with which a server computes content digests
/// itself (mod_corvid does, so that a stranger's message waits for no
/// round trip): see [`corvid_protocol::digest::CharTables`] and
/// [`digest_tables_json`].
async fn digest_tables(State(s): State<Arc<ApiState>>) -> ApiResult<Response> {
    let body = s
        .digest_tables
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(|| axum::body::Bytes::from(digest_tables_json()))
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("digest tables: {e}"),
                    )
                })
        })
        .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.clone(),
    )
        .into_response())
}

/// One page of the snapshot a consumer of the decision stream starts from:
/// every JID and domain subject whose action is `flag` or `block`, or that
/// is on a local list, after `after`; and the stream's cursor to continue
/// from (read before the page, so nothing decided meanwhile is missed).
async fn mirror(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let limit: usize = params
        .get("limit")
        .map_or(Ok(5000), |v| v.parse())
        .map_err(|_| ApiError::bad("limit must be a number"))?;
    let limit = limit.clamp(1, 50_000);
    let after = params.get("after").cloned();
    let store = s.engine.store().clone();
    let (cursor, page) =
        tokio::task::spawn_blocking(move || -> Result<_, crate::store::StoreError> {
            let cursor = store.decision_seq()?;
            let page =
                store.decided_after(after.as_deref(), &["jid", "domain", "digest"], limit)?;
            Ok((cursor, page))
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("mirror: {e}")))??;
    let next = (page.len() >= limit).then(|| page.last().map(|(subject, _)| subject.clone()));
    let entries: Vec<Value> = page
        .iter()
        .map(|(subject, last)| {
            json!({"subject": subject, "action": last.action, "origin": last.origin,
                   "score": f64::from(last.percent) / 100.0, "category": last.category})
        })
        .collect();
    s.saw_consumer(&headers, cursor);
    Ok(Json(json!({
        "entries": entries,
        "after": next.flatten(),
        "cursor": cursor,
        "peers": peer_hosts(&s),
        "brake": s.brake().on,
    })))
}

/// The trusted peers' domains and their feed services' domains: a server
/// never refuses their s2s streams, whatever their verdicts.
fn peer_hosts(s: &ApiState) -> Vec<String> {
    let settings = s.engine.settings();
    let mut hosts: Vec<String> = settings
        .peers
        .values()
        .flat_map(|p| {
            let service = p
                .feed
                .service
                .rsplit('@')
                .next()
                .unwrap_or_default()
                .to_owned();
            [p.domain.clone(), service]
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

async fn healthz(State(s): State<Arc<ApiState>>) -> Json<Value> {
    let (xmpp, error) = match s.link.state() {
        LinkState::Online { .. } => ("online", None),
        LinkState::Connecting { last_error } => ("connecting", last_error),
    };
    let mut warnings = Vec::new();
    let offset = s.clock_offset.load(Ordering::Relaxed);
    let measured = s.clock_measured.load(Ordering::Relaxed);
    let skew = s.engine.settings().skew;
    if measured && offset.unsigned_abs() > skew / 2 {
        warnings.push(format!(
            "local clock differs from the XMPP server's by {offset} s (XEP-0202); peers reject reports more than {skew} s in the future: fix NTP"
        ));
    }
    if let Some(e) = &error {
        warnings.push(format!("XMPP: {e}"));
    }
    if let Some(e) = s.engine.publish_error() {
        warnings.push(e);
    }
    Json(json!({
        "status": if warnings.is_empty() && xmpp == "online" { "ok" } else { "degraded" },
        "xmpp": xmpp,
        "clock_offset_secs": if measured { json!(offset) } else { Value::Null },
        // While "warming" (after a start or a reload), lookups of subjects
        // not yet published read the store: correct, but slower.
        "verdicts": if s.engine.shared().published.is_complete() { "published" } else { "warming" },
        "warnings": warnings,
    }))
}

async fn metrics(State(s): State<Arc<ApiState>>) -> ApiResult<Response> {
    s.engine
        .metrics
        .set_stored(s.engine.store().contribution_count() as u64);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        s.engine.metrics.render(),
    )
        .into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see the README's hook API section",
    )
}

/// The router.
pub fn router(state: Arc<ApiState>, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/verdict", get(verdict))
        .route("/v1/verdicts", post(verdicts))
        .route("/v1/explain", get(explain))
        .route("/v1/reports", post(report))
        .route("/v1/reports/{subject}", delete(retract))
        .route("/v1/decisions/stream", get(decisions))
        .route("/v1/mirror", get(mirror))
        .route("/v1/digest", post(digest))
        .route("/v1/digest/tables", get(digest_tables))
        .route("/v1/signals", post(signal))
        .merge(crate::admin::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            guard,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Parses a subject for admin routes.
///
/// # Errors
/// 400 when it is not a subject.
pub fn subject_param(text: &str) -> Result<corvid_protocol::subject::SubjectKey, ApiError> {
    parse_subject(text).map_err(|e| ApiError::bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_are_5xx_and_bad_reports_400() {
        let io = Box::new(std::io::Error::other("No space left on device"));
        let e: ApiError = anyhow::Error::from(StoreError::Io(io))
            .context("storing own record")
            .into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let e: ApiError = StoreError::Corrupt("bad record".into()).into();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        let e: ApiError = SubmitError::Failed(anyhow::Error::from(StoreError::Io(Box::new(
            std::io::Error::other("EIO"),
        ))))
        .into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE, "never a 400");
        let e: ApiError =
            SubmitError::Invalid("ttl must be between 1 second and 90 days".into()).into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn reads_take_the_read_token_and_the_rest_the_write_token() {
        assert_eq!(need_for(&Method::GET, "/healthz"), None);
        assert_eq!(need_for(&Method::GET, "/v1/verdict"), Some(Need::Read));
        assert_eq!(need_for(&Method::POST, "/v1/verdicts"), Some(Need::Read));
        assert_eq!(need_for(&Method::POST, "/v1/reports"), Some(Need::Write));
        assert_eq!(
            need_for(&Method::DELETE, "/v1/reports/x"),
            Some(Need::Write)
        );
        assert_eq!(need_for(&Method::PUT, "/v1/verdict"), Some(Need::Write));
    }
}
