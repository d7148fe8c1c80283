//! Recipes on a running station (`boards/host-sim-plc.toml`: NEU classify and KolektorSDD
//! segment): switched over the control socket with `ferroscope recipe set`, every item is
//! decided by one whole recipe and none is lost; a broken recipe is refused and the running
//! one stays; a profile whose recipe does not fit its model does not start. Over MQTT, a
//! product change is taken from an authenticated connection only.

mod audit;
mod broker;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const NEU_CLASSES: [&str; 6] = [
    "crazing",
    "inclusion",
    "patches",
    "pitted_surface",
    "rolled-in_scale",
    "scratches",
];

/// A folder of its own for one test.
fn workdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferroscope-recipes-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `boards/host-sim-plc.toml` without its Modbus and OPC UA ports (tests run beside each other), its
/// control socket and records in `dir`, relative paths made absolute; `edit` changes the text.
/// The frame loop is not confined to CPU 0: every station of the test run would queue there
/// (the segment recipe alone takes about a period per item on a slow host), and a decision
/// late for that reason says nothing about a switch. The 250 ms deadline stays, so a model
/// loaded on the frame path (a few hundred ms) would still show as an overrun.
fn profile(dir: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let boards = root().join("boards").display().to_string();
    let text = std::fs::read_to_string(root().join("boards/host-sim-plc.toml")).unwrap();
    // [opcua] and [modbus] are the profile's last sections.
    let mut text = text[..text.find("[opcua]").unwrap()].to_string();
    text = text.replace("\"../", &format!("\"{boards}/../")).replace(
        "name = \"host-sim-plc\"",
        &format!(
            "name = \"host-sim-plc\"\ncontrol_socket = \"{}\"",
            dir.join("control.sock").display()
        ),
    );
    assert!(text.contains("frame_cpus = [0]"), "the profile's [realtime] changed");
    text = text.replace("frame_cpus = [0]", "frame_cpus = []");
    text.push_str(&format!("\n[records]\ndir = \"{}\"\n", dir.join("records").display()));
    let p = dir.join("station.toml");
    std::fs::write(&p, edit(text)).unwrap();
    p
}

fn run_station(profile: &Path, seconds: u32) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(["run", "--json", "--duration-s", &seconds.to_string(), "--config"])
        .arg(profile)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Run `profile`, which must not start (exit 2); its error message.
fn refused_start(profile: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(["run", "--json", "--duration-s", "1", "--config"])
        .arg(profile)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

fn recipe_set(profile: &Path, name: &str) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(["recipe", "set", name, "--json", "--config"])
        .arg(profile)
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no JSON answer: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), answer)
}

