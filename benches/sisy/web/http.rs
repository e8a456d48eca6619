//! A tiny HTTP/1.1 client for the web scenario: one GET per connection on loopback, the
//! status, the headers and the body (by Content-Length, chunked, or to the end), and the
//! wall time until the last byte. Nothing else: no TLS, no redirects, no keep-alive.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// (lower-case name, value) in the order received.
type Headers = Vec<(String, String)>;

pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// From before connecting until the body's last byte.
    pub wall: Duration,
}

impl Response {
    pub fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `dur` of the metric `metric` in the `Server-Timing` headers, in ms.
    pub fn server_timing(&self, metric: &str) -> Option<f64> {
        self.header("server-timing")
            .flat_map(|v| v.split(','))
            .find_map(|entry| {
                let mut parts = entry.split(';').map(str::trim);
                if parts.next()? != metric {
                    return None;
                }
                parts.find_map(|p| p.strip_prefix("dur=")?.trim_matches('"').parse().ok())
            })
    }
}

/// GET `path` from 127.0.0.1:`port`.
pub fn get(port: u16, path: &str, timeout: Duration) -> Result<Response> {
    let began = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/html,text/css,*/*\r\n\
         User-Agent: sisy-bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::with_capacity(64 * 1024);
    let mut buf = [0u8; 64 * 1024];
    // The status, the headers and where the body starts, once the head is in.
    let mut head: Option<(u16, Headers, usize)> = None;
    loop {
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("read the response to GET {path}"))?;
        raw.extend_from_slice(&buf[..n]);
        if head.is_none()
            && let Some(end) = find(&raw, b"\r\n\r\n")
        {
            let (status, headers) = parse_head(&raw[..end])?;
            head = Some((status, headers, end + 4));
        }
        if let Some((status, headers, start)) = &head
            && let Some(body) = body(headers, &raw[*start..], n == 0)?
        {
            return Ok(Response {
                status: *status,
                headers: headers.clone(),
                body,
                wall: began.elapsed(),
            });
        }
        if n == 0 {
            bail!(
                "GET {path}: the connection closed after {} bytes, before a complete response",
                raw.len()
            );
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Result<(u16, Headers)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// The body once `rest` holds all of it; `eof`: the server has closed the connection.
fn body(headers: &[(String, String)], rest: &[u8], eof: bool) -> Result<Option<Vec<u8>>> {
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if value("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return dechunk(rest);
    }
    if let Some(len) = value("content-length") {
        let len: usize = len
            .parse()
            .with_context(|| format!("Content-Length {len:?}"))?;
        return Ok((rest.len() >= len).then(|| rest[..len].to_vec()));
    }
    Ok(eof.then(|| rest.to_vec()))
}

/// A chunked body, or None while its last chunk has not arrived.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("chunk size {size_hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            // Then the trailers, if any, and an empty line.
            let done = rest.starts_with(b"\r\n") || find(rest, b"\r\n\r\n").is_some();
            return Ok(done.then_some(out));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}
