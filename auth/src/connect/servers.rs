//! The server list: a comma-separated `nats_url` split, trimmed and checked entry by entry, and
//! the redaction that keeps passwords and tokens in URLs out of every message.

use async_nats::ServerAddr;

use super::ConnectionError;

/// Splits `urls` on commas and parses every entry as a NATS server address: `nats://`,
/// `tls://`, `ws://`, `wss://`, or `host[:port]` without a scheme (`nats://` then, port 4222 by
/// default). Duplicates are kept: they are harmless, and the operator wrote them.
pub fn parse_servers(urls: &str) -> Result<Vec<ServerAddr>, ConnectionError> {
    if urls.trim().is_empty() {
        return Err(ConnectionError::NoUrl);
    }
    urls.split(',')
        .map(|entry| parse_one(entry.trim()))
        .collect()
}

fn parse_one(entry: &str) -> Result<ServerAddr, ConnectionError> {
    let bad = |problem: &str| ConnectionError::BadUrl {
        url: redact(entry),
        problem: problem.to_string(),
    };
    if entry.is_empty() {
        return Err(bad("is empty (two commas in a row, or one at an end?)"));
    }
    if entry.chars().any(char::is_whitespace) {
        return Err(bad("contains a space"));
    }
    let addr: ServerAddr = entry
        .parse()
        .map_err(|e: std::io::Error| bad(&e.to_string()))?;
    if addr.host().is_empty() {
        return Err(bad("has no host"));
    }
    Ok(addr)
}

/// The URL list with any password or token replaced by `***`, for messages and logs.
/// `user:password@` keeps the user; a lone `token@` is hidden whole.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            let (scheme, rest) = match url.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, url),
            };
            // The userinfo ends at the last `@` before the path.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let userinfo = &rest[..at];
                    let shown = match userinfo.split_once(':') {
                        Some((user, _)) => format!("{user}:***"),
                        None => "***".to_string(),
                    };
                    let scheme = scheme.map(|s| format!("{s}://")).unwrap_or_default();
                    format!("{scheme}{shown}{}", &rest[at..])
                }
                None => url.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether any entry asks for TLS by its scheme (`tls://` or `wss://`).
pub(super) fn wants_tls(servers: &[ServerAddr]) -> bool {
    servers
        .iter()
        .any(|s| s.tls_required() || s.scheme() == "wss")
}

/// Whether any entry carries a user or token in the URL itself.
pub(super) fn url_credentials(servers: &[ServerAddr]) -> bool {
    servers.iter().any(ServerAddr::has_user_pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("nats://127.0.0.1:1"), "nats://127.0.0.1:1");
        assert_eq!(redact("nats://u:secret@h:4222"), "nats://u:***@h:4222");
        assert_eq!(
            redact("nats://a:4222, tls://t0k3n@b:4222"),
            "nats://a:4222,tls://***@b:4222"
        );
        assert_eq!(redact("u:p@host:4222"), "u:***@host:4222");
        assert_eq!(redact("nats://u:p@ss@h:1"), "nats://u:***@h:1");
    }

    #[test]
    fn a_list_is_split_and_trimmed() {
        let servers =
            parse_servers(" nats://a:4222 ,tls://b:4223,c:4224, ws://d:80,wss://e:443 ,f")
                .expect("parses");
        let shown: Vec<(&str, &str, u16)> = servers
            .iter()
            .map(|s| (s.scheme(), s.host(), s.port()))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("nats", "a", 4222),
                ("tls", "b", 4223),
                ("nats", "c", 4224),
                ("ws", "d", 80),
                ("wss", "e", 443),
                ("nats", "f", 4222),
            ]
        );
        assert!(wants_tls(&servers));
        assert!(!wants_tls(&servers[..1]));
        // The same URL twice is a list of two.
        assert_eq!(
            parse_servers("nats://a:1,nats://a:1")
                .expect("parses")
                .len(),
            2
        );
    }

    #[test]
    fn bad_entries_are_named_without_their_password() {
        assert!(matches!(parse_servers(" "), Err(ConnectionError::NoUrl)));
        for (list, bad) in [
            ("nats://a:4222,", ""),
            ("nats://a:4222,,nats://b:1", ""),
            ("nats://a:notaport", "nats://a:notaport"),
            ("http://a:4222", "http://a:4222"),
            ("nats://u:secret@a:99999", "nats://u:***@a:99999"),
            ("nats://a :1", "nats://a :1"),
        ] {
            match parse_servers(list) {
                Err(ConnectionError::BadUrl { url, problem }) => {
                    assert_eq!(url, bad, "{list}: {problem}");
                    assert!(!problem.contains("secret"), "{problem}");
                }
                other => panic!("{list}: expected BadUrl, got {other:?}"),
            }
        }
    }
}
