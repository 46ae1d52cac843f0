//! Knative's ingress conformance suite (knative.dev/networking `test/conformance/ingress/`),
//! ported to sluice against a real Envoy, once for both of sluice's sources. Each upstream case
//! is a `pub async fn(Target)` named after the case in `run.go` (`dispatch/percentage` →
//! `dispatch_percentage`). `tests/conformance.rs` runs every case in file mode and
//! `tests/kube/conformance.rs` in Kubernetes mode, each over SotW and delta ADS;
//! [`for_each_conformance_case!`] lists them. `docs/conformance.md` is the table of cases.
//!
//! Every case starts its own "cluster" ([`Env`]: sluice, one Envoy on free loopback ports, and
//! a manifest directory or a namespace in the API server) and deploys in-process stand-ins for
//! the suite's test images (`support::images`) behind Services, with the same ingress shapes,
//! request counts and tolerances as upstream. Upstream's parallel subtests run concurrently
//! within the case.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;

use super::{
    APP_PROTOCOL_H2C, CLUSTER_SUFFIX, Env, HttpClient, PORT_NAME_H2C, PORT_NAME_HTTP1,
    SERVICE_DOMAIN, Service, Target, knative_hash, path_to, rand_below, runtime_request, split_to,
    ws_round_trip,
};
use crate::support::client;
use crate::support::images::{HASH_HEADER, PROBE_HEADER, PROBE_VALUE, PingClient, PingStream};
use crate::support::manifests::{CLASS_ANNOTATION, HttpPath, Rule, Split};
use crate::support::tls::https_get;
use crate::support::{secs, within};

/// Calls macro `$then` with the name of every case.
macro_rules! for_each_conformance_case {
    ($then:ident) => {
        $then! {
            basics,
            basics_http2,
            grpc,
            grpc_split,
            headers_pre_split,
            headers_post_split,
            headers_probe,
            headers_tags,
            hosts_multiple,
            dispatch_path,
            dispatch_percentage,
            dispatch_path_and_percentage,
            dispatch_rule,
            retry,
            timeout,
            update,
            visibility,
            visibility_split,
            visibility_path,
            ingressclass,
            websocket,
            websocket_split,
            host_rewrite,
            tls,
            httpoption,
        }
    };
}

/// `header.RouteTagKey`.
const ROUTE_TAG_HEADER: &str = "Knative-Serving-Tag";

// ---------------------------------------------------------------------------------------------
// basic.go

/// Upstream `basics` (basic.go, `TestBasics`): a no-frills Ingress exposes a Service through
/// the public load balancer.
pub async fn basics(target: Target) {
    let env = Env::start(target, "basics").await;
    let service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let host = env.domain(&service.name);
    env.create_ingress_ready(vec![Rule::external(&[&host]).path(path_to(&service))])
        .await;

    env.expect_runtime(&host, "/", &[]).await;
    env.finish();
}

