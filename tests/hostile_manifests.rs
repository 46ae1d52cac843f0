//! Hostile manifests cost nothing else: an alias bomb, deeply nested JSON, a file over the size
//! limit, 10,000 documents in one file, a header value with CR/LF, a host of 10,000
//! characters and a label of 64 each get a clear error (or, when valid, are served), while what
//! was served before keeps being served. Both modes, real Envoy.

#[macro_use]
mod support;

use std::time::Duration;

use serde_json::json;
use support::manifests::{self, HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use support::{Backend, ManifestDir, Stack, poll_until};

const NS: &str = "default";
const CONVERGE: Duration = Duration::from_secs(30);

fn hello_ingress(name: &str, host: &str) -> Ingress {
    Ingress::new(NS, name).rule(
        Rule::external(&[host]).path(HttpPath::new().split(Split::new(NS, "hello", SERVICE_PORT))),
    )
}

async fn expect_served(stack: &Stack, host: &str) {
    let response = stack.get(host, "/").await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "hello"),
        "{host} is still served"
    );
}

/// Waits until sluice's log holds `needle` (its warning about a file) and returns that line.
async fn logged(stack: &Stack, needle: &str) -> String {
    let found = poll_until(CONVERGE, async || {
        stack
            .sluice
            .logs()
            .lines()
            .find(|line| line.contains(needle))
            .map(str::to_owned)
    })
    .await;
    found.unwrap_or_else(|| panic!("sluice never logged {needle:?}"))
}

async fn ingress_refused(stack: &Stack, name: &str, field: &str) -> String {
    let ready = stack
        .sluice
        .wait_ingress_ready(NS, name, "False", CONVERGE)
        .await;
    let message = ready["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains(field), "{name}: {ready}");
    message
}

async fn hostile_manifests_cost_nothing_else(delta: bool) {
    let backend = Backend::start("hello").await;
    let dir = ManifestDir::new();
    dir.write(
        "svc.yaml",
        &manifests::service_for("hello", NS, backend.port(), "http"),
    );
    dir.write(
        "hello.yaml",
        &hello_ingress("hello", "hello.example.com").to_yaml(),
    );
    let stack = Stack::start(dir.path(), delta).await;
    stack
        .sluice
        .wait_ingress_ready(NS, "hello", "True", CONVERGE)
        .await;

    // A billion laughs: ten aliases of ten aliases, nine levels deep.
    let mut bomb = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\ndata:\n");
    bomb.push_str("  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (level, previous) in ('b'..='j').zip('a'..) {
        let aliases = vec![format!("*{previous}"); 10].join(", ");
        bomb.push_str(&format!("  {level}: &{level} [{aliases}]\n"));
    }
    dir.write("bomb.yaml", &bomb);
    let line = logged(&stack, "bomb.yaml").await;
    assert!(line.contains("aliases may expand"), "{line}");

    let depth = 100_000;
    dir.write(
        "deep.json",
        &format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
    );
    let line = logged(&stack, "deep.json").await;
    assert!(line.contains("nest at most 128 levels"), "{line}");

    // Over the size limit; sparse, so it costs no disk, and sluice must not read it.
    let big = dir.path().join("big.yaml");
    std::fs::File::create(&big)
        .and_then(|file| file.set_len((256 << 20) + 1))
        .expect("make a sparse file");
    let line = logged(&stack, "big.yaml").await;
    assert!(line.contains("split it into several files"), "{line}");

    // 10,000 documents in one file are valid, and served.
    let mut many: Vec<serde_json::Value> = (0..10_000)
        .map(|n| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("filler-{n}"), "namespace": NS},
                "data": {"n": n.to_string()}})
        })
        .collect();
    many.push(hello_ingress("many", "many.example.com").to_value());
    dir.write("many.yaml", &manifests::documents(&many));
    stack
        .sluice
        .wait_ingress_ready(NS, "many", "True", CONVERGE)
        .await;
    expect_served(&stack, "many.example.com").await;

    let crlf = Ingress::new(NS, "crlf").rule(
        Rule::external(&["crlf.example.com"]).path(
            HttpPath::new()
                .append_header("x-evil", "a\r\nSet-Cookie: stolen=1")
                .split(Split::new(NS, "hello", SERVICE_PORT)),
        ),
    );
    dir.write("crlf.yaml", &crlf.to_yaml());
    ingress_refused(&stack, "crlf", "appendHeaders[\"x-evil\"]").await;

    let long_host = "ab.".repeat(3_333) + "x";
    assert_eq!(long_host.len(), 10_000);
    dir.write("long.yaml", &hello_ingress("long", &long_host).to_yaml());
    let message = ingress_refused(&stack, "long", "spec.rules[0].hosts[0]").await;
    assert!(
        message.contains("a DNS name at most 253") && message.len() < 1_000,
        "the message says why, without the whole host: {message}"
    );

    let long_label = format!("{}.example.com", "a".repeat(64));
    dir.write("label.yaml", &hello_ingress("label", &long_label).to_yaml());
    let message = ingress_refused(&stack, "label", "spec.rules[0].hosts[0]").await;
    assert!(message.contains("a DNS label at most 63"), "{message}");

    expect_served(&stack, "hello.example.com").await;
    expect_served(&stack, "many.example.com").await;
    let line = stack
        .sluice
        .logs()
        .lines()
        .find(|line| line.contains("panicked"))
        .map(str::to_owned);
    assert_eq!(line, None, "sluice did not panic");
}

in_both_modes!(hostile_manifests_cost_nothing_else);
