//! The official `openai` Python client, streaming and not, through the real
//! gateway (script: tests/openai_sdk_check.py; `make deps` installs the SDK
//! into .venv and `make test` points MODELGATE_PYTHON at it).

mod common;

use common::*;

#[test]
fn official_openai_python_client_works_through_the_gateway() {
    let python = std::env::var("MODELGATE_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
        assert!(
            std::path::Path::new(venv).exists(),
            "the openai SDK is not installed: run `make deps` (or set MODELGATE_PYTHON)"
        );
        venv.to_string()
    });
    let up = Upstream::start("demo-model");
    let body = format!(
        "upstreams:\n  demo: {{hosts: [\"{}\"], credential: \"Bearer upstream-only\"}}\nroutes:\n  - {{path_prefix: /v1/, upstream: demo}}\n",
        up.addr
    );
    let gw = Gateway::start(&body, &[], true);
    let out = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/openai_sdk_check.py"
        ))
        .env("MODELGATE_BASE_URL", gw.url("/v1"))
        .env("MODELGATE_API_KEY", ALICE_KEY)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "openai SDK check failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
    // Every SDK call that authenticated reached the upstream with the service credential.
    let seen = up.seen();
    assert!(!seen.is_empty());
    assert!(seen
        .iter()
        .all(|r| r["headers"]["authorization"] == "Bearer upstream-only"));
}
