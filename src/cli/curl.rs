//! `sluice curl`: a request to a Knative service through its proxy, as knctl's `curl`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use sluice::knative::Visibility;
use sluice::status::IngressView;

use super::{SYSTEM_NAMESPACE, Target, http, output, proxy};

/// The label Knative puts on the ingress of a service's route.
const SERVICE_LABEL: &str = "serving.knative.dev/service";

/// Send a request to a Knative service through its proxy, as knctl's `curl` does.
///
/// Finds the ingress of the service (the one labelled serving.knative.dev/service=NAME, else
/// the one named NAME) and the proxy's URL, prints the curl command that does the same
/// (`Running: curl -sS -H 'Host: <host>' <url><path>`), then sends the request itself (no curl
/// needed) and prints the response body. Exits non-zero on a connection error or a 5xx.
///
/// Locally the URL is the listener the control plane gives its Envoys; in a cluster the
/// ingress comes from the API server and the URL from the proxy's Service, by the rules of
/// `sluice proxy url` (--local-cluster as there). With --https the
/// request goes to the HTTPS listener with the host as TLS server name, checked against the
/// Mozilla roots, or --cacert, or not at all with --insecure; the printed command then
/// resolves the host to the proxy's address, so that curl sends the same server name.
#[derive(Debug, Args)]
pub struct CurlArgs {
    #[command(flatten)]
    target: Target,
    /// The Knative service.
    #[arg(long)]
    service: String,
    /// The service's namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// In a cluster: the namespace of sluice and its proxies.
    #[arg(long, default_value = SYSTEM_NAMESPACE, value_name = "NS")]
    system_namespace: String,
    /// In a cluster: take the proxy's Service as a NodePort at a node's InternalIP (minikube,
    /// kind), as `sluice proxy url --local-cluster`.
    #[arg(short, long)]
    local_cluster: bool,
    /// The request's path, with its query if any.
    #[arg(long, default_value = "/")]
    path: String,
    /// Through the internal proxy, to a cluster-local host.
    #[arg(long)]
    internal: bool,
    /// Over HTTPS, to the proxy's https port.
    #[arg(long)]
    https: bool,
    /// PEM file of the CAs that may sign the service's certificate (with --https).
    #[arg(long, requires = "https", conflicts_with = "insecure")]
    cacert: Option<PathBuf>,
    /// Accept any certificate (with --https).
    #[arg(short = 'k', long, requires = "https")]
    insecure: bool,
}

pub async fn run(args: CurlArgs) -> anyhow::Result<()> {
    let path = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let backend = args.target.connect(&args.system_namespace).await?;
    let ingresses = backend.ingresses(Some(&args.namespace)).await?;
    let ingress = find_ingress(&ingresses, &args.namespace, &args.service)?;
    let host = pick_host(ingress, args.internal)?;
    let proxy_name = if args.internal {
        "knative-internal-proxy"
    } else {
        "knative-external-proxy"
    };
    let port_name = if args.https { "https" } else { "http" };
    let endpoint = backend
        .endpoint(proxy_name, port_name, args.local_cluster)
        .await?;
    let tls = if args.https {
        Some(http::Tls {
            server_name: host.to_owned(),
            config: http::client_config(args.cacert.as_deref(), args.insecure)?,
        })
    } else {
        None
    };
    let command = command_line(
        host,
        &endpoint,
        &path,
        args.cacert.as_deref(),
        args.insecure,
    );
    output::write_stdout(format!("Running: {command}\n").as_bytes())?;
    let url = format!("{}{path}", endpoint.url());
    let reply = http::get(&endpoint.address, host, &path, tls.as_ref())
        .await
        .with_context(|| {
            format!(
                "the request to {url} for {host} got no response; is an Envoy serving \
                 {proxy_name}? `sluice check` tells"
            )
        })?;
    output::write_stdout(&reply.body)?;
    if reply.status.is_server_error() {
        bail!(
            "{url} answered {} for {host}; `sluice get ingress -n {}` and `sluice check` show \
             what is not ready",
            reply.status,
            args.namespace
        );
    }
    Ok(())
}

