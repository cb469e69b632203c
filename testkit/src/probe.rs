//! Looking at a running server from outside: its ports file, its client port and its monitoring
//! endpoints (`/healthz`, `/jsz`).
//!
//! The monitoring client is a few lines of HTTP/1.0 over a `TcpStream`: the harness stays
//! synchronous and needs no HTTP crate for three GET requests on loopback.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// How long one probe may take; probes are retried until the caller's deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The ports a server listens on, as it reported them in its ports file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ports {
    /// Client connections (`nats://127.0.0.1:<client>`).
    pub client: u16,
    /// HTTP monitoring (`/healthz`, `/jsz`, ...).
    pub monitor: u16,
}

/// Reads `<dir>/<exe>_<pid>.ports`, which nats-server writes once all its listeners are up.
/// `None` until the file exists and parses (it may be caught half written).
pub(crate) fn read_ports_file(dir: &Path, pid: u32) -> Option<Ports> {
    let suffix = format!("_{pid}.ports");
    let entry = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    parse_ports(&text)
}

fn parse_ports(text: &str) -> Option<Ports> {
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let port_of = |key: &str| -> Option<u16> {
        let url = json.get(key)?.get(0)?.as_str()?;
        url.rsplit_once(':')?.1.trim_end_matches('/').parse().ok()
    };
    Some(Ports {
        client: port_of("nats")?,
        monitor: port_of("monitoring")?,
    })
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// True when something accepts TCP connections on `127.0.0.1:<port>`.
pub(crate) fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&loopback(port), PROBE_TIMEOUT).is_ok()
}

/// `GET <path>` on the monitoring port; returns the status code and the body.
pub(crate) fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&loopback(port), PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// True when `GET <path>` answers 200.
pub(crate) fn healthy(port: u16, path: &str) -> bool {
    matches!(http_get(port, path), Ok((200, _)))
}

/// What one server knows about the JetStream meta group (from `/jsz`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct MetaView {
    /// The meta leader's server name, if one is known.
    pub leader: Option<String>,
    /// The other members this server sees as current (only meaningful on the leader).
    pub current: Vec<String>,
}

/// The meta group as seen by the server with this monitoring port; `None` if it cannot say.
pub(crate) fn meta_view(monitor: u16) -> Option<MetaView> {
    let (status, body) = http_get(monitor, "/jsz").ok()?;
    if status != 200 {
        return None;
    }
    parse_meta_view(&body)
}

fn parse_meta_view(body: &str) -> Option<MetaView> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    let meta = json.get("meta_cluster")?;
    let leader = meta
        .get("leader")
        .and_then(|l| l.as_str())
        .filter(|l| !l.is_empty())
        .map(str::to_owned);
    let current = meta
        .get("replicas")
        .and_then(|r| r.as_array())
        .map(|replicas| {
            replicas
                .iter()
                .filter(|r| r.get("current").and_then(|c| c.as_bool()) == Some(true))
                .filter_map(|r| r.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some(MetaView { leader, current })
}

/// How many leaf-node connections the server with this monitoring port has (`/leafz`), either
/// way (as a hub or as a leaf); `None` if it cannot say.
pub(crate) fn leaf_count(monitor: u16) -> Option<usize> {
    let (status, body) = http_get(monitor, "/leafz").ok()?;
    if status != 200 {
        return None;
    }
    parse_leaf_count(&body)
}

fn parse_leaf_count(body: &str) -> Option<usize> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    json.get("leafnodes")?
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ports_file() {
        let text = r#"{"nats":["nats://127.0.0.1:41249"],"monitoring":["http://127.0.0.1:33917"],"cluster":["nats://127.0.0.1:16501"]}"#;
        assert_eq!(
            parse_ports(text),
            Some(Ports {
                client: 41249,
                monitor: 33917
            })
        );
        assert_eq!(parse_ports(r#"{"nats":["nats://127.0.0.1:4"#), None);
        assert_eq!(parse_ports(r#"{"nats":["nats://127.0.0.1:4222"]}"#), None);
    }

    #[test]
    fn parses_the_meta_view() {
        let jsz = r#"{"meta_cluster":{"name":"tk","leader":"n1","cluster_size":3,"replicas":[
            {"name":"n2","current":false,"active":0,"lag":2},
            {"name":"n3","current":true,"active":8734745}]}}"#;
        let view = parse_meta_view(jsz).expect("a meta view");
        assert_eq!(view.leader.as_deref(), Some("n1"));
        assert_eq!(view.current, vec!["n3".to_owned()]);
        let view = parse_meta_view(r#"{"meta_cluster":{"leader":""}}"#).expect("a meta view");
        assert_eq!(view, MetaView::default());
        assert_eq!(parse_meta_view(r#"{"streams":0}"#), None);
    }

    #[test]
    fn parses_the_leaf_count() {
        let leafz = r#"{"server_id":"N","now":"x","leafnodes":1,"leafs":[{"name":"leaf"}]}"#;
        assert_eq!(parse_leaf_count(leafz), Some(1));
        assert_eq!(parse_leaf_count(r#"{"leafnodes":0}"#), Some(0));
        assert_eq!(parse_leaf_count(r#"{"leafs":[]}"#), None);
    }
}
