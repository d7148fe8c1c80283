//! The OPC UA server against a real client (python-asyncua, `tests/opcua_client.py`) beside
//! `boards/host-sim-plc.toml`: it browses the VisionSystem, reads the state and the last
//! result (each reading one item's, matching the station's item lines), selects a recipe and
//! sees it become the active one — over Basic256Sha256 sign-and-encrypt, once its certificate
//! is moved from the PKI's rejected/ to trusted/ folder; an anonymous session, an unsecured
//! connection and a wrong password are refused. Runs where python3 has
//! `asyncua` (CI installs it) and says plainly when it is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn asyncua_installed() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import asyncua"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("opcua: skipped: python3 has no `asyncua` (pip install asyncua)");
    }
    ok
}

/// host-sim-plc with its OPC UA server on `port`, no Modbus port, its PKI and control socket
/// in `dir`.
fn profile(dir: &Path, port: u16) -> PathBuf {
    let boards = root().join("boards").display().to_string();
    let text = std::fs::read_to_string(root().join("boards/host-sim-plc.toml")).unwrap();
    // [opcua] and then [modbus] are the profile's last sections.
    let (head, tail) = text.split_at(text.find("[opcua]").unwrap());
    let opcua = &tail[..tail.find("[modbus]").unwrap()];
    let text = format!(
        "{head}{}\npki_dir = \"{}\"\n",
        opcua.replace("127.0.0.1:4840", &format!("127.0.0.1:{port}")),
        dir.join("pki").display()
    )
    .replace("\"../", &format!("\"{boards}/../"))
    .replace(
        "name = \"host-sim-plc\"",
        &format!(
            "name = \"host-sim-plc\"\ncontrol_socket = \"{}\"",
            dir.join("control.sock").display()
        ),
    );
    let p = dir.join("station.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn an_opcua_client_browses_the_vision_system_reads_results_and_selects_a_recipe() {
    if !asyncua_installed() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ferroscope-opcua-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let p = profile(&dir, port);
    let station = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(["run", "--json", "--duration-s", "20", "--config"])
        .arg(&p)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client_py = root().join("tests/opcua_client.py");
    let cert = dir.join("client");
    let made = Command::new("python3")
        .arg(&client_py)
        .arg("--make-cert")
        .arg(&cert)
        .status()
        .unwrap();
    assert!(made.success());
    // The server listens before the frame loop starts; give the model a moment to load.
    std::thread::sleep(Duration::from_secs(3));
    let run_client = || {
        Command::new("python3")
            .arg(&client_py)
            .arg("--cert")
            .arg(&cert)
            .args([
                "--url",
                &format!("opc.tcp://127.0.0.1:{port}/"),
                "--station",
                "host-sim-plc",
            ])
            .args([
                "--user",
                "operator",
                "--password",
                "ferroscope",
                "--select",
                "kolektor-commutator",
            ])
            .output()
            .unwrap()
    };
    // A client certificate the station has not been told to trust: refused, and kept in
    // the PKI's rejected/ folder for someone to check and move to trusted/.
    let first = run_client();
    assert!(!first.status.success());
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("BadCertificateUntrusted"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let pki = dir.join("pki");
    let rejected: Vec<PathBuf> = std::fs::read_dir(pki.join("rejected"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let name = rejected[0].file_name().unwrap();
    std::fs::rename(&rejected[0], pki.join("trusted").join(name)).unwrap();
    let client = run_client();
    let out = station.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        client.status.success(),
        "client: {}\nstation: {err}",
        String::from_utf8_lossy(&client.stderr)
    );
    let c: serde_json::Value = serde_json::from_slice(&client.stdout).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, items) = lines.split_last().unwrap();

    assert_eq!(
        c["browse"],
        serde_json::json!(["RecipeManagement", "ResultManagement", "VisionStateMachine"]),
        "{c}"
    );
    assert_eq!(c["state"], "ContinuousExecution", "{c}");
    for f in [
        "ClassName",
        "CreationTime",
        "InspectionId",
        "IsPass",
        "Recipe",
        "ResultCode",
        "ResultId",
        "Score",
    ] {
        assert!(
            c["last_result_fields"].as_array().unwrap().iter().any(|x| x == f),
            "{f}: {c}"
        );
    }
    // Every reading is one item's: its ID, code, class, score and recipe are that item line's.
    let results = c["results"].as_array().unwrap();
    assert!(!results.is_empty());
    for r in results {
        let id = r["InspectionId"].as_u64().unwrap();
        let it = items
            .iter()
            .find(|i| i["id"].as_u64() == Some(id))
            .unwrap_or_else(|| panic!("{r}"));
        assert_eq!(r["ResultCode"], it["result_code"], "{r} against {it}");
        assert_eq!(r["IsPass"], it["result_code"] == 0, "{r} against {it}");
        assert_eq!(
            r["ClassName"].as_str(),
            Some(it["class"].as_str().unwrap_or("")),
            "{r} against {it}"
        );
        assert!(
            (r["Score"].as_f64().unwrap() - it["score"].as_f64().unwrap()).abs() < 1e-6,
            "{r} against {it}"
        );
        assert_eq!(r["Recipe"], it["recipe"], "{r} against {it}");
        assert_eq!(r["ResultId"], format!("host-sim-plc-{id}"));
    }
    assert_eq!(c["recipes"], serde_json::json!(["neu-strip", "kolektor-commutator"]));
    assert_eq!(c["active_before"], "neu-strip");
    assert_ne!(c["unknown_recipe"], "accepted", "{c}");
    assert_eq!(c["active_after"], "kolektor-commutator", "{c}");
    assert_eq!(c["last_recipe_after"], "kolektor-commutator", "{c}");
    assert_ne!(c["anonymous"], "accepted", "{c}");
    assert_ne!(c["unsecured"], "accepted", "{c}");
    assert_ne!(c["wrong_password"], "accepted", "{c}");
    // The station's own account: one switch, the items after it decided by the new recipe.
    assert_eq!(summary["recipes"]["switches"], 1, "{}", summary["recipes"]);
    assert_eq!(items.last().unwrap()["recipe"], "kolektor-commutator");
    assert_eq!(summary["faults"], 0, "{summary}");
    eprintln!("opcua: {c}");
    let _ = std::fs::remove_dir_all(&dir);
}
