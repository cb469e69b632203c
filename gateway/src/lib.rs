//! The Agent Mesh gateway: the chokepoint that delivers intents only while kill flags and policies allow.
