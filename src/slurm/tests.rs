use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

use super::checks::check_plan;
use super::script::quote_all;
use super::*;

fn parse(t: &str) -> std::result::Result<SlurmConfig, String> {
    #[derive(Deserialize)]
    struct Top {
        slurm: SlurmConfig,
    }
    toml::from_str::<Top>(t)
        .map(|t| t.slurm)
        .map_err(|e| e.to_string())
}

#[test]
fn kind_sections_override_the_top_and_append_lines() {
    let c = parse(
        r#"
        [slurm]
        partition = "cpu"
        account = "proj"
        time = 60
        mem = "8G"
        args = ["--exclusive"]
        prelude = ["module load gcc"]
        [slurm.rl]
        partition = "gpu"
        gpus = 1
        time = "12:00:00"
        prelude = ["source venv/bin/activate"]
        "#,
    )
    .unwrap();
    c.check().unwrap();
    let rl = c.resources(StepKind::Rl);
    assert_eq!(
        rl.sbatch_args(),
        [
            "--partition=gpu",
            "--account=proj",
            "--time=12:00:00",
            "--gpus=1",
            "--mem=8G",
            "--exclusive"
        ]
    );
    assert_eq!(rl.prelude, ["module load gcc", "source venv/bin/activate"]);
    let merge = c.resources(StepKind::Merge);
    assert_eq!(
        merge.sbatch_args(),
        [
            "--partition=cpu",
            "--account=proj",
            "--time=60",
            "--mem=8G",
            "--exclusive"
        ]
    );
    assert_eq!(c.poll_seconds, 5.0);
}

#[test]
fn bad_sections_name_the_key() {
    let e = parse("[slurm]\npartitio = \"x\"\n").unwrap_err();
    assert!(e.contains("partitio"), "{e}");
    let e = parse("[slurm.rl]\ngpu = 1\n").unwrap_err();
    assert!(e.contains("rl") && e.contains("gpu"), "{e}");
    // An unquoted TOML time is a time of day, not text.
    let e = parse("[slurm]\ntime = 12:00:00\n").unwrap_err();
    assert!(e.contains("quoted string"), "{e}");
    let e = parse("[slurm]\npoll_seconds = -1\n").unwrap_err();
    assert!(e.contains("poll_seconds"), "{e}");
    let c = parse("[slurm.eval]\nmem = \"8 G\"\n").unwrap();
    let e = c.check().unwrap_err().to_string();
    assert!(e.contains("slurm.eval.mem"), "{e}");
    let c = parse("[slurm]\nargs = [\"exclusive\"]\n").unwrap();
    assert!(c.check().unwrap_err().to_string().contains("slurm.args"));
}

#[test]
fn config_round_trips_through_json() {
    let c = parse("[slurm]\nqos = \"high\"\n[slurm.plot]\ncpus = 1\n").unwrap();
    let j = serde_json::to_string(&c).unwrap();
    let back: SlurmConfig = serde_json::from_str(&j).unwrap();
    assert_eq!(back, c);
}

