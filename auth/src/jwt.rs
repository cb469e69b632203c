//! NATS JWTs: the claims of operators, accounts and users, signed with nkeys.
//!
//! The format is small and stable (nats-io/jwt v2): a header `{"typ":"JWT","alg":"ed25519-nkey"}`,
//! the claims, and an ed25519 signature over `header.claims`, each part base64url without
//! padding. We write it here rather than depend on one of the young third-party JWT crates;
//! the tests check every kind against a real nats-server.

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha512_256};

use crate::error::AuthError;
use crate::permissions::Permissions;

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// The parts of a JWT's claims that the mesh reads back.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Claims {
    /// Unique id of this JWT (a hash of its claims).
    pub jti: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Public key of the signer.
    pub iss: String,
    /// Public key of the subject.
    pub sub: String,
    /// The subject's name (an agent's id for agents).
    #[serde(default)]
    pub name: String,
    /// Expiry, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// The NATS-specific part, kept whole.
    pub nats: Value,
}

/// Signs `claims` (without `jti`, which is derived here) with `signer`.
pub fn sign(mut claims: Map<String, Value>, signer: &KeyPair) -> Result<String, AuthError> {
    claims.remove("jti");
    let body = serde_json::to_vec(&claims).map_err(AuthError::encode)?;
    let jti = BASE32_NOPAD.encode(&Sha512_256::digest(&body));
    claims.insert("jti".into(), Value::String(jti));
    let body = serde_json::to_vec(&claims).map_err(AuthError::encode)?;
    let signing_input = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(HEADER.as_bytes()),
        BASE64URL_NOPAD.encode(&body)
    );
    let sig = signer
        .sign(signing_input.as_bytes())
        .map_err(|e| AuthError::Key(format!("cannot sign a JWT: {e}")))?;
    Ok(format!("{signing_input}.{}", BASE64URL_NOPAD.encode(&sig)))
}

/// Reads the claims of a JWT and checks its signature against its `iss`.
pub fn decode(token: &str) -> Result<Claims, AuthError> {
    let bad = |why: &str| AuthError::BadJwt(why.to_string());
    let mut parts = token.trim().split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not three dot-separated parts"));
    };
    let claims_bytes = BASE64URL_NOPAD
        .decode(c.as_bytes())
        .map_err(|_| bad("claims are not base64url"))?;
    let sig = BASE64URL_NOPAD
        .decode(s.as_bytes())
        .map_err(|_| bad("signature is not base64url"))?;
    let claims: Claims =
        serde_json::from_slice(&claims_bytes).map_err(|e| bad(&format!("claims: {e}")))?;
    let issuer = KeyPair::from_public_key(&claims.iss).map_err(|_| bad("issuer is no nkey"))?;
    issuer
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| bad("signature does not match the issuer"))?;
    Ok(claims)
}

fn base(iat: i64, iss: &str, sub: &str, name: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("iat".into(), json!(iat));
    m.insert("iss".into(), json!(iss));
    m.insert("sub".into(), json!(sub));
    m.insert("name".into(), json!(name));
    m
}

/// A self-signed operator JWT naming its system account.
pub fn operator(
    operator: &KeyPair,
    name: &str,
    system_account: &str,
    iat: i64,
) -> Result<String, AuthError> {
    let pk = operator.public_key();
    let mut m = base(iat, &pk, &pk, name);
    m.insert(
        "nats".into(),
        json!({"system_account": system_account, "type": "operator", "version": 2}),
    );
    sign(m, operator)
}

/// What an account JWT says beyond its keys.
#[derive(Clone, Debug, Default)]
pub struct AccountSpec {
    /// Account name.
    pub name: String,
    /// JetStream enabled with no limits (the mesh account), or off (the system account).
    pub jetstream: bool,
    /// Scoped signing keys: (public key, role, template, description).
    pub scoped_signers: Vec<(String, String, Permissions, String)>,
    /// Revoked user keys with the time (unix seconds) up to which their JWTs are revoked.
    pub revocations: Vec<(String, i64)>,
}