fn find_ingress<'a>(
    ingresses: &'a [IngressView],
    namespace: &str,
    service: &str,
) -> anyhow::Result<&'a IngressView> {
    let in_namespace = || ingresses.iter().filter(|i| i.namespace == namespace);
    in_namespace()
        .find(|i| i.labels.get(SERVICE_LABEL).is_some_and(|s| s == service))
        .or_else(|| in_namespace().find(|i| i.name == service))
        .with_context(|| {
            format!(
                "no ingress for Knative service {service} in namespace {namespace}: none carries \
                 the label {SERVICE_LABEL}={service} and none is named {service}; \
                 `sluice get ingress -n {namespace}` lists them"
            )
        })
}

/// The host to ask for: the first of an ExternalIP rule; with `internal`, the first of a
/// ClusterLocal rule, else of any rule (the internal proxy serves every host).
fn pick_host(ingress: &IngressView, internal: bool) -> anyhow::Result<&str> {
    let first_of = |visibility: Visibility| {
        ingress
            .rules
            .iter()
            .filter(|rule| rule.visibility == visibility)
            .find_map(|rule| rule.hosts.first())
    };
    let host = if internal {
        first_of(Visibility::ClusterLocal)
            .or_else(|| ingress.rules.iter().find_map(|rule| rule.hosts.first()))
    } else {
        first_of(Visibility::ExternalIP)
    };
    host.map(String::as_str).with_context(|| {
        if internal {
            format!("ingress {}/{} has no host", ingress.namespace, ingress.name)
        } else {
            format!(
                "ingress {}/{} has only cluster-local hosts; pass --internal",
                ingress.namespace, ingress.name
            )
        }
    })
}

/// The curl command that sends the same request. Over HTTPS it resolves the host to the
/// proxy, so that curl sends the host as TLS server name as this command does.
fn command_line(
    host: &str,
    endpoint: &proxy::Endpoint,
    path: &str,
    cacert: Option<&std::path::Path>,
    insecure: bool,
) -> String {
    let mut words = vec![
        "curl".to_owned(),
        "-sS".to_owned(),
        "-H".to_owned(),
        quote(&format!("Host: {host}")),
    ];
    let url = if endpoint.scheme == "https" {
        let (ip, port) = endpoint
            .address
            .rsplit_once(':')
            .unwrap_or((&endpoint.address, "443"));
        words.push("--resolve".to_owned());
        words.push(quote(&format!("{host}:{port}:{ip}")));
        if let Some(cacert) = cacert {
            words.push("--cacert".to_owned());
            words.push(quote(&cacert.display().to_string()));
        }
        if insecure {
            words.push("-k".to_owned());
        }
        format!("https://{host}:{port}{path}")
    } else {
        format!("{}{path}", endpoint.url())
    };
    words.push(quote(&url));
    words.join(" ")
}

/// `word` as one shell word: as is when it holds nothing a shell would interpret.
fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:%@+,=~[]".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(scheme: &'static str, address: &str) -> proxy::Endpoint {
        proxy::Endpoint {
            scheme,
            address: address.to_owned(),
        }
    }

    #[test]
    fn the_command_line_is_what_the_issue_shows() {
        assert_eq!(
            command_line(
                "hello.default.example.com",
                &endpoint("http", "127.0.0.1:8080"),
                "/",
                None,
                false
            ),
            "curl -sS -H 'Host: hello.default.example.com' http://127.0.0.1:8080/"
        );
        assert_eq!(
            command_line(
                "hello.default.example.com",
                &endpoint("http", "127.0.0.1:8080"),
                "/a?b=1&c",
                None,
                false
            ),
            "curl -sS -H 'Host: hello.default.example.com' 'http://127.0.0.1:8080/a?b=1&c'"
        );
    }

    #[test]
    fn over_https_curl_resolves_the_host_to_the_proxy() {
        assert_eq!(
            command_line(
                "secure.example.com",
                &endpoint("https", "127.0.0.1:8443"),
                "/",
                Some(std::path::Path::new("ca.pem")),
                false
            ),
            "curl -sS -H 'Host: secure.example.com' --resolve secure.example.com:8443:127.0.0.1 \
             --cacert ca.pem https://secure.example.com:8443/"
        );
    }

    #[test]
    fn quoting_survives_a_single_quote() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
