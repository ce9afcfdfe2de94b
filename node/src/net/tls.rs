//! libp2p's TLS 1.3 handshake (`/tls/1.0.0`, the libp2p TLS spec) with AES-GCM preferred.
//!
//! `libp2p::tls` implements the same handshake but fixes its cipher order with
//! ChaCha20-Poly1305 first (as noise has), which costs about 1 byte per ns of CPU on each side
//! of a transfer; AES-GCM runs on the CPU's AES instructions at several times that (ADR 0008,
//! "Transport"). This upgrade differs from `libp2p::tls` only in that order: AES-128-GCM,
//! AES-256-GCM, then ChaCha20-Poly1305 for peers without AES. Certificates are made and
//! checked by `libp2p::tls::certificate` (the self-signed certificate carrying the libp2p
//! public key extension), so a peer speaking libp2p's TLS, in any implementation, interoperates.
//!
//! The listener honours the dialer's order (rustls's default), so two hivemesh nodes use AES-GCM
//! and a peer that prefers ChaCha20 gets it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use futures_rustls::TlsStream;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::{Keypair, PeerId};
use libp2p::tls::certificate;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs::{self as provider, cipher_suite};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError,
    SignatureScheme,
};

/// The protocol name the libp2p TLS spec gives (the same as `libp2p::tls`'s).
pub const PROTOCOL: &str = "/tls/1.0.0";
/// The ALPN value the spec requires.
const ALPN: &[u8] = b"libp2p";

/// Why the TLS upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The node's certificate could not be made from its key.
    #[error("cannot make the node's TLS certificate: {0}")]
    Certificate(String),
    /// The handshake failed (I/O, a bad certificate or signature, no common cipher).
    #[error("TLS handshake: {0}")]
    Handshake(#[from] std::io::Error),
    /// The peer's certificate did not parse once the handshake was done.
    #[error("peer certificate: {0}")]
    Peer(String),
}

/// The security upgrade: the node's certificate in a client and a server configuration.
#[derive(Clone)]
pub struct Config {
    /// Answers dials (asks the dialer for its certificate).
    server: Arc<rustls::ServerConfig>,
    /// Dials (offers the node's certificate when asked).
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tls::Config")
    }
}

impl Config {
    /// The configuration for the node whose libp2p key is `key` (a fresh certificate for it).
    pub fn new(key: &Keypair) -> Result<Config, TlsError> {
        let err = |e: &dyn std::fmt::Display| TlsError::Certificate(e.to_string());
        let (cert, private) = certificate::generate(key).map_err(|e| err(&e))?;
        let provider = Arc::new(crypto_provider());
        let verifier = Arc::new(Verifier);
        // rustls's own `with_single_cert` would parse the certificate with webpki, which
        // refuses libp2p's critical extension: the key is handed over as it is.
        let signing = provider::sign::any_ecdsa_type(&private).map_err(|e| err(&e))?;
        let own = Arc::new(OwnCert(Arc::new(CertifiedKey::new(vec![cert], signing))));
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| err(&e))?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(own.clone());
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| err(&e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(own);
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Config {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// The node's certificate and key, the same for every handshake.
#[derive(Debug)]
struct OwnCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for OwnCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for OwnCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// aws-lc's provider with TLS 1.3's suites only, AES-GCM first.
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..provider::default_provider()
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(socket)
                .await?;
            let peer = peer_of(stream.get_ref().1)?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The spec: a client MUST NOT send a server name indication; an unspecified
            // address as the name makes rustls send none. The peer id the dialer meant is
            // checked by the swarm against the one returned here.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, socket)
                .await?;
            let peer = peer_of(stream.get_ref().1)?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

/// The peer id in the one certificate the peer presented (the verifier checked it already).
fn peer_of(state: &CommonState) -> Result<PeerId, TlsError> {
    match state.peer_certificates() {
        Some([cert]) => certificate::parse(cert)
            .map(|c| c.peer_id())
            .map_err(|e| TlsError::Peer(e.to_string())),
        _ => Err(TlsError::Peer("not exactly one certificate".into())),
    }
}

/// Checks a peer's certificate the way the spec asks, for either side: exactly one, self-signed,
/// carrying a valid signature of its key by the peer's libp2p key; handshake signatures by it.
#[derive(Debug)]
struct Verifier;

/// The signature schemes a peer's certificate key may use (libp2p's TLS list, most preferred
/// first).
const SCHEMES: [SignatureScheme; 9] = [
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// A certificate error rustls reports to the peer as a bad certificate.
fn bad_certificate(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl Verifier {
    /// The presented chain: exactly one certificate that parses and verifies as libp2p's.
    fn check_chain(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "libp2p TLS requires exactly one certificate".into(),
            ));
        }
        certificate::parse(end_entity).map_err(bad_certificate)?;
        Ok(())
    }

    /// A TLS 1.3 handshake signature made with the certificate's key.
    fn check_signature(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        certificate::parse(cert)
            .map_err(bad_certificate)?
            .verify_signature(dss.scheme, message, dss.signature())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }
}

/// TLS 1.2 is never offered nor accepted (the configurations name TLS 1.3 only).
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("libp2p TLS is TLS 1.3 only".into()))
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Verifier::check_chain(end_entity, intermediates).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Verifier::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Verifier::check_chain(end_entity, intermediates).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Verifier::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::tcp::tokio::TcpStream;
    use rustls::SupportedCipherSuite;

