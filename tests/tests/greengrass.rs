//! The Greengrass component as a core device would run it: `scripts/package`
//! packages this build's bundle (`stream-manager-bundle`, the executable the
//! device zip holds) and writes the recipe; the test unpacks the zip the way
//! the nucleus does (`<artifacts-unarchived>/<component>/<version>/<zip name
//! without .zip>/`, then the recipe's `Permission`), merges a deployment's
//! configuration into the recipe's defaults, fills in the recipe variables,
//! and runs the manifest's `Setenv` and `Run` script with `sh -c` in the
//! component's work folder. The system must come up on the configured port
//! with its data in the work folder, take an append, hand every setting to
//! its processes, and stop cleanly on the nucleus's SIGTERM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value;
use stream_manager_tests::{bin, wire_client};

const COMPONENT: &str = "community.StreamManagerRs";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Packages this build's bundle for x86_64 into `dist`; the recipe.
fn package(dist: &Path) -> (Value, PathBuf) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/package"))
        .arg("x86_64")
        .env("PACKAGE_BIN", bin("stream-manager-bundle"))
        .env("DIST_DIR", dist)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/package failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let recipe_path = std::fs::read_dir(dist)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".recipe.yaml"))
        .expect("a recipe in dist");
    let recipe = serde_yaml::from_str(&std::fs::read_to_string(&recipe_path).unwrap()).unwrap();
    (recipe, recipe_path)
}

fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v:?}"))
        .to_string()
}

fn defaults(recipe: &Value) -> BTreeMap<String, String> {
    recipe["ComponentConfiguration"]["DefaultConfiguration"]
        .as_mapping()
        .expect("DefaultConfiguration")
        .iter()
        .map(|(k, v)| (text(k), text(v)))
        .collect()
}

fn manifest<'a>(recipe: &'a Value, architecture: &str) -> &'a Value {
    recipe["Manifests"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["Platform"]["architecture"].as_str() == Some(architecture))
        .unwrap_or_else(|| panic!("no manifest for {architecture}"))
}

/// The recipe variables the nucleus fills in; anything of their shape left
/// over would reach the shell unreplaced.
fn interpolate(
    s: &str,
    vars: &BTreeMap<String, String>,
    config: &BTreeMap<String, String>,
) -> String {
    let mut out = s.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    for (k, v) in config {
        out = out.replace(&format!("{{configuration:/{k}}}"), v);
    }
    for namespace in ["configuration:", "artifacts:", "work:", "kernel:", "iot:"] {
        assert!(
            !out.contains(&format!("{{{namespace}")),
            "a recipe variable is left in {out:?}"
        );
    }
    out
}

#[test]
fn the_recipe_passes_every_setting_and_matches_the_aws_defaults() {
    let dist = tempfile::tempdir().unwrap();
    let (recipe, _) = package(dist.path());
    let defaults = defaults(&recipe);
    for (name, _, _) in settings::KNOWN {
        assert!(
            defaults.contains_key(*name),
            "{name} is not in the component's configuration"
        );
    }
    assert_eq!(defaults.len(), settings::KNOWN.len(), "{defaults:#?}");
    // aws.greengrass.StreamManager's defaults for the parameters both have
    // ("" = ours is the built-in default, which equals theirs).
    let aws = [
        ("STREAM_MANAGER_STORE_ROOT_DIR", ""), // the work folder
        ("STREAM_MANAGER_SERVER_PORT", "8088"),
        ("STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH", ""), // unlimited
        ("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE", "5"),
        (
            "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES",
            "5242880",
        ),
        ("LOG_LEVEL", "INFO"),
    ];
    for (name, value) in aws {
        assert_eq!(defaults[name], value, "{name}");
    }
    // The one documented difference: AWS's `true` authenticates through
    // Greengrass IPC, which only aws.greengrass.StreamManager gets.
    assert_eq!(defaults["STREAM_MANAGER_AUTHENTICATE_CLIENT"], "false");

    let manifests = recipe["Manifests"].as_sequence().unwrap();
    assert_eq!(manifests.len(), 3);
    for (arch, gg) in [
        ("x86_64", "amd64"),
        ("aarch64", "aarch64"),
        ("armv7", "arm"),
    ] {
        let m = manifest(&recipe, gg);
        assert_eq!(m["Platform"]["os"].as_str(), Some("linux"));
        let uri = text(&m["Artifacts"][0]["URI"]);
        assert!(uri.ends_with(&format!("-{arch}.zip")), "{uri}");
        let setenv = m["Lifecycle"]["Setenv"].as_mapping().unwrap();
        for (name, _, _) in settings::KNOWN {
            assert_eq!(
                setenv.get(*name).map(text),
                Some(format!("{{configuration:/{name}}}")),
                "{gg}: {name} is not passed to the process"
            );
        }
        let script = text(&m["Lifecycle"]["Run"]["Script"]);
        let zip_stem = uri.rsplit('/').next().unwrap().trim_end_matches(".zip");
        assert!(
            script.contains(&format!(
                "{{artifacts:decompressedPath}}/{zip_stem}/stream-manager"
            )),
            "{gg}: the Run command does not point into the unpacked zip: {script}"
        );
    }
}

