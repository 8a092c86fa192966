#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! The deployment files, checked offline: the Compose file against the Compose
//! specification's schema, the Kubernetes manifests against the Kubernetes schemas,
//! `nginx -t` on the load balancer config, `systemd-analyze verify` on the unit, and the
//! names and numbers the runbook and the drain depend on. (No Docker engine or cluster
//! here: what is not run is said in the README.)

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Worker, assert_ok, repo};
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A tool from the project's validator venv (scripts/ensure-test-deps.sh makes it).
fn tool(name: &str) -> Command {
    let path = repo().join(".tools/venv/bin").join(name);
    assert!(path.exists(), "{} missing: run scripts/ensure-test-deps.sh", path.display());
    Command::new(path)
}

/// YAML (all documents) as JSON, through the venv's YAML parser (merge keys resolved).
fn yaml(path: &Path) -> Vec<Value> {
    let script = "import json,sys\nfrom ruamel.yaml import YAML\n\
                  print(json.dumps(list(YAML(typ='safe', pure=True).load_all(open(sys.argv[1])))))";
    let out = tool("python").args(["-c", script]).arg(path).output().unwrap();
    assert_ok(&out, &format!("parsing {}", path.display()));
    serde_json::from_slice(&out.stdout).unwrap()
}

// ---------------------------------------------------------------------------------------

#[test]
fn compose_file_follows_the_compose_spec_and_the_runbook_names() {
    let file = repo().join("docker-compose.yml");
    let out = tool("check-jsonschema").args(["--builtin-schema", "vendor.compose-spec"]).arg(&file).output().unwrap();
    assert_ok(&out, "compose schema check");

    let compose = &yaml(&file)[0];
    let services = compose["services"].as_object().unwrap();
    let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["grafana", "nginx", "postgres", "prometheus", "redis", "worker-1", "worker-2", "worker-3"]);
    for (service, s) in services {
        let container = s["container_name"].as_str().unwrap();
        assert_eq!(container, format!("falcon-{service}"));
        assert!(s["deploy"]["resources"]["limits"]["memory"].is_string(), "{service} has no memory limit");
    }
    for (i, w) in ["worker-1", "worker-2", "worker-3"].iter().enumerate() {
        let s = &services[*w];
        assert_eq!(s["environment"]["WORKER_ID"], *w);
        assert_eq!(s["ports"][0], format!("{}:8000", 8000 + i), "the runbook curls localhost:800{i}");
        assert_eq!(s["depends_on"]["redis"]["condition"], "service_healthy");
        assert_eq!(s["depends_on"]["postgres"]["condition"], "service_healthy");
        assert_eq!(s["environment"]["DEBUG_MEMORY_GROWTH"], "${DEBUG_MEMORY_GROWTH:-false}");
        assert!(s["environment"]["MODEL_PATH"].is_null(), "workers serve the built-in model");
        // The drain (30 s) must finish before Docker's SIGKILL.
        assert_eq!(s["stop_grace_period"], "35s");
        assert!(s["healthcheck"]["test"].to_string().contains("healthcheck"));
    }
    for w in ["worker-1", "worker-2", "worker-3"] {
        assert_eq!(services["nginx"]["depends_on"][w]["condition"], "service_healthy");
    }
    let redis = services["redis"]["command"].to_string();
    assert!(redis.contains("\"256mb\"") && redis.contains("\"volatile-lru\""), "{redis}");
    assert!(services["postgres"]["healthcheck"]["test"].to_string().contains("pg_isready"));
    assert_eq!(services["postgres"]["environment"]["POSTGRES_DB"], "${POSTGRES_DB:-falcon_inference}");
    assert_eq!(services["postgres"]["environment"]["POSTGRES_USER"], "${POSTGRES_USER:-falcon}");
    // Mounted files exist.
    for s in services.values() {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let v = v.as_str().unwrap();
            if let Some(local) = v.strip_prefix("./") {
                let local = local.split(':').next().unwrap();
                assert!(repo().join(local).exists(), "{local} is mounted but missing");
            }
        }
    }
}

