//! The `model:PATH` and `cmd:PROGRAM` rewards (feature `rl`).
//!
//! `model:` against an independent reference: `transformers`' `LlamaForSequenceClassification`
//! (tests/ref/hf_seqcls.py, run with `$WARP_TORCH_PYTHON` from `source scripts/setup-torch.sh`),
//! which also makes the random reward models. `cmd:` with small scorer scripts in a temp dir:
//! results in order, every failure mode named, timeouts that kill, no pipe deadlock.
#![cfg(feature = "rl")]

use crate::common::{self, fixture};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warp::rl::reward::{from_spec, from_spec_opts, Reward, RewardOptions};
use warp::rl::reward_cmd::CmdReward;
use warp::rl::reward_model::RewardModel;

const TOL: f64 = 1e-4;

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect()
}

/// Makes a random reward model in `dir` with tests/ref/hf_seqcls.py and returns its response
/// (transformers' scores of `req["pairs"]` when the model is a valid one).
fn hf_seqcls(dir: &Path, req: serde_json::Value) -> serde_json::Value {
    common::torch_ref("hf_seqcls.py", &[dir, &fixture("tiny-llama-bf16")], &req)
}

fn texts() -> Vec<(String, String)> {
    pairs(&[
        ("Q: 12+7=? A:", " 19"),
        ("Q: 1+1=? A:", ""),
        // Ends in the pad id: transformers pools at the token before it, and so must we.
        ("Q: 3*4=? A:", "12<pad>"),
        ("", "1"),
        ("Q: 123+456=? A:", " 579"),
        ("Q: 9-3=? A:", " 6 = 9 - 3"),
        (
            "Q: 2*2*2*2*2*2*2*2=? A:",
            " 256 is 2 * 2 * 2 * 2 * 2 * 2 * 2 * 2",
        ),
        ("Q: 0+0=? A:", " 0"),
        ("Q: 7+8=? A:", " 15"),
        ("Q:", "?"),
        ("Q: 5*5=? A:", " 25"),
    ])
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn model_rewards_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rm");
    std::fs::create_dir(&dir).unwrap();
    let pairs = texts();
    let resp = hf_seqcls(&dir, serde_json::json!({"seed": 1, "pairs": pairs}));
    let hf = |k: &str| -> Vec<f64> { serde_json::from_value(resp[k].clone()).unwrap() };
    let hf_ids: Vec<Vec<i64>> = serde_json::from_value(resp["ids"].clone()).unwrap();

    let rm = RewardModel::load(&dir, tch::Device::Cpu, 64).unwrap();
    for ((p, c), ids) in pairs.iter().zip(&hf_ids) {
        assert_eq!(
            &rm.encode_pair(p, c).unwrap(),
            ids,
            "tokens of {p:?} + {c:?}"
        );
    }
    let ours = rm.rewards(&pairs).unwrap();
    // Through the spec, with small batches: sorting by length and chunking changes nothing.
    let spec = format!("model:{}", dir.display());
    let opts = RewardOptions {
        batch_size: 3,
        ..RewardOptions::default()
    };
    let mut by_spec = from_spec_opts(&spec, &opts).unwrap();
    assert_eq!(by_spec.name(), spec);
    let chunked = by_spec.score(&pairs).unwrap();
    let one_by_one: Vec<f64> = pairs
        .iter()
        .flat_map(|p| rm.rewards(std::slice::from_ref(p)).unwrap())
        .collect();

    let mag = hf("right").iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (what, theirs) in [
        ("right-padded batch", hf("right")),
        ("left-padded batch", hf("left")),
        ("one by one", hf("single")),
    ] {
        let d = max_diff(&ours, &theirs);
        eprintln!("model: max |ours - transformers ({what})| = {d:.3e} (max |reward| {mag:.3})");
        assert!(d < TOL, "{what}: ours {ours:?} vs transformers {theirs:?}");
    }
    let d = max_diff(&ours, &chunked);
    eprintln!(
        "model: batch 64 vs batch 3: {d:.3e}; vs one by one: {:.3e}",
        max_diff(&ours, &one_by_one)
    );
    assert!(d < 1e-5 && max_diff(&ours, &one_by_one) < 1e-5);
    // Not a degenerate model: the rewards differ from pair to pair.
    assert!(mag > 0.1 && ours.iter().any(|&r| (r - ours[0]).abs() > 0.05));
    assert!(rm.rewards(&[]).unwrap().is_empty());

    // A pair longer than max_position_embeddings (64) is refused, naming the limit.
    let long = vec![("Q:".to_string(), "1".repeat(80))];
    let e = rm.rewards(&long).unwrap_err().to_string();
    assert!(
        e.contains("max_position_embeddings 64") && e.contains("pair 0"),
        "{e}"
    );
}

