//! The HTTP side of the hub: one ureq agent, the bearer token attached only to requests for the
//! hub's own origin (never to presigned storage URLs), and [`retry`], the one retry loop of every
//! request, uploads and downloads alike: exponential backoff on connection errors, 408, 429 and
//! 5xx, honouring `Retry-After`.

use super::{HubError, RetryPolicy};
use crate::error::Error;
use crate::progress::Reporter;
use serde_json::Value;
use std::io::Read;
use std::time::Duration;

/// Largest JSON answer we read (the LFS batch answer for 256 multipart objects is well below).
const MAX_JSON_BYTES: u64 = 64 << 20;

/// How the retry loop judges one failed attempt.
pub(crate) struct Verdict {
    /// Worth another attempt (a transient failure).
    pub retry: bool,
    /// How long the server asked to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// The request may have reached the server and been acted on (its answer was lost).
    pub lost_response: bool,
    /// A short reason for the retry message.
    pub reason: String,
}

impl Verdict {
    pub(crate) fn fatal() -> Verdict {
        Verdict {
            retry: false,
            retry_after: None,
            lost_response: false,
            reason: String::new(),
        }
    }
}

/// The one retry loop: runs `attempt` (given the attempt number; it must rebuild its request
/// body each time) until it succeeds, `judge` says its error is not transient, or the policy's
/// retries are spent. Waits what the server asked for (`Retry-After`, up to the policy's cap),
/// else an exponential backoff. A failure comes with whether an earlier attempt may have been
/// acted on by the server although its answer was lost.
pub(crate) fn retry<T, E>(
    policy: &RetryPolicy,
    what: &str,
    reporter: &dyn Reporter,
    mut attempt: impl FnMut(u32) -> Result<T, E>,
    judge: impl Fn(&E) -> Verdict,
) -> Result<T, (E, bool)> {
    let mut ambiguous = false;
    let mut n = 0u32;
    loop {
        let err = match attempt(n) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let v = judge(&err);
        if !v.retry || n >= policy.max_retries {
            return Err((err, ambiguous));
        }
        ambiguous |= v.lost_response;
        let delay = match v.retry_after {
            Some(d) => d.min(policy.max_retry_after),
            None => policy.backoff(n),
        };
        n += 1;
        reporter.message(&format!(
            "{what}: {}; retry {n}/{} in {:.1}s",
            v.reason,
            policy.max_retries,
            delay.as_secs_f64()
        ));
        std::thread::sleep(delay);
    }
}

/// How the retry loop judges a ureq error: 408, 429 and 5xx (not 501/505) and connection-level
/// failures are transient; a 5xx or a failure after connecting may have been acted on.
pub(crate) fn judge_ureq(e: &ureq::Error) -> Verdict {
    match e {
        ureq::Error::Status(status, resp) => Verdict {
            retry: retryable_status(*status),
            retry_after: retry_after(resp),
            // 5xx from a proxy may come after the origin acted; 408/429 mean not served.
            lost_response: *status >= 500,
            reason: format!("HTTP {status}"),
        },
        ureq::Error::Transport(t) => Verdict {
            retry: retryable_transport(t.kind()),
            retry_after: None,
            // A refused connection never reached the server; anything later might have.
            lost_response: t.kind() != ureq::ErrorKind::ConnectionFailed,
            reason: transport_detail(t),
        },
    }
}

/// A request that failed for good (after retries, or at once for a non-retryable status).
#[derive(Debug)]
pub(crate) struct HttpFailure {
    /// HTTP status; `None` for a connection-level failure.
    pub status: Option<u16>,
    /// The hub's `X-Error-Code` (e.g. `RepoNotFound`, `RevisionNotFound`).
    pub code: Option<String>,
    /// What the server or the transport said, on one line.
    pub detail: String,
    /// No answer in time.
    pub timed_out: bool,
    /// The request's URL.
    pub url: String,
    /// An earlier attempt of this request failed in a way that leaves it unknown whether the
    /// server acted on it (lost response).
    pub ambiguous_earlier_attempt: bool,
}

/// Why one attempt did not produce a response: the network/server (maybe retried) or a local
/// problem such as an unreadable file (never retried).
pub(crate) enum AttemptError {
    Http(Box<ureq::Error>),
    Local(Error),
}