#[test]
fn env_example_lists_every_setting_and_works_as_a_dot_env() {
    let help = crate::common::falcon().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let example = read(".env.example");
    let vars: Vec<&str> = help.split("[env: ").skip(1).map(|s| s.split(['=', ']']).next().unwrap()).collect();
    assert!(vars.len() > 40, "{vars:?}");
    for v in vars {
        let listed = example.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{v}=")));
        assert!(listed, "{v} is not in .env.example");
    }
    // Copied to .env as it is, a worker starts with it.
    let dir = crate::common::fresh_dir();
    std::fs::write(dir.path().join(".env"), &example).unwrap();
    let w = Worker::start_in(dir.path(), &[("PORT", "0"), ("HOST", "127.0.0.1")]);
    // Listening is what start_in waited for; with those settings it must also be ready.
    let port = w.addr.port().to_string();
    let ready = crate::common::falcon()
        .args(["healthcheck", "--port", &port, "--path", "/readyz", "--timeout-seconds", "10"])
        .output()
        .unwrap();
    assert_ok(&ready, "GET /readyz of a worker started with .env.example as its .env");
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_healthcheck_and_the_model_baked_in() {
    let d = read("deploy/Dockerfile");
    assert_eq!(d.lines().filter(|l| l.starts_with("FROM ")).count(), 2, "build and runtime stages");
    assert!(d.contains("cargo build --release --locked"));
    assert!(d.contains("COPY models ./models"), "the build stage has the model to embed");
    assert!(d.lines().any(|l| l.starts_with("USER ") && !l.contains("root") && !l.contains(" 0")));
    assert!(d.contains("HEALTHCHECK") && d.contains("\"healthcheck\""));
    assert!(!d.contains("MODEL_PATH"), "the image serves the built-in model");
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target"), "the build context skips target/");
}

#[test]
fn falcon_healthcheck_exits_0_on_a_healthy_worker_and_1_otherwise() {
    let w = Worker::start(&[]);
    let port = w.addr.port().to_string();
    let status = |args: &[&str]| crate::common::falcon().arg("healthcheck").args(args).status().unwrap().code();
    assert_eq!(status(&["--port", &port]), Some(0));
    assert_eq!(status(&["--port", &port, "--path", "/readyz"]), Some(0));
    assert_eq!(status(&["--port", &port, "--path", "/no-such-page"]), Some(1));
    drop(w);
    assert_eq!(status(&["--port", &port]), Some(1), "nothing listens any more");
}

// ---------------------------------------------------------------------------------------

/// The nginx config rendered for loopback by scripts/stack.sh, in a temp dir.
fn render_nginx(dir: &Path) -> PathBuf {
    let out = Command::new(repo().join("scripts/stack.sh"))
        .arg("render-nginx")
        .env("STACK_DIR", dir)
        .env("STACK_NGINX_PORT", "18080")
        .env("STACK_STATUS_PORT", "18081")
        .env("STACK_WORKER_PORTS", "18001 18002 18003")
        .output()
        .unwrap();
    assert_ok(&out, "stack.sh render-nginx");
    dir.join("nginx/nginx.conf")
}

#[test]
fn nginx_config_passes_nginx_t_and_has_what_the_runbook_and_drills_need() {
    let dir = tempfile::tempdir().unwrap();
    let conf = render_nginx(dir.path());
    let out = Command::new("nginx")
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir.path().join("nginx"))
        .output()
        .expect("nginx not found: run scripts/ensure-test-deps.sh");
    assert_ok(&out, "nginx -t");
    let rendered = std::fs::read_to_string(dir.path().join("nginx/falcon.conf")).unwrap();
    for port in ["127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003", "127.0.0.1:18080;", "127.0.0.1:18081;"] {
        assert!(rendered.contains(port), "{port} not templated");
    }

    let c = read("deploy/nginx/conf.d/falcon.conf");
    for needle in [
        "least_conn;",
        "server worker-1:8000",
        "server worker-2:8000",
        "server worker-3:8000",
        "keepalive 64;",
        "proxy_set_header X-Request-ID $request_id;",
        "proxy_set_header Connection \"\";",
        "proxy_next_upstream error timeout http_502 http_503 non_idempotent;",
        "limit_req zone=",
        "limit_conn falcon_conn",
        "location = /nginx-health",
        "listen 8080;",
        "stub_status;",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "proxy_read_timeout",
        "proxy_connect_timeout",
    ] {
        assert!(c.contains(needle), "falcon.conf lacks {needle:?}");
    }
    // The top-level file includes conf.d and nothing else of ours.
    assert!(read("deploy/nginx/nginx.conf").contains("include /etc/nginx/conf.d/*.conf;"));
}

