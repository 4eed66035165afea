//! Integration tests of TLS: the real gateway with HTTPS listeners and
//! HTTPS upstreams (the demo model with `--tls-cert`), certificates made in
//! the test with rcgen. Clients are reqwest (rustls; HTTP/2 through ALPN or
//! with prior knowledge) and, to probe protocol versions and ciphers, an
//! OpenSSL client. Loopback only; every request has a timeout.

mod common;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use reqwest::blocking::{Client, ClientBuilder, Response};
use serde_json::Value;
use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Certificates

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

/// A certificate and key in PEM files, and the certificate's DER.
struct Pair {
    cert: String,
    key: String,
    der: Vec<u8>,
    pem: String,
    key_pem: String,
}

fn issue(dir: &Path, file: &str, issuer: &Ca, p: CertificateParams) -> Pair {
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    let pair = Pair {
        cert: dir.join(format!("{file}.pem")).display().to_string(),
        key: dir.join(format!("{file}.key")).display().to_string(),
        der: cert.der().to_vec(),
        pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    std::fs::write(&pair.cert, &pair.pem).unwrap();
    std::fs::write(&pair.key, &pair.key_pem).unwrap();
    pair
}

fn server(names: &[&str]) -> CertificateParams {
    let mut p =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name = dn(names[0], None, None);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p
}

fn client_cert(
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

fn write(dir: &Path, file: &str, text: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

// ---------------------------------------------------------------------------
// Clients

/// A client trusting `ca_pem` only, resolving the test names to loopback.
fn tls_client(ca_pem: &str, identity: Option<&Pair>) -> ClientBuilder {
    let mut b = Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(20));
    for name in ["a.test", "b.test", "x.b.test", "c.test", "gw.test"] {
        // By name only: the URL's port picks the listener.
        b = b.resolve(name, SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    if let Some(p) = identity {
        let pem = format!("{}{}", p.pem, p.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b
}

fn peer_der(resp: &Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info")
        .to_vec()
}

/// The text a client reads from an SSE chat stream.
fn sse_text(body: &str) -> String {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// A model answer with an email in it, cut in pieces of at most four
/// characters the way the demo model streams its answer.
const ANSWER: &str = "Sure, happy to help. Our support contact is jane.doe@example.com, \
or call +1 415-555-0132 during business hours. Let me know if you need anything else.";

/// A model streaming `ANSWER` as OpenAI chat events: the first two (the role
/// chunk and the first piece), then the rest once the client has them.
fn held_chat_model() -> HeldStream {
    let chars: Vec<char> = ANSWER.chars().collect();
    let pieces: Vec<String> = chars.chunks(4).map(|c| c.iter().collect()).collect();
    let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let events = openai_chat_events(&pieces);
    HeldStream::start(
        "text/event-stream",
        events[..2].to_vec(),
        events[2..].to_vec(),
    )
}

/// A streamed chat call to `model` (`held_chat_model`) through the
/// gateway: checks it streamed (the first event reached the client while
/// the model held the rest back) and was masked; returns the HTTP version
/// and the head of the request the model got.
fn streamed_and_masked(
    what: &str,
    model: &HeldStream,
    c: &Client,
    url: &str,
    key: Option<&str>,
) -> (reqwest::Version, String) {
    let mut req = c.post(url).json(&chat("demo-model", true));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().unwrap();
    let version = resp.version();
    let (body, request) = model.read(resp, "data: ");
    let text = sse_text(&body);
    assert!(text.contains("[EMAIL]"), "{what}: not masked: {text}");
    assert!(!body.contains("jane.doe@example.com"), "{what}: {body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{what}: {body}");
    (version, request)
}

fn error_code(resp: Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// The value of a metric line starting with `prefix`, 0 if absent.
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

fn one_pool(up: &Upstream) -> String {
    format!(
        "upstreams:\n  models: {{hosts: [\"{}\"], health_check: {{interval: 1s}}}}\nroutes:\n  - {{path_prefix: /, upstream: models}}\n",
        up.addr
    )
}

/// `listeners:` with the plain address the harness gives plus `tls`
/// listeners (YAML items), each on a fresh port stored in `ports`.
fn listeners<'a>(
    plain_extra: &str,
    tls: &'a [String],
    ports: &'a [Cell<u16>],
) -> impl Fn(&str) -> String + 'a {
    assert_eq!(tls.len(), ports.len(), "a port per TLS listener");
    let plain_extra = plain_extra.to_string();
    move |addr: &str| {
        let mut s = format!("listeners:\n  - {{name: plain, address: \"{addr}\"{plain_extra}}}\n");
        for (item, port) in tls.iter().zip(ports) {
            port.set(free_port());
            s.push_str(&item.replace("PORT", &port.get().to_string()));
        }
        s
    }
}

/// Whether a second TLS 1.2 connection to `port` (SNI `sni`, presenting
/// `identity`) resumes the first one's session.
fn resumes(port: u16, sni: &str, identity: Option<&Pair>) -> bool {
    use openssl::ssl::{SslConnector, SslMethod, SslSession, SslVerifyMode, SslVersion};
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    if let Some(p) = identity {
        let cert = openssl::x509::X509::from_pem(p.pem.as_bytes()).unwrap();
        let key = openssl::pkey::PKey::private_key_from_pem(p.key_pem.as_bytes()).unwrap();
        b.set_certificate(&cert).unwrap();
        b.set_private_key(&key).unwrap();
    }
    let c = b.build();
    let connect = |session: Option<&SslSession>| {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut cfg = c.configure().unwrap();
        if let Some(s) = session {
            // SAFETY: the session comes from a connection of this connector.
            unsafe { cfg.set_session(s).unwrap() };
        }
        cfg.connect(sni, tcp).unwrap()
    };
    let first = connect(None);
    let session = first.ssl().session().unwrap().to_owned();
    connect(Some(&session)).ssl().session_reused()
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn https_with_sni_http2_h2c_streaming_and_masking() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca1 = ca("Test CA");
    let a = issue(d, "a", &ca1, server(&["a.test"]));
    let b = issue(d, "b", &ca1, server(&["b.test", "*.b.test"]));
    let up = Upstream::start("u");
    let model = held_chat_model();
    let ports = [Cell::new(0), Cell::new(0), Cell::new(0)];
    let tls = [
        format!(
            "  - name: public\n    address: \"127.0.0.1:PORT\"\n    tls:\n      certificates:\n        - {{cert: {}, key: {}}}\n        - {{cert: {}, key: {}}}\n",
            a.cert, a.key, b.cert, b.key
        ),
        format!(
            "  - name: tls13\n    address: \"127.0.0.1:PORT\"\n    tls: {{certificates: [{{cert: {}, key: {}}}], min_version: \"1.3\"}}\n",
            a.cert, a.key
        ),
        format!(
            "  - name: strict\n    address: \"127.0.0.1:PORT\"\n    tls: {{certificates: [{{cert: {}, key: {}}}], ciphers: ECDHE-ECDSA-AES256-GCM-SHA384, http2: false}}\n",
            a.cert, a.key
        ),
    ];
    // Chat calls go to the model that holds its stream back, the rest to
    // the demo model.
    let pools = format!(
        "upstreams:\n  chat: {{hosts: [\"{}\"], health_check: {{interval: 1s}}}}\n  models: {{hosts: [\"{}\"], health_check: {{interval: 1s}}}}\nroutes:\n  - {{path_prefix: /v1/chat/, upstream: chat}}\n  - {{path_prefix: /, upstream: models}}\n",
        model.addr, up.addr
    );
    let gw = Gateway::start_with(
        &listeners(", h2c: true", &tls, &ports),
        &clients_yaml(),
        &pools,
        &[],
        true,
    );
    let [p, tls13, strict] = [0, 1, 2].map(|i| ports[i].get());
    let c = tls_client(&ca1.pem(), None).build().unwrap();
    let models = |name: &str| {
        c.get(format!("https://{name}:{p}/v1/models"))
            .bearer_auth(ALICE_KEY)
            .send()
    };

    // SNI picks the certificate; a name nothing matches gets the first one,
    // which the client then refuses for that name.
    for (name, want) in [("a.test", &a.der), ("b.test", &b.der), ("x.b.test", &b.der)] {
        let resp = models(name).unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        assert!(peer_der(&resp) == *want, "{name}: wrong certificate");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2, "{name}: ALPN");
    }
    let e = models("c.test").unwrap_err();
    assert!(format!("{e:?}").contains("NotValidForName"), "{e:?}");

    // Streaming and masking: HTTP/2 over TLS, HTTP/1.1 over TLS, h2c and
    // HTTP/1.1 on the plain listener.
    let https = format!("https://a.test:{p}/v1/chat/completions");
    let (v, head) = streamed_and_masked("h2 over TLS", &model, &c, &https, Some(ALICE_KEY));
    assert_eq!(v, reqwest::Version::HTTP_2);
    // The HTTP/1.1 model got a Host made from the h2 request's authority.
    let host = format!("host: a.test:{p}");
    assert!(
        head.to_ascii_lowercase().lines().any(|l| l == host),
        "{head}"
    );
    let h1 = tls_client(&ca1.pem(), None).http1_only().build().unwrap();
    let (v, _) = streamed_and_masked("h1 over TLS", &model, &h1, &https, Some(ALICE_KEY));
    assert_eq!(v, reqwest::Version::HTTP_11);
    let h2c = Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let plain = gw.url("/v1/chat/completions");
    let (v, _) = streamed_and_masked("h2c", &model, &h2c, &plain, Some(ALICE_KEY));
    assert_eq!(v, reqwest::Version::HTTP_2);
    let (v, _) = streamed_and_masked(
        "h1 on the h2c listener",
        &model,
        &http(),
        &plain,
        Some(ALICE_KEY),
    );
    assert_eq!(v, reqwest::Version::HTTP_11);
    // So did the demo model, for the `/v1/models` calls over h2.
    let hosts: Vec<String> = up
        .seen()
        .iter()
        .filter_map(|r| r["headers"]["host"].as_str().map(String::from))
        .collect();
    assert!(hosts.contains(&format!("a.test:{p}")), "{hosts:?}");

    // Protocol floor and ciphers, probed with an OpenSSL client.
    let probe_port =
        |p: u16, max: openssl::ssl::SslVersion, ciphers: &str| -> Result<String, String> {
            use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
            let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
            b.set_verify(SslVerifyMode::NONE);
            b.set_min_proto_version(None).unwrap();
            b.set_max_proto_version(Some(max)).unwrap();
            b.set_cipher_list(ciphers).unwrap();
            let tcp = std::net::TcpStream::connect(("127.0.0.1", p)).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            b.build()
                .connect("a.test", tcp)
                .map(|s| {
                    format!(
                        "{} {:?}",
                        s.ssl().version_str(),
                        s.ssl().current_cipher().map(|c| c.name())
                    )
                })
                .map_err(|e| e.to_string())
        };
    let probe = |max, ciphers: &str| probe_port(p, max, ciphers);
    // A listener without client certificates resumes TLS sessions.
    assert!(
        resumes(p, "a.test", None),
        "no resumption on the public listener"
    );
    use openssl::ssl::SslVersion;
    let tls11 = probe(SslVersion::TLS1_1, "DEFAULT:@SECLEVEL=0");
    // The server's refusal, not a client-side one.
    assert!(
        tls11
            .as_ref()
            .is_err_and(|e| e.contains("protocol version")),
        "TLS 1.1: {tls11:?}"
    );
    let gcm = probe(SslVersion::TLS1_2, "ECDHE-ECDSA-AES128-GCM-SHA256").unwrap();
    assert!(gcm.starts_with("TLSv1.2"), "{gcm}");
    let cbc = probe(SslVersion::TLS1_2, "ECDHE-ECDSA-AES128-SHA");
    assert!(cbc.is_err(), "CBC suite accepted: {cbc:?}");
    // min_version "1.3": TLS 1.2 refused.
    let old = probe_port(tls13, SslVersion::TLS1_2, "DEFAULT");
    assert!(
        old.as_ref().is_err_and(|e| e.contains("protocol version")),
        "TLS 1.2 on tls13: {old:?}"
    );
    let new = probe_port(tls13, SslVersion::TLS1_3, "DEFAULT").unwrap();
    assert!(new.starts_with("TLSv1.3"), "{new}");
    // ciphers: only the configured suite for TLS 1.2; http2: false.
    let other = probe_port(strict, SslVersion::TLS1_2, "ECDHE-ECDSA-AES128-GCM-SHA256");
    assert!(other.is_err(), "unconfigured suite accepted: {other:?}");
    let only = probe_port(strict, SslVersion::TLS1_2, "ECDHE-ECDSA-AES256-GCM-SHA384").unwrap();
    assert!(only.contains("ECDHE-ECDSA-AES256-GCM-SHA384"), "{only}");
    let r = c
        .get(format!("https://a.test:{strict}/v1/models"))
        .bearer_auth(ALICE_KEY)
        .send()
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);

    let m = gw.metrics();
    assert!(
        metric(
            &m,
            "modelgate_tls_handshakes_total{listener=\"public\",version=\"TLSv1.3\"}"
        ) >= 2,
        "{m}"
    );
    assert!(
        m.contains("modelgate_tls_certificate_expiry_seconds{listener=\"public\",name=\"b.test\"}"),
        "{m}"
    );
}

#[test]
fn mutual_tls_client_certificates_are_identities_for_policy_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server_ca = ca("Server CA");
    let clients_ca = ca("Clients CA");
    let rogue_ca = ca("Rogue CA");
    let gw_cert = issue(d, "gw", &server_ca, server(&["gw.test"]));
    let clients_ca_file = write(d, "clients-ca.pem", &clients_ca.pem());
    // A partner's CA, trusted on the `partner-ca` listener only.
    let rogue_ca_file = write(d, "partner-ca.pem", &rogue_ca.pem());
    let alice = issue(
        d,
        "alice",
        &clients_ca,
        client_cert(
            "alice",
            None,
            Some("ml"),
            vec![
                SanType::URI("spiffe://corp/ns/ml/sa/alice".try_into().unwrap()),
                SanType::Rfc822Name("alice@corp.test".try_into().unwrap()),
            ],
        ),
    );
    let ops = issue(
        d,
        "ops",
        &clients_ca,
        client_cert("ops-console", None, None, vec![]),
    );
    let stranger = issue(
        d,
        "stranger",
        &clients_ca,
        client_cert("stranger", None, None, vec![]),
    );
    let rogue = issue(
        d,
        "rogue",
        &rogue_ca,
        client_cert("ops-console", None, None, vec![]),
    );
    let mut expired = client_cert("ops-console", None, None, vec![]);
    let now = time::OffsetDateTime::now_utc();
    expired.not_before = now - time::Duration::days(30);
    expired.not_after = now - time::Duration::days(1);
    let expired = issue(d, "expired", &clients_ca, expired);

    let up = Upstream::start("u");
    let audit = d.join("audit.jsonl");
    let ports = [Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0)];
    let listener = |name: &str, mode: &str, ca: &str| {
        format!(
            "  - name: {name}\n    address: \"127.0.0.1:PORT\"\n    tls:\n      certificates: [{{cert: {}, key: {}}}]\n      client_auth: {{mode: {mode}, ca: {ca}}}\n",
            gw_cert.cert, gw_cert.key
        )
    };
    let tls = [
        listener("internal", "required", &clients_ca_file),
        listener("partners", "optional", &clients_ca_file),
        listener(
            "handshake",
            "required, reject_in_handshake: true",
            &clients_ca_file,
        ),
        listener("partner-ca", "required", &rogue_ca_file),
    ];
    // Certificate clients name the listeners (so the CAs) they come through.
    let ours = "listeners: [internal, partners, handshake]";
    let clients = format!(
        "{}  - {{name: alice-svc, cert: {{uri: \"spiffe://corp/ns/ml/sa/alice\", {ours}}}, groups: [ml]}}\n  - {{name: ops, cert: {{cn: ops-console, {ours}}}, groups: [admin]}}\n",
        clients_yaml()
    );
    let body = format!(
        "{}policies:\n  default:\n    rules:\n      - name: big-models-for-admins\n        when: {{models: \"llama-*\", groups: [ml]}}\n        action: deny\naudit:\n  sinks: [{{kind: file, path: \"{}\"}}]\n",
        one_pool(&up),
        audit.display()
    );
    let gw = Gateway::start_with(&listeners("", &tls, &ports), &clients, &body, &[], true);
    let [internal, partners, handshake, partner_ca] = [0, 1, 2, 3].map(|i| ports[i].get());
    let call = |c: &Client, port: u16, model: &str, key: Option<&str>| {
        let mut r = c
            .post(format!("https://gw.test:{port}/v1/chat/completions"))
            .json(&chat(model, false));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let anonymous = tls_client(&server_ca.pem(), None).build().unwrap();

    // Required: no certificate is a JSON 401, even with a valid API key.
    let r = call(&anonymous, internal, "demo-model", Some(ALICE_KEY)).unwrap();
    assert_eq!(error_code(r), (401, "client_certificate_required".into()));

    // alice's certificate is client alice-svc (group ml), over HTTP/2, on
    // fresh connections each time (each a full handshake: no resumption
    // where certificates are identities).
    let as_alice = tls_client(&server_ca.pem(), Some(&alice))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = call(&as_alice, internal, "demo-model", None).unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let text = r.text().unwrap();
        assert!(
            text.contains("[EMAIL]") && !text.contains("jane.doe"),
            "{text}"
        );
    }
    // Policy sees the certificate's client and groups: group ml may not use
    // llama-*, group admin (ops) may.
    let r = call(&as_alice, internal, "llama-demo", None).unwrap();
    assert_eq!(error_code(r), (403, "policy_denied".into()));
    let as_ops = tls_client(&server_ca.pem(), Some(&ops)).build().unwrap();
    assert_eq!(
        call(&as_ops, internal, "llama-demo", None)
            .unwrap()
            .status(),
        200
    );

    // No resumption where certificates are identities: every connection
    // verifies its certificate afresh.
    assert!(
        !resumes(internal, "gw.test", Some(&alice)),
        "a session resumed on internal"
    );

    // The partner CA's certificate claiming ops's CN, on the listener that
    // trusts that CA: verified, but ops's match does not hold there.
    let as_partner = tls_client(&server_ca.pem(), Some(&rogue)).build().unwrap();
    let r = call(&as_partner, partner_ca, "demo-model", None).unwrap();
    assert_eq!(error_code(r), (403, "unknown_client_certificate".into()));

    // A valid certificate that names no client: 403.
    let as_stranger = tls_client(&server_ca.pem(), Some(&stranger))
        .build()
        .unwrap();
    let r = call(&as_stranger, internal, "demo-model", None).unwrap();
    assert_eq!(error_code(r), (403, "unknown_client_certificate".into()));
    let stranger_serial = {
        let cert = openssl::x509::X509::from_pem(stranger.pem.as_bytes()).unwrap();
        let bn = cert.serial_number().to_bn().unwrap();
        bn.to_hex_str().unwrap().to_ascii_lowercase()
    };

    // A certificate from another CA fails the handshake and is counted.
    // (With TLS 1.3 the client learns it at its first read: from the alert,
    // or just a closed connection, whichever it reads first.)
    let as_rogue = tls_client(&server_ca.pem(), Some(&rogue)).build().unwrap();
    let refused = || {
        metric(
            &gw.metrics(),
            "modelgate_tls_client_cert_refused_total{listener=\"internal\"}",
        )
    };
    assert_eq!(refused(), 0);
    let e = call(&as_rogue, internal, "demo-model", None).unwrap_err();
    assert!(e.is_request(), "{e:?}");
    assert_eq!(refused(), 1);
    // So does an expired certificate from the right CA.
    let as_expired = tls_client(&server_ca.pem(), Some(&expired))
        .build()
        .unwrap();
    assert!(call(&as_expired, internal, "demo-model", None).is_err());
    assert_eq!(refused(), 2);

    // reject_in_handshake: no certificate, no HTTP at all.
    let e = call(&anonymous, handshake, "demo-model", Some(ALICE_KEY)).unwrap_err();
    assert!(e.is_request(), "{e:?}");
    assert_eq!(
        call(&as_ops, handshake, "demo-model", None)
            .unwrap()
            .status(),
        200
    );

    // Optional: an API key without a certificate, a certificate without a
    // key, and still no foreign certificates.
    let r = call(&anonymous, partners, "demo-model", Some(BOB_KEY)).unwrap();
    assert_eq!(r.status(), 200);
    let r = call(&anonymous, partners, "demo-model", None).unwrap();
    assert_eq!(error_code(r), (401, "invalid_api_key".into()));
    let r = call(&as_ops, partners, "demo-model", None).unwrap();
    assert_eq!(r.status(), 200);
    assert!(call(&as_rogue, partners, "demo-model", None).is_err());

    let m = gw.metrics();
    assert!(
        metric(
            &m,
            "modelgate_tls_client_cert_refused_total{listener=\"internal\"}"
        ) >= 1,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "modelgate_tls_client_cert_refused_total{listener=\"partners\"}"
        ) >= 1,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "modelgate_requests_total{client=\"alice-svc\",route=\"models\",status=\"403\"}"
        ) == 1,
        "{m}"
    );

    // The audit records the identity like a key's, plus the certificate and
    // the connection's TLS.
    let mut calls = Vec::new();
    wait_until("audit records", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        calls = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["kind"] == "call")
            .collect();
        calls.len() >= 10
    });
    let alice_call = calls
        .iter()
        .find(|r| r["client"]["name"] == "alice-svc" && r["status"] == 200)
        .expect("a call of alice-svc");
    let client = &alice_call["client"];
    assert_eq!(client["via"], "client_cert");
    assert_eq!(client["groups"], serde_json::json!(["ml"]));
    assert_eq!(client["cert"]["cn"], "alice");
    assert_eq!(client["cert"]["ou"], serde_json::json!(["ml"]));
    assert_eq!(
        client["cert"]["uri"],
        serde_json::json!(["spiffe://corp/ns/ml/sa/alice"])
    );
    assert_eq!(client["cert"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(client["cert"]["issuer"], "CN=Clients CA");
    let tls = &alice_call["tls"];
    assert_eq!(tls["listener"], "internal");
    assert_eq!(tls["version"], "TLSv1.3");
    assert_eq!(tls["sni"], "gw.test");
    let refused = calls
        .iter()
        .find(|r| r["status"] == 401 && r["tls"]["listener"] == "internal")
        .expect("the refused call");
    assert!(refused["client"].is_null(), "{refused}");
    // A refused certificate is named in its record's reason.
    let unknown = calls
        .iter()
        .find(|r| {
            r["status"] == 403
                && r["decision"]["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("CN=stranger")
        })
        .expect("the unknown certificate's call");
    assert_eq!(
        unknown["decision"]["reason"],
        format!("The client certificate is valid but names no client of this gateway. Certificate: CN=stranger, serial {stranger_serial}, issued by CN=Clients CA.")
    );
    let bob = calls
        .iter()
        .find(|r| r["client"]["name"] == "bob")
        .expect("bob's call");
    assert_eq!(bob["client"]["via"], "api_key");
    assert!(bob["client"].get("cert").is_none(), "{bob}");
}

/// The demo model over HTTPS as `model.internal`; with `client_ca`, it
/// requires client certificates from that CA.
fn tls_upstream(name: &str, pair: &Pair, client_ca: Option<&str>) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(BIN);
    cmd.args(["demo-model", "--listen", &addr, "--name", name])
        .args(["--tls-cert", &pair.cert, "--tls-key", &pair.key]);
    if let Some(ca) = client_ca {
        cmd.args(["--client-ca", ca]);
    }
    let proc = Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("TLS demo model", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    (proc, addr)
}

#[test]
fn upstream_tls_verification_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model_ca = ca("Model CA");
    let gateway_ca = ca("Gateway clients CA");
    let model = issue(
        d,
        "model",
        &model_ca,
        server(&["model.internal", "localhost"]),
    );
    let model_ca_file = write(d, "model-ca.pem", &model_ca.pem());
    let gateway_ca_file = write(d, "gateway-ca.pem", &gateway_ca.pem());
    let gw_client = issue(
        d,
        "gw-client",
        &gateway_ca,
        client_cert("modelgate", Some("modelgate gateway"), None, vec![]),
    );
    let (_plain_tls, addr) = tls_upstream("tls", &model, None);
    let (_mtls, mtls_addr) = tls_upstream("mtls", &model, Some(&gateway_ca_file));

    let port = addr.rsplit(':').next().unwrap();
    let ca_tls = |name: &str| format!("{{server_name: {name}, ca: {model_ca_file}}}");
    let http_hc = "{kind: http, path: /health, interval: 1s}";
    let pools = [
        ("trusted", addr.clone(), ca_tls("model.internal"), http_hc),
        ("system", addr.clone(), "{server_name: model.internal}".into(), ""),
        ("wrongname", addr.clone(), ca_tls("other.internal"), ""),
        (
            "altname",
            addr.clone(),
            format!("{{server_name: other.internal, alternative_name: model.internal, ca: {model_ca_file}}}"),
            "",
        ),
        (
            "chainonly",
            addr.clone(),
            format!("{{server_name: other.internal, verify_hostname: false, ca: {model_ca_file}}}"),
            "",
        ),
        (
            "insecure",
            addr.clone(),
            "{server_name: other.internal, insecure_skip_verify: true}".into(),
            "",
        ),
        // No server_name: the SNI and verified name is the host's own.
        (
            "byname",
            format!("localhost:{port}"),
            format!("{{ca: {model_ca_file}}}"),
            "",
        ),
        (
            "mtls",
            mtls_addr.clone(),
            format!(
                "{{server_name: model.internal, ca: {model_ca_file}, client_cert: {}, client_key: {}}}",
                gw_client.cert, gw_client.key
            ),
            http_hc,
        ),
        ("nocert", mtls_addr.clone(), ca_tls("model.internal"), ""),
    ];
    let mut body = String::from("upstreams:\n");
    for (name, host, tls, hc) in &pools {
        let hc = if hc.is_empty() { "{interval: 1s}" } else { hc };
        body.push_str(&format!(
            "  {name}:\n    hosts: [\"{host}\"]\n    health_check: {hc}\n    tls: {tls}\n"
        ));
    }
    body.push_str("routes:\n");
    for (name, ..) in &pools {
        body.push_str(&format!(
            "  - {{path_prefix: /v1/, model: \"{name}\", upstream: {name}}}\n"
        ));
    }
    // Ready means the HTTPS health checks (CA, client certificate) pass.
    let gw = Gateway::start(&body, &[], true);
    let call = |model: &str| {
        http()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ALICE_KEY)
            .json(&chat(model, false))
            .send()
            .unwrap()
    };

    // The configured CA: verified, answered, masked.
    let r = call("trusted");
    assert_eq!(r.status(), 200);
    let text = r.text().unwrap();
    assert!(
        text.contains("[EMAIL]") && !text.contains("jane.doe"),
        "{text}"
    );

    // System roots only, or the wrong name: a clean 502, counted, and the
    // log says why.
    for pool in ["system", "wrongname"] {
        let r = call(pool);
        let (status, code) = error_code(r);
        assert_eq!(
            (status, code.as_str()),
            (502, "upstream_unavailable"),
            "{pool}"
        );
    }
    let m = gw.metrics();
    for pool in ["system", "wrongname"] {
        let line =
            format!("modelgate_upstream_errors_total{{kind=\"tls_verify\",upstream=\"{pool}\"}}");
        assert!(metric(&m, &line) >= 1, "{pool}: {m}");
    }
    let log = gw.log_text();
    assert!(
        log.contains("certificate verify result: unable to get local issuer certificate"),
        "{log}"
    );
    assert!(
        log.contains("certificate verify result: hostname mismatch"),
        "{log}"
    );

    // An accepted alternative name, a chain-only check, no check at all,
    // and a host's own name as the SNI: answered.
    for pool in ["altname", "chainonly", "insecure", "byname"] {
        assert_eq!(call(pool).status(), 200, "{pool}");
    }
    let m = gw.metrics();
    let errors = |pool: &str| {
        m.lines()
            .filter(|l| l.starts_with("modelgate_upstream_errors_total{"))
            .any(|l| l.contains(&format!("upstream=\"{pool}\"")))
    };
    for pool in ["trusted", "altname", "chainonly", "insecure"] {
        assert!(!errors(pool), "{pool}: {m}");
    }

    // Upstream mutual TLS: with the gateway's certificate the model answers
    // and saw it; without, the model refuses us.
    let r = call("mtls");
    assert_eq!(r.status(), 200);
    let r = call("nocert");
    assert_eq!(error_code(r).0, 502);
    let m = gw.metrics();
    let line =
        "modelgate_upstream_errors_total{kind=\"tls_client_cert_refused\",upstream=\"nocert\"}";
    assert!(metric(&m, line) >= 1, "{m}");
    let ca_pem = model_ca.pem();
    let seen: Vec<Value> = tls_client(&ca_pem, Some(&gw_client))
        .resolve("model.internal", mtls_addr.parse().unwrap())
        .build()
        .unwrap()
        .get(format!(
            "https://model.internal:{}/__requests",
            mtls_addr.rsplit(':').next().unwrap()
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        seen.iter()
            .any(|r| r["path"] == "/v1/chat/completions"
                && r["client_cert_o"] == "modelgate gateway"),
        "{seen:?}"
    );

    // An HTTPS health check verifies too: a host whose certificate fails is
    // unhealthy, and the gateway is not ready.
    let body = format!(
        "upstreams:\n  unverified:\n    hosts: [\"{addr}\"]\n    health_check: {{kind: http, path: /health, interval: 1s}}\n    tls: {{server_name: model.internal}}\nroutes: [{{upstream: unverified}}]\n"
    );
    let unready = Gateway::start(&body, &[], false);
    let line =
        format!("modelgate_upstream_host_healthy{{host=\"{addr}\",upstream=\"unverified\"}} 0");
    wait_until("the failed health check", Duration::from_secs(10), || {
        unready.metrics().contains(&line)
    });
    let ready = http().get(unready.admin_url("/readyz")).send().unwrap();
    assert_eq!(ready.status(), 503);
}

#[test]
fn certificates_reload_on_sighup_and_file_change_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca1 = ca("Test CA");
    let old = issue(d, "a", &ca1, server(&["a.test"]));
    let up = Upstream::start("u");
    let port = [Cell::new(0)];
    let tls = [format!(
        "  - name: public\n    address: \"127.0.0.1:PORT\"\n    tls:\n      certificates: [{{cert: {}, key: {}}}]\n",
        old.cert, old.key
    )];
    let body = format!("{}tls: {{reload_check_interval: 0s}}\n", one_pool(&up));
    let gw = Gateway::start_with(
        &listeners("", &tls, &port),
        &clients_yaml(),
        &body,
        &[],
        true,
    );
    wait_until("the reload service", Duration::from_secs(10), || {
        gw.log_text()
            .contains("certificate reload: watching 1 TLS listener(s) (SIGHUP)")
    });
    let url = format!("https://a.test:{}/v1/models", port[0].get());
    let get = |c: &Client| {
        let r = c.get(&url).bearer_auth(ALICE_KEY).send().unwrap();
        assert_eq!(r.status(), 200);
        peer_der(&r)
    };
    // A keep-alive HTTP/2 connection, open across the reload.
    let kept = tls_client(&ca1.pem(), None).build().unwrap();
    assert!(get(&kept) == old.der);

    let new = issue(d, "a-new", &ca1, server(&["a.test"]));
    std::fs::copy(&new.cert, &old.cert).unwrap();
    std::fs::copy(&new.key, &old.key).unwrap();
    let pid = gw.pid().to_string();
    let hup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success())
    };
    hup();
    wait_until("the reload", Duration::from_secs(10), || {
        gw.log_text()
            .contains("listener public: certificates reloaded")
    });
    assert!(
        get(&kept) == old.der,
        "the open connection keeps its certificate"
    );
    let fresh = tls_client(&ca1.pem(), None).build().unwrap();
    assert!(
        get(&fresh) == new.der,
        "a new connection gets the new certificate"
    );

    // A broken set (a key that is not the certificate's) is refused; the
    // listener keeps serving the last good one.
    let other = issue(d, "other", &ca1, server(&["a.test"]));
    std::fs::copy(&other.key, &old.key).unwrap();
    hup();
    wait_until("the refused reload", Duration::from_secs(10), || {
        gw.log_text()
            .contains("certificate reload refused, keeping the current certificates")
    });
    let fresh = tls_client(&ca1.pem(), None).build().unwrap();
    assert!(get(&fresh) == new.der);
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "modelgate_tls_reloads_total{listener=\"public\",result=\"ok\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "modelgate_tls_reloads_total{listener=\"public\",result=\"error\"}"
        ),
        1,
        "{m}"
    );
    assert!(get(&kept) == old.der);

    // With a poll interval, rewriting the files is enough.
    std::fs::copy(&old.cert, d.join("poll.pem")).unwrap();
    std::fs::copy(&new.key, d.join("poll.key")).unwrap();
    let poll_tls = [format!(
        "  - name: polled\n    address: \"127.0.0.1:PORT\"\n    tls:\n      certificates: [{{cert: {}, key: {}}}]\n",
        d.join("poll.pem").display(),
        d.join("poll.key").display()
    )];
    let poll_port = [Cell::new(0)];
    let body = format!("{}tls: {{reload_check_interval: 200ms}}\n", one_pool(&up));
    let polled = Gateway::start_with(
        &listeners("", &poll_tls, &poll_port),
        &clients_yaml(),
        &body,
        &[],
        true,
    );
    let url = format!("https://a.test:{}/v1/models", poll_port[0].get());
    let served = || {
        let c = tls_client(&ca1.pem(), None).build().unwrap();
        peer_der(&c.get(&url).bearer_auth(ALICE_KEY).send().unwrap())
    };
    assert!(served() == new.der);
    // Half written (the new certificate, the old key): refused, and tried
    // again at the next check until the key arrives.
    let count = |result: &str| {
        let line =
            format!("modelgate_tls_reloads_total{{listener=\"polled\",result=\"{result}\"}}");
        metric(&polled.metrics(), &line)
    };
    std::fs::copy(&other.cert, d.join("poll.pem")).unwrap();
    wait_until("the refused reloads", Duration::from_secs(10), || {
        count("error") >= 2
    });
    assert!(served() == new.der);
    std::fs::copy(&other.key, d.join("poll.key")).unwrap();
    wait_until("the polled reload", Duration::from_secs(10), || {
        served() == other.der
    });
    assert_eq!(count("ok"), 1);
}

