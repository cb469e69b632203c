//! TLS: a `tls://` URL with the CA and a client certificate gets in; without the client
//! certificate the server refuses, and the error says TLS.

use mesh_auth::connect::{ConnectError, NatsConnection};
use mesh_testkit::NatsServer;

use crate::pki::Pki;
use crate::{round_trip, TIMEOUT};

#[tokio::test]
async fn a_client_certificate_gets_in_and_none_is_refused() {
    let pki = Pki::generate();
    let server = NatsServer::start_with_conf(&pki.server_conf());
    let url = format!("tls://127.0.0.1:{}", server.port());

    let with_cert = NatsConnection {
        tls_ca: Some(pki.ca.clone()),
        tls_cert: Some(pki.client_cert.clone()),
        tls_key: Some(pki.client_key.clone()),
        ..NatsConnection::new(url.clone())
    };
    let client = with_cert
        .connect("tls-test", "_TLS_INBOX", TIMEOUT)
        .await
        .expect("connects with the client certificate");
    round_trip(&client, "_TLS_INBOX").await;

    // A nats:// URL: the TLS files alone turn TLS on.
    let plain_url = NatsConnection {
        url: format!("nats://localhost:{}", server.port()),
        ..with_cert.clone()
    };
    let client = plain_url
        .connect("tls-test", "_TLS_INBOX", TIMEOUT)
        .await
        .expect("connects over TLS with a nats:// URL and TLS files");
    round_trip(&client, "_TLS_INBOX").await;

    let without_cert = NatsConnection {
        tls_ca: Some(pki.ca.clone()),
        ..NatsConnection::new(url)
    };
    let err = without_cert
        .connect("tls-test", "_TLS_INBOX", TIMEOUT)
        .await
        .expect_err("refused without a client certificate");
    assert!(matches!(err, ConnectError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("nats_tls_cert"), "{err}");
}
