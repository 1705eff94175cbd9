//! Static checks of `docker-compose.yml` and the Prometheus and Grafana files it mounts, against
//! this workspace. No Docker needed: nothing is pulled or started.
//!
//! What is checked, one test each:
//! - every image is pinned (a tag that is not `latest`, or a digest), or the service is built
//!   here; the same for the `FROM` lines of the Dockerfiles compose builds;
//! - every published port is bound to 127.0.0.1 (and no service uses the host network);
//! - every file or directory compose refers to (bind mounts, `env_file`, build context and
//!   Dockerfile, `configs`/`secrets` files) exists, and every named volume is declared;
//! - `depends_on` names real services, with conditions those services can meet;
//! - every cartstream service (built from the repo) runs a `cartstream-*` binary this workspace
//!   builds, and every `--flag` of its command and every cartstream environment variable it sets
//!   (`KAFKA_*`, `SCHEMA_REGISTRY_*`, `SCYLLA_*`, `OBJECT_STORE_*`, `METRICS_ADDR`, `TOPIC_PREFIX`,
//!   `LOG_FORMAT`) appears in that binary's `--help`. The binaries are built (dev profile) by
//!   the test itself with `cargo build --workspace --bins`, so it never reads a stale binary;
//! - Prometheus (compose config) scrapes every service that sets `METRICS_ADDR`, on a reachable
//!   address, and scrapes no service that does not exist;
//! - Grafana: the provisioned datasource has uid `prometheus` and points at the compose Prometheus,
//!   the dashboard provider paths map onto directories of the repo, every dashboard is valid JSON
//!   with a unique uid, and every panel query uses the datasource with uid `prometheus`.
//!
//! Every test collects all the problems it finds and reports them together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

const COMPOSE_FILE: &str = "docker-compose.yml";
/// The Grafana datasource every dashboard query must use.
const DATASOURCE_UID: &str = "prometheus";
/// Tags that name a moving target even though they are not `latest`.
const FLOATING_TAGS: &[&str] = &[
    "latest",
    "stable",
    "edge",
    "nightly",
    "main",
    "master",
    "dev-latest",
];

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn images_are_pinned() {
    let mut problems = Vec::new();
    for (name, svc) in services() {
        let image = svc.get("image").and_then(Value::as_str);
        match (svc.get("build"), image) {
            // Built here: the image name is only the local tag of the build.
            (Some(_), Some(image)) if tag_of(image).is_some_and(|t| t == "latest") => problems.push(format!(
                "service `{name}`: built image tagged `{image}`; give it a tag of its own (e.g. cartstream:dev) \
                 so it is never confused with a pulled `latest`"
            )),
            (Some(_), _) => {}
            (None, None) => problems.push(format!("service `{name}` has neither `image:` nor `build:`")),
            (None, Some(image)) => {
                if let Some(why) = pin_problem(image) {
                    problems.push(format!("service `{name}`: image `{image}` {why}"));
                }
            }
        }
    }
    for dockerfile in built_dockerfiles() {
        let text = match std::fs::read_to_string(&dockerfile) {
            Ok(text) => text,
            // A missing Dockerfile is reported by `referenced_files_exist`.
            Err(_) => continue,
        };
        let mut stages = BTreeSet::new();
        for (line_no, line) in text.lines().enumerate() {
            let mut words = line.split_whitespace();
            if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
                continue;
            }
            let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
            let Some(image) = rest.first() else { continue };
            if let [_, as_kw, stage] = rest.as_slice() {
                if as_kw.eq_ignore_ascii_case("AS") {
                    stages.insert(stage.to_ascii_lowercase());
                }
            }
            if stages.contains(&image.to_ascii_lowercase()) || *image == "scratch" {
                continue;
            }
            if let Some(why) = pin_problem(image) {
                problems.push(format!(
                    "{}:{}: base image `{image}` {why}",
                    rel(&dockerfile),
                    line_no + 1
                ));
            }
        }
    }
    report("images must be pinned", problems);
}