impl From<ureq::Error> for AttemptError {
    fn from(e: ureq::Error) -> Self {
        AttemptError::Http(Box::new(e))
    }
}

/// A request that failed for good.
pub(crate) enum CallError {
    Http(HttpFailure),
    Local(Error),
}

impl CallError {
    pub fn into_error(self, what: &str) -> Error {
        match self {
            CallError::Http(f) => f.into_error(what),
            CallError::Local(e) => e,
        }
    }
}

impl From<HttpFailure> for CallError {
    fn from(f: HttpFailure) -> Self {
        CallError::Http(f)
    }
}

impl HttpFailure {
    /// The failure of an attempt's ureq error (consumes the answer's body for the message).
    pub(crate) fn of(e: ureq::Error, url: &str, ambiguous: bool) -> HttpFailure {
        let mut f = match e {
            ureq::Error::Status(status, resp) => failure_from_response(status, resp),
            ureq::Error::Transport(t) => HttpFailure {
                status: None,
                code: None,
                detail: transport_detail(&t),
                timed_out: is_timeout(&t),
                url: String::new(),
                ambiguous_earlier_attempt: false,
            },
        };
        f.url = url.to_string();
        f.ambiguous_earlier_attempt = ambiguous;
        f
    }

    /// The typed hub error, with `what` as context and advice for 401/403.
    pub fn to_hub_error(&self, what: &str) -> HubError {
        let hint = match self.status {
            Some(401) => " (check the token: the one given, HF_TOKEN or `hf auth login`)",
            Some(403) => " (the token lacks write access to this repo or namespace)",
            _ => "",
        };
        let e = match self.status {
            Some(s) => HubError::status(s, &self.detail),
            None => HubError::network(&self.detail, self.timed_out),
        };
        HubError {
            code: self.code.clone(),
            ..e.context(what).hint(hint).url(&self.url)
        }
    }

    pub fn into_error(self, what: &str) -> Error {
        self.to_hub_error(what).into()
    }
}

pub(crate) struct Client {
    agent: ureq::Agent,
    /// The same agent without automatic redirects: downloads follow them one hop at a time, so
    /// the token can be attached (or not) by each hop's origin.
    direct: ureq::Agent,
    endpoint: String,
    token: Option<String>,
    retry: RetryPolicy,
}

