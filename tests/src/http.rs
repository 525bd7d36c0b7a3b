//! A minimal HTTP/1.1 client for the hook API (one request per connection).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// A response: status and JSON (or text as a JSON string).
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body as JSON; non-JSON bodies become a JSON string.
    pub json: Value,
    /// Body text.
    pub text: String,
}

/// Sends one request.
///
/// # Panics
/// On IO errors (tests want the failure loud).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body_text = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body_text.len()
    );
    if body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body_text);
    stream.write_all(req.as_bytes()).expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    // A head that never ends is all head: its status, no body.
    let (status, body) = parse_response(&raw).unwrap_or_else(|| (status_of(&raw), Vec::new()));
    let body = String::from_utf8_lossy(&body).into_owned();
    let json = serde_json::from_str(&body).unwrap_or_else(|_| Value::String(body.clone()));
    Response {
        status,
        json,
        text: body,
    }
}

/// Percent-encodes a query value (the CLI's own function).
pub use corvid_api::client::enc;
use corvid_api::client::{parse_response, status_of};
