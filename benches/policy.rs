//! Policy evaluation per call: a 50-rule policy over a typical chat body,
//! where no rule holds (the worst case: every rule is tried), with and
//! without prompt conditions, and the injection screen on a 1 KB prompt;
//! reading a body's features in one pass and as a `serde_json::Value` (the
//! fallback), for that body and a 32-turn chat history.
//!
//! cargo bench --bench policy

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use modelgate::policy::features::Features;
use modelgate::policy::rules::{KnownNames, Policy, RuleConfig};
use modelgate::policy::screen::Screen;
use modelgate::policy::CallView;

/// 50 rules mixing every condition kind, none of which holds for `body()`.
fn fifty_rules(with_prompt: bool) -> Vec<RuleConfig> {
    let mut yaml = String::new();
    for i in 0..50 {
        let when = match i % 10 {
            0 => format!("{{clients: [client-{i}]}}"),
            1 => format!("{{groups: [group-{i}], tools: true}}"),
            2 => format!("{{paths: \"/v1/embeddings/{i}\"}}"),
            3 => format!("{{models: [\"gpt-{i}-*\", \"o{i}*\"]}}"),
            4 => "{max_tokens_over: 100000}".to_string(),
            5 => format!("{{stream: true, groups: [group-{i}]}}"),
            6 if with_prompt => format!("{{prompt_matches: '(?i)project\\s+code{i}'}}"),
            7 if with_prompt => format!("{{prompt_contains: [secret-{i}, \"classified {i}\"]}}"),
            8 if with_prompt && i == 48 => "{prompt_injection: true}".to_string(),
            _ => format!("{{clients: [client-{i}], models: \"x-{i}\"}}"),
        };
        yaml.push_str(&format!(
            "- {{name: rule-{i}, when: {when}, action: deny}}\n"
        ));
    }
    serde_yaml::from_str(&yaml).unwrap()
}

fn policy(with_prompt: bool) -> Policy {
    let known = KnownNames {
        clients: Default::default(),
        groups: Default::default(),
        open: true,
        approval: true,
    };
    Policy::compile("bench", &fifty_rules(with_prompt), &known, |_| None).unwrap()
}

fn body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "llama-3-8b",
        "stream": false,
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for the support team."},
            {"role": "user", "content": "Summarise the attached ticket and suggest a polite reply. The customer says the invoice total looks wrong after the last upgrade."}
        ]
    }))
    .unwrap()
}

/// A chat body with 32 turns of history and a tool (about 5.5 KiB).
fn history() -> Vec<u8> {
    let turns: Vec<serde_json::Value> = (0..32)
        .map(|i| {
            serde_json::json!({
                "role": if i % 2 == 0 { "user" } else { "assistant" },
                "content": format!("Turn {i}: the customer asks about invoice {i} again, and the numbers \
                    in the last two statements still do not match the contract's rate card.")
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "model": "llama-3-8b",
        "stream": true,
        "max_tokens": 512,
        "tools": [{"type": "function", "function": {"name": "lookup_invoice",
            "description": "Find an invoice by number", "parameters": {"type": "object",
            "properties": {"number": {"type": "string"}}}}}],
        "messages": turns,
    }))
    .unwrap()
}

fn evaluation(c: &mut Criterion) {
    let body = body();
    let groups = vec!["analysts".to_string(), "support".to_string()];
    let call = CallView {
        client: "alice",
        groups: &groups,
        path: "/v1/chat/completions",
        model: Some("llama-3-8b"),
        body: &body,
        features: None,
    };
    let screen = Screen::builtin();
    let mut g = c.benchmark_group("policy");
    let caller_only = policy(false);
    g.bench_function("50_rules_no_prompt_conditions", |b| {
        b.iter(|| {
            black_box(
                caller_only
                    .evaluate(black_box(&call), Some(&screen))
                    .rule
                    .is_none(),
            )
        })
    });
    let with_prompt = policy(true);
    assert!(with_prompt.evaluate(&call, Some(&screen)).rule.is_none());
    g.bench_function("50_rules_with_prompt_regex_terms_and_screen", |b| {
        b.iter(|| {
            black_box(
                with_prompt
                    .evaluate(black_box(&call), Some(&screen))
                    .rule
                    .is_none(),
            )
        })
    });
    let history = history();
    for (name, body) in [("chat_body", &body), ("32_turn_history", &history)] {
        let f = Features::of(body);
        assert!(f.json);
        assert_eq!(f, Features::of_value(body));
        g.bench_function(format!("features_of_{name}"), |b| {
            b.iter(|| black_box(Features::of(black_box(body))))
        });
        g.bench_function(format!("features_of_value_{name}"), |b| {
            b.iter(|| black_box(Features::of_value(black_box(body))))
        });
    }
    let prompt: String = "Please review the quarterly numbers and draft a short, friendly summary for the leadership team. "
        .repeat(11)[..1024]
        .to_string();
    g.bench_function("screen_1KiB_prompt", |b| {
        b.iter(|| black_box(screen.scan(black_box(&prompt))))
    });
    g.finish();
}

criterion_group!(benches, evaluation);
criterion_main!(benches);