/// bash itself (the reference) reads back the words the script quotes.
#[test]
fn quoting_survives_bash() {
    let words: Vec<String> = [
        "plain",
        "with space",
        "it's",
        "$HOME",
        "`id`",
        "a\"b",
        "",
        "new\nline",
        "*",
        "--eta=0.5",
        "ümlaut",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let script = format!(
        "w=({})\nprintf '%s\\0' \"${{w[@]}}\"",
        quote_all(&words).unwrap()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success());
    let got: Vec<String> = out
        .stdout
        .split(|b| *b == 0)
        .map(|w| String::from_utf8(w.to_vec()).unwrap())
        .collect();
    assert_eq!(got[..words.len()], words[..]);
    assert!(quote_all(&["a\0b".to_string()]).is_err());
}

fn step(id: &str, after: &[&str], array: Option<&str>) -> Step {
    Step {
        id: id.into(),
        after: after.iter().map(|s| s.to_string()).collect(),
        argv: vec!["true".into()],
        resume: None,
        done: PathBuf::from(format!("/r/{id}.done")),
        log: PathBuf::from(format!("/r/{id}.log")),
        kind: if array.is_some() {
            StepKind::Rl
        } else {
            StepKind::Merge
        },
        array: array.map(String::from),
    }
}

#[test]
fn plans_are_checked() {
    let ok = [
        step("a", &[], Some("g")),
        step("b", &[], Some("g")),
        step("m", &["a", "b"], None),
    ];
    check_plan(&ok).unwrap();
    let later = [step("m", &["a"], None), step("a", &[], None)];
    assert!(check_plan(&later)
        .unwrap_err()
        .to_string()
        .contains("m waits for a"));
    let same = [step("a", &[], Some("g")), step("b", &["a"], Some("g"))];
    assert!(check_plan(&same)
        .unwrap_err()
        .to_string()
        .contains("same job array"));
    let twice = [step("a", &[], None), step("a", &[], None)];
    assert!(check_plan(&twice).is_err());
}

#[test]
fn one_submission_at_a_time_per_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let slurm = Slurm::new(SlurmConfig::default(), tmp.path()).unwrap();
    let held = slurm.lock().unwrap();
    let steps = [step("a", &[], None)];
    let e = slurm
        .submit(&steps, &crate::progress::Silent)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("slurm.lock") && e.contains("another warp is submitting"),
        "{e}"
    );
    drop(held);
    // Released on drop. (A fork by a test running alongside may briefly share the open
    // file, and with it the lock, until its exec closes it: hence the retries.)
    let mut again = slurm.lock();
    for _ in 0..50 {
        if again.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        again = slurm.lock();
    }
    again.unwrap();
}

/// Scripts rendered for paths that try every way out of bash quoting (`$(…)`, backticks, both
/// quotes, `;`, spaces) run exactly the step's words (bash itself is the reference) and create
/// nothing else; a path with a line break is refused, naming it.
#[test]
fn scripts_for_hostile_paths_run_only_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = d.join("r $(touch P1) `touch P2` 'q' \"d\" ;touch P3 #");
    let step = Step {
        id: "a".into(),
        after: vec![],
        argv: vec![
            "printf".into(),
            "%s|".into(),
            "$(touch P4)".into(),
            "it's `x`".into(),
        ],
        resume: None,
        done: run.join("a $(touch P5).done"),
        log: run.join("logs/a `touch P6`.log"),
        kind: StepKind::Merge,
        array: None,
    };
    let slurm = Slurm::new(SlurmConfig::default(), &run).unwrap();
    let by_id = HashMap::from([("a", &step)]);
    let sbatch = quote_all(&[
        "sbatch".to_string(),
        format!("--output={}", run.join("x.out").display()),
    ])
    .unwrap();
    let body = slurm.render(&[&step], &by_id, &[], &sbatch).unwrap();
    let script = d.join("s.sbatch");
    std::fs::write(&script, &body).unwrap();
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(d)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{body}");
    let log = std::fs::read_to_string(&step.log).unwrap();
    assert!(log.ends_with("$(touch P4)|it's `x`|"), "{log}");
    for p in ["P1", "P2", "P3", "P4", "P5", "P6"] {
        assert!(
            !d.join(p).exists() && !run.join(p).exists(),
            "{p} created:\n{body}"
        );
    }
    // Every comment line is one line: nothing of a value leaks out of it.
    for line in body.lines().take(3) {
        assert!(line.starts_with('#'), "{line}");
    }

    let bad = d.join("run\ntouch P7\n#");
    let e = Slurm::new(SlurmConfig::default(), &bad).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    let msg = e.to_string();
    assert!(
        msg.contains("control character") && msg.contains("\\n"),
        "{msg}"
    );
    assert!(check_script_path(&bad).is_err() && check_script_path(&run).is_ok());
    assert_eq!(super::script::comment("a\nb\r\u{1b}c"), "a\\nb\\r\\u{1b}c");
}