#[test]
fn the_component_unpacks_and_runs_as_greengrass_would() {
    let dist = tempfile::tempdir().unwrap();
    let (recipe, _) = package(dist.path());
    let version = text(&recipe["ComponentVersion"]);
    let m = manifest(&recipe, "amd64");
    let artifact = &m["Artifacts"][0];
    assert_eq!(artifact["Unarchive"].as_str(), Some("ZIP"));
    let zip_name = text(&artifact["URI"])
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let zip = dist.path().join(&zip_name);
    assert!(zip.exists(), "{} was not written", zip.display());

    // The nucleus's layout under its root.
    let gg = tempfile::tempdir().unwrap();
    let decompressed = gg
        .path()
        .join("packages/artifacts-unarchived")
        .join(COMPONENT)
        .join(&version);
    let unpacked = decompressed.join(zip_name.trim_end_matches(".zip"));
    let out = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&zip)
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Python's unzip, like Java's, keeps no mode bits: the recipe's
    // Permission is what makes the program executable.
    assert_eq!(artifact["Permission"]["Execute"].as_str(), Some("OWNER"));
    for entry in std::fs::read_dir(&unpacked).unwrap().flatten() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let work = gg.path().join("work").join(COMPONENT);
    std::fs::create_dir_all(&work).unwrap();

    // A deployment that sets every parameter (the store root stays the
    // default: the work folder).
    let port = stream_manager_tests::aws::free_port();
    let mut config = defaults(&recipe);
    let deployment = [
        ("STREAM_MANAGER_SERVER_PORT", port.to_string()),
        ("STREAM_MANAGER_METRICS_PORT", "0".into()),
        ("STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH", "2000".into()),
        ("STREAM_MANAGER_THREAD_POOL_SIZE", "3".into()),
        ("STREAM_MANAGER_SERVER_MAX_CONNECTIONS", "77".into()),
        ("STREAM_MANAGER_SERVER_MAX_FRAME_BYTES", "1048576".into()),
        (
            "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES",
            "6291456".into(),
        ),
        ("LOG_LEVEL", "DEBUG".into()),
        ("LOG_FORMAT", "json".into()),
    ];
    for (k, v) in &deployment {
        config.insert(k.to_string(), v.clone());
    }
    let vars = BTreeMap::from([
        (
            "artifacts:decompressedPath".to_string(),
            decompressed.display().to_string(),
        ),
        ("work:path".to_string(), work.display().to_string()),
    ]);
    let lifecycle = &m["Lifecycle"];
    let env: Vec<(String, String)> = lifecycle["Setenv"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (text(k), interpolate(&text(v), &vars, &config)))
        .collect();
    let script = interpolate(&text(&lifecycle["Run"]["Script"]), &vars, &config);
    let mut sm = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Up on the configured port, data in the work folder.
    let start = Instant::now();
    let mut conn = loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        if let Ok(Some(status)) = sm.try_wait() {
            panic!("the component exited: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    wire_client::hello(&mut conn);
    assert_eq!(wire_client::create(&mut conn, "gg"), 0);
    assert_eq!(
        wire_client::append(&mut conn, "gg", b"from a component").0,
        0
    );
    assert!(work.join("db").exists() || work.join("ingest.port").exists());
    assert_eq!(
        std::fs::read_to_string(work.join("ingest.port"))
            .unwrap()
            .trim(),
        port.to_string()
    );

    // Every setting reached the processes: the ingest's environment, as the
    // supervisor hands it over after validation.
    let ingest = child_named(sm.id(), "ingest").expect("an ingest process");
    let environ = std::fs::read(format!("/proc/{ingest}/environ")).unwrap();
    let environ: BTreeMap<String, String> = environ
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    for (k, v) in &deployment {
        assert_eq!(environ.get(*k), Some(v), "{k}");
    }
    assert_eq!(
        environ
            .get("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE")
            .map(String::as_str),
        Some("3"),
        "the other spelling sets the pool size"
    );
    assert_eq!(
        environ
            .get("STREAM_MANAGER_STORE_ROOT_DIR")
            .map(PathBuf::from),
        Some(work.clone())
    );

    // The nucleus stops a component with SIGTERM.
    unsafe { libc::kill(sm.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = sm.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(child_named(sm.id(), "store").is_none());
}

/// The pid of the child of `parent` whose name is `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
}

/// The systemd unit leaves S3 task input files readable wherever
/// applications put them (`/tmp`, `/home`), and starts the one program
/// both installations have.
#[test]
fn the_systemd_unit_lets_the_exporter_read_files_under_tmp_and_home() {
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/stream-manager.service")).unwrap();
    let setting = |name: &str| {
        // The last assignment wins, as in systemd.
        unit.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    assert_ne!(
        setting("PrivateTmp").as_deref(),
        Some("yes"),
        "PrivateTmp hides /tmp"
    );
    assert!(
        matches!(
            setting("ProtectHome").as_deref(),
            None | Some("no" | "read-only")
        ),
        "ProtectHome={:?} hides /home",
        setting("ProtectHome")
    );
    assert_eq!(
        setting("ExecStart").as_deref(),
        Some("/usr/local/lib/stream-manager/stream-manager")
    );
}