#[test]
fn published_ports_bind_to_loopback() {
    let mut problems = Vec::new();
    for (name, svc) in services() {
        if svc.get("network_mode").and_then(Value::as_str) == Some("host") {
            problems.push(format!(
                "service `{name}` uses `network_mode: host`: its ports would listen on every interface"
            ));
        }
        for port in seq(svc.get("ports")) {
            let ok = match port {
                Value::String(s) => {
                    // ip:host:container[/proto]; without the ip, Docker listens on 0.0.0.0.
                    s.starts_with("127.0.0.1:") && s.split(':').count() == 3
                }
                Value::Object(m) => m.get("host_ip").and_then(Value::as_str) == Some("127.0.0.1"),
                _ => false,
            };
            if !ok {
                problems.push(format!(
                    "service `{name}` publishes port {port} on every interface; write it as \
                     \"127.0.0.1:HOST:CONTAINER\" (or host_ip: 127.0.0.1)"
                ));
            }
        }
    }
    report("published ports must be bound to 127.0.0.1", problems);
}

#[test]
fn referenced_files_exist() {
    let root = repo_root();
    let declared_volumes: BTreeSet<String> = compose()
        .get("volumes")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut problems = Vec::new();
    let check = |owner: &str, what: &str, path: &str| -> Option<String> {
        if path.contains('$') {
            Some(format!(
                "{owner}: {what} `{path}` uses a variable, so it cannot be checked; write it literally"
            ))
        } else if !resolve(&root, path).exists() {
            Some(format!(
                "{owner}: {what} `{path}` does not exist in the repository"
            ))
        } else {
            None
        }
    };

    for (name, svc) in services() {
        let owner = format!("service `{name}`");
        if let Some((context, dockerfile)) = build_paths(svc) {
            problems.extend(check(&owner, "build context", &context));
            problems.extend(check(&owner, "dockerfile", &dockerfile));
        }
        for mount in mounts(svc) {
            match mount.kind {
                MountKind::Bind => {
                    problems.extend(check(&owner, "bind mount source", &mount.source))
                }
                MountKind::Volume if !declared_volumes.contains(&mount.source) => {
                    problems.push(format!(
                        "{owner}: named volume `{}` is not declared under the top-level `volumes:`",
                        mount.source
                    ))
                }
                MountKind::Volume | MountKind::Other => {}
            }
        }
        for env_file in env_files(svc) {
            problems.extend(check(&owner, "env_file", &env_file));
        }
    }
    for section in ["configs", "secrets"] {
        if let Some(entries) = compose().get(section).and_then(Value::as_object) {
            for (key, entry) in entries {
                if let Some(file) = entry.get("file").and_then(Value::as_str) {
                    problems.extend(check(&format!("{section} `{key}`"), "file", file));
                }
            }
        }
    }
    report(
        "files referenced by docker-compose.yml must exist",
        problems,
    );
}

