//! deploy/: the Dockerfile and the Agones manifests agree with the CLI
//! they run — every flag exists, the ports are the ones the server
//! listens on, health pings come often enough, and SIGTERM's grace covers
//! the drain. (No container engine or cluster here: docs/fleet.md says
//! what was tried where.)

mod common;

use std::path::PathBuf;

use serde_yaml_ng::Value;

fn deploy(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(file: &str) -> Value {
    serde_yaml_ng::from_str(&deploy(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// `--flag value` of an argument list (`None` for a flag without one).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == name)?;
    Some(args.get(at + 1).map_or("", String::as_str))
}

fn number(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a number: {value:?}"))
}

/// The GameServer spec's checks, for the GameServer and the Fleet's template.
fn check_game_server(spec: &Value, what: &str) {
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<String> = container["args"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: no args"))
        .iter()
        .map(|a| a.as_str().expect("text args").to_owned())
        .collect();
    // Every flag is one `overlapped server` takes.
    let help = common::binary()
        .args(["server", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(arg.as_str()),
            "{what}: `overlapped server` has no {arg}"
        );
    }
    // The game port is the one it listens on.
    let addr = flag(&args, "--addr").expect("--addr");
    let game_port: u64 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        addr.starts_with("0.0.0.0:"),
        "{what}: listens on {addr}, not every address"
    );
    assert_eq!(
        number(&spec["ports"][0]["containerPort"]),
        game_port,
        "{what}"
    );
    assert_eq!(spec["ports"][0]["protocol"].as_str(), Some("TCP"), "{what}");
    // The metrics port, the probe's and the scrape's.
    let metrics = flag(&args, "--metrics-addr").expect("--metrics-addr");
    let metrics_port: u64 = metrics.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        number(&container["ports"][0]["containerPort"]),
        metrics_port,
        "{what}"
    );
    assert_eq!(
        number(&container["livenessProbe"]["httpGet"]["port"]),
        metrics_port
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(metrics_port.to_string().as_str())
    );
    // Agones is on, and pings at least twice per health period.
    assert!(flag(&args, "--agones").is_some(), "{what}: --agones");
    let ping_ms: u64 = flag(&args, "--agones-health-ms")
        .expect("--agones-health-ms")
        .parse()
        .unwrap();
    let period_ms = number(&spec["health"]["periodSeconds"]) * 1000;
    assert!(
        2 * ping_ms <= period_ms,
        "{what}: pings every {ping_ms} ms, period {period_ms} ms"
    );
    // SIGTERM's grace covers the drain and the last saves after it.
    let drain_ms: u64 = flag(&args, "--shutdown-timeout-ms")
        .expect("--shutdown-timeout-ms")
        .parse()
        .unwrap();
    let grace_ms = number(&pod["terminationGracePeriodSeconds"]) * 1000;
    assert!(
        grace_ms >= 2 * drain_ms,
        "{what}: grace {grace_ms} ms for a drain of {drain_ms} ms"
    );
    // The fleet's database comes from a Secret, not the manifest.
    assert_eq!(flag(&args, "--db"), Some("$(OVERLAPPED_DB)"), "{what}");
    assert_eq!(container["env"][0]["name"].as_str(), Some("OVERLAPPED_DB"));
    assert!(
        container["env"][0]["valueFrom"]["secretKeyRef"].is_mapping(),
        "{what}"
    );
}

#[test]
fn the_game_server_manifest_matches_the_cli() {
    let server = yaml("gameserver.yaml");
    assert_eq!(server["apiVersion"].as_str(), Some("agones.dev/v1"));
    assert_eq!(server["kind"].as_str(), Some("GameServer"));
    check_game_server(&server["spec"], "gameserver.yaml");
}

#[test]
fn the_fleet_runs_the_same_game_server() {
    let fleet = yaml("fleet.yaml");
    assert_eq!(fleet["kind"].as_str(), Some("Fleet"));
    let template = &fleet["spec"]["template"]["spec"];
    check_game_server(template, "fleet.yaml");
    assert_eq!(
        template,
        &yaml("gameserver.yaml")["spec"],
        "the fleet's template drifted"
    );
}

#[test]
fn the_autoscaler_scales_the_fleet() {
    let scaler = yaml("fleetautoscaler.yaml");
    assert_eq!(scaler["kind"].as_str(), Some("FleetAutoscaler"));
    assert_eq!(
        scaler["spec"]["fleetName"],
        yaml("fleet.yaml")["metadata"]["name"]
    );
    let buffer = &scaler["spec"]["policy"]["buffer"];
    assert!(number(&buffer["minReplicas"]) <= number(&buffer["maxReplicas"]));
    assert!(number(&buffer["bufferSize"]) <= number(&buffer["maxReplicas"]));
}

#[test]
fn the_image_runs_the_server_as_pid_one_and_not_as_root() {
    let dockerfile = deploy("Dockerfile");
    let last = |word: &str| {
        dockerfile
            .lines()
            .rfind(|l| l.starts_with(word))
            .unwrap_or_else(|| panic!("no {word}"))
            .to_owned()
    };
    // Exec form: no shell in between that would keep SIGTERM from it.
    let entrypoint = last("ENTRYPOINT");
    assert!(
        entrypoint.contains("[\"/overlapped\", \"server\"]"),
        "{entrypoint}"
    );
    assert_eq!(last("USER"), "USER nonroot");
    assert!(last("FROM").contains("distroless"), "a minimal base");
    assert!(dockerfile.contains("--features agones"));
}