/// Upstream `basics/http2` (basic.go, `TestBasicsHTTP2`): the same Ingress over a Service port
/// named `h2c` with `appProtocol: kubernetes.io/h2c`; the backend sees HTTP/2.
pub async fn basics_http2(target: Target) {
    let env = Env::start(target, "basics-http2").await;
    let service = env
        .create_runtime_service(PORT_NAME_H2C, Some(APP_PROTOCOL_H2C))
        .await;
    let host = env.domain(&service.name);
    env.create_ingress_ready(vec![Rule::external(&[&host]).path(path_to(&service))])
        .await;

    let info = env.expect_runtime(&host, "/", &[]).await;
    assert_eq!(
        info.request.proto_major, 2,
        "ProtoMajor seen by the h2c backend = {}, wanted 2: {info:?}",
        info.request.proto_major
    );
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// grpc.go

/// Sends a `ping -N` message on `stream` and checks the echo is `ping -N<suffix>`
/// (`checkGRPCRoundTrip`).
async fn check_grpc_round_trip(stream: &mut PingStream, suffix: &str) {
    let message = format!("ping -{}", rand_below(1000));
    let got = stream
        .round_trip(&message)
        .await
        .unwrap_or_else(|e| panic!("gRPC round trip of {message:?}: {e}"));
    assert_eq!(
        got,
        format!("{message}{suffix}"),
        "Recv() after Send({message:?})"
    );
}

/// The suffix the backend of a fresh stream appends (`findGRPCSuffix`).
async fn find_grpc_suffix(stream: &mut PingStream) -> String {
    let message = format!("ping -{}", rand_below(1000));
    let got = stream
        .round_trip(&message)
        .await
        .unwrap_or_else(|e| panic!("gRPC round trip of {message:?}: {e}"));
    let suffix = got
        .strip_prefix(&message)
        .unwrap_or_else(|| panic!("Recv() = {got:?}, wanted prefix {message:?}"));
    suffix.trim().to_string()
}

/// Upstream `grpc` (grpc.go, `TestGRPC`): a bidirectional gRPC stream of 100 messages through
/// a simple Ingress, each echoed with the backend's suffix.
pub async fn grpc(target: Target) {
    const SUFFIX: &str = "- pong";
    let env = Env::start(target, "grpc").await;
    let service = env.create_grpc_service(SUFFIX).await;
    let domain = env.domain(&service.name);
    env.create_ingress_ready(vec![Rule::external(&[&domain]).path(path_to(&service))])
        .await;

    // grpc-go's `passthrough:///domain:80` sends `:authority: domain:80`.
    let mut client = PingClient::connect(env.stack.http_addr(), &format!("{domain}:80"))
        .await
        .unwrap_or_else(|e| panic!("Dial() = {e}"));
    let mut stream = client
        .ping_stream()
        .await
        .unwrap_or_else(|e| panic!("PingStream() = {e}"));
    for _ in 0..100 {
        check_grpc_round_trip(&mut stream, SUFFIX).await;
    }
    assert_eq!(
        service.image.requests(),
        1,
        "all 100 messages travel on one stream (one request to the backend)"
    );
    env.finish();
}

/// Upstream `grpc/split` (grpc.go, `TestGRPCSplit`): gRPC streams across a 50/50 split reach
/// both backends (at most 100 streams), each stream staying on its backend for 10 more
/// round trips.
pub async fn grpc_split(target: Target) {
    const BLUE: &str = "- blue";
    const GREEN: &str = "- green";
    let env = Env::start(target, "grpc-split").await;
    let blue = env.create_grpc_service(BLUE).await;
    let green = env.create_grpc_service(GREEN).await;
    let want = BTreeSet::from([BLUE.to_string(), GREEN.to_string()]);
    let domain = env.domain(&env.object_name());
    env.create_ingress_ready(vec![
        Rule::external(&[&domain]).path(
            HttpPath::new()
                .split(split_to(&blue).percent(50))
                .split(split_to(&green).percent(50)),
        ),
    ])
    .await;

    let mut client = PingClient::connect(env.stack.http_addr(), &format!("{domain}:80"))
        .await
        .unwrap_or_else(|e| panic!("Dial() = {e}"));
    const MAX_REQUESTS: usize = 100;
    let mut got = BTreeSet::new();
    for _ in 0..MAX_REQUESTS {
        let mut stream = client
            .ping_stream()
            .await
            .unwrap_or_else(|e| panic!("PingStream() = {e}"));
        let suffix = find_grpc_suffix(&mut stream).await;
        for _ in 0..10 {
            check_grpc_round_trip(&mut stream, &suffix).await;
        }
        got.insert(suffix);
        if got == want {
            break;
        }
    }
    assert_eq!(
        got, want,
        "(over {MAX_REQUESTS} streams) the suffixes seen across the 50/50 split"
    );
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// headers.go

/// Upstream `headers/probe` (headers.go, `TestProbeHeaders`): the data-plane contract for
/// Knative's probes. With `K-Network-Probe: probe`, `K-Network-Hash: override` comes back as the
/// ingress's hash (`ingress.ComputeHash`), and any other value comes back as sent.
pub async fn headers_probe(target: Target) {
    let env = Env::start(target, "headers-probe").await;
    let service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let host = env.domain(&service.name);
    let ingress = env
        .create_ingress_ready(vec![Rule::external(&[&host]).path(path_to(&service))])
        .await;
    let hash = knative_hash(&ingress.ingress);

    const OVERRIDE: &str = "2701a1b241db6af811992c57a5e11171847148ac3d2e1a8cc992a62f9e4fa111";
    let cases = [
        ("kingress generates hash", "override", hash.as_str()),
        ("request overrides hash", OVERRIDE, OVERRIDE),
    ];
    let checks = cases.map(|(name, sent, want)| {
        let env = &env;
        let host = &host;
        async move {
            let resp = env
                .client
                .get(
                    host,
                    "/",
                    &[(PROBE_HEADER, PROBE_VALUE), (HASH_HEADER, sent)],
                )
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(resp.status, 200, "{name}: probe status; response {resp:?}");
            assert_eq!(
                resp.header_all(HASH_HEADER),
                [want],
                "{name}: response Header[{HASH_HEADER:?}] with K-Network-Hash: {sent} sent; \
                 response {resp:?}"
            );
        }
    });
    futures::future::join_all(checks).await;
    env.finish();
}

/// Upstream `headers/tags` (headers.go, `TestTagHeaders`): a path matching
/// `Knative-Serving-Tag: the-tag` wins over the catch-all path; no, empty or another tag falls
/// through to the catch-all.
pub async fn headers_tags(target: Target) {
    const TAG: &str = "the-tag";
    const BACKEND_HEADER: &str = "Which-Backend";
    const WITH_TAG: &str = "tag";
    const WITHOUT_TAG: &str = "no-tag";
    let env = Env::start(target, "headers-tags").await;
    let service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let host = env.domain(&service.name);
    env.create_ingress_ready(vec![
        Rule::external(&[&host])
            .path(
                path_to(&service)
                    .header(ROUTE_TAG_HEADER, TAG)
                    .append_header(BACKEND_HEADER, WITH_TAG),
            )
            .path(path_to(&service).append_header(BACKEND_HEADER, WITHOUT_TAG)),
    ])
    .await;

    let not_tag = format!("not-{TAG}");
    let cases: [(&str, Option<&str>, &str); 4] = [
        ("matching tag header", Some(TAG), WITH_TAG),
        ("no tag header", None, WITHOUT_TAG),
        ("empty tag header", Some(""), WITHOUT_TAG),
        ("non-matching tag header", Some(&not_tag), WITHOUT_TAG),
    ];
    let checks = cases.map(|(name, tag, want)| {
        let env = &env;
        let host = &host;
        async move {
            let headers: Vec<(&str, &str)> =
                tag.map(|t| vec![(ROUTE_TAG_HEADER, t)]).unwrap_or_default();
            let info = env
                .runtime_request(host, "/", &headers)
                .await
                .unwrap_or_else(|e| panic!("{name}: couldn't make request: {e}"));
            assert_eq!(
                info.header(BACKEND_HEADER),
                Some(want),
                "{name}: Header[{BACKEND_HEADER:?}]; the backend saw {:?}",
                info.request.headers
            );
        }
    });
    futures::future::join_all(checks).await;
    env.finish();
}

/// Upstream `headers/pre-split` (headers.go, `TestPreSplitSetHeaders`): `appendHeaders` on the
/// path reach the backend, replacing (not adding to) a client's value.
pub async fn headers_pre_split(target: Target) {
    const HEADER: &str = "Foo-Bar-Baz";
    let env = Env::start(target, "headers-pre-split").await;
    let service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let host = env.domain(&service.name);
    env.create_ingress_ready(vec![
        Rule::external(&[&host]).path(path_to(&service).append_header(HEADER, &service.name)),
    ])
    .await;

    let cases: [(&str, &[(&str, &str)]); 2] = [
        ("Check without passing header", &[]),
        ("Check with passing header", &[(HEADER, "bogus")]),
    ];
    let checks = cases.map(|(name, headers)| {
        let env = &env;
        let host = &host;
        let want = service.name.clone();
        async move {
            let info = env
                .runtime_request(host, "/", headers)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                info.header_all(HEADER),
                [want],
                "{name}: Headers[{HEADER:?}] must be set to the appendHeaders value (set, not \
                 append)"
            );
        }
    });
    futures::future::join_all(checks).await;
    env.finish();
}

/// Upstream `headers/post-split` (headers.go, `TestPostSplitSetHeaders`): each of four 25%
/// splits sets its own header value, replacing a client's; within 100 requests every split is
/// seen.
pub async fn headers_post_split(target: Target) {
    const HEADER: &str = "Foo-Bar-Baz";
    const SPLITS: u32 = 4;
    const MAX_REQUESTS: usize = 100;
    let env = Env::start(target, "headers-post-split").await;
    let mut services = Vec::new();
    for _ in 0..SPLITS {
        services.push(env.create_runtime_service(PORT_NAME_HTTP1, None).await);
    }
    let names: BTreeSet<String> = services.iter().map(|s| s.name.clone()).collect();
    let mut path = HttpPath::new();
    for service in &services {
        path = path.split(
            split_to(service)
                .append_header(HEADER, &service.name)
                .percent(100 / SPLITS),
        );
    }
    let host = env.domain(&env.object_name());
    env.create_ingress_ready(vec![Rule::external(&[&host]).path(path)])
        .await;

    let cases: [(&str, &[(&str, &str)]); 2] = [
        ("Check without passing header", &[]),
        ("Check with passing header", &[(HEADER, "bogus")]),
    ];
    let checks = cases.map(|(name, headers)| {
        let env = &env;
        let host = &host;
        let names = &names;
        async move {
            let mut seen = BTreeSet::new();
            for _ in 0..MAX_REQUESTS {
                let info = env
                    .runtime_request(host, "/", headers)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let values = info.header_all(HEADER);
                assert_eq!(
                    values.len(),
                    1,
                    "{name}: Header[{HEADER:?}] must be set once by the split, got {values:?}"
                );
                seen.insert(values[0].clone());
                if &seen == names {
                    return;
                }
            }
            panic!(
                "{name}: (over {MAX_REQUESTS} requests) Header[{HEADER:?}] values seen \
                 {seen:?}, wanted {names:?}"
            );
        }
    });
    futures::future::join_all(checks).await;
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// hosts.go

/// Upstream `hosts/multiple` (hosts.go, `TestMultipleHosts`): one rule with four hosts serves
/// each of them.
pub async fn hosts_multiple(target: Target) {
    let env = Env::start(target, "hosts-multiple").await;
    let service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let hosts: Vec<String> = [
        "foo.com",
        "www.foo.com",
        "a-b-1.something-really-really-long.knative.dev",
        "add.your.interesting.domain.here.io",
    ]
    .iter()
    .map(|host| format!("{}.{host}", service.name))
    .collect();
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    env.create_ingress_ready(vec![Rule::external(&host_refs).path(path_to(&service))])
        .await;

    for host in &hosts {
        env.expect_runtime(host, "/", &[]).await;
    }
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// path.go

/// The paths `/foo`, `/bar`, `/baz` and a catch-all, each to its own Service at 100% with a
/// split header naming it (the ingress of `TestPath` and `TestVisibilityPath`).
fn four_paths(
    rule: Rule,
    header: &str,
    foo_service: &Service,
    bar_service: &Service,
    baz_service: &Service,
    main: &Service,
) -> Rule {
    let mut rule = rule;
    for (prefix, service) in [
        ("/foo", foo_service),
        ("/bar", bar_service),
        ("/baz", baz_service),
    ] {
        rule = rule.path(
            HttpPath::prefix(prefix).split(
                split_to(service)
                    .append_header(header, &service.name)
                    .percent(100),
            ),
        );
    }
    rule.path(
        HttpPath::new().split(
            split_to(main)
                .append_header(header, &main.name)
                .percent(100),
        ),
    )
}

/// Requests each path on `host` through `client` concurrently and checks which backend's
/// header came back.
async fn check_paths(client: &HttpClient, host: &str, header: &str, cases: &[(&str, &str)]) {
    let checks = cases.iter().map(|(path, want)| async move {
        // `http://host` + "" is a request for `/`.
        let request_path = if path.is_empty() { "/" } else { path };
        let info = runtime_request(client, host, request_path, &[])
            .await
            .unwrap_or_else(|e| panic!("path {path:?}: {e}"));
        assert_eq!(
            info.header(header),
            Some(*want),
            "path {path:?}: Header[{header:?}]"
        );
    });
    futures::future::join_all(checks).await;
}

/// Upstream `dispatch/path` (path.go, `TestPath`): `/foo`, `/bar`, `/baz` and the catch-all go
/// to their own backends.
pub async fn dispatch_path(target: Target) {
    const HEADER: &str = "Which-Backend";
    let env = Env::start(target, "dispatch-path").await;
    let foo_service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let bar_service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let baz_service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let main = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let host = env.domain(&main.name);
    env.create_ingress_ready(vec![four_paths(
        Rule::external(&[&host]),
        HEADER,
        &foo_service,
        &bar_service,
        &baz_service,
        &main,
    )])
    .await;

    check_paths(
        &env.client,
        &host,
        HEADER,
        &[
            ("/foo", &foo_service.name),
            ("/bar", &bar_service.name),
            ("/baz", &baz_service.name),
            ("", &main.name),
            ("/asdf", &main.name),
        ],
    )
    .await;
    env.finish();
}

/// Sends `total` RuntimeRequests for `http://{host}{path}`, 8 at a time (the suite's errgroup
/// limit), and counts the values of `header` the backends saw. Returns the counts and every
/// failed request.
async fn dispatch(
    client: &HttpClient,
    host: &str,
    path: &str,
    header: &str,
    total: usize,
) -> (BTreeMap<String, usize>, Vec<String>) {
    let outcomes: Vec<Result<String, String>> = futures::stream::iter(0..total)
        .map(|_| async {
            let info = runtime_request(client, host, path, &[]).await?;
            Ok(info.header(header).unwrap_or_default().to_string())
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut counts = BTreeMap::new();
    let mut failures = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(value) => *counts.entry(value).or_insert(0) += 1,
            Err(e) => failures.push(e),
        }
    }
    (counts, failures)
}

/// Upstream's doubling splits for ten backends: 1, 2, 4, 8, 16, 32, 37, 0, 0, 0 percent.
fn doubling_percents(n: usize) -> Vec<u32> {
    let (mut percent, mut total) = (1, 0);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(percent);
        total += percent;
        percent *= 2;
        if total + percent > 100 {
            percent = 100 - total;
        }
    }
    out
}

/// Ten runtime Services with [`doubling_percents`] splits, each split setting `header` to its
/// Service's name. Returns the Services with their percents, and the path.
async fn doubling_splits(env: &Env, header: &str) -> (Vec<(Service, u32)>, HttpPath) {
    let mut path = HttpPath::new();
    let mut services = Vec::new();
    for percent in doubling_percents(10) {
        let service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
        path = path.split(
            split_to(&service)
                .append_header(header, &service.name)
                .percent(percent),
        );
        services.push((service, percent));
    }
    (services, path)
}

/// 1,000 requests to `host` and the percentage check of `TestPercentage`: every target within
/// 10 points of its weight, 0% targets none at all.
async fn check_percentages(
    client: &HttpClient,
    host: &str,
    header: &str,
    weights: &[(Service, u32)],
) {
    const TOTAL: usize = 1000;
    const MARGIN: f64 = 10.0;
    let (counts, failures) = dispatch(client, host, "/", header, TOTAL).await;
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} requests failed; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let seen = |name: &str| counts.get(name).copied().unwrap_or(0) as f64 * 100.0 / TOTAL as f64;
    let mut problems = Vec::new();
    for (service, want) in weights {
        let (got, want) = (seen(&service.name), f64::from(*want));
        if want == 0.0 && got > 0.0 {
            problems.push(format!(
                "target {:?} received {got}% of the traffic, wanted none (0% target)",
                service.name
            ));
        } else if (got - want).abs() > MARGIN {
            problems.push(format!(
                "target {:?} received {got}%, wanted {want} +/- {MARGIN}",
                service.name
            ));
        }
    }
    let distribution: Vec<String> = weights
        .iter()
        .map(|(s, w)| format!("{w}% → {}%", seen(&s.name)))
        .collect();
    assert!(
        problems.is_empty(),
        "{}; distribution over {TOTAL} requests (weight → seen): {distribution:?}",
        problems.join("; ")
    );
}

/// Upstream `dispatch/percentage` (percentage.go, `TestPercentage`): splits of 1, 2, 4, 8, 16,
/// 32, 37, 0, 0, 0 percent over 1,000 requests, each within 10 points and 0% ones getting
/// nothing.
pub async fn dispatch_percentage(target: Target) {
    const HEADER: &str = "Foo-Bar-Baz";
    let env = Env::start(target, "dispatch-percentage").await;
    let (weights, path) = doubling_splits(&env, HEADER).await;
    assert_eq!(
        weights.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
        [1, 2, 4, 8, 16, 32, 37, 0, 0, 0]
    );
    let host = env.domain(&env.object_name());
    env.create_ingress_ready(vec![Rule::external(&[&host]).path(path)])
        .await;

    check_percentages(&env.client, &host, HEADER, &weights).await;
    for (service, weight) in &weights {
        if *weight == 0 {
            assert_eq!(
                service.image.requests(),
                0,
                "0% backend {} must receive no request at all",
                service.name
            );
        }
    }
    env.finish();
}

/// Upstream `dispatch/path_and_percentage` (path.go, `TestPathAndPercentageSplit`): `/foo`
/// split 50/50 over two backends next to a catch-all; 1,000 requests to `/foo` land on the
/// two within 15% (500 ± 150 each) and never on the catch-all.
pub async fn dispatch_path_and_percentage(target: Target) {
    const HEADER: &str = "Which-Backend";
    const TOTAL: usize = 1000;
    let env = Env::start(target, "dispatch-path-and-percentage").await;
    let foo_service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let bar_service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let main = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let host = env.domain(&main.name);
    env.create_ingress_ready(vec![
        Rule::external(&[&host])
            .path(
                HttpPath::prefix("/foo")
                    .split(
                        split_to(&foo_service)
                            .append_header(HEADER, &foo_service.name)
                            .percent(50),
                    )
                    .split(
                        split_to(&bar_service)
                            .append_header(HEADER, &bar_service.name)
                            .percent(50),
                    ),
            )
            .path(
                HttpPath::new().split(
                    split_to(&main)
                        .append_header(HEADER, &main.name)
                        .percent(100),
                ),
            ),
    ])
    .await;

    let (counts, failures) = dispatch(&env.client, &host, "/foo", HEADER, TOTAL).await;
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} requests failed; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let want_keys = BTreeSet::from([foo_service.name.clone(), bar_service.name.clone()]);
    let (half, tolerance) = (TOTAL as f64 / 2.0, TOTAL as f64 * 0.15);
    for (key, count) in &counts {
        assert!(
            want_keys.contains(key),
            "{key:?} is not among the expected header values {want_keys:?}; counts {counts:?}"
        );
        assert!(
            (*count as f64 - half).abs() <= tolerance,
            "header {key} seen {count} times, wanted in [{}, {}]; counts {counts:?}",
            half - tolerance,
            half + tolerance
        );
    }
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// rule.go

/// Upstream `dispatch/rule` (rule.go, `TestRule`): two rules with different hosts each reach
/// their own backend, identified by a path-level header.
pub async fn dispatch_rule(target: Target) {
    const HEADER: &str = "Foo-Bar-Baz";
    let env = Env::start(target, "dispatch-rule").await;
    let foo_service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let bar_service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let (foo_host, bar_host) = (env.domain(&foo_service.name), env.domain(&bar_service.name));
    env.create_ingress_ready(vec![
        Rule::external(&[&foo_host])
            .path(path_to(&foo_service).append_header(HEADER, &foo_service.name)),
        Rule::external(&[&bar_host])
            .path(path_to(&bar_service).append_header(HEADER, &bar_service.name)),
    ])
    .await;

    for (host, want) in [
        (&foo_host, &foo_service.name),
        (&bar_host, &bar_service.name),
    ] {
        let info = env.expect_runtime(host, "/", &[]).await;
        assert_eq!(
            info.header(HEADER),
            Some(want.as_str()),
            "http://{host}: Header[{HEADER:?}]"
        );
    }
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// retry.go

/// Upstream `retry` (retry.go, `TestRetry`): the ingress does not retry. The backend answers
/// 503 to its first request and 200 after: the first GET must see the 503.
pub async fn retry(target: Target) {
    let env = Env::start(target, "retry").await;
    let service = env.create_retry_service().await;
    let domain = env.domain(&service.name);
    env.create_ingress_ready(vec![Rule::external(&[&domain]).path(path_to(&service))])
        .await;

    let first = env
        .client
        .get(&domain, "/", &[])
        .await
        .unwrap_or_else(|e| panic!("first GET: {e}"));
    assert_eq!(
        first.status, 503,
        "first GET must get the backend's 503 (no automatic retry); got {first:?}"
    );
    assert_eq!(
        service.image.requests(),
        1,
        "the backend must have seen exactly the one request"
    );
    let second = env
        .client
        .get(&domain, "/", &[])
        .await
        .unwrap_or_else(|e| panic!("second GET: {e}"));
    assert_eq!(
        second.status, 200,
        "second GET must succeed; got {second:?}"
    );
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// timeout.go

/// Upstream `timeout` (timeout.go, `TestTimeout`): the ingress has no timeout. A backend that
/// waits 10 s before its response headers, and one that sends its headers and then waits 10 s
/// before the body, both answer 200.
pub async fn timeout(target: Target) {
    const DELAY: Duration = Duration::from_secs(10);
    let env = Env::start(target, "timeout").await;
    let service = env.create_timeout_service().await;
    let host = env.domain(&service.name);
    env.create_ingress_ready(vec![Rule::external(&[&host]).path(path_to(&service))])
        .await;

    let cases = [
        ("no delays is OK", Duration::ZERO, Duration::ZERO),
        ("large delay before headers is ok", DELAY, Duration::ZERO),
        ("large delay after headers is ok", Duration::ZERO, DELAY),
    ];
    let checks = cases.map(|(name, initial, delay)| {
        let env = &env;
        let host = &host;
        async move {
            let path = format!(
                "/?initialTimeout={}&timeout={}",
                initial.as_millis(),
                delay.as_millis()
            );
            let timed = env
                .client
                .get_timed(host, &path, &[])
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let resp = &timed.response;
            eprintln!(
                "timeout: {name}: status {}, head after {:?}, whole body after {:?}",
                resp.status, timed.head_after, timed.total
            );
            assert_eq!(resp.status, 200, "{name}: status; response {resp:?}");
            assert_eq!(
                resp.body,
                format!("Slept for {} milliseconds", delay.as_millis()),
                "{name}: the whole body must arrive"
            );
            // The backend really waited where it was asked to.
            assert!(
                timed.head_after >= initial,
                "{name}: headers after {:?}, before the backend's {initial:?} wait ended",
                timed.head_after
            );
            assert!(
                timed.total >= initial + delay,
                "{name}: body after {:?}, before the backend's waits ({:?}) ended",
                timed.total,
                initial + delay
            );
            if !delay.is_zero() {
                assert!(
                    timed.head_after < delay,
                    "{name}: the headers must come through before the {delay:?} wait for the \
                     body; they came after {:?}",
                    timed.head_after
                );
            }
        }
    });
    futures::future::join_all(checks).await;
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// update.go

/// `timeQuery()`: a cache-busting query.
fn time_query() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("/?time={nanos}")
}

/// What the `checkOK` prober saw.
#[derive(Debug, Default)]
struct ProberReport {
    requests: usize,
    failures: Vec<String>,
    /// The `Who-Are-You` values (versions of the programming) that answered.
    versions: BTreeSet<String>,
    /// Whether it ended because it was told to (not by its own bounds).
    stopped: bool,
}

/// `checkOK`: RuntimeRequests to `host` in a loop until `stop`, bounded by `max_requests` and
/// `max_time`.
async fn prober(
    client: HttpClient,
    host: String,
    header: &'static str,
    stop: Arc<AtomicBool>,
    max_requests: usize,
    max_time: Duration,
) -> ProberReport {
    let started = Instant::now();
    let mut report = ProberReport::default();
    for _ in 0..max_requests {
        if stop.load(Ordering::SeqCst) {
            report.stopped = true;
            break;
        }
        if started.elapsed() > max_time {
            break;
        }
        report.requests += 1;
        match runtime_request(&client, &host, &time_query(), &[]).await {
            Ok(info) => {
                report
                    .versions
                    .insert(info.header(header).unwrap_or_default().to_string());
            }
            Err(e) => report
                .failures
                .push(format!("at {:?}: {e}", started.elapsed())),
        }
        // A steady stream of requests, leaving the CPU to sluice and Envoy too.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    report
}

/// Upstream `update` (update.go, `TestUpdate`): while a prober loops on the host, 10 updates
/// change only the split's header and 10 more move the ingress to a fresh Service each time
/// (deleting the previous one once rolled out). No probe may fail, and each new version is
/// served as soon as the ingress is Ready.
pub async fn update(target: Target) {
    const HEADER: &str = "Who-Are-You";
    let env = Env::start(target, "update").await;
    let first = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let host = env.domain(&env.object_name());
    let rules = |service: &Service, sentinel: &str| {
        vec![
            Rule::external(&[&host])
                .path(HttpPath::new().split(split_to(service).append_header(HEADER, sentinel))),
        ]
    };
    let ingress = env.create_ingress_ready(rules(&first, &first.name)).await;
    let name = ingress.name().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let probe = tokio::spawn(prober(
        env.client.clone(),
        host.clone(),
        HEADER,
        stop.clone(),
        200_000,
        Duration::from_secs(240),
    ));
    // Give the prober a chance to get started.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let check_served = async |sentinel: &str, what: &str| match env
        .runtime_request(&host, &time_query(), &[])
        .await
    {
        Ok(info) if info.header(HEADER) == Some(sentinel) => {}
        Ok(info) => env.error(format!(
            "{what}: right after Ready, Header[{HEADER:?}] = {:?}, wanted {sentinel:?}",
            info.header(HEADER)
        )),
        Err(e) => env.error(format!("{what}: right after Ready: {e}")),
    };
    // First only sentinel changes.
    for i in 0..10 {
        let sentinel = env.object_name();
        env.update_ingress_ready(&name, rules(&first, &sentinel))
            .await;
        check_served(&sentinel, &format!("update {i} (same Service)")).await;
    }
    // Then varying sentinels AND fresh Services each time.
    let mut previous = first;
    for i in 0..10 {
        let sentinel = env.object_name();
        let next = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
        env.update_ingress_ready(&name, rules(&next, &sentinel))
            .await;
        check_served(
            &sentinel,
            &format!("update {} (to Service {})", 10 + i, next.name),
        )
        .await;
        // Once rolled out, tear down the previous version.
        env.delete_service(previous).await;
        previous = next;
    }
    let updates_took = started.elapsed();

    stop.store(true, Ordering::SeqCst);
    let report = within(secs(90), "the prober to stop", probe)
        .await
        .expect("the prober task panicked");
    eprintln!(
        "update: 20 updates took {updates_took:?}; the prober made {} requests and saw {} \
         versions",
        report.requests,
        report.versions.len()
    );
    assert!(
        report.failures.is_empty(),
        "{} of {} probes failed during the 20 updates ({updates_took:?}); first failures: {:?}",
        report.failures.len(),
        report.requests,
        &report.failures[..report.failures.len().min(10)]
    );
    assert!(
        report.stopped,
        "the prober hit its own bounds before the updates were done ({} requests)",
        report.requests
    );
    assert!(
        report.versions.len() >= 2,
        "the prober should have been answered by several versions; saw {:?}",
        report.versions
    );
    drop(previous);
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// visibility.go

/// `testProxyToHelloworld`: a proxy (the httpproxy image) to the private load balancer with
/// `Host: private_host`, exposed by a public ingress; a request through it reaches the private
/// backend.
async fn proxy_to_private(env: &Env, gateway: std::net::SocketAddr, private_host: &str) {
    let proxy = env.create_proxy_service(private_host, gateway).await;
    let public_host = format!("{}.publicproxy.{SERVICE_DOMAIN}", env.object_name());
    env.create_ingress_ready(vec![Rule::external(&[&public_host]).path(path_to(&proxy))])
        .await;
    let info = env.expect_runtime(&public_host, "/", &[]).await;
    assert_eq!(
        info.request.host, private_host,
        "the private backend should be reached with the private host"
    );
}

/// Upstream `visibility` (visibility.go, `TestVisibility`): a ClusterLocal ingress for the
/// fqdn, `.svc` and namespace-only forms of a private host is not served on the public load
/// balancer, and is reachable from inside the cluster (through a proxy Pod).
pub async fn visibility(target: Target) {
    let env = Env::start(target, "visibility").await;
    let service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let namespace = env.namespace();
    let private_hosts = [
        (
            "fqdn",
            format!("{}.{namespace}.svc.{CLUSTER_SUFFIX}", env.object_name()),
        ),
        ("short", format!("{}.{namespace}.svc", env.object_name())),
        ("shortest", format!("{}.{namespace}", env.object_name())),
    ];
    let hosts: Vec<&str> = private_hosts.iter().map(|(_, h)| h.as_str()).collect();
    let ingress = env
        .create_ingress_ready(vec![Rule::cluster_local(&hosts).path(path_to(&service))])
        .await;

    for host in &hosts {
        env.expect_not_public(host, "/").await;
    }
    let gateway = env.private_load_balancer(&ingress);
    let subtests = private_hosts
        .iter()
        .map(|(_, host)| proxy_to_private(&env, gateway, host));
    futures::future::join_all(subtests).await;
    env.finish();
}

/// Upstream `visibility/split` (visibility.go, `TestVisibilitySplit`): the doubling splits of
/// `dispatch/percentage` on a ClusterLocal ingress, reached through a proxy: 1,000 requests
/// within 10 points of each weight, none to 0% targets.
pub async fn visibility_split(target: Target) {
    const HEADER: &str = "Foo-Bar-Baz";
    let env = Env::start(target, "visibility-split").await;
    let (weights, path) = doubling_splits(&env, HEADER).await;
    let (name, namespace) = (env.object_name(), env.namespace());
    let private_host = format!("{name}.{namespace}.svc.{CLUSTER_SUFFIX}");
    let local = env
        .create_ingress_ready(vec![Rule::cluster_local(&[&private_host]).path(path)])
        .await;

    env.expect_not_public(&private_host, "/").await;
    let gateway = env.private_load_balancer(&local);
    let proxy = env.create_proxy_service(&private_host, gateway).await;
    let public_host = env.domain(&name);
    env.create_ingress_ready(vec![Rule::external(&[&public_host]).path(path_to(&proxy))])
        .await;

    check_percentages(&env.client, &public_host, HEADER, &weights).await;
    env.finish();
}

/// Upstream `visibility/path` (visibility.go, `TestVisibilityPath`): the path dispatch of
/// `dispatch/path` on a ClusterLocal ingress: not served publicly, and right through a proxy.
pub async fn visibility_path(target: Target) {
    const HEADER: &str = "Which-Backend";
    let env = Env::start(target, "visibility-path").await;
    let foo_service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let bar_service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let baz_service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let main = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let (name, namespace) = (env.object_name(), env.namespace());
    let private_host = format!("{name}.{namespace}.svc.{CLUSTER_SUFFIX}");
    let local = env
        .create_ingress_ready(vec![four_paths(
            Rule::cluster_local(&[&private_host]),
            HEADER,
            &foo_service,
            &bar_service,
            &baz_service,
            &main,
        )])
        .await;

    for path in ["/", "/foo", "/bar", "/baz"] {
        env.expect_not_public(&private_host, path).await;
    }
    let gateway = env.private_load_balancer(&local);
    let proxy = env.create_proxy_service(&private_host, gateway).await;
    let public_host = env.domain(&name);
    env.create_ingress_ready(vec![Rule::external(&[&public_host]).path(path_to(&proxy))])
        .await;

    check_paths(
        &env.client,
        &public_host,
        HEADER,
        &[
            ("/foo", &foo_service.name),
            ("/bar", &bar_service.name),
            ("/baz", &baz_service.name),
            ("", &main.name),
            ("/asdf", &main.name),
        ],
    )
    .await;
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// class.go

/// Upstream `ingressclass` (class.go, `TestIngressClass`): an otherwise valid ingress whose
/// class annotation is missing (`nil`), absent from an empty map (`omitted`), `incorrect` or
/// `empty` is not picked up: 2 s later it is untouched ([`Env::expect_not_picked_up`]) and its
/// host is not served.
pub async fn ingressclass(target: Target) {
    let env = Env::start(target, "ingressclass").await;
    let service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let host = env.domain(&service.name);
    // (subtest, annotations: `None` leaves `metadata.annotations` out altogether)
    type Case = (
        &'static str,
        Option<&'static [(&'static str, &'static str)]>,
    );
    let cases: [Case; 4] = [
        ("nil", None),
        ("omitted", Some(&[])),
        ("incorrect", Some(&[(CLASS_ANNOTATION, "incorrect")])),
        ("empty", Some(&[(CLASS_ANNOTATION, "")])),
    ];
    let mut names = Vec::new();
    for (case, annotations) in cases {
        let ingress = env.new_ingress(vec![Rule::external(&[&host]).path(path_to(&service))]);
        let mut value = ingress.clone().class(None).to_value();
        let metadata = value["metadata"]
            .as_object_mut()
            .expect("an ingress has metadata");
        match annotations {
            None => {
                metadata.remove("annotations");
            }
            Some(pairs) => {
                let map: serde_json::Map<String, serde_json::Value> = pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                    .collect();
                metadata.insert("annotations".into(), serde_json::Value::Object(map));
            }
        }
        env.write_ingress_value(&ingress.name, value).await;
        names.push((case, ingress.name));
    }

    // The suite looks again after its 2 s interval.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (case, name) in &names {
        env.expect_not_picked_up(case, name).await;
    }
    let resp = env
        .client
        .get(&host, "/", &[])
        .await
        .unwrap_or_else(|e| panic!("GET http://{host}: {e}"));
    assert_eq!(
        resp.status, 404,
        "no ingress of another class may be served: {resp:?}"
    );
    assert_eq!(
        service.image.requests(),
        0,
        "the backend must see no request"
    );
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// websocket.go

/// Sends `ping -N` and checks the echo is `ping -N <suffix>` (`checkWebsocketRoundTrip`).
async fn check_websocket_round_trip(ws: &mut client::WebSocket, suffix: &str) {
    let message = format!("ping -{}", rand_below(1000));
    let got = ws_round_trip(ws, &message)
        .await
        .unwrap_or_else(|e| panic!("WebSocket round trip of {message:?}: {e}"));
    assert_eq!(
        got,
        format!("{message} {suffix}"),
        "ReadMessage() after {message:?}"
    );
}

/// Upstream `websocket` (websocket.go, `TestWebsocket`): a WebSocket through a simple Ingress
/// carries 100 round trips.
pub async fn websocket(target: Target) {
    const SUFFIX: &str = "- pong";
    let env = Env::start(target, "websocket").await;
    let service = env.create_websocket_service(SUFFIX).await;
    let domain = env.domain(&service.name);
    env.create_ingress_ready(vec![Rule::external(&[&domain]).path(path_to(&service))])
        .await;

    let (mut ws, _headers) = client::websocket(env.stack.http_addr(), &domain, "/")
        .await
        .unwrap_or_else(|e| panic!("Dial() = {e}"));
    for _ in 0..100 {
        check_websocket_round_trip(&mut ws, SUFFIX).await;
    }
    env.finish();
}

/// Upstream `websocket/split` (websocket.go, `TestWebsocketSplit`): WebSockets across a 50/50
/// split reach both backends (at most 100 connections), each staying on its backend for 10
/// more round trips.
pub async fn websocket_split(target: Target) {
    const BLUE: &str = "- blue";
    const GREEN: &str = "- green";
    let env = Env::start(target, "websocket-split").await;
    let blue = env.create_websocket_service(BLUE).await;
    let green = env.create_websocket_service(GREEN).await;
    let want = BTreeSet::from([BLUE.to_string(), GREEN.to_string()]);
    let domain = env.domain(&env.object_name());
    env.create_ingress_ready(vec![
        Rule::external(&[&domain]).path(
            HttpPath::new()
                .split(split_to(&blue).percent(50))
                .split(split_to(&green).percent(50)),
        ),
    ])
    .await;

    const MAX_REQUESTS: usize = 100;
    let mut got = BTreeSet::new();
    for _ in 0..MAX_REQUESTS {
        let (mut ws, _headers) = client::websocket(env.stack.http_addr(), &domain, "/")
            .await
            .unwrap_or_else(|e| panic!("Dial() = {e}"));
        let message = format!("ping -{}", rand_below(1000));
        let echo = ws_round_trip(&mut ws, &message)
            .await
            .unwrap_or_else(|e| panic!("WebSocket round trip of {message:?}: {e}"));
        let suffix = echo
            .strip_prefix(&message)
            .unwrap_or_else(|| panic!("ReadMessage() = {echo:?}, wanted prefix {message:?}"))
            .trim()
            .to_string();
        for _ in 0..10 {
            check_websocket_round_trip(&mut ws, &suffix).await;
        }
        got.insert(suffix);
        if got == want {
            break;
        }
    }
    assert_eq!(
        got, want,
        "(over {MAX_REQUESTS} connections) the suffixes seen across the 50/50 split"
    );
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// rewrite.go

/// Upstream `host-rewrite` (rewrite.go, `TestRewriteHost`): vanity hosts on a public ingress
/// reach a ClusterLocal ingress's backend through `rewriteHost` and an ExternalName Service
/// pointing at the private load balancer.
pub async fn host_rewrite(target: Target) {
    let env = Env::start(target, "host-rewrite").await;
    let service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let (private_service, namespace) = (env.object_name(), env.namespace());
    let private_host = format!("{private_service}.{namespace}.svc.{CLUSTER_SUFFIX}");
    let local = env
        .create_ingress_ready(vec![
            Rule::cluster_local(&[&private_host]).path(path_to(&service)),
        ])
        .await;

    // Slap an ExternalName Service in front of the private load balancer.
    let gateway = env.private_load_balancer(&local);
    let (external_name, external_port) = env
        .create_external_name_service(&private_host, gateway)
        .await;
    assert_eq!(external_name, private_service);
    let hosts: Vec<String> = ["vanity.ismy.name", "vanity.isalsomy.number"]
        .iter()
        .map(|host| format!("{}.{host}", service.name))
        .collect();
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    env.create_ingress_ready(vec![
        Rule::external(&host_refs).path(
            HttpPath::new()
                .rewrite_host(&private_host)
                .split(Split::new(env.namespace(), &external_name, external_port)),
        ),
    ])
    .await;

    for host in &hosts {
        let info = env.expect_runtime(host, "/", &[]).await;
        assert_eq!(
            info.request.host, private_host,
            "http://{host}: the backend should see the rewritten host"
        );
    }
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// tls.go and httpoption.go

/// `RuntimeRequest` over HTTPS: `GET https://{host}/` on the public HTTPS listener, with SNI
/// `host`, trusting `certificate`; the runtime image's answer or what came back instead.
async fn https_runtime_request(env: &Env, host: &str, certificate: &str) -> Result<(), String> {
    let response = https_get(env.stack.sluice.https_addr(), host, certificate).await?;
    if response.status != 200 {
        return Err(format!(
            "GET https://{host}/: status {}, wanted 200; body {:?}",
            response.status, response.body
        ));
    }
    serde_json::from_str::<serde_json::Value>(&response.body)
        .map(|_| ())
        .map_err(|e| format!("GET https://{host}/: not the runtime image's JSON ({e})"))
}

/// Upstream `tls` (tls.go, `TestIngressTLS`): an ExternalIP ingress with a `spec.tls` entry for
/// its host, backed by a fresh self-signed secret, answers over HTTP and over HTTPS.
pub async fn tls(target: Target) {
    let env = Env::start(target, "tls").await;
    let service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
    let host = env.domain(&service.name);
    let (secret, certificate) = env.create_tls_secret(&[&host]).await;
    let ingress = env
        .new_ingress(vec![Rule::external(&[&host]).path(path_to(&service))])
        .tls(&[&host], env.namespace(), &secret);
    env.create_ready(ingress).await;

    env.expect_runtime(&host, "/", &[]).await;
    https_runtime_request(&env, &host, &certificate)
        .await
        .unwrap_or_else(|e| panic!("RuntimeRequest over HTTPS: {e}"));
    env.finish();
}

/// Upstream `httpoption` (httpoption.go, `TestHTTPOption`): two TLS ingresses, one with
/// `httpOption: Enabled` and one with `Redirected`. Both answer over HTTPS; plain HTTP gets 200
/// from the first and a 301 from the second (redirects not followed).
pub async fn httpoption(target: Target) {
    let env = Env::start(target, "httpoption").await;
    let mut hosts = Vec::new();
    for (option, code) in [("Enabled", 200), ("Redirected", 301)] {
        let service = env.create_runtime_service(PORT_NAME_HTTP1, None).await;
        let host = env.domain(&service.name);
        let (secret, certificate) = env.create_tls_secret(&[&host]).await;
        let ingress = env
            .new_ingress(vec![Rule::external(&[&host]).path(path_to(&service))])
            .tls(&[&host], env.namespace(), &secret)
            .http_option(option);
        env.create_ready(ingress).await;
        hosts.push((host, certificate, code, service));
    }
    for (host, certificate, code, _service) in &hosts {
        https_runtime_request(&env, host, certificate)
            .await
            .unwrap_or_else(|e| panic!("RuntimeRequest over HTTPS: {e}"));
        let response = env
            .client
            .get(host, "/", &[])
            .await
            .unwrap_or_else(|e| panic!("GET http://{host}/: {e}"));
        assert_eq!(
            response.status, *code,
            "GET http://{host}/: status {}, wanted {code}; headers {:?}",
            response.status, response.headers
        );
    }
    env.finish();
}