#[test]
fn depends_on_names_real_services_with_reachable_conditions() {
    let all = services();
    let mut problems = Vec::new();
    for (name, svc) in &all {
        for (dep, condition) in depends_on(svc) {
            let Some(target) = all.get(&dep) else {
                problems.push(format!(
                    "service `{name}` depends on `{dep}`, which is not a service"
                ));
                continue;
            };
            match condition.as_str() {
                "service_started" => {}
                "service_healthy" => {
                    let disabled = target
                        .get("healthcheck")
                        .and_then(|h| h.get("disable"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    if target.get("healthcheck").is_none() || disabled {
                        problems.push(format!(
                            "service `{name}` waits for `{dep}` to be healthy, but `{dep}` has no healthcheck \
                             (its image's own HEALTHCHECK is not checked here: give it one in compose)"
                        ));
                    }
                }
                "service_completed_successfully" => {
                    let restart = target
                        .get("restart")
                        .and_then(Value::as_str)
                        .unwrap_or("no");
                    if restart != "no" && !restart.starts_with("on-failure") {
                        problems.push(format!(
                            "service `{name}` waits for `{dep}` to complete, but `{dep}` has `restart: {restart}`"
                        ));
                    }
                }
                other => problems.push(format!(
                    "service `{name}` depends on `{dep}` with unknown condition `{other}`"
                )),
            }
        }
    }
    report("depends_on must be satisfiable", problems);
}

#[test]
fn cartstream_services_run_workspace_binaries_with_known_flags_and_env() {
    let workspace = workspace();
    let mut problems = Vec::new();
    let mut checked = Vec::new();

    for (name, argv) in cartstream_commands() {
        let Some(program) = argv.first() else {
            problems.push(format!(
                "service `{name}` is built from the repository but has no `command:`; name the binary it runs"
            ));
            continue;
        };
        let binary = Path::new(program)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or(program)
            .to_string();
        if !workspace.bins.contains(&binary) {
            problems.push(format!(
                "service `{name}` runs `{binary}`, which no package of the workspace builds \
                 (workspace binaries: {})",
                join(
                    workspace
                        .bins
                        .iter()
                        .filter(|b| b.starts_with("cartstream-"))
                )
            ));
            continue;
        }
        let executables = match built_binaries() {
            Ok(executables) => executables,
            Err(e) => {
                problems.push(format!("service `{name}`: cannot check `{binary}`: {e}"));
                continue;
            }
        };
        let Some(executable) = executables.get(&binary) else {
            problems.push(format!(
                "service `{name}`: `cargo build --workspace --bins` reported no executable `{binary}`"
            ));
            continue;
        };

        let args = &argv[1..];
        let subcommands: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .take_while(|a| !a.starts_with('-'))
            .collect();

        // `<bin> --help`, `<bin> sub --help`, ...: flags must be known to the deepest command;
        // an env var may belong to any command on the way (clap reads it wherever it is declared).
        let mut helps = Vec::new();
        for depth in 0..=subcommands.len() {
            match help_text(executable, &subcommands[..depth]) {
                Ok(text) => helps.push(text),
                Err(e) => {
                    problems.push(format!("service `{name}`: {e}"));
                    break;
                }
            }
        }
        if helps.len() != subcommands.len() + 1 {
            continue;
        }
        let shown = format!(
            "`{} --help`",
            std::iter::once(binary.as_str())
                .chain(subcommands.iter().copied())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let deepest = helps.last().map(String::as_str).unwrap_or_default();

        for flag in command_flags(&args[subcommands.len()..]) {
            if !mentions_word(deepest, &flag) {
                problems.push(format!(
                    "service `{name}` passes `{flag}`, which {shown} does not list"
                ));
            }
        }
        for var in env_vars(svc_of(&name))
            .into_keys()
            .filter(|k| is_cartstream_env(k))
        {
            if !helps.iter().any(|h| mentions_env(h, &var)) {
                problems.push(format!(
                    "service `{name}` sets {var}, which {shown} does not list as `[env: {var}=]`: \
                     the binary would ignore it"
                ));
            }
        }
        checked.push(name);
    }
    report(
        "cartstream services must run real binaries with real flags",
        problems,
    );
    eprintln!("checked against --help: {}", checked.join(", "));
}

#[test]
fn prometheus_scrapes_every_service_with_metrics() {
    let all = services();
    let mut problems = Vec::new();
    let (config_path, config) = prometheus_config();
    let mut targets = BTreeSet::new();
    for job in seq(config.get("scrape_configs")) {
        for sc in seq(job.get("static_configs")) {
            for t in seq(sc.get("targets")).iter().filter_map(|t| t.as_str()) {
                targets.insert(t.to_string());
            }
        }
    }

    for (name, svc) in &all {
        let Some(addr) = env_vars(svc).remove("METRICS_ADDR").flatten() else {
            continue;
        };
        if addr.eq_ignore_ascii_case("off") {
            continue;
        }
        let Some((host, port)) = addr.rsplit_once(':') else {
            problems.push(format!(
                "service `{name}`: METRICS_ADDR `{addr}` is not host:port"
            ));
            continue;
        };
        if !matches!(host, "0.0.0.0" | "[::]" | "::") {
            problems.push(format!(
                "service `{name}`: METRICS_ADDR `{addr}` listens on {host} inside the container, which \
                 Prometheus cannot reach; use 0.0.0.0:{port}"
            ));
        }
        let names = std::iter::once(name.as_str())
            .chain(svc.get("hostname").and_then(Value::as_str))
            .chain(svc.get("container_name").and_then(Value::as_str));
        if !names
            .into_iter()
            .any(|n| targets.contains(&format!("{n}:{port}")))
        {
            problems.push(format!(
                "service `{name}` serves metrics on port {port}, but {} has no target `{name}:{port}`; add\n  \
                 - job_name: <binary name>\n    static_configs:\n      - targets: [\"{name}:{port}\"]",
                rel(&config_path)
            ));
        }
    }

    for target in &targets {
        let host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h);
        let known = host == "localhost"
            || host == "127.0.0.1"
            || all.iter().any(|(n, s)| {
                n == host
                    || s.get("hostname").and_then(Value::as_str) == Some(host)
                    || s.get("container_name").and_then(Value::as_str) == Some(host)
            });
        if !known {
            problems.push(format!(
                "{} scrapes `{target}`, but no compose service is called `{host}`",
                rel(&config_path)
            ));
        }
    }
    report(
        "Prometheus must scrape every service with metrics",
        problems,
    );
}

#[test]
fn grafana_provisioning_and_dashboards_are_consistent() {
    let all = services();
    let mut problems = Vec::new();
    let Some((grafana_name, grafana)) = all.iter().find(|(_, s)| {
        s.get("image")
            .and_then(Value::as_str)
            .is_some_and(|i| i.starts_with("grafana/grafana"))
    }) else {
        panic!("no grafana/grafana service in {COMPOSE_FILE}");
    };
    let provisioning_in_container = env_vars(grafana)
        .remove("GF_PATHS_PROVISIONING")
        .flatten()
        .unwrap_or_else(|| "/etc/grafana/provisioning".into());
    let Some(provisioning) = host_path_in(grafana, &provisioning_in_container) else {
        panic!(
            "service `{grafana_name}` mounts nothing from the repository at {provisioning_in_container}"
        );
    };

    // Datasources.
    let mut uids = BTreeSet::new();
    for file in yaml_files(&provisioning.join("datasources")) {
        let doc = load_yaml(&file);
        for ds in seq(doc.get("datasources")) {
            let uid = ds.get("uid").and_then(Value::as_str).unwrap_or_default();
            let ds_name = ds.get("name").and_then(Value::as_str).unwrap_or("?");
            if uid.is_empty() {
                problems.push(format!(
                    "{}: datasource `{ds_name}` has no uid; dashboards refer to datasources by uid",
                    rel(&file)
                ));
            }
            uids.insert(uid.to_string());
            if let Some(url) = ds.get("url").and_then(Value::as_str) {
                let host = url
                    .split("://")
                    .nth(1)
                    .and_then(|rest| rest.split(['/', ':']).next())
                    .unwrap_or_default();
                if !all.contains_key(host) {
                    problems.push(format!(
                        "{}: datasource `{ds_name}` points at {url}, but `{host}` is not a compose service",
                        rel(&file)
                    ));
                }
            }
        }
    }
    if !uids.contains(DATASOURCE_UID) {
        problems.push(format!(
            "no provisioned datasource has uid `{DATASOURCE_UID}` (under {})",
            rel(&provisioning.join("datasources"))
        ));
    }

    // Dashboard providers -> directories of the repository.
    let mut dashboard_dirs = BTreeSet::new();
    for file in yaml_files(&provisioning.join("dashboards")) {
        let doc = load_yaml(&file);
        for provider in seq(doc.get("providers")) {
            let Some(path) = provider
                .get("options")
                .and_then(|o| o.get("path"))
                .and_then(Value::as_str)
            else {
                problems.push(format!("{}: a provider has no options.path", rel(&file)));
                continue;
            };
            match host_path_in(grafana, path) {
                Some(dir) if dir.is_dir() => {
                    dashboard_dirs.insert(dir);
                }
                Some(dir) => problems.push(format!(
                    "{}: provider path {path} is {} in the repository, which is not a directory",
                    rel(&file),
                    rel(&dir)
                )),
                None => problems.push(format!(
                    "{}: provider path {path} is not mounted from the repository into `{grafana_name}`",
                    rel(&file)
                )),
            }
        }
    }
    if dashboard_dirs.is_empty() {
        problems.push("no dashboard provider points at a directory of the repository".into());
    }
    if let Some(home) = env_vars(grafana)
        .remove("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        .flatten()
    {
        if !host_path_in(grafana, &home).is_some_and(|p| p.is_file()) {
            problems.push(format!(
                "service `{grafana_name}`: GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is not a file \
                 mounted from the repository"
            ));
        }
    }

    // Dashboards.
    let mut seen_uids: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut count = 0;
    for dir in &dashboard_dirs {
        for file in files_with_ext(dir, &["json"]) {
            count += 1;
            let text = std::fs::read_to_string(&file).expect("read dashboard");
            let dash: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{}: not valid JSON: {e}", rel(&file)));
                    continue;
                }
            };
            match dash.get("uid").and_then(Value::as_str) {
                Some(uid) if !uid.is_empty() => {
                    if let Some(other) = seen_uids.insert(uid.to_string(), file.clone()) {
                        problems.push(format!(
                            "{}: dashboard uid `{uid}` is also used by {}",
                            rel(&file),
                            rel(&other)
                        ));
                    }
                }
                _ => problems.push(format!(
                    "{}: dashboard has no uid, so its URL changes on every provisioning",
                    rel(&file)
                )),
            }
            if dash
                .get("title")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{}: dashboard has no title", rel(&file)));
            }
            let mut panels = Vec::new();
            collect_panels(&dash, &mut panels);
            for panel in panels {
                check_panel(&file, panel, &mut problems);
            }
        }
    }
    if count == 0 {
        problems.push("the provisioned dashboard directories hold no .json dashboard".into());
    }
    report("Grafana provisioning and dashboards", problems);
}

