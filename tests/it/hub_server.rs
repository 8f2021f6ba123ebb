//! A Hugging Face hub protocol server for tests: real HTTP/1.1 on loopback (ephemeral ports),
//! speaking what `warp::hub`, the `hf-hub` crate and the official python client need.
//!
//! Two listeners: the hub itself (repo create, revision info, tree, preupload, LFS batch,
//! multipart completion, verify, commit, branch, resolve) and a "CDN" standing for the presigned
//! storage URLs (object and part PUTs, LFS downloads). Every request is logged; bytes received by
//! the CDN are counted; faults (status codes with Retry-After, connections dropped mid-body,
//! stalls) can be injected per method + path. One thread per connection, `Connection: close`.
#![allow(dead_code)]

use base64::Engine;
use serde_json::{json, Value};
use sha1::Digest as _;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "hf_test_write_token";

#[derive(Clone, Debug)]
pub struct Config {
    /// Bearer token required by write endpoints and private repos.
    pub token: String,
    /// LFS objects larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// Part size the server asks for.
    pub chunk_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: TOKEN.to_string(),
            multipart_threshold: 1 << 20,
            chunk_size: 1 << 20,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status (after reading the body), with an optional `Retry-After` in seconds.
    Status { code: u16, retry_after: Option<u64> },
    /// Answer this status with these headers (any value, e.g. `Retry-After: 1e20`).
    Headers {
        code: u16,
        headers: Vec<(String, String)>,
    },
    /// Read about half the body, then close the connection without answering.
    DropMidBody,
    /// Hold the connection open without answering for this long, then close it.
    Stall(Duration),
    /// Answer as usual, announcing the whole length, but close after half the body.
    CutAnswer,
}

struct Rule {
    method: String,
    path_contains: String,
    fault: Fault,
    remaining: usize,
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub server: &'static str,
    pub method: String,
    pub path: String,
    /// 0 when the connection was dropped or stalled by a fault.
    pub status: u16,
    pub at: Instant,
    pub has_auth: bool,
    /// The request's `Range` header.
    pub range: Option<String>,
}

#[derive(Clone, Debug)]
enum Entry {
    Regular(Vec<u8>),
    Lfs { sha256: String, size: u64 },
}

#[derive(Clone, Debug)]
struct Commit {
    parent: Option<String>,
    summary: String,
    files: BTreeMap<String, Entry>,
}

struct Repo {
    private: bool,
    branches: HashMap<String, String>,
    commits: HashMap<String, Commit>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    objects: HashMap<String, Vec<u8>>,
    parts: HashMap<String, BTreeMap<u32, Vec<u8>>>,
    rules: Vec<Rule>,
    log: Vec<Logged>,
    cdn_bytes: u64,
    counter: u64,
}