/// An account JWT signed by the operator.
pub fn account(
    operator: &KeyPair,
    account_pub: &str,
    spec: &AccountSpec,
    iat: i64,
) -> Result<String, AuthError> {
    let mut limits = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if spec.jetstream {
        for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[k] = json!(-1);
        }
    }
    let mut nats = json!({
        "limits": limits,
        "default_permissions": {"pub": {}, "sub": {}},
        "type": "account",
        "version": 2,
    });
    if !spec.scoped_signers.is_empty() {
        let keys: Vec<Value> = spec
            .scoped_signers
            .iter()
            .map(|(key, role, template, description)| {
                let mut t = template.to_json();
                // A template's limits apply to every user it signs: none.
                t["subs"] = json!(-1);
                t["data"] = json!(-1);
                t["payload"] = json!(-1);
                json!({"kind": "user_scope", "key": key, "role": role,
                       "template": t, "description": description})
            })
            .collect();
        nats["signing_keys"] = Value::Array(keys);
    }
    if !spec.revocations.is_empty() {
        let mut r = Map::new();
        for (k, t) in &spec.revocations {
            r.insert(k.clone(), json!(t));
        }
        nats["revocations"] = Value::Object(r);
    }
    let mut m = base(iat, &operator.public_key(), account_pub, &spec.name);
    m.insert("nats".into(), nats);
    sign(m, operator)
}

/// A user with explicit permissions, signed by its account's own key.
pub fn user(
    account: &KeyPair,
    user_pub: &str,
    name: &str,
    permissions: &Permissions,
    iat: i64,
    exp: Option<i64>,
) -> Result<String, AuthError> {
    let mut nats = permissions.to_json();
    nats["subs"] = json!(-1);
    nats["data"] = json!(-1);
    nats["payload"] = json!(-1);
    nats["type"] = json!("user");
    nats["version"] = json!(2);
    let mut m = base(iat, &account.public_key(), user_pub, name);
    if let Some(exp) = exp {
        m.insert("exp".into(), json!(exp));
    }
    m.insert("nats".into(), nats);
    sign(m, account)
}

/// A user signed by a scoped signing key: no permissions or limits of its own (the server
/// refuses a scoped user that has any); the key's template gives them, keyed on `name`.
pub fn scoped_user(
    signer: &KeyPair,
    account_pub: &str,
    user_pub: &str,
    name: &str,
    iat: i64,
    exp: Option<i64>,
) -> Result<String, AuthError> {
    let mut m = base(iat, &signer.public_key(), user_pub, name);
    if let Some(exp) = exp {
        m.insert("exp".into(), json!(exp));
    }
    m.insert(
        "nats".into(),
        json!({"issuer_account": account_pub, "type": "user", "version": 2}),
    );
    sign(m, signer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_decode_and_verify() {
        let op = KeyPair::new_operator();
        let sys = KeyPair::new_account();
        let token = operator(&op, "mesh", &sys.public_key(), 1_700_000_000).expect("sign");
        let claims = decode(&token).expect("decode");
        assert_eq!(claims.iss, op.public_key());
        assert_eq!(claims.sub, op.public_key());
        assert_eq!(claims.nats["type"], "operator");
        assert_eq!(claims.nats["system_account"], json!(sys.public_key()));
        assert_eq!(claims.jti.len(), 52, "base32 of a 32-byte hash");

        // A flipped bit in the claims breaks the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut claims_json = BASE64URL_NOPAD.decode(parts[1].as_bytes()).expect("b64");
        let at = claims_json.len() / 2;
        claims_json[at] ^= 1;
        parts[1] = BASE64URL_NOPAD.encode(&claims_json);
        assert!(matches!(
            decode(&parts.join(".")),
            Err(AuthError::BadJwt(_))
        ));
    }

    #[test]
    fn scoped_users_carry_no_permissions() {
        let signer = KeyPair::new_account();
        let acc = KeyPair::new_account();
        let user = KeyPair::new_user();
        let token = scoped_user(
            &signer,
            &acc.public_key(),
            &user.public_key(),
            "billing",
            1,
            None,
        )
        .expect("sign");
        let claims = decode(&token).expect("decode");
        let nats = claims.nats.as_object().expect("object");
        let mut keys: Vec<&str> = nats.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["issuer_account", "type", "version"]);
        assert_eq!(claims.name, "billing");
    }

    #[test]
    fn the_same_claims_get_the_same_id_and_others_another() {
        let op = KeyPair::new_operator();
        let a = decode(&operator(&op, "m", "A", 5).expect("sign")).expect("decode");
        let b = decode(&operator(&op, "m", "A", 5).expect("sign")).expect("decode");
        let c = decode(&operator(&op, "m", "A", 6).expect("sign")).expect("decode");
        assert_eq!(a.jti, b.jti);
        assert_ne!(a.jti, c.jti);
    }
}
