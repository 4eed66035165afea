//! End-to-end checks of the TLS prototype on loopback: certificates are made
//! in the test with rcgen, Pingora serves real listeners (openssl backend),
//! clients are reqwest (rustls, HTTP/2 via ALPN or prior knowledge) and, for
//! protocol-version probes, an OpenSSL client. Every test is bounded (a 60 s
//! timeout around it; each request has a 10 s timeout).

use futures_util::StreamExt;
use pingora_core::services::Service as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tls_proto::certs::{self, CertFiles, SniCerts};
use tls_proto::gateway::{Gateway, Pool};
use tls_proto::identity::{CertClient, CertClients, CertMatch};
use tls_proto::listener::{tls_settings, ClientAuth, ListenerStats};
use tls_proto::upstream::{UpstreamTls, UpstreamTlsConfig};
use tls_proto::Listen;

// ---------------------------------------------------------------------------
// Certificates (rcgen 0.14)

type Ca = CertifiedIssuer<'static, KeyPair>;

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(name, None, None);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn dn(cn: &str, o: Option<&str>, ou: Option<&str>) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    if let Some(o) = o {
        d.push(DnType::OrganizationName, o);
    }
    if let Some(ou) = ou {
        d.push(DnType::OrganizationalUnitName, ou);
    }
    d
}

/// A leaf signed by `issuer`; returns (cert PEM, key PEM, cert DER).
fn leaf(issuer: &Ca, p: CertificateParams) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn server_params(names: &[&str]) -> CertificateParams {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name = dn(names[0], None, None);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p
}

fn client_params(
    cn: &str,
    o: Option<&str>,
    ou: Option<&str>,
    sans: Vec<SanType>,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn, o, ou);
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }
    fn pair(&self, name: &str, cert: &str, key: &str) -> CertFiles {
        CertFiles {
            cert: self.write(&format!("{name}.crt"), cert),
            key: self.write(&format!("{name}.key"), key),
        }
    }
}

// ---------------------------------------------------------------------------
// The world: CAs, a model server (plain TLS and mTLS-requiring), the gateway
// with four listeners (public TLS, mTLS required, mTLS optional, plain+h2c).