impl Client {
    pub fn new(
        endpoint: &str,
        token: Option<String>,
        retry: RetryPolicy,
        timeout: Duration,
    ) -> Self {
        if let Some(t) = &token {
            register_secret(t);
        }
        let builder = || {
            ureq::AgentBuilder::new()
                // The token goes only to the hub's exact origin (scheme, host and port; see
                // `request`), never along a redirect, whatever host it points to.
                .redirect_auth_headers(ureq::RedirectAuthHeaders::Never)
                .try_proxy_from_env(true)
                .timeout_connect(Duration::from_secs(30))
                .timeout_read(timeout)
                .timeout_write(timeout)
                .user_agent(concat!("warp/", env!("CARGO_PKG_VERSION"), "; rust"))
        };
        Client {
            agent: builder().build(),
            direct: builder().redirects(0).build(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            retry,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// A request with the token attached when `url` is on the hub's origin.
    pub fn request(&self, method: &str, url: &str) -> ureq::Request {
        self.authorize(self.agent.request(method, url), url)
    }

    /// A GET that answers a redirect as it is (3xx, `Location`) instead of following it, with
    /// the token attached only when `url` is on the hub's origin.
    pub fn get_one_hop(&self, url: &str) -> ureq::Request {
        self.authorize(self.direct.get(url), url)
    }

    fn authorize(&self, req: ureq::Request, url: &str) -> ureq::Request {
        match &self.token {
            Some(token) if same_origin(url, &self.endpoint) => {
                req.set("Authorization", &format!("Bearer {token}"))
            }
            _ => req,
        }
    }

    /// Send a JSON body (or none) and parse a JSON answer, with retries.
    pub fn json(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        content_type: &str,
        what: &str,
        reporter: &dyn Reporter,
    ) -> Result<Value, CallError> {
        let bytes = match body {
            Some(v) => serde_json::to_vec(v)
                .map_err(|e| CallError::Local(Error::Internal(format!("{what}: {e}"))))?,
            None => Vec::new(),
        };
        let resp = self.call(what, url, reporter, |_| {
            let req = self
                .request(method, url)
                .set("Accept", accept_for(content_type));
            Ok(if body.is_some() {
                req.set("Content-Type", content_type).send_bytes(&bytes)?
            } else {
                req.call()?
            })
        })?;
        Ok(read_json(resp, url)?)
    }

    /// [`retry`] of a request to `url` under this client's policy.
    pub fn call(
        &self,
        what: &str,
        url: &str,
        reporter: &dyn Reporter,
        attempt: impl FnMut(u32) -> Result<ureq::Response, AttemptError>,
    ) -> Result<ureq::Response, CallError> {
        self.call_with(&self.retry, what, url, reporter, attempt)
    }

    /// [`Client::call`] under another retry policy.
    pub fn call_with(
        &self,
        policy: &RetryPolicy,
        what: &str,
        url: &str,
        reporter: &dyn Reporter,
        attempt: impl FnMut(u32) -> Result<ureq::Response, AttemptError>,
    ) -> Result<ureq::Response, CallError> {
        let judge = |e: &AttemptError| match e {
            AttemptError::Local(_) => Verdict::fatal(),
            AttemptError::Http(h) => judge_ureq(h),
        };
        match retry(policy, what, reporter, attempt, judge) {
            Ok(r) => Ok(r),
            Err((AttemptError::Local(e), _)) => Err(CallError::Local(e)),
            Err((AttemptError::Http(h), ambiguous)) => {
                Err(CallError::Http(HttpFailure::of(*h, url, ambiguous)))
            }
        }
    }
}

fn accept_for(content_type: &str) -> &str {
    if content_type.contains("git-lfs") {
        content_type
    } else {
        "application/json"
    }
}

/// The JSON answer of a successful request (`url` for errors).
pub(crate) fn read_json(resp: ureq::Response, url: &str) -> Result<Value, HttpFailure> {
    let status = resp.status();
    let failure = |detail: String| HttpFailure {
        status: Some(status),
        code: None,
        detail,
        timed_out: false,
        url: url.to_string(),
        ambiguous_earlier_attempt: false,
    };
    let mut text = String::new();
    resp.into_reader()
        .take(MAX_JSON_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| failure(format!("reading the answer: {e}")))?;
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| {
        failure(format!(
            "malformed JSON answer ({e}): {}",
            one_line(&text, 200)
        ))
    })
}

/// 408 (timeout), 429 (rate limit) and server errors other than "not implemented"/"version".
pub(crate) fn retryable_status(status: u16) -> bool {
    status == 408
        || status == 429
        || ((500..600).contains(&status) && status != 501 && status != 505)
}

fn retryable_transport(kind: ureq::ErrorKind) -> bool {
    use ureq::ErrorKind::*;
    matches!(
        kind,
        ConnectionFailed | Io | Dns | BadStatus | BadHeader | ProxyConnect
    )
}

/// The longest `Retry-After` taken as given; larger values (`1e20`) are capped here, before the
/// conversion to a Duration (which would panic past u64 seconds), and again by the policy's cap.
const MAX_RETRY_AFTER_SECS: f64 = 3600.0;

/// `Retry-After` in seconds (the HTTP-date form is rare on the hub and treated as absent).
pub(crate) fn retry_after(resp: &ureq::Response) -> Option<Duration> {
    retry_after_secs(resp.header("Retry-After")?)
}

fn retry_after_secs(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::try_from_secs_f64(secs.min(MAX_RETRY_AFTER_SECS)).ok())
        .flatten()
}

/// The server's own explanation: `X-Error-Message`, else `{"error": ...}`, else the body text.
fn failure_from_response(status: u16, resp: ureq::Response) -> HttpFailure {
    let code = resp.header("X-Error-Code").map(|c| one_line(c, 100));
    let header_msg = resp.header("X-Error-Message").map(str::to_string);
    let status_text = resp.status_text().to_string();
    let mut text = String::new();
    // The body is only for the message; a body that cannot be read leaves it empty.
    let _ = resp.into_reader().take(64 << 10).read_to_string(&mut text);
    let body_msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .or_else(|| (!text.trim().is_empty()).then(|| text.clone()));
    let detail = header_msg
        .or(body_msg)
        .map(|m| one_line(&m, 300))
        .unwrap_or(status_text);
    HttpFailure {
        status: Some(status),
        code,
        detail,
        timed_out: false,
        url: String::new(),
        ambiguous_earlier_attempt: false,
    }
}

/// Whether a transport failure is a timeout (the socket's read or write deadline passed).
fn is_timeout(t: &ureq::Transport) -> bool {
    let mut src = std::error::Error::source(t);
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            );
        }
        src = e.source();
    }
    false
}