// ---------------------------------------------------------------------------------------------
// Grafana helpers

fn collect_panels<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    for panel in seq(node.get("panels")) {
        out.push(panel);
        collect_panels(panel, out);
    }
}

fn check_panel(file: &Path, panel: &Value, problems: &mut Vec<String>) {
    let title = panel
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("(untitled)");
    let panel_ds = panel.get("datasource");
    for target in seq(panel.get("targets")) {
        let ref_id = target.get("refId").and_then(Value::as_str).unwrap_or("?");
        let ds = target.get("datasource").or(panel_ds);
        let uid = match ds {
            Some(Value::Object(m)) => m.get("uid").and_then(Value::as_str),
            // A bare string is a datasource *name* (old schema): it breaks when names differ.
            _ => None,
        };
        if uid != Some(DATASOURCE_UID) {
            problems.push(format!(
                "{}: panel `{title}` query {ref_id} uses datasource {}; use {{\"type\": \"prometheus\", \
                 \"uid\": \"{DATASOURCE_UID}\"}}",
                rel(file),
                ds.map_or_else(|| "(none)".to_string(), Value::to_string)
            ));
        }
        if target
            .get("expr")
            .and_then(Value::as_str)
            .is_none_or(|e| e.trim().is_empty())
        {
            problems.push(format!(
                "{}: panel `{title}` query {ref_id} has no expr",
                rel(file)
            ));
        }
    }
}