#[test]
fn model_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let load_err = |dir: &Path| -> String {
        match from_spec(&format!("model:{}", dir.display())) {
            Ok(_) => panic!("{} loaded as a reward model", dir.display()),
            Err(e) => e.to_string(),
        }
    };

    // No score head.
    let no_score = tmp.path().join("no-score");
    std::fs::create_dir(&no_score).unwrap();
    hf_seqcls(&no_score, serde_json::json!({"drop": ["score.weight"]}));
    let e = load_err(&no_score);
    assert!(
        e.contains("'score.weight' is missing") && e.contains("no-score"),
        "{e}"
    );
    // A causal LM is not a reward model either.
    let e = load_err(&fixture("tiny-llama-bf16"));
    assert!(e.contains("'score.weight' is missing"), "{e}");

    // Two labels (transformers writes no id2label for its default of 2): the shape of
    // score.weight says so.
    let two = tmp.path().join("two-labels");
    std::fs::create_dir(&two).unwrap();
    hf_seqcls(&two, serde_json::json!({"num_labels": 2}));
    let e = load_err(&two);
    assert!(
        e.contains("tensor 'score.weight'")
            && e.contains("shape [2, 32], expected [1, 32]")
            && e.contains("num_labels = 1"),
        "{e}"
    );
    // A config that declares two labels is refused on config.json.
    let cfg_path = two.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["id2label"] = serde_json::json!({"0": "bad", "1": "good"});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = load_err(&two);
    assert!(e.contains("config.json") && e.contains("2 labels"), "{e}");
    // Not a folder at all.
    let e = load_err(&tmp.path().join("absent"));
    assert!(e.contains("absent"), "{e}");
}

// ---- cmd: --------------------------------------------------------------------------------

/// Writes an executable script `name` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn cmd(spec: &str, timeout: Duration) -> Box<dyn Reward> {
    let opts = RewardOptions {
        timeout,
        ..RewardOptions::default()
    };
    from_spec_opts(spec, &opts).unwrap()
}

fn cmd_err(spec: &str, timeout: Duration, pairs: &[(String, String)]) -> String {
    match cmd(spec, timeout).score(pairs) {
        Ok(r) => panic!("{spec} succeeded: {r:?}"),
        Err(e) => e.to_string(),
    }
}

/// A scorer that answers each line as it reads it (so it reads and writes at the same time):
/// len(completion) + len(prompt) / 1000, printed `width` characters wide with leading zeros.
const LENGTH_SCORER: &str = r#"#!/usr/bin/env python3
import json, sys
width = int(sys.argv[1]) if len(sys.argv) > 1 else 0
for line in sys.stdin:
    d = json.loads(line)
    x = len(d["completion"]) + len(d["prompt"]) / 1000
    print(f"{x:0{width}.3f}", flush=True)
"#;

#[test]
fn cmd_scores_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(tmp.path(), "score.py", LENGTH_SCORER);
    let spec = format!("cmd:{} 0", s.display());
    let mut r = cmd(&spec, Duration::from_secs(60));
    assert_eq!(r.name(), spec);
    // JSON escaping survives: quotes, newlines, backslashes, non-ASCII (len counts code points).
    let p = pairs(&[
        ("Q: 1+1=?", "2"),
        ("", ""),
        ("say \"hi\"\n", "é\n\"x\\"),
        ("abc", "a much longer completion"),
    ]);
    let got = r.score(&p).unwrap();
    assert_eq!(got, vec![1.008, 0.0, 5.009, 24.003]);
    assert!(r.score(&[]).unwrap().is_empty());
    // Several calls: one run each.
    assert_eq!(r.score(&p[..1]).unwrap(), vec![1.008]);
}

#[test]
fn cmd_large_batch_does_not_deadlock() {
    // 5000 pairs: ~1.5 MB in, ~1 MB out (200-character numbers), far beyond the pipe buffers,
    // written and read at the same time.
    let tmp = tempfile::tempdir().unwrap();
    let s = script(tmp.path(), "score.py", LENGTH_SCORER);
    let p: Vec<(String, String)> = (0..5000)
        .map(|i| ("p".repeat(i % 300), "c".repeat(i % 97)))
        .collect();
    let t = Instant::now();
    let got = cmd(
        &format!("cmd:{} 200", s.display()),
        Duration::from_secs(120),
    )
    .score(&p)
    .unwrap();
    eprintln!("cmd: 5000 pairs in {:?}", t.elapsed());
    let want: Vec<f64> = (0..5000)
        .map(|i| (i % 97) as f64 + (i % 300) as f64 / 1000.0)
        .collect();
    assert_eq!(got.len(), 5000);
    assert!(max_diff(&got, &want) < 1e-9);
}

/// Processes whose parent is this test process and whose command name is `comm`.
fn children_named(comm: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if &stat[open + 1..close] == comm && rest.get(1) == Some(&me.as_str()) {
            found.push(stat.clone());
        }
    }
    found
}

/// Whether some live process has `needle` among its arguments.
fn running_with_arg(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| c.split(|&b| b == 0).any(|a| a == needle.as_bytes()))
            .unwrap_or(false)
    })
}