/// Wait until the station's control socket answers.
fn wait_ready(profile: &Path, station: &mut Child) {
    let t0 = Instant::now();
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
            .args(["recipe", "list", "--json", "--config"])
            .arg(profile)
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        if let Ok(Some(st)) = station.try_wait() {
            let mut err = String::new();
            station.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the station ended ({st}): {err}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the control socket never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finish(station: Child) -> (Vec<serde_json::Value>, serde_json::Value, String) {
    let out: Output = station.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, items) = lines.split_last().unwrap();
    (items.to_vec(), summary.clone(), err)
}

#[test]
fn switching_every_half_second_loses_no_item_and_each_item_has_one_whole_recipe() {
    let dir = workdir("switch");
    let p = profile(&dir, |t| t);
    let mut station = run_station(&p, 16);
    wait_ready(&p, &mut station);
    // Alternate between the two products; each answer says from which item on it decides.
    let mut applied: Vec<(String, u64)> = Vec::new();
    let names = ["kolektor-commutator", "neu-strip"];
    for k in 0..16 {
        std::thread::sleep(Duration::from_millis(500));
        let (ok, a) = recipe_set(&p, names[k % 2]);
        assert!(ok, "{a}");
        applied.push((
            a["recipe"].as_str().unwrap().to_string(),
            a["after_items"].as_u64().unwrap(),
        ));
    }
    let (items, summary, err) = finish(station);

    // No item lost: every inspection ID once, in order.
    assert!(items.len() > 100, "{} items; {err}", items.len());
    for (k, it) in items.iter().enumerate() {
        assert_eq!(it["id"].as_u64(), Some(k as u64), "item {k}: {it}");
    }
    // Each item was decided by the recipe its switch put in place, and with that recipe's
    // classes only.
    let mut expected = vec!["neu-strip"; items.len()];
    for (name, after) in &applied {
        for e in expected.iter_mut().skip(*after as usize) {
            *e = name;
        }
    }
    let mut decided_by = [0usize; 2];
    for (k, it) in items.iter().enumerate() {
        let recipe = it["recipe"].as_str().unwrap();
        assert_eq!(recipe, expected[k], "item {k}: {it}");
        let class = it["class"].as_str();
        match recipe {
            "neu-strip" => {
                decided_by[0] += 1;
                assert!(class.is_none_or(|c| NEU_CLASSES.contains(&c)), "item {k}: {it}");
            }
            _ => {
                decided_by[1] += 1;
                assert!(class.is_none_or(|c| c == "defect"), "item {k}: {it}");
            }
        }
        assert!(it["fault"].is_null(), "item {k}: {it}");
    }
    assert!(decided_by[0] > 20 && decided_by[1] > 20, "{decided_by:?}");
    assert_eq!(summary["recipes"]["switches"], 16, "{}", summary["recipes"]);
    assert_eq!(summary["recipes"]["refused"], 0, "{}", summary["recipes"]);
    assert_eq!(summary["recipes"]["active"], "neu-strip");
    assert_eq!(summary["faults"], 0, "{summary}");
    // Every reject's pulse was planned on its arrival, on the ejector its recipe routes it to
    // (a pulse the host wrote late is counted apart: see `audit`).
    audit::no_reject_missed_as_planned(&summary);
    assert_eq!(summary["false_rejects"], 0, "{summary}");
    assert_eq!(summary["allocations_ours_after_warmup"], 0, "{summary}");
    eprintln!(
        "{} items, decision latency p50 {} ms, p99 {} ms (deadline 250 ms), {} merged pulses",
        items.len(),
        summary["latency_ms_p50"],
        summary["latency_ms_p99"],
        summary["merged_rejects"]
    );

    // The records name each item's recipe.
    let out = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(["records", "--json", "--last", "100000", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = rec["last"].as_array().unwrap();
    assert_eq!(last.len(), items.len());
    for (r, it) in last.iter().zip(&items) {
        assert_eq!(r["item"], it["id"]);
        assert_eq!(r["recipe"], it["recipe"], "{r} against {it}");
        assert_eq!(r["class"], it["class"], "{r} against {it}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recipe_broken_after_the_start_is_refused_with_its_reason_and_the_running_one_stays() {
    let dir = workdir("broken");
    // Two more NEU recipes, each with its own copy of the model: good at the start, then one
    // copy is damaged and the other deleted while the station runs.
    let models = root().join("models");
    let manifest = std::fs::read_to_string(models.join("neu_classify.toml")).unwrap();
    let mut recipes = String::new();
    for name in ["damaged", "deleted"] {
        let onnx = dir.join(format!("{name}.onnx"));
        std::fs::copy(models.join("neu_classify.onnx"), &onnx).unwrap();
        let m = manifest
            .replace(
                "file = \"neu_classify.onnx\"",
                &format!("file = \"{}\"", onnx.display()),
            )
            .replace(
                "f32_file = \"neu_classify.f32.onnx\"",
                &format!("f32_file = \"{}\"", models.join("neu_classify.f32.onnx").display()),
            );
        std::fs::write(dir.join(format!("{name}.toml")), m).unwrap();
        recipes += &format!(
            "\n[[recipes]]\nname = \"{name}\"\n[recipes.tool]\nkind = \"classify\"\nmanifest = \"{}\"\n\
             [recipes.decision]\nreject_classes = [\"crazing\", \"inclusion\", \"patches\", \"pitted_surface\", \"scratches\", \"rolled-in_scale\"]\n\
             uncertain = \"reject\"\ndecision_deadline_ms = 250\n",
            dir.join(format!("{name}.toml")).display()
        );
    }
    let p = profile(&dir, |t| t + &recipes);
    let mut station = run_station(&p, 8);
    wait_ready(&p, &mut station);
    let mut bytes = std::fs::read(dir.join("damaged.onnx")).unwrap();
    let k = bytes.len() / 2;
    bytes[k] ^= 0xFF;
    std::fs::write(dir.join("damaged.onnx"), bytes).unwrap();
    std::fs::remove_file(dir.join("deleted.onnx")).unwrap();

    let (ok, a) = recipe_set(&p, "damaged");
    assert!(!ok, "{a}");
    let why = a["error"].as_str().unwrap();
    assert!(why.contains("\"damaged\" refused") && why.contains("sha256"), "{why}");
    let (ok, a) = recipe_set(&p, "deleted");
    assert!(!ok, "{a}");
    let why = a["error"].as_str().unwrap();
    assert!(
        why.contains("\"deleted\" refused") && why.contains("deleted.onnx"),
        "{why}"
    );
    let (ok, a) = recipe_set(&p, "no-such-recipe");
    assert!(
        !ok && a["error"].as_str().unwrap().contains("kolektor-commutator"),
        "{a}"
    );
    let (items, summary, _) = finish(station);
    assert!(items.len() > 30, "{}", items.len());
    assert!(items.iter().all(|i| i["recipe"] == "neu-strip" && i["fault"].is_null()));
    // The two that failed to load; an unknown name is an error to its asker, not a refusal.
    assert_eq!(summary["recipes"]["refused"], 2, "{}", summary["recipes"]);
    assert_eq!(summary["recipes"]["switches"], 0, "{}", summary["recipes"]);
    assert_eq!(summary["faults"], 0, "{summary}");

    // Broken before the start: the station does not start, and says which recipe.
    let err = refused_start(&p);
    assert!(
        err.contains("`recipes[1]` (\"damaged\")") && err.contains("sha256"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recipe_that_does_not_fit_its_model_or_the_line_stops_the_start_naming_it() {
    let dir = workdir("unfit");
    for (edit, words) in [
        (
            ("reject_classes = [\"defect\"]", "reject_classes = [\"crack\"]"),
            vec!["recipes[0]", "kolektor-commutator", "crack"],
        ),
        (
            ("ejector = \"inclusion\"", "ejector = \"side\""),
            vec!["recipes[0]", "routes[0].ejector", "side", "surface, inclusion"],
        ),
        (
            (
                "failsafe = \"reject\"              # must be",
                "failsafe = \"accept\"              # must be",
            ),
            vec!["recipes[0]", "decision.failsafe", "the line's"],
        ),
        (
            ("name = \"kolektor-commutator\"", "name = \"neu-strip\""),
            vec!["neu-strip", "used twice"],
        ),
    ] {
        let p = profile(&dir, |t| {
            assert!(t.contains(edit.0), "{}", edit.0);
            t.replace(edit.0, edit.1)
        });
        let err = refused_start(&p);
        for w in &words {
            assert!(err.contains(w), "{edit:?}: `{w}` not in: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_authenticated_mqtt_command_switches_the_recipe_and_the_station_announces_it() {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    use std::sync::{Arc, Mutex};
    let b = broker::Embedded::start_with(None, &[("line3", "s3cret")]);
    let dir = workdir("mqtt");
    let mqtt = format!(
        "\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"line3\"\npassword = \"s3cret\"\nrecipe_commands = true\n",
        b.port
    );
    let p = profile(&dir, |t| t + &mqtt);
    // The plant's side: it listens to what the station says, then asks for the other product.
    let mut o = MqttOptions::new("plant-recipes", "127.0.0.1", b.port);
    o.set_credentials("line3", "s3cret");
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(o, 64);
    let heard: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    {
        let (client, heard) = (client.clone(), heard.clone());
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe("ferroscope/host-sim-plc/recipe/#", QoS::AtLeastOnce);
                        let _ = client.try_subscribe("ferroscope/host-sim-plc/recipe", QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::Publish(m))) => heard
                        .lock()
                        .unwrap()
                        .push((m.topic.clone(), String::from_utf8_lossy(&m.payload).into_owned())),
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
    }
    let wait_for = |topic: &str, payload: &str| {
        let t0 = Instant::now();
        while !heard
            .lock()
            .unwrap()
            .iter()
            .any(|(t, m)| t == topic && m.contains(payload))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "never heard {topic} {payload}: {:?}",
                heard.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut station = run_station(&p, 10);
    wait_ready(&p, &mut station);
    wait_for("ferroscope/host-sim-plc/recipe", "neu-strip");
    client
        .publish(
            "ferroscope/host-sim-plc/recipe/set",
            QoS::AtLeastOnce,
            false,
            "no-such-recipe",
        )
        .unwrap();
    wait_for("ferroscope/host-sim-plc/recipe/answer", "\"ok\":false");
    client
        .publish(
            "ferroscope/host-sim-plc/recipe/set",
            QoS::AtLeastOnce,
            false,
            "kolektor-commutator",
        )
        .unwrap();
    wait_for("ferroscope/host-sim-plc/recipe/answer", "\"ok\":true");
    wait_for("ferroscope/host-sim-plc/recipe", "kolektor-commutator");
    let (items, summary, _) = finish(station);
    assert_eq!(items[0]["recipe"], "neu-strip");
    assert_eq!(items.last().unwrap()["recipe"], "kolektor-commutator");
    assert_eq!(summary["recipes"]["switches"], 1, "{}", summary["recipes"]);
    assert_eq!(summary["faults"], 0, "{summary}");

    // Without a user name (or client certificate), recipe commands are refused at start-up.
    let p = profile(&dir, |t| {
        t + &mqtt.replace("username = \"line3\"\npassword = \"s3cret\"\n", "")
    });
    let err = refused_start(&p);
    assert!(
        err.contains("mqtt.recipe_commands") && err.contains("authenticated"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_active_recipe_survives_a_restart() {
    let dir = workdir("restart");
    let p = profile(&dir, |t| t);
    let mut station = run_station(&p, 4);
    wait_ready(&p, &mut station);
    let (ok, a) = recipe_set(&p, "kolektor-commutator");
    assert!(ok, "{a}");
    let (items, _, _) = finish(station);
    assert_eq!(items.last().unwrap()["recipe"], "kolektor-commutator");
    // The records folder keeps the product the line ran: the next start begins with it.
    let kept = std::fs::read_to_string(dir.join("records/active-recipe")).unwrap();
    assert_eq!(kept.trim(), "kolektor-commutator");
    let mut station = run_station(&p, 3);
    wait_ready(&p, &mut station);
    let (items, summary, _) = finish(station);
    assert!(items.len() > 5, "{}", items.len());
    assert!(
        items.iter().all(|i| i["recipe"] == "kolektor-commutator"),
        "{}",
        items[0]
    );
    assert_eq!(summary["recipes"]["active"], "kolektor-commutator");
    assert_eq!(summary["recipes"]["switches"], 0);
    // A name the profile no longer has: recipe 0, said on stderr.
    std::fs::write(dir.join("records/active-recipe"), "gone\n").unwrap();
    let station = run_station(&p, 2);
    let (items, _, err) = finish(station);
    assert!(items.iter().all(|i| i["recipe"] == "neu-strip"));
    assert!(err.contains("\"gone\" was active before the restart"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
