//! Encoding of the mesh's own records: MessagePack maps with field names on the wire, JSON
//! accepted on read (a record whose first byte is `{`), so that an operator can still write a
//! record by hand with `nats kv put` in an emergency.

use serde::{de::DeserializeOwned, Serialize};

/// A record that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("could not encode record: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("record is not valid MessagePack for this type: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("record is not valid JSON for this type: {0}")]
    Json(#[from] serde_json::Error),
    #[error("record is empty")]
    Empty,
    #[error("record is followed by {0} more bytes: it is damaged or not one record")]
    Trailing(usize),
}

/// Encodes a record as a MessagePack map with field names.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes a record from MessagePack, or from JSON when it starts with `{`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(CodecError::Empty),
        Some(b'{') => Ok(serde_json::from_slice(bytes)?),
        Some(_) => {
            // rmp_serde::from_slice stops at the end of the first value; bytes after it mean
            // the record is not what its writer wrote, and a kill flag read from such bytes
            // must fail closed rather than read as "active".
            let mut de = rmp_serde::Deserializer::new(bytes);
            let value = T::deserialize(&mut de)?;
            match de.get_ref().len() {
                0 => Ok(value),
                n => Err(CodecError::Trailing(n)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{KillRecord, KillState};

    #[test]
    fn round_trips_messagepack_and_reads_json() {
        let rec = KillRecord::killed("deployed 47 of 3", "ops@host");
        let back: KillRecord = decode(&encode(&rec).expect("encodes")).expect("decodes");
        assert_eq!(back, rec);
        let json = br#"{"state":"killed","reason":"by hand"}"#;
        let hand: KillRecord = decode(json).expect("json decodes");
        assert_eq!(hand.state, KillState::Killed);
        assert_eq!(hand.reason, "by hand");
    }

    #[test]
    fn garbage_is_an_error_not_a_default() {
        assert!(matches!(decode::<KillRecord>(b""), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<KillRecord>(b"\xc1\xff garbage"),
            Err(CodecError::Decode(_))
        ));
        assert!(matches!(
            decode::<KillRecord>(
                &[
                    encode(&KillRecord::active("", "")).expect("encodes"),
                    vec![0]
                ]
                .concat()
            ),
            Err(CodecError::Trailing(1))
        ));
        assert!(matches!(
            decode::<KillRecord>(b"{not json"),
            Err(CodecError::Json(_))
        ));
        assert!(matches!(
            decode::<KillRecord>(br#"{"state":"maybe"}"#),
            Err(CodecError::Json(_))
        ));
    }
}
