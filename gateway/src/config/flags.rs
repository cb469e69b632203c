//! [`NatsFlags`]: the command-line flags of the NATS connection, the last configuration layer.
//! mesh-gateway and mesh-cli both flatten this struct into their flags, so a flag has the same
//! name, and the same config field and `MESH_*` variable behind it, in both.

use std::path::PathBuf;

use clap::Args;
use mesh_auth::connect::{NatsConnection, Secret};

/// Connection flags; each overrides the config file and the `MESH_*` variable of the same
/// name. Global, so mesh-cli takes them before or after its subcommand.
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
pub struct NatsFlags {
    /// NATS server URL(s), comma separated (nats://, tls://, ws://, wss:// or host:port); also
    /// MESH_NATS_URL.
    #[arg(long, global = true, value_name = "URLS")]
    pub nats_url: Option<String>,
    /// NATS credentials file (user JWT and seed); also MESH_NATS_CREDS.
    #[arg(long, global = true, value_name = "FILE", alias = "creds")]
    pub nats_creds: Option<PathBuf>,
    /// File holding a user nkey seed (SU...); also MESH_NATS_NKEY.
    #[arg(long, global = true, value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
    /// NATS user, with a password; also MESH_NATS_USER.
    #[arg(long, global = true, value_name = "USER")]
    pub nats_user: Option<String>,
    /// NATS password; prefer MESH_NATS_PASSWORD, since flags show in process lists.
    #[arg(long, global = true, value_name = "PASSWORD")]
    pub nats_password: Option<String>,
    /// NATS token; prefer MESH_NATS_TOKEN, since flags show in process lists.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub nats_token: Option<String>,
    /// PEM file of the CA of the server's certificate (turns TLS on); also MESH_NATS_TLS_CA.
    #[arg(long, global = true, value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate (turns TLS on); also MESH_NATS_TLS_CERT.
    #[arg(long, global = true, value_name = "FILE")]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate; also MESH_NATS_TLS_KEY.
    #[arg(long, global = true, value_name = "FILE")]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsFlags {
    /// Applies the flags that are given on top of `c`.
    pub fn apply(&self, c: &mut NatsConnection) {
        fn set<T: Clone>(slot: &mut Option<T>, flag: &Option<T>) {
            if let Some(v) = flag {
                *slot = Some(v.clone());
            }
        }
        if let Some(url) = &self.nats_url {
            c.url = url.clone();
        }
        set(&mut c.creds, &self.nats_creds);
        set(&mut c.nkey, &self.nats_nkey);
        set(&mut c.user, &self.nats_user);
        set(
            &mut c.password,
            &self.nats_password.as_deref().map(Secret::from),
        );
        set(&mut c.token, &self.nats_token.as_deref().map(Secret::from));
        set(&mut c.tls_ca, &self.nats_tls_ca);
        set(&mut c.tls_cert, &self.nats_tls_cert);
        set(&mut c.tls_key, &self.nats_tls_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        nats: NatsFlags,
    }

    #[test]
    fn flags_override_only_what_they_set() {
        let cli = Cli::try_parse_from([
            "t",
            "--nats-url",
            "nats://a:1,nats://b:2",
            "--creds",
            "/c.creds",
            "--nats-token",
            "tok",
            "--nats-tls-ca",
            "/ca.pem",
        ])
        .expect("parses");
        let mut c = NatsConnection {
            user: Some("kept".into()),
            ..NatsConnection::default()
        };
        cli.nats.apply(&mut c);
        assert_eq!(c.url, "nats://a:1,nats://b:2");
        assert_eq!(c.creds, Some(PathBuf::from("/c.creds")));
        assert_eq!(c.token, Some(Secret::new("tok")));
        assert_eq!(c.tls_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.user.as_deref(), Some("kept"));
        assert_eq!(c.tls_cert, None);
    }

    #[test]
    fn every_connection_field_has_its_flag() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for field in mesh_auth::connect::Field::ALL {
            let flag = field.flag();
            let long = flag.trim_start_matches("--");
            assert!(
                cmd.get_arguments().any(|a| a.get_long() == Some(long)),
                "{flag} missing"
            );
        }
    }
}
