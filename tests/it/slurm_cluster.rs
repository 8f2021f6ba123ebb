//! A real Slurm cluster for the tests: one node (this machine, named by `hostname -s`) from
//! Debian's `slurm-wlm` and `munge`, started as root with every config, state, spool, log and
//! pid file in a temp folder and `SLURM_CONF` pointing there, so no system file is changed.
//!
//! `munged` runs as the munge user with its own key and socket in a folder of `/run/munge`
//! (munged refuses sockets in folders it does not trust), then `slurmctld`, then `slurmd`, all in
//! the foreground as children of the test; the cluster is up when `sinfo` shows the node idle.
//! Dropping [`Cluster`] (also when a test panics) cancels the jobs left and stops the daemons
//! by their pids. There is no accounting database: job state comes from squeue/scontrol.
//!
//! Tests take the cluster through [`cluster`], which holds a lock so that only one test of
//! the binary uses a cluster at a time, and returns `None` after printing "skipped: …" where
//! the packages or root are missing — unless `WARP_REQUIRE_SLURM=1`, where that is a failure.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static LOCK: Mutex<()> = Mutex::new(());

/// Seconds to wait for the node to come up.
const START_TIMEOUT: u64 = 90;

pub struct Cluster {
    /// slurm.conf, state/, spool/, log/.
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    munge_dir: PathBuf,
    daemons: Vec<(&'static str, Child)>,
}

/// A started cluster and the lock that keeps other tests of this binary off it (dropped after
/// the cluster).
pub struct Session {
    pub cluster: Cluster,
    _lock: MutexGuard<'static, ()>,
}

impl std::ops::Deref for Session {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The uid and gid of a user, from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Why this machine cannot run the cluster, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the Slurm tests need root (slurmd and munged run as root/munge)".into());
    }
    let missing: Vec<&str> = [
        "munged",
        "slurmctld",
        "slurmd",
        "sbatch",
        "squeue",
        "scontrol",
        "scancel",
        "sinfo",
    ]
    .into_iter()
    .filter(|p| which(p).is_none())
    .collect();
    if !missing.is_empty() {
        return Some(format!(
            "Slurm is not installed (missing {}; scripts/setup-slurm.sh installs slurm-wlm and munge)",
            missing.join(", ")
        ));
    }
    if user_ids("munge").is_none() {
        return Some("no munge user (the munge package creates it)".into());
    }
    None
}