/// `modelgate -t` on a config with one HTTPS listener (`cert`, `key`, and
/// `client_auth` when set) and an upstream pool with `upstream_tls`:
/// (passed, stderr).
fn config_check(
    dir: &Path,
    (cert, key): (&str, &str),
    client_auth: Option<&str>,
    upstream_tls: &str,
) -> (bool, String) {
    let auth = client_auth.map_or(String::new(), |ca| {
        format!("      client_auth: {{mode: required, ca: {ca}}}\n")
    });
    check_config(
        dir,
        &format!(
            "listeners:\n  - address: \"127.0.0.1:1\"\n    tls:\n      certificates: [{{cert: {cert}, key: {key}}}]\n{auth}upstreams:\n  m:\n    hosts: [\"127.0.0.1:1\"]\n    tls: {upstream_tls}\nroutes: [{{upstream: m}}]\n"
        ),
    )
}

#[test]
fn config_check_validates_certificate_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca1 = ca("Test CA");
    let now = time::OffsetDateTime::now_utc();
    let dated = |file: &str, from: i64, to: i64| {
        let mut p = server(&["a.test"]);
        p.not_before = now + time::Duration::days(from);
        // An hour short: "expires in 9 days", whatever the second is.
        p.not_after = now + time::Duration::days(to) - time::Duration::hours(1);
        issue(d, file, &ca1, p)
    };
    let good = dated("good", -1, 365);
    let ca_file = write(d, "ca.pem", &ca1.pem());
    let upstream = &format!("{{server_name: m.test, ca: {ca_file}}}");

    let (ok, out) = config_check(d, (&good.cert, &good.key), Some(&ca_file), upstream);
    assert!(ok && !out.contains("warning"), "{out}");

    // Close to expiry: valid, with a warning naming the key and the date.
    let soon = dated("soon", -1, 10);
    let (ok, out) = config_check(d, (&soon.cert, &soon.key), None, upstream);
    assert!(ok, "{out}");
    assert!(
        out.contains("modelgate: warning: listeners[0].tls.certificates[0]: ")
            && out.contains("expires in 9 days"),
        "{out}"
    );

    let failing = |pair: (&str, &str), client_auth: Option<&str>, upstream: &str, want: &str| {
        let (ok, out) = config_check(d, pair, client_auth, upstream);
        assert!(!ok, "accepted; wanted `{want}`: {out}");
        assert!(out.contains(want), "wanted `{want}`: {out}");
        assert!(out.contains("test failed"), "{out}");
    };
    let good_pair = (good.cert.as_str(), good.key.as_str());
    let expired = dated("expired", -30, -1);
    let expired_pair = (expired.cert.as_str(), expired.key.as_str());
    failing(
        expired_pair,
        None,
        upstream,
        "listeners[0].tls.certificates[0]: ",
    );
    failing(expired_pair, None, upstream, "expired on");
    let early = dated("early", 2, 90);
    failing(
        (&early.cert, &early.key),
        None,
        upstream,
        "not valid before",
    );
    let other = dated("other", -1, 365);
    failing(
        (&good.cert, &other.key),
        None,
        upstream,
        "is not the private key of",
    );
    let missing = d.join("missing.key").display().to_string();
    failing((&good.cert, &missing), None, upstream, "cannot read");
    let text = write(d, "text.pem", "not a certificate\n");
    failing((&text, &good.key), None, upstream, "no PEM certificate");
    // CA bundles and upstream client certificates are checked too.
    failing(
        good_pair,
        Some(&text),
        upstream,
        "listeners[0].tls.client_auth.ca: ",
    );
    let bad_ca = format!("{{server_name: m.test, ca: {text}}}");
    failing(good_pair, None, &bad_ca, "upstreams.m.tls.ca: ");
    let expired_client = format!(
        "{{server_name: m.test, client_cert: {}, client_key: {}}}",
        expired.cert, expired.key
    );
    failing(
        good_pair,
        None,
        &expired_client,
        "upstreams.m.tls.client_cert: ",
    );
    failing(good_pair, None, &expired_client, "expired on");
    // Verification turned off passes, loudly.
    let insecure = "{server_name: m.test, insecure_skip_verify: true}";
    let (ok, out) = config_check(d, good_pair, None, insecure);
    assert!(ok, "{out}");
    assert!(
        out.contains("modelgate: warning: upstreams.m.tls.insecure_skip_verify: the certificates of pool m are NOT verified"),
        "{out}"
    );
    // OpenSSL must accept the cipher string.
    let (ok, out) = check_config(
        d,
        &format!(
            "listeners:\n  - address: \"127.0.0.1:1\"\n    tls: {{certificates: [{{cert: {}, key: {}}}], ciphers: NOPE}}\nupstreams: {{m: {{hosts: [\"127.0.0.1:1\"]}}}}\nroutes: [{{upstream: m}}]\n",
            good.cert, good.key
        ),
    );
    assert!(
        !ok && out.contains("listeners[0].tls.ciphers: OpenSSL accepts no cipher in `NOPE`"),
        "{out}"
    );
}
