//! The hook API against hostile neighbours: floods, half-sent requests,
//! the connection cap, authentication before the body, JSON errors.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corvid_tests::http::request;
use corvid_tests::node::{Identity, Node};
use corvid_tests::prosody::{Prosody, ProsodyOptions};
use serde_json::Value;

/// Sends raw bytes, reads one response: `(status, headers, body)`.
fn raw(addr: &str, text: &str) -> (u16, String, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(text.as_bytes()).expect("write");
    read_response(&mut BufReader::new(s))
}

/// Reads one response from a keep-alive connection.
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, String, Value) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).expect("read head") == 0 {
            break;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("read body");
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, head, body)
}

fn node(prosody: &Prosody, api: &str) -> Node {
    Node::start(prosody, &Identity::new("b.test"), api)
}

#[test]
fn a_flood_from_other_callers_never_throttles_the_hooks_token() {
    crate::init();
    let prosody = Prosody::start(&["b.test"], &["corvidd@b.test"], ProsodyOptions::default());
    let b = node(
        &prosody,
        "api.rate_limit_per_sec = 100\napi.failed_auth_per_sec = 50",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (throttled, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut flooders = Vec::new();
    for i in 0..4 {
        let (api, write) = (b.api.clone(), b.write.clone());
        let (stop, throttled, answered) = (
            Arc::clone(&stop),
            Arc::clone(&throttled),
            Arc::clone(&answered),
        );
        flooders.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Half the flooders have no token, half hold the write token
                // (another local tool of the operator's gone wild).
                let token = (i % 2 == 1).then_some(write.as_str());
                let r = request(&api, "GET", "/v1/verdict?jid=x%40y.example", token, None);
                answered.fetch_add(1, Ordering::Relaxed);
                if r.status == 429 {
                    throttled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(b.get("/v1/verdict?jid=hook%40y.example").status);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().expect("flooder");
    }
    let (throttled, answered) = (
        throttled.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
    );
    eprintln!("flood: {answered} requests, {throttled} answered 429; hook: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every hook lookup must succeed during the flood: {statuses:?}"
    );
    assert!(
        throttled > 0,
        "the flood ({answered} requests) must itself be throttled"
    );
    assert!(
        b.counter("corvid_api_rejected_total", &["rate-limited"]) > 0,
        "{}",
        b.metrics()
    );
    assert!(b.counter("corvid_api_rejected_total", &["unauthenticated"]) > 0);
}

#[test]
fn half_sent_connections_up_to_the_cap_do_not_lock_the_hooks_out() {
    crate::init();
    let prosody = Prosody::start(&["b.test"], &["corvidd@b.test"], ProsodyOptions::default());
    let cap = 32;
    let b = node(
        &prosody,
        &format!(
            "api.max_connections = {cap}\napi.reserved_connections = 4\napi.header_timeout_secs = 4"
        ),
    );
    // An authenticated keep-alive connection, opened first: the oldest, but
    // proven, so never evicted.
    let mut hook = TcpStream::connect(&b.api).expect("connect");
    hook.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let lookup = format!(
        "GET /v1/verdict?jid=hook%40y.example HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        b.read
    );
    hook.write_all(lookup.as_bytes()).expect("write");
    let mut hook = BufReader::new(hook);
    assert_eq!(read_response(&mut hook).0, 200);

    // Cap-many connections that send half a request and stall.
    let mut stalled = Vec::new();
    for _ in 0..cap {
        let mut s = TcpStream::connect(&b.api).expect("connect");
        s.write_all(b"GET /v1/verdict?jid=a%40b.example HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        stalled.push(s);
    }
    let started = Instant::now();
    for _ in 0..20 {
        let r = b.get("/v1/verdict?jid=hook%40y.example");
        assert_eq!(r.status, 200, "{}", r.text);
    }
    hook.get_mut().write_all(lookup.as_bytes()).expect("write");
    assert_eq!(
        read_response(&mut hook).0,
        200,
        "the proven keep-alive connection survives"
    );
    eprintln!(
        "20 lookups beside {cap} stalled connections in {:?}",
        started.elapsed()
    );
    // 32 stalled connections fit 28 unproven slots (4 are reserved): 4
    // were evicted as they came, and the first lookup evicted one more
    // (each lookup then proved itself, and closing freed its slot; a slot
    // freed a moment late can cost one more).
    assert!(
        b.counter("corvid_api_connections_evicted_total", &[]) >= 5,
        "{}",
        b.metrics()
    );
    // A stalled connection that was not evicted is closed by the header
    // timeout.
    let mut last = stalled.pop().expect("one");
    last.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = last.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the header timeout (4 s) closes a half-sent request, took {:?}",
        t.elapsed()
    );
}

#[test]
fn authentication_comes_before_the_body_and_every_error_is_json() {
    crate::init();
    let prosody = Prosody::start(&["b.test"], &["corvidd@b.test"], ProsodyOptions::default());
    let b = node(&prosody, "");
    let post = |token: Option<&str>, ctype: Option<&str>, body: &str| {
        let mut t = format!(
            "POST /v1/reports HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(c) = ctype {
            t.push_str(&format!("Content-Type: {c}\r\n"));
        }
        if let Some(tok) = token {
            t.push_str(&format!("Authorization: Bearer {tok}\r\n"));
        }
        t.push_str("\r\n");
        t.push_str(body);
        raw(&b.api, &t)
    };
    // No token: 401 whatever the body, and the connection is closed.
    let (status, head, body) = post(None, Some("application/json"), "{not json");
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let (status, _, body) = post(Some(&b.read), Some("application/json"), "{not json");
    assert_eq!(status, 403, "{body}");
    // Authenticated: axum's own rejections, as JSON.
    let (status, _, body) = post(Some(&b.write), Some("application/json"), "{not json");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    let (status, _, body) = post(Some(&b.write), None, "{}");
    assert_eq!(status, 415, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("Content-Type")),
        "{body}"
    );
    let (status, _, body) = post(
        Some(&b.write),
        Some("application/json"),
        r#"{"subject": 5}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, head, body) = raw(
        &b.api,
        &format!(
            "PUT /v1/verdict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\nAuthorization: Bearer {}\r\n\r\n",
            b.write
        ),
    );
    assert_eq!(status, 405, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not allowed")),
        "{body}"
    );
    assert!(head.to_ascii_lowercase().contains("allow:"), "{head}");
    let r = request(&b.api, "GET", "/no/such/endpoint", Some(&b.read), None);
    assert_eq!(r.status, 404);
    assert!(r.json["error"].is_string(), "{}", r.text);
    // Health needs no token.
    let r = request(&b.api, "GET", "/healthz", None, None);
    assert_eq!(r.status, 200, "{}", r.text);
}

/// The snapshot and the change stream a server's module keeps its copy
/// with: a long-polled request answers as soon as a decision is recorded,
/// the snapshot pages hold what is flagged or blocked, and a cursor ahead
/// of the stream is answered at once.
#[test]
fn the_decision_stream_wakes_a_waiting_consumer_and_the_snapshot_pages() {
    super::init();
    let p = Prosody::start(&["a.test"], &["corvidd@a.test"], ProsodyOptions::default());
    let n = node(&p, "");
    for i in 0..3 {
        n.report(&format!("early{i}@spam.example"), "spam", 90);
    }
    let first = n.get("/v1/mirror?limit=2");
    assert_eq!(first.status, 200, "{}", first.text);
    let cursor = first.json["cursor"].as_u64().expect("cursor");
    assert_eq!(first.json["entries"].as_array().map(Vec::len), Some(2));
    let after = first.json["after"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let second = n.get(&format!(
        "/v1/mirror?limit=2&after={}",
        after.replace(':', "%3A")
    ));
    assert_eq!(second.json["entries"].as_array().map(Vec::len), Some(1));
    assert!(second.json["after"].is_null(), "{}", second.text);
    assert_eq!(second.json["entries"][0]["action"], "block");
    assert_eq!(second.json["entries"][0]["origin"], "federation");

    // A consumer waiting at the cursor is answered when the next decision
    // is recorded, not when its wait runs out.
    let waiting = {
        let api = n.api.clone();
        let read = n.read.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = request(
                &api,
                "GET",
                &format!("/v1/decisions/stream?since={cursor}&wait=20"),
                Some(&read),
                None,
            );
            (t.elapsed(), r)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    n.report("late@spam.example", "spam", 90);
    let (took, r) = waiting.join().expect("waiter");
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        took < Duration::from_secs(5),
        "answered after {took:?}: {}",
        r.text
    );
    let decisions = r.json["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 1, "{}", r.text);
    assert_eq!(decisions[0]["action"], "block");
    assert_eq!(r.json["reset"], false);
    let next = r.json["next"].as_u64().expect("next");
    assert!(next > cursor);
    // Nothing new: a short wait ends empty at the same cursor.
    let idle = n.get(&format!("/v1/decisions/stream?since={next}&wait=1"));
    assert_eq!(idle.json["decisions"].as_array().map(Vec::len), Some(0));
    assert_eq!(idle.json["next"].as_u64(), Some(next));
}