    /// Two ends of a loopback TCP connection.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (TcpStream(dialed.unwrap()), TcpStream(accepted.unwrap().0))
    }

    /// The suite a finished handshake uses.
    fn suite(s: &TlsStream<TcpStream>) -> SupportedCipherSuite {
        s.get_ref()
            .1
            .negotiated_cipher_suite()
            .expect("handshake done")
    }

    /// Dials with `D` and listens with `L`; both must see the other's peer id. Returns the
    /// dialer's stream.
    async fn handshake<D, L>(dialer: (D, &Keypair), listener: (L, &Keypair)) -> TlsStream<TcpStream>
    where
        D: OutboundConnectionUpgrade<TcpStream, Output = (PeerId, TlsStream<TcpStream>)>
            + UpgradeInfo<Info = &'static str>,
        D::Error: std::fmt::Debug,
        L: InboundConnectionUpgrade<TcpStream, Output = (PeerId, TlsStream<TcpStream>)>
            + UpgradeInfo<Info = &'static str>,
        L::Error: std::fmt::Debug,
    {
        let (a, b) = pair().await;
        let (out, inb) = futures::join!(
            dialer.0.upgrade_outbound(a, PROTOCOL_INFO),
            listener.0.upgrade_inbound(b, PROTOCOL_INFO)
        );
        let (seen_by_dialer, stream) = out.expect("dialer's side");
        let (seen_by_listener, _) = inb.expect("listener's side");
        assert_eq!(seen_by_dialer, listener.1.public().to_peer_id());
        assert_eq!(seen_by_listener, dialer.1.public().to_peer_id());
        stream
    }

    const PROTOCOL_INFO: &str = "/tls/1.0.0";

    #[tokio::test]
    async fn two_nodes_agree_on_aes_gcm_and_each_learns_the_others_peer_id() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let s = handshake(
            (Config::new(&a).unwrap(), &a),
            (Config::new(&b).unwrap(), &b),
        )
        .await;
        assert_eq!(suite(&s), cipher_suite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(PROTOCOL, PROTOCOL_INFO);
    }

    #[tokio::test]
    async fn libp2p_tls_peers_interoperate_either_way_with_the_dialers_cipher_order() {
        let (ours, theirs) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        // Ours dials: the listener honours our order.
        let s = handshake(
            (Config::new(&ours).unwrap(), &ours),
            (libp2p::tls::Config::new(&theirs).unwrap(), &theirs),
        )
        .await;
        assert_eq!(suite(&s), cipher_suite::TLS13_AES_128_GCM_SHA256);
        // Theirs dials (ChaCha20 first): we honour it.
        let s = handshake(
            (libp2p::tls::Config::new(&theirs).unwrap(), &theirs),
            (Config::new(&ours).unwrap(), &ours),
        )
        .await;
        assert_eq!(suite(&s), cipher_suite::TLS13_CHACHA20_POLY1305_SHA256);
    }

    #[tokio::test]
    async fn a_dialer_without_a_libp2p_certificate_is_refused() {
        let key = Keypair::generate_ed25519();
        let (a, b) = pair().await;
        let mut anonymous =
            rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier))
                .with_no_client_auth();
        anonymous.alpn_protocols = vec![ALPN.to_vec()];
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let (out, inb) = futures::join!(
            futures_rustls::TlsConnector::from(Arc::new(anonymous)).connect(name, a),
            Config::new(&key).unwrap().upgrade_inbound(b, PROTOCOL)
        );
        let err = inb.expect_err("no client certificate");
        assert!(err.to_string().contains("TLS handshake"), "{err}");
        // The client may finish its side before the server's alert arrives; nothing more.
        drop(out);
    }
}
