//! Which agent ids may hold credentials.
//!
//! Stricter than an [`AgentId`]: the server expands the agents' permission template with the
//! user's name, so the name must be one plain subject token, and it must not start with `_`
//! (`_mesh` would grant the gateway's unpark markers, `mesh.intent._mesh.>`).

use mesh_schemas::AgentId;

use crate::error::AuthError;

/// Validates `id` for minting credentials.
pub fn mintable(id: &str) -> Result<AgentId, AuthError> {
    let agent = AgentId::new(id).map_err(|e| AuthError::BadId(e.to_string()))?;
    if id.starts_with('_') {
        return Err(AuthError::BadId(format!(
            "agent id {id:?} starts with '_', which is reserved for the mesh's own subjects; \
             start it with a letter, digit or '-'"
        )));
    }
    Ok(agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_dots_and_reserved_names_are_refused() {
        for bad in [
            "*",
            ">",
            "a.b",
            "_mesh",
            "_",
            "a b",
            "",
            "x*",
            &"a".repeat(65),
        ] {
            assert!(matches!(mintable(bad), Err(AuthError::BadId(_))), "{bad:?}");
        }
        for good in ["billing", "Deployer-2", "a_b", "-x", "0"] {
            assert_eq!(mintable(good).expect("valid").as_str(), good);
        }
    }
}