#[test]
fn cmd_timeout_kills_the_program_and_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pairs(&[("a", "b")]);
    // The program itself hangs.
    let t = Instant::now();
    let e = cmd_err("cmd:sleep 100.25", Duration::from_secs(1), &p);
    let took = t.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(
        e.contains("cmd:sleep 100.25") && e.contains("timeout of 1s") && e.contains("killed"),
        "{e}"
    );
    assert!(!running_with_arg("100.25"), "sleep 100.25 still runs");
    assert!(
        children_named("sleep").is_empty(),
        "{:?}",
        children_named("sleep")
    );

    // A script whose child hangs holding the pipes: the whole process group goes.
    let s = script(
        tmp.path(),
        "hang.sh",
        "#!/bin/sh\necho starting >&2\nsleep 101.75\necho 1\n",
    );
    let t = Instant::now();
    let e = cmd_err(&format!("cmd:{}", s.display()), Duration::from_secs(1), &p);
    let took = t.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(
        e.contains("hang.sh") && e.contains("timeout") && e.contains("starting"),
        "{e}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(!running_with_arg("101.75"), "the script's sleep still runs");
    assert!(
        children_named("hang.sh").is_empty(),
        "{:?}",
        children_named("hang.sh")
    );
}

#[test]
fn cmd_failures_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = pairs(&[("a", "b"), ("c", "d"), ("e", "f")]);
    let t = Duration::from_secs(30);

    let s = script(
        d,
        "crash.sh",
        "#!/bin/sh\necho working >&2\necho boom >&2\nexit 3\n",
    );
    let e = cmd_err(&format!("cmd:{}", s.display()), t, &p);
    assert!(
        e.contains("crash.sh") && e.contains("status 3") && e.contains("boom"),
        "{e}"
    );

    let s = script(d, "killed.sh", "#!/bin/sh\nkill -9 $$\n");
    let e = cmd_err(&format!("cmd:{}", s.display()), t, &p);
    assert!(e.contains("killed.sh") && e.contains("signal: 9"), "{e}");

    let s = script(
        d,
        "garbage.sh",
        "#!/bin/sh\ncat >/dev/null\necho 1\necho hello\necho 2\n",
    );
    let e = cmd_err(&format!("cmd:{}", s.display()), t, &p);
    assert!(
        e.contains("garbage.sh") && e.contains("line 2") && e.contains("\"hello\""),
        "{e}"
    );

    for (bad, why) in [
        ("nan", "not a finite number"),
        ("inf", "not a finite number"),
        ("", "not a number"),
    ] {
        let s = script(
            d,
            "bad.sh",
            &format!("#!/bin/sh\necho 1\necho '{bad}'\necho 2\n"),
        );
        let e = cmd_err(&format!("cmd:{}", s.display()), t, &p);
        assert!(
            e.contains("line 2") && e.contains(&format!("{bad:?}")) && e.contains(why),
            "{bad}: {e}"
        );
    }

    let s = script(d, "few.sh", "#!/bin/sh\ncat >/dev/null\necho 1\n");
    let e = cmd_err(&format!("cmd:{}", s.display()), t, &p);
    assert!(
        e.contains("few.sh") && e.contains("printed 1 lines for 3 pairs"),
        "{e}"
    );
    let s = script(
        d,
        "many.sh",
        "#!/bin/sh\nfor i in 1 2 3 4; do echo $i; done\n",
    );
    let e = cmd_err(&format!("cmd:{}", s.display()), t, &p);
    assert!(e.contains("printed 4 lines for 3 pairs"), "{e}");
    let s = script(d, "silent.sh", "#!/bin/sh\ncat >/dev/null\n");
    let e = cmd_err(&format!("cmd:{}", s.display()), t, &p);
    assert!(e.contains("printed 0 lines for 3 pairs"), "{e}");

    // Cannot start: a missing program is refused when the reward is made, a file that is not
    // executable when it runs.
    let e = from_spec("cmd:/nonexistent/scorer --x")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("'/nonexistent/scorer' not found"), "{e}");
    let e = from_spec("cmd:   ").err().unwrap().to_string();
    assert!(e.contains("unknown reward"), "{e}");
    let s = d.join("not-executable.sh");
    std::fs::write(&s, "#!/bin/sh\necho 1\n").unwrap();
    let e = cmd_err(&format!("cmd:{}", s.display()), t, &p);
    assert!(
        e.contains("cannot start") && e.contains("not-executable.sh"),
        "{e}"
    );
    assert!(CmdReward::new("sleep 1", Duration::ZERO).is_err());
}

#[test]
fn cmd_program_that_does_not_read_its_input() {
    // Exits 0 with the right answers without reading its (large) stdin: judged by its output.
    let tmp = tempfile::tempdir().unwrap();
    let s = script(
        tmp.path(),
        "lazy.sh",
        "#!/bin/sh\nfor i in 1 2 3; do echo 0.5; done\n",
    );
    let p: Vec<(String, String)> = (0..3)
        .map(|_| ("x".repeat(100_000), String::new()))
        .collect();
    let got = cmd(&format!("cmd:{}", s.display()), Duration::from_secs(30))
        .score(&p)
        .unwrap();
    assert_eq!(got, vec![0.5; 3]);
}