struct World {
    _tmp: tempfile::TempDir,
    server_ca_pem: String,
    client_ca: Ca,
    public: SocketAddr,
    internal: SocketAddr,
    partner: SocketAddr,
    strict: SocketAddr,
    plain: SocketAddr,
    a_der: Vec<u8>,
    b_der: Vec<u8>,
    public_files: Vec<CertFiles>,
    store: certs::CertStore,
    internal_stats: Arc<ListenerStats>,
    upstream_errors: Arc<Mutex<BTreeMap<(String, &'static str), u64>>>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn wait_listening(addr: SocketAddr) {
    let end = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < end, "{addr} not listening after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn world() -> World {
    let _ = env_logger::builder().is_test(true).try_init();
    let tmp = tempfile::tempdir().unwrap();
    let files = Files {
        dir: tmp.path().to_path_buf(),
    };

    let server_ca = ca("Proto Server CA");
    let client_ca = ca("Proto Client CA");
    let upstream_ca = ca("Proto Upstream CA");

    let (a_pem, a_key, a_der) = leaf(&server_ca, server_params(&["a.test"]));
    let (b_pem, b_key, b_der) = leaf(&server_ca, server_params(&["b.test", "*.b.test"]));
    let public_files = vec![
        files.pair("a", &a_pem, &a_key),
        files.pair("b", &b_pem, &b_key),
    ];
    let (sni, warnings) = SniCerts::load_all(&public_files).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let store = certs::store(sni);
    let client_ca_path = files.write("client-ca.pem", &client_ca.pem());

    // The model server: cert for model.internal from the upstream CA; the
    // second listener also requires a client cert from the upstream CA.
    let (m_pem, m_key, _) = leaf(&upstream_ca, server_params(&["model.internal"]));
    let model_files = files.pair("model", &m_pem, &m_key);
    let upstream_ca_path = files.write("upstream-ca.pem", &upstream_ca.pem());
    let (g_pem, g_key, _) = leaf(
        &upstream_ca,
        client_params("gateway", Some("modelgate gateway"), None, vec![]),
    );
    let gateway_client = files.pair("gateway-client", &g_pem, &g_key);

    let (m1, m2) = (free_addr(), free_addr());
    let s1 = pingora_core::listeners::tls::TlsSettings::intermediate(
        &model_files.cert,
        &model_files.key,
    )
    .unwrap();
    let mut s2 = pingora_core::listeners::tls::TlsSettings::intermediate(
        &model_files.cert,
        &model_files.key,
    )
    .unwrap();
    s2.set_ca_file(&upstream_ca_path).unwrap();
    s2.set_verify(
        pingora_core::tls::ssl::SslVerifyMode::PEER
            | pingora_core::tls::ssl::SslVerifyMode::FAIL_IF_NO_PEER_CERT,
    );

    let tls = |pool: &str, server_name: &str, ca: Option<&str>, client: Option<&CertFiles>| {
        Some(
            UpstreamTls::build(
                pool,
                &UpstreamTlsConfig {
                    server_name: server_name.into(),
                    ca: ca.map(str::to_string),
                    client_cert: client.cloned(),
                    verify_hostname: true,
                },
            )
            .unwrap(),
        )
    };
    let ca = Some(upstream_ca_path.as_str());
    let pool = |name: &str, prefix: &str, addr, tls| Pool {
        name: name.into(),
        prefix: prefix.into(),
        addr,
        tls,
    };
    let gateway = Gateway {
        pools: vec![
            pool(
                "trusted",
                "/v1/",
                m1,
                tls("trusted", "model.internal", ca, None),
            ),
            pool(
                "admin",
                "/admin/",
                m1,
                tls("admin", "model.internal", ca, None),
            ),
            pool(
                "system",
                "/system/",
                m1,
                tls("system", "model.internal", None, None),
            ),
            pool(
                "wrongname",
                "/wrongname/",
                m1,
                tls("wrongname", "other.internal", ca, None),
            ),
            pool(
                "mtls",
                "/mtls/",
                m2,
                tls("mtls", "model.internal", ca, Some(&gateway_client)),
            ),
            pool(
                "mtls-nocert",
                "/mtls-nocert/",
                m2,
                tls("mtls-nocert", "model.internal", ca, None),
            ),
            // Pitfall demo: system roots only, but the SAME group_key as
            // `trusted` -> Pingora reuses trusted's verified connection,
            // because HttpPeer's reuse hash ignores `options.ca`.
            pool(
                "same-key",
                "/same-key/",
                m1,
                tls("trusted", "model.internal", None, None),
            ),
        ],
        cert_clients: CertClients(vec![
            CertClient {
                name: "alice-svc".into(),
                groups: vec!["ml".into()],
                matcher: CertMatch::Uri("spiffe://corp/ns/ml/sa/alice".into()),
            },
            CertClient {
                name: "ops".into(),
                groups: vec!["admin".into()],
                matcher: CertMatch::CommonName("ops".into()),
            },
        ]),
        upstream_errors: Default::default(),
    };
    // The gateway's counters, shared with the test (modelgate: Prometheus).
    let upstream_errors = gateway.upstream_errors.clone();

    let (public, internal, partner, strict, plain) = (
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
    );
    let internal_stats = Arc::new(ListenerStats::default());
    let listeners = vec![
        Listen::Tls(
            public.to_string(),
            tls_settings(
                "public",
                store.clone(),
                &ClientAuth::Off,
                true,
                Default::default(),
            )
            .unwrap(),
        ),
        Listen::Tls(
            internal.to_string(),
            tls_settings(
                "internal",
                store.clone(),
                &ClientAuth::Required {
                    ca: client_ca_path.clone(),
                    in_handshake: false,
                },
                true,
                internal_stats.clone(),
            )
            .unwrap(),
        ),
        Listen::Tls(
            strict.to_string(),
            tls_settings(
                "strict",
                store.clone(),
                &ClientAuth::Required {
                    ca: client_ca_path.clone(),
                    in_handshake: true,
                },
                true,
                Default::default(),
            )
            .unwrap(),
        ),
        Listen::Tls(
            partner.to_string(),
            tls_settings(
                "partner",
                store.clone(),
                &ClientAuth::Optional {
                    ca: client_ca_path.clone(),
                },
                true,
                Default::default(),
            )
            .unwrap(),
        ),
        Listen::Plain(plain.to_string()),
    ];
    let mut proxy = tls_proto::proxy_service(gateway, listeners, true);
    let mut model1 = tls_proto::model_service(&m1.to_string(), s1);
    let mut model2 = tls_proto::model_service(&m2.to_string(), s2);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let rx1 = rx.clone();
    tokio::spawn(async move { model1.start_service(None, rx1, 1).await });
    let rx2 = rx.clone();
    tokio::spawn(async move { model2.start_service(None, rx2, 1).await });
    tokio::spawn(async move { proxy.start_service(None, rx, 1).await });
    for addr in [m1, m2, public, internal, partner, strict, plain] {
        wait_listening(addr).await;
    }
    World {
        _tmp: tmp,
        server_ca_pem: server_ca.pem(),
        client_ca,
        public,
        internal,
        partner,
        strict,
        plain,
        a_der,
        b_der,
        public_files,
        store,
        internal_stats,
        upstream_errors,
        _shutdown: tx,
    }
}

// ---------------------------------------------------------------------------
// Clients

fn client(w: &World, identity: Option<(&str, &str)>) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(w.server_ca_pem.as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(10));
    for name in ["a.test", "b.test", "x.b.test", "c.test"] {
        // reqwest overrides DNS by name only; the URL's port picks the listener.
        b = b.resolve(name, SocketAddr::new(w.public.ip(), 0));
    }
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b
}