/// A transport error without its URL: presigned URLs carry signatures that do not belong in logs.
fn transport_detail(t: &ureq::Transport) -> String {
    let mut s = t.kind().to_string();
    if let Some(m) = t.message() {
        s.push_str(": ");
        s.push_str(m);
    }
    if let Some(src) = std::error::Error::source(t) {
        s.push_str(": ");
        s.push_str(&src.to_string());
    }
    one_line(&s, 300)
}

/// Tokens this process sends: never printed, even when a server echoes one back in a message.
static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub(crate) fn register_secret(token: &str) {
    if token.trim().is_empty() {
        return;
    }
    if let Ok(mut v) = SECRETS.lock() {
        if !v.iter().any(|t| t == token) {
            v.push(token.to_string());
        }
    }
}

/// `s` with every token this process sends replaced by `[the token]`.
pub(crate) fn scrub(s: &str) -> String {
    let mut out = s.to_string();
    if let Ok(v) = SECRETS.lock() {
        for t in v.iter() {
            out = out.replace(t.as_str(), "[the token]");
        }
    }
    out
}

/// Server or transport text on one line, at most `max_chars`, scrubbed of the token (before it
/// is cut, so no prefix of it survives either).
pub(crate) fn one_line(s: &str, max_chars: usize) -> String {
    let flat: String = scrub(s)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(max_chars)
        .collect();
    flat
}

/// `scheme://host:port` with default ports made explicit, for comparing origins.
pub(crate) fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    let authority = authority.rsplit('@').next()?.to_string();
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let authority = if has_port {
        authority
    } else {
        let port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        format!("{authority}:{port}")
    };
    Some(format!("{scheme}://{authority}"))
}

pub(crate) fn same_origin(a: &str, b: &str) -> bool {
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

/// Percent-encode one path segment (a revision like `refs/pr/1` becomes `refs%2Fpr%2F1`).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encode a path inside a repo, keeping its `/` separators.
pub(crate) fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// The hub answers with URLs on its public endpoint; behind a mirror or proxy (`HF_ENDPOINT`)
/// they must go to the configured endpoint instead, as the python client does.
pub(crate) fn fix_endpoint(url: &str, endpoint: &str) -> String {
    const PUBLIC: &str = super::DEFAULT_ENDPOINT;
    if endpoint != PUBLIC {
        if let Some(rest) = url.strip_prefix(PUBLIC) {
            return format!("{endpoint}{rest}");
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_capped_before_conversion() {
        assert_eq!(retry_after_secs("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after_secs("1e20"), Some(Duration::from_secs(3600)));
        assert_eq!(retry_after_secs("inf"), None);
        assert_eq!(retry_after_secs("-1"), None);
        assert_eq!(retry_after_secs("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn origins() {
        assert!(same_origin(
            "https://huggingface.co/api/x",
            "https://huggingface.co"
        ));
        assert!(same_origin(
            "https://HuggingFace.co:443/a",
            "https://huggingface.co"
        ));
        assert!(!same_origin(
            "http://127.0.0.1:8000/a",
            "http://127.0.0.1:8001"
        ));
        assert!(!same_origin(
            "https://cdn.example/a?x=1",
            "https://huggingface.co"
        ));
        assert!(!same_origin(
            "https://huggingface.co.evil.com/",
            "https://huggingface.co"
        ));
        assert_eq!(origin("notaurl"), None);
    }

    #[test]
    fn encoding() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("a b/c.json"), "a%20b/c.json");
        assert_eq!(
            fix_endpoint("https://huggingface.co/x/y", "http://127.0.0.1:9"),
            "http://127.0.0.1:9/x/y"
        );
        assert_eq!(
            fix_endpoint("https://cdn/x", "http://127.0.0.1:9"),
            "https://cdn/x"
        );
    }

    #[test]
    fn retry_classes() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 412, 501] {
            assert!(!retryable_status(s), "{s}");
        }
    }
}
