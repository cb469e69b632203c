//! Crashes: a gateway SIGKILLed mid-stream, a nats-server restarted mid-stream.
