//! The `.creds` file format of nats-server tooling (nsc, the nats CLI, every client library):
//! the user JWT and its nkey seed in two armoured blocks.

use crate::error::AuthError;

/// A `.creds` file's text for `jwt` and `seed`.
pub fn format(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// The JWT and seed of a `.creds` file's text.
pub fn parse(text: &str) -> Result<(String, String), AuthError> {
    let block = |begin: &str| -> Result<String, AuthError> {
        let mut lines = text.lines().skip_while(|l| !l.contains(begin));
        lines.next();
        lines
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
            .ok_or_else(|| AuthError::Key(format!("no {begin} block in the credentials")))
    };
    Ok((
        block("BEGIN NATS USER JWT")?,
        block("BEGIN USER NKEY SEED")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file exactly as nsc and the nats CLI write it (nats-io/jwt `FormatUserConfig`).
    const GOLDEN: &str = "-----BEGIN NATS USER JWT-----
eyJ.abc.def
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
SUAXYZ
------END USER NKEY SEED------

*************************************************************
";

    #[test]
    fn the_file_has_the_shape_every_nats_tool_reads() {
        assert_eq!(format("eyJ.abc.def", "SUAXYZ"), GOLDEN);
    }

    #[test]
    fn round_trips() {
        let text = format("eyJ.abc.def", "SUAXYZ");
        assert_eq!(
            parse(&text).expect("parse"),
            ("eyJ.abc.def".into(), "SUAXYZ".into())
        );
        assert!(parse("nothing here").is_err());
    }
}
