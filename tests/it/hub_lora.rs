//! PEFT LoRA adapters given as hub ids (issue 25): a repo holding adapter_config.json and
//! adapter_model.safetensors (pushed to the loopback hub) is downloaded into the HF cache and read
//! as a local adapter folder: the rank-space merge of two adapters given as hub ids equals the
//! same merge of the local folders byte for byte, and `warp inspect` describes an adapter,
//! online and offline.

use crate::common;
use crate::hub_server::{HubServer, TOKEN};
use crate::lora::{p, setup_low_rank};
use std::path::Path;
use std::process::Command;

/// `name ARGS` against the loopback hub with `home` as HF_HOME (offline when asked).
fn hub_run(
    name: &str,
    args: &[&str],
    w: &Path,
    server: &HubServer,
    home: &Path,
    offline: bool,
) -> String {
    let mut c = Command::new(common::bin(name));
    c.args(args)
        .current_dir(w)
        .env("HF_ENDPOINT", &server.url)
        .env("HF_HOME", home)
        .env("HF_TOKEN", TOKEN)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN_PATH");
    if offline {
        c.env("HF_HUB_OFFLINE", "1");
    } else {
        c.env_remove("HF_HUB_OFFLINE");
    }
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} {args:?}:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir` (relative path → bytes), sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The `warp_recipe` metadata of a safetensors file.
fn recipe(file: &Path) -> serde_json::Value {
    let ck = warp::io::Checkpoint::open(file).unwrap();
    let meta = serde_json::to_value(&ck.shards[0].header.metadata).unwrap();
    serde_json::from_str(meta["warp_recipe"].as_str().unwrap()).unwrap()
}

/// A recipe without its inputs' names (their roles and content hashes stay).
fn without_paths(mut r: serde_json::Value) -> serde_json::Value {
    for i in r["inputs"].as_array_mut().unwrap() {
        i.as_object_mut().unwrap().remove("path");
    }
    r
}

#[test]
fn adapters_as_hub_ids_merge_like_local_folders() {
    let server = HubServer::start();
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let w = d.path();
    let (base, ads) = setup_low_rank(w);
    let run = |name: &str, args: &[&str]| hub_run(name, args, w, &server, home.path(), false);
    run("warp", &["push", "-q", &p(&ads[0]), "org/ad1"]);
    run("warp", &["push", "-q", &p(&ads[1]), "org/ad2"]);

    // The same rank-space SLERP of local folders and of hub ids, written as adapters.
    let b = p(&base);
    for (inputs, out) in [
        ([p(&ads[0]), p(&ads[1])], "local"),
        (["org/ad1".into(), "org/ad2".into()], "hub"),
    ] {
        let args = [
            inputs[0].as_str(),
            inputs[1].as_str(),
            "--init",
            &b,
            "--eta",
            "0.5",
            "--eta",
            "1",
            "--as",
            "adapter",
            "-o",
            out,
            "-q",
        ];
        run("warp-slerp", &args);
    }
    let (local, hub) = (tree(&w.join("local")), tree(&w.join("hub")));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&local), names(&hub));
    let weights = local
        .iter()
        .filter(|(n, _)| n.ends_with("adapter_model.safetensors"))
        .count();
    assert_eq!(weights, 2, "one adapter per eta: {:?}", names(&local));
    for ((name, x), (_, y)) in local.iter().zip(&hub) {
        // The model card and the weights' recipe metadata name the inputs as given (paths or hub
        // ids): the card is skipped, the weights are compared tensor by tensor, byte for byte,
        // and their recipes with the inputs' names left out; every other file byte for byte.
        if name.ends_with("README.md") {
            assert!(String::from_utf8_lossy(y).contains("org/ad1"), "{name}");
        } else if name.ends_with(".safetensors") {
            let (a, b) = (w.join("local").join(name), w.join("hub").join(name));
            common::assert_same_tensors(&a, &b);
            let (ra, rb) = (recipe(&a), recipe(&b));
            let paths = |r: &serde_json::Value| -> Vec<String> {
                let v = r["inputs"].as_array().unwrap().iter();
                v.map(|i| i["path"].as_str().unwrap().to_string()).collect()
            };
            assert!(paths(&ra).contains(&p(&ads[0])), "{ra}");
            assert!(paths(&rb).contains(&"org/ad1".to_string()), "{rb}");
            assert_eq!(without_paths(ra), without_paths(rb), "{name}");
        } else {
            assert!(x == y, "{name} differs between the local and the hub merge");
        }
    }

    // `warp inspect` of an adapter, by hub id (then offline, from the cache) and by folder.
    for offline in [false, true] {
        let table = hub_run(
            "warp",
            &["inspect", "org/ad2"],
            w,
            &server,
            home.path(),
            offline,
        );
        let last = table.lines().last().unwrap_or("");
        // rank 2, rsLoRA: scale 4/√2.
        assert!(
            last.starts_with("PEFT LoRA adapter: r 2, lora_alpha 4, scale 2.828")
                && last.contains("(rsLoRA), 2 LoRA modules"),
            "{table}"
        );
        assert!(
            table.contains("lora_A.weight") && table.contains(": OK"),
            "{table}"
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(&run("warp", &["inspect", "--json", &p(&ads[0])])).unwrap();
    assert_eq!(v["adapter"]["config"]["r"], 4);
    assert_eq!(v["adapter"]["scale"], 2.0);
    assert_eq!(v["adapter"]["lora_modules"].as_array().unwrap().len(), 3);
}
