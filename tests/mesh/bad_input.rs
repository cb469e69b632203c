//! Bad input: bad ids and subjects, malformed headers, oversized payloads, garbage kill records.
