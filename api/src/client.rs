//! Talking to the local corvidd: where it listens and which tokens to use
//! come from its own config file, so one `--config` is all the CLI needs.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, Listen, read_secret};
use anyhow::{Context, Result, anyhow};
use serde_json::Value;

/// Exit code: bad usage, a bad value or a config problem (the caller's to
/// fix).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: corvidd could not be reached.
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit code: the subject or peer does not exist.
pub const EXIT_NOT_FOUND: i32 = 4;

/// An error with a specific exit code and advice.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: i32,
    /// Message (with what to do next).
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The local node's API.
#[derive(Debug)]
pub struct Node {
    listen: Listen,
    read: String,
    write: String,
    config: std::path::PathBuf,
}

/// A response.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub json: Value,
}

impl Node {
    /// Reads where the node listens from its config.
    ///
    /// # Errors
    /// When the config or token files cannot be read.
    pub fn from_config(path: &Path) -> Result<Self> {
        let config = Config::parse_file(path).map_err(|e| {
            anyhow!(Failure {
                code: EXIT_USAGE,
                message: format!(
                    "cannot read corvidd's config {} (use --config FILE or set CORVID_CONFIG): {e:#}",
                    path.display()
                ),
            })
        })?;
        Ok(Self {
            listen: config.api.listen()?,
            read: read_secret(&config.api.read_token_file).context(
                "cannot read the API read token (run corvid as the corvid user, or with sudo)",
            )?,
            write: read_secret(&config.api.write_token_file).context(
                "cannot read the API write token (run corvid as the corvid user, or with sudo)",
            )?,
            config: path.to_owned(),
        })
    }

    /// Where corvidd's API listens, from its config.
    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    /// GET with the read token.
    ///
    /// # Errors
    /// When corvidd cannot be reached.
    pub fn get(&self, path: &str) -> Result<Reply> {
        self.request("GET", path, &self.read, None)
    }

    /// POST with the write token.
    ///
    /// # Errors
    /// When corvidd cannot be reached.
    pub fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.request("POST", path, &self.write, Some(body))
    }

    /// DELETE with the write token.
    ///
    /// # Errors
    /// When corvidd cannot be reached.
    pub fn delete(&self, path: &str) -> Result<Reply> {
        self.request("DELETE", path, &self.write, None)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<Reply> {
        let body_text = body.map(Value::to_string).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: corvidd\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n",
            body_text.len()
        );
        if body.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        req.push_str(&body_text);
        let unreachable = |e: std::io::Error| {
            anyhow!(Failure {
                code: EXIT_UNREACHABLE,
                message: format!(
                    "cannot reach corvidd at {} ({e}). Is corvidd running? Check `systemctl status corvidd`, and api.listen in {}.",
                    self.where_(),
                    self.config.display()
                ),
            })
        };
        let raw = match &self.listen {
            Listen::Tcp(addr) => {
                let mut s = std::net::TcpStream::connect_timeout(addr, Duration::from_secs(5))
                    .map_err(unreachable)?;
                s.set_read_timeout(Some(Duration::from_secs(120)))?;
                s.write_all(req.as_bytes()).map_err(unreachable)?;
                let mut raw = Vec::new();
                s.read_to_end(&mut raw).map_err(unreachable)?;
                raw
            }
            Listen::Unix(p) => {
                let mut s = std::os::unix::net::UnixStream::connect(p).map_err(unreachable)?;
                s.set_read_timeout(Some(Duration::from_secs(120)))?;
                s.write_all(req.as_bytes()).map_err(unreachable)?;
                let mut raw = Vec::new();
                s.read_to_end(&mut raw).map_err(unreachable)?;
                raw
            }
        };
        let (status, body) =
            parse_response(&raw).ok_or_else(|| anyhow!("corvidd sent a malformed HTTP reply"))?;
        let body = String::from_utf8_lossy(&body).into_owned();
        let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
        Ok(Reply { status, json })
    }

    fn where_(&self) -> String {
        match &self.listen {
            Listen::Tcp(a) => a.to_string(),
            Listen::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

/// The status and the decoded body of a whole HTTP/1.1 response, or `None`
/// when its head never ends. Split and decoded as bytes: chunk sizes count
/// bytes, and a body in UTF-8 (IDN domains, notes) may split a character
/// across chunks.
pub fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Some((status_of(&raw[..split]), body))
}

/// The status code of a response head (0 when it has none).
pub fn status_of(head: &[u8]) -> u16 {
    String::from_utf8_lossy(head)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Decodes a chunked body (RFC 9112 §7.1) as bytes; chunk extensions and
/// trailers are ignored. Stops at the last chunk or at malformed input.
pub fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = rest[..eol].split(|&b| b == b';').next().unwrap_or_default();
        let Some(n) = std::str::from_utf8(size)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
        else {
            break;
        };
        rest = &rest[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        rest = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

impl Reply {
    /// The body if the status is 2xx, else an error with the node's message.
    ///
    /// # Errors
    /// Non-2xx replies, 404 with [`EXIT_NOT_FOUND`].
    pub fn ok(self) -> Result<Value> {
        if (200..300).contains(&self.status) {
            return Ok(self.json);
        }
        let message = self.json["error"]
            .as_str()
            .map_or_else(|| self.json.to_string(), str::to_owned);
        // A request corvidd calls bad (a bad value, a subject that is not
        // one, a section the config lacks) is the caller's to fix.
        let code = match self.status {
            404 => EXIT_NOT_FOUND,
            400 | 413 | 422 => EXIT_USAGE,
            _ => 1,
        };
        let hint = match self.status {
            401 | 403 => " (check the token files named in the config)",
            429 => " (the API rate limit was hit; try again)",
            _ => "",
        };
        Err(anyhow!(Failure {
            code,
            message: format!("corvidd: {message}{hint}")
        }))
    }
}

/// Percent-encodes a path or query component.
pub fn enc(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunks_are_cut_by_bytes_not_characters() {
        // "faß" split inside the ß (0xC3 0x9F), and a chunk that starts
        // with CRLF, which is data, not a separator.
        let body = b"3\r\nfa\xC3\r\n1;ext=1\r\n\x9F\r\n4\r\n\r\nok\r\n0\r\n\r\n";
        assert_eq!(dechunk(body), "fa\u{df}\r\nok".as_bytes());
    }

    #[test]
    fn truncated_or_garbage_chunks_stop_without_panicking() {
        assert_eq!(dechunk(b"10\r\nshort"), b"");
        assert_eq!(dechunk(b"zz\r\nabc"), b"");
        assert_eq!(dechunk(b"2\r\nab\r\nff"), b"ab");
    }
}