fn prometheus_config() -> (PathBuf, Value) {
    let all = services();
    let (name, svc) = all
        .iter()
        .find(|(_, s)| {
            s.get("image")
                .and_then(Value::as_str)
                .is_some_and(|i| i.starts_with("prom/prometheus"))
        })
        .unwrap_or_else(|| panic!("no prom/prometheus service in {COMPOSE_FILE}"));
    let in_container = command_argv(svc.get("command"))
        .iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(str::to_string))
        .unwrap_or_else(|| "/etc/prometheus/prometheus.yml".into());
    let path = host_path_in(svc, &in_container).unwrap_or_else(|| {
        panic!("service `{name}` reads {in_container}, which is not mounted from the repository")
    });
    assert!(
        path.is_file(),
        "{} (Prometheus config of `{name}`) is missing",
        rel(&path)
    );
    let config = load_yaml(&path);
    (path, config)
}

// ---------------------------------------------------------------------------------------------
// Workspace binaries and their --help

struct Workspace {
    bins: BTreeSet<String>,
}

fn workspace() -> &'static Workspace {
    static WS: OnceLock<Workspace> = OnceLock::new();
    WS.get_or_init(|| {
        let out = Command::new(cargo())
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--manifest-path",
            ])
            .arg(repo_root().join("Cargo.toml"))
            .output()
            .expect("run cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
        let bins = seq(meta.get("packages"))
            .iter()
            .flat_map(|p| seq(p.get("targets")))
            .filter(|t| seq(t.get("kind")).iter().any(|k| k == "bin"))
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        Workspace { bins }
    })
}

