//! `cmd:PROGRAM [ARG…]` reward: an external scorer, one run per `score` call.
//!
//! The command is split on whitespace (no shell, no quoting: wrap anything fancier in a script).
//! Protocol of one call:
//! - stdin: one JSON object per pair and line, `{"prompt": "…", "completion": "…"}` (a
//!   conversation prompt as `{"messages": […], "completion": "…"}`), then end of file;
//! - stdout: exactly one finite number per line (surrounding spaces allowed), one line per pair,
//!   in order;
//! - exit status 0. Stderr is free for the program's logs: only its tail is kept, for error
//!   messages.
//!
//! Stdin is written by a thread of its own while others drain stdout and stderr, so a program
//! that answers line by line while still reading cannot deadlock on full pipes. The program runs
//! in a session (and process group) of its own: when a call runs past its timeout (or Ctrl-C is
//! requested) the whole group is killed (so are children it started, e.g. from a shell script),
//! and so is every process that still carries the call's mark in its environment
//! (`WARP_REWARD_CALL`, inherited by all descendants) — a grandchild that left the group with
//! `setsid` included; the program is reaped, and the call fails. Every error names the command.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use super::reward::Reward;
use crate::error::{Error, Result};

/// How much of the program's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;
/// Bytes of stdout allowed per pair (beyond a 1 MiB allowance) before the program is stopped.
const STDOUT_PER_PAIR: usize = 256;
/// How long to wait for a killed program to be reaped and its pipes to close.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often the wait checks for Ctrl-C.
const POLL: Duration = Duration::from_millis(100);

/// An external scorer (see the module docs).
pub struct CmdReward {
    /// `cmd:` + the command as given.
    name: String,
    program: String,
    args: Vec<String>,
    timeout: Duration,
}

/// What the helper threads of one call report.
enum Event {
    Written(std::io::Result<()>),
    /// Stdout up to end of file, or `None` when the program printed more than the cap.
    Stdout(std::io::Result<Option<Vec<u8>>>),
    StderrTail(Vec<u8>),
    Exited(std::io::Result<ExitStatus>),
}

#[derive(Default)]
struct Outcome {
    written: Option<std::io::Result<()>>,
    stdout: Option<std::io::Result<Option<Vec<u8>>>>,
    stderr: Option<Vec<u8>>,
    status: Option<std::io::Result<ExitStatus>>,
}

impl Outcome {
    fn record(&mut self, e: Event) {
        match e {
            Event::Written(r) => self.written = Some(r),
            Event::Stdout(r) => self.stdout = Some(r),
            Event::StderrTail(t) => self.stderr = Some(t),
            Event::Exited(r) => self.status = Some(r),
        }
    }

    fn complete(&self) -> bool {
        self.written.is_some()
            && self.stdout.is_some()
            && self.stderr.is_some()
            && self.status.is_some()
    }

    /// ", stderr: …" with the kept tail, or nothing when the program wrote none.
    fn stderr_note(&self) -> String {
        match self.stderr.as_deref().map(String::from_utf8_lossy) {
            Some(t) if !t.trim().is_empty() => format!("; its stderr ends with:\n{}", t.trim_end()),
            _ => String::new(),
        }
    }
}

