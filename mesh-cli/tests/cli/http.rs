//! A small HTTP/1.1 client for the console tests (hyper, one connection per request): JSON
//! calls and a Server-Sent Events reader.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Sends one request to `base` + `path`; returns the status and the body as JSON (`Null` when
/// it is not JSON).
pub async fn call(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let (status, text) = call_text(method, base, path, token, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Like [`call`], with the body as text.
pub async fn call_text(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let response = send(method, base, path, token, body).await;
    let status = response.status().as_u16();
    let bytes = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
        .await
        .expect("the answer in time")
        .expect("a body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Sends a request and returns the response with its body still to read.
pub async fn send(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> hyper::Response<Incoming> {
    let authority = base.trim_start_matches("http://").trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .unwrap_or_else(|e| panic!("connect to {authority}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .expect("request");
    tokio::time::timeout(Duration::from_secs(60), sender.send_request(request))
        .await
        .expect("an answer in time")
        .expect("an answer")
}

/// A live Server-Sent Events stream.
pub struct Sse {
    body: Incoming,
    buf: String,
}

impl Sse {
    pub async fn open(base: &str, path: &str, token: Option<&str>) -> (u16, Sse) {
        let response = send("GET", base, path, token, None).await;
        let status = response.status().as_u16();
        (
            status,
            Sse {
                body: response.into_body(),
                buf: String::new(),
            },
        )
    }

    /// The next event (name, data), or a panic after `within`.
    pub async fn next(&mut self, within: Duration) -> (String, String) {
        tokio::time::timeout(within, async {
            loop {
                if let Some(cut) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..cut + 2).collect();
                    let mut name = String::from("message");
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            name = v.trim().to_string();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim());
                        }
                    }
                    if data.is_empty() && name == "message" {
                        continue; // a keep-alive comment
                    }
                    return (name, data);
                }
                let frame = self
                    .body
                    .frame()
                    .await
                    .expect("the stream is open")
                    .expect("a frame");
                if let Ok(data) = frame.into_data() {
                    self.buf.push_str(&String::from_utf8_lossy(&data));
                }
            }
        })
        .await
        .expect("an event in time")
    }

    /// Reads events until one named `name` whose data satisfies `pred`.
    pub async fn until(
        &mut self,
        name: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (n, data) = self.next(left).await;
            if n == name {
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if pred(&v) {
                    return v;
                }
            }
        }
    }
}