/// Builds the workspace's binaries (dev profile) once per test process and returns name ->
/// executable path, as cargo reports it, for those a cartstream service runs. Building rather than
/// looking for existing files means a stale binary never answers `--help`. The invocation is the
/// one of `make build` and scripts/test.sh (`cargo build --workspace --bins`), so after them it is
/// a no-op and never rebuilds a dependency with another feature set.
fn built_binaries() -> Result<&'static BTreeMap<String, PathBuf>, String> {
    static BUILT: OnceLock<Result<BTreeMap<String, PathBuf>, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let wanted: BTreeSet<String> = cartstream_commands()
                .into_iter()
                .filter_map(|(_, argv)| argv.into_iter().next())
                .filter_map(|p| {
                    Path::new(&p)
                        .file_name()
                        .and_then(|f| f.to_str())
                        .map(str::to_string)
                })
                .filter(|b| workspace().bins.contains(b))
                .collect();
            if wanted.is_empty() {
                return Ok(BTreeMap::new());
            }
            let mut cmd = Command::new(cargo());
            cmd.args([
                "build",
                "--workspace",
                "--bins",
                "--message-format=json-render-diagnostics",
            ])
            .arg("--manifest-path")
            .arg(repo_root().join("Cargo.toml"));
            eprintln!(
                "cargo build --workspace --bins, for the --help checks of {}",
                join(wanted.iter())
            );
            let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
                return Err(format!(
                    "`cargo build --workspace --bins` failed:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            let mut exes = BTreeMap::new();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Ok(msg) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if msg.get("reason").and_then(Value::as_str) != Some("compiler-artifact") {
                    continue;
                }
                let name = msg
                    .get("target")
                    .and_then(|t| t.get("name"))
                    .and_then(Value::as_str);
                let exe = msg.get("executable").and_then(Value::as_str);
                if let (Some(name), Some(exe)) = (name, exe) {
                    if wanted.contains(name) {
                        exes.insert(name.to_string(), PathBuf::from(exe));
                    }
                }
            }
            Ok(exes)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// `<exe> <subcommands..> --help`, whitespace collapsed so wrapped lines still match. Run with a
