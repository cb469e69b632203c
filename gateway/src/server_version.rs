//! Which nats-server releases the mesh supports, and the warning a gateway logs at start on
//! one it should not run on.
//!
//! - Below 2.11.0 the mesh does not work (consumer pause, per-key TTL, priority groups).
//! - Below 2.11.1 any user with `$JS.>` rights could purge other accounts (CVE-2025-30215);
//!   the gateway and the operator hold `$JS.API.>`.
//! - 2.11.11 is the oldest release the test suite runs against in CI: the supported floor.
//! - The March 2026 advisories (panics on malformed permission templates and WebSocket or
//!   leafnode input, JS API paged offset validation) are fixed in 2.11.15 and 2.12.6; 2.13 and
//!   later have the fixes. Releases between the floor and those get a milder warning.

use std::fmt;

/// The oldest release the mesh is tested against and supports.
pub const FLOOR: Version = Version(2, 11, 11);

/// A `major.minor.patch` release number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Reads `2.11.11`, `v2.15.1` or `2.12.0-RC.3` (a pre-release counts as its release).
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim().trim_start_matches('v');
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        Some(Version(
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// What the gateway should say about the server it connected to.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Supported, with every known advisory fixed.
    Ok,
    /// Below the floor: untested, and below 2.11.1 open to CVE-2025-30215.
    Unsupported(String),
    /// Supported, but missing the fixes of the 2026 advisories.
    Advisories(String),
    /// The server's version string could not be read.
    Unknown(String),
}

/// Judges the version string a server reports.
pub fn judge(reported: &str) -> Verdict {
    let Some(v) = Version::parse(reported) else {
        return Verdict::Unknown(format!(
            "nats-server reports version {reported:?}, which this gateway cannot read; the mesh \
             supports {FLOOR} and later"
        ));
    };
    if v < FLOOR {
        let cve = if v < Version(2, 11, 1) {
            " and is open to CVE-2025-30215 (any user with $JS rights can purge other accounts)"
        } else {
            ""
        };
        return Verdict::Unsupported(format!(
            "nats-server {v} is older than {FLOOR}, the oldest release Agent Mesh supports{cve}; \
             upgrade the server"
        ));
    }
    let patched = match (v.0, v.1) {
        (2, 11) => Some(Version(2, 11, 15)),
        (2, 12) => Some(Version(2, 12, 6)),
        _ => None,
    };
    match patched {
        Some(fixed) if v < fixed => Verdict::Advisories(format!(
            "nats-server {v} lacks the fixes of the 2026 security advisories (fixed in {fixed}); \
             upgrade when you can"
        )),
        _ => Verdict::Ok,
    }
}

/// Logs the verdict on the server `client` is connected to.
pub fn warn_if_needed(client: &async_nats::Client) {
    let reported = client.server_info().version;
    match judge(&reported) {
        Verdict::Ok => tracing::debug!(server = %reported, "nats-server version supported"),
        Verdict::Unsupported(why) => tracing::error!(server = %reported, "{why}"),
        Verdict::Advisories(why) | Verdict::Unknown(why) => {
            tracing::warn!(server = %reported, "{why}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse("2.11.11"), Some(Version(2, 11, 11)));
        assert_eq!(Version::parse("v2.15.1"), Some(Version(2, 15, 1)));
        assert_eq!(Version::parse("2.12.0-RC.3"), Some(Version(2, 12, 0)));
        assert_eq!(Version::parse("nonsense"), None);
        assert!(Version(2, 9, 10) < Version(2, 11, 0));
        assert!(Version(2, 11, 15) < Version(2, 12, 0));
    }

    #[test]
    fn the_floor_and_the_advisories() {
        assert!(matches!(judge("2.9.10"), Verdict::Unsupported(w) if w.contains("CVE-2025-30215")));
        assert!(matches!(judge("2.11.5"), Verdict::Unsupported(w) if !w.contains("CVE")));
        assert!(matches!(judge("2.11.11"), Verdict::Advisories(_)));
        assert_eq!(judge("2.11.15"), Verdict::Ok);
        assert!(matches!(judge("2.12.5"), Verdict::Advisories(w) if w.contains("2.12.6")));
        assert_eq!(judge("2.12.6"), Verdict::Ok);
        assert_eq!(judge("2.15.1"), Verdict::Ok);
        assert!(matches!(judge("?"), Verdict::Unknown(_)));
    }
}
