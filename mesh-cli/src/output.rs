//! Output: aligned tables and sentences for people, JSON for scripts (`--json`).
//!
//! Everything goes through [`Output`] so that a closed pipe surfaces as an error the binary
//! turns into exit 0, instead of a panic in `println!`. Notes meant for the operator while a
//! command runs (progress, "Ctrl-C to stop") go to stderr and never mix with the data.

use std::io::{self, Write};

use serde::Serialize;

/// Where a command's results go, and in which form.
pub struct Output {
    /// Whether scripts asked for JSON.
    json: bool,
    /// Standard output, or a buffer in tests.
    out: Box<dyn Write + Send>,
}

impl Output {
    /// Output to stdout.
    pub fn stdout(json: bool) -> Self {
        Output {
            json,
            out: Box::new(io::stdout()),
        }
    }

    /// Output to any writer (tests).
    pub fn to_writer(json: bool, out: Box<dyn Write + Send>) -> Self {
        Output { json, out }
    }

    /// Whether the output is JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// One JSON document, pretty-printed.
    pub fn json<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut self.out, value)?;
        writeln!(self.out)?;
        self.out.flush()
    }

    /// One JSON document on one line (for streams of events).
    pub fn json_line<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        writeln!(self.out)?;
        self.out.flush()
    }

    /// One line of text.
    pub fn line(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.out, "{text}")?;
        self.out.flush()
    }

    /// A table with a header row; columns padded to their widest cell, the last one not padded.
    pub fn table(&mut self, headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
        let text = render_table(headers, rows);
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }
}

/// A note for the operator on stderr (never part of the data).
pub fn note(text: &str) {
    let _ = writeln!(io::stderr(), "{text}");
}

/// Renders a table as text.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut text = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<pad$}  "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds, for people.
pub fn timestamp(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// How long ago `unix_ms` was, roughly, for people: `3s`, `2m 5s`.
pub fn age(now_unix_ms: u64, unix_ms: u64) -> String {
    let secs = now_unix_ms.saturating_sub(unix_ms) / 1000;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let text = render_table(
            &["AGENT", "STATE", "REASON"],
            &[
                vec![
                    "deployer".into(),
                    "killed".into(),
                    "deployed 47 of 3".into(),
                ],
                vec!["b".into(), "active".into(), "".into()],
            ],
        );
        assert_eq!(
            text,
            "AGENT     STATE   REASON\n\
             deployer  killed  deployed 47 of 3\n\
             b         active\n"
        );
    }

    #[test]
    fn times_for_people() {
        assert_eq!(timestamp(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(age(65_000, 0), "1m 5s");
        assert_eq!(age(0, 10), "0s");
    }
}