/// The cluster for one test, or `None` (after saying so) where this machine cannot run it.
pub fn cluster(test: &str) -> Option<Session> {
    if let Some(why) = unavailable() {
        if std::env::var("WARP_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
            panic!("{test}: WARP_REQUIRE_SLURM=1 but {why}");
        }
        // Straight to the stderr handle: libtest captures eprintln! of passing tests, and a
        // skip must not be silent.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
        return None;
    }
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    Some(Session {
        cluster: Cluster::start(),
        _lock: lock,
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn short_hostname() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    assert!(out.status.success(), "hostname -s failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn log_tail(path: &Path) -> String {
    let t = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Cluster {
    // long fn: starting a cluster is one sequence of dependent steps (munge, config, daemons, readiness).
    fn start() -> Cluster {
        let t0 = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("warp-slurm-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        for d in ["state", "spool", "log"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        let (uid, gid) = user_ids("munge").unwrap();
        let run_munge = Path::new("/run/munge");
        if !run_munge.exists() {
            fs::create_dir_all(run_munge).unwrap();
            std::os::unix::fs::chown(run_munge, Some(uid), Some(gid)).unwrap();
            fs::set_permissions(run_munge, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let munge_dir = run_munge.join(format!(
            "warp-test-{}-{}",
            std::process::id(),
            root.file_name().unwrap().to_string_lossy()
        ));
        fs::create_dir(&munge_dir).unwrap();
        let mut cluster = Cluster {
            conf: root.join("slurm.conf"),
            dir,
            munge_dir: munge_dir.clone(),
            daemons: Vec::new(),
        };
        // From here on a panic drops `cluster`, which stops what was started.
        let key = munge_dir.join("munge.key");
        let mut bytes = vec![0u8; 1024];
        use std::io::Read;
        fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut bytes)
            .unwrap();
        fs::write(&key, &bytes).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        for p in [&munge_dir, &key] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        }
        // munged wants its socket folder searchable by all (clients connect as any user).
        fs::set_permissions(&munge_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let socket = munge_dir.join("munge.socket");
        let mut munged = Command::new(which("munged").unwrap());
        munged
            .arg("--foreground")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!(
                "--pid-file={}",
                munge_dir.join("munged.pid").display()
            ))
            .arg(format!(
                "--log-file={}",
                munge_dir.join("munged.log").display()
            ))
            .arg(format!(
                "--seed-file={}",
                munge_dir.join("munged.seed").display()
            ))
            .uid(uid)
            .gid(gid);
        cluster.spawn("munged", munged);
        cluster.wait_for("munged", || socket.exists());

        let host = short_hostname();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let r = root.display();
        let conf = format!(
            "# A one-node test cluster (tests/it/slurm_cluster.rs): everything under {r}.
ClusterName=warptest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
# The node offers at least 4 CPUs whatever the machine has (config_overrides), so the few
# single-CPU jobs of a test run side by side as on a real cluster.
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
",
            ctld = free_port(),
            slurmd = free_port(),
            socket = socket.display(),
            cpus = cpus.max(4),
        );
        fs::write(&cluster.conf, conf).unwrap();
        let mut ctld = Command::new(which("slurmctld").unwrap());
        ctld.arg("-D").env("SLURM_CONF", &cluster.conf);
        cluster.spawn("slurmctld", ctld);
        let mut slurmd = Command::new(which("slurmd").unwrap());
        slurmd.arg("-D").env("SLURM_CONF", &cluster.conf);
        cluster.spawn("slurmd", slurmd);
        let conf_path = cluster.conf.clone();
        cluster.wait_for("the node to be idle in sinfo", || {
            Command::new("sinfo")
                .args(["-h", "-o", "%t"])
                .env("SLURM_CONF", &conf_path)
                .stderr(Stdio::null())
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        eprintln!(
            "slurm test cluster up in {:.1} s (SLURM_CONF={})",
            t0.elapsed().as_secs_f64(),
            cluster.conf.display()
        );
        cluster
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command) {
        let out =
            fs::File::create(self.dir.path().join("log").join(format!("{name}.out"))).unwrap();
        let err = out.try_clone().unwrap();
        // SAFETY: prctl is async-signal-safe. The daemon gets SIGTERM if the test thread that
        // started it dies without dropping the cluster (e.g. the test binary is killed).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.daemons.push((name, child));
    }

    /// Polls `ready` until it holds; panics with the daemons' logs after the timeout or when a
    /// daemon exits.
    fn wait_for(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let t0 = Instant::now();
        loop {
            if ready() {
                return;
            }
            let exited: Vec<String> = self
                .daemons
                .iter_mut()
                .filter_map(|(n, c)| {
                    c.try_wait()
                        .ok()
                        .flatten()
                        .map(|s| format!("{n} exited ({s})"))
                })
                .collect();
            if !exited.is_empty() || t0.elapsed() > Duration::from_secs(START_TIMEOUT) {
                panic!(
                    "slurm test cluster: no {what} after {:.0} s; {}\n{}",
                    t0.elapsed().as_secs_f64(),
                    exited.join(", "),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let mut files = vec![self.munge_dir.join("munged.log")];
        for f in [
            "munged.out",
            "slurmctld.out",
            "slurmd.out",
            "slurmctld.log",
            "slurmd.log",
        ] {
            files.push(self.dir.path().join("log").join(f));
        }
        for f in files {
            s += &format!("--- {}\n{}\n", f.display(), log_tail(&f));
        }
        s
    }

    /// A Slurm client command against this cluster.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// Runs a client command and returns its stdout (panics on failure).
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `scontrol show job JOB` as key → value.
    pub fn job(&self, job: &str) -> std::collections::HashMap<String, String> {
        self.run("scontrol", &["-o", "show", "job", job])
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first, so that no slurmstepd outlives its slurmd.
        if self.daemons.len() == 3 {
            let _ = self
                .cmd("scancel")
                .args(["--user=root", "--quiet"])
                .status();
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                let out = self.cmd("squeue").args(["-h", "-o", "%i"]).output();
                if out.map_or(true, |o| !o.status.success() || o.stdout.is_empty()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for (_, child) in self.daemons.iter_mut().rev() {
            // SAFETY: kill with a pid of our own child that has not been waited for yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.munge_dir);
    }
}
