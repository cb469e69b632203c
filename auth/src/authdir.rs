//! The auth directory: the keys that make identities, and the record of who holds credentials.
//!
//! ```text
//! <dir>/auth.json          public keys, subject prefix, version (no secrets)
//! <dir>/keys/*.nk          seeds of the operator, the two accounts and the agents' signing key (0600)
//! <dir>/agents.json        every agent credential issued: public key, when, expiry, revocation
//! <dir>/gateway.creds      the gateways' credentials
//! <dir>/operator.creds     mesh-cli's (the operator's) credentials
//! <dir>/system.creds       a system-account user, only for pushing account updates
//! <dir>/leaf.creds         the link of a region's leaf node to the hub
//! <dir>/nats-auth.conf     for nats-server: operator, system account, preloaded account JWTs
//! ```
//!
//! Whoever holds this directory can mint any identity: keep it with the operator (0700), never
//! on an agent's machine. Issuing an agent touches only this directory; revoking one re-signs
//! the mesh account with a revocation and pushes it to NATS (see [`crate::push`]).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};

use crate::error::AuthError;
use crate::{creds, jwt, mintable, permissions};

/// Format version of `auth.json`.
const VERSION: u32 = 1;
/// Name of the account the mesh lives in.
pub const MESH_ACCOUNT: &str = "MESH";
/// Name of the system account.
pub const SYSTEM_ACCOUNT: &str = "SYS";
/// Role of the scoped signing key that issues agents.
pub const AGENT_ROLE: &str = "agent";

/// What `auth.json` holds: public facts only.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthInfo {
    pub version: u32,
    /// The mesh's subject prefix the permissions are written for.
    pub prefix: String,
    pub operator_name: String,
    pub operator: String,
    pub system_account: String,
    pub mesh_account: String,
    pub agent_signer: String,
    pub created_at: i64,
}

/// One credential issued to an agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Issued {
    /// The user's public key (`U…`): what the server knows the connection as.
    pub public_key: String,
    /// Unix seconds.
    pub issued_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

/// `agents.json`: credentials by agent id.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub agents: BTreeMap<String, Vec<Issued>>,
}

/// A newly issued agent credential.
#[derive(Clone, Debug)]
pub struct NewCredential {
    pub agent: String,
    pub issued: Issued,
    /// The `.creds` file's text (secret).
    pub creds: String,
}