/// near-empty environment: clap shows `[env: NAME=<current value>]`, and a value set in the
/// developer's shell must not change the output.
fn help_text(exe: &Path, subcommands: &[&str]) -> Result<String, String> {
    let keep = [
        "PATH",
        "LD_LIBRARY_PATH",
        "DYLD_LIBRARY_PATH",
        "HOME",
        "TMPDIR",
    ];
    let out = Command::new(exe)
        .args(subcommands)
        .arg("--help")
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| keep.contains(&k.as_str())))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let name = exe.file_name().and_then(|f| f.to_str()).unwrap_or("?");
    let shown = std::iter::once(name)
        .chain(subcommands.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    if !out.status.success() {
        return Err(format!(
            "`{shown} --help` exited with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" "))
}

/// The `--flag` and `-f` tokens of a command line (values after `=` dropped), up to a bare `--`.
fn command_flags(args: &[String]) -> Vec<String> {
    args.iter()
        .take_while(|a| a.as_str() != "--")
        .filter(|a| {
            a.starts_with('-') && a.len() > 1 && !a[1..].starts_with(|c: char| c.is_ascii_digit())
        })
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect()
}

/// `word` occurs in `text` not as part of a longer flag (`--rate` does not match `--rate-limit`).
fn mentions_word(text: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// clap prints `[env: NAME=]` (or `[env: NAME]` with hidden values).
fn mentions_env(help: &str, var: &str) -> bool {
    let needle = format!("env: {var}");
    help.match_indices(&needle).any(|(i, _)| {
        matches!(
            help[i + needle.len()..].chars().next(),
            Some('=' | ']' | ',')
        )
    })
}

fn is_cartstream_env(name: &str) -> bool {
    ["KAFKA_", "SCHEMA_REGISTRY_", "SCYLLA_", "OBJECT_STORE_"]
        .iter()
        .any(|p| name.starts_with(p))
        || matches!(name, "METRICS_ADDR" | "TOPIC_PREFIX" | "LOG_FORMAT")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

// ---------------------------------------------------------------------------------------------
// Compose model

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ sits in the repository root")
        .to_path_buf()
}

fn rel(path: &Path) -> String {
    let root = repo_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    if let Some(rest) = path.strip_prefix("~/") {
        return PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(rest);
    }
    base.join(path)
}

/// Parses YAML with `<<` merge keys applied (compose files use them) into a JSON value.
fn load_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", rel(path)));
    let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", rel(path)));
    yaml.apply_merge()
        .unwrap_or_else(|e| panic!("{}: bad `<<` merge: {e}", rel(path)));
    serde_json::to_value(&yaml)
        .unwrap_or_else(|e| panic!("{}: not a plain string-keyed document: {e}", rel(path)))
}

fn compose() -> &'static Value {
    static COMPOSE: OnceLock<Value> = OnceLock::new();
    COMPOSE.get_or_init(|| load_yaml(&repo_root().join(COMPOSE_FILE)))
}

fn services() -> BTreeMap<String, &'static Value> {
    let services = compose()
        .get("services")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{COMPOSE_FILE} has no `services:` mapping"));
    services.iter().map(|(k, v)| (k.clone(), v)).collect()
}

fn svc_of(name: &str) -> &'static Value {
    services()
        .get(name)
        .copied()
        .unwrap_or_else(|| panic!("no service `{name}`"))
}

/// Services built from this repository, with their full command line (entrypoint + command).
fn cartstream_commands() -> Vec<(String, Vec<String>)> {
    services()
        .into_iter()
        .filter(|(_, s)| s.get("build").is_some())
        .map(|(name, s)| {
            let mut argv = command_argv(s.get("entrypoint"));
            argv.extend(command_argv(s.get("command")));
            (name, argv)
        })
        .collect()
}

