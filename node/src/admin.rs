//! Admin endpoints the `corvid` CLI needs: peers and status.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use serde_json::{Value, json};

use crate::api::{ApiError, ApiState, authorize_read};

/// Admin routes.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new().route("/v1/peers", get(peers))
}

async fn peers(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&s, &headers)?;
    let settings = s.engine.settings();
    let mut out = Vec::new();
    for (domain, p) in &settings.peers {
        let state = s.engine.peer_state(domain)?;
        let rejected: Vec<Value> = s
            .engine
            .metrics
            .series("corvid_rejected_items_total")
            .into_iter()
            .filter(|(l, _)| l.contains(&format!("peer=\"{domain}\"")))
            .map(|(l, v)| json!({"labels": l, "count": v}))
            .collect();
        out.push(json!({
            "domain": domain,
            "feed": p.feed.to_string(),
            "key": p.key.to_string(),
            "fingerprint": p.key.fingerprint().to_string(),
            "weight": p.trust.weight,
            "mode": if s.engine.is_suspended(domain) { "observe (suspended: reported a canary)" } else if p.trust.mode == corvid_protocol::aggregate::Mode::Observe { "observe" } else { "enforce" },
            "last_sync": state.last_sync,
            "last_item": state.last_item,
            "records": state.records,
            "pending_rotation": state.pending_rotation,
            "suspended": state.suspended_for_canary,
            "rejected": rejected,
        }));
    }
    Ok(Json(json!({"peers": out})))
}