fn url(name: &str, addr: SocketAddr, path: &str) -> String {
    format!("https://{name}:{}{path}", addr.port())
}

fn peer_der(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("tls info")
        .to_vec()
}

/// POSTs a chat call and reads the stream: (version, status, time to first
/// body chunk, total time, body).
async fn stream_call(
    c: &reqwest::Client,
    url: &str,
    events: u32,
    delay_ms: u32,
) -> (reqwest::Version, u16, Duration, Duration, String) {
    let t0 = Instant::now();
    let resp = c
        .post(url)
        .header("authorization", "Bearer k-demo")
        .header("content-type", "application/json")
        .header("x-events", events.to_string())
        .header("x-delay-ms", delay_ms.to_string())
        .body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    let (version, status) = (resp.version(), resp.status().as_u16());
    let mut first = None;
    let mut body = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.unwrap();
        if !chunk.is_empty() {
            first.get_or_insert_with(|| t0.elapsed());
        }
        body.extend_from_slice(&chunk);
    }
    (
        version,
        status,
        first.unwrap_or_default(),
        t0.elapsed(),
        String::from_utf8(body).unwrap(),
    )
}

fn assert_streamed_and_masked(
    what: &str,
    (_, status, first, total, body): &(reqwest::Version, u16, Duration, Duration, String),
    events: usize,
) {
    assert_eq!(*status, 200, "{what}: {body}");
    assert!(
        !body.contains("jane.doe@example.com"),
        "{what}: unmasked: {body}"
    );
    assert_eq!(body.matches("[EMAIL]").count(), events, "{what}: {body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{what}: {body}");
    // 5 events 200 ms apart: ~800 ms in all; the first must arrive long before.
    assert!(
        *total >= Duration::from_millis(750),
        "{what}: total {total:?}"
    );
    assert!(
        *first + Duration::from_millis(500) < *total,
        "{what}: not streamed (first chunk {first:?}, total {total:?})"
    );
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took longer than 60 s");
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_sni_tls_versions_http2_and_streaming() {
    bounded(async {
        let w = world().await;
        let c = client(&w, None).build().unwrap();
        // SNI picks the certificate: verification against the CA passes for
        // each name, and the peer certificate is the one made for it.
        for (name, der) in [
            ("a.test", &w.a_der),
            ("b.test", &w.b_der),
            ("x.b.test", &w.b_der),
        ] {
            let r = c
                .get(url(name, w.public, "/whoami"))
                .header("authorization", "Bearer k-demo")
                .send()
                .await
                .unwrap();
            assert_eq!(&peer_der(&r), der, "{name}");
            assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN h2 for {name}");
            let body = r.text().await.unwrap();
            assert!(body.contains(&format!("\"sni\":\"{name}\"")), "{body}");
            assert!(body.contains("\"tls\":\"TLSv1.3\""), "{body}");
            assert!(body.contains("\"listener\":\"public\""), "{body}");
        }
        // An unknown name gets the default (a.test) certificate, which does
        // not verify for it.
        let e = c
            .get(url("c.test", w.public, "/whoami"))
            .send()
            .await
            .unwrap_err();
        assert!(format!("{e:?}").contains("NotValidForName"), "{e:?}");

        // HTTPS streaming with masking, over HTTP/2 (ALPN) and HTTP/1.1.
        let h2 = stream_call(&c, &url("a.test", w.public, "/v1/chat/completions"), 5, 200).await;
        assert_eq!(h2.0, reqwest::Version::HTTP_2);
        // The h1 upstream gets a Host from the h2 request's :authority.
        let port = w.public.port();
        assert!(
            h2.4.contains(&format!("\"host\":\"a.test:{port}\"")),
            "{}",
            h2.4
        );
        assert_streamed_and_masked("https h2", &h2, 5);
        let c1 = client(&w, None).http1_only().build().unwrap();
        let h1 = stream_call(
            &c1,
            &url("a.test", w.public, "/v1/chat/completions"),
            5,
            200,
        )
        .await;
        assert_eq!(h1.0, reqwest::Version::HTTP_11);
        assert!(
            h1.4.contains(&format!("\"host\":\"a.test:{port}\"")),
            "{}",
            h1.4
        );
        assert_streamed_and_masked("https h1", &h1, 5);

        // h2c on the plain listener (prior knowledge), and HTTP/1.1 beside it.
        let plain = format!("http://{}/v1/chat/completions", w.plain);
        let c2c = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let h2c = stream_call(&c2c, &plain, 5, 200).await;
        assert_eq!(h2c.0, reqwest::Version::HTTP_2);
        assert_streamed_and_masked("h2c", &h2c, 5);
        let h1c = stream_call(&reqwest::Client::new(), &plain, 5, 200).await;
        assert_eq!(h1c.0, reqwest::Version::HTTP_11);
        assert_streamed_and_masked("plain h1", &h1c, 5);

        // Protocol floor and ciphers, probed with an OpenSSL client.
        let port = w.public.port();
        let probes = tokio::task::spawn_blocking(move || {
            use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
            let probe = |max: SslVersion, ciphers: &str| -> Result<String, String> {
                let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
                b.set_verify(SslVerifyMode::NONE);
                b.set_min_proto_version(None).unwrap();
                b.set_max_proto_version(Some(max)).unwrap();
                b.set_cipher_list(ciphers).unwrap();
                let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                b.build()
                    .connect("a.test", tcp)
                    .map(|s| {
                        format!(
                            "{:?} {:?}",
                            s.ssl().version_str(),
                            s.ssl().current_cipher().map(|c| c.name())
                        )
                    })
                    .map_err(|e| e.to_string())
            };
            (
                probe(SslVersion::TLS1_1, "DEFAULT:@SECLEVEL=0"),
                probe(SslVersion::TLS1_2, "ECDHE-ECDSA-AES128-GCM-SHA256"),
                probe(SslVersion::TLS1_2, "ECDHE-ECDSA-AES128-SHA"),
            )
        })
        .await
        .unwrap();
        println!("TLS 1.1 probe: {:?}", probes.0);
        println!(
            "TLS 1.2 ECDHE-ECDSA-AES128-GCM-SHA256 probe: {:?}",
            probes.1
        );
        println!("TLS 1.2 ECDHE-ECDSA-AES128-SHA (CBC) probe: {:?}", probes.2);
        assert!(probes.0.is_err(), "TLS 1.1 accepted: {:?}", probes.0);
        assert!(
            probes.1.as_ref().unwrap().contains("TLSv1.2"),
            "{:?}",
            probes.1
        );
        assert!(probes.2.is_err(), "CBC suite accepted: {:?}", probes.2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_client_certificates_are_identities() {
    bounded(async {
        let w = world().await;
        let alice = leaf(
            &w.client_ca,
            client_params(
                "alice",
                Some("Corp"),
                Some("ml"),
                vec![
                    SanType::URI("spiffe://corp/ns/ml/sa/alice".try_into().unwrap()),
                    SanType::Rfc822Name("alice@corp.test".try_into().unwrap()),
                    SanType::DnsName("alice.clients.corp".try_into().unwrap()),
                ],
            ),
        );
        let ops = leaf(
            &w.client_ca,
            client_params("ops", None, Some("sre"), vec![]),
        );
        let mallory = leaf(&w.client_ca, client_params("mallory", None, None, vec![]));
        let rogue_ca = ca("Rogue CA");
        let rogue = leaf(
            &rogue_ca,
            client_params(
                "alice",
                None,
                None,
                vec![SanType::URI(
                    "spiffe://corp/ns/ml/sa/alice".try_into().unwrap(),
                )],
            ),
        );

        // Required: no certificate -> a JSON 401 (API keys do not count);
        // with `in_handshake`, no HTTP at all.
        let whoami = url("a.test", w.internal, "/whoami");
        let none = client(&w, None).build().unwrap();
        let r = none
            .get(&whoami)
            .header("authorization", "Bearer k-demo")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("client_certificate_required"));
        let e = none
            .get(url("a.test", w.strict, "/whoami"))
            .send()
            .await
            .unwrap_err();
        println!("no client cert, in_handshake: {e:?}");
        // A certificate from another CA -> refused in TLS, counted.
        let refused_before = w.internal_stats.client_cert_refused.load(Ordering::Relaxed);
        let c = client(&w, Some((&rogue.0, &rogue.1))).build().unwrap();
        let e = c.get(&whoami).send().await.unwrap_err();
        println!("rogue CA cert: {e:?}");
        assert!(w.internal_stats.client_cert_refused.load(Ordering::Relaxed) > refused_before);

        // alice: identity from the certificate (no API key sent), over h2.
        // A fresh connection per request: resumed sessions must keep working
        // (session id context) and keep the identity.
        let c = client(&w, Some((&alice.0, &alice.1)))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        for round in 0..3 {
            let r = c.get(&whoami).send().await.unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            let body = r.text().await.unwrap();
            println!("alice whoami #{round}: {body}");
            for want in [
                "\"client\":\"alice-svc\"",
                "\"groups\":[\"ml\"]",
                "\"via\":\"client_cert\"",
                "\"cn\":\"alice\"",
                "\"ou\":[\"ml\"]",
                "\"dns\":[\"alice.clients.corp\"]",
                "\"uri\":[\"spiffe://corp/ns/ml/sa/alice\"]",
                "\"email\":[\"alice@corp.test\"]",
                "\"listener\":\"internal\"",
            ] {
                assert!(body.contains(want), "missing {want} in {body}");
            }
        }
        // Policy reads the certificate's groups: alice is not an admin, ops is.
        let r = c
            .get(url("a.test", w.internal, "/admin/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let c_ops = client(&w, Some((&ops.0, &ops.1))).build().unwrap();
        let r = c_ops
            .get(url("a.test", w.internal, "/admin/x"))
            .send()
            .await
            .unwrap();
        let (status, body) = (r.status(), r.text().await.unwrap());
        assert_eq!(status, 200, "{body}");
        // The model sees the client the certificate named.
        let (_, status, _, _, body) = stream_call(
            &c,
            &url("a.test", w.internal, "/v1/chat/completions"),
            2,
            10,
        )
        .await;
        assert_eq!(status, 200);
        assert!(body.contains("\"client\":\"alice-svc\""), "{body}");
        // A valid certificate that names no configured client: 403.
        let c = client(&w, Some((&mallory.0, &mallory.1))).build().unwrap();
        let r = c.get(&whoami).send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("unknown_client_certificate"));

        // Optional: no cert -> API key; with a cert -> the cert.
        let r = none
            .get(url("a.test", w.partner, "/whoami"))
            .header("authorization", "Bearer k-demo")
            .send()
            .await
            .unwrap();
        assert!(r.text().await.unwrap().contains("\"via\":\"api_key\""));
        let r = none
            .get(url("a.test", w.partner, "/whoami"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let c = client(&w, Some((&alice.0, &alice.1))).build().unwrap();
        let r = c
            .get(url("a.test", w.partner, "/whoami"))
            .send()
            .await
            .unwrap();
        assert!(r.text().await.unwrap().contains("\"via\":\"client_cert\""));
        // ...but a certificate from an unknown CA is still refused.
        let c = client(&w, Some((&rogue.0, &rogue.1))).build().unwrap();
        assert!(c
            .get(url("a.test", w.partner, "/whoami"))
            .send()
            .await
            .is_err());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verification_and_mtls() {
    bounded(async {
        let w = world().await;
        let c = client(&w, None).build().unwrap();
        let call = |path: &str| {
            let c = c.clone();
            let u = url("a.test", w.public, path);
            async move {
                let r = c
                    .post(u)
                    .header("authorization", "Bearer k-demo")
                    .header("x-events", "2")
                    .header("x-delay-ms", "10")
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        // Configured CA: verified and proxied.
        let (s, body) = call("/v1/chat").await;
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("[EMAIL]"));
        // Pitfall: a pool without the CA but sharing trusted's reuse key gets
        // trusted's pooled connection (no handshake, no verification).
        let (s, _) = call("/same-key/chat").await;
        assert_eq!(s, 200, "expected the pooled connection to be reused");
        // System roots only: the model's private CA is unknown -> refused.
        let (s, body) = call("/system/chat").await;
        assert_eq!(
            (s, body.contains("upstream_certificate_invalid")),
            (502, true),
            "{body}"
        );
        // Right CA, wrong name -> refused too.
        let (s, body) = call("/wrongname/chat").await;
        assert_eq!(
            (s, body.contains("upstream_certificate_invalid")),
            (502, true),
            "{body}"
        );
        // Upstream mTLS: with the gateway's client certificate it works and
        // the model sees its organisation.
        let (s, body) = call("/mtls/chat").await;
        assert_eq!(s, 200, "{body}");
        assert!(
            body.contains("\"gateway_cert_o\":\"modelgate gateway\""),
            "{body}"
        );
        let (s, body) = call("/mtls-nocert/chat").await;
        println!("upstream requires a client cert, none configured: {s} {body}");
        assert_eq!(
            (s, body.contains("upstream_refused_client_certificate")),
            (502, true),
            "{body}"
        );

        let errors = w.upstream_errors.lock().unwrap().clone();
        println!("upstream errors by (pool, kind): {errors:?}");
        assert!(
            errors
                .get(&("system".to_string(), "tls_verify"))
                .copied()
                .unwrap_or(0)
                >= 1
        );
        assert!(
            errors
                .get(&("wrongname".to_string(), "tls_verify"))
                .copied()
                .unwrap_or(0)
                >= 1
        );
        assert_eq!(
            errors.get(&("mtls-nocert".to_string(), "tls_client_cert_refused")),
            Some(&1)
        );
        assert!(!errors.keys().any(|(p, _)| p == "trusted" || p == "mtls"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_keeps_open_connections() {
    bounded(async {
        let w = world().await;
        let whoami = url("a.test", w.public, "/whoami");
        let get = |c: &reqwest::Client| {
            let (c, u) = (c.clone(), whoami.clone());
            async move {
                let r = c
                    .get(u)
                    .header("authorization", "Bearer k-demo")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                peer_der(&r)
            }
        };
        // One HTTP/2 connection, open across the reload.
        let before = client(&w, None).build().unwrap();
        assert_eq!(get(&before).await, w.a_der);

        // New a.test certificate (new key) written over the old files.
        let server_ca = {
            // Re-issue from a fresh CA the client also trusts.
            ca("Proto Server CA 2")
        };
        let (a2_pem, a2_key, a2_der) = leaf(&server_ca, server_params(&["a.test"]));
        std::fs::write(&w.public_files[0].cert, &a2_pem).unwrap();
        std::fs::write(&w.public_files[0].key, &a2_key).unwrap();
        certs::reload(&w.store, &w.public_files).unwrap();

        // The open connection is untouched (same TLS session, old cert)...
        assert_eq!(get(&before).await, w.a_der);
        // ...new handshakes get the new certificate.
        let after = client(&w, None)
            .add_root_certificate(
                reqwest::Certificate::from_pem(server_ca.pem().as_bytes()).unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(get(&after).await, a2_der);

        // A broken set (key of another cert) is refused; the live set stays.
        std::fs::write(
            &w.public_files[0].key,
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let e = certs::reload(&w.store, &w.public_files).unwrap_err();
        assert!(e.contains("is not the private key"), "{e}");
        let fresh = client(&w, None)
            .add_root_certificate(
                reqwest::Certificate::from_pem(server_ca.pem().as_bytes()).unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(get(&fresh).await, a2_der);
    })
    .await
}

#[test]
fn config_check_of_certificate_files() {
    let tmp = tempfile::tempdir().unwrap();
    let files = Files {
        dir: tmp.path().to_path_buf(),
    };
    let issuer = ca("Check CA");
    let now = time::OffsetDateTime::now_utc();
    let with_dates = |before: time::OffsetDateTime, after: time::OffsetDateTime| {
        let mut p = server_params(&["check.test"]);
        p.not_before = before;
        p.not_after = after;
        leaf(&issuer, p)
    };
    let day = time::Duration::days(1);

    let (c, k, _) = with_dates(now - day, now + 400 * day);
    let ok = files.pair("ok", &c, &k);
    let (ck, warnings) = certs::load(&ok).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(ck.names, vec!["check.test"]);

    let (c, k, _) = with_dates(now - day, now + 10 * day);
    let (_, warnings) = certs::load(&files.pair("soon", &c, &k)).unwrap();
    assert!(
        warnings.len() == 1
            && (warnings[0].contains("expires in 9 days")
                || warnings[0].contains("expires in 10 days")),
        "{warnings:?}"
    );

    let (c, k, _) = with_dates(now - 30 * day, now - day);
    let e = certs::load(&files.pair("expired", &c, &k)).err().unwrap();
    assert!(e.contains("expired on"), "{e}");

    let (c, k, _) = with_dates(now + 2 * day, now + 30 * day);
    let e = certs::load(&files.pair("early", &c, &k)).err().unwrap();
    assert!(e.contains("not valid before"), "{e}");

    let other_key = KeyPair::generate().unwrap().serialize_pem();
    let e = certs::load(&CertFiles {
        cert: ok.cert.clone(),
        key: files.write("other.key", &other_key),
    })
    .err()
    .unwrap();
    assert!(e.contains("is not the private key of"), "{e}");

    let e = certs::load(&CertFiles {
        cert: "/nonexistent/x.crt".into(),
        key: ok.key.clone(),
    })
    .err()
    .unwrap();
    assert!(e.starts_with("cannot read /nonexistent/x.crt"), "{e}");
    let e = certs::load(&CertFiles {
        cert: ok.key.clone(),
        key: ok.key.clone(),
    })
    .err()
    .unwrap();
    assert!(e.contains("no certificate in the file"), "{e}");
}