#[test]
fn systemd_unit_verifies_and_its_stop_timeout_covers_the_drain() {
    let unit = read("deploy/systemd/falcon-inference.service");
    for key in [
        "EnvironmentFile=",
        "Restart=on-failure",
        "StandardOutput=journal",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "PrivateTmp=true",
        "ProtectHome=true",
        "User=falcon",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    let stop: u32 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .unwrap();
    assert!(stop > 30, "TimeoutStopSec {stop} must exceed GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS (30)");
    assert!(
        Command::new("systemd-analyze").arg("--version").output().is_ok(),
        "systemd-analyze not found: scripts/ensure-test-deps.sh installs it (Debian package systemd)"
    );
    // Verify against the binary built here (the unit names its installed path).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("falcon-inference.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/falcon", env!("CARGO_BIN_EXE_falcon"))).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    assert_ok(&out, "systemd-analyze verify");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.trim().is_empty(), "systemd-analyze verify complained: {said}");
}

// ---------------------------------------------------------------------------------------

#[test]
fn kubernetes_manifests_validate_against_the_schemas_and_agree_with_the_drain() {
    let base = repo().join("deploy/k8s/base");
    let kustomization = &yaml(&base.join("kustomization.yaml"))[0];
    assert_eq!(kustomization["kind"], "Kustomization");
    let mut files: Vec<PathBuf> =
        kustomization["resources"].as_array().unwrap().iter().map(|r| base.join(r.as_str().unwrap())).collect();
    files.push(base.join("secret.example.yaml"));
    for version in ["1.30.0", "1.37.0"] {
        let out = tool("kubernetes-validate").args(["--strict", "-k", version]).args(&files).output().unwrap();
        assert_ok(&out, &format!("kubernetes-validate against {version}"));
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(said.matches(" passed ").count(), files.len(), "{said}");
    }

    let docs: Vec<Value> = files.iter().flat_map(|f| yaml(f)).collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret"] {
        assert!(kinds.contains(&kind), "no {kind}: {kinds:?}");
    }
    let by_kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap();
    let pod = &by_kind("Deployment")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string());
    // The drain fits in the grace period: preStop pause + GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop: u64 = c["lifecycle"]["preStop"]["exec"]["command"][1].as_str().unwrap().parse().unwrap();
    let drain: u64 =
        by_kind("ConfigMap")["data"]["GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS"].as_str().unwrap().parse().unwrap();
    assert!(grace > pre_stop + drain, "terminationGracePeriodSeconds {grace} <= {pre_stop} + {drain}");
    // Every ConfigMap key is a setting the worker knows.
    let help = crate::common::falcon().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for key in by_kind("ConfigMap")["data"].as_object().unwrap().keys() {
        assert!(help.contains(&format!("[env: {key}")), "ConfigMap key {key} is not a worker setting");
    }
    let pdb = by_kind("PodDisruptionBudget");
    let selector = &by_kind("Deployment")["spec"]["selector"]["matchLabels"];
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(&by_kind("Service")["spec"]["selector"], selector);
    assert_eq!(by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"], "falcon-worker");
}