/// A compose command: a list, or a string split on whitespace (compose's shell-like split; quotes
/// are not needed by any of our commands).
fn command_argv(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(items)) => items.iter().map(scalar).collect(),
        _ => Vec::new(),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn seq(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn join<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let items: Vec<&str> = items.map(String::as_str).collect();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// The environment a service sets: `NAME: value` mapping or `NAME=value` list (`None` = no value).
fn env_vars(svc: &Value) -> BTreeMap<String, Option<String>> {
    match svc.get("environment") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), if v.is_null() { None } else { Some(scalar(v)) }))
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(scalar)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (item, None),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn env_files(svc: &Value) -> Vec<String> {
    match svc.get("env_file") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.clone()),
                // Long form; an optional file (required: false) may be absent.
                Value::Object(m) if m.get("required").and_then(Value::as_bool) != Some(false) => {
                    m.get("path").and_then(Value::as_str).map(str::to_string)
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn depends_on(svc: &Value) -> Vec<(String, String)> {
    match svc.get("depends_on") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| (scalar(i), "service_started".to_string()))
            .collect(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let condition = v
                    .get("condition")
                    .and_then(Value::as_str)
                    .unwrap_or("service_started");
                (k.clone(), condition.to_string())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// (context, dockerfile) of a `build:`, both relative to the repository root; `None` when the
/// service is not built or is built from a remote context.
fn build_paths(svc: &Value) -> Option<(String, String)> {
    let (context, dockerfile) = match svc.get("build")? {
        Value::String(ctx) => (ctx.clone(), None),
        Value::Object(m) => (
            m.get("context")
                .and_then(Value::as_str)
                .unwrap_or(".")
                .to_string(),
            m.get("dockerfile")
                .and_then(Value::as_str)
                .map(str::to_string),
        ),
        _ => return None,
    };
    if context.contains("://") || context.starts_with("git@") {
        return None;
    }
    let dockerfile = dockerfile.unwrap_or_else(|| "Dockerfile".into());
    let dockerfile = Path::new(&context).join(dockerfile).display().to_string();
    Some((context, dockerfile))
}

fn built_dockerfiles() -> BTreeSet<PathBuf> {
    services()
        .values()
        .filter_map(|s| build_paths(s))
        .map(|(_, d)| repo_root().join(d))
        .collect()
}

#[derive(Debug, PartialEq)]
enum MountKind {
    Bind,
    Volume,
    Other,
}

struct Mount {
    kind: MountKind,
    /// Host path (bind, as written) or volume name.
    source: String,
    target: String,
}

fn mounts(svc: &Value) -> Vec<Mount> {
    seq(svc.get("volumes"))
        .iter()
        .filter_map(|v| match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                if parts.len() < 2 {
                    // Anonymous volume: just a container path.
                    return Some(Mount {
                        kind: MountKind::Other,
                        source: String::new(),
                        target: s.clone(),
                    });
                }
                let source = parts[0];
                let is_path =
                    source.starts_with('.') || source.starts_with('/') || source.starts_with('~');
                Some(Mount {
                    kind: if is_path {
                        MountKind::Bind
                    } else {
                        MountKind::Volume
                    },
                    source: source.to_string(),
                    target: parts[1].to_string(),
                })
            }
            Value::Object(m) => {
                let kind = match m.get("type").and_then(Value::as_str) {
                    Some("bind") => MountKind::Bind,
                    Some("volume") => MountKind::Volume,
                    _ => MountKind::Other,
                };
                let source = m
                    .get("source")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let target = m
                    .get("target")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if kind == MountKind::Volume && source.is_empty() {
                    return None;
                }
                Some(Mount {
                    kind,
                    source,
                    target,
                })
            }
            _ => None,
        })
        .collect()
}

/// The repository path that `container_path` shows inside `svc`, through its bind mounts (the
/// deepest mount wins, as in the container).
fn host_path_in(svc: &Value, container_path: &str) -> Option<PathBuf> {
    let root = repo_root();
    mounts(svc)
        .into_iter()
        .filter(|m| m.kind == MountKind::Bind)
        .filter_map(|m| {
            let target = m.target.trim_end_matches('/');
            let rest = container_path.strip_prefix(target)?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            let host = resolve(&root, &m.source);
            let host = if rest.is_empty() {
                host
            } else {
                host.join(rest.trim_start_matches('/'))
            };
            Some((target.len(), host))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, host)| host)
}

fn files_with_ext(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| exts.contains(&e))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, &["yml", "yaml"])
}

// ---------------------------------------------------------------------------------------------
// Images

/// The tag of an image reference, if it has one (`host:5000/repo` has none).
fn tag_of(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split_once(':').map(|(_, tag)| tag)
}

fn pin_problem(image: &str) -> Option<String> {
    if image.contains('$') {
        return Some("uses a variable; pin the version literally".into());
    }
    if image.contains("@sha256:") {
        return None;
    }
    match tag_of(image) {
        None => Some("has no tag (that means `latest`); pin a version".into()),
        Some(tag) if FLOATING_TAGS.contains(&tag) => {
            Some(format!("uses the moving tag `{tag}`; pin a version"))
        }
        Some(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------

fn report(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s) in {COMPOSE_FILE} and the files it uses:\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
}
