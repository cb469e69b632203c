//! Header names of the contract, and the rules for the values the gateway reads.

/// The intent id chosen by the sender; JetStream deduplicates on it.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// Decimal USD attributed to an intent, counted against the sender's cost ceiling.
pub const MESH_COST: &str = "Mesh-Cost";
/// The intent id, on delivery (the sender's `Nats-Msg-Id`, or one the gateway assigned).
pub const MESH_INTENT_ID: &str = "Mesh-Intent-Id";
/// The sender, on delivery.
pub const MESH_FROM: &str = "Mesh-From";
/// The action, on delivery.
pub const MESH_ACTION: &str = "Mesh-Action";
/// Which delivery attempt this is, from 1, on delivery.
pub const MESH_ATTEMPT: &str = "Mesh-Attempt";
/// 400, 403 or 429, on a rejection notice.
pub const MESH_STATUS: &str = "Mesh-Status";
/// Why an intent was rejected, on a rejection notice.
pub const MESH_REASON: &str = "Mesh-Reason";
/// The instance that sent a heartbeat.
pub const MESH_INSTANCE: &str = "Mesh-Instance";
/// Cumulative cost reported by an instance, on a heartbeat.
pub const MESH_COST_TOTAL: &str = "Mesh-Cost-Total";

/// Marks an unpark marker (gateway-internal); its value is the inbox for the answer.
pub const MESH_UNPARK_REPLY: &str = "Mesh-Unpark-Reply";

/// Longest accepted `Nats-Msg-Id`, in bytes.
pub const MAX_MSG_ID_LEN: usize = 256;

/// Why a header value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header Mesh-Cost {0:?} is not a non-negative decimal number of USD (e.g. 0.25)")]
    BadCost(String),
    #[error("header Nats-Msg-Id is {0} bytes long; the limit is 256")]
    MsgIdTooLong(usize),
}

/// Parses a `Mesh-Cost` value: a finite, non-negative decimal.
pub fn parse_cost(value: &str) -> Result<f64, HeaderError> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(HeaderError::BadCost(value.to_string())),
    }
}

/// The intent id: the sender's `Nats-Msg-Id` when present, else one derived from the stream
/// sequence, so that every redelivery of one intent carries the same id.
pub fn intent_id(msg_id: Option<&str>, stream: &str, seq: u64) -> Result<String, HeaderError> {
    match msg_id {
        Some(id) if id.len() > MAX_MSG_ID_LEN => Err(HeaderError::MsgIdTooLong(id.len())),
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Ok(format!("{stream}-{seq}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_accepts_decimals_and_refuses_garbage() {
        assert_eq!(parse_cost("0.25"), Ok(0.25));
        assert_eq!(parse_cost(" 3 "), Ok(3.0));
        for bad in ["", "-1", "NaN", "inf", "1,5", "ten"] {
            assert!(
                matches!(parse_cost(bad), Err(HeaderError::BadCost(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn intent_id_prefers_msg_id_and_falls_back_to_sequence() {
        assert_eq!(intent_id(Some("abc"), "S", 7), Ok("abc".to_string()));
        assert_eq!(intent_id(None, "S", 7), Ok("S-7".to_string()));
        assert_eq!(intent_id(Some(""), "S", 7), Ok("S-7".to_string()));
        assert_eq!(
            intent_id(Some(&"x".repeat(300)), "S", 7),
            Err(HeaderError::MsgIdTooLong(300))
        );
    }
}