pub struct HubServer {
    /// Hub base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// Storage base URL.
    pub cdn: String,
    pub config: Config,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

struct Ctx {
    hub: String,
    cdn: String,
    config: Config,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl HubServer {
    pub fn start() -> HubServer {
        HubServer::with_config(Config::default())
    }

    pub fn with_config(config: Config) -> HubServer {
        let hub_l = TcpListener::bind("127.0.0.1:0").expect("bind hub");
        let cdn_l = TcpListener::bind("127.0.0.1:0").expect("bind cdn");
        let hub = format!("http://{}", hub_l.local_addr().unwrap());
        let cdn = format!("http://{}", cdn_l.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx {
            hub: hub.clone(),
            cdn: cdn.clone(),
            config: config.clone(),
            state: state.clone(),
            stop: stop.clone(),
        });
        for (listener, which) in [(hub_l, "hub"), (cdn_l, "cdn")] {
            let ctx = ctx.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if ctx.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let ctx = ctx.clone();
                    std::thread::spawn(move || handle(&ctx, which, conn));
                }
            });
        }
        HubServer {
            url: hub,
            cdn,
            config,
            state,
            stop,
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inject `fault` for the next `times` requests with this method whose path contains `path`.
    pub fn fail(&self, method: &str, path_contains: &str, fault: Fault, times: usize) {
        self.st().rules.push(Rule {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            fault,
            remaining: times,
        });
    }

    pub fn log(&self) -> Vec<Logged> {
        self.st().log.clone()
    }

    /// Body bytes received by the storage listener (PUTs), dropped attempts included.
    pub fn cdn_bytes(&self) -> u64 {
        self.st().cdn_bytes
    }

    pub fn has_object(&self, sha256: &str) -> bool {
        self.st().objects.contains_key(sha256)
    }

    pub fn object_count(&self) -> usize {
        self.st().objects.len()
    }

    /// Head commit of a branch.
    pub fn head(&self, repo: &str, branch: &str) -> Option<String> {
        self.st().repos.get(repo)?.branches.get(branch).cloned()
    }

    /// Number of commits in a repo (the initial one included).
    pub fn commit_count(&self, repo: &str) -> usize {
        self.st().repos.get(repo).map_or(0, |r| r.commits.len())
    }

    pub fn commit_summary(&self, repo: &str, oid: &str) -> Option<String> {
        Some(self.st().repos.get(repo)?.commits.get(oid)?.summary.clone())
    }

    pub fn is_private(&self, repo: &str) -> Option<bool> {
        self.st().repos.get(repo).map(|r| r.private)
    }

    /// Content of a file at a branch head, LFS or not.
    pub fn file(&self, repo: &str, branch: &str, path: &str) -> Option<Vec<u8>> {
        let st = self.st();
        let r = st.repos.get(repo)?;
        let c = r.commits.get(r.branches.get(branch)?)?;
        match c.files.get(path)? {
            Entry::Regular(b) => Some(b.clone()),
            Entry::Lfs { sha256, .. } => st.objects.get(sha256).cloned(),
        }
    }

    /// Whether a file is stored as LFS at a branch head.
    pub fn is_lfs(&self, repo: &str, branch: &str, path: &str) -> Option<bool> {
        let st = self.st();
        let r = st.repos.get(repo)?;
        let c = r.commits.get(r.branches.get(branch)?)?;
        Some(matches!(c.files.get(path)?, Entry::Lfs { .. }))
    }

    /// Paths at a branch head.
    pub fn files(&self, repo: &str, branch: &str) -> Vec<String> {
        let st = self.st();
        let Some(r) = st.repos.get(repo) else {
            return vec![];
        };
        let Some(c) = r.branches.get(branch).and_then(|h| r.commits.get(h)) else {
            return vec![];
        };
        c.files.keys().cloned().collect()
    }

    /// Print the request log (for failing tests).
    pub fn dump_log(&self) -> String {
        self.log()
            .iter()
            .map(|l| format!("{} {} {} -> {}", l.server, l.method, l.path, l.status))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loops so their threads end.
        for u in [&self.url, &self.cdn] {
            let _ = TcpStream::connect(u.trim_start_matches("http://"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16) -> Self {
        Response {
            status,
            headers: vec![],
            body: vec![],
        }
    }
    fn json(status: u16, v: Value) -> Self {
        let mut r = Response::new(status);
        r.headers
            .push(("Content-Type".into(), "application/json".into()));
        r.body = v.to_string().into_bytes();
        r
    }
    fn error(status: u16, code: &str, msg: &str) -> Self {
        let mut r = Response::json(status, json!({ "error": msg }));
        if !code.is_empty() {
            r.headers.push(("X-Error-Code".into(), code.into()));
        }
        r.headers.push(("X-Error-Message".into(), msg.into()));
        r
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn read_head(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut it = line.split_whitespace();
    let method = it.next()?.to_string();
    let path = it.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

/// Read the body (Content-Length or chunked), at most `limit` bytes; counts into `count`.
fn read_body(
    r: &mut BufReader<TcpStream>,
    req: &Request,
    limit: Option<u64>,
    count: &mut dyn FnMut(u64),
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    if req
        .header("Transfer-Encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = u64::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end).ok()?;
                return Some(body);
            }
            let mut chunk = vec![0u8; n as usize];
            r.read_exact(&mut chunk).ok()?;
            count(n);
            body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).ok()?;
            if limit.is_some_and(|l| body.len() as u64 >= l) {
                return Some(body);
            }
        }
    }
    let len: u64 = req
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let want = limit.map_or(len, |l| l.min(len));
    let mut buf = [0u8; 64 << 10];
    while (body.len() as u64) < want {
        let take = ((want - body.len() as u64) as usize).min(buf.len());
        let n = r.read(&mut buf[..take]).ok()?;
        if n == 0 {
            return None;
        }
        count(n as u64);
        body.extend_from_slice(&buf[..n]);
    }
    Some(body)
}

fn handle(ctx: &Ctx, which: &'static str, stream: TcpStream) {
    if ctx.stop.load(Ordering::Relaxed) {
        return;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let Some(req) = read_head(&mut reader) else {
        return;
    };
    let path_only = req.path.split('?').next().unwrap_or("").to_string();
    let log = |status: u16| {
        let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        st.log.push(Logged {
            server: which,
            method: req.method.clone(),
            path: path_only.clone(),
            status,
            at: Instant::now(),
            has_auth: req.header("Authorization").is_some(),
            range: req.header("Range").map(str::to_string),
        });
    };
    let fault = {
        let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        st.rules
            .iter_mut()
            .find(|r| {
                r.remaining > 0 && r.method == req.method && path_only.contains(&r.path_contains)
            })
            .map(|r| {
                r.remaining -= 1;
                r.fault.clone()
            })
    };
    let cdn_put = which == "cdn" && req.method == "PUT";
    let state = ctx.state.clone();
    let mut count = move |n: u64| {
        if cdn_put {
            state.lock().unwrap_or_else(|e| e.into_inner()).cdn_bytes += n;
        }
    };
    match fault {
        Some(Fault::DropMidBody) => {
            let len: u64 = req
                .header("Content-Length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(2);
            let _ = read_body(&mut reader, &req, Some((len / 2).max(1)), &mut count);
            log(0);
            let _ = write_half.shutdown(Shutdown::Both);
            return;
        }
        Some(Fault::Stall(d)) => {
            log(0);
            let until = Instant::now() + d;
            while Instant::now() < until && !ctx.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = write_half.shutdown(Shutdown::Both);
            return;
        }
        _ => {}
    }
    let Some(body) = read_body(&mut reader, &req, None, &mut count) else {
        log(0);
        return;
    };
    let cut = matches!(fault, Some(Fault::CutAnswer));
    let resp = match fault {
        Some(Fault::Status { code, retry_after }) => {
            let mut r = Response::error(code, "", "injected failure");
            if let Some(s) = retry_after {
                r = r.header("Retry-After", s.to_string());
            }
            r
        }
        Some(Fault::Headers { code, headers }) => {
            let mut r = Response::json(code, json!({ "error": "injected failure" }));
            for (k, v) in headers {
                r = r.header(&k, v);
            }
            r
        }
        _ => {
            if which == "hub" {
                route_hub(ctx, &req, &body)
            } else {
                route_cdn(ctx, &req, &body)
            }
        }
    };
    log(resp.status);
    write_response(write_half, &req, resp, cut);
}

fn write_response(mut w: TcpStream, req: &Request, resp: Response, cut: bool) {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    let mut has_len = false;
    for (k, v) in &resp.headers {
        has_len |= k.eq_ignore_ascii_case("Content-Length");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let _ = w.write_all(head.as_bytes());
    if req.method != "HEAD" {
        let n = if cut {
            resp.body.len() / 2
        } else {
            resp.body.len()
        };
        let _ = w.write_all(&resp.body[..n]);
    }
    let _ = w.flush();
    let _ = w.shutdown(Shutdown::Write);
    // Let the client read the answer before the socket goes (avoids a reset losing it).
    let mut sink = [0u8; 1024];
    let _ = w.set_read_timeout(Some(Duration::from_millis(200)));
    while matches!(w.read(&mut sink), Ok(n) if n > 0) {}
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn segments(path: &str) -> Vec<String> {
    path.split('?')
        .next()
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex(&sha2::Sha256::digest(b))
}

fn git_oid(b: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn pointer(sha: &str, size: u64) -> Vec<u8> {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n")
        .into_bytes()
}

/// Serve `data` honouring a `Range: bytes=a-b` header.
fn ranged(req: &Request, data: &[u8], mut base: Response) -> Response {
    let total = data.len() as u64;
    base = base.header("Accept-Ranges", "bytes");
    if let Some(r) = req.header("Range").and_then(|r| r.strip_prefix("bytes=")) {
        let (a, b) = r.split_once('-').unwrap_or((r, ""));
        let start: u64 = a.parse().unwrap_or(0);
        let end: u64 = if b.is_empty() {
            total.saturating_sub(1)
        } else {
            b.parse().unwrap_or(0)
        };
        if start >= total {
            return Response::new(416).header("Content-Range", format!("bytes */{total}"));
        }
        let end = end.min(total - 1);
        base.status = 206;
        base.body = data[start as usize..=end as usize].to_vec();
        return base.header("Content-Range", format!("bytes {start}-{end}/{total}"));
    }
    base.body = data.to_vec();
    base
}

// ---------------------------------------------------------------------------------------------
// The hub

fn authorized(ctx: &Ctx, req: &Request) -> bool {
    req.header("Authorization") == Some(&format!("Bearer {}", ctx.config.token))
}

fn new_oid(st: &mut State, seed: &str) -> String {
    st.counter += 1;
    let mut h = sha1::Sha1::new();
    h.update(format!("{seed}/{}", st.counter).as_bytes());
    hex(&h.finalize())
}

fn resolve_rev(repo: &Repo, rev: &str) -> Option<String> {
    if let Some(h) = repo.branches.get(rev) {
        return Some(h.clone());
    }
    repo.commits.contains_key(rev).then(|| rev.to_string())
}

fn is_lfs_path(path: &str, size: u64, sample: &[u8]) -> bool {
    let ext = path.rsplit('.').next().unwrap_or("");
    matches!(
        ext,
        "safetensors" | "bin" | "pt" | "pth" | "model" | "msgpack" | "h5" | "ckpt"
    ) || size >= 10 << 20
        || sample.contains(&0)
}

fn route_hub(ctx: &Ctx, req: &Request, body: &[u8]) -> Response {
    let seg = segments(&req.path);
    let s: Vec<&str> = seg.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    match (m, s.as_slice()) {
        ("POST", ["api", "repos", "create"]) => create_repo(ctx, req, body),
        ("POST", ["api", "validate-yaml"]) => {
            Response::json(200, json!({"errors": [], "warnings": []}))
        }
        ("GET", ["api", "models", org, name, "revision", rev]) => {
            with_repo(ctx, req, org, name, false, |st, id| {
                revision_info(st, id, rev)
            })
        }
        ("GET", ["api", "models", org, name, "tree", rev, rest @ ..]) => {
            let prefix = rest.join("/");
            with_repo(ctx, req, org, name, false, |st, id| {
                tree(st, id, rev, &prefix)
            })
        }
        ("POST", ["api", "models", org, name, "preupload", rev]) => {
            with_repo(ctx, req, org, name, true, |st, id| {
                preupload(st, id, rev, body)
            })
        }
        ("POST", ["api", "models", org, name, "commit", rev]) => {
            with_repo(ctx, req, org, name, true, |st, repo_id| {
                commit(ctx, st, repo_id, rev, body)
            })
        }
        ("POST", ["api", "models", org, name, "branch", branch]) => {
            with_repo(ctx, req, org, name, true, |st, id| {
                create_branch(st, id, branch, body)
            })
        }
        ("POST", [org, name_git, "info", "lfs", "objects", "batch"]) => {
            let Some(name) = name_git.strip_suffix(".git") else {
                return Response::error(404, "", "not found");
            };
            with_repo(ctx, req, org, name, true, |st, repo_id| {
                lfs_batch(ctx, st, repo_id, body)
            })
        }
        ("POST", [_, _, "info", "lfs", "objects", "complete", oid]) => {
            complete_multipart(ctx, oid, body)
        }
        ("POST", [_, _, "info", "lfs", "objects", "verify"]) => lfs_verify(ctx, req, body),
        ("GET" | "HEAD", [org, name, "resolve", rev, file @ ..]) if !file.is_empty() => {
            let file = file.join("/");
            with_repo(ctx, req, org, name, false, |st, id| {
                resolve_file(ctx, req, st, id, rev, &file)
            })
        }
        _ => Response::error(404, "", &format!("no route for {m} {}", req.path)),
    }
}

fn no_revision(rev: &str) -> Response {
    Response::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"))
}

/// `GET /api/models/{repo}/revision/{rev}`: the commit and its files.
fn revision_info(st: &mut State, repo_id: &str, rev: &str) -> Response {
    let repo = &st.repos[repo_id];
    let Some(head) = resolve_rev(repo, rev) else {
        return no_revision(rev);
    };
    let c = &repo.commits[&head];
    let siblings: Vec<Value> = c.files.keys().map(|p| json!({ "rfilename": p })).collect();
    Response::json(
        200,
        json!({
            "_id": "0", "id": repo_id, "modelId": repo_id, "sha": head,
            "private": repo.private, "disabled": false, "gated": false,
            "lastModified": "2024-01-01T00:00:00.000Z", "tags": [], "siblings": siblings,
        }),
    )
}

/// `GET /api/models/{repo}/tree/{rev}/{prefix}`: the files with their oids.
fn tree(st: &mut State, repo_id: &str, rev: &str, prefix: &str) -> Response {
    let repo = &st.repos[repo_id];
    let Some(head) = resolve_rev(repo, rev) else {
        return no_revision(rev);
    };
    let entries: Vec<Value> = repo.commits[&head]
        .files
        .iter()
        .filter(|(p, _)| prefix.is_empty() || p.starts_with(&format!("{prefix}/")))
        .map(|(p, e)| match e {
            Entry::Regular(b) => {
                json!({"type": "file", "oid": git_oid(b), "size": b.len(), "path": p})
            }
            Entry::Lfs { sha256, size } => {
                let ptr = pointer(sha256, *size);
                json!({"type": "file", "oid": git_oid(&ptr), "size": size, "path": p,
                       "lfs": {"oid": sha256, "size": size, "pointerSize": ptr.len()}})
            }
        })
        .collect();
    Response::json(200, Value::Array(entries))
}

/// `POST /api/models/{repo}/preupload/{rev}`: LFS or regular per file, and the oid at its path.
fn preupload(st: &mut State, repo_id: &str, rev: &str, body: &[u8]) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Response::error(400, "", "bad JSON");
    };
    let repo = &st.repos[repo_id];
    let head = resolve_rev(repo, rev).and_then(|h| repo.commits.get(&h));
    let mut out = vec![];
    for f in v["files"].as_array().cloned().unwrap_or_default() {
        let path = f["path"].as_str().unwrap_or("").to_string();
        let size = f["size"].as_u64().unwrap_or(0);
        let sample = base64::engine::general_purpose::STANDARD
            .decode(f["sample"].as_str().unwrap_or(""))
            .unwrap_or_default();
        let lfs = is_lfs_path(&path, size, &sample);
        let oid = head.and_then(|c| c.files.get(&path)).map(|e| match e {
            Entry::Regular(b) => git_oid(b),
            Entry::Lfs { sha256, .. } => sha256.clone(),
        });
        out.push(
            json!({"path": path, "uploadMode": if lfs {"lfs"} else {"regular"},
                        "shouldIgnore": false, "oid": oid}),
        );
    }
    Response::json(
        200,
        json!({"files": out, "commitOid": head.map(|_| resolve_rev(repo, rev))}),
    )
}

/// `POST /api/models/{repo}/branch/{branch}`.
fn create_branch(st: &mut State, repo_id: &str, branch: &str, body: &[u8]) -> Response {
    let repo = st.repos.get_mut(repo_id).expect("repo checked");
    if repo.branches.contains_key(branch) {
        return Response::error(409, "", "Reference already exists");
    }
    let start = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["startingPoint"].as_str().map(str::to_string))
        .unwrap_or_else(|| "main".into());
    let Some(h) = resolve_rev(repo, &start) else {
        return Response::error(404, "RevisionNotFound", "bad startingPoint");
    };
    repo.branches.insert(branch.to_string(), h);
    Response::json(200, json!({}))
}

/// `POST {repo}.git/info/lfs/objects/verify`: the object is stored with that size.
fn lfs_verify(ctx: &Ctx, req: &Request, body: &[u8]) -> Response {
    if !authorized(ctx, req) {
        return Response::error(401, "", "Invalid credentials in Authorization header");
    }
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let oid = v["oid"].as_str().unwrap_or("");
    let st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    match st.objects.get(oid) {
        Some(o) if Some(o.len() as u64) == v["size"].as_u64() => Response::json(200, json!({})),
        _ => Response::error(404, "", "object not found"),
    }
}

/// `GET|HEAD /{repo}/resolve/{rev}/{file}`: a regular file's bytes, or a redirect to the
/// storage for an LFS one.
fn resolve_file(
    ctx: &Ctx,
    req: &Request,
    st: &mut State,
    repo_id: &str,
    rev: &str,
    file: &str,
) -> Response {
    let repo = &st.repos[repo_id];
    let Some(head) = resolve_rev(repo, rev) else {
        return no_revision(rev);
    };
    match repo.commits[&head].files.get(file) {
        None => Response::error(404, "EntryNotFound", &format!("{file} does not exist"))
            .header("X-Repo-Commit", head),
        Some(Entry::Regular(b)) => ranged(
            req,
            b,
            Response::new(200)
                .header("ETag", format!("\"{}\"", git_oid(b)))
                .header("X-Repo-Commit", head.clone()),
        ),
        Some(Entry::Lfs { sha256, size }) => Response::new(302)
            .header(
                "Location",
                format!("{}/lfs/{sha256}?X-Amz-Signature=test", ctx.cdn),
            )
            .header("X-Linked-Etag", format!("\"{sha256}\""))
            .header("X-Linked-Size", size.to_string())
            .header("ETag", format!("\"{}\"", git_oid(&pointer(sha256, *size))))
            .header("X-Repo-Commit", head.clone()),
    }
}

/// Run `f` on an existing repo, enforcing auth for writes and private reads.
fn with_repo(
    ctx: &Ctx,
    req: &Request,
    org: &str,
    name: &str,
    write: bool,
    f: impl FnOnce(&mut State, &str) -> Response,
) -> Response {
    let repo_id = format!("{org}/{name}");
    let auth = authorized(ctx, req);
    if write && !auth {
        return Response::error(401, "", "Invalid credentials in Authorization header");
    }
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    match st.repos.get(&repo_id) {
        None => return Response::error(404, "RepoNotFound", "Repository not found"),
        Some(r) if r.private && !auth => {
            return Response::error(401, "RepoNotFound", "Repository not found")
        }
        _ => {}
    }
    f(&mut st, &repo_id)
}

fn create_repo(ctx: &Ctx, req: &Request, body: &[u8]) -> Response {
    if !authorized(ctx, req) {
        return Response::error(401, "", "Invalid credentials in Authorization header");
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Response::error(400, "", "bad JSON");
    };
    let (Some(org), Some(name)) = (v["organization"].as_str(), v["name"].as_str()) else {
        return Response::error(400, "", "organization and name are required");
    };
    let repo_id = format!("{org}/{name}");
    let private =
        v["private"].as_bool() == Some(true) || v["visibility"].as_str() == Some("private");
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    if st.repos.contains_key(&repo_id) {
        return Response::error(409, "", "You already created this model repo")
            .header("X-Url", format!("{}/{repo_id}", ctx.hub));
    }
    let oid = new_oid(&mut st, &repo_id);
    let mut files = BTreeMap::new();
    files.insert(
        ".gitattributes".to_string(),
        Entry::Regular(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n".to_vec()),
    );
    let mut commits = HashMap::new();
    commits.insert(
        oid.clone(),
        Commit {
            parent: None,
            summary: "initial commit".into(),
            files,
        },
    );
    let mut branches = HashMap::new();
    branches.insert("main".to_string(), oid);
    st.repos.insert(
        repo_id.clone(),
        Repo {
            private,
            branches,
            commits,
        },
    );
    Response::json(
        200,
        json!({"url": format!("{}/{repo_id}", ctx.hub), "name": repo_id, "id": "1"}),
    )
}

fn lfs_batch(ctx: &Ctx, st: &mut State, repo_id: &str, body: &[u8]) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Response::error(400, "", "bad JSON");
    };
    if v["operation"] != "upload" {
        return Response::error(400, "", "only upload is supported");
    }
    let multipart = v["transfers"]
        .as_array()
        .is_some_and(|t| t.iter().any(|x| x == "multipart"));
    let mut objects = vec![];
    for o in v["objects"].as_array().cloned().unwrap_or_default() {
        let oid = o["oid"].as_str().unwrap_or("").to_string();
        let size = o["size"].as_u64().unwrap_or(0);
        if oid.len() != 64 || !oid.bytes().all(|b| b.is_ascii_hexdigit()) {
            objects.push(
                json!({"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid"}}),
            );
            continue;
        }
        if st.objects.contains_key(&oid) {
            objects.push(json!({"oid": oid, "size": size}));
            continue;
        }
        let verify = json!({"href": format!("{}/{repo_id}.git/info/lfs/objects/verify", ctx.hub), "header": {}});
        let upload = if multipart && size > ctx.config.multipart_threshold {
            let mut header = serde_json::Map::new();
            header.insert(
                "chunk_size".into(),
                json!(ctx.config.chunk_size.to_string()),
            );
            let n = size.div_ceil(ctx.config.chunk_size);
            for i in 1..=n {
                header.insert(
                    format!("{i:05}"),
                    json!(format!("{}/part/{oid}/{i}?X-Amz-Signature=test", ctx.cdn)),
                );
            }
            st.parts.insert(oid.clone(), BTreeMap::new());
            json!({"href": format!("{}/{repo_id}.git/info/lfs/objects/complete/{oid}", ctx.hub), "header": header})
        } else {
            json!({"href": format!("{}/upload/{oid}?X-Amz-Signature=test", ctx.cdn)})
        };
        objects.push(json!({"oid": oid, "size": size, "authenticated": true,
                            "actions": {"upload": upload, "verify": verify}}));
    }
    Response::json(
        200,
        json!({"transfer": if multipart {"multipart"} else {"basic"}, "objects": objects}),
    )
}

fn complete_multipart(ctx: &Ctx, oid: &str, body: &[u8]) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Response::error(400, "", "bad JSON");
    };
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(parts) = st.parts.get(oid) else {
        return Response::error(404, "", "no multipart upload for this object");
    };
    let listed = v["parts"].as_array().cloned().unwrap_or_default();
    if listed.len() != parts.len() {
        return Response::error(
            400,
            "",
            &format!("{} parts listed, {} uploaded", listed.len(), parts.len()),
        );
    }
    let mut data = Vec::new();
    for (i, p) in listed.iter().enumerate() {
        let n = p["partNumber"].as_u64().unwrap_or(0) as u32;
        let Some(chunk) = parts.get(&n) else {
            return Response::error(400, "", &format!("part {n} missing"));
        };
        if n as usize != i + 1
            || p["etag"].as_str() != Some(&format!("\"{}\"", hex(&sha1::Sha1::digest(chunk))))
        {
            return Response::error(400, "", &format!("part {n}: wrong number or etag"));
        }
        data.extend_from_slice(chunk);
    }
    if sha256_hex(&data) != oid {
        return Response::error(400, "", "assembled object does not match its oid");
    }
    st.parts.remove(oid);
    st.objects.insert(oid.to_string(), data);
    Response::json(200, json!({}))
}

fn commit(ctx: &Ctx, st: &mut State, repo_id: &str, rev: &str, body: &[u8]) -> Response {
    let text = String::from_utf8_lossy(body);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(Ok(header)) = lines.next().map(serde_json::from_str::<Value>) else {
        return Response::error(400, "", "missing header line");
    };
    if header["key"] != "header" {
        return Response::error(400, "", "first line must be the header");
    }
    let Some(head) = st.repos[repo_id].branches.get(rev).cloned() else {
        return Response::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    };
    if let Some(p) = header["value"]["parentCommit"].as_str() {
        if p != head {
            return Response::error(
                412,
                "",
                "A commit has happened since. Please refresh and try again.",
            );
        }
    }
    let mut files = st.repos[repo_id].commits[&head].files.clone();
    for line in lines {
        let Ok(op) = serde_json::from_str::<Value>(line) else {
            return Response::error(400, "", "bad NDJSON line");
        };
        let val = &op["value"];
        let path = val["path"].as_str().unwrap_or("").to_string();
        match op["key"].as_str() {
            Some("file") => {
                if val["encoding"] != "base64" {
                    return Response::error(400, "", "only base64 is supported");
                }
                let Ok(b) = base64::engine::general_purpose::STANDARD
                    .decode(val["content"].as_str().unwrap_or(""))
                else {
                    return Response::error(400, "", "bad base64");
                };
                files.insert(path, Entry::Regular(b));
            }
            Some("lfsFile") => {
                let oid = val["oid"].as_str().unwrap_or("").to_string();
                let Some(obj) = st.objects.get(&oid) else {
                    return Response::error(
                        422,
                        "",
                        &format!("LFS object {oid} for {path} was never uploaded"),
                    );
                };
                if val["algo"] != "sha256"
                    || val["size"].as_u64().is_some_and(|s| s != obj.len() as u64)
                {
                    return Response::error(422, "", &format!("{path}: bad algo or size"));
                }
                let size = obj.len() as u64;
                files.insert(path, Entry::Lfs { sha256: oid, size });
            }
            Some("deletedFile") => {
                files.remove(&path);
            }
            other => return Response::error(400, "", &format!("unsupported operation {other:?}")),
        }
    }
    let oid = new_oid(st, repo_id);
    let summary = header["value"]["summary"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let repo = st.repos.get_mut(repo_id).expect("repo checked");
    repo.commits.insert(
        oid.clone(),
        Commit {
            parent: Some(head),
            summary,
            files,
        },
    );
    repo.branches.insert(rev.to_string(), oid.clone());
    Response::json(
        200,
        json!({"success": true, "commitOid": oid,
        "commitUrl": format!("{}/{repo_id}/commit/{oid}", ctx.hub), "hookOutput": "", "pullRequestUrl": null}),
    )
}

// ---------------------------------------------------------------------------------------------
// The storage ("CDN")

fn route_cdn(ctx: &Ctx, req: &Request, body: &[u8]) -> Response {
    let seg = segments(&req.path);
    let s: Vec<&str> = seg.iter().map(String::as_str).collect();
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    match (req.method.as_str(), s.as_slice()) {
        ("PUT", ["upload", oid]) => {
            if sha256_hex(body) != *oid {
                return Response::error(400, "", "content does not match the oid");
            }
            st.objects.insert(oid.to_string(), body.to_vec());
            Response::new(200).header("ETag", format!("\"{}\"", hex(&sha1::Sha1::digest(body))))
        }
        ("PUT", ["part", oid, n]) => {
            let Ok(n) = n.parse::<u32>() else {
                return Response::error(400, "", "bad part number");
            };
            let expected = ctx.config.chunk_size as usize;
            let Some(parts) = st.parts.get_mut(*oid) else {
                return Response::error(404, "", "no such upload");
            };
            if body.len() > expected || body.is_empty() {
                return Response::error(400, "", "bad part size");
            }
            parts.insert(n, body.to_vec());
            Response::new(200).header("ETag", format!("\"{}\"", hex(&sha1::Sha1::digest(body))))
        }
        ("GET" | "HEAD", ["lfs", oid]) => match st.objects.get(*oid) {
            Some(data) => ranged(
                req,
                data,
                Response::new(200).header("ETag", format!("\"{oid}\"")),
            ),
            None => Response::error(404, "", "NoSuchKey"),
        },
        _ => Response::error(404, "", "no route"),
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A sharded checkpoint folder: index + two shards (multipart at the default chunk size),
/// config and tokenizer files. Returns (relative path, content) of every file.
pub fn write_checkpoint(dir: &std::path::Path, seed: u64) -> Vec<(String, Vec<u8>)> {
    let shard1 = bytes(2_500_000 + seed as usize % 1000, seed);
    let shard2 = bytes(700_000, seed + 1);
    let index = json!({
        "metadata": {"total_size": shard1.len() + shard2.len()},
        "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                       "b.weight": "model-00002-of-00002.safetensors"}
    });
    let files = vec![
        ("model-00001-of-00002.safetensors".to_string(), shard1),
        ("model-00002-of-00002.safetensors".to_string(), shard2),
        (
            "model.safetensors.index.json".to_string(),
            serde_json::to_vec_pretty(&index).unwrap(),
        ),
        (
            "config.json".to_string(),
            format!("{{\"model_type\": \"llama\", \"seed\": {seed}}}").into_bytes(),
        ),
        (
            "tokenizer.json".to_string(),
            b"{\"version\": \"1.0\"}".to_vec(),
        ),
    ];
    for (p, c) in &files {
        std::fs::write(dir.join(p), c).unwrap();
    }
    files
}