/// The file `program` names: a path when it has a `/`, else the first match on `PATH`.
fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// SIGKILL to the program's process group (the program itself leads it).
fn kill_group(pid: u32) {
    // SAFETY: plain kill(2) calls; `pid` is our child's, which leads its own process group.
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// The environment variable that marks the processes of one call (see the module docs).
const MARK_VAR: &str = "WARP_REWARD_CALL";

/// A mark no other call of any process uses: our pid and a counter.
fn new_mark() -> String {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// SIGKILL to every process (of this user: others' environments cannot be read) whose
/// environment carries `mark`: the descendants of a call that left its process group. Repeated
/// until none is left, as one may fork while the sweep runs.
fn kill_marked(mark: &str) {
    let needle = format!("{MARK_VAR}={mark}\0").into_bytes();
    let me = std::process::id();
    for _ in 0..20 {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut killed = 0;
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            if env.windows(needle.len()).any(|w| w == needle.as_slice()) {
                // SAFETY: kill(2) of a process that carries this call's mark.
                if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
            }
        }
        if killed == 0 {
            return;
        }
        // Killed processes leave /proc (or become zombies with an empty environ) shortly.
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `r` to its end, keeping only the last `keep` bytes.
fn read_tail(mut r: impl Read, keep: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * keep {
                    tail.drain(..tail.len() - keep);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
}

/// Reads `r` to its end, or stops with `None` past `cap` bytes.
fn read_capped(r: impl Read, cap: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    r.take(cap as u64 + 1).read_to_end(&mut out)?;
    Ok((out.len() <= cap).then_some(out))
}

impl CmdReward {
    /// `command`: the text after `cmd:`, a program and its arguments separated by whitespace.
    /// The program must exist (a path, or a name on `PATH`); each call to `score` must finish
    /// within `timeout`.
    pub fn new(command: &str, timeout: Duration) -> Result<CmdReward> {
        let name = format!("cmd:{command}");
        let mut words = command.split_whitespace().map(str::to_string);
        let program = words
            .next()
            .ok_or_else(|| Error::reward(&name, "no program given"))?;
        if find_program(&program).is_none() {
            return Err(Error::reward(
                &name,
                format!("program '{program}' not found (neither a file nor on PATH)"),
            ));
        }
        if timeout.is_zero() || timeout.as_secs_f64() > crate::limits::MAX_SECONDS {
            return Err(Error::setting(
                "reward_timeout",
                format!(
                    "must be positive and at most {} s (a week)",
                    crate::limits::MAX_SECONDS
                ),
            ));
        }
        Ok(CmdReward {
            name,
            program,
            args: words.collect(),
            timeout,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::reward(&self.name, msg)
    }

    /// Runs the program once over `pairs` (see the module docs); one finite reward per pair.
    pub fn run(&self, pairs: &[(String, String)]) -> Result<Vec<f64>> {
        self.run_records(
            pairs
                .iter()
                .map(|(prompt, completion)| {
                    serde_json::json!({"prompt": prompt, "completion": completion})
                })
                .collect(),
        )
    }

    /// Runs the program once over these input lines; one finite reward per line.
    fn run_records(&self, records: Vec<serde_json::Value>) -> Result<Vec<f64>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut input = Vec::new();
        for line in &records {
            input.extend_from_slice(line.to_string().as_bytes());
            input.push(b'\n');
        }
        let n = records.len();
        let cap = (1 << 20) + STDOUT_PER_PAIR * n;
        let mark = new_mark();
        let (pid, rx) = self.spawn(input, cap, &mark)?;
        let out = self.wait(pid, &rx, n, cap, &mark)?;
        self.finish(out, n)
    }

    /// Starts the program with helper threads: one writes `input` to its stdin, two drain its
    /// stdout (up to `cap` bytes) and stderr (the tail), one reaps it. Each reports one event.
    fn spawn(
        &self,
        input: Vec<u8>,
        cap: usize,
        mark: &str,
    ) -> Result<(u32, mpsc::Receiver<Event>)> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env(MARK_VAR, mark)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setsid(2) is async-signal-safe; it makes the child lead a new session and
        // process group (so no terminal signal reaches it past us, and the group is killable).
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| self.err(format!("cannot start '{}': {e}", self.program)))?;
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            kill_group(pid);
            let _ = child.wait();
            return Err(Error::Internal(
                "a piped stdio of a child is missing".into(),
            ));
        };
        let t = tx.clone();
        thread::spawn(move || {
            let r = stdin.write_all(&input).and_then(|()| stdin.flush());
            drop(stdin); // end of file for the program
            let _ = t.send(Event::Written(r));
        });
        let t = tx.clone();
        thread::spawn(move || {
            let _ = t.send(Event::Stdout(read_capped(stdout, cap)));
        });
        let t = tx.clone();
        thread::spawn(move || {
            let _ = t.send(Event::StderrTail(read_tail(stderr, STDERR_TAIL)));
        });
        // The waiter owns the child and reaps it whatever happens, so no zombie is left.
        thread::spawn(move || {
            let _ = tx.send(Event::Exited(child.wait()));
        });
        Ok((pid, rx))
    }

    /// Collects the events of one call until the program is done, stopping it on a timeout,
    /// a cancellation or too much output.
    fn wait(
        &self,
        pid: u32,
        rx: &mpsc::Receiver<Event>,
        pairs: usize,
        cap: usize,
        mark: &str,
    ) -> Result<Outcome> {
        let deadline = Instant::now() + self.timeout;
        let mut out = Outcome::default();
        while !out.complete() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(POLL)) {
                Ok(e) => out.record(e),
                Err(RecvTimeoutError::Timeout) => {
                    if crate::interrupt::check().is_err() {
                        self.stop(pid, mark, rx, &mut out);
                        return Err(Error::Interrupted);
                    }
                    if left.is_zero() {
                        self.stop(pid, mark, rx, &mut out);
                        return Err(self.err(format!(
                            "did not finish within the timeout of {:?} for {pairs} pairs; killed \
                             it{}",
                            self.timeout,
                            out.stderr_note()
                        )));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if matches!(out.stdout, Some(Ok(None))) {
                self.stop(pid, mark, rx, &mut out);
                return Err(self.err(format!(
                    "printed more than {cap} bytes on stdout for {pairs} pairs (one number per \
                     line expected); stopped it"
                )));
            }
        }
        Ok(out)
    }

    /// The rewards of a finished call: exit status 0, stdin written, stdout parsed.
    fn finish(&self, mut out: Outcome, pairs: usize) -> Result<Vec<f64>> {
        let status = match out.status.take() {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Err(self.err(format!("cannot wait for it: {e}"))),
            None => return Err(self.err("lost track of the program")),
        };
        if !status.success() {
            let how = match status.code() {
                Some(c) => format!("exited with status {c}"),
                None => format!("was killed ({status})"),
            };
            return Err(self.err(format!("{how}{}", out.stderr_note())));
        }
        let stdout = match out.stdout.take() {
            Some(Ok(Some(b))) => b,
            Some(Err(e)) => return Err(self.err(format!("cannot read its stdout: {e}"))),
            _ => return Err(self.err("lost its stdout")),
        };
        // A program that exits 0 without reading all its input (a broken pipe) is judged by what
        // it printed; any other failure to write is an error.
        if let Some(Err(e)) = out.written.take() {
            if e.kind() != ErrorKind::BrokenPipe {
                return Err(self.err(format!("cannot write its stdin: {e}")));
            }
        }
        self.parse(&stdout, pairs)
    }

    /// Kills the program's group and waits (a bounded time) until it is reaped and its stderr
    /// is in.
    fn stop(&self, pid: u32, mark: &str, rx: &mpsc::Receiver<Event>, out: &mut Outcome) {
        if out.status.is_none() {
            kill_group(pid);
        }
        // Descendants that left the group (setsid) still hold the pipes open: gone too.
        kill_marked(mark);
        let deadline = Instant::now() + KILL_GRACE;
        while out.status.is_none() || out.stderr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(e) => out.record(e),
                Err(_) => break,
            }
        }
    }

    /// One finite number per line, as many lines as pairs.
    fn parse(&self, stdout: &[u8], n: usize) -> Result<Vec<f64>> {
        let text = String::from_utf8_lossy(stdout);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let lines: Vec<&str> = if text.is_empty() {
            Vec::new()
        } else {
            body.split('\n').collect()
        };
        let mut rewards = Vec::with_capacity(n);
        for (i, line) in lines.iter().enumerate() {
            let s = line.strip_suffix('\r').unwrap_or(line).trim();
            match s.parse::<f64>() {
                Ok(x) if x.is_finite() => rewards.push(x),
                Ok(_) => {
                    return Err(self.err(format!(
                        "line {} of its output, {line:?}, is not a finite number",
                        i + 1
                    )))
                }
                Err(_) => {
                    return Err(self.err(format!(
                        "line {} of its output, {line:?}, is not a number (one number per \
                         line expected)",
                        i + 1
                    )))
                }
            }
        }
        if rewards.len() != n {
            return Err(self.err(format!(
                "printed {} lines for {n} pairs (one number per pair expected)",
                rewards.len()
            )));
        }
        Ok(rewards)
    }
}

impl Reward for CmdReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&mut self, pairs: &[(String, String)]) -> Result<Vec<f64>> {
        self.run(pairs)
    }

    fn score_prompts(&mut self, pairs: &[(&super::data::Prompt, &str)]) -> Result<Vec<f64>> {
        self.run_records(
            pairs
                .iter()
                .map(|(p, c)| {
                    let (key, value) = p.json_field();
                    let mut line = serde_json::Map::new();
                    line.insert(key.into(), value);
                    line.insert(
                        "completion".into(),
                        serde_json::Value::String(c.to_string()),
                    );
                    serde_json::Value::Object(line)
                })
                .collect(),
        )
    }
}