/// An opened auth directory.
#[derive(Debug)]
pub struct AuthDir {
    root: PathBuf,
    info: AuthInfo,
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl AuthDir {
    /// Creates the keys and the three trusted identities in `root` (created, or empty).
    pub fn init(root: &Path, prefix: &str) -> Result<AuthDir, AuthError> {
        mesh_schemas::Subjects::new(prefix.to_string())
            .map_err(|e| AuthError::BadId(format!("prefix {prefix:?}: {e}")))?;
        if root.join("auth.json").exists() {
            return Err(AuthError::AlreadyInitialised { path: root.into() });
        }
        fs::create_dir_all(root.join("keys")).map_err(AuthError::io("create", root))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(AuthError::io("restrict", root))?;
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let mesh = KeyPair::new_account();
        let signer = KeyPair::new_account();
        for (name, kp) in [
            ("operator", &operator),
            ("system-account", &system),
            ("mesh-account", &mesh),
            ("agent-signer", &signer),
        ] {
            let seed = kp.seed().map_err(|e| AuthError::Key(e.to_string()))?;
            write_secret(&root.join("keys").join(format!("{name}.nk")), &seed)?;
        }
        let info = AuthInfo {
            version: VERSION,
            prefix: prefix.to_string(),
            operator_name: "agent-mesh".to_string(),
            operator: operator.public_key(),
            system_account: system.public_key(),
            mesh_account: mesh.public_key(),
            agent_signer: signer.public_key(),
            created_at: now(),
        };
        let text = serde_json::to_string_pretty(&info).map_err(AuthError::encode)?;
        write_public(&root.join("auth.json"), &text)?;
        let dir = AuthDir {
            root: root.to_path_buf(),
            info,
        };
        dir.save_registry(&Registry::default())?;
        dir.write_trusted_creds()?;
        dir.leaf_creds()?;
        dir.write_server_include()?;
        Ok(dir)
    }

    /// Opens an existing auth directory.
    pub fn open(root: &Path) -> Result<AuthDir, AuthError> {
        let not = |why: String| AuthError::NotAnAuthDir {
            path: root.into(),
            why,
        };
        let text = fs::read_to_string(root.join("auth.json"))
            .map_err(|e| not(format!("no readable auth.json: {e}")))?;
        let info: AuthInfo =
            serde_json::from_str(&text).map_err(|e| not(format!("auth.json: {e}")))?;
        if info.version != VERSION {
            return Err(not(format!(
                "auth.json version {} (this mesh-cli reads {VERSION})",
                info.version
            )));
        }
        Ok(AuthDir {
            root: root.to_path_buf(),
            info,
        })
    }

    /// Opens `root` if it holds an auth directory, else creates one there.
    pub fn open_or_init(root: &Path, prefix: &str) -> Result<AuthDir, AuthError> {
        if root.join("auth.json").exists() {
            Self::open(root)
        } else {
            Self::init(root, prefix)
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn info(&self) -> &AuthInfo {
        &self.info
    }

    /// The gateways' credentials file.
    pub fn gateway_creds(&self) -> PathBuf {
        self.root.join("gateway.creds")
    }

    /// The operator's (mesh-cli's) credentials file.
    pub fn operator_creds(&self) -> PathBuf {
        self.root.join("operator.creds")
    }

    /// The credentials a region's leaf node links to the hub with, in the mesh account
    /// (written on first use, so older auth directories get them too). See
    /// [`permissions::leaf`] for why the link may carry anything of that account.
    pub fn leaf_creds(&self) -> Result<PathBuf, AuthError> {
        let path = self.root.join("leaf.creds");
        if !path.exists() {
            let user = KeyPair::new_user();
            let token = jwt::user(
                &self.key("mesh-account")?,
                &user.public_key(),
                "mesh-leaf",
                &permissions::leaf(),
                now(),
                None,
            )?;
            let seed = user.seed().map_err(|e| AuthError::Key(e.to_string()))?;
            write_secret(&path, &creds::format(&token, &seed))?;
        }
        Ok(path)
    }

    /// The system user's credentials file (account pushes only).
    pub fn system_creds(&self) -> PathBuf {
        self.root.join("system.creds")
    }

    /// The nats-server include file: operator, system account, account JWT preloads.
    pub fn server_include(&self) -> PathBuf {
        self.root.join("nats-auth.conf")
    }

    fn key(&self, name: &str) -> Result<KeyPair, AuthError> {
        let path = self.root.join("keys").join(format!("{name}.nk"));
        let seed = fs::read_to_string(&path).map_err(AuthError::io("read", &path))?;
        KeyPair::from_seed(seed.trim())
            .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))
    }

    /// The operator JWT.
    pub fn operator_jwt(&self) -> Result<String, AuthError> {
        jwt::operator(
            &self.key("operator")?,
            &self.info.operator_name,
            &self.info.system_account,
            self.info.created_at,
        )
    }

    /// The system account's JWT.
    pub fn system_account_jwt(&self) -> Result<String, AuthError> {
        let spec = jwt::AccountSpec {
            name: SYSTEM_ACCOUNT.into(),
            ..Default::default()
        };
        jwt::account(
            &self.key("operator")?,
            &self.info.system_account,
            &spec,
            self.info.created_at,
        )
    }

    /// The mesh account's JWT as of now: the agents' signing key with its template, and every
    /// revocation in the registry.
    pub fn mesh_account_jwt(&self) -> Result<String, AuthError> {
        let registry = self.registry()?;
        let revocations = registry
            .agents
            .values()
            .flatten()
            .filter_map(|i| i.revoked_at.map(|t| (i.public_key.clone(), t)))
            .collect();
        let spec = jwt::AccountSpec {
            name: MESH_ACCOUNT.into(),
            jetstream: true,
            scoped_signers: vec![(
                self.info.agent_signer.clone(),
                AGENT_ROLE.into(),
                permissions::agent_template(&self.info.prefix),
                "Agent Mesh agents: each may act only as itself".into(),
            )],
            revocations,
        };
        // Never older than the registry's last change: the server keeps the newest JWT.
        jwt::account(
            &self.key("operator")?,
            &self.info.mesh_account,
            &spec,
            now(),
        )
    }

    /// Issues credentials to agent `id`; the server needs no change to accept them.
    pub fn add_agent(&self, id: &str, expires_at: Option<i64>) -> Result<NewCredential, AuthError> {
        let agent = mintable::mintable(id)?;
        let signer = self.key("agent-signer")?;
        let user = KeyPair::new_user();
        let issued_at = now();
        let token = jwt::scoped_user(
            &signer,
            &self.info.mesh_account,
            &user.public_key(),
            agent.as_str(),
            issued_at,
            expires_at,
        )?;
        let seed = user.seed().map_err(|e| AuthError::Key(e.to_string()))?;
        let issued = Issued {
            public_key: user.public_key(),
            issued_at,
            expires_at,
            revoked_at: None,
        };
        self.update_registry(|r| {
            r.agents
                .entry(agent.to_string())
                .or_default()
                .push(issued.clone());
            Ok(())
        })?;
        Ok(NewCredential {
            agent: agent.to_string(),
            issued,
            creds: creds::format(&token, &seed),
        })
    }

    /// Marks every unrevoked credential of `id` revoked as of now and returns the new mesh
    /// account JWT to push. The server refuses those credentials once it has the JWT.
    pub fn revoke_agent(&self, id: &str) -> Result<(Vec<Issued>, String), AuthError> {
        self.revoke(id, None)
    }

    /// Like [`AuthDir::revoke_agent`], for one credential of `id` only (its user key `U…`):
    /// how to rotate without a gap.
    pub fn revoke_key(&self, id: &str, key: &str) -> Result<(Vec<Issued>, String), AuthError> {
        self.revoke(id, Some(key))
    }

    fn revoke(&self, id: &str, key: Option<&str>) -> Result<(Vec<Issued>, String), AuthError> {
        // Revocations are by user key: a later `add_agent` gets a new key and is not affected.
        let at = now();
        let mut revoked = Vec::new();
        self.update_registry(|r| {
            let list = r
                .agents
                .get_mut(id)
                .ok_or_else(|| AuthError::UnknownAgent(id.to_string()))?;
            if let Some(key) = key {
                if !list.iter().any(|i| i.public_key == key) {
                    return Err(AuthError::UnknownKey {
                        agent: id.to_string(),
                        key: key.to_string(),
                    });
                }
            }
            let chosen = |i: &Issued| key.is_none_or(|k| i.public_key == k);
            for i in list
                .iter_mut()
                .filter(|i| i.revoked_at.is_none() && chosen(i))
            {
                i.revoked_at = Some(at.max(i.issued_at));
                revoked.push(i.clone());
            }
            Ok(())
        })?;
        let account = self.mesh_account_jwt()?;
        self.write_server_include()?;
        Ok((revoked, account))
    }

    /// Every credential issued, by agent.
    pub fn registry(&self) -> Result<Registry, AuthError> {
        let path = self.root.join("agents.json");
        let text = fs::read_to_string(&path).map_err(AuthError::io("read", &path))?;
        serde_json::from_str(&text).map_err(|e| AuthError::NotAnAuthDir {
            path: self.root.clone(),
            why: format!("agents.json: {e}"),
        })
    }

    /// Read-modify-write of the registry under an exclusive lock, so two `agent add` at once
    /// lose neither.
    fn update_registry(
        &self,
        change: impl FnOnce(&mut Registry) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        let lock_path = self.root.join(".lock");
        let lock = File::create(&lock_path).map_err(AuthError::io("create", &lock_path))?;
        lock.lock().map_err(AuthError::io("lock", &lock_path))?;
        let mut registry = self.registry()?;
        change(&mut registry)?;
        self.save_registry(&registry)
    }

    fn save_registry(&self, registry: &Registry) -> Result<(), AuthError> {
        let text = serde_json::to_string_pretty(registry).map_err(AuthError::encode)?;
        write_public(&self.root.join("agents.json"), &text)
    }

    fn write_trusted_creds(&self) -> Result<(), AuthError> {
        let mesh = self.key("mesh-account")?;
        let system = self.key("system-account")?;
        let prefix = &self.info.prefix;
        for (file, name, perms, account) in [
            (
                "gateway.creds",
                "mesh-gateway",
                permissions::gateway(prefix),
                &mesh,
            ),
            (
                "operator.creds",
                "mesh-operator",
                permissions::operator(prefix),
                &mesh,
            ),
            (
                "system.creds",
                "mesh-system",
                permissions::system(),
                &system,
            ),
        ] {
            let user = KeyPair::new_user();
            let token = jwt::user(account, &user.public_key(), name, &perms, now(), None)?;
            let seed = user.seed().map_err(|e| AuthError::Key(e.to_string()))?;
            write_secret(&self.root.join(file), &creds::format(&token, &seed))?;
        }
        Ok(())
    }

    /// Rewrites `nats-auth.conf` with the current account JWTs.
    pub fn write_server_include(&self) -> Result<(), AuthError> {
        let text = format!(
            "# Agent Mesh identity for nats-server, written by mesh-cli (`mesh-cli auth init`).\n\
             # Include it from the server config (the path is relative to that file) and add a\n\
             # resolver block, for example:\n\
             #   include \"nats-auth.conf\"\n\
             #   resolver {{ type: full, dir: \"./jwt\", allow_delete: false, interval: \"2m\" }}\n\
             {}",
            self.identity_conf()?
        );
        write_public(&self.server_include(), &text)
    }

    /// Operator, system account and the preloaded account JWTs, as nats-server config.
    fn identity_conf(&self) -> Result<String, AuthError> {
        Ok(format!(
            "operator: \"{operator}\"\n\
             system_account: {sys}\n\
             resolver_preload: {{\n  {sys}: \"{sys_jwt}\"\n  {mesh}: \"{mesh_jwt}\"\n}}\n",
            operator = self.operator_jwt()?,
            sys = self.info.system_account,
            sys_jwt = self.system_account_jwt()?,
            mesh = self.info.mesh_account,
            mesh_jwt = self.mesh_account_jwt()?,
        ))
    }

    /// A complete single-server config: this identity, a full resolver under `resolver_dir`,
    /// JetStream. Listen address, ports and store dir are left to the caller.
    pub fn server_config(&self, resolver_dir: &Path) -> Result<String, AuthError> {
        Ok(format!(
            "{}jetstream: enabled\n",
            self.region_server_config(resolver_dir)?
        ))
    }

    /// The config of a region's leaf node: the same identity and a full resolver of its own
    /// under `resolver_dir`, so agents authenticate at the leaf with their own credentials;
    /// no JetStream (the mesh's streams live in the hub). The caller adds the `leafnodes`
    /// remote with [`AuthDir::leaf_creds`].
    pub fn region_server_config(&self, resolver_dir: &Path) -> Result<String, AuthError> {
        Ok(format!(
            "{identity}\
             resolver {{ type: full, dir: \"{dir}\", allow_delete: false, interval: \"2m\", timeout: \"1.9s\" }}\n",
            identity = self.identity_conf()?,
            dir = resolver_dir.display(),
        ))
    }
}

fn write_secret(path: &Path, text: &str) -> Result<(), AuthError> {
    write_mode(path, text, 0o600)
}

fn write_public(path: &Path, text: &str) -> Result<(), AuthError> {
    write_mode(path, text, 0o644)
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_mode(path: &Path, text: &str, mode: u32) -> Result<(), AuthError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(AuthError::io("write", &tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(AuthError::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(AuthError::io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_keys_private_and_refuses_twice() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("auth");
        let dir = AuthDir::init(&root, "mesh").expect("init");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("keys/operator.nk")), 0o600);
        assert_eq!(mode(&dir.operator_creds()), 0o600);
        assert_eq!(mode(&root), 0o700);
        assert!(matches!(
            AuthDir::init(&root, "mesh"),
            Err(AuthError::AlreadyInitialised { .. })
        ));
        let again = AuthDir::open(&root).expect("open");
        assert_eq!(again.info(), dir.info());
        assert!(matches!(
            AuthDir::open(tmp.path()),
            Err(AuthError::NotAnAuthDir { .. })
        ));
    }

    #[test]
    fn agents_are_recorded_and_revoked_into_the_account() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = AuthDir::init(tmp.path(), "mesh").expect("init");
        let a = dir.add_agent("billing", None).expect("add");
        let b = dir
            .add_agent("billing", Some(now() + 60))
            .expect("add again");
        assert!(matches!(
            dir.add_agent("_mesh", None),
            Err(AuthError::BadId(_))
        ));
        let reg = dir.registry().expect("registry");
        assert_eq!(reg.agents["billing"].len(), 2);

        let (revoked, account) = dir.revoke_agent("billing").expect("revoke");
        assert_eq!(revoked.len(), 2);
        let claims = jwt::decode(&account).expect("decode");
        let revs = &claims.nats["revocations"];
        assert!(revs.get(&a.issued.public_key).is_some());
        assert!(revs.get(&b.issued.public_key).is_some());
        assert!(matches!(
            dir.revoke_agent("nobody"),
            Err(AuthError::UnknownAgent(_))
        ));
        let include = fs::read_to_string(dir.server_include()).expect("include");
        assert!(include.contains(&dir.info().mesh_account));
    }
}
